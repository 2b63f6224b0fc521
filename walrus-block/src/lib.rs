//! # walrus-block — the Walrus on-disk format, version 4
//!
//! This crate owns every byte Walrus puts on disk and every check made when reading it back.
//! It does no I/O and keeps no state: callers hand it byte slices.
//!
//! A data directory holds **segment files**. Each starts with a [`SegmentHeader`]; from
//! [`SEGMENT_DATA_OFFSET`] on, the file is cut into **blocks**, each owned by one topic and
//! starting with a [`BlockHeader`] that names the topic, the block's place in the topic's chain
//! and the offset of its first entry. A block holds **entry frames** back to back: a 24-byte
//! [`FrameHeader`] followed by the payload. An all-zero header (segment, block or frame) means
//! "nothing written here yet".
//!
//! Every header is a fixed-size [rkyv] archive (little-endian, unaligned) read through rkyv's
//! *checked* access, and protected by CRC32C ([`checksum`]); the payload of a frame has its own
//! CRC32C, itself covered by the frame header's CRC. So any single-bit flip anywhere in a frame is
//! reported as corruption, and any truncation of a frame as a torn tail. The CRCs of block
//! headers, frame headers (format v4) and journal records are seeded with a random key their
//! writer keeps in a header of its own, so that entry data holding such a header's bytes never
//! passes for one.
//!
//! The byte-by-byte layout is written up in `docs/FORMAT.md` at the repository root.
//!
//! ```
//! use walrus_block::{encode_frame, FrameDecoder, Frame, FrameKind};
//!
//! let key = 0x5eed; // a segment's key; 0 for frames that are not keyed
//! let mut buf = Vec::new();
//! encode_frame(&mut buf, 0, FrameKind::single(), b"hello", key)?;
//! encode_frame(&mut buf, 1, FrameKind::single(), b"world", key)?;
//! buf.resize(buf.len() + 64, 0); // preallocated space reads as zeros
//!
//! let mut frames = FrameDecoder::new(&buf, key);
//! let Frame::Entry(e) = frames.next_frame() else { panic!("expected an entry") };
//! assert_eq!((e.offset, e.payload), (0, &b"hello"[..]));
//! let Frame::Entry(e) = frames.next_frame() else { panic!("expected an entry") };
//! assert_eq!((e.offset, e.payload), (1, &b"world"[..]));
//! assert!(matches!(frames.next_frame(), Frame::End { .. }));
//! # Ok::<(), walrus_block::FormatError>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod archived;
mod block;
pub mod checksum;
mod cursor;
mod error;
mod frame;
mod journal;
mod limits;
mod segment;
pub mod tier;

pub use block::{BLOCK_HEADER_LEN, BLOCK_MAGIC, BlockHeader};
pub use cursor::{
    CURSOR_MAGIC, CURSOR_MAGIC_V2, CURSOR_RECORD_LEN, CURSOR_RECORD_V2_LEN, CURSOR_SLOT_LEN,
    CursorKind, CursorRecord,
};
pub use error::{CorruptReason, FormatError};
pub use frame::{
    EntryRef, FRAME_HEADER_LEN, FRAME_MARKER, Frame, FrameDecoder, FrameHeader, FrameKind,
    SequenceCheck, encode_frame, encode_frame_header, frame_len, rekey_frames, resync,
    resync_budget, resync_within, write_frame,
};
pub use journal::{
    JOURNAL_DATA_OFFSET, JOURNAL_HEADER_LEN, JOURNAL_MAGIC, JOURNAL_RECORD_ALIGN,
    JOURNAL_RECORD_HEADER_LEN, JOURNAL_RECORD_MAGIC, JOURNAL_SLOT_LEN, JOURNAL_VERSION,
    JOURNAL_WRITE_HEADER_LEN, JournalHeader, JournalRecordHeader, JournalWrite,
    decode_journal_body, encode_journal_record_header, encode_journal_write,
};
pub use limits::{
    BLOCK_ALIGN, DEFAULT_BLOCK_LEN, DEFAULT_SEGMENT_LEN, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES,
    MAX_BLOCK_LEN, MAX_CONSUMER_NAME_LEN, MAX_ENTRY_LEN, MAX_OFFSET, MAX_TOPIC_NAME_LEN,
    validate_consumer_name, validate_topic_name,
};
pub use segment::{
    CHECKSUM_CRC32C, FORMAT_VERSION, OLDEST_FORMAT_VERSION, SEGMENT_DATA_OFFSET,
    SEGMENT_HEADER_COPY_AT, SEGMENT_HEADER_LEN, SEGMENT_MAGIC, SegmentHeader,
};
pub use tier::{MAX_TIER_INDEX_LEN, TIER_INDEX_MAGIC, TierIndex, tier_object_names, topic_key};

/// True when every byte of `bytes` is zero: space that was preallocated but never written.
#[must_use]
pub fn is_zeroed(bytes: &[u8]) -> bool {
    // Word-at-a-time is ~8x faster than a byte loop over the tail of a block at recovery.
    let (head, words, tail) = bytemuck_free_split(bytes);
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

fn bytemuck_free_split(bytes: &[u8]) -> (&[u8], &[u64], &[u8]) {
    // SAFETY: every bit pattern is a valid u64, and `align_to` returns a middle slice that is
    // correctly aligned for u64 and lies entirely inside `bytes`.
    unsafe { bytes.align_to::<u64>() }
}
