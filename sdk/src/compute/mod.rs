//! The compute runtime: daemons, causal events, snapshots.
//!
//! A [`MeshDaemon`] is user code. A [`DaemonRuntime`] hosts daemons on one
//! [`Mesh`](crate::mesh::Mesh) node: it builds them from factories
//! registered by kind, gives each an ed25519 [`Identity`](crate::Identity),
//! delivers [`CausalEvent`]s exactly once per origin and in order, links
//! every output into the daemon's chain, and snapshots and restores daemons
//! with their causal bookkeeping ([`StateSnapshot`]). A runtime's daemons
//! move to another node one by one by live migration, or all at once to
//! the node's next process by a [`handoff`] (freeze, adopt, open).

mod buffer;
mod causal;
mod daemon;
mod error;
mod handle;
pub mod handoff;
mod host;
pub(crate) mod migration;
pub(crate) mod protocol;
mod remote;
mod runtime;
mod sender;
mod snapshot;
mod stats;

pub use buffer::{set_state_pool_limit, state_pool_limit, StateBuf, STATE_POOL_BYTES};
pub use causal::{CausalEvent, CausalLink};
pub use daemon::{MeshDaemon, ProcessError};
pub use error::{DaemonError, RegisterError, RemoteRefusal, StartError};
pub use handle::{DaemonHandle, DaemonHostConfig};
pub use handoff::{
    AdoptError, AdoptReport, DecodeError, FreezeError, Frozen, HandoffPhase, KeyCache, PhaseError,
};
pub use migration::{
    DrainOpts, DrainProgress, DrainReport, MigrateError, MigrationHandle, MigrationOpts,
    MigrationPhase, MigrationReport, ProgressFn, MAX_GATE_BYTES, MAX_GATE_EVENTS, MAX_VERDICTS,
    VERDICT_RETENTION,
};
pub use remote::{PlacedDaemon, Placement};
pub use runtime::{DaemonRuntime, DeliveryCounters, HostedDaemon};
pub use sender::{
    Delivered, EventSender, PendingEvent, Resent, SendError, SequenceError, RESTART_WAIT,
};
pub use snapshot::{SnapshotError, StateSnapshot, MAX_SNAPSHOT_BYTES};
pub use stats::DaemonStats;
