//! The whole HTTP application: the API routes (behind the token when one is
//! set), the page's static files, the OpenAPI document and Swagger UI, and
//! JSON answers for unknown paths and methods.

use crate::api::{self, ApiDoc, ApiError, AppState};
use crate::auth;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::header::{
    CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_SECURITY_POLICY, CONTENT_TYPE,
};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{middleware, Router};
use futures_util::StreamExt;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

/// The page (`/`), its script and its style, embedded in the binary.
const INDEX_HTML: &str = include_str!("static/index.html");
const APP_JS: &str = include_str!("static/app.js");
const STYLE_CSS: &str = include_str!("static/style.css");

/// The page may load only its own files and talk only to its own origin.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// Largest request body: a key and a 4 KiB value in JSON, with room.
const BODY_LIMIT: usize = 64 * 1024;

/// A body over [`BODY_LIMIT`] is still read (and dropped) up to this many
/// bytes before the 413 goes out: a server that answers and closes while
/// the client is still sending makes the kernel reset the connection, and
/// the client sees a broken pipe instead of the answer. Bodies declared
/// larger than this are answered at once, and the connection closed.
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

fn body_too_large() -> Response {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is over {} KiB", BODY_LIMIT / 1024),
    )
    .into_response()
}

/// Middleware: buffers a request body of at most [`BODY_LIMIT`] bytes for
/// the handler; a longer one is drained and answered 413 (see
/// [`DRAIN_LIMIT`]). The time a body may take is bounded by the body
/// timeout of [`crate::serve`].
async fn limit_body(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        let mut response = body_too_large();
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    let mut body = body.into_data_stream();
    let mut kept = Vec::new();
    let mut total: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let timed_out = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<tower_http::timeout::TimeoutError>())
                    || e.to_string().contains("timed out");
                return if timed_out {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "the request body did not arrive in time",
                    )
                    .into_response()
                } else {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("reading the request body: {e}"),
                    )
                    .into_response()
                };
            }
        };
        total += chunk.len() as u64;
        if total > DRAIN_LIMIT {
            let mut response = body_too_large();
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
        if total <= BODY_LIMIT as u64 {
            kept.extend_from_slice(&chunk);
        }
    }
    if total > BODY_LIMIT as u64 {
        return body_too_large();
    }
    next.run(Request::from_parts(parts, Body::from(kept))).await
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            (CONTENT_SECURITY_POLICY, PAGE_CSP),
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// Builds the application. With `token`, every API route needs it. With
/// `loopback_only` (a gateway on loopback without a token), requests must
/// name a loopback host (see `auth::require_loopback_host`).
pub fn router(state: AppState, token: Option<Arc<str>>, loopback_only: bool) -> Router {
    let mut api = Router::new()
        .route("/get/{key}", get(api::get_key))
        .route("/set", post(api::set_key))
        .route("/post", post(api::post_key))
        .route("/del/{key}", delete(api::del_key))
        .route("/status", get(api::status))
        .route("/events", get(api::events))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(limit_body))
        .with_state(state);
    if let Some(token) = token {
        api = api.route_layer(middleware::from_fn_with_state(token, auth::require_token));
    }
    let page = Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        );
    let app = Router::new()
        .merge(api)
        .merge(page)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        });
    if loopback_only {
        app.layer(middleware::from_fn(auth::require_loopback_host))
    } else {
        app
    }
}
