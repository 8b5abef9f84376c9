//! Text keys and values for the binaries and other tools.
//!
//! Keys are [`TextKey`] (`FixedStr<64>`: up to 63 bytes, the seeds' limit).
//! Values come in size classes, chosen by the server (`--value-size`) and
//! read back from the region's header by every client, so the two never need
//! to agree by flag.
//!
//! ```
//! use kvs_core::text::ValueClass;
//!
//! assert_eq!(ValueClass::for_len(255), Some(ValueClass::B256));
//! assert_eq!(ValueClass::for_len(256), Some(ValueClass::B1K));
//! assert_eq!(ValueClass::for_len(5000), None);
//! assert_eq!(ValueClass::B4K.capacity(), 4095);
//! ```

use crate::fixed_str::{FixedStr, Value1K, Value256, Value4K};

/// The key type of text regions.
pub type TextKey = FixedStr<64>;

/// A value size class of text regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueClass {
    /// `FixedStr<256>`: up to 255 bytes (the default).
    B256,
    /// `FixedStr<1024>`: up to 1023 bytes.
    B1K,
    /// `FixedStr<4096>`: up to 4095 bytes.
    B4K,
}

impl ValueClass {
    /// Every class, smallest first.
    pub const ALL: [ValueClass; 3] = [ValueClass::B256, ValueClass::B1K, ValueClass::B4K];

    /// The smallest class that holds values of `len` bytes.
    pub fn for_len(len: usize) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.capacity() >= len)
    }

    /// The class whose value type is `size` bytes (as stored in a header).
    pub fn from_type_size(size: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.type_size() as u64 == size)
    }

    /// Longest value, in bytes.
    pub fn capacity(self) -> usize {
        self.type_size() - 1
    }

    /// `size_of` the value type.
    pub fn type_size(self) -> usize {
        match self {
            ValueClass::B256 => std::mem::size_of::<Value256>(),
            ValueClass::B1K => std::mem::size_of::<Value1K>(),
            ValueClass::B4K => std::mem::size_of::<Value4K>(),
        }
    }
}

/// Runs `$body` with the type alias `$v` bound to the value type of `$class`.
///
/// ```
/// use kvs_core::{text::ValueClass, with_value_class};
///
/// let size = with_value_class!(ValueClass::B1K, V => std::mem::size_of::<V>());
/// assert_eq!(size, 1024);
/// ```
#[macro_export]
macro_rules! with_value_class {
    ($class:expr, $v:ident => $body:expr) => {
        match $class {
            $crate::text::ValueClass::B256 => {
                type $v = $crate::fixed_str::Value256;
                $body
            }
            $crate::text::ValueClass::B1K => {
                type $v = $crate::fixed_str::Value1K;
                $body
            }
            $crate::text::ValueClass::B4K => {
                type $v = $crate::fixed_str::Value4K;
                $body
            }
        }
    };
}

/// Why a text key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The empty key.
    #[error("a key must not be empty")]
    Empty,
    /// More bytes than a key holds.
    #[error("key is {len} bytes, the limit is {max}")]
    TooLong {
        /// Bytes given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A control character (NUL, a newline, an escape...).
    #[error("a key must not contain control characters (found {found:?} at byte {at})")]
    Control {
        /// The character.
        found: char,
        /// Its byte offset.
        at: usize,
    },
}

/// The one rule for text keys, wherever they come from (the command line,
/// job files, the HTTP gateway): 1 to 63 bytes of UTF-8 without control
/// characters. A key is printed by `list`, `watch` and event streams, so it
/// must never carry a character that drives a terminal; and a key that no
/// tool could name again (the empty one) is refused rather than stored.
///
/// ```
/// use kvs_core::text::{check_key, KeyError};
///
/// assert!(check_key("user:42").is_ok());
/// assert_eq!(check_key(""), Err(KeyError::Empty));
/// assert!(check_key("a\u{1b}[31m").is_err());
/// assert!(check_key(&"k".repeat(64)).is_err());
/// ```
///
/// # Errors
///
/// [`KeyError`] saying what is wrong.
pub fn check_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > TextKey::CAPACITY {
        return Err(KeyError::TooLong {
            len: key.len(),
            max: TextKey::CAPACITY,
        });
    }
    if let Some((at, found)) = key.char_indices().find(|(_, c)| c.is_control()) {
        return Err(KeyError::Control { found, at });
    }
    Ok(())
}

/// A [`TextKey`] from `key`, checked against [`check_key`].
///
/// # Errors
///
/// [`KeyError`].
pub fn text_key(key: &str) -> Result<TextKey, KeyError> {
    check_key(key)?;
    TextKey::new(key).map_err(|_| KeyError::TooLong {
        len: key.len(),
        max: TextKey::CAPACITY,
    })
}

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
