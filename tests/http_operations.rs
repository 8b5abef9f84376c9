//! The gateway's expiry, counter, compare-and-set, batch and stats
//! endpoints, against a real `kvs_server` and `kvs_http`, with another
//! process (`kvs_client`) observing what they do.

mod common;

use common::gateway::*;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// Retries `check` until it holds or `within` passes.
fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn expiry_over_http_is_seen_by_another_process() {
    let name = unique_name("http-ttl");
    let _server = ServerGuard::start(&name, &[]);
    let gw = Gateway::start(&name, &[]);

    let set = post_json(
        &gw.url("/set"),
        &json!({"key": "session", "value": "alice", "ttl_ms": 600}),
    );
    assert_eq!(set.status, 200, "{set:?}");
    assert_eq!(set.json(), json!({"key": "session", "value": "alice"}));
    let entry = get(&gw.url("/get/session")).json();
    let expires = entry["expires_ms"].as_u64().expect("expires_ms");
    let modified = entry["modified_ms"].as_u64().unwrap();
    // The deadline is taken by the gateway before the worker writes the
    // entry (its modified time): a little under 600 ms after it.
    assert!(
        (modified + 200..=modified + 700).contains(&expires),
        "{entry}"
    );
    let ttl = get(&gw.url("/ttl/session")).json();
    assert!(ttl["ttl_ms"].as_u64().unwrap() <= 600, "{ttl}");
    assert_eq!(ttl["expires_ms"], expires);
    // Another process sees the deadline, then the key gone.
    let out = kvs_client(&name, &["ttl", "session"]);
    assert!(out.status.success(), "{out:?}");
    assert!(eventually(Duration::from_secs(5), || {
        get(&gw.url("/get/session")).status == 404
    }));
    assert!(!kvs_client(&name, &["get", "session"]).status.success());
    assert_eq!(get(&gw.url("/ttl/session")).status, 404);

    // EXPIRE and PERSIST; a persistent key has no TTL.
    assert_eq!(
        post_json(&gw.url("/set"), &json!({"key": "k", "value": "v"})).status,
        200
    );
    assert_eq!(
        get(&gw.url("/ttl?key=k")).json(),
        json!({"key": "k", "ttl_ms": null, "expires_ms": null})
    );
    assert!(get(&gw.url("/get/k")).json().get("expires_ms").is_none());
    let e = post_json(&gw.url("/expire"), &json!({"key": "k", "ttl_ms": 60_000}));
    assert_eq!(e.status, 200, "{e:?}");
    assert_eq!(e.json()["ttl_ms"], 60_000);
    let out = kvs_client(&name, &["ttl", "k"]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains('s'), "kvs_client ttl printed {printed:?}");
    let p = post_json(&gw.url("/persist"), &json!({"key": "k"}));
    assert_eq!(p.status, 200, "{p:?}");
    assert_eq!(p.json()["ttl_ms"], serde_json::Value::Null);
    assert_eq!(
        get(&gw.url("/ttl/k")).json()["ttl_ms"],
        serde_json::Value::Null
    );

    // Errors: absent keys, a zero TTL, a bad body.
    let absent = post_json(&gw.url("/expire"), &json!({"key": "nope", "ttl_ms": 10}));
    assert_eq!(absent.status, 404);
    assert_eq!(
        post_json(&gw.url("/persist"), &json!({"key": "nope"})).status,
        404
    );
    let zero = post_json(&gw.url("/expire"), &json!({"key": "k", "ttl_ms": 0}));
    assert_eq!(zero.status, 400, "{zero:?}");
    assert!(zero.error().contains("TTL"), "{}", zero.error());
    let zero = post_json(
        &gw.url("/set"),
        &json!({"key": "k", "value": "v", "ttl_ms": 0}),
    );
    assert_eq!(zero.status, 400, "{zero:?}");
    assert_eq!(
        post_json(&gw.url("/expire"), &json!({"key": "k"})).status,
        400
    );
    assert_eq!(
        post_json(&gw.url("/expire"), &json!({"key": "", "ttl_ms": 5})).status,
        400
    );
}

#[test]
fn counters_over_http() {
    let name = unique_name("http-incr");
    let _server = ServerGuard::start(&name, &[]);
    let gw = Gateway::start(&name, &[]);

    let one = post_json(&gw.url("/incr"), &json!({"key": "hits"}));
    assert_eq!(one.status, 200, "{one:?}");
    assert_eq!(one.json(), json!({"key": "hits", "value": 1}));
    let down = post_json(&gw.url("/incr"), &json!({"key": "hits", "delta": -11}));
    assert_eq!(down.json()["value"], -10);
    // The same counter from another process, and its decimal value.
    let out = kvs_client(&name, &["incr", "hits", "3"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "-7");
    assert_eq!(get(&gw.url("/get/hits")).json()["value"], "-7");

    // Not an integer, and overflow: 422, nothing changed.
    post_json(&gw.url("/set"), &json!({"key": "word", "value": "ten"}));
    let bad = post_json(&gw.url("/incr"), &json!({"key": "word"}));
    assert_eq!(bad.status, 422, "{bad:?}");
    assert!(bad.error().contains("integer"), "{}", bad.error());
    post_json(
        &gw.url("/set"),
        &json!({"key": "big", "value": i64::MAX.to_string()}),
    );
    let over = post_json(&gw.url("/incr"), &json!({"key": "big"}));
    assert_eq!(over.status, 422, "{over:?}");
    assert_eq!(
        get(&gw.url("/get/big")).json()["value"],
        i64::MAX.to_string()
    );
    let not_a_number = post_json(&gw.url("/incr"), &json!({"key": "hits", "delta": "x"}));
    assert_eq!(not_a_number.status, 400);
}

#[test]
fn compare_and_set_over_http() {
    let name = unique_name("http-cas");
    let _server = ServerGuard::start(&name, &[]);
    let gw = Gateway::start(&name, &[]);

    // 0: only if absent.
    let first = post_json(
        &gw.url("/set"),
        &json!({"key": "lock", "value": "a", "if_version": 0}),
    );
    assert_eq!(first.status, 200, "{first:?}");
    let v1 = first.json()["version"].as_u64().expect("version");
    let lost = post_json(
        &gw.url("/set"),
        &json!({"key": "lock", "value": "b", "if_version": 0}),
    );
    assert_eq!(lost.status, 412, "{lost:?}");
    assert_eq!(lost.json()["version"], v1);
    assert!(lost.error().contains(&format!("version {v1}")));
    assert_eq!(get(&gw.url("/get/lock")).json()["value"], "a");

    // The version read wins once.
    let won = post_json(
        &gw.url("/set"),
        &json!({"key": "lock", "value": "c", "if_version": v1, "ttl_ms": 60_000}),
    );
    assert_eq!(won.status, 200, "{won:?}");
    let v2 = won.json()["version"].as_u64().unwrap();
    assert!(v2 > v1);
    assert!(get(&gw.url("/get/lock")).json()["expires_ms"].is_u64());
    let again = post_json(
        &gw.url("/set"),
        &json!({"key": "lock", "value": "d", "if_version": v1}),
    );
    assert_eq!(again.status, 412);
    // Another process changes it: the gateway's CAS on the old version
    // loses.
    assert!(kvs_client(&name, &["set", "lock", "e"]).status.success());
    let stale = delete(&gw.url(&format!("/del/lock?if_version={v2}")));
    assert_eq!(stale.status, 412, "{stale:?}");
    let v3 = stale.json()["version"].as_u64().unwrap();
    assert!(v3 > v2);
    let del = delete(&gw.url(&format!("/del?key=lock&if_version={v3}")));
    assert_eq!(del.status, 200, "{del:?}");
    assert_eq!(get(&gw.url("/get/lock")).status, 404);
    assert_eq!(delete(&gw.url("/del/lock?if_version=5")).status, 404);
    // Absent and a version asked for: 412 with version 0.
    let absent = post_json(
        &gw.url("/set"),
        &json!({"key": "lock", "value": "f", "if_version": 9}),
    );
    assert_eq!(absent.status, 412);
    assert_eq!(absent.json()["version"], 0);
    assert_eq!(delete(&gw.url("/del/lock?if_version=x")).status, 400);
}

#[test]
fn batches_over_http() {
    let name = unique_name("http-batch");
    let _server = ServerGuard::start(&name, &[]);
    let gw = Gateway::start(&name, &[]);

    // Ten thousand entries in one call.
    let entries: Vec<serde_json::Value> = (0..10_000)
        .map(|i| json!({"key": format!("b:{i}"), "value": format!("value {i}")}))
        .collect();
    let set = post_json(&gw.url("/mset"), &json!({ "entries": entries }));
    assert_eq!(set.status, 200, "{set:?}");
    assert_eq!(set.json(), json!({"written": 10_000}));
    let out = kvs_client(&name, &["get", "b:9999"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "value 9999");

    let keys: Vec<String> = (0..10_000).map(|i| format!("b:{i}")).collect();
    let mut asked = keys.clone();
    asked.push("absent".into());
    let got = post_json(&gw.url("/mget"), &json!({ "keys": asked }));
    assert_eq!(got.status, 200);
    let found = got.json()["entries"].as_array().unwrap().clone();
    assert_eq!(found.len(), 10_001);
    assert_eq!(found[42]["key"], "b:42");
    assert_eq!(found[42]["value"], "value 42");
    assert!(found[42]["version"].as_u64().unwrap() >= 1);
    assert!(found[10_000].is_null());

    // Binary keys in base64; a TTL for the whole batch.
    let set = post_json(
        &gw.url("/mset"),
        &json!({"entries": [{"key_base64": "/w==", "value_base64": "/wA="}], "ttl_ms": 60_000}),
    );
    assert_eq!(set.status, 200, "{set:?}");
    let got = post_json(&gw.url("/mget"), &json!({"keys_base64": ["/w=="]})).json();
    assert_eq!(got["entries"][0]["key_base64"], "/w==");
    assert_eq!(got["entries"][0]["value_base64"], "/wA=");
    assert!(got["entries"][0]["expires_ms"].is_u64());

    let mut doomed = keys[..5_000].to_vec();
    doomed.push("absent".into());
    let del = post_json(&gw.url("/mdel"), &json!({ "keys": doomed }));
    assert_eq!(del.status, 200, "{del:?}");
    assert_eq!(del.json(), json!({"removed": 5_000}));
    assert!(!kvs_client(&name, &["get", "b:0"]).status.success());

    // Refusals: both lists, neither, an empty key, too many keys, a value
    // over the limit (nothing written then).
    for bad in [
        json!({"keys": ["a"], "keys_base64": ["YQ=="]}),
        json!({}),
        json!({"keys": [""]}),
        json!({"keys_base64": ["not base64"]}),
    ] {
        let a = post_json(&gw.url("/mget"), &bad);
        assert_eq!(a.status, 400, "{bad}: {a:?}");
    }
    let many: Vec<String> = (0..100_001).map(|i| i.to_string()).collect();
    let a = post_json(&gw.url("/mdel"), &json!({ "keys": many }));
    assert_eq!(a.status, 413, "{a:?}");
    let huge = "x".repeat(2 << 20);
    let a = post_json(
        &gw.url("/mset"),
        &json!({"entries": [{"key": "ok", "value": "1"}, {"key": "huge", "value": huge}]}),
    );
    assert_eq!(a.status, 413, "{a:?}");
    assert_eq!(get(&gw.url("/get/ok")).status, 404);
}

#[test]
fn events_carry_deadlines_and_stats_draw_the_last_minutes() {
    let name = unique_name("http-stats");
    let _server = ServerGuard::start(&name, &[]);
    let gw = Gateway::start(&name, &[]);
    let mut events = EventStream::open(&gw.url("/events"), &[]);
    assert_eq!(events.next().0, "ready");
    assert!(kvs_client(&name, &["set", "t", "v", "--ttl", "1m"])
        .status
        .success());
    let change = events.next_named("change");
    assert_eq!(change["key"], "t");
    let expires = change["expires_ms"].as_u64().expect("expires_ms");
    assert!(expires > change["modified_ms"].as_u64().unwrap() + 50_000);
    assert!(kvs_client(&name, &["set", "p", "v"]).status.success());
    assert!(events.next_named("change").get("expires_ms").is_none());

    // Work for the sampler to see, then at least two samples.
    for i in 0..200 {
        post_json(&gw.url("/incr"), &json!({"key": "n", "delta": i}));
    }
    let mut stats = serde_json::Value::Null;
    assert!(eventually(Duration::from_secs(10), || {
        stats = get(&gw.url("/stats")).json();
        // A sample taken after the work: it sees all three keys, and a
        // rate.
        stats["samples"]
            .as_array()
            .and_then(|s| s.last())
            .is_some_and(|x| x["entries"] == 3 && x["ops_per_s"].is_number())
    }));
    assert_eq!(stats["interval_ms"], 1000);
    let samples = stats["samples"].as_array().unwrap();
    let last = samples.last().unwrap();
    assert!(last["memory_used"].as_u64().unwrap() > 0, "{last}");
    assert!(last["max_memory"].as_u64().unwrap() >= last["memory_used"].as_u64().unwrap());
    assert_eq!(last["entries"], 3);
    // Only what is new after a time.
    let t = last["t_ms"].as_u64().unwrap();
    let newer = get(&gw.url(&format!("/stats?since={t}"))).json();
    assert!(newer["samples"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["t_ms"].as_u64().unwrap() > t));
    assert_eq!(get(&gw.url("/stats?since=soon")).status, 400);
}
