//! The stages a cell's projection tracks, and the state derived from them.

use serde::{Deserialize, Serialize};

/// Where a cell is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LifecycleStage {
    /// No `started` yet.
    Pending,
    /// Started; the command (if any) has not completed.
    Started,
    /// The command completed.
    CommandCompleted,
    /// Torn down (terminal).
    Destroyed,
    /// Failed and torn down (terminal): see the snapshot's
    /// `failure_cause`.
    Failed,
}

/// The cell's workload identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum IdentityStage {
    /// No identity event yet.
    Unknown,
    /// Materialized.
    Materialized,
    /// Materializing failed.
    MaterializeFailed,
    /// Revoked.
    Revoked,
    /// Revoking failed.
    RevokeFailed,
}

/// The cell's exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ExportStage {
    /// No export yet.
    None,
    /// The last export completed.
    Completed,
    /// The last export failed.
    Failed,
}

/// The one-word state of a cell, derived from its stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CurrentState {
    /// Not started.
    Pending,
    /// Started.
    Started,
    /// Identity materialized.
    IdentityReady,
    /// Identity failed to materialize.
    IdentityFailed,
    /// The command exited 0.
    CommandSucceeded,
    /// The command exited non-zero.
    CommandFailed,
    /// An export completed.
    ExportSucceeded,
    /// An export failed.
    ExportFailed,
    /// Torn down normally.
    Destroyed,
    /// Torn down for a reason (kill, TTL, timeout, a teardown that failed).
    DestroyFailed,
    /// The cell failed: its command could not start, a limit could not be
    /// applied, or the host killed it for its memory limit.
    Failed,
}

/// One completed export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportRecord {
    /// Export target name.
    pub target_name: Option<String>,
    /// Where the artifact went.
    pub destination: Option<String>,
    /// Bytes written.
    pub bytes_written: Option<u64>,
}
