//! The `kvs_http` command line: connect to the store of region NAME, serve
//! the API and the page on ADDR, print one "listening" line, and run until
//! SIGINT or SIGTERM.

use crate::api::AppState;
use crate::events::Pump;
use crate::serve::Limits;
use crate::store::Connector;
use clap::Parser;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The region name used when neither `--name` nor `KVS_NAME` is given.
pub const DEFAULT_NAME: &str = "kvs";

/// Capacity of the event fan-out: a stream that falls this far behind is
/// told to reload instead.
const EVENT_BUFFER: usize = 4096;

/// A REST gateway and a live web page for a running kvs_server.
///
/// Open http://ADDR/ for the page, http://ADDR/docs for the API. The
/// gateway connects to the store when it first needs it and again after
/// the server restarts; meanwhile the API answers 503.
///
/// There is no authentication unless --token (or KVS_HTTP_TOKEN) is given:
/// anyone who can reach ADDR can read and change the store. Keep the
/// default loopback address unless you set a token.
#[derive(Debug, Parser)]
#[command(name = "kvs_http", version, about, long_about)]
pub struct Args {
    /// Region name of the server (as its --name).
    #[arg(long, env = "KVS_NAME", default_value = DEFAULT_NAME)]
    pub name: String,
    /// Directory of the server's socket, if it was started with one.
    #[arg(long, env = "KVS_SOCKET_DIR", value_name = "DIR")]
    pub socket_dir: Option<std::path::PathBuf>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Require `Authorization: Bearer TOKEN` on every API request.
    #[arg(long, env = "KVS_HTTP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Connections served at once (event streams included); further ones
    /// wait until one closes. Lowered to fit the process's file limit.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// Seconds a connection may take to send a request head, and may stay
    /// idle between requests, before it is closed.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub idle_timeout: u32,
}

/// Initialises logging to stderr (RUST_LOG, default "info").
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs `kvs_http` with the process's arguments.
pub fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        // --help and --version: print them, exit 0.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // Usage errors: one line, exit 2, as the other two binaries.
        Err(e) => {
            eprintln!(
                "kvs_http: {}",
                kvs_client::cli::usage_error_line(&e, "kvs_http")
            );
            return ExitCode::from(2);
        }
    };
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kvs-http")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kvs_http: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvs_http: {e}");
            ExitCode::from(2)
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Serves until SIGINT or SIGTERM.
///
/// # Errors
///
/// A message when the address cannot be bound or serving fails.
pub async fn serve(args: Args) -> Result<(), String> {
    kvs_core::region::normalize_name(&args.name)
        .map_err(|e| format!("invalid region name: {e}"))?;
    let token: Option<Arc<str>> = match args.token.as_deref() {
        Some("") => return Err("--token must not be empty".into()),
        t => t.map(Arc::from),
    };
    let mut limits = Limits {
        max_connections: args.max_connections as usize,
        header_timeout: Duration::from_secs(u64::from(args.idle_timeout)),
        body_timeout: Duration::from_secs(u64::from(args.idle_timeout)),
    };
    match crate::serve::raise_file_limit() {
        Ok(nofile) => {
            if let Some(n) = limits.fit_file_limit(nofile) {
                tracing::warn!(
                    nofile,
                    "the file limit allows only {n} connections; raise it (ulimit -n) for more"
                );
            }
        }
        Err(e) => tracing::warn!("reading the file limit: {e}"),
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("reading the bound address: {e}"))?;
    if token.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "listening beyond this machine WITHOUT authentication: anyone who can reach it can read and change the store (use --token)"
        );
    }

    let connector = Arc::new(Connector::with_options(
        &args.name,
        kvs_client::ClientOptions {
            socket_dir: args.socket_dir.clone(),
            ..Connector::default_options()
        },
    ));
    let (tx, _) = tokio::sync::broadcast::channel(EVENT_BUFFER);
    let pump = Pump::spawn(Arc::clone(&connector), tx.clone());
    let state = AppState {
        connector: Arc::clone(&connector),
        events: tx,
        pump: pump.state(),
    };
    let loopback_only = token.is_none() && addr.ip().is_loopback();
    let app = crate::app::router(state, token.clone(), loopback_only);

    {
        let connector = Arc::clone(&connector);
        match tokio::task::spawn_blocking(move || connector.store()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(
                region = %args.name,
                "the store is not reachable yet (the API answers 503 until it is): {e}"
            ),
            Err(e) => tracing::warn!("checking the store: {e}"),
        }
    }

    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "kvs_http listening on http://{addr}/ (region {}, {})",
            args.name,
            if token.is_some() {
                "bearer token required"
            } else {
                "no authentication"
            }
        );
        let _ = out.flush();
    }

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::serve::run(listener, app, limits, async move {
        let _ = stop_rx.await;
    }));
    shutdown_signal().await;
    tracing::info!("stopping");
    // End the event streams first, or the graceful shutdown waits for them.
    tokio::task::spawn_blocking(move || pump.stop())
        .await
        .map_err(|e| e.to_string())?;
    let _ = stop_tx.send(());
    server
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("serving: {e}"))
}
