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
