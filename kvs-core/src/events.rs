//! Change events with byte keys and values: per-subscriber queues in the
//! region.
//!
//! A subscriber claims one of a few subscription entries, writes the hashes
//! of the keys it wants (or none: every key) and marks it active. When a
//! worker changes a key it checks the active entries (one load when there
//! are none) and pushes a change event, key and value bytes included, into
//! the matching subscribers' queues. The push happens while the worker still
//! holds the key's stripe lock, so the events of one key reach every queue
//! in version order.
//!
//! # The queue
//!
//! Each entry's queue has many producers (the workers, all in the server)
//! and one consumer (the subscriber, another process). Nobody ever waits for
//! anybody:
//!
//! * **push** (worker): read the consumer's `head` and the producers'
//!   `tail`; if `tail - head` is the capacity (or is garbage), the queue is
//!   full: mark the entry overflowed and push nothing more until the
//!   subscriber has seen it. Otherwise reserve position `tail` with a CAS
//!   (a few tries at most, against the other workers), write the event into
//!   its cell word by word, and publish it by storing the cell's sequence
//!   `tail + 1` (Release). A worker never spins under its stripe lock: a
//!   lost race past the bound counts as an overflow.
//! * **poll** (subscriber): read `head`; if the cell's sequence is
//!   `head + 1` (Acquire, pairs with the push), copy the event out and store
//!   `head + 1` (Release, pairs with the producers' load of `head`: the
//!   cell is free only after it was copied). Anything else means "nothing
//!   yet": poll returns at once, it never spins. A position reserved by a
//!   worker that is still writing shows up on a later poll.
//! * A subscriber killed between copying and moving `head` leaves a queue
//!   that is merely not drained; the next subscriber of the entry starts at
//!   the current `tail` and drops any event tagged with an older generation.
//!
//! No producer writes a cell between its publication and the consumer's
//! `head` moving past it: a producer reuses the cell of position `p` only
//! for position `p + capacity`, which it reserves only once it has seen
//! (Acquire) a `head` beyond `p`. So the consumer copies a cell nobody
//! writes, and every cell is published exactly once per position.
//!
//! # Losses
//!
//! The subscriber sees every event up to a loss, in order, then the loss
//! ([`Notice::Missed`]: "events were lost, resync"), then events again. A
//! loss is a push that found the queue full or contended, or an event that
//! did not fit a cell (below); it sets the entry's `overflow` flag with a
//! `SeqCst` read-modify-write, and while the flag is set workers push
//! nothing (they check it with a `SeqCst` load). The subscriber reports the
//! flag only when its queue is empty: it swaps the flag to 0 (`SeqCst`),
//! then loads `tail` again (`SeqCst`); if `tail` is still its `head` it
//! returns `Missed`, otherwise it puts the flag back and delivers the queued
//! events first.
//!
//! Why that second look is needed, and why it suffices. Let `L` be a lost
//! event and `E` an event whose reservation (a `SeqCst` CAS on `tail`)
//! happened before `L`'s flag access `A` (the same key: an earlier version,
//! pushed under the same stripe lock). Every swap `X` that takes the flag
//! after `A` (the 1 `A` wrote or read, or a later one) follows `A` in the
//! single total order `S` of `SeqCst` operations, `E`'s CAS precedes `A`
//! in `S` (it happens before it), and the subscriber's second load of
//! `tail` follows `X`. So that load sees `E`'s reservation: either `E` was
//! already copied out, or `tail` is past `head` and the loss waits behind
//! `E`. Without it, a subscriber preempted between finding the queue
//! empty and swapping the flag would report the loss first and deliver `E`
//! after it, and a subscriber that resynchronised on `Missed` would then
//! apply `E`, older than what it read. Events pushed while the flag was
//! briefly 0 are newer than the loss; they may come before or after
//! `Missed`.
//!
//! # Cells of bytes
//!
//! A cell holds a fixed number of data bytes, `cell_data_bytes`, chosen by
//! the region (the largest key plus a few hundred bytes, say). The key goes
//! first, zero-padded to 8 bytes, then the value, zero-padded to 8:
//!
//! * key and value fit: the event carries both ([`Event::value`] is
//!   `Some`, an empty value included);
//! * only the key fits: the value is left out and the cell's flags say
//!   `VALUE_OMITTED`: the subscriber gets [`Event::value_omitted`] and
//!   reads the current value from the store itself (which is at least as
//!   new as the event);
//! * the key does not fit (cannot happen when the region sizes cells from
//!   its largest key): nothing is pushed, the entry is marked overflowed,
//!   and the subscriber is told [`Notice::Missed`].
//!
//! Deletes carry no value. A change published without a value is delivered
//! as omitted.
//!
//! Every word of a cell, the payload included, is an `AtomicU64` accessed
//! on its own (`Relaxed`, ordered by `seq`), and bytes are moved with
//! [`Words`], so no process ever forms a reference to bytes another one
//! may be storing.
//!
//! # Filters by hash
//!
//! A subscription names up to [`MAX_SUB_KEYS`] keys by their 64-bit hash
//! ([`crate::store::KeyHash`] with the store's seed, computed by the
//! subscriber), stored in the entry header. A worker compares the hash of
//! the key it changed with the filter; an empty filter takes every key.
//! The subscriber re-checks the key bytes of what it receives, so a hash
//! collision only costs it an event it skips.
//!
//! # Entries, generations, dead owners
//!
//! Entries use the packed `generation | owner | state` word of
//! [`crate::word`]; every event carries its entry's generation, so an event
//! pushed for a previous subscriber of the entry is dropped by the next
//! one. The housekeeper frees the entries of dead owners
//! ([`SubTable::reclaim`]) and repairs indices that no push or poll could
//! have left ([`SubTable::repair`]).
//!
//! One case is not covered: a worker preempted between reserving a
//! position and publishing it while its subscriber leaves, a new subscriber
//! takes the entry and a whole lap of events is pushed for it. The stale
//! worker then writes a cell that was reused, and its late `seq` store
//! (a lap behind) hides the newer event: the new subscriber waits at that
//! position, seeing nothing more, until it resubscribes.
//!
//! # Waking
//!
//! Waking uses the entry's [`EventCount`]: the subscriber announces
//! itself, re-checks its next cell and the loss flag, and sleeps; a
//! publisher makes the cell (or the flag) visible with a `SeqCst` store or
//! read-modify-write, then notifies, which makes a syscall only when the
//! subscriber waits.
//!
//! # Garbage
//!
//! Everything here is read from memory other processes write: positions are
//! reduced by the mask, the filter length clamped, kinds decoded with a
//! checked conversion, and lengths checked against the data area before any
//! copy (a cell whose lengths or kind make no sense is consumed and
//! reported as [`Notice::Missed`]). So a scribbled queue yields wrong
//! events or losses, never a hang, a panic, an out-of-bounds read or
//! undefined behaviour.
//!
//! # Layout
//!
//! Entries are `stride` bytes apart (a multiple of 128); each is a header,
//! then `capacity` cells of `cell_bytes` (`40 + cell_data_bytes` rounded up
//! to 64). [`SubTable::bytes_for`] gives the total. Offsets in bytes;
//! every field is a native-endian atomic.
//!
//! ```text
//! entry header (512 bytes)
//!  offset size field       written by
//!       0    8 word        generation (32) | owner (24) | state (8)
//!       8    4 filter_len  subscriber: hashes in the filter, 0 = every key
//!      12    4 overflow    workers set (a loss), subscriber clears
//!      16    8 ec          EventCount: epoch (4), waiters (4)
//!      24   40 reserved
//!      64    8 head        subscriber: next position to poll
//!      72   56 reserved
//!     128    8 tail        workers: next position to reserve
//!     136   56 reserved
//!     192  256 filter      32 key hashes (u64)
//!     448   64 reserved
//!     512      cells
//!
//! cell (cell_bytes = 40 + D rounded up to 64; D = cell_data_bytes)
//!  offset size field
//!       0    8 seq         p + 1 once the event of position p is written
//!       8    8 meta        generation (32) | flags (16) | kind (16)
//!      16    8 version
//!      24    8 modified_ns unix ns (deletes: 0)
//!      32    8 lens        value_len (32) | key_len (32)
//!      40    D data        key, zero-padded to 8, then value, zero-padded to 8
//!    40+D      padding to cell_bytes
//!
//! flags: 1 = HAS_VALUE (the value follows the key), 2 = VALUE_OMITTED
//! kind:  1 = changed, 2 = deleted, anything else: not an event (a loss)
//! ```

use crate::store::words::Words;
use crate::store::write::BlockValue;
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use crate::wait::{EventCount, Parker};
use crate::word::{pack, try_claim, unpack};
use std::fmt;
use std::mem::{offset_of, size_of};
use std::time::Duration;

/// Most keys one subscription may name (more: subscribe to all keys).
pub const MAX_SUB_KEYS: usize = 32;

/// Tries a worker makes to reserve a queue position against other workers
/// before it counts the event as lost.
const RESERVE_TRIES: u32 = 64;

/// Bytes of an entry header (the cells follow).
const HEADER_BYTES: usize = 512;
/// Bytes of a cell before its data.
const CELL_HEADER_BYTES: usize = 40;
/// Cells are a multiple of this, so two cells share no cache line.
const CELL_ALIGN: usize = 64;
/// Entries are a multiple of this.
const ENTRY_ALIGN: usize = 128;

/// Word indices in a cell.
const SEQ: usize = 0;
const META: usize = 1;
const VERSION: usize = 2;
const MODIFIED: usize = 3;
const LENS: usize = 4;
const DATA: usize = 5;

/// Cell flag: the value follows the key.
const HAS_VALUE: u16 = 1;
/// Cell flag: the value did not fit; the subscriber reads it from the store.
const VALUE_OMITTED: u16 = 2;
/// Cell kind of a position whose event could not be written: read as a loss.
const KIND_LOST: u16 = 0;

/// The state of a subscription entry, as stored in its word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum EntryState {
    /// Not in use.
    Free = 0,
    /// A subscriber is setting it up.
    Claimed = 1,
    /// Receiving events.
    Active = 2,
}

impl TryFrom<u32> for EntryState {
    type Error = u32;

    fn try_from(v: u32) -> Result<Self, u32> {
        match v {
            0 => Ok(EntryState::Free),
            1 => Ok(EntryState::Claimed),
            2 => Ok(EntryState::Active),
            other => Err(other),
        }
    }
}

/// What a change event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum EventKind {
    /// A key was set or inserted.
    Changed = 1,
    /// A key was deleted.
    Deleted = 2,
    /// A key's deadline passed and the server removed it.
    Expired = 3,
    /// The server removed a key to make room (an eviction policy).
    Evicted = 4,
}

impl TryFrom<u16> for EventKind {
    type Error = u16;

    fn try_from(v: u16) -> Result<Self, u16> {
        match v {
            1 => Ok(EventKind::Changed),
            2 => Ok(EventKind::Deleted),
            3 => Ok(EventKind::Expired),
            4 => Ok(EventKind::Evicted),
            other => Err(other),
        }
    }
}

/// One change event, as a subscriber receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The key's bytes (re-check them: the filter compares hashes).
    pub key: Vec<u8>,
    /// The new value, when it fit the cell (changes only).
    pub value: Option<Vec<u8>>,
    /// A change whose value was left out (too large for a cell): read the
    /// current value from the store.
    pub value_omitted: bool,
    /// The version of the change.
    pub version: u64,
    /// When the change was made, unix nanoseconds (deletes: 0).
    pub modified_ns: u64,
}

/// What a subscriber's poll found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A change, in order.
    Event(Event),
    /// Events were lost (the queue overflowed, or one did not fit): resync.
    Missed,
}

/// A claimed subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubClaim {
    /// Entry index.
    pub index: u32,
    /// Generation of this subscription.
    pub generation: u32,
    /// The subscriber's registration index.
    pub owner: u32,
}

/// The fixed part of a subscription entry (see the module docs' table).
/// Atomics only, and no implicit padding: every byte is some atomic's.
#[repr(C)]
struct EntryHeader {
    word: AtomicU64,
    /// Hashes in `filter`; 0: every key.
    filter_len: AtomicU32,
    /// Non-zero once an event was lost; cleared by the subscriber when it
    /// reports the loss.
    overflow: AtomicU32,
    /// The subscriber waits on it; publishers notify it after a push.
    ec: EventCount,
    _reserved0: [AtomicU64; 5],
    /// Next position to poll (written by the subscriber).
    head: AtomicU64,
    _reserved1: [AtomicU64; 7],
    /// Next position to reserve (written by the workers).
    tail: AtomicU64,
    _reserved2: [AtomicU64; 7],
    filter: [AtomicU64; MAX_SUB_KEYS],
    _reserved3: [AtomicU64; 8],
}

const _: () = {
    assert!(size_of::<EntryHeader>() == HEADER_BYTES);
    assert!(offset_of!(EntryHeader, filter_len) == 8);
    assert!(offset_of!(EntryHeader, overflow) == 12);
    assert!(offset_of!(EntryHeader, ec) == 16);
    assert!(size_of::<EventCount>() == 8);
    assert!(offset_of!(EntryHeader, head) == 64);
    assert!(offset_of!(EntryHeader, tail) == 128);
    assert!(offset_of!(EntryHeader, filter) == 192);
    assert!(CELL_HEADER_BYTES == DATA * 8);
};

/// `generation | flags | kind`, a cell's meta word.
const fn pack_meta(generation: u32, flags: u16, kind: u16) -> u64 {
    ((generation as u64) << 32) | ((flags as u64) << 16) | kind as u64
}

/// Splits a meta word into `(generation, flags, kind)`.
const fn unpack_meta(meta: u64) -> (u32, u16, u16) {
    ((meta >> 32) as u32, (meta >> 16) as u16, meta as u16)
}

/// `value_len | key_len`, a cell's lengths word.
const fn pack_lens(key_len: u32, value_len: u32) -> u64 {
    ((value_len as u64) << 32) | key_len as u64
}

/// Sizes of one layout.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Bytes of one cell.
    cell_bytes: usize,
    /// Bytes of one entry.
    stride: usize,
    /// Bytes of every entry.
    total: usize,
}

impl Layout {
    /// `None` when a size overflows `usize`.
    fn of(count: usize, capacity: usize, cell_data_bytes: usize) -> Option<Self> {
        let cell_bytes = CELL_HEADER_BYTES
            .checked_add(cell_data_bytes)?
            .checked_next_multiple_of(CELL_ALIGN)?;
        let stride = capacity
            .checked_mul(cell_bytes)?
            .checked_add(HEADER_BYTES)?
            .checked_next_multiple_of(ENTRY_ALIGN)?;
        let total = count.checked_mul(stride)?;
        Some(Self {
            cell_bytes,
            stride,
            total,
        })
    }
}

/// One entry's header and cells.
#[derive(Clone, Copy)]
struct Entry<'t> {
    h: &'t EntryHeader,
    /// `capacity * cell_words` words.
    cells: &'t [AtomicU64],
    mask: usize,
    cell_words: usize,
    data_words: usize,
}

impl<'t> Entry<'t> {
    /// The cell of position `pos`.
    fn cell(&self, pos: u64) -> Cell<'t> {
        // Masked: any position, however scribbled, names one of the cells
        // (`cells` holds `(mask + 1) * cell_words` words, see `entry`).
        let start = ((pos as usize) & self.mask) * self.cell_words;
        Cell {
            w: &self.cells[start..start + self.cell_words],
            data_words: self.data_words,
        }
    }

    /// Whether the filter takes the key of hash `key_hash`.
    fn wants(&self, key_hash: u64) -> bool {
        // Relaxed: ordered by the word's Acquire load in `publish` (pairs
        // with `subscribe`'s Release store); clamped, it may be garbage.
        let n = (self.h.filter_len.load(Ordering::Relaxed) as usize).min(MAX_SUB_KEYS);
        // Relaxed: as above.
        n == 0
            || self.h.filter[..n]
                .iter()
                .any(|k| k.load(Ordering::Relaxed) == key_hash)
    }
}

/// One cell: `cell_words` words, the data `data_words` of them from `DATA`.
#[derive(Clone, Copy)]
struct Cell<'t> {
    w: &'t [AtomicU64],
    data_words: usize,
}

impl<'t> Cell<'t> {
    fn seq(&self) -> &'t AtomicU64 {
        &self.w[SEQ]
    }

    fn word(&self, i: usize) -> &'t AtomicU64 {
        &self.w[i]
    }

    fn data(&self) -> Words<'t> {
        Words::new(&self.w[DATA..DATA + self.data_words])
    }
}

/// What the consumer found in a published cell.
enum Read {
    /// An event for another generation of the entry.
    Skip,
    /// Not an event: a loss, or a scribbled cell.
    Lost,
    /// An event of ours.
    Event(Event),
}

/// An event as a worker is about to write it.
struct Payload<'k, 'v> {
    kind: EventKind,
    key: &'k [u8],
    /// `key.len()` rounded up to 8: where the value starts.
    key_pad: u64,
    value: Option<BlockValue<'v>>,
    flags: u16,
}

/// A view of the subscription entries in a region (see the module docs).
pub struct SubTable<'a> {
    base: *const u8,
    count: usize,
    capacity: usize,
    cell_data_bytes: usize,
    cell_words: usize,
    stride: usize,
    active: &'a AtomicU32,
}

impl fmt::Debug for SubTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubTable")
            .field("count", &self.count)
            .field("capacity", &self.capacity)
            .field("cell_data_bytes", &self.cell_data_bytes)
            .finish()
    }
}

impl<'a> SubTable<'a> {
    /// Bytes of `count` entries with queues of `capacity` cells of
    /// `cell_data_bytes` data bytes each (parameters [`SubTable::new`]
    /// accepts); `usize::MAX`, which no region can hold, when the size
    /// overflows `usize`.
    pub fn bytes_for(count: usize, capacity: usize, cell_data_bytes: usize) -> usize {
        Layout::of(count, capacity, cell_data_bytes).map_or(usize::MAX, |l| l.total)
    }

    /// Wraps `count` entries with queues of `capacity` cells holding
    /// `cell_data_bytes` bytes of key and value, in the `len` bytes at
    /// `base`; `active` counts active subscriptions (a word in the region
    /// header).
    ///
    /// Returns `None`, before touching the memory, unless `capacity` is a
    /// power of two, `cell_data_bytes` a multiple of 8 that fits a `u32`,
    /// `count` fits a `u32`, `base` is 8-aligned (128 is better: entries
    /// are laid out for it) and `len` is at least
    /// [`SubTable::bytes_for`]`(count, capacity, cell_data_bytes)`.
    ///
    /// Any contents are safe to read (garbage gives wrong events, see the
    /// module docs); call [`SubTable::init`] once before use. Every process
    /// must use the same parameters.
    ///
    /// # Safety
    ///
    /// `base` is valid for reads and writes of `len` bytes for `'a` (a
    /// shared mapping or an allocation that outlives the view), and for as
    /// long as the view exists those bytes are accessed only through
    /// atomics, as this module lays them out (by this and other processes),
    /// never by plain reads or writes.
    pub unsafe fn new(
        base: *const u8,
        len: usize,
        count: usize,
        capacity: usize,
        cell_data_bytes: usize,
        active: &'a AtomicU32,
    ) -> Option<Self> {
        if !capacity.is_power_of_two()
            || cell_data_bytes % 8 != 0
            || u32::try_from(cell_data_bytes).is_err()
            || u32::try_from(count).is_err()
            || base.is_null()
            || !base.cast::<AtomicU64>().is_aligned()
        {
            return None;
        }
        let layout = Layout::of(count, capacity, cell_data_bytes)?;
        if layout.total > len {
            return None;
        }
        Some(Self {
            base,
            count,
            capacity,
            cell_data_bytes,
            cell_words: layout.cell_bytes / 8,
            stride: layout.stride,
            active,
        })
    }

    /// Number of entries.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Cells per queue.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of key and value a cell holds.
    pub fn cell_data_bytes(&self) -> usize {
        self.cell_data_bytes
    }

    fn entry(&self, index: u32) -> Option<Entry<'a>> {
        let i = index as usize;
        if i >= self.count {
            return None;
        }
        // SAFETY: `i < count` and `new` checked `count * stride <= len`, so
        // the entry's `stride` bytes at `base + i * stride` are inside the
        // memory `new`'s caller vouched for (valid for `'a`). That start is
        // 8-aligned (`base` is, `stride` is a multiple of 128). The header
        // (512 bytes, alignment 8) comes first; the cells follow at +512,
        // `capacity * cell_words` words, which is `capacity * cell_bytes <=
        // stride - 512` bytes. Both are made only of atomics (`AtomicU64`,
        // the `AtomicU32`s of `EventCount` and the header): interior
        // mutability, so shared references to memory other processes write
        // are sound as long as every access is atomic (`new`'s contract), and
        // every bit pattern is a valid value.
        let (h, cells) = unsafe {
            let at = self.base.add(i * self.stride);
            (
                &*at.cast::<EntryHeader>(),
                std::slice::from_raw_parts(
                    at.add(HEADER_BYTES).cast::<AtomicU64>(),
                    self.capacity * self.cell_words,
                ),
            )
        };
        Some(Entry {
            h,
            cells,
            mask: self.capacity - 1,
            cell_words: self.cell_words,
            data_words: self.cell_data_bytes / 8,
        })
    }

    fn entries(&self) -> impl Iterator<Item = (u32, Entry<'a>)> + '_ {
        (0..self.count as u32).filter_map(|i| self.entry(i).map(|e| (i, e)))
    }

    /// Initialises every entry (the server, before "ready").
    ///
    /// The cells are left as they are: over memory that reads as zeros (a
    /// new memfd) a cell's sequence 0 already means "never published", and
    /// writing them would commit the whole section, which is sparse: a
    /// queue takes memory only as far as events have filled it.
    pub fn init(&self) {
        // Relaxed throughout: nobody else uses the table yet; the region's
        // "ready" publication orders these stores for every other process.
        for (_, e) in self.entries() {
            e.h.word.store(0, Ordering::Relaxed);
            e.h.filter_len.store(0, Ordering::Relaxed);
            e.h.overflow.store(0, Ordering::Relaxed);
            e.h.ec.reset();
            e.h.head.store(0, Ordering::Relaxed);
            e.h.tail.store(0, Ordering::Relaxed);
        }
        self.active.store(0, Ordering::Relaxed);
    }

    /// Subscribes `owner` to the keys whose hashes are `key_hashes` (every
    /// key when empty). The hashes are [`crate::store::KeyHash`]`::of(key,
    /// seed).0` with the store's seed; a hash collision delivers events of
    /// another key too, so re-check [`Event::key`].
    ///
    /// Returns `None` when every entry is taken or there are more than
    /// [`MAX_SUB_KEYS`] hashes.
    pub fn subscribe(&self, owner: u32, key_hashes: &[u64]) -> Option<SubClaim> {
        if key_hashes.len() > MAX_SUB_KEYS {
            return None;
        }
        for (index, e) in self.entries() {
            let h = e.h;
            let Some(generation) = try_claim(
                &h.word,
                EntryState::Free as u32,
                owner,
                EntryState::Claimed as u32,
            ) else {
                continue;
            };
            // Start at the producers' position: whatever a previous
            // subscriber left (even mid-poll when it died) is behind us, and
            // a late event for it carries its generation. Relaxed load: an
            // older `tail` only leaves a few more of those events to skip.
            // Release store: pairs with the producers' Acquire load of
            // `head`, as every move of `head` (we read nothing before it).
            h.head
                .store(h.tail.load(Ordering::Relaxed), Ordering::Release);
            // Relaxed: the filter and the flag are published by the
            // word's Release store below.
            for (slot, hash) in h
                .filter
                .iter()
                .zip(key_hashes.iter().copied().chain(std::iter::repeat(0)))
            {
                slot.store(hash, Ordering::Relaxed);
            }
            h.filter_len
                .store(key_hashes.len() as u32, Ordering::Relaxed);
            h.overflow.store(0, Ordering::Relaxed);
            // A subscriber that died waiting left its announcement behind.
            h.ec.reset();
            // Release: pairs with `publish`'s Acquire load of the word: a
            // worker that sees Active sees the filter.
            h.word.store(
                pack(generation, owner, EntryState::Active as u32),
                Ordering::Release,
            );
            // Relaxed: a count, no data rides on it (see `publish`).
            self.active.fetch_add(1, Ordering::Relaxed);
            return Some(SubClaim {
                index,
                generation,
                owner,
            });
        }
        None
    }

    /// Ends a subscription.
    pub fn unsubscribe(&self, claim: &SubClaim) {
        if let Some(e) = self.entry(claim.index) {
            // Release: pairs with the next claimer's Acquire in `try_claim`
            // (our last moves of `head` are behind it). Relaxed on failure:
            // not ours any more, nothing read.
            if e.h
                .word
                .compare_exchange(
                    pack(claim.generation, claim.owner, EntryState::Active as u32),
                    pack(claim.generation, claim.owner, EntryState::Free as u32),
                    Ordering::Release,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                // Relaxed: a count (see `publish`).
                self.active.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Subscriber side: the next notice, if any. Never waits.
    pub fn poll(&self, claim: &SubClaim) -> Option<Notice> {
        let e = self.entry(claim.index)?;
        let h = e.h;
        // A bounded pass over events left for a previous subscriber.
        for _ in 0..=self.capacity {
            // Relaxed: only the subscriber moves `head` (this poll, or the
            // `subscribe` before it in this process).
            let head = h.head.load(Ordering::Relaxed);
            let cell = e.cell(head);
            // Acquire pairs with the producer's SeqCst (so Release) store of
            // `seq`: the cell's words are visible.
            if cell.seq().load(Ordering::Acquire) == head.wrapping_add(1) {
                let read = self.read_cell(cell, claim.generation);
                // Release: pairs with the producers' Acquire load of `head`:
                // our copy happens before a producer reuses the cell.
                h.head.store(head.wrapping_add(1), Ordering::Release);
                match read {
                    Read::Skip => continue, // meant for a previous subscriber
                    Read::Lost => return Some(Notice::Missed),
                    Read::Event(ev) => return Some(Notice::Event(ev)),
                }
            }
            // Nothing published at `head`. Relaxed: a hint; a position
            // reserved but not yet written shows up on a later poll, and a
            // loss is only reported after the SeqCst load below.
            if h.tail.load(Ordering::Relaxed) != head {
                return None;
            }
            #[cfg(test)]
            tests::found_empty(self);
            // Relaxed: a hint that saves a read-modify-write per empty poll;
            // a flag not seen yet is seen by a later poll (and `sleep` reads
            // it SeqCst, so it does not sleep on it).
            if h.overflow.load(Ordering::Relaxed) == 0 {
                return None;
            }
            // SeqCst: in the total order with the producers' flag accesses
            // and reservations (module docs, "Losses").
            if h.overflow.swap(0, Ordering::SeqCst) == 0 {
                return None;
            }
            // SeqCst: follows the swap in that order, so it sees every
            // reservation made before the loss we just took.
            if h.tail.load(Ordering::SeqCst) == head {
                return Some(Notice::Missed);
            }
            // Events from before the loss are still queued: put the flag
            // back (SeqCst, as every flag write) and deliver them first.
            h.overflow.fetch_or(1, Ordering::SeqCst);
        }
        None
    }

    /// Copies a published cell out and validates it.
    fn read_cell(&self, cell: Cell<'_>, generation: u32) -> Read {
        // Relaxed loads: ordered after the producer's stores by the caller's
        // Acquire load of `seq`, and nobody writes the cell until `head`
        // moves past it (module docs).
        let (cell_generation, flags, kind) = unpack_meta(cell.word(META).load(Ordering::Relaxed));
        if cell_generation != generation {
            return Read::Skip;
        }
        let Ok(kind) = EventKind::try_from(kind) else {
            return Read::Lost; // KIND_LOST, or scribbled
        };
        let version = cell.word(VERSION).load(Ordering::Relaxed);
        let modified_ns = cell.word(MODIFIED).load(Ordering::Relaxed);
        let lens = cell.word(LENS).load(Ordering::Relaxed);
        let (key_len, value_len) = (lens & u64::from(u32::MAX), lens >> 32);
        let room = self.cell_data_bytes as u64;
        // At most 2^32 + 7: no overflow.
        let key_pad = key_len.next_multiple_of(8);
        let has_value = kind == EventKind::Changed && flags & HAS_VALUE != 0;
        if key_pad > room || (has_value && value_len > room - key_pad) {
            return Read::Lost; // scribbled lengths
        }
        let data = cell.data();
        let mut key = Vec::new();
        if data.read_into(0, key_len, &mut key).is_err() {
            return Read::Lost; // cannot happen: checked above
        }
        let value = if has_value {
            let mut value = Vec::new();
            if data.read_into(key_pad, value_len, &mut value).is_err() {
                return Read::Lost; // cannot happen: checked above
            }
            Some(value)
        } else {
            None
        };
        Read::Event(Event {
            kind,
            key,
            value,
            // A change without its value, whatever the flags say: the
            // subscriber always has a way to the value.
            value_omitted: kind == EventKind::Changed && !has_value,
            version,
            modified_ns,
        })
    }

    /// Subscriber side: sleeps until a push (or a loss) may have happened,
    /// or `timeout`.
    pub fn sleep<P: Parker>(&self, claim: &SubClaim, timeout: Duration, parker: &P) {
        let Some(e) = self.entry(claim.index) else {
            return;
        };
        let h = e.h;
        let key = h.ec.prepare();
        // Relaxed: our own index.
        let head = h.head.load(Ordering::Relaxed);
        // SeqCst loads: the waiter's check of the event count's Dekker pair,
        // against the publishers' SeqCst store of `seq` and RMW of the flag.
        let published = e.cell(head).seq().load(Ordering::SeqCst) == head.wrapping_add(1);
        // A loss is news only once the queue is empty; behind a position
        // still being written, the `seq` store of that position wakes us.
        let lost = h.overflow.load(Ordering::SeqCst) != 0 && h.tail.load(Ordering::SeqCst) == head;
        if published || lost {
            h.ec.cancel();
        } else {
            h.ec.wait(key, Some(timeout), parker);
        }
    }

    /// Whether the subscription is still ours and active.
    pub fn is_active(&self, claim: &SubClaim) -> bool {
        // Relaxed: a status check; nothing is read on the strength of it.
        self.entry(claim.index).is_some_and(|e| {
            e.h.word.load(Ordering::Relaxed)
                == pack(claim.generation, claim.owner, EntryState::Active as u32)
        })
    }

    /// Housekeeper: frees the entries of dead owners (and garbage states).
    pub fn reclaim(&self, owner_dead: impl Fn(u32) -> bool) -> usize {
        crate::word::reclaim_words(
            (0..self.count as u32).filter_map(|i| self.entry(i).map(|e| &e.h.word)),
            EntryState::Free as u32,
            // An owned entry of a dead owner, or a garbage state.
            |_, owner, state| EntryState::try_from(state).is_err() || owner_dead(owner),
            |old_state| {
                if old_state == EntryState::Active as u32 {
                    // Relaxed: a count (see `publish`).
                    self.active.fetch_sub(1, Ordering::Relaxed);
                }
            },
        )
    }

    /// Housekeeper: restores queues whose indices no push or poll could
    /// have left (`tail` behind `head`, or more than a lap ahead of it):
    /// `tail` is set back to `head` and the entry marked overflowed, so the
    /// subscriber is told to resync and events flow again. Returns how many
    /// queues were repaired. (It wakes nobody: a sleeping subscriber sees
    /// the loss after its timeout.)
    pub fn repair(&self) -> usize {
        let cap = self.capacity as u64;
        let mut repaired = 0;
        for (_, e) in self.entries() {
            let h = e.h;
            // Relaxed loads: the repair publishes no data, it only moves an
            // index, with a CAS against the value read; the cells a worker
            // then reuses are ordered by its own Acquire load of `head`.
            if unpack(h.word.load(Ordering::Relaxed)).2 != EntryState::Active as u32 {
                continue;
            }
            let head = h.head.load(Ordering::Relaxed);
            let tail = h.tail.load(Ordering::Relaxed);
            if tail.wrapping_sub(head) <= cap {
                continue;
            }
            // Workers CAS `tail` forward from values they read; whoever
            // wins, the indices are sane again. Relaxed: as above.
            if h.tail
                .compare_exchange(tail, head, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                // SeqCst: as every write of the flag ("Losses").
                h.overflow.fetch_or(1, Ordering::SeqCst);
                repaired += 1;
            }
        }
        repaired
    }

    /// Active subscriptions (diagnostics).
    pub fn active_count(&self) -> usize {
        // Relaxed: a snapshot for diagnostics.
        self.entries()
            .filter(|(_, e)| {
                unpack(e.h.word.load(Ordering::Relaxed)).2 == EntryState::Active as u32
            })
            .count()
    }

    /// Server side: pushes a change of `key` (whose hash with the store's
    /// seed is `key_hash`) to every matching subscriber. `value` is the new
    /// value (`None` for deletes, which carry none); a value that does not
    /// fit a cell is left out and the event says so (module docs). Never
    /// blocks or spins: a full or contended queue is marked overflowed. A
    /// waiting subscriber is woken through `parker`.
    #[allow(clippy::too_many_arguments)]
    pub fn publish<P: Parker>(
        &self,
        kind: EventKind,
        key: &[u8],
        key_hash: u64,
        value: Option<BlockValue<'_>>,
        version: u64,
        modified_ns: u64,
        parker: &P,
    ) {
        // Relaxed: a count that only saves the scan when nobody listens. A
        // subscriber that must see this change (it asked for the change
        // after `subscribe` returned) is ordered before us by the request's
        // own path, which coherence carries to this load; one subscribing
        // concurrently starts at a racy point of the stream either way.
        if self.active.load(Ordering::Relaxed) == 0 {
            return;
        }
        let payload = self.payload(kind, key, value);
        for (_, e) in self.entries() {
            let h = e.h;
            // Acquire: pairs with `subscribe`'s Release store: the filter is
            // visible.
            let (generation, _, state) = unpack(h.word.load(Ordering::Acquire));
            // SeqCst: a worker that finds the flag set pushes nothing, and
            // the loss is ordered after its earlier reservations ("Losses").
            if state != EntryState::Active as u32 || h.overflow.load(Ordering::SeqCst) != 0 {
                continue;
            }
            if !e.wants(key_hash) {
                continue;
            }
            let pushed = payload
                .as_ref()
                .is_some_and(|p| self.push(&e, generation, p, version, modified_ns));
            if !pushed {
                // SeqCst read-modify-write: in the total order of "Losses",
                // and the condition write of the event count's pair.
                h.overflow.fetch_or(1, Ordering::SeqCst);
            }
            // The push (or the flag) was a SeqCst write: the notifier's
            // half of the event count's pair.
            h.ec.notify(1, parker);
        }
    }

    /// What goes into a cell: `None` when the key does not fit (a loss).
    fn payload<'k, 'v>(
        &self,
        kind: EventKind,
        key: &'k [u8],
        value: Option<BlockValue<'v>>,
    ) -> Option<Payload<'k, 'v>> {
        let room = self.cell_data_bytes as u64;
        let key_pad = u64::try_from(key.len()).ok()?.checked_next_multiple_of(8)?;
        if key_pad > room {
            return None;
        }
        let (value, flags) = match (kind, value) {
            (EventKind::Deleted | EventKind::Expired | EventKind::Evicted, _) => (None, 0),
            // Fits: its padded length is at most the room left (which is a
            // multiple of 8, and at most `u32::MAX`, so is the length).
            (EventKind::Changed, Some(v)) if v.len().div_ceil(8) <= (room - key_pad) / 8 => {
                (Some(v), HAS_VALUE)
            }
            (EventKind::Changed, _) => (None, VALUE_OMITTED),
        };
        Some(Payload {
            kind,
            key,
            key_pad,
            value,
            flags,
        })
    }

    /// One push (see the module docs); false when the queue is full, its
    /// indices are garbage, or other workers won every try.
    fn push(
        &self,
        e: &Entry<'_>,
        generation: u32,
        p: &Payload<'_, '_>,
        version: u64,
        modified_ns: u64,
    ) -> bool {
        let cap = self.capacity as u64;
        for _ in 0..RESERVE_TRIES {
            // Relaxed: the CAS below checks it.
            let tail = e.h.tail.load(Ordering::Relaxed);
            // Acquire: pairs with the subscriber's Release stores of `head`:
            // the cells before it were copied out before we reuse one.
            let head = e.h.head.load(Ordering::Acquire);
            if tail.wrapping_sub(head) >= cap {
                return false; // full, or a scribbled `head`
            }
            // SeqCst on success: the reservation enters the total order of
            // "Losses" (the cell itself is published by `seq`). Relaxed on
            // failure: nothing is read from a lost race.
            if e.h
                .tail
                .compare_exchange_weak(
                    tail,
                    tail.wrapping_add(1),
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                continue;
            }
            let cell = e.cell(tail);
            Self::write_cell(cell, generation, p, version, modified_ns);
            // Release: the cell's words happen before the subscriber's
            // Acquire load of `seq`; SeqCst: also the condition write of the
            // event count's pair (the subscriber checks it after announcing
            // that it waits).
            cell.seq().store(tail.wrapping_add(1), Ordering::SeqCst);
            return true;
        }
        false
    }

    /// Writes an event into a reserved cell. Every position reserved is
    /// published, so a copy that fails (it cannot: the sizes were checked)
    /// still leaves a cell, one the subscriber reads as a loss.
    fn write_cell(
        cell: Cell<'_>,
        generation: u32,
        p: &Payload<'_, '_>,
        version: u64,
        modified_ns: u64,
    ) {
        let data = cell.data();
        let mut kind = p.kind as u16;
        let mut flags = p.flags;
        let mut value_len = 0u32;
        // `payload` checked that the key fits the room (at most `u32::MAX`).
        let key_len = match u32::try_from(p.key.len()) {
            Ok(len) if data.write_bytes(0, p.key, |_| {}).is_ok() => len,
            _ => {
                kind = KIND_LOST;
                0
            }
        };
        if let Some(v) = p.value {
            match (u32::try_from(v.len()), v.copy_to(&data, p.key_pad)) {
                (Ok(len), Ok(())) => value_len = len,
                _ => flags = VALUE_OMITTED,
            }
        }
        // Relaxed: published by the caller's store of `seq` (Release).
        cell.word(META)
            .store(pack_meta(generation, flags, kind), Ordering::Relaxed);
        cell.word(VERSION).store(version, Ordering::Relaxed);
        cell.word(MODIFIED).store(modified_ns, Ordering::Relaxed);
        cell.word(LENS)
            .store(pack_lens(key_len, value_len), Ordering::Relaxed);
    }
}

// SAFETY: a view of shared memory that is accessed only through atomics
// (see `new`); the raw pointer is a base address, read-only, and the data it
// reaches is plain integers, valid in any thread.
unsafe impl Send for SubTable<'_> {}
// SAFETY: as above: every access through `&SubTable` is atomic.
unsafe impl Sync for SubTable<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::words::WordBuf;
    use crate::store::KeyHash;
    use crate::wait::{FutexParker, SpinParker};
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    const SEED: u64 = 0x5eed;

    thread_local! {
        /// Runs once in `poll` right after it found the queue empty, before
        /// it looks at the loss flag: a test plays publishers there.
        static FOUND_EMPTY: std::cell::Cell<Option<fn(&SubTable<'_>)>> =
            const { std::cell::Cell::new(None) };
    }

    pub(super) fn found_empty(t: &SubTable<'_>) {
        if let Some(f) = FOUND_EMPTY.with(|hook| hook.take()) {
            f(t);
        }
    }

    /// Heap memory for a table: atomics only, as `new` requires.
    struct Area {
        buf: Vec<AtomicU64>,
        active: AtomicU32,
    }

    fn area(count: usize, cap: usize, data: usize) -> Area {
        let words = SubTable::bytes_for(count, cap, data).div_ceil(8);
        Area {
            buf: (0..words).map(|_| AtomicU64::new(0)).collect(),
            active: AtomicU32::new(0),
        }
    }

    fn table(a: &Area, count: usize, cap: usize, data: usize) -> SubTable<'_> {
        // SAFETY: the buffer is `AtomicU64`s only, 8-aligned, `len` bytes,
        // and outlives the view (it borrows `a`).
        let t = unsafe {
            SubTable::new(
                a.buf.as_ptr().cast(),
                a.buf.len() * 8,
                count,
                cap,
                data,
                &a.active,
            )
        }
        .unwrap();
        t.init();
        t
    }

    fn hash(key: &[u8]) -> u64 {
        KeyHash::of(key, SEED).0
    }

    /// A value "in a block": its own words.
    fn block(value: &[u8]) -> WordBuf {
        let b = WordBuf::new(value.len() as u64);
        b.words().write_bytes(0, value, |_| {}).unwrap();
        b
    }

    fn set(t: &SubTable<'_>, key: &[u8], value: &[u8], version: u64) {
        let b = block(value);
        let v = BlockValue::new(b.words(), 0, value.len() as u64);
        t.publish(
            EventKind::Changed,
            key,
            hash(key),
            Some(v),
            version,
            version * 10,
            &SpinParker,
        );
    }

    fn del(t: &SubTable<'_>, key: &[u8], version: u64) {
        t.publish(
            EventKind::Deleted,
            key,
            hash(key),
            None,
            version,
            0,
            &SpinParker,
        );
    }

    fn event(n: Option<Notice>) -> Event {
        match n {
            Some(Notice::Event(e)) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    fn versions(t: &SubTable<'_>, c: &SubClaim) -> Vec<u64> {
        let mut v = Vec::new();
        while let Some(Notice::Event(e)) = t.poll(c) {
            v.push(e.version);
        }
        v
    }

    #[test]
    fn layout_sizes_and_refused_parameters() {
        // 512-byte header + 256 cells of 1344 bytes (40 + 1280, to 64).
        assert_eq!(SubTable::bytes_for(8, 256, 1280), 2_756_608);
        assert_eq!(SubTable::bytes_for(1, 1, 8), 640);
        assert_eq!(SubTable::bytes_for(usize::MAX, 2, 8), usize::MAX);
        let a = area(1, 4, 64);
        let len = a.buf.len() * 8;
        let base: *const u8 = a.buf.as_ptr().cast();
        // SAFETY: each call names memory inside the buffer (atomics only);
        // `new` refuses before touching it.
        unsafe {
            assert!(SubTable::new(base, len, 1, 3, 64, &a.active).is_none());
            assert!(SubTable::new(base, len, 1, 0, 64, &a.active).is_none());
            assert!(SubTable::new(base, len, 1, 4, 60, &a.active).is_none());
            assert!(SubTable::new(base, len - 8, 1, 4, 64, &a.active).is_none());
            assert!(SubTable::new(base.add(4), len - 4, 1, 2, 8, &a.active).is_none());
            assert!(SubTable::new(std::ptr::null(), len, 1, 4, 64, &a.active).is_none());
            assert!(SubTable::new(base, len, 1, 4, 64, &a.active).is_some());
        }
    }

    #[test]
    fn events_reach_matching_subscribers_in_order() {
        let a = area(2, 8, 64);
        let t = table(&a, 2, 8, 64);
        let one = t.subscribe(1, &[hash(b"k5")]).unwrap();
        let all = t.subscribe(2, &[]).unwrap();
        assert_eq!(t.active_count(), 2);
        set(&t, b"k5", b"fifty", 1);
        set(&t, b"k6", b"sixty", 2);
        del(&t, b"k5", 3);
        let e = event(t.poll(&one));
        assert_eq!(
            e,
            Event {
                kind: EventKind::Changed,
                key: b"k5".to_vec(),
                value: Some(b"fifty".to_vec()),
                value_omitted: false,
                version: 1,
                modified_ns: 10,
            }
        );
        let e = event(t.poll(&one));
        assert_eq!(
            e,
            Event {
                kind: EventKind::Deleted,
                key: b"k5".to_vec(),
                value: None,
                value_omitted: false,
                version: 3,
                modified_ns: 0,
            }
        );
        assert_eq!(t.poll(&one), None);
        assert_eq!(versions(&t, &all), vec![1, 2, 3]);
    }

    #[test]
    fn overflow_is_reported_after_the_events_before_it() {
        let a = area(1, 2, 64);
        let t = table(&a, 1, 2, 64);
        let c = t.subscribe(1, &[]).unwrap();
        for v in 1..=5u64 {
            set(&t, b"k", &v.to_le_bytes(), v);
        }
        assert_eq!(event(t.poll(&c)).version, 1);
        assert_eq!(event(t.poll(&c)).version, 2);
        assert_eq!(t.poll(&c), Some(Notice::Missed));
        assert_eq!(t.poll(&c), None);
        set(&t, b"k", b"9", 9);
        assert_eq!(versions(&t, &c), vec![9]);
    }

    /// The subscriber finds its queue empty, then (before it takes the
    /// loss flag) workers fill the queue and lose the next event: the
    /// loss is still reported after the events before it, not before.
    #[test]
    fn a_loss_behind_events_pushed_while_polling_comes_after_them() {
        let a = area(1, 2, 64);
        let t = table(&a, 1, 2, 64);
        let c = t.subscribe(1, &[]).unwrap();
        FOUND_EMPTY.with(|hook| {
            hook.set(Some(|t| {
                for v in 1..=3u64 {
                    set(t, b"k", b"v", v); // 3 does not fit
                }
            }))
        });
        assert_eq!(event(t.poll(&c)).version, 1);
        assert_eq!(event(t.poll(&c)).version, 2);
        assert_eq!(t.poll(&c), Some(Notice::Missed));
        assert_eq!(t.poll(&c), None);
    }

    #[test]
    fn dead_subscribers_are_freed_and_leftovers_dropped() {
        let a = area(1, 4, 64);
        let t = table(&a, 1, 4, 64);
        let c = t.subscribe(7, &[]).unwrap();
        set(&t, b"k", b"v", 1);
        assert_eq!(t.reclaim(|o| o == 7), 1);
        assert_eq!(a.active.load(Ordering::SeqCst), 0);
        assert!(!t.is_active(&c));
        let c2 = t.subscribe(8, &[]).unwrap();
        assert!(t.is_active(&c2));
        assert_eq!(t.poll(&c2), None, "a previous subscriber's event leaked");
        assert!(t.subscribe(9, &[1; MAX_SUB_KEYS + 1]).is_none());
        t.unsubscribe(&c2);
        assert_eq!(t.active_count(), 0);
        assert_eq!(a.active.load(Ordering::SeqCst), 0);
    }

    /// A subscriber killed between taking a cell and moving `head` leaves
    /// nothing wedged: the next subscriber of the entry starts clean.
    #[test]
    fn a_subscriber_killed_mid_poll_wedges_nothing() {
        let a = area(1, 4, 64);
        let t = table(&a, 1, 4, 64);
        let _c = t.subscribe(1, &[]).unwrap();
        for v in 1..=3 {
            set(&t, b"k", b"v", v);
        }
        // Killed mid-poll: it read the first cell, never moved `head`.
        let e = t.entry(0).unwrap();
        assert_eq!(e.h.head.load(Ordering::SeqCst), 0);
        t.reclaim(|_| true);
        let c2 = t.subscribe(2, &[]).unwrap();
        assert_eq!(t.poll(&c2), None);
        set(&t, b"k", b"v", 4);
        assert_eq!(versions(&t, &c2), vec![4]);
    }

    /// A position reserved but not yet written (a worker preempted under
    /// its stripe lock) makes poll return at once, not spin, and a loss
    /// behind it waits for it.
    #[test]
    fn an_unpublished_cell_is_nothing_yet() {
        let a = area(1, 4, 64);
        let t = table(&a, 1, 4, 64);
        let c = t.subscribe(1, &[]).unwrap();
        let e = t.entry(0).unwrap();
        e.h.tail.fetch_add(1, Ordering::SeqCst); // reserved, not published
        e.h.overflow.store(1, Ordering::SeqCst); // and a loss after it
        assert_eq!(t.poll(&c), None);
        // Its worker finishes: the event shows up, then the loss.
        let cell = e.cell(0);
        cell.word(META).store(
            pack_meta(c.generation, HAS_VALUE, EventKind::Changed as u16),
            Ordering::Relaxed,
        );
        cell.word(VERSION).store(7, Ordering::Relaxed);
        cell.word(LENS).store(pack_lens(1, 2), Ordering::Relaxed);
        cell.data().write_bytes(0, b"k", |_| {}).unwrap();
        cell.data().write_bytes(8, b"vv", |_| {}).unwrap();
        cell.seq().store(1, Ordering::Release);
        let ev = event(t.poll(&c));
        assert_eq!((ev.version, &ev.key[..]), (7, &b"k"[..]));
        assert_eq!(ev.value.as_deref(), Some(&b"vv"[..]));
        assert_eq!(t.poll(&c), Some(Notice::Missed));
        assert_eq!(t.poll(&c), None);
    }

    #[test]
    fn scribbled_indices_and_cells_never_hang() {
        let a = area(1, 4, 64);
        let t = table(&a, 1, 4, 64);
        let c = t.subscribe(1, &[]).unwrap();
        let e = t.entry(0).unwrap();
        e.h.head.store(u64::MAX - 2, Ordering::SeqCst);
        set(&t, b"k", b"1", 1); // refused: overflow
        for p in 0..4 {
            e.cell(p).seq().store(0xdead_beef, Ordering::SeqCst);
        }
        let _ = t.poll(&c);
        let _ = t.poll(&c);
        // The housekeeper repairs the indices: the subscriber is told to
        // resync, then events flow again.
        e.h.tail.store(u64::MAX / 2, Ordering::SeqCst);
        assert_eq!(t.repair(), 1);
        assert_eq!(t.poll(&c), Some(Notice::Missed));
        set(&t, b"k", b"3", 3);
        assert_eq!(versions(&t, &c), vec![3]);
        // A resubscription starts clean too.
        t.reclaim(|_| true);
        let c2 = t.subscribe(2, &[]).unwrap();
        set(&t, b"k", b"2", 2);
        assert_eq!(versions(&t, &c2), vec![2]);
    }

    #[test]
    fn concurrent_publishers_lose_nothing_that_fits() {
        let a = area(1, 1024, 64);
        let t = table(&a, 1, 1024, 64);
        let c = t.subscribe(1, &[]).unwrap();
        std::thread::scope(|s| {
            for w in 0..4u64 {
                let t = &t;
                s.spawn(move || {
                    for i in 0..200u64 {
                        let v = w * 1000 + i;
                        set(t, &w.to_le_bytes(), &v.to_le_bytes(), v);
                    }
                });
            }
        });
        let mut got = Vec::new();
        while let Some(n) = t.poll(&c) {
            let e = event(Some(n));
            assert_eq!(e.key, (e.version / 1000).to_le_bytes());
            assert_eq!(e.value, Some(e.version.to_le_bytes().to_vec()));
            got.push(e.version);
        }
        assert_eq!(got.len(), 800);
        for w in 0..4u64 {
            let mine: Vec<u64> = got.iter().copied().filter(|v| v / 1000 == w).collect();
            assert_eq!(mine, (0..200).map(|i| w * 1000 + i).collect::<Vec<_>>());
        }
    }

    #[test]
    fn values_that_do_not_fit_are_omitted_key_intact() {
        // 32 data bytes: a 3-byte key takes 8, leaving 24 for the value.
        let a = area(1, 8, 32);
        let t = table(&a, 1, 8, 32);
        let c = t.subscribe(1, &[]).unwrap();
        set(&t, b"abc", &[7; 24], 1);
        set(&t, b"abc", &[7; 25], 2);
        set(&t, b"abc", &[7; 4096], 3);
        // A change published without its value is delivered as omitted.
        t.publish(
            EventKind::Changed,
            b"abc",
            hash(b"abc"),
            None,
            4,
            0,
            &SpinParker,
        );
        // A key that fills the cell: no room for any value but an empty one.
        set(&t, &[1; 32], b"", 5);
        set(&t, &[1; 32], b"x", 6);
        let e = event(t.poll(&c));
        assert_eq!(e.value, Some(vec![7; 24]));
        assert!(!e.value_omitted);
        for version in [2, 3, 4] {
            let e = event(t.poll(&c));
            assert_eq!(e.version, version);
            assert_eq!(e.key, b"abc");
            assert_eq!(e.value, None);
            assert!(e.value_omitted);
        }
        let e = event(t.poll(&c));
        assert_eq!((e.key, e.value), (vec![1; 32], Some(vec![])));
        let e = event(t.poll(&c));
        assert_eq!((e.key, e.value, e.value_omitted), (vec![1; 32], None, true));
        assert_eq!(t.poll(&c), None);
    }

    #[test]
    fn a_key_that_does_not_fit_is_missed() {
        let a = area(2, 8, 32);
        let t = table(&a, 2, 8, 32);
        let all = t.subscribe(1, &[]).unwrap();
        let other = t.subscribe(2, &[hash(b"short")]).unwrap();
        set(&t, b"short", b"1", 1);
        set(&t, &[9; 33], b"", 2);
        set(&t, b"short", b"3", 3);
        assert_eq!(event(t.poll(&all)).version, 1);
        assert_eq!(t.poll(&all), Some(Notice::Missed));
        assert_eq!(t.poll(&all), None);
        // A filter that does not name the long key is unaffected.
        assert_eq!(versions(&t, &other), vec![1, 3]);
        assert_eq!(t.poll(&other), None);
        set(&t, b"short", b"4", 4);
        assert_eq!(versions(&t, &all), vec![4]);
        assert_eq!(versions(&t, &other), vec![4]);
    }

    #[test]
    fn a_filter_by_hash_delivers_only_matching_keys() {
        let a = area(1, 16, 64);
        let t = table(&a, 1, 16, 64);
        let c = t.subscribe(1, &[hash(b"a"), hash(b"c")]).unwrap();
        for (v, key) in [b"a", b"b", b"c", b"d", b"a"].iter().enumerate() {
            set(&t, *key, b"v", v as u64 + 1);
        }
        let mut keys = Vec::new();
        while let Some(n) = t.poll(&c) {
            let e = event(Some(n));
            keys.push((e.key, e.version));
        }
        assert_eq!(
            keys,
            vec![(b"a".to_vec(), 1), (b"c".to_vec(), 3), (b"a".to_vec(), 5)]
        );
        // A collision (another key with a named hash) is delivered with its
        // own bytes: the subscriber re-checks them and skips it.
        t.publish(
            EventKind::Deleted,
            b"zz",
            hash(b"a"),
            None,
            6,
            0,
            &SpinParker,
        );
        assert_eq!(event(t.poll(&c)).key, b"zz");
        // Every hash of a full filter is compared.
        let hashes: Vec<u64> = (0..MAX_SUB_KEYS as u64).map(|i| hash(&[i as u8])).collect();
        t.unsubscribe(&c);
        let c = t.subscribe(1, &hashes).unwrap();
        set(&t, &[31], b"", 7);
        set(&t, &[32], b"", 8);
        assert_eq!(versions(&t, &c), vec![7]);
    }

    #[test]
    fn an_empty_value_and_an_empty_key_round_trip() {
        let a = area(1, 4, 16);
        let t = table(&a, 1, 4, 16);
        let c = t.subscribe(1, &[]).unwrap();
        set(&t, b"key", b"", 1);
        set(&t, b"", b"value", 2);
        let e = event(t.poll(&c));
        assert_eq!(
            (e.key, e.value, e.value_omitted),
            (b"key".to_vec(), Some(vec![]), false)
        );
        let e = event(t.poll(&c));
        assert_eq!((e.key, e.value), (vec![], Some(b"value".to_vec())));
    }

    /// Cells and headers full of garbage: never a panic, never a copy past
    /// the data area; a cell whose lengths or kind make no sense is a loss.
    #[test]
    fn garbage_is_never_a_panic_or_an_out_of_bounds_read() {
        const DATA_BYTES: usize = 32;
        let a = area(1, 4, DATA_BYTES);
        let t = table(&a, 1, 4, DATA_BYTES);
        let c = t.subscribe(1, &[]).unwrap();
        let e = t.entry(0).unwrap();
        let changed = EventKind::Changed as u16;
        // Writes one cell at `head` and publishes it.
        let put = |meta: u64, lens: u64| {
            let head = e.h.head.load(Ordering::SeqCst);
            let cell = e.cell(head);
            cell.word(META).store(meta, Ordering::Relaxed);
            cell.word(LENS).store(lens, Ordering::Relaxed);
            e.h.tail.store(head + 1, Ordering::SeqCst);
            cell.seq().store(head + 1, Ordering::Release);
        };
        let g = c.generation;
        for (meta, lens) in [
            (pack_meta(g, HAS_VALUE, changed), u64::MAX),
            (pack_meta(g, HAS_VALUE, 7), pack_lens(1, 1)),
            (pack_meta(g, HAS_VALUE, KIND_LOST), pack_lens(1, 1)),
            (pack_meta(g, HAS_VALUE, changed), pack_lens(32, 8)),
            (pack_meta(g, HAS_VALUE, changed), pack_lens(25, 1)),
            (pack_meta(g, HAS_VALUE, changed), pack_lens(33, 0)),
            (pack_meta(g, HAS_VALUE, changed), pack_lens(1, 25)),
            (pack_meta(g, u16::MAX, changed), pack_lens(u32::MAX, 0)),
        ] {
            put(meta, lens);
            assert_eq!(t.poll(&c), Some(Notice::Missed), "{meta:#x} {lens:#x}");
        }
        // Lengths of a value that is not there are ignored.
        put(
            pack_meta(g, VALUE_OMITTED, changed),
            pack_lens(32, u32::MAX),
        );
        let ev = event(t.poll(&c));
        assert_eq!((ev.key.len(), ev.value, ev.value_omitted), (32, None, true));
        put(
            pack_meta(g, HAS_VALUE, EventKind::Deleted as u16),
            pack_lens(3, u32::MAX),
        );
        let ev = event(t.poll(&c));
        assert_eq!((ev.key.len(), ev.value, ev.value_omitted), (3, None, false));
        // Exactly full: fine.
        put(pack_meta(g, HAS_VALUE, changed), pack_lens(17, 8));
        let ev = event(t.poll(&c));
        assert_eq!((ev.key.len(), ev.value.map(|v| v.len())), (17, Some(8)));
        // Another generation's event is skipped.
        put(
            pack_meta(g.wrapping_add(1), HAS_VALUE, changed),
            pack_lens(1, 1),
        );
        assert_eq!(t.poll(&c), None);

        // Random words everywhere: cells, indices, filter, flags.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rng = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let cells = e.cells;
        for round in 0..2000 {
            for w in cells {
                w.store(rng(), Ordering::Relaxed);
            }
            let head = e.h.head.load(Ordering::SeqCst);
            for p in 0..4 {
                let cell = e.cell(head.wrapping_add(p));
                if round % 2 == 0 {
                    // Ours, so that kinds and lengths are looked at.
                    let (_, flags, kind) = unpack_meta(cell.word(META).load(Ordering::Relaxed));
                    cell.word(META)
                        .store(pack_meta(g, flags, kind % 4), Ordering::Relaxed);
                    let lens = cell.word(LENS).load(Ordering::Relaxed);
                    let (key_len, value_len) = (lens as u32 % 40, (lens >> 32) as u32 % 40);
                    cell.word(LENS)
                        .store(pack_lens(key_len, value_len), Ordering::Relaxed);
                }
                cell.seq()
                    .store(head.wrapping_add(p + 1), Ordering::Release);
            }
            if round % 7 == 0 {
                e.h.tail.store(rng(), Ordering::SeqCst);
                e.h.filter_len.store(rng() as u32, Ordering::SeqCst);
                e.h.overflow.store(rng() as u32, Ordering::SeqCst);
                for f in &e.h.filter {
                    f.store(rng(), Ordering::Relaxed);
                }
            } else {
                e.h.tail.store(head.wrapping_add(4), Ordering::SeqCst);
            }
            for _ in 0..6 {
                if let Some(Notice::Event(ev)) = t.poll(&c) {
                    let value = ev.value.as_ref().map_or(0, Vec::len);
                    assert!(ev.key.len().next_multiple_of(8) + value <= DATA_BYTES);
                    assert!(ev.value.is_none() || ev.kind == EventKind::Changed);
                }
            }
            set(&t, b"k", b"v", round);
            t.sleep(&c, Duration::ZERO, &SpinParker);
            t.repair();
        }
        // After a repair and a resync, events flow again.
        e.h.tail
            .store(e.h.head.load(Ordering::SeqCst), Ordering::SeqCst);
        e.h.filter_len.store(0, Ordering::SeqCst);
        while t.poll(&c).is_some() {}
        set(&t, b"k", b"v", 1);
        assert_eq!(versions(&t, &c), vec![1]);
    }

    #[test]
    fn sleep_returns_on_news_and_wakes_on_a_push() {
        let a = area(1, 4, 64);
        let t = table(&a, 1, 4, 64);
        let c = t.subscribe(1, &[]).unwrap();
        let long = Duration::from_secs(10);
        set(&t, b"k", b"v", 1);
        let start = Instant::now();
        t.sleep(&c, long, &FutexParker); // an event is there
        assert_eq!(versions(&t, &c), vec![1]);
        t.entry(0).unwrap().h.overflow.store(1, Ordering::SeqCst);
        t.sleep(&c, long, &FutexParker); // a loss is there
        assert_eq!(t.poll(&c), Some(Notice::Missed));
        assert!(start.elapsed() < Duration::from_secs(5));
        // Asleep, woken by a publisher.
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                t.publish(
                    EventKind::Deleted,
                    b"k",
                    hash(b"k"),
                    None,
                    2,
                    0,
                    &FutexParker,
                );
            });
            let start = Instant::now();
            while t.poll(&c).is_none() {
                assert!(start.elapsed() < Duration::from_secs(5), "not woken");
                t.sleep(&c, long, &FutexParker);
            }
        });
    }

    /// Four publishers, two keys each, and a subscriber draining a small
    /// queue concurrently: per key, the versions delivered increase, each
    /// with its own key and value, and every version not delivered is
    /// covered by a `Missed` that comes after every delivered event of its
    /// key older than it.
    #[test]
    fn concurrent_publishers_and_a_subscriber_deliver_in_order_or_report_a_loss() {
        const PUBLISHERS: u64 = 4;
        const VERSIONS: u64 = 600;
        let a = area(1, 16, 64);
        let t = table(&a, 1, 16, 64);
        let c = t.subscribe(1, &[]).unwrap();
        let finished = AtomicUsize::new(0);
        let stream = std::thread::scope(|s| {
            for w in 0..PUBLISHERS {
                let (t, finished) = (&t, &finished);
                s.spawn(move || {
                    for v in 1..=VERSIONS {
                        // Two keys per publisher (each key's changes in
                        // order, as under its stripe lock); values of
                        // several sizes, some too large for the cell.
                        let key = [b'k', w as u8, (v % 2) as u8];
                        let mut value = v.to_le_bytes().to_vec();
                        value.resize(8 + (v % 9) as usize * 8, v as u8);
                        set(t, &key, &value, v);
                        if v % 4 == 0 {
                            std::thread::yield_now();
                        }
                    }
                    finished.fetch_add(1, Ordering::SeqCst);
                });
            }
            let mut stream = Vec::new();
            loop {
                if let Some(n) = t.poll(&c) {
                    stream.push(n);
                    continue;
                }
                // Every push is complete: nothing is reserved unwritten, so
                // an empty poll means drained, losses reported.
                if finished.load(Ordering::SeqCst) == PUBLISHERS as usize {
                    match t.poll(&c) {
                        Some(n) => stream.push(n),
                        None => break stream,
                    }
                    continue;
                }
                t.sleep(&c, Duration::from_micros(200), &FutexParker);
            }
        });
        let last_missed = stream.iter().rposition(|n| *n == Notice::Missed);
        let mut delivered = 0;
        for w in 0..PUBLISHERS {
            for half in 0..2u64 {
                let key = [b'k', w as u8, half as u8];
                // The key's versions: every other one, from `first`.
                let first = if half == 0 { 2 } else { 1 };
                let final_version = VERSIONS - (VERSIONS + half) % 2;
                let mut last = (0u64, None); // (version, stream index)
                let check_gap = |to: u64, last: (u64, Option<usize>)| {
                    let next = if last.0 == 0 { first } else { last.0 + 2 };
                    if to > next {
                        assert!(
                            last_missed.is_some_and(|m| last.1.is_none_or(|i| m > i)),
                            "versions {next}..{to} of {key:?} lost without a Missed after {:?}",
                            last.1,
                        );
                    }
                };
                for (i, n) in stream.iter().enumerate() {
                    let Notice::Event(e) = n else { continue };
                    if e.key != key {
                        continue;
                    }
                    assert!(
                        e.version > last.0,
                        "{key:?}: {} after {}",
                        e.version,
                        last.0
                    );
                    let expected_len = 8 + (e.version % 9) as usize * 8;
                    match &e.value {
                        Some(v) => {
                            assert_eq!(v.len(), expected_len);
                            assert_eq!(v[..8], e.version.to_le_bytes());
                        }
                        None => assert!(e.value_omitted && 8 + expected_len > 64),
                    }
                    check_gap(e.version, last);
                    last = (e.version, Some(i));
                    delivered += 1;
                }
                check_gap(final_version + 2, last);
            }
        }
        assert!(delivered > 0);
        let missed = stream.len() - delivered;
        assert!(delivered as u64 == PUBLISHERS * VERSIONS || missed > 0);
    }
}
