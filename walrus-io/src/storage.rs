//! The backend contract: [`Storage`] (a namespace of segment files) and [`SegmentFile`] (one
//! open file), both object-safe so the backend can be chosen at run time per instance.

use std::any::Any;
use std::fmt;
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use crate::error::unexpected_eof;

/// Which backend a [`Storage`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// `pwrite(2)` / `pwritev(2)` / `pread(2)` / `fdatasync(2)`: the default.
    Pwrite,
    /// io_uring: batches in one submission, optionally linked to their data syncs.
    IoUring,
    /// A shared memory map per file; syncs flush the dirty range.
    Mmap,
    /// io_uring if this kernel supports what it needs, else `Pwrite`. Only ever *requested*: a
    /// constructed backend reports the kind it resolved to.
    Auto,
    /// The in-memory simulated backend ([`SimStorage`](crate::SimStorage)).
    Sim,
}

impl BackendKind {
    /// The name used by [`Display`](fmt::Display) and [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            Self::Pwrite => "pwrite",
            Self::IoUring => "io_uring",
            Self::Mmap => "mmap",
            Self::Auto => "auto",
            Self::Sim => "sim",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = io::Error;

    fn from_str(s: &str) -> io::Result<Self> {
        Ok(match s {
            "pwrite" => Self::Pwrite,
            "io_uring" | "iouring" | "uring" => Self::IoUring,
            "mmap" => Self::Mmap,
            "auto" => Self::Auto,
            "sim" => Self::Sim,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("unknown storage backend {s:?} (pwrite, io_uring, mmap, auto, sim)"),
                ));
            }
        })
    }
}

/// One positional write of a [`Storage::submit`] batch: `bufs`, back to back, at `offset` of
/// `file`.
#[derive(Debug, Clone, Copy)]
pub struct WriteOp<'a> {
    /// The file to write to.
    pub file: &'a dyn SegmentFile,
    /// Where the first byte of `bufs` goes.
    pub offset: u64,
    /// The data, written contiguously.
    pub bufs: &'a [IoSlice<'a>],
}

impl<'a> WriteOp<'a> {
    /// A write of `bufs` at `offset` of `file`.
    pub fn new(file: &'a dyn SegmentFile, offset: u64, bufs: &'a [IoSlice<'a>]) -> Self {
        Self { file, offset, bufs }
    }

    /// Bytes this write carries.
    pub fn len(&self) -> usize {
        self.bufs.iter().map(|b| b.len()).sum()
    }

    /// Whether this write carries no bytes.
    pub fn is_empty(&self) -> bool {
        self.bufs.iter().all(|b| b.is_empty())
    }
}

/// A namespace of segment files: what a Walrus instance needs from the file system.
///
/// Paths are used as given (no canonicalization). Every error carries the path and, for data
/// operations, the offset (see [`OpError`](crate::OpError)), and keeps the kind the system
/// gave it: `NotFound`, `AlreadyExists`, `StorageFull` (ENOSPC), `IsADirectory`, ….
///
/// Durability follows POSIX, and the simulated backend enforces it strictly: file data is
/// durable after [`SegmentFile::sync_data`] (or a [`submit`](Self::submit) with `then_sync`);
/// the *existence* of a created or removed file is durable only after [`sync_dir`](Self::sync_dir)
/// of its directory. A failed sync of a file is sticky for the life of the instance: every
/// later sync of that path, through any handle, fails too (until the file is removed), since
/// the kernel reports a write-back error once and then marks the pages clean.
pub trait Storage: Send + Sync + fmt::Debug {
    /// The concrete backend (never [`BackendKind::Auto`]: that resolves when constructed).
    fn kind(&self) -> BackendKind;

    /// Creates a new file at `path` of length `len`, reading as zeros. Every backend leaves it
    /// sparse: disk space is claimed by [`SegmentFile::allocate`] (or by writes; the mmap
    /// backend allocates 2 MiB granules before it stores into them), so a large file costs only
    /// what is used. Fails with `AlreadyExists` if `path` exists and `NotFound` if its directory
    /// does not; on failure no file is left behind.
    fn create(&self, path: &Path, len: u64) -> io::Result<Arc<dyn SegmentFile>>;

    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>>;

    /// Opens an existing file for reading only (a read-only store's files). The default opens
    /// it as [`open`](Self::open) does, for backends whose handles need write access (mmap);
    /// the store never writes through it either way.
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        self.open(path)
    }

    /// A key for the format's keyed checksums (the segment and journal keys of
    /// `walrus_block`): 32 bits no one writing entry data can predict, never 0 (which marks
    /// an unkeyed file). The default draws from the kernel (`getrandom(2)`, or
    /// `/dev/urandom` where that is refused); the simulator draws from its seed, so that a
    /// seed replays byte for byte.
    ///
    /// # Errors
    /// When no random source answers.
    fn key(&self) -> io::Result<u32> {
        crate::rng::random_key().map(|k| k.max(1))
    }

    /// Removes the file at `path`. Open handles keep working on the unlinked file.
    fn remove(&self, path: &Path) -> io::Result<()>;

    /// The regular files directly inside `dir`, sorted (subdirectories are not listed).
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;

    /// Creates `dir` and its missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;

    /// Makes the creations and removals of files in `dir` durable (`fsync(2)` on the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// Writes every op fully, then — if `then_sync` — data-syncs each file the batch touched, so
    /// that on `Ok` the whole batch is durable. The io_uring backend does this in as few
    /// submissions as the ring allows, with each file's sync linked behind its writes.
    ///
    /// Ops are independent positional writes: their order of landing is unspecified, so
    /// overlapping ops in one batch leave unspecified bytes in the overlap. On `Err` some ops may
    /// have landed and nothing is known to be durable. If a touched file's earlier sync failed,
    /// a `then_sync` batch fails with that sticky error before writing anything.
    ///
    /// Files must come from this backend for the batched path; any other [`SegmentFile`] is
    /// written through its own methods.
    fn submit(&self, writes: &[WriteOp<'_>], then_sync: bool) -> io::Result<()>;
}

/// One open segment file. Shared between threads (`Arc<dyn SegmentFile>`); all methods are
/// positional, so concurrent calls on disjoint ranges never interfere.
///
/// Writes past the end extend the file (the gap reads as zeros). Concurrent writes to the *same*
/// range leave unspecified bytes there, and a read concurrent with a write of the same range may
/// see any mix of old and new bytes; neither is undefined behaviour on any backend.
pub trait SegmentFile: Send + Sync + fmt::Debug {
    /// The path this file was created or opened at.
    fn path(&self) -> &Path;

    /// Writes all of `buf` at `offset`: short writes are resumed; an error means an unknown
    /// prefix of `buf` may have landed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Writes all of `bufs`, back to back, at `offset`, with the same guarantees as
    /// [`write_at`](Self::write_at).
    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()>;

    /// Reads into `buf` from `offset` and returns how many bytes were read: all of `buf`, unless
    /// the file ends first (0 at or past the end). Never-written bytes below the length, such as
    /// preallocated space, read as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Fills all of `buf` from `offset`, or fails with `UnexpectedEof` if the file ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let got = self.read_at(buf, offset)?;
        if got == buf.len() {
            Ok(())
        } else {
            Err(unexpected_eof(self.path(), offset, buf.len(), got))
        }
    }

    /// Claims disk space for `[offset, offset + len)` (`fallocate(2)`), extending the file if it
    /// is shorter; existing bytes are kept and never-written ones still read as zeros. After
    /// `Ok`, writes into the range do not fail for lack of space; a full disk fails here
    /// instead, with [`io::ErrorKind::StorageFull`], before anything is written. Where the file
    /// system cannot allocate, only the length is extended.
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Makes every write that returned before this call durable (`fdatasync(2)`).
    ///
    /// A failure is sticky: every later sync of this file (through any handle of the same
    /// backend instance) fails too, because the kernel may have dropped the unsynced data.
    fn sync_data(&self) -> io::Result<()>;

    /// A hint: starts writing the dirty pages of `[offset, offset + len)` to the device and
    /// returns without waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Promises nothing
    /// about durability and consumes no write-back error: a later
    /// [`sync_data`](Self::sync_data) still reports it (also one this call itself returns:
    /// such a failure is sticky as a sync's). Lets space written ahead of time (zeros)
    /// reach the disk before the syncs of the appends that land there, instead of with them.
    /// The default does nothing.
    fn start_write_back(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }

    /// The file's current length in bytes.
    fn len(&self) -> io::Result<u64>;

    /// The first range at or after `offset` that may hold written bytes, as `start..end`, or
    /// `None` when everything from `offset` on reads as zeros (`lseek(SEEK_DATA / SEEK_HOLE)`:
    /// preallocated, never written space is a hole). Lets recovery skip a gigabyte of
    /// preallocation without reading it — reading a hole would also fill the page cache with
    /// zero pages that later count as data. The default is the conservative `offset..u64::MAX`:
    /// "assume data".
    fn next_data(&self, offset: u64) -> io::Result<Option<std::ops::Range<u64>>> {
        Ok(Some(offset..u64::MAX))
    }

    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// `self`, so a backend can recognise its own file type in a [`WriteOp`]. Implementations
    /// return `self`.
    fn as_any(&self) -> &dyn Any;
}

/// `submit` done with each file's own methods: every write, then one sync per distinct file.
/// With `coalesce`, ops that continue the previous op of the batch in the same file become one
/// vectored write (a WAL batch of contiguous entries is then one system call per file).
/// The portable path, also what the io_uring backend uses for foreign files.
pub(crate) fn submit_each(
    writes: &[WriteOp<'_>],
    then_sync: bool,
    coalesce: bool,
) -> io::Result<()> {
    if coalesce {
        for run in coalesced(writes) {
            run.file.write_vectored_at(&run.bufs, run.offset)?;
        }
    } else {
        for op in writes {
            if !op.is_empty() {
                op.file.write_vectored_at(op.bufs, op.offset)?;
            }
        }
    }
    if then_sync {
        for file in distinct_files(writes) {
            file.sync_data()?;
        }
    }
    Ok(())
}

/// Consecutive ops of a batch merged into one write where each continues the previous one in
/// the same file (at most [`IOV_MAX`](crate::fs::IOV_MAX) buffers each, so one run is one
/// system call or one submission entry).
#[derive(Debug)]
pub(crate) struct Run<'a> {
    pub(crate) file: &'a dyn SegmentFile,
    pub(crate) offset: u64,
    pub(crate) bufs: Vec<IoSlice<'a>>,
    len: u64,
}

/// The runs of `writes`, in batch order, without empty buffers or empty runs.
pub(crate) fn coalesced<'a>(writes: &[WriteOp<'a>]) -> Vec<Run<'a>> {
    let mut runs: Vec<Run<'a>> = Vec::new();
    for op in writes {
        let len = op.len() as u64;
        if len == 0 {
            continue;
        }
        let nonempty = op.bufs.iter().filter(|b| !b.is_empty());
        if let Some(run) = runs.last_mut()
            && std::ptr::addr_eq(run.file, op.file)
            && run.offset.checked_add(run.len) == Some(op.offset)
            && run.bufs.len() + op.bufs.len() <= crate::fs::IOV_MAX
        {
            run.bufs.extend(nonempty.copied());
            run.len += len;
            continue;
        }
        runs.push(Run {
            file: op.file,
            offset: op.offset,
            bufs: nonempty.copied().collect(),
            len,
        });
    }
    runs
}

/// The distinct files of a batch, in first-use order (identity is the object's address).
pub(crate) fn distinct_files<'a>(writes: &[WriteOp<'a>]) -> Vec<&'a dyn SegmentFile> {
    let mut files: Vec<&'a dyn SegmentFile> = Vec::new();
    for op in writes {
        if !files.iter().any(|f| std::ptr::addr_eq(*f, op.file)) {
            files.push(op.file);
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_kind_names_round_trip() {
        for kind in [
            BackendKind::Pwrite,
            BackendKind::IoUring,
            BackendKind::Mmap,
            BackendKind::Auto,
            BackendKind::Sim,
        ] {
            assert_eq!(kind.to_string().parse::<BackendKind>().unwrap(), kind);
        }
        let err = "floppy".parse::<BackendKind>().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn coalescing_merges_only_contiguous_ops_of_one_file() {
        let sim = crate::SimStorage::new(0);
        let a = sim.create(Path::new("/a"), 0).unwrap();
        let b = sim.create(Path::new("/b"), 0).unwrap();
        let (x, none) = (
            [IoSlice::new(b"xx"), IoSlice::new(b"")],
            [IoSlice::new(b"")],
        );
        let ops = [
            WriteOp::new(&*a, 0, &x),
            WriteOp::new(&*a, 2, &x),    // continues: merged
            WriteOp::new(&*b, 4, &x),    // other file
            WriteOp::new(&*b, 4, &none), // empty: dropped
            WriteOp::new(&*b, 6, &x),    // continues b: merged
            WriteOp::new(&*b, 9, &x),    // gap
            WriteOp::new(&*a, 4, &x),    // a again, but not after a's run
        ];
        let runs: Vec<(u64, usize, u64)> = coalesced(&ops)
            .iter()
            .map(|r| (r.offset, r.bufs.len(), r.len))
            .collect();
        assert_eq!(runs, [(0, 2, 4), (4, 2, 4), (9, 1, 2), (4, 1, 2)]);

        let one = [IoSlice::new(b"z")];
        let many: Vec<WriteOp<'_>> = (0..2500u64).map(|i| WriteOp::new(&*a, i, &one)).collect();
        let lens: Vec<usize> = coalesced(&many).iter().map(|r| r.bufs.len()).collect();
        assert_eq!(
            lens,
            [1024, 1024, 452],
            "runs are capped at IOV_MAX buffers"
        );
    }
}
