//! Runs a cell's command as a child process of the node, contained (see
//! `contain`) and with its output written to files (see `output`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::contain::{self, CellJail, Containment, ContainmentChoice, GroupLimits};
use super::output::{pump, CellOutput, OutputFiles, OutputRange, OUTPUT_DIR};
use super::{
    check_doc, vacant, wrong_host, BackendFuture, CellBackend, CellError, CellHandle, CellHost,
    ExitReport, TeardownReport,
};
use crate::cell::spec::ExecutionCellDocument;
use exit::supervise;

mod exit;

/// How long destroy waits for the output files to be complete after every
/// process of the cell was killed.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// Settings of a [`ProcessBackend`].
#[derive(Debug, Clone)]
pub struct ProcessBackendConfig {
    /// Working directory of commands that name none.
    pub default_dir: PathBuf,
    /// Bytes of stdout and of stderr kept per command when the spec sets no
    /// `limits.outputBytes`.
    pub default_output_bytes: u64,
    /// Where output files go; `None`: `cell-output` in the data directory
    /// [`Cells::start`](crate::cell::Cells::start) attaches, else in the
    /// system temp directory.
    pub output_dir: Option<PathBuf>,
    /// Which containment mechanism to use.
    pub containment: ContainmentChoice,
}

impl Default for ProcessBackendConfig {
    fn default() -> Self {
        Self {
            default_dir: std::env::temp_dir(),
            default_output_bytes: 64 * 1024,
            output_dir: None,
            containment: ContainmentChoice::Auto,
        }
    }
}

/// Runs `spec.run.argv` as a child process: no shell, a cleared
/// environment, the spec's working directory, stdin closed.
///
/// - **Containment**: the command and everything it starts are held by the
///   node's [`Containment`] mechanism (a cgroup v2 or v1 group per cell, or
///   the node as child subreaper); destroy, `timeoutMs` and the TTL kill
///   every process of the cell, including `setsid` and double-forked ones.
///   A timeout or TTL is reported as a forced termination with exit code
///   [`FORCED_EXIT_CODE`](crate::cell::FORCED_EXIT_CODE).
/// - **Limits**: `memoryBytes`, `maxProcesses` and `cpuMillis` go to the
///   cell's group where one is writable (a memory kill is then reported as
///   [`FailureCause::MemoryLimitExceeded`](super::FailureCause::MemoryLimitExceeded)); without a group,
///   `memoryBytes` and `cpuSeconds` are rlimits.
/// - **Output**: stdout and stderr are written as they arrive to one file
///   each in the output directory, up to `limits.outputBytes` each (the
///   rest counted and dropped); read them with [`output`](Self::output).
#[derive(Debug)]
pub struct ProcessBackend {
    config: ProcessBackendConfig,
    output_dir: Mutex<Option<PathBuf>>,
    cells: Mutex<HashMap<String, Tracked>>,
    /// The output files of every cell created or adopted here, kept after
    /// destroy (until the id is used again) and after release (until the
    /// migration carried them away).
    outputs: Mutex<HashMap<String, Arc<OutputFiles>>>,
}

impl Default for ProcessBackend {
    fn default() -> Self {
        Self::new(ProcessBackendConfig::default())
    }
}

#[derive(Debug)]
struct Tracked {
    /// `None` for a cell without a command.
    exit: Option<watch::Receiver<Option<ExitReport>>>,
    /// Kills the command; taken by `destroy`.
    kill: Option<oneshot::Sender<()>>,
    output: Option<Arc<OutputFiles>>,
    jail: Option<Arc<CellJail>>,
    /// The writers of the output files.
    pumps: Vec<JoinHandle<()>>,
}

impl Tracked {
    fn running(&self) -> bool {
        self.exit.as_ref().is_some_and(|rx| rx.borrow().is_none())
    }

    fn empty() -> Self {
        Self {
            exit: None,
            kill: None,
            output: None,
            jail: None,
            pumps: Vec::new(),
        }
    }
}

/// Unique names of cell groups within this process.
static GROUPS: AtomicU64 = AtomicU64::new(0);

impl ProcessBackend {
    /// A backend with `config`. The containment mechanism is detected (and
    /// logged) here.
    pub fn new(config: ProcessBackendConfig) -> Self {
        contain::detect(config.containment);
        Self {
            output_dir: Mutex::new(config.output_dir.clone()),
            config,
            cells: Mutex::new(HashMap::new()),
            outputs: Mutex::new(HashMap::new()),
        }
    }

    /// How this backend keeps hold of every process its cells start.
    pub fn containment(&self) -> Containment {
        contain::detect(self.config.containment).kind()
    }

    fn outputs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<OutputFiles>>> {
        // Every critical section leaves the map consistent.
        self.outputs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dir(&self) -> PathBuf {
        self.output_dir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| {
                std::env::temp_dir().join(format!("cellmesh-{OUTPUT_DIR}-{}", std::process::id()))
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        // Every critical section leaves the map consistent.
        self.cells.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn(&self, doc: &ExecutionCellDocument) -> Result<Tracked, CellError> {
        let Some(run) = &doc.spec.run else {
            return Ok(Tracked::empty());
        };
        let id = doc.id().to_string();
        let program = run.argv[0].clone();
        let limits = run.limits.clone().unwrap_or_default();
        let host = contain::detect(self.config.containment);
        let name = format!("{id}-{}", GROUPS.fetch_add(1, Ordering::Relaxed));
        let group_limits = GroupLimits {
            memory_bytes: limits.memory_bytes,
            max_processes: limits.max_processes,
            cpu_millis: limits.cpu_millis,
        };
        let jail = CellJail::new(host, &name, group_limits).map_err(|e| CellError::Limit {
            id: id.clone(),
            what: e.to_string(),
        })?;
        let enter = jail.enter_fds().map_err(|e| CellError::Limit {
            id: id.clone(),
            what: e.to_string(),
        });
        let enter = match enter {
            Ok(fds) => fds,
            Err(e) => {
                jail.remove();
                return Err(e);
            }
        };
        let bound = limits
            .output_bytes
            .unwrap_or(self.config.default_output_bytes);
        let (files, [out_file, err_file]) =
            OutputFiles::create(&self.dir(), &id, bound).map_err(|source| {
                jail.remove();
                CellError::Output {
                    id: id.clone(),
                    source,
                }
            })?;
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
        let raw: Vec<i32> = enter.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
        let memory = limits.memory_bytes.filter(|_| !jail.enforces_memory());
        let cpu = limits.cpu_seconds;
        // SAFETY: the closure runs in the forked child before exec and only
        // calls write(2) and setrlimit(2), which are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                contain::enter_in_child(&raw)?;
                if let Some(bytes) = memory {
                    set_limit(libc::RLIMIT_AS, bytes)?;
                }
                if let Some(seconds) = cpu {
                    set_limit(libc::RLIMIT_CPU, seconds)?;
                }
                Ok(())
            });
        }
        let spawned = cmd.spawn();
        drop(cmd);
        drop(enter);
        let mut child = match spawned {
            Ok(child) => child,
            Err(source) => {
                jail.remove();
                files.remove();
                return Err(CellError::Spawn {
                    id,
                    program,
                    source,
                });
            }
        };
        if let Some(pid) = child.id() {
            jail.started(pid);
        }
        let jail = Arc::new(jail);
        let pumps = vec![
            tokio::spawn(pump(
                child.stdout.take(),
                out_file,
                Arc::clone(&files.stdout),
            )),
            tokio::spawn(pump(
                child.stderr.take(),
                err_file,
                Arc::clone(&files.stderr),
            )),
        ];
        let ttl = Duration::from_secs(doc.spec.lifetime.ttl_seconds);
        let limit = run
            .timeout_ms
            .map_or(ttl, |ms| Duration::from_millis(ms).min(ttl));
        let (exit_tx, exit_rx) = watch::channel(None);
        let (kill_tx, kill_rx) = oneshot::channel();
        let files = Arc::new(files);
        tokio::spawn(supervise(
            child,
            limit,
            kill_rx,
            Arc::clone(&jail),
            Arc::clone(&files),
            exit_tx,
        ));
        Ok(Tracked {
            exit: Some(exit_rx),
            kill: Some(kill_tx),
            output: Some(files),
            jail: Some(jail),
            pumps,
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

/// Kills what is left of a destroyed cell and waits (bounded) until its
/// output files are complete.
async fn finish(tracked: Tracked) {
    if let Some(jail) = &tracked.jail {
        let left = jail.kill_all().await;
        if left > 0 {
            tracing::warn!(left, "cell processes survived destroy");
        }
        jail.remove();
    }
    for pump in tracked.pumps {
        let abort = pump.abort_handle();
        if tokio::time::timeout(DRAIN_WAIT, pump).await.is_err() {
            abort.abort();
        }
    }
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
            let tracked = self.spawn(doc)?;
            match &tracked.output {
                Some(files) => self
                    .outputs()
                    .insert(doc.id().to_string(), Arc::clone(files)),
                None => self.outputs().remove(doc.id()),
            };
            slot.insert(tracked);
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
            // The command is gone; whatever it left behind goes now.
            finish(tracked).await;
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
        let mut tracked = Tracked::empty();
        tracked.exit = exit.map(|report| watch::channel(Some(report)).1);
        tracked.output = self.outputs().get(doc.id()).cloned();
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
        if let Some(tracked) = cells.remove(&handle.cell_id) {
            // Processes the finished command left behind do not move.
            tokio::spawn(finish(tracked));
        }
        Ok(())
    }

    fn containment(&self) -> Option<Containment> {
        Some(ProcessBackend::containment(self))
    }

    fn attach_data_dir(&self, data_dir: &Path) {
        let mut dir = self.output_dir.lock().unwrap_or_else(|e| e.into_inner());
        if dir.is_none() {
            *dir = Some(data_dir.join(OUTPUT_DIR));
        }
    }

    fn output(&self, cell_id: &str) -> Result<CellOutput, CellError> {
        let files = self
            .outputs()
            .get(cell_id)
            .cloned()
            .ok_or_else(|| CellError::UnknownCell(cell_id.to_string()))?;
        files.read().map_err(|source| CellError::Output {
            id: cell_id.to_string(),
            source,
        })
    }

    fn output_range(
        &self,
        cell_id: &str,
        stdout_from: u64,
        stderr_from: u64,
        max: u64,
    ) -> Result<OutputRange, CellError> {
        let files = self
            .outputs()
            .get(cell_id)
            .cloned()
            .ok_or_else(|| CellError::UnknownCell(cell_id.to_string()))?;
        files
            .read_range(stdout_from, stderr_from, max)
            .map_err(|source| CellError::Output {
                id: cell_id.to_string(),
                source,
            })
    }

    fn adopt_output(&self, cell_id: &str, output: &CellOutput) -> Result<(), CellError> {
        let files = OutputFiles::restore(&self.dir(), cell_id, output).map_err(|source| {
            CellError::Output {
                id: cell_id.to_string(),
                source,
            }
        })?;
        let files = Arc::new(files);
        if let Some(tracked) = self.lock().get_mut(cell_id) {
            tracked.output = Some(Arc::clone(&files));
        }
        self.outputs().insert(cell_id.to_string(), files);
        Ok(())
    }

    fn reopen_output(&self, cell_id: &str, counts: &CellOutput) -> Result<(), CellError> {
        let files = Arc::new(OutputFiles::reopen(&self.dir(), cell_id, counts));
        if let Some(tracked) = self.lock().get_mut(cell_id) {
            tracked.output = Some(Arc::clone(&files));
        }
        self.outputs().insert(cell_id.to_string(), files);
        Ok(())
    }

    fn discard_output(&self, cell_id: &str) {
        if self.lock().contains_key(cell_id) {
            return;
        }
        if let Some(files) = self.outputs().remove(cell_id) {
            files.remove();
        }
    }
}
