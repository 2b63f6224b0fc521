//! The group-commit journal seen by a read-only open (`walrus inspect`, `verify`): after a
//! power cut that took the segment writes the journal holds, a read-only open serves every
//! acknowledged entry, with the journal's writes laid over the segments in memory, and writes
//! nothing.

use std::sync::Arc;

use walrus_io::{CrashMode, SimStorage, Storage};
use walrus_topic::{Engine, Store, StoreOptions, SyncPolicy};

const DIR: &str = "/wal";

fn options() -> StoreOptions {
    StoreOptions::new()
        .with_block_len(8192)
        .with_segment_len(1 << 20)
        .with_journal(true)
}

fn payload(t: u64, i: u64) -> Vec<u8> {
    let len = 200 + ((t * 7 + i) * 37 % 600) as usize;
    (0..len)
        .map(|k| (i as usize * 31 + t as usize + k) as u8)
        .collect()
}

/// Appends entry `i` to topics `t0` and `t1` before waiting on either: both topics' writes in
/// one group sync, a journal record.
fn append_pair(engine: &Engine, i: u64) -> Vec<walrus_topic::DurableTicket> {
    (0..2)
        .map(|t| {
            engine
                .append_with_ticket(&format!("t{t}"), &payload(t, i))
                .unwrap()
        })
        .collect()
}

/// 20 pairs appended (each group a journal record), every ticket waited on, then a power cut.
fn journaled_pairs_then_power_cut(sim: &SimStorage) {
    let storage = Arc::new(sim.clone()) as Arc<dyn Storage>;
    let engine = Engine::open(DIR, storage, options(), SyncPolicy::Each).unwrap();
    for i in 0..20 {
        for ticket in append_pair(&engine, i) {
            ticket.wait().unwrap();
        }
    }
    sim.crash(CrashMode::DropUnsynced);
}

#[test]
fn a_read_only_open_after_a_power_cut_serves_what_only_the_journal_holds() {
    let sim = SimStorage::new(21);
    let storage = || Arc::new(sim.clone()) as Arc<dyn Storage>;
    {
        let engine = Engine::open(DIR, storage(), options(), SyncPolicy::Each).unwrap();
        for i in 0..20 {
            for (t, ticket) in append_pair(&engine, i).into_iter().enumerate() {
                assert_eq!(ticket.wait().unwrap(), i..i + 1, "t{t}");
            }
        }
        sim.crash(CrashMode::DropUnsynced);
    }
    let files = sim.files();
    let before: Vec<Vec<u8>> = files.iter().map(|p| sim.contents(p).unwrap()).collect();
    {
        let reader = Store::open_read_only(DIR, storage(), options()).unwrap();
        for t in 0..2 {
            let topic = format!("t{t}");
            assert_eq!(reader.end_offset(&topic).unwrap(), 20, "{topic}");
            for i in 0..20 {
                let got = reader.read_at(&topic, i).unwrap();
                assert!(got == Some(payload(t, i)), "{topic}@{i} lost or changed");
            }
        }
    }
    assert_eq!(sim.files(), files);
    let after: Vec<Vec<u8>> = files.iter().map(|p| sim.contents(p).unwrap()).collect();
    assert!(after == before, "the read-only open wrote");
    // The segments alone lack them: without the journal file the same open does not find
    // all 20 (it refuses the damage below the watermark, or ends the topics early).
    storage()
        .remove(std::path::Path::new("/wal/journal.wjnl"))
        .unwrap();
    let alone = Store::open_read_only(DIR, storage(), options()).map(|s| {
        (
            s.end_offset("t0").unwrap_or(0),
            s.end_offset("t1").unwrap_or(0),
        )
    });
    assert!(
        !matches!(alone, Ok((20, 20))),
        "the segments held everything: the test did not exercise the journal"
    );
}

/// A segment file whose length did not survive a power cut whole (one never data-synced keeps
/// only the sectors that landed: here, its header's) is extended to its full length when
/// recovery resumes allocation in it. Otherwise writes past its short end, made by a later run
/// whose journal holds them, made the journal's replay refuse the directory after the next
/// power cut.
#[test]
fn a_segment_left_short_is_extended_before_appends_go_into_it() {
    use walrus_block::SegmentHeader;
    let sim = SimStorage::new(22);
    let storage = || Arc::new(sim.clone()) as Arc<dyn Storage>;
    sim.create_dir_all(std::path::Path::new(DIR)).unwrap();
    let path = std::path::PathBuf::from(format!("{DIR}/00000000000000000000.wseg"));
    let header = SegmentHeader {
        segment_id: 0,
        block_len: 8192,
        key: 0x600d_5eed,
        synced: true,
        keyed_frames: true,
    }
    .encode_page();
    let f = sim.create(&path, header.len() as u64).unwrap();
    f.write_at(&header, 0).unwrap();
    f.sync_data().unwrap();
    sim.sync_dir(std::path::Path::new(DIR)).unwrap();
    drop(f);
    journaled_pairs_then_power_cut(&sim);
    let store = Store::open(DIR, storage(), options()).unwrap();
    for t in 0..2 {
        for i in 0..20 {
            assert_eq!(
                store.read_at(&format!("t{t}"), i).unwrap(),
                Some(payload(t, i)),
                "t{t}@{i}"
            );
        }
    }
}

/// A refused open writes nothing, also when the journal holds records to apply: recovery
/// decides on the segments with the records laid over them in memory first, and applies them
/// only to an open that goes on.
#[test]
fn an_open_refused_after_a_power_cut_applies_no_journal_record() {
    let sim = SimStorage::new(22);
    let storage = || Arc::new(sim.clone()) as Arc<dyn Storage>;
    journaled_pairs_then_power_cut(&sim);
    // A foreign file: every open refuses the directory.
    let foreign = std::path::Path::new("/wal/notes.txt");
    storage().create(foreign, 0).unwrap();
    let files = sim.files();
    let before: Vec<Vec<u8>> = files.iter().map(|p| sim.contents(p).unwrap()).collect();
    let e = Store::open(DIR, storage(), options())
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    assert_eq!(sim.files(), files);
    let after: Vec<Vec<u8>> = files.iter().map(|p| sim.contents(p).unwrap()).collect();
    assert!(after == before, "the refused open wrote");
    storage().remove(foreign).unwrap();
    let store = Store::open(DIR, storage(), options()).unwrap();
    for t in 0..2 {
        let topic = format!("t{t}");
        for i in 0..20 {
            assert!(
                store.read_at(&topic, i).unwrap() == Some(payload(t, i)),
                "{topic}@{i}"
            );
        }
    }
}

/// A journal record damaged after its sync (a later record of its generation follows it) is
/// refused in every mode, writing nothing; so is a journal whose two header slots were zeroed
/// with records behind them. Replay stopped at either as at a torn last record: the records
/// after it (acknowledged entries the segments may lack) were retired unapplied.
#[test]
fn a_damaged_record_or_header_with_records_after_it_is_refused() {
    use walrus_topic::RecoveryMode;
    let path = std::path::Path::new("/wal/journal.wjnl");
    // (where to damage, how many bytes, what the refusal says)
    let damages: [(u64, usize, &str); 2] = [
        (
            4096 + walrus_block::JOURNAL_RECORD_HEADER_LEN as u64 + 10,
            1,
            "follows it",
        ),
        (0, 1024, "both header slots are zero"),
    ];
    for (seed, (at, len, says)) in (24..).zip(damages) {
        let sim = SimStorage::new(seed);
        let storage = || Arc::new(sim.clone()) as Arc<dyn Storage>;
        journaled_pairs_then_power_cut(&sim);
        let j = sim.open(path).unwrap();
        let mut bytes = vec![0u8; len];
        j.read_exact_at(&mut bytes, at).unwrap();
        let damaged: Vec<u8> = if len == 1 {
            vec![bytes[0] ^ 0x10]
        } else {
            vec![0; len]
        };
        j.write_at(&damaged, at).unwrap();
        j.sync_data().unwrap();
        let files = sim.files();
        let before: Vec<Vec<u8>> = files.iter().map(|p| sim.contents(p).unwrap()).collect();
        for mode in [
            RecoveryMode::AbsoluteConsistency,
            RecoveryMode::TolerateCorruptedTail,
            RecoveryMode::PointInTime,
            RecoveryMode::SkipCorrupted,
        ] {
            for read_only in [false, true] {
                let options = options().with_recovery(mode);
                let opened = if read_only {
                    Store::open_read_only(DIR, storage(), options)
                } else {
                    Store::open(DIR, storage(), options)
                };
                let e = opened.map(|_| ()).unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{mode:?}: {e}");
                assert!(e.to_string().contains(says), "{mode:?}: {e}");
            }
        }
        assert_eq!(sim.files(), files);
        let after: Vec<Vec<u8>> = files.iter().map(|p| sim.contents(p).unwrap()).collect();
        assert!(after == before, "a refused open wrote");
    }
}

/// A journal cut short (its header valid, the file shorter than a journal is) is refused
/// before recovery writes anything: here a torn tail it would have erased stays.
#[test]
fn a_journal_cut_short_is_refused_before_recovery_writes() {
    let sim = SimStorage::new(23);
    let storage = || Arc::new(sim.clone()) as Arc<dyn Storage>;
    {
        let store = Store::open(DIR, storage(), options()).unwrap();
        store.append("t", b"entry").unwrap();
        store.sync().unwrap();
    }
    // A torn tail after the entry: unsynced bytes a power cut kept.
    let segment = sim
        .files()
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "wseg"))
        .unwrap();
    let seg = sim.open(&segment).unwrap();
    let mut data = vec![0u8; 1 << 20];
    let n = seg.read_at(&mut data, 0).unwrap();
    let end = data[..n].iter().rposition(|&b| b != 0).unwrap() as u64 + 1;
    seg.write_at(&[0x5A; 100], end + 64).unwrap();
    seg.sync_data().unwrap();
    // The journal cut to its first page.
    let path = std::path::Path::new("/wal/journal.wjnl");
    let head = {
        let j = sim.open(path).unwrap();
        let mut b = vec![0u8; 4096];
        j.read_exact_at(&mut b, 0).unwrap();
        b
    };
    storage().remove(path).unwrap();
    let j = storage().create(path, 0).unwrap();
    j.write_at(&head, 0).unwrap();
    j.sync_data().unwrap();
    storage().sync_dir(std::path::Path::new(DIR)).unwrap();
    let before = sim.contents(&segment).unwrap();
    let e = Store::open(DIR, storage(), options())
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("too short"), "{e}");
    assert!(
        sim.contents(&segment).unwrap() == before,
        "the refused open wrote"
    );
}

/// A topic's live block in a segment that allocation does not resume (a later one holds
/// blocks), whose file a power cut left shorter than that block (never synced whole): the
/// open that resumes the block gives the file its length back, durably, so appends the
/// journal holds after it are applied again by the next open, not refused as writes past the
/// file's end.
#[test]
fn a_live_block_in_a_short_segment_takes_journaled_appends_that_survive() {
    let sim = SimStorage::new(24);
    let storage = || Arc::new(sim.clone()) as Arc<dyn Storage>;
    let plain = || {
        options()
            .with_journal(false)
            .with_segment_len(64 << 10)
            .with_lanes(1)
    };
    {
        // "b" fills 7 blocks of segment 0 (a 4 KiB one, then 8 KiB ones of 3 entries), "a"
        // takes the last 4 KiB block there, and "b" goes on in segment 1.
        let store = Store::open(DIR, storage(), plain()).unwrap();
        for i in 0..19u8 {
            store.append("b", &[i; 2000]).unwrap();
        }
        store.append("a", b"first of a").unwrap();
        for i in 19..40u8 {
            store.append("b", &[i; 2000]).unwrap();
        }
        store.sync().unwrap();
    }
    let mut segs: Vec<_> = sim
        .files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wseg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 2, "{segs:?}");
    // Segment 0 cut just after "a"'s entry, as if its length had never been synced.
    let whole = sim.contents(&segs[0]).unwrap();
    let at = whole.windows(10).position(|w| w == b"first of a").unwrap();
    storage().remove(&segs[0]).unwrap();
    let short = storage().create(&segs[0], 0).unwrap();
    short.write_at(&whole[..at + 10], 0).unwrap();
    short.sync_data().unwrap();
    storage().sync_dir(std::path::Path::new(DIR)).unwrap();
    {
        let store = Store::open(DIR, storage(), plain().with_journal(true)).unwrap();
        assert_eq!(store.append("a", &[7u8; 1000]).unwrap(), 1);
        store.append("b", b"beside").unwrap();
        store.sync().unwrap();
        sim.crash(CrashMode::DropUnsynced);
        std::mem::forget(store);
    }
    let store = Store::open(DIR, storage(), plain().with_journal(true))
        .unwrap_or_else(|e| panic!("reopen: {e}"));
    assert_eq!(store.read_at("a", 1).unwrap(), Some(vec![7u8; 1000]));
}
