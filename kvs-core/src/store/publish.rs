//! The writer's protocol steps, on their own so that the server's writer
//! and the loom models run the same code (see rules 1 to 4 of [`super`]).

use super::block::GENERATION;
use super::layout::{stripe, Geometry};
use super::words::Words;
use crate::sync::{fence, Ordering};

/// Readies a block just taken from the allocator for writing: bumps its
/// generation, then `fence(Release)`, so a reader whose value copy sees any
/// of the new owner's stores (made after this returns) sees the new
/// generation when it checks after its own `fence(Acquire)` (rule 4).
pub fn prepare_block(words: &Words<'_>, offset: u64) {
    bump_generation(words, offset, Ordering::Relaxed);
    fence(Ordering::Release);
}

/// Retires a block its stripe's write just unlinked: bumps its generation
/// with `Release`, before the allocator may hand it out or punch it (rule
/// 3 and 4; a punched block reads 0, which no generation equals).
pub fn retire_block(words: &Words<'_>, offset: u64) {
    bump_generation(words, offset, Ordering::Release);
}

fn bump_generation(words: &Words<'_>, offset: u64, order: Ordering) {
    let g = words
        .load_with(offset + GENERATION, Ordering::Relaxed)
        .unwrap_or(0)
        .wrapping_add(1);
    // Generations start at 1 (and skip 0 when they wrap).
    words.store_with(offset + GENERATION, g.max(1), order);
}

/// Stores `word` at `at` (a slot, or the stripe's table word) inside the
/// stripe's `seq` bracket (rule 2), and the stripe's entry count `live`.
/// `seq` is the server's own copy, advanced by 2.
pub fn publish(
    words: &Words<'_>,
    geometry: &Geometry,
    stripe_index: u64,
    seq: &mut u64,
    at: u64,
    word: u64,
    live: u64,
) {
    let seq_at = geometry.stripe_word(stripe_index, stripe::SEQ);
    *seq = seq.wrapping_add(1);
    words.store(seq_at, *seq);
    // Orders the odd `seq` before the slot store: a reader whose walk saw
    // the slot (and then fenced) loads `seq` at least this odd value.
    fence(Ordering::Release);
    words.store(at, word);
    words.store(geometry.stripe_word(stripe_index, stripe::ENTRIES), live);
    *seq = seq.wrapping_add(1);
    // Release: a reader that acquires this even value sees the block
    // (written before) and the slot.
    words.store_with(seq_at, *seq, Ordering::Release);
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! The read/write protocol under loom: one writer updating, reusing a
    //! block, and swapping tables, against a reader. The value of every
    //! write encodes its version, so a reader that mixed two writes (a
    //! value from one, metadata from another) is caught.
    use super::*;
    use crate::store::block::{self, Meta, ValueSource};
    use crate::store::read::{Lookup, StoreView};
    use crate::store::table::{Slot, TableWord};
    use crate::store::words::WordBuf;
    use crate::store::KeyHash;
    use loom::sync::Arc;
    use loom::thread;

    const KEY: &[u8] = b"k";

    fn geometry() -> Geometry {
        // The smallest store loom can afford (every word is a loom atomic):
        // the header page, one stripe, then 1.5 KiB of data.
        Geometry {
            segment_size: 4096 + 2048,
            stripe_bits: 0,
            page_map: 4096 + 128,
            data_start: 4096 + 512,
            max_key: 8,
            max_value: 8,
            seed: 3,
        }
    }

    /// Writes version `v` of KEY into the block at `offset`.
    fn write_block(words: &Words<'_>, offset: u64, v: u64) {
        prepare_block(words, offset);
        let meta = Meta {
            version: v,
            modified_ns: v,
            deadline: 0,
        };
        block::write_entry(
            words,
            offset,
            KEY,
            ValueSource::Bytes(&v.to_le_bytes()),
            meta,
        )
        .unwrap();
    }

    fn check(found: Lookup, allowed: &[u64]) {
        match found {
            Lookup::Found { meta, value } => {
                let v = u64::from_le_bytes(value.try_into().expect("8 bytes"));
                assert_eq!(v, meta.version, "value of one write, metadata of another");
                assert!(allowed.contains(&v), "version {v} was never the value");
            }
            Lookup::Busy => {} // the caller would ask a worker
            other => panic!("{other:?}"),
        }
    }

    /// Update into a new block, then into the first block reused: the
    /// reader sees one of the written values whole, never a mix.
    #[test]
    fn a_reader_never_mixes_two_writes() {
        loom::model(|| {
            let g = geometry();
            let buf = Arc::new(WordBuf::new(g.segment_size));
            let words = buf.words();
            let hash = KeyHash::of(KEY, g.seed);
            let table = TableWord {
                offset: g.data_start,
                log2_capacity: 1,
            };
            let (a, b) = (g.data_start + 64, g.data_start + 128);
            write_block(&words, a, 1);
            let slot = table.slot_at(hash.start(table.capacity()));
            words.store(slot, Slot::live(hash.tag(), a));
            let mut seq = 0;
            let table_at = g.stripe_word(0, stripe::TABLE);
            publish(&words, &g, 0, &mut seq, table_at, table.encode(), 1);

            let writer = {
                let buf = Arc::clone(&buf);
                thread::spawn(move || {
                    let words = buf.words();
                    let mut seq = seq;
                    write_block(&words, b, 2);
                    publish(&words, &g, 0, &mut seq, slot, Slot::live(hash.tag(), b), 1);
                    retire_block(&words, a);
                    write_block(&words, a, 3);
                    publish(&words, &g, 0, &mut seq, slot, Slot::live(hash.tag(), a), 1);
                    retire_block(&words, b);
                })
            };
            let view = StoreView::new(buf.words(), g);
            check(view.get(KEY), &[1, 2, 3]);
            writer.join().unwrap();
            check(view.get(KEY), &[3]);
        });
    }

    /// A table swap (a resize) under a reader: the entry, present in both
    /// tables, is never reported absent.
    #[test]
    fn a_table_swap_never_hides_an_entry() {
        loom::model(|| {
            let g = geometry();
            let buf = Arc::new(WordBuf::new(g.segment_size));
            let words = buf.words();
            let hash = KeyHash::of(KEY, g.seed);
            let old = TableWord {
                offset: g.data_start,
                log2_capacity: 1,
            };
            let new = TableWord {
                offset: g.data_start + 256,
                log2_capacity: 2,
            };
            let a = g.data_start + 64;
            write_block(&words, a, 1);
            words.store(
                old.slot_at(hash.start(old.capacity())),
                Slot::live(hash.tag(), a),
            );
            let mut seq = 0;
            let table_at = g.stripe_word(0, stripe::TABLE);
            publish(&words, &g, 0, &mut seq, table_at, old.encode(), 1);

            let writer = {
                let buf = Arc::clone(&buf);
                thread::spawn(move || {
                    let words = buf.words();
                    let mut seq = seq;
                    // Build the new table beside the old, then swap.
                    prepare_block(&words, new.offset);
                    words.store(
                        new.slot_at(hash.start(new.capacity())),
                        Slot::live(hash.tag(), a),
                    );
                    publish(&words, &g, 0, &mut seq, table_at, new.encode(), 1);
                    retire_block(&words, old.offset);
                    // The old table's memory reused for garbage.
                    words.store(old.offset, u64::MAX);
                    words.store(old.offset + 8, u64::MAX);
                })
            };
            let view = StoreView::new(buf.words(), g);
            check(view.get(KEY), &[1]);
            writer.join().unwrap();
        });
    }
}
