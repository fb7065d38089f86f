//! The new process's side: connect to the incumbent, start serving ahead
//! (held), run the session, serve on the commit, take the lock, and hand
//! the node builder what it inherits.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use cellmesh::cell::CELL_KIND;
use cellmesh::compute::{Frozen, KeyCache};
use tokio::net::UnixStream;

use super::{build, UpgradeReport};
use crate::handoff::{
    run_successor, DataDirLock, LockError, Succession, Successor, SuccessorOutcome, Timing,
};
use crate::node::serving::{DaemonPart, Serving};
use crate::node::sockets::Sockets;
use crate::node::StartError;

/// How long a successor waits for the committed incumbent to exit and
/// free the data directory's lock.
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// What a successor goes on with once its daemons serve.
pub(crate) struct Inheritance {
    /// The daemons still to adopt (the cells' kind, registered once the
    /// cells' log is open).
    pub(crate) frozen: Option<Frozen>,
    /// Daemons lost with a dead incumbent.
    pub(crate) lost: Vec<u64>,
    /// What was measured so far.
    pub(crate) report: UpgradeReport,
    pub(crate) began: Instant,
}

/// The successor's part: start serving ahead, held, and adopt what is
/// handed over into it.
struct NodeSuccession {
    part: DaemonPart,
    /// Every kind this build registers, the cells' included.
    kinds: Vec<String>,
    /// The daemons' keys, derived from the identities sent with `Drained`.
    keys: Option<KeyCache>,
    /// The mesh and runtime, started held on the sockets sent with
    /// `Drained`.
    serving: Option<Result<Serving, StartError>>,
    /// Handed daemons not adopted yet.
    frozen: Option<Frozen>,
    sealed_at: Option<Instant>,
    adopted: u64,
    bytes: u64,
    steps: Vec<(&'static str, Duration)>,
}

impl NodeSuccession {
    /// Adopts the handed daemons (but the cells') into the held runtime
    /// and opens their gates: nothing reaches them before the mesh is
    /// released.
    fn take(&mut self, fds: Vec<OwnedFd>) -> Result<u64, String> {
        let Some(Ok(serving)) = &self.serving else {
            return Err(match &self.serving {
                Some(Err(e)) => format!("cannot serve on the handed sockets: {e}"),
                _ => "the sockets were not handed over with Drained".into(),
            });
        };
        let Some(state) = fds.into_iter().next() else {
            return Err("no state descriptor".into());
        };
        let raw = super::sealed_fd::read_handed(state)
            .map_err(|e| format!("reading the handed state: {e}"))?;
        let frozen = match &self.keys {
            Some(keys) => Frozen::decode_shared_with(&raw, keys),
            None => Frozen::decode_shared(&raw),
        }
        .map_err(|e| e.to_string())?;
        for kind in frozen.kinds() {
            if !self.kinds.iter().any(|k| k == kind) {
                return Err(format!(
                    "a handed daemon is of kind {kind:?}, which this build does not register"
                ));
            }
        }
        let daemons = frozen.len() as u64;
        self.bytes = frozen.bytes();
        let adopted = Instant::now();
        let (now, later) = frozen.partition(|kind| kind != CELL_KIND);
        let rt = &serving.rt;
        if !now.is_empty() {
            rt.adopt_frozen(now).map_err(|e| e.to_string())?;
            let _ = rt.open_gates();
        }
        if !later.is_empty() {
            // Not here yet: "not ready", never "not hosted".
            let _ = rt.expect_adoption();
            self.frozen = Some(later);
        }
        self.steps.push(("adopt", adopted.elapsed()));
        self.adopted = daemons;
        Ok(daemons)
    }
}

impl Succession for NodeSuccession {
    async fn prepare(&mut self, fds: Vec<OwnedFd>) {
        let mut fds = fds.into_iter();
        let sockets: Vec<OwnedFd> = fds.by_ref().take(2).collect();
        let identities = fds.next();
        let started = Instant::now();
        // Deriving thousands of keys is CPU work: off the async threads,
        // while the mesh and runtime start.
        let derive = tokio::task::spawn_blocking(move || {
            let fd = identities.ok_or("no identities were sent")?;
            let raw =
                zeroize::Zeroizing::new(super::sealed_fd::read_all(fd).map_err(|e| e.to_string())?);
            KeyCache::derive(&raw).map_err(|e| e.to_string())
        });
        let serve = async {
            match Sockets::from_fds(sockets) {
                Ok(sockets) => Some(self.part.clone().start(sockets, true, true).await),
                Err(reason) => {
                    tracing::warn!(%reason, "no sockets handed ahead");
                    None
                }
            }
        };
        let (derived, serving) = tokio::join!(derive, serve);
        self.serving = serving;
        match derived {
            Ok(Ok(keys)) => self.keys = Some(keys),
            Ok(Err(e)) => tracing::warn!(error = %e, "the identities sent ahead are unusable"),
            Err(e) => tracing::warn!(error = %e, "deriving the keys ahead failed"),
        }
        self.steps.push(("serve_ahead", started.elapsed()));
    }

    async fn restore(
        &mut self,
        _daemons: u64,
        _bytes: u64,
        fds: Vec<OwnedFd>,
    ) -> Result<u64, String> {
        self.sealed_at = Some(Instant::now());
        self.take(fds)
    }
}

/// The handoff protocol versions this build speaks. Test builds (fault
/// injection compiled in) may pretend to be another build with
/// `CELLMESH_HANDOFF_PROTO=MIN..=MAX`.
fn versions() -> std::ops::RangeInclusive<u16> {
    use crate::handoff::wire::{PROTO_MAX, PROTO_MIN};
    let ours = PROTO_MIN..=PROTO_MAX;
    if !cellmesh::fault::ENABLED {
        return ours;
    }
    let Ok(text) = std::env::var("CELLMESH_HANDOFF_PROTO") else {
        return ours;
    };
    let parsed = text
        .split_once("..=")
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    match parsed {
        Some((min, max)) => min..=max,
        None => ours,
    }
}

/// Runs the session with the incumbent listening on `socket`; returns
/// the node's mesh and runtime, serving, what is left to take over, and
/// the data directory's lock.
///
/// The mesh and runtime start ahead, held, on the sockets sent with
/// `Drained`, and the handed daemons are adopted into them before
/// `Ready`: on `Committed` (the incumbent has stopped reading the socket)
/// the mesh is released at once, and only then does the successor wait
/// for the lock (the incumbent's exit), which the cells' log needs. If
/// the incumbent died instead, the lock comes first.
pub(crate) async fn succeed(
    socket: &Path,
    part: DaemonPart,
) -> Result<(Serving, Inheritance, DataDirLock), StartError> {
    let began = Instant::now();
    let fail = |reason: String| StartError::Handoff { reason };
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        fail(format!(
            "cannot reach the incumbent at {}: {e}",
            socket.display()
        ))
    })?;
    let mut machine = Successor::speaking(
        began,
        Timing::default(),
        build(),
        std::process::id(),
        versions(),
    );
    let mut kinds: Vec<String> = part.kinds.iter().map(|(k, _)| k.clone()).collect();
    kinds.push(CELL_KIND.to_string());
    let data_dir = part.config.data_dir.clone();
    let mut me = NodeSuccession {
        part,
        kinds,
        keys: None,
        serving: None,
        frozen: None,
        sealed_at: None,
        adopted: 0,
        bytes: 0,
        steps: Vec::new(),
    };
    let outcome = run_successor(stream, &mut machine, &mut me).await;
    let handshake = began.elapsed();
    let (with_state, lost) = match outcome {
        SuccessorOutcome::TakeOver { with_state, lost } => (with_state, lost.unwrap_or_default()),
        SuccessorOutcome::Exit(reason) => return Err(fail(reason.to_string())),
    };
    let serving = match me.serving.take() {
        Some(Ok(serving)) => serving,
        Some(Err(e)) => return Err(e),
        // The incumbent died before handing its sockets over: once it is
        // gone, bind the node's previous addresses.
        None => {
            let waited = Instant::now();
            let lock = wait_for_lock(&data_dir).await?;
            let lock_wait = waited.elapsed();
            let sockets = Sockets::rebind(&me.part.config)?;
            let serving = me.part.clone().start(sockets, false, false).await?;
            let times = Times {
                began,
                handshake,
                lock_wait,
                released: Instant::now(),
            };
            return Ok(taken_over(serving, lock, me, &machine, lost, times));
        }
    };
    // Serving before the lock only on the incumbent's word that it stopped
    // reading the socket; a dead incumbent has, once the lock is free.
    let waited = Instant::now();
    let (lock, released) = if machine.confirmed() && with_state {
        serving.mesh.release();
        let released = Instant::now();
        (wait_for_lock(&data_dir).await?, released)
    } else {
        let lock = wait_for_lock(&data_dir).await?;
        serving.mesh.release();
        (lock, Instant::now())
    };
    let times = Times {
        began,
        handshake,
        lock_wait: waited.elapsed(),
        released,
    };
    Ok(taken_over(serving, lock, me, &machine, lost, times))
}

/// When the successor's steps happened.
struct Times {
    began: Instant,
    /// The session, from connecting to its end.
    handshake: Duration,
    /// Waiting for the incumbent to free the lock.
    lock_wait: Duration,
    /// When the mesh was released (the node served again).
    released: Instant,
}

/// Waits for the incumbent to free the data directory's lock.
async fn wait_for_lock(data_dir: &Path) -> Result<DataDirLock, StartError> {
    DataDirLock::acquire_by(
        data_dir,
        Instant::now() + LOCK_WAIT,
        Duration::from_millis(1),
    )
    .await
    .map_err(|e| match e {
        LockError::Held(path) => StartError::DataDirInUse { path },
        LockError::Io { path, source } => StartError::DataDir {
            path,
            reason: format!("cannot lock it: {source}"),
        },
    })
}

/// What the successor goes on with, its report so far.
fn taken_over(
    serving: Serving,
    lock: DataDirLock,
    me: NodeSuccession,
    machine: &Successor,
    lost: Vec<u64>,
    times: Times,
) -> (Serving, Inheritance, DataDirLock) {
    cellmesh::fault::reached("handoff.successor.took_over");
    let mut report = UpgradeReport {
        handoff_id: machine.id().map(|id| id.to_string()).unwrap_or_default(),
        incumbent_pid: machine.incumbent_pid().unwrap_or(0),
        successor_pid: std::process::id(),
        lost: lost.iter().map(|o| format!("{o:016x}")).collect(),
        daemons: me.adopted,
        bytes: me.bytes,
        ..UpgradeReport::default()
    };
    for (name, took) in &me.steps {
        report.step(name, *took);
    }
    report.step("handoff", times.handshake);
    report.step("incumbent_exit", times.lock_wait);
    report.frozen_seconds = me
        .sealed_at
        .map_or(0.0, |at| (times.released - at).as_secs_f64());
    (
        serving,
        Inheritance {
            frozen: me.frozen,
            lost,
            report,
            began: times.began,
        },
        lock,
    )
}

impl Inheritance {
    /// Adopts the handed daemons whose kind `now` accepts into `rt`
    /// (started) and opens their gates; the rest wait for a later call
    /// (the cells' kind is registered only once the cells' log is open).
    /// Returns the origins adopted.
    pub(crate) fn adopt(
        &mut self,
        rt: &cellmesh::compute::DaemonRuntime,
        metrics: &crate::metrics::Metrics,
        now: impl Fn(&str) -> bool,
        step: &str,
    ) -> Vec<u64> {
        let Some(frozen) = self.frozen.take() else {
            return Vec::new();
        };
        let (batch, later) = frozen.partition(now);
        if !later.is_empty() {
            self.frozen = Some(later);
        }
        let origins: Vec<u64> = batch.origins().collect();
        let adopted = Instant::now();
        let outcome = if batch.is_empty() {
            Ok(())
        } else {
            rt.adopt_frozen(batch).map(|_| ())
        };
        self.report.step(step, adopted.elapsed());
        let opened = Instant::now();
        // Also after a failure: events for them are no longer held.
        let _ = rt.open_gates();
        self.report
            .step(&format!("{step}_open_gates"), opened.elapsed());
        let adopted = match outcome {
            Ok(()) => origins,
            Err(e) => {
                // Committed: the previous process is gone, and so are they.
                tracing::error!(error = %e, daemons = origins.len(), "handed daemons could not be adopted and are lost");
                metrics.upgrade_daemons_lost.inc_by(origins.len() as u64);
                self.report
                    .lost
                    .extend(origins.iter().map(|o| format!("{o:016x}")));
                self.report.daemons = self.report.daemons.saturating_sub(origins.len() as u64);
                Vec::new()
            }
        };
        if self.frozen.is_some() {
            // The rest are not here yet: not ready, never "not hosted".
            let _ = rt.expect_adoption();
        }
        adopted
    }

    /// Supervises here the cells handed over with the daemons of
    /// `origins` (adopted cell daemons); a cell that cannot be is
    /// reported, never dropped silently.
    pub(crate) async fn take_over_cells(&mut self, cells: &cellmesh::cell::Cells, origins: &[u64]) {
        let took = Instant::now();
        for (origin, error) in cells.take_over(origins).await {
            tracing::error!(
                origin = %format!("{origin:016x}"),
                %error,
                "a handed cell is not supervised here: destroy it and apply it again"
            );
            self.report
                .cells_unsupervised
                .push(format!("{origin:016x}"));
        }
        self.report.step("take_over_cells", took.elapsed());
    }

    /// Ends the takeover: reports lost daemons and what was measured.
    pub(crate) fn finish(
        mut self,
        rt: &cellmesh::compute::DaemonRuntime,
        metrics: &crate::metrics::Metrics,
        data_dir: &Path,
    ) -> UpgradeReport {
        // Whatever is left has a kind nothing registered.
        self.adopt(rt, metrics, |_| true, "adopt_rest");
        for origin in &self.lost {
            tracing::error!(
                origin = %format!("{origin:016x}"),
                "daemon lost: the previous process died before handing it over"
            );
        }
        metrics.upgrade_daemons_lost.inc_by(self.lost.len() as u64);
        // Served or reported: nothing of the handoff is pending any more.
        let _ = std::fs::remove_file(data_dir.join(super::PENDING_FILE));
        let mut report = self.report;
        report.total_seconds = self.began.elapsed().as_secs_f64();
        metrics.upgrades.inc();
        tracing::info!(
            daemons = report.daemons,
            bytes = report.bytes,
            frozen_ms = report.frozen_seconds * 1e3,
            total_ms = report.total_seconds * 1e3,
            lost = report.lost.len(),
            "took the node over"
        );
        report
    }
}
