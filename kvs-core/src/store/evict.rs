//! Eviction policies: which entry goes when a write finds the store full.
//!
//! With a policy other than [`EvictionPolicy::NoEviction`], a SET (or any
//! write) refused for memory or for the entry limit does not fail at once:
//! the writer removes one entry chosen by the policy and tries again, up
//! to [`MAX_EVICTIONS_PER_WRITE`] times (a large value may need many small
//! entries gone; memory freed in one size class serves another only once
//! whole slabs come free). Each removal is a change like a DEL, reported
//! to subscribers as an eviction and counted.
//!
//! The choice is Redis's approximation: [`SAMPLES`] entries picked at
//! random (a random stripe, a random slot in its table, the next live
//! entry from there), the best of them by the policy evicted. No list or
//! clock is kept per entry, so eviction costs nothing until it is needed.
//!
//! Where kvs differs from Redis on purpose: `allkeys-lru` ranks entries by
//! their last *write*, not their last read. Reads never write shared
//! memory (clients map the store read-only and read it without the
//! server), so there is no read time to rank by; a key that is read often
//! but never rewritten ages like one nobody reads. `volatile-ttl` evicts
//! only entries with a deadline, the soonest first; with none, the write
//! fails as with `noeviction`.

use super::block::Meta;
use std::fmt;
use std::str::FromStr;

/// Entries sampled per eviction (Redis's `maxmemory-samples` default).
pub const SAMPLES: usize = 5;
/// Evictions one write may cause before it gives up with "store full".
pub const MAX_EVICTIONS_PER_WRITE: usize = 64;
/// Evictions of entries of other size classes one write may cause when
/// none of its own class is left: they free nothing it can use unless
/// they free a large block, so only a few are tried.
pub const BLIND_EVICTIONS: usize = 8;
/// Stripes tried per sample before the store is judged to hold nothing
/// the policy may evict.
pub const STRIPE_TRIES: usize = 16;
/// Slots scanned in one stripe's table per try.
pub const SLOT_SCAN: u64 = 64;

/// What a full store does with a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum EvictionPolicy {
    /// Refuse the write ("store full").
    #[default]
    NoEviction = 0,
    /// Evict the least recently written of a sample of all entries.
    AllKeysLru = 1,
    /// Evict the entry with the soonest deadline of a sample of those
    /// with one.
    VolatileTtl = 2,
    /// Evict a random entry.
    AllKeysRandom = 3,
}

impl EvictionPolicy {
    /// Every policy.
    pub const ALL: [EvictionPolicy; 4] = [
        EvictionPolicy::NoEviction,
        EvictionPolicy::AllKeysLru,
        EvictionPolicy::VolatileTtl,
        EvictionPolicy::AllKeysRandom,
    ];

    /// Its name on the command line (Redis's).
    pub fn name(self) -> &'static str {
        match self {
            EvictionPolicy::NoEviction => "noeviction",
            EvictionPolicy::AllKeysLru => "allkeys-lru",
            EvictionPolicy::VolatileTtl => "volatile-ttl",
            EvictionPolicy::AllKeysRandom => "allkeys-random",
        }
    }

    /// The policy stored as `v` (an unknown value: none).
    pub fn from_u8(v: u8) -> Self {
        Self::ALL
            .into_iter()
            .find(|p| *p as u8 == v)
            .unwrap_or_default()
    }

    /// Whether it evicts at all.
    pub fn evicts(self) -> bool {
        self != EvictionPolicy::NoEviction
    }

    /// Whether an entry with `meta` may be evicted.
    pub fn may_evict(self, meta: &Meta) -> bool {
        match self {
            EvictionPolicy::NoEviction => false,
            EvictionPolicy::VolatileTtl => meta.deadline != 0,
            EvictionPolicy::AllKeysLru | EvictionPolicy::AllKeysRandom => true,
        }
    }

    /// Whether `a` should go before `b`.
    pub fn prefers(self, a: &Meta, b: &Meta) -> bool {
        match self {
            EvictionPolicy::AllKeysLru => a.modified_ns < b.modified_ns,
            EvictionPolicy::VolatileTtl => a.deadline < b.deadline,
            EvictionPolicy::NoEviction | EvictionPolicy::AllKeysRandom => false,
        }
    }

    /// The index of the sample to evict, if any.
    pub fn choose(self, samples: &[Meta]) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, m) in samples.iter().enumerate() {
            if !self.may_evict(m) {
                continue;
            }
            best = match best {
                Some(b) if !self.prefers(m, &samples[b]) => Some(b),
                _ => Some(i),
            };
        }
        best
    }
}

impl fmt::Display for EvictionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EvictionPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown eviction policy {s:?}: one of noeviction, allkeys-lru, volatile-ttl, allkeys-random"
                )
            })
    }
}

/// A well-mixed 64-bit value from a counter (splitmix64): where to sample
/// next, without a random number generator's state or lock.
#[inline]
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn meta(modified_ns: u64, deadline: u64) -> Meta {
        Meta {
            version: 1,
            modified_ns,
            deadline,
        }
    }

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for p in EvictionPolicy::ALL {
            assert_eq!(p.name().parse::<EvictionPolicy>(), Ok(p));
            assert_eq!(EvictionPolicy::from_u8(p as u8), p);
        }
        let e = "allkeys-lfu".parse::<EvictionPolicy>().unwrap_err();
        assert!(e.contains("volatile-ttl"), "{e}");
        assert_eq!(EvictionPolicy::from_u8(200), EvictionPolicy::NoEviction);
    }

    #[test]
    fn each_policy_picks_its_victim() {
        let samples = [meta(30, 0), meta(10, 900), meta(20, 500), meta(5, 0)];
        assert_eq!(EvictionPolicy::AllKeysLru.choose(&samples), Some(3));
        assert_eq!(EvictionPolicy::VolatileTtl.choose(&samples), Some(2));
        assert_eq!(EvictionPolicy::AllKeysRandom.choose(&samples), Some(0));
        assert_eq!(EvictionPolicy::NoEviction.choose(&samples), None);
        assert_eq!(
            EvictionPolicy::VolatileTtl.choose(&[meta(1, 0), meta(2, 0)]),
            None
        );
        assert_eq!(EvictionPolicy::AllKeysLru.choose(&[]), None);
    }

    #[test]
    fn mixing_spreads_consecutive_counters() {
        let stripes: std::collections::HashSet<u64> = (0..64).map(|i| mix(i) & 63).collect();
        assert!(stripes.len() > 32, "{}", stripes.len());
    }
}
