//! The single-key commands (get, set, post, del), status and bench.

use super::args::{connect, key_arg, options, Args, ValueArg};
use crate::support::Failure;
use kvs_client::{Cas, Ttl};
use kvs_core::region::peek_info;
use kvs_core::text::escape_bytes_for_display as text_for_display;
use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::time::Duration;

/// `kvs_client get KEY`: the value's bytes on stdout, as they are (with a
/// newline after text when stdout is a terminal); exit 1 if absent.
pub(super) fn get(args: &Args, key: &OsString, json: bool) -> Result<(), Failure> {
    let k = key_arg(key)?;
    let client = connect(args)?;
    if json {
        let Some(e) = client.get_entry(&k)? else {
            return Err(not_found(&k));
        };
        println!("{}", entry_json(&k, &e));
        return Ok(());
    }
    match client.get(&k)? {
        Some(value) => {
            let mut out = std::io::stdout().lock();
            let written = if out.is_terminal() {
                writeln!(out, "{}", kvs_core::text::escape_bytes_for_display(&value))
            } else {
                out.write_all(&value)
            };
            written
                .and_then(|()| out.flush())
                .map_err(|e| Failure::error(format!("writing the value: {e}")))
        }
        None => Err(not_found(&k)),
    }
}

/// `kvs_client set KEY VALUE` (or `-`, or `--file PATH`).
pub(super) fn set(
    args: &Args,
    key: &OsString,
    value: &ValueArg,
    ttl: Option<Duration>,
    if_version: Option<u64>,
) -> Result<(), Failure> {
    let k = key_arg(key)?;
    let client = connect(args)?;
    let v = value.bytes(client.limits().1)?;
    match (ttl, if_version) {
        (None, None) => Ok(client.set(&k, &v)?),
        (Some(ttl), None) => Ok(client.set_with_ttl(&k, &v, ttl)?),
        (ttl, Some(expected)) => match client.set_if_version(&k, &v, expected)? {
            Cas::Done(version) => {
                if let Some(ttl) = ttl {
                    // The condition held; the expiry follows (a second step:
                    // a write in between would get this deadline).
                    client.expire(&k, ttl)?;
                }
                println!("{version}");
                Ok(())
            }
            Cas::Conflict(current) => Err(conflict(&k, current)),
        },
    }
}

/// An entry as `get --json` and `mget --json` print it: the key and value
/// (`_base64` when not UTF-8), version, `modified_ms`, `expires_ms`.
pub(super) fn entry_json(key: &[u8], e: &kvs_client::Versioned<Vec<u8>>) -> serde_json::Value {
    let mut obj = serde_json::Map::new();
    crate::support::json_bytes(&mut obj, "key", key);
    crate::support::json_bytes(&mut obj, "value", &e.value);
    obj.insert("version".into(), e.version.into());
    obj.insert("modified_ms".into(), (e.modified_ns / 1_000_000).into());
    let expires = (e.deadline_ns != 0).then_some(e.deadline_ns / 1_000_000);
    obj.insert("expires_ms".into(), expires.into());
    serde_json::Value::Object(obj)
}

/// Exit 1: the key is absent.
fn not_found(k: &[u8]) -> Failure {
    Failure::miss(format!("key {} not found", text_for_display(k)))
}

fn conflict(k: &[u8], current: u64) -> Failure {
    if current == 0 {
        Failure::miss(format!("key {} is absent (version 0)", text_for_display(k)))
    } else {
        Failure::miss(format!(
            "key {} is at version {current}",
            text_for_display(k)
        ))
    }
}

/// `kvs_client incr KEY [DELTA]`: prints the new value.
pub(super) fn incr(args: &Args, key: &OsString, delta: i64) -> Result<(), Failure> {
    let k = key_arg(key)?;
    let n = connect(args)?.incr(&k, delta)?;
    println!("{n}");
    Ok(())
}

/// `kvs_client expire KEY TTL` and `persist KEY` (`ttl` None): exit 1 if
/// absent.
pub(super) fn expire(args: &Args, key: &OsString, ttl: Option<Duration>) -> Result<(), Failure> {
    let k = key_arg(key)?;
    let client = connect(args)?;
    let found = match ttl {
        Some(ttl) => client.expire(&k, ttl)?,
        None => client.persist(&k)?,
    };
    if found {
        Ok(())
    } else {
        Err(not_found(&k))
    }
}

/// `kvs_client ttl KEY`: `persistent`, or the time left.
pub(super) fn ttl(args: &Args, key: &OsString) -> Result<(), Failure> {
    let k = key_arg(key)?;
    match connect(args)?.ttl(&k)? {
        Some(Ttl::Persistent) => println!("persistent"),
        Some(Ttl::Expires(left)) => println!("{}", humantime::format_duration(left)),
        None => return Err(not_found(&k)),
    }
    Ok(())
}

/// `kvs_client post KEY VALUE`: exit 1 if the key exists.
pub(super) fn post(args: &Args, key: &OsString, value: &ValueArg) -> Result<(), Failure> {
    let k = key_arg(key)?;
    let client = connect(args)?;
    let v = value.bytes(client.limits().1)?;
    if client.post(&k, &v)? {
        Ok(())
    } else {
        Err(Failure::miss(format!(
            "key {} already exists",
            text_for_display(&k)
        )))
    }
}

/// `kvs_client del KEY`: exit 1 if absent.
pub(super) fn del(args: &Args, key: &OsString, if_version: Option<u64>) -> Result<(), Failure> {
    let k = key_arg(key)?;
    if let Some(expected) = if_version {
        return match connect(args)?.del_if_version(&k, expected)? {
            Cas::Done(_) => Ok(()),
            Cas::Conflict(current) => Err(conflict(&k, current)),
        };
    }
    if connect(args)?.del(&k)? {
        Ok(())
    } else {
        Err(not_found(&k))
    }
}

/// `kvs_client bench`.
pub(super) fn bench(args: &Args, bench: &kvs_bench::BenchArgs) -> Result<(), Failure> {
    let (info, _) = peek_info(&args.name, &options(args).connect_options())
        .map_err(|e| Failure::error(e.to_string()))?;
    kvs_bench::run(&args.name, options(args), bench, &info)
        .map_err(|e| Failure::error(e.to_string()))
}

/// `kvs_client status`: from a probe, so it works even when every client
/// registration is taken.
pub(super) fn status(args: &Args, json: bool) -> Result<(), Failure> {
    let (_, session) = peek_info(&args.name, &options(args).connect_options())
        .map_err(|e| Failure::error(e.to_string()))?;
    let s = kvs_client::status::probe_status(session)?;
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{}", serde_json::to_string(&s).unwrap_or_default());
    } else {
        print_status(&mut out, &s);
    }
    let _ = out.flush();
    Ok(())
}

fn print_status(out: &mut impl Write, s: &kvs_client::StoreStatus) {
    let limit = s
        .max_entries
        .map_or("no limit".to_string(), |m| format!("limit {m}"));
    let _ = writeln!(
        out,
        "region        {}  ({} bytes, server pid {})",
        s.region, s.region_bytes, s.server_pid
    );
    let _ = writeln!(
        out,
        "limits        keys up to {} bytes, values up to {} bytes",
        s.max_key_size, s.max_value_size
    );
    let _ = writeln!(
        out,
        "memory        {} used of {}",
        crate::support::human_bytes(s.memory_used),
        crate::support::human_bytes(s.max_memory)
    );
    let _ = writeln!(out, "version       {}", s.version);
    let _ = writeln!(out, "entries       {} ({limit})", s.entries);
    let _ = writeln!(out, "expired       {}", s.expired);
    let _ = writeln!(out, "evicted       {}", s.evicted);
    let _ = writeln!(out, "uptime        {:.1} s", s.uptime_secs);
    let _ = writeln!(
        out,
        "workers       {} over {} stripes",
        s.workers, s.stripes
    );
    let _ = writeln!(
        out,
        "queue         {} queued of {}",
        s.queued, s.queue_capacity
    );
    let _ = writeln!(
        out,
        "slots         {} free of {} ({} in flight)",
        s.free_slots, s.slots, s.in_flight
    );
    let _ = writeln!(out, "clients       {} of {}", s.clients, s.max_clients);
    let _ = writeln!(
        out,
        "subscribers   {} of {}",
        s.subscribers, s.max_subscribers
    );
    let _ = writeln!(
        out,
        "ops served    get {}  set {}  post {}  del {}  incr {}  expire {}  batch {}  other {}  dropped {}",
        s.ops.get,
        s.ops.set,
        s.ops.post,
        s.ops.del,
        s.ops.incr,
        s.ops.expire,
        s.ops.batch,
        s.ops.other,
        s.ops.dropped
    );
    let _ = writeln!(
        out,
        "recovery      {} malformed, {} slots reclaimed, {} ring repairs, {} panics",
        s.malformed, s.slots_reclaimed, s.ring_repairs, s.panics
    );
}
