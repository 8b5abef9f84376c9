//! `KVSServer<K, V>`: the process that owns a kvs region and serves it.
//!
//! The server creates the shared region, runs a pool of worker threads that
//! pop requests from the ring, execute them on the store in the region and write the
//! answers into the clients' response slots, and a housekeeper thread that
//! reclaims what dead clients left behind.
//!
//! ```no_run
//! use kvs_server::KVSServer;
//!
//! let mut server = KVSServer::<u64, u64>::builder("/my-store").workers(2).build()?;
//! server.start(2)?;
//! // ... clients connect to "/my-store" ...
//! server.stop();
//! # Ok::<(), kvs_server::ServerError>(())
//! ```
//!
//! Modules: `server` ([`KVSServer`], its builder, start and ordered stop),
//! `shared` (the state the threads share), `worker` (pop, execute, answer),
//! `acceptor` (admission over the socket and liveness of clients),
//! `registry` (who is registered: the server's private table), `reclaim`
//! (the housekeeper that frees what dead clients held), [`snapshot`] (the
//! snapshot file format, save and load), [`keeper`] (the process that holds
//! the store across a server's crash for a warm restart; the checks and
//! repairs of an adopted store are `kvs_core::store::adopt`).

#![warn(missing_docs, unsafe_op_in_unsafe_fn)]

mod acceptor;
mod batch;
mod expirer;
pub mod keeper;
mod outcome;
mod reclaim;
mod registry;
mod server;
mod shared;
pub mod snapshot;
mod worker;

pub use kvs_core::store::adopt::AdoptReport;
pub use kvs_core::store::evict::EvictionPolicy;
pub use server::{KVSServer, KVSServerBuilder, KeeperProgram, ServerError, DRAIN_LIMIT};
pub use snapshot::{SnapshotEntry, SnapshotError, SnapshotInfo};

/// A point-in-time copy of `store`'s entries for a snapshot file, and the
/// version it was taken at.
pub(crate) fn snapshot_entries<S: kvs_core::store::segment::Segment>(
    store: &kvs_core::store::write::StoreWriter<S>,
) -> (Vec<SnapshotEntry>, u64) {
    let (entries, version) = store.snapshot();
    let entries = entries
        .into_iter()
        .map(|(key, value, meta)| SnapshotEntry { key, value, meta })
        .collect();
    (entries, version)
}
