//! The single-key commands (get, set, post, del), status and bench.

use super::args::{connect, key_arg, options, text_arg, Args};
use crate::support::Failure;
use kvs_client::text::TextClient;
use kvs_core::region::peek_info;
use kvs_core::text::ValueClass;
use kvs_core::with_value_class;
use std::ffi::OsString;
use std::io::Write;

/// `kvs_client get KEY`: the value alone on stdout; exit 1 if absent.
pub(super) fn get(args: &Args, key: &OsString) -> Result<(), Failure> {
    let k = key_arg(key)?;
    match connect(args)?.get(&k)? {
        Some(e) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", e.value);
            let _ = out.flush();
            Ok(())
        }
        None => Err(Failure::miss(format!("key {k:?} not found"))),
    }
}

/// `kvs_client set KEY VALUE`.
pub(super) fn set(args: &Args, key: &OsString, value: &OsString) -> Result<(), Failure> {
    // Check every argument before connecting: a bad one writes nothing.
    let (k, v) = (key_arg(key)?, text_arg("value", value)?);
    Ok(connect(args)?.set(&k, &v)?)
}

/// `kvs_client post KEY VALUE`: exit 1 if the key exists.
pub(super) fn post(args: &Args, key: &OsString, value: &OsString) -> Result<(), Failure> {
    let (k, v) = (key_arg(key)?, text_arg("value", value)?);
    if connect(args)?.post(&k, &v)? {
        Ok(())
    } else {
        Err(Failure::miss(format!("key {k:?} already exists")))
    }
}

/// `kvs_client del KEY`: exit 1 if absent.
pub(super) fn del(args: &Args, key: &OsString) -> Result<(), Failure> {
    let k = key_arg(key)?;
    if connect(args)?.del(&k)? {
        Ok(())
    } else {
        Err(Failure::miss(format!("key {k:?} not found")))
    }
}

/// `kvs_client bench`: the load generator runs a typed client of the
/// server's value class (a text client would measure its own conversions).
pub(super) fn bench(args: &Args, bench: &kvs_bench::BenchArgs) -> Result<(), Failure> {
    let (info, _) = peek_info(&args.name, &options(args).connect_options())
        .map_err(|e| Failure::error(e.to_string()))?;
    let class = ValueClass::from_type_size(info.value.size).ok_or_else(|| {
        Failure::error(format!(
            "region {} holds values of type {}, which kvs_client bench cannot drive (it drives text regions made by kvs_server)",
            args.name,
            info.value.name()
        ))
    })?;
    with_value_class!(class, V => kvs_bench::run::<V>(&args.name, options(args), bench, &info))
        .map_err(|e| Failure::error(e.to_string()))
}

/// `kvs_client status`: from a probe, so it works even when every client
/// registration is taken.
pub(super) fn status(args: &Args, json: bool) -> Result<(), Failure> {
    let s = TextClient::probe_status(&args.name, &options(args))?;
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
        .map_or("unlimited".to_string(), |m| m.to_string());
    let _ = writeln!(
        out,
        "region        {}  ({} bytes, server pid {})",
        s.region, s.region_bytes, s.server_pid
    );
    let _ = writeln!(out, "types         {} -> {}", s.key_type, s.value_type);
    let _ = writeln!(out, "version       {}", s.version);
    let _ = writeln!(out, "entries       {} (limit {limit})", s.entries);
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
        "ops served    get {}  set {}  post {}  del {}  other {}  dropped {}",
        s.ops.get, s.ops.set, s.ops.post, s.ops.del, s.ops.other, s.ops.dropped
    );
    let _ = writeln!(
        out,
        "recovery      {} malformed, {} slots reclaimed, {} ring repairs, {} panics",
        s.malformed, s.slots_reclaimed, s.ring_repairs, s.panics
    );
}
