//! Where a server is found, and how each side knows who the other is.
//!
//! A server of region `NAME` listens on the unix socket `DIR/NAME.sock`
//! (`SOCK_SEQPACKET`) and holds an exclusive `flock` on `DIR/NAME.lock` for
//! as long as it serves. `DIR` is a directory that only the server's user
//! can create files in:
//!
//! | who runs the server | default `DIR`                                         |
//! |---------------------|-------------------------------------------------------|
//! | root                | `/run/kvs` (`/tmp/kvs-0` where there is no `/run`)    |
//! | any other user      | `$XDG_RUNTIME_DIR/kvs` if that directory is theirs, else `/tmp/kvs-UID` |
//! | anyone, explicitly  | `--socket-dir DIR` or `$KVS_SOCKET_DIR`               |
//!
//! The server creates `DIR` (mode 0755) if it is missing and refuses to use
//! one that is not its own or that others may write into, so nobody else
//! can plant a socket, a lock file or a symlink in it. The lock file is
//! created exclusively (`O_EXCL | O_NOFOLLOW`, mode 0600), or reopened only
//! if `fstat` says it is a private regular file of ours: nobody else can
//! hold (squat) it. The socket's mode is the region's `--mode`, so the
//! kernel refuses `connect` to users the server does not admit; the server
//! checks each peer's credentials again (`SO_PEERCRED`, `SO_PEERGROUPS`).
//!
//! A client looks for `NAME.sock` in its own default directory and then in
//! `/run/kvs`, or only in the directory it is given. It trusts a directory
//! only if no one but its owner may write into it, and a server only if the
//! socket's peer (`SO_PEERCRED`) runs as the directory's owner (its own uid,
//! root for `/run/kvs`, the owner of an explicit directory) or as root: a
//! process of another user that squats a name cannot impersonate the
//! server.
//!
//! The connection stays open for the client's whole life; each side learns
//! that the other died from the end of the connection, however it died.

use crate::secure_fs::{self, Dir};
use nix::sys::socket::{
    self, getsockopt, sockopt, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Environment variable naming the socket directory (as `--socket-dir`).
pub const SOCKET_DIR_ENV: &str = "KVS_SOCKET_DIR";

/// Root's default socket directory.
pub const ROOT_DIR: &str = "/run/kvs";

/// Longest path a unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Longest region name: short enough that `DIR/NAME.sock` fits a socket
/// address for every default directory.
pub const MAX_NAME_LEN: usize = 64;

/// Checks a region name and returns it bare (without a leading `/`).
///
/// A name is 1 to 64 characters out of letters, digits, `.`, `_` and `-`,
/// and does not start with `.`: it becomes part of file names, so no `/`,
/// no control characters (a newline in a name would forge log lines), no
/// hidden files.
///
/// # Errors
///
/// A message saying what is wrong with the name.
pub fn normalize_name(name: &str) -> Result<String, String> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    if bare.is_empty() {
        return Err("a region name must not be empty".into());
    }
    if bare.len() > MAX_NAME_LEN {
        return Err(format!(
            "region name is {} bytes, the limit is {MAX_NAME_LEN}",
            bare.len()
        ));
    }
    if bare.starts_with('.')
        || !bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "region name {name:?} may hold only letters, digits, '.', '_' and '-', and not start with '.'"
        ));
    }
    Ok(bare.to_string())
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// This user's default socket directory (see the module docs).
pub fn default_dir() -> PathBuf {
    let uid = euid();
    if uid == 0 {
        return if Path::new("/run").is_dir() {
            PathBuf::from(ROOT_DIR)
        } else {
            PathBuf::from("/tmp/kvs-0")
        };
    }
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        let ours = std::fs::symlink_metadata(&runtime).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.is_dir() && m.uid() == uid && m.mode() & 0o022 == 0
        });
        if runtime.is_absolute() && ours {
            return runtime.join("kvs");
        }
    }
    PathBuf::from(format!("/tmp/kvs-{uid}"))
}

/// The explicit directory: `explicit`, else `$KVS_SOCKET_DIR` if set.
pub fn explicit_dir(explicit: Option<&Path>) -> Option<PathBuf> {
    explicit.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(SOCKET_DIR_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// The directory a server listens in.
pub fn server_dir(explicit: Option<&Path>) -> PathBuf {
    explicit_dir(explicit).unwrap_or_else(default_dir)
}

/// Where a client looks, in order, with the uid that must own each
/// directory (`None`: whoever owns an explicitly given one).
pub fn client_dirs(explicit: Option<&Path>) -> Vec<(PathBuf, Option<u32>)> {
    if let Some(dir) = explicit_dir(explicit) {
        return vec![(dir, None)];
    }
    let own = default_dir();
    let mut dirs = vec![(own.clone(), Some(euid()))];
    if own != Path::new(ROOT_DIR) {
        dirs.push((PathBuf::from(ROOT_DIR), Some(0)));
    }
    dirs
}

/// `NAME.sock`.
pub fn socket_file(name: &str) -> String {
    format!("{name}.sock")
}

/// `NAME.lock`.
pub fn lock_file(name: &str) -> String {
    format!("{name}.lock")
}

/// Opens (creating with mode 0755 if missing) a server's socket directory
/// and checks that it is ours and that no one else may write into it.
///
/// # Errors
///
/// A message naming the directory and what is wrong with it.
pub fn prepare_server_dir(path: &Path) -> Result<Dir, String> {
    match std::fs::create_dir(path) {
        Ok(()) => {
            // The umask may have narrowed it; others need to traverse it to
            // reach a socket whose own mode admits them.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755));
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(format!(
                "creating the socket directory {}: {e} (choose another with --socket-dir)",
                path.display()
            ))
        }
    }
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("socket directory {}: {e}", path.display()))?;
    if meta.file_type().is_symlink() {
        return Err(format!(
            "socket directory {} is a symlink; refusing it (choose another with --socket-dir)",
            path.display()
        ));
    }
    let dir = Dir::open(path).map_err(|e| format!("socket directory {}: {e}", path.display()))?;
    let st = dir
        .stat()
        .map_err(|e| format!("socket directory {}: {e}", path.display()))?;
    if st.st_uid != euid() {
        return Err(format!(
            "socket directory {} belongs to uid {}, not to this user (uid {}); remove it or choose another with --socket-dir",
            path.display(),
            st.st_uid,
            euid()
        ));
    }
    dir.check_private("socket directory")?;
    Ok(dir)
}

/// The exclusive claim on a region name: an `flock` on `DIR/NAME.lock`,
/// held while the server lives, released by the kernel when it dies.
#[derive(Debug)]
pub struct NameLock {
    file: File,
    name: String,
}

/// Why a name could not be claimed.
#[derive(Debug)]
pub enum LockError {
    /// A live server holds it; its pid as it wrote it (0 if unreadable).
    Held {
        /// The owner's pid.
        pid: u32,
    },
    /// The lock file is not a private file of ours, or an OS error.
    Io(io::Error),
}

/// What a claimed name had before: nothing, or a dead server's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Previous {
    /// No lock file was there.
    Fresh,
    /// A lock file of a server that died; its pid (0 if unreadable).
    Dead {
        /// The dead server's pid.
        pid: u32,
    },
}

fn read_pid(file: &mut File) -> u32 {
    let mut s = String::new();
    let _ = file.rewind();
    let _ = (&mut *file).take(32).read_to_string(&mut s);
    s.trim().parse().unwrap_or(0)
}

impl NameLock {
    /// Claims `name` in `dir` for this process.
    ///
    /// # Errors
    ///
    /// [`LockError::Held`] when a live server holds it; [`LockError::Io`]
    /// when the lock file is not a private regular file of ours.
    pub fn acquire(dir: &Dir, name: &str) -> Result<(Self, Previous), LockError> {
        let file_name = lock_file(name);
        loop {
            let (mut file, existed) = match dir.open_own(&file_name, 0o600) {
                Ok(f) => (f, true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match dir.create_exclusive(&file_name, 0o600) {
                        Ok(f) => (f, false),
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(LockError::Io(e)),
                    }
                }
                Err(e) => return Err(LockError::Io(e)),
            };
            if let Err(e) = try_flock(&file) {
                return Err(match e.raw_os_error() {
                    Some(libc::EWOULDBLOCK) => LockError::Held {
                        pid: read_pid(&mut file),
                    },
                    _ => LockError::Io(e),
                });
            }
            // Removed (and perhaps recreated) under us by a server that was
            // shutting down: our lock is on a dead inode, go again.
            if !still_linked(dir, &file_name, &file) {
                continue;
            }
            let previous = if existed {
                Previous::Dead {
                    pid: read_pid(&mut file),
                }
            } else {
                Previous::Fresh
            };
            let pid = std::process::id();
            file.set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| writeln!(file, "{pid}"))
                .map_err(LockError::Io)?;
            return Ok((
                Self {
                    file,
                    name: name.to_string(),
                },
                previous,
            ));
        }
    }

    /// Removes the lock file (still holding the lock until dropped).
    pub fn remove(&self, dir: &Dir) {
        if still_linked(dir, &lock_file(&self.name), &self.file) {
            let _ = dir.unlink(&lock_file(&self.name));
        }
    }
}

fn try_flock(file: &File) -> io::Result<()> {
    // SAFETY: `flock` on a descriptor we own for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn still_linked(dir: &Dir, name: &str, file: &File) -> bool {
    let Ok(ours) = secure_fs::stat_of(file) else {
        return false;
    };
    match nix::sys::stat::fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st.st_ino == ours.st_ino && st.st_dev == ours.st_dev,
        Err(_) => false,
    }
}

/// Whether a live server holds the lock of `name` in `dir` (without
/// claiming it); `None` if there is no lock file or it cannot be opened.
pub fn lock_is_held(dir: &Dir, name: &str) -> Option<bool> {
    let file = dir.open_own(&lock_file(name), 0o600).ok()?;
    match try_flock(&file) {
        Ok(()) => Some(false), // released when `file` closes
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Some(true),
        Err(_) => None,
    }
}

fn socket_addr(dir: &Path, name: &str) -> io::Result<(PathBuf, UnixAddr)> {
    let path = dir.join(socket_file(name));
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the socket path {} is longer than {MAX_SOCKET_PATH} bytes; choose a shorter --socket-dir",
                path.display()
            ),
        ));
    }
    let addr = UnixAddr::new(&path).map_err(io::Error::from)?;
    Ok((path, addr))
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

/// Binds and listens on `DIR/NAME.sock` (removing a stale socket first;
/// call only while holding the name's [`NameLock`]), with permission bits
/// `mode`. The listener is non-blocking.
///
/// # Errors
///
/// The OS error, or a path too long for a socket address.
pub fn listen(dir: &Dir, name: &str, mode: u32) -> io::Result<OwnedFd> {
    let (path, addr) = socket_addr(dir.path(), name)?;
    match dir.unlink(&socket_file(name)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let fd = seqpacket()?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(io::Error::from)?;
    // The directory is ours and nobody else can write into it, so the path
    // still names the socket we just bound.
    std::fs::set_permissions(
        &path,
        std::os::unix::fs::PermissionsExt::from_mode(mode & 0o666),
    )?;
    socket::listen(&fd, Backlog::new(128).unwrap_or(Backlog::MAXCONN)).map_err(io::Error::from)?;
    set_nonblocking(fd.as_raw_fd(), true)?;
    Ok(fd)
}

/// Removes `DIR/NAME.sock`.
pub fn remove_socket(dir: &Dir, name: &str) {
    let _ = dir.unlink(&socket_file(name));
}

/// Sets or clears `O_NONBLOCK`.
pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns for the call.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Accepts one connection (non-blocking, close-on-exec); `Ok(None)` when
/// none is waiting.
///
/// # Errors
///
/// The OS error (`EMFILE`, say).
pub fn accept(listener: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    match socket::accept4(
        listener.as_raw_fd(),
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    ) {
        // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
        Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) })),
        Err(nix::errno::Errno::EAGAIN) => Ok(None),
        Err(nix::errno::Errno::ECONNABORTED | nix::errno::Errno::EINTR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A peer's identity as the kernel recorded it at `connect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its pid.
    pub pid: u32,
    /// Its effective uid.
    pub uid: u32,
    /// Its effective gid.
    pub gid: u32,
}

/// The credentials of the process at the other end (`SO_PEERCRED`).
///
/// # Errors
///
/// The OS error.
pub fn peer(fd: &impl AsFd) -> io::Result<Peer> {
    let c = getsockopt(fd, sockopt::PeerCredentials).map_err(io::Error::from)?;
    Ok(Peer {
        pid: c.pid().max(0) as u32,
        uid: c.uid(),
        gid: c.gid(),
    })
}

/// The supplementary groups of the process at the other end
/// (`SO_PEERGROUPS`); empty if the kernel cannot say.
pub fn peer_groups(fd: &impl AsFd) -> Vec<u32> {
    let mut groups = vec![0 as libc::gid_t; 64];
    for _ in 0..2 {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` is valid for `len` bytes of writes; the kernel
        // writes at most `len` bytes and updates `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return groups;
        }
        if io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE) && n > groups.len() {
            groups.resize(n, 0);
            continue;
        }
        break;
    }
    Vec::new()
}

/// Whether a peer may use a region of `mode` served by `owner_uid` /
/// `owner_gid`: the server's own user and root always; the group when the
/// mode gives it read and write; everyone when it gives others both.
pub fn admits(mode: u32, owner_uid: u32, owner_gid: u32, peer: &Peer, groups: &[u32]) -> bool {
    peer.uid == owner_uid
        || peer.uid == 0
        || (mode & 0o060 == 0o060 && (peer.gid == owner_gid || groups.contains(&owner_gid)))
        || mode & 0o006 == 0o006
}

/// Why a client could not reach a server.
#[derive(Debug)]
pub enum ConnectError {
    /// No socket of that name in any directory searched.
    NotFound {
        /// The directories searched.
        searched: Vec<PathBuf>,
    },
    /// A socket file, but no server behind it (it died).
    Refused {
        /// The socket.
        path: PathBuf,
    },
    /// The kernel refused `connect`: the socket's mode does not admit us.
    Permission {
        /// The socket.
        path: PathBuf,
        /// The socket's owner.
        owner_uid: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// The directory or the peer is not who it must be.
    Untrusted {
        /// The socket.
        path: PathBuf,
        /// What did not hold.
        reason: String,
    },
    /// Any other OS error.
    Io {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Inspects a directory a client may look in: `Ok(None)` if it does not
/// exist; its owner if nobody else may write into it.
fn inspect_dir(dir: &Path, expected_owner: Option<u32>) -> Result<Option<u32>, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("socket directory {}: {e}", dir.display())),
    };
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "socket directory {} is writable by other users (mode {:o}): a socket in it could be anyone's",
            dir.display(),
            meta.mode() & 0o777
        ));
    }
    if let Some(want) = expected_owner {
        if meta.uid() != want {
            return Err(format!(
                "socket directory {} belongs to uid {}, expected uid {want}",
                dir.display(),
                meta.uid()
            ));
        }
    }
    Ok(Some(meta.uid()))
}

/// Connects to the server of `name` (see the module docs for where it is
/// looked for and who is trusted), returning the connected socket (blocking)
/// and the server's credentials.
///
/// # Errors
///
/// [`ConnectError`].
pub fn connect(name: &str, explicit: Option<&Path>) -> Result<(OwnedFd, Peer), ConnectError> {
    let mut searched = Vec::new();
    for (dir, expected) in client_dirs(explicit) {
        let path = dir.join(socket_file(name));
        let owner = match inspect_dir(&dir, expected) {
            Ok(Some(owner)) => owner,
            Ok(None) => {
                searched.push(dir);
                continue;
            }
            // A directory we may not trust: only an error if the socket is
            // there (a stale /tmp/kvs-UID of someone else must not hide
            // /run/kvs).
            Err(reason) => {
                if std::fs::symlink_metadata(&path).is_ok() {
                    return Err(ConnectError::Untrusted { path, reason });
                }
                searched.push(dir);
                continue;
            }
        };
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                searched.push(dir);
                continue;
            }
            Err(source) => return Err(ConnectError::Io { path, source }),
        };
        {
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            if !meta.file_type().is_socket() {
                return Err(ConnectError::Untrusted {
                    path,
                    reason: "it is not a socket".into(),
                });
            }
            if meta.uid() != owner && meta.uid() != 0 {
                return Err(ConnectError::Untrusted {
                    reason: format!(
                        "the socket belongs to uid {}, its directory to uid {owner}",
                        meta.uid()
                    ),
                    path,
                });
            }
        }
        let (_, addr) = socket_addr(&dir, name).map_err(|source| ConnectError::Io {
            path: path.clone(),
            source,
        })?;
        let fd = seqpacket().map_err(|source| ConnectError::Io {
            path: path.clone(),
            source,
        })?;
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {}
            Err(nix::errno::Errno::ECONNREFUSED | nix::errno::Errno::ENOENT) => {
                return Err(ConnectError::Refused { path })
            }
            Err(nix::errno::Errno::EACCES | nix::errno::Errno::EPERM) => {
                use std::os::unix::fs::MetadataExt;
                return Err(ConnectError::Permission {
                    owner_uid: meta.uid(),
                    mode: meta.mode() & 0o777,
                    path,
                });
            }
            Err(e) => {
                return Err(ConnectError::Io {
                    path,
                    source: e.into(),
                })
            }
        }
        let server = peer(&fd).map_err(|source| ConnectError::Io {
            path: path.clone(),
            source,
        })?;
        if server.uid != owner && server.uid != 0 {
            return Err(ConnectError::Untrusted {
                reason: format!(
                    "the process behind it (pid {}) runs as uid {}, not as the directory's owner (uid {owner}): refusing to trust it",
                    server.pid, server.uid
                ),
                path,
            });
        }
        return Ok((fd, server));
    }
    Err(ConnectError::NotFound { searched })
}

/// Whether the other end of a connection has gone (closed, or its process
/// died): one `poll` with no wait.
pub fn peer_gone(fd: &impl AsFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let rc = unsafe { libc::poll(&mut p, 1, 0) };
    rc > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain() {
        assert_eq!(normalize_name("kvs").unwrap(), "kvs");
        assert_eq!(normalize_name("/kvs").unwrap(), "kvs");
        assert_eq!(normalize_name("a.b_c-9").unwrap(), "a.b_c-9");
        for bad in ["", "/", "a/b", "..", ".x", "a\nb", "a b", "x;rm", "é"] {
            assert!(normalize_name(bad).is_err(), "{bad:?}");
        }
        assert!(normalize_name(&"x".repeat(65)).is_err());
        assert!(normalize_name(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn the_mode_decides_who_is_admitted() {
        let me = Peer {
            pid: 1,
            uid: 1000,
            gid: 1000,
        };
        let other = Peer {
            pid: 2,
            uid: 2000,
            gid: 2000,
        };
        let root = Peer {
            pid: 3,
            uid: 0,
            gid: 0,
        };
        assert!(admits(0o600, 1000, 1000, &me, &[]));
        assert!(admits(0o600, 1000, 1000, &root, &[]));
        assert!(!admits(0o600, 1000, 1000, &other, &[]));
        assert!(!admits(0o660, 1000, 1000, &other, &[]));
        assert!(admits(0o660, 1000, 1000, &other, &[1000]));
        assert!(admits(0o666, 1000, 1000, &other, &[]));
        assert!(!admits(0o644, 1000, 1000, &other, &[]));
    }

    #[test]
    fn a_name_is_claimed_once_and_reported_held() {
        let path = std::env::temp_dir().join(format!(
            "kvs-endpoint-test-{}-{}",
            std::process::id(),
            secure_fs::random_u64()
        ));
        let dir = prepare_server_dir(&path).unwrap();
        let (lock, prev) = NameLock::acquire(&dir, "n").unwrap();
        assert_eq!(prev, Previous::Fresh);
        assert!(matches!(
            NameLock::acquire(&dir, "n"),
            Err(LockError::Held { pid }) if pid == std::process::id()
        ));
        assert_eq!(lock_is_held(&dir, "n"), Some(true));
        drop(lock);
        assert_eq!(lock_is_held(&dir, "n"), Some(false));
        let (lock, prev) = NameLock::acquire(&dir, "n").unwrap();
        assert!(matches!(prev, Previous::Dead { .. }));
        lock.remove(&dir);
        drop(lock);
        assert_eq!(lock_is_held(&dir, "n"), None);
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn a_planted_lock_file_is_refused() {
        let path = std::env::temp_dir().join(format!(
            "kvs-endpoint-plant-{}-{}",
            std::process::id(),
            secure_fs::random_u64()
        ));
        let dir = prepare_server_dir(&path).unwrap();
        let victim = path.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, path.join("n.lock")).unwrap();
        assert!(matches!(
            NameLock::acquire(&dir, "n"),
            Err(LockError::Io(_))
        ));
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        std::fs::remove_dir_all(&path).unwrap();
    }
}
