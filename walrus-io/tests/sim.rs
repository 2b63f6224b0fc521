//! The simulated backend: durability model, crash modes, fault injection, determinism.

use std::io::{self, ErrorKind, IoSlice};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use walrus_io::{
    CrashMode, Fault, FaultRule, OpError, OpKind, SECTOR_SIZE, SegmentFile, SimStorage, Storage,
    WriteOp, os_error,
};

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

/// A simulator with `/d` made and a durable, synced, preallocated file `/d/f` of `len` bytes.
fn with_file(seed: u64, len: u64) -> (SimStorage, std::sync::Arc<dyn SegmentFile>) {
    let sim = SimStorage::new(seed);
    sim.create_dir_all(&p("/d")).unwrap();
    let f = sim.create(&p("/d/f"), len).unwrap();
    f.sync_data().unwrap();
    sim.sync_dir(&p("/d")).unwrap();
    (sim, f)
}

fn read(f: &dyn SegmentFile, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

#[test]
fn crash_keeps_only_synced_data() {
    let (sim, f) = with_file(1, 8192);
    f.write_at(b"synced", 0).unwrap();
    f.sync_data().unwrap();
    f.write_at(b"lost", 100).unwrap();
    f.write_at(b"XXXXXX", 0).unwrap(); // overwrite of synced bytes, unsynced
    assert_eq!(sim.unsynced_sectors(&p("/d/f")).unwrap(), 1);
    assert_eq!(&sim.durable_contents(&p("/d/f")).unwrap()[..6], b"synced");
    assert_eq!(&sim.contents(&p("/d/f")).unwrap()[..6], b"XXXXXX");

    sim.crash(CrashMode::DropUnsynced);
    let f = sim.open(&p("/d/f")).unwrap();
    assert_eq!(read(&*f, 0, 6), b"synced");
    assert_eq!(read(&*f, 100, 4), [0; 4]);
    assert_eq!(f.len().unwrap(), 8192);
    assert_eq!(sim.unsynced_sectors(&p("/d/f")).unwrap(), 0);
}

/// A failed sync loses what it was to write, as on Linux (pages marked clean, not written,
/// and dropped from the cache by the real backends): reads see the disk's bytes at once, and
/// no later sync, in this process or the next, makes the lost bytes durable.
/// A failed sync wrote each of its sectors or not, at random: reads then show the disk's
/// bytes, nothing is left to sync, and a power cut keeps exactly what reads showed. Over seeds,
/// both outcomes happen for each sector.
#[test]
fn a_failed_sync_writes_part_of_what_it_was_to_write() {
    let mut seen = [[false; 2]; 2];
    for seed in 0..64 {
        let (sim, f) = with_file(seed, 8192);
        f.write_at(b"synced", 0).unwrap();
        f.sync_data().unwrap();
        f.write_at(b"XXXXXX", 0).unwrap();
        f.write_at(b"late", 4096).unwrap();
        sim.inject(FaultRule::new(Fault::Eio).op(OpKind::Sync));
        assert!(f.sync_data().is_err());
        let first = read(&*f, 0, 6);
        let second = read(&*f, 4096, 4);
        assert!(first == b"synced" || first == b"XXXXXX", "{first:?}");
        assert!(second == [0; 4] || second == *b"late", "{second:?}");
        seen[0][usize::from(first == b"XXXXXX")] = true;
        seen[1][usize::from(second == *b"late")] = true;
        assert_eq!(sim.unsynced_sectors(&p("/d/f")).unwrap(), 0);
        // The next process (the failure is sticky for this one) syncs; what was lost stays
        // lost, and what landed stays.
        sim.crash(CrashMode::KeepWritten);
        let f = sim.open(&p("/d/f")).unwrap();
        f.sync_data().unwrap();
        sim.crash(CrashMode::DropUnsynced);
        let f = sim.open(&p("/d/f")).unwrap();
        assert_eq!(read(&*f, 0, 6), first);
        assert_eq!(read(&*f, 4096, 4), second);
    }
    assert_eq!(seen, [[true; 2]; 2], "an outcome never happened");
}

/// Under `RandomSectors` a creation or removal no directory sync made durable persisted or
/// not, at random; a created file that persisted has the length it was made with (zeros where
/// nothing landed) or what was synced of it.
#[test]
fn random_sectors_keep_names_and_sizes_no_directory_sync_made_durable_at_random() {
    let (mut created, mut removed, mut full_length) = ([false; 2], [false; 2], false);
    for seed in 0..64 {
        let (sim, _f) = with_file(seed, 4096);
        sim.create(&p("/d/fresh"), 1 << 20).unwrap();
        sim.remove(&p("/d/f")).unwrap();
        sim.crash(CrashMode::RandomSectors);
        let names = sim.list(&p("/d")).unwrap();
        let fresh = names.contains(&p("/d/fresh"));
        created[usize::from(fresh)] = true;
        removed[usize::from(!names.contains(&p("/d/f")))] = true;
        if fresh {
            let f = sim.open(&p("/d/fresh")).unwrap();
            let len = f.len().unwrap();
            assert!(len == 0 || len == 1 << 20, "{len}");
            if len > 0 {
                full_length = true;
                assert!(read(&*f, 0, len as usize).iter().all(|&b| b == 0));
            }
        }
    }
    assert_eq!(
        (created, removed),
        ([true; 2], [true; 2]),
        "an outcome never happened"
    );
    assert!(full_length, "no created file kept its length");
}

#[test]
fn existence_is_durable_only_after_sync_dir() {
    let (sim, _f) = with_file(2, 4096);
    // Created and data-synced, but its directory never synced: gone after a crash.
    let fresh = sim.create(&p("/d/fresh"), 4096).unwrap();
    fresh.write_at(b"data", 0).unwrap();
    fresh.sync_data().unwrap();
    // Removed but the removal never synced: back after a crash, with its synced data.
    sim.open(&p("/d/f")).unwrap().write_at(b"kept", 0).unwrap();
    sim.open(&p("/d/f")).unwrap().sync_data().unwrap();
    sim.remove(&p("/d/f")).unwrap();
    assert_eq!(sim.files(), vec![p("/d/fresh")]);
    assert_eq!(sim.durable_files(), vec![p("/d/f")]);
    assert_eq!(sim.durable_contents(&p("/d/fresh")), None);

    sim.crash(CrashMode::DropUnsynced);
    assert_eq!(sim.list(&p("/d")).unwrap(), vec![p("/d/f")]);
    assert_eq!(read(&*sim.open(&p("/d/f")).unwrap(), 0, 4), b"kept");

    // Now with the directory synced: both changes stick.
    sim.create(&p("/d/fresh"), 0).unwrap();
    sim.remove(&p("/d/f")).unwrap();
    sim.sync_dir(&p("/d")).unwrap();
    sim.crash(CrashMode::DropUnsynced);
    assert_eq!(sim.list(&p("/d")).unwrap(), vec![p("/d/fresh")]);
}

#[test]
fn preallocated_length_is_durable_after_the_first_data_sync() {
    let sim = SimStorage::new(3);
    sim.create_dir_all(&p("/d")).unwrap();
    sim.create(&p("/d/never"), 4096).unwrap();
    sim.create(&p("/d/synced"), 4096)
        .unwrap()
        .sync_data()
        .unwrap();
    sim.sync_dir(&p("/d")).unwrap();
    sim.crash(CrashMode::DropUnsynced);
    assert_eq!(sim.open(&p("/d/never")).unwrap().len().unwrap(), 0);
    assert_eq!(sim.open(&p("/d/synced")).unwrap().len().unwrap(), 4096);
}

#[test]
fn tear_last_write_keeps_a_strict_prefix_of_its_sectors() {
    let sectors = 8;
    let len = (sectors * SECTOR_SIZE) as usize;
    let mut kept_counts = std::collections::BTreeSet::new();
    for seed in 0..64 {
        let (sim, f) = with_file(seed, 1 << 16);
        f.write_at(&vec![1; 1000], 20_000).unwrap(); // an earlier unsynced write: lost
        f.write_at(&vec![9; len], 0).unwrap(); // the last one: torn
        sim.crash(CrashMode::TearLastWrite);
        let f = sim.open(&p("/d/f")).unwrap();
        assert_eq!(
            read(&*f, 20_000, 1000),
            vec![0; 1000],
            "seed {seed}: earlier write kept"
        );
        let got = read(&*f, 0, len);
        let kept = got.iter().take_while(|&&b| b == 9).count();
        assert!(
            got[kept..].iter().all(|&b| b == 0),
            "seed {seed}: not a prefix"
        );
        assert_eq!(
            kept % SECTOR_SIZE as usize,
            0,
            "seed {seed}: not sector-granular"
        );
        assert!(
            kept > 0 && kept < len,
            "seed {seed}: not torn ({kept} of {len})"
        );
        kept_counts.insert(kept);
    }
    assert!(
        kept_counts.len() > 3,
        "the tear point hardly varies: {kept_counts:?}"
    );
}

#[test]
fn random_sectors_keep_a_subset_and_replay_per_seed() {
    let run = |seed| {
        let (sim, f) = with_file(seed, 1 << 16);
        f.write_at(&vec![5; 64 * SECTOR_SIZE as usize], 4096)
            .unwrap();
        sim.crash(CrashMode::RandomSectors);
        sim.contents(&p("/d/f")).unwrap()
    };
    let a = run(11);
    assert_eq!(a, run(11), "same seed, different crash");
    let landed = a[4096..4096 + 64 * 512]
        .chunks(512)
        .map(|s| {
            assert!(s.iter().all(|&b| b == s[0]), "sector torn inside");
            s[0] == 5
        })
        .filter(|&x| x)
        .count();
    assert!(landed > 0 && landed < 64, "{landed} of 64 sectors");
    assert!((0..8).any(|seed| run(seed) != a), "seeds do not matter");
}

#[test]
fn keep_written_keeps_everything_like_a_process_crash_and_makes_nothing_durable() {
    let (sim, f) = with_file(4, 4096);
    f.write_at(b"unsynced", 0).unwrap();
    sim.create(&p("/d/new"), 10)
        .unwrap()
        .write_at(b"new", 0)
        .unwrap();
    sim.remove(&p("/d/f")).unwrap();
    sim.crash(CrashMode::KeepWritten);
    // The process is gone; the kernel still has what it wrote.
    assert_eq!(sim.files(), vec![p("/d/new")]);
    assert_eq!(read(&*sim.open(&p("/d/new")).unwrap(), 0, 3), b"new");
    // In its page cache: a power cut after it takes all that was never synced.
    assert_eq!(sim.durable_files(), vec![p("/d/f")]);
    sim.crash(CrashMode::DropUnsynced);
    assert_eq!(sim.files(), vec![p("/d/f")]);
    assert_eq!(read(&*sim.open(&p("/d/f")).unwrap(), 0, 8), vec![0u8; 8]);
}

#[test]
fn handles_from_before_a_crash_are_stale() {
    let (sim, f) = with_file(5, 4096);
    sim.crash(CrashMode::DropUnsynced);
    for err in [
        f.write_at(b"x", 0).unwrap_err(),
        f.read_at(&mut [0; 4], 0).unwrap_err(),
        f.sync_data().unwrap_err(),
        f.len().unwrap_err(),
    ] {
        assert!(err.to_string().contains("before the crash"), "{err}");
    }
    let sl = [IoSlice::new(b"x")];
    assert!(sim.submit(&[WriteOp::new(&*f, 0, &sl)], true).is_err());
    // The next "process" reopens and carries on.
    let f = sim.open(&p("/d/f")).unwrap();
    f.write_at(b"after", 0).unwrap();
    f.sync_data().unwrap();
}

/// Runs one call of each kind; the file ops go to `/d/f`.
fn each_op(sim: &SimStorage, kind: OpKind) -> io::Result<()> {
    let f = sim.open(&p("/d/f"));
    match kind {
        OpKind::Create => sim.create(&p("/d/g"), 10).map(drop),
        OpKind::Open => f.map(drop),
        OpKind::Remove => sim.remove(&p("/d/f")),
        OpKind::List => sim.list(&p("/d")).map(drop),
        OpKind::CreateDir => sim.create_dir_all(&p("/d/sub")),
        OpKind::SyncDir => sim.sync_dir(&p("/d")),
        OpKind::Write => f?.write_at(b"abc", 7),
        OpKind::Read => f?.read_at(&mut [0; 3], 7).map(drop),
        OpKind::Sync => f?.sync_data(),
        _ => unreachable!(),
    }
}

const KINDS: [OpKind; 9] = [
    OpKind::Create,
    OpKind::Open,
    OpKind::Remove,
    OpKind::List,
    OpKind::CreateDir,
    OpKind::SyncDir,
    OpKind::Write,
    OpKind::Read,
    OpKind::Sync,
];

#[test]
fn eio_and_enospc_reach_the_caller_from_every_operation() {
    for (fault, errno, kind_of_error) in [
        (Fault::Eio, libc::EIO, None),
        (Fault::Enospc, libc::ENOSPC, Some(ErrorKind::StorageFull)),
    ] {
        for kind in KINDS {
            let (sim, _f) = with_file(6, 4096);
            sim.inject(FaultRule::new(fault).op(kind));
            let err = each_op(&sim, kind).unwrap_err();
            assert_eq!(os_error(&err), Some(errno), "{kind:?}: {err}");
            if let Some(k) = kind_of_error {
                assert_eq!(err.kind(), k, "{kind:?}");
            }
            let op = err.get_ref().unwrap().downcast_ref::<OpError>().unwrap();
            assert!(op.path().starts_with("/d"), "{kind:?}: {err}");
            if matches!(kind, OpKind::Write | OpKind::Read) {
                assert_eq!(op.offset(), Some(7), "{kind:?}: {err}");
                assert!(err.to_string().contains("/d/f@7"), "{err}");
            }
            assert_eq!(sim.stats().faults_fired, 1);
            // One-shot: the same call works now (the sticky sync aside).
            if kind != OpKind::Sync {
                each_op(&sim, kind).unwrap();
            }
        }
    }
    // A failed write or create changes nothing.
    let (sim, f) = with_file(6, 4096);
    sim.inject(FaultRule::new(Fault::Enospc).op(OpKind::Write));
    assert!(f.write_at(b"nope", 0).is_err());
    assert_eq!(read(&*f, 0, 4), [0; 4]);
    sim.inject(FaultRule::new(Fault::Enospc).op(OpKind::Create));
    assert!(sim.create(&p("/d/g"), 1).is_err());
    assert_eq!(sim.files(), vec![p("/d/f")]);
}

#[test]
fn faults_reach_the_caller_through_batches() {
    let (sim, f) = with_file(7, 4096);
    let g = sim.create(&p("/d/g"), 4096).unwrap();
    let sl = [IoSlice::new(b"batch")];
    let ops = [WriteOp::new(&*f, 0, &sl), WriteOp::new(&*g, 0, &sl)];
    sim.inject(FaultRule::new(Fault::Eio).op(OpKind::Write).path("/d/g"));
    let err = sim.submit(&ops, true).unwrap_err();
    assert_eq!(os_error(&err), Some(libc::EIO));
    assert!(err.to_string().contains("/d/g@0"), "{err}");
    assert_eq!(sim.stats().data_syncs, 1, "a failed batch must not sync");

    sim.inject(FaultRule::new(Fault::Enospc).op(OpKind::Sync).path("/d/g"));
    let err = sim.submit(&ops, true).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StorageFull);
}

#[test]
fn short_write_lands_a_prefix_and_reports_where_it_stopped() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..32 {
        let (sim, f) = with_file(seed, 4096);
        sim.inject(FaultRule::new(Fault::ShortWrite));
        let data: Vec<u8> = (1..=200).collect();
        let bufs = [IoSlice::new(&data[..50]), IoSlice::new(&data[50..])];
        let err = f.write_vectored_at(&bufs, 1000).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WriteZero, "{err}");
        let op = err.get_ref().unwrap().downcast_ref::<OpError>().unwrap();
        let landed = (op.offset().unwrap() - 1000) as usize;
        assert!(landed < 200);
        assert!(
            err.to_string().contains(&format!("{} bytes", 200 - landed)),
            "{err}"
        );
        let got = read(&*f, 1000, 200);
        assert_eq!(&got[..landed], &data[..landed], "seed {seed}");
        assert!(
            got[landed..].iter().all(|&b| b == 0),
            "seed {seed}: more than the prefix"
        );
        seen.insert(landed);
        // The rule was spent, and only matched a write (the read above did not trip it).
        f.write_at(&data, 1000).unwrap();
    }
    assert!(seen.len() > 10, "short-write lengths hardly vary: {seen:?}");
}

#[test]
fn fault_rules_filter_by_op_path_and_count() {
    let (sim, f) = with_file(8, 4096);
    let g = sim.create(&p("/d/g"), 4096).unwrap();
    // The 3rd write under /d/g, twice in a row.
    sim.inject(
        FaultRule::new(Fault::Eio)
            .op(OpKind::Write)
            .path("/d/g")
            .nth(3)
            .times(2),
    );
    let results: Vec<bool> = (0..6)
        .map(|i| {
            f.write_at(b"f", i).unwrap(); // never matches
            g.write_at(b"g", i).is_ok()
        })
        .collect();
    assert_eq!(results, [true, true, false, false, true, true]);

    sim.inject(FaultRule::new(Fault::Enospc).op(OpKind::Write).forever());
    for i in 0..5 {
        assert_eq!(
            f.write_at(b"x", i).unwrap_err().kind(),
            ErrorKind::StorageFull
        );
    }
    f.read_exact_at(&mut [0; 1], 0).unwrap(); // reads unaffected
    sim.clear_faults();
    f.write_at(b"x", 0).unwrap();

    // fail_nth counts every kind of operation.
    sim.fail_nth(2, Fault::Eio);
    f.read_exact_at(&mut [0; 1], 0).unwrap();
    assert!(sim.list(&p("/d")).is_err());
    sim.list(&p("/d")).unwrap();
}

#[test]
fn failed_sync_is_sticky_until_the_process_restarts() {
    let (sim, f) = with_file(9, 4096);
    f.write_at(b"maybe", 0).unwrap();
    sim.inject(FaultRule::new(Fault::Eio).op(OpKind::Sync)); // fails once only
    let first = f.sync_data().unwrap_err();
    assert_eq!(os_error(&first), Some(libc::EIO));
    for _ in 0..3 {
        let err = f.sync_data().unwrap_err();
        assert_eq!(os_error(&err), Some(libc::EIO));
        assert!(err.to_string().contains("sticky"), "{err}");
    }
    // Not through another handle either.
    assert!(sim.open(&p("/d/f")).unwrap().sync_data().is_err());
    // A synced batch touching the file is refused before writing.
    let sl = [IoSlice::new(b"never")];
    assert!(sim.submit(&[WriteOp::new(&*f, 100, &sl)], true).is_err());
    assert_eq!(read(&*f, 100, 5), [0; 5]);
    // Other files are unaffected.
    sim.create(&p("/d/other"), 10).unwrap().sync_data().unwrap();
    // The data was never durable.
    sim.crash(CrashMode::DropUnsynced);
    let f = sim.open(&p("/d/f")).unwrap();
    assert_eq!(read(&*f, 0, 5), [0; 5]);
    f.sync_data().unwrap(); // the new process starts clean
}

#[test]
fn an_injected_crash_fails_the_operation_and_every_older_handle() {
    let (sim, f) = with_file(10, 4096);
    f.write_at(b"synced", 0).unwrap();
    f.sync_data().unwrap();
    sim.inject(FaultRule::new(Fault::Crash(CrashMode::DropUnsynced)).op(OpKind::Sync));
    f.write_at(b"unsynced", 10).unwrap();
    assert!(f.sync_data().is_err());
    assert!(f.write_at(b"x", 0).is_err());
    assert_eq!(sim.stats().crashes, 1);
    let f = sim.open(&p("/d/f")).unwrap();
    assert_eq!(read(&*f, 0, 18), b"synced\0\0\0\0\0\0\0\0\0\0\0\0");
    f.sync_data().unwrap(); // not sticky: the crash, not the sync, failed
}

/// A small workload touching every kind of operation.
fn workload(sim: &SimStorage) -> io::Result<Vec<u8>> {
    let dir = Path::new("/w");
    sim.create_dir_all(dir)?;
    let a = sim.create(&dir.join("a"), 4096)?;
    let b = sim.create(&dir.join("b"), 4096)?;
    a.write_at(b"header", 0)?;
    let (x, y) = ([IoSlice::new(b"entry-1")], [IoSlice::new(b"entry-2")]);
    sim.submit(
        &[WriteOp::new(&*a, 64, &x), WriteOp::new(&*b, 64, &y)],
        true,
    )?;
    sim.sync_dir(dir)?;
    let mut buf = vec![0; 7];
    a.read_exact_at(&mut buf, 64)?;
    sim.remove(&dir.join("b"))?;
    sim.sync_dir(dir)?;
    sim.list(dir)?;
    let a = sim.open(&dir.join("a"))?;
    a.write_at(b"tail", 4092)?;
    a.sync_data()?;
    Ok(buf)
}

#[test]
fn failing_each_operation_in_turn_always_surfaces_an_error() {
    let clean = SimStorage::new(0);
    assert_eq!(workload(&clean).unwrap(), b"entry-1");
    let ops = clean.stats().ops;
    assert!(ops >= 15, "{ops} operations");
    for n in 1..=ops {
        for fault in [
            Fault::Eio,
            Fault::Enospc,
            Fault::Crash(CrashMode::RandomSectors),
        ] {
            let sim = SimStorage::new(n);
            sim.fail_nth(n, fault);
            assert!(
                workload(&sim).is_err(),
                "op {n} failed with {fault:?} but the workload succeeded"
            );
            assert_eq!(sim.stats().faults_fired, 1);
            // Whatever survived a crash is consistent with the durability rules: a file that
            // exists after it was made durable has its synced header.
            if let Some(bytes) = sim.durable_contents(Path::new("/w/a"))
                && bytes.len() >= 64 + 7
                && bytes[64..71] == *b"entry-1"
            {
                assert_eq!(&bytes[..6], b"header");
            }
        }
    }
    // Short writes only hit writes.
    let writes = 4; // a.header, 2 batch ops, a.tail
    for n in 1..=writes {
        let sim = SimStorage::new(n);
        sim.inject(FaultRule::new(Fault::ShortWrite).nth(n));
        let err = workload(&sim).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WriteZero);
    }
}

#[test]
fn same_seed_same_run() {
    let run = |seed: u64| {
        let sim = SimStorage::new(seed);
        sim.inject(FaultRule::new(Fault::ShortWrite).nth(2).times(3));
        let outcome = format!("{:?}", workload(&sim).map_err(|e| e.to_string()));
        // The rule has shots left: these writes may be short too.
        let f = sim.open(Path::new("/w/a")).ok().map(|f| {
            let first = f.write_at(&[0xEE; 3000], 100).map_err(|e| e.to_string());
            let second = f.write_at(&[0xDD; 3000], 200).map_err(|e| e.to_string());
            (first, second)
        });
        sim.crash(CrashMode::RandomSectors);
        (
            outcome,
            f,
            sim.files(),
            sim.contents(Path::new("/w/a")).ok(),
            sim.stats(),
        )
    };
    for seed in [0, 1, 42, u64::MAX] {
        assert_eq!(run(seed), run(seed), "seed {seed} did not replay");
    }
    assert!(
        (0..8)
            .map(run)
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 1
    );
}

#[test]
fn stats_count_operations_and_syncs() {
    let sim = SimStorage::new(12);
    workload(&sim).unwrap();
    let stats = sim.stats();
    assert_eq!(stats.data_syncs, 3, "2 from the batch, 1 explicit");
    assert_eq!(stats.dir_syncs, 2);
    assert_eq!(stats.faults_fired, 0);
    assert_eq!(stats.crashes, 0);
    assert_eq!(sim.seed(), 12);
    assert!(format!("{sim:?}").contains("seed: 12"));
}

#[derive(Debug, Clone)]
enum Step {
    Write { offset: u64, len: usize, byte: u8 },
    Sync,
    Crash,
    TornCrash,
    RandomCrash,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u64..6000, 1usize..1500, 1u8..=255)
            .prop_map(|(offset, len, byte)| Step::Write { offset, len, byte }),
        2 => Just(Step::Sync),
        1 => Just(Step::Crash),
        1 => Just(Step::TornCrash),
        1 => Just(Step::RandomCrash),
    ]
}

/// Checks the simulator against a two-copy model (written / synced): reads always show the
/// written copy; after a crash every sector shows either the synced or the written copy, and
/// only as the crash mode allows.
fn check_against_model(seed: u64, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let (sim, mut f) = with_file(seed, 4096);
    let path = p("/d/f");
    let mut written = vec![0u8; 4096];
    let mut synced = written.clone();
    // The last unsynced write, as (offset, end).
    let mut last: Option<(u64, u64)> = None;
    for step in steps {
        let mode = match step {
            Step::Write { offset, len, byte } => {
                f.write_at(&vec![byte; len], offset).unwrap();
                let end = offset as usize + len;
                if written.len() < end {
                    written.resize(end, 0);
                }
                written[offset as usize..end].fill(byte);
                last = Some((offset, end as u64));
                None
            }
            Step::Sync => {
                f.sync_data().unwrap();
                synced = written.clone();
                last = None;
                None
            }
            Step::Crash => Some(CrashMode::DropUnsynced),
            Step::TornCrash => Some(CrashMode::TearLastWrite),
            Step::RandomCrash => Some(CrashMode::RandomSectors),
        };
        if let Some(mode) = mode {
            sim.crash(mode);
            f = sim.open(&path).unwrap();
            let got = sim.contents(&path).unwrap();
            prop_assert!(got.len() >= synced.len());
            prop_assert!(got.len() <= written.len().max(synced.len()));
            let sector = SECTOR_SIZE as usize;
            let byte_at = |copy: &[u8], j: usize| copy.get(j).copied().unwrap_or(0);
            // Whether every torn sector so far continued the prefix of the last write.
            let mut prefix_open = true;
            for (i, chunk) in got.chunks(sector).enumerate() {
                let range = i * sector..(i * sector + chunk.len());
                let old: Vec<u8> = range.clone().map(|j| byte_at(&synced, j)).collect();
                let new: Vec<u8> = range.map(|j| byte_at(&written, j)).collect();
                let is_old = chunk == &old[..];
                prop_assert!(is_old || chunk == &new[..], "sector {} is neither copy", i);
                let start = i as u64 * SECTOR_SIZE;
                let in_last = last.is_some_and(|(o, e)| start + SECTOR_SIZE > o && start < e);
                match mode {
                    CrashMode::DropUnsynced => {
                        prop_assert!(is_old, "sector {} kept unsynced data", i)
                    }
                    CrashMode::TearLastWrite if !is_old => {
                        prop_assert!(in_last, "sector {} outside the last write", i);
                        prop_assert!(prefix_open, "torn sectors not a prefix");
                    }
                    CrashMode::TearLastWrite if in_last && old != new => prefix_open = false,
                    _ => {}
                }
            }
            written = got.clone();
            synced = got;
            last = None;
        }
        prop_assert_eq!(sim.contents(&path).unwrap(), written.clone());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128),
        ..ProptestConfig::default()
    })]

    #[test]
    fn sim_matches_a_written_synced_model(
        seed in any::<u64>(),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        check_against_model(seed, steps)?;
    }
}
