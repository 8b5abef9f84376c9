//! The `kvs_server` command line: create the region, print one ready line,
//! serve until SIGINT or SIGTERM, then stop cleanly and remove the region.

use crate::support::{init_logging, parse_args};
use clap::Parser;
use kvs_core::region::Takeover;
use kvs_server::{KVSServer, ServerError};
use nix::sys::signal::{SigSet, Signal};
use std::io::Write;
use std::process::ExitCode;

/// Serve a kvs key-value store over POSIX shared memory.
///
/// Creates the shared region NAME (clients find it through the socket
/// DIR/NAME.sock, see --socket-dir), prints one line when it is ready, and
/// serves keys and values of any bytes (up to --max-key-size and
/// --max-value-size) until SIGINT or SIGTERM; then drains in-flight
/// requests, removes the region and exits 0. Sizes take K, M, G suffixes
/// (powers of 1024): 64M, 1G.
/// Exits 2 with one line on stderr if it cannot start (for example when a live
/// server already owns NAME). Logs go to stderr; set RUST_LOG=debug for more.
#[derive(Debug, Parser)]
#[command(name = "kvs_server", version)]
pub struct Args {
    /// Region name (letters, digits, '.', '_', '-'); clients use the same name.
    #[arg(long, env = "KVS_NAME", default_value = crate::DEFAULT_NAME)]
    pub name: String,
    /// Worker threads serving requests.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Stripes of the store (a power of two up to 65536): each has its own
    /// lock and sequence counter.
    #[arg(long, default_value_t = 1024)]
    pub stripes: usize,
    /// Cells in the request ring (a power of two).
    #[arg(long, default_value_t = 1024)]
    pub queue_capacity: usize,
    /// Response slots: requests that can be in flight at once.
    #[arg(long, default_value_t = 1024)]
    pub slots: usize,
    /// Client handles that can be connected at once.
    #[arg(long, default_value_t = 256)]
    pub max_clients: usize,
    /// Permission bits of the region, in octal (0600: only this user).
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    pub mode: u32,
    /// The largest key, in bytes (at most 64K).
    #[arg(long, default_value = "1K", value_parser = parse_key_size)]
    pub max_key_size: u64,
    /// The largest value, in bytes (at most 1G).
    #[arg(long, default_value = "1M", value_parser = parse_value_size)]
    pub max_value_size: u64,
    /// The store's memory limit: entries and index together (default: half
    /// of this machine's memory). New keys beyond it fail with "store full".
    #[arg(long, value_parser = parse_memory)]
    pub max_memory: Option<u64>,
    /// Staging buffers: writes of a key and value too large for a response
    /// slot (1 KiB) in flight at once (each holds the largest key and value).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub staging_buffers: u16,
    /// Gone: values are now bytes of any length up to --max-value-size.
    #[arg(long, hide = true)]
    pub value_size: Option<String>,
    /// Entry limit (at least 1; leave it out for none): SET or POST of a
    /// new key beyond it fails with "store full" (or evicts, see
    /// --eviction).
    #[arg(long, value_parser = parse_max_entries, value_name = "N")]
    pub max_entries: Option<u64>,
    /// What a write does when the store is full (--max-memory or
    /// --max-entries): noeviction fails it ("store full"); allkeys-lru
    /// evicts the least recently written of 5 sampled entries (reads are
    /// not tracked: clients read without the server); volatile-ttl the one
    /// of those with a deadline that expires first; allkeys-random any.
    /// Evictions are counted in status and reported to subscribers.
    #[arg(long, default_value = "noeviction", value_name = "POLICY")]
    pub eviction: kvs_core::store::evict::EvictionPolicy,
    /// Subscribers that can watch keys at once.
    #[arg(long, default_value_t = 8)]
    pub subscribers: usize,
    /// Change events each subscriber's queue holds before it overflows
    /// (the subscriber is then told to resync); a power of two.
    #[arg(long, default_value_t = 256)]
    pub subscriber_queue: usize,
    /// Load this snapshot at start-up (refuse to start if it is missing,
    /// corrupt, truncated or of other types).
    #[arg(long, value_name = "PATH")]
    pub load: Option<std::path::PathBuf>,
    /// Save a snapshot here on a clean stop (SIGINT or SIGTERM). Its
    /// directory is opened at start, so a bad one is refused then.
    #[arg(long, value_name = "PATH")]
    pub save_on_exit: Option<std::path::PathBuf>,
    /// Write clients' backups (kvs_client backup FILE) into this directory,
    /// which must not be writable by other users. Without it, backup
    /// requests are refused.
    #[arg(long, value_name = "DIR")]
    pub backup_dir: Option<std::path::PathBuf>,
    /// Remove the sockets and lock files of servers that died (all of them
    /// in the socket directory, or only NAME if --name or KVS_NAME is
    /// given), print what was removed, and exit.
    #[arg(long)]
    pub cleanup: bool,
    /// Directory of the server's socket (default: /run/kvs for root,
    /// $XDG_RUNTIME_DIR/kvs or /tmp/kvs-UID for other users); clients need
    /// the same. It must belong to this user and be writable by no one else.
    #[arg(long, env = "KVS_SOCKET_DIR", value_name = "DIR")]
    pub socket_dir: Option<std::path::PathBuf>,
    /// Start no keeper. By default a small keeper process (kvs-keeper)
    /// holds the store while this server runs, so that if the server
    /// crashes the next kvs_server of the same name adopts the data (warm
    /// restart); a clean stop discards it. A store a keeper already holds
    /// is adopted either way.
    #[arg(long)]
    pub no_keeper: bool,
}

/// A byte size: digits with an optional K, M, G or T (powers of 1024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{s:?} is not a size such as 4096, 64K, 1M or 2G ({e})"))
}

fn parse_bounded(s: &str, max: u64, min: u64) -> Result<u64, String> {
    let n = parse_bytes(s)?;
    if !(min..=max).contains(&n) {
        return Err(format!("{n} bytes is outside {min} to {max}"));
    }
    Ok(n)
}

fn parse_max_entries(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err(
            "0 would refuse every key: give at least 1, or leave --max-entries out for no limit"
                .into(),
        ),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a number of entries")),
    }
}

fn parse_key_size(s: &str) -> Result<u64, String> {
    parse_bounded(s, kvs_core::region::config::MAX_KEY_LIMIT, 1)
}

fn parse_value_size(s: &str) -> Result<u64, String> {
    parse_bounded(s, kvs_core::region::config::MAX_VALUE_LIMIT, 0)
}

fn parse_memory(s: &str) -> Result<u64, String> {
    parse_bounded(s, kvs_core::region::config::MAX_MEMORY_LIMIT, 1 << 20)
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let s = s.strip_prefix("0o").unwrap_or(s);
    u32::from_str_radix(s, 8).map_err(|_| format!("{s:?} is not an octal mode such as 600 or 660"))
}

/// Runs `kvs_server` with the process's arguments.
pub fn main() -> ExitCode {
    // Keeper mode (see `kvs_server::keeper`): before anything else opens a
    // descriptor.
    if std::env::args_os().nth(1).as_deref() == Some("--keeper".as_ref()) {
        kvs_server::keeper::run_keeper();
    }
    let args = match parse_args::<Args>("kvs_server") {
        Ok(a) => a,
        Err(code) => return code,
    };
    init_logging();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvs_server: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    if args.cleanup {
        return cleanup(&args);
    }
    if args.value_size.is_some() {
        return Err(
            "--value-size is gone: values are bytes of any length up to --max-value-size (default 1M)"
                .into(),
        );
    }
    // Other processes of this user may not read our memory or open our
    // descriptors (the region's memfd) through /proc or ptrace. This also
    // disables core dumps.
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) changes only this process's flag.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // Block the stop signals before any thread starts, so every thread
    // inherits the mask and only `sigwait` below receives them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    serve(&args, &signals)
}

fn serve(args: &Args, signals: &SigSet) -> Result<(), String> {
    // Open the save-on-exit directory now: a bad one must fail at start,
    // not lose the data at the stop.
    let save_on_exit = match &args.save_on_exit {
        Some(path) => {
            let (dir, name) = kvs_server::snapshot::open_parent(path)
                .and_then(|(dir, name)| {
                    kvs_server::snapshot::check_target(&dir, &name)?;
                    Ok((dir, name))
                })
                .map_err(|e| format!("--save-on-exit: {e}"))?;
            Some((dir, name))
        }
        None => None,
    };
    let mut builder = KVSServer::<Vec<u8>, Vec<u8>>::builder(&args.name)
        .workers(args.workers as usize)
        .stripes(args.stripes)
        .ring_capacity(args.queue_capacity)
        .slots(args.slots)
        .max_clients(args.max_clients)
        .mode(args.mode)
        .max_entries(args.max_entries)
        .eviction(args.eviction)
        .subscribers(args.subscribers, args.subscriber_queue)
        .backup_dir(args.backup_dir.clone())
        .socket_dir(args.socket_dir.clone())
        .max_key_size(args.max_key_size)
        .max_value_size(args.max_value_size)
        .staging_buffers(usize::from(args.staging_buffers))
        .keeper((!args.no_keeper).then(kvs_server::KeeperProgram::this_binary));
    if let Some(m) = args.max_memory {
        builder = builder.max_memory(m);
    }
    let mut server = builder.build().map_err(|e| e.to_string())?;
    if let Some(report) = server.adoption() {
        tracing::info!(
            entries = report.entries,
            dropped = report.dropped,
            "warm restart: serving the store the crashed server left"
        );
    }
    if let (Some(path), Some(_)) = (&args.load, server.adoption()) {
        tracing::warn!(path = %path.display(), "--load skipped: the store of the crashed server was adopted, and it is newer than any snapshot");
    } else if let Some(path) = &args.load {
        let info = server.load_snapshot(path).map_err(|e| e.to_string())?;
        tracing::info!(path = %path.display(), entries = info.entries, version = info.version, "snapshot loaded");
    }
    if let Takeover::Stale { pid } = server.takeover() {
        tracing::warn!(
            region = server.name(),
            dead_pid = pid,
            "took over a stale region whose server had died"
        );
    }
    server
        .start(args.workers as usize)
        .map_err(|e: ServerError| e.to_string())?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "kvs_server ready: region {} (socket {}), keys up to {} bytes, values up to {} bytes, memory up to {}, {}, {} slots, mode {:o}, {}, pid {}",
            server.name(),
            server.socket_path().display(),
            server.region().info().max_key,
            server.region().info().max_value,
            crate::support::human_bytes(server.region().info().max_memory),
            kvs_core::text::counted(u64::from(args.workers), "worker", "workers"),
            args.slots,
            args.mode,
            match (server.adoption(), server.keeper_pid()) {
                (Some(r), _) => format!(
                    "adopted {} {} of the crashed server",
                    r.entries,
                    if r.entries == 1 { "entry" } else { "entries" }
                ),
                (None, Some(pid)) => format!("keeper pid {pid}"),
                (None, None) => "no keeper".to_string(),
            },
            std::process::id()
        );
        let _ = out.flush();
    }
    let sig = signals
        .wait()
        .map_err(|e| format!("waiting for a signal: {e}"))?;
    tracing::info!(signal = ?sig, "stopping");
    // Refuse new requests at once, answer what was accepted, then save.
    server.begin_shutdown();
    server.stop();
    let saved = match &save_on_exit {
        Some((dir, name)) => server
            .save_snapshot_into(dir, name)
            .map(|info| {
                tracing::info!(path = %dir.path().join(name).display(), entries = info.entries, "snapshot saved on exit");
            })
            .map_err(|e| e.to_string()),
        None => Ok(()),
    };
    drop(server);
    saved
}

fn cleanup(args: &Args) -> Result<(), String> {
    use kvs_core::region::{remove_stale, stale_names, Cleanup};
    let explicit = std::env::args().any(|a| a == "--name" || a.starts_with("--name="))
        || std::env::var_os("KVS_NAME").is_some();
    let dir = args.socket_dir.as_deref();
    let names = if explicit {
        vec![args.name.clone()]
    } else {
        stale_names(dir)
    };
    let mut said_anything = false;
    for name in names {
        match remove_stale(&name, dir).map_err(|e| format!("cleaning up {name}: {e}"))? {
            Cleanup::Alive => {
                println!("left {name} alone: a live server owns it");
                said_anything = true;
            }
            Cleanup::Removed(paths) => {
                for path in &paths {
                    println!("removed {}", path.display());
                    said_anything = true;
                }
                let socket_dir = kvs_core::region::endpoint::server_dir(dir);
                match kvs_server::keeper::discard_orphan(&name, &socket_dir) {
                    Ok(true) => {
                        println!("discarded the store a keeper held for {name}");
                        said_anything = true;
                    }
                    Ok(false) => {}
                    Err(e) => return Err(format!("discarding the keeper of {name}: {e}")),
                }
            }
        }
    }
    if !said_anything {
        println!("nothing to clean up");
    }
    Ok(())
}
