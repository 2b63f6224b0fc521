//! Named consumers, retention, topic deletion, waiting reads, iterators and read-only opens, on the simulated
//! backend (crashes at every step of a deletion) and on the real file system.

use std::io;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use walrus_io::hooked::{Hooked, Op};
use walrus_io::{CrashMode, Fault, FaultRule, OpKind, SimStorage, Storage};
use walrus_topic::{Retention, Store, StoreOptions};

const DIR: &str = "/wal";

/// 8 KiB blocks, 64 KiB segments: tests cross blocks and segments quickly.
fn small() -> StoreOptions {
    StoreOptions::new()
        .with_block_len(8192)
        .with_segment_len(64 * 1024)
}

fn open(sim: &SimStorage, options: StoreOptions) -> io::Result<Store> {
    Store::open(DIR, Arc::new(sim.clone()) as Arc<dyn Storage>, options)
}

fn payload(i: u64) -> Vec<u8> {
    let len = 200 + (i * 37 % 600) as usize;
    (0..len).map(|k| (i as usize * 31 + k) as u8).collect()
}

fn segments(sim: &SimStorage) -> usize {
    sim.files()
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wseg"))
        .count()
}

fn drain_as(store: &Store, topic: &str, consumer: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        match store.read_next_as(topic, consumer, true).unwrap() {
            Some((o, data)) => {
                assert_eq!(data, payload(o), "{topic}/{consumer} at {o}");
                out.push(o);
            }
            None => return out,
        }
    }
    panic!("{topic}/{consumer} never drained");
}

#[test]
fn named_consumers_read_independently_and_their_cursors_survive_reopen() {
    let sim = SimStorage::new(1);
    {
        let store = open(&sim, small()).unwrap();
        for i in 0..50 {
            store.append("t", &payload(i)).unwrap();
        }
        // Consumers exist from their first consuming read or commit.
        store.commit_as("t", "audit", 0).unwrap();
        store.commit("t", 0).unwrap();
        assert_eq!(
            drain_as(&store, "t", "billing"),
            (0..50).collect::<Vec<_>>()
        );
        for _ in 0..10 {
            store.read_next_as("t", "audit", true).unwrap().unwrap();
        }
        // The default consumer (the seed API's cursor) is a consumer like the others.
        assert_eq!(store.read_next("t", true).unwrap().map(|e| e.0), Some(0));
        assert_eq!(store.cursor_as("t", "billing"), Some(50));
        assert_eq!(store.cursor_as("t", "audit"), Some(10));
        assert_eq!(store.cursor("t"), Some(1));
        assert_eq!(store.cursor_as("t", "nobody"), None);
        // A peek by a consumer that does not exist reads the oldest entry and creates nothing.
        assert_eq!(
            store
                .read_next_as("t", "nobody", false)
                .unwrap()
                .map(|e| e.0),
            Some(0)
        );
        let names: Vec<String> = store.consumers("t").into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["", "audit", "billing"]);
        store.sync().unwrap();
    }
    sim.crash(CrashMode::DropUnsynced);
    let store = open(&sim, small()).unwrap();
    assert_eq!(store.cursor_as("t", "billing"), Some(50));
    assert_eq!(store.cursor_as("t", "audit"), Some(10));
    assert_eq!(store.cursor("t"), Some(1));
    assert_eq!(drain_as(&store, "t", "audit"), (10..50).collect::<Vec<_>>());
    let infos = store.consumers("t");
    let lag: Vec<(String, u64)> = infos.iter().map(|c| (c.name.clone(), c.lag)).collect();
    assert_eq!(
        lag,
        [("".into(), 49), ("audit".into(), 0), ("billing".into(), 0)]
    );
}

#[test]
fn blocks_are_released_only_once_every_consumer_consumed_them() {
    let sim = SimStorage::new(2);
    let store = open(&sim, small()).unwrap();
    for i in 0..400 {
        store.append("t", &payload(i)).unwrap();
    }
    store.sync().unwrap();
    let before = store.retained_blocks("t").unwrap();
    let segs = segments(&sim);
    assert!(
        before > 10 && segs > 2,
        "{before} blocks in {segs} segments"
    );
    store.read_next_as("t", "slow", true).unwrap();
    drain_as(&store, "t", "fast");
    // "slow" holds back every block.
    assert_eq!(store.retained_blocks("t"), Some(before));
    assert_eq!(segments(&sim), segs);
    drain_as(&store, "t", "slow");
    assert!(store.retained_blocks("t").unwrap() <= 1);
    assert!(segments(&sim) < segs, "consumed segments deleted");
    assert_eq!(
        store.read_at("t", 0).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
}

#[test]
fn removing_a_consumer_releases_what_it_held_and_survives_reopen() {
    let sim = SimStorage::new(3);
    {
        let store = open(&sim, small()).unwrap();
        for i in 0..300 {
            store.append("t", &payload(i)).unwrap();
        }
        store.read_next_as("t", "stuck", true).unwrap();
        drain_as(&store, "t", "live");
        let held = store.retained_blocks("t").unwrap();
        assert!(held > 5);
        assert!(store.remove_consumer("t", "stuck").unwrap());
        assert!(!store.remove_consumer("t", "stuck").unwrap());
        assert!(store.retained_blocks("t").unwrap() <= 1);
        assert_eq!(store.cursor_as("t", "stuck"), None);
        store.sync().unwrap();
    }
    sim.crash(CrashMode::DropUnsynced);
    let store = open(&sim, small()).unwrap();
    let names: Vec<String> = store.consumers("t").into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["live"]);
    // The name again: a new consumer, at the oldest entry retained.
    let first = store.first_retained_offset("t").unwrap();
    assert!(first > 0);
    assert_eq!(
        store.read_next_as("t", "stuck", true).unwrap().map(|e| e.0),
        Some(first)
    );
}

#[test]
fn consumer_names_are_checked_and_a_bad_one_changes_nothing() {
    let sim = SimStorage::new(4);
    let store = open(&sim, small()).unwrap();
    store.append("t", b"x").unwrap();
    let long = "c".repeat(129);
    let kinds = [
        store.read_next_as("t", &long, true).unwrap_err().kind(),
        store.commit_as("t", &long, 0).unwrap_err().kind(),
        store.remove_consumer("t", &long).unwrap_err().kind(),
        store
            .read_batch_as("t", &long, 1024, true)
            .unwrap_err()
            .kind(),
    ];
    assert!(
        kinds.iter().all(|k| *k == io::ErrorKind::InvalidInput),
        "{kinds:?}"
    );
    assert!(store.consumers("t").is_empty());
    assert_eq!(
        store.commit_as("t", "c", 5).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    assert!(
        store.consumers("t").is_empty(),
        "a refused commit creates nothing"
    );
}

#[test]
fn retention_by_size_releases_unread_entries_and_a_consumer_behind_skips_them() {
    let sim = SimStorage::new(5);
    let options =
        small().with_topic_retention("capped", Retention::default().with_max_bytes(32 << 10));
    {
        let store = open(&sim, options.clone()).unwrap();
        store.read_next_as("capped", "reader", true).unwrap();
        store.append("capped", &payload(0)).unwrap();
        assert_eq!(
            store
                .read_next_as("capped", "reader", true)
                .unwrap()
                .map(|e| e.0),
            Some(0)
        );
        for i in 1..600 {
            store.append("capped", &payload(i)).unwrap();
            store.append("free", &payload(i)).unwrap();
        }
        let first = store.first_retained_offset("capped").unwrap();
        assert!(
            first > 100,
            "retention released the oldest blocks: first kept {first}"
        );
        assert_eq!(
            store.first_retained_offset("free"),
            Some(0),
            "no retention: all kept"
        );
        // A read whose cursor write fails hands nothing out, and its skip is counted by the
        // read that succeeds, once.
        sim.inject(
            FaultRule::new(Fault::Eio)
                .op(OpKind::Write)
                .path(format!("{DIR}/cursors.wcur")),
        );
        let before = store.consumers("capped")[0].skipped;
        assert_eq!(
            before,
            first - 1,
            "the skip ahead is counted before the read"
        );
        assert!(store.read_next_as("capped", "reader", true).is_err());
        assert_eq!(store.consumers("capped")[0].skipped, before);
        let (o, data) = store
            .read_next_as("capped", "reader", true)
            .unwrap()
            .unwrap();
        assert_eq!((o, data), (first, payload(first)));
        let info = &store.consumers("capped")[0];
        assert_eq!(info.skipped, first - 1);
        assert_eq!(
            store.read_at("capped", 5).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        store.sync().unwrap();
    }
    sim.crash(CrashMode::DropUnsynced);
    let store = open(&sim, options).unwrap();
    let first = store.first_retained_offset("capped").unwrap();
    assert!(first > 100, "the floor survives: {first}");
    for o in first..600 {
        assert_eq!(store.read_at("capped", o).unwrap(), Some(payload(o)), "{o}");
    }
    assert_eq!(store.read_at("free", 0).unwrap(), Some(payload(1)));
}

#[test]
fn a_consumer_created_after_a_release_starts_at_the_oldest_entry_retained() {
    let sim = SimStorage::new(12);
    let store = open(&sim, small()).unwrap();
    for i in 0..300 {
        store.append("t", &payload(i)).unwrap();
    }
    drain_as(&store, "t", "first");
    let oldest = store.first_retained_offset("t").unwrap();
    assert!(oldest > 0, "the only consumer released what it read");
    assert_eq!(store.cursor_as("t", "late"), None);
    assert_eq!(
        store.read_next_as("t", "late", true).unwrap().map(|e| e.0),
        Some(oldest)
    );
}

#[test]
fn release_before_releases_for_every_reader_durably_and_bad_input_changes_nothing() {
    let sim = SimStorage::new(13);
    {
        let store = open(&sim, small()).unwrap();
        for i in 0..1000 {
            store.append("t", &payload(i)).unwrap();
        }
        for _ in 0..5 {
            store.read_next_as("t", "a", true).unwrap();
        }
        store.commit_as("t", "b", 150).unwrap();
        store.sync().unwrap();
        let before = segments(&sim);
        let refused = [
            (store.release_before("t", 1001), io::ErrorKind::InvalidInput),
            (store.release_before("nope", 0), io::ErrorKind::NotFound),
        ];
        for (result, kind) in refused {
            assert_eq!(result.unwrap_err().kind(), kind);
        }
        // A failed write of the floor releases nothing.
        sim.inject(
            FaultRule::new(Fault::Eio)
                .op(OpKind::Write)
                .path(format!("{DIR}/cursors.wcur")),
        );
        assert!(store.release_before("t", 800).is_err());
        sim.clear_faults();
        assert_eq!(store.first_retained_offset("t"), Some(0));
        assert_eq!(store.read_at("t", 3).unwrap(), Some(payload(3)));
        assert_eq!(store.topics(), ["t"], "no topic made by the refusals");

        assert!(store.release_before("t", 800).unwrap());
        assert!(!store.release_before("t", 800).unwrap(), "already there");
        assert!(!store.release_before("t", 20).unwrap(), "never lowered");
        assert_eq!(store.first_retained_offset("t"), Some(800));
        assert_eq!(
            store.read_at("t", 799).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(store.read_at("t", 800).unwrap(), Some(payload(800)));
        assert!(
            segments(&sim) < before,
            "the segments below the floor went ({before} before)"
        );
        // A raise that deletes no segment (a deletion syncs the cursor file first) is durable
        // once it returns too: nothing is synced after it.
        let kept = segments(&sim);
        assert!(store.release_before("t", 805).unwrap());
        assert_eq!(segments(&sim), kept);
        // The power goes before the store closes (a close would sync).
        sim.crash(CrashMode::DropUnsynced);
    }
    let store = open(&sim, small()).unwrap();
    assert_eq!(store.first_retained_offset("t"), Some(805));
    assert_eq!(
        store.read_at("t", 804).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    // Consumers behind it go on from it, counting what they skipped.
    for (name, cursor) in [("a", 5), ("b", 150)] {
        assert_eq!(
            store.read_next_as("t", name, true).unwrap().map(|e| e.0),
            Some(805),
            "{name}"
        );
        let info = store.consumers("t").into_iter().find(|c| c.name == name);
        assert_eq!(info.map(|c| c.skipped), Some(805 - cursor), "{name}");
    }
    assert_eq!(store.read_at("t", 999).unwrap(), Some(payload(999)));
}

#[test]
fn retention_by_age_releases_old_blocks_at_maintenance() {
    let sim = SimStorage::new(6);
    let options =
        small().with_retention(Retention::default().with_max_age(Duration::from_millis(30)));
    let store = open(&sim, options).unwrap();
    for i in 0..100 {
        store.append("t", &payload(i)).unwrap();
    }
    store.maintain().unwrap();
    assert_eq!(
        store.first_retained_offset("t"),
        Some(0),
        "young blocks stay"
    );
    thread::sleep(Duration::from_millis(60));
    store.maintain().unwrap();
    let first = store.first_retained_offset("t").unwrap();
    assert!(first > 50, "old sealed blocks released: first kept {first}");
    assert_eq!(
        store.retained_blocks("t"),
        Some(1),
        "the newest block is kept"
    );
    assert_eq!(store.read_at("t", 99).unwrap(), Some(payload(99)));
    // Limits that would release everything at once: zero, or an age under the millisecond
    // ages are counted in.
    for limit in [
        Retention::default().with_max_bytes(0),
        Retention::default().with_max_age(Duration::ZERO),
        Retention::default().with_max_age(Duration::from_micros(500)),
    ] {
        let options = StoreOptions::new().with_topic_retention("t", limit);
        let e = options.validate().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{limit:?}");
    }
    assert!(
        StoreOptions::new()
            .with_retention(Retention::default().with_max_age(Duration::from_millis(1)))
            .validate()
            .is_ok()
    );
}

#[test]
fn a_deleted_topic_is_gone_after_reopen_and_its_name_continues_past_its_offsets() {
    let sim = SimStorage::new(7);
    {
        let store = open(&sim, small()).unwrap();
        for i in 0..200 {
            store.append("gone", &payload(i)).unwrap();
            store.append("kept", &payload(i)).unwrap();
        }
        store.read_next_as("gone", "c", true).unwrap();
        let segs = segments(&sim);
        assert!(store.delete_topic("gone").unwrap());
        assert!(!store.delete_topic("gone").unwrap());
        assert_eq!(store.topics(), ["kept"]);
        assert_eq!(store.end_offset("gone"), None);
        assert_eq!(store.read_next("gone", true).unwrap(), None);
        assert!(store.consumers("gone").is_empty());
        assert!(segments(&sim) < segs, "its segments went with it");
        store.sync().unwrap();
    }
    sim.crash(CrashMode::DropUnsynced);
    {
        let store = open(&sim, small()).unwrap();
        assert_eq!(store.topics(), ["kept"]);
        assert_eq!(store.read_at("gone", 0).unwrap(), None);
        // Reused: offsets continue where the deleted topic ended; no old consumer comes back.
        assert_eq!(store.append("gone", b"again").unwrap(), 200);
        assert_eq!(store.topics(), ["gone", "kept"]);
        assert!(store.consumers("gone").is_empty());
        assert_eq!(
            store.read_next_as("gone", "c", true).unwrap(),
            Some((200, b"again".to_vec()))
        );
        store.sync().unwrap();
    }
    sim.crash(CrashMode::DropUnsynced);
    let store = open(&sim, small()).unwrap();
    assert_eq!(store.topics(), ["gone", "kept"]);
    assert_eq!(
        store.cursor_as("gone", "c"),
        Some(201),
        "the new consumer survives"
    );
    assert_eq!(store.read_at("gone", 200).unwrap(), Some(b"again".to_vec()));
    assert_eq!(store.read_at("kept", 199).unwrap(), Some(payload(199)));
}

#[test]
fn a_crash_at_any_write_of_a_deletion_leaves_the_topic_whole_or_deleted() {
    let (mut deleted, mut whole) = (0, 0);
    for nth in 0..12 {
        let sim = SimStorage::new(100 + nth);
        {
            let store = open(&sim, small()).unwrap();
            for i in 0..120 {
                store.append("t", &payload(i)).unwrap();
            }
            store.read_next_as("t", "a", true).unwrap();
            store.read_next_as("t", "b", true).unwrap();
            store.sync().unwrap();
            sim.inject(
                FaultRule::new(Fault::Crash(CrashMode::DropUnsynced))
                    .op(OpKind::Write)
                    .nth(nth),
            );
            let _ = store.delete_topic("t");
        }
        sim.clear_faults();
        sim.crash(CrashMode::DropUnsynced);
        let store = open(&sim, small()).unwrap();
        let was_deleted = store.topics().is_empty();
        if was_deleted {
            deleted += 1;
            assert_eq!(store.read_at("t", 1).unwrap(), None, "crash at write {nth}");
            assert!(store.consumers("t").is_empty());
            assert_eq!(store.append("t", b"new").unwrap(), 120);
            assert!(
                store.consumers("t").is_empty(),
                "crash at write {nth}: stale consumer"
            );
        } else {
            whole += 1;
            assert_eq!(store.topics(), ["t"]);
            for i in 1..120 {
                assert_eq!(
                    store.read_at("t", i).unwrap(),
                    Some(payload(i)),
                    "crash at write {nth}"
                );
            }
            let names: Vec<String> = store.consumers("t").into_iter().map(|c| c.name).collect();
            assert_eq!(names, ["a", "b"], "crash at write {nth}");
        }
        drop(store);
        // A second reopen agrees with the first (and keeps the append made after a deletion).
        let again = open(&sim, small()).unwrap();
        assert_eq!(again.topics(), ["t"], "crash at write {nth}");
        let names: Vec<String> = again.consumers("t").into_iter().map(|c| c.name).collect();
        if was_deleted {
            assert!(names.is_empty(), "crash at write {nth}: {names:?}");
            assert_eq!(again.read_at("t", 120).unwrap(), Some(b"new".to_vec()));
            // Below the new incarnation's first entry: nothing, or NotFound (released).
            let below = again.read_at("t", 1);
            assert!(
                matches!(&below, Ok(None))
                    || below
                        .as_ref()
                        .is_err_and(|e| e.kind() == io::ErrorKind::NotFound),
                "crash at write {nth}: {below:?}"
            );
        } else {
            assert_eq!(names, ["a", "b"], "crash at write {nth}");
            assert_eq!(again.read_at("t", 119).unwrap(), Some(payload(119)));
        }
    }
    assert!(
        deleted > 0 && whole > 0,
        "both sides of the crash point: {deleted} deleted, {whole} whole"
    );
}

#[test]
fn a_waiting_read_wakes_on_an_append_and_times_out_without_one() {
    let sim = SimStorage::new(8);
    let store = Arc::new(open(&sim, small()).unwrap());
    let started = Instant::now();
    assert_eq!(
        store
            .read_next_timeout("t", "c", Duration::from_millis(50))
            .unwrap(),
        None
    );
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert!(
        store.topics().is_empty(),
        "waiting on a topic does not create it"
    );
    let writer = {
        let store = store.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(30));
            store.append("t", b"hello").unwrap();
        })
    };
    let got = store
        .read_next_timeout("t", "c", Duration::from_secs(10))
        .unwrap();
    assert_eq!(got, Some((0, b"hello".to_vec())));
    writer.join().unwrap();
    assert!(store.wait_for("t", 0, Duration::from_secs(1)).unwrap());
    assert!(!store.wait_for("t", 1, Duration::from_millis(20)).unwrap());
}

/// A read waiting for an entry wakes when a commit moves its consumer back, or a removal
/// brings it back at the oldest entry retained: entries are unread again, no append needed.
#[test]
fn a_waiting_read_wakes_when_its_cursor_is_moved_back_or_removed() {
    let sim = SimStorage::new(9);
    let store = Arc::new(open(&sim, small()).unwrap());
    for i in 0..10 {
        store.append("t", &payload(i)).unwrap();
    }
    // `d` holds the entries once `c` is removed.
    store.commit_as("t", "d", 0).unwrap();
    type Move = fn(&Store);
    let moves: [(Move, u64); 2] = [
        (|s| s.commit_as("t", "c", 5).unwrap(), 5),
        (|s| assert!(s.remove_consumer("t", "c").unwrap()), 0),
    ];
    for (move_back, expected) in moves {
        assert_eq!(drain_as(&store, "t", "c").last(), Some(&9));
        let waiter = {
            let store = store.clone();
            thread::spawn(move || {
                let started = Instant::now();
                let got = store.read_next_timeout("t", "c", Duration::from_secs(30));
                (got.unwrap().map(|e| e.0), started.elapsed())
            })
        };
        // Moved before the waiter waits, it reads at once: the test then passes either way.
        thread::sleep(Duration::from_millis(100));
        move_back(&store);
        let (got, waited) = waiter.join().unwrap();
        assert_eq!(got, Some(expected));
        assert!(waited < Duration::from_secs(10), "woken late: {waited:?}");
    }
}

#[test]
fn an_arrival_future_completes_on_append_and_fails_when_the_store_closes() {
    let sim = SimStorage::new(9);
    let store = Arc::new(open(&sim, small()).unwrap());
    let pending = store.arrival("t", 0).unwrap();
    let waiter = thread::spawn(move || pollster::block_on(pending));
    thread::sleep(Duration::from_millis(20));
    store.append("t", b"a").unwrap();
    assert_eq!(waiter.join().unwrap().unwrap(), 1);
    // Already there: completes at once.
    assert_eq!(
        pollster::block_on(store.arrival("t", 0).unwrap()).unwrap(),
        1
    );
    let orphan = store.arrival("t", 5).unwrap();
    let waiter = thread::spawn(move || pollster::block_on(orphan));
    thread::sleep(Duration::from_millis(20));
    drop(Arc::try_unwrap(store).unwrap());
    assert_eq!(
        waiter.join().unwrap().unwrap_err().kind(),
        io::ErrorKind::BrokenPipe
    );
}

/// An arrival future on a topic not yet written keeps its placeholder through the background
/// walk's sweep of unused placeholders: the first append wakes it.
#[test]
fn an_arrival_on_a_new_topic_outlives_the_placeholder_sweep() {
    let sim = SimStorage::new(19);
    let store = Arc::new(open(&sim, small()).unwrap());
    let pending = store.arrival("late", 0).unwrap();
    let (done, arrived) = std::sync::mpsc::channel();
    thread::spawn(move || done.send(pollster::block_on(pending)));
    thread::sleep(Duration::from_millis(50));
    store.maintain().unwrap();
    store.append("late", b"x").unwrap();
    let got = arrived.recv_timeout(Duration::from_secs(10));
    assert_eq!(got.expect("the arrival was never woken").unwrap(), 1);
}

/// An arrival future kept after its store is dropped keeps none of the store's files open:
/// on the mmap backend no segment stays mapped (a reopen must find only what is on disk, not
/// pages a failed write-back left in a mapping).
#[test]
fn an_arrival_kept_after_the_store_holds_none_of_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w");
    let mapped = || {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let needle = path.to_string_lossy().into_owned();
        maps.lines().filter(|l| l.contains(&needle)).count()
    };
    let mmap: Arc<dyn Storage> = Arc::new(walrus_io::MmapStorage::new());
    let store = Store::open(&path, mmap, StoreOptions::new()).unwrap();
    store.append("t", b"a").unwrap();
    assert!(mapped() > 0, "the segment is mapped while the store lives");
    let kept = [
        store.arrival("t", 5).unwrap(),
        store.arrival("new", 0).unwrap(),
    ];
    drop(store);
    assert_eq!(mapped(), 0, "a dropped store's segments stay mapped");
    for arrival in kept {
        let e = pollster::block_on(arrival).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
    }
}

#[test]
fn with_visible_when_durable_a_waiting_read_wakes_on_the_sync() {
    let sim = SimStorage::new(10);
    let store = Arc::new(open(&sim, small().with_visible_when_durable(true)).unwrap());
    store.append("t", b"x").unwrap();
    assert!(
        !store.wait_for("t", 0, Duration::from_millis(20)).unwrap(),
        "not durable yet"
    );
    let syncer = {
        let store = store.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            store.sync().unwrap();
        })
    };
    assert!(store.wait_for("t", 0, Duration::from_secs(10)).unwrap());
    syncer.join().unwrap();
}

#[test]
fn iterators_replay_from_an_offset_and_scan_borrows_payloads() {
    let sim = SimStorage::new(11);
    let store = open(&sim, small()).unwrap();
    for i in 0..700 {
        store.append("t", &payload(i)).unwrap();
    }
    let replay: Vec<(u64, Vec<u8>)> = store.iter("t", 100).map(Result::unwrap).collect();
    assert_eq!(replay.len(), 600);
    assert!(replay.iter().all(|(o, d)| *d == payload(*o)));
    assert_eq!(replay.first().map(|e| e.0), Some(100));
    let mut it = store.iter("t", 699);
    assert_eq!(it.next().unwrap().unwrap().0, 699);
    assert!(it.next().is_none());
    store.append("t", &payload(700)).unwrap();
    assert_eq!(
        it.next().unwrap().unwrap().0,
        700,
        "continues with what was appended"
    );
    let mut seen = Vec::new();
    let next = store
        .scan("t", 10, 20, |o, p| {
            assert_eq!(p, payload(o).as_slice());
            seen.push(o);
        })
        .unwrap();
    assert_eq!(seen, (10..30).collect::<Vec<_>>());
    assert_eq!(next, 30);
    assert_eq!(store.cursor("t"), Some(0), "no cursor moved");
    drain_as(&store, "t", "");
    let err = store.iter("t", 0).next().unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert!(err.to_string().contains("\"t\""), "{err}");
}

#[test]
fn consumers_and_deletion_on_the_real_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal");
    let storage: Arc<dyn Storage> = Arc::new(walrus_io::PwriteStorage::new());
    {
        let store = Store::open(&path, storage.clone(), small()).unwrap();
        for i in 0..50 {
            store.append("t", &payload(i)).unwrap();
            store.append("d", &payload(i)).unwrap();
        }
        drain_as(&store, "t", "x");
        store.delete_topic("d").unwrap();
    }
    let store = Store::open(&path, storage, small()).unwrap();
    assert_eq!(store.topics(), ["t"]);
    assert_eq!(store.cursor_as("t", "x"), Some(50));
}

#[test]
fn a_failed_sync_while_removing_keeps_the_consumer_usable_and_a_failed_deletion_keeps_the_topic() {
    let sim = SimStorage::new(13);
    let store = open(&sim, small()).unwrap();
    for i in 0..20 {
        store.append("t", &payload(i)).unwrap();
    }
    store.read_next_as("t", "c", true).unwrap();
    sim.inject(
        FaultRule::new(Fault::Eio)
            .op(OpKind::Sync)
            .path(format!("{DIR}/cursors.wcur")),
    );
    let err = store.remove_consumer("t", "c").unwrap_err();
    assert!(
        err.to_string().contains("\"c\"") && err.to_string().contains("\"t\""),
        "{err}"
    );
    assert_eq!(store.cursor_as("t", "c"), Some(1), "kept");
    assert_eq!(
        store.read_next_as("t", "c", false).unwrap().map(|e| e.0),
        Some(1),
        "and usable"
    );
    sim.clear_faults();
    // A new process: a failed sync stays sticky for the storage that saw it, and an open
    // syncs the cursor file it loaded, so an open in the same one is refused.
    drop(store);
    assert!(open(&sim, small()).is_err());
    sim.crash(CrashMode::KeepWritten);
    let store = open(&sim, small()).unwrap();
    sim.inject(
        FaultRule::new(Fault::Eio)
            .op(OpKind::Sync)
            .path(format!("{DIR}/cursors.wcur")),
    );
    assert!(store.delete_topic("t").is_err());
    assert_eq!(store.topics(), ["t"], "a failed deletion leaves the topic");
    assert_eq!(store.read_at("t", 5).unwrap(), Some(payload(5)));
}

#[test]
fn a_refused_commit_below_the_retained_entries_creates_no_consumer() {
    let sim = SimStorage::new(14);
    let store = open(&sim, small()).unwrap();
    for i in 0..300 {
        store.append("t", &payload(i)).unwrap();
    }
    drain_as(&store, "t", "only");
    let first = store.first_retained_offset("t").unwrap();
    assert!(first > 0);
    let err = store.commit_as("t", "new", 0).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let names: Vec<String> = store.consumers("t").into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["only"]);
}

/// A commit that makes a new consumer either makes it where it was asked to, or fails and
/// makes nothing: the consumer was made at the oldest entry first, then moved, and a failed
/// move left it there (holding back the space of every entry after it).
/// A commit racing the removal of its consumer: refused (the removal raised the floor past
/// it), it leaves no consumer behind; accepted, the consumer stands where it said.
#[test]
fn a_commit_racing_a_removal_is_refused_without_making_the_consumer() {
    let sim = SimStorage::new(17);
    let store = Arc::new(open(&sim, small()).unwrap());
    let mut refused = 0;
    for i in 0..2000 {
        let topic = format!("t{i}");
        for k in 0..5 {
            store.append(&topic, &payload(k)).unwrap();
        }
        store.commit_as(&topic, "c", 3).unwrap();
        store.commit_as(&topic, "d", 3).unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let remover = {
            let (store, topic, barrier) = (store.clone(), topic.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                store.remove_consumer(&topic, "c").unwrap()
            })
        };
        barrier.wait();
        let commit = store.commit_as(&topic, "c", 1);
        assert!(remover.join().unwrap());
        match commit {
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
                assert_eq!(store.cursor_as(&topic, "c"), None, "refused, yet made");
                refused += 1;
            }
            Ok(()) => assert!(
                matches!(store.cursor_as(&topic, "c"), None | Some(1)),
                "{:?}",
                store.cursor_as(&topic, "c")
            ),
        }
    }
    eprintln!("{refused} of 2000 commits refused by the removal's floor");
}

#[test]
fn a_commit_that_makes_a_consumer_makes_it_whole_or_not_at_all() {
    let sim = SimStorage::new(16);
    let store = open(&sim, small().with_sync_cursor_writes(true)).unwrap();
    for i in 0..10 {
        store.append("t", &payload(i)).unwrap();
    }
    // The second write to the cursor file fails: the move after a creation, if there is one.
    sim.inject(
        FaultRule::new(Fault::Eio)
            .op(OpKind::Write)
            .path("/wal/cursors.wcur")
            .nth(2),
    );
    match store.commit_as("t", "new", 2) {
        Ok(()) => assert_eq!(store.cursor_as("t", "new"), Some(2)),
        Err(e) => {
            let names: Vec<String> = store.consumers("t").into_iter().map(|c| c.name).collect();
            assert!(names.is_empty(), "{e}: made {names:?}");
        }
    }
}

#[test]
fn an_iterator_stops_at_entries_retention_released_under_it() {
    let sim = SimStorage::new(15);
    let options = small().with_topic_retention("t", Retention::default().with_max_bytes(64 << 10));
    let store = open(&sim, options).unwrap();
    for i in 0..30 {
        store.append("t", &payload(i)).unwrap();
    }
    let mut it = store.iter("t", 0);
    assert_eq!(it.next().unwrap().unwrap().0, 0);
    for i in 30..400 {
        store.append("t", &payload(i)).unwrap();
    }
    let first = store.first_retained_offset("t").unwrap();
    assert!(first > 30);
    // What it read ahead while it was retained is served; then it stops.
    for o in 1..30 {
        assert_eq!(it.next().unwrap().unwrap().0, o);
    }
    let err = it.next().unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    assert!(it.next().is_none());
    assert_eq!(store.iter("t", first).next().unwrap().unwrap().0, first);
}

#[test]
fn a_waiting_read_past_a_gap_recovery_left_waits_for_the_next_append() {
    let sim = SimStorage::new(16);
    let options = small().with_sync_cursor_writes(true);
    {
        let store = open(&sim, options.clone()).unwrap();
        store.commit_as("t", "slow", 0).unwrap_err();
        store.append("t", &payload(0)).unwrap();
        store.commit_as("t", "slow", 0).unwrap();
        for i in 1..10 {
            store.append("t", &payload(i)).unwrap();
        }
        store.sync().unwrap();
        for i in 10..20 {
            store.append("t", &payload(i)).unwrap();
        }
        // "fast" consumes entries the power cut will take; its cursor is synced.
        assert_eq!(drain_as(&store, "t", "fast").len(), 20);
    }
    sim.crash(CrashMode::DropUnsynced);
    let store = open(&sim, options).unwrap();
    assert_eq!(store.cursor_as("t", "fast"), Some(20));
    assert_eq!(drain_as(&store, "t", "slow"), (0..10).collect::<Vec<_>>());
    let started = Instant::now();
    assert_eq!(
        store
            .read_next_timeout("t", "slow", Duration::from_millis(40))
            .unwrap(),
        None
    );
    assert!(started.elapsed() >= Duration::from_millis(40));
    let next = store.append("t", b"after").unwrap();
    assert!(
        next >= 20,
        "offsets the fast consumer passed are never reused: {next}"
    );
    assert_eq!(
        store
            .read_next_timeout("t", "slow", Duration::from_secs(5))
            .unwrap(),
        Some((next, b"after".to_vec()))
    );
    // Waits on a deleted topic wait for its next incarnation.
    store.delete_topic("t").unwrap();
    assert!(!store.wait_for("t", 0, Duration::from_millis(20)).unwrap());
}

/// Every file of `dir` with its bytes.
fn snapshot(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_read_only_open_reads_a_directory_a_live_writer_holds_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal");
    let storage: Arc<dyn Storage> = Arc::new(walrus_io::PwriteStorage::new());
    let writer = Store::open(&path, storage.clone(), small()).unwrap();
    for i in 0..120 {
        writer.append("t", &payload(i)).unwrap();
    }
    writer.read_next_as("t", "c", true).unwrap();
    writer.sync().unwrap();
    // The writer holds the directory: a second writer is refused, a reader is not.
    assert!(Store::open(&path, storage.clone(), small()).is_err());
    let before = snapshot(&path);
    {
        let reader = Store::open_read_only(&path, storage.clone(), small()).unwrap();
        assert_eq!(reader.topics(), ["t"]);
        assert_eq!(reader.end_offset("t"), Some(120));
        assert_eq!(reader.cursor_as("t", "c"), Some(1));
        assert_eq!(reader.read_at("t", 77).unwrap(), Some(payload(77)));
        assert_eq!(reader.iter("t", 0).count(), 120);
        assert_eq!(
            reader.read_next_as("t", "c", false).unwrap().map(|e| e.0),
            Some(1)
        );
        let refused = [
            reader.append("t", b"x").unwrap_err().kind(),
            reader.append("new", b"x").unwrap_err().kind(),
            reader.read_next_as("t", "c", true).unwrap_err().kind(),
            reader.commit_as("t", "c", 0).unwrap_err().kind(),
            reader.remove_consumer("t", "c").unwrap_err().kind(),
            reader.delete_topic("t").unwrap_err().kind(),
        ];
        let unknown = [
            reader.remove_consumer("t", "nobody").unwrap_err().kind(),
            reader.remove_consumer("none", "c").unwrap_err().kind(),
            reader.delete_topic("none").unwrap_err().kind(),
            reader.commit_as("none", "c", 0).unwrap_err().kind(),
            reader
                .append("t", &vec![0; walrus_block::MAX_ENTRY_LEN + 1])
                .unwrap_err()
                .kind(),
            reader.persist_cursors().unwrap_err().kind(),
        ];
        assert!(
            refused
                .iter()
                .chain(&unknown)
                .all(|k| *k == io::ErrorKind::PermissionDenied),
            "{refused:?} {unknown:?}"
        );
        assert_eq!(reader.topics(), ["t"], "a refused append creates no topic");
        reader.sync().unwrap();
        reader.maintain().unwrap();
    }
    assert_eq!(snapshot(&path), before, "the read-only open wrote nothing");
    // The writer goes on as if nothing happened.
    writer.append("t", b"more").unwrap();
    drop(writer);
    assert!(
        Store::open_read_only(dir.path().join("missing"), storage, small())
            .unwrap_err()
            .kind()
            == io::ErrorKind::NotFound
    );
}

#[test]
fn a_read_only_open_of_a_crashed_directory_repairs_nothing() {
    let sim = SimStorage::new(17);
    {
        let store = open(&sim, small()).unwrap();
        for i in 0..50 {
            store.append("t", &payload(i)).unwrap();
        }
        store.sync().unwrap();
        for i in 50..60 {
            store.append("t", &payload(i)).unwrap();
        }
        sim.crash(CrashMode::TearLastWrite);
    }
    let files: Vec<_> = sim.files();
    let before: Vec<Vec<u8>> = files.iter().map(|p| sim.contents(p).unwrap()).collect();
    {
        let reader =
            Store::open_read_only(DIR, Arc::new(sim.clone()) as Arc<dyn Storage>, small()).unwrap();
        let end = reader.end_offset("t").unwrap();
        assert!((50..=60).contains(&end), "{end}");
        for o in 0..end {
            assert_eq!(reader.read_at("t", o).unwrap(), Some(payload(o)));
        }
    }
    assert_eq!(sim.files(), files);
    let after: Vec<Vec<u8>> = files.iter().map(|p| sim.contents(p).unwrap()).collect();
    assert!(after == before, "nothing repaired on disk");
    // A writable open then repairs as usual.
    assert!(open(&sim, small()).is_ok());
}

/// A read-only open syncs nothing: what it says is durable is the watermark on disk, not the
/// entries it found (after a process crash they may be in the page cache only).
#[test]
fn a_read_only_open_says_durable_only_what_the_disk_says() {
    let sim = SimStorage::new(19);
    {
        let store = open(&sim, small()).unwrap();
        for i in 0..10 {
            store.append("t", &payload(i)).unwrap();
        }
        store.sync().unwrap();
        for i in 10..15 {
            store.append("t", &payload(i)).unwrap();
        }
        sim.crash(CrashMode::KeepWritten);
        std::mem::forget(store);
    }
    let reader =
        Store::open_read_only(DIR, Arc::new(sim.clone()) as Arc<dyn Storage>, small()).unwrap();
    assert_eq!(reader.end_offset("t"), Some(15));
    let durable = reader.durable_offset("t").unwrap();
    assert!(durable <= 10, "{durable}");
    assert_eq!(reader.stats().topics[0].durable, durable);
    drop(reader);
    // A writable open syncs what it recovered: all of it is durable then.
    let store = open(&sim, small()).unwrap();
    assert_eq!(store.durable_offset("t"), Some(15));
}

#[test]
fn stats_count_appends_reads_syncs_and_segments() {
    let sim = SimStorage::new(18);
    let store = open(&sim, small()).unwrap();
    for i in 0..300 {
        store.append("t", &payload(i)).unwrap();
    }
    store.append_batch("b", &[b"x", b"yy"]).unwrap();
    store.sync().unwrap();
    store.sync().unwrap();
    drain_as(&store, "t", "c");
    assert_eq!(store.read_at("b", 1).unwrap(), Some(b"yy".to_vec()));
    let s = store.stats();
    assert_eq!(s.appends, 302);
    assert_eq!(
        s.append_bytes,
        (0..300).map(|i| payload(i).len() as u64).sum::<u64>() + 3
    );
    assert_eq!(s.batches, 1);
    assert_eq!(s.reads, 301);
    assert_eq!(s.syncs, 1, "the second sync had nothing to make durable");
    assert_eq!(s.entries_synced, 302, "each entry made durable once");
    assert_eq!(s.largest_sync_group, 302);
    assert!(s.sync_p50_micros >= 1 && s.sync_p99_micros >= s.sync_p50_micros);
    // The one sync's time lies below the upper bound of its latency bucket.
    assert!(s.sync_micros < s.sync_p99_micros, "{s:?}");
    assert!(s.segments_deleted > 0, "the consumed segments went");
    assert_eq!(s.segments_live as usize, segments(&sim));
    assert!(s.segment_bytes > 0);
    let names: Vec<&str> = s.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["b", "t"]);
    let t = &s.topics[1];
    assert_eq!((t.end, t.durable), (300, 300));
    assert_eq!(t.consumers.len(), 1);
    assert_eq!(t.consumers[0].lag, 0);
    // Reads count what was handed out: one entry taken from an iterator that read ahead.
    let before = store.stats().reads;
    assert_eq!(store.iter("b", 0).take(1).count(), 1);
    assert_eq!(store.stats().reads, before + 1);
}

#[test]
fn a_read_only_open_on_the_mmap_backend_changes_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal");
    let mmap: Arc<dyn Storage> = Arc::new(walrus_io::MmapStorage::new());
    {
        let store = Store::open(&path, mmap.clone(), small()).unwrap();
        for i in 0..40 {
            store.append("t", &payload(i)).unwrap();
        }
        store.sync().unwrap();
    }
    let before = snapshot(&path);
    let blocks = |path: &std::path::Path| -> Vec<u64> {
        use std::os::unix::fs::MetadataExt;
        snapshot(path)
            .iter()
            .map(|(p, _)| std::fs::metadata(p).unwrap().blocks())
            .collect()
    };
    let allocated = blocks(&path);
    {
        let reader = Store::open_read_only(&path, mmap, small()).unwrap();
        assert_eq!(reader.read_at("t", 39).unwrap(), Some(payload(39)));
    }
    assert_eq!(snapshot(&path), before);
    assert_eq!(blocks(&path), allocated, "no hole was allocated");
}

#[test]
fn concurrent_syncs_count_each_synced_entry_once() {
    let sim = SimStorage::new(19);
    sim.set_sync_latency(Duration::from_micros(200));
    let store = Arc::new(open(&sim, small()).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let syncers: Vec<_> = (0..2)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            thread::spawn(move || {
                // Bounded: stops when the appenders are done, or after 10 000 syncs.
                for _ in 0..10_000 {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    store.sync().unwrap();
                }
            })
        })
        .collect();
    let appenders: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|t| {
            let store = store.clone();
            thread::spawn(move || {
                for i in 0..300 {
                    store.append(t, &payload(i)).unwrap();
                }
            })
        })
        .collect();
    for a in appenders {
        a.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for s in syncers {
        s.join().unwrap();
    }
    store.sync().unwrap();
    let s = store.stats();
    assert_eq!(s.appends, 600);
    assert_eq!(s.entries_synced, 600, "{s:?}");
    assert!(s.syncs >= 1 && s.largest_sync_group <= 600);
}

/// A segment that a consumer emptied just before a kill -9 is deleted after the reopen only
/// once the cursor that consumed it is durable: the cursor loaded at the reopen may be in the
/// page cache only, and a power cut after the deletion would otherwise bring back an older
/// cursor, with entries it has not consumed in the deleted segment.
#[test]
fn a_segment_consumed_before_a_kill_is_deleted_only_once_its_cursor_is_durable() {
    let sim = SimStorage::new(61);
    // Deletions at run time wait for `maintain`, which nothing calls before the kill; the
    // reopen deletes the consumed segment itself.
    let options = small().with_background_maintenance(true);
    {
        let store = open(&sim, options.clone()).unwrap();
        for i in 0..200 {
            store.append("t", &payload(i)).unwrap();
        }
        store.sync().unwrap();
        assert_eq!(drain_as(&store, "t", "").len(), 200);
        // kill -9: the cursor is written, not synced (the simulator keeps its page cache).
        std::mem::forget(store);
    }
    let before = segments(&sim);
    {
        let cursors = std::path::Path::new("/wal/cursors.wcur");
        assert!(
            sim.unsynced_sectors(cursors).unwrap() > 0,
            "the cursor was synced"
        );
        let store = open(&sim, options.clone()).unwrap();
        assert!(segments(&sim) < before, "no consumed segment was deleted");
        assert_eq!(sim.unsynced_sectors(cursors).unwrap(), 0);
        sim.crash(CrashMode::DropUnsynced);
        std::mem::forget(store);
    }
    let store = open(&sim, options).unwrap();
    assert_eq!(store.read_next("t", true).unwrap(), None);
    assert_eq!(store.end_offset("t"), Some(200));
}

/// A consuming read whose cursor sync fails hands out nothing, and the next process finds the
/// cursor where it was: the record written before the failed sync, which a restarted process
/// would load from the page cache, is undone.
#[test]
fn a_read_whose_cursor_sync_failed_consumed_nothing_after_a_restart() {
    let sim = SimStorage::new(62);
    let options = small().with_sync_cursor_writes(true);
    {
        let store = open(&sim, options.clone()).unwrap();
        for i in 0..3 {
            store.append("t", &payload(i)).unwrap();
        }
        store.sync().unwrap();
        assert_eq!(store.read_next("t", true).unwrap().unwrap().0, 0);
        sim.inject(
            FaultRule::new(Fault::Eio)
                .op(OpKind::Sync)
                .path(format!("{DIR}/cursors.wcur")),
        );
        assert!(
            store.read_next("t", true).is_err(),
            "offset 1 not handed out"
        );
        // kill -9: what was written survives, the process's state does not.
        sim.crash(CrashMode::KeepWritten);
        std::mem::forget(store);
    }
    sim.clear_faults();
    let store = open(&sim, options).unwrap();
    assert_eq!(store.read_next("t", true).unwrap().unwrap().0, 1);
}

/// A failed append lists nothing: neither a topic it would have created nor one deleted
/// before it, now or after a reopen; and a deleted topic's consumers stay gone.
/// (The deleted topic's failed write poisons the store: its clean-up write fails too.)
#[test]
fn a_failed_first_append_lists_no_topic() {
    let sim = SimStorage::new(15);
    let store = open(&sim, small()).unwrap();
    // A new topic whose first append fails (a full disk: its block cannot be claimed; this
    // poisons nothing) is not listed, and leaves nothing behind.
    sim.inject(
        FaultRule::new(Fault::Enospc)
            .op(OpKind::Allocate)
            .times(1000),
    );
    let e = store.append("fresh", b"x").unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
    assert!(store.topics().is_empty(), "listed: {:?}", store.topics());
    assert_eq!(store.end_offset("fresh"), None);
    sim.clear_faults();
    assert!(store.poisoned().is_none());
    for i in 0..5 {
        store.append("d", &payload(i)).unwrap();
    }
    store.read_next_as("d", "c", true).unwrap();
    store.delete_topic("d").unwrap();
    store.sync().unwrap();
    // Every segment write fails; the cursor file's do not.
    let segments: Vec<_> = sim
        .files()
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "wseg"))
        .collect();
    assert!(!segments.is_empty());
    for s in &segments {
        sim.inject(
            FaultRule::new(Fault::Eio)
                .op(OpKind::Write)
                .path(s)
                .times(1000),
        );
    }
    assert!(store.append("d", b"x").is_err(), "the write was to fail");
    assert!(store.topics().is_empty(), "listed: {:?}", store.topics());
    assert_eq!(store.end_offset("d"), None);
    sim.clear_faults();
    drop(store);
    let store = open(&sim, small()).unwrap();
    assert!(
        store.topics().is_empty(),
        "listed after a reopen: {:?}",
        store.topics()
    );
    assert_eq!(store.append("d", b"again").unwrap(), 5);
    assert_eq!(store.topics(), ["d"]);
    assert_eq!(
        store.cursor_as("d", "c"),
        None,
        "a consumer of the deleted topic came back"
    );
}

/// A consuming read racing the topic's deletion finds nothing, as if it had run just after:
/// concurrency never fails a call.
#[test]
fn a_read_racing_deletion_finds_nothing_rather_than_failing() {
    let sim = SimStorage::new(17);
    let store = open(&sim, small()).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..2000 {
                let _ = store.delete_topic("t");
                thread::yield_now();
            }
            stop.store(true, std::sync::atomic::Ordering::Release);
        });
        let mut rounds = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Acquire) && rounds < 200_000 {
            store.append("t", b"x").unwrap();
            if let Err(e) = store.read_next("t", true) {
                panic!("round {rounds}: {e}");
            }
            rounds += 1;
        }
    });
}

/// Removing the consumer that held back releases raises the floor to what it had released;
/// the floor is durable before the record that says the consumer is gone, so that no power
/// cut keeps the removal without the floor (the next open would look for the released
/// entries below the floor it knew, find them missing below the watermark, and refuse).
#[test]
fn a_power_cut_while_removing_a_consumer_never_keeps_the_removal_without_its_floor() {
    for seed in 0..24 {
        let sim = SimStorage::new(600 + seed);
        {
            let store = open(&sim, small()).unwrap();
            for i in 0..300 {
                store.append("t", &payload(i)).unwrap();
            }
            store.sync().unwrap();
        }
        let store = open(&sim, small()).unwrap();
        drain_as(&store, "t", "");
        store.maintain().unwrap();
        assert!(store.first_retained_offset("t").unwrap() > 0, "seed {seed}");
        sim.inject(
            FaultRule::new(Fault::Crash(CrashMode::RandomSectors))
                .op(OpKind::Sync)
                .path(format!("{DIR}/cursors.wcur")),
        );
        let _ = store.remove_consumer("t", "");
        std::mem::forget(store);
        sim.clear_faults();
        let store = open(&sim, small()).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(store.end_offset("t"), Some(300), "seed {seed}");
    }
}

/// The records of removed consumers, and those of a deleted topic's consumers, are reclaimed
/// at the next open: a store that makes and removes consumers open after open keeps its
/// cursor file the size of what it holds (it grew by a slot pair per name ever used, and past
/// a million no longer opened). Live cursors stay, through power cuts between the opens, and
/// nothing reclaimed comes back.
#[test]
fn removed_consumers_leave_no_cursor_records_behind() {
    let sim = SimStorage::new(78);
    let cursor_file = std::path::Path::new(DIR).join("cursors.wcur");
    let mut lens = Vec::new();
    for cycle in 0..4u64 {
        let store = open(&sim, small()).unwrap();
        assert_eq!(
            store.cursor_as("t", "keep"),
            (cycle > 0).then_some(cycle),
            "cycle {cycle}: the live consumer's cursor"
        );
        let names: Vec<String> = store.consumers("t").into_iter().map(|c| c.name).collect();
        assert!(
            names.iter().all(|n| n == "keep"),
            "cycle {cycle}: removed consumers came back: {names:?}"
        );
        assert!(
            store.consumers("d").is_empty(),
            "cycle {cycle}: a deleted topic's consumer came back"
        );
        store.append("t", &payload(cycle)).unwrap();
        store.commit_as("t", "keep", cycle + 1).unwrap();
        for i in 0..20 {
            let name = format!("c{cycle}-{i}");
            store.commit_as("t", &name, 1).unwrap();
            assert!(store.remove_consumer("t", &name).unwrap());
        }
        if cycle == 0 {
            // A deleted topic's consumer: stale, its record reclaimed at the next open.
            store.append("d", b"x").unwrap();
            store.commit_as("d", "x", 1).unwrap();
            assert!(store.delete_topic("d").unwrap());
        }
        if cycle == 1 {
            // The deleted topic used again: its reclaimed consumer stays gone.
            store.append("d", b"again").unwrap();
        }
        store.sync().unwrap();
        drop(store);
        lens.push(sim.contents(&cursor_file).unwrap().len());
        sim.crash(if cycle % 2 == 0 {
            CrashMode::DropUnsynced
        } else {
            CrashMode::RandomSectors
        });
    }
    // The first open's twenty names took new pairs; every later open reuses them.
    assert!(
        lens.windows(2).all(|w| w[1] <= w[0]),
        "the cursor file grows open after open: {lens:?}"
    );
    // One write into a reused pair (its other slot held the removed record's last one, which
    // the open zeroed), then a power cut: the next open finds one record in it.
    let store = open(&sim, small()).unwrap();
    store.commit_as("t", "late", 1).unwrap();
    store.sync().unwrap();
    drop(store);
    sim.crash(CrashMode::DropUnsynced);
    let store = open(&sim, small()).unwrap();
    assert_eq!(store.cursor_as("t", "late"), Some(1));
    assert_eq!(store.cursor_as("t", "keep"), Some(4));
}

/// A removed consumer stays removed whatever a crash does to the open that reclaims its
/// record: the slot of its older generation (which says it is live) is zeroed and synced
/// before the slot saying it was removed, so a torn or lost zeroing never leaves the older one
/// alone.
#[test]
fn a_crash_while_its_record_is_reclaimed_never_brings_a_removed_consumer_back() {
    let cursors = format!("{DIR}/cursors.wcur");
    let segment = format!("{DIR}/00000000000000000000.wseg");
    // Where the open stops: at the segment's sync (after the zeroing, before the cursor
    // file's sync), or at the first or second sync of the cursor file.
    let stops = [
        FaultRule::new(Fault::Eio).op(OpKind::Sync).path(segment),
        FaultRule::new(Fault::Eio)
            .op(OpKind::Sync)
            .path(cursors.clone()),
        FaultRule::new(Fault::Eio)
            .op(OpKind::Sync)
            .path(cursors)
            .nth(1),
    ];
    for (stop, rule) in stops.into_iter().enumerate() {
        for mode in [
            CrashMode::TearLastWrite,
            CrashMode::DropUnsynced,
            CrashMode::RandomSectors,
        ] {
            let sim = SimStorage::new(300 + stop as u64);
            {
                let store = open(&sim, small()).unwrap();
                store.append("t", b"x").unwrap();
                store.commit_as("t", "c", 0).unwrap();
                assert!(store.remove_consumer("t", "c").unwrap());
                store.sync().unwrap();
            }
            sim.inject(rule.clone());
            assert!(
                open(&sim, small()).is_err(),
                "stop {stop}: the open went through"
            );
            sim.clear_faults();
            sim.crash(mode);
            let store = open(&sim, small()).unwrap();
            assert!(
                store.consumers("t").iter().all(|c| c.name != "c"),
                "stop {stop}, {mode:?}: the removed consumer came back"
            );
        }
    }
}

/// A pair reclaimed by one open and given to no record is given out by a later one: the
/// cursor file does not grow while opens that create nothing come between.
#[test]
fn a_pair_reclaimed_and_left_unused_is_reused_later() {
    let sim = SimStorage::new(81);
    let cursor_file = std::path::Path::new(DIR).join("cursors.wcur");
    {
        let store = open(&sim, small()).unwrap();
        store.append("t", b"x").unwrap();
        store.commit_as("t", "a", 0).unwrap();
        store.commit_as("t", "b", 0).unwrap();
        assert!(store.remove_consumer("t", "a").unwrap());
    }
    let len = sim.contents(&cursor_file).unwrap().len();
    // Reclaims `a`'s pair and creates nothing.
    drop(open(&sim, small()).unwrap());
    {
        let store = open(&sim, small()).unwrap();
        store.commit_as("t", "c", 1).unwrap();
    }
    assert_eq!(sim.contents(&cursor_file).unwrap().len(), len);
    let store = open(&sim, small()).unwrap();
    assert_eq!(store.cursor_as("t", "b"), Some(0));
    assert_eq!(store.cursor_as("t", "c"), Some(1));
    assert_eq!(store.cursor_as("t", "a"), None);
}

#[test]
fn a_deleted_topic_pins_no_segment_after_reopen() {
    let sim = SimStorage::new(71);
    let options = || small().with_lanes(1).with_prepare_ahead(false);
    let files = |sim: &SimStorage| -> Vec<std::path::PathBuf> {
        let mut f: Vec<_> = sim
            .files()
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "wseg"))
            .collect();
        f.sort();
        f
    };
    {
        let store = open(&sim, options()).unwrap();
        for i in 0..5 {
            store.append("gone", &payload(i)).unwrap();
            store.append("kept", &payload(i)).unwrap();
        }
        assert!(store.delete_topic("gone").unwrap());
        store.sync().unwrap();
    }
    let first = files(&sim);
    assert_eq!(first.len(), 1, "both topics' blocks share one segment");
    let store = open(&sim, options()).unwrap();
    assert_eq!(store.topics(), ["kept"]);
    for i in 5..400 {
        store.append("kept", &payload(i)).unwrap();
    }
    assert_eq!(drain_as(&store, "kept", "c").len(), 400);
    store.maintain().unwrap();
    assert!(
        !files(&sim).contains(&first[0]),
        "every block of {:?} is consumed or deleted: {:?}",
        first[0],
        files(&sim)
    );
    // The name continues past the deleted topic's offsets.
    assert_eq!(store.append("gone", b"again").unwrap(), 5);
    assert_eq!(store.read_at("gone", 5).unwrap(), Some(b"again".to_vec()));
}

/// A synced floor write whose sync fails must not take back an earlier floor: its undo used to
/// zero its slot, leaving the pair's other slot to win, but that slot held an unsynced write
/// (a retention floor) the failed sync lost, and a record older than the last synced one came
/// back (here: none at all, the floor 0, released entries handed out again).
#[test]
fn a_failed_floor_sync_keeps_the_floors_written_before() {
    // The appends vary, and so does how many floors retention writes after the synced one
    // (each goes to the other slot of the pair).
    for seed in 0..16 {
        let sim = SimStorage::new(300 + seed);
        // Segments of 1 MiB: no segment is wholly released (a deletion syncs the cursor file).
        let options = small()
            .with_segment_len(1 << 20)
            .with_durable_cursors(true)
            .with_background_maintenance(false)
            .with_topic_retention("t", Retention::default().with_max_bytes(24 << 10));
        let synced;
        {
            let store = open(&sim, options.clone()).unwrap();
            for i in 0..10 {
                store.append("t", &payload(i)).unwrap();
            }
            store.sync().unwrap();
            // A synced floor (generation 1), then retention raises it unsynced (generation 2).
            assert!(store.release_before("t", 3).unwrap());
            for i in 10..150 + seed * 7 {
                store.append("t", &payload(i)).unwrap();
            }
            synced = store.first_retained_offset("t").unwrap();
            assert!(
                synced > 3,
                "seed {seed}: retention raised the floor ({synced})"
            );
            sim.inject(
                FaultRule::new(Fault::Eio)
                    .op(OpKind::Sync)
                    .path(format!("{DIR}/cursors.wcur")),
            );
            assert!(store.release_before("t", synced + 1).is_err());
            sim.crash(CrashMode::KeepWritten);
            std::mem::forget(store);
        }
        sim.clear_faults();
        let store = open(&sim, options).unwrap();
        let floor = store.first_retained_offset("t").unwrap();
        assert!(
            floor >= 3,
            "seed {seed}: the synced floor 3 was taken back: {floor}"
        );
        let e = store.read_at("t", 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "seed {seed}: {e}");
    }
}

/// A consumer whose creation's sync failed does not exist, now or after a restart (its record
/// stays in the page cache, undone).
#[test]
fn a_consumer_whose_creation_failed_to_sync_is_absent_after_a_restart() {
    let sim = SimStorage::new(64);
    let options = small().with_durable_cursors(true);
    {
        let store = open(&sim, options.clone()).unwrap();
        for i in 0..5 {
            store.append("t", &payload(i)).unwrap();
        }
        store.sync().unwrap();
        sim.inject(
            FaultRule::new(Fault::Eio)
                .op(OpKind::Sync)
                .path(format!("{DIR}/cursors.wcur")),
        );
        assert!(store.commit_as("t", "new", 2).is_err());
        assert!(store.consumers("t").is_empty());
        sim.crash(CrashMode::KeepWritten);
        std::mem::forget(store);
    }
    sim.clear_faults();
    let store = open(&sim, options).unwrap();
    assert!(
        store.consumers("t").is_empty(),
        "{:?}",
        store.consumers("t")
    );
    assert_eq!(store.cursor_as("t", "new"), None);
}

/// A commit that creates its consumer at an offset raises the release bound only once the
/// consumer's record is written: blocks released while it was being written (an append
/// sealing a block) were gone for good when the write then failed, with no consumer or floor
/// covering them (read as never written; the next open refused: missing below the watermark).
#[test]
fn a_commit_creating_its_consumer_releases_nothing_before_its_record_is_written() {
    let sim = SimStorage::new(65);
    // Armed, the next write to the cursor file runs the hook, then fails.
    type Armed = std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>;
    let armed: Arc<Armed> = Arc::default();
    let hook = Arc::clone(&armed);
    let storage: Arc<dyn Storage> = Arc::new(Hooked::new(sim.clone(), move |op: Op<'_>| {
        if let Op::Write(path, _) = op
            && path.ends_with("cursors.wcur")
        {
            let armed = hook.lock().unwrap().take();
            if let Some(run) = armed {
                run();
                return Err(io::Error::other("injected: the hooked write fails"));
            }
        }
        Ok(())
    }));
    let options = small()
        .with_lanes(1)
        .with_background_maintenance(false)
        .with_prepare_ahead(false);
    let open_hooked = || Store::open(DIR, Arc::clone(&storage), options.clone());
    {
        let store = Arc::new(open_hooked().unwrap());
        for i in 0..200 {
            store.append("t", &payload(i)).unwrap();
        }
        store.sync().unwrap();
        let before = sim.files();
        // While the consumer's record is written: another thread's appends seal a block.
        let appender = Arc::downgrade(&store);
        *armed.lock().unwrap() = Some(Box::new(move || {
            let store = appender.upgrade().unwrap();
            std::thread::spawn(move || {
                for i in 200..230 {
                    store.append("t", &payload(i)).unwrap();
                }
            })
            .join()
            .unwrap();
        }));
        assert!(store.commit_as("t", "c", 150).is_err());
        assert!(store.consumers("t").is_empty());
        let after = sim.files();
        assert!(
            before.iter().all(|f| after.contains(f)),
            "nothing was released: {before:?} then {after:?}"
        );
        assert_eq!(store.read_at("t", 0).unwrap(), Some(payload(0)));
        store.sync().unwrap();
    }
    let store = open_hooked().unwrap();
    assert_eq!(store.read_at("t", 0).unwrap(), Some(payload(0)));
    assert_eq!(store.read_at("t", 229).unwrap(), Some(payload(229)));
}

/// With durable cursors written unsynced between a consumer's synced persists (`Milliseconds`
/// with `AtLeastOnce`): once a sync of the cursor file covers them, they count as persisted,
/// releasing what they consumed. They never did: a caught-up consumer kept up to
/// `persist_every - 1` entries' blocks, and their segments, for as long as it read nothing.
#[test]
fn cursors_persisted_in_the_background_release_what_they_consumed() {
    let sim = SimStorage::new(66);
    let options = small()
        .with_lanes(1)
        .with_durable_cursors(true)
        .with_persist_every(1_000_000);
    let store = open(&sim, options.clone()).unwrap();
    for i in 0..300 {
        store.append("t", &payload(i)).unwrap();
    }
    store.sync().unwrap();
    let before = segments(&sim);
    assert_eq!(drain_as(&store, "t", "c").len(), 300);
    assert_eq!(store.first_retained_offset("t"), Some(0));
    store.persist_cursors().unwrap();
    let info = store.consumers("t")[0].clone();
    assert_eq!(info.persisted, 300);
    assert!(
        store.first_retained_offset("t").unwrap() > 200,
        "{:?}",
        store.first_retained_offset("t")
    );
    store.maintain().unwrap();
    assert!(segments(&sim) < before, "{before} segments kept");
    // Persisted means durable: a power cut hands out nothing consumed again.
    sim.crash(CrashMode::DropUnsynced);
    std::mem::forget(store);
    let store = open(&sim, options).unwrap();
    assert_eq!(store.cursor_as("t", "c"), Some(300));
}
