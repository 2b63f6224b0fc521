//! The store with its sync policy: group commit for appends that wait for durability, the
//! background syncer thread (periodic syncs, syncs that awaited tickets ask for, file-system
//! maintenance), the tier thread (uploads to a remote tier, if one is set), durable tickets,
//! and the close (stop both threads, persist cursors, sync, settle every ticket). The facade only maps its configuration onto this.

use std::io;
use std::ops::Range;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use walrus_io::Storage;

use crate::durability::{GroupCommit, Writing};
use crate::options::StoreOptions;
use crate::progress::Progress;
use crate::store::Store;
use crate::topic::Topic;

/// When appended entries reach stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncPolicy {
    /// Every append returns once it is durable; concurrent appenders share one sync.
    Each,
    /// The background syncer syncs at least this often.
    Every(Duration),
    /// Only [`Engine::flush`], a waited-on ticket, or the close syncs.
    OnFlush,
}

/// How often the background thread looks for maintenance (deleting consumed segments,
/// preparing the next segment file) when nothing else wakes it.
const MAINTENANCE_PERIOD: Duration = Duration::from_millis(50);

/// A [`Store`] run under a [`SyncPolicy`], with its background syncer.
///
/// Dropping it stops the syncer, persists the cursors, syncs (except under
/// [`SyncPolicy::OnFlush`]) and settles every outstanding [`DurableTicket`].
#[derive(Debug)]
pub struct Engine {
    inner: Arc<Inner>,
    syncer: Option<JoinHandle<()>>,
    /// The tier thread, when a remote tier is set: uploads off the syncer, so a slow remote
    /// delays only the uploads.
    tier: Option<(Arc<Stop>, JoinHandle<()>)>,
}

/// How often the background thread walks every topic (retention by age, placeholders no one
/// uses): a walk costs about a microsecond per topic.
const WALK_PERIOD: Duration = Duration::from_secs(1);

/// How often the tier thread looks for sealed blocks to upload.
const TIER_PERIOD: Duration = Duration::from_millis(100);

/// A stop flag a thread sleeps on.
#[derive(Debug, Default)]
struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    policy: SyncPolicy,
    /// Shared with the tickets, which must not keep the store alive.
    sync: Arc<SyncShared>,
    /// How often the background thread does its maintenance when nothing wakes it.
    maintenance_period: Duration,
}

/// What the engine shares with its [`DurableTicket`]s: group commit, and the way to ask the
/// background syncer for a sync.
#[derive(Debug)]
struct SyncShared {
    commits: GroupCommit,
    syncer: Mutex<SyncerState>,
    wake: Condvar,
}

impl SyncShared {
    /// Asks the background syncer for a sync (a ticket is waited on or awaited).
    fn request_sync(&self) {
        let mut st = self.syncer.lock();
        if !st.requested && !st.stop {
            st.requested = true;
            self.wake.notify_all();
        }
    }
}

#[derive(Debug, Default)]
struct SyncerState {
    stop: bool,
    /// A durable ticket is being awaited: sync soon.
    requested: bool,
}

impl Inner {
    /// One sync, accounted for in the group commit so waiting appenders it covers go free.
    fn sync_now(&self) -> io::Result<()> {
        self.sync.commits.external(|| self.store.sync())
    }

    /// Marks an append as being written, for the group-commit leader's gather, under
    /// [`SyncPolicy::Each`] only: nothing else gathers, and the count is one cache line every
    /// appending thread writes twice per append.
    fn before_write(&self) -> Option<Writing<'_>> {
        (self.policy == SyncPolicy::Each).then(|| self.sync.commits.writing())
    }

    /// Applies the sync policy to a write that just completed: entries below `end` of the
    /// topic whose progress is `progress`.
    fn after_write(
        &self,
        writing: Option<Writing<'_>>,
        progress: &Progress,
        end: u64,
    ) -> io::Result<()> {
        if self.policy == SyncPolicy::Each {
            let ticket = self.sync.commits.ticket();
            drop(writing);
            self.wait_durable(ticket, progress, end)?;
        }
        Ok(())
    }

    /// Waits for the sync `ticket` needs, leading it if none runs. A failed sync fails the
    /// wait unless another sync, numbered before this ticket but started after the write,
    /// already made the entries durable: they are visible then, so the append must not
    /// report a failure (see [`settled`]).
    fn wait_durable(&self, ticket: u64, progress: &Progress, end: u64) -> io::Result<()> {
        settled(
            self.sync.commits.wait(ticket, || self.store.sync()),
            progress,
            end,
        )
    }
}

/// The outcome of waiting for entries below `end` to be durable: `result`, unless it failed
/// while a sync that succeeded covered them anyway (the topic's durable watermark passed
/// them). Tickets are numbered conservatively (a sync covers every ticket taken before it
/// was numbered, and may also cover writes that completed after), so a write can be made
/// durable, and visible, by a sync other than its own; its own may then fail. Reporting that
/// failure would break "visible means acknowledged": a reader could consume an entry whose
/// writer was told it failed, and retry it.
fn settled(result: io::Result<()>, progress: &Progress, end: u64) -> io::Result<()> {
    match result {
        Err(_) if progress.durable() >= end => Ok(()),
        other => other,
    }
}

impl Engine {
    /// Opens (recovers) the store in `dir` and starts its background syncer.
    ///
    /// # Errors
    /// See [`Store::open`]; the syncer thread failing to start.
    pub fn open(
        dir: impl AsRef<Path>,
        storage: Arc<dyn Storage>,
        options: StoreOptions,
        policy: SyncPolicy,
    ) -> io::Result<Self> {
        let mark_interval = options.mark_interval();
        let options = StoreOptions {
            sync_at_close: policy != SyncPolicy::OnFlush,
            ..options
        };
        let sync = Arc::new(SyncShared {
            commits: GroupCommit::with_yield_wait(options.yield_wait()),
            syncer: Mutex::default(),
            wake: Condvar::new(),
        });
        let store = Store::open(dir, storage, options)?;
        let maintenance_period =
            MAINTENANCE_PERIOD.min(mark_interval.max(Duration::from_millis(1)));
        let inner = Arc::new(Inner {
            store,
            policy,
            sync,
            maintenance_period,
        });
        // One background syncer per engine: the periodic sync of `Every`, and the syncs that
        // awaited tickets ask for under every policy.
        let period = match policy {
            SyncPolicy::Every(p) => Some(p.max(Duration::from_millis(1))),
            SyncPolicy::Each | SyncPolicy::OnFlush => None,
        };
        let worker = Arc::clone(&inner);
        let syncer = std::thread::Builder::new()
            .name("walrus-syncer".into())
            .spawn(move || syncer_loop(&worker, period))?;
        let mut engine = Self {
            inner,
            syncer: Some(syncer),
            tier: None,
        };
        if engine.inner.store.has_tier() {
            let stop = Arc::new(Stop::default());
            let (worker, flag) = (Arc::clone(&engine.inner), Arc::clone(&stop));
            let thread = std::thread::Builder::new()
                .name("walrus-tier".into())
                .spawn(move || tier_loop(&worker, &flag))?;
            engine.tier = Some((stop, thread));
        }
        Ok(engine)
    }

    /// The store, for reads, cursors and what does not depend on the sync policy.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The store's [`Stats`](crate::Stats), with how the group commit gathered and waited.
    pub fn stats(&self) -> crate::Stats {
        let mut s = self.inner.store.stats();
        s.group_commit = self.inner.sync.commits.stats();
        s
    }

    /// The sync policy.
    pub fn policy(&self) -> SyncPolicy {
        self.inner.policy
    }

    /// Appends one entry; under [`SyncPolicy::Each`] it is durable when this returns.
    ///
    /// # Errors
    /// See [`Store::append`]; the sync's error under `Each`.
    pub fn append(&self, topic: &str, data: &[u8]) -> io::Result<u64> {
        let writing = self.inner.before_write();
        let (offset, topic) = self.inner.store.append_tracked(topic, data)?;
        self.inner
            .after_write(writing, &topic.progress, offset + 1)?;
        Ok(offset)
    }

    /// Appends an atomic batch; under [`SyncPolicy::Each`] it is durable when this returns.
    ///
    /// # Errors
    /// See [`Store::append_batch`]; the sync's error under `Each`.
    pub fn append_batch(&self, topic: &str, batch: &[&[u8]]) -> io::Result<Range<u64>> {
        let writing = self.inner.before_write();
        let (range, topic) = self.inner.store.append_batch_tracked(topic, batch)?;
        self.inner
            .after_write(writing, &topic.progress, range.end)?;
        Ok(range)
    }

    /// Appends one entry and returns at once, whatever the policy, with its ticket.
    ///
    /// # Errors
    /// See [`Store::append`].
    pub fn append_with_ticket(&self, topic: &str, data: &[u8]) -> io::Result<DurableTicket> {
        let (offset, topic) = self.inner.store.append_tracked(topic, data)?;
        Ok(self.ticket(offset..offset + 1, &topic))
    }

    /// Appends an atomic batch and returns at once with one ticket for all of it.
    ///
    /// # Errors
    /// See [`Store::append_batch`].
    pub fn append_batch_with_ticket(
        &self,
        topic: &str,
        batch: &[&[u8]],
    ) -> io::Result<DurableTicket> {
        let (offsets, topic) = self.inner.store.append_batch_tracked(topic, batch)?;
        Ok(self.ticket(offsets, &topic))
    }

    /// A ticket for `offsets` of `topic`. It holds the topic's progress, not the topic: a
    /// ticket keeps no block or file alive.
    fn ticket(&self, offsets: Range<u64>, topic: &Topic) -> DurableTicket {
        DurableTicket {
            sync: Arc::clone(&self.inner.sync),
            ticket: self.inner.sync.commits.ticket(),
            offsets,
            progress: Arc::clone(&topic.progress),
        }
    }

    /// Persists every cursor, then makes everything appended so far durable.
    ///
    /// # Errors
    /// The I/O error (the sync's first); a failed sync refuses further writes until the
    /// directory is reopened. The appends are synced also when a cursor could not be written.
    pub fn flush(&self) -> io::Result<()> {
        let persisted = self.inner.store.persist_cursors();
        self.inner.sync_now().and(persisted)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // The whole shutdown happens here, whatever tickets are still around: stop the
        // syncer, persist cursors, sync, settle every ticket; the store (lock, files) goes
        // with `inner`.
        // The tier thread finishes the pass it is in (each call to the remote has its own
        // deadline) and uploads nothing more.
        if let Some((stop, thread)) = self.tier.take() {
            *stop.stopped.lock() = true;
            stop.wake.notify_all();
            if thread.join().is_err() {
                tracing::warn!("walrus tier thread panicked");
            }
        }
        self.inner.sync.syncer.lock().stop = true;
        self.inner.sync.wake.notify_all();
        if let Some(handle) = self.syncer.take()
            && handle.join().is_err()
        {
            tracing::warn!("walrus syncer thread panicked");
        }
        if let Err(e) = self.inner.store.persist_cursors() {
            tracing::warn!(error = %e, "cursors not persisted at close");
        }
        if self.inner.policy != SyncPolicy::OnFlush
            && let Err(e) = self.inner.sync_now()
        {
            tracing::warn!(error = %e, "final sync at close failed");
        }
        self.inner.sync.commits.close();
    }
}

/// The tier thread: a tier pass every [`TIER_PERIOD`] until stopped (failures are logged by
/// the pass and retried by the next).
fn tier_loop(inner: &Inner, stop: &Stop) {
    let mut stopped = stop.stopped.lock();
    while !*stopped {
        drop(stopped);
        // A panic (a remote backend's) must not end the uploads for good: the pass holds
        // guards only, and the next pass starts over from what the tier and the disk hold.
        let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inner.store.tier_pass_until(&|| *stop.stopped.lock())
        }));
        if pass.is_err() {
            tracing::error!("a tier pass panicked; the next pass retries");
        }
        stopped = stop.stopped.lock();
        if !*stopped {
            let _ = stop.wake.wait_for(&mut stopped, TIER_PERIOD);
        }
    }
}

/// The background thread: syncs every `period` (if any) and whenever a ticket asks, and does
/// the store's slow file-system maintenance off the appending and reading threads.
fn syncer_loop(inner: &Inner, period: Option<Duration>) {
    let mut last_sync = Instant::now();
    let mut last_walk = Instant::now();
    let shared = &inner.sync;
    let mut st = shared.syncer.lock();
    loop {
        if st.stop {
            return;
        }
        if !st.requested {
            let wait = period.map_or(inner.maintenance_period, |p| {
                p.saturating_sub(last_sync.elapsed())
                    .min(inner.maintenance_period)
            });
            let _ = shared.wake.wait_for(&mut st, wait);
            if st.stop {
                return;
            }
        }
        let sync_due = st.requested || period.is_some_and(|p| last_sync.elapsed() >= p);
        st.requested = false;
        drop(st);
        if sync_due {
            last_sync = Instant::now();
        }
        let walk = last_walk.elapsed() >= WALK_PERIOD;
        if walk {
            last_walk = Instant::now();
        }
        // A panic (a backend's) must not end the thread: tickets waiting on it would wait
        // for ever, and `Every` would sync no more. The sync and the maintenance poison the
        // store as they unwind, so the syncs after this one fail and settle every ticket.
        let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            syncer_pass(inner, sync_due, walk);
        }));
        if pass.is_err() {
            tracing::error!(
                "the background syncer's pass panicked; writes are refused until reopen"
            );
        }
        st = shared.syncer.lock();
    }
}

/// One pass of the background syncer: the sync if one is due, then the maintenance (with a
/// walk over every topic if `walk`).
fn syncer_pass(inner: &Inner, sync_due: bool, walk: bool) {
    // A sync refused because the store is poisoned was logged when it was poisoned.
    if sync_due
        && let Err(e) = inner.sync_now()
        && !crate::is_poisoned(&e)
    {
        // The store is poisoned now: writes fail with this cause until reopened.
        tracing::error!(error = %e, "background sync failed; writes are refused until reopen");
    }
    if let Err(e) = inner.store.maintain_pass(walk) {
        tracing::warn!(error = %e, "background maintenance failed; an append will retry");
    }
}

/// A handle on the durability of one append (or batch): the append is written when the ticket
/// is handed out; the ticket says when it is on stable storage.
///
/// Wait for it with [`wait`](Self::wait), poll it with [`is_durable`](Self::is_durable), or
/// `.await` it: it is a [`Future`] driven by the engine's background syncer, so it needs no
/// particular async runtime.
#[derive(Debug)]
#[must_use = "a ticket does nothing unless waited on, polled or awaited"]
pub struct DurableTicket {
    /// Not the engine: a ticket never keeps a dropped instance (its lock, its files) alive.
    sync: Arc<SyncShared>,
    ticket: u64,
    offsets: Range<u64>,
    /// The topic's progress: a failed sync does not fail a ticket whose entries another sync
    /// made durable (see [`settled`]).
    progress: Arc<Progress>,
}

impl DurableTicket {
    /// The offset of the (first) entry.
    pub fn offset(&self) -> u64 {
        self.offsets.start
    }

    /// The offsets of the entries this ticket covers.
    pub fn offsets(&self) -> Range<u64> {
        self.offsets.clone()
    }

    /// Whether the entries are durable yet (never blocks, never syncs).
    ///
    /// # Errors
    /// The error of a failed sync: the entries may never become durable.
    pub fn is_durable(&self) -> io::Result<bool> {
        let polled = self.sync.commits.poll_done(self.ticket, None);
        self.settle(polled)
    }

    /// `polled`, or `Ok(true)` where the entries are durable whatever it says: a sync
    /// numbered before the ticket may have listed them (see [`settled`]), and readers then
    /// see them; a ticket must not call them "not yet" (or failed) meanwhile.
    fn settle(&self, polled: io::Result<bool>) -> io::Result<bool> {
        match polled {
            Err(e) => settled(Err(e), &self.progress, self.offsets.end).map(|()| true),
            Ok(false) => Ok(self.progress.durable() >= self.offsets.end),
            done => done,
        }
    }

    /// Blocks until the entries are durable (asking the background syncer for a sync now,
    /// shared with whoever else waits); returns their offsets.
    ///
    /// # Errors
    /// The error of the sync that failed (the store is poisoned, see
    /// [`is_poisoned`](crate::is_poisoned)), or `BrokenPipe` when the engine was dropped
    /// before any sync covered the entries (under [`SyncPolicy::OnFlush`]; the other policies
    /// sync at close).
    pub fn wait(self) -> io::Result<Range<u64>> {
        let sync = &self.sync;
        let waited = sync
            .commits
            .wait_passive(self.ticket, || sync.request_sync());
        settled(waited, &self.progress, self.offsets.end)?;
        Ok(self.offsets)
    }
}

impl Future for DurableTicket {
    type Output = io::Result<Range<u64>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let polled = self.sync.commits.poll_done(self.ticket, Some(cx.waker()));
        match self.settle(polled) {
            Ok(true) => Poll::Ready(Ok(self.offsets.clone())),
            Ok(false) => {
                self.sync.request_sync();
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use walrus_io::sim::{Fault, FaultRule, OpKind, SimStorage};

    use super::*;

    /// The background thread walks every topic once per [`WALK_PERIOD`], not on every pass:
    /// retention by age still releases what grew old.
    #[test]
    fn the_background_walk_applies_retention_by_age() {
        let sim = SimStorage::new(12);
        let storage = Arc::new(sim.clone()) as Arc<dyn Storage>;
        let options = StoreOptions::new()
            .with_block_len(8192)
            .with_segment_len(64 * 1024)
            .with_background_maintenance(true)
            .with_retention(crate::Retention::default().with_max_age(Duration::from_millis(30)));
        let engine = Engine::open("/wal", storage, options, SyncPolicy::Each).unwrap();
        for i in 0..100u8 {
            engine.append("t", &[i; 300]).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while engine.store().first_retained_offset("t") == Some(0) {
            assert!(Instant::now() < deadline, "old blocks were never released");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(engine.store().retained_blocks("t"), Some(1));
    }

    /// A panic in the background maintenance (a backend's, here preparing the next segment)
    /// poisons the store and leaves the syncer running: a ticket waited on afterwards gets
    /// the error instead of waiting for ever for a thread that is gone.
    #[test]
    fn a_panic_in_the_background_maintenance_poisons_and_leaves_the_syncer_running() {
        let sim = SimStorage::new(11);
        let storage = Arc::new(sim.clone()) as Arc<dyn Storage>;
        let options = StoreOptions::new()
            .with_block_len(8192)
            .with_segment_len(64 * 1024)
            .with_lanes(1)
            .with_background_maintenance(true);
        let policy = SyncPolicy::Every(Duration::from_secs(3600));
        let engine = Engine::open("/wal", storage, options, policy).unwrap();
        // The first append creates the lane's segment; the panic is armed after it.
        let ticket = engine.append_with_ticket("t0", b"first").unwrap();
        sim.inject(FaultRule::new(Fault::Panic).op(OpKind::Create).forever());
        // A block each (4 KiB for a short first entry): past half of the segment, so the
        // maintenance prepares the next one.
        for i in 1..9 {
            engine.append(&format!("t{i}"), b"x").unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while engine.store().poisoned().is_none() {
            assert!(
                Instant::now() < deadline,
                "the maintenance's panic did not poison the store"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let poisoned = engine.append("t0", b"after").unwrap_err();
        assert!(crate::is_poisoned(&poisoned), "{poisoned}");
        assert!(
            poisoned.to_string().contains("maintenance panicked"),
            "{poisoned}"
        );
        // On a thread of its own, so that a regression fails the test instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(ticket.wait()));
        let waited = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the ticket waits for a syncer that is gone");
        let e = waited.unwrap_err();
        assert!(crate::is_poisoned(&e), "{e}");
        sim.clear_faults();
    }

    /// A write that a sync numbered before its ticket made durable (a flush that began just
    /// before the write completed, and listed it) is visible; its own sync then fails. The
    /// append and its ticket report it durable, as readers see it, not the failure.
    #[test]
    fn an_entry_another_sync_made_durable_is_acknowledged_though_its_own_sync_fails() {
        for ticketed in [false, true] {
            let sim = SimStorage::new(5);
            let storage = Arc::new(sim.clone()) as Arc<dyn Storage>;
            let options = StoreOptions::new().with_block_len(8192);
            let engine = Engine::open("/wal", storage, options, SyncPolicy::Each).unwrap();
            let inner = &engine.inner;
            engine.append("t", b"first").unwrap();
            // The interleaving, step by step: a flush numbers its sync; the append writes and
            // takes the next ticket; the flush syncs (listing the entry) and completes.
            let number = inner.sync.commits.begin_external();
            let (offset, topic) = inner.store.append_tracked("t", b"x").unwrap();
            let progress = Arc::clone(&topic.progress);
            let ticket = DurableTicket {
                sync: Arc::clone(&inner.sync),
                ticket: inner.sync.commits.ticket(),
                offsets: offset..offset + 1,
                progress: Arc::clone(&progress),
            };
            let synced = inner.store.sync();
            inner.sync.commits.finish_external(number, &synced);
            synced.unwrap();
            assert!(engine.store().read_at("t", offset).unwrap().is_some());
            // Visible, so durable: the ticket says so, though its own sync has not run.
            assert!(
                ticket.is_durable().unwrap(),
                "readers see it, the ticket says not yet"
            );
            // The ticket's own sync fails (an append to another topic leads it: the same
            // number): the instance is poisoned from here on.
            sim.inject(FaultRule::new(Fault::Eio).op(OpKind::Sync).forever());
            let e = engine.append("u", b"y").unwrap_err();
            assert!(e.to_string().contains("Input/output error"), "{e}");
            if ticketed {
                assert_eq!(ticket.wait().unwrap(), offset..offset + 1);
            } else {
                inner
                    .wait_durable(ticket.ticket, &progress, offset + 1)
                    .unwrap();
            }
            // A new append is refused (poisoned), and so is a wait for it.
            let e = engine.append("t", b"after").unwrap_err();
            assert!(crate::is_poisoned(&e), "{e}");
            sim.clear_faults();
        }
    }
}
