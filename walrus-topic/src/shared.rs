//! What every topic of a store shares: the segment files, the allocation lanes and the file
//! tracker, the cursor and marks files, the poison state, and the store-wide sync (which topics
//! have appends not yet durable, and their watermarks). Below `Topic` (`topic/`):
//! it knows a topic only by its [`Progress`].

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use walrus_alloc::{BlockAllocator, Deletion, FileTracker};
use walrus_block::{CursorRecord, SEGMENT_DATA_OFFSET, SegmentHeader};
use walrus_io::Storage;

use crate::chain::{Block, SegmentHandle};
use crate::cursors::{CursorStore, RecordKey};
use crate::error::{Poisoned, poisoned_error};
use crate::journal::Journal;
use crate::layout::segment_path;
use crate::options::StoreOptions;
use crate::progress::Progress;
use crate::syncers::Syncers;

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

    /// Open segment files, and the disk space they claimed.
    pub(crate) fn usage(&self) -> (u64, u64) {
        let map = self.map.read();
        (map.len() as u64, map.values().map(|h| h.claimed()).sum())
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
    /// Per lane: whether it handed out a block since the store opened. Only then does the
    /// maintenance prepare a spare segment ahead (opening must not create segment files).
    allocated: Vec<AtomicBool>,
    pub(crate) tracker: walrus_alloc::sync::Arc<FileTracker>,
    /// Lane of the next topic created.
    next_lane: AtomicUsize,
    pub(crate) files: Arc<Files>,
    pub(crate) cursors: CursorStore,
    /// Durable watermarks per topic, written lazily (see [`Shared::queue_marks`]).
    pub(crate) marks: CursorStore,
    /// Sync the files of several lanes at once.
    syncers: Syncers,
    pub(crate) options: StoreOptions,
    /// Set when a sync (or the cleanup of a failed write) failed: see [`Poisoned`].
    poisoned: AtomicBool,
    poison: Mutex<Option<Arc<Poisoned>>>,
    /// Topics whose cursor moved without being persisted (`AtLeastOnce`): the background
    /// maintenance persists them, so an idle reader's progress is not lost until drop.
    pub(crate) cursors_pending: Mutex<Vec<Arc<str>>>,
    /// Topics with appends not yet covered by a sync.
    unsynced: Mutex<Vec<Arc<Progress>>>,
    /// Topics whose durable watermark moved since the marks were last written, and when that was.
    marks_pending: Mutex<(Vec<Arc<Progress>>, Instant)>,
    /// Consumed segments waiting for [`Store::maintain`](crate::Store::maintain) (background
    /// maintenance only).
    deletions: Mutex<Vec<u64>>,
    /// The store was dropped: waits for entries end.
    pub(crate) closed: AtomicBool,
    /// Syncs and segment deletions since the store opened.
    pub(crate) sync_counters: crate::stats::SyncCounters,
    /// The remote tier and the catalogues of the tiered topics, if a tier is set.
    pub(crate) tier: Option<crate::tier::TierState>,
    /// The group-commit journal, if the store keeps one (see [`crate::journal`]).
    pub(crate) journal: Option<Journal>,
}

impl Shared {
    /// The shared state of a store opening with what recovery found: the lanes' allocators
    /// over `files` and `tracker`, the cursor and marks files, and the journal (if the store keeps one).
    pub(crate) fn new(
        dir: PathBuf,
        storage: Arc<dyn Storage>,
        lanes: Vec<BlockAllocator>,
        tracker: walrus_alloc::sync::Arc<FileTracker>,
        files: Arc<Files>,
        (cursors, marks, journal): (CursorStore, CursorStore, Option<Journal>),
        options: StoreOptions,
    ) -> Self {
        let tier = options.tier.clone().map(crate::tier::TierState::new);
        Self {
            journal,
            dir,
            storage,
            allocated: lanes.iter().map(|_| AtomicBool::new(false)).collect(),
            lanes,
            tracker,
            next_lane: AtomicUsize::new(0),
            files,
            cursors,
            marks,
            // Two files are dirty at once even with one lane, when a segment fills.
            syncers: Syncers::new(options.lanes.max(2) - 1),
            options,
            poisoned: AtomicBool::new(false),
            poison: Mutex::new(None),
            cursors_pending: Mutex::new(Vec::new()),
            unsynced: Mutex::new(Vec::new()),
            marks_pending: Mutex::new((Vec::new(), Instant::now())),
            deletions: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            sync_counters: crate::stats::SyncCounters::default(),
            tier,
        }
    }

    /// The remote tier and `topic`'s tiering, if the topic tiers.
    pub(crate) fn tiered(&self, topic: &str) -> Option<(&crate::tier::TierState, crate::Tiering)> {
        Some((self.tier.as_ref()?, self.options.tiering_for(topic)?))
    }

    /// The lane for a topic created now: round robin, so that topics spread evenly.
    pub(crate) fn pick_lane(&self) -> usize {
        self.next_lane.fetch_add(1, Ordering::Relaxed) % self.lanes.len().max(1)
    }

    /// Lists a topic for the next syncs after an append (its written end moved).
    pub(crate) fn note_append(&self, topic: &Arc<Progress>) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if topic.set_listed(true) {
            self.unsynced.lock().push(topic.clone());
        }
    }

    /// Fails once a sync has failed: the kernel may have dropped unsynced pages, so nothing
    /// written since can be trusted until the store is reopened.
    pub(crate) fn check_writable(&self) -> io::Result<()> {
        if self.options.read_only {
            return Err(crate::error::read_only_error());
        }
        if self.poisoned.load(Ordering::Acquire)
            && let Some(p) = &*self.poison.lock()
        {
            return Err(poisoned_error(p));
        }
        // A failed sync of the cursor or watermark file on a path that reports it to its own
        // caller only (a consuming read, a commit): the next sync would fail anyway, after an
        // append had been made durable and reported failed.
        if let Some(p) = self
            .cursors
            .sync_failure()
            .or_else(|| self.marks.sync_failure())
        {
            return Err(poisoned_error(&self.poison_with(p)));
        }
        Ok(())
    }

    /// Refuses every later write: `e` may have lost data the instance cannot account for.
    pub(crate) fn poison(&self, e: &io::Error) {
        self.poison_with(Arc::new(Poisoned::from_error(e)));
    }

    /// [`poison`](Self::poison) with `cause`, unless poisoned already; the cause that stands.
    fn poison_with(&self, cause: Arc<Poisoned>) -> Arc<Poisoned> {
        let mut poison = self.poison.lock();
        let p = poison
            .get_or_insert_with(|| {
                tracing::error!(dir = %self.dir.display(), error = %cause,
                    "writes refused until the directory is reopened");
                cause
            })
            .clone();
        self.poisoned.store(true, Ordering::Release);
        p
    }

    /// A guard that poisons the store with `cause` if the work it spans panics (a backend's
    /// bug): that work may have done part of what it was to do, and what is on disk is not
    /// known.
    pub(crate) fn poison_on_panic(&self, cause: &'static str) -> PoisonOnPanic<'_> {
        PoisonOnPanic {
            shared: self,
            cause,
            unwinding: std::thread::panicking(),
        }
    }

    /// The cause, once poisoned.
    pub(crate) fn poisoned(&self) -> Option<Arc<Poisoned>> {
        self.poison.lock().clone()
    }

    /// Lists the topic `name` for the background persistence of cursors that moved.
    pub(crate) fn note_cursor(&self, name: &Arc<str>) {
        self.cursors_pending.lock().push(name.clone());
    }

    pub(crate) fn alloc_block(&self, min_len: u64, lane: usize) -> io::Result<AllocatedBlock> {
        let lane = lane % self.lanes.len().max(1);
        let allocator = self
            .lanes
            .get(lane)
            .ok_or_else(|| io::Error::other("no allocation lane"))?;
        let a = allocator.allocate(min_len)?;
        if let Some(used) = self.allocated.get(lane) {
            used.store(true, Ordering::Relaxed);
        }
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
            |h| {
                h.claim(a.block.start, a.block.end(), self.options.zero_fill)
                    .map(|_| h)
            },
        );
        let handle = match handle {
            Ok(h) => h,
            Err(e) => {
                // Tracked as handed out: give it back, or its segment could never be deleted
                // (and a segment made for this block alone goes now). Nothing was written to
                // it, so it is simply left unused.
                let (segment, start) = (a.block.segment, a.block.start);
                self.settle(self.tracker.seal(segment, start), segment, start);
                self.settle(self.tracker.checkpoint(segment, start), segment, start);
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
    pub(crate) fn claim_ahead(&self) -> io::Result<()> {
        // Claims by `fallocate` are cheap enough on the appending thread, and claiming early
        // would only cost space; with inline maintenance every storage operation stays on the
        // thread that needs it.
        if !self.options.zero_fill
            || !self.options.background_maintenance
            || self.check_writable().is_err()
        {
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

    /// Whether lane `lane` handed out a block since the store opened.
    pub(crate) fn lane_allocated(&self, lane: usize) -> bool {
        self.allocated
            .get(lane)
            .is_some_and(|used| used.load(Ordering::Relaxed))
    }

    /// The writer is done with `block`.
    pub(crate) fn seal_block(&self, block: &Block) {
        let outcome = self.tracker.seal(block.segment, block.start);
        self.settle(outcome, block.segment, block.start);
    }

    /// Readers are done with `block` (or it never held entries).
    pub(crate) fn release_block(&self, block: &Block) {
        let outcome = self.tracker.checkpoint(block.segment, block.start);
        self.settle(outcome, block.segment, block.start);
    }

    fn settle(&self, outcome: io::Result<Deletion>, segment: u64, block: u64) {
        match outcome {
            Ok(Deletion::Now { segment }) => self.delete_segment(segment),
            Ok(Deletion::NotYet) => {}
            Err(e) => tracing::warn!(segment, block, error = %e,
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

    /// Consumed segments that wait for [`delete_segment_now`](Self::delete_segment_now).
    pub(crate) fn take_deletions(&self) -> Vec<u64> {
        std::mem::take(&mut *self.deletions.lock())
    }

    pub(crate) fn delete_segment_now(&self, segment: u64) {
        let _span = tracing::debug_span!("walrus.delete_segment", segment).entered();
        if self.options.read_only {
            // Never reached (every release follows a cursor write, which a read-only store
            // refuses); kept so that no future path can unlink a live writer's file.
            return;
        }
        let path = segment_path(&self.dir, segment);
        if let Err(e) = self.cursors.sync() {
            tracing::warn!(file = %path.display(), error = %e, "cursor sync failed; segment kept");
            self.poison(&e);
            return;
        }
        self.files.remove(segment);
        // Every block of it was sealed and released: nothing will be reported of it again.
        self.tracker.forget(segment);
        let removed = self
            .storage
            .remove(&path)
            .and_then(|()| self.storage.sync_dir(&self.dir));
        match removed {
            Ok(()) => {
                self.sync_counters.segment_deleted();
                tracing::debug!(file = %path.display(), "deleted consumed segment");
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "could not delete consumed segment")
            }
        }
    }

    /// Writes the cleanup of a failed append (zeros over what it may have left in `block`, or
    /// an abandoned block's header) and marks it; with a journal, the next journal sync syncs
    /// the segments, so that the cleanup is durable no later than the next acknowledged append
    /// (a power cut must not bring back what it undid), and is in no record (the next append
    /// to the topic goes where the zeros went: see [`Journal::rewrote`]).
    pub(crate) fn write_cleanup(&self, block: &Block, bytes: &[u8], pos: u64) -> io::Result<()> {
        block.file().write_at(bytes, pos)?;
        block.handle.mark_dirty();
        if let Some(j) = &self.journal {
            j.rewrote();
        }
        Ok(())
    }

    /// Accounts for a completed write of `bufs` at `pos` in `block`'s file: marks it on the
    /// file, then (with a journal) captures it, in that order, so that a segment sync starting
    /// after the capture covers it (see [`crate::journal`]).
    pub(crate) fn wrote(&self, block: &Block, pos: u64, bufs: &[io::IoSlice<'_>]) {
        block.handle.mark_dirty();
        if let Some(j) = &self.journal {
            j.capture(block.segment, pos, bufs);
        }
    }

    /// Syncs every segment file with writes no sync covered yet.
    fn sync_segments(&self) -> io::Result<()> {
        self.syncers.sync_all(&self.files.all())
    }

    /// With a journal and background maintenance: makes the segment writes it holds durable
    /// in their segments, off the appenders' path, so that starting its next generation finds
    /// little to sync. (Without background maintenance, only that start and the close sync
    /// them: no decision then depends on the clock.)
    pub(crate) fn sync_behind_journal(&self) -> io::Result<()> {
        if self.journal.is_none()
            || !self.options.background_maintenance
            || self.check_writable().is_err()
        {
            return Ok(());
        }
        self.sync_segments().inspect_err(|e| self.poison(e))
    }

    /// With a journal, at a clean close: makes every write durable in its segment and retires
    /// the journal's records, so that the next open has nothing to apply.
    pub(crate) fn retire_journal(&self) -> io::Result<()> {
        match &self.journal {
            Some(j) if self.check_writable().is_ok() => j
                .retire(|| self.sync_segments())
                .inspect_err(|e| self.poison(e)),
            _ => Ok(()),
        }
    }

    /// Makes every write and cursor persisted so far durable, then advances the durable
    /// watermark of every topic it covered.
    ///
    /// Safe to run from several threads at once: each file's sync covers every write marked
    /// before it (waiting for a sync already in flight, see [`FileSync`](crate::durability::FileSync)), and each topic's
    /// watermark moves to what this sync saw written when it started.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.check_writable()?;
        // A sync that panics (a backend's bug) may have made some writes durable and not
        // others: as a failed one, it refuses every later write.
        let _poison_on_panic = self.poison_on_panic("a sync panicked: what it wrote is not known");
        let _span = tracing::trace_span!("walrus.sync").entered();
        let started = Instant::now();
        let snapshot: Vec<(Arc<Progress>, u64)> = self
            .unsynced
            .lock()
            .iter()
            .map(|t| (t.clone(), t.written_end()))
            .collect();
        // Where appends wait for every sync (`SyncEach`) and a background maintenance runs,
        // the watermarks are written and synced there, off their path; otherwise here, a sync
        // late (a lower bound).
        let inline_marks = !self.options.marks_in_background();
        let synced = match &self.journal {
            Some(j) => j.sync(|| self.sync_segments()),
            None => self.sync_segments(),
        }
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
        let mut entries = 0;
        for (t, offset) in &snapshot {
            // What this sync moved, not what a concurrent one already counted.
            entries += offset.saturating_sub(t.set_durable(*offset));
        }
        let took = started.elapsed();
        if entries > 0 {
            self.sync_counters.synced(took, entries);
        }
        tracing::trace!(entries, micros = took.as_micros() as u64, "synced");
        // Topics now wholly durable leave the list. An append racing with this keeps (or puts)
        // its topic listed: it sets the flag after publishing, this clears it before checking.
        self.unsynced.lock().retain(|t| {
            if t.durable() < t.written_end() {
                return true;
            }
            t.set_listed(false);
            std::sync::atomic::fence(Ordering::SeqCst);
            if t.durable() < t.written_end() {
                t.set_listed(true);
                return true;
            }
            false
        });
        let topics = snapshot.into_iter().map(|(t, _)| t).collect();
        if inline_marks {
            self.queue_marks(topics, false);
        } else {
            enqueue_marks(&mut self.marks_pending.lock().0, topics);
        }
        Ok(())
    }

    /// Writes the durable watermarks that are due and makes them durable, so that they stay
    /// close behind the acknowledged end also when the instance goes idle. For the background
    /// maintenance. A failed sync poisons the store, as in [`sync`](Self::sync): the watermarks
    /// on disk would stop moving, and a recovery would take damage to synced data above them
    /// for a torn tail.
    pub(crate) fn flush_marks(&self) -> io::Result<()> {
        if self.check_writable().is_err() {
            return Ok(());
        }
        self.queue_marks(Vec::new(), false);
        let synced = self.marks.sync();
        if let Err(e) = &synced {
            self.poison(e);
        }
        synced
    }

    /// How many topics wait in the watermark queue.
    #[cfg(test)]
    pub(crate) fn marks_queued(&self) -> usize {
        self.marks_pending.lock().0.len()
    }

    /// Durable watermarks go to the marks file at most every `mark_interval`, and become
    /// durable with the next sync: on disk they lag, which keeps them a lower bound. Recovery
    /// uses them to tell damage in data that was synced (corruption) from damage in data a
    /// power cut caught unsynced (a torn tail, however ragged).
    pub(crate) fn queue_marks(&self, topics: Vec<Arc<Progress>>, force: bool) {
        let due = {
            let mut pending = self.marks_pending.lock();
            enqueue_marks(&mut pending.0, topics);
            if (!force && pending.1.elapsed() < self.options.mark_interval) || pending.0.is_empty()
            {
                return;
            }
            pending.1 = Instant::now();
            std::mem::take(&mut pending.0)
        };
        let mut failed = Vec::new();
        for t in due {
            // Off the queue before the watermark is read: a sync that moves it from here on
            // queues the topic again.
            t.unqueue_mark();
            let durable = t.claimable();
            let mut mark = t.mark_state();
            if durable <= mark.written {
                continue;
            }
            let pair = *mark
                .pair
                .get_or_insert_with(|| self.marks.pair_for(&RecordKey::consumer(&t.name, "")).0);
            let record = CursorRecord::new(&*t.name, mark.generation + 1, durable);
            match self.marks.write(&record, pair) {
                Ok(()) => {
                    mark.generation += 1;
                    mark.written = durable;
                }
                Err(e) => {
                    tracing::warn!(topic = %t.name, error = %e, "could not write durable watermark");
                    drop(mark);
                    failed.push(t);
                }
            }
        }
        // Tried again at the next flush: an idle topic is not queued again by a sync, and its
        // watermark on disk would stay behind.
        if !failed.is_empty() {
            enqueue_marks(&mut self.marks_pending.lock().0, failed);
        }
    }
}

/// Adds `topics` to the watermark queue `pending`, each at most once (a long mark interval
/// sees many syncs of the same topics).
fn enqueue_marks(pending: &mut Vec<Arc<Progress>>, topics: Vec<Arc<Progress>>) {
    pending.extend(topics.into_iter().filter(|t| t.queue_mark()));
}

/// Creates segment files for the allocator: create + preallocate, write the segment header,
/// make the new name durable.
pub(crate) fn segment_preparer(
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    files: Arc<Files>,
    block_len: u64,
    sync_header: bool,
) -> impl Fn(u64, u64) -> io::Result<()> + Send + Sync + 'static {
    move |segment, segment_len| {
        let _span = tracing::debug_span!("walrus.prepare_segment", segment, segment_len).entered();
        let path = segment_path(&dir, segment);
        // Drawn first: a failure leaves no file behind.
        // Never 0 (an unkeyed segment of format v2), whatever the backend answers.
        let key = storage.key()?.max(1);
        let file = match storage.create(&path, segment_len) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Left behind by a failed earlier preparation of this id: start over.
                storage.remove(&path)?;
                storage.create(&path, segment_len)?
            }
            other => other?,
        };
        let ready = (|| {
            file.allocate(0, SEGMENT_DATA_OFFSET)?;
            file.write_at(
                &SegmentHeader {
                    segment_id: segment,
                    block_len,
                    key,
                    synced: sync_header,
                    keyed_frames: true,
                }
                .encode_page(),
                0,
            )?;
            // With a journal, durable before any block in the file is handed out: recovery
            // deletes a segment without a header as one that held only unsynced data, and the
            // segment itself may not be synced before its entries are acknowledged (without a
            // journal, the sync that acknowledges them covers the header).
            if sync_header {
                file.sync_data()?;
            }
            storage.sync_dir(&dir)
        })();
        if let Err(e) = ready {
            // No block of it was handed out: the file goes (a crash before this leaves a file
            // recovery deletes, and the id is prepared again, over it, next time).
            if let Err(removal) = storage.remove(&path) {
                tracing::warn!(file = %path.display(), error = %removal,
                    "a segment whose preparation failed was not removed");
            }
            return Err(e);
        }
        let handle = Arc::new(SegmentHandle::new(
            segment,
            file,
            SEGMENT_DATA_OFFSET,
            segment_len,
            key,
            true,
        ));
        handle.mark_dirty();
        files.insert(handle);
        Ok(())
    }
}

/// Poisons the store with its cause if dropped while its thread panics (see
/// [`Shared::poison_on_panic`]), unless the thread already was when the guard was made (work
/// run by a `Drop` during unwinding, which succeeded or failed on its own).
pub(crate) struct PoisonOnPanic<'a> {
    shared: &'a Shared,
    cause: &'static str,
    unwinding: bool,
}

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.unwinding {
            self.shared.poison(&io::Error::other(self.cause));
        }
    }
}
