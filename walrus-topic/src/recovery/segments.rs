//! One segment file at a time: reading its header and walking its blocks into a
//! [`FoundSegment`], clearing stale pages after its last block, and applying the erases recovery
//! decided.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use walrus_block::{
    BLOCK_ALIGN, BLOCK_HEADER_LEN, BlockHeader, CorruptReason, FRAME_HEADER_LEN, FormatError,
    FrameHeader, SEGMENT_DATA_OFFSET, SEGMENT_HEADER_COPY_AT, SEGMENT_HEADER_LEN, SegmentHeader,
    is_zeroed,
};
use walrus_io::Storage;

use super::walk::{FoundBlock, has_data, read_zero_filled, walk_blocks};
use crate::chain::SegmentHandle;
use crate::error::data_error;
use crate::options::{RecoveryMode, StoreOptions};

use super::Erase;
use super::report::{RecoveryIssue, RecoveryReport};

/// How a segment's header read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HeaderState {
    Valid,
    /// One of the header and its copy valid, the other zero: the write of the page was torn
    /// (before any sync: a sync covers the page), unless the segment holds synced entries,
    /// when it is damage. Written again from the valid one.
    Torn,
    /// The header or its copy damaged (or both lost, the key solved from the first block):
    /// written again from what is known.
    Damaged,
}

/// A segment found on disk.
pub(super) struct FoundSegment {
    pub(super) id: u64,
    pub(super) path: PathBuf,
    pub(super) handle: Arc<SegmentHandle>,
    pub(super) segment_len: u64,
    pub(super) blocks: Vec<FoundBlock>,
    pub(super) next_start: u64,
    /// Ranges stepped over from a zero header (see [`Walked::gaps`](super::walk::Walked)).
    pub(super) gaps: Vec<(u64, u64)>,
    /// The walk stepped over a damaged block header.
    pub(super) damaged: bool,
    pub(super) header: HeaderState,
    /// The header as read (from its copy when it is damaged): what a repair writes back.
    pub(super) known: SegmentHeader,
}

/// What a segment file turned out to be.
pub(super) enum Found {
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
    /// Gone by the time a read-only open got to it (a live writer deleted it).
    Vanished,
}

/// The segment header that the first block's header (at [`SEGMENT_DATA_OFFSET`], which only
/// the engine writes) implies, for a segment whose header and copy are both lost: key 0 if that
/// header checks unkeyed (a v2 segment: a real check), else the key solved from its CRC —
/// which any bytes solve to, so it is taken only if the next block's header checks under it
/// too (a solve from a damaged first header gives a key no other header checks under), or, in
/// a segment of format v4, the first block's first frame (the engine writes it right after the
/// header, keyed with the same key). A segment of one block of format v3, or one whose first
/// block holds no entry, cannot confirm it: its key stays lost.
fn solve_key(
    file: &dyn walrus_io::SegmentFile,
    id: u64,
    options: &StoreOptions,
) -> io::Result<Option<SegmentHeader>> {
    let mut raw = [0u8; BLOCK_HEADER_LEN];
    read_zero_filled(file, &mut raw, SEGMENT_DATA_OFFSET)?;
    let Some((key, first)) = BlockHeader::solve_key(&raw).filter(|(_, h)| h.segment_id == id)
    else {
        return Ok(None);
    };
    if key != 0 {
        let Some(next) = SEGMENT_DATA_OFFSET.checked_add(first.block_len) else {
            return Ok(None);
        };
        read_zero_filled(file, &mut raw, next)?;
        let by_block = BlockHeader::decode(&raw, key)
            .ok()
            .flatten()
            .is_some_and(|h| h.segment_id == id);
        let mut frame = [0u8; FRAME_HEADER_LEN];
        read_zero_filled(
            file,
            &mut frame,
            SEGMENT_DATA_OFFSET + BLOCK_HEADER_LEN as u64,
        )?;
        let by_frame = first.keyed_frames
            && matches!(FrameHeader::decode(&frame, key), Ok(Some(f)) if f.offset == first.first_offset);
        if !by_block && !by_frame {
            return Ok(None);
        }
    }
    Ok(Some(SegmentHeader {
        segment_id: id,
        block_len: options.block_len,
        key,
        // Not known (it was in the page): as this open would make it.
        synced: options.journal,
        // Every block a v4 segment hands out says so.
        keyed_frames: first.keyed_frames,
    }))
}

/// Finds what the segment file `id` at `path` holds; `journaled` says whether the run that
/// wrote it last synced segment headers when it made them (it kept a journal).
pub(super) fn find_segment(
    storage: &dyn Storage,
    id: u64,
    path: PathBuf,
    options: &StoreOptions,
    journaled: bool,
    report: &mut RecoveryReport,
) -> io::Result<Found> {
    let file = if options.read_only {
        match storage.open_read(&path) {
            // Deleted by a live writer between the listing and now: it held nothing unread.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Vanished),
            other => other?,
        }
    } else {
        storage.open(&path)?
    };
    // A crash can lose a preallocation that was never synced: the file may be shorter than
    // the blocks in it. Never-written bytes read as zeros either way.
    let segment_len = file.len()?.max(options.segment_len);
    let mut head = vec![0u8; SEGMENT_DATA_OFFSET as usize];
    read_zero_filled(&*file, &mut head, 0)?;
    // The key validates the blocks: from the header, or from its copy when the header is lost
    // or damaged, or solved from the first block's header when both are. Without it, no block
    // of the file can be told from entry data.
    let header_bytes = |at: usize| head.get(at..at + SEGMENT_HEADER_LEN).unwrap_or(&[]);
    let copy_zero = is_zeroed(header_bytes(SEGMENT_HEADER_COPY_AT));
    let copy = SegmentHeader::decode_copy(&head).filter(|c| c.segment_id == id);
    let (header, known) = match SegmentHeader::decode(&head) {
        // A keyed (v3) header has its copy. (A v2 header, key 0, has none.)
        Ok(Some(h)) if h.segment_id == id && (h.key == 0 || copy == Some(h)) => {
            (HeaderState::Valid, Some(h))
        }
        Ok(Some(h)) if h.segment_id == id && copy_zero => (HeaderState::Torn, Some(h)),
        Ok(Some(h)) if h.segment_id == id => (HeaderState::Damaged, Some(h)),
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
                    "written by another on-disk format version; this build reads formats v{} \
                     to v{} (there is no migration from earlier versions)",
                    walrus_block::OLDEST_FORMAT_VERSION,
                    walrus_block::FORMAT_VERSION
                ),
            ));
        }
        Ok(None) if copy.is_some() => (HeaderState::Torn, copy),
        // The page lost whole, its blocks' headers kept: torn as well.
        Ok(None) if copy_zero => (HeaderState::Torn, solve_key(&*file, id, options)?),
        Ok(None) | Err(_) => match copy {
            Some(c) => (HeaderState::Damaged, Some(c)),
            None => (HeaderState::Damaged, solve_key(&*file, id, options)?),
        },
    };
    let Some(known) = known else {
        let zero_header = is_zeroed(header_bytes(0)) && copy_zero;
        if !has_data(&*file, SEGMENT_DATA_OFFSET)? {
            // Created (maybe its header damaged since), but no block ever reached the disk.
            return Ok(Found::Empty(path));
        }
        // Both halves of the page zero: never synced (a sync covers the page), so its blocks
        // held only unsynced data — unless the page was synced when the segment was made, as
        // by a run that kept a journal, when it is damage. (That run, not this open: a
        // directory written without the journal and reopened with it has no such pages.)
        if zero_header && !journaled {
            return Ok(Found::Orphan(path));
        }
        if matches!(
            options.recovery,
            RecoveryMode::TolerateCorruptedTail | RecoveryMode::AbsoluteConsistency
        ) {
            return Ok(Found::Refused(data_error(
                &path,
                "not a readable Walrus segment file (neither its header nor the header's copy \
                 validates, and without the key they hold no block can be); \
                 RecoveryMode::PointInTime or RecoveryMode::SkipCorrupted open the directory \
                 leaving it untouched",
            )));
        }
        report.issues.push(RecoveryIssue::unreadable(path));
        return Ok(Found::Unreadable);
    };
    // Nothing more is claimed in a recovered segment unless it is a lane's tail (see `resume_claim`).
    let handle = Arc::new(SegmentHandle::new(
        id,
        file,
        segment_len,
        segment_len,
        known.key,
        known.keyed_frames,
    ));
    let walked = walk_blocks(&*handle.file, id, known.key, &path, segment_len, report)?;
    // A page synced before any block was handed out (the journal's way; the header says so):
    // one half of it zero with blocks behind is damage, whatever the watermarks say yet.
    let header = if header == HeaderState::Torn && known.synced && !walked.blocks.is_empty() {
        HeaderState::Damaged
    } else {
        header
    };
    Ok(Found::Segment(FoundSegment {
        id,
        path,
        handle,
        segment_len: walked.segment_len,
        blocks: walked.blocks,
        next_start: walked.next_start,
        gaps: walked.gaps,
        damaged: walked.damaged,
        header,
        known,
    }))
}

/// Queues zeroing of every non-zero page after the last block of `seg`, to the end of the file:
/// stale blocks are the ones handed out before the crash whose headers never reached the disk,
/// and allocation resumes over them. Claims by `fallocate` keep what a file holds, so a stale
/// frame left anywhere in the rest of the segment would sit inside a later block, where the
/// next recovery would take it for damage or, at the right offset, for an entry. Only the
/// file's data ranges are read (`SEEK_DATA`).
pub(super) fn clear_stale_tail(seg: &FoundSegment, erases: &mut Vec<Erase>) -> io::Result<()> {
    clear_stale(seg, seg.next_start, seg.segment_len, erases)
}

/// Queues zeroing of every non-zero page of the ranges the walk of `seg` stepped over from a
/// zero header (see [`Walked::gaps`](super::walk::Walked)): what a block whose header never
/// reached the disk left there would otherwise stay, unattributed, for every later open.
pub(super) fn clear_gaps(seg: &FoundSegment, erases: &mut Vec<Erase>) -> io::Result<()> {
    for &(from, to) in &seg.gaps {
        clear_stale(seg, from, to, erases)?;
    }
    Ok(())
}

/// Queues zeroing of every non-zero page of `seg` in `[from, window_end)`.
fn clear_stale(
    seg: &FoundSegment,
    from: u64,
    window_end: u64,
    erases: &mut Vec<Erase>,
) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = from;
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
                let to = from + page.len() as u64;
                // Adjacent pages make one range (up to a chunk: what `apply_erases` allocates).
                match erases.last_mut() {
                    Some(Erase::Zero {
                        handle,
                        from: start,
                        to: end,
                    }) if Arc::ptr_eq(handle, &seg.handle)
                        && *end == from
                        && to - *start <= CHUNK =>
                    {
                        *end = to;
                    }
                    _ => erases.push(Erase::Zero {
                        handle: seg.handle.clone(),
                        from,
                        to,
                    }),
                }
            }
        }
        pos += len as u64;
    }
    Ok(())
}

pub(super) fn apply_erases(erases: &[Erase]) -> io::Result<()> {
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
                handle.file.write_at(&header.encode(handle.key)?, *start)?;
                handle.mark_dirty();
            }
            Erase::Repair { handle, header } => {
                handle.file.write_at(&header.encode_page(), 0)?;
                handle.mark_dirty();
            }
        }
    }
    Ok(())
}
