//! The runtime's hook into the mesh: the slot a started runtime fills so that
//! inbound traffic (events now, migrations later) reaches it.

use crate::compute::{CausalEvent, DaemonError};

type Deliver = dyn Fn(u64, &CausalEvent) -> Result<Vec<CausalEvent>, DaemonError> + Send + Sync;

/// What a started runtime installs on its mesh. It names its owner so that a
/// runtime only ever removes its own handler.
pub(crate) struct MigrationHandler {
    owner: u64,
    deliver: Box<Deliver>,
}

impl MigrationHandler {
    pub(crate) fn new(owner: u64, deliver: Box<Deliver>) -> Self {
        Self { owner, deliver }
    }

    pub(crate) fn owner(&self) -> u64 {
        self.owner
    }

    /// Delivers an inbound event to a local daemon.
    pub(crate) fn deliver(
        &self,
        target: u64,
        event: &CausalEvent,
    ) -> Result<Vec<CausalEvent>, DaemonError> {
        (self.deliver)(target, event)
    }
}

impl std::fmt::Debug for MigrationHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MigrationHandler(owner {})", self.owner)
    }
}
