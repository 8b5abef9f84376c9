//! The region's memory: an anonymous, sealed `memfd`.
//!
//! A named POSIX shared-memory object can be opened by anyone its mode
//! admits and `ftruncate`d to nothing, after which every process that
//! touches the mapping dies of `SIGBUS`; it cannot be sealed. A `memfd` has
//! no name (it is handed to each client over the server's socket, see
//! [`super::handshake`]) and is sealed against shrinking and growing before
//! anyone else sees it, so no holder of the descriptor, however hostile, can
//! change its size. Its inode is `fchmod`ed to 0600 (a memfd starts at 0777,
//! which would let a holder of another user reopen it through `/proc`).
//!
//! ```
//! use kvs_core::region::memfd;
//!
//! let file = memfd::create("doc", 8192, 4096).unwrap();
//! memfd::check(&file, 8192).unwrap();
//! assert!(file.set_len(0).is_err()); // sealed
//! ```

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use std::ffi::CString;
use std::fs::File;
use std::io;

/// `MFD_NOEXEC_SEAL` from `linux/memfd.h` (not yet in the libc crate).
const MFD_NOEXEC_SEAL: libc::c_uint = 0x0008;

/// The seals every region carries.
pub const SEALS: SealFlag = SealFlag::F_SEAL_SHRINK
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_SEAL);

/// Creates a sealed memfd of `size` bytes with its first `reserve` bytes'
/// pages allocated (a full memory cgroup is an error now, not a `SIGBUS`
/// later, for the parts that are always touched: headers, ring, slots);
/// the rest (staging buffers, the store's data) is committed on demand by
/// whoever writes it, with `fallocate` first (see [`commit`]).
///
/// # Errors
///
/// The OS error (`ENOSPC`, `ENOMEM`, or `EFBIG` for a size too large).
pub fn create(name: &str, size: u64, reserve: u64) -> io::Result<File> {
    let label = CString::new(format!("kvs:{name}"))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the region name"))?;
    let base = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    // MFD_NOEXEC_SEAL (Linux 6.3) also forbids making it executable; older
    // kernels reject the flag, and the region is never mapped executable.
    let fd = match memfd_create(
        label.as_c_str(),
        base | MFdFlags::from_bits_retain(MFD_NOEXEC_SEAL),
    ) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::EINVAL) => memfd_create(label.as_c_str(), base)?,
        Err(e) => return Err(e.into()),
    };
    nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    let file = File::from(fd);
    file.set_len(size)?;
    commit(&file, 0, reserve.min(size))?;
    fcntl(&file, FcntlArg::F_ADD_SEALS(SEALS))?;
    Ok(file)
}

/// Allocates the pages of `[offset, offset + len)` (a sealed memfd cannot
/// grow, so this only backs holes with memory).
///
/// # Errors
///
/// `ENOSPC`/`ENOMEM` when there is no memory for them.
pub fn commit(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    nix::fcntl::posix_fallocate(file, off, len).map_err(io::Error::from)
}

/// Gives the pages of `[offset, offset + len)` back to the system; they read
/// as zeros afterwards. Best effort: a failure only keeps the memory.
pub fn release(file: &File, offset: u64, len: u64) {
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    if len > 0 {
        let _ = nix::fcntl::fallocate(
            file,
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        );
    }
}

/// Checks a descriptor received from a server: a sealed memfd (or another
/// sealable shared-memory file) whose size cannot change and is `size`.
///
/// # Errors
///
/// A message saying what does not hold.
pub fn check(file: &File, size: u64) -> Result<(), String> {
    let seals = fcntl(file, FcntlArg::F_GET_SEALS)
        .map_err(|e| format!("the region's descriptor cannot be sealed ({e}): not a memfd"))?;
    let seals = SealFlag::from_bits_truncate(seals);
    if !seals.contains(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW) {
        return Err(format!(
            "the region is not sealed against resizing (seals {seals:?})"
        ));
    }
    let actual = file
        .metadata()
        .map_err(|e| format!("reading the region's size: {e}"))?
        .len();
    if actual != size {
        return Err(format!(
            "the server announced {size} bytes, the region has {actual}"
        ));
    }
    Ok(())
}
