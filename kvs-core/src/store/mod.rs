//! The store in the shared region: a striped hash index and entries of any
//! length, written only by the server's workers and read by clients
//! directly, without a round trip and without a lock.
//!
//! # Where it lives
//!
//! One *store segment*: a sealed `memfd` of a large virtual size (four times
//! `--max-memory`), whose pages are committed on demand (`fallocate`) and
//! given back when large blocks are freed (`FALLOC_FL_PUNCH_HOLE`). The
//! server maps it read-write; clients receive it reopened read-only and map
//! it `PROT_READ`, so no client can write the store. Its size never changes
//! (sealed), so no mapping can fault past its end, and virtual space is
//! cheap: one mapping serves the store's whole life, and memory grows as
//! entries arrive without any pre-sizing (see [`layout`] for the byte
//! table). `--max-memory` bounds the committed bytes, not the mapping.
//!
//! ## Why one segment, not a chain of segments
//!
//! Growing by adding segments (Chronicle Map's tiers, a list of memfds)
//! makes every reader check, on every offset, which segment it is in and
//! whether it has mapped that one yet, and makes the server hand new
//! descriptors to every client mid-run. One reserved mapping needs none of
//! that: an offset is an offset for the store's whole life, a reader never
//! maps anything after it connected, and the bounds check is one compare.
//! What makes it affordable is that a memfd's size is only address space:
//! pages that were never written take no memory (`fallocate` commits them
//! as slabs are carved, so running out shows up as "store full" at the
//! allocator, never as a `SIGBUS` in a reader). The cost is virtual
//! address space, 4x `--max-memory` (48 GiB for a 12 GiB limit, against
//! 128 TiB of user address space), and page-table memory only for touched
//! pages. LMDB's users meet `MDB_MAP_FULL` because its map size is the
//! data's size; here the reservation is a multiple of the limit, and the
//! limit is what the operator sets.
//!
//! # Index and entries
//!
//! The key space is split into 2^k *stripes* by the top bits of a seeded
//! `xxh3` of the key bytes ([`hash`]). Each stripe has, in the segment, a
//! sequence counter, a *table word* (where its table is and how big) and an
//! entry count; the server keeps the authoritative copies of all three and
//! its stripe lock in its own memory. A table is an open-addressing array of
//! slot words (empty, tombstone, or a 16-bit hash tag plus a block offset,
//! see [`table`]). An entry is one *block* ([`block`]): a 48-byte header
//! (lengths, version, modified time, deadline, generation, checksum), the
//! key, then the value. Blocks come from a size-class allocator
//! ([`alloc`]) whose free lists are server-private; only its page map is in
//! the segment, so a new server can rebuild it after a crash.
//!
//! Every word of the segment is read and written as an aligned `AtomicU64`
//! ([`words`]), by both sides: a plain copy of bytes another process may be
//! storing is undefined behaviour, and a read-only mapping only admits
//! `Relaxed` loads, so readers order with fences.
//!
//! # The rules (each has a test)
//!
//! 1. **A block is written once, completely, before anything points to it**,
//!    and never changed in place while linked: an update writes a new block
//!    and swaps the slot.
//! 2. **A write to a stripe is bracketed by its sequence counter**: `seq` to
//!    odd, `fence(Release)`, store the slot or the table word, `seq` to even
//!    with `Release`. A reader loads `s1` (`Relaxed`, then `fence(Acquire)`),
//!    walks table, slot, block header and key, then `fence(Acquire)` and
//!    loads `s2`; it trusts what it read only if `s1 == s2` and `s1` is
//!    even. If it saw the new slot with `s1` from before the write, the
//!    writer's fence synchronises with its second fence, so `s2` is at
//!    least the odd value: it retries. If `s1` is the even value after the
//!    write, its first fence synchronises with the `Release` store, so it
//!    sees the whole block (rule 1).
//! 3. **A block is freed only after its stripe's `seq` moved** (it was
//!    unlinked inside a write), so a reader that still walks it fails its
//!    `s1 == s2` check, whatever the block holds now.
//! 4. **The value is copied under the block's generation**, not the stripe's
//!    `seq`: the reader reads the generation inside its validated window,
//!    copies the value, `fence(Acquire)`, and reads the generation again. The
//!    allocator bumps the generation of a block it hands out again, then
//!    `fence(Release)`, then the new owner writes: a reader whose copy saw
//!    any of those writes sees the bumped generation and retries. So writes
//!    to *other* keys of the stripe never abort a long copy. This needs the
//!    generation word to stay a generation word: the allocator only ever
//!    reuses a block start as a block start of the same size class
//!    ([`alloc`], rule 2). Freeing bumps it too, before a large block's pages
//!    are punched (which zeroes them; generations start at 1).
//! 5. **Every offset and length read from the segment is checked on the
//!    copy** before it is followed: against the mapped length, the data
//!    area, 8- or 16-byte alignment, and the configured key and value
//!    limits (before anything is allocated). Garbage gives an error, or, for
//!    payload bytes, wrong bytes: never a panic, a hang or an out-of-bounds
//!    read. Probing stops after the table's capacity.
//! 6. **Readers never write the segment and never wait**: a few failed
//!    attempts, then the caller asks a worker through the ring (the worker
//!    reads under the stripe lock, so the answer is linearisable with direct
//!    reads).
//!
//! A client that got an acknowledged SET reads its own write: the worker's
//! even `seq` store happens before its answer, which the client acquires.
//!
//! # After a crash
//!
//! The segment outlives a server killed at any instruction (a keeper
//! process holds it, see `kvs_server::keeper`). What a dead writer can
//! leave, by the rules above, is an odd `seq`, a block written but not
//! linked, or one unlinked but not yet freed; [`adopt`] checks every
//! table and entry, repairs the first, lets the allocator's rebuild reclaim
//! the other two, drops (and counts) whatever a crash cannot explain, and
//! restarts the version counter above the header's high-water mark.

#[cfg(not(loom))]
pub mod adopt;
#[cfg(not(loom))]
pub mod alloc;
pub mod block;
pub mod evict;
pub mod expiry;
pub mod hash;
pub mod layout;
pub mod publish;
pub mod read;
#[cfg(not(loom))]
pub mod segment;
pub mod table;
pub mod words;
#[cfg(not(loom))]
pub mod write;

pub use hash::KeyHash;
pub use layout::Geometry;
pub use read::{Lookup, StoreView};
