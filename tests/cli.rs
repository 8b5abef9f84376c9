//! The server and client as a user runs them: the real `kvs_server` and
//! `kvs_client` binaries, several client processes at once, and the library
//! handles in a process of their own.

mod common;

use common::*;
use kvs::core::fixed_str::Value256;
use kvs::core::text::TextKey;
use kvs::{ClientError, KVSClient, KVSServer};
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::io::Read;
use std::time::{Duration, Instant};

/// Entry point of the child processes of these tests (see `spawn_self`,
/// which runs it with `--ignored`); ignored in ordinary runs, and a run
/// without a role is a mistake.
#[test]
#[ignore = "the entry point of child processes, run through spawn_self"]
fn child_entry() {
    let role =
        std::env::var("KVS_CHILD_ROLE").expect("child_entry runs only as a child (KVS_CHILD_ROLE)");
    let name = std::env::var("KVS_TEST_REGION").unwrap();
    let id: usize = std::env::var("KVS_CHILD_ID").unwrap().parse().unwrap();
    let client = KVSClient::<TextKey, Value256>::connect(&name).unwrap();
    match role.as_str() {
        "hammer" => hammer(&client, id),
        "post-race" => post_race(&client, id),
        other => panic!("unknown role {other}"),
    }
}

/// 10,000 operations on this child's own keys; every answer checked.
fn hammer(client: &KVSClient<TextKey, Value256>, id: usize) {
    let mut model: HashMap<usize, String> = HashMap::new();
    for i in 0..10_000usize {
        let k = i % 64;
        let name = key(&format!("c{id}-k{k}"));
        match i % 5 {
            0 | 1 => {
                let v = format!("c{id}-v{i}");
                client.set(&name, &val(&v)).unwrap();
                model.insert(k, v);
            }
            2 | 3 => {
                let got = client.get(&name).unwrap().map(|v| v.to_string());
                assert_eq!(
                    got.as_ref(),
                    model.get(&k),
                    "child {id} op {i}: wrong GET answer"
                );
            }
            _ => {
                let existed = client.del(&name).unwrap();
                assert_eq!(
                    existed,
                    model.remove(&k).is_some(),
                    "child {id} op {i}: wrong DEL answer"
                );
            }
        }
    }
    println!("ok {id}");
}

/// POSTs keys race-0..race-199 with this child's id; prints the ones it won.
fn post_race(client: &KVSClient<TextKey, Value256>, id: usize) {
    let mut won = Vec::new();
    for k in 0..200 {
        if client
            .post(&key(&format!("race-{k}")), &val(&id.to_string()))
            .unwrap()
        {
            won.push(k.to_string());
        }
    }
    // Own line: the harness prints "test child_entry ... " without a newline.
    println!("\nwon {}", won.join(","));
}

fn spawn_children(role: &str, name: &str, n: usize) -> Children {
    Children(
        (0..n)
            .map(|id| {
                spawn_self(
                    "child_entry",
                    &[
                        ("KVS_CHILD_ROLE", role.to_string()),
                        ("KVS_TEST_REGION", name.to_string()),
                        ("KVS_CHILD_ID", id.to_string()),
                    ],
                )
            })
            .collect(),
    )
}

fn collect_outputs(children: &mut Children, limit: Duration) -> Vec<String> {
    let mut outputs = Vec::new();
    for child in &mut children.0 {
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let status = wait_with_deadline(child, limit).expect("child process hung");
        assert!(status.success(), "child failed: {out}");
        outputs.push(out);
    }
    outputs
}

#[test]
fn every_command_round_trips_with_its_exit_code() {
    let name = unique_name("roundtrip");
    let server = ServerGuard::start(&name, &["--max-key-size", "63", "--max-value-size", "255"]);
    assert!(server.ready_line.contains(&name), "{}", server.ready_line);

    let o = kvs_client(&name, &["set", "greeting", "hello world"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = kvs_client(&name, &["get", "greeting"]);
    assert_eq!(o.status.code(), Some(0));
    // Exactly the stored bytes (not a terminal: no newline added).
    assert_eq!(stdout(&o), "hello world");

    let o = kvs_client(&name, &["get", "absent"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).is_empty());
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));

    let o = kvs_client(&name, &["post", "greeting", "other"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"));
    assert_eq!(
        stdout(&kvs_client(&name, &["get", "greeting"])),
        "hello world"
    );

    let o = kvs_client(&name, &["post", "fresh", "v1"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&kvs_client(&name, &["get", "fresh"])), "v1");

    let o = kvs_client(&name, &["del", "fresh"]);
    assert_eq!(o.status.code(), Some(0));
    let o = kvs_client(&name, &["del", "fresh"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(kvs_client(&name, &["get", "fresh"]).status.code(), Some(1));

    let o = kvs_client(&name, &["status", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let status: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(status["entries"], 1);
    assert_eq!(status["slots"], 1024);
    assert_eq!(status["free_slots"], 1024);
    // set, post, del: three mutations so far.
    assert_eq!(status["version"], 3);
    let o = kvs_client(&name, &["status"]);
    assert!(stdout(&o).contains("entries       1"), "{}", stdout(&o));

    let o = kvs_client(&name, &["set", &"k".repeat(64), "v"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("a key is 1 to 63 bytes (kvs_server --max-key-size), this one is 64"),
        "{}",
        stderr(&o)
    );
    let o = kvs_client(&name, &["set", "k", &"v".repeat(256)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(
            "a value is at most 255 bytes (kvs_server --max-value-size), this one is 256"
        ),
        "{}",
        stderr(&o)
    );
}

#[test]
fn help_is_complete_on_both_binaries() {
    let out = std::process::Command::new(server_bin())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--name",
        "--workers",
        "--stripes",
        "--queue-capacity",
        "--slots",
        "--mode",
        "--max-key-size",
        "--max-value-size",
        "--max-memory",
        "--staging-buffers",
        "--max-entries",
        "--no-keeper",
        "--cleanup",
    ] {
        assert!(text.contains(flag), "kvs_server --help lacks {flag}");
    }
    let out = std::process::Command::new(client_bin())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "get",
        "set",
        "post",
        "del",
        "status",
        "--name",
        "--timeout-ms",
        "Exit status",
    ] {
        assert!(text.contains(word), "kvs_client --help lacks {word}");
    }
}

#[test]
fn server_usage_errors_are_one_line_and_exit_2() {
    for args in [
        &["--workers", "0"][..],
        &["--bogus"],
        &["--mode", "999"],
        &["--value-size", "5000"],
    ] {
        let o = std::process::Command::new(server_bin())
            .args(args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("kvs_server: "), "{err}");
    }
}

#[test]
fn client_without_a_server_fails_with_one_clear_line() {
    let name = unique_name("noserver");
    let o = kvs_client(&name, &["get", "x"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no kvs server"), "{err}");
}

#[test]
fn server_stops_cleanly_on_sigterm_and_sigint() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let name = unique_name("signal");
        let mut server = ServerGuard::start(&name, &[]);
        assert!(socket_path(&name).exists());
        assert_eq!(kvs_client(&name, &["set", "a", "b"]).status.code(), Some(0));
        let status = server.signal_and_wait(sig);
        assert_eq!(status.code(), Some(0), "{sig:?}");
        assert!(
            !socket_path(&name).exists(),
            "region left behind after {sig:?}"
        );
        assert!(
            !lock_path(&name).exists(),
            "lock file left behind after {sig:?}"
        );
    }
}

#[test]
fn limits_are_the_servers_and_values_are_any_bytes() {
    let name = unique_name("limits");
    let _server = ServerGuard::start(&name, &["--max-value-size", "4000"]);
    let long = "x".repeat(4000);
    let o = kvs_client(&name, &["set", "big", &long]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&kvs_client(&name, &["get", "big"])), long);
    let o = kvs_client(&name, &["set", "big", &"x".repeat(4001)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("at most 4000 bytes (kvs_server --max-value-size), this one is 4001"),
        "{}",
        stderr(&o)
    );
}

/// `set KEY -` reads the value from standard input and `set KEY --file
/// PATH` from a file, any bytes (NUL, invalid UTF-8, newlines); `get`
/// writes exactly those bytes back; sizes up to the server's limit.
#[test]
fn values_from_stdin_and_files_round_trip_byte_for_byte() {
    use std::io::Write;
    let name = unique_name("stdin");
    let _server = ServerGuard::start(&name, &["--max-value-size", "2M"]);
    let dir = tempfile::tempdir().unwrap();
    for size in [0usize, 1, 1023, 1024, 1025, 64 << 10, 1 << 20, 2 << 20] {
        let value: Vec<u8> = (0..size).map(|i| (i * 131 + size) as u8).collect();
        // From standard input.
        let mut cmd = kvs_client_command(&[], &name, &["set", "from-stdin", "-"]);
        cmd.stdin(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = {
            let value = value.clone();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&value);
            })
        };
        let o = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert_eq!(o.status.code(), Some(0), "{size}: {}", stderr(&o));
        let got = kvs_client(&name, &["get", "from-stdin"]);
        assert_eq!(got.status.code(), Some(0));
        assert!(got.stdout == value, "{size} bytes from stdin differ");
        // From a file.
        let path = dir.path().join(format!("v{size}"));
        std::fs::write(&path, &value).unwrap();
        let o = kvs_client(
            &name,
            &["set", "from-file", "--file", path.to_str().unwrap()],
        );
        assert_eq!(o.status.code(), Some(0), "{size}: {}", stderr(&o));
        assert!(
            kvs_client(&name, &["get", "from-file"]).stdout == value,
            "{size} bytes from a file differ"
        );
    }
    // One byte over the limit, either way: one line, exit 2.
    let path = dir.path().join("too-big");
    std::fs::write(&path, vec![7u8; (2 << 20) + 1]).unwrap();
    let o = kvs_client(&name, &["set", "k", "--file", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    // A value and --file together, a directory, a missing file.
    for args in [
        vec!["set", "k", "v", "--file", path.to_str().unwrap()],
        vec!["set", "k", "--file", dir.path().to_str().unwrap()],
        vec!["set", "k", "--file", "/nonexistent/value"],
    ] {
        let o = kvs_client(&name, &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert_eq!(stderr(&o).lines().count(), 1, "{args:?}: {}", stderr(&o));
    }
}

/// 8 client processes x 10,000 operations on their own keys: every answer
/// is checked in the child, so an answer reaching the wrong client fails it.
#[test]
fn eight_clients_never_get_each_others_answers() {
    let name = unique_name("eight");
    let _server = ServerGuard::start(&name, &["--workers", "2"]);
    let mut children = spawn_children("hammer", &name, 8);
    let outputs = collect_outputs(&mut children, Duration::from_secs(120));
    for (id, out) in outputs.iter().enumerate() {
        assert!(out.contains(&format!("ok {id}")), "child {id}: {out}");
    }
    let o = kvs_client(&name, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(status["free_slots"], status["slots"]);
    // Writes go through the workers (2 SET and 1 DEL of every 5 ops);
    // GETs read the store directly and never reach them.
    assert_eq!(
        status["ops"]["set"].as_u64().unwrap() + status["ops"]["del"].as_u64().unwrap(),
        48_000
    );
}

/// Several processes POST the same keys; exactly one wins each key, and the
/// stored value is the winner's.
#[test]
fn post_race_has_exactly_one_winner_per_key() {
    let name = unique_name("postrace");
    let _server = ServerGuard::start(&name, &[]);
    let mut children = spawn_children("post-race", &name, 4);
    let outputs = collect_outputs(&mut children, Duration::from_secs(60));
    let mut winner: HashMap<String, usize> = HashMap::new();
    for (id, out) in outputs.iter().enumerate() {
        let line = out.lines().find(|l| l.starts_with("won")).unwrap();
        for k in line
            .trim_start_matches("won")
            .trim()
            .split(',')
            .filter(|s| !s.is_empty())
        {
            assert!(
                winner.insert(k.to_string(), id).is_none(),
                "key {k} won twice"
            );
        }
    }
    assert_eq!(winner.len(), 200, "every key must have a winner");
    let client = KVSClient::<TextKey, Value256>::connect(&name).unwrap();
    for (k, id) in winner {
        let stored = client.get(&key(&format!("race-{k}"))).unwrap().unwrap();
        assert_eq!(stored.to_string(), id.to_string());
    }
}

/// A short timeout against stopped workers times out; once the workers run
/// again every slot is free and later calls get their own answers.
#[test]
fn timeout_with_stopped_workers_frees_every_slot() {
    let name = unique_name("timeout");
    let mut server = KVSServer::<u64, u64>::builder(&name).build().unwrap();
    server.start(1).unwrap();
    let client = KVSClient::<u64, u64>::connect(&name).unwrap();
    client.set(&1, &10).unwrap();
    server.stop();

    // Reads need no worker: they go on from the store.
    assert_eq!(client.get(&1).unwrap(), Some(10));
    let start = Instant::now();
    let err = client
        .set_timeout(&1, &11, Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "the timeout did not bound the call"
    );
    // Abandoned tickets too.
    for k in 0..10u64 {
        drop(client.set_async(&k, &(k + 100)).unwrap());
    }

    server.start(1).unwrap();
    let slots = server.region().slots();
    let deadline = Instant::now() + Duration::from_secs(5);
    while slots.free_count() != slots.len() {
        assert!(
            Instant::now() < deadline,
            "slots still in use: {:?}",
            slots.state_counts()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The timed-out SET may or may not have been applied by now.
    assert!(matches!(client.get(&1).unwrap(), Some(10 | 11)));
    client.set(&2, &20).unwrap();
    assert_eq!(client.get(&2).unwrap(), Some(20));
}

/// The library in one process: sync, async, batch, many threads.
#[test]
fn library_sync_async_and_batch_from_many_threads() {
    let name = unique_name("lib");
    let mut server = KVSServer::<u64, u64>::builder(&name)
        .workers(2)
        .build()
        .unwrap();
    server.start(2).unwrap();
    let client = KVSClient::<u64, u64>::connect(&name).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let client = &client;
            s.spawn(move || {
                for i in 0..2_000u64 {
                    let k = t * 1_000_000 + i;
                    client.set(&k, &(k * 2)).unwrap();
                    assert_eq!(client.get(&k).unwrap(), Some(k * 2));
                }
            });
        }
    });
    assert_eq!(server.storage_size(), 8_000);

    let tickets: Vec<_> = (0..300u64)
        .map(|k| client.post_async(&(k + (1 << 40)), &k).unwrap())
        .collect();
    for t in tickets {
        assert!(t.wait(Duration::from_secs(5)).unwrap());
    }
    let mut t = client.get_async(&(5 + (1 << 40))).unwrap();
    let got = loop {
        if let Some(r) = client.try_take(&mut t) {
            break r.unwrap();
        }
        std::hint::spin_loop();
    };
    assert_eq!(got, Some(5));
    drop(t);

    use kvs::{Op, Reply};
    let ops = [
        Op::Set(1, 1),
        Op::Get(1),
        Op::Post(1, 9),
        Op::Del(1),
        Op::Del(1),
        Op::Get(1),
    ];
    let replies: Vec<_> = client
        .batch(&ops, Duration::from_secs(5))
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        replies,
        vec![
            Reply::Done,
            Reply::Value(Some(1)),
            Reply::Inserted(false),
            Reply::Deleted(true),
            Reply::Deleted(false),
            Reply::Value(None)
        ]
    );
    let e = client.get_entry(&(7 + (1 << 40))).unwrap().unwrap();
    assert_eq!(e.value, 7);
    assert!(e.version > 0 && e.modified_ns > 0);
}

/// Job files are judged line by line: binary garbage or an enormous line
/// is that line's error (quoted in at most ~80 characters), the other
/// lines still run, and `run` exits 1 to say something went wrong.
#[test]
fn job_files_report_bad_lines_one_by_one_and_exit_1() {
    let name = unique_name("jobs-garbage");
    let _server = ServerGuard::start(&name, &[]);
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("mixed.job");
    let mut bytes = b"WRITE [(a,1)]\n".to_vec();
    bytes.extend_from_slice(b"\xff\xfe\x00\x01garbage\x80\n");
    bytes.extend_from_slice(format!("FROB {}\n", "x".repeat(1 << 20)).as_bytes());
    bytes.extend_from_slice(b"READ [a]\n");
    std::fs::write(&job, &bytes).unwrap();
    let out = kvs_client(&name, &["run", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let written = std::fs::read_to_string(dir.path().join("mixed.out")).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert!(
        lines[0].starts_with("error: line 2: the line is not valid UTF-8"),
        "{written}"
    );
    assert!(
        lines[1].starts_with("error: line 3: unknown command"),
        "{written}"
    );
    assert_eq!(lines[2], "[(a,1)]");
    assert!(
        lines.iter().all(|l| l.len() < 300),
        "an error line repeats its input: {}",
        lines[1].len()
    );
    assert!(stderr(&out).lines().all(|l| l.len() < 400));
    assert!(
        stdout(&out).contains("2 lines in error"),
        "{}",
        stdout(&out)
    );
}

/// `run` exits 0 only when everything succeeded; a job whose every write
/// is refused (the store is full) exits 1 and says so.
#[test]
fn job_run_exit_code_reflects_failed_operations() {
    let name = unique_name("jobs-exit");
    let _server = ServerGuard::start(&name, &["--max-entries", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let ok = dir.path().join("ok.job");
    std::fs::write(&ok, "WRITE [(a,1)]\nREAD [a,missing]\n").unwrap();
    let out = kvs_client(&name, &["run", ok.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let full = dir.path().join("full.job");
    std::fs::write(&full, "WRITE [(b,1)(c,2)]\n").unwrap();
    let out = kvs_client(&name, &["run", full.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("2 failed operations"),
        "{}",
        stdout(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

/// A FIFO or a device given as a job file is named for what it is, at once
/// (no hang opening a FIFO, no endless read of /dev/zero).
#[test]
fn a_fifo_or_a_device_is_not_a_job_file() {
    let name = unique_name("jobs-fifo");
    let _server = ServerGuard::start(&name, &[]);
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.job");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for path in [fifo.to_str().unwrap(), "/dev/zero"] {
        let out = kvs_client(&name, &["run", path]);
        assert_eq!(out.status.code(), Some(2), "{path}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("not a job file"),
            "{path}: {}",
            stderr(&out)
        );
    }
}

/// One rule for keys everywhere: a key is 1 to --max-key-size bytes of
/// any kind. The empty key is refused by the command line, job files and
/// the gateway alike; keys with control characters are stored (job files,
/// a text format, cannot spell them).
#[test]
fn keys_follow_one_rule_everywhere() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    let name = unique_name("keyrule");
    let _server = ServerGuard::start(&name, &[]);
    for args in [
        vec![
            OsString::from("set"),
            OsString::from(""),
            OsString::from("v"),
        ],
        vec![OsString::from("get"), OsString::from("")],
    ] {
        let out = kvs_client(&name, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("must not be empty"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert_eq!(stderr(&out).lines().count(), 1);
    }
    for odd in [
        b"a\x1b[31m".to_vec(),
        b"two\nlines".to_vec(),
        b"tab\there".to_vec(),
        b"\xff\xfe not utf-8".to_vec(),
    ] {
        let key = OsString::from_vec(odd.clone());
        let out = kvs_client(
            &name,
            &[OsString::from("set"), key.clone(), OsString::from("v")],
        );
        assert_eq!(out.status.code(), Some(0), "{odd:?}: {}", stderr(&out));
        let out = kvs_client(&name, &[OsString::from("get"), key]);
        assert_eq!(stdout(&out), "v", "{odd:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("keys.job");
    std::fs::write(&job, "WRITE [(,v)]\nWRITE [(ok,v)]\n").unwrap();
    let out = kvs_client(&name, &["run", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let written = std::fs::read_to_string(dir.path().join("keys.out")).unwrap();
    assert!(written.contains("empty key"), "{written}");
    let gw = common::gateway::Gateway::start(&name, &[]);
    let a = common::gateway::post_json(
        &gw.url("/set"),
        &serde_json::json!({"key": "", "value": "v"}),
    );
    assert_eq!(a.status, 400, "{a:?}");
    let a = common::gateway::post_json(
        &gw.url("/set"),
        &serde_json::json!({"key": "a\u{1b}b", "value": "v"}),
    );
    assert_eq!(a.status, 200, "{a:?}");
    let status = status_json(&name);
    assert_eq!(
        status["entries"], 6,
        "every key but the empty one was stored"
    );
}

/// Text stored by other means (a library client may store any UTF-8) is
/// printed by `list` and `watch` with control characters escaped: one line
/// per entry, and nothing that drives the terminal.
#[test]
fn list_and_watch_never_print_control_characters_raw() {
    let name = unique_name("escape");
    let _server = ServerGuard::start(&name, &[]);
    let client = KVSClient::<TextKey, Value256>::connect(&name).unwrap();
    let mut watch = kvs_client_command::<&str>(&[], &name, &["watch"]);
    let mut watcher = watch.spawn().unwrap();
    let stdout_pipe = watcher.stdout.take().unwrap();
    let mut watcher = Children(vec![watcher]);
    std::thread::sleep(Duration::from_millis(300));
    client
        .set(&key("evil\u{1b}[2J"), &val("two\nlines\tand\u{7}bell"))
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout_pipe)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("watch printed nothing");
    assert!(!line.chars().any(char::is_control), "{line:?}");
    assert!(
        line.contains("evil\\u{1b}[2J") && line.contains("two\\nlines\\tand\\u{7}bell"),
        "{line}"
    );
    let _ = watcher.0[0].kill();
    let out = kvs_client(&name, &["list", "--no-header"]);
    let listed = stdout(&out);
    assert_eq!(listed.lines().count(), 1, "{listed:?}");
    assert!(
        !listed
            .trim_end()
            .chars()
            .any(|c| c.is_control() && c != '\t'),
        "{listed:?}"
    );
}

/// `status` needs no registration: it works when every one is taken.
#[test]
fn status_works_when_every_registration_is_taken() {
    let name = unique_name("status-full");
    let _server = ServerGuard::start(&name, &["--max-clients", "1"]);
    let holder = KVSClient::<TextKey, Value256>::connect(&name).unwrap();
    holder.set(&key("k"), &val("v")).unwrap();
    let out = kvs_client(&name, &["set", "x", "y"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no free client registration"),
        "{}",
        stderr(&out)
    );
    let status = status_json(&name);
    assert_eq!(status["entries"], 1);
    assert_eq!(status["clients"], 1);
    drop(holder);
}

/// Batches of many clients at once, together far more than the server has
/// response slots: a client holding answers it has not collected never
/// waits for a slot (it collects one first), so nobody stalls until the
/// deadline, and every op succeeds.
#[test]
fn batches_of_many_clients_share_few_slots_without_stalling() {
    let name = unique_name("batch-slots");
    let mut server = KVSServer::<u64, u64>::builder(&name)
        .slots(64)
        .ring_capacity(64)
        .build()
        .unwrap();
    server.start(2).unwrap();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let name = &name;
            s.spawn(move || {
                let client = KVSClient::<u64, u64>::connect(name).unwrap();
                let ops: Vec<kvs::Op<u64, u64>> =
                    (0..3000).map(|i| kvs::Op::Set(t << 32 | i, i)).collect();
                for r in client.batch(&ops, Duration::from_secs(60)) {
                    r.unwrap();
                }
            });
        }
    });
    eprintln!("8 batches of 3000 over 64 slots took {:?}", start.elapsed());
    assert_eq!(server.storage_size(), 24_000);
}

/// `watch` started with SIGINT ignored (as a script's background job
/// inherits it) still ends on SIGINT, and on SIGTERM, exiting 0.
#[test]
fn watch_ends_on_sigint_and_sigterm_even_when_started_ignoring_them() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::os::unix::process::CommandExt;
    let name = unique_name("watch-sig");
    let _server = ServerGuard::start(&name, &[]);
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        let mut watch = kvs_client_command::<&str>(&[], &name, &["watch"]);
        // SAFETY: between fork and exec only `signal` runs, which is
        // async-signal-safe; it sets what a background job inherits.
        unsafe {
            watch.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                libc::signal(libc::SIGTERM, libc::SIG_IGN);
                Ok(())
            });
        }
        let watcher = watch.spawn().unwrap();
        let pid = watcher.id();
        let mut watcher = Children(vec![watcher]);
        // Until it is subscribed (it then says so on stderr; give it time).
        std::thread::sleep(Duration::from_millis(500));
        kill(Pid::from_raw(pid as i32), signal).unwrap();
        let give_up = std::time::Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(s) = watcher.0[0].try_wait().unwrap() {
                break s;
            }
            assert!(
                std::time::Instant::now() < give_up,
                "watch ignored {signal:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(0), "after {signal:?}");
    }
}

/// Counts read as English, and the region is named one way everywhere
/// ("region NAME"): the ready line, status, bench and watch.
#[test]
fn messages_count_in_english_and_name_the_region_one_way() {
    let name = unique_name("grammar");
    let server = ServerGuard::start(&name, &["--workers", "1", "--subscribers", "1"]);
    assert!(
        server.ready_line.contains(&format!("region {name} "))
            && server.ready_line.contains(", 1 worker, "),
        "{}",
        server.ready_line
    );
    assert!(kvs_client(&name, &["set", "a", "1"]).status.success());
    let status = stdout(&kvs_client(&name, &["status"]));
    assert!(status.contains("entries       1 (no limit)"), "{status}");
    assert!(
        status.starts_with(&format!("region        {name} ")),
        "{status}"
    );
    let bench = kvs_client(
        &name,
        &[
            "bench",
            "--ops",
            "100",
            "--keys",
            "10",
            "--no-progress",
            "--remove-keys",
        ],
    );
    let header = stdout(&bench);
    assert!(
        header.contains(&format!("region {name}, 1 client process x 1 thread,"))
            && header.contains("1 worker on the server"),
        "{header}"
    );
    let mut watch = kvs_client_command::<&str>(&[], &name, &["watch", "a"]);
    watch.stderr(std::process::Stdio::piped());
    let mut watcher = watch.spawn().unwrap();
    let err = watcher.stderr.take().unwrap();
    let mut watcher = Children(vec![watcher]);
    // One line (stderr is unbuffered: it may come in pieces).
    let mut said = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(err), &mut said).unwrap();
    assert!(
        said.starts_with(&format!("watching 1 key of region {name} ")),
        "{said}"
    );
    // The one subscription is taken: the message names the flag.
    let second = kvs_client(&name, &["watch"]);
    assert_eq!(second.status.code(), Some(2));
    assert!(
        stderr(&second).contains("the one subscription is in use")
            && stderr(&second).contains("kvs_server --subscribers"),
        "{}",
        stderr(&second)
    );
    let _ = watcher.0[0].kill();
}
