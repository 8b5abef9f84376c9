//! The server-private allocator of the shared store segment.
//!
//! The store lives in one sparse, sealed `memfd`: its virtual size is large,
//! pages are committed on demand (`fallocate`) and given back with
//! `FALLOC_FL_PUNCH_HOLE`. Only the server writes the segment; clients map it
//! read-only and read entries lock-free, validating what they copied with
//! seqlock-style generation words. This module hands out the *blocks* (byte
//! ranges) of the segment's data area, `[data_start, data_end)`, that entries
//! are written into.
//!
//! # Rules
//!
//! The rest of the design relies on these rules; each has tests below (the
//! unit tests named `ruleN_*`, and the properties at the end of the module).
//!
//! 1. **Size classes.** Blocks are 16-byte aligned and every block size is a
//!    size class. Classes start at 64 bytes and grow geometrically with four
//!    classes per power of two (64, 80, 96, 112, 128, 160, 192, 224, 256,
//!    320, ...); every class is a multiple of 16 up to 64 KiB and a multiple
//!    of 4096 above (the geometric steps are already such multiples). The
//!    largest class in use is the smallest class that holds
//!    [`AllocConfig::max_block`], so that every size up to `max_block` fits;
//!    `max_block` may be up to [`MAX_BLOCK_LIMIT`] (1 TiB). [`class_for`]
//!    gives the smallest class that holds a size, in O(1) (from the bit
//!    length of the size).
//! 2. **Slabs.** Memory is carved from the data area in *slabs*, at a bump
//!    pointer (`carved_end`) that only grows and is persisted through the
//!    [`Arena`]. A slab has one class forever: classes up to 4 KiB get
//!    64 KiB slabs, classes above 4 KiB and up to 64 KiB get slabs of four
//!    blocks (whole 4 KiB pages), classes above 64 KiB get one-block slabs
//!    (the block size itself, a multiple of 4096). Slabs start on page
//!    boundaries. **A block start is only ever reused as a block start of the
//!    same class**: slabs are never split, merged or re-carved for another
//!    class, not even by [`Allocator::rebuild`]. This lets a reader guard a
//!    long copy with a generation word at a fixed offset of the block: as
//!    long as an offset is a block start at all, that word is where the reader
//!    expects it.
//! 3. **Page map.** The segment holds one `u32` per 4 KiB page of the data
//!    area (see [the table](#the-page-map)), written by [`Allocator::alloc`]
//!    when it carves a slab: the entries first, then `carved_end`, so that a
//!    crash between the two leaves the slab outside the carved area.
//! 4. **Allocation.** [`Allocator::alloc`] returns a free block of the class
//!    of the size: from the class's free list first (LIFO), otherwise from a
//!    new slab carved at `carved_end`. Pages are committed with
//!    [`Arena::commit`] before they are carved: small slabs in steps of
//!    [`AllocConfig::commit_step`] (never more than the memory budget left),
//!    one-block slabs exactly. If the committed bytes would exceed
//!    [`AllocConfig::max_memory`], or the slab would pass `data_end`, or the
//!    commit fails, the answer is [`AllocError::Full`], never a panic, and
//!    nothing changes.
//! 5. **Free.** [`Allocator::free`] frees only a block whose live bit is set
//!    (a server-private bitmap, one bit per 16 bytes of the carved area, set
//!    only at block starts). Anything else is [`FreeError::NotLive`] and
//!    changes nothing, so a corrupted index can never cause a double free. A
//!    freed block of a one-block slab is given back to the system
//!    ([`Arena::release`], a punched hole) and no longer counts as committed;
//!    when it is handed out again it is committed again first. Except that
//!    up to [`AllocConfig::warm_limit`] bytes of them stay committed (the
//!    *warm reserve*, still counted as committed) and are handed out first:
//!    punching a block and committing, faulting and zeroing its pages again
//!    cost more than half of a 64 KiB or 1 MiB SET that replaces a value of
//!    the same size. When the budget or the arena refuses a commit, the
//!    whole warm reserve is released and the allocation tried once more (so
//!    a `Full` answer may have released it).
//! 6. **Accounting.** [`AllocStats::committed_bytes`] is the bytes of carved
//!    small slabs plus the live one-block slabs and the warm reserve
//!    ([`AllocStats::warm_bytes`]); [`AllocStats::live_bytes`]
//!    the sum of the class sizes of the live blocks; [`AllocStats::live_blocks`]
//!    their number. `max_memory` bounds `committed_bytes`. Besides it, at
//!    most one commit step beyond `carved_end` may be committed ahead
//!    ([`AllocStats::commit_end`]).
//! 7. **Rebuild.** [`Allocator::rebuild`] recreates the allocator after a
//!    crash from the page map, `carved_end` and the offsets the index
//!    reaches (see [below](#why-the-state-is-private-and-how-rebuild-works)).
//! 8. **Untrusted input.** Everything read back from the arena (page map
//!    entries, `carved_end`) and every offset handed to [`Allocator::free`]
//!    or [`Allocator::rebuild`] is validated and bounds-checked; garbage is
//!    reported, never indexed out of bounds and never a panic.
//!
//! # The page map
//!
//! Entry `i` describes the 4 KiB page at `data_start + i * 4096`. Where the
//! table lives in the segment is the [`Arena`]'s business; each entry is a
//! `u32`:
//!
//! | bits   | meaning                                                  |
//! |--------|----------------------------------------------------------|
//! | 0..16  | class id + 1 of the slab the page belongs to; 0: not carved |
//! | 16..31 | reserved, zero                                           |
//! | 31     | set on the first page of a slab                          |
//!
//! A slab of class `c` covering pages `p..p + n` therefore reads
//! `0x8000_0000 | (c + 1)` at page `p` and `c + 1` at pages `p + 1..p + n`.
//! For example a 64 KiB slab of class 0 (64-byte blocks) is
//! `0x8000_0001, 0x0000_0001 × 15`; a 1 MiB block (class 56) is
//! `0x8000_0039, 0x0000_0039 × 255`.
//!
//! # Why the state is private, and how rebuild works
//!
//! Free lists, the live bitmap and the accounting change on every SET and
//! DELETE; keeping them in the server's memory makes `alloc` and `free` a
//! handful of instructions with no shared-memory writes, and keeps a client
//! (which can only read the segment anyway) from ever seeing half-updated
//! bookkeeping. What must survive the server is only what cannot be derived
//! from the index: the slab layout (the page map) and its end (`carved_end`).
//! The price is the server's memory: the live bitmap takes 1/128 of the
//! carved area, the page classes 1/4096, the free lists 8 bytes per free
//! block.
//!
//! [`Allocator::rebuild`] walks the page map from `data_start` to the
//! persisted `carved_end` and accepts each slab whose first page carries the
//! start bit and a known class and whose other pages all carry the same
//! class, entirely below `carved_end`. Everything else in the carved area
//! (a zero entry, an unknown class, reserved bits, a continuation where a
//! start belongs, a slab cut short or running past `carved_end`) is counted
//! as a page map problem and made *unusable*: released and never carved
//! again (re-carving it could break rule 2). Trailing pages that were never
//! carved (entry 0) are cut off `carved_end` instead, and `carved_end` is
//! clamped into the data area. Then every reachable offset becomes live if it
//! is a block start of an accepted slab and not live already; any other is
//! rejected with a [`RejectReason`]. Every other block of the accepted slabs
//! is free (one-block slabs released again, so they do not count as
//! committed), and so is what the dead server may have committed ahead of
//! `carved_end`. A rebuild reads each page map entry of the carved area once
//! or twice and takes O(slabs) temporary memory besides the allocator's own.
//!
//! # Example
//!
//! ```
//! use kvs_core::store::alloc::{AllocConfig, Allocator, HeapArena};
//!
//! let config = AllocConfig::new(4096, 4096 + (64 << 20));
//! let arena = HeapArena::new(config.data_start, config.data_end);
//! let mut allocator = Allocator::new(config, &arena);
//!
//! let block = allocator.alloc(&arena, 100).unwrap();
//! assert_eq!(block.capacity, 112);
//! assert!(allocator.free(&arena, block.offset + 16).is_err()); // not a live block
//! assert_eq!(allocator.free(&arena, block.offset).unwrap(), 112);
//!
//! // After a crash: rebuild from the page map and the blocks the index reaches.
//! let kept = allocator.alloc(&arena, 5000).unwrap();
//! let (rebuilt, report) = Allocator::rebuild(config, &arena, [kept.offset]);
//! assert_eq!(report.live_blocks, 1);
//! assert_eq!(rebuilt.capacity_of_live(kept.offset), Some(kept.capacity));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The allocator's page: slabs start on multiples of it and the page map has
/// one entry per page.
pub const PAGE_SIZE: u64 = 4096;

/// Every block start and every class size is a multiple of this.
pub const BLOCK_ALIGN: u64 = 16;

/// The smallest class.
pub const MIN_CLASS: u64 = 64;

/// The largest block size an [`AllocConfig::max_block`] may ask for (1 TiB).
pub const MAX_BLOCK_LIMIT: u64 = 1 << 40;

/// The number of classes up to [`MAX_BLOCK_LIMIT`]; valid class ids are
/// `0..CLASS_COUNT`.
pub const CLASS_COUNT: usize = class_id_of(MAX_BLOCK_LIMIT) + 1;

/// The default [`AllocConfig::max_block`] (1 GiB).
pub const DEFAULT_MAX_BLOCK: u64 = 1 << 30;

/// The default [`AllocConfig::commit_step`] (1 MiB).
pub const DEFAULT_COMMIT_STEP: u64 = 1 << 20;

/// Page map bit set on the first page of a slab.
pub const SLAB_START: u32 = 1 << 31;

/// Page map bits that carry the class id + 1.
const CLASS_MASK: u32 = 0xFFFF;

/// Classes up to this size share 64 KiB slabs.
const SMALL_CLASS_MAX: u64 = 4096;
/// The slab size of small classes.
const SMALL_SLAB: u64 = 64 * 1024;
/// Classes above this size get one-block slabs.
const MID_CLASS_MAX: u64 = 64 * 1024;
/// Blocks per slab of the classes between `SMALL_CLASS_MAX` and `MID_CLASS_MAX`.
const MID_SLAB_BLOCKS: u64 = 4;

// The private page map stores `class id + 1` in a byte.
const _: () = assert!(CLASS_COUNT < u8::MAX as usize);

/// The class id of `size` (`1..=MAX_BLOCK_LIMIT`; 0 for anything up to 64).
const fn class_id_of(size: u64) -> usize {
    if size <= MIN_CLASS {
        return 0;
    }
    let v = size - 1;
    // 2^p <= size - 1 < 2^(p+1), p >= 6; the classes in (2^p, 2^(p+1)] are
    // 2^p + m * 2^(p-2) for m = 1..=4; the smallest one >= size has
    // m = j + 1, j being the two bits below the leading one of size - 1.
    let p = 63 - v.leading_zeros() as usize;
    let j = ((v >> (p - 2)) & 3) as usize;
    (p - 6) * 4 + j + 1
}

/// The size of class `id` (`id < CLASS_COUNT`): `2^(q+6) + r * 2^(q+4)` for
/// `id = 4q + r`.
const fn size_of_class(id: usize) -> u64 {
    let q = (id / 4) as u32;
    let r = (id % 4) as u64;
    (1 << (q + 6)) + (r << (q + 4))
}

/// The slab size of a class size (rule 2).
const fn slab_size_of(class_size: u64) -> u64 {
    if class_size <= SMALL_CLASS_MAX {
        SMALL_SLAB
    } else if class_size <= MID_CLASS_MAX {
        (MID_SLAB_BLOCKS * class_size).div_ceil(PAGE_SIZE) * PAGE_SIZE
    } else {
        class_size
    }
}

/// Whether blocks of this class size get one-block slabs (released on free).
const fn is_large(class_size: u64) -> bool {
    class_size > MID_CLASS_MAX
}

/// The smallest class that holds `size` bytes: its id and size, or `None`
/// if `size` is larger than `max_block` (or [`MAX_BLOCK_LIMIT`]). Sizes up
/// to 64 (0 included) get the 64-byte class 0.
pub fn class_for(size: u64, max_block: u64) -> Option<(u16, u64)> {
    if size > max_block.min(MAX_BLOCK_LIMIT) {
        return None;
    }
    let id = class_id_of(size);
    Some((id as u16, size_of_class(id)))
}

/// The size of class `id`, or `None` if there is no such class.
pub fn class_size(id: u16) -> Option<u64> {
    let id = usize::from(id);
    (id < CLASS_COUNT).then(|| size_of_class(id))
}

/// The size of the slabs of class `id` (rule 2), or `None` if there is no
/// such class.
pub fn slab_size(id: u16) -> Option<u64> {
    class_size(id).map(slab_size_of)
}

/// Decodes a page map entry: the class id and whether the page starts a
/// slab, or `None` for 0, an unknown class or reserved bits set.
fn decode_entry(entry: u32) -> Option<(usize, bool)> {
    if entry & !(CLASS_MASK | SLAB_START) != 0 {
        return None;
    }
    let tag = (entry & CLASS_MASK) as usize;
    if tag == 0 || tag > CLASS_COUNT {
        return None;
    }
    Some((tag - 1, entry & SLAB_START != 0))
}

/// What the allocator needs of the memory it manages (a memfd segment in the
/// server; a [`HeapArena`] in tests).
pub trait Arena {
    /// Makes `[offset, offset + len)` usable (`fallocate`). An error means
    /// out of memory.
    fn commit(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Gives `[offset, offset + len)` back to the system (its bytes read as
    /// zeros afterwards).
    fn release(&self, offset: u64, len: u64);
    /// Page map entry of data page `index` (page 0 = the page at
    /// `data_start`); 0 if out of range.
    fn page_entry(&self, index: u64) -> u32;
    /// Sets page map entry `index`; ignored if out of range.
    fn set_page_entry(&self, index: u64, value: u32);
    /// The persisted end of the carved area (absolute offset).
    fn carved_end(&self) -> u64;
    /// Persists the end of the carved area.
    fn set_carved_end(&self, end: u64);
}

/// Where the allocator works and how much it may use.
///
/// The allocator uses a normalized copy ([`Allocator::config`]): `data_start`
/// rounded up and `data_end` down to [`PAGE_SIZE`] (and not below
/// `data_start`), `max_block` clamped to `1..=MAX_BLOCK_LIMIT`, and
/// `commit_step` rounded up to a whole, non-zero number of pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocConfig {
    /// Absolute offset of the data area in the segment (page 0 of the page map).
    pub data_start: u64,
    /// Absolute end of the data area (the segment's virtual end for data).
    pub data_end: u64,
    /// Upper bound of [`AllocStats::committed_bytes`].
    pub max_memory: u64,
    /// The largest size [`Allocator::alloc`] accepts.
    pub max_block: u64,
    /// How much to commit at once ahead of small slabs.
    pub commit_step: u64,
    /// Bytes of freed one-block slabs kept committed for reuse (rule 5);
    /// 0 releases every one at once.
    pub warm_limit: u64,
}

impl AllocConfig {
    /// A configuration for `[data_start, data_end)` with no memory limit,
    /// [`DEFAULT_MAX_BLOCK`] and [`DEFAULT_COMMIT_STEP`].
    pub fn new(data_start: u64, data_end: u64) -> Self {
        Self {
            data_start,
            data_end,
            max_memory: u64::MAX,
            max_block: DEFAULT_MAX_BLOCK,
            commit_step: DEFAULT_COMMIT_STEP,
            warm_limit: 0,
        }
    }

    fn normalized(self) -> Self {
        let data_start = self
            .data_start
            .div_ceil(PAGE_SIZE)
            .saturating_mul(PAGE_SIZE);
        let data_end = (self.data_end / PAGE_SIZE * PAGE_SIZE).max(data_start);
        let commit_step = self
            .commit_step
            .div_ceil(PAGE_SIZE)
            .max(1)
            .saturating_mul(PAGE_SIZE);
        Self {
            data_start,
            data_end,
            max_memory: self.max_memory,
            max_block: self.max_block.clamp(1, MAX_BLOCK_LIMIT),
            commit_step,
            warm_limit: self.warm_limit,
        }
    }
}

/// A block handed out by [`Allocator::alloc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Block {
    /// Absolute offset of the block in the segment.
    pub offset: u64,
    /// Its size: the class size, at least the size asked for.
    pub capacity: u64,
}

/// Why [`Allocator::alloc`] found no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullCause {
    /// The committed bytes would exceed [`AllocConfig::max_memory`].
    MemoryLimit,
    /// A new slab would pass [`AllocConfig::data_end`].
    SegmentEnd,
    /// [`Arena::commit`] failed.
    CommitFailed(io::ErrorKind),
}

impl fmt::Display for FullCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MemoryLimit => f.write_str("the memory limit is reached"),
            Self::SegmentEnd => f.write_str("the segment's data area is exhausted"),
            Self::CommitFailed(kind) => write!(f, "committing memory failed ({kind})"),
        }
    }
}

/// Errors of [`Allocator::alloc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// No block of the size's class can be had now.
    #[error("no room for a block of {size} bytes: {cause}")]
    Full {
        /// The size asked for.
        size: u64,
        /// Why.
        cause: FullCause,
    },
    /// The size is larger than the largest block.
    #[error("a block of {size} bytes is larger than the largest block ({max} bytes)")]
    TooLarge {
        /// The size asked for.
        size: u64,
        /// [`AllocConfig::max_block`].
        max: u64,
    },
}

/// Errors of [`Allocator::free`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FreeError {
    /// The offset is not the start of a live block; nothing was changed.
    #[error("offset {offset} is not the start of a live block")]
    NotLive {
        /// The offset given.
        offset: u64,
    },
}

/// Why [`Allocator::rebuild`] rejected a reachable offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// Below `data_start` or at or above the (validated) `carved_end`.
    #[error("outside the carved area")]
    OutsideCarvedArea,
    /// On a page that belongs to no valid slab.
    #[error("not inside a valid slab")]
    NotInSlab,
    /// Inside a slab, but not where one of its blocks starts.
    #[error("not a block start")]
    NotBlockStart,
    /// A block already marked live by an earlier reachable offset.
    #[error("reached twice")]
    Duplicate,
}

/// What [`Allocator::rebuild`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Blocks marked live (the accepted reachable offsets).
    pub live_blocks: u64,
    /// Blocks of valid slabs left free.
    pub free_blocks: u64,
    /// Reachable offsets that were not accepted, in the order given.
    pub rejected: Vec<(u64, RejectReason)>,
    /// Inconsistencies of the page map and `carved_end`.
    pub page_map_problems: usize,
    /// Bytes of the carved area that belong to no valid slab; they are
    /// released and never used again.
    pub unusable_bytes: u64,
}

/// A snapshot of the allocator's accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Carved small slabs plus live blocks of one-block slabs (bounded by
    /// [`AllocConfig::max_memory`]).
    pub committed_bytes: u64,
    /// Sum of the class sizes of the live blocks.
    pub live_bytes: u64,
    /// Number of live blocks.
    pub live_blocks: u64,
    /// Number of blocks on the free lists.
    pub free_blocks: u64,
    /// End of the carved area (absolute).
    pub carved_end: u64,
    /// End of what was committed ahead of `carved_end` (absolute; at least
    /// `carved_end`).
    pub commit_end: u64,
    /// Bytes of free one-block slabs kept committed (the warm reserve, part
    /// of `committed_bytes`).
    pub warm_bytes: u64,
}

/// The server-private allocator of the store segment (see the [module
/// documentation](self)).
pub struct Allocator {
    config: AllocConfig,
    carved_end: u64,
    commit_end: u64,
    committed_bytes: u64,
    live_bytes: u64,
    live_blocks: u64,
    free_blocks: u64,
    /// Free block offsets per class, used LIFO.
    free: Vec<Vec<u64>>,
    /// Free blocks of one-block slabs still committed, per class, used
    /// LIFO before `free` (rule 5).
    warm: Vec<Vec<u64>>,
    warm_bytes: u64,
    /// Bytes of the budget the current allocation must leave uncommitted
    /// (see [`Allocator::alloc_reserving`]); 0 outside it.
    reserve: u64,
    /// Class id + 1 per page of the carved area; 0 for unusable pages.
    page_class: Vec<u8>,
    /// One bit per 16 bytes of the carved area, set at live block starts.
    live: Vec<u64>,
}

impl fmt::Debug for Allocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Allocator")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Allocator {
    /// An allocator over a fresh segment: sets the arena's `carved_end` to
    /// `data_start` (the page map is expected to read zeros).
    pub fn new(config: AllocConfig, arena: &impl Arena) -> Self {
        let this = Self::empty(config);
        arena.set_carved_end(this.carved_end);
        this
    }

    fn empty(config: AllocConfig) -> Self {
        let config = config.normalized();
        Self {
            config,
            carved_end: config.data_start,
            commit_end: config.data_start,
            committed_bytes: 0,
            live_bytes: 0,
            live_blocks: 0,
            free_blocks: 0,
            free: vec![Vec::new(); CLASS_COUNT],
            warm: vec![Vec::new(); CLASS_COUNT],
            warm_bytes: 0,
            reserve: 0,
            page_class: Vec::new(),
            live: Vec::new(),
        }
    }

    /// The (normalized) configuration in use.
    pub fn config(&self) -> AllocConfig {
        self.config
    }

    /// The accounting now.
    pub fn stats(&self) -> AllocStats {
        AllocStats {
            committed_bytes: self.committed_bytes,
            live_bytes: self.live_bytes,
            live_blocks: self.live_blocks,
            free_blocks: self.free_blocks,
            carved_end: self.carved_end,
            commit_end: self.commit_end,
            warm_bytes: self.warm_bytes,
        }
    }

    /// A block of at least `size` bytes (rule 4).
    pub fn alloc(&mut self, arena: &impl Arena, size: u64) -> Result<Block, AllocError> {
        let Some((class, class_size)) = class_for(size, self.config.max_block) else {
            return Err(AllocError::TooLarge {
                size,
                max: self.config.max_block,
            });
        };
        let class = usize::from(class);
        match self.alloc_class(arena, class, class_size) {
            Err(_) if self.warm_bytes > 0 => {
                // Room held by the warm reserve: give it back, try once more.
                self.release_warm(arena);
                self.alloc_class(arena, class, class_size)
            }
            other => other,
        }
        .map_err(|cause| AllocError::Full { size, cause })
    }

    /// [`alloc`](Self::alloc) that leaves `reserve` bytes of the memory
    /// budget uncommitted: a new slab or a large block is committed only
    /// while the committed bytes stay within `max_memory - reserve`; free
    /// blocks of carved slabs are handed out as always. A store that
    /// evicts allocates its entries this way, so that its index tables
    /// (allocated with `alloc`) find room to grow when the entries have
    /// filled what they may: evicting entries frees only blocks of the
    /// entries' classes (rule 2), never room for a table of another class.
    ///
    /// # Errors
    ///
    /// As [`alloc`](Self::alloc).
    pub fn alloc_reserving(
        &mut self,
        arena: &impl Arena,
        size: u64,
        reserve: u64,
    ) -> Result<Block, AllocError> {
        self.reserve = reserve;
        let block = self.alloc(arena, size);
        self.reserve = 0;
        block
    }

    /// Releases every block of the warm reserve (they stay free).
    fn release_warm(&mut self, arena: &impl Arena) {
        for class in 0..CLASS_COUNT {
            let class_size = size_of_class(class);
            for offset in std::mem::take(&mut self.warm[class]) {
                arena.release(offset, class_size);
                self.committed_bytes -= class_size;
                self.free[class].push(offset);
            }
        }
        self.warm_bytes = 0;
    }

    /// [`Allocator::alloc`] of a class, without the retry.
    fn alloc_class(
        &mut self,
        arena: &impl Arena,
        class: usize,
        class_size: u64,
    ) -> Result<Block, FullCause> {
        let offset = if let Some(offset) = self.warm[class].pop() {
            // Still committed (and counted): hand it out as it is.
            self.warm_bytes -= class_size;
            self.free_blocks -= 1;
            offset
        } else if let Some(&offset) = self.free[class].last() {
            if is_large(class_size) {
                // Free blocks of one-block slabs are released: commit again.
                self.check_budget(class_size)?;
                arena
                    .commit(offset, class_size)
                    .map_err(|e| FullCause::CommitFailed(e.kind()))?;
                self.committed_bytes += class_size;
            }
            self.free[class].pop();
            self.free_blocks -= 1;
            offset
        } else {
            self.carve(arena, class, class_size)?
        };
        self.set_live(offset);
        self.live_bytes += class_size;
        self.live_blocks += 1;
        Ok(Block {
            offset,
            capacity: class_size,
        })
    }

    /// Whether `more` committed bytes stay within `max_memory`.
    fn check_budget(&self, more: u64) -> Result<(), FullCause> {
        match self.committed_bytes.checked_add(more) {
            Some(total) if total <= self.config.max_memory.saturating_sub(self.reserve) => Ok(()),
            _ => Err(FullCause::MemoryLimit),
        }
    }

    /// Carves a slab of `class` at `carved_end`, returns its first block and
    /// puts the others on the free list.
    fn carve(
        &mut self,
        arena: &impl Arena,
        class: usize,
        class_size: u64,
    ) -> Result<u64, FullCause> {
        let slab = slab_size_of(class_size);
        let start = self.carved_end;
        let end = match start.checked_add(slab) {
            Some(end) if end <= self.config.data_end => end,
            _ => return Err(FullCause::SegmentEnd),
        };
        self.check_budget(slab)?;
        if end > self.commit_end {
            self.commit_for(arena, end, slab, is_large(class_size))?;
        }

        // Rule 3: the page map first, then the carved end.
        let first_page = (start - self.config.data_start) / PAGE_SIZE;
        let pages = slab / PAGE_SIZE;
        let tag = class as u32 + 1;
        arena.set_page_entry(first_page, tag | SLAB_START);
        for page in first_page + 1..first_page + pages {
            arena.set_page_entry(page, tag);
        }
        arena.set_carved_end(end);

        self.carved_end = end;
        self.page_class
            .resize(self.page_class.len() + pages as usize, tag as u8);
        self.grow_bitmap();
        self.committed_bytes += slab;
        let blocks = slab / class_size;
        // Pushed from the top, so that the free list hands out ascending offsets.
        let list = &mut self.free[class];
        list.extend((1..blocks).rev().map(|i| start + i * class_size));
        self.free_blocks += blocks - 1;
        Ok(start)
    }

    /// Commits from `commit_end` up to at least `end`: exactly for a large
    /// slab, otherwise to the next commit step (within the data area and the
    /// memory budget left after the slab of `slab` bytes).
    fn commit_for(
        &mut self,
        arena: &impl Arena,
        end: u64,
        slab: u64,
        large: bool,
    ) -> Result<(), FullCause> {
        let config = &self.config;
        let from = self.commit_end;
        let target = if large {
            end
        } else {
            let step = config.commit_step;
            let step_end = (end - config.data_start)
                .div_ceil(step)
                .saturating_mul(step)
                .saturating_add(config.data_start)
                .min(config.data_end);
            // check_budget passed, so this does not underflow.
            let budget = config.max_memory - self.committed_bytes - slab;
            let budget_end = end.saturating_add(budget / PAGE_SIZE * PAGE_SIZE);
            step_end.min(budget_end).max(end)
        };
        match arena.commit(from, target - from) {
            Ok(()) => self.commit_end = target,
            // A whole step may not fit where the slab alone does.
            Err(_) if target > end && arena.commit(from, end - from).is_ok() => {
                self.commit_end = end
            }
            Err(e) => return Err(FullCause::CommitFailed(e.kind())),
        }
        Ok(())
    }

    /// Rebuilds the allocator of a segment whose server died (rule 7): from
    /// the arena's page map and `carved_end`, and the block offsets that the
    /// index reaches. Unusable pages, the free blocks of one-block slabs and
    /// whatever was committed ahead of `carved_end` are released; a repaired
    /// `carved_end` is written back. Never panics, whatever the arena holds.
    pub fn rebuild(
        config: AllocConfig,
        arena: &impl Arena,
        reachable: impl IntoIterator<Item = u64>,
    ) -> (Self, RebuildReport) {
        let mut this = Self::empty(config);
        let config = this.config;
        let mut report = RebuildReport::default();

        // The persisted carved end, clamped into the data area, whole pages.
        let raw_end = arena.carved_end();
        let mut end = raw_end.clamp(config.data_start, config.data_end);
        let misaligned = (end - config.data_start) % PAGE_SIZE != 0;
        end = config.data_start + (end - config.data_start).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        if end != raw_end || misaligned {
            report.page_map_problems += 1;
        }
        let claimed_end = end;
        // Trailing pages that were never carved are not part of the carved area.
        let mut pages = (end - config.data_start) / PAGE_SIZE;
        let claimed_pages = pages;
        while pages > 0 && arena.page_entry(pages - 1) == 0 {
            pages -= 1;
        }
        if pages < claimed_pages {
            report.page_map_problems += 1;
        }
        end = config.data_start + pages * PAGE_SIZE;

        // Walk the page map: accept whole slabs, make the rest unusable.
        let mut page_class = vec![0_u8; pages as usize];
        let mut slabs: Vec<(u64, usize)> = Vec::new();
        let mut unusable: Vec<(u64, u64)> = Vec::new();
        let mut mark_unusable = |from: u64, to: u64, report: &mut RebuildReport| {
            report.page_map_problems += 1;
            report.unusable_bytes += (to - from) * PAGE_SIZE;
            match unusable.last_mut() {
                Some(last) if last.1 == from => last.1 = to,
                _ => unusable.push((from, to)),
            }
        };
        let mut page = 0;
        while page < pages {
            let Some((class, true)) = decode_entry(arena.page_entry(page)) else {
                mark_unusable(page, page + 1, &mut report);
                page += 1;
                continue;
            };
            let slab_pages = slab_size_of(size_of_class(class)) / PAGE_SIZE;
            let tag = class as u32 + 1;
            let limit = page.saturating_add(slab_pages).min(pages);
            let mut next = page + 1;
            while next < limit && arena.page_entry(next) == tag {
                next += 1;
            }
            if next - page < slab_pages {
                // Cut short by another entry or by the carved end.
                mark_unusable(page, next, &mut report);
            } else {
                page_class[page as usize..next as usize].fill(tag as u8);
                slabs.push((config.data_start + page * PAGE_SIZE, class));
            }
            page = next;
        }

        this.carved_end = end;
        this.commit_end = end;
        this.page_class = page_class;
        this.grow_bitmap();
        if end != raw_end {
            arena.set_carved_end(end);
        }

        // The reachable blocks.
        for offset in reachable {
            match this.check_reachable(&slabs, offset) {
                Ok(class_size) => {
                    this.set_live(offset);
                    this.live_bytes += class_size;
                    this.live_blocks += 1;
                    if is_large(class_size) {
                        this.committed_bytes += class_size;
                    }
                }
                Err(reason) => report.rejected.push((offset, reason)),
            }
        }

        // Everything else is free, handed out lowest offset first.
        for &(start, class) in slabs.iter().rev() {
            let class_size = size_of_class(class);
            let slab = slab_size_of(class_size);
            if !is_large(class_size) {
                this.committed_bytes += slab;
            }
            for i in (0..slab / class_size).rev() {
                let offset = start + i * class_size;
                if !this.is_live(offset) {
                    if is_large(class_size) {
                        arena.release(offset, class_size);
                    }
                    this.free[class].push(offset);
                    this.free_blocks += 1;
                }
            }
        }
        for (from, to) in unusable {
            let start = config.data_start + from * PAGE_SIZE;
            arena.release(start, (to - from) * PAGE_SIZE);
        }
        // What the dead server may have committed ahead of the carved end.
        let step = config.commit_step;
        let step_end = (end - config.data_start)
            .div_ceil(step)
            .saturating_mul(step)
            .saturating_add(config.data_start)
            .min(config.data_end);
        let ahead_end = step_end.max(claimed_end);
        if ahead_end > end {
            arena.release(end, ahead_end - end);
        }

        report.live_blocks = this.live_blocks;
        report.free_blocks = this.free_blocks;
        (this, report)
    }

    /// Whether `offset` may become live in a rebuild: its class size, or why not.
    fn check_reachable(&self, slabs: &[(u64, usize)], offset: u64) -> Result<u64, RejectReason> {
        if offset < self.config.data_start || offset >= self.carved_end {
            return Err(RejectReason::OutsideCarvedArea);
        }
        let page = ((offset - self.config.data_start) / PAGE_SIZE) as usize;
        if self.page_class.get(page).copied().unwrap_or(0) == 0 {
            return Err(RejectReason::NotInSlab);
        }
        // The slab with the largest start <= offset; it contains the page.
        let index = slabs.partition_point(|&(start, _)| start <= offset);
        let Some(&(start, class)) = index.checked_sub(1).and_then(|i| slabs.get(i)) else {
            return Err(RejectReason::NotInSlab);
        };
        let class_size = size_of_class(class);
        let rel = offset - start;
        if rel % class_size != 0 || rel + class_size > slab_size_of(class_size) {
            return Err(RejectReason::NotBlockStart);
        }
        if self.is_live(offset) {
            return Err(RejectReason::Duplicate);
        }
        Ok(class_size)
    }

    /// Frees the live block at `offset` and returns its capacity (rule 5).
    pub fn free(&mut self, arena: &impl Arena, offset: u64) -> Result<u64, FreeError> {
        let Some((class, class_size)) = self.live_class(offset) else {
            return Err(FreeError::NotLive { offset });
        };
        self.clear_live(offset);
        self.live_bytes -= class_size;
        self.live_blocks -= 1;
        self.free_blocks += 1;
        if is_large(class_size) {
            if self.warm_bytes + class_size <= self.config.warm_limit {
                self.warm[class].push(offset);
                self.warm_bytes += class_size;
                return Ok(class_size);
            }
            arena.release(offset, class_size);
            self.committed_bytes -= class_size;
        }
        self.free[class].push(offset);
        Ok(class_size)
    }

    /// The capacity of the live block at `offset`, or `None` if no live block
    /// starts there.
    pub fn capacity_of_live(&self, offset: u64) -> Option<u64> {
        self.live_class(offset).map(|(_, size)| size)
    }

    /// The bit of `offset` in the live bitmap, if it is 16-byte aligned and
    /// inside the carved area.
    fn bit_of(&self, offset: u64) -> Option<usize> {
        let rel = offset.checked_sub(self.config.data_start)?;
        (offset < self.carved_end && rel % BLOCK_ALIGN == 0).then_some((rel / BLOCK_ALIGN) as usize)
    }

    fn is_live(&self, offset: u64) -> bool {
        self.bit_of(offset).is_some_and(|bit| {
            self.live
                .get(bit / 64)
                .is_some_and(|w| w >> (bit % 64) & 1 != 0)
        })
    }

    /// The class id and size of the live block at `offset`.
    fn live_class(&self, offset: u64) -> Option<(usize, u64)> {
        if !self.is_live(offset) {
            return None;
        }
        let page = ((offset - self.config.data_start) / PAGE_SIZE) as usize;
        let class = usize::from(*self.page_class.get(page)?).checked_sub(1)?;
        Some((class, size_of_class(class)))
    }

    /// Sets the live bit of `offset` (a block start in the carved area).
    fn set_live(&mut self, offset: u64) {
        if let Some(bit) = self.bit_of(offset) {
            self.live[bit / 64] |= 1 << (bit % 64);
        }
    }

    fn clear_live(&mut self, offset: u64) {
        if let Some(bit) = self.bit_of(offset) {
            self.live[bit / 64] &= !(1 << (bit % 64));
        }
    }

    /// Grows the live bitmap to cover the carved area.
    fn grow_bitmap(&mut self) {
        let bits = (self.carved_end - self.config.data_start) / BLOCK_ALIGN;
        self.live.resize(bits.div_ceil(64) as usize, 0);
    }
}

/// An event recorded by [`HeapArena`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArenaEvent {
    /// A successful [`Arena::commit`].
    Commit {
        /// Start of the range.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// An [`Arena::release`].
    Release {
        /// Start of the range.
        offset: u64,
        /// Its length.
        len: u64,
    },
}

#[derive(Debug, Clone, Default)]
struct HeapArenaState {
    /// Committed ranges, start -> end, disjoint and not adjacent.
    committed: BTreeMap<u64, u64>,
    committed_bytes: u64,
    commit_limit: Option<u64>,
    events: Vec<ArenaEvent>,
}

impl HeapArenaState {
    /// Bytes of `[start, end)` not committed yet.
    fn uncovered(&self, start: u64, end: u64) -> u64 {
        let covered: u64 = self
            .committed
            .range(..end)
            .rev()
            .take_while(|&(_, &e)| e > start)
            .map(|(&s, &e)| e.min(end) - s.max(start))
            .sum();
        (end - start) - covered
    }

    fn insert(&mut self, start: u64, end: u64) {
        let (mut lo, mut hi) = (start, end);
        let touching: Vec<(u64, u64)> = self
            .committed
            .range(..=end)
            .rev()
            .take_while(|&(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.committed.remove(&s);
            self.committed_bytes -= e - s;
            lo = lo.min(s);
            hi = hi.max(e);
        }
        self.committed.insert(lo, hi);
        self.committed_bytes += hi - lo;
    }

    fn remove(&mut self, start: u64, end: u64) {
        let overlapping: Vec<(u64, u64)> = self
            .committed
            .range(..end)
            .rev()
            .take_while(|&(_, &e)| e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            self.committed.remove(&s);
            self.committed_bytes -= e - s;
            if s < start {
                self.committed.insert(s, start);
                self.committed_bytes += start - s;
            }
            if e > end {
                self.committed.insert(end, e);
                self.committed_bytes += e - end;
            }
        }
    }
}

/// An [`Arena`] over heap memory, for tests: a page map, a carved end and a
/// record of the committed ranges (no data bytes). An optional limit on the
/// committed bytes makes commits fail like `fallocate` on a full `tmpfs`.
pub struct HeapArena {
    page_map: Vec<AtomicU32>,
    carved_end: AtomicU64,
    state: Mutex<HeapArenaState>,
}

impl fmt::Debug for HeapArena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeapArena")
            .field("pages", &self.page_map.len())
            .field("carved_end", &self.carved_end())
            .field("committed_bytes", &self.committed_bytes())
            .finish_non_exhaustive()
    }
}

impl Clone for HeapArena {
    fn clone(&self) -> Self {
        Self {
            page_map: self
                .page_map
                .iter()
                .map(|e| AtomicU32::new(e.load(Ordering::Relaxed)))
                .collect(),
            carved_end: AtomicU64::new(self.carved_end()),
            state: Mutex::new(self.state().clone()),
        }
    }
}

impl HeapArena {
    /// An arena whose page map covers `[data_start, data_end)` (whole pages),
    /// all zero, with nothing committed and no commit limit.
    pub fn new(data_start: u64, data_end: u64) -> Self {
        let pages = data_end.saturating_sub(data_start) / PAGE_SIZE;
        Self {
            page_map: (0..pages).map(|_| AtomicU32::new(0)).collect(),
            carved_end: AtomicU64::new(0),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, HeapArenaState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of page map entries.
    pub fn page_count(&self) -> u64 {
        self.page_map.len() as u64
    }

    /// Makes commits fail once the committed bytes would exceed `limit`.
    pub fn set_commit_limit(&self, limit: Option<u64>) {
        self.state().commit_limit = limit;
    }

    /// Bytes committed now (committed and not released since).
    pub fn committed_bytes(&self) -> u64 {
        self.state().committed_bytes
    }

    /// Whether all of `[offset, offset + len)` is committed.
    pub fn is_committed(&self, offset: u64, len: u64) -> bool {
        let end = offset.saturating_add(len);
        len == 0 || self.state().uncovered(offset, end) == 0
    }

    /// Whether no byte of `[offset, offset + len)` is committed.
    pub fn is_released(&self, offset: u64, len: u64) -> bool {
        let end = offset.saturating_add(len);
        self.state().uncovered(offset, end) == end - offset
    }

    /// The commits and releases so far, in order.
    pub fn events(&self) -> Vec<ArenaEvent> {
        self.state().events.clone()
    }

    /// Forgets the recorded events.
    pub fn clear_events(&self) {
        self.state().events.clear();
    }
}

impl Arena for HeapArena {
    fn commit(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut state = self.state();
        if let Some(limit) = state.commit_limit {
            if state.committed_bytes + state.uncovered(offset, end) > limit {
                return Err(io::Error::from(io::ErrorKind::StorageFull));
            }
        }
        if len > 0 {
            state.insert(offset, end);
        }
        state.events.push(ArenaEvent::Commit { offset, len });
        Ok(())
    }

    fn release(&self, offset: u64, len: u64) {
        let end = offset.saturating_add(len);
        let mut state = self.state();
        state.remove(offset, end);
        state.events.push(ArenaEvent::Release { offset, len });
    }

    fn page_entry(&self, index: u64) -> u32 {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.page_map.get(i))
            .map_or(0, |e| e.load(Ordering::Relaxed))
    }

    fn set_page_entry(&self, index: u64, value: u32) {
        if let Some(e) = usize::try_from(index)
            .ok()
            .and_then(|i| self.page_map.get(i))
        {
            e.store(value, Ordering::Relaxed);
        }
    }

    fn carved_end(&self) -> u64 {
        self.carved_end.load(Ordering::Relaxed)
    }

    fn set_carved_end(&self, end: u64) {
        self.carved_end.store(end, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use proptest::prelude::*;

    use super::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    const GIB: u64 = 1024 * MIB;
    /// A data area that does not start at 0, as in the real segment.
    const DS: u64 = 3 * PAGE_SIZE;

    /// The class sizes as rule 1 words them, built by brute force.
    fn reference_classes() -> Vec<u64> {
        let mut classes = Vec::new();
        let mut base = MIN_CLASS;
        while base <= MAX_BLOCK_LIMIT {
            for k in 0..4 {
                let class = base + k * base / 4;
                let unit = if class <= 64 * KIB { 16 } else { 4096 };
                classes.push(class.div_ceil(unit) * unit);
            }
            base *= 2;
        }
        classes.retain(|&c| c <= MAX_BLOCK_LIMIT);
        classes
    }

    /// The smallest reference class that holds `size`, if `size <= max_block`.
    fn reference_class_for(size: u64, max_block: u64) -> Option<u64> {
        if size > max_block {
            return None;
        }
        reference_classes().into_iter().find(|&c| c >= size)
    }

    /// The slab size of a class size as rule 2 words it.
    fn reference_slab(class: u64) -> u64 {
        if class <= 4 * KIB {
            64 * KIB
        } else if class <= 64 * KIB {
            (4 * class).div_ceil(PAGE_SIZE) * PAGE_SIZE
        } else {
            class
        }
    }

    fn area_config(area: u64) -> AllocConfig {
        AllocConfig {
            data_start: DS,
            data_end: DS + area,
            max_memory: u64::MAX,
            max_block: MIB,
            commit_step: MIB,
            warm_limit: 0,
        }
    }

    fn setup(config: AllocConfig) -> (HeapArena, Allocator) {
        let arena = HeapArena::new(config.data_start, config.data_end);
        let allocator = Allocator::new(config, &arena);
        (arena, allocator)
    }

    /// Which class each page belongs to, per the arena's page map: `(slab
    /// start, class size)` of the valid slab containing `offset` below
    /// `carved_end`, found independently of the allocator's walk.
    fn slab_of(arena: &HeapArena, carved_end: u64, offset: u64) -> Option<(u64, u64)> {
        if offset < DS || offset >= carved_end {
            return None;
        }
        let pages = (carved_end - DS) / PAGE_SIZE;
        let entry = arena.page_entry((offset - DS) / PAGE_SIZE);
        let tag = entry & 0xFFFF;
        if entry & 0x7FFF_0000 != 0 || tag == 0 || tag as usize > CLASS_COUNT {
            return None;
        }
        let mut start = (offset - DS) / PAGE_SIZE;
        loop {
            let e = arena.page_entry(start);
            if e == tag | SLAB_START {
                break;
            }
            if e != tag || start == 0 {
                return None;
            }
            start -= 1;
        }
        let class = reference_classes()[tag as usize - 1];
        let slab_pages = reference_slab(class) / PAGE_SIZE;
        if start + slab_pages > pages {
            return None;
        }
        if (start + 1..start + slab_pages).any(|p| arena.page_entry(p) != tag) {
            return None;
        }
        Some((DS + start * PAGE_SIZE, class))
    }

    /// The class size if `offset` is a block start of a valid slab.
    fn block_class(arena: &HeapArena, carved_end: u64, offset: u64) -> Option<u64> {
        let (start, class) = slab_of(arena, carved_end, offset)?;
        let rel = offset - start;
        (rel % class == 0 && rel + class <= reference_slab(class)).then_some(class)
    }

    // ---- Rule 1: size classes ----

    #[test]
    fn rule1_classes_start_at_64_with_four_per_power_of_two() {
        let first: Vec<u64> = (0..12).map(|id| class_size(id).unwrap()).collect();
        assert_eq!(
            first,
            [64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448]
        );
        let reference = reference_classes();
        assert_eq!(reference.len(), CLASS_COUNT);
        for (id, &size) in reference.iter().enumerate() {
            assert_eq!(class_size(id as u16), Some(size), "class {id}");
        }
        assert_eq!(class_size(CLASS_COUNT as u16), None);
        assert_eq!(class_size(u16::MAX), None);
        assert_eq!(reference[CLASS_COUNT - 1], MAX_BLOCK_LIMIT);
    }

    #[test]
    fn rule1_classes_are_rounded_multiples() {
        for id in 0..CLASS_COUNT as u16 {
            let size = class_size(id).unwrap();
            assert_eq!(size % BLOCK_ALIGN, 0, "class {size}");
            if size > 64 * KIB {
                assert_eq!(size % PAGE_SIZE, 0, "class {size}");
            }
        }
    }

    #[test]
    fn rule1_class_for_is_the_smallest_class_that_holds_the_size() {
        let reference = reference_classes();
        let mut sizes: Vec<u64> = (0..=70_000).collect();
        for &c in &reference {
            sizes.extend([c - 1, c, c + 1]);
        }
        for size in sizes {
            let expected = reference
                .iter()
                .position(|&c| c >= size)
                .filter(|_| size <= MAX_BLOCK_LIMIT)
                .map(|i| (i as u16, reference[i]));
            assert_eq!(class_for(size, MAX_BLOCK_LIMIT), expected, "size {size}");
        }
        assert_eq!(class_for(0, 1), Some((0, 64)));
        assert_eq!(class_for(u64::MAX, u64::MAX), None);
    }

    #[test]
    fn rule1_max_block_bounds_the_sizes_not_the_classes() {
        // Every size up to max_block fits, in a class that may be larger.
        assert_eq!(class_for(1_000_000, 1_000_000), Some((56, MIB)));
        assert_eq!(class_for(1_000_001, 1_000_000), None);
        assert_eq!(class_for(GIB, GIB), Some((96, GIB)));
        assert_eq!(class_for(GIB + 1, GIB), None);

        let (arena, mut allocator) = setup(area_config(16 * MIB));
        assert_eq!(
            allocator.alloc(&arena, MIB + 1),
            Err(AllocError::TooLarge {
                size: MIB + 1,
                max: MIB
            })
        );
        assert_eq!(allocator.stats().carved_end, DS);
    }

    #[test]
    fn rule1_a_one_gib_block_is_possible() {
        let config = AllocConfig {
            max_block: GIB,
            ..area_config(4 * GIB)
        };
        let (arena, mut allocator) = setup(config);
        let small = allocator.alloc(&arena, 10).unwrap();
        let big = allocator.alloc(&arena, GIB).unwrap();
        assert_eq!(big.capacity, GIB);
        assert_eq!(big.offset % PAGE_SIZE, 0);
        assert!(arena.is_committed(big.offset, GIB));
        assert_eq!(allocator.free(&arena, big.offset), Ok(GIB));
        assert!(arena.is_released(big.offset, GIB));
        assert_eq!(allocator.capacity_of_live(small.offset), Some(64));
    }

    #[test]
    fn rule1_blocks_are_16_byte_aligned() {
        let (arena, mut allocator) = setup(area_config(64 * MIB));
        for size in (0..300_000).step_by(997) {
            let block = allocator.alloc(&arena, size).unwrap();
            assert_eq!(block.offset % BLOCK_ALIGN, 0);
            assert!(block.capacity >= size);
        }
    }

    // ---- Rule 2: slabs ----

    #[test]
    fn rule2_slab_sizes_and_page_alignment() {
        let (arena, mut allocator) = setup(area_config(64 * MIB));
        // (size asked, class, slab size)
        let cases = [
            (1, 64, 64 * KIB),
            (100, 112, 64 * KIB),
            (4096, 4096, 64 * KIB),
            (4097, 5 * KIB, 20 * KIB),
            (7000, 7 * KIB, 28 * KIB),
            (64 * KIB, 64 * KIB, 256 * KIB),
            (64 * KIB + 1, 80 * KIB, 80 * KIB),
            (MIB, MIB, MIB),
        ];
        for (size, class, slab) in cases {
            let before = allocator.stats();
            let block = allocator.alloc(&arena, size).unwrap();
            let after = allocator.stats();
            assert_eq!(block.capacity, class, "size {size}");
            assert_eq!(
                block.offset, before.carved_end,
                "a new slab starts at carved_end"
            );
            assert_eq!(block.offset % PAGE_SIZE, 0);
            assert_eq!(after.carved_end - before.carved_end, slab, "size {size}");
            assert_eq!(
                after.free_blocks - before.free_blocks,
                slab / class - 1,
                "the rest of the slab is free"
            );
        }
    }

    #[test]
    fn rule2_block_starts_keep_their_class() {
        // Many allocations and frees of mixed classes in a small area with a
        // memory limit, with rebuilds in between: an offset once handed out as
        // a block start of class c is only ever handed out as class c again.
        let config = AllocConfig {
            max_memory: 3 * MIB,
            commit_step: 64 * KIB,
            ..area_config(4 * MIB)
        };
        let (mut arena, mut allocator) = setup(config);
        let mut class_at: HashMap<u64, u64> = HashMap::new();
        let mut live: Vec<u64> = Vec::new();
        let mut carved_end = DS;
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            if round % 5_000 == 4_999 {
                let copy = arena.clone();
                let (rebuilt, report) = Allocator::rebuild(config, &copy, live.iter().copied());
                assert!(report.rejected.is_empty());
                (arena, allocator) = (copy, rebuilt);
            }
            if live.is_empty() || next() % 3 != 0 {
                let size = match next() % 8 {
                    0..=4 => next() % 4097,
                    5 | 6 => next() % (64 * KIB),
                    _ => next() % (400 * KIB),
                };
                let Ok(block) = allocator.alloc(&arena, size) else {
                    continue;
                };
                let class = *class_at.entry(block.offset).or_insert(block.capacity);
                assert_eq!(
                    class, block.capacity,
                    "offset {} changed class",
                    block.offset
                );
                live.push(block.offset);
            } else {
                let offset = live.swap_remove((next() % live.len() as u64) as usize);
                allocator.free(&arena, offset).unwrap();
            }
            let end = allocator.stats().carved_end;
            assert!(end >= carved_end, "carved_end only grows");
            carved_end = end;
        }
        assert!(class_at.len() > 100);
    }

    // ---- Rule 3: page map ----

    #[test]
    fn rule3_page_map_records_each_slab() {
        let (arena, mut allocator) = setup(area_config(16 * MIB));
        let a = allocator.alloc(&arena, 64).unwrap(); // class 0, 16 pages
        let b = allocator.alloc(&arena, 5000).unwrap(); // class 25 (5 KiB), 5 pages
        let c = allocator.alloc(&arena, 100 * KIB).unwrap(); // class 43 (112 KiB), 28 pages
        assert_eq!(
            (a.offset, b.offset, c.offset),
            (DS, DS + 64 * KIB, DS + 84 * KIB)
        );
        let mut expected = vec![0x8000_0001];
        expected.extend([1; 15]);
        expected.push(0x8000_001A);
        expected.extend([0x1A; 4]);
        expected.push(0x8000_002C);
        expected.extend([0x2C; 27]);
        expected.push(0);
        let got: Vec<u32> = (0..expected.len() as u64)
            .map(|p| arena.page_entry(p))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(arena.carved_end(), DS + (16 + 5 + 28) * PAGE_SIZE);
        // Reusing a free block writes nothing.
        allocator.free(&arena, a.offset).unwrap();
        allocator.alloc(&arena, 1).unwrap();
        assert_eq!(arena.page_entry(expected.len() as u64 - 1), 0);
    }

    // ---- Rule 4: allocation ----

    #[test]
    fn rule4_free_list_is_lifo() {
        let (arena, mut allocator) = setup(area_config(16 * MIB));
        let a = allocator.alloc(&arena, 100).unwrap();
        let b = allocator.alloc(&arena, 100).unwrap();
        assert_eq!(
            b.offset,
            a.offset + 112,
            "a fresh slab hands out ascending offsets"
        );
        allocator.free(&arena, a.offset).unwrap();
        allocator.free(&arena, b.offset).unwrap();
        assert_eq!(allocator.alloc(&arena, 97).unwrap().offset, b.offset);
        assert_eq!(allocator.alloc(&arena, 112).unwrap().offset, a.offset);
        // Large blocks too.
        let c = allocator.alloc(&arena, 200 * KIB).unwrap();
        let d = allocator.alloc(&arena, 200 * KIB).unwrap();
        allocator.free(&arena, c.offset).unwrap();
        allocator.free(&arena, d.offset).unwrap();
        assert_eq!(allocator.alloc(&arena, 200 * KIB).unwrap().offset, d.offset);
    }

    #[test]
    fn rule4_commits_before_carving_in_steps() {
        let (arena, mut allocator) = setup(area_config(16 * MIB));
        allocator.alloc(&arena, 64).unwrap();
        assert_eq!(
            arena.events(),
            [ArenaEvent::Commit {
                offset: DS,
                len: MIB
            }]
        );
        // 15 more small slabs (of other classes) fit in the first step.
        for size in (1..16).map(|id| class_size(id).unwrap()) {
            allocator.alloc(&arena, size).unwrap();
        }
        assert_eq!(allocator.stats().carved_end, DS + MIB);
        assert_eq!(arena.events().len(), 1);
        allocator.alloc(&arena, 4000).unwrap();
        assert_eq!(
            arena.events()[1],
            ArenaEvent::Commit {
                offset: DS + MIB,
                len: MIB
            }
        );
        // A large slab takes the committed step ahead, then exactly what it needs.
        arena.clear_events();
        let big = allocator.alloc(&arena, 1000 * KIB).unwrap();
        assert_eq!(big.offset, DS + MIB + 64 * KIB);
        let end = big.offset + MIB;
        assert_eq!(
            arena.events(),
            [ArenaEvent::Commit {
                offset: DS + 2 * MIB,
                len: end - (DS + 2 * MIB)
            }]
        );
        assert_eq!(allocator.stats().commit_end, end);
        assert!(arena.is_committed(DS, end - DS));
    }

    #[test]
    fn rule4_commit_ahead_stays_within_the_data_area_and_budget() {
        let config = AllocConfig {
            max_memory: 100 * KIB,
            ..area_config(16 * MIB)
        };
        let (arena, mut allocator) = setup(config);
        allocator.alloc(&arena, 64).unwrap();
        assert_eq!(
            arena.events(),
            [ArenaEvent::Commit {
                offset: DS,
                len: 100 * KIB
            }]
        );

        let (arena, mut allocator) = setup(area_config(96 * KIB));
        allocator.alloc(&arena, 64).unwrap();
        assert_eq!(
            arena.events(),
            [ArenaEvent::Commit {
                offset: DS,
                len: 96 * KIB
            }]
        );
    }

    #[test]
    fn rule4_full_at_the_memory_limit() {
        let config = AllocConfig {
            max_memory: 208 * KIB,
            ..area_config(16 * MIB)
        };
        let (arena, mut allocator) = setup(config);
        let a = allocator.alloc(&arena, 64).unwrap(); // 64 KiB committed
        allocator.alloc(&arena, 80).unwrap(); // 128 KiB
        let before = allocator.stats();
        // A 64 KiB block needs a 256 KiB slab.
        assert_eq!(
            allocator.alloc(&arena, 64 * KIB),
            Err(AllocError::Full {
                size: 64 * KIB,
                cause: FullCause::MemoryLimit,
            })
        );
        assert_eq!(allocator.stats(), before, "Full changes nothing");
        // An 80 KiB one-block slab fits exactly; a second one does not.
        let big = allocator.alloc(&arena, 70 * KIB).unwrap();
        assert_eq!(big.capacity, 80 * KIB);
        assert_eq!(allocator.stats().committed_bytes, 208 * KIB);
        assert!(allocator.alloc(&arena, 70 * KIB).is_err());
        // Free blocks of carved slabs are still handed out.
        allocator.free(&arena, a.offset).unwrap();
        assert_eq!(allocator.alloc(&arena, 64).unwrap().offset, a.offset);
        // Freeing the big block gives its memory back; handing it out again
        // needs the budget again.
        allocator.free(&arena, big.offset).unwrap();
        assert_eq!(allocator.stats().committed_bytes, 128 * KIB);
        assert_eq!(
            allocator.alloc(&arena, 80 * KIB).unwrap().offset,
            big.offset
        );
        allocator.free(&arena, big.offset).unwrap();
        // Another small slab takes 64 KiB of the budget; now it does not fit.
        allocator.alloc(&arena, 96).unwrap();
        assert_eq!(allocator.stats().committed_bytes, 192 * KIB);
        let before = allocator.stats();
        assert_eq!(
            allocator.alloc(&arena, 80 * KIB),
            Err(AllocError::Full {
                size: 80 * KIB,
                cause: FullCause::MemoryLimit,
            })
        );
        assert_eq!(allocator.stats(), before);
    }

    #[test]
    fn rule4_full_at_the_segment_end() {
        let config = AllocConfig {
            data_end: DS + 92 * KIB + 5, // rounded down to 92 KiB
            ..area_config(0)
        };
        let (arena, mut allocator) = setup(config);
        assert_eq!(allocator.config().data_end, DS + 92 * KIB);
        allocator.alloc(&arena, 64).unwrap();
        let before = allocator.stats();
        // 28 KiB are left: not enough for a small slab.
        assert_eq!(
            allocator.alloc(&arena, 80),
            Err(AllocError::Full {
                size: 80,
                cause: FullCause::SegmentEnd
            })
        );
        assert_eq!(allocator.stats(), before);
        // Four 7 KiB blocks fill them exactly.
        for _ in 0..4 {
            allocator.alloc(&arena, 7 * KIB).unwrap();
        }
        assert_eq!(allocator.stats().carved_end, DS + 92 * KIB);
        assert!(allocator.alloc(&arena, 7 * KIB).is_err());
        assert!(allocator.alloc(&arena, 5 * KIB).is_err());
        // An empty data area is always full.
        let (arena, mut allocator) = setup(area_config(0));
        assert!(allocator.alloc(&arena, 1).is_err());
    }

    #[test]
    fn rule4_full_when_commit_fails() {
        let (arena, mut allocator) = setup(area_config(16 * MIB));
        arena.set_commit_limit(Some(0));
        let before = allocator.stats();
        assert_eq!(
            allocator.alloc(&arena, 1),
            Err(AllocError::Full {
                size: 1,
                cause: FullCause::CommitFailed(io::ErrorKind::StorageFull)
            })
        );
        assert_eq!(allocator.stats(), before);
        assert_eq!(arena.page_entry(0), 0);
        assert_eq!(arena.carved_end(), DS);
        // A whole step does not fit, the slab alone does.
        arena.set_commit_limit(Some(64 * KIB));
        let a = allocator.alloc(&arena, 1).unwrap();
        assert_eq!(allocator.stats().commit_end, DS + 64 * KIB);
        assert!(allocator.alloc(&arena, 80).is_err());
        // A released large block whose commit fails stays free.
        arena.set_commit_limit(None);
        let big = allocator.alloc(&arena, 100 * KIB).unwrap();
        allocator.free(&arena, big.offset).unwrap();
        arena.set_commit_limit(Some(arena.committed_bytes()));
        let before = allocator.stats();
        assert!(allocator.alloc(&arena, 100 * KIB).is_err());
        assert_eq!(allocator.stats(), before);
        arena.set_commit_limit(None);
        assert_eq!(
            allocator.alloc(&arena, 100 * KIB).unwrap().offset,
            big.offset
        );
        assert_eq!(allocator.capacity_of_live(a.offset), Some(64));
    }

    // ---- Rule 5: free ----

    #[test]
    fn rule5_free_rejects_what_is_not_live() {
        let (arena, mut allocator) = setup(area_config(16 * MIB));
        let a = allocator.alloc(&arena, 64).unwrap();
        let b = allocator.alloc(&arena, 64).unwrap();
        let big = allocator.alloc(&arena, 100 * KIB).unwrap();
        allocator.free(&arena, a.offset).unwrap();
        let end = allocator.stats().carved_end;
        let garbage = [
            a.offset,      // freed already
            b.offset + 16, // inside a live block
            b.offset + 1,
            b.offset + 64, // a block start that is free
            big.offset + PAGE_SIZE,
            big.offset + 16,
            DS - 16,
            0,
            end,
            end + 64,
            u64::MAX,
            u64::MAX - 15,
        ];
        let before = allocator.stats();
        let events = arena.events();
        for offset in garbage {
            assert_eq!(
                allocator.free(&arena, offset),
                Err(FreeError::NotLive { offset }),
                "offset {offset}"
            );
            assert_eq!(allocator.capacity_of_live(offset), None);
        }
        assert_eq!(allocator.stats(), before);
        assert_eq!(arena.events(), events);
        assert_eq!(allocator.free(&arena, b.offset), Ok(64));
        assert_eq!(
            allocator.free(&arena, b.offset),
            Err(FreeError::NotLive { offset: b.offset })
        );
    }

    #[test]
    fn rule5_the_warm_reserve_keeps_freed_large_blocks_until_the_budget_needs_them() {
        let config = AllocConfig {
            max_memory: 512 * KIB,
            warm_limit: 300 * KIB,
            ..area_config(16 * MIB)
        };
        let (arena, mut allocator) = setup(config);
        let a = allocator.alloc(&arena, 200 * KIB).unwrap(); // 224 KiB
        let b = allocator.alloc(&arena, 200 * KIB).unwrap();
        assert_eq!(allocator.stats().committed_bytes, 448 * KIB);
        arena.clear_events();
        // The first fits the reserve: no release, still counted.
        allocator.free(&arena, a.offset).unwrap();
        assert!(arena.events().is_empty());
        assert_eq!(allocator.stats().warm_bytes, 224 * KIB);
        assert_eq!(allocator.stats().committed_bytes, 448 * KIB);
        // The second does not: released as without a reserve.
        allocator.free(&arena, b.offset).unwrap();
        assert!(arena.is_released(b.offset, 224 * KIB));
        assert_eq!(allocator.stats().committed_bytes, 224 * KIB);
        // The warm block is handed out first, with no commit.
        arena.clear_events();
        assert_eq!(allocator.alloc(&arena, 210 * KIB).unwrap(), a);
        assert!(arena.events().is_empty());
        assert_eq!(allocator.stats().warm_bytes, 0);
        allocator.free(&arena, a.offset).unwrap();
        // A small slab (64 KiB) fits next to the reserve; a 320 KiB block
        // does not until the reserve is released, which alloc does itself.
        allocator.alloc(&arena, 64).unwrap();
        let c = allocator.alloc(&arena, 300 * KIB).unwrap();
        assert_eq!(c.capacity, 320 * KIB);
        assert!(arena.is_released(a.offset, 224 * KIB));
        let stats = allocator.stats();
        assert_eq!(stats.warm_bytes, 0);
        assert_eq!(stats.committed_bytes, 64 * KIB + 320 * KIB);
        assert_eq!(
            arena.committed_bytes(),
            stats.committed_bytes + (stats.commit_end - stats.carved_end)
        );
    }

    #[test]
    fn rule5_large_blocks_are_released_and_committed_again() {
        let (arena, mut allocator) = setup(area_config(16 * MIB));
        let big = allocator.alloc(&arena, 200 * KIB).unwrap();
        assert_eq!(big.capacity, 224 * KIB);
        let committed = allocator.stats().committed_bytes;
        arena.clear_events();
        assert_eq!(allocator.free(&arena, big.offset), Ok(224 * KIB));
        assert_eq!(
            arena.events(),
            [ArenaEvent::Release {
                offset: big.offset,
                len: 224 * KIB
            }]
        );
        assert!(arena.is_released(big.offset, 224 * KIB));
        assert_eq!(allocator.stats().committed_bytes, committed - 224 * KIB);
        arena.clear_events();
        assert_eq!(allocator.alloc(&arena, 210 * KIB).unwrap(), big);
        assert_eq!(
            arena.events(),
            [ArenaEvent::Commit {
                offset: big.offset,
                len: 224 * KIB
            }]
        );
        assert_eq!(allocator.stats().committed_bytes, committed);
        // Small and middle blocks stay committed.
        let small = allocator.alloc(&arena, 10 * KIB).unwrap();
        arena.clear_events();
        allocator.free(&arena, small.offset).unwrap();
        assert!(arena.events().is_empty());
    }

    // ---- Rule 6: accounting ----

    #[test]
    fn rule6_accounting() {
        let (arena, mut allocator) = setup(area_config(16 * MIB));
        let a = allocator.alloc(&arena, 100).unwrap(); // 112 in a 64 KiB slab of 585
        let b = allocator.alloc(&arena, 5000).unwrap(); // 5 KiB in a 20 KiB slab of 4
        let c = allocator.alloc(&arena, 100 * KIB).unwrap(); // 112 KiB, one block
        let stats = allocator.stats();
        assert_eq!(stats.live_blocks, 3);
        assert_eq!(stats.live_bytes, 112 + 5 * KIB + 112 * KIB);
        assert_eq!(stats.committed_bytes, 64 * KIB + 20 * KIB + 112 * KIB);
        assert_eq!(stats.free_blocks, 584 + 3);
        assert_eq!(stats.carved_end, DS + 196 * KIB);
        assert_eq!(stats.commit_end, DS + MIB);
        allocator.free(&arena, c.offset).unwrap();
        allocator.free(&arena, a.offset).unwrap();
        let stats = allocator.stats();
        assert_eq!(stats.live_blocks, 1);
        assert_eq!(stats.live_bytes, 5 * KIB);
        assert_eq!(stats.committed_bytes, 84 * KIB);
        assert_eq!(stats.free_blocks, 585 + 3 + 1);
        assert_eq!(arena.committed_bytes(), MIB - 112 * KIB);
        assert_eq!(allocator.capacity_of_live(b.offset), Some(5 * KIB));
    }

    // ---- Rule 7: rebuild ----

    /// The free offsets per class, as sets.
    fn free_sets(allocator: &Allocator) -> Vec<BTreeSet<u64>> {
        allocator
            .free
            .iter()
            .map(|list| list.iter().copied().collect())
            .collect()
    }

    #[test]
    fn rule7_rebuild_restores_live_and_free_blocks() {
        let (arena, mut allocator) = setup(area_config(16 * MIB));
        let mut live = Vec::new();
        for size in [
            10,
            100,
            100,
            3000,
            5000,
            9000,
            50 * KIB,
            70 * KIB,
            300 * KIB,
        ] {
            live.push(allocator.alloc(&arena, size).unwrap());
            live.push(allocator.alloc(&arena, size).unwrap());
        }
        for block in live.drain(..).step_by(2).collect::<Vec<_>>() {
            allocator.free(&arena, block.offset).unwrap();
        }
        let live: Vec<Block> = (0..allocator.stats().carved_end)
            .step_by(16)
            .filter_map(|o| {
                allocator.capacity_of_live(o).map(|c| Block {
                    offset: o,
                    capacity: c,
                })
            })
            .collect();
        assert_eq!(live.len(), 9);

        let copy = arena.clone();
        let (rebuilt, report) =
            Allocator::rebuild(allocator.config(), &copy, live.iter().map(|b| b.offset));
        let stats = allocator.stats();
        assert_eq!(
            report,
            RebuildReport {
                live_blocks: 9,
                free_blocks: stats.free_blocks,
                ..RebuildReport::default()
            }
        );
        let rebuilt_stats = rebuilt.stats();
        assert_eq!(rebuilt_stats.commit_end, rebuilt_stats.carved_end);
        assert_eq!(
            AllocStats {
                commit_end: 0,
                ..rebuilt_stats
            },
            AllocStats {
                commit_end: 0,
                ..stats
            }
        );
        for block in &live {
            assert_eq!(rebuilt.capacity_of_live(block.offset), Some(block.capacity));
        }
        assert_eq!(free_sets(&rebuilt), free_sets(&allocator));
        // What was committed ahead is released: the arena holds what is counted.
        assert_eq!(copy.committed_bytes(), rebuilt_stats.committed_bytes);
    }

    #[test]
    fn rule7_rebuild_rejects_with_reasons() {
        let (arena, mut allocator) = setup(area_config(16 * MIB));
        let a = allocator.alloc(&arena, 100).unwrap(); // 112-byte blocks, 585 per slab
        let b = allocator.alloc(&arena, 5000).unwrap();
        let c = allocator.alloc(&arena, 100).unwrap();
        let end = allocator.stats().carved_end;
        // A slab the page map no longer vouches for.
        arena.set_page_entry((b.offset - DS) / PAGE_SIZE + 1, 0x8000_0001);
        let reachable = [
            a.offset,
            a.offset,             // twice
            a.offset + 16,        // inside a block
            a.offset + 585 * 112, // where a block would not fit the slab
            c.offset,             // the next block of a's slab
            b.offset,             // its slab is broken now
            DS - 16,              // below the data area
            end,                  // at the carved end
            u64::MAX,             //
        ];
        let (rebuilt, report) = Allocator::rebuild(allocator.config(), &arena, reachable);
        use RejectReason::*;
        assert_eq!(
            report.rejected,
            [
                (a.offset, Duplicate),
                (a.offset + 16, NotBlockStart),
                (a.offset + 585 * 112, NotBlockStart),
                (b.offset, NotInSlab),
                (DS - 16, OutsideCarvedArea),
                (end, OutsideCarvedArea),
                (u64::MAX, OutsideCarvedArea),
            ]
        );
        assert_eq!(report.live_blocks, 2);
        // b's slab start (one page) is unusable; the broken start page
        // after it and its 3 continuation pages too.
        assert_eq!(report.page_map_problems, 2 + 3);
        assert_eq!(report.unusable_bytes, 5 * PAGE_SIZE);
        assert!(arena.is_released(b.offset, 20 * KIB));
        assert_eq!(rebuilt.capacity_of_live(a.offset), Some(112));
        assert_eq!(rebuilt.capacity_of_live(b.offset), None);
        // 585 blocks in a's slab, 2 live.
        assert_eq!(report.free_blocks, 585 - 2);
    }

    #[test]
    fn rule7_rebuild_releases_free_large_blocks_and_what_was_committed_ahead() {
        let (arena, mut allocator) = setup(area_config(16 * MIB));
        let a = allocator.alloc(&arena, 100 * KIB).unwrap();
        let b = allocator.alloc(&arena, 100 * KIB).unwrap();
        let small = allocator.alloc(&arena, 64).unwrap();
        let end = allocator.stats().carved_end;
        assert_eq!(allocator.stats().commit_end, DS + MIB);
        arena.clear_events();
        let (rebuilt, report) =
            Allocator::rebuild(allocator.config(), &arena, [b.offset, small.offset]);
        assert_eq!(report.live_blocks, 2);
        assert_eq!(
            arena.events(),
            [
                ArenaEvent::Release {
                    offset: a.offset,
                    len: 112 * KIB
                },
                ArenaEvent::Release {
                    offset: end,
                    len: DS + MIB - end
                },
            ]
        );
        assert_eq!(rebuilt.stats().committed_bytes, 112 * KIB + 64 * KIB);
        assert_eq!(arena.committed_bytes(), 112 * KIB + 64 * KIB);
        // The released block is committed again when handed out.
        let mut rebuilt = rebuilt;
        assert_eq!(rebuilt.alloc(&arena, 100 * KIB).unwrap().offset, a.offset);
        assert!(arena.is_committed(a.offset, 112 * KIB));
    }

    #[test]
    fn rule7_rebuild_of_a_fresh_segment() {
        let config = area_config(16 * MIB);
        let arena = HeapArena::new(DS, DS + 16 * MIB);
        // Allocator::new never ran: carved_end reads 0.
        let (mut rebuilt, report) = Allocator::rebuild(config, &arena, []);
        assert_eq!(report.page_map_problems, 1);
        assert_eq!(report.live_blocks + report.free_blocks, 0);
        assert_eq!(arena.carved_end(), DS, "the repaired end is written back");
        let (_, report) = Allocator::rebuild(config, &arena, []);
        assert_eq!(report, RebuildReport::default());
        assert_eq!(rebuilt.alloc(&arena, 1).unwrap().offset, DS);
    }

    // ---- Rule 8: untrusted input ----

    #[test]
    fn rule8_rebuild_survives_garbage() {
        let config = area_config(MIB);
        let pages = MIB / PAGE_SIZE;
        // carved_end far beyond the data area, nothing carved.
        let arena = HeapArena::new(DS, DS + MIB);
        arena.set_carved_end(u64::MAX);
        let (rebuilt, report) = Allocator::rebuild(config, &arena, [DS, u64::MAX]);
        assert_eq!(rebuilt.stats().carved_end, DS);
        assert_eq!(report.page_map_problems, 2); // clamped, then trimmed
        assert_eq!(report.rejected.len(), 2);

        // A misaligned carved_end after one valid slab is rounded up, then trimmed.
        let arena = HeapArena::new(DS, DS + MIB);
        arena.set_page_entry(0, 0x8000_0001);
        (1..16).for_each(|p| arena.set_page_entry(p, 1));
        arena.set_carved_end(DS + 64 * KIB + 5);
        let (rebuilt, report) = Allocator::rebuild(config, &arena, [DS + 64]);
        assert_eq!(rebuilt.stats().carved_end, DS + 64 * KIB);
        assert_eq!(report.page_map_problems, 2);
        assert_eq!(report.live_blocks, 1);

        // Every kind of bad entry, then a valid slab.
        let arena = HeapArena::new(DS, DS + MIB);
        let entries: Vec<u32> = [
            vec![0x8001_0001],                            // reserved bits
            vec![0x8000_0000 | (CLASS_COUNT as u32 + 1)], // unknown class
            vec![0x8000_0000],                            // class 0 is "not carved"
            vec![1, 1],                                   // continuations without a start
            vec![0],                                      // a hole
            vec![0x8000_001A, 0x1A],                      // a 5 KiB slab cut short ...
            vec![0x8000_001A, 0x1A, 0x1A, 0x1A, 0x1A],    // ... by a valid one
            vec![0xFFFF_FFFF],
            vec![0x8000_0001], // a small slab cut short by the end
            vec![1; 3],
        ]
        .concat();
        for (page, &entry) in entries.iter().enumerate() {
            arena.set_page_entry(page as u64, entry);
        }
        arena.set_carved_end(DS + entries.len() as u64 * PAGE_SIZE);
        let (mut rebuilt, report) =
            Allocator::rebuild(config, &arena, (0..pages * 4).map(|i| DS + i * 1024));
        assert_eq!(report.page_map_problems, 9);
        assert_eq!(
            report.unusable_bytes,
            (entries.len() as u64 - 5) * PAGE_SIZE
        );
        // Only the valid slab's 4 blocks were accepted.
        let valid = DS + 8 * PAGE_SIZE;
        assert_eq!(report.live_blocks, 4);
        for i in 0..4 {
            assert_eq!(rebuilt.capacity_of_live(valid + i * 5 * KIB), Some(5 * KIB));
        }
        // New slabs go at the carved end, never into unusable pages.
        let end = rebuilt.stats().carved_end;
        assert_eq!(end, DS + entries.len() as u64 * PAGE_SIZE);
        assert_eq!(rebuilt.alloc(&arena, 64).unwrap().offset, end);
        assert_eq!(
            rebuilt.alloc(&arena, 5 * KIB).unwrap().offset,
            end + 64 * KIB
        );
    }

    #[test]
    fn config_is_normalized() {
        let config = AllocConfig {
            data_start: 5,
            data_end: 3 * PAGE_SIZE - 1,
            max_memory: 0,
            max_block: u64::MAX,
            commit_step: 0,
            warm_limit: 7,
        };
        let (arena, mut allocator) = setup(config);
        assert_eq!(
            allocator.config(),
            AllocConfig {
                data_start: PAGE_SIZE,
                data_end: 2 * PAGE_SIZE,
                max_memory: 0,
                max_block: MAX_BLOCK_LIMIT,
                commit_step: PAGE_SIZE,
                warm_limit: 7,
            }
        );
        assert!(allocator.alloc(&arena, 1).is_err());
        let inverted = AllocConfig::new(10 * PAGE_SIZE, PAGE_SIZE).normalized();
        assert_eq!(inverted.data_end, inverted.data_start);
    }

    #[test]
    fn heap_arena_tracks_committed_ranges() {
        let arena = HeapArena::new(0, MIB);
        arena.commit(0, 10).unwrap();
        arena.commit(20, 10).unwrap();
        arena.commit(10, 10).unwrap();
        assert_eq!(arena.committed_bytes(), 30);
        assert!(arena.is_committed(0, 30));
        arena.commit(5, 100).unwrap();
        assert_eq!(arena.committed_bytes(), 105);
        arena.release(50, 10);
        assert_eq!(arena.committed_bytes(), 95);
        assert!(arena.is_committed(0, 50) && arena.is_committed(60, 45));
        assert!(arena.is_released(50, 10) && !arena.is_released(45, 10));
        arena.set_commit_limit(Some(100));
        assert!(arena.commit(50, 5).is_ok());
        assert!(arena.commit(200, 6).is_err());
        assert_eq!(arena.committed_bytes(), 100);
        assert_eq!(arena.page_entry(u64::MAX), 0);
        arena.set_page_entry(u64::MAX, 7);
        assert_eq!(arena.page_count(), MIB / PAGE_SIZE);
    }

    // ---- Properties ----

    /// One step of a random workload.
    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u64),
        /// Frees the n-th live block (modulo their number).
        Free(usize),
        /// Frees an offset inside the n-th live block (never its start).
        FreeInterior(usize, u64),
        /// Frees an arbitrary offset.
        FreeGarbage(u64),
        /// Frees an offset freed before.
        FreeFreed(usize),
    }

    fn size_strategy() -> impl Strategy<Value = u64> {
        prop_oneof![
            8 => 0..=4 * KIB,
            3 => 4 * KIB + 1..=64 * KIB,
            2 => 64 * KIB + 1..=MIB + 10,
        ]
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => size_strategy().prop_map(Op::Alloc),
            5 => any::<usize>().prop_map(Op::Free),
            1 => (any::<usize>(), any::<u64>()).prop_map(|(i, d)| Op::FreeInterior(i, d)),
            1 => any::<u64>().prop_map(Op::FreeGarbage),
            1 => any::<usize>().prop_map(Op::FreeFreed),
        ]
    }

    fn config_strategy() -> impl Strategy<Value = AllocConfig> {
        (
            prop::sample::select(vec![4 * MIB, 16 * MIB]),
            prop::sample::select(vec![256 * KIB, MIB, 3 * MIB, u64::MAX]),
            prop::sample::select(vec![64 * KIB, MIB]),
            prop::sample::select(vec![PAGE_SIZE, 64 * KIB, MIB]),
            prop::sample::select(vec![0, 200 * KIB, 2 * MIB]),
        )
            .prop_map(|(area, max_memory, max_block, commit_step, warm_limit)| {
                AllocConfig {
                    data_start: DS,
                    data_end: DS + area,
                    max_memory,
                    max_block,
                    commit_step,
                    warm_limit,
                }
            })
    }

    /// What the allocator should hold, kept the simple way.
    #[derive(Debug, Clone, Default)]
    struct Model {
        /// Live blocks: offset -> capacity.
        live: BTreeMap<u64, u64>,
        /// Free blocks per class size.
        free: BTreeMap<u64, BTreeSet<u64>>,
        /// Carved slabs: start -> (class size, slab size).
        slabs: BTreeMap<u64, (u64, u64)>,
        carved_end: u64,
        committed: u64,
        /// Free one-block slabs still committed (the warm reserve), per
        /// class size, and their bytes.
        warm: BTreeMap<u64, BTreeSet<u64>>,
        warm_bytes: u64,
        /// Offsets freed so far.
        freed: Vec<u64>,
        /// The class of every offset ever handed out (rule 2).
        class_at: HashMap<u64, u64>,
    }

    /// An allocator, its arena and the model it is checked against.
    #[derive(Debug)]
    struct Harness {
        config: AllocConfig,
        arena: HeapArena,
        allocator: Allocator,
        model: Model,
    }

    impl Harness {
        fn new(config: AllocConfig) -> Self {
            let (arena, allocator) = setup(config);
            let model = Model {
                carved_end: DS,
                ..Model::default()
            };
            Self {
                config: allocator.config(),
                arena,
                allocator,
                model,
            }
        }

        fn alloc(&mut self, size: u64) -> Result<Result<Block, AllocError>, TestCaseError> {
            let result = self.allocator.alloc(&self.arena, size);
            let config = self.config;
            let m = &mut self.model;
            let Some(class) = reference_class_for(size, config.max_block) else {
                prop_assert_eq!(
                    result,
                    Err(AllocError::TooLarge {
                        size,
                        max: config.max_block
                    })
                );
                return Ok(result);
            };
            let full = |cause| Err(AllocError::Full { size, cause });
            let large = class > 64 * KIB;
            // What the allocator can do without the warm reserve's room.
            let fits = |m: &Model| {
                if m.warm.get(&class).is_some_and(|w| !w.is_empty()) {
                    return true;
                }
                if m.free.get(&class).is_some_and(|f| !f.is_empty()) {
                    return !large || m.committed.saturating_add(class) <= config.max_memory;
                }
                let slab = reference_slab(class);
                m.carved_end + slab <= config.data_end
                    && m.committed.saturating_add(slab) <= config.max_memory
            };
            if !fits(m) && m.warm_bytes > 0 {
                // The allocator releases the whole reserve and tries again.
                for (&c, offsets) in &mut m.warm {
                    for o in std::mem::take(offsets) {
                        prop_assert!(self.arena.is_released(o, c), "warm {o} not released");
                        m.free.entry(c).or_default().insert(o);
                        m.committed -= c;
                    }
                }
                m.warm_bytes = 0;
            }
            let warm = m.warm.entry(class).or_default();
            let free = m.free.entry(class).or_default();
            let block = if !warm.is_empty() {
                let block = result.map_err(|e| TestCaseError::fail(format!("{e}")))?;
                prop_assert_eq!(block.capacity, class);
                prop_assert!(warm.remove(&block.offset), "{:?} was not warm", block);
                prop_assert!(self.arena.is_committed(block.offset, class));
                m.warm_bytes -= class;
                block
            } else if !free.is_empty() {
                if large && m.committed.saturating_add(class) > config.max_memory {
                    prop_assert_eq!(result, full(FullCause::MemoryLimit));
                    return Ok(result);
                }
                let block = result.map_err(|e| TestCaseError::fail(format!("{e}")))?;
                prop_assert_eq!(block.capacity, class);
                prop_assert!(free.remove(&block.offset), "{:?} was not free", block);
                if large {
                    m.committed += class;
                }
                block
            } else {
                let slab = reference_slab(class);
                if m.carved_end + slab > config.data_end {
                    prop_assert_eq!(result, full(FullCause::SegmentEnd));
                    return Ok(result);
                }
                if m.committed.saturating_add(slab) > config.max_memory {
                    prop_assert_eq!(result, full(FullCause::MemoryLimit));
                    return Ok(result);
                }
                let block = result.map_err(|e| TestCaseError::fail(format!("{e}")))?;
                prop_assert_eq!(
                    block,
                    Block {
                        offset: m.carved_end,
                        capacity: class
                    }
                );
                m.slabs.insert(m.carved_end, (class, slab));
                free.extend((1..slab / class).map(|i| m.carved_end + i * class));
                m.carved_end += slab;
                m.committed += slab;
                block
            };
            if let Some((&offset, &capacity)) = m.live.range(..block.offset).next_back() {
                prop_assert!(offset + capacity <= block.offset, "overlap");
            }
            if let Some((&offset, _)) = m.live.range(block.offset..).next() {
                prop_assert!(block.offset + class <= offset, "overlap");
            }
            m.live.insert(block.offset, class);
            let first = *m.class_at.entry(block.offset).or_insert(class);
            prop_assert_eq!(first, class, "a block start changed class");
            Ok(result)
        }

        fn free(&mut self, offset: u64) -> Result<Result<u64, FreeError>, TestCaseError> {
            let before = self.allocator.stats();
            let events = self.arena.events().len();
            let result = self.allocator.free(&self.arena, offset);
            let m = &mut self.model;
            match m.live.remove(&offset) {
                Some(class) => {
                    prop_assert_eq!(result, Ok(class));
                    if class > 64 * KIB && m.warm_bytes + class <= self.config.warm_limit {
                        m.warm.entry(class).or_default().insert(offset);
                        m.warm_bytes += class;
                        prop_assert!(self.arena.is_committed(offset, class));
                    } else {
                        m.free.entry(class).or_default().insert(offset);
                        if class > 64 * KIB {
                            m.committed -= class;
                            prop_assert!(self.arena.is_released(offset, class));
                        }
                    }
                    m.freed.push(offset);
                }
                None => {
                    prop_assert_eq!(result, Err(FreeError::NotLive { offset }));
                    prop_assert_eq!(self.allocator.stats(), before);
                    prop_assert_eq!(self.arena.events().len(), events);
                }
            }
            Ok(result)
        }

        fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
            let nth = |live: &BTreeMap<u64, u64>, i: usize| {
                (!live.is_empty())
                    .then(|| live.iter().nth(i % live.len()).map(|(&o, &c)| (o, c)))?
            };
            match *op {
                Op::Alloc(size) => {
                    let _checked = self.alloc(size)?;
                }
                Op::Free(i) => {
                    if let Some((offset, _)) = nth(&self.model.live, i) {
                        let _checked = self.free(offset)?;
                    }
                }
                Op::FreeInterior(i, d) => {
                    if let Some((offset, capacity)) = nth(&self.model.live, i) {
                        let _checked = self.free(offset + 1 + d % (capacity - 1))?;
                    }
                }
                Op::FreeGarbage(offset) => {
                    if !self.model.live.contains_key(&offset) {
                        let _checked = self.free(offset)?;
                    }
                }
                Op::FreeFreed(i) => {
                    let freed = &self.model.freed;
                    if let Some(&offset) = freed.get(i % freed.len().max(1)) {
                        if !self.model.live.contains_key(&offset) {
                            let _checked = self.free(offset)?;
                        }
                    }
                }
            }
            self.check()
        }

        /// The allocator agrees with the model; the arena holds what it should.
        fn check(&self) -> Result<(), TestCaseError> {
            let stats = self.allocator.stats();
            let m = &self.model;
            prop_assert_eq!(stats.live_blocks, m.live.len() as u64);
            prop_assert_eq!(stats.live_bytes, m.live.values().sum::<u64>());
            prop_assert_eq!(stats.committed_bytes, m.committed);
            prop_assert!(stats.committed_bytes <= self.config.max_memory);
            prop_assert_eq!(stats.carved_end, m.carved_end);
            prop_assert_eq!(self.arena.carved_end(), m.carved_end);
            let free: u64 = m
                .free
                .values()
                .chain(m.warm.values())
                .map(|set| set.len() as u64)
                .sum();
            prop_assert_eq!(stats.free_blocks, free);
            prop_assert_eq!(stats.warm_bytes, m.warm_bytes);
            prop_assert!(m.warm_bytes <= self.config.warm_limit);
            prop_assert!(stats.carved_end <= stats.commit_end);
            prop_assert!(stats.commit_end <= self.config.data_end);
            prop_assert_eq!(
                self.arena.committed_bytes(),
                stats.committed_bytes + (stats.commit_end - stats.carved_end)
            );
            let mut previous_end = DS;
            for (&offset, &class) in &m.live {
                prop_assert!(offset >= previous_end, "overlap at {}", offset);
                previous_end = offset + class;
                let (&start, &(slab_class, slab)) = m.slabs.range(..=offset).next_back().unwrap();
                prop_assert_eq!(slab_class, class);
                prop_assert_eq!((offset - start) % class, 0);
                prop_assert!(offset + class <= start + slab);
                prop_assert!(start + slab <= m.carved_end);
                prop_assert_eq!(self.allocator.capacity_of_live(offset), Some(class));
                prop_assert!(self.arena.is_committed(offset, class));
            }
            Ok(())
        }

        /// The page map shows the model's slabs (rule 3).
        fn check_page_map(&self) -> Result<(), TestCaseError> {
            let end = self.model.carved_end;
            for (&start, &(class, slab)) in &self.model.slabs {
                for offset in (start..start + slab).step_by(PAGE_SIZE as usize) {
                    prop_assert_eq!(slab_of(&self.arena, end, offset), Some((start, class)));
                }
            }
            prop_assert_eq!(self.arena.page_entry((end - DS) / PAGE_SIZE), 0);
            for (&offset, &class) in &self.model.live {
                prop_assert_eq!(block_class(&self.arena, end, offset), Some(class));
            }
            Ok(())
        }

        /// Rebuilds from a copy of the arena and the model's live set.
        fn rebuild(&self) -> Result<Self, TestCaseError> {
            let arena = self.arena.clone();
            let reachable: Vec<u64> = self.model.live.keys().rev().copied().collect();
            let (allocator, report) = Allocator::rebuild(self.config, &arena, reachable);
            let stats = self.allocator.stats();
            prop_assert_eq!(
                report,
                RebuildReport {
                    live_blocks: stats.live_blocks,
                    free_blocks: stats.free_blocks,
                    ..RebuildReport::default()
                }
            );
            let rebuilt = allocator.stats();
            prop_assert_eq!(rebuilt.commit_end, rebuilt.carved_end);
            prop_assert_eq!(
                AllocStats {
                    commit_end: 0,
                    ..rebuilt
                },
                AllocStats {
                    commit_end: 0,
                    ..stats
                }
            );
            prop_assert_eq!(free_sets(&allocator), free_sets(&self.allocator));
            let copy = Self {
                config: self.config,
                arena,
                allocator,
                model: self.model.clone(),
            };
            copy.check()?;
            Ok(copy)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        #[test]
        fn behaves_like_the_model(
            config in config_strategy(),
            ops in prop::collection::vec(op_strategy(), 1..160),
        ) {
            let mut h = Harness::new(config);
            for op in &ops {
                h.apply(op)?;
            }
            h.check_page_map()?;
        }

        #[test]
        fn rebuild_gives_an_equivalent_allocator(
            config in config_strategy(),
            ops in prop::collection::vec(op_strategy(), 1..120),
            more in prop::collection::vec(op_strategy(), 0..80),
        ) {
            // A rebuild starts with no warm reserve (free large blocks are
            // released), so the two go on in step only without one.
            let mut h = Harness::new(AllocConfig { warm_limit: 0, ..config });
            for op in &ops {
                h.apply(op)?;
            }
            let mut r = h.rebuild()?;
            // Both go on in step: blocks correspond pairwise.
            let mut pairs: Vec<(u64, u64)> = h.model.live.keys().map(|&o| (o, o)).collect();
            for op in &more {
                match *op {
                    Op::Alloc(size) => {
                        let (a, b) = (h.alloc(size)?, r.alloc(size)?);
                        prop_assert_eq!(a.map(|x| x.capacity), b.map(|x| x.capacity));
                        if let (Ok(a), Ok(b)) = (a, b) {
                            pairs.push((a.offset, b.offset));
                        }
                    }
                    Op::Free(i) if !pairs.is_empty() => {
                        let (a, b) = pairs.swap_remove(i % pairs.len());
                        prop_assert_eq!(h.free(a)?, r.free(b)?);
                    }
                    _ => {}
                }
                h.check()?;
                r.check()?;
                let (hs, rs) = (h.allocator.stats(), r.allocator.stats());
                prop_assert_eq!(AllocStats { commit_end: 0, ..hs }, AllocStats { commit_end: 0, ..rs });
            }
            r.check_page_map()?;
        }
    }

    /// A piece of a page map laid down for the garbage test.
    #[derive(Debug, Clone)]
    enum Piece {
        /// A whole, valid slab of a class.
        Slab(u16),
        /// Pages never carved.
        Zeros(u64),
        /// One arbitrary entry.
        Word(u32),
    }

    /// Pages of the garbage test's data area (1 MiB).
    const GARBAGE_PAGES: u64 = 256;

    fn entry_strategy() -> impl Strategy<Value = u32> {
        let tags = 0..=CLASS_COUNT as u32 + 2;
        prop_oneof![
            Just(0),
            tags.clone().prop_map(|tag| tag | SLAB_START),
            tags,
            any::<u32>(),
        ]
    }

    fn piece_strategy() -> impl Strategy<Value = Piece> {
        prop_oneof![
            // Classes up to 256 KiB: slabs of at most 64 pages.
            6 => (0_u16..=48).prop_map(Piece::Slab),
            1 => (1_u64..8).prop_map(Piece::Zeros),
            1 => entry_strategy().prop_map(Piece::Word),
        ]
    }

    fn carved_end_strategy() -> impl Strategy<Value = u64> {
        prop_oneof![
            4 => (0..=GARBAGE_PAGES + 4).prop_map(|p| DS + p * PAGE_SIZE),
            1 => (0..(GARBAGE_PAGES + 4) * PAGE_SIZE).prop_map(|x| DS + x),
            1 => Just(0),
            1 => any::<u64>(),
        ]
    }

    fn offset_strategy() -> impl Strategy<Value = u64> {
        let area = GARBAGE_PAGES * PAGE_SIZE;
        prop_oneof![
            (0..area / 16).prop_map(|k| DS + 16 * k),
            (0..area / 64).prop_map(|k| DS + 64 * k),
            (0..GARBAGE_PAGES).prop_map(|p| DS + p * PAGE_SIZE),
            any::<u64>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn rebuild_never_trusts_garbage(
            pieces in prop::collection::vec(piece_strategy(), 0..40),
            corruptions in prop::collection::vec((0..GARBAGE_PAGES + 8, entry_strategy()), 0..8),
            carved_end in carved_end_strategy(),
            mut reachable in prop::collection::vec(offset_strategy(), 0..64),
            picks in prop::collection::vec((any::<usize>(), any::<u64>()), 0..32),
            sizes in prop::collection::vec(0..300 * KIB, 0..24),
        ) {
            let config = AllocConfig {
                data_start: DS,
                data_end: DS + GARBAGE_PAGES * PAGE_SIZE,
                max_memory: u64::MAX,
                max_block: 256 * KIB,
                commit_step: 64 * KIB,
                warm_limit: 0,
            };
            let arena = HeapArena::new(config.data_start, config.data_end);
            let mut page = 0;
            let mut laid_slabs = Vec::new();
            for piece in pieces {
                match piece {
                    Piece::Slab(id) => {
                        let tag = u32::from(id) + 1;
                        let pages = slab_size(id).unwrap() / PAGE_SIZE;
                        laid_slabs.push((DS + page * PAGE_SIZE, id));
                        arena.set_page_entry(page, tag | SLAB_START);
                        (1..pages).for_each(|i| arena.set_page_entry(page + i, tag));
                        page += pages;
                    }
                    Piece::Zeros(pages) => page += pages,
                    Piece::Word(entry) => {
                        arena.set_page_entry(page, entry);
                        page += 1;
                    }
                }
            }
            for (page, entry) in corruptions {
                arena.set_page_entry(page, entry);
            }
            arena.set_carved_end(carved_end);
            // Block starts of the slabs laid down (some broken since).
            if !laid_slabs.is_empty() {
                for (i, k) in picks {
                    let (start, id) = laid_slabs[i % laid_slabs.len()];
                    let class = class_size(id).unwrap();
                    reachable.push(start + k % (slab_size(id).unwrap() / class) * class);
                }
            }
            let half = reachable.len() / 2;
            reachable.extend_from_within(..half); // duplicates
            let page_map: Vec<u32> = (0..GARBAGE_PAGES).map(|p| arena.page_entry(p)).collect();

            let (mut rebuilt, report) = Allocator::rebuild(config, &arena, reachable.iter().copied());

            let end = rebuilt.stats().carved_end;
            prop_assert!((DS..=config.data_end).contains(&end));
            prop_assert_eq!((end - DS) % PAGE_SIZE, 0);
            prop_assert_eq!(arena.carved_end(), end);
            // Accepted exactly the valid block starts, each once.
            let mut live: BTreeMap<u64, u64> = BTreeMap::new();
            let mut rejected = report.rejected.iter();
            for &offset in &reachable {
                match block_class(&arena, end, offset) {
                    Some(class) if !live.contains_key(&offset) => {
                        live.insert(offset, class);
                        prop_assert_eq!(rebuilt.capacity_of_live(offset), Some(class));
                    }
                    valid => {
                        let &(at, reason) = rejected.next().expect("a rejection");
                        prop_assert_eq!(at, offset);
                        if valid.is_some() {
                            prop_assert_eq!(reason, RejectReason::Duplicate);
                        } else if offset < DS || offset >= end {
                            prop_assert_eq!(reason, RejectReason::OutsideCarvedArea);
                        } else {
                            prop_assert!(
                                matches!(reason, RejectReason::NotInSlab | RejectReason::NotBlockStart),
                                "{:?}", reason
                            );
                        }
                    }
                }
            }
            prop_assert!(rejected.next().is_none());
            prop_assert_eq!(report.live_blocks, live.len() as u64);
            prop_assert_eq!(rebuilt.stats().live_blocks, live.len() as u64);
            prop_assert_eq!(rebuilt.stats().live_bytes, live.values().sum::<u64>());

            // Going on: new blocks are valid block starts of their class,
            // never overlap live ones, and the old page map stays as it was.
            for size in sizes {
                match rebuilt.alloc(&arena, size) {
                    Ok(block) => {
                        let now = arena.carved_end();
                        prop_assert_eq!(block_class(&arena, now, block.offset), Some(block.capacity));
                        if let Some((&o, &c)) = live.range(..block.offset).next_back() {
                            prop_assert!(o + c <= block.offset);
                        }
                        if let Some((&o, _)) = live.range(block.offset..).next() {
                            prop_assert!(block.offset + block.capacity <= o);
                        }
                        live.insert(block.offset, block.capacity);
                    }
                    Err(AllocError::TooLarge { .. }) => prop_assert!(size > 256 * KIB),
                    Err(AllocError::Full { cause, .. }) => {
                        prop_assert_eq!(cause, FullCause::SegmentEnd);
                    }
                }
            }
            for (page, &entry) in page_map.iter().enumerate().take(((end - DS) / PAGE_SIZE) as usize) {
                prop_assert_eq!(arena.page_entry(page as u64), entry);
            }
            for (&offset, &class) in &live {
                prop_assert_eq!(rebuilt.free(&arena, offset), Ok(class));
            }
            prop_assert_eq!(rebuilt.stats().live_bytes, 0);
        }
    }
}
