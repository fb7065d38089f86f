//! The control plane's error body: `{"error": {"code", "message"}}` with
//! the HTTP status that fits.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cellmesh::cell::{CellError, CellMigrateError};
use cellmesh::compute::{DaemonError, MigrateError};
use serde_json::json;

/// A failed request.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<CellError> for ApiError {
    fn from(e: CellError) -> Self {
        let message = e.to_string();
        match e {
            CellError::InvalidSpec(_) => Self::bad_request("invalid_document", message),
            CellError::AlreadyExists(_) => Self::conflict("already_exists", message),
            CellError::UnknownCell(_) => Self::not_found("unknown_cell", message),
            CellError::CommandRunning(_) => Self::conflict("command_running", message),
            CellError::NotHosted(_) => Self::conflict("not_hosted_here", message),
            CellError::NoCapableNode { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "no_capable_node", message)
            }
            CellError::PeerLost { .. } => Self::new(StatusCode::BAD_GATEWAY, "peer_lost", message),
            CellError::Timeout { .. } => Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message),
            CellError::Limit { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "limit_not_applied",
                message,
            ),
            CellError::Output { .. } => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "output_unreadable",
                message,
            ),
            _ => Self::new(StatusCode::BAD_GATEWAY, "cell_failed", message),
        }
    }
}

impl From<CellMigrateError> for ApiError {
    fn from(e: CellMigrateError) -> Self {
        match e {
            CellMigrateError::Cell(e) => e.into(),
            CellMigrateError::Upgrading(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "upgrading", e.to_string())
            }
            other => Self::new(
                StatusCode::BAD_GATEWAY,
                "migration_failed",
                other.to_string(),
            ),
        }
    }
}

impl From<MigrateError> for ApiError {
    fn from(e: MigrateError) -> Self {
        let message = e.to_string();
        match e {
            MigrateError::UnknownDaemon(_) => Self::not_found("unknown_daemon", message),
            MigrateError::TargetUnknown(_) => Self::not_found("unknown_node", message),
            MigrateError::TargetIsSelf(_) => Self::bad_request("target_is_self", message),
            MigrateError::AlreadyMigrating(_) => Self::conflict("already_migrating", message),
            _ => Self::new(StatusCode::BAD_GATEWAY, "migration_failed", message),
        }
    }
}

impl From<DaemonError> for ApiError {
    fn from(e: DaemonError) -> Self {
        let message = e.to_string();
        match e {
            DaemonError::FactoryNotFound(_) | DaemonError::InvalidKind(_) => {
                Self::bad_request("unknown_kind", message)
            }
            DaemonError::NotFound(_) | DaemonError::NotLocated(_) => {
                Self::not_found("unknown_daemon", message)
            }
            DaemonError::NotReady | DaemonError::ShuttingDown => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
            }
            DaemonError::CapabilityMismatch { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "no_capable_node", message)
            }
            _ => Self::new(StatusCode::BAD_GATEWAY, "daemon_failed", message),
        }
    }
}
