//! An entry block: a header, the key, then the value.
//!
//! ```text
//! offset  size  field
//!      0     8  key length (low 32 bits) | value length (high 32 bits)
//!      8     8  version
//!     16     8  modified, unix ns
//!     24     8  deadline (0: none)
//!     32     8  generation (bumped each time the block is handed out or freed)
//!     40     8  checksum: xxh3-64 of bytes 0..32, the key and the value
//!     48     .  key, padded to 8
//!      .     .  value, padded to 8
//! ```
//!
//! A block is 16-aligned and lies in one allocator slab; the generation
//! word stays at offset 32 of a block start for the life of the segment
//! (see the store's rule 4). The checksum is computed by the server over
//! what it wrote; readers do not check it (a new server does, when it
//! adopts a store after a crash).

use super::layout::Geometry;
use super::words::{OutOfBounds, Words};
use xxhash_rust::xxh3::Xxh3;

/// Bytes of the header.
pub const HEADER_BYTES: u64 = 48;
/// Offset of the generation word.
pub const GENERATION: u64 = 32;
/// Offset of the checksum word.
pub const CHECKSUM: u64 = 40;

/// Bytes of a block holding `key_len` and `value_len`.
pub const fn block_bytes(key_len: u64, value_len: u64) -> u64 {
    HEADER_BYTES + key_len.div_ceil(8) * 8 + value_len.div_ceil(8) * 8
}

/// The metadata of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    /// The entry's version.
    pub version: u64,
    /// Last change, unix ns.
    pub modified_ns: u64,
    /// Deadline (0: none).
    pub deadline: u64,
}

/// A block header as read (and checked against the limits) from the
/// segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Key length.
    pub key_len: u64,
    /// Value length.
    pub value_len: u64,
    /// Metadata.
    pub meta: Meta,
    /// Generation.
    pub generation: u64,
}

impl Header {
    /// Offset of the key within the block.
    pub const fn key_at(&self) -> u64 {
        HEADER_BYTES
    }

    /// Offset of the value within the block.
    pub const fn value_at(&self) -> u64 {
        HEADER_BYTES + self.key_len.div_ceil(8) * 8
    }

    /// Bytes of the block.
    pub const fn bytes(&self) -> u64 {
        block_bytes(self.key_len, self.value_len)
    }
}

/// Whether an entry with `deadline` (0: none) is expired at `now` (both
/// unix ns): from its deadline on, an entry is absent for every reader.
#[inline]
pub fn is_expired(deadline: u64, now: u64) -> bool {
    deadline != 0 && deadline <= now
}

/// Why a block cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The block or its contents lie outside the data area.
    #[error(transparent)]
    Bounds(#[from] OutOfBounds),
    /// A length above the store's limits.
    #[error("a block claims a key of {key_len} or a value of {value_len} bytes")]
    Lengths {
        /// Key length found.
        key_len: u64,
        /// Value length found.
        value_len: u64,
    },
}

/// Reads the header of the block at `offset`, checking it against `g`: the
/// block must start 16-aligned in the data area, its lengths must be within
/// the store's limits, and the whole block must fit the segment.
///
/// # Errors
///
/// [`BlockError`] for anything that does not fit.
pub fn read_header(words: &Words<'_>, g: &Geometry, offset: u64) -> Result<Header, BlockError> {
    let bounds = OutOfBounds {
        offset,
        len: HEADER_BYTES,
    };
    if !g.in_data(offset, HEADER_BYTES, 16) {
        return Err(bounds.into());
    }
    let word = |at: u64| words.load(offset + at).ok_or(bounds);
    let lens = word(0)?;
    let (key_len, value_len) = (lens & 0xffff_ffff, lens >> 32);
    if key_len == 0 || key_len > g.max_key || value_len > g.max_value {
        return Err(BlockError::Lengths { key_len, value_len });
    }
    let header = Header {
        key_len,
        value_len,
        meta: Meta {
            version: word(8)?,
            modified_ns: word(16)?,
            deadline: word(24)?,
        },
        generation: word(GENERATION)?,
    };
    if !g.in_data(offset, header.bytes(), 16) {
        return Err(OutOfBounds {
            offset,
            len: header.bytes(),
        }
        .into());
    }
    Ok(header)
}

/// Writes a complete entry block at `offset` (server only; the block is
/// not linked yet): header, key, value and checksum. The generation word is
/// left alone (the allocator's handing-out bumped it).
///
/// # Errors
///
/// [`OutOfBounds`] if the block does not fit (nothing linked refers to it,
/// so a partial write is harmless).
pub fn write_entry(
    words: &Words<'_>,
    offset: u64,
    key: &[u8],
    value: ValueSource<'_, '_>,
    meta: Meta,
) -> Result<(), OutOfBounds> {
    let value_len = value.len();
    let header = [
        key.len() as u64 | (value_len << 32),
        meta.version,
        meta.modified_ns,
        meta.deadline,
    ];
    let bounds = OutOfBounds {
        offset,
        len: block_bytes(key.len() as u64, value_len),
    };
    for (i, w) in header.iter().enumerate() {
        if !words.store(offset + 8 * i as u64, *w) {
            return Err(bounds);
        }
    }
    words.write_bytes(offset + HEADER_BYTES, key, |_| {})?;
    let value_at = HEADER_BYTES + (key.len() as u64).div_ceil(8) * 8;
    let checksum = match value {
        ValueSource::Bytes(v) => {
            words.write_bytes(offset + value_at, v, |_| {})?;
            checksum_of(&header, key, v)
        }
        ValueSource::Words {
            src,
            offset: from,
            len,
        } if len as usize <= ONE_SHOT_BYTES - 32 - key.len().min(ONE_SHOT_BYTES - 32) => {
            // Small: one copy onto the stack (the source may change under
            // us; the checksum covers what was copied, as below).
            let mut value = [0u8; ONE_SHOT_BYTES];
            let value = &mut value[..len as usize];
            src.read_to_slice(from, value)?;
            words.write_bytes(offset + value_at, value, |_| {})?;
            checksum_of(&header, key, value)
        }
        ValueSource::Words {
            src,
            offset: from,
            len,
        } => {
            let mut hasher = Xxh3::new();
            for w in &header {
                hasher.update(&w.to_le_bytes());
            }
            hasher.update(key);
            words.copy_from(offset + value_at, src, from, len, |b| hasher.update(b))?;
            hasher.digest()
        }
    };
    if !words.store(offset + CHECKSUM, checksum) {
        return Err(bounds);
    }
    Ok(())
}

/// Entries up to this many bytes (header, key and value) are hashed in one
/// call over a copy on the stack: the streaming hasher's setup (a 256-byte
/// buffer and its state) cost about a tenth of a small SET.
const ONE_SHOT_BYTES: usize = 512;

/// The checksum of an entry: XXH3-64 of the header words (little-endian),
/// the key and the value, one after the other.
fn checksum_of(header: &[u64; 4], key: &[u8], value: &[u8]) -> u64 {
    const HASHED_HEADER: usize = 8 * 4;
    let len = HASHED_HEADER + key.len() + value.len();
    if len <= ONE_SHOT_BYTES {
        let mut buf = [0u8; ONE_SHOT_BYTES];
        for (i, w) in header.iter().enumerate() {
            // In bounds: 4 words are 32 bytes, and `len` <= the buffer.
            buf[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
        }
        let k = HASHED_HEADER;
        buf[k..k + key.len()].copy_from_slice(key);
        buf[k + key.len()..len].copy_from_slice(value);
        return xxhash_rust::xxh3::xxh3_64(&buf[..len]);
    }
    let mut hasher = Xxh3::new();
    for w in header {
        hasher.update(&w.to_le_bytes());
    }
    hasher.update(key);
    hasher.update(value);
    hasher.digest()
}

/// Where a value to be written comes from.
#[derive(Debug, Clone, Copy)]
pub enum ValueSource<'a, 'w> {
    /// Bytes in the server's memory.
    Bytes(&'a [u8]),
    /// `len` bytes at `offset` of other words (a client's staging buffer,
    /// which its owner may still be writing: copied word by word, and the
    /// checksum covers what was copied).
    Words {
        /// The source.
        src: &'a Words<'w>,
        /// Byte offset in the source.
        offset: u64,
        /// Bytes.
        len: u64,
    },
}

impl ValueSource<'_, '_> {
    /// The value's length.
    pub fn len(&self) -> u64 {
        match self {
            ValueSource::Bytes(b) => b.len() as u64,
            ValueSource::Words { len, .. } => *len,
        }
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Recomputes the checksum of the block at `offset` (a new server checking
/// an adopted store). `None` when the block does not fit.
pub fn checksum_ok(words: &Words<'_>, g: &Geometry, offset: u64) -> Option<bool> {
    let h = read_header(words, g, offset).ok()?;
    let mut hasher = Xxh3::new();
    for i in 0..4 {
        hasher.update(&words.load(offset + 8 * i)?.to_le_bytes());
    }
    let mut buf = Vec::new();
    words
        .read_into(offset + h.key_at(), h.key_len, &mut buf)
        .ok()?;
    hasher.update(&buf);
    words
        .read_into(offset + h.value_at(), h.value_len, &mut buf)
        .ok()?;
    hasher.update(&buf);
    Some(words.load(offset + CHECKSUM)? == hasher.digest())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::store::words::WordBuf;

    fn geometry() -> Geometry {
        Geometry::new(1 << 20, 2, 64, 4096, 1)
    }

    #[test]
    fn the_one_shot_checksum_equals_the_streaming_one() {
        let header = [3 | (5 << 32), 9, 11, 0];
        for (k, v) in [(3usize, 5usize), (100, 380), (100, 381), (1, 4000)] {
            let key = vec![b'k'; k];
            let value: Vec<u8> = (0..v).map(|i| i as u8).collect();
            let mut hasher = Xxh3::new();
            for w in &header {
                hasher.update(&u64::to_le_bytes(*w));
            }
            hasher.update(&key);
            hasher.update(&value);
            assert_eq!(
                checksum_of(&header, &key, &value),
                hasher.digest(),
                "{k}+{v}"
            );
        }
    }

    #[test]
    fn a_written_entry_reads_back_with_a_valid_checksum() {
        let g = geometry();
        let buf = WordBuf::new(g.segment_size);
        let w = buf.words();
        let at = g.data_start + 64;
        let meta = Meta {
            version: 7,
            modified_ns: 8,
            deadline: 0,
        };
        write_entry(&w, at, b"key", ValueSource::Bytes(b"a value"), meta).unwrap();
        let h = read_header(&w, &g, at).unwrap();
        assert_eq!((h.key_len, h.value_len, h.meta), (3, 7, meta));
        assert_eq!(h.value_at(), 56);
        let mut out = Vec::new();
        w.read_into(at + h.value_at(), h.value_len, &mut out)
            .unwrap();
        assert_eq!(out, b"a value");
        assert_eq!(checksum_ok(&w, &g, at), Some(true));
        // Any changed byte fails it.
        w.store(at + h.value_at(), 0);
        assert_eq!(checksum_ok(&w, &g, at), Some(false));
    }

    #[test]
    fn headers_that_do_not_fit_are_refused() {
        let g = geometry();
        let buf = WordBuf::new(g.segment_size);
        let w = buf.words();
        let at = g.data_start;
        // Misaligned, before the data area, past the end.
        assert!(read_header(&w, &g, at + 8).is_err());
        assert!(read_header(&w, &g, at - 16).is_err());
        assert!(read_header(&w, &g, g.segment_size - 32).is_err());
        // A zero key length, or lengths above the limits.
        assert!(matches!(
            read_header(&w, &g, at),
            Err(BlockError::Lengths { .. })
        ));
        w.store(at, 65);
        assert!(matches!(
            read_header(&w, &g, at),
            Err(BlockError::Lengths { .. })
        ));
        w.store(at, 1 | (4097 << 32));
        assert!(matches!(
            read_header(&w, &g, at),
            Err(BlockError::Lengths { .. })
        ));
        // Lengths within the limits but running past the segment.
        let last = g.segment_size - 64;
        w.store(last, 8 | (4096 << 32));
        assert!(matches!(
            read_header(&w, &g, last),
            Err(BlockError::Bounds(_))
        ));
    }

    #[test]
    fn a_value_copied_from_other_words_is_checksummed_as_written() {
        let g = geometry();
        let store = WordBuf::new(g.segment_size);
        let staging = WordBuf::new(256);
        staging
            .words()
            .write_bytes(0, b"staged value!", |_| {})
            .unwrap();
        let at = g.data_start;
        let src = staging.words();
        let value = ValueSource::Words {
            src: &src,
            offset: 0,
            len: 13,
        };
        write_entry(&store.words(), at, b"k", value, Meta::default()).unwrap();
        assert_eq!(checksum_ok(&store.words(), &g, at), Some(true));
        let mut out = Vec::new();
        store.words().read_into(at + 56, 13, &mut out).unwrap();
        assert_eq!(out, b"staged value!");
    }
}
