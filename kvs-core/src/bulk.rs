//! Bulk buffers: how results larger than one value travel (listing pages,
//! snapshot requests).
//!
//! A response slot holds one value, so a listing of 100,000 entries would
//! take 100,000 round trips through it. Instead the region has a few bulk
//! buffers (4 × 1 MiB by default). A client claims one, writes its request
//! parameters into it (cursor, page size, prefix, or a snapshot path), and
//! sends an ordinary request whose `arg` names the buffer. The worker checks
//! that the buffer is owned by the same client as the response slot, fills
//! the buffer's data area with as many records as fit, and answers through
//! the slot as usual; the slot's Release/Acquire handover also publishes the
//! buffer's contents. A page is therefore one round trip however many
//! entries it carries, and the cursor design (see `StripedMap::scan`) lets
//! the server hold one stripe's lock at a time.
//!
//! Ownership uses the same packed `generation | owner | state` word as the
//! response slots. A client that gives up on a request marks its buffer
//! `Abandoned` together with the slot it was used for; the housekeeper frees
//! it once that slot has moved on (the worker never touches a buffer whose
//! slot's `begin` failed). Dead owners' buffers are freed like their slots.
//!
//! Everything read from a buffer is copied out and validated (lengths are
//! clamped, counts bounded by the data size).

use crate::sync::{AtomicU32, AtomicU64, Ordering, UnsafeCell};
use crate::word::{pack, try_claim, unpack};
use bytemuck::{Pod, Zeroable};
use std::fmt;
use std::marker::PhantomData;

/// Longest prefix a listing may filter by.
pub const PREFIX_MAX: usize = 64;
/// Longest path a snapshot request may carry.
pub const PATH_MAX: usize = 4096;

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

const FREE: u32 = BufferState::Free as u32;
const OWNED: u32 = BufferState::Owned as u32;
const ABANDONED: u32 = BufferState::Abandoned as u32;

/// What a client asks of a bulk request (written by the client before the
/// request is pushed; copied out by the server).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BulkParams {
    /// Listing: resume after this cursor (if `has_cursor`).
    pub cursor: u64,
    /// 1 if `cursor` is set.
    pub has_cursor: u32,
    /// Listing: most records wanted.
    pub limit: u32,
    /// Bytes of `prefix` in use.
    pub prefix_len: u32,
    /// Bytes of `path` in use.
    pub path_len: u32,
    /// Listing: only keys whose bytes start with this.
    pub prefix: [u8; PREFIX_MAX],
    /// Snapshot: the absolute path to write.
    pub path: [u8; PATH_MAX],
}

impl BulkParams {
    /// The prefix, clamped to its buffer.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix[..(self.prefix_len as usize).min(PREFIX_MAX)]
    }

    /// The path, clamped to its buffer.
    pub fn path(&self) -> &[u8] {
        &self.path[..(self.path_len as usize).min(PATH_MAX)]
    }
}

impl fmt::Debug for BulkParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkParams")
            .field("cursor", &self.cursor)
            .field("has_cursor", &self.has_cursor)
            .field("limit", &self.limit)
            .field("prefix", &String::from_utf8_lossy(self.prefix()))
            .field("path", &String::from_utf8_lossy(self.path()))
            .finish()
    }
}

/// What the server reports of a bulk request.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
pub struct BulkResult {
    /// Records (listing) or message bytes (errors) in the data area.
    pub count: u32,
    /// Listing: 1 if more pages follow.
    pub more: u32,
    /// Listing: the cursor of the next page.
    pub next_cursor: u64,
    /// The global version when the request was served.
    pub version: u64,
    /// Snapshot: entries written.
    pub entries: u64,
    /// Snapshot: bytes written.
    pub bytes: u64,
}

/// The fixed part of one bulk buffer; the data area follows it.
#[repr(C)]
#[derive(Debug)]
pub struct BulkHeader {
    word: AtomicU64,
    /// The response slot of the request using the buffer, for cleanup.
    slot: AtomicU32,
    slot_generation: AtomicU32,
    params: UnsafeCell<BulkParams>,
    result: UnsafeCell<BulkResult>,
}

/// One listed entry. It travels in a bulk buffer as its four fields packed
/// one after the other ([`BulkTable::write_list_records`]): never as a whole
/// struct, whose padding bytes would otherwise be copied into shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListRecord<K, V> {
    /// The key.
    pub key: K,
    /// The value.
    pub value: V,
    /// The entry's version.
    pub version: u64,
    /// Last modification, unix nanoseconds.
    pub modified_ns: u64,
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

/// Bytes of one buffer (header, data, padding).
pub fn stride(data_size: usize) -> usize {
    (data_offset() + data_size).next_multiple_of(128)
}

impl<'a> BulkTable<'a> {
    /// Wraps `count` buffers of `data_size` data bytes starting at `base`.
    ///
    /// # Safety
    ///
    /// `base` points to `count * stride(data_size)` bytes, 128-aligned,
    /// zero-initialised or previously used as bulk buffers, inside a mapping
    /// that outlives `'a`.
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
        // 128-aligned; the header holds atomics and `UnsafeCell`s only.
        Some(unsafe { &*(self.base.add(index as usize * self.stride) as *const BulkHeader) })
    }

    fn data(&self, index: u32) -> *mut u8 {
        // SAFETY: callers checked `index` via `header`; the data area lies
        // within the buffer's stride.
        unsafe { self.base.add(index as usize * self.stride + data_offset()) as *mut u8 }
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

    /// Writes the request parameters and the slot that will carry it.
    pub fn prepare(&self, claim: &BulkClaim, params: &BulkParams, slot: u32, slot_generation: u32) {
        let Some(h) = self.header(claim.index) else {
            return;
        };
        h.slot.store(slot, Ordering::Relaxed);
        h.slot_generation.store(slot_generation, Ordering::Relaxed);
        // SAFETY: we own the buffer (claimed); the server reads the params
        // only after the request push, which publishes this write.
        h.params.with_mut(|p| unsafe { p.write_volatile(*params) });
    }

    /// Frees a buffer we own.
    pub fn release(&self, claim: &BulkClaim) {
        if let Some(h) = self.header(claim.index) {
            // Release: our reads of the data happen before the next claim.
            let _ = h.word.compare_exchange(
                pack(claim.generation, claim.owner, OWNED),
                pack(claim.generation, claim.owner, FREE),
                Ordering::Release,
                Ordering::Relaxed,
            );
        }
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

    /// Server side: the parameters of buffer `index`, if `owner` owns it.
    pub fn params_if_owned_by(&self, index: u32, owner: u32) -> Option<BulkParams> {
        let h = self.header(index)?;
        let (_, o, state) = unpack(h.word.load(Ordering::Acquire));
        if state != OWNED || o != owner {
            return None;
        }
        // SAFETY: in bounds; BulkParams is Pod, any bytes are a valid copy.
        Some(h.params.with(|p| unsafe { p.read_volatile() }))
    }

    /// Server side: writes the result.
    pub fn set_result(&self, index: u32, result: &BulkResult) {
        if let Some(h) = self.header(index) {
            // SAFETY: in bounds; the owner reads it only after the slot turns
            // Ready (Release CAS after this write).
            h.result.with_mut(|p| unsafe { p.write_volatile(*result) });
        }
    }

    /// Client side: the result (after the request's slot turned Ready).
    pub fn result(&self, claim: &BulkClaim) -> BulkResult {
        self.header(claim.index)
            // SAFETY: in bounds; Pod.
            .map(|h| h.result.with(|p| unsafe { p.read_volatile() }))
            .unwrap_or_default()
    }

    /// How many records of `T` fit in a data area.
    pub fn capacity_for<T>(&self) -> usize {
        self.data_size / std::mem::size_of::<T>().max(1)
    }

    /// Server side: writes `items` as consecutive records; returns how many
    /// were written (at most [`BulkTable::capacity_for`]). `T` has no
    /// padding (`NoUninit`), so no uninitialised byte reaches shared memory:
    ///
    /// ```compile_fail
    /// use kvs_core::bulk::BulkTable;
    /// #[derive(Clone, Copy)]
    /// #[repr(C)]
    /// struct Padded(u8, u64); // 7 bytes of padding
    /// fn write(t: &BulkTable<'_>) { t.write_records(0, [Padded(1, 2)]); }
    /// ```
    pub fn write_records<T: bytemuck::NoUninit>(
        &self,
        index: u32,
        items: impl IntoIterator<Item = T>,
    ) -> usize {
        if self.header(index).is_none() {
            return 0;
        }
        let base = self.data(index);
        let cap = self.capacity_for::<T>();
        let mut n = 0;
        for item in items.into_iter().take(cap) {
            let bytes = bytemuck::bytes_of(&item);
            // SAFETY: `n < cap` keeps the record inside the data area; `T`
            // has no uninitialised (padding) bytes to copy into shared
            // memory, so these are plain initialised bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    base.add(n * std::mem::size_of::<T>()),
                    bytes.len(),
                )
            };
            n += 1;
        }
        n
    }

    /// Bytes of one listing record in a data area.
    pub fn list_record_size<K, V>() -> usize {
        std::mem::size_of::<K>() + std::mem::size_of::<V>() + 16
    }

    /// How many listing records fit in a data area.
    pub fn list_capacity<K, V>(&self) -> usize {
        self.data_size / Self::list_record_size::<K, V>().max(1)
    }

    /// Server side: writes listing records, each as its fields packed (key,
    /// value, version, modified time); returns how many were written (at
    /// most [`BulkTable::list_capacity`]).
    pub fn write_list_records<K: Pod, V: Pod>(
        &self,
        index: u32,
        items: impl IntoIterator<Item = ListRecord<K, V>>,
    ) -> usize {
        if self.header(index).is_none() {
            return 0;
        }
        let size = Self::list_record_size::<K, V>();
        let base = self.data(index);
        let mut n = 0;
        for r in items.into_iter().take(self.list_capacity::<K, V>()) {
            let mut at = n * size;
            for part in [
                bytemuck::bytes_of(&r.key),
                bytemuck::bytes_of(&r.value),
                &r.version.to_ne_bytes(),
                &r.modified_ns.to_ne_bytes(),
            ] {
                // SAFETY: `n < list_capacity` keeps the record inside the
                // data area; the bytes are initialised (`Pod` fields).
                unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), base.add(at), part.len()) };
                at += part.len();
            }
            n += 1;
        }
        n
    }

    /// Client side: reads `count` listing records (clamped to the capacity).
    pub fn read_list_records<K: Pod, V: Pod>(
        &self,
        claim: &BulkClaim,
        count: usize,
    ) -> Vec<ListRecord<K, V>> {
        let size = Self::list_record_size::<K, V>();
        let n = count.min(self.list_capacity::<K, V>());
        let bytes = self.read_bytes(claim, n * size);
        bytes
            .chunks_exact(size)
            .map(|r| {
                let (ks, vs) = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
                let u64_at =
                    |at: usize| u64::from_ne_bytes(r[at..at + 8].try_into().unwrap_or_default());
                ListRecord {
                    key: bytemuck::pod_read_unaligned(&r[..ks]),
                    value: bytemuck::pod_read_unaligned(&r[ks..ks + vs]),
                    version: u64_at(ks + vs),
                    modified_ns: u64_at(ks + vs + 8),
                }
            })
            .collect()
    }

    /// Server side: writes bytes (an error message) into the data area.
    pub fn write_bytes(&self, index: u32, bytes: &[u8]) -> usize {
        if self.header(index).is_none() {
            return 0;
        }
        let n = bytes.len().min(self.data_size);
        // SAFETY: `n <= data_size`; the data area is ours to write while the
        // request is being served.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.data(index), n) };
        n
    }

    /// Client side: reads `count` records (clamped to the capacity). `T` is
    /// `Pod`: any bytes another process left form a valid record. A type
    /// with invalid bit patterns cannot be read this way:
    ///
    /// ```compile_fail
    /// use kvs_core::bulk::{BulkClaim, BulkTable};
    /// fn read(t: &BulkTable<'_>, c: &BulkClaim) -> Vec<bool> {
    ///     t.read_records(c, 1) // bool is not Pod: a scribbled byte would be UB
    /// }
    /// ```
    pub fn read_records<T: bytemuck::Pod>(&self, claim: &BulkClaim, count: usize) -> Vec<T> {
        if self.header(claim.index).is_none() {
            return Vec::new();
        }
        let base = self.data(claim.index);
        let n = count.min(self.capacity_for::<T>());
        (0..n)
            // SAFETY: inside the data area; `T: Pod` is valid for any bits.
            .map(|i| unsafe {
                (base.add(i * std::mem::size_of::<T>()) as *const T).read_unaligned()
            })
            .collect()
    }

    /// Client side: reads `len` bytes (clamped).
    pub fn read_bytes(&self, claim: &BulkClaim, len: usize) -> Vec<u8> {
        if self.header(claim.index).is_none() {
            return Vec::new();
        }
        let n = len.min(self.data_size);
        let mut out = vec![0u8; n];
        // SAFETY: `n <= data_size`, inside the data area.
        unsafe { std::ptr::copy_nonoverlapping(self.data(claim.index), out.as_mut_ptr(), n) };
        out
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

    #[repr(C, align(128))]
    struct Area([u8; 32 * 1024]);

    #[test]
    fn claim_prepare_result_records_release() {
        let area = Box::new(Area([0; 32 * 1024]));
        let data = 1024;
        let count = area.0.len() / stride(data);
        assert!(count >= 2);
        // SAFETY: the area is 128-aligned, zeroed and large enough.
        let t = unsafe { BulkTable::from_raw(area.0.as_ptr(), count, data) };
        let c = t.claim(3).unwrap();
        let mut p = BulkParams::zeroed();
        p.limit = 5;
        p.prefix_len = 200; // garbage length: clamped
        t.prepare(&c, &p, 9, 1);
        let got = t.params_if_owned_by(c.index, 3).unwrap();
        assert_eq!(got.limit, 5);
        assert_eq!(got.prefix().len(), PREFIX_MAX);
        assert!(t.params_if_owned_by(c.index, 4).is_none());
        assert!(t.params_if_owned_by(99, 3).is_none());
        let n = t.write_records(c.index, (0..1000u64).map(|i| i * 2));
        assert_eq!(n, t.capacity_for::<u64>());
        t.set_result(
            c.index,
            &BulkResult {
                count: n as u32,
                ..Default::default()
            },
        );
        let back: Vec<u64> = t.read_records(&c, t.result(&c).count as usize + 10_000);
        assert_eq!(back.len(), n);
        assert_eq!(back[3], 6);
        // Listing records of types with padding between them travel packed.
        let records: Vec<ListRecord<u8, u64>> = (0..5u8)
            .map(|i| ListRecord {
                key: i,
                value: u64::from(i) * 10,
                version: 7,
                modified_ns: 8,
            })
            .collect();
        assert_eq!(t.write_list_records(c.index, records.clone()), 5);
        assert_eq!(t.read_list_records::<u8, u64>(&c, 5), records);
        t.release(&c);
        assert_eq!(t.in_use(), 0);
    }

    #[test]
    fn abandoned_buffers_wait_for_their_slot() {
        let area = Box::new(Area([0; 32 * 1024]));
        assert!(stride(512) <= area.0.len());
        // SAFETY: as above.
        let t = unsafe { BulkTable::from_raw(area.0.as_ptr(), 1, 512) };
        let c = t.claim(1).unwrap();
        t.prepare(&c, &BulkParams::zeroed(), 4, 7);
        t.abandon(&c);
        assert_eq!(t.reclaim(|_| false, |_, _| false), 0);
        assert_eq!(t.reclaim(|_| false, |s, g| s == 4 && g == 7), 1);
        assert_eq!(t.in_use(), 0);
        let c2 = t.claim(2).unwrap();
        assert_eq!(t.reclaim(|o| o == 2, |_, _| true), 1);
        assert!(t.params_if_owned_by(c2.index, 2).is_none());
    }
}
