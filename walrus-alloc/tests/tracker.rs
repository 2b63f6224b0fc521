//! Tracker behaviour: idempotency, the deletion rule, errors, recovery.
#![cfg(not(loom))]

use std::io;
use std::sync::Arc;

use walrus_alloc::{BlockAlloc, Deletion, FileStats, FileTracker, RestoredBlock};

fn block(segment: u64, start: u64) -> BlockAlloc {
    BlockAlloc {
        segment,
        start,
        len: 4096,
    }
}

#[test]
fn repeated_checkpoints_count_once() {
    let t = FileTracker::new();
    for start in [0, 4096] {
        t.track(block(1, start)).unwrap();
    }
    assert_eq!(t.mark_fully_allocated(1, 2).unwrap(), Deletion::NotYet);
    for _ in 0..5 {
        assert_eq!(t.seal(1, 0).unwrap(), Deletion::NotYet);
        assert_eq!(t.checkpoint(1, 0).unwrap(), Deletion::NotYet);
    }
    assert_eq!(
        t.stats(1).unwrap(),
        FileStats {
            handed_out: 2,
            locked: 1,
            checkpointed: 1,
            fully_allocated: true,
            deleted: false,
        }
    );
    assert_eq!(t.seal(1, 4096).unwrap(), Deletion::NotYet);
    assert_eq!(t.checkpoint(1, 4096).unwrap(), Deletion::Now { segment: 1 });
    // Reported exactly once; late repeats are harmless.
    assert_eq!(t.checkpoint(1, 4096).unwrap(), Deletion::NotYet);
    assert_eq!(t.seal(1, 0).unwrap(), Deletion::NotYet);
    assert_eq!(t.mark_fully_allocated(1, 2).unwrap(), Deletion::NotYet);
    assert!(t.stats(1).unwrap().deleted);
}

#[test]
fn only_files_reported_deletable_are_forgotten() {
    let t = FileTracker::new();
    t.track(block(1, 0)).unwrap();
    t.track(block(2, 0)).unwrap();
    assert_eq!(t.tracked(), 2);
    assert_eq!(t.mark_fully_allocated(1, 1).unwrap(), Deletion::NotYet);
    assert!(!t.forget(1), "a live file is kept");
    assert!(!t.forget(9), "an unknown file is no tombstone");
    assert_eq!(t.seal(1, 0).unwrap(), Deletion::NotYet);
    assert_eq!(t.checkpoint(1, 0).unwrap(), Deletion::Now { segment: 1 });
    assert!(t.forget(1));
    assert!(!t.forget(1), "forgotten once");
    assert_eq!(t.tracked(), 1, "file 2 is still tracked");
    assert_eq!(t.stats(1), None);
    let late = t.seal(1, 0).unwrap_err();
    assert_eq!(late.kind(), io::ErrorKind::NotFound);
    assert_eq!(t.stats(2).unwrap().handed_out, 1);
}

#[test]
fn nothing_is_deleted_before_it_is_fully_allocated() {
    let t = FileTracker::new();
    t.track(block(3, 0)).unwrap();
    assert_eq!(t.seal(3, 0).unwrap(), Deletion::NotYet);
    assert_eq!(t.checkpoint(3, 0).unwrap(), Deletion::NotYet);
    assert_eq!(
        t.mark_fully_allocated(3, 1).unwrap(),
        Deletion::Now { segment: 3 }
    );
}

#[test]
fn a_block_tracked_after_the_close_holds_the_file() {
    let t = FileTracker::new();
    t.track(block(4, 0)).unwrap();
    let _ = t.seal(4, 0).unwrap();
    let _ = t.checkpoint(4, 0).unwrap();
    // The allocator handed out two blocks; the second is recorded late.
    assert_eq!(t.mark_fully_allocated(4, 2).unwrap(), Deletion::NotYet);
    t.track(block(4, 4096)).unwrap();
    assert_eq!(t.checkpoint(4, 4096).unwrap(), Deletion::NotYet);
    assert_eq!(t.seal(4, 4096).unwrap(), Deletion::Now { segment: 4 });
    let e = t.track(block(4, 8192)).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn errors_name_the_segment() {
    let t = FileTracker::new();
    let e = t.seal(9, 0).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert!(e.to_string().contains("segment 9"), "{e}");
    t.track(block(9, 4096)).unwrap();
    let e = t.checkpoint(9, 0).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert!(e.to_string().contains("segment 9"), "{e}");
    for overlapping in [4096, 2048, 6000] {
        let e = t
            .track(BlockAlloc {
                segment: 9,
                start: overlapping,
                len: 4096,
            })
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{overlapping}");
    }
    t.track(block(9, 8192)).unwrap();
    let e = t
        .track(BlockAlloc {
            segment: 9,
            start: 0,
            len: 0,
        })
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    let e = t.mark_fully_allocated(9, 1).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(t.mark_fully_allocated(9, 3).unwrap(), Deletion::NotYet);
    let e = t.mark_fully_allocated(9, 4).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn restore_rebuilds_state() {
    let t = FileTracker::new();
    let blocks = [
        RestoredBlock {
            start: 4096,
            len: 8192,
            sealed: true,
            checkpointed: true,
        },
        RestoredBlock {
            start: 12288,
            len: 4096,
            sealed: false,
            checkpointed: false,
        },
    ];
    assert_eq!(t.restore_file(2, &blocks, true).unwrap(), Deletion::NotYet);
    assert_eq!(
        t.stats(2).unwrap(),
        FileStats {
            handed_out: 2,
            locked: 1,
            checkpointed: 1,
            fully_allocated: true,
            deleted: false,
        }
    );
    let e = t.restore_file(2, &blocks, true).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(t.seal(2, 12288).unwrap(), Deletion::NotYet);
    assert_eq!(
        t.checkpoint(2, 12288).unwrap(),
        Deletion::Now { segment: 2 }
    );
}

#[test]
fn restore_of_a_consumed_file_reports_it() {
    let t = FileTracker::new();
    let done = RestoredBlock {
        start: 4096,
        len: 4096,
        sealed: true,
        checkpointed: true,
    };
    assert_eq!(
        t.restore_file(6, &[done], true).unwrap(),
        Deletion::Now { segment: 6 }
    );
    // Not fully allocated: kept.
    assert_eq!(t.restore_file(7, &[done], false).unwrap(), Deletion::NotYet);
    // An empty, not fully allocated file is kept too.
    assert_eq!(t.restore_file(8, &[], false).unwrap(), Deletion::NotYet);
}

#[test]
fn restore_rejects_overlaps() {
    let t = FileTracker::new();
    let a = RestoredBlock {
        start: 4096,
        len: 8192,
        sealed: true,
        checkpointed: false,
    };
    let b = RestoredBlock { start: 8192, ..a };
    let e = t.restore_file(1, &[a, b], true).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("segment 1"), "{e}");
    let e = t.restore_file(1, &[a, a], true).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    // Nothing was recorded by the failed calls.
    assert_eq!(t.stats(1), None);
}

#[test]
fn concurrent_sealing_and_checkpointing_reports_once() {
    for round in 0..50u64 {
        let t = Arc::new(FileTracker::new());
        let n = 64u64;
        for i in 0..n {
            t.track(block(round, i * 4096)).unwrap();
        }
        let spawn = |checkpoint: bool, rev: bool| {
            let t = Arc::clone(&t);
            std::thread::spawn(move || {
                let mut order: Vec<u64> = (0..n).collect();
                if rev {
                    order.reverse();
                }
                let mut reports = 0;
                for _ in 0..2 {
                    for &i in &order {
                        let d = if checkpoint {
                            t.checkpoint(round, i * 4096).unwrap()
                        } else {
                            t.seal(round, i * 4096).unwrap()
                        };
                        reports += u32::from(d.is_now());
                    }
                }
                reports
            })
        };
        let handles = [spawn(false, false), spawn(true, false), spawn(true, true)];
        let closer = t.mark_fully_allocated(round, n).unwrap();
        let total: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum::<u32>()
            + u32::from(closer.is_now());
        assert_eq!(total, 1, "round {round}");
    }
}
