//! Key subscriptions: per-subscriber notification queues in the region.
//!
//! A subscriber claims one of a few subscription entries, writes the keys it
//! wants (or "all keys") and marks it active. When a worker changes a key it
//! checks the active entries (one load when there are none) and pushes a
//! change event into the matching subscribers' queues. The push happens
//! while the worker still holds the key's stripe lock, so the events of one
//! key reach every queue in version order.
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
//!   its cell field by field, and publish it by storing the cell's sequence
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
//!   the current `tail` and drops any event tagged with an older generation,
//!   so nothing wedges.
//!
//! So the subscriber sees every event up to a loss, in order, then the loss
//! ("missed events, resync"), then events again.
//!
//! Entries use the packed `generation | owner | state` word of the response
//! slots; every event carries its entry's generation, so an event pushed for
//! a previous subscriber of the entry is dropped by the next one. The
//! housekeeper frees the entries of dead owners.
//!
//! Waking uses the entry's [`EventCount`]: the subscriber announces
//! itself, re-checks its next cell and the overflow flag, and sleeps; a
//! publisher makes the cell (or the flag) visible with a `SeqCst` store,
//! then notifies, which makes a syscall only when the subscriber waits.
//!
//! Everything here is read from memory other processes write: indices are
//! reduced by the mask, counts clamped, and keys and values are `Pod`, so a
//! scribbled queue yields wrong events, never a hang or undefined
//! behaviour.

use crate::sync::{AtomicU32, AtomicU64, Ordering, UnsafeCell};
use crate::wait::{EventCount, Parker};
use crate::word::{pack, try_claim, unpack};
use bytemuck::Pod;
use std::fmt;
use std::marker::PhantomData;

use std::time::Duration;

/// Most keys one subscription may name (more: subscribe to all keys).
pub const MAX_SUB_KEYS: usize = 32;

/// Tries a worker makes to reserve a queue position against other workers
/// before it counts the event as lost.
const RESERVE_TRIES: u32 = 64;

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
#[repr(u32)]
pub enum EventKind {
    /// A key was set or inserted.
    Changed = 1,
    /// A key was deleted.
    Deleted = 2,
}

impl TryFrom<u32> for EventKind {
    type Error = u32;

    fn try_from(v: u32) -> Result<Self, u32> {
        match v {
            1 => Ok(EventKind::Changed),
            2 => Ok(EventKind::Deleted),
            other => Err(other),
        }
    }
}

/// One change event, as a subscriber receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event<K, V> {
    /// What happened.
    pub kind: EventKind,
    /// The version of the change.
    pub version: u64,
    /// When the change was made, unix nanoseconds (deletes: 0).
    pub modified_ns: u64,
    /// The key.
    pub key: K,
    /// The new value (changes only).
    pub value: V,
}

/// One queue cell in the region.
#[repr(C)]
struct Cell<K, V> {
    /// `p + 1` once the event of position `p` is written.
    seq: AtomicU64,
    kind: UnsafeCell<u32>,
    generation: UnsafeCell<u32>,
    version: UnsafeCell<u64>,
    modified_ns: UnsafeCell<u64>,
    key: UnsafeCell<K>,
    value: UnsafeCell<V>,
}

/// The fixed part of a subscription entry; its queue's cells follow.
#[repr(C)]
#[derive(Debug)]
pub struct SubHeader<K> {
    word: AtomicU64,
    all_keys: AtomicU32,
    key_count: AtomicU32,
    /// 1 once a push failed; cleared by the subscriber after it reported it.
    overflow: AtomicU32,
    /// The subscriber waits on it; publishers notify it after a push.
    ec: EventCount,
    _reserved: AtomicU32,
    /// Next position to poll (written by the subscriber).
    head: AtomicU64,
    /// Next position to reserve (written by the workers).
    tail: AtomicU64,
    keys: UnsafeCell<[K; MAX_SUB_KEYS]>,
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

/// What a subscriber's poll found.
#[derive(Debug, Clone, Copy)]
pub enum Notice<K, V> {
    /// A change, in order.
    Event(Event<K, V>),
    /// Events were lost (the queue overflowed): resync.
    Missed,
}

/// Bytes from an entry's start to its first queue cell.
pub fn cells_offset<K>() -> usize {
    std::mem::size_of::<SubHeader<K>>().next_multiple_of(128)
}

/// Bytes of one entry with a queue of `capacity` cells.
pub fn stride<K, V>(capacity: usize) -> usize {
    (cells_offset::<K>() + capacity * std::mem::size_of::<Cell<K, V>>()).next_multiple_of(128)
}

/// A view of the subscription entries in a region.
///
/// Keys and values must be `Pod` (events are read back from memory other
/// processes write):
///
/// ```compile_fail
/// use kvs_core::notify::SubTable;
/// fn poll(t: &SubTable<'_, char, u64>, c: &kvs_core::notify::SubClaim) {
///     let _ = t.poll(c); // char is not Pod
/// }
/// ```
pub struct SubTable<'a, K, V> {
    base: *const u8,
    count: usize,
    capacity: usize,
    active: &'a AtomicU32,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> fmt::Debug for SubTable<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubTable")
            .field("count", &self.count)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<'a, K: Pod, V: Pod> SubTable<'a, K, V> {
    /// Wraps `count` entries with queues of `capacity` cells at `base`;
    /// `active` counts active subscriptions (a word in the region header).
    ///
    /// # Safety
    ///
    /// `base` points to `count * stride::<K, V>(capacity)` bytes, 128-aligned,
    /// inside a mapping that outlives `'a`, laid out by this module and
    /// initialised with [`SubTable::init`] (or zero-filled and then `init`);
    /// `capacity` is a power of two; `K` and `V` have alignments of at most
    /// 64.
    pub unsafe fn from_raw(
        base: *const u8,
        count: usize,
        capacity: usize,
        active: &'a AtomicU32,
    ) -> Self {
        debug_assert!(capacity.is_power_of_two());
        Self {
            base,
            count,
            capacity,
            active,
            _types: PhantomData,
        }
    }

    /// Number of entries.
    pub fn count(&self) -> usize {
        self.count
    }

    fn header(&self, index: u32) -> Option<&SubHeader<K>> {
        if index as usize >= self.count {
            return None;
        }
        // SAFETY: in bounds (checked), 128-aligned; atomics and UnsafeCell only.
        Some(unsafe {
            &*(self
                .base
                .add(index as usize * stride::<K, V>(self.capacity))
                as *const SubHeader<K>)
        })
    }

    fn cell(&self, index: u32, pos: u64) -> &Cell<K, V> {
        let i = (pos as usize) & (self.capacity - 1);
        // SAFETY: `index` was checked by `header` (every caller got a header
        // first); the cell is inside the entry's stride (`i < capacity`),
        // aligned (the cells start 128-aligned and `Cell` is `repr(C)` of
        // fields of alignment at most 64); atomics and UnsafeCell only.
        unsafe {
            &*(self.base.add(
                index as usize * stride::<K, V>(self.capacity)
                    + cells_offset::<K>()
                    + i * std::mem::size_of::<Cell<K, V>>(),
            ) as *const Cell<K, V>)
        }
    }

    /// Initialises every entry (the server, before "ready").
    pub fn init(&self) {
        for i in 0..self.count as u32 {
            if let Some(h) = self.header(i) {
                h.word.store(0, Ordering::Relaxed);
                h.head.store(0, Ordering::Relaxed);
                h.tail.store(0, Ordering::Relaxed);
                for p in 0..self.capacity as u64 {
                    self.cell(i, p).seq.store(0, Ordering::Relaxed);
                }
            }
        }
        self.active.store(0, Ordering::Relaxed);
    }

    /// Ends a subscription.
    pub fn unsubscribe(&self, claim: &SubClaim) {
        if let Some(h) = self.header(claim.index) {
            if h.word
                .compare_exchange(
                    pack(claim.generation, claim.owner, EntryState::Active as u32),
                    pack(claim.generation, claim.owner, EntryState::Free as u32),
                    Ordering::Release,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                self.active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Subscriber side: the next notice, if any. Never waits.
    pub fn poll(&self, claim: &SubClaim) -> Option<Notice<K, V>> {
        let h = self.header(claim.index)?;
        // A bounded pass over events left for a previous subscriber.
        for _ in 0..=self.capacity {
            let head = h.head.load(Ordering::Relaxed);
            let cell = self.cell(claim.index, head);
            // Acquire pairs with the producer's Release store of `seq`.
            if cell.seq.load(Ordering::Acquire) != head.wrapping_add(1) {
                // Nothing (more) published. Report a loss only once the
                // queue is really empty, after the events before it.
                let empty = h.tail.load(Ordering::Acquire) == head;
                return (empty && h.overflow.swap(0, Ordering::SeqCst) != 0)
                    .then_some(Notice::Missed);
            }
            // SAFETY: the cell is published for `head` and no producer
            // reuses it before `head` moves past it (we store that below);
            // every field is `Pod`, read on its own.
            let (kind, generation, version, modified_ns, key, value) = unsafe {
                (
                    cell.kind.with(|p| p.read_volatile()),
                    cell.generation.with(|p| p.read_volatile()),
                    cell.version.with(|p| p.read_volatile()),
                    cell.modified_ns.with(|p| p.read_volatile()),
                    cell.key.with(|p| p.read_volatile()),
                    cell.value.with(|p| p.read_volatile()),
                )
            };
            // Release: our copy happens before a producer reuses the cell.
            h.head.store(head.wrapping_add(1), Ordering::Release);
            if generation != claim.generation {
                continue; // meant for a previous subscriber
            }
            let Ok(kind) = EventKind::try_from(kind) else {
                continue; // scribbled
            };
            return Some(Notice::Event(Event {
                kind,
                version,
                modified_ns,
                key,
                value,
            }));
        }
        None
    }

    /// Subscriber side: sleeps until a push may have happened, or `timeout`.
    pub fn sleep<P: Parker>(&self, claim: &SubClaim, timeout: Duration, parker: &P) {
        let Some(h) = self.header(claim.index) else {
            return;
        };
        let key = h.ec.prepare();
        let head = h.head.load(Ordering::Relaxed);
        // SeqCst loads: the waiter's check of the event count's Dekker pair,
        // against the publisher's SeqCst stores of the cell and the flag.
        let published =
            self.cell(claim.index, head).seq.load(Ordering::SeqCst) == head.wrapping_add(1);
        if published || h.overflow.load(Ordering::SeqCst) != 0 {
            h.ec.cancel();
        } else {
            h.ec.wait(key, Some(timeout), parker);
        }
    }

    /// Whether the subscription is still ours and active.
    pub fn is_active(&self, claim: &SubClaim) -> bool {
        self.header(claim.index).is_some_and(|h| {
            h.word.load(Ordering::Relaxed)
                == pack(claim.generation, claim.owner, EntryState::Active as u32)
        })
    }

    /// Housekeeper: frees the entries of dead owners (and garbage states).
    pub fn reclaim(&self, owner_dead: impl Fn(u32) -> bool) -> usize {
        crate::word::reclaim_words(
            (0..self.count as u32).filter_map(|i| self.header(i).map(|h| &h.word)),
            EntryState::Free as u32,
            // An owned entry of a dead owner, or a garbage state.
            |_, owner, state| EntryState::try_from(state).is_err() || owner_dead(owner),
            |old_state| {
                if old_state == EntryState::Active as u32 {
                    self.active.fetch_sub(1, Ordering::SeqCst);
                }
            },
        )
    }

    /// Housekeeper: restores queues whose indices no push or poll could
    /// have left (`tail` behind `head`, or more than a lap ahead of it):
    /// `tail` is set back to `head` and the entry marked overflowed, so the
    /// subscriber is told to resync and events flow again. Returns how many
    /// queues were repaired.
    pub fn repair(&self) -> usize {
        let cap = self.capacity as u64;
        let mut repaired = 0;
        for index in 0..self.count as u32 {
            let Some(h) = self.header(index) else { break };
            if unpack(h.word.load(Ordering::Acquire)).2 != EntryState::Active as u32 {
                continue;
            }
            let head = h.head.load(Ordering::Acquire);
            let tail = h.tail.load(Ordering::Acquire);
            if tail.wrapping_sub(head) <= cap {
                continue;
            }
            // Workers CAS `tail` forward from values they read; whoever
            // wins, the indices are sane again.
            if h.tail
                .compare_exchange(tail, head, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                h.overflow.store(1, Ordering::SeqCst);
                repaired += 1;
            }
        }
        repaired
    }

    /// Active subscriptions (diagnostics).
    pub fn active_count(&self) -> usize {
        (0..self.count as u32)
            .filter_map(|i| self.header(i))
            .filter(|h| unpack(h.word.load(Ordering::Relaxed)).2 == EntryState::Active as u32)
            .count()
    }
}

impl<K: Pod + Eq, V: Pod> SubTable<'_, K, V> {
    /// Subscribes `owner` to `keys` (all keys when empty).
    ///
    /// Returns `None` when every entry is taken or there are more than
    /// [`MAX_SUB_KEYS`] keys.
    pub fn subscribe(&self, owner: u32, keys: &[K]) -> Option<SubClaim> {
        if keys.len() > MAX_SUB_KEYS {
            return None;
        }
        for index in 0..self.count as u32 {
            let h = self.header(index)?;
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
            // a late event for it carries its generation.
            h.head
                .store(h.tail.load(Ordering::Acquire), Ordering::Release);
            let mut arr = [K::zeroed(); MAX_SUB_KEYS];
            arr[..keys.len()].copy_from_slice(keys);
            // SAFETY: we own the entry (Claimed); workers read the keys only
            // after seeing Active (Release below); `K` is `Pod`.
            h.keys.with_mut(|p| unsafe { p.write_volatile(arr) });
            h.key_count.store(keys.len() as u32, Ordering::Relaxed);
            h.all_keys
                .store(u32::from(keys.is_empty()), Ordering::Relaxed);
            h.overflow.store(0, Ordering::Relaxed);
            // A subscriber that died waiting left its announcement behind.
            h.ec.reset();
            // Release: the filter is visible to a worker that sees Active.
            h.word.store(
                pack(generation, owner, EntryState::Active as u32),
                Ordering::Release,
            );
            self.active.fetch_add(1, Ordering::SeqCst);
            return Some(SubClaim {
                index,
                generation,
                owner,
            });
        }
        None
    }

    /// Server side: pushes a change of `key` to every matching subscriber.
    /// Never blocks or spins: a full or contended queue is marked
    /// overflowed. A waiting subscriber is woken through `parker`.
    #[allow(clippy::too_many_arguments)]
    pub fn publish<P: Parker>(
        &self,
        kind: EventKind,
        key: &K,
        value: &V,
        version: u64,
        modified_ns: u64,
        parker: &P,
    ) {
        // Relaxed: a subscription activated concurrently may miss this event
        // either way; the count only saves the scan when nobody listens.
        if self.active.load(Ordering::Relaxed) == 0 {
            return;
        }
        for index in 0..self.count as u32 {
            let Some(h) = self.header(index) else { return };
            let (generation, _, state) = unpack(h.word.load(Ordering::Acquire));
            if state != EntryState::Active as u32 || h.overflow.load(Ordering::Relaxed) != 0 {
                continue;
            }
            if h.all_keys.load(Ordering::Relaxed) == 0 {
                let n = (h.key_count.load(Ordering::Relaxed) as usize).min(MAX_SUB_KEYS);
                // SAFETY: in bounds; `K` is `Pod`, so a copy of whatever
                // bytes are there is valid.
                let keys = h.keys.with(|p| unsafe { p.read_volatile() });
                if !keys[..n].contains(key) {
                    continue;
                }
            }
            if !self.push(index, h, generation, kind, key, value, version, modified_ns) {
                h.overflow.store(1, Ordering::SeqCst);
            }
            // The push (or the flag) was a SeqCst store: the notifier's
            // half of the event count's pair.
            h.ec.notify(1, parker);
        }
    }

    /// One push (see the module docs); false when the queue is full, its
    /// indices are garbage, or other workers won every try.
    #[allow(clippy::too_many_arguments)]
    fn push(
        &self,
        index: u32,
        h: &SubHeader<K>,
        generation: u32,
        kind: EventKind,
        key: &K,
        value: &V,
        version: u64,
        modified_ns: u64,
    ) -> bool {
        let cap = self.capacity as u64;
        for _ in 0..RESERVE_TRIES {
            let tail = h.tail.load(Ordering::Relaxed);
            // Acquire pairs with the subscriber's Release store of `head`:
            // cells before it were copied out.
            let head = h.head.load(Ordering::Acquire);
            if tail.wrapping_sub(head) >= cap {
                return false; // full, or a scribbled `head`
            }
            if h.tail
                .compare_exchange_weak(
                    tail,
                    tail.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                continue;
            }
            let cell = self.cell(index, tail);
            // SAFETY: we reserved position `tail`; the subscriber does not
            // read the cell until we publish `seq` below, and no other
            // producer reserves it again before `head` passes it. Every
            // field is `Pod`, written on its own.
            unsafe {
                cell.kind.with_mut(|p| p.write_volatile(kind as u32));
                cell.generation.with_mut(|p| p.write_volatile(generation));
                cell.version.with_mut(|p| p.write_volatile(version));
                cell.modified_ns.with_mut(|p| p.write_volatile(modified_ns));
                cell.key.with_mut(|p| p.write_volatile(*key));
                cell.value.with_mut(|p| p.write_volatile(*value));
            }
            // Release: the event happens before the subscriber's Acquire;
            // SeqCst: also the condition of the event count's pair (the
            // subscriber checks it after announcing that it waits).
            cell.seq.store(tail.wrapping_add(1), Ordering::SeqCst);
            return true;
        }
        false
    }
}

// SAFETY: a view of shared memory accessed through atomics and the protocol
// above; the raw pointer is a base address only, and the data it reaches is
// `Pod`.
unsafe impl<K: Pod, V: Pod> Send for SubTable<'_, K, V> {}
// SAFETY: as above.
unsafe impl<K: Pod, V: Pod> Sync for SubTable<'_, K, V> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::SpinParker;

    #[repr(C, align(128))]
    #[derive(Clone, Copy)]
    struct Line([u8; 128]);

    struct Area {
        buf: Vec<Line>,
        active: AtomicU32,
    }

    fn table(area: &Area, count: usize, cap: usize) -> SubTable<'_, u64, u64> {
        // SAFETY: the lines are 128-aligned and zeroed; sized in `area`.
        let t =
            unsafe { SubTable::from_raw(area.buf.as_ptr() as *const u8, count, cap, &area.active) };
        t.init();
        t
    }

    fn area(count: usize, cap: usize) -> Area {
        Area {
            buf: vec![Line([0; 128]); count * stride::<u64, u64>(cap) / 128 + 1],
            active: AtomicU32::new(0),
        }
    }

    fn versions(t: &SubTable<'_, u64, u64>, c: &SubClaim) -> Vec<u64> {
        let mut v = Vec::new();
        while let Some(Notice::Event(e)) = t.poll(c) {
            v.push(e.version);
        }
        v
    }

    #[test]
    fn events_reach_matching_subscribers_in_order() {
        let a = area(2, 8);
        let t = table(&a, 2, 8);
        let one = t.subscribe(1, &[5]).unwrap();
        let all = t.subscribe(2, &[]).unwrap();
        t.publish(EventKind::Changed, &5, &50, 1, 0, &SpinParker);
        t.publish(EventKind::Changed, &6, &60, 2, 0, &SpinParker);
        t.publish(EventKind::Deleted, &5, &0, 3, 0, &SpinParker);
        assert_eq!(versions(&t, &one), vec![1, 3]);
        assert_eq!(versions(&t, &all), vec![1, 2, 3]);
    }

    #[test]
    fn overflow_is_reported_after_the_events_before_it() {
        let a = area(1, 2);
        let t = table(&a, 1, 2);
        let c = t.subscribe(1, &[]).unwrap();
        for v in 1..=5 {
            t.publish(EventKind::Changed, &1, &v, v, 0, &SpinParker);
        }
        assert!(matches!(t.poll(&c), Some(Notice::Event(e)) if e.version == 1));
        assert!(matches!(t.poll(&c), Some(Notice::Event(e)) if e.version == 2));
        assert!(matches!(t.poll(&c), Some(Notice::Missed)));
        assert!(t.poll(&c).is_none());
        t.publish(EventKind::Changed, &1, &9, 9, 0, &SpinParker);
        assert!(matches!(t.poll(&c), Some(Notice::Event(e)) if e.version == 9));
    }

    #[test]
    fn dead_subscribers_are_freed_and_leftovers_dropped() {
        let a = area(1, 4);
        let t = table(&a, 1, 4);
        let c = t.subscribe(7, &[]).unwrap();
        t.publish(EventKind::Changed, &1, &1, 1, 0, &SpinParker);
        assert_eq!(t.reclaim(|o| o == 7), 1);
        assert_eq!(a.active.load(Ordering::SeqCst), 0);
        assert!(!t.is_active(&c));
        let c2 = t.subscribe(8, &[]).unwrap();
        assert!(
            t.poll(&c2).is_none(),
            "a previous subscriber's event leaked"
        );
        assert!(t.subscribe(9, &[1; MAX_SUB_KEYS + 1]).is_none());
    }

    /// The defect of the old queue: a subscriber killed between taking a
    /// cell and releasing it left the queue wedged for the next subscriber
    /// of the entry, whose poll spun forever. Now a poll never waits, and
    /// the next subscriber starts clean.
    #[test]
    fn a_subscriber_killed_mid_poll_wedges_nothing() {
        let a = area(1, 4);
        let t = table(&a, 1, 4);
        let c = t.subscribe(1, &[]).unwrap();
        for v in 1..=3 {
            t.publish(EventKind::Changed, &1, &v, v, 0, &SpinParker);
        }
        // Killed mid-poll: it read the first cell, never moved `head`.
        let h = t.header(0).unwrap();
        assert_eq!(h.head.load(Ordering::SeqCst), 0);
        t.reclaim(|_| true);
        let c2 = t.subscribe(2, &[]).unwrap();
        assert!(t.poll(&c2).is_none());
        t.publish(EventKind::Changed, &1, &4, 4, 0, &SpinParker);
        assert_eq!(versions(&t, &c2), vec![4]);
        let _ = c;
    }

    /// A position reserved but not yet written (a worker preempted under
    /// its stripe lock) makes poll return at once, not spin.
    #[test]
    fn an_unpublished_cell_is_nothing_yet() {
        let a = area(1, 4);
        let t = table(&a, 1, 4);
        let c = t.subscribe(1, &[]).unwrap();
        let h = t.header(0).unwrap();
        h.tail.fetch_add(1, Ordering::SeqCst); // reserved, not published
        assert!(t.poll(&c).is_none());
        // Its worker finishes: the event shows up.
        let cell = t.cell(0, 0);
        // SAFETY: test-only; we play the worker that reserved position 0.
        unsafe {
            cell.kind.with_mut(|p| p.write(EventKind::Changed as u32));
            cell.generation.with_mut(|p| p.write(c.generation));
            cell.version.with_mut(|p| p.write(7));
        }
        cell.seq.store(1, Ordering::Release);
        assert_eq!(versions(&t, &c), vec![7]);
    }

    #[test]
    fn scribbled_indices_and_cells_never_hang() {
        let a = area(1, 4);
        let t = table(&a, 1, 4);
        let c = t.subscribe(1, &[]).unwrap();
        let h = t.header(0).unwrap();
        h.head.store(u64::MAX - 2, Ordering::SeqCst);
        t.publish(EventKind::Changed, &1, &1, 1, 0, &SpinParker); // refused: overflow
        for p in 0..4 {
            t.cell(0, p).seq.store(0xdead_beef, Ordering::SeqCst);
        }
        let _ = t.poll(&c);
        let _ = t.poll(&c);
        // The housekeeper repairs the indices: the subscriber is told to
        // resync, then events flow again.
        h.tail.store(u64::MAX / 2, Ordering::SeqCst);
        assert_eq!(t.repair(), 1);
        assert!(matches!(t.poll(&c), Some(Notice::Missed)));
        t.publish(EventKind::Changed, &1, &3, 3, 0, &SpinParker);
        assert_eq!(versions(&t, &c), vec![3]);
        // A resubscription starts clean too.
        t.reclaim(|_| true);
        let c2 = t.subscribe(2, &[]).unwrap();
        t.publish(EventKind::Changed, &1, &2, 2, 0, &SpinParker);
        assert_eq!(versions(&t, &c2), vec![2]);
    }

    #[test]
    fn concurrent_publishers_lose_nothing_that_fits() {
        let a = area(1, 1024);
        let t = table(&a, 1, 1024);
        let c = t.subscribe(1, &[]).unwrap();
        std::thread::scope(|s| {
            for w in 0..4u64 {
                let t = &t;
                #[allow(clippy::unit_arg)]
                s.spawn(move || {
                    for i in 0..200u64 {
                        t.publish(EventKind::Changed, &w, &i, w * 1000 + i, 0, &SpinParker);
                    }
                });
            }
        });
        let got = versions(&t, &c);
        assert_eq!(got.len(), 800);
        for w in 0..4u64 {
            let mine: Vec<u64> = got.iter().copied().filter(|v| v / 1000 == w).collect();
            assert_eq!(mine, (0..200).map(|i| w * 1000 + i).collect::<Vec<_>>());
        }
    }
}
