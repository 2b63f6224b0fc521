//! Recovery: rebuild every topic of a data directory from its files.
//!
//! Recovery first *decides* everything, reading only, and then *applies* it. An open that fails
//! — a foreign file, damage the [`RecoveryMode`] does not accept, on any topic — has changed
//! nothing on disk.
//!
//! 1. List the directory; anything Walrus did not write is refused.
//! 2. Load the cursors and the durable watermarks.
//! 3. Walk each segment's blocks by their headers (never by a fixed stride), stepping over
//!    damaged or missing headers ([`walk`]).
//! 4. Per topic, order its blocks by chain position and decide every problem by where it lies
//!    against the topic's watermark and by the mode ([`rebuild`]). Blocks wholly below the
//!    cursor are released unread, so the cost grows with unconsumed data, not with history.
//! 5. Apply: erase torn tails (only ever above a watermark), repair damaged segment headers,
//!    make what was recovered durable, delete segments that hold nothing.
//!
//! The store wires the result (plain data) into its allocator and tracker.

mod rebuild;
mod walk;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use walrus_alloc::{RestoredBlock, SegmentCursor};
use walrus_block::{
    BLOCK_ALIGN, BlockHeader, CorruptReason, FormatError, SEGMENT_DATA_OFFSET, SegmentHeader,
    is_zeroed,
};
use walrus_io::Storage;

use self::rebuild::{TopicPlan, rebuild_topic};
use self::walk::{FoundBlock, has_data, read_zero_filled, walk_blocks};
use crate::chain::SegmentHandle;
use crate::cursors::{CURSOR_FILE, CursorFile, CursorStore, MARKS_FILE};
use crate::error::data_error;
use crate::layout::{FileKind, classify, lane_of};
use crate::options::{RecoveryMode, StoreOptions};
use crate::topic::TopicState;

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files found.
    pub segments: usize,
    /// Blocks found in them.
    pub blocks: usize,
    /// Blocks whose entries were read and validated (the rest were wholly consumed).
    pub blocks_scanned: usize,
    /// Entries validated.
    pub entries_scanned: u64,
    /// Segment files deleted because they held nothing (fully consumed, or never written).
    pub segments_deleted: Vec<u64>,
    /// Every problem found, and what was done about it.
    pub issues: Vec<RecoveryIssue>,
}

/// One problem found by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryIssue {
    /// The topic (empty when it could not be told, e.g. for a damaged block header).
    pub topic: String,
    /// The offset of the first entry affected.
    pub offset: u64,
    /// The file.
    pub file: PathBuf,
    /// Byte position in that file.
    pub position: u64,
    /// What was wrong.
    pub problem: Problem,
    /// What recovery did about it.
    pub action: Action,
}

impl RecoveryIssue {
    /// A segment file left untouched because nothing in it can be read.
    fn unreadable(file: PathBuf) -> Self {
        Self {
            topic: String::new(),
            offset: 0,
            file,
            position: 0,
            problem: Problem::UnreadableSegment,
            action: Action::Kept,
        }
    }
}

/// A kind of damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// Damage above the topic's durable watermark: the unsynced tail a crash left.
    TornTail,
    /// A batch was started and never finished (above the watermark).
    UnfinishedBatch,
    /// An entry failed validation.
    Corrupt(CorruptReason),
    /// Entries are missing (e.g. a lost block, or entries the watermark says were synced).
    Missing {
        /// How many offsets are missing.
        count: u64,
    },
    /// A block header failed validation; the blocks after it were found by scanning.
    CorruptBlockHeader,
    /// A segment header failed validation; its blocks were recovered using the file name.
    CorruptSegmentHeader,
    /// A segment file with no readable header and no readable block, but data: kept as is.
    UnreadableSegment,
    /// The stored cursor pointed past the recovered entries (they were lost unsynced).
    CursorBeyondEnd,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TornTail => f.write_str("torn tail"),
            Self::UnfinishedBatch => f.write_str("unfinished batch"),
            Self::Corrupt(reason) => write!(f, "corrupt entry ({reason})"),
            Self::Missing { count } => write!(f, "{count} missing entries"),
            Self::CorruptBlockHeader => f.write_str("corrupt block header"),
            Self::CorruptSegmentHeader => f.write_str("corrupt segment header"),
            Self::UnreadableSegment => f.write_str("unreadable segment"),
            Self::CursorBeyondEnd => f.write_str("cursor beyond the recovered end"),
        }
    }
}

/// What recovery did about a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// The topic ends before the problem. Above the watermark the bytes after the cut are
    /// erased; at or below it they are kept on disk and the cut is recorded.
    Cut,
    /// The damaged or missing entries are a gap that readers step over; everything valid
    /// after them is kept.
    Skipped,
    /// A redundant header was rewritten from what the file name and blocks say.
    Repaired,
    /// The file was left untouched and is not used.
    Kept,
}

/// Per-block outcome for the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// In a topic's chain; the writer resumes it when `live`.
    Retained { live: bool },
    /// Holds nothing anyone will read again.
    Released,
    /// Holds entries a cut hid (at or below a watermark): never released, so its bytes stay
    /// for a later open in another mode.
    Kept,
}

/// A write that makes a recovery decision durable.
pub(crate) enum Erase {
    /// Zero `[from, to)` of a file (only ever above a watermark).
    Zero {
        handle: Arc<SegmentHandle>,
        from: u64,
        to: u64,
    },
    /// Rewrite a block header with the abandoned flag.
    Abandon {
        handle: Arc<SegmentHandle>,
        header: BlockHeader,
        start: u64,
    },
    /// Rewrite a damaged segment header.
    Repair {
        handle: Arc<SegmentHandle>,
        header: SegmentHeader,
    },
}

/// A segment the store keeps, and how its blocks stand.
pub(crate) struct RecoveredSegment {
    pub(crate) handle: Arc<SegmentHandle>,
    pub(crate) blocks: Vec<RestoredBlock>,
    /// No block will ever be handed out in it again.
    pub(crate) fully_allocated: bool,
}

/// Where a lane's allocation resumes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LaneResume {
    pub(crate) next_segment: Option<u64>,
    pub(crate) tail: Option<SegmentCursor>,
}

/// The result of recovery, as plain data for the store to wire up.
pub(crate) struct Recovered {
    pub(crate) topics: Vec<(Arc<str>, TopicState)>,
    pub(crate) segments: Vec<RecoveredSegment>,
    /// Indexed by lane.
    pub(crate) lanes: HashMap<usize, LaneResume>,
    pub(crate) cursors: CursorStore,
    pub(crate) marks: CursorStore,
    pub(crate) report: RecoveryReport,
}

/// How a segment's header read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderState {
    Valid,
    /// Damaged (or never written) while blocks follow: repaired from the file name.
    Damaged,
}

/// A segment found on disk.
struct FoundSegment {
    id: u64,
    path: PathBuf,
    handle: Arc<SegmentHandle>,
    capacity: u64,
    blocks: Vec<FoundBlock>,
    next_start: u64,
    header: HeaderState,
}

pub(crate) fn recover(
    dir: &Path,
    storage: Arc<dyn Storage>,
    options: &StoreOptions,
) -> io::Result<Recovered> {
    let mode = options.recovery;
    let mut report = RecoveryReport::default();
    let mut segment_paths = Vec::new();
    for path in storage.list(dir)? {
        match classify(&path)? {
            FileKind::Segment(id) => segment_paths.push((id, path)),
            FileKind::Lock | FileKind::Cursors => {}
        }
    }
    segment_paths.sort();
    // Segment ids are never reused, even for files deleted below.
    let mut next_ids: HashMap<usize, u64> = HashMap::new();
    for (id, _) in &segment_paths {
        let next = next_ids.entry(lane_of(*id)).or_default();
        *next = (*next).max(id + 1);
    }
    let (cursor_file, loaded) = CursorFile::load(&*storage, dir, CURSOR_FILE)?;
    let (marks_file, loaded_marks) = CursorFile::load(&*storage, dir, MARKS_FILE)?;

    // --- Decide (read only) -------------------------------------------------------------
    let mut segments: Vec<FoundSegment> = Vec::new();
    let mut deletions: Vec<(u64, PathBuf)> = Vec::new();
    // Refusals about whole files wait until the topics were decided: a topic's refusal names
    // topic and offset, which says more.
    let mut refusal = None;
    let mut orphans = Vec::new();
    for (id, path) in segment_paths {
        match find_segment(&*storage, id, path, options, &mut report)? {
            Found::Segment(seg) => segments.push(seg),
            Found::Empty(path) => deletions.push((id, path)),
            Found::Orphan(path) => orphans.push((id, path)),
            Found::Unreadable => {}
            Found::Refused(e) => {
                refusal.get_or_insert(e);
            }
        }
    }

    // A spare segment prepared ahead of need and never used: delete it, so that allocation
    // resumes in the room left in the last segment of its lane that holds blocks.
    let mut by_lane: BTreeMap<usize, Vec<FoundSegment>> = BTreeMap::new();
    for seg in segments {
        by_lane.entry(lane_of(seg.id)).or_default().push(seg);
    }
    let mut segments = Vec::new();
    for (_, mut lane) in by_lane {
        while lane.len() > 1
            && lane
                .last()
                .is_some_and(|s| s.blocks.is_empty() && s.header == HeaderState::Valid)
        {
            if let Some(spare) = lane.pop() {
                deletions.push((spare.id, spare.path));
            }
        }
        segments.extend(lane);
    }
    let mut lane_tails: HashMap<usize, u64> = HashMap::new();
    for seg in &segments {
        lane_tails.insert(lane_of(seg.id), seg.id);
    }

    // Group blocks by topic, in chain order.
    let mut by_topic: HashMap<String, Vec<(FoundBlock, Arc<SegmentHandle>)>> = HashMap::new();
    let mut fates: HashMap<(u64, u64), Fate> = HashMap::new();
    for seg in &segments {
        for b in &seg.blocks {
            if b.header.abandoned {
                fates.insert((seg.id, b.start), Fate::Released);
            } else {
                by_topic
                    .entry(b.header.topic.clone())
                    .or_default()
                    .push((b.clone(), seg.handle.clone()));
            }
        }
    }
    let mut erases = Vec::new();
    let mut topics = Vec::new();
    let mut damaged_durable = false;
    let mut names: Vec<String> = by_topic.keys().cloned().collect();
    // A topic whose every block is gone still has its cursor or watermark: its offsets up to
    // them must never be handed out again (and below the watermark the loss is corruption).
    names.extend(
        loaded
            .keys()
            .chain(loaded_marks.keys())
            .filter(|k| !by_topic.contains_key(*k))
            .cloned(),
    );
    names.sort();
    names.dedup();
    for name in names {
        let mut blocks = by_topic.remove(&name).unwrap_or_default();
        blocks.sort_by_key(|(b, _)| b.header.chain_seq);
        let plan: TopicPlan = rebuild_topic(
            &name,
            blocks,
            loaded.get(&name).copied(),
            loaded_marks.get(&name).copied(),
            mode,
            &mut report,
        )?;
        report.blocks_scanned += plan.state.chain.len();
        report.entries_scanned += plan
            .state
            .chain
            .iter()
            .map(|b| b.end_offset() - b.first_offset)
            .sum::<u64>();
        fates.extend(plan.fates);
        erases.extend(plan.erases);
        damaged_durable |= plan.damaged_durable;
        topics.push((Arc::from(name.as_str()), plan.state));
    }

    // Damaged segment headers (after the topics, whose refusals name topic and offset): corruption if they hold entries some watermark covers.
    for seg in segments.iter().filter(|s| s.header == HeaderState::Damaged) {
        let durable = seg.blocks.iter().any(|b| {
            loaded_marks
                .get(&b.header.topic)
                .is_some_and(|m| b.header.first_offset < m.offset)
        });
        let issue = RecoveryIssue {
            topic: String::new(),
            offset: 0,
            file: seg.path.clone(),
            position: 0,
            problem: Problem::CorruptSegmentHeader,
            action: Action::Repaired,
        };
        let refused = match mode {
            RecoveryMode::AbsoluteConsistency => true,
            RecoveryMode::TolerateCorruptedTail => durable,
            _ => false,
        };
        if refused {
            refusal.get_or_insert(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: corrupt segment header in a segment holding synced entries; refused by \
                     {mode:?} (RecoveryMode::PointInTime or RecoveryMode::SkipCorrupted open it, \
                     rewriting the header from the file name); nothing was changed on disk",
                    seg.path.display()
                ),
            ));
        }
        report.issues.push(issue);
    }
    if let Some(e) = refusal {
        return Err(e);
    }

    // A synced segment always has its header (written first): an orphan held only unsynced
    // data, unless damage to synced data was found somewhere, when it is kept for inspection.
    for (id, path) in orphans {
        if damaged_durable {
            report.issues.push(RecoveryIssue::unreadable(path));
        } else {
            deletions.push((id, path));
        }
    }

    // Allocation resumes after the last block of each lane's last segment. A power cut can
    // have kept sectors of blocks whose headers it lost: stale bytes a new block must not
    // inherit. Zero them — unless some synced data was found damaged, when bytes recovery
    // cannot attribute may be the rest of it: then the segment is closed instead.
    let mut sealed_tails = Vec::new();
    for seg in segments
        .iter()
        .filter(|s| lane_tails.get(&lane_of(s.id)) == Some(&s.id))
    {
        if damaged_durable {
            sealed_tails.push(seg.id);
        } else {
            clear_stale_tail(seg, options.block_len, &mut erases)?;
        }
    }
    for seg in segments.iter().filter(|s| s.header == HeaderState::Damaged) {
        erases.push(Erase::Repair {
            handle: seg.handle.clone(),
            header: SegmentHeader {
                segment_id: seg.id,
                block_len: options.block_len,
            },
        });
    }

    // The tracker's view; segments holding nothing are deleted.
    let mut kept = Vec::new();
    let mut lanes: HashMap<usize, LaneResume> = HashMap::new();
    for seg in segments {
        let lane = lane_of(seg.id);
        let is_last = lane_tails.get(&lane) == Some(&seg.id) && lane < options.lanes;
        let resumable = is_last
            && !sealed_tails.contains(&seg.id)
            && seg.next_start + BLOCK_ALIGN <= seg.capacity;
        let restored: Vec<RestoredBlock> = seg
            .blocks
            .iter()
            .map(|b| {
                let fate = fates
                    .get(&(seg.id, b.start))
                    .copied()
                    .unwrap_or(Fate::Released);
                RestoredBlock {
                    start: b.start,
                    len: b.header.block_len,
                    sealed: !matches!(fate, Fate::Retained { live: true }),
                    checkpointed: fate == Fate::Released,
                }
            })
            .collect();
        let holds_nothing = restored.iter().all(|b| b.checkpointed && b.sealed);
        if holds_nothing && !resumable && seg.header == HeaderState::Valid {
            deletions.push((seg.id, seg.path));
            continue;
        }
        if resumable {
            seg.handle.resume_claim(seg.next_start);
            lanes.entry(lane).or_default().tail = Some(SegmentCursor {
                segment: seg.id,
                capacity: seg.capacity,
                next_start: seg.next_start,
            });
        }
        kept.push(RecoveredSegment {
            handle: seg.handle,
            blocks: restored,
            fully_allocated: !resumable,
        });
    }

    for (lane, next) in next_ids {
        lanes.entry(lane).or_default().next_segment = Some(next);
    }

    // --- Apply ---------------------------------------------------------------------------
    let cursors = cursor_file.create_if_missing(&*storage, dir, CURSOR_FILE)?;
    let marks = marks_file.create_if_missing(&*storage, dir, MARKS_FILE)?;
    apply_erases(&erases)?;
    // What was recovered may be only in the page cache (after a process crash): make it
    // durable, so every recovered entry counts as durable.
    for seg in &kept {
        seg.handle.mark_dirty();
        seg.handle.sync()?;
    }
    for (id, path) in &deletions {
        storage.remove(path)?;
        report.segments_deleted.push(*id);
    }
    if !deletions.is_empty() {
        storage.sync_dir(dir)?;
    }
    report.segments = kept.len() + report.segments_deleted.len();
    report.blocks = kept.iter().map(|s| s.blocks.len()).sum();
    for issue in &report.issues {
        tracing::warn!(topic = %issue.topic, offset = issue.offset, file = %issue.file.display(),
            position = issue.position, problem = %issue.problem, action = ?issue.action, "recovery");
    }
    Ok(Recovered {
        topics,
        segments: kept,
        lanes,
        cursors,
        marks,
        report,
    })
}

/// What a segment file turned out to be.
enum Found {
    Segment(FoundSegment),
    /// Never written beyond (at most) a lost header: holds nothing.
    Empty(PathBuf),
    /// No header and no block reached the disk, but some sectors of unsynced block data did
    /// (a power cut right after the segment was prepared): nothing in it was ever synced.
    Orphan(PathBuf),
    /// Unreadable but not empty: left untouched (and its id never reused).
    Unreadable,
    /// Not a segment the mode accepts.
    Refused(io::Error),
}

fn find_segment(
    storage: &dyn Storage,
    id: u64,
    path: PathBuf,
    options: &StoreOptions,
    report: &mut RecoveryReport,
) -> io::Result<Found> {
    let file = storage.open(&path)?;
    // A crash can lose a preallocation that was never synced: the file may be shorter than
    // the blocks in it. Never-written bytes read as zeros either way.
    let capacity = file.len()?.max(options.segment_len);
    let mut head = vec![0u8; SEGMENT_DATA_OFFSET as usize];
    read_zero_filled(&*file, &mut head, 0)?;
    let header = match SegmentHeader::decode(&head) {
        Ok(Some(h)) if h.segment_id == id => HeaderState::Valid,
        Ok(Some(h)) => {
            return Err(data_error(
                &path,
                &format!("header says segment {}, the name says {id}", h.segment_id),
            ));
        }
        Err(FormatError::Corrupt {
            reason: CorruptReason::UnsupportedVersion,
            ..
        }) => {
            return Err(data_error(
                &path,
                &format!(
                    "written by another on-disk format version; this build reads format v{} \
                     only (there is no migration from earlier versions)",
                    walrus_block::FORMAT_VERSION
                ),
            ));
        }
        Ok(None) | Err(_) => HeaderState::Damaged,
    };
    // Nothing more is claimed in a recovered segment unless it is a lane's tail (see `resume_claim`).
    let handle = Arc::new(SegmentHandle::new(id, file, capacity, capacity));
    let walked = walk_blocks(&*handle.file, id, &path, capacity, report)?;
    if header == HeaderState::Damaged && walked.blocks.is_empty() {
        let zero_header = is_zeroed(head.get(..walrus_block::SEGMENT_HEADER_LEN).unwrap_or(&[]));
        if !has_data(&*handle.file, SEGMENT_DATA_OFFSET)? {
            // Created (maybe its header damaged since), but no block ever reached the disk.
            return Ok(Found::Empty(path));
        }
        if zero_header {
            return Ok(Found::Orphan(path));
        }
        if matches!(
            options.recovery,
            RecoveryMode::TolerateCorruptedTail | RecoveryMode::AbsoluteConsistency
        ) {
            return Ok(Found::Refused(data_error(
                &path,
                "not a valid Walrus segment file (no readable header or block); \
                 RecoveryMode::PointInTime or RecoveryMode::SkipCorrupted open the directory \
                 leaving it untouched",
            )));
        }
        report.issues.push(RecoveryIssue::unreadable(path));
        return Ok(Found::Unreadable);
    }
    Ok(Found::Segment(FoundSegment {
        id,
        path,
        handle,
        capacity: walked.capacity,
        blocks: walked.blocks,
        next_start: walked.next_start,
        header,
    }))
}

/// Queues zeroing of every non-zero page in a window after the last block of `seg`.
///
/// The window is 16 default blocks (at least 16 MiB): stale blocks are the ones handed out
/// just before the crash whose headers never reached the disk, right after the last one found.
fn clear_stale_tail(seg: &FoundSegment, block_len: u64, erases: &mut Vec<Erase>) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let window_end = seg.capacity.min(
        seg.next_start
            .saturating_add((16 * block_len).max(16 << 20)),
    );
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = seg.next_start;
    // Holes (preallocated, never written) are skipped without reading them.
    while let Some(data) = seg.handle.file.next_data(pos)? {
        pos = pos.max(data.start - data.start % BLOCK_ALIGN);
        if pos >= window_end {
            break;
        }
        // Read only the data range: reading a hole would cache zero pages that the next
        // open's SEEK_DATA would report as data.
        let len = CHUNK
            .min(window_end - pos)
            .min(data.end.saturating_sub(pos).max(1)) as usize;
        let chunk = buf.get_mut(..len).unwrap_or_default();
        read_zero_filled(&*seg.handle.file, chunk, pos)?;
        for (i, page) in chunk.chunks(BLOCK_ALIGN as usize).enumerate() {
            if !is_zeroed(page) {
                let from = pos + i as u64 * BLOCK_ALIGN;
                erases.push(Erase::Zero {
                    handle: seg.handle.clone(),
                    from,
                    to: from + page.len() as u64,
                });
            }
        }
        pos += len as u64;
    }
    Ok(())
}

fn apply_erases(erases: &[Erase]) -> io::Result<()> {
    for e in erases {
        match e {
            Erase::Zero { handle, from, to } => {
                let zeros = vec![0u8; usize::try_from(to - from).unwrap_or(0)];
                handle.file.write_at(&zeros, *from)?;
                handle.mark_dirty();
            }
            Erase::Abandon {
                handle,
                header,
                start,
            } => {
                handle.file.write_at(&header.encode()?, *start)?;
                handle.mark_dirty();
            }
            Erase::Repair { handle, header } => {
                handle.file.write_at(&header.encode(), 0)?;
                handle.mark_dirty();
            }
        }
    }
    Ok(())
}
