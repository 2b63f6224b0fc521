//! Property tests of the format: round trips, every single-bit flip, every truncation, and
//! arbitrary bytes. Case counts are bounded so the default suite stays fast; raise them with
//! `PROPTEST_CASES=N` (or `cargo xtask proptest --cases N`); the default is 256.

use proptest::prelude::*;
use walrus_block::{
    BLOCK_ALIGN, BLOCK_HEADER_LEN, BlockHeader, CorruptReason, CursorRecord, Frame, FrameDecoder,
    FrameKind, JournalHeader, JournalRecordHeader, MAX_OFFSET, SegmentHeader, SequenceCheck,
    TierIndex, encode_frame, frame_len, resync,
};

/// One entry as the tests know it: its offset, unit position and payload.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    offset: u64,
    kind: FrameKind,
    payload: Vec<u8>,
}

/// Units of 1..=4 entries (1 = a single entry), payloads of 0..=1100 bytes, from a first
/// offset anywhere below the format's limit that leaves room for them.
fn units(max_units: usize) -> impl Strategy<Value = (u64, Vec<Vec<Vec<u8>>>)> {
    (
        0u64..(MAX_OFFSET - 100),
        prop::collection::vec(
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..=1100), 1..=4),
            1..=max_units,
        ),
    )
}

fn layout(first: u64, units: &[Vec<Vec<u8>>]) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut offset = first;
    for unit in units {
        for (i, payload) in unit.iter().enumerate() {
            let kind = FrameKind::batch(i, unit.len()).unwrap();
            out.push(Entry {
                offset,
                kind,
                payload: payload.clone(),
            });
            offset += 1;
        }
    }
    out
}

/// The key the frames of these tests are keyed with (a v4 segment draws one at random).
const KEY: u32 = 0x00dd_ba11;

fn encode_all(entries: &[Entry]) -> (Vec<u8>, Vec<usize>) {
    encode_keyed(entries, KEY)
}

fn encode_keyed(entries: &[Entry], key: u32) -> (Vec<u8>, Vec<usize>) {
    let mut buf = Vec::new();
    let mut positions = Vec::new();
    for e in entries {
        positions.push(buf.len());
        encode_frame(&mut buf, e.offset, e.kind, &e.payload, key).unwrap();
    }
    (buf, positions)
}

/// Decodes until the first non-entry; returns the entries and the terminal frame.
fn decode_all(buf: &[u8]) -> (Vec<Entry>, Frame<'_>) {
    decode_keyed(buf, KEY)
}

fn decode_keyed(buf: &[u8], key: u32) -> (Vec<Entry>, Frame<'_>) {
    let mut d = FrameDecoder::new(buf, key);
    let mut out = Vec::new();
    loop {
        match d.next_frame() {
            Frame::Entry(e) => out.push(Entry {
                offset: e.offset,
                kind: e.kind,
                payload: e.payload.to_vec(),
            }),
            other => return (out, other),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn frames_round_trip((first, units) in units(12), zeros in 0usize..64) {
        let entries = layout(first, &units);
        let (mut buf, _) = encode_all(&entries);
        let end = buf.len();
        buf.resize(end + zeros, 0);
        let (decoded, terminal) = decode_all(&buf);
        prop_assert_eq!(&decoded, &entries);
        prop_assert_eq!(terminal, Frame::End { at: end });
        let mut seq = SequenceCheck::new(first);
        for e in &decoded {
            prop_assert!(seq.check(e.offset, e.kind).is_ok());
        }
        prop_assert!(!seq.in_unit());
        prop_assert_eq!(seq.complete_end(), first + entries.len() as u64);
    }

    #[test]
    fn blocks_round_trip(
        topic in "[a-zA-Z0-9_./-]{1,40}|\\PC{1,60}",
        segment_id in any::<u64>(),
        chain_seq in 0..MAX_OFFSET,
        (first, units) in units(6),
        key in any::<u32>(),
        keyed_frames in any::<bool>(),
    ) {
        prop_assume!(!topic.is_empty() && topic.len() <= 255);
        let entries = layout(first, &units);
        let header = BlockHeader { topic, segment_id, chain_seq, first_offset: first, prev_end: first, block_len: 0, abandoned: false, keyed_frames };
        let frame_key = header.frame_key(key);
        prop_assert_eq!(frame_key, if keyed_frames { key } else { 0 });
        let (frames, _) = encode_keyed(&entries, frame_key);
        let need = (BLOCK_HEADER_LEN + frames.len()) as u64;
        let block_len = need.div_ceil(BLOCK_ALIGN) * BLOCK_ALIGN;
        let header = BlockHeader { block_len, ..header };
        let mut block = header.encode(key).unwrap().to_vec();
        block.extend_from_slice(&frames);
        block.resize(block_len as usize, 0);

        let decoded_header = BlockHeader::decode(&block, key).unwrap().unwrap();
        prop_assert_eq!(&decoded_header, &header);
        // Under any other key the header is damage, never a header.
        prop_assert!(BlockHeader::decode(&block, key ^ 1).is_err());
        let data = &block[BLOCK_HEADER_LEN..];
        let (decoded, terminal) = decode_keyed(data, decoded_header.frame_key(key));
        prop_assert_eq!(decoded, entries);
        prop_assert_eq!(terminal, Frame::End { at: frames.len() });
    }

    /// Every single-bit flip in a frame, header or payload, is corruption at that frame: never a
    /// valid entry, never mistaken for the end of data or a torn write.
    #[test]
    fn every_bit_flip_is_corruption(
        before in prop::collection::vec(any::<u8>(), 0..=64),
        payload in prop::collection::vec(any::<u8>(), 0..=300),
        after in prop::collection::vec(any::<u8>(), 0..=64),
        offset in 1u64..MAX_OFFSET - 2,
        batch_shape in 1usize..=5,
    ) {
        let kind = FrameKind::batch(0, batch_shape).unwrap();
        let mut buf = Vec::new();
        encode_frame(&mut buf, offset - 1, FrameKind::single(), &before, KEY).unwrap();
        let at = buf.len();
        encode_frame(&mut buf, offset, kind, &payload, KEY).unwrap();
        let target_end = buf.len();
        encode_frame(&mut buf, offset + 1, FrameKind::batch(1, batch_shape.max(2)).unwrap(), &after, KEY).unwrap();
        buf.resize(buf.len() + 32, 0);

        for bit in at * 8..target_end * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let mut d = FrameDecoder::new(&b, KEY);
            let first = d.next_frame();
            prop_assert!(matches!(first, Frame::Entry(e) if e.offset == offset - 1));
            let hit = d.next_frame();
            prop_assert!(
                matches!(hit, Frame::Corrupt { at: a, .. } if a == at),
                "bit {} of the frame gave {:?}", bit - at * 8, hit
            );
        }
    }

    /// Every truncation inside a frame is a torn write at that frame.
    #[test]
    fn every_truncation_is_torn(
        before in prop::collection::vec(any::<u8>(), 0..=64),
        payload in prop::collection::vec(any::<u8>(), 0..=300),
        offset in 1u64..MAX_OFFSET - 2,
    ) {
        let mut buf = Vec::new();
        encode_frame(&mut buf, offset - 1, FrameKind::single(), &before, KEY).unwrap();
        let at = buf.len();
        encode_frame(&mut buf, offset, FrameKind::single(), &payload, KEY).unwrap();
        prop_assert_eq!(buf.len(), at + frame_len(payload.len()));
        for cut in at + 1..buf.len() {
            let mut d = FrameDecoder::new(&buf[..cut], KEY);
            prop_assert!(matches!(d.next_frame(), Frame::Entry(_)));
            let hit = d.next_frame();
            prop_assert_eq!(hit, Frame::Torn { at }, "cut {} bytes into the frame", cut - at);
        }
    }

    /// Arbitrary bytes never panic any decoder, and the frame decoder always terminates.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..=4096)) {
        let _ = SegmentHeader::decode(&bytes);
        let _ = BlockHeader::decode(&bytes, 0);
        let _ = SegmentHeader::decode_copy(&bytes);
        let _ = JournalHeader::decode_slots(&bytes);
        let _ = JournalRecordHeader::decode(&bytes, 7);
        let _ = CursorRecord::decode(&bytes);
        let _ = TierIndex::decode(&bytes);
        let mut steps = 0usize;
        for frame in FrameDecoder::new(&bytes, 0) {
            steps += 1;
            prop_assert!(steps <= bytes.len() / 24 + 2);
            if let Frame::Entry(e) = frame {
                prop_assert!(e.end() <= bytes.len());
            }
        }
    }

    /// A tiered block's index round-trips, and the byte range it gives for any offsets decodes
    /// to a run of whole frames covering exactly those offsets and at most a stride more.
    #[test]
    fn tier_index_ranges_cover_what_is_asked(
        (first, units) in units(8),
        stride in 1u32..=5,
        a in any::<prop::sample::Index>(),
        b in any::<prop::sample::Index>(),
    ) {
        let entries = layout(first, &units);
        // A data object's frames are not keyed (see `walrus_block::tier`).
        let (buf, _) = encode_keyed(&entries, 0);
        let idx = TierIndex::build("t", 1, first, &buf, stride).unwrap();
        prop_assert_eq!(idx.entries, entries.len() as u64);
        prop_assert_eq!(&TierIndex::decode(&idx.encode().unwrap()).unwrap(), &idx);
        let n = entries.len() as u64;
        let (x, y) = (a.index(n as usize) as u64, b.index(n as usize) as u64);
        let want = first + x.min(y)..first + x.max(y) + 1;
        let r = idx.byte_range(want.clone()).unwrap();
        let slice = &buf[r.start as usize..r.end as usize];
        let mut got = Vec::new();
        let mut frames = FrameDecoder::new(slice, 0);
        let end = loop {
            match frames.next_frame() {
                Frame::Entry(e) => got.push(e.offset),
                other => break other,
            }
        };
        prop_assert_eq!(end, Frame::End { at: slice.len() }, "the range cuts a frame");
        prop_assert!(got.first().is_some_and(|f| *f <= want.start && want.start - f < u64::from(stride)));
        prop_assert!(got.last().is_some_and(|l| *l + 1 >= want.end && *l + 1 - want.end < u64::from(stride)));
        prop_assert!(got.windows(2).all(|w| w[1] == w[0] + 1));
    }

    /// Random damage to a valid run of frames: whatever the decoder hands out is an entry that was
    /// written, at the position it was written; damage shows up as corruption or a torn tail.
    #[test]
    fn damage_never_forges_entries(
        (first, units) in units(8),
        hits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..=8),
    ) {
        let entries = layout(first, &units);
        let (mut buf, positions) = encode_all(&entries);
        buf.resize(buf.len() + 48, 0);
        for (idx, byte) in &hits {
            let i = idx.index(buf.len());
            buf[i] = *byte;
        }
        let mut d = FrameDecoder::new(&buf, KEY);
        loop {
            match d.next_frame() {
                Frame::Entry(e) => {
                    let k = positions.iter().position(|&p| p == e.pos);
                    prop_assert!(k.is_some(), "entry at unexpected position {}", e.pos);
                    let original = &entries[k.unwrap()];
                    prop_assert_eq!(e.offset, original.offset);
                    prop_assert_eq!(e.payload, &original.payload[..]);
                }
                Frame::Corrupt { reason, .. } => {
                    prop_assert!(reason != CorruptReason::Sequence);
                    break;
                }
                _ => break,
            }
        }
    }

    /// Entry data that holds whole frames of the same offsets, encoded by a writer without the
    /// key (unkeyed, or under another key): after damage anywhere, a resync finds only frames
    /// where they were written, never one inside entry data.
    #[test]
    fn a_resync_never_takes_a_frame_inside_entry_data(
        (first, units) in units(6),
        prefix in prop::collection::vec(any::<u8>(), 0..=16),
        other_key in prop_oneof![Just(0u32), any::<u32>()],
        hit in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        prop_assume!(other_key != KEY);
        let mut entries = layout(first, &units);
        // Each payload becomes a prefix, then the frames of every entry, keyed with `other_key`.
        let (inner, _) = encode_keyed(&entries, other_key);
        for e in &mut entries {
            e.payload = [&prefix[..], &inner].concat();
        }
        let (mut buf, positions) = encode_all(&entries);
        let i = hit.index(buf.len());
        buf[i] ^= byte | 1;
        let mut from = 0;
        while let Some(e) = resync(&buf, from, KEY) {
            prop_assert!(positions.contains(&e.pos), "a frame at {} taken", e.pos);
            from = e.pos + 1;
        }
    }
}
