//! Messages of the event protocol (`cellmesh/events/1`). Each travels as
//! one frame (see [`frame`](crate::mesh::frame)).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::compute::CausalEvent;
use crate::identity::NodeId;

/// ALPN of the event-delivery protocol.
pub const ALPN_EVENTS: &[u8] = b"cellmesh/events/1";

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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::mesh::frame::{decode_frame, encode};

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame::<EventRequest>(&bytes, 4096, "event");
            let _ = decode_frame::<EventReply>(&bytes, 4096, "reply");
            let _ = decode_frame::<Tagged<Request>>(&bytes, 4096, "request");
            let _ = decode_frame::<Tagged<Reply>>(&bytes, 4096, "reply");
        }

        #[test]
        fn event_request_round_trip(target: u64, origin: u64, seq: u64, payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let req = EventRequest {
                target,
                event: CausalEvent {
                    link: crate::compute::CausalLink { origin_hash: origin, horizon_encoded: 1, sequence: seq, parent_hash: 2 },
                    payload: bytes::Bytes::from(payload),
                    received_at: 3,
                },
                hops: 0,
                forwarded: false,
            };
            let frame = encode(&req, 4096).unwrap();
            let back: EventRequest = decode_frame(&frame, 4096, "event").unwrap();
            prop_assert_eq!(back, req);
        }
    }
}
