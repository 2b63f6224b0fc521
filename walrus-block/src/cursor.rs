//! Cursor records: where a topic's persistent read cursor stands.
//!
//! The cursor file is an array of 512-byte slots, two per topic (A and B). A cursor update writes
//! generation *g* into slot `g % 2`, so a write torn by a crash can only damage the slot being
//! written: the other still holds the previous generation. Recovery takes the valid slot with
//! the higher generation. One slot is a sector, so one update is one small positional write, O(1)
//! whatever the number of topics.

use rkyv::Archived;

use crate::archived::{
    CursorRecordV1, CursorRecordV2, body_crc, bytes_of, decode_checked, topic_field,
    topic_from_field,
};
use crate::error::{CorruptReason, FormatError};
use crate::limits::MAX_OFFSET;

/// Magic bytes opening a record of a topic's default consumer (format v1).
pub const CURSOR_MAGIC: [u8; 4] = *b"WCUR";
/// Magic bytes opening a record of a named consumer or of a topic's floor.
pub const CURSOR_MAGIC_V2: [u8; 4] = *b"WCR2";
/// Encoded length of a default consumer's [`CursorRecord`].
pub const CURSOR_RECORD_LEN: usize = std::mem::size_of::<CursorRecordV1>();
/// Encoded length of a named consumer's or a floor's [`CursorRecord`].
pub const CURSOR_RECORD_V2_LEN: usize = std::mem::size_of::<CursorRecordV2>();
/// Size of one slot of the cursor file; a record owns two consecutive slots.
pub const CURSOR_SLOT_LEN: u64 = 512;

const _: () = assert!(CURSOR_RECORD_V2_LEN as u64 <= CURSOR_SLOT_LEN);

/// Flag bit of a v2 record: the consumer was removed, or (for a floor) the topic deleted.
const FLAG_REMOVED: u8 = 1;

/// What a cursor record tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CursorKind {
    /// A consumer's cursor: every entry below `offset` is consumed by it.
    Consumer,
    /// The topic's floor: entries below `offset` were released by retention or deletion,
    /// whatever the consumers read.
    Floor,
}

/// One persisted cursor (or floor) of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CursorRecord {
    /// The topic.
    pub topic: String,
    /// The consumer; empty for the topic's default consumer and for a floor.
    pub consumer: String,
    /// What the record tracks.
    pub kind: CursorKind,
    /// The consumer was removed, or (for a floor) the topic deleted.
    pub removed: bool,
    /// Increases by one with every update of this record; selects the slot (`% 2`).
    pub generation: u64,
    /// The next offset a consuming read hands out: every entry below it is consumed (for a
    /// floor: released).
    pub offset: u64,
}

impl CursorRecord {
    /// The record of `topic`'s default consumer.
    #[must_use]
    pub fn new(topic: impl Into<String>, generation: u64, offset: u64) -> Self {
        Self {
            topic: topic.into(),
            consumer: String::new(),
            kind: CursorKind::Consumer,
            removed: false,
            generation,
            offset,
        }
    }

    /// Byte position in the cursor file of the slot this record goes to, for the record owning
    /// slot pair `pair`.
    #[must_use]
    pub fn slot_position(pair: u64, generation: u64) -> u64 {
        (pair * 2 + generation % 2) * CURSOR_SLOT_LEN
    }

    /// Whether the record has the v1 layout: a default consumer's, not removed.
    fn is_v1(&self) -> bool {
        self.kind == CursorKind::Consumer && self.consumer.is_empty() && !self.removed
    }

    /// Encodes the record, CRC included: [`CURSOR_RECORD_LEN`] bytes for a default consumer,
    /// [`CURSOR_RECORD_V2_LEN`] otherwise.
    ///
    /// # Errors
    /// [`FormatError::InvalidTopic`] for an empty or over-long topic name;
    /// [`FormatError::InvalidInput`] for an over-long consumer name, or a floor naming one.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        let (topic_len, topic) = topic_field(&self.topic)?;
        if self.is_v1() {
            let mut r = CursorRecordV1 {
                magic: CURSOR_MAGIC,
                topic_len,
                flags: 0,
                reserved: Archived::<u16>::from_native(0),
                generation: Archived::<u64>::from_native(self.generation),
                offset: Archived::<u64>::from_native(self.offset),
                topic,
                reserved2: 0,
                crc: Archived::<u32>::from_native(0),
            };
            r.crc = Archived::<u32>::from_native(body_crc(&r));
            return Ok(bytes_of(&r).to_vec());
        }
        if !self.consumer.is_empty() {
            crate::validate_consumer_name(&self.consumer)?;
        }
        if self.kind == CursorKind::Floor && !self.consumer.is_empty() {
            return Err(FormatError::InvalidInput(
                "a topic's floor names no consumer".into(),
            ));
        }
        let mut consumer = [0u8; 128];
        let name = self.consumer.as_bytes();
        let too_long = || FormatError::InvalidInput("consumer name too long".into());
        consumer
            .get_mut(..name.len())
            .ok_or_else(too_long)?
            .copy_from_slice(name);
        let mut r = CursorRecordV2 {
            magic: CURSOR_MAGIC_V2,
            topic_len,
            consumer_len: u8::try_from(name.len()).map_err(|_| too_long())?,
            kind: match self.kind {
                CursorKind::Consumer => 0,
                CursorKind::Floor => 1,
            },
            flags: if self.removed { FLAG_REMOVED } else { 0 },
            generation: Archived::<u64>::from_native(self.generation),
            offset: Archived::<u64>::from_native(self.offset),
            topic,
            consumer,
            reserved: 0,
            crc: Archived::<u32>::from_native(0),
        };
        r.crc = Archived::<u32>::from_native(body_crc(&r));
        Ok(bytes_of(&r).to_vec())
    }

    /// Decodes one slot. `Ok(None)` for a never-written (all-zero) slot.
    ///
    /// # Errors
    /// [`FormatError::Torn`] for a short slot that is not all zero; [`FormatError::Corrupt`] for
    /// a bad magic, checksum, reserved field or name.
    pub fn decode(bytes: &[u8]) -> Result<Option<Self>, FormatError> {
        if bytes.get(..4) == Some(&CURSOR_MAGIC_V2[..]) {
            return Self::decode_v2(bytes);
        }
        let magic_ok = |r: &CursorRecordV1| r.magic == CURSOR_MAGIC;
        let Some(r) = decode_checked::<CursorRecordV1>(bytes, magic_ok, |r| r.crc.to_native())?
        else {
            return Ok(None);
        };
        let corrupt = |reason| FormatError::Corrupt { at: 0, reason };
        if r.flags != 0 || r.reserved.to_native() != 0 || r.reserved2 != 0 {
            return Err(corrupt(CorruptReason::ReservedBits));
        }
        let topic = topic_from_field(r.topic_len, &r.topic).map_err(corrupt)?;
        let (generation, offset) = in_range(r.generation.to_native(), r.offset.to_native())?;
        Ok(Some(Self::new(topic, generation, offset)))
    }

    fn decode_v2(bytes: &[u8]) -> Result<Option<Self>, FormatError> {
        let magic_ok = |r: &CursorRecordV2| r.magic == CURSOR_MAGIC_V2;
        let Some(r) = decode_checked::<CursorRecordV2>(bytes, magic_ok, |r| r.crc.to_native())?
        else {
            return Ok(None);
        };
        let corrupt = |reason| FormatError::Corrupt { at: 0, reason };
        if r.flags & !FLAG_REMOVED != 0 || r.reserved != 0 {
            return Err(corrupt(CorruptReason::ReservedBits));
        }
        let kind = match r.kind {
            0 => CursorKind::Consumer,
            1 => CursorKind::Floor,
            _ => return Err(corrupt(CorruptReason::ReservedBits)),
        };
        let topic = topic_from_field(r.topic_len, &r.topic).map_err(corrupt)?;
        let (name, padding) = r
            .consumer
            .split_at_checked(usize::from(r.consumer_len))
            .ok_or(corrupt(CorruptReason::BadLength))?;
        if !crate::is_zeroed(padding) {
            return Err(corrupt(CorruptReason::ReservedBits));
        }
        let consumer = std::str::from_utf8(name)
            .map_err(|_| corrupt(CorruptReason::TopicNotUtf8))?
            .to_owned();
        let removed = r.flags & FLAG_REMOVED != 0;
        // One layout per record: a plain default consumer is written as v1, a floor names no
        // consumer.
        let v1_shaped = kind == CursorKind::Consumer && consumer.is_empty() && !removed;
        if v1_shaped || (kind == CursorKind::Floor && !consumer.is_empty()) {
            return Err(corrupt(CorruptReason::Malformed));
        }
        let (generation, offset) = in_range(r.generation.to_native(), r.offset.to_native())?;
        Ok(Some(Self {
            topic,
            consumer,
            kind,
            removed,
            generation,
            offset,
        }))
    }
}

/// A record's generation and offset, if the format can hold them: an offset at most
/// [`MAX_OFFSET`] (a cursor may stand at the end), a generation below it (one per write, so
/// never reached; `+ 1` on it cannot overflow).
fn in_range(generation: u64, offset: u64) -> Result<(u64, u64), FormatError> {
    if generation >= MAX_OFFSET || offset > MAX_OFFSET {
        return Err(FormatError::Corrupt {
            at: 0,
            reason: CorruptReason::Sequence,
        });
    }
    Ok((generation, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_slots() {
        let r = CursorRecord::new("events", 5, 99);
        let bytes = r.encode().unwrap();
        assert_eq!(CURSOR_RECORD_LEN, 284);
        assert_eq!(CursorRecord::decode(&bytes), Ok(Some(r)));
        assert_eq!(CursorRecord::decode(&[0; 512]), Ok(None));
        assert_eq!(CursorRecord::slot_position(3, 5), 7 * 512);
        assert_eq!(CursorRecord::slot_position(3, 6), 6 * 512);
    }

    /// A record whose generation or offset the format cannot hold (damage with a valid CRC,
    /// or a crafted file) is corrupt: a generation of `u64::MAX` would overflow at the next
    /// write, and win every slot comparison meanwhile.
    #[test]
    fn generation_and_offset_out_of_range_are_corrupt() {
        let consumer = |generation, offset| CursorRecord {
            consumer: "c".into(),
            ..CursorRecord::new("t", generation, offset)
        };
        for (generation, offset) in [
            (MAX_OFFSET, 0),
            (u64::MAX, 0),
            (1, MAX_OFFSET + 1),
            (1, u64::MAX),
        ] {
            for r in [
                CursorRecord::new("t", generation, offset),
                consumer(generation, offset),
            ] {
                let bytes = r.encode().unwrap();
                assert!(
                    matches!(
                        CursorRecord::decode(&bytes),
                        Err(FormatError::Corrupt {
                            reason: CorruptReason::Sequence,
                            ..
                        })
                    ),
                    "{r:?}"
                );
            }
        }
        let edge = consumer(MAX_OFFSET - 1, MAX_OFFSET);
        assert_eq!(
            CursorRecord::decode(&edge.encode().unwrap()),
            Ok(Some(edge))
        );
    }

    #[test]
    fn every_bit_flip_and_truncation_is_rejected() {
        let bytes = CursorRecord::new("t", 1, 2).encode().unwrap();
        for bit in 0..CURSOR_RECORD_LEN * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(CursorRecord::decode(&b), Err(FormatError::Corrupt { .. })),
                "bit {bit}"
            );
        }
        for cut in 1..CURSOR_RECORD_LEN {
            assert_eq!(
                CursorRecord::decode(&bytes[..cut]),
                Err(FormatError::Torn { at: 0 })
            );
        }
    }

    #[test]
    fn named_consumers_and_floors_round_trip_in_the_v2_layout() {
        let named = CursorRecord {
            consumer: "billing".into(),
            ..CursorRecord::new("events", 3, 40)
        };
        let floor = CursorRecord {
            kind: CursorKind::Floor,
            removed: true,
            ..CursorRecord::new("events", 9, 77)
        };
        let removed = CursorRecord {
            removed: true,
            ..named.clone()
        };
        for r in [named, floor, removed] {
            let bytes = r.encode().unwrap();
            assert_eq!(bytes.len(), CURSOR_RECORD_V2_LEN);
            assert_eq!(CursorRecord::decode(&bytes), Ok(Some(r.clone())));
            let mut slot = vec![0u8; CURSOR_SLOT_LEN as usize];
            slot[..bytes.len()].copy_from_slice(&bytes);
            assert_eq!(CursorRecord::decode(&slot), Ok(Some(r)));
            for bit in 0..CURSOR_RECORD_V2_LEN * 8 {
                let mut b = bytes.clone();
                b[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    matches!(CursorRecord::decode(&b), Err(FormatError::Corrupt { .. })),
                    "bit {bit}"
                );
            }
            for cut in 1..CURSOR_RECORD_V2_LEN {
                assert_eq!(
                    CursorRecord::decode(&bytes[..cut]),
                    Err(FormatError::Torn { at: 0 })
                );
            }
        }
        let long = CursorRecord {
            consumer: "c".repeat(129),
            ..CursorRecord::new("t", 1, 0)
        };
        assert!(matches!(long.encode(), Err(FormatError::InvalidInput(_))));
        let named_floor = CursorRecord {
            kind: CursorKind::Floor,
            consumer: "c".into(),
            ..CursorRecord::new("t", 1, 0)
        };
        assert!(matches!(
            named_floor.encode(),
            Err(FormatError::InvalidInput(_))
        ));
    }
}
