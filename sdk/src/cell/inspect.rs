//! Read-only views of the node a cell host runs on, for operators: the
//! daemons hosted here and the peers' membership records.
//!
//! These belong with the compute runtime and the mesh; they live here, as
//! free functions, until those modules expose them as methods.

use std::net::SocketAddr;

use crate::compute::DaemonRuntime;
use crate::mesh::{Mesh, NodeId};
use crate::EntityId;

/// One daemon hosted on this node, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostedDaemon {
    /// Its origin hash (routing key).
    pub origin_hash: u64,
    /// The kind it was spawned as.
    pub kind: String,
    /// Its identity's public key.
    pub entity_id: EntityId,
    /// Events accepted and processed (travels with the daemon).
    pub events_processed: u64,
    /// Size of its state as its last snapshot would carry it; `None` when
    /// the daemon keeps no state or its snapshot failed.
    pub state_bytes: Option<u64>,
}

/// The daemons hosted on `rt`'s node now, sorted by origin hash. With
/// `state_sizes` each daemon is asked for its snapshot to measure its
/// state (its `snapshot` runs under the daemon's lock, as a migration's
/// would); without, `state_bytes` is `None`.
pub fn hosted_daemons(rt: &DaemonRuntime, state_sizes: bool) -> Vec<HostedDaemon> {
    let mut out: Vec<HostedDaemon> = rt
        .local_daemons()
        .into_iter()
        .filter_map(|(origin_hash, kind)| {
            let slot = rt.slot_of(origin_hash).ok()?;
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

/// A peer as its signed membership record describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerRecord {
    /// The peer.
    pub node: NodeId,
    /// The address it advertises.
    pub addr: SocketAddr,
    /// Its capability tags.
    pub tags: Vec<String>,
    /// Whether an admitted control link to it is up now.
    pub connected: bool,
}

/// Every node this one holds a membership record of (itself excluded),
/// sorted by node id.
pub fn peer_records(mesh: &Mesh) -> Vec<PeerRecord> {
    let shared = &mesh.shared;
    let mut out: Vec<PeerRecord> = shared
        .members
        .iter()
        .filter(|m| *m.key() != shared.node_id)
        .map(|m| {
            let record = &m.value().record;
            PeerRecord {
                node: record.node,
                addr: shared.addr_of(record.node).unwrap_or(record.addr),
                tags: record.capabilities.tags().map(str::to_owned).collect(),
                connected: shared.peers.contains_key(&record.node),
            }
        })
        .collect();
    out.sort_unstable_by_key(|p| p.node);
    out
}
