//! The byte-level connection: the request protocol (claim a response slot,
//! write the request, or stage it, push, wait) and the direct read.
//!
//! One write is: claim a response slot; if the key and value fit the
//! slot's data area, write them there, else claim a staging buffer, write
//! them into it and tie it to the slot; mark the slot pending, push its
//! index, wake a worker if one sleeps; then wait on the slot: spin briefly,
//! then sleep on its event count, checking the deadline and the server's
//! liveness between sleeps. A read goes to the store directly
//! (`kvs_core::store::read`): no slot, no syscall, no shared line written;
//! only a read that keeps colliding with writers (or meets a store it
//! cannot make sense of) asks a worker, the same way as a write.
//!
//! Nothing on the blocking request path takes a lock, so a connection is
//! `Send + Sync` and any number of threads may share one. A request
//! awaited as a future, when it has to wait, registers with the
//! connection's reactor thread (`crate::reactor`, started on the first
//! such await) under the reactor's mutex.

use crate::error::{ClientError, Result, StoreLimit};
use kvs_core::bulk::BulkClaim;
use kvs_core::bulk::KEEP_PAGES_UP_TO;
use kvs_core::protocol::{
    staging_arg, OpCode, Payload, Request, Response, StatusCode, STAGED, VALUE_TOO_LARGE,
};
use kvs_core::region::{ConnectOptions, InitState, Region};
use kvs_core::response_table::{Claim, Poll, WaitOutcome};
use kvs_core::ring::PushError;
use kvs_core::store::hash::KeyHash;
use kvs_core::store::read::{Lookup, StoreView};
use kvs_core::wait::{Backoff, FutexParker, SpinPolicy};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How a client connects, waits and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Timeout of the calls without a `_timeout` suffix.
    pub timeout: Duration,
    /// How long `connect` waits for a server that is still starting.
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

/// An entry as bytes, with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    /// The value's bytes.
    pub value: Vec<u8>,
    /// The entry's version.
    pub version: u64,
    /// Last change, unix ns.
    pub modified_ns: u64,
    /// When it expires, unix ns (0: never).
    pub deadline_ns: u64,
}

/// A request's op-specific words and flags (see `kvs_core::protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Args {
    /// `arg2`: a deadline, a delta, a stripe.
    pub(crate) arg2: u64,
    /// `arg3`: the version expected, with `IF_VERSION`.
    pub(crate) arg3: u64,
    /// `IF_VERSION`, `KEEP_TTL`.
    pub(crate) flags: u16,
}

impl From<u64> for Args {
    fn from(arg2: u64) -> Self {
        Args {
            arg2,
            ..Args::default()
        }
    }
}

/// When a request takes a staging buffer, and whether it waits for one
/// (and for a slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Staging {
    /// When its key and value do not fit the slot, waiting (until the
    /// deadline) for a buffer to come free.
    IfNeeded,
    /// Always (the answer may be large), waiting as `IfNeeded`.
    Always,
    /// As `IfNeeded`, but claiming only what is free right now, the slot
    /// as well as a staging buffer: a caller that holds requests in flight
    /// must not wait for either (the ones it holds come free only when it
    /// collects their answers; waiting would stall it, and every client
    /// doing the same, until the deadline), so it gets
    /// [`ClientError::NoFreeSlot`] or [`ClientError::NoBulkBuffer`] at once
    /// instead, and collects an answer first.
    NoWait,
}

/// A request in flight: its slot, and the staging buffer it holds, if any.
#[derive(Debug)]
pub(crate) struct Submitted {
    pub(crate) op: OpCode,
    pub(crate) claim: Claim,
    pub(crate) staging: Option<BulkClaim>,
    /// Bytes of key and value the request carries (the wait spins longer
    /// for more: [`SpinPolicy::for_request`]).
    pub(crate) bytes: u64,
}

/// An answer, with the value's bytes if it carried one.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) response: Response,
    pub(crate) value: Vec<u8>,
}

/// A connection to the server of one region.
pub(crate) struct Conn {
    /// Shared with the reactor thread, which outlives no connection (it is
    /// joined when the connection drops).
    region: Arc<Region>,
    registration: u32,
    /// Our pid, recorded in claimed slots (cached: `getpid` is a syscall).
    pid: u32,
    /// The fork generation we connected in (see the `fork` module).
    fork_generation: u64,
    /// Set once a call found the server gone: later calls fail at once.
    gone: AtomicBool,
    /// Where our next slot claim starts probing: our own hint, so clients in
    /// different processes do not all bump one shared cursor line. Relaxed:
    /// a racy hint only changes where probing starts.
    claim_hint: AtomicU64,
    /// Wakes tasks awaiting answers; started on first need.
    reactor: OnceLock<crate::reactor::Reactor>,
    pub(crate) options: ClientOptions,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("region", &self.region.name())
            .field("registration", &self.registration)
            .finish()
    }
}

/// The status of an answer, with the server's refusals as errors.
pub(crate) fn check_status(op: OpCode, resp: &Response) -> Result<StatusCode> {
    match resp.status_code() {
        Ok(StatusCode::StoreFull) => Err(ClientError::StoreFull(
            if resp.aux == kvs_core::protocol::FULL_ENTRIES {
                StoreLimit::Entries
            } else {
                StoreLimit::Memory
            },
        )),
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

impl Conn {
    /// Connects to the server of region `name`.
    pub(crate) fn connect(name: &str, options: ClientOptions) -> Result<Self> {
        let region = Region::open_with(name, &options.connect_options())?;
        let Some((registration, _)) = region.registration() else {
            return Err(ClientError::Protocol(
                "the server answered without a registration".into(),
            ));
        };
        Ok(Self {
            region: Arc::new(region),
            registration,
            pid: std::process::id(),
            fork_generation: crate::fork::generation_at_connect(),
            gone: AtomicBool::new(false),
            // Spread clients over the table by registration.
            claim_hint: AtomicU64::new(u64::from(registration).wrapping_mul(0x9e37_79b9)),
            reactor: OnceLock::new(),
            options,
        })
    }

    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    pub(crate) fn registration(&self) -> u32 {
        self.registration
    }

    /// The reactor that wakes tasks awaiting this connection's answers,
    /// started on first use.
    ///
    /// # Errors
    ///
    /// [`ClientError::WakerThread`] when its thread cannot be started.
    pub(crate) fn reactor(&self) -> Result<&crate::reactor::Reactor> {
        if let Some(r) = self.reactor.get() {
            return Ok(r);
        }
        let started = crate::reactor::Reactor::start(Arc::clone(&self.region), self.registration)?;
        // Another thread may have started one meanwhile: the first stays,
        // this one stops in its drop.
        Ok(self.reactor.get_or_init(|| started))
    }

    /// Whether no task of this connection awaits an answer through the
    /// reactor (none started counts as idle): a hint for how long a first
    /// poll may spin.
    pub(crate) fn awaits_idle(&self) -> bool {
        self.reactor.get().is_none_or(crate::reactor::Reactor::idle)
    }

    /// The largest key and value the store allows.
    pub(crate) fn limits(&self) -> (u64, u64) {
        let info = self.region.info();
        (info.max_key, info.max_value)
    }

    /// Refuses a key or value the store would refuse, before anything is
    /// sent.
    pub(crate) fn check_lengths(&self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let (max_key, max_value) = self.limits();
        if key.is_empty() || key.len() as u64 > max_key {
            return Err(ClientError::KeyLength {
                len: key.len(),
                max: max_key,
            });
        }
        if let Some(v) = value {
            if v.len() as u64 > max_value {
                return Err(ClientError::ValueLength {
                    len: v.len(),
                    max: max_value,
                });
            }
        }
        Ok(())
    }

    /// Whether the server is alive and serving (one `poll` of the
    /// connection).
    pub(crate) fn server_alive(&self) -> bool {
        !self.gone.load(Ordering::Relaxed) && self.region.server_alive()
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
    /// nothing may touch the region on this connection's behalf).
    pub(crate) fn is_forked_copy(&self) -> bool {
        crate::fork::forked_since(self.fork_generation)
    }

    /// Whether new requests must not be submitted: the server is gone
    /// (seen before), or draining or closed.
    fn server_closed(&self) -> bool {
        self.gone.load(Ordering::Relaxed) || self.region.refuses_requests()
    }

    // ---- reads ----

    /// Reads `key`: directly from the store, or through a worker when the
    /// direct read keeps colliding with writers.
    pub(crate) fn get(&self, key: &[u8], timeout: Duration) -> Result<Option<RawEntry>> {
        self.check_readable()?;
        self.check_lengths(key, None)?;
        match self.read_direct(key) {
            Some(found) => Ok(found),
            None => self.get_through_worker(key, timeout),
        }
    }

    /// A direct read of `key` (lengths checked by the caller): `None` when
    /// it has to go through a worker (writers kept colliding with it, or
    /// the store holds something it cannot make sense of).
    #[inline]
    pub(crate) fn read_direct(&self, key: &[u8]) -> Option<Option<RawEntry>> {
        let view = self.region.store_view()?;
        read_with(&view, key, view.hash(key))
    }

    /// The store, for direct reads (`None` before the server made one).
    pub(crate) fn store_view(&self) -> Option<StoreView<'_>> {
        self.region.store_view()
    }

    /// Refuses calls from a fork and on a cleanly stopped server's region
    /// (its store is gone for good; a crashed one's survives: reads go on
    /// answering from it, and a restarted server adopts it).
    pub(crate) fn check_readable(&self) -> Result<()> {
        self.check_process()?;
        if self.region.header().state.load(Ordering::Relaxed) == InitState::Closed as u32 {
            return Err(ClientError::ServerGone);
        }
        Ok(())
    }

    /// A GET through the ring; a value too large for the slot is asked for
    /// again with a staging buffer to hold it.
    pub(crate) fn get_through_worker(
        &self,
        key: &[u8],
        timeout: Duration,
    ) -> Result<Option<RawEntry>> {
        let deadline = Deadline::after(timeout);
        let answer = self.call(OpCode::Get, key, None, 0, &deadline)?;
        let answer = if answer.response.flags & VALUE_TOO_LARGE != 0 {
            self.call_staged(OpCode::Get, key, None, 0, &deadline, true)?
        } else {
            answer
        };
        Self::entry_of(answer)
    }

    pub(crate) fn entry_of(answer: Answer) -> Result<Option<RawEntry>> {
        match check_status(OpCode::Get, &answer.response)? {
            StatusCode::Ok if answer.response.flags & VALUE_TOO_LARGE != 0 => Err(
                ClientError::Protocol("the server could not hand over a large value".into()),
            ),
            StatusCode::Ok => Ok(Some(RawEntry {
                value: answer.value,
                version: answer.response.version,
                modified_ns: answer.response.modified_ns,
                deadline_ns: answer.response.aux64,
            })),
            StatusCode::NotFound => Ok(None),
            s => Err(ClientError::Protocol(format!("unexpected {s:?} for get"))),
        }
    }

    // ---- requests ----

    /// Bytes of records one batch request may carry (a staging buffer's).
    pub(crate) fn batch_capacity(&self) -> u64 {
        self.region.bulk().data_size() as u64
    }

    /// Sends one request and waits for its answer.
    pub(crate) fn call(
        &self,
        op: OpCode,
        key: &[u8],
        value: Option<&[u8]>,
        args: impl Into<Args>,
        deadline: &Deadline,
    ) -> Result<Answer> {
        self.call_staged(op, key, value, args, deadline, false)
    }

    /// [`call`](Self::call) with a staging buffer whatever the sizes (a
    /// large GET answer, a listing page).
    pub(crate) fn call_staged(
        &self,
        op: OpCode,
        key: &[u8],
        value: Option<&[u8]>,
        args: impl Into<Args>,
        deadline: &Deadline,
        stage: bool,
    ) -> Result<Answer> {
        let staging = if stage {
            Staging::Always
        } else {
            Staging::IfNeeded
        };
        let sub = self.submit(op, key, value, args, deadline, staging)?;
        self.wait(sub, deadline)
    }

    /// Claims a slot (and a staging buffer as `staging` says), writes the
    /// request, marks the slot pending, pushes it, wakes a worker.
    pub(crate) fn submit(
        &self,
        op: OpCode,
        key: &[u8],
        value: Option<&[u8]>,
        args: impl Into<Args>,
        deadline: &Deadline,
        staging: Staging,
    ) -> Result<Submitted> {
        let args: Args = args.into();
        self.check_process()?;
        if self.server_closed() {
            return Err(ClientError::ServerGone);
        }
        let value = value.filter(|_| op.carries_value()).unwrap_or(&[]);
        let payload = Payload::new(key.len() as u64, value.len() as u64);
        let slots = self.region.slots();
        let claim = if staging == Staging::NoWait {
            self.try_claim().ok_or(ClientError::NoFreeSlot)?
        } else {
            self.claim_slot(deadline)?
        };
        let mut request = Request {
            op: op as u16,
            key_len: key.len() as u32,
            value_len: value.len() as u32,
            flags: args.flags,
            arg2: args.arg2,
            arg3: args.arg3,
            ..Request::default()
        };
        let staging = if staging == Staging::Always || !payload.fits_inline() {
            let claimed = if staging == Staging::NoWait {
                self.region
                    .bulk()
                    .claim(self.registration)
                    .ok_or(ClientError::NoBulkBuffer)
            } else {
                self.claim_staging(deadline)
            };
            let staged = match claimed {
                Ok(s) => s,
                Err(e) => {
                    slots.release(&claim);
                    return Err(e);
                }
            };
            let bulk = self.region.bulk();
            let data = bulk.data(staged.index);
            if data.write_bytes(0, key, |_| {}).is_err()
                || data.write_bytes(payload.value_at(), value, |_| {}).is_err()
            {
                bulk.release(&staged);
                slots.release(&claim);
                return Err(ClientError::ValueLength {
                    len: value.len(),
                    max: self.limits().1,
                });
            }
            bulk.bind(&staged, claim.index, claim.generation);
            request.flags |= STAGED;
            request.arg = staging_arg(staged.index, staged.generation);
            Some(staged)
        } else {
            None
        };
        if !slots.write_request(&claim, &request, key, value) || !slots.mark_pending(&claim) {
            // Someone moved our claimed slot on (a scribbler): not ours now.
            if let Some(s) = &staging {
                self.region.bulk().release(s);
            }
            return Err(ClientError::SlotLost);
        }
        let sub = Submitted {
            op,
            claim,
            staging,
            bytes: (key.len() + value.len()) as u64,
        };
        self.push(&sub, deadline)?;
        Ok(sub)
    }

    fn push(&self, sub: &Submitted, deadline: &Deadline) -> Result<()> {
        let ring = self.region.ring();
        // Computed on the first failure only: the fast path reads no clock.
        let mut give_up = None;
        let mut backoff = Backoff::new();
        loop {
            match ring.push(sub.claim.index) {
                Ok(()) => {
                    self.region.wake_a_worker();
                    return Ok(());
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
                        self.region.slots().release(&sub.claim);
                        if let Some(s) = &sub.staging {
                            self.region.bulk().release(s);
                        }
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

    /// A staging buffer, waiting (boundedly) for one to come free.
    fn claim_staging(&self, deadline: &Deadline) -> Result<BulkClaim> {
        let bulk = self.region.bulk();
        if let Some(c) = bulk.claim(self.registration) {
            return Ok(c);
        }
        self.region.poke_housekeeper();
        let give_up = deadline.instant();
        let mut backoff = Backoff::new();
        loop {
            backoff.snooze();
            if let Some(c) = bulk.claim(self.registration) {
                return Ok(c);
            }
            if Instant::now() >= give_up || self.server_closed() {
                return Err(ClientError::NoBulkBuffer);
            }
        }
    }

    /// Waits for a submitted request's answer, then lets go of its staging
    /// buffer (copying a staged value out first).
    pub(crate) fn wait(&self, sub: Submitted, deadline: &Deadline) -> Result<Answer> {
        let mut value = Vec::new();
        let outcome = self.region.slots().wait(
            &sub.claim,
            Some(&mut value),
            self.options.spin.for_request(sub.bytes),
            &FutexParker,
            || Some(deadline.instant()),
            || self.region.server_alive(),
        );
        self.finish(sub, outcome, value, deadline.timeout())
    }

    /// What a wait or a poll found, turned into an answer; the staging
    /// buffer is read (a staged value) and released, or abandoned with the
    /// request.
    pub(crate) fn finish(
        &self,
        sub: Submitted,
        outcome: WaitOutcome,
        mut value: Vec<u8>,
        timeout: Duration,
    ) -> Result<Answer> {
        let bulk = self.region.bulk();
        match outcome {
            WaitOutcome::Ready(response) => {
                if let Some(staged) = &sub.staging {
                    if response.flags & STAGED != 0 {
                        let data = bulk.data(staged.index);
                        if data
                            .read_into(0, u64::from(response.value_len), &mut value)
                            .is_err()
                        {
                            bulk.release(staged);
                            return Err(ClientError::Protocol(
                                "a staged answer longer than its buffer".into(),
                            ));
                        }
                    }
                    // Only pages of a buffer still ours: a write's buffer
                    // the server freed may be someone else's by now.
                    let moved = sub.bytes.max(value.len() as u64);
                    if bulk.release(staged) && moved > KEEP_PAGES_UP_TO {
                        self.region.release_bulk_pages(staged.index);
                    }
                }
                Ok(Answer { response, value })
            }
            other => {
                if let Some(s) = &sub.staging {
                    bulk.abandon(s);
                }
                Err(self.failure(sub.op, other, timeout))
            }
        }
    }

    /// The error of a wait that ended without an answer.
    fn failure(&self, op: OpCode, outcome: WaitOutcome, timeout: Duration) -> ClientError {
        match outcome {
            WaitOutcome::TimedOut => ClientError::timeout(op, timeout),
            WaitOutcome::ServerGone => {
                // Remember it only if the connection says so: a scribbled
                // header state must not end this client for good.
                if self.region.connection_ended() {
                    self.gone.store(true, Ordering::Relaxed);
                }
                ClientError::ServerGone
            }
            _ => ClientError::SlotLost,
        }
    }

    /// The answer if it has arrived (never waits): `Err(sub)` back while
    /// it is pending.
    pub(crate) fn try_finish(
        &self,
        sub: Submitted,
    ) -> std::result::Result<Result<Answer>, Submitted> {
        let mut value = Vec::new();
        let outcome = match self.region.slots().poll(&sub.claim, Some(&mut value)) {
            Poll::Pending => return Err(sub),
            Poll::Ready(resp) => WaitOutcome::Ready(resp),
            Poll::Lost => WaitOutcome::Lost,
        };
        Ok(self.finish(sub, outcome, value, Duration::ZERO))
    }

    /// Abandons a request that is still pending, with `outcome`'s error
    /// (an answer that arrives in the instant between the caller's last
    /// look and this is dropped with it, as with any timeout: the request
    /// may have been carried out).
    pub(crate) fn give_up(
        &self,
        sub: &Submitted,
        outcome: WaitOutcome,
        timeout: Duration,
    ) -> ClientError {
        self.abandon(sub);
        self.failure(sub.op, outcome, timeout)
    }

    /// Gives up on a request in flight (a dropped ticket).
    pub(crate) fn abandon(&self, sub: &Submitted) {
        if self.region.slots().abandon(&sub.claim).is_some() {
            // It was answered just in time: the slot is free; the buffer too.
            if let Some(s) = &sub.staging {
                self.region.bulk().release(s);
            }
        } else if let Some(s) = &sub.staging {
            self.region.bulk().abandon(s);
        }
    }
}

/// A direct read of `key` with its hash in `view`: `None` when it has to
/// go through a worker (writers kept colliding with it, or the store holds
/// something it cannot make sense of).
#[inline]
pub(crate) fn read_with(
    view: &StoreView<'_>,
    key: &[u8],
    hash: KeyHash,
) -> Option<Option<RawEntry>> {
    match view.get_hashed(key, hash) {
        Lookup::Found { meta, value } => Some(Some(RawEntry {
            value,
            version: meta.version,
            modified_ns: meta.modified_ns,
            deadline_ns: meta.deadline,
        })),
        Lookup::Absent => Some(None),
        Lookup::Busy | Lookup::Corrupt(_) => None,
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
