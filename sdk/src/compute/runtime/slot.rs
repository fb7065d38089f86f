//! A hosted daemon as the registry holds it ([`Slot`]), and a reservation
//! for one that will arrive by migration ([`Expected`]).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::compute::handle::DaemonHostConfig;
use crate::compute::host::DaemonHost;
use crate::compute::migration::gate::Gate;
use crate::identity::Identity;

/// A hosted daemon as the registry holds it.
pub(crate) struct Slot {
    pub(crate) kind: Arc<str>,
    pub(super) host: Mutex<DaemonHost>,
    /// Set (under the host lock) while a migration holds the daemon's
    /// events in [`Slot::gate`]; read under the host lock by every delivery.
    pub(crate) gated: AtomicBool,
    /// The migration gate; locked only while the host lock is held.
    pub(crate) gate: Mutex<Gate>,
}

impl Slot {
    pub(crate) fn lock(&self) -> MutexGuard<'_, DaemonHost> {
        // User code never runs unwinding through this guard (panics are
        // caught inside), so a poisoned lock still guards consistent data.
        self.host.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn lock_gate(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A reservation made by
/// [`DaemonRuntime::expect_migration`](crate::compute::DaemonRuntime::expect_migration).
#[derive(Debug, Clone)]
pub(crate) struct Expected {
    pub(crate) kind: Arc<str>,
    pub(crate) config: DaemonHostConfig,
    /// The daemon's identity, for migrations that do not transport it.
    pub(crate) identity: Option<Identity>,
}
