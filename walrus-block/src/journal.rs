//! The group-commit journal (`journal.wjnl`): a small file of records, each holding the segment
//! writes one group sync made durable, so that a group sync is one contiguous write and one
//! `fdatasync` of this file instead of a sync of every page the group touched in the segments.
//!
//! ```text
//! [0 .. 512)       header slot 0   (generations 2, 4, …)
//! [512 .. 1024)    header slot 1   (generations 1, 3, …)
//! [1024 .. 4096)   zero
//! [4096 .. )       record 0, record 1, …, each starting at a multiple of 512
//! ```
//!
//! A record is live when its generation is the header's and its sequence number follows the
//! record before it (the first is 0). Starting a new generation (at open, and when the records
//! reach the end of the file, both after every segment write they hold was synced) retires every
//! record at once. Layout drawn in `docs/FORMAT.md`.
//!
//! The file has a random **key** (version 2), held in both header slots, that seeds the CRC of
//! its record headers: a record's body holds entry data users choose, and after the live
//! records end (a crash) the bytes where the next one would start may be an earlier
//! generation's body, which must not pass as a record whose writes the next open applies.

use rkyv::Archived;

use crate::archived::{
    JournalHeaderV1, JournalRecordV1, JournalWriteV1, access, body_crc, bytes_of, decode_checked,
    decode_keyed, keyed_body_crc,
};
use crate::checksum::crc32c;
use crate::error::{CorruptReason, FormatError};

/// Magic bytes of a journal header.
pub const JOURNAL_MAGIC: [u8; 8] = *b"WALRUSJL";
/// Magic bytes opening every journal record.
pub const JOURNAL_RECORD_MAGIC: [u8; 4] = *b"WJRC";
/// The journal format version this crate writes. It reads version 1 too: a version 1 header
/// is a version 2 one with key 0 (the field was reserved, zero).
pub const JOURNAL_VERSION: u16 = 2;
/// Bytes of one header slot; slot `g % 2` holds generation `g`.
pub const JOURNAL_SLOT_LEN: u64 = 512;
/// Encoded length of a [`JournalHeader`].
pub const JOURNAL_HEADER_LEN: usize = std::mem::size_of::<JournalHeaderV1>();
/// Encoded length of a record header.
pub const JOURNAL_RECORD_HEADER_LEN: usize = std::mem::size_of::<JournalRecordV1>();
/// Encoded length of the header of one write in a record's body.
pub const JOURNAL_WRITE_HEADER_LEN: usize = std::mem::size_of::<JournalWriteV1>();
/// Where the first record starts.
pub const JOURNAL_DATA_OFFSET: u64 = 4096;
/// Records start at multiples of this (a sector: a record's write never shares one with the
/// record before it).
pub const JOURNAL_RECORD_ALIGN: u64 = 512;

/// The header of a journal file: which generation of records is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JournalHeader {
    /// The live generation, from 1.
    pub generation: u64,
    /// The CRC32C seed of the file's record headers, the same in every generation (0 in a
    /// version 1 journal).
    pub key: u32,
}

impl JournalHeader {
    /// Encodes the header, CRC included.
    #[must_use]
    pub fn encode(&self) -> [u8; JOURNAL_HEADER_LEN] {
        let mut h = JournalHeaderV1 {
            magic: JOURNAL_MAGIC,
            version: Archived::<u16>::from_native(JOURNAL_VERSION),
            flags: Archived::<u16>::from_native(0),
            key: Archived::<u32>::from_native(self.key),
            generation: Archived::<u64>::from_native(self.generation),
            crc: Archived::<u32>::from_native(0),
        };
        h.crc = Archived::<u32>::from_native(body_crc(&h));
        let mut out = [0u8; JOURNAL_HEADER_LEN];
        out.copy_from_slice(bytes_of(&h));
        out
    }

    /// The byte position of the slot that holds `generation`.
    #[must_use]
    pub fn slot_of(generation: u64) -> u64 {
        (generation % 2) * JOURNAL_SLOT_LEN
    }

    /// Decodes one header slot: `Ok(None)` when it was never written.
    ///
    /// # Errors
    /// [`FormatError::Torn`] for a short non-zero slot; [`FormatError::Corrupt`] for a bad
    /// magic, checksum, version or flags, a non-zero key in version 1, or generation 0.
    pub fn decode(bytes: &[u8]) -> Result<Option<Self>, FormatError> {
        let magic_ok = |h: &JournalHeaderV1| h.magic == JOURNAL_MAGIC;
        let Some(h) = decode_checked::<JournalHeaderV1>(bytes, magic_ok, |h| h.crc.to_native())?
        else {
            return Ok(None);
        };
        let corrupt = |reason| FormatError::Corrupt { at: 0, reason };
        let version = h.version.to_native();
        if !(1..=JOURNAL_VERSION).contains(&version) {
            return Err(corrupt(CorruptReason::UnsupportedVersion));
        }
        if h.flags.to_native() != 0 || (version == 1 && h.key.to_native() != 0) {
            return Err(corrupt(CorruptReason::ReservedBits));
        }
        if h.generation.to_native() == 0 {
            return Err(corrupt(CorruptReason::Sequence));
        }
        Ok(Some(Self {
            generation: h.generation.to_native(),
            key: h.key.to_native(),
        }))
    }

    /// The live header of a journal from its two slots (the first 1024 bytes of the file):
    /// the valid slot with the higher generation. A slot torn or damaged by a crash while it
    /// was rewritten leaves the other one, which holds the generation before.
    ///
    /// # Errors
    /// [`FormatError::Corrupt`] when neither slot holds a valid header (and they are not
    /// both zero).
    pub fn decode_slots(bytes: &[u8]) -> Result<Option<Self>, FormatError> {
        let slot = |i: u64| {
            let start = usize::try_from(i * JOURNAL_SLOT_LEN).unwrap_or(usize::MAX);
            let end = start.saturating_add(JOURNAL_SLOT_LEN as usize);
            Self::decode(bytes.get(start..end.min(bytes.len())).unwrap_or(&[]))
        };
        let (a, b) = (slot(0), slot(1));
        let best = [&a, &b]
            .into_iter()
            .filter_map(|s| s.as_ref().ok().copied().flatten())
            // A header in the wrong slot is not one this format writes.
            .filter(|h| {
                (a.as_ref().ok() == Some(&Some(*h)) && h.generation % 2 == 0)
                    || (b.as_ref().ok() == Some(&Some(*h)) && h.generation % 2 == 1)
            })
            .max_by_key(|h| h.generation);
        match (best, &a, &b) {
            (Some(h), _, _) => Ok(Some(h)),
            (None, Ok(None), Ok(None)) => Ok(None),
            (None, Err(e), _) | (None, _, Err(e)) => Err(e.clone()),
            (None, _, _) => Err(FormatError::Corrupt {
                at: 0,
                reason: CorruptReason::Sequence,
            }),
        }
    }
}

/// Appends one write (`bytes` at `position` of segment `segment_id`) to a record body.
///
/// # Errors
/// [`FormatError::InvalidInput`] when `bytes` is longer than `u32::MAX`; `body` is then
/// unchanged.
pub fn encode_journal_write(
    body: &mut Vec<u8>,
    segment_id: u64,
    position: u64,
    bytes: &[&[u8]],
) -> Result<(), FormatError> {
    let len: usize = bytes.iter().map(|b| b.len()).sum();
    let len = u32::try_from(len)
        .map_err(|_| FormatError::InvalidInput(format!("a journal write of {len} bytes")))?;
    let h = JournalWriteV1 {
        segment_id: Archived::<u64>::from_native(segment_id),
        position: Archived::<u64>::from_native(position),
        len: Archived::<u32>::from_native(len),
    };
    body.extend_from_slice(bytes_of(&h));
    for b in bytes {
        body.extend_from_slice(b);
    }
    Ok(())
}

/// The header of record `seq` of `generation` whose body is `body`, its CRC seeded with the
/// journal's `key`.
///
/// # Errors
/// [`FormatError::InvalidInput`] when the body is longer than `u32::MAX`.
pub fn encode_journal_record_header(
    generation: u64,
    seq: u64,
    key: u32,
    body: &[u8],
) -> Result<[u8; JOURNAL_RECORD_HEADER_LEN], FormatError> {
    let len = u32::try_from(body.len()).map_err(|_| {
        FormatError::InvalidInput(format!("a journal record of {} bytes", body.len()))
    })?;
    let mut h = JournalRecordV1 {
        magic: JOURNAL_RECORD_MAGIC,
        reserved: Archived::<u32>::from_native(0),
        generation: Archived::<u64>::from_native(generation),
        seq: Archived::<u64>::from_native(seq),
        body_len: Archived::<u32>::from_native(len),
        body_crc: Archived::<u32>::from_native(crc32c(body)),
        crc: Archived::<u32>::from_native(0),
    };
    h.crc = Archived::<u32>::from_native(keyed_body_crc(&h, key));
    let mut out = [0u8; JOURNAL_RECORD_HEADER_LEN];
    out.copy_from_slice(bytes_of(&h));
    Ok(out)
}

/// A record header read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JournalRecordHeader {
    /// The generation the record was written in.
    pub generation: u64,
    /// Its place in the generation: 0, 1, 2, …
    pub seq: u64,
    /// Bytes of body after the header.
    pub body_len: u32,
    /// CRC32C of the body.
    pub body_crc: u32,
}

impl JournalRecordHeader {
    /// Decodes a record header at the start of `bytes`, of a journal whose key is `key`:
    /// `Ok(None)` when it is all zero.
    ///
    /// # Errors
    /// [`FormatError::Torn`] for a short non-zero header; [`FormatError::Corrupt`] for a bad
    /// magic, checksum (a header of another key fails it) or reserved bytes.
    pub fn decode(bytes: &[u8], key: u32) -> Result<Option<Self>, FormatError> {
        let magic_ok = |h: &JournalRecordV1| h.magic == JOURNAL_RECORD_MAGIC;
        let Some(h) = decode_keyed::<JournalRecordV1>(bytes, key, magic_ok, |h| h.crc.to_native())?
        else {
            return Ok(None);
        };
        if h.reserved.to_native() != 0 {
            return Err(FormatError::Corrupt {
                at: 0,
                reason: CorruptReason::ReservedBits,
            });
        }
        Ok(Some(Self {
            generation: h.generation.to_native(),
            seq: h.seq.to_native(),
            body_len: h.body_len.to_native(),
            body_crc: h.body_crc.to_native(),
        }))
    }

    /// Bytes from this record's start to where the next one starts.
    #[must_use]
    pub fn span(&self) -> u64 {
        (JOURNAL_RECORD_HEADER_LEN as u64 + u64::from(self.body_len))
            .next_multiple_of(JOURNAL_RECORD_ALIGN)
    }
}

/// One segment write held by a journal record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JournalWrite<'a> {
    /// The segment written.
    pub segment_id: u64,
    /// Byte position in the segment file.
    pub position: u64,
    /// The bytes written there.
    pub bytes: &'a [u8],
}

/// The writes of a record body, checked against the header's CRC first.
///
/// # Errors
/// [`FormatError::Torn`] when `body` is shorter than the header says;
/// [`FormatError::Corrupt`] for a CRC mismatch or a write that overruns the body.
pub fn decode_journal_body<'a>(
    header: &JournalRecordHeader,
    body: &'a [u8],
) -> Result<Vec<JournalWrite<'a>>, FormatError> {
    let len = usize::try_from(header.body_len).unwrap_or(usize::MAX);
    let Some(body) = body.get(..len) else {
        return Err(FormatError::Torn { at: 0 });
    };
    if crc32c(body) != header.body_crc {
        return Err(FormatError::Corrupt {
            at: JOURNAL_RECORD_HEADER_LEN,
            reason: CorruptReason::PayloadChecksum,
        });
    }
    let mut writes = Vec::new();
    let mut at = 0usize;
    while at < body.len() {
        let corrupt = |reason| FormatError::Corrupt {
            at: JOURNAL_RECORD_HEADER_LEN + at,
            reason,
        };
        let h = body
            .get(at..at + JOURNAL_WRITE_HEADER_LEN)
            .and_then(access::<JournalWriteV1>)
            .ok_or(corrupt(CorruptReason::BadLength))?;
        let start = at + JOURNAL_WRITE_HEADER_LEN;
        let end = usize::try_from(h.len.to_native())
            .ok()
            .and_then(|n| start.checked_add(n))
            .ok_or(corrupt(CorruptReason::BadLength))?;
        let bytes = body
            .get(start..end)
            .ok_or(corrupt(CorruptReason::BadLength))?;
        writes.push(JournalWrite {
            segment_id: h.segment_id.to_native(),
            position: h.position.to_native(),
            bytes,
        });
        at = end;
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: u32 = 0xc0ff_ee00;

    fn record(generation: u64, seq: u64) -> Vec<u8> {
        let mut body = Vec::new();
        encode_journal_write(&mut body, 7, 4096, &[b"block header", b"frames"]).unwrap();
        encode_journal_write(&mut body, 9, 8192 + 308, &[b"more"]).unwrap();
        let mut out = encode_journal_record_header(generation, seq, KEY, &body)
            .unwrap()
            .to_vec();
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn a_record_round_trips() {
        let bytes = record(3, 5);
        let h = JournalRecordHeader::decode(&bytes, KEY).unwrap().unwrap();
        assert_eq!((h.generation, h.seq), (3, 5));
        assert_eq!(h.span(), 512);
        let writes = decode_journal_body(&h, &bytes[JOURNAL_RECORD_HEADER_LEN..]).unwrap();
        assert_eq!(
            writes,
            vec![
                JournalWrite {
                    segment_id: 7,
                    position: 4096,
                    bytes: b"block headerframes"
                },
                JournalWrite {
                    segment_id: 9,
                    position: 8192 + 308,
                    bytes: b"more"
                },
            ]
        );
    }

    #[test]
    fn every_bit_flip_of_a_record_is_rejected() {
        let bytes = record(1, 0);
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let rejected = match JournalRecordHeader::decode(&b, KEY) {
                Err(_) => true,
                Ok(None) => true,
                Ok(Some(h)) => {
                    (h.generation, h.seq) != (1, 0)
                        || decode_journal_body(&h, &b[JOURNAL_RECORD_HEADER_LEN..]).is_err()
                }
            };
            assert!(rejected, "bit {bit} accepted");
        }
    }

    /// A record checksummed with another key, or with none (what the data of an
    /// entry can carry), is corrupt.
    #[test]
    fn a_record_of_another_key_is_corrupt() {
        let mut body = Vec::new();
        encode_journal_write(&mut body, 1, 4096, &[b"abc"]).unwrap();
        for other in [0, KEY ^ 0x100] {
            let forged = encode_journal_record_header(1, 0, other, &body).unwrap();
            assert_eq!(
                JournalRecordHeader::decode(&forged, KEY),
                Err(FormatError::Corrupt {
                    at: 0,
                    reason: CorruptReason::HeaderChecksum
                })
            );
        }
    }

    #[test]
    fn a_version_1_header_reads_with_key_0() {
        let mut v1 = JournalHeader {
            generation: 5,
            key: 0,
        }
        .encode();
        v1[8] = 1;
        let crc = crc32c(&v1[..24]).to_le_bytes();
        v1[24..].copy_from_slice(&crc);
        assert_eq!(
            JournalHeader::decode(&v1),
            Ok(Some(JournalHeader {
                generation: 5,
                key: 0
            }))
        );
        // Version 1 had no key: a non-zero one there is damage.
        v1[12] = 1;
        let crc = crc32c(&v1[..24]).to_le_bytes();
        v1[24..].copy_from_slice(&crc);
        assert!(JournalHeader::decode(&v1).is_err());
    }

    #[test]
    fn a_cut_record_is_torn_and_zeros_are_nothing() {
        let bytes = record(1, 0);
        assert_eq!(JournalRecordHeader::decode(&[0; 64], KEY), Ok(None));
        assert_eq!(
            JournalRecordHeader::decode(&bytes[..10], KEY),
            Err(FormatError::Torn { at: 0 })
        );
        let h = JournalRecordHeader::decode(&bytes, KEY).unwrap().unwrap();
        assert_eq!(
            decode_journal_body(&h, &bytes[JOURNAL_RECORD_HEADER_LEN..bytes.len() - 1]),
            Err(FormatError::Torn { at: 0 })
        );
    }

    #[test]
    fn a_body_whose_write_overruns_it_is_corrupt() {
        let mut body = Vec::new();
        encode_journal_write(&mut body, 1, 4096, &[b"abc"]).unwrap();
        body.truncate(body.len() - 1);
        let header = encode_journal_record_header(1, 0, KEY, &body).unwrap();
        let h = JournalRecordHeader::decode(&header, KEY).unwrap().unwrap();
        assert!(matches!(
            decode_journal_body(&h, &body),
            Err(FormatError::Corrupt { .. })
        ));
    }

    #[test]
    fn the_header_slots_pick_the_newest_valid_generation() {
        let mut slots = vec![0u8; 1024];
        assert_eq!(JournalHeader::decode_slots(&slots), Ok(None));
        let put = |slots: &mut Vec<u8>, g: u64| {
            let at = JournalHeader::slot_of(g) as usize;
            slots[at..at + JOURNAL_HEADER_LEN].copy_from_slice(
                &JournalHeader {
                    generation: g,
                    key: KEY,
                }
                .encode(),
            );
        };
        put(&mut slots, 1);
        assert_eq!(
            JournalHeader::decode_slots(&slots),
            Ok(Some(JournalHeader {
                generation: 1,
                key: KEY
            }))
        );
        put(&mut slots, 2);
        assert_eq!(
            JournalHeader::decode_slots(&slots),
            Ok(Some(JournalHeader {
                generation: 2,
                key: KEY
            }))
        );
        // Generation 3 torn while it was written: generation 2 stays.
        put(&mut slots, 3);
        slots[512 + 20] ^= 0xff;
        assert_eq!(
            JournalHeader::decode_slots(&slots),
            Ok(Some(JournalHeader {
                generation: 2,
                key: KEY
            }))
        );
        // Both damaged: corrupt.
        slots[20] ^= 0xff;
        assert!(JournalHeader::decode_slots(&slots).is_err());
        // A header in the slot of the other parity is refused.
        let mut wrong = vec![0u8; 1024];
        wrong[..JOURNAL_HEADER_LEN].copy_from_slice(
            &JournalHeader {
                generation: 1,
                key: KEY,
            }
            .encode(),
        );
        assert!(JournalHeader::decode_slots(&wrong).is_err());
    }

    #[test]
    fn every_bit_flip_of_a_header_is_rejected() {
        let bytes = JournalHeader {
            generation: 4,
            key: KEY,
        }
        .encode();
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(JournalHeader::decode(&b), Ok(Some(h)) if h.generation == 4),
                "bit {bit} accepted"
            );
        }
    }
}
