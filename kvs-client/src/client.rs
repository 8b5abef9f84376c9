//! `KVSClient<K, V>`: typed access to a kvs server from any process.
//!
//! The store holds bytes; a client's types go through a [`Codec`] each way
//! (see `kvs_core::codec`: integers, `String`, `Vec<u8>`, `bytes::Bytes`,
//! `Raw<T: Pod>`, serde types behind a feature). The defaults,
//! `KVSClient<Vec<u8>, Vec<u8>>`, are the bytes themselves. Reads go to the
//! store directly (see [`crate::conn`]); writes go through the server's
//! workers.

use crate::conn::{
    check_status, Answer, Args, ClientOptions, Conn, Deadline, RawEntry, Staging, Submitted,
};
use crate::error::{ClientError, Result};
use kvs_core::codec::Codec;
use kvs_core::protocol::{OpCode, StatusCode};
use kvs_core::region::Region;
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

/// An entry as GET returns it with its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versioned<V> {
    /// The value.
    pub value: V,
    /// The entry's version (the global version of its last mutation).
    pub version: u64,
    /// Last modification, unix nanoseconds.
    pub modified_ns: u64,
    /// When the entry expires, unix nanoseconds (0: never).
    pub deadline_ns: u64,
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

/// A connection to the server of one region, with keys `K` and values `V`.
pub struct KVSClient<K = Vec<u8>, V = Vec<u8>> {
    pub(crate) conn: Conn,
    _types: PhantomData<Types<K, V>>,
}

impl<K, V> fmt::Debug for KVSClient<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KVSClient")
            .field("conn", &self.conn)
            .finish()
    }
}

/// The client's types, for `PhantomData`: a function type, so the client
/// is `Send` and `Sync` whatever `K` and `V` are (it holds none of them).
type Types<K, V> = fn(K, V) -> (K, V);

pub(crate) fn decode_value<V: Codec>(entry: RawEntry) -> Result<Versioned<V>> {
    Ok(Versioned {
        value: V::decode_vec(entry.value).map_err(ClientError::Decode)?,
        version: entry.version,
        modified_ns: entry.modified_ns,
        deadline_ns: entry.deadline_ns,
    })
}

pub(crate) fn decode_set(a: Answer) -> Result<()> {
    match check_status(OpCode::Set, &a.response)? {
        StatusCode::Ok => Ok(()),
        s => Err(ClientError::Protocol(format!("unexpected {s:?} for set"))),
    }
}

pub(crate) fn decode_post(a: Answer) -> Result<bool> {
    match check_status(OpCode::Post, &a.response)? {
        StatusCode::Ok => Ok(true),
        StatusCode::Exists => Ok(false),
        s => Err(ClientError::Protocol(format!("unexpected {s:?} for post"))),
    }
}

pub(crate) fn decode_del(a: Answer) -> Result<bool> {
    match check_status(OpCode::Del, &a.response)? {
        StatusCode::Ok => Ok(true),
        StatusCode::NotFound => Ok(false),
        s => Err(ClientError::Protocol(format!("unexpected {s:?} for del"))),
    }
}

impl<K: Codec, V: Codec> KVSClient<K, V> {
    /// Connects to the server of region `name` with default options.
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] when there is no server, the region is of
    /// another layout version, or access is denied.
    pub fn connect(name: &str) -> Result<Self> {
        Self::connect_with(name, ClientOptions::default())
    }

    /// Connects with explicit options.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::connect`].
    pub fn connect_with(name: &str, options: ClientOptions) -> Result<Self> {
        Ok(Self {
            conn: Conn::connect(name, options)?,
            _types: PhantomData,
        })
    }

    /// The region this client talks to.
    pub fn region(&self) -> &Region {
        self.conn.region()
    }

    /// The options in force.
    pub fn options(&self) -> &ClientOptions {
        &self.conn.options
    }

    /// Changes the default timeout.
    pub fn set_default_timeout(&mut self, timeout: Duration) {
        self.conn.options.timeout = timeout;
    }

    /// The largest key and value (in bytes, encoded) the store allows.
    pub fn limits(&self) -> (u64, u64) {
        self.conn.limits()
    }

    /// Whether the server is alive and serving (one `poll` of the
    /// connection).
    pub fn server_alive(&self) -> bool {
        self.conn.server_alive()
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
        let name = self.conn.region().name().to_string();
        self.conn = Conn::connect(&name, self.conn.options.clone())?;
        Ok(())
    }

    // ---- synchronous ----

    /// The value of `key`, if present: read from the store directly.
    ///
    /// # Errors
    ///
    /// [`ClientError::Decode`] when the stored bytes are not a `V`; when a
    /// read has to go through a worker, its errors (timeout, server gone).
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        self.get_timeout(key, self.conn.options.timeout)
    }

    /// [`KVSClient::get`] with an explicit timeout (for a read that goes
    /// through a worker).
    ///
    /// # Errors
    ///
    /// As [`KVSClient::get`].
    pub fn get_timeout(&self, key: &K, timeout: Duration) -> Result<Option<V>> {
        Ok(self.get_entry_timeout(key, timeout)?.map(|e| e.value))
    }

    /// The entry of `key` with its version and modification time.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::get`].
    pub fn get_entry(&self, key: &K) -> Result<Option<Versioned<V>>> {
        self.get_entry_timeout(key, self.conn.options.timeout)
    }

    fn get_entry_timeout(&self, key: &K, timeout: Duration) -> Result<Option<Versioned<V>>> {
        key.with_encoded(|k| self.conn.get(k, timeout))?
            .map(decode_value)
            .transpose()
    }

    /// Inserts or replaces `key`.
    ///
    /// # Errors
    ///
    /// [`ClientError::StoreFull`] for a new key beyond the entry limit or
    /// an entry beyond the memory limit, [`ClientError::KeyLength`]/[`ClientError::ValueLength`] for
    /// what the store does not allow, and the errors of any request.
    pub fn set(&self, key: &K, value: &V) -> Result<()> {
        self.set_timeout(key, value, self.conn.options.timeout)
    }

    /// [`KVSClient::set`] with an explicit timeout.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::set`].
    pub fn set_timeout(&self, key: &K, value: &V, timeout: Duration) -> Result<()> {
        decode_set(self.write(OpCode::Set, key, value, Args::default(), timeout)?)
    }

    /// Inserts `key` only if absent; `false` when it exists.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::set`].
    pub fn post(&self, key: &K, value: &V) -> Result<bool> {
        self.post_timeout(key, value, self.conn.options.timeout)
    }

    /// [`KVSClient::post`] with an explicit timeout.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::set`].
    pub fn post_timeout(&self, key: &K, value: &V, timeout: Duration) -> Result<bool> {
        decode_post(self.write(OpCode::Post, key, value, Args::default(), timeout)?)
    }

    /// Removes `key`; `false` when it was absent.
    ///
    /// # Errors
    ///
    /// The errors of any request.
    pub fn del(&self, key: &K) -> Result<bool> {
        self.del_timeout(key, self.conn.options.timeout)
    }

    /// [`KVSClient::del`] with an explicit timeout.
    ///
    /// # Errors
    ///
    /// As [`KVSClient::del`].
    pub fn del_timeout(&self, key: &K, timeout: Duration) -> Result<bool> {
        let deadline = Deadline::after(timeout);
        let answer = key.with_encoded(|k| {
            self.conn.check_lengths(k, None)?;
            self.conn.call(OpCode::Del, k, None, 0, &deadline)
        })?;
        decode_del(answer)
    }

    /// A request with a key, a value and `args`, lengths checked first.
    pub(crate) fn write(
        &self,
        op: OpCode,
        key: &K,
        value: &V,
        args: Args,
        timeout: Duration,
    ) -> Result<Answer> {
        let deadline = Deadline::after(timeout);
        key.with_encoded(|k| {
            value.with_encoded(|v| {
                self.conn.check_lengths(k, Some(v))?;
                self.conn.call(op, k, Some(v), args, &deadline)
            })
        })
    }

    /// Runs every op and returns every answer, in order; each op gets its
    /// own result. Writes are pipelined (up to a window in flight), reads
    /// are done directly, and the ops take effect in the batch's order:
    /// a GET sees every earlier op of the batch, and a write is sent only
    /// once the earlier writes of its key are answered (the server's
    /// workers run requests in parallel, so two in flight could swap).
    pub fn batch(&self, ops: &[Op<K, V>], timeout: Duration) -> Vec<Result<Reply<V>>> {
        let window = 256.min(self.region().info().slot_count as usize / 2).max(1);
        let mut results: Vec<Option<Result<Reply<V>>>> = (0..ops.len()).map(|_| None).collect();
        let mut in_flight: VecDeque<(usize, Vec<u8>, Submitted)> = VecDeque::new();
        let deadline = Deadline::after(timeout);
        let collect = |in_flight: &mut VecDeque<(usize, Vec<u8>, Submitted)>,
                       results: &mut Vec<Option<Result<Reply<V>>>>| {
            if let Some((i, _, sub)) = in_flight.pop_front() {
                let op = sub.op;
                results[i] = Some(self.conn.wait(sub, &deadline).and_then(|a| {
                    Ok(match op {
                        OpCode::Set => decode_set(a).map(|()| Reply::Done)?,
                        OpCode::Post => Reply::Inserted(decode_post(a)?),
                        _ => Reply::Deleted(decode_del(a)?),
                    })
                }));
            }
        };
        for (i, op) in ops.iter().enumerate() {
            let (Op::Get(k) | Op::Set(k, _) | Op::Post(k, _) | Op::Del(k)) = op;
            let mut key = Vec::new();
            k.encode(&mut key);
            if let Op::Get(k) = op {
                while !in_flight.is_empty() {
                    collect(&mut in_flight, &mut results);
                }
                let left = deadline.instant().saturating_duration_since(Instant::now());
                results[i] = Some(self.get_timeout(k, left).map(Reply::Value));
                continue;
            }
            while in_flight.iter().any(|(_, k, _)| *k == key) {
                collect(&mut in_flight, &mut results);
            }
            loop {
                while in_flight.len() >= window {
                    collect(&mut in_flight, &mut results);
                }
                // Holding requests in flight, never wait for a slot or a
                // staging buffer: ours come free only when collected.
                let staging = if in_flight.is_empty() {
                    Staging::IfNeeded
                } else {
                    Staging::NoWait
                };
                let submitted = match op {
                    Op::Set(_, v) | Op::Post(_, v) => {
                        let code = if matches!(op, Op::Set(..)) {
                            OpCode::Set
                        } else {
                            OpCode::Post
                        };
                        v.with_encoded(|v| {
                            self.conn.check_lengths(&key, Some(v))?;
                            self.conn.submit(code, &key, Some(v), 0, &deadline, staging)
                        })
                    }
                    _ => self.conn.check_lengths(&key, None).and_then(|()| {
                        self.conn
                            .submit(OpCode::Del, &key, None, 0, &deadline, staging)
                    }),
                };
                match submitted {
                    Ok(sub) => {
                        in_flight.push_back((i, key, sub));
                        break;
                    }
                    Err(ClientError::NoFreeSlot | ClientError::NoBulkBuffer)
                        if !in_flight.is_empty() =>
                    {
                        collect(&mut in_flight, &mut results);
                    }
                    // Other clients hold every slot: they come free as the
                    // workers answer, so go on trying until the deadline.
                    Err(ClientError::NoFreeSlot) if Instant::now() < deadline.instant() => {}
                    Err(e) => {
                        results[i] = Some(Err(e));
                        break;
                    }
                }
            }
        }
        while !in_flight.is_empty() {
            collect(&mut in_flight, &mut results);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(ClientError::Protocol("op not submitted".into()))))
            .collect()
    }
}
