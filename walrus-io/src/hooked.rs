//! A backend seen through a hook: [`Hooked`] calls it before every operation with what is
//! about to happen ([`Op`]), and the hook may fail the operation or first run code of its own
//! (another thread's appends, a second instance's pass). For tests that need a race or a
//! failure at one precise point of the I/O, which fault rules alone cannot place; the
//! simulator's faults ([`crate::FaultRule`]) still apply below it.
//!
//! ```
//! use std::sync::Arc;
//! use walrus_io::hooked::{Hooked, Op};
//! use walrus_io::{SimStorage, Storage};
//!
//! let sim = SimStorage::new(1);
//! // Every directory sync fails.
//! let storage = Hooked::new(sim, |op: Op<'_>| match op {
//!     Op::SyncDir(dir) => Err(std::io::Error::other(format!("{} not synced", dir.display()))),
//!     _ => Ok(()),
//! });
//! assert!(storage.sync_dir(std::path::Path::new("/")).is_err());
//! ```

use std::any::Any;
use std::fmt;
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::storage::{BackendKind, SegmentFile, Storage, WriteOp, submit_each};

/// An operation about to be made through a [`Hooked`] backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op<'a> {
    /// [`Storage::create`] of the path.
    Create(&'a Path),
    /// [`Storage::open`] of the path.
    Open(&'a Path),
    /// [`Storage::open_read`] of the path.
    OpenRead(&'a Path),
    /// [`Storage::remove`] of the path.
    Remove(&'a Path),
    /// [`Storage::list`] of the directory.
    List(&'a Path),
    /// [`Storage::create_dir_all`] of the directory.
    CreateDir(&'a Path),
    /// [`Storage::sync_dir`] of the directory.
    SyncDir(&'a Path),
    /// A write to the file at the offset (also each write of a [`Storage::submit`] batch).
    Write(&'a Path, u64),
    /// [`SegmentFile::sync_data`] of the file (also each file's sync of a `submit` batch).
    Sync(&'a Path),
}

/// The hook: `Err` fails the operation with that error (nothing is done).
type Hook = dyn Fn(Op<'_>) -> io::Result<()> + Send + Sync;

/// A backend whose every operation first goes through a hook. See the [module docs](self).
pub struct Hooked<S> {
    inner: S,
    hook: Arc<Hook>,
}

impl<S: Storage> Hooked<S> {
    /// `inner`, with `hook` called before each of its operations.
    pub fn new(inner: S, hook: impl Fn(Op<'_>) -> io::Result<()> + Send + Sync + 'static) -> Self {
        Self {
            inner,
            hook: Arc::new(hook),
        }
    }

    fn wrap(&self, file: Arc<dyn SegmentFile>) -> Arc<dyn SegmentFile> {
        Arc::new(HookedFile {
            inner: file,
            hook: Arc::clone(&self.hook),
        })
    }
}

impl<S: fmt::Debug> fmt::Debug for Hooked<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooked")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S: Storage> Storage for Hooked<S> {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }
    fn create(&self, path: &Path, len: u64) -> io::Result<Arc<dyn SegmentFile>> {
        (self.hook)(Op::Create(path))?;
        self.inner.create(path, len).map(|f| self.wrap(f))
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        (self.hook)(Op::Open(path))?;
        self.inner.open(path).map(|f| self.wrap(f))
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        (self.hook)(Op::OpenRead(path))?;
        self.inner.open_read(path).map(|f| self.wrap(f))
    }
    fn key(&self) -> io::Result<u32> {
        self.inner.key()
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        (self.hook)(Op::Remove(path))?;
        self.inner.remove(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        (self.hook)(Op::List(dir))?;
        self.inner.list(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        (self.hook)(Op::CreateDir(dir))?;
        self.inner.create_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        (self.hook)(Op::SyncDir(dir))?;
        self.inner.sync_dir(dir)
    }
    fn submit(&self, writes: &[WriteOp<'_>], then_sync: bool) -> io::Result<()> {
        // Through each file's own methods, so that every write and sync meets the hook.
        submit_each(writes, then_sync, false)
    }
}

/// A file of a [`Hooked`] backend.
struct HookedFile {
    inner: Arc<dyn SegmentFile>,
    hook: Arc<Hook>,
}

impl fmt::Debug for HookedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookedFile")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl SegmentFile for HookedFile {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (self.hook)(Op::Write(self.path(), offset))?;
        self.inner.write_at(buf, offset)
    }
    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        (self.hook)(Op::Write(self.path(), offset))?;
        self.inner.write_vectored_at(bufs, offset)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.allocate(offset, len)
    }
    fn sync_data(&self) -> io::Result<()> {
        (self.hook)(Op::Sync(self.path()))?;
        self.inner.sync_data()
    }
    fn start_write_back(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.start_write_back(offset, len)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn next_data(&self, offset: u64) -> io::Result<Option<std::ops::Range<u64>>> {
        self.inner.next_data(offset)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::SimStorage;

    /// Every operation meets the hook, in order, and a refused one does nothing.
    #[test]
    fn every_operation_meets_the_hook_and_a_refusal_does_nothing() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let storage = Hooked::new(SimStorage::new(1), move |op: Op<'_>| {
            log.lock().unwrap().push(format!("{op:?}"));
            match op {
                Op::Remove(_) => Err(io::Error::other("refused")),
                _ => Ok(()),
            }
        });
        let dir = Path::new("/d");
        storage.create_dir_all(dir).unwrap();
        let file = storage.create(&dir.join("f"), 8).unwrap();
        file.write_at(b"ab", 0).unwrap();
        let bufs = [IoSlice::new(b"cd")];
        storage
            .submit(&[WriteOp::new(&*file, 2, &bufs)], true)
            .unwrap();
        storage.sync_dir(dir).unwrap();
        assert!(storage.remove(&dir.join("f")).is_err());
        assert_eq!(storage.list(dir).unwrap(), [dir.join("f")], "not removed");
        let mut buf = [0; 4];
        storage
            .open_read(&dir.join("f"))
            .unwrap()
            .read_exact_at(&mut buf, 0)
            .unwrap();
        assert_eq!(&buf, b"abcd");
        assert_eq!(
            *seen.lock().unwrap(),
            [
                r#"CreateDir("/d")"#,
                r#"Create("/d/f")"#,
                r#"Write("/d/f", 0)"#,
                r#"Write("/d/f", 2)"#,
                r#"Sync("/d/f")"#,
                r#"SyncDir("/d")"#,
                r#"Remove("/d/f")"#,
                r#"List("/d")"#,
                r#"OpenRead("/d/f")"#,
            ]
        );
    }
}
