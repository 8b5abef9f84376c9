//! The flags and commands of `kvs_client`, and the checks that turn
//! arguments into keys, values and client options.

use crate::support::{parse_ttl, Failure};
use clap::{Parser, Subcommand};
use kvs_client::{BytesClient, ClientOptions};
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

/// Talk to a running kvs_server over shared memory.
///
/// Keys and values are bytes, taken from the arguments as they are (up to
/// the server's --max-key-size and --max-value-size); a value can also come
/// from standard input (`-`) or a file (--file). `get` writes the value's
/// bytes to stdout as they are.
///
/// Exit status: 0 done; 1 key not found (get, del) or already exists (post);
/// 2 any error (no server, timeout, too-long key or value, bad arguments).
#[derive(Debug, Parser)]
#[command(name = "kvs_client", version)]
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
    /// Write the value of KEY, exactly its bytes (exit 1 if absent): `get
    /// KEY > file` round-trips with `set KEY --file file`. On a terminal it
    /// is shown instead with control characters and bytes that are not
    /// UTF-8 escaped (\n, \u{1b}, \xff) and a newline, so a stored value
    /// never drives the terminal.
    Get {
        /// The key.
        key: OsString,
        /// Print one JSON object: the value (`value`, or `value_base64`
        /// when it is not UTF-8), `version`, `modified_ms` and
        /// `expires_ms` (unix milliseconds, null without expiry).
        #[arg(long)]
        json: bool,
    },
    /// Set KEY to VALUE, inserting or replacing (any expiry is cleared,
    /// unless --ttl gives a new one).
    Set {
        /// The key.
        key: OsString,
        /// The value (VALUE, `-` for standard input, or --file PATH).
        #[command(flatten)]
        value: ValueArg,
        /// Expire the key after this long (`30s`, `5m`, `1h 30m`, `250ms`).
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
        ttl: Option<std::time::Duration>,
        /// Only if the key's version is N (0: only if absent); exit 1 with
        /// the current version otherwise (compare-and-set).
        #[arg(long, value_name = "N")]
        if_version: Option<u64>,
    },
    /// Insert KEY with VALUE only if KEY is absent (exit 1 if it exists).
    Post {
        /// The key.
        key: OsString,
        /// The value (VALUE, `-` for standard input, or --file PATH).
        #[command(flatten)]
        value: ValueArg,
    },
    /// Delete KEY (exit 1 if absent).
    Del {
        /// The key.
        key: OsString,
        /// Only if the key's version is N; exit 1 with the current version
        /// otherwise.
        #[arg(long, value_name = "N")]
        if_version: Option<u64>,
    },
    /// Add DELTA (default 1, may be negative) to the counter at KEY (absent:
    /// 0) and print the new value. A counter is a decimal integer (an
    /// optional '-' and digits, no leading zeros) within 64 bits; another
    /// value, or an overflow, is an error and changes nothing.
    Incr {
        /// The key.
        key: OsString,
        /// The amount to add.
        #[arg(default_value_t = 1, allow_hyphen_values = true)]
        delta: i64,
    },
    /// Make KEY expire after DURATION (exit 1 if absent).
    Expire {
        /// The key.
        key: OsString,
        /// How long from now (`30s`, `5m`, `1h 30m`, `250ms`).
        #[arg(value_parser = parse_ttl)]
        ttl: std::time::Duration,
    },
    /// Remove KEY's expiry (exit 1 if absent).
    Persist {
        /// The key.
        key: OsString,
    },
    /// Print how long KEY lives (`persistent`, or the time left); exit 1
    /// if absent.
    Ttl {
        /// The key.
        key: OsString,
    },
    /// Print the values of many keys, read in one go: one line per key, in
    /// order, each value with control characters escaped, `(nil)` for an
    /// absent key (exit 0 either way; use --json to tell an absent key from
    /// a value "(nil)" and to get exact bytes).
    Mget {
        /// The keys.
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<OsString>,
        /// Print one JSON array: per key an object as `get --json` prints
        /// it, or null when absent.
        #[arg(long)]
        json: bool,
    },
    /// Set many keys in one request: KEY VALUE [KEY VALUE]... Each key
    /// changes atomically, in order; the whole is not a transaction.
    Mset {
        /// KEY VALUE pairs.
        #[arg(required = true, value_name = "KEY VALUE")]
        pairs: Vec<OsString>,
        /// Expire every key after this long (`30s`, `5m`, `250ms`).
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
        ttl: Option<std::time::Duration>,
    },
    /// Delete many keys in one request; print how many were present.
    Mdel {
        /// The keys.
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<OsString>,
    },
    /// Show the server's status: version, entries, capacities, load.
    Status {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Load-test the server: ops/s and latency per op kind, every answer
    /// checked. Its keys (bench:RUN:THREAD:I) stay in the store afterwards
    /// unless --remove-keys is given.
    Bench(kvs_bench::BenchArgs),
    /// List entries (key, value, version, last modified), page by page.
    List {
        /// Only keys starting with these bytes.
        #[arg(long, default_value = "")]
        prefix: OsString,
        /// One JSON object per line instead of a table (as `get --json`:
        /// key, value, version, modified_ms, expires_ms).
        #[arg(long)]
        json: bool,
        /// Leave out the table's header line (KEY VALUE VERSION MODIFIED
        /// EXPIRES).
        #[arg(long, conflicts_with = "json")]
        no_header: bool,
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

/// Where a SET's or POST's value comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct ValueArg {
    /// The value; `-` reads it from standard input.
    #[arg(required_unless_present = "file")]
    pub value: Option<OsString>,
    /// Read the value from this file instead.
    #[arg(long, value_name = "PATH", conflicts_with = "value")]
    pub file: Option<PathBuf>,
}

impl ValueArg {
    /// The value's bytes, read from the argument, stdin or the file (at
    /// most `max` bytes: more is an error, not a truncation).
    pub fn bytes(&self, max: u64) -> Result<Vec<u8>, Failure> {
        let too_long = |len: u64| {
            Failure::error(format!(
                "the value is {len} bytes or more, the server allows {max} (kvs_server --max-value-size)"
            ))
        };
        let read_all = |r: &mut dyn Read, what: &str| -> Result<Vec<u8>, Failure> {
            let mut buf = Vec::new();
            r.take(max.saturating_add(1))
                .read_to_end(&mut buf)
                .map_err(|e| Failure::error(format!("reading {what}: {e}")))?;
            if buf.len() as u64 > max {
                return Err(too_long(buf.len() as u64));
            }
            Ok(buf)
        };
        match (&self.value, &self.file) {
            (_, Some(path)) => {
                let (mut file, _) = kvs_core::secure_fs::open_regular(path)
                    .map_err(|e| Failure::error(format!("{}: {e}", path.display())))?;
                read_all(&mut file, &path.display().to_string())
            }
            (Some(v), None) if v.as_bytes() == b"-" => {
                read_all(&mut std::io::stdin().lock(), "standard input")
            }
            (Some(v), None) => Ok(v.as_bytes().to_vec()),
            (None, None) => Err(Failure::error("no value given (VALUE, - or --file)")),
        }
    }
}

/// A key from an argument: its bytes as they are (the server's limit is
/// checked by the client before anything is sent).
pub fn key_arg(arg: &OsString) -> Result<Vec<u8>, Failure> {
    if arg.is_empty() {
        return Err(Failure::error("a key must not be empty"));
    }
    Ok(arg.as_bytes().to_vec())
}

/// The client options the global flags ask for.
pub fn options(args: &Args) -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_millis(args.timeout_ms),
        socket_dir: args.socket_dir.clone(),
        ..ClientOptions::default()
    }
}

/// Connects the bytes client the commands use.
pub fn connect(args: &Args) -> Result<BytesClient, Failure> {
    BytesClient::connect_with(&args.name, options(args)).map_err(|e| Failure::error(e.to_string()))
}
