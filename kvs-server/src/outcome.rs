//! How the store's outcomes leave a worker: changes to subscribers, and
//! refused writes as answer statuses (shared by single requests and
//! batches).

use crate::shared::Shared;
use kvs_core::events::EventKind;
use kvs_core::protocol::{StatusCode, FULL_ENTRIES, FULL_MEMORY};
use kvs_core::store::write::{Change, ChangeKind, WriteError};
use kvs_core::wait::FutexParker;

/// What a change is reported to subscribers as: runs under the key's
/// stripe lock, so every subscriber sees one key's changes in version
/// order. One load when nobody subscribes.
pub(crate) fn publisher(shared: &Shared) -> impl Fn(&Change<'_>) + '_ {
    let subs = shared.region.subscriptions();
    move |c: &Change<'_>| {
        let kind = match c.kind {
            ChangeKind::Written => EventKind::Changed,
            ChangeKind::Deleted => EventKind::Deleted,
            ChangeKind::Expired => EventKind::Expired,
            ChangeKind::Evicted => EventKind::Evicted,
        };
        subs.publish(
            kind,
            c.key,
            c.hash.0,
            c.value,
            c.version,
            c.modified_ns,
            &FutexParker,
        );
    }
}

/// The status (and `aux`) a refused write is answered with.
pub(crate) fn refusal(e: WriteError) -> (StatusCode, u32) {
    match e {
        WriteError::MemoryFull => (StatusCode::StoreFull, FULL_MEMORY),
        WriteError::EntriesFull => (StatusCode::StoreFull, FULL_ENTRIES),
        WriteError::KeyLength { .. } | WriteError::ValueLength { .. } => (StatusCode::Malformed, 0),
    }
}
