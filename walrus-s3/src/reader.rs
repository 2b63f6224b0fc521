//! Reading a prefix back: the index of its batch objects (validated across batches) and the
//! per-topic iterator that replays entries from an offset with ranged GETs.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use walrus::Record;

use crate::format::{self, BatchHeader};
use crate::remote::{Listed, Remote};

/// Per-request deadline of a reader's GETs and LISTs.
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where one run of a topic's entries lives.
#[derive(Debug, Clone)]
struct Run {
    offsets: Range<u64>,
    batch: usize,
    section: usize,
}

/// Every batch object of a prefix, validated as a whole: sequences and epochs in order, each
/// topic's offsets dense from batch to batch.
#[derive(Debug, Default)]
pub(crate) struct Index {
    batches: Vec<(Listed, BatchHeader)>,
    topics: HashMap<String, Vec<Run>>,
}

impl Index {
    /// Lists the prefix and reads every header.
    pub(crate) fn load(remote: &Remote) -> io::Result<Self> {
        let mut index = Self::default();
        index.refresh(remote)?;
        Ok(index)
    }

    /// Adds the batches written since the last load or refresh.
    ///
    /// # Errors
    /// `InvalidData` naming the object when a new batch breaks the order of the prefix; the
    /// index is then unchanged.
    pub(crate) fn refresh(&mut self, remote: &Remote) -> io::Result<()> {
        let listed = remote.list(self.next_sequence())?;
        let headers = remote.headers(&listed)?;
        let mut topics = self.topics.clone();
        let mut last = self.batches.last().map(|(l, h)| (l.sequence, h.epoch));
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
            if let Some((seq, epoch)) = last {
                if l.sequence != seq + 1 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "prefix {:?}: batch {} follows batch {seq}: batches are missing",
                            remote.prefix(),
                            l.sequence
                        ),
                    ));
                }
                if h.epoch < epoch {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "batch object {}: epoch {} after epoch {epoch}",
                            l.path, h.epoch
                        ),
                    ));
                }
            }
            last = Some((l.sequence, h.epoch));
            for (s, section) in h.sections.iter().enumerate() {
                let runs = topics.entry(section.topic.clone()).or_default();
                if let Some(prev) = runs.last()
                    && prev.offsets.end != section.first
                {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "batch object {}: topic {:?} resumes at offset {} after offset {}",
                            l.path, section.topic, section.first, prev.offsets.end
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
        self.batches.last().map_or(0, |(l, _)| l.sequence + 1)
    }

    /// The highest writer epoch seen.
    pub(crate) fn max_epoch(&self) -> u64 {
        self.batches.last().map_or(0, |(_, h)| h.epoch)
    }

    /// One past the last offset of every topic.
    pub(crate) fn ends(&self) -> HashMap<String, u64> {
        self.topics
            .iter()
            .filter_map(|(t, runs)| Some((t.clone(), runs.last()?.offsets.end)))
            .collect()
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

    /// The topics the prefix holds entries of, sorted.
    #[must_use]
    pub fn topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .index
            .topics
            .iter()
            .filter(|(_, runs)| !runs.is_empty())
            .map(|(t, _)| t.clone())
            .collect();
        t.sort();
        t
    }

    /// One past the last offset of `topic` (`None` when it has no entries).
    #[must_use]
    pub fn end_offset(&self, topic: &str) -> Option<u64> {
        self.index.runs(topic).last().map(|r| r.offsets.end)
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
        let failure = runs.first().and_then(|r| {
            (from < r.offsets.start).then(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "topic {topic:?}: offsets below {} are not in prefix {:?}",
                        r.offsets.start,
                        self.remote.prefix()
                    ),
                )
            })
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
        let bytes = self
            .reader
            .remote
            .get_range(&listed.path, section.bytes.clone())?;
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
