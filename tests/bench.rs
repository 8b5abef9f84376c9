//! `kvs_client bench` as a tool that meets real trouble: the server dying
//! under it, another run at the same time, and being killed itself.

mod common;

use common::*;
use nix::sys::signal::Signal;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The children of process `pid` (from `/proc/PID/task/*/children`).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    // A zombie has no threads left to hammer anything; count it gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// A server that dies under a running bench: the bench stops at the first
/// `ServerGone` and exits 2 with one line saying so, instead of failing
/// every call until its duration runs out.
#[test]
fn bench_stops_at_the_first_server_gone() {
    let name = unique_name("bench-gone");
    let mut server = ServerGuard::start(&name, &[]);
    let mut cmd = kvs_client_command(
        &[],
        &name,
        &[
            "bench",
            "--duration",
            "30",
            "--threads",
            "2",
            "--no-progress",
        ],
    );
    let mut bench = Children(vec![cmd.spawn().unwrap()]);
    std::thread::sleep(Duration::from_millis(700));
    let killed = Instant::now();
    let _ = server.signal_and_wait(Signal::SIGKILL);
    let status = wait_with_deadline(&mut bench.0[0], Duration::from_secs(10))
        .expect("the bench kept running after the server died");
    let took = killed.elapsed();
    let out = bench.0.remove(0).wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("server is gone"), "{err}");
    assert!(
        took < Duration::from_secs(5),
        "stopped {took:?} after the kill"
    );
    let gone_lines = err.lines().filter(|l| l.contains("failed")).count();
    assert!(gone_lines <= 1, "a line per failed call: {err}");
}

/// Two runs at once use their own keys: neither sees the other's writes as
/// wrong answers.
#[test]
fn two_bench_runs_at_once_never_see_each_other() {
    let name = unique_name("bench-two");
    let _server = ServerGuard::start(&name, &[]);
    let run = || {
        let mut cmd = kvs_client_command(
            &[],
            &name,
            &[
                "bench",
                "--ops",
                "20000",
                "--threads",
                "2",
                "--keys",
                "200",
                "--mix",
                "40:30:15:15",
                "--depth",
                "4",
                "--no-progress",
                "--json",
            ],
        );
        cmd.spawn().unwrap()
    };
    let mut runs = Children(vec![run(), run()]);
    for (i, child) in runs.0.drain(..).enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "run {i}: {}", stderr(&out));
        let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        assert_eq!(report["wrong_answers"], 0, "run {i}: {report}");
    }
}

/// A bench killed with SIGKILL takes its client processes with it: none is
/// left hammering the server.
#[test]
fn a_killed_bench_takes_its_client_processes_with_it() {
    let name = unique_name("bench-kill");
    let _server = ServerGuard::start(&name, &[]);
    let mut cmd = kvs_client_command(
        &[],
        &name,
        &[
            "bench",
            "--clients",
            "3",
            "--duration",
            "60",
            "--no-progress",
        ],
    );
    cmd.stderr(Stdio::null());
    let mut bench = Children(vec![cmd.spawn().unwrap()]);
    let pid = bench.0[0].id();
    let mut kids = Vec::new();
    let start = Instant::now();
    while kids.len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "children: {kids:?}"
        );
        kids = children_of(pid);
        std::thread::sleep(Duration::from_millis(20));
    }
    bench.0[0].kill().unwrap();
    let _ = bench.0[0].wait();
    let start = Instant::now();
    while kids.iter().any(|k| alive(*k)) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "client processes outlived their bench: {:?}",
            kids.iter().filter(|k| alive(**k)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A bench leaves its keys in the store unless `--remove-keys` is given,
/// which deletes them all after the run, from every client process.
#[test]
fn remove_keys_leaves_the_store_as_it_was() {
    let name = unique_name("bench-remove");
    let _server = ServerGuard::start(&name, &[]);
    assert!(kvs_client(&name, &["set", "mine", "stays"])
        .status
        .success());
    let entries = || {
        let out = kvs_client(&name, &["status", "--json"]);
        let status: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        status["entries"].as_u64().unwrap()
    };
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "--ops",
            "3000",
            "--clients",
            "2",
            "--threads",
            "2",
            "--keys",
            "400",
            "--mix",
            "50:50:0:0",
            "--no-progress",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = kvs_client(&name, &args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    };
    bench(&["--remove-keys"]);
    assert_eq!(entries(), 1);
    bench(&[]);
    assert_eq!(entries(), 401);
    let out = kvs_client(&name, &["bench", "--help"]);
    assert!(stdout(&out).contains("--remove-keys"), "{}", stdout(&out));
}
