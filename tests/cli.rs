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

/// Entry point of the child processes of these tests (see `spawn_self`);
/// does nothing when run as an ordinary test.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var("KVS_CHILD_ROLE") else {
        return;
    };
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
    let server = ServerGuard::start(&name, &[]);
    assert!(server.ready_line.contains(&name), "{}", server.ready_line);

    let o = kvs_client(&name, &["set", "greeting", "hello world"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = kvs_client(&name, &["get", "greeting"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "hello world\n");

    let o = kvs_client(&name, &["get", "absent"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).is_empty());
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));

    let o = kvs_client(&name, &["post", "greeting", "other"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"));
    assert_eq!(
        stdout(&kvs_client(&name, &["get", "greeting"])),
        "hello world\n"
    );

    let o = kvs_client(&name, &["post", "fresh", "v1"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&kvs_client(&name, &["get", "fresh"])), "v1\n");

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
        stderr(&o).contains("key is 64 bytes, the limit is 63"),
        "{}",
        stderr(&o)
    );
    let o = kvs_client(&name, &["set", "k", &"v".repeat(256)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("value is 256 bytes, the limit is 255"),
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
        "--value-size",
        "--max-entries",
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
fn larger_value_class_is_read_from_the_header() {
    let name = unique_name("valueclass");
    let _server = ServerGuard::start(&name, &["--value-size", "4000"]);
    let long = "x".repeat(4000);
    let o = kvs_client(&name, &["set", "big", &long]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&kvs_client(&name, &["get", "big"])).trim_end(), long);
    let o = kvs_client(&name, &["set", "big", &"x".repeat(4096)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("limit is 4095"), "{}", stderr(&o));
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
    assert_eq!(
        status["ops"]["get"].as_u64().unwrap()
            + status["ops"]["set"].as_u64().unwrap()
            + status["ops"]["del"].as_u64().unwrap(),
        80_000
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

    let start = Instant::now();
    let err = client
        .get_timeout(&1, Duration::from_millis(50))
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
    assert_eq!(client.get(&1).unwrap(), Some(10));
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
