//! What is said to a cell daemon and what it answers, as JSON payloads of
//! causal events.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::cell::backend::ExitReport;
use crate::cell::event::{FailureCause, TerminalState};
use crate::cell::projection::CellStateSnapshot;
use crate::cell::sign::SignedCloudEvent;
use crate::cell::spec::ExecutionCellDocument;

/// The daemon kind cells run as.
pub const CELL_KIND: &str = "cellmesh.cell";

/// Largest command or reply accepted (a document plus an exit report).
pub(crate) const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// A lifecycle step the hosting node's supervisor records on the cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "camelCase")]
pub(crate) enum Step {
    Started,
    Completed {
        exit: ExitReport,
    },
    Destroyed {
        outcome: String,
        reason: Option<String>,
        terminal: TerminalState,
    },
    Migrated {
        from: String,
        to: String,
        /// What the migration measured, on the node that ran it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        figures: Option<MigrationFigures>,
    },
    /// The cell failed (it could not start, or the host killed it) and is
    /// torn down: terminal, in place of `Destroyed`.
    Failed {
        cause: FailureCause,
        reason: String,
        terminal: TerminalState,
    },
}

/// What a cell's last migration measured, kept by its daemon so that a
/// node that asked another to move the cell can report the real figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MigrationFigures {
    pub(crate) migration_id: u64,
    pub(crate) total_us: u64,
    pub(crate) blackout_us: u64,
    pub(crate) snapshot_bytes: u64,
    pub(crate) events_forwarded: u64,
}

impl MigrationFigures {
    pub(crate) fn of(report: &crate::compute::MigrationReport) -> Self {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Self {
            migration_id: report.migration_id,
            total_us: us(report.total),
            blackout_us: us(report.blackout),
            snapshot_bytes: report.snapshot_bytes,
            events_forwarded: report.events_forwarded,
        }
    }
}

/// A command to a cell daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub(crate) enum Command {
    /// Bind the daemon to a document and start the cell on its node.
    Apply {
        doc: Box<ExecutionCellDocument>,
        origin: u64,
        /// How many earlier cells with this id were destroyed on the node
        /// that applied it.
        #[serde(default)]
        generation: u64,
    },
    /// Record a lifecycle step: emit, sign, apply, log.
    Record {
        step: Box<Step>,
        event_id: String,
        time_ms: u64,
    },
    /// Ask the hosting node to tear the cell down.
    Destroy { reason: Option<String> },
    /// Read the projection.
    Query,
    /// The cell is about to migrate: its next snapshot carries its output.
    Leave,
    /// The migration failed: the cell stays.
    Stay,
    /// The cell goes to the node's next process with the daemons (an
    /// upgrade): as `Leave`, and only a daemon so marked is taken over.
    HandOff,
    /// The node's next process adopted this daemon after a `HandOff`: its
    /// supervisor takes the cell over (no lifecycle step: the cell stays
    /// on the same node).
    TakeOver,
    /// Ask the hosting node to move the cell to `target` (hex node id).
    Migrate { target: String },
    /// Read up to `max` bytes of each output stream from the given offsets.
    Output {
        stdout_from: u64,
        stderr_from: u64,
        max: u64,
    },
}

/// Why a cell daemon refused a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum RefusalCode {
    AlreadyApplied,
    NotApplied,
    AlreadyDestroyed,
    Invalid,
    CommandRunning,
    /// The cell is moving here: its migration's record has not arrived.
    Moving,
}

/// A cell daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "camelCase")]
pub(crate) enum Reply {
    Done,
    Event {
        event: Box<SignedCloudEvent>,
    },
    State {
        state: Box<CellStateSnapshot>,
        exit: Option<Box<ExitReport>>,
        running: bool,
        events: usize,
        /// The figures of the cell's last migration.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        migration: Option<MigrationFigures>,
    },
    Refused {
        code: RefusalCode,
        reason: String,
    },
    /// A chunk of the output, with the kept length of each stream.
    Output {
        chunk: Box<crate::cell::backend::CellOutput>,
        stdout_len: u64,
        stderr_len: u64,
    },
}

pub(crate) fn encode<T: Serialize>(value: &T) -> bytes::Bytes {
    // Commands and replies are plain data: they always serialize.
    bytes::Bytes::from(serde_json::to_vec(value).expect("cell messages serialize"))
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(raw: &[u8]) -> Result<T, String> {
    if raw.len() > MAX_MESSAGE_BYTES {
        return Err(format!(
            "{} bytes is over the {MAX_MESSAGE_BYTES} limit",
            raw.len()
        ));
    }
    serde_json::from_slice(raw).map_err(|e| e.to_string())
}

pub(crate) fn millis(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn at_millis(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// A fresh 128-bit event id in hex.
pub(crate) fn event_id() -> String {
    let mut raw = [0u8; 16];
    // The OS RNG failing is not recoverable; fall back to the clock so the
    // id is still unique in practice.
    if getrandom::fill(&mut raw).is_err() {
        raw[..16].copy_from_slice(
            &SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
                .to_le_bytes(),
        );
    }
    crate::identity::hex(&raw)
}
