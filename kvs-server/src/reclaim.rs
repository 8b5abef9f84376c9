//! The housekeeper: reclaims response slots and registrations that dead
//! clients left behind, frees abandoned slots no worker is answering, and
//! repairs a garbage stamp at the ring's tail.
//!
//! It wakes every [`TICK`], or at once when a client that found no free slot
//! pokes it, so slots are reclaimed "at the latest when free slots run short".
//! A dead client is one whose lock byte the kernel released (see
//! `kvs_core::region::shm`), never a bare pid check.

use crate::server::Shared;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the housekeeper looks, when nobody pokes it.
pub(crate) const TICK: Duration = Duration::from_millis(100);

pub(crate) fn spawn<K, V>(shared: Arc<Shared<K, V>>) -> std::io::Result<JoinHandle<()>>
where
    K: bytemuck::Pod + Send + Sync,
    V: bytemuck::Pod + Send + Sync,
{
    std::thread::Builder::new()
        .name("kvs-housekeeper".into())
        .spawn(move || {
            while !shared.shutdown.load(Ordering::Acquire) {
                sweep(&shared);
                shared.region.housekeeper_sleep(TICK);
            }
        })
}

/// One pass; returns how many slots were freed.
pub(crate) fn sweep<K, V>(shared: &Shared<K, V>) -> usize
where
    K: bytemuck::Pod,
    V: bytemuck::Pod,
{
    let region = &shared.region;
    let clients = region.clients();
    let dead = clients.dead(region.lock());
    let slots = region.slots();
    let freed = slots.reclaim(
        |owner| dead.iter().any(|d| d.index == owner),
        |slot| shared.is_busy(slot),
    );
    for d in &dead {
        clients.free(d.index);
        tracing::info!(
            pid = d.pid,
            index = d.index,
            "reclaimed a dead client's registration"
        );
    }
    if freed > 0 {
        region
            .header()
            .live
            .slots_reclaimed
            .fetch_add(freed as u64, Ordering::Relaxed);
        tracing::debug!(freed, "reclaimed response slots");
    }
    if region.ring().repair_tail() {
        tracing::warn!("repaired a corrupted stamp at the ring's tail");
    }
    freed
}
