//! Sending through a restart of the daemon's node: an attempt that finds
//! the node unreachable, not ready or shutting down while the mesh knows
//! it restarts is made again under the same sequence (the daemon's marks
//! make every retry safe), with a short back-off, until the node answers
//! or [`RESTART_WAIT`] passes.

use std::time::{Duration, Instant};

use crate::compute::error::{DaemonError, RemoteRefusal};
use crate::compute::{CausalEvent, DaemonRuntime};
use crate::NodeId;

/// The longest a send waits for a restarting node.
pub const RESTART_WAIT: Duration = Duration::from_secs(10);

/// How long a failed attempt waits to learn that its node restarts (the
/// failure can reach the sender before the node's restart notice).
const NOTICE_WAIT: Duration = Duration::from_millis(200);

const FIRST_PAUSE: Duration = Duration::from_millis(1);
/// Short: a restart takes milliseconds, and a retry that waits longer than
/// it adds to the blackout the sender sees.
const MAX_PAUSE: Duration = Duration::from_millis(10);

/// The node a failure would be retried for, if it could be a restart.
fn restart_candidate(e: &DaemonError) -> Option<NodeId> {
    match e {
        DaemonError::Unreachable { node, .. } => Some(*node),
        DaemonError::Remote {
            node,
            refusal: RemoteRefusal::NotReady | RemoteRefusal::ShuttingDown,
            ..
        } => Some(*node),
        _ => None,
    }
}

/// Whether `node` restarts, waiting up to [`NOTICE_WAIT`] to hear it
/// (the mesh's restart notice is a membership change).
async fn restarting(rt: &DaemonRuntime, node: NodeId) -> bool {
    rt.mesh()
        .wait_for(NOTICE_WAIT, |mesh| mesh.is_restarting(node))
        .await
}

/// Sends `event` to `daemon`, retrying through a restart of its node.
/// Returns the outcome and how many attempts were made.
pub(super) async fn send(
    rt: &DaemonRuntime,
    daemon: u64,
    event: &CausalEvent,
) -> (Result<Vec<CausalEvent>, DaemonError>, u32) {
    // The clock is read only once an attempt failed: not on the send path.
    let mut began: Option<Instant> = None;
    // The first retry goes at once: the new process may serve already,
    // and a dial that reaches it before it does waits in its socket.
    let mut pause = Duration::ZERO;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let outcome = rt.send(daemon, event.clone()).await;
        let retry = match &outcome {
            Err(e) => match restart_candidate(e) {
                Some(node) => {
                    let began = *began.get_or_insert_with(Instant::now);
                    began.elapsed() < RESTART_WAIT && restarting(rt, node).await
                }
                None => false,
            },
            Ok(_) => false,
        };
        if !retry {
            return (outcome, attempts);
        }
        tracing::debug!(daemon = %format!("{daemon:016x}"), attempts, "node restarting; retrying the event");
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        pause = (pause * 2).clamp(FIRST_PAUSE, MAX_PAUSE);
    }
}
