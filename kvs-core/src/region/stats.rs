//! Per-worker statistics in the region, so `status` reads them without a
//! round trip and without workers sharing a counter's cache line.
//!
//! Each worker writes only its own [`WorkerStats`] (single writer: a Relaxed
//! load and store, no locked instruction); readers sum all of them. The
//! counters are statistics, not synchronisation, so `Relaxed` is enough.

use crate::protocol::OpCode;
use crate::sync::{AtomicU64, Ordering};

/// Most workers a server may run (one statistics line each).
pub const MAX_WORKERS: usize = 64;

/// Counters per worker, indexed by `OpCode as usize`: room for every op
/// code (checked below) and a few more to come.
pub const OP_COUNTERS: usize = 16;

// Every op code has its counter (an op past the end would not be counted).
const _: () = {
    let mut i = 0;
    while i < OpCode::ALL.len() {
        assert!((OpCode::ALL[i] as usize) < OP_COUNTERS);
        i += 1;
    }
};

/// Counters of one worker.
#[repr(C)]
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Requests served, indexed by `OpCode as usize`.
    pub ops: [AtomicU64; OP_COUNTERS],
    /// Requests dropped as malformed or stale.
    pub dropped: AtomicU64,
}

impl WorkerStats {
    /// Counts one request of `op`; only the owning worker calls this.
    #[inline]
    pub fn count(&self, op: OpCode) {
        if let Some(c) = self.ops.get(op as usize) {
            // Single writer: load + store avoids a locked RMW on the hot path.
            c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }

    /// Counts one dropped request; only the owning worker calls this.
    #[inline]
    pub fn count_dropped(&self) {
        self.dropped
            .store(self.dropped.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

/// Sums of all workers' counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpTotals {
    /// Requests served, indexed by `OpCode as usize`.
    pub ops: [u64; OP_COUNTERS],
    /// Requests dropped.
    pub dropped: u64,
}

impl OpTotals {
    /// Served requests of `op`.
    pub fn get(&self, op: OpCode) -> u64 {
        self.ops.get(op as usize).copied().unwrap_or(0)
    }

    /// All served requests.
    pub fn total(&self) -> u64 {
        self.ops.iter().sum()
    }

    /// Adds one worker's counters.
    pub fn add(&mut self, w: &WorkerStats) {
        for (t, c) in self.ops.iter_mut().zip(&w.ops) {
            *t = t.wrapping_add(c.load(Ordering::Relaxed));
        }
        self.dropped = self.dropped.wrapping_add(w.dropped.load(Ordering::Relaxed));
    }
}
