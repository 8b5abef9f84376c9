//! Reading the store without a lock and without writing anything: the
//! client's side of the protocol in [`super`] (rules 2 to 6).
//!
//! One attempt loads the stripe's `seq`, walks the table, the slot, the
//! block header and the key, and loads `seq` again; a found entry's value is
//! then copied under the block's generation. A failed check is a retry, up
//! to [`ATTEMPTS`]; then [`Lookup::Busy`] tells the caller to ask a worker.
//! Nothing read is trusted before it is checked: a garbage table word, slot
//! or header ends the attempt with [`Lookup::Corrupt`] if the `seq` check
//! says it was not a concurrent write.

use super::block::{self, Header, Meta, GENERATION};
use super::hash::KeyHash;
use super::layout::{stripe, Geometry};
use super::table::{Slot, TableWord};
use super::words::Words;
use crate::sync::{fence, Ordering};

/// Keys between the prefetch stages of [`StoreView::pipelined`]: enough
/// lookups in between to cover a cache miss, few enough that what was
/// fetched is still in L1.
pub const PIPELINE_GAP: usize = 4;
/// Attempts before a lookup gives up and says [`Lookup::Busy`].
pub const ATTEMPTS: u32 = 8;
/// Most slots one read probes; a longer probe (a stripe full of colliding
/// keys) is left to a worker.
pub const MAX_READ_PROBE: u64 = 1024;

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The entry: its metadata and value.
    Found {
        /// Version, modified time, deadline.
        meta: Meta,
        /// The value's bytes.
        value: Vec<u8>,
    },
    /// No entry for the key.
    Absent,
    /// Writers kept changing the stripe (or the probe was too long): ask a
    /// worker.
    Busy,
    /// The stripe holds something no writer could have left (checked twice
    /// against `seq`): ask a worker, which reports it.
    Corrupt(&'static str),
}

/// One attempt's verdict before the value copy.
enum Walk {
    Found { offset: u64, header: Header },
    Absent,
    TooLong,
    Corrupt(&'static str),
}

/// A read-only view of a store segment.
#[derive(Debug, Clone, Copy)]
pub struct StoreView<'a> {
    words: Words<'a>,
    geometry: Geometry,
}

impl<'a> StoreView<'a> {
    /// A view of `words` laid out as `geometry` (validated by the caller,
    /// see [`Geometry::from_header`]).
    pub fn new(words: Words<'a>, geometry: Geometry) -> Self {
        Self { words, geometry }
    }

    /// The layout.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The words.
    pub fn words(&self) -> &Words<'a> {
        &self.words
    }

    /// The hash of `key` in this store.
    #[inline]
    pub fn hash(&self, key: &[u8]) -> KeyHash {
        KeyHash::of(key, self.geometry.seed)
    }

    /// Looks `key` up; see the module docs.
    pub fn get(&self, key: &[u8]) -> Lookup {
        self.get_hashed(key, self.hash(key))
    }

    /// [`get`](Self::get) with the hash already computed.
    pub fn get_hashed(&self, key: &[u8], hash: KeyHash) -> Lookup {
        let stripe = hash.stripe(self.geometry.stripe_bits);
        let seq_at = self.geometry.stripe_word(stripe, stripe::SEQ);
        let mut value = Vec::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                backoff(attempt);
            }
            let Some(s1) = self.words.load(seq_at) else {
                return Lookup::Corrupt("stripe outside the segment");
            };
            // Pairs with the writer's Release store of the even `seq`: if
            // `s1` is that value, everything the write did is visible below.
            fence(Ordering::Acquire);
            if s1 & 1 == 1 {
                continue;
            }
            let walk = self.walk(stripe, key, hash);
            // Pairs with the writer's fence(Release) after its odd `seq`: if
            // the walk saw anything stored after it, `s2` is that odd value
            // or later.
            fence(Ordering::Acquire);
            if self.words.load(seq_at) != Some(s1) {
                continue;
            }
            let (offset, header) = match walk {
                Walk::Absent => return Lookup::Absent,
                Walk::TooLong => return Lookup::Busy,
                Walk::Corrupt(why) => return Lookup::Corrupt(why),
                Walk::Found { offset, header } => (offset, header),
            };
            // Expired: invisible from its deadline on, whether or not the
            // server has removed it yet (the clock is read only for entries
            // that have a deadline).
            if header.meta.deadline != 0 && block::is_expired(header.meta.deadline, now_ns()) {
                return Lookup::Absent;
            }
            // The value under the generation read in the validated window
            // (rule 4): a block handed out again bumps it before anything
            // is written into it.
            if self
                .words
                .read_into(offset + header.value_at(), header.value_len, &mut value)
                .is_err()
            {
                return Lookup::Corrupt("value outside the segment");
            }
            fence(Ordering::Acquire);
            if self.words.load(offset + GENERATION) == Some(header.generation) {
                return Lookup::Found {
                    meta: header.meta,
                    value,
                };
            }
        }
        Lookup::Busy
    }

    /// Batch lookups overlap their cache misses by calling, for each key
    /// some lookups ahead of its [`get_hashed`](Self::get_hashed), these
    /// three stages in order, a few keys apart: each brings in what the
    /// next one reads. They are hints: every word they read is bounds
    /// checked and nothing read is trusted or kept (a garbage or changing
    /// word only makes a prefetch useless).
    ///
    /// Stage 1: the stripe's `seq` and table words.
    #[inline]
    pub fn prefetch_stripe(&self, hash: KeyHash) {
        let stripe = hash.stripe(self.geometry.stripe_bits);
        self.words
            .prefetch(self.geometry.stripe_word(stripe, stripe::TABLE));
    }

    /// Stage 2: the first slot the key's probe reads.
    #[inline]
    pub fn prefetch_slot(&self, hash: KeyHash) {
        let stripe = hash.stripe(self.geometry.stripe_bits);
        let word = self
            .words
            .load(self.geometry.stripe_word(stripe, stripe::TABLE));
        if let Some(table) = self.table_of(word) {
            self.words
                .prefetch(table.slot_at(hash.start(table.capacity())));
        }
    }

    /// A table word, if it decodes and its slots lie in the data area.
    #[inline]
    fn table_of(&self, word: Option<u64>) -> Option<TableWord> {
        let table = TableWord::decode(word?)?;
        self.geometry
            .in_data(table.offset, table.bytes(), 16)
            .then_some(table)
    }

    /// Calls `visit(i)` for every `i` in `0..hashes.len()`, in order, with
    /// the three prefetch stages run [`PIPELINE_GAP`] keys apart ahead of
    /// it: by the time `visit(i)` looks key `i` up, its stripe, slot and
    /// block header are (likely) in the cache, fetched while earlier keys
    /// were looked up.
    pub fn pipelined(&self, hashes: &[KeyHash], mut visit: impl FnMut(usize)) {
        let n = hashes.len();
        let gap = PIPELINE_GAP;
        for i in 0..n + 3 * gap {
            if i < n {
                self.prefetch_stripe(hashes[i]);
            }
            if let Some(h) = i.checked_sub(gap).and_then(|j| hashes.get(j)) {
                self.prefetch_slot(*h);
            }
            if let Some(h) = i.checked_sub(2 * gap).and_then(|j| hashes.get(j)) {
                self.prefetch_block(*h);
            }
            if let Some(j) = i.checked_sub(3 * gap).filter(|j| *j < n) {
                visit(j);
            }
        }
    }

    /// Stage 3: the header of the block that slot names, if its tag is
    /// the key's.
    #[inline]
    pub fn prefetch_block(&self, hash: KeyHash) {
        let stripe = hash.stripe(self.geometry.stripe_bits);
        let word = self
            .words
            .load(self.geometry.stripe_word(stripe, stripe::TABLE));
        let Some(table) = self.table_of(word) else {
            return;
        };
        let at = table.slot_at(hash.start(table.capacity()));
        if let Some(Slot::Live { tag, offset }) = self.words.load(at).map(Slot::decode) {
            if tag == hash.tag() {
                self.words.prefetch(offset);
            }
        }
    }

    /// One walk from the stripe's table word to the entry of `key`.
    fn walk(&self, stripe: u64, key: &[u8], hash: KeyHash) -> Walk {
        let g = &self.geometry;
        let Some(word) = self.words.load(g.stripe_word(stripe, stripe::TABLE)) else {
            return Walk::Corrupt("stripe outside the segment");
        };
        if word == 0 {
            return Walk::Absent;
        }
        let Some(table) = TableWord::decode(word) else {
            return Walk::Corrupt("table word");
        };
        if !g.in_data(table.offset, table.bytes(), 16) {
            return Walk::Corrupt("table outside the data area");
        }
        let capacity = table.capacity();
        let start = hash.start(capacity);
        let tag = hash.tag();
        for i in 0..capacity {
            if i == MAX_READ_PROBE {
                return Walk::TooLong;
            }
            let Some(w) = self.words.load(table.slot_at(start + i)) else {
                return Walk::Corrupt("slot outside the segment");
            };
            match Slot::decode(w) {
                Slot::Empty => return Walk::Absent,
                Slot::Tombstone => {}
                Slot::Live { tag: t, .. } if t != tag => {}
                Slot::Live { offset, .. } => {
                    let header = match block::read_header(&self.words, g, offset) {
                        Ok(h) => h,
                        Err(_) => return Walk::Corrupt("block header"),
                    };
                    if header.key_len == key.len() as u64
                        && self
                            .words
                            .eq_bytes(offset + header.key_at(), key)
                            .unwrap_or(false)
                    {
                        return Walk::Found { offset, header };
                    }
                }
            }
        }
        Walk::Absent
    }

    /// The keys of one stripe, read under its `seq` (for listing; values
    /// are then read one by one with [`get`](Self::get)). `None` when writers
    /// kept changing the stripe or it holds garbage: ask a worker.
    pub fn stripe_keys(&self, stripe: u64) -> Option<Vec<Vec<u8>>> {
        let g = &self.geometry;
        if stripe >= g.stripes() {
            return None;
        }
        let seq_at = g.stripe_word(stripe, stripe::SEQ);
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                backoff(attempt);
            }
            let s1 = self.words.load(seq_at)?;
            fence(Ordering::Acquire);
            if s1 & 1 == 1 {
                continue;
            }
            let keys = self.stripe_keys_once(stripe);
            fence(Ordering::Acquire);
            if self.words.load(seq_at) != Some(s1) {
                continue;
            }
            return keys;
        }
        None
    }

    fn stripe_keys_once(&self, stripe: u64) -> Option<Vec<Vec<u8>>> {
        let g = &self.geometry;
        let word = self.words.load(g.stripe_word(stripe, stripe::TABLE))?;
        let Some(table) = TableWord::decode(word) else {
            return (word == 0).then(Vec::new);
        };
        if !g.in_data(table.offset, table.bytes(), 16) {
            return None;
        }
        // At most as many entries as the stripe says (bounded by the
        // capacity), so a garbage count allocates nothing large.
        let mut keys = Vec::new();
        for i in 0..table.capacity() {
            if let Slot::Live { offset, .. } = Slot::decode(self.words.load(table.slot_at(i))?) {
                let h = block::read_header(&self.words, g, offset).ok()?;
                let mut key = Vec::new();
                self.words
                    .read_into(offset + h.key_at(), h.key_len, &mut key)
                    .ok()?;
                keys.push(key);
            }
        }
        Some(keys)
    }

    /// Bytes the store's allocator holds committed, as the server last
    /// published them (what `status` reports as memory used).
    pub fn committed_bytes(&self) -> u64 {
        self.words
            .load(super::layout::hdr::COMMITTED * 8)
            .unwrap_or(0)
    }

    /// Entries removed because their deadline passed, as the server last
    /// published the count.
    pub fn expired_count(&self) -> u64 {
        self.words
            .load(super::layout::hdr::EXPIRED * 8)
            .unwrap_or(0)
    }

    /// Entries evicted to make room, as the server last published the
    /// count.
    pub fn evicted_count(&self) -> u64 {
        self.words
            .load(super::layout::hdr::EVICTED * 8)
            .unwrap_or(0)
    }

    /// Bytes of the data area carved into slabs so far (an upper bound of
    /// the memory the store holds: large blocks freed since are given back).
    pub fn carved_bytes(&self) -> u64 {
        self.words
            .load(super::layout::hdr::CARVED_END * 8)
            .unwrap_or(0)
            .saturating_sub(self.geometry.data_start)
    }

    /// Entries the stripes say they hold (a sum of counters; a moment's
    /// view, not a snapshot).
    pub fn entries(&self) -> u64 {
        (0..self.geometry.stripes())
            .map(|s| {
                self.words
                    .load(self.geometry.stripe_word(s, stripe::ENTRIES))
                    .unwrap_or(0)
            })
            .fold(0u64, u64::saturating_add)
    }
}

/// A short pause between attempts: a few spins, growing.
#[inline]
fn backoff(attempt: u32) {
    #[cfg(loom)]
    {
        let _ = attempt;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    for _ in 0..(16u32 << attempt.min(6)) {
        std::hint::spin_loop();
    }
}

/// The wall clock for deadlines (loom models have no clock: nothing expires).
#[cfg(not(loom))]
fn now_ns() -> u64 {
    crate::clock::unix_now_ns()
}

#[cfg(loom)]
fn now_ns() -> u64 {
    0
}
