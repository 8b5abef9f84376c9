//! Hostile command lines: every binary, given numbers out of range (huge,
//! negative, not finite), malformed values, impossible combinations or bad
//! names, refuses with exit 2 and exactly one line on stderr: never a panic,
//! a hang, or a multi-line report.

mod common;

use common::gateway::http_bin;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs `program args`, bounded; returns (exit code, stderr).
fn run(program: &str, args: &[String], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove("KVS_NAME")
        .env_remove("KVS_SOCKET_DIR")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let status = wait_with_deadline(&mut child, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("{program} {args:?} hung"));
    let out = child.wait_with_output().unwrap();
    (
        status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check(program: &str, args: &[String], env: &[(&str, &str)]) {
    let (code, err) = run(program, args, env);
    let short = program.rsplit('/').next().unwrap_or(program);
    assert!(
        !err.contains("panicked"),
        "{short} {args:?} panicked: {err}"
    );
    assert_eq!(code, Some(2), "{short} {args:?}: {err}");
    assert_eq!(
        err.lines().count(),
        1,
        "{short} {args:?}: not one line: {err:?}"
    );
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn kvs_server_refuses_hostile_arguments_in_one_line() {
    let long = "n".repeat(300);
    let cases: Vec<Vec<&str>> = vec![
        vec!["--workers", "0"],
        vec!["--workers", "99999999999999999999"],
        vec!["--stripes", "3"],
        vec!["--stripes", "18446744073709551616"],
        vec!["--queue-capacity", "0"],
        vec!["--queue-capacity", "1000"],
        vec!["--slots", "0"],
        vec!["--slots", "99999999"],
        vec!["--max-clients", "0"],
        vec!["--mode", "777"],
        vec!["--mode", "-1"],
        vec!["--mode", "644"],
        vec!["--mode", "60000000000000000000"],
        // Gone: values are bytes of any length up to --max-value-size.
        vec!["--value-size", "5000"],
        vec!["--max-key-size", "0"],
        vec!["--max-key-size", "1T"],
        vec!["--max-key-size", "12Q"],
        vec!["--max-value-size", "2G"],
        vec!["--max-value-size", "-1"],
        vec!["--max-memory", "0"],
        vec!["--max-memory", "99999T"],
        vec!["--max-memory", "18446744073709551616"],
        vec!["--staging-buffers", "0"],
        vec!["--staging-buffers", "1000"],
        // Valid alone, too large together: 64 buffers of 1 GiB values.
        vec!["--max-value-size", "1G", "--staging-buffers", "64"],
        vec!["--max-entries", "-1"],
        // 0 used to mean "no limit" without a word.
        vec!["--max-entries", "0"],
        vec!["--subscribers", "100000"],
        vec!["--subscriber-queue", "3"],
        // Each valid alone, too large together (hundreds of GiB).
        vec!["--subscribers", "1024", "--subscriber-queue", "1048576"],
        vec!["--load", "/nonexistent/snap"],
        vec!["--backup-dir", "/nonexistent/dir"],
        vec!["--save-on-exit", "/nonexistent/dir/snap"],
        // A directory where the file would go, and a directory that takes
        // no new file: refused at start, not at the stop.
        vec!["--save-on-exit", "/tmp"],
        vec!["--save-on-exit", "/proc/kvs.snap"],
        vec!["--socket-dir", "/proc/no-such-dir"],
        vec!["--frobnicate"],
        vec!["--workers"],
    ];
    for case in &cases {
        let name = unique_name("args");
        let mut args = strings(&["--name", &name]);
        args.extend(strings(case));
        check(server_bin(), &args, &[]);
        // A failed start leaves nothing behind.
        assert!(
            !socket_path(&name).exists()
                && !lock_path(&name).exists()
                && !keeper_path(&name).exists(),
            "{case:?} left files behind"
        );
    }
    for bad in ["a/b", "x\ny", ".hidden", "", long.as_str(), "\u{1b}[31mred"] {
        check(server_bin(), &strings(&["--name", bad]), &[]);
    }
}

#[test]
fn kvs_client_refuses_hostile_arguments_in_one_line() {
    let name = unique_name("args-client");
    let _server = ServerGuard::start(&name, &["--max-key-size", "63", "--max-value-size", "255"]);
    let long_key = "k".repeat(64);
    let long_value = "v".repeat(300);
    let long_prefix = "p".repeat(100);
    let cases: Vec<Vec<&str>> = vec![
        vec!["--timeout-ms", "18446744073709551615", "get", "k"],
        vec!["--timeout-ms", "-1", "get", "k"],
        vec!["--timeout-ms", "1e9", "get", "k"],
        vec!["bench", "--duration", "1e20"],
        vec!["bench", "--duration", "NaN"],
        vec!["bench", "--duration", "inf"],
        vec!["bench", "--duration", "-3"],
        vec!["bench", "--duration", "0"],
        vec!["bench", "--ops", "0"],
        vec!["bench", "--ops", "99999999999999999999999"],
        vec!["bench", "--keys", "0"],
        vec!["bench", "--keys", "99999999999"],
        vec!["bench", "--key-dist", "zipf", "--zipf-exponent", "NaN"],
        vec!["bench", "--key-dist", "zipf", "--zipf-exponent", "1e300"],
        vec!["bench", "--key-dist", "zipf", "--zipf-exponent", "-1"],
        vec!["bench", "--depth", "0"],
        vec!["bench", "--depth", "1000000"],
        vec!["bench", "--clients", "1000"],
        vec!["bench", "--threads", "0"],
        vec!["bench", "--mix", "0:0:0:0"],
        vec!["bench", "--mix", "a:b"],
        vec!["bench", "--value-size", "99999999999999999999"],
        vec!["bench", "--value-size", "100000"],
        vec!["set", "k", "--file", "/nonexistent/value"],
        vec!["set", "k", "--file", "/etc"],
        vec!["set", "k", "v", "--file", "/etc/hostname"],
        vec!["bench", "--keys", "10", "--depth", "100"],
        vec!["list", "--prefix", &long_prefix],
        vec!["backup", "../escape.snap"],
        vec!["backup", "/etc/passwd"],
        vec!["run", "/nonexistent.job"],
        vec!["watch", &long_key],
        vec!["set", "k", &long_value],
        vec!["get", &long_key],
        vec!["frobnicate"],
    ];
    for case in &cases {
        let mut args = strings(&["--name", &name]);
        args.extend(strings(case));
        check(client_bin(), &args, &[]);
    }
    for bad in ["a/b", "x\ny", ""] {
        check(client_bin(), &strings(&["--name", bad, "get", "k"]), &[]);
    }
}

#[test]
fn kvs_http_refuses_hostile_arguments_in_one_line() {
    let cases: Vec<Vec<&str>> = vec![
        vec!["--listen", "nonsense"],
        vec!["--listen", "1.2.3.4:99999"],
        vec!["--max-connections", "0"],
        vec!["--max-connections", "99999999999999"],
        vec!["--idle-timeout", "0"],
        vec!["--idle-timeout", "-5"],
        vec!["--token", ""],
        vec!["--name", "a/b"],
        vec!["--name", "x\ny"],
        vec!["--frobnicate"],
    ];
    for case in &cases {
        let mut args = strings(case);
        if !case.contains(&"--listen") {
            args.extend(strings(&["--listen", "127.0.0.1:0"]));
        }
        check(http_bin(), &args, &[]);
    }
}

/// `-h` opens with what the program does (its own description, not the
/// crate's), and a subcommand's error points to that subcommand's help.
#[test]
fn help_says_what_each_program_does() {
    for (program, opening) in [
        (server_bin(), "Serve a kvs key-value store"),
        (client_bin(), "Talk to a running kvs_server"),
        (
            common::gateway::http_bin(),
            "A REST gateway and a live web page",
        ),
    ] {
        let out = std::process::Command::new(program)
            .arg("-h")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with(opening), "{program} -h: {text}");
        assert!(!text.contains("command lines"), "{program} -h: {text}");
    }
    let out = std::process::Command::new(client_bin())
        .args(["get"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.trim_end().ends_with("(see kvs_client get --help)"),
        "{err}"
    );
    let out = std::process::Command::new(client_bin())
        .args(["bench", "--ops", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.trim_end().ends_with("(see kvs_client bench --help)"),
        "{err}"
    );
    let out = std::process::Command::new(client_bin())
        .args(["bench", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(!help.contains("kvs_client bench --help"), "{help}");
}
