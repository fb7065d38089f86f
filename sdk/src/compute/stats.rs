//! [`DaemonStats`]: a daemon's counters.

/// Counters of one daemon. They travel inside snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DaemonStats {
    /// Events accepted and processed.
    pub events_processed: u64,
    /// Output events emitted.
    pub events_emitted: u64,
}
