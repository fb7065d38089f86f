//! Running a node until SIGTERM or Ctrl-C: the first signal drains it
//! (within `drain.deadline`) and leaves the mesh; a second one stops it at
//! once.

use std::time::Duration;

use super::Node;

/// How the node's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunEnd {
    /// Drained (as far as peers could take) and left the mesh.
    Drained,
    /// A second signal stopped the node without finishing the drain.
    Interrupted,
}

/// Waits for the first of SIGTERM and Ctrl-C (SIGINT).
async fn signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

impl Node {
    /// Runs until SIGTERM or Ctrl-C (or `run_for`, if given), then drains
    /// within the configured `drain.deadline` and leaves the mesh. A second
    /// signal during the drain stops the node at once.
    pub async fn run_until_signal(&self, run_for: Option<Duration>) -> RunEnd {
        let why = match run_for {
            Some(d) => {
                tokio::select! {
                    () = tokio::time::sleep(d) => "the run time elapsed",
                    s = signal() => s,
                }
            }
            None => signal().await,
        };
        let deadline = self.inner.config.drain_deadline;
        tracing::info!(reason = why, ?deadline, "draining before leaving the mesh");
        let drained = tokio::select! {
            summary = self.drain(deadline, |_| {}) => Some(summary),
            s = signal() => {
                tracing::warn!(signal = s, "second signal: stopping at once");
                None
            }
        };
        self.stop_now().await;
        match drained {
            Some(Ok(summary)) => {
                for f in &summary.failed {
                    tracing::warn!(origin = ?f.origin_hash, cell = ?f.cell_id, reason = %f.reason, "not taken by any peer");
                }
                RunEnd::Drained
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "no drain");
                RunEnd::Drained
            }
            None => RunEnd::Interrupted,
        }
    }
}
