//! Entry frames: encoding, the decoder that walks them, and the sequence rules between them.
//!
//! A frame is a 24-byte header followed by the payload. The header carries the payload's CRC32C
//! and its own CRC32C over everything before it, so a damaged length can never send the decoder
//! off into the payload: the header is proved intact before any of its fields is trusted.
//!
//! Format v4 **keys** the header CRC: it continues from a key instead of 0 (the key of the
//! segment a block lives in; 0 for frames of format v3 and earlier, and for the S3 WAL's and
//! the remote tier's objects, which are read by position, never by a search). After damage a
//! reader searches for the next frame at every byte (see [`resync`]); entry data, which users
//! choose, can hold a whole frame of its own topic at its own offset, and under a plain CRC it
//! would be taken for the entry it sits in. Every function that encodes or decodes a frame takes
//! the key.

use rkyv::Archived;

use crate::archived::{FrameHeaderV1, access, bytes_of, keyed_body_crc};
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

/// Encodes the header of a frame for `payload` (checksums included, the header's seeded with
/// `key`).
///
/// # Errors
/// [`FormatError::InvalidInput`] when the payload is longer than [`MAX_ENTRY_LEN`], or the
/// offset is not below [`MAX_OFFSET`].
#[inline]
pub fn encode_frame_header(
    offset: u64,
    kind: FrameKind,
    payload: &[u8],
    key: u32,
) -> Result<[u8; FRAME_HEADER_LEN], FormatError> {
    FrameHeader::for_payload(offset, kind, payload)?.encode(key)
}

/// The bytes of a frame header (checksum included), unchecked.
#[inline]
fn header_bytes(
    offset: u64,
    kind: FrameKind,
    len: u32,
    payload_crc: u32,
    key: u32,
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
    h.header_crc = Archived::<u32>::from_native(keyed_body_crc(&h, key));
    let mut out = [0u8; FRAME_HEADER_LEN];
    out.copy_from_slice(bytes_of(&h));
    out
}

/// Appends a whole frame (header and payload, its header CRC seeded with `key`) to `out`.
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
    key: u32,
) -> Result<(), FormatError> {
    let header = encode_frame_header(offset, kind, payload, key)?;
    out.reserve(frame_len(payload.len()));
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    Ok(())
}

/// Writes a whole frame (its header CRC seeded with `key`) at the start of `dst` and returns
/// its length.
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
    key: u32,
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
    h.copy_from_slice(&encode_frame_header(offset, kind, payload, key)?);
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
    key: u32,
    finished: Option<Frame<'a>>,
    reported: bool,
}

impl<'a> FrameDecoder<'a> {
    /// A decoder for the frames at the start of `buf`, keyed with `key`.
    #[must_use]
    pub fn new(buf: &'a [u8], key: u32) -> Self {
        Self::at(buf, 0, key)
    }

    /// A decoder for the frames in `buf` starting at byte `pos`, keyed with `key`.
    #[must_use]
    pub fn at(buf: &'a [u8], pos: usize, key: u32) -> Self {
        Self {
            buf,
            pos,
            key,
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
        let frame = decode_at(self.buf, self.pos, self.key);
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

/// The first valid entry frame keyed with `key` at or after byte `from` of `buf`, found by
/// trying every byte position: how a reader resynchronises after damage, when the damaged
/// frame's header (and so its length) cannot be trusted. A frame is only accepted with a valid
/// header checksum *and* a valid payload checksum, so random bytes pass for a frame with odds of
/// about 2^-64; a frame that entry data holds, encoded by a writer who does not know `key`,
/// with odds of 2^-32.
///
/// The payload checksums computed are bounded by 16 times the bytes searched:
/// an entry whose data holds valid frame headers, one every few bytes, each claiming a long
/// payload, would otherwise cost time quadratic in its length (hours for a large entry, at
/// every open). Past the bound, nothing more is found (the rest counts as damaged).
#[must_use]
pub fn resync(buf: &[u8], from: usize, key: u32) -> Option<EntryRef<'_>> {
    let mut budget = resync_budget(buf.len().saturating_sub(from));
    resync_within(buf, from, &mut budget, key)
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
pub fn resync_within<'a>(
    buf: &'a [u8],
    from: usize,
    budget: &mut usize,
    key: u32,
) -> Option<EntryRef<'a>> {
    let last = buf.len().checked_sub(FRAME_HEADER_LEN)?;
    let mut pos = from;
    while pos <= last {
        // Cheap filter first: a frame starts with its marker byte.
        let next = buf
            .get(pos..=last)?
            .iter()
            .position(|&b| b == FRAME_MARKER)?;
        pos += next;
        if let Some(Ok(Some(h))) = buf
            .get(pos..pos + FRAME_HEADER_LEN)
            .map(|raw| decode_header(raw, key))
        {
            *budget = budget.checked_sub(h.len as usize)?;
            if let Frame::Entry(e) = decode_at(buf, pos, key) {
                return Some(e);
            }
        }
        pos += 1;
    }
    None
}

/// Payload bytes [`resync`] may checksum per byte it searches.
const RESYNC_WORK: usize = 16;

/// Decodes the single frame starting at `pos` in `buf`, keyed with `key`.
fn decode_at(buf: &[u8], pos: usize, key: u32) -> Frame<'_> {
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
    let header = match decode_header(raw, key) {
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
    /// The header of a frame for `payload` at `offset`: its length and CRC32C, checked against
    /// the format's limits. (Computing the payload's CRC is the costly part of encoding; the
    /// key can be chosen afterwards, with [`encode`](Self::encode).)
    ///
    /// # Errors
    /// [`FormatError::InvalidInput`] when the payload is longer than [`MAX_ENTRY_LEN`], or the
    /// offset is not below [`MAX_OFFSET`].
    pub fn for_payload(offset: u64, kind: FrameKind, payload: &[u8]) -> Result<Self, FormatError> {
        let len = checked_len(payload.len())?;
        if offset >= MAX_OFFSET {
            return Err(FormatError::InvalidInput(format!(
                "offset {offset}: the format holds none at or past {MAX_OFFSET}"
            )));
        }
        Ok(Self {
            offset,
            kind,
            len,
            payload_crc: crc32c(payload),
        })
    }

    /// The header's bytes, its CRC seeded with `key`.
    ///
    /// # Errors
    /// [`FormatError::InvalidInput`] for fields the decoder would refuse: an offset not below
    /// [`MAX_OFFSET`], a length over [`MAX_ENTRY_LEN`], a `batch_left` of
    /// [`MAX_BATCH_ENTRIES`] or more.
    pub fn encode(&self, key: u32) -> Result<[u8; FRAME_HEADER_LEN], FormatError> {
        if self.offset >= MAX_OFFSET
            || self.len as usize > MAX_ENTRY_LEN
            || usize::from(self.kind.batch_left) >= MAX_BATCH_ENTRIES
        {
            return Err(FormatError::InvalidInput(format!(
                "frame header {self:?}: outside the format's limits"
            )));
        }
        Ok(header_bytes(
            self.offset,
            self.kind,
            self.len,
            self.payload_crc,
            key,
        ))
    }

    /// Decodes and validates exactly [`FRAME_HEADER_LEN`] bytes of frame header, keyed with
    /// `key`: a header checksummed under any other key is corrupt.
    ///
    /// Returns `Ok(None)` for an all-zero header (end of data).
    ///
    /// # Errors
    /// The [`CorruptReason`] of the first check that fails.
    pub fn decode(raw: &[u8], key: u32) -> Result<Option<Self>, CorruptReason> {
        decode_header(raw, key)
    }
}

/// Re-checksums the headers of the frames that fill `data` from key `from` to key `to`, in
/// place (payloads and their CRCs are left as they are). How a block's frames leave their
/// segment for an object read by position (see [`crate::tier`]): keyed with the segment's key
/// on disk, with 0 there.
///
/// # Errors
/// [`FormatError::Corrupt`] or [`FormatError::Torn`] (positions within `data`) for the first
/// header that does not validate under `from`, or a frame that does not end inside `data`;
/// `data` may then be partly re-checksummed.
pub fn rekey_frames(data: &mut [u8], from: u32, to: u32) -> Result<(), FormatError> {
    let mut pos = 0;
    while pos < data.len() {
        let raw = data
            .get(pos..pos + FRAME_HEADER_LEN)
            .ok_or(FormatError::Torn { at: pos })?;
        let header = match decode_header(raw, from) {
            Ok(Some(h)) => h,
            Ok(None) => {
                return Err(FormatError::Corrupt {
                    at: pos,
                    reason: CorruptReason::BadLength,
                });
            }
            Err(reason) => return Err(FormatError::Corrupt { at: pos, reason }),
        };
        let end = pos + frame_len(header.len as usize);
        if end > data.len() {
            return Err(FormatError::Torn { at: pos });
        }
        let rekeyed = header_bytes(
            header.offset,
            header.kind,
            header.len,
            header.payload_crc,
            to,
        );
        if let Some(h) = data.get_mut(pos..pos + FRAME_HEADER_LEN) {
            h.copy_from_slice(&rekeyed);
        }
        pos = end;
    }
    Ok(())
}

#[inline]
fn decode_header(raw: &[u8], key: u32) -> Result<Option<FrameHeader>, CorruptReason> {
    if crate::is_zeroed(raw) {
        return Ok(None);
    }
    let h = access::<FrameHeaderV1>(raw).ok_or(CorruptReason::Malformed)?;
    let body = raw.get(..HEADER_BODY_LEN).ok_or(CorruptReason::Malformed)?;
    if crate::checksum::crc32c_append(key, body) != h.header_crc.to_native() {
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

    /// Any non-zero key: a segment of format v4 draws one at random.
    const KEY: u32 = 0x5eed_f00d;

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
                KEY,
            ));
            p += FRAME_HEADER_LEN;
        }
        let started = std::time::Instant::now();
        assert!(resync(&buf, 1, KEY).is_none());
        let took = started.elapsed();
        assert!(
            took < std::time::Duration::from_secs(10),
            "resync took {took:?}"
        );
        // A real frame right after a few crafted headers is found.
        let mut real = buf[..FRAME_HEADER_LEN * 4].to_vec();
        for h in real.chunks_mut(FRAME_HEADER_LEN) {
            h.copy_from_slice(&header_bytes(0, FrameKind::single(), 8, 0xdead_beef, KEY));
        }
        let at = real.len();
        encode_frame(&mut real, 7, FrameKind::single(), b"payload", KEY).unwrap();
        let e = resync(&real, 1, KEY).unwrap();
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
            encode_frame(&mut buf, 0, FrameKind::single(), b"valid", KEY).unwrap();
            for _ in 0..16 {
                let len = (n - buf.len() - FRAME_HEADER_LEN) as u32;
                buf.extend_from_slice(&header_bytes(0, FrameKind::single(), len, 0xdead_beef, KEY));
            }
        }
        buf.resize(n, 0);
        let started = std::time::Instant::now();
        let mut budget = resync_budget(n);
        let (mut from, mut found) = (1, 0);
        while let Some(e) = resync_within(&buf, from, &mut budget, KEY) {
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
            encode_frame(&mut buf, *off, *kind, p, KEY).unwrap();
        }
        buf
    }

    /// A frame validates under the key it was encoded with and no other: one that entry data
    /// holds (encoded by a writer who does not know the key) is not found by a resync through
    /// that data, and the real frame after it is.
    #[test]
    fn a_frame_checks_only_under_its_own_key() {
        let keyed = frames(&[(3, FrameKind::single(), b"entry")]);
        assert!(matches!(
            FrameDecoder::new(&keyed, KEY).next_frame(),
            Frame::Entry(e) if e.offset == 3
        ));
        for other in [0, KEY ^ 1, KEY ^ 0x8000_0000] {
            assert_eq!(
                FrameDecoder::new(&keyed, other).next_frame(),
                Frame::Corrupt {
                    at: 0,
                    reason: CorruptReason::HeaderChecksum
                }
            );
            assert!(resync(&keyed, 0, other).is_none());
        }
        let mut forged = Vec::new();
        encode_frame(&mut forged, 3, FrameKind::single(), b"forged", 0).unwrap();
        let mut carrier = b"entry data: ".to_vec();
        carrier.extend_from_slice(&forged);
        let mut buf = Vec::new();
        encode_frame(&mut buf, 3, FrameKind::single(), &carrier, KEY).unwrap();
        encode_frame(&mut buf, 4, FrameKind::single(), b"next", KEY).unwrap();
        buf[4] ^= 0xff; // the carrier's length
        let e = resync(&buf, 1, KEY).unwrap();
        assert_eq!((e.offset, e.payload), (4, &b"next"[..]));
        // Unkeyed, the forged frame would have been taken for entry 3.
        let e = resync(&buf, 1, 0).unwrap();
        assert_eq!((e.offset, e.payload), (3, &b"forged"[..]));
    }

    /// Re-keying changes only the header CRCs: the frames then decode under the new key alone,
    /// to the same entries; a frame that does not validate under the old key stops it.
    #[test]
    fn rekeying_rechecksums_every_header() {
        let mut buf = frames(&[
            (5, FrameKind::batch(0, 2).unwrap(), b"a"),
            (6, FrameKind::batch(1, 2).unwrap(), b"bb"),
            (7, FrameKind::single(), b""),
        ]);
        let before: Vec<_> = FrameDecoder::new(&buf, KEY)
            .map(|f| match f {
                Frame::Entry(e) => Some((e.offset, e.kind, e.payload.to_vec())),
                _ => None,
            })
            .collect();
        rekey_frames(&mut buf, KEY, 0).unwrap();
        let after: Vec<_> = FrameDecoder::new(&buf, 0)
            .map(|f| match f {
                Frame::Entry(e) => Some((e.offset, e.kind, e.payload.to_vec())),
                _ => None,
            })
            .collect();
        assert_eq!(before, after);
        assert!(matches!(
            FrameDecoder::new(&buf, KEY).next_frame(),
            Frame::Corrupt { .. }
        ));
        assert_eq!(
            rekey_frames(&mut buf.clone(), KEY, 0),
            Err(FormatError::Corrupt {
                at: 0,
                reason: CorruptReason::HeaderChecksum
            })
        );
        let mut cut = buf[..buf.len() - 1].to_vec();
        assert!(matches!(
            rekey_frames(&mut cut, 0, KEY),
            Err(FormatError::Torn { .. })
        ));
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
            encode_frame_header(MAX_OFFSET, FrameKind::single(), b"x", KEY),
            Err(FormatError::InvalidInput(_))
        ));
        let raw = header_bytes(u64::MAX, FrameKind::single(), 1, crc32c(b"x"), KEY);
        assert_eq!(FrameHeader::decode(&raw, KEY), Err(CorruptReason::Sequence));
        let raw = header_bytes(MAX_OFFSET - 1, FrameKind::single(), 1, crc32c(b"x"), KEY);
        assert_eq!(
            FrameHeader::decode(&raw, KEY).unwrap().unwrap().offset,
            MAX_OFFSET - 1
        );
    }

    /// A header checked by `for_payload` encodes under any key; fields set by hand outside the
    /// format's limits are refused, never encoded into a header the decoder would refuse.
    #[test]
    fn a_header_encodes_only_within_the_limits() {
        let h = FrameHeader::for_payload(9, FrameKind::batch(1, 3).unwrap(), b"abc").unwrap();
        assert_eq!((h.len, h.payload_crc), (3, crc32c(b"abc")));
        for key in [0, KEY] {
            let raw = h.encode(key).unwrap();
            assert_eq!(FrameHeader::decode(&raw, key), Ok(Some(h)));
        }
        let out_of_limits = [
            FrameHeader {
                offset: MAX_OFFSET,
                ..h
            },
            FrameHeader {
                len: MAX_ENTRY_LEN as u32 + 1,
                ..h
            },
            FrameHeader {
                kind: FrameKind {
                    first: false,
                    batch_left: MAX_BATCH_ENTRIES as u16,
                },
                ..h
            },
        ];
        for bad in out_of_limits {
            assert!(
                matches!(bad.encode(KEY), Err(FormatError::InvalidInput(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn decode_entries_then_end() {
        let mut buf = frames(&[
            (5, FrameKind::single(), b"abc"),
            (6, FrameKind::single(), b""),
        ]);
        let mut d = FrameDecoder::new(&buf, KEY);
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
        assert_eq!(FrameDecoder::new(&buf, KEY).count(), 3);
        assert_eq!(
            FrameDecoder::at(&buf, 10_000, KEY).next_frame(),
            Frame::End { at: 10_000 }
        );
    }

    #[test]
    fn oversized_entry_is_refused_and_changes_nothing() {
        // Use a fake length through the public checker rather than allocating 1 GiB.
        assert!(checked_len(MAX_ENTRY_LEN + 1).is_err());
        assert!(checked_len(MAX_ENTRY_LEN).is_ok());
        let mut small = [0u8; 10];
        assert!(write_frame(&mut small, 0, FrameKind::single(), b"abc", KEY).is_err());
        assert_eq!(small, [0u8; 10]);
    }

    #[test]
    fn write_frame_matches_encode_frame() {
        let mut dst = [0u8; 64];
        let n = write_frame(&mut dst, 9, FrameKind::single(), b"payload", KEY).unwrap();
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
