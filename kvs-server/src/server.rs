//! The server handle: builder, start, stop.

use crate::acceptor::{self, Acceptor};
use crate::expirer;
use crate::keeper::{self, Keeper};
use crate::registry::Registry;
use crate::shared::Shared;
pub use crate::shared::DRAIN_LIMIT;
use crate::{reclaim, worker};
use crossbeam_utils::CachePadded;
use kvs_core::codec::{Codec, DecodeError};
use kvs_core::region::{InitState, Region, RegionConfig, StoreSource, Takeover};
use kvs_core::secure_fs::Dir;
use kvs_core::store::adopt::AdoptReport;
use kvs_core::store::block::ValueSource;
use kvs_core::store::evict::EvictionPolicy;
use kvs_core::store::layout::Geometry;
use kvs_core::store::read::Lookup;
use kvs_core::store::write::{StoreWriter, WriteError, WriteMode, Written};
use kvs_core::RegionCreateError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// Errors of building and running a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The region could not be created.
    #[error(transparent)]
    Create(#[from] RegionCreateError),
    /// A worker count outside `1..=MAX_WORKERS`.
    #[error("workers {0} must be between 1 and {max}", max = kvs_core::region::MAX_WORKERS)]
    InvalidWorkers(usize),
    /// A thread could not be spawned.
    #[error("spawning a server thread: {0}")]
    Spawn(std::io::Error),
    /// The backup directory cannot be used.
    #[error("{0}")]
    BackupDir(String),
    /// A local write was refused (bad length, full store).
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A stored value does not decode as the server's value type.
    #[error("a stored value does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// The keeper (see [`crate::keeper`]) could not be started.
    #[error(
        "starting the keeper that holds the store across a crash: {0} \
         (run without a keeper, --no-keeper, to serve without warm restart)"
    )]
    Keeper(std::io::Error),
    /// The store an earlier server's keeper held is not a store.
    #[error(
        "the earlier server's store cannot be adopted ({0}); discard it with kvs_server --cleanup"
    )]
    Adopt(String),
}

/// How a server starts its keeper: a program that calls
/// [`crate::keeper::run_keeper`] when run with `args` (the server's own
/// binary, usually: `/proc/self/exe --keeper`).
#[derive(Debug, Clone)]
pub struct KeeperProgram {
    /// The program.
    pub program: std::path::PathBuf,
    /// Its arguments that select keeper mode.
    pub args: Vec<String>,
    /// How the keeper runs.
    pub options: crate::keeper::SpawnOptions,
}

impl KeeperProgram {
    /// This process's own binary run with `--keeper`: for a binary whose
    /// `main` calls [`crate::keeper::run_keeper`] when its first argument
    /// is `--keeper`.
    pub fn this_binary() -> Self {
        Self {
            program: "/proc/self/exe".into(),
            args: vec!["--keeper".into()],
            options: crate::keeper::SpawnOptions::default(),
        }
    }
}

/// Builds a [`KVSServer`]; see [`KVSServer::builder`].
#[must_use]
pub struct KVSServerBuilder<K = Vec<u8>, V = Vec<u8>> {
    name: String,
    config: RegionConfig,
    backup_dir: Option<std::path::PathBuf>,
    keeper: Option<KeeperProgram>,
    eviction: EvictionPolicy,
    _types: std::marker::PhantomData<fn() -> (K, V)>,
}

impl<K, V> std::fmt::Debug for KVSServerBuilder<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KVSServerBuilder")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish()
    }
}

impl<K: Codec, V: Codec> KVSServerBuilder<K, V> {
    /// A builder for a server on region `name` with default capacities.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            config: RegionConfig::default(),
            backup_dir: None,
            eviction: EvictionPolicy::NoEviction,
            keeper: None,
            _types: std::marker::PhantomData,
        }
    }

    /// Start a keeper that holds the store across a crash of this server,
    /// so that the next server of the name adopts it (warm restart; see
    /// [`crate::keeper`]). `None` (the default): no keeper is started, and
    /// the data dies with the process. A store that an earlier server's
    /// keeper holds is adopted either way.
    pub fn keeper(mut self, program: Option<KeeperProgram>) -> Self {
        self.keeper = program;
        self
    }

    /// Worker threads (also the default for [`KVSServer::start`]).
    pub fn workers(mut self, n: usize) -> Self {
        self.config.workers = n;
        self
    }

    /// Stripes of the store (a power of two up to 65536; default 1024).
    pub fn stripes(mut self, n: usize) -> Self {
        self.config.stripes = n;
        self
    }

    /// Cells in the request ring (a power of two).
    pub fn ring_capacity(mut self, n: usize) -> Self {
        self.config.ring_capacity = n;
        self
    }

    /// Response slots.
    pub fn slots(mut self, n: usize) -> Self {
        self.config.slots = n;
        self
    }

    /// Client registrations.
    pub fn max_clients(mut self, n: usize) -> Self {
        self.config.max_clients = n;
        self
    }

    /// Permission bits of the region (default 0600).
    pub fn mode(mut self, mode: u32) -> Self {
        self.config.mode = mode;
        self
    }

    /// Subscription entries and the events each one's queue holds (a power
    /// of two).
    pub fn subscribers(mut self, subscribers: usize, queue: usize) -> Self {
        self.config.subscribers = subscribers;
        self.config.sub_queue = queue;
        self
    }

    /// Staging buffers: requests whose key and value do not fit a response
    /// slot (and listings and backups) in flight at once; each holds the
    /// largest key and value.
    pub fn staging_buffers(mut self, count: usize) -> Self {
        self.config.bulk_buffers = count;
        self
    }

    /// The largest key, bytes (default 1 KiB).
    pub fn max_key_size(mut self, bytes: u64) -> Self {
        self.config.max_key = bytes;
        self
    }

    /// The largest value, bytes (default 1 MiB, at most 1 GiB).
    pub fn max_value_size(mut self, bytes: u64) -> Self {
        self.config.max_value = bytes;
        self
    }

    /// The store's memory limit: entries and index together, in committed
    /// bytes (default half of this machine's memory). New keys beyond it
    /// fail with "store full".
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.config.max_memory = bytes;
        self
    }

    /// The directory of the server's socket (`None`: the default; see
    /// `kvs_core::region::endpoint`).
    pub fn socket_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.config.socket_dir = dir;
        self
    }

    /// What a write does when the store is full (memory or entries):
    /// fail ("store full", the default) or evict by a policy (see
    /// `kvs_core::store::evict`).
    pub fn eviction(mut self, policy: EvictionPolicy) -> Self {
        self.eviction = policy;
        self
    }

    /// Entry limit; SET or POST of a new key beyond it fails with "store full".
    pub fn max_entries(mut self, limit: Option<u64>) -> Self {
        self.config.max_entries = limit.unwrap_or(0);
        self
    }

    /// The directory client backups are written into (by file name; see
    /// `KVSClient::backup`). It must not be writable by other users.
    /// Without one, clients' backup requests are refused.
    pub fn backup_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.backup_dir = dir;
        self
    }

    /// Creates the region and the (stopped) server.
    ///
    /// # Errors
    ///
    /// [`ServerError::Create`], for example when a live server owns the name;
    /// [`ServerError::BackupDir`] for a backup directory that cannot be
    /// opened or that other users may write into.
    pub fn build(self) -> Result<KVSServer<K, V>, ServerError> {
        let backup_dir = match &self.backup_dir {
            Some(path) => {
                let dir = Dir::open(path).map_err(|e| {
                    ServerError::BackupDir(format!("backup directory {}: {e}", path.display()))
                })?;
                dir.check_private("backup directory")
                    .map_err(ServerError::BackupDir)?;
                Some(dir)
            }
            None => None,
        };
        let mut adopted: Option<(u64, Keeper)> = None;
        let (region, listener, takeover) =
            Region::create_with_store(&self.name, &self.config, |name, dir| {
                Ok(match keeper::adopt(name, dir)? {
                    Some((fd, id, keeper)) => {
                        adopted = Some((id, keeper));
                        StoreSource::Adopt(fd)
                    }
                    None => StoreSource::Fresh,
                })
            })?;
        let info = *region.info();
        let limit = (info.max_entries > 0).then_some(info.max_entries);
        let (store, keeper, adoption) = match adopted {
            Some((id, keeper)) => {
                if id != info.store_id {
                    tracing::warn!(
                        keeper_id = id,
                        store_id = info.store_id,
                        "the keeper's store id differs from the store's header"
                    );
                }
                // A failure drops the keeper handle: the keeper goes on
                // holding the store, as after a crash.
                let (store, report) =
                    StoreWriter::adopt(Arc::clone(region.store()), info.max_memory, limit)
                        .map_err(|e| ServerError::Adopt(e.to_string()))?;
                (store, Some(keeper), Some(report))
            }
            None => {
                let geometry = Geometry::new(
                    info.store_size,
                    info.stripes.trailing_zeros(),
                    info.max_key,
                    info.max_value,
                    kvs_core::secure_fs::random_u64(),
                );
                let store = StoreWriter::create(
                    Arc::clone(region.store()),
                    geometry,
                    info.max_memory,
                    limit,
                    info.store_id,
                );
                let keeper = match &self.keeper {
                    Some(p) => {
                        let dir = kvs_core::region::endpoint::server_dir(
                            self.config.socket_dir.as_deref(),
                        );
                        let args: Vec<&str> = p.args.iter().map(String::as_str).collect();
                        Some(
                            Keeper::spawn_with(
                                &p.program,
                                &args,
                                region.name(),
                                &dir,
                                region.store().fd(),
                                info.store_id,
                                &p.options,
                            )
                            .map_err(ServerError::Keeper)?,
                        )
                    }
                    None => None,
                };
                (store, keeper, None)
            }
        };
        if adoption.is_some() {
            let asked = (
                self.config.max_key,
                self.config.max_value,
                self.config.stripes as u64,
            );
            if asked != (info.max_key, info.max_value, info.stripes) {
                tracing::warn!(
                    max_key = info.max_key,
                    max_value = info.max_value,
                    stripes = info.stripes,
                    "the adopted store keeps the key and value limits and stripes it was made with, not the ones asked for"
                );
            }
            if info.store_size != self.config.store_size() {
                tracing::warn!(
                    store_bytes = info.store_size,
                    max_memory = info.max_memory,
                    "the adopted store keeps the size it was made with; --max-memory still bounds what it holds"
                );
            }
        }
        if let Some(r) = &adoption {
            tracing::info!(
                region = region.name(),
                entries = r.entries,
                dropped = r.dropped,
                tables_rebuilt = r.tables_rebuilt,
                seqs_fixed = r.seqs_fixed,
                free_blocks = r.free_blocks,
                unusable_bytes = r.unusable_bytes,
                page_map_problems = r.page_map_problems,
                "adopted the store of the earlier server (warm restart)"
            );
        }
        store.set_eviction(self.eviction);
        let store_ro = region.store().read_only_fd().map_err(|source| {
            ServerError::Create(RegionCreateError::Io {
                name: self.name.clone(),
                context: "reopening the store read-only for clients",
                source,
            })
        })?;
        let shared = Arc::new(Shared {
            region,
            store,
            store_ro,
            stop_workers: AtomicBool::new(false),
            stop_since_ns: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            busy: (0..kvs_core::region::MAX_WORKERS)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
            running_workers: std::sync::atomic::AtomicUsize::new(0),
            registry: Registry::new(self.config.max_clients),
            accepting: AtomicBool::new(false),
            backup_dir,
            snapshot_mode: crate::snapshot::file_mode(self.config.mode),
        });
        let housekeeper = reclaim::spawn(Arc::clone(&shared)).map_err(ServerError::Spawn)?;
        let expirer = expirer::spawn(Arc::clone(&shared)).map_err(ServerError::Spawn)?;
        let acceptor =
            acceptor::spawn(Arc::clone(&shared), listener).map_err(ServerError::Spawn)?;
        Ok(KVSServer {
            shared,
            workers: Vec::new(),
            housekeeper: Some(housekeeper),
            expirer: Some(expirer),
            acceptor: Some(acceptor),
            default_workers: self.config.workers,
            takeover,
            keeper,
            adoption,
            started: Instant::now(),
            _types: std::marker::PhantomData,
        })
    }
}

/// A server over one region. Dropping it stops the workers, closes the
/// region and removes it.
///
/// `K` and `V` are the types of its local calls ([`KVSServer::get`],
/// [`KVSServer::set`]); the store itself holds bytes (see
/// `kvs_core::codec`), so clients of any types may use it.
pub struct KVSServer<K = Vec<u8>, V = Vec<u8>> {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    housekeeper: Option<JoinHandle<()>>,
    /// The active expiry sweep (see `expirer`).
    expirer: Option<JoinHandle<()>>,
    acceptor: Option<Acceptor>,
    default_workers: usize,
    takeover: Takeover,
    /// The keeper holding the store across a crash, if any.
    keeper: Option<Keeper>,
    /// What adopting an earlier server's store found, if this server did.
    adoption: Option<AdoptReport>,
    started: Instant,
    _types: std::marker::PhantomData<fn() -> (K, V)>,
}

impl<K, V> std::fmt::Debug for KVSServer<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KVSServer")
            .field("region", &self.shared.region.name())
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl<K: Codec, V: Codec> KVSServer<K, V> {
    /// A builder for a server on region `name` (`/name` or `name`).
    pub fn builder(name: &str) -> KVSServerBuilder<K, V> {
        KVSServerBuilder::new(name)
    }

    /// Starts `workers` worker threads (stopping any running ones first).
    ///
    /// # Errors
    ///
    /// [`ServerError::InvalidWorkers`] or [`ServerError::Spawn`].
    pub fn start(&mut self, workers: usize) -> Result<(), ServerError> {
        if !(1..=kvs_core::region::MAX_WORKERS).contains(&workers) {
            return Err(ServerError::InvalidWorkers(workers));
        }
        self.stop();
        self.shared.stop_workers.store(false, Ordering::SeqCst);
        self.shared.stop_since_ns.store(0, Ordering::SeqCst);
        for id in 0..workers {
            let shared = Arc::clone(&self.shared);
            let handle = std::thread::Builder::new()
                .name(format!("kvs-worker-{id}"))
                .spawn(move || worker::run(&shared, id))
                .map_err(ServerError::Spawn)?;
            self.workers.push(handle);
        }
        self.shared
            .running_workers
            .store(workers, Ordering::Release);
        // Clients are admitted from the first start on (not while a
        // snapshot is still loading).
        self.admit_clients();
        tracing::debug!(
            workers,
            region = self.shared.region.name(),
            "workers started"
        );
        Ok(())
    }

    /// Lets clients connect from now on ([`KVSServer::start`] does this
    /// too). Until then they wait, up to their `connect_wait`, so that none
    /// sees a store that is still being loaded.
    pub fn admit_clients(&self) {
        if !self.shared.accepting.swap(true, Ordering::AcqRel) {
            if let Some(a) = &self.acceptor {
                a.nudge();
            }
        }
    }

    /// Starts the number of workers the builder was given.
    ///
    /// # Errors
    ///
    /// As [`KVSServer::start`].
    pub fn start_default(&mut self) -> Result<(), ServerError> {
        self.start(self.default_workers)
    }

    /// Stops the workers after they drain what is in the ring, for at most
    /// [`DRAIN_LIMIT`] (so it returns even while clients keep pushing).
    /// Requests pushed after this wait until the next
    /// [`KVSServer::start`] (their clients time out meanwhile).
    pub fn stop(&mut self) {
        if self.workers.is_empty() {
            return;
        }
        self.shared
            .stop_since_ns
            .store(kvs_core::unix_now_ns().max(1), Ordering::SeqCst);
        self.shared.stop_workers.store(true, Ordering::SeqCst);
        self.shared.region.wake_all_workers();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.shared.running_workers.store(0, Ordering::Release);
        tracing::debug!(region = self.shared.region.name(), "workers stopped");
    }

    /// Starts shutting down: clients submit nothing new from now on (their
    /// calls fail with `ServerGone` at once, and new connections are
    /// refused), while what was accepted is still answered. Call
    /// [`KVSServer::stop`] next to drain, then drop the server.
    pub fn begin_shutdown(&self) {
        if self.shared.region.server_state() == Some(InitState::Ready) {
            self.shared.region.set_state(InitState::Draining);
            tracing::debug!(region = self.shared.region.name(), "draining");
        }
    }

    /// Whether workers are running.
    pub fn is_running(&self) -> bool {
        !self.workers.is_empty()
    }

    /// Entries in the store.
    pub fn storage_size(&self) -> usize {
        self.shared.store.len() as usize
    }

    /// The store's last version.
    pub fn version(&self) -> u64 {
        self.shared.store.version()
    }

    /// Reads `key` directly from the store (no ring).
    ///
    /// # Errors
    ///
    /// [`ServerError::Decode`] when the stored bytes are not a `V`.
    pub fn get(&self, key: &K) -> Result<Option<V>, ServerError> {
        let found = key.with_encoded(|k| self.shared.store.view().get(k));
        match found {
            Lookup::Found { value, .. } => Ok(Some(V::decode_vec(value)?)),
            Lookup::Absent => Ok(None),
            // The server's own read of its own store: under the stripe's
            // lock when writers keep it busy.
            Lookup::Busy | Lookup::Corrupt(_) => key.with_encoded(|k| {
                self.shared.store.with_entry(k, |e| match e {
                    Some((_, v)) => {
                        let mut bytes = Vec::new();
                        v.read_into(&mut bytes);
                        V::decode_vec(bytes).map(Some).map_err(ServerError::from)
                    }
                    None => Ok(None),
                })
            }),
        }
    }

    /// Sets `key` to `value` directly in the store (no ring; subscribers
    /// are not told). Returns the version of the write.
    ///
    /// # Errors
    ///
    /// [`ServerError::Write`]: a key or value too long, a full store.
    pub fn set(&self, key: &K, value: &V) -> Result<u64, ServerError> {
        let mut bytes = Vec::new();
        value.encode(&mut bytes);
        let written = key.with_encoded(|k| {
            self.shared
                .store
                .set(k, ValueSource::Bytes(&bytes), WriteMode::Upsert, |_| {})
        })?;
        Ok(match written {
            Written::Inserted(v) | Written::Replaced(v) => v,
            // An unconditional upsert neither finds the key existing nor
            // compares versions.
            Written::Exists | Written::VersionMismatch(_) => self.version(),
        })
    }

    /// The region's name.
    pub fn name(&self) -> &str {
        self.shared.region.name()
    }

    /// The socket clients connect to.
    pub fn socket_path(&self) -> std::path::PathBuf {
        self.shared.region.socket_path().unwrap_or_default()
    }

    /// The region (for status views and tests).
    pub fn region(&self) -> &Region {
        &self.shared.region
    }

    /// Whether creating the server replaced a dead server's region.
    pub fn takeover(&self) -> Takeover {
        self.takeover
    }

    /// Writes a point-in-time snapshot of the store to `path` (atomically,
    /// with the region's mode; see `snapshot::write_into`).
    ///
    /// # Errors
    ///
    /// [`SnapshotError`](crate::SnapshotError) on I/O failure; an existing
    /// file at `path` is then untouched.
    pub fn save_snapshot(
        &self,
        path: &std::path::Path,
    ) -> Result<crate::SnapshotInfo, crate::SnapshotError> {
        let (dir, name) = crate::snapshot::open_parent(path)?;
        self.save_snapshot_into(&dir, &name)
    }

    /// Writes a point-in-time snapshot as the file `name` of `dir` (opened
    /// beforehand, so that a directory checked at start is the one
    /// written).
    ///
    /// # Errors
    ///
    /// As [`KVSServer::save_snapshot`].
    pub fn save_snapshot_into(
        &self,
        dir: &Dir,
        name: &str,
    ) -> Result<crate::SnapshotInfo, crate::SnapshotError> {
        let (entries, version) = crate::snapshot_entries(&self.shared.store);
        crate::snapshot::write_into(dir, name, &entries, version, self.shared.snapshot_mode)
    }

    /// Loads a snapshot into the store, keeping each entry's version and
    /// timestamp and raising the global version to the snapshot's.
    ///
    /// # Errors
    ///
    /// [`SnapshotError`](crate::SnapshotError) for a missing, corrupt or
    /// truncated file, or one with entries above this store's limits; the
    /// store is then unchanged. A full store stops the load part way.
    pub fn load_snapshot(
        &self,
        path: &std::path::Path,
    ) -> Result<crate::SnapshotInfo, crate::SnapshotError> {
        let g = self.shared.store.geometry();
        let limits = crate::snapshot::LoadLimits {
            max_key: g.max_key,
            max_value: g.max_value,
        };
        let store = &self.shared.store;
        let info = crate::snapshot::load(path, limits, |e| {
            store
                .insert_loaded(&e.key, &e.value, e.meta)
                .map_err(|e| e.to_string())
        })?;
        store.set_version_at_least(info.version);
        Ok(info)
    }

    /// What adopting the store of an earlier server of this name found
    /// (warm restart), or `None` if this server started with a fresh store.
    pub fn adoption(&self) -> Option<&AdoptReport> {
        self.adoption.as_ref()
    }

    /// The pid of the keeper holding the store across a crash, if any.
    pub fn keeper_pid(&self) -> Option<u32> {
        self.keeper.as_ref().map(Keeper::pid)
    }

    /// Time since the server was built.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }
}

impl<K, V> Drop for KVSServer<K, V> {
    /// Shuts down in order: refuse new requests (`Draining`), answer what
    /// was accepted (bounded by [`DRAIN_LIMIT`]), then close the region and
    /// every connection, so no caller waits out its timeout.
    fn drop(&mut self) {
        if self.shared.region.server_state() == Some(InitState::Ready) {
            self.shared.region.set_state(InitState::Draining);
        }
        self.shared
            .stop_since_ns
            .compare_exchange(
                0,
                kvs_core::unix_now_ns().max(1),
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .ok();
        self.shared.stop_workers.store(true, Ordering::SeqCst);
        self.shared.region.wake_all_workers();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.shared.region.mark_closed();
        self.shared.shutdown.store(true, Ordering::SeqCst);
        // Ends every client's connection: they see the server gone at once.
        if let Some(mut a) = self.acceptor.take() {
            a.stop();
        }
        self.shared.region.poke_housekeeper();
        if let Some(h) = self.housekeeper.take() {
            let _ = h.join();
        }
        if let Some(h) = self.expirer.take() {
            h.thread().unpark();
            let _ = h.join();
        }
        // A clean stop: the data goes with this server (a snapshot is how
        // it outlives one), so the keeper lets the store go.
        if let Some(keeper) = self.keeper.take() {
            if let Err(e) = keeper.discard() {
                tracing::warn!(error = %e, "the keeper did not confirm discarding the store");
            }
        }
        // The last Arc drops the region, which removes its name.
    }
}
