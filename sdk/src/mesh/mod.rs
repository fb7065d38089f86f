//! The mesh node: a QUIC endpoint bound to the node's ed25519 key.
//!
//! - `tls`: every node presents a certificate for its own key; peers are
//!   verified against the [`NodeId`] they claim (pinned when dialled by id).
//! - `admission`: after TLS both sides prove the mesh pre-shared key with a
//!   MAC bound to the TLS session (sans-IO machine).
//! - The mesh's own protocol, `cellmesh/ctrl/1`: signed membership
//!   records, the daemon location directory, graceful leave.
//! - Every other protocol is registered on the node's router by the layer
//!   that owns it (the compute layer's events and migration), and reaches
//!   peers over one cached admitted connection per (peer, protocol).
//! - Frames are length-prefixed with a checked maximum.

pub(crate) mod admission;
mod admit;
mod builder;
mod config;
mod connect;
mod error;
mod feed;
pub(crate) mod frame;
mod gate;
mod links;
mod node;
mod pool;
mod psk;
mod redial;
mod rejoin;
mod restart;
mod router;
mod stats;
mod tls;
pub(crate) mod wire;

pub use admission::AdmissionError;
pub use builder::MeshBuilder;
pub use config::{MeshConfig, PRE_ADMISSION_WINDOW};
pub use error::{DialError, MeshError};
pub use frame::FrameError;
pub(crate) use links::FrameReader;
pub(crate) use node::close;
pub use node::{Mesh, PeerInfo};
pub(crate) use pool::Pool;
pub use psk::{Psk, PskError};
pub use restart::{HAND_OVER_FLUSH, RESTART_GRACE};
pub(crate) use router::{Context, ProtocolHandler, Serving};
pub use stats::AdmissionStats;
pub use tls::TlsError;
pub use wire::MemberRecord;

/// Node ids live with identities: [`crate::NodeId`]. Kept here so code
/// written against earlier releases builds.
#[doc(hidden)]
pub use crate::identity::NodeId;
