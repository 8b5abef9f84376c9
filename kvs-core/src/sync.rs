//! The std/loom switch.
//!
//! Every atomic and `UnsafeCell` that a lock-free protocol of this crate
//! touches comes from here, so that `RUSTFLAGS="--cfg loom"` swaps them for
//! [loom]'s model-checked versions (tokio's `loom` module does the same).
//!
//! Under loom the ring and the slot table run on heap storage only: loom's
//! atomics cannot live on mmap bytes, which is why both are written against a
//! header reference plus a slice of cells rather than against the region.
//!
//! [loom]: https://docs.rs/loom

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

#[cfg(not(loom))]
#[allow(unused_imports)] // `fence` is used by the store and the loom models
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// `UnsafeCell` with tokio's closure API, so loom can see every access.
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(loom::cell::UnsafeCell<T>);

#[cfg(loom)]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(loom::cell::UnsafeCell::new(value))
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        self.0.with(f)
    }

    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        self.0.with_mut(f)
    }
}

/// `UnsafeCell` with tokio's closure API, so loom can see every access.
///
/// `#[repr(transparent)]`: in the region a cell is laid out exactly as `T`.
#[cfg(not(loom))]
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    #[allow(dead_code)] // used by heap-backed storage in tests and benches
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Yield inside a spin loop: a loom yield point under loom, a CPU hint otherwise.
#[inline(always)]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Under loom, a `SeqCst` fence; otherwise nothing.
///
/// loom models `SeqCst` loads, stores and RMWs as `AcqRel` (a documented
/// limitation), so it cannot see the single total order that makes a Dekker
/// pair of `SeqCst` accesses correct and reports false lost wake-ups. Placed
/// between the two accesses of each side, this fence gives loom that order;
/// real builds already have it from the `SeqCst` accesses themselves.
#[inline(always)]
pub(crate) fn loom_sc_fence() {
    #[cfg(loom)]
    fence(Ordering::SeqCst);
}
