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
