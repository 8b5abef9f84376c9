//! Text for people: how stored bytes are shown on a terminal or in a
//! line-oriented listing, and the fixed-size text key of the examples and
//! tests.
//!
//! Keys and values are bytes of any kind; tools print them escaped, so
//! stored data never drives the terminal it is printed on and one entry
//! stays on one line.
//!
//! ```
//! use kvs_core::text::escape_bytes_for_display;
//!
//! assert_eq!(escape_bytes_for_display(b"plain"), "plain");
//! assert_eq!(escape_bytes_for_display(b"tab\there \xff"), "tab\\there \\xff");
//! ```

use crate::fixed_str::FixedStr;

/// A text key of up to 63 bytes, as a fixed-size `Pod` type (examples and
/// tests; any [`Codec`](crate::codec::Codec) type can be a key).
pub type TextKey = FixedStr<64>;

/// `text` for display on a terminal or in a line-oriented listing: control
/// characters (newlines and tabs included) and backslashes escaped as in
/// Rust (`\n`, `\t`, `\u{1b}`, `\\`), everything else as it is. Stored data
/// never drives the terminal it is printed on, and one entry stays on one
/// line.
///
/// ```
/// use kvs_core::text::escape_for_display;
///
/// assert_eq!(escape_for_display("plain"), "plain");
/// assert_eq!(escape_for_display("two\nlines\t\u{1b}[31m"), "two\\nlines\\t\\u{1b}[31m");
/// ```
pub fn escape_for_display(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() || c == '\\') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Bytes for display: valid UTF-8 as [`escape_for_display`] shows it, and
/// every byte that is not part of valid UTF-8 as `\xNN`.
pub fn escape_bytes_for_display(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return escape_for_display(text);
    }
    let mut out = String::with_capacity(bytes.len() + 16);
    for chunk in bytes.utf8_chunks() {
        out.push_str(&escape_for_display(chunk.valid()));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `n` and the noun that goes with it: `counted(1, "worker", "workers")`
/// is "1 worker", `counted(2, ...)` "2 workers".
///
/// ```
/// use kvs_core::text::counted;
/// assert_eq!(counted(1, "entry", "entries"), "1 entry");
/// assert_eq!(counted(0, "entry", "entries"), "0 entries");
/// ```
pub fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_escaped_one_entry_one_line() {
        assert_eq!(escape_bytes_for_display(b"a\nb"), "a\\nb");
        assert_eq!(
            escape_bytes_for_display(&[0x66, 0xff, 0x00]),
            "f\\xff\\u{0}"
        );
        assert_eq!(escape_bytes_for_display("é".as_bytes()), "é");
    }
}
