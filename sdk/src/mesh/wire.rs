//! Messages of the mesh's control protocol. Each travels as one frame (see
//! [`frame`](super::frame)).

use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::capabilities::CapabilitySet;
use crate::identity::NodeId;
use crate::identity::{EntityId, Keypair};

/// ALPN of the control protocol (membership, directory), version 1.
pub const ALPN_CTRL: &[u8] = b"cellmesh/ctrl/1";

/// ALPN of version 2 of the control protocol: version 1, the restart
/// notices ([`Ctrl::Restarting`], [`Ctrl::Resumed`]) and [`Ctrl::Moved`]. A node offers both
/// and prefers 2, so that a node of the previous build, which offers only
/// 1, still links, and is never sent a message it does not know (it would
/// take it for a protocol violation and close the link).
pub const ALPN_CTRL_2: &[u8] = b"cellmesh/ctrl/2";

/// The control protocol's versions, most preferred first.
pub(crate) const CTRL_ALPNS: [&[u8]; 2] = [ALPN_CTRL_2, ALPN_CTRL];

/// The control protocol version a negotiated ALPN names, if it is one.
pub(crate) fn ctrl_version(alpn: &[u8]) -> Option<u8> {
    match alpn {
        ALPN_CTRL => Some(1),
        ALPN_CTRL_2 => Some(2),
        _ => None,
    }
}

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
    /// (Version 2.) The sender's process is about to be replaced (an
    /// upgrade of its binary): its daemons are frozen for a moment, then
    /// it closes its links with the restart code. Treat it as restarting
    /// from now on.
    Restarting,
    /// (Version 2.) The replacement announced by `Restarting` was called
    /// off: the sender serves on.
    Resumed,
    /// (Version 2.) These daemons moved from the sender to the nodes named
    /// (a migration committed): unlike `Gone`, the receiver never lacks a
    /// location for them while the new node's `Located` is on its way on
    /// another link.
    Moved(Vec<(u64, NodeId)>),
}
