//! Throughput of the request ring ([`RingBuffer`], heap-backed) against
//! `crossbeam_queue::ArrayQueue`, the same algorithm without the changes for
//! processes that die (publishing by CAS, `Busy` instead of waiting).
//!
//! Both queues sit behind the small [`PushPop`] trait, hold `u64`s in 1024
//! cells, and run the same scenarios, one criterion group each:
//!
//! * `ring/1p1c`: one producer thread, one consumer thread;
//! * `ring/2p2c`: two of each (oversubscribed on a 2-core machine).
//!
//! Threads are released together by a barrier; the time is from the release
//! until the last thread is done, and the throughput is in elements (one push
//! plus one pop) per second, so the two bars of a group read as a ratio.
//! A producer that finds the queue full, or a consumer that finds it empty,
//! yields, in both implementations.
//!
//! Run with `cargo bench --bench ring`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use kvs::core::ring::{RingBuffer, MAX_VALUE};

/// Cells in each queue.
const CAPACITY: usize = 1024;

/// The operations both queues offer.
trait PushPop: Sync {
    /// The implementation's name in the report.
    const NAME: &'static str;
    fn with_capacity(cap: usize) -> Self;
    /// `false` when full.
    fn push(&self, v: u64) -> bool;
    fn pop(&self) -> Option<u64>;
}

impl PushPop for RingBuffer {
    const NAME: &'static str = "kvs_ring";

    fn with_capacity(cap: usize) -> Self {
        RingBuffer::new(cap)
    }

    /// The ring carries 20-bit slot indices; the bench's values fit once
    /// masked, and only their count is checked.
    fn push(&self, v: u64) -> bool {
        self.ring().push((v & u64::from(MAX_VALUE)) as u32).is_ok()
    }

    fn pop(&self) -> Option<u64> {
        self.ring().pop().ok().map(u64::from)
    }
}

impl PushPop for ArrayQueue<u64> {
    const NAME: &'static str = "crossbeam_ArrayQueue";

    fn with_capacity(cap: usize) -> Self {
        ArrayQueue::new(cap)
    }

    fn push(&self, v: u64) -> bool {
        ArrayQueue::push(self, v).is_ok()
    }

    fn pop(&self) -> Option<u64> {
        ArrayQueue::pop(self)
    }
}

/// Moves `total` values through `q` with `producers` and `consumers` threads;
/// returns the time from the common start to the last thread's end.
fn transfer<Q: PushPop>(q: &Q, producers: u64, consumers: u64, total: u64) -> Duration {
    let barrier = Barrier::new((producers + consumers + 1) as usize);
    let popped = AtomicU64::new(0);
    let start = thread::scope(|s| {
        for p in 0..producers {
            let (barrier, q) = (&barrier, q);
            s.spawn(move || {
                let n = total / producers + u64::from(p < total % producers);
                barrier.wait();
                for i in 0..n {
                    while !q.push(i) {
                        thread::yield_now();
                    }
                }
            });
        }
        for _ in 0..consumers {
            let (barrier, q, popped) = (&barrier, q, &popped);
            s.spawn(move || {
                barrier.wait();
                while popped.load(Ordering::Relaxed) < total {
                    match q.pop() {
                        Some(v) => {
                            black_box(v);
                            popped.fetch_add(1, Ordering::Relaxed);
                        }
                        None => thread::yield_now(),
                    }
                }
            });
        }
        barrier.wait();
        Instant::now()
    });
    start.elapsed()
}

/// One benchmark of group `g`: queue `Q` with the group's thread counts.
fn contender<Q: PushPop>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    producers: u64,
    consumers: u64,
) {
    g.bench_function(BenchmarkId::from_parameter(Q::NAME), |b| {
        b.iter_custom(|iters| {
            let q = Q::with_capacity(CAPACITY);
            transfer(&q, producers, consumers, iters)
        })
    });
}

fn bench_ring(c: &mut Criterion) {
    for (name, producers, consumers) in [("ring/1p1c", 1, 1), ("ring/2p2c", 2, 2)] {
        let mut g = c.benchmark_group(name);
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .throughput(Throughput::Elements(1));
        contender::<RingBuffer>(&mut g, producers, consumers);
        contender::<ArrayQueue<u64>>(&mut g, producers, consumers);
        g.finish();
    }
}

criterion_group!(benches, bench_ring);
criterion_main!(benches);
