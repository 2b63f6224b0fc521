//! Per-segment-file block accounting and the deletion rule.
//!
//! For every segment file the tracker knows which blocks were handed out (keyed by their start
//! offset), which of them are still locked by a writer and which have been checkpointed (fully
//! consumed) by readers, and whether the allocator has closed the file. Every transition is
//! idempotent per block, so a reader that reports the same block twice does not count it twice.
//!
//! State lives in a fixed set of shards, each a short-held mutex over a map of files, so writers
//! sealing and readers checkpointing in different files rarely meet.

use std::collections::HashMap;
use std::fmt;
use std::io;

use crate::BlockAlloc;
use crate::error::segment_error;
use crate::sync::Mutex;

// Few shards under loom: every mutex is a modelled object.
#[cfg(not(loom))]
const SHARDS: usize = 16;
#[cfg(loom)]
const SHARDS: usize = 2;

/// What the caller must do with a segment file after a tracker update.
///
/// [`Deletion::Now`] is returned by exactly one call per file: the one that made the deletion
/// rule true. The tracker forgets the file's blocks at that point, so the caller owns the
/// deletion.
#[must_use = "a segment reported deletable is reported only once; ignoring it leaks the file"]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Deletion {
    /// Keep the file.
    NotYet,
    /// Delete the file now: it is fully allocated, no block is locked and every block has been
    /// checkpointed.
    Now {
        /// The segment to delete.
        segment: u64,
    },
}

impl Deletion {
    /// The segment to delete, if any.
    pub const fn segment(self) -> Option<u64> {
        match self {
            Self::NotYet => None,
            Self::Now { segment } => Some(segment),
        }
    }

    /// Whether the file must be deleted now.
    pub const fn is_now(self) -> bool {
        matches!(self, Self::Now { .. })
    }
}

/// A block as found in a segment file at recovery, for [`FileTracker::restore_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RestoredBlock {
    /// Offset of the block in its segment file.
    pub start: u64,
    /// Length of the block in bytes.
    pub len: u64,
    /// Whether the block's writer sealed it; an unsealed block is restored as locked (its
    /// writer resumes it).
    pub sealed: bool,
    /// Whether readers have fully consumed the block.
    pub checkpointed: bool,
}

/// A snapshot of one file's counters, from [`FileTracker::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStats {
    /// Blocks handed out in the file so far.
    pub handed_out: u64,
    /// Blocks still locked by a writer.
    pub locked: u64,
    /// Blocks checkpointed (fully consumed).
    pub checkpointed: u64,
    /// Whether the allocator has closed the file: no further block will be handed out from it.
    pub fully_allocated: bool,
    /// Whether the file has already been reported deletable.
    pub deleted: bool,
}

#[derive(Debug, Clone, Copy)]
struct BlockState {
    start: u64,
    len: u64,
    locked: bool,
    checkpointed: bool,
}

impl BlockState {
    fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// A file's blocks sorted by start. Blocks arrive almost in address order, so an insert is
/// nearly always a push, and a lookup is a binary search over a flat array.
#[derive(Debug, Default)]
struct Blocks(Vec<BlockState>);

impl Blocks {
    fn len(&self) -> usize {
        self.0.len()
    }

    /// Inserts `block` unless it overlaps a block already present, whose start is returned.
    /// `block.len` must be non-zero and `block.start + block.len` must not overflow.
    fn insert(&mut self, block: BlockState) -> Result<(), u64> {
        let at = self.0.partition_point(|b| b.start < block.start);
        if let Some(prev) = at.checked_sub(1).and_then(|i| self.0.get(i))
            && prev.end() > block.start
        {
            return Err(prev.start);
        }
        if let Some(next) = self.0.get(at)
            && next.start < block.end()
        {
            return Err(next.start);
        }
        self.0.insert(at, block);
        Ok(())
    }

    fn get_mut(&mut self, start: u64) -> Option<&mut BlockState> {
        let at = self.0.binary_search_by_key(&start, |b| b.start).ok()?;
        self.0.get_mut(at)
    }
}

#[derive(Debug, Default)]
struct FileState {
    blocks: Blocks,
    locked: u64,
    checkpointed: u64,
    /// Set when the file is fully allocated: the exact number of blocks handed out from it.
    /// Blocks are recorded after the allocator's lock is released, so the file may be closed
    /// before its last blocks arrive here; comparing with the final count keeps those late
    /// blocks from being missed.
    expected: Option<u64>,
}

impl FileState {
    fn handed_out(&self) -> u64 {
        self.blocks.len() as u64
    }

    /// The deletion rule. `expected == handed_out` implies at least one block unless the
    /// allocator closed the file without ever handing out a block from it (an empty file).
    fn deletable(&self) -> bool {
        self.expected == Some(self.handed_out())
            && self.locked == 0
            && self.checkpointed == self.handed_out()
    }

    fn stats(&self) -> FileStats {
        FileStats {
            handed_out: self.handed_out(),
            locked: self.locked,
            checkpointed: self.checkpointed,
            fully_allocated: self.expected.is_some(),
            deleted: false,
        }
    }
}

#[derive(Debug)]
enum FileEntry {
    Live(FileState),
    /// Reported deletable; only the block count is kept so late, repeated reports are no-ops.
    Deleted {
        handed_out: u64,
    },
}

type Shard = HashMap<u64, FileEntry>;

/// Thread-safe per-file block accounting and deletion rule.
///
/// A file may be deleted when it is fully allocated, no block in it is locked, it holds at least
/// one block, and every block has been checkpointed. (The one exception to "at least one
/// block": a file closed by [`mark_fully_allocated`](Self::mark_fully_allocated) with a count
/// of zero was declared empty, and may go.) Each method returns a [`Deletion`]; the one
/// call whose update made the rule true returns [`Deletion::Now`], every other call
/// [`Deletion::NotYet`].
///
/// ```
/// use walrus_alloc::{BlockAlloc, Deletion, FileTracker};
///
/// let tracker = FileTracker::new();
/// let block = BlockAlloc { segment: 7, start: 4096, len: 4096 };
/// tracker.track(block)?;
/// assert_eq!(tracker.mark_fully_allocated(7, 1)?, Deletion::NotYet);
/// assert_eq!(tracker.checkpoint(7, 4096)?, Deletion::NotYet); // still locked
/// assert_eq!(tracker.checkpoint(7, 4096)?, Deletion::NotYet); // counted once
/// assert_eq!(tracker.seal(7, 4096)?, Deletion::Now { segment: 7 });
/// assert_eq!(tracker.seal(7, 4096)?, Deletion::NotYet); // reported once
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct FileTracker {
    shards: Box<[Mutex<Shard>]>,
}

impl Default for FileTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for FileTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileTracker")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl FileTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn with_shard<R>(&self, segment: u64, f: impl FnOnce(&mut Shard) -> R) -> R {
        // `SHARDS` is a small constant, so the remainder always fits in a usize.
        let index = (segment % SHARDS as u64) as usize;
        let mut shard = self.shards[index].lock();
        f(&mut shard)
    }

    /// Records a block just handed out to a writer: counted as handed out and locked.
    ///
    /// [`BlockAllocator`](crate::BlockAllocator) calls this for every block it hands out; call
    /// it directly only when allocating blocks some other way.
    ///
    /// # Errors
    ///
    /// - [`io::ErrorKind::AlreadyExists`] if the block overlaps a block already tracked.
    /// - [`io::ErrorKind::InvalidInput`] if the block is empty, ends past `u64::MAX`, or the file
    ///   is fully allocated (all its blocks are known) or was already reported deletable.
    pub fn track(&self, block: BlockAlloc) -> io::Result<()> {
        let BlockAlloc {
            segment,
            start,
            len,
        } = block;
        if len == 0 || start.checked_add(len).is_none() {
            return Err(segment_error(
                io::ErrorKind::InvalidInput,
                segment,
                format_args!("invalid block at {start} of {len} bytes"),
            ));
        }
        self.with_shard(segment, |shard| {
            let state = match shard
                .entry(segment)
                .or_insert_with(|| FileEntry::Live(FileState::default()))
            {
                FileEntry::Live(state) => state,
                FileEntry::Deleted { .. } => {
                    return Err(segment_error(
                        io::ErrorKind::InvalidInput,
                        segment,
                        format_args!(
                            "block at {start} handed out after the file was reported deletable"
                        ),
                    ));
                }
            };
            if state.expected.is_some_and(|n| state.handed_out() >= n) {
                return Err(segment_error(
                    io::ErrorKind::InvalidInput,
                    segment,
                    format_args!("block at {start} handed out from a fully allocated file"),
                ));
            }
            let new = BlockState {
                start,
                len,
                locked: true,
                checkpointed: false,
            };
            if let Err(other) = state.blocks.insert(new) {
                return Err(segment_error(
                    io::ErrorKind::AlreadyExists,
                    segment,
                    format_args!(
                        "block at {start} of {len} bytes overlaps the tracked block at {other}"
                    ),
                ));
            }
            state.locked += 1;
            Ok(())
        })
    }

    /// The writer is done with the block at `start`: it is no longer locked. Repeated calls are
    /// no-ops.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] if the segment or the block is not tracked.
    pub fn seal(&self, segment: u64, start: u64) -> io::Result<Deletion> {
        self.update_block(segment, start, "seal", |block| block.locked = false)
    }

    /// Readers have fully consumed the block at `start`. Counted at most once per block,
    /// however many times it is reported. A block may be checkpointed while still locked; the
    /// file is still not deleted until the block is sealed.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] if the segment or the block is not tracked.
    pub fn checkpoint(&self, segment: u64, start: u64) -> io::Result<Deletion> {
        self.update_block(segment, start, "checkpoint", |block| {
            block.checkpointed = true;
        })
    }

    fn update_block(
        &self,
        segment: u64,
        start: u64,
        what: &str,
        f: impl FnOnce(&mut BlockState),
    ) -> io::Result<Deletion> {
        self.with_shard(segment, |shard| {
            let entry = shard.get_mut(&segment).ok_or_else(|| {
                segment_error(
                    io::ErrorKind::NotFound,
                    segment,
                    format_args!("{what} of block at {start}: segment not tracked"),
                )
            })?;
            let state = match entry {
                FileEntry::Live(state) => state,
                // Every block of a deleted file was sealed and checkpointed: a late repeat is a
                // no-op, and the file was already reported.
                FileEntry::Deleted { .. } => return Ok(Deletion::NotYet),
            };
            let block = state.blocks.get_mut(start).ok_or_else(|| {
                segment_error(
                    io::ErrorKind::NotFound,
                    segment,
                    format_args!("{what} of block at {start}: no block starts there"),
                )
            })?;
            // Counters follow the block's flags, so repeating an update changes nothing.
            let before = *block;
            f(block);
            if before.locked && !block.locked {
                state.locked -= 1;
            }
            if !before.checkpointed && block.checkpointed {
                state.checkpointed += 1;
            }
            Ok(settle(shard, segment))
        })
    }

    /// The file is fully allocated: exactly `blocks` blocks were handed out from it and no more
    /// will be. The blocks may still be [`track`](Self::track)ed after this call; the file is
    /// not deleted before all of them have been.
    ///
    /// Closing a file with `blocks == 0` declares it empty, so it may be deleted at once.
    /// Repeating the call with the same count is a no-op.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] if more than `blocks` blocks are already tracked, or the
    /// file was already closed with a different count.
    pub fn mark_fully_allocated(&self, segment: u64, blocks: u64) -> io::Result<Deletion> {
        self.with_shard(segment, |shard| {
            let state = match shard
                .entry(segment)
                .or_insert_with(|| FileEntry::Live(FileState::default()))
            {
                FileEntry::Live(state) => state,
                FileEntry::Deleted { handed_out } if *handed_out == blocks => {
                    return Ok(Deletion::NotYet);
                }
                FileEntry::Deleted { handed_out } => {
                    return Err(segment_error(
                        io::ErrorKind::InvalidInput,
                        segment,
                        format_args!(
                            "closed with {blocks} blocks but was deleted with {handed_out}"
                        ),
                    ));
                }
            };
            match state.expected {
                Some(n) if n == blocks => return Ok(Deletion::NotYet),
                Some(n) => {
                    return Err(segment_error(
                        io::ErrorKind::InvalidInput,
                        segment,
                        format_args!("closed with {blocks} blocks but already closed with {n}"),
                    ));
                }
                None => {}
            }
            if state.handed_out() > blocks {
                return Err(segment_error(
                    io::ErrorKind::InvalidInput,
                    segment,
                    format_args!(
                        "closed with {blocks} blocks but {} are already tracked",
                        state.handed_out()
                    ),
                ));
            }
            state.expected = Some(blocks);
            Ok(settle(shard, segment))
        })
    }

    /// Rebuilds a file's state at recovery from what the file says. `fully_allocated` files
    /// are closed with exactly `blocks.len()` blocks; others can be resumed by an allocator
    /// (see [`Resume::with_tail`](crate::Resume::with_tail)).
    ///
    /// Returns [`Deletion::Now`] if the restored file already satisfies the deletion rule.
    ///
    /// # Errors
    ///
    /// - [`io::ErrorKind::AlreadyExists`] if the segment is already tracked.
    /// - [`io::ErrorKind::InvalidData`] if a block is empty or blocks overlap.
    pub fn restore_file(
        &self,
        segment: u64,
        blocks: &[RestoredBlock],
        fully_allocated: bool,
    ) -> io::Result<Deletion> {
        let mut state = FileState::default();
        for b in blocks {
            if b.len == 0 || b.start.checked_add(b.len).is_none() {
                return Err(segment_error(
                    io::ErrorKind::InvalidData,
                    segment,
                    format_args!(
                        "restored block at {} of {} bytes is invalid",
                        b.start, b.len
                    ),
                ));
            }
            let new = BlockState {
                start: b.start,
                len: b.len,
                locked: !b.sealed,
                checkpointed: b.checkpointed,
            };
            if let Err(other) = state.blocks.insert(new) {
                return Err(segment_error(
                    io::ErrorKind::InvalidData,
                    segment,
                    format_args!(
                        "restored block at {} of {} bytes overlaps the block at {other}",
                        b.start, b.len
                    ),
                ));
            }
            state.locked += u64::from(!b.sealed);
            state.checkpointed += u64::from(b.checkpointed);
        }
        if fully_allocated {
            state.expected = Some(state.handed_out());
        }
        self.with_shard(segment, |shard| {
            if shard.contains_key(&segment) {
                return Err(segment_error(
                    io::ErrorKind::AlreadyExists,
                    segment,
                    "restored while already tracked",
                ));
            }
            shard.insert(segment, FileEntry::Live(state));
            Ok(settle(shard, segment))
        })
    }

    /// Drops what is kept of a file already reported deletable: call it once the file is gone
    /// and nothing more will be reported of it, so that a long-lived tracker holds state only
    /// for files that exist. A later report of the segment is then `NotFound`, as for a
    /// segment never tracked. A file not yet reported deletable is kept.
    ///
    /// Returns whether the segment was forgotten.
    pub fn forget(&self, segment: u64) -> bool {
        self.with_shard(segment, |shard| {
            if matches!(shard.get(&segment), Some(FileEntry::Deleted { .. })) {
                shard.remove(&segment);
                return true;
            }
            false
        })
    }

    /// How many files are tracked: live ones and those reported deletable but not forgotten.
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().len()).sum()
    }

    /// A snapshot of the file's counters, or `None` if the segment is not tracked.
    pub fn stats(&self, segment: u64) -> Option<FileStats> {
        self.with_shard(segment, |shard| {
            shard.get(&segment).map(|entry| match entry {
                FileEntry::Live(state) => state.stats(),
                FileEntry::Deleted { handed_out } => FileStats {
                    handed_out: *handed_out,
                    locked: 0,
                    checkpointed: *handed_out,
                    fully_allocated: true,
                    deleted: true,
                },
            })
        })
    }
}

/// Applies the deletion rule to `segment` after an update; on success the file becomes a
/// tombstone so it is reported exactly once.
fn settle(shard: &mut Shard, segment: u64) -> Deletion {
    let Some(entry) = shard.get_mut(&segment) else {
        return Deletion::NotYet;
    };
    let FileEntry::Live(state) = entry else {
        return Deletion::NotYet;
    };
    if !state.deletable() {
        return Deletion::NotYet;
    }
    *entry = FileEntry::Deleted {
        handed_out: state.handed_out(),
    };
    Deletion::Now { segment }
}
