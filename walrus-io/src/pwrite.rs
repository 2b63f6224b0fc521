//! The default backend: plain positional system calls (`pwrite(2)`, `pwritev(2)`, `pread(2)`,
//! `fdatasync(2)`). A batch is its writes one after the other, then one sync per file.

use std::any::Any;
use std::fs::File;
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{HandlePoison, SyncPoison};
use crate::fs;
use crate::storage::{BackendKind, SegmentFile, Storage, WriteOp, submit_each};

/// The `pwrite`/`pread` backend. Cheap to construct; holds only the sticky-sync registry.
#[derive(Debug, Default)]
pub struct PwriteStorage {
    poison: Arc<SyncPoison>,
}

impl PwriteStorage {
    /// A new instance.
    pub fn new() -> Self {
        Self::default()
    }

    fn wrap(&self, file: File, path: &Path) -> Arc<dyn SegmentFile> {
        Arc::new(PwriteFile::new(file, path, Arc::clone(&self.poison)))
    }
}

impl Storage for PwriteStorage {
    fn kind(&self) -> BackendKind {
        BackendKind::Pwrite
    }

    crate::fs::real_fs_create_open!();

    crate::fs::real_fs_namespace!();

    fn submit(&self, writes: &[WriteOp<'_>], then_sync: bool) -> io::Result<()> {
        if then_sync {
            check_poisoned(writes)?;
        }
        submit_each(writes, then_sync, true)
    }
}

/// Fails with the sticky error of the first already-poisoned file of a batch.
pub(crate) fn check_poisoned(writes: &[WriteOp<'_>]) -> io::Result<()> {
    for file in crate::storage::distinct_files(writes) {
        if let Some(f) = file.as_any().downcast_ref::<PwriteFile>() {
            f.check_sync()?;
        }
    }
    Ok(())
}

/// A file of the [`PwriteStorage`] backend.
#[derive(Debug)]
pub struct PwriteFile {
    file: File,
    path: PathBuf,
    handle_poison: HandlePoison,
    poison: Arc<SyncPoison>,
}

impl PwriteFile {
    /// Wraps an open file; `poison` is the owning backend's sticky-sync registry.
    pub(crate) fn new(file: File, path: &Path, poison: Arc<SyncPoison>) -> Self {
        Self {
            file,
            path: path.to_path_buf(),
            handle_poison: HandlePoison::default(),
            poison,
        }
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The sticky sync error, if this file's data sync ever failed.
    pub(crate) fn check_sync(&self) -> io::Result<()> {
        self.poison.check(&self.handle_poison, &self.path)
    }

    /// Records a failed sync of this file, and drops the file's cached pages: those whose write-back
    /// failed would otherwise be read as if they were on disk (see [`fs::drop_cached`]).
    pub(crate) fn poison_sync(&self, err: &io::Error) {
        self.poison.record(&self.handle_poison, &self.path, err);
        fs::drop_cached(&self.file, &self.path);
    }
}

impl SegmentFile for PwriteFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        fs::pwrite_all(&self.file, &self.path, buf, offset)
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        fs::pwritev_all(&self.file, &self.path, bufs, offset)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        fs::pread_full(&self.file, &self.path, buf, offset)
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        fs::allocate(&self.file, &self.path, offset, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.check_sync()?;
        fs::fdatasync(&self.file, &self.path).inspect_err(|e| self.poison_sync(e))
    }

    fn start_write_back(&self, offset: u64, len: u64) -> io::Result<()> {
        fs::start_write_back(&self.file, &self.path, offset, len, |e| {
            self.poison_sync(e);
        })
    }

    fn len(&self) -> io::Result<u64> {
        fs::file_len(&self.file, &self.path)
    }

    fn next_data(&self, offset: u64) -> io::Result<Option<std::ops::Range<u64>>> {
        fs::seek_data(&self.file, &self.path, offset)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
