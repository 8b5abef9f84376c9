//! The client's one error enum.

use kvs_core::protocol::OpCode;
use kvs_core::RegionOpenError;
use std::time::Duration;

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No answer within the timeout; the request was abandoned and its slot
    /// will be freed (the server may still carry out a mutation).
    #[error("{op} timed out after {after:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The timeout that expired.
        after: Duration,
    },
    /// The request ring stayed full through a bounded backoff.
    #[error("the request queue is full (the server is overloaded or its workers are stopped)")]
    RingFull,
    /// Every response slot is in use.
    #[error("no free response slot (too many requests in flight)")]
    NoFreeSlot,
    /// The server died, stopped, or is shutting down.
    #[error("the server is gone (it stopped, died or is shutting down)")]
    ServerGone,
    /// Connecting failed: no server, wrong types or version, permissions.
    #[error(transparent)]
    Connect(#[from] RegionOpenError),
    /// A bad argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A key that is empty or longer than the store allows.
    #[error("a key is 1 to {max} bytes (kvs_server --max-key-size), this one is {len}")]
    KeyLength {
        /// Its length.
        len: usize,
        /// The store's limit (`kvs_server --max-key-size`).
        max: u64,
    },
    /// A value longer than the store allows.
    #[error("a value is at most {max} bytes (kvs_server --max-value-size), this one is {len}")]
    ValueLength {
        /// Its length.
        len: usize,
        /// The store's limit (`kvs_server --max-value-size`).
        max: u64,
    },
    /// Stored bytes that do not decode as the client's type (another
    /// client wrote them with another codec).
    #[error("the stored value does not decode: {0}")]
    Decode(kvs_core::DecodeError),
    /// A write the store has no room for: a new key beyond the entry
    /// limit, or an entry beyond the memory limit (a replacement too: its
    /// new block is written before the old one is freed).
    #[error("store full: {0}")]
    StoreFull(StoreLimit),
    /// INCR (or `get_counter`) of a value that is not a decimal integer.
    #[error("the value is not an integer (a counter is a decimal integer: an optional '-' and digits, no leading zeros)")]
    NotInteger,
    /// INCR whose result would not fit a 64-bit signed integer.
    #[error("increment would overflow a 64-bit signed integer")]
    Overflow,
    /// A `set_many` stopped at the entry the store refused: the entries
    /// before it are written, that one and those after it are not.
    #[error("set_many stopped at entry {written} (the {written} before it are written): {source}")]
    PartlyWritten {
        /// How many entries were written (the index of the refused one).
        written: usize,
        /// Why the store refused it.
        source: Box<ClientError>,
    },
    /// The server answered with a status this client cannot interpret, or
    /// refused the request as malformed.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Every staging buffer (requests with a large key or value, listing
    /// pages, backups in flight) stayed in use until the deadline.
    #[error(
        "no free staging buffer: too many requests with large keys or values, listings \
         or backups in flight (the server's --staging-buffers)"
    )]
    NoBulkBuffer,
    /// Every subscription entry is in use, or too many keys were named.
    #[error("cannot subscribe: {0}")]
    Subscribe(String),
    /// The server tried and failed (a snapshot it could not write, say).
    #[error("the server could not do it: {0}")]
    ServerFailed(String),
    /// The thread that wakes tasks awaiting answers could not be started.
    #[error("cannot start the thread that wakes tasks awaiting answers: {0}")]
    WakerThread(String),
    /// The response slot was taken from us (the server judged us dead).
    #[error("the response slot was reclaimed before the answer arrived")]
    SlotLost,
    /// This process is a fork of the one that connected: it must connect
    /// on its own (see the `fork` module).
    #[error("this client was connected by process {pid}; a forked child must connect on its own (KVSClient::connect)")]
    Forked {
        /// The process that connected.
        pid: u32,
    },
}

impl ClientError {
    pub(crate) fn timeout(op: OpCode, after: Duration) -> Self {
        ClientError::Timeout {
            op: op.name(),
            after,
        }
    }
}

/// `Result` with [`ClientError`].
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Which limit a [`ClientError::StoreFull`] write ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreLimit {
    /// The store's memory (`kvs_server --max-memory`).
    Memory,
    /// The number of entries (`kvs_server --max-entries`).
    Entries,
}

impl std::fmt::Display for StoreLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreLimit::Memory => "the server's memory limit (--max-memory) is reached",
            StoreLimit::Entries => "the server's entry limit (--max-entries) is reached",
        })
    }
}
