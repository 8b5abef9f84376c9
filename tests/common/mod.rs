//! Shared support for the multi-process tests: unique region names, a
//! `kvs_server` child that is killed (and its region checked) on drop, a
//! `kvs_client` runner, and re-running this test binary as a child process.
#![allow(dead_code, unreachable_pub)]

pub mod gateway;

use kvs::core::fixed_str::Value256;
use kvs::core::text::TextKey;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A region name no other test (or test run) uses.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "kvs-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The socket directory servers of this user use by default.
pub fn socket_dir() -> PathBuf {
    kvs::core::region::endpoint::server_dir(None)
}

/// `DIR/NAME.sock`: the socket of region NAME.
pub fn socket_path(name: &str) -> PathBuf {
    socket_dir().join(format!("{}.sock", name.trim_start_matches('/')))
}

/// `DIR/NAME.lock`: the lock file of region NAME.
pub fn lock_path(name: &str) -> PathBuf {
    socket_dir().join(format!("{}.lock", name.trim_start_matches('/')))
}

/// Path of the `kvs_server` binary under test.
pub fn server_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvs_server")
}

/// Path of the `kvs_client` binary under test.
pub fn client_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvs_client")
}

/// A running `kvs_server`; killed on drop, and its files removed if left.
pub struct ServerGuard {
    pub name: String,
    pub child: Option<Child>,
    pub ready_line: String,
}

impl ServerGuard {
    /// Starts `kvs_server --name NAME ARGS...` and waits (10 s at most) for
    /// its ready line.
    pub fn start(name: &str, args: &[&str]) -> Self {
        let mut child = Command::new(server_bin())
            .arg("--name")
            .arg(name)
            .args(args)
            .env_remove("KVS_NAME")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kvs_server");
        let line = first_line(&mut child, Duration::from_secs(10));
        let mut guard = ServerGuard {
            name: name.to_string(),
            child: Some(child),
            ready_line: String::new(),
        };
        match line {
            Some(line) if line.contains("ready") => guard.ready_line = line,
            other => panic!("kvs_server did not become ready: {other:?}"),
        }
        guard
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends `sig` and waits (10 s at most) for the exit status.
    pub fn signal_and_wait(&mut self, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server already stopped");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        wait_with_deadline(&mut child, Duration::from_secs(10)).expect("kvs_server did not exit")
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        discard_keeper(&self.name);
        let _ = std::fs::remove_file(socket_path(&self.name));
        let _ = std::fs::remove_file(lock_path(&self.name));
    }
}

/// Lets go of the store a keeper may still hold for region `name` (a
/// server killed by a test leaves its keeper holding the store for a warm
/// restart).
pub fn discard_keeper(name: &str) {
    let _ = kvs::server::keeper::discard_orphan(name, &socket_dir());
}

/// `DIR/NAME.keeper`: the socket of region NAME's keeper.
pub fn keeper_path(name: &str) -> PathBuf {
    socket_dir().join(format!("{}.keeper", name.trim_start_matches('/')))
}

/// The first line a child prints on its (piped) stdout, waiting at most
/// `limit`; the rest of its output is drained in the background so the child
/// never blocks on a full pipe.
pub fn first_line(child: &mut Child, limit: Duration) -> Option<String> {
    let stdout = child.stdout.take().expect("stdout must be piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    rx.recv_timeout(limit).ok()
}

/// A text key (panics if too long: test input).
pub fn key(s: &str) -> TextKey {
    TextKey::new(s).unwrap()
}

/// A text value of the default class (panics if too long: test input).
pub fn val(s: &str) -> Value256 {
    Value256::new(s).unwrap()
}

/// The region of `name` mapped through a probe (no registration taken),
/// for tests that look at its counters.
pub fn probe(name: &str) -> kvs::core::Region {
    let session = kvs::core::region::Session::connect(
        name,
        kvs::core::region::handshake::Kind::Probe,
        &kvs::core::region::ConnectOptions::default(),
    )
    .unwrap();
    kvs::core::Region::attach(session).unwrap()
}

/// A finished command's stdout, lossy.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A finished command's stderr, lossy.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `kvs_client status --json`, parsed; fails the test if it fails.
pub fn status_json(name: &str) -> serde_json::Value {
    let o = kvs_client(name, &["status", "--json"]);
    assert_eq!(o.status.code(), Some(0), "status failed: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

/// Waits for a child with a deadline; kills it if the deadline passes.
pub fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The command prefix that runs a program as user `nobody` (`setpriv`
/// with its uid and gid, no supplementary groups), or `None`, with a
/// message saying why, where that cannot be done here (not root, no
/// `nobody` user, no `setpriv`).
pub fn as_nobody() -> Option<Vec<String>> {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: acting as another user needs root (to become nobody)");
        return None;
    }
    let Ok(Some(user)) = nix::unistd::User::from_name("nobody") else {
        eprintln!("skipped: there is no user nobody here");
        return None;
    };
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: setpriv is not installed");
        return None;
    }
    Some(vec![
        "setpriv".into(),
        format!("--reuid={}", user.uid),
        format!("--regid={}", user.gid),
        "--clear-groups".into(),
    ])
}

/// Runs `kvs_client --name NAME ARGS` as user `nobody`; `None` when this
/// cannot be done here (see [`as_nobody`]).
pub fn kvs_client_as_nobody(name: &str, args: &[&str]) -> Option<Output> {
    let prefix = as_nobody()?;
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let out = output_within(kvs_client_command(&prefix, name, args)).expect("spawn setpriv");
    if matches!(out.status.code(), Some(126) | Some(127)) {
        eprintln!("skipped: nobody cannot run {}: {out:?}", client_bin());
        return None;
    }
    Some(out)
}

/// `kvs_client --name NAME ARGS...` (after `prefix`, a wrapper such as
/// `setpriv ...`), with `KVS_NAME` removed and output captured.
pub fn kvs_client_command<S: AsRef<std::ffi::OsStr>>(
    prefix: &[&str],
    name: &str,
    args: &[S],
) -> Command {
    let mut cmd = match prefix.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(client_bin());
            c
        }
        None => Command::new(client_bin()),
    };
    cmd.arg("--name")
        .arg(name)
        .args(args)
        .env_remove("KVS_NAME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs a command to completion (30 s at most, else it is killed and the
/// test fails). Its output is read while it runs, so a child that writes
/// more than a pipe holds never blocks.
pub fn output_within(mut cmd: Command) -> std::io::Result<Output> {
    use std::io::Read;
    let mut child = cmd.spawn()?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = wait_with_deadline(&mut child, Duration::from_secs(30)).expect("command hung");
    Ok(Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    })
}

/// Runs `kvs_client --name NAME ARGS...` to completion (30 s at most).
pub fn kvs_client<S: AsRef<std::ffi::OsStr>>(name: &str, args: &[S]) -> Output {
    output_within(kvs_client_command(&[], name, args)).expect("spawn kvs_client")
}

/// Children spawned by [`spawn_self`]; killed on drop.
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Re-runs this test binary as a child process that executes only the test
/// `entry`, an `#[ignore]`d test (which must check
/// `std::env::var("KVS_CHILD_ROLE")` and act on it), with the given
/// environment.
pub fn spawn_self(entry: &str, envs: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        entry,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child test process")
}
