//! The optional bearer token (`kvs_http --token`): every API request must
//! carry `Authorization: Bearer TOKEN`, or it is answered 401.
//!
//! The page's static files and the API docs carry no data and stay open, so
//! a browser can load the page and then send the token with each call (the
//! page takes it from `?token=` on the first visit, see `docs/HTTP.md`).
//!
//! ```
//! use kvs_http::auth::bearer_matches;
//!
//! assert!(bearer_matches(Some("Bearer s3cret"), "s3cret"));
//! assert!(!bearer_matches(Some("Bearer nope"), "s3cret"));
//! assert!(!bearer_matches(None, "s3cret"));
//! ```

use crate::api::ApiError;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Whether an `Authorization` header value carries `token`. Compares in
/// time independent of where the strings differ.
pub fn bearer_matches(header: Option<&str>, token: &str) -> bool {
    let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware: lets the request through only with the right token.
pub async fn require_token(
    State(token): State<Arc<str>>,
    request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    if bearer_matches(header, &token) {
        return next.run(request).await;
    }
    let message = if header.is_some() {
        "the bearer token is wrong"
    } else {
        "this gateway needs a token: send Authorization: Bearer TOKEN"
    };
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}
