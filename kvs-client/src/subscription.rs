//! Key subscriptions: a stream of change events pushed by the server.
//!
//! Events of one key arrive in version order. A subscriber that falls
//! behind by more than its queue (256 events by default) gets
//! [`ChangeEvent::Missed`] after the events it did receive: it should then
//! re-read what it cares about. Nobody else is slowed down by a slow or dead
//! subscriber; the server frees a dead one's queue.

use crate::client::KVSClient;
use crate::error::{ClientError, Result};
use kvs_core::notify::{EventKind, Notice, SubClaim, MAX_SUB_KEYS};
use kvs_core::wait::{Backoff, FutexParker, SLEEP_SLICE};
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One change seen by a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Events were lost because the queue overflowed: resync.
    Missed,
}

/// An active subscription; dropping it unsubscribes.
pub struct Subscription<K, V>
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
    client: Arc<KVSClient<K, V>>,
    claim: SubClaim,
}

impl<K, V> fmt::Debug for Subscription<K, V>
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("claim", &self.claim)
            .finish()
    }
}

impl<K, V> KVSClient<K, V>
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
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
        let subs = self.region().subscriptions();
        let claim = subs.subscribe(self.registration(), keys).ok_or_else(|| {
            ClientError::Subscribe(format!(
                "all {} subscription entries of the region are in use",
                subs.count()
            ))
        })?;
        Ok(Subscription {
            client: Arc::clone(self),
            claim,
        })
    }
}

impl<K, V> Subscription<K, V>
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
    fn convert(n: Notice<K, V>) -> ChangeEvent<K, V> {
        match n {
            Notice::Missed => ChangeEvent::Missed,
            Notice::Event(e) if e.kind == EventKind::Deleted => ChangeEvent::Deleted {
                key: e.key,
                version: e.version,
            },
            Notice::Event(e) => ChangeEvent::Changed {
                key: e.key,
                value: e.value,
                version: e.version,
                modified_ns: e.modified_ns,
            },
        }
    }

    /// The next event if one is queued.
    pub fn try_next(&mut self) -> Option<ChangeEvent<K, V>> {
        if self.client.is_forked_copy() {
            return None;
        }
        self.client
            .region()
            .subscriptions()
            .poll(&self.claim)
            .map(Self::convert)
    }

    /// Waits up to `timeout` for the next event; `Ok(None)` on timeout.
    ///
    /// # Errors
    ///
    /// [`ClientError::ServerGone`] when the server stopped or died (checked
    /// at least every 20 ms while waiting).
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<ChangeEvent<K, V>>> {
        self.client.check_process()?;
        let deadline = crate::client::deadline_after(timeout);
        let region = self.client.region();
        let subs = region.subscriptions();
        let mut backoff = Backoff::new();
        loop {
            if let Some(n) = subs.poll(&self.claim) {
                return Ok(Some(Self::convert(n)));
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

/// Blocking iteration: ends when the server is gone.
impl<K, V> Iterator for Subscription<K, V>
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
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

impl<K, V> Drop for Subscription<K, V>
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
    fn drop(&mut self) {
        // A forked child must not touch the parent's subscription.
        if !self.client.is_forked_copy() {
            self.client
                .region()
                .subscriptions()
                .unsubscribe(&self.claim);
        }
    }
}
