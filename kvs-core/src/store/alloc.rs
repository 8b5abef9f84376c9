//! Placeholder allocator with the agreed interface (replaced by the real
//! size-class allocator).
#![allow(missing_docs, dead_code)]

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub trait Arena {
    fn commit(&self, offset: u64, len: u64) -> std::io::Result<()>;
    fn release(&self, offset: u64, len: u64);
    fn page_entry(&self, index: u64) -> u32;
    fn set_page_entry(&self, index: u64, value: u32);
    fn carved_end(&self) -> u64;
    fn set_carved_end(&self, end: u64);
}

#[derive(Debug, Clone, Copy)]
pub struct AllocConfig {
    pub data_start: u64,
    pub data_end: u64,
    pub max_memory: u64,
    pub max_block: u64,
    pub commit_step: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub offset: u64,
    pub capacity: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("full")]
    Full { committed: u64, max_memory: u64 },
    #[error("too large")]
    TooLarge { size: u64, max: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FreeError {
    #[error("not live {offset}")]
    NotLive { offset: u64 },
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AllocStats {
    pub committed_bytes: u64,
    pub live_bytes: u64,
    pub live_blocks: u64,
    pub carved_end: u64,
    pub free_blocks: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    pub live_blocks: u64,
    pub free_blocks: u64,
    pub rejected: Vec<(u64, String)>,
    pub page_map_problems: usize,
}

#[derive(Debug)]
pub struct Allocator {
    config: AllocConfig,
    free: std::collections::HashMap<u64, Vec<u64>>,
    live: std::collections::HashMap<u64, u64>,
    end: u64,
    committed: u64,
}

pub fn class_for(size: u64, max_block: u64) -> Option<(u16, u64)> {
    if size > max_block {
        return None;
    }
    let mut c = 64u64;
    let mut id = 0u16;
    while c < size {
        c = (c + c / 4).div_ceil(16) * 16;
        id += 1;
    }
    Some((id, c))
}

impl Allocator {
    pub fn new(config: AllocConfig, arena: &impl Arena) -> Self {
        arena.set_carved_end(config.data_start);
        Self {
            config,
            free: Default::default(),
            live: Default::default(),
            end: config.data_start,
            committed: 0,
        }
    }

    pub fn alloc(&mut self, arena: &impl Arena, size: u64) -> Result<Block, AllocError> {
        let (_, cap) = class_for(size, self.config.max_block).ok_or(AllocError::TooLarge {
            size,
            max: self.config.max_block,
        })?;
        if let Some(off) = self.free.get_mut(&cap).and_then(Vec::pop) {
            self.live.insert(off, cap);
            return Ok(Block {
                offset: off,
                capacity: cap,
            });
        }
        if self.committed + cap > self.config.max_memory || self.end + cap > self.config.data_end {
            return Err(AllocError::Full {
                committed: self.committed,
                max_memory: self.config.max_memory,
            });
        }
        arena.commit(self.end, cap).map_err(|_| AllocError::Full {
            committed: self.committed,
            max_memory: self.config.max_memory,
        })?;
        let off = self.end;
        self.end += cap;
        self.committed += cap;
        arena.set_carved_end(self.end);
        self.live.insert(off, cap);
        Ok(Block {
            offset: off,
            capacity: cap,
        })
    }

    pub fn free(&mut self, _arena: &impl Arena, offset: u64) -> Result<u64, FreeError> {
        let cap = self
            .live
            .remove(&offset)
            .ok_or(FreeError::NotLive { offset })?;
        self.free.entry(cap).or_default().push(offset);
        Ok(cap)
    }

    pub fn capacity_of_live(&self, offset: u64) -> Option<u64> {
        self.live.get(&offset).copied()
    }

    pub fn rebuild(
        config: AllocConfig,
        arena: &impl Arena,
        reachable: impl IntoIterator<Item = u64>,
    ) -> (Self, RebuildReport) {
        let _ = reachable;
        (Self::new(config, arena), RebuildReport::default())
    }

    pub fn stats(&self) -> AllocStats {
        AllocStats {
            committed_bytes: self.committed,
            live_bytes: self.live.values().sum(),
            live_blocks: self.live.len() as u64,
            carved_end: self.end,
            free_blocks: self.free.values().map(|v| v.len() as u64).sum(),
        }
    }
}

#[derive(Debug, Default)]
pub struct HeapArena {
    pages: Vec<AtomicU32>,
    end: AtomicU64,
}

impl HeapArena {
    pub fn new(data_pages: u64) -> Self {
        Self {
            pages: (0..data_pages).map(|_| AtomicU32::new(0)).collect(),
            end: AtomicU64::new(0),
        }
    }
}

impl Arena for HeapArena {
    fn commit(&self, _o: u64, _l: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn release(&self, _o: u64, _l: u64) {}
    fn page_entry(&self, i: u64) -> u32 {
        self.pages
            .get(i as usize)
            .map_or(0, |p| p.load(Ordering::Relaxed))
    }
    fn set_page_entry(&self, i: u64, v: u32) {
        if let Some(p) = self.pages.get(i as usize) {
            p.store(v, Ordering::Relaxed)
        }
    }
    fn carved_end(&self) -> u64 {
        self.end.load(Ordering::Relaxed)
    }
    fn set_carved_end(&self, e: u64) {
        self.end.store(e, Ordering::Relaxed)
    }
}
