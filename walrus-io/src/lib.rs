//! # walrus-io
//!
//! Storage backends for Walrus, in the style of rustls' crypto providers: this crate defines
//! the contract — [`Storage`] (a namespace of segment files) and [`SegmentFile`] (one open file)
//! — every backend implements it, and one conformance suite (the `conformance` cargo feature)
//! proves them interchangeable. It decides neither format nor policy.
//!
//! | backend | type | what it is |
//! |---|---|---|
//! | [`BackendKind::Pwrite`] | [`PwriteStorage`] | `pwrite`/`pwritev`/`pread`/`fdatasync`; the default |
//! | [`BackendKind::IoUring`] | [`UringStorage`] | a pool of long-lived rings; a batch and its syncs in one submission |
//! | [`BackendKind::Mmap`] | [`MmapStorage`] | small writes copy into shared mappings (a system call per 2 MiB, not per write); syncs flush the dirty range; a device error faulting a page in is a `SIGBUS` |
//! | [`BackendKind::Auto`] | (resolves) | io_uring if the kernel has what it needs, else `pwrite` |
//! | [`BackendKind::Sim`] | [`SimStorage`] | in memory, seeded: crashes, torn writes, injected faults |
//!
//! Beside segment files, the crate defines the remote tier the engine uploads sealed data to:
//! [`RemoteTier`] (an object store: create-once PUTs, ranged GETs, listings, deletes), with
//! [`MemoryTier`] in memory and faults, and its own conformance suite
//! (`tier::conformance`, cargo feature `conformance`); `walrus-s3` implements it on S3.
//!
//! A backend is chosen per instance, at run time ([`open_backend`]); there is no process-wide
//! switch and no global state. Errors keep their kind (ENOSPC is
//! [`ErrorKind::StorageFull`](std::io::ErrorKind::StorageFull)) and carry an [`OpError`] naming
//! the operation, file and offset; a failed data sync is sticky.
//!
//! ```
//! use std::io::IoSlice;
//! use walrus_io::{BackendKind, WriteOp, open_backend};
//!
//! let dir = tempfile::tempdir()?;
//! let storage = open_backend(BackendKind::Auto)?; // io_uring or pwrite, whichever works here
//! let seg = storage.create(&dir.path().join("00000001.seg"), 1 << 20)?;
//! let (a, b) = ([IoSlice::new(b"hello ")], [IoSlice::new(b"world")]);
//! // Both writes, then one data sync of the file; on io_uring, one system call.
//! storage.submit(&[WriteOp::new(&*seg, 0, &a), WriteOp::new(&*seg, 6, &b)], true)?;
//! storage.sync_dir(dir.path())?; // the file's existence is durable too
//!
//! let mut buf = [0; 11];
//! seg.read_exact_at(&mut buf, 0)?;
//! assert_eq!(&buf, b"hello world");
//! # Ok::<(), std::io::Error>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]

use std::io;
use std::sync::Arc;

mod error;
mod fs;
pub mod hooked;
pub mod mmap;
pub mod pwrite;
mod rng;
pub mod sim;
mod storage;
pub mod tier;
pub mod uring;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::{OpError, os_error};
pub use mmap::{MmapFile, MmapStorage};
pub use pwrite::{PwriteFile, PwriteStorage};
pub use rng::SeededRng;
pub use sim::{CrashMode, Fault, FaultRule, OpKind, SECTOR_SIZE, SimFile, SimStats, SimStorage};
pub use storage::{BackendKind, SegmentFile, Storage, WriteOp};
pub use tier::{MemoryTier, RemoteTier};
pub use uring::{UringFile, UringOptions, UringStorage};

/// How [`open_backend_with`] builds a backend.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BackendOptions {
    /// Tuning of the io_uring backend (also used when `Auto` picks io_uring).
    pub uring: UringOptions,
    /// How `Auto` probes for io_uring: builds the io_uring backend or says why it cannot. The
    /// default is [`UringStorage::with_options`], which creates a ring and checks the opcodes
    /// it needs; tests replace it to force the fallback.
    pub uring_probe: fn(&UringOptions) -> io::Result<UringStorage>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self {
            uring: UringOptions::default(),
            uring_probe: UringStorage::with_options,
        }
    }
}

/// A new backend of `kind` with default options; see [`open_backend_with`].
pub fn open_backend(kind: BackendKind) -> io::Result<Arc<dyn Storage>> {
    open_backend_with(kind, &BackendOptions::default())
}

/// A new backend of `kind`. Each call builds an independent instance.
///
/// `IoUring` fails if the kernel cannot provide it; `Auto` never does: it probes io_uring once,
/// here, and falls back to `Pwrite`, logging its choice (tracing, target `walrus_io`). The
/// returned backend's [`Storage::kind`] tells which it resolved to. `Sim` is refused: a
/// simulator needs a seed, so build it with [`SimStorage::new`].
pub fn open_backend_with(
    kind: BackendKind,
    options: &BackendOptions,
) -> io::Result<Arc<dyn Storage>> {
    Ok(match kind {
        BackendKind::Pwrite => Arc::new(PwriteStorage::new()),
        BackendKind::IoUring => Arc::new(UringStorage::with_options(&options.uring)?),
        BackendKind::Mmap => Arc::new(MmapStorage::new()),
        BackendKind::Auto => match (options.uring_probe)(&options.uring) {
            Ok(uring) => {
                tracing::debug!(
                    backend = "io_uring",
                    "storage backend Auto resolved to io_uring"
                );
                Arc::new(uring)
            }
            Err(error) => {
                tracing::warn!(
                    backend = "pwrite",
                    %error,
                    "storage backend Auto fell back to pwrite: io_uring unavailable"
                );
                Arc::new(PwriteStorage::new())
            }
        },
        BackendKind::Sim => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the simulated backend needs a seed: use SimStorage::new(seed)",
            ));
        }
    })
}
