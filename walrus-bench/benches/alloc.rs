//! Criterion micro-benchmarks: alloc (to be filled in).
#![allow(missing_docs)]
fn main() {}
