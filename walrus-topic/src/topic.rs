//! One topic: its writer (appends, batches, block roll-over), its chain of blocks, and its
//! cursor reader (consuming reads, peeks, batch reads, commits).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use walrus_block::{
    BLOCK_ALIGN, BLOCK_HEADER_LEN, BlockHeader, FRAME_HEADER_LEN, FrameKind, MAX_BATCH_ENTRIES,
    encode_frame_header, frame_len,
};
use walrus_io::WriteOp;

use crate::chain::{Block, ReadBuf};
use crate::error::on_topic;
use crate::progress::{MarkState, Progress};
use crate::shared::Shared;

/// A topic: writer, chain, reader.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) name: Arc<str>,
    /// The allocation lane new blocks come from.
    lane: usize,
    writer: Mutex<Writer>,
    /// Blocks not yet released by the reader, oldest first. The last one is the writer's.
    chain: RwLock<VecDeque<Arc<Block>>>,
    /// Written, durable and listed-for-sync ends, shared with the store-wide sync.
    pub(crate) progress: Arc<Progress>,
    /// Mirror of the reader's persisted cursor, so the writer can release blocks it seals after
    /// they were already consumed without taking the reader's lock.
    persisted: AtomicU64,
    reader: Mutex<Reader>,
}

#[derive(Debug)]
struct Writer {
    /// The block being filled, if any.
    block: Option<Arc<Block>>,
    /// File position of the next frame in `block`.
    pos: u64,
    next_offset: u64,
    next_chain_seq: u64,
    /// Set after recovery left a gap: the next block records that the topic's entries ended
    /// here (its `prev_end`).
    gap_from: Option<u64>,
    /// Length of the topic's newest block when the writer has none (after recovery), 0 for a
    /// topic without blocks: where the next block's length grows from.
    last_len: u64,
    /// Frame headers of the append in progress (reused between appends).
    headers: Vec<u8>,
}

#[derive(Debug)]
struct Reader {
    /// Next offset a consuming read hands out.
    cursor: u64,
    /// Cursor value last written to the cursor file.
    persisted: u64,
    generation: u64,
    pair: Option<u64>,
    /// Consuming reads since the last persist.
    unpersisted: u32,
    /// Where the frame at `cursor` is, when known.
    pos: Option<(Arc<Block>, u64)>,
    buf: ReadBuf,
}

/// Length of a topic's first block: an idle topic costs this much disk.
pub(crate) const FIRST_BLOCK_LEN: u64 = BLOCK_ALIGN;

/// Length of the block after one of `prev` bytes (0: the topic's first): each block doubles
/// the previous, from [`FIRST_BLOCK_LEN`] up to `max`, so a busy topic soon writes large
/// contiguous blocks while an idle one holds a few KiB. An entry longer than this still gets a
/// block as long as it needs.
pub(crate) fn grown_block_len(prev: u64, max: u64) -> u64 {
    if prev == 0 {
        FIRST_BLOCK_LEN.min(max)
    } else {
        prev.saturating_mul(2)
            .clamp(FIRST_BLOCK_LEN, max.max(FIRST_BLOCK_LEN))
    }
}

/// Under [`StoreOptions::with_small_blocks`](crate::StoreOptions::with_small_blocks) a block
/// is made this many times as long as both the frame at hand and the block header: what an
/// entry that does not fit leaves unused at its end, and its header, each stay within 1/32.
const SMALL_BLOCK_FACTOR: u64 = 32;

/// The longest block under `with_small_blocks` for frames of `frame` bytes (see
/// [`SMALL_BLOCK_FACTOR`]), as a power of two from [`FIRST_BLOCK_LEN`] up to `max`.
pub(crate) fn small_block_cap(frame: u64, max: u64) -> u64 {
    frame
        .max(BLOCK_HEADER_LEN as u64)
        .saturating_mul(SMALL_BLOCK_FACTOR)
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX)
        .clamp(FIRST_BLOCK_LEN, max.max(FIRST_BLOCK_LEN))
}

/// State a topic is rebuilt with at recovery.
#[derive(Debug)]
pub(crate) struct TopicState {
    pub(crate) chain: VecDeque<Arc<Block>>,
    /// The block the writer continues in, with the file position of its next frame.
    pub(crate) live: Option<(Arc<Block>, u64)>,
    pub(crate) next_offset: u64,
    pub(crate) next_chain_seq: u64,
    /// The topic's entries end here, before `next_offset`: the writer's next block records the
    /// gap (its `prev_end`).
    pub(crate) gap_from: Option<u64>,
    pub(crate) cursor: u64,
    pub(crate) generation: u64,
    pub(crate) pair: Option<u64>,
    /// The durable watermark's record in the marks file, if any.
    pub(crate) mark: MarkState,
}

/// Where one append goes: pieces of frames, each in one block.
struct Plan {
    /// Blocks allocated for this unit, with their encoded headers.
    new_blocks: Vec<(Arc<Block>, [u8; BLOCK_HEADER_LEN])>,
    pieces: Vec<Piece>,
    /// The writer's block and position after the unit.
    end: (Option<Arc<Block>>, u64),
}

/// Consecutive frames of a unit in one block, starting at `pos` (with the block header first
/// when `header` indexes a new block).
struct Piece {
    block: Arc<Block>,
    pos: u64,
    header: Option<usize>,
    frames: Range<usize>,
    data_end: u64,
}

/// One planned write: `bufs` land at `pos` of `block`.
struct Chunk<'a> {
    block: Arc<Block>,
    pos: u64,
    bufs: Vec<IoSlice<'a>>,
}

impl Plan {
    /// The buffers of each piece: [block header], then header/payload pairs.
    fn chunks<'a>(&'a self, headers: &'a [u8], payloads: &[&'a [u8]]) -> Vec<Chunk<'a>> {
        self.pieces
            .iter()
            .map(|p| {
                let mut bufs = Vec::with_capacity(1 + 2 * p.frames.len());
                if let Some((_, h)) = p.header.and_then(|i| self.new_blocks.get(i)) {
                    bufs.push(IoSlice::new(h));
                }
                for i in p.frames.clone() {
                    if let Some(h) = headers.get(i * FRAME_HEADER_LEN..(i + 1) * FRAME_HEADER_LEN) {
                        bufs.push(IoSlice::new(h));
                    }
                    if let Some(payload) = payloads.get(i).filter(|p| !p.is_empty()) {
                        bufs.push(IoSlice::new(payload));
                    }
                }
                Chunk {
                    block: p.block.clone(),
                    pos: p.pos,
                    bufs,
                }
            })
            .collect()
    }
}

impl Topic {
    pub(crate) fn new(name: Arc<str>, state: TopicState, lane: usize) -> Self {
        let last_len = state
            .live
            .as_ref()
            .map(|(b, _)| b)
            .or(state.chain.back())
            .map_or(0, |b| b.len);
        let (block, pos) = match state.live {
            Some((b, p)) => (Some(b), p),
            None => (None, 0),
        };
        Self {
            progress: Arc::new(Progress::new(name.clone(), state.next_offset, state.mark)),
            name,
            lane,
            writer: Mutex::new(Writer {
                block,
                pos,
                next_offset: state.next_offset,
                next_chain_seq: state.next_chain_seq,
                gap_from: state.gap_from,
                last_len,
                headers: Vec::new(),
            }),
            chain: RwLock::new(state.chain),
            persisted: AtomicU64::new(state.cursor),
            reader: Mutex::new(Reader {
                cursor: state.cursor,
                persisted: state.cursor,
                generation: state.generation,
                pair: state.pair,
                unpersisted: 0,
                pos: None,
                buf: ReadBuf::default(),
            }),
        }
    }

    /// Offset the next append gets; every entry below is readable.
    pub(crate) fn committed(&self) -> u64 {
        self.progress.committed()
    }

    /// Entries below this offset are durable.
    pub(crate) fn durable(&self) -> u64 {
        self.progress.durable()
    }

    /// Entries below this offset may be handed to readers: the acknowledged ones. Under a
    /// store that acknowledges at durability (`SyncEach`) that is the durable watermark, as
    /// Kafka's high watermark; otherwise every written entry.
    pub(crate) fn visible(&self, shared: &Shared) -> u64 {
        if shared.options.visible_when_durable {
            self.durable()
        } else {
            self.committed()
        }
    }

    /// Whether consuming reads moved the cursor past what was last persisted.
    pub(crate) fn has_unpersisted_reads(&self) -> bool {
        self.reader.lock().unpersisted > 0
    }

    /// The cursor: next offset a consuming read hands out.
    pub(crate) fn cursor(&self) -> u64 {
        self.reader.lock().cursor
    }

    /// First offset still retained (not released after consumption).
    pub(crate) fn first_retained(&self) -> u64 {
        self.chain
            .read()
            .front()
            .map_or_else(|| self.committed(), |b| b.first_offset)
    }

    /// Appends `payloads` as one atomic unit (a batch when `batch`, else exactly one entry) and
    /// returns their offsets. On error nothing changes: writer, chain and offsets are as before.
    pub(crate) fn append(
        &self,
        shared: &Shared,
        payloads: &[&[u8]],
        batch: bool,
    ) -> io::Result<Range<u64>> {
        let mut w = self.writer.lock();
        shared.check_writable()?;
        let first = w.next_offset;
        let n = payloads.len() as u64;
        let mut headers = std::mem::take(&mut w.headers);
        headers.clear();
        let result = self.write_unit(shared, &mut w, &mut headers, payloads, batch);
        w.headers = headers;
        result.map_err(|e| on_topic(e, &self.name, Some(first)))?;
        Ok(first..first + n)
    }

    fn write_unit(
        &self,
        shared: &Shared,
        w: &mut Writer,
        headers: &mut Vec<u8>,
        payloads: &[&[u8]],
        batch: bool,
    ) -> io::Result<()> {
        let first = w.next_offset;
        // Encode every frame header first, so the plan below can borrow them.
        headers.reserve(payloads.len() * FRAME_HEADER_LEN);
        for (i, p) in payloads.iter().enumerate() {
            let kind = if batch {
                FrameKind::batch(i, payloads.len())?
            } else {
                FrameKind::single()
            };
            headers.extend_from_slice(&encode_frame_header(first + i as u64, kind, p)?);
        }
        let plan = self.plan(shared, w, payloads)?;
        let chunks = plan.chunks(headers, payloads);
        let written = match chunks.as_slice() {
            [only] => only.block.file().write_vectored_at(&only.bufs, only.pos),
            _ => {
                let ops: Vec<WriteOp<'_>> = chunks
                    .iter()
                    .map(|c| WriteOp::new(c.block.file(), c.pos, &c.bufs))
                    .collect();
                shared.storage.submit(&ops, false)
            }
        };
        if let Err(e) = written {
            self.roll_back(shared, w, &plan);
            return Err(e);
        }
        self.publish(shared, w, plan, payloads.len());
        Ok(())
    }

    /// Places the unit's frames: in the current block, then in new blocks as needed. Blocks
    /// allocated for a plan that cannot complete are given up before returning the error.
    fn plan(&self, shared: &Shared, w: &Writer, payloads: &[&[u8]]) -> io::Result<Plan> {
        let first = w.next_offset;
        let mut plan = Plan {
            new_blocks: Vec::new(),
            pieces: Vec::new(),
            end: (w.block.clone(), w.pos),
        };
        for (i, p) in payloads.iter().enumerate() {
            let flen = frame_len(p.len()) as u64;
            let (cur, pos) = plan.end.clone();
            let fits = cur.as_ref().is_some_and(|b| pos + flen <= b.end());
            if fits {
                if plan.pieces.is_empty()
                    && let Some(b) = cur
                {
                    plan.pieces.push(Piece {
                        block: b,
                        pos,
                        header: None,
                        frames: i..i,
                        data_end: pos,
                    });
                }
            } else if let Err(e) = self.open_block(shared, w, &mut plan, i, first + i as u64, flen)
            {
                self.give_up(shared, &plan.new_blocks, w.next_chain_seq);
                return Err(e);
            }
            if let Some(last) = plan.pieces.last_mut() {
                last.frames.end = i + 1;
                last.data_end += flen;
                plan.end.1 = last.data_end;
            }
        }
        Ok(plan)
    }

    /// Allocates a new block for the frame of `offset` and adds it to the plan.
    fn open_block(
        &self,
        shared: &Shared,
        w: &Writer,
        plan: &mut Plan,
        index: usize,
        offset: u64,
        frame: u64,
    ) -> io::Result<()> {
        let prev_len = plan
            .new_blocks
            .last()
            .map(|(b, _)| b.len)
            .or(w.block.as_ref().map(|b| b.len))
            .unwrap_or(w.last_len);
        let mut len = grown_block_len(prev_len, shared.options.block_len);
        if shared.options.small_blocks {
            len = len.min(small_block_cap(frame, shared.options.block_len));
        }
        let len = len.max(BLOCK_HEADER_LEN as u64 + frame);
        let alloc = shared.alloc_block(len, self.lane)?;
        let block = Arc::new(Block::fresh(alloc.handle, alloc.start, alloc.len, offset));
        // Track it first: whatever fails below, the block is given up with the others.
        plan.new_blocks
            .push((block.clone(), [0u8; BLOCK_HEADER_LEN]));
        let prev_end = match (plan.new_blocks.len(), w.gap_from) {
            (1, Some(gap)) => gap.min(offset),
            _ => offset,
        };
        let header = BlockHeader {
            topic: self.name.to_string(),
            segment_id: block.segment,
            chain_seq: w.next_chain_seq + plan.new_blocks.len() as u64 - 1,
            first_offset: offset,
            prev_end,
            block_len: block.len,
            abandoned: false,
        }
        .encode()?;
        if let Some(last) = plan.new_blocks.last_mut() {
            last.1 = header;
        }
        plan.pieces.push(Piece {
            block: block.clone(),
            pos: block.start,
            header: Some(plan.new_blocks.len() - 1),
            frames: index..index,
            data_end: block.data_start(),
        });
        plan.end = (Some(block.clone()), block.data_start());
        Ok(())
    }

    /// Undoes a failed write: clears what may have landed after the committed end of the
    /// current block and gives up new blocks. If that cleanup itself fails, the instance is
    /// poisoned: bytes of a failed write could otherwise be read back as entries later.
    fn roll_back(&self, shared: &Shared, w: &Writer, plan: &Plan) {
        if let Some(p) = plan
            .pieces
            .first()
            .filter(|p| p.header.is_none())
            .filter(|p| w.block.as_ref().is_some_and(|b| Arc::ptr_eq(b, &p.block)))
        {
            let zeros = vec![0u8; usize::try_from(p.data_end - p.pos).unwrap_or(0)];
            if let Err(e) = p.block.file().write_at(&zeros, p.pos) {
                shared.poison(&e);
            }
        }
        self.give_up(shared, &plan.new_blocks, w.next_chain_seq);
    }

    /// Publishes a written unit: blocks before the committed offset, so a reader never sees a
    /// partial unit; full blocks are sealed.
    fn publish(&self, shared: &Shared, w: &mut Writer, plan: Plan, count: usize) {
        let first = w.next_offset;
        for p in &plan.pieces {
            p.block.handle.mark_dirty();
            p.block.publish(p.data_end, first + p.frames.end as u64);
        }
        if !plan.new_blocks.is_empty() {
            let mut to_seal: Vec<Arc<Block>> = w.block.iter().cloned().collect();
            to_seal.extend(
                plan.new_blocks[..plan.new_blocks.len() - 1]
                    .iter()
                    .map(|(b, _)| b.clone()),
            );
            self.chain
                .write()
                .extend(plan.new_blocks.iter().map(|(b, _)| b.clone()));
            for b in &to_seal {
                b.seal();
                shared.seal_block(b);
            }
            w.next_chain_seq += plan.new_blocks.len() as u64;
            w.gap_from = None;
        }
        w.block = plan.end.0;
        w.pos = plan.end.1;
        w.next_offset = first + count as u64;
        self.progress.set_committed(w.next_offset);
        if !plan.new_blocks.is_empty() {
            // A block sealed just now may already be wholly consumed.
            self.release_consumed(shared);
        }
    }

    /// Gives up blocks allocated for a failed write: marks them abandoned on disk and releases
    /// them, so their segment can still be deleted. A block that cannot be marked would look
    /// like part of the chain to the next open: the instance is poisoned instead.
    fn give_up(
        &self,
        shared: &Shared,
        blocks: &[(Arc<Block>, [u8; BLOCK_HEADER_LEN])],
        base_seq: u64,
    ) {
        for (i, (b, _)) in blocks.iter().enumerate() {
            let header = BlockHeader {
                topic: self.name.to_string(),
                segment_id: b.segment,
                chain_seq: base_seq + i as u64,
                first_offset: b.first_offset,
                prev_end: b.first_offset,
                block_len: b.len,
                abandoned: true,
            };
            let marked = header
                .encode()
                .map_err(io::Error::from)
                .and_then(|h| b.file().write_at(&h, b.start));
            if let Err(e) = marked {
                tracing::warn!(topic = %self.name, segment = b.segment, block = b.start, error = %e,
                    "could not mark an abandoned block; writes are refused until reopen");
                shared.poison(&e);
            }
            b.seal();
            shared.seal_block(b);
            shared.release_block(b);
        }
    }

    /// Reads the next entry at the cursor; moves the cursor past it if `consume`.
    pub(crate) fn read_next(
        &self,
        shared: &Shared,
        consume: bool,
    ) -> io::Result<Option<(u64, Vec<u8>)>> {
        let mut out = Vec::with_capacity(1);
        self.read_entries(shared, consume, 1, usize::MAX, &mut out)?;
        Ok(out.pop())
    }

    /// Reads up to `max_entries` entries (and `max_bytes` of payload, but at least one entry)
    /// from the cursor, in commit order; moves the cursor past them if `consume`.
    pub(crate) fn read_entries(
        &self,
        shared: &Shared,
        consume: bool,
        max_entries: usize,
        max_bytes: usize,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> io::Result<()> {
        let mut r = self.reader.lock();
        let committed = self.visible(shared);
        let start_cursor = r.cursor;
        let start_pos = r.pos.clone();
        let mut cursor = r.cursor;
        let mut pos = r.pos.clone();
        let mut bytes = 0usize;
        let max_entries = max_entries.min(MAX_BATCH_ENTRIES);
        while cursor < committed && out.len() < max_entries {
            let (block, at, offset) = match self.locate(&mut r.buf, pos.take(), cursor)? {
                Some(found) => found,
                None => break,
            };
            let (frame, payload) = r
                .buf
                .frame_at(&block, at, block.data_end())
                .map_err(|e| on_topic(e, &self.name, Some(offset)))?;
            if frame.offset != offset {
                return Err(on_topic(
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("found offset {} where {offset} should be", frame.offset),
                    ),
                    &self.name,
                    Some(offset),
                ));
            }
            if !out.is_empty() && bytes + payload.len() > max_bytes {
                pos = Some((block, at));
                cursor = offset;
                break;
            }
            bytes += payload.len();
            out.push((offset, payload.to_vec()));
            cursor = offset + 1;
            pos = if cursor < block.end_offset() || !block.is_sealed() {
                Some((block, at + frame.len))
            } else {
                None
            };
        }
        if !consume || out.is_empty() {
            return Ok(());
        }
        r.cursor = cursor;
        r.pos = pos;
        r.unpersisted = r.unpersisted.saturating_add(out.len() as u32);
        if r.unpersisted >= shared.options.persist_every
            && let Err(e) = self.persist(shared, &mut r)
        {
            // The entries were not handed out: the cursor stays where it was.
            r.cursor = start_cursor;
            r.pos = start_pos;
            r.unpersisted = r.unpersisted.saturating_sub(out.len() as u32);
            out.clear();
            return Err(on_topic(e, &self.name, Some(start_cursor)));
        }
        Ok(())
    }

    /// Reads the entry at `offset` without touching the cursor.
    pub(crate) fn read_at(&self, shared: &Shared, offset: u64) -> io::Result<Option<Vec<u8>>> {
        if offset >= self.visible(shared) {
            return Ok(None);
        }
        let mut buf = ReadBuf::default();
        let held = self
            .locate(&mut buf, None, offset)?
            .filter(|&(_, _, found)| found == offset);
        let Some((block, at, _)) = held else {
            // Not stored. Below the persisted cursor it was consumed (its block released, or
            // its segment deleted before a crash took the blocks after it); at or above it, it
            // is in a gap (entries recovery cut or skipped).
            if offset < self.persisted.load(Ordering::Acquire) {
                return Err(on_topic(
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        "entry was consumed and is no longer stored",
                    ),
                    &self.name,
                    Some(offset),
                ));
            }
            return Ok(None);
        };
        let (frame, payload) = buf
            .frame_at(&block, at, block.data_end())
            .map_err(|e| on_topic(e, &self.name, Some(offset)))?;
        if frame.offset != offset {
            return Err(on_topic(
                io::Error::new(io::ErrorKind::InvalidData, "offset mismatch"),
                &self.name,
                Some(offset),
            ));
        }
        Ok(Some(payload.to_vec()))
    }

    /// Finds the frame of the first entry at or after `offset`: its block, file position and
    /// offset. `hint` is a known (block, position) of `offset` itself.
    fn locate(
        &self,
        buf: &mut ReadBuf,
        hint: Option<(Arc<Block>, u64)>,
        offset: u64,
    ) -> io::Result<Option<(Arc<Block>, u64, u64)>> {
        if let Some((b, at)) = hint {
            // Valid while the entry is in that block; once the block is sealed short of it,
            // the entry is in a later block (the seal is published before the commit).
            if offset < b.end_offset() {
                return Ok(Some((b, at, offset)));
            }
        }
        let block = {
            let chain = self.chain.read();
            // The block holding `offset`, or the first block after a gap.
            let idx = chain.partition_point(|b| b.first_offset <= offset);
            let candidate = idx
                .checked_sub(1)
                .and_then(|i| chain.get(i))
                .filter(|b| offset < b.end_offset());
            match candidate.or_else(|| chain.get(idx)) {
                Some(b) => b.clone(),
                None => return Ok(None),
            }
        };
        let target = offset.max(block.first_offset);
        if target >= block.end_offset() {
            return Ok(None);
        }
        // Walk the block's frames to the target.
        let limit = block.data_end();
        let mut at = block.data_start();
        loop {
            let (frame, _) = buf
                .frame_at(&block, at, limit)
                .map_err(|e| on_topic(e, &self.name, Some(target)))?;
            if frame.offset >= target {
                return Ok(Some((block, at, frame.offset)));
            }
            at += frame.len;
        }
    }

    /// Moves the cursor to `offset` and persists it.
    ///
    /// A rewind must not race with a writer releasing blocks by the persisted cursor: the
    /// check that `offset` is still retained and the lowering of the release bound happen
    /// under the chain lock, which every release takes.
    pub(crate) fn commit(&self, shared: &Shared, offset: u64) -> io::Result<()> {
        let mut r = self.reader.lock();
        let visible = self.visible(shared);
        if offset > visible {
            return Err(on_topic(
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("cannot commit past the end of the topic ({visible})"),
                ),
                &self.name,
                Some(offset),
            ));
        }
        {
            let chain = self.chain.read();
            let retained = chain
                .front()
                .map_or_else(|| self.committed(), |b| b.first_offset);
            if offset < retained {
                return Err(on_topic(
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("offsets below {retained} were consumed and released"),
                    ),
                    &self.name,
                    Some(offset),
                ));
            }
            // Nothing at or after `offset` may be released from now on.
            self.persisted.fetch_min(offset, Ordering::AcqRel);
        }
        let (old, old_pos) = (r.cursor, r.pos.take());
        r.cursor = offset;
        if let Err(e) = self.persist(shared, &mut r) {
            r.cursor = old;
            r.pos = old_pos;
            self.persisted.store(r.persisted, Ordering::Release);
            return Err(on_topic(e, &self.name, Some(offset)));
        }
        Ok(())
    }

    /// Persists the cursor if it moved since the last persist.
    pub(crate) fn persist_cursor(&self, shared: &Shared) -> io::Result<()> {
        let mut r = self.reader.lock();
        if r.cursor == r.persisted && r.unpersisted == 0 {
            return Ok(());
        }
        self.persist(shared, &mut r)
            .map_err(|e| on_topic(e, &self.name, None))
    }

    fn persist(&self, shared: &Shared, r: &mut Reader) -> io::Result<()> {
        let pair = match r.pair {
            Some(p) => p,
            None => {
                let p = shared.cursors.pair_for(&self.name);
                r.pair = Some(p);
                p
            }
        };
        let generation = r.generation + 1;
        shared.cursors.write(
            &self.name,
            pair,
            generation,
            r.cursor,
            shared.options.sync_cursor_writes,
        )?;
        r.generation = generation;
        r.persisted = r.cursor;
        r.unpersisted = 0;
        self.persisted.store(r.persisted, Ordering::Release);
        self.release_consumed(shared);
        Ok(())
    }

    /// Releases every sealed span wholly below the persisted cursor. The bound is read under
    /// the chain lock (see [`commit`](Self::commit)).
    fn release_consumed(&self, shared: &Shared) {
        let mut released = Vec::new();
        {
            let mut chain = self.chain.write();
            let persisted = self.persisted.load(Ordering::Acquire);
            while let Some(front) = chain.front() {
                if front.is_sealed() && front.end_offset() <= persisted {
                    if let Some(b) = chain.pop_front() {
                        released.push(b);
                    }
                } else {
                    break;
                }
            }
        }
        for b in released.iter().filter(|b| b.releases) {
            shared.release_block(b);
        }
    }

    /// Number of blocks in the chain (retained, not yet released).
    pub(crate) fn chain_len(&self) -> usize {
        self.chain.read().len()
    }
}

impl TopicState {
    /// A topic that has never been written.
    pub(crate) fn empty() -> Self {
        Self {
            chain: VecDeque::new(),
            live: None,
            next_offset: 0,
            next_chain_seq: 0,
            gap_from: None,
            cursor: 0,
            generation: 0,
            pair: None,
            mark: MarkState::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_grow_from_4_kib_doubling_to_the_maximum() {
        let max = 1 << 20;
        let mut len = 0;
        let mut seen = Vec::new();
        for _ in 0..12 {
            len = grown_block_len(len, max);
            seen.push(len >> 10);
        }
        assert_eq!(
            seen,
            [4, 8, 16, 32, 64, 128, 256, 512, 1024, 1024, 1024, 1024]
        );
        // After a block for one large entry, the next is back to the maximum.
        assert_eq!(grown_block_len(64 << 20, max), max);
        // A maximum below the first length (the smallest geometry) caps it.
        assert_eq!(grown_block_len(0, 4096), 4096);
        assert_eq!(grown_block_len(4096, 4096), 4096);
        assert_eq!(grown_block_len(u64::MAX, 8192), 8192);
    }

    #[test]
    fn small_blocks_hold_32_frames_of_the_size_at_hand() {
        let max = 1 << 20;
        // Small entries: 32 block headers' worth (308 bytes each), 16 KiB.
        assert_eq!(small_block_cap(124, max), 16 << 10);
        assert_eq!(small_block_cap(1, max), 16 << 10);
        // 700-byte entries: 32 KiB, so at most one frame's worth (2 %) is left unused.
        assert_eq!(small_block_cap(724, max), 32 << 10);
        assert_eq!(small_block_cap(100 << 10, max), max);
        assert_eq!(small_block_cap(u64::MAX, max), max);
        assert_eq!(small_block_cap(724, 4096), 4096);
    }
}
