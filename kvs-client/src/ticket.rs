//! Tickets: handles to requests in flight.
//!
//! A ticket owns one response slot until it is waited on or taken. Dropping
//! it abandons the request, so the slot goes back to the table (the server
//! frees it when it gets to the request) and nothing leaks.

use crate::client::{decode_del, decode_get, decode_post, decode_set, Deadline, KVSClient};
use crate::error::{ClientError, Result};
use kvs_core::protocol::{OpCode, Response};
use kvs_core::response_table::{Claim, Poll};
use std::fmt;
use std::hash::Hash;
use std::time::Duration;

/// The asynchronous calls: submit now, collect the answer through the
/// [`Ticket`] later.
impl<K, V> KVSClient<K, V>
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
    /// Submits a GET; the ticket yields `Option<V>`.
    ///
    /// # Errors
    ///
    /// Submission errors: ring full, no free slot, server gone.
    pub fn get_async(&self, key: &K) -> Result<Ticket<'_, K, V, Option<V>>> {
        self.ticket(OpCode::Get, key, None, decode_get)
    }

    /// Submits a SET; the ticket yields `()`.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::get_async`].
    pub fn set_async(&self, key: &K, value: &V) -> Result<Ticket<'_, K, V, ()>> {
        self.ticket(OpCode::Set, key, Some(value), decode_set)
    }

    /// Submits a POST; the ticket yields whether it inserted.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::get_async`].
    pub fn post_async(&self, key: &K, value: &V) -> Result<Ticket<'_, K, V, bool>> {
        self.ticket(OpCode::Post, key, Some(value), decode_post)
    }

    /// Submits a DEL; the ticket yields whether it removed.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::get_async`].
    pub fn del_async(&self, key: &K) -> Result<Ticket<'_, K, V, bool>> {
        self.ticket(OpCode::Del, key, None, decode_del)
    }

    fn ticket<R>(
        &self,
        op: OpCode,
        key: &K,
        value: Option<&V>,
        decode: fn(Response<V>) -> Result<R>,
    ) -> Result<Ticket<'_, K, V, R>> {
        let deadline = Deadline::after(self.options().ring_full_backoff);
        let claim = self.submit(op, key, value, &deadline)?;
        Ok(Ticket::new(self, claim, op, decode))
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

/// A submitted request whose answer decodes to `R`.
#[must_use = "dropping a ticket abandons its request"]
pub struct Ticket<'c, K, V, R>
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
    client: &'c KVSClient<K, V>,
    claim: Option<Claim>,
    op: OpCode,
    decode: fn(Response<V>) -> Result<R>,
}

impl<K, V, R> fmt::Debug for Ticket<'_, K, V, R>
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("op", &self.op)
            .field("claim", &self.claim)
            .finish()
    }
}

impl<'c, K, V, R> Ticket<'c, K, V, R>
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
    pub(crate) fn new(
        client: &'c KVSClient<K, V>,
        claim: Claim,
        op: OpCode,
        decode: fn(Response<V>) -> Result<R>,
    ) -> Self {
        Self {
            client,
            claim: Some(claim),
            op,
            decode,
        }
    }

    /// The operation this ticket is for.
    pub fn op(&self) -> OpCode {
        self.op
    }

    /// Waits up to `timeout` for the answer.
    ///
    /// # Errors
    ///
    /// [`ClientError::Timeout`] (the request is abandoned), server gone, or
    /// the op's own errors.
    pub fn wait(mut self, timeout: Duration) -> Result<R> {
        self.client.check_process()?;
        let claim = self.claim.take().ok_or(ClientError::SlotLost)?;
        let deadline = Deadline::after(timeout);
        let resp = self.client.wait_claim(self.op, &claim, &deadline)?;
        (self.decode)(resp)
    }

    /// The answer if it has arrived; `None` if not yet (the ticket stays
    /// valid), `Some` once (after which the ticket is spent).
    pub fn try_take(&mut self) -> Option<Result<R>> {
        if let Err(e) = self.client.check_process() {
            self.claim = None;
            return Some(Err(e));
        }
        let claim = self.claim?;
        match self.client.region().slots().poll(&claim, self.op) {
            Poll::Pending => None,
            Poll::Ready(resp) => {
                self.claim = None;
                Some((self.decode)(resp))
            }
            Poll::Lost => {
                self.claim = None;
                Some(Err(ClientError::SlotLost))
            }
        }
    }
}

impl<K, V, R> Drop for Ticket<'_, K, V, R>
where
    K: bytemuck::Pod + Eq + Hash,
    V: bytemuck::Pod,
{
    fn drop(&mut self) {
        if let Some(claim) = self.claim.take() {
            // A forked child must not touch the parent's slot.
            if !self.client.is_forked_copy() {
                self.client.region().slots().abandon(&claim, self.op);
            }
        }
    }
}
