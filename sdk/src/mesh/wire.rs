//! Messages of the mesh's control protocol. Each travels as one frame (see
//! [`frame`](super::frame)).

use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::capabilities::CapabilitySet;
use crate::identity::NodeId;
use crate::identity::{EntityId, Keypair};

/// ALPN of the control protocol (membership, directory).
pub const ALPN_CTRL: &[u8] = b"cellmesh/ctrl/1";

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
