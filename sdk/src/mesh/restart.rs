//! A node's process being replaced (an upgrade of its binary): the old
//! process stops reading the socket it shares with the new one and closes
//! every connection with [`close::RESTART`], and its peers
//! keep what they know of the node (its record, where its daemons live),
//! dial it again at once, and treat it as *restarting* for up to
//! [`RESTART_GRACE`] or until it is admitted again. A sender seeing the
//! node unreachable or refusing meanwhile waits and retries (see
//! `EventSender`): the new process is the same node, at the same address,
//! with the same daemons.

use std::time::{Duration, Instant};

use super::node::{close, Shared};
use super::wire::Ctrl;
use super::{Mesh, NodeId};

/// How long a node that said it restarts is waited for.
pub const RESTART_GRACE: Duration = Duration::from_secs(30);

/// How long a restarted node still counts as restarting once it is
/// admitted again: its new process may answer "not ready" for a moment
/// while it starts its runtime and adopts its daemons.
pub(crate) const SETTLE: Duration = Duration::from_secs(2);

/// How long after a restart notice the first dial goes out.
pub(crate) const RESTART_REDIAL: Duration = Duration::from_millis(5);

/// How long a process should keep running after [`Mesh::hand_over`] for
/// the close frames to leave (they leave at the endpoint's next poll;
/// waiting for the connections to drain would take three probe timeouts).
pub const HAND_OVER_FLUSH: Duration = Duration::from_millis(3);

/// A node that said it restarts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Restarting {
    /// When it said so.
    since: Instant,
    /// When it was admitted again.
    back: Option<Instant>,
    /// The round trip last measured to it.
    rtt: Duration,
}

impl Shared {
    /// `node` closed its link to restart; `rtt` was its round trip.
    pub(crate) fn note_restarting(&self, node: NodeId, rtt: Duration) {
        self.restarting.insert(
            node,
            Restarting {
                since: Instant::now(),
                back: None,
                rtt,
            },
        );
    }

    /// `node` is admitted again: it settles for [`SETTLE`].
    pub(crate) fn note_back(&self, node: NodeId) {
        if let Some(mut entry) = self.restarting.get_mut(&node) {
            entry.back.get_or_insert_with(Instant::now);
        }
    }

    /// The first round-trip estimate for a dial of `node`: the one last
    /// measured, if it is restarting. Its new process shares the socket
    /// with the old one for a moment, and a handshake's first packet read
    /// by the old one is lost; QUIC's default estimate (333 ms) would
    /// resend it only after about a second, this one after a few round
    /// trips.
    pub(crate) fn redial_rtt(&self, node: NodeId) -> Option<Duration> {
        let entry = self.restarting.get(&node)?;
        Some((entry.rtt * 2).clamp(REDIAL_RTT_MIN, REDIAL_RTT_MAX))
    }
}

/// Bounds of the first round-trip estimate of a dial to a restarting node
/// (see [`Shared::redial_rtt`]): a timer finer than a millisecond only
/// resends for nothing, and QUIC's own default is the ceiling.
const REDIAL_RTT_MIN: Duration = Duration::from_millis(2);
const REDIAL_RTT_MAX: Duration = Duration::from_millis(333);

impl Mesh {
    /// Tells the peers that this node's process is about to be replaced
    /// (before its daemons are frozen for an upgrade): from now on they
    /// treat it as restarting, so a send that fails during the upgrade is
    /// retried rather than reported (see `EventSender`). Only peers that
    /// speak version 2 of the control protocol are told; one of an older
    /// build learns of the restart from the close code alone.
    pub fn announce_restart(&self) {
        self.shared.broadcast_from(2, &Ctrl::Restarting);
    }

    /// Tells the peers the replacement announced by
    /// [`announce_restart`](Self::announce_restart) was called off: the
    /// node serves on (they stop treating it as restarting after a short
    /// settling time).
    pub fn announce_resumed(&self) {
        self.shared.broadcast_from(2, &Ctrl::Resumed);
    }

    /// Starts reading the node's socket and dialling its seeds: a node
    /// built [held](super::MeshBuilder::held) serves from now on. Call it
    /// once the process that served the node before stopped reading it
    /// ([`hand_over`](Self::hand_over)). Does nothing more on a node
    /// already released.
    pub fn release(&self) {
        let shared = &self.shared;
        shared.gate.open();
        if shared.held.swap(false, std::sync::atomic::Ordering::AcqRel) {
            let dialler = std::sync::Arc::clone(shared);
            shared.tasks.spawn(async move {
                super::builder::start_dialling(&dialler, false).await;
            });
        }
    }

    /// Whether `node` said it restarts (closed its connections with the
    /// restart code) less than [`RESTART_GRACE`] ago and has not been
    /// admitted again, or was admitted again less than 2 s ago (its new
    /// process may still be starting its runtime).
    pub fn is_restarting(&self, node: NodeId) -> bool {
        let shared = &self.shared;
        let Some(Restarting { since, back, .. }) = shared.restarting.get(&node).map(|s| *s) else {
            return false;
        };
        let over = |since: Instant, back: Option<Instant>| {
            since.elapsed() >= RESTART_GRACE || back.is_some_and(|b| b.elapsed() >= SETTLE)
        };
        if !over(since, back) {
            return true;
        }
        shared
            .restarting
            .remove_if(&node, |_, r| over(r.since, r.back));
        false
    }

    /// Hands this node over to another process (an upgrade of its binary,
    /// which serves the same node id at the same address), at once: stops
    /// reading the node's socket (what arrives from now on waits there for
    /// the process the node is handed to, which shares the socket and
    /// starts reading at [`release`](Self::release)), dials no one again,
    /// and closes every connection with the restart code, so that peers
    /// keep the node's record and daemon locations and dial it again at
    /// once. Unlike [`leave`](Self::leave), peers are not told the node is
    /// gone. The mesh serves nothing afterwards.
    ///
    /// The close frames leave at the endpoint's next poll: keep the Tokio
    /// runtime running a moment ([`HAND_OVER_FLUSH`]) before the process
    /// exits.
    pub fn hand_over(&self) {
        let shared = &self.shared;
        shared.gate.shut();
        shared.with_rejoin(|r, _| r.stop());
        let reason: &[u8] = b"node restarting";
        for link in shared.peers.iter() {
            link.conn.close(close::RESTART.into(), reason);
        }
        shared.endpoint.close(close::RESTART.into(), reason);
        shared.cancel.cancel();
    }
}
