//! Integration tests of the engine: appends, reads, cursors, batches, recovery and deletion, on
//! the simulated backend (crashes, faults) and on the real file system.

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::sync::Arc;

use walrus_io::hooked::{Hooked, Op};
use walrus_io::{CrashMode, Fault, FaultRule, OpKind, PwriteStorage, SimStorage, Storage};
use walrus_topic::{Action, Problem, RecoveryMode, Store, StoreOptions};

const DIR: &str = "/wal";

/// Small geometry so tests cross blocks and segments quickly: 8 KiB blocks, 64 KiB segments.
fn small() -> StoreOptions {
    StoreOptions::new()
        .with_block_len(8192)
        .with_segment_len(64 * 1024)
}

fn open(sim: &SimStorage, options: StoreOptions) -> io::Result<Store> {
    Store::open(DIR, Arc::new(sim.clone()) as Arc<dyn Storage>, options)
}

fn payload(i: u64) -> Vec<u8> {
    let len = 100 + (i * 37 % 900) as usize;
    (0..len).map(|k| (i as usize * 31 + k) as u8).collect()
}

fn segments(sim: &SimStorage) -> Vec<String> {
    sim.files()
        .into_iter()
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
        .filter(|n| n.ends_with(".wseg"))
        .collect()
}

/// The open that made `store` found nothing to report.
fn assert_clean(store: &Store) {
    assert!(
        store.recovery_report().issues.is_empty(),
        "{:?}",
        store.recovery_report()
    );
}

fn drain(store: &Store, topic: &str) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(e) = store.read_next(topic, true).unwrap() {
        out.push(e);
    }
    out
}

#[test]
fn append_read_peek_batch_commit() {
    let sim = SimStorage::new(1);
    let store = open(&sim, small()).unwrap();
    assert_eq!(store.read_next("t", true).unwrap(), None);
    assert_eq!(store.append("t", b"zero").unwrap(), 0);
    assert_eq!(
        store.append_batch("t", &[b"one", b"two", b""]).unwrap(),
        1..4
    );
    // Peek does not move the cursor.
    assert_eq!(
        store.read_next("t", false).unwrap(),
        Some((0, b"zero".to_vec()))
    );
    assert_eq!(
        store.read_next("t", false).unwrap(),
        Some((0, b"zero".to_vec()))
    );
    assert_eq!(
        store.read_next("t", true).unwrap(),
        Some((0, b"zero".to_vec()))
    );
    assert_eq!(store.cursor("t"), Some(1));
    let batch = store.read_batch("t", 1, true).unwrap();
    assert_eq!(batch, vec![(1, b"one".to_vec())]); // at least one, then the byte limit
    let batch = store.read_batch("t", 1 << 20, true).unwrap();
    assert_eq!(batch, vec![(2, b"two".to_vec()), (3, Vec::new())]);
    assert!(store.read_batch("t", 1 << 20, true).unwrap().is_empty());
    assert_eq!(store.read_at("t", 2).unwrap(), Some(b"two".to_vec()));
    assert_eq!(store.read_at("t", 4).unwrap(), None);
    store.commit("t", 1).unwrap();
    assert_eq!(
        store.read_next("t", true).unwrap(),
        Some((1, b"one".to_vec()))
    );
    assert!(store.commit("t", 99).is_err());
    assert_eq!(store.end_offset("t"), Some(4));
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let sim = SimStorage::new(2);
    let store = open(&sim, small()).unwrap();
    let kind = |r: io::Result<u64>| r.unwrap_err().kind();
    assert_eq!(kind(store.append("", b"x")), io::ErrorKind::InvalidInput);
    assert_eq!(
        kind(store.append(&"x".repeat(256), b"x")),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        store.append_batch("t", &[]).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    let many: Vec<&[u8]> = vec![b"x"; 2001];
    assert_eq!(
        store.append_batch("t", &many).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    assert!(store.topics().is_empty());
    assert!(
        segments(&sim).is_empty(),
        "no segment file for refused input"
    );
    drop(store);
    // Geometry past what the format describes.
    for options in [
        small().with_segment_len(walrus_block::MAX_BLOCK_LEN + 4096),
        small().with_block_len(walrus_block::MAX_BLOCK_LEN + 4096),
    ] {
        let e = open(&sim, options).map(|_| ()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    }
}

#[test]
fn entries_cross_blocks_and_segments_and_survive_reopen() {
    let sim = SimStorage::new(3);
    {
        let store = open(&sim, small()).unwrap();
        for i in 0..300 {
            assert_eq!(store.append("a", &payload(i)).unwrap(), i);
        }
        let big = vec![7u8; 20_000]; // larger than a block: gets a block of its own
        assert_eq!(store.append("a", &big).unwrap(), 300);
        store.sync().unwrap();
    }
    assert!(segments(&sim).len() > 2);
    sim.crash(CrashMode::DropUnsynced);
    let store = open(&sim, small()).unwrap();
    assert_clean(&store);
    for i in 0..300 {
        assert_eq!(store.read_at("a", i).unwrap(), Some(payload(i)));
    }
    assert_eq!(store.read_at("a", 300).unwrap(), Some(vec![7u8; 20_000]));
    assert_eq!(store.append("a", b"next").unwrap(), 301);
}

#[test]
fn cursor_survives_reopen_strictly() {
    let sim = SimStorage::new(4);
    {
        let store = open(&sim, small().with_sync_cursor_writes(true)).unwrap();
        for i in 0..10 {
            store.append("t", &payload(i)).unwrap();
        }
        store.sync().unwrap();
        for i in 0..4 {
            assert_eq!(store.read_next("t", true).unwrap().unwrap().0, i);
        }
        // Power cut without a clean close: the cursor was synced with each read.
        sim.crash(CrashMode::DropUnsynced);
        std::mem::forget(store);
    }
    let store = open(&sim, small()).unwrap();
    assert_eq!(store.cursor("t"), Some(4));
    assert_eq!(store.read_next("t", true).unwrap().unwrap().0, 4);
}

#[test]
fn at_least_once_redelivers_at_most_n_minus_one() {
    let sim = SimStorage::new(5);
    {
        let store = open(
            &sim,
            small().with_persist_every(5).with_sync_cursor_writes(true),
        )
        .unwrap();
        for i in 0..20 {
            store.append("t", &payload(i)).unwrap();
        }
        store.sync().unwrap();
        for _ in 0..13 {
            store.read_next("t", true).unwrap();
        }
        sim.crash(CrashMode::DropUnsynced);
        std::mem::forget(store);
    }
    let store = open(&sim, small()).unwrap();
    let cursor = store.cursor("t").unwrap();
    assert!(
        (9..=13).contains(&cursor),
        "cursor {cursor}: at most 4 re-delivered"
    );
    assert_eq!(cursor, 10);
}

#[test]
fn torn_tail_is_cut_and_synced_data_kept() {
    let mut cut = 0;
    for seed in 0..20 {
        let sim = SimStorage::new(seed);
        let synced;
        {
            let store = open(&sim, small()).unwrap();
            for i in 0..50 {
                store.append("t", &payload(i)).unwrap();
            }
            store.sync().unwrap();
            synced = 50;
            for i in 50..80 {
                store.append("t", &payload(i)).unwrap();
            }
            store
                .append_batch("t", &[&payload(80), &payload(81), &payload(82)])
                .unwrap();
            sim.crash(if seed % 2 == 0 {
                CrashMode::TearLastWrite
            } else {
                CrashMode::DropUnsynced
            });
            std::mem::forget(store);
        }
        let store = open(&sim, small()).unwrap();
        let end = store.end_offset("t").unwrap();
        assert!(end >= synced, "seed {seed}: lost synced entries ({end})");
        assert!(
            end <= 80 || end == 83,
            "seed {seed}: batch half there ({end})"
        );
        cut += u64::from(end < 83);
        for i in 0..end {
            assert_eq!(
                store.read_at("t", i).unwrap(),
                Some(payload(i)),
                "seed {seed} offset {i}"
            );
        }
        // New appends continue cleanly, and a second reopen sees the same plus them.
        store.append("t", b"after").unwrap();
        store.sync().unwrap();
        drop(store);
        let store = open(
            &sim,
            small().with_recovery(RecoveryMode::AbsoluteConsistency),
        )
        .unwrap();
        assert_eq!(store.end_offset("t"), Some(end + 1), "seed {seed}");
        assert_eq!(store.read_at("t", end).unwrap(), Some(b"after".to_vec()));
    }
    assert!(cut > 0, "no seed tore the tail: nothing was cut");
}

#[test]
fn process_crash_keeps_everything_written() {
    let sim = SimStorage::new(9);
    {
        let store = open(&sim, small()).unwrap();
        for i in 0..200 {
            store.append("t", &payload(i)).unwrap();
        }
        sim.crash(CrashMode::KeepWritten);
        std::mem::forget(store);
    }
    let store = open(
        &sim,
        small().with_recovery(RecoveryMode::AbsoluteConsistency),
    )
    .unwrap();
    assert_eq!(store.end_offset("t"), Some(200));
    // What the kill left was in the page cache only; the reopen counted it as durable, so it
    // made it so: a power cut now takes none of it.
    drop(store);
    sim.crash(CrashMode::DropUnsynced);
    let store = open(
        &sim,
        small().with_recovery(RecoveryMode::AbsoluteConsistency),
    )
    .unwrap();
    assert_eq!(store.end_offset("t"), Some(200));
    for o in [0, 100, 199] {
        assert_eq!(store.read_at("t", o).unwrap(), Some(payload(o)), "@{o}");
    }
}

#[test]
fn failed_write_leaves_no_trace() {
    for fault in [Fault::Eio, Fault::Enospc, Fault::ShortWrite] {
        let sim = SimStorage::new(11);
        let store = open(&sim, small()).unwrap();
        for i in 0..10 {
            store.append("t", &payload(i)).unwrap();
        }
        sim.inject(FaultRule::new(fault).op(OpKind::Write));
        let err = store
            .append_batch("t", &[&payload(10), &payload(11)])
            .unwrap_err();
        assert!(err.to_string().contains("\"t\""), "{err}");
        if fault == Fault::Enospc {
            assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        }
        assert_eq!(store.end_offset("t"), Some(10));
        // Space comes back: appends work again and land where the failed one would have.
        assert_eq!(store.append("t", b"ok").unwrap(), 10);
        store.sync().unwrap();
        drop(store);
        let store = open(
            &sim,
            small().with_recovery(RecoveryMode::AbsoluteConsistency),
        )
        .unwrap();
        assert_eq!(store.end_offset("t"), Some(11));
        assert_eq!(store.read_at("t", 10).unwrap(), Some(b"ok".to_vec()));
    }
}

#[test]
fn failed_batch_across_blocks_leaves_no_trace() {
    let sim = SimStorage::new(12);
    let store = open(&sim, small()).unwrap();
    store.append("t", &payload(0)).unwrap();
    // A batch bigger than one block: it needs new blocks; fail its second write.
    let big: Vec<Vec<u8>> = (0..30).map(|i| payload(100 + i)).collect();
    let refs: Vec<&[u8]> = big.iter().map(Vec::as_slice).collect();
    sim.inject(FaultRule::new(Fault::Eio).op(OpKind::Write).nth(2));
    assert!(store.append_batch("t", &refs).is_err());
    assert_eq!(store.end_offset("t"), Some(1));
    assert_eq!(store.append_batch("t", &refs).unwrap(), 1..31);
    store.sync().unwrap();
    drop(store);
    let store = open(
        &sim,
        small().with_recovery(RecoveryMode::AbsoluteConsistency),
    )
    .unwrap();
    assert_eq!(store.end_offset("t"), Some(31));
    let all = drain(&store, "t");
    assert_eq!(all.len(), 31);
    assert_eq!(all[5].1, payload(104));
}

#[test]
fn failed_sync_poisons_writes() {
    let sim = SimStorage::new(13);
    let store = open(&sim, small()).unwrap();
    store.append("t", b"x").unwrap();
    sim.inject(FaultRule::new(Fault::Eio).op(OpKind::Sync));
    assert!(store.sync().is_err());
    let err = store.append("t", b"y").unwrap_err();
    assert!(err.to_string().contains("reopen"), "{err}");
    assert!(store.sync().is_err());
}

/// Where the watermarks are synced by the background maintenance (appends that wait for every
/// sync, with a maintenance pass), a failed sync of the watermark file is a failed sync like
/// any other: the store refuses writes until reopened. (Going on, the watermark on disk would
/// stop moving, and a later recovery would take damage to acknowledged, synced data above it for
/// a torn tail and cut it.)
#[test]
fn a_failed_watermark_sync_in_the_background_poisons_writes() {
    let sim = SimStorage::new(59);
    let store = open(
        &sim,
        small()
            .with_sync_cursor_writes(true)
            .with_background_maintenance(true)
            .with_mark_interval(std::time::Duration::ZERO),
    )
    .unwrap();
    store.append("t", b"x").unwrap();
    store.sync().unwrap();
    sim.inject(
        FaultRule::new(Fault::Eio)
            .op(OpKind::Sync)
            .path(format!("{DIR}/durable.wcur")),
    );
    let _ = store.maintain();
    assert_eq!(
        sim.stats().faults_fired,
        1,
        "the watermark file was not synced"
    );
    let err = store.append("t", b"y").unwrap_err();
    assert!(err.to_string().contains("reopen"), "{err}");
}

/// A sync that panics (a backend's bug) refuses every later write, as a failed one does: it
/// may have made some writes durable and not others.
#[test]
fn a_sync_that_panics_refuses_later_writes() {
    let sim = SimStorage::new(62);
    let store = open(&sim, small()).unwrap();
    store.append("t", b"x").unwrap();
    sim.inject(FaultRule::new(Fault::Panic).op(OpKind::Sync));
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.sync()));
    assert!(panicked.is_err(), "the sync did not panic");
    sim.clear_faults();
    refuses_writes(&store, "panicked");
}

/// A sync run by a `Drop` while its thread unwinds from another panic, which succeeds, does
/// not poison the store (it is not the sync that panicked).
#[test]
fn a_sync_during_another_panic_does_not_poison() {
    struct SyncOnDrop<'a>(&'a Store);
    impl Drop for SyncOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.sync();
        }
    }
    let sim = SimStorage::new(63);
    let store = open(&sim, small()).unwrap();
    store.append("t", b"x").unwrap();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _sync = SyncOnDrop(&store);
        panic!("the caller's own panic");
    }));
    assert!(panicked.is_err());
    assert!(sim.stats().data_syncs > 0, "the drop did not sync");
    store.append("t", b"y").unwrap();
}

/// A cursor sync that panics (a backend's bug) fails every later sync of the cursor file:
/// consuming reads fail and writes are refused; the cursor that was not made durable is not
/// the one a reopen finds.
#[test]
fn a_cursor_sync_that_panics_fails_the_reads_after_it() {
    let sim = SimStorage::new(64);
    let options = small().with_durable_cursors(true);
    {
        let store = open(&sim, options.clone()).unwrap();
        store.append("t", b"x").unwrap();
        store.append("t", b"y").unwrap();
        store.sync().unwrap();
        sim.inject(
            FaultRule::new(Fault::Panic)
                .op(OpKind::Sync)
                .path(format!("{DIR}/cursors.wcur")),
        );
        let panicked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.read_next("t", true)));
        assert!(panicked.is_err(), "the sync did not panic");
        sim.clear_faults();
        store.read_next("t", true).unwrap_err();
        store.append("t", b"z").unwrap_err();
        sim.crash(CrashMode::DropUnsynced);
    }
    let store = open(&sim, options).unwrap();
    assert_eq!(store.read_next("t", true).unwrap().map(|e| e.0), Some(0));
}

/// With durable cursors, the background maintenance counts an idle reader's cursor persisted
/// only once a sync of the cursor file covers it (one sync for every cursor it writes):
/// counted while unsynced, it reset the count of reads to persist after, and a power cut
/// handed out more than `persist_every - 1` entries again. Here the maintenance persists
/// cursor 2 (synced), then one read: after a power cut the consumer resumes at 2, one entry
/// handed out again of the two allowed.
#[test]
fn idle_cursors_persisted_in_the_background_are_synced_before_they_count() {
    let sim = SimStorage::new(65);
    let options = small()
        .with_durable_cursors(true)
        .with_persist_every(3)
        .with_background_maintenance(true);
    let store = open(&sim, options).unwrap();
    for i in 0..10 {
        store.append("t", &payload(i)).unwrap();
    }
    store.sync().unwrap();
    for _ in 0..2 {
        store.read_next("t", true).unwrap().unwrap();
    }
    store.maintain().unwrap();
    store.read_next("t", true).unwrap().unwrap();
    sim.crash(CrashMode::DropUnsynced);
    std::mem::forget(store);
    let store = open(&sim, small()).unwrap();
    assert_eq!(store.cursor("t"), Some(2));
}

/// `store` refuses an append, saying `says`, and writes nothing.
fn refuses_writes(store: &Store, says: &str) {
    let err = store.append("t", b"y").unwrap_err();
    assert!(err.to_string().contains(says), "{err}");
    assert_eq!(store.read_at("t", 1).unwrap(), None, "y was written");
}

/// A cursor sync that failed on a consuming read fails the read, and refuses every later
/// write: the next sync would fail anyway, after an append had been made durable and then
/// reported failed (a retry would duplicate it).
#[test]
fn a_failed_cursor_sync_on_a_read_refuses_later_writes() {
    let sim = SimStorage::new(61);
    let store = open(&sim, small().with_sync_cursor_writes(true)).unwrap();
    store.append("t", b"x").unwrap();
    store.sync().unwrap();
    sim.inject(
        FaultRule::new(Fault::Eio)
            .op(OpKind::Sync)
            .path(format!("{DIR}/cursors.wcur")),
    );
    store.read_next("t", true).unwrap_err();
    assert_eq!(
        sim.stats().faults_fired,
        1,
        "the cursor file was not synced"
    );
    sim.clear_faults();
    refuses_writes(&store, "reopen");
}

/// A watermark record whose write failed is written at the next maintenance pass, also when
/// the topic is idle by then (nothing would queue it again): its watermark on disk must not
/// stay behind.
#[test]
fn a_failed_watermark_write_is_tried_again_at_the_next_pass() {
    let sim = SimStorage::new(60);
    let options = small()
        .with_sync_cursor_writes(true)
        .with_background_maintenance(true)
        .with_mark_interval(std::time::Duration::ZERO);
    let store = open(&sim, options.clone()).unwrap();
    store.append("t", b"x").unwrap();
    store.sync().unwrap();
    sim.inject(
        FaultRule::new(Fault::Eio)
            .op(OpKind::Write)
            .path(format!("{DIR}/durable.wcur")),
    );
    store.maintain().unwrap();
    assert_eq!(sim.stats().faults_fired, 1, "the watermark was not written");
    store.maintain().unwrap();
    let persisted = Store::open_read_only(DIR, Arc::new(sim.clone()), options)
        .unwrap()
        .durable_offset("t");
    assert_eq!(persisted, Some(1));
    drop(store);
}

/// Overwrites four bytes at `field` of the header of the frame carrying `payload` in the first
/// segment (durably); returns the payload's position.
fn damage_frame_header(sim: &SimStorage, payload: &[u8], field: u64) -> u64 {
    let file = first_segment(sim);
    let mut bytes = vec![0u8; 64 << 10];
    let n = file.read_at(&mut bytes, 0).unwrap();
    let at = bytes[..n]
        .windows(payload.len())
        .position(|w| w == payload)
        .unwrap() as u64;
    file.write_at(
        &[0xFF; 4],
        at - walrus_block::FRAME_HEADER_LEN as u64 + field,
    )
    .unwrap();
    file.sync_data().unwrap();
    at
}

/// The lowest-numbered segment file on the simulated disk, opened.
fn first_segment(sim: &SimStorage) -> Arc<dyn walrus_io::SegmentFile> {
    let seg = sim
        .files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wseg"))
        .min()
        .unwrap();
    sim.open(&seg).unwrap()
}

/// Flip one byte in the middle of a synced topic, in a segment file on the simulated disk.
fn corrupt_middle(sim: &SimStorage) {
    let store = open(sim, small()).unwrap();
    for i in 0..100 {
        store.append("t", &payload(i)).unwrap();
    }
    store.sync().unwrap();
    drop(store);
    let file = first_segment(sim);
    // Block 0 starts at 4096, its header is 300 bytes; the 3rd entry is well inside.
    let at = 4096 + 300 + 2000;
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, at).unwrap();
    file.write_at(&[b[0] ^ 0x40], at).unwrap();
    file.sync_data().unwrap();
}

#[test]
fn corruption_in_the_middle_by_recovery_mode() {
    let sim = SimStorage::new(14);
    corrupt_middle(&sim);
    // Default: refuses, naming topic and offset.
    let err = open(&sim, small()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("topic \"t\""), "{err}");
    let err = open(
        &sim,
        small().with_recovery(RecoveryMode::AbsoluteConsistency),
    )
    .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);

    // Skip: every valid entry is kept, the damaged one is never returned.
    let sim2 = SimStorage::new(14);
    corrupt_middle(&sim2);
    let store = open(&sim2, small().with_recovery(RecoveryMode::SkipCorrupted)).unwrap();
    assert!(!store.recovery_report().issues.is_empty());
    let got = drain(&store, "t");
    // Exactly the damaged entry is skipped; the rest of its block is kept.
    assert_eq!(got.len(), 99, "{}", got.len());
    for (off, data) in &got {
        assert_eq!(data, &payload(*off));
    }
    assert_eq!(got.last().unwrap().0, 99);
    drop(store);

    // Point in time: everything before the damage, nothing after.
    let store = open(&sim, small().with_recovery(RecoveryMode::PointInTime)).unwrap();
    let got = drain(&store, "t");
    let n = got.len() as u64;
    assert!(n < 10, "{n}");
    for (i, (off, data)) in got.iter().enumerate() {
        assert_eq!(*off, i as u64);
        assert_eq!(data, &payload(*off));
    }
    assert!(matches!(
        store.recovery_report().issues[0].problem,
        Problem::Corrupt(_) | Problem::Missing { .. }
    ));
    // Offsets are never reused: the next entry goes after everything on disk, and its block
    // records the cut, so the default mode now opens cleanly.
    let next = store.append("t", b"new").unwrap();
    assert_eq!(next, 100);
    store.sync().unwrap();
    drop(store);
    let store = open(&sim, small()).unwrap();
    assert_eq!(store.read_at("t", next).unwrap(), Some(b"new".to_vec()));
    assert_eq!(store.read_at("t", n).unwrap(), None);
    drop(store);
    // And the entries behind the cut were never erased: SkipCorrupted still finds them.
    let store = open(&sim, small().with_recovery(RecoveryMode::SkipCorrupted)).unwrap();
    // (The point-in-time open consumed the entries before the cut.)
    let got = drain(&store, "t");
    let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
    let expect: Vec<u64> = (n + 1..100).chain([next]).collect();
    assert_eq!(
        offsets, expect,
        "every valid old entry after the cut, and the new one"
    );
}

#[test]
fn consumed_segments_are_deleted_and_unread_ones_kept() {
    let sim = SimStorage::new(15);
    // One lane: both topics share every segment.
    let store = open(&sim, small().with_lanes(1)).unwrap();
    for i in 0..400 {
        store.append("a", &payload(i)).unwrap();
        store.append("b", &payload(i)).unwrap();
    }
    let before = segments(&sim).len();
    assert!(before >= 4, "{before}");
    // Reading only "a" frees nothing: every segment also holds "b".
    drain(&store, "a");
    assert_eq!(segments(&sim).len(), before);
    // Peeks and empty polls never release anything.
    for _ in 0..10 {
        store.read_next("b", false).unwrap();
    }
    assert_eq!(segments(&sim).len(), before);
    let b = drain(&store, "b");
    assert_eq!(b.len(), 400);
    let after = segments(&sim).len();
    assert!(after <= 2, "{after} of {before} segments left");
    // Offsets stay stable after deletion.
    assert_eq!(store.append("a", b"x").unwrap(), 400);
    drop(store);
    let store = open(&sim, small().with_lanes(1)).unwrap();
    assert_eq!(store.cursor("a"), Some(400));
    assert_eq!(
        store.read_next("a", true).unwrap(),
        Some((400, b"x".to_vec()))
    );
    assert_eq!(store.read_next("b", true).unwrap(), None);
    assert_eq!(store.append("b", b"y").unwrap(), 400);
}

#[test]
fn consumed_offsets_whose_blocks_are_gone_read_as_released_not_missing() {
    // Found by the concurrent crash suite (seed 7021): a topic's consumed blocks survive in a
    // segment another topic keeps, the blocks after them went with a deleted segment, and the
    // block after those was lost unsynced in the power cut. The offsets between the surviving
    // block and the reopened cursor were consumed; they must read as released (`NotFound`),
    // not as nothing (`None`, what a lost entry reads as).
    let sim = SimStorage::new(17);
    let big = |i: u64| vec![i as u8; 6000]; // one entry per 8 KiB block
    {
        let store = open(&sim, small().with_lanes(1)).unwrap();
        // Segment 0: "keep" (never consumed) and t@0..7; segment 1: t@7..14.
        store.append("keep", b"k").unwrap();
        for i in 0..14 {
            assert_eq!(store.append("t", &big(i)).unwrap(), i);
        }
        store.sync().unwrap();
        assert_eq!(drain(&store, "t").len(), 14);
        // t@14 opens a block in segment 2; segment 1 is then wholly consumed and deleted
        // (the cursor made durable first). Nothing of segment 2 is synced.
        store.append("t", &big(14)).unwrap();
        assert!(
            !segments(&sim).contains(&"00000000000000000001.wseg".to_owned()),
            "{:?}",
            segments(&sim)
        );
        sim.crash(CrashMode::DropUnsynced);
        std::mem::forget(store);
    }
    let store = open(&sim, small().with_lanes(1)).unwrap();
    let cursor = store.cursor("t").unwrap();
    assert_eq!(cursor, 14, "{:?}", store.recovery_report());
    // The surviving consumed block still serves its entry; everything else below the cursor
    // is released.
    assert_eq!(store.read_at("t", 6).unwrap(), Some(big(6)));
    for off in 7..cursor {
        let e = store.read_at("t", off).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "@{off}: {e}");
        assert!(e.to_string().contains("consumed"), "@{off}: {e}");
    }
    assert_eq!(store.read_next("t", true).unwrap(), None);
    assert_eq!(store.append("t", b"next").unwrap(), 14);
}

#[test]
fn fully_consumed_files_found_at_open_are_deleted() {
    let sim = SimStorage::new(16);
    {
        let store = open(&sim, small()).unwrap();
        for i in 0..300 {
            store.append("a", &payload(i)).unwrap();
        }
        store.sync().unwrap();
        // The process dies between persisting the cursor and deleting the files: here, the
        // deletions fail.
        sim.inject(FaultRule::new(Fault::Eio).op(OpKind::Remove).forever());
        drain(&store, "a");
        sim.crash(CrashMode::KeepWritten);
        std::mem::forget(store);
    }
    sim.clear_faults();
    let before = segments(&sim).len();
    assert!(before >= 3);
    let store = open(&sim, small()).unwrap();
    assert!(
        segments(&sim).len() < before,
        "{:?}",
        store.recovery_report()
    );
    assert_eq!(store.read_next("a", true).unwrap(), None);
}

#[test]
fn opening_does_not_create_segments() {
    let sim = SimStorage::new(17);
    drop(open(&sim, small()).unwrap());
    drop(open(&sim, small()).unwrap());
    assert!(segments(&sim).is_empty());
    let store = open(&sim, small()).unwrap();
    store.append("t", b"x").unwrap();
    drop(store);
    let n = segments(&sim).len();
    // Reopening creates nothing (and drops the spare prepared ahead of need), and appending
    // continues in the room the existing segment still has.
    let store = open(&sim, small()).unwrap();
    let reopened = segments(&sim).len();
    assert!(
        reopened <= n && reopened >= 1,
        "{reopened} segments after reopen, {n} before"
    );
    store.append("t", b"y").unwrap();
    assert_eq!(
        segments(&sim).len(),
        reopened,
        "reopen must reuse the room in existing segments"
    );
    drop(store);
    // Nor does the maintenance of a reopened store that writes nothing.
    let before = segments(&sim);
    let store = open(&sim, small()).unwrap();
    let kept = segments(&sim);
    store.maintain().unwrap();
    store.maintain().unwrap();
    assert_eq!(segments(&sim), kept, "maintenance created a segment");
    assert!(kept.len() <= before.len());
}

#[test]
fn concurrent_appends_to_one_topic() {
    let sim = SimStorage::new(18);
    let store = Arc::new(open(&sim, small()).unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    let tag = |k: u64| format!("{t}:{k}").into_bytes();
                    if i % 10 == 0 {
                        let (a, b) = (tag(i * 10), tag(i * 10 + 1));
                        store.append_batch("shared", &[&a, &b]).unwrap();
                    } else {
                        store.append("shared", &tag(i * 10)).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let all = drain(&store, "shared");
    assert_eq!(all.len(), 8 * 220);
    let mut seen = HashSet::new();
    let mut last = [None::<u64>; 8];
    for (i, (off, data)) in all.iter().enumerate() {
        assert_eq!(*off, i as u64);
        assert!(seen.insert(data.clone()), "duplicate");
        let s = String::from_utf8(data.clone()).unwrap();
        let (t, k) = s.split_once(':').unwrap();
        let (t, k): (usize, u64) = (t.parse().unwrap(), k.parse().unwrap());
        assert!(last[t].is_none_or(|p| p < k), "thread {t} out of order");
        last[t] = Some(k);
    }
}

/// Lookups by offset start from marks earlier lookups left in a block (`Block::walked`): every
/// entry is still found exactly, from readers racing a writer that fills 1 MiB blocks, in any
/// order, and after a reopen (whose blocks start with no marks).
#[test]
fn lookups_by_offset_find_every_entry_while_the_topic_grows() {
    const N: u64 = 6000;
    let sim = SimStorage::new(19);
    let options = || {
        StoreOptions::new()
            .with_block_len(1 << 20)
            .with_segment_len(16 << 20)
    };
    let store = Arc::new(open(&sim, options()).unwrap());
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut next = 0;
            while next < N {
                if next.is_multiple_of(7) && next + 3 <= N {
                    let batch: Vec<Vec<u8>> = (next..next + 3).map(payload).collect();
                    let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
                    assert_eq!(store.append_batch("t", &refs).unwrap(), next..next + 3);
                    next += 3;
                } else {
                    assert_eq!(store.append("t", &payload(next)).unwrap(), next);
                    next += 1;
                }
            }
        });
        for r in 0..3u64 {
            let store = &store;
            s.spawn(move || {
                let mut rng = walrus_io::SeededRng::new(r + 1);
                for _ in 0..1500 {
                    let end = store.end_offset("t").unwrap_or(0);
                    if end == 0 {
                        std::thread::yield_now();
                        continue;
                    }
                    let o = rng.below(end);
                    assert_eq!(store.read_at("t", o).unwrap(), Some(payload(o)), "@{o}");
                }
            });
        }
    });
    let every = |store: &Store| {
        // Backwards, then in long strides: walks that start before, at and after the marks.
        for o in (0..N).rev().chain((0..N).map(|i| i * 997 % N)) {
            assert_eq!(store.read_at("t", o).unwrap(), Some(payload(o)), "@{o}");
        }
        assert_eq!(store.read_at("t", N).unwrap(), None);
    };
    every(&store);
    drop(store);
    every(&open(&sim, options()).unwrap());
}

/// Big blocks on the simulator, where every read is one counted operation.
fn big_blocks() -> StoreOptions {
    StoreOptions::new()
        .with_block_len(1 << 20)
        .with_segment_len(16 << 20)
}

/// Once a walk marked a block, a lookup anywhere in it reads one small window (two when its
/// entry crosses the window's end), where walking from the block's first frame took many; a
/// cold lookup (nothing marked, after a reopen) reads growing windows, not 16 KiB at a time.
#[test]
fn a_marked_block_answers_a_lookup_with_one_read() {
    const N: u64 = 1500; // ~0.8 MiB of entries
    let sim = SimStorage::new(20);
    let store = open(&sim, big_blocks()).unwrap();
    for i in 0..N {
        store.append("t", &payload(i)).unwrap();
    }
    let reads = |store: &Store, o: u64| {
        let before = sim.stats().ops;
        assert_eq!(store.read_at("t", o).unwrap(), Some(payload(o)), "@{o}");
        sim.stats().ops - before
    };
    // Blocks grow to 1 MiB; the last lookup walks the last block (16 KiB at a time, it
    // would take 40 reads and more), then lookups anywhere, marked by walks in reverse.
    let cold = reads(&store, N - 1);
    assert!(cold <= 7, "a cold walk of a block took {cold} reads");
    for o in (0..N).rev() {
        reads(&store, o);
    }
    for o in (0..N).step_by(7) {
        let n = reads(&store, o);
        assert!(n <= 2, "a lookup of {o} in a marked block took {n} reads");
    }
    drop(store);
    let store = open(&sim, big_blocks()).unwrap();
    let cold = reads(&store, N - 1);
    assert!(cold <= 7, "after a reopen: {cold} reads");
    assert!(reads(&store, N - 2) <= 2);
}

/// Entries of the damage tests, and which one is damaged.
const DAMAGE_N: u64 = 1500;
const DAMAGED: u64 = 700;

/// Entry `o` of the damage tests: `payload` ramps repeat across entries, so the damaged one
/// is unlike any other, to be found by its bytes alone.
fn damage_test_entry(o: u64) -> Vec<u8> {
    if o == DAMAGED {
        b"the one entry to damage, unlike any other".repeat(20)
    } else {
        payload(o)
    }
}

/// An instance in big blocks holding the damage tests' entries, synced.
fn with_damage_test_entries(sim: &SimStorage) -> Store {
    let store = open(sim, big_blocks()).unwrap();
    for i in 0..DAMAGE_N {
        store.append("t", &damage_test_entry(i)).unwrap();
    }
    store.sync().unwrap();
    store
}

/// Flips a payload byte of entry `DAMAGED` in the first segment, durably.
fn damage_the_entry(sim: &SimStorage) {
    flip_a_byte_of(sim, &damage_test_entry(DAMAGED));
}

/// Flips a byte of `payload` (unlike any other entry's) where it is stored in the first
/// segment, durably.
fn flip_a_byte_of(sim: &SimStorage, payload: &[u8]) {
    let file = first_segment(sim);
    let mut bytes = vec![0u8; 2 << 20];
    let n = file.read_at(&mut bytes, 0).unwrap();
    let at = bytes[..n]
        .windows(payload.len())
        .position(|w| w == payload)
        .expect("the entry's payload is in the first segment") as u64;
    file.write_at(&[payload[10] ^ 0x40], at + 10).unwrap();
    file.sync_data().unwrap();
}

/// Entries a reopen recovered after a power cut are durable (it synced them), and their
/// watermark on disk rises to them at the open: damage to them later is corruption, refused,
/// not a torn tail cut off with its offsets handed out again.
#[test]
fn a_reopen_raises_the_watermark_to_what_it_recovered() {
    let entry = |o: u64| {
        if o == 40 {
            b"the entry damaged after the reopen".repeat(10)
        } else {
            payload(o)
        }
    };
    let sim = SimStorage::new(24);
    // No watermark is written during the first run.
    let options = small().with_mark_interval(std::time::Duration::from_secs(3600));
    {
        let store = open(&sim, options.clone()).unwrap();
        for i in 0..50 {
            store.append("t", &entry(i)).unwrap();
        }
        store.sync().unwrap();
        sim.crash(CrashMode::DropUnsynced);
        std::mem::forget(store);
    }
    {
        let store = open(&sim, options.clone()).unwrap();
        assert_eq!(store.end_offset("t"), Some(50));
        // Idle: nothing appended, nothing synced, and a clean close.
    }
    flip_a_byte_of(&sim, &entry(40));
    let e = open(&sim, options).map(|s| s.end_offset("t")).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
}

/// `AbsoluteConsistency` opens only a directory with nothing to drop: bytes past the last block
/// (left by a block whose header never reached the disk) are refused, where the default mode
/// zeroes them; after that, the strict open finds nothing. So is a damaged entry among those
/// already consumed, which the other modes only report.
#[test]
fn absolute_consistency_refuses_stale_bytes_and_damage_the_other_modes_drop() {
    let sim = SimStorage::new(25);
    {
        let store = open(&sim, small()).unwrap();
        for i in 0..10 {
            store.append("t", &payload(i)).unwrap();
        }
        store.sync().unwrap();
    }
    let file = first_segment(&sim);
    file.write_at(&[0x5A; 512], 40960 + 512).unwrap();
    file.sync_data().unwrap();
    drop(file);
    let strict = || small().with_recovery(RecoveryMode::AbsoluteConsistency);
    let e = open(&sim, strict()).map(|_| ()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("stale bytes"), "{e}");
    drop(open(&sim, small()).unwrap());
    let store = open(&sim, strict()).unwrap();
    assert!(store.recovery_report().issues.is_empty());
    // Consumed entries, one of them damaged below the watermark, in a block still kept.
    for _ in 0..5 {
        store.read_next("t", true).unwrap().unwrap();
    }
    store.sync().unwrap();
    drop(store);
    flip_a_byte_of(&sim, &payload(2));
    let e = open(&sim, strict()).map(|_| ()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    let store = open(&sim, small()).unwrap();
    assert_eq!(
        store.recovery_report().issues.len(),
        1,
        "reported, not refused"
    );
    assert_eq!(store.read_next("t", true).unwrap().unwrap().0, 5);
}

/// Stale frames anywhere after the last block a recovery found (pages of blocks whose headers a
/// power cut lost, which reached the disk in any order) are zeroed before allocation resumes
/// over them, not only those near the last block: blocks later written over them would
/// otherwise hold them, and the next open take them for damage.
#[test]
fn allocation_never_resumes_over_stale_frames_far_past_the_last_block() {
    let sim = SimStorage::new(28);
    let options = StoreOptions::new()
        .with_block_len(1 << 20)
        .with_segment_len(64 << 20);
    {
        let store = open(&sim, options.clone()).unwrap();
        store.append("t", b"x").unwrap();
        store.sync().unwrap();
    }
    // Valid frames of a far offset (keyed as the segment's), every 4 KiB from 20 MiB to 24
    // MiB, durable.
    let file = first_segment(&sim);
    let mut page = vec![0u8; 4096];
    file.read_at(&mut page, 0).unwrap();
    let key = walrus_block::SegmentHeader::decode(&page)
        .unwrap()
        .unwrap()
        .key;
    let mut frame = Vec::new();
    walrus_block::encode_frame(
        &mut frame,
        1_000_000,
        walrus_block::FrameKind::single(),
        b"stale",
        key,
    )
    .unwrap();
    for at in ((20u64 << 20)..(24 << 20)).step_by(4096) {
        file.write_at(&frame, at).unwrap();
    }
    file.sync_data().unwrap();
    drop(file);
    let big = |i: u64| vec![i as u8; 900 << 10];
    {
        let store = open(&sim, options.clone()).unwrap();
        for i in 1..=26 {
            store.append("t", &big(i)).unwrap();
        }
        store.sync().unwrap();
    }
    let store = open(&sim, options).unwrap();
    assert_eq!(store.end_offset("t"), Some(27));
    assert!(store.recovery_report().issues.is_empty());
    assert_eq!(store.read_at("t", 26).unwrap(), Some(big(26)));
}

/// A lane's last segment whose only block has a damaged header looks like an unused spare; when
/// synced entries are missing (they are in that block), the modes that open anyway keep the
/// file for inspection rather than delete it with them.
#[test]
fn a_segment_whose_only_block_header_is_damaged_is_kept_when_synced_entries_are_missing() {
    kept_when_synced_entries_are_missing(27, false);
}

/// The same with the segment's header damaged too (its copy intact): the header is not
/// repaired, and the file is not deleted with the blocks it seems to hold none of.
#[test]
fn a_segment_with_a_damaged_header_and_block_header_is_kept_when_synced_entries_are_missing() {
    kept_when_synced_entries_are_missing(28, true);
}

/// The segment files by name, and the last that holds a block.
fn last_segment_with_a_block(sim: &SimStorage) -> (Vec<String>, String) {
    let mut names = segments(sim);
    names.sort();
    let last = names
        .iter()
        .rev()
        .find(|n| {
            let mut head = [0u8; 4];
            let f = sim.open(&Path::new(DIR).join(n)).unwrap();
            f.read_exact_at(&mut head, 4096).is_ok() && head != [0; 4]
        })
        .expect("a segment holding a block")
        .clone();
    (names, last)
}

fn kept_when_synced_entries_are_missing(seed: u64, damage_segment_header: bool) {
    let sim = SimStorage::new(seed);
    // Blocks of 4, 8, 16, 16 and 16 KiB fill the first segment; the next goes to the second.
    let options = small().with_block_len(16 << 10).with_lanes(1);
    {
        let store = open(&sim, options.clone()).unwrap();
        for i in 0..120 {
            store.append("t", &payload(i)).unwrap();
        }
        store.sync().unwrap();
    }
    let (names, last) = last_segment_with_a_block(&sim);
    assert_ne!(last, names[0], "the entries reach a second segment");
    let file = sim.open(&Path::new(DIR).join(&last)).unwrap();
    file.write_at(&[0xFF], 4096 + 20).unwrap();
    let mut header = vec![0u8; 4096];
    file.read_exact_at(&mut header, 0).unwrap();
    if damage_segment_header {
        file.write_at(&[header[10] ^ 0xFF], 10).unwrap();
    }
    file.sync_data().unwrap();
    drop(file);
    let store = open(&sim, options.with_recovery(RecoveryMode::PointInTime)).unwrap();
    assert!(segments(&sim).contains(&last), "{last} was deleted");
    assert!(
        store
            .recovery_report()
            .issues
            .iter()
            .any(|i| i.file.ends_with(&last)),
        "{:?}",
        store.recovery_report()
    );
    store.maintain().unwrap();
    drop(store);
    assert!(segments(&sim).contains(&last), "{last} was deleted");
    let mut now = vec![0u8; 4096];
    let file = sim.open(&Path::new(DIR).join(&last)).unwrap();
    file.read_exact_at(&mut now, 0).unwrap();
    if damage_segment_header {
        assert_ne!(now, header, "the damaged header was repaired");
    }
}

/// Damage that hides entries on both sides of a consumer's cursor (the last block's header):
/// the consumed ones cost their history, the unconsumed ones are synced entries lost, which
/// the default mode refuses and the lenient ones decide from the cursor on; the segment stays.
/// (They were all taken for consumed history: the default mode opened without them.)
#[test]
fn damage_across_a_cursor_is_not_taken_for_consumed_history() {
    use walrus_block::SegmentHeader;
    for (seed, mode) in [
        (29, RecoveryMode::TolerateCorruptedTail),
        (30, RecoveryMode::PointInTime),
        (31, RecoveryMode::SkipCorrupted),
    ] {
        let sim = SimStorage::new(seed);
        let options = small().with_block_len(16 << 10).with_lanes(1);
        let (last, cursor, after) = {
            let store = open(&sim, options.clone()).unwrap();
            // Keeps the first segment, and in it the block of `t` before the damaged one.
            store.append("u", b"unread").unwrap();
            for i in 0..120 {
                store.append("t", &payload(i)).unwrap();
            }
            let (_, last) = last_segment_with_a_block(&sim);
            let bytes = sim.contents(&Path::new(DIR).join(&last)).unwrap();
            let key = SegmentHeader::decode(&bytes).unwrap().unwrap().key;
            let headers = block_headers(&bytes, key);
            let first = headers.first().expect("a block").first_offset;
            // The entries of the segment's next block (if any) survive the damage.
            let after = headers.get(1).map(|h| h.first_offset);
            let cursor = u64::midpoint(first, after.unwrap_or(120));
            assert!(first < cursor, "{first}, {after:?}");
            store.commit("t", cursor).unwrap();
            store.sync().unwrap();
            (last, cursor, after)
        };
        let file = sim.open(&Path::new(DIR).join(&last)).unwrap();
        file.write_at(&[0xFF], 4096 + 20).unwrap();
        file.sync_data().unwrap();
        drop(file);
        match open(&sim, options.clone().with_recovery(mode)) {
            Err(e) => {
                assert_eq!(mode, RecoveryMode::TolerateCorruptedTail, "{mode:?}: {e}");
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
                assert!(e.to_string().contains(&format!("offset {cursor}")), "{e}");
            }
            Ok(store) => {
                assert_ne!(mode, RecoveryMode::TolerateCorruptedTail, "opened");
                let issues = &store.recovery_report().issues;
                assert!(
                    issues.iter().any(|i| i.offset == cursor),
                    "{mode:?}: {issues:?}"
                );
                // PointInTime cuts at the cursor; SkipCorrupted steps over the damaged block
                // to the next one.
                let next = after
                    .filter(|_| mode == RecoveryMode::SkipCorrupted)
                    .map(|o| (o, payload(o)));
                assert_eq!(store.read_next("t", false).unwrap(), next, "{mode:?}");
                store.maintain().unwrap();
            }
        }
        assert!(
            segments(&sim).contains(&last),
            "{mode:?}: {last} was deleted"
        );
    }
}

/// A span that starts inside its block (recovery skipped a damaged entry before it) keeps its
/// marks relative to its own first frame: every entry on both sides is found, cold and warm.
#[test]
fn lookups_in_a_span_that_starts_mid_block_after_skipped_damage() {
    let sim = SimStorage::new(21);
    drop(with_damage_test_entries(&sim));
    damage_the_entry(&sim);
    let options = big_blocks().with_recovery(RecoveryMode::SkipCorrupted);
    let store = open(&sim, options).unwrap();
    assert_eq!(
        store.recovery_report().issues.len(),
        1,
        "the one damaged entry"
    );
    for _ in 0..2 {
        // Backwards first: the walk to the last entry starts at the second span's first frame.
        for o in (0..DAMAGE_N).rev() {
            let got = store.read_at("t", o);
            if o == DAMAGED {
                assert!(
                    !matches!(got, Ok(Some(_))),
                    "the damaged entry was handed out"
                );
            } else {
                assert_eq!(got.unwrap(), Some(damage_test_entry(o)), "@{o}");
            }
        }
    }
}

/// A payload damaged while the instance is open (no recovery ran to skip it) fails the reads
/// of its own entry and nothing else: lookups walk over it by its header, and a consumer that
/// stops at it can commit past it and go on.
#[test]
fn a_damaged_payload_fails_its_own_entry_and_no_other() {
    let entry = damage_test_entry;
    let sim = SimStorage::new(22);
    let store = with_damage_test_entries(&sim);
    damage_the_entry(&sim);
    // Cold: nothing marked yet, so the walk to each later entry steps over the damaged one.
    for o in [DAMAGE_N - 1, DAMAGED + 1, 1000, 0, DAMAGED - 1] {
        assert_eq!(store.read_at("t", o).unwrap(), Some(entry(o)), "@{o}");
    }
    let err = store.read_at("t", DAMAGED).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains("700"), "names the offset: {err}");
    // A consumer reads up to the damaged entry, fails on it (and keeps failing, its cursor
    // unmoved), then skips it by a commit.
    for o in 0..DAMAGED {
        assert_eq!(store.read_next("t", true).unwrap(), Some((o, entry(o))));
    }
    for _ in 0..2 {
        let err = store.read_next("t", true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }
    store.commit("t", DAMAGED + 1).unwrap();
    let rest = drain(&store, "t");
    assert_eq!(rest.len() as u64, DAMAGE_N - DAMAGED - 1);
    for (o, e) in rest {
        assert_eq!(e, entry(o), "@{o}");
    }
}

/// A batch read, an iterator and a scan that reach the damaged entry hand out the entries
/// before it, and fail at it on the next call: the good entries are never withheld (a consumer
/// told to commit past the damaged one must have had them).
#[test]
fn batches_hand_out_the_entries_before_a_damaged_one() {
    let entry = damage_test_entry;
    let sim = SimStorage::new(24);
    let store = with_damage_test_entries(&sim);
    damage_the_entry(&sim);
    // Without moving a cursor first (consumed blocks are released).
    let mut iter = store.iter("t", 0);
    for o in 0..DAMAGED {
        assert_eq!(iter.next().unwrap().unwrap(), (o, entry(o)));
    }
    assert!(iter.next().unwrap().is_err());
    let mut seen = 0;
    let next = store
        .scan("t", 0, usize::MAX, |o, p| {
            assert_eq!(p, entry(o), "@{o}");
            seen += 1;
        })
        .unwrap();
    assert_eq!((next, seen), (DAMAGED, DAMAGED));
    let e = store.scan("t", next, usize::MAX, |_, _| {}).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    let mut got = Vec::new();
    for _ in 0..DAMAGE_N {
        match store.read_batch("t", usize::MAX, true) {
            Ok(batch) => {
                assert!(!batch.is_empty());
                got.extend(batch);
            }
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
                assert!(e.to_string().contains("700"), "names the offset: {e}");
                break;
            }
        }
    }
    assert_eq!(
        got.len() as u64,
        DAMAGED,
        "the entries before the damaged one"
    );
    for (o, e) in got {
        assert_eq!(e, entry(o), "@{o}");
    }
    assert_eq!(store.cursor("t"), Some(DAMAGED));
}

/// A consumer that stopped reading inside a block holds no file open once retention released
/// the block and its segment was deleted: its space comes back (the consumer's position hint
/// kept the block, and with it the unlinked file, alive).
#[test]
fn a_stopped_consumer_keeps_no_deleted_segment_open() {
    use walrus_topic::Retention;
    let tmp = tempfile::tempdir().unwrap();
    let options = StoreOptions::new()
        .with_block_len(64 << 10)
        .with_segment_len(256 << 10)
        .with_retention(Retention {
            max_bytes: Some(256 << 10),
            max_age: None,
        });
    let store = Store::open(tmp.path(), Arc::new(PwriteStorage::new()), options).unwrap();
    for i in 0..20 {
        store.append("t", &payload(i)).unwrap();
    }
    // Stops inside the first block.
    store.read_next_as("t", "slow", true).unwrap().unwrap();
    for i in 20..4000 {
        store.append("t", &payload(i)).unwrap();
    }
    store.maintain().unwrap();
    let deleted_held: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|t| t.starts_with(&*tmp.path().to_string_lossy()) && t.ends_with("(deleted)"))
        .collect();
    assert!(deleted_held.is_empty(), "held open: {deleted_held:?}");
    // The consumer goes on at the oldest entry kept.
    let (o, _) = store.read_next_as("t", "slow", true).unwrap().unwrap();
    assert!(o > 1, "{o}");
}

/// A read that fails half way through refilling a consumer's window is retried from the disk:
/// the retry neither takes the failed window's bytes for the file's (a false "damage") nor
/// skips an entry.
#[test]
fn a_failed_read_is_retried_not_taken_for_damage() {
    let sim = SimStorage::new(23);
    let store = open(&sim, big_blocks()).unwrap();
    for i in 0..2000 {
        store.append("t", &payload(i)).unwrap();
    }
    // The consumer's window now ends at the written end, ~100 KB into a 1 MiB block; the next
    // appends (~220 KB) stay in that block, so the failed refill's window would be longer
    // than the old one and cover the entry's position (with zeros: the bug this catches).
    assert_eq!(drain(&store, "t").len(), 2000);
    for i in 2000..2400 {
        store.append("t", &payload(i)).unwrap();
    }
    for _ in 0..2 {
        sim.inject(FaultRule::new(Fault::Eio).op(OpKind::Read));
        let err = store.read_next("t", true).unwrap_err();
        assert_ne!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }
    sim.clear_faults();
    let rest = drain(&store, "t");
    let offsets: Vec<u64> = rest.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (2000..2400).collect::<Vec<_>>());
    for (o, e) in rest {
        assert_eq!(e, payload(o), "@{o}");
    }
}

#[test]
fn ten_thousand_topics() {
    let sim = SimStorage::new(19);
    let opts = StoreOptions::new()
        .with_block_len(4096)
        .with_segment_len(8 << 20);
    {
        let store = open(&sim, opts.clone()).unwrap();
        for t in 0..10_000 {
            store
                .append(&format!("topic-{t}"), format!("v{t}").as_bytes())
                .unwrap();
        }
        for t in (0..10_000).step_by(3) {
            store
                .read_next(&format!("topic-{t}"), true)
                .unwrap()
                .unwrap();
        }
        store.sync().unwrap();
    }
    let store = open(&sim, opts).unwrap();
    assert_eq!(store.topics().len(), 10_000);
    for t in [0, 1, 2, 9_999] {
        let name = format!("topic-{t}");
        let expect_cursor = u64::from(t % 3 == 0);
        assert_eq!(store.cursor(&name), Some(expect_cursor), "{name}");
        assert_eq!(
            store.read_at(&name, 0).unwrap(),
            Some(format!("v{t}").into_bytes())
        );
    }
}

#[test]
fn real_filesystem_reopen_and_lock() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(PwriteStorage::new());
    {
        let store = Store::open(dir.path(), storage.clone(), small()).unwrap();
        for i in 0..100 {
            store.append("t", &payload(i)).unwrap();
        }
        store.read_next("t", true).unwrap();
        let second = Store::open(dir.path(), storage.clone(), small()).unwrap_err();
        assert_eq!(second.kind(), io::ErrorKind::ResourceBusy);
    }
    let store = Store::open(dir.path(), storage.clone(), small()).unwrap();
    assert_eq!(store.cursor("t"), Some(1));
    assert_eq!(store.end_offset("t"), Some(100));
    // A foreign file in the directory is refused, and nothing is changed.
    drop(store);
    std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    let err = Store::open(dir.path(), storage.clone(), small()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("notes.txt"));
    // A data directory that is a file is refused.
    let file = dir.path().join("notes.txt");
    assert_eq!(
        Store::open(&file, storage, small()).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    assert!(Path::new(&file).is_file());
}

#[test]
fn lanes_keep_topics_in_separate_segments() {
    let sim = SimStorage::new(26);
    let store = open(&sim, small()).unwrap(); // two lanes
    for i in 0..300 {
        store.append("a", &payload(i)).unwrap();
        store.append("b", &payload(i)).unwrap();
    }
    let before = segments(&sim).len();
    // "a" and "b" live in different lanes: consuming "a" alone frees its segments.
    drain(&store, "a");
    let after = segments(&sim).len();
    assert!(after < before, "{after} of {before} segments left");
    assert_eq!(drain(&store, "b").len(), 300);
    drop(store);
    // Reopen with one lane: the other lane's segments are still read.
    let store = open(&sim, small().with_lanes(1)).unwrap();
    assert_eq!(store.end_offset("b"), Some(300));
    assert_eq!(store.append("a", b"x").unwrap(), 300);
    drop(store);
    let store = open(&sim, small()).unwrap();
    assert_eq!(
        store.read_next("a", true).unwrap(),
        Some((300, b"x".to_vec()))
    );
}

/// An entry a reader consumed before a power cut took it leaves a gap: the cursor that passed
/// it survives, and its offset is never given to different data.
#[test]
fn offsets_a_cursor_passed_are_never_reused() {
    let sim = SimStorage::new(40);
    {
        // Cursors synced on every write, data never: the power cut keeps the cursor only.
        let store = open(&sim, small().with_sync_cursor_writes(true)).unwrap();
        store.append("t", b"lost-0").unwrap();
        store.append("t", b"lost-1").unwrap();
        assert_eq!(drain(&store, "t").len(), 2);
        sim.crash(CrashMode::DropUnsynced);
        std::mem::forget(store); // its handles died with the crash
    }
    let store = open(&sim, small()).unwrap();
    assert_eq!(store.cursor("t"), Some(2));
    // Lost (and below the cursor): never handed out again, never as other data.
    assert!(!matches!(store.read_at("t", 0), Ok(Some(_))));
    assert_eq!(
        store.append("t", b"new").unwrap(),
        2,
        "offsets 0 and 1 are never reused"
    );
    assert_eq!(drain(&store, "t"), vec![(2, b"new".to_vec())]);
    drop(store);
    // The gap is recorded: the next open steps over it without calling it damage.
    let store = open(&sim, small()).unwrap();
    assert_eq!(store.read_at("t", 2).unwrap(), Some(b"new".to_vec()));
    assert_clean(&store);
}

/// A failed write whose cleanup also fails poisons the store: the bytes it left after the
/// written end could otherwise be read back as entries.
#[test]
fn a_failed_write_that_cannot_be_cleared_poisons() {
    let sim = SimStorage::new(41);
    let store = open(&sim, small()).unwrap();
    store.append("t", &payload(0)).unwrap();
    // The next write lands only in part; the write that clears it fails too.
    sim.inject(FaultRule::new(Fault::ShortWrite).op(OpKind::Write).nth(0));
    sim.inject(FaultRule::new(Fault::Eio).op(OpKind::Write).nth(1));
    assert!(store.append("t", &payload(1)).is_err());
    assert!(store.poisoned().is_some());
    let refused = store.append("t", &payload(2)).unwrap_err();
    assert!(walrus_topic::is_poisoned(&refused), "{refused:?}");
    assert_eq!(store.read_at("t", 0).unwrap(), Some(payload(0)));
}

/// Rewinding a cursor while the writer seals and releases blocks by the persisted cursor: the
/// next read always returns exactly the offset committed to (the rewind and the release bound are
/// ordered by the chain lock).
#[test]
fn commit_rewind_races_block_release() {
    let sim = SimStorage::new(42);
    let store = Arc::new(open(&sim, small()).unwrap());
    for i in 0..20 {
        store.append("t", &payload(i)).unwrap();
    }
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 20..1500 {
                store.append("t", &payload(i)).unwrap();
            }
        })
    };
    let mut rewinds = 0;
    for round in 0..400u64 {
        let Some((off, _)) = store.read_next("t", true).unwrap() else {
            continue;
        };
        let back = off.saturating_sub(round % 5);
        match store.commit("t", back) {
            Ok(()) => {
                rewinds += 1;
                let (got, data) = store.read_next("t", false).unwrap().unwrap();
                assert_eq!(got, back, "read after commit({back}) returned {got}");
                assert_eq!(data, payload(got));
            }
            // Released before the commit took the lock: refused, nothing moved.
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}"),
        }
    }
    writer.join().unwrap();
    assert!(rewinds > 300, "{rewinds}");
}

/// A topic whose every block is lost still has its durable watermark: the default mode refuses,
/// and a point-in-time open never hands its offsets out again.
#[test]
fn a_topic_whose_blocks_are_all_lost_keeps_its_offsets() {
    let sim = SimStorage::new(43);
    {
        let store = open(&sim, small().with_lanes(1)).unwrap();
        for i in 0..10 {
            store.append("t", &payload(i)).unwrap();
        }
        store.sync().unwrap();
    }
    let seg = sim
        .files()
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "wseg"))
        .unwrap();
    let file = sim.open(&seg).unwrap();
    file.write_at(&vec![0u8; 8192], 4096).unwrap(); // the only block, header included
    file.sync_data().unwrap();
    let err = open(&sim, small().with_lanes(1)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    let store = open(
        &sim,
        small()
            .with_lanes(1)
            .with_recovery(RecoveryMode::PointInTime),
    )
    .unwrap();
    assert!(
        store.append("t", b"new").unwrap() >= 10,
        "offsets below the watermark reused"
    );
}

/// Disk space allocated for the files under `dir`.
fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum()
}

#[test]
fn small_blocks_keep_the_unused_ends_of_blocks_small() {
    const ENTRIES: u64 = 100_000;
    let entry = vec![7u8; 700];
    let payload = ENTRIES * 700;
    let per_payload = |options: StoreOptions| {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), Arc::new(PwriteStorage::new()), options).unwrap();
        for _ in 0..ENTRIES {
            store.append("t", &entry).unwrap();
        }
        drop(store);
        allocated_bytes(tmp.path()) as f64 / payload as f64
    };
    // Frame headers and the space claimed ahead cost the same in each; the blocks differ.
    let large = per_payload(StoreOptions::new());
    // Blocks of 32 frames of 700 bytes: what a block leaves unused stays near 1/32.
    let small = per_payload(StoreOptions::new().with_small_blocks(true));
    // One-page blocks hold five such entries and leave most of a sixth unused.
    let pages = per_payload(StoreOptions::new().with_block_len(4096));
    assert!(
        small < large + 0.04 && pages > large + 0.1,
        "bytes on disk per payload byte: {large:.3} with 1 MiB blocks, {small:.3} with small \
         blocks, {pages:.3} with 4 KiB blocks"
    );
}

/// An entry larger than a segment gets a segment of its own. If preparing it (the first
/// `fallocate`, of its header) or claiming its space (the second) fails, that segment goes at
/// once: the failed append leaves no file behind, not even until a reopen.
#[test]
fn a_failed_claim_leaves_no_segment_of_its_own() {
    for nth in [1, 2] {
        let sim = SimStorage::new(16);
        let store = open(&sim, small()).unwrap();
        store.append("t", b"small").unwrap();
        let before = segments(&sim);
        sim.inject(FaultRule::new(Fault::Enospc).op(OpKind::Allocate).nth(nth));
        let big = vec![7u8; 100 * 1024];
        let err = store.append("t", &big).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{err}");
        assert_eq!(sim.stats().faults_fired, 1, "allocation {nth} was to fail");
        assert_eq!(segments(&sim), before, "allocation {nth}: a segment leaked");
        assert_eq!(store.end_offset("t"), Some(1));
        // Space comes back: the same append succeeds.
        assert_eq!(store.append("t", &big).unwrap(), 1);
        assert_eq!(store.read_at("t", 1).unwrap(), Some(big));
    }
}

/// A power cut can keep a consumer's cursor past the entries it keeps (the cursor file was
/// synced, the entries not): recovery skips the offsets between, and the watermark it writes
/// stays at the entries kept. (Raised to the skipped offsets, it claimed synced entries the
/// next open did not find, and that open refused the directory.)
#[test]
fn a_cursor_past_the_entries_kept_opens_again_and_again() {
    let sim = SimStorage::new(18);
    {
        let store = open(&sim, small()).unwrap();
        for i in 0..10 {
            store.append("t", &payload(i)).unwrap();
        }
        store.sync().unwrap();
        for i in 10..20 {
            store.append("t", &payload(i)).unwrap();
        }
        // The default consumer first, so that it holds the entries from 5 on.
        for _ in 0..5 {
            store.read_next("t", true).unwrap().unwrap();
        }
        for _ in 0..20 {
            store.read_next_as("t", "fast", true).unwrap().unwrap();
        }
        sim.open(Path::new(&format!("{DIR}/cursors.wcur")))
            .unwrap()
            .sync_data()
            .unwrap();
        sim.crash(CrashMode::DropUnsynced);
        std::mem::forget(store);
    }
    for round in 0..3 {
        let store = open(&sim, small()).unwrap_or_else(|e| panic!("open {round}: {e}"));
        let appended = u64::from(round > 1);
        assert_eq!(store.end_offset("t"), Some(20 + appended), "open {round}");
        assert_eq!(store.read_at("t", 9).unwrap(), Some(payload(9)));
        assert_eq!(store.cursor("t"), Some(5));
        if round == 1 {
            // Appends go on after the skipped offsets, and survive the next open too.
            assert_eq!(store.append("t", b"next").unwrap(), 20);
            store.sync().unwrap();
        }
    }
    let store = open(&sim, small()).unwrap();
    assert_eq!(store.read_at("t", 20).unwrap(), Some(b"next".to_vec()));
}

/// Entry data is chosen by users, and may hold the bytes of a block header. Recovery looks for
/// block headers at every page boundary after a lost one, so a page of entry data that passed
/// for a header would, after a crash, put entries that one topic's writer chose into another
/// topic. Block headers are keyed by their segment's random key: this one, checksummed as
/// anyone can (no key, or a guessed one), never passes, whatever the mode.
#[test]
fn a_block_header_forged_in_entry_data_is_never_taken_for_one() {
    use walrus_block::{BLOCK_HEADER_LEN, BlockHeader, FRAME_HEADER_LEN, FrameKind, encode_frame};
    let sim = SimStorage::new(31);
    let store = open(&sim, small()).unwrap();
    // A first entry tells the attacker which segment the topic writes in.
    assert_eq!(store.append("attacker", b"probe").unwrap(), 0);
    let segment = segments(&sim).into_iter().min().unwrap();
    let segment_id: u64 = segment.trim_end_matches(".wseg").parse().unwrap();
    // A page that reads as the first block of topic "victim", holding one entry.
    let mut forged_page = Vec::new();
    for key in [0u32, 1] {
        let header = BlockHeader {
            topic: "victim".into(),
            segment_id,
            chain_seq: 0,
            first_offset: 0,
            prev_end: 0,
            block_len: 4096,
            abandoned: false,
            keyed_frames: key != 0,
        };
        let mut page = header.encode(key).unwrap().to_vec();
        encode_frame(&mut page, 0, FrameKind::single(), b"forged", key).unwrap();
        page.resize(4096, 0);
        forged_page.push(page);
    }
    // Too long for the topic's first block, the next entry is the first of a block of its own
    // (blocks are page aligned), so its payload starts `lead` bytes into a page: every page
    // boundary it covers gets a forged page (unkeyed, then keyed with a guess, alternately).
    let lead = BLOCK_HEADER_LEN + FRAME_HEADER_LEN;
    let mut payload = vec![0x5a_u8; 6 * 4096];
    payload[..16].copy_from_slice(b"attacker-payload");
    let mut n = 0;
    let mut at = 4096 - lead;
    while at + 4096 <= payload.len() {
        payload[at..at + 4096].copy_from_slice(&forged_page[n % 2]);
        at += 4096;
        n += 1;
    }
    assert!(n >= 4, "{n} forged pages");
    assert_eq!(store.append("attacker", &payload).unwrap(), 1);
    store.sync().unwrap();
    drop(store);

    // The layout the forging assumed: the block holding the payload, page aligned.
    let file = sim.open(Path::new(DIR).join(&segment).as_path()).unwrap();
    let len = file.len().unwrap();
    let block = (4096..len)
        .step_by(4096)
        .find(|&page| {
            let mut b = [0u8; 16];
            file.read_exact_at(&mut b, page + lead as u64).is_ok() && &b == b"attacker-payload"
        })
        .expect("the payload is where the forging assumed");
    // The attacker's block header is lost (zeroed), then damaged: either way the walk looks
    // for the next header at every page boundary after it.
    for damage in [0x00_u8, 0xee] {
        file.write_at(&[damage; BLOCK_HEADER_LEN], block).unwrap();
        file.sync_data().unwrap();
        // Each mode sees the same bytes (an open may zero what it cannot attribute).
        let mut damaged = vec![0u8; len as usize];
        file.read_exact_at(&mut damaged, 0).unwrap();
        let mut opened = 0;
        for mode in [
            RecoveryMode::SkipCorrupted,
            RecoveryMode::PointInTime,
            RecoveryMode::TolerateCorruptedTail,
        ] {
            file.write_at(&damaged, 0).unwrap();
            file.sync_data().unwrap();
            // Refused: the attacker's synced entry is gone, which is damage.
            let Ok(store) = open(&sim, small().with_recovery(mode)) else {
                continue;
            };
            opened += 1;
            assert!(
                !store.topics().iter().any(|t| &**t == "victim"),
                "{mode:?}: a forged block made a topic: {:?}",
                store.topics()
            );
            assert_eq!(store.read_at("victim", 0).unwrap(), None, "{mode:?}");
            assert_eq!(store.end_offset("victim"), None, "{mode:?}");
        }
        assert!(opened >= 2, "the lenient modes open");
    }
}

/// A directory written by format v2 (segment headers without a key, block headers checksummed
/// from 0) opens, serves its entries, and takes new ones in keyed segments only.
#[test]
fn a_directory_of_format_v2_opens_and_grows_in_format_v4() {
    use walrus_block::{BlockHeader, FrameKind, SegmentHeader, checksum::crc32c, encode_frame};
    let sim = SimStorage::new(32);
    sim.create_dir_all(Path::new(DIR)).unwrap();
    // Segment 0 as v2 wrote it: the 36-byte header, then one block of topic "t".
    let mut file = Vec::new();
    file.extend_from_slice(b"WALRUSSG");
    file.extend_from_slice(&[2, 0, 1, 0]);
    file.extend_from_slice(&4096u32.to_le_bytes());
    file.extend_from_slice(&0u64.to_le_bytes());
    file.extend_from_slice(&8192u64.to_le_bytes());
    let crc = crc32c(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    file.resize(4096, 0);
    let header = BlockHeader {
        topic: "t".into(),
        segment_id: 0,
        chain_seq: 0,
        first_offset: 0,
        prev_end: 0,
        block_len: 4096,
        abandoned: false,
        keyed_frames: false,
    };
    file.extend_from_slice(&header.encode(0).unwrap());
    for i in 0..3 {
        encode_frame(&mut file, i, FrameKind::single(), &payload(i), 0).unwrap();
    }
    file.resize(64 << 10, 0);
    let path = Path::new(DIR).join("00000000000000000000.wseg");
    let f = sim.create(&path, 64 << 10).unwrap();
    f.write_at(&file, 0).unwrap();
    f.sync_data().unwrap();
    sim.sync_dir(Path::new(DIR)).unwrap();
    drop(f);

    for round in 0..2u64 {
        // One allocation lane: the v2 segment is the lane's tail, where allocation would resume.
        let store = open(&sim, small().with_lanes(1)).unwrap();
        assert!(
            store.recovery_report().issues.is_empty(),
            "{:?}",
            store.recovery_report().issues
        );
        for i in 0..3 + round {
            assert_eq!(store.read_at("t", i).unwrap(), Some(payload(i)), "t@{i}");
        }
        for r in 0..round {
            assert_eq!(
                store.read_at("u", r).unwrap(),
                Some(payload(50 + r)),
                "u@{r}"
            );
        }
        assert_eq!(store.append("t", &payload(3 + round)).unwrap(), 3 + round);
        // A new topic needs a new block.
        assert_eq!(store.append("u", &payload(50 + round)).unwrap(), round);
        store.sync().unwrap();
    }
    // The v2 segment took nothing more (data written into an unkeyed segment could pass for
    // its block headers); new blocks went to keyed segments.
    let v2 = sim.contents(&path).unwrap();
    assert!(v2 == file, "the v2 segment was written to");
    // Its header lost: the first block's header, valid unkeyed, says it is a v2 segment.
    let f = sim.open(&path).unwrap();
    f.write_at(&[0; 36], 0).unwrap();
    f.sync_data().unwrap();
    let store = open(
        &sim,
        small()
            .with_lanes(1)
            .with_recovery(RecoveryMode::PointInTime),
    )
    .unwrap();
    for i in 0..3 {
        assert_eq!(
            store.read_at("t", i).unwrap(),
            Some(payload(i)),
            "t@{i} after"
        );
    }
    drop(store);
    for name in segments(&sim) {
        let bytes = sim.contents(&Path::new(DIR).join(&name)).unwrap();
        let h = SegmentHeader::decode(&bytes).unwrap().unwrap();
        if name != "00000000000000000000.wseg" {
            assert_ne!(h.key, 0, "{name}");
            assert!(h.keyed_frames, "{name}");
            assert_eq!(SegmentHeader::decode_copy(&bytes), Some(h), "{name}");
        }
    }
    assert!(segments(&sim).len() >= 2);
}

/// The key of [`v3_directory`]'s segment.
const V3_KEY: u32 = 0x0123_4567;

/// Makes `DIR` a directory as format v3 wrote it: segment 0 (64 KiB, key [`V3_KEY`], header
/// version 3) holding one block of topic "t" (8 KiB, frames not keyed) with entries
/// `payload(0..n)`, durable. Returns the segment's bytes.
fn v3_directory(sim: &SimStorage, n: u64) -> Vec<u8> {
    use walrus_block::{BlockHeader, FrameKind, SegmentHeader, encode_frame};
    sim.create_dir_all(Path::new(DIR)).unwrap();
    let mut file = SegmentHeader {
        segment_id: 0,
        block_len: 8192,
        key: V3_KEY,
        synced: false,
        keyed_frames: false,
    }
    .encode_page();
    let header = BlockHeader {
        topic: "t".into(),
        segment_id: 0,
        chain_seq: 0,
        first_offset: 0,
        prev_end: 0,
        block_len: 8192,
        abandoned: false,
        keyed_frames: false,
    };
    file.extend_from_slice(&header.encode(V3_KEY).unwrap());
    for i in 0..n {
        encode_frame(&mut file, i, FrameKind::single(), &payload(i), 0).unwrap();
    }
    file.resize(64 << 10, 0);
    let path = Path::new(DIR).join("00000000000000000000.wseg");
    let f = sim.create(&path, 64 << 10).unwrap();
    f.write_at(&file, 0).unwrap();
    f.sync_data().unwrap();
    sim.sync_dir(Path::new(DIR)).unwrap();
    file
}

/// The headers of the blocks of the segment file `bytes` (key `key`), walked back to back.
fn block_headers(bytes: &[u8], key: u32) -> Vec<walrus_block::BlockHeader> {
    let mut out = Vec::new();
    let mut pos = 4096;
    while let Some(Ok(Some(h))) = bytes
        .get(pos..)
        .map(|rest| walrus_block::BlockHeader::decode(rest, key))
    {
        pos += h.block_len as usize;
        out.push(h);
    }
    out
}

/// A directory written by format v3 (keyed block headers, frames not keyed) opens and serves
/// its entries. Its live block and its segment go on taking unkeyed frames and blocks (a build
/// that reads v3 only still reads that segment whole); new segments are v4 with keyed frames,
/// and a batch that starts in a v3 block and ends in a v4 one keys each frame as its block
/// says. Damage in a v3 block is still resynchronised over; every reopen reads everything.
#[test]
fn a_directory_of_format_v3_opens_and_grows_in_format_v4() {
    use walrus_block::SegmentHeader;
    let sim = SimStorage::new(58);
    let file = v3_directory(&sim, 3);
    let seg = SegmentHeader::decode(&file).unwrap().unwrap();
    let written = |store: &Store, t: &str, n: u64, base: u64| {
        for i in 0..n {
            assert_eq!(
                store.read_at(t, i).unwrap(),
                Some(payload(base + i)),
                "{t}@{i}"
            );
        }
    };
    // 60 entries of 1.5 KB: more than the v3 block and the rest of its segment hold.
    let big: Vec<Vec<u8>> = (3..63u64)
        .map(|i| (0..1500u64).map(|k| (i * 7 + k) as u8).collect())
        .collect();
    {
        let store = open(&sim, small().with_lanes(1)).unwrap();
        assert!(store.recovery_report().issues.is_empty());
        written(&store, "t", 3, 0);
        let batch: Vec<&[u8]> = big.iter().map(Vec::as_slice).collect();
        assert_eq!(store.append_batch("t", &batch).unwrap(), 3..63);
        for i in 0..40 {
            assert_eq!(store.append("u", &payload(100 + i)).unwrap(), i);
        }
        store.sync().unwrap();
    }
    let contents = |name: &str| sim.contents(&Path::new(DIR).join(name)).unwrap();
    let v3 = contents("00000000000000000000.wseg");
    assert_eq!(SegmentHeader::decode(&v3).unwrap().unwrap(), seg);
    let v3_blocks = block_headers(&v3, V3_KEY);
    assert!(v3_blocks.len() > 1, "{v3_blocks:?}");
    assert!(
        v3_blocks.iter().all(|b| !b.keyed_frames),
        "a keyed block in a v3 segment: {v3_blocks:?}"
    );
    let names = segments(&sim);
    assert!(names.len() >= 2, "{names:?}");
    let mut t_keyed = false;
    for name in names.iter().filter(|n| *n != "00000000000000000000.wseg") {
        let bytes = contents(name);
        let h = SegmentHeader::decode(&bytes).unwrap().unwrap();
        assert!(h.keyed_frames, "{name}");
        let blocks = block_headers(&bytes, h.key);
        assert!(blocks.iter().all(|b| b.keyed_frames), "{name}: {blocks:?}");
        t_keyed |= blocks.iter().any(|b| b.topic == "t");
    }
    assert!(
        t_keyed,
        "the batch never reached a v4 segment: {v3_blocks:?} {names:?}"
    );
    let read_all = |store: &Store| {
        written(store, "t", 2, 0);
        for (k, e) in big.iter().enumerate() {
            let o = 3 + k as u64;
            assert_eq!(store.read_at("t", o).unwrap().as_ref(), Some(e), "t@{o}");
        }
        written(store, "u", 40, 100);
    };
    {
        let store = open(&sim, small().with_lanes(1)).unwrap();
        written(&store, "t", 3, 0);
        read_all(&store);
    }
    // The v3 block's frames are still unkeyed: the third entry's header damaged, a skipping
    // open resynchronises on the unkeyed fourth (written after the upgrade).
    damage_frame_header(&sim, &payload(2), 4);
    let e = open(&sim, small().with_lanes(1)).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    let store = open(
        &sim,
        small()
            .with_lanes(1)
            .with_recovery(RecoveryMode::SkipCorrupted),
    )
    .unwrap();
    assert!(store.read_at("t", 2).is_err() || store.read_at("t", 2).unwrap().is_none());
    read_all(&store);
    assert_eq!(store.append("t", b"more").unwrap(), 63);
}

/// The segment header's copy (byte 2048) keeps the key when the header is lost, and the header
/// keeps it when the copy is; the one lost is damage, written again by the modes that open.
/// With both lost, the segment's blocks cannot be validated, and its entries are damage like
/// any other.
#[test]
fn the_segment_header_copy_keeps_the_key() {
    use walrus_block::{SEGMENT_HEADER_COPY_AT, SEGMENT_HEADER_LEN, SegmentHeader};
    let fill = |sim: &SimStorage| {
        let store = open(sim, small()).unwrap();
        for i in 0..20 {
            store.append("t", &payload(i)).unwrap();
        }
        store.sync().unwrap();
        drop(store);
        let name = segments(sim).into_iter().min().unwrap();
        let file = sim.open(&Path::new(DIR).join(name)).unwrap();
        let mut page = vec![0u8; 4096];
        file.read_exact_at(&mut page, 0).unwrap();
        (file, page)
    };
    let zero = |file: &Arc<dyn walrus_io::SegmentFile>, at: usize| {
        file.write_at(&[0; SEGMENT_HEADER_LEN], at as u64).unwrap();
        file.sync_data().unwrap();
    };

    // One lost: the other's key reads every entry, and the lost one is written again. Damage
    // in a segment holding synced entries: the default mode refuses it.
    let mut now = vec![0u8; 4096];
    for (seed, lost) in [(33, 0), (34, SEGMENT_HEADER_COPY_AT)] {
        let sim = SimStorage::new(seed);
        let (file, page) = fill(&sim);
        zero(&file, lost);
        let err = open(&sim, small()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let store = open(&sim, small().with_recovery(RecoveryMode::PointInTime)).unwrap();
        assert_eq!(
            store.recovery_report().issues[0].problem,
            Problem::CorruptSegmentHeader
        );
        assert_eq!(drain(&store, "t").len(), 20, "lost at {lost}");
        drop(store);
        file.read_exact_at(&mut now, 0).unwrap();
        assert!(now == page, "the header at {lost} was not written again");
        assert!(SegmentHeader::decode(&now).unwrap().is_some());
        drop(open(&sim, small()).unwrap());
    }

    // Both lost (the page): the key is solved from the first block's header, which the
    // engine wrote; the entries read, the page is written again. Still damage to a segment
    // holding synced entries.
    let sim = SimStorage::new(35);
    let (file, page) = fill(&sim);
    file.write_at(&[0; 4096], 0).unwrap();
    file.sync_data().unwrap();
    let err = open(&sim, small()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    let store = open(&sim, small().with_recovery(RecoveryMode::PointInTime)).unwrap();
    assert_eq!(drain(&store, "t").len(), 20);
    drop(store);
    file.read_exact_at(&mut now, 0).unwrap();
    assert!(now == page, "the page was not written again");

    // A segment of one block, its page lost: no other block header confirms the key solved
    // from the first, but the first block's first frame does (format v4: keyed with it).
    let sim = SimStorage::new(40);
    {
        let store = open(&sim, small()).unwrap();
        store.append("t", b"alone").unwrap();
        store.append("t", b"together").unwrap();
        store.sync().unwrap();
    }
    let name = segments(&sim).into_iter().min().unwrap();
    let file = sim.open(&Path::new(DIR).join(name)).unwrap();
    let mut page = vec![0u8; 4096];
    file.read_exact_at(&mut page, 0).unwrap();
    let mut second = [0u8; 308];
    file.read_exact_at(&mut second, 8192).unwrap();
    assert!(second.iter().all(|&b| b == 0), "one block only");
    file.write_at(&[0; 4096], 0).unwrap();
    file.sync_data().unwrap();
    let store = open(&sim, small().with_recovery(RecoveryMode::PointInTime)).unwrap();
    assert_eq!(
        drain(&store, "t"),
        [(0, b"alone".to_vec()), (1, b"together".to_vec())]
    );
    drop(store);
    file.read_exact_at(&mut now, 0).unwrap();
    assert!(now == page, "the page was not written again");

    // The first block's header damaged as well, in a way that still looks like a header (its
    // topic's name changed): any bytes solve to some key, and this one's is confirmed by no
    // other block header (nor by its first frame). The key stays lost: no topic of the changed name, and no key
    // written back.
    let sim = SimStorage::new(39);
    let (file, _) = fill(&sim);
    file.write_at(&[0; 4096], 0).unwrap();
    let mut first = [0u8; 308];
    file.read_exact_at(&mut first, 4096).unwrap();
    assert_eq!(&first[48..49], b"t");
    first[48] = b'u';
    file.write_at(&first, 4096).unwrap();
    file.sync_data().unwrap();
    let store = open(&sim, small().with_recovery(RecoveryMode::SkipCorrupted)).unwrap();
    assert!(
        !store.topics().iter().any(|t| &**t == "u"),
        "{:?}",
        store.topics()
    );
    drop(store);
    file.read_exact_at(&mut now, 0).unwrap();
    assert!(
        now.iter().all(|&b| b == 0),
        "an unconfirmed key was written back"
    );

    // The first block's header lost too: the synced entries are gone, which the default mode
    // refuses; SkipCorrupted opens, without them, and leaves the file as it is.
    let sim = SimStorage::new(36);
    let (file, _) = fill(&sim);
    file.write_at(&[0; 4096 + 308], 0).unwrap();
    file.sync_data().unwrap();
    let err = open(&sim, small()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    let store = open(&sim, small().with_recovery(RecoveryMode::SkipCorrupted)).unwrap();
    assert_eq!(store.read_at("t", 0).unwrap(), None);
    assert!(!store.recovery_report().issues.is_empty());
    drop(store);
    file.read_exact_at(&mut now, 0).unwrap();
    assert!(
        now.iter().all(|&b| b == 0),
        "the unreadable header was rewritten"
    );
}

/// The header page's write torn (one of the header and its copy kept, the other zero) in a
/// segment holding no synced entry is no damage: even `AbsoluteConsistency` opens, says
/// nothing, and the page is written whole again.
#[test]
fn a_torn_header_page_without_synced_entries_is_no_damage() {
    use walrus_block::{SEGMENT_HEADER_COPY_AT, SEGMENT_HEADER_LEN};
    // The header, its copy, or the page whole (the key then solved from the block headers).
    for (seed, lost, len) in [
        (37, 0, SEGMENT_HEADER_LEN),
        (38, SEGMENT_HEADER_COPY_AT, SEGMENT_HEADER_LEN),
        (40, 0, 4096),
    ] {
        let sim = SimStorage::new(seed);
        let (file, page) = unsynced_segment(&sim, small());
        file.write_at(&vec![0; len], lost as u64).unwrap();
        let store = open(
            &sim,
            small().with_recovery(RecoveryMode::AbsoluteConsistency),
        )
        .unwrap_or_else(|e| panic!("lost at {lost}: {e}"));
        assert!(
            store.recovery_report().issues.is_empty(),
            "{:?}",
            store.recovery_report().issues
        );
        assert_eq!(drain(&store, "t").len(), 20);
        drop(store);
        let mut now = vec![0u8; 4096];
        file.read_exact_at(&mut now, 0).unwrap();
        assert!(
            now == page,
            "the page was not written again (lost at {lost})"
        );
    }
}

/// A segment whose header page and block headers a power cut lost (frames kept), made by a run
/// without the journal, holds only unsynced data however the directory is opened now: an open
/// with the journal deletes it as it would without, instead of refusing it (and every later
/// open) as damage to a page synced when the segment was made.
#[test]
fn a_lost_page_made_without_the_journal_is_no_damage_to_an_open_with_it() {
    use walrus_block::{BLOCK_HEADER_LEN, SegmentHeader};
    let sim = SimStorage::new(42);
    let (file, page) = unsynced_segment(&sim, small());
    let key = SegmentHeader::decode(&page).unwrap().unwrap().key;
    let mut bytes = vec![0u8; file.len().unwrap() as usize];
    file.read_exact_at(&mut bytes, 0).unwrap();
    let mut at = 4096u64;
    for h in block_headers(&bytes, key) {
        file.write_at(&[0; BLOCK_HEADER_LEN], at).unwrap();
        at += h.block_len;
    }
    assert!(at > 4096, "no block");
    file.write_at(&[0; 4096], 0).unwrap();
    let name = segments(&sim).into_iter().min().unwrap();
    let store = open(&sim, small().with_journal(true)).unwrap_or_else(|e| panic!("refused: {e}"));
    assert!(
        !segments(&sim).contains(&name),
        "{:?}",
        store.recovery_report()
    );
}

/// 20 entries of "t" appended on `sim` with `options`, never synced (no watermark covers
/// them), the store closed: the first segment file and its header page as written.
fn unsynced_segment(
    sim: &SimStorage,
    options: StoreOptions,
) -> (Arc<dyn walrus_io::SegmentFile>, Vec<u8>) {
    let store = open(sim, options).unwrap();
    for i in 0..20 {
        store.append("t", &payload(i)).unwrap();
    }
    drop(store);
    let name = segments(sim).into_iter().min().unwrap();
    let file = sim.open(&Path::new(DIR).join(name)).unwrap();
    let mut page = vec![0u8; 4096];
    file.read_exact_at(&mut page, 0).unwrap();
    (file, page)
}

/// A segment made with the journal has its header page synced before any block (the header's
/// `SYNCED` flag): one half of that page found zero with blocks behind is damage, whichever
/// way the directory is opened now, even with no watermark covering the entries yet.
#[test]
fn a_half_lost_page_synced_at_creation_is_damage() {
    use walrus_block::{SEGMENT_HEADER_COPY_AT, SEGMENT_HEADER_LEN, SegmentHeader};
    let sim = SimStorage::new(41);
    let (file, page) = unsynced_segment(&sim, small().with_journal(true));
    assert!(SegmentHeader::decode(&page).unwrap().unwrap().synced);
    file.write_at(&[0; SEGMENT_HEADER_LEN], SEGMENT_HEADER_COPY_AT as u64)
        .unwrap();
    let err = open(
        &sim,
        small().with_recovery(RecoveryMode::AbsoluteConsistency),
    )
    .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    let store = open(&sim, small().with_recovery(RecoveryMode::PointInTime)).unwrap();
    assert_eq!(
        store.recovery_report().issues[0].problem,
        Problem::CorruptSegmentHeader
    );
    assert_eq!(drain(&store, "t").len(), 20);
}

/// Twenty entries of "t" appended, ten consumed (the cursor record written in both slots of
/// its pair), synced, and the store closed.
fn ten_of_twenty_consumed(sim: &SimStorage) {
    let store = open(sim, small()).unwrap();
    for i in 0..20 {
        store.append("t", &payload(i)).unwrap();
    }
    for _ in 0..10 {
        store.read_next("t", true).unwrap().unwrap();
    }
    store.sync().unwrap();
}

/// The slots of the cursor file, 512 bytes each, that hold any byte.
fn written_cursor_slots(sim: &SimStorage) -> Vec<u64> {
    let file = sim.open(Path::new(&format!("{DIR}/cursors.wcur"))).unwrap();
    let mut bytes = vec![0u8; file.len().unwrap() as usize];
    file.read_exact_at(&mut bytes, 0).unwrap();
    bytes
        .chunks(512)
        .enumerate()
        .filter(|(_, slot)| slot.iter().any(|&b| b != 0))
        .map(|(i, _)| i as u64 * 512)
        .collect()
}

fn damage_cursor_slot(sim: &SimStorage, position: u64) {
    let file = sim.open(Path::new(&format!("{DIR}/cursors.wcur"))).unwrap();
    file.write_at(&[0xAA; 64], position + 32).unwrap();
    file.sync_data().unwrap();
}

/// A cursor record whose two slots are both damaged is lost: no crash does that (a crash
/// tears the one slot being written). It is never dropped silently, which would hand out
/// again what the consumer had consumed: the default open refuses, naming the file; an open
/// in a lenient mode reports it, clears it, and the consumer starts again at the first entry
/// kept; the next default open then finds nothing wrong.
#[test]
fn a_cursor_record_with_both_slots_damaged_is_refused_or_reported_never_dropped_silently() {
    let sim = SimStorage::new(52);
    ten_of_twenty_consumed(&sim);
    let slots = written_cursor_slots(&sim);
    assert_eq!(
        slots.len(),
        2,
        "one record, written in both slots: {slots:?}"
    );
    for &slot in &slots {
        damage_cursor_slot(&sim, slot);
    }
    for mode in [
        RecoveryMode::TolerateCorruptedTail,
        RecoveryMode::AbsoluteConsistency,
    ] {
        let e = open(&sim, small().with_recovery(mode)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{mode:?}: {e}");
        assert!(e.to_string().contains("cursors.wcur"), "{e}");
    }
    assert_eq!(
        written_cursor_slots(&sim),
        slots,
        "a refused open wrote nothing"
    );
    {
        let store = open(&sim, small().with_recovery(RecoveryMode::PointInTime)).unwrap();
        let issues: Vec<_> = store
            .recovery_report()
            .issues
            .iter()
            .filter(|i| i.problem == Problem::CorruptCursorRecord)
            .collect();
        assert_eq!(issues.len(), 1, "{:?}", store.recovery_report());
        assert_eq!(issues[0].action, Action::Cleared);
        assert!(issues[0].file.ends_with("cursors.wcur"));
        assert_eq!(issues[0].position, slots[0]);
        // Reported above, not lost silently: the consumer starts again.
        assert_eq!(store.read_next("t", true).unwrap().unwrap().0, 0);
    }
    let store = open(&sim, small()).unwrap();
    assert_clean(&store);
    assert_eq!(store.read_next("t", true).unwrap().unwrap().0, 1);
}

/// One damaged slot beside a never-written one may be a record's first write, torn by a crash
/// before any sync: the default open goes on, reports it and clears it; `AbsoluteConsistency`
/// refuses.
#[test]
fn a_cursor_record_written_once_and_damaged_is_reported() {
    let sim = SimStorage::new(53);
    {
        let store = open(&sim, small()).unwrap();
        for i in 0..5 {
            store.append("t", &payload(i)).unwrap();
        }
        store.read_next("t", true).unwrap().unwrap();
        store.sync().unwrap();
    }
    let slots = written_cursor_slots(&sim);
    assert_eq!(slots.len(), 2, "{slots:?}");
    // As if the second slot had never been written, and the first write tore.
    let file = sim.open(Path::new(&format!("{DIR}/cursors.wcur"))).unwrap();
    file.write_at(&[0; 512], slots[1]).unwrap();
    damage_cursor_slot(&sim, slots[0]);
    let e = open(
        &sim,
        small().with_recovery(RecoveryMode::AbsoluteConsistency),
    )
    .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    let store = open(&sim, small()).unwrap();
    let report = store.recovery_report();
    assert!(
        report
            .issues
            .iter()
            .any(|i| i.problem == Problem::CorruptCursorRecord && i.action == Action::Cleared),
        "{report:?}"
    );
    assert_eq!(store.read_next("t", true).unwrap().unwrap().0, 0);
}

/// One damaged slot beside a valid one: no crash does that either (a slot is one sector,
/// written whole or not at all), and the newest generation may be the one lost (the consumer
/// goes back to the older one: entries handed out again). Used silently before;
/// `AbsoluteConsistency` refuses, naming the slot, and the other modes report it and clear
/// it, after which an open finds nothing.
#[test]
fn a_cursor_record_with_one_slot_damaged_is_reported_and_refused_by_absolute_consistency() {
    let sim = SimStorage::new(55);
    ten_of_twenty_consumed(&sim);
    let slots = written_cursor_slots(&sim);
    assert_eq!(slots.len(), 2, "{slots:?}");
    damage_cursor_slot(&sim, slots[1]);
    let e = open(
        &sim,
        small().with_recovery(RecoveryMode::AbsoluteConsistency),
    )
    .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("cursors.wcur"), "{e}");
    {
        let store = open(&sim, small()).unwrap();
        let issues: Vec<_> = store
            .recovery_report()
            .issues
            .iter()
            .filter(|i| i.problem == Problem::CorruptCursorRecord)
            .cloned()
            .collect();
        assert_eq!(issues.len(), 1, "{:?}", store.recovery_report());
        assert_eq!(issues[0].action, Action::Cleared);
        assert_eq!(issues[0].position, slots[1]);
        // The other slot's generation: 9 or 10, whichever it held.
        let cursor = store.cursor("t").unwrap();
        assert!((9..=10).contains(&cursor), "{cursor}");
    }
    let store = open(
        &sim,
        small().with_recovery(RecoveryMode::AbsoluteConsistency),
    )
    .unwrap();
    assert_clean(&store);
}

/// A lenient open that skips what is missing of a batch at the end of a topic (its tail
/// damaged, and the watermark records lost, so the damage may be below it: kept as it is)
/// gives the batch's missing offsets up: the next append starts after them, in a block that
/// records the gap. It used to land right after the batch's head, where the next open found
/// a first frame inside an unfinished batch: the new, acknowledged entry skipped or cut.
#[test]
fn a_batch_tail_skipped_under_lost_watermarks_is_stepped_over_by_the_next_append() {
    let sim = SimStorage::new(56);
    let part = |k: u8| vec![k; 300];
    {
        let store = open(&sim, small()).unwrap();
        store.append("y", b"a").unwrap();
        store
            .append_batch("y", &[&part(0xB1), &part(0xB2), &part(0xB3)])
            .unwrap();
        store.sync().unwrap();
    }
    // The batch's last entry damaged, and every watermark record.
    let seg = first_segment(&sim);
    let mut bytes = vec![0u8; 64 << 10];
    let n = seg.read_at(&mut bytes, 0).unwrap();
    let at = bytes[..n]
        .windows(300)
        .position(|w| w == part(0xB3).as_slice())
        .unwrap();
    seg.write_at(b"#", at as u64 + 10).unwrap();
    seg.sync_data().unwrap();
    let marks = sim.open(Path::new(&format!("{DIR}/durable.wcur"))).unwrap();
    let mut all = vec![0u8; marks.len().unwrap() as usize];
    marks.read_exact_at(&mut all, 0).unwrap();
    for (i, slot) in all.chunks(512).enumerate() {
        if slot.iter().any(|&b| b != 0) {
            marks.write_at(&[0xAA; 64], i as u64 * 512 + 32).unwrap();
        }
    }
    marks.sync_data().unwrap();
    let skip = || small().with_recovery(RecoveryMode::SkipCorrupted);
    let c = {
        let store = open(&sim, skip()).unwrap();
        assert_eq!(store.read_at("y", 2).unwrap(), Some(part(0xB2)));
        let c = store.append("y", b"c").unwrap();
        assert!(c >= 4, "the damaged entry's offset is given up: {c}");
        store.sync().unwrap();
        c
    };
    for mode in [RecoveryMode::SkipCorrupted, RecoveryMode::PointInTime] {
        let store = open(&sim, small().with_recovery(mode)).unwrap();
        assert_eq!(
            store.read_at("y", c).unwrap(),
            Some(b"c".to_vec()),
            "{mode:?}"
        );
        let report = store.recovery_report();
        assert!(
            report
                .issues
                .iter()
                .all(|i| i.problem != Problem::Corrupt(walrus_block::CorruptReason::Sequence)),
            "{mode:?}: {report:?}"
        );
    }
}

/// A point-in-time open cuts a topic at damage below the watermark and keeps the bytes after
/// the cut for an open in another mode. When the cut falls inside the last block of a
/// segment, consuming up to the cut must not release that block: its segment would go, and
/// with it the valid entries after the damage.
#[test]
fn a_block_cut_below_the_watermark_keeps_its_segment_once_consumed() {
    let entry = |i: u64| format!("entry {i:05} ").repeat(40).into_bytes();
    let sim = SimStorage::new(54);
    {
        let store = open(&sim, small()).unwrap();
        for i in 0..300 {
            store.append("t", &entry(i)).unwrap();
        }
        store.sync().unwrap();
    }
    let first = first_segment(&sim);
    let mut bytes = vec![0u8; 64 << 10];
    let n = first.read_at(&mut bytes, 0).unwrap();
    let held = |i: u64| {
        let e = entry(i);
        bytes[..n].windows(e.len()).position(|w| w == e)
    };
    // The last entry of the first segment, and the one before it, in the same block.
    let last = (0..300).filter(|&i| held(i).is_some()).max().unwrap();
    let damaged = last - 1;
    let at = held(damaged).unwrap() as u64;
    assert_eq!(at / 8192, held(last).unwrap() as u64 / 8192, "one block");
    first.write_at(b"#", at + 3).unwrap();
    first.sync_data().unwrap();
    let first_name = segments(&sim).into_iter().min().unwrap();
    {
        let store = open(&sim, small().with_recovery(RecoveryMode::PointInTime)).unwrap();
        let got = drain(&store, "t");
        assert_eq!(got.len() as u64, damaged, "up to the cut");
        store.maintain().unwrap();
        assert!(
            segments(&sim).contains(&first_name),
            "the cut block's segment stays: {:?}",
            segments(&sim)
        );
        // The next block records the cut: later opens step over it.
        store.append("t", b"after").unwrap();
        store.sync().unwrap();
    }
    {
        let store = open(&sim, small()).unwrap();
        assert_eq!(store.read_at("t", 300).unwrap(), Some(b"after".to_vec()));
        // Appends that seal blocks, each a moment when consumed blocks are released.
        for i in 0..50 {
            store.append("t", &entry(1000 + i)).unwrap();
        }
        store.maintain().unwrap();
        assert!(
            segments(&sim).contains(&first_name),
            "nor once the cut is recorded: {:?}",
            segments(&sim)
        );
    }
    let store = open(&sim, small().with_recovery(RecoveryMode::SkipCorrupted)).unwrap();
    assert_eq!(store.read_at("t", last).unwrap(), Some(entry(last)));
    // (A consumer that reads on past the cut steps over the entries behind it: they are below
    // its cursor from then on, as consumed ones are.)
}

/// An entry's data may hold the bytes of a frame. In a block of format v3 frames are not keyed,
/// so after damage to that entry's header recovery's resynchronisation may find the inner one;
/// one naming an offset its block could not hold (past one frame per header's length of data
/// before it) is not taken for a frame: it would raise the topic's next offset to the format's
/// last, and every later append would fail. (A v3 block goes on taking entries after an
/// upgrade: here the carrier is appended into one.)
#[test]
fn a_frame_in_entry_data_naming_an_impossible_offset_is_not_taken_for_one() {
    use walrus_block::{FrameKind, MAX_OFFSET, encode_frame};
    let sim = SimStorage::new(55);
    let mut inner = Vec::new();
    // Unkeyed, as a writer of entry data could make it.
    encode_frame(&mut inner, MAX_OFFSET - 1, FrameKind::single(), b"evil", 0).unwrap();
    let carrier: Vec<u8> = [b"carrier-entry-42".as_slice(), &inner].concat();
    v3_directory(&sim, 5);
    {
        let store = open(&sim, small()).unwrap();
        assert_eq!(store.append("t", &carrier).unwrap(), 5);
        assert_eq!(store.append("t", b"after").unwrap(), 6);
        store.sync().unwrap();
    }
    // Damage the carrier's frame header (its offset), in the v3 block.
    let at = damage_frame_header(&sim, &carrier, 8);
    assert!(at < 4096 + 8192, "the carrier is not in the v3 block");
    let store = open(&sim, small().with_recovery(RecoveryMode::SkipCorrupted)).unwrap();
    assert_eq!(store.read_at("t", 4).unwrap(), Some(payload(4)));
    assert_eq!(store.read_at("t", 6).unwrap(), Some(b"after".to_vec()));
    assert_eq!(store.end_offset("t"), Some(7));
    assert_eq!(store.append("t", b"next").unwrap(), 7);
}

/// Entry data that holds a whole frame of its own topic, at its own offset: after damage to the
/// entry's header, recovery must not hand out the frame inside it as the entry (frames are
/// keyed, format v4, so a frame the data's writer made does not validate). Every mode either
/// refuses the open or serves the entry as damaged; none serves the forged bytes.
#[test]
fn a_frame_in_entry_data_at_its_own_offset_is_not_taken_for_the_entry() {
    use walrus_block::{FrameKind, encode_frame};
    let sim = SimStorage::new(57);
    let mut inner = Vec::new();
    encode_frame(&mut inner, 5, FrameKind::single(), b"forged", 0).unwrap();
    let carrier: Vec<u8> = [b"carrier-entry-5".as_slice(), &inner].concat();
    {
        let store = open(&sim, small()).unwrap();
        for i in 0..5 {
            store.append("t", &payload(i)).unwrap();
        }
        assert_eq!(store.append("t", &carrier).unwrap(), 5);
        assert_eq!(store.append("t", b"after").unwrap(), 6);
        store.sync().unwrap();
    }
    // Damage the carrier's frame header (its length field).
    damage_frame_header(&sim, &carrier, 4);
    for mode in [
        RecoveryMode::TolerateCorruptedTail,
        RecoveryMode::AbsoluteConsistency,
    ] {
        let e = open(&sim, small().with_recovery(mode)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{mode:?}: {e}");
    }
    let store = open(&sim, small().with_recovery(RecoveryMode::PointInTime)).unwrap();
    // Kept up to the damage; the offsets after it are not handed out again.
    assert_eq!(store.read_at("t", 4).unwrap(), Some(payload(4)));
    for o in [5, 6] {
        assert!(store.read_at("t", o).is_err() || store.read_at("t", o).unwrap().is_none());
    }
    assert_eq!(store.append("t", b"next").unwrap(), 7);
    drop(store);
    let store = open(&sim, small().with_recovery(RecoveryMode::SkipCorrupted)).unwrap();
    assert_ne!(
        store.read_at("t", 5).ok().flatten(),
        Some(b"forged".to_vec())
    );
    assert_eq!(store.read_at("t", 4).unwrap(), Some(payload(4)));
    assert_eq!(store.read_at("t", 6).unwrap(), Some(b"after".to_vec()));
}

/// A point-in-time open that cuts at damage below the watermark, and nothing appended after:
/// the next open, in any mode, still knows the damage lies below the watermark (it is never
/// taken for a torn tail and erased), and `SkipCorrupted` serves every valid entry after it.
#[test]
fn a_point_in_time_cut_leaves_the_watermark_where_it_was() {
    let sim = SimStorage::new(56);
    corrupt_middle(&sim);
    let n = {
        let store = open(&sim, small().with_recovery(RecoveryMode::PointInTime)).unwrap();
        let kept: Vec<u64> = (0..100)
            .map_while(|o| store.read_at("t", o).ok().flatten().map(|_| o))
            .collect();
        kept.len() as u64
    };
    assert!(n < 10, "{n}");
    let err = open(&sim, small()).unwrap_err();
    assert_eq!(
        err.kind(),
        io::ErrorKind::InvalidData,
        "still refused: {err}"
    );
    let store = open(&sim, small().with_recovery(RecoveryMode::SkipCorrupted)).unwrap();
    assert_eq!(store.read_at("t", 99).unwrap(), Some(payload(99)));
    assert_eq!(store.read_at("t", n + 1).unwrap(), Some(payload(n + 1)));
}

/// A topic's watermark record lost to damage (both slots): its watermark is unknown, so a
/// lenient open erases nothing as a torn tail (any damage may lie below it), and the
/// watermarks it writes anew do not fall back to where its cut is: a later open in another
/// mode still finds every valid entry after the damage.
#[test]
fn a_lost_watermark_record_makes_no_lenient_open_erase() {
    let sim = SimStorage::new(57);
    corrupt_middle(&sim);
    let marks = sim.open(Path::new(&format!("{DIR}/durable.wcur"))).unwrap();
    let mut bytes = vec![0u8; marks.len().unwrap() as usize];
    marks.read_exact_at(&mut bytes, 0).unwrap();
    // Every written slot of the watermark file damaged (one topic: one pair).
    let written: Vec<usize> = bytes
        .chunks(512)
        .enumerate()
        .filter(|(_, s)| s.iter().any(|&b| b != 0))
        .map(|(i, _)| i)
        .collect();
    // Written once: one damaged slot beside a zero one, which a torn first write also
    // leaves, so the default mode goes on; it erases nothing either.
    assert_eq!(written, [1], "the topic's watermark written once");
    for (i, slot) in bytes.chunks(512).enumerate() {
        if slot.iter().any(|&b| b != 0) {
            marks.write_at(&[0xAA; 32], i as u64 * 512 + 40).unwrap();
        }
    }
    marks.sync_data().unwrap();
    {
        let store = open(&sim, small()).unwrap();
        assert!(
            store
                .recovery_report()
                .issues
                .iter()
                .any(|i| i.problem == Problem::CorruptCursorRecord && i.action == Action::Kept),
            "{:?}",
            store.recovery_report()
        );
    }
    {
        let store = open(&sim, small().with_recovery(RecoveryMode::PointInTime)).unwrap();
        assert!(store.read_at("t", 0).unwrap().is_some());
    }
    let store = open(&sim, small().with_recovery(RecoveryMode::SkipCorrupted)).unwrap();
    assert_eq!(store.read_at("t", 99).unwrap(), Some(payload(99)));
    let served = (0..100)
        .filter(|&o| store.read_at("t", o).ok().flatten().is_some())
        .count();
    assert_eq!(served, 99, "every entry but the damaged one");
}

/// A cursor file whose length was damaged (here: a sparse terabyte) fails the open with
/// `InvalidData` naming it, instead of an allocation the process cannot make.
#[test]
fn a_cursor_file_of_a_damaged_length_fails_the_open_cleanly() {
    let sim = SimStorage::new(58);
    {
        let store = open(&sim, small()).unwrap();
        store.append("t", b"x").unwrap();
        store.read_next("t", true).unwrap().unwrap();
    }
    let cursors = sim.open(Path::new(&format!("{DIR}/cursors.wcur"))).unwrap();
    cursors.write_at(&[1], 1 << 40).unwrap();
    cursors.sync_data().unwrap();
    let e = open(&sim, small()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("cursors.wcur"), "{e}");
}

/// A spare segment (prepared ahead, no block header landed) with bytes past its header held
/// unsynced data: `AbsoluteConsistency` refuses to drop it, as it refuses a torn tail; the
/// default mode deletes it.
#[test]
fn absolute_consistency_refuses_to_drop_a_spare_that_holds_data() {
    let sim = SimStorage::new(59);
    {
        let store = open(&sim, small()).unwrap();
        store.append("t", b"x").unwrap();
        store.maintain().unwrap();
        store.sync().unwrap();
    }
    let spare = segments(&sim).into_iter().max().unwrap();
    let file = sim.open(Path::new(&format!("{DIR}/{spare}"))).unwrap();
    file.write_at(&[0x5A; 64], 4096 + 512).unwrap();
    file.sync_data().unwrap();
    let e = open(
        &sim,
        small().with_recovery(RecoveryMode::AbsoluteConsistency),
    )
    .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert!(
        segments(&sim).contains(&spare),
        "the refused open deleted nothing"
    );
    let store = open(&sim, small()).unwrap();
    assert!(
        !segments(&sim).contains(&spare),
        "the default mode drops it"
    );
    assert_eq!(store.read_at("t", 0).unwrap(), Some(b"x".to_vec()));
}

/// A segment file named with the last id of its lane (a stray file, or a crafted one) is
/// refused at the open: the lane's next id would be the next lane's first, and preparing it
/// would find that lane's live segment and take it for a leftover of its own.
#[test]
fn a_segment_id_at_the_end_of_its_lane_is_refused() {
    let sim = SimStorage::new(91);
    let options = small().with_lanes(2);
    {
        let store = open(&sim, options.clone()).unwrap();
        // Topics in both lanes.
        for i in 0..8 {
            store.append(&format!("t{i}"), b"x").unwrap();
        }
        store.sync().unwrap();
    }
    // Lane 1 starts at 2^48: its first segment is there now.
    assert!(
        sim.files()
            .iter()
            .any(|p| p.ends_with("00000281474976710656.wseg")),
        "{:?}",
        sim.files()
    );
    let stray = Path::new(DIR).join(format!("{:020}.wseg", (1u64 << 48) - 1));
    let storage: Arc<dyn Storage> = Arc::new(sim.clone());
    drop(storage.create(&stray, 0).unwrap());
    let e = open(&sim, options).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("lane"), "{e}");
}

/// A data directory made several levels deep is durable with every level: each directory the
/// open makes has its parent synced (a power cut could otherwise take `a`, and `a/b` with it).
#[test]
fn every_directory_an_open_makes_has_its_parent_synced() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a").join("b");
    // The pwrite backend, recording every directory it syncs; with `fail`, each sync fails.
    let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
    let storage = |fail: bool| {
        let log = Arc::clone(&recorded);
        Arc::new(Hooked::new(PwriteStorage::new(), move |op: Op<'_>| {
            if let Op::SyncDir(dir) = op {
                log.lock().unwrap().push(dir.to_path_buf());
                if fail {
                    return Err(io::Error::other("injected directory sync failure"));
                }
            }
            Ok(())
        }))
    };
    let store = Store::open(&dir, storage(false), StoreOptions::new()).unwrap();
    store.append("t", b"x").unwrap();
    store.sync().unwrap();
    let synced = recorded.lock().unwrap().clone();
    for parent in [root.path().to_path_buf(), root.path().join("a")] {
        assert!(
            synced.contains(&parent),
            "{} not synced: {synced:?}",
            parent.display()
        );
    }
    // A refused open leaves no directory it made behind.
    let refused = Store::open(root.path().join("c/d"), storage(true), StoreOptions::new());
    assert!(refused.is_err());
    assert!(!root.path().join("c").exists(), "a refused open left c");
}

/// Zeros written ahead of the appends stop at the segment's end: a segment near full, or a
/// spare shorter than the stretch written ahead, never grows past its length.
#[test]
fn zeros_written_ahead_never_grow_a_segment() {
    let sim = SimStorage::new(61);
    let options = small()
        .with_zero_fill(true)
        .with_background_maintenance(true)
        .with_lanes(1);
    let store = open(&sim, options).unwrap();
    for i in 0..400 {
        store.append("t", &payload(i)).unwrap();
        if i % 20 == 0 {
            store.maintain().unwrap();
        }
    }
    store.sync().unwrap();
    store.maintain().unwrap();
    for path in sim.files() {
        if path.extension().is_some_and(|e| e == "wseg") {
            let len = sim.contents(&path).unwrap().len();
            assert!(len <= 64 * 1024, "{} is {len} bytes", path.display());
        }
    }
}

/// A run killed between a segment's creation (its header written) and the sync of its
/// directory leaves the segment in the page cache, valid: the next open resumes appends in
/// it, and must make its name durable first. It synced the directory only when it deleted
/// something: a power cut then took the file with the appends acknowledged in it. (The
/// kill is a panic in the directory sync, which skips the preparer's clean-up, as a kill
/// would.)
#[test]
fn an_open_makes_the_names_of_the_files_it_keeps_durable() {
    let sim = SimStorage::new(64);
    let options = || small().with_lanes(1).with_prepare_ahead(false);
    {
        let store = open(&sim, options()).unwrap();
        sim.inject(FaultRule::new(Fault::Panic).op(OpKind::SyncDir));
        let killed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.append("t", b"lost?")));
        assert!(killed.is_err(), "the directory sync did not panic");
        sim.clear_faults();
        sim.crash(CrashMode::KeepWritten);
        std::mem::forget(store);
    }
    let segment = sim
        .files()
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "wseg"))
        .expect("the killed run left its segment");
    assert!(!sim.durable_files().contains(&segment), "not durable yet");
    {
        let store = open(&sim, options()).unwrap();
        let at = store.append("t", b"kept").unwrap();
        store.sync().unwrap();
        assert_eq!(store.read_at("t", at).unwrap(), Some(b"kept".to_vec()));
        sim.crash(CrashMode::DropUnsynced);
        std::mem::forget(store);
        let store = open(&sim, options()).unwrap();
        assert_eq!(store.read_at("t", at).unwrap(), Some(b"kept".to_vec()));
    }
}
