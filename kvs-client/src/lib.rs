//! `KVSClient<K, V>`: typed, synchronous and asynchronous access to a kvs
//! server over shared memory, from any number of processes and threads.
//! Reads go to the shared store directly (no round trip); writes go
//! through the server's workers. Keys and values are bytes in the store;
//! the client's types go through a [`Codec`] (`u64`, `String`, `Vec<u8>`,
//! `bytes::Bytes`, [`Raw`]`<T: Pod>`, serde types behind a feature).
//!
//! ```no_run
//! use kvs_client::KVSClient;
//! use std::time::Duration;
//!
//! let client = KVSClient::<u64, u64>::connect("/my-store")?;
//! client.set(&1, &100)?;
//! assert_eq!(client.get(&1)?, Some(100));
//! assert!(!client.post(&1, &5)?); // exists
//!
//! // Pipelined: submit many, then collect.
//! let tickets: Vec<_> = (0..100u64).map(|k| client.set_async(&k, &k)).collect::<Result<_, _>>()?;
//! for t in tickets {
//!     t.wait(Duration::from_secs(1))?;
//! }
//! # Ok::<(), kvs_client::ClientError>(())
//! ```
//!
//! The crate is the client library and nothing else (the command lines are
//! in `kvs-cli`, the load generator in `kvs-bench`):
//!
//! * `conn`: the byte-level connection: the request protocol (slots,
//!   staging buffers, the ring, waiting) and the direct read;
//! * `client`: [`KVSClient`]: typed calls over the connection, pipelined
//!   batches of mixed ops;
//! * `many`: many keys in one call (`get_many`, `set_many`, `del_many`):
//!   one request per batch;
//! * `ticket`: the asynchronous calls and their [`Ticket`]s;
//! * `listing`: listing (read directly, stripe by stripe) and backups;
//! * [`status`]: the status view, also through a probe;
//! * `subscription`: change events;
//! * `fork`: refusing a forked child's use of its parent's connection;
//! * `error`: [`ClientError`].
//!
//! Tools and the HTTP gateway use [`BytesClient`] (`KVSClient<Vec<u8>,
//! Vec<u8>>`): the bytes as stored.

#![warn(missing_docs, unsafe_op_in_unsafe_fn)]

mod client;
mod conn;
mod error;
mod fork;
mod listing;
mod many;
mod operations;
mod reactor;
pub mod status;
mod subscription;
mod ticket;

/// Checks a region name against the naming rule (1 to 64 of `A-Z a-z 0-9 . _ -`,
/// not starting with a dot; one leading `/` is ignored) and returns it bare.
///
/// # Errors
///
/// A message saying what is wrong with the name.
pub fn check_name(name: &str) -> std::result::Result<String, String> {
    kvs_core::region::normalize_name(name)
}

pub use client::{KVSClient, Op, Reply, Versioned};
pub use conn::{ClientOptions, RawEntry};
pub use error::{ClientError, Result, StoreLimit};
pub use kvs_core::codec::{Codec, DecodeError, Raw};
pub use listing::{
    BackupInfo, ListCursor, ListIter, ListPage, ListedEntry, BACKUP_TIMEOUT, DEFAULT_PAGE,
};
pub use operations::{Cas, Ttl};
pub use status::StoreStatus;
pub use subscription::{ChangeEvent, Subscription};
pub use ticket::Ticket;

/// A client of the bytes as stored: what tools, scripts and the HTTP
/// gateway use.
pub type BytesClient = KVSClient<Vec<u8>, Vec<u8>>;
