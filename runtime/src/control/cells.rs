//! `/v1/cells`: apply, list, describe, output, delete, migrate.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use cellmesh::cell::{CellError, CellRecord, CellStateSnapshot, ExecutionCellDocument, ExitReport};
use cellmesh::compute::MigrationOpts;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::Instrument;

use super::body;
use super::error::{ApiError, ApiResult};
use crate::metrics::snake;
use crate::Node;

/// A cell as `GET /v1/cells` lists it: the node's record.
#[derive(Debug, Serialize)]
pub(crate) struct CellJson {
    id: String,
    spec_id: String,
    run_id: Option<String>,
    state: String,
    exit_code: Option<i32>,
    outcome: Option<String>,
    started_at: Option<String>,
    destroyed_at: Option<String>,
    current_node: Option<String>,
    hosted_here: bool,
    last_cursor: u64,
}

fn record_json(node: &Node, r: &CellRecord) -> CellJson {
    CellJson {
        id: r.id.clone(),
        spec_id: r.spec_id.clone(),
        run_id: r.run_id.clone(),
        state: enum_name(&r.state),
        exit_code: r.exit_code,
        outcome: r.outcome.clone(),
        started_at: r.started_at.clone(),
        destroyed_at: r.destroyed_at.clone(),
        current_node: r.current_node.clone(),
        hosted_here: node.cells().hosts(&r.id),
        last_cursor: r.last_cursor,
    }
}

/// A serde enum's name, snake_case.
fn enum_name(v: &impl Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => snake(&s),
        _ => "unknown".into(),
    }
}

/// The cell's projection, snake_case.
fn projection_json(s: &CellStateSnapshot) -> Value {
    json!({
        "cell_id": s.cell_id,
        "spec_id": s.spec_id,
        "run_id": s.run_id,
        "lifecycle_stage": enum_name(&s.lifecycle_stage),
        "identity_stage": enum_name(&s.identity_stage),
        "export_stage": enum_name(&s.export_stage),
        "current_state": enum_name(&s.current_state),
        "command_exit_code": s.command_exit_code,
        "destroy_reason": s.destroy_reason,
        "last_error": s.last_error,
        "current_node": s.current_node,
        "migrations": s.migrations,
        "processed_events": s.processed_events,
    })
}

fn exit_json(e: &ExitReport) -> Value {
    json!({
        "exit_code": e.exit_code,
        "terminal_state": enum_name(&e.terminal_state),
        "forced_reason": e.forced_reason,
        "duration_ms": e.duration_ms,
        "stdout_bytes": e.stdout_bytes,
        "stderr_bytes": e.stderr_bytes,
        "output_truncated": e.output_truncated,
    })
}

pub(crate) async fn apply(
    State(node): State<Node>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let raw = body::bytes(raw)?;
    let doc = ExecutionCellDocument::from_json(&raw).map_err(CellError::InvalidSpec)?;
    doc.validate().map_err(CellError::InvalidSpec)?;
    let id = doc.id().to_string();
    if node.phase() == crate::node::NodePhase::Upgrading {
        // Its command would start in the process being replaced.
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upgrading",
            format!("cell {id:?}: the node is being upgraded; apply it again once it serves"),
        ));
    }
    let filter = doc.placement_filter();
    let mesh = &node.inner.mesh;
    if mesh.find_nodes(&filter).is_empty() {
        return Err(CellError::NoCapableNode {
            id,
            why: format!("neither this node nor a connected peer meets {filter:?}"),
        }
        .into());
    }
    let span = tracing::info_span!("cell", id = %id);
    let origin = node.cells().apply(doc).instrument(span).await?;
    tracing::info!(cell = %id, origin = %format!("{origin:016x}"), "cell applied");
    node.inner.note_cell_origin(&id, origin);
    Ok((
        StatusCode::CREATED,
        Json(json!({"cell_id": id, "origin_hash": format!("{origin:016x}")})),
    ))
}

pub(crate) async fn list(State(node): State<Node>) -> Json<Vec<CellJson>> {
    let cells = node.cells().list();
    Json(cells.iter().map(|r| record_json(&node, r)).collect())
}

fn record_of(node: &Node, id: &str) -> Option<CellRecord> {
    node.cells().record(id)
}

pub(crate) async fn describe(
    State(node): State<Node>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let record = record_of(&node, &id);
    let queried = node.cells().query(&id).await;
    let (projection, exit) = match queried {
        Ok((state, exit)) => (Some(projection_json(&state)), exit.as_ref().map(exit_json)),
        Err(CellError::UnknownCell(_)) if record.is_some() => (None, None),
        Err(e) => return Err(e.into()),
    };
    let record = record.map(|r| record_json(&node, &r));
    Ok(Json(json!({
        "id": id,
        "record": record,
        "projection": projection,
        "exit": exit,
    })))
}

pub(crate) async fn output(
    State(node): State<Node>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (_, exit) = node.cells().query(&id).await?;
    // The output files, wherever the cell runs (empty before it started).
    let output = match node.cells().output(&id).await {
        Ok(output) => Some(output),
        Err(CellError::UnknownCell(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let text = |b: Option<&bytes::Bytes>| b.map(|b| String::from_utf8_lossy(b).into_owned());
    Ok(Json(json!({
        "cell_id": id,
        "finished": exit.is_some(),
        "exit_code": exit.as_ref().map(|e| e.exit_code),
        "stdout": text(output.as_ref().map(|o| &o.stdout)).unwrap_or_default(),
        "stderr": text(output.as_ref().map(|o| &o.stderr)).unwrap_or_default(),
        "stdout_bytes": output.as_ref().map_or(0, |o| o.stdout_bytes),
        "stderr_bytes": output.as_ref().map_or(0, |o| o.stderr_bytes),
        "output_truncated": output.as_ref().is_some_and(|o| o.truncated),
    })))
}

pub(crate) async fn delete(
    State(node): State<Node>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    node.cells().destroy(&id).await?;
    tracing::info!(cell = %id, "cell destroy requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"cell_id": id, "destroying": true})),
    ))
}

/// `{"to": "<node id>"}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MigrateBody {
    pub(crate) to: Option<String>,
}

/// The target of a migration: a connected peer.
pub(crate) fn target(node: &Node, body: &MigrateBody) -> ApiResult<cellmesh::mesh::NodeId> {
    let to = body
        .to
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("invalid_request", "field `to` is required"))?;
    let target = body::node_id("to", to)?;
    if target == node.node_id() {
        return Err(ApiError::bad_request(
            "target_is_self",
            format!("node {target} is this node"),
        ));
    }
    if !node.inner.mesh.peers().contains(&target) {
        return Err(ApiError::not_found(
            "unknown_node",
            format!("node {target} is not a connected peer of this node"),
        ));
    }
    Ok(target)
}

pub(crate) async fn migrate(
    State(node): State<Node>,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let request: MigrateBody = body::json(raw)?;
    let to = target(&node, &request)?;
    // A cell hosted elsewhere is moved by the node hosting it: the SDK
    // forwards the request there and waits for the move.
    if !node.cells().hosts(&id) && record_of(&node, &id).is_none() {
        return Err(CellError::UnknownCell(id).into());
    }
    let metrics = &node.inner.metrics;
    metrics.migrations_started.inc();
    let span = tracing::info_span!("cell_migration", cell = %id, peer = %to.short());
    let result = node
        .cells()
        .migrate(&id, to, MigrationOpts::default())
        .instrument(span)
        .await;
    match result {
        Ok(report) => {
            metrics.record_migration(&report);
            tracing::info!(cell = %id, to = %to, "cell migrated");
            Ok(Json(json!({
                "cell_id": id,
                "to": to.to_string(),
                "total_seconds": report.total.as_secs_f64(),
                "blackout_seconds": report.blackout.as_secs_f64(),
                "snapshot_bytes": report.snapshot_bytes,
            })))
        }
        Err(e) => {
            metrics
                .migrations_failed
                .get_or_create(&crate::metrics::Reason {
                    reason: crate::metrics::variant_name(&e),
                })
                .inc();
            Err(e.into())
        }
    }
}
