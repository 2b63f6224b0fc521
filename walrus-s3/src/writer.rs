//! The writer: producers queue entries (waiting when the queue is full), one flusher thread
//! drains the queue into one batch object per flush, PUTs it conditionally, and only then
//! completes the tickets of that batch.
//!
//! Offsets are assigned by the flusher, in queue order, so a topic's offsets follow the order
//! of the batch objects. A batch that cannot be written within its retry budget fails its
//! tickets and stops the writer: later batches would leave a hole in the offsets, and an
//! acknowledged entry must never sit after a missing one. Reopen to resume.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use object_store::ObjectStore;
use parking_lot::{Condvar, Mutex};
use walrus_block::{FrameKind, MAX_BATCH_ENTRIES, MAX_ENTRY_LEN, frame_len, validate_topic_name};

use crate::format::{self, BatchId, MAX_BATCH_TOPICS, TopicEntries};
use crate::options::S3Options;
use crate::reader::Index;
use crate::remote::{PutOutcome, Remote};
use crate::ticket::{Failure, S3Ticket, Slot};

/// How often an open retries the fence when another writer keeps taking the next name.
const FENCE_ROUNDS: u32 = 16;

/// Counters of one writer, read with [`S3Wal::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct S3Stats {
    /// Entries handed to `append*` and queued.
    pub entries_queued: u64,
    /// Entries in S3, their tickets completed.
    pub entries_acknowledged: u64,
    /// Batch objects written (the open's fence included).
    pub batches: u64,
    /// PUT requests sent, retries included.
    pub put_requests: u64,
    /// PUT requests that were retries.
    pub put_retries: u64,
    /// Bytes of the batch objects written.
    pub bytes_written: u64,
    /// Batches whose tickets failed.
    pub batches_failed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    entries_queued: AtomicU64,
    entries_acknowledged: AtomicU64,
    batches: AtomicU64,
    put_requests: AtomicU64,
    put_retries: AtomicU64,
    bytes_written: AtomicU64,
    batches_failed: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> S3Stats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        S3Stats {
            entries_queued: g(&self.entries_queued),
            entries_acknowledged: g(&self.entries_acknowledged),
            batches: g(&self.batches),
            put_requests: g(&self.put_requests),
            put_retries: g(&self.put_retries),
            bytes_written: g(&self.bytes_written),
            batches_failed: g(&self.batches_failed),
        }
    }
}

/// What an append queues.
#[derive(Debug)]
enum Payload {
    One(Vec<u8>),
    /// An atomic batch: always in one object, offsets consecutive.
    Many(Vec<Vec<u8>>),
}

/// What a queued item asks for.
#[derive(Debug)]
enum Work {
    Entries {
        topic: String,
        payload: Payload,
    },
    /// A `flush()` marker: completed once everything queued before it is in S3.
    Flush,
}

/// A queued item and the slot its ticket waits on. Dropping an item whose slot is still open
/// completes it with an error, so no path (a panic included) can strand a ticket.
#[derive(Debug)]
struct Pending {
    work: Work,
    slot: Arc<Slot>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.slot.complete(Err(Failure {
            kind: io::ErrorKind::BrokenPipe,
            message: "the S3 writer dropped the entry without an outcome".into(),
        }));
    }
}

/// What one queued entry costs against the byte budget and the batch size: its frame in the
/// batch object (payload and header), and its allocation. (Empty entries are not free: 2000
/// of them in a batch call hold tens of KiB.)
fn entry_cost(payload: &[u8]) -> u64 {
    (frame_len(payload.len()) + std::mem::size_of::<Vec<u8>>()) as u64
}

impl Pending {
    fn bytes(&self) -> u64 {
        match &self.work {
            Work::Entries {
                payload: Payload::One(p),
                ..
            } => entry_cost(p),
            Work::Entries {
                payload: Payload::Many(ps),
                ..
            } => ps.iter().map(|p| entry_cost(p)).sum(),
            Work::Flush => 0,
        }
    }

    /// Entries it adds to its topic.
    fn entries(&self) -> u64 {
        match &self.work {
            Work::Entries {
                payload: Payload::One(_),
                ..
            } => 1,
            Work::Entries {
                payload: Payload::Many(ps),
                ..
            } => ps.len() as u64,
            Work::Flush => 0,
        }
    }

    fn into_payload(mut self) -> Option<Vec<u8>> {
        match std::mem::replace(&mut self.work, Work::Flush) {
            Work::Entries {
                payload: Payload::One(p),
                ..
            } => Some(p),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
struct Wake {
    /// Flush now: a `flush()`, a full queue, or the size threshold.
    urgent: bool,
    closing: bool,
}

#[derive(Debug)]
struct Inner {
    options: S3Options,
    prefix: String,
    epoch: u64,
    queue: ArrayQueue<Pending>,
    /// Payload bytes queued and not yet taken by the flusher.
    queued_bytes: AtomicU64,
    /// Bumped after every drain: appends waiting for room watch it.
    space: Mutex<u64>,
    space_freed: Condvar,
    wake: Mutex<Wake>,
    woken: Condvar,
    /// `flush()` markers queued and not yet taken.
    flushes: AtomicU64,
    failed: AtomicBool,
    failure: Mutex<Option<Failure>>,
    closed: AtomicBool,
    /// One past the last acknowledged offset of each topic.
    ends: Mutex<HashMap<String, u64>>,
    counters: Counters,
}

/// An entry handed back by [`S3Wal::append_timeout`], with why it was not queued.
#[derive(Debug)]
pub struct Rejected {
    /// `TimedOut` when the queue stayed full, or the writer's failure.
    pub error: io::Error,
    /// The entry, untouched.
    pub data: Vec<u8>,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "entry of {} bytes not queued: {}",
            self.data.len(),
            self.error
        )
    }
}

impl std::error::Error for Rejected {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The S3 WAL buffer: entries from any thread, group-committed to S3 one batch object per
/// flush, each producer told through its [`S3Ticket`] once its entry is in S3.
///
/// Opening a prefix fences every earlier writer of it: the open claims the next object name
/// with a conditional PUT under a higher epoch, and a fenced writer's next PUT finds its name
/// taken. Dropping the writer flushes what is queued.
///
/// (Batch sequences and epochs stay below `u64::MAX`, which readers refuse: one past them
/// would overflow. A prefix whose numbers reached it, which only crafted objects do, is
/// refused rather than fenced with a number no later open accepts.)
#[derive(Debug)]
pub struct S3Wal {
    inner: Arc<Inner>,
    flusher: Option<JoinHandle<()>>,
    prefix: String,
    /// For truncations (the flusher has its own).
    remote: Remote,
}

/// `value`, a batch `what` (sequence or epoch) a writer is about to use, if it is one a reader
/// accepts (below `u64::MAX`).
fn numbered(prefix: &str, what: &str, value: Option<u64>) -> io::Result<u64> {
    value.filter(|v| *v < u64::MAX).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "prefix {prefix:?}: no batch {what} is left to number a batch with (its batches \
                 reached the last one a reader accepts)"
            ),
        )
    })
}

impl S3Wal {
    /// Opens `prefix` of `store` for writing: reads the prefix's batches (to continue every
    /// topic's offsets), then fences earlier writers.
    ///
    /// # Errors
    /// `InvalidInput` for bad options; the store's errors; `InvalidData` when the prefix holds
    /// damaged batches; `AlreadyExists` when other writers kept winning the fence.
    pub fn open(store: Arc<dyn ObjectStore>, prefix: &str, options: S3Options) -> io::Result<Self> {
        options.validate()?;
        // Before anything is written: a capacity the process cannot hold fails here.
        let queue = ArrayQueue::new(options.queue_capacity);
        let remote = Remote::new(store, prefix, options.request_timeout)?;
        let mut index = Index::load(&remote)?;
        let counters = Counters::default();
        let writer = random_id();
        let mut round = 0;
        let (epoch, sequence) = loop {
            let id = BatchId {
                epoch: numbered(prefix, "epoch", index.max_epoch().checked_add(1))?,
                sequence: numbered(prefix, "sequence", Some(index.next_sequence()))?,
                writer,
            };
            let fence: Bytes = format::encode_batch(id, &[])?.into();
            match put_batch(&remote, &options, &counters, id, fence.clone()) {
                Ok(()) => {
                    check_conditional_puts(&remote, &options, &counters, id.sequence, fence)?;
                    break (id.epoch, id.sequence);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && round < FENCE_ROUNDS => {
                    round += 1;
                    index.refresh(&remote)?;
                }
                Err(e) => return Err(e),
            }
        };
        tracing::info!(prefix, epoch, sequence, "walrus-s3 writer opened");
        let inner = Arc::new(Inner {
            queue,
            options,
            prefix: prefix.to_owned(),
            epoch,
            queued_bytes: AtomicU64::new(0),
            space: Mutex::new(0),
            space_freed: Condvar::new(),
            wake: Mutex::new(Wake::default()),
            woken: Condvar::new(),
            flushes: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            closed: AtomicBool::new(false),
            ends: Mutex::new(index.ends()),
            counters,
        });
        let flusher = Flusher {
            ends: index.ends(),
            inner: Arc::clone(&inner),
            remote: remote.clone(),
            writer,
            next_sequence: sequence.saturating_add(1),
        };
        let handle = std::thread::Builder::new()
            .name("walrus-s3-flusher".into())
            .spawn(move || flusher.guarded())?;
        Ok(Self {
            inner,
            flusher: Some(handle),
            prefix: prefix.to_owned(),
            remote,
        })
    }

    /// Queues one entry for `topic`, waiting while the queue is full.
    ///
    /// # Errors
    /// `InvalidInput` for a bad topic name or an entry over the frame limit (nothing queued);
    /// the writer's failure once a batch failed or the writer was fenced.
    pub fn append(&self, topic: &str, data: &[u8]) -> io::Result<S3Ticket> {
        check_entry(topic, data.len())?;
        let slot = Slot::new();
        let item = Pending {
            work: Work::Entries {
                topic: topic.to_owned(),
                payload: Payload::One(data.to_vec()),
            },
            slot: Arc::clone(&slot),
        };
        self.queue(item, None).map_err(|(e, _)| e)?;
        Ok(S3Ticket::new(slot))
    }

    /// Like [`append`](Self::append), waiting at most `timeout` for room in the queue; the
    /// entry comes back when there was none.
    ///
    /// # Errors
    /// [`Rejected`] with `TimedOut`, `InvalidInput` or the writer's failure, and the entry.
    pub fn append_timeout(
        &self,
        topic: &str,
        data: Vec<u8>,
        timeout: Duration,
    ) -> Result<S3Ticket, Rejected> {
        if let Err(error) = check_entry(topic, data.len()) {
            return Err(Rejected { error, data });
        }
        let slot = Slot::new();
        let item = Pending {
            work: Work::Entries {
                topic: topic.to_owned(),
                payload: Payload::One(data),
            },
            slot: Arc::clone(&slot),
        };
        // A timeout past any instant (`Duration::MAX`) is no timeout.
        match self.queue(item, Instant::now().checked_add(timeout)) {
            Ok(()) => Ok(S3Ticket::new(slot)),
            Err((error, item)) => Err(Rejected {
                error,
                data: item.into_payload().unwrap_or_default(),
            }),
        }
    }

    /// Queues `entries` for `topic` as one atomic unit: they land in one batch object at
    /// consecutive offsets, or not at all.
    ///
    /// # Errors
    /// `InvalidInput` for an empty batch, more than 2000 entries or 1 GiB, a bad topic or an
    /// entry over the frame limit; the writer's failure.
    pub fn append_batch(&self, topic: &str, entries: &[&[u8]]) -> io::Result<S3Ticket> {
        if entries.is_empty() || entries.len() > MAX_BATCH_ENTRIES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "topic {topic:?}: a batch holds 1 to {MAX_BATCH_ENTRIES} entries, not {}",
                    entries.len()
                ),
            ));
        }
        for e in entries {
            check_entry(topic, e.len())?;
        }
        let total: u64 = entries.iter().map(|e| e.len() as u64).sum();
        if total > MAX_ENTRY_LEN as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "topic {topic:?}: a batch of {total} bytes exceeds the limit of {MAX_ENTRY_LEN}"
                ),
            ));
        }
        let slot = Slot::new();
        let item = Pending {
            work: Work::Entries {
                topic: topic.to_owned(),
                payload: Payload::Many(entries.iter().map(|e| e.to_vec()).collect()),
            },
            slot: Arc::clone(&slot),
        };
        self.queue(item, None).map_err(|(e, _)| e)?;
        Ok(S3Ticket::new(slot))
    }

    /// Returns once everything queued before the call is in S3 (sends a batch now).
    ///
    /// # Errors
    /// The writer's failure.
    pub fn flush(&self) -> io::Result<()> {
        let slot = Slot::new();
        let marker = Pending {
            work: Work::Flush,
            slot: Arc::clone(&slot),
        };
        // Counted before it is queued: the flusher keeps sending batches without waiting for
        // the interval while a marker is queued, however many batches lie before it.
        self.inner.flushes.fetch_add(1, Ordering::AcqRel);
        let queued = self.queue(marker, None);
        if queued.is_err() {
            self.inner.flushes.fetch_sub(1, Ordering::AcqRel);
        }
        queued.map_err(|(e, _)| e)?;
        self.inner.wake_flusher();
        S3Ticket::new(slot).wait().map(|_| ())
    }

    /// Drops from S3 the batch objects no reader needs any more: from the oldest on, each
    /// batch every one of whose entries lies below its topic's floor in `floors` (a topic not
    /// named has floor 0: all its entries are needed). Returns how many batch objects it
    /// dropped. Offsets, sequences and epochs continue after a truncation as before it, for
    /// this writer and every later one, and readers see the topics' entries from the first
    /// one kept ([`S3Reader::start_offset`](crate::S3Reader::start_offset)).
    ///
    /// First a checkpoint object is written (`PREFIX/checkpoint/<first sequence kept>.ckpt`:
    /// the topics' ends and the highest epoch below it); opens read it and list the batches
    /// from it on, so their cost no longer grows with the prefix's history. Then each batch
    /// below it is replaced by an empty object, and older checkpoints are deleted. Empty, not
    /// deleted: a name must never be free again, or a fenced writer whose next name it was
    /// would find it free, write there, and take its batch for acknowledged (fencing is a
    /// create-once PUT of the next name). The empty objects hold no bytes and no listing
    /// visits them, but they remain objects; do not expire them with a lifecycle rule.
    ///
    /// A truncation cut short leaves batches below the checkpoint, which opens ignore and the
    /// next truncation empties. A reader that listed a batch before it was emptied fails its
    /// read of it; [`S3Reader::refresh`](crate::S3Reader::refresh) moves it past the
    /// truncation.
    ///
    /// A floor past a topic's end as this writer knows it ([`end_offset`](Self::end_offset))
    /// counts as that end: entries not acknowledged to this writer are always needed.
    ///
    /// Costs an open's requests (a LIST and a GET of the checkpoints, a LIST and a GET per
    /// batch kept since the last truncation), a LIST from the oldest checkpoint (the first
    /// truncation of a prefix lists its whole history), two more of the checkpoints, a PUT
    /// for the checkpoint (two the first time) and one per batch dropped, and a DELETE per
    /// older checkpoint. "Since" and "from" hold on stores that list from an offset on the
    /// server (S3, GCS, Azure); object_store's in-memory and local stores list everything and
    /// filter. On a versioned bucket the emptied batches' earlier versions keep their bytes.
    ///
    /// # Errors
    /// `InvalidInput` for a bad topic name or a topic named twice; the writer's failure once
    /// it stopped (fenced, or a batch failed); the store's errors, and `InvalidData` for a
    /// damaged prefix or a checkpoint of the same start that says otherwise.
    pub fn truncate(&self, floors: &[(&str, u64)]) -> io::Result<usize> {
        let mut floor: HashMap<&str, u64> = HashMap::with_capacity(floors.len());
        for &(topic, offset) in floors {
            validate_topic_name(topic).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("truncate: {e}"))
            })?;
            if floor.insert(topic, offset).is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("truncate: topic {topic:?} named twice"),
                ));
            }
        }
        if let Some(e) = self.inner.refusal() {
            return Err(e);
        }
        // Never past what this writer knows acknowledged: a batch of its own whose PUT answer
        // was lost (its retry must find it whole), and any newer owner's entries, are needed.
        {
            let ends = self.inner.ends.lock();
            for (topic, offset) in &mut floor {
                *offset = (*offset).min(ends.get(*topic).copied().unwrap_or(0));
            }
        }
        let remote = &self.remote;
        // Batches below the oldest checkpoint left are all empty already: a truncation empties
        // them before it deletes the checkpoint before its own.
        let (_, checkpoints) = remote.checkpoints()?;
        let oldest = checkpoints.first().map_or(0, |(start, _)| *start);
        let index = Index::load(remote)?;
        let needed = |h: &format::BatchHeader| {
            h.sections.iter().any(|s| {
                s.count > 0 && s.offsets().end > floor.get(s.topic.as_str()).copied().unwrap_or(0)
            })
        };
        let start = index
            .batches()
            .iter()
            .find(|(_, h)| needed(h))
            .map_or_else(|| index.next_sequence(), |(l, _)| l.sequence);
        if start > index.start() {
            if checkpoints.is_empty() {
                // The first truncation: a checkpoint of nothing first, which stays until every
                // batch below the new one is empty (as an older checkpoint does for later
                // truncations), so that one cut short is finished from 0.
                write_checkpoint(remote, &format::Checkpoint::default())?;
            }
            write_checkpoint(remote, &index.checkpoint_at(start))?;
        }
        // Every batch below the start, leftovers of a truncation cut short included, then
        // every older checkpoint: the one just written (or found) covers them.
        let mut dropped = 0;
        for l in remote
            .list(oldest)?
            .into_iter()
            .take_while(|l| l.sequence < start)
            .filter(|l| l.size > 0)
        {
            remote.put_empty(&l.path)?;
            dropped += 1;
        }
        let (_, checkpoints) = remote.checkpoints()?;
        for (_, path) in checkpoints.iter().filter(|(s, _)| *s < start) {
            remote.delete(path)?;
        }
        tracing::info!(prefix = %self.prefix, start, dropped, "walrus-s3 prefix truncated");
        Ok(dropped)
    }

    /// One past the last offset of `topic` known to be in S3 (`None` for a topic with none).
    #[must_use]
    pub fn end_offset(&self, topic: &str) -> Option<u64> {
        self.inner.ends.lock().get(topic).copied()
    }

    /// This writer's epoch (one more than any earlier writer's of the prefix).
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    /// The prefix written to.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The writer's counters.
    #[must_use]
    pub fn stats(&self) -> S3Stats {
        self.inner.counters.snapshot()
    }

    /// Flushes what is queued and stops the flusher.
    ///
    /// # Errors
    /// The writer's failure, if a batch failed (now or earlier).
    pub fn close(mut self) -> io::Result<()> {
        self.stop();
        match &*self.inner.failure.lock() {
            Some(f) => Err(f.to_error()),
            None => Ok(()),
        }
    }

    fn stop(&mut self) {
        if let Some(handle) = self.flusher.take() {
            {
                let mut w = self.inner.wake.lock();
                w.closing = true;
            }
            self.inner.woken.notify_one();
            // A panic was caught inside the thread and recorded as the writer's failure.
            let _ = handle.join();
        }
    }

    fn queue(&self, item: Pending, deadline: Option<Instant>) -> Result<(), (io::Error, Pending)> {
        let inner = &*self.inner;
        let len = item.bytes();
        if let Some(e) = inner.refusal() {
            return Err((e, item));
        }
        let mut item = match inner.try_push(item, len) {
            Ok(()) => {
                inner.pushed();
                return Ok(());
            }
            Err(item) => item,
        };
        let mut generation = inner.space.lock();
        loop {
            if let Some(e) = inner.refusal() {
                return Err((e, item));
            }
            let seen = *generation;
            match inner.try_push(item, len) {
                Ok(()) => {
                    // Not under the `space` lock, which failing the queue takes.
                    drop(generation);
                    inner.pushed();
                    return Ok(());
                }
                Err(back) => item = back,
            }
            // A full queue is flushed now rather than at the end of the interval.
            inner.wake_flusher();
            while *generation == seen && inner.refusal().is_none() {
                match deadline {
                    None => inner.space_freed.wait(&mut generation),
                    Some(d) => {
                        if inner.space_freed.wait_until(&mut generation, d).timed_out()
                            && *generation == seen
                        {
                            return Err((
                                io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    format!("prefix {:?}: the queue stayed full", self.prefix),
                                ),
                                item,
                            ));
                        }
                    }
                }
            }
        }
    }
}

impl Drop for S3Wal {
    fn drop(&mut self) {
        self.stop();
    }
}

fn check_entry(topic: &str, len: usize) -> io::Result<()> {
    validate_topic_name(topic)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    if len > MAX_ENTRY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("topic {topic:?}: entry of {len} bytes exceeds the limit of {MAX_ENTRY_LEN}"),
        ));
    }
    Ok(())
}

impl Inner {
    /// Why appends are refused, if they are: always `BrokenPipe` (so a caller retrying on
    /// `TimedOut`, a full queue, never spins on a dead writer), the cause in the message.
    fn refusal(&self) -> Option<io::Error> {
        if self.failed.load(Ordering::Acquire) {
            let cause = self
                .failure
                .lock()
                .as_ref()
                .map_or_else(String::new, |f| f.message.clone());
            return Some(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!(
                    "prefix {:?}: the S3 writer stopped (reopen to resume): {cause}",
                    self.prefix
                ),
            ));
        }
        if self.closed.load(Ordering::Acquire) {
            return Some(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("prefix {:?}: the S3 writer is closed", self.prefix),
            ));
        }
        None
    }

    /// Queues `item` if the queue and the byte budget have room.
    fn try_push(&self, item: Pending, len: u64) -> Result<(), Pending> {
        let prior = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        let max = self.options.max_buffered_bytes;
        if prior > 0 && prior.saturating_add(len) > max {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(item);
        }
        let entries = item.entries();
        match self.queue.push(item) {
            Ok(()) => {
                self.counters
                    .entries_queued
                    .fetch_add(entries, Ordering::Relaxed);
                let threshold = self.options.flush_bytes;
                let crossed = prior < threshold && prior + len >= threshold;
                if crossed || self.options.flush_interval.is_zero() {
                    self.wake_flusher();
                }
                Ok(())
            }
            Err(item) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                Err(item)
            }
        }
    }

    /// After a push: a batch that failed after the append's refusal check, and failed the
    /// queue before the push, left the item where nothing drains it until the writer closes
    /// (the interval may be long, and later appends are refused before they queue), so it
    /// fails here. Paired with the fence in `fail`: this sees the failure, or that failure's
    /// `fail_queued` sees the item. Call without the `space` lock (`fail_queued` takes it).
    fn pushed(&self) {
        fence(Ordering::SeqCst);
        if self.failed.load(Ordering::Acquire) {
            self.fail_queued();
        }
    }

    fn wake_flusher(&self) {
        self.wake.lock().urgent = true;
        self.woken.notify_one();
    }

    fn space_freed(&self) {
        *self.space.lock() += 1;
        self.space_freed.notify_all();
    }

    fn fail(&self, failure: &Failure) {
        self.failure.lock().get_or_insert_with(|| failure.clone());
        self.failed.store(true, Ordering::Release);
        fence(Ordering::SeqCst);
        self.space_freed();
    }

    /// Completes everything queued with the writer's failure (or "closed"), and wakes the
    /// producers waiting for room so they see the refusal.
    fn fail_queued(&self) {
        let failure = self.failure.lock().clone().unwrap_or_else(|| Failure {
            kind: io::ErrorKind::BrokenPipe,
            message: format!(
                "prefix {:?}: the S3 writer closed before the entry was sent",
                self.prefix
            ),
        });
        while let Some(item) = self.queue.pop() {
            self.queued_bytes.fetch_sub(item.bytes(), Ordering::AcqRel);
            if matches!(item.work, Work::Flush) {
                self.flushes.fetch_sub(1, Ordering::AcqRel);
            }
            item.slot.complete(Err(failure.clone()));
        }
        self.space_freed();
    }
}

/// The flusher thread's state.
struct Flusher {
    inner: Arc<Inner>,
    remote: Remote,
    writer: u64,
    next_sequence: u64,
    ends: HashMap<String, u64>,
}

impl Flusher {
    /// The thread's body: [`run`](Self::run), and should it panic (a user's `ObjectStore`
    /// can), the writer stops as after a failed batch instead of leaving producers waiting.
    fn guarded(mut self) {
        let inner = Arc::clone(&self.inner);
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run())).is_err() {
            tracing::error!(prefix = %inner.prefix, "walrus-s3 flusher panicked; the writer stops");
            inner.fail(&Failure {
                kind: io::ErrorKind::Other,
                message: format!("prefix {:?}: the S3 flusher panicked", inner.prefix),
            });
            // An append that passed the refusal check just before may still queue: keep
            // failing what arrives until the writer closes.
            let mut deadline = Instant::now();
            loop {
                inner.fail_queued();
                if self.wait_for_work(&mut deadline) {
                    break;
                }
            }
            inner.closed.store(true, Ordering::Release);
            inner.fail_queued();
        }
    }

    fn run(&mut self) {
        let interval = self.inner.options.flush_interval;
        let mut deadline = later(Instant::now(), interval);
        loop {
            let closing = self.wait_for_work(&mut deadline);
            deadline = later(Instant::now(), interval);
            loop {
                let batch = self.drain();
                if batch.is_empty() {
                    break;
                }
                self.commit(batch);
                if !closing && self.inner.flushes.load(Ordering::Acquire) == 0 {
                    break;
                }
            }
            if closing {
                break;
            }
        }
        self.inner.closed.store(true, Ordering::Release);
        // Nothing can be queued after the close (appends borrow the writer), but whatever is
        // left fails rather than waits.
        self.inner.fail_queued();
    }

    /// Sleeps until a flush is due; true when the writer is closing.
    fn wait_for_work(&self, deadline: &mut Instant) -> bool {
        let inner = &*self.inner;
        let interval = inner.options.flush_interval;
        let mut wake = inner.wake.lock();
        loop {
            if wake.closing {
                return true;
            }
            if wake.urgent {
                wake.urgent = false;
                return false;
            }
            if inner.flushes.load(Ordering::Acquire) > 0 {
                return false;
            }
            if inner.queued_bytes.load(Ordering::Acquire) >= inner.options.flush_bytes {
                return false;
            }
            let now = Instant::now();
            if now >= *deadline {
                if !inner.queue.is_empty() {
                    return false;
                }
                *deadline = later(now, interval);
            }
            if interval.is_zero() {
                // Every append wakes the flusher: no tick needed.
                inner.woken.wait(&mut wake);
            } else {
                inner.woken.wait_until(&mut wake, *deadline);
            }
        }
    }

    /// Takes up to a batch's worth of queued items: `flush_bytes` (at least one item), and at
    /// most as many items as a batch has room for topics.
    fn drain(&self) -> Vec<Pending> {
        let inner = &*self.inner;
        let mut items = Vec::new();
        let mut bytes = 0u64;
        while items.is_empty()
            || (bytes < inner.options.flush_bytes && items.len() < MAX_BATCH_TOPICS)
        {
            let Some(item) = inner.queue.pop() else { break };
            bytes += item.bytes();
            if matches!(item.work, Work::Flush) {
                inner.flushes.fetch_sub(1, Ordering::AcqRel);
            }
            items.push(item);
        }
        inner.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        // Also when nothing was taken: a producer that found the byte budget full may be
        // waiting for a generation change that the empty drain must still give it.
        inner.space_freed();
        items
    }

    /// Writes one batch and completes its tickets.
    fn commit(&mut self, items: Vec<Pending>) {
        let inner = Arc::clone(&self.inner);
        if inner.failed.load(Ordering::Acquire) {
            let failure = inner.failure.lock().clone();
            if let Some(f) = failure {
                for item in &items {
                    item.slot.complete(Err(f.clone()));
                }
                return;
            }
        }
        let mut groups: Vec<TopicEntries<'_>> = Vec::new();
        let mut group_of: HashMap<&str, usize> = HashMap::new();
        let mut ranges: Vec<Range<u64>> = Vec::with_capacity(items.len());
        let mut entries = 0u64;
        let mut kind_error = None;
        for item in &items {
            let Work::Entries { topic, payload } = &item.work else {
                ranges.push(0..0);
                continue;
            };
            let g = *group_of.entry(topic.as_str()).or_insert_with(|| {
                groups.push(TopicEntries {
                    topic,
                    first: self.ends.get(topic.as_str()).copied().unwrap_or(0),
                    entries: Vec::new(),
                });
                groups.len() - 1
            });
            let group = &mut groups[g];
            let start = group.first + group.entries.len() as u64;
            match payload {
                Payload::One(p) => group.entries.push((FrameKind::single(), p)),
                Payload::Many(ps) => {
                    for (i, p) in ps.iter().enumerate() {
                        match FrameKind::batch(i, ps.len()) {
                            Ok(kind) => group.entries.push((kind, p)),
                            Err(e) => kind_error = Some(e.to_string()),
                        }
                    }
                }
            }
            let end = group.first + group.entries.len() as u64;
            entries += end - start;
            ranges.push(start..end);
        }
        let result = if groups.is_empty() {
            Ok(())
        } else {
            let id = BatchId {
                epoch: inner.epoch,
                sequence: self.next_sequence,
                writer: self.writer,
            };
            let numbered = numbered(&inner.prefix, "sequence", Some(self.next_sequence));
            match kind_error {
                Some(msg) => Err(io::Error::new(io::ErrorKind::InvalidInput, msg)),
                None if numbered.is_err() => numbered.map(|_| ()),
                None => format::encode_batch(id, &groups).and_then(|bytes| {
                    put_batch(
                        &self.remote,
                        &inner.options,
                        &inner.counters,
                        id,
                        bytes.into(),
                    )
                }),
            }
        };
        match result {
            Ok(()) => {
                if !groups.is_empty() {
                    self.next_sequence += 1;
                    let mut shared = inner.ends.lock();
                    for g in &groups {
                        let end = g.first + g.entries.len() as u64;
                        self.ends.insert(g.topic.to_owned(), end);
                        shared.insert(g.topic.to_owned(), end);
                    }
                }
                drop(groups);
                inner
                    .counters
                    .entries_acknowledged
                    .fetch_add(entries, Ordering::Relaxed);
                for (item, range) in items.iter().zip(ranges) {
                    item.slot.complete(Ok(range));
                }
            }
            Err(e) => {
                drop(groups);
                let failure = Failure::of(&e);
                tracing::error!(prefix = %self.remote.prefix(), error = %e, "walrus-s3 batch failed; the writer stops");
                inner
                    .counters
                    .batches_failed
                    .fetch_add(1, Ordering::Relaxed);
                inner.fail(&failure);
                for item in &items {
                    item.slot.complete(Err(failure.clone()));
                }
                // What is still queued would only fail at the next drain: fail it now.
                inner.fail_queued();
            }
        }
    }
}

/// Whether another attempt can succeed where this one failed.
fn retryable(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
    )
}

/// Writes `checkpoint` (create-once). One found there must say the same: a truncation cut
/// short wrote it from the same batches.
fn write_checkpoint(remote: &Remote, checkpoint: &format::Checkpoint) -> io::Result<()> {
    let path =
        object_store::path::Path::from(format::checkpoint_name(remote.prefix(), checkpoint.start));
    let bytes = format::encode_checkpoint(checkpoint)?;
    if bytes.len() as u64 > format::MAX_CHECKPOINT_LEN {
        // Readers refuse a longer one: written, it would leave the prefix unopenable.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "checkpoint object {path}: {} bytes ({} topics), past the {} a reader reads",
                bytes.len(),
                checkpoint.ends.len(),
                format::MAX_CHECKPOINT_LEN
            ),
        ));
    }
    if let PutOutcome::Exists = remote.put_create(&path, bytes.into())? {
        let found = remote.checkpoint(&path, checkpoint.start)?;
        if found.as_ref() != Some(checkpoint) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("checkpoint object {path}: says otherwise than the batches below it"),
            ));
        }
    }
    Ok(())
}

/// PUTs batch `id` under its name with If-None-Match, retrying within the budget. A taken name
/// holding a batch with this writer's id, epoch and sequence, and this length, is an earlier
/// attempt of ours that landed (a writer PUTs one content per sequence; its header is fetched,
/// not the whole object, which may be as large as a batch gets); anything else there is
/// another writer's, and fences this one (`AlreadyExists`, no retry).
fn put_batch(
    remote: &Remote,
    options: &S3Options,
    counters: &Counters,
    id: BatchId,
    bytes: Bytes,
) -> io::Result<()> {
    let path = remote.path(id.sequence);
    let mut last: Option<io::Error> = None;
    for attempt in 1..=options.put_attempts {
        if attempt > 1 {
            counters.put_retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(options.backoff_for(attempt - 1));
        }
        counters.put_requests.fetch_add(1, Ordering::Relaxed);
        let landed = match remote.put_create(&path, bytes.clone()) {
            Ok(PutOutcome::Created) => Ok(()),
            Ok(PutOutcome::Exists) => match remote.batch_header(&path, id.sequence) {
                Ok(Some(h))
                    if (h.writer, h.epoch, h.object_len)
                        == (id.writer, id.epoch, bytes.len() as u64) =>
                {
                    Ok(())
                }
                Ok(Some(h)) => return Err(fenced(&path, id, &format!("epoch {}", h.epoch))),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    return Err(fenced(&path, id, "an object that is not a batch of ours"));
                }
                // Taken, then gone (a lifecycle rule?): the next attempt creates it.
                Ok(None) => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{path}: the name was taken, then the object was gone"),
                )),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match landed {
            Ok(()) => {
                counters.batches.fetch_add(1, Ordering::Relaxed);
                counters
                    .bytes_written
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                return Ok(());
            }
            Err(e) if !retryable(&e) => return Err(e),
            Err(e) => {
                tracing::warn!(%path, attempt, error = %e, "walrus-s3 PUT failed");
                last = Some(e);
            }
        }
    }
    let last = last.unwrap_or_else(|| io::Error::other("no attempt was made"));
    Err(io::Error::new(
        last.kind(),
        format!(
            "batch {} ({path}): not in S3 after {} attempts: {last}",
            id.sequence, options.put_attempts
        ),
    ))
}

/// PUTs the fence (batch `sequence`, just written) again, with If-None-Match: a store that
/// honours it refuses. One that creates it again ignores the condition, and would let a second
/// writer overwrite acknowledged batches, so it is refused (`Unsupported`). The bytes are the
/// same, so what the store holds does not change either way.
fn check_conditional_puts(
    remote: &Remote,
    options: &S3Options,
    counters: &Counters,
    sequence: u64,
    fence: Bytes,
) -> io::Result<()> {
    let path = remote.path(sequence);
    let mut last = None;
    // Within the PUT retry budget, as any PUT.
    for attempt in 1..=options.put_attempts {
        if attempt > 1 {
            counters.put_retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(options.backoff_for(attempt - 1));
        }
        counters.put_requests.fetch_add(1, Ordering::Relaxed);
        match remote.put_create(&path, fence.clone()) {
            Ok(PutOutcome::Exists) => return Ok(()),
            Ok(PutOutcome::Created) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "{path}: the store overwrote an object under If-None-Match: without \
                         conditional PUTs a second writer could overwrite acknowledged batches"
                    ),
                ));
            }
            Err(e) if retryable(&e) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no attempt was made")))
}

fn fenced(path: &object_store::path::Path, id: BatchId, theirs: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "batch {} ({path}) was written by another writer ({theirs}; this writer has epoch {}): this writer is fenced",
            id.sequence, id.epoch
        ),
    )
}

/// A writer id that differs between opens and processes (std's per-process random keys).
fn random_id() -> u64 {
    let mut h = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish()
}

/// `now + interval`, or an instant no flush waits for if that overflows (an interval of
/// `Duration::MAX`: flushes by size and on request only).
fn later(now: Instant, interval: Duration) -> Instant {
    now.checked_add(interval)
        .or_else(|| now.checked_add(Duration::from_secs(u64::from(u32::MAX))))
        .unwrap_or(now)
}
