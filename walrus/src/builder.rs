//! [`WalrusBuilder`]: every option of an instance, with the environment as fallback.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use walrus_io::{BackendKind, Storage};
use walrus_topic::{RecoveryMode, Retention, StoreOptions};

use crate::config::{FsyncSchedule, ReadConsistency};
use crate::key::dir_name;

/// Environment variable: the data root (default `./wal_files`).
pub const ENV_DATA_DIR: &str = "WALRUS_DATA_DIR";
/// Environment variable: the instance key used by the key-less constructors.
pub const ENV_INSTANCE_KEY: &str = "WALRUS_INSTANCE_KEY";
/// Environment variable: set (to anything but `0` or empty) to silence informational logs.
pub const ENV_QUIET: &str = "WALRUS_QUIET";
/// The data root when neither the builder nor the environment names one.
pub const DEFAULT_DATA_DIR: &str = "./wal_files";

/// Builds a [`Walrus`](crate::Walrus) instance. Values set here win over the environment, which is read once,
/// in [`build`](Self::build).
///
/// ```
/// use walrus::{FsyncSchedule, ReadConsistency, Walrus};
///
/// let dir = tempfile::tempdir()?;
/// let wal = Walrus::builder()
///     .data_dir(dir.path())
///     .key("orders")
///     .consistency(ReadConsistency::AtLeastOnce { persist_every: 100 })
///     .fsync_schedule(FsyncSchedule::NoFsync)
///     .build()?;
/// wal.append_for_topic("events", b"hello")?;
/// assert_eq!(wal.read_next("events", true)?.map(|e| e.data), Some(b"hello".to_vec()));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct WalrusBuilder {
    data_dir: Option<PathBuf>,
    key: Option<String>,
    consistency: ReadConsistency,
    schedule: FsyncSchedule,
    backend: Option<BackendKind>,
    storage: Option<Arc<dyn Storage>>,
    recovery: RecoveryMode,
    segment_len: Option<u64>,
    block_len: Option<u64>,
    quiet: Option<bool>,
    mark_interval: Option<std::time::Duration>,
    inline_maintenance: bool,
    lanes: Option<usize>,
    /// `Some(false)`: synced appenders park at once instead of yield-waiting.
    yield_wait: Option<bool>,
    journal: Option<bool>,
    retention: Retention,
    topic_retention: Vec<(String, Retention)>,
    tier: Option<(Arc<dyn walrus_io::RemoteTier>, String)>,
    tiering: Option<walrus_topic::Tiering>,
    topic_tiering: Vec<(String, walrus_topic::Tiering)>,
}

impl WalrusBuilder {
    /// A builder with the defaults: `StrictlyAtOnce`, `Milliseconds(200)`, the `pwrite`
    /// backend, [`RecoveryMode::TolerateCorruptedTail`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The data root (instead of `WALRUS_DATA_DIR`, or `./wal_files`). Without a
    /// [`key`](Self::key) the instance is this directory itself: `WALRUS_INSTANCE_KEY`
    /// namespaces the environment's root, not one the program names (a program that keeps its
    /// data in a directory of its own must find it there whatever the environment says).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// The instance key: data goes under `<data root>/<key>/` (instead of `WALRUS_INSTANCE_KEY`).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// When read cursors are persisted.
    pub fn consistency(mut self, mode: ReadConsistency) -> Self {
        self.consistency = mode;
        self
    }

    /// When data reaches stable storage.
    pub fn fsync_schedule(mut self, schedule: FsyncSchedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// The storage backend (default [`BackendKind::Pwrite`]; [`BackendKind::Auto`] picks
    /// io_uring when the kernel supports it). [`BackendKind::Mmap`] stores an append with a
    /// copy instead of a system call, which makes unsynced appends faster (under `SyncEach`
    /// it is slower: each sync makes the next store into its pages fault again), at a price
    /// the others do not charge: a device error while a written page is faulted back in kills
    /// the process with `SIGBUS` instead of failing the call, and pages whose write-back
    /// failed outlive a process killed before it closed them (see `walrus_io::mmap`).
    pub fn backend(mut self, kind: BackendKind) -> Self {
        self.backend = Some(kind);
        self
    }

    /// A storage backend instance, e.g. a [`SimStorage`](walrus_io::SimStorage) for tests.
    /// Overrides [`backend`](Self::backend). An instance remembers a file's failed sync for
    /// as long as it lives (so that no later handle can sync that file "successfully"): after a
    /// failed sync, reopen the directory with a new instance (as `build` makes one when none is
    /// given) or in a new process.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// What recovery does with damaged entries.
    pub fn recovery_mode(mut self, mode: RecoveryMode) -> Self {
        self.recovery = mode;
        self
    }

    /// Segment file length in bytes (default 1 GiB; a multiple of 4096). Files are sparse: disk
    /// space is claimed as blocks are handed out.
    pub fn segment_len(mut self, bytes: u64) -> Self {
        self.segment_len = Some(bytes);
        self
    }

    /// Longest block a topic is given, in bytes (default 1 MiB; a multiple of 4096): a topic's
    /// blocks grow from 4 KiB, doubling up to this. One larger entry gets a block of its own.
    /// Under `SyncEach` blocks grow only to 32 times the topic's entries (at least 16 KiB), so
    /// that the pages a group sync writes for many topics lie close together
    /// ([`StoreOptions::with_small_blocks`](walrus_topic::StoreOptions::with_small_blocks));
    /// `4096` there keeps them side by side, for cheaper syncs, at the cost of a 308-byte
    /// header per page and the unused ends of one-page blocks (about 20 % more disk at 700-byte
    /// entries; docs/BENCHMARKS.md, "Synced appends").
    pub fn block_len(mut self, bytes: u64) -> Self {
        self.block_len = Some(bytes);
        self
    }

    /// How often, at most, topics' durable watermarks are persisted (default 50 ms; zero =
    /// with every sync). Recovery treats damage above a topic's persisted watermark as the torn
    /// tail of unsynced writes and damage below it as corruption.
    pub fn durable_mark_interval(mut self, interval: std::time::Duration) -> Self {
        self.mark_interval = Some(interval);
        self
    }

    /// Do slow file-system work (deleting consumed segments, preparing the next segment file) on
    /// the thread that triggers it instead of the background thread. Costs latency spikes;
    /// makes every storage operation happen on the caller's thread, which deterministic
    /// simulation tests need. Default: off.
    pub fn inline_maintenance(mut self, inline: bool) -> Self {
        self.inline_maintenance = inline;
        self
    }

    /// Number of allocation lanes (1–16, default 2, 1 under `SyncEach`): topics are spread over
    /// lanes, each with its own current segment file, so appends to different topics don't
    /// queue on one file. Under `SyncEach` one file means one `fdatasync` per group commit.
    pub fn allocation_lanes(mut self, lanes: usize) -> Self {
        self.lanes = Some(lanes);
        self
    }

    /// Under `SyncEach`, whether an append waiting for a running group sync yields the CPU in
    /// a loop before it parks (default: on). It ends each wait as soon as the sync does — with
    /// many threads, 5–35 % more synced appends per second on the development machine — and
    /// spends CPU that would otherwise sit idle; while other work wants the CPU, waiters park at once anyway. Turn it
    /// off to keep waiting appenders from showing as busy.
    pub fn yield_wait(mut self, on: bool) -> Self {
        self.yield_wait = Some(on);
        self
    }

    /// Under `SyncEach`, whether group syncs go through the journal, `journal.wjnl` (default:
    /// on): each sync writes the appends it covers as one contiguous record of that 4 MiB file
    /// and syncs it, instead of syncing one scattered page per topic in the segment files,
    /// which are synced in the background. On the development machine 16 threads on 16 topics
    /// ran 35–40 % faster with it, 64 threads 70–80 %; every synced byte is written twice.
    /// See [`StoreOptions::with_journal`](walrus_topic::StoreOptions::with_journal).
    pub fn journal(mut self, on: bool) -> Self {
        self.journal = Some(on);
        self
    }

    /// Retention of every topic without its own: the oldest blocks beyond `max_bytes` or
    /// older than `max_age` are released, read or not (default: keep until consumed). Age is
    /// checked about once a second.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Retention of `topic`, overriding [`retention`](Self::retention).
    pub fn topic_retention(mut self, topic: impl Into<String>, retention: Retention) -> Self {
        self.topic_retention.push((topic.into(), retention));
        self
    }

    /// Uploads the sealed blocks of tiered topics ([`tiering`](Self::tiering),
    /// [`topic_tiering`](Self::topic_tiering)) to `remote` under the key prefix `dir`, from a
    /// thread of the instance's own (e.g. `walrus_s3::S3Tier`).
    pub fn tier(mut self, remote: Arc<dyn walrus_io::RemoteTier>, dir: impl Into<String>) -> Self {
        self.tier = Some((remote, dir.into()));
        self
    }

    /// Tiering of every topic without its own (needs [`tier`](Self::tier)).
    pub fn tiering(mut self, tiering: walrus_topic::Tiering) -> Self {
        self.tiering = Some(tiering);
        self
    }

    /// Tiering of `topic`, overriding [`tiering`](Self::tiering).
    pub fn topic_tiering(
        mut self,
        topic: impl Into<String>,
        tiering: walrus_topic::Tiering,
    ) -> Self {
        self.topic_tiering.push((topic.into(), tiering));
        self
    }

    /// Silence informational logging (instead of `WALRUS_QUIET`).
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = Some(quiet);
        self
    }

    /// What the instance opens with: the builder's values, then the environment, then the
    /// defaults ([`build`](Self::build) opens it).
    ///
    /// # Errors
    /// `InvalidInput` for a bad key; an error opening the storage backend.
    pub(crate) fn settings(self) -> io::Result<Settings> {
        /// Under `SyncEach`, how far (at most, plus one background tick of the same length) the
        /// persisted durable watermark trails the acknowledged end.
        const SYNC_EACH_MARK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);
        let root = self
            .data_dir
            .clone()
            .or_else(|| {
                std::env::var_os(ENV_DATA_DIR)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let key = match self.key.clone() {
            Some(k) => Some(k),
            None if self.data_dir.is_some() => None,
            None => match std::env::var(ENV_INSTANCE_KEY) {
                Ok(k) => Some(k).filter(|k| !k.is_empty()),
                Err(std::env::VarError::NotPresent) => None,
                // Ignored, it would open the root instead of the namespace asked for.
                Err(std::env::VarError::NotUnicode(k)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{ENV_INSTANCE_KEY}={k:?} is not UTF-8"),
                    ));
                }
            },
        };
        let dir = match &key {
            // Made by a build that did not escape this key: the root holds no instance then
            // (its open refuses a directory named like its lock file), so it stays where it is.
            Some(k) if k == walrus_topic::LOCK_FILE && root.join(k).is_dir() => root.join(k),
            Some(k) => root.join(dir_name(k)?),
            None => root,
        };
        let quiet = self
            .quiet
            .unwrap_or_else(|| std::env::var(ENV_QUIET).is_ok_and(|v| !v.is_empty() && v != "0"));
        let storage = match self.storage.clone() {
            Some(s) => s,
            None => walrus_io::open_backend(self.backend.unwrap_or(BackendKind::Pwrite))?,
        };
        let mut options = StoreOptions::new()
            .with_recovery(self.recovery)
            .with_persist_every(self.consistency.persist_every())
            .with_sync_cursor_writes(self.schedule == FsyncSchedule::SyncEach)
            // A consumed entry is never handed out again, also after power loss: under every
            // schedule that syncs at all, a cursor is durable before its read returns.
            .with_durable_cursors(self.schedule != FsyncSchedule::NoFsync)
            .with_visible_when_durable(self.schedule == FsyncSchedule::SyncEach)
            .with_zero_fill(self.schedule == FsyncSchedule::SyncEach)
            .with_journal(self.schedule == FsyncSchedule::SyncEach && self.journal.unwrap_or(true))
            .with_background_maintenance(!self.inline_maintenance)
            .with_retention(self.retention);
        for (topic, retention) in &self.topic_retention {
            options = options.with_topic_retention(topic.clone(), *retention);
        }
        if let Some((remote, dir)) = &self.tier {
            options = options.with_tier(Arc::clone(remote), dir.clone());
        }
        if let Some(tiering) = self.tiering {
            options = options.with_tiering(tiering);
        }
        for (topic, tiering) in &self.topic_tiering {
            options = options.with_topic_tiering(topic.clone(), *tiering);
        }
        if self.schedule == FsyncSchedule::SyncEach {
            // Acknowledged data is durable at once: keep the persisted watermark close behind,
            // so that damage to it is recognised as corruption, not as a torn tail.
            options = options.with_mark_interval(SYNC_EACH_MARK_INTERVAL);
            // A sync writes one page per topic that appended since the last. In one file, with
            // short blocks handed out one after another, the pages of topics appending together
            // lie close, side by side for small entries, and reach the disk in few requests
            // (docs/BENCHMARKS.md, "Synced appends"); one `fdatasync` covers them all.
            options = options.with_lanes(1).with_small_blocks(true);
        }
        if let Some(len) = self.segment_len {
            options = options.with_segment_len(len);
        }
        if let Some(len) = self.block_len {
            options = options.with_block_len(len);
        }
        if let Some(lanes) = self.lanes {
            options = options.with_lanes(lanes);
        }
        if let Some(on) = self.yield_wait {
            options = options.with_yield_wait(on);
        }
        if let Some(interval) = self.mark_interval {
            options = options.with_mark_interval(interval);
        }
        Ok(Settings {
            dir,
            storage,
            options,
            consistency: self.consistency,
            schedule: self.schedule,
            quiet,
        })
    }
}

/// Everything an instance opens with, resolved by [`WalrusBuilder::settings`].
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) dir: PathBuf,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) options: StoreOptions,
    pub(crate) consistency: ReadConsistency,
    pub(crate) schedule: FsyncSchedule,
    pub(crate) quiet: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim() -> Arc<dyn Storage> {
        Arc::new(walrus_io::SimStorage::new(1))
    }

    #[test]
    fn yield_waiting_is_on_unless_turned_off() {
        let on = WalrusBuilder::new()
            .data_dir("/d")
            .storage(sim())
            .fsync_schedule(FsyncSchedule::SyncEach)
            .settings()
            .unwrap();
        assert!(on.options.yield_wait());
        let off = WalrusBuilder::new()
            .data_dir("/d")
            .storage(sim())
            .fsync_schedule(FsyncSchedule::SyncEach)
            .yield_wait(false)
            .settings()
            .unwrap();
        assert!(!off.options.yield_wait());
    }

    #[test]
    fn the_journal_is_kept_under_sync_each_unless_turned_off() {
        let settings = |schedule, journal: Option<bool>| {
            let b = WalrusBuilder::new()
                .data_dir("/d")
                .storage(sim())
                .fsync_schedule(schedule);
            let b = match journal {
                Some(on) => b.journal(on),
                None => b,
            };
            b.settings().unwrap().options.journal()
        };
        assert!(settings(FsyncSchedule::SyncEach, None));
        assert!(!settings(FsyncSchedule::SyncEach, Some(false)));
        assert!(!settings(FsyncSchedule::Milliseconds(200), None));
        assert!(!settings(FsyncSchedule::NoFsync, Some(true)));
    }
}
