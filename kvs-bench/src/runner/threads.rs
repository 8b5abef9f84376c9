//! The worker threads of one process. Each [`Worker`] has its own
//! connection, keys ([`Model`]) and choices ([`Workload`]); it fills its
//! keys before the clock starts, then runs its [`Budget`]:
//!
//! * `--depth 1` uses the synchronous calls;
//! * a larger depth keeps that many async tickets in flight, never two on
//!   the same key (so the model stays exact however the server's workers
//!   reorder them), and waits for the oldest;
//! * `--batch N` makes each call N distinct keys of one kind: a
//!   `get_many` or a `set_many`.
//!
//! Latency is from submission to the answer (with `--batch`, the call's,
//! recorded once per key it carried).

use super::{Budget, Plan};
use crate::error::BenchError;
use crate::model::{Answer, Model};
use crate::tally::Tally;
use crate::workload::{BenchValue, Kind, Workload};
use kvs_client::{ClientError, KVSClient, Op, Ticket};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

/// Answered operations a thread counts before adding them to the shared
/// count (so that the count costs nothing measurable).
const DONE_BATCH: u64 = 256;

/// Keys written per batch call while filling.
const FILL_CHUNK: usize = 4096;

/// Runs the threads of process `index`, calling `ready` once they are
/// connected and filled (it returns when the run may start), and returns
/// their merged tally.
pub(crate) fn run_threads<V: BenchValue>(
    plan: &Plan,
    index: u32,
    done_ops: &AtomicU64,
    ready: impl FnOnce() -> Result<(), BenchError>,
) -> Result<Tally, BenchError> {
    let threads = plan.args.threads as usize;
    // Threads + this one: threads wait until the caller says go.
    let filled = Barrier::new(threads + 1);
    let start = Barrier::new(threads + 1);
    let started: Mutex<Option<Instant>> = Mutex::new(None);
    let abort = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let global = u64::from(index) * u64::from(plan.args.threads) + t as u64;
                let (filled, start, started, abort) = (&filled, &start, &started, &abort);
                s.spawn(move || {
                    let worker = Worker::<V>::start(plan, global)
                        .map_err(|e| {
                            abort.store(true, Ordering::Relaxed);
                            eprintln!("kvs_client bench: {e}");
                        })
                        .ok();
                    filled.wait();
                    start.wait();
                    let t0 = started.lock().map(|g| *g).ok().flatten();
                    match (worker, t0) {
                        (Some(mut w), Some(t0)) => {
                            let tally = w.run(t0, done_ops);
                            if plan.args.remove_keys {
                                w.remove_keys();
                            }
                            Some(tally)
                        }
                        _ => None,
                    }
                })
            })
            .collect();
        filled.wait();
        let go = if abort.load(Ordering::Relaxed) {
            Err(BenchError::ThreadStart)
        } else {
            ready()
        };
        if go.is_ok() {
            if let Ok(mut g) = started.lock() {
                *g = Some(Instant::now());
            }
        }
        start.wait();
        let mut tally = Tally::new();
        for h in handles {
            match h.join() {
                Ok(Some(t)) => tally.merge(&t),
                Ok(None) => {}
                Err(_) => return Err(BenchError::ThreadPanicked),
            }
        }
        go.map(|()| tally)
    })
}

/// A request in flight on the async path.
enum Pending<'c, V: BenchValue> {
    Get(Ticket<'c, Vec<u8>, V, Option<V>>),
    Set(Ticket<'c, Vec<u8>, V, ()>),
    Post(Ticket<'c, Vec<u8>, V, bool>),
    Del(Ticket<'c, Vec<u8>, V, bool>),
}

impl<V: BenchValue> Pending<'_, V> {
    /// Waits for the answer.
    fn wait(self, timeout: std::time::Duration) -> Result<Answer<V>, ClientError> {
        match self {
            Pending::Get(t) => t.wait(timeout).map(Answer::Value),
            Pending::Set(t) => t.wait(timeout).map(|()| Answer::Done),
            Pending::Post(t) => t.wait(timeout).map(Answer::Changed),
            Pending::Del(t) => t.wait(timeout).map(Answer::Changed),
        }
    }
}

/// A ticket and what the check of its answer needs.
struct InFlight<'c, V: BenchValue> {
    kind: Kind,
    key: usize,
    /// The sequence number written by a SET or POST.
    seq: u32,
    since: Instant,
    pending: Pending<'c, V>,
}

/// One benchmark thread: its connection, keys and model.
struct Worker<V: BenchValue> {
    client: KVSClient<Vec<u8>, V>,
    plan: Plan,
    /// This thread's index over all processes.
    global: u64,
    model: Model,
    workload: Workload,
    /// Keys with a request in flight (async path).
    busy: Vec<bool>,
}

impl<V: BenchValue> Worker<V> {
    /// Connects and fills the keys.
    fn start(plan: &Plan, global: u64) -> Result<Self, BenchError> {
        let mut w = Self::connect(plan, global)?;
        w.fill().map_err(BenchError::Fill)?;
        Ok(w)
    }

    fn connect(plan: &Plan, global: u64) -> Result<Self, ClientError> {
        let client = KVSClient::<Vec<u8>, V>::connect_with(&plan.name, plan.options.clone())?;
        let n = plan.keys_per_thread;
        Ok(Self {
            client,
            plan: plan.clone(),
            global,
            model: Model::new(plan.run_id, global, n, plan.args.value_size),
            workload: Workload::new(&plan.args, global, n),
            busy: vec![false; n as usize],
        })
    }

    /// Writes every key of this thread, so that the model starts exact.
    fn fill(&mut self) -> Result<(), ClientError> {
        let n = self.model.len();
        let mut start = 0;
        while start < n {
            let end = (start + FILL_CHUNK).min(n);
            let mut ops = Vec::with_capacity(end - start);
            let mut seqs = Vec::with_capacity(end - start);
            for k in start..end {
                let seq = self.model.take_seq();
                let value = self.model.value(k, seq);
                ops.push(Op::Set(self.model.key(k).clone(), value));
                seqs.push(seq);
            }
            let results = self.client.batch(&ops, self.plan.options.timeout);
            for (i, r) in results.into_iter().enumerate() {
                r?;
                self.model.written(start + i, seqs[i]);
            }
            start = end;
        }
        Ok(())
    }

    /// Deletes this thread's keys (`--remove-keys`), after its clock
    /// stopped; a failure is reported, not counted.
    fn remove_keys(&self) {
        let keys = (0..self.model.len()).map(|k| self.model.key(k));
        if let Err(e) = self.client.del_many(keys) {
            eprintln!("kvs_client bench: removing the run's keys: {e}");
        }
    }

    fn run(&mut self, t0: Instant, done_ops: &AtomicU64) -> Tally {
        let budget = self.plan.budget(self.global);
        let mut tally = Tally::new();
        if self.plan.args.batch > 1 {
            self.run_batched(t0, budget, done_ops, &mut tally);
        } else if self.plan.args.depth <= 1 {
            self.run_sync(t0, budget, done_ops, &mut tally);
        } else {
            self.run_async(t0, budget, done_ops, &mut tally);
        }
        tally
    }

    fn run_sync(&mut self, t0: Instant, budget: Budget, done_ops: &AtomicU64, tally: &mut Tally) {
        let mut count = 0u64;
        let mut now = Instant::now();
        loop {
            match budget {
                Budget::Ops(n) if count >= n => break,
                Budget::Until(d) if now.duration_since(t0) >= d => break,
                _ => {}
            }
            if self.plan.gone.load(Ordering::Relaxed) {
                break;
            }
            let kind = self.workload.op();
            let k = self.workload.key();
            let (seq, value) = next_write(&mut self.model, kind, k);
            let key = self.model.key(k);
            let t = Instant::now();
            let answer = match kind {
                Kind::Get => self.client.get(key).map(Answer::Value),
                Kind::Set => self.client.set(key, &value).map(|()| Answer::Done),
                Kind::Post => self.client.post(key, &value).map(Answer::Changed),
                Kind::Del => self.client.del(key).map(Answer::Changed),
            };
            now = Instant::now();
            tally.record(kind, now.duration_since(t).as_nanos() as u64);
            self.model.check(kind, k, seq, answer, tally);
            stop_if_gone(&self.plan.gone, tally);
            count += 1;
            if count % DONE_BATCH == 0 {
                done_ops.fetch_add(DONE_BATCH, Ordering::Relaxed);
            }
        }
        done_ops.fetch_add(count % DONE_BATCH, Ordering::Relaxed);
        tally.seconds = now.duration_since(t0).as_secs_f64();
    }

    fn run_batched(
        &mut self,
        t0: Instant,
        budget: Budget,
        done_ops: &AtomicU64,
        tally: &mut Tally,
    ) {
        let size = self.plan.args.batch as usize;
        let mut count = 0u64;
        let mut now = Instant::now();
        let mut picked: Vec<usize> = Vec::with_capacity(size);
        let mut entries: Vec<(Vec<u8>, V)> = Vec::with_capacity(size);
        let mut seqs: Vec<u32> = Vec::with_capacity(size);
        loop {
            let n = match budget {
                Budget::Ops(total) if count >= total => break,
                Budget::Ops(total) => size.min((total - count) as usize),
                Budget::Until(d) if now.duration_since(t0) >= d => break,
                Budget::Until(_) => size,
            };
            if self.plan.gone.load(Ordering::Relaxed) {
                break;
            }
            let kind = self.workload.op();
            picked.clear();
            for _ in 0..n {
                let k = pick_free_key(&mut self.workload, &self.busy);
                self.busy[k] = true;
                picked.push(k);
            }
            let t = Instant::now();
            match kind {
                Kind::Get => {
                    let got = self
                        .client
                        .get_many(picked.iter().map(|&k| self.model.key(k)));
                    now = Instant::now();
                    let ns = now.duration_since(t).as_nanos() as u64;
                    match got {
                        Ok(values) => {
                            tally.record_n(kind, ns, n as u64);
                            for (&k, v) in picked.iter().zip(values) {
                                self.model.check(kind, k, 0, Ok(Answer::Value(v)), tally);
                            }
                        }
                        Err(e) => picked
                            .iter()
                            .for_each(|&k| self.model.failed(kind, k, &e, tally)),
                    }
                }
                _ => {
                    entries.clear();
                    seqs.clear();
                    for &k in &picked {
                        let (seq, value) = next_write(&mut self.model, Kind::Set, k);
                        entries.push((self.model.key(k).clone(), value));
                        seqs.push(seq);
                    }
                    let written = self.client.set_many(&entries);
                    now = Instant::now();
                    let ns = now.duration_since(t).as_nanos() as u64;
                    let (done, error) = match written {
                        Ok(()) => (n, None),
                        Err(ClientError::PartlyWritten { written, source }) => {
                            (written, Some(*source))
                        }
                        Err(e) => (0, Some(e)),
                    };
                    tally.record_n(Kind::Set, ns, n as u64);
                    for (i, (&k, &seq)) in picked.iter().zip(&seqs).enumerate() {
                        match (&error, i < done) {
                            (_, true) => {
                                self.model
                                    .check(Kind::Set, k, seq, Ok(Answer::<V>::Done), tally)
                            }
                            (Some(e), false) => self.model.failed(Kind::Set, k, e, tally),
                            (None, false) => {}
                        }
                    }
                }
            }
            for &k in &picked {
                self.busy[k] = false;
            }
            stop_if_gone(&self.plan.gone, tally);
            let before = count;
            count += n as u64;
            done_ops.fetch_add(
                count / DONE_BATCH * DONE_BATCH - before / DONE_BATCH * DONE_BATCH,
                Ordering::Relaxed,
            );
        }
        done_ops.fetch_add(count % DONE_BATCH, Ordering::Relaxed);
        tally.seconds = now.duration_since(t0).as_secs_f64();
    }

    fn run_async(&mut self, t0: Instant, budget: Budget, done_ops: &AtomicU64, tally: &mut Tally) {
        let depth = self.plan.args.depth as usize;
        let timeout = self.plan.options.timeout;
        let gone = Arc::clone(&self.plan.gone);
        let mut queue: VecDeque<InFlight<'_, V>> = VecDeque::with_capacity(depth);
        let mut submitted = 0u64;
        let mut completed = 0u64;
        let mut now = Instant::now();
        // Split the borrows: tickets borrow the client, the rest is mutated.
        let Worker {
            client,
            model,
            workload,
            busy,
            ..
        } = self;
        let client = &*client;
        loop {
            let more = !gone.load(Ordering::Relaxed)
                && match budget {
                    Budget::Ops(n) => submitted < n,
                    Budget::Until(d) => now.duration_since(t0) < d,
                };
            while more && queue.len() < depth {
                match budget {
                    Budget::Ops(n) if submitted >= n => break,
                    _ => {}
                }
                let kind = workload.op();
                let k = pick_free_key(workload, busy);
                let (seq, value) = next_write(model, kind, k);
                let key = model.key(k);
                let since = Instant::now();
                let pending = match kind {
                    Kind::Get => client.get_async(key).map(Pending::Get),
                    Kind::Set => client.set_async(key, &value).map(Pending::Set),
                    Kind::Post => client.post_async(key, &value).map(Pending::Post),
                    Kind::Del => client.del_async(key).map(Pending::Del),
                };
                submitted += 1;
                match pending {
                    Ok(pending) => {
                        busy[k] = true;
                        queue.push_back(InFlight {
                            kind,
                            key: k,
                            seq,
                            since,
                            pending,
                        });
                    }
                    Err(e) => {
                        model.failed(kind, k, &e, tally);
                        stop_if_gone(&gone, tally);
                        completed += 1;
                    }
                }
            }
            let Some(f) = queue.pop_front() else {
                if more {
                    // Every submission failed; the budget still ends the loop.
                    now = Instant::now();
                    continue;
                }
                break;
            };
            let answer = f.pending.wait(timeout);
            now = Instant::now();
            tally.record(f.kind, now.duration_since(f.since).as_nanos() as u64);
            busy[f.key] = false;
            model.check(f.kind, f.key, f.seq, answer, tally);
            stop_if_gone(&gone, tally);
            completed += 1;
            if completed % DONE_BATCH == 0 {
                done_ops.fetch_add(DONE_BATCH, Ordering::Relaxed);
            }
        }
        done_ops.fetch_add(completed % DONE_BATCH, Ordering::Relaxed);
        tally.seconds = now.duration_since(t0).as_secs_f64();
    }
}

/// The sequence number a write of `kind` on `key` takes (0 for GET and
/// DEL), and the value it writes.
fn next_write<V: BenchValue>(model: &mut Model, kind: Kind, key: usize) -> (u32, V) {
    if kind.writes() {
        let seq = model.take_seq();
        (seq, model.value(key, seq))
    } else {
        (0, V::from_ascii(b""))
    }
}

/// A key with nothing in flight: the picked one, or the next free one.
fn pick_free_key(workload: &mut Workload, busy: &[bool]) -> usize {
    let n = busy.len();
    let mut k = workload.key();
    // At most `depth` keys are busy and there are at least 2 x depth keys.
    while busy[k] {
        k = (k + 1) % n;
    }
    k
}

/// Stops every thread once this one has met `ServerGone`.
fn stop_if_gone(gone: &AtomicBool, tally: &Tally) {
    if tally.server_gone {
        gone.store(true, Ordering::Relaxed);
    }
}
