//! Security: another local user gains nothing, reads nothing, blocks
//! nothing (see README, "Wrong client, wrong user").
//!
//! Tests run as root in CI; the cross-user ones act as `nobody` through
//! `setpriv` and are skipped, with a message, where that cannot be done.

mod common;

use common::*;
use kvs::core::fixed_str::Value256;
use kvs::core::text::TextKey;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A private scratch directory (0700), removed on drop.
fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("kvs-sec-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// Fills the store with `n` entries through one client process.
fn fill(name: &str, n: usize) {
    let client = kvs::KVSClient::<TextKey, Value256>::connect(name).unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(256) {
        let tickets: Vec<_> = chunk
            .iter()
            .map(|i| {
                client
                    .set_async(&key(&format!("k{i}")), &val(&format!("value {i}")))
                    .unwrap()
            })
            .collect();
        for t in tickets {
            t.wait(Duration::from_secs(30)).unwrap();
        }
    }
}

/// Backups go only into the operator's `--backup-dir`, by plain file name:
/// another user of a `--mode 666` store cannot make the root server create
/// or replace a file anywhere else, and a server without a backup
/// directory refuses backups.
#[test]
fn backups_go_only_into_the_backup_dir() {
    let backups = private_dir();
    let name = unique_name("sec-backup");
    let _server = ServerGuard::start(
        &name,
        &[
            "--mode",
            "666",
            "--backup-dir",
            backups.path().to_str().unwrap(),
        ],
    );
    kvs_client(&name, &["set", "secret", "s3cret"]);
    // A root-owned file another user must not be able to replace, and a
    // path where it must not be able to create one.
    let outside = private_dir();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let created = outside.path().join("created.snap");
    for target in [&victim, &created] {
        let path = target.to_str().unwrap();
        for out in [
            Some(kvs_client(&name, &["backup", path])),
            kvs_client_as_nobody(&name, &["backup", path]),
        ]
        .into_iter()
        .flatten()
        {
            assert_eq!(out.status.code(), Some(2), "{out:?}");
            assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
        }
    }
    for sneaky in ["../escape.snap", "..", ".hidden", "a/b"] {
        let out = kvs_client(&name, &["backup", sneaky]);
        assert_eq!(out.status.code(), Some(2), "{sneaky}: {out:?}");
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!created.exists());
    assert!(!backups
        .path()
        .parent()
        .unwrap()
        .join("escape.snap")
        .exists());
    // A plain name lands in the backup directory.
    let out = kvs_client(&name, &["backup", "ok.snap"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(backups.path().join("ok.snap").is_file());
    if let Some(out) = kvs_client_as_nobody(&name, &["backup", "by-nobody.snap"]) {
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(backups.path().join("by-nobody.snap").is_file());
    }

    // Without --backup-dir: refused, with the flag to use.
    let name = unique_name("sec-nobackup");
    let _server = ServerGuard::start(&name, &[]);
    let out = kvs_client(&name, &["backup", "x.snap"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--backup-dir"), "{}", stderr(&out));
}

/// A backup directory that other users may write into is refused at start.
#[test]
fn a_shared_backup_dir_is_refused_at_start() {
    let dir = private_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let name = unique_name("sec-shareddir");
    let out = Command::new(server_bin())
        .args([
            "--name",
            &name,
            "--backup-dir",
            dir.path().to_str().unwrap(),
        ])
        .env_remove("KVS_NAME")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("writable by other users"),
        "{}",
        stderr(&out)
    );
}

/// Links planted where the server writes (the old predictable temporary
/// name, the final name) never make it write through them: the victims
/// keep their bytes, and the final name becomes a regular file.
#[test]
fn planted_links_never_redirect_a_backup() {
    let backups = private_dir();
    let outside = private_dir();
    let name = unique_name("sec-links");
    let server = ServerGuard::start(&name, &["--backup-dir", backups.path().to_str().unwrap()]);
    kvs_client(&name, &["set", "k", "v"]);
    let victim_tmp = outside.path().join("victim-tmp");
    let victim_final = outside.path().join("victim-final");
    std::fs::write(&victim_tmp, b"precious tmp").unwrap();
    std::fs::write(&victim_final, b"precious final").unwrap();
    std::os::unix::fs::symlink(
        &victim_tmp,
        backups
            .path()
            .join(format!(".snap.bck.tmp-{}", server.pid())),
    )
    .unwrap();
    std::os::unix::fs::symlink(&victim_final, backups.path().join("snap.bck")).unwrap();
    let out = kvs_client(&name, &["backup", "snap.bck"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read(&victim_tmp).unwrap(), b"precious tmp");
    assert_eq!(std::fs::read(&victim_final).unwrap(), b"precious final");
    let meta = std::fs::symlink_metadata(backups.path().join("snap.bck")).unwrap();
    assert!(meta.file_type().is_file());
}

/// Concurrent backups to one name each write their own temporary file:
/// every one that reports success leaves a whole, loadable snapshot.
#[test]
fn concurrent_backups_to_one_name_never_report_a_corrupt_file() {
    let backups = private_dir();
    let name = unique_name("sec-concurrent");
    let _server = ServerGuard::start(&name, &["--backup-dir", backups.path().to_str().unwrap()]);
    fill(&name, 20_000);
    let file = backups.path().join("same.snap");
    for round in 0..6 {
        let children: Vec<_> = (0..4)
            .map(|_| {
                kvs_client_command::<&str>(&[], &name, &["backup", "same.snap"])
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "round {round}: {}",
                stderr(&out)
            );
        }
        let (entries, _) = kvs::server::snapshot::load::<TextKey, Value256>(&file)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(entries.len(), 20_000);
    }
    let leftovers: Vec<_> = std::fs::read_dir(backups.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "same.snap")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Snapshots get the region's mode: a private store (0600, the default)
/// gives private files whatever the umask, so another user cannot read
/// a secret from a backup or from the save-on-exit file.
#[test]
fn snapshots_of_a_private_store_are_private() {
    let backups = private_dir();
    std::fs::set_permissions(backups.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exit_snap = backups.path().join("exit.snap");
    let name = unique_name("sec-private");
    let mut server = ServerGuard::start(
        &name,
        &[
            "--backup-dir",
            backups.path().to_str().unwrap(),
            "--save-on-exit",
            exit_snap.to_str().unwrap(),
        ],
    );
    kvs_client(&name, &["set", "secret", "s3cret-value"]);
    let out = kvs_client(&name, &["backup", "b.snap"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let _ = server.signal_and_wait(nix::sys::signal::Signal::SIGTERM);
    for file in [backups.path().join("b.snap"), exit_snap] {
        assert_eq!(mode_of(&file), 0o600, "{}", file.display());
        if let Some(prefix) = as_nobody() {
            let out = Command::new(&prefix[0])
                .args(&prefix[1..])
                .args(["cat", file.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(!out.status.success(), "nobody read {}", file.display());
            assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret"));
        }
    }
}

/// `--load` of a FIFO, a device or a directory is refused at once with
/// one line (no hang in `open`, no endless read), and the name is free
/// for the next server.
#[test]
fn load_refuses_what_is_not_a_regular_file() {
    let dir = private_dir();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let name = unique_name("sec-load");
    for path in [fifo.as_path(), Path::new("/dev/zero"), dir.path()] {
        let started = Instant::now();
        let child = Command::new(server_bin())
            .args(["--name", &name, "--load", path.to_str().unwrap()])
            .env_remove("KVS_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = Children(vec![child]);
        let status = wait_with_deadline(&mut child.0[0], Duration::from_secs(10))
            .unwrap_or_else(|| panic!("kvs_server --load {} hung", path.display()));
        let out = child.0.remove(0).wait_with_output().unwrap();
        assert_eq!(status.code(), Some(2), "{}: {out:?}", path.display());
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("not a regular file"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // The name was not left claimed.
    let _server = ServerGuard::start(&name, &[]);
    assert_eq!(stdout(&kvs_client(&name, &["set", "k", "v"])), "");
}
