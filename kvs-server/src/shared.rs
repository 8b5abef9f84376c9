//! The state the server handle, its workers, the acceptor and the
//! housekeeper share.

use crate::registry::Registry;
use crossbeam_utils::CachePadded;
use kvs_core::region::{Region, StoreSegment};
use kvs_core::secure_fs::Dir;
use kvs_core::store::write::StoreWriter;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// How long stopping workers keep draining requests that clients keep
/// pushing (a stop under sustained load still returns).
pub const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// State shared by the handle, the workers and the housekeeper.
pub(crate) struct Shared {
    pub(crate) region: Region,
    /// The store in the region's store segment (the only writer).
    pub(crate) store: StoreWriter<Arc<StoreSegment>>,
    /// A read-only descriptor of the store segment, handed to clients.
    pub(crate) store_ro: std::os::fd::OwnedFd,
    /// Workers drain the ring and exit when set.
    pub(crate) stop_workers: AtomicBool,
    /// When the stop was asked for (unix ns; 0: not asked): workers give
    /// up draining after [`DRAIN_LIMIT`].
    pub(crate) stop_since_ns: AtomicU64,
    /// The housekeeper exits when set.
    pub(crate) shutdown: AtomicBool,
    /// Per worker: `slot index + 1` while it answers that slot, 0 otherwise.
    /// Read by the reclaimer (see `kvs_core::response_table::SlotTable::reclaim`).
    pub(crate) busy: Box<[CachePadded<AtomicU64>]>,
    /// Worker threads running now (ids `0..n`).
    pub(crate) running_workers: std::sync::atomic::AtomicUsize,
    /// Who is registered (the authority; see `acceptor`).
    pub(crate) registry: Registry,
    /// Set by the first `start`: the acceptor admits clients from then on.
    pub(crate) accepting: AtomicBool,
    /// Where client-requested backups go (`--backup-dir`); `None` refuses
    /// them.
    pub(crate) backup_dir: Option<Dir>,
    /// Permission bits of snapshot files (see `snapshot::file_mode`).
    pub(crate) snapshot_mode: u32,
}

impl Shared {
    pub(crate) fn is_busy(&self, slot: u32) -> bool {
        let mark = u64::from(slot) + 1;
        // SeqCst: the reclaimer's half of the Dekker pair with the worker's
        // SeqCst store of its mark before `SlotTable::begin`.
        self.busy.iter().any(|b| b.load(Ordering::SeqCst) == mark)
    }
}
