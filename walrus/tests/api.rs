//! The facade end to end: every function of the seed-compatible API in every mode, the native
//! offset API, reopen, durability on the simulated backend, concurrency, keys and locking.

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use walrus::Storage;
use walrus::sim::{CrashMode, Fault, FaultRule, OpKind, SimStorage};
use walrus::{BackendKind, FsyncSchedule, ReadConsistency, RecoveryMode, Walrus};

const MODES: [ReadConsistency; 2] = [
    ReadConsistency::StrictlyAtOnce,
    ReadConsistency::AtLeastOnce { persist_every: 3 },
];
const SCHEDULES: [FsyncSchedule; 3] = [
    FsyncSchedule::SyncEach,
    FsyncSchedule::Milliseconds(5),
    FsyncSchedule::NoFsync,
];

fn on_disk(dir: &Path, mode: ReadConsistency, schedule: FsyncSchedule) -> Walrus {
    on_backend(dir, mode, schedule, BackendKind::Pwrite)
}

fn on_backend(
    dir: &Path,
    mode: ReadConsistency,
    schedule: FsyncSchedule,
    backend: BackendKind,
) -> Walrus {
    Walrus::builder()
        .data_dir(dir)
        .key("k")
        .consistency(mode)
        .fsync_schedule(schedule)
        .backend(backend)
        .segment_len(256 * 1024)
        .block_len(16 * 1024)
        .build()
        .unwrap()
}

fn on_sim(sim: &SimStorage, mode: ReadConsistency, schedule: FsyncSchedule) -> io::Result<Walrus> {
    Walrus::builder()
        .data_dir("/root")
        .key("k")
        .storage(Arc::new(sim.clone()) as Arc<dyn Storage>)
        .consistency(mode)
        .fsync_schedule(schedule)
        .segment_len(256 * 1024)
        .block_len(16 * 1024)
        .build()
}

#[test]
fn every_function_in_every_mode_and_reopen() {
    for mode in MODES {
        for schedule in SCHEDULES {
            let dir = tempfile::tempdir().unwrap();
            {
                let wal = on_disk(dir.path(), mode, schedule);
                assert_eq!(wal.read_next("t", true).unwrap(), None);
                wal.append_for_topic("t", b"0").unwrap();
                wal.batch_append_for_topic("t", &[b"1", b"22", b"333"])
                    .unwrap();
                for i in 4..20u32 {
                    wal.append_for_topic("t", i.to_string().as_bytes()).unwrap();
                }
                assert_eq!(wal.read_next("t", false).unwrap().unwrap().data, b"0");
                assert_eq!(wal.read_next("t", true).unwrap().unwrap().data, b"0");
                let batch = wal.batch_read_for_topic("t", 3, true).unwrap();
                assert_eq!(
                    batch.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
                    vec![b"1".to_vec(), b"22".to_vec()]
                );
                assert_eq!(wal.read_next("t", true).unwrap().unwrap().data, b"333");
                wal.flush().unwrap();
            }
            // A clean close persists the cursor in every mode.
            let wal = on_disk(dir.path(), mode, schedule);
            assert_eq!(
                wal.read_next("t", true).unwrap().unwrap().data,
                b"4",
                "{mode:?} {schedule:?}"
            );
            assert_eq!(wal.end_offset("t"), Some(20));
        }
    }
}

#[test]
fn native_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let wal = on_disk(
        dir.path(),
        ReadConsistency::StrictlyAtOnce,
        FsyncSchedule::NoFsync,
    );
    assert_eq!(wal.append("a", b"x").unwrap(), 0);
    assert_eq!(wal.append_batch("a", &[b"y", b"z"]).unwrap(), 1..3);
    assert_eq!(wal.read_at("a", 2).unwrap().unwrap().data, b"z");
    assert_eq!(wal.read_at("a", 3).unwrap(), None);
    assert_eq!(wal.read_next_record("a", true).unwrap().unwrap().offset, 0);
    wal.commit("a", 2).unwrap();
    assert_eq!(wal.cursor("a"), Some(2));
    let recs = wal.read_records("a", 1 << 20, false).unwrap();
    assert_eq!(recs.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![2]);
    assert_eq!(
        wal.commit("a", 9).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        wal.commit("nope", 0).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert_eq!(wal.topics(), vec!["a".to_string()]);
}

#[test]
fn bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let wal = on_disk(
        dir.path(),
        ReadConsistency::StrictlyAtOnce,
        FsyncSchedule::NoFsync,
    );
    let k = |r: io::Result<()>| r.unwrap_err().kind();
    assert_eq!(
        k(wal.append_for_topic("", b"x")),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        k(wal.append_for_topic(&"n".repeat(256), b"x")),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        k(wal.batch_append_for_topic("t", &vec![&b"x"[..]; 2001])),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        wal.read_next("", true).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    let mut it = wal.iter("", 0);
    assert_eq!(
        it.next().unwrap().unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    assert!(it.next().is_none());
    assert_eq!(
        wal.release_before("", 0).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        wal.release_before("none", 0).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert!(wal.topics().is_empty());
    wal.append_batch("t", &[b"a", b"b"]).unwrap();
    let past = wal.release_before("t", 3).unwrap_err();
    assert_eq!(past.kind(), io::ErrorKind::InvalidInput);
    assert!(past.to_string().contains("\"t\" at offset 3"), "{past}");
    assert_eq!(wal.read_at("t", 0).unwrap().unwrap().data, b"a");
    assert!(wal.release_before("t", 1).unwrap());
    assert_eq!(
        wal.read_at("t", 0).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert_eq!(wal.read_next("t", true).unwrap().unwrap().data, b"b");
    assert!(wal.delete_topic("t").unwrap());
    // A data directory that is a file.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = Walrus::builder().data_dir(&file).build().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err:?}");
    // And a keyed instance under it.
    let err = Walrus::builder()
        .data_dir(&file)
        .key("k")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err:?}");
    assert!(err.to_string().contains("file"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

#[test]
fn sync_each_acknowledges_only_durable_entries() {
    let sim = SimStorage::new(21);
    {
        let wal = on_sim(
            &sim,
            ReadConsistency::StrictlyAtOnce,
            FsyncSchedule::SyncEach,
        )
        .unwrap();
        for i in 0..50u32 {
            wal.append_for_topic("t", &i.to_le_bytes()).unwrap();
        }
        wal.batch_append_for_topic("t", &[b"a", b"b"]).unwrap();
        assert_eq!(
            wal.read_next("t", true).unwrap().unwrap().data,
            0u32.to_le_bytes()
        );
        sim.crash(CrashMode::DropUnsynced); // power cut right after the acknowledgements
        std::mem::forget(wal);
    }
    let wal = on_sim(
        &sim,
        ReadConsistency::StrictlyAtOnce,
        FsyncSchedule::SyncEach,
    )
    .unwrap();
    assert_eq!(wal.end_offset("t"), Some(52));
    assert_eq!(
        wal.read_next("t", true).unwrap().unwrap().data,
        1u32.to_le_bytes(),
        "consumed entry redelivered"
    );
}

#[test]
fn background_flusher_syncs_and_stops_on_drop() {
    let sim = SimStorage::new(22);
    {
        let wal = on_sim(
            &sim,
            ReadConsistency::StrictlyAtOnce,
            FsyncSchedule::Milliseconds(10),
        )
        .unwrap();
        wal.append_for_topic("t", b"x").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        sim.crash(CrashMode::DropUnsynced);
        std::mem::forget(wal);
    }
    let wal = on_sim(
        &sim,
        ReadConsistency::StrictlyAtOnce,
        FsyncSchedule::Milliseconds(10),
    )
    .unwrap();
    assert_eq!(wal.end_offset("t"), Some(1));
    let started = std::time::Instant::now();
    drop(wal);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "drop must stop the flusher promptly"
    );
}

#[test]
fn no_fsync_syncs_only_on_flush() {
    let sim = SimStorage::new(23);
    {
        let wal = on_sim(
            &sim,
            ReadConsistency::StrictlyAtOnce,
            FsyncSchedule::NoFsync,
        )
        .unwrap();
        wal.append_for_topic("t", b"kept").unwrap();
        wal.flush().unwrap();
        wal.append_for_topic("t", b"lost").unwrap();
        let syncs = sim.stats().data_syncs;
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(
            sim.stats().data_syncs,
            syncs,
            "no background syncs under NoFsync"
        );
        sim.crash(CrashMode::DropUnsynced);
        std::mem::forget(wal);
    }
    let wal = on_sim(
        &sim,
        ReadConsistency::StrictlyAtOnce,
        FsyncSchedule::NoFsync,
    )
    .unwrap();
    assert_eq!(wal.end_offset("t"), Some(1));
}

#[test]
fn failed_sync_poisons_until_reopen_and_enospc_fails_one_append() {
    let sim = SimStorage::new(24);
    // Maintenance on this thread: under SyncEach the background one writes zeros ahead, and
    // the one-shot faults below must hit the appends' own writes and syncs.
    let wal = Walrus::builder()
        .data_dir("/root")
        .key("k")
        .storage(Arc::new(sim.clone()) as Arc<dyn Storage>)
        .consistency(ReadConsistency::StrictlyAtOnce)
        .fsync_schedule(FsyncSchedule::SyncEach)
        .segment_len(256 * 1024)
        .block_len(16 * 1024)
        .inline_maintenance(true)
        .build()
        .unwrap();
    wal.append_for_topic("t", b"a").unwrap();
    sim.inject(FaultRule::new(Fault::Enospc).op(OpKind::Write));
    assert_eq!(
        wal.append_for_topic("t", b"b").unwrap_err().kind(),
        io::ErrorKind::StorageFull
    );
    wal.append_for_topic("t", b"c").unwrap(); // space is back
    sim.inject(FaultRule::new(Fault::Eio).op(OpKind::Sync));
    assert!(wal.append_for_topic("t", b"d").is_err());
    assert!(
        wal.append_for_topic("t", b"e").is_err(),
        "writes after a failed sync must be refused"
    );
    drop(wal);
    sim.clear_faults();
    // The process restarts (the sticky sync error belongs to the old process's handles).
    sim.crash(CrashMode::KeepWritten);
    let wal = on_sim(
        &sim,
        ReadConsistency::StrictlyAtOnce,
        FsyncSchedule::SyncEach,
    )
    .unwrap();
    let all = wal.batch_read_for_topic("t", usize::MAX, true).unwrap();
    let data: Vec<&[u8]> = all.iter().map(|e| e.data.as_slice()).collect();
    assert_eq!(&data[..2], &[&b"a"[..], b"c"]);
    wal.append_for_topic("t", b"f").unwrap();
}

/// Bytes the file system allocated under `dir` (`st_blocks` x 512).
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let meta = entry.as_ref().unwrap().metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.unwrap().path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

#[test]
fn a_small_instance_costs_little_disk_and_reopening_adds_nothing() {
    // The mmap backend too: it allocates granules of its mappings before it stores into them,
    // not whole files.
    for backend in [BackendKind::Pwrite, BackendKind::Mmap] {
        small_instance_costs_little_disk(backend);
    }
}

fn small_instance_costs_little_disk(backend: BackendKind) {
    // Default geometry (1 GiB segments, 1 MiB blocks): space follows what is written.
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Walrus::builder()
            .data_dir(dir.path())
            .key("k")
            .backend(backend)
            .build()
            .unwrap()
    };
    {
        let wal = open();
        for i in 0..5u8 {
            wal.append_for_topic("t", &[i; 32]).unwrap();
        }
    }
    let fresh = allocated(dir.path());
    assert!(fresh <= 8 << 20, "{backend}: 5 entries take {fresh} bytes");
    drop(open());
    assert_eq!(
        allocated(dir.path()),
        fresh,
        "{backend}: reopening allocated more"
    );
    {
        let wal = open();
        assert_eq!(wal.read_next("t", false).unwrap().unwrap().data, [0u8; 32]);
        for t in 0..1000 {
            wal.append_for_topic(&format!("topic-{t}"), b"one small entry")
                .unwrap();
        }
    }
    let many = allocated(dir.path());
    assert!(
        many <= 8 << 20,
        "{backend}: 1000 topics of one entry take {many} bytes"
    );
    let wal = open();
    assert_eq!(
        wal.read_next("topic-999", true).unwrap().unwrap().data,
        b"one small entry"
    );
}

#[test]
fn a_full_disk_fails_the_block_allocation_cleanly() {
    let sim = SimStorage::new(25);
    let wal = on_sim(
        &sim,
        ReadConsistency::StrictlyAtOnce,
        FsyncSchedule::SyncEach,
    )
    .unwrap();
    wal.append_for_topic("t", b"a").unwrap();
    // A new segment is needed once the first (256 KiB) is used up; its space cannot be had.
    sim.inject(FaultRule::new(Fault::Enospc).op(OpKind::Allocate).forever());
    let big = vec![7u8; 100 * 1024];
    let mut refused = None;
    for i in 0..8 {
        match wal.append_for_topic("t", &big) {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (at, e) = refused.expect("a segment's worth of appends never needed new space");
    assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
    assert!(e.to_string().contains("fallocate"), "{e}");
    // Nothing was written for the refused append, and the instance is not poisoned.
    sim.clear_faults();
    wal.append_for_topic("t", b"after").unwrap();
    drop(wal);
    let wal = on_sim(
        &sim,
        ReadConsistency::StrictlyAtOnce,
        FsyncSchedule::SyncEach,
    )
    .unwrap();
    let all = wal.batch_read_for_topic("t", usize::MAX, true).unwrap();
    assert_eq!(all.len(), at + 2, "a, {at} big entries, after");
    assert_eq!(all.last().unwrap().data, b"after");
}

/// On the mmap backend a full disk is an append's `StorageFull`, never a `SIGBUS`, and every
/// acknowledged entry stays readable, also after a reopen, unsynced and under `SyncEach` (with
/// its journal and zero-filled claims). Real disk space runs out: the instance runs in a child
/// on a 16 MiB tmpfs of its own (`run_on_a_small_tmpfs`). A full disk does not poison the
/// instance: once space is freed, appends go on.
#[test]
fn the_mmap_backend_on_a_full_disk_fails_an_append_not_the_process() {
    const TEST: &str = "the_mmap_backend_on_a_full_disk_fails_an_append_not_the_process";
    if let Some(dir) = std::env::var_os(walrus_io::conformance::SMALL_TMPFS_ENV) {
        for schedule in [FsyncSchedule::NoFsync, FsyncSchedule::SyncEach] {
            let dir = Path::new(&dir).join(format!("{schedule:?}"));
            fill_an_mmap_instance(&dir, schedule);
            // Space for the next schedule's run.
            std::fs::remove_dir_all(&dir).unwrap();
        }
        return;
    }
    let Some((status, text)) = walrus_io::conformance::run_on_a_small_tmpfs(TEST, "16m") else {
        return;
    };
    // A SIGBUS shows as a status without a code (signal 7).
    assert!(status.success(), "{status:?}: {text}");
    for schedule in ["NoFsync", "SyncEach"] {
        assert!(
            text.contains(&format!("{schedule}: full after")),
            "the child did not finish {schedule}: {text}"
        );
    }
}

/// In the child: appends 3000-byte entries to three topics until the disk is full, then reads
/// every acknowledged one back, before and after a reopen.
fn fill_an_mmap_instance(dir: &Path, schedule: FsyncSchedule) {
    let payload = |topic: usize, o: u64| vec![(topic as u64 * 7 + o) as u8; 3000];
    let open = || {
        Walrus::builder()
            .data_dir(dir)
            .key("k")
            .backend(BackendKind::Mmap)
            .fsync_schedule(schedule)
            .build()
            .unwrap()
    };
    // Space to give back once the disk is full.
    let filler = dir.with_extension("filler");
    std::fs::create_dir_all(dir).unwrap();
    // Four of the mmap backend's 2 MiB granules: once freed, room for a new granule for each
    // of the three topics, and one for the header of a spare segment a lane may prepare
    // meanwhile (two granules were not always enough: a flaky test).
    std::fs::write(&filler, vec![1u8; 8 << 20]).unwrap();
    let wal = open();
    let mut acked = [0u64; 3];
    let err = 'fill: {
        for round in 0..10_000u64 {
            for (topic, n) in acked.iter_mut().enumerate() {
                match wal.append(&format!("t{topic}"), &payload(topic, round)) {
                    Ok(o) => *n = o + 1,
                    Err(e) => break 'fill e,
                }
            }
        }
        panic!("{schedule:?}: 90 MB of entries fit on a 16 MiB file system");
    };
    assert_eq!(
        err.kind(),
        io::ErrorKind::StorageFull,
        "{schedule:?}: {err}"
    );
    assert!(
        acked.iter().sum::<u64>() > 100,
        "{schedule:?}: only {acked:?} fit"
    );
    // A full disk fails appends; it does not poison the instance: once there is space again,
    // appends go on without a reopen.
    assert!(!walrus::is_poisoned(&err), "{schedule:?}: {err}");
    std::fs::remove_file(&filler).unwrap();
    for (topic, n) in acked.iter_mut().enumerate() {
        let o = wal
            .append(&format!("t{topic}"), &payload(topic, *n))
            .unwrap_or_else(|e| panic!("{schedule:?}: t{topic} after space was freed: {e}"));
        assert_eq!(o, *n, "{schedule:?}: t{topic}");
        *n += 1;
    }
    let check = |wal: &Walrus| {
        for (topic, &n) in acked.iter().enumerate() {
            // Without consuming: the reopened instance reads them all again.
            let all = wal
                .batch_read_for_topic(&format!("t{topic}"), usize::MAX, false)
                .unwrap();
            assert_eq!(all.len() as u64, n, "{schedule:?}: t{topic}");
            for (o, e) in (0..).zip(&all) {
                assert_eq!(e.data, payload(topic, o), "{schedule:?}: t{topic} @{o}");
            }
        }
    };
    check(&wal);
    drop(wal);
    check(&open());
    println!("{schedule:?}: full after {acked:?} entries: {err}");
}

#[test]
fn eight_threads_one_topic_mixed_batches() {
    // On mmap too: group syncs (`msync`) racing stores into the mapping.
    for backend in [BackendKind::Pwrite, BackendKind::Mmap] {
        eight_threads_one_topic(backend);
    }
}

fn eight_threads_one_topic(backend: BackendKind) {
    let dir = tempfile::tempdir().unwrap();
    for schedule in [FsyncSchedule::NoFsync, FsyncSchedule::SyncEach] {
        let wal = Arc::new(on_backend(
            dir.path(),
            ReadConsistency::StrictlyAtOnce,
            schedule,
            backend,
        ));
        let topic = format!("{schedule:?}");
        let per_thread: u32 = if schedule == FsyncSchedule::SyncEach {
            30
        } else {
            300
        };
        let threads: Vec<_> = (0..8u32)
            .map(|t| {
                let (wal, topic) = (wal.clone(), topic.clone());
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        let a = format!("{t}:{}", 2 * i);
                        if i % 3 == 0 {
                            let b = format!("{t}:{}", 2 * i + 1);
                            wal.batch_append_for_topic(&topic, &[a.as_bytes(), b.as_bytes()])
                                .unwrap();
                        } else {
                            wal.append_for_topic(&topic, a.as_bytes()).unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let g = wal.stats().group_commit;
        if schedule == FsyncSchedule::SyncEach {
            // Every call (an append or a batch) returned after a sync; the calls led some.
            let calls = u64::from(8 * per_thread);
            assert!(g.led >= 1 && g.led <= calls, "{g:?}");
        } else {
            assert_eq!(
                g,
                walrus::GroupCommitStats::default(),
                "nothing waits for a sync"
            );
        }
        let mut seen = HashSet::new();
        let mut last = [None::<u32>; 8];
        let mut n = 0;
        // Bounded: one entry a read at least, and fewer entries than this were written.
        for _ in 0..1_000_000 {
            let batch = wal.batch_read_for_topic(&topic, 1 << 20, true).unwrap();
            if batch.is_empty() {
                break;
            }
            for e in batch {
                n += 1;
                let s = String::from_utf8(e.data).unwrap();
                assert!(seen.insert(s.clone()), "{s} twice");
                let (t, k) = s.split_once(':').unwrap();
                let (t, k): (usize, u32) = (t.parse().unwrap(), k.parse().unwrap());
                assert!(last[t].is_none_or(|p| p < k), "thread {t} out of order");
                last[t] = Some(k);
            }
        }
        let batches = per_thread.div_ceil(3);
        assert_eq!(n, 8 * (per_thread + batches));
    }
}

/// The mmap backend under what a WAL does to it at once: four writers on four topics each,
/// with entries from 1 byte to 20 KiB (past the 16 KiB the backend writes with `pwrite`, and
/// past a block), small segments that roll, a reader consuming one topic while it is written,
/// then a reopen that must read every entry back.
#[test]
fn the_mmap_backend_under_concurrent_writers_a_reader_and_a_reopen() {
    fn payload(topic: usize, offset: u64) -> Vec<u8> {
        let len = if offset.is_multiple_of(97) {
            20 << 10
        } else {
            1 + (offset.wrapping_mul(7919) % 3000) as usize
        };
        let seed = (topic as u64) << 32 | offset;
        (0..len)
            .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64) % 251) as u8)
            .collect()
    }
    const PER_TOPIC: u64 = 600;
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        on_backend(
            dir.path(),
            ReadConsistency::StrictlyAtOnce,
            FsyncSchedule::NoFsync,
            BackendKind::Mmap,
        )
    };
    let consumed = {
        let wal = Arc::new(open());
        let writers: Vec<_> = (0..4usize)
            .map(|w| {
                let wal = wal.clone();
                std::thread::spawn(move || {
                    for o in 0..PER_TOPIC {
                        for topic in (w * 4)..(w * 4 + 4) {
                            let at = wal
                                .append(&format!("t{topic}"), &payload(topic, o))
                                .unwrap();
                            assert_eq!(at, o, "t{topic}");
                        }
                    }
                })
            })
            .collect();
        // Consume topic 0 while it is written: every entry, in order, intact.
        let mut next = 0u64;
        for _ in 0..1_000_000 {
            match wal.read_next_record("t0", true).unwrap() {
                Some(r) => {
                    assert_eq!(r.offset, next);
                    assert_eq!(r.data, payload(0, next), "t0 @{next}");
                    next += 1;
                }
                None if writers.iter().all(std::thread::JoinHandle::is_finished) => break,
                None => std::thread::yield_now(),
            }
        }
        for w in writers {
            w.join().unwrap();
        }
        next
    };
    assert_eq!(consumed, PER_TOPIC, "the reader drained topic 0");
    let wal = open();
    assert_eq!(wal.read_next_record("t0", true).unwrap(), None);
    for topic in 1..16 {
        let name = format!("t{topic}");
        assert_eq!(wal.end_offset(&name), Some(PER_TOPIC), "{name}");
        for o in 0..PER_TOPIC {
            let e = wal.read_at(&name, o).unwrap().unwrap();
            assert_eq!(e.data, payload(topic, o), "{name} @{o}");
        }
    }
}

#[test]
fn keys_namespaces_and_lock() {
    let root = tempfile::tempdir().unwrap();
    let open = |key: &str| {
        Walrus::builder()
            .data_dir(root.path())
            .key(key)
            .fsync_schedule(FsyncSchedule::NoFsync)
            .build()
    };
    let a = open("alpha").unwrap();
    let b = open("../escape").unwrap();
    a.append_for_topic("t", b"a").unwrap();
    b.append_for_topic("t", b"b").unwrap();
    assert!(a.dir().starts_with(root.path()) && b.dir().starts_with(root.path()));
    assert_ne!(a.dir(), b.dir());
    assert_eq!(b.dir().parent(), Some(root.path()));
    // Two instances never share state: each sees only its own entry.
    assert_eq!(a.read_next("t", true).unwrap().unwrap().data, b"a");
    assert_eq!(b.read_next("t", true).unwrap().unwrap().data, b"b");
    assert_eq!(a.read_next("t", true).unwrap(), None);
    // A second live instance on the same directory is refused.
    let err = open("alpha").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ResourceBusy);
    drop(a);
    open("alpha").unwrap();
    assert!(open("").is_err());
}

#[test]
fn recovery_mode_is_a_builder_option() {
    let sim = SimStorage::new(25);
    let wal = Walrus::builder()
        .data_dir("/r")
        .storage(Arc::new(sim.clone()) as Arc<dyn Storage>)
        .recovery_mode(RecoveryMode::AbsoluteConsistency)
        .build()
        .unwrap();
    wal.append_for_topic("t", b"x").unwrap();
    assert!(wal.recovery_report().issues.is_empty());
}

#[test]
fn walrus_is_send_and_sync() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Walrus>();
    shareable::<walrus_topic::Store>();
}

#[test]
fn the_facade_names_every_type_its_api_returns() {
    let sim = SimStorage::new(31);
    let wal = on_sim(
        &sim,
        ReadConsistency::StrictlyAtOnce,
        FsyncSchedule::SyncEach,
    )
    .unwrap();
    let ticket: walrus::DurableTicket = wal.append_with_ticket("t", b"x").unwrap();
    ticket.wait().unwrap();
    let record: Option<walrus::Record> = wal.read_next_record("t", false).unwrap();
    assert_eq!(record.unwrap().offset, 0);
    let entry: Option<walrus::Entry> = wal.read_next("t", true).unwrap();
    assert_eq!(entry.unwrap().data, b"x");
    let report: &walrus::RecoveryReport = wal.recovery_report();
    assert!(report.issues.is_empty());
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<walrus::DurableTicket>();
}

/// Keyed instances live in directories under the root a key-less instance uses: each opens and
/// reopens beside the others, in either order.
#[test]
fn keyed_and_key_less_instances_share_a_root() {
    let root = tempfile::tempdir().unwrap();
    let open = |key: Option<&str>| {
        let b = Walrus::builder().data_dir(root.path()).quiet(true);
        match key {
            Some(k) => b.key(k),
            None => b,
        }
        .build()
        .unwrap()
    };
    open(Some("first")).append_for_topic("t", b"keyed").unwrap();
    open(None).append_for_topic("t", b"root").unwrap();
    open(Some("second"))
        .append_for_topic("t", b"another")
        .unwrap();
    // The one key named like a file of the root's instance.
    open(Some("LOCK")).append_for_topic("t", b"lock").unwrap();
    for (key, data) in [
        (None, &b"root"[..]),
        (Some("first"), b"keyed"),
        (Some("second"), b"another"),
        (Some("LOCK"), b"lock"),
    ] {
        let wal = open(key);
        assert_eq!(
            wal.read_next("t", false).unwrap().unwrap().data,
            data,
            "{key:?}"
        );
    }
}

/// A keyed instance of the key `LOCK` made before the key was escaped stays where it is (the
/// root then holds no instance of its own).
#[test]
fn an_instance_keyed_lock_made_before_the_escape_is_found() {
    let root = tempfile::tempdir().unwrap();
    let old = root.path().join("LOCK");
    let wal = Walrus::builder()
        .data_dir(&old)
        .quiet(true)
        .build()
        .unwrap();
    wal.append_for_topic("t", b"old").unwrap();
    drop(wal);
    let wal = Walrus::builder()
        .data_dir(root.path())
        .key("LOCK")
        .quiet(true)
        .build()
        .unwrap();
    assert_eq!(wal.read_next("t", false).unwrap().unwrap().data, b"old");
    assert!(!root.path().join("%4COCK").exists());
}
