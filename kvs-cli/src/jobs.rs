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
//! WAIT 250                  pause 250 ms
//! BACKUP                    snapshot the store as NAME-1.bck (then -2, -3 ...) in the server's --backup-dir
//! ```
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
    /// `SHOW`.
    Show,
    /// `WAIT ms`.
    Wait(u64),
    /// `BACKUP`.
    Backup,
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
        "WRITE" => {
            let mut inner = bracketed(rest, "WRITE")?.trim();
            let mut pairs = Vec::new();
            while !inner.is_empty() {
                let body = inner
                    .strip_prefix('(')
                    .ok_or_else(|| "WRITE expects pairs like (key,value)".to_string())?;
                let end = body
                    .find(')')
                    .ok_or_else(|| "unclosed ( in WRITE".to_string())?;
                let (k, v) = body[..end]
                    .split_once(',')
                    .ok_or_else(|| format!("pair {} has no comma", quote(&body[..end])))?;
                pairs.push((check_token(k, "key")?, check_token(v, "value")?));
                inner = body[end + 1..].trim_start();
            }
            if pairs.is_empty() {
                return Err("WRITE needs at least one pair".into());
            }
            Ok(Some(JobCommand::Write(pairs)))
        }
        "READ" => Ok(Some(JobCommand::Read(key_list(rest, "READ")?))),
        "DELETE" => Ok(Some(JobCommand::Delete(key_list(rest, "DELETE")?))),
        "SHOW" => no_args(JobCommand::Show),
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
            let mut failed = Vec::new();
            let max = client.limits().1;
            for (k, v) in pairs {
                if v.len() as u64 > max {
                    return Err(format!("value is {} bytes, the limit is {max}", v.len()));
                }
                if client.set(&key_of(client, &k)?, &v.into_bytes()).is_err() {
                    *failed_ops += 1;
                    failed.push(k);
                }
            }
            if !failed.is_empty() {
                failed.sort();
                let items: String = failed.iter().map(|k| format!("({k},KVSERROR)")).collect();
                let _ = writeln!(out, "[{items}]");
            }
        }
        JobCommand::Read(mut keys) => {
            keys.sort();
            let mut items = String::new();
            for k in keys {
                match client.get(&key_of(client, &k)?) {
                    Ok(Some(value)) => {
                        let _ = write!(items, "({k},{})", shown(&value));
                    }
                    Ok(None) => {
                        let _ = write!(items, "({k},KVSERROR)");
                    }
                    Err(_) => {
                        *failed_ops += 1;
                        let _ = write!(items, "({k},KVSERROR)");
                    }
                }
            }
            let _ = writeln!(out, "[{items}]");
        }
        JobCommand::Delete(mut keys) => {
            keys.sort();
            let mut missing = String::new();
            for k in keys {
                match client.del(&key_of(client, &k)?) {
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
        }
        JobCommand::Show => {
            let mut all = client
                .list(b"")
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
        assert_eq!(parse_line("  SHOW ").unwrap(), Some(JobCommand::Show));
        assert_eq!(parse_line("WAIT 10").unwrap(), Some(JobCommand::Wait(10)));
        assert_eq!(parse_line("BACKUP").unwrap(), Some(JobCommand::Backup));
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
            ("SHOW all", "no arguments"),
            ("FROB [x]", "unknown command"),
        ] {
            let err = parse_line(line).unwrap_err();
            assert!(err.contains(want), "{line}: {err}");
        }
    }
}
