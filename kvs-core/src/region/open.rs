//! Connecting to a server: the handshake ([`Session`]), then mapping its
//! region and store ([`Region::attach`]), checking every header field
//! against the others and against the mappings before anything is trusted.

use super::config::ConnectOptions;
use super::endpoint::{self, normalize_name, ConnectError, Peer};
use super::handshake::{self, Kind, RecvError, Welcome};
use super::header::{InitState, RegionHeader, RegionInfo, LAYOUT_VERSION, MAGIC};
use super::layout::Layout;
use super::store_segment::StoreSegment;
use super::{memfd, Region, RegionConfig, Role};
use crate::error::RegionOpenError;
use crate::store::layout::Geometry;
use crate::store::segment::Segment;
use crate::sync::Ordering;
use crossbeam_utils::CachePadded;
use memmap2::{MmapOptions, MmapRaw};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A connection the server answered: the descriptors of its region and
/// what it said, not yet mapped (see [`Region::attach`]).
#[derive(Debug)]
pub struct Session {
    name: String,
    conn: OwnedFd,
    file: File,
    store: OwnedFd,
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
        let (welcome, mut fds) = match handshake::recv_welcome(conn.as_fd(), options.wait) {
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
        if fds.len() != 2 {
            return Err(corrupt(format!(
                "the server sent {} descriptors, not the region and its store",
                fds.len()
            )));
        }
        let store = fds.pop().expect("two descriptors");
        let file = File::from(fds.pop().expect("two descriptors"));
        memfd::check(&file, welcome.region_size).map_err(corrupt)?;
        Ok(Self {
            name,
            conn,
            file,
            store,
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

    /// The store's descriptor, read-only (for tools that map it themselves).
    pub fn store_fd(&self) -> BorrowedFd<'_> {
        self.store.as_fd()
    }

    /// Reads and checks the region's header: magic, version, readiness, and
    /// that its size is what it says.
    ///
    /// # Errors
    ///
    /// As [`Region::attach`].
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

impl Region {
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

    /// Maps a session's region and its store after checking the layout
    /// against the header and the store's header against both.
    ///
    /// # Errors
    ///
    /// [`RegionOpenError`]: bad magic, another version, or headers whose
    /// layout does not add up.
    pub fn attach(session: Session) -> Result<Self, RegionOpenError> {
        let Session {
            name,
            conn,
            file,
            store,
            welcome,
            server,
        } = session;
        let map = map_file(&file, &name, welcome.region_size)?;
        let info = read_header(&map, &name, welcome.region_size)?;
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
            subscribers: usize::try_from(info.sub_count).unwrap_or(usize::MAX),
            sub_queue: usize::try_from(info.sub_queue).unwrap_or(0),
            max_key: info.max_key,
            max_value: info.max_value,
            max_memory: info.max_memory,
        };
        config.validate().map_err(corrupt)?;
        // The store's size is the one it was made with (an adopted store
        // keeps its own, whatever the new server's --max-memory): whole
        // pages within the largest store; its header is checked below.
        if config.bulk_size() != info.bulk_size
            || config.sub_cell_bytes() != info.sub_cell_bytes
            || info.store_size % 4096 != 0
            || info.store_size > super::config::MAX_MEMORY_LIMIT.saturating_mul(4)
            || welcome.store_size != info.store_size
        {
            return Err(corrupt("the header's sizes do not match its limits".into()));
        }
        if info.cache_line != std::mem::size_of::<CachePadded<u8>>() as u64 {
            return Err(corrupt(format!(
                "created with {}-byte cache lines, this build uses {}",
                info.cache_line,
                std::mem::size_of::<CachePadded<u8>>()
            )));
        }
        let layout = Layout::compute(&config).map_err(corrupt)?;
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
        let store = StoreSegment::open_read_only(store, info.store_size)
            .map_err(|e| corrupt(format!("the store segment: {e}")))?;
        let geometry = Geometry::from_header(&store.words())
            .map_err(|e| corrupt(format!("the store: {e}")))?;
        if geometry.max_key != info.max_key
            || geometry.max_value != info.max_value
            || geometry.stripes() != info.stripes
        {
            return Err(corrupt(
                "the store's header does not match the region's".into(),
            ));
        }
        Ok(Self {
            name,
            map,
            file,
            info,
            layout,
            store: Arc::new(store),
            geometry: Some(geometry),
            role: Role::Client {
                conn,
                welcome,
                server,
            },
        })
    }
}

/// Reads a ready region's static description without a registration (a
/// probe: it works even when every registration is taken), with the
/// server's answer (version, entry count).
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
