//! The housekeeper: reclaims response slots and registrations that dead
//! clients left behind, frees abandoned slots no worker is answering, and
//! repairs garbage stamps in the ring's free cells.
//!
//! It wakes every [`TICK`], or at once when a client that found no free slot
//! pokes it, so slots are reclaimed "at the latest when free slots run short".
//! A dead client is one whose connection ended or whose process exited (the
//! acceptor marks it dead in the server's registry), never a bare pid check.

use crate::server::Shared;
use kvs_core::response_table::SlotState;
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
            let mut suspects = Suspects::default();
            while !shared.shutdown.load(Ordering::Acquire) {
                sweep(&shared);
                repair_forged_stamps(&shared, &mut suspects);
                shared.region.housekeeper_sleep(TICK);
            }
        })
}

/// Ring cells whose stamp looked like a consumer caught mid-pop, and the
/// workers' epochs right after they were seen.
#[derive(Debug, Default)]
pub(crate) struct Suspects {
    cells: Vec<(u64, u64)>,
    epochs: Vec<u64>,
}

/// Repairs stamps that imitate a consumer mid-pop (`Ring::suspect_cells`).
///
/// Such a stamp is legal for the few instructions a worker spends inside
/// `pop` or `skip_stalled`, and blocks every producer if it was forged. The
/// workers are the only consumers and bump their epoch at a quiescent point
/// each round, after storing any stamp. So once every running worker's epoch
/// has moved past its value taken after the stamp was seen, a stamp that is
/// still the same cannot belong to a consumer in flight: it is freed.
/// The worker's Release store of its epoch follows its stamp store, and our
/// Acquire load of the epoch precedes our second look at the stamp.
pub(crate) fn repair_forged_stamps<K, V>(shared: &Shared<K, V>, suspects: &mut Suspects) -> usize
where
    K: bytemuck::Pod,
    V: bytemuck::Pod,
{
    let ring = shared.region.ring();
    let running = shared
        .running_workers
        .load(Ordering::Acquire)
        .min(shared.epochs.len());
    let epochs = || -> Vec<u64> {
        shared.epochs[..running]
            .iter()
            .map(|e| e.load(Ordering::Acquire))
            .collect()
    };
    let mut repaired = 0;
    if !suspects.cells.is_empty() {
        let now = epochs();
        let all_moved = now.len() != suspects.epochs.len()
            || now.iter().zip(&suspects.epochs).all(|(n, then)| n != then);
        if !all_moved {
            return 0; // a worker may still be inside that pop: look again later
        }
        let current = ring.suspect_cells();
        for (pos, stamp) in suspects.cells.drain(..) {
            if current.contains(&(pos, stamp)) && ring.repair_cell(pos, stamp) {
                repaired += 1;
            }
        }
        if repaired > 0 {
            tracing::warn!(repaired, "repaired forged mid-pop stamps in the ring");
        }
    }
    suspects.cells = ring.suspect_cells();
    suspects.epochs = epochs();
    repaired
}

/// One pass; returns how many slots were freed.
pub(crate) fn sweep<K, V>(shared: &Shared<K, V>) -> usize
where
    K: bytemuck::Pod,
    V: bytemuck::Pod,
{
    let region = &shared.region;
    let slots = region.slots();
    // An owner is dead unless the registry (the server's own table, which
    // no client can write) says a connected client holds it: a dead
    // client's, a free index (a slot left by a dropped, leaked ticket), or
    // an index out of range (scribbled by a hostile process). A dead
    // registration keeps its index until nothing names it, so a slot that
    // names a live index is that client's.
    let owner_dead = |owner: u32| !shared.registry.is_live(owner);
    let freed = slots.reclaim(owner_dead, |slot| shared.is_busy(slot));
    // Bulk buffers: a dead owner's, or an abandoned one once its request's
    // slot has moved on (a worker only writes a buffer between `begin` and
    // `complete` on that slot, and holds its busy mark meanwhile).
    let settled = |slot: u32, generation: u32| {
        !shared.is_busy(slot)
            && slots
                .word(slot)
                .is_none_or(|w| w.generation != generation || w.state == SlotState::Free as u32)
    };
    let bulk_freed = region.bulk().reclaim(owner_dead, settled);
    let subs_freed = region.subscriptions().reclaim(owner_dead);
    if bulk_freed + subs_freed > 0 {
        tracing::debug!(
            bulk_freed,
            subs_freed,
            "reclaimed bulk buffers and subscriptions"
        );
    }
    for d in shared.registry.dead() {
        // Keep the registration while a slot still names it (a worker
        // answered it between our load and our CAS, or is answering it now):
        // freeing it would let a new client inherit the index, and the slot
        // would then look owned by a live client forever.
        let still_held = (0..slots.len() as u32).any(|i| {
            slots
                .word(i)
                .is_some_and(|w| w.owner == d.index && w.state != SlotState::Free as u32)
        });
        if still_held {
            tracing::debug!(index = d.index, "dead client still holds slots; next sweep");
            continue;
        }
        if shared.registry.release(d.index, d.generation) {
            region.clients().clear(d.index);
            tracing::debug!(
                pid = d.pid,
                index = d.index,
                "reclaimed a dead client's registration"
            );
        }
    }
    if freed > 0 {
        region
            .header()
            .live
            .slots_reclaimed
            .fetch_add(freed as u64, Ordering::Relaxed);
        tracing::debug!(freed, "reclaimed response slots");
    }
    let ring = region.ring();
    if ring.repair_indices() {
        tracing::warn!("repaired corrupted ring indices (tail reset to head)");
    }
    let repaired = ring.repair_free_cells();
    if repaired > 0 {
        tracing::warn!(repaired, "repaired corrupted stamps in free ring cells");
    }
    freed
}
