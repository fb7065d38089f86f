//! `/v1/node/upgrade`: replace the node's binary in place.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body;
use super::error::{ApiError, ApiResult};
use crate::node::UpgradeState;
use crate::Node;

/// `{"binary": "/path/to/cellmesh"}` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpgradeBody {
    binary: Option<std::path::PathBuf>,
}

/// Starts an upgrade and answers once the successor runs (202 with both
/// pids) or the upgrade could not start. Follow it with `GET /v1/node`:
/// the successor answers there once it serves (`pid`, `took_over`).
pub(crate) async fn start(
    State(node): State<Node>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let request: UpgradeBody = body::json(raw)?;
    if node.inner.upgrade.borrow().is_running() {
        return Err(ApiError::conflict(
            "upgrade_running",
            "an upgrade of this node is already running",
        ));
    }
    let mut state = node.inner.upgrade.subscribe();
    let worker = node.clone();
    let mut upgrade = tokio::spawn(async move { worker.upgrade(request.binary).await });
    let started = |successor: u32| {
        (
            StatusCode::ACCEPTED,
            Json(json!({
                "incumbent_pid": std::process::id(),
                "successor_pid": successor,
            })),
        )
    };
    // Until the successor runs, or the upgrade ends before it does.
    tokio::select! {
        seen = state.wait_for(|s| matches!(s, UpgradeState::Running { .. })) => {
            match seen.map(|s| s.clone()) {
                Ok(UpgradeState::Running { successor }) => Ok(started(successor)),
                _ => Err(ApiError::conflict("upgrade_failed", "the node stopped")),
            }
        }
        ended = &mut upgrade => match ended {
            Ok(Ok(pid)) => Ok(started(pid)),
            Ok(Err(e)) => Err(ApiError::conflict("upgrade_failed", e.to_string())),
            Err(e) => Err(ApiError::conflict("upgrade_failed", e.to_string())),
        },
    }
}
