//! Pointers: the cells this node applied that run on another node.
//!
//! A cell placed on a peer has one daemon, on the peer; the node that
//! accepted the apply keeps a pointer (its origin hash in `known`, and the
//! record kept here), never a second cell. [`Cells::list`] shows pointers
//! beside the cells of the node's own log, so an operator sees every cell
//! applied through the node. A pointer's record is refreshed from the
//! cell's daemon every [`REFRESH`] until the cell is destroyed or failed,
//! and on every [`Cells::get`]: it lags its cell by at most that interval
//! plus one round trip (a migration of the cell shows as a new
//! `current_node`).
//!
//! Pointers are kept in `DATA_DIR/cell-pointers.json` (rewritten whole,
//! atomically, when one changes), so a restarted or upgraded node still
//! knows the cells it placed elsewhere.
//!
//! [`Cells::list`]: super::Cells::list
//! [`Cells::get`]: super::Cells::get

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use super::cells::CellsInner;
use crate::cell::node_view::{CellRecord, CellRecordState};
use crate::cell::projection::{CellStateSnapshot, CurrentState, LifecycleStage};
use crate::cell::remote::command::{Command, Reply};
use crate::cell::spec::ExecutionCellDocument;
use crate::NodeId;

/// How often a live pointer is re-read from its cell.
pub const REFRESH: Duration = Duration::from_secs(1);

/// The file pointers are kept in, in the data directory.
pub const POINTERS_FILE: &str = "cell-pointers.json";

/// One pointer as the file keeps it.
#[derive(Serialize, Deserialize)]
struct Kept {
    record: CellRecord,
    origin: u64,
}

/// The records of the cells this node points to, by cell id, with their
/// daemons' origins.
#[derive(Default)]
pub(crate) struct Pointers {
    records: DashMap<String, (CellRecord, u64)>,
    /// Where they are kept; serializes the writes.
    file: Mutex<Option<PathBuf>>,
}

impl Pointers {
    /// The pointers kept in `data_dir` (none if there is no file; an
    /// unreadable one is reported and ignored).
    pub(crate) fn open(data_dir: &Path) -> Self {
        let path = data_dir.join(POINTERS_FILE);
        let records = DashMap::new();
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<Kept>>(&bytes) {
                Ok(kept) => {
                    for k in kept {
                        records.insert(k.record.id.clone(), (k.record, k.origin));
                    }
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cell pointers unreadable; starting without them")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cell pointers unreadable; starting without them")
            }
        }
        Self {
            records,
            file: Mutex::new(Some(path)),
        }
    }

    /// Every pointer's cell id and origin.
    pub(crate) fn origins(&self) -> Vec<(String, u64)> {
        self.records
            .iter()
            .map(|r| (r.key().clone(), r.value().1))
            .collect()
    }

    /// Writes every pointer to the file (whole, then renamed over it).
    fn save(&self) {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let Some(path) = file.as_ref() else {
            return;
        };
        let kept: Vec<Kept> = self
            .records
            .iter()
            .map(|r| Kept {
                record: r.value().0.clone(),
                origin: r.value().1,
            })
            .collect();
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec(&kept)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "cell pointers not saved");
        }
    }

    /// Records that cell `doc` (generation `generation`, daemon `origin`)
    /// was placed on `node`.
    pub(crate) fn placed(
        &self,
        doc: &ExecutionCellDocument,
        generation: u64,
        node: NodeId,
        origin: u64,
    ) {
        let id = doc.id().to_string();
        let record = CellRecord {
            id: id.clone(),
            spec_id: doc.spec.id.clone(),
            run_id: None,
            state: CellRecordState::Pending,
            exit_code: None,
            outcome: None,
            started_at: None,
            destroyed_at: None,
            placement: doc.spec.placement.clone(),
            current_node: Some(node.to_string()),
            last_cursor: 0,
            generation,
        };
        self.records.insert(id, (record, origin));
        self.save();
    }

    /// Forgets the pointer of `id` (the id now names a cell of this node).
    pub(crate) fn remove(&self, id: &str) {
        if self.records.remove(id).is_some() {
            self.save();
        }
    }

    /// Updates the pointer of `id`, if there is one, from its cell's
    /// projection.
    pub(crate) fn observe(&self, id: &str, snap: &CellStateSnapshot) {
        let changed = match self.records.get_mut(id) {
            Some(mut entry) => {
                let before = entry.0.clone();
                apply(&mut entry.0, snap);
                entry.0 != before
            }
            None => false,
        };
        if changed {
            self.save();
        }
    }

    /// The record of `id`, if this node points to it.
    pub(crate) fn get(&self, id: &str) -> Option<CellRecord> {
        self.records.get(id).map(|r| r.0.clone())
    }

    /// Every pointer's record.
    pub(crate) fn all(&self) -> Vec<CellRecord> {
        self.records.iter().map(|r| r.0.clone()).collect()
    }

    /// The ids of the pointers whose cells have not ended.
    fn live(&self) -> Vec<String> {
        self.records
            .iter()
            .filter(|r| !ended(r.0.state))
            .map(|r| r.0.id.clone())
            .collect()
    }
}

fn ended(state: CellRecordState) -> bool {
    matches!(state, CellRecordState::Destroyed | CellRecordState::Failed)
}

/// Copies what the node record shows from a cell's projection.
fn apply(record: &mut CellRecord, snap: &CellStateSnapshot) {
    record.state = match snap.lifecycle_stage {
        LifecycleStage::Pending => CellRecordState::Pending,
        LifecycleStage::Started | LifecycleStage::CommandCompleted => CellRecordState::Running,
        LifecycleStage::Destroyed => CellRecordState::Destroyed,
        LifecycleStage::Failed => CellRecordState::Failed,
    };
    record.exit_code = snap.command_exit_code;
    if snap.run_id.is_some() {
        record.run_id.clone_from(&snap.run_id);
    }
    if snap.current_node.is_some() {
        record.current_node.clone_from(&snap.current_node);
    }
    // As the hosting node's supervisor words it: a teardown of a command
    // that exited 0 (or had none), with no reason given, succeeded.
    let clean = snap.command_exit_code.is_none_or(|c| c == 0);
    record.outcome = match (ended(record.state), snap.current_state) {
        (false, _) => None,
        (true, CurrentState::Destroyed) if clean => Some("succeeded".into()),
        (true, _) => Some("failed".into()),
    };
}

/// Re-reads every live pointer every [`REFRESH`] until `inner` is shut
/// down.
pub(crate) async fn refresh(inner: Arc<CellsInner>) {
    loop {
        tokio::select! {
            () = inner.cancel.cancelled() => return,
            () = tokio::time::sleep(REFRESH) => {}
        }
        for id in inner.pointers.live() {
            let Some(origin) = inner.known.get(&id).map(|o| *o) else {
                continue;
            };
            if let Ok(Reply::State { state, .. }) =
                inner.client.call(&id, origin, &Command::Query).await
            {
                inner.pointers.observe(&id, &state);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::spec::{ExecutionCellSpec, Lifetime};

    fn doc(id: &str) -> ExecutionCellDocument {
        ExecutionCellDocument::new(ExecutionCellSpec {
            id: id.into(),
            authority: Default::default(),
            lifetime: Lifetime { ttl_seconds: 5 },
            run: None,
            placement: None,
            correlation: None,
        })
    }

    #[test]
    fn a_pointer_follows_its_cell_to_the_end() {
        let pointers = Pointers::default();
        let node = NodeId::from(crate::Identity::from_seed([1u8; 32]).entity_id());
        pointers.placed(&doc("p"), 2, node, 77);
        let placed = pointers.get("p").unwrap();
        assert_eq!(placed.state, CellRecordState::Pending);
        assert_eq!(placed.current_node, Some(node.to_string()));
        assert_eq!(placed.generation, 2);
        assert_eq!(pointers.live(), ["p"]);

        let mut snap = crate::cell::projection::CellStateProjection::default().snapshot();
        snap.lifecycle_stage = LifecycleStage::CommandCompleted;
        snap.current_state = CurrentState::CommandFailed;
        snap.command_exit_code = Some(3);
        snap.current_node = Some("elsewhere".into());
        pointers.observe("p", &snap);
        let running = pointers.get("p").unwrap();
        assert_eq!(running.state, CellRecordState::Running);
        assert_eq!(running.exit_code, Some(3));
        assert_eq!(running.current_node.as_deref(), Some("elsewhere"));
        assert_eq!(running.outcome, None);

        snap.lifecycle_stage = LifecycleStage::Destroyed;
        snap.current_state = CurrentState::Destroyed;
        pointers.observe("p", &snap);
        let gone = pointers.get("p").unwrap();
        assert_eq!(gone.state, CellRecordState::Destroyed);
        assert_eq!(gone.outcome.as_deref(), Some("failed"));
        assert!(pointers.live().is_empty());

        // An unknown id is not made up.
        pointers.observe("q", &snap);
        assert!(pointers.get("q").is_none());
        pointers.remove("p");
        assert!(pointers.all().is_empty());
    }
}
