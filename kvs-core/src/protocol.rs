//! Op codes, status codes, and the request and answer records that travel
//! in a response slot, with the rules of which op carries what.
//!
//! This module is the one place that knows the wire: which op carries a
//! value ([`OpCode::carries_value`]), how a request's and an answer's
//! header words are packed ([`Request::encode`], [`Request::decode`],
//! [`Response::encode`], [`Response::decode`]), and where the bytes go
//! ([`Payload`]). The client and the server's workers call these and
//! nothing else.
//!
//! A slot holds a header of [`REQUEST_WORDS`] words for the request, one of
//! [`RESPONSE_WORDS`] for the answer, and a data area of [`INLINE_BYTES`]
//! shared by both: the request's key then value (each padded to 8 bytes),
//! later the answer's value. When they do not fit, the client puts them in
//! a staging buffer it owns ([`crate::bulk`]) and says so with [`STAGED`]
//! and the buffer's index and generation in `arg`; a GET whose value does
//! not fit inline is answered [`VALUE_TOO_LARGE`] with the length, and the
//! client asks again with a staging buffer for it.
//!
//! ```text
//! request  word 0: op (16 bits) | flags (16) | slot generation (32)
//!          word 1: key length (32) | value length (32)
//!          word 2: arg   (a staging buffer: index | generation << 32; a stripe; ...)
//!          word 3: arg2  (SET, POST, EXPIRE: the deadline, unix ns, 0 for none;
//!                         INCR: the delta as i64; LIST: the stripe;
//!                         MGET, MSET, MDEL: the record count)
//!          word 4: arg3  (with IF_VERSION: the version expected, 0 for absent;
//!                         MSET: the deadline)
//! answer   word 0: status (16) | flags (16) | slot generation (32)
//!          word 1: version
//!          word 2: modified, unix ns (GET); entries (STATUS)
//!          word 3: value length (32) | aux (32)
//!          word 4: aux64 (op-specific: the deadline (GET), memory in use
//!                  (STATUS), the new value as i64 (INCR), ...)
//! ```
//!
//! Conditions and expiry: a SET or POST with [`IF_VERSION`] is made only if
//! the key's version is `arg3` (0: only if absent), else answered
//! [`StatusCode::VersionMismatch`] with the current version (0 if absent);
//! DEL likewise. A SET or POST sets the deadline `arg2` (0: none, which
//! clears an old one, as Redis's SET does) unless [`KEEP_TTL`] says to keep
//! the entry's own. An entry whose deadline has passed is absent for every
//! op. INCR keeps the deadline.
//!
//! ```text
//! ```
//!
//! Every word is an `AtomicU64` in the region, written and read once. The
//! reader copies the header out and then validates the copy
//! ([`Request::op`], [`StatusCode::try_from`], lengths against the data
//! area); it never validates in place and reads again.
//!
//! ```
//! use kvs_core::protocol::{OpCode, Request, REQUEST_WORDS};
//! use std::sync::atomic::AtomicU64;
//!
//! let words: [AtomicU64; REQUEST_WORDS] = Default::default();
//! let req = Request { op: OpCode::Set as u16, generation: 17, key_len: 3, value_len: 5, ..Request::default() };
//! req.encode(&words);
//! let back = Request::decode(&words);
//! assert_eq!(back.op(), Ok(OpCode::Set));
//! assert_eq!((back.generation, back.key_len, back.value_len), (17, 3, 5));
//! assert!(OpCode::Set.carries_value() && !OpCode::Get.carries_value());
//! ```

use crate::sync::{AtomicU64, Ordering};

/// Words of a request header.
pub const REQUEST_WORDS: usize = 5;
/// Words of an answer header.
pub const RESPONSE_WORDS: usize = 5;
/// Bytes of a slot's data area (shared by the request and its answer).
#[cfg(not(loom))]
pub const INLINE_BYTES: usize = 1024;
/// Bytes of a slot's data area (shared by the request and its answer).
#[cfg(loom)]
pub const INLINE_BYTES: usize = 16;
/// Words of a slot's data area.
pub const INLINE_WORDS: usize = INLINE_BYTES / 8;

/// Request flag: key and value are in the staging buffer named by `arg`,
/// not inline. Answer flag: the value is in that staging buffer.
pub const STAGED: u16 = 1;
/// Answer flag: the value did not fit the slot and the request named no
/// staging buffer; `value_len` says how long it is.
pub const VALUE_TOO_LARGE: u16 = 2;
/// Answer flag (listing): more remain after this page.
pub const MORE: u16 = 4;
/// Request flag (SET, POST, DEL): only if the key's version is `arg3`.
pub const IF_VERSION: u16 = 2;
/// Request flag (SET, POST): keep the entry's deadline; `arg2` is ignored.
pub const KEEP_TTL: u16 = 4;

/// What a request asks the server to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum OpCode {
    /// Read the value of a key (when a direct read could not).
    Get = 1,
    /// Insert or replace (upsert).
    Set = 2,
    /// Insert only if the key is absent.
    Post = 3,
    /// Remove a key.
    Del = 4,
    /// Ask for the store's version, entry count and memory.
    Status = 5,
    /// Keys of one stripe (when a direct read could not).
    ListPage = 6,
    /// Write a snapshot to the file named inline.
    Backup = 7,
    /// Set (`arg2` > 0) or clear (`arg2` = 0) a key's deadline.
    Expire = 8,
    /// Add `arg2` (an i64) to a key's decimal integer value.
    Incr = 9,
    /// Read many keys in one request (see [`crate::batch`]).
    MGet = 10,
    /// Write many entries in one request; `arg3` is their deadline (0:
    /// none).
    MSet = 11,
    /// Remove many keys in one request.
    MDel = 12,
}

impl OpCode {
    /// Every op code, in wire order.
    pub const ALL: [OpCode; 12] = [
        OpCode::Get,
        OpCode::Set,
        OpCode::Post,
        OpCode::Del,
        OpCode::Status,
        OpCode::ListPage,
        OpCode::Backup,
        OpCode::Expire,
        OpCode::Incr,
        OpCode::MGet,
        OpCode::MSet,
        OpCode::MDel,
    ];

    /// Whether a request of this op carries a value (SET and POST; the
    /// batches carry their records as the value).
    pub fn carries_value(self) -> bool {
        matches!(
            self,
            OpCode::Set | OpCode::Post | OpCode::MGet | OpCode::MSet | OpCode::MDel
        )
    }

    /// Whether this op is a batch (see [`crate::batch`]).
    pub fn is_batch(self) -> bool {
        matches!(self, OpCode::MGet | OpCode::MSet | OpCode::MDel)
    }

    /// A lowercase name, as the CLI and the status view print it.
    pub fn name(self) -> &'static str {
        match self {
            OpCode::Get => "get",
            OpCode::Set => "set",
            OpCode::Post => "post",
            OpCode::Del => "del",
            OpCode::Status => "status",
            OpCode::ListPage => "list",
            OpCode::Backup => "backup",
            OpCode::Expire => "expire",
            OpCode::Incr => "incr",
            OpCode::MGet => "mget",
            OpCode::MSet => "mset",
            OpCode::MDel => "mdel",
        }
    }
}

/// An op code or status code read from the region was not a known value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value}")]
pub struct UnknownCode {
    /// Which kind of code.
    pub what: &'static str,
    /// The raw value found.
    pub value: u32,
}

impl TryFrom<u16> for OpCode {
    type Error = UnknownCode;

    fn try_from(value: u16) -> Result<Self, Self::Error> {
        OpCode::ALL
            .into_iter()
            .find(|op| *op as u16 == value)
            .ok_or(UnknownCode {
                what: "op code",
                value: u32::from(value),
            })
    }
}

/// `aux` of a [`StatusCode::StoreFull`] answer: the memory limit.
pub const FULL_MEMORY: u32 = 1;
/// `aux` of a [`StatusCode::StoreFull`] answer: the entry limit.
pub const FULL_ENTRIES: u32 = 2;

/// How the server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum StatusCode {
    /// Done; for GET the value is in the answer.
    Ok = 0,
    /// GET or DEL of an absent key.
    NotFound = 1,
    /// POST of a key that exists.
    Exists = 2,
    /// SET or POST beyond the entry or memory limit; the answer's `aux`
    /// says which ([`FULL_MEMORY`] or [`FULL_ENTRIES`]).
    StoreFull = 3,
    /// The request was malformed (unknown op code, bad field or length).
    Malformed = 4,
    /// The server does not support this op.
    Unsupported = 5,
    /// The server failed to carry out the request (an I/O error, say).
    Failed = 6,
    /// INCR of a value that is not a decimal integer (see
    /// [`crate::counter`]).
    NotInteger = 7,
    /// INCR whose result would not fit an i64.
    Overflow = 8,
    /// A conditional write or DEL found another version; the answer's
    /// `version` is the current one (0: absent).
    VersionMismatch = 9,
}

impl StatusCode {
    const ALL: [StatusCode; 10] = [
        StatusCode::Ok,
        StatusCode::NotFound,
        StatusCode::Exists,
        StatusCode::StoreFull,
        StatusCode::Malformed,
        StatusCode::Unsupported,
        StatusCode::Failed,
        StatusCode::NotInteger,
        StatusCode::Overflow,
        StatusCode::VersionMismatch,
    ];
}

impl TryFrom<u16> for StatusCode {
    type Error = UnknownCode;

    fn try_from(value: u16) -> Result<Self, Self::Error> {
        StatusCode::ALL
            .into_iter()
            .find(|s| *s as u16 == value)
            .ok_or(UnknownCode {
                what: "status code",
                value: u32::from(value),
            })
    }
}

/// A request header, as a copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Request {
    /// An [`OpCode`] as `u16`.
    pub op: u16,
    /// [`STAGED`] or 0.
    pub flags: u16,
    /// Generation of the response slot when the client claimed it.
    pub generation: u32,
    /// Bytes of the key.
    pub key_len: u32,
    /// Bytes of the value (SET, POST).
    pub value_len: u32,
    /// Op-specific (a staging buffer, a stripe).
    pub arg: u64,
    /// Op-specific.
    pub arg2: u64,
    /// The version expected, with [`IF_VERSION`].
    pub arg3: u64,
}

impl Request {
    /// The decoded op code.
    ///
    /// # Errors
    ///
    /// [`UnknownCode`] when the field holds no known op.
    pub fn op(&self) -> Result<OpCode, UnknownCode> {
        OpCode::try_from(self.op)
    }

    /// Whether key and value are in a staging buffer.
    pub fn staged(&self) -> bool {
        self.flags & STAGED != 0
    }

    /// Where the key and the value are in the data (inline, or a staging
    /// buffer's data).
    pub fn payload(&self) -> Payload {
        Payload::new(u64::from(self.key_len), u64::from(self.value_len))
    }

    /// Stores the header into `words` (one store per word).
    pub fn encode(&self, words: &[AtomicU64; REQUEST_WORDS]) {
        let w = [
            u64::from(self.op) | u64::from(self.flags) << 16 | u64::from(self.generation) << 32,
            u64::from(self.key_len) | u64::from(self.value_len) << 32,
            self.arg,
            self.arg2,
            self.arg3,
        ];
        for (slot, v) in words.iter().zip(w) {
            slot.store(v, Ordering::Relaxed);
        }
    }

    /// Loads a header from `words` (one load per word). Validate the copy.
    pub fn decode(words: &[AtomicU64; REQUEST_WORDS]) -> Self {
        let w: [u64; REQUEST_WORDS] = std::array::from_fn(|i| words[i].load(Ordering::Relaxed));
        Self {
            op: w[0] as u16,
            flags: (w[0] >> 16) as u16,
            generation: (w[0] >> 32) as u32,
            key_len: w[1] as u32,
            value_len: (w[1] >> 32) as u32,
            arg: w[2],
            arg2: w[3],
            arg3: w[4],
        }
    }
}

/// An answer header, as a copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Response {
    /// A [`StatusCode`] as `u16`.
    pub status: u16,
    /// [`STAGED`], [`VALUE_TOO_LARGE`], [`MORE`].
    pub flags: u16,
    /// The slot generation this answers (set by the slot table; the owner
    /// refuses an answer for another generation).
    pub generation: u32,
    /// The entry's version, or the op's result.
    pub version: u64,
    /// The entry's last-modified time (GET), or op-specific.
    pub modified_ns: u64,
    /// Bytes of the value.
    pub value_len: u32,
    /// Op-specific.
    pub aux: u32,
    /// Op-specific.
    pub aux64: u64,
}

impl Response {
    /// An answer with only a status.
    pub fn status(status: StatusCode) -> Self {
        Self {
            status: status as u16,
            ..Self::default()
        }
    }

    /// The decoded status code.
    ///
    /// # Errors
    ///
    /// [`UnknownCode`] when the field holds no known status.
    pub fn status_code(&self) -> Result<StatusCode, UnknownCode> {
        StatusCode::try_from(self.status)
    }

    /// Whether the value is in the slot's data area (and fits it).
    pub fn value_inline(&self) -> bool {
        self.flags & (STAGED | VALUE_TOO_LARGE) == 0 && self.value_len as usize <= INLINE_BYTES
    }

    /// Stores the header into `words` with the slot's `generation`.
    pub fn encode(&self, words: &[AtomicU64; RESPONSE_WORDS], generation: u32) {
        let w = [
            u64::from(self.status) | u64::from(self.flags) << 16 | u64::from(generation) << 32,
            self.version,
            self.modified_ns,
            u64::from(self.value_len) | u64::from(self.aux) << 32,
            self.aux64,
        ];
        for (slot, v) in words.iter().zip(w) {
            slot.store(v, Ordering::Relaxed);
        }
    }

    /// Loads a header from `words`. Validate the copy.
    pub fn decode(words: &[AtomicU64; RESPONSE_WORDS]) -> Self {
        let w: [u64; RESPONSE_WORDS] = std::array::from_fn(|i| words[i].load(Ordering::Relaxed));
        Self {
            status: w[0] as u16,
            flags: (w[0] >> 16) as u16,
            generation: (w[0] >> 32) as u32,
            version: w[1],
            modified_ns: w[2],
            value_len: w[3] as u32,
            aux: (w[3] >> 32) as u32,
            aux64: w[4],
        }
    }
}

/// Where a request's key and value lie in a data area: the key at 0, the
/// value after it, each padded to 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// Bytes of the key.
    pub key_len: u64,
    /// Bytes of the value.
    pub value_len: u64,
}

impl Payload {
    /// The layout of a key and a value.
    pub const fn new(key_len: u64, value_len: u64) -> Self {
        Self { key_len, value_len }
    }

    /// Offset of the value.
    pub const fn value_at(&self) -> u64 {
        self.key_len.div_ceil(8) * 8
    }

    /// Bytes of the whole payload.
    pub const fn bytes(&self) -> u64 {
        self.value_at() + self.value_len.div_ceil(8) * 8
    }

    /// Whether it fits a slot's data area.
    pub const fn fits_inline(&self) -> bool {
        self.bytes() <= INLINE_BYTES as u64
    }
}

/// A staging buffer's reference as it travels in `arg`: its index and the
/// generation of its claim.
pub const fn staging_arg(index: u32, generation: u32) -> u64 {
    index as u64 | (generation as u64) << 32
}

/// The index and generation in a staging `arg`.
pub const fn staging_of(arg: u64) -> (u32, u32) {
    (arg as u32, (arg >> 32) as u32)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn op_codes_round_trip() {
        for op in OpCode::ALL {
            assert_eq!(OpCode::try_from(op as u16), Ok(op));
        }
        assert!(OpCode::try_from(0).is_err());
        assert!(OpCode::try_from(u16::MAX).is_err());
        assert!(OpCode::ALL
            .iter()
            .filter(|op| op.carries_value() && !op.is_batch())
            .eq(&[OpCode::Set, OpCode::Post]));
        assert!(OpCode::ALL
            .iter()
            .filter(|op| op.is_batch())
            .all(|op| op.carries_value()));
    }

    #[test]
    fn status_codes_round_trip() {
        for s in StatusCode::ALL {
            assert_eq!(StatusCode::try_from(s as u16), Ok(s));
        }
        assert!(StatusCode::try_from(StatusCode::ALL.len() as u16).is_err());
        assert!(StatusCode::try_from(u16::MAX).is_err());
    }

    #[test]
    fn payloads_pad_key_and_value_to_words() {
        let p = Payload::new(3, 9);
        assert_eq!((p.value_at(), p.bytes()), (8, 24));
        assert!(p.fits_inline());
        assert!(!Payload::new(1000, 25).fits_inline());
        assert!(Payload::new(INLINE_BYTES as u64, 0).fits_inline());
        assert_eq!(staging_of(staging_arg(7, 9)), (7, 9));
    }

    proptest! {
        /// Headers round-trip through their words, field by field.
        #[test]
        fn headers_round_trip(op in any::<u16>(), flags in any::<u16>(), generation in any::<u32>(),
                              k in any::<u32>(), v in any::<u32>(), a in any::<u64>(), b in any::<u64>()) {
            let words: [AtomicU64; REQUEST_WORDS] = Default::default();
            let req = Request { op, flags, generation, key_len: k, value_len: v, arg: a, arg2: b, arg3: a.rotate_left(7) ^ b };
            req.encode(&words);
            prop_assert_eq!(Request::decode(&words), req);
            let words: [AtomicU64; RESPONSE_WORDS] = Default::default();
            let resp = Response { status: op, flags, generation, version: a, modified_ns: b, value_len: k, aux: v, aux64: a ^ b };
            resp.encode(&words, generation);
            prop_assert_eq!(Response::decode(&words), resp);
        }

        /// Decoding arbitrary words never panics and accepts exactly the
        /// known codes.
        #[test]
        fn decoding_arbitrary_words_never_panics(w in proptest::collection::vec(any::<u64>(), 5)) {
            let req_words: [AtomicU64; REQUEST_WORDS] = std::array::from_fn(|i| AtomicU64::new(w[i]));
            let req = Request::decode(&req_words);
            prop_assert_eq!(req.op().is_ok(), (1..=7).contains(&req.op));
            let resp_words: [AtomicU64; RESPONSE_WORDS] = std::array::from_fn(|i| AtomicU64::new(w[i]));
            let resp = Response::decode(&resp_words);
            prop_assert_eq!(resp.status_code().is_ok(), resp.status <= 6);
            let _ = resp.value_inline();
            let _ = req.payload().bytes();
        }
    }
}
