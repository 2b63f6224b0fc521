//! The group-commit journal under `SyncEach` (docs/DESIGN.md, "The journal"): group syncs sync
//! the journal, not the segments, so every test here acknowledges appends whose segment writes
//! were never synced, cuts the power, and checks that the reopened instance has every one of
//! them, once, in order.

use std::io;
use std::path::Path;
use std::sync::Arc;

use walrus::Storage;
use walrus::sim::{CrashMode, Fault, FaultRule, OpKind, SimStorage};
use walrus::{FsyncSchedule, Walrus};

const JOURNAL: &str = "/j/journal.wjnl";

fn open(sim: &SimStorage, journal: bool) -> io::Result<Walrus> {
    Walrus::builder()
        .data_dir("/j")
        .storage(Arc::new(sim.clone()) as Arc<dyn Storage>)
        .fsync_schedule(FsyncSchedule::SyncEach)
        .segment_len(1 << 20)
        .block_len(64 << 10)
        .journal(journal)
        // No background thread: nothing syncs the segments but a new journal generation, an
        // oversized group or the close.
        .inline_maintenance(true)
        .quiet(true)
        .build()
}

fn payload(topic: usize, n: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (topic * 31 + n * 7 + i) as u8).collect()
}

/// Sectors written to segment files and not synced.
fn unsynced_segment_sectors(sim: &SimStorage) -> usize {
    sim.files()
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wseg"))
        .map(|p| sim.unsynced_sectors(p).unwrap())
        .sum()
}

/// Cuts the power (`mode`), drops the instance that was running and reopens the directory
/// with the journal.
fn cut_and_reopen<W>(sim: &SimStorage, wal: W, mode: CrashMode) -> Walrus {
    sim.crash(mode);
    drop(wal);
    open(sim, true).unwrap()
}

/// Every entry `expected[t]` of topic `t{t}` reads back at its offset, and the next append
/// continues right after the last.
fn check(wal: &Walrus, expected: &[Vec<Vec<u8>>]) {
    for (t, entries) in expected.iter().enumerate() {
        let topic = format!("t{t}");
        for (offset, data) in entries.iter().enumerate() {
            let got = wal.read_at(&topic, offset as u64).unwrap().map(|e| e.data);
            assert!(
                got.as_ref() == Some(data),
                "{topic}@{offset} lost or changed: {:?} bytes read back, {} expected",
                got.map(|d| d.len()),
                data.len()
            );
        }
        assert_eq!(
            wal.append(&topic, b"next").unwrap(),
            entries.len() as u64,
            "{topic}: an offset was reused or skipped"
        );
    }
}

/// Appends entry `n` (of `len` bytes) to every topic `t{i}` of `expected` at once, with
/// tickets, and waits for them: one group sync covers writes to several blocks, which the
/// journal takes (one topic's writes alone are one contiguous run, synced in the segment).
fn append_round(wal: &Walrus, expected: &mut [Vec<Vec<u8>>], n: usize, len: usize) {
    let tickets: Vec<_> = expected
        .iter_mut()
        .enumerate()
        .map(|(t, entries)| {
            let data = payload(t, n, len);
            let ticket = wal.append_with_ticket(&format!("t{t}"), &data).unwrap();
            entries.push(data);
            (ticket, entries.len() as u64 - 1)
        })
        .collect();
    for (ticket, offset) in tickets {
        assert_eq!(ticket.wait().unwrap(), offset..offset + 1);
    }
}

#[test]
fn concurrent_acknowledged_appends_survive_a_power_cut_that_takes_every_unsynced_segment_write() {
    let sim = SimStorage::new(7);
    let wal = Arc::new(open(&sim, true).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                (0..40)
                    .map(|n| {
                        let data = payload(t, n, 100 + (n * 37) % 900);
                        assert_eq!(wal.append(&format!("t{t}"), &data).unwrap(), n as u64);
                        data
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut expected: Vec<Vec<Vec<u8>>> = threads.into_iter().map(|h| h.join().unwrap()).collect();
    // The last group for certain spans the four topics' blocks (a group of one contiguous
    // run syncs the segment file, and with it what earlier records held).
    append_round(&wal, &mut expected, 40, 700);
    assert!(
        unsynced_segment_sectors(&sim) > 0,
        "the acknowledgements synced the segments: the journal was not what made them durable"
    );
    assert!(sim.files().iter().any(|p| p == Path::new(JOURNAL)));
    check(
        &cut_and_reopen(&sim, wal, CrashMode::DropUnsynced),
        &expected,
    );
}

#[test]
fn the_journal_starts_new_generations_and_loses_nothing() {
    let sim = SimStorage::new(8);
    let wal = open(&sim, true).unwrap();
    let mut expected = vec![Vec::new(); 4];
    // 4 × 300 × 16 KiB: some 19 MiB through a 1 MiB journal (as long as a segment here), so
    // it starts over many times, each time after syncing the segments its records hold.
    for n in 0..300 {
        append_round(&wal, &mut expected, n, 16 << 10);
    }
    assert!(unsynced_segment_sectors(&sim) > 0);
    check(
        &cut_and_reopen(&sim, wal, CrashMode::TearLastWrite),
        &expected,
    );
}

#[test]
fn a_clean_close_leaves_the_journal_nothing_to_apply() {
    let sim = SimStorage::new(9);
    let wal = open(&sim, true).unwrap();
    let expected: Vec<Vec<Vec<u8>>> = (0..3)
        .map(|t| {
            (0..20)
                .map(|n| {
                    let data = payload(t, n, 300);
                    wal.append(&format!("t{t}"), &data).unwrap();
                    data
                })
                .collect()
        })
        .collect();
    drop(wal);
    assert_eq!(
        unsynced_segment_sectors(&sim),
        0,
        "the close left segment writes unsynced"
    );
    // Without the journal file the segments alone hold everything.
    let storage: &dyn Storage = &sim;
    storage.remove(Path::new(JOURNAL)).unwrap();
    storage.sync_dir(Path::new("/j")).unwrap();
    sim.crash(CrashMode::DropUnsynced);
    check(&open(&sim, true).unwrap(), &expected);
}

/// An open without the journal after a crash that left acknowledged writes only in it (in
/// groups of two topics' writes, which the journal takes): it applies them, then removes it.
#[test]
fn an_instance_without_the_journal_applies_and_removes_the_one_a_crash_left() {
    let sim = SimStorage::new(10);
    let wal = open(&sim, true).unwrap();
    let mut expected: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 2];
    for n in 0..30 {
        append_round(&wal, &mut expected, n, 700);
    }
    assert!(
        unsynced_segment_sectors(&sim) > 0,
        "the segments hold every write synced: the journal has nothing to apply"
    );
    sim.crash(CrashMode::DropUnsynced);
    drop(wal);
    let wal = open(&sim, false).unwrap();
    assert!(!sim.files().iter().any(|p| p == Path::new(JOURNAL)));
    check(&wal, &expected);
}

#[test]
fn a_failed_journal_sync_fails_its_append_and_every_later_one_and_loses_nothing_acknowledged() {
    let sim = SimStorage::new(11);
    let wal = open(&sim, true).unwrap();
    let mut expected = [Vec::new()];
    for n in 0..5 {
        let data = payload(0, n, 500);
        wal.append("t0", &data).unwrap();
        expected[0].push(data);
    }
    sim.inject(FaultRule::new(Fault::Eio).op(OpKind::Sync).path(JOURNAL));
    // Two topics' writes in one group: a journal record, whose sync fails.
    let a = wal.append_with_ticket("t0", b"not durable").unwrap();
    let b = wal.append_with_ticket("t1", b"not durable either").unwrap();
    assert!(a.wait().is_err());
    assert!(b.wait().is_err());
    let later = wal.append("t0", b"refused").unwrap_err();
    assert!(walrus::is_poisoned(&later), "{later}");
    sim.crash(CrashMode::DropUnsynced);
    drop(wal);
    sim.clear_faults();
    let wal = open(&sim, true).unwrap();
    for (offset, data) in expected[0].iter().enumerate() {
        let got = wal.read_at("t0", offset as u64).unwrap().map(|e| e.data);
        assert!(got.as_ref() == Some(data), "t0@{offset} lost or changed");
    }
    // The failed append may or may not have reached the disk; nothing after it did.
    let next = wal.append("t0", b"after").unwrap();
    assert!((5..=6).contains(&next), "continued at {next}");
}

#[test]
fn a_group_of_one_contiguous_run_syncs_the_segment_instead() {
    let sim = SimStorage::new(13);
    let wal = open(&sim, true).unwrap();
    let expected = vec![(0..5).map(|n| payload(0, n, 700)).collect::<Vec<_>>()];
    for data in &expected[0] {
        wal.append("t0", data).unwrap();
        assert_eq!(
            unsynced_segment_sectors(&sim),
            0,
            "one topic's append was acknowledged without a segment sync"
        );
    }
    check(
        &cut_and_reopen(&sim, wal, CrashMode::DropUnsynced),
        &expected,
    );
}

#[test]
fn a_group_too_large_for_a_record_syncs_the_segments_instead() {
    let sim = SimStorage::new(12);
    let wal = open(&sim, true).unwrap();
    let big: Vec<Vec<u8>> = (0..40).map(|n| payload(0, n, 10_000)).collect();
    let refs: Vec<&[u8]> = big.iter().map(Vec::as_slice).collect();
    wal.append_batch("t0", &refs).unwrap();
    assert_eq!(
        unsynced_segment_sectors(&sim),
        0,
        "a 400 KB batch was acknowledged without a segment sync"
    );
    check(&cut_and_reopen(&sim, wal, CrashMode::DropUnsynced), &[big]);
}

#[test]
fn a_power_cut_amid_appends_flushes_reads_and_background_syncs_through_many_generations() {
    for seed in 0..4u64 {
        let sim = SimStorage::new(100 + seed);
        // Background maintenance on: the segment syncs behind the journal race with the
        // appenders, the group syncs, `flush` and the readers. 64 KiB segments make the
        // journal 64 KiB: it starts a new generation every few dozen appends.
        let wal = Arc::new(
            Walrus::builder()
                .data_dir("/j")
                .storage(Arc::new(sim.clone()) as Arc<dyn Storage>)
                .fsync_schedule(FsyncSchedule::SyncEach)
                .segment_len(64 << 10)
                .block_len(8 << 10)
                .quiet(true)
                .build()
                .unwrap(),
        );
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let appenders: Vec<_> = (0..4)
            .map(|t| {
                let (wal, progress) = (Arc::clone(&wal), Arc::clone(&progress));
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    for n in 0..2000 {
                        let data = payload(t, n, 200 + (n * 131) % 2500);
                        match wal.append(&format!("t{t}"), &data) {
                            Ok(offset) => {
                                assert_eq!(offset, n as u64);
                                acked.push(data);
                                progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(_) => break,
                        }
                    }
                    acked
                })
            })
            .collect();
        let helpers: Vec<_> = (0..2)
            .map(|h| {
                let (wal, stop) = (Arc::clone(&wal), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut rounds = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && rounds < 100_000 {
                        rounds += 1;
                        let result = if h == 0 {
                            wal.flush()
                        } else {
                            // A visible entry is acknowledged: it reads back whole.
                            let n = (rounds % 50) as usize;
                            wal.read_at("t0", n as u64).map(|got| {
                                if let Some(got) = got {
                                    assert!(
                                        got.data == payload(0, n, 200 + (n * 131) % 2500),
                                        "seed {seed}: t0@{n} read back other bytes"
                                    );
                                }
                            })
                        };
                        if result.is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        // The cut comes after some 400–700 acknowledged appends (about 1 MB: a dozen
        // generations of the journal), within 20 s.
        let target = 400 + 100 * seed as usize;
        let started = std::time::Instant::now();
        while progress.load(std::sync::atomic::Ordering::Relaxed) < target
            && started.elapsed() < std::time::Duration::from_secs(20)
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        sim.crash(CrashMode::RandomSectors);
        let expected: Vec<Vec<Vec<u8>>> =
            appenders.into_iter().map(|h| h.join().unwrap()).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in helpers {
            h.join().unwrap();
        }
        assert!(
            expected.iter().map(Vec::len).sum::<usize>() >= target,
            "seed {seed}: too few appends before the cut to start new generations"
        );
        drop(wal);
        let wal = Walrus::builder()
            .data_dir("/j")
            .storage(Arc::new(sim.clone()) as Arc<dyn Storage>)
            .fsync_schedule(FsyncSchedule::SyncEach)
            .segment_len(64 << 10)
            .block_len(8 << 10)
            .quiet(true)
            .build()
            .unwrap();
        for (t, entries) in expected.iter().enumerate() {
            let topic = format!("t{t}");
            for (offset, data) in entries.iter().enumerate() {
                let got = wal.read_at(&topic, offset as u64).unwrap().map(|e| e.data);
                assert!(
                    got.as_ref() == Some(data),
                    "seed {seed}: {topic}@{offset} acknowledged, lost or changed"
                );
            }
            // An append in flight at the cut may be there too; nothing acknowledged is reused.
            let next = wal.append(&topic, b"next").unwrap();
            assert!(
                (entries.len() as u64..=entries.len() as u64 + 1).contains(&next),
                "seed {seed}: {topic} continued at {next} after {} acknowledged",
                entries.len()
            );
        }
    }
}

/// A batch spanning several blocks whose segment write fails part-way (a short write of its
/// first, second or third piece), amid groups the journal makes durable: the failed batch
/// fails alone, without poisoning, the other topics go on, and after a cut that keeps a random
/// half of the unsynced sectors nothing of the batch shows, every acknowledged entry does, and
/// the failed topic continues at its acknowledged end.
///
/// What this does not pin: the roll-back's writes (zeros, abandoned-block headers) going
/// through the journal. The simulator keeps one unsynced version of a sector, so it cannot
/// produce a disk that holds the failed batch's bytes but not their clean-up, and recovery
/// drops a partial batch by itself (removing the clean-up writes leaves this test green).
#[test]
fn a_batch_whose_segment_write_fails_part_way_leaves_nothing_after_a_power_cut() {
    for (seed, nth) in (0..6u64).zip([1, 2, 3].into_iter().cycle()) {
        let sim = SimStorage::new(200 + seed);
        let wal = open(&sim, true).unwrap();
        let mut expected = vec![Vec::new(); 3];
        for n in 0..4 {
            append_round(&wal, &mut expected, n, 700);
        }
        // The batch's writes are the only ones until its group sync (the journal's).
        sim.inject(
            FaultRule::new(Fault::ShortWrite)
                .op(OpKind::Write)
                .path("/j")
                .nth(nth),
        );
        // 12 × 12 KB: some 144 KB, more than two 64 KiB blocks.
        let batch: Vec<Vec<u8>> = (0..12).map(|i| payload(9, i, 12_000)).collect();
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        let err = wal.append_batch("t2", &refs).unwrap_err();
        assert_eq!(sim.stats().faults_fired, 1, "seed {seed}: {err}");
        assert_eq!(err.kind(), io::ErrorKind::WriteZero, "seed {seed}: {err}");
        assert!(
            !walrus::is_poisoned(&err),
            "seed {seed}: a failed write whose roll-back succeeded poisoned the instance: {err}"
        );
        sim.clear_faults();
        // The other topics go on; t2 is left as the failure left it.
        for n in 4..10 {
            append_round(&wal, &mut expected[..2], n, 900);
        }
        assert!(unsynced_segment_sectors(&sim) > 0, "seed {seed}");
        let wal = cut_and_reopen(&sim, wal, CrashMode::RandomSectors);
        for offset in expected[2].len() as u64..expected[2].len() as u64 + 12 {
            assert!(
                wal.read_at("t2", offset).unwrap().is_none(),
                "seed {seed}: t2@{offset} of the failed batch is visible"
            );
        }
        check(&wal, &expected);
    }
}

/// A failed append's roll-back writes zeros where the append went, and the topic's next append
/// is written there again. When that append is synced in its segment (alone, one contiguous
/// run) no live record may still hold the zeros: a replay after a power cut would write them
/// over the acknowledged entry.
#[test]
fn a_roll_back_is_never_replayed_over_the_append_written_after_it() {
    for seed in 0..4u64 {
        let sim = SimStorage::new(300 + seed);
        let wal = open(&sim, true).unwrap();
        let mut expected = vec![Vec::new(); 2];
        for n in 0..3 {
            append_round(&wal, &mut expected, n, 300);
        }
        // The next write anywhere is t1's, and is cut short: its roll-back zeroes the space.
        sim.inject(
            FaultRule::new(Fault::ShortWrite)
                .op(OpKind::Write)
                .path("/j")
                .nth(1),
        );
        let err = wal.append("t1", &payload(1, 50, 300)).unwrap_err();
        assert_eq!(sim.stats().faults_fired, 1, "seed {seed}: {err}");
        assert!(!walrus::is_poisoned(&err), "seed {seed}: {err}");
        sim.clear_faults();
        // t0's append syncs the zeros with it (scattered: a record), then t1 appends alone
        // where the zeros are (its segment).
        let data = payload(0, 3, 300);
        assert_eq!(wal.append("t0", &data).unwrap(), 3, "seed {seed}");
        expected[0].push(data);
        let lone = payload(1, 99, 300);
        assert_eq!(
            wal.append("t1", &lone).unwrap(),
            expected[1].len() as u64,
            "seed {seed}"
        );
        expected[1].push(lone);
        let wal = cut_and_reopen(&sim, wal, CrashMode::DropUnsynced);
        check(&wal, &expected);
    }
}

/// A journal header damaged after it was synced is refused, not passed over for the other slot:
/// the other slot holds the generation before, and the records of the damaged one, which hold
/// acknowledged writes, would be dropped without a word. Damage to the other slot is harmless.
#[test]
fn a_damaged_live_journal_header_is_refused_not_passed_over() {
    // Two generations (a clean close, then a reopen), records of the second, a power cut.
    let scenario = || {
        let sim = SimStorage::new(400);
        let mut expected = vec![Vec::new(); 2];
        {
            let wal = open(&sim, true).unwrap();
            append_round(&wal, &mut expected, 0, 500);
        }
        let wal = open(&sim, true).unwrap();
        for n in 1..6 {
            append_round(&wal, &mut expected, n, 500);
        }
        sim.crash(CrashMode::DropUnsynced);
        drop(wal);
        (sim, expected)
    };
    let mut refused = 0;
    for slot in 0..2u64 {
        let (sim, expected) = scenario();
        let journal = sim.open(Path::new(JOURNAL)).unwrap();
        let at = slot * 512 + 8;
        let mut byte = [0u8];
        journal.read_exact_at(&mut byte, at).unwrap();
        journal.write_at(&[byte[0] ^ 0x10], at).unwrap();
        journal.sync_data().unwrap();
        drop(journal);
        match open(&sim, true) {
            Ok(wal) => check(&wal, &expected),
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "slot {slot}: {e}");
                assert!(e.to_string().contains("journal header damaged"), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!(
        refused, 1,
        "the live slot's damage is refused, the other's is not"
    );
}
