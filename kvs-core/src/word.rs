//! The packed control word shared by response slots, bulk buffers and
//! subscription entries: `generation` (high 32 bits) | `owner` (24 bits) |
//! `state` (8 bits).
//!
//! One 64-bit word per resource makes every transition a single CAS that
//! checks all three at once, so a stale or forged reference (an old
//! generation, another owner) can never move a resource that has moved on.
//!
//! ```
//! use kvs_core::word::{pack, unpack};
//!
//! let w = pack(7, 3, 2);
//! assert_eq!(unpack(w), (7, 3, 2));
//! ```

use crate::sync::{AtomicU64, Ordering};

/// Largest owner (client registration index) that fits the word.
pub const MAX_OWNER: u32 = (1 << 24) - 1;

/// Packs a word; `owner` is masked to 24 bits, `state` to 8.
#[inline]
pub const fn pack(generation: u32, owner: u32, state: u32) -> u64 {
    ((generation as u64) << 32) | (((owner & MAX_OWNER) as u64) << 8) | (state & 0xff) as u64
}

/// Splits a word into `(generation, owner, state)`.
#[inline]
pub const fn unpack(word: u64) -> (u32, u32, u32) {
    (
        (word >> 32) as u32,
        ((word >> 8) as u32) & MAX_OWNER,
        (word & 0xff) as u32,
    )
}

/// Claims a resource whose word is free (`state == free`) for `owner`,
/// moving it to `(generation + 1, owner, to)` in one CAS; returns the new
/// generation, or `None` if it is not free or another claimer won.
///
/// Acquire on success pairs with the Release that freed it: the previous
/// user is done with the resource before we use it. Relaxed on failure:
/// nothing was acquired.
#[inline]
pub fn try_claim(word: &AtomicU64, free: u32, owner: u32, to: u32) -> Option<u32> {
    let w = word.load(Ordering::Relaxed);
    let (generation, _, state) = unpack(w);
    if state != free {
        return None;
    }
    let generation = generation.wrapping_add(1);
    word.compare_exchange(
        w,
        pack(generation, owner, to),
        Ordering::Acquire,
        Ordering::Relaxed,
    )
    .ok()
    .map(|_| generation)
}
