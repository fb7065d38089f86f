//! The node-level projection of every cell the node's log has seen: one
//! record per cell with its state, exit code, outcome, timestamps,
//! placement and the node it is on, plus the cursor of the last event
//! applied.
//!
//! It is rebuilt by replaying the log ([`NodeCellProjection::replay`]) and
//! yields exactly what the live projection held before a restart. Unlike
//! the per-cell reducer it tolerates any delivery order, as a reader of a
//! shared stream must: a terminal record stays terminal (a late `started`
//! cannot revive a destroyed cell), and events it cannot use advance the
//! cursor without changing a record.
//!
//! **Generations.** An id applied again after its cell ended starts a new
//! generation (`data.generation`, 0 when absent): an event of a newer
//! generation replaces the record (the old one moves to
//! [`past`](NodeCellProjection::past)), an event of an older one is
//! ignored.
//!
//! **Moves.** Built for a node ([`for_node`](NodeCellProjection::for_node)),
//! the projection marks a cell that migrated away from that node
//! [`CellRecordState::Moved`] with `current_node` naming where it went; it
//! is not told of later events on other nodes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::event::{CellEventKind, CloudEventV1};
use super::log::{CellEventLog, LogError};
use super::spec::PlacementSpec;

/// The coarse state of a cell in the node projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellRecordState {
    /// Seen, not started.
    Pending,
    /// Started, not destroyed.
    Running,
    /// Destroyed (terminal).
    Destroyed,
    /// Failed (terminal): it could not start, or its host killed it.
    Failed,
    /// It migrated away from this node (`current_node` says where).
    Moved,
}

/// One cell in the node projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CellRecord {
    /// Cell id.
    pub id: String,
    /// Spec id.
    pub spec_id: String,
    /// Run id, if any.
    pub run_id: Option<String>,
    /// State.
    pub state: CellRecordState,
    /// The command's exit code.
    pub exit_code: Option<i32>,
    /// Outcome of the teardown.
    pub outcome: Option<String>,
    /// Time of `started` (RFC 3339).
    pub started_at: Option<String>,
    /// Time of `destroyed` (RFC 3339).
    pub destroyed_at: Option<String>,
    /// Placement hints.
    pub placement: Option<PlacementSpec>,
    /// The node the cell is on (hex node id).
    pub current_node: Option<String>,
    /// Cursor of the last event applied to this record.
    pub last_cursor: u64,
    /// Which generation of the id this record is (0 for the first).
    #[serde(default)]
    pub generation: u64,
}

/// What [`NodeCellProjection::apply`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// A record changed.
    Applied,
    /// Not a cell event this projection uses, a malformed one, or one that
    /// arrived after its cell's terminal event. The cursor still advanced.
    Ignored,
}

/// Every cell of a node's log, keyed by cell id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCellProjection {
    cells: BTreeMap<String, CellRecord>,
    cursor: u64,
    /// Records of earlier generations, oldest first.
    #[serde(default)]
    past: BTreeMap<String, Vec<CellRecord>>,
    /// The node this projection is of (hex), if known.
    #[serde(default)]
    local: Option<String>,
}

impl NodeCellProjection {
    /// An empty projection at cursor 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty projection of the node `node_hex`'s log.
    pub fn for_node(node_hex: &str) -> Self {
        Self {
            local: Some(node_hex.to_string()),
            ..Self::default()
        }
    }

    /// Rebuilds the projection of node `node_hex` from its whole log.
    ///
    /// # Errors
    /// As [`replay`](Self::replay).
    pub fn replay_for(log: &CellEventLog, node_hex: &str) -> Result<Self, LogError> {
        let mut view = Self::for_node(node_hex);
        view.catch_up(log)?;
        Ok(view)
    }

    /// Records of earlier generations of `cell_id`, oldest first.
    pub fn past(&self, cell_id: &str) -> &[CellRecord] {
        self.past.get(cell_id).map_or(&[], Vec::as_slice)
    }

    /// Rebuilds the projection from the whole log.
    ///
    /// # Errors
    /// [`LogError`] when the log cannot be read or an entry does not verify.
    pub fn replay(log: &CellEventLog) -> Result<Self, LogError> {
        let mut view = Self::new();
        view.catch_up(log)?;
        Ok(view)
    }

    /// Applies every log event after the current cursor.
    ///
    /// # Errors
    /// As [`replay`](Self::replay).
    pub fn catch_up(&mut self, log: &CellEventLog) -> Result<(), LogError> {
        let from = self.cursor;
        log.replay_after(from, |cursor, event| {
            self.apply(cursor, &event.event);
        })?;
        Ok(())
    }

    /// The cursor of the last event applied.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The record of `cell_id`.
    pub fn get(&self, cell_id: &str) -> Option<&CellRecord> {
        self.cells.get(cell_id)
    }

    /// Every record, by cell id.
    pub fn cells(&self) -> impl Iterator<Item = &CellRecord> {
        self.cells.values()
    }

    /// Applies the event at `cursor`. Cursors at or below the current one
    /// are ignored (already applied), so a replay over a live projection
    /// is harmless.
    pub fn apply(&mut self, cursor: u64, event: &CloudEventV1) -> ApplyOutcome {
        if cursor <= self.cursor {
            return ApplyOutcome::Ignored;
        }
        self.cursor = cursor;
        self.apply_event(cursor, event)
    }

    fn apply_event(&mut self, cursor: u64, event: &CloudEventV1) -> ApplyOutcome {
        let Some(kind) = event.kind() else {
            return ApplyOutcome::Ignored;
        };
        let Some(data) = event.data.as_ref() else {
            return ApplyOutcome::Ignored;
        };
        let text = |field: &str| data.get(field).and_then(Value::as_str).map(str::to_string);
        let (Some(cell_id), Some(spec_id)) = (text("cellId"), text("specId")) else {
            return ApplyOutcome::Ignored;
        };
        let generation = data.get("generation").and_then(Value::as_u64).unwrap_or(0);
        if let Some(existing) = self.cells.get(&cell_id) {
            if generation < existing.generation {
                return ApplyOutcome::Ignored;
            }
            if generation > existing.generation {
                if let Some(old) = self.cells.remove(&cell_id) {
                    self.past.entry(cell_id.clone()).or_default().push(old);
                }
            }
        }
        let local = self.local.clone();
        let record = self
            .cells
            .entry(cell_id.clone())
            .or_insert_with(|| CellRecord {
                id: cell_id,
                spec_id,
                run_id: None,
                state: CellRecordState::Pending,
                exit_code: None,
                outcome: None,
                started_at: None,
                destroyed_at: None,
                placement: None,
                current_node: None,
                last_cursor: cursor,
                generation,
            });
        if matches!(
            record.state,
            CellRecordState::Destroyed | CellRecordState::Failed
        ) {
            return ApplyOutcome::Ignored;
        }
        if record.run_id.is_none() {
            record.run_id = text("runId");
        }
        if record.placement.is_none() {
            record.placement = data
                .get("placement")
                .and_then(|p| serde_json::from_value(p.clone()).ok());
        }
        match kind {
            CellEventKind::Started => {
                record.state = CellRecordState::Running;
                record.started_at.clone_from(&event.time);
                if let Some(node) = text("node") {
                    record.current_node = Some(node);
                }
            }
            CellEventKind::CommandCompleted => {
                let code = data.get("exitCode").and_then(Value::as_i64);
                record.exit_code = code.and_then(|c| i32::try_from(c).ok());
            }
            CellEventKind::Destroyed => {
                record.state = CellRecordState::Destroyed;
                record.destroyed_at.clone_from(&event.time);
                record.outcome = text("outcome");
            }
            CellEventKind::Failed => {
                record.state = CellRecordState::Failed;
                record.destroyed_at.clone_from(&event.time);
                record.outcome = Some("failed".into());
            }
            CellEventKind::Migrated => {
                let to = text("toNode");
                if local.is_some() && to == local {
                    record.state = CellRecordState::Running;
                } else if local.is_some() && text("fromNode") == local {
                    record.state = CellRecordState::Moved;
                }
                if let Some(node) = to {
                    record.current_node = Some(node);
                }
            }
            _ => {}
        }
        record.last_cursor = cursor;
        ApplyOutcome::Applied
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::cell::event::{CellEvents, EventContext, TerminalState};
    use crate::cell::sign::SignedCloudEvent;
    use crate::cell::spec::{ExecutionCellDocument, ExecutionCellSpec, Lifetime};
    use crate::Identity;

    fn doc(id: &str) -> ExecutionCellDocument {
        ExecutionCellDocument::new(ExecutionCellSpec {
            id: id.into(),
            authority: Default::default(),
            lifetime: Lifetime { ttl_seconds: 5 },
            run: None,
            placement: Some(PlacementSpec {
                pool_id: Some("p".into()),
                ..Default::default()
            }),
            correlation: None,
        })
    }

    fn ctx(id: &str) -> EventContext {
        EventContext {
            id: id.into(),
            source: "urn:test".into(),
            time: SystemTime::UNIX_EPOCH,
            traceparent: None,
        }
    }

    fn lifecycle(cell: &str) -> Vec<CloudEventV1> {
        let d = doc(cell);
        let ev = CellEvents::new(&d);
        vec![
            ev.started(ctx(&format!("{cell}-1")), "node-a"),
            ev.command_completed(ctx(&format!("{cell}-2")), 3, 10, TerminalState::Clean),
            ev.migrated(ctx(&format!("{cell}-3")), "node-a", "node-b"),
            ev.destroyed(
                ctx(&format!("{cell}-4")),
                "failed",
                None,
                TerminalState::Clean,
            ),
        ]
    }

    #[test]
    fn a_lifecycle_projects_to_a_terminal_record() {
        let mut view = NodeCellProjection::new();
        for (i, e) in lifecycle("c").iter().enumerate() {
            assert_eq!(view.apply(i as u64 + 1, e), ApplyOutcome::Applied);
        }
        let r = view.get("c").unwrap();
        assert_eq!(r.state, CellRecordState::Destroyed);
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.outcome.as_deref(), Some("failed"));
        assert_eq!(r.current_node.as_deref(), Some("node-b"));
        assert_eq!(r.placement.as_ref().unwrap().pool_id.as_deref(), Some("p"));
        assert_eq!(view.cursor(), 4);
    }

    #[test]
    fn terminal_stays_terminal_under_out_of_order_delivery() {
        let events = lifecycle("c");
        let mut view = NodeCellProjection::new();
        view.apply(1, &events[3]); // destroyed first
        assert_eq!(view.apply(2, &events[0]), ApplyOutcome::Ignored);
        assert_eq!(view.apply(3, &events[1]), ApplyOutcome::Ignored);
        let r = view.get("c").unwrap();
        assert_eq!(r.state, CellRecordState::Destroyed);
        assert_eq!(r.exit_code, None);
        assert_eq!(view.cursor(), 3, "ignored events still advance the cursor");
        // An old cursor is not applied again.
        assert_eq!(view.apply(2, &events[0]), ApplyOutcome::Ignored);
    }

    #[test]
    fn replay_after_reopen_rebuilds_the_same_projection_and_cursor() {
        let dir = std::env::temp_dir().join(format!("cellmesh-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let node = Identity::generate();
        let mut live = NodeCellProjection::new();
        {
            let log = CellEventLog::open(&dir).unwrap();
            for cell in ["a", "b"] {
                for e in lifecycle(cell)
                    .into_iter()
                    .take(if cell == "a" { 4 } else { 2 })
                {
                    let signed = SignedCloudEvent::sign(e, node.keypair());
                    let cursor = log.append(&signed).unwrap();
                    live.apply(cursor, &signed.event);
                }
            }
            assert_eq!(log.last_cursor().unwrap(), 6);
        }
        let log = CellEventLog::open(&dir).unwrap();
        let replayed = NodeCellProjection::replay(&log).unwrap();
        assert_eq!(replayed, live);
        assert_eq!(replayed.cursor(), 6);
        assert_eq!(replayed.get("b").unwrap().state, CellRecordState::Running);
        // Cursors keep growing after the restart.
        let more = CellEvents::new(&doc("b")).destroyed(
            ctx("b-9"),
            "succeeded",
            None,
            TerminalState::Clean,
        );
        assert_eq!(
            log.append(&SignedCloudEvent::sign(more, node.keypair()))
                .unwrap(),
            7
        );

        // A tampered entry is refused with its cursor named.
        let mut signed: SignedCloudEvent =
            serde_json::from_slice(&log.read_after(0, 1).unwrap()[0].1.to_json()).unwrap();
        signed.event.id = "forged".into();
        log.overwrite_raw(1, &signed.to_json()).unwrap();
        let err = NodeCellProjection::replay(&log).unwrap_err();
        assert!(matches!(err, LogError::BadEntry { cursor: 1, .. }), "{err}");
        drop(log);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
