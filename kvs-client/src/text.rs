//! [`TextClient`]: text keys and values as `&str` and `String`, over a
//! [`KVSClient`] of whatever value class the running server chose.
//!
//! `kvs_server` serves text keys (up to 63 bytes) and text values in one of
//! three size classes (255, 1023 or 4095 bytes: [`ValueClass`]). A program
//! that does not want to fix the class at compile time (the command line,
//! the HTTP gateway, a script) connects with [`TextClient::connect`]: it
//! reads the class from the region's description and hides the type
//! parameter behind one value. Keys are checked against the one rule for
//! keys ([`kvs_core::text::check_key`]) and values against the class's
//! capacity before anything is sent, so a bad argument never reaches the
//! server.
//!
//! ```no_run
//! use kvs_client::text::TextClient;
//!
//! let client = TextClient::connect("kvs")?;
//! client.set("greeting", "hello")?;
//! assert_eq!(client.get("greeting")?.map(|e| e.value), Some("hello".to_string()));
//! assert!(!client.post("greeting", "again")?); // exists
//! # Ok::<(), kvs_client::text::TextError>(())
//! ```

use crate::{
    BackupInfo, ChangeEvent, ClientError, ClientOptions, KVSClient, ListCursor, StoreStatus,
    Subscription,
};
use kvs_core::region::{peek_info, ConnectOptions};
use kvs_core::text::{TextKey, ValueClass};
use kvs_core::{with_value_class, FixedStr};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use kvs_core::text::{escape_for_display, KeyError};
pub use kvs_core::FixedStrError as ValueError;

/// One entry, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextEntry {
    /// The key.
    pub key: String,
    /// The value (invalid UTF-8, which only a typed client can store, is
    /// replaced by U+FFFD).
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
pub struct TextPage {
    /// The entries of this page.
    pub entries: Vec<TextEntry>,
    /// The token for the next page, `None` on the last one.
    pub next: Option<String>,
}

/// One change seen by a [`TextFeed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextChange {
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
    /// Changes were lost (the feed's queue overflowed): whoever mirrors the
    /// store must reload it.
    Missed,
}

/// Why a text call failed.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// The key breaks the one rule for keys: empty, too long, or a control
    /// character.
    #[error("{0}")]
    Key(KeyError),
    /// The value is too long, or contains a NUL.
    #[error("value {0}")]
    Value(ValueError),
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
    /// The region holds something other than text values.
    #[error("region {name} holds values of type {value_type}, which is not a text region made by kvs_server")]
    NotText {
        /// The region name.
        name: String,
        /// The value type found in the region's description.
        value_type: String,
    },
    /// The client call failed: no server, timeout, store full, ...
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Result of a text call.
pub type TextResult<T> = Result<T, TextError>;

/// A text client of one region; see the module docs.
pub struct TextClient {
    inner: Box<dyn Erased>,
    name: String,
}

impl fmt::Debug for TextClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TextClient")
            .field("name", &self.name)
            .field("limits", &self.limits())
            .finish_non_exhaustive()
    }
}

/// The value class of the text region `name`, read through a probe (no
/// client registration is taken).
fn value_class(name: &str, options: &ConnectOptions) -> TextResult<ValueClass> {
    let (info, _) = peek_info(name, options).map_err(ClientError::Connect)?;
    ValueClass::from_type_size(info.value.size).ok_or_else(|| TextError::NotText {
        name: name.to_string(),
        value_type: info.value.name(),
    })
}

impl TextClient {
    /// Connects to region `name` with the default [`ClientOptions`].
    ///
    /// # Errors
    ///
    /// [`TextError::Client`] with [`ClientError::Connect`] when there is no
    /// server (or it cannot be opened), [`TextError::NotText`] when the
    /// region is not a text region.
    pub fn connect(name: &str) -> TextResult<Self> {
        Self::connect_with(name, ClientOptions::default())
    }

    /// Connects to region `name` with explicit options.
    ///
    /// # Errors
    ///
    /// As [`TextClient::connect`].
    pub fn connect_with(name: &str, options: ClientOptions) -> TextResult<Self> {
        let class = value_class(name, &options.connect_options())?;
        let inner: Box<dyn Erased> = with_value_class!(class, V => {
            Box::new(Arc::new(KVSClient::<TextKey, V>::connect_with(name, options)?))
        });
        Ok(Self {
            inner,
            name: name.to_string(),
        })
    }

    /// The server's status, through a probe: no client registration is
    /// taken, so it answers even when every registration is in use.
    ///
    /// # Errors
    ///
    /// As [`TextClient::connect`], or a failed status request.
    pub fn probe_status(name: &str, options: &ClientOptions) -> TextResult<StoreStatus> {
        let (info, session) =
            peek_info(name, &options.connect_options()).map_err(ClientError::Connect)?;
        let class =
            ValueClass::from_type_size(info.value.size).ok_or_else(|| TextError::NotText {
                name: name.to_string(),
                value_type: info.value.name(),
            })?;
        with_value_class!(class, V => Ok(crate::status::probe_status::<TextKey, V>(session)?))
    }

    /// The region name, as given to `connect`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The options this client was connected with.
    pub fn options(&self) -> &ClientOptions {
        self.inner.options()
    }

    /// The longest key and value this store accepts.
    pub fn limits(&self) -> Limits {
        Limits {
            key_max_bytes: TextKey::CAPACITY,
            value_max_bytes: self.inner.value_capacity(),
        }
    }

    /// Checks `key` against the one rule for keys, without a round trip.
    ///
    /// # Errors
    ///
    /// [`TextError::Key`] saying what is wrong.
    pub fn check_key(key: &str) -> TextResult<()> {
        kvs_core::text::check_key(key).map_err(TextError::Key)
    }

    /// Checks `value` against this store's value class, without a round
    /// trip.
    ///
    /// # Errors
    ///
    /// [`TextError::Value`] saying what is wrong.
    pub fn check_value(&self, value: &str) -> TextResult<()> {
        self.inner.check_value(value)
    }

    /// Whether the server behind this connection is still up (no round
    /// trip: the connection's state).
    pub fn server_alive(&self) -> bool {
        self.inner.server_alive()
    }

    /// Whether the server now answering at the region's name is the one
    /// this client connected to (a probe: slower than
    /// [`server_alive`](Self::server_alive); a server that was killed and
    /// replaced under the same name shows here).
    pub fn same_server(&self) -> bool {
        let (pid, created) = self.inner.identity();
        let options = ConnectOptions {
            wait: Duration::ZERO,
            socket_dir: self.options().socket_dir.clone(),
        };
        match peek_info(&self.name, &options) {
            Ok((now, _)) => now.server_pid == pid && now.created_unix_ns == created,
            Err(_) => false,
        }
    }

    /// The entry of `key`, if present.
    ///
    /// # Errors
    ///
    /// A bad key or a failed call.
    pub fn get(&self, key: &str) -> TextResult<Option<TextEntry>> {
        self.inner.get(key)
    }

    /// Sets `key` to `value` (insert or replace).
    ///
    /// # Errors
    ///
    /// A bad key or value, a full store, or a failed call.
    pub fn set(&self, key: &str, value: &str) -> TextResult<()> {
        self.inner.set(key, value)
    }

    /// Inserts `key` only if absent; `false` when it exists.
    ///
    /// # Errors
    ///
    /// As [`set`](Self::set).
    pub fn post(&self, key: &str, value: &str) -> TextResult<bool> {
        self.inner.post(key, value)
    }

    /// Deletes `key`; `false` when it was absent.
    ///
    /// # Errors
    ///
    /// A bad key or a failed call.
    pub fn del(&self, key: &str) -> TextResult<bool> {
        self.inner.del(key)
    }

    /// The server's status.
    ///
    /// # Errors
    ///
    /// A failed call.
    pub fn status(&self) -> TextResult<StoreStatus> {
        self.inner.status()
    }

    /// One page of the entries whose key starts with `prefix`, after
    /// `cursor` (a [`TextPage::next`] of an earlier page), at most `limit`.
    ///
    /// # Errors
    ///
    /// A prefix longer than a key, a cursor this store did not hand out,
    /// or a failed call.
    pub fn list_page(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> TextResult<TextPage> {
        check_prefix(prefix)?;
        let cursor = cursor
            .map(|c| {
                c.parse::<ListCursor>()
                    .map_err(|_| TextError::Cursor(c.to_string()))
            })
            .transpose()?;
        self.inner.list_page(prefix, cursor, limit)
    }

    /// Every entry whose key starts with `prefix`, page by page.
    ///
    /// # Errors
    ///
    /// A prefix longer than a key; the iterator yields failed calls.
    pub fn list<'a>(
        &'a self,
        prefix: &str,
    ) -> TextResult<Box<dyn Iterator<Item = TextResult<TextEntry>> + 'a>> {
        check_prefix(prefix)?;
        Ok(self.inner.list(prefix))
    }

    /// Asks the server to write a snapshot as `file` (a plain file name) in
    /// its backup directory.
    ///
    /// # Errors
    ///
    /// A refused name, no backup directory, or a failed call.
    pub fn backup(&self, file: &str) -> TextResult<BackupInfo> {
        self.inner.backup(file)
    }

    /// Subscribes to changes of `keys` (every key if empty, at most 32).
    ///
    /// # Errors
    ///
    /// A bad key, no free subscription entry, or a failed call.
    pub fn subscribe(&self, keys: &[&str]) -> TextResult<TextFeed> {
        let keys = keys
            .iter()
            .map(|k| text_key(k))
            .collect::<TextResult<Vec<_>>>()?;
        Ok(TextFeed(self.inner.subscribe(&keys)?))
    }
}

/// A stream of changes (see [`TextClient::subscribe`]).
pub struct TextFeed(Box<dyn ErasedFeed>);

impl fmt::Debug for TextFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TextFeed").finish_non_exhaustive()
    }
}

impl TextFeed {
    /// The next change, waiting at most `timeout`; `Ok(None)` when none
    /// came.
    ///
    /// # Errors
    ///
    /// [`ClientError::ServerGone`] (as [`TextError::Client`]) once the
    /// server is gone: drop the feed and subscribe again after reconnecting.
    pub fn next_timeout(&mut self, timeout: Duration) -> TextResult<Option<TextChange>> {
        self.0.next_timeout(timeout)
    }
}

fn text_key(key: &str) -> TextResult<TextKey> {
    kvs_core::text::text_key(key).map_err(TextError::Key)
}

fn text_value<const N: usize>(value: &str) -> TextResult<FixedStr<N>> {
    FixedStr::<N>::new(value).map_err(TextError::Value)
}

fn check_prefix(prefix: &str) -> TextResult<()> {
    if prefix.len() > TextKey::CAPACITY {
        return Err(TextError::Prefix {
            len: prefix.len(),
            max: TextKey::CAPACITY,
        });
    }
    Ok(())
}

fn text_of<const N: usize>(v: &FixedStr<N>) -> String {
    v.to_string_lossy().into_owned()
}

/// What [`TextClient`] needs of a typed client: one implementation per
/// value class, behind a box so the class is chosen at run time.
trait Erased: Send + Sync {
    fn options(&self) -> &ClientOptions;
    fn value_capacity(&self) -> usize;
    fn check_value(&self, value: &str) -> TextResult<()>;
    fn server_alive(&self) -> bool;
    /// The server's pid and creation time, as this connection saw them.
    fn identity(&self) -> (u64, u64);
    fn get(&self, key: &str) -> TextResult<Option<TextEntry>>;
    fn set(&self, key: &str, value: &str) -> TextResult<()>;
    fn post(&self, key: &str, value: &str) -> TextResult<bool>;
    fn del(&self, key: &str) -> TextResult<bool>;
    fn status(&self) -> TextResult<StoreStatus>;
    fn list_page(
        &self,
        prefix: &str,
        cursor: Option<ListCursor>,
        limit: usize,
    ) -> TextResult<TextPage>;
    fn list<'a>(&'a self, prefix: &str) -> Box<dyn Iterator<Item = TextResult<TextEntry>> + 'a>;
    fn backup(&self, file: &str) -> TextResult<BackupInfo>;
    fn subscribe(&self, keys: &[TextKey]) -> TextResult<Box<dyn ErasedFeed>>;
}

trait ErasedFeed: Send {
    fn next_timeout(&mut self, timeout: Duration) -> TextResult<Option<TextChange>>;
}

impl<const N: usize> Erased for Arc<KVSClient<TextKey, FixedStr<N>>> {
    fn options(&self) -> &ClientOptions {
        KVSClient::options(self)
    }

    fn value_capacity(&self) -> usize {
        FixedStr::<N>::CAPACITY
    }

    fn check_value(&self, value: &str) -> TextResult<()> {
        text_value::<N>(value).map(|_| ())
    }

    fn server_alive(&self) -> bool {
        KVSClient::server_alive(self)
    }

    fn identity(&self) -> (u64, u64) {
        let info = self.region().info();
        (info.server_pid, info.created_unix_ns)
    }

    fn get(&self, key: &str) -> TextResult<Option<TextEntry>> {
        let k = text_key(key)?;
        Ok(self.get_entry(&k)?.map(|e| TextEntry {
            key: key.to_string(),
            value: text_of(&e.value),
            version: e.version,
            modified_ns: e.modified_ns,
        }))
    }

    fn set(&self, key: &str, value: &str) -> TextResult<()> {
        let (k, v) = (text_key(key)?, text_value::<N>(value)?);
        Ok(KVSClient::set(self, &k, &v)?)
    }

    fn post(&self, key: &str, value: &str) -> TextResult<bool> {
        let (k, v) = (text_key(key)?, text_value::<N>(value)?);
        Ok(KVSClient::post(self, &k, &v)?)
    }

    fn del(&self, key: &str) -> TextResult<bool> {
        let k = text_key(key)?;
        Ok(KVSClient::del(self, &k)?)
    }

    fn status(&self) -> TextResult<StoreStatus> {
        Ok(KVSClient::status(self)?)
    }

    fn list_page(
        &self,
        prefix: &str,
        cursor: Option<ListCursor>,
        limit: usize,
    ) -> TextResult<TextPage> {
        let page = KVSClient::list_page(self, prefix.as_bytes(), cursor, limit)?;
        Ok(TextPage {
            entries: page
                .entries
                .into_iter()
                .map(|e| TextEntry {
                    key: e.key.to_string_lossy().into_owned(),
                    value: text_of(&e.value),
                    version: e.version,
                    modified_ns: e.modified_ns,
                })
                .collect(),
            next: page.next.map(|c| c.to_string()),
        })
    }

    fn list<'a>(&'a self, prefix: &str) -> Box<dyn Iterator<Item = TextResult<TextEntry>> + 'a> {
        Box::new(KVSClient::list(self, prefix.as_bytes()).map(|r| {
            r.map(|e| TextEntry {
                key: e.key.to_string_lossy().into_owned(),
                value: text_of(&e.value),
                version: e.version,
                modified_ns: e.modified_ns,
            })
            .map_err(TextError::Client)
        }))
    }

    fn backup(&self, file: &str) -> TextResult<BackupInfo> {
        Ok(KVSClient::backup(self, file)?)
    }

    fn subscribe(&self, keys: &[TextKey]) -> TextResult<Box<dyn ErasedFeed>> {
        Ok(Box::new(KVSClient::subscribe(self, keys)?))
    }
}

impl<const N: usize> ErasedFeed for Subscription<TextKey, FixedStr<N>> {
    fn next_timeout(&mut self, timeout: Duration) -> TextResult<Option<TextChange>> {
        Ok(
            Subscription::next_timeout(self, timeout)?.map(|event| match event {
                ChangeEvent::Changed {
                    key,
                    value,
                    version,
                    modified_ns,
                } => TextChange::Changed {
                    key: key.to_string_lossy().into_owned(),
                    value: text_of(&value),
                    version,
                    modified_ns,
                },
                ChangeEvent::Deleted { key, version } => TextChange::Deleted {
                    key: key.to_string_lossy().into_owned(),
                    version,
                },
                ChangeEvent::Missed => TextChange::Missed,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_prefixes_are_checked_before_any_round_trip() {
        assert!(TextClient::check_key("ok").is_ok());
        assert!(matches!(
            TextClient::check_key(""),
            Err(TextError::Key(KeyError::Empty))
        ));
        assert!(matches!(
            TextClient::check_key(&"k".repeat(64)),
            Err(TextError::Key(KeyError::TooLong { .. }))
        ));
        assert!(matches!(
            TextClient::check_key("a\nb"),
            Err(TextError::Key(_))
        ));
        assert!(check_prefix(&"p".repeat(63)).is_ok());
        assert!(matches!(
            check_prefix(&"p".repeat(64)),
            Err(TextError::Prefix { len: 64, max: 63 })
        ));
    }

    #[test]
    fn values_are_checked_against_the_class() {
        assert!(text_value::<256>(&"v".repeat(255)).is_ok());
        assert!(matches!(
            text_value::<256>(&"v".repeat(256)),
            Err(TextError::Value(ValueError::TooLong { .. }))
        ));
        assert!(matches!(
            text_value::<256>("a\0b"),
            Err(TextError::Value(_))
        ));
    }
}
