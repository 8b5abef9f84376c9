//! [`Tally`]: what a thread, a client process or the whole run measured
//! (a latency histogram per op kind, wrong answers, failed calls), and how
//! tallies merge.

use crate::workload::Kind;
use hdrhistogram::Histogram;

/// Highest latency the histograms hold (longer ones are clamped): 60 s.
pub(crate) const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// An empty latency histogram in nanoseconds, 1 ns to [`MAX_LATENCY_NS`],
/// three significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

/// One thread's (or process's, or the run's) measurements.
#[derive(Debug)]
pub(crate) struct Tally {
    /// Latencies in nanoseconds, indexed by [`Kind`].
    pub(crate) hist: [Histogram<u64>; 4],
    /// Answers the model says are wrong.
    pub(crate) wrong: u64,
    /// Calls that failed (other than with `ServerGone`).
    pub(crate) failed: u64,
    /// A call found the server gone (the run stops at the first one).
    pub(crate) server_gone: bool,
    /// Seconds from the common start to this part's last answer.
    pub(crate) seconds: f64,
}

impl Tally {
    pub(crate) fn new() -> Self {
        Self {
            hist: [histogram(), histogram(), histogram(), histogram()],
            wrong: 0,
            failed: 0,
            server_gone: false,
            seconds: 0.0,
        }
    }

    /// Records one answer of `kind` after `ns` nanoseconds (clamped to the
    /// histogram's bounds).
    pub(crate) fn record(&mut self, kind: Kind, ns: u64) {
        self.record_n(kind, ns, 1);
    }

    /// Records `n` answers of `kind` that took `ns` each (the keys of one
    /// batch call).
    pub(crate) fn record_n(&mut self, kind: Kind, ns: u64, n: u64) {
        let _ = self.hist[kind as usize].record_n(ns.clamp(1, MAX_LATENCY_NS), n);
    }

    /// Adds `other` in: histograms and counts add up, the flag is or-ed,
    /// and the seconds are the longer of the two.
    pub(crate) fn merge(&mut self, other: &Tally) {
        for (a, b) in self.hist.iter_mut().zip(&other.hist) {
            // Same bounds on both sides, so this cannot fail.
            let _ = a.add(b);
        }
        self.wrong += other.wrong;
        self.failed += other.failed;
        self.server_gone |= other.server_gone;
        self.seconds = self.seconds.max(other.seconds);
    }

    /// Answers recorded, over all kinds.
    pub(crate) fn ops(&self) -> u64 {
        self.hist.iter().map(Histogram::len).sum()
    }

    /// Wrong answers plus failed calls.
    pub(crate) fn errors(&self) -> u64 {
        self.wrong + self.failed
    }

    /// Every kind's latencies in one histogram.
    pub(crate) fn all(&self) -> Histogram<u64> {
        let mut all = histogram();
        for h in &self.hist {
            let _ = all.add(h);
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_merge() {
        let mut a = Tally::new();
        a.record(Kind::Get, 350);
        a.record(Kind::Set, 0);
        a.wrong = 1;
        a.seconds = 2.0;
        let mut b = Tally::new();
        b.record(Kind::Get, 10 * MAX_LATENCY_NS);
        for _ in 0..4 {
            b.record(Kind::Del, 1_000);
        }
        b.failed = 2;
        b.server_gone = true;
        b.seconds = 1.5;
        a.merge(&b);
        assert_eq!(a.ops(), 7);
        assert_eq!(a.hist[Kind::Get as usize].len(), 2);
        assert_eq!(a.hist[Kind::Del as usize].len(), 4);
        assert!(a.hist[Kind::Get as usize].max() >= MAX_LATENCY_NS / 2);
        assert_eq!(a.hist[Kind::Set as usize].min(), 1);
        assert_eq!((a.wrong, a.failed, a.errors()), (1, 2, 3));
        assert!(a.server_gone);
        assert_eq!(a.seconds, 2.0);
        assert_eq!(a.all().len(), 7);
    }
}
