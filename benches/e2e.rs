//! End to end, across processes: a `KVSClient` in this process against a
//! `KVSServer` in another (this bench binary, re-executed with
//! `KVS_BENCH_SERVE` set, so `cargo bench` needs no other binary).
//!
//! Groups (throughput in operations per second, so bars read as ratios):
//!
//! * `e2e/sync`: one synchronous call at a time against one worker: GET and
//!   SET of text keys and 255-byte text values (what `kvs_server` serves),
//!   and GET of `u64 -> u64` (the protocol with the smallest payload). Compare
//!   the time per call with `pingpong/spin` (`cargo bench --bench pingpong`).
//! * `e2e/async`: GETs kept `depth` deep in flight with async tickets, the
//!   oldest waited for, against one and two workers.
//!
//! Every key read was written before measuring; keys are drawn uniformly from
//! [`KEYS`]. Run with `cargo bench --bench e2e`.

use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use kvs::core::fixed_str::Value256;
use kvs::core::text::TextKey;
use kvs::{KVSClient, KVSServer};

/// Keys written before measuring.
const KEYS: u64 = 10_000;
/// The variable that makes this binary a server: `NAME,TYPES,WORKERS`.
const SERVE_VAR: &str = "KVS_BENCH_SERVE";

/// The key and value types a server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Types {
    Text,
    U64,
}

impl Types {
    fn tag(self) -> &'static str {
        match self {
            Types::Text => "text",
            Types::U64 => "u64",
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
        _ => run::<u64, u64>(name, workers),
    }
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
        let exe = std::env::current_exe().expect("this bench binary");
        let mut child = Command::new(exe)
            .env(SERVE_VAR, format!("{name},{},{workers}", types.tag()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the server process");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        assert_eq!(line.trim(), "ready", "the server process did not start");
        Self { child, stdin, name }
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

criterion_group!(benches, bench_sync, bench_async);

fn main() {
    if let Ok(spec) = std::env::var(SERVE_VAR) {
        serve(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
