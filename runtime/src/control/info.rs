//! `/v1/peers`, `/v1/node`, `/v1/node/drain` and `/metrics`.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cellmesh::cell::{rfc3339, CellRecordState};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::body;
use super::error::{ApiError, ApiResult};
use crate::metrics::{Reason, State as StateLabel};
use crate::Node;

pub(crate) async fn peers(State(node): State<Node>) -> Json<Vec<Value>> {
    let members = node.inner.mesh.members();
    Json(
        members
            .into_iter()
            .filter_map(|p| {
                let since = rfc3339(p.connected_since?);
                Some(json!({
                    "node_id": p.node.to_string(),
                    "address": p.addr.to_string(),
                    "tags": p.tags,
                    "connected_since": since,
                }))
            })
            .collect(),
    )
}

pub(crate) async fn node(State(node): State<Node>) -> Json<Value> {
    let inner = &node.inner;
    let tags: Vec<&str> = inner.mesh.capabilities().tags().collect();
    let view = inner.cells.view();
    Json(json!({
        "node_id": node.node_id().to_string(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": inner.started.elapsed().as_secs_f64(),
        "mesh_address": node.mesh_addr().to_string(),
        "control_address": node.control_addr().to_string(),
        "tags": tags,
        "phase": format!("{:?}", node.phase()).to_lowercase(),
        "ready": inner.is_ready(),
        "kinds": inner.kinds,
        "daemons": inner.rt.daemon_count(),
        "cells": view.cells().count(),
        "peers": inner.mesh.peers().len(),
        "events_cursor": view.cursor(),
        "pid": std::process::id(),
        "upgrade": upgrade_state(&inner.upgrade.borrow()),
        "took_over": node.took_over(),
    }))
}

fn upgrade_state(state: &crate::node::UpgradeState) -> Value {
    use crate::node::UpgradeState;
    match state {
        UpgradeState::Idle => json!({"state": "idle"}),
        UpgradeState::Starting => json!({"state": "starting"}),
        UpgradeState::Running { successor } => {
            json!({"state": "running", "successor_pid": successor})
        }
        UpgradeState::Ended(reason) => json!({"state": "ended", "reason": reason}),
        UpgradeState::HandedOver => json!({"state": "handed_over"}),
    }
}

/// `{"deadline": "60s"}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DrainBody {
    deadline: Option<String>,
}

/// Streams the drain's progress as newline-delimited JSON: `{"type":
/// "progress", "total", "migrated", "failed"}` lines, then one `{"type":
/// "report", ...}` (or `{"type": "error", ...}`).
pub(crate) async fn drain(
    State(node): State<Node>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: DrainBody = body::json(raw)?;
    let deadline = match request.deadline {
        None => node.config().drain_deadline,
        Some(text) => match humantime::parse_duration(&text) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!("field `deadline`: {text:?} is not a duration like 60s"),
                ))
            }
        },
    };
    if node.inner.drain_lock.try_lock().is_err() {
        return Err(ApiError::conflict(
            "already_draining",
            "a drain of this node is already running",
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let progress_tx = tx.clone();
    // The daemon drain's own count: cell daemons move with their cells.
    let total = node
        .runtime()
        .daemons(false)
        .iter()
        .filter(|d| d.kind != cellmesh::cell::CELL_KIND)
        .count();
    tx.send(json!({"type": "progress", "total": total, "migrated": 0, "failed": 0}))
        .ok();
    let worker = node.clone();
    node.inner.tasks.spawn(async move {
        let result = worker
            .drain(deadline, move |p| {
                let _ = progress_tx.send(json!({
                    "type": "progress",
                    "total": p.total,
                    "migrated": p.migrated,
                    "failed": p.failed,
                }));
            })
            .await;
        let last = match result {
            Ok(summary) => {
                let mut v = serde_json::to_value(&summary).unwrap_or(Value::Null);
                if let Value::Object(map) = &mut v {
                    map.insert("type".into(), "report".into());
                }
                v
            }
            Err(e) => json!({"type": "error", "error": {"code": "drain_failed", "message": e.to_string()}}),
        };
        let _ = tx.send(last);
    });
    let lines = UnboundedReceiverStream::new(rx).map(|v| {
        let mut line = serde_json::to_vec(&v).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

pub(crate) async fn metrics(State(node): State<Node>) -> Response {
    let inner = &node.inner;
    let m = &inner.metrics;
    m.daemons_hosted.set(inner.rt.daemon_count() as i64);
    m.peers_connected.set(inner.mesh.peers().len() as i64);
    let stats = inner.mesh.admission_stats();
    for (reason, n) in [
        ("bad_proof", stats.bad_proof),
        ("malformed", stats.malformed),
        ("timeout", stats.timeout),
        ("own_id", stats.own_id),
        ("duplicate_id", stats.duplicate_id),
        ("other", stats.other),
        ("over_limit", stats.over_limit),
    ] {
        m.admissions_refused
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .set(n as i64);
    }
    let view = inner.cells.view();
    let mut by_state = [0i64; 5];
    for record in view.cells() {
        let i = match record.state {
            CellRecordState::Pending => 0,
            CellRecordState::Running => 1,
            CellRecordState::Failed => 3,
            CellRecordState::Moved => 4,
            _ => 2,
        };
        by_state[i] += 1;
    }
    for (state, n) in ["pending", "running", "destroyed", "failed", "moved"]
        .iter()
        .zip(by_state)
    {
        m.cells
            .get_or_create(&StateLabel {
                state: (*state).into(),
            })
            .set(n);
    }
    m.observe_log_cursor(view.cursor());
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}
