//! Fixed-capacity strings that can live in shared memory.
//!
//! [`FixedStr<N>`] is an `N`-byte array holding up to `N - 1` bytes of UTF-8,
//! padded with NUL bytes, as in C: the first NUL ends the string, and the last
//! byte is never part of it. Keys and values travel through the shared region
//! in this form, so the type is [`bytemuck::Pod`]: it has no pointers, no
//! padding and no invalid bit patterns. If another process scribbles on a slot
//! the reader gets a wrong string, never undefined behaviour:
//!
//! - bytes after the first NUL are ignored, so equality, ordering and hashing
//!   all look only at [`as_bytes`](FixedStr::as_bytes);
//! - a slot with no NUL at all reads as its first `N - 1` bytes;
//! - bytes that are not UTF-8 make [`to_str`](FixedStr::to_str) fail with
//!   [`FixedStrError::NotUtf8`]; [`to_string_lossy`](FixedStr::to_string_lossy)
//!   replaces them.
//!
//! Construction checks instead of truncating: too long input, or input with a
//! NUL in it (which would silently cut the string short), is refused.
//!
//! # Example
//!
//! ```
//! use kvs_core::fixed_str::{FixedStrError, Key64};
//!
//! let key = Key64::new("user:42")?;
//! assert_eq!(key.to_str()?, "user:42");
//! assert_eq!(key.len(), 7);
//!
//! let long = "x".repeat(70);
//! let err = Key64::new(&long).unwrap_err();
//! assert_eq!(err, FixedStrError::TooLong { len: 70, max: 63 });
//! assert_eq!(format!("key {err}"), "key is 70 bytes, the limit is 63");
//!
//! // A slot as it arrives from the region: raw bytes.
//! let mut raw = [0_u8; 64];
//! raw[..2].copy_from_slice(b"hi");
//! raw[3] = b'!'; // junk after the terminating NUL is ignored
//! let from_region: Key64 = bytemuck::cast(raw);
//! assert_eq!(from_region, Key64::new("hi")?);
//! # Ok::<(), FixedStrError>(())
//! ```

use std::borrow::Cow;
use std::cmp::Ordering;
use std::ffi::CStr;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// A key of up to 63 bytes: the key limit of the store.
pub type Key64 = FixedStr<64>;
/// A value of up to 255 bytes: the default value class.
pub type Value256 = FixedStr<256>;
/// A value of up to 1023 bytes.
pub type Value1K = FixedStr<1024>;
/// A value of up to 4095 bytes: the largest value class (4 KiB slots).
pub type Value4K = FixedStr<4096>;

/// Why bytes could not be made into, or read as, a [`FixedStr`].
///
/// The messages are written to follow the name of the thing that failed, so
/// callers add the context themselves: `format!("key {err}")` reads
/// "key is 70 bytes, the limit is 63".
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixedStrError {
    /// The input is longer than the capacity.
    #[error("is {len} bytes, the limit is {max}")]
    TooLong {
        /// The length of the input, in bytes.
        len: usize,
        /// The capacity, [`FixedStr::CAPACITY`].
        max: usize,
    },
    /// The input contains a NUL byte, which would end the string early.
    #[error("contains a NUL byte at position {position}")]
    ContainsNul {
        /// The byte offset of the first NUL.
        position: usize,
    },
    /// The bytes are not valid UTF-8.
    #[error("is not valid UTF-8")]
    NotUtf8,
}

/// A string of at most `N - 1` bytes of UTF-8 stored inline in `N` bytes,
/// NUL-padded.
///
/// Invariant of values built by this module: the string bytes are followed by
/// NUL bytes up to the end, and contain no NUL. Values read from shared memory
/// may break the invariant; every method copes with any bit pattern (see the
/// [module documentation](self)).
///
/// `N` must be at least 1, for the terminating NUL: building a
/// `FixedStr<0>` fails to compile.
///
/// ```compile_fail
/// let _ = kvs_core::fixed_str::FixedStr::<0>::empty();
/// ```
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct FixedStr<const N: usize>([u8; N]);

// SAFETY: `FixedStr<N>` is `repr(transparent)` over `[u8; N]`, and the
// all-zero `[u8; N]` is a valid value of it (the empty string).
unsafe impl<const N: usize> bytemuck::Zeroable for FixedStr<N> {}

// SAFETY: `FixedStr<N>` is `repr(transparent)` over `[u8; N]`, which is
// `Pod`: it is `Copy + 'static`, has no padding, no pointers and no invalid
// bit patterns. No method relies on the NUL-padding invariant for soundness;
// they only read bytes through safe slice operations.
unsafe impl<const N: usize> bytemuck::Pod for FixedStr<N> {}

impl<const N: usize> FixedStr<N> {
    /// The most bytes the string can hold: one byte is kept for the final
    /// NUL.
    pub const CAPACITY: usize = {
        assert!(N > 0, "FixedStr<N> needs N >= 1 for the terminating NUL");
        N - 1
    };

    /// The empty string (all bytes NUL).
    pub const fn empty() -> Self {
        // Evaluates the `N > 0` check of `CAPACITY`.
        let _ = Self::CAPACITY;
        Self([0; N])
    }

    /// Copies `s` into a new fixed string.
    ///
    /// # Errors
    ///
    /// - [`FixedStrError::TooLong`] if `s` is longer than
    ///   [`CAPACITY`](Self::CAPACITY) bytes (it is never truncated);
    /// - [`FixedStrError::ContainsNul`] if `s` contains a NUL byte.
    pub fn new(s: &str) -> Result<Self, FixedStrError> {
        Self::from_checked_len(s.as_bytes())
    }

    /// Copies UTF-8 `bytes` into a new fixed string.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new), and [`FixedStrError::NotUtf8`] if `bytes` is
    /// not valid UTF-8.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FixedStrError> {
        Self::check_len(bytes)?;
        std::str::from_utf8(bytes).map_err(|_| FixedStrError::NotUtf8)?;
        Self::from_checked_len(bytes)
    }

    /// The string bytes: everything before the first NUL, at most
    /// [`CAPACITY`](Self::CAPACITY) bytes. Bytes after the first NUL are
    /// ignored.
    pub fn as_bytes(&self) -> &[u8] {
        match CStr::from_bytes_until_nul(&self.0) {
            Ok(c) => c.to_bytes(),
            // No NUL at all (a scribbled slot): the last byte is not part of
            // the string.
            Err(_) => &self.0[..Self::CAPACITY],
        }
    }

    /// The string as `&str`.
    ///
    /// # Errors
    ///
    /// [`FixedStrError::NotUtf8`] if the bytes are not UTF-8, which only
    /// happens when another process wrote them.
    pub fn to_str(&self) -> Result<&str, FixedStrError> {
        std::str::from_utf8(self.as_bytes()).map_err(|_| FixedStrError::NotUtf8)
    }

    /// The string, with invalid UTF-8 replaced by `U+FFFD`. Borrows unless
    /// a replacement was needed.
    pub fn to_string_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }

    /// The length in bytes (before the first NUL).
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        // Same as `self.len() == 0`, without the scan: `N == 1` leaves no
        // room for any byte.
        N <= 1 || self.0[0] == 0
    }

    /// Returns `TooLong` unless `bytes` fits.
    fn check_len(bytes: &[u8]) -> Result<(), FixedStrError> {
        if bytes.len() > Self::CAPACITY {
            return Err(FixedStrError::TooLong {
                len: bytes.len(),
                max: Self::CAPACITY,
            });
        }
        Ok(())
    }

    /// Builds from bytes that are UTF-8, checking length and NULs.
    fn from_checked_len(bytes: &[u8]) -> Result<Self, FixedStrError> {
        Self::check_len(bytes)?;
        if let Some(position) = bytes.iter().position(|&b| b == 0) {
            return Err(FixedStrError::ContainsNul { position });
        }
        let mut buf = [0; N];
        buf[..bytes.len()].copy_from_slice(bytes);
        Ok(Self(buf))
    }
}

impl<const N: usize> Default for FixedStr<N> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<const N: usize> PartialEq for FixedStr<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl<const N: usize> Eq for FixedStr<N> {}

impl<const N: usize> Hash for FixedStr<N> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl<const N: usize> PartialOrd for FixedStr<N> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<const N: usize> Ord for FixedStr<N> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl<const N: usize> fmt::Debug for FixedStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.to_string_lossy(), f)
    }
}

impl<const N: usize> fmt::Display for FixedStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.to_string_lossy(), f)
    }
}

impl<const N: usize> TryFrom<&str> for FixedStr<N> {
    type Error = FixedStrError;

    fn try_from(s: &str) -> Result<Self, FixedStrError> {
        Self::new(s)
    }
}

impl<const N: usize> FromStr for FixedStr<N> {
    type Err = FixedStrError;

    fn from_str(s: &str) -> Result<Self, FixedStrError> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::DefaultHasher;

    use proptest::prelude::*;

    use super::*;

    fn hash_of<T: Hash>(value: &T) -> u64 {
        let mut hasher = DefaultHasher::new();
        value.hash(&mut hasher);
        hasher.finish()
    }

    /// Reinterprets raw bytes as a fixed string, as a reader of the region does.
    fn from_raw<const N: usize>(raw: [u8; N]) -> FixedStr<N> {
        bytemuck::cast(raw)
    }

    #[test]
    fn capacity_is_n_minus_one() {
        assert_eq!(Key64::CAPACITY, 63);
        assert_eq!(Value256::CAPACITY, 255);
        assert_eq!(Value1K::CAPACITY, 1023);
        assert_eq!(Value4K::CAPACITY, 4095);
        assert_eq!(FixedStr::<1>::CAPACITY, 0);
    }

    #[test]
    fn size_and_alignment_are_those_of_the_byte_array() {
        assert_eq!(size_of::<Key64>(), 64);
        assert_eq!(size_of::<Value4K>(), 4096);
        assert_eq!(align_of::<Key64>(), 1);
    }

    #[test]
    fn new_round_trips() {
        let s = Key64::new("hello, wörld").unwrap();
        assert_eq!(s.to_str(), Ok("hello, wörld"));
        assert_eq!(s.as_bytes(), "hello, wörld".as_bytes());
        assert_eq!(s.len(), "hello, wörld".len());
        assert!(!s.is_empty());
    }

    #[test]
    fn new_accepts_exactly_capacity() {
        let s = "a".repeat(63);
        assert_eq!(Key64::new(&s).unwrap().to_str(), Ok(s.as_str()));
    }

    #[test]
    fn new_refuses_too_long_instead_of_truncating() {
        let s = "a".repeat(64);
        assert_eq!(
            Key64::new(&s),
            Err(FixedStrError::TooLong { len: 64, max: 63 })
        );
    }

    #[test]
    fn new_refuses_interior_nul() {
        assert_eq!(
            Key64::new("ab\0cd"),
            Err(FixedStrError::ContainsNul { position: 2 })
        );
    }

    #[test]
    fn from_bytes_checks_utf8() {
        assert_eq!(Key64::from_bytes(b"abc").unwrap().to_str(), Ok("abc"));
        assert_eq!(Key64::from_bytes(b"a\xffc"), Err(FixedStrError::NotUtf8));
        assert_eq!(
            Key64::from_bytes(&[b'a'; 100]),
            Err(FixedStrError::TooLong { len: 100, max: 63 })
        );
        assert_eq!(
            Key64::from_bytes(b"a\0"),
            Err(FixedStrError::ContainsNul { position: 1 })
        );
    }

    #[test]
    fn empty_default_and_zeroed_agree() {
        let zeroed: Key64 = bytemuck::Zeroable::zeroed();
        assert_eq!(Key64::empty(), Key64::default());
        assert_eq!(Key64::empty(), zeroed);
        assert_eq!(Key64::new("").unwrap(), zeroed);
        assert!(zeroed.is_empty());
        assert_eq!(zeroed.len(), 0);
        assert_eq!(zeroed.to_str(), Ok(""));
    }

    #[test]
    fn one_byte_string_holds_only_empty() {
        assert_eq!(FixedStr::<1>::new("").unwrap().len(), 0);
        assert!(FixedStr::<1>::new("a").is_err());
        assert!(from_raw([b'x']).is_empty());
        assert_eq!(from_raw([b'x']).as_bytes(), b"");
    }

    #[test]
    fn bytes_after_first_nul_are_ignored() {
        let mut raw = [0_u8; 8];
        raw[..3].copy_from_slice(b"abc");
        raw[4..7].copy_from_slice(b"xyz");
        let scribbled = from_raw(raw);
        let clean = FixedStr::<8>::new("abc").unwrap();
        assert_eq!(scribbled.as_bytes(), b"abc");
        assert_eq!(scribbled, clean);
        assert_eq!(hash_of(&scribbled), hash_of(&clean));
        assert_eq!(scribbled.cmp(&clean), Ordering::Equal);
    }

    #[test]
    fn slot_without_nul_reads_capacity_bytes() {
        let scribbled = from_raw(*b"abcdefgh");
        assert_eq!(scribbled.as_bytes(), b"abcdefg");
        assert_eq!(scribbled.len(), FixedStr::<8>::CAPACITY);
    }

    #[test]
    fn junk_is_not_utf8_but_reads_lossily() {
        let mut raw = [0_u8; 8];
        raw[..3].copy_from_slice(b"a\xffb");
        let junk = from_raw(raw);
        assert_eq!(junk.to_str(), Err(FixedStrError::NotUtf8));
        assert_eq!(junk.to_string_lossy(), "a\u{fffd}b");
    }

    #[test]
    fn ordering_is_by_bytes() {
        let a = Key64::new("a").unwrap();
        let ab = Key64::new("ab").unwrap();
        let b = Key64::new("b").unwrap();
        assert!(a < ab && ab < b);
        assert!(Key64::empty() < a);
    }

    #[test]
    fn debug_quotes_and_display_does_not() {
        let s = Key64::new("say \"hi\"").unwrap();
        assert_eq!(format!("{s:?}"), r#""say \"hi\"""#);
        assert_eq!(format!("{s}"), "say \"hi\"");
        assert_eq!(format!("{:>4}", Key64::new("ab").unwrap()), "  ab");
    }

    #[test]
    fn try_from_and_from_str_match_new() {
        assert_eq!(Key64::try_from("k"), Key64::new("k"));
        assert_eq!("k".parse::<Key64>(), Key64::new("k"));
        assert_eq!(
            "k".repeat(64).parse::<Key64>(),
            Err(FixedStrError::TooLong { len: 64, max: 63 })
        );
    }

    #[test]
    fn error_messages_follow_a_subject() {
        let too_long = FixedStrError::TooLong { len: 70, max: 63 };
        assert_eq!(
            format!("key {too_long}"),
            "key is 70 bytes, the limit is 63"
        );
        let nul = FixedStrError::ContainsNul { position: 3 };
        assert_eq!(
            format!("value {nul}"),
            "value contains a NUL byte at position 3"
        );
        assert_eq!(
            format!("value {}", FixedStrError::NotUtf8),
            "value is not valid UTF-8"
        );
    }

    #[test]
    fn is_pod_and_castable_from_slices() {
        let slots = [Key64::new("a").unwrap(), Key64::new("b").unwrap()];
        let bytes: &[u8] = bytemuck::cast_slice(&slots);
        assert_eq!(bytes.len(), 128);
        let back: &[Key64] = bytemuck::cast_slice(bytes);
        assert_eq!(back, &slots);
    }

    /// Checks that every reading method copes with `s` and agrees with the
    /// others.
    fn read_everything<const N: usize>(s: &FixedStr<N>) {
        let bytes = s.as_bytes();
        assert!(bytes.len() <= FixedStr::<N>::CAPACITY);
        assert!(!bytes.contains(&0));
        assert_eq!(s.len(), bytes.len());
        assert_eq!(s.is_empty(), bytes.is_empty());
        match s.to_str() {
            Ok(text) => assert_eq!(s.to_string_lossy(), text),
            Err(e) => assert_eq!(e, FixedStrError::NotUtf8),
        }
        let _ = format!("{s:?} {s}");
        let _ = hash_of(s);
        let copy = *s;
        assert_eq!(&copy, s);
        assert_eq!(copy.cmp(s), Ordering::Equal);
        // A clean copy of the same bytes is equal, and hashes the same.
        if let Ok(text) = s.to_str() {
            let clean = FixedStr::<N>::new(text).unwrap();
            assert_eq!(&clean, s);
            assert_eq!(hash_of(&clean), hash_of(s));
        }
    }

    proptest! {
        #[test]
        fn any_str_round_trips_or_is_refused_for_the_right_reason(s in ".{0,80}") {
            let result = Key64::new(&s);
            if s.len() > Key64::CAPACITY {
                prop_assert_eq!(result, Err(FixedStrError::TooLong { len: s.len(), max: 63 }));
            } else if let Some(position) = s.bytes().position(|b| b == 0) {
                prop_assert_eq!(result, Err(FixedStrError::ContainsNul { position }));
            } else {
                let fixed = result.unwrap();
                prop_assert_eq!(fixed.to_str(), Ok(s.as_str()));
                prop_assert_eq!(fixed.len(), s.len());
                prop_assert_eq!(Key64::from_bytes(s.as_bytes()), Ok(fixed));
            }
        }

        #[test]
        fn any_bytes_within_capacity_construct_iff_utf8_without_nul(
            bytes in prop::collection::vec(any::<u8>(), 0..=15),
        ) {
            let result = FixedStr::<16>::from_bytes(&bytes);
            let valid = std::str::from_utf8(&bytes).is_ok() && !bytes.contains(&0);
            prop_assert_eq!(result.is_ok(), valid);
            if let Ok(fixed) = result {
                prop_assert_eq!(fixed.as_bytes(), &bytes[..]);
            }
        }

        #[test]
        fn arbitrary_raw_bytes_never_panic(raw in any::<[u8; 16]>()) {
            read_everything(&from_raw(raw));
        }

        #[test]
        fn arbitrary_raw_key_bytes_never_panic(
            raw in prop::collection::vec(prop_oneof![Just(0_u8), any::<u8>(), 0x20_u8..0x7f], 64),
        ) {
            let raw: [u8; 64] = raw.try_into().unwrap();
            read_everything(&from_raw(raw));
        }

        #[test]
        fn order_and_equality_follow_the_string(a in "[a-c]{0,4}", b in "[a-c]{0,4}") {
            let (fa, fb) = (Key64::new(&a).unwrap(), Key64::new(&b).unwrap());
            prop_assert_eq!(fa.cmp(&fb), a.cmp(&b));
            prop_assert_eq!(fa == fb, a == b);
        }
    }
}
