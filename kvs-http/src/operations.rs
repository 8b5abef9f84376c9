//! Expiry and counters over HTTP: `/ttl`, `/expire`, `/persist`, `/incr`.
//!
//! | method and path | body in | answer |
//! |---|---|---|
//! | `GET /ttl/{key}`, `GET /ttl?key=K` or `?key_base64=B` | | 200 [`TtlBody`], 404 |
//! | `POST /expire` | [`ExpireBody`] | 200 [`TtlBody`], 404 |
//! | `POST /persist` | [`KeyRequest`] | 200 [`TtlBody`], 404 |
//! | `POST /incr` | [`IncrBody`] | 200 [`CounterBody`], 422 not an integer or overflow |
//!
//! TTLs travel in milliseconds (`ttl_ms`), deadlines as unix milliseconds
//! (`expires_ms`); a persistent key has `ttl_ms: null`. A counter is a
//! value holding a decimal integer in ASCII (`kvs_core::counter`): INCR of
//! an absent key starts from 0, and a value that is not such an integer,
//! or a result past the 64-bit signed range, is 422 and changes nothing.
//! `/set` takes `ttl_ms` and `if_version` (see [`crate::api`]); batches
//! are in [`crate::batches`].

use crate::api::{
    lookup, not_found, path_key, query_key, with_store, ApiError, AppState, ErrorBody, KeyErrors,
    KeyQuery,
};
use crate::json::{self, FieldError};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use kvs_client::Ttl;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

/// A body that names a key: `key` (text) or `key_base64`, one of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"key": "session:42"}))]
pub struct KeyRequest {
    /// The key as text (UTF-8). Give this or `key_base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key's bytes in standard, padded base64. Give this or `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub key_base64: Option<String>,
}

/// The body of `/expire`: a key and its new TTL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"key": "session:42", "ttl_ms": 30000}))]
pub struct ExpireBody {
    /// The key as text (UTF-8). Give this or `key_base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key's bytes in standard, padded base64. Give this or `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub key_base64: Option<String>,
    /// The key expires this many milliseconds from now (at least 1).
    pub ttl_ms: u64,
}

/// The body of `/incr`: a key and what to add.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"key": "hits", "delta": 1}))]
pub struct IncrBody {
    /// The key as text (UTF-8). Give this or `key_base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key's bytes in standard, padded base64. Give this or `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub key_base64: Option<String>,
    /// Added to the counter (negative to decrement); 1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<i64>,
}

/// A key's TTL: the answer of `/ttl`, `/expire` and `/persist`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"key": "session:42", "ttl_ms": 29998, "expires_ms": 1_700_000_030_000u64}))]
pub struct TtlBody {
    /// The key, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key's bytes in base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub key_base64: Option<String>,
    /// Milliseconds left (rounded down); `null` when the key never
    /// expires.
    pub ttl_ms: Option<u64>,
    /// When the key expires, unix milliseconds; `null` when it never
    /// does.
    pub expires_ms: Option<u64>,
}

/// A counter's new value: the answer of `/incr`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"key": "hits", "value": 42}))]
pub struct CounterBody {
    /// The key, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key's bytes in base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub key_base64: Option<String>,
    /// The counter after the increment.
    pub value: i64,
}

/// The error answers of `/incr`.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description for the OpenAPI document only
enum IncrErrors {
    #[response(
        status = 400,
        description = "Malformed request (bad JSON, both or neither of key and key_base64, bad base64, an empty key)"
    )]
    Malformed(ErrorBody),
    #[response(status = 413, description = "Key too long")]
    TooLong(ErrorBody),
    #[response(
        status = 422,
        description = "The value is not a decimal integer, or the result would not fit a 64-bit signed integer (nothing changed)"
    )]
    NotInteger(ErrorBody),
    #[response(
        status = 502,
        description = "An answer from the store the gateway cannot interpret"
    )]
    Protocol(ErrorBody),
    #[response(status = 503, description = "Store not reachable")]
    Unreachable(ErrorBody),
    #[response(
        status = 507,
        description = "Store full (a new counter beyond a limit)"
    )]
    Full(ErrorBody),
}

fn key_of(key: Option<&str>, key_base64: Option<&str>) -> Result<Vec<u8>, FieldError> {
    json::from_fields("key", key, key_base64)
}

/// `key`'s TTL as the answer says it.
fn ttl_body(key: Vec<u8>, ttl: Ttl) -> TtlBody {
    let (key, key_base64) = json::to_fields(key);
    let (ttl_ms, expires_ms) = match ttl {
        Ttl::Persistent => (None, None),
        Ttl::Expires(left) => {
            let left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
            let now_ms = json::unix_now_ms();
            (Some(left_ms), Some(now_ms.saturating_add(left_ms)))
        }
    };
    TtlBody {
        key,
        key_base64,
        ttl_ms,
        expires_ms,
    }
}

/// The TTL of `key`, or 404.
async fn read_ttl(state: &AppState, key: Vec<u8>) -> Result<TtlBody, ApiError> {
    let Some(entry) = lookup(state, &key).await? else {
        return Err(not_found(&key));
    };
    let (k, key_base64) = json::to_fields(key);
    let now_ns = json::unix_now_ms().saturating_mul(1_000_000);
    Ok(TtlBody {
        key: k,
        key_base64,
        ttl_ms: (entry.deadline_ns != 0)
            .then(|| entry.deadline_ns.saturating_sub(now_ns) / 1_000_000),
        expires_ms: json::expires_ms(entry.deadline_ns),
    })
}

/// How long a key lives.
#[utoipa::path(
    get,
    path = "/ttl/{key}",
    tag = "expiry and counters",
    params(("key" = String, Path, description = "The key: UTF-8 text, percent-encoded (other bytes: GET /ttl?key_base64=)")),
    responses((status = 200, description = "The key's TTL (`null`: it never expires)", body = TtlBody), KeyErrors)
)]
pub async fn ttl_key(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<TtlBody>, ApiError> {
    Ok(Json(read_ttl(&state, path_key(key)?).await?))
}

/// How long a key named in the query lives (`key_base64` for any bytes).
#[utoipa::path(
    get,
    path = "/ttl",
    tag = "expiry and counters",
    params(KeyQuery),
    responses((status = 200, description = "The key's TTL (`null`: it never expires)", body = TtlBody), KeyErrors)
)]
pub async fn ttl_query(
    State(state): State<AppState>,
    query: Result<Query<KeyQuery>, QueryRejection>,
) -> Result<Json<TtlBody>, ApiError> {
    Ok(Json(read_ttl(&state, query_key(query)?).await?))
}

/// Gives a key a TTL (replacing the one it had): it expires `ttl_ms` from
/// now. The entry is rewritten (its version changes).
#[utoipa::path(
    post,
    path = "/expire",
    tag = "expiry and counters",
    request_body = ExpireBody,
    responses((status = 200, description = "The key's new TTL", body = TtlBody), KeyErrors)
)]
pub async fn expire(
    State(state): State<AppState>,
    body: Result<Json<ExpireBody>, JsonRejection>,
) -> Result<Json<TtlBody>, ApiError> {
    let Json(body) = body?;
    let key = key_of(body.key.as_deref(), body.key_base64.as_deref())?;
    let ttl = Duration::from_millis(body.ttl_ms);
    let present = with_store(&state, |s| {
        let key = &key;
        async move { s.expire_async(key, ttl)?.await }
    })
    .await?;
    if !present {
        return Err(not_found(&key));
    }
    Ok(Json(ttl_body(key, Ttl::Expires(ttl))))
}

/// Removes a key's TTL: it no longer expires.
#[utoipa::path(
    post,
    path = "/persist",
    tag = "expiry and counters",
    request_body = KeyRequest,
    responses((status = 200, description = "The key, now persistent", body = TtlBody), KeyErrors)
)]
pub async fn persist(
    State(state): State<AppState>,
    body: Result<Json<KeyRequest>, JsonRejection>,
) -> Result<Json<TtlBody>, ApiError> {
    let Json(body) = body?;
    let key = key_of(body.key.as_deref(), body.key_base64.as_deref())?;
    let present = with_store(&state, |s| {
        let key = &key;
        async move { s.persist_async(key)?.await }
    })
    .await?;
    if !present {
        return Err(not_found(&key));
    }
    Ok(Json(ttl_body(key, Ttl::Persistent)))
}

/// Adds `delta` (default 1) to the counter at a key (absent: 0), atomically
/// in the server, and answers the new value.
#[utoipa::path(
    post,
    path = "/incr",
    tag = "expiry and counters",
    request_body = IncrBody,
    responses((status = 200, description = "The counter's new value", body = CounterBody), IncrErrors)
)]
pub async fn incr(
    State(state): State<AppState>,
    body: Result<Json<IncrBody>, JsonRejection>,
) -> Result<Json<CounterBody>, ApiError> {
    let Json(body) = body?;
    let key = key_of(body.key.as_deref(), body.key_base64.as_deref())?;
    let delta = body.delta.unwrap_or(1);
    let value = with_store(&state, |s| {
        let key = &key;
        async move { s.incr_async(key, delta)?.await }
    })
    .await?;
    let (key, key_base64) = json::to_fields(key);
    Ok(Json(CounterBody {
        key,
        key_base64,
        value,
    }))
}
