//! Criterion micro-benchmarks: format (to be filled in).
#![allow(missing_docs)]
fn main() {}
