//! The REST API: handlers, the JSON bodies, the error mapping and the
//! OpenAPI document.
//!
//! Keys and values are bytes. In JSON (see [`crate::json`]), bytes that are
//! valid UTF-8 travel as a string in `key`/`value`, any others as base64
//! (standard, padded) in `key_base64`/`value_base64`: an answer carries
//! exactly one field of each pair, and a request must give exactly one
//! (both or neither is 400).
//!
//! | method and path | body in | answer |
//! |---|---|---|
//! | `GET /get/{key}` | | 200 [`EntryBody`], 404 |
//! | `GET /get?key=K` or `?key_base64=B` | | 200 [`EntryBody`], 404 |
//! | `POST /set` | [`KeyValue`] | 200 [`KeyValue`] |
//! | `POST /post` | [`KeyValue`] | 201 [`KeyValue`], 409 when the key exists |
//! | `DELETE /del/{key}` | | 200 [`KeyBody`], 404 |
//! | `DELETE /del?key=K` or `?key_base64=B` | | 200 [`KeyBody`], 404 |
//! | `GET /raw/{key}`, `GET /raw?key=K` or `?key_base64=B` | | 200 the value's bytes, 404 |
//! | `PUT /raw/{key}`, `PUT /raw?key=K` or `?key_base64=B` | the value's bytes | 200 [`RawSetBody`] |
//! | `GET /status?cursor=&limit=&prefix=` (or `prefix_base64=`) | | 200 [`StatusBody`] |
//! | `GET /events` | | a server-sent-events stream (see [`crate::events`]) |
//!
//! `{key}` in a path is one percent-encoded segment whose bytes, decoded,
//! must be UTF-8 (else 400); any other key goes in `?key_base64=`, whose
//! `+` must be percent-encoded (`%2B`) like any query value (a `+` that
//! arrives as a space is taken back as `+`: base64 has no spaces).
//!
//! `GET /raw` answers the value as it is stored, `Content-Type:
//! application/octet-stream`, with its version in `X-Kvs-Version` and its
//! last change (unix milliseconds) in `X-Kvs-Modified-Ms`. `PUT /raw` sets
//! the key to the request body's bytes, whatever its content type.
//!
//! Request bodies are limited by the store's limits (see `limits` in
//! `/status`, and [`crate::app`]): a `PUT /raw` body to the largest value,
//! a JSON body to twice the largest key and value plus 64 KiB (room for
//! base64 and escapes). A `/status` page holds at most `limit` entries, and
//! fewer when their keys and values add up to more than [`PAGE_BYTES`].
//!
//! `/set` also takes `ttl_ms` (the entry expires) and `if_version`
//! (compare-and-set: 412 with the key's `version` when it is at another),
//! and a DELETE takes `?if_version=`. TTLs and counters are in
//! [`crate::operations`], batches in [`crate::batches`], the activity
//! history in [`crate::history`].
//!
//! Every error answers `{"error": "..."}` ([`ErrorBody`]) with: 400 a
//! malformed request (an empty key included), 401 a missing or wrong
//! token, 404 absent, 409 exists, 412 a compare-and-set that lost, 413
//! key, value or body too long, 422 INCR of a value that is not an
//! integer, 502 an answer the gateway cannot interpret, 503 the store is
//! not reachable, 507 the store is full.
//!
//! Store calls are awaited as the client's futures (`with_store`): a read
//! is done directly and is ready at once, a write's ticket wakes the
//! handler's task when its answer lands, and no runtime thread blocks,
//! however long the server takes (up to the client's timeout). Only
//! connecting, `/status` and its listing pages, which have no futures, run
//! on tokio's blocking pool.

use crate::events::{self, GatewayEvent, PumpState};
use crate::history::{StatsBody, StatsQuery, INTERVAL};
use crate::json::{self, FieldError};
use crate::store::Connector;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kvs_client::{BytesClient, Cas, ClientError, ListCursor, ListedEntry};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::{broadcast, watch};
use utoipa::{IntoParams, ToSchema};

/// What the handlers share: the store connection and the event fan-out.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The connection to the store, replaced when the server restarts.
    pub connector: Arc<Connector>,
    /// Change events from the pump thread (see [`crate::events`]).
    pub events: broadcast::Sender<GatewayEvent>,
    /// The pump's state, which a new stream waits on.
    pub pump: watch::Receiver<PumpState>,
    /// The last minutes of activity (see [`crate::history`]).
    pub history: Arc<crate::history::History>,
}

/// A key and its value: the body of `/set` and `/post`, and their answer
/// (where each comes back as text when it is UTF-8, else as base64).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"key": "greeting", "value": "hello world"}))]
pub struct KeyValue {
    /// The key as text (UTF-8), 1 byte up to the store's largest key (see
    /// `limits` in `/status`). Give this or `key_base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "greeting")]
    pub key: Option<String>,
    /// The key's bytes in standard, padded base64, for a key that is not
    /// UTF-8. Give this or `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub key_base64: Option<String>,
    /// The value as text (UTF-8), up to the store's largest value. Give
    /// this or `value_base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "hello world")]
    pub value: Option<String>,
    /// The value's bytes in standard, padded base64, for a value that is
    /// not UTF-8. Give this or `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub value_base64: Option<String>,
}

impl KeyValue {
    /// `key` and `value` in their JSON form.
    pub fn from_bytes(key: Vec<u8>, value: Vec<u8>) -> Self {
        let (key, key_base64) = json::to_fields(key);
        let (value, value_base64) = json::to_fields(value);
        Self {
            key,
            key_base64,
            value,
            value_base64,
        }
    }

    /// The key's and the value's bytes.
    ///
    /// # Errors
    ///
    /// [`FieldError`] when a pair has both fields, neither, or bad base64.
    pub fn to_bytes(&self) -> Result<(Vec<u8>, Vec<u8>), FieldError> {
        entry_bytes(&self.key, &self.key_base64, &self.value, &self.value_base64)
    }
}

/// The key and value bytes of a body's `key`/`key_base64` and
/// `value`/`value_base64` pairs.
fn entry_bytes(
    key: &Option<String>,
    key_base64: &Option<String>,
    value: &Option<String>,
    value_base64: &Option<String>,
) -> Result<(Vec<u8>, Vec<u8>), FieldError> {
    let key = json::from_fields("key", key.as_deref(), key_base64.as_deref())?;
    let value = json::from_fields("value", value.as_deref(), value_base64.as_deref())?;
    Ok((key, value))
}

/// The body of `/set`: a key and its value, and optionally a TTL and the
/// version the key must be at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"key": "session:42", "value": "alice", "ttl_ms": 60000}))]
pub struct SetBody {
    /// The key as text (UTF-8). Give this or `key_base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key's bytes in standard, padded base64. Give this or `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub key_base64: Option<String>,
    /// The value as text (UTF-8). Give this or `value_base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value's bytes in standard, padded base64. Give this or `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub value_base64: Option<String>,
    /// The entry expires this many milliseconds from now (at least 1).
    /// Absent: it never expires (a TTL the key had is cleared, as Redis's
    /// SET does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// Set only if the key's version is this one (0: only if the key is
    /// absent); else 412 with the key's version. Compare-and-set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_version: Option<u64>,
}

impl SetBody {
    /// The key's and the value's bytes.
    ///
    /// # Errors
    ///
    /// [`FieldError`] when a pair has both fields, neither, or bad base64.
    pub fn to_bytes(&self) -> Result<(Vec<u8>, Vec<u8>), FieldError> {
        entry_bytes(&self.key, &self.key_base64, &self.value, &self.value_base64)
    }
}

/// The answer of `/set`: the key and value, with the new version when the
/// request gave `if_version`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SetAnswer {
    /// The key, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key's bytes in base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub key_base64: Option<String>,
    /// The value, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value's bytes in base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub value_base64: Option<String>,
    /// The entry's new version (with `if_version` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// The query of a DELETE: `if_version` makes it conditional.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DelQuery {
    /// Delete only if the key's version is this one; else 412 with the
    /// key's version.
    pub if_version: Option<u64>,
}

/// The query of `DELETE /del?key=`: the key, and optionally `if_version`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DelKeyQuery {
    /// The key as text.
    pub key: Option<String>,
    /// The key's bytes in standard, padded base64 (percent-encode `+`, `/`
    /// and `=`).
    pub key_base64: Option<String>,
    /// Delete only if the key's version is this one; else 412 with the
    /// key's version.
    pub if_version: Option<u64>,
}

/// A key: the answer of `/del` (text when UTF-8, else base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyBody {
    /// The key, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key's bytes in base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub key_base64: Option<String>,
}

impl KeyBody {
    /// `key` in its JSON form.
    pub fn from_bytes(key: Vec<u8>) -> Self {
        let (key, key_base64) = json::to_fields(key);
        Self { key, key_base64 }
    }
}

/// The answer of `PUT /raw`: the key, and how many bytes its value now has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RawSetBody {
    /// The key, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key's bytes in base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub key_base64: Option<String>,
    /// Bytes of the value stored.
    pub value_bytes: u64,
}

/// An entry with its metadata (text fields when UTF-8, else base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"key": "greeting", "value_base64": "/wA=", "version": 42, "modified_ms": 1_700_000_000_000u64}))]
pub struct EntryBody {
    /// The key, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key's bytes in base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub key_base64: Option<String>,
    /// The value, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value's bytes in base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub value_base64: Option<String>,
    /// The entry's version: the store's version at its last change.
    pub version: u64,
    /// Last change, unix milliseconds.
    pub modified_ms: u64,
    /// When the entry expires, unix milliseconds; absent when it never
    /// does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

impl EntryBody {
    /// An entry in its JSON form (`deadline_ns` 0: it never expires).
    pub fn new(
        key: Vec<u8>,
        value: Vec<u8>,
        version: u64,
        modified_ns: u64,
        deadline_ns: u64,
    ) -> Self {
        let (key, key_base64) = json::to_fields(key);
        let (value, value_base64) = json::to_fields(value);
        Self {
            key,
            key_base64,
            value,
            value_base64,
            version,
            modified_ms: modified_ns / 1_000_000,
            expires_ms: json::expires_ms(deadline_ns),
        }
    }
}

impl From<ListedEntry<Vec<u8>, Vec<u8>>> for EntryBody {
    fn from(e: ListedEntry<Vec<u8>, Vec<u8>>) -> Self {
        Self::new(e.key, e.value, e.version, e.modified_ns, e.deadline_ns)
    }
}

/// The longest key and value the store accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LimitsBody {
    /// Longest key, in bytes (`kvs_server --max-key-size`).
    pub key_max_bytes: u64,
    /// Longest value, in bytes (`kvs_server --max-value-size`).
    pub value_max_bytes: u64,
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
#[serde(deny_unknown_fields)]
pub struct StatusQuery {
    /// The `next_cursor` of the previous page; absent for the first page.
    pub cursor: Option<String>,
    /// Entries per page: 1 to 5000, 500 when absent (a page of large
    /// values holds fewer, see `next_cursor`).
    pub limit: Option<usize>,
    /// Only keys that start with this text.
    pub prefix: Option<String>,
    /// Only keys that start with these bytes (standard padded base64);
    /// instead of `prefix`.
    pub prefix_base64: Option<String>,
}

/// The query that names a key: `key` (text) or `key_base64`, one of them.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KeyQuery {
    /// The key as text.
    pub key: Option<String>,
    /// The key's bytes in standard, padded base64 (percent-encode `+`, `/`
    /// and `=`).
    pub key_base64: Option<String>,
}

impl KeyQuery {
    /// The key's bytes. A query decodes `+` as a space, and base64 has no
    /// spaces, so a space in `key_base64` is read as the `+` it was.
    ///
    /// # Errors
    ///
    /// [`FieldError`] for both fields, neither, or bad base64.
    pub fn to_bytes(&self) -> Result<Vec<u8>, FieldError> {
        query_key_bytes(self.key.as_deref(), self.key_base64.as_deref())
    }
}

/// The key of a query's `key` / `key_base64` (see [`KeyQuery::to_bytes`]).
fn query_key_bytes(key: Option<&str>, key_base64: Option<&str>) -> Result<Vec<u8>, FieldError> {
    let base64 = key_base64.map(|b| b.replace(' ', "+"));
    json::from_fields("key", key, base64.as_deref())
}

/// The body of every error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    #[schema(example = "key \"greeting\" not found")]
    pub error: String,
    /// The key's version now, on a 412 (a compare-and-set that lost): 0
    /// when the key is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// Entries per `/status` page when `limit` is absent.
pub const DEFAULT_PAGE: usize = 500;
/// The largest `limit` of `/status`.
pub const MAX_PAGE: usize = 5000;
/// A `/status` page ends once its keys and values add up to this many
/// bytes (it may go over by one entry): values may be large.
pub const PAGE_BYTES: u64 = 8 << 20;

/// The header of a raw answer that carries the entry's version.
pub const VERSION_HEADER: &str = "x-kvs-version";
/// The header of a raw answer that carries the last change, unix ms.
pub const MODIFIED_HEADER: &str = "x-kvs-modified-ms";

/// An error answer: a status code and a message, sent as [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The message.
    pub message: String,
    /// The key's version, for a 412.
    pub version: Option<u64>,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            version: None,
        }
    }

    /// 412: a compare-and-set on `key` expected version `expected`, and
    /// the key is at `current` (0: absent).
    pub(crate) fn version_mismatch(key: &[u8], expected: u64, current: u64) -> Self {
        let now = if current == 0 {
            "is absent".to_string()
        } else {
            format!("is at version {current}")
        };
        Self {
            version: Some(current),
            ..Self::new(
                StatusCode::PRECONDITION_FAILED,
                format!("key {} {now}, not version {expected}", json::describe(key)),
            )
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
                version: self.version,
            }),
        )
            .into_response()
    }
}

/// The HTTP status of a store error.
fn client_status(e: &ClientError) -> StatusCode {
    match e {
        // An empty key is malformed, not too long.
        ClientError::KeyLength { len: 0, .. } => StatusCode::BAD_REQUEST,
        ClientError::KeyLength { .. } | ClientError::ValueLength { .. } => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        // A bad cursor, a prefix longer than any key, a zero TTL.
        ClientError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        ClientError::StoreFull(_) => StatusCode::INSUFFICIENT_STORAGE,
        // INCR of a value that is not a decimal integer, or past i64.
        ClientError::NotInteger | ClientError::Overflow => StatusCode::UNPROCESSABLE_ENTITY,
        // A batch stopped at a refused entry: that entry's answer.
        ClientError::PartlyWritten { source, .. } => client_status(source),
        // Decode cannot happen with bytes; if it does, the answer was
        // not what the gateway expects.
        ClientError::Protocol(_) | ClientError::Decode(_) | ClientError::ServerFailed(_) => {
            StatusCode::BAD_GATEWAY
        }
        // Connect, ServerGone, Timeout, RingFull, NoFreeSlot, SlotLost,
        // NoBulkBuffer, Subscribe, Forked, WakerThread: the store is down,
        // restarting or overloaded.
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        let message = match &e {
            ClientError::Connect(_) | ClientError::ServerGone | ClientError::SlotLost => {
                format!("the store is not reachable: {e}")
            }
            _ => e.to_string(),
        };
        Self::new(client_status(&e), message)
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        Self::bad_request(e.to_string())
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

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
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

/// The current store connection: the live one at once, else a new one
/// made on the blocking pool (connecting waits, boundedly, for a server
/// that is starting).
async fn connected(state: &AppState) -> Result<Arc<BytesClient>, ApiError> {
    if let Some(store) = state.connector.live() {
        return Ok(store);
    }
    let connector = Arc::clone(&state.connector);
    tokio::task::spawn_blocking(move || connector.store())
        .await
        .map_err(failed_task)?
        .map_err(ApiError::from)
}

fn failed_task(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the request failed: {e}"),
    )
}

/// Forgets `store` when `result` says its server is gone, so the next
/// request reconnects.
fn forget_if_gone<T>(state: &AppState, store: &Arc<BytesClient>, result: &Result<T, ClientError>) {
    if let Err(ClientError::ServerGone | ClientError::SlotLost) = result {
        state.connector.forget(store);
    }
}

/// Runs the store call `f` on the current connection: a future of the
/// client's `*_async` calls, awaited here (its tickets wake this task when
/// their answers land; nothing blocks a runtime thread).
pub(crate) async fn with_store<T, F, Fut>(state: &AppState, f: F) -> Result<T, ApiError>
where
    F: FnOnce(Arc<BytesClient>) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let store = connected(state).await?;
    let result = f(Arc::clone(&store)).await;
    forget_if_gone(state, &store, &result);
    result.map_err(ApiError::from)
}

/// Runs the blocking store call `f` (status and listing pages, which have
/// no futures) on tokio's blocking pool.
pub(crate) async fn with_store_blocking<T, F>(state: &AppState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&BytesClient) -> Result<T, ClientError> + Send + 'static,
{
    let store = connected(state).await?;
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let result = f(&store);
        forget_if_gone(&state, &store, &result);
        result
    })
    .await
    .map_err(failed_task)?
    .map_err(ApiError::from)
}

/// The error answers of a call that names one key.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description for the OpenAPI document only
pub(crate) enum KeyErrors {
    #[response(
        status = 400,
        description = "Malformed key (empty, not UTF-8 in a path, bad base64, both or neither of key and key_base64)"
    )]
    Malformed(ErrorBody),
    #[response(status = 404, description = "No such key")]
    Absent(ErrorBody),
    #[response(status = 413, description = "Key too long")]
    TooLong(ErrorBody),
    #[response(
        status = 502,
        description = "An answer from the store the gateway cannot interpret"
    )]
    Protocol(ErrorBody),
    #[response(status = 503, description = "Store not reachable")]
    Unreachable(ErrorBody),
}

/// The error answers of a call that writes a key and a value.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description for the OpenAPI document only
pub(crate) enum WriteErrors {
    #[response(
        status = 400,
        description = "Malformed request (bad JSON, both or neither of a field and its _base64, bad base64, an empty key)"
    )]
    Malformed(ErrorBody),
    #[response(status = 413, description = "Key, value or request body too long")]
    TooLong(ErrorBody),
    #[response(
        status = 502,
        description = "An answer from the store the gateway cannot interpret"
    )]
    Protocol(ErrorBody),
    #[response(status = 503, description = "Store not reachable")]
    Unreachable(ErrorBody),
    #[response(
        status = 507,
        description = "Store full (a new key beyond the entry or memory limit)"
    )]
    Full(ErrorBody),
}

pub(crate) fn not_found(key: &[u8]) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("key {} not found", json::describe(key)),
    )
}

pub(crate) fn path_key(key: Result<Path<String>, PathRejection>) -> Result<Vec<u8>, ApiError> {
    let Path(key) = key?;
    Ok(key.into_bytes())
}

pub(crate) fn query_key(
    query: Result<Query<KeyQuery>, QueryRejection>,
) -> Result<Vec<u8>, ApiError> {
    let Query(q) = query?;
    Ok(q.to_bytes()?)
}

/// The entry of `key`, or 404.
async fn read_entry(state: &AppState, key: Vec<u8>) -> Result<EntryBody, ApiError> {
    let entry = lookup(state, &key).await?;
    match entry {
        Some(e) => Ok(EntryBody::new(
            key,
            e.value,
            e.version,
            e.modified_ns,
            e.deadline_ns,
        )),
        None => Err(not_found(&key)),
    }
}

/// `key`'s entry (read directly: the ticket is ready at once, unless
/// writers kept the read busy and a worker answers it).
pub(crate) async fn lookup(
    state: &AppState,
    key: &[u8],
) -> Result<Option<kvs_client::Versioned<Vec<u8>>>, ApiError> {
    let key = key.to_vec();
    with_store(state, |s| async move { s.get_entry_async(&key)?.await }).await
}

/// The value of a key.
#[utoipa::path(
    get,
    path = "/get/{key}",
    tag = "store",
    params(("key" = String, Path, description = "The key: UTF-8 text, percent-encoded (other bytes: GET /get?key_base64=)")),
    responses((status = 200, description = "The entry", body = EntryBody), KeyErrors)
)]
pub async fn get_key(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<EntryBody>, ApiError> {
    Ok(Json(read_entry(&state, path_key(key)?).await?))
}

/// The value of a key named in the query (`key_base64` for any bytes).
#[utoipa::path(
    get,
    path = "/get",
    tag = "store",
    params(KeyQuery),
    responses((status = 200, description = "The entry", body = EntryBody), KeyErrors)
)]
pub async fn get_key_query(
    State(state): State<AppState>,
    query: Result<Query<KeyQuery>, QueryRejection>,
) -> Result<Json<EntryBody>, ApiError> {
    Ok(Json(read_entry(&state, query_key(query)?).await?))
}

/// Sets a key to a value, inserting or replacing; with `ttl_ms` it
/// expires, with `if_version` only if the key is at that version.
#[utoipa::path(
    post,
    path = "/set",
    tag = "store",
    request_body = SetBody,
    responses(
        (status = 200, description = "Set", body = SetAnswer),
        (status = 412, description = "With if_version: the key is at another version (it is in `version`, 0: absent); nothing changed", body = ErrorBody),
        WriteErrors
    )
)]
pub async fn set_key(
    State(state): State<AppState>,
    body: Result<Json<SetBody>, JsonRejection>,
) -> Result<Json<SetAnswer>, ApiError> {
    let Json(body) = body?;
    let (key, value) = body.to_bytes()?;
    let ttl = body.ttl_ms.map(std::time::Duration::from_millis);
    let outcome = with_store(&state, |s| {
        let (key, value) = (&key, &value);
        async move {
            match (body.if_version, ttl) {
                (Some(expected), _) => {
                    let cas = match ttl {
                        Some(ttl) => s.set_if_version_with_ttl_async(key, value, expected, ttl)?,
                        None => s.set_if_version_async(key, value, expected)?,
                    };
                    cas.await.map(Some)
                }
                (None, Some(ttl)) => s.set_with_ttl_async(key, value, ttl)?.await.map(|()| None),
                (None, None) => s.set_async(key, value)?.await.map(|()| None),
            }
        }
    })
    .await?;
    let version = match outcome {
        Some(Cas::Done(v)) => Some(v),
        Some(Cas::Conflict(current)) => {
            let expected = body.if_version.unwrap_or_default();
            return Err(ApiError::version_mismatch(&key, expected, current));
        }
        None => None,
    };
    let (key, key_base64) = json::to_fields(key);
    let (value, value_base64) = json::to_fields(value);
    Ok(Json(SetAnswer {
        key,
        key_base64,
        value,
        value_base64,
        version,
    }))
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
    let (key, value) = kv.to_bytes()?;
    let inserted = with_store(&state, |s| {
        let (key, value) = (&key, &value);
        async move { s.post_async(key, value)?.await }
    })
    .await?;
    if inserted {
        Ok((StatusCode::CREATED, Json(KeyValue::from_bytes(key, value))))
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("key {} already exists", json::describe(&key)),
        ))
    }
}

/// Deletes `key` (if it is at version `if_version`, when given), or 404
/// (or 412).
async fn remove_key(
    state: &AppState,
    key: Vec<u8>,
    if_version: Option<u64>,
) -> Result<KeyBody, ApiError> {
    let outcome = with_store(state, |s| {
        let key = &key;
        async move {
            match if_version {
                Some(expected) => s.del_if_version_async(key, expected)?.await,
                None => Ok(match s.del_async(key)?.await? {
                    true => Cas::Done(0),
                    false => Cas::Conflict(0),
                }),
            }
        }
    })
    .await?;
    match (outcome, if_version) {
        (Cas::Done(_), _) => Ok(KeyBody::from_bytes(key)),
        (Cas::Conflict(0), _) => Err(not_found(&key)),
        (Cas::Conflict(current), expected) => Err(ApiError::version_mismatch(
            &key,
            expected.unwrap_or_default(),
            current,
        )),
    }
}

/// Deletes a key.
#[utoipa::path(
    delete,
    path = "/del/{key}",
    tag = "store",
    params(("key" = String, Path, description = "The key: UTF-8 text, percent-encoded (other bytes: DELETE /del?key_base64=)"), DelQuery),
    responses(
        (status = 200, description = "Deleted", body = KeyBody),
        (status = 412, description = "With if_version: the key is at another version (in `version`); nothing changed", body = ErrorBody),
        KeyErrors
    )
)]
pub async fn del_key(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<DelQuery>, QueryRejection>,
) -> Result<Json<KeyBody>, ApiError> {
    let Query(q) = query?;
    Ok(Json(
        remove_key(&state, path_key(key)?, q.if_version).await?,
    ))
}

/// Deletes a key named in the query (`key_base64` for any bytes).
#[utoipa::path(
    delete,
    path = "/del",
    tag = "store",
    params(DelKeyQuery),
    responses(
        (status = 200, description = "Deleted", body = KeyBody),
        (status = 412, description = "With if_version: the key is at another version (in `version`); nothing changed", body = ErrorBody),
        KeyErrors
    )
)]
pub async fn del_key_query(
    State(state): State<AppState>,
    query: Result<Query<DelKeyQuery>, QueryRejection>,
) -> Result<Json<KeyBody>, ApiError> {
    let Query(q) = query?;
    let key = query_key_bytes(q.key.as_deref(), q.key_base64.as_deref())?;
    Ok(Json(remove_key(&state, key, q.if_version).await?))
}

// The body of `GET` and `PUT /raw`, for the OpenAPI document only: the
// handlers take and answer the bytes themselves.
/// A value's bytes, as stored.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
struct RawBytes(Vec<u8>);

/// The value of `key` as an `application/octet-stream` answer, or 404.
async fn read_raw(state: &AppState, key: Vec<u8>) -> Result<Response, ApiError> {
    let entry = lookup(state, &key).await?;
    let Some(e) = entry else {
        return Err(not_found(&key));
    };
    Ok((
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (
                HeaderName::from_static(VERSION_HEADER),
                HeaderValue::from(e.version),
            ),
            (
                HeaderName::from_static(MODIFIED_HEADER),
                HeaderValue::from(e.modified_ns / 1_000_000),
            ),
        ],
        e.value,
    )
        .into_response())
}

/// Sets `key` to the body's bytes.
async fn write_raw(
    state: &AppState,
    key: Vec<u8>,
    body: Result<Bytes, BytesRejection>,
) -> Result<RawSetBody, ApiError> {
    let value = Vec::from(body?);
    with_store(state, |s| {
        let (key, value) = (&key, &value);
        async move { s.set_async(key, value)?.await }
    })
    .await?;
    let value_bytes = value.len() as u64;
    let (key, key_base64) = json::to_fields(key);
    Ok(RawSetBody {
        key,
        key_base64,
        value_bytes,
    })
}

/// The value of a key as it is stored, as bytes.
#[utoipa::path(
    get,
    path = "/raw/{key}",
    tag = "raw",
    params(("key" = String, Path, description = "The key: UTF-8 text, percent-encoded (other bytes: GET /raw?key_base64=)")),
    responses(
        (status = 200, description = "The value's bytes", content_type = "application/octet-stream", body = inline(RawBytes),
            headers(
                ("X-Kvs-Version" = u64, description = "The entry's version"),
                ("X-Kvs-Modified-Ms" = u64, description = "Its last change, unix milliseconds"),
            )),
        KeyErrors
    )
)]
pub async fn raw_get(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    read_raw(&state, path_key(key)?).await
}

/// The value of a key named in the query, as bytes.
#[utoipa::path(
    get,
    path = "/raw",
    tag = "raw",
    params(KeyQuery),
    responses(
        (status = 200, description = "The value's bytes", content_type = "application/octet-stream", body = inline(RawBytes),
            headers(
                ("X-Kvs-Version" = u64, description = "The entry's version"),
                ("X-Kvs-Modified-Ms" = u64, description = "Its last change, unix milliseconds"),
            )),
        KeyErrors
    )
)]
pub async fn raw_get_query(
    State(state): State<AppState>,
    query: Result<Query<KeyQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    read_raw(&state, query_key(query)?).await
}

/// Sets a key to the request body's bytes (any content type), inserting or
/// replacing. The body is at most the store's largest value.
#[utoipa::path(
    put,
    path = "/raw/{key}",
    tag = "raw",
    params(("key" = String, Path, description = "The key: UTF-8 text, percent-encoded (other bytes: PUT /raw?key_base64=)")),
    request_body(content = inline(RawBytes), content_type = "application/octet-stream", description = "The value's bytes"),
    responses((status = 200, description = "Set", body = RawSetBody), WriteErrors)
)]
pub async fn raw_put(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RawSetBody>, ApiError> {
    Ok(Json(write_raw(&state, path_key(key)?, body).await?))
}

/// Sets a key named in the query to the request body's bytes.
#[utoipa::path(
    put,
    path = "/raw",
    tag = "raw",
    params(KeyQuery),
    request_body(content = inline(RawBytes), content_type = "application/octet-stream", description = "The value's bytes"),
    responses((status = 200, description = "Set", body = RawSetBody), WriteErrors)
)]
pub async fn raw_put_query(
    State(state): State<AppState>,
    query: Result<Query<KeyQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RawSetBody>, ApiError> {
    Ok(Json(write_raw(&state, query_key(query)?, body).await?))
}

/// Up to `limit` entries from `cursor`, fewer once they add up to
/// [`PAGE_BYTES`]: the listing is read in pieces small enough that even
/// values of the largest size cannot take it far over.
fn list_bounded(
    s: &BytesClient,
    prefix: &[u8],
    mut cursor: Option<ListCursor>,
    limit: usize,
) -> Result<(Vec<EntryBody>, Option<ListCursor>), ClientError> {
    let (max_key, max_value) = s.limits();
    let largest = max_key.saturating_add(max_value).max(1);
    let mut entries = Vec::new();
    let mut bytes = 0u64;
    loop {
        let room = PAGE_BYTES.saturating_sub(bytes);
        let piece = usize::try_from(room / largest)
            .unwrap_or(usize::MAX)
            .clamp(1, limit - entries.len());
        let page = s.list_page(prefix, cursor, piece)?;
        for e in page.entries {
            bytes = bytes.saturating_add((e.key.len() + e.value.len()) as u64);
            entries.push(EntryBody::from(e));
        }
        cursor = page.next;
        if cursor.is_none() || entries.len() >= limit || bytes >= PAGE_BYTES {
            return Ok((entries, cursor));
        }
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
        (status = 400, description = "Malformed query, cursor or prefix", body = ErrorBody),
        (status = 502, description = "An answer from the store the gateway cannot interpret", body = ErrorBody),
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
    let prefix = match (q.prefix, q.prefix_base64) {
        (None, None) => Vec::new(),
        (text, base64) => json::from_fields(
            "prefix",
            text.as_deref(),
            base64.map(|b| b.replace(' ', "+")).as_deref(),
        )?,
    };
    let cursor = q
        .cursor
        .as_deref()
        .map(str::parse::<ListCursor>)
        .transpose()?;
    with_store_blocking(&state, move |s| {
        let st = s.status()?;
        let (entries, next) = list_bounded(s, &prefix, cursor, limit)?;
        let (key_max_bytes, value_max_bytes) = s.limits();
        Ok(StatusBody {
            region: st.region,
            version: st.version,
            entry_count: st.entries,
            max_entries: st.max_entries,
            limits: LimitsBody {
                key_max_bytes,
                value_max_bytes,
            },
            entries,
            next_cursor: next.map(|c| c.to_string()),
        })
    })
    .await
    .map(Json)
}

/// The store's activity over the last minutes, one sample a second.
#[utoipa::path(
    get,
    path = "/stats",
    tag = "store",
    params(StatsQuery),
    responses(
        (status = 200, description = "The samples, oldest first", body = StatsBody),
        (status = 400, description = "Malformed query", body = ErrorBody),
    )
)]
pub async fn stats(
    axum::extract::State(state): axum::extract::State<AppState>,
    query: Result<axum::extract::Query<StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<StatsBody>, ApiError> {
    let axum::extract::Query(q) = query?;
    Ok(axum::Json(StatsBody {
        interval_ms: INTERVAL.as_millis() as u64,
        samples: state.history.since(q.since),
    }))
}

/// A server-sent-events stream of changes.
///
/// Events: `ready` (subscribed: load the table now; every change after it
/// is delivered), `change` (`{"key" or "key_base64", "value" or
/// "value_base64", "value_bytes", "version", "modified_ms"}`; a value over
/// 16 KiB comes without `value`/`value_base64`: read it with `/get` or
/// `/raw`), `delete` (`{"key" or "key_base64", "version"}`), `resync`
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn status_of(e: ClientError) -> StatusCode {
        ApiError::from(e).status
    }

    #[test]
    fn store_errors_map_to_the_documented_codes() {
        assert_eq!(
            status_of(ClientError::KeyLength {
                len: 2000,
                max: 1024
            }),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            status_of(ClientError::ValueLength {
                len: 2000,
                max: 1024
            }),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            status_of(ClientError::KeyLength { len: 0, max: 1024 }),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_of(ClientError::InvalidArgument("cursor".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_of(ClientError::StoreFull(kvs_client::StoreLimit::Entries)),
            StatusCode::INSUFFICIENT_STORAGE
        );
        for unreachable in [
            ClientError::ServerGone,
            ClientError::SlotLost,
            ClientError::RingFull,
            ClientError::NoFreeSlot,
            ClientError::NoBulkBuffer,
            ClientError::Forked { pid: 1 },
            ClientError::Timeout {
                op: "get",
                after: Duration::from_secs(1),
            },
        ] {
            assert_eq!(status_of(unreachable), StatusCode::SERVICE_UNAVAILABLE);
        }
        for protocol in [
            ClientError::Protocol("?".into()),
            ClientError::ServerFailed("?".into()),
            ClientError::Decode(kvs_client::DecodeError::WrongLength {
                expected: 8,
                found: 3,
            }),
        ] {
            assert_eq!(status_of(protocol), StatusCode::BAD_GATEWAY);
        }
    }

    #[test]
    fn field_errors_are_400() {
        for e in [
            FieldError::Both { name: "key" },
            FieldError::Neither { name: "value" },
            FieldError::Base64 {
                name: "key",
                reason: "x".into(),
            },
        ] {
            assert_eq!(ApiError::from(e).status, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn bodies_take_text_or_base64_and_answer_the_same_way() {
        let kv: KeyValue = serde_json::from_str(r#"{"key": "k", "value_base64": "/wA="}"#).unwrap();
        assert_eq!(kv.to_bytes().unwrap(), (b"k".to_vec(), vec![0xff, 0]));
        let back =
            serde_json::to_value(KeyValue::from_bytes(b"k".to_vec(), vec![0xff, 0])).unwrap();
        assert_eq!(
            back,
            serde_json::json!({"key": "k", "value_base64": "/wA="})
        );
        // Base64 of text comes back as text.
        let kv: KeyValue = serde_json::from_str(r#"{"key_base64": "aGk=", "value": "v"}"#).unwrap();
        let (k, v) = kv.to_bytes().unwrap();
        assert_eq!(
            serde_json::to_value(KeyValue::from_bytes(k, v)).unwrap(),
            serde_json::json!({"key": "hi", "value": "v"})
        );
        for bad in [
            r#"{"key": "k", "key_base64": "aw==", "value": "v"}"#,
            r#"{"value": "v"}"#,
            r#"{"key": "k"}"#,
            r#"{"key": "k", "value": "v", "value_base64": "dg=="}"#,
            r#"{"key": "k", "value_base64": "not base64"}"#,
        ] {
            let kv: KeyValue = serde_json::from_str(bad).unwrap();
            assert!(kv.to_bytes().is_err(), "{bad}");
        }
        assert!(
            serde_json::from_str::<KeyValue>(r#"{"key": "k", "value": "v", "ttl": 1}"#).is_err()
        );
        let entry =
            serde_json::to_value(EntryBody::new(vec![0x80], b"v".to_vec(), 3, 4_000_000, 0))
                .unwrap();
        assert_eq!(
            entry,
            serde_json::json!({"key_base64": "gA==", "value": "v", "version": 3, "modified_ms": 4})
        );
        // A deadline is rounded up to the millisecond: never shown as
        // passed while the entry is still readable.
        let expiring = EntryBody::new(b"k".to_vec(), b"v".to_vec(), 3, 4_000_000, 9_000_001);
        assert_eq!(expiring.expires_ms, Some(10));
    }

    #[test]
    fn a_query_key_survives_a_plus_read_as_a_space() {
        // "+/8=" sent unencoded arrives as " /8=".
        let q = KeyQuery {
            key: None,
            key_base64: Some(" /8=".into()),
        };
        assert_eq!(q.to_bytes().unwrap(), vec![0xfb, 0xff]);
        let q = KeyQuery {
            key: Some("a b".into()),
            key_base64: None,
        };
        assert_eq!(q.to_bytes().unwrap(), b"a b".to_vec());
        assert!(KeyQuery::default().to_bytes().is_err());
    }

    #[test]
    fn a_lost_compare_and_set_is_412_with_the_version_now() {
        let e = ApiError::version_mismatch(b"k", 3, 7);
        assert_eq!(e.status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(e.message, "key \"k\" is at version 7, not version 3");
        assert_eq!(e.version, Some(7));
        let absent = ApiError::version_mismatch(b"k", 3, 0);
        assert_eq!(absent.message, "key \"k\" is absent, not version 3");
        assert_eq!(
            status_of(ClientError::NotInteger),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            status_of(ClientError::Overflow),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let partly = ClientError::PartlyWritten {
            written: 3,
            source: Box::new(ClientError::StoreFull(kvs_client::StoreLimit::Memory)),
        };
        assert_eq!(status_of(partly), StatusCode::INSUFFICIENT_STORAGE);
    }

    #[test]
    fn unreachable_messages_say_so() {
        let e = ApiError::from(ClientError::ServerGone);
        assert_eq!(
            e.message,
            "the store is not reachable: the server is gone (it stopped, died or is shutting down)"
        );
    }
}
