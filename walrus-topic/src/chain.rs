//! Blocks as the engine tracks them in memory, and reading frames back out of them.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use walrus_block::checksum::crc32c;
use walrus_block::{BLOCK_HEADER_LEN, CorruptReason, FRAME_HEADER_LEN, FrameHeader};
use walrus_io::SegmentFile;

use crate::durability::FileSync;

/// Disk space of a segment is claimed this far ahead of the blocks handed out, so that a file
/// costs what it holds (plus at most this), in few `fallocate` calls.
const CLAIM_AHEAD: u64 = 1 << 20;

/// The same when claims write zeros (`zero_fill`, for `SyncEach`). Each claim's zeros go to
/// the device in one burst that the group syncs then queue behind: bursts of 256 KiB instead
/// of 1 MiB cut the 16-thread synced p99 by a fifth at the same throughput (docs/BENCHMARKS.md,
/// "Synced appends"), and the smaller lead costs less disk.
const ZERO_FILL_AHEAD: u64 = 256 << 10;
const _: () = assert!(ZERO_FILL_AHEAD < CLAIM_AHEAD && CLAIM_AHEAD.is_multiple_of(ZERO_FILL_AHEAD));

/// How far ahead claims reach, by how they claim.
const fn claim_step(zero_fill: bool) -> u64 {
    if zero_fill {
        ZERO_FILL_AHEAD
    } else {
        CLAIM_AHEAD
    }
}

/// An open segment file and whether it has writes not yet synced.
#[derive(Debug)]
pub(crate) struct SegmentHandle {
    pub(crate) id: u64,
    pub(crate) file: Arc<dyn SegmentFile>,
    /// The key of the segment's block headers (see `walrus_block::SegmentHeader::key`); 0 in a
    /// segment of format v2, which takes no new blocks.
    pub(crate) key: u32,
    /// A segment of format v4: the blocks handed out in it key their frames with `key` (see
    /// `walrus_block::SegmentHeader::keyed_frames`).
    pub(crate) keyed_frames: bool,
    sync: FileSync,
    /// The file's length: blocks lie below it.
    segment_len: u64,
    /// Disk space below this is claimed (see [`claim`](Self::claim)), but for `gaps`; read
    /// without the lock by claims that find their space already there.
    claimed: AtomicU64,
    /// Serialises the claims; holds the ranges below `claimed` a claim passed over (see
    /// [`claim`](Self::claim)), in no order.
    claiming: Mutex<Vec<(u64, u64)>>,
    /// Whether `claiming` holds a gap: a claim below `claimed` must then look.
    gaps: AtomicBool,
}

impl SegmentHandle {
    /// Extends the file to its full length if a power cut left it shorter (a segment never
    /// data-synced keeps only the sectors that landed), for a segment allocation resumes in:
    /// its appends, and the journal's replay of them, write anywhere below `segment_len`, and
    /// the length must be durable before they do (the sync that follows at recovery makes it
    /// so). Sparsely, by its last byte (zero, past every block): no space is reserved.
    pub(crate) fn restore_length(&self) -> io::Result<()> {
        let len = self.file.len()?;
        if len < self.segment_len {
            self.file.write_at(&[0], self.segment_len - 1)?;
        }
        Ok(())
    }

    /// A segment file of `segment_len` bytes whose space below `claimed` is allocated, and
    /// whose block headers are keyed with `key` (and the frames of the blocks it hands out too,
    /// with `keyed_frames`).
    pub(crate) fn new(
        id: u64,
        file: Arc<dyn SegmentFile>,
        claimed: u64,
        segment_len: u64,
        key: u32,
        keyed_frames: bool,
    ) -> Self {
        Self {
            id,
            file,
            key,
            keyed_frames,
            sync: FileSync::default(),
            segment_len,
            claimed: AtomicU64::new(claimed),
            claiming: Mutex::new(Vec::new()),
            gaps: AtomicBool::new(false),
        }
    }

    /// Allocates disk space for the file over `start..end` (and up to [`CLAIM_AHEAD`] past
    /// `end`, or [`ZERO_FILL_AHEAD`] with `zero_fill`), before a block there is written: a full
    /// disk then fails the block's allocation with `StorageFull`, before anything is written,
    /// instead of failing a write halfway. Whether it claimed anything (`false`: the space was
    /// there already).
    ///
    /// Claims run after the allocator handed their blocks out, in any order: one may start
    /// above the claimed end, passing over blocks handed out before it and not claimed yet, or
    /// given up when their own claim failed (a full disk). That space is kept as a gap: a later
    /// claim of a block in it claims it then, and given-up blocks, never written, stay holes
    /// (claiming them with each later block would make every failed append on a full disk
    /// raise what the next one needs).
    ///
    /// With `zero_fill` the space is claimed by writing zeros to it (see
    /// [`StoreOptions::with_zero_fill`](crate::StoreOptions::with_zero_fill)). Nothing was ever
    /// written above `claimed` or in a gap (a block is claimed before it is written), so the
    /// zeros overwrite nothing; recovery reads zeros there as space no block was written to,
    /// as it does a hole.
    pub(crate) fn claim(&self, start: u64, end: u64, zero_fill: bool) -> io::Result<bool> {
        if self.claimed.load(Ordering::Acquire) >= end && !self.gaps.load(Ordering::Acquire) {
            return Ok(false);
        }
        let mut gaps = self.claiming.lock();
        let fill = |from: u64, to: u64| {
            if zero_fill {
                write_zeros(&*self.file, from, to)
            } else {
                self.file.allocate(from, to - from)
            }
        };
        let claimed = self.claimed.load(Ordering::Acquire);
        let mut did = false;
        // Below the claimed end: the gaps `start..end` overlaps.
        let below = end.min(claimed);
        let mut i = 0;
        while i < gaps.len() {
            let (a, b) = gaps[i];
            let (from, to) = (a.max(start), b.min(below));
            if from >= to {
                i += 1;
                continue;
            }
            fill(from, to)?;
            did = true;
            gaps.swap_remove(i);
            if a < from {
                gaps.push((a, from));
            }
            if to < b {
                gaps.push((to, b));
            }
        }
        if claimed < end {
            let from = claimed.max(start);
            let to = end
                .next_multiple_of(claim_step(zero_fill))
                .min(self.segment_len)
                .max(end);
            fill(from, to)?;
            if claimed < from {
                gaps.push((claimed, from));
                // Before the new end is published: a claim that reads that end must see that
                // there is a gap below it (and take the lock).
                self.gaps.store(true, Ordering::Release);
            }
            self.claimed.store(to, Ordering::Release);
            did = true;
        }
        self.gaps.store(!gaps.is_empty(), Ordering::Release);
        Ok(did)
    }

    /// Claims the space of the next blocks after `at` ahead of time, for the background
    /// maintenance. With `zero_fill` it also starts writing the zeros out, so that the syncs of
    /// the appends that land there write their own pages, not the zeros. (Not a sync: a sync
    /// here, concurrent with a group commit's on the same file, could take a write-back error
    /// away from it.)
    pub(crate) fn claim_ahead(&self, at: u64, zero_fill: bool) -> io::Result<()> {
        let from = self.claimed.load(Ordering::Acquire);
        // Never past the segment's end (a claim past it would grow the file).
        let end = at
            .saturating_add(claim_step(zero_fill))
            .min(self.segment_len)
            .max(at);
        if self.claim(at, end, zero_fill)? && zero_fill {
            let to = self.claimed.load(Ordering::Acquire);
            let from = from.max(at);
            if to > from {
                self.file.start_write_back(from, to - from)?;
            }
        }
        Ok(())
    }

    /// Space below `at` is taken as claimed, and beyond it as not (a recovered segment that
    /// blocks are handed out from again).
    pub(crate) fn resume_claim(&self, at: u64) {
        let mut gaps = self.claiming.lock();
        gaps.clear();
        self.gaps.store(false, Ordering::Release);
        self.claimed.store(at, Ordering::Release);
    }

    /// Disk space claimed for the file so far.
    pub(crate) fn claimed(&self) -> u64 {
        self.claimed.load(Ordering::Acquire)
    }

    /// Records that the file has writes a sync must cover. Called after the write returned.
    pub(crate) fn mark_dirty(&self) {
        self.sync.mark();
    }

    /// Makes every write marked before this call durable (see [`FileSync`]).
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.sync.sync(|| self.file.sync_data())
    }

    /// Whether the file has marked writes no completed sync covers.
    pub(crate) fn is_dirty(&self) -> bool {
        self.sync.is_dirty()
    }
}

/// Writes zeros to `file` from `from` to `to`, in pieces of 64 KiB: each write holds the
/// file's write lock, which appends to the file wait for.
fn write_zeros(file: &dyn SegmentFile, from: u64, to: u64) -> io::Result<()> {
    const PIECE: u64 = 64 << 10;
    // `PIECE` is 64 KiB: the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation)]
    let zeros = vec![0u8; (to - from).min(PIECE) as usize];
    let mut at = from;
    while at < to {
        #[allow(clippy::cast_possible_truncation)]
        let n = (to - at).min(zeros.len() as u64) as usize;
        file.write_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Where a span of a block lies and what it holds (see [`Block::span`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    /// Byte position and length of the whole block in its segment file.
    pub(crate) start: u64,
    pub(crate) len: u64,
    /// File positions of the span's first frame and just past its last.
    pub(crate) data_start: u64,
    pub(crate) data_end: u64,
    /// Offsets of its first entry and just past its last.
    pub(crate) first_offset: u64,
    pub(crate) end_offset: u64,
    pub(crate) sealed: bool,
    /// The last span of its block: releasing it releases the block.
    pub(crate) releases: bool,
    /// The key of the block's frames (`walrus_block::BlockHeader::frame_key`).
    pub(crate) frame_key: u32,
}

/// One span of a topic's chain: a run of consecutive frames in one block. A block written
/// normally is one span; recovery splits a block around skipped damage into several.
///
/// `data_end` and `end_offset` grow as the writer appends; they are published with `Release`
/// after the bytes are written, and a reader that loads them with `Acquire` may read every frame
/// below them.
#[derive(Debug)]
pub(crate) struct Block {
    pub(crate) segment: u64,
    pub(crate) handle: Arc<SegmentHandle>,
    /// Byte position of the block in its segment file.
    pub(crate) start: u64,
    pub(crate) len: u64,
    pub(crate) first_offset: u64,
    /// Byte position of the span's first frame.
    data_start: u64,
    /// Releasing this span releases the block (it is the block's last).
    pub(crate) releases: bool,
    /// The key of the block's frames: its segment's key for a block of format v4, else 0.
    frame_key: u32,
    /// Byte position (in the file) just past the last written frame.
    data_end: AtomicU64,
    /// Offset just past the last written entry.
    end_offset: AtomicU64,
    /// The writer moved on: `data_end`/`end_offset` are final.
    sealed: AtomicBool,
    /// When it was sealed, in milliseconds since the Unix epoch (for age-based retention).
    sealed_at: AtomicU64,
    /// Marks left by lookups that walked the block: offset and position of decoded frames,
    /// relative to the span's first (8 bytes a mark, 1 KiB per MiB walked), at least
    /// [`INDEX_STEP`] apart, ascending, so that a later lookup walks at most that far.
    index: Mutex<Vec<(u32, u32)>>,
    /// The position from which a walked frame makes the next mark.
    next_mark: AtomicU64,
}

/// The most bytes of frames a lookup by offset walks once the block's marks reach it (4 KiB:
/// random lookups 2.3 µs, 8 KiB: 4.0 µs, 16 KiB: 6.8 µs, walking the block: 95 µs; `cargo bench
/// -p walrus-bench --bench lookup`).
pub(crate) const INDEX_STEP: u64 = 8 * 1024;

/// Now, in milliseconds since the Unix epoch (0 for a clock before it).
pub(crate) fn unix_millis(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Block {
    /// A block just handed to a writer: empty, its first entry will be `first_offset`.
    pub(crate) fn fresh(
        handle: Arc<SegmentHandle>,
        start: u64,
        len: u64,
        first_offset: u64,
    ) -> Self {
        let data_start = start + BLOCK_HEADER_LEN as u64;
        let frame_key = if handle.keyed_frames { handle.key } else { 0 };
        Self::span(
            handle,
            Span {
                start,
                len,
                data_start,
                data_end: data_start,
                first_offset,
                end_offset: first_offset,
                sealed: false,
                releases: true,
                frame_key,
            },
        )
    }

    /// A span of a block, as recovery found it.
    pub(crate) fn span(handle: Arc<SegmentHandle>, span: Span) -> Self {
        Self {
            segment: handle.id,
            handle,
            start: span.start,
            len: span.len,
            first_offset: span.first_offset,
            data_start: span.data_start,
            releases: span.releases,
            frame_key: span.frame_key,
            data_end: AtomicU64::new(span.data_end),
            end_offset: AtomicU64::new(span.end_offset),
            sealed: AtomicBool::new(span.sealed),
            sealed_at: AtomicU64::new(if span.sealed {
                unix_millis(std::time::SystemTime::now())
            } else {
                0
            }),
            index: Mutex::new(Vec::new()),
            next_mark: AtomicU64::new(span.data_start + INDEX_STEP),
        }
    }

    /// The key of the block's frames (0: not keyed).
    pub(crate) fn frame_key(&self) -> u32 {
        self.frame_key
    }

    /// Where a walk to `offset` starts: the marked frame at or before it, else the first.
    pub(crate) fn walk_start(&self, offset: u64) -> u64 {
        let Some(rel) = offset.checked_sub(self.first_offset) else {
            return self.data_start;
        };
        let rel = u32::try_from(rel).unwrap_or(u32::MAX);
        let index = self.index.lock();
        let i = index.partition_point(|&(o, _)| o <= rel);
        i.checked_sub(1)
            .and_then(|i| index.get(i))
            .map_or(self.data_start, |&(_, pos)| {
                self.data_start + u64::from(pos)
            })
    }

    /// A walk decoded the frame of `offset` at `pos`: marks it if it lies [`INDEX_STEP`] past
    /// the last mark (a walk inside the marked part leaves nothing).
    pub(crate) fn walked(&self, offset: u64, pos: u64) {
        if pos < self.next_mark.load(Ordering::Relaxed) {
            return;
        }
        let rel = offset
            .checked_sub(self.first_offset)
            .and_then(|o| u32::try_from(o).ok())
            .zip(
                pos.checked_sub(self.data_start)
                    .and_then(|p| u32::try_from(p).ok()),
            );
        let Some((rel_offset, rel_pos)) = rel else {
            return; // beyond what a mark holds: later lookups walk from the last mark
        };
        let mut index = self.index.lock();
        let last = index.last().map_or(0, |&(_, p)| u64::from(p));
        if u64::from(rel_pos) >= last + INDEX_STEP
            && index.last().is_none_or(|&(o, _)| o < rel_offset)
        {
            index.push((rel_offset, rel_pos));
            self.next_mark.store(pos + INDEX_STEP, Ordering::Relaxed);
        }
    }

    /// The segment file the block lives in.
    pub(crate) fn file(&self) -> &dyn SegmentFile {
        &*self.handle.file
    }

    /// Byte position of the span's first frame.
    pub(crate) fn data_start(&self) -> u64 {
        self.data_start
    }

    /// One past the block's last byte.
    pub(crate) fn end(&self) -> u64 {
        self.start + self.len
    }

    pub(crate) fn data_end(&self) -> u64 {
        self.data_end.load(Ordering::Acquire)
    }

    pub(crate) fn end_offset(&self) -> u64 {
        self.end_offset.load(Ordering::Acquire)
    }

    pub(crate) fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    /// Publishes newly written frames (writer only).
    pub(crate) fn publish(&self, data_end: u64, end_offset: u64) {
        self.data_end.store(data_end, Ordering::Release);
        self.end_offset.store(end_offset, Ordering::Release);
    }

    pub(crate) fn seal(&self) {
        self.sealed_at
            .store(unix_millis(std::time::SystemTime::now()), Ordering::Relaxed);
        self.sealed.store(true, Ordering::Release);
    }

    /// When the block was sealed, in milliseconds since the Unix epoch (if it is sealed).
    pub(crate) fn sealed_at(&self) -> Option<u64> {
        self.is_sealed()
            .then(|| self.sealed_at.load(Ordering::Relaxed))
    }

    /// Dates a block found sealed at open (by its file's modification time).
    pub(crate) fn set_sealed_at(&self, millis: u64) {
        self.sealed_at.store(millis, Ordering::Relaxed);
    }
}

/// Where a frame is: its block and its byte position in the segment file.
pub(crate) type FramePos = (Arc<Block>, u64);

/// A frame read back from a block.
#[derive(Debug)]
pub(crate) struct ReadFrame {
    pub(crate) offset: u64,
    /// Total frame length (header + payload).
    pub(crate) len: u64,
}

/// A window of one block's bytes, refilled in large reads so that sequential reading costs one
/// system call per window rather than one per entry.
#[derive(Debug)]
pub(crate) struct ReadBuf {
    /// (segment, block start) the window belongs to.
    owner: Option<(u64, u64)>,
    /// File position of `bytes[0]`.
    base: u64,
    bytes: Vec<u8>,
    /// How much one refill reads (at least).
    window: u64,
}

impl Default for ReadBuf {
    fn default() -> Self {
        Self {
            owner: None,
            base: 0,
            bytes: Vec::new(),
            window: WINDOW,
        }
    }
}

/// Size of one read-ahead window.
const WINDOW: u64 = 256 * 1024;

impl ReadBuf {
    /// A window for one lookup by offset: the walk from a mark and the entry, not a read-ahead.
    /// A longer walk (no marks yet: after a reopen, or past the marked part) doubles it on
    /// each refill, up to the read-ahead window.
    pub(crate) fn point() -> Self {
        Self {
            window: 2 * INDEX_STEP,
            ..Self::default()
        }
    }

    /// Reads the frame at file position `pos` of `block`, which must lie below `limit` (a
    /// published `data_end`). Returns the frame and its payload, borrowed from the window.
    pub(crate) fn frame_at(
        &mut self,
        block: &Block,
        pos: u64,
        limit: u64,
    ) -> io::Result<(ReadFrame, &[u8])> {
        let (frame, payload_crc) = self.header_at(block, pos, limit)?;
        self.ensure(block, pos, frame.len, limit)?;
        let rel = (pos - self.base) as usize;
        // The header was proved intact by `header_at`; only the payload is left to check.
        let payload = self
            .bytes
            .get(rel + FRAME_HEADER_LEN..rel + frame.len as usize)
            .ok_or_else(|| corrupt_at(block, pos, "short read".into()))?;
        if crc32c(payload) != payload_crc {
            return Err(corrupt_at(
                block,
                pos,
                CorruptReason::PayloadChecksum.to_string(),
            ));
        }
        Ok((frame, payload))
    }

    /// Reads and checks only the header of the frame at `pos` (below `limit`, as for
    /// [`frame_at`](Self::frame_at)): enough to step over the frame, and to step over it even
    /// when its payload is damaged. Returns the frame and its payload's CRC32C.
    pub(crate) fn header_at(
        &mut self,
        block: &Block,
        pos: u64,
        limit: u64,
    ) -> io::Result<(ReadFrame, u32)> {
        if pos + FRAME_HEADER_LEN as u64 > limit {
            return Err(corrupt_at(
                block,
                pos,
                format!("frame header crosses the written end {limit}"),
            ));
        }
        self.ensure(block, pos, FRAME_HEADER_LEN as u64, limit)?;
        let rel = (pos - self.base) as usize;
        let header_bytes = self
            .bytes
            .get(rel..rel + FRAME_HEADER_LEN)
            .ok_or_else(|| corrupt_at(block, pos, "short read".into()))?;
        let header = match FrameHeader::decode(header_bytes, block.frame_key) {
            Ok(Some(h)) => h,
            Ok(None) => {
                return Err(corrupt_at(
                    block,
                    pos,
                    "no frame where a written entry should be".into(),
                ));
            }
            Err(reason) => return Err(corrupt_at(block, pos, reason.to_string())),
        };
        let len = FRAME_HEADER_LEN as u64 + u64::from(header.len);
        if pos + len > limit {
            return Err(corrupt_at(
                block,
                pos,
                format!("frame of {len} bytes crosses the written end {limit}"),
            ));
        }
        Ok((
            ReadFrame {
                offset: header.offset,
                len,
            },
            header.payload_crc,
        ))
    }

    /// Makes `[pos, pos + len)` of `block` present in the window, reading up to `limit`.
    fn ensure(&mut self, block: &Block, pos: u64, len: u64, limit: u64) -> io::Result<()> {
        let owner = Some((block.segment, block.start));
        if self.owner == owner
            && pos >= self.base
            && pos + len <= self.base + self.bytes.len() as u64
        {
            return Ok(());
        }
        let want = len.max(self.window).min(limit - pos).max(len);
        // The window is forgotten before it is overwritten: a failed or short read leaves
        // nothing that a retry could take for file bytes.
        self.owner = None;
        if want <= WINDOW && self.bytes.capacity() as u64 > 2 * WINDOW {
            // A long frame grew the window past the read-ahead; a reader kept for the life of
            // a consumer must not hold the largest frame it ever read.
            self.bytes = Vec::new();
        }
        self.bytes.resize(want as usize, 0);
        block.file().read_exact_at(&mut self.bytes, pos)?;
        self.owner = owner;
        self.base = pos;
        self.window = (self.window * 2).min(WINDOW.max(self.window));
        Ok(())
    }
}

/// An `InvalidData` error naming the file and byte position of a frame that is not intact.
fn corrupt_at(block: &Block, pos: u64, what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} at byte {pos}: {what}", block.file().path().display()),
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use walrus_io::sim::{Fault, FaultRule, OpKind, SimStorage};
    use walrus_io::{SegmentFile, Storage};

    use super::*;

    #[test]
    fn marks_are_far_apart_ascending_and_never_past_their_frame() {
        let sim = SimStorage::new(2);
        let handle = Arc::new(SegmentHandle::new(
            0,
            segment(&sim, 4 << 20),
            4096,
            4 << 20,
            1,
            true,
        ));
        let block = Block::fresh(handle, 4096, 1 << 20, 1000);
        let start = block.data_start();
        // Nothing marked: every walk starts at the first frame, also before the block.
        assert_eq!(block.walk_start(5000), start);
        assert_eq!(block.walk_start(10), start);
        // Frames 100 bytes apart: a mark once a walk is a step past the last.
        for i in 0..400u64 {
            block.walked(1000 + i, start + i * 100);
        }
        let marks = block.index.lock().clone();
        assert_eq!(marks.len(), (400 * 100 - 1) / INDEX_STEP as usize);
        assert!(
            marks
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && u64::from(w[1].1 - w[0].1) >= INDEX_STEP)
        );
        // A walk from a mark back over marked frames leaves nothing new.
        block.walked(1000 + 90, start + 9000);
        assert_eq!(*block.index.lock(), marks);
        // A lookup starts at the last mark at or before it, never after its frame.
        let (o, p) = marks[1];
        assert_eq!(block.walk_start(1000 + u64::from(o)), start + u64::from(p));
        assert_eq!(
            block.walk_start(1000 + u64::from(o) + 1),
            start + u64::from(p)
        );
        assert_eq!(
            block.walk_start(1000 + u64::from(o) - 1),
            start + u64::from(marks[0].1)
        );
        assert_eq!(
            block.walk_start(u64::MAX),
            start + u64::from(marks[marks.len() - 1].1)
        );
    }

    /// A window grown for a long frame shrinks back to the read-ahead at the next refill (even
    /// one that fails), and the reads after a failed refill return the file's frames.
    #[test]
    fn a_window_shrinks_after_a_long_frame_and_refills_after_a_failed_read() {
        let sim = SimStorage::new(4);
        let handle = Arc::new(SegmentHandle::new(
            0,
            segment(&sim, 8 << 20),
            4096,
            8 << 20,
            1,
            true,
        ));
        let block = Block::fresh(handle, 4096, 4 << 20, 0);
        let start = block.data_start();
        let mut frames = Vec::new();
        let long = vec![7u8; 2 << 20];
        walrus_block::encode_frame(&mut frames, 0, walrus_block::FrameKind::single(), &long, 1)
            .unwrap();
        for o in 1..100u64 {
            walrus_block::encode_frame(
                &mut frames,
                o,
                walrus_block::FrameKind::single(),
                &[o as u8; 900],
                1,
            )
            .unwrap();
        }
        block.file().write_at(&frames, start).unwrap();
        let limit = start + frames.len() as u64;
        let mut buf = ReadBuf::default();
        let (frame, payload) = buf.frame_at(&block, start, limit).unwrap();
        assert_eq!((frame.offset, payload.len()), (0, long.len()));
        let mut at = start + frame.len;
        // Past the long frame's window: the next refill reads a read-ahead window into a
        // buffer of that size.
        sim.inject(FaultRule::new(Fault::Eio).op(OpKind::Read));
        assert!(buf.frame_at(&block, at, limit).is_err());
        assert!(
            buf.bytes.capacity() as u64 <= 2 * WINDOW,
            "{}",
            buf.bytes.capacity()
        );
        for o in 1..100u64 {
            let (frame, payload) = buf.frame_at(&block, at, limit).unwrap();
            assert_eq!((frame.offset, payload), (o, &[o as u8; 900][..]));
            at += frame.len;
        }
        assert!(buf.bytes.capacity() as u64 <= 2 * WINDOW);
    }

    fn segment(sim: &SimStorage, segment_len: u64) -> Arc<dyn SegmentFile> {
        sim.create_dir_all(Path::new("/d")).unwrap();
        let file = sim.create(Path::new("/d/s"), segment_len).unwrap();
        file.write_at(&[0xAB; 4096], 0).unwrap();
        file
    }

    #[test]
    fn a_zero_fill_claim_writes_zeros_only_above_what_was_claimed() {
        let sim = SimStorage::new(1);
        let file = segment(&sim, 4 << 20);
        let handle = SegmentHandle::new(0, file.clone(), 4096, 4 << 20, 1, true);
        assert!(handle.claim(4096, 8192, true).unwrap());
        // Rounded up to the next step of zeros, and the claimed header page kept.
        let step = ZERO_FILL_AHEAD;
        assert_eq!(handle.claimed.load(Ordering::Acquire), step);
        let mut buf = vec![1u8; step as usize];
        file.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0xAB));
        assert!(buf[4096..].iter().all(|&b| b == 0));
        assert!(!handle.claim(4096, step, true).unwrap(), "already claimed");
        // Ahead of a block one page below the claim: one more step, zeros written back but
        // not synced.
        handle.claim_ahead(step - 4096, true).unwrap();
        assert_eq!(handle.claimed.load(Ordering::Acquire), 2 * step);
        assert_eq!(file.len().unwrap(), 4 << 20);
    }

    #[test]
    fn fallocate_claims_take_larger_steps_than_zero_fill_claims() {
        let sim = SimStorage::new(3);
        let file = segment(&sim, 4 << 20);
        let handle = SegmentHandle::new(0, file, 4096, 4 << 20, 1, true);
        assert!(handle.claim(4096, 8192, false).unwrap());
        assert_eq!(handle.claimed.load(Ordering::Acquire), CLAIM_AHEAD);
        // Never past the end of the file.
        assert!(handle.claim(8192, (4 << 20) - 4096, true).unwrap());
        assert_eq!(handle.claimed.load(Ordering::Acquire), 4 << 20);
    }

    #[test]
    fn a_full_disk_fails_a_zero_fill_claim_and_a_later_one_succeeds() {
        let sim = SimStorage::new(2);
        let file = segment(&sim, 4 << 20);
        let handle = SegmentHandle::new(0, file.clone(), 4096, 4 << 20, 1, true);
        sim.inject(
            FaultRule::new(Fault::Enospc)
                .op(OpKind::Write)
                .nth(3)
                .forever(),
        );
        let e = handle.claim(4096, 8192, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
        assert_eq!(
            handle.claimed.load(Ordering::Acquire),
            4096,
            "a failed claim claims nothing"
        );
        sim.clear_faults();
        assert!(handle.claim(4096, 8192, true).unwrap());
        assert_eq!(handle.claimed.load(Ordering::Acquire), ZERO_FILL_AHEAD);
        let mut buf = vec![1u8; ZERO_FILL_AHEAD as usize - 4096];
        file.read_exact_at(&mut buf, 4096).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    /// Blocks given up when their claims failed (a full disk) are not claimed with the next
    /// block: what an append needs does not grow with the appends that failed before it.
    #[test]
    fn a_claim_leaves_the_given_up_blocks_below_its_own_alone() {
        for zero_fill in [false, true] {
            let sim = SimStorage::new(4);
            let file = segment(&sim, 64 << 20);
            let handle = SegmentHandle::new(0, file.clone(), 4096, 64 << 20, 1, true);
            // Marks where the given-up blocks lie: a claim over them would zero them (or, by
            // `fallocate`, allocate them).
            file.write_at(&[0xCD; 4096], 1 << 20).unwrap();
            sim.inject(FaultRule::new(Fault::Enospc).forever());
            for block in 0..10 {
                let start = 4096 + (block << 20);
                let e = handle
                    .claim(start, start + (1 << 20), zero_fill)
                    .unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
            }
            sim.clear_faults();
            let start = 4096 + (10 << 20);
            assert!(handle.claim(start, start + (1 << 20), zero_fill).unwrap());
            let mut mark = [0u8; 4096];
            file.read_exact_at(&mut mark, 1 << 20).unwrap();
            assert_eq!(
                mark, [0xCD; 4096],
                "zero_fill {zero_fill}: a given-up block claimed"
            );
        }
        // By `fallocate`: the one allocation starts at the block.
        let sim = SimStorage::new(5);
        let file = Arc::new(Allocations {
            file: segment(&sim, 64 << 20),
            calls: Mutex::new(Vec::new()),
        });
        let handle = SegmentHandle::new(0, file.clone(), 4096, 64 << 20, 1, true);
        sim.inject(FaultRule::new(Fault::Enospc).op(OpKind::Allocate).forever());
        assert!(handle.claim(4096, 4096 + (1 << 20), false).is_err());
        sim.clear_faults();
        let start = 4096 + (1 << 20);
        assert!(handle.claim(start, start + (1 << 20), false).unwrap());
        let calls = file.calls.lock().clone();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(calls[1].0, start, "{calls:?}");
    }

    /// Claims run in any order after their blocks were handed out: a block whose claim comes
    /// after a later block's (or after the maintenance claimed ahead of it) is still claimed,
    /// never written into space no claim covered.
    #[test]
    fn a_block_claimed_after_a_later_one_is_claimed_too() {
        let (a, b) = (
            (4096, 4096 + (16 << 10)),
            (4096 + (16 << 10), 4096 + (32 << 10)),
        );
        // By `fallocate`: B's claim first, then A's allocates A.
        let sim = SimStorage::new(6);
        let file = Arc::new(Allocations {
            file: segment(&sim, 64 << 20),
            calls: Mutex::new(Vec::new()),
        });
        let handle = SegmentHandle::new(0, file.clone(), 4096, 64 << 20, 1, true);
        assert!(handle.claim(b.0, b.1, false).unwrap());
        assert!(handle.claim(a.0, a.1, false).unwrap());
        let calls = file.calls.lock().clone();
        assert!(
            calls.iter().any(|&(o, l)| o <= a.0 && o + l >= a.1),
            "A never allocated: {calls:?}"
        );
        assert!(!handle.claim(a.0, a.1, false).unwrap(), "claimed twice");
        // With zeros: the maintenance claims ahead from B's start before A's claim.
        let sim = SimStorage::new(7);
        let file = segment(&sim, 64 << 20);
        file.write_at(&[0xCD; 4096], a.0 + 4096).unwrap();
        let handle = SegmentHandle::new(0, file.clone(), 4096, 64 << 20, 1, true);
        handle.claim_ahead(b.0, true).unwrap();
        let mut mark = [0u8; 4096];
        file.read_exact_at(&mut mark, a.0 + 4096).unwrap();
        assert_eq!(mark, [0xCD; 4096], "claimed ahead over A");
        assert!(handle.claim(a.0, a.1, true).unwrap());
        file.read_exact_at(&mut mark, a.0 + 4096).unwrap();
        assert_eq!(mark, [0; 4096], "A not claimed");
    }

    /// A file that records the ranges it was asked to allocate.
    #[derive(Debug)]
    struct Allocations {
        file: Arc<dyn SegmentFile>,
        calls: Mutex<Vec<(u64, u64)>>,
    }

    impl SegmentFile for Allocations {
        fn path(&self) -> &Path {
            self.file.path()
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.file.write_at(buf, offset)
        }
        fn write_vectored_at(&self, bufs: &[std::io::IoSlice<'_>], offset: u64) -> io::Result<()> {
            self.file.write_vectored_at(bufs, offset)
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            self.file.read_at(buf, offset)
        }
        fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
            self.calls.lock().push((offset, len));
            self.file.allocate(offset, len)
        }
        fn sync_data(&self) -> io::Result<()> {
            self.file.sync_data()
        }
        fn len(&self) -> io::Result<u64> {
            self.file.len()
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }
}
