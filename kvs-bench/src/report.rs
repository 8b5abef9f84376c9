//! The report at the end of a run: a table on stdout, or one JSON object
//! with `--json` ([`JsonReport`]), with latency [`Figures`] for all
//! operations and for each kind.

use crate::args::{BenchArgs, Mix};
use crate::tally::Tally;
use crate::workload::Kind;
use hdrhistogram::Histogram;
use kvs_core::region::RegionInfo;
use kvs_core::text::counted;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;

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

impl Figures {
    /// The figures of `h` (nanoseconds) over a run of `seconds`.
    fn of(h: &Histogram<u64>, seconds: f64) -> Self {
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
}

/// The `--json` object.
#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    region: &'a str,
    clients: u32,
    threads: u32,
    depth: u32,
    batch: u32,
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
    per_op: BTreeMap<&'static str, Figures>,
}

/// A rate for people: `12 ops/s`, `45.6 k ops/s`, `1.23 M ops/s`.
pub(crate) fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M ops/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k ops/s", r / 1e3)
    } else {
        format!("{r:.0} ops/s")
    }
}

/// Prints the report of a run on region `name` to stdout.
pub(crate) fn report(name: &str, args: &BenchArgs, info: &RegionInfo, tally: &Tally) {
    let mut out = std::io::stdout().lock();
    let _ = write_report(&mut out, name, args, info, tally);
}

/// Writes the report: the JSON object with `--json`, the table otherwise.
fn write_report(
    out: &mut impl Write,
    name: &str,
    a: &BenchArgs,
    info: &RegionInfo,
    tally: &Tally,
) -> std::io::Result<()> {
    let secs = tally.seconds;
    let total = Figures::of(&tally.all(), secs);
    let dist = a.key_dist.name();
    let per_op: BTreeMap<_, _> = Kind::ALL
        .into_iter()
        .filter(|k| !tally.hist[*k as usize].is_empty())
        .map(|k| (k.name(), Figures::of(&tally.hist[k as usize], secs)))
        .collect();
    if a.json {
        let r = JsonReport {
            region: name,
            clients: a.clients,
            threads: a.threads,
            depth: a.depth,
            batch: a.batch,
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
            errors: tally.errors(),
            wrong_answers: tally.wrong,
            failed_calls: tally.failed,
            per_op,
        };
        return writeln!(out, "{}", serde_json::to_string(&r).unwrap_or_default());
    }
    writeln!(
        out,
        "kvs bench: region {name}, {} x {}, depth {}, batch {}, mix get:set:post:del {}, {} keys {dist}, {}-byte values, {} on the server",
        counted(u64::from(a.clients), "client process", "client processes"),
        counted(u64::from(a.threads), "thread", "threads"),
        a.depth,
        a.batch,
        a.mix,
        a.keys,
        a.value_size,
        counted(info.workers, "worker", "workers")
    )?;
    writeln!(
        out,
        "{} ops in {secs:.3} s: {} ({:.0} ops/s)",
        tally.ops(),
        fmt_rate(total.ops_per_sec),
        total.ops_per_sec
    )?;
    writeln!(
        out,
        "{:<6} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "op", "count", "ops/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us"
    )?;
    let rows = per_op
        .iter()
        .map(|(n, f)| (*n, f))
        .chain(std::iter::once(("all", &total)));
    for (name, f) in rows {
        writeln!(
            out,
            "{:<6} {:>10} {:>12.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>10.3}",
            name, f.count, f.ops_per_sec, f.p50_us, f.p90_us, f.p99_us, f.p999_us, f.max_us
        )?;
    }
    writeln!(
        out,
        "errors {} (wrong answers {}, failed calls {})",
        tally.errors(),
        tally.wrong,
        tally.failed
    )
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

    fn sample() -> (BenchArgs, RegionInfo, Tally) {
        let args = Cli::parse_from(["bench", "--mix", "60:20:10:10", "--keys", "500"]).bench;
        let info = RegionInfo {
            workers: 2,
            ..bytemuck::Zeroable::zeroed()
        };
        let mut t = Tally::new();
        for ns in [1_000, 2_000, 3_000, 4_000] {
            t.record(Kind::Get, ns);
        }
        t.record(Kind::Del, 10_000);
        t.wrong = 1;
        t.seconds = 0.5;
        (args, info, t)
    }

    fn text(args: &BenchArgs, info: &RegionInfo, t: &Tally) -> String {
        let mut out = Vec::new();
        write_report(&mut out, "kvs", args, info, t).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rates_read_well() {
        assert_eq!(fmt_rate(0.0), "0 ops/s");
        assert_eq!(fmt_rate(999.4), "999 ops/s");
        assert_eq!(fmt_rate(73_152.0), "73.2 k ops/s");
        assert_eq!(fmt_rate(1_234_567.0), "1.23 M ops/s");
    }

    #[test]
    fn the_table() {
        let (args, info, t) = sample();
        let text = text(&args, &info, &t);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "kvs bench: region kvs, 1 client process x 1 thread, depth 1, batch 1, mix get:set:post:del 60:20:10:10, 500 keys uniform, 32-byte values, 2 workers on the server"
        );
        assert_eq!(lines[1], "5 ops in 0.500 s: 10 ops/s (10 ops/s)");
        assert_eq!(
            lines[2],
            "op          count        ops/s    p50 us    p90 us    p99 us  p99.9 us     max us"
        );
        assert!(
            lines[3].starts_with("del             1            2 "),
            "{}",
            lines[3]
        );
        assert!(
            lines[4].starts_with("get             4            8 "),
            "{}",
            lines[4]
        );
        assert!(
            lines[5].starts_with("all             5           10 "),
            "{}",
            lines[5]
        );
        assert_eq!(lines[6], "errors 1 (wrong answers 1, failed calls 0)");
        assert_eq!(lines.len(), 7);
    }

    #[test]
    fn the_json_object() {
        let (mut args, info, t) = sample();
        args.json = true;
        let text = text(&args, &info, &t);
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec![
            "region",
            "clients",
            "threads",
            "depth",
            "batch",
            "keys",
            "key_dist",
            "value_size",
            "mix",
            "server_workers",
            "ops",
            "seconds",
            "ops_per_sec",
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
            "errors",
            "wrong_answers",
            "failed_calls",
            "per_op",
        ];
        want.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(v["ops"], 5);
        assert_eq!(v["errors"], 1);
        assert_eq!(v["mix"]["get"], 60);
        assert_eq!(v["per_op"]["get"]["count"], 4);
        assert!(v["per_op"].get("set").is_none());
    }
}
