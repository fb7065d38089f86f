//! Transport of the migration protocol: one cached connection per peer
//! (ALPN `cellmesh/migrate/1`), one bidirectional stream per migration or
//! status query. The protocol itself lives in `compute::migration`.

use std::sync::Arc;

use super::error::DialError;
use super::links::dial;
use super::node::{Mesh, Shared};
use super::node_id::NodeId;
use crate::compute::migration::wire::ALPN_MIGRATE;

impl Mesh {
    /// Opens a stream of the migration protocol to `node`, on the cached
    /// connection or on one dialled now (concurrent first users, say the
    /// 64 migrations a drain starts at once, wait for the same dial).
    pub(crate) async fn migrate_stream(
        &self,
        node: NodeId,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), DialError> {
        let shared = &self.shared;
        let cached = |shared: &Shared| {
            shared
                .migrate_conns
                .get(&node)
                .filter(|c| c.close_reason().is_none())
                .map(|c| c.clone())
        };
        let conn = match cached(shared) {
            Some(conn) => conn,
            None => {
                let gate = Arc::clone(shared.migrate_dials.entry(node).or_default().value());
                let _turn = gate.lock().await;
                match cached(shared) {
                    Some(conn) => conn,
                    None => {
                        let addr = shared.addr_of(node).ok_or(DialError::UnknownNode(node))?;
                        let (conn, _) = dial(shared, addr, Some(node), ALPN_MIGRATE).await?;
                        shared.migrate_conns.insert(node, conn.clone());
                        conn
                    }
                }
            }
        };
        conn.open_bi().await.map_err(|e| {
            shared.migrate_conns.remove(&node);
            DialError::Lost {
                peer: node,
                reason: e.to_string(),
            }
        })
    }
}

/// Serves migration streams on an admitted connection until it closes.
pub(crate) async fn serve(shared: Arc<Shared>, conn: quinn::Connection, peer: NodeId) {
    loop {
        let stream = tokio::select! {
            biased;
            () = shared.cancel.cancelled() => return,
            s = conn.accept_bi() => s,
        };
        let Ok((send, recv)) = stream else { return };
        let runtime = shared.handler.load().as_ref().and_then(|h| h.runtime());
        let max = shared.config.max_frame;
        shared
            .tasks
            .spawn(crate::compute::migration::serve::serve_stream(
                runtime, peer, send, recv, max,
            ));
    }
}
