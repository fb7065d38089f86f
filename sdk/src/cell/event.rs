//! The CloudEvents 1.0 envelope and the cell lifecycle catalogue.
//!
//! Every event a cell emits is a [`CloudEventV1`] whose `type` is in the
//! `dev.cellmesh.events.cell.*` namespace and whose `data` carries the cell's
//! `cellId`, `specId` and (when known) `runId`. Readers also accept the
//! earlier `dev.cellos.events.cell.*` names, so archives written by the
//! earlier system replay.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::spec::ExecutionCellDocument;

/// Prefix of every type this crate emits.
pub const TYPE_PREFIX: &str = "dev.cellmesh.events.cell.";
/// Prefix of the earlier system's types, accepted when reading.
pub const LEGACY_TYPE_PREFIX: &str = "dev.cellos.events.cell.";

/// The lifecycle events a cell goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CellEventKind {
    /// `lifecycle.v1.started`: the backend created the cell.
    Started,
    /// `command.v1.completed`: the cell's command exited (`exitCode`,
    /// `durationMs`).
    CommandCompleted,
    /// `lifecycle.v1.destroyed`: the cell is gone (`outcome`, `reason`,
    /// `terminalState`).
    Destroyed,
    /// `lifecycle.v1.migrated`: the cell moved between nodes (`fromNode`,
    /// `toNode`).
    Migrated,
    /// `identity.v1.materialized`.
    IdentityMaterialized,
    /// `identity.v1.failed` (`operation`, `reason`).
    IdentityFailed,
    /// `identity.v1.revoked`.
    IdentityRevoked,
    /// `export.v2.completed` (`targetKind`, `targetName`, `destination`,
    /// `bytesWritten`).
    ExportCompleted,
    /// `export.v2.failed` (`reason`).
    ExportFailed,
    /// `lifecycle.v1.failed`: the cell failed and is gone (`cause`,
    /// `reason`); terminal, like `destroyed`.
    Failed,
}

impl CellEventKind {
    /// Every kind.
    pub const ALL: [CellEventKind; 10] = [
        Self::Started,
        Self::CommandCompleted,
        Self::Destroyed,
        Self::Migrated,
        Self::IdentityMaterialized,
        Self::IdentityFailed,
        Self::IdentityRevoked,
        Self::ExportCompleted,
        Self::ExportFailed,
        Self::Failed,
    ];

    /// The type without its namespace (`lifecycle.v1.started`).
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Started => "lifecycle.v1.started",
            Self::CommandCompleted => "command.v1.completed",
            Self::Destroyed => "lifecycle.v1.destroyed",
            Self::Migrated => "lifecycle.v1.migrated",
            Self::IdentityMaterialized => "identity.v1.materialized",
            Self::IdentityFailed => "identity.v1.failed",
            Self::IdentityRevoked => "identity.v1.revoked",
            Self::ExportCompleted => "export.v2.completed",
            Self::ExportFailed => "export.v2.failed",
            Self::Failed => "lifecycle.v1.failed",
        }
    }

    /// The full type this crate emits.
    pub fn type_name(self) -> String {
        format!("{TYPE_PREFIX}{}", self.suffix())
    }

    /// The kind a CloudEvent `type` names, in either namespace.
    pub fn from_type(ty: &str) -> Option<Self> {
        let suffix = ty
            .strip_prefix(TYPE_PREFIX)
            .or_else(|| ty.strip_prefix(LEGACY_TYPE_PREFIX))?;
        Self::ALL.into_iter().find(|k| k.suffix() == suffix)
    }
}

/// How a cell's command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TerminalState {
    /// The command exited by itself and its exit code is known.
    Clean,
    /// The command was killed (timeout, TTL, destroy) and its exit code is
    /// the forced-termination code.
    Forced,
}

/// Why a cell failed: recorded in its signed `lifecycle.v1.failed` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum FailureCause {
    /// The command's program does not exist.
    ProgramNotFound,
    /// The command's program may not be executed.
    PermissionDenied,
    /// A limit of the document could not be applied.
    LimitNotApplied,
    /// The command could not be started for another reason.
    SpawnFailed,
    /// The host killed the command for exceeding its memory limit.
    MemoryLimitExceeded,
}

impl FailureCause {
    /// The camelCase name written in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProgramNotFound => "programNotFound",
            Self::PermissionDenied => "permissionDenied",
            Self::LimitNotApplied => "limitNotApplied",
            Self::SpawnFailed => "spawnFailed",
            Self::MemoryLimitExceeded => "memoryLimitExceeded",
        }
    }

    /// The cause named `name` in an event.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::ProgramNotFound,
            Self::PermissionDenied,
            Self::LimitNotApplied,
            Self::SpawnFailed,
            Self::MemoryLimitExceeded,
        ]
        .into_iter()
        .find(|c| c.as_str() == name)
    }
}

/// Exit code recorded for a command that was killed rather than exiting.
pub const FORCED_EXIT_CODE: i32 = 137;

/// A CloudEvents 1.0 event in structured JSON mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEventV1 {
    /// Always `"1.0"`.
    pub specversion: String,
    /// Unique per source.
    pub id: String,
    /// Who emitted it (`urn:cellmesh:node:<node id>`).
    pub source: String,
    /// The event type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Media type of `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    /// RFC 3339 timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// W3C trace context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl CloudEventV1 {
    /// The lifecycle kind of this event, if it is a cell event.
    pub fn kind(&self) -> Option<CellEventKind> {
        CellEventKind::from_type(&self.ty)
    }

    /// `data.cellId`, if present.
    pub fn cell_id(&self) -> Option<&str> {
        self.data.as_ref()?.get("cellId")?.as_str()
    }
}

/// RFC 3339 (UTC, milliseconds) for `at`.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Everything an emitter stamps on an event besides its data.
#[derive(Debug, Clone)]
pub struct EventContext {
    /// Event id, unique per source.
    pub id: String,
    /// The emitter (`urn:cellmesh:node:<node id>`).
    pub source: String,
    /// When it happened.
    pub time: SystemTime,
    /// Trace context to carry, if any.
    pub traceparent: Option<String>,
}

/// Builds the cell lifecycle events of `doc`'s cell.
#[derive(Debug, Clone)]
pub struct CellEvents<'a> {
    doc: &'a ExecutionCellDocument,
    generation: u64,
}

impl<'a> CellEvents<'a> {
    /// Events about `doc`'s cell.
    pub fn new(doc: &'a ExecutionCellDocument) -> Self {
        Self { doc, generation: 0 }
    }

    /// Events about generation `generation` of `doc`'s cell: the n-th time
    /// its id was applied after earlier cells with the id were destroyed
    /// (written as `generation` in `data` when above 0).
    pub fn with_generation(doc: &'a ExecutionCellDocument, generation: u64) -> Self {
        Self { doc, generation }
    }

    fn event(&self, ctx: EventContext, kind: CellEventKind, extra: Value) -> CloudEventV1 {
        let spec = &self.doc.spec;
        let mut data = Map::new();
        data.insert("cellId".into(), json!(spec.id));
        data.insert("specId".into(), json!(spec.id));
        if let Some(run) = spec.correlation.as_ref().and_then(|c| c.run_id.as_ref()) {
            data.insert("runId".into(), json!(run));
        }
        if let Some(placement) = &spec.placement {
            data.insert("placement".into(), json!(placement));
        }
        if self.generation > 0 {
            data.insert("generation".into(), json!(self.generation));
        }
        if let Value::Object(extra) = extra {
            data.extend(extra);
        }
        CloudEventV1 {
            specversion: "1.0".into(),
            id: ctx.id,
            source: ctx.source,
            ty: kind.type_name(),
            datacontenttype: Some("application/json".into()),
            time: Some(rfc3339(ctx.time)),
            traceparent: ctx.traceparent,
            data: Some(Value::Object(data)),
        }
    }

    /// `lifecycle.v1.started`, with the node the cell started on.
    pub fn started(&self, ctx: EventContext, node: &str) -> CloudEventV1 {
        self.event(ctx, CellEventKind::Started, json!({ "node": node }))
    }

    /// `command.v1.completed`.
    pub fn command_completed(
        &self,
        ctx: EventContext,
        exit_code: i32,
        duration_ms: u64,
        terminal_state: TerminalState,
    ) -> CloudEventV1 {
        self.event(
            ctx,
            CellEventKind::CommandCompleted,
            json!({
                "exitCode": exit_code,
                "durationMs": duration_ms,
                "terminalState": terminal_state,
            }),
        )
    }

    /// `lifecycle.v1.destroyed`. `reason` is set only when the teardown was
    /// not the normal end of the cell.
    pub fn destroyed(
        &self,
        ctx: EventContext,
        outcome: &str,
        reason: Option<&str>,
        terminal_state: TerminalState,
    ) -> CloudEventV1 {
        let mut extra = json!({ "outcome": outcome, "terminalState": terminal_state });
        if let Some(reason) = reason {
            extra["reason"] = json!(reason);
        }
        self.event(ctx, CellEventKind::Destroyed, extra)
    }

    /// `lifecycle.v1.failed`: the cell failed for `cause` and was torn
    /// down; `terminal_state` says whether its command was killed.
    pub fn failed(
        &self,
        ctx: EventContext,
        cause: FailureCause,
        reason: &str,
        terminal_state: TerminalState,
    ) -> CloudEventV1 {
        self.event(
            ctx,
            CellEventKind::Failed,
            json!({ "cause": cause, "reason": reason, "terminalState": terminal_state }),
        )
    }

    /// `lifecycle.v1.migrated`.
    pub fn migrated(&self, ctx: EventContext, from_node: &str, to_node: &str) -> CloudEventV1 {
        self.event(
            ctx,
            CellEventKind::Migrated,
            json!({ "fromNode": from_node, "toNode": to_node }),
        )
    }

    /// `identity.v1.materialized`.
    pub fn identity_materialized(&self, ctx: EventContext) -> CloudEventV1 {
        self.event(ctx, CellEventKind::IdentityMaterialized, json!({}))
    }

    /// `identity.v1.failed`; `operation` is `materialize` or `revoke`.
    pub fn identity_failed(
        &self,
        ctx: EventContext,
        operation: &str,
        reason: &str,
    ) -> CloudEventV1 {
        self.event(
            ctx,
            CellEventKind::IdentityFailed,
            json!({ "operation": operation, "reason": reason }),
        )
    }

    /// `identity.v1.revoked`.
    pub fn identity_revoked(&self, ctx: EventContext) -> CloudEventV1 {
        self.event(ctx, CellEventKind::IdentityRevoked, json!({}))
    }

    /// `export.v2.completed`.
    pub fn export_completed(
        &self,
        ctx: EventContext,
        target_name: &str,
        destination: &str,
        bytes_written: u64,
    ) -> CloudEventV1 {
        self.event(
            ctx,
            CellEventKind::ExportCompleted,
            json!({
                "targetName": target_name,
                "destination": destination,
                "bytesWritten": bytes_written,
            }),
        )
    }

    /// `export.v2.failed`.
    pub fn export_failed(&self, ctx: EventContext, reason: &str) -> CloudEventV1 {
        self.event(
            ctx,
            CellEventKind::ExportFailed,
            json!({ "reason": reason }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::spec::{ExecutionCellSpec, Lifetime};

    #[test]
    fn types_round_trip_in_both_namespaces() {
        for kind in CellEventKind::ALL {
            assert_eq!(CellEventKind::from_type(&kind.type_name()), Some(kind));
            let legacy = format!("{LEGACY_TYPE_PREFIX}{}", kind.suffix());
            assert_eq!(CellEventKind::from_type(&legacy), Some(kind));
        }
        assert_eq!(
            CellEventKind::from_type("dev.cellmesh.events.cell.nope"),
            None
        );
        assert_eq!(CellEventKind::from_type("lifecycle.v1.started"), None);
    }

    #[test]
    fn events_carry_the_cell_and_the_envelope() {
        let doc = ExecutionCellDocument::new(ExecutionCellSpec {
            id: "c1".into(),
            authority: Default::default(),
            lifetime: Lifetime { ttl_seconds: 5 },
            run: None,
            placement: None,
            correlation: None,
        });
        let ctx = EventContext {
            id: "e1".into(),
            source: "urn:test".into(),
            time: SystemTime::UNIX_EPOCH,
            traceparent: None,
        };
        let ev = CellEvents::new(&doc).command_completed(ctx, 7, 12, TerminalState::Clean);
        assert_eq!(ev.ty, "dev.cellmesh.events.cell.command.v1.completed");
        assert_eq!(ev.time.as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert_eq!(ev.cell_id(), Some("c1"));
        let data = ev.data.as_ref().unwrap();
        assert_eq!(data["exitCode"], 7);
        assert_eq!(data["terminalState"], "clean");
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["type"], ev.ty);
        assert_eq!(json["specversion"], "1.0");
    }
}
