//! Execution cells: a document saying what to run, host backends that run
//! it, a signed CloudEvent lifecycle and the projection folded from it.
//!
//! - [`ExecutionCellDocument`] — the spec, parsed strictly and validated
//!   rule by rule.
//! - [`CloudEventV1`] and [`CellEvents`] — the lifecycle catalogue
//!   (`dev.cellmesh.events.cell.*`); [`SignedCloudEvent`] — every emitted
//!   event signed by the emitting node.
//! - [`CellStateProjection`] — the per-cell reducer.
//! - [`CellEventLog`] — the node's durable event log (redb) and
//!   [`NodeCellProjection`], the node-level view rebuilt from it.
//! - [`CellBackend`] — hosts: [`ProcessBackend`] runs the command as a
//!   child process.
//! - [`FederatedBackend`] — runs a node's cells on capable peers, over the
//!   cell protocol (`remote`).

mod backend;
mod event;
mod host;
#[cfg(feature = "jetstream")]
mod jetstream;
mod log;
mod node_view;
mod projection;
mod remote;
mod sign;
mod spec;

#[cfg(any(test, feature = "test-utils"))]
#[doc(hidden)]
pub use backend::StubBackend;
pub use backend::{
    BackendFuture, CellBackend, CellError, CellHandle, CellHost, CellOutput, Containment,
    ContainmentChoice, ExitReport, OutputRange, ProcessBackend, ProcessBackendConfig,
    TeardownReport, MAX_OUTPUT_BYTES, OUTPUT_DIR,
};
pub use event::{
    rfc3339, CellEventKind, CellEvents, CloudEventV1, EventContext, FailureCause, TerminalState,
    FORCED_EXIT_CODE, LEGACY_TYPE_PREFIX, TYPE_PREFIX,
};
pub use host::{
    CellHandOffError, CellMigrateError, Cells, CellsStartError, HandedCells, POINTER_REFRESH,
};
#[cfg(feature = "jetstream")]
pub use jetstream::{JetStreamConfig, JetStreamError, JetStreamLog};
pub use log::{CellEventLog, LogError, LOG_FILE};
pub use node_view::{ApplyOutcome, CellRecord, CellRecordState, NodeCellProjection};
pub use projection::{
    CellStateProjection, CellStateSnapshot, CurrentState, ExportRecord, ExportStage, IdentityStage,
    LifecycleStage, ProjectionError,
};
pub use remote::{FederatedBackend, CELL_KIND};
pub use sign::{EventSignatureError, SignedCloudEvent};
pub use spec::{
    Authority, Correlation, EgressRule, ExecutionCellDocument, ExecutionCellSpec, Lifetime,
    PlacementSpec, Rule, RunLimits, RunSpec, SpecError, Violation, ACCEPTED_API_VERSIONS,
    API_VERSION, KIND, MAX_DOCUMENT_BYTES, MAX_ID_LEN,
};
