//! Property tests (proptest) for everything the server reads from shared
//! memory: request decoding from arbitrary bytes, the response-slot state
//! machine driven by arbitrary operation sequences (forged indices and
//! scribbled control words included), and the request ring with scribbled
//! cell words and indices.
//!
//! The ring and the table run over zeroed raw memory (`from_raw`), as in the
//! region, so the tests can scribble on stamps and words exactly as a
//! hostile process would. Run with `cargo test -p kvs-core --test
//! protocol_fuzz`; `PROPTEST_CASES` raises the case count.

use crossbeam_utils::CachePadded;
use kvs_core::protocol::{OpCode, Request, Response, StatusCode, REQUEST_WORDS};
use kvs_core::response_table::{Poll, Slot, SlotError, SlotTable, SlotTableHeader};
use kvs_core::ring::{PopError, PushError, Ring, RingCell, RingHeader, MAX_VALUE};
use kvs_core::wait::SpinParker;
use proptest::prelude::*;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

/// A zeroed header plus `n` zeroed elements, as a fresh region holds them.
struct RawBuf<H, C> {
    header: *mut H,
    elems: *mut C,
    n: usize,
}

impl<H, C> RawBuf<H, C> {
    fn new(n: usize) -> Self {
        // SAFETY: both layouts have a non-zero size; zeroed memory is a valid
        // initial state for the ring and the table (all atomics and Pod).
        unsafe {
            let header = alloc_zeroed(Layout::new::<H>()).cast::<H>();
            let elems = alloc_zeroed(Layout::array::<C>(n).unwrap()).cast::<C>();
            assert!(!header.is_null() && !elems.is_null());
            Self { header, elems, n }
        }
    }

    /// The first 8 bytes of element `i` (the stamp of a ring cell, the
    /// control word of a slot: both are the first field of a `repr(C)`
    /// struct), as a hostile writer reaches them.
    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.n);
        // SAFETY: in bounds; every element starts with an 8-byte aligned u64
        // that the code under test only accesses atomically.
        unsafe { AtomicU64::from_ptr(self.elems.add(i).cast()) }
    }

    /// The `k`-th u64 of the header (ring head at 0, tail one cache line on).
    fn header_word(&self, byte_offset: usize) -> &AtomicU64 {
        assert!(byte_offset + 8 <= std::mem::size_of::<H>() && byte_offset % 8 == 0);
        // SAFETY: in bounds and aligned (checked); accessed atomically.
        unsafe { AtomicU64::from_ptr(self.header.cast::<u8>().add(byte_offset).cast()) }
    }
}

impl<H, C> Drop for RawBuf<H, C> {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts, freed once.
        unsafe {
            dealloc(self.header.cast(), Layout::new::<H>());
            dealloc(self.elems.cast(), Layout::array::<C>(self.n).unwrap());
        }
    }
}

type RingBuf = RawBuf<RingHeader, RingCell>;
type TableBuf = RawBuf<SlotTableHeader, CachePadded<Slot>>;

fn ring(buf: &RingBuf) -> Ring<'_> {
    // SAFETY: a zeroed, aligned header and `n` cells (a power of two) that
    // live as long as `buf`; `init` follows before any use.
    let ring = unsafe { Ring::from_raw(buf.header, buf.elems, buf.n) };
    ring
}

fn table(buf: &TableBuf) -> SlotTable<'_> {
    // SAFETY: a zeroed, aligned header and `n > 0` slots living as long as
    // `buf`; zero is a valid empty table.
    unsafe { SlotTable::from_raw(buf.header, buf.elems, buf.n) }
}

const TAIL_OFFSET: usize = std::mem::size_of::<CachePadded<AtomicU64>>();

// ---------------------------------------------------------------- decoding

proptest! {
    /// Arbitrary bytes read as a request: decoding never panics and accepts
    /// exactly the known op codes; a worker begins a slot only when its word
    /// is exactly `Pending`, whatever index the ring hands it.
    #[test]
    fn request_decoding_accepts_only_what_it_should(
        words in proptest::collection::vec(any::<u64>(), REQUEST_WORDS),
        index in 0..16u32,
    ) {
        let cells: [AtomicU64; REQUEST_WORDS] = std::array::from_fn(|i| AtomicU64::new(words[i]));
        let req = Request::decode(&cells);
        prop_assert_eq!(req.op().is_ok(), (1..=7).contains(&req.op));
        // Where the payload would lie is computed without overflow, and a
        // payload too large for a slot is seen as such.
        let p = req.payload();
        prop_assert!(p.bytes() >= p.key_len + p.value_len);

        let buf = TableBuf::new(8);
        let t = table(&buf);
        t.init();
        let claim = t.claim(1).unwrap();
        t.write_request(&claim, &get(5), b"", b"");
        t.mark_pending(&claim);
        let begun = t.begin(index);
        prop_assert_eq!(begun.is_ok(), index == claim.index);
        if index >= 8 {
            let out_of_range = matches!(begun, Err(SlotError::OutOfRange { .. }));
            prop_assert!(out_of_range);
        }
        // Never twice.
        if index == claim.index {
            prop_assert!(t.begin(claim.index).is_err());
        }
    }
}

// ------------------------------------------------------------- slot table

#[derive(Debug, Clone)]
enum SlotOp {
    Claim(u32),
    Submit(usize),
    Serve(usize),
    Forged(u32),
    Abandon(usize),
    Poll(usize),
    Release(usize),
    Reclaim(u8),
    Scribble(usize, u64),
}

fn slot_op(scribble: bool) -> impl Strategy<Value = SlotOp> {
    let base = prop_oneof![
        (0..4u32).prop_map(SlotOp::Claim),
        any::<usize>().prop_map(SlotOp::Submit),
        any::<usize>().prop_map(SlotOp::Serve),
        (0..10u32).prop_map(SlotOp::Forged),
        any::<usize>().prop_map(SlotOp::Abandon),
        any::<usize>().prop_map(SlotOp::Poll),
        any::<usize>().prop_map(SlotOp::Release),
        any::<u8>().prop_map(SlotOp::Reclaim),
    ];
    if scribble {
        prop_oneof![4 => base, 1 => (any::<usize>(), any::<u64>()).prop_map(|(i, w)| SlotOp::Scribble(i, w))].boxed()
    } else {
        base.boxed()
    }
}

/// The answer the server gives to the request of (slot, generation).
fn tag(index: u32, generation: u32) -> u64 {
    (u64::from(index) << 32) | u64::from(generation)
}

/// The server's answer: the tag of the request it read from the slot.
fn answer(key: u64) -> Response {
    Response {
        version: key,
        ..Response::status(StatusCode::Ok)
    }
}

/// A GET whose tag travels in `arg` (the table does not look at it).
fn get(tag: u64) -> Request {
    Request {
        op: OpCode::Get as u16,
        arg: tag,
        ..Request::default()
    }
}

/// Runs `ops`; returns how many answers were taken. Panics (via
/// `prop_assert`-style checks in the caller) are the failures.
fn run_slot_ops(ops: &[SlotOp], check_values: bool) -> Result<usize, TestCaseError> {
    const SLOTS: usize = 4;
    let buf = TableBuf::new(SLOTS);
    let t = table(&buf);
    t.init();
    // Claims the client still holds: (claim, submitted).
    let mut held: Vec<(kvs_core::response_table::Claim, bool)> = Vec::new();
    let mut taken = 0;
    let pick = |held: &Vec<_>, k: usize| (!held.is_empty()).then(|| k % held.len());
    for op in ops {
        match *op {
            SlotOp::Claim(owner) => {
                if let Some(c) = t.claim(owner) {
                    prop_assert!((c.index as usize) < SLOTS);
                    prop_assert!(held.iter().all(|(h, _)| h.index != c.index) || !check_values);
                    held.push((c, false));
                }
            }
            SlotOp::Submit(k) => {
                if let Some(i) = pick(&held, k) {
                    if !held[i].1 {
                        let c = held[i].0;
                        t.write_request(&c, &get(tag(c.index, c.generation)), b"", b"");
                        let marked = t.mark_pending(&c);
                        if check_values {
                            prop_assert!(marked);
                        }
                        held[i].1 = true;
                    }
                }
            }
            SlotOp::Serve(k) => {
                if let Some(i) = pick(&held, k) {
                    let c = held[i].0;
                    if let Ok(b) = t.begin(c.index) {
                        let req = t.read_request(&b);
                        t.complete(b, &answer(req.arg), &SpinParker);
                    }
                }
            }
            SlotOp::Forged(index) => {
                // An index nobody pushed (or pushed twice): it begins only a
                // pending use of that slot, whose own request it answers.
                if let Ok(b) = t.begin(index) {
                    if check_values {
                        prop_assert!(held.iter().any(|(c, s)| *s
                            && c.index == index
                            && c.generation == b.generation()));
                    }
                    let req = t.read_request(&b);
                    t.complete(b, &answer(req.arg), &SpinParker);
                }
            }
            SlotOp::Abandon(k) | SlotOp::Release(k) | SlotOp::Poll(k) => {
                let Some(i) = pick(&held, k) else { continue };
                let (c, submitted) = held[i];
                let got = match op {
                    SlotOp::Abandon(_) => {
                        held.remove(i);
                        t.abandon(&c)
                    }
                    SlotOp::Release(_) if !submitted => {
                        held.remove(i);
                        let released = t.release(&c);
                        if check_values {
                            prop_assert!(released);
                        }
                        None
                    }
                    SlotOp::Release(_) => None,
                    _ => match t.poll(&c, None) {
                        Poll::Ready(r) => {
                            held.remove(i);
                            Some(r)
                        }
                        Poll::Pending => None,
                        Poll::Lost => {
                            if check_values && submitted {
                                // Only reclaim (owner judged dead) takes a slot.
                            }
                            held.remove(i);
                            None
                        }
                    },
                };
                if let Some(r) = got {
                    taken += 1;
                    if check_values {
                        prop_assert_eq!(
                            r.version,
                            tag(c.index, c.generation),
                            "an answer for another request"
                        );
                    }
                }
            }
            SlotOp::Reclaim(dead_mask) => {
                let freed = t.reclaim(
                    |owner| owner < 8 && dead_mask & (1 << owner) != 0,
                    |_| false,
                );
                prop_assert!(freed <= SLOTS);
                // Claims of dead owners are gone.
                held.retain(|(c, _)| !(c.owner < 8 && dead_mask & (1 << c.owner) != 0));
            }
            SlotOp::Scribble(i, w) => buf.word(i % SLOTS).store(w, Ordering::SeqCst),
        }
    }
    // The client gives up on everything; the server treats every owner as
    // dead: every slot is free again, whatever was scribbled.
    for (c, _) in held.drain(..) {
        t.abandon(&c);
    }
    t.reclaim(|_| true, |_| false);
    prop_assert_eq!(
        t.free_count(),
        SLOTS,
        "slots leaked: {:?}",
        t.state_counts()
    );
    Ok(taken)
}

proptest! {
    /// Without scribbles: every answer a client takes is the one produced
    /// for its exact slot and generation; forged requests are answered only
    /// when they name a pending use exactly; nothing leaks.
    #[test]
    fn slot_table_never_delivers_another_requests_answer(ops in proptest::collection::vec(slot_op(false), 1..200)) {
        run_slot_ops(&ops, true)?;
    }

    /// With arbitrary control words scribbled in between: nothing panics or
    /// hangs, and every slot can still be reclaimed.
    #[test]
    fn slot_table_survives_scribbled_words(ops in proptest::collection::vec(slot_op(true), 1..200)) {
        run_slot_ops(&ops, false)?;
    }
}

// ------------------------------------------------------------------- ring

#[derive(Debug, Clone)]
enum RingOp {
    Push,
    Pop,
    Word(usize, u64),
    Head(u64),
    Tail(u64),
}

fn ring_op(scribble: bool) -> impl Strategy<Value = RingOp> {
    let base = prop_oneof![3 => Just(RingOp::Push), 2 => Just(RingOp::Pop)];
    if scribble {
        prop_oneof![
            10 => base,
            // Arbitrary cell words and indices, and words that look almost
            // right (a stamp near the cell's positions), which is where a
            // repair could misjudge.
            2 => (any::<usize>(), any::<u64>()).prop_map(|(i, w)| RingOp::Word(i, w)),
            2 => (any::<usize>(), 0..64u64, 0..(MAX_VALUE as u64)).prop_map(|(i, s, v)| RingOp::Word(i, (s << 20) | v)),
            1 => prop_oneof![0..64u64, any::<u64>()].prop_map(RingOp::Head),
            1 => prop_oneof![0..64u64, any::<u64>()].prop_map(RingOp::Tail),
        ]
        .boxed()
    } else {
        base.boxed()
    }
}

const CAP: usize = 8;

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Without scribbles the ring is exactly a bounded FIFO queue, and a
    /// repair finds nothing to do.
    #[test]
    fn ring_is_a_bounded_fifo(ops in proptest::collection::vec(ring_op(false), 1..300)) {
        let buf = RingBuf::new(CAP);
        let r = ring(&buf);
        r.init();
        let mut model = VecDeque::new();
        let mut next = 0u32;
        for op in ops {
            match op {
                RingOp::Push => {
                    next = (next + 1) % (MAX_VALUE + 1);
                    match r.push(next) {
                        Ok(()) => model.push_back(next),
                        Err(PushError::Full) => prop_assert!(model.len() == CAP),
                        Err(e) => prop_assert!(false, "{e:?}"),
                    }
                }
                _ => match r.pop() {
                    Ok(v) => prop_assert_eq!(Some(v), model.pop_front()),
                    Err(PopError::Empty) => prop_assert!(model.is_empty()),
                    Err(e) => prop_assert!(false, "{e:?}"),
                },
            }
            prop_assert_eq!(r.len(), model.len());
            prop_assert_eq!(r.repair(), Default::default());
        }
    }

    /// With cell words and indices scribbled in between: no operation
    /// panics or hangs, a repair never touches a value pushed after it, and
    /// once repairs run the ring is a working FIFO again.
    #[test]
    fn ring_recovers_from_scribbles(ops in proptest::collection::vec(ring_op(true), 1..120)) {
        let buf = RingBuf::new(CAP);
        let r = ring(&buf);
        r.init();
        for op in ops {
            match op {
                RingOp::Push => { let _ = r.push(7); }
                RingOp::Pop => { let _ = r.pop(); }
                RingOp::Word(i, w) => buf.word(i % CAP).store(w, Ordering::SeqCst),
                RingOp::Head(h) => buf.header_word(0).store(h, Ordering::SeqCst),
                RingOp::Tail(t) => buf.header_word(TAIL_OFFSET).store(t, Ordering::SeqCst),
            }
            let _ = r.len();
        }
        // Recovery: what workers and the housekeeper do (repair, drain).
        for _ in 0..4 {
            r.repair();
            for _ in 0..4 * CAP {
                match r.pop() {
                    Ok(_) => {}
                    Err(PopError::Empty) => break,
                    Err(PopError::Corrupt { .. }) => { r.repair(); }
                }
            }
        }
        prop_assert_eq!(r.repair(), Default::default());
        for round in 0..3u32 {
            for i in 0..CAP as u32 {
                prop_assert!(r.push(1000 * round + i).is_ok(), "push failed after recovery");
            }
            // A repair between pushes and pops drops nothing legitimate.
            prop_assert_eq!(r.repair(), Default::default());
            for i in 0..CAP as u32 {
                prop_assert_eq!(r.pop(), Ok(1000 * round + i));
            }
            prop_assert_eq!(r.pop(), Err(PopError::Empty));
        }
    }
}
