//! [`DaemonRuntime::daemons`]: the daemons hosted here, as an operator
//! lists them.

use super::DaemonRuntime;
use crate::EntityId;

/// One daemon hosted on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostedDaemon {
    /// Its origin hash (what events are routed by).
    pub origin_hash: u64,
    /// The kind it was spawned as.
    pub kind: String,
    /// Its identity's public key.
    pub entity_id: EntityId,
    /// Events accepted and processed (travels with the daemon).
    pub events_processed: u64,
    /// The size of its state as a snapshot would carry it; `None` when not
    /// asked for, when the daemon keeps no state, or when its snapshot
    /// failed.
    pub state_bytes: Option<u64>,
}

impl DaemonRuntime {
    /// The daemons hosted here now, sorted by origin hash. With
    /// `state_sizes` each daemon's state is measured by taking its snapshot
    /// (under the daemon's lock, as a migration would: the cost grows with
    /// the state); without, `state_bytes` is `None`.
    pub fn daemons(&self, state_sizes: bool) -> Vec<HostedDaemon> {
        let mut out: Vec<HostedDaemon> = self
            .local_daemons()
            .into_iter()
            .filter_map(|(origin_hash, kind)| {
                let slot = self.slot_of(origin_hash).ok()?;
                let host = slot.lock();
                if host.is_retired() {
                    return None;
                }
                let state_bytes = if state_sizes {
                    host.capture()
                        .ok()
                        .and_then(|s| s.state().map(|b| b.len() as u64))
                } else {
                    None
                };
                Some(HostedDaemon {
                    origin_hash,
                    kind: kind.to_string(),
                    entity_id: host.keypair().entity_id(),
                    events_processed: host.stats().events_processed,
                    state_bytes,
                })
            })
            .collect();
        out.sort_unstable_by_key(|d| d.origin_hash);
        out
    }
}
