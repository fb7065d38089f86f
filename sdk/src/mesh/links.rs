//! The async drivers of connections: dialling, accepting, admission, and the
//! control feed. They move bytes and feed the sans-IO machines; protocol
//! decisions live in [`admission`](super::admission) and in the handlers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;

use super::admission::Role;
use super::admit::{admit, peer_id, tell, told, AdmitFailure};
use super::error::DialError;
use super::feed::{self, Feed, Taken};
use super::frame::{self, FrameError};
use super::node::{close, PeerLink, Shared};
use super::tls;
use super::wire::{Ctrl, SignedRecord, ALPN_CTRL};
use crate::identity::NodeId;

/// Dials `addr` for protocol `alpn` (or, for the control protocol, any of
/// its versions), checks the peer's key (pinned when `expected` is given)
/// and runs admission.
pub(crate) async fn dial(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    expected: Option<NodeId>,
    alpn: &[u8],
) -> Result<(quinn::Connection, NodeId), DialError> {
    let alpns: &[&[u8]] = if alpn == ALPN_CTRL {
        &shared.ctrl_alpns
    } else {
        &[alpn]
    };
    if shared.cancel.is_cancelled() {
        return Err(DialError::Closed);
    }
    let connect_err = |reason: String| DialError::Connect { addr, reason };
    let tls = tls::client_config(&shared.credentials, alpns, expected)
        .map_err(|e| connect_err(e.to_string()))?;
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| connect_err(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let rtt = expected.and_then(|node| shared.redial_rtt(node));
    client.transport_config(super::builder::transport_with(&shared.config, rtt));
    let connecting = shared
        .endpoint
        .connect_with(client, addr, tls::SERVER_NAME)
        .map_err(|e| connect_err(e.to_string()))?;
    let conn = connecting.await.map_err(|e| match e {
        quinn::ConnectionError::ApplicationClosed(close) => DialError::Refused {
            addr,
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        // TLS alert 120: the server offers none of our ALPNs.
        quinn::ConnectionError::ConnectionClosed(close)
            if close.error_code == quinn::TransportErrorCode::crypto(120) =>
        {
            DialError::NotServed {
                addr,
                protocol: String::from_utf8_lossy(alpn).into_owned(),
            }
        }
        other => connect_err(other.to_string()),
    })?;
    let peer = peer_id(&conn).ok_or_else(|| connect_err("peer presented no node key".into()))?;
    let deadline = tokio::time::Instant::now() + shared.config.admission_timeout;
    admit(shared, &conn, Role::Dialer, peer, deadline)
        .await
        .map_err(|e| match e {
            AdmitFailure::Verdict(e) => DialError::Admission(e),
            AdmitFailure::Transport(reason) => DialError::Refused { addr, reason },
        })?;
    super::builder::open_up(&conn, &shared.config);
    Ok((conn, peer))
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

/// Registers the control link to an admitted `peer` (unless its id is
/// already connected from another address: see [`Shared::duplicate_of`]),
/// opens our feed, sends what we know, and starts reading the peer's feed.
pub(crate) async fn start_ctrl(
    shared: &Arc<Shared>,
    conn: quinn::Connection,
    peer: NodeId,
) -> Result<(), DialError> {
    let feed = Arc::new(Feed::default());
    let version = negotiated(&conn)
        .as_deref()
        .and_then(super::wire::ctrl_version);
    let mut records = vec![shared.own_record.clone()];
    records.extend(shared.members.iter().map(|r| r.value().clone()));
    feed.send(Ctrl::Members(records));
    let located: Vec<u64> = shared.local.iter().map(|o| *o).collect();
    if !located.is_empty() {
        feed.send(Ctrl::Located(located));
    }
    let stable_id = conn.stable_id();
    let link = PeerLink {
        conn: conn.clone(),
        feed: Arc::clone(&feed),
        version: version.unwrap_or(1),
        since: std::time::SystemTime::now(),
    };
    // Checked and inserted under the map's lock: of two connections with
    // one id from two addresses, only one is ever listed.
    if let Err(e) = shared.insert_peer(peer, link) {
        tell(&conn, &e);
        return Err(DialError::Admission(e));
    }
    super::builder::open_up(&conn, &shared.config);
    let send = match conn.open_uni().await {
        Ok(send) => send,
        Err(e) => {
            shared.drop_peer(peer, stable_id, super::node::LinkEnd::Lost);
            return Err(match told(shared, &conn, peer) {
                Some(e) => DialError::Admission(e),
                None => DialError::Lost {
                    peer,
                    reason: e.to_string(),
                },
            });
        }
    };
    shared.on_joined(peer, conn.remote_address());
    tracing::debug!(node = %shared.node_id.short(), peer = %peer.short(), "peer admitted");
    let writer = write_feed(shared.config.max_frame, send, feed);
    let reader = read_feed(Arc::clone(shared), conn.clone(), peer);
    let task_shared = Arc::clone(shared);
    shared.tasks.spawn(async move {
        let cancel = task_shared.cancel.clone();
        // Either half ending means the link is dead.
        let left = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            left = reader => left,
            // After our `Leave`, `Mesh::leave` closes the link after a grace.
            written = writer => matches!(written, Written::Left),
        };
        let end = match conn.close_reason() {
            _ if left => super::node::LinkEnd::Left,
            Some(quinn::ConnectionError::ApplicationClosed(c))
                if c.error_code == close::LEAVE.into() || c.error_code == close::NORMAL.into() =>
            {
                super::node::LinkEnd::Left
            }
            Some(quinn::ConnectionError::ApplicationClosed(c))
                if c.error_code == close::RESTART.into() =>
            {
                super::node::LinkEnd::Restarting
            }
            Some(_) => super::node::LinkEnd::Lost,
            None => {
                // A half ended on a live connection (a stuck or finished
                // feed): the link is given up, so close it.
                conn.close(close::PROTOCOL.into(), b"control link ended");
                super::node::LinkEnd::Lost
            }
        };
        task_shared.drop_peer(peer, stable_id, end);
    });
    Ok(())
}

/// How a feed writer ended.
enum Written {
    /// After writing `Leave`.
    Left,
    /// The stream broke, or the peer stopped reading.
    Ended,
}

async fn write_feed(max_frame: usize, mut send: quinn::SendStream, feed: Arc<Feed>) -> Written {
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
                return Written::Ended;
            }
        };
        for msg in msgs.iter().chain(leave.then_some(&Ctrl::Leave)) {
            let Ok(bytes) = frame::encode(msg, max_frame) else {
                tracing::warn!("control message over the frame limit dropped");
                continue;
            };
            if send.write_all(&bytes).await.is_err() {
                return Written::Ended;
            }
        }
        if leave {
            let _ = send.finish();
            return Written::Left;
        }
    }
}

/// Reads the peer's control feed until it ends; returns whether the peer
/// said it leaves.
async fn read_feed(shared: Arc<Shared>, conn: quinn::Connection, peer: NodeId) -> bool {
    let Ok(recv) = conn.accept_uni().await else {
        return false;
    };
    let mut reader = FrameReader::new(recv, shared.config.max_frame);
    loop {
        let msg: Ctrl = match reader.next("control").await {
            Ok(Some(msg)) => msg,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(peer = %peer.short(), error = %e, "control protocol violation");
                conn.close(close::PROTOCOL.into(), e.to_string().as_bytes());
                return false;
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
                return true;
            }
            Ctrl::Moved(moves) => {
                for (origin, node) in moves {
                    if node == shared.node_id || shared.local.contains(&origin) {
                        continue;
                    }
                    // Unless a newer location is already known.
                    match shared.directory.entry(origin) {
                        dashmap::Entry::Occupied(mut known) if *known.get() == peer => {
                            known.insert(node);
                        }
                        dashmap::Entry::Vacant(none) => {
                            none.insert(node);
                        }
                        dashmap::Entry::Occupied(_) => {}
                    }
                }
                shared.bump();
            }
            Ctrl::Restarting => {
                shared.note_restarting(peer, conn.rtt());
                shared.bump();
            }
            Ctrl::Resumed => {
                shared.note_back(peer);
                shared.bump();
            }
        }
    }
}

/// Records the peer's view. Only records signed by their own node are
/// taken, never one of this node, nor the old record of a node that left;
/// the rejoin schedule decides whom to dial.
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
        if !newer || !shared.on_member(&signed.record) {
            continue;
        }
        // Push what changed our view on to the other peers, so that news of
        // a new member reaches everyone (a record is forwarded only when it
        // is new or newer here, which ends the flood).
        for peer in shared.peers.iter() {
            if *peer.key() != from && *peer.key() != node {
                peer.feed.send(Ctrl::Members(vec![signed.clone()]));
            }
        }
        shared.members.insert(node, signed);
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

/// Closes `conn` after a short grace in which queued frames can leave.
pub(crate) async fn flush_then_close(conn: quinn::Connection, code: u32) {
    tokio::time::sleep(Duration::from_millis(20)).await;
    conn.close(code.into(), b"leaving");
}

/// The ALPN a connection negotiated.
pub(crate) fn negotiated(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
}
