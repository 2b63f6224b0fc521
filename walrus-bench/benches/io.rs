//! Criterion micro-benchmarks of the storage backends (walrus-io): sequential appends of 4 KiB
//! and 64 KiB, batches of 256 × 700 B, and write + fdatasync, for `pwrite`, `io_uring` and
//! `mmap`, beside a plain `std` `write_all_at` loop as the baseline.
//!
//! Files live under the target directory (a real disk, never a tmpfs), are preallocated and
//! written once before measuring, so the appends overwrite page-cache pages instead of timing
//! their first touch. Appends wrap around a 64 MiB region. No fsync except in `write_sync`.
//!
//! `cargo bench -p walrus-bench --bench io`
#![allow(missing_docs)]

use std::fs::File;
use std::hint::black_box;
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use walrus_io::{BackendKind, SegmentFile, Storage, WriteOp, open_backend};

/// Bytes the appends cycle through.
const REGION: u64 = 64 << 20;
const BATCH: usize = 256;
const ENTRY: usize = 700;

const BACKENDS: [BackendKind; 3] = [BackendKind::Pwrite, BackendKind::IoUring, BackendKind::Mmap];

/// A fresh directory under the target dir, removed on drop.
fn bench_dir() -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(root).unwrap();
    tempfile::tempdir_in(root).unwrap()
}

/// Payload bytes that are not all zeros (some file systems treat zero pages specially).
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

/// A preallocated file of `REGION` bytes, filled once so its pages are resident.
fn prepared(storage: &dyn Storage, path: &Path) -> Arc<dyn SegmentFile> {
    let file = storage.create(path, REGION).unwrap();
    let chunk = vec![0x5Au8; 1 << 20];
    for offset in (0..REGION).step_by(chunk.len()) {
        file.write_at(&chunk, offset).unwrap();
    }
    file.sync_data().unwrap();
    file
}

/// The baseline's file, prepared the same way.
fn prepared_std(path: &Path) -> File {
    let storage = open_backend(BackendKind::Pwrite).unwrap();
    drop(prepared(&*storage, path));
    File::options().read(true).write(true).open(path).unwrap()
}

/// Next append offset: sequential, wrapping at the end of the region.
fn advance(cursor: &mut u64, len: u64) -> u64 {
    if *cursor + len > REGION {
        *cursor = 0;
    }
    let at = *cursor;
    *cursor += len;
    at
}

struct Subject {
    name: &'static str,
    storage: Arc<dyn Storage>,
    file: Arc<dyn SegmentFile>,
}

fn subjects(dir: &Path) -> Vec<Subject> {
    BACKENDS
        .iter()
        .map(|&kind| {
            let storage = open_backend(kind).unwrap();
            let file = prepared(&*storage, &dir.join(kind.name()));
            Subject {
                name: kind.name(),
                storage,
                file,
            }
        })
        .collect()
}

fn bench_appends(c: &mut Criterion) {
    let dir = bench_dir();
    let baseline = prepared_std(&dir.path().join("std"));
    let subjects = subjects(dir.path());

    for size in [4usize << 10, 64 << 10] {
        let data = payload(size);
        let mut group = c.benchmark_group(format!("io/append_{}k", size >> 10));
        group.throughput(Throughput::Bytes(size as u64));
        let mut cursor = 0;
        group.bench_function("std_write_all_at", |b| {
            b.iter(|| {
                let at = advance(&mut cursor, size as u64);
                baseline.write_all_at(black_box(&data), at).unwrap()
            })
        });
        for s in &subjects {
            let mut cursor = 0;
            group.bench_function(s.name, |b| {
                b.iter(|| {
                    let at = advance(&mut cursor, size as u64);
                    s.file.write_at(black_box(&data), at).unwrap()
                })
            });
        }
        group.finish();
    }
}

fn bench_batches(c: &mut Criterion) {
    let dir = bench_dir();
    let baseline = prepared_std(&dir.path().join("std"));
    let subjects = subjects(dir.path());
    let entries: Vec<Vec<u8>> = (0..BATCH).map(|i| payload(ENTRY - 8 + i % 16)).collect();
    let total: usize = entries.iter().map(Vec::len).sum();

    let mut group = c.benchmark_group(format!("io/batch_{BATCH}x{ENTRY}"));
    group.throughput(Throughput::Bytes(total as u64));
    let mut cursor = 0;
    group.bench_function("std_write_all_at", |b| {
        b.iter(|| {
            let mut at = advance(&mut cursor, total as u64);
            for e in &entries {
                baseline.write_all_at(black_box(e), at).unwrap();
                at += e.len() as u64;
            }
        })
    });
    let slices: Vec<[IoSlice<'_>; 1]> = entries.iter().map(|e| [IoSlice::new(e)]).collect();
    for s in &subjects {
        let mut cursor = 0;
        let mut ops: Vec<WriteOp<'_>> = Vec::with_capacity(BATCH);
        group.bench_function(s.name, |b| {
            b.iter(|| {
                let mut at = advance(&mut cursor, total as u64);
                ops.clear();
                for sl in &slices {
                    ops.push(WriteOp::new(&*s.file, at, sl));
                    at += sl[0].len() as u64;
                }
                s.storage.submit(black_box(&ops), false).unwrap()
            })
        });
    }
    group.finish();
}

fn bench_write_sync(c: &mut Criterion) {
    let dir = bench_dir();
    let baseline = prepared_std(&dir.path().join("std"));
    let subjects = subjects(dir.path());
    let data = payload(4 << 10);

    let mut group = c.benchmark_group("io/write_sync_4k");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.sample_size(20);
    let mut cursor = 0;
    group.bench_function("std_write_all_at+sync_data", |b| {
        b.iter(|| {
            let at = advance(&mut cursor, data.len() as u64);
            baseline.write_all_at(black_box(&data), at).unwrap();
            baseline.sync_data().unwrap()
        })
    });
    for s in &subjects {
        let mut cursor = 0;
        // One synced batch of one write: on io_uring, the write and a linked fdatasync in one
        // submission.
        group.bench_function(s.name, |b| {
            b.iter(|| {
                let at = advance(&mut cursor, data.len() as u64);
                let sl = [IoSlice::new(black_box(&data))];
                s.storage
                    .submit(&[WriteOp::new(&*s.file, at, &sl)], true)
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_appends, bench_batches, bench_write_sync);
criterion_main!(benches);
