//! The cells' side of a handoff of the node's process to its next one
//! (`cellmesh upgrade`): a cell whose command is not running moves with
//! its daemon as it would migrate to a peer (detached from the backend,
//! its output carried in the daemon's snapshot), except that it stays on
//! the same node, so no lifecycle step is recorded. A running command is
//! a child of the old process and cannot move: the handoff is refused.

use tokio::sync::oneshot;

use super::cells::{start_task, Cells};
use super::supervisor::{Begin, Control, Detached};
use crate::cell::backend::CellError;
use crate::cell::remote::command::{Command, RefusalCode, Reply};

/// The cells [`Cells::hand_off`] made ready to move to the node's next
/// process: [`Cells::keep`] them if the handoff is called off.
#[derive(Default)]
#[must_use = "cells handed off are no longer supervised: keep them if the handoff ends"]
pub struct HandedCells {
    cells: Vec<HandedCell>,
}

struct HandedCell {
    id: String,
    origin: u64,
    detached: Detached,
}

impl HandedCells {
    /// How many cells were handed off.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether none was (the node hosts no cell).
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The ids of the cells handed off.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.cells.iter().map(|c| c.id.as_str())
    }
}

impl std::fmt::Debug for HandedCells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ids()).finish()
    }
}

/// Why [`Cells::hand_off`] refused; nothing was handed off.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CellHandOffError {
    /// These cells' commands run here, as children of this process.
    #[error(
        "cells {0:?} run a command here; wait for it to end or destroy the cell before an upgrade"
    )]
    CommandRunning(Vec<String>),
    /// A cell could not be prepared.
    #[error("cell {id:?} cannot be handed over: {source}")]
    Cell {
        /// The cell.
        id: String,
        /// Why.
        source: CellError,
    },
}

impl Cells {
    /// Makes every cell hosted here ready to move to the node's next
    /// process: each is detached from the backend (its supervision ends,
    /// nothing is torn down) and its daemon's next snapshot carries its
    /// output. Freeze the daemons afterwards; in the next process, call
    /// [`take_over`](Self::take_over) once they are adopted. If the
    /// handoff is called off, [`keep`](Self::keep) them.
    ///
    /// # Errors
    /// [`CellHandOffError::CommandRunning`] naming every cell whose
    /// command still runs, or `Cell`; either way every cell is supervised
    /// here again, as before the call.
    pub async fn hand_off(&self) -> Result<HandedCells, CellHandOffError> {
        let hosted: Vec<(String, tokio::sync::mpsc::UnboundedSender<Control>)> = self
            .inner
            .hosted
            .iter()
            .map(|h| (h.key().clone(), h.control.clone()))
            .collect();
        let mut handed = HandedCells::default();
        let mut running = Vec::new();
        let mut failed = None;
        for (id, control) in hosted {
            let Some(origin) = self.inner.known.get(&id).map(|o| *o) else {
                continue;
            };
            let (tx, rx) = oneshot::channel();
            if control.send(Control::Detach(tx)).is_err() {
                // Its supervision ended meanwhile (destroyed).
                continue;
            }
            let detached = match rx.await {
                Ok(Ok(detached)) => detached,
                Ok(Err(CellError::CommandRunning(_))) => {
                    running.push(id);
                    continue;
                }
                Ok(Err(source)) => {
                    failed = Some(CellHandOffError::Cell { id, source });
                    break;
                }
                Err(_) => continue,
            };
            let cell = HandedCell {
                id,
                origin,
                detached,
            };
            // The next snapshot carries the output files.
            let leave = self
                .inner
                .client
                .call_ok(&cell.id, origin, &Command::Leave)
                .await;
            let id = cell.id.clone();
            handed.cells.push(cell);
            if let Err(source) = leave {
                failed = Some(CellHandOffError::Cell { id, source });
                break;
            }
        }
        let refused = match failed {
            Some(e) => e,
            None if !running.is_empty() => CellHandOffError::CommandRunning(running),
            None => return Ok(handed),
        };
        self.keep(handed).await;
        Err(refused)
    }

    /// The handoff was called off: the cells [`hand_off`](Self::hand_off)
    /// returned are supervised here again when this returns (a destroy
    /// asked for meanwhile goes ahead).
    pub async fn keep(&self, handed: HandedCells) {
        for cell in handed.cells {
            if let Err(e) = self
                .inner
                .client
                .call(&cell.id, cell.origin, &Command::Stay)
                .await
            {
                tracing::warn!(cell = %cell.id, error = %e, "a kept cell was not told it stays");
            }
            // Supervised again before this returns (a destroy asked for
            // while it was handed off goes ahead).
            let destroy = self.inner.pending_destroy.remove(&cell.id).is_some();
            let begin = Begin::Adopted {
                exit: cell.detached.exit,
                destroy,
                started: Some(cell.detached.started),
                output: None,
            };
            start_task(&self.inner, cell.id, cell.origin, cell.detached.doc, begin);
        }
    }

    /// In the node's next process, once the daemons of `origins` (the
    /// handed cell daemons) are adopted: each handed cell is supervised
    /// here, its output files restored. A cell daemon that was not handed
    /// off (its cell had ended) is left as it is. Returns the cells that
    /// could not be taken over, with why; their daemons still answer
    /// queries, but nothing supervises them.
    pub async fn take_over(&self, origins: &[u64]) -> Vec<(u64, CellError)> {
        let mut failed = Vec::new();
        for &origin in origins {
            let name = format!("{origin:016x}");
            match self
                .inner
                .client
                .call(&name, origin, &Command::TakeOver)
                .await
            {
                Ok(Reply::Done) => {}
                Ok(Reply::Refused {
                    code: RefusalCode::Invalid | RefusalCode::NotApplied,
                    ..
                }) => {}
                Ok(Reply::Refused { reason, .. }) => {
                    failed.push((origin, CellError::Remote { id: name, reason }))
                }
                Ok(_) => failed.push((
                    origin,
                    CellError::Remote {
                        id: name,
                        reason: "unexpected answer to a take-over".into(),
                    },
                )),
                Err(e) => failed.push((origin, e)),
            }
        }
        failed
    }
}
