//! Errors of mesh operations.

use super::admission::AdmissionError;
use super::frame::FrameError;
use super::tls::TlsError;
use crate::identity::NodeId;

/// Why a mesh node could not be configured or built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The bind address does not parse as `ip:port`.
    #[error("invalid mesh address {addr:?}: {reason}")]
    InvalidAddress {
        /// What was given.
        addr: String,
        /// Why it was refused.
        reason: String,
    },
    /// The pre-shared key is all zeros: almost certainly unset.
    #[error("the mesh pre-shared key is all zeros; generate 32 random bytes")]
    WeakPsk,
    /// The UDP socket could not be bound.
    #[error("cannot bind the mesh endpoint on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS credentials could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The transport settings are inconsistent.
    #[error("invalid mesh configuration: {0}")]
    InvalidConfig(String),
}

/// Why connecting to (or talking with) a peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The QUIC connection could not be set up.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address dialled.
        addr: std::net::SocketAddr,
        /// The transport's complaint.
        reason: String,
    },
    /// The peer failed our admission check, or we failed its.
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    /// The peer closed the connection refusing us (wrong key, wrong id).
    #[error("peer at {addr} refused the connection: {reason}")]
    Refused {
        /// The address.
        addr: std::net::SocketAddr,
        /// The close reason.
        reason: String,
    },
    /// The connection broke.
    #[error("connection to {peer} lost: {reason}")]
    Lost {
        /// The peer.
        peer: NodeId,
        /// Why.
        reason: String,
    },
    /// A frame was refused.
    #[error("bad frame from {peer}: {source}")]
    Frame {
        /// The peer.
        peer: NodeId,
        /// The decoder's complaint.
        source: FrameError,
    },
    /// The peer does not serve the protocol asked for (nothing registered
    /// it there: for the event protocol, no daemon runtime was created on
    /// that node).
    #[error("peer at {addr} does not serve {protocol}")]
    NotServed {
        /// The address dialled.
        addr: std::net::SocketAddr,
        /// The protocol's ALPN.
        protocol: String,
    },
    /// We know no address for this node.
    #[error("no known address for node {0}")]
    UnknownNode(NodeId),
    /// The node is shutting down.
    #[error("the mesh node is closed")]
    Closed,
}
