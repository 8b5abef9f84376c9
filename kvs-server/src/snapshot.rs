//! Snapshot files: a point-in-time copy of the store on disk.
//!
//! Format (all integers little-endian):
//!
//! ```text
//! offset  size  field
//!      0     8  magic "\x89KVSNAP\n"
//!      8     4  format version (1)
//!     12     4  reserved (0)
//!     16     8  key size            24  8  key type-name hash (FNV-1a)
//!     32     8  value size          40  8  value type-name hash
//!     48     8  entry count         56  8  global version
//!     64     8  created, unix ns    72  8  record size (key + value + 16)
//!     80     2  key name length, then the name; 2 + value name likewise
//!      .     .  records: key bytes, value bytes, version u64, modified_ns u64
//!      .     4  CRC-32 of every byte before it
//!      .     4  "END!"
//! ```
//!
//! Written atomically: into a fresh temporary file beside the target,
//! created exclusively under an unpredictable name with the snapshot's mode
//! ([`file_mode`]: the region's, so a private store gives private files),
//! flushed and `fsync`ed, renamed over the target, then the directory is
//! `fsync`ed. A crash at any moment leaves either the old file or the new
//! one, never a mix; two writers of one name each rename a complete file.
//! See `kvs_core::secure_fs` for why no planted name can redirect a write.
//!
//! Loading opens only a regular file (never blocking on a FIFO or reading a
//! device), reads the head, and reads the rest only if the file's real size
//! is exactly what the head implies; then it checks magic, version, types,
//! length and checksum and refuses anything else with an error that says
//! which.

use kvs_core::map::Entry;
use kvs_core::region::TypeInfo;
use kvs_core::secure_fs::Dir;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: [u8; 8] = *b"\x89KVSNAP\n";
const FORMAT_VERSION: u32 = 1;
const TRAILER: [u8; 4] = *b"END!";

/// Bytes of a snapshot's head at most: 80 fixed, and two type names of up
/// to 64 KiB each.
const HEAD_MAX: u64 = 80 + 2 * (2 + u16::MAX as u64);

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
    #[error(
        "snapshot {path} has format version {found}, this build reads version {FORMAT_VERSION}"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// Other key or value types.
    #[error("snapshot {path} holds {found_key} -> {found_value}, this server stores {expected_key} -> {expected_value}")]
    Types {
        /// The file.
        path: PathBuf,
        /// Key type in the file.
        found_key: String,
        /// Value type in the file.
        found_value: String,
        /// Our key type.
        expected_key: String,
        /// Our value type.
        expected_value: String,
    },
    /// Shorter or longer than its header says.
    #[error(
        "snapshot {path} is truncated or padded: {found} bytes, the header implies {expected}"
    )]
    Length {
        /// The file.
        path: PathBuf,
        /// Bytes implied by the header.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// The checksum does not match: the file is corrupt.
    #[error("snapshot {path} is corrupt: checksum mismatch")]
    Checksum {
        /// The file.
        path: PathBuf,
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

fn record_size<K, V>() -> usize {
    std::mem::size_of::<K>() + std::mem::size_of::<V>() + 16
}

/// Permission bits of snapshot files for a region of `region_mode`: the
/// region's read bits, write for the owner only, so that nobody but the
/// server's user can alter a file the operator may later `--load`.
pub fn file_mode(region_mode: u32) -> u32 {
    (region_mode & 0o644) | 0o600
}

/// Writes `entries` (taken at global `version`) to `path` atomically (see
/// [`write_into`]); for the operator's own paths (`--save-on-exit`).
///
/// # Errors
///
/// [`SnapshotError::Io`]; the previous file at `path`, if any, is untouched.
pub fn write<K: bytemuck::Pod, V: bytemuck::Pod>(
    path: &Path,
    entries: &[(K, Entry<V>)],
    version: u64,
    mode: u32,
) -> Result<SnapshotInfo, SnapshotError> {
    let (dir, name) = open_parent(path)?;
    write_into(&dir, &name, entries, version, mode)
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

/// Writes `entries` (taken at global `version`) as the file `name` of
/// `dir`: into a fresh, exclusively created temporary file with `mode`,
/// `fsync`ed and renamed over `name` (see [`Dir::write_atomically`]).
/// Concurrent writers of one name each rename their own complete file, and
/// a crash at any moment leaves the previous file.
///
/// # Errors
///
/// [`SnapshotError::Io`]; the previous file, if any, is untouched.
pub fn write_into<K: bytemuck::Pod, V: bytemuck::Pod>(
    dir: &Dir,
    name: &str,
    entries: &[(K, Entry<V>)],
    version: u64,
    mode: u32,
) -> Result<SnapshotInfo, SnapshotError> {
    let path = dir.path().join(name);
    let bytes = dir
        .write_atomically(name, mode, |file| {
            let mut w = Crc {
                inner: BufWriter::with_capacity(1 << 20, file),
                hasher: crc32fast::Hasher::new(),
                bytes: 0,
            };
            let (k, v) = (TypeInfo::of::<K>(), TypeInfo::of::<V>());
            w.write_all(&MAGIC)?;
            w.write_all(&FORMAT_VERSION.to_le_bytes())?;
            w.write_all(&0u32.to_le_bytes())?;
            for n in [
                k.size,
                k.name_hash,
                v.size,
                v.name_hash,
                entries.len() as u64,
                version,
                kvs_core::unix_now_ns(),
                record_size::<K, V>() as u64,
            ] {
                w.write_all(&n.to_le_bytes())?;
            }
            for name in [k.name(), v.name()] {
                let bytes = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
                w.write_all(&(bytes.len() as u16).to_le_bytes())?;
                w.write_all(bytes)?;
            }
            for (key, e) in entries {
                w.write_all(bytemuck::bytes_of(key))?;
                w.write_all(bytemuck::bytes_of(&e.value))?;
                w.write_all(&e.version.to_le_bytes())?;
                w.write_all(&e.modified_ns.to_le_bytes())?;
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
    u32::from_le_bytes(data[at..at + 4].try_into().unwrap_or_default())
}

fn le_u64(data: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(data[at..at + 8].try_into().unwrap_or_default())
}

/// A loaded snapshot.
pub type Loaded<K, V> = (Vec<(K, Entry<V>)>, SnapshotInfo);

/// Reads and validates the snapshot at `path`.
///
/// # Errors
///
/// [`SnapshotError`] naming what is wrong; nothing is returned from a file
/// that fails any check.
pub fn load<K: bytemuck::Pod, V: bytemuck::Pod>(
    path: &Path,
) -> Result<Loaded<K, V>, SnapshotError> {
    let (file, st) = kvs_core::secure_fs::open_regular(path).map_err(io_err(path))?;
    let size = u64::try_from(st.st_size).unwrap_or(0);
    let mut file = io::BufReader::new(file);
    let p = || path.to_path_buf();
    // The head (magic, fixed fields, the two type names) first, then only
    // as many bytes as the head says the file holds, and only if the file
    // really is that long: nothing is read, or allocated, on a claim alone.
    let mut data = Vec::new();
    (&mut file)
        .take(HEAD_MAX)
        .read_to_end(&mut data)
        .map_err(io_err(path))?;
    if data.len() < 8 || data[..8] != MAGIC {
        return Err(SnapshotError::NotASnapshot { path: p() });
    }
    let too_short = |expected: u64| SnapshotError::Length {
        path: p(),
        expected,
        found: size,
    };
    if data.len() < 84 {
        return Err(too_short(84));
    }
    let version = le_u32(&data, 8);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version {
            path: p(),
            found: version,
        });
    }
    let (key_size, key_hash, value_size, value_hash) = (
        le_u64(&data, 16),
        le_u64(&data, 24),
        le_u64(&data, 32),
        le_u64(&data, 40),
    );
    let (count, global_version, rec) = (le_u64(&data, 48), le_u64(&data, 56), le_u64(&data, 72));
    let mut at = 80usize;
    let mut names = Vec::new();
    for _ in 0..2 {
        if data.len() < at + 2 {
            return Err(too_short(at as u64 + 2));
        }
        let n = u16::from_le_bytes([data[at], data[at + 1]]) as usize;
        at += 2;
        if data.len() < at + n {
            return Err(too_short((at + n) as u64));
        }
        names.push(String::from_utf8_lossy(&data[at..at + n]).into_owned());
        at += n;
    }
    let (k, v) = (TypeInfo::of::<K>(), TypeInfo::of::<V>());
    if key_size != k.size
        || key_hash != k.name_hash
        || value_size != v.size
        || value_hash != v.name_hash
        || rec != record_size::<K, V>() as u64
    {
        return Err(SnapshotError::Types {
            path: p(),
            found_key: names[0].clone(),
            found_value: names[1].clone(),
            expected_key: k.name(),
            expected_value: v.name(),
        });
    }
    let expected = count
        .checked_mul(rec)
        .and_then(|b| b.checked_add(at as u64 + 8))
        .unwrap_or(u64::MAX);
    if size != expected {
        return Err(SnapshotError::Length {
            path: p(),
            expected,
            found: size,
        });
    }
    // `expected` is the file's real size, so this reads what is there.
    file.read_to_end(&mut data).map_err(io_err(path))?;
    if data.len() as u64 != expected {
        return Err(SnapshotError::Length {
            path: p(),
            expected,
            found: data.len() as u64,
        });
    }
    let body_end = data.len() - 8;
    let crc = le_u32(&data, body_end);
    if crc32fast::hash(&data[..body_end]) != crc || data[body_end + 4..] != TRAILER {
        return Err(SnapshotError::Checksum { path: p() });
    }
    let (ks, vs) = (key_size as usize, value_size as usize);
    let entries = data[at..body_end]
        .chunks_exact(rec as usize)
        .map(|r| {
            let key: K = bytemuck::pod_read_unaligned(&r[..ks]);
            let value: V = bytemuck::pod_read_unaligned(&r[ks..ks + vs]);
            let version = u64::from_le_bytes(r[ks + vs..ks + vs + 8].try_into().unwrap());
            let modified_ns = u64::from_le_bytes(r[ks + vs + 8..ks + vs + 16].try_into().unwrap());
            (
                key,
                Entry {
                    value,
                    version,
                    modified_ns,
                },
            )
        })
        .collect();
    Ok((
        entries,
        SnapshotInfo {
            entries: count,
            version: global_version,
            bytes: data.len() as u64,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(v: u64) -> Entry<u64> {
        Entry {
            value: v,
            version: v + 1,
            modified_ns: 5,
        }
    }

    fn tmp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("kvs-snap-{tag}-{}", std::process::id()))
    }

    #[test]
    fn round_trip() {
        let path = tmp("rt");
        let entries: Vec<_> = (0..1000u64).map(|k| (k, entry(k * 2))).collect();
        let info = write(&path, &entries, 77, 0o600).unwrap();
        assert_eq!(info.entries, 1000);
        let (back, linfo) = load::<u64, u64>(&path).unwrap();
        assert_eq!(back, entries);
        assert_eq!(linfo.version, 77);
        assert_eq!(linfo.bytes, info.bytes);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn every_kind_of_damage_is_refused() {
        let path = tmp("bad");
        let entries: Vec<_> = (0..10u64).map(|k| (k, entry(k))).collect();
        write(&path, &entries, 1, 0o600).unwrap();
        let good = std::fs::read(&path).unwrap();
        let check = |bytes: &[u8], want: &str| {
            std::fs::write(&path, bytes).unwrap();
            let err = load::<u64, u64>(&path).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        };
        check(&good[..good.len() - 3], "truncated");
        check(&good[..50], "truncated");
        check(b"hello world, not a snapshot", "not a kvs snapshot");
        let mut flipped = good.clone();
        flipped[120] ^= 1;
        check(&flipped, "checksum");
        let mut ver = good.clone();
        ver[8] = 9;
        check(&ver, "format version 9");
        std::fs::write(&path, &good).unwrap();
        let err = load::<u32, u64>(&path).unwrap_err().to_string();
        assert!(err.contains("holds u64 -> u64"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
