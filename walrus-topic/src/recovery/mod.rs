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
mod records;
mod report;
mod segments;
mod walk;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use walrus_alloc::{RestoredBlock, SegmentTail};
use walrus_block::{BLOCK_ALIGN, BlockHeader, SEGMENT_DATA_OFFSET, SegmentHeader};
use walrus_io::Storage;

use self::rebuild::{TopicPlan, rebuild_topic};
pub use self::report::{Action, Problem, RecoveryIssue, RecoveryReport};
use self::segments::{
    Found, FoundSegment, HeaderState, apply_erases, clear_gaps, clear_stale_tail, find_segment,
};
use self::walk::{FoundBlock, has_data};
use crate::chain::SegmentHandle;
use crate::cursors::{CURSOR_FILE, CursorFile, CursorStore, MARKS_FILE, RecordKey};
use crate::layout::{FileKind, classify, lane_of};
use crate::options::{RecoveryMode, StoreOptions};
use crate::topic::TopicState;

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
    pub(crate) tail: Option<SegmentTail>,
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

pub(crate) fn recover(
    dir: &Path,
    storage: Arc<dyn Storage>,
    options: &StoreOptions,
) -> io::Result<Recovered> {
    let _span = tracing::debug_span!("walrus.recovery", mode = ?options.recovery).entered();
    let started = std::time::Instant::now();
    let recovered = recover_in(dir, storage, options)?;
    let r = &recovered.report;
    tracing::debug!(
        topics = recovered.topics.len(),
        segments = r.segments,
        segments_deleted = r.segments_deleted.len(),
        blocks = r.blocks,
        blocks_scanned = r.blocks_scanned,
        entries_scanned = r.entries_scanned,
        issues = r.issues.len(),
        micros = started.elapsed().as_micros() as u64,
        "recovered"
    );
    Ok(recovered)
}

fn recover_in(
    dir: &Path,
    storage: Arc<dyn Storage>,
    options: &StoreOptions,
) -> io::Result<Recovered> {
    let mode = options.recovery;
    let mut report = RecoveryReport::default();
    let read_only = options.read_only;
    // The watermarks before the listing, the cursors after the segments are open: beside a
    // live writer (read-only), a watermark then never covers a segment the listing missed,
    // and a cursor never lags behind a segment deleted before it was opened (the writer
    // makes the cursors that consumed a segment durable before deleting it).
    let (marks_file, (loaded_marks, damaged_marks)) =
        CursorFile::load(&*storage, dir, MARKS_FILE, read_only)?;
    let mut segment_paths = Vec::new();
    // Whether the run before this open kept a journal (an open without one removes the file):
    // its segments' header pages were synced when they were made.
    let mut journaled = false;
    for path in storage.list(dir)? {
        match classify(&path)? {
            FileKind::Segment(id) => segment_paths.push((id, path)),
            // The journal was applied before recovery (`Store::open`).
            FileKind::Journal => journaled = true,
            FileKind::Lock | FileKind::Cursors => {}
        }
    }
    segment_paths.sort();
    // Segment ids are never reused, even for files deleted below.
    let mut next_ids: HashMap<usize, u64> = HashMap::new();
    for (id, path) in &segment_paths {
        // The next id of the lane must stay in the lane: one past its last would be the next
        // lane's first, and preparing it would find (and take for a leftover) that lane's file.
        let after = id
            .checked_add(1)
            .filter(|after| lane_of(*after) == lane_of(*id))
            .ok_or_else(|| {
                crate::error::data_error(
                    path,
                    "a segment id this large leaves its lane no id for the next segment",
                )
            })?;
        let next = next_ids.entry(lane_of(*id)).or_default();
        *next = (*next).max(after);
    }

    // --- Decide (read only) -------------------------------------------------------------
    let mut segments: Vec<FoundSegment> = Vec::new();
    let mut deletions: Vec<(u64, PathBuf)> = Vec::new();
    // Refusals about whole files wait until the topics were decided: a topic's refusal names
    // topic and offset, which says more.
    let mut refusal = None;
    let mut orphans = Vec::new();
    for (id, path) in segment_paths {
        match find_segment(&*storage, id, path, options, journaled, &mut report)? {
            Found::Segment(seg) => segments.push(seg),
            Found::Empty(path) => deletions.push((id, path)),
            Found::Orphan(path) => orphans.push((id, path)),
            Found::Unreadable | Found::Vanished => {}
            Found::Refused(e) => {
                refusal.get_or_insert(e);
            }
        }
    }

    let (mut cursor_file, (mut loaded, damaged_cursors)) =
        CursorFile::load(&*storage, dir, CURSOR_FILE, read_only)?;
    // Beside a live writer (read-only), a tier mark raised after the watermarks were loaded
    // may cover blocks released after their upload whose segments the writer then deleted,
    // before the listing or the opening above: read again now, the higher one counts (the
    // watermarks stay as loaded, a lower bound).
    let later_marks = if read_only {
        CursorFile::load(&*storage, dir, MARKS_FILE, read_only)?.1.0
    } else {
        HashMap::new()
    };
    if !read_only {
        cursor_file.reclaim(&mut loaded);
    }

    // A spare segment prepared ahead of need and never used: delete it, so that allocation
    // resumes in the room left in the last segment of its lane that holds blocks.
    let mut by_lane: BTreeMap<usize, Vec<FoundSegment>> = BTreeMap::new();
    for seg in segments {
        by_lane.entry(lane_of(seg.id)).or_default().push(seg);
    }
    let mut segments = Vec::new();
    // Deleted below, once it is known whether synced data was found damaged: a spare with
    // data past its header may then hold the rest of it (a block whose header was damaged).
    let mut spares = Vec::new();
    for (_, mut lane) in by_lane {
        while lane.len() > 1
            && lane
                .last()
                .is_some_and(|s| s.blocks.is_empty() && s.header != HeaderState::Damaged)
        {
            if let Some(spare) = lane.pop() {
                spares.push(spare);
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
    // A watermark record lost to damage: some topic's watermark is unknown, so no damage may
    // be taken for a torn tail and erased (it may lie below the lost watermark).
    let marks_lost = damaged_marks.iter().any(|p| p.slot.is_none());
    let mut damaged_durable = marks_lost;
    let mut names: Vec<String> = by_topic.keys().cloned().collect();
    // A topic whose every block is gone still has its cursor or watermark: its offsets up to
    // them must never be handed out again (and below the watermark the loss is corruption).
    let mut records = records::group(&loaded);
    names.extend(
        loaded
            .keys()
            .chain(loaded_marks.keys())
            .map(|k| &k.topic)
            .filter(|t| !by_topic.contains_key(*t))
            .cloned(),
    );
    names.sort();
    names.dedup();
    for name in names {
        let mut blocks = by_topic.remove(&name).unwrap_or_default();
        blocks.sort_by_key(|(b, _)| b.header.chain_seq);
        let found = records.remove(&name).unwrap_or_default();
        let tier_key = RecordKey::consumer(&name, crate::tier::TIER_MARK);
        let tier_mark = loaded_marks.get(&tier_key).copied();
        let tier_offset = tier_mark
            .into_iter()
            .chain(later_marks.get(&tier_key).copied())
            .map(|m| m.offset)
            .max()
            .unwrap_or(0);
        let mut plan: TopicPlan = rebuild_topic(
            &name,
            blocks,
            found.consumed(options.tiering_for(&name).is_some(), tier_offset),
            loaded_marks.get(&RecordKey::consumer(&name, "")).copied(),
            tier_offset,
            mode,
            marks_lost,
            &mut report,
        )?;
        if let Some(m) = tier_mark {
            plan.state.tier_mark = crate::progress::MarkState {
                pair: Some(m.pair),
                generation: m.generation,
                written: m.offset,
            };
        }
        // The one the rebuild went by (a read-only open may have read a higher one again):
        // reads below it that find nothing local go to the tier, or say it holds them.
        plan.state.tier_mark.written = plan.state.tier_mark.written.max(tier_offset);
        // A deleted topic stays unlisted until appended to (no entry past its floor).
        plan.state.hidden = found.floor.deleted
            && plan
                .state
                .chain
                .back()
                .is_none_or(|b| b.end_offset() <= found.floor.offset);
        plan.state.consumers = found.consumers;
        plan.state.floor = found.floor;
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
    for seg in segments.iter().filter(|s| s.header != HeaderState::Valid) {
        let durable = seg.blocks.iter().any(|b| {
            loaded_marks
                .get(&RecordKey::consumer(&b.header.topic, ""))
                .is_some_and(|m| b.header.first_offset < m.offset)
        });
        if seg.header == HeaderState::Torn && !durable {
            // The page's write torn before any sync: nothing lost, written again below.
            continue;
        }
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
                     rewriting the header from its copy); nothing was changed on disk",
                    seg.path.display()
                ),
            ));
        }
        report.issues.push(issue);
    }
    // Cursor and watermark records lost to damage: a consumer would start again at the first
    // entry kept, a topic's watermark (or floor, or tier mark) would be forgotten.
    let damaged_records = [(CURSOR_FILE, damaged_cursors), (MARKS_FILE, damaged_marks)];
    // What the apply step zeros: damaged slots beside a valid one (in either file), and the
    // pairs of lost cursor records.
    let (mut slot_clears, mut pair_clears) = (Vec::new(), Vec::new());
    for (name, pairs) in damaged_records {
        for pair in pairs {
            let file = dir.join(name);
            if let Some(slot) = pair.slot {
                // The other slot's record is used; a newer generation this one held is lost
                // (a consumer hands out again what it consumed since, a watermark is lower):
                // damage, which only `AbsoluteConsistency` refuses.
                if mode == RecoveryMode::AbsoluteConsistency {
                    refusal.get_or_insert(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} bytes {slot}..{}: a damaged record slot (the other slot of its \
                             pair, maybe an older generation, would be used); refused by \
                             {mode:?} (the other modes open it); nothing was changed on disk",
                            file.display(),
                            slot + walrus_block::CURSOR_SLOT_LEN,
                        ),
                    ));
                }
                if !read_only {
                    slot_clears.push((name == MARKS_FILE, slot));
                }
                report.issues.push(RecoveryIssue {
                    topic: String::new(),
                    offset: 0,
                    file,
                    position: slot,
                    problem: Problem::CorruptCursorRecord,
                    action: if read_only {
                        Action::Kept
                    } else {
                        Action::Cleared
                    },
                });
                continue;
            }
            let refused = match mode {
                RecoveryMode::AbsoluteConsistency => true,
                RecoveryMode::TolerateCorruptedTail => pair.both,
                _ => false,
            };
            if refused {
                refusal.get_or_insert(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} bytes {}..{}: a damaged record (neither of its two slots is valid); \
                         refused by {mode:?} (RecoveryMode::PointInTime or \
                         RecoveryMode::SkipCorrupted open without it: {}); nothing was changed \
                         on disk",
                        file.display(),
                        pair.position,
                        pair.position + 2 * walrus_block::CURSOR_SLOT_LEN,
                        if name == MARKS_FILE {
                            "a topic's watermark is unknown then, and no damage is erased"
                        } else {
                            "a consumer it held starts again at the first entry kept"
                        }
                    ),
                ));
            }
            report.issues.push(RecoveryIssue {
                topic: String::new(),
                offset: 0,
                file,
                position: pair.position,
                problem: Problem::CorruptCursorRecord,
                // Kept by a read-only open, which writes nothing; and a watermark's, by every
                // open: cleared, the next open would take that topic's watermark for 0 and
                // damage below the lost one for a torn tail, and erase it.
                action: if read_only || name == MARKS_FILE {
                    Action::Kept
                } else {
                    pair_clears.push(pair.position);
                    Action::Cleared
                },
            });
        }
    }
    if let Some(e) = refusal {
        return Err(e);
    }

    // A synced segment always has its header (written first): an orphan held only unsynced
    // data, unless damage to synced data was found somewhere, when it is kept for inspection.
    // A spare that holds bytes past its header held unsynced data (a block whose header did
    // not land): dropping it is a torn tail's erasure, which `AbsoluteConsistency` refuses.
    let mut dropped_orphans = 0;
    for spare in spares {
        let holds_data = has_data(&*spare.handle.file, SEGMENT_DATA_OFFSET)?;
        if damaged_durable && holds_data {
            report.issues.push(RecoveryIssue::unreadable(spare.path));
        } else {
            dropped_orphans += usize::from(holds_data);
            deletions.push((spare.id, spare.path));
        }
    }
    for (id, path) in orphans {
        if damaged_durable {
            report.issues.push(RecoveryIssue::unreadable(path));
        } else {
            deletions.push((id, path));
            dropped_orphans += 1;
        }
    }

    // Allocation resumes after the last block of each lane's last segment. A power cut can
    // have kept sectors of blocks whose headers it lost: stale bytes a new block must not
    // inherit. Zero them — unless some synced data was found damaged, when bytes recovery
    // cannot attribute may be the rest of it: then the segment is closed instead. The same
    // for such blocks between two found ones, and after the last one of a segment that is not
    // a lane's last (no block is allocated there again, but the bytes would stay
    // unattributed for every later open, which `AbsoluteConsistency` then refuses).
    let mut sealed_tails = Vec::new();
    for seg in &segments {
        if !damaged_durable {
            clear_gaps(seg, &mut erases)?;
            clear_stale_tail(seg, &mut erases)?;
        } else if lane_tails.get(&lane_of(seg.id)) == Some(&seg.id) {
            sealed_tails.push(seg.id);
        }
    }
    // Not in a segment kept untouched for inspection below (synced data damaged somewhere,
    // and a damaged block header here).
    for seg in segments
        .iter()
        .filter(|s| s.header != HeaderState::Valid && !(damaged_durable && s.damaged))
    {
        erases.push(Erase::Repair {
            handle: seg.handle.clone(),
            header: seg.known,
        });
    }

    // The tracker's view; segments holding nothing are deleted.
    let mut kept = Vec::new();
    let mut lanes: HashMap<usize, LaneResume> = HashMap::new();
    for seg in segments {
        let lane = lane_of(seg.id);
        let is_last = lane_tails.get(&lane) == Some(&seg.id) && lane < options.lanes;
        // A segment of format v2 (key 0) takes no new blocks: they would be unkeyed.
        let resumable = is_last
            && !sealed_tails.contains(&seg.id)
            && seg.handle.key != 0
            && seg.next_start + BLOCK_ALIGN <= seg.segment_len;
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
        if holds_nothing && !resumable {
            if damaged_durable && seg.damaged {
                // Synced data was found damaged, and a damaged block header here hides bytes
                // no found block accounts for, which may be the rest of it: kept, untouched,
                // out of the tracker's reach (whatever its own header's state).
                report.issues.push(RecoveryIssue::unreadable(seg.path));
                continue;
            }
            if seg.header != HeaderState::Damaged {
                deletions.push((seg.id, seg.path));
                continue;
            }
        }
        if resumable {
            seg.handle.resume_claim(seg.next_start);
            lanes.entry(lane).or_default().tail = Some(SegmentTail {
                segment: seg.id,
                segment_len: seg.segment_len,
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

    // `AbsoluteConsistency` opens only a directory with nothing to drop: no problem reported
    // (a damaged block header the walk stepped over, damaged entries among the consumed ones),
    // no bytes past the last block to zero, no segment of unsynced data to delete.
    let stale = erases
        .iter()
        .filter(|e| matches!(e, Erase::Zero { .. }))
        .count();
    if mode == RecoveryMode::AbsoluteConsistency
        && (!report.issues.is_empty() || stale > 0 || dropped_orphans > 0)
    {
        let first = report.issues.first().map_or_else(String::new, |i| {
            format!(
                "; the first: {} at byte {} of {}",
                i.problem,
                i.position,
                i.file.display()
            )
        });
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: {} problem(s) found, {stale} range(s) of stale bytes outside the blocks, \
                 {dropped_orphans} segment(s) of unsynced data{first}; refused by \
                 AbsoluteConsistency (the other modes open it); nothing was changed on disk",
                dir.display(),
                report.issues.len()
            ),
        ));
    }

    // --- Apply ---------------------------------------------------------------------------
    if read_only {
        // Nothing is repaired, deleted, synced or created: the state decided above is served
        // as it is (a torn tail is cut in memory, its bytes stay).
        report.segments = kept.len();
        report.blocks = kept.iter().map(|s| s.blocks.len()).sum();
        return Ok(Recovered {
            topics,
            segments: kept,
            lanes,
            cursors: cursor_file.without_writes(),
            marks: marks_file.without_writes(),
            report,
        });
    }
    let cursors = cursor_file.create_if_missing(&*storage, dir, CURSOR_FILE)?;
    let marks = marks_file.create_if_missing(&*storage, dir, MARKS_FILE)?;
    apply_erases(&erases)?;
    for position in pair_clears {
        cursors.clear_pair(position)?;
    }
    // The next write of each record goes to its cleared slot; until then, no open finds the
    // damage again.
    for (in_marks, slot) in slot_clears {
        if in_marks {
            marks.clear_slot(slot)?;
        } else {
            cursors.clear_slot(slot)?;
        }
    }
    // What was recovered may be only in the page cache (after a process crash): make it
    // durable, so every recovered entry counts as durable, and so every cursor and watermark
    // decisions rest on (the deletions below, the blocks released) counts as persisted.
    // Appends resume in a topic's live block, wherever it lies: its segment must be as long
    // as the block before they write past the file's end, or the journal's record of them
    // would be refused by the next open's replay as a write past it.
    for (_, state) in &topics {
        if let Some((block, _)) = &state.live {
            block.handle.restore_length()?;
        }
    }
    for seg in &kept {
        if !seg.fully_allocated {
            // Allocation resumes in it.
            seg.handle.restore_length()?;
        }
        seg.handle.mark_dirty();
        seg.handle.sync()?;
    }
    // And every other segment an erase went into: one kept out of the store, untouched for
    // inspection but for the abandoned header of a block after a torn tail's cut, or one
    // deleted below (an unlink a power cut may undo). Unsynced, the erase could be lost while
    // the topic's next appends reuse the offsets it erased, and the old block would come back.
    for e in &erases {
        let (Erase::Zero { handle, .. }
        | Erase::Abandon { handle, .. }
        | Erase::Repair { handle, .. }) = e;
        if handle.is_dirty() {
            handle.sync()?;
        }
    }
    cursors.sync_loaded()?;
    marks.sync_loaded()?;
    for (id, path) in &deletions {
        storage.remove(path)?;
        report.segments_deleted.push(*id);
    }
    // Always: the names of the files kept may not be durable either (a run killed between a
    // segment's creation and its directory sync leaves it in the page cache, valid, and
    // appends resume in it: a power cut would then take the file and what they wrote).
    storage.sync_dir(dir)?;
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
