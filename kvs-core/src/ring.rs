//! The request ring: a bounded MPMC queue with a sequence stamp per cell.
//!
//! This is Dmitry Vyukov's bounded queue, the algorithm behind crossbeam's
//! `ArrayQueue`, written against a header reference plus a slice of cells so
//! that the same code runs on a heap buffer (unit tests, loom, benches) and on
//! the shared region ([`Ring::from_raw`]).
//!
//! # The stamp life cycle
//!
//! Positions are 64-bit counters that never wrap in practice; a position `p`
//! lives in cell `p & mask`. Each cell carries a stamp:
//!
//! | stamp      | meaning                                                    |
//! |------------|------------------------------------------------------------|
//! | `p`        | empty, ready for the producer of position `p`              |
//! | `p + 1`    | holds the value pushed at position `p`                     |
//! | `p + cap`  | consumed, ready for the producer of the next lap           |
//!
//! A producer reads `tail`, and if the cell's stamp equals it, claims the
//! position with a CAS on `tail`, writes the value and publishes it by moving
//! the stamp to `tail + 1` with `Release`. A consumer reads `head`, and if the
//! stamp equals `head + 1`, claims it with a CAS on `head`, reads the value
//! (its `Acquire` load of the stamp pairs with the producer's `Release`) and
//! frees the cell for the next lap by storing `head + cap` with `Release`,
//! which pairs with the next producer's `Acquire` load of the stamp.
//!
//! The CASes on `head` and `tail` and the fences before a full/empty decision
//! are `SeqCst`, exactly as in crossbeam: the full check reads `head` after a
//! stamp says "maybe full", and the empty check reads `tail` after a stamp says
//! "maybe empty"; the `SeqCst` fence orders that read after the stamp load so a
//! stale index cannot report full or empty for a queue that is neither.
//!
//! # Differences from crossbeam, for processes that die
//!
//! A producer that dies between claiming a position and publishing it would
//! block every consumer forever. Two changes make that recoverable:
//!
//! * a producer publishes with a CAS `p -> p + 1` instead of a store;
//! * [`Ring::pop`] never waits for a producer: it reports [`PopError::Busy`],
//!   and the consumer may later call [`Ring::skip_stalled`], which claims the
//!   position and moves the stamp straight to `p + cap`. If the producer was
//!   only slow, its publishing CAS then fails and it pushes again, so the
//!   value is delivered late rather than lost; if the producer published in
//!   the meantime, `skip_stalled` returns the value.
//!
//! Stamps read from shared memory may be garbage written by a hostile process;
//! every loop is bounded ([`PushError::Stalled`], [`PopError::Busy`]) and
//! indices are always derived from our own mask, never from memory.
//!
//! # Example
//!
//! ```
//! use kvs_core::ring::RingBuffer;
//!
//! let buffer = RingBuffer::<u64>::new(4);
//! let ring = buffer.ring();
//! ring.push(7).unwrap();
//! assert_eq!(ring.pop(), Ok(7));
//! assert!(ring.pop().is_err());
//! ```

use crate::sync::{fence, spin_hint, AtomicU64, Ordering, UnsafeCell};
use crossbeam_utils::CachePadded;
use std::fmt;

/// How many rounds a push or pop may go without progress before it gives up.
///
/// Progress by other threads resets nothing: the bound is on our own loop, so
/// garbage in shared memory cannot hang a caller.
const MAX_ROUNDS: u32 = 1 << 14;

/// The ring's two indices, each on its own cache line.
#[repr(C)]
#[derive(Debug)]
pub struct RingHeader {
    /// Next position to pop.
    head: CachePadded<AtomicU64>,
    /// Next position to push.
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

/// One cell of the ring: the stamp (see the module docs) and the value.
#[repr(C)]
#[derive(Debug)]
pub struct RingCell<T> {
    stamp: AtomicU64,
    value: UnsafeCell<T>,
}

impl<T: bytemuck::Zeroable> RingCell<T> {
    fn new(stamp: u64) -> Self {
        Self {
            stamp: AtomicU64::new(stamp),
            value: UnsafeCell::new(T::zeroed()),
        }
    }
}

/// Why a push failed; the value is handed back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PushError<T> {
    /// Every cell holds an unconsumed value.
    Full(T),
    /// No progress within the bound: cells or indices look corrupted.
    Stalled(T),
}

impl<T> PushError<T> {
    /// The value that was not pushed.
    pub fn into_inner(self) -> T {
        match self {
            PushError::Full(v) | PushError::Stalled(v) => v,
        }
    }
}

impl<T> fmt::Debug for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Full(_) => f.write_str("Full(..)"),
            PushError::Stalled(_) => f.write_str("Stalled(..)"),
        }
    }
}

/// Why a pop returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PopError {
    /// The ring is empty.
    Empty,
    /// The cell at `pos` is claimed but not published (a producer is writing
    /// it, or died while writing it), or its stamp is garbage.
    Busy {
        /// The position the consumer is stuck on.
        pos: u64,
    },
}

/// What [`Ring::skip_stalled`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip<T> {
    /// `head` had moved on: another consumer took the position.
    Moved,
    /// The producer published just in time: here is its value.
    Delivered(T),
    /// The position was skipped; its producer, if alive, will push again.
    Skipped,
}

/// A view of a ring whose header and cells live elsewhere (heap or region).
pub struct Ring<'a, T> {
    header: &'a RingHeader,
    cells: &'a [RingCell<T>],
    /// `cells.len() - 1`; the length is a power of two.
    mask: u64,
}

impl<T> Clone for Ring<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Ring<'_, T> {}

impl<T> fmt::Debug for Ring<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.cells.len())
            .finish()
    }
}

impl<'a, T: Copy> Ring<'a, T> {
    /// Wraps an already initialised header and cells.
    ///
    /// # Panics
    ///
    /// If `cells.len()` is not a power of two.
    pub fn new(header: &'a RingHeader, cells: &'a [RingCell<T>]) -> Self {
        assert!(
            cells.len().is_power_of_two(),
            "ring capacity must be a power of two"
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
    ///   consecutive `RingCell<T>`, all properly aligned, inside a mapping that
    ///   outlives `'a`;
    /// * every byte of them is initialised (a zero-filled mapping is), and
    ///   only accessed through atomics or this ring's protocol;
    /// * `capacity` is a power of two.
    #[cfg(not(loom))]
    pub unsafe fn from_raw(
        header: *const RingHeader,
        cells: *const RingCell<T>,
        capacity: usize,
    ) -> Self {
        debug_assert!(capacity.is_power_of_two());
        // SAFETY: the caller guarantees alignment, initialisation and lifetime;
        // all fields are atomics or `UnsafeCell`, so shared references permit
        // the mutation other processes perform.
        let (header, cells) = unsafe { (&*header, std::slice::from_raw_parts(cells, capacity)) };
        Self::new(header, cells)
    }

    /// Resets the ring to empty: stamps `0..cap`, head and tail 0.
    ///
    /// Only for a ring nobody else uses yet (the server initialising the
    /// region, before it publishes "ready").
    pub fn init(&self) {
        for (i, cell) in self.cells.iter().enumerate() {
            cell.stamp.store(i as u64, Ordering::Relaxed);
        }
        self.header.head.store(0, Ordering::Relaxed);
        self.header.tail.store(0, Ordering::Relaxed);
        // The region's "ready" store publishes these to other processes.
    }

    /// Number of cells.
    pub fn capacity(&self) -> usize {
        self.cells.len()
    }

    fn cell(&self, pos: u64) -> &RingCell<T> {
        let index = (pos & self.mask) as usize;
        debug_assert!(index < self.cells.len());
        // Safe indexing: the mask keeps it in bounds; the check is free next
        // to the atomics that follow.
        &self.cells[index]
    }

    /// Pushes `value`, or hands it back when the ring is full or stalled.
    pub fn push(&self, value: T) -> Result<(), PushError<T>> {
        // SAFETY: `p` is the exclusively owned cell `push_with` hands us.
        self.push_with(|p| unsafe { p.write(value) })
            .map_err(|e| match e {
                PushError::Full(()) => PushError::Full(value),
                PushError::Stalled(()) => PushError::Stalled(value),
            })
    }

    /// Pushes a value written in place by `write`, which gets the claimed
    /// cell's value pointer and may be called more than once (again after a
    /// skip). `write` may leave parts of the cell as they were, when the
    /// consumer does not read them: fewer cache lines travel.
    ///
    /// `write` must only write through the pointer (it is valid and
    /// exclusively ours for the duration of the call).
    pub fn push_with(&self, write: impl Fn(*mut T)) -> Result<(), PushError<()>> {
        let cap = self.cells.len() as u64;
        let mut tail = self.header.tail.load(Ordering::Relaxed);
        let mut rounds = 0u32;
        loop {
            rounds += 1;
            if rounds > MAX_ROUNDS {
                return Err(PushError::Stalled(()));
            }
            let cell = self.cell(tail);
            // Acquire pairs with the consumer's Release store of `tail`
            // (= previous position + cap) in `pop`/`skip_stalled`: the old
            // value has been read before we overwrite it.
            let stamp = cell.stamp.load(Ordering::Acquire);
            if stamp == tail {
                // SeqCst: see the module docs (full/empty decisions).
                match self.header.tail.compare_exchange_weak(
                    tail,
                    tail.wrapping_add(1),
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // Winning the CAS on `tail` while the stamp said
                        // "empty for position `tail`" makes us the only
                        // writer of this cell until we publish.
                        cell.value.with_mut(&write);
                        // Release publishes the value; pairs with the Acquire
                        // stamp load in `pop`. A CAS, not a store, because
                        // `skip_stalled` may have given up on us. SeqCst
                        // (free on x86, where every locked RMW is a full
                        // barrier) so the producer's later SeqCst load of the
                        // sleeping-worker count cannot be ordered before it:
                        // the Dekker pair with `Region::worker_sleep`.
                        match cell.stamp.compare_exchange(
                            tail,
                            tail.wrapping_add(1),
                            Ordering::SeqCst,
                            Ordering::Relaxed,
                        ) {
                            Ok(_) => return Ok(()),
                            Err(_) => {
                                // Skipped as stalled: not delivered, go again.
                                tail = self.header.tail.load(Ordering::Relaxed);
                                continue;
                            }
                        }
                    }
                    Err(current) => {
                        tail = current;
                        spin_hint();
                    }
                }
            } else if stamp.wrapping_add(cap) == tail.wrapping_add(1) {
                // The cell still holds the previous lap's value: maybe full.
                // SeqCst fence: read `head` after the stamp (module docs).
                fence(Ordering::SeqCst);
                let head = self.header.head.load(Ordering::Relaxed);
                if head.wrapping_add(cap) == tail {
                    return Err(PushError::Full(()));
                }
                spin_hint();
                tail = self.header.tail.load(Ordering::Relaxed);
            } else {
                // Another producer moved on, or the stamp is garbage.
                yield_now();
                tail = self.header.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Pops the oldest value.
    ///
    /// Never waits for a producer: a claimed but unpublished cell at the head
    /// is reported as [`PopError::Busy`].
    pub fn pop(&self) -> Result<T, PopError> {
        // SAFETY: `p` is the published cell `pop_with` owns for us.
        self.pop_with(|p| unsafe { p.read() })
    }

    /// Pops the oldest value, handing `read` the cell's value pointer while
    /// this consumer owns it: `read` copies out what it needs (and only
    /// that), the cell is released when it returns.
    ///
    /// `read` must only read through the pointer and must not keep it.
    pub fn pop_with<R>(&self, read: impl FnOnce(*const T) -> R) -> Result<R, PopError> {
        let cap = self.cells.len() as u64;
        let mut head = self.header.head.load(Ordering::Relaxed);
        let mut rounds = 0u32;
        loop {
            rounds += 1;
            let cell = self.cell(head);
            // Acquire pairs with the producer's Release CAS of the stamp.
            let stamp = cell.stamp.load(Ordering::Acquire);
            if stamp == head.wrapping_add(1) {
                match self.header.head.compare_exchange_weak(
                    head,
                    head.wrapping_add(1),
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // Winning the CAS on `head` while the stamp said
                        // "published at `head`" makes us the only reader,
                        // and no producer writes until we move the stamp on.
                        let value = cell.value.with(read);
                        // Release: our read happens before the next lap's
                        // producer writes (its Acquire load of the stamp).
                        cell.stamp.store(head.wrapping_add(cap), Ordering::Release);
                        return Ok(value);
                    }
                    Err(current) => {
                        head = current;
                        spin_hint();
                    }
                }
            } else if stamp == head {
                // SeqCst fence: read `tail` after the stamp (module docs).
                fence(Ordering::SeqCst);
                let tail = self.header.tail.load(Ordering::Relaxed);
                if tail == head {
                    return Err(PopError::Empty);
                }
                // Claimed, not yet published.
                return Err(PopError::Busy { pos: head });
            } else {
                // Another consumer moved on, or the stamp is garbage.
                fence(Ordering::SeqCst);
                if self.header.tail.load(Ordering::Relaxed) == head {
                    return Err(PopError::Empty);
                }
                if rounds > MAX_ROUNDS {
                    return Err(PopError::Busy { pos: head });
                }
                yield_now();
                let current = self.header.head.load(Ordering::Relaxed);
                if current == head {
                    // `head` did not move: the stamp itself is off.
                    return Err(PopError::Busy { pos: head });
                }
                head = current;
            }
        }
    }

    /// Whether the value at the head is published: a cheap check for a
    /// consumer deciding between spinning and sleeping (one load of `head`,
    /// one of a stamp).
    pub fn has_ready(&self) -> bool {
        // SeqCst: the worker's side of the Dekker pair with producers (it
        // announces that it sleeps, then checks here).
        let head = self.header.head.load(Ordering::SeqCst);
        self.cell(head).stamp.load(Ordering::SeqCst) == head.wrapping_add(1)
    }

    /// Whether anything was pushed and not yet popped (published or not).
    pub fn has_pending(&self) -> bool {
        let head = self.header.head.load(Ordering::SeqCst);
        self.header.tail.load(Ordering::SeqCst) != head
    }

    /// Gives up on the producer of position `pos` (see the module docs).
    ///
    /// Call only after `pos` has been reported [`PopError::Busy`] for longer
    /// than any live producer could take to publish.
    pub fn skip_stalled(&self, pos: u64) -> Skip<T> {
        let cap = self.cells.len() as u64;
        // SeqCst like every other CAS on `head`.
        if self
            .header
            .head
            .compare_exchange(
                pos,
                pos.wrapping_add(1),
                Ordering::SeqCst,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return Skip::Moved;
        }
        // We own position `pos` as its consumer. Race the producer's
        // publishing CAS for the stamp.
        let cell = self.cell(pos);
        let mut stamp = cell.stamp.load(Ordering::Acquire);
        loop {
            if stamp == pos.wrapping_add(1) {
                // SAFETY: published (Acquire above pairs with the producer's
                // Release CAS) and we own the position, as in `pop`.
                let value = cell.value.with(|p| unsafe { p.read() });
                cell.stamp.store(pos.wrapping_add(cap), Ordering::Release);
                return Skip::Delivered(value);
            }
            // AcqRel: Acquire in case the producer published in between,
            // Release so the next lap's producer sees the cell as free.
            match cell.stamp.compare_exchange(
                stamp,
                pos.wrapping_add(cap),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Skip::Skipped,
                Err(current) => stamp = current,
            }
        }
    }

    /// Repairs a garbage stamp at the tail of an empty ring.
    ///
    /// A producer can only claim a cell whose stamp equals `tail`, so a
    /// garbage stamp there would block every producer. When the ring is
    /// empty nobody else owns that cell, and resetting it is safe. Returns
    /// whether anything was repaired.
    pub fn repair_tail(&self) -> bool {
        let head = self.header.head.load(Ordering::SeqCst);
        let tail = self.header.tail.load(Ordering::SeqCst);
        if head != tail {
            return false;
        }
        let cell = self.cell(tail);
        let stamp = cell.stamp.load(Ordering::Acquire);
        if stamp == tail || stamp == tail.wrapping_add(1) {
            return false;
        }
        // Release: like the consumer freeing the cell for this lap.
        cell.stamp
            .compare_exchange(stamp, tail, Ordering::Release, Ordering::Relaxed)
            .is_ok()
    }

    /// Repairs indices that no push or pop could have produced: `tail` more
    /// than a lap ahead of `head`, or behind it (a forged "published" stamp
    /// at the head of an empty ring lets `head` pass `tail`). Sets `tail` to
    /// `head`, so the ring is empty again; whatever sat between them is
    /// dropped (its clients time out). Returns whether it repaired.
    ///
    /// `head` is read twice around `tail`, so the pair is one moment's
    /// (positions only grow): a consistent ring never has `tail - head`
    /// outside `0..=cap` at any moment. No producer can legitimately claim
    /// at such a `tail` unless a scribbled stamp happens to match it, and
    /// the CAS fails if one did.
    pub fn repair_indices(&self) -> bool {
        let cap = self.cells.len() as u64;
        let head = self.header.head.load(Ordering::SeqCst);
        let tail = self.header.tail.load(Ordering::SeqCst);
        if self.header.head.load(Ordering::SeqCst) != head || tail.wrapping_sub(head) <= cap {
            return false;
        }
        self.header
            .tail
            .compare_exchange(tail, head, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    }

    /// Repairs garbage stamps in every cell that no producer can claim yet
    /// (positions `tail..head + cap`), not only at the tail; returns how
    /// many were repaired.
    ///
    /// A cell at such a position `p` holds `p` (free for its producer), or,
    /// transiently, `p - cap` or `p - cap + 1` (its previous lap being
    /// skipped or consumed); anything else is garbage. A garbage stamp cannot
    /// change under us except by another scribble: no producer can claim
    /// `p` while its stamp is not `p`, and no consumer reaches `p` before a
    /// producer did. The stamp is judged against a `head`/`tail` pair that
    /// was still current after the stamp was read, so a cell that a producer
    /// claimed meanwhile is never mistaken for garbage. Returns 0 when the
    /// indices themselves are garbage (`tail - head > cap`).
    pub fn repair_free_cells(&self) -> usize {
        let cap = self.cells.len() as u64;
        let head = self.header.head.load(Ordering::SeqCst);
        let tail = self.header.tail.load(Ordering::SeqCst);
        if tail.wrapping_sub(head) > cap {
            return 0;
        }
        let mut repaired = 0;
        let mut p = tail;
        while p != head.wrapping_add(cap) {
            let cell = self.cell(p);
            let stamp = cell.stamp.load(Ordering::Acquire);
            let prev = p.wrapping_sub(cap);
            if stamp != p && stamp != prev && stamp != prev.wrapping_add(1) {
                // SeqCst re-reads, ordered after the stamp load: if `tail`
                // moved, a producer may own this cell now; stop.
                if self.header.tail.load(Ordering::SeqCst) != tail {
                    break;
                }
                // Release: like the consumer freeing the cell for this lap.
                if cell
                    .stamp
                    .compare_exchange(stamp, p, Ordering::Release, Ordering::Relaxed)
                    .is_ok()
                {
                    repaired += 1;
                }
            }
            p = p.wrapping_add(1);
        }
        repaired
    }

    /// Free cells whose stamp says "a consumer is releasing the previous
    /// lap" (`p - cap + 1`) or "a consumer is skipping it" (`p - cap`): both
    /// legal for the few instructions a consumer takes, forged if they last.
    ///
    /// Returns `(position, stamp)` pairs; see [`Ring::repair_cell`]. Only the
    /// consumers' owner can tell the two apart (it knows whether a consumer
    /// has passed a quiescent point since), so this only reports.
    pub fn suspect_cells(&self) -> Vec<(u64, u64)> {
        let cap = self.cells.len() as u64;
        let head = self.header.head.load(Ordering::SeqCst);
        let tail = self.header.tail.load(Ordering::SeqCst);
        if tail.wrapping_sub(head) > cap {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut p = tail;
        while p != head.wrapping_add(cap) {
            let prev = p.wrapping_sub(cap);
            let stamp = self.cell(p).stamp.load(Ordering::Acquire);
            if stamp == prev || stamp == prev.wrapping_add(1) {
                out.push((p, stamp));
            }
            p = p.wrapping_add(1);
        }
        out
    }

    /// Frees the cell of position `pos` for its producer if its stamp is
    /// still `stamp`. Call only when no consumer can be inside `pop` or
    /// `skip_stalled` for the previous lap of that cell (its owner checked
    /// that every consumer passed a quiescent point since the stamp was seen).
    pub fn repair_cell(&self, pos: u64, stamp: u64) -> bool {
        // Release: like the consumer freeing the cell for this lap.
        self.cell(pos)
            .stamp
            .compare_exchange(stamp, pos, Ordering::Release, Ordering::Relaxed)
            .is_ok()
    }

    /// Values currently in the ring (a racy snapshot).
    pub fn len(&self) -> usize {
        let cap = self.cells.len() as u64;
        loop {
            let tail = self.header.tail.load(Ordering::SeqCst);
            let head = self.header.head.load(Ordering::SeqCst);
            // Re-read tail so head and tail come from one moment.
            if self.header.tail.load(Ordering::SeqCst) == tail {
                return tail.wrapping_sub(head).min(cap) as usize;
            }
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

#[inline]
fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

/// A heap-backed ring: for tests, loom models and in-process benches.
pub struct RingBuffer<T> {
    header: RingHeader,
    cells: Box<[RingCell<T>]>,
}

impl<T> fmt::Debug for RingBuffer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingBuffer")
            .field("capacity", &self.cells.len())
            .finish()
    }
}

impl<T: Copy + bytemuck::Zeroable> RingBuffer<T> {
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
    pub fn ring(&self) -> Ring<'_, T> {
        Ring::new(&self.header, &self.cells)
    }
}

// SAFETY: the cells are only accessed through the ring protocol, which hands
// each value from exactly one producer to exactly one consumer; `T: Send` is
// all that crossing threads requires (as for crossbeam's `ArrayQueue`).
unsafe impl<T: Send> Sync for RingBuffer<T> {}
// SAFETY: as above; the protocol is the synchronisation.
unsafe impl<T: Send> Send for Ring<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Ring<'_, T> {}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn smoke() {
        let buf = RingBuffer::<u64>::new(2);
        let ring = buf.ring();
        assert_eq!(ring.pop(), Err(PopError::Empty));
        ring.push(1).unwrap();
        ring.push(2).unwrap();
        assert_eq!(ring.push(3), Err(PushError::Full(3)));
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
        let _ = RingBuffer::<u64>::new(3);
    }

    #[test]
    fn len_and_capacity() {
        let buf = RingBuffer::<u32>::new(8);
        let ring = buf.ring();
        assert_eq!(ring.capacity(), 8);
        for i in 0..5 {
            ring.push(i).unwrap();
        }
        assert_eq!(ring.len(), 5);
    }

    #[test]
    fn many_laps_keep_fifo_order() {
        let buf = RingBuffer::<u64>::new(4);
        let ring = buf.ring();
        for i in 0..1000u64 {
            ring.push(i).unwrap();
            assert_eq!(ring.pop(), Ok(i));
        }
    }

    #[test]
    fn busy_cell_is_reported_and_can_be_skipped() {
        let buf = RingBuffer::<u64>::new(4);
        let ring = buf.ring();
        // Simulate a producer that claimed position 0 and died.
        buf.header.tail.store(1, Ordering::SeqCst);
        assert_eq!(ring.pop(), Err(PopError::Busy { pos: 0 }));
        assert_eq!(ring.skip_stalled(0), Skip::Skipped);
        assert_eq!(ring.skip_stalled(0), Skip::Moved);
        assert_eq!(ring.pop(), Err(PopError::Empty));
        // The ring keeps working across the skipped cell.
        for i in 0..10 {
            ring.push(i).unwrap();
            assert_eq!(ring.pop(), Ok(i));
        }
    }

    #[test]
    fn skip_returns_a_value_published_in_time() {
        let buf = RingBuffer::<u64>::new(4);
        let ring = buf.ring();
        ring.push(42).unwrap();
        assert_eq!(ring.skip_stalled(0), Skip::Delivered(42));
    }

    #[test]
    fn slow_producer_pushes_again_after_skip() {
        let buf = RingBuffer::<u64>::new(4);
        let ring = buf.ring();
        // A producer claims position 0 ...
        buf.header.tail.store(1, Ordering::SeqCst);
        // ... the consumer gives up on it ...
        assert_eq!(ring.skip_stalled(0), Skip::Skipped);
        // ... and its publishing CAS fails, so a real push goes elsewhere.
        let cell = ring.cell(0);
        assert!(cell
            .stamp
            .compare_exchange(0, 1, Ordering::Release, Ordering::Relaxed)
            .is_err());
        ring.push(5).unwrap();
        assert_eq!(ring.pop(), Ok(5));
    }

    #[test]
    fn garbage_stamps_never_hang() {
        let buf = RingBuffer::<u64>::new(4);
        let ring = buf.ring();
        for cell in buf.cells.iter() {
            cell.stamp.store(0xdead_beef_dead_beef, Ordering::SeqCst);
        }
        assert!(matches!(ring.push(1), Err(PushError::Stalled(1))));
        assert_eq!(ring.pop(), Err(PopError::Empty));
        assert!(ring.repair_tail());
        ring.push(1).unwrap();
        assert_eq!(ring.pop(), Ok(1));
    }

    #[test]
    fn garbage_stamps_in_free_cells_are_all_repaired() {
        let buf = RingBuffer::<u64>::new(8);
        let ring = buf.ring();
        // Some laps in, two values queued.
        for i in 0..13 {
            ring.push(i).unwrap();
            assert_eq!(ring.pop(), Ok(i));
        }
        ring.push(100).unwrap();
        ring.push(101).unwrap();
        for (i, cell) in buf.cells.iter().enumerate() {
            // Scribble every cell except the two queued values (13 & 7, 14 & 7).
            if i != 5 && i != 6 {
                cell.stamp.store(0xdead_0000 + i as u64, Ordering::SeqCst);
            }
        }
        assert_eq!(ring.repair_free_cells(), 6);
        assert_eq!(ring.repair_free_cells(), 0);
        assert_eq!(ring.pop(), Ok(100));
        assert_eq!(ring.pop(), Ok(101));
        for i in 0..20 {
            ring.push(i).unwrap();
            assert_eq!(ring.pop(), Ok(i));
        }
        // Garbage indices: nothing is touched.
        buf.header.tail.store(u64::MAX / 2, Ordering::SeqCst);
        assert_eq!(ring.repair_free_cells(), 0);
    }

    #[test]
    fn forged_publish_at_an_empty_head_is_repaired() {
        let buf = RingBuffer::<u64>::new(4);
        let ring = buf.ring();
        ring.push(1).unwrap();
        assert_eq!(ring.pop(), Ok(1));
        assert!(!ring.repair_indices());
        // A hostile process marks the empty head cell "published".
        buf.cells[1].stamp.store(2, Ordering::SeqCst);
        assert!(ring.pop().is_ok()); // head passes tail
        assert!(matches!(ring.push(9), Err(PushError::Stalled(9))));
        assert!(ring.repair_indices());
        ring.repair_free_cells();
        for i in 0..10 {
            ring.push(i).unwrap();
            assert_eq!(ring.pop(), Ok(i));
        }
        // A garbage tail far ahead.
        buf.header.tail.store(1 << 40, Ordering::SeqCst);
        assert!(ring.repair_indices());
        ring.repair_free_cells();
        ring.push(3).unwrap();
        assert_eq!(ring.pop(), Ok(3));
    }

    #[test]
    fn forged_release_stamp_is_reported_and_repaired() {
        let buf = RingBuffer::<u64>::new(4);
        let ring = buf.ring();
        ring.push(1).unwrap();
        assert_eq!(ring.pop(), Ok(1));
        // Position 1's cell, stamped as if the consumer of position -3 were
        // still releasing it: producers cannot claim it.
        let forged = 1u64.wrapping_sub(4).wrapping_add(1);
        buf.cells[1].stamp.store(forged, Ordering::SeqCst);
        assert!(matches!(ring.push(2), Err(PushError::Stalled(2))));
        assert_eq!(ring.suspect_cells(), vec![(1, forged)]);
        assert!(ring.repair_cell(1, forged));
        assert!(ring.suspect_cells().is_empty());
        ring.push(2).unwrap();
        assert_eq!(ring.pop(), Ok(2));
    }

    #[test]
    fn garbage_stamp_at_head_reports_busy() {
        let buf = RingBuffer::<u64>::new(4);
        let ring = buf.ring();
        ring.push(1).unwrap();
        buf.cells[0].stamp.store(77, Ordering::SeqCst);
        assert_eq!(ring.pop(), Err(PopError::Busy { pos: 0 }));
        assert_eq!(ring.skip_stalled(0), Skip::Skipped);
        ring.push(2).unwrap();
        assert_eq!(ring.pop(), Ok(2));
    }

    /// Every pushed item is popped exactly once: 4 producers x 4 consumers.
    #[test]
    fn mpmc_stress_every_item_exactly_once() {
        const PRODUCERS: usize = 4;
        const CONSUMERS: usize = 4;
        const PER_PRODUCER: usize = if cfg!(miri) { 50 } else { 50_000 };
        let buf = RingBuffer::<u64>::new(64);
        let seen: Vec<AtomicUsize> = (0..PRODUCERS * PER_PRODUCER)
            .map(|_| AtomicUsize::new(0))
            .collect();
        let popped = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for p in 0..PRODUCERS {
                let ring = buf.ring();
                s.spawn(move || {
                    for i in 0..PER_PRODUCER {
                        let mut v = (p * PER_PRODUCER + i) as u64;
                        loop {
                            match ring.push(v) {
                                Ok(()) => break,
                                Err(e) => {
                                    v = e.into_inner();
                                    std::thread::yield_now();
                                }
                            }
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
                            Err(_) => std::thread::yield_now(),
                        }
                    }
                });
            }
        });
        assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    fn push_until_ok(ring: Ring<'_, u32>, mut v: u32) {
        loop {
            match ring.push(v) {
                Ok(()) => return,
                Err(e) => {
                    v = e.into_inner();
                    thread::yield_now();
                }
            }
        }
    }

    /// Two producers and two consumers on a 2-cell ring: every value is
    /// popped exactly once.
    #[test]
    fn two_producers_two_consumers() {
        loom::model(|| {
            let buf = Arc::new(RingBuffer::<u32>::new(2));
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

    /// A consumer skipping a slow producer races its publish: the value is
    /// either delivered by the skip, or pushed again; never lost or doubled.
    #[test]
    fn skip_races_publish() {
        loom::model(|| {
            let buf = Arc::new(RingBuffer::<u32>::new(2));
            let b2 = Arc::clone(&buf);
            let producer = thread::spawn(move || push_until_ok(b2.ring(), 9));
            let ring = buf.ring();
            let mut got = Vec::new();
            match ring.pop() {
                Ok(v) => got.push(v),
                Err(PopError::Busy { pos }) => {
                    if let Skip::Delivered(v) = ring.skip_stalled(pos) {
                        got.push(v)
                    }
                }
                Err(PopError::Empty) => {}
            }
            producer.join().unwrap();
            while let Ok(v) = ring.pop() {
                got.push(v);
            }
            assert_eq!(got, vec![9]);
        });
    }
}
