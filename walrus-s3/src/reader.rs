//! Reading a prefix back: the index of its batch objects (validated across batches) and the
//! per-topic iterator that replays entries from an offset with ranged GETs.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use walrus::Record;

use crate::format::{self, BatchHeader, Checkpoint};
use crate::remote::{Listed, Remote};

/// How many times a load starts again because a truncation ran beside it.
const LOAD_ATTEMPTS: u32 = 4;

/// The start of the prefix's latest checkpoint (0 without one): one LIST.
fn latest_start(remote: &Remote) -> io::Result<u64> {
    Ok(remote
        .checkpoint_objects()?
        .last()
        .map_or(0, |(start, _, _)| *start))
}

/// Per-request deadline of a reader's GETs and LISTs.
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where one run of a topic's entries lives.
#[derive(Debug, Clone)]
struct Run {
    offsets: Range<u64>,
    batch: usize,
    section: usize,
}

/// Every batch object of a prefix from its latest checkpoint on, validated as a whole:
/// sequences and epochs in order from the checkpoint's, each topic's offsets dense from batch
/// to batch, continuing from the checkpoint's ends.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// What the batches a truncation deleted left (start 0, epoch 0, no ends: none deleted).
    checkpoint: Checkpoint,
    batches: Vec<(Listed, BatchHeader)>,
    topics: HashMap<String, Vec<Run>>,
}

impl Index {
    /// Reads the latest checkpoint, lists the prefix from it and reads every header. A load
    /// that fails while a truncation runs beside it (which deletes the checkpoint it read, or
    /// empties a batch it listed) starts again from the newer checkpoint, a few times.
    pub(crate) fn load(remote: &Remote) -> io::Result<Self> {
        let mut attempts = 0;
        loop {
            let mut tried = 0;
            let e = match Self::load_once(remote, &mut tried) {
                Ok(index) => return Ok(index),
                Err(e) => e,
            };
            attempts += 1;
            // The load's own error, unless a newer checkpoint is seen (a failed LIST here
            // does not hide it).
            if attempts >= LOAD_ATTEMPTS || latest_start(remote).unwrap_or(tried) <= tried {
                return Err(e);
            }
        }
    }

    fn load_once(remote: &Remote, tried: &mut u64) -> io::Result<Self> {
        let checkpoint = match remote.checkpoint_objects()?.pop() {
            None => Checkpoint::default(),
            Some((start, path, size)) => {
                *tried = start;
                remote.read_checkpoint(&path, start, size)?
            }
        };
        let mut index = Self {
            checkpoint,
            ..Self::default()
        };
        index.add_batches(remote)?;
        Ok(index)
    }

    /// The first batch sequence the prefix keeps (those below were truncated).
    pub(crate) fn start(&self) -> u64 {
        self.checkpoint.start
    }

    /// Where `topic`'s entries begin in what the prefix keeps: its end at the checkpoint.
    fn base(&self, topic: &str) -> u64 {
        self.checkpoint
            .ends
            .binary_search_by(|(t, _)| t.as_str().cmp(topic))
            .ok()
            .and_then(|i| self.checkpoint.ends.get(i))
            .map_or(0, |(_, end)| *end)
    }

    /// Adds the batches written since the last load or refresh.
    ///
    /// # Errors
    /// `InvalidData` naming the object when a new batch breaks the order of the prefix; the
    /// index is then unchanged.
    pub(crate) fn refresh(&mut self, remote: &Remote) -> io::Result<()> {
        // A truncation since the load (its checkpoint is written before it empties anything):
        // start over from its checkpoint; the batches this index holds below it are emptied.
        if latest_start(remote)? > self.checkpoint.start {
            *self = Self::load(remote)?;
            return Ok(());
        }
        match self.add_batches(remote) {
            Ok(()) => Ok(()),
            // One that began after the check above.
            Err(_) if latest_start(remote).is_ok_and(|s| s > self.checkpoint.start) => {
                *self = Self::load(remote)?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Adds the batches listed after the last one held.
    ///
    /// # Errors
    /// As [`refresh`](Self::refresh); the index is then unchanged.
    fn add_batches(&mut self, remote: &Remote) -> io::Result<()> {
        let listed = remote.list(self.next_sequence())?;
        let headers = remote.headers(&listed)?;
        let mut topics = self.topics.clone();
        let mut expected = self.next_sequence();
        let mut max_epoch = self.max_epoch();
        let base = self.batches.len();
        for (i, (l, h)) in listed.iter().zip(&headers).enumerate() {
            if l.sequence == u64::MAX || h.epoch == u64::MAX {
                // Never written (sequences count from 0, epochs from 1): one past them would
                // overflow.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "batch object {}: sequence {} or epoch {} past what a writer numbers",
                        l.path, l.sequence, h.epoch
                    ),
                ));
            }
            // The first batch kept is the checkpoint's start (0 without one): a prefix whose
            // first batches were deleted but by a truncation is missing them.
            if l.sequence != expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "prefix {:?}: batch {} where batch {expected} should be: batches are \
                         missing",
                        remote.prefix(),
                        l.sequence
                    ),
                ));
            }
            if h.epoch < max_epoch {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "batch object {}: epoch {} after epoch {max_epoch}",
                        l.path, h.epoch
                    ),
                ));
            }
            expected = l.sequence + 1;
            max_epoch = h.epoch;
            for (s, section) in h.sections.iter().enumerate() {
                let runs = topics.entry(section.topic.clone()).or_default();
                let end = runs
                    .last()
                    .map_or_else(|| self.base(&section.topic), |prev| prev.offsets.end);
                if end != section.first {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "batch object {}: topic {:?} resumes at offset {} after offset {end}",
                            l.path, section.topic, section.first
                        ),
                    ));
                }
                if section.count > 0 {
                    runs.push(Run {
                        offsets: section.offsets(),
                        batch: base + i,
                        section: s,
                    });
                }
            }
        }
        self.topics = topics;
        self.batches.extend(listed.into_iter().zip(headers));
        Ok(())
    }

    /// The sequence the next batch will have.
    pub(crate) fn next_sequence(&self) -> u64 {
        self.batches
            .last()
            .map_or(self.checkpoint.start, |(l, _)| l.sequence + 1)
    }

    /// The highest writer epoch seen.
    pub(crate) fn max_epoch(&self) -> u64 {
        self.batches
            .last()
            .map_or(self.checkpoint.epoch, |(_, h)| h.epoch)
    }

    /// One past the last offset of every topic (truncated ones included).
    pub(crate) fn ends(&self) -> HashMap<String, u64> {
        let mut ends: HashMap<String, u64> = self.checkpoint.ends.iter().cloned().collect();
        for (t, runs) in &self.topics {
            if let Some(last) = runs.last() {
                ends.insert(t.clone(), last.offsets.end);
            }
        }
        ends
    }

    /// The batches kept, in sequence order.
    pub(crate) fn batches(&self) -> &[(Listed, BatchHeader)] {
        &self.batches
    }

    /// The checkpoint a truncation to `start` writes: the ends and highest epoch of the
    /// batches below it (those kept below `start` with what the current checkpoint says of
    /// the ones before). `start` lies between the current start and the next sequence.
    pub(crate) fn checkpoint_at(&self, start: u64) -> Checkpoint {
        let mut ends: std::collections::BTreeMap<String, u64> =
            self.checkpoint.ends.iter().cloned().collect();
        let mut epoch = self.checkpoint.epoch;
        for (l, h) in self.batches.iter().take_while(|(l, _)| l.sequence < start) {
            debug_assert!(l.sequence >= self.checkpoint.start);
            epoch = epoch.max(h.epoch);
            for section in h.sections.iter().filter(|s| s.count > 0) {
                ends.insert(section.topic.clone(), section.offsets().end);
            }
        }
        Checkpoint {
            start,
            epoch,
            ends: ends.into_iter().collect(),
        }
    }

    fn runs(&self, topic: &str) -> &[Run] {
        self.topics.get(topic).map_or(&[], Vec::as_slice)
    }
}

/// A reader of a prefix written by [`S3Wal`](crate::S3Wal): lists its batch objects, validates
/// them as a whole, and replays any topic from any offset.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// # let store: std::sync::Arc<dyn walrus_s3::object_store::ObjectStore> = unimplemented!();
/// let reader = walrus_s3::S3Reader::open(store, "wal")?;
/// for record in reader.read("events", 0) {
///     let record = record?;
///     println!("{} {:?}", record.offset, record.data);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct S3Reader {
    remote: Remote,
    index: Index,
}

impl S3Reader {
    /// Opens the prefix `prefix` of `store`: lists its batch objects and reads their headers.
    ///
    /// # Errors
    /// The store's error (with the operation and object named), or `InvalidData` when an object
    /// is damaged or the batches do not follow each other.
    pub fn open(store: Arc<dyn ObjectStore>, prefix: &str) -> io::Result<Self> {
        Self::with_timeout(store, prefix, DEFAULT_REQUEST_TIMEOUT)
    }

    /// Like [`open`](Self::open), with a deadline for each request.
    ///
    /// # Errors
    /// See [`open`](Self::open).
    pub fn with_timeout(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        timeout: Duration,
    ) -> io::Result<Self> {
        let remote = Remote::new(store, prefix, timeout)?;
        let index = Index::load(&remote)?;
        Ok(Self { remote, index })
    }

    /// Picks up the batches written since the open (or the last refresh).
    ///
    /// # Errors
    /// See [`open`](Self::open); the reader is unchanged on error.
    pub fn refresh(&mut self) -> io::Result<()> {
        self.index.refresh(&self.remote)
    }

    /// The topics the prefix has held entries of (those a truncation dropped whole included),
    /// sorted.
    #[must_use]
    pub fn topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .index
            .ends()
            .into_iter()
            .filter(|(_, end)| *end > 0)
            .map(|(t, _)| t)
            .collect();
        t.sort();
        t
    }

    /// One past the last offset of `topic` (`None` when it never had entries).
    #[must_use]
    pub fn end_offset(&self, topic: &str) -> Option<u64> {
        self.index
            .runs(topic)
            .last()
            .map(|r| r.offsets.end)
            .or_else(|| Some(self.index.base(topic)).filter(|&end| end > 0))
    }

    /// The first offset of `topic` the prefix keeps: entries below it were truncated
    /// ([`S3Wal::truncate`](crate::S3Wal::truncate)).
    #[must_use]
    pub fn start_offset(&self, topic: &str) -> u64 {
        self.index.base(topic)
    }

    /// How many batch objects the prefix holds.
    #[must_use]
    pub fn batch_count(&self) -> usize {
        self.index.batches.len()
    }

    /// The entries of `topic` from offset `from` on, in order; each GET fetches one batch's run
    /// of the topic and nothing else.
    pub fn read(&self, topic: &str, from: u64) -> TopicReader<'_> {
        let runs = self.index.runs(topic);
        let next_run = runs.partition_point(|r| r.offsets.end <= from);
        let first = self.index.base(topic);
        let failure = (from < first).then(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "topic {topic:?}: offsets below {first} were truncated from prefix {:?}",
                    self.remote.prefix()
                ),
            )
        });
        TopicReader {
            reader: self,
            topic: topic.to_owned(),
            runs,
            next_run,
            from,
            pending: Vec::new().into_iter(),
            failure,
        }
    }
}

/// The iterator of [`S3Reader::read`]: yields records in offset order; after an error it ends.
#[derive(Debug)]
pub struct TopicReader<'a> {
    reader: &'a S3Reader,
    topic: String,
    runs: &'a [Run],
    next_run: usize,
    from: u64,
    pending: std::vec::IntoIter<Record>,
    failure: Option<io::Error>,
}

impl TopicReader<'_> {
    fn fetch(&self, run: &Run) -> io::Result<Vec<Record>> {
        let (listed, header) = &self.reader.index.batches[run.batch];
        let section = &header.sections[run.section];
        let what = listed.path.to_string();
        let remote = &self.reader.remote;
        let bytes = match remote.get_range(&listed.path, section.bytes.clone()) {
            Ok(bytes) => bytes,
            // A truncation empties the batches it drops (their names stay, for fencing): a
            // reader that has not refreshed since finds no bytes there, which stores answer
            // with a range error or a short read. Those entries are gone, not unreachable.
            Err(e) if matches!(remote.head(&listed.path), Ok(Some(h)) if h.size == 0) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{what} was emptied by a truncation (refresh the reader to see where \
                         the prefix starts now): {e}"
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        let payloads = format::decode_section(&what, section, &bytes)?;
        Ok((section.first..)
            .zip(payloads)
            .filter(|(offset, _)| *offset >= self.from)
            .map(|(offset, data)| Record { offset, data })
            .collect())
    }
}

impl Iterator for TopicReader<'_> {
    type Item = io::Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failure.take() {
            self.next_run = self.runs.len();
            return Some(Err(e));
        }
        loop {
            if let Some(r) = self.pending.next() {
                return Some(Ok(r));
            }
            let run = self.runs.get(self.next_run)?.clone();
            self.next_run += 1;
            match self.fetch(&run) {
                Ok(records) => self.pending = records.into_iter(),
                Err(e) => {
                    self.next_run = self.runs.len();
                    // A decoding error names the object, topic and offset already; a fetch
                    // error names the object: add the offsets it was fetched for.
                    if e.kind() == io::ErrorKind::InvalidData {
                        return Some(Err(e));
                    }
                    return Some(Err(io::Error::new(
                        e.kind(),
                        format!("topic {:?} offsets {:?}: {e}", self.topic, run.offsets),
                    )));
                }
            }
        }
    }
}
