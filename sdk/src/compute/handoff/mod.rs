//! Handing every daemon of a runtime to another process of the same node:
//! the SDK half of a zero-downtime upgrade of the node's binary.
//!
//! The node's running process (the incumbent) [`freeze`]s its runtime,
//! writes the [`Frozen`] daemons into a memfd and passes it, with its UDP
//! socket, over a 0600 Unix socket to the new process (the successor),
//! whose runtime [`adopt`]s them. Once the successor has committed, the
//! incumbent [`retire`]s its runtime and exits, and the successor
//! [`open_gates`]; if the handoff is called off before the commit, the
//! incumbent [`thaw`]s instead and serves on. The handoff protocol itself
//! (who sends what over the Unix socket, and when) is the node's
//! (`runtime/src/handoff/`); this module only freezes and adopts.
//!
//! # The reused mechanisms
//!
//! A handoff is a migration of every daemon at once, to a runtime that
//! shares this node's identity, so it reuses the migration's parts: each
//! daemon's migration gate (`compute/migration/gate.rs`) holds its
//! events while it is frozen (source side) and while it is adopted but not
//! yet open (target side); each daemon travels as a snapshot in the
//! migration's key-handing format (`CMSNAP` body with an xxh3-64 trailer,
//! beside the daemon's secret key), which carries its per-origin marks,
//! output chain and counters.
//!
//! # Held, refused, answered
//!
//! | while                 | events to a daemon                  | spawns, reservations, migrations |
//! |-----------------------|-------------------------------------|----------------------------------|
//! | frozen                | held at its gate (bounded as in a migration: [`MAX_GATE_EVENTS`], [`MAX_GATE_BYTES`]; past that `Busy`) | refused: `DaemonError::Frozen`, `MigrateError::HandingOff`, an incoming migration is refused `NotReady` (its source retries) |
//! | thawed                | the held ones processed in arrival order, then as usual | admitted again |
//! | retired               | held ones answered `ShuttingDown` (a sender retries: the successor serves the daemon); later ones `ShuttingDown` | refused |
//! | adopted, gates closed | held at its gate                    | admitted (the node does not spawn then) |
//! | gates opened          | the held ones processed in arrival order, then as usual | admitted |
//!
//! The synchronous [`DaemonRuntime::deliver`](super::DaemonRuntime::deliver)
//! cannot wait at a gate: it answers `Migrating` while a daemon is held, as
//! it does during a migration. `send` and events from peers wait.
//!
//! A freeze is refused while a migration is in flight (outgoing, or an
//! incoming one not yet opened): [`FreezeError::MigrationInFlight`] names
//! the daemon. It does not wait: a migration ends within its deadline, and
//! the node retries the freeze with its own patience. Daemons that
//! migrated away and still forward stragglers are not frozen (they are not
//! this node's); `retire` ends their forwarding.
//!
//! An adopt that cannot restore every daemon (unknown kind, corrupt bytes,
//! a daemon already hosted, a failing `restore`) fails whole, before any
//! daemon processes an event, and leaves nothing behind: the incumbent can
//! still thaw.
//!
//! [`freeze`]: super::DaemonRuntime::freeze
//! [`thaw`]: super::DaemonRuntime::thaw
//! [`retire`]: super::DaemonRuntime::retire
//! [`adopt`]: super::DaemonRuntime::adopt
//! [`open_gates`]: super::DaemonRuntime::open_gates
//! [`MAX_GATE_EVENTS`]: super::MAX_GATE_EVENTS
//! [`MAX_GATE_BYTES`]: super::MAX_GATE_BYTES

use std::sync::Arc;

use crate::compute::runtime::Slot;

mod adopt;
mod error;
mod format;
mod freeze;
mod frozen;
mod keys;

#[cfg(test)]
mod tests;

pub use adopt::AdoptReport;
pub use error::{AdoptError, DecodeError, FreezeError, PhaseError};
pub use format::{FROZEN_VERSION, MAX_FROZEN_DAEMONS};
pub use frozen::Frozen;
pub use keys::KeyCache;

/// Where a runtime stands in a handoff of its node's process
/// ([`DaemonRuntime::handoff_phase`](super::DaemonRuntime::handoff_phase)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandoffPhase {
    /// No handoff: the runtime serves as usual.
    Live,
    /// Frozen: every daemon's events wait at its gate; nothing new is
    /// admitted. Next: `thaw` (abort) or `retire` (committed).
    Frozen,
    /// Daemons adopted, their gates still closed. Next: `open_gates`.
    Adopted,
    /// Retired after a committed handoff: the daemons are gone from this
    /// runtime and it serves nothing.
    Retired,
}

impl std::fmt::Display for HandoffPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Live => "live",
            Self::Frozen => "frozen",
            Self::Adopted => "adopted",
            Self::Retired => "retired",
        })
    }
}

/// The runtime's handoff phase with the daemons it holds.
pub(crate) enum Handoff {
    Live,
    /// The daemons frozen, by origin.
    Frozen(Vec<(u64, Arc<Slot>)>),
    /// The daemons adopted with their gates closed, by origin.
    Adopted(Vec<(u64, Arc<Slot>)>),
    Retired,
}

impl Handoff {
    /// Whether new daemons, reservations and migrations are admitted.
    pub(crate) fn admits(&self) -> bool {
        matches!(self, Handoff::Live | Handoff::Adopted(_))
    }

    pub(crate) fn phase(&self) -> HandoffPhase {
        match self {
            Handoff::Live => HandoffPhase::Live,
            Handoff::Frozen(_) => HandoffPhase::Frozen,
            Handoff::Adopted(_) => HandoffPhase::Adopted,
            Handoff::Retired => HandoffPhase::Retired,
        }
    }
}
