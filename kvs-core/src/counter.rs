//! The one integer encoding: how a counter's value is stored.
//!
//! A counter is an ordinary entry whose value is a signed 64-bit integer in
//! decimal ASCII: an optional `-`, then digits, without a `+`, spaces or
//! leading zeros (`0`, `42`, `-7`; not `007`, `+1`, `-0` or ` 1`), at most
//! 20 bytes. It is the encoding Redis uses for INCR, and the one every text
//! tool already shows as is: `kvs_client get` prints `42`, the gateway
//! answers `"42"`, a job file compares against `42`. A typed client reads a
//! counter as a `String` (or with [`parse`](crate::counter::parse)), and [`crate::codec`]'s `i64`
//! codec is *not* this encoding (it stores 8 little-endian bytes), so the
//! library's `incr` and `get_counter` speak this one explicitly.
//!
//! `INCR` of an absent (or expired) key starts from 0; of a value that is
//! not in this form it fails with "not an integer", and a result outside
//! `i64` fails with "overflow"; neither changes anything.

/// The longest encoded value: `-9223372036854775808`.
pub const MAX_LEN: usize = 20;

/// A value that is not a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the value is not a decimal integer (an optional '-' and digits, no leading zeros, within i64)"
)]
pub struct NotInteger;

/// Reads a counter's value.
///
/// # Errors
///
/// [`NotInteger`] for anything not in the form the module describes.
pub fn parse(bytes: &[u8]) -> Result<i64, NotInteger> {
    let (negative, digits) = match bytes {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, bytes),
    };
    let leading_zero = digits.len() > 1 && digits[0] == b'0';
    if digits.is_empty()
        || bytes.len() > MAX_LEN
        || leading_zero
        || (negative && digits == b"0")
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return Err(NotInteger);
    }
    // Accumulate negatively, so that i64::MIN parses too.
    let mut n: i64 = 0;
    for &d in digits {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_sub(i64::from(d - b'0')))
            .ok_or(NotInteger)?;
    }
    if negative {
        Ok(n)
    } else {
        n.checked_neg().ok_or(NotInteger)
    }
}

/// Encodes a counter's value.
pub fn format(n: i64) -> Vec<u8> {
    n.to_string().into_bytes()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_canonical_forms_only() {
        for (text, n) in [
            ("0", 0),
            ("42", 42),
            ("-7", -7),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
        ] {
            assert_eq!(parse(text.as_bytes()), Ok(n), "{text}");
        }
        for text in [
            "",
            "-",
            "+1",
            "007",
            "-0",
            " 1",
            "1 ",
            "1.0",
            "1e3",
            "abc",
            "9223372036854775808",
            "-9223372036854775809",
            "00",
        ] {
            assert_eq!(parse(text.as_bytes()), Err(NotInteger), "{text:?}");
        }
    }

    proptest! {
        #[test]
        fn format_and_parse_round_trip(n in any::<i64>()) {
            prop_assert_eq!(parse(&format(n)), Ok(n));
        }

        #[test]
        fn parse_never_panics_and_accepts_only_what_format_writes(bytes in prop::collection::vec(any::<u8>(), 0..24)) {
            if let Ok(n) = parse(&bytes) {
                prop_assert_eq!(format(n), bytes);
            }
        }
    }
}
