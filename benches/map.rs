//! Throughput of [`StripedMap`] against `dashmap::DashMap` and a
//! `parking_lot::Mutex<HashMap>`, under the same workloads.
//!
//! Every contender sits behind the small [`BenchMap`] trait and uses the same
//! hash function (the striped map's foldhash builder), so the comparison
//! measures the locking and table layout, not the hasher. Keys and values are
//! `u64`; the key space of [`KEYS`] keys is filled before measuring, and
//! writes overwrite existing keys so the size stays constant. Note that a
//! `StripedMap` write does more than the others: it reads the wall clock and
//! takes the next value of the map-wide version counter, a cache line that
//! all writers share.
//!
//! Scenarios (one criterion group each, one benchmark per map):
//! read/write mixes of 90/10 and 50/50, keys drawn uniformly or from a
//! Zipf-like distribution (exponent [`ZIPF_EXPONENT`], hot keys scattered
//! over the key space). [`THREADS`] threads are released together by a
//! barrier; the reported time is from the release until the last one
//! finishes, and throughput is in operations per second.
//!
//! Run with `cargo bench --bench map`; add a filter such as
//! `cargo bench --bench map -- 90r10w/zipf` for one scenario.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dashmap::DashMap;
use kvs_core::map::{DefaultHashBuilder, StripedMap};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Worker threads per run (the benchmark machine has 2 cores).
const THREADS: usize = 2;
/// Keys in the prefilled key space.
const KEYS: u64 = 100_000;
/// Operations per criterion iteration, over all threads together.
const OPS_PER_ITER: u64 = 10_000;
/// Length of each thread's precomputed operation list (a power of two).
const SCRIPT_LEN: usize = 1 << 16;
/// The exponent `s` of the Zipf-like distribution: P(rank k) ~ 1 / k^s.
const ZIPF_EXPONENT: f64 = 0.99;
/// Marks a write in a script entry; the low bits hold the key.
const WRITE_BIT: u64 = 1 << 63;

/// The operations every contender offers.
trait BenchMap: Send + Sync {
    /// The name in reports.
    const NAME: &'static str;
    /// An empty map with room for `capacity` entries.
    fn with_capacity(capacity: usize) -> Self;
    /// Reads `key`.
    fn read(&self, key: u64) -> Option<u64>;
    /// Sets `key` to `value`.
    fn write(&self, key: u64, value: u64);
}

impl BenchMap for StripedMap<u64, u64> {
    const NAME: &'static str = "StripedMap";

    fn with_capacity(capacity: usize) -> Self {
        StripedMap::with_capacity_and_stripe_amount(capacity, kvs_core::map::DEFAULT_STRIPES)
    }

    fn read(&self, key: u64) -> Option<u64> {
        self.get(&key).map(|entry| entry.value)
    }

    fn write(&self, key: u64, value: u64) {
        self.insert_or_assign(key, value).unwrap();
    }
}

impl BenchMap for DashMap<u64, u64, DefaultHashBuilder> {
    const NAME: &'static str = "DashMap";

    fn with_capacity(capacity: usize) -> Self {
        DashMap::with_capacity_and_hasher(capacity, DefaultHashBuilder::default())
    }

    fn read(&self, key: u64) -> Option<u64> {
        self.get(&key).map(|value| *value)
    }

    fn write(&self, key: u64, value: u64) {
        self.insert(key, value);
    }
}

impl BenchMap for Mutex<HashMap<u64, u64, DefaultHashBuilder>> {
    const NAME: &'static str = "Mutex<HashMap>";

    fn with_capacity(capacity: usize) -> Self {
        Mutex::new(HashMap::with_capacity_and_hasher(
            capacity,
            DefaultHashBuilder::default(),
        ))
    }

    fn read(&self, key: u64) -> Option<u64> {
        self.lock().get(&key).copied()
    }

    fn write(&self, key: u64, value: u64) {
        self.lock().insert(key, value);
    }
}

/// How keys are drawn.
#[derive(Clone, Copy, Debug)]
enum KeyDistribution {
    Uniform,
    Zipf,
}

impl KeyDistribution {
    fn name(self) -> &'static str {
        match self {
            Self::Uniform => "uniform",
            Self::Zipf => "zipf",
        }
    }
}

/// Draws keys from `0..KEYS` with probability proportional to
/// `1 / rank^ZIPF_EXPONENT`, where ranks are assigned to keys by a random
/// permutation (so hot keys land in random stripes, not in key order).
struct ZipfKeys {
    /// `cdf[r]`: probability of a rank `<= r` (0-based).
    cdf: Vec<f64>,
    /// `keys[r]`: the key with rank `r`.
    keys: Vec<u64>,
}

impl ZipfKeys {
    fn new(rng: &mut StdRng) -> Self {
        let mut sum = 0.0;
        let mut cdf: Vec<f64> = (1..=KEYS)
            .map(|rank| {
                sum += 1.0 / (rank as f64).powf(ZIPF_EXPONENT);
                sum
            })
            .collect();
        cdf.iter_mut().for_each(|p| *p /= sum);
        let mut keys: Vec<u64> = (0..KEYS).collect();
        keys.shuffle(rng);
        Self { cdf, keys }
    }

    fn sample(&self, rng: &mut StdRng) -> u64 {
        let u: f64 = rng.random();
        let rank = self
            .cdf
            .partition_point(|&p| p < u)
            .min(self.keys.len() - 1);
        self.keys[rank]
    }
}

/// Precomputes one script per thread: keys with [`WRITE_BIT`] set on writes.
/// Drawing keys during the measurement would time the random generator.
fn make_scripts(write_percent: u32, distribution: KeyDistribution) -> Vec<Vec<u64>> {
    let mut rng = StdRng::seed_from_u64(0x6b76_735f_6d61_7073);
    let zipf = matches!(distribution, KeyDistribution::Zipf).then(|| ZipfKeys::new(&mut rng));
    (0..THREADS)
        .map(|_| {
            (0..SCRIPT_LEN)
                .map(|_| {
                    let key = match &zipf {
                        Some(zipf) => zipf.sample(&mut rng),
                        None => rng.random_range(0..KEYS),
                    };
                    let write = rng.random_range(0..100) < write_percent;
                    key | if write { WRITE_BIT } else { 0 }
                })
                .collect()
        })
        .collect()
}

/// Runs `iters` iterations of [`OPS_PER_ITER`] operations on `map`, split
/// over [`THREADS`] threads, and returns the time from their common start to
/// the end of the last one.
fn run<M: BenchMap>(map: &M, scripts: &[Vec<u64>], iters: u64) -> Duration {
    let ops_per_thread = iters * OPS_PER_ITER / THREADS as u64;
    let barrier = Barrier::new(THREADS + 1);
    thread::scope(|s| {
        for script in scripts {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                for (i, &op) in script
                    .iter()
                    .cycle()
                    .take(ops_per_thread as usize)
                    .enumerate()
                {
                    let key = op & !WRITE_BIT;
                    if op & WRITE_BIT == 0 {
                        black_box(map.read(black_box(key)));
                    } else {
                        map.write(key, i as u64);
                    }
                }
            });
        }
        barrier.wait();
        let start = Instant::now();
        // Leaving the scope joins the workers; time it from here.
        start
    })
    .elapsed()
}

/// Benchmarks one contender in `group`: prefills it, then measures.
fn bench_one<M: BenchMap>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    scripts: &[Vec<u64>],
) {
    let map = M::with_capacity(KEYS as usize);
    for key in 0..KEYS {
        map.write(key, key);
    }
    group.bench_function(BenchmarkId::from_parameter(M::NAME), |b| {
        b.iter_custom(|iters| run(&map, scripts, iters));
    });
}

fn maps(c: &mut Criterion) {
    for (read_percent, write_percent) in [(90, 10), (50, 50)] {
        for distribution in [KeyDistribution::Uniform, KeyDistribution::Zipf] {
            let scripts = make_scripts(write_percent, distribution);
            let mut group = c.benchmark_group(format!(
                "map/{read_percent}r{write_percent}w/{}",
                distribution.name()
            ));
            group
                .throughput(Throughput::Elements(OPS_PER_ITER))
                .sample_size(10)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(2));
            bench_one::<StripedMap<u64, u64>>(&mut group, &scripts);
            bench_one::<DashMap<u64, u64, DefaultHashBuilder>>(&mut group, &scripts);
            bench_one::<Mutex<HashMap<u64, u64, DefaultHashBuilder>>>(&mut group, &scripts);
            group.finish();
        }
    }
}

criterion_group!(benches, maps);
criterion_main!(benches);
