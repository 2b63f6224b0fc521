//! loom models of the allocator and the tracker.
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p walrus-alloc --release --test loom --target-dir target/loom`
//!
//! Geometry is tiny (4 KiB blocks, one or two per segment) so segment changes, waits for a
//! segment being prepared and late tracker records all happen within a handful of steps.
#![cfg(loom)]

use std::io;

use loom::thread;
use walrus_alloc::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use walrus_alloc::sync::{Arc, Mutex};
use walrus_alloc::{AllocConfig, BlockAlloc, BlockAllocator, Deletion, FileTracker};

const BLOCK: u64 = 4096;

fn config(blocks_per_segment: u64, prepare_ahead: bool) -> AllocConfig {
    AllocConfig::new()
        .with_segment_len(BLOCK * (1 + blocks_per_segment))
        .with_data_offset(BLOCK)
        .with_min_block_len(BLOCK)
        .with_alignment(BLOCK)
        .with_prepare_ahead(prepare_ahead)
}

/// (segment, segment_len) of every successful preparation.
type Prepared = Arc<Mutex<Vec<(u64, u64)>>>;

/// Records prepared segments; fails the call numbered `fail_call` (from 0), if any.
fn allocator(config: AllocConfig, fail_call: Option<u32>) -> (Arc<BlockAllocator>, Prepared) {
    let prepared = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&prepared);
    let calls = AtomicU32::new(0);
    let alloc = BlockAllocator::new(config, move |segment: u64, segment_len: u64| {
        if Some(calls.fetch_add(1, Ordering::SeqCst)) == fail_call {
            return Err(io::Error::other("injected"));
        }
        log.lock().push((segment, segment_len));
        Ok(())
    })
    .unwrap();
    (Arc::new(alloc), prepared)
}

fn assert_disjoint(blocks: &[BlockAlloc], prepared: &[(u64, u64)]) {
    let mut ids: Vec<_> = prepared.iter().map(|p| p.0).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), prepared.len(), "a segment was prepared twice");
    for (i, a) in blocks.iter().enumerate() {
        let segment_len = prepared
            .iter()
            .find(|p| p.0 == a.segment)
            .map(|p| p.1)
            .expect("block in an unprepared segment");
        assert!(a.start >= BLOCK && a.end() <= segment_len, "{a:?}");
        for b in &blocks[i + 1..] {
            assert!(
                a.segment != b.segment || a.end() <= b.start || b.end() <= a.start,
                "{a:?} overlaps {b:?}"
            );
        }
    }
}

#[test]
fn concurrent_allocations_never_overlap() {
    loom::model(|| {
        // Two blocks per segment, four blocks: a thread may close segment 0 while the other
        // is preparing segment 1, or wait for it.
        let (alloc, prepared) = allocator(config(2, false), None);
        let a2 = Arc::clone(&alloc);
        let t =
            thread::spawn(move || [a2.allocate(0).unwrap().block, a2.allocate(0).unwrap().block]);
        let mut blocks = vec![alloc.allocate(0).unwrap().block];
        blocks.push(alloc.allocate(0).unwrap().block);
        blocks.extend(t.join().unwrap());
        assert_disjoint(&blocks, &prepared.lock());
        let total: u64 = (0..2)
            .filter_map(|s| alloc.tracker().stats(s))
            .map(|s| s.handed_out)
            .sum();
        assert_eq!(total, 4);
    });
}

#[test]
fn concurrent_allocations_with_a_spare_prepared_ahead() {
    loom::model(|| {
        // One block per segment: every allocation changes segment and consumes the spare.
        let (alloc, prepared) = allocator(config(1, true), None);
        let a2 = Arc::clone(&alloc);
        let t = thread::spawn(move || a2.allocate(0).unwrap().block);
        let mine = alloc.allocate(0).unwrap().block;
        let theirs = t.join().unwrap();
        assert_disjoint(&[mine, theirs], &prepared.lock());
        let position = alloc.position();
        assert!(position.current.is_some());
    });
}

#[test]
fn oversized_and_normal_blocks_race() {
    loom::model(|| {
        let (alloc, prepared) = allocator(config(1, false), None);
        let a2 = Arc::clone(&alloc);
        let t = thread::spawn(move || a2.allocate(3 * BLOCK).unwrap().block);
        let normal = alloc.allocate(0).unwrap().block;
        let big = t.join().unwrap();
        assert_eq!(big.len, 3 * BLOCK);
        assert_disjoint(&[normal, big], &prepared.lock());
        let stats = alloc.tracker().stats(big.segment).unwrap();
        assert!(stats.fully_allocated);
        assert_eq!(stats.handed_out, 1);
    });
}

#[test]
fn failed_preparation_leaves_the_allocator_usable() {
    // The failing call is the one preparing on demand, or (with prepare-ahead) the spare.
    for (ahead, fail_call) in [(false, 0), (true, 0), (true, 1)] {
        loom::model(move || {
            let (alloc, prepared) = allocator(config(2, ahead), Some(fail_call));
            let a2 = Arc::clone(&alloc);
            let t = thread::spawn(move || a2.allocate(0).map(|a| a.block));
            let mine = alloc.allocate(0).map(|a| a.block);
            let theirs = t.join().unwrap();
            // One preparation fails: at most one call sees it (none if it was the spare's),
            // and the error names the segment.
            let mut blocks = Vec::new();
            let mut errors = 0;
            for result in [mine, theirs] {
                match result {
                    Ok(block) => blocks.push(block),
                    Err(e) => {
                        assert!(e.to_string().starts_with("segment "), "{e}");
                        errors += 1;
                    }
                }
            }
            assert!(errors <= 1);
            // The lock is free and the allocator works.
            blocks.push(alloc.allocate(0).unwrap().block);
            let prepared = prepared.lock();
            assert_disjoint(&blocks, &prepared);
            let mut ids: Vec<_> = prepared.iter().map(|p| p.0).collect();
            ids.sort_unstable();
            assert!(
                ids.iter().enumerate().all(|(i, &id)| id == i as u64),
                "a failed id was skipped: {ids:?}"
            );
        });
    }
}

#[test]
fn prepare_spare_races_allocation() {
    loom::model(|| {
        let (alloc, prepared) = allocator(config(1, false), None);
        let a2 = Arc::clone(&alloc);
        let t = thread::spawn(move || a2.prepare_spare().unwrap());
        let first = alloc.allocate(0).unwrap().block;
        let second = alloc.allocate(0).unwrap().block;
        let _ = t.join().unwrap();
        let prepared = prepared.lock();
        assert_disjoint(&[first, second], &prepared);
        assert!(prepared.len() <= 3);
    });
}

/// Writer seals, two readers checkpoint (repeating blocks), main closes the file: exactly one
/// call reports the deletion, and only once everything is done.
#[test]
fn deletion_is_reported_exactly_once() {
    loom::model(|| {
        let tracker = Arc::new(FileTracker::new());
        for start in [BLOCK, 2 * BLOCK] {
            tracker.track(block(start)).unwrap();
        }
        let sealed = Arc::new(AtomicBool::new(false));
        let writer = {
            let (tracker, sealed) = (Arc::clone(&tracker), Arc::clone(&sealed));
            thread::spawn(move || {
                let a = tracker.seal(0, BLOCK).unwrap();
                let b = tracker.seal(0, 2 * BLOCK).unwrap();
                sealed.store(true, Ordering::SeqCst);
                count(&[a, b])
            })
        };
        let reader = {
            let tracker = Arc::clone(&tracker);
            thread::spawn(move || {
                let a = tracker.checkpoint(0, 2 * BLOCK).unwrap();
                let b = tracker.checkpoint(0, BLOCK).unwrap();
                let c = tracker.checkpoint(0, BLOCK).unwrap();
                count(&[a, b, c])
            })
        };
        // A second reader repeats a checkpoint (a peek reported twice).
        let reader2 = {
            let tracker = Arc::clone(&tracker);
            thread::spawn(move || count(&[tracker.checkpoint(0, 2 * BLOCK).unwrap()]))
        };
        let closed = tracker.mark_fully_allocated(0, 2).unwrap();
        let total = count(&[closed])
            + writer.join().unwrap()
            + reader.join().unwrap()
            + reader2.join().unwrap();
        assert_eq!(total, 1);
        assert!(sealed.load(Ordering::SeqCst));
        assert!(tracker.stats(0).unwrap().deleted);
    });
}

/// A locked block or an unconsumed block holds the file in every interleaving.
#[test]
fn never_deleted_while_locked_or_unconsumed() {
    for (seal_both, checkpoint_both) in [(false, true), (true, false)] {
        loom::model(move || {
            let tracker = Arc::new(FileTracker::new());
            for start in [BLOCK, 2 * BLOCK] {
                tracker.track(block(start)).unwrap();
            }
            let writer = {
                let tracker = Arc::clone(&tracker);
                thread::spawn(move || {
                    let mut d = vec![tracker.seal(0, BLOCK).unwrap()];
                    if seal_both {
                        d.push(tracker.seal(0, 2 * BLOCK).unwrap());
                    }
                    count(&d)
                })
            };
            let reader = {
                let tracker = Arc::clone(&tracker);
                thread::spawn(move || {
                    let mut d = vec![tracker.checkpoint(0, BLOCK).unwrap()];
                    d.push(tracker.checkpoint(0, BLOCK).unwrap());
                    if checkpoint_both {
                        d.push(tracker.checkpoint(0, 2 * BLOCK).unwrap());
                    }
                    count(&d)
                })
            };
            let closed = tracker.mark_fully_allocated(0, 2).unwrap();
            let total = count(&[closed]) + writer.join().unwrap() + reader.join().unwrap();
            assert_eq!(total, 0);
            assert!(!tracker.stats(0).unwrap().deleted);
        });
    }
}

/// End to end: two writers allocate (one block per segment, so each allocation closes the
/// previous segment, possibly before that segment's block reached the tracker), seal and
/// consume their block. After a final allocation closes the last segment, every segment has
/// been reported exactly once.
#[test]
fn allocate_seal_checkpoint_deletes_each_segment_once() {
    loom::model(|| {
        let (alloc, _prepared) = allocator(config(1, false), None);
        let a2 = Arc::clone(&alloc);
        let work = move |alloc: &BlockAllocator| {
            let got = alloc.allocate(0).unwrap();
            let b = got.block;
            let mut reported = got.deletable;
            reported.extend(alloc.tracker().seal(b.segment, b.start).unwrap().segment());
            reported.extend(
                alloc
                    .tracker()
                    .checkpoint(b.segment, b.start)
                    .unwrap()
                    .segment(),
            );
            reported
        };
        let t = thread::spawn(move || work(&a2));
        let mut reported = work(&alloc);
        reported.extend(t.join().unwrap());
        let last = alloc.allocate(0).unwrap();
        reported.extend(last.deletable);
        reported.sort_unstable();
        assert_eq!(reported, vec![0, 1]);
    });
}

fn block(start: u64) -> BlockAlloc {
    BlockAlloc {
        segment: 0,
        start,
        len: BLOCK,
    }
}

fn count(deletions: &[Deletion]) -> u32 {
    deletions.iter().map(|d| u32::from(d.is_now())).sum()
}
