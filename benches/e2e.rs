//! End to end, across processes: a `KVSClient` in this process against a
//! `KVSServer` in another (this bench binary, re-executed with
//! `KVS_BENCH_SERVE` set, so `cargo bench` needs no other binary).
//!
//! A GET reads the entry straight from the server's store segment, mapped
//! read-only in this process (no round trip, see `kvs_core::store::read`); a
//! worker is asked only when the direct read gives up. SET is a round trip
//! through the request ring to a worker.
//!
//! Groups (throughput in operations per second, so bars read as ratios):
//!
//! * `e2e/sync`: one synchronous call at a time against one worker: GET and
//!   SET of text keys and 32-byte text values (`TextKey`, `Value256`: the
//!   codec stores only the used bytes), and GET of `u64 -> u64`. Compare
//!   SET's time per call with `pingpong/spin` (`cargo bench --bench
//!   pingpong`): it is the round trip that GET no longer makes.
//! * `e2e/get32`: GET of a 32-byte value (`Vec<u8>` keys `key:00000042` and
//!   values, [`KEYS`] of them) from a kvs server in another process, against
//!   LMDB (`heed`) holding the same keys and values, written by another
//!   process (this binary re-executed, which stays alive holding the
//!   environment open, as a writer would): `lmdb_txn_per_get` begins and
//!   ends a read transaction around each get, as a reader that wants fresh
//!   data does; `lmdb_txn_reused` reads a whole batch in one transaction (a
//!   floor for LMDB's lookup alone). Every contender copies the value out.
//! * `e2e/async`: GETs kept `depth` deep in flight with async tickets, the
//!   oldest waited for, against one and two workers. Async tickets still go
//!   through the ring (the direct read path is the synchronous `get`).
//! * `e2e/await`: SETs awaited as futures on one tokio thread (the
//!   client's reactor wakes the task) against the same SETs collected by
//!   blocking (`wait`): one at a time, and 64 in flight (64 tokio tasks
//!   against 64 tickets waited oldest first).
//! * `e2e/p50` (printed, not a criterion group): the per-operation latency
//!   of the `e2e/get32` contenders, each GET timed alone with `Instant`
//!   (as `kvs_client bench` does), in alternating rounds, with the timer's
//!   own cost measured the same way; p50, p90 and p99 in ns.
//!
//! Every key read was written before measuring; keys are drawn uniformly from
//! [`KEYS`]. Run with `cargo bench --bench e2e`; `-- 'get32|p50'` runs only
//! the GET comparison.

use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions};
use kvs::core::fixed_str::Value256;
use kvs::core::text::TextKey;
use kvs::{KVSClient, KVSServer};

/// Keys written before measuring.
const KEYS: u64 = 10_000;
/// The variable that makes this binary a server: `NAME,TYPES,WORKERS`.
const SERVE_VAR: &str = "KVS_BENCH_SERVE";
/// The variable that makes this binary an LMDB writer: the directory.
const LMDB_VAR: &str = "KVS_BENCH_LMDB";
/// Bytes of the values of `e2e/get32`.
const VALUE_SIZE: usize = 32;

/// The key and value types a server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Types {
    Text,
    U64,
    Bytes,
}

impl Types {
    fn tag(self) -> &'static str {
        match self {
            Types::Text => "text",
            Types::U64 => "u64",
            Types::Bytes => "bytes",
        }
    }
}

/// Server side: serve until stdin closes (the parent is done or gone).
fn serve(spec: &str) {
    let parts: Vec<&str> = spec.split(',').collect();
    let [name, types, workers] = parts[..] else {
        panic!("{SERVE_VAR} must be NAME,TYPES,WORKERS");
    };
    let workers: usize = workers.parse().expect("worker count");
    fn run<K: kvs::Codec, V: kvs::Codec>(name: &str, workers: usize) {
        let mut server = KVSServer::<K, V>::builder(name)
            .workers(workers)
            .build()
            .expect("creating the bench region");
        server.start(workers).expect("starting workers");
        println!("ready");
        let _ = std::io::stdout().flush();
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        server.stop();
    }
    match types {
        "text" => run::<TextKey, Value256>(name, workers),
        "bytes" => run::<Vec<u8>, Vec<u8>>(name, workers),
        _ => run::<u64, u64>(name, workers),
    }
}

/// LMDB writer side: fill the environment in `dir` with the keys and values
/// of `e2e/get32`, commit, say so, and hold it open until stdin closes.
fn lmdb_write(dir: &str) {
    // SAFETY: this process opens the environment once; the reading parent
    // opens it after this one says it is ready, and LMDB's lock file
    // coordinates the two processes.
    let env = unsafe {
        EnvOpenOptions::new()
            .map_size(1 << 30)
            .open(dir)
            .expect("open LMDB")
    };
    let mut wtxn = env.write_txn().expect("write txn");
    let db: Database<Bytes, Bytes> = env.create_database(&mut wtxn, None).expect("LMDB database");
    for i in 0..KEYS {
        db.put(&mut wtxn, &bytes_key(i), &bytes_value(i))
            .expect("fill LMDB");
    }
    wtxn.commit().expect("commit");
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
}

/// A server process; stopped (stdin closed, then killed if need be) on drop.
struct ServerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    name: String,
}

impl ServerProcess {
    fn start(types: Types, workers: usize) -> Self {
        let name = format!(
            "kvs-bench-e2e-{}-{}-{workers}",
            std::process::id(),
            types.tag()
        );
        let spec = format!("{name},{},{workers}", types.tag());
        Self::spawn(SERVE_VAR, &spec, name)
    }

    /// This binary re-executed with `var=value`; returns once it printed
    /// `ready`.
    fn spawn(var: &str, value: &str, name: String) -> Self {
        let exe = std::env::current_exe().expect("this bench binary");
        let mut child = Command::new(exe)
            .env(var, value)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the child process");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        assert_eq!(line.trim(), "ready", "the child process did not start");
        Self { child, stdin, name }
    }
}

/// An LMDB environment written by another process, opened here for
/// reading; the writer is stopped and the directory removed on drop.
struct LmdbOtherProcess {
    env: Env,
    db: Database<Bytes, Bytes>,
    dir: PathBuf,
    writer: Option<ServerProcess>,
}

impl LmdbOtherProcess {
    fn start() -> Self {
        // tmpfs when there is one: the kvs store is in memory too.
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("kvs-bench-e2e-lmdb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("LMDB directory");
        let path = dir.to_str().expect("a UTF-8 temp path").to_owned();
        let writer = ServerProcess::spawn(LMDB_VAR, &path, String::new());
        // SAFETY: the writer process committed and holds the environment
        // open; LMDB's lock file coordinates the two processes.
        let env = unsafe {
            EnvOpenOptions::new()
                .map_size(1 << 30)
                .open(&dir)
                .expect("open LMDB")
        };
        let rtxn = env.read_txn().expect("read txn");
        let db: Database<Bytes, Bytes> = env
            .open_database(&rtxn, None)
            .expect("LMDB database")
            .expect("the writer created it");
        drop(rtxn);
        Self {
            env,
            db,
            dir,
            writer: Some(writer),
        }
    }

    /// One get in its own read transaction, the value copied out.
    fn get(&self, key: &[u8]) -> Vec<u8> {
        let rtxn = self.env.read_txn().expect("read txn");
        let v = self
            .db
            .get(&rtxn, key)
            .expect("get")
            .expect("present")
            .to_vec();
        drop(rtxn);
        v
    }
}

impl Drop for LmdbOtherProcess {
    fn drop(&mut self) {
        drop(self.writer.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.name.is_empty() {
            return; // not a kvs server
        }
        let dir = kvs::core::region::endpoint::server_dir(None);
        let _ = std::fs::remove_file(dir.join(format!("{}.sock", self.name)));
        let _ = std::fs::remove_file(dir.join(format!("{}.lock", self.name)));
    }
}

/// A tiny xorshift: picking a key must cost next to nothing.
fn next_key(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state % KEYS
}

fn text_key(i: u64) -> TextKey {
    TextKey::new(&format!("key:{i}")).expect("short key")
}

fn text_value(i: u64) -> Value256 {
    Value256::new(&format!("{i:0>32}")).expect("short value")
}

fn bytes_key(i: u64) -> Vec<u8> {
    format!("key:{i:08}").into_bytes()
}

fn bytes_value(i: u64) -> Vec<u8> {
    let mut v = format!("{i:x}.").into_bytes();
    v.resize(VALUE_SIZE, b'v');
    v
}

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    g
}

fn bench_sync(c: &mut Criterion) {
    let mut g = group(c, "e2e/sync");
    {
        let server = ServerProcess::start(Types::Text, 1);
        let client = KVSClient::<TextKey, Value256>::connect(&server.name).expect("connect");
        let keys: Vec<TextKey> = (0..KEYS).map(text_key).collect();
        for (i, k) in keys.iter().enumerate() {
            client.set(k, &text_value(i as u64)).expect("fill");
        }
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        g.bench_function(BenchmarkId::new("get", "text"), |b| {
            b.iter(|| black_box(client.get(&keys[next_key(&mut rng) as usize]).expect("get")))
        });
        let value = text_value(7);
        g.bench_function(BenchmarkId::new("set", "text"), |b| {
            b.iter(|| {
                client
                    .set(&keys[next_key(&mut rng) as usize], &value)
                    .expect("set")
            })
        });
    }
    {
        let server = ServerProcess::start(Types::U64, 1);
        let client = KVSClient::<u64, u64>::connect(&server.name).expect("connect");
        for k in 0..KEYS {
            client.set(&k, &k).expect("fill");
        }
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        g.bench_function(BenchmarkId::new("get", "u64"), |b| {
            b.iter(|| black_box(client.get(&next_key(&mut rng)).expect("get")))
        });
    }
    g.finish();
}

fn bench_async(c: &mut Criterion) {
    let mut g = group(c, "e2e/async");
    for workers in [1, 2] {
        let server = ServerProcess::start(Types::Text, workers);
        let client = KVSClient::<TextKey, Value256>::connect(&server.name).expect("connect");
        let keys: Vec<TextKey> = (0..KEYS).map(text_key).collect();
        let fill: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| kvs::Op::Set(*k, text_value(i as u64)))
            .collect();
        for r in client.batch(&fill, Duration::from_secs(30)) {
            r.expect("fill");
        }
        for depth in [16usize, 256] {
            let mut rng = 0x9e37_79b9_7f4a_7c15u64;
            let id = BenchmarkId::new(format!("get/{workers}w"), format!("depth{depth}"));
            g.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let mut queue = std::collections::VecDeque::with_capacity(depth);
                    let start = Instant::now();
                    let mut submitted = 0;
                    let mut done = 0;
                    while done < iters {
                        while submitted < iters && queue.len() < depth {
                            let k = &keys[next_key(&mut rng) as usize];
                            queue.push_back(client.get_async(k).expect("submit"));
                            submitted += 1;
                        }
                        if let Some(t) = queue.pop_front() {
                            black_box(t.wait(Duration::from_secs(5)).expect("get"));
                            done += 1;
                        }
                    }
                    start.elapsed()
                })
            });
        }
    }
    g.finish();
}

/// A kvs server of `Vec<u8> -> Vec<u8>` in another process holding the
/// keys and values of `e2e/get32`, and a client of it.
fn bytes_server() -> (ServerProcess, KVSClient<Vec<u8>, Vec<u8>>) {
    let server = ServerProcess::start(Types::Bytes, 1);
    let client = KVSClient::<Vec<u8>, Vec<u8>>::connect(&server.name).expect("connect");
    let fill: Vec<_> = (0..KEYS)
        .map(|i| kvs::Op::Set(bytes_key(i), bytes_value(i)))
        .collect();
    for r in client.batch(&fill, Duration::from_secs(30)) {
        r.expect("fill");
    }
    (server, client)
}

fn bench_get32(c: &mut Criterion) {
    let mut g = group(c, "e2e/get32");
    let (_server, client) = bytes_server();
    let lmdb = LmdbOtherProcess::start();
    let keys: Vec<Vec<u8>> = (0..KEYS).map(bytes_key).collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    g.bench_function(BenchmarkId::from_parameter("kvs_direct"), |b| {
        b.iter(|| {
            black_box(
                client
                    .get(&keys[next_key(&mut rng) as usize])
                    .expect("get")
                    .expect("present"),
            )
        })
    });
    g.bench_function(BenchmarkId::from_parameter("lmdb_txn_per_get"), |b| {
        b.iter(|| black_box(lmdb.get(&keys[next_key(&mut rng) as usize])))
    });
    g.bench_function(BenchmarkId::from_parameter("lmdb_txn_reused"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let rtxn = lmdb.env.read_txn().expect("read txn");
            for _ in 0..iters {
                let k = &keys[next_key(&mut rng) as usize];
                let v = lmdb.db.get(&rtxn, k).expect("get").expect("present");
                black_box(v.to_vec());
            }
            drop(rtxn);
            start.elapsed()
        })
    });
    g.finish();
}

/// Nanoseconds of each of `n` calls of `f`, each timed alone.
fn timed(n: usize, rng: &mut u64, mut f: impl FnMut(u64)) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let k = next_key(rng);
        let t = Instant::now();
        f(k);
        out.push(t.elapsed().as_nanos() as u64);
    }
    out
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The `e2e/p50` report (see the module docs): `rounds` rounds of `n`
/// timed calls of each contender, alternating.
fn report_p50(rounds: usize, n: usize) {
    let (_server, client) = bytes_server();
    let lmdb = LmdbOtherProcess::start();
    let keys: Vec<Vec<u8>> = (0..KEYS).map(bytes_key).collect();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut all: [Vec<u64>; 3] = Default::default();
    for _ in 0..rounds {
        all[0].extend(timed(n, &mut rng, |k| {
            black_box(client.get(&keys[k as usize]).expect("get"));
        }));
        all[1].extend(timed(n, &mut rng, |k| {
            black_box(lmdb.get(&keys[k as usize]));
        }));
        all[2].extend(timed(n, &mut rng, |k| {
            black_box(&keys[k as usize]);
        }));
    }
    println!("e2e/p50: {rounds} rounds x {n} GETs of a 32-byte value each, timed one by one (ns)");
    println!("{:<40} {:>8} {:>8} {:>8}", "contender", "p50", "p90", "p99");
    let names = [
        "kvs_direct",
        "lmdb_txn_per_get (other process wrote)",
        "timer only",
    ];
    let mut p50 = [0u64; 3];
    for (i, (name, v)) in names.iter().zip(all.iter_mut()).enumerate() {
        v.sort_unstable();
        p50[i] = percentile(v, 0.5);
        println!(
            "{name:<40} {:>8} {:>8} {:>8}",
            p50[i],
            percentile(v, 0.9),
            percentile(v, 0.99)
        );
    }
    println!(
        "e2e/p50: kvs_direct p50 / lmdb_txn_per_get p50 = {:.2} (timer included in both; {:.2} without it)",
        p50[0] as f64 / p50[1] as f64,
        p50[0].saturating_sub(p50[2]) as f64 / p50[1].saturating_sub(p50[2]).max(1) as f64
    );
}

/// SETs awaited as futures on one tokio thread against the same SETs
/// collected by blocking the thread (`wait`): one at a time (what an
/// await costs over a blocking call: the reactor's wake-up), and 64 in
/// flight (64 tokio tasks against a queue of 64 tickets).
fn bench_await(c: &mut Criterion) {
    let mut g = group(c, "e2e/await");
    let server = ServerProcess::start(Types::Text, 2);
    let client = std::sync::Arc::new(
        KVSClient::<TextKey, Value256>::connect(&server.name).expect("connect"),
    );
    let keys: std::sync::Arc<Vec<TextKey>> = std::sync::Arc::new((0..KEYS).map(text_key).collect());
    let value = text_value(7);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    g.bench_function(BenchmarkId::new("set", "blocking, one at a time"), |b| {
        b.iter(|| {
            client
                .set(&keys[next_key(&mut rng) as usize], &value)
                .expect("set")
        })
    });
    g.bench_function(BenchmarkId::new("set", "await, one at a time"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let k = &keys[next_key(&mut rng) as usize];
                    client
                        .set_async(k, &value)
                        .expect("submit")
                        .await
                        .expect("set");
                }
                start.elapsed()
            })
        })
    });
    const DEPTH: u64 = 64;
    g.bench_function(
        BenchmarkId::new("set", "blocking, 64 tickets in flight"),
        |b| {
            b.iter_custom(|iters| {
                let mut queue = std::collections::VecDeque::with_capacity(DEPTH as usize);
                let start = Instant::now();
                let (mut submitted, mut done) = (0, 0);
                while done < iters {
                    while submitted < iters && queue.len() < DEPTH as usize {
                        let k = &keys[next_key(&mut rng) as usize];
                        queue.push_back(client.set_async(k, &value).expect("submit"));
                        submitted += 1;
                    }
                    if let Some(t) = queue.pop_front() {
                        t.wait(Duration::from_secs(5)).expect("set");
                        done += 1;
                    }
                }
                start.elapsed()
            })
        },
    );
    g.bench_function(BenchmarkId::new("set", "await, 64 tasks"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                let tasks: Vec<_> = (0..DEPTH)
                    .map(|t| {
                        let (client, keys, value) = (client.clone(), keys.clone(), value);
                        let n = iters / DEPTH + u64::from(t < iters % DEPTH);
                        tokio::spawn(async move {
                            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                            for _ in 0..n {
                                let k = &keys[next_key(&mut rng) as usize];
                                client
                                    .set_async(k, &value)
                                    .expect("submit")
                                    .await
                                    .expect("set");
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("task");
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench_sync, bench_get32, bench_async, bench_await);

fn main() {
    if let Ok(spec) = std::env::var(SERVE_VAR) {
        serve(&spec);
        return;
    }
    if let Ok(dir) = std::env::var(LMDB_VAR) {
        lmdb_write(&dir);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    // The p50 report runs without a filter, or when the filter (a regex
    // for criterion) mentions `p50`.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filters = args.iter().filter(|a| !a.starts_with('-'));
    if args.iter().all(|a| a.starts_with('-')) || filters.any(|f| f.contains("p50")) {
        if args.iter().any(|a| a == "--test") {
            report_p50(1, 1000);
        } else {
            report_p50(5, 200_000);
        }
    }
}
