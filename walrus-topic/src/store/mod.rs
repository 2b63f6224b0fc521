//! The store: one data directory, its topics, segment files, allocator and cursor file.
//! Opening, appending, syncing and maintenance are here; reading, consumers, waiting and
//! deletion in [`read`].

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use walrus_alloc::{AllocConfig, BlockAllocator, Deletion, FileTracker, Resume};
use walrus_block::{
    BLOCK_ALIGN, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, MAX_ENTRY_LEN, SEGMENT_DATA_OFFSET,
    validate_topic_name,
};
use walrus_io::{BackendKind, Storage};

use crate::error::{Poisoned, invalid_input};
use crate::journal::{Journal, journal_len};
use crate::layout::{DirLock, lane_base};
use crate::options::StoreOptions;
use crate::recovery::{self, Recovered, RecoveryReport};
use crate::shared::{Files, Shared, segment_preparer};
use crate::topic::{Topic, TopicState};
use topics::Topics;

mod read;
mod topics;

pub use read::{Arrival, Entries};

/// An open data directory: the topics, their segment files and cursors.
///
/// `Store` is the engine under the `walrus` facade. Appends are written (to the page cache, or
/// the device for direct backends) when they return; [`sync`](Self::sync) makes them durable.
/// Cursor persistence follows [`StoreOptions::with_persist_every`].
#[derive(Debug)]
pub struct Store {
    shared: Arc<Shared>,
    topics: Arc<Topics>,
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
        let real_fs = storage.kind() != BackendKind::Sim;
        // Absolute once, here: every file is named from it for the life of the instance, and a
        // relative one would follow the process's working directory when it changes.
        let dir = if real_fs {
            std::path::absolute(dir.as_ref())?
        } else {
            dir.as_ref().to_path_buf()
        };
        let _span = tracing::info_span!("walrus.open", dir = %dir.display()).entered();
        options.validate()?;
        let existed = if real_fs { check_dir(&dir)? } else { true };
        // The directories this open makes, outermost first (the simulator's are durable at
        // once).
        let made: Vec<PathBuf> = if existed {
            Vec::new()
        } else {
            let mut missing: Vec<PathBuf> = dir
                .ancestors()
                .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
                .map(Path::to_path_buf)
                .collect();
            missing.reverse();
            missing
        };
        let remove_made = || {
            for d in made.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
        };
        storage.create_dir_all(&dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create data directory {}: {e}", dir.display()),
            )
        })?;
        // A new directory's name is durable only once its parent is synced: a power cut could
        // otherwise take it, and every segment synced in it, away. Each one made, not only the
        // last: `a/b` survives only with `a`.
        for d in &made {
            if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty())
                && let Err(e) = storage.sync_dir(parent)
            {
                remove_made();
                return Err(e);
            }
        }
        let lock = if real_fs {
            DirLock::acquire(&dir).inspect_err(|_| remove_made())?
        } else {
            DirLock::none()
        };
        // The journal's synced writes go to their segments first: recovery must find every
        // acknowledged entry there. But a refused open writes nothing: where there are records
        // to apply, recovery first decides with them laid over the segments in memory, as a
        // read-only open does (so only an open after a crash decides twice).
        let recovered = Self::decide_over_journal(&dir, &storage, &options)
            .and_then(|()| crate::journal::replay(&dir, &*storage))
            .and_then(|found| Ok((recovery::recover(&dir, storage.clone(), &options)?, found)))
            .and_then(|(recovered, found)| {
                // A new generation before anything is appended: the records applied above
                // must never be applied over what this run writes.
                let journal = if options.journal {
                    Some(Journal::open(
                        &dir,
                        &*storage,
                        found,
                        journal_len(options.segment_len),
                    )?)
                } else {
                    crate::journal::remove(&dir, &*storage)?;
                    None
                };
                Ok((recovered, journal))
            });
        match recovered {
            Ok((recovered, journal)) => Self::wire(dir, storage, options, recovered, journal, lock),
            Err(e) => {
                // A refused open leaves the directories as it found them.
                lock.release_created();
                remove_made();
                Err(e)
            }
        }
    }

    /// Runs recovery's decisions, writing nothing, on the segments with the journal's live
    /// records laid over them, if it has any: the error an open would be refused with.
    fn decide_over_journal(
        dir: &Path,
        storage: &Arc<dyn Storage>,
        options: &StoreOptions,
    ) -> io::Result<()> {
        let (view, applied) = crate::journal::applied_view(dir, storage.clone())?;
        if applied > 0 {
            let options = StoreOptions {
                read_only: true,
                background_maintenance: false,
                prepare_ahead: false,
                ..options.clone()
            };
            recovery::recover(dir, view, &options)?;
        }
        Ok(())
    }

    /// Opens the data directory `dir` read-only: recovers every topic in memory, and never
    /// writes, repairs, deletes or creates anything, nor takes the directory's lock, so it can
    /// look at a directory a live writer holds (seeing it as of the open: what the writer had
    /// not synced may show as a torn tail). Appends, consuming reads, commits, consumer
    /// removal and deletion fail with `PermissionDenied`; peeks, reads at an offset, iterators
    /// and every query work. For inspection tools (`walrus inspect`, `verify`, `dump`).
    ///
    /// # Errors
    /// `NotFound` if `dir` does not exist; `InvalidInput` for bad options or a `dir` that is a
    /// file; `InvalidData` as [`open`](Self::open) for damage `options`' recovery mode does not
    /// tolerate; any I/O error.
    pub fn open_read_only(
        dir: impl AsRef<Path>,
        storage: Arc<dyn Storage>,
        options: StoreOptions,
    ) -> io::Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let options = StoreOptions {
            read_only: true,
            // Nothing runs in the background of a read-only store.
            background_maintenance: false,
            prepare_ahead: false,
            ..options
        };
        options.validate()?;
        if storage.kind() != BackendKind::Sim && !check_dir(&dir)? {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("data directory {} does not exist", dir.display()),
            ));
        }
        let _span = tracing::info_span!("walrus.open_read_only", dir = %dir.display()).entered();
        // What a read-write open would apply to the segments, laid over them in memory.
        let (storage, applied) = crate::journal::applied_view(&dir, storage)?;
        if applied > 0 {
            tracing::info!(dir = %dir.display(), writes = applied,
                "reading the segments with the journal's synced writes laid over them");
        }
        let recovered = recovery::recover(&dir, storage.clone(), &options)?;
        Self::wire(dir, storage, options, recovered, None, DirLock::none())
    }

    /// Builds the running store from what recovery found.
    fn wire(
        dir: PathBuf,
        storage: Arc<dyn Storage>,
        options: StoreOptions,
        recovered: Recovered,
        journal: Option<Journal>,
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
            .with_segment_len(options.segment_len)
            // The smallest block: each topic chooses its blocks' lengths (`grown_block_len`).
            .with_min_block_len(BLOCK_ALIGN)
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
                options.journal,
            );
            lanes.push(BlockAllocator::resume(
                config,
                preparer,
                tracker.clone(),
                resume,
            )?);
        }
        let shared = Arc::new(Shared::new(
            dir,
            storage,
            lanes,
            tracker,
            files,
            (recovered.cursors, recovered.marks, journal),
            options,
        ));
        if !shared.options.read_only {
            for segment in deletable {
                shared.delete_segment(segment);
            }
        }
        let topics: HashMap<Arc<str>, Arc<Topic>> = recovered
            .topics
            .into_iter()
            .map(|(name, state)| {
                let lane = shared.pick_lane();
                (name.clone(), Arc::new(Topic::new(name, state, lane)))
            })
            .collect();
        let mut modified: HashMap<u64, Option<u64>> = HashMap::new();
        for t in topics.values() {
            // A deleted topic appended to before the crash: its stale consumer records are
            // marked now, before it gets new consumers.
            if !t.is_hidden() && !shared.options.read_only {
                t.revive(&shared)
                    .map_err(|e| crate::error::on_topic(e, &t.name, None))?;
            }
            if real_fs(&*shared.storage) {
                t.date_blocks(&mut |b| {
                    *modified.entry(b.segment).or_insert_with(|| {
                        std::fs::metadata(b.handle.file.path())
                            .and_then(|m| m.modified())
                            .ok()
                            .map(crate::chain::unix_millis)
                    })
                });
            }
        }
        if !shared.options.read_only {
            // Recovery made every entry it kept durable: the watermarks on disk rise to them
            // now. Left behind (a power cut before the last mark was written, or an idle topic
            // since), damage to those entries later would pass for a torn tail, be cut, and
            // their offsets reused.
            let recovered = topics.values().map(|t| Arc::clone(&t.progress)).collect();
            shared.queue_marks(recovered, true);
            shared.marks.sync()?;
        }
        // An open never calls the remote. Until the first tier pass loads the catalogue, a
        // tiered topic whose blocks left the disk counts as retained from its floor: a consumer
        // created meanwhile starts there and steps over what the tier does not hold.
        for t in topics.values() {
            if shared.tiered(&t.name).is_some() && t.tier_mark() > 0 {
                t.set_tiered_from(Some(t.floor()));
            }
        }
        Ok(Self {
            shared,
            topics: Arc::new(Topics::new(topics)),
            report: recovered.report,
            _lock: lock,
        })
    }

    /// Lists a topic whose consuming reads were not all persisted (`AtLeastOnce`), for the
    /// background maintenance to persist.
    pub(crate) fn note_reads(&self, t: &Arc<Topic>, unpersisted: bool) {
        if unpersisted
            && !t.cursor_noted.load(Ordering::Relaxed)
            && !t.cursor_noted.swap(true, Ordering::AcqRel)
        {
            self.shared.note_cursor(&t.name);
        }
    }

    /// The listed topic `name` (not deleted, not only waited on).
    pub(crate) fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .get(name)
            .filter(|t| !t.is_hidden())
            .cloned()
    }

    /// The topic `name`, created unlisted if it is not known: its first append that writes
    /// lists it (a wait, or a failed append, leaves a placeholder that
    /// [`forget_unused`](Self::forget_unused) drops).
    fn topic_or_create(&self, name: &str) -> io::Result<Arc<Topic>> {
        if let Some(t) = self.topics.read().get(name) {
            return Ok(t.clone());
        }
        validate_topic_name(name).map_err(io::Error::from)?;
        let mut topics = self.topics.write();
        let t = topics.entry(Arc::from(name)).or_insert_with_key(|k| {
            Arc::new(Topic::new(
                k.clone(),
                TopicState {
                    hidden: true,
                    ..TopicState::empty()
                },
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
        self.append_tracked(topic, payload)
            .map(|(offset, _)| offset)
    }

    /// [`append`](Self::append), also returning the topic: whoever waits for the entry to be
    /// durable can tell from its progress whether a sync made it so.
    pub(crate) fn append_tracked(
        &self,
        topic: &str,
        payload: &[u8],
    ) -> io::Result<(u64, Arc<Topic>)> {
        self.shared.check_writable()?;
        check_entry(topic, payload)?;
        // Unlisted until its first entry is written: a failed first append lists nothing.
        let t = self.topic_or_create(topic)?;
        let offset = match t.append(&self.shared, &[payload], false) {
            Ok(range) => range.start,
            Err(e) => {
                self.forget_unused(t);
                return Err(e);
            }
        };
        self.shared.note_append(&t.progress);
        Ok((offset, t))
    }

    /// Appends `payloads` to `topic` as one atomic batch: after a crash all of them are there,
    /// or none. Their offsets are contiguous; the range is returned.
    ///
    /// # Errors
    /// `InvalidInput` for an empty batch, more than [`MAX_BATCH_ENTRIES`] entries, more than
    /// [`MAX_BATCH_BYTES`] bytes, or a bad entry or topic; an I/O error leaves the topic exactly
    /// as before.
    pub fn append_batch(&self, topic: &str, payloads: &[&[u8]]) -> io::Result<Range<u64>> {
        self.append_batch_tracked(topic, payloads)
            .map(|(range, _)| range)
    }

    /// [`append_batch`](Self::append_batch), also returning the topic (see
    /// [`append_tracked`](Self::append_tracked)).
    pub(crate) fn append_batch_tracked(
        &self,
        topic: &str,
        payloads: &[&[u8]],
    ) -> io::Result<(Range<u64>, Arc<Topic>)> {
        self.shared.check_writable()?;
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
        self.shared.check_writable()?;
        let t = self.topic_or_create(topic)?;
        let range = match t.append(&self.shared, payloads, true) {
            Ok(range) => range,
            Err(e) => {
                self.forget_unused(t);
                return Err(e);
            }
        };
        self.shared.note_append(&t.progress);
        Ok((range, t))
    }

    /// One past `topic`'s last entry: the offset its next append gets.
    pub fn end_offset(&self, topic: &str) -> Option<u64> {
        self.topic(topic).map(|t| t.written_end())
    }

    /// One past `topic`'s last durable entry: every entry below it was covered by a completed
    /// [`sync`](Self::sync) (or was recovered, and synced, at open). A read-only store syncs
    /// nothing: it says the watermark persisted on disk, what it knows to be durable.
    pub fn durable_offset(&self, topic: &str) -> Option<u64> {
        self.topic(topic).map(|t| self.known_durable(&t))
    }

    /// [`durable_offset`](Self::durable_offset) of a topic at hand.
    pub(crate) fn known_durable(&self, t: &Topic) -> u64 {
        if self.shared.options.read_only {
            t.durable().min(t.progress.mark_state().written)
        } else {
            t.durable()
        }
    }

    /// The first offset of `topic` still stored (lower ones were consumed and released).
    pub fn first_retained_offset(&self, topic: &str) -> Option<u64> {
        self.topic(topic).map(|t| t.first_retained())
    }

    /// Names of every topic, sorted (deleted topics are not listed).
    pub fn topics(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .topics
            .read()
            .iter()
            .filter(|(_, t)| !t.is_hidden())
            .map(|(k, _)| k.to_string())
            .collect();
        names.sort();
        names
    }

    /// Writes every cursor (of every consumer) that moved since it was last persisted.
    ///
    /// # Errors
    /// The first I/O error; the other topics are still attempted.
    pub fn persist_cursors(&self) -> io::Result<()> {
        if self.shared.options.read_only {
            return Err(crate::error::read_only_error());
        }
        let topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        self.persist_cursors_of(topics, true)
    }

    /// Persists the moved cursors of `topics`: all written, then (with durable cursors) one
    /// sync of the cursor file for all, then counted persisted. Without `wait` (the
    /// background), a consumer whose reader is busy is passed over and its topic listed
    /// again for the next pass.
    fn persist_cursors_of(&self, topics: Vec<Arc<Topic>>, wait: bool) -> io::Result<()> {
        let mut first_err = None;
        let mut to_count = Vec::new();
        for t in topics {
            let mut written = Vec::new();
            match t.write_cursors(&self.shared, wait, &mut written) {
                Ok(true) => {}
                Ok(false) => self.note_reads(&t, true),
                Err(e) => {
                    self.note_reads(&t, true);
                    first_err.get_or_insert(e);
                }
            }
            if !written.is_empty() {
                to_count.push((t, written));
            }
        }
        if !to_count.is_empty() {
            match self.shared.cursors.sync() {
                Ok(()) => {
                    for (t, written) in to_count {
                        if !t.count_synced(&self.shared, written, wait) {
                            self.note_reads(&t, true);
                        }
                    }
                }
                Err(e) => {
                    for (t, _) in &to_count {
                        self.note_reads(t, true);
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Makes every append that returned before this call, and every persisted cursor, durable.
    ///
    /// # Errors
    /// The sync error. A failed sync poisons the store: later writes fail until it is reopened.
    pub fn sync(&self) -> io::Result<()> {
        if self.shared.options.read_only {
            // Nothing was written.
            return Ok(());
        }
        self.shared.sync()
    }

    /// Whether a remote tier is set (and the store writes: a read-only store uploads nothing).
    pub fn has_tier(&self) -> bool {
        self.shared.tier.is_some() && !self.shared.options.read_only
    }

    /// One pass of the remote tier (see [`StoreOptions::with_tier`]): uploads every sealed,
    /// durable block of every tiered topic that is not uploaded yet, oldest first. A topic
    /// whose upload fails stops there for this pass (the next pass retries it); the others go
    /// on. An [`Engine`](crate::Engine) runs passes from a thread of its own; without one, call
    /// this periodically. Nothing to do without a tier, or in a read-only store.
    ///
    /// # Errors
    /// The first topic's failure (with the topic named; every failure is also logged).
    pub fn tier_pass(&self) -> io::Result<crate::TierPass> {
        self.tier_pass_until(&|| false)
    }

    /// [`tier_pass`](Self::tier_pass), giving up between two blocks once `stop` says so (the
    /// engine's close waits for one remote call at most, not for a whole backlog).
    pub(crate) fn tier_pass_until(
        &self,
        stop: &crate::tier::Stop<'_>,
    ) -> io::Result<crate::TierPass> {
        let mut pass = crate::TierPass::default();
        let Some(tier) = &self.shared.tier else {
            return Ok(pass);
        };
        if self.shared.options.read_only {
            return Ok(pass);
        }
        // Deleted (hidden) topics too: their objects expire.
        let topics: Vec<Arc<Topic>> = self
            .topics
            .read()
            .values()
            .filter(|t| self.shared.options.tiering_for(&t.name).is_some())
            .cloned()
            .collect();
        let mut first_err = None;
        for t in topics {
            if stop() {
                break;
            }
            let uploaded = if t.is_hidden() {
                Ok(())
            } else {
                let ends = (t.durable(), t.written_end());
                tier.upload(&t.name, &t.blocks(), ends, stop, &mut pass)
            };
            // Expiry whatever the upload did: a topic whose uploads fail still sheds what
            // retention released. The floor is durable first (retention writes it without a
            // sync): an index an interrupted expiry leaves without its data must lie below
            // the floor after any crash, where no read goes.
            // The floor as written before that sync: one raised meanwhile may not be durable.
            let floor = t.written_floor();
            let expired = self
                .shared
                .cursors
                .sync()
                .and_then(|()| tier.expire(&t.name, (floor, t.written_end()), stop, &mut pass));
            let uploaded = uploaded.and(expired);
            let state = tier.topic(&t.name);
            let local_first = t
                .blocks()
                .first()
                .map_or_else(|| t.written_end(), |b| b.first_offset);
            let (loaded, first, through) = {
                let catalog = state.catalog.lock();
                (
                    catalog.loaded,
                    catalog.first(),
                    catalog.covered_end_from(local_first),
                )
            };
            if loaded {
                t.set_tiered_from(first);
            }
            // What is uploaded now may leave the local disk (local retention, consumption),
            // once the tier mark says so durably; never past what this store made durable.
            let marked = t.write_tier_mark(&self.shared, through.min(t.durable()));
            t.release_consumed(&self.shared);
            let uploaded = uploaded.and(marked);
            if let Err(e) = uploaded {
                tracing::warn!(topic = %t.name, error = %e, "tier upload failed; retried next pass");
                first_err.get_or_insert(crate::error::on_topic(e, &t.name, None));
            }
        }
        first_err.map_or(Ok(pass), Err)
    }

    /// Does the slow file-system work left for the background under
    /// [`StoreOptions::with_background_maintenance`]: deletes consumed segments and prepares
    /// the next segment file before an append needs it. Cheap when there is nothing to do.
    ///
    /// # Errors
    /// The error of preparing the next segment (an append that needs it will retry). A
    /// panic in it (a backend's) poisons the store: it may have stopped between a file's
    /// writes and its sync.
    pub fn maintain(&self) -> io::Result<()> {
        self.maintain_pass(true)
    }

    /// [`maintain`](Self::maintain), walking every topic (retention by age, unused
    /// placeholders) only if `walk`: a walk costs about a microsecond per topic, too much for
    /// every pass of the background thread (each 5 ms) in a store of many topics. Retention
    /// by size is applied by the append that seals a block; a walk catches up with what that
    /// append could not apply.
    pub(crate) fn maintain_pass(&self, walk: bool) -> io::Result<()> {
        if self.shared.options.read_only {
            return Ok(());
        }
        let _poison_on_panic = self
            .shared
            .poison_on_panic("the background maintenance panicked: what it wrote is not known");
        let due = self.shared.take_deletions();
        for segment in due {
            self.shared.delete_segment_now(segment);
        }
        let pending = std::mem::take(&mut *self.shared.cursors_pending.lock());
        let mut noted = Vec::new();
        for name in pending {
            let Some(t) = self.topics.read().get(&name).cloned() else {
                continue;
            };
            // Before the persisting: a read after it lists the topic again.
            t.cursor_noted.store(false, Ordering::Release);
            if !t.is_hidden() {
                noted.push(t);
            }
        }
        // Never waiting for a reader: one waiting for the remote tier would hold up the
        // periodic syncs behind this pass.
        if let Err(e) = self.persist_cursors_of(noted, false) {
            tracing::warn!(error = %e, "could not persist a cursor");
        }
        if walk {
            self.apply_retention();
            self.topics.sweep_placeholders();
        }
        if let Err(e) = self.shared.sync_behind_journal() {
            tracing::error!(error = %e, "segment sync behind the journal failed; writes are refused until reopen");
        }
        // The persisted watermarks follow the syncs from here (see `Shared::sync`), also when
        // appends stop.
        if self.shared.options.marks_in_background()
            && let Err(e) = self.shared.flush_marks()
        {
            tracing::error!(error = %e, "could not sync the durable watermarks; writes are refused until reopen");
        }
        // Only once this store wrote in the lane (opening must not create segment files: a
        // reopened lane has a current segment, the recovered one, before it wrote anything),
        // and once the current segment is half full: a spare ahead of a roll-over that is far
        // off would only cost its space (a whole 2 MiB granule on the mmap backend).
        for (i, lane) in self.shared.lanes.iter().enumerate() {
            let half_full = lane
                .position()
                .current
                .is_some_and(|c| c.next_start >= c.segment_len / 2);
            if self.shared.lane_allocated(i) && half_full && self.shared.check_writable().is_ok() {
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
        // Futures waiting for entries end with an error instead of waiting forever.
        self.shared
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        for t in topics {
            t.progress.arrivals.notify();
        }
        if self.shared.options.read_only {
            return;
        }
        let sync = self.shared.options.sync_at_close;
        if let Err(e) = self.persist_cursors().and_then(|()| {
            if sync {
                self.shared.cursors.sync()
            } else {
                Ok(())
            }
        }) {
            tracing::warn!(dir = %self.shared.dir.display(), error = %e, "cursors not persisted at close");
        }
        for segment in self.shared.take_deletions() {
            self.shared.delete_segment_now(segment);
        }
        // Exact durable watermarks after a clean close: damage to anything synced is then
        // reported as corruption rather than cut as a tail. (A segment deleted above synced
        // the cursors first whatever the schedule: a file's deletion must not outlive them.)
        if self.shared.check_writable().is_ok() {
            self.shared.queue_marks(Vec::new(), true);
            if sync && let Err(e) = self.shared.marks.sync() {
                tracing::warn!(dir = %self.shared.dir.display(), error = %e, "durable watermarks not synced at close");
            }
        }
        if let Err(e) = self.shared.retire_journal() {
            tracing::warn!(dir = %self.shared.dir.display(), error = %e, "journal not retired at close; the next open applies it");
        }
    }
}

/// Checks a data directory before anything is created in it: it must be a directory (if it
/// exists) holding only regular files and directories (the namespaces of keyed instances
/// under a root that a key-less instance also uses). Returns whether it existed.
fn check_dir(dir: &Path) -> io::Result<bool> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        // A keyed instance under a root that is a file.
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            return Err(invalid_input(format!(
                "data directory {}: a parent is not a directory",
                dir.display()
            )));
        }
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
    let named = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("data directory {}: listing: {e}", dir.display()),
        )
    };
    for entry in std::fs::read_dir(dir).map_err(named)? {
        let entry = entry.map_err(named)?;
        let kind = entry.file_type().map_err(named)?;
        // A directory named like a file Walrus writes is not a namespace: something is wrong.
        let namespace = kind.is_dir() && crate::layout::classify(&entry.path()).is_err();
        if !kind.is_file() && !namespace {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: not a regular file (a symlink, device, socket, or a directory named \
                     like a Walrus file); a Walrus data directory holds only the files Walrus \
                     writes and the directories of keyed instances",
                    entry.path().display()
                ),
            ));
        }
    }
    Ok(true)
}

/// Whether `storage` is a real file system (the simulated one has no modification times).
fn real_fs(storage: &dyn Storage) -> bool {
    storage.kind() != BackendKind::Sim
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

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use walrus_io::{SimStorage, Storage};

    use crate::{Store, StoreOptions};

    /// Under a long mark interval every sync covers the same topics again: each waits in the
    /// watermark queue once (it grew by a topic per sync, without bound), and the watermarks
    /// are still written when the interval is up.
    #[test]
    fn a_long_mark_interval_queues_each_topic_once() {
        for background in [false, true] {
            let storage: Arc<dyn Storage> = Arc::new(SimStorage::new(3));
            let options = StoreOptions::new()
                .with_mark_interval(Duration::from_secs(3600))
                .with_sync_cursor_writes(background)
                .with_background_maintenance(background);
            let store = Store::open("/w", storage, options).unwrap();
            for i in 0..500u32 {
                store.append("t", &i.to_le_bytes()).unwrap();
                store.append("u", &i.to_le_bytes()).unwrap();
                store.sync().unwrap();
            }
            assert_eq!(store.shared.marks_queued(), 2, "background {background}");
            store.shared.queue_marks(Vec::new(), true);
            assert_eq!(store.shared.marks_queued(), 0);
            store.append("t", b"again").unwrap();
            store.sync().unwrap();
            assert_eq!(
                store.shared.marks_queued(),
                1,
                "queued again after its write"
            );
        }
    }
}
