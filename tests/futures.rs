//! Tickets as futures, against the real `kvs_server`: on tokio and on a
//! hand-written executor, many requests awaited by one thread, no busy
//! polling while the server is stopped, timeouts and a dead server ending
//! an await instead of hanging it, and cancelled awaits leaking nothing.

mod common;

use common::*;
use kvs::{ClientError, KVSClient};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

type Client = KVSClient<Vec<u8>, Vec<u8>>;

fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Counts the polls of the future it wraps.
struct Counted<F> {
    inner: F,
    polls: Arc<AtomicUsize>,
}

impl<F: Future + Unpin> Future for Counted<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll(cx)
    }
}

/// The smallest executor there is: park the thread until woken.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('T')
        })
        .unwrap_or(false)
}

/// Stops the server (SIGSTOP) and waits until it is stopped.
fn pause(server: &ServerGuard) {
    kill(Pid::from_raw(server.pid() as i32), Signal::SIGSTOP).unwrap();
    let give_up = Instant::now() + Duration::from_secs(5);
    while !stopped(server.pid()) {
        assert!(Instant::now() < give_up, "the server did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn resume(server: &ServerGuard) {
    kill(Pid::from_raw(server.pid() as i32), Signal::SIGCONT).unwrap();
}

#[test]
fn a_thousand_awaits_on_one_tokio_thread_all_complete() {
    let name = unique_name("fut-tokio");
    let _server = ServerGuard::start(&name, &["--workers", "2"]);
    let client = Arc::new(Client::connect(&name).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..1000u32 {
            let c = Arc::clone(&client);
            tasks.push(tokio::spawn(async move {
                let key = format!("fut:{i}").into_bytes();
                c.set_async(&key, &i.to_string().into_bytes())?.await?;
                let n = c.incr_async(&k("fut:counter"), 1)?.await?;
                let back = c.get_async(&key)?.await?;
                assert_eq!(back, Some(i.to_string().into_bytes()));
                Ok::<i64, ClientError>(n)
            }));
        }
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(t.await.unwrap().unwrap());
        }
        seen.sort_unstable();
        // Every increment counted once: the answers are 1..=1000.
        assert_eq!(seen, (1..=1000).collect::<Vec<i64>>());
        // One await after another: each is woken by the server's doorbell
        // as its answer lands, not by the reactor's next liveness slice
        // (20 ms: 500 of them would take 5 s or more).
        let started = Instant::now();
        for i in 0..500 {
            let n = client.incr_async(&k("fut:seq"), 1)?.await?;
            assert_eq!(n, i + 1);
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "500 awaits took {took:?}");
        // The batch calls as futures.
        let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..5000u32)
            .map(|i| (format!("many:{i}").into_bytes(), vec![b'v'; 100]))
            .collect();
        client.set_many_async(&entries).await.unwrap();
        let keys: Vec<Vec<u8>> = entries.iter().map(|(k, _)| k.clone()).collect();
        let values = client.get_many_async(&keys).await.unwrap();
        assert!(values
            .iter()
            .all(|v| v.as_deref() == Some(&[b'v'; 100][..])));
        assert_eq!(client.del_many_async(&keys).await.unwrap(), 5000);
        Ok::<(), ClientError>(())
    })
    .unwrap();
}

#[test]
fn an_await_sleeps_while_the_server_is_stopped_and_any_executor_wakes() {
    let name = unique_name("fut-sleep");
    let server = ServerGuard::start(&name, &["--workers", "1"]);
    let client = Client::connect(&name).unwrap();
    // Warm the reactor up, on the hand-written executor.
    assert_eq!(block_on(client.incr_async(&k("c"), 5).unwrap()).unwrap(), 5);

    pause(&server);
    let polls = Arc::new(AtomicUsize::new(0));
    let ticket = client.incr_async(&k("c"), 1).unwrap();
    let resumer = {
        let pid = server.pid();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            kill(Pid::from_raw(pid as i32), Signal::SIGCONT).unwrap();
        })
    };
    let started = Instant::now();
    let got = block_on(Counted {
        inner: ticket,
        polls: Arc::clone(&polls),
    });
    resumer.join().unwrap();
    assert_eq!(got.unwrap(), 6);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Woken by the answer (and at most a few liveness slices), not polled
    // in a loop: a busy poll would count in the thousands.
    let n = polls.load(Ordering::Relaxed);
    assert!(n <= 40, "polled {n} times in 400 ms");
}

#[test]
fn an_await_times_out_and_ends_when_the_server_dies() {
    let name = unique_name("fut-end");
    let mut server = ServerGuard::start(&name, &["--workers", "1"]);
    let client = Client::connect(&name).unwrap();
    client.set(&k("a"), &k("1")).unwrap();

    pause(&server);
    let started = Instant::now();
    let timed_out = block_on(
        client
            .set_async(&k("a"), &k("2"))
            .unwrap()
            .with_timeout(Duration::from_millis(200)),
    );
    assert!(
        matches!(timed_out, Err(ClientError::Timeout { .. })),
        "{timed_out:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    // A cancelled await (dropped mid-way) gives its slot back.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..50 {
            let t = client.set_async(&k("b"), &k("x")).unwrap();
            assert!(tokio::time::timeout(Duration::from_millis(2), t)
                .await
                .is_err());
        }
    });
    resume(&server);
    let give_up = Instant::now() + Duration::from_secs(5);
    let slots = probe(&name).info().slot_count as usize;
    loop {
        let free = probe(&name).slots().free_count();
        if free == slots {
            break;
        }
        assert!(Instant::now() < give_up, "{free} of {slots} slots free");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A server that dies ends a pending await with ServerGone.
    pause(&server);
    let ticket = client.set_async(&k("a"), &k("3")).unwrap();
    let killer = {
        let pid = server.pid();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        })
    };
    let started = Instant::now();
    let gone = block_on(ticket);
    killer.join().unwrap();
    assert!(matches!(gone, Err(ClientError::ServerGone)), "{gone:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let _ = server.signal_and_wait(Signal::SIGKILL);
}

/// A waker that panics (an executor torn down under its tasks) does not
/// take the connection's reactor with it: other awaits still complete.
#[test]
fn a_panicking_waker_does_not_stop_other_awaits() {
    struct Bomb;
    impl Wake for Bomb {
        fn wake(self: Arc<Self>) {
            panic!("this executor is gone");
        }
    }
    let name = unique_name("fut-bomb");
    let server = ServerGuard::start(&name, &["--workers", "1"]);
    let client = Client::connect(&name).unwrap();
    assert_eq!(block_on(client.incr_async(&k("n"), 1).unwrap()).unwrap(), 1);

    pause(&server);
    let bomb = Waker::from(Arc::new(Bomb));
    let mut doomed = client.incr_async(&k("n"), 1).unwrap();
    let first = Pin::new(&mut doomed).poll(&mut Context::from_waker(&bomb));
    assert!(first.is_pending());
    resume(&server);
    // The reactor wakes the bomb (and survives it); then a well-behaved
    // await on the same connection that has to wait for the reactor.
    std::thread::sleep(Duration::from_millis(200));
    pause(&server);
    let resumer = {
        let pid = server.pid();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            kill(Pid::from_raw(pid as i32), Signal::SIGCONT).unwrap();
        })
    };
    let started = Instant::now();
    let got = block_on(client.incr_async(&k("n"), 1).unwrap());
    resumer.join().unwrap();
    assert_eq!(got.unwrap(), 3);
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(doomed);
}

/// A poll that panics inside foreign code (a waker whose clone panics)
/// leaves the request in its ticket: dropping the ticket gives the slot
/// back, nothing leaks.
#[test]
fn a_poll_that_panics_in_a_waker_leaks_no_slot() {
    use std::task::{RawWaker, RawWakerVTable};
    fn clone(_: *const ()) -> RawWaker {
        panic!("this waker cannot be cloned");
    }
    fn noop(_: *const ()) {}
    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, noop, noop, noop);
    // SAFETY: the vtable's functions ignore the data pointer (null).
    let waker = unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VTABLE)) };

    let name = unique_name("fut-unwind");
    let server = ServerGuard::start(&name, &["--workers", "1"]);
    let client = Client::connect(&name).unwrap();
    pause(&server);
    let mut ticket = client.set_async(&k("a"), &k("1")).unwrap();
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = Pin::new(&mut ticket).poll(&mut Context::from_waker(&waker));
    }));
    assert!(polled.is_err(), "the waker's clone should have panicked");
    drop(ticket);
    resume(&server);
    let slots = probe(&name).info().slot_count as usize;
    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        let free = probe(&name).slots().free_count();
        if free == slots {
            break;
        }
        assert!(Instant::now() < give_up, "{free} of {slots} slots free");
        std::thread::sleep(Duration::from_millis(20));
    }
}
