//! The REST API: handlers, the JSON bodies, the error mapping and the
//! OpenAPI document.
//!
//! | method and path | body in | answer |
//! |---|---|---|
//! | `GET /get/{key}` | | 200 [`EntryBody`], 404 |
//! | `POST /set` | [`KeyValue`] | 200 [`KeyValue`] |
//! | `POST /post` | [`KeyValue`] | 201 [`KeyValue`], 409 when the key exists |
//! | `DELETE /del/{key}` | | 200 [`KeyBody`], 404 |
//! | `GET /status?cursor=&limit=&prefix=` | | 200 [`StatusBody`] |
//! | `GET /events` | | a server-sent-events stream (see [`crate::events`]) |
//!
//! Every error answers `{"error": "..."}` ([`ErrorBody`]) with: 400 a
//! malformed request, 401 a missing or wrong token, 404 absent, 409 exists,
//! 413 key or value too long, 502 an answer the gateway cannot interpret,
//! 503 the store is not reachable, 507 the store is full.
//!
//! Store calls block for microseconds while the server is up, and up to the
//! client's timeout when it hangs, so each one runs on tokio's blocking pool.

use crate::events::{self, GatewayEvent, PumpState};
use crate::store::Connector;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kvs_client::text::{KeyError, TextClient, TextEntry, TextError, ValueError};
use kvs_client::ClientError;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::{broadcast, watch};
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, OpenApi, ToSchema};

/// What the handlers share: the store connection and the event fan-out.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The connection to the store, replaced when the server restarts.
    pub connector: Arc<Connector>,
    /// Change events from the pump thread (see [`crate::events`]).
    pub events: broadcast::Sender<GatewayEvent>,
    /// The pump's state, which a new stream waits on.
    pub pump: watch::Receiver<PumpState>,
}

/// A key and its value (the body of `/set` and `/post`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyValue {
    /// The key: UTF-8 text, at most 63 bytes, no NUL.
    #[schema(example = "greeting")]
    pub key: String,
    /// The value: UTF-8 text, at most the server's value size (255 bytes by
    /// default, see `limits` in `/status`), no NUL.
    #[schema(example = "hello world")]
    pub value: String,
}

/// A key (the answer of `/del`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyBody {
    /// The key.
    pub key: String,
}

/// An entry with its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EntryBody {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// The entry's version: the store's version at its last change.
    pub version: u64,
    /// Last change, unix milliseconds.
    pub modified_ms: u64,
}

impl From<TextEntry> for EntryBody {
    fn from(e: TextEntry) -> Self {
        Self {
            key: e.key,
            value: e.value,
            version: e.version,
            modified_ms: e.modified_ns / 1_000_000,
        }
    }
}

/// The longest key and value the store accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LimitsBody {
    /// Longest key, in bytes.
    pub key_max_bytes: usize,
    /// Longest value, in bytes.
    pub value_max_bytes: usize,
}

/// The store's state and one page of its entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatusBody {
    /// The region name.
    pub region: String,
    /// The store's version, bumped by every change.
    pub version: u64,
    /// Entries in the store.
    pub entry_count: u64,
    /// The entry limit, `null` for unlimited.
    pub max_entries: Option<u64>,
    /// Key and value limits.
    pub limits: LimitsBody,
    /// This page of entries, in the store's listing order.
    pub entries: Vec<EntryBody>,
    /// Pass as `?cursor=` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The query of `/status`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// The `next_cursor` of the previous page; absent for the first page.
    pub cursor: Option<String>,
    /// Entries per page: 1 to 5000, 500 when absent.
    pub limit: Option<usize>,
    /// Only keys that start with this prefix.
    pub prefix: Option<String>,
}

/// The body of every error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    #[schema(example = "key \"greeting\" not found")]
    pub error: String,
}

/// Entries per `/status` page when `limit` is absent.
pub const DEFAULT_PAGE: usize = 500;
/// The largest `limit` of `/status`.
pub const MAX_PAGE: usize = 5000;

/// An error answer: a status code and a message, sent as [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The message.
    pub message: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // One line per failed request only at debug: an outage or a full
        // store would otherwise log a line per request (the outage itself
        // is logged once, by the connector and the events pump).
        if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::warn!(status = %self.status, "{}", self.message);
        } else if self.status.is_server_error() {
            tracing::debug!(status = %self.status, "{}", self.message);
        }
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

fn value_status(e: ValueError) -> StatusCode {
    match e {
        ValueError::TooLong { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        ValueError::ContainsNul { .. } | ValueError::NotUtf8 => StatusCode::BAD_REQUEST,
    }
}

impl From<TextError> for ApiError {
    fn from(e: TextError) -> Self {
        let status = match &e {
            TextError::Key(KeyError::TooLong { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            TextError::Key(_) => StatusCode::BAD_REQUEST,
            TextError::Value(f) => value_status(*f),
            TextError::Cursor(_) => StatusCode::BAD_REQUEST,
            TextError::Prefix { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            TextError::NotText { .. } => StatusCode::SERVICE_UNAVAILABLE,
            TextError::Client(c) => match c {
                ClientError::StoreFull => StatusCode::INSUFFICIENT_STORAGE,
                ClientError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
                ClientError::Protocol(_) => StatusCode::BAD_GATEWAY,
                // Connect, ServerGone, Timeout, RingFull, NoFreeSlot,
                // SlotLost: the store is down, restarting or overloaded.
                _ => StatusCode::SERVICE_UNAVAILABLE,
            },
        };
        let message = match &e {
            TextError::Client(
                ClientError::Connect(_) | ClientError::ServerGone | ClientError::SlotLost,
            ) => format!("the store is not reachable: {e}"),
            _ => e.to_string(),
        };
        Self::new(status, message)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

/// Runs `f` on the current store connection on the blocking pool; forgets
/// the connection when the call says the server is gone, so the next
/// request reconnects.
async fn with_store<T, F>(state: &AppState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&TextClient) -> Result<T, TextError> + Send + 'static,
{
    let connector = Arc::clone(&state.connector);
    tokio::task::spawn_blocking(move || {
        let store = connector.store()?;
        let result = f(&store);
        if let Err(TextError::Client(ClientError::ServerGone | ClientError::SlotLost)) = &result {
            connector.forget(&store);
        }
        result
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the request failed: {e}"),
        )
    })?
    .map_err(ApiError::from)
}

/// The error answers of a call that names one key in the path.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description for the OpenAPI document only
enum KeyErrors {
    #[response(status = 400, description = "Malformed key")]
    Malformed(ErrorBody),
    #[response(status = 404, description = "No such key")]
    Absent(ErrorBody),
    #[response(status = 413, description = "Key too long")]
    TooLong(ErrorBody),
    #[response(status = 503, description = "Store not reachable")]
    Unreachable(ErrorBody),
}

/// The error answers of a call that writes a key and a value.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description for the OpenAPI document only
enum WriteErrors {
    #[response(status = 400, description = "Malformed request")]
    Malformed(ErrorBody),
    #[response(status = 413, description = "Key or value too long")]
    TooLong(ErrorBody),
    #[response(status = 503, description = "Store not reachable")]
    Unreachable(ErrorBody),
    #[response(
        status = 507,
        description = "Store full (a new key beyond the entry limit)"
    )]
    Full(ErrorBody),
}

fn not_found(key: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("key {key:?} not found"))
}

/// The value of a key.
#[utoipa::path(
    get,
    path = "/get/{key}",
    tag = "store",
    params(("key" = String, Path, description = "The key (percent-encoded)")),
    responses((status = 200, description = "The entry", body = EntryBody), KeyErrors)
)]
pub async fn get_key(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<EntryBody>, ApiError> {
    let Path(key) = key?;
    let k = key.clone();
    match with_store(&state, move |s| s.get(&k)).await? {
        Some(e) => Ok(Json(e.into())),
        None => Err(not_found(&key)),
    }
}

/// Sets a key to a value, inserting or replacing.
#[utoipa::path(
    post,
    path = "/set",
    tag = "store",
    request_body = KeyValue,
    responses((status = 200, description = "Set", body = KeyValue), WriteErrors)
)]
pub async fn set_key(
    State(state): State<AppState>,
    body: Result<Json<KeyValue>, JsonRejection>,
) -> Result<Json<KeyValue>, ApiError> {
    let Json(kv) = body?;
    let sent = kv.clone();
    with_store(&state, move |s| s.set(&sent.key, &sent.value)).await?;
    Ok(Json(kv))
}

/// Inserts a key only if it is absent.
#[utoipa::path(
    post,
    path = "/post",
    tag = "store",
    request_body = KeyValue,
    responses(
        (status = 201, description = "Inserted", body = KeyValue),
        (status = 409, description = "The key exists (nothing changed)", body = ErrorBody),
        WriteErrors
    )
)]
pub async fn post_key(
    State(state): State<AppState>,
    body: Result<Json<KeyValue>, JsonRejection>,
) -> Result<(StatusCode, Json<KeyValue>), ApiError> {
    let Json(kv) = body?;
    let sent = kv.clone();
    if with_store(&state, move |s| s.post(&sent.key, &sent.value)).await? {
        Ok((StatusCode::CREATED, Json(kv)))
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("key {:?} already exists", kv.key),
        ))
    }
}

/// Deletes a key.
#[utoipa::path(
    delete,
    path = "/del/{key}",
    tag = "store",
    params(("key" = String, Path, description = "The key (percent-encoded)")),
    responses((status = 200, description = "Deleted", body = KeyBody), KeyErrors)
)]
pub async fn del_key(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<KeyBody>, ApiError> {
    let Path(key) = key?;
    let k = key.clone();
    if with_store(&state, move |s| s.del(&k)).await? {
        Ok(Json(KeyBody { key }))
    } else {
        Err(not_found(&key))
    }
}

/// The store's version, entry count, limits and one page of entries.
#[utoipa::path(
    get,
    path = "/status",
    tag = "store",
    params(StatusQuery),
    responses(
        (status = 200, description = "Status and entries", body = StatusBody),
        (status = 400, description = "Malformed query or cursor", body = ErrorBody),
        (status = 503, description = "Store not reachable", body = ErrorBody),
    )
)]
pub async fn status(
    State(state): State<AppState>,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Json<StatusBody>, ApiError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}, not {limit}"
        )));
    }
    with_store(&state, move |s| {
        let st = s.status()?;
        let page = s.list_page(
            q.prefix.as_deref().unwrap_or(""),
            q.cursor.as_deref(),
            limit,
        )?;
        let limits = s.limits();
        Ok(StatusBody {
            region: st.region,
            version: st.version,
            entry_count: st.entries,
            max_entries: st.max_entries,
            limits: LimitsBody {
                key_max_bytes: limits.key_max_bytes,
                value_max_bytes: limits.value_max_bytes,
            },
            entries: page.entries.into_iter().map(EntryBody::from).collect(),
            next_cursor: page.next,
        })
    })
    .await
    .map(Json)
}

/// A server-sent-events stream of changes.
///
/// Events: `ready` (subscribed: load the table now; every change after it
/// is delivered), `change`
/// (`{"key","value","version","modified_ms"}`), `delete` (`{"key","version"}`), `resync`
/// (changes were missed or the server restarted: reload from `/status`),
/// `unavailable` (`{"error"}`: the store is not reachable).
#[utoipa::path(
    get,
    path = "/events",
    tag = "store",
    responses(
        (status = 200, description = "An endless text/event-stream", content_type = "text/event-stream", body = String),
    )
)]
pub async fn events(State(state): State<AppState>) -> Response {
    let rx = state.events.subscribe();
    events::sse(rx, state.pump.clone()).await.into_response()
}

/// Adds the optional bearer-token scheme (`kvs_http --token`).
#[derive(Debug)]
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // Either no token (a gateway started without --token) or the bearer.
        openapi.security = Some(vec![
            SecurityRequirement::default(),
            SecurityRequirement::new("bearer", Vec::<String>::new()),
        ]);
    }
}

/// The OpenAPI document of the gateway.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "kvs_http",
        description = "REST gateway of a kvs store: text keys (up to 63 bytes) and values (up to the server's value size). Every error answers {\"error\": \"...\"}. When the gateway runs with --token, every request needs `Authorization: Bearer TOKEN`."
    ),
    paths(get_key, set_key, post_key, del_key, status, events),
    components(schemas(KeyValue, KeyBody, EntryBody, LimitsBody, StatusBody, ErrorBody)),
    modifiers(&BearerToken),
    tags((name = "store", description = "The key-value store"))
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn status_of(e: TextError) -> StatusCode {
        ApiError::from(e).status
    }

    #[test]
    fn store_errors_map_to_the_documented_codes() {
        let too_long = ValueError::TooLong { len: 64, max: 63 };
        assert_eq!(
            status_of(TextError::Key(KeyError::TooLong { len: 64, max: 63 })),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            status_of(TextError::Value(too_long)),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        for bad in [KeyError::Empty, KeyError::Control { found: '\0', at: 1 }] {
            assert_eq!(status_of(TextError::Key(bad)), StatusCode::BAD_REQUEST);
        }
        assert_eq!(
            status_of(TextError::Cursor("x".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_of(TextError::Client(ClientError::StoreFull)),
            StatusCode::INSUFFICIENT_STORAGE
        );
        for unreachable in [
            ClientError::ServerGone,
            ClientError::SlotLost,
            ClientError::RingFull,
            ClientError::NoFreeSlot,
            ClientError::Timeout {
                op: "get",
                after: Duration::from_secs(1),
            },
        ] {
            assert_eq!(
                status_of(TextError::Client(unreachable)),
                StatusCode::SERVICE_UNAVAILABLE
            );
        }
        assert_eq!(
            status_of(TextError::Client(ClientError::Protocol("?".into()))),
            StatusCode::BAD_GATEWAY
        );
    }

    #[test]
    fn the_document_lists_every_answer_of_every_call() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let codes = |path: &str, method: &str| -> Vec<String> {
            let mut c: Vec<String> = doc["paths"][path][method]["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path} missing"))
                .keys()
                .cloned()
                .collect();
            c.sort();
            c
        };
        assert_eq!(
            codes("/get/{key}", "get"),
            ["200", "400", "404", "413", "503"]
        );
        assert_eq!(
            codes("/del/{key}", "delete"),
            ["200", "400", "404", "413", "503"]
        );
        assert_eq!(codes("/set", "post"), ["200", "400", "413", "503", "507"]);
        assert_eq!(
            codes("/post", "post"),
            ["201", "400", "409", "413", "503", "507"]
        );
        assert_eq!(codes("/status", "get"), ["200", "400", "503"]);
    }

    #[test]
    fn unreachable_messages_say_so() {
        let e = ApiError::from(TextError::Client(ClientError::ServerGone));
        assert_eq!(
            e.message,
            "the store is not reachable: the server is gone (it stopped, died or is shutting down)"
        );
    }
}
