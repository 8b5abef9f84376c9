//! Live changes: one blocking thread per gateway (the pump) owns a
//! subscription to every key and fans its events out to the `/events`
//! streams through a `tokio::sync::broadcast` channel.
//!
//! The pump subscribes only while someone listens, reconnects with the
//! [`Connector`] when the server goes away, and tells the pages to reload
//! the table (`resync`) whenever changes may have been lost: the
//! subscription's queue overflowed, a slow stream lagged behind the channel,
//! or the server was restarted.
//!
//! Keys and values travel as everywhere in the API (see [`crate::json`]):
//! text when UTF-8, base64 otherwise. A `change` carries the value only up
//! to [`EVENT_VALUE_MAX`] bytes, and always its size (`value_bytes`): the
//! channel keeps events until the slowest stream has read them, and values
//! may be megabytes.
//!
//! ```no_run
//! use kvs_http::events::Pump;
//! use kvs_http::store::Connector;
//! use std::sync::Arc;
//!
//! let (tx, mut rx) = tokio::sync::broadcast::channel(1024);
//! let pump = Pump::spawn(Arc::new(Connector::new("kvs")), tx);
//! let state = pump.state(); // Idle, Subscribed or Unavailable
//! // ... rx.recv().await in a stream ...
//! pump.stop();
//! ```

use crate::json;
use crate::store::Connector;
use axum::response::sse::{Event, KeepAlive, Sse};
use kvs_client::{BytesClient, ChangeEvent, Subscription};
use serde::Serialize;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

/// The largest value a `change` event carries; a larger one is announced
/// by its size only (the page reads it with `/get`). Events wait in the
/// fan-out channel until the slowest stream has taken them, so this bounds
/// the memory that a lagging stream can hold (a few thousand events).
pub const EVENT_VALUE_MAX: usize = 16 << 10;

/// One event for the `/events` streams. Keys and values follow the JSON
/// rules of [`crate::json`]: text when UTF-8, else base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum GatewayEvent {
    /// A key was set or inserted.
    Change {
        /// The key, when it is UTF-8.
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// The key in base64, when it is not UTF-8.
        #[serde(skip_serializing_if = "Option::is_none")]
        key_base64: Option<String>,
        /// The new value, when it is UTF-8 and at most
        /// [`EVENT_VALUE_MAX`] bytes.
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<String>,
        /// The new value in base64, when it is not UTF-8 and at most
        /// [`EVENT_VALUE_MAX`] bytes.
        #[serde(skip_serializing_if = "Option::is_none")]
        value_base64: Option<String>,
        /// Bytes of the new value (carried or not).
        value_bytes: u64,
        /// The entry's version.
        version: u64,
        /// When the change was made, unix milliseconds.
        modified_ms: u64,
        /// When the entry expires, unix milliseconds; absent when it never
        /// does (or when it changed again before the pump read it: the
        /// next `change` says).
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_ms: Option<u64>,
    },
    /// A key was deleted.
    Delete {
        /// The key, when it is UTF-8.
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// The key in base64, when it is not UTF-8.
        #[serde(skip_serializing_if = "Option::is_none")]
        key_base64: Option<String>,
        /// The store's version at the deletion.
        version: u64,
    },
    /// A key's deadline passed and the server removed it.
    Expire {
        /// The key, when it is UTF-8.
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// The key in base64, when it is not UTF-8.
        #[serde(skip_serializing_if = "Option::is_none")]
        key_base64: Option<String>,
        /// The store's version at the removal.
        version: u64,
    },
    /// The server removed the key to make room (its eviction policy).
    Evict {
        /// The key, when it is UTF-8.
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// The key in base64, when it is not UTF-8.
        #[serde(skip_serializing_if = "Option::is_none")]
        key_base64: Option<String>,
        /// The store's version at the removal.
        version: u64,
    },
    /// Changes may have been lost: reload everything from `/status`.
    Resync {
        /// Why, for a person.
        reason: String,
    },
    /// The store is not reachable (until the next `resync`).
    Unavailable {
        /// Why.
        error: String,
    },
    /// The gateway is shutting down: streams end (not sent to clients).
    Shutdown,
}

impl From<ChangeEvent<Vec<u8>, Vec<u8>>> for GatewayEvent {
    fn from(change: ChangeEvent<Vec<u8>, Vec<u8>>) -> Self {
        match change {
            ChangeEvent::Changed {
                key,
                value,
                version,
                modified_ns,
            } => {
                let (key, key_base64) = json::to_fields(key);
                let value_bytes = value.len() as u64;
                let (value, value_base64) = if value.len() <= EVENT_VALUE_MAX {
                    json::to_fields(value)
                } else {
                    (None, None)
                };
                GatewayEvent::Change {
                    key,
                    key_base64,
                    value,
                    value_base64,
                    value_bytes,
                    version,
                    modified_ms: modified_ns / 1_000_000,
                    expires_ms: None,
                }
            }
            ChangeEvent::Deleted { key, version } => {
                let (key, key_base64) = json::to_fields(key);
                GatewayEvent::Delete {
                    key,
                    key_base64,
                    version,
                }
            }
            ChangeEvent::Expired { key, version } => {
                let (key, key_base64) = json::to_fields(key);
                GatewayEvent::Expire {
                    key,
                    key_base64,
                    version,
                }
            }
            ChangeEvent::Evicted { key, version } => {
                let (key, key_base64) = json::to_fields(key);
                GatewayEvent::Evict {
                    key,
                    key_base64,
                    version,
                }
            }
            ChangeEvent::Missed => GatewayEvent::Resync {
                reason: "the subscription missed changes".into(),
            },
        }
    }
}

impl GatewayEvent {
    fn name(&self) -> &'static str {
        match self {
            GatewayEvent::Change { .. } => "change",
            GatewayEvent::Delete { .. } => "delete",
            GatewayEvent::Expire { .. } => "expire",
            GatewayEvent::Evict { .. } => "evict",
            GatewayEvent::Resync { .. } => "resync",
            GatewayEvent::Unavailable { .. } => "unavailable",
            GatewayEvent::Shutdown => "shutdown",
        }
    }

    fn to_sse(&self) -> Event {
        Event::default()
            .event(self.name())
            .data(serde_json::to_string(self).unwrap_or_else(|_| "{}".into()))
    }
}

/// What the pump is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PumpState {
    /// Nobody listens, so it holds no subscription (or it is starting one).
    Idle,
    /// Subscribed: every change from now on reaches the streams.
    Subscribed,
    /// It cannot subscribe; why.
    Unavailable(String),
}

/// How long a new stream waits for the pump to subscribe before it reports
/// what it has.
const READY_WAIT: Duration = Duration::from_secs(3);

/// The `/events` stream of one receiver. It starts, once the pump has
/// subscribed, with `ready` (every change after it is delivered), or with
/// `unavailable` when the pump cannot subscribe (a `resync` follows when it
/// can); then every event until the gateway shuts down. A receiver that
/// lags behind the channel gets a `resync` instead of the events it missed.
///
/// Take `rx` before calling, so that nothing between the subscription and
/// the first event is lost.
pub async fn sse(
    rx: broadcast::Receiver<GatewayEvent>,
    mut pump: watch::Receiver<PumpState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let state = tokio::time::timeout(READY_WAIT, pump.wait_for(|s| *s != PumpState::Idle))
        .await
        .ok()
        .and_then(Result::ok)
        .map(|s| s.clone());
    let first = match state {
        Some(PumpState::Subscribed) => Event::default().event("ready").data("{}"),
        Some(PumpState::Unavailable(error)) => GatewayEvent::Unavailable { error }.to_sse(),
        Some(PumpState::Idle) | None => GatewayEvent::Unavailable {
            error: "live updates are not running yet".into(),
        }
        .to_sse(),
    };
    let ready = tokio_stream::once(Ok(first));
    let events = BroadcastStream::new(rx)
        .map(|item| match item {
            Ok(event) => event,
            Err(BroadcastStreamRecvError::Lagged(n)) => GatewayEvent::Resync {
                reason: format!("this stream fell {n} events behind"),
            },
        })
        .take_while(|event| *event != GatewayEvent::Shutdown)
        .map(|event| Ok(event.to_sse()));
    Sse::new(ready.chain(events)).keep_alive(KeepAlive::default())
}

/// How long the pump waits for one event before it checks for listeners
/// and for a stop.
const POLL: Duration = Duration::from_millis(200);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The pump thread; stops (and ends every stream) on [`stop`](Self::stop)
/// or drop.
#[derive(Debug)]
pub struct Pump {
    stop: Arc<AtomicBool>,
    tx: broadcast::Sender<GatewayEvent>,
    state: watch::Receiver<PumpState>,
    thread: Option<JoinHandle<()>>,
}

impl Pump {
    /// Starts the pump for `connector`, sending to `tx`.
    ///
    /// # Panics
    ///
    /// If the thread cannot be spawned.
    pub fn spawn(connector: Arc<Connector>, tx: broadcast::Sender<GatewayEvent>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (state_tx, state) = watch::channel(PumpState::Idle);
        let thread = std::thread::Builder::new()
            .name("kvs-http-events".into())
            .spawn({
                let (stop, tx) = (Arc::clone(&stop), tx.clone());
                move || run(&connector, &tx, &state_tx, &stop)
            })
            .expect("spawning the events thread");
        Self {
            stop,
            tx,
            state,
            thread: Some(thread),
        }
    }

    /// What the pump is doing, for the streams to wait on.
    pub fn state(&self) -> watch::Receiver<PumpState> {
        self.state.clone()
    }

    /// Stops the thread, waits for it, and ends every `/events` stream.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = self.tx.send(GatewayEvent::Shutdown);
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn sleep_unless_stopped(stop: &AtomicBool, total: Duration) {
    let step = Duration::from_millis(50);
    let mut slept = Duration::ZERO;
    while slept < total && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(step);
        slept += step;
    }
}

/// What the pump tells the streams about the store's reachability: one
/// `unavailable` when an outage starts, one `resync` when it ends, however
/// many attempts fail in between (and one log line per outage, not per
/// attempt).
#[derive(Debug, Default)]
struct Outage {
    /// Since when the store is unreachable, and why (as first reported).
    since: Option<String>,
    /// Failed attempts in this outage.
    attempts: u64,
}

impl Outage {
    fn begin(
        &mut self,
        error: String,
        tx: &broadcast::Sender<GatewayEvent>,
        state: &watch::Sender<PumpState>,
    ) {
        self.attempts += 1;
        if self.since.is_none() {
            tracing::warn!("live events unavailable: {error}");
            let _ = tx.send(GatewayEvent::Unavailable {
                error: error.clone(),
            });
            self.since = Some(error.clone());
        } else {
            tracing::debug!(attempts = self.attempts, "still unavailable: {error}");
        }
        state.send_replace(PumpState::Unavailable(error));
    }

    /// The store is back; whether an outage ended (then streams resync).
    fn end(&mut self) -> bool {
        self.attempts = 0;
        if self.since.take().is_some() {
            tracing::info!("live events are back");
            true
        } else {
            false
        }
    }
}

/// The pump's subscription to every key.
type Feed = Subscription<Vec<u8>, Vec<u8>>;

/// The event of `change`, a `change` with the entry's deadline: events
/// carry none, so it is read from the store (directly: no request) and
/// kept only if the entry is still at the event's version.
fn with_deadline(store: &BytesClient, change: ChangeEvent<Vec<u8>, Vec<u8>>) -> GatewayEvent {
    let deadline_ns = match &change {
        ChangeEvent::Changed { key, version, .. } => store
            .get_entry(key)
            .ok()
            .flatten()
            .filter(|e| e.version == *version)
            .map_or(0, |e| e.deadline_ns),
        _ => 0,
    };
    let mut event = GatewayEvent::from(change);
    if let GatewayEvent::Change { expires_ms, .. } = &mut event {
        *expires_ms = json::expires_ms(deadline_ns);
    }
    event
}

fn run(
    connector: &Connector,
    tx: &broadcast::Sender<GatewayEvent>,
    state: &watch::Sender<PumpState>,
    stop: &AtomicBool,
) {
    let mut feed: Option<(Arc<BytesClient>, Feed)> = None;
    let mut outage = Outage::default();
    // Grows with every failure (subscribing, or a subscription that ends
    // at once) up to MAX_BACKOFF; back to POLL once events flow.
    let mut backoff = POLL;
    // Whether a subscription existed before: a new one after that means
    // changes may have been missed.
    let mut subscribed_before = false;
    while !stop.load(Ordering::Relaxed) {
        if tx.receiver_count() == 0 {
            // Nobody listens: hold no subscription on the server.
            feed = None;
            subscribed_before = false;
            outage = Outage::default();
            backoff = POLL;
            state.send_replace(PumpState::Idle);
            std::thread::sleep(POLL);
            continue;
        }
        let Some((store, sub)) = feed.as_mut() else {
            match connector
                .store()
                .and_then(|s| Ok((Arc::clone(&s), s.subscribe(&[])?)))
            {
                Ok(f) => {
                    tracing::debug!("subscribed to every key");
                    feed = Some(f);
                    state.send_replace(PumpState::Subscribed);
                    if outage.end() || subscribed_before {
                        let _ = tx.send(GatewayEvent::Resync {
                            reason: "the store is back".into(),
                        });
                    }
                    subscribed_before = true;
                }
                Err(e) => {
                    outage.begin(e.to_string(), tx, state);
                    sleep_unless_stopped(stop, backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            continue;
        };
        match sub.next_timeout(POLL) {
            Ok(Some(change)) => {
                backoff = POLL;
                let _ = tx.send(with_deadline(store, change));
            }
            Ok(None) => {
                backoff = POLL;
                // Quiet: check that the server is still the one subscribed
                // to (a restarted server does not know our subscription).
                let current = connector.store().ok();
                if !current.is_some_and(|c| Arc::ptr_eq(&c, store)) {
                    feed = None;
                }
            }
            Err(e) => {
                connector.forget(store);
                feed = None;
                outage.begin(format!("the store is not reachable: {e}"), tx, state);
                // Never straight back: a dead server's leftovers may
                // "connect" and fail again at once.
                sleep_unless_stopped(stop, backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_text_base64_or_only_the_size() {
        let change = |key: &[u8], value: Vec<u8>| {
            serde_json::to_value(GatewayEvent::from(ChangeEvent::Changed {
                key: key.to_vec(),
                value,
                version: 7,
                modified_ns: 5_000_000,
            }))
            .unwrap()
        };
        assert_eq!(
            change(b"k", b"v".to_vec()),
            serde_json::json!({"type": "change", "key": "k", "value": "v", "value_bytes": 1, "version": 7, "modified_ms": 5})
        );
        assert_eq!(
            change(&[0xff], vec![0, 0xfe]),
            serde_json::json!({"type": "change", "key_base64": "/w==", "value_base64": "AP4=", "value_bytes": 2, "version": 7, "modified_ms": 5})
        );
        let big = change(b"k", vec![b'x'; EVENT_VALUE_MAX + 1]);
        assert_eq!(
            big,
            serde_json::json!({"type": "change", "key": "k", "value_bytes": EVENT_VALUE_MAX + 1, "version": 7, "modified_ms": 5})
        );
        assert!(change(b"k", vec![b'x'; EVENT_VALUE_MAX])["value"].is_string());
        let deleted = GatewayEvent::from(ChangeEvent::<Vec<u8>, Vec<u8>>::Deleted {
            key: vec![0x80],
            version: 9,
        });
        assert_eq!(
            serde_json::to_value(deleted).unwrap(),
            serde_json::json!({"type": "delete", "key_base64": "gA==", "version": 9})
        );
        assert_eq!(
            GatewayEvent::from(ChangeEvent::<Vec<u8>, Vec<u8>>::Missed).name(),
            "resync"
        );
    }
}
