//! The seed's producer: serves a region, writes 8 pairs, keeps the region
//! alive, and changes one value every second so `consumer` has news to show.
//!
//! ```text
//! cargo run --example producer      # terminal 1
//! cargo run --example consumer      # terminal 2
//! ```
//! Stop with Ctrl+C; the region is removed on exit.

use kvs::core::fixed_str::Value256;
use kvs::core::text::TextKey;
use kvs::{KVSClient, KVSServer};
use nix::sys::signal::{SigSet, Signal};
use std::time::Duration;

/// The region both examples use.
pub const DEMO_REGION: &str = "/kvs-demo";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Ctrl+C is received by `sigwait` below, never by a worker thread.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGINT);
    stop.add(Signal::SIGTERM);
    stop.thread_block()?;

    let mut server = KVSServer::<TextKey, Value256>::builder(DEMO_REGION).build()?;
    server.start(2)?;
    let client = KVSClient::<TextKey, Value256>::connect(DEMO_REGION)?;
    let pairs = [
        ("name", "kvs"),
        ("language", "rust"),
        ("transport", "posix shm"),
        ("queue", "vyukov ring"),
        ("waiting", "spin then futex"),
        ("map", "striped"),
        ("counter", "0"),
        ("status", "running"),
    ];
    for (k, v) in pairs {
        client.set(&TextKey::new(k)?, &Value256::new(v)?)?;
        println!("wrote {k} = {v}");
    }
    println!("producer: 8 pairs written to {DEMO_REGION}; updating \"counter\" every second, Ctrl+C to stop");

    // Update the counter until a stop signal arrives: a thread waits for the
    // signal so the main loop can keep a steady tick.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = stop.wait();
        let _ = tx.send(());
    });
    let mut n = 0u64;
    while rx.recv_timeout(Duration::from_secs(1)).is_err() {
        n += 1;
        client.set(&TextKey::new("counter")?, &Value256::new(&n.to_string())?)?;
    }
    println!("producer: stopping");
    drop(client);
    server.stop();
    Ok(())
}
