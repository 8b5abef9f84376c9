//! The wall clock, in nanoseconds since the unix epoch: the one place the
//! crate (and the binaries) read it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the unix epoch (0 if the clock is before it,
/// `u64::MAX` after the year 2554).
pub fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// As [`unix_now_ns`], read from `CLOCK_REALTIME_COARSE`: the time of the
/// last scheduler tick (1-4 ms resolution), about 5 ns per call against
/// about 34 ns for `SystemTime::now()` on the benchmark machine. Every
/// write stamps an entry with it, so it is on the hot path, and a
/// modification time does not need better than millisecond resolution
/// (`BENCHMARKS.md`).
pub fn unix_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `timespec` that outlives the call;
    // `clock_gettime` only writes to it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    if rc != 0 || ts.tv_sec < 0 {
        return unix_now_ns();
    }
    (ts.tv_sec as u64)
        .checked_mul(1_000_000_000)
        .and_then(|ns| ns.checked_add(ts.tv_nsec as u64))
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_clocks_agree_within_their_resolution() {
        let fine = unix_now_ns();
        let coarse = unix_coarse_ns();
        // Past 2020, and the coarse clock at most one tick (<= 10 ms) apart.
        assert!(fine > 1_577_836_800_000_000_000);
        assert!(fine.abs_diff(coarse) < 10_000_000, "{fine} vs {coarse}");
    }
}
