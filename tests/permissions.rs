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

/// By default the socket and the lock file are 0600, and `nobody` is
/// refused with "permission denied" and exit 2.
#[test]
fn region_is_private_by_default_and_other_users_are_refused() {
    let name = unique_name("perm600");
    let _server = ServerGuard::start(&name, &[]);
    assert_eq!(mode_of(&socket_path(&name)), 0o600);
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

/// `--mode 660` widens the socket to the group only: `nobody` is refused,
/// `nobody` with the server's group as a supplementary group is admitted;
/// `--mode 666` lets every user in. The lock file stays private.
#[test]
fn mode_flag_widens_the_region_on_purpose() {
    let name = unique_name("perm660");
    let server = ServerGuard::start(&name, &["--mode", "660"]);
    assert_eq!(mode_of(&socket_path(&name)), 0o660);
    assert_eq!(mode_of(&lock_path(&name)), 0o600);
    if let Some(out) = kvs_client_as_nobody(&name, &["get", "k"]) {
        assert_refused(&out);
        // The same user in the server's group is admitted.
        let egid = nix::unistd::getegid().as_raw().to_string();
        let prefix = as_nobody().unwrap();
        let mut prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
        prefix.retain(|a| *a != "--clear-groups");
        let groups = format!("--groups={egid}");
        prefix.push(&groups);
        let out = output_within(kvs_client_command(&prefix, &name, &["set", "k", "grp"])).unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(stdout(&kvs_client(&name, &["get", "k"])).trim(), "grp");
    }
    drop(server);

    let name = unique_name("perm666");
    let _server = ServerGuard::start(&name, &["--mode", "666"]);
    assert_eq!(mode_of(&socket_path(&name)), 0o666);
    assert_eq!(mode_of(&lock_path(&name)), 0o600);
    if let Some(out) = kvs_client_as_nobody(&name, &["set", "k", "from-nobody"]) {
        assert!(out.status.success(), "{out:?}");
        let out = kvs_client(&name, &["get", "k"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "from-nobody");
    }
}

/// A mode other than 600, 660 or 666 is refused by the server at start
/// (exit 2, one line), and nothing is left behind.
#[test]
fn bad_modes_are_refused() {
    for mode in ["400", "700", "4600", "644", "640", "606", "abc"] {
        let name = unique_name("badmode");
        let out = Command::new(server_bin())
            .args(["--name", &name, "--mode", mode])
            .env_remove("KVS_NAME")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--mode {mode}: {err}");
        assert_eq!(err.lines().count(), 1, "--mode {mode}: {err}");
        assert!(!socket_path(&name).exists(), "--mode {mode} left a socket");
        assert!(!lock_path(&name).exists(), "--mode {mode} left a lock file");
    }
}
