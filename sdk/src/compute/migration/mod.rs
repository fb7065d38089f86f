//! Live migration of a daemon between nodes (`cellmesh/migrate/1`).
//!
//! - [`wire`]: the messages; every one carries the migration id.
//! - `source` / `target`: the protocol as one sans-IO state machine per
//!   side (prepare → drain → seal → transfer → restore → commit → ready),
//!   with heartbeats, a deadline and a silence timeout on every wait.
//! - `gate`: where a daemon's events wait during the hand-over, so exactly
//!   one node processes them, each once, in order.
//! - `driver` / `serve`: the thin quinn tasks that run the machines;
//!   `forward`: after commit, the source forwards what it still holds.

mod api;
mod drain;
mod driver;
mod forward;
pub(crate) mod gate;
pub(crate) mod serve;
pub(crate) mod source;
pub(crate) mod target;
pub mod wire;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod violations;

pub use api::{MigrateError, MigrationHandle, MigrationOpts, MigrationPhase, MigrationReport};
pub use drain::{DrainOpts, DrainProgress, DrainReport, ProgressFn};
