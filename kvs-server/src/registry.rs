//! Who is registered: the server's private, authoritative table of client
//! registrations (the acceptor hands them out and marks them dead; the
//! housekeeper frees them).
//!
//! It lives only in the server's memory, so a client cannot forge or free a
//! registration. Each hand-out of an index bumps its generation, and an
//! index is freed only if it is still dead with the generation the
//! housekeeper saw, so a registration can never be freed under a client
//! that just received it.

use std::collections::VecDeque;
use std::sync::Mutex;

/// One registration as the server knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reg {
    Free { generation: u32 },
    Live { generation: u32, pid: u32 },
    Dead { generation: u32, pid: u32 },
}

#[derive(Debug)]
struct RegistryInner {
    entries: Vec<Reg>,
    free: VecDeque<u32>,
}

/// Who is registered: the server's private, authoritative table.
#[derive(Debug)]
pub(crate) struct Registry {
    inner: Mutex<RegistryInner>,
}

/// A dead registration waiting to be freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeadRegistration {
    pub(crate) index: u32,
    pub(crate) generation: u32,
    pub(crate) pid: u32,
}

impl Registry {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(RegistryInner {
                entries: vec![Reg::Free { generation: 0 }; capacity],
                free: (0..capacity as u32).collect(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryInner> {
        // A panic while holding this lock leaves consistent data (every
        // update is a single assignment), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands out a free index with a new generation.
    pub(crate) fn allocate(&self, pid: u32) -> Option<(u32, u32)> {
        let mut inner = self.lock();
        let index = inner.free.pop_front()?;
        let Reg::Free { generation } = inner.entries[index as usize] else {
            unreachable!("the free list holds only free entries");
        };
        let generation = generation.wrapping_add(1);
        inner.entries[index as usize] = Reg::Live { generation, pid };
        Some((index, generation))
    }

    /// Marks a live registration dead, if it is still that generation.
    pub(crate) fn mark_dead(&self, index: u32, generation: u32) -> bool {
        let mut inner = self.lock();
        match inner.entries.get(index as usize).copied() {
            Some(Reg::Live { generation: g, pid }) if g == generation => {
                inner.entries[index as usize] = Reg::Dead { generation, pid };
                true
            }
            _ => false,
        }
    }

    /// Whether `index` is held by a connected client. Anything else (free,
    /// dead, out of range: a scribbled owner field) owns nothing.
    pub(crate) fn is_live(&self, index: u32) -> bool {
        matches!(
            self.lock().entries.get(index as usize),
            Some(Reg::Live { .. })
        )
    }

    /// Every dead registration.
    pub(crate) fn dead(&self) -> Vec<DeadRegistration> {
        self.lock()
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match *r {
                Reg::Dead { generation, pid } => Some(DeadRegistration {
                    index: i as u32,
                    generation,
                    pid,
                }),
                _ => None,
            })
            .collect()
    }

    /// Frees a dead registration if it is still dead with `generation`.
    pub(crate) fn release(&self, index: u32, generation: u32) -> bool {
        let mut inner = self.lock();
        match inner.entries.get(index as usize).copied() {
            Some(Reg::Dead { generation: g, .. }) if g == generation => {
                inner.entries[index as usize] = Reg::Free { generation };
                inner.free.push_back(index);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_freed_only_by_their_own_generation() {
        let r = Registry::new(2);
        let (a, ga) = r.allocate(1).unwrap();
        let (b, _) = r.allocate(2).unwrap();
        assert!(r.allocate(3).is_none());
        assert!(r.is_live(a) && r.is_live(b));
        assert!(!r.is_live(7));
        assert!(r.mark_dead(a, ga));
        assert!(!r.mark_dead(a, ga), "already dead");
        assert!(!r.is_live(a));
        assert_eq!(r.dead().len(), 1);
        // A stale release (older generation) frees nothing.
        assert!(!r.release(a, ga.wrapping_sub(1)));
        assert!(r.release(a, ga));
        assert!(!r.release(a, ga), "already free");
        let (a2, ga2) = r.allocate(4).unwrap();
        assert_eq!(a2, a);
        assert_ne!(ga2, ga);
        // The old generation's death cannot touch the new holder.
        assert!(!r.mark_dead(a2, ga));
        assert!(r.is_live(a2));
    }
}
