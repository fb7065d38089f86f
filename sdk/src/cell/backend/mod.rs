//! Host backends: where a cell's command actually runs (the contract is
//! on [`CellBackend`]).

pub(crate) mod contain;
pub(crate) mod output;
mod process;
#[cfg(any(test, feature = "test-utils"))]
mod stub;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::event::{FailureCause, TerminalState};
use super::spec::{ExecutionCellDocument, SpecError};
use crate::NodeId;

pub use contain::{Containment, ContainmentChoice};
pub use output::{CellOutput, OutputRange, MAX_OUTPUT_BYTES, OUTPUT_DIR};
pub use process::{ProcessBackend, ProcessBackendConfig};
#[cfg(any(test, feature = "test-utils"))]
pub use stub::StubBackend;

/// The future a [`CellBackend`] method returns.
pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CellError>> + Send + 'a>>;

/// Where a tracked cell runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CellHost {
    /// On the backend's own node.
    Local,
    /// On a peer node, as the cell daemon `origin_hash` there.
    Remote {
        /// The peer the cell was placed on.
        node: NodeId,
        /// The cell daemon's origin hash (routing follows it if it moves).
        origin_hash: u64,
    },
}

/// A backend's handle on a cell it created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellHandle {
    /// The cell's id.
    pub cell_id: String,
    /// Where it runs.
    pub host: CellHost,
}

/// How a cell's command ended. This is what travels to the cell's daemon
/// and with a migration: the output itself stays in the output files (see
/// [`Cells::output`](crate::cell::Cells::output)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitReport {
    /// Exit code; [`FORCED_EXIT_CODE`](super::FORCED_EXIT_CODE) when killed.
    pub exit_code: i32,
    /// Whether the command exited by itself or was killed.
    pub terminal_state: TerminalState,
    /// Why it was killed, if it was (`timeout`, `destroyed`, `memory limit
    /// exceeded`).
    pub forced_reason: Option<String>,
    /// Milliseconds from start to exit.
    pub duration_ms: u64,
    /// The kept stdout: never carried in messages; filled only by
    /// [`Cells::query`](crate::cell::Cells::query) from the output file.
    #[serde(skip)]
    pub stdout: Bytes,
    /// The kept stderr: as `stdout`.
    #[serde(skip)]
    pub stderr: Bytes,
    /// Bytes the command wrote to stdout by the time it exited (kept and
    /// dropped).
    #[serde(default)]
    pub stdout_bytes: u64,
    /// Bytes the command wrote to stderr by the time it exited.
    #[serde(default)]
    pub stderr_bytes: u64,
    /// Whether output beyond the bound was counted and dropped.
    pub output_truncated: bool,
    /// Set when the command was ended by the host for a reason that makes
    /// the cell fail (its memory limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureCause>,
}

/// What [`CellBackend::destroy`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeardownReport {
    /// The cell torn down.
    pub cell_id: String,
    /// Whether a live cell was torn down (always `true` on success).
    pub destroyed: bool,
    /// Cells the backend still tracks afterwards.
    pub peers_tracked_after: usize,
    /// How its command ended, if it had one and it had started.
    pub exit: Option<ExitReport>,
}

/// Why a cell operation failed. Every variant names the cell.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CellError {
    /// The document breaks a rule.
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    /// A live cell with this id exists on the backend.
    #[error("cell {0:?} already exists on this backend")]
    AlreadyExists(String),
    /// The backend does not track this cell: never created, or already
    /// destroyed.
    #[error("cell {0:?} is unknown or already destroyed")]
    UnknownCell(String),
    /// The command could not be started.
    #[error("cell {id:?}: cannot start {program:?}: {source}")]
    Spawn {
        /// The cell.
        id: String,
        /// `argv[0]`.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No node of the mesh meets the cell's placement.
    #[error("cell {id:?}: no peer meets its placement ({why})")]
    NoCapableNode {
        /// The cell.
        id: String,
        /// What was missing.
        why: String,
    },
    /// The node hosting the cell could not be reached or stopped answering.
    #[error("cell {id:?}: host node {node} is unreachable: {reason}")]
    PeerLost {
        /// The cell.
        id: String,
        /// The node.
        node: NodeId,
        /// What failed.
        reason: String,
    },
    /// The remote host refused or failed the operation.
    #[error("cell {id:?}: remote host refused: {reason}")]
    Remote {
        /// The cell.
        id: String,
        /// Its answer.
        reason: String,
    },
    /// The cell is known here but runs on another node; ask that node.
    #[error("cell {0:?} is not hosted on this node")]
    NotHosted(String),
    /// The cell's command is running, which the operation does not allow.
    #[error("cell {0:?} has a running command")]
    CommandRunning(String),
    /// A limit of the document could not be applied (the cell's control
    /// group could not be created or written).
    #[error("cell {id:?}: limit could not be applied: {what}")]
    Limit {
        /// The cell.
        id: String,
        /// What failed, with the path and the OS error.
        what: String,
    },
    /// The cell's output files could not be written or read.
    #[error("cell {id:?}: output files: {source}")]
    Output {
        /// The cell.
        id: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// [`Cells::wait_until`](crate::cell::Cells::wait_until) gave up.
    #[error("cell {id:?}: condition not reached within {waited:?} (last: {last})")]
    Timeout {
        /// The cell.
        id: String,
        /// How long it waited.
        waited: Duration,
        /// The cell's last state, briefly (`stage started, state started,
        /// exit none`).
        last: String,
    },
    /// A handle of another kind of host was passed to this backend.
    #[error("cell {id:?}: this backend cannot take a handle hosted {host:?}")]
    WrongHost {
        /// The cell.
        id: String,
        /// The handle's host.
        host: CellHost,
    },
}

impl CellError {
    /// The typed cause a cell that failed with this error records
    /// (`None` for errors that are not a failure of the cell itself).
    pub fn failure_cause(&self) -> Option<FailureCause> {
        match self {
            Self::Spawn { source, .. } => Some(match source.kind() {
                std::io::ErrorKind::NotFound => FailureCause::ProgramNotFound,
                std::io::ErrorKind::PermissionDenied => FailureCause::PermissionDenied,
                _ => FailureCause::SpawnFailed,
            }),
            Self::Limit { .. } => Some(FailureCause::LimitNotApplied),
            Self::Output { .. } => Some(FailureCause::SpawnFailed),
            _ => None,
        }
    }
}

/// A host for cells: where a cell's command actually runs.
///
/// A backend creates a cell (for [`ProcessBackend`], starts its command),
/// tears it down and reports how its command exited. The contract every
/// backend honours, pinned by one shared test suite:
///
/// - `create` validates the document ([`CellError::InvalidSpec`] for an
///   empty id) and tracks the cell from the moment it returns;
/// - a second live cell with the same id is [`CellError::AlreadyExists`];
///   after `destroy` the id is free again;
/// - `destroy` of a live cell returns a [`TeardownReport`] and the cell is
///   no longer tracked; a repeat `destroy` or one of a handle the backend
///   never created is [`CellError::UnknownCell`] naming the id;
/// - of two concurrent `destroy`s of one cell exactly one succeeds.
pub trait CellBackend: Send + Sync + 'static {
    /// A short name for logs (`process`, `federated`).
    fn name(&self) -> &'static str;

    /// Creates the cell `doc` describes and starts its command, if any.
    ///
    /// # Errors
    /// `InvalidSpec`, `AlreadyExists`, `Spawn`, or a placement error.
    fn create<'a>(&'a self, doc: &'a ExecutionCellDocument) -> BackendFuture<'a, CellHandle>;

    /// Tears the cell down, killing its command if it still runs.
    ///
    /// # Errors
    /// `UnknownCell` for a handle not tracked (repeat destroy included).
    fn destroy<'a>(&'a self, handle: &'a CellHandle) -> BackendFuture<'a, TeardownReport>;

    /// Waits until the cell's command exits; `None` when it has no command.
    /// Cancel safe: dropping the future leaves the cell as it was.
    ///
    /// # Errors
    /// `UnknownCell`, or `PeerLost` for a remote host.
    fn wait_for_exit<'a>(&'a self, handle: &'a CellHandle)
        -> BackendFuture<'a, Option<ExitReport>>;

    /// Cells tracked now.
    fn tracked_cell_count(&self) -> usize;

    /// Whether the backend holds state for `cell_id`.
    fn has_tracked_state(&self, cell_id: &str) -> bool;

    /// Takes over a cell that moved here from another node, without
    /// starting its command again (`exit` is how it ended there, if it ran).
    ///
    /// # Errors
    /// `AlreadyExists`, or `WrongHost` if `host` is not one this backend runs.
    fn adopt(
        &self,
        doc: &ExecutionCellDocument,
        host: CellHost,
        exit: Option<ExitReport>,
    ) -> Result<CellHandle, CellError>;

    /// Forgets a cell that moved to another node, without tearing it down.
    ///
    /// # Errors
    /// `UnknownCell`, or `CommandRunning` (a running process cannot move).
    fn release(&self, handle: &CellHandle) -> Result<(), CellError>;

    /// Where the cell's daemon should live: `None` (the default) on this
    /// node, which then runs the cell on this backend; `Some(node)` on that
    /// peer, which runs it on its own backend while this node keeps only a
    /// pointer, so the mesh holds one cell per id.
    ///
    /// # Errors
    /// `NoCapableNode` when no node can take it.
    fn place(&self, _doc: &ExecutionCellDocument) -> Result<Option<NodeId>, CellError> {
        Ok(None)
    }

    /// How this backend contains the processes of its cells, if it runs
    /// any itself.
    fn containment(&self) -> Option<Containment> {
        None
    }

    /// Tells the backend the node's data directory (where output files
    /// go unless configured elsewhere). Called by
    /// [`Cells::start`](crate::cell::Cells::start).
    fn attach_data_dir(&self, _data_dir: &Path) {}

    /// The output of a cell created or adopted here (kept after destroy
    /// until the id is used again).
    ///
    /// # Errors
    /// `UnknownCell` when this backend holds no output of the cell;
    /// `Output` when the files cannot be read.
    fn output(&self, cell_id: &str) -> Result<CellOutput, CellError> {
        Err(CellError::UnknownCell(cell_id.to_string()))
    }

    /// Up to `max` bytes of each stream of the output of a cell created or
    /// adopted here, from the given offsets, with the kept length of each
    /// stream (for a peer reading it in chunks). The default reads the
    /// whole output and cuts the range out; a backend with output files
    /// reads only the range.
    ///
    /// # Errors
    /// As [`output`](Self::output).
    fn output_range(
        &self,
        cell_id: &str,
        stdout_from: u64,
        stderr_from: u64,
        max: u64,
    ) -> Result<OutputRange, CellError> {
        let full = self.output(cell_id)?;
        Ok(OutputRange::cut(&full, stdout_from, stderr_from, max))
    }

    /// Stores output that came with a cell migrating here.
    ///
    /// # Errors
    /// `Output` when the files cannot be written.
    fn adopt_output(&self, _cell_id: &str, _output: &CellOutput) -> Result<(), CellError> {
        Ok(())
    }

    /// Takes over the output files of a cell handed over by the node's
    /// previous process where they are (the same data directory), with
    /// the counters in `counts` (whose content is empty). The default has
    /// no files to take over.
    ///
    /// # Errors
    /// `Output` when the files cannot be opened.
    fn reopen_output(&self, _cell_id: &str, _counts: &CellOutput) -> Result<(), CellError> {
        Ok(())
    }

    /// The cell daemon on a peer that runs cell `id` for this backend, when
    /// it runs there (a federated backend's cells): its output is read
    /// from there.
    fn remote_origin(&self, _cell_id: &str) -> Option<u64> {
        None
    }

    /// Deletes the output of a cell that moved away (no-op for a cell
    /// still tracked).
    fn discard_output(&self, _cell_id: &str) {}
}

/// The free slot for `id` in a backend's table of cells, or
/// `AlreadyExists`.
pub(crate) fn vacant<'m, V>(
    cells: &'m mut std::collections::HashMap<String, V>,
    id: &str,
) -> Result<std::collections::hash_map::VacantEntry<'m, String, V>, CellError> {
    match cells.entry(id.to_string()) {
        std::collections::hash_map::Entry::Vacant(slot) => Ok(slot),
        std::collections::hash_map::Entry::Occupied(_) => {
            Err(CellError::AlreadyExists(id.to_string()))
        }
    }
}

/// `adopt`'s refusal of a cell hosted where this backend does not run
/// cells.
pub(crate) fn wrong_host(doc: &ExecutionCellDocument, host: CellHost) -> CellError {
    CellError::WrongHost {
        id: doc.id().to_string(),
        host,
    }
}

/// `create`'s common precondition: a valid document.
pub(crate) fn check_doc(doc: &ExecutionCellDocument) -> Result<(), CellError> {
    doc.validate().map_err(CellError::InvalidSpec)
}
