//! Recovery: rebuild every topic of a data directory from its files.
//!
//! 1. List the directory; anything Walrus did not write is refused.
//! 2. Load the cursors.
//! 3. Walk each segment's blocks by their headers (never by a fixed stride).
//! 4. Per topic, order its blocks by chain position and validate them entry by entry with the
//!    format's sequence rules — except blocks wholly below the cursor, which are released
//!    unread, so the cost grows with unconsumed data rather than with history.
//! 5. Decide every problem by the [`RecoveryMode`], and make each cut durable: bytes after a cut
//!    are zeroed and blocks after it are marked abandoned, so the next open sees a clean log.
//! 6. Rebuild the allocator's file tracker, delete segments that are fully consumed or empty,
//!    and resume allocation in the last segment.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use walrus_alloc::{
    AllocConfig, BlockAllocator, Deletion, FileTracker, RestoredBlock, Resume, SegmentCursor,
};
use walrus_block::{
    BLOCK_ALIGN, BLOCK_HEADER_LEN, BlockHeader, CorruptReason, Frame, FrameDecoder,
    SEGMENT_DATA_OFFSET, SegmentHeader, SequenceCheck, is_zeroed,
};
use walrus_io::Storage;

use crate::chain::{Block, SegmentHandle};
use crate::cursors::{CURSOR_FILE, CursorStore, LoadedCursor, MARKS_FILE};
use crate::error::data_error;
use crate::layout::{FileKind, classify};
use crate::options::{RecoveryMode, StoreOptions};
use crate::store::{Files, Shared, lane_base, lane_of, segment_preparer};
use crate::topic::{MarkState, TopicState};

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
    /// Segment files deleted because they were fully consumed or empty.
    pub segments_deleted: Vec<u64>,
    /// Every problem found, and what was done about it.
    pub issues: Vec<RecoveryIssue>,
}

/// One problem found by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryIssue {
    /// The topic (empty when a block header itself was unreadable).
    pub topic: String,
    /// The offset of the first entry affected.
    pub offset: u64,
    /// The segment file.
    pub file: PathBuf,
    /// Byte position in that file.
    pub position: u64,
    /// What was wrong.
    pub problem: Problem,
    /// What recovery did about it.
    pub action: Action,
}

/// A kind of damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The last entry or batch of the topic was only partly written.
    TornTail,
    /// A batch was started and never finished.
    UnfinishedBatch,
    /// An entry failed validation.
    Corrupt(CorruptReason),
    /// Entries are missing between two blocks.
    Gap {
        /// How many offsets are missing.
        missing: u64,
    },
    /// A block header failed validation; the blocks after it were found by scanning.
    CorruptBlockHeader,
    /// The stored cursor pointed past the end of the recovered topic.
    CursorBeyondEnd,
}

/// What recovery did about a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Everything from the problem on was dropped (the tail of the topic).
    Cut,
    /// The damaged entries were skipped; later entries were kept.
    Skipped,
    /// The stored value was corrected.
    Corrected,
}

/// The result of recovery: the shared store state and each topic's state.
pub(crate) struct Recovered {
    pub(crate) shared: Shared,
    pub(crate) topics: HashMap<Arc<str>, TopicState>,
    pub(crate) report: RecoveryReport,
}

/// A block found on disk.
#[derive(Debug, Clone)]
struct FoundBlock {
    header: BlockHeader,
    start: u64,
}

/// A segment found on disk.
struct FoundSegment {
    id: u64,
    path: PathBuf,
    handle: Arc<SegmentHandle>,
    capacity: u64,
    blocks: Vec<FoundBlock>,
    /// Where the next block would start.
    next_start: u64,
}

/// Per-block outcome for the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// In a topic's chain; the writer resumes it when `live`.
    Retained { live: bool },
    /// Holds nothing anyone will read again.
    Released,
}

/// A block of the chain being rebuilt, with what scanning found in it.
struct Scanned {
    found: FoundBlock,
    handle: Arc<SegmentHandle>,
    /// File position after the last valid frame.
    data_end: u64,
    /// Offset after the last valid frame.
    end_offset: u64,
    /// File position after the last non-zero byte of the block (for erasing).
    dirty_end: u64,
    /// Emptied by a cut and marked abandoned on disk.
    abandoned: bool,
}

/// A pending write that makes a recovery decision durable.
enum Erase {
    /// Zero `[from, to)` of a file.
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
}

pub(crate) fn recover(
    dir: &Path,
    storage: Arc<dyn Storage>,
    options: &StoreOptions,
) -> io::Result<Recovered> {
    let mut report = RecoveryReport::default();
    let mut segment_paths = Vec::new();
    for path in storage.list(dir)? {
        match classify(&path)? {
            FileKind::Segment(id) => segment_paths.push((id, path)),
            FileKind::Lock | FileKind::Cursors => {}
        }
    }
    segment_paths.sort();
    let (cursors, loaded) = CursorStore::open(&*storage, dir, CURSOR_FILE)?;
    let (marks, loaded_marks) = CursorStore::open(&*storage, dir, MARKS_FILE)?;
    let files = Arc::new(Files::default());

    // Walk every segment's blocks.
    let mut segments: Vec<FoundSegment> = Vec::new();
    for (id, path) in segment_paths {
        let file = storage.open(&path)?;
        // A crash can lose a preallocation that was never synced: the file may be shorter than
        // the blocks in it. Never-written bytes read as zeros either way.
        let capacity = file.len()?.max(options.segment_len);
        let mut head = vec![0u8; SEGMENT_DATA_OFFSET as usize];
        read_zero_filled(&*file, &mut head, 0)?;
        let header = SegmentHeader::decode(&head)
            .map_err(|e| data_error(&path, &format!("not a valid Walrus segment file: {e}")))?;
        let Some(header) = header else {
            // Created, but its header never reached the disk: it holds nothing.
            storage.remove(&path)?;
            report.segments_deleted.push(id);
            continue;
        };
        if header.segment_id != id {
            return Err(data_error(
                &path,
                &format!(
                    "header says segment {}, the name says {id}",
                    header.segment_id
                ),
            ));
        }
        let handle = Arc::new(SegmentHandle::new(id, file));
        let (blocks, next_start, capacity) = walk_blocks(&handle, &path, capacity, &mut report)?;
        report.segments += 1;
        report.blocks += blocks.len();
        files.insert(handle.clone());
        segments.push(FoundSegment {
            id,
            path,
            handle,
            capacity,
            blocks,
            next_start,
        });
    }

    // A spare segment prepared ahead of need and never used: delete it, so that allocation
    // resumes in the room left in the last segment of its lane that holds blocks.
    let mut by_lane: std::collections::BTreeMap<usize, Vec<FoundSegment>> = Default::default();
    for seg in segments {
        by_lane.entry(lane_of(seg.id)).or_default().push(seg);
    }
    let mut segments = Vec::new();
    for (_, mut lane) in by_lane {
        while lane.len() > 1 && lane.last().is_some_and(|s| s.blocks.is_empty()) {
            if let Some(spare) = lane.pop() {
                delete(&*storage, &spare, &files, &mut report)?;
            }
        }
        segments.extend(lane);
    }
    // The last segment of each lane: allocation resumes in it.
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
    let mut topics: HashMap<Arc<str>, TopicState> = HashMap::new();
    let mut names: Vec<String> = by_topic.keys().cloned().collect();
    names.extend(
        loaded
            .keys()
            .filter(|k| !by_topic.contains_key(*k))
            .cloned(),
    );
    names.sort();
    for name in names {
        let mut blocks = by_topic.remove(&name).unwrap_or_default();
        blocks.sort_by_key(|(b, _)| b.header.chain_seq);
        let cursor = loaded.get(&name).copied();
        let mark = loaded_marks.get(&name).copied();
        let mut state = rebuild_topic(
            &name,
            blocks,
            cursor,
            mark,
            options.recovery,
            &mut fates,
            &mut erases,
            &mut report,
        )?;
        if let Some(c) = cursor
            && state.cursor != c.offset
        {
            // Corrected (clamped to what exists): persist the correction.
            state.generation = c.generation + 1;
            cursors.write(&name, c.pair, state.generation, state.cursor, false)?;
        }
        topics.insert(Arc::from(name.as_str()), state);
    }

    // Make the cuts durable before anything new is written after them, and make what was
    // recovered durable (after a process crash it may still be only in the page cache), so
    // that every recovered entry counts as durable.
    // Allocation resumes after the last block found in the last segment. A power cut can have
    // kept sectors of blocks whose headers it lost: stale bytes that a new block must not
    // inherit. Zero them now (reading preallocated space is cheap; writing happens only when
    // something is there).
    for seg in segments
        .iter()
        .filter(|s| lane_tails.get(&lane_of(s.id)) == Some(&s.id))
    {
        clear_stale_tail(seg, options.block_len, &mut erases)?;
    }
    apply_erases(&erases)?;
    for seg in &segments {
        seg.handle.mark_dirty();
        seg.handle.sync()?;
    }
    cursors.sync()?;

    // Rebuild the tracker; delete what is fully consumed or empty.
    let tracker = Arc::new(FileTracker::new());
    let mut tails: HashMap<usize, SegmentCursor> = HashMap::new();
    for seg in &segments {
        // Segments of lanes beyond the configured count are only read, never extended.
        let is_last =
            lane_tails.get(&lane_of(seg.id)) == Some(&seg.id) && lane_of(seg.id) < options.lanes;
        if seg.blocks.is_empty() && !is_last {
            delete(&*storage, seg, &files, &mut report)?;
            continue;
        }
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
        let resumable = is_last && seg.next_start + BLOCK_ALIGN <= seg.capacity;
        match tracker.restore_file(seg.id, &restored, !resumable)? {
            Deletion::Now { .. } => delete(&*storage, seg, &files, &mut report)?,
            Deletion::NotYet => {}
        }
        if resumable {
            let cursor = SegmentCursor {
                segment: seg.id,
                capacity: seg.capacity,
                next_start: seg.next_start,
            };
            tails.insert(lane_of(seg.id), cursor);
        }
    }
    if !report.segments_deleted.is_empty() {
        storage.sync_dir(dir)?;
    }

    let config = AllocConfig::new()
        .with_segment_capacity(options.segment_len)
        .with_block_size(options.block_len)
        .with_data_offset(SEGMENT_DATA_OFFSET)
        .with_alignment(BLOCK_ALIGN)
        .with_prepare_ahead(options.prepare_ahead && !options.background_maintenance);
    let mut lanes = Vec::with_capacity(options.lanes);
    for lane in 0..options.lanes {
        let next_segment = lane_tails.get(&lane).map_or(lane_base(lane), |id| id + 1);
        let mut resume = Resume::new(next_segment);
        if let Some(t) = tails.get(&lane) {
            resume = resume.with_tail(*t);
        }
        let preparer = segment_preparer(
            storage.clone(),
            dir.to_path_buf(),
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

    for issue in &report.issues {
        tracing::warn!(topic = %issue.topic, offset = issue.offset, file = %issue.file.display(),
            position = issue.position, problem = ?issue.problem, action = ?issue.action, "recovery");
    }
    let shared = Shared::new(
        dir.to_path_buf(),
        storage,
        lanes,
        tracker,
        files,
        cursors,
        marks,
        options.clone(),
    );
    Ok(Recovered {
        shared,
        topics,
        report,
    })
}

fn delete(
    storage: &dyn Storage,
    seg: &FoundSegment,
    files: &Files,
    report: &mut RecoveryReport,
) -> io::Result<()> {
    files.remove(seg.id);
    storage.remove(&seg.path)?;
    report.segments_deleted.push(seg.id);
    Ok(())
}

/// Walks the blocks of one segment by their headers. A damaged header is skipped by scanning
/// for the next valid header at block alignment.
fn walk_blocks(
    handle: &SegmentHandle,
    path: &Path,
    capacity: u64,
    report: &mut RecoveryReport,
) -> io::Result<(Vec<FoundBlock>, u64, u64)> {
    let file = &*handle.file;
    let mut blocks = Vec::new();
    let mut pos = SEGMENT_DATA_OFFSET;
    let mut raw = [0u8; BLOCK_HEADER_LEN];
    let mut capacity = capacity;
    while pos + BLOCK_HEADER_LEN as u64 <= capacity {
        read_zero_filled(file, &mut raw, pos)?;
        let decoded = BlockHeader::decode(&raw)
            .ok()
            .flatten()
            .filter(|h| h.segment_id == handle.id);
        match decoded {
            Some(header) => {
                let len = header.block_len;
                blocks.push(FoundBlock { header, start: pos });
                pos += len;
                // A block longer than a normal segment has a segment of its own.
                capacity = capacity.max(pos);
            }
            None if is_zeroed(&raw) => break,
            None => {
                report.issues.push(RecoveryIssue {
                    topic: String::new(),
                    offset: 0,
                    file: path.to_path_buf(),
                    position: pos,
                    problem: Problem::CorruptBlockHeader,
                    action: Action::Skipped,
                });
                // Resynchronise on the next valid header; blocks are BLOCK_ALIGN-aligned.
                let mut next = pos + BLOCK_ALIGN;
                let mut found = false;
                while next + BLOCK_HEADER_LEN as u64 <= capacity {
                    read_zero_filled(file, &mut raw, next)?;
                    if let Ok(Some(h)) = BlockHeader::decode(&raw)
                        && h.segment_id == handle.id
                    {
                        found = true;
                        break;
                    }
                    next += BLOCK_ALIGN;
                }
                if !found {
                    // Nothing valid after it: treat the damaged header as the end of the
                    // segment's blocks, and never allocate over it.
                    return Ok((blocks, capacity, capacity));
                }
                pos = next;
            }
        }
    }
    Ok((blocks, pos.min(capacity), capacity))
}

/// A problem at the end of what was decoded of a block.
#[derive(Debug, Clone, Copy)]
struct Pending {
    problem: Problem,
    /// File position of the problem.
    position: u64,
    /// Index (in `scanned`) of the block it is in.
    block: usize,
}

/// Rebuilds one topic's chain, applying the recovery mode.
#[allow(clippy::too_many_lines, clippy::too_many_arguments)]
fn rebuild_topic(
    topic: &str,
    blocks: Vec<(FoundBlock, Arc<SegmentHandle>)>,
    cursor: Option<LoadedCursor>,
    mark: Option<LoadedCursor>,
    mode: RecoveryMode,
    fates: &mut HashMap<(u64, u64), Fate>,
    erases: &mut Vec<Erase>,
    report: &mut RecoveryReport,
) -> io::Result<TopicState> {
    let stored_cursor = cursor.map_or(0, |c| c.offset);
    // Everything below this offset was synced before the mark was written.
    let durable_mark = mark.map_or(0, |m| m.offset);
    let cursor_generation = |c: Option<LoadedCursor>| c.map_or(0, |c| c.generation);
    let cursor_pair = |c: Option<LoadedCursor>| c.map(|c| c.pair);
    let loaded_cursor = cursor;
    let next_chain_seq = blocks.last().map_or(0, |(b, _)| b.header.chain_seq + 1);
    let mut scanned: Vec<Scanned> = Vec::new();
    let mut check: Option<SequenceCheck> = None;
    // Where the currently open unit started: (index in `scanned`, file position).
    let mut unit_start: Option<(usize, u64)> = None;
    let mut pending: Option<Pending> = None;
    let mut released: Vec<FoundBlock> = Vec::new();
    // Blocks dropped by the recovery mode or left by failed writes: marked abandoned on disk.
    let mut dropped: Vec<(FoundBlock, Arc<SegmentHandle>)> = Vec::new();
    // Offset the cursor jumps to when everything before the first retained block was consumed.
    let mut floor = 0u64;

    let mut iter = blocks.into_iter().peekable();
    while let Some((found, handle)) = iter.next() {
        let first = found.header.first_offset;
        // Wholly consumed: the next block starts at or below the cursor. Release it unread.
        if scanned.is_empty()
            && pending.is_none()
            && let Some((next, _)) = iter.peek()
            && next.header.first_offset <= stored_cursor
            && next.header.first_offset > first
        {
            floor = next.header.first_offset;
            released.push(found);
            continue;
        }
        // The first retained block must hold the cursor's entry: consumed blocks are only ever
        // deleted after the cursor past them is durable. A chain starting beyond the cursor
        // lost the entries in between.
        if check.is_none() && first > stored_cursor {
            let missing = first - stored_cursor;
            let gap = Scanned {
                found: found.clone(),
                handle: handle.clone(),
                data_end: found.start + BLOCK_HEADER_LEN as u64,
                end_offset: first,
                dirty_end: found.start + BLOCK_HEADER_LEN as u64,
                abandoned: false,
            };
            let p = Pending {
                problem: Problem::Gap { missing },
                position: found.start,
                block: 0,
            };
            let action = mid_chain(
                topic,
                mode,
                durable_mark,
                &[gap],
                p,
                stored_cursor,
                missing,
                report,
            )?;
            if action == Action::Cut {
                dropped.push((found, handle));
                dropped.extend(iter.by_ref());
                break;
            }
        }
        if let Some(c) = check {
            let (expected, committed) = (c.next_offset(), c.committed_offset());
            // How this block joins the chain: continues it, restarts at the last complete
            // unit (what lay after was never acknowledged), leaves a gap, or is stale.
            let (problem, restart) = match pending {
                Some(p) if first == committed => (Some(p), true),
                Some(p) if first > expected => (Some(p), false),
                None if first == expected => (None, false),
                None if first == committed && c.in_unit() => {
                    // A batch was abandoned at the end of the previous block and the writer
                    // restarted from its first entry here.
                    let block = scanned.len() - 1;
                    (
                        Some(Pending {
                            problem: Problem::UnfinishedBatch,
                            position: 0,
                            block,
                        }),
                        true,
                    )
                }
                None if first > expected => {
                    let block = scanned.len() - 1;
                    let position = scanned.get(block).map_or(0, |s| s.data_end);
                    let gap = Problem::Gap {
                        missing: first - expected,
                    };
                    (
                        Some(Pending {
                            problem: gap,
                            position,
                            block,
                        }),
                        false,
                    )
                }
                // Starts inside what came before: a block of a failed write that could not be
                // marked abandoned. It holds nothing of the topic.
                _ => {
                    dropped.push((found, handle));
                    continue;
                }
            };
            if let Some(p) = problem {
                // A gap means entries are missing before valid ones: the mode decides.
                let action = if restart {
                    Action::Skipped
                } else {
                    mid_chain(
                        topic,
                        mode,
                        durable_mark,
                        &scanned,
                        p,
                        committed,
                        first - committed,
                        report,
                    )?
                };
                cut_block_at(&mut scanned, unit_start, p, committed, erases);
                pending = None;
                if action == Action::Cut {
                    dropped.push((found, handle));
                    dropped.extend(iter.by_ref());
                    break;
                }
                check = Some(SequenceCheck::new(first));
            }
        }
        // Unless the chain starts at its very first block, the blocks before were consumed (and
        // maybe deleted), and the first block may open in the middle of a unit.
        let start_checker = if released.is_empty() && found.header.chain_seq == 0 {
            SequenceCheck::new(first)
        } else {
            SequenceCheck::resume(first)
        };
        let checker = check.get_or_insert(start_checker);

        // Scan the block.
        let data_start = found.start + BLOCK_HEADER_LEN as u64;
        let len = found.header.block_len - BLOCK_HEADER_LEN as u64;
        let mut data = vec![0u8; len as usize];
        read_zero_filled(&*handle.file, &mut data, data_start)?;
        report.blocks_scanned += 1;
        let dirty_end = data_start
            + data
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |i| i as u64 + 1);
        let index = scanned.len();
        let mut data_end = data_start;
        let mut decoder = FrameDecoder::new(&data);
        let problem = loop {
            match decoder.next_frame() {
                Frame::Entry(e) => {
                    if checker.check(e.offset, e.kind).is_err() {
                        break Some((Problem::Corrupt(CorruptReason::Sequence), e.pos));
                    }
                    if e.kind.is_first() {
                        unit_start = Some((index, data_start + e.pos as u64));
                    }
                    report.entries_scanned += 1;
                    data_end = data_start + e.end() as u64;
                }
                Frame::End { at } => {
                    // Zeros, then something: a sector that never made it to disk.
                    let rest = data.get(at..).unwrap_or_default();
                    break (!is_zeroed(rest))
                        .then_some((Problem::Corrupt(CorruptReason::Malformed), at));
                }
                Frame::Torn { at } => break Some((Problem::TornTail, at)),
                Frame::Corrupt { at, reason } => break Some((Problem::Corrupt(reason), at)),
            }
        };
        scanned.push(Scanned {
            found,
            handle,
            data_end,
            end_offset: checker.next_offset(),
            dirty_end,
            abandoned: false,
        });
        if let Some((problem, at)) = problem {
            pending = Some(Pending {
                problem,
                position: data_start + at as u64,
                block: index,
            });
        }
    }

    // The tail: a problem with nothing after it, or a batch never finished.
    if let Some(c) = check {
        let committed = c.committed_offset();
        let tail_problem = match pending {
            Some(p) => Some(p),
            None if c.in_unit() => {
                let last = scanned.len() - 1;
                Some(Pending {
                    problem: Problem::UnfinishedBatch,
                    position: scanned[last].data_end,
                    block: last,
                })
            }
            None => None,
        };
        if let Some(p) = tail_problem {
            let issue = issue(
                topic,
                &scanned[p.block],
                p.position,
                committed,
                p.problem,
                Action::Cut,
            );
            if mode == RecoveryMode::AbsoluteConsistency {
                return Err(absolute_error(&issue));
            }
            report.issues.push(issue);
            cut_block_at(&mut scanned, unit_start, p, committed, erases);
        }
    }

    // Blocks left with no entries after cuts are released; the last one may stay live.
    let end = scanned
        .iter()
        .rev()
        .find(|s| s.end_offset > s.found.header.first_offset)
        .map(|s| s.end_offset);
    let chain_start = scanned.first().map(|s| s.found.header.first_offset);
    let committed_end = end.or(chain_start).unwrap_or(stored_cursor.max(floor));
    let mut chain = VecDeque::new();
    let mut live = None;
    let count = scanned.len();
    let mut cursor = stored_cursor.max(floor).max(chain_start.unwrap_or(0));
    if cursor > committed_end {
        report.issues.push(RecoveryIssue {
            topic: topic.to_owned(),
            offset: cursor,
            file: PathBuf::new(),
            position: 0,
            problem: Problem::CursorBeyondEnd,
            action: Action::Corrected,
        });
        cursor = committed_end;
    }
    for (i, s) in scanned.into_iter().enumerate() {
        let is_last = i + 1 == count;
        let empty = s.end_offset <= s.found.header.first_offset;
        let clean_tail = s.dirty_end <= s.data_end;
        let live_here =
            is_last && clean_tail && !s.abandoned && s.found.header.first_offset <= committed_end;
        let consumed = !live_here && s.end_offset <= cursor;
        if (empty && !live_here) || consumed {
            fates.insert((s.handle.id, s.found.start), Fate::Released);
            continue;
        }
        fates.insert(
            (s.handle.id, s.found.start),
            Fate::Retained { live: live_here },
        );
        let block = Arc::new(Block::new(
            s.handle,
            s.found.start,
            s.found.header.block_len,
            s.found.header.first_offset,
            s.data_end,
            s.end_offset.max(s.found.header.first_offset),
            !live_here,
        ));
        if live_here {
            live = Some((block.clone(), s.data_end));
        }
        chain.push_back(block);
    }
    for b in released {
        fates.insert((b.header.segment_id, b.start), Fate::Released);
    }
    for (b, handle) in dropped {
        fates.insert((b.header.segment_id, b.start), Fate::Released);
        let header = BlockHeader {
            abandoned: true,
            ..b.header
        };
        erases.push(Erase::Abandon {
            handle,
            header,
            start: b.start,
        });
    }
    Ok(TopicState {
        chain,
        live,
        next_offset: committed_end,
        next_chain_seq,
        cursor,
        generation: cursor_generation(loaded_cursor),
        pair: cursor_pair(loaded_cursor),
        mark: MarkState {
            pair: mark.map(|m| m.pair),
            generation: mark.map_or(0, |m| m.generation),
            written: mark.map_or(0, |m| m.offset),
        },
    })
}

/// Cuts the chain at `committed`: the block holding the start of the open unit (or the problem
/// block when no unit is open) ends there, and every later block is emptied. The bytes after the
/// cut are zeroed so the next open sees a clean end.
fn cut_block_at(
    scanned: &mut [Scanned],
    unit_start: Option<(usize, u64)>,
    p: Pending,
    committed: u64,
    erases: &mut Vec<Erase>,
) {
    // The cut falls at offset `committed`: in the first block holding entries at or past it,
    // at that block's start, at the first frame of the unfinished unit, or at the problem.
    let cut_block = scanned
        .iter()
        .position(|s| s.end_offset > committed)
        .unwrap_or(p.block)
        .min(p.block);
    let Some(block) = scanned.get(cut_block) else {
        return;
    };
    let data_start = block.found.start + BLOCK_HEADER_LEN as u64;
    let cut_pos = match unit_start {
        _ if committed <= block.found.header.first_offset => data_start,
        Some((b, pos)) if b == cut_block && committed < block.end_offset => pos,
        _ if cut_block == p.block => p.position.max(data_start),
        _ => block.data_end,
    };
    for (i, s) in scanned.iter_mut().enumerate().skip(cut_block) {
        let data_start = s.found.start + BLOCK_HEADER_LEN as u64;
        if i == cut_block {
            if s.dirty_end > cut_pos {
                erases.push(Erase::Zero {
                    handle: s.handle.clone(),
                    from: cut_pos,
                    to: s.dirty_end,
                });
            }
            s.dirty_end = s.dirty_end.min(cut_pos);
            s.data_end = s.data_end.min(cut_pos);
            s.end_offset = s.end_offset.min(committed).max(s.found.header.first_offset);
        } else if !s.abandoned {
            // Later blocks hold only dropped entries: marking the header is enough.
            let header = BlockHeader {
                abandoned: true,
                ..s.found.header.clone()
            };
            erases.push(Erase::Abandon {
                handle: s.handle.clone(),
                header,
                start: s.found.start,
            });
            s.abandoned = true;
            s.data_end = data_start;
            s.dirty_end = data_start;
            s.end_offset = s.found.header.first_offset;
        }
    }
}

/// A problem with valid entries after it. Below the durable watermark that is damage to data
/// that was on stable storage: fatal unless the mode accepts it. At or above the watermark it is
/// what a power cut leaves of unsynced writes (sectors land in any order), so the default mode
/// cuts it like a torn tail.
#[allow(clippy::too_many_arguments)]
fn mid_chain(
    topic: &str,
    mode: RecoveryMode,
    durable_mark: u64,
    scanned: &[Scanned],
    p: Pending,
    committed: u64,
    missing: u64,
    report: &mut RecoveryReport,
) -> io::Result<Action> {
    let Some(block) = scanned.get(p.block) else {
        return Ok(Action::Skipped);
    };
    let problem = match p.problem {
        Problem::Gap { .. } | Problem::TornTail | Problem::UnfinishedBatch => {
            Problem::Gap { missing }
        }
        other => other,
    };
    let action = match mode {
        RecoveryMode::SkipCorrupted => Action::Skipped,
        RecoveryMode::PointInTime => Action::Cut,
        RecoveryMode::TolerateCorruptedTail if committed >= durable_mark => Action::Cut,
        RecoveryMode::TolerateCorruptedTail | RecoveryMode::AbsoluteConsistency => {
            return Err(absolute_error(&issue(
                topic,
                block,
                p.position,
                committed,
                problem,
                Action::Cut,
            )));
        }
    };
    report
        .issues
        .push(issue(topic, block, p.position, committed, problem, action));
    Ok(action)
}

fn issue(
    topic: &str,
    block: &Scanned,
    position: u64,
    offset: u64,
    problem: Problem,
    action: Action,
) -> RecoveryIssue {
    RecoveryIssue {
        topic: topic.to_owned(),
        offset,
        file: block.handle.file.path().to_path_buf(),
        position,
        problem,
        action,
    }
}

fn absolute_error(issue: &RecoveryIssue) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "topic {:?} at offset {}: {:?} in {} at byte {}; refusing to open under this recovery mode \
             (RecoveryMode::PointInTime or SkipCorrupted open it, dropping or skipping the damage)",
            issue.topic,
            issue.offset,
            issue.problem,
            issue.file.display(),
            issue.position
        ),
    )
}

/// Reads `buf.len()` bytes at `pos`; whatever lies past the end of the file reads as zeros.
fn read_zero_filled(file: &dyn walrus_io::SegmentFile, buf: &mut [u8], pos: u64) -> io::Result<()> {
    let got = file.read_at(buf, pos)?;
    if let Some(rest) = buf.get_mut(got..) {
        rest.fill(0);
    }
    Ok(())
}

/// Queues zeroing of every non-zero page in a window after the last block of `seg`.
///
/// The window is 16 default blocks (at least 16 MiB): stale blocks are the ones handed out
/// just before the crash whose headers never reached the disk, right after the last one found.
/// Bounding it keeps opening cheap whatever the segment size; a power cut that kept sectors of
/// a block further out but lost every header in between is not covered.
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
        pos = data.start - data.start % BLOCK_ALIGN;
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
                let zeros = vec![0u8; (to - from) as usize];
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
        }
    }
    Ok(())
}
