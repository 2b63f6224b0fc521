//! The writing half of a topic: planning an atomic unit into blocks (rolling over to new
//! ones), writing it with one vectored write per block, rolling back on failure, and
//! publishing the new end to readers.

use std::io::{self, IoSlice};
use std::ops::Range;
use std::sync::Arc;

use walrus_block::{
    BLOCK_HEADER_LEN, BlockHeader, FRAME_HEADER_LEN, FrameHeader, FrameKind, frame_len,
};
use walrus_io::WriteOp;

use crate::chain::Block;
use crate::error::on_topic;
use crate::shared::Shared;

use super::{Topic, Writer, grown_block_len, small_block_cap};

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
        // A new or deleted topic is listed once its first append succeeds, not before (see
        // `write_unit`).
        let revived = self.is_hidden()
            && self
                .revive(shared)
                .map_err(|e| on_topic(e, &self.name, Some(w.next_offset)))?;
        let first = w.next_offset;
        let n = payloads.len() as u64;
        let mut headers = std::mem::take(&mut w.headers);
        headers.clear();
        let result = self.write_unit(shared, &mut w, &mut headers, payloads, batch);
        w.headers = headers;
        if let Err(e) = result {
            if revived {
                self.undo_revive(shared);
            }
            return Err(on_topic(e, &self.name, Some(first)));
        }
        let bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();
        self.counters.appended(n, bytes, batch);
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
        // Check every frame against the format's limits (and checksum its payload) before
        // anything is allocated: bad input changes nothing.
        let mut frames = std::mem::take(&mut w.frames);
        frames.clear();
        for (i, p) in payloads.iter().enumerate() {
            let kind = if batch {
                FrameKind::batch(i, payloads.len())
            } else {
                Ok(FrameKind::single())
            };
            match kind.and_then(|kind| FrameHeader::for_payload(first + i as u64, kind, p)) {
                Ok(f) => frames.push(f),
                Err(e) => {
                    w.frames = frames;
                    return Err(e.into());
                }
            }
        }
        let planned = self.plan(shared, w, payloads);
        let plan = match planned {
            Ok(plan) => plan,
            Err(e) => {
                w.frames = frames;
                return Err(e);
            }
        };
        // Encoded with the key of the block each frame lands in: a unit may span segments.
        let encoded = Self::encode_headers(&plan, &frames, headers);
        w.frames = frames;
        if let Err(e) = encoded {
            self.roll_back(shared, w, &plan);
            return Err(e);
        }
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
        for c in &chunks {
            shared.wrote(&c.block, c.pos, &c.bufs);
        }
        // Listed before its entries are published: a reader they wake finds the topic.
        if self.is_hidden() {
            self.hidden
                .store(false, std::sync::atomic::Ordering::Release);
        }
        self.publish(shared, w, plan, payloads.len());
        Ok(())
    }

    /// Encodes the headers of the unit's `frames` into `headers`, in order, each keyed with the
    /// key of the block `plan` puts it in.
    fn encode_headers(
        plan: &Plan,
        frames: &[FrameHeader],
        headers: &mut Vec<u8>,
    ) -> io::Result<()> {
        headers.reserve(frames.len() * FRAME_HEADER_LEN);
        for p in &plan.pieces {
            let key = p.block.frame_key();
            for f in frames.get(p.frames.clone()).unwrap_or_default() {
                headers.extend_from_slice(&f.encode(key)?);
            }
        }
        if headers.len() != frames.len() * FRAME_HEADER_LEN {
            return Err(io::Error::other(format!(
                "the plan of a {}-entry unit places {} frames",
                frames.len(),
                headers.len() / FRAME_HEADER_LEN
            )));
        }
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
            keyed_frames: block.frame_key() != 0,
        }
        .encode(block.handle.key)?;
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

    /// Undoes a failed write: clears what may have landed after the written end of the
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
            if let Err(e) = shared.write_cleanup(&p.block, &zeros, p.pos) {
                shared.poison(&e);
            }
        }
        self.give_up(shared, &plan.new_blocks, w.next_chain_seq);
    }

    /// Publishes a written (and marked) unit: blocks before the written end, so a reader never sees a
    /// partial unit; full blocks are sealed.
    fn publish(&self, shared: &Shared, w: &mut Writer, plan: Plan, count: usize) {
        let first = w.next_offset;
        for p in &plan.pieces {
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
        self.progress.set_written_end(w.next_offset);
        if !plan.new_blocks.is_empty() {
            // A block sealed just now may already be wholly consumed, or beyond retention.
            self.release_consumed(shared);
            if let Err(e) = self.apply_retention(shared, std::time::SystemTime::now(), false) {
                tracing::warn!(topic = %self.name, error = %e, "retention not applied");
            }
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
                keyed_frames: b.frame_key() != 0,
            };
            let marked = header
                .encode(b.handle.key)
                .map_err(io::Error::from)
                .and_then(|h| shared.write_cleanup(b, &h, b.start));
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
}
