//! Transport of the migration protocol: one cached connection per peer
//! (ALPN `cellmesh/migrate/1`), one bidirectional stream per migration or
//! status query. The protocol itself lives in
//! [`migration`](crate::compute::migration).

use std::sync::Arc;

use super::Binding;
use crate::compute::migration::serve::serve_stream;
use crate::compute::migration::wire::ALPN_MIGRATE;
use crate::mesh::{Context, DialError, Mesh, ProtocolHandler, Serving};
use crate::NodeId;

/// The handler of `cellmesh/migrate/1` on the mesh's router.
pub(super) struct MigrateProtocol {
    pub(super) binding: Arc<Binding>,
}

impl ProtocolHandler for MigrateProtocol {
    fn accept(self: Arc<Self>, mesh: Context, conn: quinn::Connection, peer: NodeId) -> Serving {
        Box::pin(async move {
            loop {
                let stream = tokio::select! {
                    biased;
                    () = mesh.closed() => return,
                    s = conn.accept_bi() => s,
                };
                let Ok((send, recv)) = stream else { return };
                let runtime = self.binding.runtime();
                let max = mesh.config().max_frame;
                mesh.spawn(serve_stream(runtime, peer, send, recv, max));
            }
        })
    }
}

/// Opens a stream of the migration protocol to `node`, on the cached
/// connection or on one dialled now.
///
/// # Errors
/// [`DialError`]: the node is unknown, unreachable or refuses, or the
/// connection broke.
pub(crate) async fn migrate_stream(
    mesh: &Mesh,
    node: NodeId,
) -> Result<(quinn::SendStream, quinn::RecvStream), DialError> {
    let conn = mesh.connection(node, ALPN_MIGRATE).await?;
    conn.open_bi().await.map_err(|e| {
        mesh.forget_connection(node, ALPN_MIGRATE, &conn);
        DialError::Lost {
            peer: node,
            reason: e.to_string(),
        }
    })
}

#[cfg(feature = "test-utils")]
impl Mesh {
    /// Test hook: an admitted event connection to `node`, for writing raw
    /// frames.
    ///
    /// # Errors
    /// As `connect`.
    pub async fn raw_event_connection(&self, node: NodeId) -> Result<quinn::Connection, DialError> {
        self.dial_uncached(node, super::wire::ALPN_EVENTS).await
    }

    /// Test hook: a fresh stream of the migration protocol to `node`, for
    /// writing raw frames as a hostile peer would.
    ///
    /// # Errors
    /// As `connect`.
    pub async fn raw_migrate_stream(
        &self,
        node: NodeId,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), DialError> {
        migrate_stream(self, node).await
    }
}
