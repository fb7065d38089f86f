//! Running a node until SIGTERM or Ctrl-C: the first signal drains it
//! (within `drain.deadline`) and leaves the mesh; a second one stops it at
//! once. SIGUSR2 starts an upgrade to the binary on disk
//! ([`Node::upgrade`]); once it hands over, the run ends at once.

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
    /// The node was handed to a successor process (an upgrade): this
    /// process must exit now, without leaving the mesh (the successor is
    /// the node and waits for this process to let go of the data
    /// directory).
    HandedOver,
}

/// Starts an upgrade on every SIGUSR2, until the node hands over.
async fn upgrade_on_sigusr2(node: Node) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut usr2) = signal(SignalKind::user_defined2()) else {
        tracing::warn!("cannot listen for SIGUSR2: upgrades only through the control plane");
        return std::future::pending().await;
    };
    while usr2.recv().await.is_some() {
        tracing::info!("SIGUSR2: upgrading to the binary on disk");
        match node.upgrade(None).await {
            Ok(pid) => tracing::info!(successor = pid, "upgrade committed"),
            Err(e) => tracing::warn!(error = %e, "upgrade did not happen; serving on"),
        }
    }
}

/// Resolves once this process handed the node over.
async fn handed_over(node: &Node) {
    let mut state = node.inner.upgrade.subscribe();
    let _ = state.wait_for(super::UpgradeState::is_handed_over).await;
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
    ///
    /// Returns [`RunEnd::HandedOver`] as soon as an upgrade (SIGUSR2 or
    /// [`upgrade`](Self::upgrade)) handed the node over: exit then.
    pub async fn run_until_signal(&self, run_for: Option<Duration>) -> RunEnd {
        let upgrades = tokio::spawn(upgrade_on_sigusr2(self.clone()));
        let run_for = async {
            match run_for {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            () = run_for => "the run time elapsed",
            s = signal() => s,
            () = handed_over(self) => {
                upgrades.abort();
                return RunEnd::HandedOver;
            }
        };
        upgrades.abort();
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
