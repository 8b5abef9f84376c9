//! The keeper: a small process that holds a server's store memfd across
//! the server's death, so that the next server started on the same name
//! finds the data again ("warm restart").
//!
//! A memfd lives only while some process holds it (a descriptor or a
//! mapping). The server's store is such a memfd, so a `SIGKILL`ed server
//! would take its data with it. The server therefore starts a keeper, hands
//! it the store, and the keeper holds it for as long as there may be a
//! server to give it to:
//!
//! ```text
//! server A                         keeper                         server B
//! Keeper::spawn ──fork/exec (fd 3)─▶ setsid, detach, close fds
//!   Hold{id,name,dir,idle} + store ─▶ listen on DIR/NAME.keeper
//!                ◀─ Holding{pid}
//! ... serves; the socketpair stays open ...
//! (SIGKILL: EOF)                   ─▶ keeps holding, waits
//!                                     accept ◀────── adopt: connect DIR/NAME.keeper
//!                                     SO_PEERCRED: same uid?     SO_PEERCRED: same uid?
//!                                     Store{id,pid} + store ───▶ maps the store
//!                                     ... B is its server now ...
//!                                     ◀────────────── Keeper::discard: Discard
//!                                     remove the socket, let go ─▶ Discarded; exit 0
//! ```
//!
//! # The processes
//!
//! The keeper is the server's own binary re-executed in a hidden *keeper
//! mode*: [`Keeper::spawn`] runs a program with the arguments that select
//! that mode and the keeper's end of a `SOCK_SEQPACKET` socketpair as file
//! descriptor **3** ([`KEEPER_FD`]); the binary must then call
//! [`run_keeper`] at the very start of `main`, before it opens anything:
//!
//! ```no_run
//! use kvs_server::keeper::{self, Keeper};
//! use std::os::fd::AsFd;
//! use std::path::Path;
//!
//! // First thing in the binary's `main`:
//! if std::env::args_os().nth(1).as_deref() == Some("--keeper".as_ref()) {
//!     keeper::run_keeper(); // never returns
//! }
//! // The server, once it holds its name's lock:
//! # let (name, socket_dir) = ("kvs", Path::new("/run/kvs"));
//! # let (store, store_id) = (kvs_core::region::memfd::create("doc", 4096, 4096)?, 1u64);
//! let keeper = match keeper::adopt(name, socket_dir)? {
//!     Some((_adopted, _id, keeper)) => keeper, // warm restart: map `_adopted`
//!     None => Keeper::spawn(
//!         // The running binary itself, even if its file was replaced since
//!         // (an upgrade): the keeper then speaks this server's protocol.
//!         Path::new("/proc/self/exe"),
//!         &["--keeper"],
//!         name,
//!         socket_dir,
//!         store.as_fd(),
//!         store_id,
//!     )?,
//! };
//! // ... serve; on a clean stop:
//! keeper.discard()?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! At start the keeper detaches from everything of the server's that could
//! take it down with the server: it runs in a session of its own (`setsid`,
//! already in the child before `exec`), so a Ctrl+C on the server's
//! terminal, a kill of the server's process group or the terminal hanging
//! up does not reach it; it ignores `SIGINT`, `SIGHUP` and `SIGPIPE`; it is
//! not dumpable (`PR_SET_DUMPABLE` 0: other processes of the user cannot
//! `ptrace` it or read its memory through `/proc`); it closes every
//! descriptor but 0, 1, 2 and 3, moves to `/` (it pins no working
//! directory) and names itself `kvs-keeper`. Its standard input and output
//! are `/dev/null`, and so is its standard error unless
//! [`SpawnOptions::inherit_stderr`] asks otherwise: a keeper that outlives
//! the server must not hold the write end of a pipe someone reads the
//! server's output from (`kvs_server | tee log` would never end). It holds
//! no lock file: the server's `NAME.lock` stays the server's.
//!
//! The keeper is a child of the server that spawned it. A server that stops
//! cleanly discards it and reaps it; one that dies leaves it to be
//! reparented (to init or the nearest subreaper). A keeper that adopting
//! servers discard is reaped by whoever its parent is by then.
//!
//! # Who may adopt
//!
//! The keeper listens on `DIR/NAME.keeper` (`SOCK_SEQPACKET`, mode 0600),
//! next to the server's `NAME.sock` in the server's private socket
//! directory (see [`kvs_core::region::endpoint`]); it checks that the
//! directory is its user's and that nobody else may write into it. It hands
//! the store only to a peer whose `SO_PEERCRED` uid is its own, and only
//! while it has no live server: the connection of the current server
//! (first the socketpair, then an adopter's connection) is the server's
//! claim, and a newcomer is answered `Busy` and closed until that
//! connection ends. An adopter checks the keeper's uid the same way.
//!
//! The socket file is created under a temporary name and renamed into place
//! once it listens, so an adopter never meets a bound socket that does not
//! listen yet; a stale file at the name (nobody answers) is replaced, and a
//! keeper that answers there makes a second keeper of the same name refuse
//! to start (`AddrInUse`) instead of orphaning the first one. If the file
//! is removed under a keeper (a `/tmp` cleaner, the directory removed), the
//! keeper makes it anew when its server goes and while it has none (it
//! looks every 5 s); if it cannot, no adopter could ever reach it, and it
//! exits rather than hold the store's memory for nobody.
//!
//! An adopter learns only that the keeper speaks its protocol version: the
//! store's contents (its header, layout version, sizes) are the server's to
//! check before it uses them, as for any memfd it did not create.
//!
//! # Wire messages
//!
//! Every message is one `SOCK_SEQPACKET` record of at most
//! [`MAX_MESSAGE`] bytes: a 16-byte header (magic `kvsKEEP\x01`, protocol
//! version, kind; integers little-endian) and the kind's fields, with
//! exactly the length its kind implies. A record of another length, a
//! wrong magic or version, an unknown kind, a truncated record or a wrong
//! number of descriptors is malformed: the keeper drops that peer (it never
//! panics or waits on one); the server side returns `InvalidData`.
//!
//! | kind          | from → to          | fields                                             | descriptor |
//! |---------------|--------------------|----------------------------------------------------|------------|
//! | 1 `Hold`      | spawner → keeper   | store id u64, idle limit ms u64 (0: none), name length u16, directory length u16, name, absolute directory | the store |
//! | 2 `Holding`   | keeper → spawner   | keeper pid u32                                     |            |
//! | 3 `Failed`    | keeper → spawner   | errno i32, reason length u16, reason (UTF-8)       |            |
//! | 4 `Store`     | keeper → adopter   | store id u64, keeper pid u32                       | the store  |
//! | 5 `Busy`      | keeper → adopter   | the current server's pid u32                       |            |
//! | 6 `Discard`   | server → keeper    |                                                    |            |
//! | 7 `Discarded` | keeper → server    |                                                    |            |
//!
//! The end of the current server's connection (EOF: the server died, or
//! dropped its [`Keeper`]) is itself a message: the keeper keeps holding
//! and waits for an adopter. Anything but `Discard` on that connection
//! drops it the same way.
//!
//! # Idle limit
//!
//! By default a keeper without a server holds the store until it is
//! adopted or discarded, however long that takes: the data is what it
//! exists for, and it costs only the store's memory (a reboot loses it
//! anyway). `kvs_server --cleanup` discards orphaned keepers with
//! [`discard_orphan`]. [`SpawnOptions::idle_limit`] makes it exit instead
//! after that long without a server.
//!
//! # Waits
//!
//! Every wait is bounded ([`SPAWN_WAIT`], [`DISCARD_WAIT`], [`ADOPT_WAIT`],
//! [`BUSY_WAIT`]) or event-driven: the keeper sleeps in `poll` on its
//! listener and its server's connection, with a timeout only for the idle
//! limit.

use kvs_core::region::endpoint::{self, Peer};
use kvs_core::secure_fs::{self, Dir};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use std::ffi::OsStr;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The descriptor on which a program started by [`Keeper::spawn`] finds the
/// keeper's end of the socketpair.
pub const KEEPER_FD: RawFd = 3;

/// How long [`Keeper::spawn`] waits for the keeper to say it holds the store.
pub const SPAWN_WAIT: Duration = Duration::from_secs(2);

/// How long [`Keeper::discard`] waits for the keeper to confirm and exit.
pub const DISCARD_WAIT: Duration = Duration::from_secs(2);

/// How long [`adopt`] waits for the keeper to take its connection, and
/// then for its answer.
pub const ADOPT_WAIT: Duration = Duration::from_secs(2);

/// How long [`adopt`] keeps asking a keeper that answers `Busy` (its
/// previous server's connection is still open: that server is alive, or
/// dying right now).
pub const BUSY_WAIT: Duration = Duration::from_secs(1);

/// How often a keeper without a server checks that its socket file is
/// still there (see `Held::keep_reachable`).
const SOCKET_CHECK: Duration = Duration::from_secs(5);

/// How long a keeper waits for its `Hold` message before giving up.
const HOLD_WAIT: Duration = Duration::from_secs(10);

/// The largest message either side sends or accepts, in bytes.
pub const MAX_MESSAGE: usize = 512;

/// Longest reason a `Failed` message carries, in bytes.
const MAX_REASON: usize = 256;

/// Longest path a unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

const MAGIC: u64 = u64::from_le_bytes(*b"kvsKEEP\x01");

/// Version of the keeper protocol; a server adopts only a keeper of the
/// same version.
pub const KEEPER_PROTO_VERSION: u32 = 1;

/// `NAME.keeper`: the keeper's socket file in the socket directory.
pub fn keeper_file(name: &str) -> String {
    format!("{name}.keeper")
}

fn error(kind: io::ErrorKind, msg: impl Into<String>) -> io::Error {
    io::Error::new(kind, msg.into())
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

// ---------------------------------------------------------------------------
// Messages

const HOLD: u32 = 1;
const HOLDING: u32 = 2;
const FAILED: u32 = 3;
const STORE: u32 = 4;
const BUSY: u32 = 5;
const DISCARD: u32 = 6;
const DISCARDED: u32 = 7;

const HEADER: usize = 16;

/// One message between a server and its keeper (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Msg {
    Hold {
        store_id: u64,
        idle_limit_ms: u64,
        name: String,
        dir: PathBuf,
    },
    Holding {
        pid: u32,
    },
    Failed {
        errno: i32,
        reason: String,
    },
    Store {
        store_id: u64,
        pid: u32,
    },
    Busy {
        server_pid: u32,
    },
    Discard,
    Discarded,
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Msg {
    fn kind(&self) -> u32 {
        match self {
            Msg::Hold { .. } => HOLD,
            Msg::Holding { .. } => HOLDING,
            Msg::Failed { .. } => FAILED,
            Msg::Store { .. } => STORE,
            Msg::Busy { .. } => BUSY,
            Msg::Discard => DISCARD,
            Msg::Discarded => DISCARDED,
        }
    }

    /// Whether the message comes with a descriptor (the store).
    fn carries_fd(&self) -> bool {
        matches!(self, Msg::Hold { .. } | Msg::Store { .. })
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&KEEPER_PROTO_VERSION.to_le_bytes());
        b.extend_from_slice(&self.kind().to_le_bytes());
        match self {
            Msg::Hold {
                store_id,
                idle_limit_ms,
                name,
                dir,
            } => {
                // The sender checked both lengths (`check_hold`).
                let dir = dir.as_os_str().as_bytes();
                b.extend_from_slice(&store_id.to_le_bytes());
                b.extend_from_slice(&idle_limit_ms.to_le_bytes());
                b.extend_from_slice(&(name.len() as u16).to_le_bytes());
                b.extend_from_slice(&(dir.len() as u16).to_le_bytes());
                b.extend_from_slice(name.as_bytes());
                b.extend_from_slice(dir);
            }
            Msg::Holding { pid } => b.extend_from_slice(&pid.to_le_bytes()),
            Msg::Failed { errno, reason } => {
                let reason = truncate(reason, MAX_REASON);
                b.extend_from_slice(&errno.to_le_bytes());
                b.extend_from_slice(&(reason.len() as u16).to_le_bytes());
                b.extend_from_slice(reason.as_bytes());
            }
            Msg::Store { store_id, pid } => {
                b.extend_from_slice(&store_id.to_le_bytes());
                b.extend_from_slice(&pid.to_le_bytes());
            }
            Msg::Busy { server_pid } => b.extend_from_slice(&server_pid.to_le_bytes()),
            Msg::Discard | Msg::Discarded => {}
        }
        debug_assert!(b.len() <= MAX_MESSAGE);
        b
    }

    /// Decodes one received record, checking every length.
    fn decode(buf: &[u8]) -> Result<Msg, String> {
        let mut r = Reader { buf };
        if r.u64()? != MAGIC {
            return Err("not a kvs keeper message".into());
        }
        let version = r.u32()?;
        if version != KEEPER_PROTO_VERSION {
            return Err(format!(
                "keeper protocol version {version}, this program speaks {KEEPER_PROTO_VERSION}"
            ));
        }
        let msg = match r.u32()? {
            HOLD => {
                let store_id = r.u64()?;
                let idle_limit_ms = r.u64()?;
                let name_len = usize::from(r.u16()?);
                let dir_len = usize::from(r.u16()?);
                let name = std::str::from_utf8(r.take(name_len)?)
                    .map_err(|_| "the region name is not UTF-8".to_string())?;
                if endpoint::normalize_name(name)? != name {
                    return Err("the region name has a leading '/'".into());
                }
                let dir = r.take(dir_len)?;
                if dir.first() != Some(&b'/') || dir.contains(&0) || dir_len > MAX_SOCKET_PATH {
                    return Err("the socket directory is not a plain absolute path".into());
                }
                Msg::Hold {
                    store_id,
                    idle_limit_ms,
                    name: name.to_string(),
                    dir: PathBuf::from(OsStr::from_bytes(dir)),
                }
            }
            HOLDING => Msg::Holding { pid: r.u32()? },
            FAILED => {
                let errno = r.i32()?;
                let len = usize::from(r.u16()?);
                if len > MAX_REASON {
                    return Err("a reason longer than allowed".into());
                }
                let reason = String::from_utf8_lossy(r.take(len)?)
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect();
                Msg::Failed { errno, reason }
            }
            STORE => Msg::Store {
                store_id: r.u64()?,
                pid: r.u32()?,
            },
            BUSY => Msg::Busy {
                server_pid: r.u32()?,
            },
            DISCARD => Msg::Discard,
            DISCARDED => Msg::Discarded,
            other => return Err(format!("unknown message kind {other}")),
        };
        if !r.buf.is_empty() {
            return Err(format!("{} bytes after the message", r.buf.len()));
        }
        Ok(msg)
    }
}

/// Reads fields off a received record, refusing to read past its end.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.buf.len() {
            return Err("a message shorter than its fields".into());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u16(&mut self) -> Result<u16, String> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn i32(&mut self) -> Result<i32, String> {
        self.array().map(i32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }
}

const _: () = assert!(HEADER == 16 && HEADER + 20 + 64 + MAX_SOCKET_PATH <= MAX_MESSAGE);
const _: () = assert!(HEADER + 6 + MAX_REASON <= MAX_MESSAGE);

/// Sends one message (and the store with it, for `Hold` and `Store`),
/// without waiting: every message is small and the peer's buffer holds it.
fn send_msg(conn: BorrowedFd<'_>, msg: &Msg, store: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let bytes = msg.encode();
    let iov = [IoSlice::new(&bytes)];
    let fds;
    let cmsgs: &[ControlMessage<'_>] = match store {
        Some(fd) => {
            fds = [fd.as_raw_fd()];
            &[ControlMessage::ScmRights(&fds)]
        }
        None => &[],
    };
    let n = socket::sendmsg::<()>(
        conn.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        None,
    )?;
    if n != bytes.len() {
        return Err(error(
            io::ErrorKind::WriteZero,
            "a keeper message was cut short",
        ));
    }
    Ok(())
}

/// What one receive brought.
enum Received {
    /// A well-formed message, and the store if it carries one.
    Msg(Msg, Option<OwnedFd>),
    /// The peer closed its end (or sent an empty record, or closed with a
    /// message unread: `ECONNRESET`).
    Eof,
}

/// Receives one message without waiting: `Ok(None)` if none is there yet.
/// Received descriptors are close-on-exec from the start; any that do not
/// belong to the message are closed.
///
/// # Errors
///
/// `InvalidData` for a malformed message; other OS errors.
fn recv_msg(conn: BorrowedFd<'_>) -> io::Result<Option<Received>> {
    let mut buf = [0u8; MAX_MESSAGE + 1];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let (n, mut fds, truncated) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match socket::recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(Errno::EAGAIN | Errno::EINTR) => return Ok(None),
            // The peer closed with a message of ours unread.
            Err(Errno::ECONNRESET) => return Ok(Some(Received::Eof)),
            Err(e) => return Err(e.into()),
        };
        let mut fds: Vec<OwnedFd> = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for fd in raw {
                        // SAFETY: the kernel installed these descriptors in
                        // this process for this receive; nothing else owns
                        // them.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        (msg.bytes, fds, truncated)
    };
    if n == 0 && fds.is_empty() && !truncated {
        return Ok(Some(Received::Eof));
    }
    if truncated || n > MAX_MESSAGE {
        return Err(error(
            io::ErrorKind::InvalidData,
            format!(
                "a keeper message longer than {MAX_MESSAGE} bytes or with too many descriptors"
            ),
        ));
    }
    let msg = Msg::decode(&buf[..n]).map_err(|m| error(io::ErrorKind::InvalidData, m))?;
    let store = match (msg.carries_fd(), fds.len()) {
        (true, 1) => fds.pop(),
        (false, 0) => None,
        (_, got) => {
            return Err(error(
                io::ErrorKind::InvalidData,
                format!(
                    "a keeper message of kind {} with {got} descriptors",
                    msg.kind()
                ),
            ))
        }
    };
    Ok(Some(Received::Msg(msg, store)))
}

/// A `poll` timeout of `left` (rounded up to whole milliseconds, so a wait
/// never degenerates into spinning), or none.
fn poll_timeout(left: Option<Duration>) -> PollTimeout {
    match left {
        None => PollTimeout::NONE,
        Some(d) => {
            let ms = d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    }
}

/// Receives one message, waiting until `deadline` at most.
///
/// # Errors
///
/// `TimedOut` when nothing came; see [`recv_msg`].
fn recv_until(conn: BorrowedFd<'_>, deadline: Instant, what: &str) -> io::Result<Received> {
    loop {
        if let Some(r) = recv_msg(conn)? {
            return Ok(r);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(error(
                io::ErrorKind::TimedOut,
                format!("no answer from {what} within the time allowed"),
            ));
        }
        let mut fds = [PollFd::new(conn, PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout(Some(left))) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn seqpacket() -> io::Result<OwnedFd> {
    socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)
}

/// `DIR/NAME.keeper`, checked to fit a socket address.
fn keeper_path(dir: &Path, name: &str) -> io::Result<PathBuf> {
    let path = dir.join(keeper_file(name));
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(error(
            io::ErrorKind::InvalidInput,
            format!(
                "the keeper's socket path {} is longer than {MAX_SOCKET_PATH} bytes; choose a shorter --socket-dir",
                path.display()
            ),
        ));
    }
    Ok(path)
}

/// Connects to the socket at `path`: `Ok(None)` if nobody listens there
/// (no file, or a stale one). Waits [`ADOPT_WAIT`] at most for room in the
/// listener's backlog (a stopped keeper does not hang us).
fn connect_path(path: &Path) -> io::Result<Option<(OwnedFd, Peer)>> {
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    let fd = seqpacket()?;
    let limit = nix::sys::time::TimeVal::new(ADOPT_WAIT.as_secs() as _, 0);
    socket::setsockopt(&fd, sockopt::SendTimeout, &limit)?;
    match socket::connect(fd.as_raw_fd(), &addr) {
        Ok(()) => {}
        Err(Errno::ECONNREFUSED | Errno::ENOENT) => return Ok(None),
        Err(Errno::EAGAIN) => {
            return Err(error(
                io::ErrorKind::TimedOut,
                format!(
                    "{} did not take the connection within {ADOPT_WAIT:?} (is its keeper stopped?)",
                    path.display()
                ),
            ))
        }
        Err(e) => {
            return Err(error(
                io::Error::from(e).kind(),
                format!("connecting to {}: {e}", path.display()),
            ))
        }
    }
    let peer = endpoint::peer(&fd)?;
    Ok(Some((fd, peer)))
}

fn checked_name(name: &str) -> io::Result<String> {
    endpoint::normalize_name(name).map_err(|m| error(io::ErrorKind::InvalidInput, m))
}

// ---------------------------------------------------------------------------
// The server's side

/// How a keeper is started beyond the program and the store.
#[derive(Debug, Clone, Default)]
pub struct SpawnOptions {
    /// Exit after this long without a server (none of its servers
    /// connected), letting the store go. `None` (the default): hold until
    /// adopted or discarded; see the module docs for why.
    pub idle_limit: Option<Duration>,
    /// Give the keeper the server's standard error instead of `/dev/null`
    /// (for debugging the keeper mode). Off by default: a keeper that
    /// outlives the server would hold the write end of whatever pipe the
    /// server's standard error is.
    pub inherit_stderr: bool,
}

/// The server's end of its keeper: the connection whose end tells the
/// keeper that its server is gone.
///
/// Dropping it without [`discard`](Keeper::discard) is what a crash does:
/// the keeper keeps the store for the next server. (If this process spawned
/// the keeper and lives on, it should reap the keeper's pid once that
/// exits.)
#[derive(Debug)]
pub struct Keeper {
    conn: OwnedFd,
    pid: u32,
    /// The keeper process, when this process spawned it (and so must reap it).
    child: Option<Child>,
    name: String,
}

/// Kills and reaps a half-started keeper unless disarmed.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn child(&mut self) -> &mut Child {
        self.0
            .as_mut()
            .expect("the guard holds the child until disarmed")
    }

    fn disarm(mut self) -> Child {
        self.0
            .take()
            .expect("the guard holds the child until disarmed")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits up to `limit` for `child` to exit, then kills it; its status.
fn reap(child: &mut Child, limit: Duration) -> io::Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return child.wait();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Keeper {
    /// Starts a keeper for region `name` holding `store` (the store's
    /// memfd, read-write) with the default [`SpawnOptions`]; see
    /// [`spawn_with`](Keeper::spawn_with).
    ///
    /// # Errors
    ///
    /// See [`spawn_with`](Keeper::spawn_with).
    pub fn spawn(
        program: &Path,
        args: &[&str],
        name: &str,
        socket_dir: &Path,
        store: BorrowedFd<'_>,
        store_id: u64,
    ) -> io::Result<Keeper> {
        Self::spawn_with(
            program,
            args,
            name,
            socket_dir,
            store,
            store_id,
            &SpawnOptions::default(),
        )
    }

    /// Starts a keeper for region `name` holding `store` (the store's
    /// memfd, read-write): runs `program` with `args` (the arguments that
    /// make it call [`run_keeper`]) in a session of its own, with the
    /// keeper's end of a `SOCK_SEQPACKET` socketpair as descriptor 3
    /// ([`KEEPER_FD`]) and `/dev/null` as standard input and output; sends
    /// it `store` (`SCM_RIGHTS`) with the region name, the socket directory
    /// (made absolute) and `store_id`; and waits ([`SPAWN_WAIT`] at most)
    /// for its answer. Once it answers `Holding` it listens on
    /// `DIR/NAME.keeper` for a successor.
    ///
    /// `socket_dir` is the server's socket directory: it must be this
    /// user's and writable by nobody else (see
    /// [`endpoint::prepare_server_dir`]).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a bad name or a socket path too long; the OS
    /// error if the program cannot be run; the keeper's own error (with its
    /// kind) if it could not hold the store, `AddrInUse` among them when
    /// another keeper already holds a store of that name; `TimedOut` if it
    /// did not answer in time; an error naming the exit status if it exited
    /// without answering (not a keeper mode). The keeper is killed and
    /// reaped on every error.
    pub fn spawn_with(
        program: &Path,
        args: &[&str],
        name: &str,
        socket_dir: &Path,
        store: BorrowedFd<'_>,
        store_id: u64,
        options: &SpawnOptions,
    ) -> io::Result<Keeper> {
        let name = checked_name(name)?;
        let dir = std::path::absolute(socket_dir)?;
        keeper_path(&dir, &name)?;
        let idle_limit_ms = options
            .idle_limit
            .map_or(0, |d| d.as_millis().clamp(1, u128::from(u64::MAX)) as u64);
        let hold = Msg::Hold {
            store_id,
            idle_limit_ms,
            name: name.clone(),
            dir,
        };

        let (ours, theirs) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        // Above the standard descriptors and above 3, so that the child's
        // dup2 onto 3 neither meets its own source nor something std set
        // up for stdio; close-on-exec here, like every descriptor of ours.
        let moved = nix::fcntl::fcntl(&theirs, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))?;
        // Only the copy may stay open here: the keeper's exit must end the
        // socketpair.
        drop(theirs);
        // SAFETY: F_DUPFD_CLOEXEC returned a fresh descriptor that nothing
        // else owns.
        let theirs = unsafe { OwnedFd::from_raw_fd(moved) };
        let raw = theirs.as_raw_fd();

        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if options.inherit_stderr {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        // SAFETY: the closure runs in the forked child before `exec` and
        // calls only `setsid` and `dup2`, both async-signal-safe, and reads
        // errno; it allocates nothing and takes no lock. `raw` is open in
        // the child (inherited; close-on-exec only closes it at `exec`).
        // dup2 onto 3 clears close-on-exec on the copy, so exactly that
        // descriptor reaches the keeper.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::dup2(raw, KEEPER_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            error(
                e.kind(),
                format!("starting the keeper {}: {e}", program.display()),
            )
        })?;
        drop(theirs);
        let mut guard = ChildGuard(Some(child));
        let pid = guard.child().id();

        let answer = match send_msg(ours.as_fd(), &hold, Some(store)) {
            Ok(()) => recv_until(
                ours.as_fd(),
                Instant::now() + SPAWN_WAIT,
                &format!("the keeper (pid {pid})"),
            ),
            // It exited (or closed descriptor 3) before we could send.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => {
                Ok(Received::Eof)
            }
            Err(e) => Err(error(
                e.kind(),
                format!("handing the store to the keeper (pid {pid}): {e}"),
            )),
        };
        match answer {
            Ok(Received::Msg(Msg::Holding { pid: said }, _)) if said == pid => {
                tracing::debug!(name = %name, pid, "the keeper holds the store");
                Ok(Keeper {
                    conn: ours,
                    pid,
                    child: Some(guard.disarm()),
                    name,
                })
            }
            Ok(Received::Msg(Msg::Failed { errno, reason }, _)) => {
                let _ = reap(guard.child(), DISCARD_WAIT);
                Err(error(
                    io::Error::from_raw_os_error(errno).kind(),
                    format!("the keeper of {name} could not hold the store: {reason}"),
                ))
            }
            Ok(Received::Msg(other, _)) => Err(error(
                io::ErrorKind::InvalidData,
                format!("the keeper (pid {pid}) answered {other:?} instead of Holding"),
            )),
            Ok(Received::Eof) => {
                let status = reap(guard.child(), DISCARD_WAIT)?;
                Err(error(
                    io::ErrorKind::BrokenPipe,
                    format!(
                        "the keeper {} {args:?} exited ({status}) without taking the store: is that its keeper mode?",
                        program.display()
                    ),
                ))
            }
            Err(e) => Err(error(
                e.kind(),
                format!("starting the keeper of {name} (pid {pid}): {e}"),
            )),
        }
    }

    /// The keeper's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the keeper has gone (it was killed, or exited on its idle
    /// limit before this server adopted it): one `poll`, no wait.
    pub fn is_gone(&self) -> bool {
        endpoint::peer_gone(&self.conn)
    }

    /// Clean stop: tells the keeper to let go of the store and exit (the
    /// data is then gone unless this process still holds it), and waits
    /// ([`DISCARD_WAIT`] at most) for it to confirm and close its end; a
    /// keeper this process spawned is reaped (killed if it does not exit in
    /// time).
    ///
    /// # Errors
    ///
    /// `BrokenPipe` if the keeper had already gone; `TimedOut` if it did
    /// not confirm in time; `InvalidData` for any other answer; an error
    /// naming the exit status if a spawned keeper did not exit cleanly.
    pub fn discard(mut self) -> io::Result<()> {
        let pid = self.pid;
        let deadline = Instant::now() + DISCARD_WAIT;
        let what = format!("the keeper of {} (pid {pid})", self.name);
        let result = send_msg(self.conn.as_fd(), &Msg::Discard, None)
            .map_err(|e| error(e.kind(), format!("telling {what} to discard: {e}")))
            .and_then(|()| match recv_until(self.conn.as_fd(), deadline, &what)? {
                Received::Msg(Msg::Discarded, _) => Ok(()),
                Received::Msg(other, _) => Err(error(
                    io::ErrorKind::InvalidData,
                    format!("{what} answered {other:?} instead of Discarded"),
                )),
                Received::Eof => Err(error(
                    io::ErrorKind::BrokenPipe,
                    format!("{what} went away without confirming the discard"),
                )),
            })
            .and_then(|()| {
                // The keeper closes its end when it exits.
                match recv_until(self.conn.as_fd(), deadline, &what)? {
                    Received::Eof => Ok(()),
                    Received::Msg(other, _) => Err(error(
                        io::ErrorKind::InvalidData,
                        format!("{what} sent {other:?} after Discarded"),
                    )),
                }
            });
        if let Some(mut child) = self.child.take() {
            let status = reap(&mut child, DISCARD_WAIT)?;
            if result.is_ok() && !status.success() {
                return Err(error(
                    io::ErrorKind::Other,
                    format!("{what} exited with {status} after discarding"),
                ));
            }
        }
        if result.is_ok() {
            tracing::debug!(name = %self.name, pid, "the keeper discarded the store");
        }
        result
    }
}

/// A starting server asks for an earlier server's store: connects to
/// `DIR/NAME.keeper` and, if a keeper of this user answers, receives the
/// store's memfd and its store id, and becomes that keeper's server. The
/// returned [`Keeper`] is the same kind of handle as [`Keeper::spawn`]
/// returns: a later clean stop [`discard`](Keeper::discard)s, a later crash
/// (or drop) leaves the store with the keeper again.
///
/// `Ok(None)` when there is no keeper: no socket file, or nobody listening
/// at it (the stale file is then removed).
///
/// Call it only while holding the name's lock
/// ([`endpoint::NameLock`]), so that no other server of the name runs.
///
/// # Errors
///
/// `InvalidInput` for a bad name; `PermissionDenied` when the socket or
/// the process behind it is another user's; `ResourceBusy` when the
/// keeper still serves a live server after [`BUSY_WAIT`]; `InvalidData`
/// for a malformed answer (a keeper of another protocol version among
/// them); `TimedOut` when it does not answer within [`ADOPT_WAIT`];
/// `ConnectionAborted` when it closes without answering.
pub fn adopt(name: &str, socket_dir: &Path) -> io::Result<Option<(OwnedFd, u64, Keeper)>> {
    let name = checked_name(name)?;
    let path = keeper_path(socket_dir, &name)?;
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error(e.kind(), format!("{}: {e}", path.display()))),
    };
    {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        if !meta.file_type().is_socket() {
            return Err(error(
                io::ErrorKind::InvalidData,
                format!("{} is not a socket; remove it", path.display()),
            ));
        }
        if meta.uid() != euid() {
            return Err(error(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} belongs to uid {}, not to this user (uid {})",
                    path.display(),
                    meta.uid(),
                    euid()
                ),
            ));
        }
    }
    let busy_until = Instant::now() + BUSY_WAIT;
    loop {
        let Some((conn, peer)) = connect_path(&path)? else {
            remove_if_same(&path, &meta);
            tracing::debug!(path = %path.display(), "removed a stale keeper socket");
            return Ok(None);
        };
        if peer.uid != euid() {
            return Err(error(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the process behind {} (pid {}) runs as uid {}, not as this user (uid {}): refusing it",
                    path.display(),
                    peer.pid,
                    peer.uid,
                    euid()
                ),
            ));
        }
        let what = format!("the keeper of {name} (pid {})", peer.pid);
        match recv_until(conn.as_fd(), Instant::now() + ADOPT_WAIT, &what)? {
            Received::Msg(Msg::Store { store_id, .. }, Some(store)) => {
                tracing::debug!(name = %name, pid = peer.pid, store_id, "adopted the keeper's store");
                return Ok(Some((
                    store,
                    store_id,
                    Keeper {
                        conn,
                        pid: peer.pid,
                        child: None,
                        name,
                    },
                )));
            }
            Received::Msg(Msg::Busy { server_pid }, _) => {
                if Instant::now() >= busy_until {
                    return Err(error(
                        io::ErrorKind::ResourceBusy,
                        format!("{what} still serves a live server (pid {server_pid})"),
                    ));
                }
                drop(conn);
                std::thread::sleep(Duration::from_millis(20));
            }
            Received::Msg(other, _) => {
                return Err(error(
                    io::ErrorKind::InvalidData,
                    format!("{what} answered {other:?} instead of the store"),
                ))
            }
            Received::Eof => {
                return Err(error(
                    io::ErrorKind::ConnectionAborted,
                    format!("{what} closed the connection without answering"),
                ))
            }
        }
    }
}

/// Removes the file at `path` if it is still the one `seen` describes.
fn remove_if_same(path: &Path, seen: &std::fs::Metadata) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(now) = std::fs::symlink_metadata(path) {
        if now.ino() == seen.ino() && now.dev() == seen.dev() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Discards the store of an orphaned keeper of `name` (for
/// `kvs_server --cleanup`): adopts it and immediately tells it to discard.
/// `Ok(true)` if there was one, `Ok(false)` if not.
///
/// # Errors
///
/// See [`adopt`] (`ResourceBusy` when a live server still has it: that is
/// no orphan) and [`Keeper::discard`].
pub fn discard_orphan(name: &str, socket_dir: &Path) -> io::Result<bool> {
    match adopt(name, socket_dir)? {
        None => Ok(false),
        Some((store, _, keeper)) => {
            drop(store);
            keeper.discard()?;
            Ok(true)
        }
    }
}

// ---------------------------------------------------------------------------
// The keeper process

/// The keeper process's `main`: call it from the binary when it is started
/// in keeper mode (see the module docs), before opening anything. It takes
/// descriptor 3 ([`KEEPER_FD`]), never returns, and exits 0 when told to
/// discard, when its idle limit passes, or when nobody can reach it any more;
/// 1 on an error before it held anything (no socketpair on descriptor 3, a
/// malformed or missing `Hold`, a socket directory it may not use).
pub fn run_keeper() -> ! {
    detach();
    let code = match take_socketpair() {
        Ok(conn) => keeper_main(conn),
        Err(e) => {
            eprintln!("kvs keeper: {e}");
            1
        }
    };
    std::process::exit(code)
}

/// Leaves everything of the server's that could take the keeper down with
/// it, and what it does not need.
fn detach() {
    // Already done before exec by `Keeper::spawn`; EPERM then.
    let _ = nix::unistd::setsid();
    // The signal mask survives exec: a server that blocks SIGTERM to
    // `sigwait` for it (kvs_server does) would hand the keeper a mask in
    // which SIGTERM never arrives, so `kill` could not end it.
    let _ = nix::sys::signal::SigSet::all().thread_unblock();
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGHUP,
        nix::sys::signal::Signal::SIGPIPE,
    ] {
        // SAFETY: SIG_IGN installs no handler, so no code of ours runs in
        // signal context; the previous disposition is not needed.
        let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn) };
    }
    // SAFETY: prctl with integer arguments; PR_SET_NAME reads a
    // NUL-terminated string of at most 16 bytes, which the literal is.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"kvs-keeper".as_ptr(), 0, 0, 0);
    }
    // Its only file is its socket, which must be 0600 from the start.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let _ = nix::unistd::chdir("/");
    close_from(KEEPER_FD + 1);
}

/// Closes every descriptor from `first` up.
fn close_from(first: RawFd) {
    // SAFETY: close_range only closes descriptors; none of them is used by
    // this process afterwards (`run_keeper` runs before the program opens
    // anything, and std keeps none open).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    };
    if rc == 0 {
        return;
    }
    // Older kernels: the open ones, as /proc lists them (the listing's own
    // descriptor is closed by then; closing its number again is harmless).
    let open: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd >= first)
            .collect(),
        Err(_) => (first..1024).collect(),
    };
    for fd in open {
        // SAFETY: as above; EBADF for one that is not open is harmless.
        unsafe { libc::close(fd) };
    }
}

/// Descriptor 3, checked to be a `SOCK_SEQPACKET` socket.
fn take_socketpair() -> io::Result<OwnedFd> {
    let not_ours = |detail: String| {
        error(
            io::ErrorKind::InvalidInput,
            format!("descriptor {KEEPER_FD} is not a keeper socketpair ({detail}); this mode is started only by Keeper::spawn"),
        )
    };
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(KEEPER_FD, libc::F_GETFD) } < 0 {
        return Err(not_ours(io::Error::last_os_error().to_string()));
    }
    // SAFETY: descriptor 3 is open (checked above) and was inherited from
    // the spawner for exactly this use; `run_keeper` runs before the program
    // opens anything, so nothing else in this process refers to it, and
    // from here on only this OwnedFd does.
    let fd = unsafe { OwnedFd::from_raw_fd(KEEPER_FD) };
    match socket::getsockopt(&fd, sockopt::SockType) {
        Ok(SockType::SeqPacket) => {}
        Ok(other) => return Err(not_ours(format!("a {other:?} socket"))),
        Err(e) => return Err(not_ours(e.to_string())),
    }
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    Ok(fd)
}

/// The keeper's socket, listening under its final name.
struct Listening {
    listener: OwnedFd,
    dir: Dir,
    file: String,
    /// The socket file's device and inode, to remove it only while it is ours.
    id: (u64, u64),
}

impl Listening {
    fn file_id(dir: &Dir, file: &str) -> Option<(u64, u64)> {
        nix::sys::stat::fstatat(dir.as_fd(), file, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .ok()
            .map(|st| (st.st_dev, st.st_ino))
    }

    /// Whether `DIR/NAME.keeper` is still this socket.
    fn still_ours(&self) -> bool {
        Self::file_id(&self.dir, &self.file) == Some(self.id)
    }

    /// Removes the socket file if it is still ours.
    fn remove(&self) {
        if self.still_ours() {
            let _ = self.dir.unlink(&self.file);
        }
    }
}

/// Creates the keeper's listening socket `DIR/NAME.keeper` (see the module
/// docs).
fn listen_keeper(dir_path: &Path, name: &str) -> io::Result<Listening> {
    let path = keeper_path(dir_path, name)?;
    let dir = Dir::open(dir_path).map_err(|e| {
        error(
            e.kind(),
            format!("socket directory {}: {e}", dir_path.display()),
        )
    })?;
    let st = dir.stat()?;
    if st.st_uid != euid() {
        return Err(error(
            io::ErrorKind::PermissionDenied,
            format!(
                "socket directory {} belongs to uid {}, not to this user (uid {})",
                dir_path.display(),
                st.st_uid,
                euid()
            ),
        ));
    }
    dir.check_private("socket directory")
        .map_err(|m| error(io::ErrorKind::PermissionDenied, m))?;
    let file = keeper_file(name);
    match nix::sys::stat::fstatat(
        dir.as_fd(),
        file.as_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => {
            let kind = nix::sys::stat::SFlag::from_bits_truncate(st.st_mode)
                & nix::sys::stat::SFlag::S_IFMT;
            if kind != nix::sys::stat::SFlag::S_IFSOCK {
                return Err(error(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket; remove it", path.display()),
                ));
            }
            if let Some((_, peer)) = connect_path(&path)? {
                return Err(error(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another keeper (pid {}) already holds a store of {name} at {}; adopt it, or discard it (kvs_server --cleanup)",
                        peer.pid,
                        path.display()
                    ),
                ));
            }
            // Stale: nobody listens; the rename below replaces it.
        }
        Err(Errno::ENOENT) => {}
        Err(e) => {
            return Err(error(
                io::Error::from(e).kind(),
                format!("{}: {e}", path.display()),
            ))
        }
    }

    let fd = seqpacket()?;
    let mut bound = None;
    for _ in 0..8 {
        let tmp = format!(".keeper-{:012x}", secure_fs::random_u64() >> 16);
        let tmp_path = dir_path.join(&tmp);
        if tmp_path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(error(
                io::ErrorKind::InvalidInput,
                format!(
                    "the socket directory {} is too long for a socket path",
                    dir_path.display()
                ),
            ));
        }
        let addr = UnixAddr::new(&tmp_path).map_err(io::Error::from)?;
        match socket::bind(fd.as_raw_fd(), &addr) {
            Ok(()) => {
                bound = Some(tmp);
                break;
            }
            Err(Errno::EADDRINUSE) => continue,
            Err(e) => {
                return Err(error(
                    io::Error::from(e).kind(),
                    format!("binding {}: {e}", tmp_path.display()),
                ))
            }
        }
    }
    let tmp = bound.ok_or_else(|| {
        error(
            io::ErrorKind::AddrInUse,
            "no unused temporary socket name after 8 tries",
        )
    })?;
    let finish = || -> io::Result<(u64, u64)> {
        // The umask made it 0600 already; make sure whatever the umask was.
        nix::sys::stat::fchmodat(
            dir.as_fd(),
            tmp.as_str(),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )?;
        socket::listen(&fd, Backlog::new(16).unwrap_or(Backlog::MAXCONN))?;
        endpoint::set_nonblocking(fd.as_raw_fd(), true)?;
        dir.rename(&tmp, &file)?;
        Listening::file_id(&dir, &file)
            .ok_or_else(|| error(io::ErrorKind::NotFound, "the keeper's socket vanished"))
    };
    match finish() {
        Ok(id) => Ok(Listening {
            listener: fd,
            dir,
            file,
            id,
        }),
        Err(e) => {
            let _ = dir.unlink(&tmp);
            Err(error(
                e.kind(),
                format!("listening on {}: {e}", path.display()),
            ))
        }
    }
}

/// The keeper's state once it holds the store.
struct Held {
    store: OwnedFd,
    store_id: u64,
    name: String,
    dir_path: PathBuf,
    listening: Listening,
    idle_limit: Option<Duration>,
    /// The current server's connection and pid.
    server: Option<(OwnedFd, u32)>,
    /// When the last server went (for the idle limit).
    idle_since: Instant,
}

fn keeper_main(conn: OwnedFd) -> i32 {
    let spawner = match endpoint::peer(&conn) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kvs keeper: reading the spawner's credentials: {e}");
            return 1;
        }
    };
    if spawner.uid != euid() {
        let _ = send_msg(
            conn.as_fd(),
            &Msg::Failed {
                errno: libc::EPERM,
                reason: "the spawner runs as another user".into(),
            },
            None,
        );
        return 1;
    }
    let (store, store_id, idle_limit_ms, name, dir) =
        match recv_until(conn.as_fd(), Instant::now() + HOLD_WAIT, "the spawner") {
            Ok(Received::Msg(
                Msg::Hold {
                    store_id,
                    idle_limit_ms,
                    name,
                    dir,
                },
                Some(store),
            )) => (store, store_id, idle_limit_ms, name, dir),
            Ok(Received::Msg(other, _)) => {
                let _ = send_msg(
                    conn.as_fd(),
                    &Msg::Failed {
                        errno: libc::EPROTO,
                        reason: format!("expected Hold, got message kind {}", other.kind()),
                    },
                    None,
                );
                return 1;
            }
            Ok(Received::Eof) => return 1,
            Err(e) => {
                let _ = send_msg(
                    conn.as_fd(),
                    &Msg::Failed {
                        errno: e.raw_os_error().unwrap_or(libc::EPROTO),
                        reason: e.to_string(),
                    },
                    None,
                );
                return 1;
            }
        };
    let listening = match listen_keeper(&dir, &name) {
        Ok(l) => l,
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(match e.kind() {
                io::ErrorKind::AddrInUse => libc::EADDRINUSE,
                io::ErrorKind::PermissionDenied => libc::EACCES,
                io::ErrorKind::AlreadyExists => libc::EEXIST,
                io::ErrorKind::NotFound => libc::ENOENT,
                io::ErrorKind::InvalidInput => libc::EINVAL,
                _ => libc::EIO,
            });
            let _ = send_msg(
                conn.as_fd(),
                &Msg::Failed {
                    errno,
                    reason: e.to_string(),
                },
                None,
            );
            return 1;
        }
    };
    let pid = std::process::id();
    // A spawner that died just now leaves the store with us all the same.
    let server = match send_msg(conn.as_fd(), &Msg::Holding { pid }, None) {
        Ok(()) => Some((conn, spawner.pid)),
        Err(_) => None,
    };
    let mut held = Held {
        store,
        store_id,
        name,
        dir_path: dir,
        listening,
        idle_limit: (idle_limit_ms > 0).then(|| Duration::from_millis(idle_limit_ms)),
        server,
        idle_since: Instant::now(),
    };
    tracing::debug!(name = %held.name, pid, "keeper holding");
    held.run()
}

impl Held {
    /// The event loop; returns the exit code.
    fn run(&mut self) -> i32 {
        loop {
            let timeout = match (&self.server, self.idle_limit) {
                (None, Some(limit)) => {
                    let left = limit.saturating_sub(self.idle_since.elapsed());
                    if left.is_zero() {
                        tracing::debug!(name = %self.name, "idle limit reached; letting go");
                        self.listening.remove();
                        return 0;
                    }
                    Some(left.min(SOCKET_CHECK))
                }
                (None, None) => Some(SOCKET_CHECK),
                _ => None,
            };
            let (listener_ready, server_ready) = {
                let mut fds = vec![PollFd::new(
                    self.listening.listener.as_fd(),
                    PollFlags::POLLIN,
                )];
                if let Some((s, _)) = &self.server {
                    fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, poll_timeout(timeout)) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(e) => {
                        // Not expected (ENOMEM); never spin on it.
                        tracing::warn!("keeper poll: {e}");
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                }
                let ready = |p: &PollFd<'_>| p.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), fds.get(1).is_some_and(ready))
            };
            // The server's connection first: an ended one frees the store
            // for an adopter waiting on the listener.
            if server_ready {
                if let Some(code) = self.on_server() {
                    return code;
                }
            }
            if listener_ready {
                if let Some(code) = self.on_listener() {
                    return code;
                }
            } else if self.server.is_none() {
                if let Some(code) = self.keep_reachable() {
                    return code;
                }
            }
        }
    }

    /// One event on the current server's connection; `Some(code)` to exit.
    fn on_server(&mut self) -> Option<i32> {
        let (conn, _) = self.server.as_ref()?;
        match recv_msg(conn.as_fd()) {
            Ok(None) => None,
            Ok(Some(Received::Msg(Msg::Discard, _))) => {
                // Let go: nobody can adopt any more, then the store goes.
                self.listening.remove();
                let (conn, _) = self.server.take()?;
                let _ = send_msg(conn.as_fd(), &Msg::Discarded, None);
                tracing::debug!(name = %self.name, "discarded");
                Some(0)
            }
            Ok(Some(Received::Eof)) => {
                tracing::debug!(name = %self.name, "the server went; holding");
                self.server_gone()
            }
            Ok(Some(Received::Msg(other, _))) => {
                tracing::warn!(name = %self.name, kind = other.kind(), "unexpected message; dropping the server's connection");
                self.server_gone()
            }
            Err(e) => {
                tracing::warn!(name = %self.name, "dropping the server's connection: {e}");
                self.server_gone()
            }
        }
    }

    /// The current server's connection ended (or was dropped). If the
    /// socket file is no longer ours (removed by someone), listens anew so
    /// that an adopter can still find the store; if that fails, nobody
    /// ever can, and the keeper exits.
    fn server_gone(&mut self) -> Option<i32> {
        self.server = None;
        self.idle_since = Instant::now();
        self.keep_reachable()
    }

    /// Without a server: if the socket file is no longer ours (a `/tmp`
    /// cleaner, the directory removed), listens anew; if that fails, no
    /// adopter can ever reach the store, and holding it would only leak
    /// its memory: `Some(0)`, the keeper exits. Checked when the server
    /// goes and every [`SOCKET_CHECK`] after.
    fn keep_reachable(&mut self) -> Option<i32> {
        if !self.listening.still_ours() {
            match listen_keeper(&self.dir_path, &self.name) {
                Ok(l) => self.listening = l,
                Err(e) => {
                    tracing::warn!(name = %self.name, "the keeper's socket is gone and cannot be made again ({e}); letting go");
                    return Some(0);
                }
            }
        }
        None
    }

    /// Accepts what is waiting on the listener; `Some(code)` to exit.
    fn on_listener(&mut self) -> Option<i32> {
        for _ in 0..16 {
            match endpoint::accept(&self.listening.listener) {
                Ok(Some(conn)) => {
                    if let Some(code) = self.admit(conn) {
                        return Some(code);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // EMFILE and the like: the listener stays readable, so
                    // pause instead of spinning.
                    tracing::warn!(name = %self.name, "keeper accept: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
            }
        }
        None
    }

    /// A newcomer: hands it the store if it is of our user and no live
    /// server has it; `Some(code)` to exit.
    fn admit(&mut self, conn: OwnedFd) -> Option<i32> {
        let Ok(peer) = endpoint::peer(&conn) else {
            return None;
        };
        if peer.uid != euid() {
            tracing::warn!(name = %self.name, pid = peer.pid, uid = peer.uid, "refused a peer of another user");
            return None;
        }
        if let Some((current, _)) = &self.server {
            if endpoint::peer_gone(current) {
                // Its end came with this wake-up: read what it left (a
                // Discard sent before dying is honoured; the message comes
                // before the end).
                if let Some(code) = self.on_server() {
                    return Some(code);
                }
            }
        }
        if let Some((_, server_pid)) = &self.server {
            let busy = Msg::Busy {
                server_pid: *server_pid,
            };
            let _ = send_msg(conn.as_fd(), &busy, None);
            return None;
        }
        let store = Msg::Store {
            store_id: self.store_id,
            pid: std::process::id(),
        };
        if send_msg(conn.as_fd(), &store, Some(self.store.as_fd())).is_ok() {
            tracing::debug!(name = %self.name, pid = peer.pid, "adopted");
            self.server = Some((conn, peer.pid));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_message() -> Vec<Msg> {
        vec![
            Msg::Hold {
                store_id: 0x0123_4567_89ab_cdef,
                idle_limit_ms: 1500,
                name: "a.b_c-9".into(),
                dir: PathBuf::from("/run/user/1000/kvs"),
            },
            Msg::Hold {
                store_id: 0,
                idle_limit_ms: 0,
                name: "x".repeat(endpoint::MAX_NAME_LEN),
                dir: PathBuf::from("/".to_string() + &"d".repeat(MAX_SOCKET_PATH - 1)),
            },
            Msg::Holding { pid: 42 },
            Msg::Failed {
                errno: libc::EACCES,
                reason: "socket directory /x: not ours".into(),
            },
            Msg::Store {
                store_id: u64::MAX,
                pid: 7,
            },
            Msg::Busy { server_pid: 9 },
            Msg::Discard,
            Msg::Discarded,
        ]
    }

    #[test]
    fn messages_round_trip_within_the_limit() {
        for msg in every_message() {
            let bytes = msg.encode();
            assert!(bytes.len() <= MAX_MESSAGE, "{msg:?}");
            assert_eq!(Msg::decode(&bytes).unwrap(), msg);
        }
    }

    #[test]
    fn every_cut_and_every_extension_is_refused() {
        for msg in every_message() {
            let bytes = msg.encode();
            for len in 0..bytes.len() {
                assert!(Msg::decode(&bytes[..len]).is_err(), "{msg:?} cut to {len}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Msg::decode(&longer).is_err(), "{msg:?} extended");
        }
    }

    #[test]
    fn a_wrong_magic_version_or_kind_is_refused() {
        let good = Msg::Discard.encode();
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert!(Msg::decode(&bad).unwrap_err().contains("not a kvs keeper"));
        let mut bad = good.clone();
        bad[8] = 2;
        assert!(Msg::decode(&bad).unwrap_err().contains("version 2"));
        let mut bad = good;
        bad[12] = 99;
        assert!(Msg::decode(&bad).unwrap_err().contains("unknown"));
    }

    #[test]
    fn a_hold_names_a_plain_region_and_an_absolute_directory() {
        let hold = |name: &str, dir: &[u8]| {
            let mut b = Msg::Discard.encode();
            b[12..16].copy_from_slice(&HOLD.to_le_bytes());
            b.extend_from_slice(&[0u8; 16]);
            b.extend_from_slice(&(name.len() as u16).to_le_bytes());
            b.extend_from_slice(&(dir.len() as u16).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(dir);
            Msg::decode(&b)
        };
        assert!(hold("kvs", b"/run/kvs").is_ok());
        for (name, dir) in [
            ("../x", &b"/run/kvs"[..]),
            ("/kvs", b"/run/kvs"),
            ("", b"/run/kvs"),
            ("kvs", b"relative"),
            ("kvs", b""),
            ("kvs", b"/run/\0kvs"),
        ] {
            assert!(hold(name, dir).is_err(), "{name:?} {dir:?}");
        }
        let long = [b'/'; MAX_SOCKET_PATH + 1];
        assert!(hold("kvs", &long).is_err());
    }

    #[test]
    fn a_reason_is_cut_to_its_limit_and_cleaned_of_control_characters() {
        let long = Msg::Failed {
            errno: 1,
            reason: "é".repeat(MAX_REASON),
        };
        let Msg::Failed { reason, .. } = Msg::decode(&long.encode()).unwrap() else {
            panic!("not a Failed");
        };
        assert!(reason.len() <= MAX_REASON && reason.chars().all(|c| c == 'é'));
        let forged = Msg::Failed {
            errno: 1,
            reason: "line\nforged\u{1b}[31m".into(),
        };
        let Msg::Failed { reason, .. } = Msg::decode(&forged.encode()).unwrap() else {
            panic!("not a Failed");
        };
        assert_eq!(reason, "line?forged?[31m");
    }
}
