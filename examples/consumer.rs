//! The seed's consumer: reads every pair the producer wrote, then prints
//! each value as it changes.
//!
//! It subscribes to the keys first and then reads them, so no change can
//! fall between the read and the subscription; changes arrive as events
//! pushed by the server (no polling).
//!
//! ```text
//! cargo run --example consumer
//! ```

use kvs::core::fixed_str::Value256;
use kvs::core::text::TextKey;
use kvs::{ChangeEvent, KVSClient};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const DEMO_REGION: &str = "/kvs-demo";
const KEYS: [&str; 8] = [
    "name",
    "language",
    "transport",
    "queue",
    "waiting",
    "map",
    "counter",
    "status",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Arc::new(KVSClient::<TextKey, Value256>::connect(DEMO_REGION)?);
    let keys = KEYS
        .iter()
        .map(|k| TextKey::new(k))
        .collect::<Result<Vec<_>, _>>()?;
    let mut changes = client.subscribe(&keys)?;

    // Versions already shown, so an event older than the initial read is skipped.
    let mut shown: HashMap<String, u64> = HashMap::new();
    for k in &keys {
        if let Some(e) = client.get_entry(k)? {
            println!("{} = {}  (version {})", k, e.value, e.version);
            shown.insert(k.to_string(), e.version);
        }
    }
    loop {
        match changes.next_timeout(Duration::from_secs(1)) {
            Ok(Some(ChangeEvent::Changed {
                key,
                value,
                version,
                ..
            })) => {
                if shown.get(&key.to_string()).is_none_or(|v| version > *v) {
                    println!("{key} = {value}  (version {version})");
                    shown.insert(key.to_string(), version);
                }
            }
            Ok(Some(ChangeEvent::Deleted { key, version })) => {
                println!("{key} deleted  (version {version})")
            }
            Ok(Some(ChangeEvent::Expired { key, version })) => {
                println!("{key} expired  (version {version})")
            }
            Ok(Some(ChangeEvent::Evicted { key, version })) => {
                println!("{key} evicted  (version {version})")
            }
            Ok(Some(ChangeEvent::Missed)) => println!("(fell behind; some changes were not seen)"),
            Ok(None) => {}
            Err(e) => {
                println!("consumer: {e}; exiting");
                return Ok(());
            }
        }
    }
}
