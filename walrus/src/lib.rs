//! # Walrus
//!
//! An embedded, topic-oriented write-ahead log. One instance owns a directory; topics are
//! append-only sequences of byte entries with persistent cursors.
//!
//! The engine is being built crate by crate; today this facade re-exports the member crates:
//!
//! - [`block`]: the on-disk format (segment and block headers, entry frames, CRC32C).
//! - [`alloc`]: the block allocator and segment deletion tracker.
//! - [`io`]: storage backends.
//! - [`topic`]: topics, cursors and recovery.

#[doc(inline)]
pub use walrus_alloc as alloc;
#[doc(inline)]
pub use walrus_block as block;
#[doc(inline)]
pub use walrus_io as io;
#[doc(inline)]
pub use walrus_topic as topic;
