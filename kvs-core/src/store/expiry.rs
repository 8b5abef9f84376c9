//! The server's queue of deadlines, for the active expiry sweep.
//!
//! An entry with a deadline is invisible from the moment it passes: every
//! reader (a client's direct read, a worker) compares the deadline in the
//! block's header with the clock. Removing it is a separate matter, done two
//! ways, as Redis does: *lazily* by the next write or DEL that finds it, and
//! *actively* by a sweep, so that keys nobody touches again do not hold
//! memory forever.
//!
//! Redis's active expiry samples 20 random keys with a deadline and repeats
//! while more than a quarter of them had expired, because its dictionary
//! cannot be ordered by deadline. Here the writer knows every deadline it
//! writes, so it keeps them in a min-heap of `(deadline, block offset)` in
//! the server's private memory (16 bytes per entry with a deadline): the
//! sweep pops exactly the entries that are due, in deadline order, a
//! bounded batch at a time, and sleeps until the next deadline when none is
//! due. It adapts to the load by construction: a thousand keys expiring in
//! one second are a thousand pops, none expiring is a sleep.
//!
//! The heap is a hint, never trusted: a popped offset may since have been
//! freed and reused by another entry (blocks are reused within their size
//! class), and the entry may have been rewritten with another deadline or
//! none. [`super::write::StoreWriter::expire_block`] therefore reads the
//! block's key and deadline, and removes the entry only if, under its
//! stripe's lock, the key's current entry is expired. A stale item costs a
//! header read. After a crash the heap is rebuilt from the entries that the
//! adoption walk finds with a deadline.
//!
//! The heap's lock is held only to push, or to pop one batch: never while a
//! stripe lock is taken by the sweep, so writers wait at most for a push.

use parking_lot::Mutex;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Deadlines of entries, earliest first (see the module docs).
#[derive(Debug, Default)]
pub struct ExpiryQueue {
    heap: Mutex<BinaryHeap<Reverse<(u64, u64)>>>,
}

impl ExpiryQueue {
    /// Notes that the entry in the block at `offset` expires at `deadline`
    /// (unix ns).
    pub fn push(&self, deadline: u64, offset: u64) {
        self.heap.lock().push(Reverse((deadline, offset)));
    }

    /// Takes up to `max` items due at `now` (deadline at or before it) into
    /// `out`, earliest first; returns the next deadline left, if any.
    pub fn pop_due(&self, now: u64, max: usize, out: &mut Vec<(u64, u64)>) -> Option<u64> {
        let mut heap = self.heap.lock();
        while out.len() < max {
            match heap.peek() {
                Some(Reverse((deadline, _))) if *deadline <= now => {
                    if let Some(Reverse(item)) = heap.pop() {
                        out.push(item);
                    }
                }
                _ => break,
            }
        }
        heap.peek().map(|Reverse((deadline, _))| *deadline)
    }

    /// Items queued (stale ones included).
    pub fn len(&self) -> usize {
        self.heap.lock().len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn pops_what_is_due_earliest_first_in_bounded_batches() {
        let q = ExpiryQueue::default();
        for (d, o) in [(30, 3), (10, 1), (20, 2), (40, 4)] {
            q.push(d, o);
        }
        let mut out = Vec::new();
        assert_eq!(q.pop_due(25, 1, &mut out), Some(20));
        assert_eq!(out, [(10, 1)]);
        out.clear();
        assert_eq!(q.pop_due(35, 10, &mut out), Some(40));
        assert_eq!(out, [(20, 2), (30, 3)]);
        out.clear();
        assert_eq!(q.pop_due(5, 10, &mut out), Some(40));
        assert!(out.is_empty());
        assert_eq!(q.len(), 1);
    }
}
