//! The gateway's connection to the store: a [`BytesClient`] (keys and values
//! as the bytes stored) that [`Connector`] replaces by itself when the
//! server restarts.
//!
//! When the server stops, dies or is replaced by a new one under the same
//! name, [`Connector::store`] notices and connects again; until a server is
//! back, it answers [`ClientError::Connect`], which the API turns into 503.
//!
//! How it notices: [`BytesClient::server_alive`], checked on every use. A
//! client's connection is a Unix socket to the server process that
//! answered it, and the kernel ends that socket however the process ends
//! (a clean stop, a crash, SIGKILL); a stopped server also marks its region
//! closed. A successor never inherits the socket (it is a new process that
//! takes over the name), so a connection that is still open is a
//! connection to the server that is serving now. The text gateway also
//! compared the region's `server_pid` and `created_unix_ns` with a fresh
//! probe every 500 ms, because its liveness test was a lock file that a
//! SIGKILLed server's successor takes over; with the socket that check can
//! no longer tell anything `server_alive` does not, and the only probe
//! this crate could make without `kvs-core` is a whole second connection
//! (a client registration taken and given back every 500 ms), so it is
//! gone.
//!
//! ```no_run
//! use kvs_http::store::Connector;
//!
//! let connector = Connector::new("kvs");
//! let store = connector.store()?; // connects on first use
//! store.set(&b"greeting".to_vec(), &b"hello".to_vec())?;
//! assert_eq!(store.get(&b"greeting".to_vec())?, Some(b"hello".to_vec()));
//! # Ok::<(), kvs_client::ClientError>(())
//! ```

use kvs_client::{BytesClient, ClientError, ClientOptions};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The gateway's one shared connection, replaced when the server restarts.
#[derive(Debug)]
pub struct Connector {
    name: String,
    options: ClientOptions,
    current: Mutex<Current>,
}

#[derive(Debug, Default)]
struct Current {
    store: Option<Arc<BytesClient>>,
    /// The key and value limits of the server last connected to.
    limits: Option<(u64, u64)>,
}

impl Connector {
    /// A connector for region `name` with the gateway's client options:
    /// 2 s per request, 500 ms to wait for a region being initialised.
    pub fn new(name: &str) -> Self {
        Self::with_options(name, Self::default_options())
    }

    /// The gateway's client options: 2 s per request, 500 ms to wait for a
    /// server that is still starting.
    pub fn default_options() -> ClientOptions {
        ClientOptions {
            timeout: Duration::from_secs(2),
            connect_wait: Duration::from_millis(500),
            ..ClientOptions::default()
        }
    }

    /// A connector with explicit client options.
    pub fn with_options(name: &str, options: ClientOptions) -> Self {
        Self {
            name: name.to_string(),
            options,
            current: Mutex::new(Current::default()),
        }
    }

    /// The region name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current connection, connecting (again) when there is none or its
    /// server is gone. Blocks: call it from a blocking context.
    ///
    /// # Errors
    ///
    /// As [`BytesClient::connect`].
    pub fn store(&self) -> Result<Arc<BytesClient>, ClientError> {
        let mut current = self.lock();
        if let Some(store) = current.store.clone() {
            if store.server_alive() {
                return Ok(store);
            }
            tracing::warn!(region = %self.name, "the server is gone; reconnecting");
            current.store = None;
        }
        let store = Arc::new(BytesClient::connect_with(&self.name, self.options.clone())?);
        let (max_key, max_value) = store.limits();
        tracing::info!(region = %self.name, max_key, max_value, "connected to the store");
        current.store = Some(Arc::clone(&store));
        current.limits = Some((max_key, max_value));
        Ok(store)
    }

    /// The current connection if its server is alive; never connects,
    /// never blocks (one `poll` of the connection), so an async handler
    /// calls it directly and goes to the blocking pool only to connect.
    pub fn live(&self) -> Option<Arc<BytesClient>> {
        let current = self.lock();
        current.store.clone().filter(|s| s.server_alive())
    }

    /// The limits (largest key, largest value, bytes) of the current
    /// connection if its server is alive; never connects, never blocks.
    pub fn live_limits(&self) -> Option<(u64, u64)> {
        let current = self.lock();
        current
            .store
            .as_ref()
            .filter(|s| s.server_alive())
            .map(|s| s.limits())
    }

    /// The limits of the server last connected to, alive or not (`None`
    /// before the first connection).
    pub fn last_limits(&self) -> Option<(u64, u64)> {
        self.lock().limits
    }

    /// Drops `failed` if it is still the current connection, so that the
    /// next [`store`](Self::store) reconnects. Call it when a request failed
    /// in a way that suggests the server is gone or was replaced.
    pub fn forget(&self, failed: &Arc<BytesClient>) {
        let mut current = self.lock();
        if current
            .store
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, failed))
        {
            current.store = None;
        }
    }
}
