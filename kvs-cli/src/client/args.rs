//! The flags and commands of `kvs_client`, and the checks that turn
//! arguments into keys, values and client options.

use crate::support::Failure;
use clap::{Parser, Subcommand};
use kvs_client::text::{TextClient, TextError};
use kvs_client::ClientOptions;
use std::ffi::OsString;
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
