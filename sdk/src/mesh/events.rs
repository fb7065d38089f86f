//! The event protocol (`cellmesh/events/1`).
//!
//! Each peer pair shares one connection carrying [`LANES`] long-lived
//! bidirectional streams ("lanes"). A request is a frame `(id, Request)` on
//! the lane its target daemon hashes to; the reply `(id, Reply)` comes back
//! on the same lane, in any order. The server handles each request in its
//! own task, so a slow daemon never holds up replies for other daemons; the
//! client matches replies by id. Writers coalesce queued frames into one
//! write. In-flight requests are bounded on both ends by
//! `MeshConfig::max_concurrent_requests`: a sender waits for a slot, and a
//! server stops reading (QUIC flow control then pushes back) when its slots
//! are taken.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::error::DialError;
use super::frame;
use super::links::{dial, read_frame};
use super::node::{close, Mesh, Shared};
use super::node_id::NodeId;
use super::wire::{EventReply, EventRequest, Refusal, Reply, Request, SpawnRequest, ALPN_EVENTS};
use crate::compute::DaemonError;

/// Streams per connection.
pub(crate) const LANES: usize = 4;
/// Redirects a request may follow.
pub(crate) const MAX_REDIRECTS: u8 = 4;

/// A frame on a lane: a request or reply with its id.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Tagged<T> {
    pub(crate) id: u64,
    pub(crate) body: T,
}

type Pending = Arc<DashMap<u64, oneshot::Sender<Reply>>>;

/// The client side of an event connection.
pub(crate) struct EventLink {
    conn: quinn::Connection,
    lanes: Vec<(mpsc::UnboundedSender<Vec<u8>>, Pending)>,
    slots: Arc<Semaphore>,
    next_id: AtomicU64,
}

impl EventLink {
    async fn open(shared: &Arc<Shared>, conn: quinn::Connection) -> Result<Self, DialError> {
        let mut lanes = Vec::with_capacity(LANES);
        for _ in 0..LANES {
            let (send, recv) = conn.open_bi().await.map_err(|e| DialError::Lost {
                peer: shared.node_id,
                reason: e.to_string(),
            })?;
            let (queue, frames) = mpsc::unbounded_channel();
            let pending: Pending = Arc::new(DashMap::new());
            shared.tasks.spawn(write_lane(send, frames));
            shared.tasks.spawn(read_replies(
                recv,
                Arc::clone(&pending),
                shared.config.max_frame,
                conn.clone(),
            ));
            lanes.push((queue, pending));
        }
        Ok(Self {
            conn,
            lanes,
            slots: Arc::new(Semaphore::new(
                shared.config.max_concurrent_requests as usize,
            )),
            next_id: AtomicU64::new(1),
        })
    }

    async fn call(
        &self,
        peer: NodeId,
        lane: usize,
        request: &Request,
        max: usize,
    ) -> Result<Reply, DialError> {
        let lost = |reason: &str| DialError::Lost {
            peer,
            reason: reason.to_owned(),
        };
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| lost("link closed"))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = frame::encode(&Tagged { id, body: request }, max)
            .map_err(|source| DialError::Frame { peer, source })?;
        let (queue, pending) = &self.lanes[lane % LANES];
        let (tx, rx) = oneshot::channel();
        pending.insert(id, tx);
        if queue.send(bytes).is_err() {
            pending.remove(&id);
            return Err(lost("lane closed"));
        }
        rx.await.map_err(|_| {
            lost(
                &self
                    .conn
                    .close_reason()
                    .map_or_else(|| "lane closed".to_owned(), |r| r.to_string()),
            )
        })
    }
}

/// Writes queued frames, coalescing whatever is queued into one write.
async fn write_lane(mut send: quinn::SendStream, mut frames: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(mut batch) = frames.recv().await {
        while let Ok(more) = frames.try_recv() {
            batch.extend_from_slice(&more);
            if batch.len() > 256 << 10 {
                break;
            }
        }
        if send.write_all(&batch).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

/// Hands each reply to its waiting request; when the lane ends, the waiters
/// still pending learn it (their senders are dropped).
async fn read_replies(
    mut recv: quinn::RecvStream,
    pending: Pending,
    max: usize,
    conn: quinn::Connection,
) {
    loop {
        match read_frame::<Tagged<Reply>>(&mut recv, max, "reply").await {
            Ok(Some(reply)) => {
                if let Some((_, waiter)) = pending.remove(&reply.id) {
                    let _ = waiter.send(reply.body);
                }
            }
            Ok(None) => break,
            Err(e) => {
                conn.close(close::PROTOCOL.into(), e.to_string().as_bytes());
                break;
            }
        }
    }
    pending.clear();
}

/// Serves lanes on an admitted connection until it closes.
pub(crate) async fn serve(shared: Arc<Shared>, conn: quinn::Connection, peer: NodeId) {
    let slots = Arc::new(Semaphore::new(
        shared.config.max_concurrent_requests as usize,
    ));
    loop {
        let stream = tokio::select! {
            biased;
            () = shared.cancel.cancelled() => return,
            s = conn.accept_bi() => s,
        };
        let Ok((send, recv)) = stream else { return };
        shared.tasks.spawn(serve_lane(
            Arc::clone(&shared),
            conn.clone(),
            peer,
            send,
            recv,
            Arc::clone(&slots),
        ));
    }
}

async fn serve_lane(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    peer: NodeId,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    slots: Arc<Semaphore>,
) {
    let (replies, frames) = mpsc::unbounded_channel();
    shared.tasks.spawn(write_lane(send, frames));
    let max = shared.config.max_frame;
    loop {
        let request: Tagged<Request> = match read_frame(&mut recv, max, "request").await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(peer = %peer.short(), error = %e, "event protocol violation");
                conn.close(close::PROTOCOL.into(), e.to_string().as_bytes());
                return;
            }
        };
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let shared2 = Arc::clone(&shared);
        let replies = replies.clone();
        shared.tasks.spawn(async move {
            let body = match &request.body {
                Request::Event(event) => Reply::Event(answer(&shared2, event)),
                Request::Spawn(spawn) => Reply::Spawn(spawn_here(&shared2, spawn).await),
            };
            let tagged = Tagged {
                id: request.id,
                body,
            };
            match frame::encode(&tagged, max) {
                Ok(bytes) => {
                    let _ = replies.send(bytes);
                }
                Err(e) => tracing::warn!(error = %e, "reply over the frame limit dropped"),
            }
            drop(slot);
        });
    }
}

/// Decides the reply to one event request.
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
    /// Sends one request to `node` and waits for its reply. `shard` picks
    /// the lane (requests for one daemon use one lane).
    ///
    /// Cancel safety: cancelling abandons the request; the remote daemon
    /// may or may not have processed it (a retry is refused as a duplicate
    /// if it did).
    pub(crate) async fn request(
        &self,
        node: NodeId,
        shard: u64,
        request: &Request,
    ) -> Result<Reply, DialError> {
        let shared = &self.shared;
        let link = event_link(shared, node).await?;
        let result = link
            .call(
                node,
                (shard % LANES as u64) as usize,
                request,
                shared.config.max_frame,
            )
            .await;
        if result.is_err() && link.conn.close_reason().is_some() {
            shared
                .event_links
                .remove_if(&node, |_, l| Arc::ptr_eq(l, &link));
        }
        result
    }
}

/// The event link to `node`, dialled once on first use (concurrent first
/// users wait for the same dial).
async fn event_link(shared: &Arc<Shared>, node: NodeId) -> Result<Arc<EventLink>, DialError> {
    let cached = |shared: &Shared| {
        shared
            .event_links
            .get(&node)
            .filter(|l| l.conn.close_reason().is_none())
            .map(|l| Arc::clone(&l))
    };
    if let Some(link) = cached(shared) {
        return Ok(link);
    }
    let gate = Arc::clone(shared.event_dials.entry(node).or_default().value());
    let _turn = gate.lock().await;
    if let Some(link) = cached(shared) {
        return Ok(link);
    }
    let addr = shared.addr_of(node).ok_or(DialError::UnknownNode(node))?;
    let (conn, _) = dial(shared, addr, Some(node), ALPN_EVENTS).await?;
    let link = Arc::new(EventLink::open(shared, conn).await?);
    shared.event_links.insert(node, Arc::clone(&link));
    Ok(link)
}
