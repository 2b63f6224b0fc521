//! Entry frames: encoding, the decoder that walks them, and the sequence rules between them.
//!
//! A frame is a 24-byte header followed by the payload. The header carries the payload's CRC32C
//! and its own CRC32C over everything before it, so a damaged length can never send the decoder
//! off into the payload: the header is proved intact before any of its fields is trusted.

use rkyv::Archived;

use crate::archived::{FrameHeaderV1, access, body_crc, bytes_of};
use crate::checksum::crc32c;
use crate::error::{CorruptReason, FormatError};
use crate::limits::{MAX_BATCH_ENTRIES, MAX_ENTRY_LEN, MAX_OFFSET};

/// Encoded length of a frame header.
pub const FRAME_HEADER_LEN: usize = std::mem::size_of::<FrameHeaderV1>();
/// First byte of every frame header. Being non-zero, it makes every truncated header non-zero,
/// so a torn header can never pass for the all-zero "end of data" mark.
pub const FRAME_MARKER: u8 = 0x57; // 'W'

/// Flag bit: this frame starts an atomic unit (a single entry, or the first entry of a batch).
const FLAG_FIRST: u8 = 0x01;
/// Bytes of the header covered by the header CRC (all but the CRC itself).
const HEADER_BODY_LEN: usize = FRAME_HEADER_LEN - 4;

/// Where a frame sits in its atomic unit: a single entry is a unit of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameKind {
    first: bool,
    batch_left: u16,
}

impl FrameKind {
    /// A single entry: first and last of its unit.
    #[must_use]
    pub const fn single() -> Self {
        Self {
            first: true,
            batch_left: 0,
        }
    }

    /// Entry `index` (0-based) of an atomic batch of `count` entries.
    ///
    /// # Errors
    /// [`FormatError::InvalidInput`] unless `index < count <= MAX_BATCH_ENTRIES`.
    pub fn batch(index: usize, count: usize) -> Result<Self, FormatError> {
        if index >= count || count > MAX_BATCH_ENTRIES {
            return Err(FormatError::InvalidInput(format!(
                "batch position {index} of {count} is out of range (at most {MAX_BATCH_ENTRIES} entries)"
            )));
        }
        let batch_left = u16::try_from(count - 1 - index)
            .map_err(|_| FormatError::InvalidInput("batch too long".into()))?;
        Ok(Self {
            first: index == 0,
            batch_left,
        })
    }

    /// True when this frame starts its unit.
    #[must_use]
    pub const fn is_first(&self) -> bool {
        self.first
    }

    /// How many entries of the same unit follow this one (0 for the last).
    #[must_use]
    pub const fn batch_left(&self) -> u16 {
        self.batch_left
    }

    /// True when this frame completes its unit.
    #[must_use]
    pub const fn is_last(&self) -> bool {
        self.batch_left == 0
    }
}

/// A decoded, validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// The entry's offset in its topic.
    pub offset: u64,
    /// Its place in its atomic unit.
    pub kind: FrameKind,
    /// Payload length in bytes.
    pub len: u32,
    /// CRC32C of the payload.
    pub payload_crc: u32,
}

/// Length of a frame carrying `payload_len` bytes.
#[inline]
#[must_use]
pub const fn frame_len(payload_len: usize) -> usize {
    FRAME_HEADER_LEN + payload_len
}

/// Encodes the header of a frame for `payload` (checksums included).
///
/// # Errors
/// [`FormatError::InvalidInput`] when the payload is longer than [`MAX_ENTRY_LEN`], or the
/// offset is not below [`MAX_OFFSET`].
#[inline]
pub fn encode_frame_header(
    offset: u64,
    kind: FrameKind,
    payload: &[u8],
) -> Result<[u8; FRAME_HEADER_LEN], FormatError> {
    let len = checked_len(payload.len())?;
    if offset >= MAX_OFFSET {
        return Err(FormatError::InvalidInput(format!(
            "offset {offset}: the format holds none at or past {MAX_OFFSET}"
        )));
    }
    Ok(header_bytes(offset, kind, len, crc32c(payload)))
}

/// The bytes of a frame header (checksum included), unchecked.
#[inline]
fn header_bytes(
    offset: u64,
    kind: FrameKind,
    len: u32,
    payload_crc: u32,
) -> [u8; FRAME_HEADER_LEN] {
    let mut h = FrameHeaderV1 {
        marker: FRAME_MARKER,
        flags: if kind.first { FLAG_FIRST } else { 0 },
        batch_left: Archived::<u16>::from_native(kind.batch_left),
        len: Archived::<u32>::from_native(len),
        offset: Archived::<u64>::from_native(offset),
        payload_crc: Archived::<u32>::from_native(payload_crc),
        header_crc: Archived::<u32>::from_native(0),
    };
    h.header_crc = Archived::<u32>::from_native(body_crc(&h));
    let mut out = [0u8; FRAME_HEADER_LEN];
    out.copy_from_slice(bytes_of(&h));
    out
}

/// Appends a whole frame (header and payload) to `out`.
///
/// # Errors
/// [`FormatError::InvalidInput`] when the payload is longer than [`MAX_ENTRY_LEN`]; `out` is
/// then unchanged.
#[inline]
pub fn encode_frame(
    out: &mut Vec<u8>,
    offset: u64,
    kind: FrameKind,
    payload: &[u8],
) -> Result<(), FormatError> {
    let header = encode_frame_header(offset, kind, payload)?;
    out.reserve(frame_len(payload.len()));
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    Ok(())
}

/// Writes a whole frame at the start of `dst` and returns its length.
///
/// # Errors
/// [`FormatError::InvalidInput`] when the payload is too long or `dst` too short; `dst` is then
/// unchanged.
#[inline]
pub fn write_frame(
    dst: &mut [u8],
    offset: u64,
    kind: FrameKind,
    payload: &[u8],
) -> Result<usize, FormatError> {
    let len = frame_len(payload.len());
    let available = dst.len();
    let Some((h, rest)) = dst
        .get_mut(..len)
        .and_then(|d| d.split_at_mut_checked(FRAME_HEADER_LEN))
    else {
        return Err(FormatError::InvalidInput(format!(
            "a {len}-byte frame does not fit in {available} bytes"
        )));
    };
    h.copy_from_slice(&encode_frame_header(offset, kind, payload)?);
    rest.copy_from_slice(payload);
    Ok(len)
}

fn checked_len(len: usize) -> Result<u32, FormatError> {
    if len > MAX_ENTRY_LEN {
        return Err(FormatError::InvalidInput(format!(
            "entry of {len} bytes exceeds the limit of {MAX_ENTRY_LEN} bytes"
        )));
    }
    u32::try_from(len).map_err(|_| FormatError::InvalidInput(format!("entry of {len} bytes")))
}

/// A valid entry found by the decoder; the payload borrows from the decoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// Byte position of the frame within the decoded slice.
    pub pos: usize,
    /// The entry's offset in its topic.
    pub offset: u64,
    /// Its place in its atomic unit.
    pub kind: FrameKind,
    /// The payload (checksum verified).
    pub payload: &'a [u8],
}

impl EntryRef<'_> {
    /// Byte position just past this frame: where the next frame starts.
    #[must_use]
    pub fn end(&self) -> usize {
        self.pos + frame_len(self.payload.len())
    }
}

/// What the decoder found at its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A valid entry.
    Entry(EntryRef<'a>),
    /// No more entries: the bytes from `at` are zero (or the slice ends exactly at a frame
    /// boundary).
    End {
        /// Where the data ends.
        at: usize,
    },
    /// The slice ends inside the frame starting at `at`: the write of that frame was cut short.
    Torn {
        /// Start of the incomplete frame.
        at: usize,
    },
    /// The frame at `at` fails validation.
    Corrupt {
        /// Start of the rejected frame.
        at: usize,
        /// What was wrong with it.
        reason: CorruptReason,
    },
}

/// Walks the frames in a byte slice, validating each one. Never panics, never allocates.
///
/// After the first non-[`Frame::Entry`] result the decoder is finished: further calls repeat
/// that result, and the [`Iterator`] implementation yields it once and then `None`.
#[derive(Debug, Clone)]
pub struct FrameDecoder<'a> {
    buf: &'a [u8],
    pos: usize,
    finished: Option<Frame<'a>>,
    reported: bool,
}

impl<'a> FrameDecoder<'a> {
    /// A decoder for the frames at the start of `buf`.
    #[must_use]
    pub fn new(buf: &'a [u8]) -> Self {
        Self::at(buf, 0)
    }

    /// A decoder for the frames in `buf` starting at byte `pos`.
    #[must_use]
    pub fn at(buf: &'a [u8], pos: usize) -> Self {
        Self {
            buf,
            pos,
            finished: None,
            reported: false,
        }
    }

    /// Byte position of the next frame to decode.
    #[must_use]
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Decodes the frame at the current position and advances past it if it is an entry.
    pub fn next_frame(&mut self) -> Frame<'a> {
        if let Some(done) = self.finished {
            return done;
        }
        let frame = decode_at(self.buf, self.pos);
        match frame {
            Frame::Entry(e) => self.pos = e.end(),
            other => self.finished = Some(other),
        }
        frame
    }
}

impl<'a> Iterator for FrameDecoder<'a> {
    type Item = Frame<'a>;

    fn next(&mut self) -> Option<Frame<'a>> {
        if self.reported {
            return None;
        }
        let frame = self.next_frame();
        if !matches!(frame, Frame::Entry(_)) {
            self.reported = true;
        }
        Some(frame)
    }
}

/// The first valid entry frame at or after byte `from` of `buf`, found by trying every byte
/// position: how a reader resynchronises after damage, when the damaged frame's header (and so
/// its length) cannot be trusted. A frame is only accepted with a valid header checksum *and*
/// a valid payload checksum, so random bytes pass for a frame with odds of about 2^-64.
///
/// The payload checksums computed are bounded by 16 times the bytes searched:
/// an entry whose data holds valid frame headers, one every few bytes, each claiming a long
/// payload, would otherwise cost time quadratic in its length (hours for a large entry, at
/// every open). Past the bound, nothing more is found (the rest counts as damaged).
#[must_use]
pub fn resync(buf: &[u8], from: usize) -> Option<EntryRef<'_>> {
    let mut budget = resync_budget(buf.len().saturating_sub(from));
    resync_within(buf, from, &mut budget)
}

/// The payload bytes [`resync`] checksums at most in searching `len` bytes; shared by the
/// resyncs of one buffer through [`resync_within`].
#[must_use]
pub fn resync_budget(len: usize) -> usize {
    len.saturating_mul(RESYNC_WORK).saturating_add(1 << 20)
}

/// [`resync`], drawing on `budget` (see [`resync_budget`]) rather than a budget of its own:
/// a reader that resynchronises again and again in one buffer (damage, then entry data that
/// holds a valid frame, then damage again…) would otherwise spend a fresh budget each time,
/// quadratic in the buffer's length. Nothing is found once the budget is spent.
#[must_use]
pub fn resync_within<'a>(buf: &'a [u8], from: usize, budget: &mut usize) -> Option<EntryRef<'a>> {
    let last = buf.len().checked_sub(FRAME_HEADER_LEN)?;
    let mut pos = from;
    while pos <= last {
        // Cheap filter first: a frame starts with its marker byte.
        let next = buf
            .get(pos..=last)?
            .iter()
            .position(|&b| b == FRAME_MARKER)?;
        pos += next;
        if let Some(Ok(Some(h))) = buf.get(pos..pos + FRAME_HEADER_LEN).map(decode_header) {
            *budget = budget.checked_sub(h.len as usize)?;
            if let Frame::Entry(e) = decode_at(buf, pos) {
                return Some(e);
            }
        }
        pos += 1;
    }
    None
}

/// Payload bytes [`resync`] may checksum per byte it searches.
const RESYNC_WORK: usize = 16;

/// Decodes the single frame starting at `pos` in `buf`.
fn decode_at(buf: &[u8], pos: usize) -> Frame<'_> {
    let Some(rest) = buf.get(pos..) else {
        // A position past the end can only come from a caller; there is no data there.
        return Frame::End { at: pos };
    };
    let Some(raw) = rest.get(..FRAME_HEADER_LEN) else {
        return if crate::is_zeroed(rest) {
            Frame::End { at: pos }
        } else {
            Frame::Torn { at: pos }
        };
    };
    let corrupt = |reason| Frame::Corrupt { at: pos, reason };
    let header = match decode_header(raw) {
        Ok(Some(h)) => h,
        Ok(None) => return Frame::End { at: pos },
        Err(reason) => return corrupt(reason),
    };
    let len = header.len as usize;
    let Some(payload) = rest.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
        return Frame::Torn { at: pos };
    };
    if crc32c(payload) != header.payload_crc {
        return corrupt(CorruptReason::PayloadChecksum);
    }
    Frame::Entry(EntryRef {
        pos,
        offset: header.offset,
        kind: header.kind,
        payload,
    })
}

impl FrameHeader {
    /// Decodes and validates exactly [`FRAME_HEADER_LEN`] bytes of frame header.
    ///
    /// Returns `Ok(None)` for an all-zero header (end of data).
    ///
    /// # Errors
    /// The [`CorruptReason`] of the first check that fails.
    pub fn decode(raw: &[u8]) -> Result<Option<Self>, CorruptReason> {
        decode_header(raw)
    }
}

#[inline]
fn decode_header(raw: &[u8]) -> Result<Option<FrameHeader>, CorruptReason> {
    if crate::is_zeroed(raw) {
        return Ok(None);
    }
    let h = access::<FrameHeaderV1>(raw).ok_or(CorruptReason::Malformed)?;
    let body = raw.get(..HEADER_BODY_LEN).ok_or(CorruptReason::Malformed)?;
    if crc32c(body) != h.header_crc.to_native() {
        return Err(CorruptReason::HeaderChecksum);
    }
    if h.marker != FRAME_MARKER {
        return Err(CorruptReason::BadMagic);
    }
    if h.flags & !FLAG_FIRST != 0 {
        return Err(CorruptReason::ReservedBits);
    }
    let batch_left = h.batch_left.to_native();
    let len = h.len.to_native();
    if usize::from(batch_left) >= MAX_BATCH_ENTRIES || len as usize > MAX_ENTRY_LEN {
        return Err(CorruptReason::BadLength);
    }
    if h.offset.to_native() >= MAX_OFFSET {
        return Err(CorruptReason::Sequence);
    }
    Ok(Some(FrameHeader {
        offset: h.offset.to_native(),
        kind: FrameKind {
            first: h.flags & FLAG_FIRST != 0,
            batch_left,
        },
        len,
        payload_crc: h.payload_crc.to_native(),
    }))
}

/// The rules that link consecutive entries of one topic: offsets go up by one, and an atomic
/// unit is a first frame followed by exactly `batch_left` continuation frames.
///
/// One checker follows a whole topic chain, across blocks (a batch may span blocks). Entries
/// of a unit must not be handed to readers until the unit is complete:
/// [`complete_end`](Self::complete_end) says how far that is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceCheck {
    next_offset: u64,
    /// Continuation frames still expected in the open unit (0 = at a unit boundary).
    open_left: u16,
    committed: u64,
    /// The next frame may continue a unit that began before the checker started.
    resuming: bool,
}

impl SequenceCheck {
    /// A checker expecting the first entry at `first_offset`, at a unit boundary.
    #[must_use]
    pub const fn new(first_offset: u64) -> Self {
        Self {
            next_offset: first_offset,
            open_left: 0,
            committed: first_offset,
            resuming: false,
        }
    }

    /// A checker starting at `first_offset` in the middle of a chain, where the preceding
    /// entries were not checked (e.g. already consumed): the first entry may be a continuation
    /// of a unit that began earlier. Such a unit counts as committed once its last frame is seen.
    #[must_use]
    pub const fn resume(first_offset: u64) -> Self {
        Self {
            next_offset: first_offset,
            open_left: 0,
            committed: first_offset,
            resuming: true,
        }
    }

    /// Checks the next entry; on success returns true when it completes an atomic unit.
    ///
    /// # Errors
    /// [`CorruptReason::Sequence`] when the offset or batch position does not follow; the checker
    /// is then unchanged.
    pub fn check(&mut self, offset: u64, kind: FrameKind) -> Result<bool, CorruptReason> {
        if offset != self.next_offset {
            return Err(CorruptReason::Sequence);
        }
        let follows = if self.resuming {
            true
        } else if self.open_left == 0 {
            kind.first
        } else {
            !kind.first && kind.batch_left == self.open_left - 1
        };
        if !follows {
            return Err(CorruptReason::Sequence);
        }
        self.resuming = false;
        self.next_offset = offset.checked_add(1).ok_or(CorruptReason::Sequence)?;
        self.open_left = kind.batch_left;
        if kind.is_last() {
            self.committed = self.next_offset;
        }
        Ok(kind.is_last())
    }

    /// The offset the next entry must have.
    #[must_use]
    pub const fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// One past the last entry of the last complete unit: entries below it may be read.
    #[must_use]
    pub const fn complete_end(&self) -> u64 {
        self.committed
    }

    /// True while a batch has started and not ended.
    #[must_use]
    pub const fn in_unit(&self) -> bool {
        self.open_left != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data tiled with valid frame headers, each claiming a payload to the end of the buffer
    /// (with a wrong checksum), costs a resync a bounded amount of checksumming, not one
    /// payload per header (quadratic: minutes for this MiB, hours for a large entry); a real
    /// frame after such data within the bound is still found.
    #[test]
    fn resync_work_is_bounded_on_crafted_data() {
        let n = 1 << 20;
        let mut buf = vec![0u8; n];
        let mut p = 0;
        while p + FRAME_HEADER_LEN <= n {
            let len = (n - p - FRAME_HEADER_LEN) as u32;
            buf[p..p + FRAME_HEADER_LEN].copy_from_slice(&header_bytes(
                0,
                FrameKind::single(),
                len,
                0xdead_beef,
            ));
            p += FRAME_HEADER_LEN;
        }
        let started = std::time::Instant::now();
        assert!(resync(&buf, 1).is_none());
        let took = started.elapsed();
        assert!(
            took < std::time::Duration::from_secs(10),
            "resync took {took:?}"
        );
        // A real frame right after a few crafted headers is found.
        let mut real = buf[..FRAME_HEADER_LEN * 4].to_vec();
        for h in real.chunks_mut(FRAME_HEADER_LEN) {
            h.copy_from_slice(&header_bytes(0, FrameKind::single(), 8, 0xdead_beef));
        }
        let at = real.len();
        encode_frame(&mut real, 7, FrameKind::single(), b"payload").unwrap();
        let e = resync(&real, 1).unwrap();
        assert_eq!((e.pos, e.offset, e.payload), (at, 7, &b"payload"[..]));
    }

    /// Resyncs again and again through one buffer (a valid frame, then crafted headers each
    /// claiming a payload to the end, then a valid frame…) share one budget: the whole walk is
    /// bounded (here it ends at the first crafted run), where a budget per resync makes it
    /// quadratic (for these 4 MiB, some 300 GB of checksums: minutes).
    #[test]
    fn repeated_resyncs_in_one_buffer_share_one_budget() {
        let n = 4 << 20;
        let mut buf = Vec::with_capacity(n);
        while buf.len() + 20 * FRAME_HEADER_LEN + 64 < n {
            encode_frame(&mut buf, 0, FrameKind::single(), b"valid").unwrap();
            for _ in 0..16 {
                let len = (n - buf.len() - FRAME_HEADER_LEN) as u32;
                buf.extend_from_slice(&header_bytes(0, FrameKind::single(), len, 0xdead_beef));
            }
        }
        buf.resize(n, 0);
        let started = std::time::Instant::now();
        let mut budget = resync_budget(n);
        let (mut from, mut found) = (1, 0);
        while let Some(e) = resync_within(&buf, from, &mut budget) {
            found += 1;
            from = e.end() + 1;
        }
        let took = started.elapsed();
        assert!(found > 0);
        assert!(
            took < std::time::Duration::from_secs(10),
            "{found} resyncs took {took:?}"
        );
    }

    fn frames(entries: &[(u64, FrameKind, &[u8])]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (off, kind, p) in entries {
            encode_frame(&mut buf, *off, *kind, p).unwrap();
        }
        buf
    }

    #[test]
    fn header_is_24_bytes() {
        assert_eq!(FRAME_HEADER_LEN, 24);
    }

    /// An offset past what the format holds is refused when encoding, and is damage when a
    /// frame with valid checksums names it (recovery computes one past each offset).
    #[test]
    fn offsets_past_the_limit_are_refused_and_read_as_damage() {
        assert!(matches!(
            encode_frame_header(MAX_OFFSET, FrameKind::single(), b"x"),
            Err(FormatError::InvalidInput(_))
        ));
        let raw = header_bytes(u64::MAX, FrameKind::single(), 1, crc32c(b"x"));
        assert_eq!(FrameHeader::decode(&raw), Err(CorruptReason::Sequence));
        let raw = header_bytes(MAX_OFFSET - 1, FrameKind::single(), 1, crc32c(b"x"));
        assert_eq!(
            FrameHeader::decode(&raw).unwrap().unwrap().offset,
            MAX_OFFSET - 1
        );
    }

    #[test]
    fn decode_entries_then_end() {
        let mut buf = frames(&[
            (5, FrameKind::single(), b"abc"),
            (6, FrameKind::single(), b""),
        ]);
        let mut d = FrameDecoder::new(&buf);
        let Frame::Entry(a) = d.next_frame() else {
            panic!()
        };
        assert_eq!((a.pos, a.offset, a.payload), (0, 5, &b"abc"[..]));
        let Frame::Entry(b) = d.next_frame() else {
            panic!()
        };
        assert_eq!((b.pos, b.offset, b.payload), (27, 6, &b""[..]));
        assert_eq!(d.next_frame(), Frame::End { at: 51 });
        assert_eq!(d.next_frame(), Frame::End { at: 51 });
        buf.extend_from_slice(&[0; 10]);
        assert_eq!(FrameDecoder::new(&buf).count(), 3);
        assert_eq!(
            FrameDecoder::at(&buf, 10_000).next_frame(),
            Frame::End { at: 10_000 }
        );
    }

    #[test]
    fn oversized_entry_is_refused_and_changes_nothing() {
        // Use a fake length through the public checker rather than allocating 1 GiB.
        assert!(checked_len(MAX_ENTRY_LEN + 1).is_err());
        assert!(checked_len(MAX_ENTRY_LEN).is_ok());
        let mut small = [0u8; 10];
        assert!(write_frame(&mut small, 0, FrameKind::single(), b"abc").is_err());
        assert_eq!(small, [0u8; 10]);
    }

    #[test]
    fn write_frame_matches_encode_frame() {
        let mut dst = [0u8; 64];
        let n = write_frame(&mut dst, 9, FrameKind::single(), b"payload").unwrap();
        assert_eq!(
            &dst[..n],
            &frames(&[(9, FrameKind::single(), b"payload")])[..]
        );
    }

    #[test]
    fn batch_kinds() {
        assert!(FrameKind::batch(0, 0).is_err());
        assert!(FrameKind::batch(3, 3).is_err());
        assert!(FrameKind::batch(0, MAX_BATCH_ENTRIES + 1).is_err());
        let k = FrameKind::batch(0, MAX_BATCH_ENTRIES).unwrap();
        assert!(k.is_first() && k.batch_left() as usize == MAX_BATCH_ENTRIES - 1);
        assert_eq!(FrameKind::batch(0, 1).unwrap(), FrameKind::single());
    }

    #[test]
    fn sequence_rules() {
        let mut s = SequenceCheck::new(10);
        assert_eq!(s.check(10, FrameKind::single()), Ok(true));
        assert_eq!(
            s.check(12, FrameKind::single()),
            Err(CorruptReason::Sequence)
        );
        assert_eq!(
            s.check(11, FrameKind::batch(1, 3).unwrap()),
            Err(CorruptReason::Sequence)
        );
        assert_eq!(s.check(11, FrameKind::batch(0, 3).unwrap()), Ok(false));
        assert!(s.in_unit());
        assert_eq!(s.complete_end(), 11);
        assert_eq!(
            s.check(12, FrameKind::single()),
            Err(CorruptReason::Sequence)
        );
        assert_eq!(
            s.check(12, FrameKind::batch(2, 3).unwrap()),
            Err(CorruptReason::Sequence)
        );
        assert_eq!(s.check(12, FrameKind::batch(1, 3).unwrap()), Ok(false));
        assert_eq!(s.check(13, FrameKind::batch(2, 3).unwrap()), Ok(true));
        assert_eq!(
            (s.complete_end(), s.next_offset(), s.in_unit()),
            (14, 14, false)
        );
    }

    #[test]
    fn resume_accepts_a_leading_continuation_once() {
        let mut s = SequenceCheck::resume(7);
        assert_eq!(s.check(7, FrameKind::batch(2, 4).unwrap()), Ok(false));
        assert_eq!((s.complete_end(), s.in_unit()), (7, true));
        assert_eq!(s.check(8, FrameKind::batch(3, 4).unwrap()), Ok(true));
        assert_eq!(s.complete_end(), 9);
        assert_eq!(
            s.check(9, FrameKind::batch(1, 2).unwrap()),
            Err(CorruptReason::Sequence)
        );
    }
}
