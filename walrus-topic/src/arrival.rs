//! Waking readers that wait for a topic's next entry: blocking waits with a deadline, and
//! futures (no runtime needed), both woken by the writer or the sync that makes an entry
//! visible.
//!
//! The protocol is the store-buffer pattern, made safe by a `SeqCst` fence on each side:
//!
//! - a publisher stores the new end, fences, and only if someone waits takes the lock to wake
//!   them (so an append with no waiter costs one fence and one load);
//! - a waiter counts itself in, fences, then takes the lock and checks the condition before it
//!   sleeps. Either the publisher sees the waiter counted (and wakes it under the lock, after
//!   the waiter's check), or the waiter's check sees the new end.
//!
//! `tests/loom.rs` checks this under every interleaving.

use std::collections::HashMap;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use walrus_alloc::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
use walrus_alloc::sync::{Condvar, Mutex};

/// The waiters of one topic. See the [module docs](self).
#[derive(Debug, Default)]
pub struct Arrivals {
    /// Blocked threads plus registered futures.
    waiting: AtomicUsize,
    /// Wakers of registered futures, by future.
    wakers: Mutex<HashMap<u64, Waker>>,
    cond: Condvar,
    next_id: AtomicU64,
}

/// A future's registration with [`Arrivals`]; unregistered on drop.
#[derive(Debug)]
pub struct Registration {
    id: u64,
    counted: bool,
}

impl Arrivals {
    /// Something waiters may be waiting for was published (call after publishing it).
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        let wakers = std::mem::take(&mut *self.wakers.lock());
        self.cond.notify_all();
        for (_, w) in wakers {
            w.wake();
        }
    }

    /// Blocks until `ready()` holds or `timeout` passes (`None`: no limit); whether it holds.
    pub fn wait(&self, timeout: Option<Duration>, ready: impl Fn() -> bool) -> bool {
        if ready() {
            return true;
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        self.waiting.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let mut guard = self.wakers.lock();
        let held = loop {
            if ready() {
                break true;
            }
            match (timeout, deadline) {
                (None, _) => guard = self.cond.wait(guard),
                // A timeout too long to add to now: as good as none.
                (Some(_), None) => guard = self.cond.wait(guard),
                (Some(_), Some(d)) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break ready();
                    }
                    guard = self.cond.wait_timeout(guard, left).0;
                }
            }
        };
        drop(guard);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        held
    }

    /// A registration for one future.
    pub fn register(&self) -> Registration {
        Registration {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            counted: false,
        }
    }

    /// Polls a future waiting for `ready()`: `Ready` once it holds, else its waker is kept for
    /// the next [`notify`](Self::notify).
    pub fn poll(
        &self,
        registration: &mut Registration,
        cx: &mut Context<'_>,
        ready: impl Fn() -> bool,
    ) -> Poll<()> {
        if ready() {
            self.unregister(registration);
            return Poll::Ready(());
        }
        if !registration.counted {
            registration.counted = true;
            self.waiting.fetch_add(1, Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
        let mut wakers = self.wakers.lock();
        if ready() {
            drop(wakers);
            self.unregister(registration);
            return Poll::Ready(());
        }
        wakers.insert(registration.id, cx.waker().clone());
        Poll::Pending
    }

    /// Ends a future's registration (also when it is dropped before it completes).
    pub fn unregister(&self, registration: &mut Registration) {
        if registration.counted {
            registration.counted = false;
            self.wakers.lock().remove(&registration.id);
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Threads and futures waiting now (for tests and stats).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}
