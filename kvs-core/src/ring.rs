//! The request ring: a bounded MPMC queue of response-slot indices, where a
//! push and a pop are each one CAS on one 64-bit cell word.
//!
//! A request itself never travels through the ring: the client writes it
//! into the response slot it owns (see [`crate::response_table`]) and then
//! pushes the slot's index. So a cell holds nothing but a word, and the
//! producer publishes its value *and* checks that the cell is still the one
//! it saw, in the same atomic instruction. A producer stopped at any point
//! (`SIGSTOP`, a page fault, preemption for seconds) can therefore never
//! write into a cell that has moved on: its CAS simply fails and it tries
//! again further on. There is no "claimed but not yet published" state, so
//! nothing ever has to be skipped after a timeout, and a producer that dies
//! leaves either a published value or nothing.
//!
//! # The cell word and the stamp life cycle
//!
//! Positions are 64-bit counters; position `p` lives in cell `p & mask`. A
//! cell word packs a 44-bit stamp and a 20-bit value:
//!
//! ```text
//!  63                                   20 19               0
//! ┌──────────────────────────────────────┬──────────────────┐
//! │ stamp (44 bits, positions mod 2^44)  │ value (slot idx) │
//! └──────────────────────────────────────┴──────────────────┘
//! ```
//!
//! | stamp      | meaning                                                    |
//! |------------|------------------------------------------------------------|
//! | `p`        | empty, ready for the producer of position `p`              |
//! | `p + 1`    | holds the value pushed at position `p`                     |
//! | `p + cap`  | consumed; empty for the producer of the next lap           |
//!
//! (This is Dmitry Vyukov's bounded queue, as in crossbeam's `ArrayQueue`,
//! with the value folded into the stamp word.)
//!
//! * **push**: read `tail` = `t` and the word of cell `t`. If its stamp is
//!   `t`, CAS it to `(t + 1, value)`; on success the value is published,
//!   and we CAS `tail` from `t` to `t + 1` (which may fail: someone helped).
//!   If the stamp is `t + 1`, another producer filled `t` and has not moved
//!   `tail` yet: help it (CAS `tail`) and retry. If the stamp is
//!   `t - cap + 1`, the cell still holds the value of the previous lap: the
//!   ring is full.
//! * **pop**: read `head` = `h` and the word of cell `h`. If its stamp is
//!   `h + 1`, CAS it to `(h + cap, 0)`: the value is ours and the cell is
//!   free for the next lap in the same instruction; then CAS `head` from
//!   `h` to `h + 1`. If the stamp is `h + cap` or `h + cap + 1`, position
//!   `h` was consumed and `head` lags: help it. If the stamp is `h`, the
//!   ring is empty.
//!
//! Full and empty are decided from one cell word, without reading the other
//! index: `tail` moves past `t` only after cell `t` was filled (so an empty
//! cell at `head` means `tail == head`), and a cell still holding the
//! previous lap's value means every position of the lap is taken. `head`
//! and `tail` each lag the truth by at most one position (a helper moves
//! them on), so at any moment `tail - head` is between `-1` and `cap`.
//!
//! # Memory orderings
//!
//! The cell CASes are `SeqCst`: a successful push is the producer's half of
//! the Dekker pair with a worker that announces it sleeps and then looks at
//! the ring (see `Region::worker_sleep`); on x86 every locked instruction
//! is a full barrier anyway. Their Release half publishes whatever the
//! producer wrote before pushing, and a consumer's load of the word
//! (Acquire) pairs with it; the protocol built on top (the slot's
//! `Pending` CAS) has its own Release/Acquire pair and does not rely on
//! this one. `head` and `tail` are hints that only ever move forward by
//! CAS; a stale read of them costs a retry, never a wrong decision, because
//! every decision is taken on a cell word.
//!
//! # Garbage written by another process
//!
//! Any process the server admits can write anything into the ring. Every
//! loop is bounded ([`PushError::Stalled`], [`PopError::Corrupt`]), values
//! are bounds-checked by their users, and [`Ring::repair`] restores any
//! state no push or pop could have produced: indices more than a lap apart,
//! and every cell word that cannot be right for the current `head` and
//! `tail`. A legitimate transition only ever CASes from a legitimate word,
//! and a repair only CASes from a word no legitimate transition can produce
//! or consume, so repairs never race the protocol; anyone may call it.
//!
//! The stamp has 44 bits, so a producer that reads a cell and then stops
//! for exactly 2^44 pushes (about two days at 100 million a second) could
//! publish into the same cell a lap of 2^44 later; that push lands at a
//! correct, empty position.
//!
//! # Example
//!
//! ```
//! use kvs_core::ring::RingBuffer;
//!
//! let buffer = RingBuffer::new(4);
//! let ring = buffer.ring();
//! ring.push(7).unwrap();
//! assert_eq!(ring.pop(), Ok(7));
//! assert!(ring.pop().is_err());
//! ```

use crate::sync::{spin_hint, AtomicU64, Ordering};
use crossbeam_utils::CachePadded;
use std::fmt;

/// Bits of the value in a cell word.
pub const VALUE_BITS: u32 = 20;

/// Largest value a cell holds (a response-slot index).
pub const MAX_VALUE: u32 = (1 << VALUE_BITS) - 1;

/// Bits of the stamp in a cell word.
const STAMP_BITS: u32 = 64 - VALUE_BITS;
const STAMP_MASK: u64 = (1 << STAMP_BITS) - 1;

/// How many rounds a push or pop may go without progress before it gives up.
///
/// The bound is on our own loop, so garbage in shared memory cannot hang a
/// caller. Under loom every round is a yield point; a few are enough there.
#[cfg(not(loom))]
const MAX_ROUNDS: u32 = 1 << 12;
#[cfg(loom)]
const MAX_ROUNDS: u32 = 2;

#[inline]
const fn word(stamp: u64, value: u32) -> u64 {
    ((stamp & STAMP_MASK) << VALUE_BITS) | (value & MAX_VALUE) as u64
}

#[inline]
const fn stamp_of(word: u64) -> u64 {
    word >> VALUE_BITS
}

#[inline]
const fn value_of(word: u64) -> u32 {
    (word as u32) & MAX_VALUE
}

/// How far `stamp` is past position `pos`, modulo the stamp's width.
#[inline]
const fn ahead(stamp: u64, pos: u64) -> u64 {
    stamp.wrapping_sub(pos) & STAMP_MASK
}

/// The ring's two indices, each on its own cache line.
#[repr(C)]
#[derive(Debug)]
pub struct RingHeader {
    /// Next position to pop (may lag the truth by one; see the module docs).
    head: CachePadded<AtomicU64>,
    /// Next position to push (may lag the truth by one).
    tail: CachePadded<AtomicU64>,
}

impl RingHeader {
    /// A header for an empty ring.
    pub fn new() -> Self {
        Self {
            head: CachePadded::new(AtomicU64::new(0)),
            tail: CachePadded::new(AtomicU64::new(0)),
        }
    }
}

impl Default for RingHeader {
    fn default() -> Self {
        Self::new()
    }
}

/// One cell: a stamp and a value in one word (see the module docs).
#[repr(C)]
#[derive(Debug)]
pub struct RingCell {
    word: AtomicU64,
}

impl RingCell {
    fn new(stamp: u64) -> Self {
        Self {
            word: AtomicU64::new(word(stamp, 0)),
        }
    }
}

/// Why a push failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// Every cell holds an unconsumed value.
    Full,
    /// No progress within the bound: cells or indices look corrupted
    /// (see [`Ring::repair`]).
    Stalled,
}

/// Why a pop returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PopError {
    /// The ring is empty.
    Empty,
    /// The cell at `pos` holds a word no push or pop could have left there
    /// (see [`Ring::repair`]).
    Corrupt {
        /// The position the consumer is stuck on.
        pos: u64,
    },
}

/// What [`Ring::repair`] restored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repairs {
    /// The indices were more than a lap apart; `tail` was set to `head`
    /// (whatever sat between them is dropped).
    pub indices: bool,
    /// Cell words that cannot be right for the current indices, reset.
    pub cells: usize,
}

/// A view of a ring whose header and cells live elsewhere (heap or region).
#[derive(Clone, Copy)]
pub struct Ring<'a> {
    header: &'a RingHeader,
    cells: &'a [RingCell],
    /// `cells.len() - 1`; the length is a power of two.
    mask: u64,
}

impl fmt::Debug for Ring<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.cells.len())
            .finish()
    }
}

impl<'a> Ring<'a> {
    /// Wraps an already initialised header and cells.
    ///
    /// # Panics
    ///
    /// If `cells.len()` is not a power of two, or is 2^44 or more.
    pub fn new(header: &'a RingHeader, cells: &'a [RingCell]) -> Self {
        assert!(
            cells.len().is_power_of_two() && (cells.len() as u64) < STAMP_MASK / 4,
            "ring capacity must be a power of two below 2^42"
        );
        Self {
            header,
            cells,
            mask: cells.len() as u64 - 1,
        }
    }

    /// Wraps a ring that lives in memory we do not own (the region).
    ///
    /// # Safety
    ///
    /// * `header` points to a `RingHeader` and `cells` to `capacity`
    ///   consecutive `RingCell`s, all properly aligned, inside a mapping that
    ///   outlives `'a`;
    /// * every byte of them is initialised (a zero-filled mapping is), and
    ///   only accessed through atomics;
    /// * `capacity` is a power of two.
    #[cfg(not(loom))]
    pub unsafe fn from_raw(
        header: *const RingHeader,
        cells: *const RingCell,
        capacity: usize,
    ) -> Self {
        debug_assert!(capacity.is_power_of_two());
        // SAFETY: the caller guarantees alignment, initialisation and lifetime;
        // all fields are atomics, so shared references permit the mutation
        // other processes perform.
        let (header, cells) = unsafe { (&*header, std::slice::from_raw_parts(cells, capacity)) };
        Self::new(header, cells)
    }

    /// Resets the ring to empty: stamps `0..cap`, head and tail 0.
    ///
    /// Only for a ring nobody else uses yet (the server initialising the
    /// region, before it publishes "ready").
    pub fn init(&self) {
        for (i, cell) in self.cells.iter().enumerate() {
            cell.word.store(word(i as u64, 0), Ordering::Relaxed);
        }
        self.header.head.store(0, Ordering::Relaxed);
        self.header.tail.store(0, Ordering::Relaxed);
        // The region's "ready" store publishes these to other processes.
    }

    /// Number of cells.
    pub fn capacity(&self) -> usize {
        self.cells.len()
    }

    fn cap(&self) -> u64 {
        self.cells.len() as u64
    }

    fn cell(&self, pos: u64) -> &RingCell {
        // Safe indexing: the mask keeps it in bounds; the check is free next
        // to the atomics that follow.
        &self.cells[(pos & self.mask) as usize]
    }

    /// Pushes `value` (at most [`MAX_VALUE`]; higher bits are dropped).
    ///
    /// # Errors
    ///
    /// [`PushError::Full`] when every cell is taken; [`PushError::Stalled`]
    /// when the ring looks corrupted.
    // With the `test-hooks` feature the empty-cell arm holds a hook call
    // before its `if`, so it cannot become a match guard.
    #[allow(clippy::collapsible_match)]
    pub fn push(&self, value: u32) -> Result<(), PushError> {
        debug_assert!(value <= MAX_VALUE);
        let cap = self.cap();
        let mut tail = self.header.tail.load(Ordering::Relaxed);
        let mut idle_rounds = 0u32;
        loop {
            let cell = self.cell(tail);
            // Acquire pairs with the consumer's CAS that freed the cell.
            let w = cell.word.load(Ordering::Acquire);
            match ahead(stamp_of(w), tail) {
                0 => {
                    #[cfg(all(feature = "test-hooks", not(loom)))]
                    test_hooks::before_publish();
                    // Empty for `tail`: publish, if it still is. See the
                    // module docs for why SeqCst.
                    if cell
                        .word
                        .compare_exchange(
                            w,
                            word(tail.wrapping_add(1), value),
                            Ordering::SeqCst,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                    {
                        self.advance(&self.header.tail, tail);
                        return Ok(());
                    }
                }
                1 => {
                    // Filled by another producer that has not moved `tail`.
                    self.advance(&self.header.tail, tail);
                }
                d if d == cap => {
                    // Filled, and consumed already, by others that left
                    // `tail` behind: help it.
                    self.advance(&self.header.tail, tail);
                }
                d if d == STAMP_MASK - cap + 2 => {
                    // Stamp `tail - cap + 1`: the previous lap's value is
                    // still here, so the ring is full (module docs).
                    return Err(PushError::Full);
                }
                _ => {}
            }
            let now = self.header.tail.load(Ordering::Relaxed);
            if now == tail {
                idle_rounds += 1;
                if idle_rounds > MAX_ROUNDS {
                    return Err(PushError::Stalled);
                }
                spin_hint();
            } else {
                tail = now;
            }
        }
    }

    /// Pops the oldest value.
    ///
    /// # Errors
    ///
    /// [`PopError::Empty`], or [`PopError::Corrupt`] when the cell at the
    /// head holds a word no push or pop could have left there.
    pub fn pop(&self) -> Result<u32, PopError> {
        let cap = self.cap();
        let mut head = self.header.head.load(Ordering::Relaxed);
        let mut idle_rounds = 0u32;
        loop {
            let cell = self.cell(head);
            // Acquire pairs with the producer's publishing CAS.
            let w = cell.word.load(Ordering::Acquire);
            match ahead(stamp_of(w), head) {
                0 => return Err(PopError::Empty),
                1 => {
                    // Published: take it and free the cell in one CAS.
                    if cell
                        .word
                        .compare_exchange(
                            w,
                            word(head.wrapping_add(cap), 0),
                            Ordering::SeqCst,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                    {
                        self.advance(&self.header.head, head);
                        return Ok(value_of(w));
                    }
                }
                d if d == cap || d == cap + 1 => {
                    // Consumed (and maybe refilled): `head` lags, help it.
                    self.advance(&self.header.head, head);
                }
                _ => {
                    let now = self.header.head.load(Ordering::Relaxed);
                    if now == head {
                        // `head` did not move: the word itself is off.
                        return Err(PopError::Corrupt { pos: head });
                    }
                    head = now;
                    continue;
                }
            }
            let now = self.header.head.load(Ordering::Relaxed);
            if now == head {
                idle_rounds += 1;
                if idle_rounds > MAX_ROUNDS {
                    return Err(PopError::Corrupt { pos: head });
                }
                spin_hint();
            } else {
                head = now;
            }
        }
    }

    /// Moves `index` from `from` to `from + 1` unless someone already did.
    fn advance(&self, index: &AtomicU64, from: u64) {
        // SeqCst like every RMW on the indices (crossbeam's choice); a
        // failure means another thread moved it on, which is fine.
        let _ = index.compare_exchange(
            from,
            from.wrapping_add(1),
            Ordering::SeqCst,
            Ordering::Relaxed,
        );
    }

    /// Whether the value at the head is published: a cheap check for a
    /// consumer deciding between spinning and sleeping (one load of `head`,
    /// one of a word).
    pub fn has_ready(&self) -> bool {
        // SeqCst: the worker's side of the Dekker pair with producers (it
        // announces that it sleeps, then checks here).
        let head = self.header.head.load(Ordering::SeqCst);
        let w = self.cell(head).word.load(Ordering::SeqCst);
        ahead(stamp_of(w), head) == 1
    }

    /// Whether anything was pushed and not yet popped.
    pub fn has_pending(&self) -> bool {
        let head = self.header.head.load(Ordering::SeqCst);
        let w = self.cell(head).word.load(Ordering::SeqCst);
        ahead(stamp_of(w), head) != 0
    }

    /// `head` and `tail` as one moment's pair: `head` read on both sides of
    /// `tail` (both only grow, so an unchanged `head` brackets the read).
    fn indices(&self) -> Option<(u64, u64)> {
        for _ in 0..16 {
            let head = self.header.head.load(Ordering::SeqCst);
            let tail = self.header.tail.load(Ordering::SeqCst);
            if self.header.head.load(Ordering::SeqCst) == head {
                return Some((head, tail));
            }
        }
        None
    }

    /// Restores what no push or pop could have produced (see the module
    /// docs): indices more than a lap apart (`tail` is set to `head`, and
    /// whatever sat between them is dropped: its clients time out), then
    /// every cell word that is not right for the current indices. Safe to
    /// call at any time, from any process.
    pub fn repair(&self) -> Repairs {
        let mut repairs = Repairs::default();
        let cap = self.cap();
        let Some((head, tail)) = self.indices() else {
            return repairs; // too busy to judge; a later call will
        };
        // Legitimately `tail - head` is in -1..=cap (each lags by one).
        let span = tail.wrapping_sub(head);
        if span > cap && span != u64::MAX {
            repairs.indices = self
                .header
                .tail
                .compare_exchange(tail, head, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok();
            return repairs; // judge the cells against the new indices next time
        }
        // Each cell holds exactly one position `p` of `head..head + cap`;
        // which words are right for it follows from where `p` is relative
        // to `head` and `tail`, each of which may lag the truth by one.
        let head_ahead = span == u64::MAX; // `tail == head - 1`
        for offset in 0..cap {
            let p = head.wrapping_add(offset);
            let cell = self.cell(p);
            let w = cell.word.load(Ordering::Acquire);
            let d = ahead(stamp_of(w), p);
            let filled_range = !head_ahead && offset < span;
            let legit = if head_ahead {
                // Nothing after `tail` can be filled before `tail` moves.
                d == 0
            } else if filled_range {
                // Filled; the one at `head` may be consumed already.
                d == 1 || (offset == 0 && d == cap)
            } else if offset == span {
                // At `tail`: empty, or filled by a producer that has not
                // moved `tail` (and consumed too, if `head` is here as well).
                d == 0 || d == 1 || (offset == 0 && d == cap)
            } else {
                d == 0
            };
            if legit {
                continue;
            }
            // Judge only against indices still current after the load: a
            // push or pop that moved on moves one of them.
            if self.indices() != Some((head, tail)) {
                break;
            }
            // A filled position whose word is garbage loses its value (its
            // client times out): mark it consumed so `head` moves past it.
            let fixed = if filled_range {
                word(p.wrapping_add(cap), 0)
            } else {
                word(p, 0)
            };
            if cell
                .word
                .compare_exchange(w, fixed, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                repairs.cells += 1;
            }
        }
        repairs
    }

    /// Values currently in the ring (a racy snapshot).
    pub fn len(&self) -> usize {
        match self.indices() {
            Some((head, tail)) => {
                let span = tail.wrapping_sub(head);
                if span > self.cap() {
                    0
                } else {
                    span as usize
                }
            }
            None => 0,
        }
    }

    /// Whether the ring looked empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the ring looked full.
    pub fn is_full(&self) -> bool {
        self.len() == self.capacity()
    }
}

/// Test-only: freeze a producer between reading an empty cell and its
/// publishing CAS, the window in which the old ring's producer could be
/// overtaken (`tests/crash.rs`).
#[cfg(all(feature = "test-hooks", not(loom)))]
pub mod test_hooks {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    /// With `KVS_TEST_STOP_BEFORE_PUBLISH=N` in the environment, the Nth
    /// push of this process stops the process (`SIGSTOP`) just before it
    /// publishes; `SIGCONT` resumes it there.
    pub const ENV: &str = "KVS_TEST_STOP_BEFORE_PUBLISH";

    pub(super) fn before_publish() {
        static NTH: OnceLock<u64> = OnceLock::new();
        static PUSHES: AtomicU64 = AtomicU64::new(0);
        let nth = *NTH.get_or_init(|| {
            std::env::var(ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        });
        if nth != 0 && PUSHES.fetch_add(1, Ordering::Relaxed) + 1 == nth {
            // SAFETY: raise() with a valid signal number.
            unsafe { libc::raise(libc::SIGSTOP) };
        }
    }
}

/// A heap-backed ring: for tests, loom models and in-process benches.
pub struct RingBuffer {
    header: RingHeader,
    cells: Box<[RingCell]>,
}

impl fmt::Debug for RingBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingBuffer")
            .field("capacity", &self.cells.len())
            .finish()
    }
}

impl RingBuffer {
    /// An empty ring of `capacity` cells.
    ///
    /// # Panics
    ///
    /// If `capacity` is not a power of two.
    pub fn new(capacity: usize) -> Self {
        assert!(
            capacity.is_power_of_two(),
            "ring capacity must be a power of two"
        );
        let cells = (0..capacity as u64).map(RingCell::new).collect();
        Self {
            header: RingHeader::new(),
            cells,
        }
    }

    /// The ring over this buffer.
    pub fn ring(&self) -> Ring<'_> {
        Ring::new(&self.header, &self.cells)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn smoke() {
        let buf = RingBuffer::new(2);
        let ring = buf.ring();
        assert_eq!(ring.pop(), Err(PopError::Empty));
        ring.push(1).unwrap();
        ring.push(2).unwrap();
        assert_eq!(ring.push(3), Err(PushError::Full));
        assert!(ring.is_full());
        assert_eq!(ring.pop(), Ok(1));
        ring.push(3).unwrap();
        assert_eq!(ring.pop(), Ok(2));
        assert_eq!(ring.pop(), Ok(3));
        assert!(ring.is_empty());
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn capacity_must_be_power_of_two() {
        let _ = RingBuffer::new(3);
    }

    #[test]
    fn len_and_capacity() {
        let buf = RingBuffer::new(8);
        let ring = buf.ring();
        assert_eq!(ring.capacity(), 8);
        for i in 0..5 {
            ring.push(i).unwrap();
        }
        assert_eq!(ring.len(), 5);
    }

    #[test]
    fn many_laps_keep_fifo_order() {
        let buf = RingBuffer::new(4);
        let ring = buf.ring();
        for i in 0..1000u32 {
            ring.push(i % (MAX_VALUE + 1)).unwrap();
            assert_eq!(ring.pop(), Ok(i));
        }
    }

    #[test]
    fn values_use_all_twenty_bits() {
        let buf = RingBuffer::new(4);
        let ring = buf.ring();
        ring.push(MAX_VALUE).unwrap();
        ring.push(0).unwrap();
        assert_eq!(ring.pop(), Ok(MAX_VALUE));
        assert_eq!(ring.pop(), Ok(0));
    }

    /// The defect the single-word cell removes: a producer that read an
    /// empty cell and then stalled while the ring lapped can never write
    /// into that cell again; its publishing CAS fails and it pushes at the
    /// current tail, and the value another producer put in the cell is
    /// untouched.
    #[test]
    fn a_stalled_producer_never_writes_into_a_reused_cell() {
        let buf = RingBuffer::new(2);
        let ring = buf.ring();
        // The stalled producer saw position 0 empty...
        let seen = buf.cells[0].word.load(Ordering::SeqCst);
        // ... while others pushed and popped a lap and more.
        for v in [10, 11, 12] {
            ring.push(v).unwrap();
            assert_eq!(ring.pop(), Ok(v));
        }
        ring.push(13).unwrap(); // position 3 (cell 1)
        ring.push(14).unwrap(); // position 4 (cell 0), reusing the cell
                                // It resumes: its CAS on the word it saw fails.
        assert!(buf.cells[0]
            .word
            .compare_exchange(seen, word(1, 99), Ordering::SeqCst, Ordering::SeqCst)
            .is_err());
        assert_eq!(ring.pop(), Ok(13));
        assert_eq!(ring.pop(), Ok(14));
        assert_eq!(ring.pop(), Err(PopError::Empty));
    }

    #[test]
    fn lagging_indices_are_helped_along() {
        let buf = RingBuffer::new(4);
        let ring = buf.ring();
        // A producer filled position 0 and stopped before moving `tail`.
        buf.cells[0].word.store(word(1, 5), Ordering::SeqCst);
        ring.push(6).unwrap(); // helps tail to 1, pushes at 1
        assert_eq!(ring.len(), 2);
        // A consumer took position 0 and stopped before moving `head`.
        buf.cells[0].word.store(word(4, 0), Ordering::SeqCst);
        assert_eq!(ring.pop(), Ok(6)); // helps head to 1
        assert_eq!(ring.pop(), Err(PopError::Empty));
        assert_eq!(ring.repair(), Repairs::default());
    }

    #[test]
    fn garbage_words_never_hang_and_are_repaired() {
        let buf = RingBuffer::new(4);
        let ring = buf.ring();
        for cell in buf.cells.iter() {
            cell.word.store(0xdead_beef_dead_beef, Ordering::SeqCst);
        }
        assert_eq!(ring.push(1), Err(PushError::Stalled));
        assert!(matches!(ring.pop(), Err(PopError::Corrupt { pos: 0 })));
        let r = ring.repair();
        assert_eq!(r.cells, 4);
        assert_eq!(ring.repair(), Repairs::default());
        for i in 0..20 {
            ring.push(i).unwrap();
            assert_eq!(ring.pop(), Ok(i));
        }
    }

    #[test]
    fn garbage_among_queued_values_drops_only_the_garbage() {
        let buf = RingBuffer::new(8);
        let ring = buf.ring();
        for i in 0..13 {
            ring.push(i).unwrap();
            assert_eq!(ring.pop(), Ok(i));
        }
        ring.push(100).unwrap(); // position 13, cell 5
        ring.push(101).unwrap(); // position 14, cell 6
        ring.push(102).unwrap(); // position 15, cell 7
        buf.cells[6].word.store(12345, Ordering::SeqCst); // scribbled
        buf.cells[2].word.store(99, Ordering::SeqCst); // a free cell, scribbled
        assert_eq!(ring.repair().cells, 2);
        assert_eq!(ring.pop(), Ok(100));
        assert_eq!(ring.pop(), Ok(102)); // 101 was lost to the scribble
        assert_eq!(ring.pop(), Err(PopError::Empty));
        for i in 0..20 {
            ring.push(i).unwrap();
            assert_eq!(ring.pop(), Ok(i));
        }
    }

    #[test]
    fn garbage_indices_are_repaired() {
        let buf = RingBuffer::new(4);
        let ring = buf.ring();
        ring.push(1).unwrap();
        assert_eq!(ring.pop(), Ok(1));
        // A forged "published" word at the empty head lets `head` pass `tail`.
        buf.cells[1].word.store(word(2, 3), Ordering::SeqCst);
        assert_eq!(ring.pop(), Ok(3));
        buf.header.tail.store(1 << 40, Ordering::SeqCst);
        assert!(ring.repair().indices);
        ring.repair();
        for i in 0..10 {
            ring.push(i).unwrap();
            assert_eq!(ring.pop(), Ok(i));
        }
        buf.header.head.store(u64::MAX / 3, Ordering::SeqCst);
        assert!(ring.repair().indices);
        ring.repair();
        ring.push(7).unwrap();
        assert_eq!(ring.pop(), Ok(7));
    }

    /// Every pushed item is popped exactly once: 4 producers x 4 consumers.
    #[test]
    fn mpmc_stress_every_item_exactly_once() {
        const PRODUCERS: usize = 4;
        const CONSUMERS: usize = 4;
        const PER_PRODUCER: usize = if cfg!(miri) { 50 } else { 50_000 };
        let buf = RingBuffer::new(64);
        let seen: Vec<AtomicUsize> = (0..PRODUCERS * PER_PRODUCER)
            .map(|_| AtomicUsize::new(0))
            .collect();
        let popped = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for p in 0..PRODUCERS {
                let ring = buf.ring();
                s.spawn(move || {
                    for i in 0..PER_PRODUCER {
                        let v = (p * PER_PRODUCER + i) as u32;
                        while ring.push(v).is_err() {
                            std::thread::yield_now();
                        }
                    }
                });
            }
            for _ in 0..CONSUMERS {
                let ring = buf.ring();
                let (seen, popped) = (&seen, &popped);
                s.spawn(move || {
                    while popped.load(Ordering::Relaxed) < PRODUCERS * PER_PRODUCER {
                        match ring.pop() {
                            Ok(v) => {
                                seen[v as usize].fetch_add(1, Ordering::Relaxed);
                                popped.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(PopError::Empty) => std::thread::yield_now(),
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                });
            }
        });
        assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        assert_eq!(buf.ring().repair(), Repairs::default());
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    fn push_until_ok(ring: Ring<'_>, v: u32) {
        while ring.push(v).is_err() {
            thread::yield_now();
        }
    }

    /// Two producers and two consumers on a 2-cell ring: every value is
    /// popped exactly once.
    #[test]
    fn two_producers_two_consumers() {
        loom::model(|| {
            let buf = Arc::new(RingBuffer::new(2));
            let mut handles = Vec::new();
            for p in 0..2u32 {
                let buf = Arc::clone(&buf);
                handles.push(thread::spawn(move || push_until_ok(buf.ring(), p + 1)));
            }
            let mut consumers = Vec::new();
            for _ in 0..2 {
                let buf = Arc::clone(&buf);
                consumers.push(thread::spawn(move || {
                    let mut got = Vec::new();
                    for _ in 0..2 {
                        if let Ok(v) = buf.ring().pop() {
                            got.push(v);
                        }
                    }
                    got
                }));
            }
            for h in handles {
                h.join().unwrap();
            }
            let mut all: Vec<u32> = consumers
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect();
            while let Ok(v) = buf.ring().pop() {
                all.push(v);
            }
            all.sort_unstable();
            assert_eq!(all, vec![1, 2]);
        });
    }

    /// A producer preempted anywhere in its push while the 2-cell ring goes
    /// around under it (another producer fills both cells, a consumer frees
    /// the first, so the stalled producer's cell is reused): every value
    /// arrives exactly once and none is ever clobbered (the old ring let
    /// the stalled producer write into a cell it no longer owned).
    #[test]
    fn a_preempted_producer_never_clobbers_a_lapped_cell() {
        loom::model(|| {
            let buf = Arc::new(RingBuffer::new(2));
            let slow = {
                let buf = Arc::clone(&buf);
                thread::spawn(move || buf.ring().push(9).is_ok())
            };
            let fast = {
                let buf = Arc::clone(&buf);
                thread::spawn(move || {
                    let r = buf.ring();
                    let a = r.push(1).is_ok();
                    let b = r.push(2).is_ok();
                    (a, b)
                })
            };
            let first = buf.ring().pop();
            let s = slow.join().unwrap();
            let (a, b) = fast.join().unwrap();
            let mut got: Vec<u32> = first.into_iter().collect();
            while let Ok(v) = buf.ring().pop() {
                got.push(v);
            }
            let mut want = Vec::new();
            if s {
                want.push(9);
            }
            if a {
                want.push(1);
            }
            if b {
                want.push(2);
            }
            // The fast producer's values arrive in its order.
            let fast_order: Vec<u32> = got.iter().copied().filter(|v| *v != 9).collect();
            let mut sorted_fast = fast_order.clone();
            sorted_fast.sort_unstable();
            assert_eq!(fast_order, sorted_fast);
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want);
        });
    }
}
