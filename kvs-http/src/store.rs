//! The gateway's connection to the store: a [`TextClient`] (text keys and
//! values over whatever value class the running server chose) that
//! [`Connector`] replaces by itself when the server restarts.
//!
//! When the server stops, dies or is replaced by a new one under the same
//! name, [`Connector::store`] notices (the connection's state, then the
//! identity of the server at the name) and connects again; until a server
//! is back, it answers [`TextError::Client`] with a connect error, which
//! the API turns into 503.
//!
//! ```no_run
//! use kvs_http::store::Connector;
//!
//! let connector = Connector::new("kvs");
//! let store = connector.store()?; // connects on first use
//! store.set("greeting", "hello")?;
//! assert_eq!(store.get("greeting")?.map(|e| e.value), Some("hello".to_string()));
//! # Ok::<(), kvs_client::text::TextError>(())
//! ```

use kvs_client::text::{TextClient, TextError};
use kvs_client::ClientOptions;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often [`Connector::store`] checks that the server at the name is
/// still the one it is connected to (a SIGKILLed server's successor holds
/// the same lock file, so the liveness lock alone cannot tell).
const IDENTITY_CHECK_EVERY: Duration = Duration::from_millis(500);

/// The gateway's one shared connection, replaced when the server restarts.
#[derive(Debug)]
pub struct Connector {
    name: String,
    options: ClientOptions,
    current: Mutex<Current>,
}

#[derive(Debug, Default)]
struct Current {
    store: Option<Arc<TextClient>>,
    checked: Option<Instant>,
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

    /// The current connection, connecting (again) when there is none or its
    /// server is gone. Blocks: call it from a blocking context.
    ///
    /// # Errors
    ///
    /// As [`TextClient::connect`].
    pub fn store(&self) -> Result<Arc<TextClient>, TextError> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(store) = current.store.clone() {
            let due = current
                .checked
                .is_none_or(|t| t.elapsed() >= IDENTITY_CHECK_EVERY);
            if store.server_alive() && (!due || store.same_server()) {
                if due {
                    current.checked = Some(Instant::now());
                }
                return Ok(store);
            }
            tracing::warn!(region = %self.name, "the server is gone; reconnecting");
            current.store = None;
        }
        let store = Arc::new(TextClient::connect_with(&self.name, self.options.clone())?);
        tracing::info!(region = %self.name, limits = ?store.limits(), "connected to the store");
        current.store = Some(Arc::clone(&store));
        current.checked = Some(Instant::now());
        Ok(store)
    }

    /// Drops `failed` if it is still the current connection, so that the
    /// next [`store`](Self::store) reconnects. Call it when a request failed
    /// in a way that suggests the server is gone or was replaced.
    pub fn forget(&self, failed: &Arc<TextClient>) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current
            .store
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, failed))
        {
            current.store = None;
        }
    }
}
