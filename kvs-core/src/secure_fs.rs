//! Files the server creates or reads on someone's behalf, opened so that a
//! name planted by another user can never redirect them.
//!
//! The rules, each enforced here rather than left to callers:
//!
//! * a directory the server works in is opened once ([`Dir::open`]) and
//!   every later operation is relative to that descriptor (`openat`,
//!   `renameat`, `unlinkat`), so replacing the directory's path later
//!   changes nothing;
//! * a file is created with `O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC`
//!   ([`Dir::create_exclusive`]): a symlink or any existing file at the
//!   name makes creation fail instead of being followed or reused; its mode
//!   is then set with `fchmod` (the umask does not widen or narrow it) and
//!   checked with `fstat` (a regular file, owned by us, the mode asked for);
//! * a file is replaced only by renaming a fresh file over it
//!   ([`Dir::rename`]), which replaces a planted symlink instead of writing
//!   through it;
//! * a file read on an operator's behalf ([`open_regular`]) is opened with
//!   `O_NONBLOCK` (a FIFO cannot block the open) and refused unless `fstat`
//!   says it is a regular file (`/dev/zero`, a FIFO, a directory are not);
//! * names a client sends are plain file names ([`check_file_name`]): no
//!   `/`, no `..`, no leading dot (which also keeps them apart from our
//!   temporary files), no control characters.
//!
//! ```
//! use kvs_core::secure_fs::{check_file_name, Dir};
//!
//! let dir = Dir::open(&std::env::temp_dir()).unwrap();
//! let name = format!("kvs-secure-fs-doc-{}", std::process::id());
//! check_file_name(&name).unwrap();
//! let file = dir.create_exclusive(&name, 0o600).unwrap();
//! assert!(dir.create_exclusive(&name, 0o600).is_err()); // never reused
//! drop(file);
//! dir.unlink(&name).unwrap();
//! assert!(check_file_name("../etc/passwd").is_err());
//! ```

use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fchmod, fstat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Longest file name a client may send (the usual `NAME_MAX`).
pub const MAX_FILE_NAME: usize = 255;

/// Checks a file name sent by a client: 1 to 255 bytes, no `/`, no NUL, not
/// starting with `.` (so neither `.` nor `..`, nor one of our temporary
/// names), and no control characters.
///
/// # Errors
///
/// A message saying what is wrong with the name.
pub fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a file name must not be empty".into());
    }
    if name.len() > MAX_FILE_NAME {
        return Err(format!(
            "a file name is at most {MAX_FILE_NAME} bytes, this one has {}",
            name.len()
        ));
    }
    if name.contains('/') {
        return Err(format!(
            "{:?} is a path: send a plain file name (no '/'); the server writes into its --backup-dir",
            name
        ));
    }
    if name.starts_with('.') {
        return Err(format!("file name {:?} must not start with '.'", name));
    }
    if name.chars().any(char::is_control) {
        return Err("a file name must not contain control characters".into());
    }
    Ok(())
}

fn errno_io(e: nix::errno::Errno) -> io::Error {
    io::Error::from(e)
}

/// `fstat` of an open file, as nix's `FileStat`.
pub fn stat_of(fd: impl AsFd) -> io::Result<FileStat> {
    fstat(fd).map_err(errno_io)
}

/// Whether `st` describes a regular file.
pub fn is_regular(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

/// Whether `st` describes a directory.
pub fn is_directory(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// Permission bits of `st`.
pub fn mode_of(st: &FileStat) -> u32 {
    st.st_mode & 0o7777
}

/// An open directory; every operation is relative to it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Opens the directory at `path` (following symlinks in it: the path
    /// is the operator's).
    ///
    /// # Errors
    ///
    /// The OS error, or `NotADirectory`-like `InvalidInput`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno_io)?;
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The path it was opened by (for messages only).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `fstat` of the directory.
    pub fn stat(&self) -> io::Result<FileStat> {
        stat_of(&self.fd)
    }

    /// The descriptor.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Refuses a directory that users other than its owner may write into
    /// (group or other write permission): they could plant names in it.
    ///
    /// # Errors
    ///
    /// A message naming the directory and its mode.
    pub fn check_private(&self, what: &str) -> Result<(), String> {
        let st = self
            .stat()
            .map_err(|e| format!("{what} {}: {e}", self.path.display()))?;
        let mode = mode_of(&st);
        if mode & 0o022 != 0 {
            return Err(format!(
                "{what} {} is writable by other users (mode {:o}); use a directory only its owner can write to",
                self.path.display(),
                mode & 0o777
            ));
        }
        let euid = nix::unistd::geteuid().as_raw();
        if st.st_uid != euid && st.st_uid != 0 {
            return Err(format!(
                "{what} {} belongs to uid {}, not to this user (uid {euid}) or root",
                self.path.display(),
                st.st_uid
            ));
        }
        Ok(())
    }

    /// Creates `name` exclusively for reading and writing, with exactly `mode`, and
    /// checks what was created (a regular file, ours, that mode).
    ///
    /// # Errors
    ///
    /// `AlreadyExists` if anything (a symlink included) is at `name`; other
    /// OS errors; `PermissionDenied` if the created file is not what we
    /// asked for.
    pub fn create_exclusive(&self, name: &str, mode: u32) -> io::Result<File> {
        let fd = openat(
            &self.fd,
            name,
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode & 0o777),
        )
        .map_err(errno_io)?;
        // The umask may have narrowed the mode: set it exactly.
        fchmod(&fd, Mode::from_bits_truncate(mode & 0o777)).map_err(errno_io)?;
        let st = stat_of(&fd)?;
        let euid = nix::unistd::geteuid().as_raw();
        if !is_regular(&st) || st.st_uid != euid || mode_of(&st) != mode & 0o777 {
            let _ = unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir);
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is not the private file just created",
                    self.path.join(name).display()
                ),
            ));
        }
        Ok(File::from(fd))
    }

    /// Opens an existing regular file `name` for reading and writing,
    /// refusing symlinks and anything that is not a regular file owned by
    /// us with exactly `mode`.
    ///
    /// # Errors
    ///
    /// `NotFound` if absent; `PermissionDenied` if it is not what we expect.
    pub fn open_own(&self, name: &str, mode: u32) -> io::Result<File> {
        let fd = openat(
            &self.fd,
            name,
            OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .map_err(errno_io)?;
        let st = stat_of(&fd)?;
        let euid = nix::unistd::geteuid().as_raw();
        if !is_regular(&st) || st.st_uid != euid || mode_of(&st) != mode & 0o777 || st.st_nlink != 1
        {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is not a private file of this user (uid {}, mode {:o}, {} links); remove it",
                    self.path.join(name).display(),
                    st.st_uid,
                    mode_of(&st),
                    st.st_nlink
                ),
            ));
        }
        Ok(File::from(fd))
    }

    /// Renames `from` to `to` inside this directory (replacing whatever
    /// `to` names, a symlink included, without following it).
    ///
    /// # Errors
    ///
    /// The OS error.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        renameat(&self.fd, from, &self.fd, to).map_err(errno_io)
    }

    /// Removes the file `name`.
    ///
    /// # Errors
    ///
    /// The OS error.
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir).map_err(errno_io)
    }

    /// `fsync`s the directory, making renames in it durable.
    ///
    /// # Errors
    ///
    /// The OS error.
    pub fn sync(&self) -> io::Result<()> {
        nix::unistd::fsync(&self.fd).map_err(errno_io)
    }

    /// Writes a file `name` atomically: `write` fills a fresh temporary file
    /// beside it (created exclusively with `mode`, under a name no one can
    /// predict), which is `fsync`ed and renamed over `name`, and then the
    /// directory is `fsync`ed. Concurrent writers of one name each rename
    /// their own complete file; a crash leaves the previous file.
    ///
    /// # Errors
    ///
    /// Whatever `write` or the OS returns; the temporary file is removed.
    pub fn write_atomically<R>(
        &self,
        name: &str,
        mode: u32,
        write: impl FnOnce(&mut File) -> io::Result<R>,
    ) -> io::Result<R> {
        let (tmp, mut file) = self.create_temporary(name, mode)?;
        let result = write(&mut file)
            .and_then(|r| file.sync_all().map(|()| r))
            .and_then(|r| self.rename(&tmp, name).map(|()| r));
        match result {
            Ok(r) => {
                // Make the rename itself durable; its failure loses nothing.
                let _ = self.sync();
                Ok(r)
            }
            Err(e) => {
                let _ = self.unlink(&tmp);
                Err(e)
            }
        }
    }

    /// A fresh `.NAME.tmp-RANDOM` file, created exclusively.
    fn create_temporary(&self, name: &str, mode: u32) -> io::Result<(String, File)> {
        for _ in 0..16 {
            let tmp = format!(".{name}.tmp-{:016x}", random_u64());
            match self.create_exclusive(&tmp, mode) {
                Ok(f) => return Ok((tmp, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no unused temporary file name after 16 tries",
        ))
    }
}

/// 64 random bits from the kernel (`getrandom`), or the clock and pid if
/// that fails.
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: `buf` is valid for 8 bytes of writes for the whole call.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == 8 {
        return u64::from_le_bytes(buf);
    }
    crate::unix_now_ns() ^ (u64::from(std::process::id()) << 32)
}

/// Opens `path` for reading on an operator's behalf, refusing anything but
/// a regular file: a FIFO cannot block the open (`O_NONBLOCK`, cleared once
/// the file is known to be regular), and devices such as `/dev/zero` are
/// refused instead of read forever.
///
/// # Errors
///
/// The OS error, or `InvalidInput` naming what the path is instead.
pub fn open_regular(path: &Path) -> io::Result<(File, FileStat)> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno_io)?;
    let st = stat_of(&fd)?;
    if !is_regular(&st) {
        let kind = match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFIFO => "a FIFO",
            SFlag::S_IFCHR => "a character device",
            SFlag::S_IFBLK => "a block device",
            SFlag::S_IFDIR => "a directory",
            SFlag::S_IFSOCK => "a socket",
            _ => "not a regular file",
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is {kind}, not a regular file", path.display()),
        ));
    }
    // Back to blocking reads (a regular file ignores the flag anyway).
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_RDONLY)).map_err(errno_io)?;
    Ok((File::from(fd), st))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(tag: &str) -> (PathBuf, Dir) {
        let path = std::env::temp_dir().join(format!(
            "kvs-secure-fs-{tag}-{}-{}",
            std::process::id(),
            random_u64()
        ));
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        let dir = Dir::open(&path).unwrap();
        (path, dir)
    }

    #[test]
    fn client_file_names_are_plain() {
        for good in ["a", "snap-1.bck", "x y", "ünïcode"] {
            assert!(check_file_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "/abs",
            "../x",
            "a\nb",
            "\u{1b}[31m",
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_file_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn exclusive_create_never_follows_or_reuses() {
        let (path, dir) = scratch("excl");
        let victim = path.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, path.join("link")).unwrap();
        std::os::unix::fs::symlink(path.join("nowhere"), path.join("dangling")).unwrap();
        for name in ["victim", "link", "dangling"] {
            let err = dir.create_exclusive(name, 0o600).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{name}");
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!path.join("nowhere").exists());
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn created_files_get_exactly_their_mode() {
        let (path, dir) = scratch("mode");
        for mode in [0o600, 0o640, 0o644] {
            let name = format!("f{mode:o}");
            drop(dir.create_exclusive(&name, mode).unwrap());
            let m = std::fs::metadata(path.join(&name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(m, mode);
        }
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn atomic_writes_replace_a_planted_link_without_following_it() {
        let (path, dir) = scratch("atomic");
        let victim = path.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, path.join("out")).unwrap();
        dir.write_atomically("out", 0o600, |f| {
            use std::io::Write;
            f.write_all(b"new")
        })
        .unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(path.join("out")).unwrap(), b"new");
        assert!(!std::fs::symlink_metadata(path.join("out"))
            .unwrap()
            .file_type()
            .is_symlink());
        // A failed write leaves nothing behind.
        let err = dir
            .write_atomically("out", 0o600, |_| -> io::Result<()> {
                Err(io::Error::other("boom"))
            })
            .unwrap_err();
        assert_eq!(err.to_string(), "boom");
        let names: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn only_regular_files_are_read() {
        assert!(open_regular(Path::new("/dev/zero")).is_err());
        assert!(open_regular(Path::new("/")).is_err());
        let (path, _dir) = scratch("fifo");
        let fifo = path.join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let err = open_regular(&fifo).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        std::fs::write(path.join("plain"), b"x").unwrap();
        assert!(open_regular(&path.join("plain")).is_ok());
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn writable_directories_are_not_private() {
        let (path, dir) = scratch("private");
        assert!(dir.check_private("backup directory").is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = dir.check_private("backup directory").unwrap_err();
        assert!(err.contains("writable by other users"), "{err}");
        std::fs::remove_dir_all(&path).unwrap();
    }
}
