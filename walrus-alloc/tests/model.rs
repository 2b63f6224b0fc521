//! Model test: random operation sequences against a simple sequential model of the allocator
//! and the tracker. Every call's result (block, error, deletion report) must match the model,
//! so deletion is never early, never missed, and reported exactly once.
#![cfg(not(loom))]

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use proptest::prelude::*;
use proptest::sample::Index;
use walrus_alloc::{
    AllocConfig, BlockAlloc, BlockAllocator, Deletion, FileStats, FileTracker, RestoredBlock,
};

const KIB: u64 = 1024;
const DATA_OFFSET: u64 = 4 * KIB;
const CAPACITY: u64 = 64 * KIB;
const BLOCK: u64 = 16 * KIB;
const RESTORED_BASE: u64 = 1_000_000;

#[derive(Debug, Clone)]
enum Op {
    /// Request this many bytes (0 = default size; some need a dedicated segment).
    Alloc(u64),
    /// The next segment preparation fails.
    FailNextPrepare,
    Seal(Index),
    Checkpoint(Index),
    /// A reader reporting the same block again and again.
    CheckpointTwice(Index),
    /// A file found at recovery: (sealed, checkpointed) per block, and fully allocated.
    Restore(Vec<(bool, bool)>, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::sample::select(vec![0, 1, 16 * KIB, 17 * KIB, 30 * KIB, 60 * KIB, 61 * KIB, 100 * KIB])
            .prop_map(Op::Alloc),
        1 => Just(Op::FailNextPrepare),
        5 => any::<Index>().prop_map(Op::Seal),
        5 => any::<Index>().prop_map(Op::Checkpoint),
        2 => any::<Index>().prop_map(Op::CheckpointTwice),
        1 => (prop::collection::vec(any::<(bool, bool)>(), 0..4), any::<bool>())
            .prop_map(|(b, f)| Op::Restore(b, f)),
    ]
}

#[derive(Debug, Default)]
struct ModelFile {
    /// start -> (locked, checkpointed)
    blocks: BTreeMap<u64, (bool, bool)>,
    expected: Option<u64>,
    deleted: bool,
}

impl ModelFile {
    /// Applies the deletion rule; `true` exactly when it becomes true now.
    fn settle(&mut self) -> bool {
        let rule = !self.deleted
            && self.expected == Some(self.blocks.len() as u64)
            && self.blocks.values().all(|&(locked, ckpt)| !locked && ckpt);
        if rule {
            self.deleted = true;
        }
        rule
    }

    fn stats(&self) -> FileStats {
        let n = self.blocks.len() as u64;
        if self.deleted {
            return FileStats {
                handed_out: n,
                locked: 0,
                checkpointed: n,
                fully_allocated: true,
                deleted: true,
            };
        }
        FileStats {
            handed_out: n,
            locked: self.blocks.values().filter(|b| b.0).count() as u64,
            checkpointed: self.blocks.values().filter(|b| b.1).count() as u64,
            fully_allocated: self.expected.is_some(),
            deleted: false,
        }
    }
}

/// Sequential model; the allocator runs without prepare-ahead so preparation is observable.
#[derive(Debug, Default)]
struct Model {
    /// (segment, cursor, blocks)
    current: Option<(u64, u64, u64)>,
    next_id: u64,
    pending_closed: Vec<(u64, u64)>,
    fail_next: bool,
    files: BTreeMap<u64, ModelFile>,
    blocks: Vec<BlockAlloc>,
    restored: u64,
}

impl Model {
    fn prepare(&mut self) -> Option<u64> {
        if std::mem::take(&mut self.fail_next) {
            return None;
        }
        self.next_id += 1;
        Some(self.next_id - 1)
    }

    /// `None` if the preparer fails; otherwise the block and the segments deletable now.
    fn alloc(&mut self, min_len: u64) -> Option<(BlockAlloc, BTreeSet<u64>)> {
        let len = min_len.max(BLOCK).div_ceil(4 * KIB) * 4 * KIB;
        let (block, mut closed) = if len > CAPACITY - DATA_OFFSET {
            let segment = self.prepare()?;
            let mut closed = std::mem::take(&mut self.pending_closed);
            closed.push((segment, 1));
            let block = BlockAlloc {
                segment,
                start: DATA_OFFSET,
                len,
            };
            (block, closed)
        } else {
            match self.current {
                Some((_, cursor, _)) if CAPACITY - cursor >= len => {}
                _ => {
                    if let Some((segment, _, blocks)) = self.current.take() {
                        self.pending_closed.push((segment, blocks));
                    }
                    let segment = self.prepare()?;
                    self.current = Some((segment, DATA_OFFSET, 0));
                }
            }
            let cur = self.current.as_mut().unwrap();
            let block = BlockAlloc {
                segment: cur.0,
                start: cur.1,
                len,
            };
            cur.1 += len;
            cur.2 += 1;
            (block, std::mem::take(&mut self.pending_closed))
        };
        self.files
            .entry(block.segment)
            .or_default()
            .blocks
            .insert(block.start, (true, false));
        self.blocks.push(block);
        let mut deletable = BTreeSet::new();
        for (segment, blocks) in closed.drain(..) {
            let file = self.files.entry(segment).or_default();
            if file.deleted {
                continue;
            }
            file.expected = Some(blocks);
            if file.settle() {
                deletable.insert(segment);
            }
        }
        Some((block, deletable))
    }

    fn update(&mut self, block: BlockAlloc, seal: bool) -> Deletion {
        let file = self.files.get_mut(&block.segment).unwrap();
        if file.deleted {
            return Deletion::NotYet;
        }
        let b = file.blocks.get_mut(&block.start).unwrap();
        if seal {
            b.0 = false;
        } else {
            b.1 = true;
        }
        if file.settle() {
            Deletion::Now {
                segment: block.segment,
            }
        } else {
            Deletion::NotYet
        }
    }
}

fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let fail = Arc::new(AtomicBool::new(false));
    let fail_flag = Arc::clone(&fail);
    let config = AllocConfig::new()
        .with_segment_len(CAPACITY)
        .with_data_offset(DATA_OFFSET)
        .with_min_block_len(BLOCK)
        .with_prepare_ahead(false);
    let alloc = BlockAllocator::new(config, move |segment: u64, _segment_len: u64| {
        if fail_flag.swap(false, Ordering::SeqCst) {
            Err(io::Error::other(format!("injected failure for {segment}")))
        } else {
            Ok(())
        }
    })
    .unwrap();
    let tracker: &FileTracker = alloc.tracker();
    let mut model = Model::default();
    let mut reported = BTreeSet::new();
    let mut report = |segment: u64| -> Result<(), TestCaseError> {
        prop_assert!(
            reported.insert(segment),
            "segment {} reported twice",
            segment
        );
        Ok(())
    };

    for op in ops {
        match op {
            Op::Alloc(len) => {
                let expected = model.alloc(len);
                match (alloc.allocate(len), expected) {
                    (Ok(got), Some((block, deletable))) => {
                        prop_assert_eq!(got.block, block);
                        let got_set: BTreeSet<u64> = got.deletable.iter().copied().collect();
                        prop_assert_eq!(got_set.len(), got.deletable.len());
                        prop_assert_eq!(got_set, deletable);
                        for segment in got.deletable {
                            report(segment)?;
                        }
                    }
                    (Err(e), None) => {
                        prop_assert!(e.to_string().contains("injected failure"), "{}", e);
                        prop_assert!(e.to_string().contains("segment "), "{}", e);
                    }
                    (got, want) => {
                        prop_assert!(false, "allocate: got {:?}, model {:?}", got, want);
                    }
                }
            }
            Op::FailNextPrepare => {
                fail.store(true, Ordering::SeqCst);
                model.fail_next = true;
            }
            Op::Seal(i) | Op::Checkpoint(i) | Op::CheckpointTwice(i) => {
                if model.blocks.is_empty() {
                    continue;
                }
                let block = model.blocks[i.index(model.blocks.len())];
                let seal = matches!(op, Op::Seal(_));
                let repeats = if matches!(op, Op::CheckpointTwice(_)) {
                    2
                } else {
                    1
                };
                for _ in 0..repeats {
                    let want = model.update(block, seal);
                    let got = if seal {
                        tracker.seal(block.segment, block.start)
                    } else {
                        tracker.checkpoint(block.segment, block.start)
                    }
                    .unwrap();
                    prop_assert_eq!(got, want, "{:?} seal={}", block, seal);
                    if let Some(segment) = got.segment() {
                        report(segment)?;
                    }
                }
            }
            Op::Restore(flags, fully) => {
                let segment = RESTORED_BASE + model.restored;
                model.restored += 1;
                let blocks: Vec<_> = flags
                    .iter()
                    .enumerate()
                    .map(|(i, &(sealed, checkpointed))| RestoredBlock {
                        start: DATA_OFFSET + i as u64 * BLOCK,
                        len: BLOCK,
                        sealed,
                        checkpointed,
                    })
                    .collect();
                let file = model.files.entry(segment).or_default();
                for b in &blocks {
                    file.blocks.insert(b.start, (!b.sealed, b.checkpointed));
                    model.blocks.push(BlockAlloc {
                        segment,
                        start: b.start,
                        len: b.len,
                    });
                }
                file.expected = fully.then_some(blocks.len() as u64);
                let want = if file.settle() {
                    Deletion::Now { segment }
                } else {
                    Deletion::NotYet
                };
                let got = tracker.restore_file(segment, &blocks, fully).unwrap();
                prop_assert_eq!(got, want);
                if got.is_now() {
                    report(segment)?;
                }
            }
        }
    }

    // Consume everything: every closed file is then reported, each exactly once.
    for block in model.blocks.clone() {
        for seal in [true, false, false] {
            let want = model.update(block, seal);
            let got = if seal {
                tracker.seal(block.segment, block.start)
            } else {
                tracker.checkpoint(block.segment, block.start)
            }
            .unwrap();
            prop_assert_eq!(got, want, "drain {:?} seal={}", block, seal);
            if let Some(segment) = got.segment() {
                report(segment)?;
            }
        }
    }
    for (&segment, file) in &model.files {
        prop_assert_eq!(file.deleted, file.expected.is_some(), "segment {}", segment);
    }

    // Final states agree file by file.
    for (&segment, file) in &model.files {
        prop_assert_eq!(
            tracker.stats(segment),
            Some(file.stats()),
            "segment {}",
            segment
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
    ))]

    #[test]
    fn allocator_and_tracker_follow_the_model(ops in prop::collection::vec(op(), 1..120)) {
        check(ops)?;
    }
}
