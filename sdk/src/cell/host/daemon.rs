//! The cell daemon: a [`MeshDaemon`] holding one cell's document,
//! projection and event history. It is the cell's single owner: wherever it
//! lives, that node's supervisor runs the cell, and when it migrates its
//! projection, spec and history travel in its snapshot.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::command::{at_millis, decode, encode, Command, RefusalCode, Reply, Step};
use super::node::{CellNode, Notice};
use crate::capabilities::CapabilityFilter;
use crate::cell::backend::ExitReport;
use crate::cell::event::{CellEvents, EventContext};
use crate::cell::projection::{CellStateProjection, LifecycleStage};
use crate::cell::sign::SignedCloudEvent;
use crate::cell::spec::ExecutionCellDocument;
use crate::compute::{CausalEvent, MeshDaemon, ProcessError};

/// The daemon kind cells run as.
pub const CELL_KIND: &str = "cellmesh.cell";

/// What travels when the cell migrates.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CellState {
    doc: Option<ExecutionCellDocument>,
    origin: u64,
    projection: CellStateProjection,
    history: Vec<SignedCloudEvent>,
    exit: Option<ExitReport>,
    destroy_requested: bool,
}

pub(crate) struct CellDaemon {
    node: Arc<CellNode>,
    state: CellState,
}

impl CellDaemon {
    pub(crate) fn new(node: Arc<CellNode>) -> Self {
        Self {
            node,
            state: CellState::default(),
        }
    }

    fn refuse(code: RefusalCode, reason: impl Into<String>) -> Reply {
        Reply::Refused {
            code,
            reason: reason.into(),
        }
    }

    fn handle(&mut self, command: Command) -> Reply {
        match command {
            Command::Apply { doc, origin } => {
                if let Some(existing) = &self.state.doc {
                    return Self::refuse(
                        RefusalCode::AlreadyApplied,
                        format!("cell {:?} is already applied", existing.id()),
                    );
                }
                if let Err(e) = doc.validate() {
                    return Self::refuse(RefusalCode::Invalid, e.to_string());
                }
                self.state.origin = origin;
                self.node.notify(Notice::Run {
                    cell_id: doc.id().to_string(),
                    origin,
                    doc: doc.clone(),
                });
                self.state.doc = Some(*doc);
                Reply::Done
            }
            Command::Record {
                step,
                event_id,
                time_ms,
            } => self.record(*step, event_id, time_ms),
            Command::Destroy { reason } => {
                let Some(doc) = &self.state.doc else {
                    return Self::refuse(RefusalCode::NotApplied, "no cell is applied");
                };
                if self.state.destroy_requested
                    || self.state.projection.lifecycle_stage() == LifecycleStage::Destroyed
                {
                    return Self::refuse(
                        RefusalCode::AlreadyDestroyed,
                        format!("cell {:?} is unknown or already destroyed", doc.id()),
                    );
                }
                self.state.destroy_requested = true;
                self.node.notify(Notice::Destroy {
                    cell_id: doc.id().to_string(),
                    reason,
                });
                Reply::Done
            }
            Command::Query => Reply::State {
                state: Box::new(self.state.projection.snapshot()),
                exit: self.state.exit.clone().map(Box::new),
                running: self.state.projection.lifecycle_stage() == LifecycleStage::Started
                    && self
                        .state
                        .doc
                        .as_ref()
                        .is_some_and(|d| d.spec.run.is_some()),
                events: self.state.history.len(),
            },
        }
    }

    fn record(&mut self, step: Step, event_id: String, time_ms: u64) -> Reply {
        let Some(doc) = &self.state.doc else {
            return Self::refuse(RefusalCode::NotApplied, "no cell is applied");
        };
        let ctx = EventContext {
            id: event_id,
            source: self.node.source.clone(),
            time: at_millis(time_ms),
            traceparent: None,
        };
        let events = CellEvents::new(doc);
        let event = match &step {
            Step::Started => events.started(ctx, &self.node.node_hex),
            Step::Completed { exit } => {
                events.command_completed(ctx, exit.exit_code, exit.duration_ms, exit.terminal_state)
            }
            Step::Destroyed {
                outcome,
                reason,
                terminal,
            } => events.destroyed(ctx, outcome, reason.as_deref(), *terminal),
            Step::Migrated { from, to } => events.migrated(ctx, from, to),
        };
        let mut next = self.state.projection.clone();
        if let Err(e) = next.apply(&event) {
            return Self::refuse(RefusalCode::Invalid, e.to_string());
        }
        let signed = SignedCloudEvent::sign(event, &self.node.keypair);
        if matches!(step, Step::Migrated { .. }) {
            // The cell's history comes with it: the node that now hosts it
            // logs the events signed elsewhere before its own.
            for earlier in &self.state.history {
                self.node.append(earlier);
            }
        }
        self.node.append(&signed);
        self.state.projection = next;
        self.state.history.push(signed.clone());
        match step {
            Step::Completed { exit } => self.state.exit = Some(exit),
            Step::Migrated { .. } => {
                // Runs on the node the cell moved to: that node's
                // supervisor takes the cell over.
                let doc = doc.clone();
                self.node.notify(Notice::Adopt {
                    cell_id: doc.id().to_string(),
                    origin: self.state.origin,
                    doc: Box::new(doc),
                    exit: self.state.exit.clone(),
                    destroy: self.state.destroy_requested,
                });
            }
            _ => {}
        }
        Reply::Event {
            event: Box::new(signed),
        }
    }
}

impl MeshDaemon for CellDaemon {
    fn name(&self) -> &str {
        CELL_KIND
    }

    fn requirements(&self) -> CapabilityFilter {
        self.state
            .doc
            .as_ref()
            .and_then(|d| d.spec.placement.as_ref())
            .and_then(|p| p.requires.clone())
            .unwrap_or_default()
    }

    fn process(&mut self, event: &CausalEvent) -> Result<Vec<Bytes>, ProcessError> {
        let reply = match decode::<Command>(&event.payload) {
            Ok(command) => self.handle(command),
            Err(e) => Self::refuse(RefusalCode::Invalid, format!("bad cell command: {e}")),
        };
        Ok(vec![encode(&reply)])
    }

    fn snapshot(&self) -> Option<Bytes> {
        Some(encode(&self.state))
    }

    fn restore(&mut self, state: Bytes) -> Result<(), ProcessError> {
        self.state = serde_json::from_slice(&state)
            .map_err(|e| ProcessError::RestoreFailed(format!("cell state: {e}")))?;
        Ok(())
    }
}
