//! The errors of the compute runtime: [`DaemonError`] for the operations on
//! daemons, and one enum each for the operations that fail in few ways.

use super::daemon::ProcessError;
use crate::identity::EntityId;
use crate::NodeId;

/// Why a [`DaemonRuntime`](super::DaemonRuntime) operation failed.
///
/// Origin hashes print as 16 hex digits.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The runtime has not been started (`start().await`).
    #[error("the daemon runtime is not started yet")]
    NotReady,
    /// The runtime is shutting down or shut down.
    #[error("the daemon runtime is shutting down")]
    ShuttingDown,
    /// A factory for this kind is registered already (from
    /// [`RegisterError`], for callers that gather errors as `DaemonError`).
    #[error("a factory for daemon kind {0:?} is already registered")]
    FactoryAlreadyRegistered(String),
    /// No factory is registered for this kind.
    #[error("no factory is registered for daemon kind {0:?}")]
    FactoryNotFound(String),
    /// A kind name is empty or longer than 255 bytes (also from
    /// [`RegisterError`]).
    #[error("invalid daemon kind {0:?}: must be 1 to 255 bytes")]
    InvalidKind(String),
    /// A snapshot belongs to another identity than the one restoring it.
    #[error("snapshot of entity {found} cannot be restored as entity {expected}")]
    SnapshotIdentityMismatch {
        /// The identity passed to the restore.
        expected: EntityId,
        /// The identity the snapshot is bound to.
        found: EntityId,
    },
    /// A daemon (or a reservation for an incoming migration) with this
    /// origin hash exists already on this node.
    #[error("daemon {0:016x} is already registered on this node")]
    AlreadyRegistered(u64),
    /// No daemon with this origin hash runs on this node.
    #[error("daemon {0:016x} not found on this node")]
    NotFound(u64),
    /// A [`send`](super::DaemonRuntime::send) found the daemon neither on
    /// this node nor in the mesh's location directory: it was never
    /// spawned, or was stopped, or the node it lived on left the mesh or
    /// failed (the directory forgets the daemons of a node that goes).
    #[error(
        "daemon {0:016x} is not on this node and no node of the mesh is known to host it \
         (never spawned, stopped, or its node left or failed)"
    )]
    NotLocated(u64),
    /// Another node refused a request about the daemon for a reason that
    /// holds on that node only (its runtime is not serving, or it does
    /// not host the daemon). Refusals that mean the same wherever they
    /// come from keep their own variants: `Duplicate`, `Busy`,
    /// `HostedElsewhere`, `CapabilityMismatch`, `RemoteFailed`.
    #[error("node {node} refused the request for daemon {origin_hash:016x}: {refusal}")]
    Remote {
        /// The node that refused.
        node: NodeId,
        /// The daemon the request was about.
        origin_hash: u64,
        /// Why it refused.
        refusal: RemoteRefusal,
    },
    /// The daemon is being migrated (or its runtime is frozen for a
    /// handoff of the node's process): the synchronous `deliver` cannot
    /// wait for the hand-over, so the event was not accepted. Retry, or use
    /// the async `send`, which queues the event and waits.
    #[error("daemon {0:016x} is migrating; the event was not accepted (retry, or use send)")]
    Migrating(u64),
    /// The daemon is migrating and as many events as its gate holds
    /// (`limit`) already wait for the hand-over; this one was not
    /// accepted. Retry after the migration settles.
    #[error("daemon {origin_hash:016x} is migrating with {limit} events waiting; the event was not accepted (retry later)")]
    Busy {
        /// The daemon.
        origin_hash: u64,
        /// The most events its gate holds.
        limit: usize,
    },
    /// The daemon's identity is hosted on another node of the mesh: one
    /// identity runs in one place. Send to it there, or migrate it. The
    /// directory is gossiped: right after a `stop` on another node, a spawn
    /// here may be refused until this node has heard of it.
    #[error("daemon {origin_hash:016x} is already hosted on node {node}")]
    HostedElsewhere {
        /// The daemon.
        origin_hash: u64,
        /// Where it runs.
        node: NodeId,
    },
    /// The event's sequence is at or below the high-water mark of its
    /// origin: it was accepted before (or is sequence 0). The daemon's
    /// state is untouched.
    #[error("event {sequence} from origin {origin_hash:016x} is a duplicate: already accepted")]
    Duplicate {
        /// The event's origin.
        origin_hash: u64,
        /// The refused sequence.
        sequence: u64,
    },
    /// The daemon's own code returned an error.
    #[error(transparent)]
    Process(ProcessError),
    /// The daemon's code panicked; the runtime and other daemons carry on,
    /// and the daemon stays registered.
    #[error("daemon {origin_hash:016x} panicked in {operation}: {message}")]
    Panicked {
        /// The daemon.
        origin_hash: u64,
        /// Which call panicked (`process`, `snapshot`, `restore`).
        operation: &'static str,
        /// The panic message.
        message: String,
    },
    /// The factory for this kind panicked.
    #[error("the factory for daemon kind {kind:?} panicked: {message}")]
    FactoryPanicked {
        /// The kind.
        kind: String,
        /// The panic message.
        message: String,
    },
    /// This node does not offer what the daemon requires.
    #[error("node does not meet the requirements of daemon kind {kind:?}: missing {unmet}")]
    CapabilityMismatch {
        /// The kind.
        kind: String,
        /// The first unmet requirement.
        unmet: String,
    },
    /// The node hosting the daemon could not be reached.
    #[error("daemon {origin_hash:016x} lives on node {node}, which is unreachable: {reason}")]
    Unreachable {
        /// The daemon.
        origin_hash: u64,
        /// Its node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// Redirects went round in circles.
    #[error("gave up locating daemon {0:016x} after too many redirects")]
    TooManyRedirects(u64),
    /// The remote daemon failed or panicked.
    #[error("daemon {origin_hash:016x} on node {node} failed: {reason}")]
    RemoteFailed {
        /// The daemon.
        origin_hash: u64,
        /// Its node.
        node: NodeId,
        /// The remote error, as text.
        reason: String,
    },
    /// Another runtime is started on this mesh node (from [`StartError`]).
    #[error("another daemon runtime is already started on mesh node {0}")]
    MeshAlreadyBound(NodeId),
    /// The runtime is frozen (or retired) for a handoff of the node's
    /// process to a successor: it admits no new daemon, reservation or
    /// migration until it thaws (the successor will host its daemons).
    /// Retry once the handoff has ended.
    #[error("the daemon runtime is frozen for a handoff of its node; no new daemon is admitted (retry after the handoff)")]
    Frozen,
}

/// Why [`register_factory`](super::DaemonRuntime::register_factory) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The runtime is shutting down or shut down.
    #[error("the daemon runtime is shutting down")]
    ShuttingDown,
    /// The kind name is empty or longer than 255 bytes (the first 64
    /// characters are kept).
    #[error("invalid daemon kind {0:?}: must be 1 to 255 bytes")]
    InvalidKind(String),
    /// A factory for this kind is registered already.
    #[error("a factory for daemon kind {0:?} is already registered")]
    AlreadyRegistered(String),
}

/// Why [`start`](super::DaemonRuntime::start) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Shutdown began first; no runtime is bound to the mesh.
    #[error("the daemon runtime is shutting down")]
    ShuttingDown,
    /// Another runtime is started on this mesh node (from [`StartError`]).
    #[error("another daemon runtime is already started on mesh node {0}")]
    MeshAlreadyBound(NodeId),
}

impl From<RegisterError> for DaemonError {
    fn from(e: RegisterError) -> Self {
        match e {
            RegisterError::ShuttingDown => DaemonError::ShuttingDown,
            RegisterError::InvalidKind(kind) => DaemonError::InvalidKind(kind),
            RegisterError::AlreadyRegistered(kind) => DaemonError::FactoryAlreadyRegistered(kind),
        }
    }
}

impl From<StartError> for DaemonError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::ShuttingDown => DaemonError::ShuttingDown,
            StartError::MeshAlreadyBound(node) => DaemonError::MeshAlreadyBound(node),
        }
    }
}

/// Why another node refused a request about a daemon
/// ([`DaemonError::Remote`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteRefusal {
    /// Its daemon runtime is not started (yet).
    NotReady,
    /// Its daemon runtime is shutting down.
    ShuttingDown,
    /// It does not host the daemon: the directory that sent the request
    /// there was out of date (this node forgets that location).
    NotHosted,
}

impl std::fmt::Display for RemoteRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotReady => "its daemon runtime is not started yet",
            Self::ShuttingDown => "its daemon runtime is shutting down",
            Self::NotHosted => "the daemon does not run there",
        })
    }
}

impl From<ProcessError> for DaemonError {
    fn from(e: ProcessError) -> Self {
        DaemonError::Process(e)
    }
}

/// Renders a panic payload as text.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
