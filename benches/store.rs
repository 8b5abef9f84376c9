//! The store in one process: [`StoreView::get`] and [`StoreWriter::set`]
//! over a heap segment, against LMDB (`heed`) and `DashMap` holding the same
//! data.
//!
//! Every contender holds the same keys (`key:00000042`, 12 bytes) with
//! 32-byte values, 100 000 of them (`store/get`, `store/set`), and again
//! 10 000 (`store/get_10k`, `store/set_10k`: a working set that fits this
//! machine's caches, as in `e2e`), and every GET returns an owned `Vec<u8>`
//! of the value:
//!
//! * `store/get/kvs_view`: [`StoreView::get`], the lock-free read a client
//!   does on the mapped store segment (stripe `seq` before and after the
//!   walk, the value copied under the block's generation);
//! * `store/get/lmdb_txn_per_get`: a read transaction begun and ended
//!   around every get, as a reader that wants fresh data does (the value is
//!   copied out before the transaction ends);
//! * `store/get/lmdb_txn_reused`: one read transaction for a whole batch of
//!   gets (a floor for LMDB's lookup alone; not what a fresh reader pays);
//! * `store/get/dashmap`: `DashMap::get`, the value cloned out.
//!
//! SET replaces a present key with a new 32-byte value:
//!
//! * `store/set/kvs_writer`: [`StoreWriter::set`] (a new block, the slot
//!   swapped inside the stripe's `seq` bracket, the old block freed);
//! * `store/set/dashmap`: `DashMap::insert` of owned key and value;
//! * `store/set/lmdb_commit_each`: one put and one commit per SET;
//! * `store/set/lmdb_commit_1000`: puts committed every 1000 (batched).
//!
//! The LMDB environment lives in a temporary directory under `/dev/shm` when
//! there is one (tmpfs: its commits and syncs write no disk, like the kvs
//! store, which is in memory too), else under the system's temp dir.
//!
//! Run with `cargo bench --bench store` (about a minute; `-- --test` runs
//! each once).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dashmap::DashMap;
use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions};
use kvs::core::store::block::ValueSource;
use kvs::core::store::segment::HeapSegment;
use kvs::core::store::write::{StoreWriter, WriteMode};
use kvs::core::store::{Geometry, Lookup};

/// Keys every contender holds (the main groups).
const KEYS: u64 = 100_000;
/// Keys of the `_10k` groups.
const KEYS_SMALL: u64 = 10_000;
/// Bytes per value.
const VALUE_SIZE: usize = 32;
/// Puts per commit in `lmdb_commit_1000`.
const LMDB_BATCH: u64 = 1000;

fn key(i: u64) -> Vec<u8> {
    format!("key:{i:08}").into_bytes()
}

fn value(i: u64, round: u64) -> Vec<u8> {
    let mut v = format!("{round:x}.{i:x}.").into_bytes();
    v.resize(VALUE_SIZE, b'v');
    v
}

/// A tiny xorshift: picking a key must cost next to nothing.
fn next_key(state: &mut u64, keys: u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state % keys
}

/// A store as the server builds it (1024 stripes, keys up to 1 KiB, values
/// up to 1 MiB), over 64 MiB of heap, filled with `keys` entries.
fn kvs_store(keys: u64) -> StoreWriter<HeapSegment> {
    let g = Geometry::new(64 << 20, 10, 1024, 1 << 20, 0x5eed_1234);
    let w = StoreWriter::create(HeapSegment::new(g.segment_size, None), g, 1 << 30, None, 1);
    for i in 0..keys {
        w.set(
            &key(i),
            ValueSource::Bytes(&value(i, 0)),
            WriteMode::Upsert,
            |_| {},
        )
        .expect("fill the store");
    }
    w
}

fn dash_map(keys: u64) -> DashMap<Vec<u8>, Vec<u8>> {
    let m = DashMap::new();
    for i in 0..keys {
        m.insert(key(i), value(i, 0));
    }
    m
}

/// An LMDB environment in a fresh temporary directory, removed on drop.
struct Lmdb {
    env: Env,
    db: Database<Bytes, Bytes>,
    dir: PathBuf,
}

impl Lmdb {
    fn create(keys: u64) -> Self {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("kvs-bench-lmdb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("LMDB directory");
        // SAFETY: the environment is opened once, by this process, in a
        // directory nobody else uses.
        let env = unsafe {
            EnvOpenOptions::new()
                .map_size(1 << 30)
                .open(&dir)
                .expect("open LMDB")
        };
        let mut wtxn = env.write_txn().expect("write txn");
        let db: Database<Bytes, Bytes> =
            env.create_database(&mut wtxn, None).expect("LMDB database");
        for i in 0..keys {
            db.put(&mut wtxn, &key(i), &value(i, 0)).expect("fill LMDB");
        }
        wtxn.commit().expect("commit");
        Self { env, db, dir }
    }
}

impl Drop for Lmdb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(1));
    g
}

fn bench_get(c: &mut Criterion) {
    get_group(c, "store/get", KEYS);
    get_group(c, "store/get_10k", KEYS_SMALL);
}

fn bench_set(c: &mut Criterion) {
    set_group(c, "store/set", KEYS);
    set_group(c, "store/set_10k", KEYS_SMALL);
}

fn get_group(c: &mut Criterion, name: &str, n: u64) {
    let keys: Vec<Vec<u8>> = (0..n).map(key).collect();
    let store = kvs_store(n);
    let lmdb = Lmdb::create(n);
    let dash = dash_map(n);
    let mut g = group(c, name);

    let view = store.view();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    g.bench_function(BenchmarkId::from_parameter("kvs_view"), |b| {
        b.iter(|| match view.get(&keys[next_key(&mut rng, n) as usize]) {
            Lookup::Found { value, .. } => black_box(value),
            other => panic!("{other:?}"),
        })
    });

    g.bench_function(BenchmarkId::from_parameter("lmdb_txn_per_get"), |b| {
        b.iter(|| {
            let rtxn = lmdb.env.read_txn().expect("read txn");
            let v = lmdb
                .db
                .get(&rtxn, &keys[next_key(&mut rng, n) as usize])
                .expect("get")
                .expect("present")
                .to_vec();
            drop(rtxn);
            black_box(v)
        })
    });

    g.bench_function(BenchmarkId::from_parameter("lmdb_txn_reused"), |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            let rtxn = lmdb.env.read_txn().expect("read txn");
            for _ in 0..iters {
                let v = lmdb
                    .db
                    .get(&rtxn, &keys[next_key(&mut rng, n) as usize])
                    .expect("get")
                    .expect("present")
                    .to_vec();
                black_box(v);
            }
            drop(rtxn);
            start.elapsed()
        })
    });

    g.bench_function(BenchmarkId::from_parameter("dashmap"), |b| {
        b.iter(|| {
            let v = dash
                .get(&keys[next_key(&mut rng, n) as usize])
                .expect("present")
                .clone();
            black_box(v)
        })
    });
    g.finish();
}

fn set_group(c: &mut Criterion, name: &str, n: u64) {
    let keys: Vec<Vec<u8>> = (0..n).map(key).collect();
    let values: Vec<Vec<u8>> = (0..64).map(|r| value(r, r + 1)).collect();
    let store = kvs_store(n);
    let lmdb = Lmdb::create(n);
    let dash = dash_map(n);
    let mut g = group(c, name);

    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut round = 0usize;
    g.bench_function(BenchmarkId::from_parameter("kvs_writer"), |b| {
        b.iter(|| {
            round += 1;
            let k = &keys[next_key(&mut rng, n) as usize];
            let v = &values[round % values.len()];
            black_box(
                store
                    .set(k, ValueSource::Bytes(v), WriteMode::Upsert, |_| {})
                    .expect("set"),
            )
        })
    });

    g.bench_function(BenchmarkId::from_parameter("dashmap"), |b| {
        b.iter(|| {
            round += 1;
            let k = &keys[next_key(&mut rng, n) as usize];
            let v = &values[round % values.len()];
            black_box(dash.insert(k.clone(), v.clone()))
        })
    });

    g.bench_function(BenchmarkId::from_parameter("lmdb_commit_each"), |b| {
        b.iter(|| {
            round += 1;
            let k = &keys[next_key(&mut rng, n) as usize];
            let v = &values[round % values.len()];
            let mut wtxn = lmdb.env.write_txn().expect("write txn");
            lmdb.db.put(&mut wtxn, k, v).expect("put");
            wtxn.commit().expect("commit");
        })
    });

    g.bench_function(BenchmarkId::from_parameter("lmdb_commit_1000"), |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            let mut done = 0;
            while done < iters {
                let batch = (iters - done).min(LMDB_BATCH);
                let mut wtxn = lmdb.env.write_txn().expect("write txn");
                for _ in 0..batch {
                    round += 1;
                    let k = &keys[next_key(&mut rng, n) as usize];
                    let v = &values[round % values.len()];
                    lmdb.db.put(&mut wtxn, k, v).expect("put");
                }
                wtxn.commit().expect("commit");
                done += batch;
            }
            start.elapsed()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_get, bench_set);
criterion_main!(benches);
