//! The store: one data directory, its topics, segment files, allocator and cursor file.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use walrus_alloc::{AllocConfig, BlockAllocator, Deletion, FileTracker, Resume};
use walrus_block::{
    BLOCK_ALIGN, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, MAX_ENTRY_LEN, SEGMENT_DATA_OFFSET,
    SegmentHeader, validate_topic_name,
};
use walrus_io::{BackendKind, Storage};

use crate::chain::{Block, SegmentHandle};
use crate::cursors::CursorStore;
use crate::error::{Poisoned, invalid_input, poisoned_error};
use crate::layout::{DirLock, lane_base, segment_path};
use crate::options::StoreOptions;
use crate::recovery::{self, Recovered, RecoveryReport};
use crate::syncers::Syncers;
use crate::topic::{Topic, TopicState};

/// The open segment files of a store, by id. Shared with the allocator's preparer.
#[derive(Debug, Default)]
pub(crate) struct Files {
    map: RwLock<HashMap<u64, Arc<SegmentHandle>>>,
}

impl Files {
    pub(crate) fn get(&self, id: u64) -> Option<Arc<SegmentHandle>> {
        self.map.read().get(&id).cloned()
    }

    pub(crate) fn insert(&self, handle: Arc<SegmentHandle>) {
        self.map.write().insert(handle.id, handle);
    }

    pub(crate) fn remove(&self, id: u64) -> Option<Arc<SegmentHandle>> {
        self.map.write().remove(&id)
    }

    fn all(&self) -> Vec<Arc<SegmentHandle>> {
        self.map.read().values().cloned().collect()
    }
}

/// A block just handed out by the allocator, with its open file.
#[derive(Debug)]
pub(crate) struct AllocatedBlock {
    pub(crate) handle: Arc<SegmentHandle>,
    pub(crate) start: u64,
    pub(crate) len: u64,
}

/// What every topic of a store shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) storage: Arc<dyn Storage>,
    /// One allocator per lane: topics are spread over lanes so that appends to different
    /// topics land in different segment files (the kernel serialises buffered writes to one
    /// file). All lanes share one file tracker.
    pub(crate) lanes: Vec<BlockAllocator>,
    pub(crate) tracker: walrus_alloc::sync::Arc<FileTracker>,
    /// Lane of the next topic created.
    next_lane: AtomicUsize,
    pub(crate) files: Arc<Files>,
    pub(crate) cursors: CursorStore,
    /// Durable watermarks per topic, written lazily (see [`Shared::write_marks`]).
    pub(crate) marks: CursorStore,
    /// Sync the files of several lanes at once.
    syncers: Syncers,
    pub(crate) options: StoreOptions,
    /// Set when a sync (or the cleanup of a failed write) failed: see [`Poisoned`].
    poisoned: AtomicBool,
    poison: Mutex<Option<Arc<Poisoned>>>,
    /// Topics whose cursor moved without being persisted (`AtLeastOnce`): the background
    /// maintenance persists them, so an idle reader's progress is not lost until drop.
    cursors_pending: Mutex<Vec<Arc<Topic>>>,
    /// Topics with appends not yet covered by a sync.
    unsynced: Mutex<Vec<Arc<Topic>>>,
    /// Topics whose durable watermark moved since the marks were last written, and when that was.
    marks_pending: Mutex<(Vec<Arc<Topic>>, Instant)>,
    /// Consumed segments waiting for [`Store::maintain`] (background maintenance only).
    deletions: Mutex<Vec<u64>>,
}

impl Shared {
    /// The lane for a topic created now: round robin, so that topics spread evenly.
    pub(crate) fn pick_lane(&self) -> usize {
        self.next_lane.fetch_add(1, Ordering::Relaxed) % self.lanes.len().max(1)
    }

    /// Lists `topic` for the next syncs after an append (its committed end moved).
    pub(crate) fn note_append(&self, topic: &Arc<Topic>) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if topic.set_listed(true) {
            self.unsynced.lock().push(topic.clone());
        }
    }

    /// Fails once a sync has failed: the kernel may have dropped unsynced pages, so nothing
    /// written since can be trusted until the store is reopened.
    pub(crate) fn check_writable(&self) -> io::Result<()> {
        if self.poisoned.load(Ordering::Acquire)
            && let Some(p) = &*self.poison.lock()
        {
            return Err(poisoned_error(p));
        }
        Ok(())
    }

    /// Refuses every later write: `e` may have lost data the instance cannot account for.
    pub(crate) fn poison(&self, e: &io::Error) {
        let mut poison = self.poison.lock();
        if poison.is_none() {
            tracing::error!(dir = %self.dir.display(), error = %e,
                "writes refused until the directory is reopened");
            *poison = Some(Arc::new(Poisoned::from_error(e)));
        }
        self.poisoned.store(true, Ordering::Release);
    }

    /// The cause, once poisoned.
    pub(crate) fn poisoned(&self) -> Option<Arc<Poisoned>> {
        self.poison.lock().clone()
    }

    /// Lists `topic` for the background persistence of cursors that moved.
    pub(crate) fn note_cursor(&self, topic: &Arc<Topic>) {
        self.cursors_pending.lock().push(topic.clone());
    }

    pub(crate) fn alloc_block(&self, min_len: u64, lane: usize) -> io::Result<AllocatedBlock> {
        let allocator = self
            .lanes
            .get(lane % self.lanes.len().max(1))
            .ok_or_else(|| io::Error::other("no allocation lane"))?;
        let a = allocator.allocate(min_len)?;
        for seg in a.deletable {
            self.delete_segment(seg);
        }
        let handle = self.files.get(a.block.segment).map_or_else(
            || {
                Err(io::Error::other(format!(
                    "segment {} was handed out but is not open",
                    a.block.segment
                )))
            },
            |h| h.claim(a.block.end(), self.options.zero_fill).map(|_| h),
        );
        let handle = match handle {
            Ok(h) => h,
            Err(e) => {
                // Tracked as handed out: give it back, or its segment could never be deleted.
                // Nothing was written to it, so it is simply left unused.
                let _ = self.tracker.seal(a.block.segment, a.block.start);
                let _ = self.tracker.checkpoint(a.block.segment, a.block.start);
                return Err(e);
            }
        };
        Ok(AllocatedBlock {
            handle,
            start: a.block.start,
            len: a.block.len,
        })
    }

    /// Claims the space of each lane's next blocks ahead of the appends when claims write zeros
    /// (see [`SegmentHandle::claim_ahead`]), in the current segment and the prepared spare:
    /// for the background maintenance, so that appends rarely claim space themselves.
    ///
    /// # Errors
    /// The error of the claim or of the sync of the zeros; the appends claim for themselves
    /// then, and report it if it persists.
    fn claim_ahead(&self) -> io::Result<()> {
        // Claims by `fallocate` are cheap enough on the appending thread, and claiming early
        // would only cost space.
        if !self.options.zero_fill || self.check_writable().is_err() {
            return Ok(());
        }
        for lane in &self.lanes {
            let position = lane.position();
            let ahead = position
                .current
                .map(|c| (c.segment, c.next_start))
                .into_iter()
                .chain(position.spare.map(|s| (s, SEGMENT_DATA_OFFSET)));
            for (segment, at) in ahead {
                if let Some(handle) = self.files.get(segment) {
                    handle.claim_ahead(at, self.options.zero_fill)?;
                }
            }
        }
        Ok(())
    }

    /// The writer is done with `block`.
    pub(crate) fn seal_block(&self, block: &Block) {
        let outcome = self.tracker.seal(block.segment, block.start);
        self.settle(outcome, block);
    }

    /// Readers are done with `block` (or it never held entries).
    pub(crate) fn release_block(&self, block: &Block) {
        let outcome = self.tracker.checkpoint(block.segment, block.start);
        self.settle(outcome, block);
    }

    fn settle(&self, outcome: io::Result<Deletion>, block: &Block) {
        match outcome {
            Ok(Deletion::Now { segment }) => self.delete_segment(segment),
            Ok(Deletion::NotYet) => {}
            Err(e) => tracing::warn!(segment = block.segment, block = block.start, error = %e,
                "block tracking inconsistency; the segment is kept"),
        }
    }

    /// Deletes a segment whose blocks are all sealed and consumed. The cursors that consumed it
    /// are made durable first, so a crash can never bring back a cursor pointing into it.
    /// Failures are logged and leave the file for the next open to delete.
    pub(crate) fn delete_segment(&self, segment: u64) {
        if self.options.background_maintenance {
            self.deletions.lock().push(segment);
            return;
        }
        self.delete_segment_now(segment);
    }

    fn delete_segment_now(&self, segment: u64) {
        let path = segment_path(&self.dir, segment);
        if let Err(e) = self.cursors.sync() {
            tracing::warn!(file = %path.display(), error = %e, "cursor sync failed; segment kept");
            self.poison(&e);
            return;
        }
        self.files.remove(segment);
        let removed = self
            .storage
            .remove(&path)
            .and_then(|()| self.storage.sync_dir(&self.dir));
        match removed {
            Ok(()) => tracing::debug!(file = %path.display(), "deleted consumed segment"),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "could not delete consumed segment")
            }
        }
    }

    /// Makes every write and cursor persisted so far durable, then advances the durable
    /// watermark of every topic it covered.
    ///
    /// Safe to run from several threads at once: each file's sync covers every write marked
    /// before it (waiting for a sync already in flight, see [`FileSync`](crate::durability::FileSync)), and each topic's
    /// watermark moves to what this sync saw committed when it started.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.check_writable()?;
        let snapshot: Vec<(Arc<Topic>, u64)> = self
            .unsynced
            .lock()
            .iter()
            .map(|t| (t.clone(), t.committed()))
            .collect();
        // Where appends wait for every sync (`SyncEach`) and a background maintenance runs,
        // the watermarks are written and synced there, off their path; otherwise here, a sync
        // late (a lower bound).
        let inline_marks = !self.options.marks_in_background();
        let synced = self
            .syncers
            .sync_all(&self.files.all())
            .and_then(|()| self.cursors.sync())
            .and_then(|()| {
                if inline_marks {
                    self.marks.sync()
                } else {
                    Ok(())
                }
            });
        if let Err(e) = synced {
            self.poison(&e);
            return Err(e);
        }
        for (t, offset) in &snapshot {
            t.set_durable(*offset);
        }
        // Topics now wholly durable leave the list. An append racing with this keeps (or puts)
        // its topic listed: it sets the flag after publishing, this clears it before checking.
        self.unsynced.lock().retain(|t| {
            if t.durable() < t.committed() {
                return true;
            }
            t.set_listed(false);
            std::sync::atomic::fence(Ordering::SeqCst);
            if t.durable() < t.committed() {
                t.set_listed(true);
                return true;
            }
            false
        });
        let topics = snapshot.into_iter().map(|(t, _)| t).collect();
        if inline_marks {
            self.queue_marks(topics, false);
        } else {
            self.marks_pending.lock().0.extend(topics);
        }
        Ok(())
    }

    /// Writes the durable watermarks that are due and makes them durable, so that they stay
    /// close behind the acknowledged end also when the instance goes idle. For the background
    /// maintenance.
    pub(crate) fn flush_marks(&self) -> io::Result<()> {
        if self.check_writable().is_err() {
            return Ok(());
        }
        self.queue_marks(Vec::new(), false);
        self.marks.sync()
    }

    /// Durable watermarks go to the marks file at most every `mark_interval`, and become
    /// durable with the next sync: on disk they lag, which keeps them a lower bound. Recovery
    /// uses them to tell damage in data that was synced (corruption) from damage in data a
    /// power cut caught unsynced (a torn tail, however ragged).
    fn queue_marks(&self, topics: Vec<Arc<Topic>>, force: bool) {
        let due = {
            let mut pending = self.marks_pending.lock();
            pending.0.extend(topics);
            if (!force && pending.1.elapsed() < self.options.mark_interval) || pending.0.is_empty()
            {
                return;
            }
            pending.1 = Instant::now();
            std::mem::take(&mut pending.0)
        };
        let mut done = std::collections::HashSet::new();
        for t in due {
            if !done.insert(Arc::as_ptr(&t)) {
                continue;
            }
            let durable = t.durable();
            let mut mark = t.mark_state();
            if durable <= mark.written {
                continue;
            }
            let pair = *mark
                .pair
                .get_or_insert_with(|| self.marks.pair_for(&t.name));
            match self
                .marks
                .write(&t.name, pair, mark.generation + 1, durable, false)
            {
                Ok(()) => {
                    mark.generation += 1;
                    mark.written = durable;
                }
                Err(e) => {
                    tracing::warn!(topic = %t.name, error = %e, "could not write durable watermark")
                }
            }
        }
    }
}

/// Creates segment files for the allocator: create + preallocate, write the segment header,
/// make the new name durable.
pub(crate) fn segment_preparer(
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    files: Arc<Files>,
    block_len: u64,
) -> impl Fn(u64, u64) -> io::Result<()> + Send + Sync + 'static {
    move |segment, capacity| {
        let path = segment_path(&dir, segment);
        let file = match storage.create(&path, capacity) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Left behind by a failed earlier preparation of this id: start over.
                storage.remove(&path)?;
                storage.create(&path, capacity)?
            }
            other => other?,
        };
        file.allocate(0, SEGMENT_DATA_OFFSET)?;
        file.write_at(
            &SegmentHeader {
                segment_id: segment,
                block_len,
            }
            .encode(),
            0,
        )?;
        storage.sync_dir(&dir)?;
        let handle = Arc::new(SegmentHandle::new(
            segment,
            file,
            SEGMENT_DATA_OFFSET,
            capacity,
        ));
        handle.mark_dirty();
        files.insert(handle);
        Ok(())
    }
}

/// An open data directory: the topics, their segment files and cursors.
///
/// `Store` is the engine under the `walrus` facade. Appends are written (to the page cache, or
/// the device for direct backends) when they return; [`sync`](Self::sync) makes them durable.
/// Cursor persistence follows [`StoreOptions::with_persist_every`].
#[derive(Debug)]
pub struct Store {
    shared: Arc<Shared>,
    topics: RwLock<HashMap<Arc<str>, Arc<Topic>>>,
    report: RecoveryReport,
    _lock: DirLock,
}

impl Store {
    /// Opens (creating if needed) the data directory `dir` on `storage`, recovering every topic.
    ///
    /// # Errors
    /// `InvalidInput` for bad options or a `dir` that is a file; `ResourceBusy` when another live
    /// instance holds the directory; `InvalidData` for a foreign or corrupt file, or damage the
    /// [recovery mode](crate::RecoveryMode) does not tolerate; any I/O error.
    pub fn open(
        dir: impl AsRef<Path>,
        storage: Arc<dyn Storage>,
        options: StoreOptions,
    ) -> io::Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        options.validate()?;
        let real_fs = storage.kind() != BackendKind::Sim;
        let existed = if real_fs { check_dir(&dir)? } else { true };
        storage.create_dir_all(&dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create data directory {}: {e}", dir.display()),
            )
        })?;
        let lock = if real_fs {
            DirLock::acquire(&dir)?
        } else {
            DirLock::none()
        };
        match recovery::recover(&dir, storage.clone(), &options) {
            Ok(recovered) => Self::wire(dir, storage, options, recovered, lock),
            Err(e) => {
                // A refused open leaves the directory as it found it.
                lock.release_created();
                if !existed {
                    let _ = std::fs::remove_dir(&dir);
                }
                Err(e)
            }
        }
    }

    /// Builds the running store from what recovery found.
    fn wire(
        dir: PathBuf,
        storage: Arc<dyn Storage>,
        options: StoreOptions,
        recovered: Recovered,
        lock: DirLock,
    ) -> io::Result<Self> {
        let files = Arc::new(Files::default());
        let tracker = walrus_alloc::sync::Arc::new(FileTracker::new());
        let mut deletable = Vec::new();
        for seg in recovered.segments {
            files.insert(seg.handle.clone());
            if let Deletion::Now { segment } =
                tracker.restore_file(seg.handle.id, &seg.blocks, seg.fully_allocated)?
            {
                deletable.push(segment);
            }
        }
        let config = AllocConfig::new()
            .with_segment_capacity(options.segment_len)
            // The smallest block: each topic chooses its blocks' lengths (`grown_block_len`).
            .with_block_size(BLOCK_ALIGN)
            .with_data_offset(SEGMENT_DATA_OFFSET)
            .with_alignment(BLOCK_ALIGN)
            .with_prepare_ahead(options.prepare_ahead && !options.background_maintenance);
        let mut lanes = Vec::with_capacity(options.lanes);
        for lane in 0..options.lanes {
            let found = recovered.lanes.get(&lane).copied().unwrap_or_default();
            let mut resume = Resume::new(found.next_segment.unwrap_or_else(|| lane_base(lane)));
            if let Some(t) = found.tail {
                resume = resume.with_tail(t);
            }
            let preparer = segment_preparer(
                storage.clone(),
                dir.clone(),
                files.clone(),
                options.block_len,
            );
            lanes.push(BlockAllocator::resume(
                config,
                preparer,
                tracker.clone(),
                resume,
            )?);
        }
        let shared = Arc::new(Shared {
            dir,
            storage,
            lanes,
            tracker,
            next_lane: AtomicUsize::new(0),
            files,
            cursors: recovered.cursors,
            marks: recovered.marks,
            // Two files are dirty at once even with one lane, when a segment fills.
            syncers: Syncers::new(options.lanes.max(2) - 1),
            options,
            poisoned: AtomicBool::new(false),
            poison: Mutex::new(None),
            cursors_pending: Mutex::new(Vec::new()),
            unsynced: Mutex::new(Vec::new()),
            marks_pending: Mutex::new((Vec::new(), Instant::now())),
            deletions: Mutex::new(Vec::new()),
        });
        for segment in deletable {
            shared.delete_segment(segment);
        }
        let topics = recovered
            .topics
            .into_iter()
            .map(|(name, state)| {
                let lane = shared.pick_lane();
                (name.clone(), Arc::new(Topic::new(name, state, lane)))
            })
            .collect();
        Ok(Self {
            shared,
            topics: RwLock::new(topics),
            report: recovered.report,
            _lock: lock,
        })
    }

    /// Lists a topic whose consuming reads were not all persisted (`AtLeastOnce`), for the
    /// background maintenance to persist.
    fn note_reads(&self, t: &Arc<Topic>, consume: bool) {
        if consume && self.shared.options.persist_every > 1 && t.has_unpersisted_reads() {
            self.shared.note_cursor(t);
        }
    }

    fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(name).cloned()
    }

    fn topic_or_create(&self, name: &str) -> io::Result<Arc<Topic>> {
        if let Some(t) = self.topic(name) {
            return Ok(t);
        }
        validate_topic_name(name).map_err(io::Error::from)?;
        let mut topics = self.topics.write();
        let t = topics.entry(Arc::from(name)).or_insert_with_key(|k| {
            Arc::new(Topic::new(
                k.clone(),
                TopicState::empty(),
                self.shared.pick_lane(),
            ))
        });
        Ok(t.clone())
    }

    /// Appends one entry to `topic` (created on first use) and returns its offset.
    ///
    /// # Errors
    /// `InvalidInput` for a bad topic name or an entry over [`MAX_ENTRY_LEN`]; an I/O error
    /// leaves the topic exactly as before.
    pub fn append(&self, topic: &str, payload: &[u8]) -> io::Result<u64> {
        check_entry(topic, payload)?;
        let t = self.topic_or_create(topic)?;
        let offset = t.append(&self.shared, &[payload], false)?.start;
        self.shared.note_append(&t);
        Ok(offset)
    }

    /// Appends `payloads` to `topic` as one atomic batch: after a crash all of them are there,
    /// or none. Their offsets are contiguous; the range is returned.
    ///
    /// # Errors
    /// `InvalidInput` for an empty batch, more than [`MAX_BATCH_ENTRIES`] entries, more than
    /// [`MAX_BATCH_BYTES`] bytes, or a bad entry or topic; an I/O error leaves the topic exactly
    /// as before.
    pub fn append_batch(&self, topic: &str, payloads: &[&[u8]]) -> io::Result<Range<u64>> {
        if payloads.is_empty() {
            return Err(invalid_input(format!("topic {topic:?}: empty batch")));
        }
        if payloads.len() > MAX_BATCH_ENTRIES {
            return Err(invalid_input(format!(
                "topic {topic:?}: batch of {} entries exceeds the limit of {MAX_BATCH_ENTRIES}",
                payloads.len()
            )));
        }
        let total: u64 = payloads.iter().map(|p| p.len() as u64).sum();
        if total > MAX_BATCH_BYTES {
            return Err(invalid_input(format!(
                "topic {topic:?}: batch of {total} bytes exceeds the limit of {MAX_BATCH_BYTES}"
            )));
        }
        for p in payloads {
            check_entry(topic, p)?;
        }
        let t = self.topic_or_create(topic)?;
        let range = t.append(&self.shared, payloads, true)?;
        self.shared.note_append(&t);
        Ok(range)
    }

    /// Reads the entry at `topic`'s cursor; with `consume`, moves the cursor past it.
    /// `Ok(None)` when the topic has nothing unread (or does not exist).
    ///
    /// # Errors
    /// `InvalidData` naming topic and offset if the entry fails validation (it is never
    /// returned); an I/O error, after which the cursor is where it was.
    pub fn read_next(&self, topic: &str, consume: bool) -> io::Result<Option<(u64, Vec<u8>)>> {
        match self.topic(topic) {
            Some(t) => {
                let read = t.read_next(&self.shared, consume);
                self.note_reads(&t, consume);
                read
            }
            None => Ok(None),
        }
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
        let mut out = Vec::new();
        if let Some(t) = self.topic(topic) {
            let read = t.read_entries(
                &self.shared,
                consume,
                MAX_BATCH_ENTRIES,
                max_bytes,
                &mut out,
            );
            self.note_reads(&t, consume);
            read?;
        }
        Ok(out)
    }

    /// Reads the entry at `offset` of `topic` without moving any cursor. `Ok(None)` if it has not
    /// been written (or falls in a gap left by skipped corruption).
    ///
    /// # Errors
    /// `NotFound` if the entry was consumed and its space released; `InvalidData` if it fails
    /// validation.
    pub fn read_at(&self, topic: &str, offset: u64) -> io::Result<Option<Vec<u8>>> {
        match self.topic(topic) {
            Some(t) => t.read_at(&self.shared, offset),
            None => Ok(None),
        }
    }

    /// Moves `topic`'s cursor to `offset` (forwards or backwards within retained entries) and
    /// persists it.
    ///
    /// # Errors
    /// `InvalidInput` past the end of the topic or below the retained entries; `NotFound` for an
    /// unknown topic; an I/O error writing the cursor.
    pub fn commit(&self, topic: &str, offset: u64) -> io::Result<()> {
        let t = self.topic(topic).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("topic {topic:?} does not exist"),
            )
        })?;
        t.commit(&self.shared, offset)
    }

    /// `topic`'s cursor: the offset the next consuming read returns.
    pub fn cursor(&self, topic: &str) -> Option<u64> {
        self.topic(topic).map(|t| t.cursor())
    }

    /// One past `topic`'s last entry: the offset its next append gets.
    pub fn end_offset(&self, topic: &str) -> Option<u64> {
        self.topic(topic).map(|t| t.committed())
    }

    /// One past `topic`'s last durable entry: every entry below it was covered by a completed
    /// [`sync`](Self::sync) (or was recovered at open).
    pub fn durable_offset(&self, topic: &str) -> Option<u64> {
        self.topic(topic).map(|t| t.durable())
    }

    /// The first offset of `topic` still stored (lower ones were consumed and released).
    pub fn first_retained_offset(&self, topic: &str) -> Option<u64> {
        self.topic(topic).map(|t| t.first_retained())
    }

    /// Names of every topic, sorted.
    pub fn topics(&self) -> Vec<String> {
        let mut names: Vec<String> = self.topics.read().keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    }

    /// Writes every cursor that moved since it was last persisted.
    ///
    /// # Errors
    /// The first I/O error; the other topics are still attempted.
    pub fn persist_cursors(&self) -> io::Result<()> {
        let topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        let mut first_err = None;
        for t in topics {
            if let Err(e) = t.persist_cursor(&self.shared) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Makes every append that returned before this call, and every persisted cursor, durable.
    ///
    /// # Errors
    /// The sync error. A failed sync poisons the store: later writes fail until it is reopened.
    pub fn sync(&self) -> io::Result<()> {
        self.shared.sync()
    }

    /// Does the slow file-system work left for the background under
    /// [`StoreOptions::with_background_maintenance`]: deletes consumed segments and prepares
    /// the next segment file before an append needs it. Cheap when there is nothing to do.
    ///
    /// # Errors
    /// The error of preparing the next segment (an append that needs it will retry).
    pub fn maintain(&self) -> io::Result<()> {
        let due = std::mem::take(&mut *self.shared.deletions.lock());
        for segment in due {
            self.shared.delete_segment_now(segment);
        }
        let pending = std::mem::take(&mut *self.shared.cursors_pending.lock());
        let mut seen = std::collections::HashSet::new();
        for t in pending {
            if seen.insert(Arc::as_ptr(&t))
                && let Err(e) = t.persist_cursor(&self.shared)
            {
                tracing::warn!(topic = %t.name, error = %e, "could not persist a cursor");
            }
        }
        // The persisted watermarks follow the syncs from here (see `Shared::sync`), also when
        // appends stop.
        if self.shared.options.marks_in_background()
            && let Err(e) = self.shared.flush_marks()
        {
            tracing::warn!(error = %e, "could not sync the durable watermarks");
        }
        // Only once something was written: opening must not create segment files.
        for lane in &self.shared.lanes {
            if lane.position().current.is_some() && self.shared.check_writable().is_ok() {
                lane.prepare_spare()?;
            }
        }
        self.shared.claim_ahead()
    }

    /// Whether the store refuses writes after a failed sync, and why (see
    /// [`Poisoned`](crate::Poisoned)).
    pub fn poisoned(&self) -> Option<Arc<Poisoned>> {
        self.shared.poisoned()
    }

    /// What recovery found when the store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Number of blocks `topic` still retains (for tests and diagnostics).
    pub fn retained_blocks(&self, topic: &str) -> Option<usize> {
        self.topic(topic).map(|t| t.chain_len())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self
            .persist_cursors()
            .and_then(|()| self.shared.cursors.sync())
        {
            tracing::warn!(dir = %self.shared.dir.display(), error = %e, "cursors not persisted at close");
        }
        for segment in std::mem::take(&mut *self.shared.deletions.lock()) {
            self.shared.delete_segment_now(segment);
        }
        // Exact durable watermarks after a clean close: damage to anything synced is then
        // reported as corruption rather than cut as a tail.
        if self.shared.check_writable().is_ok() {
            self.shared.queue_marks(Vec::new(), true);
            if let Err(e) = self.shared.marks.sync() {
                tracing::warn!(dir = %self.shared.dir.display(), error = %e, "durable watermarks not synced at close");
            }
        }
    }
}

/// Checks a data directory before anything is created in it: it must be a directory (if it
/// exists) holding only regular files. Returns whether it existed.
fn check_dir(dir: &Path) -> io::Result<bool> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("data directory {}: {e}", dir.display()),
            ));
        }
    };
    if !std::fs::metadata(dir).is_ok_and(|m| m.is_dir()) || !(meta.is_dir() || meta.is_symlink()) {
        return Err(invalid_input(format!(
            "data directory {} is not a directory",
            dir.display()
        )));
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if !kind.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: not a regular file (a directory or symlink); a Walrus data directory \
                     holds only the files Walrus writes",
                    entry.path().display()
                ),
            ));
        }
    }
    Ok(true)
}

fn check_entry(topic: &str, payload: &[u8]) -> io::Result<()> {
    if payload.len() > MAX_ENTRY_LEN {
        return Err(invalid_input(format!(
            "topic {topic:?}: entry of {} bytes exceeds the limit of {MAX_ENTRY_LEN}",
            payload.len()
        )));
    }
    Ok(())
}
