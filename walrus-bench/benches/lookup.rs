//! Criterion micro-benchmarks of lookups by offset (`Walrus::read_at`, which raft's log store
//! and any reader by offset use): random and sequential offsets in a topic of 20,000 entries of
//! 700 B in the default geometry (1 MiB blocks), so a lookup lands anywhere in a full block.
//!
//! `cargo bench -p walrus-bench --bench lookup`
#![allow(missing_docs)]

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use walrus::Walrus;

const ENTRIES: u64 = 20_000;
const ENTRY: usize = 700;

fn lookup(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(root).unwrap();
    let dir = tempfile::tempdir_in(root).unwrap();
    let wal = Walrus::builder()
        .data_dir(dir.path())
        .key("lookup")
        .quiet(true)
        .build()
        .unwrap();
    let payload: Vec<u8> = (0..ENTRY).map(|i| (i * 31 + 7) as u8).collect();
    for _ in 0..ENTRIES {
        wal.append("t", &payload).unwrap();
    }
    let mut g = c.benchmark_group("lookup");
    // A stride coprime with the count: every offset, in an order no read-ahead follows.
    let mut k = 0u64;
    g.bench_function("read_at/random", |b| {
        b.iter(|| {
            k = (k + 7919) % ENTRIES;
            black_box(wal.read_at("t", k).unwrap())
        });
    });
    let mut k = 0u64;
    g.bench_function("read_at/sequential", |b| {
        b.iter(|| {
            k = (k + 1) % ENTRIES;
            black_box(wal.read_at("t", k).unwrap())
        });
    });
    g.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
