//! `/v1/daemons`: list, spawn, migrate.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use cellmesh::cell::CELL_KIND;
use cellmesh::compute::{DaemonHostConfig, MigrationOpts, Placement};
use cellmesh::Identity;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::Instrument;

use super::body;
use super::cells::{target, MigrateBody};
use super::error::{ApiError, ApiResult};
use crate::Node;

/// Most daemons one spawn request may ask for.
pub const MAX_SPAWN: u32 = 10_000;

/// Spawns of one request in flight at once.
const SPAWN_CONCURRENCY: usize = 32;

/// A hosted daemon as `GET /v1/daemons` lists it.
#[derive(Debug, Serialize)]
struct DaemonJson {
    origin_hash: String,
    kind: String,
    entity_id: String,
    events_processed: u64,
    state_bytes: Option<u64>,
}

pub(crate) async fn list(State(node): State<Node>) -> Json<Vec<Value>> {
    let daemons = node.runtime().daemons(true);
    Json(
        daemons
            .into_iter()
            .map(|d| {
                serde_json::to_value(DaemonJson {
                    origin_hash: format!("{:016x}", d.origin_hash),
                    kind: d.kind,
                    entity_id: d.entity_id.to_string(),
                    events_processed: d.events_processed,
                    state_bytes: d.state_bytes,
                })
                .unwrap_or(Value::Null)
            })
            .collect(),
    )
}

/// `{"kind", "count", "on"}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SpawnBody {
    kind: Option<String>,
    count: Option<u32>,
    on: Option<String>,
}

pub(crate) async fn spawn(
    State(node): State<Node>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let request: SpawnBody = body::json(raw)?;
    let kind = request
        .kind
        .ok_or_else(|| ApiError::bad_request("invalid_request", "field `kind` is required"))?;
    if kind == CELL_KIND || !node.inner.kinds.contains(&kind) {
        return Err(ApiError::bad_request(
            "unknown_kind",
            format!(
                "field `kind`: {kind:?} is not a kind this node spawns (it has {:?})",
                node.inner
                    .kinds
                    .iter()
                    .filter(|k| *k != CELL_KIND)
                    .collect::<Vec<_>>()
            ),
        ));
    }
    let count = request.count.unwrap_or(1);
    if count == 0 || count > MAX_SPAWN {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("field `count`: {count} is not within 1..={MAX_SPAWN}"),
        ));
    }
    let placement = match &request.on {
        None => Placement::Local,
        Some(on) => {
            let to = body::node_id("on", on)?;
            if to == node.node_id() {
                Placement::Local
            } else {
                target(
                    &node,
                    &MigrateBody {
                        to: Some(on.clone()),
                    },
                )?;
                Placement::Node(to)
            }
        }
    };
    // Concurrently, a bounded number at a time: a spawn on a peer is a
    // network round trip each.
    let results: Vec<_> = futures_util::stream::iter(0..count)
        .map(|_| {
            node.runtime().spawn_on(
                &kind,
                Identity::generate(),
                DaemonHostConfig::default(),
                placement.clone(),
            )
        })
        .buffered(SPAWN_CONCURRENCY)
        .collect()
        .await;
    let mut spawned = Vec::with_capacity(results.len());
    let mut first_error = None;
    let mut failed = 0usize;
    for placed in results {
        match placed {
            Ok(p) => spawned.push(json!({
                "origin_hash": format!("{:016x}", p.origin_hash),
                "node_id": p.node.to_string(),
            })),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        if spawned.is_empty() {
            return Err(e.into());
        }
        tracing::warn!(kind = %kind, error = %e, spawned = spawned.len(), failed, "some spawns failed");
        return Ok((
            StatusCode::MULTI_STATUS,
            Json(json!({
                "spawned": spawned,
                "failed": failed,
                "error": {"code": "spawn_failed", "message": e.to_string()},
            })),
        ));
    }
    tracing::info!(kind = %kind, count, "daemons spawned");
    Ok((StatusCode::CREATED, Json(json!({"spawned": spawned}))))
}

pub(crate) async fn migrate(
    State(node): State<Node>,
    Path(origin): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let origin_hash = u64::from_str_radix(origin.trim_start_matches("0x"), 16).map_err(|_| {
        ApiError::bad_request(
            "invalid_origin",
            format!("{origin:?} is not an origin hash (16 hex digits)"),
        )
    })?;
    let request: MigrateBody = body::json(raw)?;
    let to = target(&node, &request)?;
    let metrics = &node.inner.metrics;
    let handle = node
        .runtime()
        .start_migration(origin_hash, to, MigrationOpts::default())?;
    metrics.migrations_started.inc();
    let span = tracing::info_span!(
        "migration",
        id = handle.id(),
        origin = %format!("{origin_hash:016x}"),
        peer = %to.short()
    );
    match handle.wait().instrument(span).await {
        Ok(report) => {
            metrics.record_migration(&report);
            tracing::info!(origin = %format!("{origin_hash:016x}"), to = %to, "daemon migrated");
            Ok(Json(json!({
                "origin_hash": format!("{origin_hash:016x}"),
                "to": to.to_string(),
                "total_seconds": report.total.as_secs_f64(),
                "blackout_seconds": report.blackout.as_secs_f64(),
                "snapshot_bytes": report.snapshot_bytes,
            })))
        }
        Err(e) => {
            metrics.migration_failed(&e);
            Err(e.into())
        }
    }
}
