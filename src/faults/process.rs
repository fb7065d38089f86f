//! A mesh node in its own OS process, for faults a process can suffer:
//! `SIGKILL`, `SIGSTOP` / `SIGCONT`, optionally at a named protocol point.
//!
//! [`NodeProcess::start`] re-executes the current test binary so that its
//! node entry test runs the [node program](super::node) (see there for the
//! command protocol). Every command is bounded by a timeout; a stopped or
//! dead node answers [`ProcessError::Timeout`] or [`ProcessError::Gone`].
//! The child is killed when the `NodeProcess` is dropped, and also when the
//! parent dies (`PR_SET_PDEATHSIG`): no orphan outlives a test.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::node::{rss_kib, MARK, NODE_ENV};

mod answers;
pub use answers::{HostState, Hosted, MigrateArgs, Migration, Outcome, ProcessError, Reply};

/// How a node process is started.
#[derive(Debug, Clone)]
pub struct NodeOpts {
    /// The test (in the current binary) that calls
    /// [`node_entry`](super::node_entry). Default `node_entry`.
    pub entry: String,
    /// `CELLMESH_FAULT_AT`, e.g. `migrate.target.ready_sent=stop`.
    pub fault_at: Option<String>,
    /// The mesh idle timeout (the node's default when `None`).
    pub idle_timeout: Option<Duration>,
    /// The keep-alive interval.
    pub keep_alive: Option<Duration>,
    /// Seed peers joined at build.
    pub join: Vec<SocketAddr>,
    /// Bound on each command (not `send`, which has its own).
    pub command_timeout: Duration,
}

impl Default for NodeOpts {
    fn default() -> Self {
        Self {
            entry: "node_entry".into(),
            fault_at: None,
            idle_timeout: None,
            keep_alive: None,
            join: Vec::new(),
            command_timeout: Duration::from_secs(10),
        }
    }
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

/// A node running in a child process. Killed on drop.
pub struct NodeProcess {
    pid: u32,
    node: String,
    addr: SocketAddr,
    child: tokio::sync::Mutex<Child>,
    stdin: tokio::sync::Mutex<ChildStdin>,
    replies: Waiters,
    outcomes: Waiters,
    next_tag: AtomicU64,
    command_timeout: Duration,
    reader: JoinHandle<()>,
    /// Set once the child is reaped: its pid may be reused, no more signals.
    reaped: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for NodeProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeProcess")
            .field("pid", &self.pid)
            .field("node", &&self.node[..8.min(self.node.len())])
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl NodeProcess {
    /// Starts a node process and waits (bounded) for its `ready` line.
    ///
    /// # Errors
    /// [`ProcessError::Spawn`] if it could not start or did not get ready.
    pub async fn start(opts: NodeOpts) -> Result<Self, ProcessError> {
        let exe = std::env::current_exe().map_err(|e| ProcessError::Spawn(e.to_string()))?;
        let mut cmd = Command::new(exe);
        cmd.args(["--exact", &opts.entry, "--nocapture", "--test-threads=1"])
            .env(NODE_ENV, "1")
            .env_remove("CELLMESH_FAULT_AT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(at) = &opts.fault_at {
            cmd.env("CELLMESH_FAULT_AT", at);
        }
        if let Some(idle) = opts.idle_timeout {
            cmd.env("CELLMESH_FAULT_NODE_IDLE_MS", idle.as_millis().to_string());
        }
        if let Some(beat) = opts.keep_alive {
            cmd.env(
                "CELLMESH_FAULT_NODE_KEEPALIVE_MS",
                beat.as_millis().to_string(),
            );
        }
        if !opts.join.is_empty() {
            let join: Vec<String> = opts.join.iter().map(ToString::to_string).collect();
            cmd.env("CELLMESH_FAULT_NODE_JOIN", join.join(","));
        }
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to
        // kill the child when the parent thread dies.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| ProcessError::Spawn(e.to_string()))?;
        let pid = child.id().unwrap_or(0);
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(ProcessError::Spawn("no stdio pipes".into()));
        };
        let replies: Waiters = Arc::default();
        let outcomes: Waiters = Arc::default();
        let (ready_tx, ready_rx) = oneshot::channel();
        lock(&replies).insert(0, ready_tx);
        let reader = tokio::spawn(read_answers(
            stdout,
            Arc::clone(&replies),
            Arc::clone(&outcomes),
        ));
        let ready = tokio::time::timeout(Duration::from_secs(30), ready_rx).await;
        let ready = match ready {
            Ok(Ok(reply)) if reply.status == "ready" => reply,
            other => {
                let _ = child.start_kill();
                return Err(ProcessError::Spawn(format!("no ready line: {other:?}")));
            }
        };
        let node = ready.get("node").unwrap_or_default().to_owned();
        let addr = ready
            .get("addr")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| ProcessError::Spawn(format!("bad ready line {ready:?}")))?;
        Ok(Self {
            pid,
            node,
            addr,
            child: tokio::sync::Mutex::new(child),
            stdin: tokio::sync::Mutex::new(stdin),
            replies,
            outcomes,
            next_tag: AtomicU64::new(1),
            command_timeout: opts.command_timeout,
            reader,
            reaped: false.into(),
        })
    }

    /// The node's id (hex).
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// The node's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `line` and waits up to `within` for its answer; registers an
    /// outcome waiter too when `outcome` is given.
    async fn call(
        &self,
        line: &str,
        within: Duration,
        outcome: Option<oneshot::Sender<Reply>>,
    ) -> Result<Reply, ProcessError> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.replies).insert(tag, tx);
        if let Some(outcome) = outcome {
            lock(&self.outcomes).insert(tag, outcome);
        }
        let command = line.to_owned();
        let written = {
            let mut stdin = self.stdin.lock().await;
            let text = format!("{tag} {line}\n");
            tokio::time::timeout(within, async {
                stdin.write_all(text.as_bytes()).await?;
                stdin.flush().await
            })
            .await
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                lock(&self.replies).remove(&tag);
                return Err(ProcessError::Gone { command });
            }
            Err(_) => {
                lock(&self.replies).remove(&tag);
                return Err(ProcessError::Timeout { command });
            }
        }
        let reply = match tokio::time::timeout(within, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return Err(ProcessError::Gone { command }),
            Err(_) => {
                lock(&self.replies).remove(&tag);
                return Err(ProcessError::Timeout { command });
            }
        };
        if reply.status == "err" {
            return Err(ProcessError::Failed {
                command,
                err: reply.get("err").unwrap_or("?").to_owned(),
                message: reply.message,
            });
        }
        Ok(reply)
    }

    fn field<T: std::str::FromStr>(
        line: &str,
        reply: &Reply,
        key: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, ProcessError> {
        reply
            .get(key)
            .and_then(parse)
            .ok_or_else(|| ProcessError::BadAnswer {
                command: line.to_owned(),
                line: format!("{reply:?}"),
            })
    }

    /// Connects to the node at `addr`; the peer's id (hex).
    ///
    /// # Errors
    /// The node's `DialError` as [`ProcessError::Failed`], or no answer.
    pub async fn connect(&self, addr: SocketAddr) -> Result<String, ProcessError> {
        let line = format!("connect {addr}");
        let reply = self.call(&line, self.command_timeout, None).await?;
        Self::field(&line, &reply, "peer", |v| Some(v.to_owned()))
    }

    /// Spawns a counter under the identity from `seed`, its state carrying
    /// `ballast` extra bytes; its origin hash.
    ///
    /// # Errors
    /// The node's `DaemonError`, or no answer.
    pub async fn spawn_counter(&self, seed: [u8; 32], ballast: usize) -> Result<u64, ProcessError> {
        let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
        let line = format!("spawn {hex} ballast={ballast}");
        let reply = self.call(&line, self.command_timeout, None).await?;
        Self::field(&line, &reply, "origin", |v| u64::from_str_radix(v, 16).ok())
    }

    /// Starts migrating `origin` to the node `target` (hex id); the outcome
    /// comes through the returned [`Migration`].
    ///
    /// # Errors
    /// The node's `MigrateError` from `start_migration`, or no answer.
    pub async fn migrate(
        &self,
        origin: u64,
        target: &str,
        args: &MigrateArgs,
    ) -> Result<Migration, ProcessError> {
        let mut line = format!("migrate {origin:016x} {target}");
        if let Some(chunk) = args.chunk {
            line.push_str(&format!(" chunk={chunk}"));
        }
        if let Some(d) = args.deadline {
            line.push_str(&format!(" deadline_ms={}", d.as_millis()));
        }
        if let Some(s) = args.silence {
            line.push_str(&format!(" silence_ms={}", s.as_millis()));
        }
        let (tx, outcome) = oneshot::channel();
        let reply = self.call(&line, self.command_timeout, Some(tx)).await?;
        let id = Self::field(&line, &reply, "id", |v| u64::from_str_radix(v, 16).ok())?;
        Ok(Migration { id, outcome })
    }

    /// Sends event `seq` from sender origin `from` to daemon `origin`
    /// through this node (`rt.send`); the count the counter answered. The
    /// node gives up after `within` (`Failed { err: "Timeout" }`).
    ///
    /// # Errors
    /// The node's `DaemonError` (`Duplicate`, `Unreachable`, ...) as
    /// [`ProcessError::Failed`], or no answer.
    pub async fn send(
        &self,
        origin: u64,
        from: u64,
        seq: u64,
        within: Duration,
    ) -> Result<u64, ProcessError> {
        let line = format!(
            "send {origin:016x} {seq} from={from} timeout_ms={}",
            within.as_millis()
        );
        let reply = self
            .call(&line, within + Duration::from_secs(1), None)
            .await?;
        Self::field(&line, &reply, "count", |v| v.parse().ok())
    }

    /// Sends `n` events of `bytes` each to `origin` from `from`, sequences
    /// from `first`, `width` at a time, each abandoned after `within`;
    /// returns how many were (accepted, refused busy, abandoned, other).
    ///
    /// # Errors
    /// No answer within `limit`.
    #[allow(clippy::too_many_arguments)]
    pub async fn flood(
        &self,
        origin: u64,
        from: u64,
        first: u64,
        n: u64,
        bytes: usize,
        within: Duration,
        limit: Duration,
    ) -> Result<[u64; 4], ProcessError> {
        let line = format!(
            "flood {origin:016x} {n} {bytes} from={from} first={first} timeout_ms={}",
            within.as_millis()
        );
        let reply = self.call(&line, limit, None).await?;
        let mut counts = [0; 4];
        for (slot, key) in counts.iter_mut().zip(["ok", "busy", "timeout", "other"]) {
            *slot = Self::field(&line, &reply, key, |v| v.parse().ok())?;
        }
        Ok(counts)
    }

    /// Whether daemon `origin` runs here, and its count.
    ///
    /// # Errors
    /// No answer.
    pub async fn hosted(&self, origin: u64) -> Result<Hosted, ProcessError> {
        let line = format!("hosted {origin:016x}");
        let reply = self.call(&line, self.command_timeout, None).await?;
        let state = match reply.get("state") {
            Some("active") => HostState::Active,
            Some("held") => HostState::Held,
            Some("absent") => HostState::Absent,
            _ => {
                return Err(ProcessError::BadAnswer {
                    command: line,
                    line: format!("{reply:?}"),
                })
            }
        };
        let count = reply.get("count").and_then(|c| c.parse().ok());
        Ok(Hosted { state, count })
    }

    /// The node's connected peers (hex ids).
    ///
    /// # Errors
    /// No answer.
    pub async fn peers(&self) -> Result<Vec<String>, ProcessError> {
        let reply = self.call("peers", self.command_timeout, None).await?;
        Ok(reply
            .get("peers")
            .unwrap_or_default()
            .split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// The node's resident memory in KiB, as it reports it.
    ///
    /// # Errors
    /// No answer.
    pub async fn rss_kib(&self) -> Result<u64, ProcessError> {
        let reply = self.call("rss", self.command_timeout, None).await?;
        Self::field("rss", &reply, "rss_kib", |v| v.parse().ok())
    }

    /// The resident memory read from `/proc` by the parent (works while the
    /// node is stopped); `None` once it is gone.
    pub fn rss_from_proc(&self) -> Option<u64> {
        rss_kib(self.pid)
    }

    /// Asks the node to exit and waits (bounded) for it.
    ///
    /// # Errors
    /// No answer.
    pub async fn quit(&self) -> Result<(), ProcessError> {
        self.call("quit", self.command_timeout, None).await?;
        let _ = self.wait_exit(self.command_timeout).await;
        Ok(())
    }

    fn signal(&self, signal: libc::c_int) {
        if self.pid != 0 && !self.reaped.load(Ordering::SeqCst) {
            // SAFETY: kill only sends a signal to our own child's pid (not
            // reused while we hold the unreaped `Child`).
            unsafe {
                libc::kill(self.pid as libc::pid_t, signal);
            }
        }
    }

    /// `SIGSTOP`: the node freezes as a stalled machine would.
    pub fn stop(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// `SIGCONT`: the node runs on.
    pub fn cont(&self) {
        self.signal(libc::SIGCONT);
    }

    /// `SIGKILL`, then waits (bounded) for the process to be reaped.
    pub async fn kill(&self) {
        self.signal(libc::SIGKILL);
        let _ = self.wait_exit(Duration::from_secs(10)).await;
    }

    /// Waits up to `within` for the process to exit; its status (`None`:
    /// still running).
    pub async fn wait_exit(&self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.lock().await;
        let status = tokio::time::timeout(within, child.wait())
            .await
            .ok()?
            .ok()?;
        self.reaped.store(true, Ordering::SeqCst);
        Some(status)
    }

    /// Whether the process is stopped (state `T` in `/proc/PID/stat`).
    pub fn is_stopped(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|stat| {
                let after = stat.rsplit_once(')')?.1;
                after.split_whitespace().next().map(|s| s == "T")
            })
            .unwrap_or(false)
    }

    /// Waits up to `within` for the node to stop itself at its armed fault
    /// point (`NAME=stop`). There is no event for another process's stop,
    /// so `/proc` is read every 5 ms.
    pub async fn wait_stopped_at_fault_point(&self, within: Duration) -> bool {
        let until = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < until {
            if self.is_stopped() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.is_stopped()
    }

    /// Waits up to `within` for the node to kill itself at its armed fault
    /// point (`NAME=kill`): whether it died of `SIGKILL`.
    pub async fn wait_killed_at_fault_point(&self, within: Duration) -> bool {
        use std::os::unix::process::ExitStatusExt;
        self.wait_exit(within)
            .await
            .is_some_and(|s| s.signal() == Some(libc::SIGKILL))
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // A stopped process dies of SIGKILL too; `kill_on_drop` reaps it.
        self.signal(libc::SIGKILL);
        self.reader.abort();
    }
}

/// Routes answer lines to their waiters until the output ends.
async fn read_answers(stdout: tokio::process::ChildStdout, replies: Waiters, outcomes: Waiters) {
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Some(at) = line.find(MARK) else { continue };
        let (tag, reply) = Reply::parse(&line[at + MARK.len()..]);
        let waiters = if reply.status == "outcome" {
            &outcomes
        } else {
            &replies
        };
        if let Some(tx) = lock(waiters).remove(&tag) {
            let _ = tx.send(reply);
        }
    }
    lock(&replies).clear();
    lock(&outcomes).clear();
}
