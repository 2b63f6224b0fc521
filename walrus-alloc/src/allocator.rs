//! The block allocator: hands out blocks of segment files under a spin lock.
//!
//! The lock guards a few integers (current segment, tail, spare segment, next id). Everything
//! slow happens outside it: the caller-supplied [`SegmentPreparer`] creates and preallocates
//! segment files, and the [`FileTracker`] records blocks and closed files. A thread that needs a
//! new segment *reserves* the next id under the lock (at most one reservation is outstanding, so
//! no id is ever prepared twice), prepares it unlocked, then installs it under the lock. The
//! reservation is an RAII guard: an error or a panic in the preparer gives the id back and
//! clears the flag, so the allocator stays usable.

use std::fmt;
use std::io;
use std::mem;

use crate::config::AllocConfig;
use crate::error::{prepare_error, segment_error};
use crate::spin::SpinLock;
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{Arc, Backoff};
use crate::tracker::{Deletion, FileTracker};

/// Creates and preallocates segment files on behalf of a [`BlockAllocator`].
///
/// Called outside the allocator's lock, at most once at a time per allocator, and never twice
/// for the same id unless the previous call failed: a failed id is offered again by the next
/// preparation, so an implementation must overwrite or remove whatever a failed call left
/// behind. Closures `Fn(u64, u64) -> io::Result<()>` implement this trait.
pub trait SegmentPreparer: Send + Sync {
    /// Makes segment `segment` ready to receive blocks anywhere in `[0, segment_len)`.
    ///
    /// `segment_len` is the allocator's segment length, or more for a segment dedicated to a
    /// block larger than a normal segment can hold.
    ///
    /// # Errors
    ///
    /// Any I/O error; it is returned to the allocating caller, wrapped with the segment id.
    fn prepare(&self, segment: u64, segment_len: u64) -> io::Result<()>;
}

impl<F> SegmentPreparer for F
where
    F: Fn(u64, u64) -> io::Result<()> + Send + Sync,
{
    fn prepare(&self, segment: u64, segment_len: u64) -> io::Result<()> {
        self(segment, segment_len)
    }
}

/// A shared preparer, e.g. the storage backend of an instance.
impl<P: SegmentPreparer + ?Sized> SegmentPreparer for std::sync::Arc<P> {
    fn prepare(&self, segment: u64, segment_len: u64) -> io::Result<()> {
        (**self).prepare(segment, segment_len)
    }
}

/// A block of a segment file: bytes `[start, start + len)` of segment `segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockAlloc {
    /// The segment file.
    pub segment: u64,
    /// Offset of the block in the file; identifies the block within its segment.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl BlockAlloc {
    /// One past the last byte of the block.
    pub const fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// The result of [`BlockAllocator::allocate`].
#[must_use = "the block is locked for its writer, and deletable segments are reported only once"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The block handed out, already tracked as handed out and locked.
    pub block: BlockAlloc,
    /// Segments closed by this call (or by an earlier call that then failed) whose blocks were
    /// already all sealed and checkpointed, or that never received a block: delete them now.
    /// Usually empty.
    pub deletable: Vec<u64>,
}

/// Where a segment's allocation stands: the next block would start at `next_start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentTail {
    /// The segment file.
    pub segment: u64,
    /// Its length in bytes.
    pub segment_len: u64,
    /// Offset of the next block.
    pub next_start: u64,
}

/// Where a [`BlockAllocator`] starts: the next segment id to prepare, and optionally a
/// partly-allocated segment to continue in.
///
/// [`Resume::default`] starts from segment 0 with nothing prepared: no file is created until
/// the first block is requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Resume {
    next_segment: u64,
    tail: Option<SegmentTail>,
}

impl Resume {
    /// Start with nothing prepared; the first segment prepared will be `next_segment`.
    pub const fn new(next_segment: u64) -> Self {
        Self {
            next_segment,
            tail: None,
        }
    }

    /// Continue handing out blocks in an existing segment from `tail.next_start`. The blocks
    /// already in it must have been restored into the tracker first
    /// ([`FileTracker::restore_file`] with `fully_allocated = false`), so that the file's final
    /// block count includes them.
    #[must_use]
    pub const fn with_tail(mut self, tail: SegmentTail) -> Self {
        self.tail = Some(tail);
        self
    }
}

/// A snapshot of an allocator's position, from [`BlockAllocator::position`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllocPosition {
    /// The segment blocks are handed out from, if any.
    pub current: Option<SegmentTail>,
    /// A prepared segment waiting to become current (an empty file on disk).
    pub spare: Option<u64>,
    /// The id the next prepared segment will get.
    pub next_segment: u64,
}

/// Instance-scoped block allocator.
///
/// Hands out blocks of at least the configured minimum block length (larger on request) from the current
/// segment by bumping a tail under a spin lock. When a request does not fit in the rest of
/// the current segment, that segment is closed (its tail is wasted) and the next one is used;
/// a request larger than a whole segment gets a dedicated segment of its own. Every block is
/// recorded in the allocator's [`FileTracker`] as handed out and locked, and every closed
/// segment as fully allocated.
///
/// No state is shared between allocators: two allocators in one process are independent.
///
/// ```
/// use std::sync::Mutex;
/// use walrus_alloc::{AllocConfig, BlockAllocator};
///
/// let created = std::sync::Arc::new(Mutex::new(Vec::new()));
/// let log = created.clone();
/// let config = AllocConfig::new()
///     .with_segment_len(1 << 20)
///     .with_min_block_len(64 << 10)
///     .with_prepare_ahead(false);
/// let alloc = BlockAllocator::new(config, move |segment, _capacity| {
///     log.lock().unwrap().push(segment); // create + preallocate the file here
///     Ok(())
/// })?;
/// assert!(created.lock().unwrap().is_empty()); // nothing created until needed
///
/// let a = alloc.allocate(0)?;
/// assert_eq!((a.block.segment, a.block.start, a.block.len), (0, 4096, 64 << 10));
/// let big = alloc.allocate(100_000)?; // rounded up to the 4 KiB alignment
/// assert_eq!((big.block.start, big.block.len), (a.block.end(), 102_400));
///
/// // The writer seals the block, readers consume it.
/// let tracker = alloc.tracker();
/// assert!(!tracker.seal(0, a.block.start)?.is_now());
/// assert!(!tracker.checkpoint(0, a.block.start)?.is_now());
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct BlockAllocator {
    config: AllocConfig,
    state: SpinLock<State>,
    /// Mirror of `State::preparing`, written only under the lock. Threads waiting for a
    /// segment poll it instead of the lock, so they do not compete for the lock with the thread
    /// that must take it to install the segment.
    preparing: AtomicBool,
    preparer: Box<dyn SegmentPreparer>,
    tracker: Arc<FileTracker>,
}

/// Everything the spin lock guards.
#[derive(Debug)]
struct State {
    current: Option<Open>,
    spare: Option<Prepared>,
    next_segment: u64,
    /// A segment id is reserved and being prepared outside the lock.
    preparing: bool,
    /// Closed segments (id, blocks handed out) not yet reported to the tracker. Drained by the
    /// next call that hands out a block, so a close is never lost to an error return.
    closed: Vec<(u64, u64)>,
    /// Segments found deletable by a call that then failed: reported by the next call that
    /// hands out a block, so a deletion is never lost to an error return either.
    deletable: Vec<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Open {
    segment: u64,
    segment_len: u64,
    tail: u64,
    /// Blocks handed out from this segment, including any restored at recovery.
    blocks: u64,
}

#[derive(Debug, Clone, Copy)]
struct Prepared {
    segment: u64,
    segment_len: u64,
}

/// A block taken under the lock, with the work to do once it is released.
struct Handout<'a> {
    block: BlockAlloc,
    closed: Vec<(u64, u64)>,
    /// Segments a failed call found deletable (`State::deletable`).
    deletable: Vec<u64>,
    ahead: Option<Reservation<'a>>,
}

enum Step<'a> {
    Block(Handout<'a>),
    /// This thread reserved a segment id and must prepare it.
    Prepare(Reservation<'a>),
    /// Another thread is preparing the segment this request needs.
    Wait,
}

/// A reserved segment id. Dropping it without [`Reservation::install`] (error or panic in the
/// preparer) gives the id back and lets another thread prepare.
struct Reservation<'a> {
    alloc: &'a BlockAllocator,
    segment: u64,
    segment_len: u64,
    /// `Some(len)`: a dedicated segment for one block of `len` bytes.
    dedicated: Option<u64>,
    armed: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.armed {
            let segment = self.segment;
            self.alloc.state.with(|st| {
                self.alloc.set_preparing(st, false);
                // Only one reservation exists at a time, so no later id was handed out.
                st.next_segment = segment;
            });
        }
    }
}

impl Reservation<'_> {
    /// Puts the prepared segment into the state. A dedicated segment yields its block.
    fn install(mut self) -> Option<Handout<'static>> {
        self.armed = false;
        let data_offset = self.alloc.config.data_offset();
        let (segment, segment_len) = (self.segment, self.segment_len);
        self.alloc.state.with(|st| {
            self.alloc.set_preparing(st, false);
            if let Some(len) = self.dedicated {
                let mut closed = mem::take(&mut st.closed);
                closed.push((segment, 1));
                return Some(Handout {
                    block: BlockAlloc {
                        segment,
                        start: data_offset,
                        len,
                    },
                    closed,
                    deletable: mem::take(&mut st.deletable),
                    ahead: None,
                });
            }
            if st.current.is_none() {
                st.current = Some(Open {
                    segment,
                    segment_len,
                    tail: data_offset,
                    blocks: 0,
                });
            } else if st.spare.is_none() {
                st.spare = Some(Prepared {
                    segment,
                    segment_len,
                });
            } else {
                // Cannot happen (one reservation at a time fills one empty slot); if it did,
                // close the file empty so it is reported deletable rather than leaked.
                st.closed.push((segment, 0));
            }
            None
        })
    }
}

impl fmt::Debug for BlockAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockAllocator")
            .field("config", &self.config)
            .field("position", &self.position())
            .finish_non_exhaustive()
    }
}

impl BlockAllocator {
    /// A fresh allocator with its own tracker, starting at segment 0 with nothing prepared.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] if `config` is invalid ([`AllocConfig::validate`]).
    pub fn new(config: AllocConfig, preparer: impl SegmentPreparer + 'static) -> io::Result<Self> {
        Self::resume(
            config,
            preparer,
            Arc::new(FileTracker::new()),
            Resume::default(),
        )
    }

    /// An allocator that continues from `resume`, recording into `tracker` (typically one just
    /// rebuilt with [`FileTracker::restore_file`]).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] if `config` is invalid, or the tail segment is not
    /// below `next_segment`, its tail is not aligned or outside `[data offset, segment_len]`, or
    /// the tracker already has it fully allocated.
    pub fn resume(
        config: AllocConfig,
        preparer: impl SegmentPreparer + 'static,
        tracker: Arc<FileTracker>,
        resume: Resume,
    ) -> io::Result<Self> {
        config.validate()?;
        let current = match resume.tail {
            None => None,
            Some(tail) => Some(Self::open_tail(
                &config,
                &tracker,
                resume.next_segment,
                tail,
            )?),
        };
        Ok(Self {
            config,
            state: SpinLock::new(State {
                current,
                spare: None,
                next_segment: resume.next_segment,
                preparing: false,
                closed: Vec::new(),
                deletable: Vec::new(),
            }),
            preparing: AtomicBool::new(false),
            preparer: Box::new(preparer),
            tracker,
        })
    }

    fn open_tail(
        config: &AllocConfig,
        tracker: &FileTracker,
        next_segment: u64,
        tail: SegmentTail,
    ) -> io::Result<Open> {
        let SegmentTail {
            segment,
            segment_len,
            next_start,
        } = tail;
        let invalid = |msg: String| segment_error(io::ErrorKind::InvalidInput, segment, msg);
        if segment >= next_segment {
            return Err(invalid(format!(
                "resumed tail is not below the next segment id {next_segment}"
            )));
        }
        let align = config.alignment();
        if !next_start.is_multiple_of(align)
            || next_start < config.data_offset()
            || next_start > segment_len
        {
            return Err(invalid(format!(
                "resume tail {next_start} is unaligned or outside [{}, {segment_len}]",
                config.data_offset()
            )));
        }
        let blocks = match tracker.stats(segment) {
            None => 0,
            Some(s) if s.fully_allocated || s.deleted => {
                return Err(invalid(
                    "resumed tail is already fully allocated in the tracker".to_owned(),
                ));
            }
            Some(s) => s.handed_out,
        };
        Ok(Open {
            segment,
            segment_len,
            tail: next_start,
            blocks,
        })
    }

    /// The allocator's geometry.
    pub fn config(&self) -> &AllocConfig {
        &self.config
    }

    /// The tracker every handed-out block and closed segment is recorded in. Writers seal and
    /// readers checkpoint blocks through it.
    pub fn tracker(&self) -> &Arc<FileTracker> {
        &self.tracker
    }

    /// A snapshot of the current segment, the spare and the next id.
    pub fn position(&self) -> AllocPosition {
        self.state.with(|st| AllocPosition {
            current: st.current.map(|o| SegmentTail {
                segment: o.segment,
                segment_len: o.segment_len,
                next_start: o.tail,
            }),
            spare: st.spare.map(|p| p.segment),
            next_segment: st.next_segment,
        })
    }

    /// Hands out a block of at least `min_len` bytes (at least the minimum block length, rounded
    /// up to the alignment), tracked as handed out and locked.
    ///
    /// The common path bumps a tail under the spin lock. When a segment has to be prepared
    /// first, this thread prepares it outside the lock (or waits for the thread already doing
    /// so); with [`AllocConfig::with_prepare_ahead`] the thread that puts the spare segment
    /// into use also prepares the next spare before returning, so that is rare.
    ///
    /// # Errors
    ///
    /// - [`io::ErrorKind::InvalidInput`] if the request overflows the offset space.
    /// - The preparer's error, of the same kind, naming the segment; the segment id is offered
    ///   again to the next preparation and the allocator stays usable.
    /// - [`io::ErrorKind::Other`] if segment ids are exhausted.
    /// - A tracker error if the tracker was fed inconsistent state (see [`FileTracker::track`]).
    pub fn allocate(&self, min_len: u64) -> io::Result<Allocation> {
        let len = self
            .config
            .block_len(min_len)
            .filter(|len| len.checked_add(self.config.data_offset()).is_some())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("a block of {min_len} bytes does not fit in any segment"),
                )
            })?;
        let backoff = Backoff::new();
        let mut step = self.state.with(|st| self.step(st, len))?;
        loop {
            step = match step {
                Step::Block(handout) => return self.hand_out(handout),
                Step::Prepare(reservation) => {
                    if let Some(handout) = self.prepare(reservation)? {
                        return self.hand_out(handout);
                    }
                    backoff.reset();
                    self.state.with(|st| self.step(st, len))?
                }
                Step::Wait => {
                    while self.preparing.load(Ordering::Acquire) {
                        backoff.snooze();
                    }
                    self.state.with(|st| self.step(st, len))?
                }
            };
        }
    }

    /// Prepares a spare segment now if none is ready and none is being prepared (installed as
    /// the current segment if there is none). For callers that disable
    /// [`AllocConfig::with_prepare_ahead`] and prepare from a thread of their own.
    ///
    /// Returns whether a segment was prepared.
    ///
    /// # Errors
    ///
    /// The preparer's error, naming the segment; the allocator stays usable.
    pub fn prepare_spare(&self) -> io::Result<bool> {
        let reservation = self.state.with(|st| {
            if st.spare.is_some() || st.preparing {
                Ok(None)
            } else {
                let segment_len = self.config.segment_len();
                self.reserve(st, segment_len, None).map(Some)
            }
        })?;
        match reservation {
            None => Ok(false),
            Some(reservation) => self.prepare(reservation).map(|_| true),
        }
    }

    /// One decision under the lock.
    fn step<'a>(&'a self, st: &mut State, len: u64) -> io::Result<Step<'a>> {
        let data_offset = self.config.data_offset();
        if len > self.config.segment_room() {
            if st.preparing {
                return Ok(Step::Wait);
            }
            // `allocate` checked that this does not overflow.
            let segment_len = data_offset.saturating_add(len);
            return self.reserve(st, segment_len, Some(len)).map(Step::Prepare);
        }
        loop {
            if let Some(cur) = st.current.as_mut() {
                if cur.segment_len - cur.tail >= len {
                    let block = BlockAlloc {
                        segment: cur.segment,
                        start: cur.tail,
                        len,
                    };
                    cur.tail += len;
                    cur.blocks += 1;
                    return Ok(Step::Block(Handout {
                        block,
                        closed: mem::take(&mut st.closed),
                        deletable: mem::take(&mut st.deletable),
                        ahead: self.reserve_ahead(st),
                    }));
                }
                // Does not fit: the tail of this segment is wasted.
                st.closed.push((cur.segment, cur.blocks));
                st.current = None;
            }
            match st.spare.take() {
                Some(spare) => {
                    st.current = Some(Open {
                        segment: spare.segment,
                        segment_len: spare.segment_len,
                        tail: data_offset,
                        blocks: 0,
                    });
                }
                None => break,
            }
        }
        if st.preparing {
            return Ok(Step::Wait);
        }
        let segment_len = self.config.segment_len();
        self.reserve(st, segment_len, None).map(Step::Prepare)
    }

    fn reserve<'a>(
        &'a self,
        st: &mut State,
        segment_len: u64,
        dedicated: Option<u64>,
    ) -> io::Result<Reservation<'a>> {
        let segment = st.next_segment;
        st.next_segment = segment.checked_add(1).ok_or_else(|| {
            segment_error(io::ErrorKind::Other, segment, "segment ids are exhausted")
        })?;
        self.set_preparing(st, true);
        Ok(Reservation {
            alloc: self,
            segment,
            segment_len,
            dedicated,
            armed: true,
        })
    }

    /// Sets the preparation flag and its mirror; called with the lock held (`st`).
    fn set_preparing(&self, st: &mut State, preparing: bool) {
        st.preparing = preparing;
        self.preparing.store(preparing, Ordering::Release);
    }

    fn reserve_ahead<'a>(&'a self, st: &mut State) -> Option<Reservation<'a>> {
        if !self.config.prepare_ahead() || st.spare.is_some() || st.preparing {
            return None;
        }
        // Running out of ids is reported by the allocation that actually needs one.
        self.reserve(st, self.config.segment_len(), None).ok()
    }

    /// Runs the preparer outside the lock and installs the segment.
    fn prepare(&self, reservation: Reservation<'_>) -> io::Result<Option<Handout<'static>>> {
        let (segment, segment_len) = (reservation.segment, reservation.segment_len);
        match self.preparer.prepare(segment, segment_len) {
            Ok(()) => Ok(reservation.install()),
            Err(e) => {
                // Dropping the reservation releases the id before the error is returned.
                drop(reservation);
                Err(prepare_error(segment, segment_len, e))
            }
        }
    }

    /// Records the block and closed segments in the tracker, then prepares ahead.
    fn hand_out(&self, handout: Handout<'_>) -> io::Result<Allocation> {
        let Handout {
            block,
            closed,
            mut deletable,
            ahead,
        } = handout;
        let mut result = self.tracker.track(block);
        for (segment, blocks) in closed {
            match self.tracker.mark_fully_allocated(segment, blocks) {
                Ok(Deletion::Now { segment }) => deletable.push(segment),
                Ok(Deletion::NotYet) => {}
                Err(e) => {
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
        }
        if let Some(reservation) = ahead {
            // A failure here does not concern the caller's block: the id is released and the
            // next allocation that needs a segment prepares it inline and reports the error.
            // Nor does a panic: unwound from here, it would drop the block just tracked as
            // handed out (locked for good) and the deletions found above (never reported
            // again). The reservation gives the id back as it unwinds.
            let _spare = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.prepare(reservation)
            }));
        }
        match result {
            Ok(()) => Ok(Allocation { block, deletable }),
            Err(e) => {
                self.state.with(|st| st.deletable.append(&mut deletable));
                Err(e)
            }
        }
    }
}
