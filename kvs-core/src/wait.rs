//! Waiting without burning a core: spin briefly, then sleep on a
//! process-shared futex, through one primitive, the [`EventCount`].
//!
//! Everything in the region that waits for something uses it: a client for
//! its answer (one per response slot), idle workers for requests (one for
//! the ring), the housekeeper for a poke, a subscriber for events. A waiter
//! first spins (cheap when the answer is a few hundred nanoseconds away,
//! the common case), then announces itself and sleeps on a 32-bit word in
//! the shared mapping. A notifier makes the wake syscall only when a
//! waiter announced itself, so the fast path makes no syscall at all.
//!
//! # The event count
//!
//! ```text
//! waiter                                  notifier
//! key = prepare()   waiters += 1 (SeqCst)  make the condition true (SeqCst)
//!                   key = epoch (SeqCst)   notify(): if waiters != 0 (SeqCst)
//! if condition: cancel()                       epoch += 1; futex_wake(epoch)
//! else wait(key):   futex_wait(epoch, key)
//!                   waiters -= 1
//! ```
//!
//! Both sides are a Dekker pair of sequentially consistent accesses: either
//! the waiter's check sees the condition, or the notifier's load sees the
//! waiter. If the notifier bumps the epoch after the waiter read its key,
//! `futex_wait` finds the word changed and returns at once; if it bumped
//! before, the condition it set is already visible to the waiter's check
//! (the bump follows the condition in the single total order). So a
//! wake-up cannot be lost; a spurious one only costs a re-check. The
//! condition write must itself be sequentially consistent (a `SeqCst`
//! store or read-modify-write) for the pair to hold.
//!
//! Every wait is bounded by a timeout, and a waiter re-checks its deadline
//! and the server's liveness between sleeps of at most [`SLEEP_SLICE`], so
//! a scribbled count (another process may write anything) at worst costs
//! a wake syscall or one slice of sleep, never a hang.
//!
//! The futex is used without `FUTEX_PRIVATE_FLAG`: the word lives in a
//! `MAP_SHARED` mapping and the waker is another process. The blocking
//! calls sit behind [`Parker`], so the protocol is model-checked under loom
//! with a parker that really blocks (`loom_tests` below).
//!
//! ```
//! use kvs_core::wait::{EventCount, FutexParker};
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::time::Duration;
//!
//! let ec = EventCount::new();
//! let ready = AtomicBool::new(false);
//! std::thread::scope(|s| {
//!     s.spawn(|| {
//!         ready.store(true, Ordering::SeqCst);
//!         ec.notify(1, &FutexParker);
//!     });
//!     while !ready.load(Ordering::SeqCst) {
//!         let key = ec.prepare();
//!         if ready.load(Ordering::SeqCst) {
//!             ec.cancel();
//!             break;
//!         }
//!         ec.wait(key, Some(Duration::from_millis(20)), &FutexParker);
//!     }
//! });
//! ```

use crate::sync::{loom_sc_fence, AtomicU32, Ordering};
use std::time::Duration;

/// A waiter's ticket from [`EventCount::prepare`]: the epoch it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "pass the key to `wait`, or call `cancel`"]
pub struct Key(u32);

/// The one wait/wake primitive (see the module docs), laid out for the
/// region: two 32-bit words, valid when zeroed.
#[repr(C)]
#[derive(Debug, Default)]
pub struct EventCount {
    /// Bumped by every notification that found a waiter; waiters sleep on it.
    epoch: AtomicU32,
    /// Waiters between `prepare` and the end of `wait` (or `cancel`).
    waiters: AtomicU32,
}

impl EventCount {
    /// An event count nobody waits on.
    pub fn new() -> Self {
        Self {
            epoch: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
        }
    }

    /// Forgets waiters (a new owner of a response slot: the previous one
    /// may have died between `prepare` and the end of its `wait`).
    pub fn reset(&self) {
        self.waiters.store(0, Ordering::Relaxed);
    }

    /// Waiter: announces itself and returns its key. Check the condition
    /// next (with a `SeqCst` load), then [`EventCount::wait`] or
    /// [`EventCount::cancel`].
    pub fn prepare(&self) -> Key {
        // SeqCst: the waiter's half of the Dekker pair (module docs).
        self.waiters.fetch_add(1, Ordering::SeqCst);
        loom_sc_fence();
        Key(self.epoch.load(Ordering::SeqCst))
    }

    /// Waiter: the condition held after all; withdraws the announcement.
    pub fn cancel(&self) {
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Waiter: sleeps while no notification came since `key`, at most
    /// `timeout` (forever if `None`), then withdraws the announcement.
    /// Re-check the condition afterwards: wake-ups may be spurious.
    pub fn wait<P: Parker>(&self, key: Key, timeout: Option<Duration>, parker: &P) {
        parker.wait(&self.epoch, key.0, timeout);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Notifier: after making the condition true (with a `SeqCst` write),
    /// wakes up to `n` waiters, if any announced itself; no syscall
    /// otherwise.
    pub fn notify<P: Parker>(&self, n: u32, parker: &P) {
        loom_sc_fence();
        // SeqCst: the notifier's half of the Dekker pair (module docs).
        if self.waiters.load(Ordering::SeqCst) != 0 {
            self.epoch.fetch_add(1, Ordering::SeqCst);
            parker.wake(&self.epoch, n);
        }
    }

    /// Notifier: wakes up to `n` waiters whether or not any announced
    /// itself (a stop request, a poke: rare, and the waiter may be between
    /// its own checks).
    pub fn notify_always<P: Parker>(&self, n: u32, parker: &P) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        parker.wake(&self.epoch, n);
    }
}

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

impl SpinPolicy {
    /// Bytes of a request's key and value per extra yield round in
    /// [`SpinPolicy::for_request`].
    pub const BYTES_PER_YIELD: u64 = 2048;

    /// This policy stretched for a request that moves `bytes` of key and
    /// value: the worker copies (and checksums) them before it answers, so
    /// the answer is further away than the default spin, and sleeping then
    /// costs a wake-up on each side (on the benchmark VM a 64 KiB SET took
    /// ~300 us instead of ~60). One extra yield round per
    /// [`SpinPolicy::BYTES_PER_YIELD`] keeps the waiting in proportion to
    /// the work (a yield returns at once when nothing else wants the core,
    /// and gives it away when something does).
    pub const fn for_request(self, bytes: u64) -> SpinPolicy {
        let extra = bytes / Self::BYTES_PER_YIELD;
        let extra = if extra > u32::MAX as u64 {
            u32::MAX
        } else {
            extra as u32
        };
        SpinPolicy {
            spins: self.spins,
            yields: self.yields.saturating_add(extra),
        }
    }
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

/// Backing off where there is nothing to sleep on: a full ring (the
/// workers drain it but notify nobody), no free response slot (the
/// housekeeper frees them). Spins with a doubling count for 4 rounds,
/// yields for 12, then sleeps 50 us doubling up to 1.6 ms, so a long wait
/// costs at most a few hundred wake-ups a second.
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    round: u32,
}

impl Backoff {
    const SPIN_ROUNDS: u32 = 4;
    const YIELD_ROUNDS: u32 = 16;

    /// A backoff at its first round.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pauses for this round's time and moves on to the next round.
    pub fn snooze(&mut self) {
        let round = self.round;
        if round < Self::SPIN_ROUNDS {
            for _ in 0..(64u32 << round) {
                std::hint::spin_loop();
            }
        } else if round < Self::YIELD_ROUNDS {
            std::thread::yield_now();
        } else {
            let shift = (round - Self::YIELD_ROUNDS).min(5);
            std::thread::sleep(Duration::from_micros(50 << shift));
        }
        self.round = round.saturating_add(1);
    }

    /// Whether spinning and yielding are over: a waiter that has an event
    /// count to sleep on should sleep there from now on.
    pub fn is_completed(&self) -> bool {
        self.round >= Self::YIELD_ROUNDS
    }
}

#[cfg(all(test, loom))]
pub(crate) mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// A parker that really blocks: `wait` parks the thread (if the word
    /// still holds `expected`), `wake` unparks it. A lost wake-up leaves
    /// the waiter parked forever, which loom reports as a deadlock.
    pub(crate) struct ParkParker {
        pub(crate) waiter: loom::sync::Mutex<Option<thread::Thread>>,
    }

    impl Parker for ParkParker {
        fn wait(&self, word: &AtomicU32, expected: u32, _timeout: Option<Duration>) {
            if word.load(Ordering::SeqCst) == expected {
                thread::park();
            }
        }

        fn wake(&self, _word: &AtomicU32, _count: u32) {
            if let Some(t) = self.waiter.lock().unwrap().as_ref() {
                t.unpark();
            }
        }
    }

    /// The event count's Dekker pair: however the waiter's announce,
    /// check and sleep interleave with the notifier's condition store,
    /// check and wake, the waiter sees the condition or is woken.
    #[test]
    fn a_waiter_is_never_left_asleep() {
        loom::model(|| {
            let ec = Arc::new(EventCount::new());
            let ready = Arc::new(AtomicU32::new(0));
            let parker = Arc::new(ParkParker {
                waiter: loom::sync::Mutex::new(Some(thread::current())),
            });
            let notifier = {
                let (ec, ready, parker) =
                    (Arc::clone(&ec), Arc::clone(&ready), Arc::clone(&parker));
                thread::spawn(move || {
                    ready.store(1, Ordering::SeqCst);
                    ec.notify(1, &*parker);
                })
            };
            while ready.load(Ordering::SeqCst) == 0 {
                let key = ec.prepare();
                if ready.load(Ordering::SeqCst) != 0 {
                    ec.cancel();
                    break;
                }
                ec.wait(key, None, &*parker);
            }
            notifier.join().unwrap();
        });
    }
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
        let start = Instant::now();
        futex_wait(&word, 1, Some(Duration::from_millis(20)));
        // It slept (not returned at once) and came back.
        assert!(
            start.elapsed() >= Duration::from_millis(15),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn event_count_wakes_a_sleeper_and_skips_the_syscall_without_one() {
        let ec = Arc::new(EventCount::new());
        let flag = Arc::new(AtomicU32::new(0));
        // Nobody waits: notify leaves the epoch alone (no syscall).
        ec.notify(1, &FutexParker);
        assert_eq!(ec.epoch.load(Ordering::SeqCst), 0);
        let (ec2, flag2) = (Arc::clone(&ec), Arc::clone(&flag));
        let waiter = std::thread::spawn(move || {
            let start = Instant::now();
            while flag2.load(Ordering::SeqCst) == 0 {
                let key = ec2.prepare();
                if flag2.load(Ordering::SeqCst) != 0 {
                    ec2.cancel();
                    break;
                }
                ec2.wait(key, Some(Duration::from_secs(10)), &FutexParker);
            }
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        flag.store(1, Ordering::SeqCst);
        ec.notify(1, &FutexParker);
        let took = waiter.join().unwrap();
        assert!(
            took < Duration::from_secs(5),
            "the waiter slept through {took:?}"
        );
        assert_eq!(ec.waiters.load(Ordering::SeqCst), 0);
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
    fn backoff_spins_then_yields_then_sleeps() {
        let mut b = Backoff::new();
        for _ in 0..Backoff::YIELD_ROUNDS {
            assert!(!b.is_completed());
            b.snooze();
        }
        assert!(b.is_completed());
        // From now on each round sleeps, at least 50 us.
        let start = Instant::now();
        b.snooze();
        assert!(start.elapsed() >= Duration::from_micros(50));
    }

    #[test]
    fn a_larger_request_yields_longer_before_sleeping() {
        let p = SpinPolicy::CLIENT;
        assert_eq!(p.for_request(0), p);
        assert_eq!(p.for_request(2047), p);
        assert_eq!(p.for_request(64 << 10).yields, p.yields + 32);
        assert_eq!(p.for_request(64 << 10).spins, p.spins);
        assert_eq!(p.for_request(u64::MAX).yields, u32::MAX);
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
