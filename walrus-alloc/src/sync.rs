//! Synchronization shim: std / parking_lot / crossbeam-utils normally, [`loom`] under `cfg(loom)`.
//!
//! Every concurrent type in this crate is imported from here, so one call site compiles against
//! the real primitives in production and against loom's model-checked ones when built with
//! `RUSTFLAGS="--cfg loom"`. The pattern follows tokio's `loom` module and crossbeam's
//! `primitive` module; upper crates can use this module directly (or copy it) to get the same
//! switch.
//!
//! The API is the intersection of both worlds, shaped after the production side:
//!
//! - [`Mutex::lock`] returns the guard directly (parking_lot style; loom's poisoning is ignored,
//!   since a panic while holding a lock already fails the model).
//! - [`cell::UnsafeCell`] exposes loom's closure API (`with`, `with_mut`), which the std
//!   version implements at zero cost, so loom can check every access for data races.
//! - [`Backoff`] is crossbeam-utils' `Backoff`; under loom every spin or snooze is a
//!   `loom::thread::yield_now`, which lets the model checker make progress through spin loops.
//!
//! [`loom`]: https://docs.rs/loom

#[cfg(not(loom))]
pub use std::sync::Arc;

#[cfg(loom)]
pub use loom::sync::Arc;

#[cfg(not(loom))]
pub use parking_lot::{Mutex, MutexGuard};

#[cfg(loom)]
pub use self::loom_mutex::{Mutex, MutexGuard};

#[cfg(not(loom))]
pub use self::std_condvar::Condvar;

#[cfg(loom)]
pub use self::loom_condvar::Condvar;

#[cfg(not(loom))]
pub use crossbeam_utils::Backoff;

#[cfg(loom)]
pub use self::loom_backoff::Backoff;

/// Atomic types and orderings.
pub mod atomic {
    #[cfg(not(loom))]
    pub use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};

    #[cfg(loom)]
    pub use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
}

/// Spin-loop hints.
pub mod hint {
    #[cfg(not(loom))]
    pub use std::hint::spin_loop;

    #[cfg(loom)]
    pub use loom::hint::spin_loop;
}

/// Threads (`spawn`, `yield_now`, parking), so tests and background workers can be modelled too.
pub mod thread {
    #[cfg(not(loom))]
    pub use std::thread::{JoinHandle, Thread, current, park, spawn, yield_now};

    #[cfg(loom)]
    pub use loom::thread::{JoinHandle, Thread, current, park, spawn, yield_now};
}

/// Interior mutability with loom's access checking.
pub mod cell {
    #[cfg(loom)]
    pub use loom::cell::UnsafeCell;

    #[cfg(not(loom))]
    pub use self::std_cell::UnsafeCell;

    #[cfg(not(loom))]
    mod std_cell {
        /// [`std::cell::UnsafeCell`] with loom's closure-based access API.
        #[derive(Debug, Default)]
        #[repr(transparent)]
        pub struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

        impl<T> UnsafeCell<T> {
            /// Wraps `value`.
            #[inline]
            pub const fn new(value: T) -> Self {
                Self(std::cell::UnsafeCell::new(value))
            }

            /// Runs `f` with a shared raw pointer to the value.
            #[inline]
            pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
                f(self.0.get())
            }

            /// Runs `f` with a unique raw pointer to the value.
            #[inline]
            pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
                f(self.0.get())
            }

            /// Consumes the cell, returning the value.
            #[inline]
            pub fn into_inner(self) -> T {
                self.0.into_inner()
            }
        }
    }
}

#[cfg(not(loom))]
mod std_condvar {
    use super::MutexGuard;

    /// parking_lot's `Condvar` with a guard-by-value `wait`, the shape both worlds share.
    #[derive(Debug, Default)]
    pub struct Condvar(parking_lot::Condvar);

    impl Condvar {
        /// A condition variable nobody waits on yet.
        pub const fn new() -> Self {
            Self(parking_lot::Condvar::new())
        }

        /// Releases `guard`, waits for a notification, and takes the lock again.
        pub fn wait<'a, T>(&self, mut guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.0.wait(&mut guard);
            guard
        }

        /// As [`wait`](Self::wait), for at most `timeout`; whether it timed out.
        pub fn wait_timeout<'a, T>(
            &self,
            mut guard: MutexGuard<'a, T>,
            timeout: std::time::Duration,
        ) -> (MutexGuard<'a, T>, bool) {
            let timed_out = self.0.wait_for(&mut guard, timeout).timed_out();
            (guard, timed_out)
        }

        /// Wakes every waiter.
        pub fn notify_all(&self) {
            self.0.notify_all();
        }
    }
}

#[cfg(loom)]
mod loom_condvar {
    use super::MutexGuard;

    /// loom's `Condvar` with the same API as the production side; poisoning is ignored.
    #[derive(Debug, Default)]
    pub struct Condvar(loom::sync::Condvar);

    impl Condvar {
        /// A condition variable nobody waits on yet.
        pub fn new() -> Self {
            Self(loom::sync::Condvar::new())
        }

        /// Releases `guard`, waits for a notification, and takes the lock again.
        pub fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.0
                .wait(guard)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        /// As [`wait`](Self::wait), for at most `timeout`; whether it timed out. (loom models
        /// no time: it may return either way.)
        pub fn wait_timeout<'a, T>(
            &self,
            guard: MutexGuard<'a, T>,
            timeout: std::time::Duration,
        ) -> (MutexGuard<'a, T>, bool) {
            match self.0.wait_timeout(guard, timeout) {
                Ok((g, t)) => (g, t.timed_out()),
                Err(p) => {
                    let (g, t) = p.into_inner();
                    (g, t.timed_out())
                }
            }
        }

        /// Wakes every waiter.
        pub fn notify_all(&self) {
            self.0.notify_all();
        }
    }
}

#[cfg(loom)]
mod loom_mutex {
    use std::fmt;

    /// loom's guard type, re-exported so signatures match the production side.
    pub use loom::sync::MutexGuard;

    /// loom's `Mutex` with parking_lot's non-poisoning `lock` signature.
    pub struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        /// Wraps `value`.
        pub fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }

        /// Blocks until the lock is held; poisoning is ignored.
        pub fn lock(&self) -> MutexGuard<'_, T> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        /// Takes the lock if it is free.
        pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            match self.0.try_lock() {
                Ok(guard) => Some(guard),
                Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            }
        }

        /// Consumes the mutex, returning the value.
        pub fn into_inner(self) -> T {
            self.0
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }

    impl<T: Default> Default for Mutex<T> {
        fn default() -> Self {
            Self::new(T::default())
        }
    }

    impl<T> fmt::Debug for Mutex<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Mutex").finish_non_exhaustive()
        }
    }
}

#[cfg(loom)]
mod loom_backoff {
    /// Stand-in for crossbeam-utils' `Backoff`: every wait is a loom yield, so spin loops are
    /// explored instead of spinning forever.
    #[derive(Debug, Default)]
    pub struct Backoff(());

    impl Backoff {
        /// A fresh backoff.
        pub fn new() -> Self {
            Self(())
        }

        /// No state to reset under loom.
        pub fn reset(&self) {}

        /// Yields to the model checker.
        pub fn spin(&self) {
            loom::thread::yield_now();
        }

        /// Yields to the model checker.
        pub fn snooze(&self) {
            loom::thread::yield_now();
        }

        /// Never completes: loom decides scheduling, not the backoff.
        pub fn is_completed(&self) -> bool {
            false
        }
    }
}
