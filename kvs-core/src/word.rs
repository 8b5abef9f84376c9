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

/// The housekeeper's pass over a table of packed words: every word for
/// which `verdict(index, owner, state)` holds is freed (CAS from the value
/// read to `(generation, owner, free)`, so a resource that moved on
/// meanwhile is left alone), and `on_freed(state)` runs for each. Returns
/// how many were freed. Words already `free` are skipped.
///
/// Release on success pairs with the next claimer's Acquire in
/// [`try_claim`]: what the dead owner left is behind the new one.
pub fn reclaim_words<'w>(
    words: impl IntoIterator<Item = &'w AtomicU64>,
    free: u32,
    verdict: impl Fn(usize, u32, u32) -> bool,
    mut on_freed: impl FnMut(u32),
) -> usize {
    let mut freed = 0;
    for (index, word) in words.into_iter().enumerate() {
        let w = word.load(Ordering::Acquire);
        let (generation, owner, state) = unpack(w);
        if state == free || !verdict(index, owner, state) {
            continue;
        }
        if word
            .compare_exchange(
                w,
                pack(generation, owner, free),
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            on_freed(state);
            freed += 1;
        }
    }
    freed
}
