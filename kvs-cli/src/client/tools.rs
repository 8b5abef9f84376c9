//! The `kvs_client` commands beyond single-key operations: list, backup,
//! run (job files) and watch (subscriptions).

use super::args::{connect, key_arg, Args};
use crate::jobs::{collect_jobs, run_job};
use crate::support::Failure;
use kvs_client::ChangeEvent;
use kvs_core::text::escape_bytes_for_display as escape_for_display;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

/// `kvs_client list`.
pub(crate) fn list(
    args: &Args,
    prefix: &OsString,
    json: bool,
    header: bool,
) -> Result<(), Failure> {
    let client = connect(args)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if header && !json && writeln!(out, "KEY\tVALUE\tVERSION\tMODIFIED\tEXPIRES").is_err() {
        return Ok(());
    }
    let mut n = 0usize;
    for entry in client.list(prefix.as_bytes()) {
        let e = entry?;
        n += 1;
        let line = if json {
            let entry = kvs_client::Versioned {
                value: e.value,
                version: e.version,
                modified_ns: e.modified_ns,
                deadline_ns: e.deadline_ns,
            };
            super::commands::entry_json(&e.key, &entry).to_string()
        } else {
            // Escaped: a stored tab, newline or escape sequence neither
            // breaks the row nor drives the terminal.
            let expires = match e.deadline_ns {
                0 => "-".to_string(),
                ns => format_time(ns),
            };
            format!(
                "{}\t{}\t{}\t{}\t{expires}",
                escape_for_display(&e.key),
                escape_for_display(&e.value),
                e.version,
                format_time(e.modified_ns)
            )
        };
        if writeln!(out, "{line}").is_err() {
            return Ok(()); // stdout closed (a pager quit): not an error
        }
    }
    let _ = out.flush();
    if !json {
        eprintln!("{}", kvs_core::text::counted(n as u64, "entry", "entries"));
    }
    Ok(())
}

/// RFC 3339 UTC time, to the millisecond, from unix nanoseconds.
pub(crate) fn format_time(ns: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
    humantime::format_rfc3339_millis(at).to_string()
}

/// `kvs_client backup`.
pub(crate) fn backup(args: &Args, file: Option<&str>) -> Result<(), Failure> {
    let file = file.map(str::to_string).unwrap_or_else(|| {
        let secs = kvs_core::unix_now_ns() / 1_000_000_000;
        format!("{}-{secs}.snap", args.name.trim_start_matches('/'))
    });
    kvs_core::secure_fs::check_file_name(&file).map_err(Failure::error)?;
    let client = connect(args)?;
    let info = client.backup(&file)?;
    println!(
        "wrote {} ({}, version {}, {} bytes)",
        info.path.display(),
        kvs_core::text::counted(info.entries, "entry", "entries"),
        info.version,
        info.bytes
    );
    Ok(())
}

/// `kvs_client run`.
pub(crate) fn run_jobs(args: &Args, paths: &[PathBuf], jobs: usize) -> Result<(), Failure> {
    let files = collect_jobs(paths).map_err(|e| Failure::error(e.to_string()))?;
    if files.is_empty() {
        return Err(Failure::error(
            "no job files found (directories are searched for *.job)",
        ));
    }
    let client = connect(args)?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    let troubled = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs.min(files.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(file) = files.get(i) else { return };
                match run_job(&client, file) {
                    Ok(report) => {
                        let mut notes = Vec::new();
                        if report.errors > 0 {
                            notes.push(format!("{} lines in error", report.errors));
                        }
                        if report.failed_ops > 0 {
                            notes.push(format!("{} failed operations", report.failed_ops));
                        }
                        if !notes.is_empty() {
                            troubled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        println!(
                            "{} -> {}{}",
                            report.job.display(),
                            report.out.display(),
                            if notes.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", notes.join(", "))
                            }
                        );
                    }
                    Err(e) => failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("{}: {e}", file.display())),
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(first) = failures.first() {
        return Err(Failure::error(first.clone()));
    }
    match troubled.into_inner() {
        0 => Ok(()),
        n => Err(Failure::miss(format!(
            "{n} of {} job files had lines in error or failed operations (see their .out files)",
            files.len()
        ))),
    }
}

/// `kvs_client watch`.
/// SIGINT, SIGTERM or SIGHUP arrived (see [`stop_on_signals`]).
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes SIGINT, SIGTERM and SIGHUP end `watch` cleanly, whatever their
/// inherited disposition: a watcher started in the background of a script
/// inherits SIGINT ignored, and would otherwise outlive `kill -INT`. The
/// signals are blocked (in this thread, before any other exists, so in
/// every thread) and a thread waits for them: on Linux a blocked signal
/// stays pending even where it is ignored, so `sigwait` receives it.
fn stop_on_signals() -> Result<(), Failure> {
    use nix::sys::signal::{SigSet, Signal};
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    signals
        .thread_block()
        .map_err(|e| Failure::error(format!("blocking signals: {e}")))?;
    std::thread::Builder::new()
        .name("kvs-watch-signals".into())
        .spawn(move || {
            if signals.wait().is_ok() {
                STOP.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .map_err(|e| Failure::error(format!("starting the signal thread: {e}")))?;
    Ok(())
}

pub(crate) fn watch(args: &Args, keys: &[OsString]) -> Result<(), Failure> {
    let keys = keys
        .iter()
        .map(key_arg)
        .collect::<Result<Vec<Vec<u8>>, _>>()?;
    stop_on_signals()?;
    let client = std::sync::Arc::new(connect(args)?);
    let mut sub = client.subscribe(&keys)?;
    eprintln!(
        "watching {} of region {} (Ctrl+C to stop)",
        if keys.is_empty() {
            "every key".to_string()
        } else {
            kvs_core::text::counted(keys.len() as u64, "key", "keys")
        },
        args.name
    );
    let mut out = std::io::stdout().lock();
    loop {
        // Relaxed: a flag; the next round (200 ms at most) sees it.
        if STOP.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let line = match sub.next_timeout(Duration::from_millis(200))? {
            None => continue,
            Some(ChangeEvent::Changed {
                key,
                value,
                version,
                ..
            }) => {
                format!(
                    "set {} {} (version {version})",
                    escape_for_display(&key),
                    escape_for_display(&value)
                )
            }
            Some(ChangeEvent::Deleted { key, version }) => {
                format!("del {} (version {version})", escape_for_display(&key))
            }
            Some(ChangeEvent::Expired { key, version }) => {
                format!("expired {} (version {version})", escape_for_display(&key))
            }
            Some(ChangeEvent::Evicted { key, version }) => {
                format!("evicted {} (version {version})", escape_for_display(&key))
            }
            Some(ChangeEvent::Missed) => "missed events: the queue overflowed, resync".to_string(),
        };
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_times_in_utc() {
        assert_eq!(super::format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::format_time(1_700_000_000_123_000_000),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
