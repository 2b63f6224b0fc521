//! # walrus-topic
//!
//! The engine of Walrus: topics, their chains of blocks, writers, readers and cursors, atomic
//! batches, and recovery of a data directory ([`Store`]), and the store under a sync policy:
//! group commit, the background syncer and durable tickets ([`Engine`]). The `walrus` facade
//! adds the familiar API and its configuration on top.
//!
//! A **topic** is an append-only sequence of entries, each with an **offset** (0, 1, 2, …)
//! assigned at append and never reused. Its entries live in a **chain** of blocks handed out by
//! the allocator ([`walrus_alloc`]) from segment files ([`walrus_io`]), in the format of
//! [`walrus_block`]. A topic's **cursor** is the offset of the next entry a consuming read
//! returns; it is persisted in the cursor file, in O(1) per update.
//!
//! ```
//! use std::sync::Arc;
//! use walrus_topic::{Store, StoreOptions};
//! use walrus_io::SimStorage;
//!
//! let storage = Arc::new(SimStorage::new(7));
//! let store = Store::open("/data", storage.clone(), StoreOptions::new())?;
//! assert_eq!(store.append("events", b"hello")?, 0);
//! assert_eq!(store.append_batch("events", &[b"a", b"b"])?, 1..3);
//! assert_eq!(store.read_next("events", true)?, Some((0, b"hello".to_vec())));
//! assert_eq!(store.read_at("events", 2)?, Some(b"b".to_vec()));
//! store.sync()?;
//! # Ok::<(), std::io::Error>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod arrival;
mod chain;
mod cursors;
pub mod durability;
mod engine;
mod error;
mod journal;
mod layout;
mod options;
mod progress;
mod recovery;
mod shared;
mod stats;
mod store;
mod syncers;
mod tier;
mod topic;
mod yield_wait;

pub use durability::{GroupCommit, GroupCommitStats, Writing};
pub use engine::{DurableTicket, Engine, SyncPolicy};
pub use error::{Poisoned, is_poisoned, poisoned_cause};
pub use layout::{DirLock, LOCK_FILE};
pub use options::{RecoveryMode, Retention, StoreOptions, Tiering};
pub use recovery::{Action, Problem, RecoveryIssue, RecoveryReport};
pub use stats::ConsumerInfo;
pub use stats::{Stats, TopicStats};
pub use store::{Arrival, Entries, Store};
pub use tier::TierPass;

pub use walrus_alloc;
pub use walrus_block;
pub use walrus_io;
