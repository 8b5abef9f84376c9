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
//! assert!(bearer_matches(Some("bearer s3cret"), "s3cret")); // schemes ignore case
//! assert!(!bearer_matches(Some("Bearer nope"), "s3cret"));
//! assert!(!bearer_matches(Some("s3cret"), "s3cret")); // no scheme
//! assert!(!bearer_matches(None, "s3cret"));
//! ```

use crate::api::ApiError;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Why a request's `Authorization` header does not let it through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header.
    Missing,
    /// A header whose scheme is not `Bearer` (or that has no scheme: the
    /// bare token).
    NotBearer,
    /// `Bearer` with another token.
    WrongToken,
}

impl Refusal {
    /// What the 401 says.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Missing => "this gateway needs a token: send Authorization: Bearer TOKEN",
            Refusal::NotBearer => {
                "the Authorization header must be Bearer TOKEN (the word Bearer, a space, then the token)"
            }
            Refusal::WrongToken => "the bearer token is wrong",
        }
    }
}

/// Checks an `Authorization` header value against `token`: the scheme
/// `Bearer` in any case (HTTP schemes are case-insensitive), then the
/// token, compared in time independent of where the strings differ.
///
/// # Errors
///
/// The [`Refusal`].
pub fn check_bearer(header: Option<&str>, token: &str) -> Result<(), Refusal> {
    let header = header.ok_or(Refusal::Missing)?.trim();
    let (scheme, given) = header.split_once([' ', '\t']).ok_or(Refusal::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Refusal::NotBearer);
    }
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if same {
        Ok(())
    } else {
        Err(Refusal::WrongToken)
    }
}

/// Whether an `Authorization` header value carries `token` (see
/// [`check_bearer`]).
pub fn bearer_matches(header: Option<&str>, token: &str) -> bool {
    check_bearer(header, token).is_ok()
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
    let refusal = match check_bearer(header, &token) {
        Ok(()) => return next.run(request).await,
        Err(r) => r,
    };
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, refusal.message()).into_response();
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
pub async fn require_loopback_host(
    State(port): State<u16>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok());
    match host {
        Some(h) if !is_loopback_host(h) => {
            ApiError::new(StatusCode::MISDIRECTED_REQUEST, misdirected(h, port)).into_response()
        }
        _ => next.run(request).await,
    }
}

/// The 421 message for `host`: the address to use instead, on `port`,
/// the one the gateway listens on.
fn misdirected(host: &str, port: u16) -> String {
    let address = if port == 80 {
        "http://127.0.0.1/".to_string()
    } else {
        format!("http://127.0.0.1:{port}/")
    };
    format!(
        "host {host:?} is not this machine's loopback: open {address} instead (or start kvs_http with --token to serve other names)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_is_case_insensitive_and_each_refusal_says_why() {
        assert_eq!(check_bearer(Some("Bearer s3cret"), "s3cret"), Ok(()));
        assert_eq!(check_bearer(Some("bearer s3cret"), "s3cret"), Ok(()));
        assert_eq!(check_bearer(Some("BEARER  s3cret "), "s3cret"), Ok(()));
        assert_eq!(check_bearer(None, "s3cret"), Err(Refusal::Missing));
        assert_eq!(
            check_bearer(Some("s3cret"), "s3cret"),
            Err(Refusal::NotBearer)
        );
        assert_eq!(
            check_bearer(Some("Basic czNjcmV0"), "s3cret"),
            Err(Refusal::NotBearer)
        );
        assert_eq!(
            check_bearer(Some("Bearer nope"), "s3cret"),
            Err(Refusal::WrongToken)
        );
        assert_eq!(
            check_bearer(Some("Bearer "), "s3cret"),
            Err(Refusal::NotBearer)
        );
        assert!(Refusal::NotBearer.message().contains("Bearer TOKEN"));
    }

    #[test]
    fn a_misdirected_request_is_told_the_address_with_its_port() {
        let m = misdirected("evil.example:9999", 8123);
        assert!(m.contains("http://127.0.0.1:8123/"), "{m}");
        assert!(!m.contains("PORT"), "{m}");
        assert!(misdirected("evil.example", 80).contains("http://127.0.0.1/"));
    }

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
