//! Multi-process tests of the keeper (`kvs_server::keeper`).
//!
//! The keeper is this test binary itself, re-executed so that it runs only
//! the ignored test `keeper_entry` with the extra (never matching) filter
//! `kvs-keeper-mode`, which makes that entry call `run_keeper()`. Each test
//! uses a private temporary socket directory and its own region name, and
//! kills whatever it started if it fails; every wait is bounded.

use kvs_server::keeper::{self, Keeper, SpawnOptions};
use memmap2::{Mmap, MmapMut};
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The extra filter that puts this binary in keeper mode.
const KEEPER_MARK: &str = "kvs-keeper-mode";
/// The extra filter that makes it a server that spawns a keeper and waits
/// to be killed.
const SERVER_MARK: &str = "kvs-keeper-test-server";
const DIR_ENV: &str = "KVS_KEEPER_TEST_DIR";
const NAME_ENV: &str = "KVS_KEEPER_TEST_NAME";

/// How long any wait of these tests lasts at most.
const LIMIT: Duration = Duration::from_secs(10);

const STORE_LEN: usize = 64 * 1024;

/// Keeper mode of this binary (see the module docs).
#[test]
#[ignore = "the keeper mode of this test binary, run by the other tests"]
fn keeper_entry() {
    if std::env::args().any(|a| a == KEEPER_MARK) {
        keeper::run_keeper();
    }
}

/// A server that spawns a keeper for `$KVS_KEEPER_TEST_NAME` in
/// `$KVS_KEEPER_TEST_DIR`, prints `KEEPER <pid>` and waits to be killed.
#[test]
#[ignore = "a server process of the process-group test"]
fn server_entry() {
    if !std::env::args().any(|a| a == SERVER_MARK) {
        return;
    }
    let dir = PathBuf::from(std::env::var_os(DIR_ENV).expect("socket dir"));
    let name = std::env::var(NAME_ENV).expect("name");
    let store = store_with(b"written by a server that was killed");
    let keeper = Keeper::spawn(&exe(), &keeper_args(), &name, &dir, store.as_fd(), 77).unwrap();
    println!("KEEPER {}", keeper.pid());
    // Bounded: the test kills this process long before.
    std::thread::sleep(Duration::from_secs(30));
    let _ = keeper.discard();
}

fn exe() -> PathBuf {
    std::env::current_exe().unwrap()
}

fn keeper_args() -> [&'static str; 7] {
    [
        "keeper_entry",
        KEEPER_MARK,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ]
}

/// A private socket directory and a region name of one test.
struct Scratch {
    _dir: tempfile::TempDir,
    path: PathBuf,
    name: String,
}

impl Scratch {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = tempfile::Builder::new().prefix("kvsk-").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let path = dir.path().to_path_buf();
        let name = format!(
            "{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        Self {
            _dir: dir,
            path,
            name,
        }
    }

    fn socket(&self) -> PathBuf {
        self.path.join(keeper::keeper_file(&self.name))
    }

    fn spawn(&self, store: &File, store_id: u64) -> (Keeper, Reaper) {
        self.spawn_with(store, store_id, &SpawnOptions::default())
    }

    fn spawn_with(&self, store: &File, store_id: u64, options: &SpawnOptions) -> (Keeper, Reaper) {
        let keeper = Keeper::spawn_with(
            &exe(),
            &keeper_args(),
            &self.name,
            &self.path,
            store.as_fd(),
            store_id,
            options,
        )
        .unwrap();
        let reaper = Reaper(Some(keeper.pid()));
        (keeper, reaper)
    }

    fn adopt(&self) -> io::Result<Option<(OwnedFd, u64, Keeper)>> {
        keeper::adopt(&self.name, &self.path)
    }
}

impl Drop for Scratch {
    /// A test that failed may have left a keeper holding: let it go.
    fn drop(&mut self) {
        let _ = keeper::discard_orphan(&self.name, &self.path);
    }
}

/// Kills a keeper on drop, unless it was seen to exit (a failed test must
/// not leave one behind).
struct Reaper(Option<u32>);

impl Reaper {
    fn exited(&mut self) {
        self.0 = None;
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let pid = Pid::from_raw(pid as i32);
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// A child process killed (and reaped) on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A sealed memfd of `STORE_LEN` bytes that start with `bytes`.
fn store_with(bytes: &[u8]) -> File {
    let file =
        kvs_core::region::memfd::create("keeper-test", STORE_LEN as u64, STORE_LEN as u64).unwrap();
    // SAFETY: the memfd is this test's own, nobody truncates it (it is
    // sealed against shrinking), and the mapping is dropped here.
    let mut map = unsafe { MmapMut::map_mut(&file) }.unwrap();
    map[..bytes.len()].copy_from_slice(bytes);
    file
}

/// The first `len` bytes of a store received from a keeper, through a
/// mapping of it.
fn read_store(store: &OwnedFd, len: usize) -> Vec<u8> {
    // SAFETY: the store is a sealed memfd (it cannot shrink under the
    // mapping); the mapping is dropped before returning.
    let map = unsafe { Mmap::map(store) }.unwrap();
    assert_eq!(map.len(), STORE_LEN);
    map[..len].to_vec()
}

/// Writes `bytes` at the start of a received store.
fn write_store(store: &OwnedFd, bytes: &[u8]) {
    // SAFETY: as in `read_store`.
    let mut map = unsafe { MmapMut::map_mut(store) }.unwrap();
    map[..bytes.len()].copy_from_slice(bytes);
}

/// The state letter of `/proc/PID/stat` (`None`: no such process).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok() && !matches!(proc_state(pid), Some('Z') | None)
}

/// Waits (`LIMIT` at most) for `pid` to exit, reaping it if it is our
/// child; whether it did.
fn wait_exited(pid: u32) -> bool {
    let deadline = Instant::now() + LIMIT;
    let p = Pid::from_raw(pid as i32);
    loop {
        match waitpid(p, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) => return true,
            // Not our child (reparented, or already reaped).
            Err(Errno::ECHILD) => {
                if !alive(pid) {
                    return true;
                }
            }
            Err(e) => panic!("waitpid {pid}: {e}"),
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A raw connection to a keeper's socket, as any process of the user can
/// make.
fn raw_connect(path: &Path) -> OwnedFd {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    fd
}

/// Reads from a raw connection until the keeper closes it; panics if it
/// does not within `LIMIT` (the keeper hung on us, or kept a peer it should
/// have dropped).
fn wait_closed(fd: &OwnedFd) {
    let deadline = Instant::now() + LIMIT;
    let mut buf = [0u8; 1024];
    loop {
        match socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(Errno::EAGAIN) => {}
            Err(Errno::ECONNRESET) => return,
            Err(e) => panic!("recv: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the keeper did not drop a peer that sent garbage"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_dead_servers_store_is_adopted_with_its_bytes() {
    let s = Scratch::new("adopt");
    let bytes = b"the store of a server that died";
    let store = store_with(bytes);
    let (keeper, mut reaper) = s.spawn(&store, 0xfeed_0001);
    let pid = keeper.pid();

    // Its socket: there, private, a socket.
    let meta = std::fs::symlink_metadata(s.socket()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Detached: a session of its own; descriptors 0-3, the store and the
    // listener only (where /proc lets us look).
    assert_eq!(
        nix::unistd::getsid(Some(Pid::from_raw(pid as i32))).unwrap(),
        Pid::from_raw(pid as i32)
    );
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        let mut fds: Vec<(i32, String)> = fds
            .map(|e| {
                let e = e.unwrap();
                let target = std::fs::read_link(e.path()).unwrap_or_default();
                (
                    e.file_name().to_str().unwrap().parse().unwrap(),
                    target.to_string_lossy().into_owned(),
                )
            })
            .collect();
        fds.sort_unstable();
        let numbers: Vec<i32> = fds.iter().map(|(fd, _)| *fd).collect();
        // 0-2 (/dev/null), 3 (the socketpair), then the store, the socket
        // directory and the listener, in some order.
        assert_eq!(numbers, [0, 1, 2, 3, 4, 5, 6], "{fds:?}");
        assert!(fds[..3].iter().all(|(_, t)| t == "/dev/null"), "{fds:?}");
        let rest = &fds[4..];
        let count = |f: &dyn Fn(&str) -> bool| rest.iter().filter(|(_, t)| f(t)).count();
        assert_eq!(
            count(&|t| t.starts_with("/memfd:kvs:keeper-test")),
            1,
            "{fds:?}"
        );
        assert_eq!(count(&|t| Path::new(t) == s.path), 1, "{fds:?}");
        assert_eq!(count(&|t| t.starts_with("socket:")), 1, "{fds:?}");
    }
    if let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) {
        assert_eq!(cwd, Path::new("/"));
    }

    // The server dies: every descriptor and mapping of the store, and its
    // end of the socketpair, go.
    drop(keeper);
    drop(store);
    assert!(alive(pid));

    let (adopted, id, keeper) = s.adopt().unwrap().expect("the keeper holds the store");
    assert_eq!(id, 0xfeed_0001);
    assert_eq!(keeper.pid(), pid);
    assert_eq!(read_store(&adopted, bytes.len()), bytes);

    // The adopter writes and dies in turn; the next one sees its bytes.
    write_store(&adopted, b"second generation");
    drop(adopted);
    drop(keeper);
    let (adopted, id, keeper) = s.adopt().unwrap().expect("held again");
    assert_eq!(id, 0xfeed_0001);
    assert_eq!(read_store(&adopted, 17), b"second generation");

    keeper.discard().unwrap();
    assert!(wait_exited(pid), "the keeper did not exit after discard");
    reaper.exited();
    assert!(!s.socket().exists());
}

#[test]
fn discard_stops_the_keeper_and_removes_its_socket() {
    let s = Scratch::new("discard");
    let store = store_with(b"x");
    let (keeper, mut reaper) = s.spawn(&store, 1);
    assert!(s.socket().exists());
    // Waits for the keeper's confirmation and reaps it (its exit status 0).
    keeper.discard().unwrap();
    reaper.exited();
    assert!(!s.socket().exists());
    assert!(s.adopt().unwrap().is_none());

    // A stale socket file (nobody listens) means no keeper, and goes.
    drop(std::os::unix::net::UnixListener::bind(s.socket()).unwrap());
    assert!(s.socket().exists());
    assert!(s.adopt().unwrap().is_none());
    assert!(!s.socket().exists());
}

#[test]
fn a_second_adopter_is_refused_while_the_first_lives() {
    let s = Scratch::new("busy");
    let store = store_with(b"busy");
    let (spawned, mut reaper) = s.spawn(&store, 2);
    let pid = spawned.pid();

    // The spawning server lives: nobody else gets the store.
    let err = s.adopt().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ResourceBusy, "{err}");

    drop(spawned);
    let (first, _, first_keeper) = s.adopt().unwrap().expect("adopted");
    let err = s.adopt().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ResourceBusy, "{err}");
    assert!(err.to_string().contains("live server"), "{err}");

    // Only once the first adopter's connection ends.
    drop(first_keeper);
    drop(first);
    let (second, _, second_keeper) = s.adopt().unwrap().expect("adopted again");
    assert_eq!(read_store(&second, 4), b"busy");
    second_keeper.discard().unwrap();
    assert!(wait_exited(pid));
    reaper.exited();
}

#[test]
fn garbage_does_not_kill_or_hang_the_keeper() {
    let s = Scratch::new("garbage");
    let bytes = b"survives garbage";
    let store = store_with(bytes);
    let (spawned, mut reaper) = s.spawn(&store, 3);
    let pid = spawned.pid();

    // While its server lives, a newcomer is answered and closed, whatever
    // it sends.
    let peer = raw_connect(&s.socket());
    let _ = socket::send(peer.as_raw_fd(), &[0xAA; 64], MsgFlags::MSG_NOSIGNAL);
    wait_closed(&peer);

    // With no server: each peer gets the store, sends garbage, and is
    // dropped.
    drop(spawned);
    drop(store);
    let header = |version: u32, kind: u32| {
        let mut m = b"kvsKEEP\x01".to_vec();
        m.extend_from_slice(&version.to_le_bytes());
        m.extend_from_slice(&kind.to_le_bytes());
        m
    };
    let mut lying_hold = header(1, 1);
    lying_hold.extend_from_slice(&[0u8; 16]);
    lying_hold.extend_from_slice(&u16::MAX.to_le_bytes());
    lying_hold.extend_from_slice(&u16::MAX.to_le_bytes());
    let mut long_discard = header(1, 6);
    long_discard.push(0);
    let garbage: Vec<Vec<u8>> = vec![
        vec![0xAA; 4096],        // longer than any message
        vec![1, 2, 3],           // shorter than a header
        header(2, 6),            // a Discard of another version
        header(1, 99),           // an unknown kind
        header(1, 4),            // a Store, to the keeper, without fields
        lying_hold,              // lengths past the end
        long_discard,            // trailing bytes
        b"kvsKEEP\x01".to_vec(), // a bare magic
    ];
    for msg in &garbage {
        let peer = raw_connect(&s.socket());
        let _ = socket::send(peer.as_raw_fd(), msg, MsgFlags::MSG_NOSIGNAL);
        wait_closed(&peer);
        assert!(alive(pid), "the keeper died of {msg:?}");
    }
    // A descriptor with a message that must not carry one.
    {
        let peer = raw_connect(&s.socket());
        let devnull = File::open("/dev/null").unwrap();
        let fds = [devnull.as_raw_fd()];
        let _ = socket::sendmsg::<()>(
            peer.as_raw_fd(),
            &[io::IoSlice::new(&header(1, 6))],
            &[socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
        wait_closed(&peer);
    }
    // A flood, and a peer that says nothing and leaves.
    {
        let peer = raw_connect(&s.socket());
        for _ in 0..100 {
            if socket::send(peer.as_raw_fd(), &[0x55; 100], MsgFlags::MSG_NOSIGNAL).is_err() {
                break;
            }
        }
        wait_closed(&peer);
        drop(raw_connect(&s.socket()));
    }

    assert!(alive(pid));
    let (adopted, id, keeper) = s.adopt().unwrap().expect("still holding");
    assert_eq!(id, 3);
    assert_eq!(read_store(&adopted, bytes.len()), bytes);
    keeper.discard().unwrap();
    assert!(wait_exited(pid));
    reaper.exited();
}

#[test]
fn discard_orphan_discards_only_an_orphan() {
    let s = Scratch::new("orphan");
    let store = store_with(b"orphan");
    let (spawned, mut reaper) = s.spawn(&store, 4);
    let pid = spawned.pid();

    // Not an orphan while its server lives.
    let err = keeper::discard_orphan(&s.name, &s.path).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ResourceBusy, "{err}");
    assert!(alive(pid));

    drop(spawned);
    assert!(keeper::discard_orphan(&s.name, &s.path).unwrap());
    assert!(wait_exited(pid), "the orphan did not exit");
    reaper.exited();
    assert!(!s.socket().exists());

    let none = Scratch::new("no-orphan");
    assert!(!keeper::discard_orphan(&none.name, &none.path).unwrap());
    assert!(!keeper::discard_orphan(&s.name, &s.path).unwrap());
}

#[test]
fn the_keeper_survives_a_kill_of_its_servers_process_group() {
    let s = Scratch::new("pgroup");
    // A server in a process group of its own (so that killing the group
    // kills nothing of this test's), which spawns a keeper.
    let mut server = ChildGuard(
        Command::new(exe())
            .args([
                "server_entry",
                SERVER_MARK,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(DIR_ENV, &s.path)
            .env(NAME_ENV, &s.name)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = server.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest's "test server_entry ... " may precede it on the line.
            if let Some((_, pid)) = line.split_once("KEEPER ") {
                let _ = tx.send(pid.trim().parse::<u32>().unwrap());
            }
        }
    });
    let pid = rx
        .recv_timeout(LIMIT)
        .expect("the server did not report its keeper");
    let mut reaper = Reaper(Some(pid));
    assert_eq!(
        nix::unistd::getsid(Some(Pid::from_raw(pid as i32))).unwrap(),
        Pid::from_raw(pid as i32),
        "the keeper is not in a session of its own"
    );

    // Kill the server's whole process group, as a Ctrl+C or a service
    // manager would.
    let group = Pid::from_raw(server.0.id() as i32);
    killpg(group, Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + LIMIT;
    while server.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server outlived SIGKILL");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        alive(pid),
        "the keeper died with its server's process group"
    );

    let (adopted, id, keeper) = s.adopt().unwrap().expect("the keeper holds the store");
    assert_eq!(id, 77);
    let bytes = b"written by a server that was killed";
    assert_eq!(read_store(&adopted, bytes.len()), bytes);
    keeper.discard().unwrap();
    assert!(wait_exited(pid));
    reaper.exited();
}

#[test]
fn terminal_signals_do_not_end_the_keeper_and_a_stopped_one_does_not_hang_adopt() {
    let s = Scratch::new("signals");
    let store = store_with(b"signals");
    let (spawned, mut reaper) = s.spawn(&store, 8);
    let pid = spawned.pid();
    let p = Pid::from_raw(pid as i32);
    drop(spawned);

    for sig in [Signal::SIGINT, Signal::SIGHUP, Signal::SIGPIPE] {
        kill(p, sig).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(alive(pid), "a terminal's signal ended the keeper");

    // Stopped: adopt gives up within its bounds instead of hanging.
    kill(p, Signal::SIGSTOP).unwrap();
    // `kill` returns before the keeper has stopped: until it has, it may
    // still answer (a race seen in CI), so wait for the stopped state.
    let stopping = Instant::now();
    while !stopped(pid) {
        assert!(stopping.elapsed() < LIMIT, "the keeper did not stop");
        std::thread::sleep(Duration::from_millis(1));
    }
    let started = Instant::now();
    let err = s.adopt().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(started.elapsed() < LIMIT);
    kill(p, Signal::SIGCONT).unwrap();

    let (adopted, id, keeper) = s.adopt().unwrap().expect("held after SIGCONT");
    assert_eq!(id, 8);
    assert_eq!(read_store(&adopted, 7), b"signals");
    keeper.discard().unwrap();
    assert!(wait_exited(pid));
    reaper.exited();
}

#[test]
fn an_idle_keeper_lets_go_after_its_limit() {
    let s = Scratch::new("idle");
    let store = store_with(b"idle");
    let options = SpawnOptions {
        idle_limit: Some(Duration::from_millis(200)),
        ..SpawnOptions::default()
    };
    let (spawned, mut reaper) = s.spawn_with(&store, 5, &options);
    let pid = spawned.pid();
    // Not idle while its server lives.
    std::thread::sleep(Duration::from_millis(400));
    assert!(alive(pid));
    assert!(!spawned.is_gone());

    drop(spawned);
    assert!(wait_exited(pid), "the idle keeper did not exit");
    reaper.exited();
    assert!(!s.socket().exists());
    assert!(s.adopt().unwrap().is_none());
}

#[test]
fn spawn_says_why_a_keeper_could_not_start() {
    let s = Scratch::new("fail");
    let store = store_with(b"fail");
    let spawn = |program: &Path, args: &[&str], dir: &Path| {
        let started = Instant::now();
        let r = Keeper::spawn(program, args, &s.name, dir, store.as_fd(), 6);
        assert!(
            started.elapsed() < LIMIT,
            "spawn took {:?}",
            started.elapsed()
        );
        r.map(|k| k.pid())
    };

    // No such program.
    let err = spawn(Path::new("/nonexistent/kvs"), &[], &s.path).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    // A program without a keeper mode exits, or ignores descriptor 3.
    let err = spawn(Path::new("/bin/sh"), &["-c", "exit 3"], &s.path).unwrap_err();
    assert!(err.to_string().contains("exited"), "{err}");
    let err = spawn(Path::new("/bin/sh"), &["-c", "sleep 30"], &s.path).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    // A socket directory that is not there.
    let missing = s.path.join("missing");
    let err = spawn(&exe(), &keeper_args(), &missing).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
    // A bad name never reaches a keeper.
    let err = Keeper::spawn(&exe(), &keeper_args(), "a/b", &s.path, store.as_fd(), 6).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    assert!(!s.socket().exists());

    // A second keeper of a name whose keeper lives refuses to start (it
    // would orphan the first), and the first still holds its store.
    let (first, mut reaper) = s.spawn(&store, 6);
    let pid = first.pid();
    let err = spawn(&exe(), &keeper_args(), &s.path).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    drop(first);
    let (adopted, id, keeper) = s.adopt().unwrap().expect("the first keeper still holds");
    assert_eq!(id, 6);
    drop(adopted);
    keeper.discard().unwrap();
    assert!(wait_exited(pid));
    reaper.exited();
}

/// A keeper without a server whose socket directory is removed (a `/tmp`
/// cleaner, a test tidying up) can never be reached again: it notices
/// within its check period and exits instead of holding the store for
/// nobody.
#[test]
fn a_keeper_nobody_can_reach_lets_go() {
    let s = Scratch::new("unreachable");
    let store = store_with(b"orphan");
    let (spawned, mut reaper) = s.spawn(&store, 9);
    let pid = spawned.pid();
    drop(spawned); // the server's crash: the keeper holds on
    std::thread::sleep(Duration::from_millis(100));
    assert!(alive(pid));
    std::fs::remove_file(s.socket()).unwrap();
    std::fs::remove_dir(&s.path).unwrap();
    assert!(wait_exited(pid), "the unreachable keeper did not exit");
    reaper.exited();
}

/// Whether process `pid` is stopped (state `T` in `/proc/PID/stat`).
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name's closing parenthesis.
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|state| state == "T")
        })
        .unwrap_or(false)
}
