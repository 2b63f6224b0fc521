//! Tiered blocks: the objects a sealed block becomes in the remote tier.
//!
//! A sealed block is uploaded as two objects under its topic's directory:
//!
//! * the **data object** `…/<first offset>-<end offset>.blk`: the block's frames as they sit
//!   after its header on disk, their header CRCs not keyed (key 0; on disk they are keyed with
//!   the segment's key since format v4, see [`rekey_frames`](crate::rekey_frames)); each frame
//!   keeps its own CRC32C and offset, so a ranged GET of any frames validates on its own. (Keys
//!   guard the search for a frame after damage; a data object is read from its index's
//!   positions, never searched.)
//! * the **index object** `…/<first offset>-<end offset>.idx`, written only after the data
//!   object is confirmed, and so the upload's commit point: a [`TierIndex`] saying which
//!   topic, segment and offsets the data object holds, its length and CRC32C, and the
//!   byte position of every `stride`-th entry, so that a read of a few entries fetches only the
//!   bytes between two index points.
//!
//! Names derive from the block's offsets alone, so an upload redone after a crash uses the same names.
//! Index layout (little-endian), followed by nothing:
//!
//! ```text
//! magic "WTIX" | version u16 = 1 | topic length u8 | topic bytes
//! | segment u64 | first_offset u64 | entries u64 | data_len u64 | sealed_ms u64 | data_crc u32
//! | stride u32 | points u32 | point positions u64 × points | CRC32C u32 of all before
//! ```

use std::ops::Range;

use crate::checksum::crc32c;
use crate::error::{CorruptReason, FormatError};
use crate::frame::{Frame, FrameDecoder, SequenceCheck};
use crate::limits::validate_topic_name;

/// First bytes of every index object.
pub const TIER_INDEX_MAGIC: [u8; 4] = *b"WTIX";

/// The index format this build writes and reads.
pub const TIER_INDEX_VERSION: u16 = 1;

/// Entries between two index points at most (a ranged GET fetches at most this many entries
/// beyond those asked for).
pub const MAX_TIER_STRIDE: u32 = 1 << 16;

/// Longest index object: 64 MiB, 8 Mi points (at a stride of 32, a block of 256 Mi entries,
/// more than 5 GiB). [`TierIndex::encode`] refuses to make a longer one, and a reader refuses
/// to fetch one listed longer: a foreign or crafted object named like an index costs no more
/// memory than this.
pub const MAX_TIER_INDEX_LEN: u64 = 64 << 20;

/// What a tiered block's data object holds, and where its entries are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierIndex {
    /// The topic the block belongs to.
    pub topic: String,
    /// The segment file the block was uploaded from (for operators: which local file it was).
    pub segment: u64,
    /// Offset of the first entry in the data object.
    pub first_offset: u64,
    /// Entries in the data object (offsets `first_offset..first_offset + entries`).
    pub entries: u64,
    /// Length of the data object in bytes.
    pub data_len: u64,
    /// When the block was sealed, in milliseconds since the Unix epoch (0: unknown): what
    /// age-based retention of the tier counts from. [`build`](Self::build) leaves it 0.
    pub sealed_ms: u64,
    /// CRC32C of the whole data object.
    pub data_crc: u32,
    /// An index point every `stride` entries.
    pub stride: u32,
    /// Byte position in the data object of entries `0, stride, 2 × stride, …`.
    pub points: Vec<u64>,
}

fn bad(at: usize, reason: CorruptReason) -> FormatError {
    FormatError::Corrupt { at, reason }
}

impl TierIndex {
    /// The index of `data`, the frames of a block of `topic` in segment `segment` starting at
    /// `first_offset`, with a point every `stride` entries. Every frame is validated; the
    /// entries must be dense from `first_offset` (the first may continue a batch begun in the
    /// block before, the last may leave one open for the next) and fill `data` exactly.
    ///
    /// # Errors
    /// `InvalidTopic` / `InvalidInput` for bad arguments or empty data; `Corrupt` or `Torn`
    /// (positions within `data`) for frames that do not validate or do not follow.
    pub fn build(
        topic: &str,
        segment: u64,
        first_offset: u64,
        data: &[u8],
        stride: u32,
    ) -> Result<Self, FormatError> {
        validate_topic_name(topic)?;
        if stride == 0 || stride > MAX_TIER_STRIDE {
            return Err(FormatError::InvalidInput(format!(
                "index stride {stride}: must be 1 to {MAX_TIER_STRIDE}"
            )));
        }
        let mut check = SequenceCheck::resume(first_offset);
        let mut points = Vec::new();
        let mut entries = 0u64;
        let mut frames = FrameDecoder::new(data, 0);
        loop {
            match frames.next_frame() {
                Frame::Entry(e) => {
                    check
                        .check(e.offset, e.kind)
                        .map_err(|reason| bad(e.pos, reason))?;
                    if entries.is_multiple_of(u64::from(stride)) {
                        points.push(e.pos as u64);
                    }
                    entries += 1;
                }
                Frame::End { at } if at == data.len() => break,
                // Zeros (or a frame) after the end: the data object holds frames and nothing
                // else.
                Frame::End { at } => return Err(bad(at, CorruptReason::BadLength)),
                Frame::Torn { at } => return Err(FormatError::Torn { at }),
                Frame::Corrupt { at, reason } => return Err(bad(at, reason)),
            }
        }
        if entries == 0 {
            return Err(FormatError::InvalidInput(format!(
                "topic {topic:?} at offset {first_offset}: no entries to tier"
            )));
        }
        Ok(Self {
            topic: topic.to_owned(),
            segment,
            first_offset,
            entries,
            data_len: data.len() as u64,
            sealed_ms: 0,
            data_crc: crc32c(data),
            stride,
            points,
        })
    }

    /// One past the last offset held.
    #[must_use]
    pub fn end_offset(&self) -> u64 {
        self.first_offset.saturating_add(self.entries)
    }

    /// The byte range of the data object to fetch for the entries `offsets` (clamped to those
    /// held): from the index point at or before the first, to the point after the last (or
    /// the end). `None` if none of them is held.
    #[must_use]
    pub fn byte_range(&self, offsets: Range<u64>) -> Option<Range<u64>> {
        let from = offsets.start.max(self.first_offset);
        let to = offsets.end.min(self.end_offset());
        if from >= to {
            return None;
        }
        let stride = u64::from(self.stride.max(1));
        let first_point = usize::try_from((from - self.first_offset) / stride).ok()?;
        // The point after the last entry wanted (`to - 1`), if there is one.
        let end_point = usize::try_from((to - 1 - self.first_offset) / stride + 1).ok()?;
        let start = *self.points.get(first_point)?;
        let end = self.points.get(end_point).copied().unwrap_or(self.data_len);
        Some(start..end)
    }

    /// The index object's bytes.
    ///
    /// # Errors
    /// `InvalidTopic` for a bad topic name, `InvalidInput` when the fields do not agree (the
    /// points are not those of `entries` at `stride`) or make an index longer than
    /// [`MAX_TIER_INDEX_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        validate_topic_name(&self.topic)?;
        let want = self.entries.div_ceil(u64::from(self.stride.max(1)));
        if self.stride == 0
            || self.stride > MAX_TIER_STRIDE
            || self.points.len() as u64 != want
            || self.entries == 0
        {
            return Err(FormatError::InvalidInput(format!(
                "tier index of topic {:?} at offset {}: {} points for {} entries at stride {}",
                self.topic,
                self.first_offset,
                self.points.len(),
                self.entries,
                self.stride
            )));
        }
        let points = u32::try_from(self.points.len())
            .ok()
            .filter(|_| {
                (64 + self.topic.len() as u64 + 8 * self.points.len() as u64) <= MAX_TIER_INDEX_LEN
            })
            .ok_or_else(|| {
                FormatError::InvalidInput(format!(
                    "tier index of topic {:?} at offset {}: {} points make an index longer \
                     than {MAX_TIER_INDEX_LEN} bytes",
                    self.topic,
                    self.first_offset,
                    self.points.len()
                ))
            })?;
        let mut out = Vec::with_capacity(64 + self.topic.len() + 8 * self.points.len());
        out.extend_from_slice(&TIER_INDEX_MAGIC);
        out.extend_from_slice(&TIER_INDEX_VERSION.to_le_bytes());
        // validate_topic_name bounds the name to 255 bytes.
        out.push(self.topic.len() as u8);
        out.extend_from_slice(self.topic.as_bytes());
        for v in [
            self.segment,
            self.first_offset,
            self.entries,
            self.data_len,
            self.sealed_ms,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.data_crc.to_le_bytes());
        out.extend_from_slice(&self.stride.to_le_bytes());
        out.extend_from_slice(&points.to_le_bytes());
        for p in &self.points {
            out.extend_from_slice(&p.to_le_bytes());
        }
        let crc = crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Decodes and validates an index object. Never panics, whatever the bytes.
    ///
    /// # Errors
    /// `Torn` for bytes that end early, `Corrupt` for anything that does not validate (the
    /// CRC, the magic, the version, a topic name, points that are not increasing or lie
    /// outside the data, a count that does not match).
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let body_len = bytes
            .len()
            .checked_sub(4)
            .ok_or(FormatError::Torn { at: 0 })?;
        let (body, crc) = bytes.split_at(body_len);
        let mut r = Reader { bytes: body, at: 0 };
        if r.take(4)? != TIER_INDEX_MAGIC {
            return Err(bad(0, CorruptReason::BadMagic));
        }
        let stored = u32::from_le_bytes(crc.try_into().map_err(|_| FormatError::Torn { at: 0 })?);
        if crc32c(body) != stored {
            return Err(bad(body_len, CorruptReason::HeaderChecksum));
        }
        if r.u16()? != TIER_INDEX_VERSION {
            return Err(bad(4, CorruptReason::UnsupportedVersion));
        }
        let topic_len = usize::from(r.take(1)?.first().copied().unwrap_or(0));
        let topic_at = r.at;
        let topic = std::str::from_utf8(r.take(topic_len)?)
            .map_err(|_| bad(topic_at, CorruptReason::TopicNotUtf8))?
            .to_owned();
        validate_topic_name(&topic).map_err(|_| bad(topic_at, CorruptReason::BadLength))?;
        let segment = r.u64()?;
        let first_offset = r.u64()?;
        let entries_at = r.at;
        let entries = r.u64()?;
        let data_len = r.u64()?;
        let sealed_ms = r.u64()?;
        let data_crc = r.u32()?;
        let stride_at = r.at;
        let stride = r.u32()?;
        if stride == 0 || stride > MAX_TIER_STRIDE {
            return Err(bad(stride_at, CorruptReason::BadLength));
        }
        let count_at = r.at;
        let count = r.u32()?;
        if entries == 0
            || first_offset.checked_add(entries).is_none()
            || u64::from(count) != entries.div_ceil(u64::from(stride))
        {
            return Err(bad(entries_at, CorruptReason::BadLength));
        }
        // The points must be there before any is allocated for.
        let points_len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(8))
            .ok_or(bad(count_at, CorruptReason::BadLength))?;
        if r.bytes.len() - r.at != points_len {
            return Err(bad(r.at, CorruptReason::BadLength));
        }
        let mut points = Vec::with_capacity(count as usize);
        let mut last = None;
        for _ in 0..count {
            let at = r.at;
            let p = r.u64()?;
            // Strictly increasing, and each point leaves room for at least a frame header.
            if last.is_some_and(|l| p <= l) || p >= data_len || (last.is_none() && p != 0) {
                return Err(bad(at, CorruptReason::BadLength));
            }
            last = Some(p);
            points.push(p);
        }
        Ok(Self {
            topic,
            segment,
            first_offset,
            entries,
            data_len,
            sealed_ms,
            data_crc,
            stride,
            points,
        })
    }

    /// The data and index object names of this block under `dir` (see [`tier_object_names`]).
    #[must_use]
    pub fn object_names(&self, dir: &str) -> (String, String) {
        tier_object_names(dir, &self.topic, self.first_offset, self.end_offset())
    }
}

/// The names of the data and index objects of the block of `topic` holding offsets
/// `first_offset..end_offset`, under `dir`: `dir/<topic key>/<first offset, 20 digits>-<end
/// offset, 20 digits>.blk` and `.idx`. Zero-padded, so a listing is in offset order.
#[must_use]
pub fn tier_object_names(
    dir: &str,
    topic: &str,
    first_offset: u64,
    end_offset: u64,
) -> (String, String) {
    let base = format!(
        "{dir}/{}/{first_offset:020}-{end_offset:020}",
        topic_key(topic)
    );
    (format!("{base}.blk"), format!("{base}.idx"))
}

/// `topic` as one part of an object key: ASCII letters, digits, `_` and `-` as they are, every
/// other byte as `=XX` (hex). Injective, and never `.` or `..`.
#[must_use]
pub fn topic_key(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len());
    for b in topic.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// A cursor over the bytes of an index, failing with `Torn` at the end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(FormatError::Torn { at: self.at })?;
        let s = self
            .bytes
            .get(self.at..end)
            .ok_or(FormatError::Torn { at: self.at })?;
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let at = self.at;
        self.take(N)?
            .try_into()
            .map_err(|_| FormatError::Torn { at })
    }

    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameKind, encode_frame};

    fn frames(first: u64, n: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        for o in first..first + n {
            encode_frame(
                &mut buf,
                o,
                FrameKind::single(),
                format!("entry-{o}").as_bytes(),
                0,
            )
            .unwrap();
        }
        buf
    }

    /// An index longer than [`MAX_TIER_INDEX_LEN`] is never made (readers refuse to fetch
    /// one); one just within it is.
    #[test]
    fn an_index_past_the_longest_is_refused() {
        let within = (MAX_TIER_INDEX_LEN - 64 - 6) / 8;
        for (points, ok) in [(within, true), (within + 1, false)] {
            let idx = TierIndex {
                topic: "orders".into(),
                segment: 1,
                first_offset: 0,
                entries: points,
                data_len: points * 32,
                sealed_ms: 0,
                data_crc: 0,
                stride: 1,
                points: (0..points).map(|p| p * 32).collect(),
            };
            match idx.encode() {
                Ok(bytes) => {
                    assert!(ok, "{points} points encoded");
                    assert!(
                        bytes.len() as u64 <= MAX_TIER_INDEX_LEN,
                        "{} bytes",
                        bytes.len()
                    );
                }
                Err(e) => {
                    assert!(!ok, "{points} points: {e}");
                    assert!(matches!(e, FormatError::InvalidInput(_)), "{e}");
                }
            }
        }
    }

    #[test]
    fn round_trip_and_byte_ranges() {
        let data = frames(100, 10);
        let idx = TierIndex::build("orders", 3, 100, &data, 4).unwrap();
        assert_eq!((idx.entries, idx.end_offset()), (10, 110));
        assert_eq!(idx.points.len(), 3);
        let bytes = idx.encode().unwrap();
        assert_eq!(TierIndex::decode(&bytes).unwrap(), idx);
        // Entries 105..107 lie between points 1 (entry 104) and 2 (entry 108).
        let r = idx.byte_range(105..107).unwrap();
        assert_eq!(r, idx.points[1]..idx.points[2]);
        let got: Vec<u64> = FrameDecoder::new(&data[r.start as usize..r.end as usize], 0)
            .filter_map(|f| match f {
                Frame::Entry(e) => Some(e.offset),
                _ => None,
            })
            .collect();
        assert_eq!(got, vec![104, 105, 106, 107]);
        assert_eq!(idx.byte_range(108..500), Some(idx.points[2]..idx.data_len));
        assert_eq!(idx.byte_range(0..100), None);
        assert_eq!(idx.byte_range(110..120), None);
        assert_eq!(idx.byte_range(0..1000), Some(0..idx.data_len));
    }

    #[test]
    fn build_refuses_what_is_not_a_dense_run_of_frames() {
        let mut data = frames(0, 3);
        assert!(
            TierIndex::build("t", 0, 1, &data, 1).is_err(),
            "wrong first"
        );
        assert!(TierIndex::build("t", 0, 0, &[], 1).is_err(), "empty");
        assert!(TierIndex::build("t", 0, 0, &data, 0).is_err(), "stride 0");
        assert!(TierIndex::build("", 0, 0, &data, 1).is_err(), "topic");
        let mut gap = frames(0, 1);
        gap.extend_from_slice(&frames(2, 1));
        assert!(TierIndex::build("t", 0, 0, &gap, 1).is_err(), "gap");
        data.extend_from_slice(&[0; 24]);
        assert!(
            TierIndex::build("t", 0, 0, &data, 1).is_err(),
            "zeros after"
        );
        let mut torn = frames(0, 3);
        torn.truncate(torn.len() - 1);
        assert!(matches!(
            TierIndex::build("t", 0, 0, &torn, 1),
            Err(FormatError::Torn { .. })
        ));
        let mut flipped = frames(0, 3);
        flipped[30] ^= 1;
        assert!(matches!(
            TierIndex::build("t", 0, 0, &flipped, 1),
            Err(FormatError::Corrupt { .. })
        ));
    }

    #[test]
    fn every_flip_and_truncation_of_an_index_is_refused() {
        let idx = TierIndex::build("a/b c", 1, 7, &frames(7, 9), 2).unwrap();
        let bytes = idx.encode().unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(TierIndex::decode(&b).is_err(), "flip {i}:{bit}");
            }
            assert!(TierIndex::decode(&bytes[..i]).is_err(), "cut at {i}");
        }
    }

    #[test]
    fn object_names_are_keys_in_offset_order() {
        let (blk, idx) = tier_object_names("tier", "a/b.c", 42, 70);
        assert_eq!(
            blk,
            "tier/a=2Fb=2Ec/00000000000000000042-00000000000000000070.blk"
        );
        assert!(idx.ends_with(".idx"));
        assert_eq!(topic_key(".."), "=2E=2E");
        assert_eq!(topic_key("Ünï"), "=C3=9Cn=C3=AF");
        assert_ne!(topic_key("a=2F"), topic_key("a/"));
        let (a, _) = tier_object_names("d", "t", 9, 10);
        let (b, _) = tier_object_names("d", "t", 10, 11);
        assert!(a < b);
    }
}
