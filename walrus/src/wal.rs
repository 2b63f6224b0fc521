//! [`Walrus`]: the instance, its seed-compatible API and the native offset API.

use std::io;
use std::ops::Range;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use walrus_topic::{RecoveryReport, Store};

use crate::builder::{Settings, WalrusBuilder};
use crate::config::{FsyncSchedule, ReadConsistency};
use walrus_topic::{GroupCommit, Writing};

/// One entry as returned by the reads of the seed-compatible API.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Entry {
    /// The bytes that were appended.
    pub data: Vec<u8>,
}

/// One entry with its offset, as returned by the native API.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Record {
    /// The entry's position in its topic: 0, 1, 2, … assigned at append, never reused.
    pub offset: u64,
    /// The bytes that were appended.
    pub data: Vec<u8>,
}

/// An embedded write-ahead log instance: one data directory, any number of topics.
///
/// `Walrus` is `Send + Sync`; share it between threads with an [`Arc`]. Dropping it stops the
/// background flusher, syncs (except under [`FsyncSchedule::NoFsync`]) and persists cursors.
///
/// ```
/// use walrus::Walrus;
///
/// let dir = tempfile::tempdir()?;
/// let wal = Walrus::builder().data_dir(dir.path()).build()?;
/// wal.append_for_topic("events", b"first")?;
/// wal.batch_append_for_topic("events", &[b"a", b"bb"])?;
/// assert_eq!(wal.read_next("events", false)?.unwrap().data, b"first"); // peek
/// assert_eq!(wal.read_next("events", true)?.unwrap().data, b"first"); // consume
/// let rest = wal.batch_read_for_topic("events", 1 << 20, true)?;
/// assert_eq!(rest.len(), 2);
/// wal.flush()?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Walrus {
    inner: Arc<Inner>,
    flusher: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    schedule: FsyncSchedule,
    consistency: ReadConsistency,
    /// Shared with the tickets, which must not keep the store alive.
    sync: Arc<SyncShared>,
    /// How often the background thread does its maintenance when nothing wakes it.
    maintenance_period: Duration,
}

/// What the instance shares with its [`DurableTicket`]s: group commit, and the way to ask the
/// background syncer for a sync.
#[derive(Debug, Default)]
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
        let number = self.sync.commits.begin_external();
        let result = self.store.sync();
        self.sync.commits.finish_external(number, &result);
        result
    }

    /// Applies the fsync schedule to a write that just completed.
    fn after_write(&self, writing: Writing<'_>) -> io::Result<()> {
        if self.schedule == FsyncSchedule::SyncEach {
            let ticket = self.sync.commits.ticket();
            drop(writing);
            self.sync.commits.wait(ticket, || self.store.sync())?;
        }
        Ok(())
    }
}

/// A handle on the durability of one append (or batch), from
/// [`Walrus::append_with_ticket`]: the append is written when the ticket is handed out; the ticket
/// says when it is on stable storage.
///
/// Wait for it with [`wait`](Self::wait), poll it with [`is_durable`](Self::is_durable), or
/// `.await` it: it is a [`Future`] driven by the instance's background syncer, so it needs no
/// particular async runtime.
///
/// ```
/// use walrus::{FsyncSchedule, Walrus};
///
/// let dir = tempfile::tempdir()?;
/// let wal = Walrus::builder().data_dir(dir.path()).fsync_schedule(FsyncSchedule::NoFsync).build()?;
/// let ticket = wal.append_with_ticket("events", b"hello")?; // returns at once
/// assert_eq!(ticket.offsets(), 0..1);
/// let durable = ticket.wait()?; // one sync, shared with whoever else is waiting
/// assert_eq!(durable, 0..1);
/// assert_eq!(wal.durable_offset("events"), Some(1));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
#[must_use = "a ticket does nothing unless waited on, polled or awaited"]
pub struct DurableTicket {
    /// Not the instance: a ticket never keeps a dropped instance (its lock, its files) alive.
    sync: Arc<SyncShared>,
    ticket: u64,
    offsets: Range<u64>,
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
        self.sync.commits.poll_done(self.ticket, None)
    }

    /// Blocks until the entries are durable (asking the instance's background syncer for a
    /// sync now, shared with whoever else waits); returns their offsets.
    ///
    /// # Errors
    /// The error of the sync that failed (the instance is poisoned, see
    /// [`is_poisoned`](crate::is_poisoned)), or `BrokenPipe` when the instance was dropped
    /// before any sync covered the entries (under `NoFsync`; other schedules sync at drop).
    pub fn wait(self) -> io::Result<Range<u64>> {
        let sync = &self.sync;
        sync.commits
            .wait_passive(self.ticket, || sync.request_sync())?;
        Ok(self.offsets)
    }
}

impl Future for DurableTicket {
    type Output = io::Result<Range<u64>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.sync.commits.poll_done(self.ticket, Some(cx.waker())) {
            Ok(true) => Poll::Ready(Ok(self.offsets.clone())),
            Ok(false) => {
                self.sync.request_sync();
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl Walrus {
    /// Opens the instance in the data root (`WALRUS_DATA_DIR`, default `./wal_files`), under
    /// `WALRUS_INSTANCE_KEY` if set, with `StrictlyAtOnce` and `Milliseconds(200)`.
    ///
    /// # Errors
    /// See [`WalrusBuilder::build`].
    pub fn new() -> io::Result<Self> {
        Self::builder().build()
    }

    /// Like [`new`](Self::new) with a read consistency.
    ///
    /// # Errors
    /// See [`WalrusBuilder::build`].
    pub fn with_consistency(mode: ReadConsistency) -> io::Result<Self> {
        Self::builder().consistency(mode).build()
    }

    /// Like [`new`](Self::new) with a read consistency and an fsync schedule.
    ///
    /// # Errors
    /// See [`WalrusBuilder::build`].
    pub fn with_consistency_and_schedule(
        mode: ReadConsistency,
        schedule: FsyncSchedule,
    ) -> io::Result<Self> {
        Self::builder()
            .consistency(mode)
            .fsync_schedule(schedule)
            .build()
    }

    /// Opens the instance for `key`: data under `<data root>/<key>/`.
    ///
    /// # Errors
    /// See [`WalrusBuilder::build`].
    pub fn new_for_key(key: &str) -> io::Result<Self> {
        Self::builder().key(key).build()
    }

    /// Like [`new_for_key`](Self::new_for_key) with a read consistency.
    ///
    /// # Errors
    /// See [`WalrusBuilder::build`].
    pub fn with_consistency_for_key(key: &str, mode: ReadConsistency) -> io::Result<Self> {
        Self::builder().key(key).consistency(mode).build()
    }

    /// Like [`new_for_key`](Self::new_for_key) with a read consistency and an fsync schedule.
    ///
    /// # Errors
    /// See [`WalrusBuilder::build`].
    pub fn with_consistency_and_schedule_for_key(
        key: &str,
        mode: ReadConsistency,
        schedule: FsyncSchedule,
    ) -> io::Result<Self> {
        Self::builder()
            .key(key)
            .consistency(mode)
            .fsync_schedule(schedule)
            .build()
    }

    /// A builder for every option.
    pub fn builder() -> WalrusBuilder {
        WalrusBuilder::new()
    }

    fn open(settings: Settings) -> io::Result<Self> {
        let Settings {
            dir,
            storage,
            options,
            consistency,
            schedule,
            quiet,
        } = settings;
        let mark_interval = options.mark_interval();
        let store = Store::open(&dir, storage, options)?;
        if !quiet {
            let r = store.recovery_report();
            tracing::info!(dir = %dir.display(), topics = store.topics().len(), segments = r.segments,
                blocks_scanned = r.blocks_scanned, entries = r.entries_scanned, issues = r.issues.len(),
                "walrus opened");
        }
        let maintenance_period =
            MAINTENANCE_PERIOD.min(mark_interval.max(Duration::from_millis(1)));
        let inner = Arc::new(Inner {
            store,
            schedule,
            consistency,
            sync: Arc::new(SyncShared::default()),
            maintenance_period,
        });
        // One background syncer per instance: the periodic flush of `Milliseconds(n)`, and the
        // syncs that awaited tickets ask for under every schedule.
        let period = match schedule {
            FsyncSchedule::Milliseconds(ms) => Some(Duration::from_millis(ms.max(1))),
            FsyncSchedule::SyncEach | FsyncSchedule::NoFsync => None,
        };
        let worker = inner.clone();
        let flusher = std::thread::Builder::new()
            .name("walrus-syncer".into())
            .spawn(move || syncer_loop(&worker, period))?;
        Ok(Self {
            inner,
            flusher: Some(flusher),
        })
    }

    // ---- The API users already know ------------------------------------------------------

    /// Appends `data` to `topic` (created on first use). Durability follows the fsync schedule.
    ///
    /// # Errors
    /// `InvalidInput` for a bad topic name or an entry over the size limit; an I/O error, which
    /// leaves the topic as it was.
    pub fn append_for_topic(&self, topic: &str, data: &[u8]) -> io::Result<()> {
        self.append(topic, data).map(|_| ())
    }

    /// Appends `batch` to `topic` atomically: all entries, contiguous, or none — also across a
    /// crash. At most 2000 entries and 10 GiB.
    ///
    /// # Errors
    /// `InvalidInput` for an empty or oversized batch, a bad topic name or entry; an I/O error,
    /// which leaves the topic as it was.
    pub fn batch_append_for_topic(&self, topic: &str, batch: &[&[u8]]) -> io::Result<()> {
        self.append_batch(topic, batch).map(|_| ())
    }

    /// Reads the next entry of `topic` at its cursor; `consume` moves the cursor past it
    /// (persisted as the read consistency says), otherwise it is a peek.
    ///
    /// # Errors
    /// `InvalidInput` for a bad topic name; `InvalidData` naming topic and offset for an entry
    /// that fails validation (never returned); an I/O error.
    pub fn read_next(&self, topic: &str, consume: bool) -> io::Result<Option<Entry>> {
        Ok(self
            .read_next_record(topic, consume)?
            .map(|r| Entry { data: r.data }))
    }

    /// Reads entries of `topic` from its cursor in commit order: at least one if any is unread,
    /// at most 2000, and no more than `max_bytes` of payload beyond the first.
    ///
    /// # Errors
    /// As [`read_next`](Self::read_next).
    pub fn batch_read_for_topic(
        &self,
        topic: &str,
        max_bytes: usize,
        consume: bool,
    ) -> io::Result<Vec<Entry>> {
        Ok(self
            .read_records(topic, max_bytes, consume)?
            .into_iter()
            .map(|r| Entry { data: r.data })
            .collect())
    }

    /// Makes everything appended so far durable, and persists every cursor.
    ///
    /// # Errors
    /// The I/O error; a failed sync refuses further writes until the directory is reopened.
    pub fn flush(&self) -> io::Result<()> {
        self.inner.store.persist_cursors()?;
        self.inner.sync_now()
    }

    // ---- The native API -------------------------------------------------------------------

    /// Appends `data` to `topic` and returns its offset. Durability follows the fsync schedule
    /// (under `SyncEach`, the entry is durable when this returns).
    ///
    /// # Errors
    /// As [`append_for_topic`](Self::append_for_topic).
    pub fn append(&self, topic: &str, data: &[u8]) -> io::Result<u64> {
        let writing = self.inner.sync.commits.writing();
        let offset = self.inner.store.append(topic, data)?;
        self.inner.after_write(writing)?;
        Ok(offset)
    }

    /// Appends `batch` to `topic` atomically and returns the range of offsets it got.
    ///
    /// # Errors
    /// As [`batch_append_for_topic`](Self::batch_append_for_topic).
    pub fn append_batch(&self, topic: &str, batch: &[&[u8]]) -> io::Result<Range<u64>> {
        let writing = self.inner.sync.commits.writing();
        let range = self.inner.store.append_batch(topic, batch)?;
        self.inner.after_write(writing)?;
        Ok(range)
    }

    /// Appends `data` to `topic` and returns at once (whatever the fsync schedule) with a
    /// [`DurableTicket`] that says when the entry is on stable storage.
    ///
    /// # Errors
    /// As [`append_for_topic`](Self::append_for_topic).
    pub fn append_with_ticket(&self, topic: &str, data: &[u8]) -> io::Result<DurableTicket> {
        let offset = self.inner.store.append(topic, data)?;
        Ok(self.ticket(offset..offset + 1))
    }

    /// Appends `batch` atomically and returns at once with a [`DurableTicket`] for all of it.
    ///
    /// # Errors
    /// As [`batch_append_for_topic`](Self::batch_append_for_topic).
    pub fn append_batch_with_ticket(
        &self,
        topic: &str,
        batch: &[&[u8]],
    ) -> io::Result<DurableTicket> {
        let offsets = self.inner.store.append_batch(topic, batch)?;
        Ok(self.ticket(offsets))
    }

    fn ticket(&self, offsets: Range<u64>) -> DurableTicket {
        DurableTicket {
            sync: self.inner.sync.clone(),
            ticket: self.inner.sync.commits.ticket(),
            offsets,
        }
    }

    /// One past the last durable entry of `topic`: every entry below it is on stable storage.
    pub fn durable_offset(&self, topic: &str) -> Option<u64> {
        self.inner.store.durable_offset(topic)
    }

    /// Like [`read_next`](Self::read_next), with the entry's offset.
    ///
    /// # Errors
    /// As [`read_next`](Self::read_next).
    pub fn read_next_record(&self, topic: &str, consume: bool) -> io::Result<Option<Record>> {
        check_topic(topic)?;
        Ok(self
            .inner
            .store
            .read_next(topic, consume)?
            .map(|(offset, data)| Record { offset, data }))
    }

    /// Like [`batch_read_for_topic`](Self::batch_read_for_topic), with offsets.
    ///
    /// # Errors
    /// As [`read_next`](Self::read_next).
    pub fn read_records(
        &self,
        topic: &str,
        max_bytes: usize,
        consume: bool,
    ) -> io::Result<Vec<Record>> {
        check_topic(topic)?;
        let entries = self.inner.store.read_batch(topic, max_bytes, consume)?;
        Ok(entries
            .into_iter()
            .map(|(offset, data)| Record { offset, data })
            .collect())
    }

    /// Reads the entry at `offset` of `topic` without moving any cursor. `Ok(None)` if it has
    /// not been written yet.
    ///
    /// # Errors
    /// `NotFound` if it was consumed and its space released; `InvalidData` if it fails
    /// validation; an I/O error.
    pub fn read_at(&self, topic: &str, offset: u64) -> io::Result<Option<Entry>> {
        check_topic(topic)?;
        Ok(self
            .inner
            .store
            .read_at(topic, offset)?
            .map(|data| Entry { data }))
    }

    /// Moves `topic`'s cursor to `offset` — the next consuming read returns that entry — and
    /// persists it (synced under `SyncEach`).
    ///
    /// # Errors
    /// `InvalidInput` past the end of the topic or below its retained entries; `NotFound` for an
    /// unknown topic; an I/O error.
    pub fn commit(&self, topic: &str, offset: u64) -> io::Result<()> {
        check_topic(topic)?;
        self.inner.store.commit(topic, offset)
    }

    /// `topic`'s cursor: the offset of the next entry a consuming read returns.
    pub fn cursor(&self, topic: &str) -> Option<u64> {
        self.inner.store.cursor(topic)
    }

    /// One past the last entry of `topic`: the offset its next append gets.
    pub fn end_offset(&self, topic: &str) -> Option<u64> {
        self.inner.store.end_offset(topic)
    }

    /// The names of every topic.
    pub fn topics(&self) -> Vec<String> {
        self.inner.store.topics()
    }

    /// The data directory of this instance.
    pub fn dir(&self) -> &Path {
        self.inner.store.dir()
    }

    /// The read consistency of this instance.
    pub fn consistency(&self) -> ReadConsistency {
        self.inner.consistency
    }

    /// The fsync schedule of this instance.
    pub fn fsync_schedule(&self) -> FsyncSchedule {
        self.inner.schedule
    }

    /// What recovery found when this instance opened its directory.
    pub fn recovery_report(&self) -> &RecoveryReport {
        self.inner.store.recovery_report()
    }
}

impl Drop for Walrus {
    fn drop(&mut self) {
        // The whole shutdown happens here, whatever tickets are still around: stop the
        // syncer, persist cursors, sync, settle every ticket; the store (lock, files) goes
        // with `inner`.
        self.inner.sync.syncer.lock().stop = true;
        self.inner.sync.wake.notify_all();
        if let Some(handle) = self.flusher.take()
            && handle.join().is_err()
        {
            tracing::warn!("walrus flusher thread panicked");
        }
        if let Err(e) = self.inner.store.persist_cursors() {
            tracing::warn!(error = %e, "cursors not persisted at close");
        }
        if self.inner.schedule != FsyncSchedule::NoFsync
            && let Err(e) = self.inner.sync_now()
        {
            tracing::warn!(error = %e, "final sync at close failed");
        }
        self.inner.sync.commits.close();
    }
}

/// How often the background thread looks for maintenance (deleting consumed segments,
/// preparing the next segment file) when nothing else wakes it.
const MAINTENANCE_PERIOD: Duration = Duration::from_millis(50);

/// The background thread: syncs every `period` (if any) and whenever a ticket asks, and does
/// the store's slow file-system maintenance off the appending and reading threads.
fn syncer_loop(inner: &Inner, period: Option<Duration>) {
    let mut last_sync = Instant::now();
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
            if let Err(e) = inner.sync_now() {
                // The store is poisoned now: writes fail with this cause until reopened.
                tracing::error!(error = %e, "background sync failed; writes are refused until reopen");
            }
        }
        if let Err(e) = inner.store.maintain() {
            tracing::warn!(error = %e, "background maintenance failed; an append will retry");
        }
        st = shared.syncer.lock();
    }
}

fn check_topic(topic: &str) -> io::Result<()> {
    walrus_block::validate_topic_name(topic).map_err(io::Error::from)
}

impl WalrusBuilder {
    /// Opens the instance: reads the environment for what was not set, creates the directory,
    /// recovers it and starts the background flusher if the schedule needs one.
    ///
    /// # Errors
    /// `InvalidInput` for a bad key, geometry or a data directory that is a file;
    /// `ResourceBusy` when another live instance holds the directory; `InvalidData` for foreign
    /// or corrupt files; any I/O error.
    pub fn build(self) -> io::Result<Walrus> {
        Walrus::open(self.settings()?)
    }
}
