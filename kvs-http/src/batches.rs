//! Batches over HTTP: `/mget`, `/mset`, `/mdel`, each one call of the
//! client's batch API (`get_many`, `set_many`, `del_many`): reads straight
//! from the store, writes as one request per staging buffer's worth.
//!
//! | method and path | body in | answer |
//! |---|---|---|
//! | `POST /mget` | [`KeysBody`] | 200 [`MgetAnswer`]: an entry or `null` per key, in order |
//! | `POST /mset` | [`MsetBody`] | 200 [`MsetAnswer`] |
//! | `POST /mdel` | [`KeysBody`] | 200 [`MdelAnswer`]: how many keys were present |
//!
//! Keys are given as text (`keys`) or as base64 (`keys_base64`), one list
//! or the other. A batch holds at most [`MAX_BATCH`] keys, and its body at
//! most [`crate::app::batch_body_limit`] bytes. Every key and value is
//! checked before anything is sent. A batch is not a transaction (as
//! Redis's MSET is not across a cluster): other clients may see some of
//! an MSET's entries before the rest, and an MSET the store refuses part
//! of (507, full) has written the entries before the refused one, which
//! the error message counts.

use crate::api::{with_store, ApiError, AppState, EntryBody, ErrorBody, KeyValue, WriteErrors};
use crate::json::{self, FieldError};
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

/// Most keys (or entries) in one batch.
pub const MAX_BATCH: usize = 100_000;

/// The body of `/mget` and `/mdel`: the keys, as text or as base64.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"keys": ["user:1", "user:2"]}))]
pub struct KeysBody {
    /// The keys as text (UTF-8). Give this or `keys_base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
    /// The keys' bytes, each in standard, padded base64. Give this or
    /// `keys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_base64: Option<Vec<String>>,
}

impl KeysBody {
    /// The keys' bytes.
    ///
    /// # Errors
    ///
    /// Both lists or neither, bad base64, more than [`MAX_BATCH`] keys.
    pub fn to_bytes(self) -> Result<Vec<Vec<u8>>, ApiError> {
        let keys = match (self.keys, self.keys_base64) {
            (Some(_), Some(_)) => return Err(FieldError::Both { name: "keys" }.into()),
            (None, None) => return Err(FieldError::Neither { name: "keys" }.into()),
            (Some(text), None) => text.into_iter().map(String::into_bytes).collect(),
            (None, Some(b64)) => b64
                .iter()
                .map(|b| json::decode("keys", b))
                .collect::<Result<Vec<_>, _>>()?,
        };
        check_count(&keys)?;
        Ok(keys)
    }
}

fn check_count<T>(items: &[T]) -> Result<(), ApiError> {
    if items.len() > MAX_BATCH {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a batch holds at most {MAX_BATCH} keys, not {}: split it",
                items.len()
            ),
        ));
    }
    Ok(())
}

/// The body of `/mset`: the entries, and optionally one TTL for all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"entries": [{"key": "user:1", "value": "alice"}, {"key": "user:2", "value": "bob"}]}))]
pub struct MsetBody {
    /// The entries, set in order.
    pub entries: Vec<KeyValue>,
    /// Every entry expires this many milliseconds from now (at least 1);
    /// absent: none does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// The answer of `/mget`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MgetAnswer {
    /// One per key, in the order asked: the entry, or `null` when the key
    /// is absent.
    pub entries: Vec<Option<EntryBody>>,
}

/// The answer of `/mset`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MsetAnswer {
    /// Entries written (all of them).
    pub written: u64,
}

/// The answer of `/mdel`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MdelAnswer {
    /// Keys that were present and are now deleted.
    pub removed: u64,
}

/// The error answers of a batch that only names keys.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description for the OpenAPI document only
enum KeysErrors {
    #[response(
        status = 400,
        description = "Malformed request (bad JSON, both or neither of keys and keys_base64, bad base64, an empty key)"
    )]
    Malformed(ErrorBody),
    #[response(
        status = 413,
        description = "A key too long, more keys than a batch holds, or the body too long"
    )]
    TooLong(ErrorBody),
    #[response(
        status = 502,
        description = "An answer from the store the gateway cannot interpret"
    )]
    Protocol(ErrorBody),
    #[response(status = 503, description = "Store not reachable")]
    Unreachable(ErrorBody),
}

/// Reads many keys at once.
#[utoipa::path(
    post,
    path = "/mget",
    tag = "batches",
    request_body = KeysBody,
    responses((status = 200, description = "An entry or null per key, in order", body = MgetAnswer), KeysErrors)
)]
pub async fn mget(
    State(state): State<AppState>,
    body: Result<Json<KeysBody>, JsonRejection>,
) -> Result<Json<MgetAnswer>, ApiError> {
    let Json(body) = body?;
    let keys = body.to_bytes()?;
    let found = with_store(&state, |s| {
        let keys = &keys;
        async move { s.get_many_entries_async(keys).await }
    })
    .await?;
    let entries = keys
        .into_iter()
        .zip(found)
        .map(|(key, e)| {
            e.map(|e| EntryBody::new(key, e.value, e.version, e.modified_ns, e.deadline_ns))
        })
        .collect();
    Ok(Json(MgetAnswer { entries }))
}

/// Sets many keys at once (inserting or replacing), optionally all with
/// one TTL.
#[utoipa::path(
    post,
    path = "/mset",
    tag = "batches",
    request_body = MsetBody,
    responses((status = 200, description = "Every entry written", body = MsetAnswer), WriteErrors)
)]
pub async fn mset(
    State(state): State<AppState>,
    body: Result<Json<MsetBody>, JsonRejection>,
) -> Result<Json<MsetAnswer>, ApiError> {
    let Json(body) = body?;
    check_count(&body.entries)?;
    let entries = body
        .entries
        .iter()
        .map(KeyValue::to_bytes)
        .collect::<Result<Vec<_>, _>>()?;
    let ttl = body.ttl_ms.map(Duration::from_millis);
    with_store(&state, |s| {
        let entries = &entries;
        async move {
            match ttl {
                Some(ttl) => s.set_many_with_ttl_async(entries, ttl).await,
                None => s.set_many_async(entries).await,
            }
        }
    })
    .await?;
    Ok(Json(MsetAnswer {
        written: entries.len() as u64,
    }))
}

/// Deletes many keys at once; answers how many were present.
#[utoipa::path(
    post,
    path = "/mdel",
    tag = "batches",
    request_body = KeysBody,
    responses((status = 200, description = "How many keys were deleted", body = MdelAnswer), KeysErrors)
)]
pub async fn mdel(
    State(state): State<AppState>,
    body: Result<Json<KeysBody>, JsonRejection>,
) -> Result<Json<MdelAnswer>, ApiError> {
    let Json(body) = body?;
    let keys = body.to_bytes()?;
    let removed = with_store(&state, |s| {
        let keys = &keys;
        async move { s.del_many_async(keys).await }
    })
    .await?;
    Ok(Json(MdelAnswer {
        removed: removed as u64,
    }))
}
