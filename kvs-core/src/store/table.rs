//! A stripe's table: an open-addressing array of slot words, found through
//! the stripe's table word.
//!
//! ```text
//! slot word:   0 = empty | 1 = tombstone | tag (16 bits) << 48 | block offset / 16 (48 bits)
//! table word:  0 = no table | log2 capacity (6 bits) << 58 | table offset / 16 (58 bits)
//! ```
//!
//! A live slot is never 0 or 1: blocks start in the data area, after the
//! header page, so `offset / 16 >= 256`. Probing is linear from the key's
//! start slot and stops at an empty slot or after `capacity` slots, so a
//! table full of garbage still ends every probe. The server keeps live
//! plus tombstone slots at most 3/4 of the capacity: it rebuilds the table
//! (same size, or double when live slots pass half) before an insert would
//! cross that.

/// Most slots in one table (2^32): beyond it a stripe would hold more than
/// the hash's probe-start bits can spread.
pub const MAX_LOG2_CAPACITY: u32 = 32;
/// Slots of a stripe's first table.
pub const MIN_LOG2_CAPACITY: u32 = 3;

/// A decoded slot word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Never used since the table was built: ends a probe.
    Empty,
    /// A deleted entry: a probe goes on.
    Tombstone,
    /// An entry: its tag and its block's offset.
    Live {
        /// The key hash's tag.
        tag: u16,
        /// Offset of the block.
        offset: u64,
    },
}

/// The empty slot word.
pub const EMPTY: u64 = 0;
/// The tombstone slot word.
pub const TOMBSTONE: u64 = 1;

impl Slot {
    /// Decodes a slot word.
    #[inline]
    pub fn decode(word: u64) -> Self {
        match word {
            EMPTY => Slot::Empty,
            TOMBSTONE => Slot::Tombstone,
            w => Slot::Live {
                tag: (w >> 48) as u16,
                offset: (w & ((1 << 48) - 1)) * 16,
            },
        }
    }

    /// The word of a live slot (`offset` 16-aligned, at least 4096, below
    /// 2^52).
    #[inline]
    pub fn live(tag: u16, offset: u64) -> u64 {
        debug_assert!(offset % 16 == 0 && (4096..1 << 52).contains(&offset));
        (u64::from(tag) << 48) | (offset / 16)
    }
}

/// A decoded table word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableWord {
    /// Offset of the first slot.
    pub offset: u64,
    /// log2 of the number of slots.
    pub log2_capacity: u32,
}

impl TableWord {
    /// Decodes a table word; `None` for "no table" (0) or a capacity above
    /// [`MAX_LOG2_CAPACITY`].
    #[inline]
    pub fn decode(word: u64) -> Option<Self> {
        if word == 0 {
            return None;
        }
        let log2_capacity = (word >> 58) as u32;
        if log2_capacity > MAX_LOG2_CAPACITY {
            return None;
        }
        Some(Self {
            offset: (word & ((1 << 58) - 1)) * 16,
            log2_capacity,
        })
    }

    /// The word.
    #[inline]
    pub fn encode(self) -> u64 {
        debug_assert!(self.offset % 16 == 0 && self.offset != 0);
        (u64::from(self.log2_capacity) << 58) | (self.offset / 16)
    }

    /// Slots.
    #[inline]
    pub fn capacity(self) -> u64 {
        1 << self.log2_capacity
    }

    /// Bytes of the slot array.
    #[inline]
    pub fn bytes(self) -> u64 {
        self.capacity() * 8
    }

    /// Offset of slot `i`.
    #[inline]
    pub fn slot_at(self, i: u64) -> u64 {
        self.offset + (i & (self.capacity() - 1)) * 8
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_never_collide_with_empty_or_tombstone() {
        let w = Slot::live(0, 4096);
        assert!(w > TOMBSTONE);
        assert_eq!(
            Slot::decode(Slot::live(0xbeef, 1 << 40)),
            Slot::Live {
                tag: 0xbeef,
                offset: 1 << 40
            }
        );
        assert_eq!(Slot::decode(0), Slot::Empty);
        assert_eq!(Slot::decode(1), Slot::Tombstone);
        let t = TableWord {
            offset: 8192,
            log2_capacity: 10,
        };
        assert_eq!(TableWord::decode(t.encode()), Some(t));
        assert_eq!(t.slot_at(1024 + 3), 8192 + 24, "wraps around");
        assert_eq!(TableWord::decode(0), None);
        assert_eq!(TableWord::decode(u64::MAX), None, "capacity 2^63");
    }
}
