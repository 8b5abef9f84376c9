//! One-request batches (MGET, MSET, MDEL): how many keys travel in one
//! request and their outcomes in one answer.
//!
//! A batch is one ring entry and one response slot: its records are the
//! request's payload (in the slot's data area when they fit, else in a
//! staging buffer, see [`crate::bulk`]), one worker serves them in one go,
//! and the answer's records go back in the same data area. Per key this
//! saves a slot claim, a ring push, a wake-up and a wait; what is left is
//! the store's own work.
//!
//! The request carries `key_len = 0`, `value_len =` the records' bytes and
//! `arg2 =` the record count. Records are whole words, little-endian, each
//! byte string padded with zeros to 8:
//!
//! ```text
//! MGET, MDEL request record: key length (u64) | key
//! MSET request record:       key length (u32) | value length (u32) << 32 | key | value
//! MSET, MDEL answer record:  status (u16) | aux (u32) << 32 | version (u64)
//! MGET answer record:        status (u16) | flags (u16) << 16 | value length (u32) << 32
//!                            | version | modified (unix ns) | deadline (unix ns) | value
//! ```
//!
//! The worker parses the whole request into its own memory first
//! ([`parse`]: every length checked against the payload and the store's
//! limits, the count against `arg2`) and refuses it as malformed before
//! doing anything if one record is wrong; only then does it execute, and it
//! writes the answer records over the request from offset 0 (it no longer
//! reads the request then). MSET stops at the first key the store refuses
//! (full, too long): the answer holds the records up to and including that
//! one, and no later key was tried. MGET stops when the next record would
//! not fit the data area and says [`MORE`](crate::protocol::MORE): the client
//! asks again for the rest. A value that does not fit even alone is
//! answered with [`VALUE_TOO_LARGE`](crate::protocol::VALUE_TOO_LARGE) in
//! its record and no bytes; the client reads that key on its own.
//!
//! Each key is changed atomically and in the batch's order, but a batch is
//! not a transaction: another client may see some of its keys changed and
//! others not yet (Redis's MSET is atomic; kvs's is not, on purpose: it
//! would have to lock every stripe a batch touches at once).
//!
//! The client decodes answers from its own copy ([`decode_outcomes`],
//! [`decode_values`]) with the same checks: nothing read from the region is
//! trusted.

use crate::store::words::Words;

/// Bytes of `n` rounded up to whole words.
#[inline]
pub const fn padded(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

/// Bytes of an MGET/MDEL request record for a key of `key_len` bytes.
pub const fn key_record_bytes(key_len: u64) -> u64 {
    8 + padded(key_len)
}

/// Bytes of an MSET request record.
pub const fn entry_record_bytes(key_len: u64, value_len: u64) -> u64 {
    8 + padded(key_len) + padded(value_len)
}

/// Bytes of an MSET/MDEL answer record.
pub const OUTCOME_BYTES: u64 = 16;
/// Bytes of an MGET answer record before its value.
pub const VALUE_HEAD_BYTES: u64 = 32;

/// The records of a batch request, built by the client.
#[derive(Debug, Default, Clone)]
pub struct Encoder {
    bytes: Vec<u8>,
    count: u64,
}

impl Encoder {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an MGET/MDEL record.
    pub fn push_key(&mut self, key: &[u8]) {
        self.bytes
            .extend_from_slice(&(key.len() as u64).to_le_bytes());
        self.push_padded(key);
        self.count += 1;
    }

    /// Adds an MSET record. Lengths beyond `u32` are the caller's to
    /// refuse (the store's limits are far below).
    pub fn push_entry(&mut self, key: &[u8], value: &[u8]) {
        let head = (key.len() as u64 & 0xffff_ffff) | (value.len() as u64) << 32;
        self.bytes.extend_from_slice(&head.to_le_bytes());
        self.push_padded(key);
        self.push_padded(value);
        self.count += 1;
    }

    fn push_padded(&mut self, b: &[u8]) {
        self.bytes.extend_from_slice(b);
        let pad = padded(b.len() as u64) as usize - b.len();
        self.bytes.extend(std::iter::repeat_n(0, pad));
    }

    /// The records.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// How many records.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Bytes so far.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Whether no record was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Empties it, keeping its memory.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.count = 0;
    }
}

/// One parsed request record: the key (copied out), and where its value
/// is in the payload (MSET; 0 and 0 otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The key.
    pub key: Vec<u8>,
    /// Byte offset of the value in the payload.
    pub value_at: u64,
    /// Bytes of the value.
    pub value_len: u64,
}

/// What is wrong with a batch's records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// A record's header or bytes lie beyond the payload.
    #[error("record {index} runs past the payload")]
    Truncated {
        /// The record.
        index: u64,
    },
    /// A key that is empty or beyond the store's limit.
    #[error("record {index}: key length {len}")]
    KeyLength {
        /// The record.
        index: u64,
        /// Its length.
        len: u64,
    },
    /// A value beyond the store's limit.
    #[error("record {index}: value length {len}")]
    ValueLength {
        /// The record.
        index: u64,
        /// Its length.
        len: u64,
    },
    /// The records do not add up to the count (or the payload's length).
    #[error("{found} records where the request says {said}")]
    Count {
        /// Records found.
        found: u64,
        /// The request's count.
        said: u64,
    },
    /// A status code no server sends.
    #[error("answer record {index}: unknown status {status}")]
    Status {
        /// The record.
        index: u64,
        /// The code.
        status: u16,
    },
}

/// Parses `count` request records from the first `len` bytes of `words`
/// (with values: MSET). Keys are copied out; values stay where they are.
///
/// # Errors
///
/// [`BatchError`] for the first record that is wrong; nothing is returned
/// then (all or nothing).
pub fn parse(
    words: &Words<'_>,
    len: u64,
    count: u64,
    with_values: bool,
    max_key: u64,
    max_value: u64,
) -> Result<Vec<Item>, BatchError> {
    if len > words.len_bytes() {
        return Err(BatchError::Truncated { index: 0 });
    }
    // At most one record per 16 bytes (a head word and one key word), so a
    // garbage count reserves nothing large.
    let mut items = Vec::with_capacity(count.min(len / 16) as usize);
    let mut at = 0u64;
    while at < len {
        let index = items.len() as u64;
        if index == count {
            break;
        }
        let head = words.load(at).ok_or(BatchError::Truncated { index })?;
        let (key_len, value_len) = if with_values {
            (head & 0xffff_ffff, head >> 32)
        } else {
            (head, 0)
        };
        if key_len == 0 || key_len > max_key {
            return Err(BatchError::KeyLength {
                index,
                len: key_len,
            });
        }
        if value_len > max_value {
            return Err(BatchError::ValueLength {
                index,
                len: value_len,
            });
        }
        // Both lengths are bounded by the store's limits (u32 at most), so
        // these sums cannot overflow a u64.
        let key_at = at + 8;
        let value_at = key_at + padded(key_len);
        let end = value_at + padded(value_len);
        if end > len {
            return Err(BatchError::Truncated { index });
        }
        let mut key = Vec::new();
        words
            .read_into(key_at, key_len, &mut key)
            .map_err(|_| BatchError::Truncated { index })?;
        items.push(Item {
            key,
            value_at: if with_values { value_at } else { 0 },
            value_len,
        });
        at = end;
    }
    let found = items.len() as u64;
    if found != count || at != len {
        return Err(BatchError::Count { found, said: count });
    }
    Ok(items)
}

/// The outcome of one MSET or MDEL record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// A [`StatusCode`](crate::protocol::StatusCode) as `u16`.
    pub status: u16,
    /// Op-specific: 1 when a SET inserted; the limit of a `StoreFull`.
    pub aux: u32,
    /// The entry's new version (0 when nothing changed).
    pub version: u64,
}

/// Stores an outcome record at byte `at`. False if it does not fit.
pub fn write_outcome(words: &Words<'_>, at: u64, o: &Outcome) -> bool {
    words.store(at, u64::from(o.status) | u64::from(o.aux) << 32) && words.store(at + 8, o.version)
}

/// Decodes `count` outcome records from an answer's bytes.
///
/// # Errors
///
/// [`BatchError`] when the bytes are short or a status is unknown.
pub fn decode_outcomes(bytes: &[u8], count: u64) -> Result<Vec<Outcome>, BatchError> {
    if count.saturating_mul(OUTCOME_BYTES) > bytes.len() as u64 {
        return Err(BatchError::Truncated { index: 0 });
    }
    bytes
        .chunks_exact(OUTCOME_BYTES as usize)
        .take(count as usize)
        .enumerate()
        .map(|(i, rec)| {
            let head = word_at(rec, 0);
            let status = head as u16;
            check_status(i as u64, status)?;
            Ok(Outcome {
                status,
                aux: (head >> 32) as u32,
                version: word_at(rec, 8),
            })
        })
        .collect()
}

/// The head of one MGET answer record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ValueHead {
    /// A [`StatusCode`](crate::protocol::StatusCode) as `u16`: `Ok` or
    /// `NotFound`.
    pub status: u16,
    /// [`VALUE_TOO_LARGE`](crate::protocol::VALUE_TOO_LARGE): the value is
    /// not in the record.
    pub flags: u16,
    /// Bytes of the value.
    pub value_len: u32,
    /// The entry's version.
    pub version: u64,
    /// Last change, unix ns.
    pub modified_ns: u64,
    /// Deadline, unix ns (0: none).
    pub deadline_ns: u64,
}

impl ValueHead {
    /// Bytes of the value that follow the head in the record.
    pub fn carried(&self) -> u64 {
        if self.flags & crate::protocol::VALUE_TOO_LARGE != 0 {
            0
        } else {
            u64::from(self.value_len)
        }
    }
}

/// Bytes of an MGET answer record whose head is `head`.
pub fn value_record_bytes(head: &ValueHead) -> u64 {
    VALUE_HEAD_BYTES + padded(head.carried())
}

/// Stores an MGET record head at byte `at`. False if it does not fit.
pub fn write_value_head(words: &Words<'_>, at: u64, h: &ValueHead) -> bool {
    words.store(
        at,
        u64::from(h.status) | u64::from(h.flags) << 16 | u64::from(h.value_len) << 32,
    ) && words.store(at + 8, h.version)
        && words.store(at + 16, h.modified_ns)
        && words.store(at + 24, h.deadline_ns)
}

/// Decodes `count` MGET answer records: each head with its value bytes
/// (empty when the record does not carry them).
///
/// # Errors
///
/// [`BatchError`] when the bytes are short or a status is unknown.
pub fn decode_values(bytes: &[u8], count: u64) -> Result<Vec<(ValueHead, Vec<u8>)>, BatchError> {
    let mut out = Vec::with_capacity(count.min(bytes.len() as u64 / VALUE_HEAD_BYTES) as usize);
    let mut at = 0usize;
    for index in 0..count {
        let rec = bytes
            .get(at..at + VALUE_HEAD_BYTES as usize)
            .ok_or(BatchError::Truncated { index })?;
        let w0 = word_at(rec, 0);
        let head = ValueHead {
            status: w0 as u16,
            flags: (w0 >> 16) as u16,
            value_len: (w0 >> 32) as u32,
            version: word_at(rec, 8),
            modified_ns: word_at(rec, 16),
            deadline_ns: word_at(rec, 24),
        };
        check_status(index, head.status)?;
        let value_at = at + VALUE_HEAD_BYTES as usize;
        let carried = head.carried() as usize;
        let value = bytes
            .get(value_at..value_at + carried)
            .ok_or(BatchError::Truncated { index })?
            .to_vec();
        at = value_at + padded(carried as u64) as usize;
        out.push((head, value));
    }
    Ok(out)
}

fn check_status(index: u64, status: u16) -> Result<(), BatchError> {
    crate::protocol::StatusCode::try_from(status)
        .map(|_| ())
        .map_err(|_| BatchError::Status { index, status })
}

/// The little-endian word at byte `at` of `rec` (which holds it).
fn word_at(rec: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&rec[at..at + 8]);
    u64::from_le_bytes(w)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::protocol::{StatusCode, VALUE_TOO_LARGE};
    use crate::store::words::WordBuf;
    use proptest::prelude::*;

    fn load(bytes: &[u8]) -> WordBuf {
        let buf = WordBuf::new(bytes.len() as u64 + 64);
        buf.words().write_bytes(0, bytes, |_| {}).unwrap();
        buf
    }

    #[test]
    fn entries_round_trip_with_their_value_offsets() {
        let mut e = Encoder::new();
        e.push_entry(b"a", b"hello");
        e.push_entry(b"key-two", b"");
        e.push_entry(b"k3", &[7u8; 20]);
        let buf = load(e.bytes());
        let items = parse(&buf.words(), e.len(), 3, true, 64, 64).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[1].key, b"key-two");
        let mut v = Vec::new();
        buf.words()
            .read_into(items[2].value_at, items[2].value_len, &mut v)
            .unwrap();
        assert_eq!(v, [7u8; 20]);
        buf.words()
            .read_into(items[0].value_at, items[0].value_len, &mut v)
            .unwrap();
        assert_eq!(v, b"hello");
    }

    #[test]
    fn a_bad_record_refuses_the_whole_batch() {
        let mut e = Encoder::new();
        e.push_key(b"fine");
        e.push_key(b"");
        let buf = load(e.bytes());
        assert_eq!(
            parse(&buf.words(), e.len(), 2, false, 64, 64),
            Err(BatchError::KeyLength { index: 1, len: 0 })
        );
        let mut e = Encoder::new();
        e.push_key(b"fine");
        let buf = load(e.bytes());
        // The count must match the records exactly, both ways.
        assert!(matches!(
            parse(&buf.words(), e.len(), 2, false, 64, 64),
            Err(BatchError::Count { found: 1, said: 2 })
        ));
        assert!(matches!(
            parse(&buf.words(), e.len(), 0, false, 64, 64),
            Err(BatchError::Count { found: 0, said: 0 })
        ));
        // A key beyond the limit, a length beyond the payload.
        assert!(matches!(
            parse(&buf.words(), e.len(), 1, false, 3, 64),
            Err(BatchError::KeyLength { .. })
        ));
        assert!(matches!(
            parse(&buf.words(), e.len() - 8, 1, false, 64, 64),
            Err(BatchError::Truncated { index: 0 })
        ));
    }

    #[test]
    fn value_records_round_trip_and_oversized_ones_carry_nothing() {
        let buf = WordBuf::new(256);
        let w = buf.words();
        let h1 = ValueHead {
            status: StatusCode::Ok as u16,
            value_len: 3,
            version: 9,
            modified_ns: 10,
            deadline_ns: 11,
            ..ValueHead::default()
        };
        assert!(write_value_head(&w, 0, &h1));
        w.write_bytes(VALUE_HEAD_BYTES, b"abc", |_| {}).unwrap();
        let at = value_record_bytes(&h1);
        let h2 = ValueHead {
            status: StatusCode::Ok as u16,
            flags: VALUE_TOO_LARGE,
            value_len: 1 << 30,
            ..ValueHead::default()
        };
        assert!(write_value_head(&w, at, &h2));
        let h3 = ValueHead {
            status: StatusCode::NotFound as u16,
            ..ValueHead::default()
        };
        let at3 = at + value_record_bytes(&h2);
        assert!(write_value_head(&w, at3, &h3));
        let end = at3 + value_record_bytes(&h3);
        let mut bytes = Vec::new();
        w.read_into(0, end, &mut bytes).unwrap();
        let got = decode_values(&bytes, 3).unwrap();
        assert_eq!(got[0], (h1, b"abc".to_vec()));
        assert_eq!(got[1], (h2, vec![]));
        assert_eq!(got[2], (h3, vec![]));
        assert!(decode_values(&bytes, 4).is_err());
        assert!(decode_values(&bytes[..40], 2).is_err());
    }

    #[test]
    fn outcomes_round_trip_and_unknown_statuses_are_refused() {
        let buf = WordBuf::new(64);
        let o = Outcome {
            status: StatusCode::StoreFull as u16,
            aux: 2,
            version: 0,
        };
        assert!(write_outcome(&buf.words(), 16, &o));
        let mut bytes = Vec::new();
        buf.words().read_into(0, 32, &mut bytes).unwrap();
        let got = decode_outcomes(&bytes, 2).unwrap();
        assert_eq!(got[1], o);
        assert!(decode_outcomes(&bytes, 3).is_err());
        bytes[0] = 0xee;
        assert!(matches!(
            decode_outcomes(&bytes, 2),
            Err(BatchError::Status { index: 0, .. })
        ));
    }

    proptest! {
        #[test]
        fn any_encoded_batch_parses_back(
            entries in prop::collection::vec(
                (prop::collection::vec(any::<u8>(), 1..40), prop::collection::vec(any::<u8>(), 0..70)),
                0..20,
            ),
            with_values: bool,
        ) {
            let mut e = Encoder::new();
            for (k, v) in &entries {
                if with_values { e.push_entry(k, v) } else { e.push_key(k) }
            }
            let buf = load(e.bytes());
            let items = parse(&buf.words(), e.len(), e.count(), with_values, 40, 70).unwrap();
            prop_assert_eq!(items.len(), entries.len());
            for (item, (k, v)) in items.iter().zip(&entries) {
                prop_assert_eq!(&item.key, k);
                if with_values {
                    let mut got = Vec::new();
                    buf.words().read_into(item.value_at, item.value_len, &mut got).unwrap();
                    prop_assert_eq!(&got, v);
                }
            }
        }

        #[test]
        fn garbage_never_panics(
            words in prop::collection::vec(any::<u64>(), 0..40),
            len in 0u64..400,
            count in any::<u64>(),
            with_values: bool,
        ) {
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let buf = load(&bytes);
            if let Ok(items) = parse(&buf.words(), len, count, with_values, 1024, 1 << 20) {
                prop_assert_eq!(items.len() as u64, count);
                for item in &items {
                    prop_assert!(item.value_at + item.value_len <= len);
                }
            }
            let _ = decode_outcomes(&bytes, count);
            let _ = decode_values(&bytes, count % 64);
        }
    }
}
