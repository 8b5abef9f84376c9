//! Running the load: the [`Plan`] every thread follows, the worker threads
//! of one process ([`threads`]), and the client processes of a
//! multi-process run ([`children`]).

pub(crate) mod children;
pub(crate) mod threads;

use crate::args::BenchArgs;
use crate::error::BenchError;
use crate::progress::Progress;
use crate::tally::Tally;
use crate::workload::BenchValue;
use kvs_client::ClientOptions;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// How much work each thread does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Budget {
    Ops(u64),
    Until(Duration),
}

/// Everything a worker thread needs to know.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) name: String,
    pub(crate) options: ClientOptions,
    pub(crate) args: BenchArgs,
    pub(crate) keys_per_thread: u64,
    /// This run's key prefix (`bench:RUN:THREAD:I`), so that runs at once
    /// never share keys.
    pub(crate) run_id: u32,
    /// Set at the first `ServerGone`: every thread stops.
    pub(crate) gone: Arc<AtomicBool>,
}

impl Plan {
    /// The share of thread `global` (its index over all processes): its
    /// part of `--ops` (spread as evenly as can be), or `--duration`.
    pub(crate) fn budget(&self, global_thread: u64) -> Budget {
        match (self.args.duration, self.args.total_ops()) {
            (Some(s), _) => Budget::Until(Duration::from_secs_f64(s.max(0.0))),
            (None, ops) => {
                let ops = ops.unwrap_or_default();
                let all_threads = self.args.all_threads();
                let base = ops / all_threads;
                Budget::Ops(base + u64::from(global_thread < ops % all_threads))
            }
        }
    }
}

/// A run of one process: its threads, started as soon as they are ready.
pub(crate) fn run_in_process<V: BenchValue>(
    plan: &Plan,
    progress: &Progress,
) -> Result<Tally, BenchError> {
    threads::run_threads::<V>(plan, 0, progress.done(), || {
        progress.start();
        Ok(())
    })
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

    fn plan(args: &[&str]) -> Plan {
        let args = Cli::parse_from(std::iter::once("bench").chain(args.iter().copied())).bench;
        Plan {
            name: "kvs".into(),
            options: ClientOptions::default(),
            args,
            keys_per_thread: 10,
            run_id: 1,
            gone: Arc::default(),
        }
    }

    #[test]
    fn ops_are_shared_out_evenly() {
        let p = plan(&["--ops", "10", "--clients", "2", "--threads", "2"]);
        let shares: Vec<Budget> = (0..4).map(|t| p.budget(t)).collect();
        assert_eq!(
            shares,
            [
                Budget::Ops(3),
                Budget::Ops(3),
                Budget::Ops(2),
                Budget::Ops(2)
            ]
        );
        let p = plan(&["--threads", "3"]);
        let sum: u64 = (0..3)
            .map(|t| match p.budget(t) {
                Budget::Ops(n) => n,
                Budget::Until(_) => 0,
            })
            .sum();
        assert_eq!(sum, crate::DEFAULT_OPS);
    }

    #[test]
    fn a_duration_is_everyones() {
        let p = plan(&["--duration", "1.5", "--threads", "2"]);
        assert_eq!(p.budget(1), Budget::Until(Duration::from_millis(1500)));
    }
}
