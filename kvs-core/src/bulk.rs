//! Staging (bulk) buffers: how keys, values and results that do not fit a
//! response slot travel (large SETs, large GET answers, listing pages that
//! a client could not read directly, snapshot requests).
//!
//! A slot's data area holds [`INLINE_BYTES`](crate::protocol::INLINE_BYTES);
//! a 64 MiB value cannot travel in pieces through many requests without
//! holding a stripe's lock across them. Instead the region has a few
//! staging buffers, each large enough for the largest key and value
//! together. A client claims one, writes the payload into its data area,
//! ties it to the response slot of its request ([`BulkTable::bind`]) and
//! sends an ordinary request that names it (index and generation in `arg`,
//! see [`crate::protocol::staging_arg`]). The worker checks that the buffer
//! is owned, with that generation, by the same client as the slot, copies
//! from it (word by word, checksumming what it wrote, never what it read:
//! the owner may still be writing), or fills it with the answer; the
//! slot's Release/Acquire handover publishes the contents either way.
//!
//! Ownership uses the same packed `generation | owner | state` word as the
//! response slots. A client that gives up on a request marks its buffer
//! `Abandoned` together with the slot; the housekeeper frees it once that
//! slot has moved on (the worker never touches a buffer whose slot's
//! `begin` failed). Dead owners' buffers are freed like their slots.
//!
//! The data area is words (`AtomicU64`), accessed only through
//! [`crate::store::words::Words`]: every length read back is checked
//! against the data area before anything is copied. The region's memfd is
//! sparse: a buffer's pages are allocated when first written, and given
//! back after a large transfer (the region punches them).
//!
//! ```text
//! buffer header (128 bytes): word (generation | owner | state), slot, slot generation
//! data: data_size bytes (a multiple of 4096), as words
//! ```

use crate::store::words::Words;
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use crate::word::{pack, try_claim, unpack};
use std::fmt;
use std::marker::PhantomData;

/// The state of a bulk buffer, as stored in its word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum BufferState {
    /// Not in use.
    Free = 0,
    /// A client uses it for a request.
    Owned = 1,
    /// Its client gave up; freed once the request's slot has settled.
    Abandoned = 2,
}

impl TryFrom<u32> for BufferState {
    type Error = u32;

    fn try_from(v: u32) -> Result<Self, u32> {
        match v {
            0 => Ok(BufferState::Free),
            1 => Ok(BufferState::Owned),
            2 => Ok(BufferState::Abandoned),
            other => Err(other),
        }
    }
}

/// A transfer through a staging buffer of more than this many bytes gives
/// the buffer's pages back to the system when it is done; smaller ones
/// leave them for the next use. Punching and re-faulting a 1 MiB buffer on
/// every transfer cost more than the copy itself (each page is zeroed again
/// and unmapped from every process that touched it), while keeping the
/// pages costs at most `--staging-buffers` x this much memory.
pub const KEEP_PAGES_UP_TO: u64 = 8 << 20;

const FREE: u32 = BufferState::Free as u32;
const OWNED: u32 = BufferState::Owned as u32;
const ABANDONED: u32 = BufferState::Abandoned as u32;

/// The fixed part of one bulk buffer; the data area follows it.
#[repr(C)]
#[derive(Debug)]
pub struct BulkHeader {
    word: AtomicU64,
    /// The response slot of the request using the buffer, for cleanup.
    slot: AtomicU32,
    slot_generation: AtomicU32,
}

/// A claimed bulk buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkClaim {
    /// Buffer index.
    pub index: u32,
    /// Generation of this use.
    pub generation: u32,
    /// The claimer's registration index.
    pub owner: u32,
}

/// A view of the bulk buffers in a region.
pub struct BulkTable<'a> {
    base: *const u8,
    count: usize,
    stride: usize,
    data_size: usize,
    _region: PhantomData<&'a ()>,
}

impl fmt::Debug for BulkTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkTable")
            .field("count", &self.count)
            .field("data_size", &self.data_size)
            .finish()
    }
}

/// Bytes from the start of a buffer to its data area.
pub fn data_offset() -> usize {
    std::mem::size_of::<BulkHeader>().next_multiple_of(128)
}

/// Bytes of one buffer (header, data, padding): whole pages, so a buffer's
/// data can be given back without touching its neighbours.
pub fn stride(data_size: usize) -> usize {
    (data_offset() + data_size).next_multiple_of(4096)
}

impl<'a> BulkTable<'a> {
    /// Wraps `count` buffers of `data_size` data bytes starting at `base`.
    ///
    /// # Safety
    ///
    /// `base` points to `count * stride(data_size)` bytes, 128-aligned,
    /// zero-initialised or previously used as bulk buffers, inside a mapping
    /// that outlives `'a`, accessed only through atomics; `data_size` is a
    /// multiple of 8.
    pub unsafe fn from_raw(base: *const u8, count: usize, data_size: usize) -> Self {
        Self {
            base,
            count,
            stride: stride(data_size),
            data_size,
            _region: PhantomData,
        }
    }

    /// Number of buffers.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Bytes of each data area.
    pub fn data_size(&self) -> usize {
        self.data_size
    }

    fn header(&self, index: u32) -> Option<&BulkHeader> {
        if (index as usize) >= self.count {
            return None;
        }
        // SAFETY: in bounds (checked) of the area `from_raw` was given;
        // 128-aligned; the header holds atomics only.
        Some(unsafe { &*(self.base.add(index as usize * self.stride) as *const BulkHeader) })
    }

    /// The data area of buffer `index` as words (empty for an index out of
    /// range). Only the party the ownership protocol lets write it writes
    /// it; anyone may read it, and must check what it read.
    pub fn data(&self, index: u32) -> Words<'a> {
        if self.header(index).is_none() {
            return Words::new(&[]);
        }
        // SAFETY: `index` is in range (checked above), so the data area,
        // `data_size` bytes (a multiple of 8) after the buffer's 128-aligned
        // header, lies inside the area `from_raw` was given, which outlives
        // 'a; it is only ever accessed through atomics.
        unsafe {
            let p = self.base.add(index as usize * self.stride + data_offset()) as *const AtomicU64;
            Words::new(std::slice::from_raw_parts(p, self.data_size / 8))
        }
    }

    /// Byte offset of buffer `index`'s data area from the table's start (the
    /// region punches it after a large transfer).
    pub fn data_offset_of(&self, index: u32) -> Option<usize> {
        self.header(index)?;
        Some(index as usize * self.stride + data_offset())
    }

    /// Claims a free buffer for `owner`.
    pub fn claim(&self, owner: u32) -> Option<BulkClaim> {
        (0..self.count as u32).find_map(|index| {
            let generation = try_claim(&self.header(index)?.word, FREE, owner, OWNED)?;
            Some(BulkClaim {
                index,
                generation,
                owner,
            })
        })
    }

    /// Ties a buffer we own to the response slot whose request uses it (so
    /// the housekeeper can tell when an abandoned buffer is safe to free).
    pub fn bind(&self, claim: &BulkClaim, slot: u32, slot_generation: u32) {
        if let Some(h) = self.header(claim.index) {
            h.slot.store(slot, Ordering::Relaxed);
            h.slot_generation.store(slot_generation, Ordering::Relaxed);
        }
    }

    /// Frees a buffer we own. False if it was not ours any more (the
    /// server freed it once it had read a write's payload, see
    /// [`consumed`](Self::consumed), or the housekeeper did): then its
    /// pages must not be touched either.
    pub fn release(&self, claim: &BulkClaim) -> bool {
        self.header(claim.index).is_some_and(|h| {
            // Release: our reads of the data happen before the next claim
            // (pairs with the Acquire of `try_claim`).
            h.word
                .compare_exchange(
                    pack(claim.generation, claim.owner, OWNED),
                    pack(claim.generation, claim.owner, FREE),
                    Ordering::Release,
                    Ordering::Relaxed,
                )
                .is_ok()
        })
    }

    /// Server side: a worker has read the key and value of a write request
    /// out of buffer `index` (claimed as `generation` by `owner`, checked
    /// with [`owned_by`](Self::owned_by)), and the client never reads or
    /// writes a write's buffer after submitting it. So it is freed now,
    /// not when the client collects the answer: a client with many large
    /// writes in flight (async tickets) gets buffers back as the workers
    /// go, instead of waiting for answers it has not collected yet. An
    /// abandoned buffer is freed the same way. The client's own later
    /// [`release`](Self::release) or [`abandon`](Self::abandon) then finds
    /// another generation or state and does nothing.
    ///
    /// Must be called while the worker still holds the request's slot
    /// (so the housekeeper cannot have reclaimed the buffer meanwhile).
    pub fn consumed(&self, index: u32, generation: u32, owner: u32) -> bool {
        let Some(h) = self.header(index) else {
            return false;
        };
        [OWNED, ABANDONED].into_iter().any(|state| {
            // Release: the worker's reads of the data happen before the
            // next claimer's writes (pairs with `try_claim`'s Acquire).
            h.word
                .compare_exchange(
                    pack(generation, owner, state),
                    pack(generation, owner, FREE),
                    Ordering::Release,
                    Ordering::Relaxed,
                )
                .is_ok()
        })
    }

    /// Gives up a buffer whose request was abandoned: the housekeeper frees
    /// it once the request's slot has moved on.
    pub fn abandon(&self, claim: &BulkClaim) {
        if let Some(h) = self.header(claim.index) {
            let _ = h.word.compare_exchange(
                pack(claim.generation, claim.owner, OWNED),
                pack(claim.generation, claim.owner, ABANDONED),
                Ordering::Release,
                Ordering::Relaxed,
            );
        }
    }

    /// Server side: whether buffer `index` is owned by `owner` with
    /// `generation` (the claim a request named), and tied to `slot` of
    /// `slot_generation`. Acquire pairs with the owner's claim.
    pub fn owned_by(
        &self,
        index: u32,
        generation: u32,
        owner: u32,
        slot: u32,
        slot_generation: u32,
    ) -> bool {
        let Some(h) = self.header(index) else {
            return false;
        };
        h.word.load(Ordering::Acquire) == pack(generation, owner, OWNED)
            && h.slot.load(Ordering::Relaxed) == slot
            && h.slot_generation.load(Ordering::Relaxed) == slot_generation
    }

    /// Housekeeper: frees buffers of dead owners, and abandoned buffers
    /// whose slot has settled (`slot_settled(slot, generation)` is true when
    /// that slot no longer holds that request and no worker is on it).
    pub fn reclaim(
        &self,
        owner_dead: impl Fn(u32) -> bool,
        slot_settled: impl Fn(u32, u32) -> bool,
    ) -> usize {
        let settled = |index: usize| {
            self.header(index as u32).is_some_and(|h| {
                slot_settled(
                    h.slot.load(Ordering::Relaxed),
                    h.slot_generation.load(Ordering::Relaxed),
                )
            })
        };
        crate::word::reclaim_words(
            (0..self.count as u32).filter_map(|i| self.header(i).map(|h| &h.word)),
            BufferState::Free as u32,
            |index, owner, state| match BufferState::try_from(state) {
                Ok(BufferState::Free) => false,
                Ok(BufferState::Owned) => owner_dead(owner) && settled(index),
                Ok(BufferState::Abandoned) => settled(index),
                Err(_) => true, // garbage
            },
            |_| {},
        )
    }

    /// Buffers not free (diagnostics).
    pub fn in_use(&self) -> usize {
        (0..self.count as u32)
            .filter_map(|i| self.header(i))
            .filter(|h| unpack(h.word.load(Ordering::Relaxed)).2 != FREE)
            .count()
    }
}

// SAFETY: the table is a view of shared memory accessed through atomics and
// the ownership protocol above; the raw pointer is only a base address.
unsafe impl Send for BulkTable<'_> {}
// SAFETY: as above.
unsafe impl Sync for BulkTable<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(4096))]
    struct Area([u8; 64 * 1024]);

    fn table(area: &Area, data: usize) -> BulkTable<'_> {
        let count = area.0.len() / stride(data);
        assert!(count >= 2);
        // SAFETY: the area is page-aligned, zeroed and holds `count` buffers.
        unsafe { BulkTable::from_raw(area.0.as_ptr(), count, data) }
    }

    #[test]
    fn claim_bind_write_read_release() {
        let area = Box::new(Area([0; 64 * 1024]));
        let t = table(&area, 8192);
        let c = t.claim(3).unwrap();
        t.bind(&c, 9, 1);
        assert!(t.owned_by(c.index, c.generation, 3, 9, 1));
        assert!(!t.owned_by(c.index, c.generation, 4, 9, 1), "another owner");
        assert!(
            !t.owned_by(c.index, c.generation + 1, 3, 9, 1),
            "another claim"
        );
        assert!(!t.owned_by(c.index, c.generation, 3, 8, 1), "another slot");
        assert!(!t.owned_by(99, c.generation, 3, 9, 1));
        let data = t.data(c.index);
        data.write_bytes(0, b"a staged value", |_| {}).unwrap();
        let mut out = Vec::new();
        data.read_into(0, 14, &mut out).unwrap();
        assert_eq!(out, b"a staged value");
        // Lengths beyond the data area are refused, not clamped silently.
        assert!(data.read_into(0, 8193, &mut out).is_err());
        assert_eq!(t.data(99).len_bytes(), 0);
        assert!(t.release(&c));
        assert_eq!(t.in_use(), 0);
    }

    #[test]
    fn a_consumed_write_buffer_is_free_and_the_clients_release_does_nothing() {
        let area = Box::new(Area([0; 64 * 1024]));
        let t = table(&area, 4096);
        let c = t.claim(3).unwrap();
        t.bind(&c, 9, 1);
        assert!(t.consumed(c.index, c.generation, 3));
        assert_eq!(t.in_use(), 0);
        // Someone else claims it (the same owner's other thread, say): the
        // first claim's late release and abandon leave the new claim alone.
        let c2 = t.claim(3).unwrap();
        assert_eq!(c2.index, c.index);
        assert!(!t.release(&c), "a stale release");
        t.abandon(&c);
        assert!(!t.consumed(c.index, c.generation, 3), "a stale consume");
        assert_eq!(t.in_use(), 1);
        // An abandoned buffer is consumed too.
        t.abandon(&c2);
        assert!(t.consumed(c2.index, c2.generation, 3));
        assert_eq!(t.in_use(), 0);
        assert!(!t.consumed(99, 0, 3));
    }

    #[test]
    fn abandoned_buffers_wait_for_their_slot() {
        let area = Box::new(Area([0; 64 * 1024]));
        let t = table(&area, 4096);
        let c = t.claim(1).unwrap();
        t.bind(&c, 4, 7);
        t.abandon(&c);
        assert_eq!(t.reclaim(|_| false, |_, _| false), 0);
        assert_eq!(t.reclaim(|_| false, |s, g| s == 4 && g == 7), 1);
        assert_eq!(t.in_use(), 0);
        let c2 = t.claim(2).unwrap();
        t.bind(&c2, 5, 1);
        assert_eq!(t.reclaim(|o| o == 2, |_, _| true), 1);
        assert!(!t.owned_by(c2.index, c2.generation, 2, 5, 1));
    }
}
