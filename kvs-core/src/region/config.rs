//! What a server chooses when it creates a region, and what a client says
//! when it connects.

use super::stats::MAX_WORKERS;
use std::path::PathBuf;
use std::time::Duration;

/// The largest key a store may allow (a key travels in every request and
/// every change event).
pub const MAX_KEY_LIMIT: u64 = 64 << 10;
/// The largest value a store may allow (lengths are 32-bit on the wire).
pub const MAX_VALUE_LIMIT: u64 = 1 << 30;
/// The largest `--max-memory` (the store's mapping is four times it, and a
/// 47-bit address space must hold it in every client).
pub const MAX_MEMORY_LIMIT: u64 = 1 << 42;
/// Bytes of an event cell beyond the largest key: room for small values
/// (larger ones are read from the store by the subscriber).
pub const EVENT_VALUE_ROOM: u64 = 256;

/// Capacities, limits and permissions of a region, chosen by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionConfig {
    /// Cells in the request ring; a power of two, at least 2.
    pub ring_capacity: usize,
    /// Response slots (each request in flight holds one).
    pub slots: usize,
    /// Client registrations (processes or handles connected at once).
    pub max_clients: usize,
    /// Stripes of the store: a power of two up to 65536.
    pub stripes: usize,
    /// Worker threads (recorded for `status`).
    pub workers: usize,
    /// Entry limit, 0 for none.
    pub max_entries: u64,
    /// Who may connect: 0600 (this user), 0660 (and the group), 0666
    /// (everyone); the socket's permission bits.
    pub mode: u32,
    /// The directory of the server's socket (`None`: the default, see
    /// [`super::endpoint`]).
    pub socket_dir: Option<PathBuf>,
    /// Staging (bulk) buffers: large keys and values, listing pages and
    /// snapshot requests in flight at once.
    pub bulk_buffers: usize,
    /// Subscription entries (subscribers at once).
    pub subscribers: usize,
    /// Events each subscription queue holds before it overflows (a power
    /// of two).
    pub sub_queue: usize,
    /// The largest key, bytes.
    pub max_key: u64,
    /// The largest value, bytes.
    pub max_value: u64,
    /// The store's memory limit (committed bytes of entries and index).
    pub max_memory: u64,
}

impl Default for RegionConfig {
    fn default() -> Self {
        Self {
            ring_capacity: 1024,
            slots: 1024,
            max_clients: 256,
            stripes: 1024,
            workers: 2,
            max_entries: 0,
            mode: 0o600,
            socket_dir: None,
            bulk_buffers: 8,
            subscribers: 8,
            sub_queue: 256,
            max_key: 1024,
            max_value: 1 << 20,
            max_memory: default_max_memory(),
        }
    }
}

impl RegionConfig {
    /// Data bytes of one staging buffer: a whole key and value (and room
    /// for a listing page or a snapshot path), in whole pages.
    pub fn bulk_size(&self) -> u64 {
        (self.max_key + self.max_value + 64)
            .max(64 << 10)
            .div_ceil(4096)
            * 4096
    }

    /// Data bytes of one event cell: the largest key plus
    /// [`EVENT_VALUE_ROOM`], in whole words.
    pub fn sub_cell_bytes(&self) -> u64 {
        self.max_key.div_ceil(8) * 8 + EVENT_VALUE_ROOM
    }

    /// Bytes of the store segment: four times the memory limit (blocks
    /// freed by one size class stay reserved for it, so the mapping needs
    /// more room than the memory it holds; the room costs address space,
    /// not memory), and at least 64 MiB.
    pub fn store_size(&self) -> u64 {
        (self.max_memory.saturating_mul(4)).max(64 << 20)
    }

    /// Checks every field.
    ///
    /// # Errors
    ///
    /// A message naming the field and its allowed range.
    pub fn validate(&self) -> Result<(), String> {
        if !self.ring_capacity.is_power_of_two() || !(2..=1 << 24).contains(&self.ring_capacity) {
            return Err(format!(
                "queue capacity {} must be a power of two between 2 and 16777216",
                self.ring_capacity
            ));
        }
        if !(1..=1 << 20).contains(&self.slots) {
            return Err(format!(
                "response slots {} must be between 1 and 1048576",
                self.slots
            ));
        }
        if !(1..=1 << 16).contains(&self.max_clients) {
            return Err(format!(
                "max clients {} must be between 1 and 65536",
                self.max_clients
            ));
        }
        if !self.stripes.is_power_of_two() || self.stripes > 1 << 16 {
            return Err(format!(
                "stripes {} must be a power of two up to 65536",
                self.stripes
            ));
        }
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return Err(format!(
                "workers {} must be between 1 and {MAX_WORKERS}",
                self.workers
            ));
        }
        if !(1..=64).contains(&self.bulk_buffers) {
            return Err(format!(
                "staging buffers {}: need 1 to 64",
                self.bulk_buffers
            ));
        }
        if self.subscribers > 1024
            || !self.sub_queue.is_power_of_two()
            || !(2..=1 << 20).contains(&self.sub_queue)
        {
            return Err(format!(
                "subscribers {} with queues of {}: up to 1024 subscribers, queues a power of two from 2 to 1048576",
                self.subscribers, self.sub_queue
            ));
        }
        if ![0o600, 0o660, 0o666].contains(&self.mode) {
            return Err(format!(
                "mode {:o} is not one of 600 (this user only), 660 (and its group) or 666 (every user)",
                self.mode
            ));
        }
        if !(1..=MAX_KEY_LIMIT).contains(&self.max_key) {
            return Err(format!(
                "max key size {} must be between 1 and {MAX_KEY_LIMIT} bytes",
                self.max_key
            ));
        }
        if self.max_value > MAX_VALUE_LIMIT {
            return Err(format!(
                "max value size {} must be at most {MAX_VALUE_LIMIT} bytes",
                self.max_value
            ));
        }
        if !((1 << 20)..=MAX_MEMORY_LIMIT).contains(&self.max_memory) {
            return Err(format!(
                "max memory {} must be between 1 MiB and {} GiB",
                self.max_memory,
                MAX_MEMORY_LIMIT >> 30
            ));
        }
        Ok(())
    }
}

/// The default memory limit: half of this machine's memory.
pub fn default_max_memory() -> u64 {
    (physical_memory() / 2).clamp(1 << 20, MAX_MEMORY_LIMIT)
}

/// This machine's memory (`MemTotal`), or 16 GiB if unreadable.
pub fn physical_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(16 << 30, |kib| kib.saturating_mul(1024))
}

/// The largest control region this machine allows: half its memory, at
/// most 16 GiB (the parts that are always touched are reserved at once).
pub fn max_region_bytes() -> u64 {
    (physical_memory() / 2).min(16 << 30)
}

/// How a client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// How long to wait for the server's answer (it may still be starting).
    pub wait: Duration,
    /// Where the server's socket is (`None`: the default directories).
    pub socket_dir: Option<PathBuf>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(2),
            socket_dir: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_sizes_hold_a_whole_entry() {
        let c = RegionConfig::default();
        c.validate().unwrap();
        assert!(c.bulk_size() >= c.max_key + c.max_value);
        assert_eq!(c.bulk_size() % 4096, 0);
        assert!(c.sub_cell_bytes() >= c.max_key + EVENT_VALUE_ROOM);
        assert_eq!(c.sub_cell_bytes() % 8, 0);
        assert!(c.store_size() >= 4 * c.max_memory);
    }

    #[test]
    fn limits_are_checked() {
        let bad = [
            RegionConfig {
                max_key: 0,
                ..RegionConfig::default()
            },
            RegionConfig {
                max_key: MAX_KEY_LIMIT + 1,
                ..RegionConfig::default()
            },
            RegionConfig {
                max_value: MAX_VALUE_LIMIT + 1,
                ..RegionConfig::default()
            },
            RegionConfig {
                max_memory: 1000,
                ..RegionConfig::default()
            },
            RegionConfig {
                stripes: 3,
                ..RegionConfig::default()
            },
            RegionConfig {
                bulk_buffers: 0,
                ..RegionConfig::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        let big = RegionConfig {
            max_value: 64 << 20,
            ..RegionConfig::default()
        };
        big.validate().unwrap();
    }
}
