//! Waiting without burning a core: spin briefly, then sleep on a
//! process-shared futex.
//!
//! A waiter first spins (cheap when the answer is a few hundred nanoseconds
//! away, which is the common case), then announces that it is about to sleep
//! and sleeps on a 32-bit word in the shared mapping. A waker makes the wake
//! syscall only when a waiter announced itself, so the fast path makes no
//! syscall at all. The protocol is the classic Dekker pair:
//!
//! ```text
//! waiter                               waker
//! sleepers.store(1)   (SeqCst)         state.store(READY) (SeqCst)
//! if state != READY   (SeqCst)         if sleepers.load() != 0 (SeqCst)
//!     futex_wait(sleepers, 1)              sleepers.store(0); futex_wake(sleepers)
//! ```
//!
//! With both sides sequentially consistent, at least one of them sees the
//! other's store, so a wake-up cannot be lost; a spurious wake-up only costs a
//! re-check. Sleeps are always bounded, so a waiter also re-checks the
//! server's liveness at least every [`SLEEP_SLICE`].
//!
//! The futex is used without `FUTEX_PRIVATE_FLAG`: the word lives in a
//! `MAP_SHARED` mapping and the waker is another process.
//!
//! The blocking calls sit behind [`Parker`], so the protocols that use them are
//! model-checked under loom with a yielding parker ([`SpinParker`]).
//!
//! ```
//! use kvs_core::wait::{FutexParker, Parker};
//! use std::sync::atomic::AtomicU32;
//! use std::time::Duration;
//!
//! let word = AtomicU32::new(0);
//! // The word is not 1, so this returns at once instead of sleeping.
//! FutexParker.wait(&word, 1, Some(Duration::from_millis(10)));
//! FutexParker.wake(&word, 1);
//! ```

use crate::sync::AtomicU32;
use std::time::Duration;

/// Longest single sleep of a waiter before it re-checks liveness and deadlines.
pub const SLEEP_SLICE: Duration = Duration::from_millis(20);

/// Blocks a thread on a 32-bit word and wakes threads blocked on it.
///
/// Implementations may wake spuriously; callers always re-check their condition.
pub trait Parker {
    /// Sleeps while `*word == expected`, at most `timeout` (forever if `None`).
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>);
    /// Wakes at most `count` threads sleeping on `word`.
    fn wake(&self, word: &AtomicU32, count: u32);
}

/// The process-shared Linux futex.
#[cfg(not(loom))]
#[derive(Debug, Clone, Copy, Default)]
pub struct FutexParker;

#[cfg(not(loom))]
impl Parker for FutexParker {
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        futex_wait(word, expected, timeout);
    }

    fn wake(&self, word: &AtomicU32, count: u32) {
        futex_wake(word, count);
    }
}

/// A parker that never blocks: for loom models and single-core fallbacks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpinParker;

impl Parker for SpinParker {
    fn wait(&self, _word: &AtomicU32, _expected: u32, _timeout: Option<Duration>) {
        #[cfg(loom)]
        loom::thread::yield_now();
        #[cfg(not(loom))]
        std::thread::yield_now();
    }

    fn wake(&self, _word: &AtomicU32, _count: u32) {}
}

#[cfg(not(loom))]
/// `FUTEX_WAIT` on a word that may be shared between processes.
///
/// Returns when woken, when `*word != expected` at the time of the call, on a
/// signal, or after `timeout`. The caller re-checks its condition in all cases.
pub fn futex_wait(word: &std::sync::atomic::AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY:
    // 1. `word` is a valid, aligned 32-bit atomic for the whole call (a live
    //    reference), and the kernel only reads it.
    // 2. `ts_ptr` is null or points to `ts`, which outlives the call.
    // 3. FUTEX_WAIT ignores the remaining arguments.
    // Errors (EAGAIN: value changed, EINTR, ETIMEDOUT) all mean "re-check".
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

#[cfg(not(loom))]
/// `FUTEX_WAKE` of up to `count` waiters, in any process, sleeping on `word`.
pub fn futex_wake(word: &std::sync::atomic::AtomicU32, count: u32) {
    // SAFETY: `word` is a valid, aligned 32-bit atomic (a live reference);
    // FUTEX_WAKE does not access memory through it, it only uses the address
    // as the wait-queue key. The remaining arguments are ignored.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            count.min(i32::MAX as u32),
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// How long to spin before sleeping, and how.
///
/// Spinning costs a core; sleeping costs a wake-up (tens of microseconds on a
/// VM that halts idle vCPUs). The defaults come from `BENCHMARKS.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpinPolicy {
    /// Iterations of `spin_loop` hints before the waiter starts yielding.
    pub spins: u32,
    /// `sched_yield` rounds after spinning, before sleeping on the futex.
    pub yields: u32,
}

impl SpinPolicy {
    /// The client's default while waiting for a response: about 20 us of
    /// spinning (a `pause` is ~25 ns on the benchmark machine), 10 yields,
    /// then the futex. Longer spins (2000/50, ~200 us) cut the throughput of
    /// 4 synchronous clients on 2 cores by 1.5-4x: a spinning client holds
    /// the core its worker needs (`BENCHMARKS.md`, "Tuning the wait").
    pub const CLIENT: SpinPolicy = SpinPolicy {
        spins: 256,
        yields: 10,
    };
    /// A server worker's default while the ring is empty: as for the
    /// client. With 4000/100 (~430 us per idle round) an idle server used
    /// 1.1% of a core; with this, 0.2%.
    pub const WORKER: SpinPolicy = SpinPolicy {
        spins: 256,
        yields: 10,
    };
}

impl Default for SpinPolicy {
    fn default() -> Self {
        Self::CLIENT
    }
}

/// Spins, then yields, checking `ready` each round; `true` once it held.
///
/// Returns `false` when the policy is exhausted and the caller should sleep.
#[inline]
pub fn spin_then_yield(policy: SpinPolicy, mut ready: impl FnMut() -> bool) -> bool {
    for i in 0..policy.spins {
        if ready() {
            return true;
        }
        // Check often at first, then let the hint breathe a little.
        let hints = if i < 64 { 1 } else { 4 };
        for _ in 0..hints {
            std::hint::spin_loop();
        }
    }
    for _ in 0..policy.yields {
        if ready() {
            return true;
        }
        std::thread::yield_now();
    }
    ready()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn wait_returns_at_once_when_word_differs() {
        let word = AtomicU32::new(7);
        let start = Instant::now();
        futex_wait(&word, 1, Some(Duration::from_secs(5)));
        assert!(start.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn wait_times_out() {
        let word = AtomicU32::new(1);
        futex_wait(&word, 1, Some(Duration::from_millis(5)));
    }

    #[test]
    fn wake_releases_a_sleeper() {
        let word = Arc::new(AtomicU32::new(1));
        let w2 = Arc::clone(&word);
        let t = std::thread::spawn(move || {
            while w2.load(Ordering::SeqCst) == 1 {
                futex_wait(&w2, 1, Some(Duration::from_secs(10)));
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        word.store(0, Ordering::SeqCst);
        futex_wake(&word, 1);
        t.join().unwrap();
    }

    #[test]
    fn spin_then_yield_stops_when_ready() {
        let mut n = 0;
        assert!(spin_then_yield(SpinPolicy::CLIENT, || {
            n += 1;
            n == 10
        }));
        assert!(!spin_then_yield(
            SpinPolicy {
                spins: 3,
                yields: 2
            },
            || false
        ));
    }
}
