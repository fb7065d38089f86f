//! The event protocol (`cellmesh/events/1`): one bidirectional stream per
//! request, so that concurrent sends to different daemons never wait on each
//! other (no head-of-line blocking); the per-connection stream limit bounds
//! how many are in flight (senders wait for a slot).

use std::sync::Arc;

use super::error::DialError;
use super::frame;
use super::links::{dial, read_frame};
use super::node::{close, Mesh, Shared};
use super::node_id::NodeId;
use super::wire::{EventReply, EventRequest, Refusal, Reply, Request, SpawnRequest, ALPN_EVENTS};
use crate::compute::DaemonError;

/// Redirects a request may follow.
pub(crate) const MAX_REDIRECTS: u8 = 4;

/// Serves event requests on an admitted connection until it closes.
pub(crate) async fn serve(shared: Arc<Shared>, conn: quinn::Connection, peer: NodeId) {
    loop {
        let stream = tokio::select! {
            biased;
            () = shared.cancel.cancelled() => return,
            s = conn.accept_bi() => s,
        };
        let Ok((mut send, mut recv)) = stream else {
            return;
        };
        let shared2 = Arc::clone(&shared);
        let conn2 = conn.clone();
        shared.tasks.spawn(async move {
            let request: Request = match read_frame(
                &mut recv,
                shared2.config.max_frame,
                "event request",
            )
            .await
            {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(peer = %peer.short(), error = %e, "event protocol violation");
                    conn2.close(close::PROTOCOL.into(), e.to_string().as_bytes());
                    return;
                }
            };
            let reply = match &request {
                Request::Event(event) => Reply::Event(answer(&shared2, event)),
                Request::Spawn(spawn) => Reply::Spawn(spawn_here(&shared2, spawn).await),
            };
            if let Ok(bytes) = frame::encode(&reply, shared2.config.max_frame) {
                let _ = send.write_all(&bytes).await;
                let _ = send.finish();
            }
        });
    }
}

/// Decides the reply to one request.
fn answer(shared: &Shared, request: &EventRequest) -> EventReply {
    let Some(runtime) = runtime(shared) else {
        return EventReply::Refused(Refusal::NotReady);
    };
    match runtime.deliver(request.target, &request.event) {
        Ok(outputs) => EventReply::Outputs(outputs),
        Err(DaemonError::NotFound(origin)) => {
            let elsewhere = shared
                .directory
                .get(&origin)
                .map(|n| *n)
                .and_then(|node| Some((node, shared.addr_of(node)?)));
            match elsewhere {
                Some((node, addr)) if request.hops < MAX_REDIRECTS => {
                    EventReply::Redirect { node, addr }
                }
                _ => EventReply::Refused(Refusal::NotFound(origin)),
            }
        }
        Err(DaemonError::Duplicate {
            origin_hash,
            sequence,
        }) => EventReply::Refused(Refusal::Duplicate {
            origin_hash,
            sequence,
        }),
        Err(other) => EventReply::Refused(refusal(other)),
    }
}

fn runtime(shared: &Shared) -> Option<crate::compute::DaemonRuntime> {
    shared.handler.load().as_ref()?.runtime()
}

fn refusal(error: DaemonError) -> Refusal {
    match error {
        DaemonError::NotFound(origin) => Refusal::NotFound(origin),
        DaemonError::NotReady => Refusal::NotReady,
        DaemonError::ShuttingDown => Refusal::ShuttingDown,
        DaemonError::CapabilityMismatch { kind, unmet } => {
            Refusal::CapabilityMismatch { kind, unmet }
        }
        other => Refusal::Failed(other.to_string()),
    }
}

/// Spawns a daemon for a peer.
async fn spawn_here(shared: &Shared, request: &SpawnRequest) -> Result<u64, Refusal> {
    let runtime = runtime(shared).ok_or(Refusal::NotReady)?;
    let identity = crate::Identity::from_seed(request.seed);
    let config = crate::compute::DaemonHostConfig {
        max_snapshot_bytes: request.max_snapshot_bytes,
    };
    runtime
        .spawn(&request.kind, identity, config)
        .await
        .map(|handle| handle.origin_hash)
        .map_err(refusal)
}

impl Mesh {
    /// Sends one event request to `node` and waits for its reply.
    ///
    /// Cancel safety: cancelling abandons the request; the remote daemon
    /// may or may not have processed it (a retry is refused as a duplicate
    /// if it did).
    pub(crate) async fn request(
        &self,
        node: NodeId,
        request: &Request,
    ) -> Result<Reply, DialError> {
        let shared = &self.shared;
        let conn = event_link(shared, node).await?;
        let lost = |e: &dyn std::fmt::Display| DialError::Lost {
            peer: node,
            reason: e.to_string(),
        };
        let bytes = frame::encode(request, shared.config.max_frame)
            .map_err(|source| DialError::Frame { peer: node, source })?;
        let result = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
            send.write_all(&bytes).await.map_err(|e| lost(&e))?;
            let _ = send.finish();
            read_frame::<Reply>(&mut recv, shared.config.max_frame, "reply")
                .await
                .map_err(|source| DialError::Frame { peer: node, source })?
                .ok_or_else(|| lost(&"stream closed before the reply"))
        }
        .await;
        if result.is_err() {
            shared
                .event_links
                .remove_if(&node, |_, c| c.stable_id() == conn.stable_id());
        }
        result
    }
}

/// The cached event connection to `node`, dialled on first use.
async fn event_link(shared: &Arc<Shared>, node: NodeId) -> Result<quinn::Connection, DialError> {
    if let Some(conn) = shared.event_links.get(&node) {
        if conn.close_reason().is_none() {
            return Ok(conn.clone());
        }
    }
    let addr = shared.addr_of(node).ok_or(DialError::UnknownNode(node))?;
    let (conn, _) = dial(shared, addr, Some(node), ALPN_EVENTS).await?;
    shared.event_links.insert(node, conn.clone());
    Ok(conn)
}
