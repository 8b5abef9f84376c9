//! How typed keys and values become the bytes stored in the region, and back.
//!
//! The store keeps keys and values as plain byte strings. A typed client
//! keeps its types through [`Codec`]: it encodes a key or value into bytes
//! before it goes to the server and decodes the bytes that come back. The
//! server never looks at types.
//!
//! # Built-in codecs
//!
//! | Type | Bytes stored | `decode` refuses |
//! | --- | --- | --- |
//! | `u8`, `u16`, `u32`, `u64`, `u128`, `i8`, `i16`, `i32`, `i64`, `i128` | little-endian, exactly the type's width | any other length |
//! | `f32`, `f64` | the IEEE 754 bits, little-endian (NaN payloads kept) | any other length |
//! | `bool` | one byte: `0` or `1` | any other length or byte |
//! | `[u8; N]` | the `N` bytes | any other length |
//! | `Vec<u8>`, `Box<[u8]>`, `bytes::Bytes` (feature `bytes`, on by default) | the bytes as they are | nothing |
//! | `String` | its UTF-8 bytes | bytes that are not UTF-8 |
//! | [`FixedStr<N>`] | its text bytes, without the NUL padding | what [`FixedStr::new`] refuses: more than `N - 1` bytes, a NUL byte, not UTF-8 |
//! | [`Raw<T>`] for `T: bytemuck::Pod` | `T`'s bytes as they are in memory: host-endian and layout-dependent | any length but `size_of::<T>()` |
//! | `Serde<T>` (feature `serde`) | `T` in [postcard]'s format | what postcard refuses, and bytes left over after the value |
//!
//! There is no codec for `usize` or `isize`: their width differs between
//! platforms, so one type would not mean one format. Use `u64`, `u32`, etc.
//!
//! [`Raw<T>`] is for processes of one build only: the bytes follow the
//! endianness and the layout of `T` on the machine that wrote them.
//!
//! # Two clients, two codecs, one key
//!
//! The store keeps bytes only, so nothing stops two clients from using
//! different codecs for the same key. A client reading bytes that another
//! codec wrote gets:
//!
//! - a [`DecodeError`] when the length or the content does not fit its type
//!   (a `String` read as `u64`, a `u64` read as `u32`, bytes that are not
//!   UTF-8 read as `String`);
//! - otherwise, silently, another interpretation of the same bytes: a `u64`
//!   written and read back as `[u8; 8]` or `i64`, a `u32` read as `f32`.
//!
//! The server cannot tell these apart: agree on one codec per key space.
//! Some codecs do agree on their bytes, and may be mixed on purpose:
//! `Vec<u8>`, `Box<[u8]>`, `Bytes` and `[u8; N]` (of the right length) hold
//! the same bytes; a `String` reads what a [`FixedStr<N>`] wrote, and a
//! `FixedStr<N>` reads a `String` short enough and free of NULs. `Serde<T>`
//! agrees with none of the fixed-width codecs: postcard writes integers as
//! variable-length integers, so `Serde<u64>` is not `u64`.
//!
//! ```
//! use kvs_core::codec::{Codec, DecodeError};
//!
//! let mut bytes = Vec::new();
//! u64::MAX.encode(&mut bytes);
//! // Another interpretation of the same eight bytes, without a word.
//! assert_eq!(i64::decode(&bytes)?, -1);
//! assert_eq!(<[u8; 8]>::decode(&bytes)?, [0xff; 8]);
//! // A type that does not fit the bytes is refused.
//! assert_eq!(
//!     u32::decode(&bytes),
//!     Err(DecodeError::WrongLength { expected: 4, found: 8 })
//! );
//! assert_eq!(String::decode(&bytes), Err(DecodeError::NotUtf8));
//! # Ok::<(), DecodeError>(())
//! ```
//!
//! # Example
//!
//! A `u64` key and a `String` value, encoded and decoded back:
//!
//! ```
//! use kvs_core::codec::{Codec, DecodeError};
//!
//! let key: u64 = 42;
//! let mut key_bytes = Vec::new();
//! key.encode(&mut key_bytes);
//! assert_eq!(key_bytes, [42, 0, 0, 0, 0, 0, 0, 0]);
//!
//! let value = String::from("hello");
//! let mut value_bytes = Vec::new();
//! value.encode(&mut value_bytes);
//! assert_eq!(value_bytes, b"hello");
//!
//! // Keys are encoded on every call: `with_encoded` does it on the stack.
//! assert_eq!(key.with_encoded(|bytes| bytes.len()), 8);
//!
//! assert_eq!(u64::decode(&key_bytes)?, 42);
//! // An owned buffer becomes the `String` without a copy.
//! assert_eq!(String::decode_vec(value_bytes)?, "hello");
//! # Ok::<(), DecodeError>(())
//! ```
//!
//! [postcard]: https://docs.rs/postcard

use crate::fixed_str::{FixedStr, FixedStrError};

/// How a key or value type becomes the bytes stored in the region, and back.
///
/// `decode(encode(x))` gives back `x` for every built-in codec. See the
/// [module documentation](self) for the formats, and for what happens when
/// two clients use different codecs for one key.
pub trait Codec: Sized {
    /// Appends the encoded bytes of `self` to `out` (what `out` already holds
    /// is kept).
    fn encode(&self, out: &mut Vec<u8>);

    /// Calls `f` with the encoded bytes of `self`, the same bytes as
    /// [`encode`](Self::encode) appends.
    ///
    /// The default encodes into a fresh `Vec`. Keys are encoded on every
    /// call, so this is on the hot path: fixed-size types override it to
    /// encode into an array on the stack, and types that already hold their
    /// bytes (`Vec<u8>`, `String`, ...) pass them as they are.
    fn with_encoded<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        let mut buf = Vec::new();
        self.encode(&mut buf);
        f(&buf)
    }

    /// Decodes a value from exactly `bytes`: all of them, nothing more.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] when `bytes` is not the encoding of a `Self`: a
    /// wrong length, text that is not UTF-8, invalid content.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError>;

    /// Decodes a value from an owned buffer.
    ///
    /// The default is `decode(&bytes)`. `Vec<u8>`, `String`, `Bytes` and
    /// `Box<[u8]>` take the buffer without copying it (`Box<[u8]>` may
    /// reallocate to drop spare capacity).
    ///
    /// # Errors
    ///
    /// As [`decode`](Self::decode).
    fn decode_vec(bytes: Vec<u8>) -> Result<Self, DecodeError> {
        Self::decode(&bytes)
    }
}

/// Why bytes could not be decoded as a type.
///
/// As with [`FixedStrError`], the messages follow the name of the thing that
/// failed, so callers add the context themselves: `format!("value {err}")`
/// reads "value is 3 bytes, expected 8".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The type has a fixed encoded length, and the bytes have another.
    #[error("is {found} bytes, expected {expected}")]
    WrongLength {
        /// The length the type needs, in bytes.
        expected: usize,
        /// The length of the bytes given.
        found: usize,
    },
    /// The bytes are longer than the type can hold.
    #[error("is {found} bytes, the limit is {max}")]
    TooLong {
        /// The most bytes the type can hold.
        max: usize,
        /// The length of the bytes given.
        found: usize,
    },
    /// Text bytes that are not valid UTF-8.
    #[error("is not valid UTF-8")]
    NotUtf8,
    /// The serde decoder (`Serde<T>`) refused the bytes; the message is
    /// its own.
    #[error("does not decode with serde: {0}")]
    Serde(String),
    /// The bytes have the right length but content the type does not allow,
    /// such as a `bool` byte other than 0 or 1.
    #[error("is invalid: {0}")]
    Invalid(String),
}

/// The `W` bytes of `bytes`, or [`DecodeError::WrongLength`].
fn exact<const W: usize>(bytes: &[u8]) -> Result<[u8; W], DecodeError> {
    bytes.try_into().map_err(|_| DecodeError::WrongLength {
        expected: W,
        found: bytes.len(),
    })
}

/// Implements [`Codec`] for number types as their little-endian bytes.
macro_rules! little_endian_codec {
    ($($t:ty),* $(,)?) => {$(
        impl Codec for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }

            fn with_encoded<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
                f(&self.to_le_bytes())
            }

            fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
                exact::<{ size_of::<$t>() }>(bytes).map(<$t>::from_le_bytes)
            }
        }
    )*};
}

little_endian_codec!(u8, u16, u32, u64, u128, i8, i16, i32, i64, i128, f32, f64);

impl Codec for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }

    fn with_encoded<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(&[u8::from(*self)])
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match exact::<1>(bytes)? {
            [0] => Ok(false),
            [1] => Ok(true),
            [other] => Err(DecodeError::Invalid(format!(
                "bool byte {other}, expected 0 or 1"
            ))),
        }
    }
}

impl<const N: usize> Codec for [u8; N] {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }

    fn with_encoded<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self)
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        exact::<N>(bytes)
    }
}

impl Codec for Vec<u8> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }

    fn with_encoded<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self)
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(bytes.to_vec())
    }

    fn decode_vec(bytes: Vec<u8>) -> Result<Self, DecodeError> {
        Ok(bytes)
    }
}

impl Codec for Box<[u8]> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }

    fn with_encoded<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self)
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(bytes.into())
    }

    fn decode_vec(bytes: Vec<u8>) -> Result<Self, DecodeError> {
        Ok(bytes.into_boxed_slice())
    }
}

impl Codec for String {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }

    fn with_encoded<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self.as_bytes())
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::NotUtf8)
    }

    fn decode_vec(bytes: Vec<u8>) -> Result<Self, DecodeError> {
        String::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)
    }
}

#[cfg(feature = "bytes")]
impl Codec for bytes::Bytes {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }

    fn with_encoded<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self)
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(bytes::Bytes::copy_from_slice(bytes))
    }

    fn decode_vec(bytes: Vec<u8>) -> Result<Self, DecodeError> {
        Ok(bytes::Bytes::from(bytes))
    }
}

impl<const N: usize> Codec for FixedStr<N> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }

    fn with_encoded<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self.as_bytes())
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        FixedStr::from_bytes(bytes).map_err(|e| match e {
            FixedStrError::TooLong { len, max } => DecodeError::TooLong { max, found: len },
            FixedStrError::NotUtf8 => DecodeError::NotUtf8,
            FixedStrError::ContainsNul { .. } => DecodeError::Invalid(format!("text {e}")),
        })
    }
}

/// A [`bytemuck::Pod`] type stored as its bytes as they are in memory.
///
/// The format is host-endian and depends on `T`'s layout: it is for
/// processes of one build, on one machine. Encoding copies no more than
/// `size_of::<T>()` bytes and decoding copies them back (with
/// [`bytemuck::pod_read_unaligned`], so the buffer needs no alignment);
/// decoding refuses any other length. For a format that other builds can
/// read, use the fixed-width number codecs or `Serde<T>`.
///
/// ```
/// use kvs_core::codec::{Codec, Raw};
///
/// #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
/// #[repr(C)]
/// struct Point {
///     x: u32,
///     y: u32,
/// }
///
/// let p = Raw(Point { x: 1, y: 2 });
/// let mut bytes = Vec::new();
/// p.encode(&mut bytes);
/// assert_eq!(bytes.len(), 8);
/// assert_eq!(Raw::<Point>::decode(&bytes), Ok(p));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Raw<T>(pub T);

impl<T: bytemuck::Pod> Codec for Raw<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(bytemuck::bytes_of(&self.0));
    }

    fn with_encoded<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(bytemuck::bytes_of(&self.0))
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != size_of::<T>() {
            return Err(DecodeError::WrongLength {
                expected: size_of::<T>(),
                found: bytes.len(),
            });
        }
        Ok(Raw(bytemuck::pod_read_unaligned(bytes)))
    }
}

/// Any serde type, stored in [postcard]'s compact format (feature `serde`).
///
/// Postcard's format is stable across its 1.x versions, and does not depend
/// on the machine. It is not self-describing: the reader must use the same
/// `T` (or one with the same serde shape). Decoding refuses bytes left over
/// after the value, but accepts integers written in more bytes than needed,
/// which `encode` never writes: bytes from elsewhere may decode to a value
/// that encodes to other bytes.
///
/// # Panics
///
/// [`encode`](Codec::encode) panics if `T` cannot be serialized: its
/// `Serialize` implementation returned an error, or serialized a sequence or
/// map of unknown length, which postcard does not support.
///
/// ```
/// use kvs_core::codec::{Codec, Serde};
///
/// #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
/// struct User {
///     name: String,
///     tags: Vec<u32>,
/// }
///
/// let user = Serde(User { name: "ada".into(), tags: vec![1, 300] });
/// let mut bytes = Vec::new();
/// user.encode(&mut bytes);
/// assert_eq!(bytes, [3, b'a', b'd', b'a', 2, 1, 0xac, 0x02]);
/// assert_eq!(Serde::<User>::decode(&bytes), Ok(user));
/// ```
///
/// [postcard]: https://docs.rs/postcard
#[cfg(feature = "serde")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Serde<T>(pub T);

/// Appends to a borrowed `Vec` through [`Extend`], for postcard's
/// [`to_extend`](postcard::to_extend).
#[cfg(feature = "serde")]
struct Append<'a>(&'a mut Vec<u8>);

#[cfg(feature = "serde")]
impl Extend<u8> for Append<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

#[cfg(feature = "serde")]
impl<T: serde::Serialize + serde::de::DeserializeOwned> Codec for Serde<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        if let Err(e) = postcard::to_extend(&self.0, Append(out)) {
            panic!(
                "cannot encode a {} with postcard: {e}",
                std::any::type_name::<T>()
            );
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (value, rest) =
            postcard::take_from_bytes::<T>(bytes).map_err(|e| DecodeError::Serde(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DecodeError::WrongLength {
                expected: bytes.len() - rest.len(),
                found: bytes.len(),
            });
        }
        Ok(Serde(value))
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    use super::*;

    /// A small `Pod` struct without padding, for [`Raw`].
    #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C)]
    struct Point {
        x: u32,
        y: i16,
        z: u16,
    }

    /// Encodes `value` with both methods, checks that they give the same
    /// bytes and that `encode` appends, and returns the bytes.
    fn encoded<T: Codec>(value: &T) -> Vec<u8> {
        let mut out = vec![0xa5];
        value.encode(&mut out);
        assert_eq!(out[0], 0xa5, "encode must keep what `out` held");
        let bytes = out.split_off(1);
        value.with_encoded(|b| assert_eq!(b, &bytes[..], "with_encoded differs from encode"));
        bytes
    }

    /// Checks that `value` encodes to `bytes` and that `decode` and
    /// `decode_vec` both give it back.
    fn check_exact<T: Codec + PartialEq + Debug>(value: T, bytes: &[u8]) {
        assert_eq!(encoded(&value), bytes);
        assert_eq!(T::decode(bytes).as_ref(), Ok(&value));
        assert_eq!(T::decode_vec(bytes.to_vec()), Ok(value));
    }

    /// Checks that `value` survives a round trip, and returns its bytes.
    fn round_trip<T: Codec + PartialEq + Debug>(value: &T) -> Vec<u8> {
        let bytes = encoded(value);
        assert_eq!(T::decode(&bytes).as_ref(), Ok(value));
        assert_eq!(T::decode_vec(bytes.clone()).as_ref(), Ok(value));
        bytes
    }

    /// Checks that `decode` and `decode_vec` both refuse `bytes` with `err`.
    fn refused<T: Codec + Debug>(bytes: &[u8], err: DecodeError) {
        assert_eq!(T::decode(bytes).unwrap_err(), err);
        assert_eq!(T::decode_vec(bytes.to_vec()).unwrap_err(), err);
    }

    fn wrong_length(expected: usize, found: usize) -> DecodeError {
        DecodeError::WrongLength { expected, found }
    }

    #[test]
    fn integers_are_little_endian_of_their_width() {
        check_exact(0xab_u8, &[0xab]);
        check_exact(0x0102_u16, &[2, 1]);
        check_exact(0x0102_0304_u32, &[4, 3, 2, 1]);
        check_exact(0x0102_0304_0506_0708_u64, &[8, 7, 6, 5, 4, 3, 2, 1]);
        check_exact(1_u128, &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        check_exact(-1_i8, &[0xff]);
        check_exact(-2_i16, &[0xfe, 0xff]);
        check_exact(i32::MIN, &[0, 0, 0, 0x80]);
        check_exact(-1_i64, &[0xff; 8]);
        check_exact(i128::MAX, &[[0xff; 15].as_slice(), &[0x7f]].concat());
        check_exact(u64::MAX, &[0xff; 8]);
        check_exact(0_u32, &[0; 4]);
    }

    #[test]
    fn integers_refuse_any_other_length() {
        refused::<u8>(&[], wrong_length(1, 0));
        refused::<u8>(&[1, 2], wrong_length(1, 2));
        refused::<u16>(&[1], wrong_length(2, 1));
        refused::<u32>(&[1, 2, 3], wrong_length(4, 3));
        refused::<u32>(&[0; 8], wrong_length(4, 8));
        refused::<u64>(&[0; 7], wrong_length(8, 7));
        refused::<u64>(&[0; 9], wrong_length(8, 9));
        refused::<u128>(&[0; 8], wrong_length(16, 8));
        refused::<i8>(&[], wrong_length(1, 0));
        refused::<i16>(&[0; 3], wrong_length(2, 3));
        refused::<i32>(&[0; 2], wrong_length(4, 2));
        refused::<i64>(&[], wrong_length(8, 0));
        refused::<i128>(&[0; 17], wrong_length(16, 17));
    }

    #[test]
    fn floats_are_their_little_endian_bits() {
        check_exact(1.0_f32, &[0, 0, 0x80, 0x3f]);
        check_exact(-2.5_f64, &(-2.5_f64).to_bits().to_le_bytes());
        check_exact(f64::INFINITY, &[0, 0, 0, 0, 0, 0, 0xf0, 0x7f]);
        // NaN is not equal to itself: compare bits, payload included.
        let nan = f64::from_bits(0x7ff8_0000_dead_beef);
        let back = f64::decode(&encoded(&nan)).unwrap();
        assert_eq!(back.to_bits(), nan.to_bits());
        // -0.0 keeps its sign.
        assert_eq!(encoded(&-0.0_f32), [0, 0, 0, 0x80]);
        refused::<f32>(&[0; 8], wrong_length(4, 8));
        refused::<f64>(&[0; 4], wrong_length(8, 4));
    }

    #[test]
    fn bool_is_one_byte_zero_or_one() {
        check_exact(false, &[0]);
        check_exact(true, &[1]);
        refused::<bool>(
            &[2],
            DecodeError::Invalid("bool byte 2, expected 0 or 1".into()),
        );
        assert!(matches!(
            bool::decode(&[0xff]),
            Err(DecodeError::Invalid(_))
        ));
        refused::<bool>(&[], wrong_length(1, 0));
        refused::<bool>(&[1, 0], wrong_length(1, 2));
    }

    #[test]
    fn byte_arrays_are_exactly_their_bytes() {
        check_exact([1_u8, 2, 3], &[1, 2, 3]);
        check_exact([0_u8; 0], &[]);
        check_exact([7_u8; 32], &[7; 32]);
        refused::<[u8; 3]>(&[1, 2], wrong_length(3, 2));
        refused::<[u8; 3]>(&[1, 2, 3, 4], wrong_length(3, 4));
        refused::<[u8; 0]>(&[1], wrong_length(0, 1));
    }

    #[test]
    fn byte_strings_are_their_bytes() {
        let raw = [0_u8, 1, 0xff, 0x80, b'a'];
        check_exact(raw.to_vec(), &raw);
        check_exact(Vec::new(), &[]);
        check_exact(Box::<[u8]>::from(&raw[..]), &raw);
        check_exact(Box::<[u8]>::from([]), &[]);
    }

    #[cfg(feature = "bytes")]
    #[test]
    fn bytes_are_their_bytes() {
        let raw = [0_u8, 1, 0xff, 0x80, b'a'];
        check_exact(bytes::Bytes::copy_from_slice(&raw), &raw);
        check_exact(bytes::Bytes::new(), &[]);
        check_exact(bytes::Bytes::from_static(b"static"), b"static");
    }

    #[test]
    fn owned_buffers_are_taken_without_copying() {
        let buf = b"hello".to_vec();
        let ptr = buf.as_ptr();
        let taken = Vec::<u8>::decode_vec(buf).unwrap();
        assert_eq!(taken.as_ptr(), ptr);

        let buf = b"hello".to_vec();
        let ptr = buf.as_ptr();
        let taken = String::decode_vec(buf).unwrap();
        assert_eq!(taken.as_ptr(), ptr);

        // No spare capacity: nothing to reallocate.
        let buf = b"hello".to_vec().into_boxed_slice().into_vec();
        let ptr = buf.as_ptr();
        let taken = Box::<[u8]>::decode_vec(buf).unwrap();
        assert_eq!(taken.as_ptr(), ptr);

        #[cfg(feature = "bytes")]
        {
            let mut buf = Vec::with_capacity(64);
            buf.extend_from_slice(b"hello");
            let ptr = buf.as_ptr();
            let taken = bytes::Bytes::decode_vec(buf).unwrap();
            assert_eq!(taken.as_ptr(), ptr);
        }
    }

    #[test]
    fn strings_are_utf8_and_checked() {
        check_exact(String::from("hello, wörld"), "hello, wörld".as_bytes());
        check_exact(String::new(), &[]);
        check_exact(String::from("a\0b"), b"a\0b");
        refused::<String>(b"a\xffb", DecodeError::NotUtf8);
        refused::<String>(&[0xc3], DecodeError::NotUtf8); // truncated sequence
        refused::<String>(&[0xed, 0xa0, 0x80], DecodeError::NotUtf8); // surrogate
    }

    #[test]
    fn fixed_strings_are_their_text_without_padding() {
        check_exact(FixedStr::<64>::new("user:42").unwrap(), b"user:42");
        check_exact(FixedStr::<8>::empty(), &[]);
        check_exact(FixedStr::<8>::new("1234567").unwrap(), b"1234567");
        check_exact(FixedStr::<1>::empty(), &[]);
        // The same bytes as a String: the two codecs agree.
        let s = FixedStr::<16>::new("wörld").unwrap();
        assert_eq!(encoded(&s), encoded(&String::from("wörld")));
    }

    #[test]
    fn fixed_strings_refuse_what_new_refuses() {
        refused::<FixedStr<8>>(b"12345678", DecodeError::TooLong { max: 7, found: 8 });
        refused::<FixedStr<64>>(&[b'x'; 70], DecodeError::TooLong { max: 63, found: 70 });
        refused::<FixedStr<1>>(b"a", DecodeError::TooLong { max: 0, found: 1 });
        refused::<FixedStr<8>>(b"a\xffb", DecodeError::NotUtf8);
        refused::<FixedStr<8>>(
            b"ab\0cd",
            DecodeError::Invalid("text contains a NUL byte at position 2".into()),
        );
        refused::<FixedStr<8>>(
            b"\0",
            DecodeError::Invalid("text contains a NUL byte at position 0".into()),
        );
    }

    #[test]
    fn raw_is_the_bytes_in_memory() {
        let p = Point {
            x: 0x0102_0304,
            y: -1,
            z: 7,
        };
        let bytes = round_trip(&Raw(p));
        assert_eq!(bytes, bytemuck::bytes_of(&p));
        #[cfg(target_endian = "little")]
        assert_eq!(bytes, [4, 3, 2, 1, 0xff, 0xff, 7, 0]);
        check_exact(Raw(0x0102_u16), &0x0102_u16.to_ne_bytes());
        check_exact(Raw([1_u8, 2, 3]), &[1, 2, 3]);
        check_exact(Raw(()), &[]);
    }

    #[test]
    fn raw_decodes_from_unaligned_bytes() {
        let p = Point {
            x: 0xdead_beef,
            y: -300,
            z: 300,
        };
        let val = 0x1122_3344_5566_7788_u64;
        for offset in 0..8 {
            let mut buf = vec![0_u8; offset];
            Raw(p).encode(&mut buf);
            assert_eq!(Raw::<Point>::decode(&buf[offset..]), Ok(Raw(p)));
            let mut buf = vec![0_u8; offset];
            Raw(val).encode(&mut buf);
            assert_eq!(Raw::<u64>::decode(&buf[offset..]), Ok(Raw(val)));
        }
    }

    #[test]
    fn raw_refuses_any_other_length() {
        refused::<Raw<Point>>(&[0; 7], wrong_length(8, 7));
        refused::<Raw<Point>>(&[0; 9], wrong_length(8, 9));
        refused::<Raw<u64>>(&[], wrong_length(8, 0));
        refused::<Raw<()>>(&[0], wrong_length(0, 1));
    }

    #[test]
    fn with_encoded_matches_encode_for_every_type() {
        encoded(&0_u8);
        encoded(&u16::MAX);
        encoded(&0x0102_0304_u32);
        encoded(&u64::MAX);
        encoded(&u128::MAX);
        encoded(&i8::MIN);
        encoded(&-2_i16);
        encoded(&i32::MIN);
        encoded(&-1_i64);
        encoded(&i128::MIN);
        encoded(&1.5_f32);
        encoded(&-1.5_f64);
        encoded(&true);
        encoded(&false);
        encoded(&[1_u8, 2, 3, 4]);
        encoded(&vec![1_u8, 2, 3]);
        encoded(&Box::<[u8]>::from(&[9_u8, 8][..]));
        encoded(&String::from("héllo"));
        encoded(&FixedStr::<64>::new("key").unwrap());
        encoded(&Raw(Point { x: 1, y: 2, z: 3 }));
        #[cfg(feature = "bytes")]
        encoded(&bytes::Bytes::from_static(b"bytes"));
        #[cfg(feature = "serde")]
        encoded(&Serde(serde_tests::Record::sample()));
    }

    #[test]
    fn messages_follow_a_subject() {
        assert_eq!(
            format!("value {}", wrong_length(8, 3)),
            "value is 3 bytes, expected 8"
        );
        assert_eq!(
            format!("key {}", DecodeError::TooLong { max: 63, found: 70 }),
            "key is 70 bytes, the limit is 63"
        );
        assert_eq!(
            format!("value {}", DecodeError::NotUtf8),
            "value is not valid UTF-8"
        );
        assert_eq!(
            format!(
                "value {}",
                DecodeError::Invalid("bool byte 2, expected 0 or 1".into())
            ),
            "value is invalid: bool byte 2, expected 0 or 1"
        );
        assert_eq!(
            format!("value {}", DecodeError::Serde("oops".into())),
            "value does not decode with serde: oops"
        );
    }

    #[test]
    fn other_codecs_bytes_are_refused_or_reinterpreted() {
        let bytes = encoded(&0x0102_0304_0506_0708_u64);
        assert_eq!(i64::decode(&bytes), Ok(0x0102_0304_0506_0708));
        assert_eq!(<[u8; 8]>::decode(&bytes), Ok([8, 7, 6, 5, 4, 3, 2, 1]));
        assert_eq!(
            f64::decode(&bytes).map(f64::to_bits),
            Ok(0x0102_0304_0506_0708)
        );
        assert_eq!(u32::decode(&bytes), Err(wrong_length(4, 8)));
        assert_eq!(bool::decode(&bytes), Err(wrong_length(1, 8)));
        // Control characters, but UTF-8 all the same.
        assert!(String::decode(&bytes).is_ok());
        assert_eq!(
            u64::decode(&encoded(&String::from("abc"))),
            Err(wrong_length(8, 3))
        );
    }

    /// Decodes `bytes` as `T` both ways; they must agree, and a value they
    /// give must encode back to `bytes`.
    fn decode_agrees<T: Codec + PartialEq + Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
        let decoded = T::decode(bytes);
        prop_assert_eq!(&T::decode_vec(bytes.to_vec()), &decoded);
        if let Ok(value) = decoded {
            prop_assert_eq!(encoded(&value), bytes);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn integers_round_trip(
            a in any::<u8>(), b in any::<u16>(), c in any::<u32>(), d in any::<u64>(),
            e in any::<u128>(), f in any::<i8>(), g in any::<i16>(), h in any::<i32>(),
            i in any::<i64>(), j in any::<i128>(),
        ) {
            prop_assert_eq!(round_trip(&a), a.to_le_bytes());
            prop_assert_eq!(round_trip(&b), b.to_le_bytes());
            prop_assert_eq!(round_trip(&c), c.to_le_bytes());
            prop_assert_eq!(round_trip(&d), d.to_le_bytes());
            prop_assert_eq!(round_trip(&e), e.to_le_bytes());
            prop_assert_eq!(round_trip(&f), f.to_le_bytes());
            prop_assert_eq!(round_trip(&g), g.to_le_bytes());
            prop_assert_eq!(round_trip(&h), h.to_le_bytes());
            prop_assert_eq!(round_trip(&i), i.to_le_bytes());
            prop_assert_eq!(round_trip(&j), j.to_le_bytes());
        }

        #[test]
        fn floats_round_trip_bit_for_bit(x in any::<u32>(), y in any::<u64>()) {
            let (x, y) = (f32::from_bits(x), f64::from_bits(y));
            prop_assert_eq!(f32::decode(&encoded(&x)).map(f32::to_bits), Ok(x.to_bits()));
            prop_assert_eq!(f64::decode(&encoded(&y)).map(f64::to_bits), Ok(y.to_bits()));
        }

        #[test]
        fn byte_strings_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            prop_assert_eq!(round_trip(&bytes), &bytes[..]);
            prop_assert_eq!(round_trip(&bytes.clone().into_boxed_slice()), &bytes[..]);
            #[cfg(feature = "bytes")]
            prop_assert_eq!(round_trip(&bytes::Bytes::from(bytes.clone())), &bytes[..]);
        }

        #[test]
        fn strings_round_trip(s in any::<String>()) {
            prop_assert_eq!(round_trip(&s), s.as_bytes());
        }

        #[test]
        fn fixed_strings_round_trip(s in "[^\\x00]{0,15}") {
            // At most 15 chars of at most 4 bytes: always fits 63.
            let fixed = FixedStr::<64>::new(&s).unwrap();
            prop_assert_eq!(round_trip(&fixed), s.as_bytes());
        }

        #[test]
        fn raw_round_trips(x in any::<u32>(), y in any::<i16>(), z in any::<u16>()) {
            let p = Point { x, y, z };
            prop_assert_eq!(round_trip(&Raw(p)), bytemuck::bytes_of(&p));
        }

        #[test]
        fn arbitrary_bytes_decode_or_are_refused_consistently(
            bytes in prop::collection::vec(any::<u8>(), 0..20),
        ) {
            decode_agrees::<u8>(&bytes)?;
            decode_agrees::<u32>(&bytes)?;
            decode_agrees::<i64>(&bytes)?;
            decode_agrees::<u128>(&bytes)?;
            decode_agrees::<bool>(&bytes)?;
            decode_agrees::<[u8; 4]>(&bytes)?;
            decode_agrees::<Vec<u8>>(&bytes)?;
            decode_agrees::<String>(&bytes)?;
            decode_agrees::<FixedStr<8>>(&bytes)?;
            decode_agrees::<Raw<Point>>(&bytes)?;
            // FixedStr decodes exactly what `from_bytes` accepts.
            prop_assert_eq!(
                FixedStr::<8>::decode(&bytes).is_ok(),
                FixedStr::<8>::from_bytes(&bytes).is_ok()
            );
        }
    }

    #[cfg(feature = "serde")]
    mod serde_tests {
        use serde::{Deserialize, Serialize};

        use super::*;

        /// A small serde struct with a `String` and a `Vec`.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub(super) struct Record {
            pub(super) name: String,
            pub(super) tags: Vec<u32>,
        }

        impl Record {
            pub(super) fn sample() -> Self {
                Record {
                    name: "ada".into(),
                    tags: vec![1, 300],
                }
            }
        }

        #[test]
        fn serde_is_postcard() {
            check_exact(
                Serde(Record::sample()),
                &[3, b'a', b'd', b'a', 2, 1, 0xac, 0x02],
            );
            // Postcard writes integers as varints: not the `u64` codec.
            check_exact(Serde(300_u64), &[0xac, 0x02]);
            check_exact(Serde(String::from("hi")), &[2, b'h', b'i']);
            check_exact(Serde(Some(true)), &[1, 1]);
            check_exact(Serde(()), &[]);
            // An overlong varint is read, and written back in its short form.
            assert_eq!(Serde::<u32>::decode(&[0x80, 0x00]), Ok(Serde(0)));
            assert_eq!(encoded(&Serde(0_u32)), [0]);
        }

        #[test]
        fn serde_refuses_short_bad_and_trailing_bytes() {
            // Cut short: the name says 3 bytes, there are 2.
            assert!(matches!(
                Serde::<Record>::decode(&[3, b'a', b'd']),
                Err(DecodeError::Serde(_))
            ));
            // The name is not UTF-8.
            assert!(matches!(
                Serde::<Record>::decode(&[1, 0xff, 0]),
                Err(DecodeError::Serde(_))
            ));
            // A bool byte of 2.
            assert!(matches!(
                Serde::<bool>::decode(&[2]),
                Err(DecodeError::Serde(_))
            ));
            // Bytes left over after the value.
            refused::<Serde<Record>>(&[1, b'a', 0, 9, 9], wrong_length(3, 5));
            refused::<Serde<()>>(&[0], wrong_length(0, 1));
            let err = Serde::<Record>::decode(&[]).unwrap_err();
            assert!(
                err.to_string().starts_with("does not decode with serde: "),
                "{err}"
            );
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn serde_round_trips(
                name in any::<String>(),
                tags in prop::collection::vec(any::<u32>(), 0..16),
            ) {
                let record = Serde(Record { name, tags });
                let bytes = round_trip(&record);
                // The same bytes as postcard's own `to_slice` writes.
                let mut buf = [0_u8; 1024];
                let direct = postcard::to_slice(&record.0, &mut buf).unwrap();
                prop_assert_eq!(&bytes[..], &direct[..]);
            }

            #[test]
            fn serde_arbitrary_bytes_never_panic(
                bytes in prop::collection::vec(any::<u8>(), 0..24),
            ) {
                // Postcard also reads overlong varints (`[0x80, 0x00]` for 0),
                // so the bytes need not be those `encode` writes: check the
                // value instead.
                let decoded = Serde::<Record>::decode(&bytes);
                prop_assert_eq!(&Serde::<Record>::decode_vec(bytes.clone()), &decoded);
                if let Ok(value) = decoded {
                    prop_assert_eq!(Serde::<Record>::decode(&encoded(&value)), Ok(value));
                }
            }
        }

        /// Serializes a sequence without telling its length, which postcard
        /// cannot encode.
        struct UnknownLength;

        impl Serialize for UnknownLength {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                let seq = s.serialize_seq(None)?;
                seq.end()
            }
        }

        impl<'de> Deserialize<'de> for UnknownLength {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <()>::deserialize(d).map(|()| UnknownLength)
            }
        }

        #[test]
        #[should_panic(expected = "cannot encode a")]
        fn serde_encode_panics_when_postcard_cannot_serialize() {
            Serde(UnknownLength).encode(&mut Vec::new());
        }
    }
}
