//! One error enum per handoff operation: freezing, decoding the frozen
//! bytes, adopting them, and the phase changes (thaw, retire, open).

use super::HandoffPhase;
use crate::compute::{DaemonError, SnapshotError};

/// Why [`DaemonRuntime::freeze`](crate::compute::DaemonRuntime::freeze)
/// failed. Whatever it froze before failing is thawed again: the runtime
/// serves on as if no freeze had been asked for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FreezeError {
    /// The runtime has not been started.
    #[error("cannot freeze: the daemon runtime is not started")]
    NotReady,
    /// The runtime is shutting down.
    #[error("cannot freeze: the daemon runtime is shutting down")]
    ShuttingDown,
    /// The runtime is not live (already frozen, retired, or holding
    /// adopted daemons whose gates are not open yet).
    #[error("cannot freeze: the daemon runtime is {0}, not live")]
    Phase(HandoffPhase),
    /// A migration of this daemon is in flight: outgoing (with its id), or
    /// incoming and not yet opened (`migration_id` is `None`). Retry the
    /// freeze once it has ended (a migration ends within its deadline).
    #[error("cannot freeze: daemon {origin_hash:016x} is migrating{}", .migration_id.map(|id| format!(" (migration {id:016x})")).unwrap_or_default())]
    MigrationInFlight {
        /// The migrating daemon.
        origin_hash: u64,
        /// The outgoing migration's id.
        migration_id: Option<u64>,
    },
    /// A daemon's snapshot failed (its state is above its
    /// `max_snapshot_bytes`, or its `snapshot` panicked).
    #[error(
        "cannot freeze: snapshot of daemon {origin_hash:016x} of kind {kind:?} failed: {source}"
    )]
    Snapshot {
        /// The daemon.
        origin_hash: u64,
        /// Its kind.
        kind: String,
        /// What the runtime reported.
        #[source]
        source: DaemonError,
    },
}

/// Why frozen bytes were refused by
/// [`Frozen::decode`](super::Frozen::decode). Names the field, and for a
/// daemon's record its index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not frozen daemons (bad magic).
    #[error("not frozen cellmesh daemons (bad magic)")]
    BadMagic,
    /// A format version this build does not read.
    #[error("unsupported frozen-daemons version {0} (this build reads version {v})", v = super::FROZEN_VERSION)]
    UnsupportedVersion(u16),
    /// The input ends before a field it announces.
    #[error("frozen daemons truncated: {field} needs {needed} bytes, {available} left")]
    Truncated {
        /// The field being read (`record 3 kind`, ...).
        field: String,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left.
        available: u64,
    },
    /// A count or length exceeds its limit.
    #[error("frozen daemons field {field} is {len}, above the limit of {max}")]
    Oversized {
        /// The field.
        field: String,
        /// Its value.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A field holds a value the format forbids.
    #[error("malformed frozen daemons field {field}: {reason}")]
    Malformed {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A record header's checksum does not match: corrupted.
    #[error("record {index} of the frozen daemons is corrupted (header checksum mismatch)")]
    BadChecksum {
        /// The record.
        index: u32,
    },
    /// A daemon's snapshot is refused (corrupted, or not the key's).
    #[error("record {index} of the frozen daemons: {source}")]
    Snapshot {
        /// The record.
        index: u32,
        /// Why its snapshot was refused.
        #[source]
        source: SnapshotError,
    },
    /// Two records carry the same daemon.
    #[error("daemon {0:016x} appears twice in the frozen daemons")]
    DuplicateDaemon(u64),
    /// Bytes follow the last record.
    #[error("{0} unexpected bytes after the frozen daemons")]
    TrailingBytes(u64),
}

/// Why [`DaemonRuntime::adopt`](crate::compute::DaemonRuntime::adopt)
/// failed. An adopt fails whole: no daemon of the bytes is left on the
/// runtime and none processed an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdoptError {
    /// The bytes are not valid frozen daemons.
    #[error("cannot adopt: {0}")]
    Decode(#[from] DecodeError),
    /// The runtime has not been started.
    #[error("cannot adopt: the daemon runtime is not started")]
    NotReady,
    /// The runtime is shutting down.
    #[error("cannot adopt: the daemon runtime is shutting down")]
    ShuttingDown,
    /// The runtime is frozen or retired.
    #[error("cannot adopt: the daemon runtime is {0}")]
    Phase(HandoffPhase),
    /// No factory is registered here for a daemon's kind.
    #[error("cannot adopt: no factory for kind {kind:?} (daemon {origin_hash:016x})")]
    FactoryNotFound {
        /// The kind.
        kind: String,
        /// The first daemon of that kind.
        origin_hash: u64,
    },
    /// A daemon runs (or is reserved) here already.
    #[error("cannot adopt: daemon {0:016x} is already hosted or reserved on this runtime")]
    AlreadyHosted(u64),
    /// Building or restoring a daemon failed (its factory panicked, this
    /// node lacks its requirements, or its `restore` failed).
    #[error("cannot adopt daemon {origin_hash:016x} of kind {kind:?}: {source}")]
    Restore {
        /// The daemon.
        origin_hash: u64,
        /// Its kind.
        kind: String,
        /// What failed.
        #[source]
        source: DaemonError,
    },
}

/// A handoff step asked of a runtime in the wrong phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PhaseError {
    /// `thaw` or `retire` of a runtime that is not frozen.
    #[error("the daemon runtime is {0}, not frozen: nothing to thaw or retire")]
    NotFrozen(HandoffPhase),
    /// `open_gates` of a runtime that adopted nothing.
    #[error("the daemon runtime is {0}: it holds no adopted daemons to open")]
    NotAdopted(HandoffPhase),
    /// `expect_adoption` of a runtime that is frozen or retired.
    #[error("the daemon runtime is {0}: it cannot adopt daemons now")]
    NotLive(HandoffPhase),
}
