//! The gateway's connection to the store: text keys and values as `String`s
//! over a [`KVSClient`] of whatever value class the running server chose,
//! and a [`Connector`] that reconnects by itself when the server restarts.
//!
//! The value class (255, 1023 or 4095 bytes) is read from the region's
//! header at connect time, so the handlers never see the type parameter:
//! they hold an `Arc<dyn Store>`. When the server stops, dies or is replaced
//! by a new one under the same name, [`Connector::store`] notices (the
//! server's liveness lock, then the identity of the server at the name) and
//! connects again; until a server is back, it answers
//! [`StoreError::Client`] with a connect error, which the API turns into 503.
//!
//! ```no_run
//! use kvs_http::store::Connector;
//!
//! let connector = Connector::new("kvs");
//! let store = connector.store()?; // connects on first use
//! store.set("greeting", "hello")?;
//! assert_eq!(store.get("greeting")?.map(|e| e.value), Some("hello".to_string()));
//! # Ok::<(), kvs_http::store::StoreError>(())
//! ```

use kvs_client::{ClientError, ClientOptions, KVSClient, StoreStatus};
use kvs_core::region::peek_info;
use kvs_core::text::{TextKey, ValueClass};
use kvs_core::{with_value_class, FixedStr, FixedStrError};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One entry, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// The entry's version (the store's version at its last change).
    pub version: u64,
    /// Last change, unix nanoseconds.
    pub modified_ns: u64,
}

/// The longest key and value the store accepts, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest key.
    pub key_max_bytes: usize,
    /// Longest value (the server's value class).
    pub value_max_bytes: usize,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The entries of this page.
    pub entries: Vec<Entry>,
    /// The token for the next page, `None` on the last one.
    pub next: Option<String>,
}

/// One change seen by a [`Feed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A key was set or inserted.
    Changed {
        /// The key.
        key: String,
        /// Its new value.
        value: String,
        /// The entry's new version.
        version: u64,
        /// When the change was made, unix nanoseconds.
        modified_ns: u64,
    },
    /// A key was deleted.
    Deleted {
        /// The key.
        key: String,
        /// The store's version at the deletion.
        version: u64,
    },
    /// Changes were lost (the feed's queue overflowed, or the server was
    /// replaced): whoever mirrors the store must reload it.
    Missed,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key breaks the one rule for keys (`kvs_core::text::check_key`):
    /// empty, too long, or a control character.
    #[error("{0}")]
    Key(kvs_core::text::KeyError),
    /// The value is too long, or contains a NUL.
    #[error("value {0}")]
    Value(FixedStrError),
    /// A listing cursor that the store did not hand out.
    #[error("invalid cursor {0:?}")]
    Cursor(String),
    /// A listing prefix longer than a key.
    #[error("prefix is {len} bytes, the limit is {max}")]
    Prefix {
        /// The prefix's length.
        len: usize,
        /// The longest prefix.
        max: usize,
    },
    /// The server cannot take the request now (no free listing buffer).
    #[error("the store is busy: {0}")]
    Busy(String),
    /// The region holds something other than text values.
    #[error("region {name} holds values of type {value_type}, which kvs_http cannot serve (it serves text regions made by kvs_server)")]
    NotText {
        /// The region name.
        name: String,
        /// The value type found in the header.
        value_type: String,
    },
    /// The client call failed: no server, timeout, store full, ...
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A stream of changes to every key (see [`Store::subscribe`]).
pub trait Feed: Send {
    /// The next change, waiting at most `timeout`; `Ok(None)` when none
    /// came.
    ///
    /// # Errors
    ///
    /// [`ClientError::ServerGone`] (as [`StoreError::Client`]) once the
    /// server is gone: drop the feed and subscribe again after reconnecting.
    fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Change>, StoreError>;
}

/// A text store: what the gateway needs of a [`KVSClient`], with the value
/// class erased.
pub trait Store: Send + Sync + fmt::Debug {
    /// The store's key and value limits.
    fn limits(&self) -> Limits;
    /// Whether the server behind this connection is still the one serving
    /// the name (see [`Connector::store`]).
    fn alive(&self) -> bool;
    /// Whether the object now at the region's name is the one this
    /// connection mapped (a region read; slower than [`alive`](Self::alive)).
    fn same_server(&self) -> bool;
    /// The entry of `key`, if present.
    ///
    /// # Errors
    ///
    /// A bad key or a failed call.
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;
    /// Sets `key` to `value`.
    ///
    /// # Errors
    ///
    /// A bad key or value, a full store, or a failed call.
    fn set(&self, key: &str, value: &str) -> Result<(), StoreError>;
    /// Inserts `key` only if absent; `false` when it exists.
    ///
    /// # Errors
    ///
    /// As [`set`](Self::set).
    fn post(&self, key: &str, value: &str) -> Result<bool, StoreError>;
    /// Deletes `key`; `false` when it was absent.
    ///
    /// # Errors
    ///
    /// A bad key or a failed call.
    fn del(&self, key: &str) -> Result<bool, StoreError>;
    /// The server's status.
    ///
    /// # Errors
    ///
    /// A failed call.
    fn status(&self) -> Result<StoreStatus, StoreError>;
    /// One page of the entries whose key starts with `prefix`, after
    /// `cursor`, at most `limit` of them.
    ///
    /// # Errors
    ///
    /// A bad cursor or a failed call.
    fn list_page(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError>;
    /// Subscribes to changes of every key.
    ///
    /// # Errors
    ///
    /// A failed call.
    fn subscribe(&self) -> Result<Box<dyn Feed>, StoreError>;
}

fn text_key(key: &str) -> Result<TextKey, StoreError> {
    kvs_core::text::text_key(key).map_err(StoreError::Key)
}

fn text_value<const N: usize>(value: &str) -> Result<FixedStr<N>, StoreError> {
    FixedStr::<N>::new(value).map_err(StoreError::Value)
}

/// [`Store`] over a client of one value class.
struct TextStore<const N: usize> {
    client: Arc<KVSClient<TextKey, FixedStr<N>>>,
    /// The region's name as given to the connector.
    name: String,
}

impl<const N: usize> fmt::Debug for TextStore<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TextStore")
            .field("client", &self.client)
            .field("value_max_bytes", &FixedStr::<N>::CAPACITY)
            .finish()
    }
}

impl<const N: usize> Store for TextStore<N> {
    fn limits(&self) -> Limits {
        Limits {
            key_max_bytes: TextKey::CAPACITY,
            value_max_bytes: FixedStr::<N>::CAPACITY,
        }
    }

    fn alive(&self) -> bool {
        self.client.server_alive()
    }

    fn same_server(&self) -> bool {
        let ours = self.client.region().info();
        let options = kvs_core::region::ConnectOptions {
            wait: Duration::ZERO,
            socket_dir: self.client.options().socket_dir.clone(),
        };
        match peek_info(&self.name, &options) {
            Ok((now, _)) => {
                now.server_pid == ours.server_pid && now.created_unix_ns == ours.created_unix_ns
            }
            Err(_) => false,
        }
    }

    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let k = text_key(key)?;
        Ok(self.client.get_entry(&k)?.map(|e| Entry {
            key: key.to_string(),
            value: e.value.to_string_lossy().into_owned(),
            version: e.version,
            modified_ns: e.modified_ns,
        }))
    }

    fn set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (k, v) = (text_key(key)?, text_value::<N>(value)?);
        Ok(self.client.set(&k, &v)?)
    }

    fn post(&self, key: &str, value: &str) -> Result<bool, StoreError> {
        let (k, v) = (text_key(key)?, text_value::<N>(value)?);
        Ok(self.client.post(&k, &v)?)
    }

    fn del(&self, key: &str) -> Result<bool, StoreError> {
        let k = text_key(key)?;
        Ok(self.client.del(&k)?)
    }

    fn status(&self) -> Result<StoreStatus, StoreError> {
        Ok(self.client.status()?)
    }

    fn list_page(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        listing::list_page(&self.client, prefix, cursor, limit)
    }

    fn subscribe(&self) -> Result<Box<dyn Feed>, StoreError> {
        listing::subscribe(&self.client)
    }
}

/// Listing and subscriptions over the client's `list_page` and `subscribe`.
mod listing {
    use super::{Change, Entry, Feed, Page, StoreError};
    use kvs_client::{ChangeEvent, ClientError, KVSClient, ListCursor, Subscription};
    use kvs_core::text::TextKey;
    use kvs_core::FixedStr;
    use std::sync::Arc;
    use std::time::Duration;

    pub(super) fn list_page<const N: usize>(
        client: &KVSClient<TextKey, FixedStr<N>>,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        if prefix.len() > TextKey::CAPACITY {
            return Err(StoreError::Prefix {
                len: prefix.len(),
                max: TextKey::CAPACITY,
            });
        }
        let cursor = cursor
            .map(|c| {
                c.parse::<ListCursor>()
                    .map_err(|_| StoreError::Cursor(c.to_string()))
            })
            .transpose()?;
        // The prefix and cursor are checked above: what is left of
        // InvalidArgument is "no free bulk buffer".
        let page = client
            .list_page(prefix.as_bytes(), cursor, limit)
            .map_err(|e| match e {
                ClientError::InvalidArgument(m) => StoreError::Busy(m),
                e => StoreError::Client(e),
            })?;
        Ok(Page {
            entries: page
                .entries
                .into_iter()
                .map(|e| Entry {
                    key: e.key.to_string_lossy().into_owned(),
                    value: e.value.to_string_lossy().into_owned(),
                    version: e.version,
                    modified_ns: e.modified_ns,
                })
                .collect(),
            next: page.next.map(|c| c.to_string()),
        })
    }

    struct TextFeed<const N: usize>(Subscription<TextKey, FixedStr<N>>);

    impl<const N: usize> Feed for TextFeed<N> {
        fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Change>, StoreError> {
            Ok(self.0.next_timeout(timeout)?.map(|event| match event {
                ChangeEvent::Changed {
                    key,
                    value,
                    version,
                    modified_ns,
                } => Change::Changed {
                    key: key.to_string_lossy().into_owned(),
                    value: value.to_string_lossy().into_owned(),
                    version,
                    modified_ns,
                },
                ChangeEvent::Deleted { key, version } => Change::Deleted {
                    key: key.to_string_lossy().into_owned(),
                    version,
                },
                ChangeEvent::Missed => Change::Missed,
            }))
        }
    }

    pub(super) fn subscribe<const N: usize>(
        client: &Arc<KVSClient<TextKey, FixedStr<N>>>,
    ) -> Result<Box<dyn Feed>, StoreError> {
        Ok(Box::new(TextFeed(client.subscribe(&[])?)))
    }
}

/// Connects to `name`, picking the value class from the region's header.
///
/// # Errors
///
/// [`StoreError::Client`] with [`ClientError::Connect`] when there is no
/// server (or it cannot be opened), [`StoreError::NotText`] when the region
/// is not a text region.
pub fn connect(name: &str, options: ClientOptions) -> Result<Arc<dyn Store>, StoreError> {
    let (info, _) = peek_info(name, &options.connect_options()).map_err(ClientError::Connect)?;
    let class = ValueClass::from_type_size(info.value.size).ok_or_else(|| StoreError::NotText {
        name: name.to_string(),
        value_type: info.value.name(),
    })?;
    with_value_class!(class, V => {
        let client = KVSClient::<TextKey, V>::connect_with(name, options)?;
        Ok(Arc::new(TextStore { client: Arc::new(client), name: name.to_string() }) as Arc<dyn Store>)
    })
}

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
    store: Option<Arc<dyn Store>>,
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
    /// As [`connect`].
    pub fn store(&self) -> Result<Arc<dyn Store>, StoreError> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(store) = current.store.clone() {
            let due = current
                .checked
                .is_none_or(|t| t.elapsed() >= IDENTITY_CHECK_EVERY);
            if store.alive() && (!due || store.same_server()) {
                if due {
                    current.checked = Some(Instant::now());
                }
                return Ok(store);
            }
            tracing::warn!(region = %self.name, "the server is gone; reconnecting");
            current.store = None;
        }
        let store = connect(&self.name, self.options.clone())?;
        tracing::info!(region = %self.name, limits = ?store.limits(), "connected to the store");
        current.store = Some(Arc::clone(&store));
        current.checked = Some(Instant::now());
        Ok(store)
    }

    /// Drops `failed` if it is still the current connection, so that the
    /// next [`store`](Self::store) reconnects. Call it when a request failed
    /// in a way that suggests the server is gone or was replaced.
    pub fn forget(&self, failed: &Arc<dyn Store>) {
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
