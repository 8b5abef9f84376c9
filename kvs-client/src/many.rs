//! Many keys in one call: `get_many`, `set_many`, `del_many`.
//!
//! Writes travel as one request per batch (MSET, MDEL, see
//! `kvs_core::batch`): one slot, one ring entry, one wake-up, one worker
//! serving every record in one go. A batch larger than a staging buffer
//! (the largest key and value the server allows, about 1 MiB by default)
//! goes as a few requests, in order. Reads need no request at all: every
//! key is read from the store directly, and only those a direct read could
//! not serve (writers kept colliding with it) go to a worker, together, as
//! one MGET.
//!
//! Each call has an `_async` twin (`get_many_async`, ...) whose requests
//! are awaited as futures. Both are the same code: an `async fn` whose
//! requests are [`Ticket`]s; the blocking call makes them blocking tickets
//! (a poll waits on the thread), so its future completes in its first poll
//! ([`run_blocking`]).

use crate::client::{decode_value, KVSClient, Versioned};
use crate::conn::{check_status, read_with, Answer, RawEntry};
use crate::error::{ClientError, Result};
use crate::ticket::Ticket;
use kvs_core::batch::{self, Encoder};
use kvs_core::codec::Codec;
use kvs_core::protocol::{OpCode, Response, StatusCode, VALUE_TOO_LARGE};
use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// How the requests of a call are awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// On the thread: every await is ready in its first poll.
    Blocking,
    /// As futures, woken by the reactor.
    Async,
}

impl Mode {
    fn apply<'c, K: Codec, V: Codec, R>(self, t: Ticket<'c, K, V, R>) -> Ticket<'c, K, V, R> {
        match self {
            Mode::Blocking => t.blocking(),
            Mode::Async => t,
        }
    }
}

/// Runs a call made in [`Mode::Blocking`]: every await in it completes in
/// its first poll, so one poll (with a waker nobody needs) completes it.
fn run_blocking<T>(call: impl Future<Output = Result<T>>) -> Result<T> {
    let mut call = std::pin::pin!(call);
    match call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => Err(ClientError::Protocol(
            "a blocking call was left pending".into(),
        )),
    }
}

fn raw(entry: Option<RawEntry>) -> Result<Option<RawEntry>> {
    Ok(entry)
}

impl<K: Codec, V: Codec> KVSClient<K, V> {
    /// The values of `keys`, in order (`None`: absent).
    ///
    /// # Errors
    ///
    /// [`ClientError::KeyLength`] for a key the store does not allow (then
    /// nothing is read), [`ClientError::Decode`], and the errors of a
    /// request when some keys have to be read by a worker.
    pub fn get_many<'k>(&self, keys: impl IntoIterator<Item = &'k K>) -> Result<Vec<Option<V>>>
    where
        K: 'k,
    {
        run_blocking(self.read_many(keys, decode_plain::<V>, Mode::Blocking))
    }

    /// [`get_many`](Self::get_many) as a future.
    ///
    /// # Errors
    ///
    /// As [`get_many`](Self::get_many).
    pub async fn get_many_async<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k K>,
    ) -> Result<Vec<Option<V>>>
    where
        K: 'k,
    {
        self.read_many(keys, decode_plain::<V>, Mode::Async).await
    }

    /// [`get_many`](Self::get_many) with each entry's version, modification
    /// time and deadline.
    ///
    /// # Errors
    ///
    /// As [`get_many`](Self::get_many).
    pub fn get_many_entries<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k K>,
    ) -> Result<Vec<Option<Versioned<V>>>>
    where
        K: 'k,
    {
        run_blocking(self.read_many(keys, decode_value, Mode::Blocking))
    }

    /// [`get_many_entries`](Self::get_many_entries) as a future.
    ///
    /// # Errors
    ///
    /// As [`get_many`](Self::get_many).
    pub async fn get_many_entries_async<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k K>,
    ) -> Result<Vec<Option<Versioned<V>>>>
    where
        K: 'k,
    {
        self.read_many(keys, decode_value, Mode::Async).await
    }

    /// Reads every key, each found entry through `decode`, straight into
    /// the result (this is the per-key path of a batch read: no second
    /// pass over the entries).
    async fn read_many<'k, T>(
        &self,
        keys: impl IntoIterator<Item = &'k K>,
        decode: fn(RawEntry) -> Result<T>,
        mode: Mode,
    ) -> Result<Vec<Option<T>>>
    where
        K: 'k,
    {
        let conn = &self.conn;
        conn.check_readable()?;
        let keys: Vec<&K> = keys.into_iter().collect();
        let mut out: Vec<Option<T>> = Vec::with_capacity(keys.len());
        let mut failed = None;
        let mut through_worker: Vec<(usize, Vec<u8>)> = Vec::new();
        let view = conn.store_view();
        // Lengths (all checked before anything is read) and hashes first,
        // then the lookups, pipelined so their cache misses overlap.
        let mut hashes = Vec::with_capacity(keys.len());
        for key in &keys {
            key.with_encoded(|k| {
                conn.check_lengths(k, None)?;
                if let Some(view) = &view {
                    hashes.push(view.hash(k));
                }
                Ok::<_, ClientError>(())
            })?;
        }
        match &view {
            Some(view) => view.pipelined(&hashes, |i| {
                keys[i].with_encoded(|k| match read_with(view, k, hashes[i]) {
                    Some(Some(entry)) => match decode(entry) {
                        Ok(t) => out.push(Some(t)),
                        Err(e) => {
                            failed.get_or_insert(e);
                            out.push(None);
                        }
                    },
                    Some(None) => out.push(None),
                    None => {
                        out.push(None);
                        through_worker.push((i, k.to_vec()));
                    }
                })
            }),
            None => {
                for (i, key) in keys.iter().enumerate() {
                    out.push(None);
                    key.with_encoded(|k| through_worker.push((i, k.to_vec())));
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if !through_worker.is_empty() {
            for (i, entry) in self.mget(&through_worker, mode).await? {
                out[i] = entry.map(decode).transpose()?;
            }
        }
        Ok(out)
    }

    /// Reads `keys` through workers, as few MGETs as it takes.
    async fn mget(
        &self,
        keys: &[(usize, Vec<u8>)],
        mode: Mode,
    ) -> Result<Vec<(usize, Option<RawEntry>)>> {
        let conn = &self.conn;
        let capacity = conn.batch_capacity();
        let mut out = Vec::with_capacity(keys.len());
        let mut next = 0;
        let mut records = Encoder::new();
        while next < keys.len() {
            records.clear();
            for (_, k) in &keys[next..] {
                if !records.is_empty()
                    && records.len() + batch::key_record_bytes(k.len() as u64) > capacity
                {
                    break;
                }
                records.push_key(k);
            }
            let answer = self.send_batch(OpCode::MGet, &records, 0, mode).await?;
            let answered = answered(&answer.response, records.count())?;
            if answered == 0 {
                return Err(ClientError::Protocol(
                    "the server answered a batch read with no record".into(),
                ));
            }
            let values = batch::decode_values(&answer.value, answered).map_err(bad_answer)?;
            for ((head, value), (i, key)) in values.into_iter().zip(&keys[next..]) {
                let entry = match StatusCode::try_from(head.status) {
                    Ok(StatusCode::Ok) if head.flags & VALUE_TOO_LARGE != 0 => {
                        mode.apply(self.worker_read(key.clone(), raw)?).await?
                    }
                    Ok(StatusCode::Ok) => Some(RawEntry {
                        value,
                        version: head.version,
                        modified_ns: head.modified_ns,
                        deadline_ns: head.deadline_ns,
                    }),
                    _ => None,
                };
                out.push((*i, entry));
            }
            next += answered as usize;
        }
        Ok(out)
    }

    /// Inserts or replaces every entry, in order. Other clients may see
    /// some of them before others (each key changes atomically; the batch
    /// is not a transaction).
    ///
    /// # Errors
    ///
    /// [`ClientError::KeyLength`]/[`ClientError::ValueLength`] before
    /// anything is sent; [`ClientError::PartlyWritten`] when the store
    /// refused an entry (full): those before it are written, it and those
    /// after are not; and the errors of a request.
    pub fn set_many(&self, entries: &[(K, V)]) -> Result<()> {
        run_blocking(self.set_many_with(entries, 0, Mode::Blocking))
    }

    /// [`set_many`](Self::set_many) as a future.
    ///
    /// # Errors
    ///
    /// As [`set_many`](Self::set_many).
    pub async fn set_many_async(&self, entries: &[(K, V)]) -> Result<()> {
        self.set_many_with(entries, 0, Mode::Async).await
    }

    /// [`set_many`](Self::set_many), each entry expiring `ttl` from now.
    ///
    /// # Errors
    ///
    /// As [`set_many`](Self::set_many); [`ClientError::InvalidArgument`]
    /// for a zero `ttl`.
    pub fn set_many_with_ttl(&self, entries: &[(K, V)], ttl: Duration) -> Result<()> {
        let deadline = crate::operations::deadline_after(ttl)?;
        run_blocking(self.set_many_with(entries, deadline, Mode::Blocking))
    }

    /// [`set_many_with_ttl`](Self::set_many_with_ttl) as a future.
    ///
    /// # Errors
    ///
    /// As [`set_many_with_ttl`](Self::set_many_with_ttl).
    pub async fn set_many_with_ttl_async(&self, entries: &[(K, V)], ttl: Duration) -> Result<()> {
        let deadline = crate::operations::deadline_after(ttl)?;
        self.set_many_with(entries, deadline, Mode::Async).await
    }

    async fn set_many_with(&self, entries: &[(K, V)], deadline_ns: u64, mode: Mode) -> Result<()> {
        let conn = &self.conn;
        let capacity = conn.batch_capacity();
        // Lengths first, for every entry: nothing is sent if one is wrong.
        for (k, v) in entries {
            k.with_encoded(|k| v.with_encoded(|v| conn.check_lengths(k, Some(v))))?;
        }
        let mut records = Encoder::new();
        let mut written = 0usize;
        for (i, (k, v)) in entries.iter().enumerate() {
            k.with_encoded(|k| {
                v.with_encoded(|v| {
                    records.push_entry(k, v);
                })
            });
            let next_need = entries.get(i + 1).map_or(u64::MAX, |(k, v)| {
                k.with_encoded(|k| {
                    v.with_encoded(|v| batch::entry_record_bytes(k.len() as u64, v.len() as u64))
                })
            });
            // Send when the next entry would not fit (or there is none).
            if records.len().saturating_add(next_need) > capacity {
                for o in self
                    .send_writes(OpCode::MSet, &mut records, deadline_ns, mode)
                    .await?
                {
                    outcome_error(OpCode::MSet, &o).map_err(|e| ClientError::PartlyWritten {
                        written,
                        source: Box::new(e),
                    })?;
                    written += 1;
                }
            }
        }
        Ok(())
    }

    /// Removes every key; returns how many were present.
    ///
    /// # Errors
    ///
    /// [`ClientError::KeyLength`] before anything is sent, and the errors
    /// of a request.
    pub fn del_many<'k>(&self, keys: impl IntoIterator<Item = &'k K>) -> Result<usize>
    where
        K: 'k,
    {
        run_blocking(self.del_many_in(keys, Mode::Blocking))
    }

    /// [`del_many`](Self::del_many) as a future.
    ///
    /// # Errors
    ///
    /// As [`del_many`](Self::del_many).
    pub async fn del_many_async<'k>(&self, keys: impl IntoIterator<Item = &'k K>) -> Result<usize>
    where
        K: 'k,
    {
        self.del_many_in(keys, Mode::Async).await
    }

    async fn del_many_in<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k K>,
        mode: Mode,
    ) -> Result<usize>
    where
        K: 'k,
    {
        let conn = &self.conn;
        let capacity = conn.batch_capacity();
        let keys: Vec<&K> = keys.into_iter().collect();
        for k in &keys {
            k.with_encoded(|k| conn.check_lengths(k, None))?;
        }
        let mut records = Encoder::new();
        let mut removed = 0usize;
        for (i, k) in keys.iter().enumerate() {
            k.with_encoded(|k| records.push_key(k));
            let next_need = keys.get(i + 1).map_or(u64::MAX, |k| {
                k.with_encoded(|k| batch::key_record_bytes(k.len() as u64))
            });
            if records.len().saturating_add(next_need) > capacity {
                for o in self
                    .send_writes(OpCode::MDel, &mut records, 0, mode)
                    .await?
                {
                    removed += usize::from(o.status == StatusCode::Ok as u16);
                }
            }
        }
        Ok(removed)
    }
}

impl<K: Codec, V: Codec> KVSClient<K, V> {
    /// Sends the MSET or MDEL `records` (nothing when empty) and empties
    /// them; the outcomes, in order. Fewer outcomes than records only
    /// after a refused one (MSET stops there; an absent key is not
    /// refused); anything else short is a protocol error.
    async fn send_writes(
        &self,
        op: OpCode,
        records: &mut Encoder,
        arg3: u64,
        mode: Mode,
    ) -> Result<Vec<batch::Outcome>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let answer = self.send_batch(op, records, arg3, mode).await?;
        let answered = answered(&answer.response, records.count())?;
        let outcomes = batch::decode_outcomes(&answer.value, answered).map_err(bad_answer)?;
        let refused = outcomes
            .iter()
            .any(|o| o.status != StatusCode::Ok as u16 && o.status != StatusCode::NotFound as u16);
        if answered < records.count() && !refused {
            return Err(ClientError::Protocol(
                "the server answered part of a batch without saying why".into(),
            ));
        }
        records.clear();
        Ok(outcomes)
    }
}

impl<K: Codec, V: Codec> KVSClient<K, V> {
    /// Sends one batch request and waits for (or awaits) its answer, its
    /// status checked.
    async fn send_batch(
        &self,
        op: OpCode,
        records: &Encoder,
        arg3: u64,
        mode: Mode,
    ) -> Result<Answer> {
        let answer = mode.apply(self.batch_ticket(op, records, arg3)?).await?;
        check_status(op, &answer.response)?;
        Ok(answer)
    }
}

fn decode_plain<V: Codec>(entry: RawEntry) -> Result<V> {
    V::decode_vec(entry.value).map_err(ClientError::Decode)
}

/// A batch answer that does not decode.
fn bad_answer(e: batch::BatchError) -> ClientError {
    ClientError::Protocol(format!("batch answer: {e}"))
}

/// How many records an answer holds: at least one, at most as many as
/// were sent (fewer: an MGET out of room, with `MORE`, or an MSET that
/// stopped at a refused entry).
fn answered(response: &Response, sent: u64) -> Result<u64> {
    let n = u64::from(response.aux);
    if n > sent || (n == 0 && sent > 0) {
        return Err(ClientError::Protocol(format!(
            "a batch of {sent} answered with {n} records"
        )));
    }
    Ok(n)
}

/// A record's status as the error a single request would give.
fn outcome_error(op: OpCode, o: &batch::Outcome) -> Result<()> {
    let response = Response {
        status: o.status,
        aux: o.aux,
        ..Response::default()
    };
    match check_status(op, &response)? {
        StatusCode::Ok => Ok(()),
        s => Err(ClientError::Protocol(format!(
            "unexpected {s:?} in a batch"
        ))),
    }
}
