//! The per-cell state projection: a reducer over the cell's lifecycle
//! events.
//!
//! Compared with the reducer this one descends from, three defects are
//! fixed: an event that fails to apply is not remembered as seen (so a
//! corrected redelivery with the same id applies), the seen-id set is part
//! of the serialized projection (so idempotency survives a snapshot, a
//! restart or a migration), and a second `destroyed` is an illegal
//! transition. `migrated` is legal in every non-terminal stage and leaves
//! the stage as it was.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::event::{CellEventKind, CloudEventV1, FailureCause};
use super::spec::PlacementSpec;

mod stages;

pub use stages::{CurrentState, ExportRecord, ExportStage, IdentityStage, LifecycleStage};

/// Why an event did not apply. The projection is unchanged when this is
/// returned, and the event is not remembered as seen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The event has no `data`.
    #[error("event {event_id:?} ({event_type}) has no data")]
    MissingData {
        /// Event id.
        event_id: String,
        /// Event type.
        event_type: String,
    },
    /// A required field is missing or has the wrong type.
    #[error("event {event_id:?} ({event_type}): field {field:?} {problem}")]
    BadField {
        /// Event id.
        event_id: String,
        /// Event type.
        event_type: String,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The event does not belong to the cell this projection is bound to.
    #[error(
        "event {event_id:?} names {field} {observed:?} but the projection is bound to {existing:?}"
    )]
    Mismatch {
        /// Event id.
        event_id: String,
        /// `cellId`, `specId`, `runId` or `placement`.
        field: &'static str,
        /// The bound value.
        existing: String,
        /// The event's value.
        observed: String,
    },
    /// The event is not legal in the cell's current stage.
    #[error("illegal transition for cell {cell:?}: {event_type} ({why}) in stage {stage:?}")]
    IllegalTransition {
        /// The cell, if bound.
        cell: Option<String>,
        /// Event type.
        event_type: String,
        /// The rule it breaks.
        why: &'static str,
        /// The lifecycle stage it arrived in.
        stage: LifecycleStage,
    },
}

/// The state of one cell, folded from its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CellStateProjection {
    spec_id: Option<String>,
    cell_id: Option<String>,
    run_id: Option<String>,
    placement: Option<PlacementSpec>,
    lifecycle_stage: LifecycleStage,
    identity_stage: IdentityStage,
    export_stage: ExportStage,
    command_exit_code: Option<i32>,
    destroy_reason: Option<String>,
    last_error: Option<String>,
    #[serde(default)]
    failure_cause: Option<FailureCause>,
    exports: Vec<ExportRecord>,
    current_node: Option<String>,
    migrations: u32,
    processed_events: u64,
    /// Ids of applied events: part of the serialized form, so idempotency
    /// survives snapshots and migrations.
    applied_event_ids: BTreeSet<String>,
}

/// A read-only view of a [`CellStateProjection`] with its current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CellStateSnapshot {
    /// The spec id.
    pub spec_id: Option<String>,
    /// The cell id.
    pub cell_id: Option<String>,
    /// The run id.
    pub run_id: Option<String>,
    /// Placement hints the cell was started with.
    pub placement: Option<PlacementSpec>,
    /// Lifecycle stage.
    pub lifecycle_stage: LifecycleStage,
    /// Identity stage.
    pub identity_stage: IdentityStage,
    /// Export stage.
    pub export_stage: ExportStage,
    /// The one-word state.
    pub current_state: CurrentState,
    /// The command's exit code.
    pub command_exit_code: Option<i32>,
    /// Why the cell was torn down, when not normally.
    pub destroy_reason: Option<String>,
    /// The last error reported.
    pub last_error: Option<String>,
    /// Why the cell failed, when it did.
    #[serde(default)]
    pub failure_cause: Option<FailureCause>,
    /// Completed exports.
    pub exports: Vec<ExportRecord>,
    /// The node the cell last started on or moved to.
    pub current_node: Option<String>,
    /// How many times the cell migrated.
    pub migrations: u32,
    /// Events applied.
    pub processed_events: u64,
}

impl Default for CellStateProjection {
    fn default() -> Self {
        Self {
            spec_id: None,
            cell_id: None,
            run_id: None,
            placement: None,
            lifecycle_stage: LifecycleStage::Pending,
            identity_stage: IdentityStage::Unknown,
            export_stage: ExportStage::None,
            command_exit_code: None,
            destroy_reason: None,
            last_error: None,
            failure_cause: None,
            exports: Vec::new(),
            current_node: None,
            migrations: 0,
            processed_events: 0,
            applied_event_ids: BTreeSet::new(),
        }
    }
}

/// What an event binds the projection to.
struct Binding {
    ids: [Option<String>; 3],
    placement: Option<PlacementSpec>,
}

/// The changes one event makes, computed before any is applied.
#[derive(Default)]
struct Change {
    lifecycle: Option<LifecycleStage>,
    identity: Option<IdentityStage>,
    export: Option<(ExportStage, Option<ExportRecord>)>,
    exit_code: Option<i32>,
    destroy_reason: Option<Option<String>>,
    last_error: Option<String>,
    node: Option<String>,
    migrated: bool,
    failure: Option<FailureCause>,
}

struct Ctx<'a> {
    event: &'a CloudEventV1,
    data: &'a Value,
}

impl Ctx<'_> {
    fn bad(&self, field: &'static str, problem: &'static str) -> ProjectionError {
        ProjectionError::BadField {
            event_id: self.event.id.clone(),
            event_type: self.event.ty.clone(),
            field,
            problem,
        }
    }

    fn str(&self, field: &'static str) -> Result<&str, ProjectionError> {
        match self.data.get(field) {
            None => Err(self.bad(field, "is missing")),
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.bad(field, "must be a string")),
        }
    }

    fn opt_str(&self, field: &str) -> Option<String> {
        self.data
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    fn i32(&self, field: &'static str) -> Result<i32, ProjectionError> {
        let raw = self
            .data
            .get(field)
            .ok_or_else(|| self.bad(field, "is missing"))?;
        let n = raw
            .as_i64()
            .ok_or_else(|| self.bad(field, "must be an integer"))?;
        i32::try_from(n).map_err(|_| self.bad(field, "is out of range for i32"))
    }
}

impl CellStateProjection {
    /// Applies `event`. Returns `Ok(true)` if it changed the projection,
    /// `Ok(false)` if it was already applied (same id) or is not a cell
    /// event this reducer knows.
    ///
    /// # Errors
    /// A [`ProjectionError`]; the projection is then unchanged and the
    /// event id is not remembered, so a corrected redelivery applies.
    pub fn apply(&mut self, event: &CloudEventV1) -> Result<bool, ProjectionError> {
        if self.applied_event_ids.contains(&event.id) {
            return Ok(false);
        }
        let Some(kind) = event.kind() else {
            return Ok(false);
        };
        let Some(data) = event.data.as_ref() else {
            return Err(ProjectionError::MissingData {
                event_id: event.id.clone(),
                event_type: event.ty.clone(),
            });
        };
        let ctx = Ctx { event, data };
        let binding = self.check_binding(&ctx)?;
        let Some(binding) = binding else {
            return Ok(false);
        };
        let change = self.transition(kind, &ctx)?;
        self.commit(binding, change);
        self.applied_event_ids.insert(event.id.clone());
        self.processed_events += 1;
        Ok(true)
    }

    /// Whether an event with this id was applied.
    pub fn has_applied(&self, event_id: &str) -> bool {
        self.applied_event_ids.contains(event_id)
    }

    /// The lifecycle stage.
    pub fn lifecycle_stage(&self) -> LifecycleStage {
        self.lifecycle_stage
    }

    /// The one-word state.
    pub fn current_state(&self) -> CurrentState {
        if self.lifecycle_stage == LifecycleStage::Failed {
            return CurrentState::Failed;
        }
        if self.lifecycle_stage == LifecycleStage::Destroyed {
            return if self.destroy_reason.is_some() {
                CurrentState::DestroyFailed
            } else {
                CurrentState::Destroyed
            };
        }
        match self.export_stage {
            ExportStage::Completed => return CurrentState::ExportSucceeded,
            ExportStage::Failed => return CurrentState::ExportFailed,
            ExportStage::None => {}
        }
        if let Some(code) = self.command_exit_code {
            return if code == 0 {
                CurrentState::CommandSucceeded
            } else {
                CurrentState::CommandFailed
            };
        }
        match self.identity_stage {
            IdentityStage::Materialized => CurrentState::IdentityReady,
            IdentityStage::MaterializeFailed => CurrentState::IdentityFailed,
            _ if self.lifecycle_stage == LifecycleStage::Started => CurrentState::Started,
            _ => CurrentState::Pending,
        }
    }

    /// A read-only view with the current state.
    pub fn snapshot(&self) -> CellStateSnapshot {
        CellStateSnapshot {
            spec_id: self.spec_id.clone(),
            cell_id: self.cell_id.clone(),
            run_id: self.run_id.clone(),
            placement: self.placement.clone(),
            lifecycle_stage: self.lifecycle_stage,
            identity_stage: self.identity_stage,
            export_stage: self.export_stage,
            current_state: self.current_state(),
            command_exit_code: self.command_exit_code,
            destroy_reason: self.destroy_reason.clone(),
            last_error: self.last_error.clone(),
            failure_cause: self.failure_cause,
            exports: self.exports.clone(),
            current_node: self.current_node.clone(),
            migrations: self.migrations,
            processed_events: self.processed_events,
        }
    }

    /// The identity fields the event binds, or `None` if it names no cell.
    fn check_binding(&self, ctx: &Ctx<'_>) -> Result<Option<Binding>, ProjectionError> {
        let spec_id = ctx.opt_str("specId");
        let cell_id = ctx.opt_str("cellId");
        if spec_id.is_none() && cell_id.is_none() {
            return Ok(None);
        }
        let run_id = ctx.opt_str("runId");
        for (field, slot, observed) in [
            ("specId", &self.spec_id, &spec_id),
            ("cellId", &self.cell_id, &cell_id),
            ("runId", &self.run_id, &run_id),
        ] {
            if let (Some(existing), Some(observed)) = (slot, observed) {
                if existing != observed {
                    return Err(ProjectionError::Mismatch {
                        event_id: ctx.event.id.clone(),
                        field,
                        existing: existing.clone(),
                        observed: observed.clone(),
                    });
                }
            }
        }
        let mut placement = None;
        if let Some(raw) = ctx.data.get("placement") {
            let observed: PlacementSpec = serde_json::from_value(raw.clone())
                .map_err(|_| ctx.bad("placement", "is not a placement"))?;
            if let Some(existing) = &self.placement {
                if existing != &observed {
                    return Err(ProjectionError::Mismatch {
                        event_id: ctx.event.id.clone(),
                        field: "placement",
                        existing: format!("{existing:?}"),
                        observed: format!("{observed:?}"),
                    });
                }
            }
            placement = Some(observed);
        }
        Ok(Some(Binding {
            ids: [spec_id, cell_id, run_id],
            placement,
        }))
    }

    fn illegal(&self, ctx: &Ctx<'_>, why: &'static str) -> ProjectionError {
        ProjectionError::IllegalTransition {
            cell: self.cell_id.clone().or_else(|| ctx.opt_str("cellId")),
            event_type: ctx.event.ty.clone(),
            why,
            stage: self.lifecycle_stage,
        }
    }

    fn require_live(&self, ctx: &Ctx<'_>) -> Result<(), ProjectionError> {
        match self.lifecycle_stage {
            LifecycleStage::Pending => Err(self.illegal(ctx, "the cell has not started")),
            LifecycleStage::Destroyed | LifecycleStage::Failed => {
                Err(self.illegal(ctx, "the cell is destroyed"))
            }
            _ => Ok(()),
        }
    }

    fn transition(&self, kind: CellEventKind, ctx: &Ctx<'_>) -> Result<Change, ProjectionError> {
        let mut c = Change::default();
        match kind {
            CellEventKind::Started => {
                if self.lifecycle_stage != LifecycleStage::Pending {
                    return Err(self.illegal(ctx, "started twice or after destroy"));
                }
                c.lifecycle = Some(LifecycleStage::Started);
                c.node = ctx.opt_str("node");
            }
            CellEventKind::IdentityMaterialized => {
                self.require_live(ctx)?;
                if self.identity_stage == IdentityStage::MaterializeFailed {
                    return Err(self.illegal(ctx, "materialized after a materialize failure"));
                }
                c.identity = Some(IdentityStage::Materialized);
            }
            CellEventKind::IdentityFailed => {
                self.require_live(ctx)?;
                let operation = ctx.str("operation")?;
                let reason = ctx.str("reason")?;
                c.identity = Some(match operation {
                    "materialize" if self.command_exit_code.is_some() => {
                        return Err(self.illegal(ctx, "materialize failure after the command"))
                    }
                    "materialize" => IdentityStage::MaterializeFailed,
                    "revoke" => IdentityStage::RevokeFailed,
                    _ => return Err(ctx.bad("operation", "must be materialize or revoke")),
                });
                c.last_error = Some(reason.to_string());
            }
            CellEventKind::IdentityRevoked => {
                self.require_live(ctx)?;
                c.identity = Some(IdentityStage::Revoked);
            }
            CellEventKind::CommandCompleted => {
                self.require_live(ctx)?;
                if self.command_exit_code.is_some() {
                    return Err(self.illegal(ctx, "command completed twice"));
                }
                if self.identity_stage == IdentityStage::MaterializeFailed {
                    return Err(self.illegal(ctx, "command after an identity failure"));
                }
                c.exit_code = Some(ctx.i32("exitCode")?);
                c.lifecycle = Some(LifecycleStage::CommandCompleted);
            }
            CellEventKind::ExportCompleted | CellEventKind::ExportFailed => {
                if self.lifecycle_stage != LifecycleStage::CommandCompleted {
                    return Err(self.illegal(ctx, "the command has not completed"));
                }
                if kind == CellEventKind::ExportFailed {
                    c.last_error = Some(ctx.str("reason")?.to_string());
                    c.export = Some((ExportStage::Failed, None));
                } else {
                    let record = ExportRecord {
                        target_name: ctx.opt_str("targetName"),
                        destination: ctx.opt_str("destination"),
                        bytes_written: ctx.data.get("bytesWritten").and_then(Value::as_u64),
                    };
                    c.export = Some((ExportStage::Completed, Some(record)));
                }
            }
            CellEventKind::Destroyed => {
                match self.lifecycle_stage {
                    LifecycleStage::Pending => {
                        return Err(self.illegal(ctx, "destroyed before started"))
                    }
                    LifecycleStage::Destroyed | LifecycleStage::Failed => {
                        return Err(self.illegal(ctx, "destroyed twice"))
                    }
                    _ => {}
                }
                let reason = ctx.opt_str("reason");
                c.lifecycle = Some(LifecycleStage::Destroyed);
                c.last_error.clone_from(&reason);
                c.destroy_reason = Some(reason);
            }
            CellEventKind::Failed => {
                if matches!(
                    self.lifecycle_stage,
                    LifecycleStage::Destroyed | LifecycleStage::Failed
                ) {
                    return Err(self.illegal(ctx, "failed after the cell ended"));
                }
                let cause = FailureCause::from_name(ctx.str("cause")?)
                    .ok_or_else(|| ctx.bad("cause", "is not a known failure cause"))?;
                let reason = ctx.str("reason")?.to_string();
                c.lifecycle = Some(LifecycleStage::Failed);
                c.destroy_reason = Some(Some(reason.clone()));
                c.last_error = Some(reason);
                c.failure = Some(cause);
            }
            CellEventKind::Migrated => {
                if matches!(
                    self.lifecycle_stage,
                    LifecycleStage::Destroyed | LifecycleStage::Failed
                ) {
                    return Err(self.illegal(ctx, "migrated after destroy"));
                }
                ctx.str("fromNode")?;
                c.node = Some(ctx.str("toNode")?.to_string());
                c.migrated = true;
            }
        }
        Ok(c)
    }

    fn commit(&mut self, binding: Binding, c: Change) {
        let [spec_id, cell_id, run_id] = binding.ids;
        if self.placement.is_none() {
            self.placement = binding.placement;
        }
        for (slot, value) in [
            (&mut self.spec_id, spec_id),
            (&mut self.cell_id, cell_id),
            (&mut self.run_id, run_id),
        ] {
            if slot.is_none() {
                *slot = value;
            }
        }
        if let Some(stage) = c.lifecycle {
            self.lifecycle_stage = stage;
        }
        if let Some(stage) = c.identity {
            self.identity_stage = stage;
        }
        if let Some((stage, record)) = c.export {
            self.export_stage = stage;
            self.exports.extend(record);
        }
        if c.exit_code.is_some() {
            self.command_exit_code = c.exit_code;
        }
        if let Some(reason) = c.destroy_reason {
            self.destroy_reason = reason;
        }
        if c.last_error.is_some() {
            self.last_error = c.last_error;
        }
        if c.node.is_some() {
            self.current_node = c.node;
        }
        if c.migrated {
            self.migrations += 1;
        }
        if c.failure.is_some() {
            self.failure_cause = c.failure;
        }
    }
}

#[cfg(test)]
mod tests;
