//! What makes "acknowledged" mean "durable": per-file sync generations and group commit.
//!
//! The rule (docs/DESIGN.md, "Durability"): a write is covered only by a sync that *started
//! after the write completed* and *finished successfully*. Two pieces enforce it, and every
//! path that syncs — group commit, `flush`, the background syncer, drop, tickets — goes
//! through both:
//!
//! - [`FileSync`] counts the writes marked on one file and the count the last *completed* sync
//!   covered. A sync reads the count before it starts and publishes it only after it finished,
//!   under a per-file lock, so a sync that finds another one in flight waits for it and then
//!   syncs again if writes were marked after that one started. Dirty state is never cleared
//!   before the sync that covers it completes.
//! - [`GroupCommit`] numbers syncs. A writer takes a ticket after its write is marked: the
//!   number of the next sync to *start*. It is durable once a sync of at least that number has
//!   *finished*. Concurrent writers share one sync.
//!
//! Both use the `walrus-alloc` sync shim, so the loom models (`tests/loom.rs`, `cargo xtask
//! loom`) check exactly this code.

use std::io;
use std::sync::Arc;
use std::task::Waker;

use walrus_alloc::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use walrus_alloc::sync::thread::{Thread, current, park};
use walrus_alloc::sync::{Mutex, MutexGuard};

use crate::error::{Poisoned, poisoned_error};
use crate::yield_wait::YieldWait;

/// Sync generations of one file. See the [module docs](self).
#[derive(Debug, Default)]
pub struct FileSync {
    /// Writes marked so far (a count, not bytes).
    marked: AtomicU64,
    /// The value of `marked` the last completed sync read before it started.
    synced: AtomicU64,
    /// Serialises syncs of the file, so "completed" is well defined.
    syncing: Mutex<()>,
    /// A sync of this file failed: the kernel may have dropped its dirty pages, so a later
    /// "successful" sync would lie. Every later sync fails.
    failed: Mutex<Option<Arc<Poisoned>>>,
    /// Whether `failed` is set: a check without the lock, for every append.
    has_failed: AtomicBool,
}

impl FileSync {
    /// Records a completed write that a sync must cover. Call after the write returned.
    pub fn mark(&self) {
        self.marked.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether some marked write is not yet covered by a completed sync.
    pub fn is_dirty(&self) -> bool {
        self.synced.load(Ordering::Acquire) < self.marked.load(Ordering::Acquire)
    }

    /// Makes every write marked before this call durable with `sync_data`, unless a completed
    /// sync already covers them. When it returns `Ok`, they are on stable storage; on error the
    /// file stays dirty.
    ///
    /// # Errors
    /// The error of `sync_data`.
    pub fn sync(&self, sync_data: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let target = self.marked.load(Ordering::Acquire);
        if self.synced.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        let _serial = self.syncing.lock();
        // A sync that was in flight when we arrived may have covered us meanwhile.
        if self.synced.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        if let Some(p) = &*self.failed.lock() {
            return Err(poisoned_error(p));
        }
        // Everything marked up to now is covered by a sync that starts now.
        let covers = self.marked.load(Ordering::Acquire);
        let _fail_on_panic = FailOnPanic(self, std::thread::panicking());
        if let Err(e) = sync_data() {
            self.fail(&e);
            return Err(e);
        }
        self.synced.fetch_max(covers, Ordering::AcqRel);
        Ok(())
    }

    /// Every later sync fails with `e`'s cause.
    fn fail(&self, e: &io::Error) {
        *self.failed.lock() = Some(Arc::new(Poisoned::from_error(e)));
        self.has_failed.store(true, Ordering::Release);
    }

    /// The failure that makes every later sync of the file fail, once one failed.
    pub fn failure(&self) -> Option<Arc<Poisoned>> {
        if !self.has_failed.load(Ordering::Acquire) {
            return None;
        }
        self.failed.lock().clone()
    }
}

/// Fails every later sync of the file if dropped while its thread panics (a `sync_data` that
/// panicked, a backend's bug: what it wrote is not known), unless it already was when the
/// guard was made.
struct FailOnPanic<'a>(&'a FileSync, bool);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.1 {
            self.0.fail(&io::Error::other(
                "a sync of this file panicked: what it wrote is not known",
            ));
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Number the next sync to start will have.
    next: u64,
    /// Highest number whose sync has finished successfully (all below finished or were
    /// superseded: a later sync covers everything an earlier one would).
    done: u64,
    /// A sync is running in [`GroupCommit::wait`].
    running: bool,
    /// The numbers of the syncs numbered and not yet finished (a leader's, external ones).
    in_flight: Vec<u64>,
    /// A sync failed: every unfinished waiter gets this error from then on, once no sync
    /// still running could cover it.
    failed: Option<Arc<Poisoned>>,
    /// The instance closed: waiters whose sync never came get an error.
    closed: bool,
    /// Futures waiting for a sync number.
    wakers: Vec<(u64, Waker)>,
    /// Threads parked until their sync finishes.
    sleepers: Vec<Sleeper>,
}

/// A thread parked in [`GroupCommit::wait`] or [`GroupCommit::wait_passive`].
#[derive(Debug)]
struct Sleeper {
    ticket: u64,
    thread: Thread,
    /// It runs a sync itself when none is running ([`GroupCommit::wait`]): when a sync ends
    /// without covering it, one such sleeper is woken to lead the next.
    leads: bool,
}

/// Coordinates the syncs of one instance between its writers. See the [module docs](self).
///
/// A waiter whose sync is running first polls for its end, yielding the CPU between polls
/// (through at most two syncs, each for at most two syncs' time, and only while polls see
/// syncs end in time: see
/// [`with_yield_wait`](Self::with_yield_wait)); then it parks its own thread, and the thread
/// that completes a sync unparks exactly those it covered (and one to lead the next sync),
/// each directly: no wake-up chain through a lock, no herd.
#[derive(Debug)]
pub struct GroupCommit {
    state: Mutex<State>,
    /// `State::done`, for the check a woken waiter makes without the lock.
    done: AtomicU64,
    /// Appends that have started writing but not yet taken their ticket.
    writing: AtomicUsize,
    /// How long the last sync took, in nanoseconds: bounds how long a leader waits for
    /// appends still being written.
    last_sync_nanos: AtomicU64,
    /// Tickets taken since the last sync was numbered, and how many the last sync covered:
    /// a leader waits (briefly) for a group as large as the last one.
    tickets_since: AtomicUsize,
    last_group: AtomicUsize,
    /// `State::running`, for yield-waiters, who poll without the lock.
    running: AtomicBool,
    yielding: YieldWait,
    tally: Tally,
}

/// What the group commit did since the instance opened, as [`Stats::group_commit`]
/// reports it: the time between two syncs is the leaders' gathers plus the appenders' turns,
/// and these say how much of it the gathers took and how the waits ended.
///
/// [`Stats::group_commit`]: crate::Stats::group_commit
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupCommitStats {
    /// Group syncs an appender ran as its group's leader, whether or not they moved entries
    /// ([`Stats::syncs`](crate::Stats::syncs) counts only those that did, whoever ran them:
    /// `flush`, the background syncer and a close sync too).
    pub led: u64,
    /// Leaders' gathers that reached their budget (half the last sync) before the group was
    /// in: each one means an append that just missed this sync, or a group smaller than the
    /// last.
    pub gathers_out_of_time: u64,
    /// Time the leaders spent gathering, in µs; `gather_micros / led` is the mean gather.
    pub gather_micros: u64,
    /// Times a `SyncEach` appender parked its thread to wait for a sync (after yield-waiting, or
    /// at once while yield-waiting is off; again after a spurious wake-up). Each costs a
    /// wake-up after the sync. Waits on a [`DurableTicket`](crate::DurableTicket) are not
    /// counted.
    pub parks: u64,
}

/// The counters behind [`GroupCommitStats`]. Plain `std` atomics, not the loom shim: they order
/// nothing, so the loom models need not explore them.
#[derive(Debug, Default)]
struct Tally {
    led: std::sync::atomic::AtomicU64,
    gathers_out_of_time: std::sync::atomic::AtomicU64,
    gather_nanos: std::sync::atomic::AtomicU64,
    parks: std::sync::atomic::AtomicU64,
}

impl Tally {
    fn gathered(&self, how: Gathered, took: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.led.fetch_add(1, Relaxed);
        if how == Gathered::OutOfTime {
            self.gathers_out_of_time.fetch_add(1, Relaxed);
        }
        self.gather_nanos
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    fn parked(&self) {
        self.parks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn stats(&self) -> GroupCommitStats {
        use std::sync::atomic::Ordering::Relaxed;
        GroupCommitStats {
            led: self.led.load(Relaxed),
            gathers_out_of_time: self.gathers_out_of_time.load(Relaxed),
            gather_micros: self.gather_nanos.load(Relaxed) / 1000,
            parks: self.parks.load(Relaxed),
        }
    }
}

impl Default for GroupCommit {
    /// Yield-waiting on.
    fn default() -> Self {
        Self::with_yield_wait(true)
    }
}

/// How a leader's gather ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gathered {
    /// The appends being written took their tickets, and the group is (nearly) as large as
    /// the last.
    Group,
    /// The budget ran out first.
    OutOfTime,
}

/// An append in progress, counted until its ticket is taken (or it fails).
#[derive(Debug)]
pub struct Writing<'a>(&'a GroupCommit);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.writing.fetch_sub(1, Ordering::AcqRel);
    }
}

impl GroupCommit {
    /// A group commit whose waiters yield-wait for a running sync before they park (`on`), or
    /// park at once. Yield-waiting spends CPU that would otherwise be idle to end each wait
    /// sooner, and turns itself off while polls see the syncs end late (other work has the
    /// CPU).
    pub fn with_yield_wait(on: bool) -> Self {
        Self {
            state: Mutex::default(),
            done: AtomicU64::default(),
            writing: AtomicUsize::default(),
            last_sync_nanos: AtomicU64::default(),
            tickets_since: AtomicUsize::default(),
            last_group: AtomicUsize::default(),
            running: AtomicBool::default(),
            yielding: YieldWait::new(on),
            tally: Tally::default(),
        }
    }

    /// Marks an append as being written until the guard drops (after its ticket is taken). A
    /// leader about to sync waits a little for such appends, so one sync covers them.
    pub fn writing(&self) -> Writing<'_> {
        self.writing.fetch_add(1, Ordering::AcqRel);
        Writing(self)
    }

    /// The ticket of a write that has completed (and been marked on its file): it is durable
    /// once sync number `ticket` has finished.
    pub fn ticket(&self) -> u64 {
        let st = self.state.lock();
        self.tickets_since.fetch_add(1, Ordering::AcqRel);
        st.next + 1
    }

    /// What this group commit did so far.
    pub fn stats(&self) -> GroupCommitStats {
        self.tally.stats()
    }

    /// `num / den` of the last sync's duration, capped at 1 ms: how long a thread may poll
    /// instead of sleeping.
    #[cfg(not(loom))]
    fn last_syncs(&self, num: u64, den: u64) -> std::time::Duration {
        std::time::Duration::from_nanos(
            self.last_sync_nanos
                .load(Ordering::Relaxed)
                .saturating_mul(num)
                / den,
        )
        .min(std::time::Duration::from_millis(1))
    }

    /// Gives appends being written a moment to take their tickets, so one sync covers them:
    /// until none is being written and tickets came from all but an eighth of the last group,
    /// for at most half the last sync's duration (capped at 1 ms). A lone appender never waits.
    ///
    /// Why not the whole last group: a group of 16 on 2 cores usually has one appender a turn
    /// behind (preempted, or woken late), and waiting for it ran more than half the gathers
    /// into their budget; with an eighth to spare the time between syncs fell by a sixth at 16
    /// threads (docs/BENCHMARKS.md). Groups under 8 still wait for every member.
    #[cfg(not(loom))]
    fn gather(&self) -> Gathered {
        let budget = self.last_syncs(1, 2);
        let last = self.last_group.load(Ordering::Relaxed);
        let group = last - last / 8;
        let started = std::time::Instant::now();
        loop {
            if self.writing.load(Ordering::Acquire) == 0
                && self.tickets_since.load(Ordering::Acquire) >= group
            {
                return Gathered::Group;
            }
            if started.elapsed() >= budget {
                return Gathered::OutOfTime;
            }
            std::thread::yield_now();
        }
    }

    /// Under loom, timing is the model checker's business: no gathering.
    #[cfg(loom)]
    fn gather(&self) -> Gathered {
        Gathered::Group
    }

    /// Yield-waits (see [`crate::yield_wait`]) while the sync that is running may cover
    /// `ticket`: for at most two syncs' time, since a ticket taken while a sync runs needs the
    /// next one (capped at 1 ms).
    #[cfg(not(loom))]
    fn yield_wait(&self, ticket: u64) {
        let budget = self.last_syncs(2, 1);
        self.yielding.wait(budget, || {
            self.done.load(Ordering::Acquire) >= ticket || !self.running.load(Ordering::Acquire)
        });
    }

    /// Under loom, waiters park at once: the model explores the parking protocol, and a
    /// poll loop would only multiply its interleavings.
    #[cfg(loom)]
    fn yield_wait(&self, _ticket: u64) {}

    /// Whether `ticket` has no hope left: a sync failed or the instance closed, and no sync
    /// is still running. Any running sync may yet succeed and make the entries durable, and
    /// visible, so their append must not be told it failed: not only one numbered to cover
    /// the ticket, since numbering is conservative but a sync takes its snapshot of what is
    /// written after it was numbered, and so may cover writes of later tickets too. (Once
    /// failed, no new sync starts: the set of running ones only shrinks.)
    fn hopeless(st: &State, ticket: u64) -> bool {
        (st.failed.is_some() || st.closed) && st.done < ticket && st.in_flight.is_empty()
    }

    /// The answer for `ticket` now: `Some(Ok)` durable, `Some(Err)` never will be, `None` not
    /// yet.
    fn settled(st: &State, ticket: u64) -> Option<io::Result<()>> {
        if st.done >= ticket {
            return Some(Ok(()));
        }
        if !Self::hopeless(st, ticket) {
            return None;
        }
        if let Some(p) = &st.failed {
            return Some(Err(poisoned_error(p)));
        }
        if st.closed {
            return Some(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the Walrus instance was closed before this write was synced",
            )));
        }
        None
    }

    /// `Ok(true)` once the sync `ticket` needs has finished; otherwise registers `waker` (if
    /// given) to be woken when it does.
    ///
    /// # Errors
    /// The sync failed (the instance is poisoned), or the instance closed first.
    pub fn poll_done(&self, ticket: u64, waker: Option<&Waker>) -> io::Result<bool> {
        if self.done.load(Ordering::Acquire) >= ticket {
            return Ok(true);
        }
        let mut st = self.state.lock();
        if let Some(r) = Self::settled(&st, ticket) {
            return r.map(|()| true);
        }
        if let Some(w) = waker
            && !st
                .wakers
                .iter()
                .any(|(t, old)| *t == ticket && old.will_wake(w))
        {
            st.wakers.push((ticket, w.clone()));
        }
        Ok(false)
    }

    /// Waits until a sync started after the ticket was taken has finished, running it with
    /// `sync` if no other thread is (this thread leads the group).
    ///
    /// # Errors
    /// As [`poll_done`](Self::poll_done), or the error `sync` returned.
    pub fn wait(&self, ticket: u64, sync: impl Fn() -> io::Result<()>) -> io::Result<()> {
        // Yield-waits left: one for the sync running when this waiter arrived, one for the
        // sync after it, which covers it (another waiter may have begun leading that one by
        // the time this one sees the first end). Then it parks.
        let mut polls = 2u8;
        loop {
            if self.done.load(Ordering::Acquire) >= ticket {
                return Ok(());
            }
            let mut st = self.state.lock();
            if let Some(r) = Self::settled(&st, ticket) {
                return r;
            }
            if st.running {
                if polls > 0 {
                    polls -= 1;
                    drop(st);
                    self.yield_wait(ticket);
                    continue;
                }
                self.tally.parked();
                Self::sleep(st, ticket, true);
                continue;
            }
            if st.failed.is_some() || st.closed {
                // Only a sync already running can still cover it: wait for its end.
                Self::sleep(st, ticket, false);
                continue;
            }
            // Lead: gather the appends still being written, then sync; the sync covers every
            // write that took a ticket <= its number, all marked before it starts.
            st.running = true;
            self.running.store(true, Ordering::Release);
            drop(st);
            let gather_started = std::time::Instant::now();
            let gathered = self.gather();
            self.tally.gathered(gathered, gather_started.elapsed());
            st = self.state.lock();
            st.next += 1;
            let number = st.next;
            st.in_flight.push(number);
            self.last_group.store(
                self.tickets_since.swap(0, Ordering::AcqRel),
                Ordering::Relaxed,
            );
            drop(st);
            let started = std::time::Instant::now();
            let leading = InFlight {
                commits: self,
                number,
                leads: true,
            };
            let result = sync();
            std::mem::forget(leading);
            self.last_sync_nanos.store(
                u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            st = self.state.lock();
            st.running = false;
            let woken = self.complete(&mut st, number, &result);
            // After `complete` stamped the end: a yield-waiter that sees no sync running
            // measures its lateness from it.
            self.running.store(false, Ordering::Release);
            drop(st);
            unpark(woken);
            if let Err(e) = result {
                // Its own error, unless a sync still running may cover the ticket after all:
                // then the loop waits for that one to settle it.
                let st = self.state.lock();
                if st.done < ticket && st.in_flight.is_empty() {
                    return Err(e);
                }
            }
        }
    }

    /// Waits, without syncing itself, until `ticket` is settled; `request` asks whoever syncs
    /// (the background syncer) for a sync that starts after it is called.
    ///
    /// # Errors
    /// As [`poll_done`](Self::poll_done).
    pub fn wait_passive(&self, ticket: u64, request: impl Fn()) -> io::Result<()> {
        let mut requested = false;
        loop {
            if self.done.load(Ordering::Acquire) >= ticket {
                return Ok(());
            }
            let st = self.state.lock();
            if let Some(r) = Self::settled(&st, ticket) {
                return r;
            }
            if !requested {
                // Outside the lock: the syncer takes it to number its sync.
                drop(st);
                request();
                requested = true;
                continue;
            }
            Self::sleep(st, ticket, false);
        }
    }

    /// Parks the calling thread until a sync covering `ticket` ends, the commits settle, or (if
    /// `leads`) it is picked to lead the next sync. Wake-ups may be spurious: callers re-check.
    fn sleep(mut st: MutexGuard<'_, State>, ticket: u64, leads: bool) {
        let thread = current();
        // An earlier, spuriously ended sleep of this thread may still be listed.
        st.sleepers.retain(|s| s.thread.id() != thread.id());
        st.sleepers.push(Sleeper {
            ticket,
            thread,
            leads,
        });
        drop(st);
        park();
    }

    /// Numbers a sync run outside [`wait`](Self::wait) (the background syncer, `flush`, drop):
    /// it covers every ticket taken before this call.
    pub fn begin_external(&self) -> u64 {
        let mut st = self.state.lock();
        st.next += 1;
        let number = st.next;
        st.in_flight.push(number);
        self.tickets_since.store(0, Ordering::Release);
        number
    }

    /// Runs `sync` numbered outside [`wait`](Self::wait) (the background syncer, `flush`,
    /// drop): it covers every ticket taken before it starts. A sync that panics counts as
    /// failed (its waiters get an error rather than wait for it forever).
    ///
    /// # Errors
    /// The error `sync` returned.
    pub fn external(&self, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        // Once a sync failed (or panicked, which poisons nothing else), none runs: it could
        // make durable, and visible, entries whose appends were told they failed.
        if let Some(p) = &self.state.lock().failed {
            return Err(poisoned_error(p));
        }
        let number = self.begin_external();
        let guard = InFlight {
            commits: self,
            number,
            leads: false,
        };
        let result = sync();
        std::mem::forget(guard);
        self.finish_external(number, &result);
        result
    }

    /// Completes a sync begun with [`begin_external`](Self::begin_external).
    pub fn finish_external(&self, number: u64, result: &io::Result<()>) {
        let mut st = self.state.lock();
        let woken = self.complete(&mut st, number, result);
        drop(st);
        unpark(woken);
    }

    /// The instance is gone: waiters not yet covered get an error instead of waiting forever.
    pub fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        let woken = Self::wake(&mut st);
        drop(st);
        unpark(woken);
    }

    /// Records that the instance is poisoned by `failure` (a sync failed elsewhere).
    pub fn poison(&self, failure: &Arc<Poisoned>) {
        let mut st = self.state.lock();
        st.failed.get_or_insert_with(|| failure.clone());
        let woken = Self::wake(&mut st);
        drop(st);
        unpark(woken);
    }

    /// Records the end of sync `number`; the threads to unpark.
    fn complete(&self, st: &mut State, number: u64, result: &io::Result<()>) -> Woken {
        self.yielding.happened();
        st.in_flight.retain(|&n| n != number);
        match result {
            Ok(()) => {
                st.done = st.done.max(number);
                self.done.store(st.done, Ordering::Release);
            }
            Err(e) => {
                if st.failed.is_none() {
                    st.failed = Some(Arc::new(Poisoned::from_error(e)));
                }
            }
        }
        Self::wake(st)
    }

    /// Lists what to wake now, once the lock is released: the futures settled, the threads
    /// settled, and, when no sync runs but some leading waiter is still uncovered, one of those
    /// to lead the next.
    fn wake(st: &mut State) -> Woken {
        // Failed or closed, with no sync running, every ticket is settled (uncovered ones as
        // errors): see `hopeless`.
        let failing = (st.failed.is_some() || st.closed) && st.in_flight.is_empty();
        let done = st.done;
        let settles = |ticket: u64| ticket <= done || failing;
        let mut wakers = Vec::new();
        let mut i = 0;
        while i < st.wakers.len() {
            if settles(st.wakers[i].0) {
                wakers.push(st.wakers.swap_remove(i).1);
            } else {
                i += 1;
            }
        }
        let mut threads = Vec::new();
        st.sleepers.retain(|s| {
            let settled = settles(s.ticket);
            if settled {
                threads.push(s.thread.clone());
            }
            !settled
        });
        if !st.running
            && let Some(i) = st.sleepers.iter().position(|s| s.leads)
        {
            threads.push(st.sleepers.swap_remove(i).thread);
        }
        Woken { threads, wakers }
    }
}

/// A numbered sync in progress, a leader's (`leads`) or an external one. Dropped only if the
/// sync panicked (a completed sync forgets it): the sync's outcome is unknown, so it counts as
/// failed, and the waiters it would have freed, and every later one, get the error instead of
/// waiting for a sync that never ends.
struct InFlight<'a> {
    commits: &'a GroupCommit,
    number: u64,
    leads: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let gc = self.commits;
        let mut st = gc.state.lock();
        if self.leads {
            st.running = false;
        }
        let failed = Err(io::Error::other("a group sync panicked"));
        let woken = gc.complete(&mut st, self.number, &failed);
        if self.leads {
            gc.running.store(false, Ordering::Release);
        }
        drop(st);
        unpark(woken);
    }
}

/// What a change of the commits' state settled: threads to unpark and futures to wake.
#[must_use]
struct Woken {
    threads: Vec<Thread>,
    wakers: Vec<Waker>,
}

/// Unparks and wakes what `woken` lists, outside the lock: so that they find it free, and
/// so that a waker that polls its future at once (as some executors' do) can take it.
fn unpark(woken: Woken) {
    for t in woken.threads {
        t.unpark();
    }
    for w in woken.wakers {
        w.wake();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn concurrent_waiters_share_syncs() {
        let gc = Arc::new(GroupCommit::default());
        let syncs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (gc, syncs) = (gc.clone(), syncs.clone());
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        let t = gc.ticket();
                        gc.wait(t, || {
                            syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        let n = syncs.load(std::sync::atomic::Ordering::Relaxed);
        assert!(n < 800, "{n} syncs for 800 appends");
    }

    /// The rule, under 8 concurrent writers: an append returns only once a sync that started
    /// after its write has finished — whether waiters poll (yield-wait) or park.
    fn waiters_return_only_after_a_sync_that_started_after_their_write(yield_wait: bool) {
        use std::sync::atomic::Ordering::SeqCst;
        let gc = Arc::new(GroupCommit::with_yield_wait(yield_wait));
        let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let durable = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let syncs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (gc, written, durable, syncs) =
                    (gc.clone(), written.clone(), durable.clone(), syncs.clone());
                std::thread::spawn(move || {
                    for j in 0..150u64 {
                        let mine = written.fetch_add(1, SeqCst) + 1;
                        let t = gc.ticket();
                        gc.wait(t, || {
                            let covers = written.load(SeqCst);
                            syncs.fetch_add(1, SeqCst);
                            std::thread::sleep(std::time::Duration::from_micros(
                                50 + (i * 31 + j * 17) % 200,
                            ));
                            durable.fetch_max(covers, SeqCst);
                            Ok(())
                        })
                        .unwrap();
                        assert!(
                            durable.load(SeqCst) >= mine,
                            "write {mine} returned before a sync covered it"
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = syncs.load(SeqCst);
        assert!(n < 1200, "{n} syncs for 1200 appends: none shared");
    }

    #[test]
    fn yield_waiters_return_only_after_a_covering_sync() {
        waiters_return_only_after_a_sync_that_started_after_their_write(true);
    }

    #[test]
    fn parked_waiters_return_only_after_a_covering_sync() {
        waiters_return_only_after_a_sync_that_started_after_their_write(false);
    }

    #[test]
    fn closing_while_a_waiter_yield_waits_settles_it() {
        // A leader's sync is in flight; a writer whose ticket it does not cover yield-waits;
        // the instance closes, then the sync ends. The writer must get BrokenPipe, neither hang
        // nor report its write durable.
        let gc = Arc::new(GroupCommit::with_yield_wait(true));
        // A first sync of 2 ms sets the poll budget to its cap, 1 ms.
        let t = gc.ticket();
        gc.wait(t, || {
            std::thread::sleep(std::time::Duration::from_millis(2));
            Ok(())
        })
        .unwrap();
        let (leader, release_tx) = leader_in_sync(&gc);
        let late = gc.ticket(); // taken while the sync runs: it needs the next one
        let writer = {
            let gc = gc.clone();
            std::thread::spawn(move || gc.wait(late, || Ok(())))
        };
        // Close within the writer's poll (as a rule; if it already parked, close wakes it).
        std::thread::sleep(std::time::Duration::from_micros(200));
        gc.close();
        release_tx.send(()).unwrap();
        leader.join().unwrap().unwrap();
        let e = writer.join().unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn a_sync_running_when_the_write_completed_does_not_count() {
        let gc = GroupCommit::default();
        let g = gc.begin_external(); // a sync starts...
        let t = gc.ticket(); // ...then a write completes
        gc.finish_external(g, &Ok(()));
        assert!(!gc.poll_done(t, None).unwrap());
        gc.wait(t, || Ok(())).unwrap();
        assert!(gc.poll_done(t, None).unwrap());
    }

    /// A later sync that fails does not fail a write that a sync still running covers: that
    /// one may succeed and make the write durable, and visible. The waiter is settled by the
    /// sync that covers it, either way.
    #[test]
    fn a_failed_later_sync_waits_for_the_running_sync_that_covers_the_write() {
        for covering_succeeds in [true, false] {
            let gc = Arc::new(GroupCommit::default());
            let t = gc.ticket(); // written...
            let covering = gc.begin_external(); // ...then a sync starts that covers it
            let later = gc.begin_external();
            gc.finish_external(later, &Err(io::Error::from_raw_os_error(5)));
            assert!(
                !gc.poll_done(t, None).unwrap(),
                "settled while its sync runs"
            );
            let waiter = {
                let gc = gc.clone();
                std::thread::spawn(move || gc.wait(t, || panic!("nothing leads: poisoned")))
            };
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert!(
                !waiter.is_finished(),
                "the waiter gave up on a running sync"
            );
            let result = if covering_succeeds {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(5))
            };
            gc.finish_external(covering, &result);
            let waited = waiter.join().unwrap();
            assert_eq!(waited.is_ok(), covering_succeeds, "{waited:?}");
            assert_eq!(gc.poll_done(t, None).is_ok(), covering_succeeds);
            // A write no running sync covers fails at once.
            let after = gc.ticket();
            assert!(gc.poll_done(after, None).is_err());
        }
    }

    /// A sync numbered before a ticket may still make its write durable (it takes its
    /// snapshot of what is written after it was numbered): while it runs, a failure of a
    /// later sync settles no ticket, and the engine's watermark then decides.
    #[test]
    fn a_failure_settles_no_ticket_while_any_sync_runs() {
        let gc = Arc::new(GroupCommit::default());
        let earlier = gc.begin_external();
        let t = gc.ticket(); // written after `earlier` was numbered, maybe before its snapshot
        let later = gc.begin_external();
        gc.finish_external(later, &Err(io::Error::from_raw_os_error(5)));
        assert!(
            !gc.poll_done(t, None).unwrap(),
            "settled while a sync that may cover it runs"
        );
        gc.finish_external(earlier, &Ok(()));
        assert!(gc.poll_done(t, None).is_err(), "settled once none runs");
    }

    /// A leader whose own sync fails does not report the failure while another sync it did
    /// not start, numbered to cover its ticket, still runs: that one may succeed.
    #[test]
    fn a_leader_whose_sync_fails_waits_for_a_running_sync_that_covers_it() {
        for other_succeeds in [true, false] {
            let gc = Arc::new(GroupCommit::with_yield_wait(false));
            let (entered_tx, entered_rx) = std::sync::mpsc::channel();
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let leader = {
                let gc = gc.clone();
                std::thread::spawn(move || {
                    let t = gc.ticket();
                    gc.wait(t, || {
                        entered_tx.send(()).unwrap();
                        let _ = go_rx.recv();
                        Err(io::Error::from_raw_os_error(5))
                    })
                })
            };
            entered_rx.recv().unwrap();
            let other = gc.begin_external();
            go_tx.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(30));
            assert!(
                !leader.is_finished(),
                "the leader gave up on a running sync"
            );
            let result = if other_succeeds {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(5))
            };
            gc.finish_external(other, &result);
            let led = leader.join().unwrap();
            assert_eq!(led.is_ok(), other_succeeds, "{led:?}");
        }
    }

    /// A waker whose `wake` polls its ticket at once, as an executor polling inline would; it
    /// keeps whether the poll found the ticket settled with an error.
    struct PollsInline {
        gc: Arc<GroupCommit>,
        ticket: u64,
        failed: parking_lot::Mutex<Option<bool>>,
    }

    impl std::task::Wake for PollsInline {
        fn wake(self: Arc<Self>) {
            let failed = self.gc.poll_done(self.ticket, None).is_err();
            *self.failed.lock() = Some(failed);
        }
    }

    /// Futures are woken outside the commits' lock: a waker that polls at once takes it (a
    /// failed sync settles the ticket, so the poll cannot answer from the done counter alone).
    #[test]
    fn a_waker_that_polls_at_once_finds_the_lock_free() {
        let gc = Arc::new(GroupCommit::default());
        let t = gc.ticket();
        let inline = Arc::new(PollsInline {
            gc: gc.clone(),
            ticket: t,
            failed: parking_lot::Mutex::new(None),
        });
        let waker = Waker::from(inline.clone());
        assert!(!gc.poll_done(t, Some(&waker)).unwrap());
        let sync = gc.begin_external();
        let finisher = {
            let gc = gc.clone();
            std::thread::spawn(move || {
                gc.finish_external(sync, &Err(io::Error::from_raw_os_error(5)));
            })
        };
        // Bounded: a wake under the lock would hang the finisher for good.
        for _ in 0..500 {
            if finisher.is_finished() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(finisher.is_finished(), "the waker's poll deadlocked");
        assert_eq!(*inline.failed.lock(), Some(true));
    }

    /// An external sync that panics counts as failed: a write it covered is settled with an
    /// error, not left waiting for it.
    #[test]
    fn an_external_sync_that_panics_settles_its_writes() {
        let gc = Arc::new(GroupCommit::default());
        let t = gc.ticket();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            gc.external(|| panic!("a sync that panics"))
        }));
        assert!(panicked.is_err());
        assert!(gc.poll_done(t, None).is_err());
        // And no sync runs after it (it would make durable what waiters were told failed).
        assert!(gc.external(|| panic!("ran after the failure")).is_err());
    }

    #[test]
    fn failure_reaches_every_waiter_and_sticks() {
        let gc = GroupCommit::default();
        let t = gc.ticket();
        let first = gc
            .wait(t, || Err(io::Error::from_raw_os_error(5)))
            .unwrap_err();
        assert_eq!(
            first.raw_os_error(),
            Some(5),
            "the first caller gets the error itself"
        );
        let t2 = gc.ticket();
        let later = gc.wait(t2, || Ok(())).unwrap_err();
        assert_eq!(later.kind(), first.kind());
        assert!(crate::is_poisoned(&later));
        assert!(crate::is_poisoned(&gc.poll_done(t2, None).unwrap_err()));
    }

    /// A sync that panics fails its group (its outcome is unknown) and poisons the group
    /// commit: a waiter parked behind it is woken with the error, not left waiting.
    #[test]
    fn a_sync_that_panics_fails_its_waiters_rather_than_hanging_them() {
        let gc = Arc::new(GroupCommit::with_yield_wait(false));
        let leader_in = Arc::new(std::sync::Barrier::new(2));
        let leader = {
            let (gc, leader_in) = (gc.clone(), leader_in.clone());
            std::thread::spawn(move || {
                let t = gc.ticket();
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    gc.wait(t, || {
                        leader_in.wait();
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        panic!("a sync that panics");
                    })
                }))
                .is_err()
            })
        };
        leader_in.wait();
        // Taken while the sync runs: it needs the next one, and parks for it. (On a thread
        // of its own, so that a regression fails the test instead of hanging it.)
        let t = gc.ticket();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = gc.clone();
        std::thread::spawn(move || tx.send(waiter.wait(t, || Ok(()))));
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the waiter was left parked")
            .unwrap_err();
        assert!(crate::is_poisoned(&e), "{e}");
        assert!(e.to_string().contains("panicked"), "{e}");
        assert!(leader.join().unwrap(), "the leader's wait unwound");
    }

    #[test]
    fn close_settles_waiters_not_covered() {
        let gc = GroupCommit::default();
        let covered = gc.ticket();
        let g = gc.begin_external();
        gc.finish_external(g, &Ok(()));
        let uncovered = gc.ticket();
        gc.close();
        assert!(gc.poll_done(covered, None).unwrap());
        let e = gc.wait_passive(uncovered, || {}).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn a_file_sync_in_flight_does_not_cover_later_marks() {
        // The defect this type exists for: a sync that starts while another is running must
        // not return before a sync that started after its write has finished.
        let fs = Arc::new(FileSync::default());
        fs.mark();
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let slow = {
            let fs = fs.clone();
            std::thread::spawn(move || {
                fs.sync(|| {
                    entered_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    Ok(())
                })
            })
        };
        entered_rx.recv().unwrap();
        fs.mark(); // a write completes while the first sync is in flight
        let synced = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let second = s.spawn(|| {
                fs.sync(|| {
                    synced.store(true, std::sync::atomic::Ordering::SeqCst);
                    Ok(())
                })
            });
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert!(
                !second.is_finished(),
                "returned while the first sync was in flight"
            );
            release_tx.send(()).unwrap();
            second.join().unwrap().unwrap();
        });
        slow.join().unwrap().unwrap();
        assert!(
            synced.load(std::sync::atomic::Ordering::SeqCst),
            "second write never synced"
        );
        assert!(!fs.is_dirty());
    }

    /// A leader gathers until all but an eighth of the last group took their tickets and no
    /// append is being written; groups under 8 wait for every member. (The budget, a tenth of a
    /// millisecond here, ends the gathers that cannot form.)
    #[test]
    fn a_gather_waits_for_all_but_an_eighth_of_the_last_group() {
        let gc = GroupCommit::default();
        gc.last_sync_nanos.store(200_000, Ordering::Relaxed);
        gc.last_group.store(16, Ordering::Relaxed);
        for _ in 0..13 {
            let _ = gc.ticket();
        }
        assert_eq!(gc.gather(), Gathered::OutOfTime, "13 of 16");
        let _ = gc.ticket();
        assert_eq!(gc.gather(), Gathered::Group, "14 of 16");
        let writing = gc.writing();
        assert_eq!(gc.gather(), Gathered::OutOfTime, "an append being written");
        drop(writing);
        assert_eq!(gc.gather(), Gathered::Group);

        gc.last_group.store(4, Ordering::Relaxed);
        gc.tickets_since.store(3, Ordering::Relaxed);
        assert_eq!(gc.gather(), Gathered::OutOfTime, "3 of 4");
        let _ = gc.ticket();
        assert_eq!(gc.gather(), Gathered::Group, "4 of 4");
    }

    /// Each sync an appender leads is counted with how its gather ended and how long it took.
    #[test]
    fn stats_count_led_syncs_and_gathers_out_of_time() {
        let gc = GroupCommit::default();
        // A budget of 100 µs, run out by an append that never takes its ticket.
        gc.last_sync_nanos.store(200_000, Ordering::Relaxed);
        let writing = gc.writing();
        let t = gc.ticket();
        gc.wait(t, || Ok(())).unwrap();
        let s = gc.stats();
        assert_eq!((s.led, s.gathers_out_of_time), (1, 1), "{s:?}");
        assert!(s.gather_micros >= 100, "{s:?}");
        drop(writing);
        let t = gc.ticket();
        gc.wait(t, || Ok(())).unwrap();
        let s = gc.stats();
        assert_eq!((s.led, s.gathers_out_of_time, s.parks), (2, 1, 0), "{s:?}");
        // A sync run outside (`flush`, the background syncer) is not led by an appender.
        let number = gc.begin_external();
        gc.finish_external(number, &Ok(()));
        assert_eq!(gc.stats().led, 2);
    }

    /// A waiter that parks is counted; it then leads the sync that covers it.
    #[test]
    fn stats_count_parks() {
        let gc = Arc::new(GroupCommit::with_yield_wait(false));
        let (leader, release_tx) = leader_in_sync(&gc);
        let t = gc.ticket(); // taken while the sync runs: it needs the next one
        let waiter = {
            let gc = gc.clone();
            std::thread::spawn(move || gc.wait(t, || Ok(())))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while gc.stats().parks == 0 {
            // On failure the sender drops with this frame and the leader's sync ends.
            assert!(
                std::time::Instant::now() < deadline,
                "the waiter never parked"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        release_tx.send(()).unwrap();
        leader.join().unwrap().unwrap();
        waiter.join().unwrap().unwrap();
        let s = gc.stats();
        assert_eq!(s.led, 2, "{s:?}");
        assert!(s.parks >= 1, "{s:?}");
    }

    /// A thread that leads a sync which runs until the returned sender sends (or drops);
    /// returns once that sync is running.
    fn leader_in_sync(
        gc: &Arc<GroupCommit>,
    ) -> (
        std::thread::JoinHandle<io::Result<()>>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let leader = {
            let gc = gc.clone();
            std::thread::spawn(move || {
                let t = gc.ticket();
                gc.wait(t, || {
                    entered_tx.send(()).unwrap();
                    let _ = release_rx.recv();
                    Ok(())
                })
            })
        };
        entered_rx.recv().unwrap();
        (leader, release_tx)
    }
}
