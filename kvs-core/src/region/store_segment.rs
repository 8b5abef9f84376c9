//! The store segment: a sealed `memfd` holding the store (see
//! [`crate::store`]), mapped read-write by the server and read-only by
//! clients.
//!
//! The server creates it at its full (virtual) size and seals it, so no
//! holder can resize it and no mapping can fault past its end; pages are
//! committed with `fallocate` before the allocator hands them out and
//! punched out when large blocks are freed. Its inode is `fchmod`ed to
//! 0400, and clients receive a descriptor reopened read-only (through
//! `/proc/self/fd`), which cannot be mapped writable: a buggy or hostile
//! client of another user cannot write the store. (A process of the
//! server's own user could `fchmod` the inode back and reopen it; that user
//! can also send any request, so this is a guard against accidents, not a
//! security boundary. README's "who can do what" says so.)
//!
//! A warm restart hands the same descriptor (read-write, held by the
//! keeper) to the next server, which maps it again with [`StoreSegment::adopt`].

use super::memfd;
use crate::store::segment::Segment;
use crate::store::words::Words;
use crate::sync::AtomicU64;
use memmap2::{MmapOptions, MmapRaw};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// A mapped store segment.
#[derive(Debug)]
pub struct StoreSegment {
    file: File,
    map: MmapRaw,
    len: u64,
    writable: bool,
}

impl StoreSegment {
    /// Creates a sealed store segment of `size` bytes (a multiple of the
    /// page size) for region `name`, with its first `reserve` bytes
    /// committed, and maps it read-write.
    ///
    /// # Errors
    ///
    /// The OS error.
    pub fn create(name: &str, size: u64, reserve: u64) -> io::Result<Self> {
        let file = memfd::create(&format!("{name}:store"), size, reserve)?;
        let segment = Self::map(file, size, true)?;
        // Nobody, not even this user through /proc, reopens it writable
        // by accident (the server's own descriptor stays read-write).
        nix::sys::stat::fchmod(
            &segment.file,
            nix::sys::stat::Mode::from_bits_truncate(0o400),
        )?;
        Ok(segment)
    }

    /// Maps a store segment received from a keeper (read-write, for the
    /// next server). Checks its seals and that its size is `size`.
    ///
    /// # Errors
    ///
    /// When it is not a sealed memfd of that size, or cannot be mapped.
    pub fn adopt(fd: OwnedFd, size: u64) -> io::Result<Self> {
        let file = File::from(fd);
        memfd::check(&file, size).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Self::map(file, size, true)
    }

    /// Maps a store segment received from a server, read-only. Checks its
    /// seals and that its size is `size`.
    ///
    /// # Errors
    ///
    /// When it is not a sealed memfd of that size, or cannot be mapped.
    pub fn open_read_only(fd: OwnedFd, size: u64) -> io::Result<Self> {
        let file = File::from(fd);
        memfd::check(&file, size).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Self::map(file, size, false)
    }

    fn map(file: File, size: u64, writable: bool) -> io::Result<Self> {
        if size % 4096 != 0 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a store segment of {size} bytes is not whole pages"),
            ));
        }
        let len = usize::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        let mut options = MmapOptions::new();
        options.len(len);
        let map = if writable {
            options.map_raw(&file)?
        } else {
            options.map_raw_read_only(&file)?
        };
        Ok(Self {
            file,
            map,
            len: size,
            writable,
        })
    }

    /// Bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never: a segment has at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether this mapping may be written (the server's).
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The descriptor (the server's is read-write: it goes to the keeper).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// A new read-only descriptor of the same segment, for a client.
    ///
    /// # Errors
    ///
    /// When `/proc/self/fd` cannot be opened.
    pub fn read_only_fd(&self) -> io::Result<OwnedFd> {
        let path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        let fd = nix::fcntl::open(
            path.as_str(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        Ok(fd)
    }
}

impl Segment for StoreSegment {
    fn words(&self) -> Words<'_> {
        // SAFETY:
        // 1. The mapping is page-aligned and `len` bytes long (a multiple of
        //    8), and lives as long as `self`, so the slice covers mapped,
        //    aligned memory for the borrow.
        // 2. `AtomicU64` has the size and alignment of `u64`, and every
        //    access through the slice is atomic; other processes mutate the
        //    memory only through atomics too (see `crate::store::words`), so
        //    a shared slice of atomics over it is sound.
        // 3. A read-only mapping is only ever loaded from (`Relaxed`, which
        //    is a plain load; clients never store: their API has no store).
        unsafe {
            Words::new(std::slice::from_raw_parts(
                self.map.as_ptr() as *const AtomicU64,
                (self.len / 8) as usize,
            ))
        }
    }

    fn commit(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        memfd::commit(&self.file, offset, len)
    }

    fn release(&self, offset: u64, len: u64) {
        if self.writable {
            memfd::release(&self.file, offset, len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::words::Words;

    fn first_word(words: &Words<'_>) -> u64 {
        words.load(0).unwrap()
    }

    #[test]
    fn clients_see_the_servers_writes_and_cannot_map_it_writable() {
        let server = StoreSegment::create("segtest", 1 << 20, 4096).unwrap();
        server.words().store(0, 42);
        let ro = server.read_only_fd().unwrap();
        // A read-only descriptor cannot back a writable shared mapping.
        let file = File::from(ro.try_clone().unwrap());
        assert!(MmapOptions::new().len(4096).map_raw(&file).is_err());
        let client = StoreSegment::open_read_only(ro, 1 << 20).unwrap();
        assert_eq!(first_word(&client.words()), 42);
        assert!(client.commit(0, 4096).is_err());
        // The size must be what the server announced.
        assert!(StoreSegment::open_read_only(server.read_only_fd().unwrap(), 1 << 21).is_err());
    }

    #[test]
    fn released_pages_read_as_zeros() {
        let s = StoreSegment::create("segtest2", 1 << 20, 0).unwrap();
        s.commit(8192, 8192).unwrap();
        s.words().store(8192, 7);
        s.release(8192, 4096);
        assert_eq!(s.words().load(8192), Some(0));
    }
}
