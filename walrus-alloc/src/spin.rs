//! A minimal test-and-test-and-set spin lock with crossbeam-utils' `Backoff`.
//!
//! The allocator's critical section is a handful of integer operations, so parking a thread
//! would cost more than waiting. The lock is only reachable through [`SpinLock::with`], whose
//! closure cannot outlive the critical section: nothing slow (file creation, preallocation,
//! fsync) can be done while it is held by accident, and a panic inside the closure still
//! releases it through the RAII guard.

use std::fmt;

use crate::sync::Backoff;
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::cell::UnsafeCell;

/// Spin lock around a `T`.
pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&mut T` to one thread at a time (acquire/release on `locked`),
// which is exactly the contract of `std::sync::Mutex<T>: Sync` for `T: Send`.
unsafe impl<T: Send> Sync for SpinLock<T> {}

/// Releases the lock on drop, including during unwinding.
struct Guard<'a> {
    locked: &'a AtomicBool,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.locked.store(false, Ordering::Release);
    }
}

impl<T> SpinLock<T> {
    /// A new, unlocked lock around `value`.
    pub(crate) fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Runs `f` with exclusive access to the value. The lock is released when `f` returns or
    /// unwinds.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let _guard = self.acquire();
        self.value.with_mut(|ptr| {
            // SAFETY: `_guard` proves this thread holds the lock, so no other reference to the
            // value exists until it is dropped after this closure returns; `ptr` comes from the
            // cell and is valid and aligned.
            f(unsafe { &mut *ptr })
        })
    }

    fn acquire(&self) -> Guard<'_> {
        let backoff = Backoff::new();
        loop {
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Guard {
                    locked: &self.locked,
                };
            }
            // Wait on a plain load so contending threads do not bounce the cache line with
            // failed read-modify-writes.
            while self.locked.load(Ordering::Relaxed) {
                backoff.snooze();
            }
        }
    }
}

impl<T> fmt::Debug for SpinLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpinLock")
            .field("locked", &self.locked.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_under_contention() {
        let lock = Arc::new(SpinLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        lock.with(|v| *v += 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(lock.with(|v| *v), 40_000);
    }

    #[test]
    fn panic_inside_releases_the_lock() {
        let lock = SpinLock::new(1u32);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lock.with(|_| panic!("boom"));
        }));
        assert!(r.is_err());
        assert_eq!(lock.with(|v| *v), 1);
    }
}
