//! The core of kvs: a multi-process key-value store over POSIX shared memory.
//!
//! This crate knows nothing about processes' roles, command lines or logging
//! policy; it provides the pieces the server and the client are built from:
//!
//! * [`region`]: the named shared-memory object, its header, layout, lock
//!   file and client registrations;
//! * [`ring`]: the lock-free MPMC request ring (Vyukov, as crossbeam's
//!   `ArrayQueue`), recoverable when a producer dies mid-push;
//! * [`response_table`]: response slots with generations, so an answer can
//!   never reach the wrong request;
//! * [`wait`]: spin-then-futex waiting that makes no syscall on the fast path;
//! * [`bulk`]: staging buffers for keys and values too large for a slot,
//!   listing pages and snapshot requests;
//! * [`events`]: per-subscriber change-event queues;
//! * [`protocol`]: op codes, status codes, request and response records;
//! * [`fixed_str`]: fixed-capacity `Pod` strings for text keys and values;
//! * [`text`]: the key type and value size classes the binaries use;
//! * [`codec`]: how typed keys and values become the stored bytes, and back;
//! * [`clock`]: the wall clock, precise and coarse;
//! * [`store`]: the store in the shared region: striped index, entry
//!   blocks, allocator, lock-free reads;
//! * [`secure_fs`]: files created or read on someone's behalf, opened so
//!   that a planted name cannot redirect them.
//!
//! Everything read from the region is treated as untrusted: indices are
//! bounds-checked, codes and states validated, and garbage becomes an error
//! value, never a panic or undefined behaviour.

#![warn(missing_docs, unsafe_op_in_unsafe_fn)]

#[cfg(not(loom))]
pub mod batch;
#[cfg(not(loom))]
pub mod bulk;
#[cfg(not(loom))]
pub mod clock;
#[cfg(not(loom))]
pub mod codec;
/// The integer encoding of counters (INCR).
pub mod counter;
#[cfg(not(loom))]
pub mod error;
#[cfg(not(loom))]
pub mod events;
#[cfg(not(loom))]
pub mod fixed_str;
pub mod protocol;
#[cfg(not(loom))]
pub mod region;
pub mod response_table;
pub mod ring;
#[cfg(not(loom))]
pub mod secure_fs;
pub mod store;
mod sync;
#[cfg(not(loom))]
pub mod text;
pub mod wait;
pub mod word;

#[cfg(not(loom))]
pub use codec::{Codec, DecodeError};

/// The key that makes a worker panic while executing its request, when the
/// `test-hooks` feature is on (tests of how the server contains a panic);
/// never matches otherwise.
pub fn test_panic_key(key: &[u8]) -> bool {
    cfg!(feature = "test-hooks") && key == b"__kvs_test_panic__"
}
#[cfg(not(loom))]
pub use error::{RegionCreateError, RegionOpenError};
#[cfg(not(loom))]
pub use fixed_str::{FixedStr, FixedStrError};
pub use protocol::{OpCode, Request, Response, StatusCode};
#[cfg(not(loom))]
pub use region::{Region, RegionConfig, Session};
pub use response_table::{SlotState, SlotTable};
pub use ring::Ring;

#[cfg(not(loom))]
pub use clock::unix_now_ns;
