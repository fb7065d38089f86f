//! The cell daemon: a [`MeshDaemon`] holding one cell's document,
//! projection and event history. It is the cell's single owner: wherever it
//! lives, that node's supervisor runs the cell, and when it migrates its
//! projection, spec and history travel in its snapshot.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::node::{CellNode, Notice};
use crate::capabilities::CapabilityFilter;
use crate::cell::backend::{CellOutput, ExitReport};
use crate::cell::event::{CellEventKind, CellEvents, EventContext};
use crate::cell::projection::{CellStateProjection, LifecycleStage};
use crate::cell::remote::command::{
    at_millis, decode, encode, Command, MigrationFigures, RefusalCode, Reply, Step,
};
use crate::cell::remote::CELL_KIND;
use crate::cell::sign::SignedCloudEvent;
use crate::cell::spec::ExecutionCellDocument;
use crate::compute::{CausalEvent, MeshDaemon, ProcessError};

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
    #[serde(default)]
    generation: u64,
    /// Set between `Leave` and the migration: the snapshot then carries the
    /// output files.
    #[serde(default)]
    leaving: bool,
    /// Set by `HandOff`: the node's next process takes the cell over.
    #[serde(default)]
    handed_off: bool,
    /// `carried` holds only the output's counters: the files stayed where
    /// they were (a hand-over to the node's next process).
    #[serde(default, skip_serializing)]
    carried_in_place: bool,
    /// The output that came with a migration, until the node takes it
    /// (written by [`Leaving`], which every snapshot goes through).
    #[serde(default, skip_serializing)]
    carried: Option<CellOutput>,
    /// What the cell's last migration measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_migration: Option<MigrationFigures>,
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
            Command::Apply {
                doc,
                origin,
                generation,
            } => {
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
                self.state.generation = generation;
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
                if self.state.destroy_requested || self.ended() {
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
                running: self.running(),
                events: self.state.history.len(),
                migration: self.state.last_migration,
            },
            Command::Output {
                stdout_from,
                stderr_from,
                max,
            } => {
                let Some(doc) = &self.state.doc else {
                    return Self::refuse(RefusalCode::NotApplied, "no cell is applied");
                };
                let max = max.min(super::output::CHUNK_BYTES);
                let range = self
                    .node
                    .output_range_of(doc.id(), stdout_from, stderr_from, max)
                    .unwrap_or_default();
                Reply::Output {
                    chunk: Box::new(range.chunk),
                    stdout_len: range.stdout_len,
                    stderr_len: range.stderr_len,
                }
            }
            Command::Leave => {
                self.state.leaving = true;
                Reply::Done
            }
            Command::Stay => {
                self.state.leaving = false;
                self.state.handed_off = false;
                Reply::Done
            }
            Command::HandOff => {
                if self.state.doc.is_none() {
                    return Self::refuse(RefusalCode::NotApplied, "no cell is applied");
                }
                self.state.handed_off = true;
                Reply::Done
            }
            Command::TakeOver => {
                let Some(doc) = &self.state.doc else {
                    return Self::refuse(RefusalCode::NotApplied, "no cell is applied");
                };
                if self.ended() {
                    return Self::refuse(
                        RefusalCode::AlreadyDestroyed,
                        format!("cell {:?} has ended", doc.id()),
                    );
                }
                if !self.state.handed_off && self.state.carried.is_some() {
                    // Its migration here committed; the record that hands
                    // it to this node's supervisor is on its way.
                    return Self::refuse(
                        RefusalCode::Moving,
                        format!("cell {:?} is moving here", doc.id()),
                    );
                }
                if !self.state.handed_off {
                    return Self::refuse(
                        RefusalCode::Invalid,
                        format!("cell {:?} was not handed over", doc.id()),
                    );
                }
                self.node.notify(Notice::Adopt {
                    cell_id: doc.id().to_string(),
                    origin: self.state.origin,
                    doc: Box::new(doc.clone()),
                    exit: self.state.exit.clone(),
                    destroy: self.state.destroy_requested,
                    started: self.started_at(),
                    output: self.state.carried.take().map(Box::new),
                    in_place: std::mem::take(&mut self.state.carried_in_place),
                });
                self.state.leaving = false;
                self.state.handed_off = false;
                Reply::Done
            }
            Command::Migrate { target } => {
                let Some(doc) = &self.state.doc else {
                    return Self::refuse(RefusalCode::NotApplied, "no cell is applied");
                };
                if self.ended() || self.state.destroy_requested {
                    return Self::refuse(
                        RefusalCode::AlreadyDestroyed,
                        format!("cell {:?} is unknown or already destroyed", doc.id()),
                    );
                }
                if self.running()
                    || self.state.projection.lifecycle_stage() == LifecycleStage::Pending
                {
                    return Self::refuse(
                        RefusalCode::CommandRunning,
                        format!("cell {:?} has a running command", doc.id()),
                    );
                }
                if target == self.node.node_hex {
                    return Self::refuse(
                        RefusalCode::Invalid,
                        format!("cell {:?} is already on node {target}", doc.id()),
                    );
                }
                self.node.notify(Notice::Migrate {
                    cell_id: doc.id().to_string(),
                    target,
                });
                Reply::Done
            }
        }
    }

    fn ended(&self) -> bool {
        matches!(
            self.state.projection.lifecycle_stage(),
            LifecycleStage::Destroyed | LifecycleStage::Failed
        )
    }

    /// Whether the cell's command has started and not completed.
    fn running(&self) -> bool {
        self.state.projection.lifecycle_stage() == LifecycleStage::Started
            && self
                .state
                .doc
                .as_ref()
                .is_some_and(|d| d.spec.run.is_some())
    }

    /// When the cell's `started` event says it started.
    fn started_at(&self) -> Option<std::time::SystemTime> {
        self.state
            .history
            .iter()
            .find(|e| e.event.kind() == Some(CellEventKind::Started))
            .and_then(|e| e.event.time.as_deref())
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
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
        let events = CellEvents::with_generation(doc, self.state.generation);
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
            Step::Migrated { from, to, .. } => events.migrated(ctx, from, to),
            Step::Failed {
                cause,
                reason,
                terminal,
            } => events.failed(ctx, *cause, reason, *terminal),
        };
        // A refused event leaves the projection as it was.
        if let Err(e) = self.state.projection.apply(&event) {
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
        self.state.history.push(signed.clone());
        match step {
            Step::Completed { exit } => self.state.exit = Some(exit),
            Step::Migrated { figures, .. } => {
                self.state.last_migration = figures;
                // Runs on the node the cell moved to: that node's
                // supervisor takes the cell over.
                let doc = doc.clone();
                self.node.notify(Notice::Adopt {
                    cell_id: doc.id().to_string(),
                    origin: self.state.origin,
                    doc: Box::new(doc),
                    exit: self.state.exit.clone(),
                    destroy: self.state.destroy_requested,
                    started: self.started_at(),
                    output: self.state.carried.take().map(Box::new),
                    in_place: false,
                });
                self.state.leaving = false;
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
        let id = self.state.doc.as_ref().map(|d| d.id());
        let (carried, carried_in_place) = if self.state.carried.is_some() {
            // It came with a migration and this node has not taken it
            // yet: the output that came along is the cell's, not whatever
            // this node's backend holds under its id.
            (self.state.carried.clone(), self.state.carried_in_place)
        } else if self.state.leaving {
            // On its way out: the output files travel with the cell.
            (id.and_then(|id| self.node.output_of(id)), false)
        } else if self.state.handed_off {
            // To the node's next process: the files stay where they are,
            // only their counters travel.
            let counts = id
                .and_then(|id| self.node.output_range_of(id, 0, 0, 0))
                .map(|range| range.chunk);
            let in_place = counts.is_some();
            (counts, in_place)
        } else {
            (None, false)
        };
        Some(encode(&Leaving {
            state: &self.state,
            carried,
            carried_in_place,
        }))
    }

    fn restore(&mut self, state: Bytes) -> Result<(), ProcessError> {
        self.state = serde_json::from_slice(&state)
            .map_err(|e| ProcessError::RestoreFailed(format!("cell state: {e}")))?;
        // Only events from nodes this node trusts come along.
        if let Some(bad) = self
            .state
            .history
            .iter()
            .find_map(|e| self.node.check_foreign(e).err())
        {
            return Err(ProcessError::RestoreFailed(format!("cell history: {bad}")));
        }
        Ok(())
    }
}

/// A cell daemon's snapshot: its state with the output that travels with
/// it (migrating: the output; handed to the node's next process: the
/// output's counters; else what came with it and was not taken yet).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Leaving<'a> {
    #[serde(flatten)]
    state: &'a CellState,
    #[serde(skip_serializing_if = "Option::is_none")]
    carried: Option<CellOutput>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    carried_in_place: bool,
}

#[cfg(test)]
#[path = "daemon_tests.rs"]
mod tests;
