//! One worker thread: pop, execute on the map, answer, wake.
//!
//! Idle strategy (tuned in `BENCHMARKS.md`): spin on a cheap "is the head
//! published?" check, then yield, then sleep on the ring's futex in bounded
//! slices. A claimed but unpublished head cell (a producer mid-push, or one
//! that died there) is waited out for [`STALL_SKIP`] and then skipped; a live
//! producer whose cell was skipped pushes again (see `kvs_core::ring`).

use crate::server::Shared;
use kvs_core::bulk::{BulkResult, BulkTable, ListRecord};
use kvs_core::map::{Entry, MapError, SetOutcome};
use kvs_core::notify::{EVENT_CHANGED, EVENT_DELETED};
use kvs_core::protocol::{OpCode, Request, Response, StatusCode};
use kvs_core::ring::{PopError, Skip};
use kvs_core::wait::futex_wake;
use kvs_core::wait::{spin_then_yield, FutexParker, SpinPolicy};
use std::hash::Hash;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a claimed-but-unpublished head cell is waited for before the
/// worker skips it. A live producer publishes within nanoseconds unless it is
/// descheduled; a dead one never does.
pub(crate) const STALL_SKIP: Duration = Duration::from_millis(200);

/// Longest futex sleep of an idle worker before it re-checks its stop flag.
const IDLE_SLICE: Duration = Duration::from_millis(100);

pub(crate) fn run<K, V>(shared: &Shared<K, V>, id: usize)
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
    let region = &shared.region;
    let ring = region.ring();
    let stats = &region.worker_stats()[id];
    let mut stall: Option<(u64, Instant)> = None;
    let epoch = &shared.epochs[id];
    loop {
        // Quiescent point: this worker is inside no `pop` or `skip_stalled`.
        // Release: the stamps it stored happen before the new epoch is seen.
        epoch.store(
            epoch.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Release,
        );
        match ring.pop_with(read_request) {
            Ok(req) => {
                stall = None;
                serve(shared, id, stats, req);
            }
            Err(PopError::Busy { pos }) => match stall {
                Some((p, since)) if p == pos && since.elapsed() >= STALL_SKIP => {
                    stall = None;
                    match ring.skip_stalled(pos) {
                        Skip::Delivered(req) => serve(shared, id, stats, req),
                        Skip::Skipped => {
                            region
                                .header()
                                .live
                                .cells_skipped
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                pos,
                                "skipped a ring cell whose producer never published"
                            );
                        }
                        Skip::Moved => {}
                    }
                }
                Some((p, _)) if p == pos => std::thread::yield_now(),
                _ => stall = Some((pos, Instant::now())),
            },
            Err(PopError::Empty) => {
                stall = None;
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

/// Copies a request out of its ring cell: the header and key always, the
/// value only for ops that carry one (SET, POST), so a GET or DEL does not
/// pull the value's cache lines across cores.
fn read_request<K: bytemuck::Pod, V: bytemuck::Pod>(p: *const Request<K, V>) -> Request<K, V> {
    // SAFETY: `p` is the cell `pop_with` owns for us, valid for reads; field
    // pointers stay inside it; every field is Pod, so any bytes are valid.
    unsafe {
        let op = std::ptr::addr_of!((*p).op).read();
        let with_value = op == OpCode::Set as u32 || op == OpCode::Post as u32;
        Request {
            op,
            slot: std::ptr::addr_of!((*p).slot).read(),
            generation: std::ptr::addr_of!((*p).generation).read(),
            arg: std::ptr::addr_of!((*p).arg).read(),
            key: std::ptr::addr_of!((*p).key).read(),
            value: if with_value {
                std::ptr::addr_of!((*p).value).read()
            } else {
                V::zeroed()
            },
        }
    }
}

fn serve<K, V>(
    shared: &Shared<K, V>,
    id: usize,
    stats: &kvs_core::region::WorkerStats,
    req: Request<K, V>,
) where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
    let slots = shared.region.slots();
    let busy = &shared.busy[id];
    // SeqCst: the worker's half of the Dekker pair with the reclaimer, which
    // marks a slot abandoned (SeqCst) and then reads these marks; `begin`
    // loads the slot word with SeqCst after this store.
    busy.store(u64::from(req.slot) + 1, Ordering::SeqCst);
    let begun = match slots.begin(req.slot, req.generation) {
        Ok(b) => b,
        Err(e) => {
            busy.store(0, Ordering::Release);
            stats.count_dropped();
            tracing::debug!(error = %e, "dropped a request");
            return;
        }
    };
    let (response, op) = match req.op() {
        Ok(op) => (execute(shared, op, &req, begun.owner()), Some(op)),
        Err(e) => {
            tracing::debug!(error = %e, slot = req.slot, "malformed request");
            shared
                .region
                .header()
                .live
                .malformed
                .fetch_add(1, Ordering::Relaxed);
            (Response::status(StatusCode::Malformed), None)
        }
    };
    // Only a GET's answer carries a value; the rest leave its lines alone.
    slots.complete_parts(begun, &response, op == Some(OpCode::Get), &FutexParker);
    busy.store(0, Ordering::Release);
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
            EVENT_CHANGED,
            k,
            &e.value,
            e.version,
            e.modified_ns,
            |seq| futex_wake(seq, 1),
        );
    };
    let deleted = |k: &K, version: u64| {
        subs.publish(EVENT_DELETED, k, &V::zeroed(), version, 0, |seq| {
            futex_wake(seq, 1)
        });
    };
    let ok = |version: u64| Response {
        status: StatusCode::Ok as u32,
        aux: 0,
        version,
        modified_ns: 0,
        value: V::zeroed(),
    };
    match op {
        OpCode::Get => match map.get(&req.key) {
            Some(e) => Response {
                status: StatusCode::Ok as u32,
                aux: 0,
                version: e.version,
                modified_ns: e.modified_ns,
                value: e.value,
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
    let capacity = bulk.capacity_for::<ListRecord<K, V>>();
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
    let count = bulk.write_records(bulk_index, records);
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
