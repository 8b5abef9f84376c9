//! `mget`, `mset`, `mdel`: many keys in one request.

use super::args::{connect, key_arg, Args};
use super::commands::entry_json;
use crate::support::Failure;
use kvs_core::text::escape_bytes_for_display;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

/// `kvs_client mget KEY...`: one line per key, in order: the value with
/// control characters escaped (so each stays on one line), or `(nil)`;
/// with `--json`, one array of objects (null when absent).
pub(super) fn mget(args: &Args, keys: &[OsString], json: bool) -> Result<(), Failure> {
    let keys = keys.iter().map(key_arg).collect::<Result<Vec<_>, _>>()?;
    let entries = connect(args)?.get_many_entries(&keys)?;
    let mut out = std::io::stdout().lock();
    let written = if json {
        let items: Vec<serde_json::Value> = keys
            .iter()
            .zip(&entries)
            .map(|(k, e)| {
                e.as_ref()
                    .map_or(serde_json::Value::Null, |e| entry_json(k, e))
            })
            .collect();
        writeln!(out, "{}", serde_json::Value::Array(items))
    } else {
        entries.iter().try_for_each(|e| match e {
            Some(e) => writeln!(out, "{}", escape_bytes_for_display(&e.value)),
            None => writeln!(out, "(nil)"),
        })
    };
    written
        .and_then(|()| out.flush())
        .map_err(|e| Failure::error(format!("writing the values: {e}")))
}

/// `kvs_client mset KEY VALUE [KEY VALUE]...`.
pub(super) fn mset(args: &Args, pairs: &[OsString], ttl: Option<Duration>) -> Result<(), Failure> {
    if pairs.len() % 2 != 0 {
        return Err(Failure::error(format!(
            "mset takes KEY VALUE pairs; {} arguments leave the last key without a value",
            pairs.len()
        )));
    }
    let entries = pairs
        .chunks_exact(2)
        .map(|kv| Ok((key_arg(&kv[0])?, kv[1].as_bytes().to_vec())))
        .collect::<Result<Vec<_>, Failure>>()?;
    let client = connect(args)?;
    match ttl {
        Some(ttl) => client.set_many_with_ttl(&entries, ttl)?,
        None => client.set_many(&entries)?,
    }
    Ok(())
}

/// `kvs_client mdel KEY...`: prints how many were present.
pub(super) fn mdel(args: &Args, keys: &[OsString]) -> Result<(), Failure> {
    let keys = keys.iter().map(key_arg).collect::<Result<Vec<_>, _>>()?;
    let removed = connect(args)?.del_many(&keys)?;
    println!("{removed}");
    Ok(())
}
