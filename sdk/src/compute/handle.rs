//! Handles and per-daemon configuration.

use std::fmt;

use super::error::DaemonError;
use super::runtime::DaemonRuntime;
use super::snapshot::StateSnapshot;
use super::stats::DaemonStats;

/// How a daemon is hosted.
///
/// Build it from [`Default`] with the setters (the struct is
/// `#[non_exhaustive]`, so a struct literal does not compile outside this
/// crate):
///
/// ```
/// use cellmesh::compute::DaemonHostConfig;
///
/// let config = DaemonHostConfig::default().max_snapshot_bytes(64 << 20);
/// assert_eq!(config.max_snapshot_bytes, 64 << 20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DaemonHostConfig {
    /// The largest state (in bytes) a snapshot of this daemon may carry; a
    /// larger one fails with `ProcessError::SnapshotFailed`. Defaults to
    /// 1 GiB, the most a snapshot can encode.
    pub max_snapshot_bytes: u64,
}

impl Default for DaemonHostConfig {
    fn default() -> Self {
        Self {
            max_snapshot_bytes: 1 << 30,
        }
    }
}

impl DaemonHostConfig {
    /// Sets `max_snapshot_bytes`.
    #[must_use]
    pub fn max_snapshot_bytes(mut self, bytes: u64) -> Self {
        self.max_snapshot_bytes = bytes;
        self
    }
}

/// A handle to a spawned daemon. Cheap to clone; it does not keep the
/// daemon alive: once the daemon is stopped its methods answer `NotFound`.
#[derive(Clone)]
pub struct DaemonHandle {
    /// The daemon's origin hash (its identity's routing projection).
    pub origin_hash: u64,
    pub(crate) runtime: DaemonRuntime,
}

impl DaemonHandle {
    /// The daemon's counters.
    ///
    /// # Errors
    /// [`DaemonError::NotFound`] once the daemon is stopped or gone.
    pub fn stats(&self) -> Result<DaemonStats, DaemonError> {
        self.runtime.stats(self.origin_hash)
    }

    /// Takes a snapshot (see [`DaemonRuntime::snapshot`]).
    ///
    /// # Errors
    /// As [`DaemonRuntime::snapshot`].
    pub async fn snapshot(&self) -> Result<Option<StateSnapshot>, DaemonError> {
        self.runtime.snapshot(self.origin_hash).await
    }
}

impl fmt::Debug for DaemonHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DaemonHandle({:016x})", self.origin_hash)
    }
}
