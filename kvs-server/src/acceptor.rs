//! The acceptor: admits clients over the region's socket, hands them the
//! region, and notices at once when they die.
//!
//! One thread runs an `epoll` loop over the listening socket, every
//! connection, and a `pidfd` per registered client:
//!
//! 1. **accept** (only once the server was first started, so nobody sees a
//!    store that is still loading; until then clients wait in the backlog):
//!    the peer's credentials (`SO_PEERCRED`, `SO_PEERGROUPS`) must be
//!    admitted by the region's mode, or it is answered `Denied`;
//! 2. **hello**, within [`HANDSHAKE_TIMEOUT`] (at most [`MAX_PENDING`]
//!    connections may be mid-handshake; more are closed at once): a client
//!    gets a registration from the registry (`crate::registry`), a probe gets none, and both
//!    get the region's memfd;
//! 3. **liveness**: a registered client is dead when its connection ends or
//!    when its process exits (its `pidfd` turns readable; this also catches
//!    a dead parent whose forked child still holds the connection). The
//!    registration is then marked dead and the housekeeper is poked; it
//!    frees what the client held and only then returns the index.
//!
//! The registry is the authority on who is registered and lives only in
//! the server's memory; a client cannot forge or free a registration. Each
//! hand-out of an index bumps its generation, and the housekeeper frees an
//! index only if it is still dead with the generation it saw, so a
//! registration can never be freed under a client that just received it.

use crate::shared::Shared;
use kvs_core::region::endpoint::{self, Peer};
use kvs_core::region::handshake::{self, Kind, Status, Welcome};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a connection may take to send its hello.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections allowed mid-handshake at once.
pub(crate) const MAX_PENDING: usize = 64;

/// The running acceptor; stopping it closes every connection, which tells
/// every client that the server is gone.
#[derive(Debug)]
pub(crate) struct Acceptor {
    wake: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    /// Wakes the loop (to notice that it may accept now, or must stop).
    pub(crate) fn nudge(&self) {
        let _ = self.wake.write(1);
    }

    /// Stops the loop and closes every connection.
    pub(crate) fn stop(&mut self) {
        self.nudge();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop();
    }
}

const LISTENER: u64 = 0;
const WAKE: u64 = 1;

/// What a token in the epoll set stands for.
enum Conn {
    /// Accepted, hello not yet read.
    Pending {
        fd: OwnedFd,
        peer: Peer,
        since: Instant,
    },
    /// A registered client's connection.
    Live {
        fd: OwnedFd,
        index: u32,
        generation: u32,
        pidfd_token: Option<u64>,
    },
    /// The pidfd of the client behind connection `conn`.
    Pidfd { fd: OwnedFd, conn: u64 },
}

pub(crate) fn spawn(shared: Arc<Shared>, listener: OwnedFd) -> std::io::Result<Acceptor> {
    let wake = Arc::new(
        EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(std::io::Error::from)?,
    );
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(std::io::Error::from)?;
    epoll
        .add(&wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE))
        .map_err(std::io::Error::from)?;
    let loop_wake = Arc::clone(&wake);
    let thread = std::thread::Builder::new()
        .name("kvs-acceptor".into())
        .spawn(move || {
            let mut state = Loop {
                shared: &shared,
                epoll,
                listener,
                listening: false,
                conns: HashMap::new(),
                next_token: 2,
                pending: 0,
                owner_uid: nix::unistd::geteuid().as_raw(),
                owner_gid: nix::unistd::getegid().as_raw(),
                refused_full: 0,
                last_full_warning: None,
            };
            state.run(&loop_wake);
        })?;
    Ok(Acceptor {
        wake,
        thread: Some(thread),
    })
}

struct Loop<'a> {
    shared: &'a Shared,
    epoll: Epoll,
    listener: OwnedFd,
    listening: bool,
    conns: HashMap<u64, Conn>,
    next_token: u64,
    pending: usize,
    owner_uid: u32,
    owner_gid: u32,
    /// Clients refused for want of a registration since the last warning
    /// (logged at most every 10 s, not once per connection).
    refused_full: u64,
    last_full_warning: Option<Instant>,
}

impl Loop<'_> {
    fn run(&mut self, wake: &EventFd) {
        let mut events = vec![EpollEvent::empty(); 64];
        loop {
            if self.shared.shutdown.load(Ordering::Acquire) {
                break;
            }
            if !self.listening && self.shared.accepting.load(Ordering::Acquire) {
                let _ = self.epoll.add(
                    &self.listener,
                    EpollEvent::new(EpollFlags::EPOLLIN, LISTENER),
                );
                self.listening = true;
            }
            let n = match self.epoll.wait(&mut events, 100u16) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => {
                    tracing::error!("the acceptor's epoll failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    0
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    LISTENER => self.accept_all(),
                    WAKE => {
                        let _ = wake.read();
                    }
                    token => self.on_event(token),
                }
            }
            self.expire_handshakes();
        }
        // Closing every connection tells every client we are gone.
        let dead: Vec<u64> = self.conns.keys().copied().collect();
        for token in dead {
            self.close(token);
        }
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn accept_all(&mut self) {
        loop {
            let fd = match endpoint::accept(&self.listener) {
                Ok(Some(fd)) => fd,
                Ok(None) => return,
                Err(e) => {
                    // EMFILE and friends: leave the rest in the backlog.
                    tracing::warn!("accepting a client: {e}");
                    return;
                }
            };
            if self.pending >= MAX_PENDING {
                tracing::debug!("too many handshakes in progress; closing a new connection");
                continue;
            }
            let Ok(peer) = endpoint::peer(&fd) else {
                continue;
            };
            let groups = endpoint::peer_groups(&fd);
            let mode = self.shared.region.info().mode as u32;
            if !endpoint::admits(mode, self.owner_uid, self.owner_gid, &peer, &groups) {
                tracing::info!(
                    uid = peer.uid,
                    pid = peer.pid,
                    "refused a client its mode does not admit"
                );
                let mut w = Welcome::new(Status::Denied);
                w.server_uid = self.owner_uid;
                let _ = handshake::send_welcome(fd.as_fd(), &w, &[]);
                continue;
            }
            let token = self.token();
            let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
            if self.epoll.add(&fd, EpollEvent::new(flags, token)).is_err() {
                continue;
            }
            self.pending += 1;
            self.conns.insert(
                token,
                Conn::Pending {
                    fd,
                    peer,
                    since: Instant::now(),
                },
            );
        }
    }

    fn on_event(&mut self, token: u64) {
        match self.conns.get(&token) {
            Some(Conn::Pending { .. }) => self.on_hello(token),
            // A registered client sends nothing after its hello: input
            // or hang-up both end the connection.
            Some(Conn::Live { .. }) => self.client_gone(token, "its connection ended"),
            Some(Conn::Pidfd { conn, .. }) => {
                let conn = *conn;
                self.client_gone(conn, "its process exited");
            }
            None => {}
        }
    }

    fn on_hello(&mut self, token: u64) {
        let Some(Conn::Pending { fd, .. }) = self.conns.get(&token) else {
            return;
        };
        let hello = match handshake::recv_hello(fd.as_fd()) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(_) => {
                self.close(token);
                return;
            }
        };
        let Some(Conn::Pending { fd, peer, .. }) = self.conns.remove(&token) else {
            return;
        };
        self.pending -= 1;
        let _ = self.epoll.delete(&fd);
        let kind = match hello.kind() {
            Ok(k) => k,
            Err(why) => {
                tracing::debug!(pid = peer.pid, "a malformed hello: {why}");
                let _ = handshake::send_welcome(fd.as_fd(), &Welcome::new(Status::BadHello), &[]);
                return;
            }
        };
        if self.shared.region.server_state() != Some(kvs_core::region::InitState::Ready) {
            let _ = handshake::send_welcome(fd.as_fd(), &Welcome::new(Status::Closing), &[]);
            return;
        }
        let mut welcome = self.welcome();
        match kind {
            Kind::Probe => {
                let _ = handshake::send_welcome(
                    fd.as_fd(),
                    &welcome,
                    &[self.shared.region.memfd(), self.shared.store_ro.as_fd()],
                );
                // The probe is answered; closing ends it.
            }
            Kind::Client => {
                let allocated = self.shared.registry.allocate(peer.pid).or_else(|| {
                    // Full: free what dead clients left, then look again.
                    crate::reclaim::sweep(self.shared);
                    self.shared.registry.allocate(peer.pid)
                });
                let Some((index, generation)) = allocated else {
                    self.refused_full += 1;
                    if self
                        .last_full_warning
                        .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
                    {
                        tracing::warn!(
                            pid = peer.pid,
                            max = welcome.max_clients,
                            refused = self.refused_full,
                            "refused clients: every registration is in use (kvs_server --max-clients raises the limit)"
                        );
                        self.last_full_warning = Some(Instant::now());
                        self.refused_full = 0;
                    }
                    let mut w = Welcome::new(Status::TooManyClients);
                    w.max_clients = welcome.max_clients;
                    let _ = handshake::send_welcome(fd.as_fd(), &w, &[]);
                    return;
                };
                welcome.registration = index;
                welcome.registration_generation = generation;
                self.shared
                    .region
                    .clients()
                    .record(index, generation, peer.pid, peer.uid);
                if let Err(e) = handshake::send_welcome(
                    fd.as_fd(),
                    &welcome,
                    &[self.shared.region.memfd(), self.shared.store_ro.as_fd()],
                ) {
                    tracing::debug!(pid = peer.pid, "answering a client: {e}");
                    self.shared.registry.mark_dead(index, generation);
                    self.shared.region.clients().mark_dead(index);
                    return;
                }
                self.shared
                    .region
                    .header()
                    .live
                    .clients_registered
                    .fetch_add(1, Ordering::Relaxed);
                let conn_token = self.token();
                let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
                if self
                    .epoll
                    .add(&fd, EpollEvent::new(flags, conn_token))
                    .is_err()
                {
                    self.shared.registry.mark_dead(index, generation);
                    self.shared.region.clients().mark_dead(index);
                    return;
                }
                let pidfd_token = match pidfd_open(peer.pid) {
                    Some(pidfd) => {
                        let t = self.token();
                        if self
                            .epoll
                            .add(&pidfd, EpollEvent::new(EpollFlags::EPOLLIN, t))
                            .is_ok()
                        {
                            self.conns.insert(
                                t,
                                Conn::Pidfd {
                                    fd: pidfd,
                                    conn: conn_token,
                                },
                            );
                            Some(t)
                        } else {
                            None
                        }
                    }
                    None => None,
                };
                self.conns.insert(
                    conn_token,
                    Conn::Live {
                        fd,
                        index,
                        generation,
                        pidfd_token,
                    },
                );
                tracing::debug!(pid = peer.pid, index, "client registered");
            }
        }
    }

    fn welcome(&self) -> Welcome {
        let info = self.shared.region.info();
        let mut w = Welcome::new(Status::Ok);
        w.server_pid = std::process::id();
        w.server_uid = self.owner_uid;
        w.region_size = info.total_size;
        w.store_version = self.shared.store.version();
        w.entries = self.shared.store.len();
        w.store_size = self.shared.region.info().store_size;
        w.max_clients = u32::try_from(info.max_clients).unwrap_or(u32::MAX);
        w
    }

    fn client_gone(&mut self, token: u64, why: &str) {
        if let Some(Conn::Live {
            index, generation, ..
        }) = self.conns.get(&token)
        {
            let (index, generation) = (*index, *generation);
            if self.shared.registry.mark_dead(index, generation) {
                self.shared.region.clients().mark_dead(index);
                tracing::debug!(index, "client gone: {why}");
                self.shared.region.poke_housekeeper();
            }
        }
        self.close(token);
    }

    fn close(&mut self, token: u64) {
        match self.conns.remove(&token) {
            Some(Conn::Pending { fd, .. }) => {
                self.pending -= 1;
                let _ = self.epoll.delete(&fd);
            }
            Some(Conn::Live {
                fd,
                index,
                generation,
                pidfd_token,
            }) => {
                let _ = self.epoll.delete(&fd);
                if self.shared.registry.mark_dead(index, generation) {
                    self.shared.region.clients().mark_dead(index);
                    self.shared.region.poke_housekeeper();
                }
                if let Some(t) = pidfd_token {
                    if let Some(Conn::Pidfd { fd, .. }) = self.conns.remove(&t) {
                        let _ = self.epoll.delete(&fd);
                    }
                }
            }
            Some(Conn::Pidfd { fd, .. }) => {
                let _ = self.epoll.delete(&fd);
            }
            None => {}
        }
    }

    fn expire_handshakes(&mut self) {
        if self.pending == 0 {
            return;
        }
        let overdue: Vec<u64> = self
            .conns
            .iter()
            .filter_map(|(t, c)| match c {
                Conn::Pending { since, .. } if since.elapsed() > HANDSHAKE_TIMEOUT => Some(*t),
                _ => None,
            })
            .collect();
        for t in overdue {
            self.close(t);
        }
    }
}

/// A pidfd for `pid` (Linux 5.3); `None` if the kernel has none or the
/// process is already gone (its connection's end then tells).
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor the kernel just gave us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // O_CLOEXEC is implied for pidfds; nothing more to set.
    let _ = fd.as_raw_fd();
    Some(fd)
}
