//! The server handle: builder, start, stop.

use crate::acceptor::{self, Acceptor};
use crate::registry::Registry;
use crate::shared::Shared;
pub use crate::shared::DRAIN_LIMIT;
use crate::{reclaim, worker};
use crossbeam_utils::CachePadded;
use kvs_core::map::StripedMap;
use kvs_core::region::{InitState, Region, RegionConfig, Takeover};
use kvs_core::secure_fs::Dir;
use kvs_core::RegionCreateError;
use std::hash::Hash;
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
}

/// Builds a [`KVSServer`]; see [`KVSServer::builder`].
#[must_use]
pub struct KVSServerBuilder<K, V> {
    name: String,
    config: RegionConfig,
    backup_dir: Option<std::path::PathBuf>,
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

impl<K, V> KVSServerBuilder<K, V>
where
    K: bytemuck::Pod + Eq + Hash + Send + Sync,
    V: bytemuck::Pod + Send + Sync,
{
    /// A builder for a server on region `name` with default capacities.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            config: RegionConfig::default(),
            backup_dir: None,
            _types: std::marker::PhantomData,
        }
    }

    /// Worker threads (also the default for [`KVSServer::start`]).
    pub fn workers(mut self, n: usize) -> Self {
        self.config.workers = n;
        self
    }

    /// Stripes of the map (a power of two).
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

    /// Bulk buffers (listings and backups in flight at once) and the data
    /// bytes of each (bounds one listing page).
    pub fn bulk_buffers(mut self, count: usize, bytes: usize) -> Self {
        self.config.bulk_buffers = count;
        self.config.bulk_size = bytes;
        self
    }

    /// The directory of the server's socket (`None`: the default; see
    /// `kvs_core::region::endpoint`).
    pub fn socket_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.config.socket_dir = dir;
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
        let (region, listener, takeover) =
            Region::<K, V>::create_reporting(&self.name, &self.config)?;
        let limit = (self.config.max_entries > 0).then_some(self.config.max_entries as usize);
        let map = StripedMap::with_capacity_and_stripe_amount(0, self.config.stripes)
            .with_max_entries(limit);
        let shared = Arc::new(Shared {
            region,
            map,
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
        let acceptor =
            acceptor::spawn(Arc::clone(&shared), listener).map_err(ServerError::Spawn)?;
        Ok(KVSServer {
            shared,
            workers: Vec::new(),
            housekeeper: Some(housekeeper),
            acceptor: Some(acceptor),
            default_workers: self.config.workers,
            takeover,
            started: Instant::now(),
        })
    }
}

/// A server over one region. Dropping it stops the workers, closes the
/// region and removes it.
pub struct KVSServer<K, V> {
    shared: Arc<Shared<K, V>>,
    workers: Vec<JoinHandle<()>>,
    housekeeper: Option<JoinHandle<()>>,
    acceptor: Option<Acceptor>,
    default_workers: usize,
    takeover: Takeover,
    started: Instant,
}

impl<K, V> std::fmt::Debug for KVSServer<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KVSServer")
            .field("region", &self.shared.region.name())
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl<K, V> KVSServer<K, V>
where
    K: bytemuck::Pod + Eq + Hash + Send + Sync,
    V: bytemuck::Pod + Send + Sync,
{
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
        self.shared.map.len()
    }

    /// The store itself (for embedding: read or preload without the ring).
    pub fn map(&self) -> &StripedMap<K, V> {
        &self.shared.map
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
    pub fn region(&self) -> &Region<K, V> {
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
        let (entries, version) = self.shared.map.snapshot();
        crate::snapshot::write_into(dir, name, &entries, version, self.shared.snapshot_mode)
    }

    /// Loads a snapshot into the store, keeping each entry's version and
    /// timestamp and raising the global version to the snapshot's.
    ///
    /// # Errors
    ///
    /// [`SnapshotError`](crate::SnapshotError) for a missing, corrupt,
    /// truncated or mistyped file; the store is then unchanged.
    pub fn load_snapshot(
        &self,
        path: &std::path::Path,
    ) -> Result<crate::SnapshotInfo, crate::SnapshotError> {
        let (entries, info) = crate::snapshot::load::<K, V>(path)?;
        for (k, e) in entries {
            self.shared.map.insert_entry(k, e);
        }
        self.shared.map.set_version_at_least(info.version);
        Ok(info)
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
        // The last Arc drops the region, which removes its name.
    }
}
