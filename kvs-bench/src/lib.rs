//! `kvs_client bench`: a load generator against a running server.
//!
//! Runs `--clients` processes (this binary re-executed with a hidden
//! `--child` flag) of `--threads` threads each. Every thread owns a disjoint
//! range of the key space, fills it before the clock starts, and keeps a model
//! of what it wrote, so every answer is checked: a GET must return exactly the
//! value this thread last wrote (or nothing after a DEL), a POST must insert
//! exactly when the key is absent, a DEL must remove exactly when it is
//! present. A wrong answer counts as an error, as does a failed call.
//!
//! `--depth 1` uses the synchronous calls; a larger depth keeps that many
//! async tickets in flight per thread, never two on the same key (so the model
//! stays exact however the workers reorder them), and waits for the oldest.
//! Latency is from submission to the answer, recorded in an HDR histogram per
//! op kind.
//!
//! Child processes talk to the parent over pipes: they print `ready` once
//! their threads have filled their keys and connected, wait for a line on
//! stdin (so all processes start together), print `progress N` lines while
//! running and one `result {json}` line at the end.
//!
//! ```text
//! kvs_client --name kvs bench --clients 4 --threads 1 --duration 5 --mix 90:10:0:0
//! kvs_client --name kvs bench --depth 256 --ops 2000000 --json
//! ```
//!
//! # Modules
//!
//! One concept each; a module uses only those above it in this list:
//!
//! * `error`: [`BenchError`], why a run failed (one line for stderr);
//! * `args`: [`BenchArgs`], the command line, its value parsers and the
//!   checks against the server's sizes; [`Mix`], [`KeyDist`];
//! * `workload`: what a thread does next: the op (`Kind`, weighted by
//!   `--mix`), the key (uniform or zipf over the thread's range, from a
//!   `SmallRng` seeded by `--seed` and the thread's index), and the values
//!   it writes, which name the thread, key and sequence number;
//!   [`BenchValue`];
//! * `tally`: what was measured (a latency histogram per op kind, wrong
//!   answers, failed calls) and how tallies merge;
//! * `model`: the per-thread model checker: what each key holds, and so
//!   what a correct answer is;
//! * `wire`: the line protocol between a client process and its parent
//!   (`ready`, `progress N`, `result {json}`; the child is gone when its
//!   stdout ends), and a tally as it travels;
//! * `report`: the table, or the `--json` object, at the end;
//! * `progress`: the progress bar on stderr (only on a terminal);
//! * `runner`: the plan every thread follows, the worker
//!   threads of one process (`runner::threads`) and the client processes
//!   of a multi-process run (`runner::children`).
//!
//! [`run`] ties them together.

mod args;
mod error;
mod model;
mod progress;
mod report;
mod runner;
mod tally;
mod wire;
mod workload;

pub use args::{BenchArgs, KeyDist, Mix, DEFAULT_OPS};
pub use error::BenchError;
pub use workload::BenchValue;

use kvs_client::ClientOptions;
use kvs_core::region::RegionInfo;
use progress::Progress;
use runner::Plan;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Runs the `bench` command against region `name`.
///
/// # Errors
///
/// A [`BenchError`] for bad arguments, a thread or client process that
/// could not start, the server gone, or a run with errors (the report is
/// printed first).
pub fn run(
    name: &str,
    options: ClientOptions,
    args: &BenchArgs,
    info: &RegionInfo,
) -> Result<(), BenchError> {
    type V = Vec<u8>;
    let keys_per_thread =
        args.check(usize::try_from(info.max_value).unwrap_or(usize::MAX), info)?;
    let plan = Plan {
        name: name.to_string(),
        options,
        args: args.clone(),
        keys_per_thread,
        run_id: args
            .run_id
            .unwrap_or_else(|| kvs_core::secure_fs::random_u64() as u32),
        gone: Arc::new(AtomicBool::new(false)),
    };
    if let Some(index) = args.child {
        return runner::children::run_child::<V>(&plan, index);
    }
    let progress = Progress::new(args);
    let tally = if args.clients == 1 {
        runner::run_in_process::<V>(&plan, &progress)?
    } else {
        runner::children::run_children(&plan, &progress)?
    };
    progress.finish();
    if tally.server_gone || plan.gone.load(Ordering::Relaxed) {
        return Err(BenchError::ServerGone);
    }
    report::report(name, args, info, &tally);
    if tally.errors() > 0 {
        return Err(BenchError::Errors {
            errors: tally.errors(),
            wrong: tally.wrong,
            failed: tally.failed,
        });
    }
    Ok(())
}
