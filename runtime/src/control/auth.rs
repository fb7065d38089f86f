//! Bearer-token authentication, compared in constant time.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::metrics::Reason;
use crate::Node;

/// Whether `header_value` is `Bearer <token>` with this node's token.
pub(crate) fn token_matches(header_value: Option<&[u8]>, token: &str) -> bool {
    let Some(value) = header_value else {
        return false;
    };
    let Some(given) = value.strip_prefix(b"Bearer ") else {
        return false;
    };
    let given = given.trim_ascii();
    // `ct_eq` on slices of different lengths is false without comparing
    // contents; only the length can leak, and every token is 64 digits.
    given.ct_eq(token.as_bytes()).into()
}

pub(crate) async fn require_token(State(node): State<Node>, req: Request, next: Next) -> Response {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let response = if token_matches(value, &node.inner.token) {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a bearer token is required (Authorization: Bearer <token>); the one given, if any, is not this node's",
        )
        .into_response()
    };
    let class = format!("{}xx", response.status().as_u16() / 100);
    node.inner
        .metrics
        .http_requests
        .get_or_create(&Reason { reason: class })
        .inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let token = "ab".repeat(32);
        assert!(token_matches(
            Some(format!("Bearer {token}").as_bytes()),
            &token
        ));
        assert!(!token_matches(None, &token));
        assert!(!token_matches(Some(token.as_bytes()), &token));
        assert!(!token_matches(Some(b"Bearer "), &token));
        let other = "ac".repeat(32);
        assert!(!token_matches(
            Some(format!("Bearer {other}").as_bytes()),
            &token
        ));
        assert!(!token_matches(
            Some(format!("Bearer {token}x").as_bytes()),
            &token
        ));
    }
}
