//! The standard suite: which workloads run on which engine, in what order, and how each run is
//! executed — in this process, or in a child process of its own for engines with
//! process-global state.

use std::fmt;
use std::io::{self, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::config::{Backend, Consistency, Fsync, ThreadRange};
use crate::engine::EngineKind;
use crate::payload::Sizes;
use crate::workload::{self, Op, Prealloc, RunResult, Spread, WorkloadSpec};

/// A family of workloads, selectable with `--workloads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Group {
    /// The plain `pwrite` and `pwrite`+`fdatasync` loops (the disk's ceiling).
    Physical,
    /// Single appends, for each thread count of the range (the scaling sweep).
    Writes,
    /// Batches, for each thread count of the range (the batch scaling sweep).
    BatchWrites,
    /// `SyncEach` single appends with 1, 4, 16 and 64 threads, each on a topic of its own, and
    /// 16 threads on one topic (group commit).
    Synced,
    /// Draining a prefilled topic: `read_next` in both consistency modes, and batch reads.
    Reads,
    /// 700-byte entries: bytes on disk per payload byte.
    Space,
    /// Disk footprint and reopen time: a fresh instance, 10,000 and 100,000 topics, 1 GiB
    /// (and with `--full` 4 GiB) of entries (ours only; see [`crate::footprint`]).
    Footprint,
    /// The S3 WAL buffer on a local moto server: producers 1-64 x flush intervals, beside one
    /// PUT per entry (see [`crate::s3`]).
    S3,
    /// 1-8 named consumers draining one topic, and the wake-up latency of a waiting read
    /// (ours only; see [`crate::consumers`]).
    Consumers,
    /// Replicated appends on a 3-node raft cluster on loopback, 1-16 clients, beside one
    /// node's `SyncEach` (ours only; see [`crate::raft`]).
    Raft,
    /// Tiered storage on a local moto server: upload throughput, sequential reads of tiered
    /// data beside local reads (ours only; see [`crate::tiering`]).
    Tiering,
}

impl Group {
    /// Every group, in suite order.
    pub const ALL: [Self; 11] = [
        Self::Physical,
        Self::Writes,
        Self::BatchWrites,
        Self::Synced,
        Self::Reads,
        Self::Space,
        Self::Footprint,
        Self::S3,
        Self::Consumers,
        Self::Raft,
        Self::Tiering,
    ];
}

impl FromStr for Group {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "physical" | "disk" => Ok(Self::Physical),
            "writes" | "scaling" => Ok(Self::Writes),
            "batch-writes" | "batch" | "batch-scaling" => Ok(Self::BatchWrites),
            "synced" | "sync" => Ok(Self::Synced),
            "reads" => Ok(Self::Reads),
            "space" => Ok(Self::Space),
            "footprint" => Ok(Self::Footprint),
            "s3" => Ok(Self::S3),
            "consumers" => Ok(Self::Consumers),
            "raft" => Ok(Self::Raft),
            "tiering" | "tier" => Ok(Self::Tiering),
            _ => Err(format!(
                "workload {s:?}: expected physical, writes, batch-writes, synced, reads, space, \
                 footprint, s3, consumers, raft or tiering"
            )),
        }
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Physical => "physical",
            Self::Writes => "writes",
            Self::BatchWrites => "batch-writes",
            Self::Synced => "synced",
            Self::Reads => "reads",
            Self::Space => "space",
            Self::Footprint => "footprint",
            Self::S3 => "s3",
            Self::Consumers => "consumers",
            Self::Raft => "raft",
            Self::Tiering => "tiering",
        })
    }
}

impl From<Group> for String {
    fn from(v: Group) -> Self {
        v.to_string()
    }
}

impl TryFrom<String> for Group {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// The thread count of the synced workload that also runs with every thread on one topic.
pub const SHARED_TOPIC_THREADS: usize = 16;

/// Everything that shapes a suite run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteConfig {
    /// The long suite (`--full`) rather than the default short one.
    pub full: bool,
    /// Fsync schedule of the unsynced workloads (writes, batches, reads, space).
    pub fsync: Fsync,
    /// Thread counts of the scaling sweeps.
    pub threads: ThreadRange,
    /// Seconds per measured loop.
    pub duration_secs: f64,
    /// Entries per batch in the batch workloads.
    pub batch_size: usize,
    /// Storage backend of our engine.
    pub backend: Backend,
    /// Longest block of our engine's topics; `None` = the engine's default.
    #[serde(default)]
    pub block_len: Option<u64>,
    /// Our engine's group-commit journal under `SyncEach`; `None` = the engine's default (on).
    #[serde(default)]
    pub journal: Option<bool>,
    /// Engines compared, in order (the physical baseline runs on `disk` regardless).
    pub engines: Vec<EngineKind>,
    /// Workload families to run.
    pub groups: Vec<Group>,
    /// Entries prefilled into each topic before a read workload.
    pub prefill: u64,
    /// `max_bytes` of a batch read.
    pub read_batch_bytes: usize,
    /// `persist_every` of the at-least-once reads.
    pub persist_every: u32,
    /// Thread counts of the synced workload.
    pub synced_threads: Vec<usize>,
    /// Dollars per 1,000 PUT requests, for the `s3` family's cost column.
    #[serde(default = "default_put_price")]
    pub put_price: f64,
    /// How many times the plan runs (in rounds, so that every engine sees the same stretch of
    /// a noisy machine); each row reports its median run.
    #[serde(default = "default_repeat")]
    pub repeat: usize,
}

fn default_repeat() -> usize {
    1
}

fn default_put_price() -> f64 {
    crate::s3::DEFAULT_PUT_PRICE
}

impl SuiteConfig {
    /// The default suite (`cargo xtask bench`): about two minutes on two cores.
    #[must_use]
    pub fn quick() -> Self {
        Self {
            full: false,
            fsync: Fsync::NoFsync,
            threads: ThreadRange { min: 1, max: 4 },
            duration_secs: 2.0,
            batch_size: 256,
            backend: Backend::Pwrite,
            block_len: None,
            journal: None,
            engines: EngineKind::COMPARED.to_vec(),
            groups: Group::ALL.to_vec(),
            prefill: 400_000,
            read_batch_bytes: 256 << 10,
            persist_every: 1000,
            synced_threads: vec![1, 4, 16, 64],
            put_price: crate::s3::DEFAULT_PUT_PRICE,
            repeat: 1,
        }
    }

    /// The long suite (`cargo xtask bench --full`).
    #[must_use]
    pub fn full() -> Self {
        Self {
            full: true,
            threads: ThreadRange { min: 1, max: 8 },
            duration_secs: 10.0,
            prefill: 2_000_000,
            ..Self::quick()
        }
    }

    /// Every run of the suite, in order: the physical baseline first, then each workload on
    /// each engine back to back, so that compared figures are taken close together.
    #[must_use]
    pub fn plan(&self) -> Vec<(EngineKind, WorkloadSpec)> {
        let base = WorkloadSpec {
            group: String::new(),
            name: String::new(),
            op: Op::Append,
            threads: 1,
            topics: None,
            fsync: self.fsync,
            consistency: Consistency::AtLeastOnce(self.persist_every),
            sizes: Sizes::STANDARD,
            duration_secs: self.duration_secs,
            prefill: 0,
            backend: self.backend,
            segment_len: None,
            block_len: self.block_len,
            journal: self.journal,
        };
        let spec = |group: Group, name: &str, op: Op, threads: usize| WorkloadSpec {
            group: group.to_string(),
            name: name.to_string(),
            op,
            threads,
            ..base.clone()
        };
        let mut plan = Vec::new();
        // Each engine that can run the workload: reads need cursors, and an engine that syncs
        // every write runs only the synced workloads.
        let each_engine = |s: WorkloadSpec, plan: &mut Vec<_>| {
            for &e in &self.engines {
                let fits = (e.has_cursors() || !s.op.is_read())
                    && (!e.always_syncs() || s.fsync == Fsync::SyncEach);
                if fits {
                    plan.push((e, s.clone()));
                }
            }
        };
        let batch = self.batch_size.clamp(1, 2000);
        for &group in &self.groups {
            match group {
                Group::Physical => {
                    let phys = |name: &str, chunk, fdatasync| {
                        let mut s = spec(group, name, Op::pwrite(chunk, fdatasync), 1);
                        // Plain files: our engine's block length and journal do not apply.
                        s.block_len = None;
                        s.journal = None;
                        s.fsync = if fdatasync {
                            Fsync::SyncEach
                        } else {
                            Fsync::NoFsync
                        };
                        (EngineKind::Disk, s)
                    };
                    // One per thread count of the sweeps: what the disk gives at that
                    // concurrency, each thread appending to a file of its own.
                    // Twice: extending its file, and into space claimed ahead as the engine's
                    // segments are; the unsynced targets take the faster of the two.
                    for t in self.threads.counts() {
                        let mut p = phys("pwrite", 1, false);
                        p.1.threads = t;
                        plan.push(p.clone());
                        p.1.name = "pwrite fallocated".into();
                        p.1.op = Op::Pwrite {
                            chunk: 1,
                            fdatasync: false,
                            prealloc: Prealloc::FallocateRun,
                            spread: Spread::Contiguous,
                        };
                        plan.push(p);
                    }
                    plan.push(phys(&format!("pwrite x{batch}"), batch, false));
                    // Syncs: into a file each write extends, into fallocated (unwritten)
                    // space as segment files are, and over zero-filled written space.
                    plan.push(phys("pwrite+fdatasync", 1, true));
                    for (name, prealloc) in [
                        ("pwrite+fdatasync fallocated", Prealloc::Fallocate),
                        ("pwrite+fdatasync zeroed", Prealloc::Zeroed),
                    ] {
                        let mut p = phys(name, 1, true);
                        p.1.op = Op::Pwrite {
                            chunk: 1,
                            fdatasync: true,
                            prealloc,
                            spread: Spread::Contiguous,
                        };
                        plan.push(p);
                    }
                    // What one group sync of 16 topics costs the disk, by where their last
                    // pages lie: side by side (blocks of a page) or a block apart (the
                    // blocks `SyncEach` topics grow to). The bound of any block layout.
                    for block in [4 << 10, 32 << 10] {
                        let name = format!(
                            "pwrite+fdatasync x{SHARED_TOPIC_THREADS} {}KiB blocks",
                            block >> 10
                        );
                        let mut p = phys(&name, SHARED_TOPIC_THREADS, true);
                        p.1.op = Op::Pwrite {
                            chunk: SHARED_TOPIC_THREADS,
                            fdatasync: true,
                            prealloc: Prealloc::Zeroed,
                            spread: Spread::Blocks { block },
                        };
                        plan.push(p);
                    }
                }
                Group::Writes => {
                    for t in self.threads.counts() {
                        each_engine(spec(group, "append", Op::Append, t), &mut plan);
                    }
                    // The 2-thread appends again on the mmap backend, which stores an append
                    // with a copy instead of a system call (not the default: a device error
                    // while a page is faulted in is a SIGBUS).
                    if self.backend != Backend::Mmap && self.threads.counts().any(|t| t == 2) {
                        let mut s = spec(group, workload::MMAP_APPEND, Op::Append, 2);
                        s.backend = Backend::Mmap;
                        for &e in &self.engines {
                            if EngineKind::COMPARED.contains(&e) {
                                plan.push((e, s.clone()));
                            }
                        }
                    }
                }
                Group::BatchWrites => {
                    for t in self.threads.counts() {
                        let name = format!("batch {batch}");
                        let s = spec(group, &name, Op::AppendBatch { size: batch }, t);
                        each_engine(s, &mut plan);
                    }
                }
                Group::Synced => {
                    for &t in &self.synced_threads {
                        let mut s = spec(group, "append sync-each", Op::Append, t);
                        s.fsync = Fsync::SyncEach;
                        each_engine(s.clone(), &mut plan);
                        // And all threads on one topic: the group commit of one chain.
                        if t == SHARED_TOPIC_THREADS {
                            s.topics = Some(1);
                            each_engine(s, &mut plan);
                        }
                    }
                }
                Group::Reads => {
                    let reads = [
                        (
                            format!("read_next at-least-once/{}", self.persist_every),
                            Op::ReadNext,
                            Consistency::AtLeastOnce(self.persist_every),
                        ),
                        (
                            "read_next strict".to_string(),
                            Op::ReadNext,
                            Consistency::StrictlyAtOnce,
                        ),
                        (
                            format!("batch_read {}KiB strict", self.read_batch_bytes >> 10),
                            Op::ReadBatch {
                                max_bytes: self.read_batch_bytes,
                            },
                            Consistency::StrictlyAtOnce,
                        ),
                    ];
                    for (name, op, consistency) in reads {
                        let mut s = spec(group, &name, op, 1);
                        s.consistency = consistency;
                        s.prefill = self.prefill;
                        each_engine(s, &mut plan);
                    }
                }
                // Not timed engine workloads: run by `crate::footprint`, `crate::s3` and
                // `crate::consumers` and `crate::raft` after the plan.
                Group::Footprint | Group::S3 | Group::Consumers | Group::Raft | Group::Tiering => {}
                Group::Space => {
                    let mut s = spec(group, "append 700B", Op::Append, 1);
                    s.sizes = Sizes::fixed(700);
                    // The footprint target is the default geometry's.
                    s.block_len = None;
                    each_engine(s.clone(), &mut plan);
                    // And with small segments (16 MiB + the 4 KiB header: exactly 16 blocks
                    // of 1 MiB), where a segment's wasted tail would show.
                    if self.engines.contains(&EngineKind::Walrus) {
                        s.segment_len = Some((16 << 20) + 4096);
                        plan.push((EngineKind::Walrus, s));
                    }
                }
            }
        }
        plan
    }
}

/// Runs `plan` `repeat` times (at least once) with data under `data_dir`, in rounds: a
/// progress bar on a terminal, and one line per finished run (above the bar, or on stderr when
/// there is no terminal). Each row's result is its median run by entries/s, with every run's
/// rate in [`RunResult::rates`] and every run's figures in [`RunResult::rounds`]; a failed run
/// fails its row. Before each run the page cache is written back and the disk given a moment:
/// what the run before left to write (its files' deletion) is not charged to this one.
#[must_use]
pub fn run_plan(
    plan: &[(EngineKind, WorkloadSpec)],
    data_dir: &Path,
    repeat: usize,
) -> Vec<RunResult> {
    let repeat = repeat.max(1);
    let total = plan.len().saturating_mul(repeat);
    let bar = progress_bar(total as u64);
    let mut runs: Vec<Vec<RunResult>> = vec![Vec::new(); plan.len()];
    warm_up(plan, data_dir);
    for round in 0..repeat {
        for (i, (engine, spec)) in plan.iter().enumerate() {
            bar.set_message(format!("{} on {engine}", spec.label()));
            settle();
            let r = run_one(*engine, spec, data_dir);
            let line = format!(
                "[{}/{total}] {:<40} {:<11} {}",
                round * plan.len() + i + 1,
                spec.label(),
                engine.to_string(),
                crate::report::one_line(&r)
            );
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
            bar.inc(1);
            runs[i].push(r);
        }
    }
    bar.finish_and_clear();
    runs.into_iter().filter_map(median_run).collect()
}

/// The run of a row with the median entries/s (the lower middle one of an even count), with
/// every run's rate in [`RunResult::rates`] when there was more than one. A failed run makes
/// the row failed: a repeat must not hide an error.
fn median_run(mut runs: Vec<RunResult>) -> Option<RunResult> {
    if runs.len() <= 1 {
        return runs.pop();
    }
    if let Some(i) = runs.iter().position(|r| !r.ok()) {
        return Some(runs.swap_remove(i));
    }
    let rates: Vec<f64> = runs.iter().map(RunResult::entries_per_sec).collect();
    let rounds = runs.iter().map(RunResult::round).collect();
    runs.sort_by(|a, b| a.entries_per_sec().total_cmp(&b.entries_per_sec()));
    let mut median = runs.swap_remove((runs.len() - 1) / 2);
    median.rates = rates;
    median.rounds = rounds;
    Some(median)
}

/// Runs the plan's unsynced `pwrite` loops once, unrecorded. The first writes after a build
/// (whose output fills the page cache) ran at half speed and twice the p99 of the rounds
/// after them: the kernel reclaims pages for them first.
fn warm_up(plan: &[(EngineKind, WorkloadSpec)], data_dir: &Path) {
    for (engine, spec) in plan {
        if matches!(
            spec.op,
            Op::Pwrite {
                fdatasync: false,
                ..
            }
        ) {
            settle();
            let _ = run_one(*engine, spec, data_dir);
        }
    }
}

/// Writes back every dirty page (`sync(2)` waits for it on Linux) and waits a moment for the
/// device: each run starts from a quiet disk, whatever ran before it (a build, or the deletion
/// of the previous run's files).
fn settle() {
    // SAFETY: `sync` takes no arguments and touches no memory of ours.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_millis(200));
}

fn progress_bar(len: u64) -> ProgressBar {
    let tty = io::stdout().is_terminal() && io::stderr().is_terminal();
    let target = if tty {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
    {
        bar.set_style(style);
    }
    if tty {
        bar.enable_steady_tick(Duration::from_millis(200));
    }
    bar
}

/// One run, in this process or in a child.
#[must_use]
pub fn run_one(engine: EngineKind, spec: &WorkloadSpec, data_dir: &Path) -> RunResult {
    let dir = data_dir.join(format!("{engine}"));
    let outcome = if engine.needs_child_process() {
        run_in_child(engine, spec, &dir)
    } else {
        workload::run(engine, spec, &dir)
    };
    outcome.unwrap_or_else(|e| RunResult::failed(engine, spec, e.to_string()))
}

/// Re-executes this binary as `--engine E --workload JSON --data-dir D` and reads the result,
/// the last line of the child's stdout, as JSON.
fn run_in_child(engine: EngineKind, spec: &WorkloadSpec, dir: &Path) -> io::Result<RunResult> {
    let exe = child_exe()?;
    let json = serde_json::to_string(spec).map_err(io::Error::other)?;
    let mut child = Command::new(exe)
        .arg("--engine")
        .arg(engine.to_string())
        .arg("--workload")
        .arg(json)
        .arg("--data-dir")
        .arg(dir)
        .env("WALRUS_DATA_DIR", dir)
        .env("WALRUS_QUIET", "1")
        .env_remove("WALRUS_INSTANCE_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let readers = (
        std::thread::spawn(move || read_all(out.as_mut())),
        std::thread::spawn(move || read_all(err.as_mut())),
    );
    // A hung child (a deadlocked engine) must not hang the suite.
    let limit = Duration::from_secs_f64(spec.duration_secs * 4.0 + 120.0);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("child killed after {:.0} s", limit.as_secs_f64()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = readers.0.join().unwrap_or_default();
    let stderr = readers.1.join().unwrap_or_default();
    if !status.success() {
        return Err(io::Error::other(format!(
            "child {status}: {}",
            last_lines(&stderr, 5)
        )));
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| {
            io::Error::other(format!(
                "child printed no result: {}",
                last_lines(&stderr, 5)
            ))
        })?;
    serde_json::from_str(line).map_err(io::Error::other)
}

fn read_all(r: Option<&mut impl Read>) -> String {
    let mut s = String::new();
    if let Some(r) = r {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        s = String::from_utf8_lossy(&buf).into_owned();
    }
    s
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// The binary to re-execute: this one, unless tests name the real bench binary.
fn child_exe() -> io::Result<PathBuf> {
    match std::env::var_os("WALRUS_BENCH_EXE") {
        Some(p) => Ok(PathBuf::from(p)),
        None => std::env::current_exe(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_row_reports_its_median_run_and_every_rate() {
        let spec = SuiteConfig::quick().plan()[0].1.clone();
        let run = |entries: u64| RunResult {
            entries,
            elapsed_secs: 1.0,
            error: None,
            ..RunResult::failed(EngineKind::Disk, &spec, String::new())
        };
        let m = median_run(vec![run(10), run(30), run(20)]).unwrap();
        assert_eq!(m.entries, 20);
        assert_eq!(m.rates, [10.0, 30.0, 20.0]);
        let in_order: Vec<f64> = m.rounds.iter().map(|r| r.entries_per_sec).collect();
        assert_eq!(in_order, [10.0, 30.0, 20.0], "rounds in the order they ran");
        // An even count takes the lower middle run.
        assert_eq!(median_run(vec![run(40), run(10)]).unwrap().entries, 10);
        // One run stays as it is; a failed run is never hidden by the others.
        let one = median_run(vec![run(7)]).unwrap();
        assert!(one.entries == 7 && one.rates.is_empty());
        let mut failed = run(0);
        failed.error = Some("boom".into());
        let m = median_run(vec![run(10), failed, run(30)]).unwrap();
        assert_eq!(m.error.as_deref(), Some("boom"));
        assert!(median_run(Vec::new()).is_none());
        let t = crate::report::table(&[median_run(vec![run(1000), run(3000), run(2000)]).unwrap()]);
        assert!(
            t.contains("runs (entries/s)") && t.contains("1.0k–3.0k (3)"),
            "{t}"
        );
        assert!(!crate::report::table(&[run(5)]).contains("runs (entries/s)"));
    }

    #[test]
    fn quick_plan_covers_every_workload_on_both_engines() {
        let plan = SuiteConfig::quick().plan();
        let count = |engine: EngineKind, group: Group| {
            plan.iter()
                .filter(|(e, s)| *e == engine && s.group == group.to_string())
                .count()
        };
        // pwrite at 1-4 threads (extending its file, and into claimed space), a 256-entry
        // pwrite, 3 syncs of one entry, 2 of 16 spread.
        assert_eq!(count(EngineKind::Disk, Group::Physical), 14);
        let paged = SuiteConfig {
            block_len: Some(4096),
            ..SuiteConfig::quick()
        }
        .plan();
        assert!(
            paged.iter().all(|(e, s)| s.block_len
                == (*e != EngineKind::Disk && s.group != "space").then_some(4096)),
            "the block length is our engine's, not the plain files', and not the footprint's"
        );
        for e in EngineKind::COMPARED {
            // 1-4 threads, and 2 threads on the mmap backend.
            assert_eq!(count(e, Group::Writes), 5);
            assert_eq!(count(e, Group::BatchWrites), 4);
            // 1, 4, 16 and 64 threads on a topic each, and 16 threads on one topic.
            assert_eq!(count(e, Group::Synced), 5);
            assert_eq!(count(e, Group::Reads), 3);
        }
        assert_eq!(count(EngineKind::Walrus, Group::Space), 2);
        assert!(
            plan.iter()
                .all(|(_, s)| s.group != "synced" || s.fsync == Fsync::SyncEach)
        );
        let shared = plan
            .iter()
            .filter(|(_, s)| s.topics == Some(1))
            .collect::<Vec<_>>();
        assert!(
            shared.len() == 2 && shared.iter().all(|(_, s)| s.threads == 16),
            "{shared:?}"
        );
        let mmap: Vec<_> = plan
            .iter()
            .filter(|(_, s)| s.backend == Backend::Mmap)
            .collect();
        assert!(
            mmap.len() == 2
                && mmap.iter().all(|(_, s)| s.name == workload::MMAP_APPEND
                    && s.threads == 2
                    && s.fsync == Fsync::NoFsync),
            "{mmap:?}"
        );
        let on_mmap = SuiteConfig {
            backend: Backend::Mmap,
            ..SuiteConfig::quick()
        };
        assert!(
            on_mmap
                .plan()
                .iter()
                .all(|(_, s)| s.name != workload::MMAP_APPEND),
            "a suite on the mmap backend needs no second mmap run"
        );
        // Compared runs are adjacent: ours, then theirs, same spec.
        let w = plan
            .iter()
            .position(|(e, _)| *e == EngineKind::Walrus)
            .unwrap();
        assert_eq!(plan[w].1, plan[w + 1].1);
        assert_eq!(plan[w + 1].0, EngineKind::WalrusRust);
    }

    #[test]
    fn plan_follows_the_knobs() {
        let cfg = SuiteConfig {
            threads: "2".parse().unwrap(),
            batch_size: 64,
            engines: vec![EngineKind::Walrus],
            groups: vec![Group::BatchWrites],
            ..SuiteConfig::quick()
        };
        let plan = cfg.plan();
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].1.op, Op::AppendBatch { size: 64 });
        assert_eq!(plan[0].1.threads, 2);
        assert_eq!("batch".parse(), Ok(Group::BatchWrites));
        assert!("everything".parse::<Group>().is_err());
    }
}
