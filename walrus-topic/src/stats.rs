//! What a store has done since it opened, cheaply: counters kept where the work happens
//! (per topic under its writer's lock, per sync), summed only when [`Store::stats`] is asked.
//!
//! [`Store::stats`]: crate::Store::stats

use std::time::Duration;

use walrus_alloc::sync::atomic::{AtomicU64, Ordering};

use crate::durability::GroupCommitStats;

/// Sub-buckets per power of two of the sync latency histogram: its buckets are at most an
/// eighth of their lower bound wide (a p99 of 330 µs reads as 352, not 512).
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Powers of two covered above the first `SUB` µs (longer syncs land in the last bucket).
const OCTAVES: u64 = 37;
/// Buckets: one per µs below `SUB`, then `SUB` per power of two.
const BUCKETS: usize = (SUB + OCTAVES * SUB) as usize;

/// The bucket of a sync that took `micros` µs.
fn bucket_of(micros: u64) -> usize {
    if micros < SUB {
        return micros as usize;
    }
    let octave = u64::from(63 - micros.leading_zeros() - SUB_BITS);
    let sub = (micros >> octave) - SUB;
    usize::try_from(SUB + octave * SUB + sub).map_or(BUCKETS - 1, |b| b.min(BUCKETS - 1))
}

/// One past the longest latency, in µs, that bucket `i` holds.
fn bucket_end(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i + 1;
    }
    let (octave, sub) = ((i - SUB) / SUB, (i - SUB) % SUB);
    (SUB + sub + 1) << octave
}

/// Counters of the store-wide syncs.
#[derive(Debug)]
pub(crate) struct SyncCounters {
    syncs: AtomicU64,
    /// Entries a sync made durable, summed.
    entries: AtomicU64,
    /// The largest number of entries one sync made durable.
    largest: AtomicU64,
    /// Time spent in those syncs, summed.
    nanos: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    segments_deleted: AtomicU64,
}

impl Default for SyncCounters {
    fn default() -> Self {
        Self {
            syncs: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            largest: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            segments_deleted: AtomicU64::new(0),
        }
    }
}

impl SyncCounters {
    /// A sync that took `took` and made `entries` entries durable completed.
    pub(crate) fn synced(&self, took: Duration, entries: u64) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.entries.fetch_add(entries, Ordering::Relaxed);
        self.largest.fetch_max(entries, Ordering::Relaxed);
        self.nanos.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        if let Some(b) = self.latency.get(bucket_of(micros)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A consumed segment file was deleted.
    pub(crate) fn segment_deleted(&self) {
        self.segments_deleted.fetch_add(1, Ordering::Relaxed);
    }

    /// The upper bound, in µs, of the bucket holding quantile `q` of the sync latencies.
    fn quantile_micros(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .latency
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_end(i);
            }
        }
        u64::MAX
    }

    pub(crate) fn fill(&self, s: &mut Stats) {
        s.syncs = self.syncs.load(Ordering::Relaxed);
        s.entries_synced = self.entries.load(Ordering::Relaxed);
        s.largest_sync_group = self.largest.load(Ordering::Relaxed);
        s.sync_micros = self.nanos.load(Ordering::Relaxed) / 1000;
        s.sync_p50_micros = self.quantile_micros(0.50);
        s.sync_p99_micros = self.quantile_micros(0.99);
        s.segments_deleted = self.segments_deleted.load(Ordering::Relaxed);
    }
}

/// Appends and reads of one topic.
#[derive(Debug, Default)]
pub(crate) struct TopicCounters {
    appends: AtomicU64,
    bytes: AtomicU64,
    batches: AtomicU64,
    reads: AtomicU64,
}

impl TopicCounters {
    /// A unit of `entries` entries and `bytes` bytes of payload was appended (`batch`: as
    /// one atomic batch). Called under the topic's writer lock: never contended.
    pub(crate) fn appended(&self, entries: u64, bytes: u64, batch: bool) {
        self.appends.fetch_add(entries, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if batch {
            self.batches.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `entries` entries were handed to a reader.
    pub(crate) fn read(&self, entries: u64) {
        self.reads.fetch_add(entries, Ordering::Relaxed);
    }

    pub(crate) fn add_to(&self, s: &mut Stats) {
        s.appends += self.appends.load(Ordering::Relaxed);
        s.append_bytes += self.bytes.load(Ordering::Relaxed);
        s.batches += self.batches.load(Ordering::Relaxed);
        s.reads += self.reads.load(Ordering::Relaxed);
    }
}

/// What [`Store::stats`](crate::Store::stats) reports: counters since the store opened, and
/// where every topic stands now ([`Engine::stats`](crate::Engine::stats) adds the group
/// commit's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Entries appended.
    pub appends: u64,
    /// Payload bytes appended.
    pub append_bytes: u64,
    /// Atomic batches appended (their entries count in `appends`).
    pub batches: u64,
    /// Entries handed to readers (consuming reads and peeks, batch reads, iterators).
    pub reads: u64,
    /// Completed store-wide syncs that made entries durable (the latency figures are theirs).
    pub syncs: u64,
    /// Entries made durable by those syncs; `entries_synced / syncs` is the mean group size.
    pub entries_synced: u64,
    /// The most entries one sync made durable.
    pub largest_sync_group: u64,
    /// Time spent in those syncs, summed, in µs; `sync_micros / syncs` is the mean sync.
    pub sync_micros: u64,
    /// Median sync latency, in µs: the end of its histogram bucket (at most an eighth above
    /// the true value, above 8 µs).
    pub sync_p50_micros: u64,
    /// 99th percentile sync latency, likewise.
    pub sync_p99_micros: u64,
    /// How the appenders' group commit gathered and waited (under `SyncEach`). Filled by
    /// [`Engine::stats`](crate::Engine::stats) and the facade; a bare
    /// [`Store`](crate::Store) has no group commit and reports zeros.
    pub group_commit: GroupCommitStats,
    /// Segment files open now.
    pub segments_live: u64,
    /// Segment files deleted (wholly consumed) since the store opened.
    pub segments_deleted: u64,
    /// Disk space claimed by the segment files (blocks handed out, plus space claimed ahead).
    pub segment_bytes: u64,
    /// Every listed topic, sorted by name.
    pub topics: Vec<TopicStats>,
}

/// Where one topic stands, in [`Stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicStats {
    /// The topic.
    pub name: String,
    /// One past its last entry.
    pub end: u64,
    /// One past its last durable entry (in a read-only store, which syncs nothing, the
    /// watermark persisted on disk).
    pub durable: u64,
    /// Its oldest retained entry.
    pub first_retained: u64,
    /// Blocks it retains.
    pub blocks: usize,
    /// Its consumers, with cursor and lag.
    pub consumers: Vec<ConsumerInfo>,
    /// Entries held by the remote tier (uploaded blocks), as far as this instance knows (0
    /// until its first tier pass for the topic).
    pub tiered_entries: u64,
    /// The offsets the uploaded blocks span, first to end.
    pub tiered: Option<std::ops::Range<u64>>,
    /// The persisted tier mark: entries below it that are not on local disk are in the remote
    /// tier (0: nothing left the disk for the tier). Known without the tier (read-only opens).
    pub tier_mark: u64,
}

/// What [`Store::consumers`](crate::Store::consumers) reports of one consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    /// The consumer's name (`""`: the topic's default consumer, the seed API's cursor).
    pub name: String,
    /// The next offset its consuming read returns.
    pub cursor: u64,
    /// The cursor as last persisted: after a crash, reading resumes here (or later).
    pub persisted: u64,
    /// Entries between the cursor and the topic's visible end.
    pub lag: u64,
    /// Entries released by retention before the consumer read them, since the store opened
    /// (the consumer continued at the oldest entry kept).
    pub skipped: u64,
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn every_latency_lies_in_its_bucket_and_the_bucket_is_at_most_an_eighth_wide() {
        let mut last = 0;
        for micros in (0..5000).chain([1 << 20, u64::from(u32::MAX), (1 << 40) - 1]) {
            let i = bucket_of(micros);
            let (lo, end) = (if i == 0 { 0 } else { bucket_end(i - 1) }, bucket_end(i));
            assert!(lo <= micros && micros < end, "{micros} µs in [{lo}, {end})");
            if micros >= SUB {
                assert!(
                    (end - lo) * SUB <= lo,
                    "{micros} µs: [{lo}, {end}) too wide"
                );
            }
            assert!(i >= last, "{micros} µs: buckets in order");
            last = i;
        }
        assert_eq!(bucket_end(bucket_of(330)), 352);
        assert_eq!(
            bucket_of(u64::MAX),
            BUCKETS - 1,
            "the longest land in the last"
        );
    }

    #[test]
    fn quantiles_are_the_ends_of_their_buckets() {
        let c = SyncCounters::default();
        assert_eq!(c.quantile_micros(0.99), 0, "no syncs");
        for _ in 0..99 {
            c.synced(Duration::from_micros(120), 1);
        }
        c.synced(Duration::from_micros(900), 1);
        assert_eq!(c.quantile_micros(0.50), 128);
        assert_eq!(c.quantile_micros(0.99), 128);
        assert_eq!(c.quantile_micros(1.0), 960);
    }
}
