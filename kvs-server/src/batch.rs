//! Serving one batch request (MGET, MSET, MDEL): parse every record into
//! the worker's memory, run them in order, write the answer records over
//! the request (see `kvs_core::batch` for the records and the rules).

use crate::outcome::{publisher, refusal};
use crate::shared::Shared;
use kvs_core::batch::{self, Item, Outcome, ValueHead};
use kvs_core::protocol::{OpCode, Request, Response, StatusCode, MORE, STAGED, VALUE_TOO_LARGE};
use kvs_core::store::block::ValueSource;
use kvs_core::store::words::Words;
use kvs_core::store::write::{Deleted, WriteMode, WriteSpec, Written};

/// Serves a batch whose records are the payload in `data` (the slot's data
/// area or the request's staging buffer, already checked to be the
/// client's).
pub(crate) fn serve(shared: &Shared, op: OpCode, req: &Request, data: &Words<'_>) -> Response {
    let g = shared.store.geometry();
    if req.key_len != 0 {
        return Response::status(StatusCode::Malformed);
    }
    let len = u64::from(req.value_len);
    let items = match batch::parse(
        data,
        len,
        req.arg2,
        op == OpCode::MSet,
        g.max_key,
        g.max_value,
    ) {
        Ok(items) => items,
        Err(e) => {
            tracing::debug!(op = op.name(), "malformed batch: {e}");
            return Response::status(StatusCode::Malformed);
        }
    };
    let (answered, bytes, flags) = match op {
        OpCode::MGet => mget(shared, &items, data),
        OpCode::MSet => mset(shared, &items, data, req.arg3),
        _ => mdel(shared, &items, data),
    };
    Response {
        flags: flags | if req.staged() { STAGED } else { 0 },
        value_len: bytes as u32,
        aux: answered,
        ..Response::status(StatusCode::Ok)
    }
}

/// Values into `data`, record after record, until the next one does not
/// fit. Returns (records, bytes, flags).
fn mget(shared: &Shared, items: &[Item], data: &Words<'_>) -> (u32, u64, u16) {
    let capacity = data.len_bytes();
    let mut at = 0u64;
    for (i, item) in items.iter().enumerate() {
        let wrote = shared.store.with_entry(&item.key, |entry| {
            let mut head = ValueHead {
                status: StatusCode::NotFound as u16,
                ..ValueHead::default()
            };
            if let Some((meta, value)) = &entry {
                head = ValueHead {
                    status: StatusCode::Ok as u16,
                    flags: 0,
                    value_len: value.len() as u32,
                    version: meta.version,
                    modified_ns: meta.modified_ns,
                    deadline_ns: meta.deadline,
                };
            }
            let mut need = batch::value_record_bytes(&head);
            if at + need > capacity {
                if at > 0 {
                    return None; // the client asks again for the rest
                }
                // Not even alone: the head only, the client reads it itself.
                head.flags |= VALUE_TOO_LARGE;
                need = batch::value_record_bytes(&head);
            }
            if !batch::write_value_head(data, at, &head) {
                return None;
            }
            if let Some((_, value)) = entry {
                if head.carried() > 0 && value.copy_to(data, at + batch::VALUE_HEAD_BYTES).is_err()
                {
                    return None;
                }
            }
            Some(need)
        });
        match wrote {
            Some(need) => at += need,
            None => return (i as u32, at, MORE),
        }
    }
    (items.len() as u32, at, 0)
}

/// Each entry in order, stopping after the first the store refuses.
fn mset(shared: &Shared, items: &[Item], data: &Words<'_>, deadline: u64) -> (u32, u64, u16) {
    let publish = publisher(shared);
    let spec = WriteSpec {
        mode: WriteMode::Upsert,
        if_version: None,
        deadline: Some(deadline),
    };
    // Every value is read from `data` before any outcome is written over
    // it: outcomes are collected first.
    let mut outcomes = Vec::with_capacity(items.len());
    for item in items {
        let value = ValueSource::Words {
            src: data,
            offset: item.value_at,
            len: item.value_len,
        };
        let outcome = match shared.store.set_with(&item.key, value, spec, &publish) {
            Ok(Written::Inserted(v)) => ok(v, 1),
            Ok(Written::Replaced(v)) => ok(v, 0),
            // Upserts without a condition are never refused these ways.
            Ok(Written::Exists | Written::VersionMismatch(_)) => Outcome {
                status: StatusCode::Failed as u16,
                aux: 0,
                version: 0,
            },
            Err(e) => {
                let (status, aux) = refusal(e);
                Outcome {
                    status: status as u16,
                    aux,
                    version: 0,
                }
            }
        };
        outcomes.push(outcome);
        if outcome.status != StatusCode::Ok as u16 {
            break;
        }
    }
    write_outcomes(data, &outcomes)
}

/// Each key in order; an absent key is an outcome, not a failure.
fn mdel(shared: &Shared, items: &[Item], data: &Words<'_>) -> (u32, u64, u16) {
    let publish = publisher(shared);
    let outcomes: Vec<Outcome> = items
        .iter()
        .map(
            |item| match shared.store.del_with(&item.key, None, &publish) {
                Deleted::Removed(v) => ok(v, 0),
                Deleted::Absent | Deleted::VersionMismatch(_) => Outcome {
                    status: StatusCode::NotFound as u16,
                    aux: 0,
                    version: 0,
                },
            },
        )
        .collect();
    write_outcomes(data, &outcomes)
}

fn ok(version: u64, aux: u32) -> Outcome {
    Outcome {
        status: StatusCode::Ok as u16,
        aux,
        version,
    }
}

/// Outcome records from offset 0. Each request record is at least as
/// long as an outcome record (a head word and a non-empty key), so they
/// fit where the request was.
fn write_outcomes(data: &Words<'_>, outcomes: &[Outcome]) -> (u32, u64, u16) {
    let mut at = 0;
    for (i, o) in outcomes.iter().enumerate() {
        if !batch::write_outcome(data, at, o) {
            return (i as u32, at, MORE);
        }
        at += batch::OUTCOME_BYTES;
    }
    (outcomes.len() as u32, at, 0)
}
