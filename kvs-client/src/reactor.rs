//! Waking tasks that await answers: one thread per connection.
//!
//! A [`Ticket`](crate::Ticket) awaited as a future must not block its
//! executor's thread, and must not be polled in a loop either. Something
//! has to sleep until an answer arrives and then call the task's
//! [`Waker`]. One sleeper per request (a thread blocked on each slot's
//! event count) would be a thread per request; this module is one thread
//! per connection, started on the first await that has to wait, for all of
//! the connection's requests in flight.
//!
//! # Protocol
//!
//! The server rings the client's **doorbell** (an event count in its
//! registration entry, `kvs_core::region::clients`) after every answer it
//! delivers to that client, after its `SeqCst` CAS of the slot to `Ready`.
//! The reactor thread loops:
//!
//! ```text
//! key = doorbell.prepare()          // SeqCst: announce the sleep
//! for each registered request:      // SeqCst load of the slot word
//!     settled, past its deadline, or the server gone -> wake its task
//! doorbell.wait(key, until the nearest deadline, at most SLEEP_SLICE)
//! ```
//!
//! That is the event count's Dekker pair (`kvs_core::wait`): either the
//! scan sees the `Ready` word, or the worker's `notify` sees the announced
//! waiter and the wait returns at once. A task registers its waker under
//! the table's mutex and then checks its slot once more before returning
//! `Pending`, so an answer that arrived before the registration, which
//! the reactor's scan could not have attributed to it, is still seen (by
//! the task itself).
//!
//! Every wait is bounded: the reactor sleeps at most [`SLEEP_SLICE`] while
//! anything is registered and checks the server's liveness (its socket)
//! at most once a slice; a registration that finds it asleep past the
//! registration's deadline rings the doorbell itself, so the reactor
//! re-plans. With nothing registered it does not sleep on the doorbell at
//! all (a waiter announced there would make every answer of the
//! connection cost its worker a futex wake, and wake this thread for
//! nothing): it waits on a condition variable of its table, [`IDLE_SLEEP`]
//! at a time, which the next registration notifies. It stops when the
//! connection is dropped.
//!
//! Wakers are foreign code: they run outside the table's lock (cloning,
//! waking and dropping one may re-enter `register` or `deregister`), and a
//! waker that panics is caught, so one bad executor cannot stop the
//! reactor that every other await of the connection relies on. Should the
//! thread end anyway, a registration fails (`WakerThread`) rather than
//! wait for a wake-up that cannot come.
//!
//! A doorbell someone else scribbles on, or rings, costs spurious scans,
//! never a missed answer: the scans read the slots, not the doorbell.

use crate::error::{ClientError, Result};
use kvs_core::region::Region;
use kvs_core::response_table::Claim;
use kvs_core::wait::{EventCount, FutexParker, SLEEP_SLICE};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the reactor sleeps at a time while nothing is registered.
pub(crate) const IDLE_SLEEP: Duration = Duration::from_millis(500);

/// A task waiting for the answer in one slot.
struct Waiting {
    claim: Claim,
    deadline: Instant,
    waker: Waker,
}

#[derive(Default)]
struct Table {
    /// By slot index: a slot is one request at a time.
    waiting: HashMap<u32, Waiting>,
    /// When the reactor will wake on its own (`None`: it is scanning, or
    /// waiting idle on [`Shared::idle`]).
    sleeping_until: Option<Instant>,
    /// The reactor waits on [`Shared::idle`] with nothing registered (a
    /// registration notifies it).
    idle: bool,
}

struct Shared {
    region: Arc<Region>,
    /// Our doorbell; a private one if the registration index is out of
    /// the table (then the reactor relies on its sleep slices alone).
    registration: u32,
    private_bell: EventCount,
    table: Mutex<Table>,
    /// Where the reactor waits while nothing is registered (with the
    /// table's mutex).
    idle: Condvar,
    /// How many tasks wait (the table's length, mirrored for a lock-free
    /// look: see [`Reactor::idle`]). Relaxed: a hint for a heuristic.
    waiting: AtomicUsize,
    stop: AtomicBool,
}

impl Shared {
    fn bell(&self) -> &EventCount {
        self.region
            .clients()
            .doorbell(self.registration)
            .unwrap_or(&self.private_bell)
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The connection's reactor thread and its table of waiting tasks.
pub(crate) struct Reactor {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The fork generation it was started in: a forked child has no such
    /// thread and must not join it.
    fork_generation: u64,
}

impl Reactor {
    /// Starts the thread.
    ///
    /// # Errors
    ///
    /// [`ClientError::WakerThread`] when the thread cannot be created.
    pub(crate) fn start(region: Arc<Region>, registration: u32) -> Result<Self> {
        let shared = Arc::new(Shared {
            region,
            registration,
            private_bell: EventCount::new(),
            table: Mutex::new(Table::default()),
            idle: Condvar::new(),
            waiting: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let thread = std::thread::Builder::new()
            .name("kvs-reactor".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run(&shared)
            })
            .map_err(|e| ClientError::WakerThread(e.to_string()))?;
        Ok(Self {
            shared,
            thread: Some(thread),
            fork_generation: crate::fork::generation_at_connect(),
        })
    }

    /// Wakes `waker` once `claim`'s request is settled, its deadline has
    /// passed, or the server is gone (or spuriously). Replaces an earlier
    /// registration of the same slot.
    ///
    /// # Errors
    ///
    /// [`ClientError::WakerThread`] when the reactor thread is gone (a
    /// waker panicked in it): the await fails instead of waiting for a
    /// wake-up that will never come.
    pub(crate) fn register(&self, claim: Claim, deadline: Instant, waker: &Waker) -> Result<()> {
        if self.thread.as_ref().is_none_or(JoinHandle::is_finished) {
            return Err(ClientError::WakerThread(
                "the thread that wakes awaiting tasks has ended".into(),
            ));
        }
        let replaced;
        let ring = {
            let mut table = self.shared.table();
            replaced = match table.waiting.get_mut(&claim.index) {
                Some(w) if w.claim == claim => {
                    w.deadline = deadline;
                    if w.waker.will_wake(waker) {
                        None
                    } else {
                        Some(std::mem::replace(&mut w.waker, waker.clone()))
                    }
                }
                _ => table
                    .waiting
                    .insert(
                        claim.index,
                        Waiting {
                            claim,
                            deadline,
                            waker: waker.clone(),
                        },
                    )
                    .map(|w| w.waker),
            };
            self.shared
                .waiting
                .store(table.waiting.len(), Ordering::Relaxed);
            if table.idle {
                // Parked with nothing registered: this wakes it.
                self.shared.idle.notify_one();
            }
            // Asleep on the doorbell past this deadline: make it re-plan.
            table.sleeping_until.is_some_and(|t| t > deadline)
        };
        // A waker replaced is dropped outside the lock (dropping one may
        // drop a task, and with it a ticket that deregisters).
        drop(replaced);
        if ring {
            self.shared.bell().notify(u32::MAX, &FutexParker);
        }
        Ok(())
    }

    /// Forgets `claim`'s registration (answered, abandoned or dropped).
    pub(crate) fn deregister(&self, claim: &Claim) {
        let removed = {
            let mut table = self.shared.table();
            let ours = table
                .waiting
                .get(&claim.index)
                .is_some_and(|w| w.claim == *claim);
            let removed = ours.then(|| table.waiting.remove(&claim.index)).flatten();
            self.shared
                .waiting
                .store(table.waiting.len(), Ordering::Relaxed);
            removed
        };
        // Outside the lock, as in `register`.
        drop(removed);
    }

    /// Whether no task waits on this connection's reactor (a hint).
    pub(crate) fn idle(&self) -> bool {
        self.shared.waiting.load(Ordering::Relaxed) == 0
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if crate::fork::forked_since(self.fork_generation) {
            // Not our thread: the parent's, copied without it. Joining it
            // would wait forever.
            std::mem::forget(thread);
            return;
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.bell().notify_always(u32::MAX, &FutexParker);
        {
            // Under the lock: the reactor checks `stop` under it before
            // waiting on `idle`.
            let _table = self.shared.table();
            self.shared.idle.notify_all();
        }
        if thread.thread().id() == std::thread::current().id() {
            // Dropped from a waker the reactor ran (a task that held the
            // last client): it ends by itself at its next look at `stop`.
            return;
        }
        let _ = thread.join();
    }
}

/// Calls each waker, a panic in one caught: the others still run, and the
/// reactor lives on for every other await of the connection.
fn wake_all(wake: &mut Vec<Waker>) {
    for w in wake.drain(..) {
        // The panic hook has reported it; the reactor goes on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.wake()));
    }
}

fn run(shared: &Shared) {
    let slots = shared.region.slots();
    let bell = shared.bell();
    let mut alive_checked = Instant::now();
    let mut alive = true;
    let mut wake = Vec::new();
    loop {
        let key = bell.prepare();
        if shared.stop.load(Ordering::SeqCst) {
            bell.cancel();
            break;
        }
        let now = Instant::now();
        let mut table = shared.table();
        if !table.waiting.is_empty() && now.duration_since(alive_checked) >= SLEEP_SLICE {
            alive = shared.region.server_alive();
            alive_checked = now;
        }
        let mut until = now + IDLE_SLEEP;
        // Wakers move out (no clone); they run, and drop, outside the lock.
        let due: Vec<u32> = table
            .waiting
            .iter()
            .filter(|(_, w)| !alive || w.deadline <= now || slots.settled(&w.claim))
            .map(|(&index, _)| index)
            .collect();
        for index in due {
            if let Some(w) = table.waiting.remove(&index) {
                wake.push(w.waker);
            }
        }
        for w in table.waiting.values() {
            until = until.min(w.deadline).min(now + SLEEP_SLICE);
        }
        let idle = table.waiting.is_empty();
        table.sleeping_until = (!idle).then_some(until);
        shared.waiting.store(table.waiting.len(), Ordering::Relaxed);
        drop(table);
        wake_all(&mut wake);
        if idle {
            // Off the doorbell until something registers: `register`
            // notifies `idle` under the table's lock, and the predicate is
            // checked under it too, so no registration is missed.
            bell.cancel();
            let mut table = shared.table();
            table.idle = true;
            let (mut table, _) = shared
                .idle
                .wait_timeout_while(table, IDLE_SLEEP, |t| {
                    t.waiting.is_empty() && !shared.stop.load(Ordering::SeqCst)
                })
                .unwrap_or_else(PoisonError::into_inner);
            table.idle = false;
            continue;
        }
        // From now: the wakers above may have taken a while.
        bell.wait(
            key,
            Some(until.saturating_duration_since(Instant::now())),
            &FutexParker,
        );
        shared.table().sleeping_until = None;
    }
    // Stopping (the connection is dropped, so no ticket is left; be total).
    let mut rest: Vec<Waker> = std::mem::take(&mut shared.table().waiting)
        .into_values()
        .map(|w| w.waker)
        .collect();
    wake_all(&mut rest);
}
