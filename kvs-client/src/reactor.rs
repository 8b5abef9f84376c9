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
//! nothing): it parks, [`IDLE_SLEEP`] at a time, and the next
//! registration unparks it. It stops when the connection is dropped.
//!
//! A doorbell someone else scribbles on, or rings, costs spurious scans,
//! never a missed answer: the scans read the slots, not the doorbell.

use crate::error::{ClientError, Result};
use kvs_core::region::Region;
use kvs_core::response_table::Claim;
use kvs_core::wait::{EventCount, FutexParker, SLEEP_SLICE};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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
    /// parked idle).
    sleeping_until: Option<Instant>,
    /// The reactor is parked with nothing to wait for (a registration
    /// unparks it).
    idle: bool,
}

struct Shared {
    region: Arc<Region>,
    /// Our doorbell; a private one if the registration index is out of
    /// the table (then the reactor relies on its sleep slices alone).
    registration: u32,
    private_bell: EventCount,
    table: Mutex<Table>,
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
    pub(crate) fn register(&self, claim: Claim, deadline: Instant, waker: &Waker) {
        let ring = {
            let mut table = self.shared.table();
            match table.waiting.get_mut(&claim.index) {
                Some(w) if w.claim == claim => {
                    w.deadline = deadline;
                    if !w.waker.will_wake(waker) {
                        w.waker.clone_from(waker);
                    }
                }
                _ => {
                    table.waiting.insert(
                        claim.index,
                        Waiting {
                            claim,
                            deadline,
                            waker: waker.clone(),
                        },
                    );
                }
            }
            self.shared
                .waiting
                .store(table.waiting.len(), Ordering::Relaxed);
            // The reactor sleeps past this deadline, or past its next
            // liveness check (an idle sleep): make it re-plan.
            let due = deadline.min(Instant::now() + SLEEP_SLICE);
            (table.sleeping_until.is_some_and(|t| t > due), table.idle)
        };
        match ring {
            (_, true) => self.unpark(),
            (true, false) => self.shared.bell().notify(1, &FutexParker),
            (false, false) => {}
        }
    }

    /// Forgets `claim`'s registration (answered, abandoned or dropped).
    pub(crate) fn deregister(&self, claim: &Claim) {
        let mut table = self.shared.table();
        if table
            .waiting
            .get(&claim.index)
            .is_some_and(|w| w.claim == *claim)
        {
            table.waiting.remove(&claim.index);
            self.shared
                .waiting
                .store(table.waiting.len(), Ordering::Relaxed);
        }
    }

    fn unpark(&self) {
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
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
        thread.thread().unpark();
        let _ = thread.join();
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
        table.waiting.retain(|_, w| {
            if !alive || w.deadline <= now || slots.settled(&w.claim) {
                wake.push(w.waker.clone());
                false
            } else {
                until = until.min(w.deadline).min(now + SLEEP_SLICE);
                true
            }
        });
        let idle = table.waiting.is_empty();
        table.idle = idle;
        table.sleeping_until = (!idle).then_some(until);
        shared.waiting.store(table.waiting.len(), Ordering::Relaxed);
        drop(table);
        // Outside the lock: a waker may run anything.
        for w in wake.drain(..) {
            w.wake();
        }
        if idle {
            // Off the doorbell until something registers (`register`
            // unparks; an unpark that comes before this park is kept).
            bell.cancel();
            std::thread::park_timeout(IDLE_SLEEP);
            shared.table().idle = false;
            continue;
        }
        bell.wait(
            key,
            Some(until.saturating_duration_since(now)),
            &FutexParker,
        );
        shared.table().sleeping_until = None;
    }
    // Stopping (the connection is dropped, so no ticket is left; be total).
    let waiting = std::mem::take(&mut shared.table().waiting);
    for (_, w) in waiting {
        w.waker.wake();
    }
}
