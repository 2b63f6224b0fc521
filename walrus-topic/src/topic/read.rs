//! The reading half of a topic: consuming reads and peeks at a consumer's cursor, batch reads,
//! reads at an offset and from one (iterators), and cursor moves.

use std::io::{self};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use walrus_block::MAX_BATCH_ENTRIES;

use crate::chain::{Block, FramePos, ReadBuf};
use crate::error::on_topic;
use crate::shared::Shared;

use super::Topic;
use super::consumer::{Consumer, Make, Reader};

impl Topic {
    /// Reads up to `max_entries` entries (and `max_bytes` of payload, but at least one entry)
    /// from the cursor of consumer `name`, in commit order; moves the cursor past them if
    /// `consume` (creating the consumer). A peek by a consumer that does not exist reads from
    /// the oldest entry retained. Whether the consumer has reads not yet persisted.
    pub(crate) fn read_entries(
        &self,
        shared: &Shared,
        name: &str,
        consume: bool,
        max_entries: usize,
        max_bytes: usize,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> io::Result<bool> {
        let before = out.len();
        let make = if consume { Make::AtOldest } else { Make::Not };
        let read = match self.with_reader(shared, name, make, |c, r, _| {
            self.read_as(shared, c, r, consume, max_entries, max_bytes, out)
                .map(|()| r.unpersisted > 0)
        }) {
            // Deleted while this read looked for its consumer (or read): as if read before.
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.is_hidden() => {
                out.truncate(before);
                return Ok(false);
            }
            other => other?,
        };
        if let Some(unpersisted) = read {
            // Only what was handed out: a read whose cursor could not be persisted returns
            // nothing.
            self.counters.read(out.len() as u64);
            return Ok(unpersisted);
        }
        // From the oldest entry retained, again if a floor raised meanwhile stopped the gather
        // before anything (a few times: each needs another raise).
        for _ in 0..8 {
            let mut buf = ReadBuf::default();
            let from = self.first_retained();
            self.gather(
                shared,
                &mut buf,
                (from, None),
                max_entries,
                max_bytes,
                &mut |offset, payload| out.push((offset, payload.to_vec())),
            )?;
            if out.len() > before || self.floor() <= from {
                break;
            }
        }
        self.counters.read(out.len() as u64);
        Ok(false)
    }

    /// [`read_entries`](Self::read_entries) with the consumer's reader held.
    #[allow(clippy::too_many_arguments)]
    fn read_as(
        &self,
        shared: &Shared,
        c: &Consumer,
        r: &mut Reader,
        consume: bool,
        max_entries: usize,
        max_bytes: usize,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> io::Result<()> {
        let (start_cursor, start_pos) = (r.cursor, r.pos.clone());
        // A floor raised while the gather ran ends it with nothing: then again from the new
        // floor (a few times: each round needs another raise).
        let mut rounds = 0;
        let (floor, (cursor, pos)) = loop {
            rounds += 1;
            let floor = self.floor();
            let from = if r.cursor < floor {
                // Retention released entries this consumer had not read: it continues at the
                // oldest entry kept, and the skip is counted.
                (floor, None)
            } else {
                (r.cursor, r.hint())
            };
            let from_offset = from.0;
            let mut buf = std::mem::take(&mut r.buf);
            let gathered = self.gather(
                shared,
                &mut buf,
                from,
                max_entries,
                max_bytes,
                &mut |offset, payload| out.push((offset, payload.to_vec())),
            );
            r.buf = buf;
            let gathered = gathered?;
            if !out.is_empty() || self.floor() <= from_offset || rounds == 8 {
                break (floor, gathered);
            }
        };
        if !consume || out.is_empty() {
            return Ok(());
        }
        let skipped = floor.saturating_sub(start_cursor);
        r.skipped += skipped;
        r.cursor = cursor;
        r.hold(pos);
        r.unpersisted = r.unpersisted.saturating_add(out.len() as u32);
        if r.unpersisted >= shared.options.persist_every
            && let Err(e) = self.persist(shared, c, r)
        {
            // The entries were not handed out: the cursor stays where it was.
            r.cursor = start_cursor;
            r.pos = start_pos;
            r.unpersisted = r.unpersisted.saturating_sub(out.len() as u32);
            // The retry counts the skip (once).
            r.skipped -= skipped;
            out.clear();
            return Err(on_topic(e, &self.name, Some(start_cursor)));
        }
        if skipped > 0 {
            tracing::warn!(topic = %self.name, consumer = %c.name, from = start_cursor,
                to = floor, "retention released entries before this consumer read them");
        }
        Ok(())
    }

    /// Hands `visit` the entries from `from` (an offset, with its frame's position if known)
    /// in commit order: at least one if any is visible, at most `max_entries`, and no more
    /// than `max_bytes` of payload beyond the first. Returns where the next read starts.
    ///
    /// An entry that cannot be read (damaged since it was written, a remote tier that fails)
    /// ends the entries handed out before it, and fails the read that starts at it: a batch
    /// never withholds good entries for a bad one after them (a consumer that commits past the
    /// bad one must have had them).
    pub(crate) fn gather(
        &self,
        shared: &Shared,
        buf: &mut ReadBuf,
        from: (u64, Option<FramePos>),
        max_entries: usize,
        max_bytes: usize,
        visit: &mut dyn FnMut(u64, &[u8]),
    ) -> io::Result<(u64, Option<FramePos>)> {
        let (mut cursor, mut pos) = from;
        let mut count = 0usize;
        match self.gather_from(
            shared,
            buf,
            (&mut cursor, &mut pos, &mut count),
            max_entries,
            max_bytes,
            visit,
        ) {
            Ok(()) => Ok((cursor, pos)),
            // `cursor` is the entry that failed: the next read starts there (and fails).
            Err(_) if count > 0 => Ok((cursor, None)),
            Err(e) => Err(e),
        }
    }

    /// [`gather`](Self::gather)'s loop: `at` is where it stands (offset, frame position, entries
    /// handed out), kept up to date whatever ends it.
    fn gather_from(
        &self,
        shared: &Shared,
        buf: &mut ReadBuf,
        at: (&mut u64, &mut Option<FramePos>, &mut usize),
        max_entries: usize,
        max_bytes: usize,
        visit: &mut dyn FnMut(u64, &[u8]),
    ) -> io::Result<()> {
        let visible = self.visible(shared);
        let (cursor, pos, count) = at;
        let mut bytes = 0usize;
        let max_entries = max_entries.min(MAX_BATCH_ENTRIES);
        'entries: while *cursor < visible && *count < max_entries {
            // Released under this read (retention, `release_before`): it ends here, and the
            // next read steps to the floor, counting the skip. Stepping over it here would find
            // the next entry from the floor on in the wrong place when a tiered block holds the
            // floor, and count nothing.
            if *cursor < self.floor() {
                break;
            }
            let found = self.locate(buf, pos.take(), *cursor)?;
            if found.as_ref().is_none_or(|f| f.2 != *cursor)
                && let Some(run) =
                    self.tiered_run(shared, *cursor, (max_entries - *count) as u64)?
            {
                // Not on local disk, but in the remote tier.
                while *cursor < run.end().min(visible) && *count < max_entries {
                    let Some(payload) = run.get(*cursor) else {
                        break;
                    };
                    if *count > 0 && bytes + payload.len() > max_bytes {
                        break 'entries;
                    }
                    bytes += payload.len();
                    *count += 1;
                    visit(*cursor, payload);
                    *cursor += 1;
                }
                continue;
            }
            // Released while the tier was asked (see the check above).
            if *cursor < self.floor() {
                break;
            }
            // Neither holds `cursor`: the next entry is the local chain's, or the tier's if it
            // holds an earlier one (a topic whose start was released before it tiered).
            if found.as_ref().is_none_or(|f| f.2 != *cursor)
                && let Some(next) = self.next_tiered(shared, *cursor)?
                && found.as_ref().is_none_or(|f| next < f.2)
                && next < visible
            {
                *cursor = next;
                continue;
            }
            if found.as_ref().is_none_or(|f| f.2 != *cursor) {
                self.check_tier_configured(shared, *cursor)?;
            }
            let (block, at, offset) = match found {
                Some(found) => found,
                None => break,
            };
            if offset >= visible {
                break;
            }
            let (frame, payload) = buf
                .frame_at(&block, at, block.data_end())
                .map_err(|e| on_topic(e, &self.name, Some(offset)))?;
            if frame.offset != offset {
                return Err(self.error(
                    io::ErrorKind::InvalidData,
                    format!("found offset {} where {offset} should be", frame.offset),
                    Some(offset),
                ));
            }
            if *count > 0 && bytes + payload.len() > max_bytes {
                *pos = Some((block, at));
                *cursor = offset;
                break;
            }
            bytes += payload.len();
            *count += 1;
            visit(offset, payload);
            *cursor = offset + 1;
            *pos = if *cursor < block.end_offset() || !block.is_sealed() {
                Some((block, at + frame.len))
            } else {
                None
            };
        }
        Ok(())
    }

    /// Reads the entry at `offset` without touching the cursor.
    pub(crate) fn read_at(&self, shared: &Shared, offset: u64) -> io::Result<Option<Vec<u8>>> {
        if offset >= self.visible(shared) {
            return Ok(None);
        }
        if offset < self.floor() {
            // Released by retention or deletion, even if its block is still on disk.
            return Err(self.error(
                io::ErrorKind::NotFound,
                "entry was released by retention or deletion",
                Some(offset),
            ));
        }
        let mut buf = ReadBuf::point();
        let held = self
            .locate(&mut buf, None, offset)?
            .filter(|&(_, _, found)| found == offset);
        let Some((block, at, _)) = held else {
            if let Some(run) = self.tiered_run(shared, offset, 1)?
                && let Some(payload) = run.get(offset)
            {
                self.counters.read(1);
                return Ok(Some(payload.to_vec()));
            }
            self.check_tier_configured(shared, offset)?;
            // Not stored. Below the persisted cursor it was consumed (its block released, or
            // its segment deleted before a crash took the blocks after it); at or above it, it
            // is in a gap (entries recovery cut or skipped).
            if offset < self.released_below() {
                return Err(self.error(
                    io::ErrorKind::NotFound,
                    "entry was consumed and is no longer stored",
                    Some(offset),
                ));
            }
            return Ok(None);
        };
        let (frame, payload) = buf
            .frame_at(&block, at, block.data_end())
            .map_err(|e| on_topic(e, &self.name, Some(offset)))?;
        if frame.offset != offset {
            return Err(self.error(io::ErrorKind::InvalidData, "offset mismatch", Some(offset)));
        }
        self.counters.read(1);
        Ok(Some(payload.to_vec()))
    }

    /// Fails when `offset`, not on the local disk, lies below the tier mark (so the remote
    /// tier holds it) while this open configures no tier for the topic: the reader must not
    /// step over entries that exist, as if they had been released. It may open with the tier,
    /// or commit its consumer to the first entry on the local disk.
    pub(crate) fn check_tier_configured(&self, shared: &Shared, offset: u64) -> io::Result<()> {
        let mark = self.tier_mark();
        // Below the floor the entry is released for every reader, whatever the tier holds.
        if offset < mark && offset >= self.floor() && shared.tiered(&self.name).is_none() {
            return Err(self.error(
                io::ErrorKind::NotFound,
                format!(
                    "the entry is in the remote tier (it holds the topic's entries below \
                     {mark}), and this open configures no tier for the topic: open with the \
                     tier, or commit the consumer to the first entry on the local disk"
                ),
                Some(offset),
            ));
        }
        Ok(())
    }

    /// Entries from `offset` on that the remote tier holds, if the topic tiers and a tiered
    /// block holds `offset` (see [`TierState::read`](crate::tier::TierState::read)).
    fn tiered_run(
        &self,
        shared: &Shared,
        offset: u64,
        want: u64,
    ) -> io::Result<Option<Arc<crate::tier::Run>>> {
        let Some((tier, _)) = shared.tiered(&self.name) else {
            return Ok(None);
        };
        if offset < self.floor() {
            return Ok(None);
        }
        match tier.read(&self.name, self.written_end(), offset, want) {
            // Released while the GET ran (the floor rose, and a tier pass expired the block):
            // not lost data; the callers see the floor and answer as for any release.
            Err(_) if offset < self.floor() => Ok(None),
            read => read.map_err(|e| on_topic(e, &self.name, Some(offset))),
        }
    }

    /// Where the remote tier next holds entries of the topic after `offset`, if it tiers.
    fn next_tiered(&self, shared: &Shared, offset: u64) -> io::Result<Option<u64>> {
        let Some((tier, _)) = shared.tiered(&self.name) else {
            return Ok(None);
        };
        tier.next_start(&self.name, self.written_end(), offset.max(self.floor()))
            .map_err(|e| on_topic(e, &self.name, Some(offset)))
    }

    /// Finds the frame of the first entry at or after `offset`: its block, file position and
    /// offset. `hint` is a known (block, position) of `offset` itself.
    fn locate(
        &self,
        buf: &mut ReadBuf,
        hint: Option<FramePos>,
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
        // Walk the block's frames to the target, from the last mark before it, leaving marks
        // for the next lookup (see `Block::walked`). Headers only: the caller checks the
        // payload it reads, and a damaged payload on the way must not hide the entries after
        // it (nor cost its read and CRC).
        let limit = block.data_end();
        let mut at = block.walk_start(target);
        loop {
            let (frame, _) = buf
                .header_at(&block, at, limit)
                .map_err(|e| on_topic(e, &self.name, Some(target)))?;
            block.walked(frame.offset, at);
            if frame.offset >= target {
                return Ok(Some((block, at, frame.offset)));
            }
            at += frame.len;
        }
    }

    /// Moves the cursor of consumer `name` (created if needed) to `offset` and persists it.
    ///
    /// A rewind must not race with a release: the check that `offset` is still retained and
    /// the lowering of the consumer's part of the release bound happen under the chain lock,
    /// which every release takes.
    pub(crate) fn commit(&self, shared: &Shared, name: &str, offset: u64) -> io::Result<()> {
        let visible = self.visible(shared);
        if offset > visible {
            return Err(self.error(
                io::ErrorKind::InvalidInput,
                format!("cannot commit past the end of the topic ({visible})"),
                Some(offset),
            ));
        }
        let released = |retained: u64| {
            self.error(
                io::ErrorKind::InvalidInput,
                format!("offsets below {retained} were consumed and released"),
                Some(offset),
            )
        };
        let retained = self.first_retained();
        if offset < retained {
            // Refused before the consumer is created: bad input changes nothing.
            return Err(released(retained));
        }
        // A new consumer is made at `offset` with one record (also when a removal races this
        // call): made at the oldest entry and then moved, it would stay (holding that space
        // back) when the move failed or was refused.
        self.with_reader(shared, name, Make::At(offset), |c, r, made| {
            if made {
                return Ok(());
            }
            {
                let chain = self.chain.read();
                let retained = self.first_retained_in(&chain);
                if offset < retained {
                    return Err(released(retained));
                }
                // Nothing at or after `offset` may be released from now on.
                c.persisted.fetch_min(offset, Ordering::AcqRel);
            }
            let (old, old_pos) = (r.cursor, r.pos.take());
            r.cursor = offset;
            if let Err(e) = self.persist(shared, c, r) {
                r.cursor = old;
                r.pos = old_pos;
                c.persisted.store(r.persisted, Ordering::Release);
                return Err(on_topic(e, &self.name, Some(offset)));
            }
            Ok(())
        })?;
        self.cursor_moved();
        Ok(())
    }
}
