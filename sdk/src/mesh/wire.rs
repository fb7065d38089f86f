//! Messages of the mesh protocols. Each travels as one frame (see
//! [`frame`](super::frame)).

use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::node_id::NodeId;
use crate::capabilities::CapabilitySet;
use crate::compute::CausalEvent;
use crate::identity::{EntityId, Keypair};

/// ALPN of the control protocol (membership, directory).
pub const ALPN_CTRL: &[u8] = b"cellmesh/ctrl/1";
/// ALPN of the event-delivery protocol.
pub const ALPN_EVENTS: &[u8] = b"cellmesh/events/1";

const RECORD_TAG: &[u8] = b"cellmesh/member/v1";

/// What a node says about itself, signed by its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The node.
    pub node: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it offers.
    pub capabilities: CapabilitySet,
    /// Grows every time the node restarts or changes its record; a higher
    /// incarnation replaces a lower one.
    pub incarnation: u64,
}

/// A [`MemberRecord`] with the node's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRecord {
    /// The record.
    pub record: MemberRecord,
    signature: Bytes,
}

impl SignedRecord {
    pub(crate) fn sign(record: MemberRecord, keypair: &Keypair) -> Self {
        let signature = keypair.sign(&record_message(&record));
        Self {
            record,
            signature: Bytes::copy_from_slice(&signature),
        }
    }

    /// Whether the signature is the record's node's.
    pub fn verify(&self) -> bool {
        let Ok(signature) = <[u8; 64]>::try_from(&self.signature[..]) else {
            return false;
        };
        let Ok(entity) = EntityId::from_bytes(*self.record.node.as_bytes()) else {
            return false;
        };
        entity.verify(&record_message(&self.record), &signature)
    }
}

fn record_message(record: &MemberRecord) -> Vec<u8> {
    // Encoding a plain struct into a Vec cannot fail.
    let body = postcard::to_stdvec(record).unwrap_or_default();
    let mut message = RECORD_TAG.to_vec();
    message.extend_from_slice(blake3::hash(&body).as_bytes());
    message
}

/// Control-protocol messages, sent in order on one stream per direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ctrl {
    /// Every record the sender knows, its own first.
    Members(Vec<SignedRecord>),
    /// These daemons now live on the sender.
    Located(Vec<u64>),
    /// These daemons no longer live on the sender.
    Gone(Vec<u64>),
    /// The sender leaves the mesh.
    Leave,
}

/// A request on the event protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Deliver an event.
    Event(EventRequest),
    /// Spawn a daemon here.
    Spawn(SpawnRequest),
}

/// The reply to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Answer to [`Request::Event`].
    Event(EventReply),
    /// Answer to [`Request::Spawn`]: the daemon's origin hash, or why not.
    Spawn(Result<u64, EventRefusal>),
}

/// Spawn a daemon of `kind` under the identity with secret `seed`. The seed
/// travels only inside the TLS session of an admitted peer; it is zeroized
/// when the request is dropped and never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnRequest {
    /// The daemon kind (a factory must be registered on the target).
    pub kind: String,
    /// The identity's secret seed.
    pub seed: [u8; 32],
    /// The daemon's `max_snapshot_bytes`.
    pub max_snapshot_bytes: u64,
}

impl Drop for SpawnRequest {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.seed);
    }
}

impl std::fmt::Debug for SpawnRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpawnRequest")
            .field("kind", &self.kind)
            .field("seed", &"<redacted>")
            .finish()
    }
}

/// Deliver `event` to daemon `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRequest {
    /// The daemon's origin hash.
    pub target: u64,
    /// The event.
    pub event: CausalEvent,
    /// Redirects followed so far.
    pub hops: u8,
    /// Set by a daemon's former owner forwarding an event it queued during
    /// a migration: it goes ahead of events sent to the new owner directly.
    pub forwarded: bool,
}

/// The answer to an [`EventRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventReply {
    /// The daemon's outputs.
    Outputs(Vec<CausalEvent>),
    /// The daemon is not here; the receiver believes it lives on `node`.
    Redirect {
        /// Where it lives.
        node: NodeId,
        /// That node's address.
        addr: SocketAddr,
    },
    /// Refused.
    Refused(EventRefusal),
}

/// Why a remote node refused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventRefusal {
    /// No such daemon there, and no idea where it is.
    NotFound(u64),
    /// Already accepted.
    Duplicate {
        /// Event origin.
        origin_hash: u64,
        /// Refused sequence.
        sequence: u64,
    },
    /// The remote runtime is not started.
    NotReady,
    /// The remote runtime is shutting down.
    ShuttingDown,
    /// The daemon (or the spawn) failed; the text says which and why.
    Failed(String),
    /// The daemon is migrating and its gate is full.
    Busy {
        /// The daemon.
        origin_hash: u64,
        /// The most events its gate holds.
        limit: u64,
    },
    /// The identity runs on another node.
    HostedElsewhere {
        /// The daemon.
        origin_hash: u64,
        /// Where it runs.
        node: NodeId,
    },
    /// The target node cannot host the daemon's requirements.
    CapabilityMismatch {
        /// The daemon kind.
        kind: String,
        /// The first unmet requirement.
        unmet: String,
    },
}

/// A frame on an event lane: a [`Request`] or [`Reply`] with the id that
/// pairs them (replies may come back in any order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tagged<T> {
    /// Chosen by the requester, unique per connection.
    pub id: u64,
    /// The message.
    pub body: T,
}
