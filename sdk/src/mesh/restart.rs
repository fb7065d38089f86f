//! A node's process being replaced (an upgrade of its binary): the old
//! process closes every connection with [`close::RESTART`], and its peers
//! keep what they know of the node (its record, where its daemons live),
//! dial it again at once, and treat it as *restarting* for up to
//! [`RESTART_GRACE`] or until it is admitted again. A sender seeing the
//! node unreachable or refusing meanwhile waits and retries (see
//! `EventSender`): the new process is the same node, at the same address,
//! with the same daemons.

use std::time::{Duration, Instant};

use super::node::{close, Shared};
use super::{Mesh, NodeId};

/// How long a node that said it restarts is waited for.
pub const RESTART_GRACE: Duration = Duration::from_secs(30);

/// How long a restarted node still counts as restarting once it is
/// admitted again: its new process may answer "not ready" for a moment
/// while it starts its runtime and adopts its daemons.
pub(crate) const SETTLE: Duration = Duration::from_secs(2);

/// How long after a restart notice the first dial goes out.
pub(crate) const RESTART_REDIAL: Duration = Duration::from_millis(5);

/// How long [`Mesh::hand_over`] lets the endpoint run to send the close
/// frames (they leave at its next poll; waiting for the connections to
/// drain would take three probe timeouts).
const FLUSH: Duration = Duration::from_millis(3);

impl Shared {
    /// `node` closed its link to restart.
    pub(crate) fn note_restarting(&self, node: NodeId) {
        self.restarting.insert(node, (Instant::now(), None));
    }

    /// `node` is admitted again: it settles for [`SETTLE`].
    pub(crate) fn note_back(&self, node: NodeId) {
        if let Some(mut entry) = self.restarting.get_mut(&node) {
            entry.1.get_or_insert_with(Instant::now);
        }
    }
}

impl Mesh {
    /// Whether `node` said it restarts (closed its connections with the
    /// restart code) less than [`RESTART_GRACE`] ago and has not been
    /// admitted again, or was admitted again less than 2 s ago (its new
    /// process may still be starting its runtime).
    pub fn is_restarting(&self, node: NodeId) -> bool {
        let shared = &self.shared;
        let Some((since, back)) = shared.restarting.get(&node).map(|s| *s) else {
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
            .remove_if(&node, |_, (since, back)| over(*since, *back));
        false
    }

    /// Hands this node over to another process (an upgrade of its binary,
    /// which serves the same node id at the same address): dials no one
    /// again, closes every connection with the restart code so that peers
    /// keep the node's record and daemon locations and dial it again at
    /// once, and gives the endpoint a moment (3 ms) to send the close
    /// frames. Unlike [`leave`](Self::leave), peers are not told the node
    /// is gone. The mesh serves nothing afterwards.
    pub async fn hand_over(&self) {
        let shared = &self.shared;
        shared.with_rejoin(|r, _| r.stop());
        let reason: &[u8] = b"node restarting";
        for link in shared.peers.iter() {
            link.conn.close(close::RESTART.into(), reason);
        }
        shared.endpoint.close(close::RESTART.into(), reason);
        tokio::time::sleep(FLUSH).await;
        shared.cancel.cancel();
    }
}
