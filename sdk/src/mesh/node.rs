//! [`Mesh`]: one node of the mesh.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::{DashMap, DashSet};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::AdmissionError;
use super::config::MeshConfig;
use super::error::DialError;
use super::pool::Pool;
use super::psk::Psk;
use super::rejoin::Rejoin;
use super::router::Router;
use super::stats::{AdmissionCounters, AdmissionStats};
use super::tls::Credentials;
use super::wire::{Ctrl, MemberRecord, SignedRecord};
use crate::capabilities::{CapabilityFilter, CapabilitySet};
use crate::identity::Identity;
use crate::identity::NodeId;

/// Application close codes (admission refusals have their own, in
/// [`admission::code`](super::admission::code), 0x10 and 0x13–0x15).
pub(crate) mod close {
    /// Normal close (node dropped).
    pub(crate) const NORMAL: u32 = 0;
    /// Admission failed for a reason the close reason states.
    pub(crate) const ADMISSION: u32 = super::super::admission::code::REFUSED;
    /// The peer broke the protocol (garbage, oversized frame).
    pub(crate) const PROTOCOL: u32 = 0x11;
    /// The node leaves the mesh.
    pub(crate) const LEAVE: u32 = 0x12;
    /// The node's process is replaced; the node comes back at once.
    pub(crate) const RESTART: u32 = 0x13;
}

/// An admitted control link to a peer.
pub(crate) struct PeerLink {
    pub(crate) conn: quinn::Connection,
    pub(crate) feed: Arc<super::feed::Feed>,
    /// The control protocol version the link speaks.
    pub(crate) version: u8,
    /// When the link was admitted.
    pub(crate) since: std::time::SystemTime,
}

/// State shared by the node's handle and its background tasks.
pub(crate) struct Shared {
    pub(crate) node_id: NodeId,
    pub(crate) capabilities: CapabilitySet,
    pub(crate) psk: Psk,
    pub(crate) config: MeshConfig,
    pub(crate) credentials: Credentials,
    /// The node's own key: signs what the node emits (cell events).
    pub(crate) keypair: crate::Keypair,
    pub(crate) endpoint: quinn::Endpoint,
    /// Whether the endpoint reads its socket (see [`Mesh::release`]).
    pub(crate) gate: Arc<super::gate::Gate>,
    /// The control protocol versions offered, most preferred first.
    pub(crate) ctrl_alpns: Vec<&'static [u8]>,
    /// Built held, and not released yet: the seeds are still to dial.
    pub(crate) held: std::sync::atomic::AtomicBool,
    pub(crate) local_addr: SocketAddr,
    pub(crate) own_record: SignedRecord,
    /// The protocols served besides the control protocol, by ALPN.
    pub(crate) router: Router,
    /// Signed records of other nodes we know of.
    pub(crate) members: DashMap<NodeId, SignedRecord>,
    /// Admitted control links.
    pub(crate) peers: DashMap<NodeId, PeerLink>,
    /// Where remote daemons live.
    pub(crate) directory: DashMap<u64, NodeId>,
    /// Daemons that live here (announced to peers).
    pub(crate) local: DashSet<u64>,
    /// Addresses learned from redirects for nodes not (yet) members.
    pub(crate) redirect_addrs: DashMap<NodeId, SocketAddr>,
    /// One admitted connection per (peer, protocol), dialled on first use.
    pub(crate) conns: Pool<(NodeId, &'static [u8]), quinn::Connection>,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
    /// Inbound connections turned away, by reason.
    pub(crate) admission: AdmissionCounters,
    /// Whom to dial again, and when; driven by the rejoin task.
    pub(crate) rejoin: Mutex<Rejoin>,
    /// Wakes the rejoin task after an input.
    pub(crate) rejoin_wake: Notify,
    /// Nodes that closed their links to restart: when, when they were
    /// admitted again, and the round trip last measured to them.
    pub(crate) restarting: DashMap<NodeId, super::restart::Restarting>,
    pub(crate) changes: watch::Sender<u64>,
}

/// How a control link ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkEnd {
    /// The peer said it leaves, or closed its connections on purpose.
    Left,
    /// Timed out, reset or broken: the peer may come back.
    Lost,
    /// Its process is being replaced: it comes back at once, the same
    /// node with the same daemons.
    Restarting,
}

impl Shared {
    pub(crate) fn bump(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// Sends `msg` to every peer's control feed.
    pub(crate) fn broadcast(&self, msg: &Ctrl) {
        self.broadcast_from(1, msg);
    }

    /// Sends `msg` to the control feed of every peer whose link speaks
    /// control protocol `version` or later.
    pub(crate) fn broadcast_from(&self, version: u8, msg: &Ctrl) {
        for peer in self.peers.iter().filter(|p| p.version >= version) {
            peer.feed.send(msg.clone());
        }
    }

    /// Forgets a peer whose control link `stable_id` ended, and tells the
    /// rejoin schedule how.
    pub(crate) fn drop_peer(&self, peer: NodeId, stable_id: usize, end: LinkEnd) {
        let removed = self
            .peers
            .remove_if(&peer, |_, link| link.conn.stable_id() == stable_id);
        let rtt = removed.as_ref().map(|(_, link)| link.conn.rtt());
        let removed = removed.is_some();
        if let (Some(rtt), LinkEnd::Restarting, false) = (rtt, end, self.peers.contains_key(&peer))
        {
            // The same node, back in a moment: keep its record and its
            // daemons' locations, and dial it again at once.
            self.note_restarting(peer, rtt);
            self.conns.retain(|(node, _), _| *node != peer);
            tracing::debug!(node = %self.node_id.short(), peer = %peer.short(), "peer restarting");
            self.with_rejoin(|r, now| r.handle_restarting(now, peer));
        } else if removed && !self.peers.contains_key(&peer) {
            self.members.remove(&peer);
            self.directory.retain(|_, node| *node != peer);
            // A peer that dropped out is dialled afresh: its other
            // connections may be as dead as its control link.
            self.conns.retain(|(node, _), _| *node != peer);
            tracing::debug!(node = %self.node_id.short(), peer = %peer.short(), ?end, "peer gone");
            self.with_rejoin(|r, now| match end {
                LinkEnd::Left => r.handle_left(now, peer),
                LinkEnd::Lost | LinkEnd::Restarting => r.handle_lost(now, peer),
            });
        }
        self.bump();
    }

    /// The error refusing `peer` connecting from `addr` when its id already
    /// has a live control link from another address (a second node with its
    /// key). A link from the same address is the same node reconnecting and
    /// replaces the old one; so does any link once the old one is closed (a
    /// restarted node at a new address is let in once its old connection
    /// has idled out).
    pub(crate) fn duplicate_of(&self, peer: NodeId, addr: SocketAddr) -> Option<AdmissionError> {
        let link = self.peers.get(&peer)?;
        let live_elsewhere =
            link.conn.close_reason().is_none() && link.conn.remote_address() != addr;
        live_elsewhere.then_some(AdmissionError::DuplicateId {
            node: peer,
            by: self.node_id,
        })
    }

    /// Lists `link` as the control link of `peer`, unless `peer` is this
    /// node or is live from another address ([`duplicate_of`](Self::duplicate_of)),
    /// checked under the map's lock.
    pub(crate) fn insert_peer(&self, peer: NodeId, link: PeerLink) -> Result<(), AdmissionError> {
        if peer == self.node_id {
            return Err(AdmissionError::OwnId(peer));
        }
        match self.peers.entry(peer) {
            Entry::Occupied(mut held) => {
                let old = &held.get().conn;
                if old.close_reason().is_none()
                    && old.remote_address() != link.conn.remote_address()
                {
                    return Err(AdmissionError::DuplicateId {
                        node: peer,
                        by: self.node_id,
                    });
                }
                held.insert(link);
            }
            Entry::Vacant(slot) => {
                slot.insert(link);
            }
        }
        self.bump();
        Ok(())
    }

    /// A control link to `peer` is up.
    pub(crate) fn on_joined(&self, peer: NodeId, addr: SocketAddr) {
        self.note_back(peer);
        self.with_rejoin(|r, now| r.handle_joined(now, peer, addr));
    }

    /// A verified record arrived; returns whether to take it (not the old
    /// record of a node that left).
    pub(crate) fn on_member(&self, record: &MemberRecord) -> bool {
        self.with_rejoin(|r, now| {
            r.handle_member(now, record.node, record.addr, record.incarnation)
        })
    }

    /// Feeds the rejoin schedule and wakes its task.
    pub(crate) fn with_rejoin<T>(&self, f: impl FnOnce(&mut Rejoin, std::time::Instant) -> T) -> T {
        let out = self.poll_rejoin(f);
        self.rejoin_wake.notify_one();
        out
    }

    /// Runs `f` on the rejoin schedule at the current time, without waking
    /// its task (the task's own polls).
    pub(crate) fn poll_rejoin<T>(&self, f: impl FnOnce(&mut Rejoin, std::time::Instant) -> T) -> T {
        let now = tokio::time::Instant::now().into_std();
        // A panic under this lock would be a bug in the schedule, whose
        // state stays consistent enough to go on with.
        let mut rejoin = self.rejoin.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut rejoin, now)
    }

    /// Where to dial `node`: the address its live control connection comes
    /// from (one endpoint serves both directions, so that is its listening
    /// socket), else the address its membership record advertises, else
    /// one a redirect named.
    pub(crate) fn addr_of(&self, node: NodeId) -> Option<SocketAddr> {
        self.peers
            .get(&node)
            .map(|p| p.conn.remote_address())
            .or_else(|| self.members.get(&node).map(|r| r.record.addr))
            .or_else(|| self.redirect_addrs.get(&node).map(|a| *a))
    }
}

/// A member of the mesh as this node knows it ([`Mesh::members`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The node.
    pub node: NodeId,
    /// Where it is reached: its live connection's address, else the one
    /// its record advertises.
    pub addr: SocketAddr,
    /// Its capability tags.
    pub tags: Vec<String>,
    /// When its control link was admitted; `None` while it is not
    /// connected.
    pub connected_since: Option<std::time::SystemTime>,
}

/// A mesh node: a QUIC endpoint (client and server) bound to the node's
/// ed25519 key, admitting peers that prove the mesh pre-shared key.
///
/// Dropping the node closes its endpoint and stops its tasks; use
/// [`leave`](Mesh::leave) to tell peers first.
pub struct Mesh {
    pub(crate) shared: Arc<Shared>,
}

impl Mesh {
    /// This node's id (its public key).
    pub fn node_id(&self) -> NodeId {
        self.shared.node_id
    }

    /// The address the endpoint is bound to (the real port when `:0` was
    /// asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// What this node advertises.
    pub fn capabilities(&self) -> &CapabilitySet {
        &self.shared.capabilities
    }

    /// The transport settings.
    pub fn config(&self) -> &MeshConfig {
        &self.shared.config
    }

    /// Connected, admitted peers.
    pub fn peers(&self) -> Vec<NodeId> {
        let mut peers: Vec<NodeId> = self.shared.peers.iter().map(|p| *p.key()).collect();
        peers.sort_unstable();
        peers
    }

    /// The other nodes this one holds a membership record of, connected
    /// or not, sorted by node id.
    pub fn members(&self) -> Vec<PeerInfo> {
        let shared = &self.shared;
        let mut out: Vec<PeerInfo> = shared
            .members
            .iter()
            .filter(|m| *m.key() != shared.node_id)
            .map(|m| {
                let record = &m.value().record;
                PeerInfo {
                    node: record.node,
                    addr: shared.addr_of(record.node).unwrap_or(record.addr),
                    tags: record.capabilities.tags().map(str::to_owned).collect(),
                    connected_since: shared.peers.get(&record.node).map(|p| p.since),
                }
            })
            .collect();
        out.sort_unstable_by_key(|p| p.node);
        out
    }

    /// The signed record this node advertises.
    pub fn record(&self) -> &MemberRecord {
        &self.shared.own_record.record
    }

    /// Nodes (this one included) whose advertised capabilities meet `filter`.
    pub fn find_nodes(&self, filter: &CapabilityFilter) -> Vec<NodeId> {
        let mut found: Vec<NodeId> = self
            .shared
            .members
            .iter()
            .filter(|r| self.shared.peers.contains_key(r.key()))
            .filter(|r| r.record.capabilities.matches(filter))
            .map(|r| *r.key())
            .collect();
        if self.shared.capabilities.matches(filter) {
            found.push(self.shared.node_id);
        }
        found.sort_unstable();
        found
    }

    /// How many inbound connections failed admission (wrong key, wrong
    /// proof, timeout, own or duplicate id); see
    /// [`admission_stats`](Self::admission_stats) for the reasons.
    pub fn admission_failures(&self) -> u64 {
        self.shared.admission.snapshot().failed()
    }

    /// Inbound connections turned away before admission, by reason.
    pub fn admission_stats(&self) -> AdmissionStats {
        self.shared.admission.snapshot()
    }

    /// Inbound connections refused at their first packet because
    /// `MeshConfig::max_unadmitted` others were already awaiting admission.
    pub fn refused_connections(&self) -> u64 {
        self.shared.admission.snapshot().over_limit
    }

    /// Connects to the node at `addr`, learning its id from its certificate,
    /// and joins its view of the mesh (the rest is discovered from it).
    ///
    /// Cancel safety: cancelling may leave a half-open connection that the
    /// idle timeout closes.
    ///
    /// # Errors
    /// [`DialError`]: unreachable, refused, failed admission.
    pub async fn connect(&self, addr: SocketAddr) -> Result<NodeId, DialError> {
        super::links::dial_ctrl(&self.shared, addr, None).await
    }

    /// Connects to the node at `addr` and accepts it only if it holds the
    /// key of `node`.
    ///
    /// # Errors
    /// As [`connect`](Self::connect); a node presenting another key fails
    /// the TLS handshake.
    pub async fn connect_to(&self, addr: SocketAddr, node: NodeId) -> Result<NodeId, DialError> {
        super::links::dial_ctrl(&self.shared, addr, Some(node)).await
    }

    /// Waits until at least `n` peers are connected, or `timeout` passes.
    /// Returns whether the count was reached.
    pub async fn wait_for_peers(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |mesh| mesh.shared.peers.len() >= n)
            .await
    }

    /// Waits until `condition` holds for this node, re-checking it on every
    /// membership or directory change, or until `timeout` passes. Returns
    /// whether it held.
    pub async fn wait_for(&self, timeout: Duration, condition: impl Fn(&Mesh) -> bool) -> bool {
        let mut changes = self.shared.changes.subscribe();
        let wait = async {
            while !condition(self) {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        condition(self)
    }

    /// Leaves the mesh gracefully: tells every peer (they drop this node at
    /// once and do not dial it again) and closes all connections. The node
    /// stays usable for local work and dials no one again on its own
    /// (`connect` still works).
    pub async fn leave(&self) {
        self.shared.with_rejoin(|r, _| r.stop());
        self.shared.broadcast(&Ctrl::Leave);
        // Give the feeds a moment to flush their last frame.
        tokio::task::yield_now().await;
        let links: Vec<_> = self.shared.peers.iter().map(|p| p.conn.clone()).collect();
        for conn in links {
            super::links::flush_then_close(conn, close::LEAVE).await;
        }
        self.shared.peers.clear();
        self.shared.members.clear();
        self.shared.directory.clear();
        self.shared.conns.clear();
        self.shared.bump();
    }

    /// The node's key pair, for signing what this node emits.
    pub(crate) fn keypair(&self) -> &crate::Keypair {
        &self.shared.keypair
    }

    /// Announces that daemon `origin` lives here.
    pub(crate) fn announce(&self, origin: u64) {
        self.shared.local.insert(origin);
        self.shared.directory.remove(&origin);
        if !self.shared.peers.is_empty() {
            self.shared.broadcast(&Ctrl::Located(vec![origin]));
        }
    }

    /// Announces that daemon `origin` no longer lives here.
    pub(crate) fn retract(&self, origin: u64) {
        if self.shared.local.remove(&origin).is_some() && !self.shared.peers.is_empty() {
            self.shared.broadcast(&Ctrl::Gone(vec![origin]));
        }
    }

    /// Records that daemon `origin` moved from here to `node` (migration
    /// commit) and tells peers it is gone from here; `node` announces it.
    pub(crate) fn moved_to(&self, origin: u64, node: NodeId) {
        self.shared.directory.insert(origin, node);
        if self.shared.local.remove(&origin).is_some() {
            // Where the peer can read it, where the daemon went; a peer of
            // the previous build only hears that it left.
            for peer in self.shared.peers.iter() {
                peer.feed.send(if peer.version >= 2 {
                    Ctrl::Moved(vec![(origin, node)])
                } else {
                    Ctrl::Gone(vec![origin])
                });
            }
        }
    }

    /// Where the mesh believes daemon `origin` lives (not counting here).
    pub fn locate(&self, origin: u64) -> Option<NodeId> {
        self.shared.directory.get(&origin).map(|n| *n)
    }

    /// Records that `origin` lives on `node` at `addr` (learned from a
    /// redirect).
    pub(crate) fn learn_location(&self, origin: u64, node: NodeId, addr: SocketAddr) {
        if node == self.shared.node_id {
            return;
        }
        self.shared.directory.insert(origin, node);
        if !self.shared.members.contains_key(&node) {
            self.shared.redirect_addrs.insert(node, addr);
        }
    }

    /// How many daemons the directory places on `node`.
    pub(crate) fn located_on(&self, node: NodeId) -> usize {
        self.shared
            .directory
            .iter()
            .filter(|e| *e.value() == node)
            .count()
    }

    pub(crate) fn addr_of(&self, node: NodeId) -> Option<SocketAddr> {
        self.shared.addr_of(node)
    }

    /// Whether this node knows how to reach `node`.
    pub(crate) fn knows(&self, node: NodeId) -> bool {
        self.shared.addr_of(node).is_some()
    }

    /// Drops the belief that `origin` lives on `node`.
    pub(crate) fn forget_location(&self, origin: u64, node: NodeId) {
        self.shared.directory.remove_if(&origin, |_, n| *n == node);
    }
}

#[cfg(feature = "test-utils")]
impl Mesh {
    /// Test hook: make this node believe daemon `origin` lives on `node`.
    pub fn set_location(&self, origin: u64, node: NodeId) {
        self.shared.directory.insert(origin, node);
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        self.shared
            .endpoint
            .close(close::NORMAL.into(), b"node dropped");
    }
}

impl fmt::Debug for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mesh")
            .field("node_id", &self.shared.node_id)
            .field("addr", &self.shared.local_addr)
            .field("peers", &self.shared.peers.len())
            .finish_non_exhaustive()
    }
}

pub(crate) fn own_record(
    identity: &Identity,
    addr: SocketAddr,
    capabilities: &CapabilitySet,
    incarnation: u64,
) -> SignedRecord {
    SignedRecord::sign(
        MemberRecord {
            node: NodeId::from(identity.entity_id()),
            addr,
            capabilities: capabilities.clone(),
            incarnation,
        },
        identity.keypair(),
    )
}
