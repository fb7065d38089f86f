//! [`Node`]: one cellmesh node — mesh, daemon runtime, cells, control
//! plane and metrics — started in one call by [`NodeBuilder::start`].

mod backend;
mod builder;
mod drain;
mod files;
pub(crate) mod kinds;
mod peers;
pub(crate) mod serving;
mod signals;
pub(crate) mod sockets;
pub mod upgrade;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use cellmesh::cell::Cells;
use cellmesh::compute::DaemonRuntime;
use cellmesh::mesh::{Mesh, NodeId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use builder::{NodeBuilder, StartError};
pub use drain::{DrainError, DrainFailure, DrainSummary};
pub use kinds::{Counter, Factory};
pub use signals::RunEnd;

use crate::config::NodeConfig;
use crate::metrics::Metrics;

const SERVING: u8 = 0;
const DRAINING: u8 = 1;
const STOPPING: u8 = 2;
const UPGRADING: u8 = 3;

/// What a node is doing, as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodePhase {
    /// Mesh bound, runtime started, cells log open: ready.
    Serving,
    /// Moving its daemons to peers: not ready.
    Draining,
    /// Leaving the mesh: not ready.
    Stopping,
    /// Handing its daemons to a successor process: not ready.
    Upgrading,
}

/// Where an upgrade of this node stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum UpgradeState {
    /// None running.
    #[default]
    Idle,
    /// The successor is being started.
    Starting,
    /// The successor runs (pid).
    Running {
        /// Its pid.
        successor: u32,
    },
    /// The last one ended without a commit (why).
    Ended(String),
    /// This process handed the node over and must exit.
    HandedOver,
}

impl UpgradeState {
    pub(crate) fn is_running(&self) -> bool {
        matches!(self, Self::Starting | Self::Running { .. })
    }

    pub(crate) fn is_handed_over(&self) -> bool {
        *self == Self::HandedOver
    }
}

pub(crate) struct NodeInner {
    pub(crate) config: NodeConfig,
    pub(crate) mesh: Arc<Mesh>,
    pub(crate) rt: DaemonRuntime,
    pub(crate) cells: Cells,
    pub(crate) metrics: Metrics,
    pub(crate) token: String,
    pub(crate) control_addr: SocketAddr,
    pub(crate) started: Instant,
    pub(crate) kinds: Vec<String>,
    phase: AtomicU8,
    /// Held while a drain runs (a second one is refused).
    pub(crate) drain_lock: tokio::sync::Mutex<()>,
    /// Cell id → its daemon's origin, for cells applied through this
    /// node's control plane (named in drain reports).
    pub(crate) cell_origins: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Duplicates of the node's listening sockets, handed to a successor
    /// in an upgrade.
    pub(crate) sockets: sockets::Sockets,
    /// The data directory's lock, held for as long as the node serves.
    pub(crate) _lock: crate::handoff::DataDirLock,
    /// Where an upgrade of this node stands.
    pub(crate) upgrade: tokio::sync::watch::Sender<UpgradeState>,
    /// The upgrade this process took the node over in, if it did.
    pub(crate) took_over: Option<upgrade::UpgradeReport>,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

impl NodeInner {
    pub(crate) fn phase(&self) -> NodePhase {
        match self.phase.load(Ordering::SeqCst) {
            SERVING => NodePhase::Serving,
            DRAINING => NodePhase::Draining,
            UPGRADING => NodePhase::Upgrading,
            _ => NodePhase::Stopping,
        }
    }

    pub(crate) fn set_phase(&self, phase: NodePhase) {
        let v = match phase {
            NodePhase::Serving => SERVING,
            NodePhase::Draining => DRAINING,
            NodePhase::Stopping => STOPPING,
            NodePhase::Upgrading => UPGRADING,
        };
        self.phase.store(v, Ordering::SeqCst);
    }

    /// Ready: serving, the runtime started, and not shutting down.
    pub(crate) fn is_ready(&self) -> bool {
        self.phase() == NodePhase::Serving && self.rt.is_ready()
    }

    /// Remembers the origin of a cell applied through the control plane.
    pub(crate) fn note_cell_origin(&self, id: &str, origin: u64) {
        self.cell_origins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_string(), origin);
    }

    /// The origin of cell `id`'s daemon, if this node applied it.
    pub(crate) fn cell_origin(&self, id: &str) -> Option<u64> {
        self.cell_origins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .copied()
    }
}

/// One running node. Cheap to clone: clones share the node.
///
/// ```no_run
/// use cellmesh_runtime::{Node, NodeConfig};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut config = NodeConfig::with_data_dir("./my-service-data");
/// config.listen = "127.0.0.1:0".parse()?;
/// config.control.listen = "127.0.0.1:0".parse()?;
/// let node = Node::builder(config)
///     .psk(cellmesh::mesh::Psk::from_bytes([7; 32]))
///     .register("counter", || Box::new(cellmesh_runtime::Counter::default()))
///     .start()
///     .await?;
/// println!("node {} control on {}", node.node_id(), node.control_addr());
/// node.shutdown(None).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.node_id())
            .field("control", &self.inner.control_addr)
            .field("phase", &self.inner.phase())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A builder for a node running with `config`.
    pub fn builder(config: NodeConfig) -> NodeBuilder {
        NodeBuilder::new(config)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.mesh.node_id()
    }

    /// The mesh (QUIC) address the node is bound to.
    pub fn mesh_addr(&self) -> SocketAddr {
        self.inner.mesh.local_addr()
    }

    /// The control plane's bound address.
    pub fn control_addr(&self) -> SocketAddr {
        self.inner.control_addr
    }

    /// The control plane's bearer token.
    pub fn token(&self) -> &str {
        &self.inner.token
    }

    /// The daemon runtime.
    pub fn runtime(&self) -> &DaemonRuntime {
        &self.inner.rt
    }

    /// The node's cells.
    pub fn cells(&self) -> &Cells {
        &self.inner.cells
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// What the node is doing.
    pub fn phase(&self) -> NodePhase {
        self.inner.phase()
    }

    /// Whether `/readyz` answers ready.
    pub fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    /// When the node started.
    pub fn started_at(&self) -> SystemTime {
        SystemTime::now() - self.inner.started.elapsed()
    }

    /// Stops the node: drains it first if `drain` gives a deadline, then
    /// stops the cells' supervisor and the runtime, leaves the mesh and
    /// closes the control plane. Returns the drain's summary, if it ran.
    ///
    /// Cancel safety: not cancel safe; a cancelled shutdown may leave the
    /// node half stopped (drop it to close its sockets).
    pub async fn shutdown(&self, drain: Option<std::time::Duration>) -> Option<DrainSummary> {
        let summary = match drain {
            Some(deadline) => match self.drain(deadline, |_| {}).await {
                Ok(summary) => Some(summary),
                Err(e) => {
                    tracing::warn!(error = %e, "drain before shutdown did not run");
                    None
                }
            },
            None => None,
        };
        self.stop_now().await;
        summary
    }

    /// Stops without draining (daemons hosted here are lost).
    pub(crate) async fn stop_now(&self) {
        let inner = &self.inner;
        inner.set_phase(NodePhase::Stopping);
        upgrade::notify::notify("STOPPING=1");
        tracing::info!(daemons = inner.rt.daemon_count(), "leaving the mesh");
        inner.cells.shutdown().await;
        let _ = inner.rt.shutdown().await;
        inner.mesh.leave().await;
        inner.cancel.cancel();
        inner.tasks.close();
        inner.tasks.wait().await;
        let _ = std::fs::remove_file(inner.config.control_addr_file());
        tracing::info!("node stopped");
    }

    /// The upgrade this process took the node over in, if it did.
    pub fn took_over(&self) -> Option<&upgrade::UpgradeReport> {
        self.inner.took_over.as_ref()
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.inner.config.data_dir.clone()
    }
}
