//! Where each part of the control segment lives: offsets computed from the
//! capacities and limits, never pointers.
//!
//! The server computes the layout and stores it in the header; an opener
//! recomputes it from the header's capacities and refuses the region unless
//! both agree and the object's size matches, so no offset read from shared
//! memory is ever trusted on its own.
//!
//! Everything before the staging buffers (header, ring, slots, clients,
//! statistics) is allocated when the region is created (`reserved`); the
//! staging buffers and the subscription queues are sparse and take memory
//! only as they are written.
//!
//! ```
//! use kvs_core::region::{Layout, RegionConfig};
//!
//! let layout = Layout::compute(&RegionConfig::default()).unwrap();
//! assert!(layout.total_size >= layout.slots_offset + 1024 * layout.slot_size);
//! assert!(layout.reserved <= layout.bulk_offset);
//! ```

use super::clients::ClientEntry;
use super::header::RegionHeader;
use super::stats::WorkerStats;
use super::RegionConfig;
use crate::response_table::{Slot, SlotTableHeader};
use crate::ring::{RingCell, RingHeader};
use crossbeam_utils::CachePadded;
use std::mem::{align_of, size_of};

/// Every section starts on a boundary of this many bytes (two cache lines on
/// x86_64, so no section shares a line, or an adjacent-line prefetch pair,
/// with another).
pub const SECTION_ALIGN: usize = 128;

/// Offsets and sizes of every section, in bytes from the region's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The ring's head and tail.
    pub ring_header_offset: usize,
    /// The first ring cell.
    pub ring_cells_offset: usize,
    /// Bytes per ring cell.
    pub ring_cell_size: usize,
    /// The response table's header.
    pub slot_header_offset: usize,
    /// The first response slot.
    pub slots_offset: usize,
    /// Bytes per response slot.
    pub slot_size: usize,
    /// The client registrations.
    pub clients_offset: usize,
    /// Per-worker statistics.
    pub stats_offset: usize,
    /// The bulk buffers.
    pub bulk_offset: usize,
    /// The subscription entries.
    pub subs_offset: usize,
    /// Bytes allocated at creation (everything before the staging buffers).
    pub reserved: usize,
    /// The whole region.
    pub total_size: usize,
}

impl Layout {
    /// The layout for the capacities and limits in `config`.
    ///
    /// # Errors
    ///
    /// A message when the sizes overflow `usize` (absurd capacities).
    pub fn compute(config: &RegionConfig) -> Result<Self, String> {
        let too_large = || "the region's size overflows this machine's address space".to_string();
        let mut at = 0usize;
        let mut section = |size: Option<usize>, align: usize| -> Result<usize, String> {
            let align = align.max(SECTION_ALIGN);
            let start = at.checked_next_multiple_of(align).ok_or_else(too_large)?;
            at = size
                .and_then(|size| start.checked_add(size))
                .ok_or_else(too_large)?;
            Ok(start)
        };
        let _header = section(Some(size_of::<RegionHeader>()), align_of::<RegionHeader>())?;
        let ring_header_offset = section(Some(size_of::<RingHeader>()), align_of::<RingHeader>())?;
        let ring_cell_size = size_of::<RingCell>();
        let ring_cells_offset = section(
            ring_cell_size.checked_mul(config.ring_capacity),
            align_of::<RingCell>(),
        )?;
        let slot_header_offset = section(
            Some(size_of::<SlotTableHeader>()),
            align_of::<SlotTableHeader>(),
        )?;
        let slot_size = size_of::<CachePadded<Slot>>();
        let slots_offset = section(
            slot_size.checked_mul(config.slots),
            align_of::<CachePadded<Slot>>(),
        )?;
        let clients_offset = section(
            size_of::<ClientEntry>().checked_mul(config.max_clients),
            align_of::<ClientEntry>(),
        )?;
        let stats_offset = section(
            size_of::<CachePadded<WorkerStats>>().checked_mul(super::stats::MAX_WORKERS),
            align_of::<CachePadded<WorkerStats>>(),
        )?;
        let bulk_size = usize::try_from(config.bulk_size()).map_err(|_| too_large())?;
        let cell_bytes = usize::try_from(config.sub_cell_bytes()).map_err(|_| too_large())?;
        let bulk_offset = section(
            crate::bulk::stride(bulk_size).checked_mul(config.bulk_buffers),
            4096,
        )?;
        let reserved = bulk_offset;
        let subs_offset = section(
            Some(crate::events::SubTable::bytes_for(
                config.subscribers,
                config.sub_queue,
                cell_bytes,
            )),
            4096,
        )?;
        let total_size = at.checked_next_multiple_of(4096).ok_or_else(too_large)?;
        Ok(Self {
            ring_header_offset,
            ring_cells_offset,
            ring_cell_size,
            slot_header_offset,
            slots_offset,
            slot_size,
            clients_offset,
            stats_offset,
            bulk_offset,
            subs_offset,
            reserved,
            total_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_aligned_and_disjoint() {
        let l = Layout::compute(&RegionConfig::default()).unwrap();
        let cfg = RegionConfig::default();
        let sections = [
            (l.ring_header_offset, size_of::<RingHeader>()),
            (l.ring_cells_offset, l.ring_cell_size * cfg.ring_capacity),
            (l.slot_header_offset, size_of::<SlotTableHeader>()),
            (l.slots_offset, l.slot_size * cfg.slots),
            (l.clients_offset, size_of::<ClientEntry>() * cfg.max_clients),
        ];
        let mut end = size_of::<RegionHeader>();
        for (start, size) in sections {
            assert_eq!(start % SECTION_ALIGN, 0);
            assert!(start >= end);
            end = start + size;
        }
        assert!(l.total_size >= end);
        assert_eq!(l.total_size % 4096, 0);
        assert_eq!(l.slot_size % 128, 0);
    }
}
