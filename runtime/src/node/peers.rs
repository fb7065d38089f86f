//! Peers: membership changes logged as they are seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cellmesh::mesh::Mesh;
use cellmesh::NodeId;
use tokio_util::sync::CancellationToken;

/// How often membership is sampled.
const SAMPLE: Duration = Duration::from_millis(250);

/// Connected peers and since when, sampled from the mesh to log joins
/// and departures.
#[derive(Debug, Default)]
pub(crate) struct PeerTracker {
    since: Mutex<HashMap<NodeId, SystemTime>>,
}

impl PeerTracker {
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
