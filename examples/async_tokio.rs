//! Awaiting kvs requests from tokio: a ticket is a `std::future::Future`.
//!
//! One tokio thread runs a thousand tasks that each count a page view and
//! record the visitor, all in flight at once. No task blocks the thread
//! and nothing polls in a loop: a task whose answer has not come yet
//! sleeps, and the client's reactor thread (one per connection, asleep on
//! the connection's doorbell in the shared region) wakes it when the
//! server answers. Timeouts and cancellation are tokio's: dropping a
//! future abandons its request.
//!
//! ```text
//! cargo run --example async_tokio
//! ```
//!
//! In a real deployment `kvs_server` runs on its own and the app only
//! connects (`KVSClient::connect("my-store")`); here the server is
//! embedded so that the example runs alone.

use kvs::{KVSClient, KVSServer};
use std::sync::Arc;
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = format!("kvs-async-example-{}", std::process::id());
    let mut server = KVSServer::<String, String>::builder(&name)
        .workers(2)
        .build()?;
    server.start(2)?;

    let client = Arc::new(KVSClient::<String, String>::connect(&name)?);

    // A thousand tasks on one thread, every request awaited.
    let mut tasks = Vec::new();
    for visitor in 0..1000 {
        let client = Arc::clone(&client);
        tasks.push(tokio::spawn(async move {
            let views = client.incr_async(&"views:/home".to_string(), 1)?.await?;
            let session = format!("session:{visitor}");
            client
                .set_with_ttl_async(
                    &session,
                    &format!("visitor {visitor}"),
                    Duration::from_secs(60),
                )?
                .await?;
            Ok::<i64, kvs::ClientError>(views)
        }));
    }
    let mut last = 0;
    for task in tasks {
        last = last.max(task.await??);
    }
    println!("views of /home: {last}");

    // A read is done directly (no request, no wait): the ticket is ready.
    let session = client.get_async(&"session:7".to_string())?.await?;
    println!("session:7 = {session:?}");

    // Batches are futures too: one request per batch.
    let keys: Vec<String> = (0..1000).map(|v| format!("session:{v}")).collect();
    let removed = client.del_many_async(&keys).await?;
    println!("removed {removed} sessions");

    // tokio's timeout around an await: dropping the future abandons the
    // request; the slot goes back to the table.
    let quick = tokio::time::timeout(
        Duration::from_secs(1),
        client.set_async(&"greeting".to_string(), &"hello".to_string())?,
    )
    .await;
    println!("set within a second: {}", matches!(quick, Ok(Ok(()))));

    drop(client);
    server.stop();
    Ok(())
}
