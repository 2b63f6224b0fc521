//! Reading what is on disk, without changing it: the blocks of a segment (found by their
//! headers, resynchronising over damaged or missing ones) and the frames of a block (found by
//! decoding, resynchronising over damaged ones).

use std::io;
use std::path::Path;

use walrus_block::{
    BLOCK_ALIGN, BLOCK_HEADER_LEN, BlockHeader, FRAME_HEADER_LEN, Frame, FrameDecoder, FrameKind,
    SEGMENT_DATA_OFFSET, is_zeroed, resync_budget, resync_within,
};
use walrus_io::SegmentFile;

use super::{Action, Problem, RecoveryIssue, RecoveryReport};

/// A block found on disk.
#[derive(Debug, Clone)]
pub(super) struct FoundBlock {
    pub(super) header: BlockHeader,
    /// Byte position of the block in its segment file.
    pub(super) start: u64,
    /// The key of its frames (`BlockHeader::frame_key`).
    pub(super) frame_key: u32,
}

/// The blocks of one segment, and where the next block would start.
#[derive(Debug)]
pub(super) struct Walked {
    pub(super) blocks: Vec<FoundBlock>,
    /// Where allocation may resume: after the last block, or the segment length when the walk ended
    /// on a damaged header (never allocate over damage).
    pub(super) next_start: u64,
    pub(super) segment_len: u64,
    /// Ranges the walk stepped over from a zero header to the next valid one: space of a block
    /// handed out whose header never reached the disk (it is written with the block's first
    /// frames, so its data was never synced either), which may hold some of its sectors.
    pub(super) gaps: Vec<(u64, u64)>,
    /// A damaged block header was stepped over: bytes no found block accounts for.
    pub(super) damaged: bool,
}

/// Reads `buf.len()` bytes at `pos`; whatever lies past the end of the file reads as zeros.
pub(super) fn read_zero_filled(file: &dyn SegmentFile, buf: &mut [u8], pos: u64) -> io::Result<()> {
    let got = file.read_at(buf, pos)?;
    if let Some(rest) = buf.get_mut(got..) {
        rest.fill(0);
    }
    Ok(())
}

fn decode_block_header(raw: &[u8], segment: u64, key: u32) -> Option<BlockHeader> {
    BlockHeader::decode(raw, key)
        .ok()
        .flatten()
        .filter(|h| h.segment_id == segment)
}

/// Walks the blocks of segment `segment`, whose key is `key`, by their headers. A header that
/// is damaged, or zero where later blocks exist (a block handed out whose header a power cut
/// lost, or damage), is stepped over by looking for the next valid header at block alignment in
/// the file's data. Only headers checksummed with the key count: entry data that holds the
/// bytes of a block header (it may: users choose it) is never taken for one.
pub(super) fn walk_blocks(
    file: &dyn SegmentFile,
    segment: u64,
    key: u32,
    path: &Path,
    segment_len: u64,
    report: &mut RecoveryReport,
) -> io::Result<Walked> {
    let mut blocks = Vec::new();
    let mut gaps = Vec::new();
    let mut any_damage = false;
    let mut pos = SEGMENT_DATA_OFFSET;
    let mut raw = [0u8; BLOCK_HEADER_LEN];
    let mut segment_len = segment_len;
    while pos + BLOCK_HEADER_LEN as u64 <= segment_len {
        read_zero_filled(file, &mut raw, pos)?;
        if let Some(header) = decode_block_header(&raw, segment, key) {
            let len = header.block_len;
            let frame_key = header.frame_key(key);
            blocks.push(FoundBlock {
                header,
                start: pos,
                frame_key,
            });
            pos += len;
            // A block longer than a normal segment has a segment of its own.
            segment_len = segment_len.max(pos);
            continue;
        }
        let damaged = !is_zeroed(&raw);
        any_damage |= damaged;
        if damaged {
            report.issues.push(RecoveryIssue {
                topic: String::new(),
                offset: 0,
                file: path.to_path_buf(),
                position: pos,
                problem: Problem::CorruptBlockHeader,
                action: Action::Skipped,
            });
        }
        match next_header(file, segment, key, pos + BLOCK_ALIGN, segment_len)? {
            Some(next) => {
                if !damaged {
                    gaps.push((pos, next));
                }
                pos = next;
            }
            None => {
                // Nothing valid after it. A zero header is the end of the blocks handed out;
                // a damaged one may hide a block: never allocate over it.
                let next_start = if damaged { segment_len } else { pos };
                return Ok(Walked {
                    blocks,
                    next_start,
                    segment_len,
                    gaps,
                    damaged: any_damage,
                });
            }
        }
    }
    Ok(Walked {
        blocks,
        next_start: pos.min(segment_len),
        segment_len,
        gaps,
        damaged: any_damage,
    })
}

/// The position of the next valid block header of `segment` at or after `from`, looking only
/// where the file holds data (preallocated space is skipped without reading it).
fn next_header(
    file: &dyn SegmentFile,
    segment: u64,
    key: u32,
    from: u64,
    segment_len: u64,
) -> io::Result<Option<u64>> {
    let mut raw = [0u8; BLOCK_HEADER_LEN];
    let mut pos = from.next_multiple_of(BLOCK_ALIGN);
    while pos + BLOCK_HEADER_LEN as u64 <= segment_len {
        let Some(data) = file.next_data(pos)? else {
            return Ok(None);
        };
        pos = pos.max(data.start - data.start % BLOCK_ALIGN);
        let end = data.end.min(segment_len);
        while pos < end && pos + BLOCK_HEADER_LEN as u64 <= segment_len {
            read_zero_filled(file, &mut raw, pos)?;
            if decode_block_header(&raw, segment, key).is_some() {
                return Ok(Some(pos));
            }
            pos += BLOCK_ALIGN;
        }
        pos = pos.max(end.next_multiple_of(BLOCK_ALIGN));
    }
    Ok(None)
}

/// Whether the file holds any non-zero byte from `from` on.
pub(super) fn has_data(file: &dyn SegmentFile, from: u64) -> io::Result<bool> {
    const CHUNK: u64 = 1 << 20;
    let len = file.len()?;
    let mut pos = from;
    let mut buf = vec![0u8; CHUNK as usize];
    while pos < len {
        let Some(data) = file.next_data(pos)? else {
            return Ok(false);
        };
        pos = pos.max(data.start);
        let end = data.end.min(len);
        while pos < end {
            let n = CHUNK.min(end - pos) as usize;
            let chunk = buf.get_mut(..n).unwrap_or_default();
            read_zero_filled(file, chunk, pos)?;
            if !is_zeroed(chunk) {
                return Ok(true);
            }
            pos += n as u64;
        }
    }
    Ok(false)
}

/// One past the last byte in `from..to` that may hold data (`from` if none): the end of the
/// last data range of the file that starts below `to`.
fn written_end(file: &dyn SegmentFile, from: u64, to: u64) -> io::Result<u64> {
    let mut end = from;
    let mut pos = from;
    while pos < to {
        let Some(data) = file.next_data(pos)? else {
            break;
        };
        if data.start >= to || data.end <= pos {
            break;
        }
        end = data.end.min(to);
        pos = data.end;
    }
    Ok(end)
}

/// One valid frame of a block.
#[derive(Debug, Clone, Copy)]
pub(super) struct FoundFrame {
    pub(super) offset: u64,
    pub(super) kind: FrameKind,
    /// Absolute file positions of the frame.
    pub(super) pos: u64,
    pub(super) end: u64,
    /// Bytes that are neither a valid frame nor zero lie between the previous frame (or the
    /// block's data start) and this one.
    pub(super) after_damage: Option<u64>,
}

/// The frames of one block, in position order.
#[derive(Debug)]
pub(super) struct ScannedBlock {
    pub(super) frames: Vec<FoundFrame>,
    /// Damage after the last valid frame: where it starts.
    pub(super) trailing_damage: Option<u64>,
    /// One past the last non-zero byte of the data area (what a cut must zero up to).
    pub(super) dirty_end: u64,
}

/// Where [`resync_within`] finds the next frame (keyed with `key`) of a block whose entries
/// start at `first` in `data` (the block's data area), at or after byte `from`; a frame whose
/// offset that position cannot hold is passed over. In a block of format v3 frames are not
/// keyed, so entry data can hold one that checks: a block's frames hold consecutive offsets
/// from `first`, each at least a frame header long, so the frame at byte `p` holds an offset in
/// `first..=first + p / FRAME_HEADER_LEN`. (Taken, one naming an offset near the format's last
/// would raise the topic's next offset there, and fail every later append.)
fn resync_plausible(
    data: &[u8],
    from: usize,
    first: u64,
    budget: &mut usize,
    key: u32,
) -> Option<usize> {
    let mut from = from;
    loop {
        let e = resync_within(data, from, budget, key)?;
        let most = first.saturating_add((e.pos / FRAME_HEADER_LEN) as u64);
        if (first..=most).contains(&e.offset) {
            return Some(e.pos);
        }
        from = e.pos + 1;
    }
}

/// Decodes every valid frame of the block at `block.start`, stepping over damage by
/// resynchronising on the next valid frame.
pub(super) fn scan_block(file: &dyn SegmentFile, block: &FoundBlock) -> io::Result<ScannedBlock> {
    let data_start = block.start + BLOCK_HEADER_LEN as u64;
    let block_end = data_start + block.header.data_capacity();
    // Only the written part is read: what lies past the file's last data in the block reads as
    // zeros, so a mostly empty block costs what it holds.
    let len = written_end(file, data_start, block_end)? - data_start;
    let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
    read_zero_filled(file, &mut data, data_start)?;
    let dirty_end = data_start
        + data
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |i| i as u64 + 1);
    let mut frames = Vec::new();
    let mut at = 0usize;
    let mut damage: Option<u64> = None;
    // One budget for every resync in the block: entry data can hold valid frames between
    // damage, and a budget per resync would make the walk quadratic in the block's length.
    let mut budget = resync_budget(data.len());
    loop {
        let mut decoder = FrameDecoder::at(&data, at, block.frame_key);
        let stop = loop {
            match decoder.next_frame() {
                Frame::Entry(e) => {
                    frames.push(FoundFrame {
                        offset: e.offset,
                        kind: e.kind,
                        pos: data_start + e.pos as u64,
                        end: data_start + e.end() as u64,
                        after_damage: damage.take(),
                    });
                }
                Frame::End { at } => {
                    // Zeros to the end, or zeros and then something: a sector that never
                    // reached the disk, or damage.
                    let rest = data.get(at..).unwrap_or_default();
                    if is_zeroed(rest) {
                        break None;
                    }
                    break Some(at);
                }
                Frame::Torn { at } | Frame::Corrupt { at, .. } => break Some(at),
            }
        };
        let Some(bad) = stop else {
            break;
        };
        damage.get_or_insert(data_start + bad as u64);
        match resync_plausible(
            &data,
            bad + 1,
            block.header.first_offset,
            &mut budget,
            block.frame_key,
        ) {
            Some(pos) => at = pos,
            None => break,
        }
    }
    Ok(ScannedBlock {
        frames,
        trailing_damage: damage,
        dirty_end,
    })
}

#[cfg(test)]
mod tests {
    use walrus_block::{FrameKind, MAX_OFFSET, encode_frame};

    use super::*;

    /// In a block of format v3 (frames not keyed), entry data may hold a frame that checks; one
    /// naming an offset its position cannot hold is passed over, whatever its checksums.
    #[test]
    fn an_unkeyed_frame_at_an_impossible_offset_is_passed_over() {
        let mut inner = Vec::new();
        encode_frame(&mut inner, MAX_OFFSET - 1, FrameKind::single(), b"evil", 0).unwrap();
        let mut data = Vec::new();
        encode_frame(&mut data, 40, FrameKind::single(), b"zero", 0).unwrap();
        let carrier_at = data.len();
        encode_frame(&mut data, 41, FrameKind::single(), &inner, 0).unwrap();
        let next_at = data.len();
        encode_frame(&mut data, 42, FrameKind::single(), b"two", 0).unwrap();
        let mut budget = resync_budget(data.len());
        assert_eq!(
            resync_plausible(&data, carrier_at + 1, 40, &mut budget, 0),
            Some(next_at)
        );
        // The frame inside is valid, just not plausible.
        assert!(
            resync_within(&data, carrier_at + 1, &mut resync_budget(data.len()), 0)
                .is_some_and(|e| e.offset == MAX_OFFSET - 1)
        );
    }
}
