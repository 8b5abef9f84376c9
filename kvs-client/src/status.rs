//! The status view: what the server is doing, read mostly straight from the
//! region (no round trip), plus one Status request for the store's version,
//! entry count and memory.

use crate::client::KVSClient;
use crate::conn::Deadline;
use crate::error::{ClientError, Result};
use kvs_core::codec::Codec;
use kvs_core::protocol::{OpCode, StatusCode};
use kvs_core::region::{Region, Session};
use kvs_core::response_table::SlotState;
use serde::Serialize;
use std::sync::atomic::Ordering;

/// Operations served, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OpCounts {
    /// GET requests answered by a worker (direct reads are not counted:
    /// they never reach the server).
    pub get: u64,
    /// SET requests.
    pub set: u64,
    /// POST requests.
    pub post: u64,
    /// DEL requests.
    pub del: u64,
    /// INCR requests.
    pub incr: u64,
    /// EXPIRE and PERSIST requests.
    pub expire: u64,
    /// Batch requests (MGET, MSET, MDEL; one per batch, not per key).
    pub batch: u64,
    /// Other requests (status, listing, backups).
    pub other: u64,
    /// Requests dropped as stale, abandoned or malformed.
    pub dropped: u64,
}

/// A snapshot of a server's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreStatus {
    /// The region name.
    pub region: String,
    /// The global version (bumped by every mutation).
    pub version: u64,
    /// Entries in the store.
    pub entries: u64,
    /// Entry limit, `None` for unlimited.
    pub max_entries: Option<u64>,
    /// The largest key, bytes.
    pub max_key_size: u64,
    /// The largest value, bytes.
    pub max_value_size: u64,
    /// Bytes the store has committed (entries and index).
    pub memory_used: u64,
    /// Entries removed because their deadline passed, since the store was
    /// made.
    pub expired: u64,
    /// Entries evicted to make room (the server's eviction policy).
    pub evicted: u64,
    /// The store's memory limit.
    pub max_memory: u64,
    /// Cells in the request ring.
    pub queue_capacity: u64,
    /// Requests in the ring, not yet taken by a worker.
    pub queued: u64,
    /// Response slots.
    pub slots: u64,
    /// Free response slots.
    pub free_slots: u64,
    /// Requests in flight (slots claimed, pending or ready).
    pub in_flight: u64,
    /// Worker threads.
    pub workers: u64,
    /// Store stripes.
    pub stripes: u64,
    /// Client registrations in use.
    pub clients: u64,
    /// Client registrations available.
    pub max_clients: u64,
    /// Active subscriptions.
    pub subscribers: u64,
    /// Subscription entries available.
    pub max_subscribers: u64,
    /// The server's pid.
    pub server_pid: u64,
    /// Seconds since the region was created.
    pub uptime_secs: f64,
    /// Operations served.
    pub ops: OpCounts,
    /// Requests refused as malformed.
    pub malformed: u64,
    /// Slots reclaimed from dead or abandoning clients.
    pub slots_reclaimed: u64,
    /// Ring cells and indices found corrupted and repaired.
    pub ring_repairs: u64,
    /// Requests whose execution panicked (answered `Failed`).
    pub panics: u64,
    /// Times the server found its header scribbled on and rewrote it.
    pub header_repairs: u64,
    /// Bytes of the region.
    pub region_bytes: u64,
}

impl<K: Codec, V: Codec> KVSClient<K, V> {
    /// The server's status.
    ///
    /// # Errors
    ///
    /// As any request: timeout, server gone.
    pub fn status(&self) -> Result<StoreStatus> {
        let deadline = Deadline::after(self.options().timeout);
        let a = self.conn.call(OpCode::Status, &[], None, 0, &deadline)?;
        if a.response.status_code().ok() != Some(StatusCode::Ok) {
            return Err(ClientError::Protocol("the server refused status".into()));
        }
        Ok(status_of(
            self.region(),
            a.response.version,
            a.response.modified_ns,
            a.response.aux64,
        ))
    }
}

/// The status of the server behind a probe session (see
/// `kvs_core::region::handshake::Kind::Probe`): no registration is used, so
/// it works when every one is taken.
///
/// # Errors
///
/// [`ClientError::Connect`] when the region's headers do not add up.
pub fn probe_status(session: Session) -> Result<StoreStatus> {
    let (version, entries) = (session.welcome().store_version, session.welcome().entries);
    let region = Region::attach(session)?;
    let memory = region.store_view().map_or(0, |v| v.committed_bytes());
    Ok(status_of(&region, version, entries, memory))
}

/// A status from the region's counters and the server's version, entry
/// count and memory.
fn status_of(region: &Region, version: u64, entries: u64, memory_used: u64) -> StoreStatus {
    let info = region.info();
    let live = &region.header().live;
    let counts = region.slots().state_counts();
    let totals = region.op_totals();
    let now = kvs_core::unix_now_ns();
    StoreStatus {
        region: region.name().to_string(),
        version,
        entries,
        max_entries: (info.max_entries > 0).then_some(info.max_entries),
        max_key_size: info.max_key,
        max_value_size: info.max_value,
        memory_used,
        expired: region.store_view().map_or(0, |v| v.expired_count()),
        evicted: region.store_view().map_or(0, |v| v.evicted_count()),
        max_memory: info.max_memory,
        queue_capacity: info.ring_capacity,
        queued: region.ring().len() as u64,
        slots: info.slot_count,
        free_slots: counts.get(SlotState::Free) as u64,
        in_flight: (info.slot_count as usize - counts.get(SlotState::Free)) as u64,
        workers: info.workers,
        stripes: info.stripes,
        clients: region.clients().used().count() as u64,
        max_clients: info.max_clients,
        subscribers: region.subscriptions().active_count() as u64,
        max_subscribers: info.sub_count,
        server_pid: info.server_pid,
        uptime_secs: now.saturating_sub(info.created_unix_ns) as f64 / 1e9,
        ops: OpCounts {
            get: totals.get(OpCode::Get),
            set: totals.get(OpCode::Set),
            post: totals.get(OpCode::Post),
            del: totals.get(OpCode::Del),
            incr: totals.get(OpCode::Incr),
            expire: totals.get(OpCode::Expire),
            batch: totals.get(OpCode::MGet) + totals.get(OpCode::MSet) + totals.get(OpCode::MDel),
            other: totals.get(OpCode::Status)
                + totals.get(OpCode::ListPage)
                + totals.get(OpCode::Backup),
            dropped: totals.dropped,
        },
        malformed: u64::from(live.malformed.load(Ordering::Relaxed)),
        slots_reclaimed: live.slots_reclaimed.load(Ordering::Relaxed),
        ring_repairs: live.ring_repairs.load(Ordering::Relaxed),
        panics: u64::from(live.panics.load(Ordering::Relaxed)),
        header_repairs: u64::from(live.header_repairs.load(Ordering::Relaxed)),
        region_bytes: info.total_size,
    }
}
