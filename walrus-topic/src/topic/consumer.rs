//! A topic's consumers and floor, and what releases its blocks.
//!
//! Each consumer has its own cursor, persisted in its own record of the cursor file; the
//! default consumer (`""`) is the seed API's cursor. A consumer exists from its first consuming
//! read or commit (its record is written then, so a crash cannot forget it) and starts at the
//! oldest entry retained. The floor is the topic's own record: entries below it were released
//! by retention, deletion or [`Store::release_before`](crate::Store::release_before), whatever the consumers
//! read.
//!
//! A block is released once it is sealed and wholly below the *release bound*:
//! `max(floor, min over consumers of the persisted cursor)`, or the floor alone while the topic
//! has no consumer. The bound is read under the chain's write lock; everything that lowers a
//! consumer's persisted cursor (a rewind) or adds a consumer does so under the chain's read
//! lock, so a release never frees what someone is about to read.
//!
//! Deletion writes the floor at the topic's end with the deleted flag (the crash-atomic point:
//! recovery then ignores every consumer record of the topic), then marks each consumer's record
//! removed. The topic stays known, unlisted, so that its offsets are never handed out again: an
//! append to the name continues from the deleted topic's end, after marking any consumer record
//! still unmarked and clearing the flag.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use parking_lot::Mutex;
use walrus_block::{CursorKind, CursorRecord};

use crate::chain::{Block, FramePos, ReadBuf, unix_millis};
use crate::cursors::RecordKey;
use crate::error::on_topic;
use crate::shared::Shared;
use crate::stats::ConsumerInfo;

use super::Topic;

/// The name of a topic's default consumer: the seed API's cursor.
pub(crate) const DEFAULT_CONSUMER: &str = "";

/// A consumer as recovery found it.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerState {
    pub(crate) name: String,
    pub(crate) cursor: u64,
    pub(crate) generation: u64,
    pub(crate) pair: u64,
}

/// A consumer record that must be marked removed before the topic is used again (its topic was
/// deleted).
#[derive(Debug, Clone)]
pub(crate) struct StaleRecord {
    pub(crate) name: String,
    pub(crate) pair: u64,
    pub(crate) generation: u64,
}

/// The floor record's state.
#[derive(Debug, Clone, Default)]
pub(crate) struct FloorState {
    pub(crate) offset: u64,
    pub(crate) generation: u64,
    pub(crate) pair: Option<u64>,
    /// The topic was deleted and not appended to since.
    pub(crate) deleted: bool,
    /// Consumer records of the deleted topic not yet marked removed.
    pub(crate) stale: Vec<StaleRecord>,
}

pub(super) type Floor = FloorState;

/// A cursor written to the cursor file and not yet counted persisted: see
/// [`Topic::write_cursors`].
pub(crate) struct Written {
    consumer: Arc<Consumer>,
    /// The record's generation: written again since, the cursor is that write's to count.
    generation: u64,
    cursor: u64,
    /// Consuming reads counted against `persist_every` when it was written.
    reads: u32,
}

/// One consumer of a topic.
#[derive(Debug)]
pub(crate) struct Consumer {
    pub(super) name: Arc<str>,
    /// Mirror of the persisted cursor: the release bound reads it without the reader's lock.
    pub(super) persisted: AtomicU64,
    pub(super) reader: Mutex<Reader>,
}

#[derive(Debug)]
pub(super) struct Reader {
    /// Next offset a consuming read hands out.
    pub(super) cursor: u64,
    /// Cursor value last written to the cursor file.
    pub(super) persisted: u64,
    pub(super) generation: u64,
    pub(super) pair: Option<u64>,
    /// Consuming reads since the last persist.
    pub(super) unpersisted: u32,
    /// The cursor last written to the cursor file, persisted or not (see `persist_cursors`).
    pub(super) written: u64,
    /// Where the frame at `cursor` is, when known: a hint that does not keep its block (and
    /// the block's segment file, open) alive once the chain let it go — a consumer that
    /// stopped reading must not hold a released segment's space.
    pub(super) pos: Option<(Weak<Block>, u64)>,
    pub(super) buf: ReadBuf,
    /// Removed (or its topic deleted): look the consumer up again.
    pub(super) removed: bool,
    /// Entries released by retention before this consumer read them, since the store opened.
    pub(super) skipped: u64,
}

impl Reader {
    /// [`pos`](Self::pos), if its block is still alive.
    pub(super) fn hint(&self) -> Option<FramePos> {
        self.pos
            .as_ref()
            .and_then(|(block, at)| Some((block.upgrade()?, *at)))
    }

    /// Keeps `pos` as the hint for the next read.
    pub(super) fn hold(&mut self, pos: Option<FramePos>) {
        self.pos = pos.map(|(block, at)| (Arc::downgrade(&block), at));
    }
}

impl Consumer {
    fn new(name: Arc<str>, cursor: u64, generation: u64, pair: Option<u64>) -> Self {
        Self {
            name,
            persisted: AtomicU64::new(cursor),
            reader: Mutex::new(Reader {
                cursor,
                persisted: cursor,
                generation,
                pair,
                unpersisted: 0,
                written: cursor,
                pos: None,
                buf: ReadBuf::default(),
                removed: false,
                skipped: 0,
            }),
        }
    }

    pub(super) fn recovered(name: Arc<str>, state: &ConsumerState) -> Self {
        Self::new(name, state.cursor, state.generation, Some(state.pair))
    }
}

/// What a lookup of a consumer found.
enum Found {
    /// Found, or made by this lookup (`true`).
    It(Arc<Consumer>, bool),
    /// Another thread made it between the lookup and the creation: look again.
    Raced,
    /// It does not exist (and was not to be made).
    Absent,
}

/// Whether [`Topic::with_reader`] makes a consumer it does not find, and where.
#[derive(Clone, Copy, Debug)]
pub(super) enum Make {
    Not,
    /// At the oldest entry retained (a consuming read).
    AtOldest,
    /// At this offset, refused (`InvalidInput`, nothing made) below the entries retained.
    At(u64),
}

/// How many times an operation looks a consumer up again after finding it removed under it,
/// before it takes the floor lock to keep removals out.
const LOOKUPS: usize = 8;

impl Topic {
    /// The consumer `name`, if it exists.
    pub(super) fn consumer(&self, name: &str) -> Option<Arc<Consumer>> {
        self.consumers.read().get(name).cloned()
    }

    /// Runs `f` with the reader of consumer `name` and whether this call made it, making the
    /// consumer as `make` says (`Ok(None)` when it does not exist and is not to be made).
    pub(super) fn with_reader<R>(
        &self,
        shared: &Shared,
        name: &str,
        make: Make,
        mut f: impl FnMut(&Consumer, &mut Reader, bool) -> io::Result<R>,
    ) -> io::Result<Option<R>> {
        // Removed under this call each time (removals and re-creations in a loop): after
        // `LOOKUPS` tries, the rest with the floor lock, which a removal takes first, so the
        // consumer found cannot be removed before its reader is locked. Concurrency never
        // fails a call.
        let mut floor = None;
        for attempt in 0..2 * LOOKUPS {
            if attempt == LOOKUPS {
                floor = Some(self.floor.lock());
            }
            let (c, made) = match self.find(shared, name, make)? {
                Found::It(c, made) => (c, made),
                // Created by another thread meanwhile (not removable since, under the lock).
                Found::Raced => continue,
                Found::Absent => return Ok(None),
            };
            let mut r = c.reader.lock();
            if r.removed {
                // Under the lock not by a removal (those wait for it): a creation whose record
                // could not be written, which another thread found before it was withdrawn.
                continue;
            }
            drop(floor);
            return f(&c, &mut r, made).map(Some);
        }
        Err(self.error(
            io::ErrorKind::Other,
            format!("consumer {name:?} neither found nor created under the floor lock"),
            None,
        ))
    }

    /// Consumer `name`, made as `make` says.
    fn find(&self, shared: &Shared, name: &str, make: Make) -> io::Result<Found> {
        let at = match make {
            Make::Not => None,
            Make::AtOldest => Some(None),
            Make::At(offset) => Some(Some(offset)),
        };
        Ok(match (self.consumer(name), at) {
            (Some(c), _) => Found::It(c, false),
            (None, Some(at)) => self
                .create_consumer(shared, name, at)?
                .map_or(Found::Raced, |c| Found::It(c, true)),
            (None, None) => Found::Absent,
        })
    }

    /// Creates consumer `name` at `at` (the oldest retained entry if `None`) and persists its
    /// record. `None` if another thread created it meanwhile. Nothing is created if `at` was
    /// released (`InvalidInput`) or the record is not written.
    pub(super) fn create_consumer(
        &self,
        shared: &Shared,
        name: &str,
        at: Option<u64>,
    ) -> io::Result<Option<Arc<Consumer>>> {
        let c = Arc::new(Consumer::new(Arc::from(name), 0, 0, None));
        let mut r = c.reader.lock();
        {
            let chain = self.chain.read();
            let mut map = self.consumers.write();
            if map.contains_key(name) {
                return Ok(None);
            }
            if self.is_hidden() {
                return Err(self.error(io::ErrorKind::NotFound, "topic does not exist", None));
            }
            // Under the chain lock: nothing from here on is released before the consumer
            // counts in the release bound.
            let retained = self.first_retained_in(&chain);
            let start = match at {
                None => retained,
                Some(offset) if offset >= retained => offset,
                Some(offset) => {
                    return Err(self.error(
                        io::ErrorKind::InvalidInput,
                        format!("offsets below {retained} were consumed and released"),
                        Some(offset),
                    ));
                }
            };
            r.cursor = start;
            // Counted in the release bound at what is retained until its record is written
            // (`persist` raises it): a release meanwhile must not rest on a record that may
            // never be.
            r.persisted = retained;
            c.persisted.store(retained, Ordering::Release);
            map.insert(c.name.clone(), c.clone());
        }
        if let Err(e) = self.persist(shared, &c, &mut r) {
            r.removed = true;
            let mut map = self.consumers.write();
            if map.get(name).is_some_and(|m| Arc::ptr_eq(m, &c)) {
                map.remove(name);
            }
            return Err(on_topic(e, &self.name, None));
        }
        drop(r);
        Ok(Some(c))
    }

    /// Writes the cursor of `c` (synced as the options say) and releases what it consumed.
    pub(super) fn persist(&self, shared: &Shared, c: &Consumer, r: &mut Reader) -> io::Result<()> {
        let sync = shared.options.sync_cursor_writes || shared.options.durable_cursors;
        self.persist_synced(shared, c, r, sync)
    }

    /// [`persist`](Self::persist), synced if `sync`.
    fn persist_synced(
        &self,
        shared: &Shared,
        c: &Consumer,
        r: &mut Reader,
        sync: bool,
    ) -> io::Result<()> {
        self.write_cursor(shared, c, r, sync)?;
        r.persisted = r.cursor;
        r.unpersisted = 0;
        c.persisted.store(r.persisted, Ordering::Release);
        self.release_consumed(shared);
        Ok(())
    }

    /// Writes the consumer's cursor record (synced if `sync`), without counting it persisted.
    fn write_cursor(
        &self,
        shared: &Shared,
        c: &Consumer,
        r: &mut Reader,
        sync: bool,
    ) -> io::Result<()> {
        // The consumer's first record (its creation).
        let first = r.pair.is_none();
        let pair = match r.pair {
            Some(p) => p,
            None => {
                let (p, last) = shared
                    .cursors
                    .pair_for(&RecordKey::consumer(&self.name, &c.name));
                r.pair = Some(p);
                r.generation = r.generation.max(last);
                p
            }
        };
        let record = CursorRecord {
            consumer: c.name.to_string(),
            ..CursorRecord::new(&*self.name, r.generation + 1, r.cursor)
        };
        if sync {
            // On a failed sync: the cursor last written (entries below it were handed out),
            // or, for a creation, no consumer.
            let undo = CursorRecord {
                offset: r.written,
                removed: first,
                ..record.clone()
            };
            shared.cursors.write_synced(&record, pair, &undo)?;
        } else {
            shared.cursors.write(&record, pair)?;
        }
        r.generation += 1;
        r.written = r.cursor;
        Ok(())
    }

    /// Writes the cursor of every consumer that moved since its last persist, not synced.
    /// Without durable cursors a write counts as persisted at once (nothing is promised past
    /// a process crash). With them, each cursor written here, or written before and not yet
    /// counted, goes to `written`, for [`count_synced`](Self::count_synced) once the caller
    /// has synced the cursor file (one sync for every topic, not one per consumer). Without
    /// `wait`, a consumer whose reader is busy (a read waiting for the remote tier holds it)
    /// is passed over. Whether none was; the first error, the other consumers attempted.
    pub(crate) fn write_cursors(
        &self,
        shared: &Shared,
        wait: bool,
        written: &mut Vec<Written>,
    ) -> io::Result<bool> {
        let durable = shared.options.durable_cursors || shared.options.sync_cursor_writes;
        let all: Vec<Arc<Consumer>> = self.consumers.read().values().cloned().collect();
        let mut first_err = None;
        let mut complete = true;
        for c in all {
            let mut r = if wait {
                c.reader.lock()
            } else if let Some(r) = c.reader.try_lock() {
                r
            } else {
                complete = false;
                continue;
            };
            if r.removed || (r.cursor == r.persisted && r.unpersisted == 0) {
                continue;
            }
            let result = if durable {
                let result = if r.written == r.cursor {
                    Ok(())
                } else {
                    self.write_cursor(shared, &c, &mut r, false)
                };
                if result.is_ok() {
                    written.push(Written {
                        consumer: c.clone(),
                        generation: r.generation,
                        cursor: r.written,
                        reads: r.unpersisted,
                    });
                }
                result
            } else {
                self.persist_synced(shared, &c, &mut r, false)
            };
            if let Err(e) = result {
                first_err.get_or_insert(on_topic(e, &self.name, None));
            }
        }
        first_err.map_or(Ok(complete), Err)
    }

    /// Counts the cursors [`write_cursors`](Self::write_cursors) listed as persisted, after a
    /// sync of the cursor file that started once they were written: the release bound and
    /// the reads' count (`persist_every`) go on from them. A cursor written again since is
    /// left to that write, one counted already is not counted again. Without `wait`, busy
    /// consumers are passed over; whether none was.
    pub(crate) fn count_synced(&self, shared: &Shared, written: Vec<Written>, wait: bool) -> bool {
        let mut complete = true;
        let mut counted = false;
        for w in written {
            let mut r = if wait {
                w.consumer.reader.lock()
            } else if let Some(r) = w.consumer.reader.try_lock() {
                r
            } else {
                complete = false;
                continue;
            };
            // Counted already (another thread's pass listed the same write: a flush beside
            // the background's): its reads must not come off the count twice.
            if r.removed || r.generation != w.generation || r.persisted >= w.cursor {
                continue;
            }
            r.persisted = w.cursor;
            r.unpersisted = r.unpersisted.saturating_sub(w.reads);
            w.consumer.persisted.store(w.cursor, Ordering::Release);
            counted = true;
        }
        if counted {
            self.release_consumed(shared);
        }
        complete
    }

    /// The cursor of consumer `name`: the next offset its consuming read returns. A default
    /// consumer not yet created reads from the oldest entry retained.
    pub(crate) fn cursor(&self, name: &str) -> Option<u64> {
        match self.consumer(name) {
            Some(c) => Some(c.reader.lock().cursor.max(self.floor())),
            None if name == DEFAULT_CONSUMER => Some(self.first_retained()),
            None => None,
        }
    }

    /// The topic's consumers, sorted by name.
    pub(crate) fn consumer_infos(&self, shared: &Shared) -> Vec<ConsumerInfo> {
        let all: Vec<Arc<Consumer>> = self.consumers.read().values().cloned().collect();
        let end = self.visible(shared);
        let floor = self.floor();
        all.iter()
            .filter_map(|c| {
                // A reader may be waiting for the remote tier with its lock held: stats never
                // wait for it, they report the consumer as last persisted.
                let Some(r) = c.reader.try_lock_for(std::time::Duration::from_millis(5)) else {
                    let persisted = c.persisted.load(Ordering::Acquire);
                    let cursor = persisted.max(floor);
                    return Some(ConsumerInfo {
                        name: c.name.to_string(),
                        cursor,
                        persisted,
                        lag: end.saturating_sub(cursor),
                        skipped: floor.saturating_sub(persisted),
                    });
                };
                let cursor = r.cursor.max(floor);
                (!r.removed).then(|| ConsumerInfo {
                    name: c.name.to_string(),
                    cursor,
                    persisted: r.persisted,
                    lag: end.saturating_sub(cursor),
                    skipped: r.skipped + floor.saturating_sub(r.cursor),
                })
            })
            .collect()
    }

    /// Removes consumer `name`: its record is marked removed and it no longer holds back the
    /// release of blocks. Whether it existed.
    pub(crate) fn remove_consumer(&self, shared: &Shared, name: &str) -> io::Result<bool> {
        let mut f = self.floor.lock();
        let Some(c) = self.consumer(name) else {
            return Ok(false);
        };
        let mut r = c.reader.lock();
        if r.removed {
            return Ok(false);
        }
        let context = |e: io::Error| {
            on_topic(
                io::Error::new(e.kind(), format!("removing consumer {name:?}: {e}")),
                &self.name,
                None,
            )
        };
        // What was released while this consumer counted must stay released once it is gone
        // (recovery would bring those blocks back): the floor takes over the bound it held.
        // Raised under the chain's write lock, so that no rewind or new consumer can slip
        // below it between reading the bound and raising the floor.
        let old_floor = self.floor();
        let bound = if shared.tiered(&self.name).is_some() {
            // Not for a tiered topic: what its consumers released is in the remote tier, still
            // readable, and what they consumed but the tier does not hold yet was not released.
            old_floor
        } else {
            let _chain = self.chain.write();
            let bound = self.release_bound();
            self.floor_at.fetch_max(bound, Ordering::AcqRel);
            bound
        };
        // Synced before the removal is written: the two records reach the disk in any order,
        // and the removal without the floor would leave the released entries missing below
        // the watermark.
        let written = if bound > f.offset {
            self.write_floor(shared, &mut f, bound, false, true)
        } else {
            Ok(())
        };
        if let Err(e) = written
            .and_then(|()| self.write_removed(shared, &c.name, &mut r))
            .and_then(|()| shared.cursors.sync())
        {
            // Kept, usable (after a crash it may or may not be gone: the error leaves that
            // open, as any failed write does).
            r.removed = false;
            self.floor_at
                .store(old_floor.max(f.offset), Ordering::Release);
            return Err(context(e));
        }
        {
            let mut map = self.consumers.write();
            if map.get(name).is_some_and(|m| Arc::ptr_eq(m, &c)) {
                map.remove(name);
            }
        }
        drop(r);
        drop(f);
        self.release_consumed(shared);
        self.cursor_moved();
        Ok(true)
    }

    /// Marks the record of a consumer removed (in memory too, on success).
    fn write_removed(&self, shared: &Shared, name: &str, r: &mut Reader) -> io::Result<()> {
        if let Some(pair) = r.pair {
            let record = CursorRecord {
                consumer: name.to_owned(),
                removed: true,
                ..CursorRecord::new(&*self.name, r.generation + 1, r.persisted)
            };
            shared.cursors.write(&record, pair)?;
            r.generation += 1;
        }
        r.removed = true;
        Ok(())
    }

    /// Entries below this were released by retention or deletion.
    pub(crate) fn floor(&self) -> u64 {
        self.floor_at.load(Ordering::Acquire)
    }

    /// The floor as its record was last written (the mirror [`floor`](Self::floor) may run
    /// ahead of it while a consumer's removal writes it): a sync of the cursor file that
    /// starts after this call makes it durable.
    pub(crate) fn written_floor(&self) -> u64 {
        self.floor.lock().offset
    }

    /// Raises the floor to `offset` (marking the topic deleted if `deleted`) and persists it
    /// (synced if `sync`); memory follows only once that succeeded.
    fn write_floor(
        &self,
        shared: &Shared,
        f: &mut Floor,
        offset: u64,
        deleted: bool,
        sync: bool,
    ) -> io::Result<()> {
        let (pair, generation) = match f.pair {
            Some(p) => (p, f.generation),
            None => {
                let (p, last) = shared.cursors.pair_for(&RecordKey::floor(&self.name));
                (p, f.generation.max(last))
            }
        };
        let record = CursorRecord {
            kind: CursorKind::Floor,
            removed: deleted,
            ..CursorRecord::new(&*self.name, generation + 1, offset)
        };
        if sync {
            // On a failed sync: the floor as it stays.
            let undo = CursorRecord {
                offset: f.offset,
                removed: f.deleted,
                ..record.clone()
            };
            shared.cursors.write_synced(&record, pair, &undo)?;
        } else {
            shared.cursors.write(&record, pair)?;
        }
        f.pair = Some(pair);
        f.generation = generation + 1;
        f.offset = offset;
        f.deleted = deleted;
        self.floor_at.fetch_max(offset, Ordering::AcqRel);
        Ok(())
    }

    /// The release bound (see the [module docs](self)); call with the chain lock held.
    fn release_bound(&self) -> u64 {
        let floor = self.floor();
        let map = self.consumers.read();
        map.values()
            .map(|c| c.persisted.load(Ordering::Acquire))
            .min()
            .map_or(floor, |m| m.max(floor))
    }

    /// Releases every sealed span wholly below the release bound. A tiered topic's span
    /// leaves the local disk only once the remote tier holds all of it, then when consumed or
    /// beyond the topic's local retention (below the floor it goes whatever the tier holds:
    /// those entries are gone for every reader).
    pub(crate) fn release_consumed(&self, shared: &Shared) {
        let tiered = shared
            .tiered(&self.name)
            .map(|(tier, tiering)| (tier.topic(&self.name), tiering));
        let mut released = Vec::new();
        {
            let mut chain = self.chain.write();
            let bound = self.release_bound();
            let floor = self.floor();
            let beyond_local = tiered.as_ref().and_then(|(_, tiering)| {
                retention_floor(&chain, tiering.local, unix_millis(SystemTime::now()))
            });
            while let Some(front) = chain.front() {
                let end = front.end_offset();
                let go = front.is_sealed()
                    && match &tiered {
                        None => end <= bound,
                        Some((tier, _)) => {
                            end <= floor
                                || ((end <= bound || beyond_local.is_some_and(|k| end <= k))
                                    && end <= self.tier_mark()
                                    && tier.catalog.lock().covers(front.first_offset, end))
                        }
                    };
                if !go {
                    break;
                }
                if let Some(b) = chain.pop_front() {
                    released.push(b);
                }
            }
        }
        for b in released.iter().filter(|b| b.releases) {
            shared.release_block(b);
        }
    }

    /// Offsets below this may not be read at: released (below the bound) or never stored.
    pub(super) fn released_below(&self) -> u64 {
        let _chain = self.chain.read();
        self.release_bound()
    }

    /// Releases the oldest sealed blocks beyond the topic's retention, raising its floor.
    ///
    /// Unless `wait`, gives up at once when the floor is locked (a consumer's removal may hold
    /// it while that consumer's read waits for the remote tier): for an append that sealed a
    /// block, which must not wait for that; the next seal or the maintenance applies it.
    pub(crate) fn apply_retention(
        &self,
        shared: &Shared,
        now: SystemTime,
        wait: bool,
    ) -> io::Result<()> {
        let retention = shared.options.retention_for(&self.name);
        if !retention.is_limited() || self.is_hidden() {
            return Ok(());
        }
        // A local chain of one block (the newest is always kept) releases nothing: a walk over
        // many small topics takes no lock of theirs.
        if self.chain.read().len() < 2 && shared.tiered(&self.name).is_none() {
            return Ok(());
        }
        let mut f = if wait {
            self.floor.lock()
        } else {
            match self.floor.try_lock() {
                Some(f) => f,
                None => return Ok(()),
            }
        };
        let target = {
            let chain = self.chain.read();
            let now = unix_millis(now);
            match shared.tiered(&self.name) {
                None => retention_floor(&chain, retention, now),
                // What the remote tier holds counts too: the retention of a tiered topic is
                // of all it keeps, local or not.
                Some((tier, _)) => {
                    let state = tier.topic(&self.name);
                    let catalog = state.catalog.lock();
                    let local_first = chain.front().map_or(u64::MAX, |b| b.first_offset);
                    let tiered = catalog
                        .blocks
                        .values()
                        .filter(|i| i.first_offset < local_first)
                        .map(|i| RetainedUnit {
                            first: i.first_offset,
                            bytes: i.data_len,
                            // Unknown (0): counted from now, never early.
                            sealed_at: Some(if i.sealed_ms == 0 { now } else { i.sealed_ms }),
                        });
                    retention_target(tiered.chain(chain_units(&chain)), retention, now)
                }
            }
        };
        let Some(target) = target.filter(|&t| t > f.offset) else {
            return Ok(());
        };
        self.write_floor(shared, &mut f, target, false, false)
            .map_err(|e| on_topic(e, &self.name, Some(target)))?;
        drop(f);
        tracing::debug!(topic = %self.name, floor = target, "retention released old blocks");
        self.release_consumed(shared);
        Ok(())
    }

    /// Raises the floor to `offset`, synced, and releases the blocks wholly below it: see
    /// [`Store::release_before`](crate::Store::release_before). Whether the floor rose.
    pub(crate) fn release_before(&self, shared: &Shared, offset: u64) -> io::Result<bool> {
        // The visible end only grows: checked before the lock, it still holds under it.
        let visible = self.visible(shared);
        if offset > visible {
            return Err(self.error(
                io::ErrorKind::InvalidInput,
                format!("cannot release past the end of the topic ({visible})"),
                Some(offset),
            ));
        }
        let mut f = self.floor.lock();
        if f.deleted || offset <= f.offset {
            return Ok(false);
        }
        // Synced: a floor that a crash could take back would hand released entries out again.
        self.write_floor(shared, &mut f, offset, false, true)
            .map_err(|e| on_topic(e, &self.name, Some(offset)))?;
        drop(f);
        self.release_consumed(shared);
        Ok(true)
    }

    /// Deletes the topic: see the [module docs](self).
    pub(crate) fn delete(&self, shared: &Shared) -> io::Result<()> {
        let mut w = self.writer.lock();
        let end = w.next_offset;
        let mut f = self.floor.lock();
        if f.deleted {
            return Ok(());
        }
        // The crash-atomic point: synced before anything else changes.
        self.write_floor(shared, &mut f, end, true, true)
            .map_err(|e| on_topic(e, &self.name, Some(end)))?;
        // The writer's block is done: the next append (to a re-created topic) starts a new one.
        if let Some(b) = w.block.take() {
            w.last_len = b.len;
            w.pos = 0;
            b.seal();
            shared.seal_block(&b);
        }
        let drained: Vec<Arc<Consumer>> = {
            let _chain = self.chain.read();
            let mut map = self.consumers.write();
            self.hidden.store(true, Ordering::Release);
            std::mem::take(&mut *map).into_values().collect()
        };
        for c in drained {
            let mut r = c.reader.lock();
            if r.removed {
                continue;
            }
            let (pair, generation) = (r.pair, r.generation);
            if let Err(e) = self.write_removed(shared, &c.name, &mut r) {
                tracing::warn!(topic = %self.name, consumer = %c.name, error = %e,
                    "consumer record of a deleted topic not yet marked removed; retried on reuse");
                r.removed = true;
                if let Some(pair) = pair {
                    f.stale.push(StaleRecord {
                        name: c.name.to_string(),
                        pair,
                        generation,
                    });
                }
            }
        }
        drop(f);
        drop(w);
        self.release_consumed(shared);
        self.progress.arrivals.notify();
        Ok(())
    }

    /// Readies a hidden topic for its first append: a deleted topic marks its stale consumer
    /// records removed and clears the deleted flag. The topic is listed only once the append's
    /// bytes are written (`write_unit`); returns whether the flag was cleared, which
    /// [`undo_revive`](Self::undo_revive) puts back if the append fails.
    pub(crate) fn revive(&self, shared: &Shared) -> io::Result<bool> {
        let mut f = self.floor.lock();
        if !f.deleted {
            return Ok(false);
        }
        while let Some(stale) = f.stale.last().cloned() {
            let record = CursorRecord {
                consumer: stale.name.clone(),
                removed: true,
                ..CursorRecord::new(&*self.name, stale.generation + 1, f.offset)
            };
            shared.cursors.write(&record, stale.pair)?;
            f.stale.pop();
        }
        // Every removal (these, and those the deletion wrote) durable before the flag goes:
        // otherwise a crash could keep the cleared floor and lose a removal, bringing a
        // consumer of the deleted topic back.
        shared.cursors.sync()?;
        let offset = f.offset;
        self.write_floor(shared, &mut f, offset, false, false)?;
        Ok(true)
    }

    /// After a failed first append to a deleted topic: the deletion record goes back, synced,
    /// so the topic stays unlisted across a reopen as well. Should that fail too, the record on
    /// disk may say live: the topic is listed now, as a reopen would list it.
    pub(crate) fn undo_revive(&self, shared: &Shared) {
        let mut f = self.floor.lock();
        let offset = f.offset;
        if let Err(e) = self.write_floor(shared, &mut f, offset, true, true) {
            tracing::warn!(topic = %self.name, error = %e,
                "a failed append to a deleted topic could not restore its deletion; listed");
            self.hidden.store(false, Ordering::Release);
        }
    }
}

/// A unit retention counts and releases whole: a local span or a tiered block.
struct RetainedUnit {
    first: u64,
    /// Bytes it holds against `max_bytes` (a block recovered as several spans counts once).
    bytes: u64,
    /// When it was sealed (`None`: not yet, and so neither is anything after it).
    sealed_at: Option<u64>,
}

/// The units of a local chain, oldest first.
fn chain_units(chain: &VecDeque<Arc<Block>>) -> impl Iterator<Item = RetainedUnit> + '_ {
    chain.iter().map(|b| RetainedUnit {
        first: b.first_offset,
        bytes: if b.releases { b.len } else { 0 },
        sealed_at: b.sealed_at(),
    })
}

/// The floor retention asks for: the first offset of the oldest block to keep, if some sealed
/// block is beyond the limits. The newest block is always kept.
fn retention_floor(
    chain: &VecDeque<Arc<Block>>,
    retention: crate::Retention,
    now_millis: u64,
) -> Option<u64> {
    retention_target(chain_units(chain), retention, now_millis)
}

/// [`retention_floor`] over `units`, oldest first.
fn retention_target(
    units: impl Iterator<Item = RetainedUnit>,
    retention: crate::Retention,
    now_millis: u64,
) -> Option<u64> {
    let units: Vec<RetainedUnit> = units.collect();
    let mut bytes: u64 = units.iter().map(|u| u.bytes).sum();
    let max_age = retention
        .max_age
        .map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX));
    let mut target = None;
    for (i, u) in units.iter().enumerate() {
        if i + 1 == units.len() {
            break;
        }
        let Some(sealed_at) = u.sealed_at else {
            break;
        };
        let too_big = retention.max_bytes.is_some_and(|m| bytes > m);
        let too_old = max_age.is_some_and(|a| now_millis.saturating_sub(sealed_at) >= a);
        if !(too_big || too_old) {
            break;
        }
        bytes = bytes.saturating_sub(u.bytes);
        target = units.get(i + 1).map(|next| next.first);
    }
    target
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use walrus_io::{SimStorage, Storage};

    use super::{Consumer, LOOKUPS};
    use crate::{Store, StoreOptions};

    /// A consumer removed under every lookup of a read (here: marked removed while the read
    /// waits for its reader, a fresh one in its place each time) does not fail the read: past
    /// the lookups, the read takes the floor lock that removals take first.
    #[test]
    fn a_consumer_removed_under_every_lookup_does_not_fail_the_read() {
        let sim = SimStorage::new(7);
        let storage: Arc<dyn Storage> = Arc::new(sim);
        let store = Store::open("/w", storage, StoreOptions::new()).unwrap();
        for _ in 0..3 {
            store.append("t", b"x").unwrap();
        }
        assert!(store.read_next_as("t", "c", true).unwrap().is_some());
        let topic = store.topic("t").unwrap();
        let first = topic.consumer("c").unwrap();
        let fresh: Vec<Arc<Consumer>> = (0..=LOOKUPS)
            .map(|_| Arc::new(Consumer::new(Arc::from("c"), 1, 0, None)))
            .collect();
        std::thread::scope(|s| {
            let mut held = first.reader.lock();
            let read = s.spawn(|| store.read_next_as("t", "c", false));
            for next in &fresh {
                // Bounded: the read is waiting for the reader held here by then.
                std::thread::sleep(Duration::from_millis(20));
                let next_held = next.reader.lock();
                topic
                    .consumers
                    .write()
                    .insert(Arc::from("c"), Arc::clone(next));
                held.removed = true;
                drop(held);
                held = next_held;
            }
            std::thread::sleep(Duration::from_millis(20));
            drop(held);
            let got = read.join().unwrap();
            assert_eq!(got.unwrap().map(|(o, _)| o), Some(1));
        });
    }
}
