//! The operating-system side of a region: the POSIX shared-memory object, the
//! lock file beside it, and the process identity checks.
//!
//! Liveness is a lock the kernel drops when a process dies, never a bare pid
//! (pids are reused). The lock file `/dev/shm/NAME.lock` carries
//! open-file-description (OFD) byte-range locks, as LMDB's reader table does
//! with `fcntl` locks:
//!
//! * byte 0: held for writing by the server for as long as it serves;
//! * byte `1 + i`: held by the client registered at index `i`.
//!
//! Anyone can test a byte with `F_OFD_GETLK` without taking it, so checking
//! whether the server or a client is alive is one syscall and never disturbs
//! the owner. OFD locks belong to the open file description, so two clients
//! in one process do not share (or release) each other's locks, and a
//! process's locks vanish with it, however it dies.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::Mode;

/// Where Linux keeps POSIX shared-memory objects.
pub const SHM_DIR: &str = "/dev/shm";

/// Longest region name accepted (without the leading `/`).
pub const MAX_NAME_LEN: usize = 200;

/// Checks a region name and returns it in `shm_open` form (leading `/`).
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
    if bare == "." || bare == ".." || bare.contains('/') || bare.contains('\0') {
        return Err(format!(
            "region name {name:?} may not contain '/' or NUL, nor be '.' or '..'"
        ));
    }
    if bare.ends_with(".lock") {
        return Err(format!(
            "region name {name:?} may not end in '.lock' (reserved for lock files)"
        ));
    }
    Ok(format!("/{bare}"))
}

/// `/dev/shm/NAME` for a normalised name.
pub fn object_path(name: &str) -> PathBuf {
    PathBuf::from(SHM_DIR).join(name.trim_start_matches('/'))
}

/// `/dev/shm/NAME.lock` for a normalised name.
pub fn lock_path(name: &str) -> PathBuf {
    PathBuf::from(SHM_DIR).join(format!("{}.lock", name.trim_start_matches('/')))
}

/// Creates the object exclusively with mode 0600 (the final mode is set once
/// the region is ready).
pub fn create_object(name: &str) -> nix::Result<File> {
    let fd: OwnedFd = shm_open(
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    Ok(File::from(fd))
}

/// Opens an existing object for reading and writing.
pub fn open_object(name: &str) -> nix::Result<File> {
    let fd: OwnedFd = shm_open(name, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())?;
    Ok(File::from(fd))
}

/// Removes the object's name (mappings stay valid until unmapped).
pub fn unlink_object(name: &str) -> nix::Result<()> {
    shm_unlink(name)
}

/// Sizes a new object and reserves its pages, so a full `/dev/shm` is an
/// error now instead of a SIGBUS at first touch.
pub fn size_object(file: &File, size: usize) -> io::Result<()> {
    file.set_len(size as u64)?;
    nix::fcntl::posix_fallocate(file, 0, size as libc::off_t).map_err(io::Error::from)?;
    Ok(())
}

/// Sets the permission bits of an open file.
pub fn set_mode(file: &File, mode: u32) -> nix::Result<()> {
    nix::sys::stat::fchmod(file, Mode::from_bits_truncate(mode as libc::mode_t))
}

/// The start time of `pid` in clock ticks since boot (field 22 of
/// `/proc/PID/stat`): with the pid, an identity that survives pid reuse.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and ')': skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3; field 22 is the 20th from here.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a process with this pid and start time still exists.
pub fn process_alive(pid: u32, start_ticks: u64) -> bool {
    process_start_ticks(pid) == Some(start_ticks)
}

/// The lock file beside a region; see the module docs.
#[derive(Debug)]
pub struct LockFile {
    file: File,
    path: PathBuf,
}

/// Byte of the lock file held by the server.
pub const SERVER_LOCK_BYTE: u64 = 0;

/// Byte of the lock file held by the client registered at `index`.
pub fn client_lock_byte(index: u32) -> u64 {
    1 + u64::from(index)
}

impl LockFile {
    /// Opens the lock file, creating it with `mode` if it does not exist.
    pub fn open_or_create(path: PathBuf, mode: u32) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)?;
        Ok(Self { file, path })
    }

    /// Opens an existing lock file.
    pub fn open(path: PathBuf) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)?;
        Ok(Self { file, path })
    }

    /// The file's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Whether the path still names the file we hold open (it may have been
    /// removed and recreated by someone else).
    pub fn still_linked(&self) -> bool {
        match (self.file.metadata(), std::fs::metadata(&self.path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        }
    }

    /// Sets the permission bits.
    pub fn set_mode(&self, mode: u32) -> nix::Result<()> {
        set_mode(&self.file, mode)
    }

    fn flock(kind: libc::c_short, byte: u64) -> libc::flock {
        // SAFETY: `flock` is a plain C struct for which all-zero is valid.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = kind;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = byte as libc::off_t;
        fl.l_len = 1;
        fl.l_pid = 0; // required for OFD locks
        fl
    }

    fn fcntl(&self, cmd: libc::c_int, fl: &mut libc::flock) -> io::Result<()> {
        // SAFETY: the fd is open for the lifetime of `self`; `fl` is a valid,
        // exclusively borrowed `flock` that the kernel may read and write.
        let rc = unsafe { libc::fcntl(self.file.as_raw_fd(), cmd, fl as *mut libc::flock) };
        if rc == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Takes a write lock on `byte` without blocking; `Ok(false)` if another
    /// open file description holds it.
    pub fn try_lock(&self, byte: u64) -> io::Result<bool> {
        let mut fl = Self::flock(libc::F_WRLCK as libc::c_short, byte);
        match self.fcntl(libc::F_OFD_SETLK, &mut fl) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Releases our lock on `byte`.
    pub fn unlock(&self, byte: u64) -> io::Result<()> {
        let mut fl = Self::flock(libc::F_UNLCK as libc::c_short, byte);
        self.fcntl(libc::F_OFD_SETLK, &mut fl)
    }

    /// Whether some other open file description holds a lock on `byte`.
    pub fn is_locked_by_other(&self, byte: u64) -> io::Result<bool> {
        let mut fl = Self::flock(libc::F_WRLCK as libc::c_short, byte);
        self.fcntl(libc::F_OFD_GETLK, &mut fl)?;
        Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
    }

    /// Removes the file's name.
    pub fn remove(&self) -> io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_checked() {
        assert_eq!(normalize_name("kvs").unwrap(), "/kvs");
        assert_eq!(normalize_name("/kvs").unwrap(), "/kvs");
        assert!(normalize_name("").is_err());
        assert!(normalize_name("/").is_err());
        assert!(normalize_name("a/b").is_err());
        assert!(normalize_name("..").is_err());
        assert!(normalize_name("x.lock").is_err());
        assert!(normalize_name(&"x".repeat(201)).is_err());
    }

    #[test]
    fn start_ticks_of_self_are_stable() {
        let me = std::process::id();
        let a = process_start_ticks(me).unwrap();
        assert_eq!(process_start_ticks(me), Some(a));
        assert!(process_alive(me, a));
        assert!(!process_alive(me, a + 1));
    }

    #[test]
    fn ofd_locks_are_per_open_file() {
        let path = std::env::temp_dir().join(format!("kvs-lock-test-{}", std::process::id()));
        let a = LockFile::open_or_create(path.clone(), 0o600).unwrap();
        let b = LockFile::open(path.clone()).unwrap();
        assert!(a.try_lock(3).unwrap());
        assert!(!b.try_lock(3).unwrap());
        assert!(b.is_locked_by_other(3).unwrap());
        assert!(!a.is_locked_by_other(3).unwrap());
        a.unlock(3).unwrap();
        assert!(!b.is_locked_by_other(3).unwrap());
        assert!(b.try_lock(3).unwrap());
        drop(b); // closing releases
        assert!(!a.is_locked_by_other(3).unwrap());
        assert!(a.still_linked());
        a.remove().unwrap();
        assert!(!a.still_linked());
    }
}
