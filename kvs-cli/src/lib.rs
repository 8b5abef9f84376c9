//! The command lines of kvs: `kvs_server`, `kvs_client` (with job files and
//! the load generator) and `kvs_http`. The root package's binaries are
//! one-line `main`s over [`server::main`], [`client::main`] and
//! [`http::main`]; everything a program embeds lives in the library crates
//! (`kvs-server`, `kvs-client`, `kvs-http`), not here.
//!
//! * [`support`]: parsing with one-line usage errors, logging, [`Failure`];
//! * [`server`]: `kvs_server`: create the region, serve, stop in order;
//! * [`client`]: `kvs_client`: its flags, the single-key commands, status,
//!   bench, and the tools (list, backup, run, watch);
//! * [`jobs`]: the job-file language of `kvs_client run`;
//! * [`http`]: `kvs_http`: the gateway's flags over
//!   [`kvs_http::gateway::Gateway`].
//!
//! Exit codes, in all three: 0 done; 1 a miss (absent key, existing key,
//! job lines that failed); 2 an error, with one line on stderr.

#![warn(missing_docs)]

pub mod client;
pub mod http;
pub mod jobs;
pub mod server;
pub mod support;

pub use support::Failure;

/// The region name used when neither `--name` nor `KVS_NAME` is given.
pub const DEFAULT_NAME: &str = "kvs";
