//! One worker thread: pop a slot index, take the request from its slot (or
//! the staging buffer it names), execute it on the store, answer, wake.
//!
//! Idle strategy (tuned in `BENCHMARKS.md`): spin on a cheap "is the head
//! published?" check, then yield, then sleep on the ring's futex in bounded
//! slices. A push is one CAS (see `kvs_core::ring`), so there is no
//! half-published cell to wait for; a head cell that holds garbage is
//! repaired on the spot.
//!
//! A panic while executing one request (a bug) is contained: that request is answered `Failed`, the panic is
//! logged, and the worker keeps serving. A panic anywhere else in the loop
//! would leave a server that looks alive but answers less; it aborts the
//! process instead, with one line on stderr, so clients see the server
//! gone at once.

use crate::outcome::{publisher, refusal};
use crate::shared::Shared;
use kvs_core::protocol::{
    staging_of, OpCode, Request, Response, StatusCode, IF_VERSION, INLINE_BYTES, KEEP_TTL, MORE,
    STAGED, VALUE_TOO_LARGE,
};
use kvs_core::response_table::{Begun, Completion};
use kvs_core::ring::PopError;
use kvs_core::store::block::ValueSource;
use kvs_core::store::words::Words;
use kvs_core::store::write::{Deleted, IncrError, WriteError, WriteMode, WriteSpec, Written};
use kvs_core::wait::{spin_then_yield, FutexParker, SpinPolicy};
use std::os::unix::ffi::OsStrExt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Longest futex sleep of an idle worker before it re-checks its stop flag.
const IDLE_SLICE: Duration = Duration::from_millis(100);

/// A worker's loop; a panic that escapes a request aborts the process.
pub(crate) fn run(shared: &Shared, id: usize) {
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

fn serve_loop(shared: &Shared, id: usize) {
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
fn drained_long_enough(shared: &Shared) -> bool {
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

fn serve(shared: &Shared, id: usize, stats: &kvs_core::region::WorkerStats, index: u32) {
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
            let run =
                std::panic::catch_unwind(AssertUnwindSafe(|| execute(shared, op, &req, &begun)));
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
    let owner = begun.owner();
    if slots.complete(begun, &response, &FutexParker) == Completion::Delivered {
        // After the answer's SeqCst publication: the owner's reactor (if it
        // awaits answers as futures) sleeps on this doorbell.
        shared.region.clients().ring(owner, &FutexParker);
    }
    match op {
        Some(op) => stats.count(op),
        None => stats.count_dropped(),
    }
}

/// Where a request's key and value are: the slot's data area, or the
/// staging buffer it names (checked to be the slot owner's, tied to this
/// request).
fn payload<'a>(shared: &'a Shared, req: &Request, begun: &Begun) -> Option<Words<'a>> {
    let words = if req.staged() {
        let (index, generation) = staging_of(req.arg);
        let bulk = shared.region.bulk();
        if !bulk.owned_by(
            index,
            generation,
            begun.owner(),
            begun.index(),
            begun.generation(),
        ) {
            return None;
        }
        bulk.data(index)
    } else {
        shared.region.slots().data(begun.index())
    };
    (req.payload().bytes() <= words.len_bytes()).then_some(words)
}

/// Staged payloads larger than this have their buffer's pages given back
/// to the system once consumed (smaller ones keep them for the next use).
const RELEASE_PAGES_ABOVE: u64 = kvs_core::bulk::KEEP_PAGES_UP_TO;

fn malformed() -> Response {
    Response::status(StatusCode::Malformed)
}

fn execute(shared: &Shared, op: OpCode, req: &Request, begun: &Begun) -> Response {
    let Some(data) = payload(shared, req, begun) else {
        return malformed();
    };
    let key_len = u64::from(req.key_len);
    let mut key = Vec::new();
    if data.read_into(0, key_len, &mut key).is_err() {
        return malformed();
    }
    if kvs_core::test_panic_key(&key) {
        panic!("a test asked this worker to panic");
    }
    let store = &shared.store;
    let publish = publisher(shared);
    let ok = |version: u64| Response {
        version,
        ..Response::status(StatusCode::Ok)
    };
    let mismatch = |current: u64| Response {
        version: current,
        ..Response::status(StatusCode::VersionMismatch)
    };
    let refused = |e: WriteError| {
        let (status, aux) = refusal(e);
        Response {
            aux,
            ..Response::status(status)
        }
    };
    match op {
        OpCode::Get => get(shared, req, begun, &key),
        OpCode::Set | OpCode::Post => {
            let value = ValueSource::Words {
                src: &data,
                offset: req.payload().value_at(),
                len: u64::from(req.value_len),
            };
            let spec = WriteSpec {
                mode: if op == OpCode::Set {
                    WriteMode::Upsert
                } else {
                    WriteMode::InsertOnly
                },
                if_version: (req.flags & IF_VERSION != 0).then_some(req.arg3),
                deadline: (req.flags & KEEP_TTL == 0).then_some(req.arg2),
            };
            let written = store.set_with(&key, value, spec, publish);
            if req.staged() {
                // The payload is in the store (or refused): the client's
                // buffer is free from now on (see `Bulk::consumed`), its
                // pages given back first after a large transfer.
                let (index, generation) = staging_of(req.arg);
                if req.payload().bytes() > RELEASE_PAGES_ABOVE {
                    shared.region.release_bulk_pages(index);
                }
                shared
                    .region
                    .bulk()
                    .consumed(index, generation, begun.owner());
            }
            match written {
                Ok(Written::Inserted(v)) => Response { aux: 1, ..ok(v) },
                Ok(Written::Replaced(v)) => ok(v),
                Ok(Written::Exists) => Response::status(StatusCode::Exists),
                Ok(Written::VersionMismatch(current)) => mismatch(current),
                Err(e) => refused(e),
            }
        }
        OpCode::Del => {
            let if_version = (req.flags & IF_VERSION != 0).then_some(req.arg3);
            match store.del_with(&key, if_version, publish) {
                Deleted::Removed(v) => ok(v),
                Deleted::Absent => Response::status(StatusCode::NotFound),
                Deleted::VersionMismatch(current) => mismatch(current),
            }
        }
        OpCode::Expire => match store.set_deadline(&key, req.arg2, publish) {
            Ok(Some(v)) => ok(v),
            Ok(None) => Response::status(StatusCode::NotFound),
            Err(e) => refused(e),
        },
        OpCode::Incr => match store.incr(&key, req.arg2 as i64, publish) {
            Ok((n, v)) => Response {
                aux64: n as u64,
                ..ok(v)
            },
            Err(IncrError::NotInteger) => Response::status(StatusCode::NotInteger),
            Err(IncrError::Overflow) => Response::status(StatusCode::Overflow),
            Err(IncrError::Write(e)) => refused(e),
        },
        OpCode::Status => {
            let st = store.stats();
            Response {
                modified_ns: st.entries,
                aux64: st.committed_bytes,
                ..ok(st.version)
            }
        }
        OpCode::ListPage => list_page(shared, req, &data, key),
        OpCode::Backup => backup(shared, begun, &key),
        OpCode::MGet | OpCode::MSet | OpCode::MDel => crate::batch::serve(shared, op, req, &data),
    }
}

/// A GET a client could not do directly: the value inline if it fits,
/// else in the staging buffer the request brought, else its length only.
fn get(shared: &Shared, req: &Request, begun: &Begun, key: &[u8]) -> Response {
    let slot_data = shared.region.slots().data(begun.index());
    shared.store.with_entry(key, |entry| {
        let Some((meta, value)) = entry else {
            return Response::status(StatusCode::NotFound);
        };
        let mut answer = Response {
            version: meta.version,
            modified_ns: meta.modified_ns,
            value_len: value.len() as u32,
            aux64: meta.deadline,
            ..Response::status(StatusCode::Ok)
        };
        if value.len() <= INLINE_BYTES as u64 {
            if value.copy_to(&slot_data, 0).is_err() {
                return Response::status(StatusCode::Failed);
            }
        } else if req.staged() {
            let (index, _) = staging_of(req.arg);
            if value.copy_to(&shared.region.bulk().data(index), 0).is_err() {
                answer.flags |= VALUE_TOO_LARGE;
            } else {
                answer.flags |= STAGED;
            }
        } else {
            answer.flags |= VALUE_TOO_LARGE;
        }
        answer
    })
}

/// The keys of one stripe after a given key, in byte order, into the
/// request's staging buffer: a listing a client could not read directly.
/// Records: key length (u32), the key, padded to 8.
fn list_page(shared: &Shared, req: &Request, data: &Words<'_>, after: Vec<u8>) -> Response {
    if !req.staged() {
        return malformed();
    }
    let stripe = req.arg2;
    let mut keys = Vec::new();
    if !shared
        .store
        .for_each_in_stripe(stripe, |k, _, _| keys.push(k.to_vec()))
    {
        return malformed();
    }
    keys.sort_unstable();
    let start = keys.partition_point(|k| after.is_empty() || *k <= after);
    let capacity = data.len_bytes();
    let mut at = 0u64;
    let mut count = 0u32;
    let mut flags = 0;
    for k in &keys[start..] {
        let need = 8 + (k.len() as u64).div_ceil(8) * 8;
        if at + need > capacity {
            flags |= MORE;
            break;
        }
        data.store(at, k.len() as u64);
        let _ = data.write_bytes(at + 8, k, |_| {});
        at += need;
        count += 1;
    }
    Response {
        flags: flags | STAGED,
        value_len: at as u32,
        aux: count,
        ..Response::status(StatusCode::Ok)
    }
}

/// Writes a snapshot as the file named inline, into `--backup-dir`. The
/// copy holds every stripe's lock for as long as a memory copy takes; the
/// file is written after they are released, by this worker, while the
/// other workers keep serving. The answer's data carries the path written,
/// or the reason for `Failed`.
fn backup(shared: &Shared, begun: &Begun, name: &[u8]) -> Response {
    let slot_data = shared.region.slots().data(begun.index());
    let say = |status: StatusCode, text: &[u8]| {
        let n = text.len().min(INLINE_BYTES);
        let _ = slot_data.write_bytes(0, &text[..n], |_| {});
        Response {
            value_len: n as u32,
            ..Response::status(status)
        }
    };
    let Some(dir) = &shared.backup_dir else {
        return say(
            StatusCode::Failed,
            b"backups are disabled on this server: start kvs_server with --backup-dir DIR",
        );
    };
    let Ok(name) = std::str::from_utf8(name) else {
        return say(StatusCode::Failed, b"the backup file name is not UTF-8");
    };
    if let Err(why) = kvs_core::secure_fs::check_file_name(name) {
        return say(StatusCode::Failed, why.as_bytes());
    }
    let (entries, version) = crate::snapshot_entries(&shared.store);
    match crate::snapshot::write_into(dir, name, &entries, version, shared.snapshot_mode) {
        Ok(info) => {
            let path = dir.path().join(name);
            tracing::info!(path = %path.display(), entries = info.entries, bytes = info.bytes, "snapshot written");
            Response {
                version: info.version,
                modified_ns: info.entries,
                aux64: info.bytes,
                ..say(StatusCode::Ok, path.as_os_str().as_bytes())
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "snapshot failed");
            say(StatusCode::Failed, e.to_string().as_bytes())
        }
    }
}
