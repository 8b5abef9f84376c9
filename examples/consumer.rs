//! The seed's consumer: reads every pair the producer wrote, then prints
//! each value as it changes.
//!
//! It watches the store's global version (one cheap status request) and
//! re-reads the pairs only when it moved. Key subscriptions with pushed
//! change events replace this loop once the subscriptions feature lands.
//!
//! ```text
//! cargo run --example consumer
//! ```

use kvs::core::fixed_str::Value256;
use kvs::core::text::TextKey;
use kvs::KVSClient;
use std::collections::HashMap;
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
    let client = KVSClient::<TextKey, Value256>::connect(DEMO_REGION)?;
    let mut seen: HashMap<&str, (String, u64)> = HashMap::new();
    let mut last_version = u64::MAX;
    loop {
        let version = match client.status() {
            Ok(s) => s.version,
            Err(e) => {
                println!("consumer: {e}; exiting");
                return Ok(());
            }
        };
        if version != last_version {
            last_version = version;
            for k in KEYS {
                let Some(entry) = client.get_entry(&TextKey::new(k)?)? else {
                    continue;
                };
                let value = entry.value.to_string();
                let changed = seen.get(k).is_none_or(|(_, v)| *v != entry.version);
                if changed {
                    println!("{k} = {value}  (version {})", entry.version);
                    seen.insert(k, (value, entry.version));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
