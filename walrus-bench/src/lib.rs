//! # walrus-bench
//!
//! The Walrus load generator and micro-benchmarks. It will run the standard workloads (writes,
//! reads, scaling, batch scaling, fsync modes) against Walrus and, side by side in the same run,
//! against the published `walrus-rust` crate. Today it hosts the criterion micro-benchmarks of
//! the format (`cargo bench -p walrus-bench`).
