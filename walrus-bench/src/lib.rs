//! # walrus-bench
//!
//! The Walrus load generator, and the home of the criterion micro-benchmarks
//! (`cargo bench -p walrus-bench`, or `cargo xtask bench --micro`).
//!
//! The load generator (`cargo xtask bench`, or the `walrus-bench` binary) runs the standard
//! workloads — single appends and batches for each thread count of a range, `SyncEach` appends
//! with 1, 4, 16 and 64 threads (and 16 threads on one topic), reads in both consistency modes,
//! and bytes on disk at 700-byte entries — on this workspace's engine and, side by side in the
//! same run, on the published
//! `walrus-rust` 0.2.0, beside the physical baseline of plain `pwrite` and `pwrite`+`fdatasync`
//! loops. Entries are 500–1024 random bytes from a pool generated before timing. Every call's
//! own duration goes into an HDR histogram (p50, p99, p99.9, max).
//!
//! `walrus-rust` keeps process-global state, so each of its runs is a child process: the binary
//! re-executes itself with `--engine walrus-rust --workload <json>` and reads the result as JSON
//! from the child's stdout.
//!
//! | knob | flag | environment |
//! |---|---|---|
//! | fsync schedule of the unsynced workloads | `--fsync sync-each\|no-fsync\|<N>ms` | `FSYNC` |
//! | thread counts of the sweeps | `--threads N\|A-B` | `THREADS` |
//! | seconds per measured loop | `--duration S` | `WALRUS_DURATION` |
//! | entries per batch | `--batch-size N` | `WALRUS_BATCH_SIZE` |
//! | our storage backend | `--backend pwrite\|io_uring\|mmap\|auto` | `BACKEND` |
//!
//! Results go to stdout (a table and the standing of each performance target) and to
//! `target/walrus-bench/` (`latest.json`, `results-<time>.json`, `scaling.svg`, `scaling.png`).

pub mod config;
pub mod consumers;
pub mod engine;
pub mod footprint;
pub mod payload;
pub mod plot;
pub mod raft;
pub mod report;
pub mod s3;
pub mod stats;
pub mod suite;
pub mod tiering;
pub mod workload;

use std::path::PathBuf;

/// `target/walrus-bench` of this workspace: under `CARGO_TARGET_DIR` when it is set, else
/// under the workspace root.
#[must_use]
pub fn default_out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(
            || {
                let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
                manifest
                    .parent()
                    .map_or_else(|| manifest.join("target"), |root| root.join("target"))
            },
            PathBuf::from,
        );
    target.join("walrus-bench")
}
