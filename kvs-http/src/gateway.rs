//! The gateway as one value: bind an address, then serve the API, the page
//! and the event streams until told to stop.
//!
//! ```no_run
//! use kvs_http::gateway::{Gateway, GatewayConfig};
//!
//! # async fn demo() -> Result<(), kvs_http::gateway::GatewayError> {
//! let gateway = Gateway::bind(GatewayConfig::new("kvs")).await?;
//! println!("listening on http://{}/", gateway.local_addr());
//! gateway.serve(tokio::signal::ctrl_c()).await
//! # }
//! ```

use crate::api::AppState;
use crate::events::Pump;
use crate::serve::Limits;
use crate::store::Connector;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Capacity of the event fan-out: a stream that falls this far behind is
/// told to reload instead.
const EVENT_BUFFER: usize = 4096;

/// What the gateway serves, where, and how many connections it takes.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Region name of the server.
    pub name: String,
    /// Directory of the server's socket (`None`: the default one).
    pub socket_dir: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Require `Authorization: Bearer TOKEN` on every API request.
    pub token: Option<String>,
    /// Connections served at once; lowered to fit the file limit.
    pub max_connections: usize,
    /// How long a connection may take to send a request head or body, and
    /// stay idle between requests.
    pub idle_timeout: Duration,
}

impl GatewayConfig {
    /// The defaults for region `name`: loopback port 8000, no token, 1024
    /// connections, 10 s idle timeout.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            socket_dir: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            token: None,
            max_connections: 1024,
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the gateway could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The region name breaks the naming rule.
    #[error("invalid region name: {0}")]
    Name(String),
    /// An empty token would let anyone in.
    #[error("the token must not be empty")]
    EmptyToken,
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("serving: {0}")]
    Serve(std::io::Error),
    /// A task of the gateway panicked or was cancelled.
    #[error("a gateway task failed: {0}")]
    Task(String),
}

/// A bound gateway, ready to serve.
#[derive(Debug)]
pub struct Gateway {
    config: GatewayConfig,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    limits: Limits,
}

impl Gateway {
    /// Checks the configuration, fits the connection limit to the file
    /// limit (raising the soft limit first), and binds the address.
    ///
    /// # Errors
    ///
    /// [`GatewayError`] for a bad name or token, or an address that cannot
    /// be bound.
    pub async fn bind(config: GatewayConfig) -> Result<Self, GatewayError> {
        kvs_client::check_name(&config.name).map_err(|e| GatewayError::Name(e.to_string()))?;
        if config.token.as_deref() == Some("") {
            return Err(GatewayError::EmptyToken);
        }
        let mut limits = Limits {
            max_connections: config.max_connections,
            header_timeout: config.idle_timeout,
            body_timeout: config.idle_timeout,
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
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| GatewayError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(GatewayError::Serve)?;
        if config.token.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "listening beyond this machine WITHOUT authentication: anyone who can reach it can read and change the store (use a token)"
            );
        }
        Ok(Self {
            config,
            listener,
            addr,
            limits,
        })
    }

    /// The address the gateway listens on (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether API requests need a bearer token.
    pub fn requires_token(&self) -> bool {
        self.config.token.is_some()
    }

    /// Serves until `shutdown` completes, then ends the event streams and
    /// lets the open requests finish.
    ///
    /// # Errors
    ///
    /// [`GatewayError::Serve`] when the accept loop fails.
    pub async fn serve(self, shutdown: impl Future) -> Result<(), GatewayError> {
        let Self {
            config,
            listener,
            addr,
            limits,
        } = self;
        let token: Option<Arc<str>> = config.token.as_deref().map(Arc::from);
        let connector = Arc::new(Connector::with_options(
            &config.name,
            kvs_client::ClientOptions {
                socket_dir: config.socket_dir.clone(),
                ..Connector::default_options()
            },
        ));
        let (tx, _) = tokio::sync::broadcast::channel(EVENT_BUFFER);
        let pump = Pump::spawn(Arc::clone(&connector), tx.clone());
        let history = Arc::new(crate::history::History::new());
        let sampler = tokio::spawn(crate::history::sample(
            Arc::clone(&connector),
            Arc::clone(&history),
        ));
        let state = AppState {
            connector: Arc::clone(&connector),
            events: tx,
            pump: pump.state(),
            history,
        };
        let loopback_only = (token.is_none() && addr.ip().is_loopback()).then_some(addr.port());
        let app = crate::app::router(state, token, loopback_only);
        {
            let connector = Arc::clone(&connector);
            match tokio::task::spawn_blocking(move || connector.store()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(
                    region = %config.name,
                    "the store is not reachable yet (the API answers 503 until it is): {e}"
                ),
                Err(e) => tracing::warn!("checking the store: {e}"),
            }
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::serve::run(listener, app, limits, async move {
            let _ = stop_rx.await;
        }));
        shutdown.await;
        tracing::info!("stopping");
        sampler.abort();
        // End the event streams first, or the graceful shutdown waits for them.
        tokio::task::spawn_blocking(move || pump.stop())
            .await
            .map_err(|e| GatewayError::Task(e.to_string()))?;
        let _ = stop_tx.send(());
        server
            .await
            .map_err(|e| GatewayError::Task(e.to_string()))?
            .map_err(GatewayError::Serve)
    }
}
