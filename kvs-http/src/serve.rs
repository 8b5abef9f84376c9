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
//!   start and [`Limits::fit_file_limit`] keeps the connection limit below it;
//! * **request heads and idle keep-alive**: hyper's `header_read_timeout`
//!   (hyper 1.6 and later start it again while a kept-alive connection waits
//!   for its next request), so a connection that sends no complete head in
//!   time is closed;
//! * **request bodies**: `tower_http`'s `RequestBodyTimeoutLayer` (see
//!   [`crate::app`]), so a body trickled a byte at a time ends too.
//!
//! Event streams (`/events`) are long-lived on purpose and count against the
//! connection limit like any other connection.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::timeout::RequestBodyTimeout;

/// Descriptors kept free for everything that is not a connection (the
/// store's mapping and socket, logging, the runtime).
const RESERVED_FDS: u64 = 64;

/// How long a graceful shutdown waits for connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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
                        "connection limit reached; new connections wait until one closes"
                    );
                }
                tokio::select! {
                    p = Arc::clone(&permits).acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
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
        let service =
            TowerToHyperService::new(RequestBodyTimeout::new(app.clone(), limits.body_timeout));
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
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
    fn connection_limit_fits_the_file_limit() {
        let mut l = Limits::default();
        assert_eq!(l.fit_file_limit(1 << 20), None);
        assert_eq!(l.max_connections, 1024);
        assert_eq!(l.fit_file_limit(1024), Some(960));
        assert_eq!(l.max_connections, 960);
        assert_eq!(l.fit_file_limit(10), Some(1));
    }
}
