//! Criterion micro-benchmarks: io (to be filled in).
#![allow(missing_docs)]
fn main() {}
