//! Runs a cell's command as a child process of the node.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};

use super::{
    check_doc, vacant, wrong_host, BackendFuture, CellBackend, CellError, CellHandle, CellHost,
    ExitReport, TeardownReport,
};
use crate::cell::event::{TerminalState, FORCED_EXIT_CODE};
use crate::cell::spec::ExecutionCellDocument;

/// How long output readers may outlive the command before they are cut off
/// (a grandchild that escaped the kill may hold the pipes open).
const OUTPUT_GRACE: Duration = Duration::from_millis(250);

/// Settings of a [`ProcessBackend`].
#[derive(Debug, Clone)]
pub struct ProcessBackendConfig {
    /// Working directory of commands that name none.
    pub default_dir: PathBuf,
    /// Bytes of stdout and of stderr kept per command when the spec sets no
    /// `limits.outputBytes`.
    pub default_output_bytes: u64,
}

impl Default for ProcessBackendConfig {
    fn default() -> Self {
        Self {
            default_dir: std::env::temp_dir(),
            default_output_bytes: 64 * 1024,
        }
    }
}

/// Runs `spec.run.argv` as a child process: no shell, a cleared
/// environment, the spec's working directory, stdin closed, stdout and
/// stderr captured up to a bound, `limits.memoryBytes` and
/// `limits.cpuSeconds` applied as resource limits, and the command killed
/// (with its process group) when `timeoutMs` or the TTL runs out, which is
/// reported as a forced termination with exit code
/// [`FORCED_EXIT_CODE`](crate::cell::FORCED_EXIT_CODE).
#[derive(Debug, Default)]
pub struct ProcessBackend {
    config: ProcessBackendConfig,
    cells: Mutex<HashMap<String, Tracked>>,
}

#[derive(Debug)]
struct Tracked {
    /// `None` for a cell without a command.
    exit: Option<watch::Receiver<Option<ExitReport>>>,
    /// Kills the command; taken by `destroy`.
    kill: Option<oneshot::Sender<()>>,
}

impl Tracked {
    fn running(&self) -> bool {
        self.exit.as_ref().is_some_and(|rx| rx.borrow().is_none())
    }
}

impl ProcessBackend {
    /// A backend with `config`.
    pub fn new(config: ProcessBackendConfig) -> Self {
        Self {
            config,
            cells: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        // Every critical section leaves the map consistent.
        self.cells.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn(&self, doc: &ExecutionCellDocument) -> Result<Tracked, CellError> {
        let Some(run) = &doc.spec.run else {
            return Ok(Tracked {
                exit: None,
                kill: None,
            });
        };
        let id = doc.id().to_string();
        let program = run.argv[0].clone();
        let mut cmd = Command::new(&program);
        cmd.args(&run.argv[1..])
            .env_clear()
            .current_dir(
                run.working_directory
                    .as_ref()
                    .map_or_else(|| self.config.default_dir.clone(), PathBuf::from),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let limits = run.limits.clone().unwrap_or_default();
        let (memory, cpu) = (limits.memory_bytes, limits.cpu_seconds);
        if memory.is_some() || cpu.is_some() {
            // SAFETY: the closure runs in the forked child before exec and
            // only calls setrlimit, which is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    if let Some(bytes) = memory {
                        set_limit(libc::RLIMIT_AS, bytes)?;
                    }
                    if let Some(seconds) = cpu {
                        set_limit(libc::RLIMIT_CPU, seconds)?;
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().map_err(|source| CellError::Spawn {
            id,
            program,
            source,
        })?;
        let ttl = Duration::from_secs(doc.spec.lifetime.ttl_seconds);
        let limit = run
            .timeout_ms
            .map_or(ttl, |ms| Duration::from_millis(ms).min(ttl));
        let bound = limits
            .output_bytes
            .unwrap_or(self.config.default_output_bytes);
        let (exit_tx, exit_rx) = watch::channel(None);
        let (kill_tx, kill_rx) = oneshot::channel();
        tokio::spawn(supervise(child, limit, kill_rx, bound, exit_tx));
        Ok(Tracked {
            exit: Some(exit_rx),
            kill: Some(kill_tx),
        })
    }
}

fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: value as libc::rlim_t,
        rlim_max: value as libc::rlim_t,
    };
    // SAFETY: `limit` is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(resource, &limit) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Kills the command's whole process group.
fn kill_group(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: plain syscall; the group id is the child's pid because it
        // was started with `process_group(0)`.
        unsafe {
            libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
        }
    }
    let _ = child.start_kill();
}

async fn read_bounded<R: AsyncRead + Unpin>(reader: Option<R>, bound: u64) -> (Bytes, bool) {
    let Some(mut reader) = reader else {
        return (Bytes::new(), false);
    };
    let bound = usize::try_from(bound).unwrap_or(usize::MAX);
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = bound.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    (Bytes::from(kept), truncated)
}

async fn supervise(
    mut child: Child,
    limit: Duration,
    mut kill: oneshot::Receiver<()>,
    bound: u64,
    exit: watch::Sender<Option<ExitReport>>,
) {
    let started = Instant::now();
    let stdout = tokio::spawn(read_bounded(child.stdout.take(), bound));
    let stderr = tokio::spawn(read_bounded(child.stderr.take(), bound));
    let forced = tokio::select! {
        _ = child.wait() => None,
        _ = tokio::time::sleep(limit) => Some("timeout"),
        _ = &mut kill => Some("destroyed"),
    };
    if forced.is_some() {
        kill_group(&mut child);
    }
    let status = child.wait().await;
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let collect = async {
        let out = stdout.await.unwrap_or_default();
        let err = stderr.await.unwrap_or_default();
        (out, err)
    };
    let ((out, out_cut), (err, err_cut)) = tokio::time::timeout(OUTPUT_GRACE, collect)
        .await
        .unwrap_or(((Bytes::new(), true), (Bytes::new(), true)));
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
    let _ = exit.send(Some(ExitReport {
        exit_code,
        terminal_state: if forced.is_some() {
            TerminalState::Forced
        } else {
            TerminalState::Clean
        },
        forced_reason: forced.map(str::to_string),
        duration_ms,
        stdout: out,
        stderr: err,
        output_truncated: out_cut || err_cut,
    }));
}

impl CellBackend for ProcessBackend {
    fn name(&self) -> &'static str {
        "process"
    }

    fn create<'a>(&'a self, doc: &'a ExecutionCellDocument) -> BackendFuture<'a, CellHandle> {
        Box::pin(async move {
            check_doc(doc)?;
            let mut cells = self.lock();
            let slot = vacant(&mut cells, doc.id())?;
            // Spawning under the lock keeps a concurrent duplicate create
            // from starting the command twice; spawn itself does not block.
            slot.insert(self.spawn(doc)?);
            Ok(CellHandle {
                cell_id: doc.id().to_string(),
                host: CellHost::Local,
            })
        })
    }

    fn destroy<'a>(&'a self, handle: &'a CellHandle) -> BackendFuture<'a, TeardownReport> {
        Box::pin(async move {
            let (mut tracked, after) = {
                let mut cells = self.lock();
                let tracked = cells
                    .remove(&handle.cell_id)
                    .ok_or_else(|| CellError::UnknownCell(handle.cell_id.clone()))?;
                (tracked, cells.len())
            };
            if let Some(kill) = tracked.kill.take() {
                let _ = kill.send(());
            }
            let exit = match tracked.exit.as_mut() {
                Some(rx) => rx
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|r| r.clone()),
                None => None,
            };
            Ok(TeardownReport {
                cell_id: handle.cell_id.clone(),
                destroyed: true,
                peers_tracked_after: after,
                exit,
            })
        })
    }

    fn wait_for_exit<'a>(
        &'a self,
        handle: &'a CellHandle,
    ) -> BackendFuture<'a, Option<ExitReport>> {
        Box::pin(async move {
            let rx = self
                .lock()
                .get(&handle.cell_id)
                .map(|t| t.exit.clone())
                .ok_or_else(|| CellError::UnknownCell(handle.cell_id.clone()))?;
            let Some(mut rx) = rx else {
                return Ok(None);
            };
            let report = rx
                .wait_for(Option::is_some)
                .await
                .map_err(|_| CellError::UnknownCell(handle.cell_id.clone()))?
                .clone();
            Ok(report)
        })
    }

    fn tracked_cell_count(&self) -> usize {
        self.lock().len()
    }

    fn has_tracked_state(&self, cell_id: &str) -> bool {
        self.lock().contains_key(cell_id)
    }

    fn adopt(
        &self,
        doc: &ExecutionCellDocument,
        host: CellHost,
        exit: Option<ExitReport>,
    ) -> Result<CellHandle, CellError> {
        if host != CellHost::Local {
            return Err(wrong_host(doc, host));
        }
        let mut cells = self.lock();
        let slot = vacant(&mut cells, doc.id())?;
        let tracked = Tracked {
            exit: exit.map(|report| watch::channel(Some(report)).1),
            kill: None,
        };
        slot.insert(tracked);
        Ok(CellHandle {
            cell_id: doc.id().to_string(),
            host,
        })
    }

    fn release(&self, handle: &CellHandle) -> Result<(), CellError> {
        let mut cells = self.lock();
        let tracked = cells
            .get(&handle.cell_id)
            .ok_or_else(|| CellError::UnknownCell(handle.cell_id.clone()))?;
        if tracked.running() {
            return Err(CellError::CommandRunning(handle.cell_id.clone()));
        }
        cells.remove(&handle.cell_id);
        Ok(())
    }
}
