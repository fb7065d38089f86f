//! Moving a cell: from the node that hosts it ([`Cells::migrate`] there),
//! or from any node that knows its id (the request is forwarded to the
//! hosting node through the cell's daemon).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::cells::{CellMigrateError, Cells, CellsInner};
use super::node::Notice;
use super::supervisor::{record_event, Control};
use crate::cell::backend::CellError;
use crate::cell::remote::command::{Command, MigrationFigures, Reply, Step};
use crate::compute::{MigrationOpts, MigrationReport};
use crate::NodeId;

/// How long a forwarded migration may take before the requester gives up
/// waiting (the migration itself may still complete).
const FORWARDED_WAIT: Duration = Duration::from_secs(30);

impl Cells {
    /// Moves cell `id` to `target` with its projection, document, history
    /// and output files. Works from any node that knows the id: on the node
    /// hosting the cell it migrates it; elsewhere it asks that node to and
    /// waits (up to 30 s) until the cell's projection records the move.
    ///
    /// A cell whose command is still running is refused with
    /// [`CellError::CommandRunning`] (see the type docs).
    ///
    /// The report of a forwarded migration carries the figures the hosting
    /// node measured (`migration_id`, `blackout`, `snapshot_bytes`,
    /// `events_forwarded`), read from the cell after the move; its `total`
    /// is measured here, from the request to the move being recorded, and
    /// its `phases` are empty.
    ///
    /// # Errors
    /// [`CellMigrateError`] (`Upgrading` while the node hands its cells to
    /// its next process); on any error the cell stays where it was.
    pub async fn migrate(
        &self,
        id: &str,
        target: NodeId,
        opts: MigrationOpts,
    ) -> Result<MigrationReport, CellMigrateError> {
        if self
            .inner
            .handing_off
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(CellMigrateError::Upgrading(id.to_string()));
        }
        if self.hosts(id) {
            return migrate_local(&self.inner, id, target, opts).await;
        }
        let origin = self
            .inner
            .known
            .get(id)
            .map(|o| *o)
            .ok_or_else(|| CellError::UnknownCell(id.to_string()))?;
        let started = Instant::now();
        let before = self.get(id).await?.migrations;
        let command = Command::Migrate {
            target: target.to_string(),
        };
        self.inner.client.call_ok(id, origin, &command).await?;
        let moved = self
            .wait_until(id, FORWARDED_WAIT, |s| {
                s.migrations > before && s.current_node.as_deref() == Some(&target.to_string())
            })
            .await?;
        debug_assert!(moved.migrations > before);
        let total = started.elapsed();
        let figures = match self.inner.client.call(id, origin, &Command::Query).await {
            Ok(Reply::State { migration, .. }) => migration,
            _ => None,
        };
        let figures = figures.unwrap_or(MigrationFigures {
            migration_id: 0,
            total_us: 0,
            blackout_us: 0,
            snapshot_bytes: 0,
            events_forwarded: 0,
        });
        Ok(MigrationReport {
            migration_id: figures.migration_id,
            origin_hash: origin,
            target,
            total,
            phases: Vec::new(),
            blackout: Duration::from_micros(figures.blackout_us),
            snapshot_bytes: figures.snapshot_bytes,
            events_forwarded: figures.events_forwarded,
        })
    }
}

/// Runs a migration another node asked for.
pub(super) async fn on_request(inner: Arc<CellsInner>, cell_id: String, target: String) {
    let Ok(target) = target.parse::<NodeId>() else {
        tracing::warn!(cell = %cell_id, %target, "migration request names no node");
        return;
    };
    if let Err(e) = migrate_local(&inner, &cell_id, target, MigrationOpts::default()).await {
        tracing::warn!(cell = %cell_id, error = %e, "requested migration failed");
    }
}

async fn migrate_local(
    inner: &Arc<CellsInner>,
    id: &str,
    target: NodeId,
    opts: MigrationOpts,
) -> Result<MigrationReport, CellMigrateError> {
    // A hand-off to the node's next process waits for this migration to
    // end, and none starts while it runs.
    let _moving = inner.moves.read().await;
    if inner.handing_off.load(std::sync::atomic::Ordering::Acquire) {
        return Err(CellMigrateError::Upgrading(id.to_string()));
    }
    let origin = inner
        .known
        .get(id)
        .map(|o| *o)
        .ok_or_else(|| CellError::UnknownCell(id.to_string()))?;
    let control = inner
        .hosted
        .get(id)
        .map(|h| h.control.clone())
        .ok_or_else(|| CellError::NotHosted(id.to_string()))?;
    let (tx, rx) = oneshot::channel();
    control
        .send(Control::Detach(tx))
        .map_err(|_| CellError::UnknownCell(id.to_string()))?;
    let detached = rx
        .await
        .map_err(|_| CellError::UnknownCell(id.to_string()))??;
    // The next snapshot carries the output files.
    let leave = inner.client.call_ok(id, origin, &Command::Leave).await;
    let outcome = match leave {
        Err(e) => Err(CellMigrateError::Cell(e)),
        Ok(_) => match inner.rt.start_migration(origin, target, opts) {
            Ok(handle) => handle.wait().await,
            Err(e) => Err(e),
        }
        .map_err(|source| CellMigrateError::Migrate {
            id: id.to_string(),
            source,
        }),
    };
    match outcome {
        Ok(report) => {
            let step = Step::Migrated {
                from: inner.node.node_hex.clone(),
                to: target.to_string(),
                figures: Some(MigrationFigures::of(&report)),
            };
            let event = record_event(inner, id, origin, step).await?;
            // This node records that the cell left.
            inner.node.append(&event);
            inner.backend.discard_output(id);
            // A destroy asked for during the move went with the cell.
            inner.pending_destroy.remove(id);
            Ok(report)
        }
        Err(e) => {
            let _ = inner.client.call(id, origin, &Command::Stay).await;
            // Still ours: take the cell over again.
            inner.node.notify(Notice::Adopt {
                cell_id: id.to_string(),
                origin,
                doc: Box::new(detached.doc),
                exit: detached.exit,
                destroy: false,
                started: Some(detached.started),
                output: None,
                in_place: false,
            });
            Err(e)
        }
    }
}
