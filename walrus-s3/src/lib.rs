//! # walrus-s3: the S3 WAL buffer
//!
//! Producers on any thread append entries (topic + bytes, as in Walrus); one flusher drains
//! them every flush interval (or as soon as enough bytes are queued) into **one batch object**,
//! PUTs it, and only then completes the producers' [`S3Ticket`]s. A PUT per entry would cost
//! a round trip and a request fee each; a batch pays them once for everything queued.
//!
//! ```
//! use std::sync::Arc;
//! use walrus_s3::{S3Options, S3Reader, S3Wal};
//!
//! // Any object_store works; the tests use a real S3 server (see `moto`).
//! let store = Arc::new(walrus_s3::object_store::memory::InMemory::new());
//! let wal = S3Wal::open(store.clone(), "wal", S3Options::default())?;
//! let a = wal.append("events", b"first")?;
//! let b = wal.append("events", b"second")?;
//! assert_eq!(a.wait()?, 0..1); // in S3 now, with its offset
//! assert_eq!(b.wait()?, 1..2);
//! drop(wal);
//!
//! let reader = S3Reader::open(store, "wal")?;
//! let data: Vec<Vec<u8>> = reader.read("events", 0).map(|r| r.map(|r| r.data)).collect::<Result<_, _>>()?;
//! assert_eq!(data, [b"first".to_vec(), b"second".to_vec()]);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! ## Guarantees
//!
//! - **Nothing is acknowledged that is not in S3**: a ticket completes after the PUT of its
//!   batch succeeded. A PUT is retried with exponential backoff up to the retry budget; then
//!   every ticket of the batch gets the error and the writer stops (later batches would put a
//!   hole in the offsets). A failed entry may still be in S3 (a PUT that timed out can land);
//!   a reader tells.
//! - **Nothing is dropped**: a full queue (entries or bytes) makes `append` wait;
//!   [`S3Wal::append_timeout`] hands the entry back instead.
//! - **One writer per prefix**: batch objects are named by sequence and every PUT is
//!   conditional (If-None-Match). Opening a writer claims the next name under a higher epoch,
//!   so an older writer's next PUT finds its name taken and fails with `AlreadyExists`
//!   (fenced). A retried PUT whose earlier attempt landed is recognised by its header (writer
//!   id, epoch, sequence) and length; an open refuses a store that ignores If-None-Match.
//! - **Dense, stable offsets per topic**, continued across writers; an atomic
//!   [`S3Wal::append_batch`] lands in one object.
//! - **Every byte read back is validated**: header CRC32C, walrus-block frames with CRC32C,
//!   offsets dense within and across batches, epochs in order.
//! - **Truncation keeps all of the above**: [`S3Wal::truncate`] writes a checkpoint (the
//!   topics' ends and the highest epoch below it), then empties the batches below it (their
//!   names stay taken: fencing needs them), so offsets, sequences and epochs continue and an
//!   open costs what the batches since the checkpoint cost.
//!
//! ## Object layout
//!
//! `PREFIX/00000000000000000042.batch` and `PREFIX/checkpoint/00000000000000000040.ckpt`, see
//! [`format`](mod@format) for the bytes.
//!
//! ## The remote tier
//!
//! [`S3Tier`] is the engine's remote tier ([`walrus::tier::RemoteTier`]) on S3: create-once
//! PUTs with user metadata, ranged GETs, listings and deletes under a prefix, each request with
//! a deadline. It passes the same conformance suite as the in-memory tier.
#![forbid(unsafe_code)]

pub mod format;
mod local;
pub mod moto;
mod options;
mod reader;
mod remote;
mod ticket;
mod tier;
mod writer;

pub use local::{Durability, LocalFirst, LocalFirstTicket, Placed};
pub use options::S3Options;
pub use reader::{S3Reader, TopicReader};
pub use ticket::S3Ticket;
pub use tier::S3Tier;
pub use writer::{Rejected, S3Stats, S3Wal};

/// The object store client this crate is built on, re-exported so callers use the same version.
pub use object_store;

/// The README's examples, compiled as doc tests so they cannot rot. They live here, in the
/// topmost library crate, because the README shows every layer (this one included).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
