//! Key subscriptions: per-subscriber notification queues in the region.
//!
//! A subscriber claims one of a few subscription entries, writes the keys it
//! wants (or "all keys") and marks it active. When a worker changes a key it
//! checks the active entries (one load when there are none) and pushes a
//! change event into the matching subscribers' queues. The push happens
//! while the worker still holds the key's stripe lock, so the events of one
//! key reach every queue in version order.
//!
//! Each queue is an MPMC [`Ring`] (several workers produce; the subscriber
//! consumes). A slow or dead subscriber never blocks anyone: a push into a
//! full queue fails, the entry is marked overflowed, and nothing more is
//! pushed to it until the subscriber has drained the queue and seen the
//! overflow, which it reports as a "missed events, resync" event. So the
//! subscriber sees every event up to the loss, in order, then the loss.
//!
//! Entries use the packed `generation | owner | state` word of the response
//! slots; every event carries its entry's generation, so an event pushed for
//! a previous subscriber of the entry is dropped by the next one. The
//! housekeeper frees the entries of dead owners.
//!
//! Waking uses the eventcount pattern of the worker ring: the subscriber
//! reads `seq`, announces itself in `sleepers`, re-checks, and sleeps on
//! `seq`; a publisher bumps `seq` after each push and wakes only when
//! `sleepers` is set.

use crate::ring::{PopError, Ring, RingCell, RingHeader};
use crate::sync::{AtomicU32, AtomicU64, Ordering, UnsafeCell};
use crate::word::{pack, try_claim, unpack};
use bytemuck::Zeroable;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

/// Most keys one subscription may name (more: subscribe to all keys).
pub const MAX_SUB_KEYS: usize = 32;

const FREE: u32 = 0;
const CLAIMED: u32 = 1;
const ACTIVE: u32 = 2;

/// Event kinds as stored in [`Event::kind`].
pub const EVENT_CHANGED: u32 = 1;
/// A key was deleted.
pub const EVENT_DELETED: u32 = 2;

/// One change event in a subscriber's queue.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event<K, V> {
    /// [`EVENT_CHANGED`] or [`EVENT_DELETED`].
    pub kind: u32,
    /// The subscription entry's generation when pushed.
    pub generation: u32,
    /// The version of the change.
    pub version: u64,
    /// When the change was made, unix nanoseconds (deletes: 0).
    pub modified_ns: u64,
    /// The key.
    pub key: K,
    /// The new value (changes only).
    pub value: V,
}

// SAFETY: `#[repr(C)]` of Zeroable fields.
unsafe impl<K: Zeroable, V: Zeroable> Zeroable for Event<K, V> {}

/// The fixed part of a subscription entry; its queue's cells follow.
#[repr(C)]
#[derive(Debug)]
pub struct SubHeader<K> {
    word: AtomicU64,
    all_keys: AtomicU32,
    key_count: AtomicU32,
    /// 1 once a push failed; cleared by the subscriber after it reported it.
    overflow: AtomicU32,
    /// 1 while the subscriber sleeps (or is about to).
    sleepers: AtomicU32,
    /// Bumped after every push; the subscriber sleeps on it.
    seq: AtomicU32,
    _reserved: AtomicU32,
    keys: UnsafeCell<[K; MAX_SUB_KEYS]>,
    ring: RingHeader,
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
    (cells_offset::<K>() + capacity * std::mem::size_of::<RingCell<Event<K, V>>>())
        .next_multiple_of(128)
}

/// A view of the subscription entries in a region.
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

impl<'a, K: Copy + Zeroable, V: Copy + Zeroable> SubTable<'a, K, V> {
    /// Wraps `count` entries with queues of `capacity` cells at `base`;
    /// `active` counts active subscriptions (a word in the region header).
    ///
    /// # Safety
    ///
    /// `base` points to `count * stride::<K, V>(capacity)` bytes, 128-aligned,
    /// inside a mapping that outlives `'a`, laid out by this module and
    /// initialised with [`SubTable::init`] (or zero-filled and then `init`);
    /// `capacity` is a power of two.
    pub unsafe fn from_raw(
        base: *const u8,
        count: usize,
        capacity: usize,
        active: &'a AtomicU32,
    ) -> Self {
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

    fn ring(&self, index: u32) -> Option<Ring<'_, Event<K, V>>> {
        let h = self.header(index)?;
        // SAFETY: the cells follow the header inside the entry's stride,
        // aligned, initialised by `init`; `capacity` is a power of two.
        Some(unsafe {
            Ring::from_raw(
                &h.ring,
                self.base
                    .add(index as usize * stride::<K, V>(self.capacity) + cells_offset::<K>())
                    as *const RingCell<Event<K, V>>,
                self.capacity,
            )
        })
    }

    /// Initialises every entry's queue (the server, before "ready").
    pub fn init(&self) {
        for i in 0..self.count as u32 {
            if let Some(r) = self.ring(i) {
                r.init();
            }
        }
        self.active.store(0, Ordering::Relaxed);
    }

    /// Ends a subscription.
    pub fn unsubscribe(&self, claim: &SubClaim) {
        if let Some(h) = self.header(claim.index) {
            if h.word
                .compare_exchange(
                    pack(claim.generation, claim.owner, ACTIVE),
                    pack(claim.generation, claim.owner, FREE),
                    Ordering::Release,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                self.active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Subscriber side: the next notice, if any.
    pub fn poll(&self, claim: &SubClaim) -> Option<Notice<K, V>> {
        let ring = self.ring(claim.index)?;
        let h = self.header(claim.index)?;
        loop {
            match ring.pop() {
                Ok(ev) if ev.generation == claim.generation => return Some(Notice::Event(ev)),
                Ok(_) => continue, // meant for a previous subscriber
                Err(PopError::Busy { .. }) => std::hint::spin_loop(),
                Err(PopError::Empty) => {
                    return (h.overflow.swap(0, Ordering::SeqCst) != 0).then_some(Notice::Missed);
                }
            }
        }
    }

    /// Subscriber side: sleeps until a push may have happened, or `timeout`.
    pub fn sleep(
        &self,
        claim: &SubClaim,
        timeout: Duration,
        sleep_on: impl Fn(&AtomicU32, u32, Duration),
    ) {
        let (Some(h), Some(ring)) = (self.header(claim.index), self.ring(claim.index)) else {
            return;
        };
        let seen = h.seq.load(Ordering::SeqCst);
        h.sleepers.store(1, Ordering::SeqCst);
        if !ring.has_pending() && h.overflow.load(Ordering::SeqCst) == 0 {
            sleep_on(&h.seq, seen, timeout);
        }
        h.sleepers.store(0, Ordering::Relaxed);
    }

    /// Whether the subscription is still ours and active.
    pub fn is_active(&self, claim: &SubClaim) -> bool {
        self.header(claim.index).is_some_and(|h| {
            h.word.load(Ordering::Relaxed) == pack(claim.generation, claim.owner, ACTIVE)
        })
    }

    /// Housekeeper: frees the entries of dead owners (and garbage states).
    pub fn reclaim(&self, owner_dead: impl Fn(u32) -> bool) -> usize {
        let mut freed = 0;
        for index in 0..self.count as u32 {
            let Some(h) = self.header(index) else { break };
            let w = h.word.load(Ordering::Acquire);
            let (generation, owner, state) = unpack(w);
            let free = match state {
                FREE => false,
                CLAIMED | ACTIVE => owner_dead(owner),
                _ => true,
            };
            if free
                && h.word
                    .compare_exchange(
                        w,
                        pack(generation, owner, FREE),
                        Ordering::Release,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                if state == ACTIVE {
                    self.active.fetch_sub(1, Ordering::SeqCst);
                }
                freed += 1;
            }
        }
        freed
    }

    /// Active subscriptions (diagnostics).
    pub fn active_count(&self) -> usize {
        (0..self.count as u32)
            .filter_map(|i| self.header(i))
            .filter(|h| unpack(h.word.load(Ordering::Relaxed)).2 == ACTIVE)
            .count()
    }
}

impl<K: Copy + Eq + Zeroable, V: Copy + Zeroable> SubTable<'_, K, V> {
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
            let Some(generation) = try_claim(&h.word, FREE, owner, CLAIMED) else {
                continue;
            };
            // Drain what a previous subscriber left, then set the filter.
            let ring = self.ring(index)?;
            loop {
                match ring.pop() {
                    Ok(_) => {}
                    Err(PopError::Empty) => break,
                    // A worker mid-push for the previous subscriber: skip it;
                    // it pushes again and the generation check drops it.
                    Err(PopError::Busy { pos }) => {
                        let _ = ring.skip_stalled(pos);
                    }
                }
            }
            let mut arr = [K::zeroed(); MAX_SUB_KEYS];
            arr[..keys.len()].copy_from_slice(keys);
            // SAFETY: we own the entry (CLAIMED); workers read the keys only
            // after seeing ACTIVE (Release below).
            h.keys.with_mut(|p| unsafe { p.write_volatile(arr) });
            h.key_count.store(keys.len() as u32, Ordering::Relaxed);
            h.all_keys
                .store(u32::from(keys.is_empty()), Ordering::Relaxed);
            h.overflow.store(0, Ordering::Relaxed);
            h.sleepers.store(0, Ordering::Relaxed);
            // Release: the filter is visible to a worker that sees ACTIVE.
            h.word
                .store(pack(generation, owner, ACTIVE), Ordering::Release);
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
    /// Never blocks. `wake(seq)` is called for sleeping subscribers.
    pub fn publish(
        &self,
        kind: u32,
        key: &K,
        value: &V,
        version: u64,
        modified_ns: u64,
        wake: impl Fn(&AtomicU32),
    ) {
        // Relaxed: a subscription activated concurrently may miss this event
        // either way; the count only saves the scan when nobody listens.
        if self.active.load(Ordering::Relaxed) == 0 {
            return;
        }
        for index in 0..self.count as u32 {
            let Some(h) = self.header(index) else { return };
            let (generation, _, state) = unpack(h.word.load(Ordering::Acquire));
            if state != ACTIVE || h.overflow.load(Ordering::Relaxed) != 0 {
                continue;
            }
            if h.all_keys.load(Ordering::Relaxed) == 0 {
                let n = (h.key_count.load(Ordering::Relaxed) as usize).min(MAX_SUB_KEYS);
                // SAFETY: in bounds; K is Pod-like (Zeroable + Copy from a Pod
                // region type), so a copy of whatever bytes are there is valid.
                let keys = h.keys.with(|p| unsafe { p.read_volatile() });
                if !keys[..n].contains(key) {
                    continue;
                }
            }
            let Some(ring) = self.ring(index) else { return };
            let event = Event {
                kind,
                generation,
                version,
                modified_ns,
                key: *key,
                value: *value,
            };
            if ring.push(event).is_err() {
                h.overflow.store(1, Ordering::SeqCst);
            }
            // SeqCst: the publisher's half of the eventcount (see module docs).
            h.seq.fetch_add(1, Ordering::SeqCst);
            if h.sleepers.load(Ordering::SeqCst) != 0 {
                wake(&h.seq);
            }
        }
    }
}

// SAFETY: a view of shared memory accessed through atomics and the protocol
// above; the raw pointer is a base address only.
unsafe impl<K, V> Send for SubTable<'_, K, V> {}
// SAFETY: as above.
unsafe impl<K, V> Sync for SubTable<'_, K, V> {}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn events_reach_matching_subscribers_in_order() {
        let a = area(2, 8);
        let t = table(&a, 2, 8);
        let one = t.subscribe(1, &[5]).unwrap();
        let all = t.subscribe(2, &[]).unwrap();
        t.publish(EVENT_CHANGED, &5, &50, 1, 0, |_| {});
        t.publish(EVENT_CHANGED, &6, &60, 2, 0, |_| {});
        t.publish(EVENT_DELETED, &5, &0, 3, 0, |_| {});
        let versions = |c: &SubClaim| {
            let mut v = Vec::new();
            while let Some(Notice::Event(e)) = t.poll(c) {
                v.push(e.version);
            }
            v
        };
        assert_eq!(versions(&one), vec![1, 3]);
        assert_eq!(versions(&all), vec![1, 2, 3]);
    }

    #[test]
    fn overflow_is_reported_after_the_events_before_it() {
        let a = area(1, 2);
        let t = table(&a, 1, 2);
        let c = t.subscribe(1, &[]).unwrap();
        for v in 1..=5 {
            t.publish(EVENT_CHANGED, &1, &v, v, 0, |_| {});
        }
        assert!(matches!(t.poll(&c), Some(Notice::Event(e)) if e.version == 1));
        assert!(matches!(t.poll(&c), Some(Notice::Event(e)) if e.version == 2));
        assert!(matches!(t.poll(&c), Some(Notice::Missed)));
        assert!(t.poll(&c).is_none());
        t.publish(EVENT_CHANGED, &1, &9, 9, 0, |_| {});
        assert!(matches!(t.poll(&c), Some(Notice::Event(e)) if e.version == 9));
    }

    #[test]
    fn dead_subscribers_are_freed_and_leftovers_dropped() {
        let a = area(1, 4);
        let t = table(&a, 1, 4);
        let c = t.subscribe(7, &[]).unwrap();
        t.publish(EVENT_CHANGED, &1, &1, 1, 0, |_| {});
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
}
