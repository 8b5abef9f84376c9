//! The `kvs_client` command line.
//!
//! * [`args`]: the flags and commands, and turning arguments into checked
//!   keys, values and client options;
//! * `commands`: the single-key commands, status and bench;
//! * `batches`: mget, mset, mdel;
//! * `tools`: list, backup, run (job files) and watch.
//!
//! Exit codes: 0 done; 1 not found (get, del, expire, persist, ttl), already
//! exists (post) or another version (--if-version), with a short line on
//! stderr; 2 any error (no server, timeout, key or value too
//! long, bad arguments), with one clear line on stderr.

pub mod args;
mod batches;
mod commands;
mod tools;

pub use args::{Args, Command};

use crate::support::{parse_args, Failure};
use std::process::ExitCode;

/// Runs `kvs_client` with the process's arguments.
pub fn main() -> ExitCode {
    let args = match parse_args::<Args>("kvs_client") {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("kvs_client: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
fn run(args: &Args) -> Result<(), Failure> {
    match &args.command {
        Command::Get { key, json } => commands::get(args, key, *json),
        Command::Set {
            key,
            value,
            ttl,
            if_version,
        } => commands::set(args, key, value, *ttl, *if_version),
        Command::Post { key, value } => commands::post(args, key, value),
        Command::Del { key, if_version } => commands::del(args, key, *if_version),
        Command::Incr { key, delta } => commands::incr(args, key, *delta),
        Command::Expire { key, ttl } => commands::expire(args, key, Some(*ttl)),
        Command::Persist { key } => commands::expire(args, key, None),
        Command::Ttl { key } => commands::ttl(args, key),
        Command::Mget { keys, json } => batches::mget(args, keys, *json),
        Command::Mset { pairs, ttl } => batches::mset(args, pairs, *ttl),
        Command::Mdel { keys } => batches::mdel(args, keys),
        Command::Status { json } => commands::status(args, *json),
        Command::Bench(bench) => commands::bench(args, bench),
        Command::List {
            prefix,
            json,
            no_header,
        } => tools::list(args, prefix, *json, !*no_header),
        Command::Backup { file } => tools::backup(args, file.as_deref()),
        Command::Run { paths, jobs } => tools::run_jobs(args, paths, usize::from(*jobs)),
        Command::Watch { keys } => tools::watch(args, keys),
    }
}
