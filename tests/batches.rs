//! One-request batches (MGET, MSET, MDEL) across processes, through the
//! real `kvs_server` and `kvs_client` binaries, the library, and raw
//! requests written into the region as any client process could.

mod common;

use common::*;
use kvs::core::batch::{self, Encoder};
use kvs::core::protocol::{OpCode, Request, StatusCode, MORE, VALUE_TOO_LARGE};
use kvs::core::region::Region;
use kvs::core::response_table::WaitOutcome;
use kvs::core::wait::{FutexParker, SpinPolicy};
use kvs::{ClientError, KVSClient, StoreLimit};
use std::time::{Duration, Instant};

type Client = KVSClient<Vec<u8>, Vec<u8>>;

fn k(i: usize) -> Vec<u8> {
    format!("key:{i:05}").into_bytes()
}

fn v(i: usize) -> Vec<u8> {
    format!("value {i}").into_bytes()
}

fn batch_requests(name: &str) -> u64 {
    status_json(name)["ops"]["batch"].as_u64().unwrap()
}

/// 10,000 keys written in one call travel as one request; another process
/// reads them back in one call, from the CLI too; deleting many is one
/// request again and counts what was there.
#[test]
fn ten_thousand_keys_in_one_request_each_way() {
    let name = unique_name("batch");
    let _server = ServerGuard::start(&name, &["--no-keeper"]);
    let client = Client::connect(&name).unwrap();
    let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..10_000).map(|i| (k(i), v(i))).collect();
    client.set_many(&entries).unwrap();
    assert_eq!(batch_requests(&name), 1, "one MSET for 10,000 keys");
    assert_eq!(status_json(&name)["entries"].as_u64(), Some(10_000));

    // Another process (a fresh client) reads them all, and two that are
    // absent, in order.
    let other = Client::connect(&name).unwrap();
    let mut keys: Vec<Vec<u8>> = (0..10_000).map(k).collect();
    keys.insert(5, b"absent-1".to_vec());
    keys.push(b"absent-2".to_vec());
    let got = other.get_many(&keys).unwrap();
    assert_eq!(got.len(), 10_002);
    assert_eq!(got[5], None);
    assert_eq!(got[10_001], None);
    assert_eq!(got[0].as_deref(), Some(&v(0)[..]));
    assert_eq!(got[10_000].as_deref(), Some(&v(9_999)[..]));
    let out = kvs_client(&name, &["mget", "key:00007", "nope", "key:09999"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "value 7\n(nil)\nvalue 9999\n");
    let out = kvs_client(&name, &["mget", "--json", "key:00001", "nope"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json[0]["value"], "value 1");
    assert!(json[1].is_null());

    // MDEL: half of them plus absent keys, one request, the count of
    // those present.
    let mut doomed: Vec<Vec<u8>> = (0..5_000).map(k).collect();
    doomed.push(b"absent".to_vec());
    assert_eq!(client.del_many(&doomed).unwrap(), 5_000);
    assert_eq!(batch_requests(&name), 2);
    assert_eq!(status_json(&name)["entries"].as_u64(), Some(5_000));
    assert_eq!(client.get(&k(1)).unwrap(), None);
    assert_eq!(client.get(&k(5_000)).unwrap(), Some(v(5_000)));

    // The CLI: mset with a TTL, mdel printing the count.
    let out = kvs_client(&name, &["mset", "--ttl", "1h", "a", "1", "b", "2"]);
    assert!(out.status.success(), "{out:?}");
    assert!(matches!(
        client.ttl(&b"a".to_vec()).unwrap(),
        Some(kvs::Ttl::Expires(_))
    ));
    let out = kvs_client(&name, &["mdel", "a", "b", "c"]);
    assert_eq!(stdout(&out), "2\n", "{out:?}");
    let out = kvs_client(&name, &["mset", "a"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// A batch larger than a staging buffer goes as a few requests and still
/// works in one call; a key the store refuses stops `set_many` there,
/// saying how many were written.
#[test]
fn large_batches_split_and_a_full_store_stops_at_the_refused_entry() {
    let name = unique_name("batchfull");
    let _server = ServerGuard::start(
        &name,
        &[
            "--no-keeper",
            "--max-entries",
            "100",
            "--max-value-size",
            "65536",
        ],
    );
    let client = Client::connect(&name).unwrap();
    // 40 values of 60 KiB: 2.4 MB, more than one staging buffer (~64 KiB
    // + the largest key here).
    let big: Vec<(Vec<u8>, Vec<u8>)> = (0..40).map(|i| (k(i), vec![i as u8; 60_000])).collect();
    client.set_many(&big).unwrap();
    let requests = batch_requests(&name);
    assert!(requests > 1, "split into {requests} requests");
    let got = client
        .get_many(&big.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>())
        .unwrap();
    for ((_, want), got) in big.iter().zip(&got) {
        assert_eq!(got.as_ref(), Some(want));
    }

    // 40 entries exist; 100 fit: the 61st new key is refused.
    let more: Vec<(Vec<u8>, Vec<u8>)> = (100..200).map(|i| (k(i), v(i))).collect();
    match client.set_many(&more) {
        Err(ClientError::PartlyWritten { written, source }) => {
            assert_eq!(written, 60);
            assert!(
                matches!(*source, ClientError::StoreFull(StoreLimit::Entries)),
                "{source:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(client.get(&k(159)).unwrap(), Some(v(159)));
    assert_eq!(client.get(&k(160)).unwrap(), None);
    assert_eq!(client.get(&k(199)).unwrap(), None);
    // A key too long is refused before anything is sent.
    let long = vec![(vec![b'x'; 5000], b"v".to_vec()), (k(300), v(300))];
    assert!(matches!(
        client.set_many(&long),
        Err(ClientError::KeyLength { .. })
    ));
    assert_eq!(client.get(&k(300)).unwrap(), None);
}

/// Raw MGET requests, as any client may write them: the worker answers
/// each key in order, stops with `MORE` when the next record does not fit
/// the slot, answers a value too large even alone with its head only; a
/// forged batch is refused as malformed and changes nothing.
#[test]
fn raw_batches_answered_by_a_worker_and_forged_ones_refused() {
    let name = unique_name("rawbatch");
    let _server = ServerGuard::start(&name, &["--no-keeper"]);
    let client = Client::connect(&name).unwrap();
    client.set(&b"a".to_vec(), &vec![b'a'; 600]).unwrap();
    client.set(&b"c".to_vec(), &vec![b'c'; 600]).unwrap();
    client.set(&b"huge".to_vec(), &vec![b'h'; 2000]).unwrap();

    let region = Region::open(&name, Duration::from_secs(1)).unwrap();
    let (me, _) = region.registration().unwrap();
    let slots = region.slots();
    let send = |op: OpCode, records: &[u8], count: u64| {
        let claim = slots.claim(me).unwrap();
        let request = Request {
            op: op as u16,
            generation: claim.generation,
            key_len: 0,
            value_len: records.len() as u32,
            arg2: count,
            ..Request::default()
        };
        assert!(slots.write_request(&claim, &request, &[], records));
        assert!(slots.mark_pending(&claim));
        region.ring().push(claim.index).unwrap();
        region.wake_a_worker();
        let mut value = Vec::new();
        match slots.wait(
            &claim,
            Some(&mut value),
            SpinPolicy::CLIENT,
            &FutexParker,
            || Some(Instant::now() + Duration::from_secs(5)),
            || region.server_alive(),
        ) {
            WaitOutcome::Ready(r) => (r, value),
            other => panic!("{other:?}"),
        }
    };

    // a (600 B), b (absent), c (600 B) inline: a and b fit the 1 KiB slot,
    // c does not.
    let mut records = Encoder::new();
    for key in [&b"a"[..], b"b", b"c"] {
        records.push_key(key);
    }
    let (r, bytes) = send(OpCode::MGet, records.bytes(), 3);
    assert_eq!(r.status_code(), Ok(StatusCode::Ok));
    assert_eq!((r.aux, r.flags & MORE), (2, MORE));
    let got = batch::decode_values(&bytes, 2).unwrap();
    assert_eq!(got[0].1, vec![b'a'; 600]);
    assert_eq!(got[1].0.status, StatusCode::NotFound as u16);

    // A value that could never fit the slot: its head only.
    let mut records = Encoder::new();
    records.push_key(b"huge");
    let (r, bytes) = send(OpCode::MGet, records.bytes(), 1);
    assert_eq!(r.aux, 1);
    let got = batch::decode_values(&bytes, 1).unwrap();
    assert_eq!(got[0].0.flags & VALUE_TOO_LARGE, VALUE_TOO_LARGE);
    assert_eq!(got[0].0.value_len, 2000);

    // Forged: a count that does not match, a key length past the payload,
    // an empty key. All malformed; the store unchanged.
    let version = status_json(&name)["version"].as_u64().unwrap();
    let mut records = Encoder::new();
    records.push_entry(b"forged", b"x");
    let (r, _) = send(OpCode::MSet, records.bytes(), 2);
    assert_eq!(r.status_code(), Ok(StatusCode::Malformed));
    let mut lying = records.bytes().to_vec();
    lying[0] = 200; // key length 200 in a 24-byte payload
    let (r, _) = send(OpCode::MSet, &lying, 1);
    assert_eq!(r.status_code(), Ok(StatusCode::Malformed));
    let mut empty_key = Encoder::new();
    empty_key.push_key(b"");
    let (r, _) = send(OpCode::MDel, empty_key.bytes(), 1);
    assert_eq!(r.status_code(), Ok(StatusCode::Malformed));
    assert_eq!(status_json(&name)["version"].as_u64(), Some(version));
    assert_eq!(client.get(&b"forged".to_vec()).unwrap(), None);
}
