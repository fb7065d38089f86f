//! The mesh node: its identity, its advertised capabilities, its pre-shared
//! key and the slot through which inbound migrations reach the runtime.
//!
//! Today a [`Mesh`] is a local node description; the QUIC transport,
//! membership and routing bind to it in later releases. Nothing here opens
//! a socket yet, and nothing pretends to.

mod builder;
mod handler;
mod node;
mod node_id;

pub use builder::{MeshBuilder, MeshError};
pub(crate) use handler::MigrationHandler;
pub use node::Mesh;
pub use node_id::NodeId;
