//! The HTTP control plane (axum): health, cells, daemons, peers, the node,
//! drain, events and metrics. JSON in and out; errors as
//! `{"error": {"code", "message"}}`. Every route but `/livez` and
//! `/readyz` needs the node's bearer token.

mod auth;
mod body;
mod cells;
mod daemons;
mod error;
mod events;
mod info;
mod upgrade;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use serde_json::json;

use crate::Node;
use error::ApiError;

/// The largest request body accepted: a cell document's bound.
pub const MAX_BODY_BYTES: usize = cellmesh::cell::MAX_DOCUMENT_BYTES;

/// The control plane's routes over `node`.
pub(crate) fn router(node: Node) -> Router {
    let authed = Router::new()
        .route("/v1/cells", get(cells::list).post(cells::apply))
        .route("/v1/cells/{id}", get(cells::describe).delete(cells::delete))
        .route("/v1/cells/{id}/output", get(cells::output))
        .route("/v1/cells/{id}/migrate", post(cells::migrate))
        .route("/v1/daemons", get(daemons::list).post(daemons::spawn))
        .route("/v1/daemons/{origin}/migrate", post(daemons::migrate))
        .route("/v1/peers", get(info::peers))
        .route("/v1/node", get(info::node))
        .route("/v1/node/drain", post(info::drain))
        .route("/v1/node/upgrade", post(upgrade::start))
        .route("/v1/events", get(events::stream))
        .route("/metrics", get(info::metrics))
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(
            node.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .merge(authed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(node)
}

/// Serves the control plane on `listener` until the node stops.
pub(crate) fn serve(node: &Node, listener: tokio::net::TcpListener) {
    let app = router(node.clone());
    let cancel = node.inner.cancel.clone();
    node.inner.tasks.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "control plane stopped");
        }
    });
}

async fn livez() -> Json<serde_json::Value> {
    Json(json!({"status": "alive"}))
}

async fn readyz(State(node): State<Node>) -> Response {
    if node.inner.is_ready() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        let phase = format!("{:?}", node.phase()).to_lowercase();
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("node is not ready: {phase}"),
        )
        .into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no_route", "no such route")
}
