//! Expiry, counters and compare-and-set across processes, through the real
//! `kvs_server` and `kvs_client` binaries and the library.

mod common;

use common::*;
use kvs::{Cas, ChangeEvent, ClientError, KVSClient, Ttl};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Client = KVSClient<Vec<u8>, Vec<u8>>;

/// Child processes of these tests (see `spawn_self`); ignored in ordinary
/// runs.
#[test]
#[ignore = "the entry point of child processes, run through spawn_self"]
fn child_entry() {
    let role =
        std::env::var("KVS_CHILD_ROLE").expect("child_entry runs only as a child (KVS_CHILD_ROLE)");
    let name = std::env::var("KVS_TEST_REGION").unwrap();
    let rounds: i64 = std::env::var("KVS_CHILD_ROUNDS").unwrap().parse().unwrap();
    let client = Client::connect(&name).unwrap();
    match role.as_str() {
        // INCR the shared counter `rounds` times.
        "incr" => {
            for _ in 0..rounds {
                client.incr(&b"counter".to_vec(), 1).unwrap();
            }
        }
        // Read-modify-write the shared token with compare-and-set until
        // it reaches `rounds`; print how many of the writes were ours.
        "cas" => {
            let key = b"token".to_vec();
            let mut won = 0u64;
            loop {
                let e = client.get_entry(&key).unwrap().expect("the token exists");
                let n: i64 = String::from_utf8(e.value).unwrap().parse().unwrap();
                if n >= rounds {
                    break;
                }
                let next = (n + 1).to_string().into_bytes();
                match client.set_if_version(&key, &next, e.version).unwrap() {
                    Cas::Done(_) => won += 1,
                    Cas::Conflict(current) => assert_ne!(current, e.version),
                }
            }
            println!("\nwon {won}");
        }
        // Write `rounds` keys of one length with 200-byte values; every
        // write must succeed (the server evicts to make room).
        "fill" => {
            let me = std::process::id();
            for i in 0..rounds {
                let key = format!("w{me:07}:{i:06}").into_bytes();
                client.set(&key, &vec![b'x'; 200]).unwrap();
            }
        }
        other => panic!("unknown role {other}"),
    }
}

fn children(name: &str, role: &str, n: usize, rounds: i64) -> Children {
    Children(
        (0..n)
            .map(|_| {
                spawn_self(
                    "child_entry",
                    &[
                        ("KVS_CHILD_ROLE", role.to_string()),
                        ("KVS_TEST_REGION", name.to_string()),
                        ("KVS_CHILD_ROUNDS", rounds.to_string()),
                    ],
                )
            })
            .collect(),
    )
}

/// Waits for every child, returns their stdouts; each must succeed.
fn wait_all(mut kids: Children) -> Vec<String> {
    let mut outs = Vec::new();
    for child in kids.0.drain(..) {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "a child failed: {out:?}");
        outs.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    outs
}

/// A key set with a TTL by one process is seen by another (a direct read)
/// until its deadline and not after, at once; the server's sweep removes
/// it (counted in `status`, reported to subscribers as an expiry), and a
/// plain SET clears a TTL while INCR keeps it.
#[test]
fn expiry_is_seen_by_other_processes_and_swept() {
    let name = unique_name("expiry");
    let _server = ServerGuard::start(&name, &["--no-keeper"]);
    let client = Arc::new(Client::connect(&name).unwrap());
    let mut sub = client.subscribe(&[b"short".to_vec()]).unwrap();
    client
        .set_with_ttl(
            &b"short".to_vec(),
            &b"v".to_vec(),
            Duration::from_millis(400),
        )
        .unwrap();
    let set_at = Instant::now();
    let out = kvs_client(&name, &["get", "short"]);
    if set_at.elapsed() < Duration::from_millis(350) {
        assert_eq!(stdout(&out), "v", "{out:?}");
    }
    match client.ttl(&b"short".to_vec()).unwrap() {
        Some(Ttl::Expires(left)) => assert!(left <= Duration::from_millis(400), "{left:?}"),
        other => panic!("{other:?}"),
    }
    std::thread::sleep(Duration::from_millis(450).saturating_sub(set_at.elapsed()));
    // Past the deadline: absent for another process at once, whether or
    // not the sweep has run.
    let out = kvs_client(&name, &["get", "short"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(client.get(&b"short".to_vec()).unwrap(), None);
    // The sweep removes it and says so.
    let mut expired_event = false;
    let limit = Instant::now() + Duration::from_secs(3);
    while Instant::now() < limit && !expired_event {
        if let Some(ChangeEvent::Expired { key, .. }) =
            sub.next_timeout(Duration::from_millis(200)).unwrap()
        {
            assert_eq!(key, b"short");
            expired_event = true;
        }
    }
    assert!(expired_event, "no expiry event within 3 s");
    assert_eq!(status_json(&name)["expired"], 1);
    assert_eq!(status_json(&name)["entries"], 0);

    // SET clears a TTL; INCR keeps it; PERSIST removes it.
    let k = b"n".to_vec();
    client
        .set_with_ttl(&k, &b"1".to_vec(), Duration::from_secs(60))
        .unwrap();
    assert_eq!(client.incr(&k, 2).unwrap(), 3);
    assert!(matches!(client.ttl(&k).unwrap(), Some(Ttl::Expires(_))));
    assert!(client.persist(&k).unwrap());
    assert_eq!(client.ttl(&k).unwrap(), Some(Ttl::Persistent));
    assert!(client.expire(&k, Duration::from_secs(60)).unwrap());
    client.set(&k, &b"5".to_vec()).unwrap();
    assert_eq!(client.ttl(&k).unwrap(), Some(Ttl::Persistent));
    assert!(!client
        .expire(&b"absent".to_vec(), Duration::from_secs(1))
        .unwrap());
    assert_eq!(client.ttl(&b"absent".to_vec()).unwrap(), None);
    assert!(matches!(
        client.set_with_ttl(&k, &b"x".to_vec(), Duration::ZERO),
        Err(ClientError::InvalidArgument(_))
    ));
}

/// An expired key is absent for writes too: POST inserts over it, INCR
/// starts from 0, a conditional write expects version 0.
#[test]
fn an_expired_key_is_absent_for_every_op() {
    let name = unique_name("expired-ops");
    let _server = ServerGuard::start(&name, &["--no-keeper"]);
    let client = Client::connect(&name).unwrap();
    let short = Duration::from_millis(50);
    for k in ["p", "i", "c"] {
        client
            .set_with_ttl(&k.as_bytes().to_vec(), &b"7".to_vec(), short)
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(80));
    assert!(client.post(&b"p".to_vec(), &b"new".to_vec()).unwrap());
    assert_eq!(client.incr(&b"i".to_vec(), 5).unwrap(), 5);
    assert!(matches!(
        client
            .set_if_version(&b"c".to_vec(), &b"x".to_vec(), 0)
            .unwrap(),
        Cas::Done(_)
    ));
    assert_eq!(client.ttl(&b"p".to_vec()).unwrap(), Some(Ttl::Persistent));
}

/// Eight processes incrementing one counter reach the exact total, and
/// `kvs_client incr` and `get` agree with the library on the encoding.
#[test]
fn eight_processes_incrementing_one_counter_reach_the_exact_total() {
    let name = unique_name("incr");
    let _server = ServerGuard::start(&name, &["--no-keeper"]);
    let kids = children(&name, "incr", 8, 200);
    wait_all(kids);
    let client = Client::connect(&name).unwrap();
    assert_eq!(
        client.get_counter(&b"counter".to_vec()).unwrap(),
        Some(1600)
    );
    let out = kvs_client(&name, &["incr", "counter", "-600"]);
    assert_eq!(stdout(&out).trim(), "1000", "{out:?}");
    let out = kvs_client(&name, &["get", "counter"]);
    assert_eq!(stdout(&out), "1000");
}

/// INCR of a value that is not a counter, and past i64, fail clearly and
/// change nothing.
#[test]
fn incr_refuses_what_is_not_a_counter_and_overflow() {
    let name = unique_name("incr-errors");
    let _server = ServerGuard::start(&name, &["--no-keeper"]);
    let client = Client::connect(&name).unwrap();
    for bad in ["hello", "007", "+1", "1.5", " 1", ""] {
        client
            .set(&b"k".to_vec(), &bad.as_bytes().to_vec())
            .unwrap();
        let before = client.get_entry(&b"k".to_vec()).unwrap().unwrap();
        assert!(
            matches!(client.incr(&b"k".to_vec(), 1), Err(ClientError::NotInteger)),
            "{bad:?}"
        );
        assert_eq!(client.get_entry(&b"k".to_vec()).unwrap().unwrap(), before);
    }
    client
        .set(&b"k".to_vec(), &i64::MAX.to_string().into_bytes())
        .unwrap();
    assert!(matches!(
        client.incr(&b"k".to_vec(), 1),
        Err(ClientError::Overflow)
    ));
    assert_eq!(client.incr(&b"k".to_vec(), -1).unwrap(), i64::MAX - 1);
    let out = kvs_client(&name, &["set", "s", "text"]);
    assert!(out.status.success());
    let out = kvs_client(&name, &["incr", "s"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("not an integer"), "{out:?}");
}

/// Four processes racing read-modify-writes with compare-and-set: every
/// version has exactly one winner, so the wins add up to the final value.
#[test]
fn a_cas_race_has_exactly_one_winner_per_round() {
    let name = unique_name("cas");
    let _server = ServerGuard::start(&name, &["--no-keeper"]);
    let client = Client::connect(&name).unwrap();
    client.set(&b"token".to_vec(), &b"0".to_vec()).unwrap();
    let rounds = 300;
    let outs = wait_all(children(&name, "cas", 4, rounds));
    let won: u64 = outs
        .iter()
        .map(|o| {
            o.lines()
                .find_map(|l| l.strip_prefix("won "))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no tally in {o:?}"))
        })
        .sum();
    assert_eq!(won, rounds as u64);
    assert_eq!(
        client.get(&b"token".to_vec()).unwrap(),
        Some(rounds.to_string().into_bytes())
    );
}

/// Conditional writes and deletes, in the library and the CLI.
#[test]
fn conditional_writes_compare_the_version() {
    let name = unique_name("cas-cli");
    let _server = ServerGuard::start(&name, &["--no-keeper"]);
    let client = Client::connect(&name).unwrap();
    let k = b"k".to_vec();
    assert!(matches!(
        client.set_if_version(&k, &b"a".to_vec(), 0).unwrap(),
        Cas::Done(_)
    ));
    let v1 = client.get_entry(&k).unwrap().unwrap().version;
    assert_eq!(
        client.set_if_version(&k, &b"b".to_vec(), 0).unwrap(),
        Cas::Conflict(v1)
    );
    assert_eq!(
        client.del_if_version(&k, v1 + 1).unwrap(),
        Cas::Conflict(v1)
    );
    let (new, v2) = client
        .update(&k, |old| {
            let mut v = old.unwrap_or_default();
            v.push(b'!');
            v
        })
        .unwrap();
    assert_eq!(new, b"a!");
    assert!(v2 > v1);
    let out = kvs_client(&name, &["get", "k", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["value"], "a!");
    assert_eq!(json["version"], v2);
    assert_eq!(json["expires_ms"], serde_json::Value::Null);
    let out = kvs_client(&name, &["set", "k", "c", "--if-version", &v1.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains(&format!("version {v2}")), "{out:?}");
    let out = kvs_client(&name, &["del", "k", "--if-version", &v2.to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(client.del_if_version(&k, v2).unwrap(), Cas::Conflict(0));
    let out = kvs_client(&name, &["set", "t", "x", "--ttl", "1h"]);
    assert!(out.status.success(), "{out:?}");
    let out = kvs_client(&name, &["get", "t", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(json["expires_ms"].as_u64().is_some(), "{json}");
    let out = kvs_client(&name, &["ttl", "t"]);
    assert!(stdout(&out).starts_with("59m"), "{out:?}");
}

/// Writers in three processes keep writing into a store far smaller than
/// what they write: with `--eviction allkeys-lru` every write succeeds,
/// memory stays within the limit, evictions are counted and reach a
/// subscriber, and the last keys written are there.
#[test]
fn eviction_keeps_memory_under_the_limit_while_writers_run() {
    let name = unique_name("evict");
    let _server = ServerGuard::start(
        &name,
        &[
            "--no-keeper",
            "--max-memory",
            "4MiB",
            "--eviction",
            "allkeys-lru",
        ],
    );
    let client = Arc::new(Client::connect(&name).unwrap());
    // The oldest write of all: sampled LRU evicts it long before the
    // writers are done (about 15,000 of the 60,000 entries fit).
    let old = b"the-oldest:0000".to_vec();
    client.set(&old, &vec![b'o'; 200]).unwrap();
    let mut sub = client.subscribe(std::slice::from_ref(&old)).unwrap();
    // 3 x 20,000 entries of ~256 bytes: about 15 MB into 4 MiB.
    wait_all(children(&name, "fill", 3, 20_000));
    let st = status_json(&name);
    let evicted = st["evicted"].as_u64().unwrap();
    let entries = st["entries"].as_u64().unwrap();
    assert!(
        st["memory_used"].as_u64().unwrap() <= 4 << 20,
        "memory over the limit: {st}"
    );
    assert!(evicted > 30_000, "{st}");
    assert_eq!(entries + evicted, 60_001, "{st}");
    match sub.next_timeout(Duration::from_secs(2)).unwrap() {
        Some(ChangeEvent::Evicted { key, .. }) => assert_eq!(key, old),
        other => panic!("expected the eviction of the oldest key, got {other:?}"),
    }
    assert_eq!(client.get(&old).unwrap(), None);
    let out = kvs_client(&name, &["status"]);
    assert!(
        stdout(&out).contains(&format!("evicted       {evicted}")),
        "{out:?}"
    );
}

/// The job-file verbs for expiry and counters, run by `kvs_client run`
/// against a store another process reads.
#[test]
fn job_files_expire_persist_ttl_and_incr() {
    let name = unique_name("ops-jobs");
    let _server = ServerGuard::start(&name, &[]);
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("ops.job");
    std::fs::write(
        &job,
        "WRITE [(a,1)(b,2)(word,ten)]\n\
         EXPIRE 1h [a,b,absent]\n\
         PERSIST [b,absent]\n\
         TTL [a,b,absent]\n\
         INCR [n,n,a]\n\
         INCR [(n,40)(a,-3)(word,1)]\n\
         EXPIRE 300ms [n]\n\
         WAIT 700\n\
         READ [a,n]\n\
         EXPIRE soon [a]\n",
    )
    .unwrap();
    let out = kvs_client(&name, &["run", job.to_str().unwrap()]);
    // The TTL line that cannot be read and the INCR of a word: exit 1.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let written = std::fs::read_to_string(dir.path().join("ops.out")).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(
        lines,
        [
            "[(absent,KVSMISSING)]",
            "[(absent,KVSMISSING)]",
            "[(a,3600s)(absent,KVSERROR)(b,none)]",
            "[(n,1)(n,2)(a,2)]",
            "[(n,42)(a,-1)(word,KVSERROR)]",
            "[(a,-1)(n,KVSERROR)]",
            "error: line 10: EXPIRE: \"soon\" is not a TTL: expected number at 0 (e.g. 30s, 5m, 250ms)",
        ],
        "{written}"
    );
    // Another process sees what the job left: a's TTL, n expired.
    let client = KVSClient::<String, String>::connect(&name).unwrap();
    assert!(matches!(
        client.ttl(&"a".to_string()).unwrap(),
        Some(Ttl::Expires(d)) if d > Duration::from_secs(3500)
    ));
    assert_eq!(client.ttl(&"b".to_string()).unwrap(), Some(Ttl::Persistent));
    assert_eq!(client.get(&"n".to_string()).unwrap(), None);
}
