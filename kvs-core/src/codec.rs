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
/// after the value.
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
