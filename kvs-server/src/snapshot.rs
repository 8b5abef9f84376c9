//! Snapshot files: a point-in-time copy of the store on disk.
//!
//! Format 2 (all integers little-endian):
//!
//! ```text
//! offset  size  field
//!      0     8  magic "\x89KVSNAP\n"
//!      8     4  format version (2)
//!     12     4  reserved (0)
//!     16     8  entry count
//!     24     8  global version
//!     32     8  created, unix ns
//!     40     8  largest key in the file     48  8  largest value in the file
//!     56     .  records: key length u32, value length u32, version u64,
//!               modified_ns u64, deadline u64, the key's bytes, the value's bytes
//!      .     4  CRC-32 of every byte before it
//!      .     4  "END!"
//! ```
//!
//! Format 1 (fixed-size keys and values of one Rust type, written by
//! earlier builds) still loads: its records become byte strings, a text
//! type (`FixedStr`) its text without padding, any other type its bytes as
//! they were in memory (what `Codec` gives for integers on this machine).
//!
//! Written atomically: into a fresh temporary file beside the target,
//! created exclusively under an unpredictable name with the snapshot's mode
//! ([`file_mode`]: the region's, so a private store gives private files),
//! flushed and `fsync`ed, renamed over the target, then the directory is
//! `fsync`ed. A crash at any moment leaves either the old file or the new
//! one, never a mix. See `kvs_core::secure_fs` for why no planted name can
//! redirect a write.
//!
//! Loading opens only a regular file (never blocking on a FIFO or reading a
//! device) and reads it twice: first to check magic, version, every
//! record's lengths, the total length and the checksum, holding nothing
//! but one record at a time; then, only if all of that holds, to hand the
//! records over. A file that fails any check changes nothing.

use kvs_core::secure_fs::Dir;
use kvs_core::store::block::Meta;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: [u8; 8] = *b"\x89KVSNAP\n";
const FORMAT_VERSION: u32 = 2;
const TRAILER: [u8; 4] = *b"END!";
const HEAD_V2: usize = 56;
const RECORD_HEAD: usize = 32;

/// What a snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Entries written or loaded.
    pub entries: u64,
    /// The global version at the snapshot.
    pub version: u64,
    /// Bytes of the file.
    pub bytes: u64,
}

/// One entry as a snapshot carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Version, modified time, deadline.
    pub meta: Meta,
}

/// Why a snapshot could not be written or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// An OS error.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Not a snapshot file.
    #[error("{path} is not a kvs snapshot (bad magic)")]
    NotASnapshot {
        /// The file.
        path: PathBuf,
    },
    /// Another format version.
    #[error("snapshot {path} has format version {found}, this build reads versions 1 and {FORMAT_VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// Shorter or longer than its records say.
    #[error("snapshot {path} is truncated or padded: {found} bytes, the header and records imply {expected}")]
    Length {
        /// The file.
        path: PathBuf,
        /// Bytes implied.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// A record larger than this store allows.
    #[error("snapshot {path} holds a {what} of {len} bytes, this server allows {max} (raise --max-{what}-size)")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// "key" or "value".
        what: &'static str,
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The checksum does not match: the file is corrupt.
    #[error("snapshot {path} is corrupt: checksum mismatch")]
    Checksum {
        /// The file.
        path: PathBuf,
    },
    /// The store refused an entry (full).
    #[error("snapshot {path}: loading stopped after {loaded} entries: {reason}")]
    Store {
        /// The file.
        path: PathBuf,
        /// Entries loaded before.
        loaded: u64,
        /// Why.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

struct Crc<W> {
    inner: W,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Permission bits of snapshot files for a region of `region_mode`: the
/// region's read bits, write for the owner only, so that nobody but the
/// server's user can alter a file the operator may later `--load`.
pub fn file_mode(region_mode: u32) -> u32 {
    (region_mode & 0o644) | 0o600
}

/// Opens the directory `path` is in, and returns it with the file name.
///
/// # Errors
///
/// [`SnapshotError::Io`] when the directory cannot be opened or `path`
/// names no file (or one that is not UTF-8).
pub fn open_parent(path: &Path) -> Result<(Dir, String), SnapshotError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| SnapshotError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path names no file (or not in UTF-8)",
            ),
        })?
        .to_string();
    let dir = Dir::open(dir).map_err(io_err(path))?;
    Ok((dir, name))
}

/// Checks, now, that a snapshot can later be written as `name` in `dir`
/// (`kvs_server --save-on-exit`, which writes only at the stop): `name`
/// is absent or a regular file, and `dir` takes a new file (one is
/// created exclusively and removed again), so a directory in its place, a
/// read-only or pseudo file system, or a directory of someone else's, is
/// refused at start instead of losing the data at the stop.
///
/// # Errors
///
/// [`SnapshotError::Io`] saying which.
pub fn check_target(dir: &Dir, name: &str) -> Result<(), SnapshotError> {
    let path = dir.path().join(name);
    match nix::sys::stat::fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if !kvs_core::secure_fs::is_regular(&st) => {
            return Err(SnapshotError::Io {
                path,
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "it exists and is not a regular file (a directory, a link or a device)",
                ),
            });
        }
        Ok(_) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(io_err(&path)(io::Error::from(e))),
    }
    let probe = format!(".{name}.check-{:016x}", kvs_core::secure_fs::random_u64());
    dir.create_exclusive(&probe, 0o600).map_err(|e| {
        io_err(&path)(io::Error::new(
            e.kind(),
            format!("cannot create a file in its directory: {e}"),
        ))
    })?;
    dir.unlink(&probe).map_err(io_err(&path))?;
    Ok(())
}

/// Writes `entries` (taken at global `version`) as the file `name` of
/// `dir`: into a fresh, exclusively created temporary file with `mode`,
/// `fsync`ed and renamed over `name` (see [`Dir::write_atomically`]).
///
/// # Errors
///
/// [`SnapshotError::Io`]; the previous file, if any, is untouched.
pub fn write_into(
    dir: &Dir,
    name: &str,
    entries: &[SnapshotEntry],
    version: u64,
    mode: u32,
) -> Result<SnapshotInfo, SnapshotError> {
    let path = dir.path().join(name);
    let max_key = entries.iter().map(|e| e.key.len()).max().unwrap_or(0) as u64;
    let max_value = entries.iter().map(|e| e.value.len()).max().unwrap_or(0) as u64;
    let bytes = dir
        .write_atomically(name, mode, |file| {
            let mut w = Crc {
                inner: BufWriter::with_capacity(1 << 20, file),
                hasher: crc32fast::Hasher::new(),
                bytes: 0,
            };
            w.write_all(&MAGIC)?;
            w.write_all(&FORMAT_VERSION.to_le_bytes())?;
            w.write_all(&0u32.to_le_bytes())?;
            for n in [
                entries.len() as u64,
                version,
                kvs_core::unix_now_ns(),
                max_key,
                max_value,
            ] {
                w.write_all(&n.to_le_bytes())?;
            }
            for e in entries {
                w.write_all(&(e.key.len() as u32).to_le_bytes())?;
                w.write_all(&(e.value.len() as u32).to_le_bytes())?;
                w.write_all(&e.meta.version.to_le_bytes())?;
                w.write_all(&e.meta.modified_ns.to_le_bytes())?;
                w.write_all(&e.meta.deadline.to_le_bytes())?;
                w.write_all(&e.key)?;
                w.write_all(&e.value)?;
            }
            let crc = w.hasher.clone().finalize();
            let mut inner = w.inner;
            inner.write_all(&crc.to_le_bytes())?;
            inner.write_all(&TRAILER)?;
            inner.flush()?;
            Ok(w.bytes + 8)
        })
        .map_err(io_err(&path))?;
    Ok(SnapshotInfo {
        entries: entries.len() as u64,
        version,
        bytes,
    })
}

fn le_u32(data: &[u8], at: usize) -> u32 {
    data.get(at..at + 4)
        .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
}

fn le_u64(data: &[u8], at: usize) -> u64 {
    data.get(at..at + 8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

/// A reader that checksums what it reads and counts it.
struct Counted<R> {
    inner: R,
    hasher: crc32fast::Hasher,
    read: u64,
}

impl<R: Read> Counted<R> {
    fn exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf)?;
        self.hasher.update(buf);
        self.read += buf.len() as u64;
        Ok(())
    }
}

/// The limits a loading store applies (records above them are refused
/// before anything is loaded).
#[derive(Debug, Clone, Copy)]
pub struct LoadLimits {
    /// Largest key.
    pub max_key: u64,
    /// Largest value.
    pub max_value: u64,
}

/// Reads and validates the snapshot at `path`, then hands every entry to
/// `insert` (in file order), and returns what the file held.
///
/// # Errors
///
/// [`SnapshotError`] naming what is wrong; `insert` is called only for a
/// file that passed every check (its own errors stop the load).
pub fn load(
    path: &Path,
    limits: LoadLimits,
    mut insert: impl FnMut(SnapshotEntry) -> Result<(), String>,
) -> Result<SnapshotInfo, SnapshotError> {
    let info = scan(path, limits, &mut |_| Ok(()))?;
    let mut loaded = 0u64;
    scan(path, limits, &mut |e| {
        insert(e).map_err(|reason| SnapshotError::Store {
            path: path.to_path_buf(),
            loaded,
            reason,
        })?;
        loaded += 1;
        Ok(())
    })?;
    Ok(info)
}

/// One pass over the file: every check, each record handed to `each`.
fn scan(
    path: &Path,
    limits: LoadLimits,
    each: &mut dyn FnMut(SnapshotEntry) -> Result<(), SnapshotError>,
) -> Result<SnapshotInfo, SnapshotError> {
    let (file, st) = kvs_core::secure_fs::open_regular(path).map_err(io_err(path))?;
    let size = u64::try_from(st.st_size).unwrap_or(0);
    let p = || path.to_path_buf();
    let short = |expected: u64| SnapshotError::Length {
        path: p(),
        expected,
        found: size,
    };
    let mut r = Counted {
        inner: BufReader::with_capacity(1 << 20, file),
        hasher: crc32fast::Hasher::new(),
        read: 0,
    };
    let mut head = [0u8; 16];
    if r.exact(&mut head).is_err() || head[..8] != MAGIC {
        return Err(SnapshotError::NotASnapshot { path: p() });
    }
    match le_u32(&head, 8) {
        FORMAT_VERSION => scan_v2(&mut r, size, limits, path, each),
        1 => scan_v1(&mut r, size, limits, path, each),
        found => Err(SnapshotError::Version { path: p(), found }),
    }
    .map_err(|e| match e {
        SnapshotError::Io { source, .. } if source.kind() == io::ErrorKind::UnexpectedEof => {
            short(r.read + 1)
        }
        other => other,
    })
}

/// The checksum and trailer at the end, and nothing after them.
fn finish<R: Read>(r: &mut Counted<R>, size: u64, path: &Path) -> Result<(), SnapshotError> {
    let expected = r.read + 8;
    if size != expected {
        return Err(SnapshotError::Length {
            path: path.to_path_buf(),
            expected,
            found: size,
        });
    }
    let crc = r.hasher.clone().finalize();
    let mut tail = [0u8; 8];
    r.inner.read_exact(&mut tail).map_err(io_err(path))?;
    if le_u32(&tail, 0) != crc || tail[4..] != TRAILER {
        return Err(SnapshotError::Checksum {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

fn scan_v2<R: Read>(
    r: &mut Counted<R>,
    size: u64,
    limits: LoadLimits,
    path: &Path,
    each: &mut dyn FnMut(SnapshotEntry) -> Result<(), SnapshotError>,
) -> Result<SnapshotInfo, SnapshotError> {
    let mut rest = [0u8; HEAD_V2 - 16];
    r.exact(&mut rest).map_err(io_err(path))?;
    let (count, version) = (le_u64(&rest, 0), le_u64(&rest, 8));
    for _ in 0..count {
        let mut h = [0u8; RECORD_HEAD];
        r.exact(&mut h).map_err(io_err(path))?;
        let (klen, vlen) = (u64::from(le_u32(&h, 0)), u64::from(le_u32(&h, 4)));
        for (what, len, max) in [
            ("key", klen, limits.max_key),
            ("value", vlen, limits.max_value),
        ] {
            if len > max {
                return Err(SnapshotError::TooLarge {
                    path: path.to_path_buf(),
                    what,
                    len,
                    max,
                });
            }
        }
        // The lengths are within the store's limits, and a record past the
        // file's real end fails the read: nothing large is allocated on a
        // claim alone.
        if r.read + klen + vlen > size {
            return Err(SnapshotError::Length {
                path: path.to_path_buf(),
                expected: r.read + klen + vlen + 8,
                found: size,
            });
        }
        let mut key = vec![0u8; klen as usize];
        let mut value = vec![0u8; vlen as usize];
        r.exact(&mut key).map_err(io_err(path))?;
        r.exact(&mut value).map_err(io_err(path))?;
        each(SnapshotEntry {
            key,
            value,
            meta: Meta {
                version: le_u64(&h, 8),
                modified_ns: le_u64(&h, 16),
                deadline: le_u64(&h, 24),
            },
        })?;
    }
    finish(r, size, path)?;
    Ok(SnapshotInfo {
        entries: count,
        version,
        bytes: size,
    })
}

/// Format 1: fixed-size records of one key and one value type.
fn scan_v1<R: Read>(
    r: &mut Counted<R>,
    size: u64,
    limits: LoadLimits,
    path: &Path,
    each: &mut dyn FnMut(SnapshotEntry) -> Result<(), SnapshotError>,
) -> Result<SnapshotInfo, SnapshotError> {
    let mut fixed = [0u8; 64];
    r.exact(&mut fixed).map_err(io_err(path))?;
    let (key_size, value_size) = (le_u64(&fixed, 0), le_u64(&fixed, 16));
    let (count, version, rec) = (le_u64(&fixed, 32), le_u64(&fixed, 40), le_u64(&fixed, 56));
    let mut names = Vec::new();
    for _ in 0..2 {
        let mut n = [0u8; 2];
        r.exact(&mut n).map_err(io_err(path))?;
        let mut name = vec![0u8; u16::from_le_bytes(n) as usize];
        r.exact(&mut name).map_err(io_err(path))?;
        names.push(String::from_utf8_lossy(&name).into_owned());
    }
    if rec != key_size.saturating_add(value_size).saturating_add(16) || rec > 1 << 24 {
        return Err(SnapshotError::Length {
            path: path.to_path_buf(),
            expected: rec,
            found: size,
        });
    }
    // A text type's bytes end at its first NUL; any other type keeps them.
    let text = |name: &str| name.contains("FixedStr");
    let trim = |bytes: &[u8], is_text: bool| -> Vec<u8> {
        if is_text {
            bytes.split(|b| *b == 0).next().unwrap_or_default().to_vec()
        } else {
            bytes.to_vec()
        }
    };
    let (key_text, value_text) = (text(&names[0]), text(&names[1]));
    let expected = count
        .checked_mul(rec)
        .and_then(|b| b.checked_add(r.read + 8))
        .unwrap_or(u64::MAX);
    if expected != size {
        return Err(SnapshotError::Length {
            path: path.to_path_buf(),
            expected,
            found: size,
        });
    }
    let mut buf = vec![0u8; rec as usize];
    let (ks, vs) = (key_size as usize, value_size as usize);
    for _ in 0..count {
        r.exact(&mut buf).map_err(io_err(path))?;
        let key = trim(&buf[..ks], key_text);
        let value = trim(&buf[ks..ks + vs], value_text);
        for (what, len, max) in [
            ("key", key.len() as u64, limits.max_key),
            ("value", value.len() as u64, limits.max_value),
        ] {
            if len > max {
                return Err(SnapshotError::TooLarge {
                    path: path.to_path_buf(),
                    what,
                    len,
                    max,
                });
            }
        }
        each(SnapshotEntry {
            key,
            value,
            meta: Meta {
                version: le_u64(&buf, ks + vs),
                modified_ns: le_u64(&buf, ks + vs + 8),
                deadline: 0,
            },
        })?;
    }
    finish(r, size, path)?;
    Ok(SnapshotInfo {
        entries: count,
        version,
        bytes: size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: LoadLimits = LoadLimits {
        max_key: 1024,
        max_value: 1 << 20,
    };

    fn entries(n: u64) -> Vec<SnapshotEntry> {
        (0..n)
            .map(|k| SnapshotEntry {
                key: format!("key-{k}").into_bytes(),
                value: vec![k as u8; (k % 300) as usize],
                meta: Meta {
                    version: k + 1,
                    modified_ns: 5,
                    deadline: 0,
                },
            })
            .collect()
    }

    fn write(dir: &tempfile::TempDir, name: &str, e: &[SnapshotEntry]) -> PathBuf {
        let d = Dir::open(dir.path()).unwrap();
        write_into(&d, name, e, 77, 0o600).unwrap();
        dir.path().join(name)
    }

    fn load_all(
        path: &Path,
        limits: LoadLimits,
    ) -> Result<(Vec<SnapshotEntry>, SnapshotInfo), SnapshotError> {
        let mut got = Vec::new();
        let info = load(path, limits, |e| {
            got.push(e);
            Ok(())
        })?;
        Ok((got, info))
    }

    #[test]
    fn round_trip_with_any_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let e = entries(1000);
        let path = write(&dir, "s.snap", &e);
        let (back, info) = load_all(&path, LIMITS).unwrap();
        assert_eq!(back, e);
        assert_eq!((info.entries, info.version), (1000, 77));
    }

    #[test]
    fn every_kind_of_damage_is_refused_and_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "s.snap", &entries(10));
        let good = std::fs::read(&path).unwrap();
        let check = |bytes: &[u8], want: &str| {
            std::fs::write(&path, bytes).unwrap();
            let mut called = 0;
            let err = load(&path, LIMITS, |_| {
                called += 1;
                Ok(())
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains(want), "{want}: {err}");
            assert_eq!(called, 0, "nothing is handed over from a bad file");
        };
        check(&good[..good.len() - 3], "truncated");
        check(&good[..50], "truncated");
        check(b"hello world, not a snapshot", "not a kvs snapshot");
        let mut flipped = good.clone();
        flipped[90] ^= 1; // inside the first key
        check(&flipped, "checksum");
        let mut ver = good.clone();
        ver[8] = 9;
        check(&ver, "format version 9");
        // A record claiming a 4 GiB value: refused by the limit, nothing
        // allocated.
        let mut huge = good.clone();
        huge[HEAD_V2 + 4..HEAD_V2 + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        check(&huge, "value of 4294967295 bytes");
        // Limits of a smaller store.
        std::fs::write(&path, &good).unwrap();
        let small = LoadLimits {
            max_key: 3,
            max_value: 1 << 20,
        };
        assert!(load_all(&path, small)
            .unwrap_err()
            .to_string()
            .contains("--max-key-size"));
    }

    /// A format-1 file (fixed-size text keys and values) still loads.
    #[test]
    fn format_1_text_files_load_as_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.snap");
        let (ks, vs) = (64u64, 256u64);
        let mut body = Vec::new();
        body.extend_from_slice(&MAGIC);
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        let names = [
            "kvs_core::fixed_str::FixedStr<64>",
            "kvs_core::fixed_str::FixedStr<256>",
        ];
        for n in [ks, 1, vs, 2, 1, 9, 0, ks + vs + 16] {
            body.extend_from_slice(&n.to_le_bytes());
        }
        for name in names {
            body.extend_from_slice(&(name.len() as u16).to_le_bytes());
            body.extend_from_slice(name.as_bytes());
        }
        let mut key = vec![0u8; ks as usize];
        key[..5].copy_from_slice(b"hello");
        let mut value = vec![0u8; vs as usize];
        value[..5].copy_from_slice(b"world");
        body.extend_from_slice(&key);
        body.extend_from_slice(&value);
        body.extend_from_slice(&3u64.to_le_bytes());
        body.extend_from_slice(&4u64.to_le_bytes());
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        body.extend_from_slice(&TRAILER);
        std::fs::write(&path, &body).unwrap();
        let (got, info) = load_all(&path, LIMITS).unwrap();
        assert_eq!(info.version, 9);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].key.as_slice(), got[0].value.as_slice()),
            (&b"hello"[..], &b"world"[..])
        );
        assert_eq!((got[0].meta.version, got[0].meta.modified_ns), (3, 4));
    }
}
