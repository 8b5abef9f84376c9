//! The store segment's layout: a header page, the stripes, the allocator's
//! page map, then the data area of blocks.
//!
//! ```text
//! offset            size            what
//! 0                 4096            store header (words below; rest reserved)
//! 4096              stripes x 128   one stripe each: seq, table word, entries (16 words, a line pair)
//! page_map          pages x 4       allocator page map, one u32 per data page (two per word)
//! data_start        ...             blocks (16-aligned), carved into slabs from `carved_end`
//! segment_size                      end (the memfd is sealed at this size)
//! ```
//!
//! Header words (each an aligned `u64`):
//!
//! | word | field |
//! |---|---|
//! | 0 | magic `"KVSSTORE"` |
//! | 1 | layout version (low 32 bits), hash algorithm (high 32; 1 = xxh3-64) |
//! | 2 | hash seed |
//! | 3 | log2 of the stripe count |
//! | 4 | segment size in bytes |
//! | 5 | page map offset |
//! | 6 | data start |
//! | 7 | largest key in bytes |
//! | 8 | largest value in bytes |
//! | 9 | end of the carved area (the allocator's bump pointer) |
//! | 10 | version high-water mark: no version at or above it was handed out |
//! | 11 | store id (random; names this store across server restarts) |
//! | 12 | creation time, unix ns |
//! | 13 | bytes the allocator has committed (published for probes) |
//! | 14 | entries expired (published for probes) |
//! | 15 | entries evicted (published for probes) |
//!
//! A reader copies the header out once (at connect) and validates the copy
//! against the mapping's real length ([`Geometry::from_header`]); it never
//! trusts a header field again after that.

use super::words::Words;

/// `"KVSSTORE"`.
pub const STORE_MAGIC: u64 = u64::from_le_bytes(*b"KVSSTORE");
/// Bumped whenever the store's layout or protocol changes.
pub const STORE_LAYOUT_VERSION: u32 = 1;
/// The hash algorithm id: seeded xxh3-64 of the key bytes.
pub const HASH_XXH3_64: u32 = 1;
/// Size of a page (the allocator's unit of commit and of the page map).
pub const PAGE: u64 = 4096;
/// Bytes per stripe header (two cache lines: readers of one stripe never
/// share a line with a writer of its neighbour).
pub const STRIPE_BYTES: u64 = 128;
/// Offset of the first stripe header.
pub const STRIPES_OFFSET: u64 = PAGE;
/// Most stripes (2^16): the stripe index comes from the top 16 hash bits.
pub const MAX_STRIPE_BITS: u32 = 16;

/// Header word indices (see the module table).
pub mod hdr {
    /// Magic.
    pub const MAGIC: u64 = 0;
    /// Layout version and hash algorithm.
    pub const VERSION: u64 = 1;
    /// Hash seed.
    pub const SEED: u64 = 2;
    /// log2 of the stripe count.
    pub const STRIPE_BITS: u64 = 3;
    /// Segment size.
    pub const SEGMENT_SIZE: u64 = 4;
    /// Page map offset.
    pub const PAGE_MAP: u64 = 5;
    /// Data start.
    pub const DATA_START: u64 = 6;
    /// Largest key.
    pub const MAX_KEY: u64 = 7;
    /// Largest value.
    pub const MAX_VALUE: u64 = 8;
    /// End of the carved area.
    pub const CARVED_END: u64 = 9;
    /// Version high-water mark.
    pub const VERSION_HIGH: u64 = 10;
    /// Store id.
    pub const STORE_ID: u64 = 11;
    /// Creation time.
    pub const CREATED_NS: u64 = 12;
    /// Bytes the allocator has committed (entries and tables, with what
    /// their size classes round up), as the server last published it: what
    /// a probe reports as memory used, since it cannot ask.
    pub const COMMITTED: u64 = 13;
    /// Entries removed because their deadline passed, as the server last
    /// published it (for probes, like `COMMITTED`).
    pub const EXPIRED: u64 = 14;
    /// Entries evicted to make room, as the server last published it.
    pub const EVICTED: u64 = 15;
}

/// Word indices within a stripe header.
pub mod stripe {
    /// The sequence counter (odd while a write is in progress).
    pub const SEQ: u64 = 0;
    /// The table word (see `table::TableWord`).
    pub const TABLE: u64 = 1;
    /// Live entries in the stripe.
    pub const ENTRIES: u64 = 2;
}

/// Where everything is, computed from the configuration by the server and
/// read back (and checked) from the header by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes of the whole segment.
    pub segment_size: u64,
    /// log2 of the stripe count.
    pub stripe_bits: u32,
    /// Offset of the page map.
    pub page_map: u64,
    /// Offset of the first data page.
    pub data_start: u64,
    /// Largest key, bytes.
    pub max_key: u64,
    /// Largest value, bytes.
    pub max_value: u64,
    /// The hash seed.
    pub seed: u64,
}

/// Why a header cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Not a store segment.
    #[error("not a kvs store segment (bad magic)")]
    Magic,
    /// Another layout version or hash algorithm.
    #[error("store layout version {found} (hash {hash}), this build reads version {STORE_LAYOUT_VERSION} (hash {HASH_XXH3_64})")]
    Version {
        /// The version found.
        found: u32,
        /// The hash algorithm found.
        hash: u32,
    },
    /// Fields that contradict each other or the mapping.
    #[error("inconsistent store header: {0}")]
    Inconsistent(&'static str),
}

const fn align_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

impl Geometry {
    /// The layout for a segment of `segment_size` bytes with `2^stripe_bits`
    /// stripes. `segment_size` is rounded up to whole pages.
    pub fn new(
        segment_size: u64,
        stripe_bits: u32,
        max_key: u64,
        max_value: u64,
        seed: u64,
    ) -> Self {
        let stripe_bits = stripe_bits.min(MAX_STRIPE_BITS);
        let segment_size = align_up(segment_size.max(PAGE * 64), PAGE);
        let stripes_end = STRIPES_OFFSET + (STRIPE_BYTES << stripe_bits);
        let page_map = align_up(stripes_end, PAGE);
        // The page map covers every page after it; one u32 per page costs
        // 1/1024 of the segment.
        let map_bytes = align_up((segment_size - page_map) / PAGE * 4, PAGE);
        let data_start = page_map + map_bytes;
        Self {
            segment_size,
            stripe_bits,
            page_map,
            data_start,
            max_key,
            max_value,
            seed,
        }
    }

    /// Number of stripes.
    pub fn stripes(&self) -> u64 {
        1 << self.stripe_bits
    }

    /// Offset of stripe `i`'s header word `word`.
    pub fn stripe_word(&self, i: u64, word: u64) -> u64 {
        STRIPES_OFFSET + i * STRIPE_BYTES + word * 8
    }

    /// Pages in the data area.
    pub fn data_pages(&self) -> u64 {
        (self.segment_size - self.data_start) / PAGE
    }

    /// Writes the header of a fresh store (server, before anyone maps it).
    pub fn write_header(&self, words: &Words<'_>, store_id: u64, created_ns: u64) {
        let put = |w: u64, v: u64| {
            words.store(w * 8, v);
        };
        put(
            hdr::VERSION,
            u64::from(STORE_LAYOUT_VERSION) | (u64::from(HASH_XXH3_64) << 32),
        );
        put(hdr::SEED, self.seed);
        put(hdr::STRIPE_BITS, u64::from(self.stripe_bits));
        put(hdr::SEGMENT_SIZE, self.segment_size);
        put(hdr::PAGE_MAP, self.page_map);
        put(hdr::DATA_START, self.data_start);
        put(hdr::MAX_KEY, self.max_key);
        put(hdr::MAX_VALUE, self.max_value);
        put(hdr::CARVED_END, self.data_start);
        put(hdr::VERSION_HIGH, 0);
        put(hdr::STORE_ID, store_id);
        put(hdr::CREATED_NS, created_ns);
        // The magic last: a header with the magic is complete.
        put(hdr::MAGIC, STORE_MAGIC);
    }

    /// Reads and validates the header of a mapped segment of `words`.
    ///
    /// # Errors
    ///
    /// [`LayoutError`] when it is not a store, another version, or its
    /// fields contradict each other or the mapping's real length.
    pub fn from_header(words: &Words<'_>) -> Result<Self, LayoutError> {
        let get = |w: u64| {
            words
                .load(w * 8)
                .ok_or(LayoutError::Inconsistent("too short"))
        };
        if get(hdr::MAGIC)? != STORE_MAGIC {
            return Err(LayoutError::Magic);
        }
        let v = get(hdr::VERSION)?;
        let (version, hash) = (v as u32, (v >> 32) as u32);
        if version != STORE_LAYOUT_VERSION || hash != HASH_XXH3_64 {
            return Err(LayoutError::Version {
                found: version,
                hash,
            });
        }
        let stripe_bits = get(hdr::STRIPE_BITS)?;
        if stripe_bits > u64::from(MAX_STRIPE_BITS) {
            return Err(LayoutError::Inconsistent("stripe count"));
        }
        let g = Geometry::new(
            get(hdr::SEGMENT_SIZE)?,
            stripe_bits as u32,
            get(hdr::MAX_KEY)?,
            get(hdr::MAX_VALUE)?,
            get(hdr::SEED)?,
        );
        // Everything derived must match what is written, and fit the mapping.
        if g.segment_size != get(hdr::SEGMENT_SIZE)?
            || g.page_map != get(hdr::PAGE_MAP)?
            || g.data_start != get(hdr::DATA_START)?
        {
            return Err(LayoutError::Inconsistent("derived offsets differ"));
        }
        if g.segment_size > words.len_bytes() {
            return Err(LayoutError::Inconsistent("segment larger than the mapping"));
        }
        if g.max_key == 0 || g.max_key > u64::from(u32::MAX) || g.max_value > u64::from(u32::MAX) {
            return Err(LayoutError::Inconsistent("key or value limit"));
        }
        Ok(g)
    }

    /// Whether `[offset, offset + len)` lies in the data area, with `offset`
    /// a multiple of `align`.
    pub fn in_data(&self, offset: u64, len: u64, align: u64) -> bool {
        offset % align == 0
            && offset >= self.data_start
            && offset
                .checked_add(len)
                .is_some_and(|end| end <= self.segment_size)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn regions_follow_each_other_page_aligned() {
        let g = Geometry::new(1 << 30, 10, 1024, 1 << 20, 7);
        assert_eq!(g.stripes(), 1024);
        assert_eq!(g.page_map % PAGE, 0);
        assert!(g.page_map >= STRIPES_OFFSET + 1024 * STRIPE_BYTES);
        assert_eq!(g.data_start % PAGE, 0);
        assert!(g.data_start - g.page_map >= g.data_pages() * 4);
        assert!(g.data_start < g.segment_size);
        assert!(g.in_data(g.data_start, 64, 16));
        assert!(!g.in_data(g.data_start - 16, 64, 16));
        assert!(!g.in_data(g.data_start + 8, 64, 16));
        assert!(!g.in_data(g.segment_size - 8, 64, 8));
        assert!(!g.in_data(u64::MAX - 4, 64, 1));
    }

    #[test]
    fn a_written_header_reads_back_and_a_bad_one_is_refused() {
        let g = Geometry::new(1 << 20, 4, 100, 1000, 42);
        let buf = super::super::words::WordBuf::new(g.segment_size);
        let words = buf.words();
        g.write_header(&words, 9, 10);
        assert_eq!(Geometry::from_header(&words), Ok(g));
        words.store(hdr::PAGE_MAP * 8, g.page_map + 8);
        assert!(matches!(
            Geometry::from_header(&words),
            Err(LayoutError::Inconsistent(_))
        ));
        words.store(hdr::MAGIC * 8, 0);
        assert_eq!(Geometry::from_header(&words), Err(LayoutError::Magic));
        // A header claiming more than the mapping holds.
        let small = super::super::words::WordBuf::new(1 << 16);
        let big = Geometry::new(1 << 24, 4, 100, 1000, 42);
        // Only the header page fits; it is enough to write the header words.
        big.write_header(&small.words(), 1, 1);
        assert!(matches!(
            Geometry::from_header(&small.words()),
            Err(LayoutError::Inconsistent(_))
        ));
    }
}
