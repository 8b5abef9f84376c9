//! The client processes of a multi-process run: this binary re-executed
//! with a hidden `--child INDEX` flag ([`child_command`]), started
//! together and gathered by the parent ([`run_children`]); in the child,
//! [`run_child`]. They talk over pipes in the line protocol of
//! [`crate::wire`].

use super::threads::run_threads;
use super::Plan;
use crate::error::BenchError;
use crate::progress::Progress;
use crate::tally::Tally;
use crate::wire::{is_go, read_child, ChildEvent, ChildLine, WireTally, GO};
use crate::workload::BenchValue;
use std::io::{BufRead, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a child reports its count.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// A child process: report `ready`, wait for the go line, run, report.
pub(crate) fn run_child<V: BenchValue>(plan: &Plan, index: u32) -> Result<(), BenchError> {
    let done = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = |out: &Mutex<std::io::Stdout>, line: &ChildLine| {
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
                std::thread::sleep(PROGRESS_EVERY);
                say(&out, &ChildLine::Progress(done.load(Ordering::Relaxed)));
            }
        })
    };
    let tally = run_threads::<V>(plan, index, &done, || {
        say(&out, &ChildLine::Ready);
        let mut line = String::new();
        match std::io::stdin().lock().read_line(&mut line) {
            Ok(n) if n > 0 && is_go(&line) => Ok(()),
            _ => Err(BenchError::ParentGone),
        }
    });
    finished.store(true, Ordering::Relaxed);
    let _ = reporter.join();
    let tally = tally?;
    say(&out, &ChildLine::Result(Box::new(WireTally::from(&tally))));
    Ok(())
}

/// Kills and reaps the children that are still running when dropped.
#[derive(Debug)]
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

/// The command line of client process `index`: the run's arguments, its
/// key prefix and `--child INDEX`, with stdin and stdout piped. The child
/// dies with its parent.
fn child_command(plan: &Plan, index: u32) -> Result<Command, BenchError> {
    let exe = std::env::current_exe().map_err(BenchError::CurrentExe)?;
    let a = &plan.args;
    let mut cmd = Command::new(exe);
    cmd.arg("--name")
        .arg(&plan.name)
        .arg("--timeout-ms")
        .arg(plan.options.timeout.as_millis().to_string())
        .arg("bench")
        .args(["--clients", &a.clients.to_string()])
        .args(["--threads", &a.threads.to_string()])
        .args(["--mix", &a.mix.to_string()])
        .args(["--keys", &a.keys.to_string()])
        .args(["--key-dist", a.key_dist.name()])
        .args(["--zipf-exponent", &a.zipf_exponent.to_string()])
        .args(["--value-size", &a.value_size.to_string()])
        .args(["--depth", &a.depth.to_string()])
        .args(["--batch", &a.batch.to_string()])
        .args(["--seed", &a.seed.to_string()])
        .args(["--run-id", &plan.run_id.to_string()])
        .args(["--child", &index.to_string()]);
    if a.remove_keys {
        cmd.arg("--remove-keys");
    }
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

/// Runs the client processes: starts them all, says `go` when all are
/// ready, sums their progress, and merges their results.
pub(crate) fn run_children(plan: &Plan, progress: &Progress) -> Result<Tally, BenchError> {
    let mut children = Children(Vec::new());
    let (tx, rx) = std::sync::mpsc::channel::<(usize, ChildEvent)>();
    let mut readers = Vec::new();
    for index in 0..plan.args.clients {
        let mut child = child_command(plan, index)?
            .spawn()
            .map_err(|source| BenchError::Spawn { index, source })?;
        let stdout = child.stdout.take();
        children.0.push(child);
        let tx = tx.clone();
        let i = index as usize;
        readers.push(std::thread::spawn(move || match stdout {
            Some(stdout) => read_child(stdout, |event| tx.send((i, event)).is_ok()),
            None => {
                let _ = tx.send((i, ChildEvent::Gone));
            }
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
        let Ok((i, event)) = rx.recv() else { break };
        match event {
            ChildEvent::Said(ChildLine::Ready) => {
                ready += 1;
                if ready == n {
                    progress.start();
                    for c in &mut children.0 {
                        if let Some(stdin) = c.stdin.as_mut() {
                            let _ = writeln!(stdin, "{GO}");
                            let _ = stdin.flush();
                        }
                    }
                    started = true;
                }
            }
            ChildEvent::Said(ChildLine::Progress(count)) => {
                counts[i] = count;
                progress
                    .done()
                    .store(counts.iter().sum(), Ordering::Relaxed);
            }
            ChildEvent::Said(ChildLine::Result(w)) => results[i] = Some(Tally::from(&*w)),
            ChildEvent::Gone => {
                gone += 1;
                if results[i].is_none() {
                    return Err(BenchError::ChildNoResult { index: i, started });
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
