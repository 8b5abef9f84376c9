//! The whole HTTP application: the API routes (behind the token when one is
//! set), the page's static files, the OpenAPI document and Swagger UI, and
//! JSON answers for unknown paths and methods.

use crate::api::{self, ApiDoc, ApiError, AppState};
use crate::auth;
use axum::extract::DefaultBodyLimit;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{middleware, Router};
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
