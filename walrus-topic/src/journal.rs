//! The group-commit journal (`journal.wjnl`, drawn in `docs/FORMAT.md`): with it, a store sync
//! writes the segment writes made since the last one as one contiguous record and syncs this
//! one small file, instead of syncing every page those writes touched in the segment files (one
//! page per topic, scattered: on the development machine a sync of 16 topics' appends took
//! 210–250 µs that way, against 140–160 µs for one record). The segment files are synced in
//! the background, and always before the records that hold their writes are retired.
//!
//! Invariants:
//! - A write is captured after it completed and was marked on its segment file, so a segment
//!   sync that starts after its capture covers it.
//! - A record is written and synced only while holding the journal's state lock, so a sync
//!   that finds nothing pending knows that every earlier capture is in a synced record.
//! - Records are retired (a new generation written and synced) only after a segment sync that
//!   started after every capture they hold: retired writes are durable in their segments.
//! - An open applies the live records to the segments and syncs them before recovery reads a
//!   segment, and starts a new generation before anything is appended; applying a record twice
//!   writes the same bytes again.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use walrus_block::{
    JOURNAL_DATA_OFFSET, JOURNAL_RECORD_ALIGN, JOURNAL_RECORD_HEADER_LEN, JOURNAL_SLOT_LEN,
    JournalHeader, JournalRecordHeader, SEGMENT_DATA_OFFSET, decode_journal_body,
    encode_journal_record_header, encode_journal_write,
};
use walrus_io::{SegmentFile, Storage};

use crate::error::data_error;
use crate::layout::{JOURNAL_FILE, segment_path};

/// Longest journal file this engine creates: a few MiB on disk, and at the synced rates of
/// the development machine (40–70 MiB/s) a new generation (one extra `fdatasync`) every tenth
/// of a second or so.
const MAX_JOURNAL_LEN: u64 = 4 << 20;

/// The journal length for segments of `segment_len`: [`MAX_JOURNAL_LEN`], or as long as one
/// segment (at least 64 KiB) where segments are shorter, so that small test geometries start
/// new generations and overflow records often.
pub(crate) fn journal_len(segment_len: u64) -> u64 {
    segment_len
        .next_multiple_of(4096)
        .clamp(64 << 10, MAX_JOURNAL_LEN)
}

/// A sync whose pending writes are longer than this (or than a quarter of a short journal)
/// syncs the segment files instead: the writes are large and contiguous there already, and
/// journaling them would write them twice.
const MAX_RECORD: usize = 256 << 10;

/// Path of the journal in `dir`.
pub(crate) fn journal_path(dir: &Path) -> PathBuf {
    dir.join(JOURNAL_FILE)
}

/// The journal of a running store.
#[derive(Debug)]
pub(crate) struct Journal {
    file: Arc<dyn SegmentFile>,
    len: u64,
    /// The file's key: every generation's header holds it, every record's CRC starts from it
    /// (`walrus_block::journal`). Drawn when the file is created, so that a damaged slot leaves
    /// it in the other one.
    key: u32,
    /// Pending writes longer than this overflow (see [`MAX_RECORD`]).
    max_record: usize,
    pending: Mutex<Pending>,
    /// Held across writing and syncing a record (see the module's invariants).
    state: Mutex<State>,
}

/// Writes captured since the last record.
#[derive(Debug, Default)]
struct Pending {
    body: Vec<u8>,
    /// The next sync syncs the segments instead of writing a record: a write too large for a
    /// record was captured, or a rewrite that no record may hold ([`Journal::rewrote`]).
    via_segments: bool,
    /// Segment and end of the writes captured so far while they form one contiguous run.
    run: Option<(u64, u64)>,
    /// The writes captured so far do not form one run: a record is worth writing.
    scattered: bool,
}

#[derive(Debug)]
struct State {
    generation: u64,
    seq: u64,
    /// Where the next record goes.
    pos: u64,
    /// An earlier record write or sync failed: its writes may be lost, so no later sync may
    /// succeed (the store is poisoned by then, but a sync that waited for this one's lock
    /// would otherwise find nothing pending and report success).
    failed: Option<(io::ErrorKind, String)>,
}

impl Journal {
    /// Opens the journal of `dir` for a store that just recovered, starting a new generation
    /// after the one [`replay`] `found`, or creates it (`len` bytes), zero-filled (a sync into
    /// written space is cheaper than into allocated but unwritten space).
    ///
    /// # Errors
    /// Any I/O error; `InvalidData` for a journal whose header is damaged.
    pub(crate) fn open(
        dir: &Path,
        storage: &dyn Storage,
        found: Option<Found>,
        len: u64,
    ) -> io::Result<Self> {
        let path = journal_path(dir);
        let create = || -> io::Result<Arc<dyn SegmentFile>> {
            let file = storage.create(&path, len)?;
            // Allocated first (unwritten extents, which read as zeros): zeros written into a
            // sparse file take their blocks at write-back, and a file system that does not
            // order data before metadata (ext4 `data=writeback`) could show a crash in between
            // the blocks' stale bytes, where the next open would find damage.
            file.allocate(0, len)?;
            let zeros = vec![0u8; 256 << 10];
            let mut at = 0;
            while at < len {
                let n = zeros
                    .len()
                    .min(usize::try_from(len - at).unwrap_or(usize::MAX));
                file.write_at(zeros.get(..n).unwrap_or(&[]), at)?;
                at += n as u64;
            }
            Ok(file)
        };
        // Drawn first: a failure leaves no file behind.
        let fresh = || -> io::Result<_> {
            // Never 0 (an unkeyed journal of version 1), whatever the backend answers.
            let key = storage.key()?.max(1);
            Ok((create()?, 0, len, key))
        };
        let (file, generation, len, key) = match (found, storage.open(&path)) {
            (Some(found), Ok(file)) if found.header.key != 0 => {
                (file, found.header.generation, found.len, found.header.key)
            }
            // Never initialised (a crash while it was created, before its first header): it
            // holds nothing, so it is made anew. So is one of version 1 (unkeyed), whose
            // records `replay` applied and synced: a crash before the new one has its header
            // leaves one never initialised.
            (_, Ok(file)) => {
                drop(file);
                storage.remove(&path)?;
                fresh()?
            }
            (_, Err(e)) if e.kind() == io::ErrorKind::NotFound => fresh()?,
            (_, Err(e)) => return Err(e),
        };
        if len < 2 * JOURNAL_DATA_OFFSET {
            return Err(data_error(
                &path,
                &format!("journal of {len} bytes is too short"),
            ));
        }
        let journal = Self {
            file,
            len,
            key,
            max_record: MAX_RECORD.min(usize::try_from(len / 4).unwrap_or(MAX_RECORD)),
            pending: Mutex::new(Pending::default()),
            state: Mutex::new(State {
                generation,
                seq: 0,
                pos: JOURNAL_DATA_OFFSET,
                failed: None,
            }),
        };
        journal.start_generation(&mut journal.state.lock())?;
        storage.sync_dir(dir)?;
        Ok(journal)
    }

    /// Records a completed segment write (`bufs` at `position` of `segment`), already marked on
    /// its file, for the next sync.
    pub(crate) fn capture(&self, segment: u64, position: u64, bufs: &[IoSlice<'_>]) {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        let mut p = self.pending.lock();
        if p.via_segments || p.body.len() + len > self.max_record {
            // The segment sync this forces covers the write: it was marked before.
            p.via_segments = true;
            return;
        }
        let end = position + len as u64;
        match p.run {
            None if p.body.is_empty() => p.run = Some((segment, end)),
            Some((s, e)) if s == segment && e == position => p.run = Some((segment, end)),
            _ => p.scattered = true,
        }
        let parts: Vec<&[u8]> = bufs.iter().map(|b| &**b).collect();
        if encode_journal_write(&mut p.body, segment, position, &parts).is_err() {
            p.via_segments = true;
        }
    }

    /// A write over bytes that a later write may replace within this generation (a failed
    /// append's roll-back: the topic's next append goes where its zeros went) was made and
    /// marked on its file: the next sync syncs the segments, and no record holds it. A record
    /// would be replayed after a power cut over whatever replaced the zeros if that was made
    /// durable in its segment (a group of one contiguous run writes no record).
    pub(crate) fn rewrote(&self) {
        self.pending.lock().via_segments = true;
    }

    /// Makes every captured write durable: as one record, or (after an overflow or a rewrite,
    /// or when the writes are one contiguous run) by `sync_segments`, which must sync every
    /// segment file with marked writes.
    ///
    /// # Errors
    /// The I/O error; the store must then be poisoned (the caller does).
    pub(crate) fn sync(&self, sync_segments: impl Fn() -> io::Result<()>) -> io::Result<()> {
        let mut st = self.state.lock();
        check_failed(&st)?;
        // A panic (a backend's) fails the journal as an error does: the writes it took are
        // gone with it, and a sync waiting behind must not find nothing pending and succeed.
        let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.sync_locked(&mut st, &sync_segments)
        })) {
            Ok(result) => result,
            Err(panic) => {
                st.failed = Some((io::ErrorKind::Other, "a journal sync panicked".into()));
                std::panic::resume_unwind(panic)
            }
        };
        if let Err(e) = &result {
            st.failed = Some((e.kind(), e.to_string()));
        }
        result
    }

    fn sync_locked(
        &self,
        st: &mut State,
        sync_segments: impl Fn() -> io::Result<()>,
    ) -> io::Result<()> {
        let Pending {
            body,
            via_segments,
            scattered,
            ..
        } = std::mem::take(&mut *self.pending.lock());
        if body.is_empty() && !via_segments {
            return Ok(());
        }
        if via_segments || !scattered {
            // Too large for a record, a rewrite, or one contiguous run (one topic, or one
            // appender): syncing the segments costs what the record would, and writes the
            // bytes once.
            return sync_segments();
        }
        let span = JournalRecordHeader {
            generation: st.generation,
            seq: st.seq,
            body_len: u32::try_from(body.len()).unwrap_or(u32::MAX),
            body_crc: 0,
        }
        .span();
        if st.pos + span > self.len {
            sync_segments()?;
            self.start_generation(st)?;
        }
        // After the generation it belongs to is settled.
        let header = encode_journal_record_header(st.generation, st.seq, self.key, &body)
            .map_err(io::Error::from)?;
        self.file
            .write_vectored_at(&[IoSlice::new(&header), IoSlice::new(&body)], st.pos)?;
        self.file.sync_data()?;
        st.pos += span;
        st.seq += 1;
        Ok(())
    }

    /// Retires every record once `sync_segments` made their writes durable in the segments
    /// (at a clean close: the next open has nothing to apply).
    ///
    /// # Errors
    /// The I/O error.
    pub(crate) fn retire(&self, sync_segments: impl Fn() -> io::Result<()>) -> io::Result<()> {
        let mut st = self.state.lock();
        check_failed(&st)?;
        // Covers every capture so far, pending ones too (they were marked first); pending ones
        // are journaled again by the next sync, which is harmless.
        sync_segments()?;
        if st.seq == 0 {
            return Ok(());
        }
        self.start_generation(&mut st)
    }

    /// Writes and syncs the header of the next generation: every record before it is retired.
    fn start_generation(&self, st: &mut State) -> io::Result<()> {
        let generation = st
            .generation
            .checked_add(1)
            .ok_or_else(|| data_error(self.file.path(), "journal generation at its limit"))?;
        let header = JournalHeader {
            generation,
            key: self.key,
        }
        .encode();
        self.file
            .write_at(&header, JournalHeader::slot_of(generation))?;
        self.file.sync_data()?;
        st.generation = generation;
        st.seq = 0;
        st.pos = JOURNAL_DATA_OFFSET;
        Ok(())
    }
}

/// The sticky failure of an earlier sync, as an error of the same kind.
fn check_failed(st: &State) -> io::Result<()> {
    match &st.failed {
        Some((kind, msg)) => Err(io::Error::new(
            *kind,
            format!("an earlier journal write failed ({msg}); nothing written since is durable"),
        )),
        None => Ok(()),
    }
}

/// Applies the live records of `dir`'s journal, if it has one, to the segment files and syncs
/// them, so that recovery finds every write a sync acknowledged through the journal. Writes to
/// segments that no longer exist (deleted once consumed) are skipped. Returns what it found,
/// for [`Journal::open`]; `None` without a journal or for one never initialised.
///
/// # Errors
/// `InvalidData` for a damaged journal header or a record that writes into a segment header;
/// any I/O error.
pub(crate) fn replay(dir: &Path, storage: &dyn Storage) -> io::Result<Option<Found>> {
    let path = journal_path(dir);
    let Some((bytes, header)) = load(&path, storage.open(&path))? else {
        return Ok(None);
    };
    let mut segments: HashMap<u64, Option<Arc<dyn SegmentFile>>> = HashMap::new();
    // Every write is checked before any is applied: a record the journal cannot apply fails
    // the open with nothing written.
    let mut writes = Vec::new();
    for_each_live_write(&path, &bytes, header, |w| {
        check_position(&path, &w)?;
        let file = match segments.get(&w.segment_id) {
            Some(f) => f.clone(),
            None => {
                let f = match storage.open(&segment_path(dir, w.segment_id)) {
                    Ok(f) => Some(f),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e),
                };
                segments.insert(w.segment_id, f.clone());
                f
            }
        };
        if let Some(f) = file {
            check_within(&path, &w, f.len()?)?;
            writes.push((f, w.position, w.bytes));
        }
        Ok(())
    })?;
    let applied = writes.len();
    for (f, position, bytes) in writes {
        f.write_at(bytes, position)?;
    }
    for f in segments.values().flatten() {
        f.sync_data()?;
    }
    if applied > 0 {
        tracing::debug!(file = %path.display(), writes = applied, "applied the journal's synced writes to their segments");
    }
    Ok(Some(Found {
        header,
        len: bytes.len() as u64,
    }))
}

/// A journal [`replay`] found initialised: its live header and its length, for
/// [`Journal::open`] (which then need not read it again).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Found {
    header: JournalHeader,
    len: u64,
}

/// `storage` as a read-only open of `dir` must see it: with the live records of the journal
/// applied in memory over the segment files they write, as a read-write open would apply them
/// on disk. Returns how many writes it applies (then the view, else `storage` itself).
///
/// # Errors
/// As [`replay`].
pub(crate) fn applied_view(
    dir: &Path,
    storage: Arc<dyn Storage>,
) -> io::Result<(Arc<dyn Storage>, usize)> {
    let path = journal_path(dir);
    // A read-only open reads the journal while a live writer may append to it: a record read
    // before the writer wrote it, and the next one read after, look like a damaged record with
    // live records behind it. The writer syncs a record before it writes the next, so a
    // second read finds the first whole; damage is there every time.
    let mut reads = 0;
    let (patches, applied) = loop {
        reads += 1;
        match patches(dir, &path, &*storage) {
            Err(e) if reads < 3 && e.kind() == io::ErrorKind::InvalidData => {}
            other => break other?,
        }
    };
    if applied == 0 {
        return Ok((storage, 0));
    }
    let patches = patches.into_iter().map(|(p, w)| (p, Arc::new(w))).collect();
    Ok((
        Arc::new(Applied {
            inner: storage,
            patches,
        }),
        applied,
    ))
}

/// The live writes of the journal at `path` by segment file, and how many.
fn patches(
    dir: &Path,
    path: &Path,
    storage: &dyn Storage,
) -> io::Result<(HashMap<PathBuf, Vec<Patch>>, usize)> {
    let mut patches: HashMap<PathBuf, Vec<Patch>> = HashMap::new();
    let mut applied = 0;
    let Some((bytes, header)) = load(path, storage.open_read(path))? else {
        return Ok((patches, 0));
    };
    for_each_live_write(path, &bytes, header, |w| {
        check_position(path, &w)?;
        patches
            .entry(segment_path(dir, w.segment_id))
            .or_default()
            .push((w.position, w.bytes.to_vec()));
        applied += 1;
        Ok(())
    })?;
    Ok((patches, applied))
}

/// A storage seen through the journal (see [`applied_view`]): reads of a segment return its
/// bytes with the journal's writes laid over them, in record order. Writes are refused.
#[derive(Debug)]
struct Applied {
    inner: Arc<dyn Storage>,
    patches: HashMap<PathBuf, Arc<Vec<Patch>>>,
}

/// A journal write held for a read-only view: the position, and the bytes written there.
type Patch = (u64, Vec<u8>);

fn read_only_view() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "a read-only view of the journal's writes: nothing is written",
    )
}

impl Storage for Applied {
    fn kind(&self) -> walrus_io::BackendKind {
        self.inner.kind()
    }

    fn create(&self, _: &Path, _: u64) -> io::Result<Arc<dyn SegmentFile>> {
        Err(read_only_view())
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        self.open_read(path)
    }

    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let file = self.inner.open_read(path)?;
        Ok(match self.patches.get(path) {
            Some(patches) => Arc::new(AppliedFile {
                inner: file,
                patches: Arc::clone(patches),
            }),
            None => file,
        })
    }

    fn remove(&self, _: &Path) -> io::Result<()> {
        Err(read_only_view())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.inner.list(dir)
    }

    fn create_dir_all(&self, _: &Path) -> io::Result<()> {
        Err(read_only_view())
    }

    fn sync_dir(&self, _: &Path) -> io::Result<()> {
        Err(read_only_view())
    }

    fn submit(&self, _: &[walrus_io::WriteOp<'_>], _: bool) -> io::Result<()> {
        Err(read_only_view())
    }
}

/// A segment file seen through the journal's writes to it.
#[derive(Debug)]
struct AppliedFile {
    inner: Arc<dyn SegmentFile>,
    patches: Arc<Vec<Patch>>,
}

impl SegmentFile for AppliedFile {
    fn path(&self) -> &Path {
        self.inner.path()
    }

    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(read_only_view())
    }

    fn write_vectored_at(&self, _: &[IoSlice<'_>], _: u64) -> io::Result<()> {
        Err(read_only_view())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut n = self.inner.read_at(buf, offset)?;
        let end = offset + buf.len() as u64;
        for (at, bytes) in self.patches.iter() {
            let (from, to) = ((*at).max(offset), (at + bytes.len() as u64).min(end));
            if from >= to {
                continue;
            }
            let (src, dst) = ((from - at) as usize, (from - offset) as usize);
            let len = (to - from) as usize;
            if let (Some(d), Some(s)) = (buf.get_mut(dst..dst + len), bytes.get(src..src + len)) {
                d.copy_from_slice(s);
                n = n.max(dst + len);
            }
        }
        Ok(n)
    }

    fn allocate(&self, _: u64, _: u64) -> io::Result<()> {
        Err(read_only_view())
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let patched = self
            .patches
            .iter()
            .map(|(at, b)| at + b.len() as u64)
            .max()
            .unwrap_or(0);
        Ok(self.inner.len()?.max(patched))
    }

    fn next_data(&self, offset: u64) -> io::Result<Option<std::ops::Range<u64>>> {
        let file = self.inner.next_data(offset)?;
        // The first patch that ends after `offset`, as a range that may hold data; merged
        // with the file's (a range that may hold data may be wider than the data).
        let patch = self
            .patches
            .iter()
            .map(|(at, b)| (*at).max(offset)..at + b.len() as u64)
            .filter(|r| r.start < r.end)
            .min_by_key(|r| r.start);
        Ok(match (file, patch) {
            (Some(f), Some(p)) => Some(f.start.min(p.start)..f.end.max(p.end)),
            (f, p) => f.or(p),
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Removes the journal of `dir`, if any, for a store that opened without one (after
/// [`replay`] and recovery made its writes durable in the segments).
///
/// # Errors
/// Any I/O error but `NotFound`.
pub(crate) fn remove(dir: &Path, storage: &dyn Storage) -> io::Result<()> {
    match storage.remove(&journal_path(dir)) {
        Ok(()) => storage.sync_dir(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The bytes and live header of the journal `opened` at `path`; `None` when there is no
/// journal or it was never initialised.
fn load(
    path: &Path,
    opened: io::Result<Arc<dyn SegmentFile>>,
) -> io::Result<Option<(Vec<u8>, JournalHeader)>> {
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // Read whole: bounded first (a damaged length must fail the open, not the process), and
    // judged before recovery writes anything (a journal this open will refuse must not let
    // it write first).
    let len = file.len()?;
    if len > MAX_JOURNAL_FILE_LEN {
        return Err(data_error(
            path,
            &format!("journal of {len} bytes, past the {MAX_JOURNAL_FILE_LEN} a journal reaches"),
        ));
    }
    let bytes = read_all(&*file)?;
    let Some(header) = live_header(path, &bytes)? else {
        return Ok(None);
    };
    if (bytes.len() as u64) < 2 * JOURNAL_DATA_OFFSET {
        return Err(data_error(
            path,
            &format!("journal of {} bytes is too short", bytes.len()),
        ));
    }
    Ok(Some((bytes, header)))
}

/// The longest journal file an open reads: far past what any build makes ([`MAX_JOURNAL_LEN`]).
const MAX_JOURNAL_FILE_LEN: u64 = 64 << 20;

/// A journal write never touches a segment's header, nor ends past the largest file offset.
fn check_position(path: &Path, w: &walrus_block::JournalWrite<'_>) -> io::Result<()> {
    if w.position < SEGMENT_DATA_OFFSET {
        return Err(data_error(
            path,
            &format!(
                "a journal record writes into the header of segment {}",
                w.segment_id
            ),
        ));
    }
    let end = u64::try_from(w.bytes.len())
        .ok()
        .and_then(|len| w.position.checked_add(len))
        .filter(|&end| i64::try_from(end).is_ok());
    if end.is_none() {
        return Err(data_error(
            path,
            &format!(
                "a journal record writes past the largest file offset (segment {} at {})",
                w.segment_id, w.position
            ),
        ));
    }
    Ok(())
}

/// A journal write ends within its segment file (`len` bytes): segments are created at their
/// full length, so a write past it is not one this engine made.
fn check_within(path: &Path, w: &walrus_block::JournalWrite<'_>, len: u64) -> io::Result<()> {
    if w.position + w.bytes.len() as u64 > len {
        return Err(data_error(
            path,
            &format!(
                "a journal record writes {} bytes at {} of segment {}, which is {len} bytes long",
                w.bytes.len(),
                w.position,
                w.segment_id
            ),
        ));
    }
    Ok(())
}

/// The live header from a journal's bytes; `None` for a journal never initialised.
///
/// A slot that is damaged leaves the other one, the generation before: right after a crash
/// that tore the newer slot while it was written, before any record of its generation. If a
/// record of a newer generation than the one left is there, that generation's header was
/// synced (records follow it), so its slot was damaged since: refused, since the records it
/// makes live may hold acknowledged writes. (Both slots hold the file's one key: the record is
/// checked with the key of the slot left.)
fn live_header(path: &Path, bytes: &[u8]) -> io::Result<Option<JournalHeader>> {
    let damaged = |what: String| {
        data_error(
            path,
            &format!(
                "journal header damaged ({what}); moving the file away opens the directory \
                 without the acknowledged writes it may hold"
            ),
        )
    };
    let slots = bytes.get(..2 * JOURNAL_SLOT_LEN as usize).unwrap_or(bytes);
    let Some(live) = JournalHeader::decode_slots(slots).map_err(|e| damaged(e.to_string()))? else {
        // Never initialised: a journal is created zeroed, and records follow a synced header.
        // Bytes where records go mean both slots were lost since.
        let records = usize::try_from(JOURNAL_DATA_OFFSET)
            .ok()
            .and_then(|at| bytes.get(at..))
            .unwrap_or(&[]);
        if let Some(at) = records.iter().position(|&b| b != 0) {
            return Err(damaged(format!(
                "both header slots are zero, and byte {} holds record data",
                JOURNAL_DATA_OFFSET + at as u64
            )));
        }
        return Ok(None);
    };
    let first = usize::try_from(JOURNAL_DATA_OFFSET)
        .ok()
        .and_then(|at| bytes.get(at..))
        .and_then(|rest| JournalRecordHeader::decode(rest, live.key).ok().flatten());
    if let Some(first) = first
        && first.generation > live.generation
    {
        return Err(damaged(format!(
            "the live header is of generation {}, a record of generation {} follows it",
            live.generation, first.generation
        )));
    }
    Ok(Some(live))
}

/// Calls `f` with the writes of each live record, in order. The first record that is not the
/// next of the live generation (zero, stale, torn or damaged: a sync that never completed; or
/// not of the file's key: entry data of an earlier record's body) ends them — unless a later
/// record of the live generation follows it (see [`check_nothing_follows`]).
fn for_each_live_write<'a>(
    path: &Path,
    bytes: &'a [u8],
    live: JournalHeader,
    mut f: impl FnMut(walrus_block::JournalWrite<'a>) -> io::Result<()>,
) -> io::Result<()> {
    let mut pos = usize::try_from(JOURNAL_DATA_OFFSET).unwrap_or(usize::MAX);
    let mut seq = 0;
    loop {
        let Some(rest) = bytes.get(pos..) else {
            return Ok(());
        };
        let Ok(Some(h)) = JournalRecordHeader::decode(rest, live.key) else {
            return check_nothing_follows(path, bytes, live, pos, seq);
        };
        if h.generation != live.generation || h.seq != seq {
            return check_nothing_follows(path, bytes, live, pos, seq);
        }
        let Ok(writes) =
            decode_journal_body(&h, rest.get(JOURNAL_RECORD_HEADER_LEN..).unwrap_or(&[]))
        else {
            return check_nothing_follows(path, bytes, live, pos, seq);
        };
        for w in writes {
            f(w)?;
        }
        seq += 1;
        pos = pos.saturating_add(usize::try_from(h.span()).unwrap_or(usize::MAX));
    }
}

/// Where the live records end (at byte `pos`, where record `seq` was looked for): a record of
/// the live generation numbered `seq` or later further on means they did not end there. The
/// records are written and synced one at a time, so that one was written after record `seq`'s
/// sync completed: record `seq` was damaged since, and the records hold acknowledged writes.
/// Refused in every mode (applying the records after it, or leaving them, would each lose
/// acknowledged writes a mode does not expect to lose).
fn check_nothing_follows(
    path: &Path,
    bytes: &[u8],
    live: JournalHeader,
    pos: usize,
    seq: u64,
) -> io::Result<()> {
    let align = usize::try_from(JOURNAL_RECORD_ALIGN).unwrap_or(usize::MAX);
    let mut at = pos.saturating_add(align);
    while let Some(rest) = bytes.get(at..).filter(|r| !r.is_empty()) {
        if let Ok(Some(h)) = JournalRecordHeader::decode(rest, live.key)
            && h.generation == live.generation
            && h.seq >= seq
        {
            return Err(data_error(
                path,
                &format!(
                    "journal record {seq} of generation {} at byte {pos} is damaged, and record \
                     {} follows it at byte {at}: records are synced one at a time, so it held \
                     acknowledged writes; moving the file away opens the directory without \
                     them",
                    live.generation, h.seq
                ),
            ));
        }
        at = at.saturating_add(align);
    }
    Ok(())
}

/// The whole journal file.
fn read_all(file: &dyn SegmentFile) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = file.read_at(&mut chunk, out.len() as u64)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
        if out.len() > (1 << 30) {
            return Err(data_error(file.path(), "journal longer than 1 GiB"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(position: u64, bytes: &[u8]) -> walrus_block::JournalWrite<'_> {
        walrus_block::JournalWrite {
            segment_id: 3,
            position,
            bytes,
        }
    }

    /// A record's write is checked before it is applied: never into a segment's header, never
    /// past the largest file offset (no overflow), never past its segment's end.
    #[test]
    fn a_record_write_out_of_place_is_invalid_data() {
        let path = Path::new("/wal/journal.wjnl");
        let bytes = [1u8; 100];
        check_position(path, &write(SEGMENT_DATA_OFFSET, &bytes)).unwrap();
        for w in [
            write(SEGMENT_DATA_OFFSET - 1, &bytes),
            write(u64::MAX - 10, &bytes),
            write(i64::MAX as u64 - 50, &bytes),
        ] {
            let e = check_position(path, &w).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            assert!(e.to_string().contains("segment 3"), "{e}");
        }
        check_within(path, &write(1000, &bytes), 1100).unwrap();
        let e = check_within(path, &write(1001, &bytes), 1100).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("1100 bytes long"), "{e}");
    }

    /// After a power cut the live records end where the next one would have started, and an
    /// earlier generation's longer record may lie there: its body is entry data, which can
    /// hold a record header naming the live generation and the next sequence number. Record
    /// CRCs start from the journal's key, so such a record, checksummed without it, is not
    /// live and its write is never applied.
    #[test]
    fn forged_records_in_entry_data_are_not_replayed() {
        use walrus_block::encode_journal_write;
        let (sim, dir, segment) = with_segment(9);
        let journal = Journal::open(dir, &sim, None, 64 << 10).unwrap();
        let generation = journal.state.lock().generation;
        // A record that writes "FORGED" where an acknowledged entry lies, of the generation the
        // next open starts and the sequence number after its first record's.
        let mut body = Vec::new();
        encode_journal_write(&mut body, 7, 20_000, &[b"FORGED"]).unwrap();
        let mut forged = encode_journal_record_header(generation + 1, 1, 0, &body)
            .unwrap()
            .to_vec();
        forged.extend_from_slice(&body);
        // Entry data holding it at every record boundary it covers: the first write's bytes
        // start after the record's header and the write's.
        let data_at = (JOURNAL_DATA_OFFSET as usize) + JOURNAL_RECORD_HEADER_LEN + 20;
        let mut data = vec![0x5a_u8; 8192];
        let mut boundary = data_at.next_multiple_of(512);
        while boundary + forged.len() <= data_at + data.len() {
            data[boundary - data_at..][..forged.len()].copy_from_slice(&forged);
            boundary += 512;
        }
        journal.capture(7, 4096, &[IoSlice::new(&data)]);
        journal.capture(7, 30_000, &[IoSlice::new(b"elsewhere")]);
        journal.sync(|| Ok(())).unwrap();
        drop(journal);

        // The next run: replay, a new generation, one short record at the start, a power cut.
        let found = replay(dir, &sim).unwrap();
        let journal = Journal::open(dir, &sim, found, 64 << 10).unwrap();
        assert_eq!(journal.state.lock().generation, generation + 1);
        journal.capture(7, 40_000, &[IoSlice::new(b"short")]);
        journal.capture(7, 50_000, &[IoSlice::new(b"record")]);
        journal.sync(|| Ok(())).unwrap();
        drop(journal);
        replay(dir, &sim).unwrap();

        let read = |at: u64, len: usize| {
            let mut b = vec![0u8; len];
            segment.read_exact_at(&mut b, at).unwrap();
            b
        };
        assert_eq!(read(40_000, 5), b"short", "the live record was applied");
        assert_eq!(read(4096, 8192), data, "so was the earlier one");
        assert_eq!(read(20_000, 6), [0; 6], "a forged record was applied");
    }

    /// A sync that panics (a backend's) fails the journal as an error does: the writes it took
    /// are gone with it, so every later sync fails (one waiting behind found nothing pending
    /// and reported them durable).
    #[test]
    fn a_sync_that_panics_fails_every_later_sync() {
        let (sim, dir, _segment) = with_segment(10);
        let journal = Journal::open(dir, &sim, None, 64 << 10).unwrap();
        journal.capture(7, 4096, &[IoSlice::new(b"one")]);
        journal.capture(7, 30_000, &[IoSlice::new(b"two")]);
        journal.rewrote();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            journal.sync(|| panic!("a backend's sync panicked"))
        }));
        assert!(panicked.is_err());
        let after = journal.sync(|| Ok(())).unwrap_err();
        assert!(after.to_string().contains("panicked"), "{after}");
    }

    /// A simulated disk of `seed` holding `/j/` and its segment 7 (64 KiB, zero, synced).
    fn with_segment(seed: u64) -> (walrus_io::SimStorage, &'static Path, Arc<dyn SegmentFile>) {
        let sim = walrus_io::SimStorage::new(seed);
        let dir = Path::new("/j");
        sim.create_dir_all(dir).unwrap();
        let segment = sim.create(&segment_path(dir, 7), 64 << 10).unwrap();
        segment.write_at(&vec![0u8; 64 << 10], 0).unwrap();
        segment.sync_data().unwrap();
        (sim, dir, segment)
    }

    /// A journal whose later write cannot be applied (it writes past its segment's end: the
    /// file was cut short since) fails the open with nothing written: the writes before it
    /// are not applied either ("a failed open changes nothing on disk").
    #[test]
    fn a_replay_that_fails_writes_nothing() {
        let (sim, dir, segment) = with_segment(11);
        let journal = Journal::open(dir, &sim, None, 64 << 10).unwrap();
        // Two writes apart: one record holds both (one contiguous run would hold none).
        journal.capture(7, 8192, &[IoSlice::new(b"first")]);
        journal.capture(7, (64 << 10) - 2, &[IoSlice::new(b"past the end")]);
        journal.sync(|| Ok(())).unwrap();
        drop(journal);
        let e = replay(dir, &sim).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        let mut b = [0u8; 5];
        segment.read_exact_at(&mut b, 8192).unwrap();
        assert_eq!(b, [0; 5], "a record was applied by a replay that failed");
        assert_eq!(segment.len().unwrap(), 64 << 10);
    }

    /// A journal without a key (version 1) is replayed as it is, then made anew with one.
    #[test]
    fn an_unkeyed_journal_is_replayed_then_made_anew() {
        use walrus_block::encode_journal_write;
        let (sim, dir, segment) = with_segment(10);
        let mut file = vec![0u8; 64 << 10];
        let mut header = JournalHeader {
            generation: 3,
            key: 0,
        }
        .encode();
        // As version 1 wrote it: version 1, the key's bytes reserved (zero).
        header[8] = 1;
        let crc = walrus_block::checksum::crc32c(&header[..24]).to_le_bytes();
        header[24..].copy_from_slice(&crc);
        let slot = JournalHeader::slot_of(3) as usize;
        file[slot..slot + header.len()].copy_from_slice(&header);
        let mut body = Vec::new();
        encode_journal_write(&mut body, 7, 8192, &[b"unkeyed"]).unwrap();
        let record = encode_journal_record_header(3, 0, 0, &body).unwrap();
        let at = JOURNAL_DATA_OFFSET as usize;
        file[at..at + record.len()].copy_from_slice(&record);
        file[at + record.len()..at + record.len() + body.len()].copy_from_slice(&body);
        let path = journal_path(dir);
        sim.create(&path, 64 << 10)
            .unwrap()
            .write_at(&file, 0)
            .unwrap();

        let found = replay(dir, &sim).unwrap();
        let mut b = [0u8; 7];
        segment.read_exact_at(&mut b, 8192).unwrap();
        assert_eq!(&b, b"unkeyed", "the unkeyed record was applied");
        let journal = Journal::open(dir, &sim, found, 64 << 10).unwrap();
        assert_ne!(journal.key, 0);
        drop(journal);
        let mut slots = vec![0u8; 1024];
        sim.open(&path)
            .unwrap()
            .read_exact_at(&mut slots, 0)
            .unwrap();
        let live = JournalHeader::decode_slots(&slots).unwrap().unwrap();
        assert_ne!(live.key, 0, "{live:?}");
        assert_eq!(live.generation, 1, "a new file: {live:?}");
    }
}
