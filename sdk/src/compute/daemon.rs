//! The trait user daemons implement.

use bytes::Bytes;

use super::causal::CausalEvent;
use crate::capabilities::CapabilityFilter;

/// An error a daemon's own code reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// `process` refused or failed on an event; the event is not accepted.
    #[error("processing failed: {0}")]
    ProcessFailed(String),
    /// `snapshot` could not serialise the daemon's state.
    #[error("snapshot failed: {0}")]
    SnapshotFailed(String),
    /// `restore` could not rebuild state from a snapshot.
    #[error("restore failed: {0}")]
    RestoreFailed(String),
}

/// A stateful daemon: it processes one causal event at a time and emits
/// payloads; it can snapshot its state and restore from a snapshot.
///
/// The runtime wraps every call: it refuses replays before `process` sees
/// them, links outputs into the daemon's chain, and contains panics.
/// `process` is called with the daemon locked, one event at a time.
///
/// `process` must not block: it runs on the async runtime's threads, and an
/// event from a peer is processed inline on the stream (one of four per
/// peer) that carries it, so a daemon that sleeps in `process` delays the
/// other daemons sharing that stream. Hand slow work to a task of your own
/// and emit its result on a later event.
///
/// ```
/// use bytes::Bytes;
/// use cellmesh::capabilities::CapabilityFilter;
/// use cellmesh::compute::{CausalEvent, MeshDaemon, ProcessError};
///
/// struct Echo;
/// impl MeshDaemon for Echo {
///     fn name(&self) -> &str { "echo" }
///     fn requirements(&self) -> CapabilityFilter { CapabilityFilter::default() }
///     fn process(&mut self, event: &CausalEvent) -> Result<Vec<Bytes>, ProcessError> {
///         Ok(vec![event.payload.clone()])
///     }
/// }
/// ```
pub trait MeshDaemon: Send + 'static {
    /// A human-readable name for logs.
    fn name(&self) -> &str;

    /// What the node hosting this daemon must offer.
    fn requirements(&self) -> CapabilityFilter;

    /// Processes one event and returns the payloads to emit.
    ///
    /// # Errors
    /// Any error leaves the event unaccepted: a corrected redelivery of the
    /// same sequence is processed. The daemon should leave its state as it
    /// was when it returns an error.
    fn process(&mut self, event: &CausalEvent) -> Result<Vec<Bytes>, ProcessError>;

    /// The daemon's state, or `None` for a stateless daemon.
    ///
    /// A large state is best built in a [`StateBuf`](super::StateBuf)
    /// (recycled, huge-page backed) or handed out as `Bytes` the daemon
    /// already holds (no copy at all).
    fn snapshot(&self) -> Option<Bytes> {
        None
    }

    /// About how many bytes [`snapshot`](MeshDaemon::snapshot) would return
    /// now, if the daemon knows without building it; `None` (the default)
    /// when it does not. Called (with the daemon locked) before a node
    /// hands its daemons to its next process, to allocate ahead the memory
    /// their states will be written to: a large state's freeze is then
    /// not slowed by that allocation. Must be cheap; it need not be exact.
    /// Without it the length of the last snapshot or restore is used.
    fn state_len_hint(&self) -> Option<u64> {
        None
    }

    /// Rebuilds state from what [`snapshot`](MeshDaemon::snapshot) returned.
    ///
    /// # Errors
    /// The default accepts only an empty state: a stateless daemon cannot
    /// honour a non-empty snapshot.
    fn restore(&mut self, state: Bytes) -> Result<(), ProcessError> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(ProcessError::RestoreFailed(format!(
                "daemon {:?} keeps no state but was given {} bytes",
                self.name(),
                state.len()
            )))
        }
    }
}
