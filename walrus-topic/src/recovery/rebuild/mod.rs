//! Rebuilding one topic from its blocks: which entries it keeps, and what each problem means.
//!
//! Everything here is decided before anything is written (the open may still fail on a later
//! topic). The rules, per problem found at offset `a` with the topic's persisted durable
//! watermark `m` (docs/DESIGN.md, "Recovery decision table"):
//!
//! | where | `AbsoluteConsistency` | `TolerateCorruptedTail` | `PointInTime` | `SkipCorrupted` |
//! |---|---|---|---|---|
//! | `a >= m` (torn tail of unsynced writes) | refuse | cut, erase | cut, erase | cut, erase |
//! | `a < m` (damage to synced data) | refuse | refuse | cut, keep bytes | skip exactly it |
//!
//! A cut at or below the watermark never erases: the bytes stay for a later open in another
//! mode, and the next block the writer starts records the cut (its `prev_end`), so later opens
//! step over it without calling it damage. Offsets are never reused: the topic continues after
//! the highest offset found on disk, the stored cursor and the watermark.

use std::io;
use std::sync::Arc;

use walrus_block::{BLOCK_HEADER_LEN, BlockHeader, CorruptReason};

mod decide;

use super::walk::{FoundBlock, FoundFrame, ScannedBlock, scan_block};
use super::{Action, Erase, Fate, Problem, RecoveryIssue, RecoveryReport};
use crate::chain::{Block, SegmentHandle, Span};
use crate::cursors::LoadedCursor;
use crate::options::RecoveryMode;
use crate::progress::MarkState;
use crate::topic::{FloorState, TopicState};

/// What recovery decided for one topic.
pub(super) struct TopicPlan {
    pub(super) state: TopicState,
    pub(super) fates: Vec<((u64, u64), Fate)>,
    pub(super) erases: Vec<Erase>,
    /// Entries at or below the watermark were found damaged or missing and the mode opened
    /// anyway: nothing may be erased that recovery cannot attribute.
    pub(super) damaged_durable: bool,
}

/// A block of the chain being rebuilt.
struct Retained {
    found: FoundBlock,
    handle: Arc<SegmentHandle>,
    scanned: ScannedBlock,
    pieces: Vec<Piece>,
    /// A cut at or below the watermark falls in it and its bytes after the cut are kept for
    /// an open in another mode: never released, so its segment stays (with pieces before the
    /// cut, their span says so: it ends before the block's bytes do).
    keeps_cut: bool,
}

/// A run of consecutive valid frames in one block, readable as one span.
#[derive(Debug, Clone, Copy)]
struct Piece {
    data_start: u64,
    data_end: u64,
    first_offset: u64,
    end_offset: u64,
}

/// Where an open atomic unit (a batch) started.
#[derive(Debug, Clone, Copy)]
struct UnitStart {
    offset: u64,
    block: usize,
    pos: u64,
    /// Continuation frames still expected.
    left: u16,
}

/// Where the topic is cut.
#[derive(Debug, Clone, Copy)]
struct Cut {
    offset: u64,
    block: usize,
    pos: u64,
    /// Above the watermark: the bytes after the cut may be erased.
    erase: bool,
}

struct Rebuild<'a> {
    topic: &'a str,
    mode: RecoveryMode,
    /// The durable watermark: the record's, or the tier mark if higher.
    mark: u64,
    /// The durable watermark record's alone (the tier mark says nothing of entries above it).
    recorded: u64,
    /// The tier mark: entries missing below it left the disk after their upload.
    tier_mark: u64,
    /// The loss being decided is a clean gap between blocks below the tier mark (set around
    /// that one call): released history, not reported.
    released_gap: bool,
    /// The stored cursor: entries below it were consumed.
    cursor: u64,
    expected: u64,
    /// The next frame may continue a unit whose start was not seen (consumed, or skipped).
    resuming: bool,
    /// Consumed entries still stored were found damaged: none of them is served.
    history_broken: bool,
    unit: Option<UnitStart>,
    /// The missing rest of an unfinished batch at the chain's end was skipped (kept as it
    /// is): its offsets, up to here, are never handed out again.
    skipped_to: u64,
    retained: Vec<Retained>,
    cut: Option<Cut>,
    damaged_durable: bool,
    /// A record of the watermark file was lost: this topic's watermark may be higher than
    /// `mark` says, so nothing is erased, and lenient modes treat all damage as below it.
    marks_lost: bool,
    report: &'a mut RecoveryReport,
}

/// What the cursor file says a topic's consumers have consumed.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Consumed {
    /// Every entry below this is consumed by every consumer, or below the floor.
    pub(super) bound: u64,
    /// The highest cursor or floor of any consumer: offsets below it are never handed out
    /// again.
    pub(super) highest: u64,
    /// Blocks wholly below this may be released unread (at most `bound`: for a tiered topic
    /// only what the remote tier holds, see `TopicRecords::consumed`).
    pub(super) release: u64,
    /// The topic was deleted: its deletion sealed its last block, so a block holding nothing
    /// unread is released, not resumed (the name may never be appended to again).
    pub(super) deleted: bool,
}

/// Rebuilds `topic` from its blocks (sorted by chain position). `tier_mark`: what the remote
/// tier holds (every entry below it was durable here before it was written).
#[allow(clippy::too_many_arguments)]
pub(super) fn rebuild_topic(
    topic: &str,
    blocks: Vec<(FoundBlock, Arc<SegmentHandle>)>,
    consumed: Consumed,
    mark: Option<LoadedCursor>,
    tier_mark: u64,
    mode: RecoveryMode,
    marks_lost: bool,
    report: &mut RecoveryReport,
) -> io::Result<TopicPlan> {
    let stored_cursor = consumed.bound;
    let next_chain_seq = blocks.last().map_or(0, |(b, _)| b.header.chain_seq + 1);
    let mut fates = Vec::new();
    let mut erases = Vec::new();

    // Blocks wholly below the cursor (the next block starts at or below it) are released
    // unread: recovery cost grows with unconsumed data, not with history.
    let mut first = 0;
    while let (Some((b, _)), Some((next, _))) = (blocks.get(first), blocks.get(first + 1)) {
        if next.header.first_offset <= consumed.release
            && next.header.first_offset > b.header.first_offset
        {
            fates.push(((b.header.segment_id, b.start), Fate::Released));
            first += 1;
        } else {
            break;
        }
    }
    let floor = blocks
        .get(first)
        .filter(|_| first > 0)
        .map_or(0, |(b, _)| b.header.first_offset);

    let mut r = Rebuild {
        topic,
        mode,
        // The tier mark is a durable watermark too (the durable one on disk may lag it, and
        // blocks released below it after uploading leave a gap that is not a torn tail).
        mark: mark.map_or(0, |m| m.offset).max(tier_mark),
        recorded: mark.map_or(0, |m| m.offset),
        tier_mark,
        released_gap: false,
        cursor: stored_cursor,
        // From the first stored entry: damage among consumed entries matters too (a torn
        // batch is cut whole, consumed or not).
        expected: stored_cursor.max(floor).min(
            blocks
                .get(first)
                .map_or(u64::MAX, |(b, _)| b.header.first_offset),
        ),
        resuming: true,
        history_broken: false,
        unit: None,
        skipped_to: 0,
        retained: Vec::new(),
        cut: None,
        damaged_durable: false,
        marks_lost,
        report,
    };
    let mut highest = 0u64;
    let mut after_cut: Vec<(FoundBlock, Arc<SegmentHandle>)> = Vec::new();
    let rest: Vec<_> = blocks.into_iter().skip(first).collect();
    // Offsets from a later block's recorded gap on are not an earlier block's to serve
    // (except for SkipCorrupted, which recovers whatever is valid).
    let mut limits = vec![u64::MAX; rest.len()];
    if mode != RecoveryMode::SkipCorrupted {
        let mut limit = u64::MAX;
        for (i, (b, _)) in rest.iter().enumerate().rev() {
            limits[i] = limit;
            if b.header.prev_end < b.header.first_offset {
                limit = limit.min(b.header.prev_end);
            }
        }
    }
    let mut hidden: Vec<(FoundBlock, Arc<SegmentHandle>)> = Vec::new();
    for (i, (found, handle)) in rest.into_iter().enumerate() {
        if r.cut.is_some() {
            after_cut.push((found, handle));
            continue;
        }
        let limit = limits[i];
        if found.header.first_offset >= limit {
            // Wholly inside a gap an earlier recovery recorded: kept as it is.
            hidden.push((found, handle));
            continue;
        }
        let scanned = scan_block(&*handle.file, &found)?;
        highest = highest.max(frames_end(&scanned.frames));
        r.retained.push(Retained {
            found,
            handle,
            scanned,
            pieces: Vec::new(),
            keeps_cut: false,
        });
        r.enter_block()?;
        if r.cut.is_none() {
            r.scan_frames(limit)?;
        }
    }
    if r.cut.is_none() {
        r.finish_chain()?;
    }

    // Apply the cut: trim the block it falls in; later blocks are erased (above the
    // watermark) or kept untouched and out of the chain (at or below it).
    let end = match r.cut {
        Some(cut) => {
            r.trim(cut, &mut erases);
            for dropped in r.retained.drain(cut.block + 1..) {
                after_cut.push((dropped.found, dropped.handle));
            }
            for (b, handle) in after_cut {
                let key = (b.header.segment_id, b.start);
                if cut.erase {
                    fates.push((key, Fate::Released));
                    erases.push(Erase::Abandon {
                        handle,
                        header: BlockHeader {
                            abandoned: true,
                            ..b.header
                        },
                        start: b.start,
                    });
                } else {
                    highest = highest.max(hidden_end(&b, &handle)?);
                    fates.push((key, Fate::Kept));
                }
            }
            if cut.erase {
                highest = highest.min(cut.offset);
            }
            cut.offset
        }
        None => r.expected,
    };
    for (b, handle) in hidden {
        highest = highest.max(hidden_end(&b, &handle)?);
        fates.push(((b.header.segment_id, b.start), Fate::Kept));
    }
    let next_offset = end
        .max(stored_cursor)
        .max(consumed.highest)
        .max(r.mark)
        .max(r.skipped_to)
        .max(highest);
    let cursor = stored_cursor.max(floor);
    if cursor.max(consumed.highest) > end {
        r.report.issues.push(RecoveryIssue {
            topic: topic.to_owned(),
            offset: end,
            file: std::path::PathBuf::new(),
            position: 0,
            problem: Problem::CursorBeyondEnd,
            action: Action::Skipped,
        });
    }

    // The writer resumes in the last block only if it ends cleanly right at the end.
    let last = r.retained.len().checked_sub(1);
    let mut chain = std::collections::VecDeque::new();
    let mut live = None;
    let damaged_durable = r.damaged_durable;
    for (i, mut b) in r.retained.into_iter().enumerate() {
        let key = (b.found.header.segment_id, b.found.start);
        if consumed.deleted && b.pieces.iter().all(|p| p.end_offset <= consumed.bound) {
            // Nothing past a deleted topic's floor: its deletion sealed the writer's block and
            // released every block below the floor, and so does the open (were it resumed, a
            // name never appended to again would keep its segment for ever).
            b.pieces.clear();
        }
        let tail = b.pieces.last().map_or_else(
            || {
                // Nothing unread in it: a live piece would start after its last frame.
                let at = b
                    .scanned
                    .frames
                    .last()
                    .map_or(b.found.start + BLOCK_HEADER_LEN as u64, |f| f.end);
                (at, b.found.header.first_offset.max(end))
            },
            |p| (p.data_end, p.end_offset),
        );
        let clean = b.scanned.dirty_end <= tail.0 && b.scanned.trailing_damage.is_none();
        let is_live = Some(i) == last
            && clean
            && next_offset == end
            && tail.1 == end
            && (b.pieces.is_empty() || b.pieces.last().is_some_and(|p| p.end_offset == end))
            && !b.found.header.abandoned
            && !(consumed.deleted && b.pieces.is_empty())
            // A block of a format v2 segment (key 0) takes no more entries: data written into
            // an unkeyed segment could pass for its block headers.
            && b.handle.key != 0;
        if is_live && b.pieces.is_empty() {
            b.pieces.push(Piece {
                data_start: tail.0,
                data_end: tail.0,
                first_offset: end,
                end_offset: end,
            });
        }
        if b.pieces.is_empty() {
            // Nothing readable; but unread entries a cut hid stay on disk (never released).
            let hides = b.keeps_cut || b.scanned.frames.iter().any(|f| f.offset >= cursor);
            fates.push((key, if hides { Fate::Kept } else { Fate::Released }));
            continue;
        }
        fates.push((key, Fate::Retained { live: is_live }));
        let count = b.pieces.len();
        for (k, p) in b.pieces.iter().enumerate() {
            let last_piece = k + 1 == count;
            let block = Arc::new(Block::span(
                b.handle.clone(),
                Span {
                    start: b.found.start,
                    len: b.found.header.block_len,
                    data_start: p.data_start,
                    data_end: p.data_end,
                    first_offset: p.first_offset,
                    end_offset: p.end_offset,
                    sealed: !(is_live && last_piece),
                    // Bytes kept after what it serves (a cut or a recorded gap at or below
                    // the watermark, damage skipped): a later open in another mode may still
                    // read them, so the block never goes.
                    releases: last_piece && b.scanned.dirty_end <= p.data_end,
                    frame_key: b.found.frame_key,
                },
            ));
            if is_live && last_piece {
                live = Some((block.clone(), p.data_end));
            }
            chain.push_back(block);
        }
    }
    let gap_from = (live.is_none() && next_offset > end).then_some(end);
    Ok(TopicPlan {
        state: TopicState {
            chain,
            live,
            next_offset,
            next_chain_seq,
            gap_from,
            consumers: Vec::new(),
            floor: FloorState::default(),
            hidden: false,
            tier_mark: MarkState::default(),
            mark: MarkState {
                pair: mark.map(|m| m.pair),
                generation: mark.map_or(0, |m| m.generation),
                written: mark.map_or(0, |m| m.offset),
            },
        },
        fates,
        erases,
        damaged_durable,
    })
}

/// One past the highest offset among `frames` (0 for none).
fn frames_end(frames: &[FoundFrame]) -> u64 {
    frames.iter().map(|f| f.offset + 1).max().unwrap_or(0)
}

/// One past the highest offset stored in a block kept out of the chain: offsets up to it are
/// never handed out again.
fn hidden_end(b: &FoundBlock, handle: &SegmentHandle) -> io::Result<u64> {
    Ok(frames_end(&scan_block(&*handle.file, b)?.frames))
}

impl Rebuild<'_> {
    /// The block just pushed joins the chain: a recorded gap is stepped over; entries missing
    /// before it are a problem.
    fn enter_block(&mut self) -> io::Result<()> {
        let idx = self.retained.len() - 1;
        let (prev_end, first, start) = {
            let b = &self.retained[idx];
            let h = &b.found.header;
            (h.prev_end, h.first_offset, b.found.start)
        };
        let recorded = prev_end < first;
        let missing_to = if recorded { prev_end } else { first };
        if missing_to > self.expected {
            let problem = Problem::Missing {
                count: missing_to - self.expected,
            };
            // A clean gap below the tier mark (the block before ends without damage): blocks
            // that left the disk after their upload. After damage it is damage.
            let clean = idx
                .checked_sub(1)
                .and_then(|i| self.retained.get(i))
                .is_none_or(|b| b.scanned.trailing_damage.is_none());
            self.released_gap = clean && missing_to <= self.tier_mark;
            let go_on = self.loss(idx, start, problem, missing_to);
            self.released_gap = false;
            if !go_on? {
                return Ok(());
            }
        }
        if recorded || first > self.expected {
            // Stepped over: whatever unit was open lost its tail with the gap.
            self.expected = self.expected.max(first);
            self.unit = None;
            self.resuming = true;
        }
        Ok(())
    }

    /// Accepts the frames of the last retained block that continue the topic, below `limit`.
    fn scan_frames(&mut self, limit: u64) -> io::Result<()> {
        let idx = self.retained.len() - 1;
        let frames = std::mem::take(&mut self.retained[idx].scanned.frames);
        let result = self.accept_frames(idx, &frames, limit);
        self.retained[idx].scanned.frames = frames;
        result
    }

    fn accept_frames(&mut self, idx: usize, frames: &[FoundFrame], limit: u64) -> io::Result<()> {
        for f in frames {
            if f.offset < self.expected || f.offset >= limit {
                // Stale, or inside a recorded gap.
                continue;
            }
            if f.offset > self.expected {
                let at = f.after_damage.unwrap_or(f.pos);
                let problem = match f.after_damage {
                    Some(_) => Problem::Corrupt(CorruptReason::PayloadChecksum),
                    None => Problem::Missing {
                        count: f.offset - self.expected,
                    },
                };
                if !self.loss(idx, at, problem, f.offset)? {
                    return Ok(());
                }
                self.expected = f.offset;
                self.unit = None;
                self.resuming = true;
            }
            let follows = match self.unit {
                _ if self.resuming => true,
                None => f.kind.is_first(),
                Some(u) => !f.kind.is_first() && f.kind.batch_left() + 1 == u.left,
            };
            if !follows {
                let problem = Problem::Corrupt(CorruptReason::Sequence);
                if !self.loss(idx, f.pos, problem, f.offset + 1)? {
                    return Ok(());
                }
                self.expected = f.offset + 1;
                self.unit = None;
                self.resuming = true;
                continue;
            }
            self.resuming = false;
            self.follow_unit(idx, f);
            self.expected = f.offset + 1;
            // Consumed entries still stored stay readable with `read_at` until released, as
            // long as none of them was found damaged.
            if f.offset < self.cursor && self.history_broken {
                continue;
            }
            let pieces = &mut self.retained[idx].pieces;
            match pieces.last_mut() {
                Some(p) if p.data_end == f.pos && p.end_offset == f.offset => {
                    p.data_end = f.end;
                    p.end_offset = f.offset + 1;
                }
                _ => pieces.push(Piece {
                    data_start: f.pos,
                    data_end: f.end,
                    first_offset: f.offset,
                    end_offset: f.offset + 1,
                }),
            }
        }
        // Damage after the last frame of a block that is not the last one is harmless when
        // the next block continues the topic; the next block's boundary check decides.
        Ok(())
    }

    /// Entries from `self.expected` up to `end` are missing or damaged (found at `pos` of
    /// retained block `idx`). Among consumed entries, damage at or below the watermark costs
    /// nothing but their history (they are not served again, whatever the mode); anything else
    /// is decided by [`decide`](Self::decide). Returns whether scanning goes on.
    fn loss(&mut self, idx: usize, pos: u64, problem: Problem, end: u64) -> io::Result<bool> {
        let a = self.expected;
        if a < self.cursor && a < self.mark {
            // A clean gap below the tier mark: blocks that left the disk after their upload (by
            // the topic's local retention, one segment deleted while an older one stayed),
            // history the tier holds, not damage to report.
            if !self.released_gap {
                let file = self.retained.get(idx).map(|b| b.handle.clone());
                let issue = self.issue(a, file.as_deref(), pos, problem, Action::Skipped);
                self.report.issues.push(issue);
            }
            self.history_broken = true;
            let cursor = self.cursor;
            for b in &mut self.retained {
                b.pieces.retain(|p| p.first_offset >= cursor);
            }
            if end <= cursor {
                return Ok(true);
            }
            // The loss reaches past the cursor: entries nobody consumed are lost to damage at
            // or below the watermark (where the damage is decides, not where the cursor is),
            // decided from the cursor on. The unit the damage fell in was consumed in part:
            // readable, so whole when written.
            // Below the recorded watermark the damage was synced; a hole that starts only
            // below the tier mark says nothing of entries above it (never known synced),
            // unless it falls in a unit that starts below the tier mark (durable whole).
            let durable = a < self.recorded || self.unit.is_some_and(|u| u.offset < self.mark);
            self.unit = None;
            return self.decide_at(cursor, durable, idx, pos, problem);
        }
        self.decide(a, idx, pos, problem)
    }

    /// Follows the atomic unit `f` belongs to (where it started, how many frames are left).
    fn follow_unit(&mut self, idx: usize, f: &FoundFrame) {
        self.unit = if f.kind.is_last() {
            None
        } else if f.kind.is_first() || self.unit.is_none() {
            // A continuation whose start is not here (released with consumed blocks) is
            // followed from the first frame seen.
            Some(UnitStart {
                offset: f.offset,
                block: idx,
                pos: f.pos,
                left: f.kind.batch_left(),
            })
        } else {
            self.unit.map(|u| UnitStart {
                left: f.kind.batch_left(),
                ..u
            })
        };
    }

    /// The end of the chain: an unfinished batch, damage after the last entry, or entries the
    /// watermark says were synced and are not there.
    fn finish_chain(&mut self) -> io::Result<()> {
        let Some(idx) = self.retained.len().checked_sub(1) else {
            if self.mark > self.expected {
                let problem = Problem::Missing {
                    count: self.mark - self.expected,
                };
                return self.refuse_or_note(self.expected, None, 0, problem);
            }
            return Ok(());
        };
        let b = &self.retained[idx];
        let last_end = b
            .pieces
            .last()
            .map_or(b.found.start + BLOCK_HEADER_LEN as u64, |p| p.data_end);
        let trailing = b.scanned.trailing_damage;
        if let Some(unit) = self.unit {
            // Above the watermark it is cut whole; below it (skipped) it keeps what survived.
            // It ends after the frames it still expected, and at least where the watermark
            // says entries were synced.
            let end = self.mark.max(self.expected + u64::from(unit.left).max(1));
            if self.loss(idx, last_end, Problem::UnfinishedBatch, end)? {
                // Skipped: the frames it still expected keep their offsets, which the next
                // append steps over in a block recording the gap (following the batch's
                // head, its first frame would be a sequence break to the next open).
                self.skipped_to = end;
            }
            return Ok(());
        }
        if let Some(at) = trailing
            && self.expected >= self.mark
        {
            let end = self.expected + 1;
            return self.loss(idx, at, Problem::TornTail, end).map(|_| ());
        }
        if self.mark > self.expected {
            let at = trailing.unwrap_or(last_end);
            let problem = Problem::Missing {
                count: self.mark - self.expected,
            };
            self.loss(idx, at, problem, self.mark)?;
        }
        Ok(())
    }

    /// Trims the block the cut falls in to end at the cut; erases what follows when allowed.
    fn trim(&mut self, cut: Cut, erases: &mut Vec<Erase>) {
        let Some(b) = self.retained.get_mut(cut.block) else {
            return;
        };
        b.pieces.retain(|p| p.first_offset < cut.offset);
        if let Some(p) = b.pieces.last_mut()
            && p.end_offset > cut.offset
        {
            p.end_offset = cut.offset;
            p.data_end = cut.pos;
        }
        if cut.erase {
            if b.scanned.dirty_end > cut.pos {
                erases.push(Erase::Zero {
                    handle: b.handle.clone(),
                    from: cut.pos,
                    to: b.scanned.dirty_end,
                });
            }
            b.scanned.dirty_end = b.scanned.dirty_end.min(cut.pos);
            b.scanned.trailing_damage = None;
            b.scanned.frames.retain(|f| f.offset < cut.offset);
        } else {
            b.keeps_cut = b.scanned.dirty_end > cut.pos;
        }
    }
}
