//! The shared region: one named POSIX shared-memory object holding the header,
//! the request ring, the response table, the client registrations and the
//! per-worker statistics, all `#[repr(C)]` at offsets from the start.
//!
//! ```text
//! ┌────────────┬───────────┬──────────────────┬───────────┬──────────────────┬─────────┬───────┐
//! │ header     │ ring head │ ring cells       │ slot hdr  │ response slots   │ clients │ stats │
//! │ magic, ver │ & tail    │ stamp + Request  │ cursor    │ word, sleepers,  │ lock-   │ per   │
//! │ info, live │ (padded)  │ × ring_capacity  │ (padded)  │ Response × slots │ indexed │ worker│
//! └────────────┴───────────┴──────────────────┴───────────┴──────────────────┴─────────┴───────┘
//! ```
//!
//! Known traps, each avoided here:
//!
//! * the mapping is a [`memmap2::MmapRaw`], and Rust only ever sees atomics and
//!   `UnsafeCell`s in it: a `&[u8]` or `&mut [u8]` into memory that another
//!   process mutates would be unsound;
//! * the object is created with `O_EXCL` and its pages reserved with
//!   `posix_fallocate` after `ftruncate`, so a full `/dev/shm` is an error at
//!   creation, not a SIGBUS at first touch;
//! * it is created with mode 0600 and widened (if asked) only once ready;
//! * an opener waits for `Ready`, checks magic, version and the type
//!   fingerprint, recomputes the layout with its own types and compares it,
//!   and compares the header's size with `fstat` before trusting an offset.
//!
//! ```no_run
//! use kvs_core::region::{Region, RegionConfig};
//! use std::time::Duration;
//!
//! let server = Region::<u64, u64>::create("/example", &RegionConfig::default())?;
//! let client = Region::<u64, u64>::open("/example", Duration::from_secs(1))?;
//! assert_eq!(client.info().slot_count, 1024);
//! drop(client);
//! server.remove();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod clients;
pub mod header;
pub mod layout;
pub mod shm;
pub mod stats;

pub use clients::{ClientEntry, ClientInfo, ClientTable};
pub use header::{InitState, RegionHeader, RegionInfo, TypeInfo, LAYOUT_VERSION, MAGIC};
pub use layout::Layout;
pub use shm::LockFile;
pub use stats::{OpTotals, WorkerStats, MAX_WORKERS};

use crate::error::{RegionCreateError, RegionOpenError};
use crate::protocol::Request;
use crate::response_table::{Slot, SlotTable, SlotTableHeader};
use crate::ring::{Ring, RingCell, RingHeader};
use crate::sync::Ordering;
use crossbeam_utils::CachePadded;
use memmap2::{MmapOptions, MmapRaw};
use std::fmt;
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

/// Capacities and permissions of a region, chosen by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionConfig {
    /// Cells in the request ring; a power of two, at least 2.
    pub ring_capacity: usize,
    /// Response slots (each request in flight holds one).
    pub slots: usize,
    /// Client registrations (processes or handles connected at once).
    pub max_clients: usize,
    /// Stripes of the server's map (recorded for `status`).
    pub stripes: usize,
    /// Worker threads (recorded for `status`).
    pub workers: usize,
    /// Entry limit, 0 for none (recorded for `status`).
    pub max_entries: u64,
    /// Permission bits of the region and its lock file.
    pub mode: u32,
    /// Bulk buffers (listing pages and snapshot requests in flight at once).
    pub bulk_buffers: usize,
    /// Data bytes of each bulk buffer (bounds one listing page).
    pub bulk_size: usize,
    /// Subscription entries (subscribers at once).
    pub subscribers: usize,
    /// Events each subscription queue holds before it overflows (a power
    /// of two).
    pub sub_queue: usize,
}

impl Default for RegionConfig {
    fn default() -> Self {
        Self {
            ring_capacity: 1024,
            slots: 1024,
            max_clients: 256,
            stripes: 64,
            workers: 2,
            max_entries: 0,
            mode: 0o600,
            bulk_buffers: 4,
            bulk_size: 1 << 20,
            subscribers: 8,
            sub_queue: 256,
        }
    }
}

impl RegionConfig {
    /// Checks every field.
    ///
    /// # Errors
    ///
    /// A message naming the field and its allowed range.
    pub fn validate(&self) -> Result<(), String> {
        if !self.ring_capacity.is_power_of_two() || !(2..=1 << 24).contains(&self.ring_capacity) {
            return Err(format!(
                "queue capacity {} must be a power of two between 2 and 16777216",
                self.ring_capacity
            ));
        }
        if !(1..=1 << 20).contains(&self.slots) {
            return Err(format!(
                "response slots {} must be between 1 and 1048576",
                self.slots
            ));
        }
        if !(1..=1 << 16).contains(&self.max_clients) {
            return Err(format!(
                "max clients {} must be between 1 and 65536",
                self.max_clients
            ));
        }
        if !self.stripes.is_power_of_two() || self.stripes > 1 << 16 {
            return Err(format!(
                "stripes {} must be a power of two up to 65536",
                self.stripes
            ));
        }
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return Err(format!(
                "workers {} must be between 1 and {MAX_WORKERS}",
                self.workers
            ));
        }
        if !(1..=64).contains(&self.bulk_buffers) || !(4096..=1 << 28).contains(&self.bulk_size) {
            return Err(format!(
                "bulk buffers {} x {} bytes: need 1 to 64 buffers of 4 KiB to 256 MiB",
                self.bulk_buffers, self.bulk_size
            ));
        }
        if self.subscribers > 1024
            || !self.sub_queue.is_power_of_two()
            || !(2..=1 << 20).contains(&self.sub_queue)
        {
            return Err(format!(
                "subscribers {} with queues of {}: up to 1024 subscribers, queues a power of two from 2 to 1048576",
                self.subscribers, self.sub_queue
            ));
        }
        if self.mode & !0o666 != 0 || self.mode & 0o600 != 0o600 {
            return Err(format!(
                "mode {:o} must include owner read/write (0600) and have no execute or special bits",
                self.mode
            ));
        }
        Ok(())
    }
}

/// A mapped region, typed by its keys and values.
///
/// The server holds the one created by [`Region::create`]; clients hold ones
/// from [`Region::open`]. Both see the same memory.
pub struct Region<K, V> {
    name: String,
    map: MmapRaw,
    _file: File,
    lock: LockFile,
    info: RegionInfo,
    layout: Layout,
    owner: bool,
    /// `fn() -> (K, V)`: the region stores K and V but owns none.
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> fmt::Debug for Region<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("name", &self.name)
            .field("size", &self.layout.total_size)
            .field("owner", &self.owner)
            .finish()
    }
}

/// What [`Region::create`] found at the name before creating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// Nothing was there.
    Fresh,
    /// A region of a dead server was there and was replaced.
    Stale {
        /// The dead server's pid, 0 if unreadable.
        pid: u64,
    },
}

fn pod_check<K: bytemuck::Pod, V: bytemuck::Pod>() -> Result<(), String> {
    for (what, align) in [
        ("key", std::mem::align_of::<K>()),
        ("value", std::mem::align_of::<V>()),
    ] {
        if align > 64 {
            return Err(format!("{what} alignment {align} is above 64"));
        }
    }
    Ok(())
}

impl<K: bytemuck::Pod, V: bytemuck::Pod> Region<K, V> {
    /// Creates the region `name` for a server, taking over a stale one whose
    /// server died. See [`Region::create_reporting`] to learn which happened.
    ///
    /// # Errors
    ///
    /// [`RegionCreateError`]; notably `OwnerAlive` when a live server owns the
    /// name.
    pub fn create(name: &str, config: &RegionConfig) -> Result<Self, RegionCreateError> {
        Self::create_reporting(name, config).map(|(r, _)| r)
    }

    /// Like [`Region::create`], and says whether a stale region was replaced.
    ///
    /// # Errors
    ///
    /// [`RegionCreateError`].
    pub fn create_reporting(
        name: &str,
        config: &RegionConfig,
    ) -> Result<(Self, Takeover), RegionCreateError> {
        let name = shm::normalize_name(name).map_err(RegionCreateError::InvalidName)?;
        config
            .validate()
            .and_then(|()| pod_check::<K, V>())
            .map_err(RegionCreateError::InvalidConfig)?;
        let io_err = |context: &'static str, name: &str| {
            let name = name.to_string();
            move |source: io::Error| match source.kind() {
                io::ErrorKind::PermissionDenied => RegionCreateError::Permission {
                    name: name.clone(),
                    path: context.to_string(),
                    source,
                },
                _ => RegionCreateError::Io {
                    name: name.clone(),
                    context,
                    source,
                },
            }
        };

        // 1. Own the name: the lock file's byte 0, on a file still linked.
        let lock = loop {
            let lock = LockFile::open_or_create(shm::lock_path(&name), 0o600)
                .map_err(io_err("opening the lock file", &name))?;
            if !lock
                .try_lock(shm::SERVER_LOCK_BYTE)
                .map_err(io_err("locking the lock file", &name))?
            {
                return Err(RegionCreateError::OwnerAlive {
                    pid: peek_server_pid(&name).unwrap_or(0),
                    name,
                });
            }
            if lock.still_linked() {
                break lock;
            }
            // Removed under us by a server that was shutting down: again.
        };

        // 2. Anything at the name now is stale: its server let go of the lock.
        let takeover = match shm::open_object(&name) {
            Ok(_) => {
                let pid = peek_server_pid(&name).unwrap_or(0);
                shm::unlink_object(&name)
                    .map_err(|e| io_err("removing the stale region", &name)(e.into()))?;
                Takeover::Stale { pid }
            }
            Err(_) => Takeover::Fresh,
        };

        // 3. Create exclusively, size and reserve, map.
        let layout = Layout::compute::<K, V>(config);
        let file = shm::create_object(&name)
            .map_err(|e| io_err("creating the shared-memory object", &name)(e.into()))?;
        if let Err(source) = shm::size_object(&file, layout.total_size) {
            let _ = shm::unlink_object(&name);
            return Err(match source.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::ENOMEM) | Some(libc::EFBIG) => {
                    RegionCreateError::NoSpace {
                        name,
                        size: layout.total_size,
                        source,
                    }
                }
                _ => io_err("sizing the region", &name)(source),
            });
        }
        let map = MmapOptions::new()
            .len(layout.total_size)
            .map_raw(&file)
            .map_err(io_err("mapping the region", &name))?;

        let pid = std::process::id();
        let info = RegionInfo {
            key: TypeInfo::of::<K>(),
            value: TypeInfo::of::<V>(),
            cache_line: std::mem::size_of::<CachePadded<u8>>() as u64,
            total_size: layout.total_size as u64,
            ring_capacity: config.ring_capacity as u64,
            slot_count: config.slots as u64,
            max_clients: config.max_clients as u64,
            stripes: config.stripes as u64,
            workers: config.workers as u64,
            max_entries: config.max_entries,
            ring_header_offset: layout.ring_header_offset as u64,
            ring_cells_offset: layout.ring_cells_offset as u64,
            ring_cell_size: layout.ring_cell_size as u64,
            slot_header_offset: layout.slot_header_offset as u64,
            slots_offset: layout.slots_offset as u64,
            slot_size: layout.slot_size as u64,
            clients_offset: layout.clients_offset as u64,
            stats_offset: layout.stats_offset as u64,
            server_pid: u64::from(pid),
            server_start_ticks: shm::process_start_ticks(pid).unwrap_or(0),
            created_unix_ns: crate::unix_now_ns(),
            mode: u64::from(config.mode),
            bulk_offset: layout.bulk_offset as u64,
            bulk_count: config.bulk_buffers as u64,
            bulk_size: config.bulk_size as u64,
            subs_offset: layout.subs_offset as u64,
            sub_count: config.subscribers as u64,
            sub_queue: config.sub_queue as u64,
        };
        let region = Self {
            name,
            map,
            _file: file,
            lock,
            info,
            layout,
            owner: true,
            _types: PhantomData,
        };

        // 4. Initialise, then publish "ready".
        let header = region.header();
        // SAFETY: the object was created exclusively a moment ago and is not
        // yet marked Ready, so no other process relies on `info`; the pointer
        // is in bounds and aligned (offset 16 of a page-aligned mapping).
        header.info.with_mut(|p| unsafe { p.write_volatile(info) });
        region.ring().init();
        region.slots().init();
        region.clients().init();
        region.subscriptions().init();
        header.magic.store(MAGIC, Ordering::Relaxed);
        header
            .layout_version
            .store(LAYOUT_VERSION, Ordering::Relaxed);
        // SeqCst (a Release would do): everything above happens before an
        // opener's Acquire load that sees Ready.
        header
            .state
            .store(InitState::Ready as u32, Ordering::SeqCst);

        // 5. Final permissions, once ready (iceoryx2's order).
        if config.mode != 0o600 {
            shm::set_mode(&region._file, config.mode)
                .map_err(|e| io_err("setting the region's mode", &region.name)(e.into()))?;
            region
                .lock
                .set_mode(config.mode)
                .map_err(|e| io_err("setting the lock file's mode", &region.name)(e.into()))?;
        }
        Ok((region, takeover))
    }

    /// Opens the region `name`, waiting up to `wait` for a server that is
    /// still initialising it.
    ///
    /// # Errors
    ///
    /// [`RegionOpenError`]: no server, permission, not ready in time, or a
    /// mismatch of magic, version, types or layout.
    pub fn open(name: &str, wait: Duration) -> Result<Self, RegionOpenError> {
        let name = shm::normalize_name(name).map_err(RegionOpenError::InvalidName)?;
        let start = Instant::now();
        let deadline = start + wait;
        let not_ready = |name: &str| RegionOpenError::NotReady {
            name: name.to_string(),
            waited_ms: start.elapsed().as_millis() as u64,
        };
        let io_err = |context: &'static str, name: &str| {
            let name = name.to_string();
            move |source: io::Error| RegionOpenError::Io {
                name: name.clone(),
                context,
                source,
            }
        };
        loop {
            let file = match shm::open_object(&name) {
                Ok(f) => f,
                Err(nix::errno::Errno::ENOENT) => {
                    return Err(RegionOpenError::NoServer { name });
                }
                Err(nix::errno::Errno::EACCES) => {
                    let meta = std::fs::metadata(shm::object_path(&name)).ok();
                    return Err(RegionOpenError::Permission {
                        owner_uid: meta.as_ref().map_or(0, |m| m.uid()),
                        mode: meta.as_ref().map_or(0, |m| m.mode() & 0o777),
                        name,
                    });
                }
                Err(e) => return Err(io_err("opening the shared-memory object", &name)(e.into())),
            };
            let size = file
                .metadata()
                .map_err(io_err("reading the region's size", &name))?
                .len() as usize;
            if size < std::mem::size_of::<RegionHeader>() {
                // Created but not yet sized.
                if Instant::now() >= deadline {
                    return Err(not_ready(&name));
                }
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            let map = MmapOptions::new()
                .len(size)
                .map_raw(&file)
                .map_err(io_err("mapping the region", &name))?;
            // SAFETY: the mapping is at least a header long and page-aligned;
            // the header holds only atomics and an `UnsafeCell`.
            let header = unsafe { &*(map.as_ptr() as *const RegionHeader) };
            let state = header.state.load(Ordering::Acquire);
            match InitState::try_from(state) {
                Ok(InitState::Creating) => {
                    if Instant::now() >= deadline {
                        return Err(not_ready(&name));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                Ok(InitState::Closed) => return Err(RegionOpenError::Closed { name }),
                Ok(InitState::Ready) => {}
                Err(_) => {
                    let magic = header.magic.load(Ordering::Relaxed);
                    if magic != MAGIC {
                        return Err(RegionOpenError::BadMagic { name, found: magic });
                    }
                    return Err(RegionOpenError::Corrupt {
                        name,
                        detail: format!("unknown state {state}"),
                    });
                }
            }
            let magic = header.magic.load(Ordering::Relaxed);
            if magic != MAGIC {
                return Err(RegionOpenError::BadMagic { name, found: magic });
            }
            let version = header.layout_version.load(Ordering::Relaxed);
            if version != LAYOUT_VERSION {
                return Err(RegionOpenError::VersionMismatch {
                    name,
                    found: version,
                    expected: LAYOUT_VERSION,
                });
            }
            // Copy out, then validate the copy.
            // SAFETY: in bounds and aligned (checked size above); RegionInfo is
            // Pod, so whatever bytes are there form a valid value.
            let info = header.info.with(|p| unsafe { p.read_volatile() });
            let (want_k, want_v) = (TypeInfo::of::<K>(), TypeInfo::of::<V>());
            if !info.key.same_as(&want_k) || !info.value.same_as(&want_v) {
                return Err(RegionOpenError::TypeMismatch {
                    name,
                    found_key: info.key.name(),
                    found_value: info.value.name(),
                    expected_key: want_k.name(),
                    expected_value: want_v.name(),
                });
            }
            let corrupt = |detail: String| RegionOpenError::Corrupt {
                name: name.clone(),
                detail,
            };
            let config = RegionConfig {
                ring_capacity: usize::try_from(info.ring_capacity).unwrap_or(0),
                slots: usize::try_from(info.slot_count).unwrap_or(0),
                max_clients: usize::try_from(info.max_clients).unwrap_or(0),
                stripes: usize::try_from(info.stripes).unwrap_or(0),
                workers: usize::try_from(info.workers).unwrap_or(0),
                max_entries: info.max_entries,
                mode: (info.mode as u32) | 0o600,
                bulk_buffers: usize::try_from(info.bulk_count).unwrap_or(0),
                bulk_size: usize::try_from(info.bulk_size).unwrap_or(0),
                subscribers: usize::try_from(info.sub_count).unwrap_or(usize::MAX),
                sub_queue: usize::try_from(info.sub_queue).unwrap_or(0),
            };
            config.validate().map_err(corrupt)?;
            if info.cache_line != std::mem::size_of::<CachePadded<u8>>() as u64 {
                return Err(corrupt(format!(
                    "created with {}-byte cache lines, this build uses {}",
                    info.cache_line,
                    std::mem::size_of::<CachePadded<u8>>()
                )));
            }
            let layout = Layout::compute::<K, V>(&config);
            let stored = [
                info.ring_header_offset,
                info.ring_cells_offset,
                info.ring_cell_size,
                info.slot_header_offset,
                info.slots_offset,
                info.slot_size,
                info.clients_offset,
                info.stats_offset,
                info.bulk_offset,
                info.subs_offset,
                info.total_size,
            ];
            let ours = [
                layout.ring_header_offset,
                layout.ring_cells_offset,
                layout.ring_cell_size,
                layout.slot_header_offset,
                layout.slots_offset,
                layout.slot_size,
                layout.clients_offset,
                layout.stats_offset,
                layout.bulk_offset,
                layout.subs_offset,
                layout.total_size,
            ]
            .map(|v| v as u64);
            if stored != ours {
                return Err(corrupt(
                    "the header's layout does not match its capacities".into(),
                ));
            }
            if layout.total_size != size {
                return Err(corrupt(format!(
                    "the header says {} bytes, the object has {size}",
                    layout.total_size
                )));
            }
            let lock = LockFile::open(shm::lock_path(&name)).map_err(|e| match e.kind() {
                io::ErrorKind::PermissionDenied => RegionOpenError::Permission {
                    name: name.clone(),
                    owner_uid: 0,
                    mode: info.mode as u32,
                },
                io::ErrorKind::NotFound => RegionOpenError::NoServer { name: name.clone() },
                _ => io_err("opening the lock file", &name)(e),
            })?;
            return Ok(Self {
                name,
                map,
                _file: file,
                lock,
                info,
                layout,
                owner: false,
                _types: PhantomData,
            });
        }
    }
}

/// Reads a ready region's static description without knowing its types:
/// tools use it to pick the key and value types before [`Region::open`].
///
/// # Errors
///
/// As [`Region::open`], except that types are not compared.
pub fn peek_info(name: &str, wait: Duration) -> Result<RegionInfo, RegionOpenError> {
    // Open as raw bytes: any K, V whose fingerprint we then ignore. The
    // typed open re-validates everything.
    match Region::<u8, u8>::open(name, wait) {
        Ok(r) => Ok(*r.info()),
        Err(RegionOpenError::TypeMismatch { .. }) => {
            let name = shm::normalize_name(name).map_err(RegionOpenError::InvalidName)?;
            let file = shm::open_object(&name).map_err(|e| RegionOpenError::Io {
                name: name.clone(),
                context: "opening the shared-memory object",
                source: e.into(),
            })?;
            let map = MmapOptions::new()
                .len(std::mem::size_of::<RegionHeader>())
                .map_raw(&file)
                .map_err(|source| RegionOpenError::Io {
                    name: name.clone(),
                    context: "mapping the region",
                    source,
                })?;
            // SAFETY: a header-sized, page-aligned mapping; the typed open
            // above already checked magic, version and readiness.
            let header = unsafe { &*(map.as_ptr() as *const RegionHeader) };
            // SAFETY: in bounds and aligned; RegionInfo is Pod.
            Ok(header.info.with(|p| unsafe { p.read_volatile() }))
        }
        Err(e) => Err(e),
    }
}

/// Reads the pid from a region's header without validating anything else.
fn peek_server_pid(name: &str) -> Option<u64> {
    let file = shm::open_object(name).ok()?;
    let size = file.metadata().ok()?.len() as usize;
    if size < std::mem::size_of::<RegionHeader>() {
        return None;
    }
    let map = MmapOptions::new().len(size).map_raw(&file).ok()?;
    // SAFETY: at least a header long, page-aligned; atomics and UnsafeCell only.
    let header = unsafe { &*(map.as_ptr() as *const RegionHeader) };
    if header.magic.load(Ordering::Relaxed) != MAGIC
        || header.layout_version.load(Ordering::Relaxed) != LAYOUT_VERSION
    {
        return None;
    }
    // SAFETY: in bounds and aligned; RegionInfo is Pod.
    let info = header.info.with(|p| unsafe { p.read_volatile() });
    Some(info.server_pid)
}

impl<K, V> Region<K, V> {
    /// The normalised name (with the leading `/`).
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

    /// The lock file (liveness of the server and the clients).
    pub fn lock(&self) -> &LockFile {
        &self.lock
    }

    /// Whether this handle created the region.
    pub fn is_owner(&self) -> bool {
        self.owner
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

    /// The request ring.
    pub fn ring(&self) -> Ring<'_, Request<K, V>>
    where
        K: Copy,
        V: Copy,
    {
        // SAFETY: the layout places a RingHeader and `ring_capacity` cells at
        // these offsets, aligned, inside the mapping that `self` keeps alive;
        // the memory was zero-filled and initialised by the creator; the
        // capacity was validated as a power of two.
        unsafe {
            Ring::from_raw(
                self.at::<RingHeader>(self.layout.ring_header_offset),
                self.at::<RingCell<Request<K, V>>>(self.layout.ring_cells_offset),
                self.info.ring_capacity as usize,
            )
        }
    }

    /// The response table.
    pub fn slots(&self) -> SlotTable<'_, V>
    where
        V: Copy + bytemuck::Zeroable,
    {
        // SAFETY: as for `ring`: layout-derived, aligned, in bounds, and the
        // slot count was validated as non-zero.
        unsafe {
            SlotTable::from_raw(
                self.at::<SlotTableHeader>(self.layout.slot_header_offset),
                self.at::<CachePadded<Slot<V>>>(self.layout.slots_offset),
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
    pub fn subscriptions(&self) -> crate::notify::SubTable<'_, K, V>
    where
        K: Copy + bytemuck::Zeroable,
        V: Copy + bytemuck::Zeroable,
    {
        // SAFETY: layout-derived offset, 128-aligned, `sub_count` entries
        // with queues of `sub_queue` cells (validated as a power of two),
        // initialised by the creator.
        unsafe {
            crate::notify::SubTable::from_raw(
                self.at::<u8>(self.layout.subs_offset),
                self.info.sub_count as usize,
                self.info.sub_queue as usize,
                &self.header().live.subscribers,
            )
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

    /// Whether the server still serves this region: its lock is held and it
    /// has not closed the region. One `fcntl`, no lock taken.
    pub fn server_alive(&self) -> bool {
        if self.header().state.load(Ordering::Acquire) != InitState::Ready as u32 {
            return false;
        }
        // An error reading the lock is treated as alive: the deadline still
        // bounds the wait.
        self.lock
            .is_locked_by_other(shm::SERVER_LOCK_BYTE)
            .unwrap_or(true)
    }

    /// Producer side, after a push: wakes one sleeping worker, if any
    /// announced that it sleeps. No syscall when none does.
    pub fn wake_a_worker(&self) {
        let live = &self.header().live;
        // SeqCst: the producer's half of the Dekker pair with `worker_sleep`
        // (its push published with a SeqCst CAS; this load comes after).
        if live.sleeping_workers.load(Ordering::SeqCst) != 0 {
            live.ring_futex.fetch_add(1, Ordering::SeqCst);
            crate::wait::futex_wake(&live.ring_futex, 1);
        }
    }

    /// Wakes every sleeping worker (shutdown, or a stop request).
    pub fn wake_all_workers(&self) {
        let live = &self.header().live;
        live.ring_futex.fetch_add(1, Ordering::SeqCst);
        crate::wait::futex_wake(&live.ring_futex, u32::MAX);
    }

    /// Worker side: sleeps on the ring's futex for at most `timeout`, unless
    /// `has_work()` holds once this worker is counted as sleeping.
    ///
    /// The eventcount pattern: read the futex word, announce, re-check, sleep
    /// only while the word is unchanged. A producer that pushed before our
    /// announcement is seen by the re-check; one that pushes after it sees
    /// the announcement and bumps the word, so the sleep returns at once.
    pub fn worker_sleep(&self, timeout: Duration, has_work: impl Fn() -> bool) {
        let live = &self.header().live;
        let seen = live.ring_futex.load(Ordering::SeqCst);
        // SeqCst: the worker's half of the Dekker pair with `wake_a_worker`.
        live.sleeping_workers.fetch_add(1, Ordering::SeqCst);
        if !has_work() {
            crate::wait::futex_wait(&live.ring_futex, seen, Some(timeout));
        }
        live.sleeping_workers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Client side: asks the server's housekeeper to reclaim slots now.
    pub fn poke_housekeeper(&self) {
        let live = &self.header().live;
        live.housekeeper_futex.fetch_add(1, Ordering::SeqCst);
        crate::wait::futex_wake(&live.housekeeper_futex, 1);
    }

    /// Server side: sleeps until poked or `timeout`.
    pub fn housekeeper_sleep(&self, timeout: Duration) {
        let live = &self.header().live;
        let seen = live.housekeeper_futex.load(Ordering::SeqCst);
        crate::wait::futex_wait(&live.housekeeper_futex, seen, Some(timeout));
    }

    /// Server side: marks the region closed, so clients fail fast.
    pub fn mark_closed(&self) {
        self.header()
            .state
            .store(InitState::Closed as u32, Ordering::SeqCst);
    }

    /// Server side: closes the region and removes its name and lock file.
    /// Clients still mapped keep their memory until they unmap.
    pub fn remove(self) {
        drop(self);
    }

    /// Removes the region `name` and its lock file if their server is dead.
    ///
    /// Returns what was removed; leaves a live server's region alone.
    ///
    /// # Errors
    ///
    /// An invalid name, or an OS error other than "not found".
    pub fn remove_stale(name: &str) -> io::Result<Vec<String>> {
        let name = shm::normalize_name(name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut removed = Vec::new();
        let lock_path = shm::lock_path(&name);
        let lock = match LockFile::open(lock_path.clone()) {
            Ok(l) => Some(l),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(lock) = &lock {
            // Take the server byte ourselves so no server starts meanwhile.
            if !lock.try_lock(shm::SERVER_LOCK_BYTE)? {
                return Ok(removed);
            }
        }
        if shm::unlink_object(&name).is_ok() {
            removed.push(shm::object_path(&name).display().to_string());
        }
        if let Some(lock) = lock {
            if lock.remove().is_ok() {
                removed.push(lock_path.display().to_string());
            }
        }
        Ok(removed)
    }

    /// Names of every region (or orphaned lock file) under `/dev/shm` whose
    /// server is dead, checked by their lock file.
    pub fn stale_names() -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(shm::SHM_DIR) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in dir.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let Some(base) = file_name.strip_suffix(".lock") else {
                continue;
            };
            let Ok(lock) = LockFile::open(entry.path()) else {
                continue;
            };
            if matches!(lock.is_locked_by_other(shm::SERVER_LOCK_BYTE), Ok(false)) {
                out.push(format!("/{base}"));
            }
        }
        out
    }
}

impl<K, V> Drop for Region<K, V> {
    fn drop(&mut self) {
        if self.owner {
            self.mark_closed();
            let _ = shm::unlink_object(&self.name);
            if self.lock.still_linked() {
                let _ = self.lock.remove();
            }
        }
    }
}

// SAFETY: the region is accessed only through atomics and the ring/slot
// protocols; the handle itself holds a mapping, a file and a lock file, all of
// which may move between and be shared by threads.
unsafe impl<K, V> Send for Region<K, V> {}
// SAFETY: as above.
unsafe impl<K, V> Sync for Region<K, V> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::OpCode;
    use crate::response_table::Poll;

    fn unique(tag: &str) -> String {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        format!(
            "/kvs-core-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )
    }

    #[test]
    fn create_open_and_talk() {
        let name = unique("talk");
        let server = Region::<u64, u64>::create(&name, &RegionConfig::default()).unwrap();
        let client = Region::<u64, u64>::open(&name, Duration::from_secs(1)).unwrap();
        assert!(client.server_alive());
        let slots = client.slots();
        let claim = slots.claim(0).unwrap();
        slots.mark_pending(&claim);
        client
            .ring()
            .push(Request::new(
                OpCode::Get,
                claim.index,
                claim.generation,
                0,
                5,
                0,
            ))
            .unwrap();
        let req = server.ring().pop().unwrap();
        assert_eq!(req.key, 5);
        let begun = server.slots().begin(req.slot, req.generation).unwrap();
        server.slots().complete(
            begun,
            crate::protocol::Response::status(crate::protocol::StatusCode::NotFound),
            &crate::wait::FutexParker,
        );
        assert!(matches!(slots.poll(&claim), Poll::Ready(_)));
        drop(server);
        assert!(!client.server_alive());
        assert!(matches!(
            Region::<u64, u64>::open(&name, Duration::ZERO),
            Err(RegionOpenError::NoServer { .. })
        ));
    }

    #[test]
    fn second_server_on_a_live_name_is_refused() {
        let name = unique("live");
        let _server = Region::<u64, u64>::create(&name, &RegionConfig::default()).unwrap();
        assert!(matches!(
            Region::<u64, u64>::create(&name, &RegionConfig::default()),
            Err(RegionCreateError::OwnerAlive { .. })
        ));
    }

    #[test]
    fn type_mismatch_names_both_sides() {
        let name = unique("types");
        let _server = Region::<u64, [u8; 256]>::create(&name, &RegionConfig::default()).unwrap();
        let err = Region::<u32, u64>::open(&name, Duration::ZERO).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("u64 -> [u8; 256]"), "{msg}");
        assert!(msg.contains("expects u32 -> u64"), "{msg}");
    }

    #[test]
    fn corrupt_header_fields_are_refused() {
        let name = unique("corrupt");
        let server = Region::<u64, u64>::create(&name, &RegionConfig::default()).unwrap();
        let h = server.header();
        h.layout_version.store(99, Ordering::SeqCst);
        assert!(matches!(
            Region::<u64, u64>::open(&name, Duration::ZERO),
            Err(RegionOpenError::VersionMismatch { found: 99, .. })
        ));
        h.layout_version.store(LAYOUT_VERSION, Ordering::SeqCst);
        h.magic.store(u64::MAX, Ordering::SeqCst);
        assert!(matches!(
            Region::<u64, u64>::open(&name, Duration::ZERO),
            Err(RegionOpenError::BadMagic { .. })
        ));
        h.magic.store(MAGIC, Ordering::SeqCst);
        // A lying capacity in the info.
        let mut info = *server.info();
        info.slot_count = 7;
        // SAFETY: test-only scribble over our own header's Pod info.
        h.info.with_mut(|p| unsafe { p.write_volatile(info) });
        assert!(matches!(
            Region::<u64, u64>::open(&name, Duration::ZERO),
            Err(RegionOpenError::Corrupt { .. })
        ));
        h.state.store(InitState::Creating as u32, Ordering::SeqCst);
        assert!(matches!(
            Region::<u64, u64>::open(&name, Duration::from_millis(20)),
            Err(RegionOpenError::NotReady { .. })
        ));
    }

    #[test]
    fn stale_region_is_taken_over() {
        let name = unique("stale");
        let first = Region::<u64, u64>::create(&name, &RegionConfig::default()).unwrap();
        // Simulate a crash: keep the files, drop the lock.
        let mut first = std::mem::ManuallyDrop::new(first);
        first.owner = false;
        // SAFETY: test-only; we drop the region exactly once here, with
        // `owner` cleared so the files are left behind as after a crash.
        unsafe { std::mem::ManuallyDrop::drop(&mut first) };
        let (second, takeover) =
            Region::<u64, u64>::create_reporting(&name, &RegionConfig::default()).unwrap();
        assert!(matches!(takeover, Takeover::Stale { .. }));
        drop(second);
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
                workers: 0,
                ..RegionConfig::default()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
    }
}
