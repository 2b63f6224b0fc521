//! Criterion micro-benchmarks: block allocation under contention (walrus-alloc).
//!
//! Default geometry (1 GiB segments, 1 MiB blocks) with an in-memory preparer, so the numbers
//! are the allocator's own cost: the spin-locked hand-out, the tracker record, and one segment
//! change (with a spare prepared ahead) every 1024 blocks.
//!
//! - `alloc/allocate/{threads}`: mean latency of one `allocate` call while `threads` threads
//!   allocate concurrently. Blocks are sealed and checkpointed in untimed batches so the tracker
//!   stays small.
//! - `alloc/lifecycle/{threads}`: wall time per block for allocate + seal + checkpoint, the
//!   blocks split across `threads` threads (aggregate throughput).
#![allow(missing_docs)]

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use walrus_alloc::{AllocConfig, BlockAlloc, BlockAllocator};

const BATCH: u64 = 256;

fn allocator() -> BlockAllocator {
    BlockAllocator::new(
        AllocConfig::new(),
        |_segment: u64, _segment_len: u64| Ok(()),
    )
    .expect("default config is valid")
}

fn release(alloc: &BlockAllocator, blocks: &[BlockAlloc]) {
    let tracker = alloc.tracker();
    for b in blocks {
        let _ = tracker.seal(b.segment, b.start).expect("tracked");
        let _ = tracker.checkpoint(b.segment, b.start).expect("tracked");
    }
}

/// Allocates `n` blocks; returns the time spent inside `allocate` only.
fn allocate_timed(alloc: &BlockAllocator, n: u64) -> Duration {
    let mut timed = Duration::ZERO;
    let mut blocks = Vec::with_capacity(BATCH as usize);
    let mut left = n;
    while left > 0 {
        let batch = left.min(BATCH);
        let start = Instant::now();
        for _ in 0..batch {
            let a = alloc.allocate(black_box(0)).expect("allocate");
            blocks.push(a.block);
        }
        timed += start.elapsed();
        release(alloc, &blocks);
        blocks.clear();
        left -= batch;
    }
    timed
}

fn lifecycle(alloc: &BlockAllocator, n: u64) {
    let tracker = alloc.tracker();
    for _ in 0..n {
        let b = alloc.allocate(black_box(0)).expect("allocate").block;
        let _ = tracker.seal(b.segment, b.start).expect("tracked");
        let _ = tracker.checkpoint(b.segment, b.start).expect("tracked");
    }
}

fn bench_alloc(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc");
    for threads in [1u64, 2] {
        group.bench_with_input(
            BenchmarkId::new("allocate", threads),
            &threads,
            |b, &threads| {
                let alloc = allocator();
                b.iter_custom(|iters| {
                    let per_thread = iters.div_ceil(threads);
                    thread::scope(|s| {
                        let handles: Vec<_> = (0..threads)
                            .map(|_| s.spawn(|| allocate_timed(&alloc, per_thread)))
                            .collect();
                        let total: Duration = handles
                            .into_iter()
                            .map(|h| h.join().expect("bench thread"))
                            .sum();
                        // Mean latency per call: summed call time over all calls, scaled to
                        // the `iters` criterion asked for.
                        total.mul_f64(iters as f64 / (per_thread * threads) as f64)
                    })
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("lifecycle", threads),
            &threads,
            |b, &threads| {
                let alloc = allocator();
                b.iter_custom(|iters| {
                    let per_thread = iters.div_ceil(threads);
                    let start = Instant::now();
                    thread::scope(|s| {
                        for _ in 0..threads {
                            s.spawn(|| lifecycle(&alloc, per_thread));
                        }
                    });
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (per_thread * threads) as f64)
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_alloc);
criterion_main!(benches);
