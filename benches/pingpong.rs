//! The hardware floor of a synchronous request: two processes bouncing one
//! cache line of shared memory, with nothing else (no ring, no slots, no map).
//!
//! The parent maps one anonymous `MAP_SHARED` page and forks a child; they
//! share a 32-bit word. The parent writes an odd number (the "request"), the
//! child answers by writing the next even number, and one round trip is one
//! element. Two ways to wait, one criterion group, so they read as a ratio:
//!
//! * `pingpong/spin`: both sides spin on the word (`spin_loop` hints);
//! * `pingpong/futex`: both sides sleep on the word with a process-shared
//!   `FUTEX_WAIT` every time and the writer `FUTEX_WAKE`s: what a design that
//!   sleeps without spinning first pays per request.
//!
//! The end-to-end benches (`cargo bench --bench e2e`) are measured against the
//! spin figure; `BENCHMARKS.md` has both. Run with
//! `cargo bench --bench pingpong`.

use std::hint::spin_loop;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvs::core::wait::{futex_wait, futex_wake};

/// The word's value that tells the child to exit.
const STOP: u32 = u32::MAX;
/// How the child waits: spin (0) or futex (1); stored next to the word.
const MODE_SPIN: u32 = 0;
const MODE_FUTEX: u32 = 1;

/// One page of `MAP_SHARED | MAP_ANONYMOUS` memory shared with a forked
/// child that answers pings until it is dropped.
struct Partner {
    page: *mut libc::c_void,
    child: libc::pid_t,
}

impl Partner {
    fn word(&self) -> &AtomicU32 {
        // SAFETY: `page` is a live, page-aligned, zero-initialised shared
        // mapping of 4096 bytes (see `spawn`), so offset 0 holds a valid,
        // aligned `u32`, and every access to it goes through this atomic.
        unsafe { &*(self.page as *const AtomicU32) }
    }

    /// Maps the page and forks the answering child, which waits as `mode`.
    fn spawn(mode: u32) -> Self {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(page, libc::MAP_FAILED, "mmap of the shared page failed");
        // SAFETY: the child only touches the shared atomic and makes futex
        // syscalls, then leaves with `_exit`: no allocation, no locks, no
        // destructors, which is what is allowed after forking a process that
        // may have other threads.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        let partner = Partner { page, child };
        if child == 0 {
            answer(partner.word(), mode);
            // SAFETY: leaves the child without running the parent's
            // destructors or atexit handlers.
            unsafe { libc::_exit(0) };
        }
        partner
    }
}

/// The child's loop: wait for an odd value, answer with the next even one.
fn answer(word: &AtomicU32, mode: u32) {
    let mut expect = 1u32;
    loop {
        let mut v = word.load(Ordering::Acquire);
        while v != expect && v != STOP {
            if mode == MODE_FUTEX {
                futex_wait(word, v, Some(Duration::from_millis(100)));
            } else {
                spin_loop();
            }
            v = word.load(Ordering::Acquire);
        }
        if v == STOP {
            return;
        }
        word.store(expect.wrapping_add(1), Ordering::Release);
        if mode == MODE_FUTEX {
            futex_wake(word, 1);
        }
        expect = expect.wrapping_add(2);
        if expect == STOP {
            expect = 1;
        }
    }
}

impl Drop for Partner {
    fn drop(&mut self) {
        self.word().store(STOP, Ordering::Release);
        futex_wake(self.word(), 1);
        let mut status = 0;
        // SAFETY: `child` is our own child process; `status` is a valid out
        // pointer. After it is reaped nobody else uses the mapping, which we
        // then unmap exactly once.
        unsafe {
            libc::waitpid(self.child, &mut status, 0);
            libc::munmap(self.page, 4096);
        }
    }
}

/// `iters` round trips; the parent keeps its own count in step with the child.
fn round_trips(p: &Partner, next: &mut u32, iters: u64, mode: u32) -> Duration {
    let word = p.word();
    let start = Instant::now();
    for _ in 0..iters {
        let ping = *next;
        let pong = ping.wrapping_add(1);
        word.store(ping, Ordering::Release);
        if mode == MODE_FUTEX {
            futex_wake(word, 1);
            loop {
                let v = word.load(Ordering::Acquire);
                if v == pong {
                    break;
                }
                futex_wait(word, v, Some(Duration::from_millis(100)));
            }
        } else {
            while word.load(Ordering::Acquire) != pong {
                spin_loop();
            }
        }
        *next = ping.wrapping_add(2);
        if *next == STOP {
            *next = 1;
        }
    }
    start.elapsed()
}

fn bench_pingpong(c: &mut Criterion) {
    let mut g = c.benchmark_group("pingpong");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    for (name, mode) in [("spin", MODE_SPIN), ("futex", MODE_FUTEX)] {
        let partner = Partner::spawn(mode);
        let mut next = 1u32;
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| round_trips(&partner, &mut next, iters, mode))
        });
        drop(partner);
    }
    g.finish();
}

criterion_group!(benches, bench_pingpong);
criterion_main!(benches);
