//! Key subscriptions: a stream of change events pushed by the server.
//!
//! Events of one key arrive in version order. A subscriber that falls
//! behind by more than its queue (256 events by default) gets
//! [`ChangeEvent::Missed`] after the events it did receive: it should then
//! re-read what it cares about. Nobody else is slowed down by a slow or dead
//! subscriber; the server frees a dead one's queue.
//!
//! An event carries the key and, if it fits the event cell (the largest key
//! plus 256 bytes), the value. A larger value is read from the store when
//! the event is taken: the value delivered may then be that of a later
//! change of the key (whose own event follows), never an older one.

use crate::client::KVSClient;
use crate::error::{ClientError, Result};
use kvs_core::codec::Codec;
use kvs_core::events::{EventKind, Notice, SubClaim, MAX_SUB_KEYS};
use kvs_core::wait::{Backoff, FutexParker, SLEEP_SLICE};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One change seen by a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeEvent<K, V> {
    /// The key was set (inserted or replaced).
    Changed {
        /// The key.
        key: K,
        /// Its new value.
        value: V,
        /// The version of the change.
        version: u64,
        /// When the change was made, unix nanoseconds.
        modified_ns: u64,
    },
    /// The key was deleted.
    Deleted {
        /// The key.
        key: K,
        /// The version of the delete.
        version: u64,
    },
    /// The key's deadline passed and the server removed it.
    Expired {
        /// The key.
        key: K,
        /// The version of the removal.
        version: u64,
    },
    /// The server removed the key to make room (its eviction policy).
    Evicted {
        /// The key.
        key: K,
        /// The version of the removal.
        version: u64,
    },
    /// Events were lost because the queue overflowed: resync.
    Missed,
}

/// An active subscription; dropping it unsubscribes.
pub struct Subscription<K, V> {
    client: Arc<KVSClient<K, V>>,
    claim: SubClaim,
    /// The keys asked for, encoded (empty: every key): an event for another
    /// key with a colliding hash is skipped.
    keys: Vec<Vec<u8>>,
}

impl<K, V> fmt::Debug for Subscription<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("claim", &self.claim)
            .finish()
    }
}

impl<K: Codec, V: Codec> KVSClient<K, V> {
    /// Subscribes to changes of `keys` (at most 32), or of every key when
    /// `keys` is empty.
    ///
    /// # Errors
    ///
    /// [`ClientError::Subscribe`] when too many keys are named or every
    /// subscription entry of the region is taken.
    pub fn subscribe(self: &Arc<Self>, keys: &[K]) -> Result<Subscription<K, V>> {
        if keys.len() > MAX_SUB_KEYS {
            return Err(ClientError::Subscribe(format!(
                "{} keys named, at most {MAX_SUB_KEYS} (subscribe to all keys instead)",
                keys.len()
            )));
        }
        let encoded: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| {
                let mut b = Vec::new();
                k.encode(&mut b);
                b
            })
            .collect();
        for k in &encoded {
            // A key no entry can have would be watched forever in silence.
            self.conn.check_lengths(k, None)?;
        }
        let view = self
            .region()
            .store_view()
            .ok_or_else(|| ClientError::Protocol("no store mapped".into()))?;
        let hashes: Vec<u64> = encoded.iter().map(|k| view.hash(k).0).collect();
        let subs = self.region().subscriptions();
        let claim = subs
            .subscribe(self.conn.registration(), &hashes)
            .ok_or_else(|| {
                let n = subs.count();
                ClientError::Subscribe(format!(
                    "{} in use: the server allows {n} at once (kvs_server --subscribers)",
                    if n == 1 {
                        "the one subscription is".to_string()
                    } else {
                        format!("all {n} subscriptions are")
                    }
                ))
            })?;
        Ok(Subscription {
            client: Arc::clone(self),
            claim,
            keys: encoded,
        })
    }
}

impl<K: Codec, V: Codec> Subscription<K, V> {
    /// The event of a notice, decoded; `None` for an event of a key not
    /// asked for (a hash collision).
    fn convert(&self, n: Notice) -> Result<Option<ChangeEvent<K, V>>> {
        let e = match n {
            Notice::Missed => return Ok(Some(ChangeEvent::Missed)),
            Notice::Event(e) => e,
        };
        if !self.keys.is_empty() && !self.keys.contains(&e.key) {
            return Ok(None);
        }
        if e.kind == EventKind::Deleted {
            return Ok(Some(ChangeEvent::Deleted {
                key: K::decode_vec(e.key).map_err(ClientError::Decode)?,
                version: e.version,
            }));
        }
        if e.kind == EventKind::Expired {
            return Ok(Some(ChangeEvent::Expired {
                key: K::decode_vec(e.key).map_err(ClientError::Decode)?,
                version: e.version,
            }));
        }
        if e.kind == EventKind::Evicted {
            return Ok(Some(ChangeEvent::Evicted {
                key: K::decode_vec(e.key).map_err(ClientError::Decode)?,
                version: e.version,
            }));
        }
        let (value, version, modified_ns) = match e.value {
            Some(v) if !e.value_omitted => (v, e.version, e.modified_ns),
            _ => {
                // Too large for the event: read what the key holds now.
                let timeout = self.client.options().timeout;
                match self.client.conn.get(&e.key, timeout)? {
                    Some(now) if now.version >= e.version => {
                        (now.value, now.version, now.modified_ns)
                    }
                    // Deleted (or changed and deleted) since: its event follows.
                    _ => return Ok(None),
                }
            }
        };
        Ok(Some(ChangeEvent::Changed {
            key: K::decode_vec(e.key).map_err(ClientError::Decode)?,
            value: V::decode_vec(value).map_err(ClientError::Decode)?,
            version,
            modified_ns,
        }))
    }

    /// The next event if one is queued.
    ///
    /// # Errors
    ///
    /// [`ClientError::Decode`] for an event whose bytes are not a `K`/`V`.
    pub fn try_next(&mut self) -> Result<Option<ChangeEvent<K, V>>> {
        self.client.conn.check_process()?;
        while let Some(n) = self.client.region().subscriptions().poll(&self.claim) {
            if let Some(e) = self.convert(n)? {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    /// Waits up to `timeout` for the next event; `Ok(None)` on timeout.
    ///
    /// # Errors
    ///
    /// [`ClientError::ServerGone`] when the server stopped or died (checked
    /// at least every 20 ms while waiting); [`ClientError::Decode`] for an
    /// event whose bytes are not a `K`/`V`.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<ChangeEvent<K, V>>> {
        self.client.conn.check_process()?;
        let deadline = crate::conn::deadline_after(timeout);
        let region = self.client.region();
        let subs = region.subscriptions();
        let mut backoff = Backoff::new();
        loop {
            while let Some(n) = subs.poll(&self.claim) {
                if let Some(e) = self.convert(n)? {
                    return Ok(Some(e));
                }
            }
            if !subs.is_active(&self.claim) || !region.server_alive() {
                return Err(ClientError::ServerGone);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            if !backoff.is_completed() {
                backoff.snooze();
                continue;
            }
            subs.sleep(&self.claim, left.min(SLEEP_SLICE), &FutexParker);
        }
    }
}

/// Blocking iteration: ends when the server is gone (or an event does not
/// decode).
impl<K: Codec, V: Codec> Iterator for Subscription<K, V> {
    type Item = ChangeEvent<K, V>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.next_timeout(Duration::from_secs(3600)) {
                Ok(Some(e)) => return Some(e),
                Ok(None) => continue,
                Err(_) => return None,
            }
        }
    }
}

impl<K, V> Drop for Subscription<K, V> {
    fn drop(&mut self) {
        // A forked child must not touch the parent's subscription.
        if !self.client.conn.is_forked_copy() {
            self.client
                .conn
                .region()
                .subscriptions()
                .unsubscribe(&self.claim);
        }
    }
}
