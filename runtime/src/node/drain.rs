//! Draining a node: its cells (those whose command has completed) move
//! with their history through [`Cells::migrate`](cellmesh::cell::Cells),
//! then every other daemon through the SDK's
//! [`DaemonRuntime::drain`](cellmesh::compute::DaemonRuntime::drain), which
//! skips the cells' own kind: a cell daemon moves only with its
//! supervisor, and a cell whose command still runs stays here (a running
//! OS process cannot move) and is reported, by cell id and origin, with the
//! reason `command_running`.

use std::time::{Duration, Instant};

use cellmesh::capabilities::CapabilityFilter;
use cellmesh::cell::{CellError, CellMigrateError, CELL_KIND};
use cellmesh::compute::{DrainOpts, DrainProgress, MigrationOpts, MigrationReport};
use cellmesh::mesh::NodeId;
use serde::Serialize;
use tracing::Instrument;

use super::{Node, NodePhase};
use crate::metrics::variant_name;

/// Why a drain did not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DrainError {
    /// Another drain of this node is running.
    #[error("a drain of this node is already running")]
    AlreadyDraining,
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The node is handing itself over to a new process (an upgrade).
    #[error("the node is being upgraded")]
    Upgrading,
}

/// A daemon or cell that stayed on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrainFailure {
    /// The daemon's origin hash (16 hex digits). For a cell, its daemon's
    /// origin when this node knows it (the cell was applied through its
    /// control plane), `None` otherwise (its id names it).
    pub origin_hash: Option<String>,
    /// The cell id, for a cell.
    pub cell_id: Option<String>,
    /// Why it stayed (the error's variant, snake_case;
    /// `command_running` for a cell whose command has not completed).
    pub reason: String,
    /// The full error.
    pub message: String,
}

/// What a drain did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrainSummary {
    /// Daemons (cells included) hosted when the drain began.
    pub total: usize,
    /// Daemons moved (cells included).
    pub migrated: usize,
    /// Cells moved.
    pub cells_migrated: usize,
    /// Daemons moved per target node (full hex node id).
    pub placed: Vec<(String, usize)>,
    /// What stayed, by origin.
    pub failed: Vec<DrainFailure>,
    /// Daemons hosted when the drain ended.
    pub remaining: usize,
    /// Snapshot bytes the drain's migrations sent (cells included).
    pub migrated_bytes: u64,
    /// The longest blackout of the drain's migrations, in seconds.
    pub blackout_max_seconds: f64,
    /// Wall time in seconds.
    pub elapsed_seconds: f64,
}

impl Node {
    /// Moves every daemon of this node to capable peers within `deadline`
    /// (each migration's deadline is what is left of it), reporting
    /// progress through `progress`. The node is not ready while the drain
    /// runs and ready again after it.
    ///
    /// Cancel safety: cancelling stops starting new migrations of cells;
    /// migrations already started complete or fail on their own.
    ///
    /// # Errors
    /// [`DrainError`] when the drain cannot start.
    pub async fn drain(
        &self,
        deadline: Duration,
        progress: impl Fn(DrainProgress) + Send + Sync + 'static,
    ) -> Result<DrainSummary, DrainError> {
        let inner = &self.inner;
        let _guard = inner
            .drain_lock
            .try_lock()
            .map_err(|_| DrainError::AlreadyDraining)?;
        match inner.phase() {
            NodePhase::Stopping => return Err(DrainError::ShuttingDown),
            NodePhase::Upgrading => return Err(DrainError::Upgrading),
            _ => {}
        }
        inner.set_phase(NodePhase::Draining);
        let span = tracing::info_span!("drain", node = %self.node_id().short());
        let summary = self.drain_inner(deadline, progress).instrument(span).await;
        if inner.phase() == NodePhase::Draining {
            inner.set_phase(NodePhase::Serving);
        }
        inner
            .metrics
            .drain_duration
            .observe(summary.elapsed_seconds);
        Ok(summary)
    }

    async fn drain_inner(
        &self,
        deadline: Duration,
        progress: impl Fn(DrainProgress) + Send + Sync + 'static,
    ) -> DrainSummary {
        let inner = &self.inner;
        let started = Instant::now();
        let total = inner.rt.daemon_count();
        tracing::info!(daemons = total, ?deadline, "drain started");
        let me = self.node_id();
        let left = |started: Instant| {
            deadline
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(1))
        };
        let mut failed = Vec::new();
        let mut placed: Vec<(NodeId, usize)> = Vec::new();
        let mut cells_migrated = 0;
        let mut reports: Vec<MigrationReport> = Vec::new();
        let hosted: Vec<_> = inner
            .cells
            .list()
            .into_iter()
            .filter(|r| inner.cells.hosts(&r.id))
            .collect();
        for record in hosted {
            let filter: CapabilityFilter = record
                .placement
                .as_ref()
                .and_then(|p| p.requires.clone())
                .unwrap_or_default();
            let target = inner
                .mesh
                .find_nodes(&filter)
                .into_iter()
                .filter(|n| *n != me)
                .min_by_key(|n| placed.iter().find(|(p, _)| p == n).map_or(0, |(_, c)| *c));
            let Some(target) = target else {
                failed.push(DrainFailure {
                    origin_hash: None,
                    cell_id: Some(record.id.clone()),
                    reason: "no_capable_peer".into(),
                    message: format!(
                        "cell {:?}: no connected peer meets its placement",
                        record.id
                    ),
                });
                continue;
            };
            let opts = MigrationOpts::default().deadline(left(started));
            match inner.cells.migrate(&record.id, target, opts).await {
                Ok(report) => {
                    inner.metrics.migrations_started.inc();
                    inner.metrics.record_migration(&report);
                    reports.push(report);
                    cells_migrated += 1;
                    bump(&mut placed, target);
                }
                Err(CellMigrateError::Cell(CellError::CommandRunning(id))) => {
                    // Not a migration that failed: one that must not start.
                    let origin = inner.cell_origin(&id);
                    tracing::info!(cell = %id, origin = ?origin, "cell stays: its command is running");
                    failed.push(DrainFailure {
                        origin_hash: origin.map(|o| format!("{o:016x}")),
                        message: format!(
                            "cell {id:?}: its command is still running (a running process cannot move); it stays on this node"
                        ),
                        cell_id: Some(id),
                        reason: "command_running".into(),
                    });
                }
                Err(e) => {
                    inner.metrics.migrations_started.inc();
                    inner
                        .metrics
                        .migrations_failed
                        .get_or_create(&crate::metrics::Reason {
                            reason: variant_name(&e),
                        })
                        .inc();
                    failed.push(DrainFailure {
                        origin_hash: inner.cell_origin(&record.id).map(|o| format!("{o:016x}")),
                        cell_id: Some(record.id.clone()),
                        reason: variant_name(&e),
                        message: e.to_string(),
                    });
                }
            }
        }
        let opts = DrainOpts::default()
            .migration(MigrationOpts::default().deadline(left(started)))
            .skip_kinds([CELL_KIND])
            .on_progress(progress);
        let report = inner.rt.drain(opts).await;
        for (node, n) in &report.placed {
            for _ in 0..*n {
                bump(&mut placed, *node);
            }
        }
        let moved = report.migrated();
        inner
            .metrics
            .migrations_started
            .inc_by((moved + report.failed.len()) as u64);
        for done in &report.migrations {
            inner.metrics.record_migration(done);
        }
        reports.extend(report.migrations.iter().cloned());
        for (origin, e) in &report.failed {
            inner.metrics.migration_failed(e);
            tracing::warn!(origin = %format!("{origin:016x}"), error = %e, "daemon stays on this node");
            failed.push(DrainFailure {
                origin_hash: Some(format!("{origin:016x}")),
                cell_id: None,
                reason: variant_name(e),
                message: e.to_string(),
            });
        }
        let summary = DrainSummary {
            total,
            migrated: moved + cells_migrated,
            cells_migrated,
            placed: placed
                .into_iter()
                .map(|(n, c)| (n.to_string(), c))
                .collect(),
            failed,
            remaining: inner.rt.daemon_count(),
            migrated_bytes: reports.iter().map(|r| r.snapshot_bytes).sum(),
            blackout_max_seconds: reports
                .iter()
                .map(|r| r.blackout.as_secs_f64())
                .fold(0.0, f64::max),
            elapsed_seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            migrated = summary.migrated,
            failed = summary.failed.len(),
            remaining = summary.remaining,
            elapsed = ?started.elapsed(),
            "drain finished"
        );
        summary
    }
}

fn bump(placed: &mut Vec<(NodeId, usize)>, node: NodeId) {
    match placed.iter_mut().find(|(n, _)| *n == node) {
        Some((_, c)) => *c += 1,
        None => placed.push((node, 1)),
    }
}
