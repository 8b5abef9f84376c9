//! Processes that die at any moment: clients SIGKILLed while they hammer the
//! server, a server SIGKILLed under a waiting client, a dead server's region
//! taken over by the next server, a live server's name refused, and a client
//! that connects while a region is still being initialised.
//!
//! Every server and client here is a real process (the `kvs_server` binary,
//! or this test binary re-run as a child, see `common::spawn_self`), and
//! every kill is a SIGKILL: nothing gets to clean up after itself.

mod common;

use common::*;
use kvs::core::fixed_str::Value256;

use kvs::core::response_table::SlotState;
use kvs::core::text::TextKey;
use kvs::{ClientError, ClientOptions, KVSClient, KVSServer};
use nix::sys::signal::Signal;
use rand::Rng;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Removes a region's files on drop (for regions no `ServerGuard` owns).
struct RegionFiles(String);

impl Drop for RegionFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(socket_path(&self.0));
        let _ = std::fs::remove_file(lock_path(&self.0));
    }
}

/// Entry point of the child processes of these tests (see `spawn_self`);
/// does nothing when run as an ordinary test.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var("KVS_CHILD_ROLE") else {
        return;
    };
    let name = std::env::var("KVS_TEST_REGION").unwrap();
    match role.as_str() {
        "hammer" => {
            let id: usize = std::env::var("KVS_CHILD_ID").unwrap().parse().unwrap();
            hammer(&name, id)
        }
        "paused-server" => paused_server(&name),
        "stalled-writer" => stalled_writer(&name),
        other => panic!("unknown role {other}"),
    }
}

/// Sets and reads back its own keys until killed, checking every answer.
/// Prints `HAMMERING` once it has had a first answer. Exits 3 on a wrong
/// answer, 4 on an error, 5 if nobody killed it within 60 s.
fn hammer(name: &str, id: usize) {
    let client = KVSClient::<TextKey, Value256>::connect(name).unwrap();
    let started = Instant::now();
    let mut out = std::io::stdout();
    for i in 0u64.. {
        let k = key(&format!("h{id}-k{}", i % 16));
        let v = format!("h{id}-v{i}");
        let checked = client.set(&k, &val(&v)).and_then(|()| client.get(&k));
        match checked {
            Ok(Some(got)) if got.to_str() == Ok(v.as_str()) => {}
            Ok(other) => {
                let _ = writeln!(out, "WRONG {k:?}: {other:?}, expected {v}");
                std::process::exit(3);
            }
            Err(e) => {
                let _ = writeln!(out, "ERROR {e}");
                std::process::exit(4);
            }
        }
        if i == 0 {
            let _ = writeln!(out, "HAMMERING");
            let _ = out.flush();
        }
        if started.elapsed() > Duration::from_secs(60) {
            std::process::exit(5);
        }
    }
}

/// Sets one key while `KVS_TEST_STOP_BEFORE_PUBLISH=1` stops this process
/// in the middle of its push; once resumed, checks the key and says `OK`.
fn stalled_writer(name: &str) {
    let client = KVSClient::<TextKey, Value256>::connect_with(
        name,
        ClientOptions {
            timeout: Duration::from_secs(30),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let k = key("stalled-key");
    let v = val("the stalled writer's value");
    client.set(&k, &v).unwrap();
    let got = client.get(&k).unwrap();
    let mut out = std::io::stdout();
    if got == Some(v) {
        let _ = writeln!(out, "OK");
    } else {
        let _ = writeln!(out, "WRONG {got:?}");
    }
    let _ = out.flush();
}

/// Whether process `pid` is stopped (state `T` in `/proc/PID/stat`).
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

/// The defect of the old ring: a producer that won its claim on a cell and
/// then stalled past the workers' skip timeout wrote its key or value into
/// the cell after another client's request had been published there, and
/// the worker stored one client's key with the other's value. Here a real
/// client process is stopped (SIGSTOP) in the middle of its push, while
/// other requests go round a 4-cell ring hundreds of times; resumed, it
/// publishes where it belongs, and every key holds exactly its own value.
#[test]
fn a_producer_stopped_mid_push_never_writes_into_a_reused_cell() {
    let name = unique_name("stalledpush");
    let _server = ServerGuard::start(&name, &["--queue-capacity", "4"]);
    let mut child = spawn_self(
        "child_entry",
        &[
            ("KVS_CHILD_ROLE", "stalled-writer".to_string()),
            ("KVS_TEST_REGION", name.clone()),
            ("KVS_TEST_STOP_BEFORE_PUBLISH", "1".to_string()),
        ],
    );
    let rx = stdout_lines(&mut child);
    let pid = child.id();
    let mut children = Children(vec![child]);
    assert!(
        poll_until(Duration::from_secs(20), || is_stopped(pid)).is_some(),
        "the writer never stopped mid-push"
    );
    // Laps of the ring while it is stopped, every answer checked.
    let client = KVSClient::<TextKey, Value256>::connect(&name).unwrap();
    for i in 0..400 {
        let k = key(&format!("lap-{}", i % 7));
        let v = val(&format!("lap value {i}"));
        client.set(&k, &v).unwrap();
        assert_eq!(client.get(&k).unwrap(), Some(v), "round {i}");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    let said = expect_line(&rx, "OK", Duration::from_secs(20));
    assert!(said.ends_with("OK"), "{said}");
    let status = wait_with_deadline(&mut children.0[0], Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(
        client.get(&key("stalled-key")).unwrap(),
        Some(val("the stalled writer's value"))
    );
    for j in 0..7 {
        let got = client.get(&key(&format!("lap-{j}"))).unwrap().unwrap();
        let last = (0..400).filter(|i| i % 7 == j).max().unwrap();
        assert_eq!(got, val(&format!("lap value {last}")), "lap-{j}");
    }
}

/// An in-process server whose workers never start: requests stay pending.
fn paused_server(name: &str) {
    let server = KVSServer::<TextKey, Value256>::builder(name)
        .build()
        .unwrap();
    server.admit_clients();
    println!("PAUSED-SERVER READY");
    let _ = std::io::stdout().flush();
    // Killed by the test long before this.
    std::thread::sleep(Duration::from_secs(60));
}

/// Forwards every stdout line of `child` to a channel.
fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits (bounded) for a line containing `what`.
fn expect_line(rx: &mpsc::Receiver<String>, what: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(what) => return line,
            Ok(_) => continue,
            Err(e) => panic!("no {what:?} line within {limit:?}: {e}"),
        }
    }
}

/// Polls `cond` every 5 ms until it holds or `limit` passes; returns the
/// time it took, or `None`.
fn poll_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One verifying loop of a surviving client; returns (ops, wrong, errors).
fn survivor(name: &str, id: usize, stop: &AtomicBool) -> (u64, Vec<String>, Vec<String>) {
    let client = KVSClient::<TextKey, Value256>::connect(name).unwrap();
    let (mut ops, mut wrong, mut errors) = (0u64, Vec::new(), Vec::new());
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let k = key(&format!("s{id}-k{}", i % 32));
        let v = format!("s{id}-v{i}");
        match client.set(&k, &val(&v)).and_then(|()| client.get(&k)) {
            Ok(Some(got)) if got.to_str() == Ok(v.as_str()) => ops += 2,
            Ok(other) => wrong.push(format!("{k:?}: {other:?}, expected {v}")),
            Err(e) => errors.push(e.to_string()),
        }
        i += 1;
    }
    (ops, wrong, errors)
}

/// 100 client processes, 10 at a time, are SIGKILLed 5-50 ms into a tight
/// set/get loop. Two clients that run throughout see only correct answers;
/// afterwards every response slot and registration is free again, and a new
/// client is answered at once.
#[test]
fn killed_clients_leave_no_slot_behind() {
    const WAVES: usize = 10;
    const PER_WAVE: usize = 10;
    let name = unique_name("deadclients");
    let _server = ServerGuard::start(&name, &["--workers", "2"]);
    let stop = AtomicBool::new(false);
    let mut rng = rand::rng();
    let mut killed_at = Instant::now();
    let survivors = std::thread::scope(|s| {
        let survivors: Vec<_> = (0..2)
            .map(|id| {
                let (name, stop) = (&name, &stop);
                s.spawn(move || survivor(name, id, stop))
            })
            .collect();
        let mut killed = 0;
        for wave in 0..WAVES {
            let mut children = Children(Vec::new());
            let mut lines = Vec::new();
            for j in 0..PER_WAVE {
                let id = wave * PER_WAVE + j;
                let mut child = spawn_self(
                    "child_entry",
                    &[
                        ("KVS_CHILD_ROLE", "hammer".to_string()),
                        ("KVS_TEST_REGION", name.clone()),
                        ("KVS_CHILD_ID", id.to_string()),
                    ],
                );
                lines.push(stdout_lines(&mut child));
                children.0.push(child);
            }
            for rx in &lines {
                expect_line(rx, "HAMMERING", Duration::from_secs(20));
            }
            let mut delays: Vec<u64> = (0..PER_WAVE).map(|_| rng.random_range(5..=50)).collect();
            delays.sort_unstable();
            let t0 = Instant::now();
            for (child, delay) in children.0.iter_mut().zip(&delays) {
                let at = t0 + Duration::from_millis(*delay);
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                child.kill().unwrap();
            }
            killed_at = Instant::now();
            for (child, rx) in children.0.iter_mut().zip(&lines) {
                let status = wait_with_deadline(child, Duration::from_secs(10)).unwrap();
                let said: Vec<String> = rx.try_iter().collect();
                assert_eq!(
                    std::os::unix::process::ExitStatusExt::signal(&status),
                    Some(libc::SIGKILL),
                    "a hammering client ended on its own ({status}): {said:?}"
                );
                assert!(
                    !said
                        .iter()
                        .any(|l| l.starts_with("WRONG") || l.starts_with("ERROR")),
                    "a hammering client saw a wrong answer or an error: {said:?}"
                );
                killed += 1;
            }
        }
        assert_eq!(killed, WAVES * PER_WAVE);
        // While the survivors run on: the dead clients' registrations and
        // slots come back (the housekeeper looks every 100 ms).
        let region = probe::<TextKey, Value256>(&name);
        let slots = region.slots();
        let reclaimed = poll_until(Duration::from_secs(5), || {
            region.clients().used().count() == 2 && slots.free_count() + 2 >= slots.len()
        });
        let since_kill = killed_at.elapsed();
        assert!(
            reclaimed.is_some(),
            "dead clients' slots or registrations left behind: {:?}, {} registrations",
            slots.state_counts(),
            region.clients().used().count()
        );
        eprintln!(
            "dead clients' slots and registrations reclaimed {since_kill:?} after the last kill"
        );
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        survivors
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    for (id, (ops, wrong, errors)) in survivors.iter().enumerate() {
        assert!(*ops > 0, "survivor {id} made no progress");
        assert!(
            wrong.is_empty(),
            "survivor {id} saw wrong answers: {wrong:?}"
        );
        assert!(errors.is_empty(), "survivor {id} saw errors: {errors:?}");
        eprintln!("survivor {id}: {ops} checked ops, no wrong answer, no error");
    }

    // Every slot and every registration comes back (housekeeper: 100 ms).
    let region = probe::<TextKey, Value256>(&name);
    let slots = region.slots();
    let reclaim = poll_until(Duration::from_secs(5), || {
        slots.free_count() == slots.len() && region.clients().used().count() == 0
    });
    assert!(
        reclaim.is_some(),
        "slots or registrations left behind: {:?}, {} registrations",
        slots.state_counts(),
        region.clients().used().count()
    );
    eprintln!(
        "all {} slots and every registration free once the survivors left; {} slots reclaimed in all",
        slots.len(),
        region.header().live.slots_reclaimed.load(Ordering::Relaxed)
    );

    // A new client is answered at once.
    let start = Instant::now();
    let client = KVSClient::<TextKey, Value256>::connect(&name).unwrap();
    client.set(&key("after"), &val("fine")).unwrap();
    assert_eq!(client.get(&key("after")).unwrap(), Some(val("fine")));
    let took = start.elapsed();
    eprintln!("a new client connected and got two answers in {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "a new client waited {took:?}"
    );
    let out = kvs_client(&name, &["get", "after"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "fine");
}

/// A client waiting on a SIGKILLed server returns `ServerGone` well within
/// its timeout: the server's lock byte is released by the kernel, and the
/// waiter re-checks it at least every 20 ms.
#[test]
fn waiting_client_sees_a_killed_server_as_gone() {
    const ROUNDS: usize = 3;
    let mut latencies = Vec::new();
    for _ in 0..ROUNDS {
        let name = unique_name("servergone");
        let _files = RegionFiles(name.clone());
        let mut child = spawn_self(
            "child_entry",
            &[
                ("KVS_CHILD_ROLE", "paused-server".to_string()),
                ("KVS_TEST_REGION", name.clone()),
            ],
        );
        let rx = stdout_lines(&mut child);
        let mut children = Children(vec![child]);
        expect_line(&rx, "PAUSED-SERVER READY", Duration::from_secs(20));
        let client = KVSClient::<TextKey, Value256>::connect(&name).unwrap();
        let killed = std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let r = client.get_timeout(&key("k"), Duration::from_secs(10));
                (r, Instant::now())
            });
            // The request is pending; give the waiter time to fall asleep.
            let slots = client.region().slots();
            assert!(
                poll_until(Duration::from_secs(5), || {
                    slots.state_counts().get(SlotState::Pending) == 1
                })
                .is_some(),
                "the request never became pending"
            );
            std::thread::sleep(Duration::from_millis(100));
            let killed = Instant::now();
            children.0[0].kill().unwrap();
            let (result, returned) = waiter.join().unwrap();
            let latency = returned.duration_since(killed);
            assert!(
                matches!(result, Err(ClientError::ServerGone)),
                "expected ServerGone, got {result:?}"
            );
            latency
        });
        let _ = children.0[0].wait();
        latencies.push(killed);
        // A call made after the death fails fast as well.
        let start = Instant::now();
        let err = client
            .set_timeout(&key("k"), &val("v"), Duration::from_secs(10))
            .unwrap_err();
        assert!(matches!(err, ClientError::ServerGone), "{err}");
        let after = start.elapsed();
        eprintln!("ServerGone {killed:?} after the kill; a later call failed in {after:?}");
        assert!(
            after < Duration::from_secs(1),
            "a later call took {after:?}"
        );
    }
    let worst = latencies.iter().max().unwrap();
    eprintln!("ServerGone latency over {ROUNDS} kills: {latencies:?} (worst {worst:?})");
    assert!(
        *worst < Duration::from_secs(1),
        "ServerGone took {worst:?} (target 200 ms)"
    );
}

/// Starts `kvs_server --name NAME ARGS` with stderr captured; returns the
/// guard (which kills it on drop) and its stderr, once ready.
fn start_server_capturing(
    name: &str,
    args: &[&str],
    log: &str,
) -> (ServerGuard, mpsc::Receiver<String>) {
    let mut child = Command::new(server_bin())
        .arg("--name")
        .arg(name)
        .args(args)
        .env_remove("KVS_NAME")
        .env("RUST_LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvs_server");
    let out = stdout_lines(&mut child);
    let stderr = child.stderr.take().unwrap();
    let (tx, err) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut guard = ServerGuard {
        name: name.to_string(),
        child: Some(child),
        ready_line: String::new(),
    };
    guard.ready_line = expect_line(&out, "ready", Duration::from_secs(10));
    // Keep draining stdout.
    std::thread::spawn(move || for _ in out {});
    (guard, err)
}

/// `kvs_server` on the name of a SIGKILLed server takes the region over,
/// says so in one log line, serves, and exits 0 on SIGTERM.
#[test]
fn server_takes_over_a_dead_servers_region() {
    let name = unique_name("takeover");
    let mut first = ServerGuard::start(&name, &[]);
    let out = kvs_client(&name, &["set", "k", "old"]);
    assert!(out.status.success(), "{out:?}");
    let first_pid = first.pid();
    let mut child = first.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(socket_path(&name).exists() && lock_path(&name).exists());

    let (mut second, stderr) = start_server_capturing(&name, &[], "info");
    let out = kvs_client(&name, &["get", "k"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the new region starts empty: {out:?}"
    );
    let out = kvs_client(&name, &["set", "k", "new"]);
    assert!(out.status.success(), "{out:?}");
    let out = kvs_client(&name, &["get", "k"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "new");
    let status = second.signal_and_wait(Signal::SIGTERM);
    assert_eq!(status.code(), Some(0), "{status}");
    let lines: Vec<String> = stderr.iter().collect();
    let takeover: Vec<&String> = lines.iter().filter(|l| l.contains("stale")).collect();
    assert_eq!(takeover.len(), 1, "expected one takeover line: {lines:?}");
    assert!(
        takeover[0].contains(&format!("dead_pid={first_pid}")),
        "the takeover line names the dead server: {takeover:?}"
    );
    eprintln!("takeover line: {}", takeover[0]);
    assert!(!socket_path(&name).exists() && !lock_path(&name).exists());
    drop(first);
}

/// A second `kvs_server` on a live server's name exits 2 with one line
/// naming the owner, and the first keeps serving.
#[test]
fn second_server_on_a_live_name_is_refused() {
    let name = unique_name("liveowner");
    let first = ServerGuard::start(&name, &[]);
    let mut child = Command::new(server_bin())
        .args(["--name", &name])
        .env_remove("KVS_NAME")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_with_deadline(&mut child, Duration::from_secs(10)).expect("hung");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("live server") && err.contains(&format!("pid {}", first.pid())),
        "{err}"
    );
    eprintln!("refusal: {}", err.trim());
    let out = kvs_client(&name, &["set", "still", "here"]);
    assert!(out.status.success(), "{out:?}");
}

/// A client connecting to a server that does not admit clients yet (it is
/// still loading its snapshot) waits for it instead of seeing a half-loaded
/// store, and gives up with a clear error after its bound.
#[test]
fn client_waits_for_a_server_that_is_still_starting() {
    let name = unique_name("starting");
    let mut server = KVSServer::<u64, u64>::builder(&name).build().unwrap();

    // Bounded: still starting after the wait is an error, not a hang.
    let start = Instant::now();
    let err = KVSClient::<u64, u64>::connect_with(
        &name,
        ClientOptions {
            connect_wait: Duration::from_millis(200),
            ..ClientOptions::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("was not ready after"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(3));

    let done = AtomicU64::new(0);
    std::thread::scope(|s| {
        let connecting = s.spawn(|| {
            let c = KVSClient::<u64, u64>::connect_with(
                &name,
                ClientOptions {
                    connect_wait: Duration::from_secs(10),
                    ..ClientOptions::default()
                },
            );
            done.store(1, Ordering::SeqCst);
            c
        });
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            done.load(Ordering::SeqCst),
            0,
            "connected to a server that was not admitting clients"
        );
        server.start(1).unwrap();
        let client = connecting.join().unwrap().expect("connects once started");
        client.set(&1, &2).unwrap();
        assert_eq!(client.get(&1).unwrap(), Some(2));
    });
}
