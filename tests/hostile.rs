//! Hostile and malformed input: a process that scribbles over the shared
//! region while normal clients run, forged requests, bad command lines, a
//! client that tries to write the store, values of another codec, and a
//! region of another layout version.
//!
//! The scribbler connects as any admitted process can, maps the region's
//! memfd itself (read-write) and writes through raw pointers, so it is
//! exactly as unconstrained as a buggy or hostile peer.

mod common;

use common::*;
use kvs::core::fixed_str::Value256;
use kvs::core::protocol::{OpCode, Request, StatusCode};
use kvs::core::region::{Layout, Region, LAYOUT_VERSION};
use kvs::core::response_table::{Slot, WaitOutcome};
use kvs::core::text::TextKey;
use kvs::core::wait::{FutexParker, SpinPolicy};
use kvs::{ClientError, ClientOptions, KVSClient};
use rand::Rng;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A raw read-write mapping of a region, as a hostile process has it.
struct RawMap {
    ptr: *mut u8,
    len: usize,
    /// Keeps the probe's connection open while the mapping is used.
    _session: kvs::core::region::Session,
}

// SAFETY: the mapping is only written through atomics and volatile writes.
unsafe impl Sync for RawMap {}
// SAFETY: as above.
unsafe impl Send for RawMap {}

impl RawMap {
    fn open(name: &str) -> Self {
        use std::os::fd::AsRawFd;
        let session = kvs::core::region::Session::connect(
            name,
            kvs::core::region::handshake::Kind::Probe,
            &kvs::core::region::ConnectOptions::default(),
        )
        .unwrap();
        let file = std::fs::File::from(session.memfd().try_clone_to_owned().unwrap());
        let len = file.metadata().unwrap().len() as usize;
        // SAFETY: a fresh shared read-write mapping of the whole object; the
        // fd may be closed afterwards, the mapping stays.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Self {
            ptr: ptr.cast(),
            len,
            _session: session,
        }
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        assert!(offset % 8 == 0 && offset + 8 <= self.len);
        // SAFETY: in bounds and aligned (checked); the mapping lives as long
        // as `self`; other processes access the word atomically or not at
        // all, and any bit pattern is a valid u64.
        unsafe { AtomicU64::from_ptr(self.ptr.add(offset).cast()) }
    }

    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        assert!(offset % 4 == 0 && offset + 4 <= self.len);
        // SAFETY: as for `u64_at`.
        unsafe { AtomicU32::from_ptr(self.ptr.add(offset).cast()) }
    }

    fn scribble(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len);
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: in bounds (checked above); a racy byte write into a
            // shared mapping is what this test is about, and every reader
            // copies payloads out before validating them.
            unsafe { self.ptr.add(offset + i).write_volatile(*b) };
        }
    }
}

impl Drop for RawMap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Where the interesting bytes live, for `TextKey -> Value256` regions.
#[derive(Debug, Clone, Copy)]
struct Spots {
    ring_cells: usize,
    cell_size: usize,
    cells: usize,
    slots: usize,
    slot_size: usize,
    slot_count: usize,
}

/// A ring cell is one word: stamp (44 bits) | slot index (20 bits).
const STAMP_SHIFT: u32 = 20;
/// Inside a response slot: the control word, the event count and owner
/// pid, then the request header (op u16, flags u16, generation u32; key
/// and value lengths; two arguments), the answer header, then the inline
/// data (key and value, or the answer's value).
const WORD: usize = 0;
const REQUEST: usize = Slot::REQUEST_OFFSET;
const OP: usize = REQUEST;
const GENERATION: usize = REQUEST + 4;
const RESPONSE: usize = Slot::RESPONSE_OFFSET;
const DATA: usize = Slot::DATA_OFFSET;

impl Spots {
    fn of(layout: &Layout, cells: usize, slot_count: usize) -> Self {
        assert_eq!(layout.ring_cell_size, 8);
        Self {
            ring_cells: layout.ring_cells_offset,
            cell_size: layout.ring_cell_size,
            cells,
            slots: layout.slots_offset,
            slot_size: layout.slot_size,
            slot_count,
        }
    }

    fn cell(&self, i: usize) -> usize {
        self.ring_cells + (i % self.cells) * self.cell_size
    }

    fn slot(&self, i: usize) -> usize {
        self.slots + (i % self.slot_count) * self.slot_size
    }
}

/// What the normal clients saw.
#[derive(Debug, Default)]
struct Seen {
    correct: u64,
    wrong: Vec<String>,
    errors: BTreeMap<String, u64>,
    slowest: Duration,
}

fn error_kind(e: &ClientError) -> String {
    let s = format!("{e:?}");
    s.split(['(', ' ', '{']).next().unwrap_or("?").to_string()
}

/// A normal client: set and read back its own keys until `stop`.
fn normal_client(name: &str, id: usize, stop: &AtomicBool, seen: &Mutex<Seen>) {
    let client = KVSClient::<TextKey, Value256>::connect_with(
        name,
        ClientOptions {
            timeout: Duration::from_millis(300),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let k = key(&format!("n{id}-k{}", i % 32));
        let v = format!("n{id}-v{i}");
        let start = Instant::now();
        let r = client.set(&k, &val(&v)).and_then(|()| client.get(&k));
        let took = start.elapsed();
        let mut seen = seen.lock().unwrap();
        seen.slowest = seen.slowest.max(took);
        match r {
            Ok(Some(got)) if got.to_str() == Ok(v.as_str()) => seen.correct += 1,
            Ok(other) => seen.wrong.push(format!("{k:?}: {other:?}, expected {v}")),
            Err(e) => *seen.errors.entry(error_kind(&e)).or_default() += 1,
        }
        i += 1;
    }
}

/// Which parts of the region the scribbler may hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Targets {
    /// Ring words, request op codes and generations, slot control words:
    /// everything the protocol validates.
    ControlFields,
    /// All of that plus keys, values and responses: arbitrary bytes.
    Everything,
}

/// Writes garbage until `stop`; returns how many writes it made.
fn scribbler(map: &RawMap, spots: Spots, targets: Targets, stop: &AtomicBool) -> u64 {
    let mut rng = rand::rng();
    let mut writes = 0u64;
    let choices = if targets == Targets::Everything { 8 } else { 6 };
    while !stop.load(Ordering::Relaxed) {
        let cell = spots.cell(rng.random_range(0..spots.cells));
        let slot = spots.slot(rng.random_range(0..spots.slot_count));
        match rng.random_range(0..choices) {
            0 => map.u64_at(cell).store(rng.random(), Ordering::SeqCst),
            1 => {
                // A plausible word: a stamp near the ring's positions and a
                // real slot index (which a worker may then pop and begin).
                let stamp = rng.random_range(0..1u64 << 16);
                let index = rng.random_range(0..spots.slot_count as u64);
                map.u64_at(cell)
                    .store((stamp << STAMP_SHIFT) | index, Ordering::SeqCst)
            }
            2 => map
                .u64_at(slot + WORD)
                .store(rng.random(), Ordering::SeqCst),
            3 => {
                // A plausible word: a known state, any generation and owner.
                let word = (u64::from(rng.random::<u32>()) << 32)
                    | (u64::from(rng.random_range(0..1u32 << 24)) << 8)
                    | rng.random_range(0..6u64);
                map.u64_at(slot + WORD).store(word, Ordering::SeqCst)
            }
            4 => map.u32_at(slot + OP).store(rng.random(), Ordering::SeqCst),
            5 => map
                .u32_at(slot + GENERATION)
                .store(rng.random(), Ordering::SeqCst),
            6 => {
                // Lengths, arguments and the inline key and value.
                let bytes: Vec<u8> = (0..RESPONSE - OP - 8).map(|_| rng.random()).collect();
                map.scribble(slot + OP + 8, &bytes);
                let bytes: Vec<u8> = (0..64).map(|_| rng.random()).collect();
                map.scribble(slot + DATA + rng.random_range(0..8) * 64, &bytes)
            }
            _ => {
                let bytes: Vec<u8> = (0..DATA - RESPONSE).map(|_| rng.random()).collect();
                map.scribble(slot + RESPONSE, &bytes)
            }
        }
        writes += 1;
        std::thread::sleep(Duration::from_micros(200));
    }
    writes
}

/// Waits (bounded) until every slot is free and the ring is empty.
fn wait_all_free(region: &Region, limit: Duration) -> Duration {
    let start = Instant::now();
    let slots = region.slots();
    while slots.free_count() != slots.len() || !region.ring().is_empty() {
        assert!(
            start.elapsed() < limit,
            "not every slot came back: {:?}, ring len {}",
            slots.state_counts(),
            region.ring().len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// One scribbling phase against a live server with two normal clients.
fn hostile_phase(name: &str, targets: Targets, run_for: Duration) -> (Seen, u64) {
    let region = Region::open(name, Duration::from_secs(1)).unwrap();
    let spots = Spots::of(
        region.layout(),
        region.info().ring_capacity as usize,
        region.info().slot_count as usize,
    );
    let map = RawMap::open(name);
    let stop = AtomicBool::new(false);
    let seen = Mutex::new(Seen::default());
    let writes = std::thread::scope(|s| {
        for id in 0..2 {
            let (stop, seen) = (&stop, &seen);
            s.spawn(move || normal_client(name, id, stop, seen));
        }
        let scribbling = s.spawn(|| scribbler(&map, spots, targets, &stop));
        std::thread::sleep(run_for);
        stop.store(true, Ordering::Relaxed);
        scribbling.join().unwrap()
    });
    (seen.into_inner().unwrap(), writes)
}

/// Garbage in every control field while clients run: the server never
/// crashes, no caller hangs, no client ever gets a wrong value (only
/// errors), and once the scribbling stops every slot comes back and new
/// clients are served. Then arbitrary bytes everywhere (keys, values and
/// responses too): the server still survives and recovers.
#[test]
fn scribbled_region_never_crashes_or_hangs_the_server() {
    let name = unique_name("scribble");
    let mut server = ServerGuard::start(&name, &["--workers", "2"]);
    let region = Region::open(&name, Duration::from_secs(1)).unwrap();

    for (targets, run_for) in [
        (Targets::ControlFields, Duration::from_secs(2)),
        (Targets::Everything, Duration::from_secs(1)),
    ] {
        let (seen, writes) = hostile_phase(&name, targets, run_for);
        eprintln!(
            "{targets:?}: {writes} hostile writes; clients: {} correct, {} wrong, errors {:?}, slowest call {:?}",
            seen.correct,
            seen.wrong.len(),
            seen.errors,
            seen.slowest
        );
        assert!(
            server.child.as_mut().unwrap().try_wait().unwrap().is_none(),
            "the server died"
        );
        // 300 ms timeout, plus at most 200 ms looking for a slot and 100 ms
        // retrying a stalled ring: a generous bound that still means "no hang".
        assert!(
            seen.slowest < Duration::from_secs(3),
            "a call took {:?}",
            seen.slowest
        );
        if targets == Targets::ControlFields {
            assert!(
                seen.wrong.is_empty(),
                "a client got a wrong value: {:?}",
                seen.wrong
            );
        }
        let took = wait_all_free(&region, Duration::from_secs(10));
        eprintln!("{targets:?}: every slot free and the ring empty {took:?} after the scribbling");

        // Full service again: two laps of the ring, every call answered.
        let client = KVSClient::<TextKey, Value256>::connect(&name).unwrap();
        let start = Instant::now();
        let laps = 2 * region.info().ring_capacity as usize;
        for i in 0..laps {
            let k = key(&format!("after-{}", i % 50));
            let v = val(&format!("v{i}"));
            client.set(&k, &v).unwrap();
            assert_eq!(client.get(&k).unwrap(), Some(v));
        }
        eprintln!(
            "{targets:?}: {laps} set+get pairs after the scribbling took {:?}",
            start.elapsed()
        );
        drop(client);

        // A fresh client process is served.
        let out = kvs_client(&name, &["set", "fresh", "ok"]);
        assert!(out.status.success(), "{out:?}");
        let out = kvs_client(&name, &["get", "fresh"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok", "{out:?}");
    }
    let status = status_json(&name);
    eprintln!(
        "status after: malformed {}, dropped {}, reclaimed {}, ring repairs {}",
        status["malformed"],
        status["ops"]["dropped"],
        status["slots_reclaimed"],
        status["ring_repairs"]
    );
    // The server noticed the garbage (which counter depends on where the
    // random writes landed; thousands of them always leave some trace).
    let noticed: u64 = [
        &status["ops"]["dropped"],
        &status["malformed"],
        &status["slots_reclaimed"],
        &status["ring_repairs"],
    ]
    .iter()
    .map(|v| v.as_u64().unwrap())
    .sum();
    assert!(noticed > 0, "{status}");
    let code = server.signal_and_wait(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code.code(), Some(0), "{code}");
}

/// Forged requests, pushed through the real ring: an unknown op code, or a
/// request whose generation is not its slot's, is answered `Malformed` (and
/// counted); an index out of range, or of a slot with no pending request,
/// is dropped (and counted); well-formed requests are still served.
#[test]
fn malformed_requests_get_an_error_status() {
    let name = unique_name("malformed");
    let _server = ServerGuard::start(&name, &[]);
    let region = Region::open(&name, Duration::from_secs(1)).unwrap();
    let (me, _) = region.registration().unwrap();
    let slots = region.slots();
    let ring = region.ring();
    let before = status_json(&name);
    let wait = |claim: &kvs::core::response_table::Claim| {
        slots.wait(
            claim,
            None,
            SpinPolicy::CLIENT,
            &FutexParker,
            || Some(Instant::now() + Duration::from_secs(5)),
            || region.server_alive(),
        )
    };

    // An unknown op code in a request for a slot we own.
    let map = RawMap::open(&name);
    let spots = Spots::of(
        region.layout(),
        region.info().ring_capacity as usize,
        region.info().slot_count as usize,
    );
    let set = |claim: &kvs::core::response_table::Claim, k: &[u8], v: &[u8]| {
        let request = Request {
            op: OpCode::Set as u16,
            generation: claim.generation,
            key_len: k.len() as u32,
            value_len: v.len() as u32,
            ..Request::default()
        };
        assert!(slots.write_request(claim, &request, k, v));
    };
    for op in [0u32, 13, 99, u32::from(u16::MAX)] {
        let claim = slots.claim(me).unwrap();
        set(&claim, b"k", b"v");
        map.u32_at(spots.slot(claim.index as usize) + OP)
            .store(op, Ordering::SeqCst);
        assert!(slots.mark_pending(&claim));
        ring.push(claim.index).unwrap();
        region.wake_a_worker();
        match wait(&claim) {
            WaitOutcome::Ready(r) => {
                assert_eq!(r.status_code(), Ok(StatusCode::Malformed), "op {op}")
            }
            other => panic!("op {op}: {other:?}"),
        }
    }
    // A request whose generation is not its slot's (written for another
    // use of the slot): refused as malformed.
    {
        let claim = slots.claim(me).unwrap();
        set(&claim, b"forged", b"x");
        map.u32_at(spots.slot(claim.index as usize) + GENERATION)
            .store(claim.generation.wrapping_add(7), Ordering::SeqCst);
        assert!(slots.mark_pending(&claim));
        ring.push(claim.index).unwrap();
        region.wake_a_worker();
        match wait(&claim) {
            WaitOutcome::Ready(r) => assert_eq!(r.status_code(), Ok(StatusCode::Malformed)),
            other => panic!("{other:?}"),
        }
    }
    // Indices out of range, of a free slot, of a claimed but unsubmitted
    // slot: dropped.
    let dropped_before = region.op_totals().dropped;
    let claim = slots.claim(me).unwrap();
    for index in [
        slots.len() as u32,
        kvs::core::ring::MAX_VALUE,
        claim.index,
        (claim.index + 1) % slots.len() as u32,
    ] {
        ring.push(index).unwrap();
        region.wake_a_worker();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while region.op_totals().dropped < dropped_before + 4 {
        assert!(Instant::now() < deadline, "forged indices were not dropped");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(slots.release(&claim));
    drop(region);

    let after = status_json(&name);
    assert_eq!(
        after["malformed"].as_u64().unwrap(),
        before["malformed"].as_u64().unwrap() + 5
    );
    // Nothing forged was written: the store is as it was.
    assert_eq!(after["version"], before["version"]);
    assert_eq!(after["entries"], before["entries"]);
    let out = kvs_client(&name, &["get", "forged"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // The server still serves well-formed requests.
    let out = kvs_client(&name, &["set", "k", "v"]);
    assert!(out.status.success(), "{out:?}");
}

/// Too-long keys or values, non-UTF-8 text, unknown commands and bad
/// numbers: one line on stderr, exit 2, nothing on stdout, nothing written.
#[test]
fn bad_command_lines_fail_with_one_line_and_write_nothing() {
    let name = unique_name("badargs");
    let _server = ServerGuard::start(&name, &["--max-key-size", "63", "--max-value-size", "255"]);
    let out = kvs_client(&name, &["set", "k", "v"]);
    assert!(out.status.success(), "{out:?}");
    let before = status_json(&name);

    let os = |s: &str| OsString::from(s);
    let raw = |b: &[u8]| OsStr::from_bytes(b).to_os_string();
    let long_key = "k".repeat(64);
    let long_value = "v".repeat(256);
    let too_long_key = "a key is 1 to 63 bytes (kvs_server --max-key-size), this one is 64";
    let cases: Vec<(Vec<OsString>, &str)> = vec![
        (vec![os("set"), os(&long_key), os("v")], too_long_key),
        (vec![os("post"), os(&long_key), os("v")], too_long_key),
        (vec![os("get"), os(&long_key)], too_long_key),
        (vec![os("del"), os(&long_key)], too_long_key),
        (vec![os("set"), raw(&[0xff; 64]), os("v")], too_long_key),
        (
            vec![os("set"), os("k"), os(&long_value)],
            "a value is at most 255 bytes (kvs_server --max-value-size), this one is 256",
        ),
        (vec![os("set"), os(""), os("v")], "must not be empty"),
        (vec![os("del"), os("")], "must not be empty"),
        (vec![os("frobnicate"), os("k")], "unrecognized subcommand"),
        (
            vec![os("--timeout-ms"), os("abc"), os("set"), os("k"), os("v")],
            "invalid value 'abc'",
        ),
        (
            vec![os("--timeout-ms"), os("-5"), os("set"), os("k"), os("v")],
            "-5",
        ),
        (
            vec![
                os("--timeout-ms"),
                os("99999999999999999999999"),
                os("set"),
                os("k"),
                os("v"),
            ],
            "invalid value",
        ),
        (vec![os("set"), os("k")], "required"),
        (
            vec![os("set"), os("k"), os("v"), os("extra")],
            "unexpected argument",
        ),
    ];
    for (args, expected) in &cases {
        let out = kvs_client(&name, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err:?}");
        assert!(err.starts_with("kvs_client: "), "{args:?}: {err}");
        assert!(
            err.contains(expected),
            "{args:?}: {err:?} lacks {expected:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }
    let after = status_json(&name);
    assert_eq!(after["version"], before["version"], "something was written");
    assert_eq!(after["entries"], before["entries"]);
    let out = kvs_client(&name, &["get", "k"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v");
}

/// One server serves clients of any types: a value stored through one
/// codec and read through another that cannot decode it is a `Decode`
/// error, never a wrong value or a panic. A region of another layout
/// version is refused with an error naming both sides.
#[test]
fn other_codecs_get_decode_errors_and_other_layout_versions_are_refused() {
    let name = unique_name("mismatch");
    let _server = ServerGuard::start(&name, &[]);
    let text = KVSClient::<TextKey, Value256>::connect(&name).unwrap();
    text.set(&key("k"), &val("hello")).unwrap();
    let numbers = KVSClient::<TextKey, u64>::connect(&name).unwrap();
    let err = numbers.get(&key("k")).unwrap_err();
    assert!(matches!(err, ClientError::Decode(_)), "{err}");
    eprintln!("codec: {err}");
    // The other way round the bytes decode: 8 little-endian bytes are
    // text (of control characters) and bytes alike.
    numbers.set(&key("n"), &0x4142_4344_4546_4748).unwrap();
    assert_eq!(text.get(&key("n")).unwrap(), Some(val("HGFEDCBA")));
    let bytes = KVSClient::<Vec<u8>, Vec<u8>>::connect(&name).unwrap();
    assert_eq!(
        bytes.get(&b"n".to_vec()).unwrap(),
        Some(b"HGFEDCBA".to_vec())
    );

    // Another layout version. A real server rewrites its header (see
    // `a_scribbled_header_is_rewritten_and_clients_come_back`), so the
    // other version comes from a stand-in server: a region of this build
    // with its version word (offset 12 of every region, whatever the
    // version) changed, answering hellos itself.
    let other = unique_name("otherversion");
    let (region, listener, _) =
        Region::create_reporting(&other, &kvs::core::RegionConfig::default()).unwrap();
    region
        .header()
        .layout_version
        .store(LAYOUT_VERSION + 98, Ordering::SeqCst);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| answer_hellos(&region, &listener, &stop));
        let err = KVSClient::<TextKey, Value256>::connect(&other).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("layout version {}", LAYOUT_VERSION + 98))
                && msg.contains(&format!("speaks version {LAYOUT_VERSION}")),
            "{msg}"
        );
        eprintln!("version: {msg}");
        let out = kvs_client(&other, &["get", "k"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("layout version"), "{err}");
        stop.store(true, Ordering::SeqCst);
    });
    let client = KVSClient::<TextKey, Value256>::connect(&name).unwrap();
    client.set(&key("k"), &val("v")).unwrap();
}

/// A client gets the store read-only: its descriptor cannot be mapped for
/// writing, nor reopened for writing (the store's inode is mode 0400) by
/// a process without `CAP_DAC_OVERRIDE`, so only the server's workers write
/// the store.
#[test]
fn a_client_cannot_write_the_store() {
    use std::os::fd::AsRawFd;
    let name = unique_name("store-ro");
    let _server = ServerGuard::start(&name, &[]);
    let session = kvs::core::region::Session::connect(
        &name,
        kvs::core::region::handshake::Kind::Probe,
        &kvs::core::region::ConnectOptions::default(),
    )
    .unwrap();
    let store = session.store_fd();
    let len = std::fs::File::from(store.try_clone_to_owned().unwrap())
        .metadata()
        .unwrap()
        .len() as usize;
    // SAFETY: asks for a new shared mapping; it must fail, and is unmapped
    // if it does not.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            store.as_raw_fd(),
            0,
        )
    };
    if ptr != libc::MAP_FAILED {
        // SAFETY: the mapping just made.
        unsafe { libc::munmap(ptr, len) };
        panic!("the store was mapped writable through a client's descriptor");
    }
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", store.as_raw_fd())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o400);
    let reopened = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{}", store.as_raw_fd()));
    if nix::unistd::Uid::effective().is_root() {
        eprintln!("root may reopen it anyway (CAP_DAC_OVERRIDE): {reopened:?}");
    } else {
        assert!(reopened.is_err(), "reopened for writing");
    }
}

/// A stand-in server's acceptor: answers every hello on `listener` with
/// the region's memfd (registration 0 for clients) until `stop`.
fn answer_hellos(region: &Region, listener: &std::os::fd::OwnedFd, stop: &AtomicBool) {
    use kvs::core::region::endpoint;
    use kvs::core::region::handshake::{self, Kind, Status, Welcome};
    use std::os::fd::AsFd;
    while !stop.load(Ordering::SeqCst) {
        let Ok(Some(conn)) = endpoint::accept(listener) else {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        let hello = loop {
            match handshake::recv_hello(conn.as_fd()) {
                Ok(Some(h)) => break Some(h),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                _ => break None,
            }
        };
        let Some(hello) = hello else { continue };
        let mut w = Welcome::new(Status::Ok);
        w.region_size = region.info().total_size;
        w.store_size = region.info().store_size;
        if hello.kind() == Ok(Kind::Client) {
            w.registration = 0;
            w.registration_generation = 1;
        }
        let _ = handshake::send_welcome(conn.as_fd(), &w, &[region.memfd(), region.store().fd()]);
    }
}

/// Ring words forged to look almost right (the stamp of the previous lap,
/// "published" at a free cell, "consumed" ahead of the head) block every
/// producer at those cells; a repair (by the client that stalls, a worker,
/// or the housekeeper) judges each word against the indices and restores
/// it, and the store serves again.
#[test]
fn forged_ring_words_are_repaired() {
    let name = unique_name("ringforge");
    let _server = ServerGuard::start(&name, &[]);
    let client = KVSClient::<TextKey, Value256>::connect(&name).unwrap();
    for i in 0..10 {
        client.set(&key(&format!("k{i}")), &val("v")).unwrap();
    }
    let region = probe(&name);
    let layout = *region.layout();
    let cap = region.info().ring_capacity;
    let spots = Spots::of(&layout, cap as usize, region.info().slot_count as usize);
    let map = RawMap::open(&name);
    // The tail is the second cache-padded word of the ring header.
    let tail = map
        .u64_at(layout.ring_header_offset + 128)
        .load(Ordering::SeqCst);
    for (k, p) in (tail..tail + 4).enumerate() {
        let stamp = match k {
            0 => p.wrapping_sub(cap).wrapping_add(1), // the previous lap, still full
            1 => p.wrapping_sub(cap),                 // empty for the previous lap
            2 => p.wrapping_add(cap),                 // consumed ahead of time
            _ => p.wrapping_add(2),                   // published two ahead
        };
        map.u64_at(spots.cell(p as usize)).store(
            ((stamp & ((1 << 44) - 1)) << STAMP_SHIFT) | 3,
            Ordering::SeqCst,
        );
    }
    let start = Instant::now();
    let mut first_error = None;
    loop {
        match client.set_timeout(&key("after"), &val("ok"), Duration::from_millis(200)) {
            Ok(()) => break,
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "never recovered: {e}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    println!(
        "recovered in {:?} (first error: {first_error:?})",
        start.elapsed()
    );
    for i in 0..2_000 {
        let k = key(&format!("n{}", i % 50));
        let v = val(&i.to_string());
        client.set(&k, &v).unwrap();
        assert_eq!(client.get(&k).unwrap(), Some(v));
    }
}

/// One write into the region's header (magic, state, layout version, the
/// total size, the slot count) no longer takes the store down: the server
/// keeps its own copy of what it decided, the housekeeper rewrites the
/// header, and new clients connect again once the writes stop; a client
/// that was already connected keeps working throughout.
#[test]
fn a_scribbled_header_is_rewritten_and_clients_come_back() {
    let name = unique_name("header");
    let _server = ServerGuard::start(&name, &[]);
    let connected = KVSClient::<TextKey, Value256>::connect(&name).unwrap();
    let map = RawMap::open(&name);
    // Offsets in the header: magic 0, state 8, layout version 12, then the
    // static description at 16: the cache-line size, the total size, the
    // ring capacity, the slot count.
    let info = 16;
    let total_size = info + 8;
    let slot_count = info + 24;
    let fields: [(&str, usize, u64); 5] = [
        ("magic", 0, 0x0bad_0bad_0bad_0bad),
        ("state", 8, 2), // Closed, as a server that stopped would write it
        ("layout version", 12, 99),
        ("total size", total_size, 12345),
        ("slot count", slot_count, 7),
    ];
    for (what, offset, garbage) in fields {
        if offset == 8 || offset == 12 {
            map.u32_at(offset).store(garbage as u32, Ordering::SeqCst);
        } else {
            map.u64_at(offset).store(garbage, Ordering::SeqCst);
        }
        // Already connected: unaffected by anything but the state, which
        // heals within a housekeeper tick.
        let start = Instant::now();
        loop {
            match connected.set(&key("c"), &val(what)) {
                Ok(()) => break,
                Err(e) => assert!(
                    start.elapsed() < Duration::from_secs(3),
                    "{what}: the connected client never recovered: {e}"
                ),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // A new client connects once the header is rewritten.
        let start = Instant::now();
        loop {
            let out = kvs_client(&name, &["set", "k", what]);
            if out.status.success() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{what}: new clients were never served again: {}",
                stderr(&out)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{what}: served again after {:?}", start.elapsed());
        assert_eq!(stdout(&kvs_client(&name, &["get", "k"])), what);
    }
    let status = status_json(&name);
    assert!(status["header_repairs"].as_u64().unwrap() >= 5, "{status}");
}
