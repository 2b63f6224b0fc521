//! The batch object: one S3 object per group commit, and the checkpoint object a truncation
//! leaves ([`Checkpoint`]), encoded and validated here (no I/O).
//!
//! ```text
//! header (little-endian, CRC32C-protected)
//!   0   8  magic "WS3BATCH"
//!   8   2  version (1)
//!  10   2  reserved, zero
//!  12   4  header length in bytes, this trailer included
//!  16   8  writer epoch (grows by one at every writer open: fencing)
//!  24   8  batch sequence (the object name's number)
//!  32   8  writer id (random per open: tells our own retried PUT from another writer's)
//!  40   8  body length in bytes
//!  48   4  entry count
//!  52   4  topic count
//!  56   …  per topic: name length u16, name, first offset u64, entry count u32,
//!          section start u64 and length u64 (relative to the body)
//!  end-4 4 CRC32C of every header byte before it
//! body: per topic, in table order, its entries as walrus-block frames (each with its own
//!       CRC32C and its topic offset; not keyed: key 0, as sections are read from the table's
//!       positions, never searched); an atomic batch is a run of batch frames.
//! ```
//!
//! The decoder trusts no field before the CRC matches, bounds-checks every length against the
//! bytes it has, and never panics.

use std::io;
use std::ops::Range;

use walrus_block::checksum::crc32c;
// One past a section's last entry, and a checkpoint's end of a topic, stay at or below the
// frames' `MAX_OFFSET`: a writer or a reader counting on from an offset it decoded never
// overflows.
use walrus_block::{
    CorruptReason, Frame, FrameDecoder, FrameKind, MAX_OFFSET, MAX_TOPIC_NAME_LEN, encode_frame,
    frame_len, validate_topic_name,
};

/// The first bytes of every batch object.
pub const BATCH_MAGIC: [u8; 8] = *b"WS3BATCH";
/// The batch format version this build writes and reads.
pub const BATCH_VERSION: u16 = 1;
/// Length of the header's fixed part, before the topic table.
pub const FIXED_HEADER_LEN: usize = 56;
/// A ranged GET of this many bytes holds the header of every batch with a small topic table.
pub const HEADER_PROBE_LEN: u64 = 4096;
/// The most topics one batch may carry (bounds the header a reader must fetch).
pub const MAX_BATCH_TOPICS: usize = 65_536;
/// The longest header a batch can have: [`MAX_BATCH_TOPICS`] table rows of the longest topic
/// name. A longer length field is damage, refused before its bytes are fetched.
const MAX_HEADER_LEN: u64 =
    (FIXED_HEADER_LEN + MAX_BATCH_TOPICS * (2 + MAX_TOPIC_NAME_LEN + 8 + 4 + 8 + 8) + 4) as u64;

/// One topic's run of entries inside a batch object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The topic.
    pub topic: String,
    /// Offset of its first entry in this batch.
    pub first: u64,
    /// How many entries of the topic the batch holds.
    pub count: u32,
    /// Byte range of its frames within the object (absolute, header included).
    pub bytes: Range<u64>,
}

impl Section {
    /// The topic offsets this section holds.
    #[must_use]
    pub fn offsets(&self) -> Range<u64> {
        self.first..self.first + u64::from(self.count)
    }
}

/// A decoded, validated batch header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHeader {
    /// The epoch of the writer that wrote it.
    pub epoch: u64,
    /// Its sequence number (also in its object name).
    pub sequence: u64,
    /// The id of the writer's open.
    pub writer: u64,
    /// Total entries.
    pub entries: u32,
    /// Length of the whole object: header plus body.
    pub object_len: u64,
    /// The topic sections, in body order.
    pub sections: Vec<Section>,
}

/// Entries of one topic to encode: payloads and, per payload, its place in its atomic unit.
#[derive(Debug)]
pub struct TopicEntries<'a> {
    /// The topic.
    pub topic: &'a str,
    /// Offset of the first entry.
    pub first: u64,
    /// The entries in offset order.
    pub entries: Vec<(FrameKind, &'a [u8])>,
}

/// The identity of a batch: who wrote it, under which number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchId {
    /// Writer epoch.
    pub epoch: u64,
    /// Batch sequence.
    pub sequence: u64,
    /// Writer id.
    pub writer: u64,
}

fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Encodes one batch object.
///
/// # Errors
/// `InvalidInput` for a bad topic name, an entry over the frame limit, a topic with more than
/// `u32::MAX` entries in one batch, or more than [`MAX_BATCH_TOPICS`] topics.
pub fn encode_batch(id: BatchId, topics: &[TopicEntries<'_>]) -> io::Result<Vec<u8>> {
    if topics.len() > MAX_BATCH_TOPICS {
        return Err(invalid_input(format!(
            "a batch holds at most {MAX_BATCH_TOPICS} topics, not {}",
            topics.len()
        )));
    }
    let mut table_len = 0usize;
    let mut body_len = 0u64;
    let mut entries = 0u32;
    let mut section_lens = Vec::with_capacity(topics.len());
    for t in topics {
        validate_topic_name(t.topic).map_err(|e| invalid_input(e.to_string()))?;
        table_len += 2 + t.topic.len() + 8 + 4 + 8 + 8;
        let count = u32::try_from(t.entries.len())
            .map_err(|_| invalid_input(format!("topic {:?}: too many entries", t.topic)))?;
        if t.first
            .checked_add(u64::from(count))
            .is_none_or(|end| end > MAX_OFFSET)
        {
            return Err(invalid_input(format!(
                "topic {:?}: offsets past {MAX_OFFSET}",
                t.topic
            )));
        }
        entries = entries
            .checked_add(count)
            .ok_or_else(|| invalid_input("too many entries in one batch".into()))?;
        let len: u64 = t
            .entries
            .iter()
            .map(|(_, p)| frame_len(p.len()) as u64)
            .sum();
        section_lens.push(len);
        body_len += len;
    }
    let header_len = FIXED_HEADER_LEN + table_len + 4;
    let header_len_u32 = u32::try_from(header_len)
        .map_err(|_| invalid_input("batch topic table too large".into()))?;
    let total = usize::try_from(header_len as u64 + body_len)
        .map_err(|_| invalid_input("batch too large".into()))?;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&BATCH_MAGIC);
    out.extend_from_slice(&BATCH_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&header_len_u32.to_le_bytes());
    out.extend_from_slice(&id.epoch.to_le_bytes());
    out.extend_from_slice(&id.sequence.to_le_bytes());
    out.extend_from_slice(&id.writer.to_le_bytes());
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&entries.to_le_bytes());
    // Cannot truncate: checked against MAX_BATCH_TOPICS above.
    out.extend_from_slice(&(topics.len() as u32).to_le_bytes());
    let mut start = 0u64;
    for (t, len) in topics.iter().zip(section_lens) {
        // Cannot truncate: validate_topic_name bounds names to 255 bytes.
        out.extend_from_slice(&(t.topic.len() as u16).to_le_bytes());
        out.extend_from_slice(t.topic.as_bytes());
        out.extend_from_slice(&t.first.to_le_bytes());
        out.extend_from_slice(&(t.entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&start.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        start += len;
    }
    let crc = crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len(), header_len);
    for t in topics {
        for (i, (kind, payload)) in t.entries.iter().enumerate() {
            encode_frame(&mut out, t.first + i as u64, *kind, payload, 0)
                .map_err(|e| invalid_input(format!("topic {:?}: {e}", t.topic)))?;
        }
    }
    Ok(out)
}

/// What [`decode_header`] needs or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderProbe {
    /// The header, validated.
    Header(BatchHeader),
    /// The header is longer than the bytes given: fetch this many from the start and retry.
    NeedBytes(u64),
}

/// A corrupt-object error naming the object.
fn corrupt(object: &str, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("batch object {object}: {what}"),
    )
}

/// Little-endian field reader over a byte slice that fails instead of panicking.
struct Fields<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
}

/// Decodes the header at the start of `bytes` (a prefix of the object `object`, used in error
/// messages).
///
/// # Errors
/// `InvalidData` naming the object when the bytes are not a valid batch header.
pub fn decode_header(object: &str, bytes: &[u8]) -> io::Result<HeaderProbe> {
    let mut f = Fields { bytes, pos: 0 };
    let short = || corrupt(object, "shorter than a batch header");
    if f.array::<8>().ok_or_else(short)? != BATCH_MAGIC {
        return Err(corrupt(object, CorruptReason::BadMagic));
    }
    let version = f.u16().ok_or_else(short)?;
    if version != BATCH_VERSION {
        return Err(corrupt(
            object,
            format!("{} {version}", CorruptReason::UnsupportedVersion),
        ));
    }
    if f.u16().ok_or_else(short)? != 0 {
        return Err(corrupt(object, CorruptReason::ReservedBits));
    }
    let header_len = u64::from(f.u32().ok_or_else(short)?);
    if header_len < (FIXED_HEADER_LEN + 4) as u64 {
        return Err(corrupt(object, "header length below the minimum"));
    }
    if header_len > MAX_HEADER_LEN {
        return Err(corrupt(object, "header length past the maximum"));
    }
    if header_len > bytes.len() as u64 {
        return Ok(HeaderProbe::NeedBytes(header_len));
    }
    // In range: header_len <= bytes.len().
    let header_len = header_len as usize;
    let (body, crc_bytes) = bytes[..header_len].split_at(header_len - 4);
    let stored = u32::from_le_bytes(crc_bytes.try_into().map_err(|_| short())?);
    if crc32c(body) != stored {
        return Err(corrupt(object, CorruptReason::HeaderChecksum));
    }
    let mut f = Fields {
        bytes: body,
        pos: 16,
    };
    let bad = || corrupt(object, CorruptReason::BadLength);
    let epoch = f.u64().ok_or_else(bad)?;
    let sequence = f.u64().ok_or_else(bad)?;
    let writer = f.u64().ok_or_else(bad)?;
    let body_len = f.u64().ok_or_else(bad)?;
    let entries = f.u32().ok_or_else(bad)?;
    let topics = f.u32().ok_or_else(bad)? as usize;
    if topics > MAX_BATCH_TOPICS {
        return Err(bad());
    }
    let object_len = (header_len as u64).checked_add(body_len).ok_or_else(bad)?;
    let mut sections = Vec::with_capacity(topics.min(1024));
    let mut seen = std::collections::HashSet::with_capacity(topics.min(1024));
    let mut expect_start = 0u64;
    let mut total = 0u64;
    for _ in 0..topics {
        let name_len = usize::from(f.u16().ok_or_else(bad)?);
        let name = f.take(name_len).ok_or_else(bad)?;
        let topic = std::str::from_utf8(name)
            .map_err(|_| corrupt(object, CorruptReason::TopicNotUtf8))?
            .to_owned();
        validate_topic_name(&topic).map_err(|e| corrupt(object, e))?;
        let first = f.u64().ok_or_else(bad)?;
        let count = f.u32().ok_or_else(bad)?;
        let start = f.u64().ok_or_else(bad)?;
        let len = f.u64().ok_or_else(bad)?;
        let end = start.checked_add(len).ok_or_else(bad)?;
        if start != expect_start
            || end > body_len
            || first
                .checked_add(u64::from(count))
                .is_none_or(|e| e > MAX_OFFSET)
        {
            return Err(corrupt(
                object,
                format!("topic {topic:?}: section out of range"),
            ));
        }
        if (count == 0) != (len == 0) {
            return Err(corrupt(
                object,
                format!("topic {topic:?}: section length does not match its count"),
            ));
        }
        if !seen.insert(topic.clone()) {
            return Err(corrupt(object, format!("topic {topic:?} listed twice")));
        }
        expect_start = end;
        total += u64::from(count);
        sections.push(Section {
            topic,
            first,
            count,
            bytes: header_len as u64 + start..header_len as u64 + end,
        });
    }
    if f.pos != body.len() || expect_start != body_len || total != u64::from(entries) {
        return Err(corrupt(object, "topic table does not add up to the body"));
    }
    Ok(HeaderProbe::Header(BatchHeader {
        epoch,
        sequence,
        writer,
        entries,
        object_len,
        sections,
    }))
}

/// Decodes the frames of one section (`bytes` is exactly the section's byte range): every
/// frame intact, offsets dense from `section.first`, atomic units complete, nothing left over.
///
/// # Errors
/// `InvalidData` naming the object, the topic and the offset of the first bad entry.
pub fn decode_section(object: &str, section: &Section, bytes: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    let fail = |offset: u64, what: &dyn std::fmt::Display| {
        corrupt(
            object,
            format!("topic {:?} offset {offset}: {what}", section.topic),
        )
    };
    let Some(want) = section.bytes.end.checked_sub(section.bytes.start) else {
        return Err(fail(section.first, &"section ends before it starts"));
    };
    if bytes.len() as u64 != want {
        return Err(fail(
            section.first,
            &format!("section is {} bytes, expected {want}", bytes.len()),
        ));
    }
    let mut out = Vec::with_capacity((section.count as usize).min(1 << 16));
    let mut decoder = FrameDecoder::new(bytes, 0);
    let mut batch_left: Option<u16> = None;
    let mut next = section.first;
    while out.len() < section.count as usize {
        match decoder.next_frame() {
            Frame::Entry(e) => {
                if e.offset != next {
                    return Err(fail(next, &CorruptReason::Sequence));
                }
                // A unit starts exactly when the previous one is complete.
                let in_unit = batch_left.is_some_and(|left| left > 0);
                if e.kind.is_first() == in_unit {
                    return Err(fail(next, &CorruptReason::Sequence));
                }
                if let Some(left) = batch_left.filter(|l| *l > 0)
                    && e.kind.batch_left() != left - 1
                {
                    return Err(fail(next, &CorruptReason::Sequence));
                }
                batch_left = Some(e.kind.batch_left());
                out.push(e.payload.to_vec());
                next += 1;
            }
            Frame::End { .. } | Frame::Torn { .. } => {
                return Err(fail(next, &"section ends early"));
            }
            Frame::Corrupt { reason, .. } => return Err(fail(next, &reason)),
        }
    }
    if batch_left.is_some_and(|l| l > 0) {
        return Err(fail(next, &"atomic batch cut short"));
    }
    if decoder.position() != bytes.len() {
        return Err(fail(next, &"bytes after the last entry"));
    }
    Ok(out)
}

/// The object name of batch `sequence` under `prefix`: zero-padded so names sort by number.
#[must_use]
pub fn object_name(prefix: &str, sequence: u64) -> String {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        format!("{sequence:020}.batch")
    } else {
        format!("{prefix}/{sequence:020}.batch")
    }
}

/// The batch sequence in an object name made by [`object_name`], or `None` for other names.
#[must_use]
pub fn parse_object_name(name: &str) -> Option<u64> {
    parse_numbered(name, ".batch")
}

/// The first bytes of every checkpoint object.
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"WS3CHKPT";
/// The checkpoint format version this build writes and reads.
pub const CHECKPOINT_VERSION: u16 = 1;
/// Length of a checkpoint's fixed part, before its topic table.
const CHECKPOINT_FIXED_LEN: usize = 32;
/// The shortest checkpoint object: no topic.
pub const MIN_CHECKPOINT_LEN: u64 = CHECKPOINT_FIXED_LEN as u64 + 4;
/// The longest checkpoint object read: a million topics of the longest name. A longer object
/// under the checkpoint name is not one this crate wrote, refused before it is fetched.
pub const MAX_CHECKPOINT_LEN: u64 = MIN_CHECKPOINT_LEN + (1 << 20) * (2 + 255 + 8);

/// What a truncation left of the batches it deleted: the checkpoint object
/// `PREFIX/checkpoint/<start, 20 digits>.ckpt`, written before any of them is deleted.
///
/// ```text
///   0   8  magic "WS3CHKPT"
///   8   2  version (1)
///  10   2  reserved, zero
///  12   4  topic count
///  16   8  start: every batch below this sequence is gone (or going)
///  24   8  epoch: the highest writer epoch of the batches below start
///  32   …  per topic, by name: name length u16, name, end offset u64 (one past its last
///          entry in the batches below start)
///  end-4 4 CRC32C of every byte before it
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The first batch sequence kept.
    pub start: u64,
    /// The highest writer epoch of the batches below `start` (0: none).
    pub epoch: u64,
    /// Per topic, one past its last entry below `start`, sorted by topic.
    pub ends: Vec<(String, u64)>,
}

/// Encodes a checkpoint object.
///
/// # Errors
/// `InvalidInput` for a bad topic name, topics not sorted or repeated, or more than
/// `u32::MAX` of them.
pub fn encode_checkpoint(c: &Checkpoint) -> io::Result<Vec<u8>> {
    let count = u32::try_from(c.ends.len())
        .map_err(|_| invalid_input("a checkpoint of too many topics".into()))?;
    let mut out = Vec::with_capacity(CHECKPOINT_FIXED_LEN + c.ends.len() * 32 + 4);
    out.extend_from_slice(&CHECKPOINT_MAGIC);
    out.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&c.start.to_le_bytes());
    out.extend_from_slice(&c.epoch.to_le_bytes());
    let mut last: Option<&str> = None;
    for (topic, end) in &c.ends {
        validate_topic_name(topic).map_err(|e| invalid_input(e.to_string()))?;
        if *end > MAX_OFFSET {
            return Err(invalid_input(format!(
                "checkpoint end {end} of topic {topic:?} is past {MAX_OFFSET}"
            )));
        }
        if last.is_some_and(|l| l >= topic.as_str()) {
            return Err(invalid_input(format!(
                "checkpoint topics out of order at {topic:?}"
            )));
        }
        last = Some(topic);
        // Cannot truncate: validate_topic_name bounds names to 255 bytes.
        out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.extend_from_slice(&end.to_le_bytes());
    }
    let crc = crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes a whole checkpoint object (`object` names it in errors). The sequence in its name
/// must match `start`.
///
/// # Errors
/// `InvalidData` naming the object when the bytes are not a valid checkpoint of `start`.
pub fn decode_checkpoint(object: &str, start: u64, bytes: &[u8]) -> io::Result<Checkpoint> {
    let bad = |what: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("checkpoint object {object}: {what}"),
        )
    };
    let Some((body, crc_bytes)) = bytes.split_last_chunk::<4>() else {
        return Err(bad(&"shorter than a checkpoint"));
    };
    let mut f = Fields {
        bytes: body,
        pos: 0,
    };
    if f.array::<8>() != Some(CHECKPOINT_MAGIC) {
        return Err(bad(&CorruptReason::BadMagic));
    }
    if crc32c(body) != u32::from_le_bytes(*crc_bytes) {
        return Err(bad(&CorruptReason::HeaderChecksum));
    }
    let short = || bad(&CorruptReason::BadLength);
    let version = f.u16().ok_or_else(short)?;
    if version != CHECKPOINT_VERSION {
        return Err(bad(&format!(
            "{} {version}",
            CorruptReason::UnsupportedVersion
        )));
    }
    if f.u16().ok_or_else(short)? != 0 {
        return Err(bad(&CorruptReason::ReservedBits));
    }
    let count = f.u32().ok_or_else(short)?;
    let c_start = f.u64().ok_or_else(short)?;
    let epoch = f.u64().ok_or_else(short)?;
    if c_start != start {
        return Err(bad(&format!("says start {c_start}, its name {start}")));
    }
    // Never written (a writer numbers from them with +1): one past them would overflow.
    if start == u64::MAX || epoch == u64::MAX {
        return Err(bad(&format!(
            "start {start} or epoch {epoch} past what a writer numbers"
        )));
    }
    let mut ends: Vec<(String, u64)> = Vec::with_capacity((count as usize).min(1 << 16));
    for _ in 0..count {
        let len = usize::from(f.u16().ok_or_else(short)?);
        let name = f.take(len).ok_or_else(short)?;
        let topic = std::str::from_utf8(name)
            .map_err(|_| bad(&CorruptReason::TopicNotUtf8))?
            .to_owned();
        validate_topic_name(&topic).map_err(|e| bad(&e))?;
        let end = f.u64().ok_or_else(short)?;
        if end > MAX_OFFSET {
            return Err(bad(&format!(
                "topic {topic:?} ends at {end}, past {MAX_OFFSET}"
            )));
        }
        if ends.last().is_some_and(|(l, _)| *l >= topic) {
            return Err(bad(&format!("topic {topic:?} out of order")));
        }
        ends.push((topic, end));
    }
    if f.pos != body.len() {
        return Err(bad(&"bytes after the topic table"));
    }
    Ok(Checkpoint { start, epoch, ends })
}

/// The directory of checkpoint objects under `prefix`.
#[must_use]
pub fn checkpoint_dir(prefix: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        "checkpoint".to_owned()
    } else {
        format!("{prefix}/checkpoint")
    }
}

/// The object name of the checkpoint whose first kept batch is `start`.
#[must_use]
pub fn checkpoint_name(prefix: &str, start: u64) -> String {
    format!("{}/{start:020}.ckpt", checkpoint_dir(prefix))
}

/// The start in a name made by [`checkpoint_name`], or `None` for other names.
#[must_use]
pub fn parse_checkpoint_name(name: &str) -> Option<u64> {
    parse_numbered(name, ".ckpt")
}

/// The number of a name whose last part is 20 digits and `suffix`.
fn parse_numbered(name: &str, suffix: &str) -> Option<u64> {
    let file = name.rsplit('/').next()?;
    let digits = file.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            start: 42,
            epoch: 7,
            // By byte order: UTF-8's multi-byte characters after ASCII.
            ends: vec![
                ("a".into(), 10),
                ("z".into(), MAX_OFFSET),
                ("événements".into(), 0),
            ],
        }
    }

    #[test]
    fn a_checkpoint_round_trips_and_every_bit_flip_is_refused() {
        let c = checkpoint();
        let bytes = encode_checkpoint(&c).unwrap();
        assert_eq!(decode_checkpoint("x", 42, &bytes).unwrap(), c);
        assert_eq!(&bytes[..8], b"WS3CHKPT");
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let e = decode_checkpoint("x", 42, &b).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "bit {bit}");
        }
        for cut in 0..bytes.len() {
            assert!(
                decode_checkpoint("x", 42, &bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        // Another name's checkpoint.
        assert!(decode_checkpoint("x", 43, &bytes).is_err());
        // Numbers a writer would overflow continuing from.
        for (start, epoch) in [(u64::MAX, 1), (5, u64::MAX)] {
            let c = Checkpoint {
                start,
                epoch,
                ends: Vec::new(),
            };
            let bytes = encode_checkpoint(&c).unwrap();
            assert!(decode_checkpoint("x", start, &bytes).is_err());
        }
        let empty = Checkpoint {
            start: 0,
            epoch: 0,
            ends: Vec::new(),
        };
        let bytes = encode_checkpoint(&empty).unwrap();
        assert_eq!(decode_checkpoint("x", 0, &bytes).unwrap(), empty);
    }

    /// Replaces the first `from` (little-endian) in `bytes[..crc_at]` by `to` and puts the
    /// CRC32C of `bytes[..crc_at]` back at `crc_at`: bytes a writer never made, that pass.
    fn forge(bytes: &mut [u8], crc_at: usize, from: u64, to: u64) {
        let at = bytes[..crc_at]
            .windows(8)
            .position(|w| w == from.to_le_bytes())
            .unwrap();
        bytes[at..at + 8].copy_from_slice(&to.to_le_bytes());
        let crc = crc32c(&bytes[..crc_at]);
        bytes[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Offsets past [`MAX_OFFSET`] are refused by the encoders (`InvalidInput`) and, forged
    /// with a valid CRC, by the decoders (`InvalidData`): nothing counting on from a decoded
    /// offset overflows.
    #[test]
    fn offsets_past_the_last_one_are_refused_both_ways() {
        let mut c = checkpoint();
        c.ends[1].1 = MAX_OFFSET + 1;
        let e = encode_checkpoint(&c).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        let mut bytes = encode_checkpoint(&checkpoint()).unwrap();
        let crc_at = bytes.len() - 4;
        forge(&mut bytes, crc_at, MAX_OFFSET, MAX_OFFSET + 1);
        let e = decode_checkpoint("x", 42, &bytes).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");

        let one: Vec<(FrameKind, &[u8])> = vec![(FrameKind::single(), b"last")];
        let batch = |first| {
            encode_batch(
                id(),
                &[TopicEntries {
                    topic: "t",
                    first,
                    entries: one.clone(),
                }],
            )
        };
        let e = batch(MAX_OFFSET).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        let mut bytes = batch(MAX_OFFSET - 1).unwrap();
        assert_eq!(
            header(&bytes).sections[0].offsets(),
            MAX_OFFSET - 1..MAX_OFFSET
        );
        let crc_at = header(&bytes).sections[0].bytes.start as usize - 4;
        forge(&mut bytes, crc_at, MAX_OFFSET - 1, MAX_OFFSET);
        let e = decode_header("t", &bytes).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    /// Every single-byte change of a batch header or a checkpoint, with its CRC made valid
    /// again (bytes no writer made, that pass the checksum), decodes to an error or to values
    /// inside their bounds: never a panic.
    #[test]
    fn forged_headers_and_checkpoints_never_panic() {
        let batch = sample();
        let header_len = header(&batch).sections[0].bytes.start as usize;
        let checkpoint = encode_checkpoint(&checkpoint()).unwrap();
        for i in 0..header_len - 4 {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = batch.clone();
                b[i] ^= flip;
                let crc = crc32c(&b[..header_len - 4]);
                b[header_len - 4..header_len].copy_from_slice(&crc.to_le_bytes());
                if let Ok(HeaderProbe::Header(h)) = decode_header("t", &b) {
                    for s in &h.sections {
                        assert!(s.offsets().end <= MAX_OFFSET, "byte {i}");
                        assert!(s.bytes.start <= s.bytes.end && s.bytes.end <= h.object_len);
                        if let Some(body) = b.get(s.bytes.start as usize..s.bytes.end as usize) {
                            let _ = decode_section("t", s, body);
                        }
                    }
                }
            }
        }
        let n = checkpoint.len() - 4;
        for i in 0..n {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = checkpoint.clone();
                b[i] ^= flip;
                let crc = crc32c(&b[..n]);
                b[n..].copy_from_slice(&crc.to_le_bytes());
                if let Ok(c) = decode_checkpoint("x", 42, &b) {
                    assert!(c.ends.iter().all(|(_, e)| *e <= MAX_OFFSET), "byte {i}");
                }
            }
        }
    }

    #[test]
    fn checkpoint_topics_must_be_sorted_and_valid() {
        let mut c = checkpoint();
        c.ends.swap(0, 1);
        assert_eq!(
            encode_checkpoint(&c).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        c.ends = vec![("a".into(), 1), ("a".into(), 2)];
        assert!(encode_checkpoint(&c).is_err());
        c.ends = vec![(String::new(), 1)];
        assert!(encode_checkpoint(&c).is_err());
    }

    #[test]
    fn checkpoint_names() {
        assert_eq!(
            checkpoint_name("wal/", 5),
            "wal/checkpoint/00000000000000000005.ckpt"
        );
        assert_eq!(
            checkpoint_name("", 5),
            "checkpoint/00000000000000000005.ckpt"
        );
        assert_eq!(
            parse_checkpoint_name(&checkpoint_name("p", u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_checkpoint_name("p/checkpoint/5.ckpt"), None);
        assert_eq!(parse_object_name(&checkpoint_name("p", 5)), None);
    }

    fn id() -> BatchId {
        BatchId {
            epoch: 3,
            sequence: 7,
            writer: 0xABCD,
        }
    }

    fn sample() -> Vec<u8> {
        let a: Vec<(FrameKind, &[u8])> = vec![
            (FrameKind::single(), b"one"),
            (FrameKind::batch(0, 2).unwrap(), b"two"),
            (FrameKind::batch(1, 2).unwrap(), b""),
        ];
        let b: Vec<(FrameKind, &[u8])> = vec![(FrameKind::single(), b"x")];
        encode_batch(
            id(),
            &[
                TopicEntries {
                    topic: "a",
                    first: 10,
                    entries: a,
                },
                TopicEntries {
                    topic: "b",
                    first: 0,
                    entries: b,
                },
            ],
        )
        .unwrap()
    }

    fn header(bytes: &[u8]) -> BatchHeader {
        match decode_header("t", bytes).unwrap() {
            HeaderProbe::Header(h) => h,
            HeaderProbe::NeedBytes(n) => panic!("needs {n}"),
        }
    }

    #[test]
    fn a_batch_round_trips() {
        let bytes = sample();
        let h = header(&bytes);
        assert_eq!(
            (h.epoch, h.sequence, h.writer, h.entries),
            (3, 7, 0xABCD, 4)
        );
        assert_eq!(h.object_len, bytes.len() as u64);
        assert_eq!(h.sections.len(), 2);
        assert_eq!(h.sections[0].offsets(), 10..13);
        let s = &h.sections[0];
        let a = decode_section("t", s, &bytes[s.bytes.start as usize..s.bytes.end as usize]);
        assert_eq!(a.unwrap(), vec![b"one".to_vec(), b"two".to_vec(), vec![]]);
        let s = &h.sections[1];
        let b = decode_section("t", s, &bytes[s.bytes.start as usize..s.bytes.end as usize]);
        assert_eq!(b.unwrap(), vec![b"x".to_vec()]);
    }

    #[test]
    fn a_short_probe_asks_for_the_whole_header() {
        let bytes = sample();
        let h = header(&bytes);
        let header_len = h.sections[0].bytes.start;
        assert_eq!(
            decode_header("t", &bytes[..FIXED_HEADER_LEN]).unwrap(),
            HeaderProbe::NeedBytes(header_len)
        );
    }

    /// A damaged header length is refused before its bytes are fetched: one flipped bit
    /// must not make an open GET up to the whole object.
    #[test]
    fn a_header_length_past_the_maximum_is_refused_unfetched() {
        let bytes = sample();
        let header_len = header(&bytes).sections[0].bytes.start as u32;
        let at = (0..FIXED_HEADER_LEN - 4)
            .find(|&i| bytes[i..i + 4] == header_len.to_le_bytes())
            .unwrap();
        let with = |len: u64| {
            let mut b = bytes[..FIXED_HEADER_LEN].to_vec();
            b[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
            decode_header("t", &b)
        };
        assert_eq!(
            with(MAX_HEADER_LEN).unwrap(),
            HeaderProbe::NeedBytes(MAX_HEADER_LEN)
        );
        for len in [MAX_HEADER_LEN + 1, u64::from(u32::MAX)] {
            let e = with(len).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        }
    }

    #[test]
    fn every_flipped_byte_is_rejected_and_nothing_panics() {
        let bytes = sample();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                let Ok(HeaderProbe::Header(h)) = decode_header("t", &b) else {
                    continue; // rejected (or asks for more bytes than exist): fine
                };
                // The header survived only if the flip is in the body: a section must fail.
                let failed = h.sections.iter().any(|s| {
                    let range = s.bytes.start as usize..s.bytes.end as usize;
                    b.get(range)
                        .is_none_or(|r| decode_section("t", s, r).is_err())
                });
                assert!(failed, "flip of bit {bit:#x} at byte {i} went unnoticed");
            }
        }
    }

    #[test]
    fn truncations_are_rejected() {
        let bytes = sample();
        let h = header(&bytes);
        for cut in 0..bytes.len() {
            let b = &bytes[..cut];
            match decode_header("t", b) {
                Err(_) | Ok(HeaderProbe::NeedBytes(_)) => {}
                Ok(HeaderProbe::Header(_)) => {
                    let s = h.sections.last().unwrap();
                    let r = b.get(s.bytes.start as usize..s.bytes.end as usize);
                    assert!(r.is_none(), "cut at {cut} left a whole last section");
                }
            }
        }
    }

    #[test]
    fn names_sort_by_number_and_parse_back() {
        assert_eq!(object_name("wal/", 42), "wal/00000000000000000042.batch");
        assert_eq!(
            parse_object_name("wal/00000000000000000042.batch"),
            Some(42)
        );
        assert_eq!(parse_object_name("wal/42.batch"), None);
        assert_eq!(parse_object_name("wal/0000000000000000004x.batch"), None);
        assert!(object_name("p", 9) < object_name("p", 10));
    }

    #[test]
    fn bad_input_is_refused() {
        let err = encode_batch(
            id(),
            &[TopicEntries {
                topic: "",
                first: 0,
                entries: vec![],
            }],
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
