//! One workload run: its specification, the closed-loop driver threads, and its result.
//!
//! Every thread works on a topic (or file) of its own, starts at a barrier and loops until the
//! deadline. Each call is timed on its own — the histogram holds every call's duration, so a
//! slow call shows up as itself instead of being averaged away — and payloads come from a
//! pregenerated pool.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::{Backend, Consistency, Fsync};
use crate::engine::{self, Engine, EngineKind, GroupCommit, OpenOptions};
use crate::payload::{PayloadPool, Sizes};
use crate::stats::{self, DiskUsage, LatencySummary};

/// What each call of a workload does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Op {
    /// One entry per call (`append_for_topic`).
    Append,
    /// `size` entries per call, atomically (`batch_append_for_topic`).
    AppendBatch {
        /// Entries per batch.
        size: usize,
    },
    /// Drain a prefilled topic one consuming `read_next` at a time.
    ReadNext,
    /// Drain a prefilled topic with consuming `batch_read_for_topic` calls.
    ReadBatch {
        /// Payload bytes asked for per call.
        max_bytes: usize,
    },
    /// The physical baseline: sequential `pwrite` of `chunk` entries' bytes per call to a plain
    /// file, followed by `fdatasync` when asked.
    Pwrite {
        /// Entries per `pwrite`.
        chunk: usize,
        /// `fdatasync` after every `pwrite`.
        fdatasync: bool,
        /// How the file is prepared before the loop.
        #[serde(default)]
        prealloc: Prealloc,
        /// Where a call's entries go.
        #[serde(default)]
        spread: Spread,
    },
}

/// Where the physical baseline puts the entries of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Spread {
    /// One `pwrite` of all of them, appended to the file.
    #[default]
    Contiguous,
    /// One `pwrite` per entry: entry `j` of every call goes to region `j`, the way `chunk`
    /// topics append to their current blocks in one segment file. Blocks of `block` bytes are
    /// handed out in turn as the regions fill, so with small blocks the regions' last pages
    /// lie side by side and with large ones they lie a block apart. The file wraps around at
    /// [`Prealloc::LEN`], overwriting space it already wrote.
    Blocks {
        /// Bytes per block.
        block: u64,
    },
}

/// How the physical baseline prepares its file before the measured loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prealloc {
    /// Nothing: every write extends the file.
    #[default]
    Extend,
    /// `fallocate` (unwritten extents, as segment files are prepared).
    Fallocate,
    /// `fallocate` of all a thread can write in the run (at 2 GiB/s): the unsynced loop's
    /// writes land in space claimed ahead, as the engine's do in its segments.
    FallocateRun,
    /// Written with zeros and synced: the loop overwrites blocks that are already allocated
    /// and initialised, so a sync has no extent to convert.
    Zeroed,
}

impl Prealloc {
    /// Bytes prepared ahead of the loop (the loop extends the file past them if it must).
    pub const LEN: u64 = 64 << 20;
}

impl Op {
    /// The plain `pwrite` loop on a file that each write extends.
    #[must_use]
    pub const fn pwrite(chunk: usize, fdatasync: bool) -> Self {
        Self::Pwrite {
            chunk,
            fdatasync,
            prealloc: Prealloc::Extend,
            spread: Spread::Contiguous,
        }
    }

    /// True for the reads (they need a prefilled topic).
    #[must_use]
    pub fn is_read(self) -> bool {
        matches!(self, Self::ReadNext | Self::ReadBatch { .. })
    }
}

/// The name of the 2-thread single appends the default suite also runs on the mmap backend
/// (walrus-rust in its mmap mode), beside the sweep on the suite's backend.
pub const MMAP_APPEND: &str = "append mmap";

/// Everything that defines a run except the engine: equal specs on two engines are compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// The family it belongs to (`writes`, `batch-writes`, `synced`, `reads`, `space`,
    /// `physical`).
    pub group: String,
    /// A short human label, e.g. `append`, `batch 256`, `read_next strict`.
    pub name: String,
    /// What each call does.
    pub op: Op,
    /// Concurrent threads, each on its own topic unless `topics` says otherwise.
    pub threads: usize,
    /// Topics the threads share, thread `i` on topic `i % topics`; `None` = one per thread.
    #[serde(default)]
    pub topics: Option<usize>,
    /// The fsync schedule.
    pub fsync: Fsync,
    /// The read consistency.
    pub consistency: Consistency,
    /// Entry lengths.
    pub sizes: Sizes,
    /// How long the measured loop runs, at most.
    pub duration_secs: f64,
    /// Entries written to each topic before a read workload starts.
    pub prefill: u64,
    /// Storage backend of the engine under test.
    pub backend: Backend,
    /// Segment length (ours), `None` = the engine's default.
    pub segment_len: Option<u64>,
    /// Longest block (ours), `None` = the engine's default.
    #[serde(default)]
    pub block_len: Option<u64>,
    /// Our group-commit journal under `SyncEach`, `None` = the engine's default (on).
    #[serde(default)]
    pub journal: Option<bool>,
}

impl WorkloadSpec {
    /// `name t=N`, as the tables show it.
    #[must_use]
    pub fn label(&self) -> String {
        let mut s = format!("{} t={}", self.name, self.threads);
        if let Some(n) = self.topics {
            s.push_str(&format!(" topics={n}"));
        }
        if let Some(len) = self.segment_len {
            let (mib, kib) = (len >> 20, (len % (1 << 20)) >> 10);
            s.push_str(&format!(" seg={mib}MiB"));
            if kib > 0 {
                s.push_str(&format!("+{kib}KiB"));
            }
        }
        if let Some(len) = self.block_len {
            if len.is_multiple_of(1024) {
                s.push_str(&format!(" blk={}KiB", len >> 10));
            } else {
                s.push_str(&format!(" blk={len}B"));
            }
        }
        if self.journal == Some(false) {
            s.push_str(" nojournal");
        }
        s
    }
}

/// What one run of a workload on one engine measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// The engine.
    pub engine: EngineKind,
    /// The workload.
    pub spec: WorkloadSpec,
    /// Entries written or read in the measured loop.
    pub entries: u64,
    /// Their payload bytes.
    pub payload_bytes: u64,
    /// Wall time of the measured loop, from the common start to the last thread's last call.
    pub elapsed_secs: f64,
    /// Per-call latency (one call = one entry, one batch or one `pwrite`).
    pub latency: LatencySummary,
    /// The data directory after the writes (write workloads only).
    pub disk: Option<DiskUsage>,
    /// Wall time of the prefill (reads only; not measured).
    pub prefill_secs: f64,
    /// Why the run failed, if it did (the figures are then meaningless).
    pub error: Option<String>,
    /// What the engine's group commit did during the measured loop (engines that count it).
    #[serde(default)]
    pub group_commit: Option<GroupCommit>,
    /// Entries/s of every run of this row when the suite repeats its plan (`--repeat`); the
    /// figures above are those of the median run. Empty for a single run.
    #[serde(default)]
    pub rates: Vec<f64>,
    /// Every run of this row in the order the rounds ran, when the suite repeats its plan:
    /// targets compare rows round by round (a baseline with the run beside it, not the median
    /// of one with the median of another). Empty for a single run.
    #[serde(default)]
    pub rounds: Vec<Round>,
}

/// What one run of a row measured, for comparisons round by round.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Round {
    /// Entries per second.
    pub entries_per_sec: f64,
    /// Payload MiB per second.
    pub mib_per_sec: f64,
    /// Mean latency of a call, in nanoseconds.
    pub mean_ns: f64,
    /// p99 latency of a call, in nanoseconds.
    pub p99_ns: u64,
}

impl RunResult {
    /// A failed run.
    #[must_use]
    pub fn failed(engine: EngineKind, spec: &WorkloadSpec, error: String) -> Self {
        Self {
            engine,
            spec: spec.clone(),
            entries: 0,
            payload_bytes: 0,
            elapsed_secs: 0.0,
            latency: LatencySummary::default(),
            disk: None,
            prefill_secs: 0.0,
            error: Some(error),
            group_commit: None,
            rates: Vec::new(),
            rounds: Vec::new(),
        }
    }

    /// This run's figures as one round.
    #[must_use]
    pub fn round(&self) -> Round {
        Round {
            entries_per_sec: self.entries_per_sec(),
            mib_per_sec: self.mib_per_sec(),
            mean_ns: self.latency.mean_ns,
            p99_ns: self.latency.p99_ns,
        }
    }

    /// The row's rounds in the order they ran: its every run when the plan was repeated, else
    /// this run alone.
    #[must_use]
    pub fn per_round(&self) -> Vec<Round> {
        if self.rounds.is_empty() {
            vec![self.round()]
        } else {
            self.rounds.clone()
        }
    }

    /// Entries per second.
    #[must_use]
    pub fn entries_per_sec(&self) -> f64 {
        per_sec(self.entries as f64, self.elapsed_secs)
    }

    /// Payload MiB per second.
    #[must_use]
    pub fn mib_per_sec(&self) -> f64 {
        per_sec(
            self.payload_bytes as f64 / (1024.0 * 1024.0),
            self.elapsed_secs,
        )
    }

    /// True if it ran and measured something.
    #[must_use]
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.entries > 0
    }
}

fn per_sec(n: f64, secs: f64) -> f64 {
    if secs > 0.0 { n / secs } else { 0.0 }
}

/// What one driver thread measured.
struct ThreadTally {
    entries: u64,
    bytes: u64,
    hist: Histogram<u64>,
    end: Instant,
}

/// Runs `spec` on `kind` in this process, in `dir` (emptied first, removed after).
///
/// # Errors
/// Setting up the directory or the engine; a failing call inside the loop is reported in the
/// result's `error` instead.
pub fn run(kind: EngineKind, spec: &WorkloadSpec, dir: &Path) -> io::Result<RunResult> {
    reset_dir(dir)?;
    let pool = PayloadPool::new(spec.sizes, PayloadPool::DEFAULT_COUNT, 0x5eed_0000 + 1);
    let result = match spec.op {
        Op::Pwrite {
            chunk,
            fdatasync,
            prealloc,
            spread,
        } => run_pwrite(spec, dir, &pool, chunk, fdatasync, prealloc, spread),
        _ => run_engine(kind, spec, dir, &pool),
    };
    let result = match result {
        Ok(r) => r,
        Err(e) => RunResult::failed(kind, spec, e.to_string()),
    };
    // Best effort: a leftover directory is emptied by the next run anyway.
    let _ = std::fs::remove_dir_all(dir);
    Ok(result)
}

fn reset_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir)
}

fn run_engine(
    kind: EngineKind,
    spec: &WorkloadSpec,
    dir: &Path,
    pool: &PayloadPool,
) -> io::Result<RunResult> {
    let engine = engine::open(
        kind,
        &OpenOptions {
            dir: dir.to_path_buf(),
            fsync: spec.fsync,
            consistency: spec.consistency,
            backend: spec.backend,
            segment_len: spec.segment_len,
            block_len: spec.block_len,
            journal: spec.journal,
        },
    )?;
    let topic_count = spec
        .topics
        .unwrap_or(spec.threads)
        .clamp(1, spec.threads.max(1));
    let topics: Vec<String> = (0..topic_count).map(|i| format!("topic-{i}")).collect();
    let prefill_secs = if spec.op.is_read() {
        let t = Instant::now();
        prefill(&*engine, &topics, pool, spec.prefill)?;
        t.elapsed().as_secs_f64()
    } else {
        0.0
    };
    let windows = pool.windows(match spec.op {
        Op::AppendBatch { size } => size,
        _ => 0,
    });
    let commits_before = engine.group_commit();
    let (tallies, start) = drive(spec, |i, deadline| {
        drive_engine(
            &*engine,
            &topics[i % topics.len()],
            spec.op,
            &windows,
            i,
            deadline,
        )
    })?;
    let disk = if spec.op.is_read() {
        None
    } else {
        Some(stats::disk_usage(dir)?)
    };
    let group_commit = engine
        .group_commit()
        .zip(commits_before)
        .map(|(after, before)| after.since(before));
    drop(engine);
    let mut result = finish(kind, spec, tallies, start, disk, prefill_secs);
    result.group_commit = group_commit;
    Ok(result)
}

/// Fills every topic with `per_topic` entries, in batches of 256 (not measured).
fn prefill(
    engine: &dyn Engine,
    topics: &[String],
    pool: &PayloadPool,
    per_topic: u64,
) -> io::Result<()> {
    const BATCH: usize = 256;
    let windows = pool.windows(BATCH);
    std::thread::scope(|s| {
        let handles: Vec<_> = topics
            .iter()
            .enumerate()
            .map(|(t, topic)| {
                let windows = &windows;
                s.spawn(move || -> io::Result<()> {
                    let mut left = per_topic;
                    let mut k = t * 977;
                    while left > 0 {
                        let n = usize::try_from(left.min(BATCH as u64)).unwrap_or(BATCH);
                        let start = k % pool.len();
                        engine.append_batch(topic, &windows[start..start + n])?;
                        k += n;
                        left -= n as u64;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(io::Error::other("prefill panicked")))
        })
    })
}

/// Starts `spec.threads` threads running `body(thread index, deadline)` together.
fn drive<F>(spec: &WorkloadSpec, body: F) -> io::Result<(Vec<ThreadTally>, Instant)>
where
    F: Fn(usize, Instant) -> io::Result<ThreadTally> + Sync,
{
    let duration = Duration::from_secs_f64(spec.duration_secs.max(0.001));
    let barrier = Barrier::new(spec.threads + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..spec.threads)
            .map(|i| {
                let (barrier, body) = (&barrier, &body);
                s.spawn(move || {
                    barrier.wait();
                    body(i, Instant::now() + duration)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let tallies = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("driver thread panicked")))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok((tallies, start))
    })
}

/// The closed loop of one thread on one topic.
fn drive_engine(
    engine: &dyn Engine,
    topic: &str,
    op: Op,
    windows: &[&[u8]],
    thread: usize,
    deadline: Instant,
) -> io::Result<ThreadTally> {
    let pool_len = windows.len().max(1);
    let mut hist = stats::new_histogram();
    let (mut entries, mut bytes) = (0u64, 0u64);
    // Threads start at different places in the pool so they do not write identical streams.
    let mut k = thread * 997;
    let mut end = Instant::now();
    loop {
        let t0 = Instant::now();
        let (n, b) = match op {
            Op::Append => {
                let p = windows[k % pool_len];
                engine.append(topic, p)?;
                k += 1;
                (1, p.len())
            }
            Op::AppendBatch { size } => {
                let start = k % (pool_len - size);
                let batch = &windows[start..start + size];
                engine.append_batch(topic, batch)?;
                k += size;
                (size, batch.iter().map(|p| p.len()).sum())
            }
            Op::ReadNext => match engine.read_next(topic)? {
                Some(len) => (1, len),
                None => (0, 0),
            },
            Op::ReadBatch { max_bytes } => engine.read_batch(topic, max_bytes)?,
            Op::Pwrite { .. } => unreachable!("pwrite runs on files"),
        };
        let t1 = Instant::now();
        if n == 0 {
            break; // drained
        }
        stats::record(&mut hist, t1 - t0);
        entries += n as u64;
        bytes += b as u64;
        end = t1;
        if t1 >= deadline {
            break;
        }
    }
    Ok(ThreadTally {
        entries,
        bytes,
        hist,
        end,
    })
}

/// The physical baseline: each thread writes to a plain file of its own with `pwrite`, its
/// calls' entries appended or spread over blocks as `spread` says.
fn run_pwrite(
    spec: &WorkloadSpec,
    dir: &Path,
    pool: &PayloadPool,
    chunk: usize,
    fdatasync: bool,
    prealloc: Prealloc,
    spread: Spread,
) -> io::Result<RunResult> {
    let chunk = chunk.max(1);
    if let Spread::Blocks { block } = spread
        && (block == 0
            || spec.sizes.max as u64 > block
            || (chunk as u64).saturating_mul(block) > Prealloc::LEN)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{chunk} regions of {block}-byte blocks cannot hold entries of up to {} bytes \
                 apart in a {} byte file",
                spec.sizes.max,
                Prealloc::LEN
            ),
        ));
    }
    // Chunks concatenated ahead of time, like the pool: the loop only writes.
    let chunks: Vec<Vec<u8>> = (0..64)
        .map(|c| {
            (0..chunk)
                .flat_map(|j| pool.get(c * chunk + j).iter().copied())
                .collect()
        })
        .collect();
    // At most an eighth of the free space for all the threads' files together: the disk is
    // shared (past it, a loop extends its file).
    let cap = free_space(&dir.join("pwrite-0")).map(|free| free / 8 / spec.threads.max(1) as u64);
    let files = (0..spec.threads)
        .map(|i| {
            prepare_file(
                &dir.join(format!("pwrite-{i}")),
                prealloc,
                spec.duration_secs,
                cap,
            )
        })
        .collect::<io::Result<Vec<_>>>()?;
    let (tallies, start) = drive(spec, |i, deadline| {
        let file = &files[i];
        let mut hist = stats::new_histogram();
        let (mut entries, mut bytes, mut offset) = (0u64, 0u64, 0u64);
        let mut blocks = match spread {
            Spread::Contiguous => None,
            Spread::Blocks { block } => Some(BlockCursor::new(chunk, block)),
        };
        let mut k = i * 7;
        loop {
            let t0 = Instant::now();
            let written = if let Some(blocks) = &mut blocks {
                let mut written = 0;
                for region in 0..chunk {
                    let buf = pool.get(k);
                    k += 1;
                    file.write_all_at(buf, blocks.place(region, buf.len() as u64))?;
                    written += buf.len() as u64;
                }
                written
            } else {
                let buf = &chunks[k % chunks.len()];
                k += 1;
                file.write_all_at(buf, offset)?;
                offset += buf.len() as u64;
                buf.len() as u64
            };
            if fdatasync {
                file.sync_data()?;
            }
            let t1 = Instant::now();
            stats::record(&mut hist, t1 - t0);
            entries += chunk as u64;
            bytes += written;
            if t1 >= deadline {
                return Ok(ThreadTally {
                    entries,
                    bytes,
                    hist,
                    end: t1,
                });
            }
        }
    })?;
    let disk = stats::disk_usage(dir)?;
    Ok(finish(
        EngineKind::Disk,
        spec,
        tallies,
        start,
        Some(disk),
        0.0,
    ))
}

/// Where [`Spread::Blocks`] puts each entry: every region fills a block of its own, and a
/// region whose entry does not fit gets the next block handed out (as the allocator hands
/// blocks to topics). Offsets wrap around at the last whole block of [`Prealloc::LEN`].
#[derive(Debug)]
struct BlockCursor {
    block: u64,
    wrap: u64,
    /// Per region: its block's start, and the bytes written into it.
    at: Vec<(u64, u64)>,
    next_block: u64,
}

impl BlockCursor {
    /// Regions `0..regions` start in blocks `0..regions`. `block` must be at least 1 and
    /// `regions` blocks must fit in [`Prealloc::LEN`], so the regions never overlap.
    fn new(regions: usize, block: u64) -> Self {
        Self {
            block,
            wrap: Prealloc::LEN - Prealloc::LEN % block,
            at: (0..regions as u64).map(|r| (r * block, 0)).collect(),
            next_block: regions as u64,
        }
    }

    /// The file offset of the next entry of `len` bytes (at most a block) in `region`.
    fn place(&mut self, region: usize, len: u64) -> u64 {
        let at = &mut self.at[region];
        if at.1 + len > self.block {
            *at = (self.next_block * self.block, 0);
            self.next_block += 1;
        }
        let offset = (at.0 + at.1) % self.wrap;
        at.1 += len;
        offset
    }
}

/// Bytes free for unprivileged use on the file system of `path`'s directory.
fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = path.parent()?;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `statvfs` is a plain C struct of integers, for which all zeros is a value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a statvfs the call fills; both live for
    // the call.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &raw mut st) };
    (rc == 0).then(|| st.f_bavail.saturating_mul(st.f_frsize))
}

/// Creates a baseline file prepared as `prealloc` says, for a run of `secs` (not measured).
/// Creates the loop's file at `path`, preallocated as `prealloc` says: for a run, as much as
/// `secs` can write, at most `cap` bytes (`None`: free space unknown).
fn prepare_file(path: &Path, prealloc: Prealloc, secs: f64, cap: Option<u64>) -> io::Result<File> {
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    match prealloc {
        Prealloc::Extend => {}
        Prealloc::Fallocate | Prealloc::FallocateRun => {
            let len = if prealloc == Prealloc::Fallocate {
                Prealloc::LEN
            } else {
                // Whole seconds, at least one: a run stops at its deadline.
                (secs.ceil().max(1.0) as u64)
                    .saturating_mul(2 << 30)
                    .min(cap.unwrap_or(Prealloc::LEN))
                    .max(Prealloc::LEN)
            };
            let len = libc::off_t::try_from(len).map_err(io::Error::other)?;
            // SAFETY: fallocate on a descriptor this function owns and keeps open; no memory
            // is passed.
            let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            file.sync_all()?;
        }
        Prealloc::Zeroed => {
            let zeros = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < Prealloc::LEN {
                file.write_all_at(&zeros, at)?;
                at += zeros.len() as u64;
            }
            file.sync_all()?;
        }
    }
    Ok(file)
}

fn finish(
    kind: EngineKind,
    spec: &WorkloadSpec,
    tallies: Vec<ThreadTally>,
    start: Instant,
    disk: Option<DiskUsage>,
    prefill_secs: f64,
) -> RunResult {
    let mut hist = stats::new_histogram();
    let (mut entries, mut bytes, mut end) = (0, 0, start);
    for t in tallies {
        // Same bounds on both sides: adding cannot fail.
        let _ = hist.add(&t.hist);
        entries += t.entries;
        bytes += t.bytes;
        end = end.max(t.end);
    }
    RunResult {
        engine: kind,
        spec: spec.clone(),
        entries,
        payload_bytes: bytes,
        elapsed_secs: end.saturating_duration_since(start).as_secs_f64(),
        latency: LatencySummary::of(&hist),
        disk,
        prefill_secs,
        error: None,
        group_commit: None,
        rates: Vec::new(),
        rounds: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(op: Op, threads: usize) -> WorkloadSpec {
        WorkloadSpec {
            group: "test".into(),
            name: "test".into(),
            op,
            threads,
            topics: None,
            fsync: Fsync::NoFsync,
            consistency: Consistency::AtLeastOnce(100),
            sizes: Sizes::STANDARD,
            duration_secs: 0.2,
            prefill: 2000,
            backend: Backend::Pwrite,
            segment_len: Some(8 << 20),
            block_len: None,
            journal: None,
        }
    }

    fn check(r: &RunResult) {
        assert!(r.ok(), "{r:?}");
        assert!(r.elapsed_secs > 0.0 && r.elapsed_secs < 5.0, "{r:?}");
        assert_eq!(r.latency.calls > 0, r.entries > 0);
        assert!(r.payload_bytes >= r.entries * 500 && r.payload_bytes <= r.entries * 1024);
        assert!(r.latency.p50_ns <= r.latency.p99_ns && r.latency.p99_ns <= r.latency.max_ns);
    }

    #[test]
    fn tiny_end_to_end_runs_on_our_engine_and_the_disk() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let w = run(EngineKind::Walrus, &spec(Op::Append, 2), &dir).unwrap();
        check(&w);
        let disk = w.disk.unwrap();
        assert!(disk.allocated_bytes >= w.payload_bytes, "{disk:?}");
        assert!(!dir.exists(), "the run's directory is removed");

        // Three threads sharing one topic, synced: one group commit of one chain.
        let mut shared = spec(Op::Append, 3);
        shared.topics = Some(1);
        shared.fsync = Fsync::SyncEach;
        let s = run(EngineKind::Walrus, &shared, &dir).unwrap();
        check(&s);
        assert_eq!(s.latency.calls, s.entries);
        // Every acknowledged entry was made durable by a sync of the loop, once.
        let g = s.group_commit.unwrap();
        assert!(g.syncs > 0 && g.syncs <= s.entries, "{g:?}");
        assert_eq!(g.entries_synced, s.entries, "{g:?}");
        assert!(g.sync_micros > 0, "{g:?}");
        assert!(
            shared.label().contains("t=3 topics=1"),
            "{}",
            shared.label()
        );
        // The block length reaches the engine: one it refuses fails the run.
        let mut paged = shared.clone();
        paged.block_len = Some(4096);
        check(&run(EngineKind::Walrus, &paged, &dir).unwrap());
        assert!(paged.label().ends_with("blk=4KiB"), "{}", paged.label());
        paged.block_len = Some(4097);
        assert!(paged.label().ends_with("blk=4097B"), "{}", paged.label());
        let refused = run(EngineKind::Walrus, &paged, &dir).unwrap();
        assert!(
            refused.error.as_deref().is_some_and(|e| e.contains("4097")),
            "{refused:?}"
        );

        let b = run(
            EngineKind::Walrus,
            &spec(Op::AppendBatch { size: 16 }, 1),
            &dir,
        )
        .unwrap();
        check(&b);
        assert_eq!(b.entries % 16, 0);
        assert_eq!(b.latency.calls * 16, b.entries);

        let r = run(EngineKind::Walrus, &spec(Op::ReadNext, 1), &dir).unwrap();
        check(&r);
        assert!(r.entries <= 2000 && r.disk.is_none());
        let rb = run(
            EngineKind::Walrus,
            &spec(Op::ReadBatch { max_bytes: 8192 }, 1),
            &dir,
        );
        check(&rb.unwrap());

        let p = run(EngineKind::Disk, &spec(Op::pwrite(4, false), 1), &dir).unwrap();
        check(&p);
        assert_eq!(p.latency.calls * 4, p.entries);
    }

    #[test]
    fn block_spread_fills_each_regions_block_then_takes_the_next_one() {
        let mut c = BlockCursor::new(2, 4096);
        let places: Vec<u64> = (0..5)
            .flat_map(|_| [c.place(0, 1000), c.place(1, 1000)])
            .collect();
        // Four entries fill each first block; the fifth of region 0 takes block 2, region 1's
        // takes block 3.
        assert_eq!(
            places,
            [0, 4096, 1000, 5096, 2000, 6096, 3000, 7096, 8192, 12288]
        );
        // The offsets wrap at the last whole block of the prepared file.
        let mut c = BlockCursor::new(1, Prealloc::LEN / 2 + 1);
        assert_eq!(c.place(0, Prealloc::LEN / 2), 0);
        assert_eq!(
            c.place(0, 2),
            0,
            "the second block wraps to the file's start"
        );
    }

    #[test]
    fn the_block_spread_loop_syncs_one_entry_per_region_per_call() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let op = |block| Op::Pwrite {
            chunk: 4,
            fdatasync: true,
            prealloc: Prealloc::Zeroed,
            spread: Spread::Blocks { block },
        };
        let p = run(EngineKind::Disk, &spec(op(4096), 1), &dir).unwrap();
        check(&p);
        assert_eq!(p.latency.calls * 4, p.entries);
        // A block smaller than the longest entry is refused, not run; so are regions that
        // would overlap in the prepared file.
        let small = run(EngineKind::Disk, &spec(op(512), 1), &dir).unwrap();
        assert!(small.error.unwrap().contains("512"));
        let wide = run(EngineKind::Disk, &spec(op(Prealloc::LEN / 2), 1), &dir).unwrap();
        assert!(wide.error.unwrap().contains("4 regions"));
    }

    #[test]
    fn a_failing_engine_reports_instead_of_panicking() {
        let root = tempfile::tempdir().unwrap();
        let r = run(
            EngineKind::Disk,
            &spec(Op::Append, 1),
            &root.path().join("d"),
        )
        .unwrap();
        assert!(!r.ok());
        assert!(r.error.unwrap().contains("physical"));
    }
}
