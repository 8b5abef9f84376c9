//! The in-region store: keys and values kept in a shared-memory segment that
//! the server writes and clients map read-only. For now it holds only the
//! segment's allocator ([`alloc`]); the index and the entry layout that build
//! on it come later.

pub mod alloc;
