//! The last minutes of the store's activity, for the page's charts:
//! requests served per second, memory used and entries, sampled once a
//! second by a task of the gateway and kept for [`KEPT`] samples (ten
//! minutes).
//!
//! The gateway samples whether or not a page is open, so a page opened
//! now draws the minutes before it at once (`GET /stats`), then asks for
//! what is new (`GET /stats?since=T`). While the store is not reachable
//! nothing is recorded: the chart shows a gap, not zeros.
//!
//! "Requests served" are those the server's workers answered (writes,
//! counters, batches, and reads a direct read could not serve). Direct
//! reads never reach the server and are counted nowhere: counting them
//! would mean every reader writing one shared cache line, which is what
//! direct reads exist to avoid.

use crate::store::Connector;
use kvs_client::StoreStatus;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

/// How often the gateway samples.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Samples kept: ten minutes at one a second.
pub const KEPT: usize = 600;

/// One sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Sample {
    /// When it was taken, unix milliseconds.
    pub t_ms: u64,
    /// Requests the server answered per second since the sample before;
    /// `null` for the first sample after a gap (or a server restart,
    /// whose counters start again).
    pub ops_per_s: Option<f64>,
    /// Bytes of memory the store uses.
    pub memory_used: u64,
    /// The store's memory limit, bytes.
    pub max_memory: u64,
    /// Entries in the store.
    pub entries: u64,
}

/// The answer of `/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatsBody {
    /// Milliseconds between samples.
    pub interval_ms: u64,
    /// The samples, oldest first.
    pub samples: Vec<Sample>,
}

/// The query of `/stats`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// Only samples taken after this time (unix milliseconds): the
    /// `t_ms` of the newest sample the caller has.
    pub since: Option<u64>,
}

/// What one sample reads of the server's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The server's pid (a new one restarts the counters).
    pub server_pid: u64,
    /// Requests answered, all kinds (dropped ones are not), since the
    /// server started.
    pub served: u64,
    /// Bytes of memory the store uses.
    pub memory_used: u64,
    /// The store's memory limit.
    pub max_memory: u64,
    /// Entries.
    pub entries: u64,
}

impl From<&StoreStatus> for Reading {
    fn from(st: &StoreStatus) -> Self {
        let o = &st.ops;
        Self {
            server_pid: st.server_pid,
            served: [
                o.get, o.set, o.post, o.del, o.incr, o.expire, o.batch, o.other,
            ]
            .into_iter()
            .fold(0u64, u64::saturating_add),
            memory_used: st.memory_used,
            max_memory: st.max_memory,
            entries: st.entries,
        }
    }
}

/// What the last sample counted, to make the next one's rate.
#[derive(Debug, Clone, Copy)]
struct Last {
    t_ms: u64,
    served: u64,
    server_pid: u64,
}

/// The samples, shared by the sampling task and the `/stats` handler.
#[derive(Debug, Default)]
pub struct History {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    samples: VecDeque<Sample>,
    last: Option<Last>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `status` as read at `t_ms`.
    pub fn record(&self, t_ms: u64, status: Reading) {
        let served = status.served;
        let mut inner = self.lock();
        let ops_per_s = inner.last.and_then(|last| {
            let same_server = last.server_pid == status.server_pid;
            let elapsed_ms = t_ms.checked_sub(last.t_ms).filter(|&d| d > 0)?;
            // More than a few intervals apart: a gap, not a rate.
            let contiguous = elapsed_ms <= 3 * INTERVAL.as_millis() as u64;
            let delta = served.checked_sub(last.served)?;
            (same_server && contiguous).then(|| delta as f64 * 1000.0 / elapsed_ms as f64)
        });
        inner.last = Some(Last {
            t_ms,
            served,
            server_pid: status.server_pid,
        });
        if inner.samples.len() == KEPT {
            inner.samples.pop_front();
        }
        inner.samples.push_back(Sample {
            t_ms,
            ops_per_s,
            memory_used: status.memory_used,
            max_memory: status.max_memory,
            entries: status.entries,
        });
    }

    /// Notes that the store could not be read: the next sample starts a
    /// new line.
    pub fn gap(&self) {
        self.lock().last = None;
    }

    /// The samples taken after `since` (all of them for `None`).
    pub fn since(&self, since: Option<u64>) -> Vec<Sample> {
        let inner = self.lock();
        let after = since.unwrap_or(0);
        // Newest last: walk back only over what is new.
        let new = inner
            .samples
            .iter()
            .rev()
            .take_while(|s| since.is_none() || s.t_ms > after)
            .count();
        inner
            .samples
            .iter()
            .skip(inner.samples.len() - new)
            .copied()
            .collect()
    }
}

/// Samples the store every [`INTERVAL`] into `history` until the task is
/// dropped (aborted with the gateway). A status read blocks (one request
/// to the server), so it runs on the blocking pool; one at a time.
pub async fn sample(connector: Arc<Connector>, history: Arc<History>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let connector = Arc::clone(&connector);
        let status = tokio::task::spawn_blocking(move || {
            let store = connector.store()?;
            let result = store.status();
            if let Err(kvs_client::ClientError::ServerGone | kvs_client::ClientError::SlotLost) =
                &result
            {
                connector.forget(&store);
            }
            result
        })
        .await;
        match status {
            Ok(Ok(st)) => history.record(crate::json::unix_now_ms(), Reading::from(&st)),
            _ => history.gap(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(server_pid: u64, served: u64, memory_used: u64) -> Reading {
        Reading {
            server_pid,
            served,
            memory_used,
            max_memory: 100,
            entries: 1,
        }
    }

    #[test]
    fn rates_come_from_consecutive_samples_of_one_server() {
        let h = History::new();
        h.record(1_000, status(7, 100, 10));
        h.record(2_000, status(7, 600, 20));
        h.record(2_500, status(7, 700, 30));
        // A restarted server: counters start again, no rate.
        h.record(3_500, status(8, 5, 30));
        h.gap();
        h.record(4_500, status(8, 50, 30));
        let rates: Vec<Option<f64>> = h.since(None).iter().map(|s| s.ops_per_s).collect();
        assert_eq!(rates, [None, Some(500.0), Some(200.0), None, None]);
        let new: Vec<u64> = h.since(Some(2_500)).iter().map(|s| s.t_ms).collect();
        assert_eq!(new, [3_500, 4_500]);
        assert!(h.since(Some(4_500)).is_empty());
    }

    #[test]
    fn it_keeps_ten_minutes() {
        let h = History::new();
        for i in 0..(KEPT as u64 + 50) {
            h.record(1_000 * (i + 1), status(1, i, 0));
        }
        let all = h.since(None);
        assert_eq!(all.len(), KEPT);
        assert_eq!(all[0].t_ms, 51_000);
        assert!(all[1..].iter().all(|s| s.ops_per_s == Some(1.0)));
    }
}
