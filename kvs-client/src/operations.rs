//! Expiry, counters and compare-and-set: the operations that applications
//! on Redis and etcd use most besides GET and SET.
//!
//! * **Expiry** ([`KVSClient::set_with_ttl`], [`KVSClient::expire`],
//!   [`KVSClient::persist`], [`KVSClient::ttl`]): a deadline is kept in the
//!   entry as an absolute time (unix ns). An entry is invisible from its
//!   deadline on, to direct reads as well; the server removes it later
//!   (lazily, or by its active sweep). A plain `set` clears a deadline, as
//!   Redis's SET does; `incr` keeps it, as Redis's INCR does. `expire`
//!   rewrites the entry with its value (a new version: entries are written
//!   once), so it costs a copy of the value.
//! * **Counters** ([`KVSClient::incr`], [`KVSClient::get_counter`]): the
//!   value is a decimal integer in ASCII (`kvs_core::counter`), whatever
//!   `V` is, so that text tools show it as it is.
//! * **Compare-and-set** ([`KVSClient::set_if_version`],
//!   [`KVSClient::del_if_version`], [`KVSClient::update`]): every entry
//!   carries the version of its last change ([`KVSClient::get_entry`]); a
//!   conditional write is made only if the version is still the one read
//!   (0: only if absent), as etcd's compare on `mod_revision`.

use crate::client::{decode_set, KVSClient};
use crate::conn::{check_status, Answer, Args, RawEntry};
use crate::error::{ClientError, Result};
use crate::ticket::Ticket;
use kvs_core::codec::Codec;
use kvs_core::protocol::{OpCode, StatusCode, IF_VERSION, KEEP_TTL};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The outcome of a compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    /// Made; the version of the change.
    Done(u64),
    /// Not made: the key's version is this one (0: absent).
    Conflict(u64),
}

/// How long a key lives, as [`KVSClient::ttl`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// No deadline.
    Persistent,
    /// Expires after this long (rounded down to the millisecond).
    Expires(Duration),
}

/// The unix-ns deadline `ttl` from now; a zero TTL is refused (it would
/// mean "no deadline" on the wire).
pub(crate) fn deadline_after(ttl: Duration) -> Result<u64> {
    if ttl.is_zero() {
        return Err(ClientError::InvalidArgument(
            "a TTL must be longer than zero (use del to remove a key now)".into(),
        ));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let ttl = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
    Ok(now.saturating_add(ttl).min(u64::MAX - 1))
}

impl<K: Codec, V: Codec> KVSClient<K, V> {
    /// Sets `key` to `value`, expiring after `ttl`.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::set`]; [`ClientError::InvalidArgument`] for a zero
    /// TTL.
    pub fn set_with_ttl(&self, key: &K, value: &V, ttl: Duration) -> Result<()> {
        self.set_with_ttl_async(key, value, ttl)?
            .wait(self.conn.options.timeout)
    }

    /// [`KVSClient::set_with_ttl`] as a [`Ticket`].
    ///
    /// # Errors
    ///
    /// As [`KVSClient::set_async`]; a zero TTL.
    pub fn set_with_ttl_async(
        &self,
        key: &K,
        value: &V,
        ttl: Duration,
    ) -> Result<Ticket<'_, K, V, ()>> {
        let args = Args {
            arg2: deadline_after(ttl)?,
            ..Args::default()
        };
        self.write_ticket(OpCode::Set, key, value, args, decode_set)
    }

    /// Gives `key` a deadline `ttl` from now; `false` if it is absent.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::set`] (the entry is rewritten).
    pub fn expire(&self, key: &K, ttl: Duration) -> Result<bool> {
        self.expire_async(key, ttl)?.wait(self.conn.options.timeout)
    }

    /// [`KVSClient::expire`] as a [`Ticket`].
    ///
    /// # Errors
    ///
    /// As [`KVSClient::set_async`]; a zero TTL.
    pub fn expire_async(&self, key: &K, ttl: Duration) -> Result<Ticket<'_, K, V, bool>> {
        let deadline = deadline_after(ttl)?;
        self.keyed_ticket(OpCode::Expire, key, Args::from(deadline), decode_expire)
    }

    /// Removes `key`'s deadline; `false` if it is absent.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::expire`].
    pub fn persist(&self, key: &K) -> Result<bool> {
        self.persist_async(key)?.wait(self.conn.options.timeout)
    }

    /// [`KVSClient::persist`] as a [`Ticket`].
    ///
    /// # Errors
    ///
    /// As [`KVSClient::set_async`].
    pub fn persist_async(&self, key: &K) -> Result<Ticket<'_, K, V, bool>> {
        self.keyed_ticket(OpCode::Expire, key, Args::from(0), decode_expire)
    }

    /// How long `key` lives: `None` if it is absent (or expired).
    ///
    /// # Errors
    ///
    /// As [`KVSClient::get`].
    pub fn ttl(&self, key: &K) -> Result<Option<Ttl>> {
        self.ttl_async(key)?.wait(self.conn.options.timeout)
    }

    /// [`KVSClient::ttl`] as a [`Ticket`] (ready at once when read
    /// directly).
    ///
    /// # Errors
    ///
    /// As [`KVSClient::get_async`].
    pub fn ttl_async(&self, key: &K) -> Result<Ticket<'_, K, V, Option<Ttl>>> {
        self.entry_ticket(key, ttl_of)
    }

    /// Adds `delta` to the counter at `key` (absent: 0) and returns the new
    /// value, atomically in the server. The deadline stays.
    ///
    /// # Errors
    ///
    /// [`ClientError::NotInteger`] when the value is not a decimal integer,
    /// [`ClientError::Overflow`] when the result does not fit an `i64`;
    /// neither changes anything. Otherwise as [`KVSClient::set`].
    pub fn incr(&self, key: &K, delta: i64) -> Result<i64> {
        self.incr_async(key, delta)?.wait(self.conn.options.timeout)
    }

    /// [`KVSClient::incr`] as a [`Ticket`].
    ///
    /// # Errors
    ///
    /// As [`KVSClient::set_async`].
    pub fn incr_async(&self, key: &K, delta: i64) -> Result<Ticket<'_, K, V, i64>> {
        self.keyed_ticket(OpCode::Incr, key, Args::from(delta as u64), decode_incr)
    }

    /// The counter at `key` (see [`KVSClient::incr`]).
    ///
    /// # Errors
    ///
    /// [`ClientError::NotInteger`] when the value is not a decimal integer;
    /// otherwise as [`KVSClient::get`].
    pub fn get_counter(&self, key: &K) -> Result<Option<i64>> {
        self.entry_ticket(key, counter_of)?
            .wait(self.conn.options.timeout)
    }

    /// Sets `key` to `value` only if its version is `expected` (0: only if
    /// absent). The deadline is cleared, as by [`KVSClient::set`].
    ///
    /// # Errors
    ///
    /// As [`KVSClient::set`].
    pub fn set_if_version(&self, key: &K, value: &V, expected: u64) -> Result<Cas> {
        self.set_if_version_async(key, value, expected)?
            .wait(self.conn.options.timeout)
    }

    /// [`KVSClient::set_if_version`], the entry expiring after `ttl`
    /// (when the set is made).
    ///
    /// # Errors
    ///
    /// As [`KVSClient::set_with_ttl`].
    pub fn set_if_version_with_ttl(
        &self,
        key: &K,
        value: &V,
        expected: u64,
        ttl: Duration,
    ) -> Result<Cas> {
        self.set_if_version_with_ttl_async(key, value, expected, ttl)?
            .wait(self.conn.options.timeout)
    }

    /// [`KVSClient::set_if_version_with_ttl`] as a [`Ticket`].
    ///
    /// # Errors
    ///
    /// As [`KVSClient::set_with_ttl_async`].
    pub fn set_if_version_with_ttl_async(
        &self,
        key: &K,
        value: &V,
        expected: u64,
        ttl: Duration,
    ) -> Result<Ticket<'_, K, V, Cas>> {
        let args = Args {
            arg2: deadline_after(ttl)?,
            arg3: expected,
            flags: IF_VERSION,
        };
        self.write_ticket(OpCode::Set, key, value, args, decode_cas_set)
    }

    /// [`KVSClient::set_if_version`] as a [`Ticket`].
    ///
    /// # Errors
    ///
    /// As [`KVSClient::set_async`].
    pub fn set_if_version_async(
        &self,
        key: &K,
        value: &V,
        expected: u64,
    ) -> Result<Ticket<'_, K, V, Cas>> {
        let args = Args {
            arg3: expected,
            flags: IF_VERSION,
            ..Args::default()
        };
        self.write_ticket(OpCode::Set, key, value, args, decode_cas_set)
    }

    /// Removes `key` only if its version is `expected`.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::del`].
    pub fn del_if_version(&self, key: &K, expected: u64) -> Result<Cas> {
        self.del_if_version_async(key, expected)?
            .wait(self.conn.options.timeout)
    }

    /// [`KVSClient::del_if_version`] as a [`Ticket`].
    ///
    /// # Errors
    ///
    /// As [`KVSClient::del_async`].
    pub fn del_if_version_async(&self, key: &K, expected: u64) -> Result<Ticket<'_, K, V, Cas>> {
        let args = Args {
            arg3: expected,
            flags: IF_VERSION,
            ..Args::default()
        };
        self.keyed_ticket(OpCode::Del, key, args, decode_cas_del)
    }

    /// Reads `key`, computes its new value with `f` (from the current one,
    /// `None` if absent) and writes it if nobody changed the key meanwhile,
    /// retrying otherwise; returns the value written and its version. `f`
    /// may run more than once. The deadline is kept.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::get`] and [`KVSClient::set`];
    /// [`ClientError::Timeout`] when the retries take longer than the
    /// client's timeout.
    pub fn update(&self, key: &K, mut f: impl FnMut(Option<V>) -> V) -> Result<(V, u64)> {
        let give_up = std::time::Instant::now() + self.conn.options.timeout;
        loop {
            let current = self.get_entry(key)?;
            let expected = current.as_ref().map_or(0, |e| e.version);
            let new = f(current.map(|e| e.value));
            let args = Args {
                arg3: expected,
                flags: IF_VERSION | KEEP_TTL,
                ..Args::default()
            };
            let cas = self
                .write_ticket(OpCode::Set, key, &new, args, decode_cas_set)?
                .wait(self.conn.options.timeout)?;
            match cas {
                Cas::Done(v) => return Ok((new, v)),
                Cas::Conflict(_) if std::time::Instant::now() < give_up => std::thread::yield_now(),
                Cas::Conflict(_) => {
                    return Err(ClientError::Timeout {
                        op: "update",
                        after: self.conn.options.timeout,
                    })
                }
            }
        }
    }
}

fn decode_expire(answer: Answer) -> Result<bool> {
    match check_status(OpCode::Expire, &answer.response)? {
        StatusCode::Ok => Ok(true),
        StatusCode::NotFound => Ok(false),
        s => Err(unexpected(s, "expire")),
    }
}

fn decode_incr(answer: Answer) -> Result<i64> {
    match check_status(OpCode::Incr, &answer.response)? {
        StatusCode::Ok => Ok(answer.response.aux64 as i64),
        StatusCode::NotInteger => Err(ClientError::NotInteger),
        StatusCode::Overflow => Err(ClientError::Overflow),
        s => Err(unexpected(s, "incr")),
    }
}

fn decode_cas_set(answer: Answer) -> Result<Cas> {
    cas_of(OpCode::Set, &answer.response)
}

fn decode_cas_del(answer: Answer) -> Result<Cas> {
    match check_status(OpCode::Del, &answer.response)? {
        StatusCode::NotFound => Ok(Cas::Conflict(0)),
        _ => cas_of(OpCode::Del, &answer.response),
    }
}

fn ttl_of(entry: Option<RawEntry>) -> Result<Option<Ttl>> {
    let Some(entry) = entry else {
        return Ok(None);
    };
    if entry.deadline_ns == 0 {
        return Ok(Some(Ttl::Persistent));
    }
    let now = kvs_core::clock::unix_now_ns();
    Ok(Some(Ttl::Expires(Duration::from_millis(
        entry.deadline_ns.saturating_sub(now) / 1_000_000,
    ))))
}

fn counter_of(entry: Option<RawEntry>) -> Result<Option<i64>> {
    entry
        .map(|e| kvs_core::counter::parse(&e.value).map_err(|_| ClientError::NotInteger))
        .transpose()
}

fn cas_of(op: OpCode, response: &kvs_core::protocol::Response) -> Result<Cas> {
    match check_status(op, response)? {
        StatusCode::Ok => Ok(Cas::Done(response.version)),
        StatusCode::VersionMismatch => Ok(Cas::Conflict(response.version)),
        s => Err(unexpected(s, op.name())),
    }
}

fn unexpected(s: StatusCode, op: &str) -> ClientError {
    ClientError::Protocol(format!("unexpected {s:?} for {op}"))
}
