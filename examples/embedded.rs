//! Embedding kvs with your own types: `u64` keys and a `#[repr(C)]` struct
//! value, a server and clients in one program.
//!
//! In a real deployment the server and each client live in different
//! processes; the code is the same, only split.
//!
//! ```text
//! cargo run --example embedded
//! ```

use bytemuck::{Pod, Zeroable};
use kvs::{KVSClient, KVSServer};
use std::time::Duration;

/// A value type of our own: plain data, no pointers, `#[repr(C)]`, every
/// bit pattern valid (`Pod`), so it can live in shared memory.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
struct Position {
    x: f64,
    y: f64,
    heading_deg: f32,
    speed: f32,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = format!("/kvs-embedded-example-{}", std::process::id());

    // The server: creates the region (mode 0600) and runs two workers.
    let mut server = KVSServer::<u64, Position>::builder(&name)
        .workers(2)
        .slots(1024)
        .build()?;
    server.start(2)?;

    // A client: connecting checks magic, layout version and that the region
    // really holds u64 -> Position.
    let client = KVSClient::<u64, Position>::connect(&name)?;
    let p = Position {
        x: 1.5,
        y: -2.0,
        heading_deg: 90.0,
        speed: 3.2,
    };
    client.set(&42, &p)?;
    assert_eq!(client.get(&42)?, Some(p));
    assert!(!client.post(&42, &p)?, "POST never overwrites");

    // Asynchronous: keep many requests in flight, then collect the answers.
    let tickets = (0..500u64)
        .map(|id| client.set_async(&id, &Position { x: id as f64, ..p }))
        .collect::<Result<Vec<_>, _>>()?;
    for t in tickets {
        t.wait(Duration::from_secs(1))?;
    }
    println!(
        "stored {} positions; entry 7 is {:?}",
        server.storage_size(),
        client.get(&7)?
    );

    // A client built for other types is refused with both sides named.
    match KVSClient::<u32, u64>::connect(&name) {
        Err(e) => println!("as expected: {e}"),
        Ok(_) => unreachable!("type mismatch must be refused"),
    }

    drop(client);
    server.stop(); // drains what is in flight; dropping removes the region
    Ok(())
}
