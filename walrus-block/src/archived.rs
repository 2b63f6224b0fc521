//! The rkyv archives behind the three fixed-size headers, and the two ways bytes cross them:
//! checked access for bytes read from disk, and a byte view for headers about to be written.
//!
//! With rkyv's `little_endian` + `unaligned` features every archived field has alignment 1, so
//! each archived struct is `repr(C)` without padding and its size is the sum of its fields; the
//! `const` assertions below hold the layout to what `docs/FORMAT.md` draws.

use rkyv::{Archive, Portable, rancor::Failure};

/// Segment header of format v2 as archived on disk (36 bytes): read, never written.
#[derive(Archive)]
#[rkyv(archived = SegmentHeaderV2)]
#[allow(dead_code)] // Only the archived form is used; the native form exists for the derive.
pub(crate) struct SegmentHeaderV2Native {
    pub(crate) magic: [u8; 8],
    pub(crate) version: u16,
    pub(crate) checksum: u8,
    pub(crate) flags: u8,
    pub(crate) data_offset: u32,
    pub(crate) segment_id: u64,
    pub(crate) block_len: u64,
    pub(crate) crc: u32,
}

/// Segment header as archived on disk (44 bytes): v2's 36 bytes (so that a build that reads v2
/// only finds a valid header of another version, and says so), then the segment's key and a
/// CRC of everything before it.
#[derive(Archive)]
#[rkyv(archived = SegmentHeaderV3)]
#[allow(dead_code)]
pub(crate) struct SegmentHeaderNative {
    pub(crate) magic: [u8; 8],
    pub(crate) version: u16,
    pub(crate) checksum: u8,
    pub(crate) flags: u8,
    pub(crate) data_offset: u32,
    pub(crate) segment_id: u64,
    pub(crate) block_len: u64,
    /// CRC32C of bytes `[0..32)`, as in v2.
    pub(crate) crc: u32,
    pub(crate) key: u32,
    /// CRC32C of bytes `[0..40)`.
    pub(crate) key_crc: u32,
}

/// Block header as archived on disk (308 bytes).
#[derive(Archive)]
#[rkyv(archived = BlockHeaderV2)]
#[allow(dead_code)]
pub(crate) struct BlockHeaderNative {
    pub(crate) magic: [u8; 4],
    pub(crate) topic_len: u8,
    pub(crate) flags: u8,
    pub(crate) reserved: u16,
    pub(crate) block_len: u64,
    pub(crate) segment_id: u64,
    pub(crate) chain_seq: u64,
    pub(crate) first_offset: u64,
    pub(crate) prev_end: u64,
    pub(crate) topic: [u8; 255],
    pub(crate) reserved2: u8,
    pub(crate) crc: u32,
}

/// Entry frame header as archived on disk (24 bytes).
#[derive(Archive)]
#[rkyv(archived = FrameHeaderV1)]
#[allow(dead_code)]
pub(crate) struct FrameHeaderNative {
    pub(crate) marker: u8,
    pub(crate) flags: u8,
    pub(crate) batch_left: u16,
    pub(crate) len: u32,
    pub(crate) offset: u64,
    pub(crate) payload_crc: u32,
    pub(crate) header_crc: u32,
}

const _: () = {
    use std::mem::{align_of, size_of};
    assert!(size_of::<SegmentHeaderV2>() == 8 + 2 + 1 + 1 + 4 + 8 + 8 + 4);
    assert!(align_of::<SegmentHeaderV2>() == 1);
    assert!(size_of::<SegmentHeaderV3>() == 8 + 2 + 1 + 1 + 4 + 8 + 8 + 4 + 4 + 4);
    assert!(align_of::<SegmentHeaderV3>() == 1);
    assert!(size_of::<BlockHeaderV2>() == 4 + 1 + 1 + 2 + 8 + 8 + 8 + 8 + 8 + 255 + 1 + 4);
    assert!(align_of::<BlockHeaderV2>() == 1);
    assert!(size_of::<FrameHeaderV1>() == 1 + 1 + 2 + 4 + 8 + 4 + 4);
    assert!(align_of::<FrameHeaderV1>() == 1);
};

/// Marker for the archived header types: plain old data, alignment 1, no padding.
///
/// # Safety
/// Implementors must be `repr(C)`, have alignment 1 and no padding bytes, so that every byte of
/// a value is initialized. The `const` assertions above check size and alignment.
pub(crate) unsafe trait PlainHeader: Portable + Sized {}

// SAFETY: rkyv derives archived structs as `repr(C)`; the assertions above prove alignment 1 and
// a size equal to the sum of the fields, hence no padding.
unsafe impl PlainHeader for SegmentHeaderV2 {}
// SAFETY: as above.
unsafe impl PlainHeader for SegmentHeaderV3 {}
// SAFETY: as above.
unsafe impl PlainHeader for BlockHeaderV2 {}
// SAFETY: as above.
unsafe impl PlainHeader for FrameHeaderV1 {}

/// Checked access to an archived header occupying exactly `bytes`. Returns `None` when the
/// slice has the wrong length or rkyv's validation rejects it.
pub(crate) fn access<T>(bytes: &[u8]) -> Option<&T>
where
    T: PlainHeader
        + for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, Failure>>,
{
    if bytes.len() != std::mem::size_of::<T>() {
        return None;
    }
    rkyv::access::<T, Failure>(bytes).ok()
}

/// The bytes of an archived header, ready to be written.
pub(crate) fn bytes_of<T: PlainHeader>(value: &T) -> &[u8] {
    // SAFETY: `T: PlainHeader` guarantees every one of the `size_of::<T>()` bytes behind `value`
    // is initialized (no padding); the slice borrows `value`, so it cannot outlive it.
    unsafe {
        std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
    }
}

/// CRC32C of a header's bytes except its last four, which is where each header keeps its CRC.
pub(crate) fn body_crc<T: PlainHeader>(value: &T) -> u32 {
    keyed_body_crc(value, 0)
}

/// [`body_crc`] continued from `key` instead of 0: headers whose CRC a writer of entry data must
/// not be able to compute (block headers, journal records) seed it with a key the data's writer
/// never sees. Key 0 is the plain CRC32C.
pub(crate) fn keyed_body_crc<T: PlainHeader>(value: &T, key: u32) -> u32 {
    let bytes = bytes_of(value);
    let body = bytes
        .split_last_chunk::<4>()
        .map_or(bytes, |(body, _crc)| body);
    crate::checksum::crc32c_append(key, body)
}

/// Cursor record as archived on disk (284 bytes, stored in a 512-byte slot).
#[derive(Archive)]
#[rkyv(archived = CursorRecordV1)]
#[allow(dead_code)]
pub(crate) struct CursorRecordNative {
    pub(crate) magic: [u8; 4],
    pub(crate) topic_len: u8,
    pub(crate) flags: u8,
    pub(crate) reserved: u16,
    pub(crate) generation: u64,
    pub(crate) offset: u64,
    pub(crate) topic: [u8; 255],
    pub(crate) reserved2: u8,
    pub(crate) crc: u32,
}

const _: () = {
    assert!(std::mem::size_of::<CursorRecordV1>() == 4 + 1 + 1 + 2 + 8 + 8 + 255 + 1 + 4);
    assert!(std::mem::align_of::<CursorRecordV1>() == 1);
};

// SAFETY: as for the other headers: `repr(C)`, alignment 1, no padding (asserted above).
unsafe impl PlainHeader for CursorRecordV1 {}

/// Cursor record of a named consumer or a topic's floor, as archived on disk (412 bytes, stored
/// in a 512-byte slot).
#[derive(Archive)]
#[rkyv(archived = CursorRecordV2)]
#[allow(dead_code)]
pub(crate) struct CursorRecordV2Native {
    pub(crate) magic: [u8; 4],
    pub(crate) topic_len: u8,
    pub(crate) consumer_len: u8,
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) generation: u64,
    pub(crate) offset: u64,
    pub(crate) topic: [u8; 255],
    pub(crate) consumer: [u8; 128],
    pub(crate) reserved: u8,
    pub(crate) crc: u32,
}

const _: () = {
    assert!(std::mem::size_of::<CursorRecordV2>() == 4 + 4 + 8 + 8 + 255 + 128 + 1 + 4);
    assert!(std::mem::align_of::<CursorRecordV2>() == 1);
};

// SAFETY: as for the other headers: `repr(C)`, alignment 1, no padding (asserted above).
unsafe impl PlainHeader for CursorRecordV2 {}

/// The common prologue of decoding a CRC-protected header at the start of `bytes`: `Ok(None)`
/// when it was never written (all zero), `Torn` for a short non-zero prefix, then rkyv's checked
/// access, the magic, and the CRC of everything before the last four bytes.
pub(crate) fn decode_checked<'a, T>(
    bytes: &'a [u8],
    magic_ok: impl FnOnce(&T) -> bool,
    stored_crc: impl FnOnce(&T) -> u32,
) -> Result<Option<&'a T>, crate::FormatError>
where
    T: PlainHeader
        + for<'b> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'b, Failure>>,
{
    decode_keyed(bytes, 0, magic_ok, stored_crc)
}

/// [`decode_checked`] of a header whose CRC is seeded with `key` (see [`keyed_body_crc`]).
pub(crate) fn decode_keyed<'a, T>(
    bytes: &'a [u8],
    key: u32,
    magic_ok: impl FnOnce(&T) -> bool,
    stored_crc: impl FnOnce(&T) -> u32,
) -> Result<Option<&'a T>, crate::FormatError>
where
    T: PlainHeader
        + for<'b> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'b, Failure>>,
{
    use crate::{CorruptReason, FormatError};
    let len = std::mem::size_of::<T>();
    let Some(raw) = bytes.get(..len) else {
        return if crate::is_zeroed(bytes) {
            Ok(None)
        } else {
            Err(FormatError::Torn { at: 0 })
        };
    };
    if crate::is_zeroed(raw) {
        return Ok(None);
    }
    let corrupt = |reason| FormatError::Corrupt { at: 0, reason };
    let h = access::<T>(raw).ok_or(corrupt(CorruptReason::Malformed))?;
    if !magic_ok(h) {
        return Err(corrupt(CorruptReason::BadMagic));
    }
    let body = raw
        .get(..len - 4)
        .ok_or(corrupt(CorruptReason::Malformed))?;
    if crate::checksum::crc32c_append(key, body) != stored_crc(h) {
        return Err(corrupt(CorruptReason::HeaderChecksum));
    }
    Ok(Some(h))
}

/// A topic name as stored in a fixed 255-byte field: its length and the zero-padded bytes.
pub(crate) fn topic_field(topic: &str) -> Result<(u8, [u8; 255]), crate::FormatError> {
    crate::validate_topic_name(topic)?;
    let mut field = [0u8; 255];
    let name = topic.as_bytes();
    let too_long = || crate::FormatError::InvalidTopic("topic name too long".into());
    field
        .get_mut(..name.len())
        .ok_or_else(too_long)?
        .copy_from_slice(name);
    Ok((u8::try_from(name.len()).map_err(|_| too_long())?, field))
}

/// The topic name stored in a fixed field: `len` bytes of UTF-8, the rest zero.
pub(crate) fn topic_from_field(len: u8, field: &[u8; 255]) -> Result<String, crate::CorruptReason> {
    use crate::CorruptReason;
    let (name, padding) = field
        .split_at_checked(usize::from(len))
        .ok_or(CorruptReason::BadLength)?;
    if name.is_empty() {
        return Err(CorruptReason::BadLength);
    }
    if !crate::is_zeroed(padding) {
        return Err(CorruptReason::ReservedBits);
    }
    std::str::from_utf8(name)
        .map(str::to_owned)
        .map_err(|_| CorruptReason::TopicNotUtf8)
}

/// Journal header as archived on disk (28 bytes, stored in a 512-byte slot).
#[derive(Archive)]
#[rkyv(archived = JournalHeaderV1)]
#[allow(dead_code)]
pub(crate) struct JournalHeaderNative {
    pub(crate) magic: [u8; 8],
    pub(crate) version: u16,
    pub(crate) flags: u16,
    /// Version 1: reserved, zero. Version 2: the file's key.
    pub(crate) key: u32,
    pub(crate) generation: u64,
    pub(crate) crc: u32,
}

/// Journal record header as archived on disk (36 bytes).
#[derive(Archive)]
#[rkyv(archived = JournalRecordV1)]
#[allow(dead_code)]
pub(crate) struct JournalRecordNative {
    pub(crate) magic: [u8; 4],
    pub(crate) reserved: u32,
    pub(crate) generation: u64,
    pub(crate) seq: u64,
    pub(crate) body_len: u32,
    pub(crate) body_crc: u32,
    pub(crate) crc: u32,
}

/// One write inside a journal record's body, as archived (20 bytes, then the bytes written).
#[derive(Archive)]
#[rkyv(archived = JournalWriteV1)]
#[allow(dead_code)]
pub(crate) struct JournalWriteNative {
    pub(crate) segment_id: u64,
    pub(crate) position: u64,
    pub(crate) len: u32,
}

const _: () = {
    use std::mem::{align_of, size_of};
    assert!(size_of::<JournalHeaderV1>() == 8 + 2 + 2 + 4 + 8 + 4);
    assert!(align_of::<JournalHeaderV1>() == 1);
    assert!(size_of::<JournalRecordV1>() == 4 + 4 + 8 + 8 + 4 + 4 + 4);
    assert!(align_of::<JournalRecordV1>() == 1);
    assert!(size_of::<JournalWriteV1>() == 8 + 8 + 4);
    assert!(align_of::<JournalWriteV1>() == 1);
};

// SAFETY: as for the other headers: `repr(C)`, alignment 1, no padding (asserted above).
unsafe impl PlainHeader for JournalHeaderV1 {}
// SAFETY: as above.
unsafe impl PlainHeader for JournalRecordV1 {}
// SAFETY: as above.
unsafe impl PlainHeader for JournalWriteV1 {}
