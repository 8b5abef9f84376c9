//! [`Model`]: what one thread knows its keys hold, and so what a correct
//! answer is.
//!
//! Every thread owns a disjoint range of keys and writes each value with a
//! fresh sequence number (see [`fill_value`]), so it knows exactly what the
//! server must answer:
//!
//! * a GET must return exactly the value this thread last wrote, or nothing
//!   after a DEL;
//! * a POST must insert exactly when the key is absent;
//! * a DEL must remove exactly when the key is present.
//!
//! A failed call leaves the key's state unknown (a timed-out SET may still
//! land): the key is not checked until a GET, a SET or a DEL tells again
//! what it holds. A `ServerGone` is no error of the answer: it marks the
//! tally so that the run stops.

use crate::tally::Tally;
use crate::workload::{claimed_seq, fill_value, BenchValue, Kind};
use kvs_client::ClientError;

/// A key whose state is unknown.
const UNKNOWN: u32 = u32::MAX;

/// Wrong answers described on stderr per thread; the rest are only counted.
const WRONG_REPORTED: u32 = 5;

/// Failed calls described on stderr per thread.
const FAILED_REPORTED: u64 = 3;

/// What an answer said, for the check against the model.
#[derive(Debug)]
pub(crate) enum Answer<V> {
    /// A GET's value, if any.
    Value(Option<V>),
    /// A SET's acknowledgement.
    Done,
    /// A POST's "inserted" or a DEL's "removed".
    Changed(bool),
}

/// One thread's keys and what each holds.
#[derive(Debug)]
pub(crate) struct Model {
    /// The thread's index over all processes (written into its values).
    thread: u64,
    value_size: usize,
    keys: Vec<Vec<u8>>,
    /// The sequence number of the value each key holds; 0 when absent,
    /// [`UNKNOWN`] after a failed call.
    expected: Vec<u32>,
    next_seq: u32,
    /// Scratch for building values.
    buf: Vec<u8>,
    wrong_reported: u32,
}

impl Model {
    /// The model of thread `thread` of run `run_id`: keys
    /// `bench:RUN:THREAD:I` for `I` in `0..n`, all absent (until filled).
    pub(crate) fn new(run_id: u32, thread: u64, n: u64, value_size: usize) -> Self {
        let keys = (0..n)
            .map(|i| format!("bench:{run_id:08x}:{thread}:{i}").into_bytes())
            .collect();
        Self {
            thread,
            value_size,
            keys,
            expected: vec![0; n as usize],
            next_seq: 1,
            buf: Vec::with_capacity(value_size),
            wrong_reported: 0,
        }
    }

    /// How many keys.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Key `k`.
    pub(crate) fn key(&self, k: usize) -> &Vec<u8> {
        &self.keys[k]
    }

    /// A fresh sequence number for a write (never 0, which means absent).
    pub(crate) fn take_seq(&mut self) -> u32 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        s
    }

    /// The value with sequence number `seq` of key `key`: a tag naming the
    /// thread, key and sequence, padded to `--value-size` bytes.
    pub(crate) fn value<V: BenchValue>(&mut self, key: usize, seq: u32) -> V {
        fill_value(&mut self.buf, self.value_size, self.thread, key, seq);
        V::from_ascii(&self.buf)
    }

    /// Key `key` now holds the value with sequence number `seq` (a write
    /// outside the measured run, such as the fill).
    pub(crate) fn written(&mut self, key: usize, seq: u32) {
        self.expected[key] = seq;
    }

    /// A call on `key` failed with `e`: counted (and its key unknown from
    /// now on), or, for `ServerGone`, marked on the tally.
    pub(crate) fn failed(&mut self, kind: Kind, key: usize, e: &ClientError, tally: &mut Tally) {
        if matches!(e, ClientError::ServerGone) {
            // Nothing more can succeed: the runner stops every thread.
            tally.server_gone = true;
            return;
        }
        tally.failed += 1;
        if tally.failed <= FAILED_REPORTED {
            eprintln!(
                "kvs_client bench: {} {:?} failed: {e}",
                kind.name(),
                String::from_utf8_lossy(&self.keys[key])
            );
        }
        // The outcome is unknown (a timed-out SET may still land): re-learn
        // the key's state from the server is not possible without racing, so
        // stop checking it by marking it unknown.
        self.expected[key] = UNKNOWN;
    }

    fn wrong(&mut self, kind: Kind, key: usize, what: String, tally: &mut Tally) {
        tally.wrong += 1;
        if self.wrong_reported < WRONG_REPORTED {
            self.wrong_reported += 1;
            eprintln!(
                "kvs_client bench: wrong answer to {} {:?}: {what}",
                kind.name(),
                String::from_utf8_lossy(&self.keys[key])
            );
        }
    }

    /// Checks the answer to `kind` on `key` (which wrote sequence number
    /// `seq`, for a SET or POST) and brings the model up to date.
    pub(crate) fn check<V: BenchValue>(
        &mut self,
        kind: Kind,
        key: usize,
        seq: u32,
        answer: Result<Answer<V>, ClientError>,
        tally: &mut Tally,
    ) {
        let answer = match answer {
            Ok(a) => a,
            Err(e) => return self.failed(kind, key, &e, tally),
        };
        let had = self.expected[key];
        let unknown = had == UNKNOWN;
        match (kind, answer) {
            (Kind::Get, Answer::Value(got)) => {
                if unknown {
                    self.expected[key] = match got {
                        Some(v) => self.seq_of(key, &v).unwrap_or(UNKNOWN),
                        None => 0,
                    };
                    return;
                }
                match got {
                    None if had == 0 => {}
                    None => self.wrong(kind, key, format!("absent, expected seq {had}"), tally),
                    Some(v) => {
                        fill_value(&mut self.buf, self.value_size, self.thread, key, had);
                        if had == 0 || v.bytes() != &self.buf[..] {
                            let what = format!(
                                "got {:?}, expected {}",
                                String::from_utf8_lossy(v.bytes()),
                                if had == 0 {
                                    "nothing".to_string()
                                } else {
                                    format!("{:?}", String::from_utf8_lossy(&self.buf))
                                }
                            );
                            self.wrong(kind, key, what, tally);
                        }
                    }
                }
            }
            (Kind::Set, Answer::Done) => self.expected[key] = seq,
            (Kind::Post, Answer::Changed(inserted)) => {
                if !unknown && inserted != (had == 0) {
                    let what = format!("inserted = {inserted} but the key held seq {had}");
                    self.wrong(kind, key, what, tally);
                }
                if inserted {
                    self.expected[key] = seq;
                } else if unknown || had == 0 {
                    self.expected[key] = UNKNOWN;
                }
            }
            (Kind::Del, Answer::Changed(removed)) => {
                if !unknown && removed != (had != 0) {
                    let what = format!("removed = {removed} but the key held seq {had}");
                    self.wrong(kind, key, what, tally);
                }
                self.expected[key] = 0;
            }
            (kind, a) => {
                let shape = match a {
                    Answer::Value(_) => "a value",
                    Answer::Done => "done",
                    Answer::Changed(_) => "a flag",
                };
                let what = format!("an answer of the wrong shape ({shape})");
                self.wrong(kind, key, what, tally);
            }
        }
    }

    /// The sequence number in a value this thread wrote to `key`, if it is one.
    fn seq_of<V: BenchValue>(&mut self, key: usize, v: &V) -> Option<u32> {
        let bytes = v.bytes();
        let seq = claimed_seq(bytes)?;
        fill_value(&mut self.buf, self.value_size, self.thread, key, seq);
        (bytes == &self.buf[..]).then_some(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    type V = Vec<u8>;

    /// A model of 4 keys, all absent.
    fn model() -> Model {
        Model::new(0xab, 3, 4, 40)
    }

    fn check(m: &mut Model, kind: Kind, key: usize, seq: u32, answer: Answer<V>) -> Tally {
        let mut t = Tally::new();
        m.check(kind, key, seq, Ok(answer), &mut t);
        t
    }

    fn timeout() -> ClientError {
        ClientError::Timeout {
            op: "set",
            after: Duration::from_millis(1),
        }
    }

    #[test]
    fn keys_name_the_run_and_thread() {
        let m = model();
        assert_eq!(m.len(), 4);
        assert_eq!(m.key(2), b"bench:000000ab:3:2");
    }

    #[test]
    fn sequence_numbers_skip_zero() {
        let mut m = model();
        assert_eq!(m.take_seq(), 1);
        m.next_seq = u32::MAX;
        assert_eq!(m.take_seq(), u32::MAX);
        assert_eq!(m.take_seq(), 1);
    }

    #[test]
    fn right_answers_pass() {
        let mut m = model();
        let t = check(&mut m, Kind::Get, 0, 0, Answer::Value(None));
        assert_eq!(t.wrong, 0);
        let seq = m.take_seq();
        let v: V = m.value(0, seq);
        check(&mut m, Kind::Post, 0, seq, Answer::Changed(true));
        assert_eq!(
            check(&mut m, Kind::Get, 0, 0, Answer::Value(Some(v))).wrong,
            0
        );
        let seq = m.take_seq();
        check(&mut m, Kind::Set, 0, seq, Answer::Done);
        let v: V = m.value(0, seq);
        assert_eq!(
            check(&mut m, Kind::Get, 0, 0, Answer::Value(Some(v))).wrong,
            0
        );
        assert_eq!(
            check(&mut m, Kind::Post, 0, 9, Answer::Changed(false)).wrong,
            0
        );
        assert_eq!(
            check(&mut m, Kind::Del, 0, 0, Answer::Changed(true)).wrong,
            0
        );
        assert_eq!(
            check(&mut m, Kind::Del, 0, 0, Answer::Changed(false)).wrong,
            0
        );
    }

    #[test]
    fn wrong_answers_count() {
        let mut m = model();
        m.written(1, 7);
        let stale: V = m.value(1, 6);
        assert_eq!(
            check(&mut m, Kind::Get, 1, 0, Answer::Value(Some(stale))).wrong,
            1
        );
        assert_eq!(check(&mut m, Kind::Get, 1, 0, Answer::Value(None)).wrong, 1);
        assert_eq!(
            check(&mut m, Kind::Post, 1, 8, Answer::Changed(true)).wrong,
            1
        );
        // The POST said it inserted seq 8: the model believes it.
        let v: V = m.value(1, 8);
        assert_eq!(
            check(&mut m, Kind::Get, 1, 0, Answer::Value(Some(v))).wrong,
            0
        );
        assert_eq!(
            check(&mut m, Kind::Del, 2, 0, Answer::Changed(true)).wrong,
            1
        );
        let some: V = m.value(2, 1);
        assert_eq!(
            check(&mut m, Kind::Get, 2, 0, Answer::Value(Some(some))).wrong,
            1
        );
        assert_eq!(
            check(&mut m, Kind::Set, 2, 3, Answer::Changed(true)).wrong,
            1
        );
    }

    #[test]
    fn a_failed_call_makes_the_key_unknown_until_a_get() {
        let mut m = model();
        m.written(0, 5);
        let mut t = Tally::new();
        m.check::<V>(Kind::Set, 0, 6, Err(timeout()), &mut t);
        assert_eq!((t.failed, t.wrong, t.server_gone), (1, 0, false));
        // Unknown: any POST or DEL outcome is accepted...
        assert_eq!(
            check(&mut m, Kind::Post, 0, 7, Answer::Changed(false)).wrong,
            0
        );
        // ... and a GET re-learns the state from a value of this thread.
        let v: V = m.value(0, 6);
        assert_eq!(
            check(&mut m, Kind::Get, 0, 0, Answer::Value(Some(v))).wrong,
            0
        );
        let old: V = m.value(0, 5);
        assert_eq!(
            check(&mut m, Kind::Get, 0, 0, Answer::Value(Some(old))).wrong,
            1
        );
    }

    #[test]
    fn server_gone_is_no_failed_call() {
        let mut m = model();
        let mut t = Tally::new();
        m.check::<V>(Kind::Get, 0, 0, Err(ClientError::ServerGone), &mut t);
        assert!(t.server_gone);
        assert_eq!((t.failed, t.wrong), (0, 0));
    }
}
