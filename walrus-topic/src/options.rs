//! Options of a [`Store`](crate::Store): geometry, recovery mode and cursor policy.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use walrus_io::RemoteTier;

use walrus_block::{
    BLOCK_ALIGN, BLOCK_HEADER_LEN, DEFAULT_BLOCK_LEN, DEFAULT_SEGMENT_LEN, SEGMENT_DATA_OFFSET,
};

/// What recovery does with damage: entries that fail validation, or that are missing.
///
/// Every topic has a persisted **durable watermark** (in `durable.wcur`): every entry below it
/// was on stable storage when it was recorded. Where damage lies against it decides what it is:
///
/// - **At or above the watermark** it is the *torn tail* of writes a crash caught unsynced
///   (after a power cut the disk may have kept later pages and not earlier ones, so the tail
///   can be ragged). The topic is cut at the start of the first damaged entry's unit (a batch
///   is cut whole) in every mode but [`AbsoluteConsistency`](Self::AbsoluteConsistency), and
///   the bytes after the cut are erased.
/// - **Below the watermark** it is *corruption* of synced data, and the mode decides, as the
///   variants say. **No mode ever erases bytes below the watermark**: a cut there is recorded
///   (the next block the topic writes says where its entries ended), not zeroed, so a later
///   open in another mode can still recover what lies behind it.
///
/// In every mode a damaged entry is never handed to a reader, every problem is reported in the
/// [`RecoveryReport`](crate::RecoveryReport) and logged with topic, offset, file and byte
/// position, offsets are never reused (a topic continues after the highest offset found on
/// disk, its cursor and its watermark), and an open that is refused changes nothing on disk.
///
/// How close the watermark stays behind the acknowledged end: under `SyncEach` the background
/// maintenance writes and syncs it every 5 ms (off the path of the appends waiting for their
/// syncs), so after a clean close, and almost always after a crash, every acknowledged entry is
/// below it; under the other schedules it is written after a sync at most every mark interval
/// (50 ms by default) and synced with the next sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RecoveryMode {
    /// The default: cut a torn tail; **refuse to open** (`InvalidData`, naming topic, offset,
    /// file and the modes that would open it) on corruption below the watermark. Silent loss
    /// of synced data is never the default — the operator chooses `PointInTime` or
    /// `SkipCorrupted` knowing what they do.
    #[default]
    TolerateCorruptedTail,
    /// Refuse to open if anything at all has to be dropped, torn tails and unfinished batches
    /// included. For checking a log that was shut down cleanly.
    AbsoluteConsistency,
    /// Keep each topic up to its first corruption (cut at the start of its unit), a consistent
    /// point in time; the entries after it stay on disk, unserved, for a later open in
    /// `SkipCorrupted`.
    PointInTime,
    /// Skip exactly the damaged entries and keep every valid one, resynchronising on the next
    /// valid frame even when a frame header is damaged; the skipped offsets are a gap that
    /// readers step over. This is the seed product's "skip corrupted entries and continue".
    SkipCorrupted,
}

/// How much of a topic is kept, whatever its consumers have read: the oldest blocks beyond
/// either limit are released (their entries are gone for every consumer; a consumer behind
/// them continues at the oldest entry kept). The topic's newest block, being written, is never
/// released. `Retention::default()` keeps everything until it is consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many bytes of blocks on disk (the newest block may exceed it alone).
    pub max_bytes: Option<u64>,
    /// Release a block once this long has passed since it was sealed (filled, or ended by a
    /// topic roll-over). Blocks found at open count from the segment file's modification time.
    pub max_age: Option<Duration>,
}

impl Retention {
    /// Keeps everything until consumed.
    #[must_use]
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// Keeps at most `bytes` of blocks.
    #[must_use]
    pub fn with_max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// Releases blocks sealed more than `age` ago.
    #[must_use]
    pub fn with_max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// Whether a limit is set.
    #[must_use]
    pub fn is_limited(&self) -> bool {
        self.max_bytes.is_some() || self.max_age.is_some()
    }
}

/// How a [`Store`](crate::Store) is laid out and behaves. Build with [`StoreOptions::new`] and the
/// `with_*` methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    pub(crate) segment_len: u64,
    pub(crate) block_len: u64,
    pub(crate) recovery: RecoveryMode,
    pub(crate) persist_every: u32,
    pub(crate) sync_cursor_writes: bool,
    /// See [`StoreOptions::with_durable_cursors`].
    pub(crate) durable_cursors: bool,
    pub(crate) prepare_ahead: bool,
    pub(crate) mark_interval: Duration,
    pub(crate) background_maintenance: bool,
    pub(crate) lanes: usize,
    pub(crate) visible_when_durable: bool,
    pub(crate) zero_fill: bool,
    pub(crate) small_blocks: bool,
    pub(crate) yield_wait: bool,
    pub(crate) journal: bool,
    pub(crate) retention: Retention,
    pub(crate) topic_retention: std::collections::BTreeMap<String, Retention>,
    /// The remote tier, if any (see [`with_tier`](Self::with_tier)).
    pub(crate) tier: Option<TierOptions>,
    /// Tiering of every topic without its own; `None`: only the named topics tier.
    pub(crate) tiering: Option<Tiering>,
    pub(crate) topic_tiering: std::collections::BTreeMap<String, Tiering>,
    /// Set by [`Store::open_read_only`](crate::Store::open_read_only): nothing is written.
    pub(crate) read_only: bool,
    /// Whether dropping the store syncs the cursors and watermarks it writes; the engine turns
    /// it off for [`SyncPolicy::OnFlush`](crate::SyncPolicy::OnFlush), which never syncs
    /// unless asked.
    pub(crate) sync_at_close: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl StoreOptions {
    /// Defaults: 1 GiB segments, 1 MiB blocks, [`RecoveryMode::TolerateCorruptedTail`], the
    /// cursor persisted on every consuming read, cursor writes not synced.
    #[must_use]
    pub fn new() -> Self {
        Self {
            segment_len: DEFAULT_SEGMENT_LEN,
            block_len: DEFAULT_BLOCK_LEN,
            recovery: RecoveryMode::default(),
            persist_every: 1,
            sync_cursor_writes: false,
            durable_cursors: false,
            prepare_ahead: true,
            mark_interval: Duration::from_millis(50),
            background_maintenance: false,
            lanes: 2,
            visible_when_durable: false,
            zero_fill: false,
            small_blocks: false,
            yield_wait: true,
            journal: false,
            retention: Retention::default(),
            topic_retention: std::collections::BTreeMap::new(),
            tier: None,
            tiering: None,
            sync_at_close: true,
            topic_tiering: std::collections::BTreeMap::new(),
            read_only: false,
        }
    }

    /// Retention of every topic without its own ([`with_topic_retention`](Self::with_topic_retention)).
    /// Enforced when a topic seals a block and by [`Store::maintain`](crate::Store::maintain)
    /// (which background maintenance runs).
    #[must_use]
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Retention of `topic`, overriding the instance default.
    #[must_use]
    pub fn with_topic_retention(mut self, topic: impl Into<String>, retention: Retention) -> Self {
        self.topic_retention.insert(topic.into(), retention);
        self
    }

    /// Uploads the sealed blocks of tiered topics (see [`with_tiering`](Self::with_tiering)) to
    /// `remote`, under the key prefix `dir` (1–128 bytes of `[A-Za-z0-9._=-/]`). Uploads run in
    /// [`Store::tier_pass`](crate::Store::tier_pass), which an
    /// [`Engine`](crate::Engine) calls from a thread of its own.
    #[must_use]
    pub fn with_tier(mut self, remote: Arc<dyn RemoteTier>, dir: impl Into<String>) -> Self {
        self.tier = Some(TierOptions {
            remote,
            dir: dir.into(),
        });
        self
    }

    /// Tiering of every topic without its own ([`with_topic_tiering`](Self::with_topic_tiering)).
    #[must_use]
    pub fn with_tiering(mut self, tiering: Tiering) -> Self {
        self.tiering = Some(tiering);
        self
    }

    /// Tiering of `topic`, overriding the instance default.
    #[must_use]
    pub fn with_topic_tiering(mut self, topic: impl Into<String>, tiering: Tiering) -> Self {
        self.topic_tiering.insert(topic.into(), tiering);
        self
    }

    /// The tiering of `topic`, if it tiers (a remote tier is set and the topic or the default
    /// has a tiering).
    pub(crate) fn tiering_for(&self, topic: &str) -> Option<Tiering> {
        self.tier.as_ref()?;
        self.topic_tiering.get(topic).copied().or(self.tiering)
    }

    /// The retention that applies to `topic`.
    pub(crate) fn retention_for(&self, topic: &str) -> Retention {
        self.topic_retention
            .get(topic)
            .copied()
            .unwrap_or(self.retention)
    }

    /// Hand entries to readers only once they are durable (default: off, readers see every
    /// written entry). For instances that acknowledge appends at durability (`SyncEach`):
    /// then "visible" means "acknowledged", and no reader ever sees an entry a power cut can
    /// take back.
    #[must_use]
    pub fn with_visible_when_durable(mut self, on: bool) -> Self {
        self.visible_when_durable = on;
        self
    }

    /// Claim disk space ahead of the blocks by writing zeros instead of `fallocate` (default:
    /// off). A synced append into a *written* extent costs its `fdatasync` only the data; into
    /// an allocated-but-unwritten one the file system must also commit the extent's conversion
    /// to its journal, which makes each sync several times slower. The zeros are written once,
    /// and reach the disk with the next sync of the file. For instances that sync every append
    /// (`SyncEach`); elsewhere `fallocate` is cheaper.
    #[must_use]
    pub fn with_zero_fill(mut self, on: bool) -> Self {
        self.zero_fill = on;
        self
    }

    /// Let appenders that wait for a running group sync (under
    /// [`SyncPolicy::Each`](crate::SyncPolicy::Each)) yield the CPU in a loop before they park
    /// (default: on). Each wait then ends as soon as the sync does, without a wake-up: the
    /// synced rate of many threads rises where the CPU is otherwise idle (on the development
    /// machine: 16 threads on one topic by 20–35 %, on 16 topics by 5–15 %), at the price of
    /// that idle CPU. While yields come back slowly (other work wants the CPU)
    /// waiters park at once; off, they always do.
    #[must_use]
    pub fn with_yield_wait(mut self, on: bool) -> Self {
        self.yield_wait = on;
        self
    }

    /// Keep a group-commit journal, `journal.wjnl` (default: off; the facade turns it on under
    /// `SyncEach`). Each store sync then writes the segment writes made since the last one as
    /// one contiguous record of that small file and syncs it, instead of syncing every page they
    /// touched in the segment files (one page per topic, scattered). The segments are synced
    /// by the background maintenance, and before the journal's space is reused; an open applies
    /// the records a crash left. On the development machine 16 threads appending to 16 topics
    /// with `SyncEach` ran 35–40 % faster, and 64 threads 70–80 % (BENCHMARKS.md). Costs
    /// 4 MiB of disk, and every journaled byte is written twice. A sync whose writes are one
    /// contiguous run (one topic's appends), or more than 256 KiB, syncs the segments instead.
    #[must_use]
    pub fn with_journal(mut self, on: bool) -> Self {
        self.journal = on;
        self
    }

    /// Keep blocks as short as the entries allow (default: off): a topic's blocks still grow
    /// from 4 KiB, but only to 32 times its entries' frames and at least 32 block headers (so
    /// that a block's header and the unused end an entry that does not fit leaves each stay
    /// within 1/32 of it), not to [`with_block_len`](Self::with_block_len). Where every append
    /// is synced, each sync writes the last page of every topic that appended; short blocks
    /// handed out one after another keep those pages close together, which makes the sync
    /// cheaper (docs/BENCHMARKS.md, "Synced appends").
    #[must_use]
    pub fn with_small_blocks(mut self, on: bool) -> Self {
        self.small_blocks = on;
        self
    }

    /// Number of allocation lanes (1–16, default 2): topics are spread round-robin over the
    /// lanes, each with its own current segment file, so that appends to different topics do
    /// not queue on one file (the kernel serialises buffered writes per file). Each lane keeps
    /// its own current segment (sparse: it costs what its blocks hold).
    #[must_use]
    pub fn with_lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes;
        self
    }

    /// Leave slow file-system work — deleting consumed segments, preparing the next segment
    /// file — to whoever calls [`Store::maintain`](crate::Store::maintain) (a background
    /// thread), instead of doing it on the appending or reading thread that triggers it.
    /// Default: off (done inline).
    #[must_use]
    pub fn with_background_maintenance(mut self, on: bool) -> Self {
        self.background_maintenance = on;
        self
    }

    /// How often, at most, the durable watermarks of topics are written to the marks file
    /// (default 50 ms; zero = after every sync). Recovery treats damage above a topic's
    /// persisted watermark as the torn tail of unsynced writes, and damage below it as
    /// corruption: a shorter interval makes that line sharper, at the cost of a small write per
    /// synced topic.
    #[must_use]
    pub fn with_mark_interval(mut self, interval: Duration) -> Self {
        self.mark_interval = interval;
        self
    }

    /// Length of a segment file (a multiple of 4096, at least two blocks).
    #[must_use]
    pub fn with_segment_len(mut self, len: u64) -> Self {
        self.segment_len = len;
        self
    }

    /// Longest block a topic is given (a multiple of 4096, default 1 MiB): a topic's blocks grow
    /// from 4 KiB, each twice the last, up to this. One entry larger than a block gets a block
    /// of its own, as large as it needs.
    #[must_use]
    pub fn with_block_len(mut self, len: u64) -> Self {
        self.block_len = len;
        self
    }

    /// What recovery does with damaged entries.
    #[must_use]
    pub fn with_recovery(mut self, mode: RecoveryMode) -> Self {
        self.recovery = mode;
        self
    }

    /// Persist a topic's cursor at least every `n` consuming reads (1 = before every consuming
    /// read returns). Cursors are also persisted by [`Store::persist_cursors`](crate::Store::persist_cursors)
    /// and when the store is dropped.
    #[must_use]
    pub fn with_persist_every(mut self, n: u32) -> Self {
        self.persist_every = n.max(1);
        self
    }

    /// Every cursor a consuming read, a commit or a new consumer writes is synced before the
    /// call returns, also where appends do not wait for syncs: a consumed entry is then never
    /// handed out again after a power cut (its cursor was durable when it was handed out), nor
    /// more than `persist_every - 1` of them. (Implied by
    /// [`with_sync_cursor_writes`](Self::with_sync_cursor_writes).)
    #[must_use]
    pub fn with_durable_cursors(mut self, durable: bool) -> Self {
        self.durable_cursors = durable;
        self
    }

    /// Sync the cursor file after every cursor write (the `SyncEach` schedule; the durable
    /// watermarks are then written and synced by the background maintenance, off the appends'
    /// syncs).
    #[must_use]
    pub fn with_sync_cursor_writes(mut self, sync: bool) -> Self {
        self.sync_cursor_writes = sync;
        self
    }

    /// Prepare the next segment file before the current one is full (default: on).
    #[must_use]
    pub fn with_prepare_ahead(mut self, on: bool) -> Self {
        self.prepare_ahead = on;
        self
    }

    /// How often, at most, durable watermarks are written (see
    /// [`with_mark_interval`](Self::with_mark_interval)).
    #[must_use]
    pub fn mark_interval(&self) -> Duration {
        self.mark_interval
    }

    /// Whether the store keeps a group-commit journal (see [`with_journal`](Self::with_journal)).
    #[must_use]
    pub fn journal(&self) -> bool {
        self.journal
    }

    /// Whether waiting appenders yield-wait (see [`with_yield_wait`](Self::with_yield_wait)).
    #[must_use]
    pub fn yield_wait(&self) -> bool {
        self.yield_wait
    }

    /// Whether the durable watermarks are written and synced by [`Store::maintain`](crate::Store::maintain)
    /// rather than by the syncs: when every append waits for a sync (cursor writes synced, as
    /// under `SyncEach`) and a background thread maintains the store.
    pub(crate) fn marks_in_background(&self) -> bool {
        self.background_maintenance && self.sync_cursor_writes
    }

    /// The recovery mode.
    #[must_use]
    pub fn recovery(&self) -> RecoveryMode {
        self.recovery
    }

    /// Checks the geometry.
    ///
    /// # Errors
    /// `InvalidInput` naming the bad value.
    pub fn validate(&self) -> io::Result<()> {
        let bad = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        if self.block_len < BLOCK_ALIGN
            || !self.block_len.is_multiple_of(BLOCK_ALIGN)
            || self.block_len < 2 * BLOCK_HEADER_LEN as u64
        {
            return bad(format!(
                "block length {} is not a positive multiple of {BLOCK_ALIGN}",
                self.block_len
            ));
        }
        if self.block_len > walrus_block::MAX_BLOCK_LEN
            || self.segment_len > walrus_block::MAX_BLOCK_LEN
        {
            return bad(format!(
                "block length {} or segment length {} is past the format's limit of {} bytes",
                self.block_len,
                self.segment_len,
                walrus_block::MAX_BLOCK_LEN
            ));
        }
        for (topic, r) in std::iter::once(("(default)", &self.retention))
            .chain(self.topic_retention.iter().map(|(t, r)| (t.as_str(), r)))
        {
            // Ages count in whole milliseconds: a shorter one is zero there.
            if r.max_bytes == Some(0) || r.max_age.is_some_and(|a| a < Duration::from_millis(1)) {
                return bad(format!(
                    "retention of topic {topic:?}: a limit of zero (or an age under a \
                     millisecond) would release every entry at once; leave the limit unset to \
                     keep everything"
                ));
            }
        }
        for topic in self.topic_retention.keys().chain(self.topic_tiering.keys()) {
            walrus_block::validate_topic_name(topic).map_err(io::Error::from)?;
        }
        match &self.tier {
            Some(tier) => tier.validate()?,
            None if self.tiering.is_some() || !self.topic_tiering.is_empty() => {
                return bad("tiering is set but no remote tier (StoreOptions::with_tier)".into());
            }
            None => {}
        }
        for (topic, t) in std::iter::once(("(default)", self.tiering.as_ref())).chain(
            self.topic_tiering
                .iter()
                .map(|(n, t)| (n.as_str(), Some(t))),
        ) {
            if let Some(t) = t
                && (t.local.max_bytes == Some(0)
                    || t.local
                        .max_age
                        .is_some_and(|a| a < Duration::from_millis(1)))
            {
                return bad(format!(
                    "local retention of tiered topic {topic:?}: a limit of zero (or an age under \
                     a millisecond) would release every uploaded block at once; leave the limit \
                     unset to keep everything"
                ));
            }
        }
        if !(1..=16).contains(&self.lanes) {
            return bad(format!(
                "{} allocation lanes: 1 to 16 are supported",
                self.lanes
            ));
        }
        if !self.segment_len.is_multiple_of(BLOCK_ALIGN)
            || self.segment_len < SEGMENT_DATA_OFFSET + 2 * self.block_len
        {
            return bad(format!(
                "segment length {} must be a multiple of {BLOCK_ALIGN} holding the header and two blocks of {}",
                self.segment_len, self.block_len
            ));
        }
        Ok(())
    }
}

/// Longest tier directory (a key also holds the escaped topic name and 46 bytes of offsets).
const MAX_TIER_DIR_LEN: usize = 128;

/// How a topic tiers: its sealed blocks are uploaded, and the local copy of an uploaded block
/// is kept while `local` retention allows. What is kept at all is the topic's [`Retention`],
/// as for any topic, counted over the local blocks and the tiered ones together: blocks beyond
/// it are released for every reader and their objects deleted from the remote tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tiering {
    /// How much of the uploaded data stays on local disk.
    pub local: Retention,
}

impl Tiering {
    /// Tiering that keeps `local` of the uploaded blocks on local disk.
    #[must_use]
    pub fn keeping(local: Retention) -> Self {
        Self { local }
    }
}

/// The remote tier of a store and where in it its objects go (part of [`StoreOptions`]).
#[derive(Clone)]
pub(crate) struct TierOptions {
    pub(crate) remote: Arc<dyn RemoteTier>,
    /// Key prefix of every object.
    pub(crate) dir: String,
}

impl fmt::Debug for TierOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TierOptions")
            .field("remote", &self.remote.describe())
            .field("dir", &self.dir)
            .finish()
    }
}

impl PartialEq for TierOptions {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.remote, &other.remote) && self.dir == other.dir
    }
}

impl Eq for TierOptions {}

impl TierOptions {
    /// Checks the directory.
    pub(crate) fn validate(&self) -> io::Result<()> {
        walrus_io::tier::validate_key(&self.dir)?;
        if self.dir.len() > MAX_TIER_DIR_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "tier directory {:?}: longer than {MAX_TIER_DIR_LEN} bytes",
                    self.dir
                ),
            ));
        }
        Ok(())
    }
}
