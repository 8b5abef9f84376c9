//! The server's store: a hash map split into lock stripes.
//!
//! [`StripedMap`] holds `N` independent hash tables ("stripes"), each behind
//! its own [`parking_lot::RwLock`] and padded to a cache line of its own
//! ([`CachePadded`]), so that threads working on different stripes neither
//! wait for each other nor bounce the same cache line between cores. The
//! stripe of a key is chosen by the key's hash.
//!
//! - **One hash computation per operation.** Each stripe is a
//!   [`hashbrown::HashTable`], which takes the hash from the caller. The map
//!   hashes the key once, picks the stripe from the high bits of that hash and
//!   hands the same hash to the table, which uses the low bits for the bucket
//!   and the top 7 bits as its control tag. The stripe bits are taken from
//!   just *below* those top 7 bits, so that all keys of a stripe do not share
//!   the same tag (the same trick as dashmap's `determine_shard`).
//! - **Consistent listing per stripe.** [`StripedMap::for_each_in_stripe`]
//!   holds one stripe's read lock while it visits that stripe, so each stripe
//!   is seen in a consistent state. Walking all stripes one after the other
//!   gives a snapshot that is consistent per stripe, not across stripes, and
//!   never blocks the whole map.
//! - **A global version counter.** Every successful mutation (a set, a post
//!   that inserted, a delete that removed) takes the next value of one
//!   map-wide counter while it holds the stripe's write lock. The value is
//!   stored in the [`Entry`] and returned to the caller. Because mutations of
//!   one key are serialised by its stripe lock, the versions of one key
//!   strictly increase in the order its mutations took effect, and no two
//!   mutations anywhere in the map share a version.
//! - **An optional entry limit** ([`StripedMap::with_max_entries`]): inserting
//!   a *new* key beyond it fails with [`MapError::Full`]; replacing the value
//!   of an existing key always succeeds.
//!
//! Keys and values are `Copy`: a lookup copies the entry out under the read
//! lock and returns it, so no guard ever escapes the map and no caller can
//! hold a lock by accident.
//!
//! # Example
//!
//! ```
//! use kvs_core::map::{SetOutcome, StripedMap};
//!
//! let map: StripedMap<u64, u64> = StripedMap::new().with_max_entries(Some(2));
//!
//! let (outcome, v1) = map.insert_or_assign(1, 10).unwrap();
//! assert_eq!(outcome, SetOutcome::Inserted);
//! let (outcome, v2) = map.insert_or_assign(1, 11).unwrap();
//! assert_eq!(outcome, SetOutcome::Replaced);
//! assert!(v2 > v1);
//!
//! assert_eq!(map.insert_if_absent(1, 12).unwrap(), None); // key 1 exists
//! assert!(map.insert_if_absent(2, 20).unwrap().is_some());
//! assert!(map.insert_or_assign(3, 30).is_err()); // a third key is over the limit
//!
//! assert_eq!(map.get(&1).map(|e| e.value), Some(11));
//! let (removed, _delete_version) = map.remove(&1).unwrap();
//! assert_eq!(removed.value, 11);
//! assert_eq!(map.len(), 1);
//! ```

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;
use hashbrown::hash_table::{self, HashTable};
use parking_lot::RwLock;

/// The number of stripes that [`StripedMap::new`] uses.
pub const DEFAULT_STRIPES: usize = 64;

/// The hasher builder of [`StripedMap`]: foldhash's fast hasher, seeded
/// randomly once per map.
///
/// Exported so that benchmarks can give other maps the same hash function.
pub type DefaultHashBuilder = foldhash::fast::RandomState;

/// The number of high hash bits that [`hashbrown::HashTable`] uses as its
/// control tag; the stripe index is taken from the bits just below them.
const TAG_BITS: u32 = 7;

/// A stored value with its version and modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<V> {
    /// The value.
    pub value: V,
    /// The global version (see [`StripedMap::version`]) that the mutation
    /// which wrote this value received.
    pub version: u64,
    /// Wall-clock time of that mutation, in nanoseconds since the Unix
    /// epoch (0 if the clock reads before the epoch). Informational only:
    /// the clock may step, so order mutations by `version`, not by this.
    pub modified_ns: u64,
}

/// What [`StripedMap::insert_or_assign`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    /// The key was absent and has been inserted.
    Inserted,
    /// The key was present and its value has been replaced.
    Replaced,
}

/// Errors of the mutating operations of [`StripedMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// Inserting a new key would exceed the map's entry limit.
    #[error("store full: the entry limit of {limit} is reached")]
    Full {
        /// The limit set with [`StripedMap::with_max_entries`].
        limit: usize,
    },
}

/// One stripe: a hash table of `(key, entry)` pairs behind a read-write lock,
/// on a cache line of its own.
type Stripe<K, V> = CachePadded<RwLock<HashTable<(K, Entry<V>)>>>;

/// A concurrent hash map split into lock stripes, with per-entry versions.
///
/// See the [module documentation](self) for the design.
pub struct StripedMap<K, V> {
    /// The stripes. The length is a power of two and equals `mask + 1`.
    stripes: Box<[Stripe<K, V>]>,
    /// Hashes keys; the same hash picks the stripe and the bucket.
    hasher: DefaultHashBuilder,
    /// `stripe = (hash >> shift) & mask`: `shift` puts the stripe bits just
    /// below the top [`TAG_BITS`] bits of the hash.
    shift: u32,
    /// `stripes.len() - 1`; masking with it keeps every index in bounds.
    mask: usize,
    /// The most entries the map accepts, `None` for no limit.
    max_entries: Option<usize>,
    /// The number of entries in all stripes together. Incremented (within
    /// the limit) before an insert and decremented after a removal, each
    /// while the stripe's write lock is held.
    len: AtomicUsize,
    /// The last version handed out; 0 means no mutation yet.
    version: AtomicU64,
}

impl<K: Eq + Hash + Copy, V: Copy> StripedMap<K, V> {
    /// Creates an empty map with room for `capacity` entries in total
    /// (spread over the stripes) and `stripes` stripes, without an entry
    /// limit.
    ///
    /// # Panics
    ///
    /// Panics if `stripes` is 0 or not a power of two.
    pub fn with_capacity_and_stripe_amount(capacity: usize, stripes: usize) -> Self {
        assert!(
            stripes.is_power_of_two(),
            "stripe amount must be a power of two, got {stripes}"
        );
        let bits = stripes.trailing_zeros();
        let per_stripe = capacity.div_ceil(stripes);
        let stripes: Box<[Stripe<K, V>]> = (0..stripes)
            .map(|_| CachePadded::new(RwLock::new(HashTable::with_capacity(per_stripe))))
            .collect();
        Self {
            mask: stripes.len() - 1,
            stripes,
            hasher: DefaultHashBuilder::default(),
            shift: (u64::BITS - TAG_BITS).saturating_sub(bits),
            max_entries: None,
            len: AtomicUsize::new(0),
            version: AtomicU64::new(0),
        }
    }

    /// Creates an empty map with [`DEFAULT_STRIPES`] stripes and no entry
    /// limit.
    pub fn new() -> Self {
        Self::with_capacity_and_stripe_amount(0, DEFAULT_STRIPES)
    }

    /// Sets the entry limit: once the map holds `limit` entries, inserting a
    /// new key fails with [`MapError::Full`]. `None` removes the limit.
    ///
    /// The limit applies to later inserts only; entries already in the map
    /// stay even if there are more of them.
    #[must_use]
    pub fn with_max_entries(mut self, limit: Option<usize>) -> Self {
        self.max_entries = limit;
        self
    }

    /// The entry limit, `None` if there is none.
    pub fn max_entries(&self) -> Option<usize> {
        self.max_entries
    }

    /// The number of stripes.
    pub fn stripes(&self) -> usize {
        self.stripes.len()
    }

    /// The index of the stripe that holds `key`, in `0..self.stripes()`.
    ///
    /// **Locking behaviour:** takes no lock.
    pub fn determine_stripe(&self, key: &K) -> usize {
        self.stripe_index(self.hash(key))
    }

    /// Returns a copy of the entry of `key`, or `None` if it is absent.
    ///
    /// **Locking behaviour:** takes the read lock of the key's stripe for the
    /// lookup and the copy. May deadlock if the calling thread holds a lock of
    /// that stripe, e.g. inside [`for_each_in_stripe`](Self::for_each_in_stripe).
    #[inline]
    pub fn get(&self, key: &K) -> Option<Entry<V>> {
        let hash = self.hash(key);
        let table = self.stripe(hash).read();
        table.find(hash, |(k, _)| k == key).map(|(_, entry)| *entry)
    }

    /// Sets `key` to `value` (SET, an upsert): inserts it if absent, replaces
    /// the value if present. Returns what happened and the version of this
    /// mutation, which is also stored in the entry.
    ///
    /// **Locking behaviour:** takes the write lock of the key's stripe. May
    /// deadlock if the calling thread holds a lock of that stripe.
    ///
    /// # Errors
    ///
    /// [`MapError::Full`] if `key` is absent and the map already holds
    /// [`max_entries`](Self::max_entries) entries. Replacing an existing key
    /// never fails. On error the map and its version are unchanged.
    pub fn insert_or_assign(&self, key: K, value: V) -> Result<(SetOutcome, u64), MapError> {
        self.insert_or_assign_then(key, value, |_, _| {})
    }

    /// [`insert_or_assign`](Self::insert_or_assign), calling `on_change` with
    /// the new entry while the stripe's write lock is still held, so that
    /// observers see the changes of one key in version order.
    ///
    /// **Locking behaviour:** as `insert_or_assign`; `on_change` must not
    /// touch the map.
    ///
    /// # Errors
    ///
    /// As [`insert_or_assign`](Self::insert_or_assign); `on_change` is not
    /// called on error.
    pub fn insert_or_assign_then(
        &self,
        key: K,
        value: V,
        on_change: impl FnOnce(&K, &Entry<V>),
    ) -> Result<(SetOutcome, u64), MapError> {
        // A replacing write always writes: `None` cannot come back, and the
        // fallback only keeps this function free of a panic path.
        self.write_then(key, value, true, on_change)
            .map(|written| written.unwrap_or((SetOutcome::Replaced, self.version())))
    }

    /// Inserts `key` with `value` only if `key` is absent (POST). Returns
    /// `Some(version)` of the insert, or `None` if the key was present, in
    /// which case nothing changes.
    ///
    /// **Locking behaviour:** takes the write lock of the key's stripe. May
    /// deadlock if the calling thread holds a lock of that stripe.
    ///
    /// # Errors
    ///
    /// [`MapError::Full`] if `key` is absent and the map already holds
    /// [`max_entries`](Self::max_entries) entries. A present key gives
    /// `Ok(None)`, even at the limit.
    pub fn insert_if_absent(&self, key: K, value: V) -> Result<Option<u64>, MapError> {
        self.insert_if_absent_then(key, value, |_, _| {})
    }

    /// [`insert_if_absent`](Self::insert_if_absent), calling `on_change`
    /// with the new entry under the stripe's write lock if it inserted.
    ///
    /// **Locking behaviour:** as `insert_if_absent`; `on_change` must not
    /// touch the map.
    ///
    /// # Errors
    ///
    /// As [`insert_if_absent`](Self::insert_if_absent).
    pub fn insert_if_absent_then(
        &self,
        key: K,
        value: V,
        on_change: impl FnOnce(&K, &Entry<V>),
    ) -> Result<Option<u64>, MapError> {
        Ok(self
            .write_then(key, value, false, on_change)?
            .map(|(_, version)| version))
    }

    /// SET (`replace`) and POST (not `replace`) in one: inserts `key` if
    /// absent, replaces its value if present and `replace`; `None` when it
    /// left a present key alone. `on_change` sees the new entry under the
    /// stripe's write lock.
    fn write_then(
        &self,
        key: K,
        value: V,
        replace: bool,
        on_change: impl FnOnce(&K, &Entry<V>),
    ) -> Result<Option<(SetOutcome, u64)>, MapError> {
        let hash = self.hash(&key);
        // Read the clock before taking the lock, to keep the critical section short.
        let modified_ns = crate::clock::unix_coarse_ns();
        let mut table = self.stripe(hash).write();
        let entry = |version| Entry {
            value,
            version,
            modified_ns,
        };
        match table.entry(hash, |(k, _)| *k == key, |(k, _)| self.hash(k)) {
            hash_table::Entry::Occupied(_) if !replace => Ok(None),
            hash_table::Entry::Occupied(mut occupied) => {
                let version = self.next_version();
                occupied.get_mut().1 = entry(version);
                on_change(&key, &occupied.get().1);
                Ok(Some((SetOutcome::Replaced, version)))
            }
            hash_table::Entry::Vacant(vacant) => {
                self.reserve_entry()?;
                let version = self.next_version();
                let inserted = vacant.insert((key, entry(version)));
                on_change(&key, &inserted.get().1);
                Ok(Some((SetOutcome::Inserted, version)))
            }
        }
    }

    /// Removes `key` (DEL). Returns the removed entry and the version of this
    /// delete, or `None` if the key was absent (the version is then
    /// unchanged).
    ///
    /// **Locking behaviour:** takes the write lock of the key's stripe. May
    /// deadlock if the calling thread holds a lock of that stripe.
    pub fn remove(&self, key: &K) -> Option<(Entry<V>, u64)> {
        self.remove_then(key, |_, _| {})
    }

    /// [`remove`](Self::remove), calling `on_change` with the key and the
    /// delete's version under the stripe's write lock if it removed.
    ///
    /// **Locking behaviour:** as `remove`; `on_change` must not touch the map.
    pub fn remove_then(&self, key: &K, on_change: impl FnOnce(&K, u64)) -> Option<(Entry<V>, u64)> {
        let hash = self.hash(key);
        let mut table = self.stripe(hash).write();
        let occupied = table.find_entry(hash, |(k, _)| k == key).ok()?;
        let ((_, entry), _) = occupied.remove();
        self.len.fetch_sub(1, Ordering::Relaxed);
        let version = self.next_version();
        on_change(key, version);
        Some((entry, version))
    }

    /// One page of a scan over all entries, in (stripe, hash) order.
    ///
    /// `after` is `None` to start, or the cursor a previous page returned.
    /// Calls `out` for up to `max` entries whose key passes `filter`, and
    /// returns the cursor of the next page, `None` when the scan is done.
    ///
    /// The cursor is the hash of the last entry returned: entries present
    /// for the whole scan are returned exactly once, whatever else changes,
    /// because the order does not depend on the tables' layout. Cursors are
    /// valid for the lifetime of this map (its hasher is seeded per map).
    ///
    /// **Locking behaviour:** holds one stripe's read lock at a time, while
    /// it collects and sorts that stripe's candidates; never blocks writers
    /// of other stripes.
    pub fn scan(
        &self,
        after: Option<u64>,
        max: usize,
        mut filter: impl FnMut(&K) -> bool,
        mut out: impl FnMut(&K, &Entry<V>),
    ) -> Option<u64> {
        let max = max.max(1);
        let mut stripe = after.map_or(0, |h| self.stripe_index(h));
        let mut emitted = 0usize;
        let mut last = None;
        let mut candidates: Vec<(u64, K, Entry<V>)> = Vec::new();
        while stripe < self.stripes.len() {
            candidates.clear();
            {
                let table = self.stripes[stripe].read();
                for (k, e) in table.iter() {
                    let h = self.hash(k);
                    if after.is_some_and(|a| self.stripe_index(a) == stripe && h <= a) {
                        continue;
                    }
                    if filter(k) {
                        candidates.push((h, *k, *e));
                    }
                }
            }
            candidates.sort_unstable_by_key(|c| c.0);
            for (h, k, e) in &candidates {
                if emitted == max {
                    // More remain: resume after the last one emitted.
                    return last;
                }
                out(k, e);
                emitted += 1;
                last = Some(*h);
            }
            stripe += 1;
        }
        None
    }

    /// A point-in-time copy of every entry, with the global version at that
    /// moment.
    ///
    /// **Locking behaviour:** takes every stripe's read lock (in index
    /// order, so it cannot deadlock with itself), copies, then releases
    /// them: writers wait for the copy only.
    pub fn snapshot(&self) -> (Vec<(K, Entry<V>)>, u64) {
        let guards: Vec<_> = self.stripes.iter().map(|s| s.read()).collect();
        let version = self.version();
        let mut all = Vec::with_capacity(guards.iter().map(|g| g.len()).sum());
        for g in &guards {
            all.extend(g.iter().map(|(k, e)| (*k, *e)));
        }
        drop(guards);
        (all, version)
    }

    /// The number of entries.
    ///
    /// **Locking behaviour:** takes no lock. While other threads insert or
    /// remove, the result is a recent value, not a snapshot of all stripes.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the map holds no entries. Same caveat as [`len`](Self::len).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The global version: the version of the latest successful mutation
    /// (0 for a new map), or the value given to
    /// [`set_version_at_least`](Self::set_version_at_least) or
    /// [`insert_entry`](Self::insert_entry) if that is larger.
    ///
    /// Every successful [`insert_or_assign`](Self::insert_or_assign), every
    /// [`insert_if_absent`](Self::insert_if_absent) that inserted and every
    /// [`remove`](Self::remove) that removed increments it by one.
    /// [`clear`](Self::clear) does not change it.
    ///
    /// **Locking behaviour:** takes no lock.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// Raises the global version to at least `version`, so that later
    /// mutations get larger versions. Used when restoring a snapshot.
    ///
    /// **Locking behaviour:** takes no lock.
    pub fn set_version_at_least(&self, version: u64) {
        self.version.fetch_max(version, Ordering::Relaxed);
    }

    /// Stores `entry` for `key` as it is, keeping its version and
    /// timestamp, and replacing any entry of `key`. Raises the global
    /// version to at least `entry.version`.
    ///
    /// This is the restore path for loading a snapshot at startup: it
    /// ignores the entry limit and does not take a new version.
    ///
    /// **Locking behaviour:** takes the write lock of the key's stripe. May
    /// deadlock if the calling thread holds a lock of that stripe.
    pub fn insert_entry(&self, key: K, entry: Entry<V>) {
        let hash = self.hash(&key);
        let mut table = self.stripe(hash).write();
        match table.entry(hash, |(k, _)| *k == key, |(k, _)| self.hash(k)) {
            hash_table::Entry::Occupied(mut occupied) => occupied.get_mut().1 = entry,
            hash_table::Entry::Vacant(vacant) => {
                self.len.fetch_add(1, Ordering::Relaxed);
                vacant.insert((key, entry));
            }
        }
        self.set_version_at_least(entry.version);
    }

    /// Calls `f` on every entry of stripe `stripe`, in no particular order.
    ///
    /// Calling it for every index in `0..self.stripes()` visits every entry
    /// of the map exactly once, provided nothing is inserted or removed in
    /// between; each stripe is seen in a consistent state.
    ///
    /// **Locking behaviour:** holds the read lock of that stripe while `f`
    /// runs, and no other lock. Writers to that stripe wait until it returns,
    /// so keep `f` short. `f` must not call back into the map for a key of
    /// the same stripe: a write deadlocks, and so can a read while a writer
    /// is queued (parking_lot's locks are fair).
    ///
    /// # Panics
    ///
    /// Panics if `stripe >= self.stripes()`.
    pub fn for_each_in_stripe(&self, stripe: usize, mut f: impl FnMut(&K, &Entry<V>)) {
        assert!(
            stripe < self.stripes.len(),
            "stripe index {stripe} is out of range for {} stripes",
            self.stripes.len()
        );
        let table = self.stripes[stripe].read();
        for (key, entry) in table.iter() {
            f(key, entry);
        }
    }

    /// Removes all entries. Keeps the allocated capacity and does not change
    /// the global version.
    ///
    /// **Locking behaviour:** takes the write lock of each stripe in turn,
    /// one at a time, so it is not atomic: a concurrent insert into a stripe
    /// that was already cleared survives.
    pub fn clear(&self) {
        for stripe in self.stripes.iter() {
            let mut table = stripe.write();
            let removed = table.len();
            table.clear();
            self.len.fetch_sub(removed, Ordering::Relaxed);
        }
    }

    /// Hashes `key` with the map's hasher; the only place keys are hashed.
    #[inline]
    fn hash(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The stripe index for a hash: the bits just below the top
    /// [`TAG_BITS`] bits.
    #[inline]
    fn stripe_index(&self, hash: u64) -> usize {
        // Truncating to usize is fine: the mask keeps fewer bits than that.
        (hash >> self.shift) as usize & self.mask
    }

    /// The stripe for a hash.
    #[inline]
    fn stripe(&self, hash: u64) -> &RwLock<HashTable<(K, Entry<V>)>> {
        let index = self.stripe_index(hash);
        debug_assert!(index < self.stripes.len());
        // SAFETY: `index` was masked with `self.mask`, which is
        // `self.stripes.len() - 1` with a power-of-two length (both set in
        // `with_capacity_and_stripe_amount` and never changed), so
        // `index < self.stripes.len()`.
        unsafe { self.stripes.get_unchecked(index) }
    }

    /// Counts a new entry before it is inserted, within the limit. Called
    /// with the stripe's write lock held.
    fn reserve_entry(&self) -> Result<(), MapError> {
        // Relaxed: `len` is a counter on its own; it publishes no data. The
        // read-modify-write still makes the limit check exact across
        // stripes.
        match self.max_entries {
            None => {
                self.len.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Some(limit) => self
                .len
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < limit).then_some(n + 1)
                })
                .map(drop)
                .map_err(|_| MapError::Full { limit }),
        }
    }

    /// Takes the next global version. Called with the stripe's write lock
    /// held, which is what makes one key's versions increase in the order
    /// of its mutations.
    fn next_version(&self) -> u64 {
        // Relaxed is enough: all read-modify-writes of one atomic form one
        // total order, so every caller gets a distinct value. For two
        // mutations of the same key, the stripe lock's release/acquire
        // orders the first fetch_add before the second, so the second reads
        // a later value (coherence) and its version is larger.
        self.version.fetch_add(1, Ordering::Relaxed) + 1
    }
}

impl<K: Eq + Hash + Copy, V: Copy> Default for StripedMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> fmt::Debug for StripedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripedMap")
            .field("len", &self.len.load(Ordering::Relaxed))
            .field("stripes", &self.stripes.len())
            .field("max_entries", &self.max_entries)
            .field("version", &self.version.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod scan_tests {
    use super::*;
    use std::collections::HashSet;

    fn scan_all(
        map: &StripedMap<u64, u64>,
        page: usize,
        filter: impl Fn(&u64) -> bool + Copy,
    ) -> Vec<u64> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            cursor = map.scan(cursor, page, filter, |k, _| keys.push(*k));
            if cursor.is_none() {
                return keys;
            }
        }
    }

    #[test]
    fn scan_pages_cover_every_entry_exactly_once() {
        let map = StripedMap::<u64, u64>::with_capacity_and_stripe_amount(0, 8);
        for k in 0..1000 {
            map.insert_or_assign(k, k).unwrap();
        }
        for page in [1, 7, 100, 5000] {
            let keys = scan_all(&map, page, |_| true);
            assert_eq!(keys.len(), 1000, "page {page}");
            assert_eq!(keys.iter().collect::<HashSet<_>>().len(), 1000);
        }
        let even = scan_all(&map, 13, |k| k % 2 == 0);
        assert_eq!(even.len(), 500);
    }

    #[test]
    fn scan_survives_concurrent_changes_for_stable_entries() {
        let map = StripedMap::<u64, u64>::with_capacity_and_stripe_amount(0, 4);
        for k in 0..500 {
            map.insert_or_assign(k, k).unwrap();
        }
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut round = 0u64;
        loop {
            cursor = map.scan(cursor, 50, |_| true, |k, _| seen.push(*k));
            // Churn keys >= 1000 between pages; keys < 500 stay put.
            for i in 0..100 {
                map.insert_or_assign(1000 + round * 100 + i, 0).unwrap();
                map.remove(&(1000 + round * 100 + i / 2));
            }
            round += 1;
            if cursor.is_none() {
                break;
            }
        }
        let stable: Vec<_> = seen.iter().filter(|k| **k < 500).collect();
        assert_eq!(stable.len(), 500);
        assert_eq!(stable.iter().collect::<HashSet<_>>().len(), 500);
    }

    #[test]
    fn snapshot_copies_everything_with_the_version() {
        let map = StripedMap::<u64, u64>::new();
        for k in 0..100 {
            map.insert_or_assign(k, k * 3).unwrap();
        }
        let (all, version) = map.snapshot();
        assert_eq!(all.len(), 100);
        assert_eq!(version, 100);
        assert!(all.iter().all(|(k, e)| e.value == k * 3));
    }

    #[test]
    fn change_hooks_run_only_on_change() {
        let map = StripedMap::<u64, u64>::new();
        let mut calls = Vec::new();
        map.insert_or_assign_then(1, 10, |k, e| calls.push((*k, e.version)))
            .unwrap();
        map.insert_if_absent_then(1, 11, |k, e| calls.push((*k, e.version)))
            .unwrap();
        map.insert_if_absent_then(2, 20, |k, e| calls.push((*k, e.version)))
            .unwrap();
        map.remove_then(&3, |k, v| calls.push((*k, v)));
        map.remove_then(&1, |k, v| calls.push((*k, v)));
        assert_eq!(calls, vec![(1, 1), (2, 2), (1, 3)]);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::Barrier;
    use std::thread;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn new_map_is_empty_with_default_stripes() {
        let map: StripedMap<u64, u64> = StripedMap::new();
        assert!(map.is_empty());
        assert_eq!(map.len(), 0);
        assert_eq!(map.stripes(), DEFAULT_STRIPES);
        assert_eq!(map.version(), 0);
        assert_eq!(map.max_entries(), None);
        assert_eq!(map.get(&1), None);
    }

    #[test]
    fn default_is_new() {
        let map: StripedMap<u64, u64> = StripedMap::default();
        assert_eq!(map.stripes(), DEFAULT_STRIPES);
        assert!(map.is_empty());
    }

    #[test]
    fn with_capacity_and_stripe_amount_sets_stripes() {
        for stripes in [1, 2, 8, 256] {
            let map: StripedMap<u64, u64> =
                StripedMap::with_capacity_and_stripe_amount(1000, stripes);
            assert_eq!(map.stripes(), stripes);
            for key in 0..100 {
                map.insert_or_assign(key, key).unwrap();
            }
            for key in 0..100 {
                assert_eq!(map.get(&key).unwrap().value, key);
            }
        }
    }

    #[test]
    #[should_panic(expected = "stripe amount must be a power of two")]
    fn zero_stripes_panics() {
        let _ = StripedMap::<u64, u64>::with_capacity_and_stripe_amount(0, 0);
    }

    #[test]
    #[should_panic(expected = "stripe amount must be a power of two")]
    fn non_power_of_two_stripes_panics() {
        let _ = StripedMap::<u64, u64>::with_capacity_and_stripe_amount(0, 3);
    }

    #[test]
    fn determine_stripe_is_stable_and_in_range() {
        let map: StripedMap<u64, u64> = StripedMap::with_capacity_and_stripe_amount(0, 16);
        let mut seen = HashSet::new();
        for key in 0..1000 {
            let stripe = map.determine_stripe(&key);
            assert!(stripe < 16);
            assert_eq!(stripe, map.determine_stripe(&key));
            seen.insert(stripe);
        }
        // 1000 keys over 16 stripes: all stripes get some.
        assert_eq!(seen.len(), 16);
    }

    #[test]
    fn determine_stripe_matches_for_each_in_stripe() {
        let map: StripedMap<u64, u64> = StripedMap::with_capacity_and_stripe_amount(0, 8);
        for key in 0..200 {
            map.insert_or_assign(key, key).unwrap();
        }
        for stripe in 0..map.stripes() {
            map.for_each_in_stripe(stripe, |key, _| {
                assert_eq!(map.determine_stripe(key), stripe);
            });
        }
    }

    #[test]
    fn get_returns_value_version_and_timestamp() {
        let map = StripedMap::new();
        let before = crate::clock::unix_coarse_ns();
        let (_, version) = map.insert_or_assign(7_u64, 70_u64).unwrap();
        let after = crate::clock::unix_coarse_ns();
        let entry = map.get(&7).unwrap();
        assert_eq!(entry.value, 70);
        assert_eq!(entry.version, version);
        assert!(before <= entry.modified_ns && entry.modified_ns <= after);
        assert_eq!(map.get(&8), None);
    }

    #[test]
    fn insert_or_assign_inserts_then_replaces() {
        let map = StripedMap::new();
        let (outcome, v1) = map.insert_or_assign(1_u64, 10_u64).unwrap();
        assert_eq!(outcome, SetOutcome::Inserted);
        assert_eq!(map.len(), 1);
        let (outcome, v2) = map.insert_or_assign(1, 11).unwrap();
        assert_eq!(outcome, SetOutcome::Replaced);
        assert_eq!(map.len(), 1);
        assert_eq!(v2, v1 + 1);
        let entry = map.get(&1).unwrap();
        assert_eq!((entry.value, entry.version), (11, v2));
    }

    #[test]
    fn insert_if_absent_inserts_only_new_keys() {
        let map = StripedMap::new();
        let version = map.insert_if_absent(1_u64, 10_u64).unwrap().unwrap();
        assert_eq!(map.version(), version);
        assert_eq!(map.insert_if_absent(1, 99), Ok(None));
        // The failed post changed neither the value nor the version.
        assert_eq!(map.version(), version);
        let entry = map.get(&1).unwrap();
        assert_eq!((entry.value, entry.version), (10, version));
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn remove_returns_entry_and_delete_version() {
        let map = StripedMap::new();
        let (_, set_version) = map.insert_or_assign(1_u64, 10_u64).unwrap();
        let (entry, delete_version) = map.remove(&1).unwrap();
        assert_eq!((entry.value, entry.version), (10, set_version));
        assert_eq!(delete_version, set_version + 1);
        assert_eq!(map.version(), delete_version);
        assert!(map.is_empty());
        assert_eq!(map.get(&1), None);
    }

    #[test]
    fn remove_of_absent_key_changes_nothing() {
        let map: StripedMap<u64, u64> = StripedMap::new();
        map.insert_or_assign(1, 10).unwrap();
        let version = map.version();
        assert_eq!(map.remove(&2), None);
        assert_eq!(map.version(), version);
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn len_counts_inserts_and_removes() {
        let map: StripedMap<u64, u64> = StripedMap::with_capacity_and_stripe_amount(0, 4);
        for key in 0..100 {
            map.insert_or_assign(key, 0).unwrap();
        }
        for key in 0..100 {
            map.insert_or_assign(key, 1).unwrap();
        }
        assert_eq!(map.len(), 100);
        for key in 0..40 {
            map.remove(&key).unwrap();
        }
        assert_eq!(map.len(), 60);
        assert!(!map.is_empty());
    }

    #[test]
    fn version_increments_once_per_successful_mutation() {
        let map: StripedMap<u64, u64> = StripedMap::new();
        let mut last = map.version();
        let mut expect_bump = |map: &StripedMap<u64, u64>, version: u64| {
            assert_eq!(version, last + 1);
            assert_eq!(map.version(), version);
            last = version;
        };
        let (_, v) = map.insert_or_assign(1, 1).unwrap();
        expect_bump(&map, v);
        let (_, v) = map.insert_or_assign(1, 2).unwrap();
        expect_bump(&map, v);
        let v = map.insert_if_absent(2, 2).unwrap().unwrap();
        expect_bump(&map, v);
        let (_, v) = map.remove(&1).unwrap();
        expect_bump(&map, v);
        // Unsuccessful ones leave it alone.
        assert_eq!(map.insert_if_absent(2, 3), Ok(None));
        assert_eq!(map.remove(&1), None);
        assert_eq!(map.get(&2).unwrap().value, 2);
        assert_eq!(map.version(), v);
    }

    #[test]
    fn set_version_at_least_only_raises() {
        let map: StripedMap<u64, u64> = StripedMap::new();
        map.set_version_at_least(100);
        assert_eq!(map.version(), 100);
        map.set_version_at_least(50);
        assert_eq!(map.version(), 100);
        let (_, version) = map.insert_or_assign(1, 1).unwrap();
        assert_eq!(version, 101);
    }

    #[test]
    fn insert_entry_keeps_version_and_timestamp() {
        let map: StripedMap<u64, u64> = StripedMap::new().with_max_entries(Some(1));
        let entry = Entry {
            value: 5,
            version: 42,
            modified_ns: 1234,
        };
        map.insert_entry(1, entry);
        assert_eq!(map.get(&1), Some(entry));
        assert_eq!(map.version(), 42);
        // Ignores the limit, and replaces an existing key.
        let older = Entry {
            value: 6,
            version: 7,
            modified_ns: 99,
        };
        map.insert_entry(2, older);
        map.insert_entry(1, older);
        assert_eq!(map.len(), 2);
        assert_eq!(map.get(&1), Some(older));
        assert_eq!(map.version(), 42);
        assert_eq!(map.insert_or_assign(1, 0).unwrap().1, 43);
    }

    #[test]
    fn limit_refuses_new_keys_when_full() {
        let map: StripedMap<u64, u64> = StripedMap::new().with_max_entries(Some(2));
        assert_eq!(map.max_entries(), Some(2));
        map.insert_or_assign(1, 1).unwrap();
        map.insert_or_assign(2, 2).unwrap();
        let version = map.version();
        assert_eq!(map.insert_or_assign(3, 3), Err(MapError::Full { limit: 2 }));
        assert_eq!(map.insert_if_absent(3, 3), Err(MapError::Full { limit: 2 }));
        assert_eq!(map.get(&3), None);
        assert_eq!(map.len(), 2);
        assert_eq!(map.version(), version);
    }

    #[test]
    fn limit_allows_replace_and_post_of_existing_key_when_full() {
        let map: StripedMap<u64, u64> = StripedMap::new().with_max_entries(Some(1));
        map.insert_or_assign(1, 1).unwrap();
        assert_eq!(map.insert_or_assign(1, 2).unwrap().0, SetOutcome::Replaced);
        assert_eq!(map.insert_if_absent(1, 3), Ok(None));
        assert_eq!(map.get(&1).unwrap().value, 2);
    }

    #[test]
    fn limit_frees_room_after_remove() {
        let map: StripedMap<u64, u64> = StripedMap::new().with_max_entries(Some(1));
        map.insert_if_absent(1, 1).unwrap().unwrap();
        map.remove(&1).unwrap();
        assert!(map.insert_if_absent(2, 2).unwrap().is_some());
    }

    #[test]
    fn limit_of_zero_refuses_everything() {
        let map: StripedMap<u64, u64> = StripedMap::new().with_max_entries(Some(0));
        assert_eq!(map.insert_or_assign(1, 1), Err(MapError::Full { limit: 0 }));
    }

    #[test]
    fn full_error_message_names_the_limit() {
        assert_eq!(
            MapError::Full { limit: 10 }.to_string(),
            "store full: the entry limit of 10 is reached"
        );
    }

    #[test]
    fn with_max_entries_none_removes_limit() {
        let map: StripedMap<u64, u64> = StripedMap::new()
            .with_max_entries(Some(1))
            .with_max_entries(None);
        assert_eq!(map.max_entries(), None);
        map.insert_or_assign(1, 1).unwrap();
        map.insert_or_assign(2, 2).unwrap();
    }

    #[test]
    fn for_each_in_stripe_visits_every_entry_exactly_once() {
        let map: StripedMap<u64, u64> = StripedMap::with_capacity_and_stripe_amount(0, 16);
        for key in 0..1000 {
            map.insert_or_assign(key, key * 2).unwrap();
        }
        let mut visits = vec![0_u32; 1000];
        for stripe in 0..map.stripes() {
            map.for_each_in_stripe(stripe, |key, entry| {
                assert_eq!(entry.value, key * 2);
                visits[*key as usize] += 1;
            });
        }
        assert!(visits.iter().all(|&n| n == 1));
    }

    #[test]
    #[should_panic(expected = "stripe index 4 is out of range for 4 stripes")]
    fn for_each_in_stripe_out_of_range_panics() {
        let map: StripedMap<u64, u64> = StripedMap::with_capacity_and_stripe_amount(0, 4);
        map.for_each_in_stripe(4, |_, _| {});
    }

    #[test]
    fn clear_removes_everything_and_keeps_version() {
        let map: StripedMap<u64, u64> = StripedMap::new().with_max_entries(Some(10));
        for key in 0..10 {
            map.insert_or_assign(key, key).unwrap();
        }
        let version = map.version();
        map.clear();
        assert!(map.is_empty());
        assert_eq!(map.get(&3), None);
        assert_eq!(map.version(), version);
        // The room is free again.
        for key in 10..20 {
            map.insert_or_assign(key, key).unwrap();
        }
    }

    #[test]
    fn debug_shows_len_and_stripes() {
        let map: StripedMap<u64, u64> = StripedMap::with_capacity_and_stripe_amount(0, 4);
        map.insert_or_assign(1, 1).unwrap();
        let text = format!("{map:?}");
        assert!(text.contains("len: 1"), "{text}");
        assert!(text.contains("stripes: 4"), "{text}");
    }

    #[test]
    fn threads_inserting_disjoint_keys_all_land() {
        const THREADS: u64 = 4;
        const PER_THREAD: u64 = 2_000;
        let map: StripedMap<u64, u64> = StripedMap::with_capacity_and_stripe_amount(0, 8);
        let barrier = Barrier::new(THREADS as usize);
        thread::scope(|s| {
            for t in 0..THREADS {
                let (map, barrier) = (&map, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    for i in 0..PER_THREAD {
                        let key = t * PER_THREAD + i;
                        assert!(map.insert_if_absent(key, key).unwrap().is_some());
                    }
                    for i in (0..PER_THREAD).step_by(2) {
                        let key = t * PER_THREAD + i;
                        assert_eq!(map.remove(&key).unwrap().0.value, key);
                    }
                });
            }
        });
        assert_eq!(map.len(), (THREADS * PER_THREAD / 2) as usize);
        for key in 0..THREADS * PER_THREAD {
            assert_eq!(
                map.get(&key).map(|e| e.value),
                (key % 2 == 1).then_some(key)
            );
        }
        // 1 insert + 1 remove per even key, 1 insert per odd key.
        assert_eq!(map.version(), THREADS * PER_THREAD * 3 / 2);
    }

    #[test]
    fn threads_mutating_shared_keys_get_unique_increasing_versions() {
        const THREADS: usize = 4;
        const OPS: u64 = 2_000;
        const KEYS: u64 = 8;
        let map: StripedMap<u64, u64> = StripedMap::with_capacity_and_stripe_amount(0, 4);
        let barrier = Barrier::new(THREADS);
        let per_thread: Vec<Vec<u64>> = thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (map, barrier) = (&map, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let mut versions = Vec::new();
                        for i in 0..OPS {
                            let key = (i + t as u64) % KEYS;
                            match i % 3 {
                                0 | 1 => versions.push(map.insert_or_assign(key, i).unwrap().1),
                                _ => versions.extend(map.remove(&key).map(|(_, v)| v)),
                            }
                            // A reader sees a version no larger than the global one.
                            if let Some(entry) = map.get(&key) {
                                assert!(entry.version <= map.version());
                            }
                        }
                        versions
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for versions in &per_thread {
            // Each thread's mutations come one after the other, so its
            // versions strictly increase.
            assert!(versions.windows(2).all(|w| w[0] < w[1]));
        }
        let mut all: Vec<u64> = per_thread.into_iter().flatten().collect();
        let count = all.len() as u64;
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len() as u64, count, "versions must be unique");
        assert_eq!(map.version(), count);
        assert_eq!(all.last().copied(), Some(count));
    }

    #[test]
    fn threads_respect_the_limit_together() {
        const THREADS: u64 = 4;
        const LIMIT: usize = 100;
        let map: StripedMap<u64, u64> =
            StripedMap::with_capacity_and_stripe_amount(0, 8).with_max_entries(Some(LIMIT));
        let barrier = Barrier::new(THREADS as usize);
        let inserted: usize = thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (map, barrier) = (&map, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        (0..100)
                            .filter(|i| map.insert_or_assign(t * 1000 + i, 0).is_ok())
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(inserted, LIMIT);
        assert_eq!(map.len(), LIMIT);
    }

    /// One operation of the model test.
    #[derive(Debug, Clone)]
    enum Op {
        Get(u8),
        Set(u8, u32),
        Post(u8, u32),
        Del(u8),
        Len,
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        // A small key space, so that keys collide often.
        let key = 0_u8..12;
        prop_oneof![
            key.clone().prop_map(Op::Get),
            (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::Set(k, v)),
            (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::Post(k, v)),
            key.prop_map(Op::Del),
            Just(Op::Len),
        ]
    }

    /// Checks that `version` is larger than `*last` and makes it the new last.
    fn advance(last: &mut u64, version: u64) -> Result<(), TestCaseError> {
        prop_assert!(version > *last, "version {} after {}", version, *last);
        *last = version;
        Ok(())
    }

    proptest! {
        #[test]
        fn behaves_like_a_hash_map(
            ops in prop::collection::vec(op_strategy(), 1..200),
            limit in prop::option::of(0_usize..10),
            stripes in prop::sample::select(vec![1_usize, 2, 4, 16]),
        ) {
            let map: StripedMap<u8, u32> =
                StripedMap::with_capacity_and_stripe_amount(0, stripes).with_max_entries(limit);
            // The model: key -> (value, version).
            let mut model: HashMap<u8, (u32, u64)> = HashMap::new();
            let mut last_version = 0_u64;
            let full = |model: &HashMap<u8, (u32, u64)>| limit.is_some_and(|l| model.len() >= l);
            for op in ops {
                match op {
                    Op::Get(k) => {
                        let got = map.get(&k).map(|e| (e.value, e.version));
                        prop_assert_eq!(got, model.get(&k).copied());
                    }
                    Op::Set(k, v) => {
                        let result = map.insert_or_assign(k, v);
                        if model.contains_key(&k) {
                            let (outcome, version) = result.unwrap();
                            prop_assert_eq!(outcome, SetOutcome::Replaced);
                            advance(&mut last_version, version)?;
                            model.insert(k, (v, version));
                        } else if full(&model) {
                            prop_assert_eq!(result, Err(MapError::Full { limit: limit.unwrap() }));
                        } else {
                            let (outcome, version) = result.unwrap();
                            prop_assert_eq!(outcome, SetOutcome::Inserted);
                            advance(&mut last_version, version)?;
                            model.insert(k, (v, version));
                        }
                    }
                    Op::Post(k, v) => {
                        let result = map.insert_if_absent(k, v);
                        if model.contains_key(&k) {
                            prop_assert_eq!(result, Ok(None));
                        } else if full(&model) {
                            prop_assert_eq!(result, Err(MapError::Full { limit: limit.unwrap() }));
                        } else {
                            let version = result.unwrap().unwrap();
                            advance(&mut last_version, version)?;
                            model.insert(k, (v, version));
                        }
                    }
                    Op::Del(k) => {
                        let got = map.remove(&k);
                        match model.remove(&k) {
                            Some((value, version)) => {
                                let (entry, delete_version) = got.unwrap();
                                prop_assert_eq!((entry.value, entry.version), (value, version));
                                advance(&mut last_version, delete_version)?;
                            }
                            None => prop_assert!(got.is_none()),
                        }
                    }
                    Op::Len => {
                        prop_assert_eq!(map.len(), model.len());
                        prop_assert_eq!(map.is_empty(), model.is_empty());
                    }
                }
                prop_assert_eq!(map.version(), last_version);
            }
            // Listing all stripes gives exactly the model.
            let mut listed = HashMap::new();
            for stripe in 0..map.stripes() {
                map.for_each_in_stripe(stripe, |k, e| {
                    assert!(listed.insert(*k, (e.value, e.version)).is_none());
                });
            }
            prop_assert_eq!(listed, model);
        }
    }
}
