//! What the migration paths need from the runtime's registry: slots,
//! reservations, the forwarding table, verdicts and outgoing migrations.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLockReadGuard, RwLockWriteGuard};

use dashmap::DashMap;

use super::{DaemonRuntime, Expected, Factory, Hasher, Slot, SHUTTING_DOWN};
use crate::compute::daemon::MeshDaemon;
use crate::compute::error::panic_message;
use crate::compute::handoff::Handoff;
use crate::compute::migration::verdicts::Verdicts;
use crate::compute::DaemonError;

impl DaemonRuntime {
    /// The factory of `kind`.
    pub(super) fn factory(&self, kind: &str) -> Result<(Arc<str>, Factory), DaemonError> {
        self.inner
            .factories
            .get(kind)
            .map(|entry| (Arc::clone(entry.key()), Arc::clone(entry.value())))
            // A shut-down runtime dropped its factories.
            .ok_or_else(|| match self.inner.state.load(Ordering::SeqCst) {
                SHUTTING_DOWN => DaemonError::ShuttingDown,
                _ => DaemonError::FactoryNotFound(kind.to_owned()),
            })
    }

    /// The requirements of a daemon of `kind`, read from a throw-away
    /// instance built by its factory.
    pub(crate) fn requirements_of(
        &self,
        kind: &str,
    ) -> Result<crate::capabilities::CapabilityFilter, DaemonError> {
        let (kind, factory) = self.factory(kind)?;
        let daemon = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| factory())).map_err(
            |payload| DaemonError::FactoryPanicked {
                kind: kind.to_string(),
                message: panic_message(payload.as_ref()),
            },
        )?;
        Ok(daemon.requirements())
    }

    /// The daemons hosted here with their kinds.
    pub(crate) fn local_daemons(&self) -> Vec<(u64, Arc<str>)> {
        self.inner
            .daemons
            .iter()
            .map(|e| (*e.key(), Arc::clone(&e.value().kind)))
            .collect()
    }

    /// Daemons migrated away, still forwarding late events.
    pub(crate) fn forwarding(&self) -> &DashMap<u64, Arc<Slot>, Hasher> {
        &self.inner.forwarding
    }

    /// The slot of `origin_hash`, for the migration paths.
    pub(crate) fn slot_of(&self, origin_hash: u64) -> Result<Arc<Slot>, DaemonError> {
        self.slot(origin_hash)
    }

    /// Removes `slot` from the registry if it still holds `origin_hash`.
    pub(crate) fn remove_slot(&self, origin_hash: u64, slot: &Arc<Slot>) -> bool {
        self.inner
            .daemons
            .remove_if(&origin_hash, |_, held| Arc::ptr_eq(held, slot))
            .is_some()
    }

    /// The factory for `kind`, checked against this node's capabilities.
    pub(crate) fn build_kind(
        &self,
        kind: &str,
    ) -> Result<(Arc<str>, Box<dyn MeshDaemon>), DaemonError> {
        let (kind, factory) = self.factory(kind)?;
        let daemon = self.build(&kind, &factory)?;
        Ok((kind, daemon))
    }

    /// The reservation made by `expect_migration`, consumed.
    pub(crate) fn take_expectation(&self, origin_hash: u64) -> Option<Expected> {
        self.inner.expected.remove(&origin_hash).map(|(_, e)| e)
    }

    /// The reservation made by `expect_migration`, if any.
    pub(crate) fn expectation(&self, origin_hash: u64) -> Option<Expected> {
        self.inner.expected.get(&origin_hash).map(|e| e.clone())
    }

    /// The node's current migrations, by origin.
    pub(crate) fn migrations(&self) -> &DashMap<u64, u64, Hasher> {
        &self.inner.migrations
    }

    /// Incoming migrations' verdicts, by migration id.
    pub(crate) fn verdicts(&self) -> &Arc<Verdicts> {
        &self.inner.verdicts
    }

    /// Whether the runtime is ready (for the migration paths).
    pub(crate) fn check_ready(&self) -> Result<(), DaemonError> {
        self.require_ready()
    }

    /// One identity runs in one place: refuses an identity the directory
    /// places on another node (which includes one that left this node for
    /// another by migration).
    pub(crate) fn check_not_elsewhere(&self, origin_hash: u64) -> Result<(), DaemonError> {
        let mesh = self.mesh();
        match mesh.locate(origin_hash) {
            Some(node) if node != mesh.node_id() => {
                Err(DaemonError::HostedElsewhere { origin_hash, node })
            }
            _ => Ok(()),
        }
    }

    /// Whether a factory for `kind` is registered.
    pub(crate) fn has_factory(&self, kind: &str) -> bool {
        self.inner.factories.contains_key(kind)
    }

    /// The hosted daemons' slots, by origin, sorted.
    pub(crate) fn daemon_slots(&self) -> Vec<(u64, Arc<Slot>)> {
        let mut slots: Vec<_> = self
            .inner
            .daemons
            .iter()
            .map(|e| (*e.key(), Arc::clone(e.value())))
            .collect();
        slots.sort_unstable_by_key(|(origin, _)| *origin);
        slots
    }

    /// The handoff phase, shared.
    pub(crate) fn handoff_read(&self) -> RwLockReadGuard<'_, Handoff> {
        self.inner
            .handoff
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The handoff phase, exclusively: no admission runs meanwhile.
    pub(crate) fn handoff_write(&self) -> RwLockWriteGuard<'_, Handoff> {
        self.inner
            .handoff
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// From now on every request answers `ShuttingDown` (a retired
    /// runtime); unlike `shutdown`, the daemons' locations stay in the
    /// directory: the node's successor hosts them.
    pub(crate) fn refuse_everything(&self) {
        self.inner.state.store(SHUTTING_DOWN, Ordering::SeqCst);
    }
}
