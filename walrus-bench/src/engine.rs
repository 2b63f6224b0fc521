//! The engines a workload can run on, behind one small trait: this workspace's `walrus`, the
//! published `walrus-rust` 0.2.0, and the physical baseline (`disk`, plain files).

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::{Backend, Consistency, Fsync};

/// What the workloads need from a log. Reads always consume; a topic is created by its first
/// append.
pub trait Engine: Send + Sync {
    /// Appends one entry to `topic`.
    ///
    /// # Errors
    /// The engine's error.
    fn append(&self, topic: &str, data: &[u8]) -> io::Result<()>;

    /// Appends `batch` to `topic` atomically.
    ///
    /// # Errors
    /// The engine's error.
    fn append_batch(&self, topic: &str, batch: &[&[u8]]) -> io::Result<()>;

    /// Consumes the next entry of `topic`; its length, or `None` when the topic is drained.
    ///
    /// # Errors
    /// The engine's error.
    fn read_next(&self, topic: &str) -> io::Result<Option<usize>>;

    /// Consumes up to `max_bytes` of entries of `topic`: (entries, payload bytes); (0, 0) when
    /// the topic is drained.
    ///
    /// # Errors
    /// The engine's error.
    fn read_batch(&self, topic: &str, max_bytes: usize) -> io::Result<(usize, usize)>;

    /// The engine's group-commit counters since it opened, if it keeps any (ours does).
    fn group_commit(&self) -> Option<GroupCommit> {
        None
    }
}

/// Group-commit counters of an engine: syncs that made entries durable, those entries, the time
/// spent in the syncs, and (ours) how the appenders' leaders gathered and how often appenders
/// parked. A run reports what its measured loop added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCommit {
    /// Syncs that made entries durable.
    pub syncs: u64,
    /// Entries those syncs made durable.
    pub entries_synced: u64,
    /// Time spent in those syncs, in µs.
    pub sync_micros: u64,
    /// Group syncs an appender led, whether or not they moved entries.
    #[serde(default)]
    pub led: u64,
    /// Leaders' gathers that ran out of time before their group was in.
    #[serde(default)]
    pub gathers_out_of_time: u64,
    /// Time the leaders spent gathering, in µs.
    #[serde(default)]
    pub gather_micros: u64,
    /// Times an appender parked to wait for a sync.
    #[serde(default)]
    pub parks: u64,
    /// Median sync (ours), in µs, over every sync since the instance opened: quantiles do
    /// not subtract, and each run opens a fresh instance.
    #[serde(default)]
    pub sync_p50_micros: u64,
    /// 99th percentile sync, likewise.
    #[serde(default)]
    pub sync_p99_micros: u64,
}

impl GroupCommit {
    /// What happened between `earlier` and `self`.
    #[must_use]
    pub fn since(self, earlier: Self) -> Self {
        Self {
            syncs: self.syncs.saturating_sub(earlier.syncs),
            entries_synced: self.entries_synced.saturating_sub(earlier.entries_synced),
            sync_micros: self.sync_micros.saturating_sub(earlier.sync_micros),
            led: self.led.saturating_sub(earlier.led),
            gathers_out_of_time: self
                .gathers_out_of_time
                .saturating_sub(earlier.gathers_out_of_time),
            gather_micros: self.gather_micros.saturating_sub(earlier.gather_micros),
            parks: self.parks.saturating_sub(earlier.parks),
            sync_p50_micros: self.sync_p50_micros,
            sync_p99_micros: self.sync_p99_micros,
        }
    }

    /// Mean entries per sync (0 without syncs).
    #[must_use]
    pub fn entries_per_sync(&self) -> f64 {
        self.per_sync(self.entries_synced)
    }

    /// Mean time of one sync, in µs (0 without syncs).
    #[must_use]
    pub fn mean_sync_micros(&self) -> f64 {
        self.per_sync(self.sync_micros)
    }

    /// `total` shared out over the syncs (0 without syncs).
    fn per_sync(&self, total: u64) -> f64 {
        if self.syncs == 0 {
            0.0
        } else {
            total as f64 / self.syncs as f64
        }
    }
}

/// An engine the load generator knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum EngineKind {
    /// This workspace's engine (the `walrus` facade), run in the bench process.
    Walrus,
    /// The published `walrus-rust` 0.2.0, run in a child process per workload: it keeps
    /// process-global state (file handles, the fsync schedule, the deletion channel).
    WalrusRust,
    /// Plain files: the `pwrite` and `pwrite`+`fdatasync` loops the disk gives.
    Disk,
    /// RocksDB 7.8 (Debian's librocksdb) through the `rocksdb` crate 0.20.1: every entry a
    /// `put` (a batch a `WriteBatch`) through its WAL, `sync` under `SyncEach`. Writes only.
    #[cfg(feature = "rocksdb")]
    RocksDb,
    /// `okaywal` 0.3: every entry (or batch) one committed log entry. Its commits always
    /// fsync, so it runs the synced workloads only.
    #[cfg(feature = "okaywal")]
    OkayWal,
}

impl EngineKind {
    /// Every engine the suite compares by default, ours first.
    pub const COMPARED: [Self; 2] = [Self::Walrus, Self::WalrusRust];

    /// True for engines that run each workload in a child process of their own: `walrus-rust`
    /// must (process-global state); the other foreign engines do too, to keep their threads
    /// and caches out of the bench process.
    #[must_use]
    pub fn needs_child_process(self) -> bool {
        !matches!(self, Self::Walrus | Self::Disk)
    }

    /// True if it can run the read workloads (consuming reads with a cursor).
    #[must_use]
    pub fn has_cursors(self) -> bool {
        matches!(self, Self::Walrus | Self::WalrusRust)
    }

    /// True if its every write is synced whatever the schedule: it only runs synced workloads.
    #[must_use]
    pub fn always_syncs(self) -> bool {
        #[cfg(feature = "okaywal")]
        if self == Self::OkayWal {
            return true;
        }
        false
    }
}

impl FromStr for EngineKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "walrus" | "ours" => Ok(Self::Walrus),
            "walrus-rust" | "theirs" | "seed" => Ok(Self::WalrusRust),
            "disk" | "physical" => Ok(Self::Disk),
            #[cfg(feature = "rocksdb")]
            "rocksdb" => Ok(Self::RocksDb),
            #[cfg(feature = "okaywal")]
            "okaywal" => Ok(Self::OkayWal),
            _ => Err(format!(
                "engine {s:?}: expected walrus, walrus-rust or disk (rocksdb and okaywal need the \
                 cargo features of the same names: see docs/BENCHMARKS.md)"
            )),
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Walrus => "walrus",
            Self::WalrusRust => "walrus-rust",
            Self::Disk => "disk",
            #[cfg(feature = "rocksdb")]
            Self::RocksDb => "rocksdb",
            #[cfg(feature = "okaywal")]
            Self::OkayWal => "okaywal",
        })
    }
}

impl From<EngineKind> for String {
    fn from(v: EngineKind) -> Self {
        v.to_string()
    }
}

impl TryFrom<String> for EngineKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// How to open an engine for one run.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The data root of the run (empty, on the real disk).
    pub dir: PathBuf,
    /// When data reaches stable storage.
    pub fsync: Fsync,
    /// When read cursors are persisted.
    pub consistency: Consistency,
    /// Storage backend (ours; `walrus-rust` maps `mmap` to its mmap mode, the rest to its fd
    /// mode).
    pub backend: Backend,
    /// Segment file length (ours only; `None` = the default, 1 GiB).
    pub segment_len: Option<u64>,
    /// Longest block (ours only; `None` = the default).
    pub block_len: Option<u64>,
    /// The group-commit journal under `SyncEach` (ours only; `None` = the default, on).
    pub journal: Option<bool>,
}

/// The key both engines put their data under, inside the run's data root.
pub const INSTANCE_KEY: &str = "bench";

/// Opens `kind` as `options` say.
///
/// # Errors
/// The engine's error; `Unsupported` for the `disk` engine (it has no log API) and for
/// `walrus-rust` outside a child process set up for it.
pub fn open(kind: EngineKind, options: &OpenOptions) -> io::Result<Box<dyn Engine>> {
    match kind {
        EngineKind::Walrus => Ok(Box::new(Ours::open(options)?)),
        EngineKind::WalrusRust => Ok(Box::new(Seed::open(options)?)),
        EngineKind::Disk => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the disk engine runs only the physical pwrite workloads",
        )),
        #[cfg(feature = "rocksdb")]
        EngineKind::RocksDb => Ok(Box::new(others::Rocks::open(options)?)),
        #[cfg(feature = "okaywal")]
        EngineKind::OkayWal => Ok(Box::new(others::Okay::open(options)?)),
    }
}

/// This workspace's engine.
#[derive(Debug)]
struct Ours(walrus::Walrus);

impl Ours {
    fn open(o: &OpenOptions) -> io::Result<Self> {
        let mut b = walrus::Walrus::builder()
            .data_dir(&o.dir)
            .key(INSTANCE_KEY)
            .consistency(o.consistency.to_walrus())
            .fsync_schedule(o.fsync.to_walrus())
            .backend(o.backend.to_walrus())
            .quiet(true);
        if let Some(len) = o.segment_len {
            b = b.segment_len(len);
        }
        if let Some(len) = o.block_len {
            b = b.block_len(len);
        }
        if let Some(on) = o.journal {
            b = b.journal(on);
        }
        b.build().map(Self)
    }
}

impl Engine for Ours {
    fn append(&self, topic: &str, data: &[u8]) -> io::Result<()> {
        self.0.append_for_topic(topic, data)
    }

    fn append_batch(&self, topic: &str, batch: &[&[u8]]) -> io::Result<()> {
        self.0.batch_append_for_topic(topic, batch)
    }

    fn read_next(&self, topic: &str) -> io::Result<Option<usize>> {
        Ok(self.0.read_next(topic, true)?.map(|e| e.data.len()))
    }

    fn read_batch(&self, topic: &str, max_bytes: usize) -> io::Result<(usize, usize)> {
        let entries = self.0.batch_read_for_topic(topic, max_bytes, true)?;
        Ok((entries.len(), entries.iter().map(|e| e.data.len()).sum()))
    }

    fn group_commit(&self) -> Option<GroupCommit> {
        let s = self.0.stats();
        Some(GroupCommit {
            syncs: s.syncs,
            entries_synced: s.entries_synced,
            sync_micros: s.sync_micros,
            led: s.group_commit.led,
            gathers_out_of_time: s.group_commit.gathers_out_of_time,
            gather_micros: s.group_commit.gather_micros,
            parks: s.group_commit.parks,
            sync_p50_micros: s.sync_p50_micros,
            sync_p99_micros: s.sync_p99_micros,
        })
    }
}

/// The published `walrus-rust` 0.2.0.
struct Seed(walrus_rust::Walrus);

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("walrus_rust::Walrus")
    }
}

impl Seed {
    fn open(o: &OpenOptions) -> io::Result<Self> {
        // It takes its root from the environment, read at construction; the parent sets it on
        // the child. Refuse rather than write somewhere else.
        let env_dir = std::env::var_os("WALRUS_DATA_DIR").map(PathBuf::from);
        if env_dir.as_deref() != Some(o.dir.as_path()) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "walrus-rust runs in a child process with WALRUS_DATA_DIR={} (found {env_dir:?})",
                    o.dir.display()
                ),
            ));
        }

        if o.backend == Backend::Mmap {
            walrus_rust::disable_fd_backend();
        } else {
            walrus_rust::enable_fd_backend();
        }
        walrus_rust::Walrus::with_consistency_and_schedule_for_key(
            INSTANCE_KEY,
            o.consistency.to_walrus_rust(),
            o.fsync.to_walrus_rust(),
        )
        .map(Self)
    }
}

impl Engine for Seed {
    fn append(&self, topic: &str, data: &[u8]) -> io::Result<()> {
        self.0.append_for_topic(topic, data)
    }

    fn append_batch(&self, topic: &str, batch: &[&[u8]]) -> io::Result<()> {
        self.0.batch_append_for_topic(topic, batch)
    }

    fn read_next(&self, topic: &str) -> io::Result<Option<usize>> {
        Ok(self.0.read_next(topic, true)?.map(|e| e.data.len()))
    }

    fn read_batch(&self, topic: &str, max_bytes: usize) -> io::Result<(usize, usize)> {
        let entries = self.0.batch_read_for_topic(topic, max_bytes, true)?;
        Ok((entries.len(), entries.iter().map(|e| e.data.len()).sum()))
    }
}

/// The opt-in engines (cargo features `rocksdb` and `okaywal`).
#[cfg(any(feature = "rocksdb", feature = "okaywal"))]
mod others {
    use std::io;

    use super::{Engine, OpenOptions};

    fn unsupported<T>(engine: &str) -> io::Result<T> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{engine} has no consuming reads with a cursor"),
        ))
    }

    /// RocksDB with its WAL on: an entry is a `put` under `<topic>/<sequence>`.
    #[cfg(feature = "rocksdb")]
    pub(super) struct Rocks {
        db: rocksdb::DB,
        write: rocksdb::WriteOptions,
        seq: std::sync::atomic::AtomicU64,
    }

    #[cfg(feature = "rocksdb")]
    impl std::fmt::Debug for Rocks {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("rocksdb::DB")
        }
    }

    #[cfg(feature = "rocksdb")]
    impl Rocks {
        pub(super) fn open(o: &OpenOptions) -> io::Result<Self> {
            let mut opts = rocksdb::Options::default();
            opts.create_if_missing(true);
            let db = rocksdb::DB::open(&opts, o.dir.join("rocksdb")).map_err(io::Error::other)?;
            let mut write = rocksdb::WriteOptions::default();
            // RocksDB has no timed sync: under `<N>ms` it writes to the OS like `no-fsync`.
            write.set_sync(o.fsync == crate::config::Fsync::SyncEach);
            write.disable_wal(false);
            Ok(Self {
                db,
                write,
                seq: std::sync::atomic::AtomicU64::new(0),
            })
        }

        fn key(&self, topic: &str) -> Vec<u8> {
            let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut k = Vec::with_capacity(topic.len() + 9);
            k.extend_from_slice(topic.as_bytes());
            k.push(b'/');
            #[expect(
                clippy::big_endian_bytes,
                reason = "RocksDB orders keys bytewise: big-endian keeps them in append order"
            )]
            k.extend_from_slice(&n.to_be_bytes());
            k
        }
    }

    #[cfg(feature = "rocksdb")]
    impl Engine for Rocks {
        fn append(&self, topic: &str, data: &[u8]) -> io::Result<()> {
            self.db
                .put_opt(self.key(topic), data, &self.write)
                .map_err(io::Error::other)
        }

        fn append_batch(&self, topic: &str, batch: &[&[u8]]) -> io::Result<()> {
            let mut wb = rocksdb::WriteBatch::default();
            for data in batch {
                wb.put(self.key(topic), data);
            }
            self.db.write_opt(wb, &self.write).map_err(io::Error::other)
        }

        fn read_next(&self, _topic: &str) -> io::Result<Option<usize>> {
            unsupported("rocksdb")
        }

        fn read_batch(&self, _topic: &str, _max_bytes: usize) -> io::Result<(usize, usize)> {
            unsupported("rocksdb")
        }
    }

    /// okaywal: one log for every topic; an entry (or a batch) is one committed log entry.
    #[cfg(feature = "okaywal")]
    #[derive(Debug)]
    pub(super) struct Okay(okaywal::WriteAheadLog);

    #[cfg(feature = "okaywal")]
    impl Okay {
        pub(super) fn open(o: &OpenOptions) -> io::Result<Self> {
            okaywal::WriteAheadLog::recover(o.dir.join("okaywal"), okaywal::LogVoid).map(Self)
        }
    }

    #[cfg(feature = "okaywal")]
    impl Engine for Okay {
        fn append(&self, _topic: &str, data: &[u8]) -> io::Result<()> {
            let mut entry = self.0.begin_entry()?;
            entry.write_chunk(data)?;
            entry.commit().map(drop)
        }

        fn append_batch(&self, _topic: &str, batch: &[&[u8]]) -> io::Result<()> {
            let mut entry = self.0.begin_entry()?;
            for data in batch {
                entry.write_chunk(data)?;
            }
            entry.commit().map(drop)
        }

        fn read_next(&self, _topic: &str) -> io::Result<Option<usize>> {
            unsupported("okaywal")
        }

        fn read_batch(&self, _topic: &str, _max_bytes: usize) -> io::Result<(usize, usize)> {
            unsupported("okaywal")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_names_round_trip() {
        for k in [EngineKind::Walrus, EngineKind::WalrusRust, EngineKind::Disk] {
            assert_eq!(k.to_string().parse(), Ok(k));
        }
        assert_eq!("walrus_rust".parse(), Ok(EngineKind::WalrusRust));
        assert!("rocksdb".parse::<EngineKind>().is_err());
        assert!(EngineKind::WalrusRust.needs_child_process());
        assert!(!EngineKind::Walrus.needs_child_process());
    }

    #[test]
    fn the_journal_option_reaches_our_engine() {
        for (journal, kept) in [(None, true), (Some(false), false)] {
            let dir = tempfile::tempdir().unwrap();
            let o = OpenOptions {
                dir: dir.path().to_path_buf(),
                fsync: Fsync::SyncEach,
                consistency: Consistency::StrictlyAtOnce,
                backend: Backend::Pwrite,
                segment_len: None,
                block_len: None,
                journal,
            };
            let engine = open(EngineKind::Walrus, &o).unwrap();
            engine.append("t", b"entry").unwrap();
            let file = dir.path().join(INSTANCE_KEY).join("journal.wjnl");
            assert_eq!(file.exists(), kept, "journal {journal:?}");
        }
    }

    #[test]
    fn seed_refuses_to_run_in_process() {
        let o = OpenOptions {
            dir: PathBuf::from("/nonexistent/walrus-bench-test"),
            fsync: Fsync::NoFsync,
            consistency: Consistency::StrictlyAtOnce,
            backend: Backend::Pwrite,
            segment_len: None,
            block_len: None,
            journal: None,
        };
        let err = open(EngineKind::WalrusRust, &o).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    }
}
