//! Starting a successor: the same binary (or another one), the same
//! arguments, [`HANDOFF_ENV`] naming this node's handoff socket.

use std::path::PathBuf;
use std::time::Duration;

use super::{UpgradeError, HANDOFF_ENV, SOCKET_FILE};
use crate::node::{Node, NodePhase, UpgradeState};

/// How long an upgrade may take from spawning the successor to the end of
/// the session (each step has its own, shorter, deadline).
const UPGRADE_WAIT: Duration = Duration::from_secs(60);

/// The binary this process runs, as on disk now (an upgraded package has
/// replaced the file the process was started from).
fn own_binary() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // Linux names a replaced binary "<path> (deleted)": the path is what
    // the new file is at.
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

impl Node {
    /// Replaces this node's process with `binary` (default: the binary on
    /// disk at this process's own path), started with this process's
    /// arguments: the successor connects to the handoff socket and takes
    /// over the node's sockets, key, data directory and daemons (see
    /// [the upgrade module](crate::upgrade)). Returns the successor's pid once
    /// this node has handed over: [`run_until_signal`](Self::run_until_signal)
    /// then returns [`RunEnd::HandedOver`](crate::RunEnd::HandedOver) and
    /// the process must exit.
    ///
    /// # Errors
    /// [`UpgradeError`]; the node serves on in every case.
    pub async fn upgrade(&self, binary: Option<PathBuf>) -> Result<u32, UpgradeError> {
        let inner = &self.inner;
        match inner.phase() {
            NodePhase::Draining => return Err(UpgradeError::NotServing("draining")),
            NodePhase::Stopping => return Err(UpgradeError::NotServing("stopping")),
            _ => {}
        }
        let mut state = inner.upgrade.subscribe();
        if !inner.upgrade.send_if_modified(|s| {
            if s.is_running() || s.is_handed_over() {
                return false;
            }
            *s = UpgradeState::Starting;
            true
        }) {
            return Err(UpgradeError::InProgress);
        }
        let binary = match binary.map_or_else(own_binary, Ok) {
            Ok(b) => b,
            Err(source) => {
                inner.upgrade.send_replace(UpgradeState::Idle);
                return Err(UpgradeError::Spawn {
                    binary: "this process's binary".into(),
                    source,
                });
            }
        };
        let socket = self.data_dir().join(SOCKET_FILE);
        let spawned = tokio::process::Command::new(&binary)
            .args(std::env::args_os().skip(1))
            .env(HANDOFF_ENV, &socket)
            .kill_on_drop(false)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(source) => {
                inner.upgrade.send_replace(UpgradeState::Idle);
                return Err(UpgradeError::Spawn {
                    binary: binary.display().to_string(),
                    source,
                });
            }
        };
        let pid = child.id().unwrap_or(0);
        tracing::info!(binary = %binary.display(), pid, "successor started");
        inner
            .upgrade
            .send_replace(UpgradeState::Running { successor: pid });
        let ended = async {
            loop {
                let now = state.borrow_and_update().clone();
                match now {
                    UpgradeState::HandedOver => return Ok(pid),
                    UpgradeState::Ended(reason) => {
                        return Err(UpgradeError::Ended(reason));
                    }
                    _ => {}
                }
                tokio::select! {
                    changed = state.changed() => if changed.is_err() {
                        return Err(UpgradeError::Ended("the node stopped".into()));
                    },
                    status = child.wait() => {
                        if let Ok(status) = status {
                            // It may have committed just before exiting.
                            if state.borrow().is_handed_over() {
                                return Ok(pid);
                            }
                            return Err(UpgradeError::SuccessorExited { pid, status });
                        }
                    }
                }
            }
        };
        let result = match tokio::time::timeout(UPGRADE_WAIT, ended).await {
            Ok(result) => result,
            Err(_) => Err(UpgradeError::Ended(format!(
                "no end within {UPGRADE_WAIT:?}"
            ))),
        };
        if let Err(e) = &result {
            // Said where the operator looks (`status`): the last upgrade
            // ended, and why.
            inner.upgrade.send_if_modified(|s| match s {
                UpgradeState::HandedOver | UpgradeState::Ended(_) => false,
                _ => {
                    *s = UpgradeState::Ended(e.to_string());
                    true
                }
            });
        }
        result
    }
}
