//! Op codes, status codes, and the request and response records that cross
//! the region, with the rules of which op carries what.
//!
//! Both records are `#[repr(C)]` and made of `Pod` fields only, so whatever
//! another process wrote into them is a valid value. They travel in a
//! response slot (see [`crate::response_table`]), which copies them field
//! by field (never a padding byte) and only the fields the op uses
//! ([`OpCode::carries_value`], [`OpCode::answer_carries_value`]); the
//! reader copies a record out of the region first and then validates the
//! copy ([`Request::op`], [`StatusCode::try_from`]); it never validates in
//! place and reads again.
//!
//! ```
//! use kvs_core::protocol::{OpCode, Request};
//!
//! let req = Request::<u64, u64>::new(OpCode::Set, 17, 0, 42, 7);
//! assert_eq!(req.op(), Ok(OpCode::Set));
//! assert!(OpCode::Set.carries_value() && !OpCode::Get.carries_value());
//! let mut bad = req;
//! bad.op = 99;
//! assert!(bad.op().is_err());
//! ```

use std::fmt;

/// What a request asks the server to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum OpCode {
    /// Read the value of a key.
    Get = 1,
    /// Insert or replace (upsert).
    Set = 2,
    /// Insert only if the key is absent.
    Post = 3,
    /// Remove a key.
    Del = 4,
    /// Ask for the server's status counters (answered through the region).
    Status = 5,
    /// Read one page of the listing cursor (see the listing module).
    ListPage = 6,
    /// Write a snapshot to the path in the bulk area.
    Backup = 7,
}

impl OpCode {
    /// Every op code, in wire order.
    pub const ALL: [OpCode; 7] = [
        OpCode::Get,
        OpCode::Set,
        OpCode::Post,
        OpCode::Del,
        OpCode::Status,
        OpCode::ListPage,
        OpCode::Backup,
    ];

    /// Whether a request of this op carries a value (SET and POST).
    pub fn carries_value(self) -> bool {
        matches!(self, OpCode::Set | OpCode::Post)
    }

    /// Whether an answer to this op carries a value (GET).
    pub fn answer_carries_value(self) -> bool {
        matches!(self, OpCode::Get)
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

impl TryFrom<u32> for OpCode {
    type Error = UnknownCode;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        OpCode::ALL
            .into_iter()
            .find(|op| *op as u32 == value)
            .ok_or(UnknownCode {
                what: "op code",
                value,
            })
    }
}

/// How the server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum StatusCode {
    /// Done; for GET the value is in the response.
    Ok = 0,
    /// GET or DEL of an absent key.
    NotFound = 1,
    /// POST of a key that exists.
    Exists = 2,
    /// SET or POST of a new key beyond the entry limit.
    StoreFull = 3,
    /// The request was malformed (unknown op code, bad field).
    Malformed = 4,
    /// The server does not support this op.
    Unsupported = 5,
    /// The server failed to carry out the request (an I/O error, say).
    Failed = 6,
}

impl StatusCode {
    const ALL: [StatusCode; 7] = [
        StatusCode::Ok,
        StatusCode::NotFound,
        StatusCode::Exists,
        StatusCode::StoreFull,
        StatusCode::Malformed,
        StatusCode::Unsupported,
        StatusCode::Failed,
    ];
}

impl TryFrom<u32> for StatusCode {
    type Error = UnknownCode;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        StatusCode::ALL
            .into_iter()
            .find(|s| *s as u32 == value)
            .ok_or(UnknownCode {
                what: "status code",
                value,
            })
    }
}

/// One request, as a client writes it into the response slot it claimed.
///
/// `generation` repeats the slot's generation of this use, so a worker can
/// tell a request written for another use of the slot (a scribble) from the
/// one it was sent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Request<K, V> {
    /// An [`OpCode`] as `u32`.
    pub op: u32,
    /// Generation of the response slot when the client claimed it.
    pub generation: u32,
    /// Op-specific argument (a bulk buffer index, for example).
    pub arg: u32,
    /// Reserved (0).
    pub reserved: u32,
    /// The key (unused by some ops).
    pub key: K,
    /// The value (SET and POST).
    pub value: V,
}

impl<K: bytemuck::Zeroable, V: bytemuck::Zeroable> Request<K, V> {
    /// A request for `op` in a slot of generation `generation`.
    pub fn new(op: OpCode, generation: u32, arg: u32, key: K, value: V) -> Self {
        Self {
            op: op as u32,
            generation,
            arg,
            reserved: 0,
            key,
            value,
        }
    }
}

impl<K, V> Request<K, V> {
    /// The decoded op code.
    ///
    /// # Errors
    ///
    /// [`UnknownCode`] when the field holds no known op.
    pub fn op(&self) -> Result<OpCode, UnknownCode> {
        OpCode::try_from(self.op)
    }
}

// SAFETY: `Request` is `#[repr(C)]`, all fields are `Zeroable`, so the all-zero
// bit pattern is a valid value.
unsafe impl<K: bytemuck::Zeroable, V: bytemuck::Zeroable> bytemuck::Zeroable for Request<K, V> {}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for Request<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("op", &self.op)
            .field("generation", &self.generation)
            .field("arg", &self.arg)
            .field("key", &self.key)
            .field("value", &self.value)
            .finish()
    }
}

/// The answer the server writes into a response slot.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Response<V> {
    /// A [`StatusCode`] as `u32`.
    pub status: u32,
    /// The slot generation this answers (set by the slot table; the owner
    /// refuses an answer for another generation).
    pub generation: u32,
    /// Op-specific small result (entries in a listing page, for example).
    pub aux: u32,
    /// Reserved (0).
    pub reserved: u32,
    /// The entry's version (GET, SET, POST, DEL) or the op's result.
    pub version: u64,
    /// The entry's last-modified time, unix nanoseconds (GET).
    pub modified_ns: u64,
    /// The value (GET).
    pub value: V,
}

impl<V: bytemuck::Zeroable> Response<V> {
    /// A response with only a status.
    pub fn status(status: StatusCode) -> Self {
        Self {
            status: status as u32,
            generation: 0,
            aux: 0,
            reserved: 0,
            version: 0,
            modified_ns: 0,
            value: V::zeroed(),
        }
    }
}

impl<V> Response<V> {
    /// The decoded status code.
    ///
    /// # Errors
    ///
    /// [`UnknownCode`] when the field holds no known status.
    pub fn status_code(&self) -> Result<StatusCode, UnknownCode> {
        StatusCode::try_from(self.status)
    }
}

// SAFETY: `#[repr(C)]`, all fields `Zeroable`.
unsafe impl<V: bytemuck::Zeroable> bytemuck::Zeroable for Response<V> {}

impl<V: fmt::Debug> fmt::Debug for Response<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("generation", &self.generation)
            .field("aux", &self.aux)
            .field("version", &self.version)
            .field("modified_ns", &self.modified_ns)
            .field("value", &self.value)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn op_codes_round_trip() {
        for op in OpCode::ALL {
            assert_eq!(OpCode::try_from(op as u32), Ok(op));
        }
        assert!(OpCode::try_from(0).is_err());
        assert!(OpCode::try_from(u32::MAX).is_err());
    }

    #[test]
    fn status_codes_round_trip() {
        for s in StatusCode::ALL {
            assert_eq!(StatusCode::try_from(s as u32), Ok(s));
        }
        assert!(StatusCode::try_from(7).is_err());
    }

    proptest! {
        /// Decoding arbitrary bytes as a request never panics and accepts
        /// exactly the known op codes.
        #[test]
        fn decoding_arbitrary_requests_never_panics(bytes in proptest::collection::vec(any::<u8>(), 32)) {
            let mut req = Request::<u64, u64>::new(OpCode::Get, 0, 0, 0, 0);
            // Fill the header fields from the bytes.
            let w = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
            req.op = w(0);
            req.generation = w(8);
            req.arg = w(12);
            let decoded = req.op();
            prop_assert_eq!(decoded.is_ok(), (1..=7).contains(&req.op));
            let mut resp = Response::<u64>::status(StatusCode::Ok);
            resp.status = w(16);
            resp.aux = w(20);
            prop_assert_eq!(resp.status_code().is_ok(), resp.status <= 6);
        }
    }
}
