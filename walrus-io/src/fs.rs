//! Real-file-system plumbing shared by the `pwrite`, io_uring and mmap backends: creating with
//! preallocation, the namespace operations, and complete positional reads and writes with
//! errors that name path and offset.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, IoSlice};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use rustix::io::Errno;
use std::path::{Path, PathBuf};

use crate::error::{op_error, write_zero};

/// Most iovecs one `pwritev(2)` accepts (Linux `UIO_MAXIOV`).
pub(crate) const IOV_MAX: usize = 1024;

/// Vectored writes at most this long are copied into one buffer and written with one
/// `pwrite(2)`: the kernel's iovec handling costs more than the copy. On the development
/// machine (2 threads appending, each to its own file) one `pwrite` of header and payload ran
/// 15 % faster than a two-buffer `pwritev` at 100 bytes, 5–8 % at 700 bytes, 2–4 % at 2–8 KB,
/// and no faster at 16 KB (docs/BENCHMARKS.md).
const COALESCE_MAX: usize = 8 << 10;

/// Largest offset the kernel accepts (`off_t` is signed).
pub(crate) fn check_range(
    op: &'static str,
    path: &Path,
    offset: u64,
    len: usize,
) -> io::Result<()> {
    let end = offset.checked_add(len as u64);
    if end.is_some_and(|end| end <= i64::MAX as u64) {
        Ok(())
    } else {
        Err(op_error(
            op,
            path,
            Some(offset),
            io::Error::new(
                ErrorKind::InvalidInput,
                "range ends past the largest file offset",
            ),
        ))
    }
}

/// Creates `path` (must not exist) with length `len`, sparse: no space is allocated until
/// [`allocate`] or a write claims it. Removes the file again if setting the length fails, so a
/// failed create leaves nothing behind.
pub(crate) fn create_file(path: &Path, len: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| op_error("create", path, None, e))?;
    if let Err(e) = file
        .set_len(len)
        .map_err(|e| op_error("ftruncate", path, Some(len), e))
    {
        drop(file);
        // Best effort: the caller gets the length error, which is the one that matters.
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(file)
}

/// Allocates `[offset, offset + len)` with `fallocate(2)`: keeps existing data, extends the size
/// to `offset + len` if shorter, and afterwards a write into the range cannot fail for lack of
/// space. Where the file system cannot allocate, only the size is extended (sparse).
pub(crate) fn allocate(file: &File, path: &Path, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let fits = offset
        .checked_add(len)
        .is_some_and(|end| i64::try_from(end).is_ok());
    if !fits {
        return Err(op_error(
            "fallocate",
            path,
            Some(offset),
            io::Error::new(
                ErrorKind::InvalidInput,
                "range ends past the largest file offset",
            ),
        ));
    };
    loop {
        match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), offset, len) {
            Ok(()) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(Errno::OPNOTSUPP | Errno::NOSYS) => {
                let end = offset + len;
                if file
                    .metadata()
                    .map_err(|e| op_error("fstat", path, None, e))?
                    .len()
                    < end
                {
                    file.set_len(end)
                        .map_err(|e| op_error("ftruncate", path, Some(end), e))?;
                }
                return Ok(());
            }
            Err(e) => return Err(op_error("fallocate", path, Some(offset), e.into())),
        }
    }
}

/// Opens an existing file for reading and writing.
pub(crate) fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| op_error("open", path, None, e))
}

/// Opens `path` for reading only: a handle that cannot change the file.
pub(crate) fn open_file_read(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| op_error("open", path, None, e))
}

pub(crate) fn remove_file(path: &Path) -> io::Result<()> {
    fs::remove_file(path).map_err(|e| op_error("remove", path, None, e))
}

pub(crate) fn list_dir(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| op_error("list", dir, None, e))? {
        let entry = entry.map_err(|e| op_error("list", dir, None, e))?;
        let file_type = entry
            .file_type()
            .map_err(|e| op_error("list", &entry.path(), None, e))?;
        if file_type.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

pub(crate) fn create_dir_all(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir).map_err(|e| op_error("create_dir_all", dir, None, e))
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    let handle = File::open(dir).map_err(|e| op_error("open dir", dir, None, e))?;
    handle
        .sync_all()
        .map_err(|e| op_error("fsync dir", dir, None, e))
}

pub(crate) fn file_len(file: &File, path: &Path) -> io::Result<u64> {
    Ok(file
        .metadata()
        .map_err(|e| op_error("fstat", path, None, e))?
        .len())
}

/// Drops the file's clean pages from the page cache (`posix_fadvise(DONTNEED)`), after a failed
/// sync: Linux marks the pages whose write-back failed clean, so they would go on being read,
/// by this process or the next (whose own sync, on a descriptor opened after the error, does
/// not report it), as if they were on disk. Dropped, a read gets what the disk holds. Best
/// effort: a failure is logged (the sync's error is what the caller gets).
pub(crate) fn drop_cached(file: &File, path: &Path) {
    // SAFETY: posix_fadvise takes a file descriptor we own (borrowed from `file`, open for the
    // whole call) and plain integers; it touches no memory of ours.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        tracing::warn!(file = %path.display(), errno = rc,
            "could not drop the cached pages of a file whose sync failed");
    }
}

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: starts write-back of the range's dirty pages
/// without waiting for it. Without a wait flag the call checks no earlier write-back error, so
/// it cannot take one away from the next `fdatasync`. But the write-back it starts can fail
/// then and there (`EIO`, `ENOSPC` from a delayed allocation), and that answer may be the
/// only report of it: `failed` hears of it, to make the next sync fail too.
pub(crate) fn start_write_back(
    file: &File,
    path: &Path,
    offset: u64,
    len: u64,
    failed: impl FnOnce(&io::Error),
) -> io::Result<()> {
    let (Ok(off), Ok(n)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return Err(op_error(
            "sync_file_range",
            path,
            Some(offset),
            io::Error::new(
                ErrorKind::InvalidInput,
                "range past the largest file offset",
            ),
        ));
    };
    loop {
        // SAFETY: sync_file_range takes a file descriptor we own (borrowed from `file`, open
        // for the whole call) and plain integers; it touches no memory of ours.
        let rc =
            unsafe { libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => {}
            // Not every file system has it; it is only a hint.
            Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::ESPIPE) => return Ok(()),
            Some(libc::EIO | libc::ENOSPC | libc::EDQUOT) => {
                let err = op_error("sync_file_range", path, Some(offset), err);
                failed(&err);
                return Err(err);
            }
            _ => return Err(op_error("sync_file_range", path, Some(offset), err)),
        }
    }
}

pub(crate) fn fdatasync(file: &File, path: &Path) -> io::Result<()> {
    file.sync_data()
        .map_err(|e| op_error("fdatasync", path, None, e))
}

/// `pwrite(2)` until all of `buf` is written.
pub(crate) fn pwrite_all(
    file: &File,
    path: &Path,
    mut buf: &[u8],
    mut offset: u64,
) -> io::Result<()> {
    check_range("pwrite", path, offset, buf.len())?;
    while !buf.is_empty() {
        match file.write_at(buf, offset) {
            Ok(0) => return Err(write_zero("pwrite", path, offset, buf.len())),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(op_error("pwrite", path, Some(offset), e)),
        }
    }
    Ok(())
}

/// `pwritev(2)` until all of `bufs` is written, at most [`IOV_MAX`] buffers per call; a short
/// run of buffers (at most [`COALESCE_MAX`] bytes) is copied into one and written with `pwrite`.
pub(crate) fn pwritev_all(
    file: &File,
    path: &Path,
    bufs: &[IoSlice<'_>],
    offset: u64,
) -> io::Result<()> {
    match bufs {
        [] => return Ok(()),
        [one] => return pwrite_all(file, path, one, offset),
        _ => {}
    }
    let total = total_len(bufs);
    if total <= COALESCE_MAX {
        let mut one = Vec::with_capacity(total);
        for b in bufs {
            one.extend_from_slice(b);
        }
        return pwrite_all(file, path, &one, offset);
    }
    check_range("pwritev", path, offset, total)?;
    let mut owned: Vec<IoSlice<'_>> = bufs.iter().filter(|b| !b.is_empty()).copied().collect();
    let mut rest: &mut [IoSlice<'_>] = &mut owned;
    let mut offset = offset;
    while !rest.is_empty() {
        let count = rest.len().min(IOV_MAX);
        let n = match rustix::io::pwritev(file, &rest[..count], offset) {
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(op_error("pwritev", path, Some(offset), e.into())),
        };
        if n == 0 {
            let remaining = rest.iter().map(|b| b.len()).sum();
            return Err(write_zero("pwritev", path, offset, remaining));
        }
        offset += n as u64;
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// `pread(2)` until `buf` is full or the file ends; returns the bytes read.
pub(crate) fn pread_full(
    file: &File,
    path: &Path,
    buf: &mut [u8],
    offset: u64,
) -> io::Result<usize> {
    check_range("pread", path, offset, buf.len())?;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(op_error("pread", path, Some(offset + done as u64), e)),
        }
    }
    Ok(done)
}

/// `lseek(SEEK_DATA)` then `lseek(SEEK_HOLE)`: the next range at or after `offset` holding data,
/// `None` in a final hole. File systems without hole reporting answer "all data".
pub(crate) fn seek_data(
    file: &File,
    path: &Path,
    offset: u64,
) -> io::Result<Option<std::ops::Range<u64>>> {
    let Some(start) = seek(file, path, offset, Whence::Data)? else {
        return Ok(None);
    };
    let end = seek(file, path, start, Whence::Hole)?.unwrap_or(u64::MAX);
    Ok(Some(start..end.max(start)))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Whence {
    Data,
    Hole,
}

fn seek(file: &File, path: &Path, offset: u64, whence: Whence) -> io::Result<Option<u64>> {
    if i64::try_from(offset).is_err() {
        return Ok(None);
    }
    let pos = match whence {
        Whence::Data => rustix::fs::SeekFrom::Data(offset),
        Whence::Hole => rustix::fs::SeekFrom::Hole(offset),
    };
    match rustix::fs::seek(file, pos) {
        Ok(at) => Ok(Some(at)),
        Err(Errno::NXIO) => Ok(None),
        // No hole reporting: all data.
        Err(Errno::INVAL | Errno::OPNOTSUPP) => Ok(Some(if whence == Whence::Hole {
            u64::MAX
        } else {
            offset
        })),
        Err(e) => Err(op_error("lseek", path, Some(offset), e.into())),
    }
}

/// The namespace methods of [`Storage`](crate::Storage) that every real-file-system backend
/// shares (each backend has a `poison: Arc<SyncPoison>` registry that forgets removed paths).
macro_rules! real_fs_namespace {
    () => {
        fn remove(&self, path: &std::path::Path) -> std::io::Result<()> {
            crate::fs::remove_file(path)?;
            self.poison.forget(path);
            Ok(())
        }

        fn list(&self, dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
            crate::fs::list_dir(dir)
        }

        fn create_dir_all(&self, dir: &std::path::Path) -> std::io::Result<()> {
            crate::fs::create_dir_all(dir)
        }

        fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
            crate::fs::sync_dir(dir)
        }
    };
}
pub(crate) use real_fs_namespace;

/// `create` and `open` of a real-file-system backend whose files need no setup beyond
/// `self.wrap(file, path)`.
macro_rules! real_fs_create_open {
    () => {
        fn create(
            &self,
            path: &std::path::Path,
            len: u64,
        ) -> std::io::Result<std::sync::Arc<dyn crate::SegmentFile>> {
            let file = crate::fs::create_file(path, len)?;
            self.poison.forget(path);
            Ok(self.wrap(file, path))
        }

        fn open(
            &self,
            path: &std::path::Path,
        ) -> std::io::Result<std::sync::Arc<dyn crate::SegmentFile>> {
            Ok(self.wrap(crate::fs::open_file(path)?, path))
        }

        fn open_read(
            &self,
            path: &std::path::Path,
        ) -> std::io::Result<std::sync::Arc<dyn crate::SegmentFile>> {
            Ok(self.wrap(crate::fs::open_file_read(path)?, path))
        }
    };
}
pub(crate) use real_fs_create_open;

/// Bytes in `bufs`, all together.
pub(crate) fn total_len(bufs: &[IoSlice<'_>]) -> usize {
    bufs.iter().map(|b| b.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs of buffers on both sides of [`COALESCE_MAX`] (one copied into a single `pwrite`, one
    /// written with `pwritev`) land back to back.
    #[test]
    fn short_and_long_vectored_writes_land_back_to_back() {
        let dir = tempfile::tempdir().unwrap();
        let (path, file) = new_file(dir.path());
        for (total, offset) in [(COALESCE_MAX, 512u64), (COALESCE_MAX + 1, 64 << 10)] {
            let bytes: Vec<u8> = (0..total).map(|i| (i * 7 + total) as u8).collect();
            let (a, rest) = bytes.split_at(3);
            let (b, c) = rest.split_at(total / 2);
            let bufs = [
                IoSlice::new(a),
                IoSlice::new(&[]),
                IoSlice::new(b),
                IoSlice::new(c),
            ];
            pwritev_all(&file, &path, &bufs, offset).unwrap();
            let mut back = vec![0u8; total];
            assert_eq!(pread_full(&file, &path, &mut back, offset).unwrap(), total);
            assert_eq!(back, bytes, "{total} bytes at {offset}");
        }
    }

    /// A new file `f` in `dir`, open for reading and writing.
    fn new_file(dir: &Path) -> (std::path::PathBuf, File) {
        let path = dir.join("f");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        (path, file)
    }

    /// What a failed sync does to the file's pages: clean ones leave the cache, so a read gets
    /// the disk's bytes (the written-back ones here; after a failed write-back, what the disk
    /// really holds).
    #[test]
    fn drop_cached_empties_the_cache_of_clean_pages() {
        let dir = tempfile::tempdir().unwrap();
        let (path, file) = new_file(dir.path());
        file.write_all_at(&vec![5u8; 1 << 20], 0).unwrap();
        fdatasync(&file, &path).unwrap();
        let Some(before) = crate::conformance::cached_pages_to_check(&path) else {
            return;
        };
        drop_cached(&file, &path);
        let after = crate::conformance::page_cache(&path).unwrap();
        assert_eq!(after.cached, 0, "{before:?} -> {after:?}");
        let mut back = vec![0u8; 1 << 20];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back.iter().all(|&b| b == 5));
    }
}
