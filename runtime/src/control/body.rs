//! Request bodies: bounded, parsed strictly, errors naming the field.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The body's bytes, or a JSON error (413 when over the bound).
pub(crate) fn bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "request body is larger than {} bytes",
                    super::MAX_BODY_BYTES
                ),
            )
        } else {
            ApiError::bad_request("bad_body", rejection.body_text())
        }
    })
}

/// The body parsed as `T` (unknown fields refused where `T` says so); an
/// empty body is `T::default()`.
pub(crate) fn json<T: DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let raw = bytes(body)?;
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad_request("invalid_request", format!("request body: {e}")))
}

/// A node id field, parsed.
pub(crate) fn node_id(field: &str, text: &str) -> Result<cellmesh::mesh::NodeId, ApiError> {
    text.parse().map_err(|e| {
        ApiError::bad_request(
            "invalid_node_id",
            format!("field `{field}`: {text:?} is not a node id (64 hex digits): {e}"),
        )
    })
}
