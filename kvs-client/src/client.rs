//! `KVSClient<K, V>`: typed access to a kvs server from any process.
//!
//! One call is: claim a response slot, push the request (marking the slot
//! pending first), wake a worker if one sleeps, then wait on the slot:
//! spin briefly, then sleep on its futex, checking the deadline and the
//! server's liveness lock between sleeps. Nothing here takes a lock, so a
//! client is `Send + Sync` and any number of threads may share one.

use crate::error::{ClientError, Result};
use kvs_core::protocol::{OpCode, Response, StatusCode};
use kvs_core::region::{ConnectOptions, Region};
use kvs_core::response_table::{Claim, WaitOutcome};
use kvs_core::ring::PushError;
use kvs_core::wait::{Backoff, FutexParker, SpinPolicy};
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How a client connects, waits and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Timeout of the calls without a `_timeout` suffix.
    pub timeout: Duration,
    /// How long `connect` waits for a region that is still being initialised.
    pub connect_wait: Duration,
    /// Spinning before sleeping on a response.
    pub spin: SpinPolicy,
    /// How long a push retries a full ring before `RingFull`.
    pub ring_full_backoff: Duration,
    /// The directory of the server's socket (`None`: the default
    /// directories, see `kvs_core::region::endpoint`).
    pub socket_dir: Option<std::path::PathBuf>,
}

impl ClientOptions {
    /// How the region layer should connect with these options.
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            wait: self.connect_wait,
            socket_dir: self.socket_dir.clone(),
        }
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            connect_wait: Duration::from_secs(2),
            spin: SpinPolicy::CLIENT,
            ring_full_backoff: Duration::from_millis(100),
            socket_dir: None,
        }
    }
}

/// An entry as GET returns it with its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versioned<V> {
    /// The value.
    pub value: V,
    /// The entry's version (the global version of its last mutation).
    pub version: u64,
    /// Last modification, unix nanoseconds.
    pub modified_ns: u64,
}

/// One operation for [`KVSClient::batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<K, V> {
    /// GET.
    Get(K),
    /// SET (upsert).
    Set(K, V),
    /// POST (insert only).
    Post(K, V),
    /// DEL.
    Del(K),
}

/// The result of one [`Op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<V> {
    /// GET: the value, if present.
    Value(Option<V>),
    /// SET: done.
    Done,
    /// POST: whether it inserted (false: the key existed).
    Inserted(bool),
    /// DEL: whether it removed (false: the key was absent).
    Deleted(bool),
}

/// A connection to the server of one region.
pub struct KVSClient<K, V> {
    region: Region<K, V>,
    registration: u32,
    /// Our pid, recorded in claimed slots (cached: `getpid` is a syscall).
    pid: u32,
    /// The fork generation we connected in (see the `fork` module).
    fork_generation: u64,
    /// Set once a call found the server gone: later calls fail at once
    /// instead of each waiting for the liveness check.
    gone: std::sync::atomic::AtomicBool,
    /// Where our next slot claim starts probing: our own hint, so clients in
    /// different processes do not all bump one shared cursor line. Relaxed:
    /// a racy hint only changes where probing starts.
    claim_hint: std::sync::atomic::AtomicU64,
    options: ClientOptions,
}

impl<K, V> fmt::Debug for KVSClient<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KVSClient")
            .field("region", &self.region.name())
            .field("registration", &self.registration)
            .finish()
    }
}

fn check_status(op: OpCode, resp: &Response<impl Copy>) -> Result<StatusCode> {
    match resp.status_code() {
        Ok(StatusCode::StoreFull) => Err(ClientError::StoreFull),
        Ok(StatusCode::Malformed) => Err(ClientError::Protocol(format!(
            "the server refused the {} request as malformed",
            op.name()
        ))),
        Ok(StatusCode::Unsupported) => Err(ClientError::Protocol(format!(
            "the server does not support {}",
            op.name()
        ))),
        Ok(StatusCode::Failed) => Err(ClientError::Protocol(format!(
            "the server failed to carry out {}",
            op.name()
        ))),
        Ok(s) => Ok(s),
        Err(e) => Err(ClientError::Protocol(e.to_string())),
    }
}

pub(crate) fn decode_get<V: Copy>(r: Response<V>) -> Result<Option<V>> {
    Ok(decode_get_entry(r)?.map(|e| e.value))
}

pub(crate) fn decode_get_entry<V: Copy>(r: Response<V>) -> Result<Option<Versioned<V>>> {
    match check_status(OpCode::Get, &r)? {
        StatusCode::Ok => Ok(Some(Versioned {
            value: r.value,
            version: r.version,
            modified_ns: r.modified_ns,
        })),
        StatusCode::NotFound => Ok(None),
        s => Err(ClientError::Protocol(format!("unexpected {s:?} for get"))),
    }
}

pub(crate) fn decode_set<V: Copy>(r: Response<V>) -> Result<()> {
    match check_status(OpCode::Set, &r)? {
        StatusCode::Ok => Ok(()),
        s => Err(ClientError::Protocol(format!("unexpected {s:?} for set"))),
    }
}

pub(crate) fn decode_post<V: Copy>(r: Response<V>) -> Result<bool> {
    match check_status(OpCode::Post, &r)? {
        StatusCode::Ok => Ok(true),
        StatusCode::Exists => Ok(false),
        s => Err(ClientError::Protocol(format!("unexpected {s:?} for post"))),
    }
}

pub(crate) fn decode_del<V: Copy>(r: Response<V>) -> Result<bool> {
    match check_status(OpCode::Del, &r)? {
        StatusCode::Ok => Ok(true),
        StatusCode::NotFound => Ok(false),
        s => Err(ClientError::Protocol(format!("unexpected {s:?} for del"))),
    }
}

impl<K, V> KVSClient<K, V>
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
    /// Connects to the server of region `name` with default options.
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] when there is no server, the region holds
    /// other types or another layout version, or access is denied.
    pub fn connect(name: &str) -> Result<Self> {
        Self::connect_with(name, ClientOptions::default())
    }

    /// Connects with explicit options.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::connect`].
    pub fn connect_with(name: &str, options: ClientOptions) -> Result<Self> {
        let region = Region::<K, V>::open_with(name, &options.connect_options())?;
        let Some((registration, _)) = region.registration() else {
            return Err(ClientError::Protocol(
                "the server answered without a registration".into(),
            ));
        };
        Ok(Self {
            region,
            registration,
            pid: std::process::id(),
            fork_generation: crate::fork::generation_at_connect(),
            gone: std::sync::atomic::AtomicBool::new(false),
            // Spread clients over the table by registration.
            claim_hint: std::sync::atomic::AtomicU64::new(
                u64::from(registration).wrapping_mul(0x9e37_79b9),
            ),
            options,
        })
    }

    /// The region this client talks to.
    pub fn region(&self) -> &Region<K, V> {
        &self.region
    }

    /// This client's registration index (the owner of its slots).
    pub(crate) fn registration(&self) -> u32 {
        self.registration
    }

    /// The options in force.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Changes the default timeout.
    pub fn set_default_timeout(&mut self, timeout: Duration) {
        self.options.timeout = timeout;
    }

    /// Whether the server is alive and serving (one `poll` of the
    /// connection).
    pub fn server_alive(&self) -> bool {
        !self.gone.load(Ordering::Relaxed) && self.region.server_alive()
    }

    /// Connects again to whatever server now serves this client's region
    /// name (after `ServerGone`: the server restarted, say), with the same
    /// options. Tickets and subscriptions of the old connection must be
    /// gone (they borrow the client).
    ///
    /// # Errors
    ///
    /// As [`KVSClient::connect`]; the client is unchanged then.
    pub fn reconnect(&mut self) -> Result<()> {
        let name = self.region.name().to_string();
        *self = Self::connect_with(&name, self.options.clone())?;
        Ok(())
    }

    /// Refuses calls from a forked child (see the `fork` module).
    #[inline]
    pub(crate) fn check_process(&self) -> Result<()> {
        if crate::fork::forked_since(self.fork_generation) {
            return Err(ClientError::Forked { pid: self.pid });
        }
        Ok(())
    }

    /// Whether this process is a fork of the one that connected (then
    /// nothing may touch the region on this client's behalf).
    pub(crate) fn is_forked_copy(&self) -> bool {
        crate::fork::forked_since(self.fork_generation)
    }

    // ---- synchronous ----

    /// The value of `key`, if present.
    ///
    /// # Errors
    ///
    /// [`ClientError`]: timeout, ring full, no free slot, server gone.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        self.get_timeout(key, self.options.timeout)
    }

    /// [`KVSClient::get`] with an explicit timeout.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::get`].
    pub fn get_timeout(&self, key: &K, timeout: Duration) -> Result<Option<V>> {
        decode_get(self.call(OpCode::Get, key, None, timeout)?)
    }

    /// The entry of `key` with its version and modification time.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::get`].
    pub fn get_entry(&self, key: &K) -> Result<Option<Versioned<V>>> {
        decode_get_entry(self.call(OpCode::Get, key, None, self.options.timeout)?)
    }

    /// Inserts or replaces `key`.
    ///
    /// # Errors
    ///
    /// [`ClientError::StoreFull`] for a new key beyond the entry limit, and
    /// the errors of [`KVSClient::get`].
    pub fn set(&self, key: &K, value: &V) -> Result<()> {
        self.set_timeout(key, value, self.options.timeout)
    }

    /// [`KVSClient::set`] with an explicit timeout.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::set`].
    pub fn set_timeout(&self, key: &K, value: &V, timeout: Duration) -> Result<()> {
        decode_set(self.call(OpCode::Set, key, Some(value), timeout)?)
    }

    /// Inserts `key` only if absent; `false` when it exists.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::set`].
    pub fn post(&self, key: &K, value: &V) -> Result<bool> {
        self.post_timeout(key, value, self.options.timeout)
    }

    /// [`KVSClient::post`] with an explicit timeout.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::set`].
    pub fn post_timeout(&self, key: &K, value: &V, timeout: Duration) -> Result<bool> {
        decode_post(self.call(OpCode::Post, key, Some(value), timeout)?)
    }

    /// Removes `key`; `false` when it was absent.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::get`].
    pub fn del(&self, key: &K) -> Result<bool> {
        self.del_timeout(key, self.options.timeout)
    }

    /// [`KVSClient::del`] with an explicit timeout.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::get`].
    pub fn del_timeout(&self, key: &K, timeout: Duration) -> Result<bool> {
        decode_del(self.call(OpCode::Del, key, None, timeout)?)
    }

    /// Sends one request and waits for its answer.
    pub(crate) fn call(
        &self,
        op: OpCode,
        key: &K,
        value: Option<&V>,
        timeout: Duration,
    ) -> Result<Response<V>> {
        let deadline = Deadline::after(timeout);
        let claim = self.submit(op, key, value, &deadline)?;
        self.wait_claim(op, &claim, &deadline)
    }

    /// Submits every op (keeping up to `window` in flight) and collects every
    /// answer, in order. Each op gets its own result.
    pub fn batch(&self, ops: &[Op<K, V>], timeout: Duration) -> Vec<Result<Reply<V>>> {
        let window = 256.min(self.region.info().slot_count as usize / 2).max(1);
        let deadline = Deadline::after(timeout);
        let mut results: Vec<Option<Result<Reply<V>>>> = (0..ops.len()).map(|_| None).collect();
        let mut in_flight: std::collections::VecDeque<(usize, OpCode, Claim)> =
            std::collections::VecDeque::new();
        let mut next = 0;
        while next < ops.len() || !in_flight.is_empty() {
            while next < ops.len() && in_flight.len() < window {
                let (op, key, value) = match &ops[next] {
                    Op::Get(k) => (OpCode::Get, k, None),
                    Op::Set(k, v) => (OpCode::Set, k, Some(v)),
                    Op::Post(k, v) => (OpCode::Post, k, Some(v)),
                    Op::Del(k) => (OpCode::Del, k, None),
                };
                match self.submit(op, key, value, &deadline) {
                    Ok(claim) => in_flight.push_back((next, op, claim)),
                    Err(ClientError::NoFreeSlot) if !in_flight.is_empty() => break,
                    Err(e) => results[next] = Some(Err(e)),
                }
                next += 1;
            }
            if let Some((i, op, claim)) = in_flight.pop_front() {
                let r = self.wait_claim(op, &claim, &deadline).and_then(|resp| {
                    Ok(match op {
                        OpCode::Get => Reply::Value(decode_get(resp)?),
                        OpCode::Set => decode_set(resp).map(|()| Reply::Done)?,
                        OpCode::Post => Reply::Inserted(decode_post(resp)?),
                        _ => Reply::Deleted(decode_del(resp)?),
                    })
                });
                results[i] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(ClientError::Protocol("op not submitted".into()))))
            .collect()
    }

    // ---- the protocol ----

    /// Whether new requests must not be submitted: the server is gone
    /// (seen before), or draining or closed.
    fn server_closed(&self) -> bool {
        self.gone.load(Ordering::Relaxed) || self.region.refuses_requests()
    }

    /// Claims a slot, marks it pending, pushes the request, wakes a worker.
    pub(crate) fn submit(
        &self,
        op: OpCode,
        key: &K,
        value: Option<&V>,
        deadline: &Deadline,
    ) -> Result<Claim> {
        self.submit_with(op, key, value, 0, deadline, |_| {})
    }

    /// [`KVSClient::submit`] with an op argument, calling `prepare` with the
    /// claimed slot before the request becomes visible to the server.
    pub(crate) fn submit_with(
        &self,
        op: OpCode,
        key: &K,
        value: Option<&V>,
        arg: u32,
        deadline: &Deadline,
        prepare: impl FnOnce(&Claim),
    ) -> Result<Claim> {
        self.check_process()?;
        if self.server_closed() {
            return Err(ClientError::ServerGone);
        }
        let slots = self.region.slots();
        let claim = self.claim_slot(deadline)?;
        prepare(&claim);
        slots.write_request(&claim, op, arg, key, value);
        if !slots.mark_pending(&claim) {
            // Someone moved our claimed slot on (a scribbler): not ours now.
            return Err(ClientError::SlotLost);
        }
        let ring = self.region.ring();
        // Computed on the first failure only: the fast path reads no clock.
        let mut give_up = None;
        let mut backoff = Backoff::new();
        loop {
            match ring.push(claim.index) {
                Ok(()) => {
                    self.region.wake_a_worker();
                    return Ok(claim);
                }
                Err(e) => {
                    let give_up = *give_up.get_or_insert_with(|| {
                        deadline
                            .instant()
                            .min(deadline_after(self.options.ring_full_backoff))
                    });
                    let stalled = e == PushError::Stalled;
                    // A word someone scribbled on blocks every producer at
                    // that cell: repair what no push or pop could have left
                    // (safe for anyone, see `Ring::repair`) and go again.
                    if stalled && ring.repair() != Default::default() {
                        continue;
                    }
                    if Instant::now() >= give_up || self.server_closed() {
                        slots.release(&claim);
                        return Err(if self.server_closed() {
                            ClientError::ServerGone
                        } else if stalled {
                            ClientError::Protocol("the request ring looks corrupted".into())
                        } else {
                            ClientError::RingFull
                        });
                    }
                    // Make sure someone is draining, then back off.
                    self.region.wake_a_worker();
                    backoff.snooze();
                }
            }
        }
    }

    fn try_claim(&self) -> Option<Claim> {
        let start = self.claim_hint.load(Ordering::Relaxed);
        let (claim, next) = self
            .region
            .slots()
            .claim_from(self.registration, self.pid, start)?;
        self.claim_hint.store(next, Ordering::Relaxed);
        Some(claim)
    }

    fn claim_slot(&self, deadline: &Deadline) -> Result<Claim> {
        if let Some(c) = self.try_claim() {
            return Ok(c);
        }
        // Short of slots: ask the housekeeper to reclaim now, retry briefly.
        self.region.poke_housekeeper();
        let give_up = deadline
            .instant()
            .min(Instant::now() + Duration::from_millis(200));
        let mut backoff = Backoff::new();
        loop {
            backoff.snooze();
            if let Some(c) = self.try_claim() {
                return Ok(c);
            }
            if Instant::now() >= give_up {
                return Err(ClientError::NoFreeSlot);
            }
        }
    }

    pub(crate) fn wait_claim(
        &self,
        op: OpCode,
        claim: &Claim,
        deadline: &Deadline,
    ) -> Result<Response<V>> {
        let outcome = self.region.slots().wait(
            claim,
            op,
            self.options.spin,
            &FutexParker,
            || Some(deadline.instant()),
            || self.region.server_alive(),
        );
        match outcome {
            WaitOutcome::Ready(r) => Ok(r),
            WaitOutcome::TimedOut => Err(ClientError::timeout(op, deadline.timeout())),
            WaitOutcome::ServerGone => {
                // Remember it only if the connection says so: a scribbled
                // header state must not end this client for good.
                if self.region.connection_ended() {
                    self.gone.store(true, Ordering::Relaxed);
                }
                Err(ClientError::ServerGone)
            }
            WaitOutcome::Lost => Err(ClientError::SlotLost),
        }
    }
}

/// `now + timeout`, saturating at a far future instead of overflowing (a
/// caller may pass `Duration::MAX`: "wait as long as it takes").
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// A deadline computed on first use: a call answered on the fast path reads
/// no clock. The timeout therefore counts from the first moment the call
/// has to wait (a claim retry, a full ring, or the end of the spinning),
/// at most some tens of microseconds after it started.
pub(crate) struct Deadline {
    timeout: Duration,
    at: std::cell::Cell<Option<Instant>>,
}

impl Deadline {
    pub(crate) fn after(timeout: Duration) -> Self {
        Self {
            timeout,
            at: std::cell::Cell::new(None),
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn instant(&self) -> Instant {
        match self.at.get() {
            Some(at) => at,
            None => {
                let at = deadline_after(self.timeout);
                self.at.set(Some(at));
                at
            }
        }
    }
}
