//! Job files: batches of commands run against the store, as in the teaching
//! KVS this product grew from.
//!
//! A job file has one command per line; `#` starts a comment line and blank
//! lines are skipped:
//!
//! ```text
//! WRITE [(k1,v1)(k2,v2)]    set each pair
//! READ [k1,k2]              print [(k1,v1)(k2,KVSERROR)]   (KVSERROR: absent)
//! DELETE [k1,k3]            print [(k3,KVSMISSING)]       (only keys that were absent; nothing if none)
//! SHOW                      print every entry as "(key, value)", one per line
//! SHOW user:                only the entries whose key starts with user:
//! WAIT 250                  pause 250 ms
//! BACKUP                    snapshot the store as NAME-1.bck (then -2, -3 ...) in the server's --backup-dir
//! EXPIRE 30s [k1,k2]        give each key a TTL; print [(k2,KVSMISSING)] for absent keys (nothing if none)
//! PERSIST [k1,k2]           remove each key's TTL; absent keys printed as for EXPIRE
//! TTL [k1,k2,k3]            print [(k1,30s)(k2,none)(k3,KVSERROR)]   (seconds left, rounded up; none: no TTL)
//! INCR [k1,k2]              add 1 to each counter; print [(k1,6)(k2,1)]
//! INCR [(k1,5)(k2,-2)]      add each delta; a value that is not an integer prints (k,KVSERROR)
//! ```
//!
//! A WRITE line goes to the server as one batch request (`set_many`; a
//! pair the store refuses is retried alone, so one refusal does not cost
//! the pairs after it) and a READ line is one batch read (`get_many`).
//! TTLs are written as `kvs_client set --ttl` takes them (`250ms`, `30s`,
//! `5m`, `1h 30m`). Compare-and-set has no verb: a job file cannot know a
//! version before it runs.
//!
//! Keys and values are text without `(`, `)`, `,`, `[`, `]` or control
//! characters; a key is 1 byte to the server's `--max-key-size`, a value up
//! to its `--max-value-size`. READ, DELETE and SHOW print keys in
//! alphabetical order, with any control character or non-UTF-8 byte in
//! stored data escaped. A WRITE pair
//! the server refuses prints `[(k,KVSERROR)]`. Results go to `NAME.out`
//! beside `NAME.job`. A malformed line (binary garbage included) writes
//! `error: line N: reason` to the output and `PATH:N: reason` to stderr,
//! quoting at most 80 characters of it, and the rest of the file still runs.
//! Only regular files are read, up to [`MAX_JOB_BYTES`].

use kvs_client::{BytesClient, ClientError};
use kvs_core::text::escape_bytes_for_display;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobCommand {
    /// `WRITE [(k,v)...]`.
    Write(Vec<(String, String)>),
    /// `READ [k,...]`.
    Read(Vec<String>),
    /// `DELETE [k,...]`.
    Delete(Vec<String>),
    /// `SHOW` (every entry) or `SHOW prefix`.
    Show(String),
    /// `WAIT ms`.
    Wait(u64),
    /// `BACKUP`.
    Backup,
    /// `EXPIRE ttl [k,...]`.
    Expire(Duration, Vec<String>),
    /// `PERSIST [k,...]`.
    Persist(Vec<String>),
    /// `TTL [k,...]`.
    Ttl(Vec<String>),
    /// `INCR [k,...]` (delta 1) or `INCR [(k,delta)...]`.
    Incr(Vec<(String, i64)>),
}

/// Longest `WAIT` accepted, in milliseconds.
pub const MAX_WAIT_MS: u64 = 60_000;

/// Largest job file read.
pub const MAX_JOB_BYTES: u64 = 64 << 20;

/// Longest piece of an input line quoted in an error message.
const QUOTE_MAX: usize = 80;

/// `text` quoted for an error message: escaped (no control character
/// reaches the terminal) and cut to `QUOTE_MAX` (80) characters.
pub fn quote(text: &str) -> String {
    let cut: String = text.chars().take(QUOTE_MAX).collect();
    let more = text.chars().count() > QUOTE_MAX;
    let escaped = format!("{cut:?}");
    if more {
        format!("{escaped}... ({} bytes in all)", text.len())
    } else {
        escaped
    }
}

fn check_token(t: &str, what: &str) -> Result<String, String> {
    let t = t.trim();
    if t.is_empty() {
        return Err(format!("empty {what}"));
    }
    if t.contains(['(', ')', ',', '[', ']']) {
        return Err(format!("{what} {} contains one of ( ) , [ ]", quote(t)));
    }
    if let Some((at, c)) = t.char_indices().find(|(_, c)| c.is_control()) {
        return Err(format!(
            "{what} {} contains a control character ({c:?} at byte {at})",
            quote(t)
        ));
    }
    Ok(t.to_string())
}

fn bracketed<'a>(rest: &'a str, cmd: &str) -> Result<&'a str, String> {
    let rest = rest.trim();
    rest.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(|| format!("{cmd} expects a list in brackets, e.g. {cmd} [...]"))
}

fn key_list(rest: &str, cmd: &str) -> Result<Vec<String>, String> {
    let inner = bracketed(rest, cmd)?;
    inner.split(',').map(|k| check_token(k, "key")).collect()
}

/// The pairs of `[(a,b)(c,d)]`, each checked as a key and a `second`.
fn pair_list(rest: &str, cmd: &str, second: &str) -> Result<Vec<(String, String)>, String> {
    let mut inner = bracketed(rest, cmd)?.trim();
    let mut pairs = Vec::new();
    while !inner.is_empty() {
        let body = inner
            .strip_prefix('(')
            .ok_or_else(|| format!("{cmd} expects pairs like (key,{second})"))?;
        let end = body
            .find(')')
            .ok_or_else(|| format!("unclosed ( in {cmd}"))?;
        let (k, v) = body[..end]
            .split_once(',')
            .ok_or_else(|| format!("pair {} has no comma", quote(&body[..end])))?;
        pairs.push((check_token(k, "key")?, check_token(v, second)?));
        inner = body[end + 1..].trim_start();
    }
    if pairs.is_empty() {
        return Err(format!("{cmd} needs at least one pair"));
    }
    Ok(pairs)
}

/// Parses one line; `Ok(None)` for blank lines and comments.
///
/// # Errors
///
/// A message saying what is wrong with the line.
pub fn parse_line(line: &str) -> Result<Option<JobCommand>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (cmd, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let no_args = |c: JobCommand| {
        if rest.trim().is_empty() {
            Ok(Some(c))
        } else {
            Err(format!("{cmd} takes no arguments"))
        }
    };
    match cmd {
        "WRITE" => Ok(Some(JobCommand::Write(pair_list(rest, "WRITE", "value")?))),
        "EXPIRE" => {
            let rest = rest.trim_start();
            let (ttl, keys) = rest
                .split_once('[')
                .map_or((rest, ""), |(t, _)| (t, &rest[t.len()..]));
            if ttl.trim().is_empty() {
                return Err("EXPIRE expects a TTL, then keys: EXPIRE 30s [k1,k2]".into());
            }
            let ttl = crate::support::parse_ttl(ttl.trim())
                .map_err(|e| format!("EXPIRE: {} is not a TTL: {e}", quote(ttl.trim())))?;
            Ok(Some(JobCommand::Expire(ttl, key_list(keys, "EXPIRE")?)))
        }
        "PERSIST" => Ok(Some(JobCommand::Persist(key_list(rest, "PERSIST")?))),
        "TTL" => Ok(Some(JobCommand::Ttl(key_list(rest, "TTL")?))),
        "INCR" => {
            let pairs = if bracketed(rest, "INCR")?.trim_start().starts_with('(') {
                pair_list(rest, "INCR", "delta")?
                    .into_iter()
                    .map(|(k, d)| {
                        d.parse::<i64>()
                            .map(|d| (k, d))
                            .map_err(|_| format!("INCR delta {} is not an integer", quote(&d)))
                    })
                    .collect::<Result<Vec<_>, String>>()?
            } else {
                key_list(rest, "INCR")?
                    .into_iter()
                    .map(|k| (k, 1))
                    .collect()
            };
            Ok(Some(JobCommand::Incr(pairs)))
        }
        "READ" => Ok(Some(JobCommand::Read(key_list(rest, "READ")?))),
        "DELETE" => Ok(Some(JobCommand::Delete(key_list(rest, "DELETE")?))),
        "SHOW" => match rest.split_whitespace().collect::<Vec<_>>()[..] {
            [] => Ok(Some(JobCommand::Show(String::new()))),
            [prefix] => Ok(Some(JobCommand::Show(check_token(prefix, "prefix")?))),
            _ => Err("SHOW takes at most one key prefix (SHOW or SHOW user:)".into()),
        },
        "BACKUP" => no_args(JobCommand::Backup),
        "WAIT" => {
            let ms: u64 = rest
                .trim()
                .parse()
                .map_err(|_| format!("WAIT expects milliseconds, got {}", quote(rest.trim())))?;
            if ms > MAX_WAIT_MS {
                return Err(format!("WAIT {ms} is above the limit of {MAX_WAIT_MS} ms"));
            }
            Ok(Some(JobCommand::Wait(ms)))
        }
        other => Err(format!("unknown command {}", quote(other))),
    }
}

/// What running one job file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    /// The job file.
    pub job: PathBuf,
    /// The output file written.
    pub out: PathBuf,
    /// Lines that could not be run (malformed, or a command that failed).
    pub errors: usize,
    /// Operations the server refused or failed (a WRITE pair that was not
    /// stored, a READ or DELETE that got no answer); an absent key is an
    /// answer, not a failure.
    pub failed_ops: usize,
}

/// The job files named by `paths`: files as given, directories as their
/// `*.job` files (sorted).
///
/// # Errors
///
/// A path that does not exist or cannot be read.
pub fn collect_jobs(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut jobs = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        format!("{}: no such job file or directory", p.display())
                    }
                    _ => format!("{}: {e}", p.display()),
                },
            )
        })?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "job") && f.is_file())
                .collect();
            found.sort();
            jobs.extend(found);
        } else if meta.is_file() {
            jobs.push(p.clone());
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{} is not a job file (not a regular file: a FIFO, a device or a socket)",
                    p.display()
                ),
            ));
        }
    }
    Ok(jobs)
}

/// Reads a job file: a regular file only (never blocking on a FIFO), at
/// most [`MAX_JOB_BYTES`].
fn read_job(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let (file, st) = kvs_core::secure_fs::open_regular(path)?;
    if u64::try_from(st.st_size).unwrap_or(u64::MAX) > MAX_JOB_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} is {} bytes; a job file is at most {MAX_JOB_BYTES}",
                path.display(),
                st.st_size
            ),
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_JOB_BYTES).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The bytes of key `s` if the store takes it, or the line's error.
fn key_of(client: &BytesClient, s: &str) -> Result<Vec<u8>, String> {
    let max = client.limits().0;
    if s.is_empty() {
        return Err("a key must not be empty".into());
    }
    if s.len() as u64 > max {
        return Err(format!(
            "key is {} bytes, the limit is {max} ({})",
            s.len(),
            quote(s)
        ));
    }
    Ok(s.as_bytes().to_vec())
}

/// Runs the job file at `path`, writing `NAME.out` beside it.
///
/// # Errors
///
/// Only I/O errors reading the job or writing its output; command failures
/// are written to the output.
pub fn run_job(client: &BytesClient, path: &Path) -> std::io::Result<JobReport> {
    let bytes = read_job(path)?;
    let out_path = path.with_extension("out");
    let stem = path
        .file_stem()
        .map_or("job".into(), |s| s.to_string_lossy().into_owned());
    let mut out = String::new();
    let mut errors = 0;
    let mut failed_ops = 0;
    let mut backups = 0;
    // Line by line, each judged on its own: binary garbage on one line is
    // that line's error, not the file's.
    let lines = bytes.split(|b| *b == b'\n');
    let count = bytes.split(|b| *b == b'\n').count();
    for (n, raw) in lines.enumerate() {
        if n + 1 == count && raw.is_empty() {
            break; // the newline that ends the last line
        }
        let lineno = n + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let result = std::str::from_utf8(raw)
            .map_err(|_| {
                format!(
                    "the line is not valid UTF-8 text: {}",
                    quote(&String::from_utf8_lossy(raw))
                )
            })
            .and_then(parse_line)
            .and_then(|cmd| match cmd {
                None => Ok(()),
                Some(cmd) => execute(client, cmd, &mut out, &stem, &mut backups, &mut failed_ops),
            });
        if let Err(msg) = result {
            errors += 1;
            let _ = writeln!(out, "error: line {lineno}: {msg}");
            eprintln!("{}:{lineno}: {msg}", path.display());
        }
    }
    std::fs::write(&out_path, out)?;
    Ok(JobReport {
        job: path.to_path_buf(),
        out: out_path,
        errors,
        failed_ops,
    })
}

fn execute(
    client: &BytesClient,
    cmd: JobCommand,
    out: &mut String,
    stem: &str,
    backups: &mut u32,
    failed_ops: &mut usize,
) -> Result<(), String> {
    let shown = |t: &[u8]| escape_bytes_for_display(t).into_owned();
    match cmd {
        JobCommand::Write(pairs) => {
            let max = client.limits().1;
            let mut entries = Vec::with_capacity(pairs.len());
            for (k, v) in &pairs {
                if v.len() as u64 > max {
                    return Err(format!("value is {} bytes, the limit is {max}", v.len()));
                }
                entries.push((key_of(client, k)?, v.clone().into_bytes()));
            }
            let mut failed: Vec<String> = write_batch(client, &entries)
                .into_iter()
                .map(|i| pairs[i].0.clone())
                .collect();
            *failed_ops += failed.len();
            if !failed.is_empty() {
                failed.sort();
                let items: String = failed.iter().map(|k| format!("({k},KVSERROR)")).collect();
                let _ = writeln!(out, "[{items}]");
            }
        }
        JobCommand::Read(mut keys) => {
            keys.sort();
            let bytes = keys
                .iter()
                .map(|k| key_of(client, k))
                .collect::<Result<Vec<_>, _>>()?;
            let values = client.get_many(&bytes).unwrap_or_else(|_| {
                *failed_ops += keys.len();
                vec![None; keys.len()]
            });
            let mut items = String::new();
            for (k, v) in keys.iter().zip(values) {
                match v {
                    Some(value) => {
                        let _ = write!(items, "({k},{})", shown(&value));
                    }
                    None => {
                        let _ = write!(items, "({k},KVSERROR)");
                    }
                }
            }
            let _ = writeln!(out, "[{items}]");
        }
        JobCommand::Expire(ttl, keys) => {
            missing_keys(client, keys, out, failed_ops, |k| client.expire(k, ttl))?;
        }
        JobCommand::Persist(keys) => {
            missing_keys(client, keys, out, failed_ops, |k| client.persist(k))?;
        }
        JobCommand::Ttl(mut keys) => {
            keys.sort();
            let mut items = String::new();
            for k in keys {
                let shown = match client.ttl(&key_of(client, &k)?) {
                    Ok(Some(kvs_client::Ttl::Persistent)) => "none".to_string(),
                    Ok(Some(kvs_client::Ttl::Expires(left))) => {
                        format!("{}s", left.as_millis().div_ceil(1000))
                    }
                    Ok(None) => "KVSERROR".to_string(),
                    Err(_) => {
                        *failed_ops += 1;
                        "KVSERROR".to_string()
                    }
                };
                let _ = write!(items, "({k},{shown})");
            }
            let _ = writeln!(out, "[{items}]");
        }
        JobCommand::Incr(pairs) => {
            // In the order given: the same counter may be named twice.
            let mut items = String::new();
            for (k, delta) in pairs {
                match client.incr(&key_of(client, &k)?, delta) {
                    Ok(n) => {
                        let _ = write!(items, "({k},{n})");
                    }
                    Err(_) => {
                        *failed_ops += 1;
                        let _ = write!(items, "({k},KVSERROR)");
                    }
                }
            }
            let _ = writeln!(out, "[{items}]");
        }
        JobCommand::Delete(keys) => {
            missing_keys(client, keys, out, failed_ops, |k| client.del(k))?;
        }
        JobCommand::Show(prefix) => {
            let mut all = client
                .list(prefix.as_bytes())
                .map(|r| r.map(|e| (e.key, e.value)))
                .collect::<Result<Vec<_>, ClientError>>()
                .map_err(|e| format!("SHOW failed: {e}"))?;
            all.sort();
            for (k, v) in all {
                let _ = writeln!(out, "({}, {})", shown(&k), shown(&v));
            }
        }
        JobCommand::Wait(ms) => std::thread::sleep(Duration::from_millis(ms)),
        JobCommand::Backup => {
            *backups += 1;
            let target = format!("{stem}-{backups}.bck");
            client
                .backup(&target)
                .map_err(|e| format!("BACKUP failed: {e}"))?;
        }
    }
    Ok(())
}

/// Writes `entries` in as few batch requests as it takes; the indices of
/// those the store refused. A refused entry ends its batch (`set_many`
/// stops there), so the ones after it go again in the next.
fn write_batch(client: &BytesClient, entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<usize> {
    let mut failed = Vec::new();
    let mut from = 0;
    while from < entries.len() {
        match client.set_many(&entries[from..]) {
            Ok(()) => break,
            Err(ClientError::PartlyWritten { written, .. }) => {
                failed.push(from + written);
                from += written + 1;
            }
            Err(_) => {
                // Nothing is known of the rest: each goes alone.
                for (i, (k, v)) in entries.iter().enumerate().skip(from) {
                    if client.set(k, v).is_err() {
                        failed.push(i);
                    }
                }
                break;
            }
        }
    }
    failed
}

/// Runs `op` on each key (sorted) and prints `[(k,KVSMISSING)...]` for
/// those it found absent (or failed on); nothing when there are none.
fn missing_keys(
    client: &BytesClient,
    mut keys: Vec<String>,
    out: &mut String,
    failed_ops: &mut usize,
    op: impl Fn(&Vec<u8>) -> Result<bool, ClientError>,
) -> Result<(), String> {
    keys.sort();
    let mut missing = String::new();
    for k in keys {
        match op(&key_of(client, &k)?) {
            Ok(true) => {}
            Ok(false) => {
                let _ = write!(missing, "({k},KVSMISSING)");
            }
            Err(_) => {
                *failed_ops += 1;
                let _ = write!(missing, "({k},KVSMISSING)");
            }
        }
    }
    if !missing.is_empty() {
        let _ = writeln!(out, "[{missing}]");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(
            parse_line("WRITE [(a,1)(b, 2)]").unwrap(),
            Some(JobCommand::Write(vec![
                ("a".into(), "1".into()),
                ("b".into(), "2".into())
            ]))
        );
        assert_eq!(
            parse_line("READ [a, b]").unwrap(),
            Some(JobCommand::Read(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            parse_line("DELETE [a]").unwrap(),
            Some(JobCommand::Delete(vec!["a".into()]))
        );
        assert_eq!(
            parse_line("  SHOW ").unwrap(),
            Some(JobCommand::Show(String::new()))
        );
        assert_eq!(
            parse_line("SHOW user:").unwrap(),
            Some(JobCommand::Show("user:".into()))
        );
        assert_eq!(parse_line("WAIT 10").unwrap(), Some(JobCommand::Wait(10)));
        assert_eq!(parse_line("BACKUP").unwrap(), Some(JobCommand::Backup));
        assert_eq!(
            parse_line("EXPIRE 1m 30s [a,b]").unwrap(),
            Some(JobCommand::Expire(
                Duration::from_secs(90),
                vec!["a".into(), "b".into()]
            ))
        );
        assert_eq!(
            parse_line("PERSIST [a]").unwrap(),
            Some(JobCommand::Persist(vec!["a".into()]))
        );
        assert_eq!(
            parse_line("TTL [a, b]").unwrap(),
            Some(JobCommand::Ttl(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            parse_line("INCR [a,b]").unwrap(),
            Some(JobCommand::Incr(vec![("a".into(), 1), ("b".into(), 1)]))
        );
        assert_eq!(
            parse_line("INCR [(a,5)(b, -2)]").unwrap(),
            Some(JobCommand::Incr(vec![("a".into(), 5), ("b".into(), -2)]))
        );
        assert_eq!(parse_line("# comment").unwrap(), None);
        assert_eq!(parse_line("").unwrap(), None);
    }

    #[test]
    fn malformed_lines_say_why() {
        for (line, want) in [
            ("WRITE (a,1)", "brackets"),
            ("WRITE [(a1)]", "no comma"),
            ("WRITE [(a,1]", "unclosed"),
            ("WRITE []", "at least one"),
            ("READ [a,,b]", "empty key"),
            ("WAIT soon", "milliseconds"),
            ("WAIT 999999", "limit"),
            ("SHOW a b", "at most one key prefix"),
            ("SHOW a,b", "contains one of"),
            ("BACKUP now", "no arguments"),
            ("FROB [x]", "unknown command"),
            ("EXPIRE [a]", "expects a TTL"),
            ("EXPIRE soon [a]", "not a TTL"),
            ("EXPIRE 0s [a]", "longer than zero"),
            ("EXPIRE 5s", "brackets"),
            ("TTL a", "brackets"),
            ("INCR [(a,x)]", "not an integer"),
            ("INCR [(a,99999999999999999999)]", "not an integer"),
            ("INCR []", "empty key"),
            ("PERSIST [a,]", "empty key"),
        ] {
            let err = parse_line(line).unwrap_err();
            assert!(err.contains(want), "{line}: {err}");
        }
    }
}
