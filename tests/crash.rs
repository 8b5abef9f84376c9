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

/// Entry point of the child processes of these tests (see `spawn_self`,
/// which runs it with `--ignored`); ignored in ordinary runs, and a run
/// without a role is a mistake.
#[test]
#[ignore = "the entry point of child processes, run through spawn_self"]
fn child_entry() {
    let role =
        std::env::var("KVS_CHILD_ROLE").expect("child_entry runs only as a child (KVS_CHILD_ROLE)");
    let name = std::env::var("KVS_TEST_REGION").unwrap();
    match role.as_str() {
        "hammer" => {
            let id: usize = std::env::var("KVS_CHILD_ID").unwrap().parse().unwrap();
            hammer(&name, id)
        }
        "paused-server" => paused_server(&name),
        "stalled-writer" => stalled_writer(&name),
        "forking-client" => forking_client(&name),
        "warm-writer" => {
            let id: usize = std::env::var("KVS_CHILD_ID").unwrap().parse().unwrap();
            warm_writer(&name, id)
        }
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

/// Connects, forks a child that tries to use the inherited client (it must
/// be refused) and then sleeps holding the inherited connection, prints
/// `CHILD <pid>` and exits: the server must see this process die although
/// the child keeps its connection open.
fn forking_client(name: &str) {
    let client = KVSClient::<TextKey, Value256>::connect(name).unwrap();
    client.set(&key("parent"), &val("was here")).unwrap();
    let mut out = std::io::stdout();
    // SAFETY: the child only calls async-signal-unsafe code that this test
    // controls (it is single-threaded apart from the test harness, which is
    // idle while this test runs), and then exits with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let refused = matches!(client.get(&key("parent")), Err(ClientError::Forked { .. }));
        let refused_set = matches!(
            client.set(&key("child"), &val("x")),
            Err(ClientError::Forked { .. })
        );
        let verdict = if refused && refused_set {
            "REFUSED"
        } else {
            "NOT-REFUSED"
        };
        let _ = writeln!(out, "{verdict}");
        let _ = out.flush();
        // Keep the inherited connection open for a while, then go.
        std::thread::sleep(Duration::from_secs(3));
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    let _ = writeln!(out, "CHILD {pid}");
    let _ = out.flush();
    std::mem::forget(client); // exit without goodbye: like a crash
    std::process::exit(0);
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

/// The value writer `id` writes for its `i`-th key: its own bytes, 40
/// long, or 3000 for every 7th (through a staging buffer).
fn warm_value(id: usize, i: u64) -> Vec<u8> {
    let len = if i % 7 == 0 { 3000 } else { 40 };
    format!("{id}:{i}:").bytes().cycle().take(len).collect()
}

/// Writes keys `w{id}-{i}` (and the key `w{id}-hot` = `i`) in order until
/// killed, printing `ACK i` after each acknowledged pair. When the server
/// dies it reconnects (to the restarted server) and writes the pair again.
fn warm_writer(name: &str, id: usize) {
    let options = ClientOptions {
        timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    let connect = || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match KVSClient::<Vec<u8>, Vec<u8>>::connect_with(name, options.clone()) {
                Ok(c) => return c,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    println!("ERROR connect: {e}");
                    std::process::exit(4);
                }
            }
        }
    };
    let mut client = connect();
    println!("STARTED");
    let mut out = std::io::stdout().lock();
    let mut i = 0u64;
    loop {
        let key = format!("w{id}-{i}").into_bytes();
        let hot = format!("w{id}-hot").into_bytes();
        let written = client
            .set(&key, &warm_value(id, i))
            .and_then(|()| client.set(&hot, &i.to_le_bytes().to_vec()));
        match written {
            Ok(()) => {
                writeln!(out, "ACK {i}").unwrap();
                out.flush().unwrap();
                i += 1;
            }
            Err(ClientError::ServerGone | ClientError::Timeout { .. }) => {
                // Not acknowledged: written again once a server is back.
                let deadline = Instant::now() + Duration::from_secs(30);
                while client.reconnect().is_err() {
                    if Instant::now() > deadline {
                        println!("ERROR no server came back");
                        std::process::exit(4);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Err(e) => {
                println!("ERROR {e}");
                std::process::exit(4);
            }
        }
    }
}

/// Warm restart: four writer processes write without pause while the
/// server is SIGKILLed at random moments, three times; each time a new
/// `kvs_server` of the name adopts the store from the keeper, the writers
/// reconnect and go on. In the end every write acknowledged to a writer,
/// before or after any kill, is in the store with its exact bytes, and
/// each writer's hot key holds its last acknowledged write or the one it
/// was making when it was stopped.
#[test]
fn every_acknowledged_write_survives_server_kills() {
    const WRITERS: usize = 4;
    let name = unique_name("warm");
    let mut servers = vec![ServerGuard::start(&name, &[])];
    let mut writers = Children(Vec::new());
    let mut lines = Vec::new();
    for id in 0..WRITERS {
        let mut child = spawn_self(
            "child_entry",
            &[
                ("KVS_CHILD_ROLE", "warm-writer".to_string()),
                ("KVS_TEST_REGION", name.clone()),
                ("KVS_CHILD_ID", id.to_string()),
            ],
        );
        let rx = stdout_lines(&mut child);
        writers.0.push(child);
        expect_line(&rx, "STARTED", Duration::from_secs(20));
        lines.push(rx);
    }
    let mut acked = vec![None::<u64>; WRITERS];
    let drain = |acked: &mut Vec<Option<u64>>| {
        for (id, rx) in lines.iter().enumerate() {
            for line in rx.try_iter() {
                if let Some(i) = line.strip_prefix("ACK ") {
                    let i: u64 = i.parse().unwrap();
                    assert_eq!(acked[id].map_or(0, |a| a + 1), i, "writer {id} skipped");
                    acked[id] = Some(i);
                } else {
                    assert!(!line.contains("ERROR"), "writer {id}: {line}");
                }
            }
        }
    };
    let mut rng = rand::rng();
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(rng.random_range(150..600)));
        let server = servers.last_mut().unwrap();
        let _ = server.signal_and_wait(Signal::SIGKILL);
        drain(&mut acked);
        let restarted = ServerGuard::start(&name, &[]);
        assert!(
            restarted.ready_line.contains("adopted"),
            "round {round}: {}",
            restarted.ready_line
        );
        eprintln!(
            "round {round}: acked so far {acked:?}; {}",
            restarted.ready_line
        );
        servers.push(restarted);
    }
    // Let the writers make progress against the last server, then stop
    // them (SIGKILL: possibly mid-write).
    let before = acked.clone();
    let progressed = poll_until(Duration::from_secs(20), || {
        drain(&mut acked);
        acked.iter().zip(&before).all(|(a, b)| a > b)
    });
    assert!(
        progressed.is_some(),
        "writers stalled after the restarts: {acked:?}"
    );
    for w in &mut writers.0 {
        let _ = w.kill();
        let _ = w.wait();
    }
    std::thread::sleep(Duration::from_millis(100));
    drain(&mut acked);

    let client = KVSClient::<Vec<u8>, Vec<u8>>::connect(&name).unwrap();
    let mut checked = 0;
    for (id, last) in acked.iter().enumerate() {
        let last = last.expect("every writer had a write acknowledged");
        for i in 0..=last {
            let got = client.get(&format!("w{id}-{i}").into_bytes()).unwrap();
            assert_eq!(
                got,
                Some(warm_value(id, i)),
                "writer {id} write {i} (acknowledged)"
            );
            checked += 1;
        }
        let hot = client
            .get(&format!("w{id}-hot").into_bytes())
            .unwrap()
            .unwrap();
        let hot = u64::from_le_bytes(hot.try_into().unwrap());
        assert!(
            hot == last || hot == last + 1,
            "writer {id}: hot {hot}, last ack {last}"
        );
    }
    eprintln!("{checked} acknowledged writes all present after 3 kills");
    let last = servers.last_mut().unwrap();
    assert_eq!(last.signal_and_wait(Signal::SIGTERM).code(), Some(0));
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
        let region = probe(&name);
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
    let region = probe(&name);
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
/// its timeout: its connection ends with the server, and the waiter
/// re-checks it at least every 20 ms.
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
            // A write: reads need no worker (they read the store directly).
            let waiter = s.spawn(|| {
                let r = client.set_timeout(&key("k"), &val("v"), Duration::from_secs(10));
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
/// says so in one log line, adopts the dead server's store from its keeper
/// (warm restart) and says so too, serves, and exits 0 on SIGTERM, which
/// discards the store for good.
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

    assert!(keeper_path(&name).exists(), "the keeper holds the store");

    let (mut second, stderr) = start_server_capturing(&name, &[], "info");
    assert!(
        second.ready_line.contains("adopted 1 entry"),
        "{}",
        second.ready_line
    );
    let out = kvs_client(&name, &["get", "k"]);
    assert_eq!(stdout(&out), "old", "the dead server's data: {out:?}");
    let out = kvs_client(&name, &["set", "k", "new"]);
    assert!(out.status.success(), "{out:?}");
    let out = kvs_client(&name, &["get", "k"]);
    assert_eq!(stdout(&out), "new");
    let status = second.signal_and_wait(Signal::SIGTERM);
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        !keeper_path(&name).exists(),
        "a clean stop discards the store"
    );
    let lines: Vec<String> = stderr.iter().collect();
    assert_eq!(
        lines.iter().filter(|l| l.contains("warm restart")).count(),
        2,
        "{lines:?}"
    );
    let takeover: Vec<&String> = lines.iter().filter(|l| l.contains("stale")).collect();
    assert_eq!(takeover.len(), 1, "expected one takeover line: {lines:?}");
    assert!(
        takeover[0].contains(&format!("dead_pid={first_pid}")),
        "the takeover line names the dead server: {takeover:?}"
    );
    eprintln!("takeover line: {}", takeover[0]);
    assert!(!socket_path(&name).exists() && !lock_path(&name).exists());
    drop(first);
    // After the clean stop, the next server starts empty.
    let _third = ServerGuard::start(&name, &[]);
    assert_eq!(kvs_client(&name, &["get", "k"]).status.code(), Some(1));
}

/// A successor started with other limits than the crashed server adopts
/// the store as it was made (its size, key and value limits), warns that it
/// does, and its clients read and write it: they used to refuse the region
/// as corrupt when `--max-memory` differed.
#[test]
fn a_successor_with_other_limits_serves_the_adopted_store() {
    let name = unique_name("other-limits");
    let mut first = ServerGuard::start(&name, &["--max-memory", "64M", "--max-value-size", "4096"]);
    let out = kvs_client(&name, &["set", "k", "kept"]);
    assert!(out.status.success(), "{out:?}");
    let _ = first.signal_and_wait(Signal::SIGKILL);

    let (mut second, stderr) = start_server_capturing(
        &name,
        &["--max-memory", "256M", "--max-value-size", "65536"],
        "info",
    );
    assert!(
        second.ready_line.contains("adopted 1 entry"),
        "{}",
        second.ready_line
    );
    assert!(
        second.ready_line.contains("values up to 4096 bytes"),
        "the adopted store keeps its value limit: {}",
        second.ready_line
    );
    let out = kvs_client(&name, &["get", "k"]);
    assert_eq!(stdout(&out), "kept", "{out:?}");
    let out = kvs_client(&name, &["set", "k2", "new"]);
    assert!(out.status.success(), "{out:?}");
    let out = kvs_client(&name, &["status"]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("entries       2"), "{out:?}");
    let status = second.signal_and_wait(Signal::SIGTERM);
    assert_eq!(status.code(), Some(0), "{status}");
    let lines: Vec<String> = stderr.iter().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("keeps the key and value limits")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("keeps the size it was made with")),
        "{lines:?}"
    );
    drop(first);
}

/// The keeper a `kvs_server` starts ends on SIGTERM like any process,
/// although the server blocks SIGTERM for itself (a blocked mask survives
/// exec), and ignores the terminal's SIGINT and SIGHUP.
#[test]
fn the_keeper_of_a_killed_server_ends_on_sigterm() {
    let name = unique_name("keeper-term");
    let mut server = ServerGuard::start(&name, &[]);
    let pid: i32 = server
        .ready_line
        .split("keeper pid ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no keeper pid in {}", server.ready_line));
    let _ = server.signal_and_wait(Signal::SIGKILL);
    let keeper = nix::unistd::Pid::from_raw(pid);
    for sig in [Signal::SIGINT, Signal::SIGHUP] {
        nix::sys::signal::kill(keeper, sig).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        keeper_path(&name).exists(),
        "the keeper ended on SIGINT or SIGHUP"
    );
    nix::sys::signal::kill(keeper, Signal::SIGTERM).unwrap();
    let gone = poll_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.split(' ').nth(2) == Some("Z"))
    });
    assert!(gone.is_some(), "the keeper ignored SIGTERM");
}

/// Without a keeper (`--no-keeper`) a SIGKILLed server's data is gone: the
/// next server starts empty, and says nothing of a warm restart.
#[test]
fn without_a_keeper_a_killed_servers_data_is_gone() {
    let name = unique_name("nokeeper");
    let mut first = ServerGuard::start(&name, &["--no-keeper"]);
    assert!(
        first.ready_line.contains("no keeper"),
        "{}",
        first.ready_line
    );
    assert!(!keeper_path(&name).exists());
    assert!(kvs_client(&name, &["set", "k", "old"]).status.success());
    let _ = first.signal_and_wait(Signal::SIGKILL);
    let second = ServerGuard::start(&name, &[]);
    assert!(
        !second.ready_line.contains("adopted"),
        "{}",
        second.ready_line
    );
    assert_eq!(kvs_client(&name, &["get", "k"]).status.code(), Some(1));
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

/// Clients that connect, work and leave (or are killed) while others
/// register at the same moment: a live client never loses its slots to the
/// housekeeper reclaiming a dead registration (the registry is the server's
/// own, and an index is freed only if it is still the dead one it saw).
#[test]
fn registration_churn_never_costs_a_live_client_its_slots() {
    let name = unique_name("churn");
    let _server = ServerGuard::start(&name, &["--max-clients", "6"]);
    let stop = AtomicBool::new(false);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        // Killers: hammering clients SIGKILLed at random moments.
        s.spawn(|| {
            let mut rng = rand::rng();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut child = spawn_self(
                    "child_entry",
                    &[
                        ("KVS_CHILD_ROLE", "hammer".to_string()),
                        ("KVS_TEST_REGION", name.clone()),
                        ("KVS_CHILD_ID", format!("9{n}")),
                    ],
                );
                n += 1;
                std::thread::sleep(Duration::from_millis(rng.random_range(5..30)));
                let _ = child.kill();
                let _ = child.wait();
            }
        });
        // Short-lived clients that must all succeed.
        for t in 0..3 {
            let (name, stop, failures) = (&name, &stop, &failures);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let k = key(&format!("churn-{t}-{}", i % 5));
                    let v = val(&format!("v{i}"));
                    let r = KVSClient::<TextKey, Value256>::connect_with(
                        name,
                        ClientOptions {
                            connect_wait: Duration::from_secs(5),
                            ..ClientOptions::default()
                        },
                    )
                    .map_err(|e| e.to_string())
                    .and_then(|c| {
                        c.set(&k, &v).map_err(|e| e.to_string())?;
                        match c.get(&k).map_err(|e| e.to_string())? {
                            Some(got) if got == v => Ok(()),
                            other => Err(format!("wrong value {other:?}")),
                        }
                    });
                    if let Err(e) = r {
                        // Every registration briefly taken is a refusal, not a loss.
                        if !e.contains("no free client registration") {
                            failures.lock().unwrap().push(e);
                        }
                    }
                    i += 1;
                }
            });
        }
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "live clients failed: {failures:?}");
    let served = status_json(&name)["ops"]["set"].as_u64().unwrap();
    assert!(
        served > 50,
        "too little churn to mean anything: {served} sets"
    );
}

/// After a SIGKILLed server's successor takes over the name, a client of
/// the old server gets `ServerGone` for writes at once (its connection
/// ended with the old server), never waits out its timeout, and
/// `reconnect` gets it working against the successor. Its reads go on
/// meanwhile: they read the store, which the successor adopted.
#[test]
fn old_clients_see_a_successor_as_gone_and_reconnect() {
    let name = unique_name("successor");
    let mut first = ServerGuard::start(&name, &[]);
    let mut client = KVSClient::<TextKey, Value256>::connect(&name).unwrap();
    client.set(&key("k"), &val("old")).unwrap();
    let _ = first.signal_and_wait(Signal::SIGKILL);
    let _second = ServerGuard::start(&name, &[]);
    assert_eq!(client.get(&key("k")).unwrap(), Some(val("old")));
    for attempt in 0..3 {
        let start = Instant::now();
        let err = client
            .set_timeout(&key("k"), &val("lost"), Duration::from_secs(10))
            .unwrap_err();
        let took = start.elapsed();
        assert!(matches!(err, ClientError::ServerGone), "{err}");
        assert!(
            took < Duration::from_millis(500),
            "attempt {attempt}: {took:?}"
        );
    }
    client.reconnect().unwrap();
    assert_eq!(
        client.get(&key("k")).unwrap(),
        Some(val("old")),
        "the successor adopted the store"
    );
    client.set(&key("k"), &val("new")).unwrap();
    assert_eq!(client.get(&key("k")).unwrap(), Some(val("new")));
}

/// Shutdown under load: the server refuses new requests at once
/// (`Draining`), answers what it accepted, saves, and exits; no caller
/// waits out its 10 s timeout, and the server's stop returns although a
/// client keeps pushing.
#[test]
fn shutdown_answers_what_it_accepted_and_refuses_the_rest_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("exit.snap");
    let name = unique_name("drain");
    let mut server = ServerGuard::start(&name, &["--save-on-exit", snap.to_str().unwrap()]);
    let stop = AtomicBool::new(false);
    let slowest = AtomicU64::new(0);
    let outcomes = std::sync::Mutex::new((0u64, 0u64, Vec::<String>::new()));
    std::thread::scope(|s| {
        for t in 0..3 {
            let (name, stop, slowest, outcomes) = (&name, &stop, &slowest, &outcomes);
            s.spawn(move || {
                let client = KVSClient::<TextKey, Value256>::connect(name).unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let r = client.set_timeout(
                        &key(&format!("d{t}-{}", i % 100)),
                        &val("v"),
                        Duration::from_secs(10),
                    );
                    slowest.fetch_max(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                    let mut o = outcomes.lock().unwrap();
                    match r {
                        Ok(()) => o.0 += 1,
                        Err(ClientError::ServerGone) => {
                            o.1 += 1;
                            break;
                        }
                        Err(e) => o.2.push(e.to_string()),
                    }
                    i += 1;
                }
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let status = server.signal_and_wait(Signal::SIGTERM);
        let took = started.elapsed();
        assert_eq!(status.code(), Some(0), "{status}");
        assert!(
            took < Duration::from_secs(5),
            "the server took {took:?} to stop"
        );
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
    });
    let (ok, gone, errors) = outcomes.into_inner().unwrap();
    let slowest = Duration::from_micros(slowest.into_inner());
    eprintln!("{ok} answered, {gone} refused as gone, errors {errors:?}, slowest call {slowest:?}");
    assert!(ok > 0 && gone == 3, "every client must end with ServerGone");
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "a call waited {slowest:?}"
    );
    assert!(snap.exists(), "the snapshot was not saved");
}

/// A request whose execution panics (the test-hooks key makes a worker
/// panic) is answered `Failed` (the panic is contained and counted), and
/// the worker keeps serving everything else.
#[test]
fn a_panicking_request_is_answered_failed_and_the_worker_serves_on() {
    let name = unique_name("panic");
    let mut server = KVSServer::<Vec<u8>, u64>::builder(&name)
        .workers(1)
        .build()
        .unwrap();
    server.start(1).unwrap();
    let client = KVSClient::<Vec<u8>, u64>::connect(&name).unwrap();
    let touchy = b"__kvs_test_panic__".to_vec();
    assert!(
        kvs::core::test_panic_key(&touchy),
        "built without test-hooks"
    );
    for round in 0..3u64 {
        let err = client.set(&touchy, &1).unwrap_err();
        assert!(err.to_string().contains("failed"), "round {round}: {err}");
        let k = round.to_le_bytes().to_vec();
        client.set(&k, &round).unwrap();
        assert_eq!(client.get(&k).unwrap(), Some(round));
    }
    assert_eq!(
        server.region().header().live.panics.load(Ordering::Relaxed),
        3
    );
    let status = client.status().unwrap();
    assert_eq!(status.panics, 3);
}

/// A forked child cannot use its parent's client (calls are refused with
/// `Forked`, and dropping things touches nothing), and cannot keep a dead
/// parent looking alive: the server frees the parent's registration when
/// the parent exits, although the child still holds the connection.
#[test]
fn a_forked_child_is_refused_and_keeps_no_dead_parent_alive() {
    let name = unique_name("fork");
    let _server = ServerGuard::start(&name, &[]);
    let before = status_json(&name)["clients"].as_u64().unwrap();
    let mut child = spawn_self(
        "child_entry",
        &[
            ("KVS_CHILD_ROLE", "forking-client".to_string()),
            ("KVS_TEST_REGION", name.clone()),
        ],
    );
    let rx = stdout_lines(&mut child);
    let line = expect_line(&rx, "CHILD", Duration::from_secs(20));
    let grandchild: i32 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let _ = wait_with_deadline(&mut child, Duration::from_secs(10));
    // The parent is dead; its fork still holds the connection open.
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(grandchild), None).is_ok(),
        "the forked child should still be alive"
    );
    let freed = poll_until(Duration::from_secs(2), || {
        status_json(&name)["clients"].as_u64() == Some(before)
    });
    assert!(freed.is_some(), "the dead parent's registration was kept");
    let verdict = expect_line(&rx, "REFUSED", Duration::from_secs(10));
    assert!(
        verdict.ends_with("REFUSED") && !verdict.contains("NOT"),
        "{verdict}"
    );
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(grandchild), Signal::SIGKILL);
    assert_eq!(stdout(&kvs_client(&name, &["get", "parent"])), "was here");
}
