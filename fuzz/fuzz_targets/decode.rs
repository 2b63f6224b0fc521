//! Fuzz target: any bytes through every decoder of the format. No input may panic, and every
//! entry the frame decoder hands out must carry a payload matching its checksum and lie inside
//! the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walrus_block::{
    BLOCK_HEADER_LEN, BlockHeader, CursorRecord, FRAME_HEADER_LEN, Frame, FrameDecoder,
    FrameHeader, JOURNAL_RECORD_HEADER_LEN, JOURNAL_WRITE_HEADER_LEN, JournalHeader,
    JournalRecordHeader, SegmentHeader, SequenceCheck, TierIndex, checksum::crc32c,
    decode_journal_body, rekey_frames, resync,
};

fuzz_target!(|data: &[u8]| {
    let _ = SegmentHeader::decode(data);
    let _ = SegmentHeader::decode_copy(data);
    let _ = JournalHeader::decode_slots(data);
    // Key 0: the plain CRC32C, which a fuzzer can satisfy (any key decodes alike).
    if let Ok(Some(h)) = JournalRecordHeader::decode(data, 0) {
        let body = data.get(JOURNAL_RECORD_HEADER_LEN..).unwrap_or(&[]);
        if let Ok(writes) = decode_journal_body(&h, body) {
            // The writes tile the body exactly, and every one lies inside the input.
            let tiled: usize = writes
                .iter()
                .map(|w| JOURNAL_WRITE_HEADER_LEN + w.bytes.len())
                .sum();
            assert_eq!(tiled, h.body_len as usize);
        }
    }
    if let Ok(Some(c)) = CursorRecord::decode(data) {
        assert!(!c.topic.is_empty() && c.topic.len() <= 255);
    }
    if let Ok(Some(h)) = BlockHeader::decode(data, 0) {
        assert!(!h.topic.is_empty() && h.topic.len() <= 255);
    }
    // A key solved from any header's bytes makes them check under it.
    if let Some((key, _)) = BlockHeader::solve_key(data) {
        let decoded = BlockHeader::decode(data, key);
        assert!(matches!(decoded, Ok(Some(_))), "solved key {key:#x} does not check");
        assert!(data.len() >= BLOCK_HEADER_LEN);
    }
    // Resynchronising from any byte finds, if anything, a whole entry inside the input at or
    // after it. (Frames with key 0 here, as a fuzzer can satisfy; any key decodes alike.)
    for from in [0, 1, data.len() / 2] {
        if let Some(e) = resync(data, from, 0) {
            assert!(e.pos >= from && e.end() <= data.len());
        }
    }
    if let Ok(i) = TierIndex::decode(data) {
        // What decodes, encodes back to the same bytes, and its ranges lie inside the data.
        assert_eq!(i.encode().expect("a decoded index encodes"), data);
        if let Some(r) = i.byte_range(i.first_offset..i.end_offset()) {
            assert!(r.start <= r.end && r.end <= i.data_len);
        }
    }
    let mut seq: Option<SequenceCheck> = None;
    // Frames that re-key, re-key back to the same bytes.
    let mut rekeyed = data.to_vec();
    if rekey_frames(&mut rekeyed, 0, 0x5eed).is_ok() {
        rekey_frames(&mut rekeyed, 0x5eed, 0).expect("re-keyed frames re-key back");
        assert_eq!(rekeyed, data);
    }
    for frame in FrameDecoder::new(data, 0) {
        if let Frame::Entry(e) = frame {
            let raw = &data[e.pos..e.pos + FRAME_HEADER_LEN];
            let header = FrameHeader::decode(raw, 0)
                .expect("entry header re-validates")
                .expect("non-zero");
            // What decodes, encodes back to the same bytes.
            assert_eq!(header.encode(0).expect("a decoded header encodes"), raw);
            assert_eq!(header.len as usize, e.payload.len());
            assert_eq!(
                crc32c(e.payload),
                header.payload_crc,
                "entry fails its checksum"
            );
            assert!(e.end() <= data.len());
            let s = seq.get_or_insert(SequenceCheck::new(e.offset));
            let _ = s.check(e.offset, e.kind);
        }
    }
});
