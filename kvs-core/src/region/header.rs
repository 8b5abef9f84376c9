//! The region header: magic, layout version, initialisation state, and the
//! static description of everything after it.
//!
//! ```text
//! offset  size  field
//!      0     8  magic            "\x89KVS\r\n\x1a\n" (PNG-style: not zeros, not text)
//!      8     4  state            Creating = 0, Ready = 1, Closed = 2, Draining = 3
//!     12     4  layout_version   LAYOUT_VERSION
//!     16   256  info             RegionInfo (Pod, written once before Ready)
//!    384     .  live words       event counts and counters (atomics), see LiveWords
//! ```
//!
//! The first three fields never move, whatever the version, so any opener can
//! tell "not a kvs region", "another version" and "not ready yet" apart before
//! it interprets anything else. `info` is copied out with a volatile read and
//! validated as a copy: another process may scribble on the region, and a
//! scribbled copy is merely wrong, never undefined behaviour.
//!
//! The header only publishes what the server decided: the server keeps its
//! own copy of every field (in its memory), never reads them back to decide
//! anything, and its housekeeper rewrites whatever a scribbler changed
//! (`Region::repair_header`), so clients connect again once the writes stop.

use crate::sync::{AtomicU32, AtomicU64, UnsafeCell};
use crate::wait::EventCount;
use bytemuck::{Pod, Zeroable};
use crossbeam_utils::CachePadded;
use std::fmt;

/// The first eight bytes of every region.
pub const MAGIC: u64 = u64::from_le_bytes(*b"\x89KVS\r\n\x1a\n");

/// Bumped whenever anything in the region's layout or protocol changes.
pub const LAYOUT_VERSION: u32 = 8;

/// The region's life cycle, stored in [`RegionHeader::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum InitState {
    /// The server is still writing the region.
    Creating = 0,
    /// Open for clients.
    Ready = 1,
    /// The server has stopped; nothing will be answered.
    Closed = 2,
    /// The server is shutting down: it answers what it accepted, and
    /// clients submit nothing new.
    Draining = 3,
}

impl TryFrom<u32> for InitState {
    type Error = u32;

    fn try_from(v: u32) -> Result<Self, u32> {
        match v {
            0 => Ok(InitState::Creating),
            1 => Ok(InitState::Ready),
            2 => Ok(InitState::Closed),
            3 => Ok(InitState::Draining),
            other => Err(other),
        }
    }
}

impl fmt::Debug for RegionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegionInfo")
            .field("total_size", &self.total_size)
            .field("ring_capacity", &self.ring_capacity)
            .field("slot_count", &self.slot_count)
            .field("max_key", &self.max_key)
            .field("max_value", &self.max_value)
            .field("store_size", &self.store_size)
            .field("server_pid", &self.server_pid)
            .finish_non_exhaustive()
    }
}

/// Everything static about a region: written once by the server before it
/// stores `Ready`, then only read (as a copy).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct RegionInfo {
    /// `size_of::<CachePadded<u8>>()` of the creator (differs across arches).
    pub cache_line: u64,
    /// Total bytes of the region; must equal the object's `fstat` size.
    pub total_size: u64,
    /// Cells in the request ring (a power of two).
    pub ring_capacity: u64,
    /// Response slots.
    pub slot_count: u64,
    /// Client registrations.
    pub max_clients: u64,
    /// Stripes of the store.
    pub stripes: u64,
    /// Worker threads the server runs.
    pub workers: u64,
    /// Entry limit, 0 for none.
    pub max_entries: u64,
    /// Byte offset of the ring header.
    pub ring_header_offset: u64,
    /// Byte offset of the first ring cell.
    pub ring_cells_offset: u64,
    /// Bytes per ring cell.
    pub ring_cell_size: u64,
    /// Byte offset of the response-table header.
    pub slot_header_offset: u64,
    /// Byte offset of the first response slot.
    pub slots_offset: u64,
    /// Bytes per response slot.
    pub slot_size: u64,
    /// Byte offset of the client registrations.
    pub clients_offset: u64,
    /// Byte offset of the per-worker statistics.
    pub stats_offset: u64,
    /// The server's pid.
    pub server_pid: u64,
    /// The server's start time in clock ticks since boot (with the pid, an
    /// identity that survives pid reuse).
    pub server_start_ticks: u64,
    /// When the region was created, unix nanoseconds.
    pub created_unix_ns: u64,
    /// The permission bits the region was created with.
    pub mode: u64,
    /// Byte offset of the bulk buffers.
    pub bulk_offset: u64,
    /// Number of bulk (staging) buffers.
    pub bulk_count: u64,
    /// Data bytes of each bulk buffer.
    pub bulk_size: u64,
    /// Byte offset of the subscription entries.
    pub subs_offset: u64,
    /// Number of subscription entries.
    pub sub_count: u64,
    /// Events each subscription queue holds (a power of two).
    pub sub_queue: u64,
    /// Data bytes of one event cell (the largest key plus room for a value).
    pub sub_cell_bytes: u64,
    /// The largest key, bytes.
    pub max_key: u64,
    /// The largest value, bytes.
    pub max_value: u64,
    /// The limit on the store's committed memory, bytes.
    pub max_memory: u64,
    /// Bytes of the store segment (the second descriptor's size).
    pub store_size: u64,
    /// The store's id (kept across warm restarts).
    pub store_id: u64,
}

/// The header at offset 0 of every region.
#[repr(C)]
#[derive(Debug)]
pub struct RegionHeader {
    /// [`MAGIC`], written before `state` turns `Ready`.
    pub magic: AtomicU64,
    /// An [`InitState`]; `Ready` is stored with `SeqCst` after everything
    /// else is written, and openers load it with `Acquire`.
    pub state: AtomicU32,
    /// [`LAYOUT_VERSION`].
    pub layout_version: AtomicU32,
    /// Static description; see [`RegionInfo`].
    pub(crate) info: UnsafeCell<RegionInfo>,
    /// Live words, shared by every process.
    pub live: CachePadded<LiveWords>,
}

/// Event counts and counters in the header.
#[repr(C)]
#[derive(Debug)]
pub struct LiveWords {
    /// Idle workers wait on it for requests; producers notify it after a push.
    pub ring_ec: EventCount,
    /// The housekeeper waits on it; clients that found no free slot poke it.
    pub housekeeper_ec: EventCount,
    /// Requests the server dropped as malformed or stale.
    pub malformed: AtomicU32,
    /// Clients that registered, ever.
    pub clients_registered: AtomicU64,
    /// Slots the server reclaimed from dead or abandoning clients.
    pub slots_reclaimed: AtomicU64,
    /// Ring cells and indices the server found corrupted and repaired.
    pub ring_repairs: AtomicU64,
    /// Active subscriptions (workers skip publishing when 0).
    pub subscribers: AtomicU32,
    /// Requests whose execution panicked (answered `Failed`).
    pub panics: AtomicU32,
    /// Times the server found its header scribbled on and rewrote it.
    pub header_repairs: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<RegionInfo>() == 32 * 8);
const _: () = assert!(std::mem::offset_of!(RegionHeader, info) == 16);
