//! Tickets: handles to requests in flight, and futures of their answers.
//!
//! A ticket owns one response slot (and a staging buffer, for a large
//! value) until its answer is taken. It is collected one of three ways:
//!
//! * [`Ticket::wait`]: blocks the thread (spins briefly, then sleeps on
//!   the slot's futex), up to a timeout;
//! * [`Ticket::try_take`]: never blocks, `None` while pending;
//! * `.await`: a ticket is a [`Future`] any executor can poll (tokio,
//!   async-std, `futures::executor`, ...). A poll that finds no answer
//!   registers the task's waker with the connection's reactor thread
//!   (`crate::reactor`: one thread per connection, for all its requests,
//!   asleep on the connection's doorbell until the server answers one of
//!   them) and returns `Pending`; nothing polls in a loop. An await gives
//!   up after the client's timeout ([`Ticket::with_timeout`] to change
//!   it), counted from its first poll, and fails within a liveness slice
//!   or two (tens of milliseconds) when the server is gone.
//!
//! Submitting (the `*_async` call itself) does not wait for the answer;
//! it waits only, boundedly, when every response slot or the request ring
//! is full. Dropping a ticket abandons its request, so the slot goes back
//! to the table (the server frees it when it gets to the request) and
//! nothing leaks: cancelling a future is dropping it. A read is done
//! directly when it is submitted: its ticket is ready at once, unless the
//! direct read had to be left to a worker.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kvs_client::ClientError> {
//! let client = kvs_client::KVSClient::<String, String>::connect("my-store")?;
//! client.set_async(&"k".into(), &"v".into())?.await?;
//! assert_eq!(client.get_async(&"k".into())?.await?, Some("v".to_string()));
//! let n = client.incr_async(&"hits".into(), 1)?.await?;
//! # let _ = n; Ok(()) }
//! ```

use crate::client::{decode_del, decode_post, decode_set, decode_value, KVSClient, Versioned};
use crate::conn::{deadline_after, Answer, Args, Conn, Deadline, RawEntry, Staging, Submitted};
use crate::error::{ClientError, Result};
use kvs_core::codec::Codec;
use kvs_core::protocol::{OpCode, VALUE_TOO_LARGE};
use kvs_core::response_table::{Claim, WaitOutcome};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The asynchronous calls: submit now, collect the answer through the
/// [`Ticket`] later (wait, poll, or await it).
impl<K: Codec, V: Codec> KVSClient<K, V> {
    /// A GET as a ticket (read directly now when it can be).
    ///
    /// # Errors
    ///
    /// A key too long; submission errors when the read goes to a worker.
    pub fn get_async(&self, key: &K) -> Result<Ticket<'_, K, V, Option<V>>> {
        self.entry_ticket(key, value_of::<V>)
    }

    /// [`KVSClient::get_entry`] as a ticket.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::get_async`].
    pub fn get_entry_async(&self, key: &K) -> Result<Ticket<'_, K, V, Option<Versioned<V>>>> {
        self.entry_ticket(key, entry_of::<V>)
    }

    /// Submits a SET; the ticket yields `()`.
    ///
    /// # Errors
    ///
    /// Submission errors: too long, ring full, no free slot, server gone.
    pub fn set_async(&self, key: &K, value: &V) -> Result<Ticket<'_, K, V, ()>> {
        self.write_ticket(OpCode::Set, key, value, Args::default(), decode_set)
    }

    /// Submits a POST; the ticket yields whether it inserted.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::set_async`].
    pub fn post_async(&self, key: &K, value: &V) -> Result<Ticket<'_, K, V, bool>> {
        self.write_ticket(OpCode::Post, key, value, Args::default(), decode_post)
    }

    /// Submits a DEL; the ticket yields whether it removed.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::set_async`].
    pub fn del_async(&self, key: &K) -> Result<Ticket<'_, K, V, bool>> {
        self.keyed_ticket(OpCode::Del, key, Args::default(), decode_del)
    }

    /// Waits up to `timeout` for a ticket's answer.
    ///
    /// # Errors
    ///
    /// [`ClientError::Timeout`] (the request is abandoned), server gone, or
    /// the op's own errors.
    pub fn wait<R>(&self, ticket: Ticket<'_, K, V, R>, timeout: Duration) -> Result<R> {
        ticket.wait(timeout)
    }

    /// The ticket's answer if it has arrived; `None` otherwise.
    pub fn try_take<R>(&self, ticket: &mut Ticket<'_, K, V, R>) -> Option<Result<R>> {
        ticket.try_take()
    }

    /// A read of `key`'s entry: done directly now when it can be, else a
    /// GET submitted to a worker; `then` makes the result of the entry.
    pub(crate) fn entry_ticket<R>(
        &self,
        key: &K,
        then: fn(Option<RawEntry>) -> Result<R>,
    ) -> Result<Ticket<'_, K, V, R>> {
        let mut key_bytes = Vec::new();
        key.encode(&mut key_bytes);
        self.conn.check_readable()?;
        self.conn.check_lengths(&key_bytes, None)?;
        // A direct read answers now; only a busy stripe needs a worker.
        if let Some(found) = self.conn.read_direct(&key_bytes) {
            return Ok(Ticket::ready(self, then(found)));
        }
        self.worker_read(key_bytes, then)
    }

    /// A GET of `key` (bytes, lengths checked) submitted to a worker.
    pub(crate) fn worker_read<R>(
        &self,
        key: Vec<u8>,
        then: fn(Option<RawEntry>) -> Result<R>,
    ) -> Result<Ticket<'_, K, V, R>> {
        let deadline = Deadline::after(self.options().ring_full_backoff);
        let sub = self
            .conn
            .submit(OpCode::Get, &key, None, 0, &deadline, Staging::IfNeeded)?;
        let staged = false;
        Ok(Ticket::in_flight(
            self,
            sub,
            Decode::Entry { then, key, staged },
        ))
    }

    /// One batch request (see `kvs_core::batch`): the answer as it came
    /// (status unchecked). An MGET always takes a staging buffer (its
    /// answer may be large).
    pub(crate) fn batch_ticket(
        &self,
        op: OpCode,
        records: &kvs_core::batch::Encoder,
        arg3: u64,
    ) -> Result<Ticket<'_, K, V, Answer>> {
        let args = Args {
            arg2: records.count(),
            arg3,
            flags: 0,
        };
        let staging = if op == OpCode::MGet {
            Staging::Always
        } else {
            Staging::IfNeeded
        };
        let deadline = Deadline::after(self.options().ring_full_backoff);
        let sub = self
            .conn
            .submit(op, &[], Some(records.bytes()), args, &deadline, staging)?;
        Ok(Ticket::in_flight(self, sub, Decode::Plain(as_answered)))
    }

    /// A request with a key only, and `args`.
    pub(crate) fn keyed_ticket<R>(
        &self,
        op: OpCode,
        key: &K,
        args: Args,
        decode: fn(Answer) -> Result<R>,
    ) -> Result<Ticket<'_, K, V, R>> {
        let deadline = Deadline::after(self.options().ring_full_backoff);
        let sub = key.with_encoded(|k| {
            self.conn.check_lengths(k, None)?;
            self.conn
                .submit(op, k, None, args, &deadline, Staging::IfNeeded)
        })?;
        Ok(Ticket::in_flight(self, sub, Decode::Plain(decode)))
    }

    /// A request with a key, a value and `args`, lengths checked first.
    pub(crate) fn write_ticket<R>(
        &self,
        op: OpCode,
        key: &K,
        value: &V,
        args: Args,
        decode: fn(Answer) -> Result<R>,
    ) -> Result<Ticket<'_, K, V, R>> {
        let deadline = Deadline::after(self.options().ring_full_backoff);
        let sub = key.with_encoded(|k| {
            value.with_encoded(|v| {
                self.conn.check_lengths(k, Some(v))?;
                self.conn
                    .submit(op, k, Some(v), args, &deadline, Staging::IfNeeded)
            })
        })?;
        Ok(Ticket::in_flight(self, sub, Decode::Plain(decode)))
    }
}

/// An answer as it came (the caller checks its status for its op).
fn as_answered(answer: Answer) -> Result<Answer> {
    Ok(answer)
}

fn value_of<V: Codec>(entry: Option<RawEntry>) -> Result<Option<V>> {
    entry
        .map(|e| decode_value::<V>(e).map(|v| v.value))
        .transpose()
}

fn entry_of<V: Codec>(entry: Option<RawEntry>) -> Result<Option<Versioned<V>>> {
    entry.map(decode_value::<V>).transpose()
}

/// How a ticket's answer becomes its result.
enum Decode<R> {
    Plain(fn(Answer) -> Result<R>),
    /// A read through a worker: a value too large for the slot is asked
    /// for again with a staging buffer (`staged`: this is that request).
    Entry {
        then: fn(Option<RawEntry>) -> Result<R>,
        key: Vec<u8>,
        staged: bool,
    },
}

enum State<R> {
    Ready(Option<Result<R>>),
    InFlight(Submitted, Decode<R>),
    Done,
}

/// A submitted request whose answer decodes to `R`; a [`Future`] of it
/// too (see the module docs).
#[must_use = "dropping a ticket abandons its request"]
pub struct Ticket<'c, K, V, R> {
    client: &'c KVSClient<K, V>,
    state: State<R>,
    /// How long an await waits, from its first poll.
    timeout: Duration,
    /// When an await gives up: set by the first poll that found nothing.
    deadline: Option<Instant>,
    /// Whether the reactor holds our waker.
    registered: bool,
    /// Polls wait on the thread (the blocking calls that share their code
    /// with the async ones).
    blocking: bool,
}

/// How long a first poll spins for the answer before it registers with
/// the reactor, when no other await of the connection is pending (one
/// await after another): a few times a small request's round trip to an
/// idle worker (~1 us). An answer caught this way costs no thread hop (the
/// reactor's wake-up, then the executor's): one await after another was
/// 11x a blocking SET without it (`e2e/await` in BENCHMARKS.md). With
/// other awaits pending the answers queue behind theirs and spinning would
/// only hold the executor's thread, so it does not; and it is bounded by
/// the clock, not a count of `pause`s, whose length differs 10x between
/// processors.
const FIRST_POLL_SPIN: Duration = Duration::from_micros(5);

/// Spins until `ready` holds (`true`) or `limit` has passed (`false`).
fn spin_for(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        for _ in 0..16 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        if Instant::now() >= until {
            return ready();
        }
    }
}

// A ticket is never pinned in place: nothing refers into it.
impl<K, V, R> Unpin for Ticket<'_, K, V, R> {}

impl<K, V, R> fmt::Debug for Ticket<'_, K, V, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Ready(_) => "ready",
            State::InFlight(..) => "in flight",
            State::Done => "done",
        };
        f.debug_struct("Ticket").field("state", &state).finish()
    }
}

fn taken() -> ClientError {
    ClientError::Protocol("ticket taken".into())
}

impl<'c, K: Codec, V: Codec, R> Ticket<'c, K, V, R> {
    fn with_state(client: &'c KVSClient<K, V>, state: State<R>) -> Self {
        Self {
            client,
            state,
            timeout: client.options().timeout,
            deadline: None,
            registered: false,
            blocking: false,
        }
    }

    pub(crate) fn ready(client: &'c KVSClient<K, V>, result: Result<R>) -> Self {
        Self::with_state(client, State::Ready(Some(result)))
    }

    fn in_flight(client: &'c KVSClient<K, V>, sub: Submitted, decode: Decode<R>) -> Self {
        Self::with_state(client, State::InFlight(sub, decode))
    }

    /// An await of this ticket gives up after `timeout` (from its first
    /// poll) instead of the client's timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Polls wait on the thread until the answer or the timeout: for the
    /// blocking calls written once as async code (see `crate::many`).
    pub(crate) fn blocking(mut self) -> Self {
        self.blocking = true;
        self
    }

    /// What an answer (or a failed wait) makes: the result, or `None` when
    /// a large value had to be asked for again (the ticket is in flight
    /// again).
    fn next(&mut self, decode: Decode<R>, answer: Result<Answer>) -> Option<Result<R>> {
        let answer = match answer {
            Ok(a) => a,
            Err(e) => return Some(Err(e)),
        };
        match decode {
            Decode::Plain(f) => Some(f(answer)),
            Decode::Entry { then, key, staged }
                if !staged && answer.response.flags & VALUE_TOO_LARGE != 0 =>
            {
                let deadline = Deadline::after(self.client.options().ring_full_backoff);
                let conn = &self.client.conn;
                match conn.submit(OpCode::Get, &key, None, 0, &deadline, Staging::Always) {
                    Ok(sub) => {
                        let staged = true;
                        self.state = State::InFlight(sub, Decode::Entry { then, key, staged });
                        None
                    }
                    Err(e) => Some(Err(e)),
                }
            }
            Decode::Entry { then, .. } => Some(Conn::entry_of(answer).and_then(then)),
        }
    }

    /// Waits up to `timeout` for the answer.
    ///
    /// # Errors
    ///
    /// [`ClientError::Timeout`] (the request is abandoned), server gone, or
    /// the op's own errors.
    pub fn wait(mut self, timeout: Duration) -> Result<R> {
        self.wait_here(timeout)
    }

    fn wait_here(&mut self, timeout: Duration) -> Result<R> {
        let deadline = Deadline::after(timeout);
        loop {
            match std::mem::replace(&mut self.state, State::Done) {
                State::Ready(r) => return r.unwrap_or_else(|| Err(taken())),
                State::Done => return Err(taken()),
                State::InFlight(sub, decode) => {
                    self.client.conn.check_process()?;
                    let claim = sub.claim;
                    let answer = self.client.conn.wait(sub, &deadline);
                    self.unregister(&claim);
                    if let Some(r) = self.next(decode, answer) {
                        return r;
                    }
                }
            }
        }
    }

    /// The answer if it has arrived: `None` while pending (the ticket stays
    /// valid), `Some` once (after which the ticket is spent).
    pub fn try_take(&mut self) -> Option<Result<R>> {
        loop {
            if let Err(e) = self.client.conn.check_process() {
                self.state = State::Done;
                return Some(Err(e));
            }
            match std::mem::replace(&mut self.state, State::Done) {
                State::Ready(r) => return r,
                State::Done => return None,
                State::InFlight(sub, decode) => {
                    let claim = sub.claim;
                    match self.client.conn.try_finish(sub) {
                        Err(sub) => {
                            self.state = State::InFlight(sub, decode);
                            return None;
                        }
                        Ok(answer) => {
                            self.unregister(&claim);
                            if let Some(r) = self.next(decode, answer) {
                                return Some(r);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Forgets the reactor's registration of `claim`, if we made one.
    fn unregister(&mut self, claim: &Claim) {
        if std::mem::take(&mut self.registered) {
            if let Ok(reactor) = self.client.conn.reactor() {
                reactor.deregister(claim);
            }
        }
    }
}

impl<K: Codec, V: Codec, R> Future for Ticket<'_, K, V, R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        let this = self.get_mut();
        if this.blocking {
            let timeout = this.timeout;
            return Poll::Ready(this.wait_here(timeout));
        }
        // Rounds of "settled, yet not taken": only a slot word that keeps
        // flipping (a scribbler) makes more than one; after a few the
        // executor's thread is given back.
        let mut rounds = 0;
        loop {
            if let Some(r) = this.try_take() {
                return Poll::Ready(r);
            }
            rounds += 1;
            if rounds > 3 && this.registered {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            // The request stays in `this.state` while foreign code runs
            // (the waker's clone in `register`): should that panic, the
            // ticket's drop still abandons it and nothing leaks.
            let claim = match &this.state {
                State::InFlight(sub, _) => sub.claim,
                _ => return Poll::Ready(Err(taken())),
            };
            let conn = &this.client.conn;
            if this.deadline.is_none()
                && conn.awaits_idle()
                && spin_for(FIRST_POLL_SPIN, || conn.region().slots().settled(&claim))
            {
                // Answered while we spun: no reactor round trip.
                this.deadline = Some(deadline_after(this.timeout));
                continue;
            }
            let deadline = *this
                .deadline
                .get_or_insert_with(|| deadline_after(this.timeout));
            // Checked on the polls after the first (a wake-up without an
            // answer): a timeout, or a server that is gone.
            let failed = if Instant::now() >= deadline {
                Some(WaitOutcome::TimedOut)
            } else if this.registered && !conn.server_alive() {
                Some(WaitOutcome::ServerGone)
            } else {
                None
            };
            if let Some(outcome) = failed {
                this.unregister(&claim);
                let State::InFlight(sub, decode) = std::mem::replace(&mut this.state, State::Done)
                else {
                    return Poll::Ready(Err(taken()));
                };
                // A last look: an answer that landed since the check above
                // is the result (an INCR that was made must not read as a
                // failure); only a request still pending is given up.
                let answer = match conn.try_finish(sub) {
                    Ok(answer) => answer,
                    Err(sub) => Err(conn.give_up(&sub, outcome, this.timeout)),
                };
                match this.next(decode, answer) {
                    Some(r) => return Poll::Ready(r),
                    // A large value asked for again: past the deadline,
                    // the next round gives that up too.
                    None => continue,
                }
            }
            if let Err(e) = conn
                .reactor()
                .and_then(|r| r.register(claim, deadline, cx.waker()))
            {
                this.unregister(&claim);
                if let State::InFlight(sub, _) = std::mem::replace(&mut this.state, State::Done) {
                    conn.abandon(&sub);
                }
                return Poll::Ready(Err(e));
            }
            this.registered = true;
            // An answer that came before the registration: the reactor's
            // scan may have missed it, this check does not (module docs of
            // `crate::reactor`).
            if !conn.region().slots().settled(&claim) {
                return Poll::Pending;
            }
        }
    }
}

impl<K, V, R> Drop for Ticket<'_, K, V, R> {
    fn drop(&mut self) {
        if let State::InFlight(sub, _) = &self.state {
            // A forked child must not touch the parent's slot.
            if !self.client.conn.is_forked_copy() {
                if self.registered {
                    if let Ok(reactor) = self.client.conn.reactor() {
                        reactor.deregister(&sub.claim);
                    }
                }
                self.client.conn.abandon(sub);
            }
        }
    }
}
