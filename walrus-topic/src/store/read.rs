//! Reading a store: consuming reads and peeks by the default or a named consumer, reads at and
//! from an offset (iterators), waiting for entries (blocking, or a future), the consumers'
//! state, and removing consumers and topics.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use walrus_block::{MAX_BATCH_ENTRIES, validate_consumer_name};

use super::Store;
use super::topics::Topics;
use crate::arrival::Registration;
use crate::chain::{FramePos, ReadBuf};
use crate::error::invalid_input;
use crate::progress::Progress;
use crate::shared::Shared;
use crate::stats::ConsumerInfo;
use crate::stats::{Stats, TopicStats};
use crate::topic::{DEFAULT_CONSUMER, Topic};

/// Entries an [`Entries`] iterator reads ahead at a time, at most...
const ITER_BATCH: usize = 256;
/// ...and payload bytes beyond the first entry: large entries are read ahead a few at a time,
/// not 256 of them at once.
const ITER_BYTES: usize = 4 << 20;

impl Store {
    /// Reads the entry at `topic`'s cursor (its default consumer's); with `consume`, moves the
    /// cursor past it. `Ok(None)` when the topic has nothing unread (or does not exist).
    ///
    /// # Errors
    /// `InvalidData` naming topic and offset if the entry fails validation (it is never
    /// returned); an I/O error, after which the cursor is where it was.
    pub fn read_next(&self, topic: &str, consume: bool) -> io::Result<Option<(u64, Vec<u8>)>> {
        self.read_next_as(topic, DEFAULT_CONSUMER, consume)
    }

    /// [`read_next`](Self::read_next) for consumer `consumer` of `topic` (`""`: the default
    /// consumer). A consuming read creates the consumer on first use, at the oldest entry
    /// retained. If retention released entries the consumer had not read, it continues at the
    /// oldest entry kept: the returned offset jumps, and [`consumers`](Self::consumers)
    /// counts the skipped entries.
    ///
    /// # Errors
    /// As [`read_next`](Self::read_next); `InvalidInput` for a consumer name over
    /// [`MAX_CONSUMER_NAME_LEN`](walrus_block::MAX_CONSUMER_NAME_LEN) bytes.
    pub fn read_next_as(
        &self,
        topic: &str,
        consumer: &str,
        consume: bool,
    ) -> io::Result<Option<(u64, Vec<u8>)>> {
        let mut out = Vec::with_capacity(1);
        self.read_into(topic, consumer, consume, 1, usize::MAX, &mut out)?;
        Ok(out.pop())
    }

    /// Reads entries from `topic`'s cursor in commit order: at least one if any is unread, at
    /// most [`MAX_BATCH_ENTRIES`], and no more than `max_bytes` of payload beyond the first.
    /// With `consume`, moves the cursor past them.
    ///
    /// # Errors
    /// As [`read_next`](Self::read_next).
    pub fn read_batch(
        &self,
        topic: &str,
        max_bytes: usize,
        consume: bool,
    ) -> io::Result<Vec<(u64, Vec<u8>)>> {
        self.read_batch_as(topic, DEFAULT_CONSUMER, max_bytes, consume)
    }

    /// [`read_batch`](Self::read_batch) for consumer `consumer` (see
    /// [`read_next_as`](Self::read_next_as)).
    ///
    /// # Errors
    /// As [`read_next_as`](Self::read_next_as).
    pub fn read_batch_as(
        &self,
        topic: &str,
        consumer: &str,
        max_bytes: usize,
        consume: bool,
    ) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        self.read_into(
            topic,
            consumer,
            consume,
            MAX_BATCH_ENTRIES,
            max_bytes,
            &mut out,
        )?;
        Ok(out)
    }

    fn read_into(
        &self,
        topic: &str,
        consumer: &str,
        consume: bool,
        max_entries: usize,
        max_bytes: usize,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> io::Result<()> {
        check_consumer(topic, consumer)?;
        if consume && self.shared.options.read_only {
            return Err(crate::error::read_only_error());
        }
        if let Some(t) = self.topic(topic) {
            let unpersisted =
                t.read_entries(&self.shared, consumer, consume, max_entries, max_bytes, out)?;
            self.note_reads(&t, unpersisted);
        }
        Ok(())
    }

    /// Like [`read_next_as`](Self::read_next_as) with `consume`, but waits up to `timeout` for
    /// an entry when none is unread. `Ok(None)` once the timeout passed with nothing new.
    ///
    /// # Errors
    /// As [`read_next_as`](Self::read_next_as).
    pub fn read_next_timeout(
        &self,
        topic: &str,
        consumer: &str,
        timeout: Duration,
    ) -> io::Result<Option<(u64, Vec<u8>)>> {
        check_consumer(topic, consumer)?;
        let t = self.topic_or_create(topic)?;
        let read = self.read_next_waiting(&t, consumer, timeout);
        self.forget_unused(t);
        read
    }

    fn read_next_waiting(
        &self,
        t: &Topic,
        consumer: &str,
        timeout: Duration,
    ) -> io::Result<Option<(u64, Vec<u8>)>> {
        let topic = &*t.name;
        let deadline = Instant::now().checked_add(timeout);
        // Bounded: each round waits for the visible end to pass what the read before it saw,
        // or for a cursor moved by a commit or a removal (a rewind makes entries unread).
        loop {
            // Captured before the read: an entry appended (or a cursor moved) after it is
            // either read, or makes the wait below return at once.
            let moves = t.cursor_moves();
            let end = t.visible(&self.shared);
            if let Some(entry) = self.read_next_as(topic, consumer, true)? {
                return Ok(Some(entry));
            }
            // Nothing readable below `end` (a gap recovery left, or everything read): wait
            // for an entry at or after both the cursor and `end`.
            let from = t
                .cursor(consumer)
                .unwrap_or_else(|| t.first_retained())
                .max(end);
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => timeout,
            };
            let woke = !left.is_zero()
                && t.progress.arrivals.wait(Some(left), || {
                    t.has_entry_from(&self.shared, from) || t.cursor_moves() != moves
                });
            if !woke {
                return self.read_next_as(topic, consumer, true);
            }
        }
    }

    /// Blocks until `topic` has an entry at or after `offset` for readers (see
    /// [`StoreOptions::with_visible_when_durable`](crate::StoreOptions::with_visible_when_durable)),
    /// or `timeout` passes; whether it has. The topic need not exist yet.
    ///
    /// # Errors
    /// `InvalidInput` for a bad topic name.
    pub fn wait_for(&self, topic: &str, offset: u64, timeout: Duration) -> io::Result<bool> {
        let t = self.topic_or_create(topic)?;
        let arrived = self.wait_on(&t, offset, timeout);
        self.forget_unused(t);
        Ok(arrived)
    }

    /// Drops `t` from the map if a wait or a failed first append created it for nothing: no
    /// append ever made it a topic, and no one else holds it (a waiter, an append under way).
    /// Waits on names that never come would otherwise each leave a topic in memory for good.
    pub(super) fn forget_unused(&self, t: Arc<Topic>) {
        self.topics.forget_unused(&t);
    }

    fn wait_on(&self, t: &Topic, offset: u64, timeout: Duration) -> bool {
        t.progress
            .arrivals
            .wait(Some(timeout), || t.has_entry_from(&self.shared, offset))
    }

    /// A future that completes once `topic` has an entry at or after `offset` for readers,
    /// with the topic's visible end. It needs no runtime (the writer wakes it) and is
    /// `'static`, so it can be spawned; combine it with your runtime's timeout. The topic need
    /// not exist yet.
    ///
    /// # Errors
    /// `InvalidInput` for a bad topic name. The future fails with `BrokenPipe` if the store is
    /// dropped first.
    pub fn arrival(&self, topic: &str, offset: u64) -> io::Result<Arrival> {
        let t = self.topic_or_create(topic)?;
        let registration = t.progress.arrivals.register();
        Ok(Arrival {
            progress: Some(t.progress.clone()),
            topic: Arc::downgrade(&t),
            shared: Arc::downgrade(&self.shared),
            topics: Arc::downgrade(&self.topics),
            offset,
            registration,
        })
    }

    /// Reads the entry at `offset` of `topic` without moving any cursor. `Ok(None)` if it has not
    /// been written (or falls in a gap left by skipped corruption).
    ///
    /// # Errors
    /// `NotFound` if the entry was consumed (or removed by retention) and its space released;
    /// `InvalidData` if it fails validation.
    pub fn read_at(&self, topic: &str, offset: u64) -> io::Result<Option<Vec<u8>>> {
        match self.topic(topic) {
            Some(t) => t.read_at(&self.shared, offset),
            None => Ok(None),
        }
    }

    /// Hands `visit` the entries of `topic` from `from` on, in commit order, borrowing each
    /// payload from the read buffer (no copy): at most `max_entries` (and
    /// [`MAX_BATCH_ENTRIES`]), stopping at the visible end. Moves no cursor. Returns the
    /// offset to continue from.
    ///
    /// # Errors
    /// `NotFound` if entries at `from` were released; `InvalidData` naming topic and offset
    /// for an entry at `from` that fails validation. (One after it ends the scan there, with
    /// the entries before it visited: the next scan, from it, fails.)
    pub fn scan(
        &self,
        topic: &str,
        from: u64,
        max_entries: usize,
        mut visit: impl FnMut(u64, &[u8]),
    ) -> io::Result<u64> {
        let Some(t) = self.topic(topic) else {
            return Ok(from);
        };
        check_retained(&self.shared, &t, from)?;
        let mut buf = ReadBuf::default();
        let mut visited = 0;
        let mut first = None;
        let (next, _) = t.gather(
            &self.shared,
            &mut buf,
            (from, None),
            max_entries,
            usize::MAX,
            &mut |offset, payload| {
                first.get_or_insert(offset);
                visited += 1;
                visit(offset, payload);
            },
        )?;
        if first != Some(from) {
            // Released between the check and the gather (a floor raise stops it; consumed
            // blocks going from the front let it start further on): say so. A gap recovery
            // left at `from` passes the check again.
            check_retained(&self.shared, &t, from)?;
        }
        t.counters.read(visited);
        Ok(next)
    }

    /// An iterator over the entries of `topic` from `from` on, as `(offset, payload)`, for
    /// replay: it moves no cursor, reads ahead in batches, and returns `None` at the visible
    /// end (a later `next` continues with entries appended since).
    pub fn iter(&self, topic: &str, from: u64) -> Entries<'_> {
        Entries {
            store: self,
            topic: topic.to_owned(),
            next: from,
            pos: None,
            buf: ReadBuf::default(),
            ahead: VecDeque::new(),
            source: None,
            failed: false,
        }
    }

    /// Moves `topic`'s cursor to `offset` (forwards or backwards within retained entries) and
    /// persists it.
    ///
    /// # Errors
    /// `InvalidInput` past the end of the topic or below the retained entries; `NotFound` for an
    /// unknown topic; an I/O error writing the cursor.
    pub fn commit(&self, topic: &str, offset: u64) -> io::Result<()> {
        self.commit_as(topic, DEFAULT_CONSUMER, offset)
    }

    /// [`commit`](Self::commit) for consumer `consumer` (created if needed).
    ///
    /// # Errors
    /// As [`commit`](Self::commit); `InvalidInput` for a bad consumer name.
    pub fn commit_as(&self, topic: &str, consumer: &str, offset: u64) -> io::Result<()> {
        self.shared.check_writable()?;
        check_consumer(topic, consumer)?;
        self.existing(topic)?.commit(&self.shared, consumer, offset)
    }

    /// `topic`'s cursor: the offset the next consuming read returns.
    pub fn cursor(&self, topic: &str) -> Option<u64> {
        self.cursor_as(topic, DEFAULT_CONSUMER)
    }

    /// The cursor of consumer `consumer` of `topic`; `None` if either does not exist (the
    /// default consumer of an existing topic always has one).
    pub fn cursor_as(&self, topic: &str, consumer: &str) -> Option<u64> {
        self.topic(topic).and_then(|t| t.cursor(consumer))
    }

    /// The consumers of `topic` (created by a consuming read or a commit), sorted by name,
    /// with their cursors and lag. Empty for an unknown topic.
    pub fn consumers(&self, topic: &str) -> Vec<ConsumerInfo> {
        self.topic(topic)
            .map(|t| t.consumer_infos(&self.shared))
            .unwrap_or_default()
    }

    /// Removes consumer `consumer` of `topic` (`""`: the default consumer): its cursor is
    /// forgotten, durably, and it no longer holds back the release of blocks. Whether it
    /// existed. Using the name again creates a new consumer at the oldest entry retained.
    ///
    /// # Errors
    /// `InvalidInput` for a bad consumer name; an I/O error writing or syncing the cursor file
    /// (the consumer is then kept).
    pub fn remove_consumer(&self, topic: &str, consumer: &str) -> io::Result<bool> {
        self.shared.check_writable()?;
        check_consumer(topic, consumer)?;
        match self.topic(topic) {
            Some(t) => t.remove_consumer(&self.shared, consumer),
            None => Ok(false),
        }
    }

    /// Releases every entry of `topic` below `offset`, for every reader and durably once this
    /// returns, as retention releases old entries: the topic's floor rises to `offset` and the
    /// blocks wholly below it are released (a tiered topic's remote copies too). A consumer
    /// behind it goes on from `offset` (counting the entries it skipped), a read at a lower
    /// offset finds nothing, and offsets keep their numbers. Whether the floor rose (not when
    /// it stood at or past `offset` already).
    ///
    /// # Errors
    /// `InvalidInput` past the topic's end (readers' end: under `SyncEach` the durable one);
    /// `NotFound` for an unknown topic; an I/O error writing or syncing the cursor file (the
    /// floor is then unchanged). Nothing changes on an error.
    pub fn release_before(&self, topic: &str, offset: u64) -> io::Result<bool> {
        self.shared.check_writable()?;
        self.existing(topic)?.release_before(&self.shared, offset)
    }

    /// Deletes `topic`: its entries and consumers are gone (durably, once this returns) and
    /// its blocks released; it is no longer listed. Whether it existed.
    ///
    /// Offsets are never reused: appending to the name again continues from the deleted
    /// topic's end offset, so a reader holding an old offset can never confuse the two.
    ///
    /// # Errors
    /// An I/O error writing or syncing the cursor file; the topic is then unchanged.
    pub fn delete_topic(&self, topic: &str) -> io::Result<bool> {
        self.shared.check_writable()?;
        match self.topic(topic) {
            Some(t) => t.delete(&self.shared).map(|()| true),
            None => Ok(false),
        }
    }

    /// What the store did since it opened (appends, reads, syncs and their latency and group
    /// sizes, segments) and where every topic stands. Cheap: a few loads per topic and per
    /// consumer; fine to call every second.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        self.shared.sync_counters.fill(&mut s);
        (s.segments_live, s.segment_bytes) = self.shared.files.usage();
        let topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        for t in &topics {
            t.counters.add_to(&mut s);
            if t.is_hidden() {
                continue;
            }
            let (tiered_entries, tiered) = match &self.shared.tier {
                Some(tier) if self.shared.options.tiering_for(&t.name).is_some() => {
                    tier.topic(&t.name).catalog.lock().summary()
                }
                _ => (0, None),
            };
            s.topics.push(TopicStats {
                name: t.name.to_string(),
                end: t.written_end(),
                durable: self.known_durable(t),
                first_retained: t.first_retained(),
                blocks: t.chain_len(),
                consumers: t.consumer_infos(&self.shared),
                tiered_entries,
                tiered,
                tier_mark: t.tier_mark(),
            });
        }
        s.topics.sort_by(|a, b| a.name.cmp(&b.name));
        s
    }

    /// Applies every topic's retention now (also done by [`maintain`](Self::maintain) and when
    /// a topic seals a block).
    pub(crate) fn apply_retention(&self) {
        let options = &self.shared.options;
        let topics: Vec<Arc<Topic>> = if options.retention.is_limited() {
            self.topics.read().values().cloned().collect()
        } else {
            // Only the topics with a retention of their own: no walk over every topic.
            let known = self.topics.read();
            options
                .topic_retention
                .keys()
                .filter_map(|name| known.get(name.as_str()).cloned())
                .collect()
        };
        let now = SystemTime::now();
        for t in topics {
            if let Err(e) = t.apply_retention(&self.shared, now, true) {
                tracing::warn!(topic = %t.name, error = %e, "retention not applied");
            }
        }
    }

    fn existing(&self, topic: &str) -> io::Result<Arc<Topic>> {
        self.topic(topic).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("topic {topic:?} does not exist"),
            )
        })
    }
}

fn check_consumer(topic: &str, consumer: &str) -> io::Result<()> {
    if consumer.is_empty() {
        return Ok(());
    }
    validate_consumer_name(consumer).map_err(|e| invalid_input(format!("topic {topic:?}: {e}")))
}

fn check_retained(shared: &Shared, t: &Topic, from: u64) -> io::Result<()> {
    let first = t.first_retained();
    if from < first {
        // Not released, but in a remote tier this open does not configure: say so.
        t.check_tier_configured(shared, from)?;
        return Err(t.error(
            io::ErrorKind::NotFound,
            format!("entries below {first} were consumed or removed by retention"),
            Some(from),
        ));
    }
    Ok(())
}

/// The future of [`Store::arrival`].
///
/// It holds the store weakly, as a ticket does: a future kept after the store is dropped keeps
/// none of its files, mappings or lock alive (a reopen must find only what is on disk).
#[derive(Debug)]
#[must_use = "a future does nothing unless polled"]
pub struct Arrival {
    /// The topic's progress, whose arrivals wake the future; also what keeps a placeholder
    /// made for the wait in the map (see `Topics::forget_unused`). `None` once dropped.
    progress: Option<Arc<Progress>>,
    topic: Weak<Topic>,
    shared: Weak<Shared>,
    /// The store's map, where a placeholder made for the wait is dropped with the future.
    topics: Weak<Topics>,
    offset: u64,
    registration: Registration,
}

/// Where an [`Arrival`]'s wait stands.
enum Waited {
    /// The topic's visible end, past the offset waited for.
    Arrived(u64),
    Waiting,
    /// The store was closed or dropped first.
    Closed(&'static str),
}

impl Waited {
    fn of(topic: &Weak<Topic>, shared: &Weak<Shared>, offset: u64) -> Self {
        let (Some(topic), Some(shared)) = (topic.upgrade(), shared.upgrade()) else {
            return Self::Closed("dropped");
        };
        if topic.has_entry_from(&shared, offset) {
            Self::Arrived(topic.visible(&shared))
        } else if shared.closed.load(Ordering::SeqCst) {
            Self::Closed("closed")
        } else {
            Self::Waiting
        }
    }
}

impl Future for Arrival {
    type Output = io::Result<u64>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let (topic, shared, offset) = (&this.topic, &this.shared, this.offset);
        let name = this.progress.as_ref().map(|p| p.name.clone());
        let waited = match &this.progress {
            Some(progress) => {
                let ready = || !matches!(Waited::of(topic, shared, offset), Waited::Waiting);
                match progress.arrivals.poll(&mut this.registration, cx, ready) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => Waited::of(topic, shared, offset),
                }
            }
            None => Waited::Closed("dropped"),
        };
        match waited {
            Waited::Arrived(end) => Poll::Ready(Ok(end)),
            // Ready when `poll` looked, no longer now (a deletion raised the floor past the
            // end meanwhile): polled again, it waits.
            Waited::Waiting => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Waited::Closed(how) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!(
                    "topic {:?}: the store was {how} before offset {offset} arrived",
                    name.as_deref().unwrap_or("")
                ),
            ))),
        }
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        if let Some(progress) = self.progress.take() {
            progress.arrivals.unregister(&mut self.registration);
        }
        // The progress let go first: a placeholder's is then held by the topic alone.
        if let (Some(topics), Some(topic)) = (self.topics.upgrade(), self.topic.upgrade()) {
            topics.forget_unused(&topic);
        }
    }
}

/// The iterator of [`Store::iter`].
#[derive(Debug)]
pub struct Entries<'a> {
    store: &'a Store,
    topic: String,
    next: u64,
    pos: Option<FramePos>,
    buf: ReadBuf,
    ahead: VecDeque<(u64, Vec<u8>)>,
    /// The topic of the entries in `ahead` (their reads are counted there as they are taken).
    source: Option<Arc<Topic>>,
    failed: bool,
}

impl Entries<'_> {
    /// The offset the iterator continues from.
    pub fn position(&self) -> u64 {
        self.ahead.front().map_or(self.next, |(o, _)| *o)
    }

    fn fill(&mut self) -> io::Result<()> {
        let Some(t) = self.store.topic(&self.topic) else {
            return Ok(());
        };
        // Also with a saved position: its block may have been released (retention, deletion)
        // since, and must not be served from the still open file.
        check_retained(&self.store.shared, &t, self.next)?;
        let ahead = &mut self.ahead;
        let (next, pos) = t.gather(
            &self.store.shared,
            &mut self.buf,
            (self.next, self.pos.take()),
            ITER_BATCH,
            ITER_BYTES,
            &mut |offset, payload| ahead.push_back((offset, payload.to_vec())),
        )?;
        if ahead.front().map(|e| e.0) != Some(self.next) {
            // Released between the check and the gather (a floor raise stops it; consumed
            // blocks going from the front let it start further on): an error, not the end or a
            // silent jump. A gap recovery left passes the check again.
            check_retained(&self.store.shared, &t, self.next)?;
        }
        self.next = next;
        self.pos = pos;
        self.source = Some(t);
        Ok(())
    }
}

impl Iterator for Entries<'_> {
    type Item = io::Result<(u64, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.ahead.is_empty()
            && let Err(e) = self.fill()
        {
            self.failed = true;
            return Some(Err(e));
        }
        let entry = self.ahead.pop_front()?;
        if let Some(t) = &self.source {
            t.counters.read(1);
        }
        Some(Ok(entry))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use walrus_io::{SimStorage, Storage};

    use crate::{Store, StoreOptions};

    /// A store that keeps consuming what it writes keeps no state of the segments it deleted.
    #[test]
    fn deleted_segments_leave_nothing_tracked() {
        let sim = SimStorage::new(2);
        let storage: Arc<dyn Storage> = Arc::new(sim);
        let options = StoreOptions::new()
            .with_block_len(8192)
            .with_segment_len(64 * 1024);
        let store = Store::open("/w", storage, options).unwrap();
        let entry = [7u8; 700];
        for round in 0..40 {
            for _ in 0..50 {
                store.append("t", &entry).unwrap();
            }
            for _ in 0..50 {
                let read = store.read_next_as("t", "c", true).unwrap();
                assert_eq!(read.map(|(_, data)| data.len()), Some(700), "round {round}");
            }
        }
        store.maintain().unwrap();
        let s = store.stats();
        assert!(s.segments_deleted >= 20, "{s:?}");
        let tracked = store.shared.tracker.tracked() as u64;
        assert!(
            tracked <= s.segments_live,
            "{tracked} files tracked, {} live, {} deleted",
            s.segments_live,
            s.segments_deleted
        );
    }

    /// Reads that leave their cursor unpersisted list their topic for the maintenance once,
    /// not once per read: a store nothing maintains does not grow with its reads.
    #[test]
    fn unpersisted_reads_list_their_topic_once() {
        let sim = SimStorage::new(3);
        let storage: Arc<dyn Storage> = Arc::new(sim);
        let options = StoreOptions::new().with_persist_every(1000);
        let store = Store::open("/w", storage, options).unwrap();
        for _ in 0..500 {
            store.append("a", b"x").unwrap();
            store.append("b", b"y").unwrap();
        }
        for _ in 0..500 {
            store.read_next("a", true).unwrap().unwrap();
            store.read_next("b", true).unwrap().unwrap();
        }
        assert_eq!(store.shared.cursors_pending.lock().len(), 2);
        store.maintain().unwrap();
        assert!(store.shared.cursors_pending.lock().is_empty());
        assert_eq!(
            store.consumers("a")[0].persisted,
            500,
            "persisted by the maintenance"
        );
        store.append("a", b"z").unwrap();
        store.read_next("a", true).unwrap().unwrap();
        assert_eq!(store.shared.cursors_pending.lock().len(), 1, "listed again");
    }

    /// Two passes that list the same unsynced cursor write (a flush beside the background's
    /// pass) count it once: counted twice, its reads came off the count of reads to persist
    /// after twice, and the reader went past `persist_every` entries without persisting.
    #[test]
    fn a_cursor_write_listed_by_two_passes_counts_once() {
        let sim = SimStorage::new(4);
        let storage: Arc<dyn Storage> = Arc::new(sim);
        let options = StoreOptions::new()
            .with_persist_every(3)
            .with_durable_cursors(true)
            .with_background_maintenance(false);
        let store = Store::open("/w", storage, options).unwrap();
        for _ in 0..10 {
            store.append("t", b"x").unwrap();
        }
        store.read_next("t", true).unwrap().unwrap();
        store.read_next("t", true).unwrap().unwrap();
        let t = store.topic("t").unwrap();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        assert!(t.write_cursors(&store.shared, true, &mut first).unwrap());
        assert!(t.write_cursors(&store.shared, true, &mut second).unwrap());
        assert_eq!((first.len(), second.len()), (1, 1), "both list the write");
        store.shared.cursors.sync().unwrap();
        assert!(t.count_synced(&store.shared, first, true));
        assert_eq!(store.consumers("t")[0].persisted, 2);
        store.read_next("t", true).unwrap().unwrap();
        assert!(t.count_synced(&store.shared, second, true));
        // Two more reads make three since the count: the third persists.
        store.read_next("t", true).unwrap().unwrap();
        store.read_next("t", true).unwrap().unwrap();
        let info = &store.consumers("t")[0];
        assert_eq!((info.cursor, info.persisted), (5, 5), "{info:?}");
    }

    /// Waits on names that never come leave nothing behind; a wait still under way, and the
    /// topic an append then makes of its name, stay.
    #[test]
    fn waits_on_names_that_never_come_leave_no_topic_behind() {
        let sim = SimStorage::new(1);
        let storage: Arc<dyn Storage> = Arc::new(sim);
        let store = Store::open("/w", storage, StoreOptions::new()).unwrap();
        for i in 0..100 {
            assert!(!store.wait_for(&format!("w{i}"), 0, Duration::ZERO).unwrap());
            let read = store.read_next_timeout(&format!("r{i}"), "c", Duration::ZERO);
            assert_eq!(read.unwrap(), None);
        }
        assert!(
            store.topics.read().is_empty(),
            "{:?}",
            store.topics.read().keys()
        );
        std::thread::scope(|s| {
            let waiter = s.spawn(|| store.read_next_timeout("late", "", Duration::from_secs(30)));
            // Bounded: the waiter's placeholder is in the map once it waits.
            for _ in 0..10_000 {
                if store.topics.read().contains_key("late") {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(store.append("late", b"x").unwrap(), 0);
            let got = waiter.join().unwrap().unwrap();
            assert_eq!(got, Some((0, b"x".to_vec())));
        });
        assert_eq!(store.topics(), ["late"]);
    }

    /// So do `arrival` futures dropped before their name came, polled or not; one still held
    /// keeps its placeholder, and completes when the name comes.
    #[test]
    fn arrival_futures_on_names_that_never_come_leave_no_topic_behind() {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        let sim = SimStorage::new(2);
        let storage: Arc<dyn Storage> = Arc::new(sim);
        let store = Store::open("/w", storage, StoreOptions::new()).unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        for i in 0..100 {
            let mut f = Box::pin(store.arrival(&format!("a{i}"), 0).unwrap());
            if i % 2 == 0 {
                assert!(f.as_mut().poll(&mut cx).is_pending());
            }
        }
        assert!(
            store.topics.read().is_empty(),
            "{:?}",
            store.topics.read().keys()
        );
        let mut held = Box::pin(store.arrival("late", 0).unwrap());
        assert!(held.as_mut().poll(&mut cx).is_pending());
        // Another future on the same name, dropped: the held one keeps the placeholder.
        drop(store.arrival("late", 0).unwrap());
        assert!(store.topics.read().contains_key("late"));
        assert_eq!(store.append("late", b"x").unwrap(), 0);
        assert!(matches!(held.as_mut().poll(&mut cx), Poll::Ready(Ok(1))));
        drop(held);
        assert_eq!(store.topics(), ["late"]);
        // One dropped while something else held its placeholder for a moment (here a second
        // handle, as a stats or retention pass does) stays until the maintenance sweeps it.
        let f = store.arrival("briefly", 0).unwrap();
        let other = store.topics.read().get("briefly").cloned().unwrap();
        drop(f);
        drop(other);
        assert!(store.topics.read().contains_key("briefly"));
        store.maintain().unwrap();
        assert!(!store.topics.read().contains_key("briefly"));
        assert_eq!(store.topics(), ["late"]);
        // A future kept past its store keeps no map alive and drops cleanly.
        let orphan = store.arrival("other", 0).unwrap();
        drop(store);
        drop(orphan);
    }
}
