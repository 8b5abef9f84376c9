//! The command line of `kvs_client bench`: [`BenchArgs`], its value
//! parsers, and the checks that need the server's sizes ([`BenchArgs::check`]).

use crate::error::BenchError;
use kvs_core::region::RegionInfo;
use serde::{Deserialize, Serialize};

/// Operations when neither `--ops` nor `--duration` is given.
pub const DEFAULT_OPS: u64 = 100_000;

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
    /// Keys per call: N GETs as one `get_many` (read from the store
    /// directly), N SETs as one `set_many` (one request to the server).
    /// Operations still count keys; latency is then the whole call's. For
    /// GET and SET only (--mix with POST and DEL at 0), with --depth 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch: u32,
    /// Seed of the key and op choices (each thread derives its own).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Never draw the progress bar (it is drawn only when stderr is a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Delete the run's keys at the end (one `del_many` per thread, after
    /// the clock stops). Without it they stay in the store: `bench:RUN:T:I`
    /// for run RUN (8 hex digits), thread T and key I, with the last value
    /// each was given.
    #[arg(long)]
    pub remove_keys: bool,
    /// Internal: run as client process INDEX of a multi-process run.
    #[arg(long, hide = true)]
    pub child: Option<u32>,
    /// Internal: the run's key prefix, passed to client processes.
    #[arg(long, hide = true)]
    pub run_id: Option<u32>,
}

impl BenchArgs {
    /// Threads over all client processes.
    pub(crate) fn all_threads(&self) -> u64 {
        u64::from(self.clients) * u64::from(self.threads)
    }

    /// Operations in all, or `None` for a timed run.
    pub(crate) fn total_ops(&self) -> Option<u64> {
        self.duration
            .is_none()
            .then(|| self.ops.unwrap_or(DEFAULT_OPS))
    }

    /// Checks what clap cannot: the arguments against each other and
    /// against the server (its value size `capacity`, its slots and ring).
    /// Returns the keys each thread owns.
    pub(crate) fn check(&self, capacity: usize, info: &RegionInfo) -> Result<u64, BenchError> {
        let fail = |message: String| Err(BenchError::InvalidArgs(message));
        if self.value_size > capacity {
            return fail(format!(
                "--value-size {} is above the server's largest value ({capacity} bytes, kvs_server --max-value-size)",
                self.value_size
            ));
        }
        if let Some(s) = self.duration {
            if !(s.is_finite() && s > 0.0) {
                return fail(format!("--duration {s} must be a positive number"));
            }
        }
        let all_threads = self.all_threads();
        let keys_per_thread = self.keys / all_threads;
        if keys_per_thread < 2 * u64::from(self.depth) {
            return fail(format!(
                "--keys {} gives each of the {all_threads} threads {keys_per_thread} keys; \
                 it needs at least 2 x --depth ({}) so that no two requests in flight share a key",
                self.keys,
                2 * self.depth
            ));
        }
        if self.batch > 1 {
            if self.mix.post > 0 || self.mix.del > 0 {
                return fail(format!(
                    "--batch {} runs GET and SET batches only: give POST and DEL weight 0 in --mix (now {})",
                    self.batch, self.mix
                ));
            }
            if self.depth > 1 {
                return fail(format!(
                    "--batch {} and --depth {} do not combine: a batch is one synchronous call",
                    self.batch, self.depth
                ));
            }
            if keys_per_thread < u64::from(self.batch) {
                return fail(format!(
                    "--keys {} gives each of the {all_threads} threads {keys_per_thread} keys; \
                     --batch {} needs at least that many (a batch's keys are distinct)",
                    self.keys, self.batch
                ));
            }
        }
        let in_flight = all_threads * u64::from(self.depth);
        let room = info.slot_count.min(info.ring_capacity);
        if in_flight > room {
            return fail(format!(
                "{in_flight} requests in flight (clients x threads x depth) exceed the server's \
                 {} response slots / {} ring cells; lower --depth or start the server with more",
                info.slot_count, info.ring_capacity
            ));
        }
        Ok(keys_per_thread)
    }
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

impl Mix {
    /// The weights in [`Kind::ALL`](crate::workload::Kind::ALL) order.
    pub(crate) fn weights(&self) -> [u32; 4] {
        [self.get, self.set, self.post, self.del]
    }
}

/// `GET:SET:POST:DEL`, as `--mix` takes it (and as client processes are
/// passed it).
impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}:{}", self.get, self.set, self.post, self.del)
    }
}

/// Four weights `get:set:post:del` adding up to between 1 and 2^32-1.
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

impl KeyDist {
    /// The name `--key-dist` takes (and the reports print).
    pub(crate) fn name(self) -> &'static str {
        match self {
            KeyDist::Uniform => "uniform",
            KeyDist::Zipf => "zipf",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.bench)
    }

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
        assert_eq!(
            parse_mix(" 1 : 2:3 :4"),
            Ok(Mix {
                get: 1,
                set: 2,
                post: 3,
                del: 4
            })
        );
        assert_eq!(parse_mix("0:0:0:4294967295").map(|m| m.del), Ok(u32::MAX));
    }

    #[test]
    fn mix_refuses_bad_weights() {
        for bad in [
            "90:10",
            "1:2:3:4:5",
            "",
            "0:0:0:0",
            "a:1:1:1",
            "-1:1:1:1",
            "1.5:1:1:1",
            "4294967295:1:0:0",
            "4294967296:0:0:0",
        ] {
            assert!(parse_mix(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn mix_prints_as_it_parses() {
        let m = parse_mix("40:30:15:15").unwrap();
        assert_eq!(m.to_string(), "40:30:15:15");
        assert_eq!(parse_mix(&m.to_string()), Ok(m));
    }

    #[test]
    fn durations_and_exponents_are_bounded() {
        assert_eq!(parse_duration_secs("2.5"), Ok(2.5));
        assert_eq!(parse_duration_secs("604800"), Ok(604_800.0));
        for bad in ["0", "-1", "NaN", "inf", "1e20", "x"] {
            assert!(parse_duration_secs(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_zipf_exponent("0.99"), Ok(0.99));
        assert_eq!(parse_zipf_exponent("10"), Ok(10.0));
        for bad in ["0", "-1", "NaN", "1e300", "x"] {
            assert!(parse_zipf_exponent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_and_conflicts() {
        let a = parse(&[]).unwrap();
        assert_eq!((a.clients, a.threads, a.depth, a.keys), (1, 1, 1, 10_000));
        assert_eq!(a.mix.weights(), [90, 10, 0, 0]);
        assert_eq!(a.key_dist, KeyDist::Uniform);
        assert_eq!(a.total_ops(), Some(DEFAULT_OPS));
        let a = parse(&["--duration", "3", "--key-dist", "zipf"]).unwrap();
        assert_eq!(a.total_ops(), None);
        assert_eq!(a.key_dist.name(), "zipf");
        assert!(parse(&["--ops", "5", "--duration", "1"]).is_err());
        assert!(parse(&["--mix", "1:2"]).is_err());
    }

    #[test]
    fn the_checks_against_the_server() {
        let info = RegionInfo {
            slot_count: 64,
            ring_capacity: 128,
            ..bytemuck::Zeroable::zeroed()
        };
        let a = parse(&["--keys", "100", "--threads", "2"]).unwrap();
        assert_eq!(a.check(32, &info).unwrap(), 50);
        let e = a.check(16, &info).unwrap_err().to_string();
        assert_eq!(
            e,
            "--value-size 32 is above the server's largest value (16 bytes, kvs_server --max-value-size)"
        );
        let a = parse(&["--keys", "10", "--depth", "8"]).unwrap();
        let e = a.check(32, &info).unwrap_err().to_string();
        assert!(e.contains("needs at least 2 x --depth (16)"), "{e}");
        let a = parse(&["--keys", "1000", "--depth", "65"]).unwrap();
        let e = a.check(32, &info).unwrap_err().to_string();
        assert!(e.starts_with("65 requests in flight"), "{e}");
    }
}
