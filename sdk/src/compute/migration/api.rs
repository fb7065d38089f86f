//! The public face of migration: options, the handle, the report, errors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::NodeId;

/// How a migration runs. `Default` suits a LAN.
///
/// Build it from [`Default`] with the setters (the struct is
/// `#[non_exhaustive]`, so a struct literal does not compile outside this
/// crate):
///
/// ```
/// use std::time::Duration;
/// use cellmesh::compute::MigrationOpts;
///
/// let opts = MigrationOpts::default()
///     .deadline(Duration::from_secs(10))
///     .silence(Duration::from_secs(2))
///     .transport_identity(false);
/// assert_eq!(opts.deadline, Duration::from_secs(10));
/// assert_eq!(opts.silence, Duration::from_secs(2));
/// assert!(!opts.transport_identity);
/// assert_eq!(opts.retries, MigrationOpts::default().retries);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationOpts {
    /// The whole migration must commit within this. Default 30 s.
    pub deadline: Duration,
    /// Snapshot bytes per message. Default 1 MiB.
    pub chunk_size: usize,
    /// Send the daemon's secret key to the target (over the encrypted,
    /// admitted connection), so the target needs no prior call. Default
    /// `true`; with `false` the key never leaves the source and the target
    /// must have been given the identity with
    /// `expect_migration_with_identity` (otherwise it refuses:
    /// `IdentityMismatch`).
    pub transport_identity: bool,
    /// Attempts (including the first) while the target answers "not ready".
    /// Default 3.
    pub retries: u32,
    /// Pause between those attempts. Default 100 ms.
    pub retry_backoff: Duration,
    /// Silence from the peer after which it counts as lost. Default 5 s.
    pub silence: Duration,
    /// After commit, how long the source keeps forwarding late events
    /// before it answers them with a redirect. Default 5 s.
    pub straggler_grace: Duration,
}

impl Default for MigrationOpts {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(30),
            chunk_size: 1 << 20,
            transport_identity: true,
            retries: 3,
            retry_backoff: Duration::from_millis(100),
            silence: Duration::from_secs(5),
            straggler_grace: Duration::from_secs(5),
        }
    }
}

impl MigrationOpts {
    /// Sets `deadline`.
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Sets `chunk_size`.
    #[must_use]
    pub fn chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = bytes;
        self
    }

    /// Sets `transport_identity`.
    #[must_use]
    pub fn transport_identity(mut self, send_key: bool) -> Self {
        self.transport_identity = send_key;
        self
    }

    /// Sets `retries`.
    #[must_use]
    pub fn retries(mut self, attempts: u32) -> Self {
        self.retries = attempts;
        self
    }

    /// Sets `retry_backoff`.
    #[must_use]
    pub fn retry_backoff(mut self, pause: Duration) -> Self {
        self.retry_backoff = pause;
        self
    }

    /// Sets `silence`.
    #[must_use]
    pub fn silence(mut self, silence: Duration) -> Self {
        self.silence = silence;
        self
    }

    /// Sets `straggler_grace`.
    #[must_use]
    pub fn straggler_grace(mut self, grace: Duration) -> Self {
        self.straggler_grace = grace;
        self
    }
}

/// Where a migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum MigrationPhase {
    /// The target checks readiness, factory, capabilities and identity.
    Prepare,
    /// The source stopped processing the daemon and seals its snapshot.
    Seal,
    /// The snapshot travels.
    Transfer,
    /// The target restores it (gated, not yet owner).
    Restore,
    /// Ownership is flipping.
    Commit,
    /// The connection failed after commit was sent; asking the target.
    Resolve,
    /// The target owns the daemon.
    Committed,
    /// The migration failed; the daemon runs on the source.
    Failed,
}

/// What a finished migration measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The migration's id.
    pub migration_id: u64,
    /// The daemon.
    pub origin_hash: u64,
    /// Where it runs now.
    pub target: NodeId,
    /// From `start_migration` to the end of the blackout.
    pub total: Duration,
    /// Time spent in each phase, in order.
    pub phases: Vec<(MigrationPhase, Duration)>,
    /// From the moment the source stopped processing the daemon's events
    /// to the moment the target processed its first, as the source learns
    /// it: the target's commit acknowledgement, which it sends after
    /// processing the events `Commit` carried (and from which on it
    /// processes events as they come); if the carried events' outcomes were
    /// lost, its answer to the first event forwarded to it.
    pub blackout: Duration,
    /// Size of the sealed snapshot (signed, or checksummed when the key
    /// travelled).
    pub snapshot_bytes: u64,
    /// Events that arrived at the source while the daemon was frozen and
    /// went, in order, to the target: carried in `Commit` (the first ones)
    /// or forwarded after it.
    pub events_forwarded: u64,
}

/// Why a migration could not start or did not commit. Unless it says
/// otherwise the daemon keeps running on the source with its state and
/// every event it accepted (events that arrived meanwhile are processed
/// there, in order).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// No such daemon on this node.
    #[error("daemon {0:016x} does not run on this node")]
    UnknownDaemon(u64),
    /// The daemon is migrating already.
    #[error("daemon {0:016x} is already migrating")]
    AlreadyMigrating(u64),
    /// The node's runtime is frozen for a handoff of its process
    /// ([`DaemonRuntime::freeze`](crate::compute::DaemonRuntime::freeze)):
    /// no migration starts until it thaws (retriable).
    #[error("daemon {0:016x} cannot migrate: its runtime is frozen for a handoff of the node (retry after it)")]
    HandingOff(u64),
    /// The target is this node.
    #[error("daemon {0:016x} cannot migrate to the node it runs on")]
    TargetIsSelf(u64),
    /// The target is not a known member of the mesh.
    #[error("target node {0} is not known to this node")]
    TargetUnknown(NodeId),
    /// The target could not be reached or the connection failed.
    #[error(
        "target node {target} is unreachable: {reason}; the daemon keeps running on the source"
    )]
    TargetUnreachable {
        /// The target.
        target: NodeId,
        /// What failed.
        reason: String,
    },
    /// The target's runtime is not ready (retriable).
    #[error("target node {0} is not ready to accept daemons (retriable); the daemon keeps running on the source")]
    TargetNotReady(NodeId),
    /// The target has no factory for the daemon's kind.
    #[error("target node {target} has no factory for kind {kind:?}; the daemon keeps running on the source")]
    FactoryNotFound {
        /// The target.
        target: NodeId,
        /// The kind.
        kind: String,
    },
    /// The target does not meet the daemon's requirements.
    #[error("target node {target} does not meet the daemon's requirements: {unmet}; the daemon keeps running on the source")]
    CapabilityMismatch {
        /// The target.
        target: NodeId,
        /// What it lacks.
        unmet: String,
    },
    /// The target hosts this daemon already.
    #[error("target node {0} already hosts this daemon; the daemon keeps running on the source")]
    AlreadyHosted(NodeId),
    /// The identity did not match (or was not available) on the target.
    #[error("identity mismatch on target node {target}: {reason}; the daemon keeps running on the source")]
    IdentityMismatch {
        /// The target.
        target: NodeId,
        /// What did not match.
        reason: String,
    },
    /// The daemon's snapshot could not be taken.
    #[error("snapshot of daemon {origin_hash:016x} failed: {reason}; the daemon keeps running on the source")]
    SnapshotFailed {
        /// The daemon.
        origin_hash: u64,
        /// Why.
        reason: String,
    },
    /// Restoring on the target failed.
    #[error(
        "restore on target node {target} failed: {reason}; the daemon keeps running on the source"
    )]
    RestoreFailed {
        /// The target.
        target: NodeId,
        /// Why.
        reason: String,
    },
    /// The deadline passed before commit.
    #[error(
        "migration of daemon {0:016x} missed its deadline; the daemon keeps running on the source"
    )]
    DeadlineExceeded(u64),
    /// Cancelled before commit.
    #[error("migration of daemon {0:016x} was cancelled; the daemon keeps running on the source")]
    Cancelled(u64),
    /// `cancel` came after the commit point.
    #[error("migration of daemon {0:016x} is past its commit point and cannot be cancelled")]
    PastCommit(u64),
    /// The peer broke the protocol.
    #[error(
        "protocol violation with node {target}: {reason}; the daemon keeps running on the source"
    )]
    Protocol {
        /// The peer.
        target: NodeId,
        /// What it did.
        reason: String,
    },
    /// The connection failed after commit was sent and the target has not
    /// answered by the deadline. The daemon is frozen on the source (its
    /// events queue, nothing is processed twice) until the target answers;
    /// the source keeps asking and then forwards or resumes.
    #[error("migration of daemon {origin_hash:016x} to {target} is in doubt: the target has not confirmed or denied the commit; the daemon is held (frozen) until it does")]
    InDoubt {
        /// The daemon.
        origin_hash: u64,
        /// The target.
        target: NodeId,
    },
}

impl MigrateError {
    /// Whether retrying the same migration later may succeed.
    #[must_use]
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            Self::TargetNotReady(_)
                | Self::TargetUnreachable { .. }
                | Self::DeadlineExceeded(_)
                | Self::AlreadyMigrating(_)
                | Self::HandingOff(_)
        )
    }
}

/// Shared between a handle and its driver.
pub(crate) struct Progress {
    pub(crate) sent: AtomicU64,
    pub(crate) total: AtomicU64,
}

/// A cancel request: the driver answers whether it took effect.
pub(crate) type CancelRequest = oneshot::Sender<bool>;

/// A migration in progress. Dropping the handle does not stop it.
#[derive(Clone)]
pub struct MigrationHandle {
    pub(crate) id: u64,
    pub(crate) origin_hash: u64,
    pub(crate) phase: watch::Receiver<MigrationPhase>,
    pub(crate) outcome: watch::Receiver<Option<Result<MigrationReport, MigrateError>>>,
    pub(crate) cancel: mpsc::UnboundedSender<CancelRequest>,
    pub(crate) progress: Arc<Progress>,
}

impl std::fmt::Debug for MigrationHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationHandle")
            .field("id", &format_args!("{:016x}", self.id))
            .field("origin_hash", &format_args!("{:016x}", self.origin_hash))
            .field("phase", &*self.phase.borrow())
            .finish()
    }
}

impl MigrationHandle {
    /// The migration's id (on every protocol message).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The current phase.
    pub fn phase(&self) -> MigrationPhase {
        *self.phase.borrow()
    }

    /// Snapshot bytes sent and the snapshot's total size (0 until sealed).
    pub fn progress(&self) -> (u64, u64) {
        (
            self.progress.sent.load(Ordering::Relaxed),
            self.progress.total.load(Ordering::Relaxed),
        )
    }

    /// Waits for the outcome (woken when it is known, no polling).
    ///
    /// # Errors
    /// The [`MigrateError`] that ended the migration.
    pub async fn wait(&self) -> Result<MigrationReport, MigrateError> {
        let mut outcome = self.outcome.clone();
        loop {
            if let Some(result) = outcome.borrow_and_update().clone() {
                return result;
            }
            if outcome.changed().await.is_err() {
                return outcome
                    .borrow()
                    .clone()
                    .unwrap_or(Err(MigrateError::Cancelled(self.origin_hash)));
            }
        }
    }

    /// Cancels the migration if it has not reached its commit point; the
    /// daemon then keeps running on the source.
    ///
    /// # Errors
    /// [`MigrateError::PastCommit`] once ownership has started to flip (the
    /// migration will complete or resolve).
    pub async fn cancel(&self) -> Result<(), MigrateError> {
        let (tx, rx) = oneshot::channel();
        if self.cancel.send(tx).is_err() {
            // The driver is gone: the migration is over.
            return match self.outcome.borrow().clone() {
                Some(Err(_)) => Ok(()),
                _ => Err(MigrateError::PastCommit(self.origin_hash)),
            };
        }
        match rx.await {
            Ok(true) => Ok(()),
            _ => Err(MigrateError::PastCommit(self.origin_hash)),
        }
    }
}
