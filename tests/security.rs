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
        let mut entries = 0;
        kvs::server::snapshot::load(
            &file,
            kvs::server::snapshot::LoadLimits {
                max_key: 1 << 10,
                max_value: 1 << 20,
            },
            |_| {
                entries += 1;
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(entries, 20_000);
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

/// The lock-file attack of the `/dev/shm` design: a link planted at
/// `/dev/shm/NAME.lock` (to a root-owned file, and a dangling one) before a
/// root `kvs_server --mode 666` starts. The server no longer uses any name
/// there, so the victim keeps its bytes and mode and no file appears at the
/// dangling target; a link planted in the server's own socket directory
/// (only its user could do that) makes it refuse to start, with one line.
#[test]
fn planted_lock_file_links_are_never_followed() {
    let outside = private_dir();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let nowhere = outside.path().join("created-by-the-server");

    let name = unique_name("sec-lockln");
    let shm_link = Path::new("/dev/shm").join(format!("{name}.lock"));
    let planted = std::os::unix::fs::symlink(&victim, &shm_link).is_ok();
    let name2 = unique_name("sec-lockln-dangling");
    let shm_dangling = Path::new("/dev/shm").join(format!("{name2}.lock"));
    let planted2 = std::os::unix::fs::symlink(&nowhere, &shm_dangling).is_ok();
    {
        let _a = ServerGuard::start(&name, &["--mode", "666"]);
        let _b = ServerGuard::start(&name2, &["--mode", "666"]);
        assert_eq!(stdout(&kvs_client(&name, &["set", "k", "v"])), "");
        assert_eq!(stdout(&kvs_client(&name2, &["set", "k", "v"])), "");
    }
    if planted {
        let _ = std::fs::remove_file(&shm_link);
    }
    if planted2 {
        let _ = std::fs::remove_file(&shm_dangling);
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(mode_of(&victim), 0o600);
    assert!(!nowhere.exists());

    // In the socket directory itself: refused, nothing followed.
    let name = unique_name("sec-lockln-dir");
    let link = lock_path(&name);
    std::fs::create_dir_all(socket_dir()).unwrap();
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let out = Command::new(server_bin())
        .args(["--name", &name, "--mode", "666"])
        .env_remove("KVS_NAME")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&link);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(mode_of(&victim), 0o600);
}

/// Another user cannot squat a name: it cannot create anything in the
/// server's socket directory, files it leaves in `/dev/shm` (the old lock
/// file, mode 0666, locked) change nothing, and a server it runs under the
/// same name lives in its own directory, where root's clients never look.
#[test]
fn another_user_cannot_squat_a_name() {
    let Some(nobody) = as_nobody() else {
        return;
    };
    let name = unique_name("sec-squat");
    // The old squat: a 0666 lock file in /dev/shm, its client bytes held
    // with record locks (which the old design's OFD locks conflicted with).
    let shm_lock = Path::new("/dev/shm").join(format!("{name}.lock"));
    let script = format!(
        "import fcntl, os, time\n\
         os.umask(0)\n\
         f = open({path:?}, 'a+')\n\
         fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 256, 1, 0)\n\
         print('held', flush=True)\n\
         time.sleep(30)\n",
        path = shm_lock.to_str().unwrap()
    );
    let mut holder = Children(Vec::new());
    if let Ok(mut h) = Command::new(&nobody[0])
        .args(&nobody[1..])
        .args(["python3", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        let _ = first_line(&mut h, Duration::from_secs(5));
        holder.0.push(h);
    }
    // Nobody cannot plant anything in the socket directory.
    std::fs::create_dir_all(socket_dir()).unwrap();
    let out = Command::new(&nobody[0])
        .args(&nobody[1..])
        .args(["touch", lock_path(&name).to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "nobody created a file in the socket directory"
    );
    // A server of nobody under the same name: its own directory.
    let mut squatter = Command::new(&nobody[0])
        .args(&nobody[1..])
        .arg(server_bin())
        .args(["--name", &name, "--no-keeper"])
        .env_remove("KVS_NAME")
        .env_remove("KVS_SOCKET_DIR")
        .env_remove("XDG_RUNTIME_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let squatter_line = first_line(&mut squatter, Duration::from_secs(10));
    holder.0.push(squatter);
    assert!(
        squatter_line
            .as_deref()
            .is_some_and(|l| l.contains("ready")),
        "{squatter_line:?}"
    );
    // Root's clients do not find it: no server of root has the name yet.
    let out = kvs_client(&name, &["get", "k"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("no kvs server"), "{}", stderr(&out));
    // Root's server starts, and root's clients use it.
    let _server = ServerGuard::start(&name, &[]);
    for i in 0..20 {
        let out = kvs_client(&name, &["set", &format!("k{i}"), "v"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    assert_eq!(stdout(&kvs_client(&name, &["get", "k7"])), "v");
    for c in &mut holder.0 {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::remove_file(&shm_lock);
    let _ = std::fs::remove_dir_all(format!("/tmp/kvs-{}", nobody_uid()));
}

fn nobody_uid() -> u32 {
    nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .map_or(65534, |u| u.uid.as_raw())
}

/// A socket whose listening process runs as another user than its
/// directory's owner is refused by the client, which never sends it
/// anything it would trust: a squatter cannot impersonate the server even
/// where it managed to bind a socket.
#[test]
fn a_client_refuses_a_server_of_the_wrong_user() {
    if as_nobody().is_none() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("kvs-sec-imp-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let name = "impostor";
    let path = dir.path().join(format!("{name}.sock"));
    let uid = nobody_uid();
    // Bound by root (so the file and its directory look right), listening
    // as nobody (which is what SO_PEERCRED reports).
    let script = format!(
        "import socket, os, sys, time\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n\
         s.bind({path:?})\n\
         os.chmod({path:?}, 0o666)\n\
         os.setgid({uid}); os.setuid({uid})\n\
         s.listen()\n\
         print('listening', flush=True)\n\
         c, _ = s.accept()\n\
         time.sleep(5)\n",
        path = path.to_str().unwrap(),
    );
    let Ok(mut impostor) = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
    else {
        eprintln!("skipped: no python3 to play the impostor");
        return;
    };
    let line = first_line(&mut impostor, Duration::from_secs(10));
    let _impostor = Children(vec![impostor]);
    assert_eq!(line.as_deref(), Some("listening"));
    let out = output_within({
        let mut c = kvs_client_command::<&str>(&[], name, &["get", "k"]);
        c.env("KVS_SOCKET_DIR", dir.path());
        c
    })
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("refusing") && err.contains(&format!("uid {uid}")),
        "{err}"
    );

    // A directory others may write into is refused outright.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = output_within({
        let mut c = kvs_client_command::<&str>(&[], name, &["get", "k"]);
        c.env("KVS_SOCKET_DIR", dir.path());
        c
    })
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr(&out).contains("writable by other users"),
        "{}",
        stderr(&out)
    );
}

/// Truncating the region, the attack that killed the `/dev/shm` design
/// with SIGBUS, fails: the memfd every client receives is sealed against
/// shrinking and growing. Another user cannot reach the server's
/// descriptors through `/proc` either. The server keeps serving.
#[test]
fn the_region_cannot_be_truncated_and_the_server_survives_trying() {
    let name = unique_name("sec-trunc");
    let server = ServerGuard::start(&name, &["--mode", "666"]);
    kvs_client(&name, &["set", "k", "before"]);
    // The old way in, should a region still be there.
    if let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .open(Path::new("/dev/shm").join(&name))
    {
        let _ = f.set_len(0);
    }
    // Through the descriptor the server hands out.
    let session = kvs::core::region::Session::connect(
        &name,
        kvs::core::region::handshake::Kind::Probe,
        &kvs::core::region::ConnectOptions::default(),
    )
    .unwrap();
    let file = std::fs::File::from(session.memfd().try_clone_to_owned().unwrap());
    let size = file.metadata().unwrap().len();
    assert!(file.set_len(0).is_err(), "the region could be shrunk");
    assert!(file.set_len(size * 2).is_err(), "the region could be grown");
    assert!(
        nix::fcntl::fcntl(
            &file,
            nix::fcntl::FcntlArg::F_ADD_SEALS(nix::fcntl::SealFlag::empty())
        )
        .is_err(),
        "the seals could still be changed"
    );
    assert_eq!(file.metadata().unwrap().len(), size);
    // Another user cannot open the server's descriptors through /proc.
    if let Some(nobody) = as_nobody() {
        let out = Command::new(&nobody[0])
            .args(&nobody[1..])
            .args(["sh", "-c", &format!("ls /proc/{}/fd/", server.pid())])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "nobody listed the server's descriptors"
        );
    }
    // Still serving, with the data intact.
    assert_eq!(stdout(&kvs_client(&name, &["get", "k"])), "before");
    assert_eq!(stdout(&kvs_client(&name, &["set", "k", "after"])), "");
    assert_eq!(stdout(&kvs_client(&name, &["get", "k"])), "after");
}
