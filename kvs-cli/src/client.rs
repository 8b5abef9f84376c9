//! The `kvs_client` command line.
//!
//! Exit codes: 0 done; 1 not found (get, del) or already exists (post), with
//! a short line on stderr; 2 any error (no server, timeout, key or value too
//! long, bad arguments), with one clear line on stderr.

use crate::support::{parse_args, Failure};
use clap::{Parser, Subcommand};
use kvs_client::text::{TextClient, TextError};
use kvs_client::ClientOptions;
use kvs_core::region::peek_info;
use kvs_core::text::ValueClass;
use kvs_core::with_value_class;
use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// Talk to a running kvs_server over shared memory.
///
/// Keys are text of up to 63 bytes; values are text up to the server's value
/// size (255 bytes unless the server was started with a larger
/// --value-size). A found value is printed to stdout alone.
///
/// Exit status: 0 done; 1 key not found (get, del) or already exists (post);
/// 2 any error (no server, timeout, too-long key or value, bad arguments).
#[derive(Debug, Parser)]
#[command(name = "kvs_client", version, about, long_about)]
pub struct Args {
    /// Region name of the server (as its --name).
    #[arg(long, env = "KVS_NAME", default_value = crate::DEFAULT_NAME, global = true)]
    pub name: String,
    /// Directory of the server's socket, if it was started with one.
    #[arg(long, env = "KVS_SOCKET_DIR", value_name = "DIR", global = true)]
    pub socket_dir: Option<std::path::PathBuf>,
    /// Give up on a request after this many milliseconds (at most a day).
    #[arg(long, default_value_t = 5000, global = true, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub timeout_ms: u64,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the value of KEY (exit 1 if absent).
    Get {
        /// The key.
        key: OsString,
    },
    /// Set KEY to VALUE, inserting or replacing.
    Set {
        /// The key.
        key: OsString,
        /// The value.
        value: OsString,
    },
    /// Insert KEY with VALUE only if KEY is absent (exit 1 if it exists).
    Post {
        /// The key.
        key: OsString,
        /// The value.
        value: OsString,
    },
    /// Delete KEY (exit 1 if absent).
    Del {
        /// The key.
        key: OsString,
    },
    /// Show the server's status: version, entries, capacities, load.
    Status {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Load-test the server: ops/s and latency per op kind, every answer
    /// checked (see `kvs_client bench --help`).
    Bench(kvs_bench::BenchArgs),
    /// List entries (key, value, version, last modified), page by page.
    List {
        /// Only keys starting with this text.
        #[arg(long, default_value = "")]
        prefix: String,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Ask the server to write a point-in-time snapshot of the store
    /// (atomically) as FILE in its backup directory (kvs_server
    /// --backup-dir; default file name: NAME-UNIXTIME.snap).
    Backup {
        /// A plain file name (no '/'); the server picks the directory.
        file: Option<String>,
    },
    /// Run job files (or directories of *.job), writing NAME.out beside each.
    ///
    /// Exit status: 0 when every line of every file ran and every operation
    /// succeeded (an absent key is an answer, not a failure); 1 when some
    /// line was malformed or some operation failed (each file's .out and
    /// stderr say which); 2 when a file could not be read or the server is
    /// unreachable.
    Run {
        /// Job files or directories.
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
        /// Job files to run at once.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        jobs: u16,
    },
    /// Print each change of KEYs (every key if none) as it happens, until
    /// interrupted.
    Watch {
        /// Keys to watch (at most 32).
        keys: Vec<OsString>,
    },
}

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

/// Text from an argument: must be UTF-8.
pub fn text_arg(what: &str, arg: &OsString) -> Result<String, Failure> {
    arg.to_str()
        .map(str::to_owned)
        .ok_or_else(|| Failure::error(format!("{what} is not valid UTF-8")))
}

/// A key from an argument, checked against the one rule for keys
/// (`kvs_core::text::check_key`).
pub fn key_arg(arg: &OsString) -> Result<String, Failure> {
    let text = text_arg("key", arg)?;
    TextClient::check_key(&text).map_err(|e| Failure::error(e.to_string()))?;
    Ok(text)
}

/// The client options the global flags ask for.
pub fn options(args: &Args) -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_millis(args.timeout_ms),
        socket_dir: args.socket_dir.clone(),
        ..ClientOptions::default()
    }
}

/// Connects the text client the commands use.
pub fn connect(args: &Args) -> Result<TextClient, Failure> {
    TextClient::connect_with(&args.name, options(args)).map_err(|e| Failure::error(e.to_string()))
}

impl From<TextError> for Failure {
    fn from(e: TextError) -> Self {
        Failure::error(e.to_string())
    }
}

fn run(args: &Args) -> Result<(), Failure> {
    // Parse every argument before connecting: a bad one writes nothing.
    enum Parsed {
        Get(String),
        Set(String, String),
        Post(String, String),
        Del(String),
    }
    let parsed = match &args.command {
        Command::Get { key } => Parsed::Get(key_arg(key)?),
        Command::Set { key, value } => Parsed::Set(key_arg(key)?, text_arg("value", value)?),
        Command::Post { key, value } => Parsed::Post(key_arg(key)?, text_arg("value", value)?),
        Command::Del { key } => Parsed::Del(key_arg(key)?),
        Command::Status { json } => return status(args, *json),
        Command::Bench(bench) => return run_bench(args, bench),
        Command::List { prefix, json } => return crate::tools::list(args, prefix, *json),
        Command::Backup { file } => return crate::tools::backup(args, file.as_deref()),
        Command::Run { paths, jobs } => {
            return crate::tools::run_jobs(args, paths, usize::from(*jobs))
        }
        Command::Watch { keys } => return crate::tools::watch(args, keys),
    };
    let client = connect(args)?;
    let mut out = std::io::stdout().lock();
    match parsed {
        Parsed::Get(k) => match client.get(&k)? {
            Some(e) => {
                let _ = writeln!(out, "{}", e.value);
            }
            None => return Err(Failure::miss(format!("key {k:?} not found"))),
        },
        Parsed::Set(k, v) => client.set(&k, &v)?,
        Parsed::Post(k, v) => {
            if !client.post(&k, &v)? {
                return Err(Failure::miss(format!("key {k:?} already exists")));
            }
        }
        Parsed::Del(k) => {
            if !client.del(&k)? {
                return Err(Failure::miss(format!("key {k:?} not found")));
            }
        }
    }
    let _ = out.flush();
    Ok(())
}

/// `kvs_client bench`: the load generator runs a typed client of the
/// server's value class (a text client would measure its own conversions).
fn run_bench(args: &Args, bench: &kvs_bench::BenchArgs) -> Result<(), Failure> {
    let (info, _) = peek_info(&args.name, &options(args).connect_options())
        .map_err(|e| Failure::error(e.to_string()))?;
    let class = ValueClass::from_type_size(info.value.size).ok_or_else(|| {
        Failure::error(format!(
            "region {} holds values of type {}, which kvs_client bench cannot drive (it drives text regions made by kvs_server)",
            args.name,
            info.value.name()
        ))
    })?;
    with_value_class!(class, V => kvs_bench::run::<V>(&args.name, options(args), bench, &info))
        .map_err(|e| Failure::error(e.to_string()))
}

/// `kvs_client status`: from a probe, so it works even when every client
/// registration is taken.
fn status(args: &Args, json: bool) -> Result<(), Failure> {
    let s = TextClient::probe_status(&args.name, &options(args))?;
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{}", serde_json::to_string(&s).unwrap_or_default());
    } else {
        print_status(&mut out, &s);
    }
    let _ = out.flush();
    Ok(())
}

fn print_status(out: &mut impl Write, s: &kvs_client::StoreStatus) {
    let limit = s
        .max_entries
        .map_or("unlimited".to_string(), |m| m.to_string());
    let _ = writeln!(
        out,
        "region        {}  ({} bytes, server pid {})",
        s.region, s.region_bytes, s.server_pid
    );
    let _ = writeln!(out, "types         {} -> {}", s.key_type, s.value_type);
    let _ = writeln!(out, "version       {}", s.version);
    let _ = writeln!(out, "entries       {} (limit {limit})", s.entries);
    let _ = writeln!(out, "uptime        {:.1} s", s.uptime_secs);
    let _ = writeln!(
        out,
        "workers       {} over {} stripes",
        s.workers, s.stripes
    );
    let _ = writeln!(
        out,
        "queue         {} queued of {}",
        s.queued, s.queue_capacity
    );
    let _ = writeln!(
        out,
        "slots         {} free of {} ({} in flight)",
        s.free_slots, s.slots, s.in_flight
    );
    let _ = writeln!(out, "clients       {} of {}", s.clients, s.max_clients);
    let _ = writeln!(
        out,
        "subscribers   {} of {}",
        s.subscribers, s.max_subscribers
    );
    let _ = writeln!(
        out,
        "ops served    get {}  set {}  post {}  del {}  other {}  dropped {}",
        s.ops.get, s.ops.set, s.ops.post, s.ops.del, s.ops.other, s.ops.dropped
    );
    let _ = writeln!(
        out,
        "recovery      {} malformed, {} slots reclaimed, {} ring repairs, {} panics",
        s.malformed, s.slots_reclaimed, s.ring_repairs, s.panics
    );
}
