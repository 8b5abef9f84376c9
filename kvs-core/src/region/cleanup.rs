//! Removing what dead servers left in the socket directory (`kvs_server
//! --cleanup`), never touching a live server's files.

use super::endpoint::{self, normalize_name, LockError, NameLock};
use crate::secure_fs::Dir;
use std::io;
use std::path::{Path, PathBuf};

/// What [`remove_stale`] did with one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleanup {
    /// A live server owns the name; nothing was touched.
    Alive,
    /// These files of a dead server were removed.
    Removed(Vec<PathBuf>),
}

/// Removes the socket and lock file of `name` in the socket directory if
/// their server is dead; leaves a live server's alone.
///
/// # Errors
///
/// An invalid name, an unusable socket directory, or an OS error.
pub fn remove_stale(name: &str, socket_dir: Option<&Path>) -> Result<Cleanup, String> {
    let name = normalize_name(name)?;
    let path = endpoint::server_dir(socket_dir);
    let dir = match Dir::open(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Cleanup::Removed(Vec::new())),
        Err(e) => return Err(format!("socket directory {}: {e}", path.display())),
    };
    let exists = |file: String| {
        nix::sys::stat::fstatat(
            dir.as_fd(),
            file.as_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok()
    };
    if !exists(endpoint::socket_file(&name)) && !exists(endpoint::lock_file(&name)) {
        return Ok(Cleanup::Removed(Vec::new()));
    }
    // Claim the name ourselves, so no server starts meanwhile.
    let (lock, previous) = match NameLock::acquire(&dir, &name) {
        Ok(claimed) => claimed,
        Err(LockError::Held { .. }) => return Ok(Cleanup::Alive),
        Err(LockError::Io(e)) => return Err(format!("{}: {e}", path.display())),
    };
    let mut removed = Vec::new();
    if dir.unlink(&endpoint::socket_file(&name)).is_ok() {
        removed.push(path.join(endpoint::socket_file(&name)));
    }
    lock.remove(&dir);
    if previous != endpoint::Previous::Fresh {
        removed.push(path.join(endpoint::lock_file(&name)));
    }
    Ok(Cleanup::Removed(removed))
}

/// Names in the socket directory whose server is dead (their lock is free).
pub fn stale_names(socket_dir: Option<&Path>) -> Vec<String> {
    let path = endpoint::server_dir(socket_dir);
    let (Ok(entries), Ok(dir)) = (std::fs::read_dir(&path), Dir::open(&path)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(base) = file_name
            .strip_suffix(".lock")
            .or_else(|| file_name.strip_suffix(".sock"))
            .or_else(|| file_name.strip_suffix(".keeper"))
        else {
            continue;
        };
        if normalize_name(base).is_err() || out.iter().any(|n| n == base) {
            continue;
        }
        if endpoint::lock_is_held(&dir, base) != Some(true) {
            out.push(base.to_string());
        }
    }
    out
}
