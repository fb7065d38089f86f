//! Cells across nodes: what is said to a cell daemon and what it answers
//! (`command`), the client that says it wherever the daemon lives
//! (`client`), and the backend that runs a node's cells on its peers
//! ([`FederatedBackend`]). Below the host (`host` uses all three), above
//! the backend contract.

mod client;
pub(crate) mod command;
mod federated;

pub(crate) use client::CellClient;
pub use command::CELL_KIND;
pub use federated::FederatedBackend;
