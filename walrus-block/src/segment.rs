//! The segment header: the first bytes of every segment file, and a copy of them in the same
//! page.
//!
//! Format v3 adds the segment's **key**: a random CRC32C seed for the headers of the segment's
//! blocks. Recovery looks for block headers at every page boundary of a segment after a lost or
//! damaged one, and entry data, which users choose, can hold a page that looks like a block
//! header; a header checksummed from the key validates only where the writer, who never shows
//! the key to anyone, wrote it. The key lives in the header at byte 0 and in its copy at
//! [`SEGMENT_HEADER_COPY_AT`]: without either, no block of the segment can be validated.
//!
//! Format v4 keys the frames of the blocks a segment hands out with the same key (each such
//! block says so in its header, see [`BlockHeader::keyed_frames`](crate::BlockHeader)); the
//! header's layout is v3's. A v3 segment keeps handing out blocks whose frames are not keyed,
//! so that its version keeps telling a build that reads v3 only what it holds.

use rkyv::Archived;

use crate::archived::{SegmentHeaderV2, SegmentHeaderV3, body_crc, bytes_of, decode_checked};
use crate::checksum::crc32c;
use crate::error::{CorruptReason, FormatError};
use crate::is_zeroed;
use crate::limits::BLOCK_ALIGN;

/// Magic bytes opening every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"WALRUSSG";
/// The on-disk format version this crate writes.
pub const FORMAT_VERSION: u16 = 4;
/// The earliest format version this crate reads: a v2 segment is a v3 one with key 0 (plain
/// CRC32C block headers) and no copy of its header.
pub const OLDEST_FORMAT_VERSION: u16 = 2;
/// Segment header flag (v3): the header page was synced before any block was handed out.
const FLAG_SYNCED: u8 = 0x01;
/// Checksum algorithm id for CRC32C (Castagnoli), the only one the format defines.
pub const CHECKSUM_CRC32C: u8 = 1;
/// Encoded length of a [`SegmentHeader`].
pub const SEGMENT_HEADER_LEN: usize = std::mem::size_of::<SegmentHeaderV3>();
/// Byte position of the header's copy: in the header's page, in another sector (a torn or
/// damaged sector takes one of the two).
pub const SEGMENT_HEADER_COPY_AT: usize = 2048;
/// Byte position of the first block in a segment file. The first 4 KiB hold the header and its
/// copy, zero elsewhere, so that blocks are page aligned.
pub const SEGMENT_DATA_OFFSET: u64 = BLOCK_ALIGN;

/// The header of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentHeader {
    /// The segment's id, unique within a data directory.
    pub segment_id: u64,
    /// The default block length in this segment (blocks may be longer to hold one big entry).
    pub block_len: u64,
    /// The CRC32C seed of the segment's block headers (see the module docs); 0 in a v2 segment.
    pub key: u32,
    /// The header page was synced before any block of the segment was handed out (flag bit
    /// 0): a page found half or wholly zero with blocks behind it is then damage, not the torn
    /// write of a page never synced. Always false in a v2 segment.
    pub synced: bool,
    /// A segment of format v4: the blocks handed out in it key their frames with `key`. False
    /// for v2 and v3, which are encoded again as v3 (a v2 header as v3 with key 0).
    pub keyed_frames: bool,
}

impl SegmentHeader {
    /// Encodes the header, CRCs included.
    #[must_use]
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut h = SegmentHeaderV3 {
            magic: SEGMENT_MAGIC,
            version: Archived::<u16>::from_native(if self.keyed_frames { 4 } else { 3 }),
            checksum: CHECKSUM_CRC32C,
            flags: if self.synced { FLAG_SYNCED } else { 0 },
            data_offset: Archived::<u32>::from_native(SEGMENT_DATA_OFFSET as u32),
            segment_id: Archived::<u64>::from_native(self.segment_id),
            block_len: Archived::<u64>::from_native(self.block_len),
            crc: Archived::<u32>::from_native(0),
            key: Archived::<u32>::from_native(self.key),
            key_crc: Archived::<u32>::from_native(0),
        };
        let v2_part = bytes_of(&h).get(..32).map_or(0, crc32c);
        h.crc = Archived::<u32>::from_native(v2_part);
        h.key_crc = Archived::<u32>::from_native(body_crc(&h));
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        out.copy_from_slice(bytes_of(&h));
        out
    }

    /// The first page of the segment file: the header at 0, its copy at
    /// [`SEGMENT_HEADER_COPY_AT`], zeros elsewhere.
    #[must_use]
    pub fn encode_page(&self) -> Vec<u8> {
        let mut page = vec![0u8; SEGMENT_DATA_OFFSET as usize];
        let header = self.encode();
        for at in [0, SEGMENT_HEADER_COPY_AT] {
            if let Some(slot) = page.get_mut(at..at + SEGMENT_HEADER_LEN) {
                slot.copy_from_slice(&header);
            }
        }
        page
    }

    /// The header's copy in a segment's first page (`None` when it is missing or invalid), for
    /// when the header itself is not valid.
    #[must_use]
    pub fn decode_copy(page: &[u8]) -> Option<Self> {
        Self::decode(page.get(SEGMENT_HEADER_COPY_AT..)?)
            .ok()
            .flatten()
    }

    /// Decodes and validates a segment header from the first bytes of a file: format v4 or v3,
    /// or v2 (key 0).
    ///
    /// Returns `Ok(None)` when the header bytes are all zero (a segment file that was created but
    /// whose header never reached the disk).
    ///
    /// # Errors
    /// [`FormatError::Torn`] when `bytes` is shorter than a header (and not all zero);
    /// [`FormatError::Corrupt`] for a bad magic (foreign file), checksum, version, checksum
    /// algorithm, reserved bits, data offset or block length.
    pub fn decode(bytes: &[u8]) -> Result<Option<Self>, FormatError> {
        let corrupt = |reason| FormatError::Corrupt { at: 0, reason };
        // The 36 bytes every version since v2 begins with (a v3 header with its key lost
        // behind a valid v2 part is damage, not a v2 header: the version says which).
        let magic_ok = |h: &SegmentHeaderV2| h.magic == SEGMENT_MAGIC;
        let Some(h) = decode_checked::<SegmentHeaderV2>(bytes, magic_ok, |h| h.crc.to_native())?
        else {
            return match bytes.get(..SEGMENT_HEADER_LEN) {
                Some(all) if !is_zeroed(all) => Err(corrupt(CorruptReason::Malformed)),
                _ => Ok(None),
            };
        };
        let version = h.version.to_native();
        let key = match version {
            2 => 0,
            3 | 4 => {
                let magic_ok = |h: &SegmentHeaderV3| h.magic == SEGMENT_MAGIC;
                let v3 =
                    decode_checked::<SegmentHeaderV3>(bytes, magic_ok, |h| h.key_crc.to_native())?
                        .ok_or(corrupt(CorruptReason::Malformed))?;
                v3.key.to_native()
            }
            _ => return Err(corrupt(CorruptReason::UnsupportedVersion)),
        };
        if h.checksum != CHECKSUM_CRC32C {
            return Err(corrupt(CorruptReason::UnknownChecksum));
        }
        // v2 defines no flag; v3 the one.
        let known_flags = if version == 2 { 0 } else { FLAG_SYNCED };
        if h.flags & !known_flags != 0 {
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
            key,
            synced: h.flags & FLAG_SYNCED != 0,
            keyed_frames: version == 4,
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
            key: 0x1234_5678,
            synced: false,
            keyed_frames: true,
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
            key: 9,
            synced: false,
            keyed_frames: true,
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
            key: 0xdead_beef,
            synced: false,
            keyed_frames: true,
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
    fn the_synced_flag_round_trips_and_v2_has_none() {
        let h = SegmentHeader {
            segment_id: 4,
            block_len: 4096,
            key: 3,
            synced: true,
            keyed_frames: true,
        };
        let bytes = h.encode();
        assert_eq!(bytes[11], 1);
        assert_eq!(SegmentHeader::decode(&bytes), Ok(Some(h)));
        // A v2 header with the bit set: no flag of v2's.
        let mut v2 = bytes;
        v2[8] = 2;
        let crc = crate::checksum::crc32c(&v2[..32]).to_le_bytes();
        v2[32..36].copy_from_slice(&crc);
        assert_eq!(
            SegmentHeader::decode(&v2[..36]),
            Err(FormatError::Corrupt {
                at: 0,
                reason: CorruptReason::ReservedBits
            })
        );
    }

    #[test]
    fn the_copy_stands_in_for_a_damaged_header() {
        let h = SegmentHeader {
            segment_id: 3,
            block_len: 4096,
            key: 77,
            synced: false,
            keyed_frames: true,
        };
        let mut page = h.encode_page();
        assert_eq!(SegmentHeader::decode(&page), Ok(Some(h)));
        assert_eq!(SegmentHeader::decode_copy(&page), Some(h));
        page[20] ^= 1;
        assert!(SegmentHeader::decode(&page).is_err());
        assert_eq!(SegmentHeader::decode_copy(&page), Some(h));
        page[SEGMENT_HEADER_COPY_AT + 20] ^= 1;
        assert_eq!(SegmentHeader::decode_copy(&page), None);
    }

    #[test]
    fn a_version_2_header_reads_with_key_0() {
        // Format v2's 36 bytes (the golden `segment_v2.bin` header): segment 7, blocks of 4096.
        let v2 = [
            0x57, 0x41, 0x4c, 0x52, 0x55, 0x53, 0x53, 0x47, 0x02, 0x00, 0x01, 0x00, 0x00, 0x10,
            0x00, 0x00, 0x07, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0x3e, 0x11, 0x7c,
            0x36,
        ];
        assert_eq!(
            SegmentHeader::decode(&v2),
            Ok(Some(SegmentHeader {
                segment_id: 7,
                block_len: 4096,
                key: 0,
                synced: false,
                keyed_frames: false,
            }))
        );
        // Any other version is refused as such, in either layout.
        let mut v1 = v2;
        v1[8] = 1;
        let crc = crate::checksum::crc32c(&v1[..32]).to_le_bytes();
        v1[32..].copy_from_slice(&crc);
        assert_eq!(
            SegmentHeader::decode(&v1),
            Err(FormatError::Corrupt {
                at: 0,
                reason: CorruptReason::UnsupportedVersion
            })
        );
        let mut v5 = SegmentHeader {
            segment_id: 7,
            block_len: 4096,
            key: 1,
            synced: false,
            keyed_frames: true,
        }
        .encode();
        v5[8] = 5;
        let crc = crate::checksum::crc32c(&v5[..32]).to_le_bytes();
        v5[32..36].copy_from_slice(&crc);
        let crc = crate::checksum::crc32c(&v5[..40]).to_le_bytes();
        v5[40..44].copy_from_slice(&crc);
        assert_eq!(
            SegmentHeader::decode(&v5),
            Err(FormatError::Corrupt {
                at: 0,
                reason: CorruptReason::UnsupportedVersion
            })
        );
    }

    /// A v3 header (and a v4 one: the same layout) begins with a valid v2 header of its
    /// version: a build that reads v2 only refuses it as another version, not as damage. A v3
    /// header stays v3 when encoded again, and says its blocks' frames are not keyed.
    #[test]
    fn a_version_3_header_begins_as_a_version_2_one() {
        let v3 = SegmentHeader {
            segment_id: 5,
            block_len: 8192,
            key: 0xfeed_beef,
            synced: false,
            keyed_frames: false,
        };
        let v4 = SegmentHeader {
            keyed_frames: true,
            ..v3
        };
        assert_eq!(&v4.encode()[8..10], &[4, 0]);
        assert_eq!(SegmentHeader::decode(&v4.encode()), Ok(Some(v4)));
        assert_eq!(SegmentHeader::decode(&v3.encode()), Ok(Some(v3)));
        let bytes = v3.encode();
        assert_eq!(&bytes[8..10], &[3, 0]);
        assert_eq!(
            crate::checksum::crc32c(&bytes[..32]).to_le_bytes(),
            bytes[32..36]
        );
        assert_eq!(
            crate::checksum::crc32c(&bytes[..40]).to_le_bytes(),
            bytes[40..44]
        );
        // Its key lost behind a valid v2 part: damage, not a v2 header.
        let mut cut = bytes;
        cut[36..].fill(0);
        assert!(SegmentHeader::decode(&cut).is_err());
        assert_eq!(
            SegmentHeader::decode(&bytes[..40]),
            Err(FormatError::Torn { at: 0 })
        );
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
