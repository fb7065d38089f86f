//! The cells' side of a handoff of the node's process to its next one
//! (`cellmesh upgrade`): a cell whose command is not running moves with
//! its daemon as it would migrate to a peer (detached from the backend,
//! its output carried in the daemon's snapshot), except that it stays on
//! the same node, so no lifecycle step is recorded. A running command is
//! a child of the old process and cannot move: the handoff is refused.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::cells::Cells;
use super::node::Notice;
use super::supervisor::{Control, Detached};
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
    /// A cell migration from this node did not end in time.
    #[error("a cell migration from this node is still running; upgrade once it has ended")]
    Migrating,
    /// A cell could not be prepared.
    #[error("cell {id:?} cannot be handed over: {source}")]
    Cell {
        /// The cell.
        id: String,
        /// Why.
        source: CellError,
    },
}

/// The longest a hand-off waits for cell migrations from here to end.
const MOVES_WAIT: Duration = Duration::from_millis(500);
/// The longest to wait for the supervisor to handle what was sent to it.
const SETTLE_WAIT: Duration = Duration::from_millis(500);
/// The longest a cell daemon may take to say whether its command runs.
const QUERY_WAIT: Duration = Duration::from_millis(250);

impl Cells {
    /// Makes every cell hosted here ready to move to the node's next
    /// process: each is detached from the backend (its supervision ends;
    /// what its finished command left running is killed, as when a cell
    /// migrates) and its daemon marked so that its next snapshot carries
    /// its output and the next process takes it over. No cell migrates
    /// from here until [`keep`](Self::keep) (migrations running end
    /// first). Freeze the daemons afterwards, and check
    /// [`supervised`](Self::supervised) is empty; in the next process,
    /// call [`take_over`](Self::take_over) once they are adopted. If the
    /// handoff is called off, [`keep`](Self::keep) them.
    ///
    /// # Errors
    /// [`CellHandOffError::CommandRunning`] naming every cell whose
    /// command still runs (checked before anything is detached),
    /// `Migrating`, or `Cell`; on any error every cell is supervised here
    /// as before the call.
    pub async fn hand_off(&self) -> Result<HandedCells, CellHandOffError> {
        match tokio::time::timeout(MOVES_WAIT, self.inner.moves.write()).await {
            Ok(_moves) => self.inner.handing_off.store(true, Ordering::Release),
            Err(_) => return Err(CellHandOffError::Migrating),
        }
        // Cells being started or adopted are hosted by now.
        self.settle().await;
        let hosted: Vec<(String, u64, UnboundedSender<Control>)> = self
            .inner
            .hosted
            .iter()
            .filter_map(|h| {
                let origin = self.inner.known.get(h.key()).map(|o| *o)?;
                Some((h.key().clone(), origin, h.control.clone()))
            })
            .collect();
        // Bounded, so that the handoff session (silent meanwhile) holds
        // its deadlines: a cell that does not answer counts as running.
        let mut running = Vec::new();
        for (id, origin, _) in &hosted {
            let answer = tokio::time::timeout(
                QUERY_WAIT,
                self.inner.client.call(id, *origin, &Command::Query),
            )
            .await;
            if !matches!(answer, Ok(Ok(Reply::State { running: false, .. }))) {
                running.push(id.clone());
            }
        }
        if !running.is_empty() {
            self.keep(HandedCells::default()).await;
            return Err(CellHandOffError::CommandRunning(running));
        }
        let mut handed = HandedCells::default();
        let mut refused = None;
        for (id, origin, control) in hosted {
            let (tx, rx) = oneshot::channel();
            if control.send(Control::Detach(tx)).is_err() {
                // Its supervision ended meanwhile (destroyed).
                continue;
            }
            let detached = match rx.await {
                Ok(Ok(detached)) => detached,
                Ok(Err(CellError::CommandRunning(_))) => {
                    refused = Some(CellHandOffError::CommandRunning(vec![id]));
                    break;
                }
                Ok(Err(source)) => {
                    refused = Some(CellHandOffError::Cell { id, source });
                    break;
                }
                Err(_) => continue,
            };
            let marked = self
                .inner
                .client
                .call_ok(&id, origin, &Command::HandOff)
                .await;
            handed.cells.push(HandedCell {
                id: id.clone(),
                origin,
                detached,
            });
            if let Err(source) = marked {
                refused = Some(CellHandOffError::Cell { id, source });
                break;
            }
        }
        match refused {
            None => Ok(handed),
            Some(e) => {
                self.keep(handed).await;
                Err(e)
            }
        }
    }

    /// The handoff was called off: the cells [`hand_off`](Self::hand_off)
    /// returned are supervised here again when this returns (a destroy
    /// asked for meanwhile goes ahead), and cells may migrate again.
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
            self.inner.node.notify(Notice::Adopt {
                cell_id: cell.id,
                origin: cell.origin,
                doc: Box::new(cell.detached.doc),
                exit: cell.detached.exit,
                destroy: false,
                started: Some(cell.detached.started),
                output: None,
                in_place: false,
            });
        }
        self.settle().await;
        self.inner.handing_off.store(false, Ordering::Release);
    }

    /// The cells this node's supervisor runs, once everything sent to it
    /// before the call was handled. After a [`hand_off`](Self::hand_off)
    /// and the freeze of the daemons, any is a cell that started
    /// meanwhile: its command would run in the old process, so the
    /// handoff must not go on.
    pub async fn supervised(&self) -> Vec<String> {
        self.settle().await;
        self.inner.hosted.iter().map(|h| h.key().clone()).collect()
    }

    /// In the node's next process, once the daemons of `origins` (the
    /// cell daemons handed over) are adopted: each handed cell is
    /// supervised here, its output files restored. A cell that had ended
    /// is left as it is. Returns the live cells that could not be taken
    /// over, with why: their daemons answer queries, but nothing runs or
    /// tears them down.
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
                // Ended, or moving here (its migration's record adopts it).
                Ok(Reply::Refused {
                    code:
                        RefusalCode::AlreadyDestroyed | RefusalCode::NotApplied | RefusalCode::Moving,
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
        self.settle().await;
        failed
    }

    /// Waits (bounded) until the supervisor handled every notice sent
    /// before this call.
    async fn settle(&self) {
        let (tx, rx) = oneshot::channel();
        self.inner.node.notify(Notice::Barrier(tx));
        if tokio::time::timeout(SETTLE_WAIT, rx).await.is_err() {
            tracing::warn!("the cell supervisor did not answer in time");
        }
    }
}
