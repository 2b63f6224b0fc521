//! The segment header: the first bytes of every segment file.

use rkyv::Archived;

use crate::archived::{SegmentHeaderV1, body_crc, bytes_of, decode_checked};
use crate::error::{CorruptReason, FormatError};
use crate::limits::BLOCK_ALIGN;

/// Magic bytes opening every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"WALRUSSG";
/// The on-disk format version this crate writes and reads.
pub const FORMAT_VERSION: u16 = 2;
/// Checksum algorithm id for CRC32C (Castagnoli), the only one format v1 defines.
pub const CHECKSUM_CRC32C: u8 = 1;
/// Encoded length of a [`SegmentHeader`].
pub const SEGMENT_HEADER_LEN: usize = std::mem::size_of::<SegmentHeaderV1>();
/// Byte position of the first block in a segment file. The rest of the first 4 KiB after the
/// header is zero, so that blocks are page aligned.
pub const SEGMENT_DATA_OFFSET: u64 = BLOCK_ALIGN;

/// The header of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentHeader {
    /// The segment's id, unique within a data directory.
    pub segment_id: u64,
    /// The default block length in this segment (blocks may be longer to hold one big entry).
    pub block_len: u64,
}

impl SegmentHeader {
    /// Encodes the header, CRC included.
    #[must_use]
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut h = SegmentHeaderV1 {
            magic: SEGMENT_MAGIC,
            version: Archived::<u16>::from_native(FORMAT_VERSION),
            checksum: CHECKSUM_CRC32C,
            flags: 0,
            data_offset: Archived::<u32>::from_native(SEGMENT_DATA_OFFSET as u32),
            segment_id: Archived::<u64>::from_native(self.segment_id),
            block_len: Archived::<u64>::from_native(self.block_len),
            crc: Archived::<u32>::from_native(0),
        };
        h.crc = Archived::<u32>::from_native(body_crc(&h));
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        out.copy_from_slice(bytes_of(&h));
        out
    }

    /// Decodes and validates a segment header from the first bytes of a file.
    ///
    /// Returns `Ok(None)` when the header bytes are all zero (a segment file that was created but
    /// whose header never reached the disk).
    ///
    /// # Errors
    /// [`FormatError::Torn`] when `bytes` is shorter than a header (and not all zero);
    /// [`FormatError::Corrupt`] for a bad magic (foreign file), checksum, version, checksum
    /// algorithm, reserved bits, data offset or block length.
    pub fn decode(bytes: &[u8]) -> Result<Option<Self>, FormatError> {
        let magic_ok = |h: &SegmentHeaderV1| h.magic == SEGMENT_MAGIC;
        let Some(h) = decode_checked::<SegmentHeaderV1>(bytes, magic_ok, |h| h.crc.to_native())?
        else {
            return Ok(None);
        };
        let corrupt = |reason| FormatError::Corrupt { at: 0, reason };
        if h.version.to_native() != FORMAT_VERSION {
            return Err(corrupt(CorruptReason::UnsupportedVersion));
        }
        if h.checksum != CHECKSUM_CRC32C {
            return Err(corrupt(CorruptReason::UnknownChecksum));
        }
        if h.flags != 0 {
            return Err(corrupt(CorruptReason::ReservedBits));
        }
        let block_len = h.block_len.to_native();
        if u64::from(h.data_offset.to_native()) != SEGMENT_DATA_OFFSET
            || block_len == 0
            || !block_len.is_multiple_of(BLOCK_ALIGN)
        {
            return Err(corrupt(CorruptReason::BadLength));
        }
        Ok(Some(Self {
            segment_id: h.segment_id.to_native(),
            block_len,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = SegmentHeader {
            segment_id: 42,
            block_len: 1 << 20,
        };
        let bytes = h.encode();
        assert_eq!(&bytes[..8], b"WALRUSSG");
        assert_eq!(SegmentHeader::decode(&bytes), Ok(Some(h)));
        // Extra trailing bytes (the rest of the first page) are ignored.
        let mut page = bytes.to_vec();
        page.resize(4096, 0);
        assert_eq!(SegmentHeader::decode(&page), Ok(Some(h)));
    }

    #[test]
    fn zero_and_short() {
        assert_eq!(SegmentHeader::decode(&[0; 4096]), Ok(None));
        assert_eq!(SegmentHeader::decode(&[]), Ok(None));
        let bytes = SegmentHeader {
            segment_id: 1,
            block_len: 4096,
        }
        .encode();
        assert_eq!(
            SegmentHeader::decode(&bytes[..10]),
            Err(FormatError::Torn { at: 0 })
        );
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let bytes = SegmentHeader {
            segment_id: 7,
            block_len: 8192,
        }
        .encode();
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(SegmentHeader::decode(&b), Err(FormatError::Corrupt { .. })),
                "bit {bit} accepted"
            );
        }
    }

    #[test]
    fn foreign_file_is_bad_magic() {
        let mut junk = *b"#!/bin/sh\necho this is not a segment file at all\n";
        junk[0] = b'#';
        assert_eq!(
            SegmentHeader::decode(&junk),
            Err(FormatError::Corrupt {
                at: 0,
                reason: CorruptReason::BadMagic
            })
        );
    }
}
