//! Replacing the node's binary without losing a daemon: the node's part of
//! `cellmesh/handoff/1` ([`crate::handoff`] has the protocol).
//!
//! - **Incumbent.** Every node listens on `DATA_DIR/handoff.sock`. A
//!   successor that connects drives a session: the node stops admitting
//!   new work and sends its mesh UDP socket and control listener with the
//!   daemons' identities, then freezes every daemon into a `memfd`
//!   ([`DaemonRuntime::freeze`](cellmesh::compute::DaemonRuntime::freeze))
//!   and hands it over. If the session ends before `Commit` the node thaws
//!   and serves on as if nothing had begun. On `Commit` it stops reading
//!   the socket and closes its connections with the restart code
//!   ([`Mesh::hand_over`](cellmesh::mesh::Mesh::hand_over)) before it
//!   answers; then it retires its daemons, stops serving, and its
//!   [`run_until_signal`](crate::Node::run_until_signal) returns
//!   [`RunEnd::HandedOver`](crate::RunEnd::HandedOver): the process must
//!   exit (the successor waits for its data-directory lock).
//! - **Successor.** A process started with [`HANDOFF_ENV`] naming the
//!   socket ([`Node::upgrade`](crate::Node::upgrade) does this) connects
//!   instead of binding: [`NodeBuilder::start`](crate::NodeBuilder::start)
//!   starts its mesh [held](cellmesh::mesh::MeshBuilder::held) and its
//!   runtime on the handed sockets with the same key while the incumbent
//!   still serves, adopts the frozen daemons into it, and on `Committed`
//!   releases the mesh: the daemons serve from then on. It then waits for
//!   the lock, opens the cells' log and starts the control plane. If the
//!   incumbent died before handing its daemons over, the successor takes
//!   the lock first, starts as the node without them and reports each
//!   lost daemon by origin.
//!
//! Cells with a running command cannot be handed over (their processes
//! are the incumbent's children): the seal fails naming them and the
//! incumbent serves on.

mod incumbent;
pub(crate) mod notify;
mod sealed_fd;
mod spawn;
mod successor;

use std::time::Duration;

use serde::Serialize;

pub(crate) use incumbent::listen;
pub(crate) use successor::{succeed, Inheritance};

/// The environment variable a successor finds the incumbent's handoff
/// socket in.
pub const HANDOFF_ENV: &str = "CELLMESH_HANDOFF";

/// The handoff socket's name in the data directory.
pub const SOCKET_FILE: &str = "handoff.sock";

/// The daemons an incumbent handed over, one origin (hex) per line, until
/// the successor serves them: a process that starts and finds it reports
/// them lost (the successor died between the commit and serving).
pub const PENDING_FILE: &str = "handoff.pending";

/// Reports the daemons of an upgrade that never completed (the successor
/// died after the commit, before serving) as lost, and forgets them.
pub(crate) fn report_interrupted(
    data_dir: &std::path::Path,
    metrics: &crate::metrics::Metrics,
) -> Vec<String> {
    let path = data_dir.join(PENDING_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    let lost: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    for origin in &lost {
        tracing::error!(%origin, "daemon lost: an upgrade was interrupted after its commit, before the new process served it");
    }
    metrics.upgrade_daemons_lost.inc_by(lost.len() as u64);
    let _ = std::fs::remove_file(&path);
    lost
}

/// This build, as the handoff names it.
pub(crate) fn build() -> String {
    format!("cellmesh {}", env!("CARGO_PKG_VERSION"))
}

/// What an upgrade did, as the successor measured it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpgradeReport {
    /// The handoff's id (hex).
    pub handoff_id: String,
    /// The incumbent's process id.
    pub incumbent_pid: u32,
    /// The successor's (this node's) process id.
    pub successor_pid: u32,
    /// Daemons handed over and adopted.
    pub daemons: u64,
    /// Bytes of daemon state handed over.
    pub bytes: u64,
    /// Daemons lost with an incumbent that died before handing them over,
    /// by origin hash (hex).
    pub lost: Vec<String>,
    /// Cells handed over whose supervision could not be taken over here,
    /// by their daemon's origin hash (hex): their daemons answer, but
    /// nothing runs or tears them down (destroy and apply them again).
    pub cells_unsupervised: Vec<String>,
    /// Time spent in each step, in order (`step`, seconds).
    pub steps: Vec<(String, f64)>,
    /// From the incumbent's `Sealed` (its daemons frozen) to this node
    /// serving them (its mesh released), in seconds.
    pub frozen_seconds: f64,
    /// From connecting to the incumbent to serving, in seconds.
    pub total_seconds: f64,
}

impl UpgradeReport {
    fn step(&mut self, name: &str, took: Duration) {
        self.steps.push((name.to_string(), took.as_secs_f64()));
    }
}

/// Why an upgrade could not start or did not complete. The running node
/// serves on in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// Another upgrade is running.
    #[error("an upgrade of this node is already running")]
    InProgress,
    /// The node is draining or stopping.
    #[error("the node is {0}, not serving: no upgrade now")]
    NotServing(&'static str),
    /// The successor binary could not be started.
    #[error("cannot start the successor {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The session ended without a commit.
    #[error("the handoff ended without a commit: {0}")]
    Ended(String),
    /// The successor exited before it connected.
    #[error("the successor (pid {pid}) exited before the handoff: {status}")]
    SuccessorExited {
        /// Its process id.
        pid: u32,
        /// How it exited.
        status: std::process::ExitStatus,
    },
}
