//! [`DaemonRuntime`]: factories by kind, spawn under identities, delivery,
//! and the ready/shutdown fences.
//!
//! # Fences
//!
//! The runtime moves `Registering → Ready → ShuttingDown`, never back.
//! - `start` installs the mesh's migration handler *before* it publishes
//!   `Ready`, so no observer sees `is_ready()` without a handler; if it
//!   loses the race to `shutdown` it removes its handler again.
//! - `spawn` (and every call that registers) re-reads the state after its
//!   insert; if `shutdown` began meanwhile it removes its own entry and
//!   answers `ShuttingDown`. Since `shutdown` publishes its state before it
//!   sweeps, either the sweep sees the entry or the spawner sees the state:
//!   no daemon survives a shutdown.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::causal::CausalEvent;
use super::daemon::MeshDaemon;
use super::error::{panic_message, DaemonError};
use super::error::{RegisterError, StartError};
use super::handle::{DaemonHandle, DaemonHostConfig};
use super::handoff::Handoff;
use super::host::DaemonHost;
use super::migration::gate::Gate;
use super::snapshot::StateSnapshot;
use super::stats::DaemonStats;
use crate::compute::protocol::Binding;
use crate::identity::Identity;
use crate::mesh::Mesh;

mod access;
mod counters;
mod list;
mod slot;

pub use counters::DeliveryCounters;
pub use list::HostedDaemon;
pub(crate) use slot::{Expected, Slot};

type Factory = Arc<dyn Fn() -> Box<dyn MeshDaemon> + Send + Sync>;
pub(crate) type Hasher = foldhash::fast::RandomState;

const REGISTERING: u8 = 0;
const READY: u8 = 1;
const SHUTTING_DOWN: u8 = 2;

static NEXT_RUNTIME_ID: AtomicU64 = AtomicU64::new(1);

struct Inner {
    id: u64,
    mesh: Arc<Mesh>,
    /// The node's compute protocols, which reach this runtime once started.
    binding: Arc<Binding>,
    state: AtomicU8,
    factories: DashMap<Arc<str>, Factory, Hasher>,
    daemons: DashMap<u64, Arc<Slot>, Hasher>,
    expected: DashMap<u64, Expected, Hasher>,
    /// Daemons migrated away whose late events are still forwarded.
    forwarding: DashMap<u64, Arc<Slot>, Hasher>,
    /// Outgoing migrations in progress: origin → migration id.
    migrations: DashMap<u64, u64, Hasher>,
    /// Verdicts of incoming migrations, by migration id (for `Status`).
    verdicts: Arc<super::migration::verdicts::Verdicts>,
    counters: counters::Counters,
    /// Where a handoff of the node's process stands. Admissions (spawns,
    /// incoming and outgoing migrations) hold it shared while they check
    /// it and register; `freeze` holds it exclusively while it changes it,
    /// so no admission straddles a freeze.
    handoff: RwLock<Handoff>,
    #[cfg(feature = "test-utils")]
    stalls: test_hooks::Stalls,
}

/// Hosts daemons on one mesh node. Cheap to clone: clones share the runtime.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use cellmesh::{Identity, mesh::MeshBuilder};
/// # use cellmesh::compute::{DaemonRuntime, DaemonHostConfig, MeshDaemon};
/// # async fn demo(factory: fn() -> Box<dyn MeshDaemon>) -> Result<(), Box<dyn std::error::Error>> {
/// let mesh = MeshBuilder::new("127.0.0.1:0", &[7u8; 32])?.build().await?;
/// let rt = DaemonRuntime::new(Arc::new(mesh));
/// rt.register_factory("counter", factory)?;
/// rt.start().await?;
/// let handle = rt.spawn("counter", Identity::generate(), DaemonHostConfig::default()).await?;
/// # let _ = handle; Ok(()) }
/// ```
#[derive(Clone)]
pub struct DaemonRuntime {
    inner: Arc<Inner>,
}

impl DaemonRuntime {
    /// A runtime bound to `mesh`, not yet started.
    pub fn new(mesh: Arc<Mesh>) -> Self {
        Self {
            inner: Arc::new(Inner {
                id: NEXT_RUNTIME_ID.fetch_add(1, Ordering::Relaxed),
                binding: Binding::of(&mesh),
                mesh,
                state: AtomicU8::new(REGISTERING),
                factories: DashMap::with_hasher(Hasher::default()),
                daemons: DashMap::with_hasher(Hasher::default()),
                expected: DashMap::with_hasher(Hasher::default()),
                migrations: DashMap::with_hasher(Hasher::default()),
                forwarding: DashMap::with_hasher(Hasher::default()),
                verdicts: Arc::default(),
                counters: counters::Counters::default(),
                handoff: RwLock::new(Handoff::Live),
                #[cfg(feature = "test-utils")]
                stalls: test_hooks::Stalls::default(),
            }),
        }
    }

    /// The mesh node this runtime is bound to.
    pub fn mesh(&self) -> &Arc<Mesh> {
        &self.inner.mesh
    }

    /// The node's compute protocols (event links to peers).
    pub(crate) fn binding(&self) -> &Binding {
        &self.inner.binding
    }

    /// Whether the runtime is started and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.inner.state.load(Ordering::SeqCst) == READY
    }

    /// How many daemons run on this node.
    pub fn daemon_count(&self) -> usize {
        self.inner.daemons.len()
    }

    /// Registers the factory that builds daemons of `kind`. Kinds may be
    /// registered before or after `start`; exactly one of several
    /// concurrent registrations of one kind wins.
    ///
    /// # Errors
    /// [`RegisterError`]: `ShuttingDown`, `InvalidKind`, `AlreadyRegistered`.
    pub fn register_factory<F>(&self, kind: &str, factory: F) -> Result<(), RegisterError>
    where
        F: Fn() -> Box<dyn MeshDaemon> + Send + Sync + 'static,
    {
        if self.state() == SHUTTING_DOWN {
            return Err(RegisterError::ShuttingDown);
        }
        if kind.is_empty() || kind.len() > 255 {
            return Err(RegisterError::InvalidKind(kind.chars().take(64).collect()));
        }
        match self.inner.factories.entry(Arc::from(kind)) {
            Entry::Occupied(_) => Err(RegisterError::AlreadyRegistered(kind.to_owned())),
            Entry::Vacant(slot) => {
                slot.insert(Arc::new(factory));
                Ok(())
            }
        }
    }

    /// Starts the runtime: installs the migration handler on the mesh, then
    /// publishes `Ready`. Idempotent.
    ///
    /// Cancel safety: cancelling leaves either a started runtime or one that
    /// can be started again.
    ///
    /// # Errors
    /// [`StartError`]: `ShuttingDown` if shutdown began first (no runtime is
    /// left bound to the mesh); `MeshAlreadyBound` if another runtime is
    /// started on the mesh.
    pub async fn start(&self) -> Result<(), StartError> {
        match self.state() {
            READY => return Ok(()),
            SHUTTING_DOWN => return Err(StartError::ShuttingDown),
            _ => {}
        }
        let mesh = &self.inner.mesh;
        let weak = Arc::downgrade(&self.inner);
        let runtime = Box::new(move || weak.upgrade().map(|inner| DaemonRuntime { inner }));
        if !self.inner.binding.bind(self.inner.id, runtime) {
            return Err(StartError::MeshAlreadyBound(mesh.node_id()));
        }
        #[cfg(feature = "test-utils")]
        self.inner.stalls.start().await;
        match self.inner.state.compare_exchange(
            REGISTERING,
            READY,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) | Err(READY) => Ok(()),
            Err(_) => {
                self.inner.binding.unbind(self.inner.id);
                Err(StartError::ShuttingDown)
            }
        }
    }

    /// Shuts down: refuses new work, removes the migration handler and stops
    /// every daemon (`daemon_count() == 0` afterwards). Idempotent; the
    /// runtime stays usable and answers `ShuttingDown`.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for draining work that can fail.
    pub async fn shutdown(&self) -> Result<(), DaemonError> {
        self.inner.state.store(SHUTTING_DOWN, Ordering::SeqCst);
        self.inner.binding.unbind(self.inner.id);
        self.inner.expected.clear();
        self.inner.forwarding.retain(|_, slot| {
            slot.lock_gate().close();
            false
        });
        let mesh = &self.inner.mesh;
        self.inner.daemons.retain(|origin, slot| {
            let mut host = slot.lock();
            host.retire();
            // Queued events learn the shutdown (their waiters are dropped).
            slot.lock_gate().close();
            slot.gated.store(false, Ordering::Release);
            drop(host);
            mesh.retract(*origin);
            false
        });
        // Nothing spawns any more: dropping the factories frees what they
        // hold (a cell host holding this runtime kept it and its log alive).
        self.inner.factories.clear();
        tracing::debug!(runtime = self.inner.id, "daemon runtime shut down");
        Ok(())
    }

    /// Spawns a daemon of `kind` under `identity`.
    ///
    /// # Errors
    /// `NotReady`, `ShuttingDown`, `FactoryNotFound`, `FactoryPanicked`,
    /// `CapabilityMismatch` (this node does not meet the daemon's
    /// `requirements()`), `AlreadyRegistered` (the identity runs here
    /// already or is reserved by `expect_migration`; the incumbent is left
    /// untouched), `HostedElsewhere` (the mesh's directory places the
    /// identity on another node: one identity runs in one place), `Frozen`
    /// (the runtime is frozen for a handoff of the node's process).
    pub async fn spawn(
        &self,
        kind: &str,
        identity: Identity,
        config: DaemonHostConfig,
    ) -> Result<DaemonHandle, DaemonError> {
        self.require_ready()?;
        #[cfg(feature = "test-utils")]
        self.inner.stalls.spawn().await;
        let origin_hash = identity.keypair().origin_hash();
        let (kind, factory) = self.factory(kind)?;
        self.check_vacant(origin_hash)?;
        let daemon = self.build(&kind, &factory)?;
        let host = DaemonHost::new(daemon, identity.into_keypair(), config);
        self.insert(origin_hash, kind, host)
    }

    /// Spawns a daemon of `kind` under `identity` and restores it from
    /// `snapshot`: its state, its per-origin marks (it refuses replays) and
    /// its output chain (its outputs continue the chain). Consumes a
    /// matching `expect_migration` reservation (a reservation for another
    /// kind makes it `AlreadyRegistered`).
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn), plus `SnapshotIdentityMismatch` when the
    /// snapshot is bound to another entity (the full 32-byte key is
    /// compared), and the daemon's `restore` error.
    pub async fn spawn_from_snapshot(
        &self,
        kind: &str,
        identity: Identity,
        snapshot: StateSnapshot,
        config: DaemonHostConfig,
    ) -> Result<DaemonHandle, DaemonError> {
        self.require_ready()?;
        #[cfg(feature = "test-utils")]
        self.inner.stalls.spawn().await;
        if snapshot.entity_id() != identity.entity_id() {
            return Err(DaemonError::SnapshotIdentityMismatch {
                expected: identity.entity_id(),
                found: snapshot.entity_id(),
            });
        }
        let origin_hash = identity.keypair().origin_hash();
        let (kind, factory) = self.factory(kind)?;
        let reserved_for_other_kind = self
            .inner
            .expected
            .get(&origin_hash)
            .is_some_and(|held| held.kind != kind);
        self.check_not_elsewhere(origin_hash)?;
        if reserved_for_other_kind || self.inner.daemons.contains_key(&origin_hash) {
            return Err(DaemonError::AlreadyRegistered(origin_hash));
        }
        let daemon = self.build(&kind, &factory)?;
        let host = DaemonHost::restore(daemon, identity.into_keypair(), snapshot, config)?;
        let handle = self.insert(origin_hash, kind, host)?;
        self.inner.expected.remove(&origin_hash);
        Ok(handle)
    }

    /// Reserves `origin_hash` for a daemon of `kind` that will arrive by
    /// migration, so that it is provisioned before it comes. Optional: a
    /// started runtime with a factory for the kind accepts migrations
    /// without it.
    ///
    /// # Errors
    /// `NotReady`, `ShuttingDown`, `FactoryNotFound`, `AlreadyRegistered`
    /// (a daemon or a reservation holds the origin already), `Frozen`
    /// (the runtime is frozen for a handoff).
    pub fn expect_migration(
        &self,
        kind: &str,
        origin_hash: u64,
        config: DaemonHostConfig,
    ) -> Result<(), DaemonError> {
        self.reserve(kind, origin_hash, config, None)
    }

    /// Like [`expect_migration`](Self::expect_migration), and hands this
    /// node the daemon's identity, so that a migration with
    /// `MigrationOpts::transport_identity = false` (the secret key never
    /// leaves the source) can be restored here.
    ///
    /// # Errors
    /// As `expect_migration`.
    pub fn expect_migration_with_identity(
        &self,
        kind: &str,
        identity: Identity,
        config: DaemonHostConfig,
    ) -> Result<(), DaemonError> {
        let origin_hash = identity.keypair().origin_hash();
        self.reserve(kind, origin_hash, config, Some(identity))
    }

    fn reserve(
        &self,
        kind: &str,
        origin_hash: u64,
        config: DaemonHostConfig,
        identity: Option<Identity>,
    ) -> Result<(), DaemonError> {
        self.require_ready()?;
        let (kind, _) = self.factory(kind)?;
        let _admitted = self.admit()?;
        if self.inner.daemons.contains_key(&origin_hash) {
            return Err(DaemonError::AlreadyRegistered(origin_hash));
        }
        match self.inner.expected.entry(origin_hash) {
            Entry::Occupied(_) => return Err(DaemonError::AlreadyRegistered(origin_hash)),
            Entry::Vacant(slot) => {
                slot.insert(Expected {
                    kind,
                    config,
                    identity,
                });
            }
        }
        if self.state() != READY {
            self.inner.expected.remove(&origin_hash);
            return Err(DaemonError::ShuttingDown);
        }
        Ok(())
    }

    /// Delivers `event` to the daemon `origin_hash` on this node and returns
    /// its outputs, linked into the daemon's chain.
    ///
    /// Exactly-once: an event whose sequence is at or below the mark of its
    /// origin (`event.link.origin_hash`) is refused as `Duplicate` and does
    /// not reach the daemon. O(1) in the number of origins.
    ///
    /// # Errors
    /// `NotReady`, `ShuttingDown`, `NotFound`, `Duplicate`, `Process` (the
    /// daemon's error; the event is not accepted), `Panicked` (contained;
    /// the event is not accepted, the daemon stays registered).
    pub fn deliver(
        &self,
        origin_hash: u64,
        event: &CausalEvent,
    ) -> Result<Vec<CausalEvent>, DaemonError> {
        let outcome = self.deliver_here(origin_hash, event);
        self.inner.counters.record(&outcome);
        outcome
    }

    fn deliver_here(
        &self,
        origin_hash: u64,
        event: &CausalEvent,
    ) -> Result<Vec<CausalEvent>, DaemonError> {
        self.require_ready()?;
        let slot = self.slot(origin_hash)?;
        let mut host = slot.lock();
        if slot.gated.load(Ordering::Acquire) {
            return Err(DaemonError::Migrating(origin_hash));
        }
        if host.is_retired() {
            return Err(DaemonError::NotFound(origin_hash));
        }
        host.deliver(event)
    }

    /// Stops the daemon `origin_hash`. When this returns no call reaches the
    /// daemon any more; later deliveries answer `NotFound`.
    ///
    /// # Errors
    /// `NotFound`.
    pub async fn stop(&self, origin_hash: u64) -> Result<(), DaemonError> {
        let (_, slot) = self
            .inner
            .daemons
            .remove(&origin_hash)
            .ok_or(DaemonError::NotFound(origin_hash))?;
        slot.lock().retire();
        self.inner.mesh.retract(origin_hash);
        Ok(())
    }

    /// Snapshots the daemon `origin_hash`: `None` for a stateless daemon
    /// (its `snapshot()` returned `None`).
    ///
    /// # Errors
    /// `NotFound`, `Process(SnapshotFailed)` (state above
    /// `max_snapshot_bytes`), `Panicked`.
    pub async fn snapshot(&self, origin_hash: u64) -> Result<Option<StateSnapshot>, DaemonError> {
        let slot = self.slot(origin_hash)?;
        let host = slot.lock();
        if host.is_retired() {
            return Err(DaemonError::NotFound(origin_hash));
        }
        let snapshot = host.capture()?;
        Ok(snapshot.state().is_some().then_some(snapshot))
    }

    /// The kind the daemon `origin_hash` was spawned as.
    ///
    /// # Errors
    /// `NotFound`.
    pub fn kind_of(&self, origin_hash: u64) -> Result<String, DaemonError> {
        Ok(self.slot(origin_hash)?.kind.to_string())
    }

    pub(crate) fn stats(&self, origin_hash: u64) -> Result<DaemonStats, DaemonError> {
        let slot = self.slot(origin_hash)?;
        let host = slot.lock();
        if host.is_retired() {
            return Err(DaemonError::NotFound(origin_hash));
        }
        Ok(host.stats())
    }

    fn state(&self) -> u8 {
        self.inner.state.load(Ordering::SeqCst)
    }

    fn require_ready(&self) -> Result<(), DaemonError> {
        match self.state() {
            READY => Ok(()),
            REGISTERING => Err(DaemonError::NotReady),
            _ => Err(DaemonError::ShuttingDown),
        }
    }

    /// Holds the handoff phase shared for an admission: refused with
    /// `Frozen` while the runtime is frozen or retired by a handoff.
    pub(crate) fn admit(&self) -> Result<RwLockReadGuard<'_, Handoff>, DaemonError> {
        let phase = self
            .inner
            .handoff
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if phase.admits() {
            Ok(phase)
        } else {
            Err(DaemonError::Frozen)
        }
    }

    fn slot(&self, origin_hash: u64) -> Result<Arc<Slot>, DaemonError> {
        self.inner
            .daemons
            .get(&origin_hash)
            .map(|entry| Arc::clone(entry.value()))
            .ok_or(DaemonError::NotFound(origin_hash))
    }

    /// A cheap early refusal; the insert's entry check is the authority.
    fn check_vacant(&self, origin_hash: u64) -> Result<(), DaemonError> {
        if self.inner.daemons.contains_key(&origin_hash)
            || self.inner.expected.contains_key(&origin_hash)
        {
            return Err(DaemonError::AlreadyRegistered(origin_hash));
        }
        self.check_not_elsewhere(origin_hash)
    }

    /// Runs the factory (containing a panic) and checks the daemon's
    /// requirements against this node.
    fn build(&self, kind: &str, factory: &Factory) -> Result<Box<dyn MeshDaemon>, DaemonError> {
        let daemon = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| factory())).map_err(
            |payload| DaemonError::FactoryPanicked {
                kind: kind.to_owned(),
                message: panic_message(payload.as_ref()),
            },
        )?;
        let needs = daemon.requirements();
        if let Some(unmet) = self.inner.mesh.capabilities().first_unmet(&needs) {
            return Err(DaemonError::CapabilityMismatch {
                kind: kind.to_owned(),
                unmet: unmet.to_string(),
            });
        }
        Ok(daemon)
    }

    /// Inserts the host unless the origin is taken, then applies the
    /// shutdown fence.
    fn insert(
        &self,
        origin_hash: u64,
        kind: Arc<str>,
        host: DaemonHost,
    ) -> Result<DaemonHandle, DaemonError> {
        self.insert_slot(origin_hash, kind, host, None)
            .map(|_| DaemonHandle {
                origin_hash,
                runtime: self.clone(),
            })
    }

    /// Inserts a host; with a `gate` the daemon starts gated and is not
    /// announced (a migration target before commit).
    pub(crate) fn insert_slot(
        &self,
        origin_hash: u64,
        kind: Arc<str>,
        host: DaemonHost,
        gate: Option<Gate>,
    ) -> Result<Arc<Slot>, DaemonError> {
        let gated = gate.is_some();
        let _admitted = self.admit()?;
        let slot = Arc::new(Slot {
            kind,
            host: Mutex::new(host),
            gated: AtomicBool::new(gated),
            gate: Mutex::new(gate.unwrap_or_default()),
        });
        match self.inner.daemons.entry(origin_hash) {
            Entry::Occupied(_) => return Err(DaemonError::AlreadyRegistered(origin_hash)),
            Entry::Vacant(vacant) => {
                vacant.insert(Arc::clone(&slot));
            }
        }
        if self.state() != READY {
            // Shutdown began after our readiness check: undo our own insert
            // (and only ours) so that nothing outlives the sweep.
            self.inner
                .daemons
                .remove_if(&origin_hash, |_, held| Arc::ptr_eq(held, &slot));
            slot.lock().retire();
            return Err(DaemonError::ShuttingDown);
        }
        // Back after migrating away: the new copy supersedes the forwarder.
        self.inner.forwarding.remove(&origin_hash);
        if !gated {
            self.inner.mesh.announce(origin_hash);
        }
        Ok(slot)
    }
}

impl std::fmt::Debug for DaemonRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonRuntime")
            .field("node", &self.inner.mesh.node_id())
            .field("state", &self.state())
            .field("daemons", &self.daemon_count())
            .finish()
    }
}

#[cfg(feature = "test-utils")]
mod test_hooks;
