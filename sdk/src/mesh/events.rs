//! The event protocol (`cellmesh/events/1`).
//!
//! Each peer pair shares one connection carrying [`LANES`] long-lived
//! bidirectional streams ("lanes"). A request is a frame `(id, Request)` on
//! the lane its target daemon hashes to; the reply `(id, Reply)` comes back
//! on the same lane, in any order; the client matches replies by id.
//!
//! The server answers events inline, a received batch at a time, with one
//! write for the batch's replies (daemons process synchronously, so a task
//! per event would only add overhead); spawns, which wait on a daemon's
//! ready fence, each get a task. Daemons on different lanes never wait for
//! each other. Writers coalesce queued frames into one write.
//!
//! Backpressure is bounded end to end: a sender waits for one of
//! `MeshConfig::max_concurrent_requests` slots; a server lane whose reply
//! queue is full stops reading, and QUIC flow control then holds the
//! sender's stream.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::error::DialError;
use super::frame;
use super::links::{dial, FrameReader};
use super::node::{close, Mesh, Shared};
use super::node_id::NodeId;
use super::wire::{
    EventRefusal, EventReply, EventRequest, Reply, Request, SpawnRequest, Tagged, ALPN_EVENTS,
};
use crate::compute::migration::gate::Delivery;
use crate::compute::DaemonError;

/// Streams per connection.
pub(crate) const LANES: usize = 4;
/// Queued writes per lane before its producer waits.
const LANE_QUEUE: usize = 256;
/// Redirects a request may follow.
pub(crate) const MAX_REDIRECTS: u8 = 4;

type Pending = Arc<DashMap<u64, oneshot::Sender<Reply>>>;

/// The client side of an event connection.
pub(crate) struct EventLink {
    conn: quinn::Connection,
    lanes: Vec<(mpsc::Sender<Vec<u8>>, Pending)>,
    slots: Arc<Semaphore>,
    next_id: AtomicU64,
    /// Set when a lane's reply reader ends (the connection is unusable).
    closed: Arc<AtomicBool>,
}

impl EventLink {
    async fn open(shared: &Arc<Shared>, conn: quinn::Connection) -> Result<Self, DialError> {
        let mut lanes = Vec::with_capacity(LANES);
        let closed = Arc::new(AtomicBool::new(false));
        for _ in 0..LANES {
            let (send, recv) = conn.open_bi().await.map_err(|e| DialError::Lost {
                peer: shared.node_id,
                reason: e.to_string(),
            })?;
            let (queue, frames) = mpsc::channel(LANE_QUEUE);
            let pending: Pending = Arc::new(DashMap::new());
            shared.tasks.spawn(write_lane(send, frames));
            shared.tasks.spawn(read_replies(
                recv,
                Arc::clone(&pending),
                shared.config.max_frame,
                conn.clone(),
                Arc::clone(&closed),
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
            closed,
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
        // The reader marks the link closed before it drops the waiters, so
        // a waiter inserted after that drop is caught here.
        if self.closed.load(Ordering::Acquire) || queue.send(bytes).await.is_err() {
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
async fn write_lane(mut send: quinn::SendStream, mut frames: mpsc::Receiver<Vec<u8>>) {
    while let Some(mut batch) = frames.recv().await {
        // One yield lets producers woken in the same tick join the batch.
        tokio::task::yield_now().await;
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
    recv: quinn::RecvStream,
    pending: Pending,
    max: usize,
    conn: quinn::Connection,
    closed: Arc<AtomicBool>,
) {
    let mut reader = FrameReader::new(recv, max);
    loop {
        match reader.next::<Tagged<Reply>>("reply").await {
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
    closed.store(true, Ordering::Release);
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
    recv: quinn::RecvStream,
    slots: Arc<Semaphore>,
) {
    let (replies, frames) = mpsc::channel(LANE_QUEUE);
    shared.tasks.spawn(write_lane(send, frames));
    let max = shared.config.max_frame;
    let mut reader = FrameReader::new(recv, max);
    let violation = |e: super::frame::FrameError| {
        tracing::warn!(peer = %peer.short(), error = %e, "event protocol violation");
        conn.close(close::PROTOCOL.into(), e.to_string().as_bytes());
    };
    loop {
        let first: Tagged<Request> = match reader.next("request").await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => return violation(e),
        };
        // Events are answered inline, a whole received batch at a time, with
        // one write for all their replies; spawns wait on a daemon's fence
        // and get a task of their own.
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request.body {
                Request::Event(event) => match answer(&shared, &event) {
                    Answer::Now(reply) => {
                        let tagged = Tagged {
                            id: request.id,
                            body: Reply::Event(reply),
                        };
                        push_reply(&mut batch, &tagged, max);
                    }
                    Answer::Later(delivery) => {
                        // Held at a migration gate: answer when it opens.
                        let shared2 = Arc::clone(&shared);
                        let replies = replies.clone();
                        let id = request.id;
                        shared.tasks.spawn(async move {
                            let outcome = delivery.outcome(event.target).await;
                            let tagged = Tagged {
                                id,
                                body: Reply::Event(reply_for(&shared2, &event, outcome)),
                            };
                            let mut bytes = Vec::new();
                            push_reply(&mut bytes, &tagged, max);
                            let _ = replies.send(bytes).await;
                        });
                    }
                },
                Request::Spawn(spawn) => {
                    let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                        return;
                    };
                    let shared2 = Arc::clone(&shared);
                    let replies = replies.clone();
                    let id = request.id;
                    shared.tasks.spawn(async move {
                        let tagged = Tagged {
                            id,
                            body: Reply::Spawn(spawn_here(&shared2, &spawn).await),
                        };
                        let mut bytes = Vec::new();
                        push_reply(&mut bytes, &tagged, max);
                        let _ = replies.send(bytes).await;
                        drop(slot);
                    });
                }
            }
            if batch.len() >= 256 << 10 {
                break;
            }
            next = match reader.buffered("request") {
                Ok(r) => r,
                Err(e) => {
                    let _ = replies.send(batch).await;
                    return violation(e);
                }
            };
        }
        if !batch.is_empty() && replies.send(batch).await.is_err() {
            return;
        }
    }
}

/// Appends one encoded reply to `out`; a reply over the frame limit is
/// replaced by a refusal saying so, so the sender never waits in vain.
fn push_reply(out: &mut Vec<u8>, reply: &Tagged<Reply>, max: usize) {
    match frame::encode(reply, max) {
        Ok(bytes) => out.extend_from_slice(&bytes),
        Err(e) => {
            let refusal = EventRefusal::Failed(format!("reply not sent: {e}"));
            let body = match reply.body {
                Reply::Event(_) => Reply::Event(EventReply::Refused(refusal)),
                Reply::Spawn(_) => Reply::Spawn(Err(refusal)),
            };
            if let Ok(bytes) = frame::encode(&Tagged { id: reply.id, body }, max) {
                out.extend_from_slice(&bytes);
            }
        }
    }
}

enum Answer {
    Now(EventReply),
    Later(Delivery),
}

/// Decides the reply to one event request, or defers it while the target
/// daemon is held at a migration gate.
fn answer(shared: &Shared, request: &EventRequest) -> Answer {
    let Some(runtime) = runtime(shared) else {
        return Answer::Now(EventReply::Refused(EventRefusal::NotReady));
    };
    match runtime.deliver_or_queue(request.target, &request.event, request.forwarded) {
        Delivery::Done(outcome) => Answer::Now(reply_for(shared, request, outcome)),
        pending @ Delivery::Pending(_) => Answer::Later(pending),
    }
}

/// The reply for a delivery's outcome: outputs, a redirect or a refusal.
fn reply_for(
    shared: &Shared,
    request: &EventRequest,
    outcome: Result<Vec<crate::compute::CausalEvent>, DaemonError>,
) -> EventReply {
    match outcome {
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
                _ => EventReply::Refused(EventRefusal::NotFound(origin)),
            }
        }
        Err(other) => EventReply::Refused(refusal(other)),
    }
}

fn runtime(shared: &Shared) -> Option<crate::compute::DaemonRuntime> {
    shared.handler.load().as_ref()?.runtime()
}

/// How a peer is told that delivering or spawning failed.
pub(crate) fn refusal(error: DaemonError) -> EventRefusal {
    match error {
        DaemonError::NotFound(origin) => EventRefusal::NotFound(origin),
        DaemonError::Duplicate {
            origin_hash,
            sequence,
        } => EventRefusal::Duplicate {
            origin_hash,
            sequence,
        },
        DaemonError::NotReady => EventRefusal::NotReady,
        DaemonError::ShuttingDown => EventRefusal::ShuttingDown,
        DaemonError::CapabilityMismatch { kind, unmet } => {
            EventRefusal::CapabilityMismatch { kind, unmet }
        }
        DaemonError::Busy { origin_hash, limit } => EventRefusal::Busy {
            origin_hash,
            limit: limit as u64,
        },
        DaemonError::HostedElsewhere { origin_hash, node } => {
            EventRefusal::HostedElsewhere { origin_hash, node }
        }
        other => EventRefusal::Failed(other.to_string()),
    }
}

/// Spawns a daemon for a peer.
async fn spawn_here(shared: &Shared, request: &SpawnRequest) -> Result<u64, EventRefusal> {
    let runtime = runtime(shared).ok_or(EventRefusal::NotReady)?;
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
        if result.is_err() && link.closed.load(Ordering::Acquire) {
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
            .filter(|l| !l.closed.load(Ordering::Acquire))
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
