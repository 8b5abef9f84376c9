//! The active expiry sweep: a thread that removes entries whose deadline
//! passed, so that keys nobody touches again do not hold memory (see
//! `kvs_core::store::expiry` for the queue it works from and why it needs no
//! sampling).
//!
//! Each round removes at most [`BATCH`] due entries, each under its own
//! stripe's lock (a writer waits for at most one removal), publishes an
//! `Expired` event per entry, and goes again at once if the batch was full;
//! otherwise it sleeps until the next deadline, at most [`MAX_SLEEP`] (a
//! deadline queued meanwhile is at most that late to be *removed*; it is
//! invisible to readers from its deadline on regardless).

use crate::shared::Shared;
use kvs_core::events::EventKind;
use kvs_core::store::write::Change;
use kvs_core::wait::FutexParker;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Entries removed per round before the sweep looks at the clock again.
pub(crate) const BATCH: usize = 512;
/// The longest sleep between rounds.
pub(crate) const MAX_SLEEP: Duration = Duration::from_millis(100);

/// Starts the sweep; it ends once `shared.shutdown` is set and it is
/// unparked (or its sleep ends).
pub(crate) fn spawn(shared: Arc<Shared>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("kvs-expiry".into())
        .spawn(move || {
            while !shared.shutdown.load(Ordering::Acquire) {
                let now = kvs_core::clock::unix_now_ns();
                let (removed, next) = round(&shared, now);
                if removed as usize >= BATCH {
                    continue;
                }
                let sleep = next
                    .map(|d| Duration::from_nanos(d.saturating_sub(now)))
                    .unwrap_or(MAX_SLEEP)
                    .clamp(Duration::from_millis(1), MAX_SLEEP);
                std::thread::park_timeout(sleep);
            }
        })
}

/// One round: removes what is due at `now`, tells subscribers.
pub(crate) fn round(shared: &Shared, now: u64) -> (u64, Option<u64>) {
    let subs = shared.region.subscriptions();
    let (removed, next) = shared.store.expire_due(now, BATCH, |c: &Change<'_>| {
        subs.publish(
            EventKind::Expired,
            c.key,
            c.hash.0,
            None,
            c.version,
            c.modified_ns,
            &FutexParker,
        );
    });
    if removed > 0 {
        tracing::debug!(removed, "expired entries removed");
    }
    (removed, next)
}
