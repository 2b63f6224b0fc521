//! Allocator behaviour: geometry, lazy creation, error paths, independence, resume.
#![cfg(not(loom))]

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use walrus_alloc::{
    AllocConfig, BlockAlloc, BlockAllocator, Deletion, FileTracker, RestoredBlock, Resume,
    SegmentPreparer, SegmentTail,
};

const KIB: u64 = 1024;

/// Records every prepared segment and can be told to fail or panic.
#[derive(Default)]
struct Recorder {
    prepared: Mutex<Vec<(u64, u64)>>,
    /// Fail this many upcoming calls.
    fail: AtomicU32,
    /// Panic in this many upcoming calls.
    panic: AtomicU32,
}

impl Recorder {
    fn ids(&self) -> Vec<u64> {
        self.prepared.lock().unwrap().iter().map(|p| p.0).collect()
    }
    fn capacities(&self) -> BTreeMap<u64, u64> {
        self.prepared.lock().unwrap().iter().copied().collect()
    }
}

fn take_one(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl SegmentPreparer for Recorder {
    fn prepare(&self, segment: u64, segment_len: u64) -> io::Result<()> {
        if take_one(&self.panic) {
            panic!("preparer panicked on purpose");
        }
        if take_one(&self.fail) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
        }
        self.prepared.lock().unwrap().push((segment, segment_len));
        Ok(())
    }
}

/// 64 KiB segments, data from 4 KiB, 16 KiB blocks: three default blocks per segment.
fn small() -> AllocConfig {
    AllocConfig::new()
        .with_segment_len(64 * KIB)
        .with_data_offset(4 * KIB)
        .with_min_block_len(16 * KIB)
}

fn allocator(config: AllocConfig) -> (BlockAllocator, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    (BlockAllocator::new(config, Arc::clone(&rec)).unwrap(), rec)
}

fn block(segment: u64, start: u64, len: u64) -> BlockAlloc {
    BlockAlloc {
        segment,
        start,
        len,
    }
}

#[test]
fn nothing_is_prepared_before_the_first_block() {
    let (alloc, rec) = allocator(small());
    assert!(rec.ids().is_empty());
    assert_eq!(alloc.position().current, None);
    let a = alloc.allocate(1).unwrap();
    assert_eq!(a.block, block(0, 4 * KIB, 16 * KIB));
    // Segment 0 on demand, segment 1 ahead of need.
    assert_eq!(rec.ids(), vec![0, 1]);
    assert_eq!(alloc.position().spare, Some(1));
}

#[test]
fn without_prepare_ahead_only_needed_segments_are_created() {
    let (alloc, rec) = allocator(small().with_prepare_ahead(false));
    let _a = alloc.allocate(0).unwrap();
    assert_eq!(rec.ids(), vec![0]);
    assert!(alloc.prepare_spare().unwrap());
    assert!(!alloc.prepare_spare().unwrap(), "a spare is already ready");
    assert_eq!(rec.ids(), vec![0, 1]);
}

#[test]
fn blocks_fill_segments_and_waste_the_tail() {
    let (alloc, rec) = allocator(small());
    let got: Vec<_> = [0, 0, 20 * KIB, 0, 0]
        .iter()
        .map(|&len| alloc.allocate(len).unwrap().block)
        .collect();
    assert_eq!(
        got,
        vec![
            block(0, 4 * KIB, 16 * KIB),
            block(0, 20 * KIB, 16 * KIB),
            block(0, 36 * KIB, 20 * KIB),
            // The 8 KiB left in segment 0 are wasted.
            block(1, 4 * KIB, 16 * KIB),
            block(1, 20 * KIB, 16 * KIB),
        ]
    );
    assert_eq!(rec.ids(), vec![0, 1, 2]);
    let s0 = alloc.tracker().stats(0).unwrap();
    assert!(s0.fully_allocated);
    assert_eq!((s0.handed_out, s0.locked), (3, 3));
    assert!(!alloc.tracker().stats(1).unwrap().fully_allocated);
}

#[test]
fn requests_round_up_and_vary_the_stride() {
    let (alloc, _) = allocator(small());
    let a = alloc.allocate(16 * KIB + 1).unwrap().block;
    assert_eq!(a.len, 20 * KIB);
    let b = alloc.allocate(0).unwrap().block;
    assert_eq!(b.start, a.end());
    assert_eq!(b.len, 16 * KIB);
}

#[test]
fn an_oversized_block_gets_a_dedicated_segment() {
    let (alloc, rec) = allocator(small().with_prepare_ahead(false));
    let first = alloc.allocate(0).unwrap().block;
    let big = alloc.allocate(100 * KIB).unwrap().block;
    assert_eq!(big, block(1, 4 * KIB, 100 * KIB));
    assert_eq!(rec.capacities()[&1], 104 * KIB);
    // The dedicated segment is closed with its one block; the current one is untouched.
    let s1 = alloc.tracker().stats(1).unwrap();
    assert!(s1.fully_allocated);
    assert_eq!(s1.handed_out, 1);
    let next = alloc.allocate(0).unwrap().block;
    assert_eq!(next, block(0, first.end(), 16 * KIB));
    // It is deleted like any other file.
    let t = alloc.tracker();
    assert_eq!(t.checkpoint(1, big.start).unwrap(), Deletion::NotYet);
    assert_eq!(t.seal(1, big.start).unwrap(), Deletion::Now { segment: 1 });
}

#[test]
fn a_request_that_overflows_is_invalid_input() {
    let (alloc, rec) = allocator(small());
    let e = alloc.allocate(u64::MAX - 100).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(rec.ids().is_empty());
    let _ok = alloc.allocate(0).unwrap();
}

#[test]
fn closing_a_consumed_segment_reports_it_from_allocate() {
    let (alloc, _) = allocator(small());
    let blocks: Vec<_> = (0..3).map(|_| alloc.allocate(0).unwrap()).collect();
    let t = alloc.tracker();
    for a in &blocks {
        assert!(a.deletable.is_empty());
        assert_eq!(t.seal(0, a.block.start).unwrap(), Deletion::NotYet);
        assert_eq!(t.checkpoint(0, a.block.start).unwrap(), Deletion::NotYet);
    }
    // Segment 0 is full only now, and this call makes the rule true.
    let next = alloc.allocate(0).unwrap();
    assert_eq!(next.block.segment, 1);
    assert_eq!(next.deletable, vec![0]);
    assert!(t.stats(0).unwrap().deleted);
}

#[test]
fn preparer_error_is_returned_and_the_allocator_recovers() {
    let (alloc, rec) = allocator(small());
    rec.fail.store(1, Ordering::SeqCst);
    let e = alloc.allocate(0).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    let msg = e.to_string();
    assert!(msg.contains("segment 0"), "{msg}");
    assert!(msg.contains("disk full"), "{msg}");
    let source = e.get_ref().and_then(|inner| inner.source()).unwrap();
    assert_eq!(source.to_string(), "disk full");
    // Lock released, id 0 offered again, nothing half-installed.
    assert_eq!(alloc.position().next_segment, 0);
    let a = alloc.allocate(0).unwrap();
    assert_eq!(a.block, block(0, 4 * KIB, 16 * KIB));
    assert_eq!(rec.ids(), vec![0, 1]);
}

#[test]
fn preparer_error_after_closing_a_segment_loses_no_close() {
    let (alloc, rec) = allocator(small().with_prepare_ahead(false));
    let blocks: Vec<_> = (0..3).map(|_| alloc.allocate(0).unwrap().block).collect();
    let t = alloc.tracker();
    for b in &blocks {
        let _ = t.seal(b.segment, b.start).unwrap();
        let _ = t.checkpoint(b.segment, b.start).unwrap();
    }
    rec.fail.store(1, Ordering::SeqCst);
    let e = alloc.allocate(0).unwrap_err();
    assert!(e.to_string().contains("segment 1"), "{e}");
    // Segment 0 was closed by the failed call; the report comes with the next block.
    let a = alloc.allocate(0).unwrap();
    assert_eq!(a.block.segment, 1);
    assert_eq!(a.deletable, vec![0]);
}

#[test]
fn preparer_error_for_an_oversized_block_keeps_the_current_segment() {
    let (alloc, rec) = allocator(small().with_prepare_ahead(false));
    let a = alloc.allocate(0).unwrap().block;
    rec.fail.store(1, Ordering::SeqCst);
    let e = alloc.allocate(200 * KIB).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    assert!(e.to_string().contains("segment 1"), "{e}");
    assert_eq!(alloc.allocate(0).unwrap().block.start, a.end());
    assert_eq!(alloc.allocate(200 * KIB).unwrap().block.segment, 1);
}

#[test]
fn a_failed_spare_does_not_fail_the_allocation() {
    let (alloc, rec) = allocator(small());
    let _a = alloc.allocate(0).unwrap();
    let _b = alloc.allocate(0).unwrap();
    let _c = alloc.allocate(0).unwrap();
    // The next call takes spare 1 and fails to prepare spare 2: its block is still good.
    rec.fail.store(1, Ordering::SeqCst);
    let d = alloc.allocate(0).unwrap();
    assert_eq!(d.block.segment, 1);
    assert_eq!(alloc.position().spare, None);
    assert_eq!(alloc.position().next_segment, 2);
    // A later call prepares it again.
    let _e = alloc.allocate(0).unwrap();
    assert_eq!(alloc.position().spare, Some(2));
    assert_eq!(rec.ids(), vec![0, 1, 2]);
}

#[test]
fn a_panicking_preparer_leaves_the_allocator_usable() {
    let (alloc, rec) = allocator(small());
    rec.panic.store(1, Ordering::SeqCst);
    let r = catch_unwind(AssertUnwindSafe(|| alloc.allocate(0)));
    assert!(r.is_err());
    assert_eq!(alloc.position().next_segment, 0);
    assert_eq!(alloc.allocate(0).unwrap().block.segment, 0);
}

/// The spare prepared ahead after a block was handed out panics: the caller still gets its
/// block, and the segments the call found deletable, rather than losing both to the unwind
/// (the block would stay locked with no writer, and the segments never be reported again).
#[test]
fn a_spare_that_panics_while_prepared_ahead_loses_no_block_nor_deletion() {
    let (alloc, rec) = allocator(small().with_prepare_ahead(true));
    let tracker = Arc::clone(alloc.tracker());
    for _ in 0..3 {
        let a = alloc.allocate(0).unwrap();
        assert_eq!(a.block.segment, 0);
        assert!(!tracker.seal(0, a.block.start).unwrap().is_now());
        assert!(!tracker.checkpoint(0, a.block.start).unwrap().is_now());
    }
    assert_eq!(alloc.position().spare, Some(1), "prepared ahead");
    rec.panic.store(1, Ordering::SeqCst);
    let a = catch_unwind(AssertUnwindSafe(|| alloc.allocate(0)))
        .expect("the spare's panic reached the caller")
        .unwrap();
    assert_eq!(a.block.segment, 1);
    assert_eq!(a.deletable, vec![0]);
    assert_eq!(alloc.position().spare, None, "the spare failed");
    // The next allocation that needs a spare prepares it.
    assert!(alloc.prepare_spare().unwrap());
}

#[test]
fn concurrent_errors_and_successes_settle() {
    let (alloc, rec) = allocator(small());
    rec.fail.store(3, Ordering::SeqCst);
    let alloc = Arc::new(alloc);
    let results: Vec<_> = (0..4)
        .map(|_| {
            let alloc = Arc::clone(&alloc);
            std::thread::spawn(move || {
                (0..50)
                    .map(|_| alloc.allocate(0).map(|a| a.block))
                    .collect::<Vec<_>>()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let errors = results.iter().filter(|r| r.is_err()).count();
    assert!(errors <= 3, "{errors}");
    let blocks: Vec<_> = results.into_iter().filter_map(Result::ok).collect();
    assert_no_overlap(&blocks, &rec.capacities());
}

fn assert_no_overlap(blocks: &[BlockAlloc], prepared: &BTreeMap<u64, u64>) {
    let mut sorted = blocks.to_vec();
    sorted.sort();
    for w in sorted.windows(2) {
        if w[0].segment == w[1].segment {
            assert!(w[0].end() <= w[1].start, "{:?} overlaps {:?}", w[0], w[1]);
        }
    }
    for b in &sorted {
        let segment_len = prepared
            .get(&b.segment)
            .unwrap_or_else(|| panic!("{b:?} in an unprepared segment"));
        assert!(b.end() <= *segment_len, "{b:?} past {segment_len}");
        assert!(b.start >= 4 * KIB && b.start % (4 * KIB) == 0 && b.len % (4 * KIB) == 0);
    }
}

#[test]
fn threads_never_get_overlapping_blocks() {
    let (alloc, rec) = allocator(small());
    let alloc = Arc::new(alloc);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let alloc = Arc::clone(&alloc);
            std::thread::spawn(move || {
                (0..2000u64)
                    .map(|i| {
                        let len = if (i + t) % 7 == 0 { 30 * KIB } else { 0 };
                        let len = if (i + t) % 101 == 0 { 70 * KIB } else { len };
                        alloc.allocate(len).unwrap().block
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let blocks: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let ids = rec.ids();
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a segment was prepared twice");
    assert_no_overlap(&blocks, &rec.capacities());
    // The tracker saw every block.
    let total: u64 = unique
        .iter()
        .filter_map(|&&s| alloc.tracker().stats(s))
        .map(|s| s.handed_out)
        .sum();
    assert_eq!(total, blocks.len() as u64);
}

#[test]
fn two_allocators_are_independent() {
    let (a, rec_a) = allocator(small());
    let (b, rec_b) = allocator(small().with_min_block_len(8 * KIB));
    let (solo, _) = allocator(small());
    let mut from_a = Vec::new();
    let mut from_b = Vec::new();
    for i in 0..20 {
        from_a.push(a.allocate(0).unwrap().block);
        for _ in 0..(i % 3) {
            from_b.push(b.allocate(0).unwrap().block);
        }
    }
    // `a` behaves exactly as an allocator that ran alone.
    let expected: Vec<_> = (0..20).map(|_| solo.allocate(0).unwrap().block).collect();
    assert_eq!(from_a, expected);
    // Both number their segments from 0 and track only their own blocks.
    assert_eq!(rec_a.ids()[0], 0);
    assert_eq!(rec_b.ids()[0], 0);
    assert_eq!(from_b[0], block(0, 4 * KIB, 8 * KIB));
    let b0 = b.tracker().stats(0).unwrap();
    let a0 = a.tracker().stats(0).unwrap();
    assert_eq!(a0.handed_out, 3);
    assert_eq!(b0.handed_out, 7);
    // Consuming `b`'s segment 0 does not touch `a`'s.
    for blk in from_b.iter().filter(|blk| blk.segment == 0) {
        let _ = b.tracker().seal(0, blk.start).unwrap();
        let _ = b.tracker().checkpoint(0, blk.start).unwrap();
    }
    assert!(b.tracker().stats(0).unwrap().deleted);
    assert_eq!(a.tracker().stats(0).unwrap(), a0);
}

#[test]
fn two_allocators_on_threads_do_not_interfere() {
    let run = |min_block_len: u64| {
        std::thread::spawn(move || {
            let (alloc, rec) = allocator(small().with_min_block_len(min_block_len));
            let blocks: Vec<_> = (0..500).map(|_| alloc.allocate(0).unwrap().block).collect();
            (blocks, rec.ids())
        })
    };
    let (ta, tb) = (run(16 * KIB), run(8 * KIB));
    let (blocks_a, ids_a) = ta.join().unwrap();
    let (blocks_b, ids_b) = tb.join().unwrap();
    let (solo_a, _) = allocator(small());
    let expected: Vec<_> = (0..500)
        .map(|_| solo_a.allocate(0).unwrap().block)
        .collect();
    assert_eq!(blocks_a, expected);
    assert!(ids_a.windows(2).all(|w| w[0] + 1 == w[1]));
    assert!(ids_b.windows(2).all(|w| w[0] + 1 == w[1]));
    assert!(blocks_b.iter().all(|b| b.len == 8 * KIB));
}

#[test]
fn resume_continues_in_the_tail_and_counts_restored_blocks() {
    let tracker = Arc::new(FileTracker::new());
    let restored = [
        RestoredBlock {
            start: 4 * KIB,
            len: 16 * KIB,
            sealed: true,
            checkpointed: true,
        },
        RestoredBlock {
            start: 20 * KIB,
            len: 16 * KIB,
            sealed: true,
            checkpointed: false,
        },
    ];
    assert_eq!(
        tracker.restore_file(5, &restored, false).unwrap(),
        Deletion::NotYet
    );
    let rec = Arc::new(Recorder::default());
    let resume = Resume::new(6).with_tail(SegmentTail {
        segment: 5,
        segment_len: 64 * KIB,
        next_start: 36 * KIB,
    });
    let alloc = BlockAllocator::resume(
        small().with_prepare_ahead(false),
        Arc::clone(&rec),
        Arc::clone(&tracker),
        resume,
    )
    .unwrap();
    assert!(rec.ids().is_empty(), "resuming creates no file");
    let a = alloc.allocate(0).unwrap().block;
    assert_eq!(a, block(5, 36 * KIB, 16 * KIB));
    let b = alloc.allocate(0).unwrap();
    assert_eq!(b.block, block(6, 4 * KIB, 16 * KIB));
    let s5 = tracker.stats(5).unwrap();
    assert!(s5.fully_allocated);
    assert_eq!(s5.handed_out, 3);
    assert_eq!(tracker.seal(5, a.start).unwrap(), Deletion::NotYet);
    assert_eq!(tracker.checkpoint(5, a.start).unwrap(), Deletion::NotYet);
    assert_eq!(
        tracker.checkpoint(5, 20 * KIB).unwrap(),
        Deletion::Now { segment: 5 }
    );
}

#[test]
fn an_empty_tail_that_is_closed_is_reported_deletable() {
    let rec = Arc::new(Recorder::default());
    // A 32 KiB file from an older configuration, never used.
    let resume = Resume::new(3).with_tail(SegmentTail {
        segment: 2,
        segment_len: 32 * KIB,
        next_start: 4 * KIB,
    });
    let tracker = Arc::new(FileTracker::new());
    let alloc = BlockAllocator::resume(small(), Arc::clone(&rec), tracker, resume).unwrap();
    let a = alloc.allocate(30 * KIB).unwrap();
    assert_eq!(a.block.segment, 3);
    assert_eq!(a.deletable, vec![2]);
}

/// A call that closes a consumed segment and then fails (its own block is refused by the
/// tracker) does not lose the deletion: the next call reports it.
#[test]
fn a_deletion_found_by_a_failed_call_is_reported_by_the_next() {
    let alloc =
        BlockAllocator::new(small().with_prepare_ahead(false), |_: u64, _: u64| Ok(())).unwrap();
    let tracker = Arc::clone(alloc.tracker());
    let mut blocks = Vec::new();
    for _ in 0..3 {
        let a = alloc.allocate(0).unwrap();
        assert_eq!(a.block.segment, 0);
        blocks.push(a.block);
    }
    for b in &blocks {
        assert!(!tracker.seal(b.segment, b.start).unwrap().is_now());
        assert!(!tracker.checkpoint(b.segment, b.start).unwrap().is_now());
    }
    // The block the next call hands out is already tracked: that call fails.
    let next = BlockAlloc {
        segment: 1,
        start: 4 * KIB,
        len: 16 * KIB,
    };
    tracker.track(next).unwrap();
    let err = alloc.allocate(0).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
    assert!(tracker.stats(0).unwrap().deleted, "segment 0 was closed");
    let a = alloc.allocate(0).unwrap();
    assert_eq!(a.block.start, 20 * KIB);
    assert_eq!(a.deletable, vec![0], "the failed call's deletion");
}

#[test]
fn resume_rejects_inconsistent_tails() {
    let tracker = Arc::new(FileTracker::new());
    let _ = tracker.restore_file(1, &[], true).unwrap();
    let cases = [
        (Resume::new(2).with_tail(tail_at(2, 4 * KIB)), "not below"),
        (Resume::new(3).with_tail(tail_at(2, 5000)), "unaligned"),
        (Resume::new(3).with_tail(tail_at(2, 0)), "outside"),
        (Resume::new(3).with_tail(tail_at(2, 128 * KIB)), "outside"),
        (
            Resume::new(3).with_tail(tail_at(1, 4 * KIB)),
            "fully allocated",
        ),
    ];
    for (resume, what) in cases {
        let e = BlockAllocator::resume(
            small(),
            |_: u64, _: u64| Ok(()),
            Arc::clone(&tracker),
            resume,
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains(what), "{e}");
        assert!(e.to_string().contains("segment "), "{e}");
    }
}

fn tail_at(segment: u64, next_start: u64) -> SegmentTail {
    SegmentTail {
        segment,
        segment_len: 64 * KIB,
        next_start,
    }
}

#[test]
fn invalid_config_is_rejected() {
    let e =
        BlockAllocator::new(small().with_min_block_len(3), |_: u64, _: u64| Ok(())).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}
