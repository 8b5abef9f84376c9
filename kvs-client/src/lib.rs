//! `KVSClient<K, V>`: typed, synchronous and asynchronous access to a kvs
//! server over shared memory, from any number of processes and threads.
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
//! * `client`: [`KVSClient`]: connecting, the synchronous calls, batches,
//!   and the submit/wait protocol over the region;
//! * `ticket`: the asynchronous calls and their [`Ticket`]s;
//! * `listing`: listing pages and backups through the bulk buffers;
//! * [`status`]: the status view, also through a probe;
//! * `subscription`: change events;
//! * [`text`]: [`TextClient`], text keys and values over the server's value
//!   class, for tools and the HTTP gateway;
//! * `fork`: refusing a forked child's use of its parent's connection;
//! * `error`: [`ClientError`].

#![warn(missing_docs, unsafe_op_in_unsafe_fn)]

mod client;
mod error;
mod fork;
mod listing;
pub mod status;
mod subscription;
pub mod text;
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

pub use client::{ClientOptions, KVSClient, Op, Reply, Versioned};
pub use error::{ClientError, Result};
pub use listing::{BackupInfo, ListCursor, ListIter, ListPage, ListedEntry, BACKUP_TIMEOUT};
pub use status::StoreStatus;
pub use subscription::{ChangeEvent, Subscription};
pub use text::TextClient;
pub use ticket::Ticket;
