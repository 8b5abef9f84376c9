//! Errors of creating and opening a region.
//!
//! Each carries the facts a person needs to act: the region's name, both sides
//! of a mismatch, the owner of a live region.

use std::io;

/// Why a server could not create a region.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegionCreateError {
    /// The name is not a valid region name.
    #[error("invalid region name: {0}")]
    InvalidName(String),
    /// A capacity or mode is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// Another live server owns the name.
    #[error("region {name} is served by a live server (pid {pid}); stop it first or pick another --name")]
    OwnerAlive {
        /// The region name.
        name: String,
        /// The owner's pid, 0 if unknown.
        pid: u64,
    },
    /// Not allowed to create or open the files.
    #[error("permission denied creating region {name} ({path}): {source}")]
    Permission {
        /// The region name.
        name: String,
        /// The file that was refused.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// `/dev/shm` has no room for the region.
    #[error("not enough space in /dev/shm for region {name} ({size} bytes): {source}")]
    NoSpace {
        /// The region name.
        name: String,
        /// Bytes needed.
        size: usize,
        /// The OS error.
        source: io::Error,
    },
    /// Any other OS error.
    #[error("creating region {name}: {context}: {source}")]
    Io {
        /// The region name.
        name: String,
        /// What was being done.
        context: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// Why a client could not open a region.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegionOpenError {
    /// The name is not a valid region name.
    #[error("invalid region name: {0}")]
    InvalidName(String),
    /// No region of that name exists.
    #[error("no kvs server at {name}: the region does not exist (is kvs_server running with this --name?)")]
    NoServer {
        /// The region name.
        name: String,
    },
    /// Not allowed to open the region.
    #[error("permission denied opening region {name} (owned by uid {owner_uid}, mode {mode:o}); run as that user or start the server with a wider --mode")]
    Permission {
        /// The region name.
        name: String,
        /// The owner's uid.
        owner_uid: u32,
        /// The permission bits.
        mode: u32,
    },
    /// The object is not a kvs region.
    #[error("{name} is not a kvs region (bad magic {found:#018x})")]
    BadMagic {
        /// The region name.
        name: String,
        /// The magic found.
        found: u64,
    },
    /// Another layout version.
    #[error("region {name} has layout version {found}, this program speaks version {expected}; use matching server and client builds")]
    VersionMismatch {
        /// The region name.
        name: String,
        /// The region's version.
        found: u32,
        /// Ours.
        expected: u32,
    },
    /// Other key or value types.
    #[error("region {name} holds {found_key} -> {found_value}, this client expects {expected_key} -> {expected_value}")]
    TypeMismatch {
        /// The region name.
        name: String,
        /// The region's key type.
        found_key: String,
        /// The region's value type.
        found_value: String,
        /// Our key type.
        expected_key: String,
        /// Our value type.
        expected_value: String,
    },
    /// The server is still initialising the region after the wait.
    #[error("region {name} was not ready after {waited_ms} ms (the server is still starting, or died while starting)")]
    NotReady {
        /// The region name.
        name: String,
        /// How long we waited.
        waited_ms: u64,
    },
    /// The server has shut the region down.
    #[error("the server of region {name} has stopped")]
    Closed {
        /// The region name.
        name: String,
    },
    /// The header does not describe the object.
    #[error("region {name} is corrupt: {detail}")]
    Corrupt {
        /// The region name.
        name: String,
        /// What did not add up.
        detail: String,
    },
    /// Every client registration is taken.
    #[error("region {name} has no free client registration (all {max} in use)")]
    TooManyClients {
        /// The region name.
        name: String,
        /// The table size.
        max: u64,
    },
    /// Any other OS error.
    #[error("opening region {name}: {context}: {source}")]
    Io {
        /// The region name.
        name: String,
        /// What was being done.
        context: &'static str,
        /// The OS error.
        source: io::Error,
    },
}
