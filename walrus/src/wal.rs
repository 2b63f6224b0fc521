//! [`Walrus`]: the instance, its seed-compatible API and the native offset API.

use std::io;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use walrus_topic::{
    Arrival, ConsumerInfo, DurableTicket, Engine, RecoveryReport, Stats, SyncPolicy,
};

use crate::builder::{Settings, WalrusBuilder};
use crate::config::{FsyncSchedule, ReadConsistency};

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
/// `Walrus` is `Send + Sync`; share it between threads with an [`Arc`](std::sync::Arc). Dropping it stops the
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
    engine: Engine,
    schedule: FsyncSchedule,
    consistency: ReadConsistency,
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
        let policy = match schedule {
            FsyncSchedule::SyncEach => SyncPolicy::Each,
            FsyncSchedule::Milliseconds(ms) => SyncPolicy::Every(Duration::from_millis(ms)),
            FsyncSchedule::NoFsync => SyncPolicy::OnFlush,
        };
        let engine = Engine::open(&dir, storage, options, policy)?;
        if !quiet {
            let store = engine.store();
            let r = store.recovery_report();
            tracing::info!(dir = %dir.display(), topics = store.topics().len(), segments = r.segments,
                blocks_scanned = r.blocks_scanned, entries = r.entries_scanned, issues = r.issues.len(),
                "walrus opened");
        }
        Ok(Self {
            engine,
            schedule,
            consistency,
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
        self.engine.flush()
    }

    // ---- The native API -------------------------------------------------------------------

    /// Appends `data` to `topic` and returns its offset. Durability follows the fsync schedule
    /// (under `SyncEach`, the entry is durable when this returns).
    ///
    /// # Errors
    /// As [`append_for_topic`](Self::append_for_topic).
    pub fn append(&self, topic: &str, data: &[u8]) -> io::Result<u64> {
        self.engine.append(topic, data)
    }

    /// Appends `batch` to `topic` atomically and returns the range of offsets it got.
    ///
    /// # Errors
    /// As [`batch_append_for_topic`](Self::batch_append_for_topic).
    pub fn append_batch(&self, topic: &str, batch: &[&[u8]]) -> io::Result<Range<u64>> {
        self.engine.append_batch(topic, batch)
    }

    /// Appends `data` to `topic` and returns at once (whatever the fsync schedule) with a
    /// [`DurableTicket`] that says when the entry is on stable storage: wait for it, poll it, or
    /// `.await` it (the instance's background syncer drives it; no particular runtime needed).
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
    ///
    /// # Errors
    /// As [`append_for_topic`](Self::append_for_topic).
    pub fn append_with_ticket(&self, topic: &str, data: &[u8]) -> io::Result<DurableTicket> {
        self.engine.append_with_ticket(topic, data)
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
        self.engine.append_batch_with_ticket(topic, batch)
    }

    /// One past the last durable entry of `topic`: every entry below it is on stable storage.
    pub fn durable_offset(&self, topic: &str) -> Option<u64> {
        self.engine.store().durable_offset(topic)
    }

    /// Like [`read_next`](Self::read_next), with the entry's offset.
    ///
    /// # Errors
    /// As [`read_next`](Self::read_next).
    pub fn read_next_record(&self, topic: &str, consume: bool) -> io::Result<Option<Record>> {
        check_topic(topic)?;
        Ok(self
            .engine
            .store()
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
        let entries = self.engine.store().read_batch(topic, max_bytes, consume)?;
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
            .engine
            .store()
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
        self.engine.store().commit(topic, offset)
    }

    /// `topic`'s cursor: the offset of the next entry a consuming read returns.
    pub fn cursor(&self, topic: &str) -> Option<u64> {
        self.engine.store().cursor(topic)
    }

    /// One past the last entry of `topic`: the offset its next append gets.
    pub fn end_offset(&self, topic: &str) -> Option<u64> {
        self.engine.store().end_offset(topic)
    }

    /// The names of every topic.
    pub fn topics(&self) -> Vec<String> {
        self.engine.store().topics()
    }

    /// The data directory of this instance.
    pub fn dir(&self) -> &Path {
        self.engine.store().dir()
    }

    /// The read consistency of this instance.
    pub fn consistency(&self) -> ReadConsistency {
        self.consistency
    }

    /// The fsync schedule of this instance.
    pub fn fsync_schedule(&self) -> FsyncSchedule {
        self.schedule
    }

    /// What recovery found when this instance opened its directory.
    pub fn recovery_report(&self) -> &RecoveryReport {
        self.engine.store().recovery_report()
    }

    /// [`read_next_record`](Self::read_next_record) for the named consumer `consumer` of
    /// `topic`: each consumer has its own persistent cursor (under this instance's
    /// [`ReadConsistency`]), created by its first consuming read or commit at the oldest entry
    /// retained. `""` is the topic's default consumer, the cursor of [`read_next`](Self::read_next).
    /// A block is released once every consumer of its topic has consumed it (or retention
    /// drops it: a consumer behind continues at the oldest entry kept, its offset jumping).
    ///
    /// # Errors
    /// As [`read_next`](Self::read_next); `InvalidInput` for a consumer name over 128 bytes.
    pub fn read_next_as(
        &self,
        topic: &str,
        consumer: &str,
        consume: bool,
    ) -> io::Result<Option<Record>> {
        check_topic(topic)?;
        Ok(self
            .engine
            .store()
            .read_next_as(topic, consumer, consume)?
            .map(|(offset, data)| Record { offset, data }))
    }

    /// [`read_records`](Self::read_records) for consumer `consumer` (see
    /// [`read_next_as`](Self::read_next_as)).
    ///
    /// # Errors
    /// As [`read_next_as`](Self::read_next_as).
    pub fn read_records_as(
        &self,
        topic: &str,
        consumer: &str,
        max_bytes: usize,
        consume: bool,
    ) -> io::Result<Vec<Record>> {
        check_topic(topic)?;
        let entries = self
            .engine
            .store()
            .read_batch_as(topic, consumer, max_bytes, consume)?;
        Ok(entries
            .into_iter()
            .map(|(offset, data)| Record { offset, data })
            .collect())
    }

    /// A consuming read by `consumer` that waits up to `timeout` for an entry when none is
    /// unread: consumers need not poll. `Ok(None)` when the timeout passed.
    ///
    /// # Errors
    /// As [`read_next_as`](Self::read_next_as).
    pub fn read_next_timeout(
        &self,
        topic: &str,
        consumer: &str,
        timeout: Duration,
    ) -> io::Result<Option<Record>> {
        check_topic(topic)?;
        Ok(self
            .engine
            .store()
            .read_next_timeout(topic, consumer, timeout)?
            .map(|(offset, data)| Record { offset, data }))
    }

    /// Blocks until `topic` has an entry at or after `offset` for readers (under `SyncEach`:
    /// a durable one), or `timeout` passes; whether it has.
    ///
    /// # Errors
    /// `InvalidInput` for a bad topic name.
    pub fn wait_for(&self, topic: &str, offset: u64, timeout: Duration) -> io::Result<bool> {
        check_topic(topic)?;
        self.engine.store().wait_for(topic, offset, timeout)
    }

    /// A future completing once `topic` has an entry at or after `offset` for readers, with
    /// the topic's visible end. No runtime needed; `'static`, so it can be spawned; fails with
    /// `BrokenPipe` if the instance is dropped first.
    ///
    /// # Errors
    /// `InvalidInput` for a bad topic name.
    pub fn arrival(&self, topic: &str, offset: u64) -> io::Result<Arrival> {
        check_topic(topic)?;
        self.engine.store().arrival(topic, offset)
    }

    /// An iterator over `topic`'s entries from `from` on, for replay and event sourcing: moves
    /// no cursor, reads ahead in batches, ends at the visible end (a later `next` continues
    /// with what was appended since).
    ///
    /// A bad topic name is one `InvalidInput` item.
    pub fn iter(&self, topic: &str, from: u64) -> impl Iterator<Item = io::Result<Record>> + '_ {
        // A bad name is no topic: the store's iterator of it is empty.
        check_topic(topic).err().map(Err).into_iter().chain(
            self.engine
                .store()
                .iter(topic, from)
                .map(|e| e.map(|(offset, data)| Record { offset, data })),
        )
    }

    /// Hands `visit` up to `max_entries` entries of `topic` from `from` on, borrowing each
    /// payload (no copy); moves no cursor. Returns the offset to continue from.
    ///
    /// # Errors
    /// `NotFound` if entries at `from` were released; `InvalidData` for a damaged entry.
    pub fn scan(
        &self,
        topic: &str,
        from: u64,
        max_entries: usize,
        visit: impl FnMut(u64, &[u8]),
    ) -> io::Result<u64> {
        check_topic(topic)?;
        self.engine.store().scan(topic, from, max_entries, visit)
    }

    /// [`commit`](Self::commit) for consumer `consumer` (created if needed).
    ///
    /// # Errors
    /// As [`commit`](Self::commit); `InvalidInput` for a bad consumer name.
    pub fn commit_as(&self, topic: &str, consumer: &str, offset: u64) -> io::Result<()> {
        check_topic(topic)?;
        self.engine.store().commit_as(topic, consumer, offset)
    }

    /// The cursor of consumer `consumer` of `topic`, if both exist.
    pub fn cursor_as(&self, topic: &str, consumer: &str) -> Option<u64> {
        self.engine.store().cursor_as(topic, consumer)
    }

    /// The consumers of `topic` with their cursors, lag and skipped entries, sorted by name.
    pub fn consumers(&self, topic: &str) -> Vec<ConsumerInfo> {
        self.engine.store().consumers(topic)
    }

    /// Removes consumer `consumer` of `topic`, durably: it no longer holds back the release
    /// of blocks. Whether it existed.
    ///
    /// # Errors
    /// `InvalidInput` for a bad name; an I/O error (the consumer is then kept).
    pub fn remove_consumer(&self, topic: &str, consumer: &str) -> io::Result<bool> {
        check_topic(topic)?;
        self.engine.store().remove_consumer(topic, consumer)
    }

    /// Releases every entry of `topic` below `offset` for every reader, durably once this
    /// returns, as retention does: a consumer behind `offset` goes on from it, a read below it
    /// finds nothing, and offsets keep their numbers. Whether the floor rose (not when it
    /// stood at or past `offset` already).
    ///
    /// # Errors
    /// `InvalidInput` for a bad name or an offset past the topic's end; `NotFound` for an
    /// unknown topic; an I/O error (nothing is then released).
    pub fn release_before(&self, topic: &str, offset: u64) -> io::Result<bool> {
        check_topic(topic)?;
        self.engine.store().release_before(topic, offset)
    }

    /// Deletes `topic` with its consumers, durably once this returns, and releases its
    /// blocks. Offsets are never reused: appending to the name again continues from the
    /// deleted topic's end. Whether it existed.
    ///
    /// # Errors
    /// `InvalidInput` for a bad name; an I/O error (the topic is then unchanged).
    pub fn delete_topic(&self, topic: &str) -> io::Result<bool> {
        check_topic(topic)?;
        self.engine.store().delete_topic(topic)
    }

    /// What this instance did since it opened — appends, bytes, batches, reads, syncs with
    /// their latency and group sizes, how the group commit gathered and waited, segments live
    /// and deleted, bytes claimed — and every topic's end, durable end, oldest retained offset
    /// and consumers. Cheap enough to call every second.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// Publishes [`stats`](Self::stats) through the [`metrics`] facade (feature `metrics`):
    /// counters `walrus_appends_total`, `walrus_append_bytes_total`, `walrus_batches_total`,
    /// `walrus_reads_total`, `walrus_syncs_total`, `walrus_entries_synced_total`,
    /// `walrus_sync_micros_total`, `walrus_segments_deleted_total`, `walrus_group_commit_led_total`,
    /// `walrus_group_commit_gathers_out_of_time_total`, `walrus_group_commit_gather_micros_total`,
    /// `walrus_group_commit_parks_total`; gauges `walrus_sync_p50_micros`,
    /// `walrus_sync_p99_micros`, `walrus_segments_live`, `walrus_segment_bytes`; per topic
    /// (label `topic`) `walrus_topic_end`, `walrus_topic_durable`, `walrus_topic_first_retained`,
    /// and per consumer (labels `topic`, `consumer`) `walrus_consumer_lag`. Every metric carries
    /// the label `dir`. Call it as often as the exporter scrapes (it costs one `stats`).
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        let s = self.stats();
        let dir = self.dir().display().to_string();
        for (name, value) in [
            ("walrus_appends_total", s.appends),
            ("walrus_append_bytes_total", s.append_bytes),
            ("walrus_batches_total", s.batches),
            ("walrus_reads_total", s.reads),
            ("walrus_syncs_total", s.syncs),
            ("walrus_entries_synced_total", s.entries_synced),
            ("walrus_sync_micros_total", s.sync_micros),
            ("walrus_segments_deleted_total", s.segments_deleted),
            ("walrus_group_commit_led_total", s.group_commit.led),
            (
                "walrus_group_commit_gathers_out_of_time_total",
                s.group_commit.gathers_out_of_time,
            ),
            (
                "walrus_group_commit_gather_micros_total",
                s.group_commit.gather_micros,
            ),
            ("walrus_group_commit_parks_total", s.group_commit.parks),
        ] {
            metrics::counter!(name, "dir" => dir.clone()).absolute(value);
        }
        for (name, value) in [
            ("walrus_sync_p50_micros", s.sync_p50_micros),
            ("walrus_sync_p99_micros", s.sync_p99_micros),
            ("walrus_segments_live", s.segments_live),
            ("walrus_segment_bytes", s.segment_bytes),
        ] {
            metrics::gauge!(name, "dir" => dir.clone()).set(value as f64);
        }
        for t in &s.topics {
            for (name, value) in [
                ("walrus_topic_end", t.end),
                ("walrus_topic_durable", t.durable),
                ("walrus_topic_first_retained", t.first_retained),
            ] {
                metrics::gauge!(name, "dir" => dir.clone(), "topic" => t.name.clone())
                    .set(value as f64);
            }
            for c in &t.consumers {
                metrics::gauge!("walrus_consumer_lag", "dir" => dir.clone(),
                    "topic" => t.name.clone(), "consumer" => c.name.clone())
                .set(c.lag as f64);
            }
        }
    }

    /// The first offset of `topic` still stored (lower ones were consumed by every consumer,
    /// or dropped by retention).
    pub fn first_retained_offset(&self, topic: &str) -> Option<u64> {
        self.engine.store().first_retained_offset(topic)
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
