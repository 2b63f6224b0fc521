//! The mmap backend: each file is mapped shared, read-write, over the length it has when created
//! or opened. Writes copy into the mapping, reads copy out of it, and a sync flushes the dirty
//! range (`msync(MS_SYNC)`). Bytes past the mapping (the file grew after it was mapped) go
//! through `pwrite`/`pread`, which share the page cache with the mapping.
//!
//! # Soundness
//!
//! No reference into the mapping is ever created: bytes move with raw-pointer copies only. Two
//! accesses to the same bytes from two threads, one of them a write, would still be a data race
//! (undefined behaviour), so each file keeps a small range lock: a write excludes
//! every overlapping access, a read excludes overlapping writes. Callers that keep to disjoint
//! ranges, as a WAL does, never wait.
//!
//! What the type system cannot check is left to the owner of the directory: nothing else may
//! truncate a mapped file (the process would get `SIGBUS`). Files are allocated whole with
//! `fallocate` when created and their holes filled when opened, so a full disk cannot turn a
//! write into a `SIGBUS` either — which is why this backend, unlike the others, pays for the
//! whole length of every file up front; an I/O
//! error while writing pages back surfaces at the next sync. A device error while *faulting a
//! page in* still raises `SIGBUS`; that is the price of this backend.

use std::any::Any;
use std::fs::File;
use std::io::{self, IoSlice};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::MmapRaw;
use parking_lot::{Condvar, Mutex};

use crate::error::{SyncPoison, op_error};
use crate::fs;
use crate::pwrite::PwriteFile;
use crate::storage::{BackendKind, SegmentFile, Storage, WriteOp, distinct_files, submit_each};

/// The mmap backend. See the [module docs](crate::mmap).
#[derive(Debug, Default)]
pub struct MmapStorage {
    poison: Arc<SyncPoison>,
}

impl MmapStorage {
    /// A new instance.
    pub fn new() -> Self {
        Self::default()
    }

    fn wrap(&self, file: File, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let len = fs::file_len(&file, path)?;
        let map = if len == 0 {
            None
        } else {
            Some(MmapRaw::map_raw(&file).map_err(|e| op_error("mmap", path, Some(0), e))?)
        };
        Ok(Arc::new(MmapFile {
            base: PwriteFile::new(file, path, Arc::clone(&self.poison)),
            map,
            ranges: RangeLocks::default(),
            dirty: Mutex::new(None),
            fd_dirty: AtomicBool::new(false),
            sync_lock: Mutex::new(()),
        }))
    }
}

impl Storage for MmapStorage {
    fn kind(&self) -> BackendKind {
        BackendKind::Mmap
    }

    fn create(&self, path: &Path, len: u64) -> io::Result<Arc<dyn SegmentFile>> {
        let file = fs::create_file(path, len)?;
        // The whole mapping is allocated up front (see the module docs): a store into a hole
        // of a mapping cannot report a full disk.
        if let Err(e) = fs::allocate(&file, path, 0, len) {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        self.poison.forget(path);
        self.wrap(file, path).inspect_err(|_| {
            // Keep "a failed create leaves nothing behind".
            let _ = std::fs::remove_file(path);
        })
    }

    /// Read-only handles read with `pread` (the same page cache the mappings share): a shared
    /// writable mapping needs a writable file, and opening one allocates its holes.
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        crate::PwriteStorage::new().open_read(path)
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let file = fs::open_file(path)?;
        // Allocate any holes (keeps data, keeps the size) so stores into the mapping cannot
        // fault on a full disk. Only regular files can be mapped; others (devices) are left to
        // the pwrite path.
        let meta = file
            .metadata()
            .map_err(|e| op_error("fstat", path, None, e))?;
        if meta.is_file() {
            fs::allocate(&file, path, 0, meta.len())?;
        }
        self.wrap(file, path)
    }

    crate::fs::real_fs_namespace!();

    fn submit(&self, writes: &[WriteOp<'_>], then_sync: bool) -> io::Result<()> {
        if then_sync {
            for file in distinct_files(writes) {
                if let Some(f) = file.as_any().downcast_ref::<MmapFile>() {
                    f.base.check_sync()?;
                }
            }
        }
        submit_each(writes, then_sync, true)
    }
}

/// A file of the [`MmapStorage`] backend.
#[derive(Debug)]
pub struct MmapFile {
    /// The descriptor: bytes past the mapping, `fdatasync`, length, sticky sync state.
    base: PwriteFile,
    /// Shared read-write mapping of `[0, map.len())`; `None` for an empty or unmappable file.
    map: Option<MmapRaw>,
    ranges: RangeLocks,
    /// Bytes of the mapping written since the last sync, as `[start, end)`.
    dirty: Mutex<Option<(usize, usize)>>,
    /// Whether bytes past the mapping were written since the last sync.
    fd_dirty: AtomicBool,
    /// Serializes syncs, so a sync never returns while an earlier one still flushes the range
    /// it took.
    sync_lock: Mutex<()>,
}

impl MmapFile {
    fn map_len(&self) -> usize {
        self.map.as_ref().map_or(0, MmapRaw::len)
    }

    /// Splits `[offset, offset + len)` into the part inside the mapping (as `usize` offsets) and
    /// the length of the part past it.
    fn split(&self, offset: u64, len: usize) -> (Option<(usize, usize)>, usize) {
        let map_len = self.map_len() as u64;
        if offset >= map_len {
            return (None, len);
        }
        let inside = (map_len - offset).min(len as u64) as usize;
        (Some((offset as usize, inside)), len - inside)
    }

    fn mark_dirty(&self, start: usize, end: usize) {
        let mut dirty = self.dirty.lock();
        *dirty = Some(match *dirty {
            Some((lo, hi)) => (lo.min(start), hi.max(end)),
            None => (start, end),
        });
    }
}

impl SegmentFile for MmapFile {
    fn path(&self) -> &Path {
        self.base.path()
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_vectored_at(&[IoSlice::new(buf)], offset)
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let total = crate::fs::total_len(bufs);
        fs::check_range("mmap write", self.path(), offset, total)?;
        if total == 0 {
            return Ok(());
        }
        let (inside, _) = self.split(offset, total);
        let mut consumed = 0; // bytes of `bufs` copied into the mapping
        if let (Some((start, len)), Some(map)) = (inside, &self.map) {
            let _guard = self.ranges.lock(start, start + len, true);
            let mut at = start;
            for buf in bufs {
                if at == start + len {
                    break;
                }
                let n = buf.len().min(start + len - at);
                // Why this is sound: `[at, at + n)` lies inside `[start, start + len)`, which
                // `split` keeps inside the mapping, alive as long as `self`; no reference into
                // the mapping exists, and the exclusive range lock held here keeps every other
                // access to these bytes out until the copy is done.
                // SAFETY: `buf` is caller memory, never part of the mapping (no overlap), and
                // the destination range is in bounds and exclusively locked, as shown above.
                unsafe {
                    std::ptr::copy_nonoverlapping(buf.as_ptr(), map.as_mut_ptr().add(at), n);
                }
                at += n;
            }
            consumed = len;
            self.mark_dirty(start, start + len);
        }
        if consumed < total {
            // The rest lies past the mapping: skip what was copied, pwrite the remainder.
            let mut rest: Vec<IoSlice<'_>> = bufs.to_vec();
            let mut slices: &mut [IoSlice<'_>] = &mut rest;
            IoSlice::advance_slices(&mut slices, consumed);
            fs::pwritev_all(
                self.base.file(),
                self.path(),
                slices,
                offset + consumed as u64,
            )?;
            self.fd_dirty.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        fs::check_range("mmap read", self.path(), offset, buf.len())?;
        let (inside, _) = self.split(offset, buf.len());
        let mut done = 0;
        if let (Some((start, len)), Some(map)) = (inside, &self.map) {
            let _guard = self.ranges.lock(start, start + len, false);
            // SAFETY: `[start, start + len)` lies inside the live mapping (see `split`) and
            // `len <= buf.len()`. The shared range lock keeps writers of these bytes out, so the
            // copy races with nothing; `buf` is caller memory, disjoint from the mapping.
            unsafe {
                std::ptr::copy_nonoverlapping(map.as_ptr().add(start), buf.as_mut_ptr(), len);
            }
            done = len;
        }
        if done < buf.len() {
            done += fs::pread_full(
                self.base.file(),
                self.path(),
                &mut buf[done..],
                offset + done as u64,
            )?;
        }
        Ok(done)
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        // Inside the mapping this is already allocated; past it, writes go through pwrite.
        self.base.allocate(offset, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        let _serial = self.sync_lock.lock();
        self.base.check_sync()?;
        let dirty = self.dirty.lock().take();
        if let (Some((start, end)), Some(map)) = (dirty, &self.map) {
            map.flush_range(start, end - start).map_err(|e| {
                let err = op_error("msync", self.path(), Some(start as u64), e);
                self.base.poison_sync(&err);
                err
            })?;
        }
        if self.fd_dirty.swap(false, Ordering::AcqRel) {
            fs::fdatasync(self.base.file(), self.path())
                .inspect_err(|e| self.base.poison_sync(e))?;
        } else if dirty.is_none() {
            // Nothing written through this handle since the last sync; still sync, since
            // another handle (or the size set by preallocation) may have dirtied the file.
            fs::fdatasync(self.base.file(), self.path())
                .inspect_err(|e| self.base.poison_sync(e))?;
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.base.len()
    }

    fn next_data(&self, offset: u64) -> io::Result<Option<std::ops::Range<u64>>> {
        self.base.next_data(offset)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Reader-writer locks over byte ranges of one mapping: an exclusive (write) range waits for
/// every overlapping holder, a shared (read) range for overlapping exclusive ones. Disjoint
/// ranges never wait; the cost is one uncontended mutex round trip per access.
#[derive(Debug, Default)]
pub(crate) struct RangeLocks {
    state: Mutex<RangeState>,
    released: Condvar,
}

#[derive(Debug, Default)]
struct RangeState {
    held: Vec<Held>,
    next_id: u64,
    waiters: usize,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    id: u64,
    start: usize,
    end: usize,
    exclusive: bool,
}

impl RangeLocks {
    /// Locks `[start, end)`; the guard unlocks.
    pub(crate) fn lock(&self, start: usize, end: usize, exclusive: bool) -> RangeGuard<'_> {
        let mut state = self.state.lock();
        while state
            .held
            .iter()
            .any(|h| h.start < end && start < h.end && (exclusive || h.exclusive))
        {
            state.waiters += 1;
            self.released.wait(&mut state);
            state.waiters -= 1;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.held.push(Held {
            id,
            start,
            end,
            exclusive,
        });
        RangeGuard { locks: self, id }
    }
}

/// A held range of [`RangeLocks`].
#[derive(Debug)]
pub(crate) struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    id: u64,
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.locks.state.lock();
        if let Some(i) = state.held.iter().position(|h| h.id == self.id) {
            state.held.swap_remove(i);
        }
        if state.waiters > 0 {
            self.locks.released.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[test]
    fn range_locks_exclude_only_conflicting_overlaps() {
        let locks = RangeLocks::default();
        let _a = locks.lock(0, 10, false);
        let _b = locks.lock(5, 15, false); // readers share
        let _c = locks.lock(20, 30, true); // disjoint writer
        let entered = AtomicUsize::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let _w = locks.lock(8, 12, true); // overlaps both readers
                entered.fetch_add(1, Ordering::SeqCst);
            });
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(
                entered.load(Ordering::SeqCst),
                0,
                "writer got in past readers"
            );
            drop(_a);
            drop(_b);
        });
        assert_eq!(entered.load(Ordering::SeqCst), 1);
    }
}
