//! # cellmesh-runtime
//!
//! The cellmesh node as a library a service embeds, and the `cellmesh`
//! binary operators deploy (this library with the built-in kinds).
//!
//! ## Architecture
//!
//! - [`config`] — [`NodeConfig`], resolved from flags over the
//!   `CELLMESH_*` environment over a TOML file over defaults.
//! - [`Node`] — one node, started in one call by [`NodeBuilder::start`]:
//!   the mesh (seeds dialled in the background), the daemon runtime with
//!   every registered kind (the built-in `counter` and the cells' own
//!   `cellmesh.cell`), [`Cells`](cellmesh::cell::Cells) over the data
//!   directory's redb log on a backend that runs a cell here when this node
//!   meets its placement and on a capable peer otherwise, the HTTP control
//!   plane and the metrics. [`Node::shutdown`] drains (optionally, within a
//!   deadline) and leaves the mesh; [`Node::run_until_signal`] does that on
//!   SIGTERM or Ctrl-C.
//! - the control plane (axum): bearer-token authenticated JSON routes under
//!   `/v1`, `/metrics` (Prometheus text), `/livez`, `/readyz`.
//! - [`cli`] — the `cellmesh` commands, clients of the control plane.
//!
//! ## Example
//!
//! ```no_run
//! use cellmesh_runtime::{Counter, Node, NodeConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = NodeConfig::with_data_dir("./my-service-data");
//! config.listen = "127.0.0.1:7400".parse()?;
//! let node = Node::builder(config)
//!     .psk(cellmesh::mesh::Psk::from_bytes([7; 32]))
//!     .register("my-counter", || Box::new(Counter::default()))
//!     .start()
//!     .await?;
//! node.run_until_signal(None).await; // drains on SIGTERM, then leaves
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod cli;
pub mod config;
mod control;
pub mod demo;
pub mod handoff;
pub mod logging;
mod metrics;
mod node;

pub use config::{ConfigError, NodeConfig, NodeFlags};
pub use control::MAX_BODY_BYTES;
pub use node::upgrade;
pub use node::{
    Counter, DrainError, DrainFailure, DrainSummary, Factory, Node, NodeBuilder, NodePhase, RunEnd,
    StartError,
};
