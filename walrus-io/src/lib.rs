//! # walrus-io
//!
//! Storage backends for Walrus (to be filled in): the backend trait and its `pwrite`/`pread`,
//! `io_uring` and `mmap` implementations, a capability probe with fallback, and a simulated
//! crash/fault backend for tests. It decides neither format nor policy.
