//! The mesh node: a QUIC endpoint bound to the node's ed25519 key.
//!
//! - `tls`: every node presents a certificate for its own key; peers are
//!   verified against the [`NodeId`] they claim (pinned when dialled by id).
//! - `admission`: after TLS both sides prove the mesh pre-shared key with a
//!   MAC bound to the TLS session (sans-IO machine).
//! - Protocols, one ALPN each: `cellmesh/ctrl/1` (signed membership records,
//!   the daemon location directory, graceful leave) and `cellmesh/events/1`
//!   (a few long-lived streams per peer carrying tagged requests and
//!   replies).
//! - Frames are length-prefixed with a checked maximum.

pub(crate) mod admission;
mod admit;
mod builder;
mod config;
mod error;
mod events;
mod feed;
pub(crate) use events::refusal as refusal_for;
pub(crate) mod frame;
mod handler;
mod links;
mod migrate_link;
mod node;
mod node_id;
mod psk;
mod redial;
mod rejoin;
mod stats;
mod tls;
pub(crate) mod wire;

pub use admission::AdmissionError;
pub use builder::MeshBuilder;
pub use config::{MeshConfig, PRE_ADMISSION_WINDOW};
pub use error::{DialError, MeshError};
pub use frame::FrameError;
pub(crate) use handler::MigrationHandler;
pub(crate) use links::FrameReader;
pub use node::Mesh;
pub use node_id::NodeId;
pub use psk::{Psk, PskError};
pub use stats::AdmissionStats;
pub use tls::TlsError;
pub use wire::MemberRecord;
pub(crate) use wire::{EventRefusal, EventReply, EventRequest, Reply, Request, SpawnRequest};
