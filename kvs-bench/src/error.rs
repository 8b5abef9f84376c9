//! [`BenchError`]: why a run failed. Every variant reads as one line for
//! stderr; `kvs_client` prints it and exits 2.

use kvs_client::ClientError;

/// Why a benchmark run (or one of its client processes) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The arguments do not fit together or do not fit the server.
    #[error("{0}")]
    InvalidArgs(String),
    /// A thread could not connect to the server.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A thread connected but could not write its keys before the start.
    #[error("filling the keys: {0}")]
    Fill(ClientError),
    /// At least one thread could not start (each said why on stderr).
    #[error("a benchmark thread could not start")]
    ThreadStart,
    /// A benchmark thread panicked.
    #[error("a benchmark thread panicked")]
    ThreadPanicked,
    /// A call found the server gone; every thread stopped there.
    #[error(
        "the server is gone (it stopped or died); the benchmark stopped at the first ServerGone"
    )]
    ServerGone,
    /// The run finished, with wrong answers or failed calls.
    #[error("{errors} errors ({wrong} wrong answers, {failed} failed calls)")]
    Errors {
        /// Wrong answers plus failed calls.
        errors: u64,
        /// Answers the model says are wrong.
        wrong: u64,
        /// Calls that failed.
        failed: u64,
    },
    /// This executable could not be found to run it as a client process.
    #[error("finding this executable to run client processes: {0}")]
    CurrentExe(#[source] std::io::Error),
    /// A client process could not be started.
    #[error("starting client process {index}: {source}")]
    Spawn {
        /// Which client process.
        index: u32,
        /// Why.
        source: std::io::Error,
    },
    /// A client process ended (or garbled its result) without a result.
    #[error(
        "client process {index} ended without a result{}",
        if *.started { "" } else { " (before the start)" }
    )]
    ChildNoResult {
        /// Which client process.
        index: usize,
        /// Whether the run had started (every process said `ready`).
        started: bool,
    },
    /// In a client process: the parent's `go` line never came.
    #[error("the parent bench process went away")]
    ParentGone,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_before() {
        assert_eq!(
            BenchError::ServerGone.to_string(),
            "the server is gone (it stopped or died); the benchmark stopped at the first ServerGone"
        );
        let e = BenchError::Errors {
            errors: 3,
            wrong: 1,
            failed: 2,
        };
        assert_eq!(e.to_string(), "3 errors (1 wrong answers, 2 failed calls)");
        let e = BenchError::ChildNoResult {
            index: 2,
            started: false,
        };
        assert_eq!(
            e.to_string(),
            "client process 2 ended without a result (before the start)"
        );
        let e = BenchError::ChildNoResult {
            index: 0,
            started: true,
        };
        assert_eq!(e.to_string(), "client process 0 ended without a result");
        assert_eq!(
            BenchError::Fill(ClientError::ServerGone).to_string(),
            format!("filling the keys: {}", ClientError::ServerGone)
        );
    }
}
