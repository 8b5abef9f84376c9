//! The key hash: seeded xxh3-64 of the key's bytes, split into a stripe,
//! a probe start and a tag.
//!
//! The function is named in the store header (algorithm 1) and its seed is
//! kept there, so every process, and every server across restarts, computes
//! the same hash; Rust's `Hash` and `RandomState` promise neither. xxh3 costs
//! a few nanoseconds on a short key, which matters on a read path that aims
//! at 150 ns. It is not a keyed MAC: a client that knows the seed (every
//! client does) can make keys collide on purpose and lengthen the probes of
//! one stripe; it cannot make a probe unbounded (probes stop at the table's
//! capacity) or reach other stripes' data.
//!
//! ```text
//! bit 63 ........ 64-k | 47 ..... 32 | 31 ............ 0
//!   stripe (k bits)      tag (16)      probe start (masked by capacity)
//! ```

use super::layout::MAX_STRIPE_BITS;

/// A key's hash and what it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(pub u64);

impl KeyHash {
    /// Hashes `key` with `seed`.
    #[inline]
    pub fn of(key: &[u8], seed: u64) -> Self {
        Self(xxhash_rust::xxh3::xxh3_64_with_seed(key, seed))
    }

    /// The stripe among `2^bits` (`bits` at most 16).
    #[inline]
    pub fn stripe(self, bits: u32) -> u64 {
        if bits == 0 {
            0
        } else {
            self.0 >> (64 - bits.min(MAX_STRIPE_BITS))
        }
    }

    /// The 16-bit tag kept in a table slot, to skip most non-matching
    /// entries without touching them.
    #[inline]
    pub fn tag(self) -> u16 {
        (self.0 >> 32) as u16
    }

    /// The first slot probed in a table of `capacity` (a power of two).
    #[inline]
    pub fn start(self, capacity: u64) -> u64 {
        (self.0 & 0xffff_ffff) & (capacity - 1)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_stable_and_seeded() {
        // Pinned: a change of algorithm would strand every stored entry.
        assert_eq!(KeyHash::of(b"", 0).0, 0x2d06_8005_38d3_94c2);
        assert_ne!(KeyHash::of(b"key", 1), KeyHash::of(b"key", 2));
        assert_eq!(KeyHash::of(b"key", 1), KeyHash::of(b"key", 1));
    }

    #[test]
    fn fields_stay_in_range() {
        let h = KeyHash(u64::MAX);
        assert_eq!(h.stripe(10), 1023);
        assert_eq!(h.stripe(0), 0);
        assert_eq!(h.stripe(16), 0xffff);
        assert_eq!(h.start(8), 7);
        assert_eq!(h.tag(), 0xffff);
    }
}
