//! The `kvs_http` command line: connect to the store of region NAME, serve
//! the API and the page on ADDR, print one "listening" line, and run until
//! SIGINT or SIGTERM.

use crate::support::{init_logging, parse_args};
use clap::Parser;
use kvs_http::gateway::{Gateway, GatewayConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

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
#[command(name = "kvs_http", version)]
pub struct Args {
    /// Region name of the server (as its --name).
    #[arg(long, env = "KVS_NAME", default_value = crate::DEFAULT_NAME)]
    pub name: String,
    /// Directory of the server's socket, if it was started with one.
    #[arg(long, env = "KVS_SOCKET_DIR", value_name = "DIR")]
    pub socket_dir: Option<std::path::PathBuf>,
    /// Address to listen on: HOST:PORT, where HOST is an IP address or a
    /// name (localhost:8000); port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8000", value_parser = parse_listen, value_name = "HOST:PORT")]
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

/// `--listen`: an address, or a host name and a port (resolved now; the
/// first address it resolves to, an IPv4 one when there is one, as
/// `localhost` is most often meant as 127.0.0.1).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} has no port: write HOST:PORT, e.g. {s}:8000"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("{port:?} is not a port (0 to 65535) in {s:?}"));
    }
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{host:?} resolves to no address"))
}

impl Args {
    fn config(self) -> GatewayConfig {
        GatewayConfig {
            name: self.name,
            socket_dir: self.socket_dir,
            listen: self.listen,
            token: self.token,
            max_connections: self.max_connections as usize,
            idle_timeout: Duration::from_secs(u64::from(self.idle_timeout)),
        }
    }
}

/// Runs `kvs_http` with the process's arguments.
pub fn main() -> ExitCode {
    let args = match parse_args::<Args>("kvs_http") {
        Ok(a) => a,
        Err(code) => return code,
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
    let name = args.name.clone();
    let result = runtime.block_on(async move {
        let gateway = Gateway::bind(args.config()).await?;
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "kvs_http listening on http://{}/ (region {name}, {})",
                gateway.local_addr(),
                if gateway.requires_token() {
                    "bearer token required"
                } else {
                    "no authentication"
                }
            );
            let _ = out.flush();
        }
        gateway.serve(shutdown_signal()).await
    });
    match result {
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

#[cfg(test)]
mod tests {
    use super::parse_listen;

    #[test]
    fn listen_takes_addresses_and_host_names() {
        assert_eq!(
            parse_listen("127.0.0.1:8000").unwrap(),
            "127.0.0.1:8000".parse().unwrap()
        );
        assert_eq!(parse_listen("[::1]:0").unwrap(), "[::1]:0".parse().unwrap());
        let local = parse_listen("localhost:8001").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 8001, "{local}");
        assert!(parse_listen("localhost").unwrap_err().contains("no port"));
        assert!(parse_listen("localhost:http")
            .unwrap_err()
            .contains("not a port"));
        assert!(parse_listen("no-such-host.invalid:80")
            .unwrap_err()
            .contains("cannot resolve"));
    }
}
