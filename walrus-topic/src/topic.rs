//! One topic: its writer (appends, batches, block roll-over), its chain of blocks, and its
//! cursor reader (consuming reads, peeks, batch reads, commits).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use walrus_block::{
    BLOCK_HEADER_LEN, BlockHeader, FRAME_HEADER_LEN, FrameKind, MAX_BATCH_ENTRIES,
    encode_frame_header, frame_len,
};
use walrus_io::WriteOp;

use crate::chain::{Block, ReadBuf};
use crate::error::on_topic;
use crate::store::Shared;

/// A topic: writer, chain, reader.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) name: Arc<str>,
    /// The allocation lane new blocks come from.
    lane: usize,
    writer: Mutex<Writer>,
    /// Blocks not yet released by the reader, oldest first. The last one is the writer's.
    chain: RwLock<VecDeque<Arc<Block>>>,
    /// Entries below this offset are written and readable.
    committed: AtomicU64,
    /// Mirror of the reader's persisted cursor, so the writer can release blocks it seals after
    /// they were already consumed without taking the reader's lock.
    persisted: AtomicU64,
    /// Entries below this offset are on stable storage (as of the last completed sync).
    durable: AtomicU64,
    /// Set by an append, cleared when a sync takes the topic's snapshot: the topic is (or will
    /// be) in the store's list of topics a sync must account for.
    unsynced: AtomicBool,
    /// The durable watermark as last written to the marks file: (slot pair, generation,
    /// offset written).
    mark: Mutex<MarkState>,
    reader: Mutex<Reader>,
}

/// Where a topic's durable watermark stands in the marks file.
#[derive(Debug, Default)]
pub(crate) struct MarkState {
    pub(crate) pair: Option<u64>,
    pub(crate) generation: u64,
    pub(crate) written: u64,
}

#[derive(Debug)]
struct Writer {
    /// The block being filled, if any.
    block: Option<Arc<Block>>,
    /// File position of the next frame in `block`.
    pos: u64,
    next_offset: u64,
    next_chain_seq: u64,
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

/// State a topic is rebuilt with at recovery.
#[derive(Debug)]
pub(crate) struct TopicState {
    pub(crate) chain: VecDeque<Arc<Block>>,
    /// The block the writer continues in, with the file position of its next frame.
    pub(crate) live: Option<(Arc<Block>, u64)>,
    pub(crate) next_offset: u64,
    pub(crate) next_chain_seq: u64,
    pub(crate) cursor: u64,
    pub(crate) generation: u64,
    pub(crate) pair: Option<u64>,
    /// The durable watermark's record in the marks file, if any.
    pub(crate) mark: MarkState,
}

/// One planned write: `bufs` land at `pos` of `block`.
struct Chunk<'a> {
    block: Arc<Block>,
    pos: u64,
    bufs: Vec<IoSlice<'a>>,
    /// After this chunk, the block's committed end and end offset.
    data_end: u64,
    end_offset: u64,
}

impl Topic {
    pub(crate) fn new(name: Arc<str>, state: TopicState, lane: usize) -> Self {
        let (block, pos) = match state.live {
            Some((b, p)) => (Some(b), p),
            None => (None, 0),
        };
        Self {
            name,
            lane,
            writer: Mutex::new(Writer {
                block,
                pos,
                next_offset: state.next_offset,
                next_chain_seq: state.next_chain_seq,
                headers: Vec::new(),
            }),
            chain: RwLock::new(state.chain),
            committed: AtomicU64::new(state.next_offset),
            persisted: AtomicU64::new(state.cursor),
            durable: AtomicU64::new(state.next_offset),
            unsynced: AtomicBool::new(false),
            mark: Mutex::new(state.mark),
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
        self.committed.load(Ordering::Acquire)
    }

    /// Entries below this offset are durable.
    pub(crate) fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Records that the topic has appends a sync must cover; true if the caller must add it
    /// to the store's list of such topics.
    pub(crate) fn note_unsynced(&self) -> bool {
        !self.unsynced.swap(true, Ordering::AcqRel)
    }

    /// Taken by a sync before it starts: the offset it will make durable. Appends after the
    /// flag is cleared list the topic again for the next sync.
    pub(crate) fn snapshot_for_sync(&self) -> u64 {
        self.unsynced.store(false, Ordering::Release);
        self.committed()
    }

    /// A sync covering `offset` completed.
    pub(crate) fn set_durable(&self, offset: u64) {
        self.durable.fetch_max(offset, Ordering::AcqRel);
    }

    /// The durable watermark's record state.
    pub(crate) fn mark_state(&self) -> parking_lot::MutexGuard<'_, MarkState> {
        self.mark.lock()
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
        let count = payloads.len();
        // Encode every frame header first, so the plan below can borrow them.
        headers.reserve(count * FRAME_HEADER_LEN);
        for (i, p) in payloads.iter().enumerate() {
            let kind = if batch {
                FrameKind::batch(i, count)?
            } else {
                FrameKind::single()
            };
            headers.extend_from_slice(&encode_frame_header(first + i as u64, kind, p)?);
        }

        // Plan: place frames in the current block, rolling over to new blocks as needed.
        let mut new_blocks: Vec<(Arc<Block>, [u8; BLOCK_HEADER_LEN])> = Vec::new();
        let mut cur = w.block.clone();
        let mut pos = w.pos;
        // Frame index where each chunk starts, and its (block, pos); built as we go.
        struct Plan {
            block: Arc<Block>,
            pos: u64,
            with_header: Option<usize>,
            frames: Range<usize>,
            data_end: u64,
        }
        let mut plans: Vec<Plan> = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            let flen = frame_len(p.len()) as u64;
            let fits = cur.as_ref().is_some_and(|b| pos + flen <= b.end());
            if !fits {
                let alloc = match shared.alloc_block(BLOCK_HEADER_LEN as u64 + flen, self.lane) {
                    Ok(a) => a,
                    Err(e) => {
                        self.abandon(shared, &new_blocks, w.next_chain_seq);
                        return Err(e);
                    }
                };
                let chain_seq = w.next_chain_seq + new_blocks.len() as u64;
                let offset = first + i as u64;
                let header = BlockHeader {
                    topic: self.name.to_string(),
                    segment_id: alloc.handle.id,
                    chain_seq,
                    first_offset: offset,
                    block_len: alloc.len,
                    abandoned: false,
                }
                .encode()?;
                let block = Arc::new(Block::new(
                    alloc.handle,
                    alloc.start,
                    alloc.len,
                    offset,
                    alloc.start + BLOCK_HEADER_LEN as u64,
                    offset,
                    false,
                ));
                pos = block.data_start();
                new_blocks.push((block.clone(), header));
                plans.push(Plan {
                    block: block.clone(),
                    pos: block.start,
                    with_header: Some(new_blocks.len() - 1),
                    frames: i..i,
                    data_end: pos,
                });
                cur = Some(block);
            } else if plans.is_empty() {
                let b = cur
                    .clone()
                    .ok_or_else(|| io::Error::other("no current block"))?;
                plans.push(Plan {
                    block: b,
                    pos,
                    with_header: None,
                    frames: i..i,
                    data_end: pos,
                });
            }
            pos += flen;
            if let Some(last) = plans.last_mut() {
                last.frames.end = i + 1;
                last.data_end = pos;
            }
        }

        // Gather each chunk's buffers: [block header], then header/payload pairs.
        let mut chunks: Vec<Chunk<'_>> = Vec::with_capacity(plans.len());
        for plan in &plans {
            let mut bufs = Vec::with_capacity(1 + 2 * plan.frames.len());
            if let Some(h) = plan.with_header {
                bufs.push(IoSlice::new(&new_blocks[h].1));
            }
            for i in plan.frames.clone() {
                bufs.push(IoSlice::new(
                    &headers[i * FRAME_HEADER_LEN..(i + 1) * FRAME_HEADER_LEN],
                ));
                if !payloads[i].is_empty() {
                    bufs.push(IoSlice::new(payloads[i]));
                }
            }
            chunks.push(Chunk {
                block: plan.block.clone(),
                pos: plan.pos,
                bufs,
                data_end: plan.data_end,
                end_offset: first + plan.frames.end as u64,
            });
        }

        let written = if let [only] = chunks.as_slice() {
            only.block.file().write_vectored_at(&only.bufs, only.pos)
        } else {
            let ops: Vec<WriteOp<'_>> = chunks
                .iter()
                .map(|c| WriteOp::new(c.block.file(), c.pos, &c.bufs))
                .collect();
            shared.storage.submit(&ops, false)
        };
        if let Err(e) = written {
            // Part of the unit may have landed after the committed end of the current block.
            // It could never be taken for an entry (its first frame is overwritten by the next
            // append, and the rest are continuation frames), but zeroing it keeps the log
            // clean for AbsoluteConsistency. Best effort: the device just failed a write.
            if let Some(c) = chunks
                .first()
                .filter(|c| w.block.as_ref().is_some_and(|b| Arc::ptr_eq(b, &c.block)))
            {
                let zeros = vec![0u8; (c.data_end - c.pos) as usize];
                if let Err(z) = c.block.file().write_at(&zeros, c.pos) {
                    tracing::debug!(topic = %self.name, error = %z, "could not clear a failed write");
                }
            }
            self.abandon(shared, &new_blocks, w.next_chain_seq);
            return Err(e);
        }

        // Success: publish. Blocks are published before they are sealed, new blocks join the
        // chain before the committed offset moves, so a reader never sees a partial unit.
        for c in &chunks {
            c.block.handle.mark_dirty();
            c.block.publish(c.data_end, c.end_offset);
        }
        if !new_blocks.is_empty() {
            let mut to_seal: Vec<Arc<Block>> = w.block.iter().cloned().collect();
            to_seal.extend(
                new_blocks[..new_blocks.len() - 1]
                    .iter()
                    .map(|(b, _)| b.clone()),
            );
            self.chain
                .write()
                .extend(new_blocks.iter().map(|(b, _)| b.clone()));
            for b in &to_seal {
                b.seal();
                shared.seal_block(b);
            }
            w.next_chain_seq += new_blocks.len() as u64;
        }
        w.block = cur;
        w.pos = pos;
        w.next_offset = first + count as u64;
        self.committed.store(w.next_offset, Ordering::Release);
        if !new_blocks.is_empty() {
            // A block sealed just now may already be wholly consumed.
            self.release_consumed(shared, self.persisted.load(Ordering::Acquire));
        }
        Ok(())
    }

    /// Gives up blocks allocated for a failed write: marks them abandoned on disk (best effort)
    /// and releases them, so their segment can still be deleted.
    fn abandon(
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
                block_len: b.len,
                abandoned: true,
            };
            let marked = header
                .encode()
                .map_err(io::Error::from)
                .and_then(|h| b.file().write_at(&h, b.start));
            if let Err(e) = marked {
                tracing::warn!(topic = %self.name, segment = b.segment, block = b.start, error = %e,
                    "could not mark an abandoned block; recovery will skip it by its offsets");
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
        let committed = self.committed();
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
    pub(crate) fn read_at(&self, offset: u64) -> io::Result<Option<Vec<u8>>> {
        if offset >= self.committed() {
            return Ok(None);
        }
        if offset < self.first_retained() {
            return Err(on_topic(
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "entry was consumed and its space released",
                ),
                &self.name,
                Some(offset),
            ));
        }
        let mut buf = ReadBuf::default();
        let Some((block, at, found)) = self.locate(&mut buf, None, offset)? else {
            return Ok(None);
        };
        if found != offset {
            return Ok(None); // in a gap left by skipped corruption
        }
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
    pub(crate) fn commit(&self, shared: &Shared, offset: u64) -> io::Result<()> {
        let mut r = self.reader.lock();
        let committed = self.committed();
        if offset > committed {
            return Err(on_topic(
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("cannot commit past the end of the topic ({committed})"),
                ),
                &self.name,
                Some(offset),
            ));
        }
        let retained = self.first_retained();
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
        let (old, old_pos) = (r.cursor, r.pos.take());
        r.cursor = offset;
        if let Err(e) = self.persist(shared, &mut r) {
            r.cursor = old;
            r.pos = old_pos;
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
        self.release_consumed(shared, r.persisted);
        Ok(())
    }

    /// Releases every sealed block wholly below the persisted cursor.
    fn release_consumed(&self, shared: &Shared, persisted: u64) {
        let mut released = Vec::new();
        {
            let mut chain = self.chain.write();
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
        for b in released {
            shared.release_block(&b);
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
            cursor: 0,
            generation: 0,
            pair: None,
            mark: MarkState::default(),
        }
    }
}
