//! Peers: when each was first seen connected (the mesh does not record
//! it), membership changes logged, and seeds dialled in the background.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cellmesh::mesh::{Mesh, NodeId};
use tokio_util::sync::CancellationToken;

/// How often membership is sampled.
const SAMPLE: Duration = Duration::from_millis(250);
/// Longest pause between two dials of an unreachable seed.
const MAX_SEED_BACKOFF: Duration = Duration::from_secs(5);

/// Connected peers and since when, sampled from the mesh.
#[derive(Debug, Default)]
pub(crate) struct PeerTracker {
    since: Mutex<HashMap<NodeId, SystemTime>>,
}

impl PeerTracker {
    /// When `node`, connected now, was first seen connected (now, if this
    /// is the first time).
    pub(crate) fn connected_since(&self, node: &NodeId) -> SystemTime {
        *self.lock().entry(*node).or_insert_with(SystemTime::now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, SystemTime>> {
        // Each critical section leaves the map consistent.
        self.since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Samples the mesh until cancelled, logging joins and departures.
    pub(crate) async fn run(self: Arc<Self>, mesh: Arc<Mesh>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(SAMPLE);
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now: Vec<NodeId> = mesh.peers();
            let mut since = self.lock();
            for peer in &now {
                since.entry(*peer).or_insert_with(|| {
                    tracing::info!(peer = %peer, "peer joined");
                    SystemTime::now()
                });
            }
            since.retain(|peer, _| {
                let keep = now.contains(peer);
                if !keep {
                    tracing::info!(peer = %peer, "peer left");
                }
                keep
            });
        }
    }
}

/// Dials each seed concurrently until it answers, warning once per
/// unreachable seed, then leaves it to the mesh's own rejoin.
pub(crate) fn dial_seeds(
    mesh: &Arc<Mesh>,
    seeds: &[SocketAddr],
    cancel: &CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) {
    for &seed in seeds {
        if seed == mesh.local_addr() {
            continue;
        }
        let mesh = Arc::clone(mesh);
        let cancel = cancel.clone();
        tasks.spawn(async move {
            let mut pause = Duration::from_millis(250);
            let mut warned = false;
            loop {
                let dial = tokio::select! {
                    biased;
                    () = cancel.cancelled() => return,
                    dial = mesh.connect(seed) => dial,
                };
                match dial {
                    Ok(node) => {
                        tracing::info!(seed = %seed, peer = %node, "joined the mesh through seed");
                        return;
                    }
                    Err(e) if !warned => {
                        tracing::warn!(seed = %seed, error = %e, "seed peer unreachable; retrying in the background");
                        warned = true;
                    }
                    Err(e) => tracing::debug!(seed = %seed, error = %e, "seed peer still unreachable"),
                }
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(MAX_SEED_BACKOFF);
            }
        });
    }
}
