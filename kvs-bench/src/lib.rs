//! `kvs_client bench`: a load generator against a running server.
//!
//! Runs `--clients` processes (this binary re-executed with a hidden
//! `--child` flag) of `--threads` threads each. Every thread owns a disjoint
//! range of the key space, fills it before the clock starts, and keeps a model
//! of what it wrote, so every answer is checked: a GET must return exactly the
//! value this thread last wrote (or nothing after a DEL), a POST must insert
//! exactly when the key is absent, a DEL must remove exactly when it is
//! present. A wrong answer counts as an error, as does a failed call.
//!
//! `--depth 1` uses the synchronous calls; a larger depth keeps that many
//! async tickets in flight per thread, never two on the same key (so the model
//! stays exact however the workers reorder them), and waits for the oldest.
//! Latency is from submission to the answer, recorded in an HDR histogram per
//! op kind.
//!
//! Child processes talk to the parent over pipes: they print `ready` once
//! their threads have filled their keys and connected, wait for a line on
//! stdin (so all processes start together), print `progress N` lines while
//! running and one `result {json}` line at the end.
//!
//! ```text
//! kvs_client --name kvs bench --clients 4 --threads 1 --duration 5 --mix 90:10:0:0
//! kvs_client --name kvs bench --depth 256 --ops 2000000 --json
//! ```

use hdrhistogram::Histogram;
use kvs_client::{ClientError, ClientOptions, KVSClient, Op, Ticket};
use kvs_core::region::RegionInfo;
use kvs_core::text::TextKey;
use kvs_core::FixedStr;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

/// Why a run failed: the message for stderr, and the exit code (2).
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// One line for stderr.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Operations when neither `--ops` nor `--duration` is given.
pub const DEFAULT_OPS: u64 = 100_000;

/// Highest latency the histograms hold (longer ones are clamped): 60 s.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Arguments of `kvs_client bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Client processes (this binary, re-executed).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub clients: u32,
    /// Threads per client process, each with its own connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: u32,
    /// Total operations over all processes and threads (default 100000;
    /// at most 10^12).
    #[arg(long, conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..=1_000_000_000_000))]
    pub ops: Option<u64>,
    /// Run for this many seconds (up to a week) instead of a fixed
    /// operation count.
    #[arg(long, value_parser = parse_duration_secs)]
    pub duration: Option<f64>,
    /// Relative weights of GET:SET:POST:DEL.
    #[arg(long, default_value = "90:10:0:0", value_parser = parse_mix)]
    pub mix: Mix,
    /// Keys in all, split evenly between the threads of all processes (at
    /// most 10 million: the checker keeps state per key).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub keys: u64,
    /// How each thread picks keys in its range.
    #[arg(long, value_enum, default_value_t = KeyDist::Uniform)]
    pub key_dist: KeyDist,
    /// Exponent of the zipf distribution (above 0, at most 10).
    #[arg(long, default_value_t = 0.99, value_parser = parse_zipf_exponent)]
    pub zipf_exponent: f64,
    /// Bytes per value written (at most the server's value size).
    #[arg(long, default_value_t = 32)]
    pub value_size: usize,
    /// Async requests in flight per thread; 1 uses the synchronous calls.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub depth: u32,
    /// Seed of the key and op choices (each thread derives its own).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Never draw the progress bar (it is drawn only when stderr is a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Internal: run as client process INDEX of a multi-process run.
    #[arg(long, hide = true)]
    pub child: Option<u32>,
    /// Internal: the run's key prefix, passed to client processes.
    #[arg(long, hide = true)]
    pub run_id: Option<u32>,
}

/// A number of seconds: finite, above 0, at most a week.
fn parse_duration_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v.is_finite() && v > 0.0 && v <= 604_800.0) {
        return Err(format!(
            "{s} must be a number of seconds above 0 and at most 604800 (a week)"
        ));
    }
    Ok(v)
}

/// A zipf exponent: finite, above 0, at most 10.
fn parse_zipf_exponent(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(v.is_finite() && v > 0.0 && v <= 10.0) {
        return Err(format!("{s} must be above 0 and at most 10"));
    }
    Ok(v)
}

/// Relative weights of the four operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mix {
    /// GET weight.
    pub get: u32,
    /// SET weight.
    pub set: u32,
    /// POST weight.
    pub post: u32,
    /// DEL weight.
    pub del: u32,
}

fn parse_mix(s: &str) -> Result<Mix, String> {
    let parts: Vec<u32> = s
        .split(':')
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("mix {s:?}: {e} (expected get:set:post:del, e.g. 90:10:0:0)"))?;
    let [get, set, post, del] = parts[..] else {
        return Err(format!(
            "mix {s:?} needs four weights get:set:post:del, e.g. 90:10:0:0"
        ));
    };
    let total = u64::from(get) + u64::from(set) + u64::from(post) + u64::from(del);
    if total == 0 || total > u64::from(u32::MAX) {
        return Err(format!(
            "mix {s:?}: the weights must add up to between 1 and 2^32-1"
        ));
    }
    Ok(Mix {
        get,
        set,
        post,
        del,
    })
}

/// Key distributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyDist {
    /// Every key of the range equally likely.
    Uniform,
    /// A few hot keys (zipf with `--zipf-exponent`).
    Zipf,
}

/// The four measured operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Get = 0,
    Set = 1,
    Post = 2,
    Del = 3,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Get, Kind::Set, Kind::Post, Kind::Del];

    fn name(self) -> &'static str {
        ["get", "set", "post", "del"][self as usize]
    }
}

/// What a value type must offer the generator.
pub trait BenchValue: bytemuck::Pod + Send + Sync {
    /// Longest value in bytes.
    const CAPACITY: usize;
    /// The value holding `bytes` (ASCII, at most `CAPACITY`).
    fn from_ascii(bytes: &[u8]) -> Self;
    /// The value's bytes.
    fn bytes(&self) -> &[u8];
}

impl<const N: usize> BenchValue for FixedStr<N> {
    const CAPACITY: usize = FixedStr::<N>::CAPACITY;

    fn from_ascii(bytes: &[u8]) -> Self {
        FixedStr::<N>::from_bytes(bytes).unwrap_or_default()
    }

    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// A small, fast generator (SplitMix64): the choice of keys and ops must not
/// cost more than the operation being measured.
#[derive(Debug, Clone)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is negligible).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks key indices in `0..n`.
#[derive(Debug)]
enum KeyPicker {
    Uniform(u64),
    /// Cumulative probabilities of ranks `0..n`; rank 0 is the hottest key.
    Zipf(Vec<f64>),
}

impl KeyPicker {
    fn new(dist: KeyDist, n: u64, exponent: f64) -> Self {
        match dist {
            KeyDist::Uniform => KeyPicker::Uniform(n),
            KeyDist::Zipf => {
                let mut cdf = Vec::with_capacity(n as usize);
                let mut sum = 0.0;
                for rank in 1..=n {
                    sum += 1.0 / (rank as f64).powf(exponent);
                    cdf.push(sum);
                }
                for c in &mut cdf {
                    *c /= sum;
                }
                KeyPicker::Zipf(cdf)
            }
        }
    }

    fn pick(&self, rng: &mut SplitMix) -> usize {
        match self {
            KeyPicker::Uniform(n) => rng.below(*n) as usize,
            KeyPicker::Zipf(cdf) => {
                let u = rng.unit();
                cdf.partition_point(|&c| c < u).min(cdf.len() - 1)
            }
        }
    }
}

impl Mix {
    fn total(&self) -> u64 {
        u64::from(self.get) + u64::from(self.set) + u64::from(self.post) + u64::from(self.del)
    }

    fn pick(&self, rng: &mut SplitMix) -> Kind {
        let mut r = rng.below(self.total());
        for (kind, w) in Kind::ALL
            .into_iter()
            .zip([self.get, self.set, self.post, self.del])
        {
            if r < u64::from(w) {
                return kind;
            }
            r -= u64::from(w);
        }
        Kind::Get
    }
}

/// One thread's (or process's, or the run's) measurements.
#[derive(Debug)]
struct Tally {
    hist: [Histogram<u64>; 4],
    wrong: u64,
    failed: u64,
    /// A call found the server gone (the run stops at the first one).
    server_gone: bool,
    /// Seconds from the common start to this part's last answer.
    seconds: f64,
}

impl Tally {
    fn new() -> Self {
        let h =
            || Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds");
        Self {
            hist: [h(), h(), h(), h()],
            wrong: 0,
            failed: 0,
            server_gone: false,
            seconds: 0.0,
        }
    }

    fn record(&mut self, kind: Kind, ns: u64) {
        self.hist[kind as usize].saturating_record(ns.clamp(1, MAX_LATENCY_NS));
    }

    fn merge(&mut self, other: &Tally) {
        for (a, b) in self.hist.iter_mut().zip(&other.hist) {
            // Same bounds on both sides, so this cannot fail.
            let _ = a.add(b);
        }
        self.wrong += other.wrong;
        self.failed += other.failed;
        self.server_gone |= other.server_gone;
        self.seconds = self.seconds.max(other.seconds);
    }

    fn ops(&self) -> u64 {
        self.hist.iter().map(Histogram::len).sum()
    }

    fn to_wire(&self) -> WireTally {
        WireTally {
            hist: self
                .hist
                .iter()
                .map(|h| {
                    h.iter_recorded()
                        .map(|v| (v.value_iterated_to(), v.count_at_value()))
                        .collect()
                })
                .collect(),
            wrong: self.wrong,
            failed: self.failed,
            server_gone: self.server_gone,
            seconds: self.seconds,
        }
    }

    fn from_wire(w: &WireTally) -> Self {
        let mut t = Tally::new();
        for (h, counts) in t.hist.iter_mut().zip(&w.hist) {
            for &(value, count) in counts {
                let _ = h.record_n(value.clamp(1, MAX_LATENCY_NS), count);
            }
        }
        t.wrong = w.wrong;
        t.failed = w.failed;
        t.server_gone = w.server_gone;
        t.seconds = w.seconds;
        t
    }
}

/// A [`Tally`] as a child process sends it: `(value, count)` pairs per kind.
#[derive(Debug, Serialize, Deserialize)]
struct WireTally {
    hist: Vec<Vec<(u64, u64)>>,
    wrong: u64,
    failed: u64,
    #[serde(default)]
    server_gone: bool,
    seconds: f64,
}

/// How much work each thread does.
#[derive(Debug, Clone, Copy)]
enum Budget {
    Ops(u64),
    Until(Duration),
}

/// Everything a worker thread needs to know.
#[derive(Debug, Clone)]
struct Plan {
    name: String,
    options: ClientOptions,
    args: BenchArgs,
    keys_per_thread: u64,
    /// Total threads over all processes.
    all_threads: u64,
    /// This run's key prefix (`bench:RUN:THREAD:I`), so that runs at once
    /// never share keys.
    run_id: u32,
    /// Set at the first `ServerGone`: every thread stops.
    gone: Arc<AtomicBool>,
}

impl Plan {
    fn budget(&self, global_thread: u64) -> Budget {
        match (self.args.duration, self.args.ops) {
            (Some(s), _) => Budget::Until(Duration::from_secs_f64(s.max(0.0))),
            (None, ops) => {
                let ops = ops.unwrap_or(DEFAULT_OPS);
                let base = ops / self.all_threads;
                Budget::Ops(base + u64::from(global_thread < ops % self.all_threads))
            }
        }
    }
}

/// Runs the `bench` command against region `name`.
///
/// # Errors
///
/// A [`Failure`] for bad arguments, a connection error, or a run with errors.
pub fn run<V: BenchValue>(
    name: &str,
    options: ClientOptions,
    args: &BenchArgs,
    info: &RegionInfo,
) -> Result<(), Failure> {
    let fail = |message: String| Failure { code: 2, message };
    if args.value_size > V::CAPACITY {
        return Err(fail(format!(
            "--value-size {} is above the server's value size {}",
            args.value_size,
            V::CAPACITY
        )));
    }
    if let Some(s) = args.duration {
        if !(s.is_finite() && s > 0.0) {
            return Err(fail(format!("--duration {s} must be a positive number")));
        }
    }
    let all_threads = u64::from(args.clients) * u64::from(args.threads);
    let keys_per_thread = args.keys / all_threads;
    if keys_per_thread < 2 * u64::from(args.depth) {
        return Err(fail(format!(
            "--keys {} gives each of the {all_threads} threads {keys_per_thread} keys; \
             it needs at least 2 x --depth ({}) so that no two requests in flight share a key",
            args.keys,
            2 * args.depth
        )));
    }
    let in_flight = all_threads * u64::from(args.depth);
    let room = info.slot_count.min(info.ring_capacity);
    if in_flight > room {
        return Err(fail(format!(
            "{in_flight} requests in flight (clients x threads x depth) exceed the server's \
             {} response slots / {} ring cells; lower --depth or start the server with more",
            info.slot_count, info.ring_capacity
        )));
    }
    let plan = Plan {
        name: name.to_string(),
        options,
        args: args.clone(),
        keys_per_thread,
        all_threads,
        run_id: args
            .run_id
            .unwrap_or_else(|| kvs_core::secure_fs::random_u64() as u32),
        gone: Arc::new(AtomicBool::new(false)),
    };
    if let Some(index) = args.child {
        return run_child::<V>(&plan, index);
    }
    let progress = Progress::new(&plan);
    let tally = if args.clients == 1 {
        run_in_process::<V>(&plan, &progress)?
    } else {
        run_children(&plan, &progress)?
    };
    progress.finish();
    if tally.server_gone || plan.gone.load(Ordering::Relaxed) {
        return Err(fail(
            "the server is gone (it stopped or died); the benchmark stopped at the first ServerGone"
                .into(),
        ));
    }
    report(&plan, info, &tally);
    let errors = tally.wrong + tally.failed;
    if errors > 0 {
        return Err(fail(format!(
            "{errors} errors ({} wrong answers, {} failed calls)",
            tally.wrong, tally.failed
        )));
    }
    Ok(())
}

/// Runs the threads of process `index`, calling `ready` once they are
/// connected and filled, then `go` (which blocks until the start), and
/// returns their merged tally.
fn run_threads<V: BenchValue>(
    plan: &Plan,
    index: u32,
    done_ops: &AtomicU64,
    ready: impl FnOnce() -> Result<(), Failure>,
) -> Result<Tally, Failure> {
    let threads = plan.args.threads as usize;
    // Threads + this one: threads wait until the caller says go.
    let filled = Barrier::new(threads + 1);
    let start = Barrier::new(threads + 1);
    let started: Mutex<Option<Instant>> = Mutex::new(None);
    let abort = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let global = u64::from(index) * plan.args.threads as u64 + t as u64;
                let (filled, start, started, abort) = (&filled, &start, &started, &abort);
                s.spawn(move || {
                    let worker = Worker::<V>::connect(plan, global);
                    let worker = match worker {
                        Ok(mut w) => match w.fill() {
                            Ok(()) => Some(w),
                            Err(e) => {
                                abort.store(true, Ordering::Relaxed);
                                eprintln!("kvs_client bench: filling the keys: {e}");
                                None
                            }
                        },
                        Err(e) => {
                            abort.store(true, Ordering::Relaxed);
                            eprintln!("kvs_client bench: {e}");
                            None
                        }
                    };
                    filled.wait();
                    start.wait();
                    let t0 = started.lock().map(|g| *g).ok().flatten();
                    match (worker, t0) {
                        (Some(mut w), Some(t0)) => Some(w.run(t0, done_ops)),
                        _ => None,
                    }
                })
            })
            .collect();
        filled.wait();
        let go = if abort.load(Ordering::Relaxed) {
            Err(Failure {
                code: 2,
                message: "a benchmark thread could not start".into(),
            })
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
                Err(_) => {
                    return Err(Failure {
                        code: 2,
                        message: "a benchmark thread panicked".into(),
                    })
                }
            }
        }
        go.map(|()| tally)
    })
}

fn run_in_process<V: BenchValue>(plan: &Plan, progress: &Progress) -> Result<Tally, Failure> {
    run_threads::<V>(plan, 0, progress.done(), || {
        progress.start();
        Ok(())
    })
}

/// A child process: report `ready`, wait for the go line, run, report.
fn run_child<V: BenchValue>(plan: &Plan, index: u32) -> Result<(), Failure> {
    let done = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = |out: &Mutex<std::io::Stdout>, line: &str| {
        if let Ok(o) = out.lock() {
            let mut o = o.lock();
            let _ = writeln!(o, "{line}");
            let _ = o.flush();
        }
    };
    let reporter = {
        let (done, finished, out) = (Arc::clone(&done), Arc::clone(&finished), Arc::clone(&out));
        std::thread::spawn(move || {
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                say(&out, &format!("progress {}", done.load(Ordering::Relaxed)));
            }
        })
    };
    let tally = run_threads::<V>(plan, index, &done, || {
        say(&out, "ready");
        let mut line = String::new();
        match std::io::stdin().lock().read_line(&mut line) {
            Ok(n) if n > 0 && line.trim() == "go" => Ok(()),
            _ => Err(Failure {
                code: 2,
                message: "the parent bench process went away".into(),
            }),
        }
    });
    finished.store(true, Ordering::Relaxed);
    let _ = reporter.join();
    let tally = tally?;
    let wire = serde_json::to_string(&tally.to_wire()).unwrap_or_default();
    say(&out, &format!("result {wire}"));
    Ok(())
}

/// Kills and reaps the children that are still running when dropped.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

fn child_command(plan: &Plan, index: u32) -> Result<Command, Failure> {
    let exe = std::env::current_exe().map_err(|e| Failure {
        code: 2,
        message: format!("finding this executable to run client processes: {e}"),
    })?;
    let a = &plan.args;
    let mut cmd = Command::new(exe);
    cmd.arg("--name")
        .arg(&plan.name)
        .arg("--timeout-ms")
        .arg(plan.options.timeout.as_millis().to_string())
        .arg("bench")
        .args(["--clients", &a.clients.to_string()])
        .args(["--threads", &a.threads.to_string()])
        .args([
            "--mix",
            &format!("{}:{}:{}:{}", a.mix.get, a.mix.set, a.mix.post, a.mix.del),
        ])
        .args(["--keys", &a.keys.to_string()])
        .args([
            "--key-dist",
            match a.key_dist {
                KeyDist::Uniform => "uniform",
                KeyDist::Zipf => "zipf",
            },
        ])
        .args(["--zipf-exponent", &a.zipf_exponent.to_string()])
        .args(["--value-size", &a.value_size.to_string()])
        .args(["--depth", &a.depth.to_string()])
        .args(["--seed", &a.seed.to_string()])
        .args(["--run-id", &plan.run_id.to_string()])
        .args(["--child", &index.to_string()]);
    match (a.duration, a.ops) {
        (Some(s), _) => cmd.args(["--duration", &s.to_string()]),
        (None, Some(n)) => cmd.args(["--ops", &n.to_string()]),
        (None, None) => &mut cmd,
    };
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // Die with the parent, however it dies (a SIGKILLed run must not leave
    // its client processes hammering the server).
    let parent = std::process::id();
    // SAFETY: only async-signal-safe calls (prctl, getppid) between fork
    // and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            // The parent may have died before the prctl took effect.
            if libc::getppid() as u32 != parent {
                libc::_exit(2);
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// What a child said on its stdout.
enum ChildLine {
    Ready,
    Progress(u64),
    Result(Box<Tally>),
    Gone,
}

fn run_children(plan: &Plan, progress: &Progress) -> Result<Tally, Failure> {
    let fail = |message: String| Failure { code: 2, message };
    let mut children = Children(Vec::new());
    let (tx, rx) = std::sync::mpsc::channel::<(usize, ChildLine)>();
    let mut readers = Vec::new();
    for i in 0..plan.args.clients {
        let mut child = child_command(plan, i)?
            .spawn()
            .map_err(|e| fail(format!("starting client process {i}: {e}")))?;
        let stdout = child.stdout.take();
        children.0.push(child);
        let tx = tx.clone();
        let i = i as usize;
        readers.push(std::thread::spawn(move || {
            if let Some(stdout) = stdout {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let msg = if line == "ready" {
                        ChildLine::Ready
                    } else if let Some(n) = line.strip_prefix("progress ") {
                        ChildLine::Progress(n.parse().unwrap_or(0))
                    } else if let Some(json) = line.strip_prefix("result ") {
                        match serde_json::from_str::<WireTally>(json) {
                            Ok(w) => ChildLine::Result(Box::new(Tally::from_wire(&w))),
                            Err(_) => ChildLine::Gone,
                        }
                    } else {
                        continue;
                    };
                    if tx.send((i, msg)).is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send((i, ChildLine::Gone));
        }));
    }
    drop(tx);
    let n = children.0.len();
    let mut ready = 0;
    let mut counts = vec![0u64; n];
    let mut results: Vec<Option<Tally>> = (0..n).map(|_| None).collect();
    let mut gone = 0;
    let mut started = false;
    while gone < n {
        let Ok((i, msg)) = rx.recv() else { break };
        match msg {
            ChildLine::Ready => {
                ready += 1;
                if ready == n {
                    progress.start();
                    for c in &mut children.0 {
                        if let Some(stdin) = c.stdin.as_mut() {
                            let _ = writeln!(stdin, "go");
                            let _ = stdin.flush();
                        }
                    }
                    started = true;
                }
            }
            ChildLine::Progress(count) => {
                counts[i] = count;
                progress
                    .done()
                    .store(counts.iter().sum(), Ordering::Relaxed);
            }
            ChildLine::Result(t) => results[i] = Some(*t),
            ChildLine::Gone => {
                gone += 1;
                if results[i].is_none() {
                    return Err(fail(format!(
                        "client process {i} ended without a result{}",
                        if started { "" } else { " (before the start)" }
                    )));
                }
            }
        }
    }
    for c in &mut children.0 {
        let _ = c.wait();
    }
    for r in readers {
        let _ = r.join();
    }
    let mut tally = Tally::new();
    for r in results.iter().flatten() {
        tally.merge(r);
    }
    Ok(tally)
}

/// A request in flight on the async path.
enum Pending<'c, V: BenchValue> {
    Get(Ticket<'c, TextKey, V, Option<V>>),
    Set(Ticket<'c, TextKey, V, ()>),
    Post(Ticket<'c, TextKey, V, bool>),
    Del(Ticket<'c, TextKey, V, bool>),
}

/// What an answer said, for the check against the model.
#[derive(Debug)]
enum Answer<V> {
    Value(Option<V>),
    Done,
    Changed(bool),
}

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
    client: KVSClient<TextKey, V>,
    plan: Plan,
    global: u64,
    keys: Vec<TextKey>,
    /// The sequence number of the value each key holds; 0 when absent.
    expected: Vec<u32>,
    /// Keys with a request in flight (async path).
    busy: Vec<bool>,
    next_seq: u32,
    rng: SplitMix,
    picker: KeyPicker,
    /// Scratch for building values.
    buf: Vec<u8>,
    wrong_reported: u32,
}

impl<V: BenchValue> Worker<V> {
    fn connect(plan: &Plan, global: u64) -> Result<Self, ClientError> {
        let client = KVSClient::<TextKey, V>::connect_with(&plan.name, plan.options.clone())?;
        let n = plan.keys_per_thread;
        let keys = (0..n)
            .map(|i| {
                TextKey::new(&format!("bench:{:08x}:{global}:{i}", plan.run_id))
                    .expect("a short ASCII key fits")
            })
            .collect();
        Ok(Self {
            client,
            plan: plan.clone(),
            global,
            keys,
            expected: vec![0; n as usize],
            busy: vec![false; n as usize],
            next_seq: 1,
            rng: SplitMix(
                plan.args
                    .seed
                    .wrapping_mul(0x2545_f491_4f6c_dd1d)
                    .wrapping_add(global),
            ),
            picker: KeyPicker::new(plan.args.key_dist, n, plan.args.zipf_exponent),
            buf: Vec::with_capacity(plan.args.value_size),
            wrong_reported: 0,
        })
    }

    /// The value with sequence number `seq` of key `key`: a tag naming the
    /// thread, key and sequence, padded to `--value-size` bytes.
    fn value(&mut self, key: usize, seq: u32) -> V {
        fill_value(
            &mut self.buf,
            self.plan.args.value_size,
            self.global,
            key,
            seq,
        );
        V::from_ascii(&self.buf)
    }

    fn take_seq(&mut self) -> u32 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        s
    }

    /// Writes every key of this thread, so that the model starts exact.
    fn fill(&mut self) -> Result<(), ClientError> {
        const CHUNK: usize = 4096;
        let n = self.keys.len();
        let mut start = 0;
        while start < n {
            let end = (start + CHUNK).min(n);
            let mut ops = Vec::with_capacity(end - start);
            let mut seqs = Vec::with_capacity(end - start);
            for k in start..end {
                let seq = self.take_seq();
                ops.push(Op::Set(self.keys[k], self.value(k, seq)));
                seqs.push(seq);
            }
            let results = self.client.batch(&ops, self.plan.options.timeout);
            for (i, r) in results.into_iter().enumerate() {
                r?;
                self.expected[start + i] = seqs[i];
            }
            start = end;
        }
        Ok(())
    }

    fn run(&mut self, t0: Instant, done_ops: &AtomicU64) -> Tally {
        let budget = self.plan.budget(self.global);
        let mut tally = Tally::new();
        if self.plan.args.depth <= 1 {
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
            let kind = self.plan.args.mix.pick(&mut self.rng);
            let k = self.picker.pick(&mut self.rng);
            let key = self.keys[k];
            let seq = match kind {
                Kind::Set | Kind::Post => self.take_seq(),
                _ => 0,
            };
            let value = if seq != 0 {
                self.value(k, seq)
            } else {
                V::zeroed()
            };
            let t = Instant::now();
            let answer = match kind {
                Kind::Get => self.client.get(&key).map(Answer::Value),
                Kind::Set => self.client.set(&key, &value).map(|()| Answer::Done),
                Kind::Post => self.client.post(&key, &value).map(Answer::Changed),
                Kind::Del => self.client.del(&key).map(Answer::Changed),
            };
            now = Instant::now();
            tally.record(kind, now.duration_since(t).as_nanos() as u64);
            self.check(kind, k, seq, answer, tally);
            count += 1;
            if count % 256 == 0 {
                done_ops.fetch_add(256, Ordering::Relaxed);
            }
        }
        done_ops.fetch_add(count % 256, Ordering::Relaxed);
        tally.seconds = now.duration_since(t0).as_secs_f64();
    }

    fn run_async(&mut self, t0: Instant, budget: Budget, done_ops: &AtomicU64, tally: &mut Tally) {
        let depth = self.plan.args.depth as usize;
        let timeout = self.plan.options.timeout;
        // Split the borrows: tickets borrow the client, the rest is mutated.
        let client = &self.client;
        let mut state = Model {
            plan: &self.plan,
            keys: &self.keys,
            expected: &mut self.expected,
            busy: &mut self.busy,
            next_seq: &mut self.next_seq,
            rng: &mut self.rng,
            picker: &self.picker,
            buf: &mut self.buf,
            global: self.global,
            wrong_reported: &mut self.wrong_reported,
        };
        let mut queue: VecDeque<InFlight<'_, V>> = VecDeque::with_capacity(depth);
        let mut submitted = 0u64;
        let mut completed = 0u64;
        let mut now = Instant::now();
        loop {
            let more = !state.plan.gone.load(Ordering::Relaxed)
                && match budget {
                    Budget::Ops(n) => submitted < n,
                    Budget::Until(d) => now.duration_since(t0) < d,
                };
            while more && queue.len() < depth {
                match budget {
                    Budget::Ops(n) if submitted >= n => break,
                    _ => {}
                }
                let kind = state.plan.args.mix.pick(state.rng);
                let k = state.pick_free_key();
                let key = state.keys[k];
                let seq = match kind {
                    Kind::Set | Kind::Post => state.take_seq(),
                    _ => 0,
                };
                let value = if seq != 0 {
                    state.value(k, seq)
                } else {
                    V::zeroed()
                };
                let since = Instant::now();
                let pending = match kind {
                    Kind::Get => client.get_async(&key).map(Pending::Get),
                    Kind::Set => client.set_async(&key, &value).map(Pending::Set),
                    Kind::Post => client.post_async(&key, &value).map(Pending::Post),
                    Kind::Del => client.del_async(&key).map(Pending::Del),
                };
                submitted += 1;
                match pending {
                    Ok(pending) => {
                        state.busy[k] = true;
                        queue.push_back(InFlight {
                            kind,
                            key: k,
                            seq,
                            since,
                            pending,
                        });
                    }
                    Err(e) => {
                        state.failed(kind, k, &e, tally);
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
            let answer = match f.pending {
                Pending::Get(t) => t.wait(timeout).map(Answer::Value),
                Pending::Set(t) => t.wait(timeout).map(|()| Answer::Done),
                Pending::Post(t) => t.wait(timeout).map(Answer::Changed),
                Pending::Del(t) => t.wait(timeout).map(Answer::Changed),
            };
            now = Instant::now();
            tally.record(f.kind, now.duration_since(f.since).as_nanos() as u64);
            state.busy[f.key] = false;
            state.check(f.kind, f.key, f.seq, answer, tally);
            completed += 1;
            if completed % 256 == 0 {
                done_ops.fetch_add(256, Ordering::Relaxed);
            }
        }
        done_ops.fetch_add(completed % 256, Ordering::Relaxed);
        tally.seconds = now.duration_since(t0).as_secs_f64();
    }

    fn check(
        &mut self,
        kind: Kind,
        key: usize,
        seq: u32,
        answer: Result<Answer<V>, ClientError>,
        tally: &mut Tally,
    ) {
        let mut state = Model {
            plan: &self.plan,
            keys: &self.keys,
            expected: &mut self.expected,
            busy: &mut self.busy,
            next_seq: &mut self.next_seq,
            rng: &mut self.rng,
            picker: &self.picker,
            buf: &mut self.buf,
            global: self.global,
            wrong_reported: &mut self.wrong_reported,
        };
        state.check(kind, key, seq, answer, tally);
    }
}

/// The mutable part of a [`Worker`], borrowed apart from its client.
struct Model<'a> {
    plan: &'a Plan,
    keys: &'a [TextKey],
    expected: &'a mut [u32],
    busy: &'a mut [bool],
    next_seq: &'a mut u32,
    rng: &'a mut SplitMix,
    picker: &'a KeyPicker,
    buf: &'a mut Vec<u8>,
    global: u64,
    wrong_reported: &'a mut u32,
}

impl Model<'_> {
    fn take_seq(&mut self) -> u32 {
        let s = *self.next_seq;
        *self.next_seq = self.next_seq.wrapping_add(1).max(1);
        s
    }

    fn value<V: BenchValue>(&mut self, key: usize, seq: u32) -> V {
        fill_value(self.buf, self.plan.args.value_size, self.global, key, seq);
        V::from_ascii(self.buf)
    }

    /// A key with nothing in flight: the picked one, or the next free one.
    fn pick_free_key(&mut self) -> usize {
        let n = self.busy.len();
        let mut k = self.picker.pick(self.rng);
        // At most `depth` keys are busy and there are at least 2 x depth keys.
        while self.busy[k] {
            k = (k + 1) % n;
        }
        k
    }

    fn failed(&mut self, kind: Kind, key: usize, e: &ClientError, tally: &mut Tally) {
        if matches!(e, ClientError::ServerGone) {
            // Stop every thread: nothing more can succeed.
            tally.server_gone = true;
            self.plan.gone.store(true, Ordering::Relaxed);
            return;
        }
        tally.failed += 1;
        if tally.failed <= 3 {
            eprintln!(
                "kvs_client bench: {} {:?} failed: {e}",
                kind.name(),
                self.keys[key].to_string_lossy()
            );
        }
        // The outcome is unknown (a timed-out SET may still land): re-learn
        // the key's state from the server is not possible without racing, so
        // stop checking it by marking it unknown.
        self.expected[key] = u32::MAX;
    }

    fn wrong(&mut self, kind: Kind, key: usize, what: String, tally: &mut Tally) {
        tally.wrong += 1;
        if *self.wrong_reported < 5 {
            *self.wrong_reported += 1;
            eprintln!(
                "kvs_client bench: wrong answer to {} {:?}: {what}",
                kind.name(),
                self.keys[key].to_string_lossy()
            );
        }
    }

    fn check<V: BenchValue>(
        &mut self,
        kind: Kind,
        key: usize,
        seq: u32,
        answer: Result<Answer<V>, ClientError>,
        tally: &mut Tally,
    ) {
        let answer = match answer {
            Ok(a) => a,
            Err(e) => return self.failed(kind, key, &e, tally),
        };
        let had = self.expected[key];
        let unknown = had == u32::MAX;
        match (kind, answer) {
            (Kind::Get, Answer::Value(got)) => {
                if unknown {
                    self.expected[key] = match got {
                        Some(v) => self.seq_of(key, &v).unwrap_or(u32::MAX),
                        None => 0,
                    };
                    return;
                }
                match got {
                    None if had == 0 => {}
                    None => self.wrong(kind, key, format!("absent, expected seq {had}"), tally),
                    Some(v) => {
                        fill_value(self.buf, self.plan.args.value_size, self.global, key, had);
                        if had == 0 || v.bytes() != &self.buf[..] {
                            let what = format!(
                                "got {:?}, expected {}",
                                String::from_utf8_lossy(v.bytes()),
                                if had == 0 {
                                    "nothing".to_string()
                                } else {
                                    format!("{:?}", String::from_utf8_lossy(self.buf))
                                }
                            );
                            self.wrong(kind, key, what, tally);
                        }
                    }
                }
            }
            (Kind::Set, Answer::Done) => self.expected[key] = seq,
            (Kind::Post, Answer::Changed(inserted)) => {
                if !unknown && inserted != (had == 0) {
                    let what = format!("inserted = {inserted} but the key held seq {had}");
                    self.wrong(kind, key, what, tally);
                }
                if inserted {
                    self.expected[key] = seq;
                } else if unknown || had == 0 {
                    self.expected[key] = u32::MAX;
                }
            }
            (Kind::Del, Answer::Changed(removed)) => {
                if !unknown && removed != (had != 0) {
                    let what = format!("removed = {removed} but the key held seq {had}");
                    self.wrong(kind, key, what, tally);
                }
                self.expected[key] = 0;
            }
            (kind, a) => {
                let shape = match a {
                    Answer::Value(_) => "a value",
                    Answer::Done => "done",
                    Answer::Changed(_) => "a flag",
                };
                let what = format!("an answer of the wrong shape ({shape})");
                self.wrong(kind, key, what, tally);
            }
        }
    }

    /// The sequence number in a value this thread wrote to `key`, if it is one.
    fn seq_of<V: BenchValue>(&mut self, key: usize, v: &V) -> Option<u32> {
        let bytes = v.bytes();
        let hex = bytes.get(22..30)?;
        let seq = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
        fill_value(self.buf, self.plan.args.value_size, self.global, key, seq);
        (bytes == &self.buf[..]).then_some(seq)
    }
}

/// `tttttttt.kkkkkkkkkkkk.ssssssss.` in hex (thread, key, sequence), then
/// `v` up to `size` bytes; cut to `size` when shorter.
fn fill_value(buf: &mut Vec<u8>, size: usize, thread: u64, key: usize, seq: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.clear();
    let mut put = |x: u64, digits: u32| {
        for i in (0..digits).rev() {
            buf.push(HEX[((x >> (4 * i)) & 0xf) as usize]);
        }
        buf.push(b'.');
    };
    put(thread, 8);
    put(key as u64, 12);
    put(u64::from(seq), 8);
    buf.resize(size.max(buf.len()), b'v');
    buf.truncate(size);
}

/// The progress bar on stderr (only when it is a terminal).
struct Progress {
    shared: Arc<ProgressShared>,
    enabled: bool,
    total_ops: Option<u64>,
    duration: Option<Duration>,
    drawer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What the drawing thread shares with the runners.
#[derive(Debug, Default)]
struct ProgressShared {
    /// Operations answered so far, over all threads and processes.
    done: AtomicU64,
    stop: AtomicBool,
}

impl Progress {
    fn new(plan: &Plan) -> Self {
        Self {
            shared: Arc::new(ProgressShared::default()),
            enabled: !plan.args.no_progress && std::io::stderr().is_terminal(),
            total_ops: plan
                .args
                .duration
                .is_none()
                .then(|| plan.args.ops.unwrap_or(DEFAULT_OPS)),
            duration: plan.args.duration.map(Duration::from_secs_f64),
            drawer: Mutex::new(None),
        }
    }

    fn done(&self) -> &AtomicU64 {
        &self.shared.done
    }

    /// The clock starts: draw from now on.
    fn start(&self) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let shared = Arc::clone(&self.shared);
        let (total, duration) = (self.total_ops, self.duration);
        let handle = std::thread::spawn(move || {
            while !shared.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let done = shared.done.load(Ordering::Relaxed);
                let secs = now.elapsed().as_secs_f64();
                let frac = match (total, duration) {
                    (Some(t), _) if t > 0 => done as f64 / t as f64,
                    (_, Some(d)) => secs / d.as_secs_f64().max(1e-9),
                    _ => 0.0,
                }
                .clamp(0.0, 1.0);
                let width = 30;
                let filled = (frac * width as f64) as usize;
                let rate = done as f64 / secs.max(1e-9);
                eprint!(
                    "\r[{}{}] {:3.0}%  {done} ops  {}  ",
                    "#".repeat(filled),
                    "-".repeat(width - filled),
                    frac * 100.0,
                    fmt_rate(rate)
                );
            }
        });
        if let Ok(mut d) = self.drawer.lock() {
            *d = Some(handle);
        }
    }

    fn finish(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Ok(mut d) = self.drawer.lock() {
            if let Some(h) = d.take() {
                let _ = h.join();
                eprint!("\r{:70}\r", "");
            }
        }
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M ops/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k ops/s", r / 1e3)
    } else {
        format!("{r:.0} ops/s")
    }
}

/// Latency figures of one histogram, in microseconds.
#[derive(Debug, Serialize)]
struct Figures {
    count: u64,
    ops_per_sec: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

fn figures(h: &Histogram<u64>, seconds: f64) -> Figures {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Figures {
        count: h.len(),
        ops_per_sec: h.len() as f64 / seconds.max(1e-9),
        p50_us: us(0.5),
        p90_us: us(0.9),
        p99_us: us(0.99),
        p999_us: us(0.999),
        max_us: h.max() as f64 / 1000.0,
    }
}

/// The `--json` object.
#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    region: &'a str,
    clients: u32,
    threads: u32,
    depth: u32,
    keys: u64,
    key_dist: &'static str,
    value_size: usize,
    mix: Mix,
    server_workers: u64,
    ops: u64,
    seconds: f64,
    ops_per_sec: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    errors: u64,
    wrong_answers: u64,
    failed_calls: u64,
    per_op: std::collections::BTreeMap<&'static str, Figures>,
}

fn report(plan: &Plan, info: &RegionInfo, tally: &Tally) {
    let mut all =
        Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds");
    for h in &tally.hist {
        let _ = all.add(h);
    }
    let secs = tally.seconds;
    let total = figures(&all, secs);
    let a = &plan.args;
    let dist = match a.key_dist {
        KeyDist::Uniform => "uniform",
        KeyDist::Zipf => "zipf",
    };
    let per_op: std::collections::BTreeMap<_, _> = Kind::ALL
        .into_iter()
        .filter(|k| !tally.hist[*k as usize].is_empty())
        .map(|k| (k.name(), figures(&tally.hist[k as usize], secs)))
        .collect();
    let mut out = std::io::stdout().lock();
    if a.json {
        let r = JsonReport {
            region: &plan.name,
            clients: a.clients,
            threads: a.threads,
            depth: a.depth,
            keys: a.keys,
            key_dist: dist,
            value_size: a.value_size,
            mix: a.mix,
            server_workers: info.workers,
            ops: tally.ops(),
            seconds: secs,
            ops_per_sec: total.ops_per_sec,
            p50_us: total.p50_us,
            p90_us: total.p90_us,
            p99_us: total.p99_us,
            p999_us: total.p999_us,
            max_us: total.max_us,
            errors: tally.wrong + tally.failed,
            wrong_answers: tally.wrong,
            failed_calls: tally.failed,
            per_op,
        };
        let _ = writeln!(out, "{}", serde_json::to_string(&r).unwrap_or_default());
        return;
    }
    let _ = writeln!(
        out,
        "kvs bench: region {}, {} client process(es) x {} thread(s), depth {}, mix get:set:post:del {}:{}:{}:{}, {} keys {dist}, {}-byte values, {} server workers",
        plan.name, a.clients, a.threads, a.depth, a.mix.get, a.mix.set, a.mix.post, a.mix.del, a.keys, a.value_size, info.workers
    );
    let _ = writeln!(
        out,
        "{} ops in {secs:.3} s: {} ({:.0} ops/s)",
        tally.ops(),
        fmt_rate(total.ops_per_sec),
        total.ops_per_sec
    );
    let _ = writeln!(
        out,
        "{:<6} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "op", "count", "ops/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us"
    );
    let rows = per_op
        .iter()
        .map(|(n, f)| (*n, f))
        .chain(std::iter::once(("all", &total)));
    for (name, f) in rows {
        let _ = writeln!(
            out,
            "{:<6} {:>10} {:>12.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>10.3}",
            name, f.count, f.ops_per_sec, f.p50_us, f.p90_us, f.p99_us, f.p999_us, f.max_us
        );
    }
    let _ = writeln!(
        out,
        "errors {} (wrong answers {}, failed calls {})",
        tally.wrong + tally.failed,
        tally.wrong,
        tally.failed
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_four_weights() {
        assert_eq!(
            parse_mix("90:10:0:0"),
            Ok(Mix {
                get: 90,
                set: 10,
                post: 0,
                del: 0
            })
        );
        assert!(parse_mix("90:10").is_err());
        assert!(parse_mix("0:0:0:0").is_err());
        assert!(parse_mix("a:1:1:1").is_err());
    }

    #[test]
    fn values_carry_thread_key_and_sequence() {
        let mut buf = Vec::new();
        fill_value(&mut buf, 40, 3, 17, 0x1234);
        assert_eq!(&buf[..], b"00000003.000000000011.00001234.vvvvvvvvv");
        fill_value(&mut buf, 8, 3, 17, 1);
        assert_eq!(buf.len(), 8);
    }

    #[test]
    fn zipf_prefers_low_ranks_and_stays_in_range() {
        let p = KeyPicker::new(KeyDist::Zipf, 1000, 0.99);
        let mut rng = SplitMix(7);
        let mut low = 0;
        for _ in 0..10_000 {
            let k = p.pick(&mut rng);
            assert!(k < 1000);
            low += usize::from(k < 10);
        }
        assert!(low > 2_000, "{low}");
    }

    #[test]
    fn tallies_survive_the_wire() {
        let mut t = Tally::new();
        t.record(Kind::Get, 350);
        t.record(Kind::Get, 400);
        t.record(Kind::Del, 10_000);
        t.wrong = 2;
        let back = Tally::from_wire(&t.to_wire());
        assert_eq!(back.ops(), 3);
        assert_eq!(back.wrong, 2);
        assert_eq!(back.hist[Kind::Del as usize].len(), 1);
    }
}
