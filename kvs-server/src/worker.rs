//! One worker thread: pop a slot index, take the request from its slot,
//! execute it on the map, answer, wake.
//!
//! Idle strategy (tuned in `BENCHMARKS.md`): spin on a cheap "is the head
//! published?" check, then yield, then sleep on the ring's futex in bounded
//! slices. A push is one CAS (see `kvs_core::ring`), so there is no
//! half-published cell to wait for; a head cell that holds garbage is
//! repaired on the spot.
//!
//! A panic while executing one request (a key type whose `Hash` panics, a
//! bug) is contained: that request is answered `Failed`, the panic is
//! logged, and the worker keeps serving. A panic anywhere else in the loop
//! would leave a server that looks alive but answers less; it aborts the
//! process instead, with one line on stderr, so clients see the server
//! gone at once.

use crate::shared::Shared;
use kvs_core::bulk::{BulkResult, BulkTable, ListRecord};
use kvs_core::map::{Entry, MapError, SetOutcome};
use kvs_core::notify::EventKind;
use kvs_core::protocol::{OpCode, Request, Response, StatusCode};
use kvs_core::ring::PopError;
use kvs_core::wait::{spin_then_yield, FutexParker, SpinPolicy};
use std::hash::Hash;
use std::os::unix::ffi::OsStrExt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Longest futex sleep of an idle worker before it re-checks its stop flag.
const IDLE_SLICE: Duration = Duration::from_millis(100);

/// A worker's loop; a panic that escapes a request aborts the process.
pub(crate) fn run<K, V>(shared: &Shared<K, V>, id: usize)
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
    if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| serve_loop(shared, id))) {
        let what = panic_message(&*panic);
        tracing::error!(worker = id, "worker panicked outside a request: {what}");
        eprintln!("kvs_server: worker {id} panicked ({what}); stopping the whole server");
        std::process::abort();
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn serve_loop<K, V>(shared: &Shared<K, V>, id: usize)
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
    let region = &shared.region;
    let ring = region.ring();
    let stats = &region.worker_stats()[id];
    loop {
        match ring.pop() {
            Ok(index) => {
                serve(shared, id, stats, index);
                if shared.stop_workers.load(Ordering::Relaxed) && drained_long_enough(shared) {
                    return;
                }
            }
            Err(PopError::Corrupt { pos }) => {
                let repairs = ring.repair();
                let fixed = repairs.cells + usize::from(repairs.indices);
                region
                    .header()
                    .live
                    .ring_repairs
                    .fetch_add(fixed as u64, Ordering::Relaxed);
                if fixed == 0 {
                    // Not (yet) judged garbage: someone may be scribbling.
                    // Do not spin on it.
                    std::thread::sleep(Duration::from_millis(1));
                } else {
                    tracing::warn!(pos, fixed, "repaired a corrupted request ring");
                }
            }
            Err(PopError::Empty) => {
                if shared.stop_workers.load(Ordering::Acquire) {
                    return;
                }
                let woke = spin_then_yield(SpinPolicy::WORKER, || {
                    ring.has_pending() || shared.stop_workers.load(Ordering::Relaxed)
                });
                if !woke {
                    region.worker_sleep(IDLE_SLICE, || {
                        ring.has_pending() || shared.stop_workers.load(Ordering::SeqCst)
                    });
                }
            }
        }
    }
}

/// Whether a stopping worker has drained for [`crate::shared::DRAIN_LIMIT`].
fn drained_long_enough<K, V>(shared: &Shared<K, V>) -> bool {
    let since = shared.stop_since_ns.load(Ordering::Relaxed);
    since != 0
        && kvs_core::unix_now_ns().saturating_sub(since)
            > crate::shared::DRAIN_LIMIT.as_nanos() as u64
}

/// Clears a worker's busy mark however `serve` ends.
struct BusyMark<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for BusyMark<'_> {
    fn drop(&mut self) {
        // Release: everything we did on the slot happens before the
        // reclaimer sees it unmarked.
        self.0.store(0, Ordering::Release);
    }
}

fn serve<K, V>(shared: &Shared<K, V>, id: usize, stats: &kvs_core::region::WorkerStats, index: u32)
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
    let slots = shared.region.slots();
    let busy = &shared.busy[id];
    // SeqCst: the worker's half of the Dekker pair with the reclaimer, which
    // marks a slot abandoned (SeqCst) and then reads these marks; `begin`
    // loads the slot word with SeqCst after this store.
    busy.store(u64::from(index) + 1, Ordering::SeqCst);
    let _mark = BusyMark(busy);
    let begun = match slots.begin(index) {
        Ok(b) => b,
        Err(e) => {
            stats.count_dropped();
            tracing::debug!(error = %e, "dropped a ring entry");
            return;
        }
    };
    let req = slots.read_request(&begun);
    let op = match req.op() {
        Ok(op) if req.generation == begun.generation() => Ok(op),
        Ok(_) => Err("the request in the slot is for another use of it".to_string()),
        Err(e) => Err(e.to_string()),
    };
    let (response, op) = match op {
        Ok(op) => {
            let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
                execute(shared, op, &req, begun.owner())
            }));
            match run {
                Ok(response) => (response, Some(op)),
                Err(panic) => {
                    tracing::error!(
                        op = op.name(),
                        "a request panicked: {}; answered Failed, still serving",
                        panic_message(&*panic)
                    );
                    shared
                        .region
                        .header()
                        .live
                        .panics
                        .fetch_add(1, Ordering::Relaxed);
                    (Response::status(StatusCode::Failed), None)
                }
            }
        }
        Err(why) => {
            tracing::debug!(slot = index, "malformed request: {why}");
            shared
                .region
                .header()
                .live
                .malformed
                .fetch_add(1, Ordering::Relaxed);
            (Response::status(StatusCode::Malformed), None)
        }
    };
    slots.complete(begun, op, &response, &FutexParker);
    match op {
        Some(op) => stats.count(op),
        None => stats.count_dropped(),
    }
}

fn execute<K, V>(shared: &Shared<K, V>, op: OpCode, req: &Request<K, V>, owner: u32) -> Response<V>
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
    let map = &shared.map;
    let subs = shared.region.subscriptions();
    // Runs under the key's stripe lock (see `StripedMap::*_then`), so every
    // subscriber sees one key's changes in version order. One load when
    // nobody subscribes.
    let changed = |k: &K, e: &Entry<V>| {
        subs.publish(
            EventKind::Changed,
            k,
            &e.value,
            e.version,
            e.modified_ns,
            &FutexParker,
        );
    };
    let deleted = |k: &K, version: u64| {
        subs.publish(
            EventKind::Deleted,
            k,
            &V::zeroed(),
            version,
            0,
            &FutexParker,
        );
    };
    let ok = |version: u64| Response {
        version,
        ..Response::status(StatusCode::Ok)
    };
    match op {
        OpCode::Get => match map.get(&req.key) {
            Some(e) => Response {
                version: e.version,
                modified_ns: e.modified_ns,
                value: e.value,
                ..Response::status(StatusCode::Ok)
            },
            None => Response::status(StatusCode::NotFound),
        },
        OpCode::Set => match map.insert_or_assign_then(req.key, req.value, changed) {
            Ok((outcome, version)) => Response {
                aux: u32::from(outcome == SetOutcome::Inserted),
                ..ok(version)
            },
            Err(MapError::Full { .. }) => Response::status(StatusCode::StoreFull),
        },
        OpCode::Post => match map.insert_if_absent_then(req.key, req.value, changed) {
            Ok(Some(version)) => ok(version),
            Ok(None) => Response::status(StatusCode::Exists),
            Err(MapError::Full { .. }) => Response::status(StatusCode::StoreFull),
        },
        OpCode::Del => match map.remove_then(&req.key, deleted) {
            Some((_, version)) => ok(version),
            None => Response::status(StatusCode::NotFound),
        },
        OpCode::Status => Response {
            // The entry count travels in `modified_ns` (documented on
            // `OpCode::Status`): the value type may be too small for it.
            modified_ns: map.len() as u64,
            ..ok(map.version())
        },
        OpCode::ListPage => list_page(shared, req.arg, owner),
        OpCode::Backup => backup(shared, req.arg, owner),
    }
}

/// Fills the client's bulk buffer with one page of the listing.
fn list_page<K, V>(shared: &Shared<K, V>, bulk_index: u32, owner: u32) -> Response<V>
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
    let bulk = shared.region.bulk();
    // The buffer must belong to the client that owns the response slot.
    let Some(params) = bulk.params_if_owned_by(bulk_index, owner) else {
        return Response::status(StatusCode::Malformed);
    };
    let capacity = bulk.list_capacity::<K, V>();
    let limit = match params.limit as usize {
        0 => capacity,
        n => n.min(capacity),
    };
    let prefix = params.prefix();
    let after = (params.has_cursor != 0).then_some(params.cursor);
    let mut records = Vec::with_capacity(limit.min(4096));
    let next = shared.map.scan(
        after,
        limit,
        |k| bytemuck::bytes_of(k).starts_with(prefix),
        |k, e| {
            records.push(ListRecord {
                key: *k,
                value: e.value,
                version: e.version,
                modified_ns: e.modified_ns,
            })
        },
    );
    let count = bulk.write_list_records(bulk_index, records);
    bulk.set_result(
        bulk_index,
        &BulkResult {
            count: count as u32,
            more: u32::from(next.is_some()),
            next_cursor: next.unwrap_or(0),
            version: shared.map.version(),
            ..BulkResult::default()
        },
    );
    Response {
        aux: count as u32,
        ..Response::status(StatusCode::Ok)
    }
}

/// Writes a snapshot to the path in the client's bulk buffer.
///
/// The copy holds every stripe's read lock for as long as a memory copy
/// takes; the file is written after they are released, by this worker, while
/// the other workers keep serving.
fn backup<K, V>(shared: &Shared<K, V>, bulk_index: u32, owner: u32) -> Response<V>
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
    let bulk = shared.region.bulk();
    let Some(params) = bulk.params_if_owned_by(bulk_index, owner) else {
        return Response::status(StatusCode::Malformed);
    };
    let Some(dir) = &shared.backup_dir else {
        return failed(
            &bulk,
            bulk_index,
            "backups are disabled on this server: start kvs_server with --backup-dir DIR",
        );
    };
    let Ok(name) = std::str::from_utf8(params.path()) else {
        return failed(&bulk, bulk_index, "the backup file name is not UTF-8");
    };
    if let Err(why) = kvs_core::secure_fs::check_file_name(name) {
        return failed(&bulk, bulk_index, &why);
    }
    let (entries, version) = shared.map.snapshot();
    match crate::snapshot::write_into(dir, name, &entries, version, shared.snapshot_mode) {
        Ok(info) => {
            let path = dir.path().join(name);
            tracing::info!(path = %path.display(), entries = info.entries, bytes = info.bytes, "snapshot written");
            // The data area carries the full path written, for the client
            // to show.
            let written = bulk.write_bytes(bulk_index, path.as_os_str().as_bytes());
            bulk.set_result(
                bulk_index,
                &BulkResult {
                    count: written as u32,
                    version: info.version,
                    entries: info.entries,
                    bytes: info.bytes,
                    ..BulkResult::default()
                },
            );
            Response::status(StatusCode::Ok)
        }
        Err(e) => {
            tracing::warn!(error = %e, "snapshot failed");
            failed(&bulk, bulk_index, &e.to_string())
        }
    }
}

/// Answers `Failed`, with `message` in the client's bulk buffer.
fn failed<V: bytemuck::Zeroable>(bulk: &BulkTable<'_>, index: u32, message: &str) -> Response<V> {
    let n = bulk.write_bytes(index, message.as_bytes());
    bulk.set_result(
        index,
        &BulkResult {
            count: n as u32,
            ..BulkResult::default()
        },
    );
    Response::status(StatusCode::Failed)
}
