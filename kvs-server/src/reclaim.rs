//! The housekeeper: reclaims response slots and registrations that dead
//! clients left behind, frees abandoned slots no worker is answering, and
//! repairs whatever a scribbler left in the ring (`Ring::repair`).
//!
//! It wakes every [`TICK`], or at once when a client that found no free slot
//! pokes it, so slots are reclaimed "at the latest when free slots run short".
//! A dead client is one whose connection ended or whose process exited (the
//! acceptor marks it dead in the server's registry), never a bare pid check.

use crate::shared::Shared;
use kvs_core::response_table::SlotState;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the housekeeper looks, when nobody pokes it.
pub(crate) const TICK: Duration = Duration::from_millis(100);

pub(crate) fn spawn(shared: Arc<Shared>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("kvs-housekeeper".into())
        .spawn(move || {
            while !shared.shutdown.load(Ordering::Acquire) {
                let rewritten = shared.region.repair_header();
                if rewritten > 0 {
                    tracing::warn!(
                        fields = rewritten,
                        "the region header was scribbled on; rewrote it from the server's own copy"
                    );
                }
                sweep(&shared);
                shared.region.housekeeper_sleep(TICK);
            }
        })
}

/// One pass; returns how many slots were freed.
pub(crate) fn sweep(shared: &Shared) -> usize {
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
    let subs_repaired = region.subscriptions().repair();
    if subs_repaired > 0 {
        tracing::warn!(
            queues = subs_repaired,
            "repaired corrupted subscription queues (their subscribers resync)"
        );
    }
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
    let repairs = region.ring().repair();
    let fixed = repairs.cells + usize::from(repairs.indices);
    if fixed > 0 {
        region
            .header()
            .live
            .ring_repairs
            .fetch_add(fixed as u64, Ordering::Relaxed);
        tracing::warn!(
            cells = repairs.cells,
            indices = repairs.indices,
            "repaired a corrupted request ring"
        );
    }
    freed
}
