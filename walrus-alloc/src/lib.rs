//! # walrus-alloc
//!
//! The concurrency core of Walrus: an instance-scoped block allocator that hands out blocks of
//! segment files to writers, a per-file state tracker that decides when a segment file may be
//! deleted, and the `sync` shim that lets both be model-checked with loom. It knows nothing of
//! topics or of what the files contain, and keeps no process-global state: two allocators (or
//! trackers) in one process never see each other.
//!
//! ## Block allocator
//!
//! [`BlockAllocator`] cuts segment files (identified by a `u64` id, of a configurable length,
//! default 1 GiB) into blocks. A block starts at or after the segment's data offset (default
//! 4 KiB, room for the segment header); starts and lengths are multiples of the alignment
//! (default 4 KiB). A request for `min_len` bytes gets at least the minimum block length
//! (default 1 MiB), rounded up to the alignment, so blocks have no fixed stride:
//!
//! - the common path bumps a segment tail under a spin lock (crossbeam-utils `Backoff`) that guards
//!   only that hand-out, never file creation, preallocation or fsync;
//! - a request that does not fit in the rest of the current segment closes it (the tail is
//!   wasted) and moves to the next segment; a request larger than a whole segment gets a
//!   dedicated segment of the needed size;
//! - segment files are created by a caller-supplied [`SegmentPreparer`], called outside the
//!   lock. One spare segment is prepared ahead of need by default; nothing is prepared until
//!   the first block is requested, so opening an instance creates no empty file;
//! - a preparer error is returned as an `io::Error` of the same kind naming the segment, the
//!   segment id is offered again, and the allocator stays usable; a [`Resume`] continues after
//!   recovery (next segment id, and optionally the tail of a partly-allocated segment).
//!
//! ## File tracker and the deletion rule
//!
//! [`FileTracker`] keeps, per segment file, which blocks were handed out, which are still
//! locked by their writer, which have been checkpointed (fully consumed) by readers, and
//! whether the file is fully allocated. Blocks are identified by their start offset and every
//! update is idempotent per block: a block is checkpointed at most once however often readers
//! report it.
//!
//! A file **may be deleted** when it is fully allocated, no block is locked, it holds at least
//! one block, and every block is checkpointed. The call that makes this true returns
//! [`Deletion::Now`]; every other call returns [`Deletion::NotYet`], so each file is reported
//! exactly once. The allocator closes a file with its exact block count, so a block recorded
//! after the close (blocks are recorded outside the spin lock) still holds the file back.
//! [`FileTracker::restore_file`] rebuilds a file's state at recovery.
//!
//! ## The `sync` shim
//!
//! [`sync`] re-exports `Arc`, atomics, `Mutex`, `UnsafeCell`, spin hints and `Backoff` from
//! std / parking_lot / crossbeam-utils, or from loom when built with `--cfg loom`, behind
//! identical call sites. The loom models in `tests/loom.rs` run with
//! `RUSTFLAGS="--cfg loom" cargo test -p walrus-alloc --release --test loom`.

mod allocator;
mod config;
mod error;
mod spin;
pub mod sync;
mod tracker;

pub use allocator::{
    AllocPosition, Allocation, BlockAlloc, BlockAllocator, Resume, SegmentPreparer, SegmentTail,
};
pub use config::AllocConfig;
pub use tracker::{Deletion, FileStats, FileTracker, RestoredBlock};
