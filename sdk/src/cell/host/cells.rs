//! [`Cells`]: the cell API of one node.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::daemon::CellDaemon;
use super::node::CellNode;
use super::pointers::Pointers;
use super::supervisor::Hosted;
use crate::cell::backend::{CellBackend, CellError, CellOutput, Containment, ExitReport};
use crate::cell::log::{CellEventLog, LogError};
use crate::cell::node_view::{CellRecord, NodeCellProjection};
use crate::cell::projection::{CellStateSnapshot, LifecycleStage};
use crate::cell::remote::command::{Command, Reply};
use crate::cell::remote::CellClient;
use crate::cell::remote::CELL_KIND;
use crate::cell::spec::ExecutionCellDocument;
use crate::compute::{DaemonHostConfig, DaemonRuntime, MigrateError, Placement, RegisterError};
use crate::Identity;
use crate::NodeId;

/// Why [`Cells::start`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CellsStartError {
    /// The event log could not be opened or replayed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The cell daemon kind could not be registered (another `Cells` runs
    /// on this runtime).
    #[error("cannot register the cell daemon kind: {0}")]
    Runtime(#[from] RegisterError),
}

/// Why moving a cell failed. The cell keeps running where it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CellMigrateError {
    /// The cell cannot move (not hosted here, or its command is running).
    #[error(transparent)]
    Cell(#[from] CellError),
    /// The daemon migration failed; the cell stays on this node.
    #[error("cell {id:?} stays on this node: {source}")]
    Migrate {
        /// The cell.
        id: String,
        /// Why.
        #[source]
        source: MigrateError,
    },
    /// The node is handing its cells to its next process (an upgrade):
    /// migrate the cell once that is over.
    #[error("cell {0:?} stays: the node is being upgraded")]
    Upgrading(String),
}

pub(crate) struct CellsInner {
    pub(crate) rt: DaemonRuntime,
    pub(crate) node: Arc<CellNode>,
    pub(crate) backend: Arc<dyn CellBackend>,
    pub(crate) client: CellClient,
    /// Cell id → origin hash of its daemon, for every cell applied or
    /// hosted here.
    pub(crate) known: DashMap<String, u64>,
    /// Cell id → how many times it was applied here after an earlier cell
    /// with the id ended.
    pub(crate) generations: DashMap<String, u64>,
    /// Ids being applied right now.
    applying: dashmap::DashSet<String>,
    /// Cells this node's supervisor runs.
    pub(crate) hosted: DashMap<String, Hosted>,
    /// Destroys that arrived for a cell before its task (a migration in
    /// flight).
    pub(super) pending_destroy: DashMap<String, Option<String>>,
    /// Held (read) by every migration of a cell from here, taken (write)
    /// by a hand-off to the node's next process.
    pub(super) moves: tokio::sync::RwLock<()>,
    /// Set while the cells are handed off to the node's next process: no
    /// cell migrates meanwhile.
    pub(super) handing_off: std::sync::atomic::AtomicBool,
    /// Cells applied here that run on another node.
    pub(crate) pointers: Pointers,
    /// The JetStream publisher's progress (a log cursor).
    pub(crate) published: tokio::sync::watch::Sender<u64>,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

/// The cells of one node: apply documents, read projections, destroy and
/// migrate cells. Each cell runs as a daemon of kind
/// [`CELL_KIND`](crate::cell::CELL_KIND) on the node's [`DaemonRuntime`];
/// the node's supervisor runs it on the node's [`CellBackend`], and every
/// lifecycle event is signed by the node, applied to the cell's projection
/// and appended to the node's durable log.
///
/// **Migration** ([`migrate`](Self::migrate)) moves the cell daemon with
/// its projection, document and event history; the target records a
/// `migrated` event and its backend takes the cell over, and the source's
/// backend forgets it. A cell whose command is still running is refused
/// with [`CellError::CommandRunning`]: a running OS process cannot be moved
/// between machines, and waiting for it could hold the migration past any
/// deadline; migrate it once the command has completed.
///
/// A cell's lifecycle events are written to the node's log by the cell
/// daemon as it processes them (one redb transaction each, on the daemon's
/// event lane); cells see a handful of events in their life, so this costs
/// nothing measurable, but it is why cell daemons should not share a node
/// with latency-critical daemons that process millions of events a second.
#[derive(Clone)]
pub struct Cells {
    pub(super) inner: Arc<CellsInner>,
}

impl std::fmt::Debug for Cells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cells")
            .field("backend", &self.inner.backend.name())
            .field("hosted", &self.inner.hosted.len())
            .finish_non_exhaustive()
    }
}

impl Cells {
    /// Starts cells on `rt`'s node: opens (or creates) the event log in
    /// `data_dir`, rebuilds the node projection from it, registers the cell
    /// daemon kind and starts the supervisor. `rt` may be started before or
    /// after.
    ///
    /// # Errors
    /// [`CellsStartError`].
    pub fn start(
        rt: &DaemonRuntime,
        backend: Arc<dyn CellBackend>,
        data_dir: &Path,
    ) -> Result<Self, CellsStartError> {
        let mesh = rt.mesh();
        let log = Arc::new(CellEventLog::open_owned(
            data_dir,
            &mesh.keypair().entity_id(),
        )?);
        let node_hex = mesh.node_id().to_string();
        let view = NodeCellProjection::replay_for(&log, &node_hex)?;
        let (tx, rx) = mpsc::unbounded_channel();
        backend.attach_data_dir(data_dir);
        if let Some(containment) = backend.containment() {
            tracing::info!(%containment, backend = backend.name(), "cells start");
        }
        let known_mesh = Arc::clone(mesh);
        let known: super::node::KnownSigner = Arc::new(move |signer| {
            let node = NodeId::from(*signer);
            known_mesh.peers().contains(&node)
                || known_mesh.members().iter().any(|m| m.node == node)
        });
        let node = Arc::new(
            CellNode::new(node_hex, mesh.keypair().clone(), log, view, tx)
                .with(Arc::clone(&backend), known),
        );
        // Cells placed elsewhere before a restart or an upgrade.
        let pointers = Pointers::open(data_dir);
        let known_cells = DashMap::new();
        for (id, origin) in pointers.origins() {
            known_cells.insert(id, origin);
        }
        let for_factory = Arc::clone(&node);
        rt.register_factory(CELL_KIND, move || {
            Box::new(CellDaemon::new(Arc::clone(&for_factory)))
        })?;
        let inner = Arc::new(CellsInner {
            rt: rt.clone(),
            node,
            backend,
            client: CellClient::new(rt.clone()),
            known: known_cells,
            generations: DashMap::new(),
            applying: dashmap::DashSet::new(),
            hosted: DashMap::new(),
            pending_destroy: DashMap::new(),
            moves: tokio::sync::RwLock::new(()),
            handing_off: std::sync::atomic::AtomicBool::new(false),
            pointers,
            published: tokio::sync::watch::channel(0).0,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        inner
            .tasks
            .spawn(super::supervisor::supervise(Arc::clone(&inner), rx));
        inner
            .tasks
            .spawn(super::pointers::refresh(Arc::clone(&inner)));
        Ok(Self { inner })
    }

    /// Applies `doc`: validates it, spawns its cell daemon on this node and
    /// starts the cell on this node's backend. Returns the daemon's origin
    /// hash.
    ///
    /// # Errors
    /// `InvalidSpec`; `AlreadyExists` if a live cell with this id is known
    /// here; a runtime error as `Remote`.
    pub async fn apply(&self, doc: ExecutionCellDocument) -> Result<u64, CellError> {
        doc.validate()?;
        let id = doc.id().to_string();
        // One apply of an id at a time: a concurrent second one is refused.
        if !self.inner.applying.insert(id.clone()) {
            return Err(CellError::AlreadyExists(id));
        }
        let result = self.apply_reserved(&id, doc).await;
        self.inner.applying.remove(&id);
        result
    }

    async fn apply_reserved(&self, id: &str, doc: ExecutionCellDocument) -> Result<u64, CellError> {
        let id = id.to_string();
        let generation = match self.inner.known.get(&id).map(|o| *o) {
            Some(origin) => {
                if !self.has_ended(&id, origin).await {
                    return Err(CellError::AlreadyExists(id));
                }
                self.next_generation(&id)
            }
            None => self.next_generation(&id),
        };
        let rt = &self.inner.rt;
        // Federated placement: the cell's one daemon goes where it runs;
        // this node keeps a pointer to it.
        let placed_on = self.inner.backend.place(&doc)?;
        let placement = placed_on.map_or(Placement::Local, Placement::Node);
        let pointer = placed_on.map(|node| (doc.clone(), node));
        let config = DaemonHostConfig::default();
        let daemon = rt
            .spawn_on(CELL_KIND, Identity::generate(), config, placement)
            .await
            .map_err(|e| CellError::Remote {
                id: id.clone(),
                reason: e.to_string(),
            })?;
        let origin = daemon.origin_hash;
        self.inner.known.insert(id.clone(), origin);
        let command = Command::Apply {
            doc: Box::new(doc),
            origin,
            generation,
        };
        if let Err(e) = self.inner.client.call_ok(&id, origin, &command).await {
            self.inner.known.remove(&id);
            let _ = rt.stop(origin).await;
            return Err(e);
        }
        match pointer {
            Some((doc, node)) => self.inner.pointers.placed(&doc, generation, node, origin),
            None => self.inner.pointers.remove(&id),
        }
        self.inner.generations.insert(id, generation);
        Ok(origin)
    }

    /// The generation a new cell with id `id` gets: one more than the last
    /// one this node applied or logged, 0 for a first.
    fn next_generation(&self, id: &str) -> u64 {
        let logged = {
            let view = self
                .inner
                .node
                .view
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            view.get(id).map(|r| r.generation + 1)
        };
        let applied = self.inner.generations.get(id).map(|g| *g + 1);
        logged.max(applied).unwrap_or(0)
    }

    /// Whether the cell behind `origin` is destroyed or failed (or its
    /// daemon is gone).
    async fn has_ended(&self, id: &str, origin: u64) -> bool {
        match self.inner.client.call(id, origin, &Command::Query).await {
            Ok(Reply::State { state, .. }) => matches!(
                state.lifecycle_stage,
                LifecycleStage::Destroyed | LifecycleStage::Failed
            ),
            Err(CellError::UnknownCell(_)) => true,
            _ => false,
        }
    }

    fn origin_of(&self, id: &str) -> Result<u64, CellError> {
        self.inner
            .known
            .get(id)
            .map(|o| *o)
            .ok_or_else(|| CellError::UnknownCell(id.to_string()))
    }

    /// The projection of cell `id`, read from its daemon wherever it lives.
    ///
    /// # Errors
    /// `UnknownCell`, or `PeerLost` if its node does not answer.
    pub async fn get(&self, id: &str) -> Result<CellStateSnapshot, CellError> {
        Ok(self.query(id).await?.0)
    }

    /// The projection and how the command ended, if it has.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn query(
        &self,
        id: &str,
    ) -> Result<(CellStateSnapshot, Option<ExitReport>), CellError> {
        let origin = self.origin_of(id)?;
        match self
            .inner
            .client
            .call_ok(id, origin, &Command::Query)
            .await?
        {
            Reply::State { state, exit, .. } => {
                self.inner.pointers.observe(id, &state);
                let mut exit = exit.map(|e| *e);
                if let Some(exit) = exit.as_mut() {
                    if let Ok(out) = self.output(id).await {
                        exit.stdout = out.stdout;
                        exit.stderr = out.stderr;
                    }
                }
                Ok((*state, exit))
            }
            _ => Err(CellError::Remote {
                id: id.to_string(),
                reason: "unexpected answer to a query".into(),
            }),
        }
    }

    /// Waits until the projection of `id` satisfies `done`, up to `timeout`.
    /// Returns the last projection read.
    ///
    /// # Errors
    /// As [`get`](Self::get); [`CellError::Timeout`] naming the id and the
    /// last state read when `timeout` passes.
    pub async fn wait_until(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&CellStateSnapshot) -> bool,
    ) -> Result<CellStateSnapshot, CellError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.inner.node.changes.subscribe();
        loop {
            let snap = self.get(id).await?;
            if done(&snap) {
                return Ok(snap);
            }
            // Local cells wake us on every event; remote ones are re-read
            // at a short interval.
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(CellError::Timeout {
                        id: id.to_string(),
                        waited: timeout,
                        last: brief(&snap),
                    });
                }
            }
        }
    }

    /// Every cell this node's log has seen, and every cell applied here
    /// that runs on another node (a pointer: its record lags the cell by
    /// at most [`POINTER_REFRESH`](crate::cell::POINTER_REFRESH) plus a
    /// round trip). Where both know an id, the newer generation wins, the
    /// log on a tie.
    pub fn list(&self) -> Vec<CellRecord> {
        let mut cells: std::collections::BTreeMap<String, CellRecord> = {
            let view = self
                .inner
                .node
                .view
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            view.cells().map(|r| (r.id.clone(), r.clone())).collect()
        };
        for pointer in self.inner.pointers.all() {
            let logged = cells.remove(&pointer.id);
            if let Some(shown) = shown(logged, Some(pointer)) {
                cells.insert(shown.id.clone(), shown);
            }
        }
        cells.into_values().collect()
    }

    /// The record of cell `id` as [`list`](Self::list) shows it.
    pub fn record(&self, id: &str) -> Option<CellRecord> {
        let logged = self
            .inner
            .node
            .view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        shown(logged, self.inner.pointers.get(id))
    }

    /// The node projection, with its cursor.
    pub fn view(&self) -> NodeCellProjection {
        self.inner
            .node
            .view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The node's event log.
    pub fn log(&self) -> &CellEventLog {
        &self.inner.node.log
    }

    /// The output of cell `id` (stdout and stderr as kept, with the byte
    /// counts and whether the bound cut them), read from the node hosting
    /// it: its output files follow it when it migrates.
    ///
    /// # Errors
    /// `UnknownCell`; `Output` if the files cannot be read; `PeerLost`.
    pub async fn output(&self, id: &str) -> Result<CellOutput, CellError> {
        if let Ok(out) = self.inner.backend.output(id) {
            return Ok(out);
        }
        // Run on a peer for this node: read it from the cell there.
        let origin = match self.inner.backend.remote_origin(id) {
            Some(origin) => origin,
            None => self.origin_of(id)?,
        };
        super::output::fetch(&self.inner.client, id, origin).await
    }

    /// How this node's backend contains the processes of its cells
    /// (`None` for a backend that runs none itself).
    pub fn containment(&self) -> Option<Containment> {
        self.inner.backend.containment()
    }

    /// The backend cells run on here.
    pub fn backend(&self) -> &Arc<dyn CellBackend> {
        &self.inner.backend
    }

    /// Waits up to `timeout` until this node's supervisor runs cell `id`
    /// (a migrated cell is taken over when its `migrated` event lands).
    pub async fn wait_hosted(&self, id: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.inner.node.changes.subscribe();
        while !self.hosts(id) {
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
                () = tokio::time::sleep_until(deadline) => return self.hosts(id),
            }
        }
        true
    }

    /// Whether this node's supervisor runs cell `id`.
    pub fn hosts(&self, id: &str) -> bool {
        self.inner.hosted.contains_key(id)
    }

    /// Asks the node hosting cell `id` to tear it down (killing a running
    /// command). Returns once the request is accepted; the `destroyed`
    /// event follows (see [`wait_until`](Self::wait_until)).
    ///
    /// # Errors
    /// `UnknownCell` (also for a second destroy), `PeerLost`.
    pub async fn destroy(&self, id: &str) -> Result<(), CellError> {
        let origin = self.origin_of(id)?;
        let command = Command::Destroy { reason: None };
        self.inner.client.call_ok(id, origin, &command).await?;
        Ok(())
    }

    /// Stops the supervisor. Cells keep running on the backend; their
    /// daemons stay with the runtime.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

/// The record `list` shows for a cell the log and a pointer may both
/// know: the newer generation, the log's on a tie.
fn shown(logged: Option<CellRecord>, pointer: Option<CellRecord>) -> Option<CellRecord> {
    match (logged, pointer) {
        (Some(logged), Some(pointer)) if pointer.generation > logged.generation => Some(pointer),
        (Some(logged), _) => Some(logged),
        (None, pointer) => pointer,
    }
}

/// A cell's state in a few words, for errors.
fn brief(s: &CellStateSnapshot) -> String {
    let exit = s
        .command_exit_code
        .map_or_else(|| "none".to_string(), |c| c.to_string());
    format!(
        "stage {:?}, state {:?}, exit {exit}",
        s.lifecycle_stage, s.current_state
    )
}
