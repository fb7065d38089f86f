//! The runtime's hook into the mesh: the slot a started runtime fills so that
//! inbound traffic (events and spawns now, migrations later) reaches it.

use crate::compute::DaemonRuntime;

type Runtime = dyn Fn() -> Option<DaemonRuntime> + Send + Sync;

/// What a started runtime installs on its mesh. It names its owner so that a
/// runtime only ever removes its own handler, and reaches the runtime
/// without keeping it alive.
pub(crate) struct MigrationHandler {
    owner: u64,
    runtime: Box<Runtime>,
}

impl MigrationHandler {
    pub(crate) fn new(owner: u64, runtime: Box<Runtime>) -> Self {
        Self { owner, runtime }
    }

    pub(crate) fn owner(&self) -> u64 {
        self.owner
    }

    /// The runtime, while it exists.
    pub(crate) fn runtime(&self) -> Option<DaemonRuntime> {
        (self.runtime)()
    }
}

impl std::fmt::Debug for MigrationHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MigrationHandler(owner {})", self.owner)
    }
}
