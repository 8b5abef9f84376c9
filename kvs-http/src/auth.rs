//! The optional bearer token (`kvs_http --token`): every API request must
//! carry `Authorization: Bearer TOKEN`, or it is answered 401.
//!
//! The page's static files and the API docs carry no data and stay open, so
//! a browser can load the page and then send the token with each call (the
//! page takes it from `?token=` on the first visit, see the README's gateway section).
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

/// Whether a `Host` header names this machine's loopback: `localhost`,
/// `127.x.y.z` or `[::1]`, with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // "[::1]:8000" or "[::1]"
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Middleware for a gateway on loopback without a token: refuses requests
/// whose `Host` is not a loopback name (421), so a web page elsewhere cannot
/// reach the store through DNS rebinding (a hostile name that resolves to
/// 127.0.0.1 is still sent as that name in `Host`).
pub async fn require_loopback_host(request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok());
    match host {
        Some(h) if !is_loopback_host(h) => ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "host {h:?} is not this machine's loopback; open the page as http://127.0.0.1:PORT/ (or start kvs_http with --token)"
            ),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn loopback_hosts_are_recognised() {
        for h in [
            "localhost",
            "LOCALHOST:8000",
            "127.0.0.1",
            "127.0.0.1:8000",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8000",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:8000",
            "10.0.0.1:8000",
            "localhost.evil.example",
            "[::2]:80",
            "",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
