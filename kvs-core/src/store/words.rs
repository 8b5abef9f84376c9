//! The store segment as aligned 64-bit words, every access bounds-checked.
//!
//! Both sides access the segment only through these functions: each word
//! is one `AtomicU64` load or store (`Relaxed`; the protocols order them with
//! fences, see the module docs of [`super`]). Byte strings are packed
//! little-endian into whole words, the tail of the last word padded with
//! zeros on write and trimmed on read, so no access is ever narrower or
//! misaligned, and a reader never forms a reference to bytes another
//! process may be storing.
//!
//! Offsets are byte offsets into the segment; an offset that is not a
//! multiple of 8, or a range that does not fit, is refused (`None`/`Err`)
//! before any access.

use crate::sync::{AtomicU64, Ordering};

/// A range did not fit the segment, or an offset was misaligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("offset {offset} (+{len} bytes) is outside the segment or misaligned")]
pub struct OutOfBounds {
    /// The offset asked for.
    pub offset: u64,
    /// The length asked for.
    pub len: u64,
}

/// A view of the segment as words.
#[derive(Debug, Clone, Copy)]
pub struct Words<'a> {
    words: &'a [AtomicU64],
}

impl<'a> Words<'a> {
    /// A view of `words`.
    pub fn new(words: &'a [AtomicU64]) -> Self {
        Self { words }
    }

    /// Bytes covered.
    pub fn len_bytes(&self) -> u64 {
        self.words.len() as u64 * 8
    }

    /// The word index of byte offset `offset`, if aligned and in bounds.
    #[inline]
    fn index(&self, offset: u64) -> Option<usize> {
        if offset % 8 != 0 {
            return None;
        }
        let i = usize::try_from(offset / 8).ok()?;
        (i < self.words.len()).then_some(i)
    }

    /// The word range for `len` bytes at `offset`, if aligned and in bounds.
    #[inline]
    fn range(&self, offset: u64, len: u64) -> Result<std::ops::Range<usize>, OutOfBounds> {
        let err = OutOfBounds { offset, len };
        if offset % 8 != 0 {
            return Err(err);
        }
        let first = usize::try_from(offset / 8).map_err(|_| err)?;
        let count = usize::try_from(len.div_ceil(8)).map_err(|_| err)?;
        let end = first.checked_add(count).ok_or(err)?;
        if end > self.words.len() {
            return Err(err);
        }
        Ok(first..end)
    }

    /// Asks the CPU to start loading the cache line of the word at
    /// `offset` (nothing when out of bounds, or not on x86-64). A hint: it
    /// reads no value and changes nothing, so a batch of lookups can
    /// overlap their cache misses instead of taking them one by one.
    #[inline]
    pub fn prefetch(&self, offset: u64) {
        #[cfg(all(target_arch = "x86_64", not(loom)))]
        if let Some(i) = self.index(offset) {
            let p = (&self.words[i] as *const AtomicU64).cast::<i8>();
            // SAFETY: a prefetch never faults and has no effect visible to
            // the program; `p` points into the words anyway (bounds
            // checked above). SSE is part of the x86-64 baseline.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p) };
        }
        #[cfg(not(all(target_arch = "x86_64", not(loom))))]
        let _ = offset;
    }

    /// One `Relaxed` load of the word at `offset`.
    #[inline]
    pub fn load(&self, offset: u64) -> Option<u64> {
        self.index(offset)
            .map(|i| self.words[i].load(Ordering::Relaxed))
    }

    /// One load of the word at `offset` with `order` (server side: the
    /// segment is mapped writable there; clients use `Relaxed` and fences).
    #[inline]
    pub fn load_with(&self, offset: u64, order: Ordering) -> Option<u64> {
        self.index(offset).map(|i| self.words[i].load(order))
    }

    /// One `Relaxed` store (server only). False if out of bounds.
    #[inline]
    pub fn store(&self, offset: u64, value: u64) -> bool {
        self.store_with(offset, value, Ordering::Relaxed)
    }

    /// One store with `order` (server only). False if out of bounds.
    #[inline]
    pub fn store_with(&self, offset: u64, value: u64, order: Ordering) -> bool {
        match self.index(offset) {
            Some(i) => {
                self.words[i].store(value, order);
                true
            }
            None => false,
        }
    }

    /// Copies `len` bytes at `offset` into `out` (replacing its contents).
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] before any access.
    pub fn read_into(&self, offset: u64, len: u64, out: &mut Vec<u8>) -> Result<(), OutOfBounds> {
        self.range(offset, len)?;
        let len = len as usize; // fits: the range fit in a slice
        out.clear();
        out.resize(len, 0);
        self.read_to_slice(offset, out)
    }

    /// Copies `out.len()` bytes at byte `offset` (8-aligned) into `out`,
    /// with the same Relaxed loads as [`Words::read_into`].
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] (and `out` untouched) if the bytes do not fit.
    pub fn read_to_slice(&self, offset: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
        let range = self.range(offset, out.len() as u64)?;
        for (w, chunk) in self.words[range].iter().zip(out.chunks_mut(8)) {
            let bytes = w.load(Ordering::Relaxed).to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }

    /// Whether the `bytes.len()` bytes at `offset` equal `bytes`.
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] before any access.
    pub fn eq_bytes(&self, offset: u64, bytes: &[u8]) -> Result<bool, OutOfBounds> {
        let range = self.range(offset, bytes.len() as u64)?;
        let words = &self.words[range];
        let mut chunks = bytes.chunks_exact(8);
        // Whole words compared as integers (a byte-slice comparison per
        // word called memcmp: a fifth of a short-key lookup).
        for (w, chunk) in words.iter().zip(&mut chunks) {
            let want = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            if w.load(Ordering::Relaxed) != want {
                return Ok(false);
            }
        }
        let tail = chunks.remainder();
        if tail.is_empty() {
            return Ok(true);
        }
        let mut want = [0u8; 8];
        want[..tail.len()].copy_from_slice(tail);
        let mask = u64::MAX >> (64 - 8 * tail.len() as u32);
        let got = words[words.len() - 1].load(Ordering::Relaxed);
        Ok(got & mask == u64::from_le_bytes(want))
    }

    /// Stores `bytes` at `offset` as whole words (the tail padded with
    /// zeros), feeding each word stored to `written` (server only).
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] before any store.
    pub fn write_bytes(
        &self,
        offset: u64,
        bytes: &[u8],
        mut written: impl FnMut(u64),
    ) -> Result<(), OutOfBounds> {
        let range = self.range(offset, bytes.len() as u64)?;
        for (w, chunk) in self.words[range].iter().zip(bytes.chunks(8)) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            let v = u64::from_le_bytes(word);
            w.store(v, Ordering::Relaxed);
            written(v);
        }
        Ok(())
    }

    /// Copies `len` bytes from `src` at `src_offset` into this view at
    /// `offset`, word by word (server only: staging to a block). Each word
    /// is loaded once and the stored word fed to `written`, so a checksum
    /// covers what was written, whatever the source does meanwhile.
    ///
    /// # Errors
    ///
    /// [`OutOfBounds`] (of either side) before any access.
    pub fn copy_from(
        &self,
        offset: u64,
        src: &Words<'_>,
        src_offset: u64,
        len: u64,
        mut written: impl FnMut(&[u8]),
    ) -> Result<(), OutOfBounds> {
        /// Words per chunk fed to `written` (one call per 4 KiB: a hasher
        /// fed 8 bytes at a time made this copy 5x slower).
        const CHUNK_WORDS: usize = 512;
        let to = self.range(offset, len)?;
        let from = src.range(src_offset, len)?;
        let mut left = len as usize;
        let mut chunk = [0u8; CHUNK_WORDS * 8];
        for (d, s) in self.words[to]
            .chunks(CHUNK_WORDS)
            .zip(src.words[from].chunks(CHUNK_WORDS))
        {
            let n = left.min(d.len() * 8);
            for (i, s) in s.iter().enumerate() {
                let v = s.load(Ordering::Relaxed);
                chunk[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
            }
            // The last word's padding is stored as zeros, whatever the
            // source held there.
            chunk[n..d.len() * 8].fill(0);
            for (i, d) in d.iter().enumerate() {
                let mut w = [0u8; 8];
                w.copy_from_slice(&chunk[8 * i..8 * i + 8]);
                d.store(u64::from_le_bytes(w), Ordering::Relaxed);
            }
            written(&chunk[..n]);
            left -= n;
        }
        Ok(())
    }
}

/// A heap buffer of words: the segment in unit tests, loom models and
/// benches.
#[derive(Debug)]
pub struct WordBuf {
    words: Vec<AtomicU64>,
}

impl WordBuf {
    /// `bytes` (rounded up to a word) of zeros.
    pub fn new(bytes: u64) -> Self {
        let n = bytes.div_ceil(8) as usize;
        Self {
            words: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The view.
    pub fn words(&self) -> Words<'_> {
        Words::new(&self.words)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_through_words_with_any_tail() {
        let buf = WordBuf::new(256);
        let w = buf.words();
        for len in [0usize, 1, 7, 8, 9, 15, 16, 100] {
            let data: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(31) | 1).collect();
            let mut stored = Vec::new();
            w.write_bytes(64, &data, |v| stored.push(v)).unwrap();
            assert_eq!(stored.len(), len.div_ceil(8));
            let mut out = vec![9; 3];
            w.read_into(64, len as u64, &mut out).unwrap();
            assert_eq!(out, data);
            assert!(w.eq_bytes(64, &data).unwrap());
            if len > 0 {
                let mut other = data.clone();
                other[len - 1] ^= 0x80;
                assert!(!w.eq_bytes(64, &other).unwrap());
            }
        }
    }

    #[test]
    fn out_of_bounds_and_misaligned_accesses_are_refused() {
        let buf = WordBuf::new(64);
        let w = buf.words();
        assert_eq!(w.load(64), None);
        assert_eq!(w.load(4), None);
        assert!(!w.store(64, 1));
        let mut out = Vec::new();
        assert!(w.read_into(56, 9, &mut out).is_err());
        assert!(w.read_into(60, 1, &mut out).is_err());
        assert!(w.read_into(0, u64::MAX, &mut out).is_err());
        assert!(w.read_into(u64::MAX - 7, 8, &mut out).is_err());
        assert!(w.eq_bytes(48, &[0; 17]).is_err());
        assert!(w.write_bytes(56, &[1; 9], |_| {}).is_err());
        assert!(w.read_into(56, 8, &mut out).is_ok());
    }

    #[test]
    fn copy_from_feeds_what_it_wrote() {
        let a = WordBuf::new(64);
        let b = WordBuf::new(64);
        a.words().write_bytes(0, b"hello, world", |_| {}).unwrap();
        let mut seen = Vec::new();
        b.words()
            .copy_from(8, &a.words(), 0, 12, |bytes| seen.extend_from_slice(bytes))
            .unwrap();
        assert_eq!(seen, b"hello, world");
        let mut out = Vec::new();
        b.words().read_into(8, 12, &mut out).unwrap();
        assert_eq!(out, b"hello, world");
        // The padding of the last word is zero, whatever the source held.
        assert_eq!(
            b.words().load(16),
            Some(u64::from_le_bytes(*b"orld\0\0\0\0"))
        );
    }
}
