//! Warm restart: a new server adopts the store an earlier server left in
//! its segment (held by a keeper across the crash).
//!
//! The earlier server may have died anywhere in a write. What it can have
//! left, and what adoption does about each (old clients may still be
//! reading, so every repair is itself a write under the `seq` protocol):
//!
//! * an odd `seq` (it died between the two stores of a bracket): made even
//!   by adding one, never by going back; whatever the slot or table word
//!   holds is consistent either way, because a block is complete before it
//!   is linked (rule 1);
//! * a block written but never linked, or an old block unlinked but not
//!   yet handed back: unreachable, so the allocator, rebuilt from its page
//!   map and the set of reachable blocks, counts it free;
//! * anything a crash cannot explain (a table word outside the data area, a
//!   slot naming a block that is not a block start of the page map, whose
//!   checksum fails, whose key hashes to another stripe, or that another
//!   slot already names; the same key twice): the entry is dropped and its
//!   stripe's table rebuilt from what remains; all of it is counted.
//!
//! Then the version counter restarts from the header's high-water mark, so
//! no version is handed out twice, and the server logs one line with the
//! counts.

use super::alloc::Allocator;
use super::block;
use super::hash::KeyHash;
use super::layout::{hdr, stripe, Geometry, LayoutError};
use super::segment::Segment;
use super::table::{Slot, TableWord, EMPTY, MIN_LOG2_CAPACITY, TOMBSTONE};
use super::write::{StoreWriter, StripeState};
use crossbeam_utils::CachePadded;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

/// What adoption found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdoptReport {
    /// Entries kept.
    pub entries: u64,
    /// Entries dropped (see the module docs for why).
    pub dropped: u64,
    /// Stripes whose table was rebuilt.
    pub tables_rebuilt: u64,
    /// Stripes whose `seq` was left odd.
    pub seqs_fixed: u64,
    /// Free blocks in the allocator's slabs after the rebuild: the ones
    /// that were free, and any the dead server had allocated but not linked
    /// (or unlinked but not handed back).
    pub free_blocks: u64,
    /// Bytes of the data area that belong to no valid slab (released,
    /// never used again).
    pub unusable_bytes: u64,
    /// Pages of the page map that made no sense (released, not reused).
    pub page_map_problems: usize,
}

/// One stripe as found.
struct Found {
    seq: u64,
    table: Option<TableWord>,
    /// (hash, slot word, block offset) of the entries that passed every check.
    entries: Vec<(KeyHash, u64, u64)>,
    tombstones: u64,
    /// The table must be rebuilt (something in it was dropped, or the
    /// table word itself was garbage).
    dirty: bool,
}

impl<S: Segment> StoreWriter<S> {
    /// Adopts the store in `segment`: checks and repairs it as the module
    /// docs say, rebuilds the allocator, and returns a writer that serves
    /// it, with what was found.
    ///
    /// # Errors
    ///
    /// [`LayoutError`] when the segment's header is not a store's (nothing
    /// is touched then).
    pub fn adopt(
        segment: S,
        max_memory: u64,
        max_entries: Option<u64>,
    ) -> Result<(Self, AdoptReport), LayoutError> {
        let g = Geometry::from_header(&segment.words())?;
        let (found, mut report, alloc, high, tables_live) = {
            let words = segment.words();
            let mut report = AdoptReport::default();
            let mut seen_blocks = HashSet::new();
            let mut found = Vec::with_capacity(g.stripes() as usize);
            let mut max_version = 0u64;
            for s in 0..g.stripes() {
                let seq_at = g.stripe_word(s, stripe::SEQ);
                let mut seq = words.load(seq_at).unwrap_or(0);
                if seq & 1 == 1 {
                    seq = seq.wrapping_add(1);
                    words.store_with(seq_at, seq, Ordering::Release);
                    report.seqs_fixed += 1;
                }
                let word = words.load(g.stripe_word(s, stripe::TABLE)).unwrap_or(0);
                let table = TableWord::decode(word).filter(|t| g.in_data(t.offset, t.bytes(), 16));
                let mut f = Found {
                    seq,
                    table,
                    entries: Vec::new(),
                    tombstones: 0,
                    dirty: word != 0 && table.is_none(),
                };
                if let Some(t) = table {
                    seen_blocks.insert(t.offset);
                    let mut keys = HashSet::new();
                    for i in 0..t.capacity() {
                        let w = words.load(t.slot_at(i)).unwrap_or(EMPTY);
                        match Slot::decode(w) {
                            Slot::Empty => {}
                            Slot::Tombstone => f.tombstones += 1,
                            Slot::Live { tag, offset } => {
                                let kept = check_entry(&words, &g, s, tag, offset).filter(
                                    |(_, key, _)| {
                                        seen_blocks.insert(offset) && keys.insert(key.clone())
                                    },
                                );
                                match kept {
                                    Some((hash, _, version)) => {
                                        max_version = max_version.max(version);
                                        f.entries.push((hash, w, offset));
                                    }
                                    None => {
                                        report.dropped += 1;
                                        f.dirty = true;
                                    }
                                }
                            }
                        }
                    }
                }
                found.push(f);
            }

            // The allocator from its page map and everything reachable: entry
            // blocks and every table (a table about to be replaced stays live
            // until the replacement is linked, so it cannot be handed out for
            // the replacement itself while readers may still walk it).
            let config = Self::alloc_config(&g, max_memory);
            let reachable = found.iter().flat_map(|f| {
                f.table
                    .map(|t| t.offset)
                    .into_iter()
                    .chain(f.entries.iter().map(|e| e.2))
            });
            let (alloc, rebuilt) = Allocator::rebuild(
                config,
                &super::segment::SegmentArena::new(&segment, g),
                reachable.collect::<Vec<_>>(),
            );
            report.free_blocks = rebuilt.free_blocks;
            report.unusable_bytes = rebuilt.unusable_bytes;
            report.page_map_problems = rebuilt.page_map_problems;
            let rejected: HashSet<u64> = rebuilt.rejected.iter().map(|(o, _)| *o).collect();
            let mut tables_live = HashSet::new();
            for f in &mut found {
                if let Some(t) = f.table {
                    if rejected.contains(&t.offset) {
                        f.dirty = true;
                    } else {
                        tables_live.insert(t.offset);
                    }
                }
                let before = f.entries.len();
                f.entries.retain(|e| !rejected.contains(&e.2));
                let gone = (before - f.entries.len()) as u64;
                if gone > 0 {
                    report.dropped += gone;
                    f.dirty = true;
                }
            }

            let high = words
                .load(hdr::VERSION_HIGH * 8)
                .unwrap_or(0)
                .max(max_version);
            (found, report, alloc, high, tables_live)
        };
        let stripes = found
            .iter()
            .map(|f| {
                CachePadded::new(Mutex::new(StripeState {
                    seq: f.seq,
                    table: f.table,
                    live: f.entries.len() as u64,
                    used: f.entries.len() as u64 + f.tombstones,
                }))
            })
            .collect();
        let expired_before = segment.words().load(hdr::EXPIRED * 8).unwrap_or(0);
        let segment_evicted = segment.words().load(hdr::EVICTED * 8).unwrap_or(0);
        let writer = Self {
            segment,
            geometry: g,
            stripes,
            alloc: Mutex::new(alloc),
            max_memory,
            version: AtomicU64::new(high),
            version_high: Mutex::new(0),
            entries: AtomicU64::new(0),
            max_entries,
            expiry: Default::default(),
            // The count goes on from what the dead server published.
            expired: AtomicU64::new(expired_before),
            eviction: Default::default(),
            evicted: AtomicU64::new(segment_evicted),
            sample_cursor: AtomicU64::new(high),
        };
        // The sweep's queue is private: rebuilt from the entries kept.
        let words = writer.segment().words();
        for f in &found {
            for &(_, _, offset) in &f.entries {
                if let Ok(h) = super::block::read_header(&words, &g, offset) {
                    if h.meta.deadline != 0 {
                        writer.expiry.push(h.meta.deadline, offset);
                    }
                }
            }
        }
        writer.reserve_versions(high);
        writer.publish_committed(writer.alloc.lock().stats().committed_bytes);

        // Rebuild the tables of dirty stripes from what remains, each under
        // its own `seq` bracket; then free the old table if it was a block.
        for (s, f) in found.iter().enumerate() {
            report.entries += f.entries.len() as u64;
            if !f.dirty {
                continue;
            }
            report.tables_rebuilt += 1;
            let mut st = writer.stripes[s].lock();
            let items: Vec<(KeyHash, u64)> = f.entries.iter().map(|e| (e.0, e.1)).collect();
            let table_at = g.stripe_word(s as u64, stripe::TABLE);
            if items.is_empty() {
                st.table = None;
                st.live = 0;
                st.used = 0;
                writer.publish(s as u64, &mut st, table_at, 0);
            } else {
                let log2 = (items.len() as u64 * 2)
                    .next_power_of_two()
                    .trailing_zeros()
                    .max(MIN_LOG2_CAPACITY);
                match writer.build_table_of(&items, log2) {
                    Ok((table, placed)) => {
                        st.table = Some(table);
                        st.live = placed;
                        st.used = placed;
                        writer.publish(s as u64, &mut st, table_at, table.encode());
                    }
                    Err(_) => {
                        // No memory for a new table: leave the stripe
                        // readable as it was, its bad slots turned to
                        // tombstones one by one.
                        if let Some(t) = f.table.filter(|t| tables_live.contains(&t.offset)) {
                            let keep: HashSet<u64> = f.entries.iter().map(|e| e.2).collect();
                            for i in 0..t.capacity() {
                                let w = words.load(t.slot_at(i)).unwrap_or(EMPTY);
                                if let Slot::Live { offset, .. } = Slot::decode(w) {
                                    if !keep.contains(&offset) {
                                        writer.publish(s as u64, &mut st, t.slot_at(i), TOMBSTONE);
                                    }
                                }
                            }
                        }
                        continue;
                    }
                }
            }
            if let Some(old) = f.table {
                if tables_live.contains(&old.offset) {
                    writer.free_block(old.offset);
                }
            }
        }
        let mut total = 0;
        for (s, stripe_state) in writer.stripes.iter().enumerate() {
            let st = stripe_state.lock();
            total += st.live;
            words.store(g.stripe_word(s as u64, stripe::ENTRIES), st.live);
        }
        writer.entries.store(total, Ordering::Relaxed);
        report.entries = total;
        Ok((writer, report))
    }
}

/// Checks the entry block a slot of stripe `s` names; its hash, key and
/// version if it is whole, belongs to the stripe and matches the slot's tag.
fn check_entry(
    words: &super::words::Words<'_>,
    g: &Geometry,
    s: u64,
    tag: u16,
    offset: u64,
) -> Option<(KeyHash, Vec<u8>, u64)> {
    let h = block::read_header(words, g, offset).ok()?;
    if block::checksum_ok(words, g, offset) != Some(true) {
        return None;
    }
    let mut key = Vec::new();
    words
        .read_into(offset + h.key_at(), h.key_len, &mut key)
        .ok()?;
    let hash = KeyHash::of(&key, g.seed);
    (hash.stripe(g.stripe_bits) == s && hash.tag() == tag).then_some((hash, key, h.meta.version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::block::ValueSource;
    use crate::store::read::Lookup;
    use crate::store::segment::HeapSegment;
    use crate::store::write::WriteMode;
    use std::collections::HashMap;
    use std::sync::Arc;

    const MEMORY: u64 = 1 << 30;

    fn fresh() -> StoreWriter<Arc<HeapSegment>> {
        let g = Geometry::new(16 << 20, 3, 256, 64 << 10, 0xabc);
        StoreWriter::create(
            Arc::new(HeapSegment::new(g.segment_size, None)),
            g,
            MEMORY,
            None,
            9,
        )
    }

    fn fill(w: &StoreWriter<Arc<HeapSegment>>, n: u32) -> HashMap<Vec<u8>, Vec<u8>> {
        let mut model = HashMap::new();
        for i in 0..n {
            let k = format!("key-{i}").into_bytes();
            let v = format!("value-{i}-{}", "x".repeat((i % 50) as usize)).into_bytes();
            w.set(&k, ValueSource::Bytes(&v), WriteMode::Upsert, |_| {})
                .unwrap();
            model.insert(k, v);
        }
        for i in (0..n).step_by(7) {
            let k = format!("key-{i}").into_bytes();
            w.del(&k, |_| {});
            model.remove(&k);
        }
        model
    }

    fn check(w: &StoreWriter<Arc<HeapSegment>>, model: &HashMap<Vec<u8>, Vec<u8>>) {
        for (k, v) in model {
            match w.view().get(k) {
                Lookup::Found { value, .. } => assert_eq!(&value, v),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(k)),
            }
        }
        assert_eq!(w.len(), model.len() as u64);
    }

    #[test]
    fn a_clean_store_is_adopted_whole_and_keeps_serving() {
        let w = fresh();
        let model = fill(&w, 3000);
        let version = w.version();
        let segment = Arc::clone(w.segment());
        drop(w); // the crash: nothing is written on the way out
        let (a, report) = StoreWriter::adopt(segment, MEMORY, None).unwrap();
        assert_eq!(report.dropped, 0, "{report:?}");
        assert_eq!(report.entries, model.len() as u64);
        check(&a, &model);
        assert!(a.version() >= version, "versions never go back");
        // New writes never land on live blocks.
        let mut model = model;
        for i in 0..2000 {
            let k = format!("new-{i}").into_bytes();
            a.set(&k, ValueSource::Bytes(b"fresh"), WriteMode::Upsert, |_| {})
                .unwrap();
            model.insert(k, b"fresh".to_vec());
        }
        check(&a, &model);
        assert!(a.version() > version);
    }

    #[test]
    fn what_a_dead_writer_or_a_scribbler_left_is_repaired_or_dropped() {
        let w = fresh();
        let mut model = fill(&w, 500);
        let g = *w.geometry();
        let words = w.segment().words();
        // A stripe left mid-write: odd seq.
        let seq_at = g.stripe_word(1, stripe::SEQ);
        words.store(seq_at, words.load(seq_at).unwrap() | 1);
        // A damaged block: flip a value byte of one entry (its checksum fails).
        // Not of stripe 7, whose table word is scribbled below (it would be
        // lost with the whole stripe, and not be counted as dropped).
        let victim = model
            .keys()
            .find(|k| KeyHash::of(k, g.seed).stripe(g.stripe_bits) != 7)
            .unwrap()
            .clone();
        let offset = {
            let h = KeyHash::of(&victim, g.seed);
            let t = TableWord::decode(
                words
                    .load(g.stripe_word(h.stripe(g.stripe_bits), stripe::TABLE))
                    .unwrap(),
            )
            .unwrap();
            (0..t.capacity())
                .find_map(|i| match Slot::decode(words.load(t.slot_at(i)).unwrap()) {
                    Slot::Live { offset, .. } => {
                        let hd = block::read_header(&words, &g, offset).unwrap();
                        let mut k = Vec::new();
                        words
                            .read_into(offset + hd.key_at(), hd.key_len, &mut k)
                            .unwrap();
                        (k == victim).then_some(offset + hd.value_at())
                    }
                    _ => None,
                })
                .unwrap()
        };
        words.store(offset, words.load(offset).unwrap() ^ 0xff);
        model.remove(&victim);
        // A garbage table word in an empty-looking stripe 7.
        words.store(g.stripe_word(7, stripe::TABLE), u64::MAX);
        let lost_in_7: Vec<_> = model
            .keys()
            .filter(|k| KeyHash::of(k, g.seed).stripe(g.stripe_bits) == 7)
            .cloned()
            .collect();
        for k in &lost_in_7 {
            model.remove(k);
        }
        let segment = Arc::clone(w.segment());
        drop(w);
        let (a, report) = StoreWriter::adopt(segment, MEMORY, None).unwrap();
        assert_eq!(report.seqs_fixed, 1);
        assert!(report.dropped >= 1, "{report:?}");
        assert!(report.tables_rebuilt >= 2, "{report:?}");
        check(&a, &model);
        assert!(matches!(a.view().get(&victim), Lookup::Absent));
        for k in &lost_in_7 {
            assert!(matches!(a.view().get(k), Lookup::Absent));
        }
        // Every stripe's seq is even, and writes go on everywhere.
        for s in 0..g.stripes() {
            assert_eq!(
                a.segment()
                    .words()
                    .load(g.stripe_word(s, stripe::SEQ))
                    .unwrap()
                    & 1,
                0
            );
        }
        for i in 0..300 {
            let k = format!("after-{i}").into_bytes();
            a.set(&k, ValueSource::Bytes(b"v"), WriteMode::Upsert, |_| {})
                .unwrap();
            model.insert(k, b"v".to_vec());
        }
        check(&a, &model);
    }

    #[test]
    fn a_segment_without_a_store_is_refused_untouched() {
        let seg = Arc::new(HeapSegment::new(1 << 20, None));
        seg.words().store(4096, 77);
        assert!(StoreWriter::adopt(Arc::clone(&seg), MEMORY, None).is_err());
        assert_eq!(seg.words().load(4096), Some(77));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::store::block::ValueSource;
    use crate::store::read::Lookup;
    use crate::store::segment::HeapSegment;
    use crate::store::write::WriteMode;
    use proptest::prelude::*;
    use std::sync::Arc;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Garbage written anywhere after the header (tables, blocks, the
        /// page map): adoption never panics, and every entry it keeps reads
        /// back whole, and the store keeps taking writes.
        #[test]
        fn adoption_survives_garbage(scribbles in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..200)) {
            let g = Geometry::new(8 << 20, 2, 64, 1024, 5);
            let seg = Arc::new(HeapSegment::new(g.segment_size, None));
            let w = StoreWriter::create(Arc::clone(&seg), g, 1 << 30, None, 1);
            for i in 0..400u32 {
                let k = format!("k{i}").into_bytes();
                w.set(&k, ValueSource::Bytes(&i.to_le_bytes()), WriteMode::Upsert, |_| {}).unwrap();
            }
            drop(w);
            let words = seg.words();
            let span = (words.len_bytes() - 4096) / 8;
            for (at, v) in scribbles {
                words.store(4096 + (at % span) * 8, v);
            }
            let Ok((a, _report)) = StoreWriter::adopt(Arc::clone(&seg), 1 << 30, None) else {
                return Ok(());
            };
            for i in 0..400u32 {
                let k = format!("k{i}").into_bytes();
                if let Lookup::Found { value, .. } = a.view().get(&k) {
                    prop_assert_eq!(value, i.to_le_bytes().to_vec());
                }
            }
            for i in 0..100u32 {
                let k = format!("new{i}").into_bytes();
                let _ = a.set(&k, ValueSource::Bytes(b"x"), WriteMode::Upsert, |_| {});
            }
        }
    }
}
