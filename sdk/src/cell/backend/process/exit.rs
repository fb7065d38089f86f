//! Watching a cell's running command until it exits: its time limit, a
//! kill on destroy, its processes observed, and its exit report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::Child;
use tokio::sync::{oneshot, watch};

use super::super::contain::{self, CellJail};
use super::super::output::OutputFiles;
use super::super::{ExitReport, FailureCause};
use crate::cell::event::{TerminalState, FORCED_EXIT_CODE};

/// How long the exit report waits for output still in flight once the
/// command exited. What arrives later is still written to the files (a
/// background child keeps writing until it exits or the cell is destroyed).
const OUTPUT_GRACE: Duration = Duration::from_millis(250);
/// How often a running cell's processes are recorded (subreaper only).
const OBSERVE_EVERY: Duration = Duration::from_millis(50);
/// Kills the command's process group, then every process of the cell.
async fn kill_everything(child: &mut Child, jail: &CellJail) {
    if let Some(pid) = child.id() {
        // The group id is the child's pid: it was started with
        // `process_group(0)`.
        contain::sigkill(-(pid as i32));
    }
    let _ = child.start_kill();
    let left = jail.kill_all().await;
    if left > 0 {
        tracing::warn!(left, "cell processes survived the kill");
    }
}

/// Waits for the command to exit (killing it at its time limit or when
/// the cell is destroyed) and sends its exit report.
pub(super) async fn supervise(
    mut child: Child,
    limit: Duration,
    mut kill: oneshot::Receiver<()>,
    jail: Arc<CellJail>,
    files: Arc<OutputFiles>,
    exit: watch::Sender<Option<ExitReport>>,
) {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    let mut observe = tokio::time::interval(OBSERVE_EVERY);
    let forced = loop {
        tokio::select! {
            _ = child.wait() => break None,
            () = tokio::time::sleep_until(deadline) => break Some("timeout"),
            _ = &mut kill => break Some("destroyed"),
            _ = observe.tick() => jail.observe(),
        }
    };
    jail.observe();
    if forced.is_some() {
        kill_everything(&mut child, &jail).await;
    }
    let status = child.wait().await;
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    // Give the pipes a moment to deliver what the command wrote last.
    let _ = tokio::time::timeout(OUTPUT_GRACE, async { while !files_idle(&files).await {} }).await;
    let oom = jail.oom_killed();
    let exit_code = match (&forced, status) {
        (Some(_), _) => FORCED_EXIT_CODE,
        (None, Ok(status)) => {
            use std::os::unix::process::ExitStatusExt;
            status
                .code()
                .or_else(|| status.signal().map(|s| 128 + s))
                .unwrap_or(FORCED_EXIT_CODE)
        }
        (None, Err(_)) => FORCED_EXIT_CODE,
    };
    let forced_reason = match forced {
        Some(r) => Some(r.to_string()),
        None if oom => Some("memory limit exceeded".to_string()),
        None => None,
    };
    let read = files.read().unwrap_or_default();
    let _ = exit.send(Some(ExitReport {
        exit_code,
        terminal_state: if forced_reason.is_some() {
            TerminalState::Forced
        } else {
            TerminalState::Clean
        },
        forced_reason,
        duration_ms,
        stdout: bytes::Bytes::new(),
        stderr: bytes::Bytes::new(),
        stdout_bytes: read.stdout_bytes,
        stderr_bytes: read.stderr_bytes,
        output_truncated: read.truncated,
        failure: oom.then_some(FailureCause::MemoryLimitExceeded),
    }));
}

/// Whether the output counters stood still for a few milliseconds.
async fn files_idle(files: &OutputFiles) -> bool {
    if files.stdout.closed() && files.stderr.closed() {
        return true;
    }
    let before = (files.stdout.written(), files.stderr.written());
    tokio::time::sleep(Duration::from_millis(20)).await;
    before == (files.stdout.written(), files.stderr.written())
}
