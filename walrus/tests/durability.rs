//! The durability contract, one defect at a time: each test here failed before the fix it is
//! named after (see issue "Durability you can trust"), and pins the behaviour down.

mod common;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use walrus::Storage;
use walrus::sim::{CrashMode, SimStorage};
use walrus::{FsyncSchedule, ReadConsistency, Walrus};

fn sim_wal(sim: &SimStorage, schedule: FsyncSchedule, consistency: ReadConsistency) -> Walrus {
    Walrus::builder()
        .data_dir("/d")
        .storage(Arc::new(sim.clone()) as Arc<dyn Storage>)
        .fsync_schedule(schedule)
        .consistency(consistency)
        .segment_len(64 * 1024)
        .block_len(8 * 1024)
        .quiet(true)
        .build()
        .unwrap()
}

/// Consumed means consumed, also after power loss, under every schedule that syncs: a
/// `StrictlyAtOnce` read's cursor is durable before the read returns, and `AtLeastOnce`
/// re-delivers at most `persist_every - 1`. (Under `Milliseconds` the cursor waited for the
/// next periodic sync: a power cut before it handed the entries out again.)
#[test]
fn consumed_entries_stay_consumed_after_a_power_cut() {
    let hour = FsyncSchedule::Milliseconds(3_600_000);
    for (seed, consistency, resumes_at) in [
        (71, ReadConsistency::StrictlyAtOnce, 7),
        (72, ReadConsistency::AtLeastOnce { persist_every: 3 }, 6),
    ] {
        let sim = SimStorage::new(seed);
        {
            let wal = sim_wal(&sim, hour, consistency);
            for i in 0..10u8 {
                wal.append_for_topic("t", &[i; 100]).unwrap();
            }
            wal.flush().unwrap();
            for i in 0..7u8 {
                assert_eq!(wal.read_next("t", true).unwrap().unwrap().data, [i; 100]);
            }
            sim.crash(CrashMode::DropUnsynced);
        }
        let wal = sim_wal(&sim, hour, consistency);
        let next = wal.read_next("t", true).unwrap().unwrap();
        assert_eq!(next.data, [resumes_at; 100], "{consistency:?}");
    }
}

/// A flush whose cursor write fails still syncs the appends (and reports the failure).
#[test]
fn a_flush_syncs_the_appends_when_a_cursor_cannot_be_written() {
    use walrus::sim::{Fault, FaultRule, OpKind};
    let sim = SimStorage::new(73);
    {
        let consistency = ReadConsistency::AtLeastOnce { persist_every: 100 };
        let wal = sim_wal(&sim, FsyncSchedule::NoFsync, consistency);
        for i in 0..3u8 {
            wal.append_for_topic("t", &[i; 10]).unwrap();
        }
        wal.read_next("t", true).unwrap().unwrap();
        sim.inject(
            FaultRule::new(Fault::Eio)
                .op(OpKind::Write)
                .path("/d/cursors.wcur")
                .forever(),
        );
        wal.flush().unwrap_err();
        sim.crash(CrashMode::DropUnsynced);
        sim.clear_faults();
    }
    let wal = sim_wal(
        &sim,
        FsyncSchedule::NoFsync,
        ReadConsistency::StrictlyAtOnce,
    );
    for i in 0..3u8 {
        assert_eq!(
            wal.read_at("t", u64::from(i)).unwrap().map(|e| e.data),
            Some(vec![i; 10]),
            "entry {i} was not synced"
        );
    }
}

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every file of `dir` with its bytes, by name.
fn contents(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    listing(dir)
        .into_iter()
        .map(|n| {
            let data = std::fs::read(dir.join(&n)).unwrap();
            (n, data)
        })
        .collect()
}

/// Defect 2: under `SyncEach` a reader sees an entry only once its append is acknowledged
/// (durable), so no reader can see an entry a power cut takes back.
#[test]
fn sync_each_entries_are_visible_only_when_durable() {
    let sim = SimStorage::new(1);
    let wal = sim_wal(
        &sim,
        FsyncSchedule::SyncEach,
        ReadConsistency::StrictlyAtOnce,
    );
    let ticket = wal.append_with_ticket("t", b"pending").unwrap();
    assert_eq!(
        wal.read_at("t", 0).unwrap(),
        None,
        "visible before it is durable"
    );
    assert_eq!(wal.read_next("t", false).unwrap(), None);
    assert_eq!(wal.end_offset("t"), Some(1), "written, offset taken");
    ticket.wait().unwrap();
    assert_eq!(wal.read_at("t", 0).unwrap().unwrap().data, b"pending");
    assert_eq!(wal.read_next("t", true).unwrap().unwrap().data, b"pending");
    // A plain SyncEach append is visible as soon as it returns (read-your-writes).
    wal.append("t", b"acked").unwrap();
    assert_eq!(wal.read_next("t", true).unwrap().unwrap().data, b"acked");
}

/// Defect 5: outstanding tickets do not keep a dropped instance (its lock, its files) alive;
/// they resolve when it closes.
#[test]
fn dropping_the_instance_settles_tickets_and_releases_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    for schedule in [
        FsyncSchedule::Milliseconds(3_600_000),
        FsyncSchedule::NoFsync,
    ] {
        let wal = Walrus::builder()
            .data_dir(dir.path())
            .fsync_schedule(schedule)
            .quiet(true)
            .build()
            .unwrap();
        let ticket = wal.append_with_ticket("t", b"x").unwrap();
        drop(wal);
        // The directory is free at once, the final writes done.
        let again = Walrus::builder()
            .data_dir(dir.path())
            .quiet(true)
            .build()
            .unwrap();
        drop(again);
        let waited = common::within("a ticket of a dropped instance", move || ticket.wait());
        match schedule {
            // The final sync at drop covered it.
            FsyncSchedule::Milliseconds(_) => assert_eq!(waited.unwrap(), 0..1),
            // Nothing syncs under NoFsync: the ticket says so instead of waiting forever.
            _ => assert_eq!(waited.unwrap_err().kind(), io::ErrorKind::BrokenPipe),
        }
    }
}

/// Defect 5, with the ticket being waited on in another thread while the instance drops: the
/// waiter is woken and told, the directory is free at once.
#[test]
fn a_ticket_waited_on_during_drop_is_settled() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Walrus::builder()
        .data_dir(dir.path())
        .fsync_schedule(FsyncSchedule::NoFsync)
        .quiet(true)
        .build()
        .unwrap();
    let ticket = wal.append_with_ticket("t", b"x").unwrap();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (waited_tx, waited_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        started_tx.send(()).unwrap();
        let _ = waited_tx.send(ticket.wait());
    });
    started_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    drop(wal);
    let again = Walrus::builder().data_dir(dir.path()).quiet(true).build();
    assert!(again.is_ok(), "the directory is still held: {again:?}");
    // Either the waiter's own request got a sync in before the drop, or the close settled it.
    let waited = waited_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the waiter was left waiting after the drop");
    match waited {
        Ok(offsets) => assert_eq!(offsets, 0..1),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}"),
    }
}

/// Defect 6: an open that is refused leaves the directory exactly as it was.
#[test]
fn a_refused_open_changes_nothing() {
    // A foreign file in a directory that never held Walrus data.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    let err = Walrus::builder()
        .data_dir(dir.path())
        .quiet(true)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert_eq!(
        listing(dir.path()),
        ["notes.txt"],
        "no LOCK, no cursor files"
    );

    // A subdirectory, and a symlink, named like segments: refused, nothing created.
    for make in ["dir", "symlink"] {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().join("00000000000000000000.wseg");
        if make == "dir" {
            std::fs::create_dir(&name).unwrap();
        } else {
            std::os::unix::fs::symlink("/dev/null", &name).unwrap();
        }
        let err = Walrus::builder()
            .data_dir(dir.path())
            .quiet(true)
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{make}: {err}");
        assert_eq!(listing(dir.path()), ["00000000000000000000.wseg"], "{make}");
    }

    // A directory of real data whose open the recovery mode refuses: every byte unchanged.
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Walrus::builder()
            .data_dir(dir.path())
            .fsync_schedule(FsyncSchedule::SyncEach)
            .quiet(true)
            .build()
            .unwrap();
        for i in 0..50u32 {
            wal.append("t", &[i as u8; 300]).unwrap();
        }
    }
    let seg = dir.path().join("00000000000000000000.wseg");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[4096 + 400] ^= 0x10; // inside the first block's entries: below the watermark
    std::fs::write(&seg, &bytes).unwrap();
    std::fs::remove_file(dir.path().join("LOCK")).unwrap();
    let before = contents(dir.path());
    let err = Walrus::builder()
        .data_dir(dir.path())
        .quiet(true)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    let after = contents(dir.path());
    assert!(before == after, "a refused open changed the directory");
}

/// An `AtLeastOnce` reader that goes idle has its progress persisted by the background
/// maintenance, not only at drop.
#[test]
fn an_idle_at_least_once_cursor_is_persisted_in_the_background() {
    let sim = SimStorage::new(3);
    {
        let wal = Walrus::builder()
            .data_dir("/d")
            .storage(Arc::new(sim.clone()) as Arc<dyn Storage>)
            .fsync_schedule(FsyncSchedule::Milliseconds(3_600_000))
            .consistency(ReadConsistency::AtLeastOnce {
                persist_every: 1000,
            })
            .quiet(true)
            .build()
            .unwrap();
        for i in 0..5u8 {
            wal.append("t", &[i]).unwrap();
        }
        for _ in 0..3 {
            wal.read_next("t", true).unwrap().unwrap();
        }
        // Idle: the background thread persists the cursor within a maintenance period (50 ms).
        std::thread::sleep(Duration::from_millis(400));
        sim.crash(CrashMode::KeepWritten); // a process crash: what was written survives
        std::mem::forget(wal); // its handles died with the crash
    }
    let wal = Walrus::builder()
        .data_dir("/d")
        .storage(Arc::new(sim.clone()) as Arc<dyn Storage>)
        .quiet(true)
        .build()
        .unwrap();
    assert_eq!(
        wal.cursor("t"),
        Some(3),
        "the idle reader's progress was lost"
    );
}

/// `NoFsync` never syncs unless `flush` is called, and a close is no exception: dropping the
/// instance writes its cursors and watermarks but syncs nothing. A process exit keeps them.
#[test]
fn no_fsync_syncs_nothing_at_close() {
    let sim = SimStorage::new(31);
    let consistency = ReadConsistency::AtLeastOnce { persist_every: 1 };
    let wal = sim_wal(&sim, FsyncSchedule::NoFsync, consistency);
    for i in 0..10u8 {
        wal.append_for_topic("t", &[i; 100]).unwrap();
    }
    for _ in 0..3 {
        wal.read_next("t", true).unwrap().unwrap();
    }
    let before = sim.stats();
    drop(wal);
    let after = sim.stats();
    assert_eq!(
        (after.data_syncs, after.dir_syncs),
        (before.data_syncs, before.dir_syncs),
        "the close synced"
    );
    sim.crash(CrashMode::KeepWritten);
    let wal = sim_wal(&sim, FsyncSchedule::NoFsync, consistency);
    assert_eq!(wal.read_next("t", false).unwrap().unwrap().data, [3u8; 100]);
    // The other schedules still sync at close.
    drop(wal);
    let wal = sim_wal(&sim, FsyncSchedule::Milliseconds(10_000), consistency);
    wal.read_next("t", true).unwrap().unwrap();
    // (The read synced its cursor: something else for the close to sync.)
    wal.append_for_topic("t", b"late").unwrap();
    let middle = sim.stats();
    drop(wal);
    assert!(
        sim.stats().data_syncs > middle.data_syncs,
        "no sync at close"
    );
}
