//! `GET /v1/events?since=CURSOR&follow=true`: the node's signed cell
//! events from its log, one JSON object per line (`{"cursor", "event"}`),
//! in log order; with `follow` the stream stays open and carries new
//! events as they are appended. Resume with the last cursor seen.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::wrappers::ReceiverStream;

use super::error::ApiError;
use crate::Node;

/// Events read from the log per batch.
const BATCH: usize = 256;
/// How often a following stream looks for new events.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// The query string.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    since: Option<u64>,
    follow: Option<bool>,
}

pub(crate) async fn stream(
    State(node): State<Node>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            return ApiError::bad_request("invalid_request", format!("query: {}", e.body_text()))
                .into_response()
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let mut cursor = q.since.unwrap_or(0);
    let follow = q.follow.unwrap_or(false);
    let cancel = node.inner.cancel.clone();
    let tasks = node.inner.tasks.clone();
    tasks.spawn(async move {
        loop {
            let batch = match node.cells().log().read_after(cursor, BATCH) {
                Ok(batch) => batch,
                Err(e) => {
                    let line =
                        json!({"error": {"code": "log_read_failed", "message": e.to_string()}});
                    let _ = tx.send(line_bytes(&line)).await;
                    return;
                }
            };
            let empty = batch.is_empty();
            for (at, signed) in batch {
                let event: Value = serde_json::from_slice(&signed.to_json()).unwrap_or(Value::Null);
                let line = json!({"cursor": at, "event": event});
                if tx.send(line_bytes(&line)).await.is_err() {
                    return;
                }
                cursor = at;
            }
            if empty {
                if !follow {
                    return;
                }
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return,
                    () = tx.closed() => return,
                    () = tokio::time::sleep(FOLLOW_POLL) => {}
                }
            }
        }
    });
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

fn line_bytes(v: &Value) -> Bytes {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}
