//! Creating a region for a server: claim the name, make the control
//! segment and the store segment (or adopt an earlier server's store),
//! publish `Ready`, listen.

use super::config::max_region_bytes;
use super::endpoint::{self, normalize_name, LockError, NameLock};
use super::header::{InitState, RegionInfo, LAYOUT_VERSION, MAGIC};
use super::layout::Layout;
use super::store_segment::StoreSegment;
use super::{memfd, Region, RegionConfig, Role};
use crate::error::RegionCreateError;
use crate::store::segment::Segment;
use crate::sync::Ordering;
use crossbeam_utils::CachePadded;
use memmap2::MmapOptions;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// What [`Region::create_reporting`] found at the name before creating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// Nothing was there.
    Fresh,
    /// The files of a dead server were there and were replaced.
    Stale {
        /// The dead server's pid, 0 if unreadable.
        pid: u64,
    },
}

/// Where a new region's store comes from.
#[derive(Debug)]
pub enum StoreSource {
    /// A new, empty store segment.
    Fresh,
    /// An earlier server's store segment (read-write), from its keeper.
    Adopt(OwnedFd),
}

impl Region {
    /// Creates the region `name` for a server, taking over the files of a
    /// dead server. Returns the region, the listening socket (for the
    /// server's acceptor; see [`super::handshake`]) and what was there before.
    ///
    /// # Errors
    ///
    /// [`RegionCreateError`]; notably `OwnerAlive` when a live server owns
    /// the name.
    pub fn create_reporting(
        name: &str,
        config: &RegionConfig,
    ) -> Result<(Self, OwnedFd, Takeover), RegionCreateError> {
        Self::create_with_store(name, config, |_, _| Ok(StoreSource::Fresh))
    }

    /// [`create_reporting`](Self::create_reporting) with the store segment
    /// chosen by `pick`, which is called once the name is claimed (so no
    /// other server of the name runs) with the normalized name and the
    /// socket directory: a fresh store, or one adopted from an earlier
    /// server's keeper.
    ///
    /// An adopted store keeps the layout it was made with: its key and
    /// value limits, stripe count and size replace the configuration's
    /// (the region's [`RegionInfo`] says what is in effect).
    ///
    /// # Errors
    ///
    /// As [`create_reporting`](Self::create_reporting); an error of `pick`,
    /// and an adopted store that is not a store, are `Io` and
    /// `InvalidConfig` errors naming the earlier server's store.
    pub fn create_with_store(
        name: &str,
        config: &RegionConfig,
        pick: impl FnOnce(&str, &std::path::Path) -> io::Result<StoreSource>,
    ) -> Result<(Self, OwnedFd, Takeover), RegionCreateError> {
        let name = normalize_name(name).map_err(RegionCreateError::InvalidName)?;
        config
            .validate()
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

        // 1. The socket directory, and the claim on the name in it.
        let dir_path = endpoint::server_dir(config.socket_dir.as_deref());
        let dir = endpoint::prepare_server_dir(&dir_path).map_err(RegionCreateError::SocketDir)?;
        let (lock, previous) = NameLock::acquire(&dir, &name).map_err(|e| match e {
            LockError::Held { pid } => RegionCreateError::OwnerAlive {
                name: name.clone(),
                pid: u64::from(pid),
            },
            LockError::Io(source) => RegionCreateError::Io {
                name: name.clone(),
                context: "claiming the lock file",
                source,
            },
        })?;
        let takeover = match previous {
            endpoint::Previous::Fresh => Takeover::Fresh,
            endpoint::Previous::Dead { pid } => Takeover::Stale {
                pid: u64::from(pid),
            },
        };
        // From here on, a failure must not leave the lock file behind.
        let fail = |e: RegionCreateError| {
            lock.remove(&dir);
            e
        };

        // 2. The store: fresh, or adopted (whose layout then wins).
        let mut config = config.clone();
        let source = pick(&name, &dir_path)
            .map_err(|e| fail(io_err("taking over the earlier server's store", &name)(e)))?;
        let (store, store_id) = match source {
            StoreSource::Fresh => (
                StoreSegment::create(&name, config.store_size(), 0)
                    .map_err(|e| fail(io_err("creating the store's memory", &name)(e)))?,
                crate::secure_fs::random_u64(),
            ),
            StoreSource::Adopt(fd) => {
                let refused = |e: String| {
                    fail(RegionCreateError::InvalidConfig(format!(
                        "the earlier server's store cannot be adopted ({e}); \
                         discard it with kvs_server --cleanup"
                    )))
                };
                let size = std::fs::File::from(fd.try_clone().map_err(|e| refused(e.to_string()))?)
                    .metadata()
                    .map_err(|e| refused(e.to_string()))?
                    .len();
                if size > super::config::MAX_MEMORY_LIMIT.saturating_mul(4) {
                    return Err(refused(format!("{size} bytes is more than any store")));
                }
                let s = StoreSegment::adopt(fd, size).map_err(|e| refused(e.to_string()))?;
                let g = crate::store::layout::Geometry::from_header(&s.words())
                    .map_err(|e| refused(e.to_string()))?;
                config.max_key = g.max_key;
                config.max_value = g.max_value;
                config.stripes = 1 << g.stripe_bits;
                config.validate().map_err(refused)?;
                let id = s
                    .words()
                    .load(crate::store::layout::hdr::STORE_ID * 8)
                    .unwrap_or(0);
                (s, id)
            }
        };
        let store_size = store.len();

        // 3. The memory: a sealed memfd, mapped; never more than this machine
        //    can give (a memfd's pages come out of memory, not a disk).
        let layout =
            Layout::compute(&config).map_err(|e| fail(RegionCreateError::InvalidConfig(e)))?;
        // The reserved part is committed at once; the staging buffers and
        // the subscription queues only as they are used, but they may all
        // be used at once, so each must fit too.
        let limit = max_region_bytes();
        let staging = (layout.subs_offset - layout.bulk_offset) as u64;
        let queues = (layout.total_size - layout.subs_offset) as u64;
        let refuse = |what: &str, bytes: u64, lower: &str| {
            fail(RegionCreateError::InvalidConfig(format!(
                "{what} would take {} MiB, more than the {} MiB this machine allows \
                 (half its memory, at most 16 GiB); lower {lower}",
                bytes >> 20,
                limit >> 20
            )))
        };
        let fixed = (layout.reserved as u64).saturating_add(queues);
        if fixed > limit {
            return Err(refuse(
                "the region and its subscription queues",
                fixed,
                "--slots, --queue-capacity, --max-clients, --subscribers or --subscriber-queue",
            ));
        }
        if staging > limit {
            return Err(refuse(
                "the staging buffers",
                staging,
                "--staging-buffers or --max-value-size",
            ));
        }
        let file = memfd::create(&name, layout.total_size as u64, layout.reserved as u64).map_err(
            |source| {
                fail(match source.raw_os_error() {
                    Some(libc::ENOSPC) | Some(libc::ENOMEM) | Some(libc::EFBIG) => {
                        RegionCreateError::NoSpace {
                            name: name.clone(),
                            size: layout.total_size,
                            source,
                        }
                    }
                    _ => io_err("creating the region's memory", &name)(source),
                })
            },
        )?;
        let map = MmapOptions::new()
            .len(layout.total_size)
            .map_raw(&file)
            .map_err(|e| fail(io_err("mapping the region", &name)(e)))?;

        let pid = std::process::id();
        let info = RegionInfo {
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
            server_start_ticks: 0,
            created_unix_ns: crate::unix_now_ns(),
            mode: u64::from(config.mode),
            bulk_offset: layout.bulk_offset as u64,
            bulk_count: config.bulk_buffers as u64,
            bulk_size: config.bulk_size(),
            subs_offset: layout.subs_offset as u64,
            sub_count: config.subscribers as u64,
            sub_queue: config.sub_queue as u64,
            sub_cell_bytes: config.sub_cell_bytes(),
            max_key: config.max_key,
            max_value: config.max_value,
            max_memory: config.max_memory,
            store_size,
            store_id,
        };

        // 4. Initialise, then publish "ready" (nobody else has the memory
        //    yet; the store orders the writes for those who get it later).
        let region = Self {
            name,
            map,
            file,
            info,
            layout,
            store: Arc::new(store),
            geometry: None,
            role: Role::Server {
                dir,
                lock,
                state: std::sync::atomic::AtomicU32::new(InitState::Ready as u32),
                state_writes: parking_lot::Mutex::new(()),
            },
        };
        let header = region.header();
        // SAFETY: nobody else has the memory yet; the pointer is in bounds
        // and aligned (offset 16 of a page-aligned mapping).
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

        // 5. The socket clients connect to, with the region's mode. The
        //    region's Drop removes it and the lock file on failure.
        let Role::Server { dir, .. } = &region.role else {
            unreachable!("created as the server")
        };
        let listener = endpoint::listen(dir, &region.name, config.mode)
            .map_err(io_err("listening on the region's socket", &region.name))?;
        Ok((region, listener, takeover))
    }
}
