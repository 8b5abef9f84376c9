//! Client registrations: who may own response slots, and whether they live.
//!
//! A client registers at an index `i` by first taking the write lock on byte
//! `1 + i` of the lock file (see [`super::shm`]) and only then claiming the
//! entry with a CAS `Free -> Used`. The server treats a `Used` entry whose
//! byte is unlocked as dead: the kernel dropped the lock when the process
//! died. Because the lock comes first, a live client is never seen unlocked;
//! a newcomer that locks a dead client's byte before the server cleaned up
//! fails the CAS (the entry is still `Used`) and moves on.

use super::shm::{client_lock_byte, process_start_ticks, LockFile};
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use std::io;

const FREE: u32 = 0;
const USED: u32 = 1;

/// One registration.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ClientEntry {
    state: AtomicU32,
    pid: AtomicU32,
    start_ticks: AtomicU64,
    registered_unix_ns: AtomicU64,
    _reserved: AtomicU64,
}

/// A view of the registrations in a region.
#[derive(Debug, Clone, Copy)]
pub struct ClientTable<'a> {
    entries: &'a [ClientEntry],
}

/// What is known of a registered client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// Registration index.
    pub index: u32,
    /// The pid it registered with (informational).
    pub pid: u32,
    /// Its start time in clock ticks since boot.
    pub start_ticks: u64,
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

    /// Registers this process at a free index, holding `lock`'s byte for it.
    ///
    /// Returns `Ok(None)` when every entry is in use.
    pub fn register(&self, lock: &LockFile) -> io::Result<Option<u32>> {
        let pid = std::process::id();
        let ticks = process_start_ticks(pid).unwrap_or(0);
        for (i, entry) in self.entries.iter().enumerate() {
            let i = i as u32;
            if entry.state.load(Ordering::Relaxed) != FREE {
                continue;
            }
            if !lock.try_lock(client_lock_byte(i))? {
                continue;
            }
            // AcqRel: Acquire pairs with the Release that freed the entry.
            if entry
                .state
                .compare_exchange(FREE, USED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                entry.pid.store(pid, Ordering::Relaxed);
                entry.start_ticks.store(ticks, Ordering::Relaxed);
                entry
                    .registered_unix_ns
                    .store(crate::unix_now_ns(), Ordering::Relaxed);
                return Ok(Some(i));
            }
            lock.unlock(client_lock_byte(i))?;
        }
        Ok(None)
    }

    /// Gives up registration `index`, which this process holds through `lock`.
    pub fn unregister(&self, index: u32, lock: &LockFile) {
        if let Some(entry) = self.entries.get(index as usize) {
            // Release: everything we did as this client happens before reuse.
            entry.state.store(FREE, Ordering::Release);
        }
        let _ = lock.unlock(client_lock_byte(index));
    }

    /// Registrations whose owner has died (their lock byte is free).
    pub fn dead(&self, lock: &LockFile) -> Vec<ClientInfo> {
        self.used()
            .filter(|c| {
                matches!(
                    lock.is_locked_by_other(client_lock_byte(c.index)),
                    Ok(false)
                )
            })
            .collect()
    }

    /// Every entry in use (alive or not yet found dead).
    pub fn used(&self) -> impl Iterator<Item = ClientInfo> + 'a {
        self.entries.iter().enumerate().filter_map(|(i, e)| {
            (e.state.load(Ordering::Acquire) == USED).then_some(ClientInfo {
                index: i as u32,
                pid: e.pid.load(Ordering::Relaxed),
                start_ticks: e.start_ticks.load(Ordering::Relaxed),
            })
        })
    }

    /// Frees a dead client's entry (after its slots were reclaimed).
    pub fn free(&self, index: u32) {
        if let Some(entry) = self.entries.get(index as usize) {
            let _ = entry
                .state
                .compare_exchange(USED, FREE, Ordering::Release, Ordering::Relaxed);
        }
    }

    /// Resets every entry (a new region).
    pub fn init(&self) {
        for e in self.entries {
            e.state.store(FREE, Ordering::Relaxed);
        }
    }
}
