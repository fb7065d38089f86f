//! A backend whose cells run on peer nodes of the mesh: the nested host.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::client::{lost, CellClient};
use super::command::{Command, Reply, CELL_KIND};
use crate::cell::backend::{
    check_doc, vacant, wrong_host, BackendFuture, CellBackend, CellError, CellHandle, CellHost,
    ExitReport, TeardownReport,
};
use crate::cell::projection::LifecycleStage;
use crate::cell::spec::ExecutionCellDocument;
use crate::compute::{DaemonError, DaemonHostConfig, DaemonRuntime, Placement};
use crate::Identity;
use crate::NodeId;

/// Longest pause between two reads of a remote cell's state while waiting
/// for its command.
const MAX_POLL: Duration = Duration::from_millis(250);

/// Places each cell on a peer node whose capabilities meet the cell's
/// `placement.requires`, where it runs as a cell daemon under that node's
/// own [`Cells`](crate::cell::Cells) and backend. `destroy` and
/// `wait_for_exit` go to the node the cell lives on (following it if it
/// migrates); this node only tracks the remote handle.
///
/// Under [`Cells`](crate::cell::Cells) a cell is not created through this
/// backend: [`place`](CellBackend::place) names the peer, the cell's one
/// daemon is spawned there and runs on that peer's backend, and the node
/// that accepted the apply keeps a pointer to it. `create` remains for
/// direct use of the backend.
///
/// The peer must run [`Cells`](crate::cell::Cells). A peer that stops
/// answering surfaces as [`CellError::PeerLost`] within 10 s of a call,
/// never as a hang. `wait_for_exit` reads the remote state at growing
/// intervals (at most 250 ms apart).
pub struct FederatedBackend {
    client: CellClient,
    /// `None` while a create is placing the cell.
    cells: Mutex<HashMap<String, Option<CellHandle>>>,
}

impl std::fmt::Debug for FederatedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederatedBackend")
            .field("cells", &self.tracked_cell_count())
            .finish_non_exhaustive()
    }
}

impl FederatedBackend {
    /// A backend placing cells through `rt`'s node.
    pub fn new(rt: &DaemonRuntime) -> Self {
        Self {
            client: CellClient::new(rt.clone()),
            cells: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<CellHandle>>> {
        // Each critical section leaves the map consistent.
        self.cells.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The peer to place `doc` on: capable, not this node, and holding the
    /// fewest of this backend's cells.
    fn choose(&self, doc: &ExecutionCellDocument) -> Result<NodeId, CellError> {
        let filter = doc.placement_filter();
        let mesh = self.client.runtime().mesh();
        let me = mesh.node_id();
        let cells = self.lock();
        let load = |node: &NodeId| {
            cells
                .values()
                .filter(|h| {
                    matches!(h, Some(CellHandle { host: CellHost::Remote { node: n, .. }, .. }) if n == node)
                })
                .count()
        };
        mesh.find_nodes(&filter)
            .into_iter()
            .filter(|n| *n != me)
            .min_by_key(|n| (load(n), *n))
            .ok_or_else(|| CellError::NoCapableNode {
                id: doc.id().to_string(),
                why: format!("no connected peer meets {filter:?}"),
            })
    }

    async fn place(&self, doc: &ExecutionCellDocument) -> Result<CellHandle, CellError> {
        let id = doc.id().to_string();
        let node = self.choose(doc)?;
        let rt = self.client.runtime();
        let placed = rt
            .spawn_on(
                CELL_KIND,
                Identity::generate(),
                DaemonHostConfig::default(),
                Placement::Node(node),
            )
            .await
            .map_err(|e| match e {
                DaemonError::FactoryNotFound(_) => CellError::Remote {
                    id: id.clone(),
                    reason: format!("node {node} runs no cell host"),
                },
                other => lost(&id, node, other.to_string()),
            })?;
        let command = Command::Apply {
            doc: Box::new(doc.clone()),
            origin: placed.origin_hash,
            generation: 0,
        };
        self.client
            .call_ok(&id, placed.origin_hash, &command)
            .await?;
        Ok(CellHandle {
            cell_id: id,
            host: CellHost::Remote {
                node,
                origin_hash: placed.origin_hash,
            },
        })
    }

    fn remote(&self, handle: &CellHandle) -> Result<(NodeId, u64), CellError> {
        match self.lock().get(&handle.cell_id) {
            Some(Some(CellHandle {
                host: CellHost::Remote { node, origin_hash },
                ..
            })) => Ok((*node, *origin_hash)),
            _ => Err(CellError::UnknownCell(handle.cell_id.clone())),
        }
    }
}

impl CellBackend for FederatedBackend {
    fn name(&self) -> &'static str {
        "federated"
    }

    fn create<'a>(&'a self, doc: &'a ExecutionCellDocument) -> BackendFuture<'a, CellHandle> {
        Box::pin(async move {
            check_doc(doc)?;
            // Reserve the id while the cell is placed.
            vacant(&mut self.lock(), doc.id())?.insert(None);
            match self.place(doc).await {
                Ok(handle) => {
                    self.lock()
                        .insert(doc.id().to_string(), Some(handle.clone()));
                    Ok(handle)
                }
                Err(e) => {
                    self.lock().remove(doc.id());
                    Err(e)
                }
            }
        })
    }

    fn destroy<'a>(&'a self, handle: &'a CellHandle) -> BackendFuture<'a, TeardownReport> {
        Box::pin(async move {
            let tracked = {
                let mut cells = self.lock();
                match cells.get(&handle.cell_id) {
                    Some(Some(_)) => cells.remove(&handle.cell_id).flatten(),
                    _ => None,
                }
            };
            let Some(tracked) = tracked else {
                return Err(CellError::UnknownCell(handle.cell_id.clone()));
            };
            let CellHost::Remote { origin_hash, .. } = tracked.host else {
                return Err(CellError::UnknownCell(handle.cell_id.clone()));
            };
            let command = Command::Destroy { reason: None };
            match self
                .client
                .call_ok(&handle.cell_id, origin_hash, &command)
                .await
            {
                Ok(_) | Err(CellError::UnknownCell(_)) => {}
                Err(e) => {
                    // Not torn down: keep tracking it so a retry can.
                    self.lock().insert(handle.cell_id.clone(), Some(tracked));
                    return Err(e);
                }
            }
            Ok(TeardownReport {
                cell_id: handle.cell_id.clone(),
                destroyed: true,
                peers_tracked_after: self.tracked_cell_count(),
                exit: None,
            })
        })
    }

    fn wait_for_exit<'a>(
        &'a self,
        handle: &'a CellHandle,
    ) -> BackendFuture<'a, Option<ExitReport>> {
        Box::pin(async move {
            let mut pause = Duration::from_millis(5);
            loop {
                let (node, origin) = self.remote(handle)?;
                let reply = self
                    .client
                    .call_ok(&handle.cell_id, origin, &Command::Query)
                    .await
                    .map_err(|e| match e {
                        // We still track it, so it exists: its host is gone.
                        CellError::UnknownCell(_) => {
                            lost(&handle.cell_id, node, "the cell's host no longer answers")
                        }
                        other => other,
                    })?;
                let Reply::State {
                    state,
                    exit,
                    running,
                    ..
                } = reply
                else {
                    return Err(CellError::Remote {
                        id: handle.cell_id.clone(),
                        reason: "unexpected answer to a query".into(),
                    });
                };
                if let Some(exit) = exit {
                    return Ok(Some(*exit));
                }
                if !running && state.lifecycle_stage != LifecycleStage::Pending {
                    return Ok(None);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_POLL);
            }
        })
    }

    fn remote_origin(&self, cell_id: &str) -> Option<u64> {
        match self.lock().get(cell_id)?.as_ref()?.host {
            CellHost::Remote { origin_hash, .. } => Some(origin_hash),
            CellHost::Local => None,
        }
    }

    fn tracked_cell_count(&self) -> usize {
        self.lock().values().filter(|h| h.is_some()).count()
    }

    fn place(&self, doc: &ExecutionCellDocument) -> Result<Option<NodeId>, CellError> {
        check_doc(doc)?;
        self.choose(doc).map(Some)
    }

    fn has_tracked_state(&self, cell_id: &str) -> bool {
        matches!(self.lock().get(cell_id), Some(Some(_)))
    }

    fn adopt(
        &self,
        doc: &ExecutionCellDocument,
        host: CellHost,
        _exit: Option<ExitReport>,
    ) -> Result<CellHandle, CellError> {
        if host == CellHost::Local {
            return Err(wrong_host(doc, host));
        }
        let mut cells = self.lock();
        let slot = vacant(&mut cells, doc.id())?;
        let handle = CellHandle {
            cell_id: doc.id().to_string(),
            host,
        };
        slot.insert(Some(handle.clone()));
        Ok(handle)
    }

    fn release(&self, handle: &CellHandle) -> Result<(), CellError> {
        match self.lock().remove(&handle.cell_id) {
            Some(Some(_)) => Ok(()),
            _ => Err(CellError::UnknownCell(handle.cell_id.clone())),
        }
    }
}
