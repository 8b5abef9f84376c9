//! Op codes, status codes, and the request and response records that cross
//! the region, with the rules of which op carries what.
//!
//! This module is the one place that knows the wire: which op carries a
//! value ([`OpCode::carries_value`]), which answer does
//! ([`OpCode::answer_carries_value`]), and how both records are written
//! into and read out of a response slot ([`Request::encode`],
//! [`Request::decode`], [`Response::encode`], [`Response::decode`]). The
//! client and the server's workers call these and nothing else.
//!
//! Both records are `#[repr(C)]` and made of `Pod` fields only, so whatever
//! another process wrote into them is a valid value. They are copied field
//! by field (never a padding byte, so no uninitialised byte reaches the
//! region) and only the fields the op uses: a GET leaves the request's value
//! lines alone, a SET the answer's. The reader copies a record out of the
//! region first and then validates the copy ([`Request::op`],
//! [`StatusCode::try_from`]); it never validates in place and reads again.
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
use std::ptr::{addr_of, addr_of_mut};

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

    /// Whether an answer to this op with this status carries a value: a
    /// GET that found its key. `status` is the raw field, so a garbage
    /// status never carries one.
    pub fn answer_carries_value(self, status: u32) -> bool {
        self == OpCode::Get && status == StatusCode::Ok as u32
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

impl<K: bytemuck::Pod, V: bytemuck::Pod> Request<K, V> {
    /// Writes a request for `op` to `dst` field by field, the value only if
    /// `op` [carries one](OpCode::carries_value) (zeros if `value` is
    /// `None` then), straight from the caller's references.
    ///
    /// # Safety
    ///
    /// `dst` is valid for writes of `Self` and aligned, and no one else
    /// accesses the record during the call (in a response slot: the slot is
    /// claimed by the caller and not yet marked pending).
    pub unsafe fn encode(
        dst: *mut Self,
        op: OpCode,
        generation: u32,
        arg: u32,
        key: &K,
        value: Option<&V>,
    ) {
        // SAFETY: `dst` is valid and exclusive (the caller's contract);
        // `addr_of_mut!` makes field pointers without references; every
        // field is `Pod`, written on its own.
        unsafe {
            addr_of_mut!((*dst).op).write_volatile(op as u32);
            addr_of_mut!((*dst).generation).write_volatile(generation);
            addr_of_mut!((*dst).arg).write_volatile(arg);
            addr_of_mut!((*dst).reserved).write_volatile(0);
            addr_of_mut!((*dst).key).write_volatile(*key);
            if op.carries_value() {
                let v = value.copied().unwrap_or_else(V::zeroed);
                addr_of_mut!((*dst).value).write_volatile(v);
            }
        }
    }

    /// Reads a request out of `src` field by field: the op first, then the
    /// value only if that op carries one (zeros otherwise, and for an
    /// unknown op). Validate the copy ([`Request::op`]): the bytes may be
    /// anyone's.
    ///
    /// # Safety
    ///
    /// `src` is valid for reads of `Self` and aligned, and the writer's
    /// writes happen before this call (in a response slot: after the
    /// worker's Acquire CAS to `Completing`). A process that writes anyway
    /// can only make the copy wrong: every field is `Pod`.
    pub unsafe fn decode(src: *const Self) -> Self {
        // SAFETY: `src` is valid (the caller's contract); field pointers
        // stay inside the record; any bytes form valid `Pod` values.
        unsafe {
            let op = addr_of!((*src).op).read_volatile();
            Request {
                op,
                generation: addr_of!((*src).generation).read_volatile(),
                arg: addr_of!((*src).arg).read_volatile(),
                reserved: 0,
                key: addr_of!((*src).key).read_volatile(),
                value: if OpCode::try_from(op).is_ok_and(OpCode::carries_value) {
                    addr_of!((*src).value).read_volatile()
                } else {
                    V::zeroed()
                },
            }
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

impl<V: bytemuck::Pod> Response<V> {
    /// Writes `response` to `dst` as the answer to a request of `op` (`None`:
    /// a request whose op could not be decoded) for slot generation
    /// `generation`, field by field, the value only if the answer
    /// [carries one](OpCode::answer_carries_value).
    ///
    /// # Safety
    ///
    /// `dst` is valid for writes of `Self` and aligned, and no one else
    /// accesses the record during the call (in a response slot: the worker
    /// holds it `Completing`).
    pub unsafe fn encode(dst: *mut Self, op: Option<OpCode>, generation: u32, response: &Self) {
        // SAFETY: as for `Request::encode`.
        unsafe {
            addr_of_mut!((*dst).status).write_volatile(response.status);
            addr_of_mut!((*dst).generation).write_volatile(generation);
            addr_of_mut!((*dst).aux).write_volatile(response.aux);
            addr_of_mut!((*dst).reserved).write_volatile(0);
            addr_of_mut!((*dst).version).write_volatile(response.version);
            addr_of_mut!((*dst).modified_ns).write_volatile(response.modified_ns);
            if op.is_some_and(|op| op.answer_carries_value(response.status)) {
                addr_of_mut!((*dst).value).write_volatile(response.value);
            }
        }
    }

    /// Reads the answer to a request of `op` out of `src`: the status
    /// first, then the value only if the answer carries one (zeros
    /// otherwise). Validate the copy ([`Response::status_code`], the
    /// generation).
    ///
    /// # Safety
    ///
    /// `src` is valid for reads of `Self` and aligned, and the writer's
    /// writes happen before this call (in a response slot: after the
    /// owner's Acquire load of `Ready`).
    pub unsafe fn decode(src: *const Self, op: OpCode) -> Self {
        // SAFETY: as for `Request::decode`.
        unsafe {
            let status = addr_of!((*src).status).read_volatile();
            Response {
                status,
                generation: addr_of!((*src).generation).read_volatile(),
                aux: addr_of!((*src).aux).read_volatile(),
                reserved: 0,
                version: addr_of!((*src).version).read_volatile(),
                modified_ns: addr_of!((*src).modified_ns).read_volatile(),
                value: if op.answer_carries_value(status) {
                    addr_of!((*src).value).read_volatile()
                } else {
                    V::zeroed()
                },
            }
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

    /// A record full of 0xee bytes, to see which fields an encode touched.
    fn poisoned<T: bytemuck::Zeroable>() -> std::mem::MaybeUninit<T> {
        let mut m = std::mem::MaybeUninit::<T>::uninit();
        // SAFETY: writes size_of::<T>() bytes into the MaybeUninit's storage.
        unsafe {
            m.as_mut_ptr()
                .cast::<u8>()
                .write_bytes(0xee, std::mem::size_of::<T>())
        };
        m
    }

    #[test]
    fn requests_round_trip_and_only_set_and_post_carry_a_value() {
        for op in OpCode::ALL {
            let mut m = poisoned::<Request<u64, u64>>();
            // SAFETY: `m` is a local, aligned, exclusively ours; every
            // field of `Request<u64, u64>` is initialised by the poison or
            // the encode, and any bytes are valid `u64`/`u32`.
            let (raw, decoded) = unsafe {
                Request::encode(m.as_mut_ptr(), op, 9, 3, &42, Some(&7));
                (m.assume_init(), Request::decode(m.as_ptr()))
            };
            assert_eq!(decoded.op(), Ok(op));
            assert_eq!((decoded.generation, decoded.arg, decoded.key), (9, 3, 42));
            if op.carries_value() {
                assert_eq!((raw.value, decoded.value), (7, 7), "{op:?}");
            } else {
                assert_eq!(raw.value, 0xeeee_eeee_eeee_eeee, "{op:?} wrote a value");
                assert_eq!(decoded.value, 0, "{op:?} read a value");
            }
        }
        assert!(OpCode::ALL
            .iter()
            .filter(|op| op.carries_value())
            .eq(&[OpCode::Set, OpCode::Post]));
    }

    #[test]
    fn a_set_without_a_value_sends_zeros_and_garbage_ops_read_no_value() {
        let mut m = poisoned::<Request<u64, u64>>();
        // SAFETY: as above.
        let decoded = unsafe {
            Request::<u64, u64>::encode(m.as_mut_ptr(), OpCode::Set, 1, 0, &1, None);
            Request::decode(m.as_ptr())
        };
        assert_eq!(decoded.value, 0);
        // SAFETY: as above; then a scribbled op code.
        let decoded = unsafe {
            Request::<u64, u64>::encode(m.as_mut_ptr(), OpCode::Set, 1, 0, &1, Some(&5));
            (*m.as_mut_ptr()).op = 99;
            Request::decode(m.as_ptr())
        };
        assert!(decoded.op().is_err());
        assert_eq!(decoded.value, 0);
    }

    #[test]
    fn only_a_found_get_answers_with_a_value() {
        let answer = Response::<u64> {
            version: 4,
            modified_ns: 5,
            aux: 6,
            value: 77,
            ..Response::status(StatusCode::Ok)
        };
        for op in OpCode::ALL {
            for status in StatusCode::ALL {
                let sent = Response {
                    status: status as u32,
                    ..answer
                };
                let mut m = poisoned::<Response<u64>>();
                // SAFETY: as above, for `Response<u64>`.
                let (raw, got) = unsafe {
                    Response::encode(m.as_mut_ptr(), Some(op), 8, &sent);
                    (m.assume_init(), Response::decode(m.as_ptr(), op))
                };
                assert_eq!(got.status_code(), Ok(status));
                assert_eq!(
                    (got.generation, got.aux, got.version, got.modified_ns),
                    (8, 6, 4, 5)
                );
                let carries = op == OpCode::Get && status == StatusCode::Ok;
                assert_eq!(op.answer_carries_value(status as u32), carries);
                if carries {
                    assert_eq!((raw.value, got.value), (77, 77));
                } else {
                    assert_eq!(raw.value, 0xeeee_eeee_eeee_eeee, "{op:?} {status:?}");
                    assert_eq!(got.value, 0, "{op:?} {status:?}");
                }
            }
        }
        // An answer to an undecodable request never carries a value.
        let mut m = poisoned::<Response<u64>>();
        // SAFETY: as above.
        let raw = unsafe {
            Response::encode(m.as_mut_ptr(), None, 1, &answer);
            m.assume_init()
        };
        assert_eq!(raw.value, 0xeeee_eeee_eeee_eeee);
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
