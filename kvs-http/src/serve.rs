//! Serving connections: how many at once, and for how long each may idle.
//!
//! `axum::serve` accepts without bound and sets no timer, so a thousand
//! connections that send half a request head and then nothing hold a
//! thousand file descriptors forever, and once the process's file limit is
//! reached `accept` fails for everyone. This loop bounds all three:
//!
//! * **connections**: a [`Semaphore`] permit per connection; at the limit
//!   the loop stops accepting, so newcomers wait in the kernel's backlog
//!   instead of costing a descriptor, and `accept` never sees `EMFILE`.
//!   [`raise_file_limit`] lifts the soft descriptor limit to the hard one at
//!   start and [`Limits::fit_file_limit`] keeps the connection limit below it.
//!   At the limit, the connection that has gone longest without a request
//!   in flight (one still sending its first head, or idle between requests)
//!   is closed to make room, so a flood of connections that never complete
//!   a request cannot keep a real client out until their timeouts run;
//! * **request heads and idle keep-alive**: hyper's `header_read_timeout`
//!   (hyper 1.6 and later start it again while a kept-alive connection waits
//!   for its next request), so a connection that sends no complete head in
//!   time is closed;
//! * **request bodies**: `tower_http`'s `RequestBodyTimeoutLayer` (see
//!   [`crate::app`]), so a body trickled a byte at a time ends too.
//!
//! Event streams (`/events`) are long-lived on purpose and count against the
//! connection limit like any other connection.

use axum::body::Body;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tower_http::timeout::RequestBodyTimeout;

/// Descriptors kept free for everything that is not a connection (the
/// store's mapping and socket, logging, the runtime).
const RESERVED_FDS: u64 = 64;

/// How long a graceful shutdown waits for connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A connection is closed to make room only after it has gone this long
/// without a request in flight: a real client's head arrives well within.
const EVICT_AFTER: Duration = Duration::from_millis(250);

/// One open connection as the roster knows it.
#[derive(Debug)]
struct Member {
    /// Requests in flight (their response bodies not yet finished).
    in_flight: usize,
    /// When it last had none in flight (its opening, at first).
    idle_since: Instant,
    /// Told to close the connection.
    evict: Arc<Notify>,
}

/// The open connections, so that at the limit the one idle longest can be
/// closed to make room.
#[derive(Debug, Default)]
struct Roster {
    members: Mutex<HashMap<u64, Member>>,
    next: AtomicU64,
}

impl Roster {
    fn members(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Member>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn join(&self) -> (u64, Arc<Notify>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let evict = Arc::new(Notify::new());
        self.members().insert(
            id,
            Member {
                in_flight: 0,
                idle_since: Instant::now(),
                evict: Arc::clone(&evict),
            },
        );
        (id, evict)
    }

    fn leave(&self, id: u64) {
        self.members().remove(&id);
    }

    fn begin(&self, id: u64) {
        if let Some(m) = self.members().get_mut(&id) {
            m.in_flight += 1;
        }
    }

    fn end(&self, id: u64) {
        if let Some(m) = self.members().get_mut(&id) {
            m.in_flight = m.in_flight.saturating_sub(1);
            if m.in_flight == 0 {
                m.idle_since = Instant::now();
            }
        }
    }

    /// Closes the connection idle longest (at least [`EVICT_AFTER`]);
    /// whether there was one.
    fn evict_one(&self) -> bool {
        let members = self.members();
        let oldest = members
            .values()
            .filter(|m| m.in_flight == 0 && m.idle_since.elapsed() >= EVICT_AFTER)
            .min_by_key(|m| m.idle_since);
        match oldest {
            Some(m) => {
                m.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Marks a request in flight on its connection until dropped (with the
/// response body, so an event stream counts for as long as it runs).
#[derive(Debug)]
struct InFlight {
    roster: Arc<Roster>,
    id: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.roster.end(self.id);
    }
}

/// A response body that holds its request's [`InFlight`] mark.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The application as one connection's service: marks each request in
/// flight on the roster.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    roster: Arc<Roster>,
    id: u64,
}

impl<S, B> tower_service::Service<http::Request<B>> for Tracked<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.roster.begin(self.id);
        let in_flight = InFlight {
            roster: Arc::clone(&self.roster),
            id: self.id,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| {
                Body::new(TrackedBody {
                    inner,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// Bounds on connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; further ones wait in the backlog.
    pub max_connections: usize,
    /// Time a connection has to send a complete request head, counted from
    /// its opening or from the end of its previous response.
    pub header_timeout: Duration,
    /// Time a request has to send its whole body.
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// Lowers `max_connections` so that it fits a soft file limit of
    /// `nofile` descriptors; returns the lowered value if it had to.
    pub fn fit_file_limit(&mut self, nofile: u64) -> Option<usize> {
        let room =
            usize::try_from(nofile.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX);
        (self.max_connections > room).then(|| {
            self.max_connections = room;
            room
        })
    }
}

/// Raises the soft limit on open files to the hard limit and returns the
/// soft limit now in force.
pub fn raise_file_limit() -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Ok(hard);
    }
    Ok(soft)
}

/// Whether an `accept` error concerns only the connection being accepted.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes,
/// then lets open connections finish for a few seconds.
///
/// # Errors
///
/// None today; the signature leaves room for fatal listener errors.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let roster = Arc::new(Roster::default());
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    let mut warned_at_limit = false;
    loop {
        // Take a permit before accepting: at the limit, newcomers stay in
        // the kernel's backlog and cost us nothing.
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if !warned_at_limit {
                    warned_at_limit = true;
                    tracing::warn!(
                        max = limits.max_connections,
                        "connection limit reached; closing the connections idle longest to make room"
                    );
                }
                roster.evict_one();
                tokio::select! {
                    p = Arc::clone(&permits).acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    // Nothing could be closed yet: look again shortly.
                    () = tokio::time::sleep(EVICT_AFTER / 5) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        let stream = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        let stream = match stream {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // EMFILE and friends: descriptors are short elsewhere. Back
                // off briefly instead of spinning; the permit is returned.
                tracing::warn!("accept error: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if permits.available_permits() > limits.max_connections / 2 {
            warned_at_limit = false;
        }
        let (id, evict) = roster.join();
        let service = TowerToHyperService::new(Tracked {
            inner: RequestBodyTimeout::new(app.clone(), limits.body_timeout),
            roster: Arc::clone(&roster),
            id,
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        let roster = Arc::clone(&roster);
        tokio::spawn(async move {
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!("connection ended: {e}");
                    }
                }
                // Dropping the connection closes it.
                () = evict.notified() => tracing::debug!("closed an idle connection to make room"),
            }
            roster.leave(id);
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("some connections were still open after the grace period");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_idle_longest_is_evicted_never_a_busy_one() {
        let roster = Roster::default();
        let (a, evict_a) = roster.join();
        let (b, evict_b) = roster.join();
        assert!(!roster.evict_one(), "nobody idle long enough yet");
        std::thread::sleep(EVICT_AFTER + Duration::from_millis(20));
        roster.begin(a); // a has a request in flight
        assert!(roster.evict_one());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(100), evict_b.notified())
                .await
                .expect("b, idle, was told to close");
            assert!(
                tokio::time::timeout(Duration::from_millis(50), evict_a.notified())
                    .await
                    .is_err(),
                "a, busy, was told to close"
            );
        });
        roster.leave(b);
        roster.end(a); // idle again, but only just
        assert!(!roster.evict_one());
    }

    #[test]
    fn connection_limit_fits_the_file_limit() {
        let mut l = Limits::default();
        assert_eq!(l.fit_file_limit(1 << 20), None);
        assert_eq!(l.max_connections, 1024);
        assert_eq!(l.fit_file_limit(1024), Some(960));
        assert_eq!(l.max_connections, 960);
        assert_eq!(l.fit_file_limit(10), Some(1));
    }
}
