//! The new process's side: connect to the incumbent, run the session,
//! take the lock, and hand the node builder what it inherits.

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cellmesh::compute::{Frozen, KeyCache};
use tokio::net::UnixStream;

use super::{build, UpgradeReport};
use crate::handoff::{
    run_successor, DataDirLock, LockError, Succession, Successor, SuccessorOutcome, Timing,
};
use crate::node::sockets::Sockets;
use crate::node::StartError;

/// How long a successor waits for the committed incumbent to exit and
/// free the data directory's lock.
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// What a successor starts the node with.
pub(crate) struct Inheritance {
    /// The incumbent's sockets (absent if it died before sealing: the
    /// successor binds the configured addresses).
    pub(crate) sockets: Option<Sockets>,
    /// The daemons, to adopt once the runtime starts.
    pub(crate) frozen: Option<Frozen>,
    /// Daemons lost with a dead incumbent.
    pub(crate) lost: Vec<u64>,
    /// What was measured so far.
    pub(crate) report: UpgradeReport,
    /// When the incumbent reported its daemons frozen.
    pub(crate) sealed_at: Option<Instant>,
    pub(crate) began: Instant,
}

/// The successor's part: keep what was handed over until the commit.
struct NodeSuccession {
    kinds: Vec<String>,
    /// The daemons' keys, derived from the identities sent with `Drained`.
    keys: Option<KeyCache>,
    sockets: Option<Sockets>,
    frozen: Option<Frozen>,
    sealed_at: Option<Instant>,
}

impl NodeSuccession {
    fn take(&mut self, fds: Vec<OwnedFd>) -> Result<u64, String> {
        if fds.len() != 3 {
            return Err(format!(
                "the incumbent handed over {} descriptors, not 3 (UDP socket, control listener, state)",
                fds.len()
            ));
        }
        let mut fds = fds.into_iter();
        let sockets: Vec<OwnedFd> = fds.by_ref().take(2).collect();
        let sockets = Sockets::from_fds(sockets)?;
        let Some(state) = fds.next() else {
            return Err("no state descriptor".into());
        };
        let mut file = std::fs::File::from(state);
        let mut raw = Vec::new();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_end(&mut raw))
            .map_err(|e| format!("reading the handed state: {e}"))?;
        let raw = Bytes::from(raw);
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
        self.sockets = Some(sockets);
        self.frozen = Some(frozen);
        Ok(daemons)
    }
}

impl Succession for NodeSuccession {
    async fn prepare(&mut self, fds: Vec<OwnedFd>) {
        let Some(fd) = fds.into_iter().next() else {
            return;
        };
        // Deriving thousands of keys is CPU work: off the async threads.
        let derived = tokio::task::spawn_blocking(move || {
            let mut file = std::fs::File::from(fd);
            let mut raw = zeroize::Zeroizing::new(Vec::new());
            file.seek(SeekFrom::Start(0))
                .and_then(|_| file.read_to_end(&mut raw))
                .map_err(|e| e.to_string())?;
            KeyCache::derive(&raw).map_err(|e| e.to_string())
        })
        .await;
        match derived {
            Ok(Ok(keys)) => self.keys = Some(keys),
            Ok(Err(e)) => tracing::warn!(error = %e, "the identities sent ahead are unusable"),
            Err(e) => tracing::warn!(error = %e, "deriving the keys ahead failed"),
        }
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

/// Runs the session with the incumbent listening on `socket`, then takes
/// the lock of `data_dir`. `kinds` are the daemon kinds this build
/// registers (a handed daemon of another kind is refused before `Ready`).
pub(crate) async fn succeed(
    socket: &Path,
    data_dir: &Path,
    kinds: Vec<String>,
) -> Result<(Inheritance, DataDirLock), StartError> {
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
    let mut me = NodeSuccession {
        kinds,
        keys: None,
        sockets: None,
        frozen: None,
        sealed_at: None,
    };
    let outcome = run_successor(stream, &mut machine, &mut me).await;
    let handshake = began.elapsed();
    let (with_state, lost) = match outcome {
        SuccessorOutcome::TakeOver { with_state, lost } => (with_state, lost.unwrap_or_default()),
        SuccessorOutcome::Exit(reason) => return Err(fail(reason.to_string())),
    };
    let waited = Instant::now();
    let lock = DataDirLock::acquire_by(
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
    })?;
    cellmesh::fault::reached("handoff.successor.took_over");
    let mut report = UpgradeReport {
        handoff_id: machine.id().map(|id| id.to_string()).unwrap_or_default(),
        incumbent_pid: machine.incumbent_pid().unwrap_or(0),
        successor_pid: std::process::id(),
        lost: lost.iter().map(|o| format!("{o:016x}")).collect(),
        ..UpgradeReport::default()
    };
    report.step("handoff", handshake);
    report.step("incumbent_exit", waited.elapsed());
    let frozen = if with_state { me.frozen.take() } else { None };
    if let Some(frozen) = &frozen {
        report.daemons = frozen.len() as u64;
        report.bytes = frozen.bytes();
    }
    Ok((
        Inheritance {
            // Without the state, sockets handed over are still the
            // node's: keep serving on them.
            sockets: me.sockets.take(),
            frozen,
            lost,
            report,
            sealed_at: me.sealed_at,
            began,
        },
        lock,
    ))
}

impl Inheritance {
    /// Adopts the handed daemons whose kind `now` accepts into `rt`
    /// (started) and opens their gates; the rest wait for a later call
    /// (the cells' kind is registered only once the cells' log is open).
    /// Returns whether daemons are still to adopt.
    pub(crate) fn adopt(
        &mut self,
        rt: &cellmesh::compute::DaemonRuntime,
        metrics: &crate::metrics::Metrics,
        now: impl Fn(&str) -> bool,
        step: &str,
    ) -> bool {
        let Some(frozen) = self.frozen.take() else {
            return false;
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
        if let Err(e) = outcome {
            // Committed: the previous process is gone, and so are they.
            tracing::error!(error = %e, daemons = origins.len(), "handed daemons could not be adopted and are lost");
            metrics.upgrade_daemons_lost.inc_by(origins.len() as u64);
            self.report
                .lost
                .extend(origins.iter().map(|o| format!("{o:016x}")));
            self.report.daemons = self.report.daemons.saturating_sub(origins.len() as u64);
        }
        let more = self.frozen.is_some();
        if more {
            // The rest are not here yet: not ready, never "not hosted".
            let _ = rt.expect_adoption();
        }
        more
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
        report.frozen_seconds = self.sealed_at.map_or(0.0, |at| at.elapsed().as_secs_f64());
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
