//! Timeouts at volume: 100,000 requests that time out or are abandoned on
//! purpose leak no response slot, and no later call ever receives a result
//! meant for an abandoned request.
//!
//! Values encode their key (`key << 32 | sequence`), so an answer that
//! belongs to another request shows up as a value whose high half names
//! another key, or as a set's empty answer where a get's value was due.

use kvs::core::wait::SpinPolicy;
use kvs::{ClientError, ClientOptions, KVSClient, KVSServer};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn unique_name(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "kvs-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

const THREADS: u64 = 2;
const KEYS_PER_THREAD: u64 = 64;

fn value(key: u64, seq: u64) -> u64 {
    (key << 32) | seq
}

/// What one thread saw.
#[derive(Debug, Default)]
struct Tally {
    attempted: u64,
    outcomes: BTreeMap<&'static str, u64>,
    stale: Vec<String>,
}

impl Tally {
    fn count(&mut self, what: &'static str) {
        *self.outcomes.entry(what).or_default() += 1;
    }

    fn error(&mut self, e: &ClientError) {
        self.count(match e {
            ClientError::Timeout { .. } => "timeout",
            ClientError::RingFull => "ring full",
            ClientError::NoFreeSlot => "no free slot",
            ClientError::SlotLost => "slot lost",
            ClientError::ServerGone => "server gone",
            _ => "other error",
        });
    }
}

/// Checks a GET answer for `key`: absent, or a value this key was given.
fn check_get(t: &mut Tally, key: u64, max_seq: u64, got: Option<u64>) {
    match got {
        None => t.count("get: absent"),
        Some(v) if v >> 32 == key && (v & 0xffff_ffff) <= max_seq && v & 0xffff_ffff != 0 => {
            t.count("get: own value")
        }
        Some(v) => t.stale.push(format!("get({key}) returned {v:#x}")),
    }
}

/// One burst of requests by one thread: tickets dropped unanswered and
/// sync calls with zero or tiny timeouts, on this thread's own keys.
fn burst(client: &KVSClient<u64, u64>, thread: u64, seq: &mut u64, n: u64, t: &mut Tally) {
    for i in 0..n {
        let key = thread * KEYS_PER_THREAD + (i % KEYS_PER_THREAD);
        *seq += 1;
        t.attempted += 1;
        let timeout = if i % 8 == 0 {
            Duration::from_micros(200)
        } else {
            Duration::ZERO
        };
        match i % 4 {
            0 => match client.set_async(&key, &value(key, *seq)) {
                Ok(ticket) => {
                    drop(ticket);
                    t.count("abandoned ticket");
                }
                Err(e) => t.error(&e),
            },
            1 => match client.get_async(&key) {
                Ok(ticket) => {
                    drop(ticket);
                    t.count("abandoned ticket");
                }
                Err(e) => t.error(&e),
            },
            2 => match client.set_timeout(&key, &value(key, *seq), timeout) {
                Ok(()) => t.count("set: done"),
                Err(e) => t.error(&e),
            },
            _ => match client.get_timeout(&key, timeout) {
                Ok(got) => check_get(t, key, *seq, got),
                Err(e) => t.error(&e),
            },
        }
    }
}

/// With workers stopped, then running, then stopped again, 100,000
/// requests time out or are abandoned; afterwards every slot is free and
/// every answer, then and later, belongs to its own request.
#[test]
fn hundred_thousand_timeouts_leak_nothing_and_deliver_nothing_stale() {
    const TOTAL: u64 = 100_000;
    // Each stopped round fits in the ring (1024 cells), so the requests are
    // really queued and really time out rather than bounce off a full ring.
    const PER_ROUND: u64 = 480;
    let name = unique_name("timeouts");
    let mut server = KVSServer::<u64, u64>::builder(&name)
        .workers(2)
        .build()
        .unwrap();
    server.start(2).unwrap();
    let options = ClientOptions {
        timeout: Duration::from_secs(5),
        spin: SpinPolicy {
            spins: 64,
            yields: 2,
        },
        ring_full_backoff: Duration::from_millis(1),
        ..ClientOptions::default()
    };
    let clients: Vec<_> = (0..THREADS)
        .map(|_| KVSClient::<u64, u64>::connect_with(&name, options.clone()).unwrap())
        .collect();
    let start = Instant::now();
    let mut tallies: Vec<Tally> = (0..THREADS).map(|_| Tally::default()).collect();
    let mut seqs = vec![0u64; THREADS as usize];
    let mut round = 0u64;
    let mut verified = 0u64;
    while tallies.iter().map(|t| t.attempted).sum::<u64>() < TOTAL {
        // Odd rounds run against live workers: answers race the timeouts.
        let workers_on = round % 2 == 1;
        if workers_on {
            server.start(2).unwrap();
        } else {
            server.stop();
        }
        std::thread::scope(|s| {
            for ((thread, client), (t, seq)) in clients
                .iter()
                .enumerate()
                .zip(tallies.iter_mut().zip(seqs.iter_mut()))
            {
                s.spawn(move || burst(client, thread as u64, seq, PER_ROUND / THREADS, t));
            }
        });
        // Workers on: a full-timeout call per key gets exactly its own answer.
        server.start(2).unwrap();
        for (thread, client) in clients.iter().enumerate() {
            let key = thread as u64 * KEYS_PER_THREAD + round % KEYS_PER_THREAD;
            let seq = &mut seqs[thread];
            *seq += 1;
            client.set(&key, &value(key, *seq)).unwrap();
            assert_eq!(client.get(&key).unwrap(), Some(value(key, *seq)));
            verified += 1;
        }
        round += 1;
    }
    server.start(2).unwrap();
    let slots = server.region().slots();

    // Every slot comes back (the housekeeper frees abandoned ones).
    let deadline = Instant::now() + Duration::from_secs(5);
    while slots.free_count() != slots.len() {
        assert!(
            Instant::now() < deadline,
            "slots leaked: {:?}",
            slots.state_counts()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = start.elapsed();

    // Later calls get their own answers, for every key.
    for (thread, client) in clients.iter().enumerate() {
        for k in 0..KEYS_PER_THREAD {
            let key = thread as u64 * KEYS_PER_THREAD + k;
            client.set(&key, &value(key, 1 << 31)).unwrap();
        }
        for k in 0..KEYS_PER_THREAD {
            let key = thread as u64 * KEYS_PER_THREAD + k;
            assert_eq!(client.get(&key).unwrap(), Some(value(key, 1 << 31)));
        }
    }

    let mut all: BTreeMap<&str, u64> = BTreeMap::new();
    for t in &tallies {
        assert!(t.stale.is_empty(), "stale answers: {:?}", t.stale);
        for (k, v) in &t.outcomes {
            *all.entry(k).or_default() += v;
        }
    }
    let attempted: u64 = tallies.iter().map(|t| t.attempted).sum();
    eprintln!(
        "{attempted} requests in {round} rounds, {elapsed:?}: {all:?}; {verified} verified calls; {} slots reclaimed",
        server
            .region()
            .header()
            .live
            .slots_reclaimed
            .load(Ordering::Relaxed)
    );
    assert!(attempted >= TOTAL);
    assert!(
        !all.contains_key("other error") && !all.contains_key("slot lost"),
        "{all:?}"
    );
    assert!(!all.contains_key("server gone"), "{all:?}");
    let gave_up = all.get("timeout").copied().unwrap_or(0)
        + all.get("abandoned ticket").copied().unwrap_or(0);
    assert!(
        gave_up >= TOTAL / 2,
        "too few requests actually timed out: {all:?}"
    );
}
