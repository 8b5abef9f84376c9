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
//! The rest of the design relies on these rules; each has tests below.
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
//!    when it is handed out again it is committed again first.
//! 6. **Accounting.** [`AllocStats::committed_bytes`] is the bytes of carved
//!    small slabs plus the live one-block slabs; [`AllocStats::live_bytes`]
//!    the sum of the class sizes of the live blocks; [`AllocStats::live_blocks`]
//!    their number. `max_memory` bounds `committed_bytes`. Besides it, at
//!    most one commit step beyond `carved_end` may be committed ahead
//!    ([`AllocStats::commit_end`]).
//! 7. **Rebuild.** [`Allocator::rebuild`] recreates the allocator after a
//!    crash from the page map, `carved_end` and the offsets the index
//!    reaches (see [below](#rebuild)).
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
//! committed).
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
        let full = |cause| AllocError::Full { size, cause };
        let offset = match self.free[class].last() {
            Some(&offset) => {
                if is_large(class_size) {
                    // Free blocks of one-block slabs are released: commit again.
                    self.check_budget(class_size).map_err(full)?;
                    arena
                        .commit(offset, class_size)
                        .map_err(|e| full(FullCause::CommitFailed(e.kind())))?;
                    self.committed_bytes += class_size;
                }
                self.free[class].pop();
                self.free_blocks -= 1;
                offset
            }
            None => self.carve(arena, class, class_size).map_err(full)?,
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
            Some(total) if total <= self.config.max_memory => Ok(()),
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
        if is_large(class_size) {
            arena.release(offset, class_size);
            self.committed_bytes -= class_size;
        }
        self.free[class].push(offset);
        self.free_blocks += 1;
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
