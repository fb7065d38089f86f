//! # cellmesh
//!
//! Run stateful daemons ("cells") across a peer-to-peer mesh.
//!
//! ## Architecture
//!
//! - [`Identity`] — an ed25519 key; a daemon's public key is its
//!   [`EntityId`], and its 64-bit `origin_hash` is what events are routed by.
//! - [`capabilities`] — what a node offers and what a daemon requires.
//! - [`mesh`] — the transport: a node with its [`NodeId`], admission,
//!   membership, the daemon directory, and a router that hands each
//!   admitted connection to the protocol registered for its ALPN (the
//!   layers above register theirs; the mesh uses nothing of them).
//! - [`compute`] — [`MeshDaemon`](compute::MeshDaemon) (user code) hosted by a
//!   [`DaemonRuntime`](compute::DaemonRuntime): factories by kind, spawn and
//!   stop, exactly-once in-order delivery per origin, an unbroken output
//!   chain, and signed snapshots bound to the daemon's identity; its event
//!   and migration protocols run on the mesh; an
//!   [`EventSender`](compute::EventSender) sends as one identity.
//! - [`cell`] — execution cells on top of both: a validated document, host
//!   backends (a local process, or a peer through the mesh), a signed
//!   CloudEvent lifecycle folded into a projection that migrates with the
//!   cell, and a durable per-node event log.
//!
//! ## Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use cellmesh::capabilities::CapabilityFilter;
//! use cellmesh::compute::{
//!     CausalEvent, DaemonHostConfig, DaemonRuntime, MeshDaemon, ProcessError,
//! };
//! use cellmesh::{mesh::MeshBuilder, Identity};
//!
//! struct Counter(u64);
//! impl MeshDaemon for Counter {
//!     fn name(&self) -> &str { "counter" }
//!     fn requirements(&self) -> CapabilityFilter { CapabilityFilter::default() }
//!     fn process(&mut self, _: &CausalEvent) -> Result<Vec<Bytes>, ProcessError> {
//!         self.0 += 1;
//!         Ok(vec![Bytes::copy_from_slice(&self.0.to_le_bytes())])
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mesh = MeshBuilder::new("127.0.0.1:0", &[7u8; 32])?.build().await?;
//! let rt = DaemonRuntime::new(Arc::new(mesh));
//! rt.register_factory("counter", || Box::new(Counter(0)))?;
//! rt.start().await?;
//! let daemon = rt.spawn("counter", Identity::generate(), DaemonHostConfig::default()).await?;
//! // One sending identity: it numbers its events per daemon and sends them
//! // wherever the daemon lives; each is applied exactly once, in order.
//! let sender = rt.sender(&Identity::generate());
//! let delivered = sender.send(daemon.origin_hash, Bytes::from_static(b"tick")).await?;
//! assert_eq!(delivered.outputs[0].link.sequence, 1); // the daemon's first output
//! # Ok(()) }
//! ```
//!
//! ## Logs
//!
//! The SDK logs through [`tracing`](https://docs.rs/tracing) and installs
//! nothing itself: without a subscriber its diagnostics (a seed peer
//! unreachable, a refused connection, a migration's phases, a daemon
//! that panicked) go nowhere. Install one in your binary, for example
//! `tracing-subscriber` with its `env-filter` feature, and choose what to
//! see with `RUST_LOG`:
//!
//! ```text
//! // Cargo.toml: tracing-subscriber = { version = "0.3", features = ["env-filter"] }
//! tracing_subscriber::fmt()
//!     .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
//!     .init();
//! // then run with RUST_LOG=cellmesh=debug (or info, warn, ...)
//! ```
#![deny(missing_docs)]

mod assertions;
pub mod capabilities;
pub mod cell;
pub mod compute;
#[doc(hidden)]
pub mod fault;
#[doc(hidden)]
pub mod fuzzing;
mod identity;
pub mod mesh;

pub use identity::{EntityId, Identity, IdentityError, Keypair, NodeId};
