//! `KVSServer<K, V>`: the process that owns a kvs region and serves it.
//!
//! The server creates the shared region, runs a pool of worker threads that
//! pop requests from the ring, execute them on a [`StripedMap`] and write the
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
//! snapshot file format, save and load).
//!
//! [`StripedMap`]: kvs_core::map::StripedMap

#![warn(missing_docs, unsafe_op_in_unsafe_fn)]

mod acceptor;
mod reclaim;
mod registry;
mod server;
mod shared;
pub mod snapshot;
mod worker;

pub use server::{KVSServer, KVSServerBuilder, ServerError, DRAIN_LIMIT};
pub use snapshot::{SnapshotError, SnapshotInfo};
