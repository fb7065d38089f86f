//! Live migration of a daemon between nodes (`cellmesh/migrate/1`).
//!
//! - `wire`: the messages; every one carries the migration id.
//! - `source` / `target`: the protocol as one sans-IO state machine per
//!   side (prepare → drain → seal → transfer → restore → commit → ready),
//!   with heartbeats, a deadline and a silence timeout on every wait.
//! - `gate`: where a daemon's events wait during the hand-over, so exactly
//!   one node processes them, each once, in order.
//! - `driver` / `serve`: the thin quinn tasks that run the machines;
//!   `forward`: after commit, the source forwards what it still holds.

mod api;
mod dispatch;
mod drain;
mod driver;
mod forward;
pub(crate) mod gate;
pub(crate) mod serve;
pub(crate) mod source;
pub(crate) mod target;
pub(crate) mod verdicts;
pub(crate) mod wire;

#[cfg(test)]
mod hostile;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod violations;

pub use api::{MigrateError, MigrationHandle, MigrationOpts, MigrationPhase, MigrationReport};
pub use drain::{DrainOpts, DrainProgress, DrainReport, ProgressFn};
pub use gate::{MAX_GATE_BYTES, MAX_GATE_EVENTS};
pub use verdicts::{MAX_VERDICTS, VERDICT_RETENTION};

/// Marks the fault point for a frame just written by the source (`true`)
/// or the target.
fn sent_point(source: bool, body: &wire::Body) {
    use wire::Body;
    let name = match (source, body) {
        (true, Body::Prepare(_)) => "migrate.source.prepare_sent",
        (true, Body::Sealed { .. }) => "migrate.source.sealed_sent",
        (true, Body::Commit { .. }) => "migrate.source.commit_sent",
        (false, Body::Ready { .. }) => "migrate.target.ready_sent",
        (false, Body::Restored) => "migrate.target.restored_sent",
        (false, Body::Committed { .. }) => "migrate.target.committed_sent",
        _ => return,
    };
    crate::fault::point(name);
}
