//! Group commit: many appenders, one sync.
//!
//! Each sync has a generation. An appender that has written its entry takes a *ticket*: the
//! generation of the next sync to start. Its entry is durable once a sync of at least that
//! generation has finished. A waiter with no sync running runs one itself (leader), covering
//! everyone who wrote before it started; the others wait on a condition variable or, for
//! futures, register a waker. So an append is acknowledged only after a sync that started after
//! its entry was written, and concurrent appenders share syncs.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Waker;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

#[derive(Debug, Default)]
struct State {
    /// Generation the next sync to start will have.
    next: u64,
    /// Highest generation whose sync has finished successfully.
    done: u64,
    /// A sync is running in [`GroupCommit::wait`].
    running: bool,
    /// A sync failed: every waiter gets this error from then on.
    failed: Option<(io::ErrorKind, String)>,
    /// Futures waiting for a generation.
    wakers: Vec<(u64, Waker)>,
}

/// Coordinates syncs between appenders of one instance.
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    cv: Condvar,
    /// Appends that have started writing but not yet taken their ticket.
    writing: AtomicUsize,
    /// How long the last sync took, in nanoseconds: bounds how long a leader waits for
    /// appends still being written before starting the next one.
    last_sync_nanos: AtomicU64,
    /// Tickets taken since the last sync was numbered, and how many the last sync covered:
    /// a leader waits (briefly) for a group as large as the last one.
    tickets_since: AtomicUsize,
    last_group: AtomicUsize,
}

/// An append in progress: counted until its ticket is taken (or it fails).
#[derive(Debug)]
pub(crate) struct Writing<'a>(&'a GroupCommit);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.writing.fetch_sub(1, Ordering::AcqRel);
    }
}

impl GroupCommit {
    /// Marks an append as being written, until the returned guard is dropped (after its ticket
    /// is taken). A leader about to sync waits a little for such appends, so that one sync
    /// covers them instead of the next one.
    pub(crate) fn writing(&self) -> Writing<'_> {
        self.writing.fetch_add(1, Ordering::AcqRel);
        Writing(self)
    }

    /// The ticket for a write that has just completed: it is durable once sync generation
    /// `ticket` has finished.
    pub(crate) fn ticket(&self) -> u64 {
        let st = self.state.lock();
        self.tickets_since.fetch_add(1, Ordering::AcqRel);
        st.next + 1
    }

    /// Gives appends being written a moment to finish and take their tickets, so that one sync
    /// covers them: while some are being written, or fewer tickets than the last sync covered
    /// have been taken, for at most half the last sync's duration (capped at 1 ms). A lone
    /// appender never waits.
    fn gather(&self) {
        let budget = Duration::from_nanos(self.last_sync_nanos.load(Ordering::Relaxed) / 2)
            .min(Duration::from_millis(1));
        let group = self.last_group.load(Ordering::Relaxed);
        let started = Instant::now();
        while (self.writing.load(Ordering::Acquire) > 0
            || self.tickets_since.load(Ordering::Acquire) < group)
            && started.elapsed() < budget
        {
            std::thread::yield_now();
        }
    }

    /// `Ok(true)` once the sync `ticket` needs has finished; otherwise registers `waker` (if
    /// given) to be woken when it does.
    pub(crate) fn poll_done(&self, ticket: u64, waker: Option<&Waker>) -> io::Result<bool> {
        let mut st = self.state.lock();
        if let Some((kind, msg)) = &st.failed {
            return Err(io::Error::new(*kind, msg.clone()));
        }
        if st.done >= ticket {
            return Ok(true);
        }
        if let Some(w) = waker {
            match st
                .wakers
                .iter_mut()
                .find(|(t, old)| *t == ticket && old.will_wake(w))
            {
                Some(_) => {}
                None => st.wakers.push((ticket, w.clone())),
            }
        }
        Ok(false)
    }

    /// Waits until a sync started after the ticket was taken has finished, running it with
    /// `sync` if no other thread is.
    pub(crate) fn wait(&self, ticket: u64, sync: impl Fn() -> io::Result<()>) -> io::Result<()> {
        let mut st = self.state.lock();
        loop {
            if let Some((kind, msg)) = &st.failed {
                return Err(io::Error::new(*kind, msg.clone()));
            }
            if st.done >= ticket {
                return Ok(());
            }
            if st.running {
                self.cv.wait(&mut st);
                continue;
            }
            // Lead: gather the appends still being written, then sync; the sync covers every
            // write that took a ticket <= its generation, all finished before it starts.
            st.running = true;
            drop(st);
            self.gather();
            st = self.state.lock();
            st.next += 1;
            let generation = st.next;
            self.last_group.store(
                self.tickets_since.swap(0, Ordering::AcqRel),
                Ordering::Relaxed,
            );
            drop(st);
            let started = Instant::now();
            let result = sync();
            self.last_sync_nanos
                .store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            st = self.state.lock();
            st.running = false;
            Self::complete(&mut st, generation, &result);
            self.cv.notify_all();
        }
    }

    /// Records a sync run outside [`wait`](Self::wait) (the background syncer, `flush`): it
    /// covers every ticket taken before this call.
    pub(crate) fn begin_external(&self) -> u64 {
        let mut st = self.state.lock();
        st.next += 1;
        self.tickets_since.store(0, Ordering::Release);
        st.next
    }

    /// Completes a sync begun with [`begin_external`](Self::begin_external).
    pub(crate) fn finish_external(&self, generation: u64, result: &io::Result<()>) {
        let mut st = self.state.lock();
        Self::complete(&mut st, generation, result);
        self.cv.notify_all();
    }

    fn complete(st: &mut State, generation: u64, result: &io::Result<()>) {
        match result {
            Ok(()) => st.done = st.done.max(generation),
            Err(e) => {
                if st.failed.is_none() {
                    st.failed = Some((e.kind(), format!("sync failed: {e}")));
                }
            }
        }
        let (done, failed) = (st.done, st.failed.is_some());
        let mut i = 0;
        while i < st.wakers.len() {
            if failed || st.wakers[i].0 <= done {
                st.wakers.swap_remove(i).1.wake();
            } else {
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn concurrent_waiters_share_syncs() {
        let gc = Arc::new(GroupCommit::default());
        let syncs = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (gc, syncs) = (gc.clone(), syncs.clone());
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        let t = gc.ticket();
                        gc.wait(t, || {
                            syncs.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(std::time::Duration::from_micros(200));
                            Ok(())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = syncs.load(Ordering::Relaxed);
        assert!(n < 800, "{n} syncs for 800 appends");
    }

    #[test]
    fn a_sync_running_when_the_write_completed_does_not_count() {
        let gc = GroupCommit::default();
        let g = gc.begin_external(); // a sync starts...
        let t = gc.ticket(); // ...then a write completes
        gc.finish_external(g, &Ok(()));
        assert!(
            !gc.poll_done(t, None).unwrap(),
            "covered by a sync that started before it was written"
        );
        gc.wait(t, || Ok(())).unwrap();
        assert!(gc.poll_done(t, None).unwrap());
    }

    #[test]
    fn failure_reaches_every_waiter_and_sticks() {
        let gc = GroupCommit::default();
        let t = gc.ticket();
        assert!(gc.wait(t, || Err(io::Error::other("EIO"))).is_err());
        let t2 = gc.ticket();
        assert!(gc.wait(t2, || Ok(())).is_err());
        assert!(gc.poll_done(t2, None).is_err());
    }
}
