//! The mmap backend: each file is mapped shared, read-write, over the length it has when created
//! or opened. Writes copy into the mapping, reads go through the descriptor (`pread`, the same
//! page cache), and a sync is the descriptor's `fdatasync`, which writes back the pages stores
//! dirtied as well as those written through the descriptor, whichever handle wrote them (what
//! `msync(MS_SYNC)` of a range would do, for the whole file). Bytes past the mapping (the file
//! grew after it was mapped) go through `pwrite`/`pread`.
//!
//! An append costs a copy instead of a system call; a page costs one fault when it is first
//! written, so a write of 16 KiB or more goes through `pwrite` instead. The mapping is advised
//! `MADV_RANDOM`: without it, each write fault in a sparse or freshly allocated file reads
//! (zero-fills) a whole readahead window around the page, which made appends three times slower
//! (BENCHMARKS.md, "The mmap backend").
//!
//! # Soundness
//!
//! No reference into the mapping is ever created: bytes move with raw-pointer copies only. Two
//! accesses to the same bytes from two threads, one of them a write, would still be a data race
//! (undefined behaviour), and a `pread` racing a copy could return half of it, so each file
//! keeps a small range lock: a write excludes every overlapping access, a read excludes
//! overlapping writes. Callers that keep to disjoint ranges, as a WAL does, never wait.
//!
//! What the type system cannot check is left to the owner of the directory: nothing else may
//! truncate a mapped file (the process would get `SIGBUS`). Files are sparse, as with the other
//! backends, but a store never lands in a hole: a store into a hole of a mapping cannot report a
//! full disk (the kernel raises `SIGBUS`), so each file remembers which 2 MiB granules of its
//! mapping it has allocated whole (by [`SegmentFile::allocate`], which widens a claim to whole
//! granules, or by its own `fallocate` before the first store or descriptor write into a
//! granule), and a full disk fails that `fallocate` with `StorageFull` before anything is
//! stored; space claimed before the disk filled still takes stores. Two kinds of file system
//! still turn a full disk into `SIGBUS`: one without `fallocate` (nothing can be allocated
//! ahead), and a copy-on-write one (btrfs, ZFS, bcachefs: writing a block again needs new space,
//! which `fallocate` does not reserve). Granules are as large as the largest page-cache folio
//! where that exceeds 2 MiB (see `granule_shift`). An I/O error while writing pages back
//! surfaces at the next sync; a device error while reading is an error of the read. A device
//! error while *faulting in* a page that holds data (one written earlier and since evicted, then written
//! again) still raises `SIGBUS`, and so does a store after the file system turned read-only on
//! an error (where `pwrite` would return `EROFS`): that is the price of this backend, and why it
//! is not the default. One more: after a failed sync the pages whose write-back failed stay in
//! the page cache while the file is mapped (`POSIX_FADV_DONTNEED` passes mapped pages by); the
//! handle's drop unmaps and drops them, but a process killed first leaves them cached, marked
//! clean, and the next process reads them as data, which its syncs then count durable though
//! the device never got them. The other backends drop those pages when the sync fails.
//!
//! It suits unsynced schedules. A sync write-protects the pages it wrote back, so the next store
//! into each faults again: a 4 KiB write and sync took 260 µs here against 106 µs with `pwrite`
//! (BENCHMARKS.md, "The mmap backend").

use std::any::Any;
use std::fs::File;
use std::io::{self, IoSlice};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{Advice, MmapRaw};
use parking_lot::{Condvar, Mutex};

use crate::error::{SyncPoison, op_error};
use crate::fs;
use crate::pwrite::PwriteFile;
use crate::storage::{BackendKind, SegmentFile, Storage, WriteOp, distinct_files, submit_each};

/// Writes of at least this many bytes go through `pwrite` rather than the mapping: into fresh
/// pages one system call costs less than a fault per page (256-entry batches, ~190 KiB: 2.3 M
/// entries/s against 1.0 M; BENCHMARKS.md, "The mmap backend").
const PWRITE_FROM: usize = 16 << 10;

/// The mmap backend. See the [module docs](crate::mmap).
#[derive(Debug)]
pub struct MmapStorage {
    poison: Arc<SyncPoison>,
    /// log2 of the granules' size (see [`granule_shift`]).
    granule_shift: u32,
}

impl Default for MmapStorage {
    fn default() -> Self {
        Self {
            poison: Arc::default(),
            granule_shift: granule_shift(),
        }
    }
}

/// log2 of the granule in which a file allocates before storing: 2 MiB, or the largest
/// page-cache folio where that is larger. A store reserves space for its whole folio, so a
/// folio must never span a granule that was not allocated. The largest folio is the kernel's
/// transparent-huge-page PMD size: 2 MiB on x86-64, 512 MiB on arm64 with 64 KiB pages.
fn granule_shift() -> u32 {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|n| n.is_power_of_two())
        .map_or(Granules::SHIFT, |n| n.trailing_zeros().max(Granules::SHIFT))
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
            let map = MmapRaw::map_raw(&file).map_err(|e| op_error("mmap", path, Some(0), e))?;
            map.advise(Advice::Random)
                .map_err(|e| op_error("madvise", path, Some(0), e))?;
            Some(map)
        };
        let map_len = map.as_ref().map_or(0, MmapRaw::len);
        Ok(Arc::new(MmapFile {
            base: PwriteFile::new(file, path, Arc::clone(&self.poison)),
            map,
            allocated: Granules::with_shift(map_len, self.granule_shift),
            ranges: RangeLocks::default(),
        }))
    }
}

impl Storage for MmapStorage {
    fn kind(&self) -> BackendKind {
        BackendKind::Mmap
    }

    fn create(&self, path: &Path, len: u64) -> io::Result<Arc<dyn SegmentFile>> {
        let file = fs::create_file(path, len)?;
        self.poison.forget(path);
        self.wrap(file, path).inspect_err(|_| {
            // Keep "a failed create leaves nothing behind".
            let _ = std::fs::remove_file(path);
        })
    }

    /// Read-only handles read with `pread`, as every handle of this backend does: a shared
    /// writable mapping needs a writable file, and a reader needs no mapping.
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        // This instance's sync failures hold for it too, as for every handle of the instance.
        let file = fs::open_file_read(path)?;
        Ok(Arc::new(PwriteFile::new(
            file,
            path,
            Arc::clone(&self.poison),
        )))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let file = fs::open_file(path)?;
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
    /// Which granules of the mapping are allocated on disk: only those take stores.
    allocated: Granules,
    ranges: RangeLocks,
}

impl Drop for MmapFile {
    fn drop(&mut self) {
        // A failed sync could not drop the pages whose write-back failed: they were mapped
        // (`POSIX_FADV_DONTNEED` leaves mapped pages). Unmapped now, they go, so that a reopen
        // reads what is on disk instead of those pages, which a new descriptor's sync would
        // not write again (clean, their error already reported) yet recovery would count as
        // durable.
        if self.base.check_sync().is_err() {
            drop(self.map.take());
            fs::drop_cached(self.base.file(), self.path());
        }
    }
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

    /// Allocates on disk the granules of `[start, end)` (inside the mapping, not empty) that
    /// this handle has not seen allocated, before any store lands there: a full disk fails this
    /// `fallocate` as an error, where a store into a hole would raise `SIGBUS`.
    fn ensure_allocated(&self, start: usize, end: usize) -> io::Result<()> {
        let Some((from, to)) = self.allocated.missing(start, end) else {
            return Ok(());
        };
        self.base.allocate(from as u64, (to - from) as u64)?;
        self.allocated.mark(from, to);
        Ok(())
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
        if total >= PWRITE_FROM {
            // The granules first, as for a store: `pwrite` would report a full disk itself,
            // but would leave its granules partly allocated, and a later store into one (which
            // allocates the whole granule) could then fail for space that the caller claimed
            // by this write (the engine claims space by writing zeros).
            if let Some((start, len)) = inside {
                self.ensure_allocated(start, start + len)?;
            }
            // Under the exclusive range lock, as a copy would be: no access to these bytes
            // through the mapping overlaps it.
            let _guard = inside.map(|(start, len)| self.ranges.lock(start, start + len, true));
            fs::pwritev_all(self.base.file(), self.path(), bufs, offset)?;
            return Ok(());
        }
        let mut consumed = 0; // bytes of `bufs` copied into the mapping
        if let (Some((start, len)), Some(map)) = (inside, &self.map) {
            self.ensure_allocated(start, start + len)?;
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
        }
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        fs::check_range("mmap read", self.path(), offset, buf.len())?;
        // Through the descriptor, not the mapping: a device error is this read's error (a fault
        // on the mapping would be a SIGBUS), and the descriptor's readahead works. The shared
        // range lock keeps the read from seeing half of an overlapping copy into the mapping.
        let _guard = match (self.split(offset, buf.len()).0, &self.map) {
            (Some((start, len)), Some(_)) => Some(self.ranges.lock(start, start + len, false)),
            _ => None,
        };
        fs::pread_full(self.base.file(), self.path(), buf, offset)
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        // The part in the mapping is widened to whole granules: a store allocates its whole
        // granule first, so a claim that left part of one unallocated could not keep the
        // promise that writes into the claimed range find space (on a nearly full disk the
        // store's `fallocate` would fail after the claim succeeded).
        let Some(claim_end) = offset.checked_add(len) else {
            return self.base.allocate(offset, len); // refuses it, naming the range
        };
        let granules = match self.split(offset, usize::try_from(len).unwrap_or(usize::MAX)) {
            (Some((start, inside)), _) if inside > 0 => {
                self.allocated.missing(start, start + inside)
            }
            _ => None,
        };
        let Some((from, to)) = granules else {
            return self.base.allocate(offset, len);
        };
        let end = claim_end.max(to as u64);
        let start = offset.min(from as u64);
        self.base.allocate(start, end - start)?;
        self.allocated.mark(from, to);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        // `fdatasync` writes back every dirty page of the file: those that stores into the
        // mapping dirtied (a store after the write-back began faults again and dirties its
        // page again) and those written through the descriptor.
        self.base.sync_data()
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

/// Which granules of a mapping of `len` bytes are known to be allocated on disk: a bitmap over
/// aligned granules of 2 MiB or the largest folio (more for mappings over 2^18 granules). A
/// granule is that large because the kernel reserves space for a whole page-cache folio when a
/// store faults one in, and folios are naturally aligned and no larger: a folio a store touches
/// lies inside one granule, allocated whole. A granule is marked only once all of it (up to the
/// end of the mapping) is allocated; nothing clears a mark, since nothing deallocates a range of
/// a file while it is open.
#[derive(Debug)]
struct Granules {
    shift: u32,
    len: usize,
    bits: Box<[AtomicU64]>,
}

impl Granules {
    const MAX_GRANULES: usize = 1 << 18;
    const SHIFT: u32 = 21;

    #[cfg(test)]
    fn new(len: usize) -> Self {
        Self::with_shift(len, Self::SHIFT)
    }

    /// Granules of at least `2^shift` bytes.
    fn with_shift(len: usize, mut shift: u32) -> Self {
        while len.div_ceil(1 << shift) > Self::MAX_GRANULES {
            shift += 1;
        }
        let count = len.div_ceil(1 << shift);
        Self {
            shift,
            len,
            bits: (0..count.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn is_set(&self, granule: usize) -> bool {
        self.bits
            .get(granule / 64)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (granule % 64)) != 0)
    }

    /// Whether every granule that `[start, end)` (not empty) touches is marked.
    #[cfg(test)]
    fn covers(&self, start: usize, end: usize) -> bool {
        self.missing(start, end).is_none()
    }

    /// The unmarked granules that `[start, end)` (not empty) touches, from the first to the
    /// last as one range of whole granules (ending at most at the end of the mapping), or
    /// `None` when all are marked.
    fn missing(&self, start: usize, end: usize) -> Option<(usize, usize)> {
        let mut unmarked =
            (start >> self.shift..=(end - 1) >> self.shift).filter(|&g| !self.is_set(g));
        let first = unmarked.next()?;
        let last = unmarked.next_back().unwrap_or(first);
        Some((
            first << self.shift,
            ((last + 1) << self.shift).min(self.len),
        ))
    }

    /// Marks the granules that `[start, end)`, now allocated, covers whole (a granule cut by
    /// the end of the mapping is whole when the range reaches that end).
    fn mark(&self, start: usize, end: usize) {
        let first = start.div_ceil(1 << self.shift);
        let last = if end >= self.len {
            self.len.div_ceil(1 << self.shift)
        } else {
            end >> self.shift
        };
        for g in first..last {
            if let Some(w) = self.bits.get(g / 64) {
                w.fetch_or(1 << (g % 64), Ordering::Release);
            }
        }
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
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[test]
    fn granules_mark_only_what_is_allocated_whole() {
        // 2 MiB granules up to 512 GiB; longer mappings keep at most 2^18 granules.
        assert_eq!(Granules::new(1 << 30).shift, 21);
        assert_eq!(Granules::new(1 << 39).shift, 21);
        assert_eq!(Granules::new((1 << 39) + 1).shift, 22);
        assert_eq!(Granules::new(0).bits.len(), 0);
        // The arithmetic, on 4 KiB granules for legible numbers.
        let g = Granules::with_shift(10_000, 12); // [0,4096) [4096,8192) [8192,10000)
        assert!(!g.covers(0, 1));
        // A range inside one granule marks nothing; what is missing is whole granules.
        g.mark(100, 4000);
        assert!(!g.covers(100, 4000));
        assert_eq!(g.missing(100, 4000), Some((0, 4096)));
        assert_eq!(g.missing(4095, 4097), Some((0, 8192)));
        g.mark(0, 4096);
        assert!(g.covers(0, 4096));
        assert_eq!(g.missing(0, 4096), None);
        assert!(!g.covers(4000, 4097), "the second granule is not allocated");
        assert_eq!(
            g.missing(4000, 4097),
            Some((4096, 8192)),
            "only the unmarked one"
        );
        // The last granule is cut by the end of the mapping: reaching that end makes it whole.
        assert_eq!(g.missing(9000, 10_000), Some((8192, 10_000)));
        assert_eq!(g.missing(100, 10_000), Some((4096, 10_000)));
        g.mark(8192, 10_000);
        assert_eq!(g.missing(100, 10_000), Some((4096, 8192)));
        assert!(g.covers(8192, 10_000));
        assert!(!g.covers(4096, 8193));
        g.mark(4095, 8193); // covers the middle granule whole
        assert!(g.covers(0, 10_000));
    }

    /// A file whose sync failed through one handle fails to sync through any other of the
    /// instance, read-only ones included.
    #[test]
    fn a_read_only_handle_sees_the_sync_failure_of_another() {
        let dir = tempfile::tempdir().unwrap();
        let storage = MmapStorage::new();
        let path = dir.path().join("poisoned");
        let f = storage.create(&path, 1 << 20).unwrap();
        let file = f.as_any().downcast_ref::<MmapFile>().unwrap();
        file.base
            .poison_sync(&io::Error::from_raw_os_error(libc::EIO));
        assert!(storage.open(&path).unwrap().sync_data().is_err());
        assert!(storage.open_read(&path).unwrap().sync_data().is_err());
    }

    /// A handle whose sync failed drops the file's cached pages when it goes (its mapping
    /// kept them): a reopen reads the disk, not pages that never reached it.
    #[test]
    fn a_handle_whose_sync_failed_drops_the_cached_pages_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let storage = MmapStorage::new();
        let path = dir.path().join("failed");
        let f = storage.create(&path, 4 << 20).unwrap();
        f.write_at(&[9u8; 4096], 8192).unwrap();
        f.sync_data().unwrap();
        let Some(before) = crate::conformance::cached_pages_to_check(&path) else {
            return;
        };
        let file = f.as_any().downcast_ref::<MmapFile>().unwrap();
        file.base
            .poison_sync(&io::Error::from_raw_os_error(libc::EIO));
        assert!(f.sync_data().is_err(), "sticky");
        let mapped = crate::conformance::page_cache(&path).unwrap();
        assert!(mapped.cached > 0, "kept while mapped: {mapped:?}");
        drop(f);
        let after = crate::conformance::page_cache(&path).unwrap();
        assert_eq!(after.cached, 0, "{before:?} -> {after:?}");
    }

    #[test]
    fn large_writes_go_through_the_descriptor_and_stay_coherent_with_stores() {
        let dir = tempfile::tempdir().unwrap();
        let storage = MmapStorage::new();
        let path = dir.path().join("mixed");
        let f = storage.create(&path, 1 << 20).unwrap();
        let large: Vec<u8> = (0..PWRITE_FROM + 100).map(|i| (i % 253) as u8).collect();
        f.write_at(&large, 4096).unwrap();
        // A store into the same pages, through the mapping, lands over the pwritten bytes.
        f.write_at(&[0xEE; 10], 4096 + 50).unwrap();
        f.sync_data().unwrap();
        assert_eq!(dirty_pages(&path), Some(0), "the sync wrote both back");
        let mut expected = large.clone();
        expected[50..60].fill(0xEE);
        let mut back = vec![0; large.len()];
        f.read_exact_at(&mut back, 4096).unwrap();
        assert_eq!(back, expected);
        assert_eq!(
            std::fs::read(&path).unwrap()[4096..4096 + large.len()],
            expected[..]
        );
    }

    /// Dirty pages of the file at `path` in the page cache, or `None` where the kernel lacks
    /// `cachestat(2)`.
    fn dirty_pages(path: &Path) -> Option<u64> {
        crate::conformance::page_cache(path).map(|s| s.dirty)
    }

    /// A sync writes back what any handle of the file wrote, through its mapping or its
    /// descriptor, not only what its own handle stored.
    #[test]
    fn a_sync_writes_back_what_every_handle_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let storage = MmapStorage::new();
        let path = dir.path().join("two");
        let a = storage.create(&path, 4 << 20).unwrap();
        let b = storage.open(&path).unwrap();
        a.write_at(b"x", 0).unwrap();
        b.write_at(&[7; 100], 3 << 20).unwrap();
        b.write_at(&[8; PWRITE_FROM], 2 << 20).unwrap();
        let Some(before) = dirty_pages(&path) else {
            crate::conformance::cannot_check("no cachestat(2) on this kernel");
            return;
        };
        assert!(before >= 3, "{before} dirty pages");
        a.sync_data().unwrap();
        assert_eq!(dirty_pages(&path), Some(0));
    }

    #[test]
    fn a_store_lands_only_in_granules_allocated_first() {
        const G: usize = 2 << 20;
        let dir = tempfile::tempdir().unwrap();
        let storage = MmapStorage::new();
        let path = dir.path().join("sparse");
        let f = storage.create(&path, 64 << 20).unwrap();
        let file = f.as_any().downcast_ref::<MmapFile>().unwrap();
        // Created sparse: a mapped file costs what is written, as with the other backends.
        assert_eq!(std::fs::metadata(&path).unwrap().blocks(), 0);
        let at = 16 * G - 100;
        assert!(!file.allocated.covers(at, at + 200));
        f.write_at(&[7; 200], at as u64).unwrap();
        // The store crossed into a second granule: both were allocated before it.
        assert!(file.allocated.covers(15 * G, 17 * G));
        assert!(!file.allocated.covers(17 * G, 17 * G + 1));
        // `allocate` allocates and marks whole granules, also for a claim of part of one, so
        // stores into claimed space need no `fallocate` of their own, which could fail.
        f.allocate(G as u64, G as u64).unwrap();
        f.allocate((3 * G) as u64, 4096).unwrap();
        assert!(file.allocated.covers(G, 2 * G));
        assert!(file.allocated.covers(3 * G, 4 * G));
        assert!(!file.allocated.covers(4 * G, 4 * G + 1));
        f.sync_data().unwrap();
        let blocks = std::fs::metadata(&path).unwrap().blocks() * 512;
        let expected = 4 * G as u64; // two granules stored into, and two claimed
        assert!(
            (expected..expected + (64 << 10)).contains(&blocks),
            "allocated {blocks} bytes"
        );
        let mut back = [0; 200];
        f.read_exact_at(&mut back, at as u64).unwrap();
        assert_eq!(back, [7; 200]);
        // Reopened, the handle knows of nothing allocated, and allocates again before storing.
        drop(f);
        let f = storage.open(&path).unwrap();
        let file = f.as_any().downcast_ref::<MmapFile>().unwrap();
        assert!(!file.allocated.covers(at, at + 1));
        f.write_at(&[8; 10], (at + 200) as u64).unwrap();
        assert!(file.allocated.covers(16 * G, 17 * G));
        assert!(
            !file.allocated.covers(at, at + 1),
            "only the granule stored into"
        );
    }

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
