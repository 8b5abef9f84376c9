//! The shared region: one sealed `memfd` holding the header, the request
//! ring, the response table, the client registrations and the per-worker
//! statistics, all `#[repr(C)]` at offsets from the start. The server hands
//! it to each client over its socket ([`endpoint`], [`handshake`]).
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
//! * the memory is a `memfd` with its pages reserved and sealed against
//!   shrinking and growing ([`memfd`]): no holder can `ftruncate` it under
//!   the server (named POSIX shared memory cannot be sealed, and a
//!   truncated mapping kills with `SIGBUS`);
//! * it has no name anyone could open: clients receive the descriptor from
//!   the server, after both checked the other's credentials ([`endpoint`]);
//! * an opener checks the seals and the size, waits for `Ready`, checks
//!   magic, version and the type fingerprint, recomputes the layout with its
//!   own types and compares it before trusting an offset.
//!
//! ```no_run
//! use kvs_core::region::{Region, RegionConfig};
//! use std::time::Duration;
//!
//! let (server, listener, _) =
//!     Region::<u64, u64>::create_reporting("example", &RegionConfig::default())?;
//! // ... the server's acceptor answers clients on `listener`; then:
//! let client = Region::<u64, u64>::open("example", Duration::from_secs(1))?;
//! assert_eq!(client.info().slot_count, 1024);
//! drop(client);
//! server.remove();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod clients;
pub mod endpoint;
pub mod handshake;
pub mod header;
pub mod layout;
pub mod memfd;
pub mod stats;

pub use clients::{ClientEntry, ClientInfo, ClientTable};
pub use endpoint::{normalize_name, Peer};
pub use header::{InitState, RegionHeader, RegionInfo, TypeInfo, LAYOUT_VERSION, MAGIC};
pub use layout::Layout;
pub use stats::{OpTotals, WorkerStats, MAX_WORKERS};

use crate::error::{RegionCreateError, RegionOpenError};
use crate::response_table::{Slot, SlotTable, SlotTableHeader};
use crate::ring::{Ring, RingCell, RingHeader};
use crate::secure_fs::Dir;
use crate::sync::Ordering;
use crate::wait::FutexParker;
use crossbeam_utils::CachePadded;
use endpoint::{ConnectError, LockError, NameLock};
use handshake::{Kind, RecvError, Welcome};
use memmap2::{MmapOptions, MmapRaw};
use std::fmt;
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
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
    /// Who may connect: 0600 (this user), 0660 (and the group), 0666
    /// (everyone); the socket's permission bits.
    pub mode: u32,
    /// The directory of the server's socket (`None`: the default, see
    /// [`endpoint`]).
    pub socket_dir: Option<PathBuf>,
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
            socket_dir: None,
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
        if ![0o600, 0o660, 0o666].contains(&self.mode) {
            return Err(format!(
                "mode {:o} is not one of 600 (this user only), 660 (and its group) or 666 (every user)",
                self.mode
            ));
        }
        Ok(())
    }
}

/// A mapped region, typed by its keys and values.
///
/// The server holds the one created by [`Region::create_reporting`];
/// clients hold ones from [`Region::open`] or [`Region::attach`]. Both see
/// the same memory.
pub struct Region<K, V> {
    name: String,
    map: MmapRaw,
    file: File,
    info: RegionInfo,
    layout: Layout,
    role: Role,
    /// `fn() -> (K, V)`: the region stores K and V but owns none.
    _types: PhantomData<fn() -> (K, V)>,
}

/// Which side of the region a handle is.
enum Role {
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

impl<K, V> fmt::Debug for Region<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("name", &self.name)
            .field("size", &self.layout.total_size)
            .field("owner", &self.is_owner())
            .finish()
    }
}

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

/// How a client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// How long to wait for the server's answer (it may still be starting).
    pub wait: Duration,
    /// Where the server's socket is (`None`: the default directories).
    pub socket_dir: Option<PathBuf>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(2),
            socket_dir: None,
        }
    }
}

/// A connection the server answered: the descriptor of its region and what
/// it said, not yet mapped with types (see [`Region::attach`]).
#[derive(Debug)]
pub struct Session {
    name: String,
    conn: OwnedFd,
    file: File,
    welcome: Welcome,
    server: Peer,
}

impl Session {
    /// Connects to the server of `name` and asks for `kind` (see
    /// [`handshake`]).
    ///
    /// # Errors
    ///
    /// [`RegionOpenError`]: no server, permission, an untrusted socket, no
    /// answer in time, every registration taken, a malformed answer.
    pub fn connect(
        name: &str,
        kind: Kind,
        options: &ConnectOptions,
    ) -> Result<Self, RegionOpenError> {
        let name = normalize_name(name).map_err(RegionOpenError::InvalidName)?;
        let (conn, server) =
            endpoint::connect(&name, options.socket_dir.as_deref()).map_err(|e| match e {
                ConnectError::NotFound { searched } => RegionOpenError::NoServer {
                    name: name.clone(),
                    detail: format!(
                        "no socket {} in {}",
                        endpoint::socket_file(&name),
                        searched
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ),
                },
                ConnectError::Refused { path } => RegionOpenError::NoServer {
                    name: name.clone(),
                    detail: format!(
                        "{} is left from a server that is no longer running (kvs_server --cleanup removes it)",
                        path.display()
                    ),
                },
                ConnectError::Permission {
                    path,
                    owner_uid,
                    mode,
                } => RegionOpenError::Permission {
                    name: name.clone(),
                    path,
                    owner_uid,
                    mode,
                },
                ConnectError::Untrusted { path, reason } => RegionOpenError::Untrusted {
                    name: name.clone(),
                    path,
                    reason,
                },
                ConnectError::Io { path, source } => RegionOpenError::Io {
                    name: format!("{name} ({})", path.display()),
                    context: "connecting to the server",
                    source,
                },
            })?;
        let io_err = |context: &'static str, name: &str| {
            let name = name.to_string();
            move |source: io::Error| RegionOpenError::Io {
                name: name.clone(),
                context,
                source,
            }
        };
        let start = Instant::now();
        handshake::send_hello(conn.as_fd(), kind).map_err(io_err("greeting the server", &name))?;
        let (welcome, fd) = match handshake::recv_welcome(conn.as_fd(), options.wait) {
            Ok(w) => w,
            Err(RecvError::TimedOut) => {
                return Err(RegionOpenError::NotReady {
                    name,
                    waited_ms: start.elapsed().as_millis() as u64,
                })
            }
            Err(RecvError::Closed) => {
                return Err(RegionOpenError::Closed { name });
            }
            Err(RecvError::Malformed(detail)) => {
                return Err(RegionOpenError::Corrupt { name, detail })
            }
            Err(RecvError::Io(e)) => return Err(io_err("reading the server's answer", &name)(e)),
        };
        let corrupt = |detail: String| RegionOpenError::Corrupt {
            name: name.clone(),
            detail,
        };
        match welcome.status().map_err(corrupt)? {
            handshake::Status::Ok => {}
            handshake::Status::TooManyClients => {
                return Err(RegionOpenError::TooManyClients {
                    name,
                    max: u64::from(welcome.max_clients),
                })
            }
            handshake::Status::Denied => {
                return Err(RegionOpenError::Denied {
                    name,
                    server_uid: welcome.server_uid,
                })
            }
            handshake::Status::Closing => return Err(RegionOpenError::Closed { name }),
            handshake::Status::BadHello => {
                return Err(corrupt("the server did not understand our hello".into()))
            }
        }
        let file = File::from(fd.ok_or_else(|| corrupt("the server sent no region".into()))?);
        memfd::check(&file, welcome.region_size).map_err(corrupt)?;
        Ok(Self {
            name,
            conn,
            file,
            welcome,
            server,
        })
    }

    /// The region name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the server answered.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The server's credentials.
    pub fn server(&self) -> Peer {
        self.server
    }

    /// The region's descriptor (for tools that map it themselves).
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Reads and checks the region's header without knowing its types:
    /// magic, version, readiness, and that its size is what it says.
    ///
    /// # Errors
    ///
    /// As [`Region::attach`], except that types are not compared.
    pub fn info(&self) -> Result<RegionInfo, RegionOpenError> {
        let map = map_file(&self.file, &self.name, self.welcome.region_size)?;
        read_header(&map, &self.name, self.welcome.region_size)
    }
}

fn map_file(file: &File, name: &str, size: u64) -> Result<MmapRaw, RegionOpenError> {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size < std::mem::size_of::<RegionHeader>() {
        return Err(RegionOpenError::Corrupt {
            name: name.to_string(),
            detail: format!("the region is only {size} bytes"),
        });
    }
    MmapOptions::new()
        .len(size)
        .map_raw(file)
        .map_err(|source| RegionOpenError::Io {
            name: name.to_string(),
            context: "mapping the region",
            source,
        })
}

/// Checks magic, state and version and copies the static description out.
fn read_header(map: &MmapRaw, name: &str, size: u64) -> Result<RegionInfo, RegionOpenError> {
    // SAFETY: the mapping is at least a header long (checked by `map_file`)
    // and page-aligned; the header holds only atomics and an `UnsafeCell`.
    let header = unsafe { &*(map.as_ptr() as *const RegionHeader) };
    let name = name.to_string();
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
    // Acquire pairs with the creator's SeqCst store of Ready: everything it
    // wrote before is visible.
    let state = header.state.load(Ordering::Acquire);
    match InitState::try_from(state) {
        Ok(InitState::Ready) => {}
        Ok(InitState::Closed | InitState::Draining) => {
            return Err(RegionOpenError::Closed { name })
        }
        Ok(InitState::Creating) => {
            return Err(RegionOpenError::NotReady { name, waited_ms: 0 });
        }
        Err(_) => {
            return Err(RegionOpenError::Corrupt {
                name,
                detail: format!("unknown state {state}"),
            })
        }
    }
    // Copy out, then validate the copy.
    // SAFETY: in bounds and aligned (the mapping holds a whole header);
    // RegionInfo is Pod, so whatever bytes are there form a valid value.
    let info = header.info.with(|p| unsafe { p.read_volatile() });
    if info.total_size != size {
        return Err(RegionOpenError::Corrupt {
            name,
            detail: format!(
                "the header says {} bytes, the region has {size}",
                info.total_size
            ),
        });
    }
    Ok(info)
}

impl<K: bytemuck::Pod, V: bytemuck::Pod> Region<K, V> {
    /// Creates the region `name` for a server, taking over the files of a
    /// dead server. Returns the region, the listening socket (for the
    /// server's acceptor; see [`handshake`]) and what was there before.
    ///
    /// # Errors
    ///
    /// [`RegionCreateError`]; notably `OwnerAlive` when a live server owns
    /// the name.
    pub fn create_reporting(
        name: &str,
        config: &RegionConfig,
    ) -> Result<(Self, OwnedFd, Takeover), RegionCreateError> {
        let name = normalize_name(name).map_err(RegionCreateError::InvalidName)?;
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

        // 2. The memory: a sealed memfd, mapped; never more than this machine
        //    can give (a memfd's pages come out of memory, not a disk).
        let layout = Layout::compute::<K, V>(config)
            .map_err(|e| fail(RegionCreateError::InvalidConfig(e)))?;
        let limit = max_region_bytes();
        if layout.total_size as u64 > limit {
            return Err(fail(RegionCreateError::InvalidConfig(format!(
                "the region would take {} MiB, more than the {} MiB this machine allows \
                 (half its memory, at most 16 GiB); lower --slots, --queue-capacity, \
                 --max-clients, --subscribers or --subscriber-queue",
                layout.total_size >> 20,
                limit >> 20
            ))));
        }
        let file = memfd::create(&name, layout.total_size).map_err(|source| {
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
        })?;
        let map = MmapOptions::new()
            .len(layout.total_size)
            .map_raw(&file)
            .map_err(|e| fail(io_err("mapping the region", &name)(e)))?;

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
            server_start_ticks: 0,
            created_unix_ns: crate::unix_now_ns(),
            mode: u64::from(config.mode),
            bulk_offset: layout.bulk_offset as u64,
            bulk_count: config.bulk_buffers as u64,
            bulk_size: config.bulk_size as u64,
            subs_offset: layout.subs_offset as u64,
            sub_count: config.subscribers as u64,
            sub_queue: config.sub_queue as u64,
        };

        // 3. Initialise, then publish "ready" (nobody else has the memory
        //    yet; the store orders the writes for those who get it later).
        let region = Self {
            name,
            map,
            file,
            info,
            layout,
            role: Role::Server {
                dir,
                lock,
                state: std::sync::atomic::AtomicU32::new(InitState::Ready as u32),
                state_writes: parking_lot::Mutex::new(()),
            },
            _types: PhantomData,
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

        // 4. The socket clients connect to, with the region's mode. The
        //    region's Drop removes it and the lock file on failure.
        let Role::Server { dir, .. } = &region.role else {
            unreachable!("created as the server")
        };
        let listener = endpoint::listen(dir, &region.name, config.mode)
            .map_err(io_err("listening on the region's socket", &region.name))?;
        Ok((region, listener, takeover))
    }

    /// Connects to the server of `name` as a registered client, waiting up
    /// to `wait` for its answer, with the default socket directories.
    ///
    /// # Errors
    ///
    /// As [`Region::open_with`].
    pub fn open(name: &str, wait: Duration) -> Result<Self, RegionOpenError> {
        Self::open_with(
            name,
            &ConnectOptions {
                wait,
                socket_dir: None,
            },
        )
    }

    /// Connects to the server of `name` as a registered client.
    ///
    /// # Errors
    ///
    /// [`RegionOpenError`]: no server, permission, not ready in time, or a
    /// mismatch of magic, version, types or layout.
    pub fn open_with(name: &str, options: &ConnectOptions) -> Result<Self, RegionOpenError> {
        Self::attach(Session::connect(name, Kind::Client, options)?)
    }

    /// Maps a session's region with types `K` and `V` after checking them
    /// and the layout against the header.
    ///
    /// # Errors
    ///
    /// [`RegionOpenError`]: bad magic, another version, other types, or a
    /// header whose layout does not add up.
    pub fn attach(session: Session) -> Result<Self, RegionOpenError> {
        let Session {
            name,
            conn,
            file,
            welcome,
            server,
        } = session;
        let map = map_file(&file, &name, welcome.region_size)?;
        let info = read_header(&map, &name, welcome.region_size)?;
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
            mode: u32::try_from(info.mode).unwrap_or(0),
            socket_dir: None,
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
        let layout = Layout::compute::<K, V>(&config).map_err(corrupt)?;
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
        if welcome
            .registration()
            .is_some_and(|(index, _)| u64::from(index) >= info.max_clients)
        {
            return Err(corrupt(format!(
                "registration {} is beyond the {} the region holds",
                welcome.registration, info.max_clients
            )));
        }
        Ok(Self {
            name,
            map,
            file,
            info,
            layout,
            role: Role::Client {
                conn,
                welcome,
                server,
            },
            _types: PhantomData,
        })
    }
}

/// Reads a ready region's static description without knowing its types
/// (tools use it to pick the key and value types before
/// [`Region::attach`]), with the server's answer (version, entry count).
///
/// # Errors
///
/// As [`Session::connect`] and [`Session::info`].
pub fn peek_info(
    name: &str,
    options: &ConnectOptions,
) -> Result<(RegionInfo, Session), RegionOpenError> {
    let session = Session::connect(name, Kind::Probe, options)?;
    let info = session.info()?;
    Ok((info, session))
}

/// The largest region this machine allows: half its memory, at most 16 GiB.
pub fn max_region_bytes() -> u64 {
    const CAP: u64 = 16 << 30;
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(CAP, |kib| kib.saturating_mul(1024));
    (total / 2).min(CAP)
}

/// What [`remove_stale`] did with one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleanup {
    /// A live server owns the name; nothing was touched.
    Alive,
    /// These files of a dead server were removed.
    Removed(Vec<PathBuf>),
}

/// Removes the socket and lock file of `name` in the socket directory if
/// their server is dead; leaves a live server's alone.
///
/// # Errors
///
/// An invalid name, an unusable socket directory, or an OS error.
pub fn remove_stale(name: &str, socket_dir: Option<&Path>) -> Result<Cleanup, String> {
    let name = normalize_name(name)?;
    let path = endpoint::server_dir(socket_dir);
    let dir = match Dir::open(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Cleanup::Removed(Vec::new())),
        Err(e) => return Err(format!("socket directory {}: {e}", path.display())),
    };
    let exists = |file: String| {
        nix::sys::stat::fstatat(
            dir.as_fd(),
            file.as_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok()
    };
    if !exists(endpoint::socket_file(&name)) && !exists(endpoint::lock_file(&name)) {
        return Ok(Cleanup::Removed(Vec::new()));
    }
    // Claim the name ourselves, so no server starts meanwhile.
    let (lock, previous) = match NameLock::acquire(&dir, &name) {
        Ok(claimed) => claimed,
        Err(LockError::Held { .. }) => return Ok(Cleanup::Alive),
        Err(LockError::Io(e)) => return Err(format!("{}: {e}", path.display())),
    };
    let mut removed = Vec::new();
    if dir.unlink(&endpoint::socket_file(&name)).is_ok() {
        removed.push(path.join(endpoint::socket_file(&name)));
    }
    lock.remove(&dir);
    if previous != endpoint::Previous::Fresh {
        removed.push(path.join(endpoint::lock_file(&name)));
    }
    Ok(Cleanup::Removed(removed))
}

/// Names in the socket directory whose server is dead (their lock is free).
pub fn stale_names(socket_dir: Option<&Path>) -> Vec<String> {
    let path = endpoint::server_dir(socket_dir);
    let (Ok(entries), Ok(dir)) = (std::fs::read_dir(&path), Dir::open(&path)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(base) = file_name
            .strip_suffix(".lock")
            .or_else(|| file_name.strip_suffix(".sock"))
        else {
            continue;
        };
        if normalize_name(base).is_err() || out.iter().any(|n| n == base) {
            continue;
        }
        if endpoint::lock_is_held(&dir, base) != Some(true) {
            out.push(base.to_string());
        }
    }
    out
}

impl<K, V> Region<K, V> {
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
    pub fn slots(&self) -> SlotTable<'_, K, V>
    where
        K: bytemuck::Pod,
        V: bytemuck::Pod,
    {
        // SAFETY: as for `ring`: layout-derived, aligned, in bounds, and the
        // slot count was validated as non-zero.
        unsafe {
            SlotTable::from_raw(
                self.at::<SlotTableHeader>(self.layout.slot_header_offset),
                self.at::<CachePadded<Slot<K, V>>>(self.layout.slots_offset),
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
        K: bytemuck::Pod,
        V: bytemuck::Pod,
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

impl<K, V> Region<K, V> {
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

impl<K, V> Drop for Region<K, V> {
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
unsafe impl<K, V> Send for Region<K, V> {}
// SAFETY: as above.
unsafe impl<K, V> Sync for Region<K, V> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::OpCode;
    use crate::response_table::Poll;

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
    fn serve<K, V>(region: &Region<K, V>, listener: &OwnedFd) -> OwnedFd {
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
        if hello.kind().unwrap() == Kind::Client {
            w.registration = 0;
            w.registration_generation = 1;
        }
        handshake::send_welcome(conn.as_fd(), &w, Some(region.memfd())).unwrap();
        conn
    }

    /// Opens `name` as a client while this thread's helper answers.
    fn open<K: bytemuck::Pod + Send + Sync, V: bytemuck::Pod + Send + Sync>(
        server: &Region<K, V>,
        listener: &OwnedFd,
        dir: &TestDir,
        name: &str,
    ) -> (Result<Region<K, V>, RegionOpenError>, OwnedFd) {
        std::thread::scope(|s| {
            let serving = s.spawn(|| serve(server, listener));
            let client = Region::<K, V>::open_with(name, &dir.connect());
            (client, serving.join().unwrap())
        })
    }

    #[test]
    fn create_open_and_talk() {
        let dir = TestDir::new("talk");
        let (server, listener, takeover) =
            Region::<u64, u64>::create_reporting("talk", &dir.config()).unwrap();
        assert_eq!(takeover, Takeover::Fresh);
        let (client, conn) = open(&server, &listener, &dir, "talk");
        let client = client.unwrap();
        assert_eq!(client.registration(), Some((0, 1)));
        assert!(client.server_alive());
        let slots = client.slots();
        let claim = slots.claim(0).unwrap();
        slots.write_request(&claim, OpCode::Get, 0, &5, None);
        assert!(slots.mark_pending(&claim));
        client.ring().push(claim.index).unwrap();
        let index = server.ring().pop().unwrap();
        let begun = server.slots().begin(index).unwrap();
        assert_eq!(server.slots().read_request(&begun).key, 5);
        server.slots().complete(
            begun,
            Some(OpCode::Get),
            &crate::protocol::Response::status(crate::protocol::StatusCode::NotFound),
            &crate::wait::FutexParker,
        );
        assert!(matches!(slots.poll(&claim, OpCode::Get), Poll::Ready(_)));
        // The server's end of the connection closing is the server dying.
        drop(conn);
        assert!(!client.server_alive());
        drop(server);
        drop(listener);
        assert!(matches!(
            Region::<u64, u64>::open_with("talk", &dir.connect()),
            Err(RegionOpenError::NoServer { .. })
        ));
    }

    /// The housekeeper's header repair runs beside the server's own state
    /// changes; with nobody scribbling it must never find (and "repair")
    /// anything, in particular never write back a state the server left.
    #[test]
    fn header_repair_never_races_the_servers_own_state_changes() {
        let dir = TestDir::new("racestate");
        let (server, _listener, _) =
            Region::<u64, u64>::create_reporting("racestate", &dir.config()).unwrap();
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
        let (server, listener, _) =
            Region::<u64, u64>::create_reporting("seal", &dir.config()).unwrap();
        let (client, _conn) = open(&server, &listener, &dir, "seal");
        let client = client.unwrap();
        let fd = client.memfd().try_clone_to_owned().unwrap();
        let file = File::from(fd);
        assert!(file.set_len(0).is_err());
        assert!(file.set_len(1 << 30).is_err());
        assert_eq!(file.metadata().unwrap().len(), server.info().total_size);
    }

    #[test]
    fn second_server_on_a_live_name_is_refused() {
        let dir = TestDir::new("live");
        let _server = Region::<u64, u64>::create_reporting("live", &dir.config()).unwrap();
        assert!(matches!(
            Region::<u64, u64>::create_reporting("live", &dir.config()),
            Err(RegionCreateError::OwnerAlive { pid, .. }) if pid == u64::from(std::process::id())
        ));
    }

    #[test]
    fn type_mismatch_names_both_sides() {
        let dir = TestDir::new("types");
        let (server, listener, _) =
            Region::<u64, [u8; 256]>::create_reporting("types", &dir.config()).unwrap();
        let opened = std::thread::scope(|s| {
            let serving = s.spawn(|| serve(&server, &listener));
            let r = Region::<u32, u64>::open_with("types", &dir.connect());
            serving.join().unwrap();
            r
        });
        let msg = opened.unwrap_err().to_string();
        assert!(msg.contains("u64 -> [u8; 256]"), "{msg}");
        assert!(msg.contains("expects u32 -> u64"), "{msg}");
    }

    #[test]
    fn corrupt_header_fields_are_refused() {
        let dir = TestDir::new("corrupt");
        let (server, listener, _) =
            Region::<u64, u64>::create_reporting("corrupt", &dir.config()).unwrap();
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
        let (_server, _listener, _) =
            Region::<u64, u64>::create_reporting("noanswer", &dir.config()).unwrap();
        let options = ConnectOptions {
            wait: Duration::from_millis(50),
            ..dir.connect()
        };
        assert!(matches!(
            Region::<u64, u64>::open_with("noanswer", &options),
            Err(RegionOpenError::NotReady { .. })
        ));
    }

    #[test]
    fn a_dead_servers_files_are_taken_over() {
        let dir = TestDir::new("stale");
        let (first, listener, _) =
            Region::<u64, u64>::create_reporting("stale", &dir.config()).unwrap();
        // A crash: the files stay, the lock goes with the process.
        first.abandon();
        drop(listener);
        assert!(dir.0.join("stale.sock").exists());
        assert!(matches!(
            Region::<u64, u64>::open_with("stale", &dir.connect()),
            Err(RegionOpenError::NoServer { detail, .. }) if detail.contains("no longer running")
        ));
        let (second, _listener, takeover) =
            Region::<u64, u64>::create_reporting("stale", &dir.config()).unwrap();
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
        let (live, _l1, _) = Region::<u64, u64>::create_reporting("live", &dir.config()).unwrap();
        let (dead, l2, _) = Region::<u64, u64>::create_reporting("dead", &dir.config()).unwrap();
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
