//! The server's side of the store: stripe locks in private memory, the
//! allocator, and the write steps of rules 1 to 4 of [`super`].
//!
//! A write to one key, holding its stripe's lock:
//!
//! 1. take a block from the allocator, bump its generation,
//!    `fence(Release)`, and fill it completely (key, value, metadata,
//!    checksum): nothing points to it yet;
//! 2. if the key is new and the table is at 3/4 (live plus tombstones),
//!    build a new table beside the old one, with the new entry in it;
//! 3. `seq` to odd, `fence(Release)`, store the slot (or the table word),
//!    `seq` to even with `Release`;
//! 4. free what was unlinked (the old block: bump its generation with
//!    `Release`, then hand it back; the old table).
//!
//! The lock also orders the change events: the caller's `on_change` runs
//! before the lock is released, so subscribers see one key's changes in
//! version order. Lock order: a stripe, then the allocator; never two
//! stripes.
//!
//! The server trusts nothing it reads back either: the table's slots and
//! blocks are bounds-checked like a client's reads, and a block is handed
//! back to the allocator only if the allocator says it is live.

use super::alloc::{AllocConfig, Allocator};
use super::block::{self, Meta, ValueSource};
use super::evict::{self, EvictionPolicy};
use super::hash::KeyHash;
use super::layout::{hdr, stripe, Geometry};
use super::publish;
use super::read::StoreView;
use super::segment::{Segment, SegmentArena};
use super::table::{Slot, TableWord, EMPTY, MIN_LOG2_CAPACITY, TOMBSTONE};
use super::words::Words;
use crossbeam_utils::CachePadded;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Versions are reserved in the header this many at a time, so a restarted
/// server never hands out a version twice.
pub const VERSION_CHUNK: u64 = 1 << 20;

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The key is empty or longer than the store allows.
    #[error("a key is 1 to {max} bytes, this one is {len}")]
    KeyLength {
        /// Its length.
        len: usize,
        /// The limit.
        max: u64,
    },
    /// The value is longer than the store allows.
    #[error("a value is at most {max} bytes, this one is {len}")]
    ValueLength {
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// `--max-memory` is reached.
    #[error("the store is full: its memory limit is reached")]
    MemoryFull,
    /// `--max-entries` is reached.
    #[error("the store is full: its entry limit is reached")]
    EntriesFull,
}

/// SET or POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Insert or replace.
    Upsert,
    /// Insert only if absent.
    InsertOnly,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// A new key; its version.
    Inserted(u64),
    /// A new value for a present key; its version.
    Replaced(u64),
    /// POST of a present key: nothing changed.
    Exists,
    /// The key's version was not the one expected (compare-and-set):
    /// nothing changed. The current version, 0 if the key is absent.
    VersionMismatch(u64),
}

/// Why an INCR failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncrError {
    /// The value is not a counter ([`crate::counter`]).
    #[error("the value is not a decimal integer")]
    NotInteger,
    /// The result would not fit an i64.
    #[error("the result would overflow a 64-bit integer")]
    Overflow,
    /// The write was refused.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// How a write is made: whether it may replace, on which condition, and
/// with which expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteSpec {
    /// Upsert or insert-only.
    pub mode: WriteMode,
    /// Write only if the key's version is this one (0: only if absent), as
    /// etcd's compare on `mod_revision`.
    pub if_version: Option<u64>,
    /// The entry's deadline, unix ns (0: none); `None` keeps the one the
    /// entry has (none for a new key), as Redis's `KEEPTTL`.
    pub deadline: Option<u64>,
}

impl WriteSpec {
    /// A plain SET: replaces, clears any expiry (as Redis's SET does).
    pub const UPSERT: WriteSpec = WriteSpec {
        mode: WriteMode::Upsert,
        if_version: None,
        deadline: Some(0),
    };
    /// A plain POST: inserts only.
    pub const INSERT_ONLY: WriteSpec = WriteSpec {
        mode: WriteMode::InsertOnly,
        if_version: None,
        deadline: Some(0),
    };
}

/// What a conditional DEL did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// Removed; the version of the removal.
    Removed(u64),
    /// The key was absent (or expired).
    Absent,
    /// The key's version was not the one expected; the current one.
    VersionMismatch(u64),
}

pub use super::block::is_expired;

/// What kind of change a [`Change`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A new value (SET, POST, INCR, EXPIRE).
    Written,
    /// Removed by a DEL.
    Deleted,
    /// Removed because its deadline passed.
    Expired,
    /// Removed to make room (see [`super::evict`]).
    Evicted,
}

/// A change, as `on_change` sees it (under the stripe's lock).
#[derive(Debug)]
pub struct Change<'a> {
    /// What happened.
    pub kind: ChangeKind,
    /// The key.
    pub key: &'a [u8],
    /// The key's hash in this store.
    pub hash: KeyHash,
    /// The new value (`None`: deleted).
    pub value: Option<BlockValue<'a>>,
    /// The change's version.
    pub version: u64,
    /// When, unix ns (0 for a delete).
    pub modified_ns: u64,
}

/// A value in a block, to be read while its stripe is locked.
#[derive(Debug, Clone, Copy)]
pub struct BlockValue<'a> {
    words: Words<'a>,
    offset: u64,
    len: u64,
}

impl<'a> BlockValue<'a> {
    /// The `len` bytes at `offset` of `words`.
    pub fn new(words: Words<'a>, offset: u64, len: u64) -> Self {
        Self { words, offset, len }
    }

    /// Its length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies it into `out`.
    pub fn read_into(&self, out: &mut Vec<u8>) {
        if self.words.read_into(self.offset, self.len, out).is_err() {
            out.clear();
        }
    }

    /// Copies it into other words at `offset` (a staging buffer).
    ///
    /// # Errors
    ///
    /// When either side is out of bounds.
    pub fn copy_to(&self, dst: &Words<'_>, offset: u64) -> Result<(), super::words::OutOfBounds> {
        dst.copy_from(offset, &self.words, self.offset, self.len, |_| {})
    }
}

/// An entry copied out of the store: key, value, metadata.
pub type Copied = (Vec<u8>, Vec<u8>, Meta);

/// A stripe as the server knows it.
#[derive(Debug, Default)]
pub(super) struct StripeState {
    /// The authoritative `seq` (the segment only receives stores of it).
    pub(super) seq: u64,
    pub(super) table: Option<TableWord>,
    pub(super) live: u64,
    /// Live plus tombstone slots.
    pub(super) used: u64,
}

/// Where a probe for a key ended.
enum Probe {
    Found {
        slot: u64,
        offset: u64,
    },
    /// Absent; `slot` is where an insert goes (first tombstone or the empty
    /// slot that ended the probe), `None` if the table had no room.
    Absent {
        slot: Option<u64>,
    },
}

/// A probe's hit, classified by the entry's deadline.
/// The size class (its bytes) a block of `bytes` is allocated from.
fn class_of(bytes: u64) -> Option<u64> {
    super::alloc::class_for(bytes, super::alloc::MAX_BLOCK_LIMIT).map(|(_, size)| size)
}

/// Why [`StoreWriter::remove`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    /// A DEL.
    Del,
    /// The sweep: only an entry whose deadline passed.
    OnlyExpired,
    /// To make room.
    Evict,
}

#[derive(Clone, Copy)]
enum Existing {
    /// A live entry: slot, block, metadata.
    Live { slot: u64, offset: u64, meta: Meta },
    /// An entry whose deadline passed: for every op it is absent, but its
    /// slot still has to be replaced or cleared.
    Expired { slot: u64, offset: u64 },
}

/// Counters for the status view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Entries.
    pub entries: u64,
    /// Bytes the allocator has committed.
    pub committed_bytes: u64,
    /// Bytes of live blocks (entries and tables).
    pub live_bytes: u64,
    /// The limit on committed bytes.
    pub max_memory: u64,
    /// The last version handed out.
    pub version: u64,
    /// Entries removed because their deadline passed.
    pub expired: u64,
    /// Entries evicted to make room.
    pub evicted: u64,
}

/// The writer: one per server.
pub struct StoreWriter<S: Segment> {
    pub(super) segment: S,
    pub(super) geometry: Geometry,
    pub(super) stripes: Box<[CachePadded<Mutex<StripeState>>]>,
    pub(super) alloc: Mutex<Allocator>,
    pub(super) max_memory: u64,
    /// The last version handed out.
    pub(super) version: AtomicU64,
    /// Versions below this are reserved in the header.
    pub(super) version_high: Mutex<u64>,
    pub(super) entries: AtomicU64,
    pub(super) max_entries: Option<u64>,
    /// Deadlines of entries, for the active sweep.
    pub(super) expiry: super::expiry::ExpiryQueue,
    /// Entries removed because their deadline passed.
    pub(super) expired: AtomicU64,
    /// What a full store does with a write ([`EvictionPolicy`] as `u8`).
    pub(super) eviction: AtomicU8,
    /// Entries evicted.
    pub(super) evicted: AtomicU64,
    /// Where eviction samples next (mixed into a stripe and a slot).
    pub(super) sample_cursor: AtomicU64,
}

impl<S: Segment> std::fmt::Debug for StoreWriter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWriter")
            .field("geometry", &self.geometry)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<S: Segment> StoreWriter<S> {
    /// A fresh store in `segment` (zeros): writes the header and sets up an
    /// empty allocator.
    pub fn create(
        segment: S,
        geometry: Geometry,
        max_memory: u64,
        max_entries: Option<u64>,
        store_id: u64,
    ) -> Self {
        // The header page and the stripes must be backed before they are
        // written (a failed commit here shows up at the first write).
        let _ = segment.commit(0, geometry.page_map);
        geometry.write_header(&segment.words(), store_id, crate::clock::unix_now_ns());
        let config = Self::alloc_config(&geometry, max_memory);
        let alloc = Allocator::new(config, &SegmentArena::new(&segment, geometry));
        let stripes = (0..geometry.stripes())
            .map(|_| CachePadded::new(Mutex::new(StripeState::default())))
            .collect();
        Self {
            segment,
            geometry,
            stripes,
            alloc: Mutex::new(alloc),
            max_memory,
            version: AtomicU64::new(0),
            version_high: Mutex::new(0),
            entries: AtomicU64::new(0),
            max_entries,
            expiry: Default::default(),
            expired: AtomicU64::new(0),
            eviction: AtomicU8::new(EvictionPolicy::NoEviction as u8),
            evicted: AtomicU64::new(0),
            sample_cursor: AtomicU64::new(store_id),
        }
    }

    pub(super) fn alloc_config(g: &Geometry, max_memory: u64) -> AllocConfig {
        AllocConfig {
            data_start: g.data_start,
            data_end: g.segment_size,
            max_memory,
            max_block: block::block_bytes(g.max_key, g.max_value).max(1 << 30),
            commit_step: 1 << 20,
            // Freed large blocks kept committed for reuse: a sixteenth of
            // the budget, at most 64 MiB (see `alloc`, rule 5).
            warm_limit: (max_memory / 16).min(64 << 20),
        }
    }

    /// The layout.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The segment.
    pub fn segment(&self) -> &S {
        &self.segment
    }

    /// A reader's view of the same segment (the server reads directly too).
    pub fn view(&self) -> StoreView<'_> {
        StoreView::new(self.segment.words(), self.geometry)
    }

    pub(super) fn words(&self) -> Words<'_> {
        self.segment.words()
    }

    pub(super) fn arena(&self) -> SegmentArena<'_, S> {
        SegmentArena::new(&self.segment, self.geometry)
    }

    /// Counters.
    pub fn stats(&self) -> WriterStats {
        let a = self.alloc.lock().stats();
        WriterStats {
            entries: self.entries.load(Ordering::Relaxed),
            committed_bytes: a.committed_bytes,
            live_bytes: a.live_bytes,
            max_memory: self.max_memory,
            version: self.version.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }

    /// Memory entries leave to the index tables when the store evicts
    /// (see [`Allocator::alloc_reserving`]): an eighth of the limit, what
    /// tables of 8-byte slots at most half full need for entries of 64
    /// bytes and more, with room to grow.
    fn entry_reserve(&self) -> u64 {
        if self.eviction().evicts() {
            self.max_memory / 8
        } else {
            0
        }
    }

    /// What a full store does with a write from now on.
    pub fn set_eviction(&self, policy: EvictionPolicy) {
        // Relaxed: a setting read by each write; no data hangs on it.
        self.eviction.store(policy as u8, Ordering::Relaxed);
    }

    /// The eviction policy.
    pub fn eviction(&self) -> EvictionPolicy {
        EvictionPolicy::from_u8(self.eviction.load(Ordering::Relaxed))
    }

    /// Entries.
    pub fn len(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last version handed out.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// Makes every later version greater than `v` (a loaded snapshot's).
    pub fn set_version_at_least(&self, v: u64) {
        self.version.fetch_max(v, Ordering::Relaxed);
        self.reserve_versions(v);
    }

    /// The next version, reserved in the header first.
    fn next_version(&self) -> u64 {
        let v = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        self.reserve_versions(v);
        v
    }

    pub(super) fn reserve_versions(&self, v: u64) {
        let mut high = self.version_high.lock();
        if v >= *high {
            *high = v.saturating_add(VERSION_CHUNK);
            self.words().store(hdr::VERSION_HIGH * 8, *high);
        }
    }

    fn check_lengths(&self, key: &[u8], value_len: u64) -> Result<(), WriteError> {
        if key.is_empty() || key.len() as u64 > self.geometry.max_key {
            return Err(WriteError::KeyLength {
                len: key.len(),
                max: self.geometry.max_key,
            });
        }
        if value_len > self.geometry.max_value {
            return Err(WriteError::ValueLength {
                len: value_len,
                max: self.geometry.max_value,
            });
        }
        Ok(())
    }

    /// Probes the stripe's table for `key`.
    fn probe(&self, st: &StripeState, key: &[u8], hash: KeyHash) -> Probe {
        let Some(table) = st.table else {
            return Probe::Absent { slot: None };
        };
        let words = self.words();
        let capacity = table.capacity();
        let start = hash.start(capacity);
        let mut insert_at = None;
        for i in 0..capacity {
            let slot = start.wrapping_add(i) & (capacity - 1);
            let w = words.load(table.slot_at(slot)).unwrap_or(EMPTY);
            match Slot::decode(w) {
                Slot::Empty => {
                    return Probe::Absent {
                        slot: Some(insert_at.unwrap_or(slot)),
                    }
                }
                Slot::Tombstone => {
                    insert_at.get_or_insert(slot);
                }
                Slot::Live { tag, offset } if tag == hash.tag() => {
                    if let Ok(h) = block::read_header(&words, &self.geometry, offset) {
                        if h.key_len == key.len() as u64
                            && words.eq_bytes(offset + h.key_at(), key).unwrap_or(false)
                        {
                            return Probe::Found { slot, offset };
                        }
                    }
                }
                Slot::Live { .. } => {}
            }
        }
        Probe::Absent { slot: insert_at }
    }

    /// Takes a block of at least `bytes`, readied for writing (its
    /// generation bumped, then a Release fence: see [`publish::prepare_block`]).
    fn take_block(&self, bytes: u64, reserve: u64) -> Result<u64, WriteError> {
        let block = {
            let mut alloc = self.alloc.lock();
            let block = alloc.alloc_reserving(&self.arena(), bytes, reserve);
            self.publish_committed(alloc.stats().committed_bytes);
            block.map_err(|_| WriteError::MemoryFull)?
        };
        publish::prepare_block(&self.words(), block.offset);
        Ok(block.offset)
    }

    /// Hands back a block unlinked by a write (rule 3), retired first.
    pub(super) fn free_block(&self, offset: u64) {
        publish::retire_block(&self.words(), offset);
        let mut alloc = self.alloc.lock();
        let _ = alloc.free(&self.arena(), offset);
        self.publish_committed(alloc.stats().committed_bytes);
    }

    /// Publishes the committed bytes for probes (`hdr::COMMITTED`); under
    /// the allocator's lock, so the last store is the latest figure.
    /// Relaxed: a statistic, read on its own.
    pub(super) fn publish_committed(&self, bytes: u64) {
        self.words()
            .store_with(hdr::COMMITTED * 8, bytes, Ordering::Relaxed);
    }

    /// Counts an expired entry and publishes the total (`hdr::EXPIRED`)
    /// for probes. Relaxed: a statistic, read on its own.
    fn count_evicted(&self) {
        let n = self.evicted.fetch_add(1, Ordering::Relaxed) + 1;
        self.words()
            .store_with(hdr::EVICTED * 8, n, Ordering::Relaxed);
    }

    fn count_expired(&self) {
        let n = self.expired.fetch_add(1, Ordering::Relaxed) + 1;
        self.words()
            .store_with(hdr::EXPIRED * 8, n, Ordering::Relaxed);
    }

    /// Classifies a probe's hit by its deadline (read with the precise
    /// clock only when the entry has one).
    fn existing(&self, probe: &Probe) -> Option<Existing> {
        let Probe::Found { slot, offset } = *probe else {
            return None;
        };
        let meta = block::read_header(&self.words(), &self.geometry, offset)
            .map(|h| h.meta)
            .unwrap_or_default();
        if meta.deadline != 0 && is_expired(meta.deadline, crate::clock::unix_now_ns()) {
            Some(Existing::Expired { slot, offset })
        } else {
            Some(Existing::Live { slot, offset, meta })
        }
    }

    /// Stores `word` at `at` inside the stripe's `seq` bracket (rule 2).
    pub(super) fn publish(&self, stripe_index: u64, st: &mut StripeState, at: u64, word: u64) {
        let live = st.live;
        publish::publish(
            &self.words(),
            &self.geometry,
            stripe_index,
            &mut st.seq,
            at,
            word,
            live,
        );
    }

    /// Builds a table of `2^log2` slots holding every live entry of `old`
    /// plus `(extra_hash, extra_word)` if given. `None` if no memory.
    fn build_table(
        &self,
        old: Option<TableWord>,
        log2: u32,
        extra: Option<(KeyHash, u64)>,
    ) -> Result<(TableWord, u64), WriteError> {
        let words = self.words();
        let mut items = Vec::new();
        if let Some(old) = old {
            for i in 0..old.capacity() {
                let w = words.load(old.slot_at(i)).unwrap_or(EMPTY);
                if let Slot::Live { offset, .. } = Slot::decode(w) {
                    // Rehash from the key (the block is ours and complete).
                    let Ok(h) = block::read_header(&words, &self.geometry, offset) else {
                        continue;
                    };
                    let mut key = Vec::new();
                    if words
                        .read_into(offset + h.key_at(), h.key_len, &mut key)
                        .is_ok()
                    {
                        items.push((KeyHash::of(&key, self.geometry.seed), w));
                    }
                }
            }
        }
        items.extend(extra);
        self.build_table_of(&items, log2)
    }

    /// A new table of `2^log2` slots holding `items` (hash, slot word);
    /// returns it and how many it placed.
    pub(super) fn build_table_of(
        &self,
        items: &[(KeyHash, u64)],
        log2: u32,
    ) -> Result<(TableWord, u64), WriteError> {
        let table = TableWord {
            offset: self.take_block(8 << log2, 0)?,
            log2_capacity: log2,
        };
        let words = self.words();
        for i in 0..table.capacity() {
            words.store(table.slot_at(i), EMPTY);
        }
        let mut placed = 0u64;
        let cap = table.capacity();
        for (hash, word) in items {
            let start = hash.start(cap);
            for i in 0..cap {
                let at = table.slot_at(start.wrapping_add(i));
                if words.load(at) == Some(EMPTY) {
                    words.store(at, *word);
                    placed += 1;
                    break;
                }
            }
        }
        Ok((table, placed))
    }

    /// SET (`Upsert`) or POST (`InsertOnly`) of `key` to `value`.
    ///
    /// # Errors
    ///
    /// [`WriteError`]: bad lengths, or a full store; nothing changed then.
    pub fn set(
        &self,
        key: &[u8],
        value: ValueSource<'_, '_>,
        mode: WriteMode,
        on_change: impl FnMut(&Change<'_>),
    ) -> Result<Written, WriteError> {
        let spec = match mode {
            WriteMode::Upsert => WriteSpec::UPSERT,
            WriteMode::InsertOnly => WriteSpec::INSERT_ONLY,
        };
        self.write(key, value, spec, None, on_change)
    }

    /// A write as `spec` says (conditions, expiry); `on_change` sees an
    /// expired entry's removal first, if the write found one, then the
    /// write.
    ///
    /// # Errors
    ///
    /// As [`set`](Self::set).
    pub fn set_with(
        &self,
        key: &[u8],
        value: ValueSource<'_, '_>,
        spec: WriteSpec,
        mut on_change: impl FnMut(&Change<'_>),
    ) -> Result<Written, WriteError> {
        self.write(key, value, spec, None, &mut on_change)
    }

    /// Inserts or replaces `key` keeping the given metadata (a snapshot
    /// being loaded).
    ///
    /// # Errors
    ///
    /// As [`set`](Self::set).
    pub fn insert_loaded(&self, key: &[u8], value: &[u8], meta: Meta) -> Result<(), WriteError> {
        self.set_version_at_least(meta.version);
        self.write(
            key,
            ValueSource::Bytes(value),
            WriteSpec::UPSERT,
            Some(meta),
            |_| {},
        )
        .map(|_| ())
    }

    /// A write; when the store is full and the policy evicts, entries are
    /// evicted (no lock held) and the write tried again.
    fn write(
        &self,
        key: &[u8],
        value: ValueSource<'_, '_>,
        spec: WriteSpec,
        keep: Option<Meta>,
        mut on_change: impl FnMut(&Change<'_>),
    ) -> Result<Written, WriteError> {
        let mut evictions = 0;
        let mut blind = 0;
        let mut reserve = self.entry_reserve();
        loop {
            match self.write_once(key, value, spec, keep, reserve, &mut on_change) {
                Err(e @ (WriteError::MemoryFull | WriteError::EntriesFull)) => {
                    let policy = self.eviction();
                    if !policy.evicts() || evictions == evict::MAX_EVICTIONS_PER_WRITE {
                        return Err(e);
                    }
                    // Room for this entry is a free block of its size
                    // class: evicting entries of that class makes it (rule
                    // 2 of the allocator: a class's blocks serve that class
                    // only). The entry limit: any entry will do.
                    let want = (e == WriteError::MemoryFull)
                        .then(|| class_of(block::block_bytes(key.len() as u64, value.len())))
                        .flatten();
                    match self.evict_one(policy, want, &mut on_change) {
                        Some(true) => {}
                        // No entry of the class to evict (a class the store
                        // has not used yet): the write may carve a slab
                        // into the tables' reserve; evicting others frees
                        // nothing it can use, so only a few are tried.
                        Some(false) if blind < evict::BLIND_EVICTIONS => {
                            blind += 1;
                            reserve = 0;
                        }
                        _ => return Err(e),
                    }
                    evictions += 1;
                }
                done => return done,
            }
        }
    }

    fn write_once(
        &self,
        key: &[u8],
        value: ValueSource<'_, '_>,
        spec: WriteSpec,
        keep: Option<Meta>,
        reserve: u64,
        mut on_change: impl FnMut(&Change<'_>),
    ) -> Result<Written, WriteError> {
        self.check_lengths(key, value.len())?;
        let hash = KeyHash::of(key, self.geometry.seed);
        let stripe_index = hash.stripe(self.geometry.stripe_bits);
        // Read the clock before taking the lock, to keep it short.
        let now = crate::clock::unix_coarse_ns();
        let mut st = self.stripes[stripe_index as usize].lock();
        let probe = self.probe(&st, key, hash);
        let existing = self.existing(&probe);
        let current = match existing {
            Some(Existing::Live { meta, .. }) => meta.version,
            _ => 0,
        };
        if let Some(expected) = spec.if_version {
            if expected != current {
                return Ok(Written::VersionMismatch(current));
            }
        }
        let old = match existing {
            Some(Existing::Live { .. }) if spec.mode == WriteMode::InsertOnly => {
                return Ok(Written::Exists)
            }
            Some(Existing::Live { slot, offset, .. })
            | Some(Existing::Expired { slot, offset }) => Some((slot, offset)),
            None => {
                if let Some(max) = self.max_entries {
                    if self.entries.load(Ordering::Relaxed) >= max {
                        return Err(WriteError::EntriesFull);
                    }
                }
                None
            }
        };
        let deadline = match (spec.deadline, existing) {
            (Some(d), _) => d,
            (None, Some(Existing::Live { meta, .. })) => meta.deadline,
            (None, _) => 0,
        };
        let offset = self.take_block(block::block_bytes(key.len() as u64, value.len()), reserve)?;
        // Lazily: a kept (loaded) entry must not use up a version.
        let meta = keep.unwrap_or_else(|| Meta {
            version: self.next_version(),
            modified_ns: now,
            deadline,
        });
        if block::write_entry(&self.words(), offset, key, value, meta).is_err() {
            self.free_block(offset);
            return Err(WriteError::MemoryFull);
        }
        if let Some(Existing::Expired { .. }) = existing {
            // The expired entry goes first, in version order.
            self.count_expired();
            on_change(&Change {
                kind: ChangeKind::Expired,
                key,
                hash,
                value: None,
                version: meta.version,
                modified_ns: 0,
            });
        }
        let word = Slot::live(hash.tag(), offset);
        let written = match (old, st.table) {
            (Some((slot, old_offset)), Some(table)) => {
                self.publish(stripe_index, &mut st, table.slot_at(slot), word);
                self.free_block(old_offset);
                match existing {
                    Some(Existing::Live { .. }) => Written::Replaced(meta.version),
                    _ => Written::Inserted(meta.version),
                }
            }
            _ => {
                let slot = match probe {
                    Probe::Absent { slot } => slot,
                    Probe::Found { .. } => None,
                };
                if let Err(e) = self.insert(stripe_index, &mut st, slot, hash, word) {
                    self.free_block(offset);
                    return Err(e);
                }
                self.entries.fetch_add(1, Ordering::Relaxed);
                Written::Inserted(meta.version)
            }
        };
        if meta.deadline != 0 {
            self.expiry.push(meta.deadline, offset);
        }
        let words = self.words();
        let value_at = offset + block::HEADER_BYTES + (key.len() as u64).div_ceil(8) * 8;
        on_change(&Change {
            kind: ChangeKind::Written,
            key,
            hash,
            value: Some(BlockValue {
                words,
                offset: value_at,
                len: value.len(),
            }),
            version: meta.version,
            modified_ns: meta.modified_ns,
        });
        Ok(written)
    }

    /// Links a new entry's slot `word`: into `slot` of the current table if
    /// that keeps the table at most 3/4 used (a tombstone is reused for
    /// free), else into a rebuilt table (double the size when live entries
    /// pass half, the same size otherwise, which drops the tombstones).
    fn insert(
        &self,
        stripe_index: u64,
        st: &mut StripeState,
        slot: Option<u64>,
        hash: KeyHash,
        word: u64,
    ) -> Result<(), WriteError> {
        if let (Some(table), Some(slot)) = (st.table, slot) {
            let at = table.slot_at(slot);
            let tombstone = self.words().load(at) == Some(TOMBSTONE);
            if tombstone || (st.used + 1) * 4 <= table.capacity() * 3 {
                if !tombstone {
                    st.used += 1;
                }
                st.live += 1;
                self.publish(stripe_index, st, at, word);
                return Ok(());
            }
        }
        let log2 = match st.table {
            None => MIN_LOG2_CAPACITY,
            Some(t) if (st.live + 1) * 2 > t.capacity() => t.log2_capacity + 1,
            Some(t) => t.log2_capacity,
        };
        let (new, placed) = self.build_table(st.table, log2, Some((hash, word)))?;
        let old = st.table.replace(new);
        st.live = placed;
        st.used = placed;
        let table_at = self.geometry.stripe_word(stripe_index, stripe::TABLE);
        self.publish(stripe_index, st, table_at, new.encode());
        if let Some(t) = old {
            self.free_block(t.offset);
        }
        Ok(())
    }

    /// DEL: `Some(version)` if `key` was present.
    pub fn del(&self, key: &[u8], on_change: impl FnMut(&Change<'_>)) -> Option<u64> {
        match self.del_with(key, None, on_change) {
            Deleted::Removed(v) => Some(v),
            Deleted::Absent | Deleted::VersionMismatch(_) => None,
        }
    }

    /// DEL, only if the key's version is `if_version` when one is given. An
    /// expired entry is absent; it is removed (and reported as expired) all
    /// the same.
    pub fn del_with(
        &self,
        key: &[u8],
        if_version: Option<u64>,
        on_change: impl FnMut(&Change<'_>),
    ) -> Deleted {
        self.remove(key, if_version, Removal::Del, on_change).0
    }

    /// DEL's body (also the sweep's and eviction's, as `mode` says). Also
    /// says whether an expired entry was removed.
    fn remove(
        &self,
        key: &[u8],
        if_version: Option<u64>,
        mode: Removal,
        mut on_change: impl FnMut(&Change<'_>),
    ) -> (Deleted, bool) {
        let only_expired = mode == Removal::OnlyExpired;
        let absent = match if_version {
            Some(v) if v != 0 => Deleted::VersionMismatch(0),
            _ => Deleted::Absent,
        };
        if key.is_empty() || key.len() as u64 > self.geometry.max_key {
            return (absent, false);
        }
        let hash = KeyHash::of(key, self.geometry.seed);
        let stripe_index = hash.stripe(self.geometry.stripe_bits);
        let mut st = self.stripes[stripe_index as usize].lock();
        let probe = self.probe(&st, key, hash);
        let (slot, offset, kind) = match self.existing(&probe) {
            None => return (absent, false),
            Some(Existing::Live { meta, .. }) if only_expired => {
                return (Deleted::VersionMismatch(meta.version), false)
            }
            Some(Existing::Live { meta, .. }) if if_version.is_some_and(|v| v != meta.version) => {
                return (Deleted::VersionMismatch(meta.version), false)
            }
            Some(Existing::Live { slot, offset, .. }) if mode == Removal::Evict => {
                (slot, offset, ChangeKind::Evicted)
            }
            Some(Existing::Live { slot, offset, .. }) => (slot, offset, ChangeKind::Deleted),
            Some(Existing::Expired { slot, offset }) => (slot, offset, ChangeKind::Expired),
        };
        let Some(table) = st.table else {
            return (absent, false);
        };
        let version = self.next_version();
        st.live -= 1;
        self.publish(stripe_index, &mut st, table.slot_at(slot), TOMBSTONE);
        self.free_block(offset);
        self.entries.fetch_sub(1, Ordering::Relaxed);
        match kind {
            ChangeKind::Expired => self.count_expired(),
            ChangeKind::Evicted => self.count_evicted(),
            _ => {}
        }
        on_change(&Change {
            kind,
            key,
            hash,
            value: None,
            version,
            modified_ns: 0,
        });
        if kind == ChangeKind::Expired {
            (absent, true)
        } else {
            (Deleted::Removed(version), false)
        }
    }

    /// INCR: adds `delta` to the counter at `key` (absent or expired: 0),
    /// keeping its deadline; the new value and its version. Made as a
    /// compare-and-set on the version read, retried when another write got
    /// in between (each retry means that one succeeded).
    ///
    /// # Errors
    ///
    /// [`IncrError`]: not a counter, overflow, or the write was refused.
    pub fn incr(
        &self,
        key: &[u8],
        delta: i64,
        mut on_change: impl FnMut(&Change<'_>),
    ) -> Result<(i64, u64), IncrError> {
        loop {
            let read = self.with_entry(key, |entry| match entry {
                None => Ok((0, 0)),
                Some((meta, value)) if value.len() as usize <= crate::counter::MAX_LEN => {
                    let mut bytes = Vec::new();
                    value.read_into(&mut bytes);
                    crate::counter::parse(&bytes).map(|n| (meta.version, n))
                }
                Some(_) => Err(crate::counter::NotInteger),
            });
            let (version, n) = read.map_err(|_| IncrError::NotInteger)?;
            let new = n.checked_add(delta).ok_or(IncrError::Overflow)?;
            let spec = WriteSpec {
                mode: WriteMode::Upsert,
                if_version: Some(version),
                deadline: None,
            };
            let bytes = crate::counter::format(new);
            match self.set_with(key, ValueSource::Bytes(&bytes), spec, &mut on_change) {
                Ok(Written::Inserted(v) | Written::Replaced(v)) => return Ok((new, v)),
                Ok(Written::VersionMismatch(_) | Written::Exists) => continue,
                Err(e) => return Err(IncrError::Write(e)),
            }
        }
    }

    /// EXPIRE / PERSIST: gives `key` the deadline `deadline` (unix ns; 0
    /// removes it) by rewriting the entry with its value (a new version:
    /// blocks are written once). `None` if the key is absent or expired.
    ///
    /// # Errors
    ///
    /// When the rewrite is refused (memory).
    pub fn set_deadline(
        &self,
        key: &[u8],
        deadline: u64,
        mut on_change: impl FnMut(&Change<'_>),
    ) -> Result<Option<u64>, WriteError> {
        loop {
            let Some((version, value)) = self.with_entry(key, |entry| {
                entry.map(|(meta, value)| {
                    let mut bytes = Vec::new();
                    value.read_into(&mut bytes);
                    (meta.version, bytes)
                })
            }) else {
                return Ok(None);
            };
            let spec = WriteSpec {
                mode: WriteMode::Upsert,
                if_version: Some(version),
                deadline: Some(deadline),
            };
            match self.set_with(key, ValueSource::Bytes(&value), spec, &mut on_change)? {
                Written::Inserted(v) | Written::Replaced(v) => return Ok(Some(v)),
                Written::VersionMismatch(0) => return Ok(None),
                Written::VersionMismatch(_) | Written::Exists => continue,
            }
        }
    }

    /// One round of the active expiry sweep (see [`super::expiry`]): pops up
    /// to `max` deadlines due at `now` and removes the entries still
    /// expired. Returns how many were removed and the next deadline queued.
    pub fn expire_due(
        &self,
        now: u64,
        max: usize,
        mut on_change: impl FnMut(&Change<'_>),
    ) -> (u64, Option<u64>) {
        let mut due = Vec::with_capacity(max.min(1024));
        let next = self.expiry.pop_due(now, max, &mut due);
        let mut removed = 0;
        for (_, offset) in due {
            if self.expire_block(offset, now, &mut on_change) {
                removed += 1;
            }
        }
        (removed, next)
    }

    /// Removes the entry in the block at `offset` if it is still linked and
    /// its deadline has passed at `now` (the active sweep; a stale offset,
    /// since reused by another entry, finds a later deadline or none).
    pub fn expire_block(&self, offset: u64, now: u64, on_change: impl FnMut(&Change<'_>)) -> bool {
        let words = self.words();
        let Ok(h) = block::read_header(&words, &self.geometry, offset) else {
            return false;
        };
        if !is_expired(h.meta.deadline, now) {
            return false;
        }
        let mut key = Vec::new();
        if words
            .read_into(offset + h.key_at(), h.key_len, &mut key)
            .is_err()
        {
            return false;
        }
        self.remove(&key, None, Removal::OnlyExpired, on_change).1
    }

    /// Evicts one entry chosen by `policy` from [`evict::SAMPLES`] sampled
    /// ones (see [`super::evict`]), of the block class `class` when the
    /// samples find such entries, else of any. `Some(true)`: one of the
    /// class (or any, without a class) went; `Some(false)`: one of another
    /// class; `None`: the samples held nothing the policy may evict. Takes
    /// one stripe lock at a time, never with another held.
    fn evict_one(
        &self,
        policy: EvictionPolicy,
        class: Option<u64>,
        on_change: impl FnMut(&Change<'_>),
    ) -> Option<bool> {
        let mut keys = Vec::with_capacity(evict::SAMPLES);
        let mut metas = Vec::with_capacity(evict::SAMPLES);
        let mut of_class = true;
        for want in [class, None] {
            of_class = want == class;
            for _ in 0..evict::SAMPLES {
                if let Some((key, meta)) = self.sample(policy, want) {
                    keys.push(key);
                    metas.push(meta);
                }
            }
            if !keys.is_empty() || want.is_none() {
                break;
            }
        }
        let i = policy.choose(&metas)?;
        // Only the version sampled: an entry rewritten since is left alone
        // (the next round samples again).
        // Nothing removed (rewritten meanwhile) still counts as a round: the
        // caller tries the write again.
        self.remove(&keys[i], Some(metas[i].version), Removal::Evict, on_change);
        Some(of_class)
    }

    /// One random entry the policy may evict: a random stripe, from a
    /// random slot of its table the first such live entry within
    /// [`evict::SLOT_SCAN`] slots; [`evict::STRIPE_TRIES`] stripes at most.
    fn sample(&self, policy: EvictionPolicy, class: Option<u64>) -> Option<(Vec<u8>, Meta)> {
        let words = self.words();
        for _ in 0..evict::STRIPE_TRIES {
            // Relaxed: a cursor for spreading samples, nothing else.
            let r = evict::mix(self.sample_cursor.fetch_add(1, Ordering::Relaxed));
            let stripe = r & (self.geometry.stripes() - 1);
            let st = self.stripes[stripe as usize].lock();
            let Some(table) = st.table.filter(|_| st.live > 0) else {
                continue;
            };
            let start = r >> 32;
            for i in 0..table.capacity().min(evict::SLOT_SCAN) {
                let Some(Slot::Live { offset, .. }) =
                    words.load(table.slot_at(start + i)).map(Slot::decode)
                else {
                    continue;
                };
                let Ok(h) = block::read_header(&words, &self.geometry, offset) else {
                    continue;
                };
                if !policy.may_evict(&h.meta)
                    || class.is_some_and(|c| class_of(h.bytes()) != Some(c))
                {
                    continue;
                }
                let mut key = Vec::new();
                if words
                    .read_into(offset + h.key_at(), h.key_len, &mut key)
                    .is_ok()
                {
                    return Some((key, h.meta));
                }
            }
        }
        None
    }

    /// Reads `key` under its stripe's lock (a worker answering a read that
    /// could not be done directly): `f` sees the metadata and the value.
    pub fn with_entry<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<(Meta, BlockValue<'_>)>) -> R,
    ) -> R {
        if key.is_empty() || key.len() as u64 > self.geometry.max_key {
            return f(None);
        }
        let hash = KeyHash::of(key, self.geometry.seed);
        let st = self.stripes[hash.stripe(self.geometry.stripe_bits) as usize].lock();
        match self.probe(&st, key, hash) {
            Probe::Found { offset, .. } => {
                let words = self.words();
                match block::read_header(&words, &self.geometry, offset) {
                    Ok(h) if is_expired(h.meta.deadline, crate::clock::unix_now_ns()) => f(None),
                    Ok(h) => f(Some((
                        h.meta,
                        BlockValue {
                            words,
                            offset: offset + h.value_at(),
                            len: h.value_len,
                        },
                    ))),
                    Err(_) => f(None),
                }
            }
            Probe::Absent { .. } => f(None),
        }
    }

    /// A point-in-time copy of every entry, and the version it was taken
    /// at: every stripe's lock is held (taken in order) while the entries
    /// are copied out, so no write lands between two stripes' copies.
    pub fn snapshot(&self) -> (Vec<Copied>, u64) {
        let guards: Vec<_> = self.stripes.iter().map(|s| s.lock()).collect();
        let now = crate::clock::unix_now_ns();
        let version = self.version();
        let words = self.words();
        let mut out = Vec::with_capacity(self.len() as usize);
        for st in &guards {
            let Some(table) = st.table else { continue };
            for i in 0..table.capacity() {
                let w = words.load(table.slot_at(i)).unwrap_or(EMPTY);
                if let Slot::Live { offset, .. } = Slot::decode(w) {
                    let Ok(h) = block::read_header(&words, &self.geometry, offset) else {
                        continue;
                    };
                    if is_expired(h.meta.deadline, now) {
                        continue;
                    }
                    let (mut key, mut value) = (Vec::new(), Vec::new());
                    if words
                        .read_into(offset + h.key_at(), h.key_len, &mut key)
                        .is_ok()
                        && words
                            .read_into(offset + h.value_at(), h.value_len, &mut value)
                            .is_ok()
                    {
                        out.push((key, value, h.meta));
                    }
                }
            }
        }
        drop(guards);
        (out, version)
    }

    /// Calls `f` with every entry of stripe `index`, under its lock (a
    /// snapshot, or a listing a reader could not do directly). False if
    /// there is no such stripe.
    pub fn for_each_in_stripe(
        &self,
        index: u64,
        mut f: impl FnMut(&[u8], Meta, BlockValue<'_>),
    ) -> bool {
        let Some(stripe) = self.stripes.get(index as usize) else {
            return false;
        };
        let now = crate::clock::unix_now_ns();
        let st = stripe.lock();
        let Some(table) = st.table else { return true };
        let words = self.words();
        let mut key = Vec::new();
        for i in 0..table.capacity() {
            if let Slot::Live { offset, .. } =
                Slot::decode(words.load(table.slot_at(i)).unwrap_or(EMPTY))
            {
                let Ok(h) = block::read_header(&words, &self.geometry, offset) else {
                    continue;
                };
                if is_expired(h.meta.deadline, now) {
                    continue;
                }
                if words
                    .read_into(offset + h.key_at(), h.key_len, &mut key)
                    .is_ok()
                {
                    f(
                        &key,
                        h.meta,
                        BlockValue {
                            words,
                            offset: offset + h.value_at(),
                            len: h.value_len,
                        },
                    );
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::read::Lookup;
    use crate::store::segment::HeapSegment;
    use std::collections::HashMap;

    fn writer(stripe_bits: u32, max_memory: u64) -> StoreWriter<HeapSegment> {
        let g = Geometry::new(8 << 20, stripe_bits, 256, 64 << 10, 0x5eed);
        StoreWriter::create(
            HeapSegment::new(g.segment_size, None),
            g,
            max_memory,
            None,
            1,
        )
    }

    fn get(w: &StoreWriter<HeapSegment>, key: &[u8]) -> Option<Vec<u8>> {
        match w.view().get(key) {
            Lookup::Found { value, .. } => Some(value),
            Lookup::Absent => None,
            other => panic!("{other:?}"),
        }
    }

    fn set(w: &StoreWriter<HeapSegment>, key: &[u8], value: &[u8]) -> Written {
        w.set(key, ValueSource::Bytes(value), WriteMode::Upsert, |_| {})
            .unwrap()
    }

    #[test]
    fn loaded_entries_keep_their_metadata_and_use_up_no_version() {
        let w = writer(2, 1 << 30);
        for (i, k) in [&b"a"[..], b"b", b"c"].into_iter().enumerate() {
            let meta = Meta {
                version: 10 + i as u64,
                modified_ns: 77,
                deadline: 0,
            };
            w.insert_loaded(k, b"v", meta).unwrap();
            match w.view().get(k) {
                Lookup::Found { meta: got, .. } => assert_eq!(got, meta),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(w.version(), 12);
        assert!(matches!(set(&w, b"d", b"v"), Written::Inserted(13)));
    }

    #[test]
    fn set_get_replace_delete_read_back_directly() {
        let w = writer(2, 1 << 30);
        assert_eq!(get(&w, b"a"), None);
        assert!(matches!(set(&w, b"a", b"1"), Written::Inserted(1)));
        assert_eq!(get(&w, b"a").as_deref(), Some(&b"1"[..]));
        assert!(matches!(set(&w, b"a", b"22"), Written::Replaced(2)));
        assert_eq!(get(&w, b"a").as_deref(), Some(&b"22"[..]));
        assert_eq!(
            w.set(
                b"a",
                ValueSource::Bytes(b"x"),
                WriteMode::InsertOnly,
                |_| {}
            ),
            Ok(Written::Exists)
        );
        assert_eq!(w.del(b"a", |_| {}), Some(3));
        assert_eq!(w.del(b"a", |_| {}), None);
        assert_eq!(get(&w, b"a"), None);
        assert_eq!(w.len(), 0);
        // Empty values and binary keys are fine.
        set(&w, &[0, 255, 10], b"");
        assert_eq!(get(&w, &[0, 255, 10]).as_deref(), Some(&b""[..]));
    }

    #[test]
    fn many_keys_grow_tables_and_survive_churn() {
        let w = writer(2, 1 << 30);
        let mut model = HashMap::new();
        for i in 0..5000u32 {
            let k = format!("key-{}", i % 1500).into_bytes();
            if i % 7 == 3 {
                let expect = model.remove(&k).is_some();
                assert_eq!(w.del(&k, |_| {}).is_some(), expect);
            } else {
                let v = format!("value-{i}-{}", "x".repeat((i % 40) as usize)).into_bytes();
                set(&w, &k, &v);
                model.insert(k, v);
            }
        }
        assert_eq!(w.len(), model.len() as u64);
        assert_eq!(w.view().entries(), model.len() as u64);
        for (k, v) in &model {
            assert_eq!(get(&w, k).as_ref(), Some(v));
        }
        let mut listed = 0;
        for s in 0..w.geometry().stripes() {
            listed += w.view().stripe_keys(s).unwrap().len();
        }
        assert_eq!(listed, model.len());
    }

    #[test]
    fn limits_are_refused_and_leave_nothing_behind() {
        let w = writer(0, 1 << 30);
        assert!(matches!(
            w.set(b"", ValueSource::Bytes(b"v"), WriteMode::Upsert, |_| {}),
            Err(WriteError::KeyLength { .. })
        ));
        assert!(matches!(
            w.set(
                &[1; 257],
                ValueSource::Bytes(b"v"),
                WriteMode::Upsert,
                |_| {}
            ),
            Err(WriteError::KeyLength { .. })
        ));
        assert!(matches!(
            w.set(
                b"k",
                ValueSource::Bytes(&vec![0; (64 << 10) + 1]),
                WriteMode::Upsert,
                |_| {}
            ),
            Err(WriteError::ValueLength { .. })
        ));
        assert_eq!(w.len(), 0);
        let limited = StoreWriter::create(
            HeapSegment::new(8 << 20, None),
            Geometry::new(8 << 20, 0, 256, 64 << 10, 1),
            1 << 30,
            Some(2),
            1,
        );
        for k in [b"a", b"b"] {
            limited
                .set(k, ValueSource::Bytes(b"v"), WriteMode::Upsert, |_| {})
                .unwrap();
        }
        assert_eq!(
            limited.set(b"c", ValueSource::Bytes(b"v"), WriteMode::Upsert, |_| {}),
            Err(WriteError::EntriesFull)
        );
        // Replacing at the limit is fine.
        limited
            .set(b"a", ValueSource::Bytes(b"w"), WriteMode::Upsert, |_| {})
            .unwrap();
    }

    #[test]
    fn memory_full_is_an_error_not_a_crash() {
        let w = writer(0, 512 << 10);
        let mut n = 0;
        loop {
            match w.set(
                format!("k{n}").as_bytes(),
                ValueSource::Bytes(&[7; 1000]),
                WriteMode::Upsert,
                |_| {},
            ) {
                Ok(_) => n += 1,
                Err(WriteError::MemoryFull) => break,
                Err(e) => panic!("{e}"),
            }
            assert!(n < 2000, "no limit");
        }
        assert!(n > 10);
        for i in 0..n {
            assert!(get(&w, format!("k{i}").as_bytes()).is_some());
        }
    }

    /// Under every evicting policy, a full store keeps taking writes:
    /// evictions make room (counted, reported as evictions), memory stays
    /// within the limit, and the newest keys are there.
    #[test]
    fn a_full_store_evicts_instead_of_refusing() {
        for policy in [EvictionPolicy::AllKeysLru, EvictionPolicy::AllKeysRandom] {
            let w = writer(6, 2 << 20);
            w.set_eviction(policy);
            let mut evicted_events = 0u64;
            for n in 0..16_000u64 {
                let written = w.set(
                    format!("key:{n}").as_bytes(),
                    ValueSource::Bytes(&[7; 200]),
                    WriteMode::Upsert,
                    |c| evicted_events += u64::from(c.kind == ChangeKind::Evicted),
                );
                assert!(
                    written.is_ok(),
                    "{policy}: write {n}: {written:?} {:?}",
                    w.stats()
                );
            }
            let stats = w.stats();
            assert!(stats.committed_bytes <= 2 << 20, "{stats:?}");
            assert!(stats.evicted > 5_000, "{policy}: {stats:?}");
            assert_eq!(stats.evicted, evicted_events);
            assert_eq!(stats.entries + stats.evicted, 16_000);
            assert!(get(&w, b"key:15999").is_some());
        }
        // volatile-ttl: only entries with a deadline go, soonest first; with
        // none left the write fails as without eviction.
        let w = writer(4, 1 << 20);
        w.set_eviction(EvictionPolicy::VolatileTtl);
        let far = crate::clock::unix_now_ns() + 3_600_000_000_000;
        let mut n = 0u64;
        let refused = loop {
            let spec = WriteSpec {
                deadline: Some(if n % 2 == 0 { far + n } else { 0 }),
                ..WriteSpec::UPSERT
            };
            let key = format!("key:{n}");
            match w.set_with(key.as_bytes(), ValueSource::Bytes(&[1; 200]), spec, |_| {}) {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
            assert!(n < 100_000, "never refused");
        };
        assert_eq!(refused, WriteError::MemoryFull);
        assert!(w.stats().evicted > 0);
        // Every persistent key is still there.
        for i in (1..n).step_by(2) {
            assert!(get(&w, format!("key:{i}").as_bytes()).is_some(), "key:{i}");
        }
    }

    #[test]
    fn changes_are_reported_under_the_lock_with_versions_in_order() {
        let w = writer(1, 1 << 30);
        let mut seen = Vec::new();
        w.set(b"k", ValueSource::Bytes(b"v1"), WriteMode::Upsert, |c| {
            let mut v = Vec::new();
            c.value.unwrap().read_into(&mut v);
            seen.push((c.key.to_vec(), Some(v), c.version));
        })
        .unwrap();
        w.del(b"k", |c| seen.push((c.key.to_vec(), None, c.version)));
        assert_eq!(
            seen,
            vec![
                (b"k".to_vec(), Some(b"v1".to_vec()), 1),
                (b"k".to_vec(), None, 2)
            ]
        );
    }

    #[test]
    fn versions_are_reserved_in_the_header_ahead_of_use() {
        let w = writer(0, 1 << 30);
        set(&w, b"a", b"1");
        let high = w.words().load(hdr::VERSION_HIGH * 8).unwrap();
        assert!(high > w.version());
        w.set_version_at_least(high + 5);
        assert!(w.words().load(hdr::VERSION_HIGH * 8).unwrap() > high + 5);
    }
}
