//! What a client process tells its parent, one line at a time on stdout:
//!
//! * `ready`: its threads have connected and filled their keys; it now
//!   waits for a `go` line on stdin, so that all processes start together;
//! * `progress N`: N operations answered so far (every 100 ms);
//! * `result {json}`: its [`WireTally`], once, at the end.
//!
//! Any other line is ignored (a garbled `progress` count reads as 0). The
//! child is *gone* when its stdout ends, or when its `result` line cannot
//! be read: the parent then needs a result from it already.

use crate::tally::{Tally, MAX_LATENCY_NS};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{BufRead, BufReader, Read};

/// A [`Tally`] as a child process sends it: `(value, count)` pairs per kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct WireTally {
    hist: Vec<Vec<(u64, u64)>>,
    wrong: u64,
    failed: u64,
    #[serde(default)]
    server_gone: bool,
    seconds: f64,
}

impl From<&Tally> for WireTally {
    fn from(t: &Tally) -> Self {
        WireTally {
            hist: t
                .hist
                .iter()
                .map(|h| {
                    h.iter_recorded()
                        .map(|v| (v.value_iterated_to(), v.count_at_value()))
                        .collect()
                })
                .collect(),
            wrong: t.wrong,
            failed: t.failed,
            server_gone: t.server_gone,
            seconds: t.seconds,
        }
    }
}

impl From<&WireTally> for Tally {
    fn from(w: &WireTally) -> Self {
        let mut t = Tally::new();
        for (h, counts) in t.hist.iter_mut().zip(&w.hist) {
            for &(value, count) in counts {
                let _ = h.record_n(value.clamp(1, MAX_LATENCY_NS), count);
            }
        }
        t.wrong = w.wrong;
        t.failed = w.failed;
        t.server_gone = w.server_gone;
        t.seconds = w.seconds;
        t
    }
}

/// One line a child prints.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ChildLine {
    /// Connected and filled; waiting for `go`.
    Ready,
    /// Operations answered so far.
    Progress(u64),
    /// The child's measurements, at the end.
    Result(Box<WireTally>),
}

/// The line the parent writes to every child's stdin to start the run.
pub(crate) const GO: &str = "go";

/// A `result` line whose JSON cannot be read: the child counts as gone.
#[derive(Debug)]
pub(crate) struct GarbledResult;

impl ChildLine {
    /// Reads one line (without its newline): `Ok(None)` for a line that is
    /// no part of the protocol.
    ///
    /// # Errors
    ///
    /// [`GarbledResult`] for a `result` line whose JSON cannot be read.
    pub(crate) fn parse(line: &str) -> Result<Option<ChildLine>, GarbledResult> {
        if line == "ready" {
            Ok(Some(ChildLine::Ready))
        } else if let Some(n) = line.strip_prefix("progress ") {
            Ok(Some(ChildLine::Progress(n.parse().unwrap_or(0))))
        } else if let Some(json) = line.strip_prefix("result ") {
            serde_json::from_str::<WireTally>(json)
                .map(|w| Some(ChildLine::Result(Box::new(w))))
                .map_err(|_| GarbledResult)
        } else {
            Ok(None)
        }
    }
}

/// The line, without its newline.
impl fmt::Display for ChildLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildLine::Ready => f.write_str("ready"),
            ChildLine::Progress(n) => write!(f, "progress {n}"),
            ChildLine::Result(w) => {
                write!(f, "result {}", serde_json::to_string(w).unwrap_or_default())
            }
        }
    }
}

/// What the parent hears from a child.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ChildEvent {
    /// A line of the protocol.
    Said(ChildLine),
    /// Its stdout ended (or could not be read), or its `result` line was
    /// garbled.
    Gone,
}

/// Reads a child's stdout to its end, passing each [`ChildEvent`] to
/// `hear` (which returns `false` to stop reading): lines that are no part
/// of the protocol are skipped, and the last event is always
/// [`ChildEvent::Gone`] unless `hear` stopped first.
pub(crate) fn read_child(stdout: impl Read, mut hear: impl FnMut(ChildEvent) -> bool) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let event = match ChildLine::parse(&line) {
            Ok(Some(said)) => ChildEvent::Said(said),
            Ok(None) => continue,
            Err(GarbledResult) => ChildEvent::Gone,
        };
        if !hear(event) {
            return;
        }
    }
    hear(ChildEvent::Gone);
}

/// Whether `line` (as read from stdin, newline and all) is the `go` line.
pub(crate) fn is_go(line: &str) -> bool {
    line.trim() == GO
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Kind;

    fn sample() -> Tally {
        let mut t = Tally::new();
        t.record(Kind::Get, 350);
        t.record(Kind::Get, 400);
        t.record(Kind::Del, 10_000);
        t.wrong = 2;
        t.failed = 1;
        t.seconds = 1.25;
        t
    }

    fn round_trip(line: &ChildLine) -> ChildLine {
        let text = line.to_string();
        assert!(!text.contains('\n'), "{text}");
        ChildLine::parse(&text)
            .expect("a line we print parses")
            .expect("a line we print is part of the protocol")
    }

    #[test]
    fn tallies_survive_the_wire() {
        let t = sample();
        let back = Tally::from(&WireTally::from(&t));
        assert_eq!(back.ops(), 3);
        assert_eq!(back.wrong, 2);
        assert_eq!(back.failed, 1);
        assert_eq!(back.seconds, 1.25);
        assert_eq!(back.hist[Kind::Del as usize].len(), 1);
        assert_eq!(
            back.hist[Kind::Get as usize].max(),
            t.hist[Kind::Get as usize].max()
        );
    }

    #[test]
    fn lines_round_trip() {
        for line in [
            ChildLine::Ready,
            ChildLine::Progress(0),
            ChildLine::Progress(u64::MAX),
            ChildLine::Result(Box::new(WireTally::from(&sample()))),
            ChildLine::Result(Box::new(WireTally::from(&Tally::new()))),
        ] {
            assert_eq!(round_trip(&line), line);
        }
        assert_eq!(ChildLine::Ready.to_string(), "ready");
        assert_eq!(ChildLine::Progress(42).to_string(), "progress 42");
        let mut gone = Tally::new();
        gone.server_gone = true;
        let ChildLine::Result(w) = round_trip(&ChildLine::Result(Box::new((&gone).into()))) else {
            panic!("not a result");
        };
        assert!(Tally::from(&*w).server_gone);
    }

    #[test]
    fn results_from_before_server_gone_still_read() {
        let line = r#"result {"hist":[[[350,1]],[],[],[]],"wrong":0,"failed":0,"seconds":0.5}"#;
        let Ok(Some(ChildLine::Result(w))) = ChildLine::parse(line) else {
            panic!("{line} did not parse");
        };
        let t = Tally::from(&*w);
        assert_eq!(t.ops(), 1);
        assert!(!t.server_gone);
    }

    #[test]
    fn garbage_is_ignored_or_garbled() {
        for other in [
            "",
            "Ready",
            "ready ",
            " ready",
            "progress",
            "result",
            "hello world",
            "kvs_client bench: something on stdout",
        ] {
            assert!(
                matches!(ChildLine::parse(other), Ok(None)),
                "{other:?} was not ignored"
            );
        }
        assert!(matches!(
            ChildLine::parse("progress lots"),
            Ok(Some(ChildLine::Progress(0)))
        ));
        assert!(matches!(
            ChildLine::parse("progress -1"),
            Ok(Some(ChildLine::Progress(0)))
        ));
        for garbled in [
            "result ",
            "result {",
            "result {}",
            "result null",
            "result [1,2]",
        ] {
            assert!(
                ChildLine::parse(garbled).is_err(),
                "{garbled:?} was not garbled"
            );
        }
    }

    fn hear_all(bytes: &[u8]) -> Vec<ChildEvent> {
        let mut events = Vec::new();
        read_child(bytes, |e| {
            events.push(e);
            true
        });
        events
    }

    #[test]
    fn a_child_is_heard_to_its_end() {
        let result = ChildLine::Result(Box::new(WireTally::from(&sample())));
        let out = format!("noise\nready\nprogress 5\n\nprogress 9\n{result}\n");
        assert_eq!(
            hear_all(out.as_bytes()),
            [
                ChildEvent::Said(ChildLine::Ready),
                ChildEvent::Said(ChildLine::Progress(5)),
                ChildEvent::Said(ChildLine::Progress(9)),
                ChildEvent::Said(result),
                ChildEvent::Gone,
            ]
        );
        // No newline at the end still makes a line.
        assert_eq!(
            hear_all(b"ready"),
            [ChildEvent::Said(ChildLine::Ready), ChildEvent::Gone]
        );
        assert_eq!(hear_all(b""), [ChildEvent::Gone]);
    }

    #[test]
    fn a_garbled_result_or_unreadable_output_is_gone() {
        assert_eq!(
            hear_all(b"ready\nresult {oops\nprogress 3\n"),
            [
                ChildEvent::Said(ChildLine::Ready),
                ChildEvent::Gone,
                ChildEvent::Said(ChildLine::Progress(3)),
                ChildEvent::Gone,
            ]
        );
        // Output that is not UTF-8 ends the reading.
        assert_eq!(
            hear_all(b"ready\n\xff\xfe\nprogress 3\n"),
            [ChildEvent::Said(ChildLine::Ready), ChildEvent::Gone]
        );
    }

    #[test]
    fn the_listener_can_stop_reading() {
        let mut heard = 0;
        read_child(&b"ready\nprogress 1\nprogress 2\n"[..], |_| {
            heard += 1;
            false
        });
        assert_eq!(heard, 1);
    }

    #[test]
    fn go_is_one_line() {
        assert!(is_go("go\n"));
        assert!(is_go(" go \r\n"));
        assert!(!is_go(""));
        assert!(!is_go("gone\n"));
    }
}
