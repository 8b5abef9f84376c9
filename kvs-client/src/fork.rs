//! Noticing that this process is a fork of the one that connected.
//!
//! A child forked (without `exec`) inherits a client's mapping, its
//! registration and its connection. If it used them, two processes would
//! claim slots as one registration, and the server, which watches the
//! process that connected, would free that registration when the parent
//! exits, under the child's feet. So a client remembers the fork
//! generation it connected in, and refuses every call (and touches nothing
//! in the region, not even when dropped) once it differs:
//! [`ClientError::Forked`](crate::ClientError::Forked). The generation is a
//! counter that a `pthread_atfork` child handler bumps (an atomic add,
//! which is async-signal-safe), so the check on each call is one load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static GENERATION: AtomicU64 = AtomicU64::new(0);
static INSTALL: Once = Once::new();

extern "C" fn in_child() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Installs the fork handler (once per process) and returns the current
/// generation.
pub(crate) fn generation_at_connect() -> u64 {
    INSTALL.call_once(|| {
        // SAFETY: registers a handler that only performs an atomic add;
        // pthread_atfork copies the function pointers.
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    });
    GENERATION.load(Ordering::Relaxed)
}

/// Whether this process was forked since a client connected at
/// `generation`.
#[inline]
pub(crate) fn forked_since(generation: u64) -> bool {
    // Relaxed: the child handler ran in this very process, before any of
    // its own code.
    GENERATION.load(Ordering::Relaxed) != generation
}
