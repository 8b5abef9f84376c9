//! Embedding kvs with your own types: `u64` keys and a `#[repr(C)]` struct
//! value, a server and clients in one program.
//!
//! The store holds bytes; a client's types choose how their values become
//! bytes (a [`kvs::Codec`]): numbers little-endian, `String` and `Vec<u8>`
//! as they are, a plain-data struct as its memory through [`Raw`], any
//! serde type through `kvs::core::codec::Serde` (feature `serde`). One
//! server serves clients of any types; a client that reads a value another
//! wrote with a codec it cannot decode gets `ClientError::Decode`.
//!
//! In a real deployment the server and each client live in different
//! processes; the code is the same, only split.
//!
//! ```text
//! cargo run --example embedded
//! ```

use bytemuck::{Pod, Zeroable};
use kvs::{KVSClient, KVSServer, Raw};
use std::time::Duration;

/// A value type of our own: plain data, no pointers, `#[repr(C)]`, every
/// bit pattern valid (`Pod`), so its bytes are its encoding.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
struct Position {
    x: f64,
    y: f64,
    heading_deg: f32,
    speed: f32,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = format!("kvs-embedded-example-{}", std::process::id());

    // The server: creates the region (mode 0600) and runs two workers.
    let mut server = KVSServer::<u64, Raw<Position>>::builder(&name)
        .workers(2)
        .max_value_size(64 << 10)
        .build()?;
    server.start(2)?;

    // A client: reads come straight from the shared store, writes go
    // through the workers.
    let client = KVSClient::<u64, Raw<Position>>::connect(&name)?;
    let p = Raw(Position {
        x: 1.5,
        y: -2.0,
        heading_deg: 90.0,
        speed: 3.2,
    });
    client.set(&42, &p)?;
    assert_eq!(client.get(&42)?, Some(p));
    assert!(!client.post(&42, &p)?, "POST never overwrites");

    // Asynchronous: keep many requests in flight, then collect the answers.
    let tickets = (0..500u64)
        .map(|id| {
            client.set_async(
                &id,
                &Raw(Position {
                    x: id as f64,
                    ..p.0
                }),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    for t in tickets {
        t.wait(Duration::from_secs(1))?;
    }
    println!(
        "stored {} positions; entry 7 is {:?}",
        server.storage_size(),
        client.get(&7)?.map(|r| r.0)
    );

    // Another client of other types on the same server: text values.
    let notes = KVSClient::<String, String>::connect(&name)?;
    notes.set(&"greeting".to_string(), &"hello".repeat(1000))?;
    println!(
        "a 5000-byte note: {} bytes",
        notes.get(&"greeting".to_string())?.map_or(0, |v| v.len())
    );

    // Reading a Position through a codec that cannot decode it is an error,
    // never a wrong value: the 24 bytes are not a u64's 8.
    let wrong = KVSClient::<u64, u64>::connect(&name)?;
    match wrong.get(&42) {
        Err(e) => println!("as expected: {e}"),
        Ok(v) => unreachable!("24 bytes decoded as a u64: {v:?}"),
    }

    drop((client, notes, wrong));
    server.stop(); // drains what is in flight; dropping removes the region
    Ok(())
}
