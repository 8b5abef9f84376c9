//! Where the store's words live: a mapped `memfd` in the server, a heap
//! buffer in tests, behind one trait; and the allocator's view of it
//! ([`SegmentArena`]: the page map and the carved end in the segment,
//! commit and release passed through).

use super::alloc::Arena;
use super::layout::{hdr, Geometry, PAGE};
use super::words::{WordBuf, Words};
use std::sync::atomic::{AtomicU64, Ordering};

/// Memory that holds a store.
pub trait Segment: Send + Sync {
    /// The words of the whole segment.
    fn words(&self) -> Words<'_>;
    /// Makes `[offset, offset + len)` usable; an error means no memory.
    ///
    /// # Errors
    ///
    /// The system's refusal (`ENOSPC`, `ENOMEM`, ...).
    fn commit(&self, offset: u64, len: u64) -> std::io::Result<()>;
    /// Gives `[offset, offset + len)` back; it reads as zeros afterwards.
    fn release(&self, offset: u64, len: u64);
}

impl<T: Segment + ?Sized> Segment for std::sync::Arc<T> {
    fn words(&self) -> Words<'_> {
        (**self).words()
    }

    fn commit(&self, offset: u64, len: u64) -> std::io::Result<()> {
        (**self).commit(offset, len)
    }

    fn release(&self, offset: u64, len: u64) {
        (**self).release(offset, len)
    }
}

/// A heap segment with an optional limit on committed bytes (to test
/// running out of memory).
#[derive(Debug)]
pub struct HeapSegment {
    buf: WordBuf,
    limit: Option<u64>,
    committed: AtomicU64,
}

impl HeapSegment {
    /// `bytes` of zeros; `limit` caps what [`Segment::commit`] accepts.
    pub fn new(bytes: u64, limit: Option<u64>) -> Self {
        Self {
            buf: WordBuf::new(bytes),
            limit,
            committed: AtomicU64::new(0),
        }
    }
}

impl Segment for HeapSegment {
    fn words(&self) -> Words<'_> {
        self.buf.words()
    }

    fn commit(&self, _offset: u64, len: u64) -> std::io::Result<()> {
        let now = self.committed.fetch_add(len, Ordering::Relaxed) + len;
        match self.limit {
            Some(limit) if now > limit => {
                self.committed.fetch_sub(len, Ordering::Relaxed);
                Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
            }
            _ => Ok(()),
        }
    }

    fn release(&self, offset: u64, len: u64) {
        let words = self.buf.words();
        let mut at = offset - offset % 8;
        while at < offset + len {
            words.store(at, 0);
            at += 8;
        }
        self.committed.fetch_sub(
            len.min(self.committed.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
    }
}

/// The allocator's view of a segment laid out as `geometry`.
#[derive(Debug)]
pub struct SegmentArena<'s, S: ?Sized> {
    segment: &'s S,
    geometry: Geometry,
}

impl<'s, S: Segment + ?Sized> SegmentArena<'s, S> {
    /// The view.
    pub fn new(segment: &'s S, geometry: Geometry) -> Self {
        Self { segment, geometry }
    }

    /// Offset of the page-map word holding entry `index`.
    fn map_word(&self, index: u64) -> Option<u64> {
        (index < self.geometry.data_pages()).then(|| self.geometry.page_map + index / 2 * 8)
    }
}

impl<S: Segment + ?Sized> Arena for SegmentArena<'_, S> {
    fn commit(&self, offset: u64, len: u64) -> std::io::Result<()> {
        // The page-map entries of these pages must be writable too.
        let g = &self.geometry;
        let first = offset.saturating_sub(g.data_start) / PAGE;
        let last = (offset + len).saturating_sub(g.data_start).div_ceil(PAGE);
        let map_from = (g.page_map + first * 4) / PAGE * PAGE;
        let map_to = (g.page_map + last * 4).div_ceil(PAGE) * PAGE;
        self.segment.commit(map_from, map_to - map_from)?;
        self.segment.commit(offset, len)
    }

    fn release(&self, offset: u64, len: u64) {
        self.segment.release(offset, len);
    }

    fn page_entry(&self, index: u64) -> u32 {
        self.map_word(index)
            .and_then(|at| self.segment.words().load(at))
            .map_or(0, |w| (w >> (32 * (index % 2))) as u32)
    }

    fn set_page_entry(&self, index: u64, value: u32) {
        let Some(at) = self.map_word(index) else {
            return;
        };
        let words = self.segment.words();
        let Some(w) = words.load(at) else { return };
        let shift = 32 * (index % 2);
        let w = (w & !(0xffff_ffff << shift)) | (u64::from(value) << shift);
        words.store(at, w);
    }

    fn carved_end(&self) -> u64 {
        self.segment.words().load(hdr::CARVED_END * 8).unwrap_or(0)
    }

    fn set_carved_end(&self, end: u64) {
        self.segment.words().store(hdr::CARVED_END * 8, end);
    }
}
