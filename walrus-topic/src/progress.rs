//! How far one topic's entries have come — written, durable, listed for the next sync — and
//! where its durable watermark stands in the marks file. The store-wide sync machinery
//! ([`Shared`](crate::shared::Shared)) needs only this of a topic, so it lives below both.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};

use crate::arrival::Arrivals;

/// Where a topic's durable watermark stands in the marks file.
#[derive(Debug, Default)]
pub(crate) struct MarkState {
    pub(crate) pair: Option<u64>,
    pub(crate) generation: u64,
    pub(crate) written: u64,
}

/// The progress of one topic. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Progress {
    pub(crate) name: Arc<str>,
    /// Entries below this offset are written and readable.
    written_end: AtomicU64,
    /// Entries below this offset are on stable storage (as of the last completed sync).
    durable: AtomicU64,
    /// The durable watermark may claim no more than this: after a recovery that found a
    /// cursor past the entries kept, the entries end here and the offsets up to the next one
    /// are skipped, never written; a claim past it would make the next open look for them.
    /// Lifted by the first append (whose block records the gap).
    mark_cap: AtomicU64,
    /// The topic is in the store's list of topics with appends not yet durable.
    listed: AtomicBool,
    /// The topic is in the store's list of watermarks to write (`Shared::marks_pending`):
    /// queued once however many syncs cover it before the list is taken.
    mark_queued: AtomicBool,
    /// The durable watermark as last written to the marks file.
    mark: Mutex<MarkState>,
    /// Readers waiting for the topic's next entry.
    pub(crate) arrivals: Arrivals,
}

impl Progress {
    /// A topic whose entries below `end` are written and durable, and whose entries kept end
    /// at `kept` (below `end` when a gap follows them: see `mark_cap`).
    pub(crate) fn new(name: Arc<str>, end: u64, kept: u64, mark: MarkState) -> Self {
        Self {
            name,
            written_end: AtomicU64::new(end),
            durable: AtomicU64::new(end),
            mark_cap: AtomicU64::new(if kept < end { kept } else { u64::MAX }),
            listed: AtomicBool::new(false),
            mark_queued: AtomicBool::new(false),
            mark: Mutex::new(mark),
            arrivals: Arrivals::default(),
        }
    }

    /// Marks the topic queued for its watermark's write; whether it was not already.
    /// (Called after the durable end moved.) The fences pair with [`unqueue_mark`]'s: either
    /// this finds the flag cleared and queues the topic, or the writer that cleared it reads
    /// the durable end this sync set.
    ///
    /// [`unqueue_mark`]: Self::unqueue_mark
    pub(crate) fn queue_mark(&self) -> bool {
        std::sync::atomic::fence(Ordering::SeqCst);
        !self.mark_queued.swap(true, Ordering::AcqRel)
    }

    /// Takes the topic off the watermark queue, before its durable end is read for the write:
    /// a sync after this queues it again.
    pub(crate) fn unqueue_mark(&self) {
        self.mark_queued.store(false, Ordering::Release);
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Entries below this offset are written and readable.
    pub(crate) fn written_end(&self) -> u64 {
        self.written_end.load(Ordering::Acquire)
    }

    /// Publishes entries below `end` as written (after their bytes are).
    pub(crate) fn set_written_end(&self, end: u64) {
        self.mark_cap.store(u64::MAX, Ordering::Release);
        self.written_end.store(end, Ordering::Release);
        self.arrivals.notify();
    }

    /// Entries below this offset may be handed to readers: the durable ones if
    /// `when_durable`, else every written one.
    pub(crate) fn visible(&self, when_durable: bool) -> u64 {
        if when_durable {
            self.durable()
        } else {
            self.written_end()
        }
    }

    /// Entries below this offset are durable.
    pub(crate) fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// What the durable watermark in the marks file may claim: the durable end, but not past
    /// the entries kept while a recovered gap follows them (see `mark_cap`).
    pub(crate) fn claimable(&self) -> u64 {
        self.durable().min(self.mark_cap.load(Ordering::Acquire))
    }

    /// A sync covering `offset` completed; the durable end before it.
    pub(crate) fn set_durable(&self, offset: u64) -> u64 {
        let before = self.durable.fetch_max(offset, Ordering::AcqRel);
        if before < offset {
            self.arrivals.notify();
        }
        before
    }

    /// Marks the topic as listed (or not) for the next syncs; whether it was not listed.
    pub(crate) fn set_listed(&self, listed: bool) -> bool {
        !self.listed.swap(listed, Ordering::SeqCst)
    }

    /// The durable watermark's record state.
    pub(crate) fn mark_state(&self) -> MutexGuard<'_, MarkState> {
        self.mark.lock()
    }
}
