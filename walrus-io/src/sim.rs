//! A simulated backend for tests: in memory, seeded, deterministic, and strict about durability.
//!
//! [`SimStorage`] keeps, for every file, what was *written* apart from what was *synced*, and for
//! the namespace, which files exist apart from which existences are durable:
//!
//! * File data becomes durable on a successful [`SegmentFile::sync_data`] (or a `then_sync`
//!   [`Storage::submit`]), in 512-byte sectors. So does the file's length, including the
//!   length set by [`Storage::create`]'s preallocation: a file that was never data-synced comes
//!   back from a crash empty.
//! * A created or removed file's *existence* becomes durable on [`Storage::sync_dir`] of its
//!   directory — a data sync of the file does not make its name durable (POSIX does not
//!   promise it). Without one a power cut takes the creation or removal back, or (under
//!   [`CrashMode::RandomSectors`], as a journaling file system's next metadata commit does)
//!   keeps it, at random.
//! * Directories made by [`Storage::create_dir_all`] are durable at once (a simplification:
//!   Walrus makes its directory once, before any data exists).
//! * A failed data sync writes some of what it was to write, at random, and loses the rest:
//!   the file's unsynced sectors read as the disk holds them, and no later sync makes the
//!   lost ones durable. That is Linux's behaviour when write-back fails part way (the pages
//!   are marked clean, not written) once the real backends drop those pages from the cache,
//!   as they do on a failed sync.
//!
//! [`SimStorage::crash`] is a power cut: only the durable state survives, per [`CrashMode`]
//! optionally with some unsynced sectors. Every handle opened before the crash goes stale (its
//! calls fail); the same `SimStorage` (it is a cheap clone around an `Arc`) then serves the
//! "next process", which reopens its files. Sticky sync failures are forgotten, as they would be
//! by a new process; fault rules stay until [`SimStorage::clear_faults`].
//!
//! Faults: a [`FaultRule`] fails the Nth operation matching a filter (operation kind, path) with
//! EIO, ENOSPC, a short write (a random prefix lands, then the write fails) or a crash in the
//! middle of that operation. [`SimStorage::stats`] counts operations, so a test can run a
//! workload once, then fail each of its operations in turn.
//!
//! Determinism: every random choice (short-write lengths, torn sectors) comes from a generator
//! seeded by [`SimStorage::new`]'s seed, and nothing else about the simulator depends on time,
//! addresses or hashing. The same seed and the same sequence of calls give the same results;
//! operations from several threads are serialized in whatever order the threads arrive.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, ErrorKind, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{HandlePoison, SyncPoison, errno_error, op_error, write_zero};
use crate::fs::check_range;
use crate::rng::SeededRng;
use crate::storage::{BackendKind, SegmentFile, Storage, WriteOp, distinct_files, submit_each};

/// Durability granularity: a sector lands entirely or not at all.
pub const SECTOR_SIZE: u64 = 512;

/// Storage granularity of the sparse in-memory files.
const PAGE: usize = 4096;

/// What survives [`SimStorage::crash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CrashMode {
    /// Power cut: only synced data, and only files whose existence was made durable, survive.
    #[default]
    DropUnsynced,
    /// Like `DropUnsynced`, but the most recent unsynced write is *torn*: a random, strict,
    /// non-empty prefix of its sectors survives (a write within one sector survives whole or not
    /// at all). The other unsynced writes are lost.
    TearLastWrite,
    /// Like `DropUnsynced`, but each unsynced sector independently survives with probability ½
    /// (the disk wrote back some dirty pages, in no particular order); and each creation or
    /// removal of a file that no directory sync made durable persisted with probability ½, a
    /// file's length (what its creation set) with it: a journaling file system commits names
    /// and sizes with any later metadata commit, an `fsync` of another file included.
    RandomSectors,
    /// Process crash (`kill -9`): everything written survives, including files whose creation
    /// or removal was never made durable, because the kernel still has it — in its page cache:
    /// nothing more is durable than before, and a later power cut still takes what was never
    /// synced.
    KeepWritten,
}

/// The kinds of operation a [`FaultRule`] can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpKind {
    /// [`Storage::create`].
    Create,
    /// [`Storage::open`].
    Open,
    /// [`Storage::remove`].
    Remove,
    /// [`Storage::list`].
    List,
    /// [`Storage::create_dir_all`].
    CreateDir,
    /// [`Storage::sync_dir`].
    SyncDir,
    /// A write: [`SegmentFile::write_at`], [`SegmentFile::write_vectored_at`], or one op of a
    /// [`Storage::submit`] batch. Empty writes are not operations.
    Write,
    /// [`SegmentFile::read_at`] (and so `read_exact_at`). Empty reads are not operations.
    Read,
    /// [`SegmentFile::sync_data`], or one file's sync in a `then_sync` batch.
    Sync,
    /// [`SegmentFile::allocate`].
    Allocate,
}

/// What a [`FaultRule`] does to the operation it hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Fails with `EIO`; nothing changes. On a sync, the failure is sticky.
    Eio,
    /// Fails with `ENOSPC` ([`ErrorKind::StorageFull`]); nothing changes. On a sync, sticky.
    Enospc,
    /// Writes only: a random strict prefix of the data (possibly empty) lands, then the write
    /// fails with [`ErrorKind::WriteZero`], naming the offset where it stopped.
    ShortWrite,
    /// The power fails during the operation ([`SimStorage::crash`] with this mode); the
    /// operation fails, and so does every later call through a handle opened before.
    Crash(CrashMode),
    /// The operation panics (a backend's bug); nothing changes.
    Panic,
}

/// Which operations fail, and how. Built with [`FaultRule::new`] and refined with the other
/// methods; installed with [`SimStorage::inject`].
///
/// ```
/// use walrus_io::{Fault, FaultRule, OpKind};
/// // The third write to anything under /wal fails with EIO, then writes work again.
/// let rule = FaultRule::new(Fault::Eio).op(OpKind::Write).path("/wal").nth(3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    fault: Fault,
    op: Option<OpKind>,
    path: Option<PathBuf>,
    /// Matching operations still to let through before firing.
    skip: u64,
    /// Firings left.
    times: u64,
}

impl FaultRule {
    /// Fails the next matching operation (any operation, until narrowed) once with `fault`. A
    /// [`Fault::ShortWrite`] rule only ever matches writes.
    pub fn new(fault: Fault) -> Self {
        Self {
            fault,
            op: None,
            path: None,
            skip: 0,
            times: 1,
        }
    }

    /// Only operations of this kind match.
    pub fn op(mut self, kind: OpKind) -> Self {
        self.op = Some(kind);
        self
    }

    /// Only operations on `path` or anything under it match (component-wise prefix; for
    /// directory operations, the directory's path).
    pub fn path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Fires on the `n`th matching operation from installation (1 = the next one).
    pub fn nth(mut self, n: u64) -> Self {
        self.skip = n.saturating_sub(1);
        self
    }

    /// Fires on `n` matching operations in a row (once it starts firing).
    pub fn times(mut self, n: u64) -> Self {
        self.times = n;
        self
    }

    /// Fires on every matching operation from then on (a disk that stays full or broken).
    pub fn forever(self) -> Self {
        self.times(u64::MAX)
    }

    fn matches(&self, kind: OpKind, path: &Path) -> bool {
        (self.fault != Fault::ShortWrite || kind == OpKind::Write)
            && self.op.is_none_or(|op| op == kind)
            && self.path.as_deref().is_none_or(|p| path.starts_with(p))
    }
}

/// Counters of a [`SimStorage`] since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct SimStats {
    /// Operations attempted (each one [`FaultRule`]s count), failed ones included.
    pub ops: u64,
    /// Successful data syncs.
    pub data_syncs: u64,
    /// Successful directory syncs.
    pub dir_syncs: u64,
    /// Faults injected.
    pub faults_fired: u64,
    /// Crashes, called or injected.
    pub crashes: u64,
}

/// The simulated backend. See the [module docs](crate::sim). Cloning gives another handle on
/// the same simulated machine, for one run of the program using it: once the power is cut
/// ([`crash`](Self::crash)), a clone made before fails every operation, as the process that
/// held it would have died (its clean-ups must not reach the disk). The handle made by
/// [`new`](Self::new) is the machine's own, for the test: it always works.
pub struct SimStorage {
    state: Arc<Mutex<SimState>>,
    /// The machine's crash generation when this clone was made; `None` for the machine's own.
    born: Option<u64>,
}

impl Clone for SimStorage {
    fn clone(&self) -> Self {
        let born = self.state.lock().generation;
        Self {
            state: Arc::clone(&self.state),
            born: Some(born),
        }
    }
}

impl fmt::Debug for SimStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("SimStorage")
            .field("seed", &state.seed)
            .field("files", &state.live.len())
            .field("stats", &state.stats)
            .finish_non_exhaustive()
    }
}

impl SimStorage {
    /// An empty simulated machine (only the root directory exists) whose random choices all
    /// derive from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut dirs = BTreeSet::new();
        dirs.insert(PathBuf::from("/"));
        Self {
            state: Arc::new(Mutex::new(SimState {
                seed,
                rng: SeededRng::new(seed),
                // A stream of its own: drawing keys moves no crash or fault decision.
                keys: SeededRng::new(seed ^ 0x6b65_7973_6b65_7973),
                generation: 0,
                dirs,
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
                inodes: BTreeMap::new(),
                next_inode: 0,
                faults: Vec::new(),
                stats: SimStats::default(),
                write_seq: 0,
                poison: SyncPoison::default(),
                sync_latency: std::time::Duration::ZERO,
            })),
            born: None,
        }
    }

    /// The state, for an operation on the namespace: fails if the power was cut since this
    /// clone was made (its process died).
    fn live_state(
        &self,
        op: &'static str,
        path: &Path,
    ) -> io::Result<parking_lot::MutexGuard<'_, SimState>> {
        let state = self.state.lock();
        if self.born.is_some_and(|b| b != state.generation) {
            return Err(stale(op, path));
        }
        Ok(state)
    }

    /// The seed this simulator was made with.
    pub fn seed(&self) -> u64 {
        self.state.lock().seed
    }

    /// Cuts the power: see [`CrashMode`]. Handles opened before become stale.
    pub fn crash(&self, mode: CrashMode) {
        self.state.lock().crash(mode);
    }

    /// Installs a fault rule. Rules are checked in installation order; the first one that fires
    /// decides the fault, and every matching rule counts the operation.
    pub fn inject(&self, rule: FaultRule) {
        self.state.lock().faults.push(rule);
    }

    /// Fails the `n`th operation from now (of any kind, on any path) with `fault`.
    pub fn fail_nth(&self, n: u64, fault: Fault) {
        self.inject(FaultRule::new(fault).nth(n));
    }

    /// Makes every data sync take up to `latency` (a seeded random share of it): the sync
    /// captures what was written when it was called, waits, and makes that durable only when
    /// it returns. A crash while it waits keeps none of it, as a power cut during a real
    /// `fdatasync` may; writes made while it waits are not covered. This opens the window in
    /// which concurrent writers, syncers and crashes meet, for the concurrent crash tests.
    pub fn set_sync_latency(&self, latency: std::time::Duration) {
        self.state.lock().sync_latency = latency;
    }

    /// Removes every fault rule not yet spent.
    pub fn clear_faults(&self) {
        self.state.lock().faults.clear();
    }

    /// The counters so far.
    pub fn stats(&self) -> SimStats {
        self.state.lock().stats
    }

    /// The files that exist now, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        self.state.lock().live.keys().cloned().collect()
    }

    /// The files whose existence is durable (would survive a crash), sorted.
    pub fn durable_files(&self) -> Vec<PathBuf> {
        self.state.lock().durable.keys().cloned().collect()
    }

    /// The current contents of the file at `path`, as a reader would see them.
    pub fn contents(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.state.lock();
        let inode = state.live_inode("contents", path)?;
        Ok(inode.pages.read_all(inode.len))
    }

    /// What [`CrashMode::DropUnsynced`] would leave at `path`: `None` if the file would not
    /// exist, else its synced contents.
    pub fn durable_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.state.lock();
        let id = state.durable.get(path)?;
        let inode = &state.inodes[id];
        Some(inode.durable_pages.read_all(inode.durable_len))
    }

    /// How many 512-byte sectors of the file at `path` were written since its last data sync.
    pub fn unsynced_sectors(&self, path: &Path) -> io::Result<usize> {
        let state = self.state.lock();
        Ok(state.live_inode("unsynced_sectors", path)?.dirty.len())
    }

    fn file(&self, id: u64, generation: u64, path: &Path) -> Arc<dyn SegmentFile> {
        Arc::new(SimFile {
            sim: self.clone(),
            inode: id,
            generation,
            path: path.to_path_buf(),
            poison: HandlePoison::default(),
        })
    }
}

impl Storage for SimStorage {
    fn kind(&self) -> BackendKind {
        BackendKind::Sim
    }

    /// From the seed: a seed replays byte for byte.
    fn key(&self) -> io::Result<u32> {
        let mut state = self.state.lock();
        // Never 0 (the low bits of a 64-bit draw; 0 would mean an unkeyed file).
        Ok((state.keys.next_u64() as u32).max(1))
    }

    fn create(&self, path: &Path, len: u64) -> io::Result<Arc<dyn SegmentFile>> {
        let mut state = self.live_state("create", path)?;
        state.fault("create", OpKind::Create, path, None)?;
        if len > i64::MAX as u64 {
            return Err(op_error(
                "create",
                path,
                None,
                io::Error::new(
                    ErrorKind::InvalidInput,
                    "length past the largest file offset",
                ),
            ));
        }
        state.check_parent("create", path)?;
        if state.live.contains_key(path) || state.dirs.contains(path) {
            return Err(errno_error("create", path, None, libc::EEXIST));
        }
        let id = state.next_inode;
        state.next_inode += 1;
        state.inodes.insert(id, Inode::new(len));
        state.live.insert(path.to_path_buf(), id);
        state.poison.forget(path);
        let generation = state.generation;
        drop(state);
        Ok(self.file(id, generation, path))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let mut state = self.live_state("open", path)?;
        state.fault("open", OpKind::Open, path, None)?;
        if state.dirs.contains(path) {
            return Err(errno_error("open", path, None, libc::EISDIR));
        }
        let Some(&id) = state.live.get(path) else {
            return Err(errno_error("open", path, None, libc::ENOENT));
        };
        let generation = state.generation;
        drop(state);
        Ok(self.file(id, generation, path))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.live_state("remove", path)?;
        state.fault("remove", OpKind::Remove, path, None)?;
        if state.dirs.contains(path) {
            return Err(errno_error("remove", path, None, libc::EISDIR));
        }
        if state.live.remove(path).is_none() {
            return Err(errno_error("remove", path, None, libc::ENOENT));
        }
        state.poison.forget(path);
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut state = self.live_state("list", dir)?;
        state.fault("list", OpKind::List, dir, None)?;
        state.check_dir("list", dir)?;
        Ok(state
            .live
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.live_state("create_dir_all", dir)?;
        state.fault("create_dir_all", OpKind::CreateDir, dir, None)?;
        let ancestors: Vec<&Path> = dir
            .ancestors()
            .filter(|a| !a.as_os_str().is_empty())
            .collect();
        for &a in ancestors.iter().rev() {
            if state.live.contains_key(a) {
                let code = if a == dir {
                    libc::EEXIST
                } else {
                    libc::ENOTDIR
                };
                return Err(errno_error("create_dir_all", dir, None, code));
            }
        }
        for a in ancestors {
            state.dirs.insert(a.to_path_buf());
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.live_state("fsync dir", dir)?;
        state.fault("fsync dir", OpKind::SyncDir, dir, None)?;
        state.check_dir("fsync dir", dir)?;
        let state = &mut *state;
        state.durable.retain(|p, _| p.parent() != Some(dir));
        for (p, &id) in &state.live {
            if p.parent() == Some(dir) {
                state.durable.insert(p.clone(), id);
            }
        }
        state.stats.dir_syncs += 1;
        Ok(())
    }

    fn submit(&self, writes: &[WriteOp<'_>], then_sync: bool) -> io::Result<()> {
        if then_sync {
            for file in distinct_files(writes) {
                if let Some(f) = file.as_any().downcast_ref::<SimFile>() {
                    f.check_sync()?;
                }
            }
        }
        submit_each(writes, then_sync, false)
    }
}

/// A file of a [`SimStorage`].
#[derive(Debug)]
pub struct SimFile {
    sim: SimStorage,
    inode: u64,
    generation: u64,
    path: PathBuf,
    poison: HandlePoison,
}

impl SimFile {
    /// The state, if this handle is from the current "process".
    fn state(&self, op: &'static str) -> io::Result<parking_lot::MutexGuard<'_, SimState>> {
        let state = self.sim.state.lock();
        if state.generation == self.generation {
            Ok(state)
        } else {
            Err(stale(op, &self.path))
        }
    }

    fn check_sync(&self) -> io::Result<()> {
        let state = self.state("fdatasync")?;
        state.poison.check(&self.poison, &self.path)
    }
}

fn stale(op: &'static str, path: &Path) -> io::Error {
    op_error(
        op,
        path,
        None,
        io::Error::other("simulated crash: this handle was opened before the crash"),
    )
}

impl SegmentFile for SimFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_vectored_at(&[IoSlice::new(buf)], offset)
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let total = crate::fs::total_len(bufs);
        let mut state = self.state("write")?;
        if total == 0 {
            return Ok(());
        }
        check_range("write", &self.path, offset, total)?;
        let data: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        let landed = match state.fault("write", OpKind::Write, &self.path, Some(offset)) {
            Ok(()) => total,
            Err(Injected::Short) => state.rng.below(total as u64) as usize,
            Err(Injected::Error(e)) => return Err(e),
        };
        state.write(self.inode, offset, &data[..landed]);
        if landed < total {
            return Err(write_zero(
                "write",
                &self.path,
                offset + landed as u64,
                total - landed,
            ));
        }
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut state = self.state("read")?;
        if buf.is_empty() {
            return Ok(0);
        }
        check_range("read", &self.path, offset, buf.len())?;
        state.fault("read", OpKind::Read, &self.path, Some(offset))?;
        let inode = &state.inodes[&self.inode];
        if offset >= inode.len {
            return Ok(0);
        }
        let n = (inode.len - offset).min(buf.len() as u64) as usize;
        inode.pages.read(offset, &mut buf[..n]);
        Ok(n)
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut state = self.state("fallocate")?;
        if len == 0 {
            return Ok(());
        }
        check_range(
            "fallocate",
            &self.path,
            offset,
            usize::try_from(len).unwrap_or(usize::MAX),
        )?;
        state
            .fault("fallocate", OpKind::Allocate, &self.path, Some(offset))
            .map_err(io::Error::from)?;
        // Space is not modelled; the length grows as a write's would (durable at the next sync).
        let inode = state
            .inodes
            .get_mut(&self.inode)
            .unwrap_or_else(|| unreachable!("open inode"));
        inode.len = inode.len.max(offset + len);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.state("fdatasync")?;
        state.poison.check(&self.poison, &self.path)?;
        if let Err(injected) = state.fault("fdatasync", OpKind::Sync, &self.path, None) {
            let e = io::Error::from(injected);
            // A stale handle (injected crash) is not a failed sync of this file.
            if state.generation == self.generation {
                state.poison.record(&self.poison, &self.path, &e);
                state.lose_unsynced(self.inode);
            }
            return Err(e);
        }
        let latency = state.sync_latency;
        if latency.is_zero() {
            state.sync(self.inode);
            return Ok(());
        }
        // In flight: capture now, land when the wait is over (unless the power failed).
        let captured = state.capture(self.inode);
        let wait = latency.mul_f64(state.rng.below(1001) as f64 / 1000.0);
        drop(state);
        std::thread::sleep(wait);
        let mut state = self.state("fdatasync")?;
        // A sync of the file that failed meanwhile (through another handle) failed this one's
        // write-back too, as the kernel reports it to every descriptor: nothing lands.
        state.poison.check(&self.poison, &self.path)?;
        state.land(self.inode, captured);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let state = self.state("fstat")?;
        Ok(state.inodes[&self.inode].len)
    }

    fn next_data(&self, offset: u64) -> io::Result<Option<std::ops::Range<u64>>> {
        let state = self.state("lseek")?;
        let inode = &state.inodes[&self.inode];
        Ok(inode.pages.next_data(offset, inode.len))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The outcome of an injected fault, before the operation decides what it means.
enum Injected {
    Short,
    Error(io::Error),
}

impl From<Injected> for io::Error {
    fn from(injected: Injected) -> Self {
        match injected {
            Injected::Error(e) => e,
            // Rules with ShortWrite only match writes, which handle it themselves.
            Injected::Short => io::Error::other("short write injected into a non-write"),
        }
    }
}

struct SimState {
    seed: u64,
    rng: SeededRng,
    /// Where [`Storage::key`] draws from.
    keys: SeededRng,
    /// Bumped by every crash; handles remember the one they were opened in.
    generation: u64,
    dirs: BTreeSet<PathBuf>,
    /// The namespace as the running process sees it.
    live: BTreeMap<PathBuf, u64>,
    /// The namespace as it would come back after a power cut.
    durable: BTreeMap<PathBuf, u64>,
    /// Every file still reachable from a namespace or an open handle (dropped at crashes).
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    faults: Vec<FaultRule>,
    stats: SimStats,
    /// Orders writes, to find the most recent unsynced one.
    write_seq: u64,
    poison: SyncPoison,
    /// See [`SimStorage::set_sync_latency`].
    sync_latency: std::time::Duration,
}

impl SimState {
    /// Counts an operation and applies the fault rules to it.
    fn fault(
        &mut self,
        op: &'static str,
        kind: OpKind,
        path: &Path,
        offset: Option<u64>,
    ) -> Result<(), Injected> {
        self.stats.ops += 1;
        let mut fired = None;
        for rule in &mut self.faults {
            if rule.times == 0 || !rule.matches(kind, path) {
                continue;
            }
            if rule.skip > 0 {
                rule.skip -= 1;
            } else if fired.is_none() {
                rule.times -= 1;
                fired = Some(rule.fault);
            }
        }
        self.faults.retain(|r| r.times > 0);
        let Some(fault) = fired else {
            return Ok(());
        };
        self.stats.faults_fired += 1;
        Err(match fault {
            Fault::Eio => Injected::Error(errno_error(op, path, offset, libc::EIO)),
            Fault::Enospc => Injected::Error(errno_error(op, path, offset, libc::ENOSPC)),
            Fault::ShortWrite => Injected::Short,
            Fault::Crash(mode) => {
                self.crash(mode);
                Injected::Error(stale(op, path))
            }
            Fault::Panic => panic!("{op} {}: a panic injected", path.display()),
        })
    }

    fn check_parent(&self, op: &'static str, path: &Path) -> io::Result<()> {
        match path.parent() {
            None => Err(errno_error(op, path, None, libc::EISDIR)),
            Some(p) if p.as_os_str().is_empty() || self.dirs.contains(p) => Ok(()),
            Some(p) if self.live.contains_key(p) => Err(errno_error(op, path, None, libc::ENOTDIR)),
            Some(_) => Err(errno_error(op, path, None, libc::ENOENT)),
        }
    }

    fn check_dir(&self, op: &'static str, dir: &Path) -> io::Result<()> {
        if self.dirs.contains(dir) {
            Ok(())
        } else if self.live.contains_key(dir) {
            Err(errno_error(op, dir, None, libc::ENOTDIR))
        } else {
            Err(errno_error(op, dir, None, libc::ENOENT))
        }
    }

    fn live_inode(&self, op: &'static str, path: &Path) -> io::Result<&Inode> {
        match self.live.get(path) {
            Some(id) => Ok(&self.inodes[id]),
            None => Err(errno_error(op, path, None, libc::ENOENT)),
        }
    }

    fn write(&mut self, id: u64, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let seq = self.write_seq;
        self.write_seq += 1;
        let inode = self
            .inodes
            .get_mut(&id)
            .unwrap_or_else(|| unreachable!("open inode"));
        inode.pages.write(offset, data);
        let end = offset + data.len() as u64;
        inode.len = inode.len.max(end);
        inode
            .dirty
            .extend(offset / SECTOR_SIZE..end.div_ceil(SECTOR_SIZE));
        inode.last_write = Some(LastWrite { seq, offset, end });
    }

    fn sync(&mut self, id: u64) {
        let inode = self
            .inodes
            .get_mut(&id)
            .unwrap_or_else(|| unreachable!("open inode"));
        for &sector in &inode.dirty {
            copy_sector(&inode.pages, &mut inode.durable_pages, sector);
        }
        inode.dirty.clear();
        inode.durable_len = inode.len;
        inode.last_write = None;
        self.stats.data_syncs += 1;
    }

    /// A failed sync of `id`: each sector it was to write reached the disk or not, at random
    /// (write-back fails part way), and reads see the disk's bytes (what Linux does when
    /// write-back fails, with the real backends dropping the pages it marked clean: see
    /// `fs::drop_cached`). Nothing is dirty after it, so no later sync brings the rest back.
    fn lose_unsynced(&mut self, id: u64) {
        let inode = self
            .inodes
            .get_mut(&id)
            .unwrap_or_else(|| unreachable!("open inode"));
        for &sector in &inode.dirty {
            if self.rng.below(2) == 1 {
                copy_sector(&inode.pages, &mut inode.durable_pages, sector);
            } else {
                copy_sector(&inode.durable_pages, &mut inode.pages, sector);
            }
        }
        inode.dirty.clear();
        inode.last_write = None;
    }

    /// What a sync of `id` starting now covers: the dirty sectors' contents and the length.
    fn capture(&mut self, id: u64) -> Captured {
        let inode = self
            .inodes
            .get_mut(&id)
            .unwrap_or_else(|| unreachable!("open inode"));
        let sectors = inode
            .dirty
            .iter()
            .map(|&sector| {
                let mut buf = [0u8; SECTOR_SIZE as usize];
                inode.pages.read(sector * SECTOR_SIZE, &mut buf);
                (sector, buf)
            })
            .collect();
        let last_write = inode.last_write;
        Captured {
            sectors,
            len: inode.len,
            last_write,
        }
    }

    /// A sync begun with [`capture`](Self::capture) completes. Sectors written again while it
    /// was in flight stay dirty for the next sync.
    fn land(&mut self, id: u64, captured: Captured) {
        let inode = self
            .inodes
            .get_mut(&id)
            .unwrap_or_else(|| unreachable!("open inode"));
        for (sector, buf) in &captured.sectors {
            inode.durable_pages.write(sector * SECTOR_SIZE, buf);
            let mut now = [0u8; SECTOR_SIZE as usize];
            inode.pages.read(sector * SECTOR_SIZE, &mut now);
            if now == *buf {
                inode.dirty.remove(sector);
            }
        }
        inode.durable_len = inode.durable_len.max(captured.len);
        let rewritten = inode.last_write.map(|w| w.seq) != captured.last_write.map(|w| w.seq);
        if inode.dirty.is_empty() || !rewritten {
            inode.last_write = None;
        }
        self.stats.data_syncs += 1;
    }

    /// The names a power cut leaves under [`CrashMode::RandomSectors`]: the durable ones, with
    /// each removal and each creation since the last directory sync persisted or not, at
    /// random. (A name re-created since carries its removal: the new file persisted means the
    /// old one went.)
    fn committed_names(&mut self) -> BTreeMap<PathBuf, u64> {
        let mut names = self.durable.clone();
        let gone: Vec<PathBuf> = names
            .iter()
            .filter(|&(p, id)| self.live.get(p) != Some(id))
            .map(|(p, _)| p.clone())
            .collect();
        for p in gone {
            if self.rng.below(2) == 1 {
                names.remove(&p);
            }
        }
        for (p, &id) in &self.live {
            if self.durable.get(p) != Some(&id) && self.rng.below(2) == 1 {
                names.insert(p.clone(), id);
            }
        }
        names
    }

    fn crash(&mut self, mode: CrashMode) {
        self.generation += 1;
        self.stats.crashes += 1;
        self.poison.clear();
        if mode == CrashMode::KeepWritten {
            // The process is gone (its handles with it); the page cache and the names stay,
            // durable or not.
            return;
        }
        let namespace = if mode == CrashMode::RandomSectors {
            self.committed_names()
        } else {
            self.durable.clone()
        };
        // The most recent write still unsynced, over all files.
        let torn = self
            .inodes
            .iter()
            .filter_map(|(&id, inode)| inode.last_write.map(|w| (w.seq, id)))
            .max()
            .map(|(_, id)| id);
        let mut inodes = BTreeMap::new();
        for &id in namespace.values() {
            let old = &self.inodes[&id];
            let landed: Vec<u64> = match mode {
                CrashMode::DropUnsynced => Vec::new(),
                CrashMode::KeepWritten => Vec::new(), // returned above
                CrashMode::RandomSectors => old
                    .dirty
                    .iter()
                    .copied()
                    .filter(|_| self.rng.below(2) == 1)
                    .collect(),
                CrashMode::TearLastWrite => match old.last_write {
                    Some(w) if torn == Some(id) => {
                        let sectors: Vec<u64> = (w.offset / SECTOR_SIZE
                            ..w.end.div_ceil(SECTOR_SIZE))
                            .filter(|s| old.dirty.contains(s))
                            .collect();
                        let n = sectors.len() as u64;
                        let keep = match n {
                            0 => 0,
                            1 => self.rng.below(2),
                            _ => 1 + self.rng.below(n - 1),
                        };
                        sectors[..keep as usize].to_vec()
                    }
                    _ => Vec::new(),
                },
            };
            let mut pages = old.durable_pages.clone();
            let mut len = old.durable_len;
            if mode == CrashMode::RandomSectors && self.rng.below(2) == 1 {
                // The size as the process left it (never past what it wrote or preallocated):
                // bytes that did not land read as zeros.
                len = len.max(old.len);
            }
            for &sector in &landed {
                copy_sector(&old.pages, &mut pages, sector);
                len = len.max(((sector + 1) * SECTOR_SIZE).min(old.len));
            }
            inodes.insert(
                id,
                Inode {
                    len,
                    durable_len: len,
                    durable_pages: pages.clone(),
                    pages,
                    dirty: BTreeSet::new(),
                    last_write: None,
                },
            );
        }
        self.inodes = inodes;
        self.live = namespace.clone();
        self.durable = namespace;
    }
}

/// One simulated file.
/// What an in-flight sync of a file covers (see [`SimStorage::set_sync_latency`]).
struct Captured {
    sectors: Vec<(u64, [u8; SECTOR_SIZE as usize])>,
    len: u64,
    last_write: Option<LastWrite>,
}

struct Inode {
    /// Length as the running process sees it.
    len: u64,
    /// Length as of the last data sync.
    durable_len: u64,
    pages: Pages,
    durable_pages: Pages,
    /// Sectors written since the last data sync.
    dirty: BTreeSet<u64>,
    /// The last write since the last data sync.
    last_write: Option<LastWrite>,
}

impl Inode {
    fn new(len: u64) -> Self {
        Self {
            len,
            durable_len: 0,
            pages: Pages::default(),
            durable_pages: Pages::default(),
            dirty: BTreeSet::new(),
            last_write: None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct LastWrite {
    seq: u64,
    offset: u64,
    end: u64,
}

/// Sparse file contents: absent pages read as zeros.
#[derive(Clone, Default)]
struct Pages(BTreeMap<u64, Box<[u8; PAGE]>>);

impl Pages {
    /// The first run of stored pages at or after `offset`, below `len` (unwritten pages are
    /// holes, as `SEEK_DATA` / `SEEK_HOLE` report them).
    fn next_data(&self, offset: u64, len: u64) -> Option<std::ops::Range<u64>> {
        let page = PAGE as u64;
        let mut pages = self.0.range(offset / page..).map(|(&i, _)| i);
        let first = pages.next()?;
        let mut last = first;
        for i in pages {
            if i != last + 1 {
                break;
            }
            last = i;
        }
        let start = (first * page).max(offset);
        let end = ((last + 1) * page).min(len);
        (start < end).then_some(start..end)
    }

    fn read(&self, mut offset: u64, mut out: &mut [u8]) {
        while !out.is_empty() {
            let (index, within) = (offset / PAGE as u64, (offset % PAGE as u64) as usize);
            let n = (PAGE - within).min(out.len());
            match self.0.get(&index) {
                Some(page) => out[..n].copy_from_slice(&page[within..within + n]),
                None => out[..n].fill(0),
            }
            out = &mut out[n..];
            offset += n as u64;
        }
    }

    fn write(&mut self, mut offset: u64, mut data: &[u8]) {
        while !data.is_empty() {
            let (index, within) = (offset / PAGE as u64, (offset % PAGE as u64) as usize);
            let n = (PAGE - within).min(data.len());
            let page = self.0.entry(index).or_insert_with(|| Box::new([0; PAGE]));
            page[within..within + n].copy_from_slice(&data[..n]);
            data = &data[n..];
            offset += n as u64;
        }
    }

    fn read_all(&self, len: u64) -> Vec<u8> {
        let mut out = vec![0; usize::try_from(len).unwrap_or(usize::MAX)];
        self.read(0, &mut out);
        out
    }
}

fn copy_sector(from: &Pages, to: &mut Pages, sector: u64) {
    let mut buf = [0; SECTOR_SIZE as usize];
    from.read(sector * SECTOR_SIZE, &mut buf);
    to.write(sector * SECTOR_SIZE, &buf);
}

#[cfg(test)]
mod tests {
    /// A sync in flight when another handle's sync of the same file fails does not land
    /// afterwards, nor succeed: a crash brings back nothing the failure took.
    #[test]
    fn a_sync_in_flight_fails_with_a_sync_of_its_file_that_failed_meanwhile() {
        use super::*;
        let path = Path::new("/d/f");
        let mut overlapped = 0;
        for seed in 0..30 {
            if overlapped == 5 {
                break;
            }
            let sim = SimStorage::new(seed);
            sim.set_sync_latency(std::time::Duration::from_millis(300));
            sim.create_dir_all(Path::new("/d")).unwrap();
            let h1 = sim.create(path, 0).unwrap();
            let h2 = sim.open(path).unwrap();
            h1.write_at(b"lost", 0).unwrap();
            let in_flight = std::thread::spawn(move || h1.sync_data());
            std::thread::sleep(std::time::Duration::from_millis(30));
            if in_flight.is_finished() {
                continue; // this seed's sync waited less: no overlap
            }
            overlapped += 1;
            sim.inject(FaultRule::new(Fault::Eio).op(OpKind::Sync));
            assert!(h2.sync_data().is_err());
            sim.clear_faults();
            assert!(in_flight.join().unwrap().is_err(), "seed {seed}");
            let durable = sim.durable_contents(path).unwrap_or_default();
            assert!(!durable.starts_with(b"lost"), "seed {seed}: landed");
        }
        assert!(overlapped >= 5, "only {overlapped} seeds overlapped");
    }

    use super::*;

    #[test]
    fn pages_are_sparse_and_read_zeros() {
        let mut pages = Pages::default();
        pages.write(PAGE as u64 - 2, b"abcd");
        assert_eq!(pages.0.len(), 2);
        let mut out = [9u8; 8];
        pages.read(PAGE as u64 - 4, &mut out);
        assert_eq!(&out, b"\0\0abcd\0\0");
        pages.read(10 * PAGE as u64, &mut out);
        assert_eq!(out, [0; 8]);
    }
}
