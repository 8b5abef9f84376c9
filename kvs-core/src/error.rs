//! Errors of creating and opening a region.
//!
//! Each carries the facts a person needs to act: the region's name, both sides
//! of a mismatch, the owner of a live region.

use std::io;

/// Who a region's mode admits, in words.
fn who_may(mode: u32) -> &'static str {
    match mode & 0o066 {
        0o066 => "every user",
        m if m & 0o060 == 0o060 => "its user and group",
        _ => "its own user",
    }
}

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
    /// The socket directory cannot be used (not ours, writable by others).
    #[error("{0}")]
    SocketDir(String),
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
    /// No memory for the region.
    #[error("not enough memory for region {name} ({size} bytes): {source}")]
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
    /// No server serves that name.
    #[error("no kvs server for region {name}: {detail} (is kvs_server running with this --name, and --socket-dir if it has one?)")]
    NoServer {
        /// The region name.
        name: String,
        /// Where it was looked for, or what was found instead.
        detail: String,
    },
    /// The kernel refused the connection: the socket's mode does not admit
    /// this user.
    #[error("permission denied: region {name} is served by a live server of uid {owner_uid} that admits only {} (socket {}, mode {mode:o}); run as that user, or ask its operator for --mode 660 or 666", who_may(*mode), path.display())]
    Permission {
        /// The region name.
        name: String,
        /// The socket.
        path: std::path::PathBuf,
        /// The socket's owner.
        owner_uid: u32,
        /// The socket's permission bits.
        mode: u32,
    },
    /// The server refused this user after checking its credentials.
    #[error("permission denied: the server of region {name} (uid {server_uid}) does not admit this user; ask its operator for --mode 660 or 666")]
    Denied {
        /// The region name.
        name: String,
        /// The server's uid.
        server_uid: u32,
    },
    /// The socket, its directory or the process behind it is not who it
    /// must be: someone else may be impersonating the server.
    #[error("refusing region {name} at {}: {reason}", path.display())]
    Untrusted {
        /// The region name.
        name: String,
        /// The socket.
        path: std::path::PathBuf,
        /// What did not hold.
        reason: String,
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
    #[error("region {name} has no free client registration (all {max} in use; kvs_server --max-clients raises the limit)")]
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
