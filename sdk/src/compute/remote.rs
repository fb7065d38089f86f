//! Delivery to daemons wherever they live in the mesh.

use super::causal::CausalEvent;
use super::error::DaemonError;
use super::runtime::DaemonRuntime;
use crate::mesh::{EventReply, EventRequest, Refusal};

/// Redirects a send follows before giving up.
const MAX_HOPS: u8 = 4;

impl DaemonRuntime {
    /// Delivers `event` to the daemon `origin_hash` wherever it lives in the
    /// mesh and returns its outputs: locally without touching the network,
    /// otherwise over the node's event connection to the node the location
    /// directory names, following redirects (at most 4) and updating the
    /// directory.
    ///
    /// Exactly-once holds end to end: a retried send of an event the daemon
    /// already accepted is refused as `Duplicate`. Concurrent sends share
    /// one connection per peer, one stream each; when a peer's in-flight
    /// limit (`MeshConfig::max_concurrent_requests`) is reached, `send`
    /// waits for a slot.
    ///
    /// Cancel safety: cancelling abandons the wait; the daemon may or may
    /// not have processed the event, and a retry is safe (refused as a
    /// duplicate if it was).
    ///
    /// # Errors
    /// As [`deliver`](Self::deliver), plus `Unreachable`, `TooManyRedirects`
    /// and `RemoteFailed`.
    pub async fn send(
        &self,
        origin_hash: u64,
        event: CausalEvent,
    ) -> Result<Vec<CausalEvent>, DaemonError> {
        match self.deliver(origin_hash, &event) {
            Err(DaemonError::NotFound(_)) => {}
            local => return local,
        }
        let mesh = self.mesh();
        let mut request = EventRequest {
            target: origin_hash,
            event,
            hops: 0,
        };
        loop {
            let node = mesh
                .locate(origin_hash)
                .ok_or(DaemonError::NotFound(origin_hash))?;
            let reply =
                mesh.request(node, &request)
                    .await
                    .map_err(|e| DaemonError::Unreachable {
                        origin_hash,
                        node,
                        reason: e.to_string(),
                    })?;
            match reply {
                EventReply::Outputs(outputs) => return Ok(outputs),
                EventReply::Redirect { node: next, addr } => {
                    request.hops += 1;
                    if request.hops > MAX_HOPS || next == node {
                        return Err(DaemonError::TooManyRedirects(origin_hash));
                    }
                    if next == mesh.node_id() {
                        return self.deliver(origin_hash, &request.event);
                    }
                    mesh.learn_location(origin_hash, next, addr);
                }
                EventReply::Refused(refusal) => {
                    if matches!(refusal, Refusal::NotFound(_)) {
                        mesh.forget_location(origin_hash, node);
                    }
                    return Err(match refusal {
                        Refusal::NotFound(o) => DaemonError::NotFound(o),
                        Refusal::Duplicate {
                            origin_hash,
                            sequence,
                        } => DaemonError::Duplicate {
                            origin_hash,
                            sequence,
                        },
                        Refusal::NotReady => DaemonError::NotReady,
                        Refusal::ShuttingDown => DaemonError::ShuttingDown,
                        Refusal::Failed(reason) => DaemonError::RemoteFailed {
                            origin_hash,
                            node,
                            reason,
                        },
                    });
                }
            }
        }
    }
}
