//! Tickets: handles to requests in flight.
//!
//! A ticket owns one response slot (and a staging buffer, for a large
//! value) until it is waited on or taken. Dropping it abandons the
//! request, so the slot goes back to the table (the server frees it when
//! it gets to the request) and nothing leaks. A GET is read directly when
//! it is submitted: its ticket is ready at once, unless the direct read
//! had to be left to a worker.

use crate::client::{decode_del, decode_post, decode_set, decode_value, KVSClient};
use crate::conn::{Answer, Conn, Deadline, Staging, Submitted};
use crate::error::{ClientError, Result};
use kvs_core::codec::Codec;
use kvs_core::protocol::{OpCode, VALUE_TOO_LARGE};
use kvs_core::response_table::{Poll, WaitOutcome};
use std::fmt;
use std::time::Duration;

/// The asynchronous calls: submit now, collect the answer through the
/// [`Ticket`] later.
impl<K: Codec, V: Codec> KVSClient<K, V> {
    /// A GET as a ticket (read directly now when it can be).
    ///
    /// # Errors
    ///
    /// A key too long; submission errors when the read goes to a worker.
    pub fn get_async(&self, key: &K) -> Result<Ticket<'_, K, V, Option<V>>> {
        // A direct read answers now; only a busy stripe needs a worker.
        let direct = key.with_encoded(|k| -> Result<Option<Option<Option<V>>>> {
            self.conn.check_process()?;
            self.conn.check_lengths(k, None)?;
            let Some(view) = self.conn.region().store_view() else {
                return Ok(None);
            };
            match view.get(k) {
                kvs_core::store::read::Lookup::Found { meta, value } => {
                    let entry = crate::conn::RawEntry {
                        value,
                        version: meta.version,
                        modified_ns: meta.modified_ns,
                        deadline_ns: meta.deadline,
                    };
                    Ok(Some(Some(Some(decode_value::<V>(entry)?.value))))
                }
                kvs_core::store::read::Lookup::Absent => Ok(Some(Some(None))),
                _ => Ok(None),
            }
        })?;
        if let Some(Some(value)) = direct {
            return Ok(Ticket::ready(self, Ok(value)));
        }
        let deadline = Deadline::after(self.options().ring_full_backoff);
        let mut key_bytes = Vec::new();
        key.encode(&mut key_bytes);
        let sub = self.conn.submit(
            OpCode::Get,
            &key_bytes,
            None,
            0,
            &deadline,
            Staging::IfNeeded,
        )?;
        Ok(Ticket {
            client: self,
            state: State::InFlight(sub, Decode::Get(decode_get_answer::<V>, key_bytes)),
        })
    }

    /// Submits a SET; the ticket yields `()`.
    ///
    /// # Errors
    ///
    /// Submission errors: too long, ring full, no free slot, server gone.
    pub fn set_async(&self, key: &K, value: &V) -> Result<Ticket<'_, K, V, ()>> {
        self.write_async(OpCode::Set, key, value, decode_set)
    }

    /// Submits a POST; the ticket yields whether it inserted.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::set_async`].
    pub fn post_async(&self, key: &K, value: &V) -> Result<Ticket<'_, K, V, bool>> {
        self.write_async(OpCode::Post, key, value, decode_post)
    }

    /// Submits a DEL; the ticket yields whether it removed.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::set_async`].
    pub fn del_async(&self, key: &K) -> Result<Ticket<'_, K, V, bool>> {
        let deadline = Deadline::after(self.options().ring_full_backoff);
        let sub = key.with_encoded(|k| {
            self.conn.check_lengths(k, None)?;
            self.conn
                .submit(OpCode::Del, k, None, 0, &deadline, Staging::IfNeeded)
        })?;
        Ok(Ticket::new(self, sub, decode_del))
    }

    fn write_async<R>(
        &self,
        op: OpCode,
        key: &K,
        value: &V,
        decode: fn(Answer) -> Result<R>,
    ) -> Result<Ticket<'_, K, V, R>> {
        let deadline = Deadline::after(self.options().ring_full_backoff);
        let sub = key.with_encoded(|k| {
            value.with_encoded(|v| {
                self.conn.check_lengths(k, Some(v))?;
                self.conn
                    .submit(op, k, Some(v), 0, &deadline, Staging::IfNeeded)
            })
        })?;
        Ok(Ticket::new(self, sub, decode))
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
}

/// A GET answered by a worker: a value too large for the slot is fetched
/// again with a staging buffer (decode gets the connection for that).
fn decode_get_answer<V: Codec>(answer: Answer, conn: &Conn, key: &[u8]) -> Result<Option<V>> {
    let entry = if answer.response.flags & VALUE_TOO_LARGE != 0 {
        conn.get_through_worker(key, conn.options.timeout)?
    } else {
        Conn::entry_of(answer)?
    };
    entry
        .map(|e| decode_value::<V>(e).map(|v| v.value))
        .transpose()
}

/// How a ticket's answer becomes its result.
enum Decode<R> {
    Plain(fn(Answer) -> Result<R>),
    /// A GET: needs the connection and the key for a large value.
    Get(fn(Answer, &Conn, &[u8]) -> Result<R>, Vec<u8>),
}

enum State<R> {
    Ready(Option<Result<R>>),
    InFlight(Submitted, Decode<R>),
    Done,
}

/// A submitted request whose answer decodes to `R`.
#[must_use = "dropping a ticket abandons its request"]
pub struct Ticket<'c, K, V, R> {
    client: &'c KVSClient<K, V>,
    state: State<R>,
}

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

impl<'c, K: Codec, V: Codec, R> Ticket<'c, K, V, R> {
    fn ready(client: &'c KVSClient<K, V>, result: Result<R>) -> Self {
        Self {
            client,
            state: State::Ready(Some(result)),
        }
    }

    fn new(client: &'c KVSClient<K, V>, sub: Submitted, decode: fn(Answer) -> Result<R>) -> Self {
        Self {
            client,
            state: State::InFlight(sub, Decode::Plain(decode)),
        }
    }

    fn decode(&self, decode: Decode<R>, answer: Answer) -> Result<R> {
        match decode {
            Decode::Plain(f) => f(answer),
            Decode::Get(f, key) => f(answer, &self.client.conn, &key),
        }
    }

    /// Waits up to `timeout` for the answer.
    ///
    /// # Errors
    ///
    /// [`ClientError::Timeout`] (the request is abandoned), server gone, or
    /// the op's own errors.
    pub fn wait(mut self, timeout: Duration) -> Result<R> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Ready(r) => r.unwrap_or(Err(ClientError::Protocol("ticket taken".into()))),
            State::Done => Err(ClientError::Protocol("ticket taken".into())),
            State::InFlight(sub, decode) => {
                self.client.conn.check_process()?;
                let deadline = Deadline::after(timeout);
                let answer = self.client.conn.wait(sub, &deadline)?;
                self.decode(decode, answer)
            }
        }
    }

    /// The answer if it has arrived: `None` while pending (the ticket stays
    /// valid), `Some` once (after which the ticket is spent).
    pub fn try_take(&mut self) -> Option<Result<R>> {
        if let Err(e) = self.client.conn.check_process() {
            self.state = State::Done;
            return Some(Err(e));
        }
        match std::mem::replace(&mut self.state, State::Done) {
            State::Ready(r) => r,
            State::Done => None,
            State::InFlight(sub, decode) => {
                let mut value = Vec::new();
                match self
                    .client
                    .region()
                    .slots()
                    .poll(&sub.claim, Some(&mut value))
                {
                    Poll::Pending => {
                        self.state = State::InFlight(sub, decode);
                        None
                    }
                    Poll::Ready(resp) => Some(
                        self.client
                            .conn
                            .finish(sub, WaitOutcome::Ready(resp), value, Duration::ZERO)
                            .and_then(|a| self.decode(decode, a)),
                    ),
                    Poll::Lost => Some(
                        self.client
                            .conn
                            .finish(sub, WaitOutcome::Lost, value, Duration::ZERO)
                            .and_then(|a| self.decode(decode, a)),
                    ),
                }
            }
        }
    }
}

impl<K, V, R> Drop for Ticket<'_, K, V, R> {
    fn drop(&mut self) {
        if let State::InFlight(sub, _) = &self.state {
            // A forked child must not touch the parent's slot.
            if !self.client.conn.is_forked_copy() {
                self.client.conn.abandon(sub);
            }
        }
    }
}
