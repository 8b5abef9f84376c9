//! kvs: a multi-process key-value store over POSIX shared memory.
//!
//! This crate re-exports the public API of the workspace:
//!
//! * [`KVSServer`] (from `kvs-server`) owns a region and serves it;
//! * [`KVSClient`] (from `kvs-client`) talks to it from any process;
//! * [`core`] (`kvs-core`) holds the region, ring, response table and map.
//!
//! It also owns the `kvs_server`, `kvs_client` and `kvs_http` binaries
//! (one-line `main`s over the `kvs-cli` crate), the top-level tests and the
//! benchmarks.
//!
//! ```no_run
//! use kvs::{KVSClient, KVSServer};
//!
//! let mut server = KVSServer::<u64, u64>::builder("/doc-example").build()?;
//! server.start(2)?;
//! let client = KVSClient::<u64, u64>::connect("/doc-example")?;
//! client.set(&7, &49)?;
//! assert_eq!(client.get(&7)?, Some(49));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub use kvs_client::{
    BackupInfo, BytesClient, Cas, ChangeEvent, ClientError, ClientOptions, Codec, DecodeError,
    KVSClient, ListCursor, ListPage, ListedEntry, Op, Raw, RawEntry, Reply, StoreLimit,
    StoreStatus, Subscription, Ticket, Ttl, Versioned,
};
pub use kvs_core as core;
pub use kvs_core::{FixedStr, FixedStrError};
pub use kvs_server as server;
pub use kvs_server::{KVSServer, KVSServerBuilder, ServerError, SnapshotError, SnapshotInfo};
