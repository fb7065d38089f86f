//! The migration-handler slot's content.

/// What a started runtime installs on its mesh so that inbound migrations
/// reach it. It names its owner so that a runtime only ever removes its own
/// handler.
#[derive(Debug)]
pub(crate) struct MigrationHandler {
    owner: u64,
}

impl MigrationHandler {
    pub(crate) fn new(owner: u64) -> Self {
        Self { owner }
    }

    pub(crate) fn owner(&self) -> u64 {
        self.owner
    }
}
