//! The whole HTTP application: the API routes (behind the token when one is
//! set), the page's static files, the OpenAPI document and Swagger UI, and
//! JSON answers for unknown paths and methods.
//!
//! Request bodies are buffered by a middleware up to a limit that follows
//! the store the gateway is connected to (its `limits()`): a `PUT /raw`
//! body may be as long as the largest value, a JSON body
//! [`json_body_limit`], a batch [`batch_body_limit`]. A longer one is
//! answered 413.

use crate::api::{self, ApiError, AppState};
use crate::openapi::ApiDoc;
use crate::store::Connector;
use crate::{auth, batches, operations};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::{
    CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_SECURITY_POLICY, CONTENT_TYPE,
};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{middleware, Router};
use futures_util::StreamExt;
use http_body::Body as _;
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

/// The limits assumed (`kvs_server`'s defaults: 1 KiB keys, 1 MiB values)
/// while no server has been reached yet; the handler answers 503 then
/// anyway.
pub const DEFAULT_LIMITS: (u64, u64) = (1 << 10, 1 << 20);

/// Room in a JSON body beyond twice the largest key and value: the field
/// names, and escapes.
const JSON_ROOM: u64 = 64 * 1024;

/// A body over its limit is still read (and dropped) up to this many bytes
/// more before the 413 goes out: a server that answers and closes while
/// the client is still sending makes the kernel reset the connection, and
/// the client sees a broken pipe instead of the answer. Bodies declared
/// larger than that are answered at once, and the connection closed.
const DRAIN_ROOM: u64 = 16 * 1024 * 1024;

/// The largest JSON body for a store whose largest key and value are
/// `max_key` and `max_value` bytes: twice both (base64 takes 4/3, text
/// with a few escapes a little more), plus 64 KiB.
pub fn json_body_limit(max_key: u64, max_value: u64) -> u64 {
    max_key
        .saturating_add(max_value)
        .saturating_mul(2)
        .saturating_add(JSON_ROOM)
}

/// The least a batch body (`/mget`, `/mset`, `/mdel`) may be: room for
/// ten thousand keys with values of a kilobyte, whatever the store's
/// largest single value.
const BATCH_BODY_MIN: u64 = 16 << 20;

/// The largest batch body: [`json_body_limit`], and at least 16 MiB.
pub fn batch_body_limit(max_key: u64, max_value: u64) -> u64 {
    json_body_limit(max_key, max_value).max(BATCH_BODY_MIN)
}

/// Which limit a route's bodies have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    /// A JSON body: [`json_body_limit`].
    Json,
    /// A batch: [`batch_body_limit`].
    Batch,
    /// A value's bytes (`PUT /raw`): the largest value.
    Raw,
}

/// The state of [`limit_body`]: where the limits come from, and which.
#[derive(Debug, Clone)]
struct BodyLimit {
    connector: Arc<Connector>,
    kind: BodyKind,
}

impl BodyLimit {
    /// The limit for the store now: from the live connection, else from a
    /// new one (the handler would make it anyway), else from the last
    /// server reached, else [`DEFAULT_LIMITS`].
    async fn bytes(&self) -> u64 {
        let (max_key, max_value) = match self.connector.live_limits() {
            Some(l) => l,
            None => {
                let connector = Arc::clone(&self.connector);
                match tokio::task::spawn_blocking(move || connector.store().map(|s| s.limits()))
                    .await
                {
                    Ok(Ok(l)) => l,
                    _ => self.connector.last_limits().unwrap_or(DEFAULT_LIMITS),
                }
            }
        };
        match self.kind {
            BodyKind::Json => json_body_limit(max_key, max_value),
            BodyKind::Batch => batch_body_limit(max_key, max_value),
            BodyKind::Raw => max_value,
        }
    }

    fn too_large(&self, limit: u64) -> Response {
        let message = match self.kind {
            BodyKind::Json => format!(
                "the request body is over {limit} bytes (send a large value with PUT /raw/{{key}})"
            ),
            BodyKind::Batch => {
                format!("the request body is over {limit} bytes: split the batch")
            }
            BodyKind::Raw => {
                format!("the request body is over {limit} bytes, the store's largest value")
            }
        };
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message).into_response()
    }
}

fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Middleware: buffers a request body of at most the route's limit (see
/// [`BodyLimit::bytes`]) for the handler; a longer one is drained and
/// answered 413 (see [`DRAIN_ROOM`]). The time a body may take is bounded
/// by the body timeout of [`crate::serve`].
async fn limit_body(State(limit): State<BodyLimit>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if body.is_end_stream() {
        // No body (GET, DELETE): nothing to buffer or bound.
        return next.run(Request::from_parts(parts, body)).await;
    }
    let max = limit.bytes().await;
    let drain = max.saturating_add(DRAIN_ROOM);
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > drain) {
        return closing(limit.too_large(max));
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
        total = total.saturating_add(chunk.len() as u64);
        if total > drain {
            return closing(limit.too_large(max));
        }
        if total <= max {
            kept.extend_from_slice(&chunk);
        }
    }
    if total > max {
        return limit.too_large(max);
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
/// `loopback_only` (a gateway on loopback without a token: the port it
/// listens on), requests must name a loopback host (see
/// `auth::require_loopback_host`).
pub fn router(state: AppState, token: Option<Arc<str>>, loopback_only: Option<u16>) -> Router {
    let limit = |kind| {
        middleware::from_fn_with_state(
            BodyLimit {
                connector: Arc::clone(&state.connector),
                kind,
            },
            limit_body,
        )
    };
    let json = Router::new()
        .route("/get/{key}", get(api::get_key))
        .route("/get", get(api::get_key_query))
        .route("/set", post(api::set_key))
        .route("/post", post(api::post_key))
        .route("/del/{key}", delete(api::del_key))
        .route("/del", delete(api::del_key_query))
        .route("/status", get(api::status))
        .route("/events", get(api::events))
        .route("/ttl/{key}", get(operations::ttl_key))
        .route("/ttl", get(operations::ttl_query))
        .route("/expire", post(operations::expire))
        .route("/persist", post(operations::persist))
        .route("/incr", post(operations::incr))
        .route("/stats", get(api::stats))
        .layer(limit(BodyKind::Json));
    let batches = Router::new()
        .route("/mget", post(batches::mget))
        .route("/mset", post(batches::mset))
        .route("/mdel", post(batches::mdel))
        .layer(limit(BodyKind::Batch));
    let raw = Router::new()
        .route("/raw/{key}", get(api::raw_get).put(api::raw_put))
        .route("/raw", get(api::raw_get_query).put(api::raw_put_query))
        .layer(limit(BodyKind::Raw));
    // limit_body has bounded and buffered every body already.
    let mut api = json
        .merge(batches)
        .merge(raw)
        .layer(DefaultBodyLimit::disable())
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
    match loopback_only {
        Some(port) => app.layer(middleware::from_fn_with_state(
            port,
            auth::require_loopback_host,
        )),
        None => app,
    }
}
