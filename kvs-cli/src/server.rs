//! The `kvs_server` command line: create the region, print one ready line,
//! serve until SIGINT or SIGTERM, then stop cleanly and remove the region.

use crate::support::{init_logging, parse_args};
use clap::Parser;
use kvs_core::region::Takeover;
use kvs_core::text::{TextKey, ValueClass};
use kvs_core::with_value_class;
use kvs_server::{KVSServer, ServerError};
use nix::sys::signal::{SigSet, Signal};
use std::io::Write;
use std::process::ExitCode;

/// Serve a kvs key-value store over POSIX shared memory.
///
/// Creates the shared region NAME (clients find it through the socket
/// DIR/NAME.sock, see --socket-dir), prints one line when it
/// is ready, and serves text keys (up to 63 bytes) and values until SIGINT or
/// SIGTERM; then drains in-flight requests, removes the region and exits 0.
/// Exits 2 with one line on stderr if it cannot start (for example when a live
/// server already owns NAME). Logs go to stderr; set RUST_LOG=debug for more.
#[derive(Debug, Parser)]
#[command(name = "kvs_server", version, about, long_about)]
pub struct Args {
    /// Region name (letters, digits, '.', '_', '-'); clients use the same name.
    #[arg(long, env = "KVS_NAME", default_value = crate::DEFAULT_NAME)]
    pub name: String,
    /// Worker threads serving requests.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Lock stripes of the map (a power of two).
    #[arg(long, default_value_t = 64)]
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
    /// Longest value in bytes; picks the size class 255, 1023 or 4095.
    #[arg(long, default_value_t = 255, value_parser = clap::value_parser!(u64).range(1..=4095))]
    pub value_size: u64,
    /// Entry limit: SET or POST of a new key beyond it fails with "store full".
    #[arg(long)]
    pub max_entries: Option<u64>,
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
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let s = s.strip_prefix("0o").unwrap_or(s);
    u32::from_str_radix(s, 8).map_err(|_| format!("{s:?} is not an octal mode such as 600 or 660"))
}

/// Runs `kvs_server` with the process's arguments.
pub fn main() -> ExitCode {
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
    let class = ValueClass::for_len(args.value_size as usize)
        .ok_or_else(|| format!("--value-size {} is above 4095", args.value_size))?;
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
    with_value_class!(class, V => serve::<V>(&args, class, &signals))
}

fn serve<V>(args: &Args, class: ValueClass, signals: &SigSet) -> Result<(), String>
where
    V: bytemuck::Pod + Send + Sync,
{
    // Open the save-on-exit directory now: a bad one must fail at start,
    // not lose the data at the stop.
    let save_on_exit = match &args.save_on_exit {
        Some(path) => Some(
            kvs_server::snapshot::open_parent(path).map_err(|e| format!("--save-on-exit: {e}"))?,
        ),
        None => None,
    };
    let mut server: KVSServer<TextKey, V> = KVSServer::<TextKey, V>::builder(&args.name)
        .workers(args.workers as usize)
        .stripes(args.stripes)
        .ring_capacity(args.queue_capacity)
        .slots(args.slots)
        .max_clients(args.max_clients)
        .mode(args.mode)
        .max_entries(args.max_entries)
        .subscribers(args.subscribers, args.subscriber_queue)
        .backup_dir(args.backup_dir.clone())
        .socket_dir(args.socket_dir.clone())
        .build()
        .map_err(|e| e.to_string())?;
    if let Some(path) = &args.load {
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
            "kvs_server ready: region {} (socket {}), values up to {} bytes, {} workers, {} slots, mode {:o}, pid {}",
            server.name(),
            server.socket_path().display(),
            class.capacity(),
            args.workers,
            args.slots,
            args.mode,
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
            }
        }
    }
    if !said_anything {
        println!("nothing to clean up");
    }
    Ok(())
}
