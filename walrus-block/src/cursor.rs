//! Cursor records: where a topic's persistent read cursor stands.
//!
//! The cursor file is an array of 512-byte slots, two per topic (A and B). A cursor update writes
//! generation *g* into slot `g % 2`, so a write torn by a crash can only damage the slot being
//! written: the other still holds the previous generation. Recovery takes the valid slot with
//! the higher generation. One slot is a sector, so one update is one small positional write, O(1)
//! whatever the number of topics.

use rkyv::Archived;

use crate::archived::{
    CursorRecordV1, body_crc, bytes_of, decode_checked, topic_field, topic_from_field,
};
use crate::error::{CorruptReason, FormatError};

/// Magic bytes opening every cursor record.
pub const CURSOR_MAGIC: [u8; 4] = *b"WCUR";
/// Encoded length of a [`CursorRecord`].
pub const CURSOR_RECORD_LEN: usize = std::mem::size_of::<CursorRecordV1>();
/// Size of one slot of the cursor file; a topic owns two consecutive slots.
pub const CURSOR_SLOT_LEN: u64 = 512;

/// One persisted cursor of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CursorRecord {
    /// The topic.
    pub topic: String,
    /// Increases by one with every update of this topic's cursor; selects the slot (`% 2`).
    pub generation: u64,
    /// The next offset a consuming read hands out: every entry below it is consumed.
    pub offset: u64,
}

impl CursorRecord {
    /// Byte position in the cursor file of the slot this record goes to, for the topic owning
    /// slot pair `pair`.
    #[must_use]
    pub fn slot_position(pair: u64, generation: u64) -> u64 {
        (pair * 2 + generation % 2) * CURSOR_SLOT_LEN
    }

    /// Encodes the record, CRC included.
    ///
    /// # Errors
    /// [`FormatError::InvalidTopic`] for an empty or over-long topic name.
    pub fn encode(&self) -> Result<[u8; CURSOR_RECORD_LEN], FormatError> {
        let (topic_len, topic) = topic_field(&self.topic)?;
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
        let mut out = [0u8; CURSOR_RECORD_LEN];
        out.copy_from_slice(bytes_of(&r));
        Ok(out)
    }

    /// Decodes one slot. `Ok(None)` for a never-written (all-zero) slot.
    ///
    /// # Errors
    /// [`FormatError::Torn`] for a short slot that is not all zero; [`FormatError::Corrupt`] for
    /// a bad magic, checksum, reserved field or topic name.
    pub fn decode(bytes: &[u8]) -> Result<Option<Self>, FormatError> {
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
        Ok(Some(Self {
            topic,
            generation: r.generation.to_native(),
            offset: r.offset.to_native(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_slots() {
        let r = CursorRecord {
            topic: "events".into(),
            generation: 5,
            offset: 99,
        };
        let bytes = r.encode().unwrap();
        assert_eq!(CURSOR_RECORD_LEN, 284);
        assert_eq!(CursorRecord::decode(&bytes), Ok(Some(r)));
        assert_eq!(CursorRecord::decode(&[0; 512]), Ok(None));
        assert_eq!(CursorRecord::slot_position(3, 5), 7 * 512);
        assert_eq!(CursorRecord::slot_position(3, 6), 6 * 512);
    }

    #[test]
    fn every_bit_flip_and_truncation_is_rejected() {
        let bytes = CursorRecord {
            topic: "t".into(),
            generation: 1,
            offset: 2,
        }
        .encode()
        .unwrap();
        for bit in 0..CURSOR_RECORD_LEN * 8 {
            let mut b = bytes;
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
}
