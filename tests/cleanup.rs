//! Stale resources: `kvs_server --cleanup [--name NAME]` removes the socket
//! and lock file of servers that died, leaves live servers alone, and says
//! what it removed.
//!
//! One test function on purpose: the cleanup without `--name` scans the
//! whole socket directory, so it must not run beside other tests of this
//! binary that are starting servers.

mod common;

use common::*;
use std::process::{Command, Output, Stdio};

fn cleanup(name: Option<&str>) -> Output {
    let mut cmd = Command::new(server_bin());
    cmd.arg("--cleanup");
    if let Some(name) = name {
        cmd.args(["--name", name]);
    }
    cmd.env_remove("KVS_NAME")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A `kvs_server` killed with SIGKILL: its files stay behind.
fn dead_server(tag: &str) -> String {
    let name = unique_name(tag);
    let mut guard = ServerGuard::start(&name, &[]);
    let mut child = guard.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(socket_path(&name).exists() && lock_path(&name).exists());
    std::mem::forget(guard); // keep the files: they are what we clean up
    name
}

#[test]
fn cleanup_removes_dead_regions_and_keeps_live_ones() {
    let live_name = unique_name("cleanlive");
    let live = ServerGuard::start(&live_name, &[]);
    let out = kvs_client(&live_name, &["set", "k", "v"]);
    assert!(out.status.success());

    // By name: a dead one is removed, and the output names both files.
    let dead = dead_server("cleandead");
    let out = cleanup(Some(&dead));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains(&format!("removed {}", socket_path(&dead).display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("removed {}", lock_path(&dead).display())),
        "{text}"
    );
    assert!(!socket_path(&dead).exists() && !lock_path(&dead).exists());
    // Again: nothing left to do.
    let out = cleanup(Some(&dead));
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to clean up"));

    // By name, a live one: left alone, still serving.
    let out = cleanup(Some(&live_name));
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("a live server owns it"),
        "{out:?}"
    );
    assert!(socket_path(&live_name).exists() && lock_path(&live_name).exists());
    let out = kvs_client(&live_name, &["get", "k"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v");

    // Without a name: every dead region goes, the live one stays.
    let dead_a = dead_server("cleanall");
    let dead_b = dead_server("cleanall");
    let out = cleanup(None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for d in [&dead_a, &dead_b] {
        assert!(
            text.contains(&format!("removed {}", socket_path(d).display())),
            "{text}"
        );
        assert!(
            !socket_path(d).exists() && !lock_path(d).exists(),
            "{d} left behind"
        );
    }
    assert!(
        !text.contains(&live_name),
        "the live region was touched: {text}"
    );
    assert!(socket_path(&live_name).exists() && lock_path(&live_name).exists());
    let out = kvs_client(&live_name, &["get", "k"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v");
    drop(live);
}
