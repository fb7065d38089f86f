//! Working with daemons wherever they live in the mesh: `send` and
//! `spawn_on`.

use super::causal::CausalEvent;
use super::error::{DaemonError, RemoteRefusal};
use super::handle::DaemonHostConfig;
use super::protocol::{EventRefusal, EventReply, EventRequest, Reply, Request, SpawnRequest};
use super::runtime::DaemonRuntime;
use crate::mesh::DialError;
use crate::Identity;
use crate::NodeId;

/// Redirects a send follows before giving up.
const MAX_HOPS: u8 = 4;

/// Where [`DaemonRuntime::spawn_on`] puts a daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Placement {
    /// On this node.
    Local,
    /// On this node of the mesh.
    Node(NodeId),
    /// On the connected node (this one included) that meets the daemon's
    /// `requirements()` and hosts the fewest daemons known to the directory.
    Capable,
}

/// A daemon spawned by [`DaemonRuntime::spawn_on`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacedDaemon {
    /// The daemon's origin hash.
    pub origin_hash: u64,
    /// The node it runs on.
    pub node: NodeId,
}

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
    /// As [`deliver`](Self::deliver) (from the daemon's node too), except
    /// that a daemon neither here nor in the directory is `NotLocated`;
    /// plus `Unreachable`, `TooManyRedirects`, `RemoteFailed`, and
    /// `Remote` when the node the directory names refuses for a reason of
    /// its own (not serving, or not hosting the daemon).
    pub async fn send(
        &self,
        origin_hash: u64,
        event: CausalEvent,
    ) -> Result<Vec<CausalEvent>, DaemonError> {
        // A local delivery completes without awaiting anything; spend
        // cooperative budget so a loop of sends cannot starve the node's
        // other tasks (its transport, a migration) on the same threads.
        tokio::task::coop::consume_budget().await;
        match self
            .deliver_or_queue(origin_hash, &event, false)
            .outcome(origin_hash)
            .await
        {
            Err(DaemonError::NotFound(_)) => {}
            local => return local,
        }
        let mesh = self.mesh();
        let mut request = EventRequest {
            target: origin_hash,
            event,
            hops: 0,
            forwarded: false,
        };
        loop {
            let node = mesh
                .locate(origin_hash)
                .ok_or(DaemonError::NotLocated(origin_hash))?;
            let reply = self
                .call(node, origin_hash, Request::Event(request.clone()))
                .await?;
            let Reply::Event(reply) = reply else {
                return Err(unexpected(origin_hash, node));
            };
            match reply {
                EventReply::Outputs(outputs) => return Ok(outputs),
                EventReply::Redirect { node: next, addr } => {
                    request.hops += 1;
                    if request.hops > MAX_HOPS || next == node {
                        return Err(DaemonError::TooManyRedirects(origin_hash));
                    }
                    if next == mesh.node_id() {
                        return self
                            .deliver_or_queue(origin_hash, &request.event, false)
                            .outcome(origin_hash)
                            .await;
                    }
                    mesh.learn_location(origin_hash, next, addr);
                }
                EventReply::Refused(refusal) => {
                    if matches!(refusal, EventRefusal::NotFound(_)) {
                        mesh.forget_location(origin_hash, node);
                    }
                    return Err(from_refusal(refusal, origin_hash, node));
                }
            }
        }
    }

    /// Spawns a daemon of `kind` under `identity` where `placement` says.
    /// For a remote node the identity's secret travels inside the admitted
    /// peer's TLS session, and the kind must be registered there.
    ///
    /// Cancel safety: cancelling after the request left may leave the daemon
    /// spawned remotely; the directory will show it.
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn) (from the remote runtime too; an identity
    /// hosted here or placed elsewhere by the directory is
    /// `HostedElsewhere`), plus
    /// `CapabilityMismatch` when no connected node meets the requirements
    /// (for `Capable`, the kind must be registered locally to read them)
    /// and `Unreachable`.
    pub async fn spawn_on(
        &self,
        kind: &str,
        identity: Identity,
        config: DaemonHostConfig,
        placement: Placement,
    ) -> Result<PlacedDaemon, DaemonError> {
        let mesh = self.mesh();
        let node = match placement {
            Placement::Local => mesh.node_id(),
            Placement::Node(node) => node,
            Placement::Capable => self.choose_node(kind)?,
        };
        let origin_hash = identity.keypair().origin_hash();
        if node == mesh.node_id() {
            self.spawn(kind, identity, config).await?;
            return Ok(PlacedDaemon { origin_hash, node });
        }
        // One identity runs in one place: not here, not elsewhere (the
        // target checks its own view too).
        if self.slot_of(origin_hash).is_ok() {
            return Err(DaemonError::HostedElsewhere {
                origin_hash,
                node: mesh.node_id(),
            });
        }
        self.check_not_elsewhere(origin_hash)?;
        let request = Request::Spawn(SpawnRequest {
            kind: kind.to_owned(),
            seed: *identity.keypair().secret_seed(),
            max_snapshot_bytes: config.max_snapshot_bytes,
        });
        match self.call(node, origin_hash, request).await? {
            Reply::Spawn(Ok(spawned)) => {
                mesh.learn_location(
                    spawned,
                    node,
                    mesh.addr_of(node).unwrap_or(mesh.local_addr()),
                );
                Ok(PlacedDaemon {
                    origin_hash: spawned,
                    node,
                })
            }
            Reply::Spawn(Err(refusal)) => Err(from_refusal(refusal, origin_hash, node)),
            Reply::Event(_) => Err(unexpected(origin_hash, node)),
        }
    }

    /// The least-loaded connected node meeting the kind's requirements.
    fn choose_node(&self, kind: &str) -> Result<NodeId, DaemonError> {
        let needs = self.requirements_of(kind)?;
        let mesh = self.mesh();
        let load = |node: NodeId| {
            if node == mesh.node_id() {
                self.daemon_count()
            } else {
                mesh.located_on(node)
            }
        };
        mesh.find_nodes(&needs)
            .into_iter()
            .min_by_key(|node| (load(*node), *node))
            .ok_or_else(|| DaemonError::CapabilityMismatch {
                kind: kind.to_owned(),
                unmet: needs
                    .requirements()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" and "),
            })
    }

    pub(crate) async fn call(
        &self,
        node: NodeId,
        origin_hash: u64,
        request: Request,
    ) -> Result<Reply, DaemonError> {
        self.binding()
            .request(self.mesh(), node, origin_hash, &request)
            .await
            .map_err(|e| match e {
                // No runtime was ever created there.
                DialError::NotServed { .. } => DaemonError::Remote {
                    node,
                    origin_hash,
                    refusal: RemoteRefusal::NotReady,
                },
                e => DaemonError::Unreachable {
                    origin_hash,
                    node,
                    reason: e.to_string(),
                },
            })
    }
}

fn unexpected(origin_hash: u64, node: NodeId) -> DaemonError {
    DaemonError::RemoteFailed {
        origin_hash,
        node,
        reason: "reply of the wrong kind".into(),
    }
}

/// The error for `node`'s refusal of a request about daemon `origin_hash`:
/// [`DaemonError::Remote`] naming the node where the refusal holds there
/// only.
pub(crate) fn from_refusal(refusal: EventRefusal, origin_hash: u64, node: NodeId) -> DaemonError {
    let remote = |refusal| DaemonError::Remote {
        node,
        origin_hash,
        refusal,
    };
    match refusal {
        EventRefusal::NotFound(_) => remote(RemoteRefusal::NotHosted),
        EventRefusal::Duplicate {
            origin_hash,
            sequence,
        } => DaemonError::Duplicate {
            origin_hash,
            sequence,
        },
        EventRefusal::NotReady => remote(RemoteRefusal::NotReady),
        EventRefusal::ShuttingDown => remote(RemoteRefusal::ShuttingDown),
        EventRefusal::CapabilityMismatch { kind, unmet } => DaemonError::CapabilityMismatch {
            kind,
            unmet: format!("{unmet} (on node {})", node.short()),
        },
        EventRefusal::Busy { origin_hash, limit } => DaemonError::Busy {
            origin_hash,
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        },
        EventRefusal::HostedElsewhere { origin_hash, node } => {
            DaemonError::HostedElsewhere { origin_hash, node }
        }
        EventRefusal::Failed(reason) => DaemonError::RemoteFailed {
            origin_hash,
            node,
            reason,
        },
    }
}

/// As [`from_refusal`], for an event this node forwarded after a
/// migration: a target that does not host the daemon any more reads as
/// `NotFound` here, so that the waiting sender routes the event again.
pub(crate) fn from_forward_refusal(
    refusal: EventRefusal,
    origin_hash: u64,
    node: NodeId,
) -> DaemonError {
    match refusal {
        EventRefusal::NotFound(o) => DaemonError::NotFound(o),
        other => from_refusal(other, origin_hash, node),
    }
}
