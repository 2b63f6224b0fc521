//! # Walrus
//!
//! An embedded, topic-oriented write-ahead log. One instance owns one directory; inside it live
//! any number of named **topics**, each an append-only sequence of byte entries with a
//! persistent read **cursor**. Entries live in segment files cut into blocks (sparse: space is
//! claimed as it is written), each block owned by one topic; a segment file whose blocks are
//! all consumed deletes itself.
//!
//! ```
//! use walrus::{FsyncSchedule, ReadConsistency, Walrus};
//!
//! let dir = tempfile::tempdir()?;
//! let wal = Walrus::builder()
//!     .data_dir(dir.path())
//!     .consistency(ReadConsistency::StrictlyAtOnce)
//!     .fsync_schedule(FsyncSchedule::SyncEach)
//!     .build()?;
//!
//! wal.append_for_topic("events", b"bytes")?;              // durable when it returns
//! wal.batch_append_for_topic("events", &[b"a", b"b"])?;   // atomic
//! let first = wal.read_next("events", true)?.unwrap();    // consume
//! assert_eq!(first.data, b"bytes");
//!
//! // The native API: offsets.
//! let offset = wal.append("events", b"c")?;
//! assert_eq!(offset, 3);
//! assert_eq!(wal.read_at("events", 1)?.unwrap().data, b"a");
//! wal.commit("events", 1)?;                                // rewind the cursor
//! assert_eq!(wal.read_next_record("events", true)?.unwrap().offset, 1);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! ## Durability contract
//!
//! | schedule | returns from `append` when | survives a process crash (`kill -9`) | survives power loss |
//! |---|---|---|---|
//! | [`FsyncSchedule::SyncEach`] | the entry is on stable storage (a sync that started after it was written finished) | everything acknowledged | everything acknowledged |
//! | [`FsyncSchedule::Milliseconds`]`(n)` | the entry is written to the OS | everything acknowledged | everything acknowledged more than about `n` ms before the loss |
//! | [`FsyncSchedule::NoFsync`] | the entry is written to the OS | everything acknowledged | what the last [`Walrus::flush`] covered |
//!
//! A process crash never loses an acknowledged append, whatever the schedule: the data is in
//! the kernel. Under [`ReadConsistency::StrictlyAtOnce`] a consumed entry is never handed out
//! again after a reopen, also after power loss: under `SyncEach` and `Milliseconds` every
//! cursor write is synced before the read returns (`NoFsync` syncs nothing but at
//! [`Walrus::flush`]: there it holds for a process crash); under
//! [`ReadConsistency::AtLeastOnce`] at most `persist_every - 1` are.
//!
//! After a failed sync the instance refuses further writes until it is reopened: the kernel may
//! have dropped the unsynced pages, and a retried sync would lie.
//!
//! ## Recovery
//!
//! Opening a directory rebuilds every topic from its files. A torn tail (the last, partly
//! written entry or batch) is cut off; a batch is there entirely or not at all. What happens to
//! damage before the tail is the [`RecoveryMode`]; a corrupt entry is never handed to a reader.
//!
//! ## Environment
//!
//! Read once, when an instance is built; the builder's explicit values win.
//!
//! - `WALRUS_DATA_DIR`: the data root (default `./wal_files`).
//! - `WALRUS_INSTANCE_KEY`: the key of the key-less constructors (data under `<root>/<key>/`),
//!   and of a builder given neither a key nor a data root: a builder's `data_dir` without a
//!   key is the instance's directory itself.
//! - `WALRUS_QUIET`: silence informational logging (Walrus logs through [`tracing`]).
//!
//! ## Logging
//!
//! Walrus never prints; it emits [`tracing`] events and spans, and the application chooses the
//! subscriber and the level. `warn`: recovery issues (one event per problem, naming topic,
//! offset and file), failed background work, retention skipping unread entries. `info`: the
//! `walrus.open` span and the "walrus opened" summary (topics, segments, entries scanned,
//! issues) — the only event `WALRUS_QUIET` (or [`WalrusBuilder::quiet`]) suppresses. `debug`:
//! the `walrus.recovery` span with its report, `walrus.prepare_segment` and
//! `walrus.delete_segment` spans, retention raising a floor, the journal's writes applied at an
//! open after a crash, the backend `Auto` chose, a tiered block uploaded again after it grew. `trace`: a `walrus.sync` span and
//! event per store-wide sync (entries made durable, µs). [`Walrus::stats`] has the same
//! figures as counters.
//!
//! ## Storage, and testing against power cuts
//!
//! An instance writes through a [`Storage`] backend ([`BackendKind`] picks one of the built-in
//! ones: `pwrite`, io_uring, mmap). [`sim`] is a simulated disk with power cuts and injected
//! faults, for testing code built on Walrus the way Walrus itself is tested.
//!
//! ## Crates
//!
//! This crate is the API; the engine underneath is split into crates usable on their own:
//! `walrus-block` (the on-disk format), `walrus-alloc` (block allocator), `walrus-io`
//! (storage backends) and `walrus-topic` (the engine, [`walrus_topic::Store`]).
#![deny(unsafe_op_in_unsafe_fn)]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

mod builder;
mod config;
mod key;
mod wal;

pub use builder::{DEFAULT_DATA_DIR, ENV_DATA_DIR, ENV_INSTANCE_KEY, ENV_QUIET, WalrusBuilder};
pub use config::{FsyncSchedule, ReadConsistency};
pub use wal::{Entry, Record, Walrus};
#[doc(inline)]
pub use walrus_io::{BackendKind, SegmentFile, Storage};
#[doc(inline)]
pub use walrus_topic::{
    Arrival, ConsumerInfo, DurableTicket, GroupCommitStats, Retention, Stats, TierPass, Tiering,
    TopicStats,
};
#[doc(inline)]
pub use walrus_topic::{Poisoned, RecoveryIssue, RecoveryMode, RecoveryReport, is_poisoned};

/// The remote tier sealed data is uploaded to: the contract ([`tier::RemoteTier`]) and the
/// in-memory implementation with faults (`walrus-io`'s, re-exported); `walrus-s3` implements it
/// on S3.
#[doc(inline)]
pub use walrus_io::tier;

/// A simulated disk: power cuts that keep, drop or tear unsynced writes, and injected faults
/// (`walrus-io`'s simulator, re-exported). Pass it to [`WalrusBuilder::storage`].
pub mod sim {
    #[doc(inline)]
    pub use walrus_io::sim::{CrashMode, Fault, FaultRule, OpKind, SimStats, SimStorage};
}
