//! Client registrations as the region shows them.
//!
//! The server decides who is registered: it hands out an index (and a new
//! generation for it) to each client it admits over its socket, learns that
//! the client died when that connection ends, and frees the index only once
//! nothing in the region names it any more. Its own copy of that table is
//! the authority (it lives in the server's memory, where no client can
//! scribble on it); this mirror in the region only lets `status` and other
//! tools see the registrations. Clients never write its fields (save their
//! own doorbell, below), and the server never reads them back to decide
//! anything.
//!
//! One word pair in each entry is the client's: its **doorbell**, an
//! [`EventCount`] the server rings after answering any request of that
//! client. A client that awaits answers as futures (`kvs-client`'s
//! reactor) sleeps on it, one thread for all its requests in flight,
//! instead of one sleeper per response slot. The pair is the same Dekker
//! pair as a slot's own event count: the worker's `SeqCst` CAS of the slot
//! to `Ready` comes before the ring, the reactor's `prepare` before its
//! scan of the slots (see [`crate::wait`]). A scribbled doorbell costs a
//! spurious wake-up or a sleep slice, nothing else.
//!
//! ```text
//! offset  size  field
//!      0     4  state               RegistrationState
//!      4     4  pid
//!      8     4  generation
//!     12     4  uid
//!     16     8  registered_unix_ns
//!     24     8  doorbell            EventCount (epoch, waiters)
//! ```

use crate::sync::{AtomicU32, AtomicU64, Ordering};
use crate::wait::{EventCount, Parker};

/// The state of a registration, as stored in [`ClientEntry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum RegistrationState {
    /// Not handed out.
    Free = 0,
    /// A connected client holds it.
    Live = 1,
    /// Its client has gone; the server is still freeing what it held.
    Dead = 2,
}

impl TryFrom<u32> for RegistrationState {
    type Error = u32;

    fn try_from(v: u32) -> Result<Self, u32> {
        match v {
            0 => Ok(RegistrationState::Free),
            1 => Ok(RegistrationState::Live),
            2 => Ok(RegistrationState::Dead),
            other => Err(other),
        }
    }
}

/// One registration's mirror.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ClientEntry {
    state: AtomicU32,
    pid: AtomicU32,
    generation: AtomicU32,
    uid: AtomicU32,
    registered_unix_ns: AtomicU64,
    /// Rung by the server after each answer to this client (see the
    /// module docs).
    doorbell: EventCount,
}

/// What is known of a registered client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// Registration index.
    pub index: u32,
    /// Its state.
    pub state: RegistrationState,
    /// The pid it connected from.
    pub pid: u32,
    /// Its uid.
    pub uid: u32,
    /// The generation of this use of the index.
    pub generation: u32,
}

/// A view of the registrations in a region.
#[derive(Debug, Clone, Copy)]
pub struct ClientTable<'a> {
    entries: &'a [ClientEntry],
}

impl<'a> ClientTable<'a> {
    /// Wraps the entries.
    pub fn new(entries: &'a [ClientEntry]) -> Self {
        Self { entries }
    }

    /// Number of entries.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Server: shows registration `index` as live.
    pub fn record(&self, index: u32, generation: u32, pid: u32, uid: u32) {
        if let Some(e) = self.entries.get(index as usize) {
            e.pid.store(pid, Ordering::Relaxed);
            e.uid.store(uid, Ordering::Relaxed);
            e.generation.store(generation, Ordering::Relaxed);
            e.registered_unix_ns
                .store(crate::unix_now_ns(), Ordering::Relaxed);
            e.doorbell.reset();
            // Release: a reader that sees Live sees the fields above.
            e.state
                .store(RegistrationState::Live as u32, Ordering::Release);
        }
    }

    /// Server: shows registration `index` as dead (being cleaned up).
    pub fn mark_dead(&self, index: u32) {
        if let Some(e) = self.entries.get(index as usize) {
            e.state
                .store(RegistrationState::Dead as u32, Ordering::Release);
        }
    }

    /// Server: shows registration `index` as free.
    pub fn clear(&self, index: u32) {
        if let Some(e) = self.entries.get(index as usize) {
            e.state
                .store(RegistrationState::Free as u32, Ordering::Release);
        }
    }

    /// The doorbell of registration `index` (`None` out of range).
    pub fn doorbell(&self, index: u32) -> Option<&'a EventCount> {
        self.entries.get(index as usize).map(|e| &e.doorbell)
    }

    /// Server: rings registration `index`'s doorbell, after answering one
    /// of its requests (the answer's `SeqCst` publication comes first).
    /// Costs one load when nobody sleeps on it; an index out of range
    /// (a scribbled slot owner) rings nothing.
    #[inline]
    pub fn ring<P: Parker>(&self, index: u32, parker: &P) {
        if let Some(e) = self.entries.get(index as usize) {
            e.doorbell.notify(u32::MAX, parker);
        }
    }

    /// Every entry not free (a scribbled state counts as not free).
    pub fn used(&self) -> impl Iterator<Item = ClientInfo> + 'a {
        self.entries.iter().enumerate().filter_map(|(i, e)| {
            // Acquire pairs with the Release in `record`.
            let state = e.state.load(Ordering::Acquire);
            let state = RegistrationState::try_from(state).unwrap_or(RegistrationState::Dead);
            (state != RegistrationState::Free).then(|| ClientInfo {
                index: i as u32,
                state,
                pid: e.pid.load(Ordering::Relaxed),
                uid: e.uid.load(Ordering::Relaxed),
                generation: e.generation.load(Ordering::Relaxed),
            })
        })
    }

    /// Resets every entry (a new region).
    pub fn init(&self) {
        for e in self.entries {
            e.state
                .store(RegistrationState::Free as u32, Ordering::Relaxed);
        }
    }
}
