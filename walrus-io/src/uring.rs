//! The io_uring backend.
//!
//! The ring is used where it pays: a [`Storage::submit`] batch (contiguous ops merged into one
//! vectored entry per run) and its syncs go to the kernel together. Single operations go
//! straight to the kernel (`pwrite`/`pread`/`fdatasync`) unless
//! [`UringOptions::single_ops_on_ring`] is set: on ext4 every buffered ring write is handed to a
//! kernel worker thread, an order of magnitude slower than `pwrite` for one write.
//!
//! Each [`UringStorage`] owns a small pool of long-lived rings: a call takes an idle ring (or
//! creates one, up to [`UringOptions::max_rings`]; beyond that it waits), runs its I/O to
//! completion and puts the ring back. So rings are created once per concurrent caller, never per
//! call, and a ring is only ever used by one thread at a time.
//!
//! A [`Storage::submit`] batch whose writes and syncs fit in the submission queue goes to the
//! kernel in one `io_uring_enter`: each file's writes form an `IO_LINK` chain ending in its
//! `fdatasync`, so the sync starts only after all of that file's writes completed. Larger
//! batches are cut into queue-sized rounds of writes, then a round of syncs, which keeps the
//! rule "sync after all writes". Short writes and reads are resubmitted for the remainder (a
//! short write also severs its chain: the cancelled rest is resubmitted, the sync redone after);
//! `EINTR`/`EAGAIN` are retried; any other completion error becomes an `io::Error` naming the
//! file and offset.
//!
//! Buffers handed to the kernel are borrowed from the caller, so no call returns — or unwinds —
//! while any of its entries is in flight (a guard aborts the process rather than unwind past
//! them). A round never has more entries in flight than the submission queue holds, and the
//! completion queue is twice that size, so the completion queue cannot overflow.

use std::any::Any;
use std::fmt;
use std::io::{self, ErrorKind, IoSlice};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use io_uring::{IoUring, Probe, opcode, squeue, types};
use parking_lot::{Condvar, Mutex};

use crate::error::{SyncPoison, errno_error, op_error, write_zero};
use crate::fs::{self, IOV_MAX};
use crate::pwrite::PwriteFile;
use crate::storage::{
    BackendKind, SegmentFile, Storage, WriteOp, coalesced, distinct_files, submit_each,
};

/// The most one read or write moves (Linux `MAX_RW_COUNT`); longer ones complete short and are
/// resubmitted.
const MAX_RW: usize = 0x7fff_f000;

/// Rounds in a row without any progress (only retryable errors) before giving up.
const MAX_FRUITLESS_ROUNDS: u32 = 10_000;

/// Tuning of the io_uring backend.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UringOptions {
    /// Submission queue entries per ring (a power of two; the kernel rounds up). A batch with
    /// more writes than this is cut into several submissions.
    pub ring_entries: u32,
    /// Most rings one backend instance creates; concurrent callers beyond this wait for a ring.
    pub max_rings: usize,
    /// Whether single operations (`write_at`, `write_vectored_at`, `read_at`, `sync_data`) go
    /// through the ring too. Off by default: one operation is one system call either way, and
    /// on file systems without async buffered writes (ext4, as of Linux 6.18) the kernel hands
    /// every buffered ring write to a worker thread, which made a 4 KiB write cost ~25–90 µs
    /// instead of ~2 µs with `pwrite`. Turn it on for O_DIRECT-like setups or to exercise the
    /// ring everywhere.
    pub single_ops_on_ring: bool,
}

impl Default for UringOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            ring_entries: 256,
            max_rings: (2 * cores).clamp(2, 64),
            single_ops_on_ring: false,
        }
    }
}

/// The io_uring backend. See the [module docs](crate::uring).
#[derive(Debug)]
pub struct UringStorage {
    rings: Arc<RingPool>,
    poison: Arc<SyncPoison>,
    single_ops_on_ring: bool,
}

impl UringStorage {
    /// A backend with default options; fails (typically `Unsupported` or `PermissionDenied`) if
    /// this kernel cannot create a ring or lacks an opcode the backend needs.
    pub fn new() -> io::Result<Self> {
        Self::with_options(&UringOptions::default())
    }

    /// A backend with `options`. Creating it probes the kernel: it creates the first ring and
    /// checks, through the io_uring probe, that `WRITE`, `WRITEV`, `READ` and `FSYNC` are
    /// supported. That ring is kept for the first caller.
    pub fn with_options(options: &UringOptions) -> io::Result<Self> {
        let entries = options.ring_entries.max(2);
        let ring = new_ring(entries)?;
        probe(&ring)?;
        let rings = RingPool {
            entries,
            max: options.max_rings.max(1),
            state: Mutex::new(PoolState {
                idle: vec![ring],
                live: 1,
            }),
            returned: Condvar::new(),
            created: AtomicU64::new(1),
            enters: AtomicU64::new(0),
        };
        Ok(Self {
            rings: Arc::new(rings),
            poison: Arc::default(),
            single_ops_on_ring: options.single_ops_on_ring,
        })
    }

    /// How many rings this instance has created so far: at most the peak number of concurrent
    /// callers (and [`UringOptions::max_rings`]), however many calls were made.
    pub fn rings_created(&self) -> u64 {
        self.rings.created.load(Ordering::Relaxed)
    }

    /// How many `io_uring_enter` system calls this instance has made: a batch that fits in the
    /// ring, with its syncs, takes one.
    pub fn enter_calls(&self) -> u64 {
        self.rings.enters.load(Ordering::Relaxed)
    }

    fn wrap(&self, file: std::fs::File, path: &Path) -> Arc<dyn SegmentFile> {
        Arc::new(UringFile {
            base: PwriteFile::new(file, path, Arc::clone(&self.poison)),
            rings: Arc::clone(&self.rings),
            single_ops_on_ring: self.single_ops_on_ring,
        })
    }
}

impl Storage for UringStorage {
    fn kind(&self) -> BackendKind {
        BackendKind::IoUring
    }

    crate::fs::real_fs_create_open!();

    crate::fs::real_fs_namespace!();

    fn submit(&self, writes: &[WriteOp<'_>], then_sync: bool) -> io::Result<()> {
        let files = distinct_files(writes);
        let mut ours = Vec::with_capacity(files.len());
        for file in &files {
            match file.as_any().downcast_ref::<UringFile>() {
                Some(f) => ours.push(f),
                None => {
                    // A file of another backend: no raw fd to hand the ring, so write it the
                    // portable way (sticky sync errors are still checked by its own sync_data).
                    return submit_each(writes, then_sync, true);
                }
            }
        }
        if then_sync {
            for f in &ours {
                f.base.check_sync()?;
            }
        }
        let runs = coalesced(writes);
        let mut ios = Vec::with_capacity(runs.len());
        for run in &runs {
            // Always some: every file was recognised above.
            if let Some(file) = run.file.as_any().downcast_ref::<UringFile>() {
                ios.extend(Io::write(file, &run.bufs, run.offset)?);
            }
        }
        let syncs = if then_sync { ours } else { Vec::new() };
        self.rings.acquire()?.run(&mut ios, &syncs)
    }
}

/// A file of the [`UringStorage`] backend. Batches go through the backend's rings; single
/// operations too if [`UringOptions::single_ops_on_ring`], else straight to the kernel.
#[derive(Debug)]
pub struct UringFile {
    base: PwriteFile,
    rings: Arc<RingPool>,
    single_ops_on_ring: bool,
}

impl SegmentFile for UringFile {
    fn path(&self) -> &Path {
        self.base.path()
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_vectored_at(&[IoSlice::new(buf)], offset)
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        if !self.single_ops_on_ring {
            return self.base.write_vectored_at(bufs, offset);
        }
        let mut ios: Vec<Io<'_>> = Io::write(self, bufs, offset)?.into_iter().collect();
        if ios.is_empty() {
            return Ok(());
        }
        self.rings.acquire()?.run(&mut ios, &[])
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if !self.single_ops_on_ring {
            return self.base.read_at(buf, offset);
        }
        fs::check_range("io_uring read", self.path(), offset, buf.len())?;
        if buf.is_empty() {
            return Ok(0);
        }
        let mut ios = [Io::read(self, buf, offset)];
        self.rings.acquire()?.run(&mut ios, &[])?;
        Ok(ios[0].moved)
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.base.allocate(offset, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        if !self.single_ops_on_ring {
            return self.base.sync_data();
        }
        self.base.check_sync()?;
        self.rings.acquire()?.run(&mut [], &[self])
    }

    fn start_write_back(&self, offset: u64, len: u64) -> io::Result<()> {
        self.base.start_write_back(offset, len)
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

/// Creates a ring with `entries` submission slots (and the default twice as many completion
/// slots).
fn new_ring(entries: u32) -> io::Result<IoUring> {
    IoUring::builder()
        .build(entries)
        .map_err(|e| io::Error::new(e.kind(), format!("io_uring_setup({entries} entries): {e}")))
}

/// Checks that the kernel supports every opcode this backend submits.
fn probe(ring: &IoUring) -> io::Result<()> {
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| {
        io::Error::new(
            ErrorKind::Unsupported,
            format!("io_uring probe unavailable (kernel older than 5.6?): {e}"),
        )
    })?;
    let needed = [
        (opcode::Write::CODE, "WRITE"),
        (opcode::Writev::CODE, "WRITEV"),
        (opcode::Read::CODE, "READ"),
        (opcode::Fsync::CODE, "FSYNC"),
    ];
    for (code, name) in needed {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                ErrorKind::Unsupported,
                format!("io_uring lacks opcode {name}"),
            ));
        }
    }
    Ok(())
}

/// The rings of one backend instance.
pub(crate) struct RingPool {
    entries: u32,
    max: usize,
    state: Mutex<PoolState>,
    returned: Condvar,
    created: AtomicU64,
    /// `io_uring_enter` calls, for tests and curiosity.
    enters: AtomicU64,
}

struct PoolState {
    idle: Vec<IoUring>,
    /// Rings in existence: idle plus in use.
    live: usize,
}

impl fmt::Debug for RingPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("RingPool")
            .field("entries", &self.entries)
            .field("max", &self.max)
            .field("idle", &state.idle.len())
            .field("live", &state.live)
            .field("created", &self.created.load(Ordering::Relaxed))
            .finish()
    }
}

impl RingPool {
    /// An idle ring, a new one if none is idle and the cap allows, else waits for one.
    fn acquire(&self) -> io::Result<RingGuard<'_>> {
        self.acquire_with(new_ring)
    }

    /// [`acquire`](Self::acquire), making new rings with `make`. A ring the kernel will not
    /// make (locked-memory limit, file descriptors) fails the call only when no other ring
    /// exists: with one in use, the call waits for it, since concurrency must not fail a call.
    fn acquire_with(&self, make: impl Fn(u32) -> io::Result<IoUring>) -> io::Result<RingGuard<'_>> {
        let mut state = self.state.lock();
        // Set when `make` just failed: no new ring is tried until one was handed back.
        let mut refused = false;
        loop {
            if let Some(ring) = state.idle.pop() {
                return Ok(RingGuard {
                    pool: self,
                    ring: Some(ring),
                });
            }
            if !refused && state.live < self.max {
                state.live += 1;
                drop(state);
                match make(self.entries) {
                    Ok(ring) => {
                        self.created.fetch_add(1, Ordering::Relaxed);
                        return Ok(RingGuard {
                            pool: self,
                            ring: Some(ring),
                        });
                    }
                    Err(e) => {
                        state = self.state.lock();
                        state.live -= 1;
                        if state.live == 0 {
                            drop(state);
                            self.returned.notify_one();
                            return Err(e);
                        }
                        tracing::debug!(error = %e, live = state.live,
                            "io_uring: no new ring; waiting for one in use");
                        // A ring may have come back while `make` ran (its wakeup went to
                        // nobody): look again before waiting.
                        refused = true;
                        continue;
                    }
                }
            }
            self.returned.wait(&mut state);
            refused = false;
        }
    }
}

/// A ring borrowed from the pool; goes back on drop.
struct RingGuard<'p> {
    pool: &'p RingPool,
    ring: Option<IoUring>,
}

impl Drop for RingGuard<'_> {
    fn drop(&mut self) {
        if let Some(ring) = self.ring.take() {
            self.pool.state.lock().idle.push(ring);
            self.pool.returned.notify_one();
        }
    }
}

/// What an [`Io`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IoKind {
    Write,
    Read,
}

/// Where an [`Io`] (or a sync) stands.
#[derive(Debug)]
enum Status {
    Pending,
    Done,
    Failed(io::Error),
}

/// One positional read or write, driven to completion over as many rounds as it takes.
struct Io<'a> {
    file: &'a UringFile,
    kind: IoKind,
    /// File offset of the first byte not yet moved.
    offset: u64,
    /// The buffers; `iov[start..]` is what remains, `iov[start]` possibly advanced.
    iov: Vec<libc::iovec>,
    start: usize,
    /// Bytes moved so far.
    moved: usize,
    status: Status,
}

impl<'a> Io<'a> {
    /// A write of `bufs` at `offset`, or `None` if there is nothing to write.
    fn write(file: &'a UringFile, bufs: &[IoSlice<'a>], offset: u64) -> io::Result<Option<Self>> {
        fs::check_range(
            "io_uring write",
            file.path(),
            offset,
            crate::fs::total_len(bufs),
        )?;
        let iov: Vec<libc::iovec> = bufs
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| libc::iovec {
                iov_base: b.as_ptr().cast_mut().cast(),
                iov_len: b.len(),
            })
            .collect();
        Ok((!iov.is_empty()).then_some(Self {
            file,
            kind: IoKind::Write,
            offset,
            iov,
            start: 0,
            moved: 0,
            status: Status::Pending,
        }))
    }

    /// A read into `buf` at `offset` (`buf` non-empty).
    fn read(file: &'a UringFile, buf: &'a mut [u8], offset: u64) -> Self {
        Self {
            file,
            kind: IoKind::Read,
            offset,
            iov: vec![libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            }],
            start: 0,
            moved: 0,
            status: Status::Pending,
        }
    }

    fn op_name(&self) -> &'static str {
        match self.kind {
            IoKind::Write => "io_uring write",
            IoKind::Read => "io_uring read",
        }
    }

    /// Whether one entry moves all that remains (at most `IOV_MAX` buffers, at most `MAX_RW`
    /// bytes): only such a write may be linked to a sync, which must not run before the rest
    /// of a write that needs more rounds.
    fn fits_one_entry(&self) -> bool {
        let rest = &self.iov[self.start..];
        rest.len() <= IOV_MAX && rest.iter().map(|v| v.iov_len).sum::<usize>() <= MAX_RW
    }

    /// The submission entry for what remains.
    fn entry(&self) -> squeue::Entry {
        let fd = types::Fd(self.file.base.file().as_raw_fd());
        let rest = &self.iov[self.start..];
        match (self.kind, rest) {
            (IoKind::Write, [one]) => {
                opcode::Write::new(fd, one.iov_base.cast_const().cast(), clamp_len(one.iov_len))
                    .offset(self.offset)
                    .build()
            }
            (IoKind::Write, _) => {
                opcode::Writev::new(fd, rest.as_ptr(), rest.len().min(IOV_MAX) as u32)
                    .offset(self.offset)
                    .build()
            }
            (IoKind::Read, _) => {
                let one = &rest[0];
                opcode::Read::new(fd, one.iov_base.cast(), clamp_len(one.iov_len))
                    .offset(self.offset)
                    .build()
            }
        }
    }

    /// Applies a completion; returns whether it was progress (moved bytes or finished).
    fn complete(&mut self, res: i32) -> bool {
        if res < 0 {
            let errno = -res;
            if matches!(errno, libc::EINTR | libc::EAGAIN | libc::ECANCELED) {
                // Interrupted, or cancelled because an earlier link of its chain fell short:
                // resubmit as is.
                return false;
            }
            self.status = Status::Failed(errno_error(
                self.op_name(),
                self.file.path(),
                Some(self.offset),
                errno,
            ));
            return true;
        }
        let mut n = res as usize;
        if n == 0 {
            self.status = match self.kind {
                // End of file: a read returns what it got.
                IoKind::Read => Status::Done,
                IoKind::Write => Status::Failed(write_zero(
                    self.op_name(),
                    self.file.path(),
                    self.offset,
                    self.remaining(),
                )),
            };
            return true;
        }
        self.moved += n;
        self.offset += n as u64;
        while n > 0 {
            let first = &mut self.iov[self.start];
            if n >= first.iov_len {
                n -= first.iov_len;
                self.start += 1;
            } else {
                // SAFETY: `n < iov_len`, so the advanced pointer stays inside the same buffer.
                first.iov_base = unsafe { first.iov_base.cast::<u8>().add(n) }.cast();
                first.iov_len -= n;
                n = 0;
            }
        }
        if self.start == self.iov.len() {
            self.status = Status::Done;
        }
        true
    }

    fn remaining(&self) -> usize {
        self.iov[self.start..].iter().map(|v| v.iov_len).sum()
    }
}

fn clamp_len(len: usize) -> u32 {
    len.min(MAX_RW) as u32
}

/// An operation driven to completion over as many ring rounds as it takes.
trait RingOp {
    fn status(&self) -> &Status;
    fn status_mut(&mut self) -> &mut Status;
    fn entry(&self) -> squeue::Entry;
    /// Records a completion; true if it made progress.
    fn complete(&mut self, res: i32) -> bool;
}

impl RingOp for Io<'_> {
    fn status(&self) -> &Status {
        &self.status
    }

    fn status_mut(&mut self) -> &mut Status {
        &mut self.status
    }

    fn entry(&self) -> squeue::Entry {
        Io::entry(self)
    }

    fn complete(&mut self, res: i32) -> bool {
        Io::complete(self, res)
    }
}

/// A data sync of one file within a run.
struct SyncIo<'a> {
    file: &'a UringFile,
    status: Status,
}

impl RingOp for SyncIo<'_> {
    fn status(&self) -> &Status {
        &self.status
    }

    fn status_mut(&mut self) -> &mut Status {
        &mut self.status
    }

    fn entry(&self) -> squeue::Entry {
        opcode::Fsync::new(types::Fd(self.file.base.file().as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
    }

    fn complete(&mut self, res: i32) -> bool {
        match res {
            0.. => {
                self.status = Status::Done;
                true
            }
            _ if matches!(-res, libc::EINTR | libc::EAGAIN | libc::ECANCELED) => false,
            _ => {
                let err = errno_error("io_uring fdatasync", self.file.path(), None, -res);
                self.file.base.poison_sync(&err);
                self.status = Status::Failed(err);
                true
            }
        }
    }
}

/// Aborts the process if dropped while entries are in flight: the kernel may still read from or
/// write into the caller's buffers, so neither returning nor unwinding past them is sound.
struct InFlight(usize);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0 > 0 {
            eprintln!(
                "walrus-io: {} io_uring entries still in flight while unwinding; aborting",
                self.0
            );
            std::process::abort();
        }
    }
}

impl RingGuard<'_> {
    fn ring(&mut self) -> &mut IoUring {
        // Present from construction until drop.
        self.ring
            .as_mut()
            .unwrap_or_else(|| unreachable!("ring taken before drop"))
    }

    /// Submits every pending op of `ops` in rounds of at most `cap` entries until none is
    /// pending; with `stop_on_error`, returns the first failure as soon as one is known.
    fn drive<T: RingOp>(
        &mut self,
        ops: &mut [T],
        cap: usize,
        stop_on_error: bool,
    ) -> io::Result<()> {
        let mut fruitless = 0;
        loop {
            if stop_on_error
                && let Some(err) = take_first_error(ops.iter_mut().map(RingOp::status_mut))
            {
                return Err(err);
            }
            let pending: Vec<usize> = (0..ops.len())
                .filter(|&i| matches!(ops[i].status(), Status::Pending))
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            let mut progress = false;
            for chunk in pending.chunks(cap) {
                let entries: Vec<squeue::Entry> = chunk
                    .iter()
                    .map(|&i| ops[i].entry().user_data(i as u64))
                    .collect();
                for (user_data, res) in self.round(&entries)? {
                    progress |= ops[user_data as usize].complete(res);
                }
            }
            check_progress(progress, &mut fruitless)?;
        }
    }

    /// Drives `ios` to completion, then syncs `syncs` (each at most once, after all writes).
    /// Returns the first error in `ios` order, else the first sync error.
    fn run(&mut self, ios: &mut [Io<'_>], syncs: &[&UringFile]) -> io::Result<()> {
        let cap = self.ring().params().sq_entries() as usize;
        let mut syncs: Vec<SyncIo<'_>> = syncs
            .iter()
            .map(|&file| SyncIo {
                file,
                status: Status::Pending,
            })
            .collect();

        if !syncs.is_empty() && ios.len() + syncs.len() <= cap && ios.iter().all(Io::fits_one_entry)
        {
            self.linked_round(ios, &mut syncs)?;
        }
        self.drive(ios, cap, true)?;
        self.drive(&mut syncs, cap, false)?;
        match take_first_error(syncs.iter_mut().map(|s| &mut s.status)) {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Everything in one submission: per file, its writes linked in a chain that ends in its
    /// data sync. Whatever a broken chain left undone is finished by the caller's rounds.
    fn linked_round(&mut self, ios: &mut [Io<'_>], syncs: &mut [SyncIo<'_>]) -> io::Result<()> {
        let mut entries = Vec::with_capacity(ios.len() + syncs.len());
        for (j, sync) in syncs.iter().enumerate() {
            for (i, io) in ios.iter().enumerate() {
                if std::ptr::eq(io.file, sync.file) {
                    entries.push(io.entry().user_data(i as u64).flags(squeue::Flags::IO_LINK));
                }
            }
            entries.push(sync.entry().user_data((ios.len() + j) as u64));
        }
        for (user_data, res) in self.round(&entries)? {
            let k = user_data as usize;
            if k < ios.len() {
                ios[k].complete(res);
            } else {
                syncs[k - ios.len()].complete(res);
            }
        }
        Ok(())
    }

    /// Submits `entries` (at most the queue's capacity) and waits for all their completions,
    /// returned as `(user_data, result)`.
    fn round(&mut self, entries: &[squeue::Entry]) -> io::Result<Vec<(u64, i32)>> {
        let pool = self.pool;
        let ring = self.ring();
        let mut done = Vec::with_capacity(entries.len());
        let mut in_flight = InFlight(0);
        let mut queue_full = false;
        {
            let mut sq = ring.submission();
            for entry in entries {
                // SAFETY: every buffer and iovec array the entry points to is borrowed by the
                // caller's `Io`s for the whole of `run`, which does not return (nor unwind, see
                // `InFlight`) before this round reaped the entry's completion; the iovec arrays
                // are not moved or changed while the entry is in flight. The fd belongs to a
                // file borrowed for the same span.
                if unsafe { sq.push(entry) }.is_err() {
                    // Cannot happen: rounds start with an empty queue and carry at most its
                    // capacity. Finish what was pushed, then report.
                    queue_full = true;
                    break;
                }
                in_flight.0 += 1;
            }
        }
        while in_flight.0 > 0 {
            pool.enters.fetch_add(1, Ordering::Relaxed);
            match ring.submit_and_wait(in_flight.0) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    // The ring itself failed with entries in flight: their buffers can never be
                    // released safely.
                    eprintln!("walrus-io: io_uring_enter failed with entries in flight: {e}");
                    std::process::abort();
                }
            }
            for cqe in ring.completion() {
                done.push((cqe.user_data(), cqe.result()));
                in_flight.0 -= 1;
            }
        }
        if queue_full {
            return Err(io::Error::other(
                "io_uring submission queue unexpectedly full",
            ));
        }
        Ok(done)
    }
}

/// The first `Failed` status, taken out (leaving `Done`).
fn take_first_error<'s>(statuses: impl Iterator<Item = &'s mut Status>) -> Option<io::Error> {
    for status in statuses {
        if matches!(status, Status::Failed(_))
            && let Status::Failed(err) = std::mem::replace(status, Status::Done)
        {
            return Some(err);
        }
    }
    None
}

fn check_progress(progress: bool, fruitless: &mut u32) -> io::Result<()> {
    if progress {
        *fruitless = 0;
        return Ok(());
    }
    *fruitless += 1;
    if *fruitless >= MAX_FRUITLESS_ROUNDS {
        return Err(op_error(
            "io_uring",
            Path::new("(ring)"),
            None,
            io::Error::new(
                ErrorKind::TimedOut,
                "no progress: every completion asked for a retry",
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> (tempfile::TempDir, UringStorage, Arc<dyn SegmentFile>) {
        let dir = tempfile::tempdir().unwrap();
        let storage = UringStorage::new().unwrap();
        let file = storage.create(&dir.path().join("f"), 0).unwrap();
        (dir, storage, file)
    }

    /// The kernel refusing one more ring (its locked-memory limit, file descriptors) does not
    /// fail a call while another ring exists: the call waits for that one. With none, it fails.
    #[test]
    fn acquire_waits_when_a_new_ring_cannot_be_made() {
        let Ok(storage) = UringStorage::new() else {
            crate::conformance::cannot_check("no io_uring here");
            return;
        };
        let pool = &*storage.rings;
        let refused =
            |_: u32| -> io::Result<IoUring> { Err(io::Error::from_raw_os_error(libc::ENOMEM)) };
        let held = pool.acquire().unwrap(); // the one ring
        std::thread::scope(|s| {
            let waiter = s.spawn(|| pool.acquire_with(refused).map(drop));
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(
                !waiter.is_finished(),
                "failed, or did not wait for the ring in use"
            );
            drop(held);
            waiter.join().unwrap().unwrap();
        });
        // With no ring left at all, the error is the caller's.
        let only = pool.state.lock().idle.pop().unwrap();
        pool.state.lock().live -= 1;
        let e = pool.acquire_with(refused).map(drop).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOMEM));
        drop(only);
    }

    /// A ring handed back while another caller's `make` was failing is found by that caller
    /// (its wakeup went to nobody): the caller does not wait for a ring that is already idle.
    #[test]
    fn a_ring_returned_while_a_new_one_fails_is_taken() {
        let Ok(storage) = UringStorage::new() else {
            crate::conformance::cannot_check("no io_uring here");
            return;
        };
        let pool = &*storage.rings;
        let held = pool.acquire().unwrap(); // the one ring
        let (making_tx, making_rx) = std::sync::mpsc::channel();
        let (made_tx, made_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let waiter = s.spawn(move || {
                pool.acquire_with(|_| {
                    making_tx.send(()).unwrap();
                    made_rx.recv().unwrap(); // fails only once the ring is back
                    Err(io::Error::from_raw_os_error(libc::ENOMEM))
                })
                .map(drop)
            });
            making_rx.recv().unwrap();
            drop(held);
            made_tx.send(()).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !waiter.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let finished = waiter.is_finished();
            if !finished {
                // Unblock it so that the scope ends, then fail.
                pool.state.lock().idle.push(new_ring(pool.entries).unwrap());
                pool.returned.notify_one();
            }
            assert!(finished, "waited for a ring that was already idle");
            waiter.join().unwrap().unwrap();
        });
        assert_eq!(pool.state.lock().live, 1, "no ring was counted twice");
    }

    /// A write of more buffers than one entry takes needs more rounds, so it is never linked
    /// to its file's sync (which would run before the rest is written); once the rest fits in
    /// one entry it may be. The file holds every buffer after a synced submit.
    #[test]
    fn a_write_too_long_for_one_entry_is_not_linked_to_its_sync() {
        let (_dir, storage, file) = scratch();
        let uring = file.as_any().downcast_ref::<UringFile>().unwrap();
        let pieces: Vec<[u8; 3]> = (0..IOV_MAX + 500).map(|i| [i as u8; 3]).collect();
        let bufs: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
        let mut io = Io::write(uring, &bufs, 0).unwrap().unwrap();
        assert!(!io.fits_one_entry());
        assert!(io.complete((IOV_MAX * 3) as i32));
        assert!(io.fits_one_entry(), "the rest is one entry");
        let short = Io::write(uring, &bufs[..10], 0).unwrap().unwrap();
        assert!(short.fits_one_entry());
        storage
            .submit(&[WriteOp::new(&*file, 0, &bufs)], true)
            .unwrap();
        let mut back = vec![0u8; pieces.len() * 3];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, pieces.concat());
    }

    #[test]
    fn partial_completions_advance_through_the_buffers() {
        let (_dir, _storage, file) = scratch();
        let file = file.as_any().downcast_ref::<UringFile>().unwrap();
        let (a, b, c) = ([1u8; 4], [2u8; 3], [3u8; 5]);
        let bufs = [
            IoSlice::new(&a),
            IoSlice::new(&[]),
            IoSlice::new(&b),
            IoSlice::new(&c),
        ];
        let mut io = Io::write(file, &bufs, 100).unwrap().unwrap();
        assert_eq!(io.iov.len(), 3, "empty buffers are dropped");

        assert!(!io.complete(-libc::EINTR), "EINTR is a retry, not progress");
        assert!(!io.complete(-libc::ECANCELED), "a severed link is a retry");
        assert!(matches!(io.status, Status::Pending));

        assert!(io.complete(6)); // all of a, 2 bytes of b
        assert_eq!(
            (io.start, io.offset, io.moved, io.remaining()),
            (1, 106, 6, 6)
        );
        assert_eq!(io.iov[1].iov_len, 1);
        // SAFETY: test-only read of the pointer `complete` advanced: it must point at b[2].
        assert_eq!(unsafe { *io.iov[1].iov_base.cast::<u8>() }, 2);
        assert!(matches!(io.status, Status::Pending));

        assert!(io.complete(1));
        assert_eq!((io.start, io.offset), (2, 107));
        assert!(io.complete(5));
        assert!(matches!(io.status, Status::Done));
        assert_eq!(io.moved, 12);
    }

    #[test]
    fn zero_and_negative_completions_become_errors_with_context() {
        let (_dir, _storage, file) = scratch();
        let path = file.path().display().to_string();
        let file = file.as_any().downcast_ref::<UringFile>().unwrap();
        let data = [0u8; 8];
        let bufs = [IoSlice::new(&data)];

        let mut io = Io::write(file, &bufs, 4096).unwrap().unwrap();
        assert!(io.complete(3));
        assert!(io.complete(0));
        let Status::Failed(err) = &io.status else {
            panic!("zero-byte write accepted")
        };
        assert_eq!(err.kind(), ErrorKind::WriteZero);
        assert!(err.to_string().contains(&format!("{path}@4099")), "{err}");

        let mut io = Io::write(file, &bufs, 8192).unwrap().unwrap();
        assert!(io.complete(-libc::EIO));
        let Status::Failed(err) = &io.status else {
            panic!("EIO accepted")
        };
        assert_eq!(crate::os_error(err), Some(libc::EIO));
        assert!(
            err.to_string()
                .starts_with(&format!("io_uring write {path}@8192: ")),
            "{err}"
        );

        let mut io = Io::write(file, &bufs, 0).unwrap().unwrap();
        assert!(io.complete(-libc::ENOSPC));
        let Status::Failed(err) = &io.status else {
            panic!("ENOSPC accepted")
        };
        assert_eq!(err.kind(), ErrorKind::StorageFull);

        let mut buf = [0u8; 16];
        let mut read = Io::read(file, &mut buf, 0);
        assert!(read.complete(0), "EOF ends a read");
        assert!(matches!(read.status, Status::Done));
        assert_eq!(read.moved, 0);
    }

    #[test]
    fn failed_linked_sync_poisons_the_file() {
        let (_dir, _storage, file) = scratch();
        let uring = file.as_any().downcast_ref::<UringFile>().unwrap();
        let mut sync = SyncIo {
            file: uring,
            status: Status::Pending,
        };
        assert!(!sync.complete(-libc::ECANCELED));
        assert!(sync.complete(-libc::EIO));
        assert!(matches!(sync.status, Status::Failed(_)));
        let err = file.sync_data().unwrap_err();
        assert_eq!(crate::os_error(&err), Some(libc::EIO));
        assert!(err.to_string().contains("sticky"), "{err}");
    }
}
