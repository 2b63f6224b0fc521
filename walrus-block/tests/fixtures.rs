//! Golden fixtures: segment files (format v4), a tier index and a journal file (version 2)
//! written by this version of the formats, checked in under `tests/fixtures/`, and the files of
//! the versions before (segment v3 and v2, journal v1), which this version still reads. The expected
//! contents below are spelled out literally, not recomputed by the encoder, so any change to a
//! format — in encoding or decoding — fails this test.
//!
//! To regenerate after an *intended* format change (which also needs a new FORMAT_VERSION, or
//! JOURNAL_VERSION for the journal, and keeps the older fixtures as they are):
//! `WALRUS_BLESS=1 cargo test -p walrus-block --test fixtures`.

use std::path::PathBuf;

use walrus_block::{
    BLOCK_HEADER_LEN, BlockHeader, CorruptReason, FORMAT_VERSION, Frame, FrameDecoder, FrameKind,
    JOURNAL_DATA_OFFSET, JOURNAL_RECORD_HEADER_LEN, JOURNAL_VERSION, JournalHeader,
    JournalRecordHeader, SEGMENT_DATA_OFFSET, SEGMENT_HEADER_COPY_AT, SegmentHeader, TierIndex,
    decode_journal_body, encode_frame, encode_journal_record_header, encode_journal_write,
    rekey_frames,
};

/// The fixture segment's key (any value: a real segment draws one at random).
const SEGMENT_KEY: u32 = 0x5eed_cafe;
/// The fixture journal's key.
const JOURNAL_KEY: u32 = 0x0bad_f00d;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// What one fixture block holds: topic, chain position, entries (offset, first?, left, payload).
struct ExpectedBlock {
    topic: &'static str,
    chain_seq: u64,
    first_offset: u64,
    prev_end: u64,
    block_len: u64,
    entries: Vec<(u64, bool, u16, Vec<u8>)>,
}

/// The fixture segment of format v4 (`keyed`: frames keyed with the segment's key) or v3.
fn expected_segment(keyed: bool) -> (SegmentHeader, Vec<ExpectedBlock>) {
    let seg = SegmentHeader {
        segment_id: 7,
        block_len: 4096,
        key: SEGMENT_KEY,
        synced: false,
        keyed_frames: keyed,
    };
    let blocks = vec![
        ExpectedBlock {
            topic: "orders",
            chain_seq: 0,
            first_offset: 0,
            prev_end: 0,
            block_len: 4096,
            entries: vec![
                (0, true, 0, b"hello".to_vec()),
                (1, true, 2, b"a".to_vec()),
                (2, false, 1, b"bb".to_vec()),
                (3, false, 0, Vec::new()),
                (4, true, 0, b"walrus".to_vec()),
            ],
        },
        ExpectedBlock {
            topic: "événements",
            chain_seq: 3,
            first_offset: 1000,
            prev_end: 990,
            block_len: 8192,
            entries: vec![
                (
                    1000,
                    true,
                    0,
                    (0..700u32).map(|i| (i * 7 % 251) as u8).collect(),
                ),
                (1001, true, 0, b"last".to_vec()),
            ],
        },
    ];
    (seg, blocks)
}

/// Builds the segment file bytes with the encoder (used to bless, and to prove the encoder still
/// produces the checked-in bytes), of format v4 (`keyed`) or v3.
fn build_segment(keyed: bool) -> Vec<u8> {
    let (seg, blocks) = expected_segment(keyed);
    let mut file = seg.encode_page();
    assert_eq!(file.len(), SEGMENT_DATA_OFFSET as usize);
    for b in &blocks {
        let start = file.len();
        let header = BlockHeader {
            topic: b.topic.into(),
            segment_id: seg.segment_id,
            chain_seq: b.chain_seq,
            first_offset: b.first_offset,
            prev_end: b.prev_end,
            block_len: b.block_len,
            abandoned: false,
            keyed_frames: keyed,
        };
        file.extend_from_slice(&header.encode(seg.key).unwrap());
        let frame_key = header.frame_key(seg.key);
        let mut frames = Vec::new();
        let mut i = 0;
        while i < b.entries.len() {
            let unit = 1 + b.entries[i].2 as usize;
            for k in 0..unit {
                let (offset, _, _, payload) = &b.entries[i + k];
                encode_frame(
                    &mut frames,
                    *offset,
                    FrameKind::batch(k, unit).unwrap(),
                    payload,
                    frame_key,
                )
                .unwrap();
            }
            i += unit;
        }
        file.extend_from_slice(&frames);
        file.resize(start + b.block_len as usize, 0);
    }
    file
}

/// Three single entries; the second one's payload has one flipped bit.
fn build_corrupt_middle() -> Vec<u8> {
    let mut buf = Vec::new();
    for (i, p) in [&b"first"[..], b"second", b"third"].iter().enumerate() {
        encode_frame(&mut buf, i as u64, FrameKind::single(), p, 0).unwrap();
    }
    buf[29 + 24] ^= 0x10; // frame 2 starts at 29 (24 + 5); flip a bit in its payload
    buf.resize(buf.len() + 24, 0);
    buf
}

/// One entry, then a batch of two whose second frame was cut off after 30 of its 34 bytes.
fn build_torn_tail() -> Vec<u8> {
    let mut buf = Vec::new();
    encode_frame(&mut buf, 0, FrameKind::single(), b"kept", 0).unwrap();
    encode_frame(
        &mut buf,
        1,
        FrameKind::batch(0, 2).unwrap(),
        b"batch-one",
        0,
    )
    .unwrap();
    encode_frame(
        &mut buf,
        2,
        FrameKind::batch(1, 2).unwrap(),
        b"batch-two!",
        0,
    )
    .unwrap();
    buf.truncate(buf.len() - 4);
    buf
}

fn check_or_bless(name: &str, built: &[u8]) -> Vec<u8> {
    let path = fixture(name);
    if std::env::var_os("WALRUS_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, built).unwrap();
    }
    let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        golden == built,
        "encoder output differs from golden fixture {name}"
    );
    golden
}

#[test]
fn segment_fixture_decodes() {
    let golden = check_or_bless("segment_v4.bin", &build_segment(true));
    let (seg, blocks) = expected_segment(true);
    assert_eq!(FORMAT_VERSION, 4);
    // Spot-check raw bytes so that FORMAT.md's worked example stays true.
    assert_eq!(&golden[0..8], b"WALRUSSG");
    assert_eq!(&golden[8..12], &[4, 0, 1, 0]);
    let crc = walrus_block::checksum::crc32c(&golden[..32]);
    assert_eq!(&golden[32..36], &crc.to_le_bytes());
    assert_eq!(&golden[36..40], &SEGMENT_KEY.to_le_bytes());
    let crc = walrus_block::checksum::crc32c(&golden[..40]);
    assert_eq!(&golden[40..44], &crc.to_le_bytes());
    // The copy, in the page's fifth sector; zeros around both.
    assert_eq!(SEGMENT_HEADER_COPY_AT, 2048);
    assert_eq!(golden[2048..2092], golden[0..44]);
    assert!(golden[44..2048].iter().all(|&b| b == 0));
    assert!(golden[2092..4096].iter().all(|&b| b == 0));
    // The block header's CRC starts from the key; its flags say its frames are keyed.
    let crc = walrus_block::checksum::crc32c_append(SEGMENT_KEY, &golden[4096..4096 + 304]);
    assert_eq!(&golden[4096 + 304..4096 + 308], &crc.to_le_bytes());
    assert_eq!(golden[4096 + 5], 0x02);
    // So does the first frame's header CRC (FORMAT.md's example frame).
    let f = 4096 + BLOCK_HEADER_LEN;
    let crc = walrus_block::checksum::crc32c_append(SEGMENT_KEY, &golden[f..f + 20]);
    assert_eq!(&golden[f + 20..f + 24], &crc.to_le_bytes());
    assert_eq!(SegmentHeader::decode_copy(&golden), Some(seg));
    check_segment(&golden, seg, &blocks);
    // Its frames are not frames of a segment of format v3.
    assert!(matches!(
        FrameDecoder::new(&golden[f..], 0).next_frame(),
        Frame::Corrupt { .. }
    ));
}

/// A segment of format v3 (written by the build before keyed frames): its blocks' frames are
/// read unkeyed; the encoder still makes its bytes (a v3 header stays v3, and the blocks such a
/// segment hands out keep unkeyed frames).
#[test]
fn a_version_3_segment_still_decodes() {
    let golden = std::fs::read(fixture("segment_v3.bin")).unwrap();
    assert_eq!(golden, build_segment(false));
    assert_eq!(&golden[8..12], &[3, 0, 1, 0]);
    assert_eq!(golden[4096 + 5], 0);
    let (seg, blocks) = expected_segment(false);
    check_segment(&golden, seg, &blocks);
    // Only the page of headers, the block headers and the frame headers differ from v4's.
    let v4 = build_segment(true);
    let f = 4096 + BLOCK_HEADER_LEN;
    assert_eq!(golden[f + 24..f + 29], v4[f + 24..f + 29]);
    assert_ne!(golden[f..f + 24], v4[f..f + 24]);
}

/// A segment of format v2 (written by the build before keys): read with key 0, no copy.
#[test]
fn a_version_2_segment_still_decodes() {
    let golden = std::fs::read(fixture("segment_v2.bin")).unwrap();
    let (seg, blocks) = expected_segment(false);
    assert_eq!(&golden[8..12], &[2, 0, 1, 0]);
    let v2 = SegmentHeader { key: 0, ..seg };
    assert_eq!(SegmentHeader::decode_copy(&golden), None);
    check_segment(&golden, v2, &blocks);
    // Its frames are v3's byte for byte: only the page of headers and the block headers differ.
    let v3 = build_segment(false);
    assert_eq!(golden.len(), v3.len());
    let header_len = SEGMENT_DATA_OFFSET as usize + BLOCK_HEADER_LEN;
    assert_eq!(golden[header_len..4096 * 2], v3[header_len..4096 * 2]);
    // Its blocks are not blocks of a keyed segment.
    assert!(BlockHeader::decode(&golden[4096..], SEGMENT_KEY).is_err());
    assert!(BlockHeader::decode(&v3[4096..], 0).is_err());
}

/// Checks a segment file's header and blocks against the expected ones.
fn check_segment(golden: &[u8], seg: SegmentHeader, blocks: &[ExpectedBlock]) {
    assert_eq!(golden.len(), 4096 + 4096 + 8192);
    assert_eq!(&golden[0..8], b"WALRUSSG");
    assert_eq!(&golden[4096..4100], b"WBLK");
    assert_eq!(golden[4096 + BLOCK_HEADER_LEN], 0x57);

    assert_eq!(SegmentHeader::decode(golden).unwrap(), Some(seg));
    let mut pos = SEGMENT_DATA_OFFSET as usize;
    for b in blocks {
        let h = BlockHeader::decode(&golden[pos..], seg.key)
            .unwrap()
            .unwrap();
        assert_eq!(h.topic, b.topic);
        assert_eq!((h.segment_id, h.chain_seq), (seg.segment_id, b.chain_seq));
        assert_eq!((h.first_offset, h.block_len), (b.first_offset, b.block_len));
        assert_eq!(h.prev_end, b.prev_end);
        assert_eq!(h.keyed_frames, seg.keyed_frames);
        let data = &golden[pos + BLOCK_HEADER_LEN..pos + h.block_len as usize];
        let mut d = FrameDecoder::new(data, h.frame_key(seg.key));
        for (offset, first, left, payload) in &b.entries {
            let Frame::Entry(e) = d.next_frame() else {
                panic!("missing entry {offset}")
            };
            assert_eq!(e.offset, *offset);
            assert_eq!((e.kind.is_first(), e.kind.batch_left()), (*first, *left));
            assert_eq!(e.payload, &payload[..]);
        }
        assert!(matches!(d.next_frame(), Frame::End { .. }));
        pos += h.block_len as usize;
    }
    assert_eq!(pos, golden.len());
}

#[test]
fn corrupt_middle_fixture() {
    let golden = check_or_bless("corrupt_middle_v2.bin", &build_corrupt_middle());
    let mut d = FrameDecoder::new(&golden, 0);
    assert!(matches!(d.next_frame(), Frame::Entry(e) if e.payload == b"first"));
    assert_eq!(
        d.next_frame(),
        Frame::Corrupt {
            at: 29,
            reason: CorruptReason::PayloadChecksum
        }
    );
}

#[test]
fn torn_tail_fixture() {
    let golden = check_or_bless("torn_tail_v2.bin", &build_torn_tail());
    let mut d = FrameDecoder::new(&golden, 0);
    assert!(matches!(d.next_frame(), Frame::Entry(e) if e.payload == b"kept"));
    assert!(
        matches!(d.next_frame(), Frame::Entry(e) if e.payload == b"batch-one" && !e.kind.is_last())
    );
    assert_eq!(d.next_frame(), Frame::Torn { at: 28 + 33 });
}

/// A tiered block's index object (`walrus_block::tier`): the index of the fixture segment's
/// first block, a point every 2 entries. The header bytes are spelled out. The data object is
/// the block's frames re-keyed to 0: the v3 segment's frames, byte for byte.
#[test]
fn tier_index_fixture() {
    let segment = build_segment(true);
    let at = SEGMENT_DATA_OFFSET as usize + BLOCK_HEADER_LEN;
    // The block's frames and nothing after them: what the data object holds.
    let mut d = FrameDecoder::new(&segment[at..at + 4096 - BLOCK_HEADER_LEN], SEGMENT_KEY);
    let end = loop {
        match d.next_frame() {
            Frame::Entry(_) => {}
            Frame::End { at } => break at,
            other => panic!("{other:?}"),
        }
    };
    let mut data = segment[at..at + end].to_vec();
    assert!(TierIndex::build("orders", 0, 0, &data, 2).is_err());
    rekey_frames(&mut data, SEGMENT_KEY, 0).unwrap();
    assert_eq!(data, build_segment(false)[at..at + end]);
    let data = &data[..];
    let mut index = TierIndex::build("orders", 0, 0, data, 2).unwrap();
    index.sealed_ms = 1_796_000_000_000;
    let golden = check_or_bless("tier_index_v1.bin", &index.encode().unwrap());
    assert_eq!(&golden[0..4], b"WTIX");
    assert_eq!(&golden[4..6], &[1, 0]);
    assert_eq!(golden[6], 6);
    assert_eq!(&golden[7..13], b"orders");
    // segment 0, first_offset 0, entries 5.
    assert_eq!(&golden[13..29], &[0; 16]);
    assert_eq!(&golden[29..37], &5u64.to_le_bytes());
    assert_eq!(&golden[37..45], &(data.len() as u64).to_le_bytes());
    assert_eq!(&golden[45..53], &1_796_000_000_000u64.to_le_bytes());
    assert_eq!(golden.len(), 53 + 4 + 4 + 4 + 3 * 8 + 4);
    let decoded = TierIndex::decode(&golden).unwrap();
    assert_eq!(decoded, index);
    assert_eq!(decoded.points[0], 0);
    assert_eq!(decoded.data_crc, walrus_block::checksum::crc32c(data));
}

/// One journal record of the fixture: its generation and seq, and its writes (segment,
/// position, bytes).
type ExpectedRecord = (u64, u64, Vec<(u64, u64, Vec<u8>)>);

/// The journal fixture's records, in file order: two live records of generation 3, then one
/// left over from generation 2 (stale: it ends the live ones).
fn expected_journal_records() -> Vec<ExpectedRecord> {
    vec![
        (
            3,
            0,
            vec![
                (7, 4096, b"first write".to_vec()),
                (
                    9,
                    8192 + 300,
                    (0..600u32).map(|i| (i % 253) as u8).collect(),
                ),
            ],
        ),
        (3, 1, vec![(7, 4096 + 11, b"second".to_vec())]),
        (2, 2, vec![(7, 4096, b"retired".to_vec())]),
    ]
}

/// A journal file: generation 2 in slot 0, generation 3 (live) in slot 1, the records from
/// byte 4096, each at a multiple of 512.
fn build_journal() -> Vec<u8> {
    let mut file = vec![0u8; JOURNAL_DATA_OFFSET as usize];
    for generation in [2, 3] {
        let at = JournalHeader::slot_of(generation) as usize;
        let h = JournalHeader {
            generation,
            key: JOURNAL_KEY,
        }
        .encode();
        file[at..at + h.len()].copy_from_slice(&h);
    }
    for (generation, seq, writes) in expected_journal_records() {
        let mut body = Vec::new();
        for (segment, position, bytes) in &writes {
            encode_journal_write(&mut body, *segment, *position, &[bytes]).unwrap();
        }
        file.extend_from_slice(
            &encode_journal_record_header(generation, seq, JOURNAL_KEY, &body).unwrap(),
        );
        file.extend_from_slice(&body);
        file.resize(file.len().next_multiple_of(512), 0);
    }
    file
}

/// The journal (FORMAT.md, "The journal"): header slots, record headers and bodies, byte for
/// byte, and which records are live.
#[test]
fn journal_fixture_decodes() {
    let golden = check_or_bless("journal_v2.bin", &build_journal());
    assert_eq!(JOURNAL_VERSION, 2);
    check_journal(&golden, 2, JOURNAL_KEY);
}

/// A journal of version 1 (written by the build before keys): read with key 0.
#[test]
fn a_version_1_journal_still_decodes() {
    let golden = std::fs::read(fixture("journal_v1.bin")).unwrap();
    check_journal(&golden, 1, 0);
    // Its records are not records of a keyed journal.
    let r = JOURNAL_DATA_OFFSET as usize;
    assert!(JournalRecordHeader::decode(&golden[r..], JOURNAL_KEY).is_err());
}

/// Checks a journal file of `version` and `key` against the expected records.
fn check_journal(golden: &[u8], version: u8, key: u32) {
    // 4096 of header space; records of 36 + 2 × 20 + 11 + 600, 36 + 20 + 6 and 36 + 20 + 7
    // bytes, each rounded up to 512.
    assert_eq!(golden.len(), 4096 + 1024 + 512 + 512);
    // Slot 0: generation 2; slot 1: generation 3. Spelled out as FORMAT.md draws them.
    for (slot, generation) in [(0usize, 2u8), (512, 3)] {
        assert_eq!(&golden[slot..slot + 8], b"WALRUSJL");
        assert_eq!(&golden[slot + 8..slot + 12], &[version, 0, 0, 0]);
        assert_eq!(&golden[slot + 12..slot + 16], &key.to_le_bytes());
        assert_eq!(
            &golden[slot + 16..slot + 24],
            &[generation, 0, 0, 0, 0, 0, 0, 0]
        );
        let crc = walrus_block::checksum::crc32c(&golden[slot..slot + 24]);
        assert_eq!(&golden[slot + 24..slot + 28], &crc.to_le_bytes());
        assert!(golden[slot + 28..slot + 512].iter().all(|&b| b == 0));
    }
    assert!(golden[1024..4096].iter().all(|&b| b == 0));
    assert_eq!(
        JournalHeader::decode_slots(&golden[..1024]).unwrap(),
        Some(JournalHeader { generation: 3, key })
    );
    // The first record's header and its first write's header.
    let r = 4096;
    assert_eq!(&golden[r..r + 8], b"WJRC\0\0\0\0");
    assert_eq!(&golden[r + 8..r + 16], &3u64.to_le_bytes());
    assert_eq!(&golden[r + 16..r + 24], &0u64.to_le_bytes());
    assert_eq!(
        &golden[r + 24..r + 28],
        &(2 * 20 + 11 + 600u32).to_le_bytes()
    );
    let body = &golden[r + 36..r + 36 + 651];
    let crc = walrus_block::checksum::crc32c(body);
    assert_eq!(&golden[r + 28..r + 32], &crc.to_le_bytes());
    let crc = walrus_block::checksum::crc32c_append(key, &golden[r..r + 32]);
    assert_eq!(&golden[r + 32..r + 36], &crc.to_le_bytes());
    assert_eq!(&body[0..8], &7u64.to_le_bytes());
    assert_eq!(&body[8..16], &4096u64.to_le_bytes());
    assert_eq!(&body[16..20], &11u32.to_le_bytes());
    assert_eq!(&body[20..31], b"first write");

    // Decoded in file order; the live ones are generation 3's, seq 0, 1, … up to the first
    // record that is not.
    let mut at = JOURNAL_DATA_OFFSET as usize;
    let mut live = 0;
    for (generation, seq, writes) in expected_journal_records() {
        let h = JournalRecordHeader::decode(&golden[at..], key)
            .unwrap()
            .unwrap();
        assert_eq!((h.generation, h.seq), (generation, seq));
        let start = at + JOURNAL_RECORD_HEADER_LEN;
        let decoded = decode_journal_body(&h, &golden[start..]).unwrap();
        let decoded: Vec<(u64, u64, Vec<u8>)> = decoded
            .iter()
            .map(|w| (w.segment_id, w.position, w.bytes.to_vec()))
            .collect();
        assert_eq!(decoded, writes);
        if h.generation == 3 && h.seq == live {
            live += 1;
        }
        at += h.span() as usize;
    }
    assert_eq!(
        live, 2,
        "the stale record of generation 2 ends the live ones"
    );
    assert_eq!(at, golden.len());
    assert_eq!(JournalRecordHeader::decode(&[0u8; 36], key).unwrap(), None);
}
