//! The async drivers of connections: dialling, accepting, admission, and the
//! control feed. They move bytes and feed the sans-IO machines; protocol
//! decisions live in [`admission`](super::admission) and in the handlers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{HandshakeData, QuicClientConfig};
use rustls::pki_types::CertificateDer;

use super::admission::{Admission, AdmissionEvent, Role, EXPORTER_LABEL, PROOF_LEN};
use super::error::DialError;
use super::feed::{self, Feed, Taken};
use super::frame::{self, FrameError};
use super::node::{close, PeerLink, Shared};
use super::node_id::NodeId;
use super::tls::{self, node_id_of};
use super::wire::{Ctrl, SignedRecord, ALPN_CTRL, ALPN_EVENTS};

/// Dials `addr` for protocol `alpn`, checks the peer's key (pinned when
/// `expected` is given) and runs admission.
pub(crate) async fn dial(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    expected: Option<NodeId>,
    alpn: &[u8],
) -> Result<(quinn::Connection, NodeId), DialError> {
    if shared.cancel.is_cancelled() {
        return Err(DialError::Closed);
    }
    let connect_err = |reason: String| DialError::Connect { addr, reason };
    let tls = tls::client_config(&shared.credentials, alpn, expected)
        .map_err(|e| connect_err(e.to_string()))?;
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| connect_err(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(super::builder::transport(&shared.config));
    let connecting = shared
        .endpoint
        .connect_with(client, addr, tls::SERVER_NAME)
        .map_err(|e| connect_err(e.to_string()))?;
    let conn = connecting.await.map_err(|e| match e {
        quinn::ConnectionError::ApplicationClosed(close) => DialError::Refused {
            addr,
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        other => connect_err(other.to_string()),
    })?;
    let peer = peer_id(&conn).ok_or_else(|| connect_err("peer presented no node key".into()))?;
    admit(shared, &conn, Role::Dialer, peer)
        .await
        .map_err(|e| match e {
            AdmitFailure::Verdict(e) => DialError::Admission(e),
            AdmitFailure::Transport(reason) => DialError::Refused { addr, reason },
        })?;
    Ok((conn, peer))
}

/// The peer's node id, from the certificate TLS verified.
fn peer_id(conn: &quinn::Connection) -> Option<NodeId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    node_id_of(certs.first()?).ok()
}

enum AdmitFailure {
    Verdict(super::admission::AdmissionError),
    Transport(String),
}

/// Runs the admission exchange on a fresh bidirectional stream.
async fn admit(
    shared: &Shared,
    conn: &quinn::Connection,
    role: Role,
    peer: NodeId,
) -> Result<(), AdmitFailure> {
    let transport = |e: &dyn std::fmt::Display| AdmitFailure::Transport(e.to_string());
    let mut exporter = [0u8; 32];
    conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .map_err(|_| AdmitFailure::Transport("TLS exporter unavailable".into()))?;
    let mut machine = Admission::new(
        role,
        shared.psk.bytes(),
        shared.node_id,
        peer,
        &exporter,
        Instant::now(),
        shared.config.admission_timeout,
    );
    let ours = machine.poll_transmit();
    let deadline = machine
        .poll_timeout()
        .map(tokio::time::Instant::from_std)
        .unwrap_or_else(tokio::time::Instant::now);
    let exchange = async {
        let (mut send, mut recv) = match role {
            Role::Dialer => conn.open_bi().await.map_err(|e| transport(&e))?,
            Role::Acceptor => conn.accept_bi().await.map_err(|e| transport(&e))?,
        };
        if let Some(proof) = ours {
            send.write_all(&proof).await.map_err(|e| transport(&e))?;
            let _ = send.finish();
        }
        let mut theirs = [0u8; PROOF_LEN];
        recv.read_exact(&mut theirs)
            .await
            .map_err(|e| transport(&e))?;
        Ok::<_, AdmitFailure>(theirs)
    };
    tokio::select! {
        proof = exchange => {
            let proof = match proof {
                Ok(proof) => proof,
                Err(e) => {
                    conn.close(close::ADMISSION.into(), b"admission failed");
                    return Err(e);
                }
            };
            machine.handle_proof(Instant::now(), &proof);
        }
        () = tokio::time::sleep_until(deadline) => machine.handle_timeout(Instant::now()),
    }
    match machine.poll_event() {
        Some(AdmissionEvent::Admitted(_)) => Ok(()),
        Some(AdmissionEvent::Rejected(e)) => {
            conn.close(close::ADMISSION.into(), e.to_string().as_bytes());
            Err(AdmitFailure::Verdict(e))
        }
        None => {
            conn.close(close::ADMISSION.into(), b"admission incomplete");
            Err(AdmitFailure::Transport("admission incomplete".into()))
        }
    }
}

/// Dials a control link and starts its feed.
pub(crate) async fn dial_ctrl(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    expected: Option<NodeId>,
) -> Result<NodeId, DialError> {
    let (conn, peer) = dial(shared, addr, expected, ALPN_CTRL).await?;
    start_ctrl(shared, conn, peer).await?;
    Ok(peer)
}

/// Opens our feed to `peer`, registers the link, sends what we know, and
/// starts reading the peer's feed.
async fn start_ctrl(
    shared: &Arc<Shared>,
    conn: quinn::Connection,
    peer: NodeId,
) -> Result<(), DialError> {
    let lost = |e: &dyn std::fmt::Display| DialError::Lost {
        peer,
        reason: e.to_string(),
    };
    let send = conn.open_uni().await.map_err(|e| lost(&e))?;
    let feed = Arc::new(Feed::default());
    let mut records = vec![shared.own_record.clone()];
    records.extend(shared.members.iter().map(|r| r.value().clone()));
    feed.send(Ctrl::Members(records));
    let located: Vec<u64> = shared.local.iter().map(|o| *o).collect();
    if !located.is_empty() {
        feed.send(Ctrl::Located(located));
    }
    let stable_id = conn.stable_id();
    shared.peers.insert(
        peer,
        PeerLink {
            conn: conn.clone(),
            feed: Arc::clone(&feed),
        },
    );
    shared.bump();
    tracing::debug!(node = %shared.node_id.short(), peer = %peer.short(), "peer admitted");
    let writer = write_feed(shared.config.max_frame, send, feed);
    let reader = read_feed(Arc::clone(shared), conn.clone(), peer);
    let task_shared = Arc::clone(shared);
    shared.tasks.spawn(async move {
        let cancel = task_shared.cancel.clone();
        // Either half ending means the link is dead.
        tokio::select! {
            biased;
            () = cancel.cancelled() => {}
            () = reader => {}
            () = writer => {}
        }
        task_shared.drop_peer(peer, stable_id);
    });
    Ok(())
}

async fn write_feed(max_frame: usize, mut send: quinn::SendStream, feed: Arc<Feed>) {
    // A varint origin takes at most 10 bytes: whole messages stay below
    // the frame limit.
    let max_origins = (max_frame / 16).max(1);
    loop {
        let (msgs, leave) = match feed.next(max_origins).await {
            Taken::Send(msgs) => (msgs, false),
            Taken::Leave(msgs) => (msgs, true),
            Taken::Stuck => {
                tracing::warn!(
                    pending = feed::MAX_PENDING,
                    "peer stopped reading its control feed; link given up"
                );
                return;
            }
        };
        for msg in msgs.iter().chain(leave.then_some(&Ctrl::Leave)) {
            let Ok(bytes) = frame::encode(msg, max_frame) else {
                tracing::warn!("control message over the frame limit dropped");
                continue;
            };
            if send.write_all(&bytes).await.is_err() {
                return;
            }
        }
        if leave {
            let _ = send.finish();
            return;
        }
    }
}

async fn read_feed(shared: Arc<Shared>, conn: quinn::Connection, peer: NodeId) {
    let Ok(recv) = conn.accept_uni().await else {
        return;
    };
    let mut reader = FrameReader::new(recv, shared.config.max_frame);
    loop {
        let msg: Ctrl = match reader.next("control").await {
            Ok(Some(msg)) => msg,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(peer = %peer.short(), error = %e, "control protocol violation");
                conn.close(close::PROTOCOL.into(), e.to_string().as_bytes());
                return;
            }
        };
        match msg {
            Ctrl::Members(records) => learn_members(&shared, peer, records),
            Ctrl::Located(origins) => {
                for origin in origins {
                    if !shared.local.contains(&origin) {
                        shared.directory.insert(origin, peer);
                    }
                }
                shared.bump();
            }
            Ctrl::Gone(origins) => {
                for origin in origins {
                    shared.directory.remove_if(&origin, |_, node| *node == peer);
                }
                shared.bump();
            }
            Ctrl::Leave => {
                conn.close(close::LEAVE.into(), b"peer left");
                return;
            }
        }
    }
}

/// Records the peer's view and dials members we do not know yet. Only
/// records signed by their own node are taken.
fn learn_members(shared: &Arc<Shared>, from: NodeId, records: Vec<SignedRecord>) {
    for signed in records {
        let node = signed.record.node;
        if node == shared.node_id || !signed.verify() {
            continue;
        }
        let newer = shared
            .members
            .get(&node)
            .is_none_or(|known| known.record.incarnation < signed.record.incarnation);
        if !newer {
            continue;
        }
        let addr = signed.record.addr;
        // Push what changed our view on to the other peers, so that news of
        // a new member reaches everyone (a record is forwarded only when it
        // is new or newer here, which ends the flood).
        for peer in shared.peers.iter() {
            if *peer.key() != from && *peer.key() != node {
                peer.feed.send(Ctrl::Members(vec![signed.clone()]));
            }
        }
        shared.members.insert(node, signed);
        if node != from && !shared.peers.contains_key(&node) && shared.node_id < node {
            // The smaller id dials, so that two nodes learning of each other
            // at once open one link, not two.
            let shared2 = Arc::clone(shared);
            shared.tasks.spawn(async move {
                if let Err(e) = dial_ctrl(&shared2, addr, Some(node)).await {
                    tracing::debug!(peer = %node.short(), error = %e, "discovered member unreachable");
                }
            });
        }
    }
    shared.bump();
}

/// Reads frames from a stream through a [`frame::FrameBuf`], a chunk at a
/// time, so many small frames cost one read.
pub(crate) struct FrameReader {
    recv: quinn::RecvStream,
    buf: frame::FrameBuf,
    /// A large frame being received as the stream's own chunks.
    direct: Option<Direct>,
    /// Bytes read from the stream so far, whole frames or not.
    received: u64,
}

/// The pieces of a large frame received so far (kept here, not in the
/// future, so a cancelled read loses nothing).
struct Direct {
    len: usize,
    have: usize,
    parts: Vec<bytes::Bytes>,
}

impl FrameReader {
    pub(crate) fn new(recv: quinn::RecvStream, max: usize) -> Self {
        Self {
            recv,
            buf: frame::FrameBuf::new(max),
            direct: None,
            received: 0,
        }
    }

    /// Bytes read from the stream so far, frames complete or not: a peer
    /// whose large frame is still arriving is alive.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// The next frame: `Ok(None)` when the stream ends cleanly (or is
    /// reset) between frames.
    pub(crate) async fn next<T: serde::de::DeserializeOwned>(
        &mut self,
        what: &'static str,
    ) -> Result<Option<T>, FrameError> {
        loop {
            if let Some(message) = self.buf.next(what)? {
                return Ok(Some(message));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Reads what the stream has into the buffer: `Ok(false)` when it ended
    /// (or was reset) between frames, an error when it ended mid-frame.
    /// Cancel safe.
    async fn fill(&mut self) -> Result<bool, FrameError> {
        match self.recv.read_chunk(256 << 10, true).await {
            Ok(Some(chunk)) => {
                self.received += chunk.bytes.len() as u64;
                self.buf.push(&chunk.bytes);
                Ok(true)
            }
            Ok(None) if self.buf.is_mid_frame() => Err(FrameError::Truncated("frame")),
            Ok(None) | Err(_) => Ok(false),
        }
    }

    /// The next frame's body as the pieces it arrived in. A frame whose
    /// body is at least `direct_min` bytes is not reassembled: once its
    /// first 64 body bytes are buffered, the rest is handed on as the
    /// stream's own chunks, without a copy. Smaller frames come whole.
    /// `Ok(None)` when the stream ends cleanly between frames.
    ///
    /// Cancel safe: a frame's progress is kept in the reader.
    pub(crate) async fn next_body_parts(
        &mut self,
        direct_min: usize,
    ) -> Result<Option<Vec<bytes::Bytes>>, FrameError> {
        loop {
            if let Some(direct) = &mut self.direct {
                if direct.have >= direct.len {
                    let done = self.direct.take().map(|d| d.parts);
                    return Ok(done);
                }
                // Cancel safe: read_chunk loses nothing when dropped, and
                // what arrived is already in `direct`.
                match self.recv.read_chunk(direct.len - direct.have, true).await {
                    Ok(Some(chunk)) => {
                        self.received += chunk.bytes.len() as u64;
                        direct.have += chunk.bytes.len();
                        direct.parts.push(chunk.bytes);
                    }
                    Ok(None) | Err(_) => {
                        self.direct = None;
                        return Err(FrameError::Truncated("frame"));
                    }
                }
                continue;
            }
            if let Some(body) = self.buf.next_body()? {
                return Ok(Some(vec![body]));
            }
            if let Some(len) = self.buf.announced()? {
                if len >= direct_min && self.buf.buffered() >= 4 + 64 {
                    let first = self.buf.take_partial_body();
                    self.direct = Some(Direct {
                        len,
                        have: first.len(),
                        parts: vec![first],
                    });
                    continue;
                }
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// A frame already received, without waiting for more bytes.
    pub(crate) fn buffered<T: serde::de::DeserializeOwned>(
        &mut self,
        what: &'static str,
    ) -> Result<Option<T>, FrameError> {
        self.buf.next(what)
    }
}

/// Accepts connections until the node is cancelled.
pub(crate) async fn accept_loop(shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            biased;
            () = shared.cancel.cancelled() => return,
            incoming = shared.endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { return };
        let shared2 = Arc::clone(&shared);
        shared.tasks.spawn(async move {
            if let Err(e) = handle_incoming(&shared2, incoming).await {
                tracing::debug!(node = %shared2.node_id.short(), error = %e, "inbound connection refused");
            }
        });
    }
}

async fn handle_incoming(shared: &Arc<Shared>, incoming: quinn::Incoming) -> Result<(), String> {
    let conn = incoming.await.map_err(|e| e.to_string())?;
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .unwrap_or_default();
    let Some(peer) = peer_id(&conn) else {
        conn.close(close::ADMISSION.into(), b"no node key");
        return Err("peer presented no node key".into());
    };
    if let Err(e) = admit(shared, &conn, Role::Acceptor, peer).await {
        shared
            .admission_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(match e {
            AdmitFailure::Verdict(e) => e.to_string(),
            AdmitFailure::Transport(e) => e,
        });
    }
    match alpn.as_slice() {
        ALPN_CTRL => start_ctrl(shared, conn, peer)
            .await
            .map_err(|e| e.to_string()),
        ALPN_EVENTS => {
            super::events::serve(Arc::clone(shared), conn, peer).await;
            Ok(())
        }
        crate::compute::migration::wire::ALPN_MIGRATE => {
            super::migrate_link::serve(Arc::clone(shared), conn, peer).await;
            Ok(())
        }
        other => {
            conn.close(close::PROTOCOL.into(), b"unknown protocol");
            Err(format!("unknown ALPN {:?}", String::from_utf8_lossy(other)))
        }
    }
}

/// Closes `conn` after a short grace in which queued frames can leave.
pub(crate) async fn flush_then_close(conn: quinn::Connection, code: u32) {
    tokio::time::sleep(Duration::from_millis(20)).await;
    conn.close(code.into(), b"leaving");
}
