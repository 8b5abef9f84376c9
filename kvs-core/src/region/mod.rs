//! The shared region: two sealed `memfd`s. The *control segment* holds the
//! header, the request ring, the response slots, the client registrations,
//! the per-worker statistics, the staging buffers and the subscription
//! queues, all `#[repr(C)]` at offsets from its start; clients write it.
//! The *store segment* holds the store ([`crate::store`]); only the server
//! writes it, clients map it read-only. The server hands both to each
//! client over its socket ([`endpoint`], [`handshake`]).
//!
//! ```text
//! control: ┌────────┬───────────┬──────────────┬────────────────────┬─────────┬───────┬─────────┬───────────────┐
//!          │ header │ ring head │ ring cells   │ response slots     │ clients │ stats │ staging │ subscriptions │
//!          │        │ & tail    │ slot indices │ word, event count, │         │ per   │ buffers │ event queues  │
//!          │        │           │              │ request, answer,   │         │ worker│ (sparse)│ (sparse)      │
//!          │        │           │              │ data (1 KiB)       │         │       │         │               │
//!          └────────┴───────────┴──────────────┴────────────────────┴─────────┴───────┴─────────┴───────────────┘
//! store:   header, stripes, page map, blocks (see `crate::store::layout`)
//! ```
//!
//! The module is split by concern: [`config`] (what the server chooses,
//! what a client asks), [`create`] (the server's side: claim the name,
//! make or adopt the segments, publish `Ready`), [`open`] (the client's:
//! handshake, map, check), [`cleanup`] (what dead servers left), and the
//! pieces: [`header`], [`layout`], [`memfd`], [`store_segment`],
//! [`endpoint`], [`handshake`], [`clients`], [`stats`].
//!
//! Known traps, each avoided here:
//!
//! * the mappings are [`memmap2::MmapRaw`], and Rust only ever sees
//!   atomics in them: a `&[u8]` into memory another process mutates would
//!   be unsound;
//! * both segments are sealed against shrinking and growing ([`memfd`]):
//!   no holder can `ftruncate` them under anyone (named POSIX shared
//!   memory cannot be sealed, and a truncated mapping kills with `SIGBUS`);
//!   the parts always touched are allocated at creation, the rest is
//!   committed with `fallocate` before it is first written;
//! * they have no name anyone could open: clients receive the descriptors
//!   from the server, after both checked the other's credentials;
//! * an opener checks seals and sizes, waits for `Ready`, checks magic and
//!   version, recomputes the layout and compares it before trusting an
//!   offset, and checks the store's header against the region's.
//!
//! ```no_run
//! use kvs_core::region::{Region, RegionConfig};
//! use std::time::Duration;
//!
//! let (server, listener, _) = Region::create_reporting("example", &RegionConfig::default())?;
//! // ... the server's acceptor answers clients on `listener`; then:
//! let client = Region::open("example", Duration::from_secs(1))?;
//! assert_eq!(client.info().slot_count, 1024);
//! drop(client);
//! server.remove();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod cleanup;
pub mod clients;
pub mod config;
pub mod create;
pub mod endpoint;
pub mod handshake;
pub mod header;
pub mod layout;
pub mod memfd;
pub mod open;
pub mod stats;
pub mod store_segment;

pub use cleanup::{remove_stale, stale_names, Cleanup};
pub use clients::{ClientEntry, ClientInfo, ClientTable};
pub use config::{max_region_bytes, ConnectOptions, RegionConfig};
pub use create::{StoreSource, Takeover};
pub use endpoint::{normalize_name, Peer};
pub use header::{InitState, RegionHeader, RegionInfo, LAYOUT_VERSION, MAGIC};
pub use layout::Layout;
pub use open::{peek_info, Session};
pub use stats::{OpTotals, WorkerStats, MAX_WORKERS};
pub use store_segment::StoreSegment;

use crate::response_table::{Slot, SlotTable, SlotTableHeader};
use crate::ring::{Ring, RingCell, RingHeader};
use crate::secure_fs::Dir;
use crate::store::layout::Geometry;
use crate::store::read::StoreView;
use crate::store::segment::Segment;
use crate::sync::Ordering;
use crate::wait::FutexParker;
use crossbeam_utils::CachePadded;
use endpoint::NameLock;
use handshake::Welcome;
use memmap2::MmapRaw;
use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A mapped region: the control segment and the store segment.
///
/// The server holds the one created by [`Region::create_reporting`];
/// clients hold ones from [`Region::open`] or [`Region::attach`]. Both see
/// the same memory.
pub struct Region {
    name: String,
    map: MmapRaw,
    file: File,
    info: RegionInfo,
    layout: Layout,
    store: Arc<StoreSegment>,
    /// The store's layout as a client validated it (`None` for the server,
    /// whose writer owns it).
    geometry: Option<Geometry>,
    role: Role,
}

/// Which side of the region a handle is.
pub(super) enum Role {
    /// The server: its socket directory, the claim on the name, and the
    /// region's state as the server decided it (the header only mirrors it).
    Server {
        dir: Dir,
        lock: NameLock,
        state: std::sync::atomic::AtomicU32,
        /// Held while the state is written to the own copy and the header,
        /// and while the housekeeper compares and repairs the header's
        /// state, so a repair never writes back a state the server has
        /// just left.
        state_writes: parking_lot::Mutex<()>,
    },
    /// A client: the connection (its end says the server died) and what
    /// the server answered.
    Client {
        conn: OwnedFd,
        welcome: Welcome,
        server: Peer,
    },
    /// A server handle let go of without cleaning up (see `abandon`).
    Abandoned,
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("name", &self.name)
            .field("size", &self.layout.total_size)
            .field("owner", &self.is_owner())
            .finish()
    }
}

impl Region {
    /// The name (without a leading `/`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The validated copy of the header's static part.
    pub fn info(&self) -> &RegionInfo {
        &self.info
    }

    /// Offsets of every section.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Whether this handle created the region.
    pub fn is_owner(&self) -> bool {
        matches!(self.role, Role::Server { .. })
    }

    /// The server's socket (`None` for a client's handle).
    pub fn socket_path(&self) -> Option<PathBuf> {
        match &self.role {
            Role::Server { dir, .. } => Some(dir.path().join(endpoint::socket_file(&self.name))),
            Role::Client { .. } | Role::Abandoned => None,
        }
    }

    /// The region's memfd (the server hands it to clients).
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// A client's registration index and its generation (`None` for the
    /// server, and for a probe).
    pub fn registration(&self) -> Option<(u32, u32)> {
        match &self.role {
            Role::Client { welcome, .. } => welcome.registration(),
            Role::Server { .. } | Role::Abandoned => None,
        }
    }

    /// What the server answered when this client connected.
    pub fn welcome(&self) -> Option<&Welcome> {
        match &self.role {
            Role::Client { welcome, .. } => Some(welcome),
            Role::Server { .. } | Role::Abandoned => None,
        }
    }

    /// The server's credentials as the kernel reported them (a client's
    /// view; `None` for the server).
    pub fn server_peer(&self) -> Option<Peer> {
        match &self.role {
            Role::Client { server, .. } => Some(*server),
            Role::Server { .. } | Role::Abandoned => None,
        }
    }

    /// The mapping's base and length, for tests and tools that play a
    /// hostile peer (every access must be atomic or volatile).
    #[doc(hidden)]
    pub fn raw_mapping(&self) -> (*mut u8, usize) {
        (self.map.as_mut_ptr(), self.layout.total_size)
    }

    fn at<T>(&self, offset: usize) -> *const T {
        debug_assert!(offset + std::mem::size_of::<T>() <= self.layout.total_size);
        debug_assert_eq!(offset % std::mem::align_of::<T>(), 0);
        // SAFETY: offsets come from our own `Layout`, validated against the
        // mapping's length at create/open; `add` stays inside the mapping.
        unsafe { self.map.as_ptr().add(offset) as *const T }
    }

    /// The header.
    pub fn header(&self) -> &RegionHeader {
        // SAFETY: offset 0 of a page-aligned mapping of at least the header's
        // size; atomics and `UnsafeCell` only.
        unsafe { &*self.at::<RegionHeader>(0) }
    }

    /// The request ring (of response-slot indices).
    pub fn ring(&self) -> Ring<'_> {
        // SAFETY: the layout places a RingHeader and `ring_capacity` cells at
        // these offsets, aligned, inside the mapping that `self` keeps alive;
        // the memory was zero-filled and initialised by the creator; the
        // capacity was validated as a power of two.
        unsafe {
            Ring::from_raw(
                self.at::<RingHeader>(self.layout.ring_header_offset),
                self.at::<RingCell>(self.layout.ring_cells_offset),
                self.info.ring_capacity as usize,
            )
        }
    }

    /// The response table.
    pub fn slots(&self) -> SlotTable<'_> {
        // SAFETY: as for `ring`: layout-derived, aligned, in bounds, and the
        // slot count was validated as non-zero.
        unsafe {
            SlotTable::from_raw(
                self.at::<SlotTableHeader>(self.layout.slot_header_offset),
                self.at::<CachePadded<Slot>>(self.layout.slots_offset),
                self.info.slot_count as usize,
            )
        }
    }

    /// The client registrations.
    pub fn clients(&self) -> ClientTable<'_> {
        // SAFETY: layout-derived, aligned, in bounds; entries are atomics.
        let entries = unsafe {
            std::slice::from_raw_parts(
                self.at::<ClientEntry>(self.layout.clients_offset),
                self.info.max_clients as usize,
            )
        };
        ClientTable::new(entries)
    }

    /// The bulk buffers.
    pub fn bulk(&self) -> crate::bulk::BulkTable<'_> {
        // SAFETY: layout-derived offset, 128-aligned, `bulk_count` buffers of
        // `bulk_size` data bytes inside the mapping that `self` keeps alive.
        unsafe {
            crate::bulk::BulkTable::from_raw(
                self.at::<u8>(self.layout.bulk_offset),
                self.info.bulk_count as usize,
                self.info.bulk_size as usize,
            )
        }
    }

    /// The subscription entries.
    pub fn subscriptions(&self) -> crate::events::SubTable<'_> {
        // SAFETY: the subscription area, from the layout-derived offset to
        // the end of the mapping `self` keeps alive, is accessed only through
        // atomics, as `events` lays it out.
        let table = unsafe {
            crate::events::SubTable::new(
                self.at::<u8>(self.layout.subs_offset),
                self.layout.total_size - self.layout.subs_offset,
                self.info.sub_count as usize,
                self.info.sub_queue as usize,
                self.info.sub_cell_bytes as usize,
                &self.header().live.subscribers,
            )
        };
        // The parameters are our own validated copy (checked against the
        // layout at create and attach), not re-read from the region.
        table.expect("subscription parameters validated when the region was mapped")
    }

    /// The store segment (the server writes it through a
    /// `StoreWriter`; a client reads it through [`Region::store_view`]).
    pub fn store(&self) -> &Arc<StoreSegment> {
        &self.store
    }

    /// A client's read-only view of the store (`None` for the server's
    /// handle, whose writer owns the layout).
    pub fn store_view(&self) -> Option<StoreView<'_>> {
        self.geometry.map(|g| StoreView::new(self.store.words(), g))
    }

    /// Gives the pages of bulk buffer `index`'s data back to the system
    /// (after a large transfer; they read as zeros afterwards).
    pub fn release_bulk_pages(&self, index: u32) {
        let bulk = self.bulk();
        if let Some(at) = bulk.data_offset_of(index) {
            let start = (self.layout.bulk_offset + at) as u64;
            let first_page = start.div_ceil(4096) * 4096;
            let end = start + bulk.data_size() as u64;
            if end > first_page {
                memfd::release(&self.file, first_page, end - first_page);
            }
        }
    }

    /// Per-worker statistics, [`MAX_WORKERS`] of them.
    pub fn worker_stats(&self) -> &[CachePadded<WorkerStats>] {
        // SAFETY: layout-derived, aligned, in bounds; counters are atomics.
        unsafe {
            std::slice::from_raw_parts(
                self.at::<CachePadded<WorkerStats>>(self.layout.stats_offset),
                MAX_WORKERS,
            )
        }
    }

    /// Sums of every worker's counters.
    pub fn op_totals(&self) -> OpTotals {
        let mut totals = OpTotals::default();
        for w in self.worker_stats() {
            totals.add(w);
        }
        totals
    }

    /// Whether the server still answers this region's requests: it has
    /// not closed the region (it may be draining: accepted requests are
    /// still answered), and (for a client) the connection to it is still
    /// open. One `poll` with no wait; the kernel ends the connection
    /// however the server dies.
    pub fn server_alive(&self) -> bool {
        if self.header().state.load(Ordering::Acquire) == InitState::Closed as u32 {
            return false;
        }
        match &self.role {
            Role::Server { .. } => true,
            Role::Client { conn, .. } => !endpoint::peer_gone(conn),
            Role::Abandoned => false,
        }
    }

    /// Producer side, after a push (a `SeqCst` CAS): wakes one waiting
    /// worker, if any announced that it waits. No syscall when none does.
    pub fn wake_a_worker(&self) {
        self.header().live.ring_ec.notify(1, &FutexParker);
    }

    /// Wakes every waiting worker (shutdown, or a stop request).
    pub fn wake_all_workers(&self) {
        self.header()
            .live
            .ring_ec
            .notify_always(u32::MAX, &FutexParker);
    }

    /// Worker side: waits for a push for at most `timeout`, unless
    /// `has_work()` (which must load with `SeqCst`) holds once this worker
    /// announced itself; see [`EventCount`](crate::wait::EventCount).
    pub fn worker_sleep(&self, timeout: Duration, has_work: impl Fn() -> bool) {
        let ec = &self.header().live.ring_ec;
        let key = ec.prepare();
        if has_work() {
            ec.cancel();
        } else {
            ec.wait(key, Some(timeout), &FutexParker);
        }
    }

    /// Client side: asks the server's housekeeper to reclaim slots now.
    pub fn poke_housekeeper(&self) {
        self.header()
            .live
            .housekeeper_ec
            .notify_always(1, &FutexParker);
    }

    /// Server side: sleeps until poked or `timeout`.
    pub fn housekeeper_sleep(&self, timeout: Duration) {
        let ec = &self.header().live.housekeeper_ec;
        let key = ec.prepare();
        ec.wait(key, Some(timeout), &FutexParker);
    }

    /// Server side: moves the region to `state` (`Draining`: clients submit
    /// nothing new but get the answers to what the server accepted;
    /// `Closed`: nothing more is answered), in the server's own copy and in
    /// the header.
    pub fn set_state(&self, state: InitState) {
        let _writing = match &self.role {
            Role::Server {
                state: own,
                state_writes,
                ..
            } => {
                let guard = state_writes.lock();
                own.store(state as u32, std::sync::atomic::Ordering::SeqCst);
                Some(guard)
            }
            _ => None,
        };
        self.header().state.store(state as u32, Ordering::SeqCst);
    }

    /// Server side: marks the region closed, so clients fail fast.
    pub fn mark_closed(&self) {
        self.set_state(InitState::Closed);
    }

    /// Server side: the state as the server decided it (never read back
    /// from the header).
    pub fn server_state(&self) -> Option<InitState> {
        match &self.role {
            Role::Server { state, .. } => {
                InitState::try_from(state.load(std::sync::atomic::Ordering::SeqCst)).ok()
            }
            _ => None,
        }
    }

    /// Server side: rewrites every header field that differs from what the
    /// server decided (magic, layout version, state, the static
    /// description), so that new clients can connect again once a
    /// scribbler stops. Returns how many fields were rewritten (0 for a
    /// client's handle).
    pub fn repair_header(&self) -> usize {
        let Role::Server { state_writes, .. } = &self.role else {
            return 0;
        };
        // The state read and its repair happen under the lock `set_state`
        // takes, so the state compared is the one the server holds now.
        let _writing = state_writes.lock();
        let Some(state) = self.server_state() else {
            return 0;
        };
        let h = self.header();
        let mut repaired = 0;
        if h.magic.load(Ordering::Relaxed) != MAGIC {
            h.magic.store(MAGIC, Ordering::Relaxed);
            repaired += 1;
        }
        if h.layout_version.load(Ordering::Relaxed) != LAYOUT_VERSION {
            h.layout_version.store(LAYOUT_VERSION, Ordering::Relaxed);
            repaired += 1;
        }
        // SAFETY: in bounds and aligned (offset 16 of our own mapping);
        // RegionInfo is Pod, so a copy of whatever is there is a valid value,
        // and the write replaces it with our own copy.
        let found = h.info.with(|p| unsafe { p.read_volatile() });
        if bytemuck::bytes_of(&found) != bytemuck::bytes_of(&self.info) {
            // SAFETY: as above; a concurrent reader copies either version
            // and validates its copy.
            h.info.with_mut(|p| unsafe { p.write_volatile(self.info) });
            repaired += 1;
        }
        // The state last, with SeqCst: an opener that sees it Ready sees
        // the rest rewritten (pairs with its Acquire load).
        if h.state.load(Ordering::SeqCst) != state as u32 {
            h.state.store(state as u32, Ordering::SeqCst);
            repaired += 1;
        }
        if repaired > 0 {
            h.live.header_repairs.fetch_add(1, Ordering::Relaxed);
        }
        repaired
    }

    /// Client side: whether the connection to the server has ended (the
    /// server died or closed it). A scribbled header cannot fake this.
    pub fn connection_ended(&self) -> bool {
        match &self.role {
            Role::Client { conn, .. } => endpoint::peer_gone(conn),
            Role::Server { .. } => false,
            Role::Abandoned => true,
        }
    }

    /// Client side: whether the server refuses new requests (it is
    /// draining or closed). A garbage state is not a refusal: the server
    /// rewrites it, and a dead server shows in the connection instead.
    pub fn refuses_requests(&self) -> bool {
        matches!(
            InitState::try_from(self.header().state.load(Ordering::Acquire)),
            Ok(InitState::Draining | InitState::Closed)
        )
    }

    /// Server side: closes the region and removes its name and lock file.
    /// Clients still mapped keep their memory until they unmap.
    pub fn remove(self) {
        drop(self);
    }
}

impl Region {
    /// Lets go of the region as a crash would: the socket and lock files
    /// stay, the lock is released (for tests of takeover and cleanup).
    #[doc(hidden)]
    pub fn abandon(mut self) {
        // A client role has nothing to clean; a server's files must stay.
        if let Role::Server { .. } = self.role {
            self.role = Role::Abandoned;
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Role::Server { dir, lock, .. } = &self.role {
            self.mark_closed();
            endpoint::remove_socket(dir, &self.name);
            lock.remove(dir);
        }
    }
}

// SAFETY: the region is accessed only through atomics and the ring/slot
// protocols; the handle itself holds a mapping and descriptors, all of
// which may move between and be shared by threads.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{RegionCreateError, RegionOpenError};
    use crate::protocol::{OpCode, Request};
    use crate::response_table::Poll;
    use crate::store::layout::Geometry;
    use crate::store::write::StoreWriter;
    use handshake::Kind;
    use std::time::Instant;

    /// A server's region with its store's header written (as a real
    /// server's writer does at start).
    fn create(
        name: &str,
        config: &RegionConfig,
    ) -> (Region, OwnedFd, Takeover, StoreWriter<Arc<StoreSegment>>) {
        let (region, listener, takeover) = Region::create_reporting(name, config).unwrap();
        let g = Geometry::new(
            region.info().store_size,
            config.stripes.trailing_zeros(),
            config.max_key,
            config.max_value,
            7,
        );
        let writer = StoreWriter::create(
            Arc::clone(region.store()),
            g,
            config.max_memory,
            None,
            region.info().store_id,
        );
        (region, listener, takeover, writer)
    }

    /// A private socket directory for one test, removed on drop.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "kvs-core-region-{tag}-{}-{}",
                std::process::id(),
                crate::secure_fs::random_u64()
            ));
            std::fs::create_dir(&p).unwrap();
            TestDir(p)
        }

        fn config(&self) -> RegionConfig {
            RegionConfig {
                socket_dir: Some(self.0.clone()),
                ..RegionConfig::default()
            }
        }

        fn connect(&self) -> ConnectOptions {
            ConnectOptions {
                wait: Duration::from_secs(2),
                socket_dir: Some(self.0.clone()),
            }
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A minimal acceptor: answers one hello on `listener` with
    /// registration 0 and the region's memfd, and returns the connection.
    fn serve(region: &Region, listener: &OwnedFd) -> OwnedFd {
        let deadline = Instant::now() + Duration::from_secs(5);
        let conn = loop {
            if let Some(c) = endpoint::accept(listener).unwrap() {
                break c;
            }
            assert!(Instant::now() < deadline, "no client came");
            std::thread::sleep(Duration::from_millis(1));
        };
        let hello = loop {
            if let Some(h) = handshake::recv_hello(conn.as_fd()).unwrap() {
                break h;
            }
            assert!(Instant::now() < deadline, "no hello came");
            std::thread::sleep(Duration::from_millis(1));
        };
        let mut w = Welcome::new(handshake::Status::Ok);
        w.region_size = region.info().total_size;
        w.store_size = region.info().store_size;
        if hello.kind().unwrap() == Kind::Client {
            w.registration = 0;
            w.registration_generation = 1;
        }
        let store = region.store().read_only_fd().unwrap();
        handshake::send_welcome(conn.as_fd(), &w, &[region.memfd(), store.as_fd()]).unwrap();
        conn
    }

    /// Opens `name` as a client while this thread's helper answers.
    fn open(
        server: &Region,
        listener: &OwnedFd,
        dir: &TestDir,
        name: &str,
    ) -> (Result<Region, RegionOpenError>, OwnedFd) {
        std::thread::scope(|s| {
            let serving = s.spawn(|| serve(server, listener));
            let client = Region::open_with(name, &dir.connect());
            (client, serving.join().unwrap())
        })
    }

    #[test]
    fn create_open_and_talk() {
        let dir = TestDir::new("talk");
        let (server, listener, takeover, writer) = create("talk", &dir.config());
        assert_eq!(takeover, Takeover::Fresh);
        writer
            .set(
                b"k",
                crate::store::block::ValueSource::Bytes(b"stored"),
                crate::store::write::WriteMode::Upsert,
                |_| {},
            )
            .unwrap();
        let (client, conn) = open(&server, &listener, &dir, "talk");
        let client = client.unwrap();
        assert_eq!(client.registration(), Some((0, 1)));
        assert!(client.server_alive());
        let slots = client.slots();
        // The client reads the store directly, without the server.
        match client.store_view().unwrap().get(b"k") {
            crate::store::read::Lookup::Found { value, .. } => assert_eq!(value, b"stored"),
            other => panic!("{other:?}"),
        }
        let claim = slots.claim(0).unwrap();
        let req = Request {
            op: OpCode::Get as u16,
            key_len: 1,
            ..Request::default()
        };
        assert!(slots.write_request(&claim, &req, b"x", b""));
        assert!(slots.mark_pending(&claim));
        client.ring().push(claim.index).unwrap();
        let index = server.ring().pop().unwrap();
        let begun = server.slots().begin(index).unwrap();
        assert_eq!(server.slots().read_request(&begun).key_len, 1);
        server.slots().complete(
            begun,
            &crate::protocol::Response::status(crate::protocol::StatusCode::NotFound),
            &crate::wait::FutexParker,
        );
        assert!(matches!(slots.poll(&claim, None), Poll::Ready(_)));
        // The server's end of the connection closing is the server dying.
        drop(conn);
        assert!(!client.server_alive());
        drop(server);
        drop(listener);
        assert!(matches!(
            Region::open_with("talk", &dir.connect()),
            Err(RegionOpenError::NoServer { .. })
        ));
    }

    /// The housekeeper's header repair runs beside the server's own state
    /// changes; with nobody scribbling it must never find (and "repair")
    /// anything, in particular never write back a state the server left.
    #[test]
    fn header_repair_never_races_the_servers_own_state_changes() {
        let dir = TestDir::new("racestate");
        let (server, _listener, _) = Region::create_reporting("racestate", &dir.config()).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let repaired = std::thread::scope(|s| {
            let repairer = s.spawn(|| {
                let mut repaired = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    repaired += server.repair_header();
                }
                repaired
            });
            for i in 0..200_000 {
                let state = if i % 2 == 0 {
                    InitState::Draining
                } else {
                    InitState::Ready
                };
                server.set_state(state);
            }
            server.set_state(InitState::Closed);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            repairer.join().unwrap()
        });
        assert_eq!(repaired, 0, "repairs without a scribbler");
        assert_eq!(
            server.header().state.load(Ordering::SeqCst),
            InitState::Closed as u32
        );
    }

    #[test]
    fn the_region_cannot_be_resized_by_a_client() {
        let dir = TestDir::new("seal");
        let (server, listener, _, _writer) = create("seal", &dir.config());
        let (client, _conn) = open(&server, &listener, &dir, "seal");
        let client = client.unwrap();
        let fd = client.memfd().try_clone_to_owned().unwrap();
        let file = File::from(fd);
        assert!(file.set_len(0).is_err());
        assert!(file.set_len(1 << 30).is_err());
        assert_eq!(file.metadata().unwrap().len(), server.info().total_size);
        // Nor the store, which it cannot even write.
        let store = File::from(client.store().fd().try_clone_to_owned().unwrap());
        assert!(store.set_len(0).is_err());
        assert!(memmap2::MmapOptions::new()
            .len(4096)
            .map_raw(&store)
            .is_err());
    }

    #[test]
    fn second_server_on_a_live_name_is_refused() {
        let dir = TestDir::new("live");
        let _server = Region::create_reporting("live", &dir.config()).unwrap();
        assert!(matches!(
            Region::create_reporting("live", &dir.config()),
            Err(RegionCreateError::OwnerAlive { pid, .. }) if pid == u64::from(std::process::id())
        ));
    }

    #[test]
    fn corrupt_header_fields_are_refused() {
        let dir = TestDir::new("corrupt");
        let (server, listener, _) = Region::create_reporting("corrupt", &dir.config()).unwrap();
        let h = server.header();
        h.layout_version.store(99, Ordering::SeqCst);
        assert!(matches!(
            open(&server, &listener, &dir, "corrupt").0,
            Err(RegionOpenError::VersionMismatch { found: 99, .. })
        ));
        h.layout_version.store(LAYOUT_VERSION, Ordering::SeqCst);
        h.magic.store(u64::MAX, Ordering::SeqCst);
        assert!(matches!(
            open(&server, &listener, &dir, "corrupt").0,
            Err(RegionOpenError::BadMagic { .. })
        ));
        h.magic.store(MAGIC, Ordering::SeqCst);
        // A lying capacity in the info.
        let mut info = *server.info();
        info.slot_count = 7;
        // SAFETY: test-only scribble over our own header's Pod info.
        h.info.with_mut(|p| unsafe { p.write_volatile(info) });
        assert!(matches!(
            open(&server, &listener, &dir, "corrupt").0,
            Err(RegionOpenError::Corrupt { .. })
        ));
        h.state.store(InitState::Creating as u32, Ordering::SeqCst);
        assert!(matches!(
            open(&server, &listener, &dir, "corrupt").0,
            Err(RegionOpenError::NotReady { .. })
        ));
    }

    #[test]
    fn a_client_that_gets_no_answer_is_not_ready() {
        let dir = TestDir::new("noanswer");
        let (_server, _listener, _) = Region::create_reporting("noanswer", &dir.config()).unwrap();
        let options = ConnectOptions {
            wait: Duration::from_millis(50),
            ..dir.connect()
        };
        assert!(matches!(
            Region::open_with("noanswer", &options),
            Err(RegionOpenError::NotReady { .. })
        ));
    }

    #[test]
    fn a_dead_servers_files_are_taken_over() {
        let dir = TestDir::new("stale");
        let (first, listener, _) = Region::create_reporting("stale", &dir.config()).unwrap();
        // A crash: the files stay, the lock goes with the process.
        first.abandon();
        drop(listener);
        assert!(dir.0.join("stale.sock").exists());
        assert!(matches!(
            Region::open_with("stale", &dir.connect()),
            Err(RegionOpenError::NoServer { detail, .. }) if detail.contains("no longer running")
        ));
        let (second, _listener, takeover) =
            Region::create_reporting("stale", &dir.config()).unwrap();
        assert_eq!(
            takeover,
            Takeover::Stale {
                pid: u64::from(std::process::id())
            }
        );
        drop(second);
        assert!(!dir.0.join("stale.sock").exists());
        assert!(!dir.0.join("stale.lock").exists());
    }

    #[test]
    fn cleanup_removes_only_dead_servers_files() {
        let dir = TestDir::new("cleanup");
        let (live, _l1, _) = Region::create_reporting("live", &dir.config()).unwrap();
        let (dead, l2, _) = Region::create_reporting("dead", &dir.config()).unwrap();
        dead.abandon();
        drop(l2);
        assert_eq!(stale_names(Some(&dir.0)), vec!["dead".to_string()]);
        assert_eq!(remove_stale("live", Some(&dir.0)).unwrap(), Cleanup::Alive);
        let Cleanup::Removed(paths) = remove_stale("dead", Some(&dir.0)).unwrap() else {
            panic!("dead was not removed");
        };
        assert_eq!(paths.len(), 2);
        assert!(stale_names(Some(&dir.0)).is_empty());
        drop(live);
    }

    #[test]
    fn invalid_configs_are_refused() {
        let bad = [
            RegionConfig {
                ring_capacity: 1000,
                ..RegionConfig::default()
            },
            RegionConfig {
                slots: 0,
                ..RegionConfig::default()
            },
            RegionConfig {
                mode: 0o400,
                ..RegionConfig::default()
            },
            RegionConfig {
                mode: 0o644,
                ..RegionConfig::default()
            },
            RegionConfig {
                workers: 0,
                ..RegionConfig::default()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
    }
}
