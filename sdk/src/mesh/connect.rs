//! The mesh's side of the protocols built on it: registering a protocol
//! (see [`router`](super::router)), and one cached admitted connection per
//! (peer, protocol), dialled once however many callers want it first.

use std::sync::Arc;

use super::error::DialError;
use super::links::dial;
use super::node::Mesh;
use super::router::ProtocolHandler;
use crate::identity::NodeId;

impl Mesh {
    /// The handler serving `alpn`, registering the one `make` builds if
    /// there is none; from then on the endpoint offers `alpn` in its TLS
    /// handshakes.
    pub(crate) fn register_protocol(
        &self,
        alpn: &'static [u8],
        make: impl FnOnce() -> Arc<dyn ProtocolHandler>,
    ) -> Arc<dyn ProtocolHandler> {
        let shared = &self.shared;
        shared.router.get_or_insert(alpn, make, |alpns| {
            let mut offered: Vec<&[u8]> = shared.ctrl_alpns.clone();
            offered.extend_from_slice(alpns);
            match super::builder::server_config(&shared.credentials, &shared.config, &offered) {
                Ok(server) => shared.endpoint.set_server_config(Some(server)),
                // The same credentials and settings built the endpoint.
                Err(e) => tracing::error!(error = %e, "protocol list not updated"),
            }
        })
    }

    /// The handler serving `alpn`, if one is registered.
    pub(crate) fn protocol(&self, alpn: &[u8]) -> Option<Arc<dyn ProtocolHandler>> {
        self.shared.router.get(alpn)
    }

    /// The admitted connection to `node` for protocol `alpn`: the cached
    /// one while it is open, else one dialled now (concurrent first users,
    /// say the 64 migrations a drain starts at once, wait for the same
    /// dial).
    ///
    /// # Errors
    /// [`DialError`]: the node is unknown, unreachable or refuses.
    pub(crate) async fn connection(
        &self,
        node: NodeId,
        alpn: &'static [u8],
    ) -> Result<quinn::Connection, DialError> {
        let shared = &self.shared;
        shared
            .conns
            .get_or_open(&(node, alpn), open, async {
                let addr = shared.addr_of(node).ok_or(DialError::UnknownNode(node))?;
                let (conn, _) = dial(shared, addr, Some(node), alpn).await?;
                Ok(conn)
            })
            .await
    }

    /// The cached connection to `node` for `alpn`, if it is open.
    pub(crate) fn pooled(&self, node: NodeId, alpn: &'static [u8]) -> Option<quinn::Connection> {
        self.shared.conns.get(&(node, alpn), open)
    }

    /// Drops `conn` from the cache (it failed its user); the next user
    /// dials again. A newer connection cached since is kept.
    pub(crate) fn forget_connection(
        &self,
        node: NodeId,
        alpn: &'static [u8],
        conn: &quinn::Connection,
    ) {
        let id = conn.stable_id();
        self.shared
            .conns
            .remove_if(&(node, alpn), |c| c.stable_id() == id);
    }

    /// A fresh admitted connection to `node` for `alpn`, not cached (for
    /// the test hooks that play a hostile peer).
    #[cfg(feature = "test-utils")]
    pub(crate) async fn dial_uncached(
        &self,
        node: NodeId,
        alpn: &'static [u8],
    ) -> Result<quinn::Connection, DialError> {
        let addr = self
            .shared
            .addr_of(node)
            .ok_or(DialError::UnknownNode(node))?;
        Ok(dial(&self.shared, addr, Some(node), alpn).await?.0)
    }

    /// Runs `task` among the node's tasks.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.shared.tasks.spawn(task);
    }
}

fn open(conn: &quinn::Connection) -> bool {
    conn.close_reason().is_none()
}

#[cfg(test)]
mod tests;
