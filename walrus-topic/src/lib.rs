//! # walrus-topic
//!
//! Topics for Walrus (to be filled in): chains of blocks, writers, readers, cursors, tail reads,
//! atomic batches, checkpoints and recovery of a data directory. It builds on
//! [`walrus_block`] (format), [`walrus_alloc`] (allocation) and [`walrus_io`] (storage).

pub use walrus_alloc;
pub use walrus_block;
pub use walrus_io;
