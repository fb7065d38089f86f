//! The client side of the event protocol.
//!
//! Each peer pair shares one connection carrying [`LANES`] long-lived
//! bidirectional streams ("lanes"). A request is a frame `(id, Request)` on
//! the lane its target daemon hashes to; the reply `(id, Reply)` comes back
//! on the same lane, in any order; the client matches replies by id.
//! Writers coalesce queued frames into one write.
//!
//! Backpressure is bounded end to end: a sender waits for one of
//! `MeshConfig::max_concurrent_requests` slots; a server lane whose reply
//! queue is full stops reading, and QUIC flow control then holds the
//! sender's stream.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::wire::{Reply, Request, Tagged, ALPN_EVENTS};
use super::Binding;
use crate::mesh::{close, frame, DialError, FrameReader, Mesh};
use crate::NodeId;

/// Streams per connection.
pub(super) const LANES: usize = 4;
/// Queued writes per lane before its producer waits.
pub(super) const LANE_QUEUE: usize = 256;

type Pending = Arc<DashMap<u64, oneshot::Sender<Reply>>>;

/// The client side of an event connection.
pub(super) struct EventLink {
    conn: quinn::Connection,
    lanes: Vec<(mpsc::Sender<Vec<u8>>, Pending)>,
    slots: Arc<Semaphore>,
    next_id: AtomicU64,
    /// Set when a lane's reply reader ends (the connection is unusable).
    closed: Arc<AtomicBool>,
}

impl EventLink {
    async fn open(mesh: &Mesh, peer: NodeId, conn: quinn::Connection) -> Result<Self, DialError> {
        let mut lanes = Vec::with_capacity(LANES);
        let closed = Arc::new(AtomicBool::new(false));
        let max_frame = mesh.config().max_frame;
        for _ in 0..LANES {
            let (send, recv) = conn.open_bi().await.map_err(|e| {
                mesh.forget_connection(peer, ALPN_EVENTS, &conn);
                DialError::Lost {
                    peer,
                    reason: e.to_string(),
                }
            })?;
            let (queue, frames) = mpsc::channel(LANE_QUEUE);
            let pending: Pending = Arc::new(DashMap::new());
            mesh.spawn(write_lane(send, frames));
            mesh.spawn(read_replies(
                recv,
                Arc::clone(&pending),
                max_frame,
                conn.clone(),
                Arc::clone(&closed),
            ));
            lanes.push((queue, pending));
        }
        Ok(Self {
            conn,
            lanes,
            slots: Arc::new(Semaphore::new(
                mesh.config().max_concurrent_requests as usize,
            )),
            next_id: AtomicU64::new(1),
            closed,
        })
    }

    /// Whether requests can still go out on this link: its lanes are up
    /// and its connection is the one the mesh holds for the peer (a peer
    /// that dropped out is dialled afresh).
    fn usable(&self, mesh: &Mesh, peer: NodeId) -> bool {
        !self.closed.load(Ordering::Acquire)
            && mesh
                .pooled(peer, ALPN_EVENTS)
                .is_some_and(|c| c.stable_id() == self.conn.stable_id())
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

impl Binding {
    /// Sends one request to `node` and waits for its reply. `shard` picks
    /// the lane (requests for one daemon use one lane).
    ///
    /// Cancel safety: cancelling abandons the request; the remote daemon
    /// may or may not have processed it (a retry is refused as a duplicate
    /// if it did).
    pub(crate) async fn request(
        &self,
        mesh: &Mesh,
        node: NodeId,
        shard: u64,
        request: &Request,
    ) -> Result<Reply, DialError> {
        let link = self
            .links
            .get_or_open(&node, |l| l.usable(mesh, node), async {
                let conn = mesh.connection(node, ALPN_EVENTS).await?;
                Ok::<_, DialError>(Arc::new(EventLink::open(mesh, node, conn).await?))
            })
            .await?;
        let max = mesh.config().max_frame;
        let result = link
            .call(node, (shard % LANES as u64) as usize, request, max)
            .await;
        if result.is_err() && link.closed.load(Ordering::Acquire) {
            self.links.remove_if(&node, |l| Arc::ptr_eq(l, &link));
            mesh.forget_connection(node, ALPN_EVENTS, &link.conn);
        }
        result
    }
}

/// Writes queued frames, coalescing whatever is queued into one write.
pub(super) async fn write_lane(mut send: quinn::SendStream, mut frames: mpsc::Receiver<Vec<u8>>) {
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
