//! Permissions: a region is private to its user unless the server widens it
//! on purpose, and a client of another user is refused with a clear error.
//!
//! The cross-user checks need root (to run the client as `nobody` through
//! `setpriv`); without root they are skipped with a message.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn assert_refused(out: &Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

/// By default the region and its lock file are 0600, and `nobody` is
/// refused with "permission denied" and exit 2.
#[test]
fn region_is_private_by_default_and_other_users_are_refused() {
    let name = unique_name("perm600");
    let _server = ServerGuard::start(&name, &[]);
    assert_eq!(mode_of(&shm_path(&name)), 0o600);
    assert_eq!(mode_of(&lock_path(&name)), 0o600);
    let Some(out) = kvs_client_as_nobody(&name, &["set", "k", "v"]) else {
        return;
    };
    assert_refused(&out);
    eprintln!("nobody: {}", String::from_utf8_lossy(&out.stderr).trim());
    // Nothing was written.
    let out = kvs_client(&name, &["get", "k"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

/// `--mode 660` widens both files to the group only: `nobody` (not in the
/// group) is still refused; `--mode 666` lets every user in.
#[test]
fn mode_flag_widens_the_region_on_purpose() {
    let name = unique_name("perm660");
    let server = ServerGuard::start(&name, &["--mode", "660"]);
    assert_eq!(mode_of(&shm_path(&name)), 0o660);
    assert_eq!(mode_of(&lock_path(&name)), 0o660);
    if let Some(out) = kvs_client_as_nobody(&name, &["get", "k"]) {
        assert_refused(&out);
    }
    drop(server);

    let name = unique_name("perm666");
    let _server = ServerGuard::start(&name, &["--mode", "666"]);
    assert_eq!(mode_of(&shm_path(&name)), 0o666);
    assert_eq!(mode_of(&lock_path(&name)), 0o666);
    if let Some(out) = kvs_client_as_nobody(&name, &["set", "k", "from-nobody"]) {
        assert!(out.status.success(), "{out:?}");
        let out = kvs_client(&name, &["get", "k"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "from-nobody");
    }
}

/// A mode without owner read/write, or with other bits, is refused by the
/// server at start (exit 2, one line), and nothing is left behind.
#[test]
fn bad_modes_are_refused() {
    for mode in ["400", "700", "4600", "abc"] {
        let name = unique_name("badmode");
        let out = Command::new(server_bin())
            .args(["--name", &name, "--mode", mode])
            .env_remove("KVS_NAME")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--mode {mode}: {err}");
        assert!(!shm_path(&name).exists(), "--mode {mode} left a region");
        let _ = std::fs::remove_file(lock_path(&name));
    }
}
