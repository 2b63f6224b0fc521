//! The reading half of a topic: consuming reads and peeks at the cursor, batch reads,
//! reads at an offset, cursor moves and persistence, and releasing consumed blocks.

use std::io::{self};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use walrus_block::MAX_BATCH_ENTRIES;

use crate::chain::{Block, ReadBuf};
use crate::error::on_topic;
use crate::shared::Shared;

use super::{Reader, Topic};

impl Topic {
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
        let written_end = self.visible(shared);
        let start_cursor = r.cursor;
        let start_pos = r.pos.clone();
        let mut cursor = r.cursor;
        let mut pos = r.pos.clone();
        let mut bytes = 0usize;
        let max_entries = max_entries.min(MAX_BATCH_ENTRIES);
        while cursor < written_end && out.len() < max_entries {
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
                .map_or_else(|| self.written_end(), |b| b.first_offset);
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
    pub(super) fn release_consumed(&self, shared: &Shared) {
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
}
