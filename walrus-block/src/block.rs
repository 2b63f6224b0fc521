//! The block header: written when a block of a segment is handed to a topic.

use rkyv::Archived;

use crate::archived::{
    BlockHeaderV2, bytes_of, decode_keyed, keyed_body_crc, topic_field, topic_from_field,
};
use crate::error::{CorruptReason, FormatError};
use crate::limits::{BLOCK_ALIGN, MAX_BLOCK_LEN, MAX_OFFSET};

/// Magic bytes opening every block.
pub const BLOCK_MAGIC: [u8; 4] = *b"WBLK";
/// Block flag: the block was abandoned by its writer (a failed batch); it holds no entries.
const FLAG_ABANDONED: u8 = 0x01;
/// Block flag (format v4): the header CRCs of the block's frames are seeded with the segment's
/// key (see [`crate::frame`]).
const FLAG_KEYED_FRAMES: u8 = 0x02;
/// Encoded length of a [`BlockHeader`]; the block's first entry frame starts right after it.
pub const BLOCK_HEADER_LEN: usize = std::mem::size_of::<BlockHeaderV2>();

/// The header of a block: which topic owns it and where it sits in that topic's chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockHeader {
    /// The owning topic (1–255 bytes of UTF-8).
    pub topic: String,
    /// The segment file this block lives in; a block found in another segment is foreign.
    pub segment_id: u64,
    /// The block's position in its topic's chain: 0 for the topic's first block, then 1, 2, …
    pub chain_seq: u64,
    /// The topic offset of the first entry in this block.
    pub first_offset: u64,
    /// Where the topic ended, as its writer saw it, when this block was started: equal to
    /// `first_offset` unless the offsets in `prev_end..first_offset` are a *recorded gap* —
    /// entries a recovery cut or found lost, whose offsets are never handed out again.
    /// Recovery treats missing entries in a recorded gap as decided, not as new damage.
    pub prev_end: u64,
    /// Length of the whole block in bytes, header included; a multiple of
    /// [`BLOCK_ALIGN`]. The next block of the segment starts right after it.
    pub block_len: u64,
    /// Set when the writer gave the block up after a failed write: whatever it holds is not
    /// part of the topic. (The header is rewritten with this flag; the block keeps its place in
    /// the segment so the walk over blocks is unaffected.)
    pub abandoned: bool,
    /// The header CRCs of the block's frames are seeded with the segment's key (flag bit 1,
    /// set on every block a segment of format v4 hands out); otherwise they are plain CRC32C.
    /// See [`frame_key`](Self::frame_key).
    pub keyed_frames: bool,
}

impl BlockHeader {
    /// Encodes the header, its CRC seeded with `key`, the key of the segment it is written in
    /// ([`SegmentHeader::key`](crate::SegmentHeader::key)).
    ///
    /// # Errors
    /// [`FormatError::InvalidTopic`] for an empty or over-long topic name;
    /// [`FormatError::InvalidInput`] when `block_len` is not a positive multiple of
    /// [`BLOCK_ALIGN`] up to [`MAX_BLOCK_LEN`] or cannot hold the header, or an offset or
    /// chain position is not below [`MAX_OFFSET`].
    pub fn encode(&self, key: u32) -> Result<[u8; BLOCK_HEADER_LEN], FormatError> {
        if self.first_offset >= MAX_OFFSET || self.chain_seq >= MAX_OFFSET {
            return Err(FormatError::InvalidInput(format!(
                "block at offset {} in chain position {}: the format holds neither at or past {MAX_OFFSET}",
                self.first_offset, self.chain_seq
            )));
        }
        let (topic_len, topic) = topic_field(&self.topic)?;
        if self.prev_end > self.first_offset {
            return Err(FormatError::InvalidInput(format!(
                "block starts at offset {} after a chain end of {}",
                self.first_offset, self.prev_end
            )));
        }
        if !block_len_ok(self.block_len) {
            return Err(FormatError::InvalidInput(format!(
                "block length {} is not a multiple of {BLOCK_ALIGN} holding a {BLOCK_HEADER_LEN}-byte header",
                self.block_len
            )));
        }
        let mut h = BlockHeaderV2 {
            magic: BLOCK_MAGIC,
            topic_len,
            flags: if self.abandoned { FLAG_ABANDONED } else { 0 }
                | if self.keyed_frames {
                    FLAG_KEYED_FRAMES
                } else {
                    0
                },
            reserved: Archived::<u16>::from_native(0),
            block_len: Archived::<u64>::from_native(self.block_len),
            segment_id: Archived::<u64>::from_native(self.segment_id),
            chain_seq: Archived::<u64>::from_native(self.chain_seq),
            first_offset: Archived::<u64>::from_native(self.first_offset),
            prev_end: Archived::<u64>::from_native(self.prev_end),
            topic,
            reserved2: 0,
            crc: Archived::<u32>::from_native(0),
        };
        h.crc = Archived::<u32>::from_native(keyed_body_crc(&h, key));
        let mut out = [0u8; BLOCK_HEADER_LEN];
        out.copy_from_slice(bytes_of(&h));
        Ok(out)
    }

    /// Decodes and validates a block header at the start of `bytes`, of a segment whose key is
    /// `key`: a header checksummed with any other key is corrupt.
    ///
    /// Returns `Ok(None)` when the header bytes are all zero: no block has been handed out here.
    ///
    /// # Errors
    /// [`FormatError::Torn`] when `bytes` ends inside a header that is not all zero;
    /// [`FormatError::Corrupt`] (at 0) for a bad magic, checksum, reserved bits, length or topic.
    pub fn decode(bytes: &[u8], key: u32) -> Result<Option<Self>, FormatError> {
        let Some(h) = decode_keyed::<BlockHeaderV2>(
            bytes,
            key,
            |h| h.magic == BLOCK_MAGIC,
            |h| h.crc.to_native(),
        )?
        else {
            return Ok(None);
        };
        let corrupt = |reason| FormatError::Corrupt { at: 0, reason };
        if h.flags & !(FLAG_ABANDONED | FLAG_KEYED_FRAMES) != 0
            || h.reserved.to_native() != 0
            || h.reserved2 != 0
        {
            return Err(corrupt(CorruptReason::ReservedBits));
        }
        let block_len = h.block_len.to_native();
        if !block_len_ok(block_len) {
            return Err(corrupt(CorruptReason::BadLength));
        }
        let topic = topic_from_field(h.topic_len, &h.topic).map_err(corrupt)?;
        let (first_offset, prev_end) = (h.first_offset.to_native(), h.prev_end.to_native());
        if prev_end > first_offset
            || first_offset >= MAX_OFFSET
            || h.chain_seq.to_native() >= MAX_OFFSET
        {
            return Err(corrupt(CorruptReason::Sequence));
        }
        Ok(Some(Self {
            topic,
            segment_id: h.segment_id.to_native(),
            chain_seq: h.chain_seq.to_native(),
            first_offset,
            prev_end,
            block_len,
            abandoned: h.flags & FLAG_ABANDONED != 0,
            keyed_frames: h.flags & FLAG_KEYED_FRAMES != 0,
        }))
    }

    /// The key of the segment whose block header begins `bytes`, found from that header: 0 if
    /// it is valid unkeyed (a segment of format v2), else the one key under which its CRC
    /// checks, if the header is then valid. For when the segment header and its copy are both
    /// lost. Only for bytes the engine is known to have written as a block header (the first
    /// block of a segment, at [`SEGMENT_DATA_OFFSET`](crate::SEGMENT_DATA_OFFSET)): any bytes
    /// solve to some key, so this proves nothing of bytes a user may have chosen.
    #[must_use]
    pub fn solve_key(bytes: &[u8]) -> Option<(u32, Self)> {
        if let Ok(Some(h)) = Self::decode(bytes, 0) {
            return Some((0, h));
        }
        let raw = bytes.get(..BLOCK_HEADER_LEN)?;
        let (body, crc) = raw.split_last_chunk::<4>()?;
        let key = crate::checksum::crc32c_seed(body, u32::from_le_bytes(*crc))?;
        Self::decode(raw, key).ok().flatten().map(|h| (key, h))
    }

    /// The key of the block's frames, in a segment whose key is `segment_key`: that key when
    /// [`keyed_frames`](Self::keyed_frames), else 0.
    #[must_use]
    pub fn frame_key(&self, segment_key: u32) -> u32 {
        if self.keyed_frames { segment_key } else { 0 }
    }

    /// Bytes available for entry frames in this block.
    #[must_use]
    pub fn data_capacity(&self) -> u64 {
        self.block_len.saturating_sub(BLOCK_HEADER_LEN as u64)
    }
}

fn block_len_ok(len: u64) -> bool {
    (BLOCK_ALIGN..=MAX_BLOCK_LEN).contains(&len) && len.is_multiple_of(BLOCK_ALIGN)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: u32 = 0x5eed_0001;

    fn sample() -> BlockHeader {
        BlockHeader {
            topic: "orders".into(),
            segment_id: 3,
            chain_seq: 9,
            first_offset: 1234,
            prev_end: 1200,
            block_len: 1 << 20,
            abandoned: false,
            keyed_frames: true,
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let bytes = h.encode(KEY).unwrap();
        assert_eq!(BlockHeader::decode(&bytes, KEY), Ok(Some(h.clone())));
        let long = BlockHeader {
            topic: "t".repeat(255),
            ..h
        };
        assert_eq!(
            BlockHeader::decode(&long.encode(KEY).unwrap(), KEY),
            Ok(Some(long.clone()))
        );
        let dead = BlockHeader {
            abandoned: true,
            ..long
        };
        assert_eq!(
            BlockHeader::decode(&dead.encode(KEY).unwrap(), KEY),
            Ok(Some(dead.clone()))
        );
        let unkeyed = BlockHeader {
            keyed_frames: false,
            ..dead
        };
        assert_eq!(
            BlockHeader::decode(&unkeyed.encode(KEY).unwrap(), KEY),
            Ok(Some(unkeyed.clone()))
        );
        assert_eq!(unkeyed.frame_key(KEY), 0);
        assert_eq!(sample().frame_key(KEY), KEY);
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(matches!(
            BlockHeader {
                topic: String::new(),
                ..sample()
            }
            .encode(KEY),
            Err(FormatError::InvalidTopic(_))
        ));
        assert!(matches!(
            BlockHeader {
                topic: "x".repeat(256),
                ..sample()
            }
            .encode(KEY),
            Err(FormatError::InvalidTopic(_))
        ));
        for len in [0, 100, 4097, MAX_BLOCK_LEN + BLOCK_ALIGN, u64::MAX - 4095] {
            assert!(matches!(
                BlockHeader {
                    block_len: len,
                    ..sample()
                }
                .encode(KEY),
                Err(FormatError::InvalidInput(_))
            ));
        }
    }

    /// Lengths and positions past what the format holds: refused when encoding, and damage
    /// when a header with a valid checksum names them (a crafted or foreign header: the walk
    /// over blocks must not overflow on it).
    #[test]
    fn lengths_and_offsets_past_the_limits_are_refused_and_read_as_damage() {
        for h in [
            BlockHeader {
                first_offset: MAX_OFFSET,
                prev_end: 0,
                ..sample()
            },
            BlockHeader {
                chain_seq: u64::MAX,
                ..sample()
            },
        ] {
            assert!(
                matches!(h.encode(KEY), Err(FormatError::InvalidInput(_))),
                "{h:?}"
            );
        }
        // The header with the little-endian u64 at byte `at` (block_len 8, chain_seq 24,
        // first_offset 32) set to `value`, and its CRC (the last four bytes) made valid.
        let patched = |at: usize, value: u64| {
            let mut b = sample().encode(KEY).unwrap();
            b[at..at + 8].copy_from_slice(&value.to_le_bytes());
            let crc = crate::checksum::crc32c_append(KEY, &b[..BLOCK_HEADER_LEN - 4]);
            b[BLOCK_HEADER_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
            BlockHeader::decode(&b, KEY)
        };
        assert_eq!(patched(8, 1 << 20), Ok(Some(sample())), "the layout");
        let corrupt = |reason| Err(FormatError::Corrupt { at: 0, reason });
        assert_eq!(
            patched(8, u64::MAX - 4095),
            corrupt(CorruptReason::BadLength)
        );
        assert_eq!(
            patched(8, MAX_BLOCK_LEN + 4096),
            corrupt(CorruptReason::BadLength)
        );
        assert!(patched(8, MAX_BLOCK_LEN).unwrap().is_some());
        assert_eq!(patched(24, u64::MAX), corrupt(CorruptReason::Sequence));
        assert_eq!(patched(32, MAX_OFFSET), corrupt(CorruptReason::Sequence));
    }

    /// A header checksummed with another key, or none (what anyone can compute, say inside an
    /// entry's data), is corrupt.
    #[test]
    fn a_header_of_another_key_is_corrupt() {
        for other in [0, KEY ^ 1, KEY.rotate_left(7)] {
            let forged = sample().encode(other).unwrap();
            assert_eq!(
                BlockHeader::decode(&forged, KEY),
                Err(FormatError::Corrupt {
                    at: 0,
                    reason: CorruptReason::HeaderChecksum
                })
            );
        }
    }

    #[test]
    fn the_key_is_solved_from_a_valid_header() {
        let h = sample();
        for key in [0, 1, KEY, u32::MAX] {
            assert_eq!(
                BlockHeader::solve_key(&h.encode(key).unwrap()),
                Some((key, h.clone()))
            );
        }
        // Bytes that are no header under any key.
        let mut b = h.encode(KEY).unwrap();
        b[0] ^= 1;
        assert_eq!(BlockHeader::solve_key(&b), None);
        assert_eq!(BlockHeader::solve_key(&[0; BLOCK_HEADER_LEN]), None);
        assert_eq!(BlockHeader::solve_key(&b[..100]), None);
    }

    #[test]
    fn zero_torn_and_every_bit_flip() {
        assert_eq!(BlockHeader::decode(&[0; BLOCK_HEADER_LEN], KEY), Ok(None));
        let bytes = sample().encode(KEY).unwrap();
        for cut in 1..BLOCK_HEADER_LEN {
            assert_eq!(
                BlockHeader::decode(&bytes[..cut], KEY),
                Err(FormatError::Torn { at: 0 })
            );
        }
        for bit in 0..BLOCK_HEADER_LEN * 8 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(
                    BlockHeader::decode(&b, KEY),
                    Err(FormatError::Corrupt { .. })
                ),
                "bit {bit} accepted"
            );
        }
    }
}
