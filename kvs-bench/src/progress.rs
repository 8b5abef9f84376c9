//! The progress bar on stderr (an [`indicatif`] bar, drawn only when stderr
//! is a terminal and `--no-progress` is not given): percent done (of the
//! operations, or of the duration), operations answered so far, and the
//! average rate since the start. It is cleared when the run ends.

use crate::args::BenchArgs;
use crate::report::fmt_rate;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the bar is brought up to date.
const TICK: Duration = Duration::from_millis(200);

/// What 100% is.
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// This many operations (the bar counts operations).
    Ops(u64),
    /// This long (the bar counts milliseconds).
    Time(Duration),
}

/// The run's progress: the count of operations answered, which the
/// runners add to, and the bar that shows it.
#[derive(Debug)]
pub(crate) struct Progress {
    /// Operations answered so far, over all threads and processes.
    done: Arc<AtomicU64>,
    bar: ProgressBar,
    goal: Goal,
    /// The thread that moves the bar, and its stop flag.
    ticker: Mutex<Option<(JoinHandle<()>, Arc<AtomicBool>)>>,
}

impl Progress {
    pub(crate) fn new(args: &BenchArgs) -> Self {
        let goal = match (args.total_ops(), args.duration) {
            (Some(ops), _) => Goal::Ops(ops),
            (None, d) => Goal::Time(Duration::from_secs_f64(d.unwrap_or(0.0))),
        };
        let done = Arc::new(AtomicU64::new(0));
        let enabled = !args.no_progress && std::io::stderr().is_terminal();
        let bar = if enabled {
            let len = match goal {
                Goal::Ops(n) => n,
                Goal::Time(d) => d.as_millis() as u64,
            };
            ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
                .with_style(style(Arc::clone(&done)))
        } else {
            ProgressBar::hidden()
        };
        Self {
            done,
            bar,
            goal,
            ticker: Mutex::new(None),
        }
    }

    /// The count the runners add answered operations to.
    pub(crate) fn done(&self) -> &AtomicU64 {
        &self.done
    }

    /// The clock starts: draw from now on.
    pub(crate) fn start(&self) {
        if self.bar.is_hidden() {
            return;
        }
        let started = Instant::now();
        self.bar.reset_elapsed();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (bar, done, goal, stop) = (
                self.bar.clone(),
                Arc::clone(&self.done),
                self.goal,
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    bar.set_position(match goal {
                        Goal::Ops(_) => done.load(Ordering::Relaxed),
                        Goal::Time(_) => started.elapsed().as_millis() as u64,
                    });
                }
            })
        };
        if let Ok(mut t) = self.ticker.lock() {
            *t = Some((handle, stop));
        }
    }

    /// The run is over: stop drawing and clear the bar.
    pub(crate) fn finish(&self) {
        let ticker = self.ticker.lock().ok().and_then(|mut t| t.take());
        if let Some((handle, stop)) = ticker {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
            self.bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `[#####-----]  45%  123456 ops  1.23 M ops/s`; the operations and the
/// rate come from `done`, whatever the bar counts.
fn style(done: Arc<AtomicU64>) -> ProgressStyle {
    let ops = {
        let done = Arc::clone(&done);
        move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{}", done.load(Ordering::Relaxed));
        }
    };
    let rate = move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
        let secs = state.elapsed().as_secs_f64().max(1e-9);
        let _ = w.write_str(&fmt_rate(done.load(Ordering::Relaxed) as f64 / secs));
    };
    ProgressStyle::with_template("[{bar:30}] {percent:>3}%  {ops} ops  {rate}")
        .expect("a valid progress template")
        .progress_chars("#-")
        .with_key("ops", ops)
        .with_key("rate", rate)
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

    #[test]
    fn no_bar_is_drawn_with_no_progress() {
        let args = Cli::parse_from(["bench", "--no-progress", "--ops", "10"]).bench;
        let p = Progress::new(&args);
        assert!(p.bar.is_hidden());
        p.start();
        p.done().fetch_add(10, Ordering::Relaxed);
        p.finish();
        assert_eq!(p.done().load(Ordering::Relaxed), 10);
        assert!(p.ticker.lock().unwrap().is_none());
    }
}
