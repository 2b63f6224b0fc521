//! Criterion micro-benchmarks of the on-disk format: encoding (header + CRC32C of header and
//! payload + copy) and decoding (checked header access + both CRCs) of entries of 500–1024
//! random bytes, the spec's standard entry size; and the CRC32C alone at several input
//! lengths, ours against the `crc32c` crate's.
//!
//! `cargo bench -p walrus-bench --bench format`
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use walrus_block::{Frame, FrameDecoder, FrameKind, encode_frame};

const ENTRIES: usize = 1024;

/// Deterministic payloads of 500..=1024 bytes (the workspace's one seeded generator).
fn payloads() -> Vec<Vec<u8>> {
    let mut rng = walrus_io::SeededRng::new(0x9E37_79B9_7F4A_7C15);
    (0..ENTRIES)
        .map(|_| {
            let len = 500 + rng.below(525) as usize;
            (0..len).map(|_| rng.next_u64() as u8).collect()
        })
        .collect()
}

/// A segment's frame key (any non-zero value; format v4 keys frames).
const KEY: u32 = 0x5eed_cafe;

fn bench_format(c: &mut Criterion) {
    let payloads = payloads();
    let payload_bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();
    let mut encoded = Vec::with_capacity(payload_bytes as usize + ENTRIES * 24);
    for (i, p) in payloads.iter().enumerate() {
        encode_frame(&mut encoded, i as u64, FrameKind::single(), p, KEY).unwrap();
    }

    for (unit, throughput) in [
        ("bytes", Throughput::Bytes(payload_bytes)),
        ("entries", Throughput::Elements(ENTRIES as u64)),
    ] {
        let mut group = c.benchmark_group(format!("format/{unit}"));
        group.throughput(throughput);
        let mut buf = Vec::with_capacity(encoded.len());
        group.bench_function("encode", |b| {
            b.iter(|| {
                buf.clear();
                for (i, p) in payloads.iter().enumerate() {
                    encode_frame(&mut buf, i as u64, FrameKind::single(), black_box(p), KEY)
                        .unwrap();
                }
                black_box(buf.len())
            })
        });
        group.bench_function("decode", |b| {
            b.iter(|| {
                let mut n = 0usize;
                for frame in FrameDecoder::new(black_box(&encoded), KEY) {
                    if let Frame::Entry(e) = frame {
                        n += e.payload.len();
                    }
                }
                assert_eq!(n as u64, payload_bytes);
                n
            })
        });
        group.finish();
    }
}

/// CRC32C alone: `walrus_block::checksum::crc32c` (three interleaved streams from 128 bytes
/// up to, not including, 64 KiB) against the `crc32c` crate it falls back on. At 24 and 64
/// bytes, 64 KiB and 256 KiB both sides run the crate: those lengths measure only the dispatch.
fn bench_crc(c: &mut Criterion) {
    let data: Vec<u8> = {
        let mut rng = walrus_io::SeededRng::new(0x5EED);
        (0..256 << 10).map(|_| rng.next_u64() as u8).collect()
    };
    for len in [
        24,
        64,
        128,
        256,
        500,
        700,
        1024,
        4096,
        16 << 10,
        64 << 10,
        256 << 10,
    ] {
        let mut group = c.benchmark_group(format!("crc32c/{len}"));
        group.throughput(Throughput::Bytes(len as u64));
        let bytes = &data[..len];
        group.bench_function("walrus", |b| {
            b.iter(|| walrus_block::checksum::crc32c(black_box(bytes)))
        });
        group.bench_function("crate", |b| b.iter(|| crc32c::crc32c(black_box(bytes))));
        group.finish();
    }
}

criterion_group!(benches, bench_format, bench_crc);
criterion_main!(benches);
