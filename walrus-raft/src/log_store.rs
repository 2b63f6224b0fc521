//! The raft log on a Walrus instance.
//!
//! The log instance has three topics:
//! - `log`: one Walrus entry per raft entry, plus truncation marks. Walrus topics only grow, so
//!   a raft entry written at index `i` replaces every entry at `i` and above (raft only ever
//!   appends right after what it kept), and a truncation mark drops `since..`. Memory keeps one
//!   slot per live index: the Walrus offset holding it and its leader id. Purging records the
//!   purged id in `meta`, synced, then moves the `raft` consumer's cursor past the purged
//!   entries, which releases their blocks.
//! - `meta`: vote, committed and purged ids (JSON, the last record wins; earlier ones are
//!   released by the same cursor move).
//!
//! A purge is made durable no further than the state machine's *durable applied* id (the last
//! applied record it synced, see [`crate::StateMachine`]) nor the snapshot file it keeps:
//! openraft purges up to a snapshot it is still installing, and a node restarted with its log
//! purged past what its state machine kept could never re-apply the entries in between (nor
//! serve them to a follower from its snapshot). Memory purges as asked; on disk the
//! entries past the durable applied id stay until the state machine makes its applied record
//! durable past them (the install's, a snapshot build's), which makes the rest of the purge
//! durable: openraft appends after the snapshot without purging again.
//! - `applied`: the state machine's own record (see [`crate::StateMachine`]).
//!
//! openraft may append after a snapshot before the state machine has installed it (a new
//! leader, while the install runs): its purge up to the snapshot passes every entry held, and
//! the disk keeps the old entries until the install is durable. Such appends are reported
//! durable (their flush callback) only once the install is; stopped before, the disk holds the
//! old entries, a gap, then entries never acknowledged.
//!
//! Reopening replays `log` from the `raft` cursor: entries at or below the purged index are
//! skipped, every other entry and mark applies the rule above, and an entry past a gap (which,
//! by the rule before, was never acknowledged) is passed over. Appends are checked to continue
//! the log before they are written.
//!
//! Durability: `append` returns once the entries are written and hands openraft's flush
//! callback to a task that awaits their [`DurableTicket`](walrus::DurableTicket) (one group
//! sync shared by whatever is in flight); vote, purge and truncation wait for their sync before
//! they return. `committed` is written unsynced: it only shortens the replay after a restart.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, CommittedLeaderId, ErrorSubject, ErrorVerb, LogId, LogState, RaftLogReader,
    StorageError, StorageIOError, Vote,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use walrus::{FsyncSchedule, ReadConsistency, Walrus};

use crate::codec::{self, Entry, LogRecord};
use crate::{NodeId, TypeConfig};

const LOG: &str = "log";
const META: &str = "meta";
/// The consumer whose cursor marks what the log no longer needs.
pub(crate) const OWNER: &str = "raft";
/// Walrus batches hold at most this many entries.
const MAX_BATCH: usize = 2000;

/// The raft log of one node: see the [module docs](self). Cloning shares it (the clone is
/// openraft's log reader).
#[derive(Debug, Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    wal: Arc<Walrus>,
    index: Mutex<Index>,
    /// Serializes `meta` writes, so the last record is the newest state. Its `purged` is the
    /// purge on disk, which may trail the index's.
    meta: tokio::sync::Mutex<Meta>,
    /// How far the state machine's applied record is durable, and the appends waiting for it.
    applied: Arc<Applied>,
}

impl Drop for Shared {
    /// Appends still waiting for a snapshot install are settled (failed): the log is closed.
    fn drop(&mut self) {
        *self.applied.failed.lock() = Some("the raft log was closed".into());
        self.applied.moved.notify_waiters();
    }
}

/// How far a purge may be made durable, shared with the appends that wait for it to pass a
/// purge (see [`LogStore::append`]); they hold this, not the log, whose instance they must not
/// keep open.
#[derive(Debug, Default)]
struct Applied {
    /// The last applied id the state machine has made durable. `None` until a state machine
    /// opens over this log.
    durable: Mutex<Option<LogId<NodeId>>>,
    /// The last log id of the snapshot file the state machine keeps: a log purged on disk past
    /// it could not serve a follower the entries between (openraft requires the purge never to
    /// pass the snapshot; the applied record alone, saved every 1024 entries, may).
    snapshot: Mutex<Option<LogId<NodeId>>>,
    /// The purge durable on disk (the last synced `meta` record's): what the next open starts
    /// the log after. Appends past a gap wait for it, not for the cap, which moves first.
    purged: Mutex<Option<LogId<NodeId>>>,
    /// Wakes the waiting appends when `purged` moves, or `failed` is set.
    moved: tokio::sync::Notify,
    /// Why the snapshot install they wait for will not come: it failed, or the log closed.
    failed: Mutex<Option<String>>,
}

impl Applied {
    /// How far a purge may be made durable: the durable applied id, and no further than the
    /// snapshot kept.
    fn cap(&self) -> Option<LogId<NodeId>> {
        (*self.durable.lock()).min(*self.snapshot.lock())
    }

    /// Waits until the purge to `purged` is durable on disk: the snapshot install it was made
    /// for is durable, and the next open starts the log after it (replay would pass over the
    /// entries after it otherwise).
    ///
    /// # Errors
    /// The install failed, or the log closed first.
    async fn reached(&self, purged: LogId<NodeId>) -> io::Result<()> {
        loop {
            // Made before the check: a `notify_waiters` after it wakes it.
            let moved = self.moved.notified();
            if *self.purged.lock() >= Some(purged) {
                return Ok(());
            }
            if let Some(why) = &*self.failed.lock() {
                return Err(io::Error::other(format!(
                    "raft log: entries after {purged:?} wait for a snapshot install that will \
                     not come: {why}"
                )));
            }
            moved.await;
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Meta {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
}

/// Where each live index is.
#[derive(Debug, Default)]
struct Index {
    /// The index of `slots[0]`: one past the purged index.
    first: u64,
    slots: VecDeque<Slot>,
    purged: Option<LogId<NodeId>>,
    /// A purge past every entry held (openraft's, up to a snapshot it installs): the entries
    /// between were never here, so until the disk's purge reaches it, entries appended after
    /// it would follow a gap on disk (see [`LogStore::append`]).
    past_held: Option<LogId<NodeId>>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    offset: u64,
    leader: CommittedLeaderId<NodeId>,
}

impl Index {
    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        match self.slots.back() {
            Some(s) => Some(LogId::new(
                s.leader,
                self.first + self.slots.len() as u64 - 1,
            )),
            None => self.purged,
        }
    }

    /// Places the entry `log_id`, written at `offset`: it replaces `log_id.index` and above.
    fn place(&mut self, log_id: &LogId<NodeId>, offset: u64) -> io::Result<()> {
        let i = log_id.index;
        if i < self.first {
            return Ok(()); // purged already
        }
        if self.slots.is_empty() {
            // An empty log may start anywhere past the purged index (openraft starts at 1,
            // or after a snapshot).
            self.first = i;
        }
        let pos = usize::try_from(i - self.first).unwrap_or(usize::MAX);
        if pos > self.slots.len() {
            return Err(codec::invalid(format!(
                "raft log: entry {i} at offset {offset} of topic {LOG:?} leaves a gap after {}",
                self.first + self.slots.len() as u64
            )));
        }
        self.slots.truncate(pos);
        self.slots.push_back(Slot {
            offset,
            leader: log_id.leader_id,
        });
        Ok(())
    }

    fn truncate(&mut self, since: u64) {
        let keep = since.saturating_sub(self.first);
        self.slots
            .truncate(usize::try_from(keep).unwrap_or(usize::MAX));
    }

    /// Where the entries after `kept` start: `Some(Some(offset))` if one is held,
    /// `Some(None)` if every held entry is at or below `kept`, `None` if entries after `kept`
    /// were purged from memory already (their offsets are forgotten).
    fn start_after(&self, kept: Option<LogId<NodeId>>) -> Option<Option<u64>> {
        let next = kept.map_or(0, |k| k.index + 1);
        if next < self.first {
            return None;
        }
        let pos = usize::try_from(next - self.first).unwrap_or(usize::MAX);
        Some(self.slots.get(pos).map(|s| s.offset))
    }

    /// Places the entry `log_id`, found at `offset` by the replay: as [`place`](Self::place),
    /// except that an entry past the next index (a gap) is passed over and `false` returned. A
    /// gap on disk is what a crash leaves when openraft had purged memory up to a snapshot it
    /// was installing and appended after it: the purge was not durable yet, and those appends
    /// were never acknowledged ([`LogStore::append`] waits for the install before it reports
    /// them durable). An empty log starts right after the purged index, or, with nothing
    /// purged, at index 0 (openraft's first entry) or 1.
    fn replay(&mut self, log_id: &LogId<NodeId>, offset: u64) -> io::Result<bool> {
        let next = self.first.saturating_add(self.slots.len() as u64);
        let starts = self.slots.is_empty() && self.purged.is_none() && log_id.index <= 1;
        if log_id.index > next && !starts {
            return Ok(false);
        }
        self.place(log_id, offset).map(|()| true)
    }

    /// Checks that `ids`, about to be written, follow one another and continue (or replace
    /// part of) the log: a gap written would be passed over by the next replay.
    fn check_follows(&self, ids: &[LogId<NodeId>]) -> io::Result<()> {
        let Some(head) = ids.first() else {
            return Ok(());
        };
        let next = self.first.saturating_add(self.slots.len() as u64);
        // An empty log may start anywhere (after a snapshot); entries at or below the purged
        // index are passed over by `place`.
        let fits = self.slots.is_empty() || head.index <= next;
        let consecutive = ids
            .windows(2)
            .all(|w| w[0].index.checked_add(1) == Some(w[1].index));
        if !fits || !consecutive {
            return Err(codec::invalid(format!(
                "raft log: entries {:?} do not continue the log (its next index is {next})",
                ids.iter().map(|i| i.index).collect::<Vec<_>>()
            )));
        }
        Ok(())
    }

    /// Drops everything up to and including `upto`.
    fn purge(&mut self, upto: &LogId<NodeId>) {
        if upto.index >= self.first.saturating_add(self.slots.len() as u64) {
            self.past_held = self.past_held.max(Some(*upto));
        }
        let n = (upto.index + 1).saturating_sub(self.first);
        let n = usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(self.slots.len());
        self.slots.drain(..n);
        self.first = self.first.max(upto.index + 1);
        self.purged = Some(*upto);
    }
}

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: io::Error) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::new(&e)),
    }
}

fn logs_err(verb: ErrorVerb, e: io::Error) -> StorageError<NodeId> {
    io_err(ErrorSubject::Logs, verb, e)
}

/// Opens (creating if needed) one of a node's Walrus instances: the one that holds its raft
/// log and the state machine's record, or its data. Syncs are driven by durability tickets,
/// never by a timer.
pub(crate) fn open_instance(dir: &Path) -> io::Result<Walrus> {
    Walrus::builder()
        .data_dir(dir)
        .fsync_schedule(FsyncSchedule::NoFsync)
        .consistency(ReadConsistency::AtLeastOnce { persist_every: 1 })
        .quiet(true)
        .build()
}

/// The last record of `topic` from its owner's cursor on, decoded by `decode`.
pub(crate) fn last_record<T>(
    wal: &Walrus,
    topic: &str,
    decode: impl Fn(&[u8]) -> io::Result<T>,
) -> io::Result<Option<(u64, T)>> {
    let from = wal
        .cursor_as(topic, OWNER)
        .or_else(|| wal.first_retained_offset(topic))
        .unwrap_or(0);
    let mut last = None;
    for rec in wal.iter(topic, from) {
        let rec = rec?;
        last = Some(rec);
    }
    last.map(|r| decode(&r.data).map(|v| (r.offset, v)))
        .transpose()
}

/// Appends `record` to `topic`, waits until it is durable, then releases the records before it.
pub(crate) async fn save_record(wal: &Walrus, topic: &str, record: &[u8]) -> io::Result<()> {
    let offset = wal.append_with_ticket(topic, record)?.await?.start;
    wal.commit_as(topic, OWNER, offset)
}

/// [`save_record`], blocking the calling thread (at an open, outside any task).
pub(crate) fn save_record_now(wal: &Walrus, topic: &str, record: &[u8]) -> io::Result<()> {
    let offset = wal.append_with_ticket(topic, record)?.wait()?.start;
    wal.commit_as(topic, OWNER, offset)
}

impl LogStore {
    /// Opens the log kept in `wal`, replaying it. `wal` is the node's log instance (its
    /// topics `log`, `meta` and `applied` belong to walrus-raft); [`crate::open_stores`] opens
    /// one on disk, tests pass one on a simulated disk. Syncs come from durability tickets, so
    /// any fsync schedule works; `NoFsync` adds none of its own.
    ///
    /// # Errors
    /// `InvalidData` for a record that does not decode or a gap; an I/O error.
    pub fn open(wal: Arc<Walrus>) -> io::Result<Self> {
        let meta = last_record(&wal, META, |b| {
            serde_json::from_slice::<Meta>(b)
                .map_err(|e| codec::invalid(format!("raft log: topic {META:?}: {e}")))
        })?
        .map(|(_, m)| m)
        .unwrap_or_default();
        let meta_purged = meta.purged;
        let first = match meta.purged {
            None => 0,
            Some(p) => p.index.checked_add(1).ok_or_else(|| {
                codec::invalid(format!(
                    "raft log: topic {META:?}: purged through index {}, the last there is",
                    p.index
                ))
            })?,
        };
        let mut index = Index {
            first,
            slots: VecDeque::new(),
            purged: meta.purged,
            past_held: None,
        };
        let from = wal
            .cursor_as(LOG, OWNER)
            .or_else(|| wal.first_retained_offset(LOG))
            .unwrap_or(0);
        for rec in wal.iter(LOG, from) {
            let rec = rec?;
            let record = codec::decode_record(&rec.data).map_err(|e| {
                codec::invalid(format!("{e} (topic {LOG:?}, offset {})", rec.offset))
            })?;
            match record {
                LogRecord::Entry(entry) => {
                    if !index.replay(&entry.log_id, rec.offset)? {
                        tracing::warn!(
                            index = entry.log_id.index,
                            offset = rec.offset,
                            "raft log: an entry past a gap, never acknowledged, passed over"
                        );
                    }
                }
                LogRecord::Truncate { since } => index.truncate(since),
            }
        }
        Ok(Self {
            shared: Arc::new(Shared {
                wal,
                index: Mutex::new(index),
                meta: tokio::sync::Mutex::new(meta),
                applied: Arc::new(Applied {
                    purged: Mutex::new(meta_purged),
                    ..Applied::default()
                }),
            }),
        })
    }

    /// A snapshot install begins: appends wait for it, whatever became of an earlier one.
    pub(crate) fn install_started(&self) {
        *self.shared.applied.failed.lock() = None;
    }

    /// The snapshot install failed: appends waiting for it (see [`LogStore::append`]) fail,
    /// rather than wait for ever.
    pub(crate) fn install_failed(&self, why: &io::Error) {
        *self.shared.applied.failed.lock() = Some(why.to_string());
        self.shared.applied.moved.notify_waiters();
    }

    /// The Walrus instance the log lives in.
    pub fn instance(&self) -> &Arc<Walrus> {
        &self.shared.wal
    }

    /// Records that the state machine's applied record naming `applied` is durable: purges up
    /// to it may now be made durable.
    pub(crate) fn set_durable_applied(&self, applied: Option<LogId<NodeId>>) {
        // Never back: a snapshot build that recorded an older id may report it after an
        // install recorded a newer one (the applied record on disk is the install's), and a
        // purge capped at the older one would leave appends waiting for it for ever.
        let mut durable = self.shared.applied.durable.lock();
        *durable = (*durable).max(applied);
    }

    /// Records the last log id of the snapshot file the state machine keeps (durable): no
    /// purge is made durable past it.
    pub(crate) fn set_snapshot_kept(&self, kept: Option<LogId<NodeId>>) {
        *self.shared.applied.snapshot.lock() = kept;
    }

    /// [`set_durable_applied`](Self::set_durable_applied), then makes durable the part of the
    /// purge asked in memory that waited for it. openraft purges a follower up to a snapshot
    /// before installing it, and then appends after it, without purging again until its next
    /// snapshot: left on disk at the old entries, the log would replay them and then find a
    /// gap before the new ones, and the node could not restart.
    pub(crate) async fn advance_durable_applied(
        &self,
        applied: Option<LogId<NodeId>>,
    ) -> io::Result<()> {
        self.set_durable_applied(applied);
        let wanted = self.shared.index.lock().purged;
        let kept = self.shared.applied.cap().min(wanted);
        if kept > self.shared.meta.lock().await.purged {
            self.save_meta(|m| m.purged = m.purged.max(kept), true)
                .await?;
        }
        let start = self.release_point(&self.shared.index.lock(), kept);
        self.release_before(start)
    }

    /// Where the `raft` consumer's cursor may move once the log is purged through `kept`: the
    /// offset of the entry after it, the topic's end when none is held (read under the index
    /// lock, which appends hold while they write: an entry appended meanwhile is never passed),
    /// or `None` when an earlier purge's cursor already stops before them.
    fn release_point(&self, index: &Index, kept: Option<LogId<NodeId>>) -> Option<u64> {
        match index.start_after(kept)? {
            Some(offset) => Some(offset),
            None => Some(self.shared.wal.end_offset(LOG).unwrap_or(0)),
        }
    }

    /// Moves the `raft` consumer's cursor to `start` (see [`release_point`](Self::release_point)),
    /// releasing what replay no longer reads. Only a release hint: the purge is durable already,
    /// and replay skips what it purged.
    fn release_before(&self, start: Option<u64>) -> io::Result<()> {
        let wal = &self.shared.wal;
        let Some(cursor) = start else {
            return Ok(());
        };
        if cursor > wal.cursor_as(LOG, OWNER).unwrap_or(0) {
            wal.commit_as(LOG, OWNER, cursor)?;
        }
        Ok(())
    }

    async fn save_meta(&self, change: impl FnOnce(&mut Meta), durable: bool) -> io::Result<()> {
        let mut meta = self.shared.meta.lock().await;
        let mut next = meta.clone();
        change(&mut next);
        let bytes = serde_json::to_vec(&next).map_err(io::Error::other)?;
        if durable {
            save_record(&self.shared.wal, META, &bytes).await?;
            // What the next open starts from: appends waiting for it may be acknowledged.
            *self.shared.applied.purged.lock() = next.purged;
            self.shared.applied.moved.notify_waiters();
        } else {
            self.shared.wal.append(META, &bytes)?;
        }
        *meta = next;
        Ok(())
    }

    /// The entries of `start..end`, but past the first no more than `max_bytes` of them.
    fn read_range(&self, start: u64, end: u64, max_bytes: usize) -> io::Result<Vec<Entry>> {
        let wanted: Vec<(u64, u64)> = {
            let index = self.shared.index.lock();
            let lo = start.max(index.first);
            let hi = end.min(index.first + index.slots.len() as u64);
            (lo..hi)
                .map(|i| (i, index.slots[(i - index.first) as usize].offset))
                .collect()
        };
        let mut out = Vec::with_capacity(wanted.len());
        let mut bytes = 0usize;
        for (i, offset) in wanted {
            let named = |e: io::Error| {
                io::Error::new(
                    e.kind(),
                    format!("raft log index {i} (topic {LOG:?}, offset {offset}): {e}"),
                )
            };
            let data = self
                .shared
                .wal
                .read_at(LOG, offset)
                .map_err(named)?
                .ok_or_else(|| named(io::Error::new(io::ErrorKind::NotFound, "not written")))?
                .data;
            bytes = bytes.saturating_add(data.len());
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            match codec::decode_record(&data).map_err(named)? {
                LogRecord::Entry(e) if e.log_id.index == i => out.push(e),
                other => return Err(named(codec::invalid(format!("holds {other:?}")))),
            }
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        self.read_range(start, end, usize::MAX)
            .map_err(|e| logs_err(ErrorVerb::Read, e))
    }

    /// What replication sends a follower in one request: at most 4 MiB of entries past the
    /// first. openraft asks for up to 300 entries, and entries can be MiBs:
    /// a follower catching up on large ones would get requests that fit neither its deadline
    /// (a heartbeat interval) nor the peer body limit, retried unchanged forever.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        self.read_range(start, end, REPLICATION_BYTES)
            .map_err(|e| logs_err(ErrorVerb::Read, e))
    }
}

/// The most entry bytes one replication request carries (past its first entry).
const REPLICATION_BYTES: usize = 4 << 20;

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let index = self.shared.index.lock();
        Ok(LogState {
            last_purged_log_id: index.purged,
            last_log_id: index.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        self.save_meta(|m| m.vote = Some(vote), true)
            .await
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.shared.meta.lock().await.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.save_meta(|m| m.committed = committed, false)
            .await
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    /// The committed id saved, but never past the last entry the log holds: it is saved
    /// without a sync, and a power cut can keep it while taking the entries it names (a node
    /// restarted with a committed id past its log could not re-apply to it, and never start).
    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let committed = self.shared.meta.lock().await.committed;
        let last = self.shared.index.lock().last_log_id();
        Ok(match (committed, last) {
            (Some(c), Some(l)) if c.index > l.index => Some(l),
            (Some(_), None) => None,
            (c, _) => c,
        })
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut pending = Vec::new();
        let mut ids = Vec::new();
        let mut tickets = Vec::new();
        // Entries that follow a purge past every entry held, which the disk does not hold yet
        // (openraft purged memory up to a snapshot it is installing): reported durable only
        // once the install is, since a crash before it leaves a gap on disk in front of them,
        // and the replay passes them over (see `Index::replay`).
        let mut after_install = None;
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            pending.clear();
            ids.clear();
            for e in entries.by_ref().take(MAX_BATCH) {
                pending
                    .push(codec::encode_entry(&e).map_err(|err| logs_err(ErrorVerb::Write, err))?);
                ids.push(e.log_id);
            }
            let batch: Vec<&[u8]> = pending.iter().map(Vec::as_slice).collect();
            let mut index = self.shared.index.lock();
            index
                .check_follows(&ids)
                .map_err(|err| logs_err(ErrorVerb::Write, err))?;
            if index.past_held > *self.shared.applied.purged.lock() {
                after_install = after_install.max(index.past_held);
            }
            let ticket = self
                .shared
                .wal
                .append_batch_with_ticket(LOG, &batch)
                .map_err(|err| logs_err(ErrorVerb::Write, err))?;
            for (id, offset) in ids.iter().zip(ticket.offsets()) {
                index
                    .place(id, offset)
                    .map_err(|err| logs_err(ErrorVerb::Write, err))?;
            }
            drop(index);
            tickets.push(ticket);
        }
        let applied = Arc::clone(&self.shared.applied);
        tokio::spawn(async move {
            let mut result = Ok(());
            // Walrus makes a topic durable in order: the last ticket covers the rest, but every
            // ticket is awaited so that a failure of any sync is reported.
            for t in tickets {
                if let Err(e) = t.await {
                    result = Err(e);
                    break;
                }
            }
            if result.is_ok()
                && let Some(purged) = after_install
            {
                result = applied.reached(purged).await;
            }
            callback.log_io_completed(result);
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let since = log_id.index;
        save_record_raw(&self.shared.wal, &codec::encode_truncate(since))
            .await
            .map_err(|e| logs_err(ErrorVerb::Delete, e))?;
        self.shared.index.lock().truncate(since);
        Ok(())
    }

    /// Purges memory up to `log_id`, and the disk up to the state machine's durable applied id
    /// at most (see the [module docs](self)).
    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // Option's order puts `None` (nothing durable) first.
        // Memory first, then the durable applied id is read: `advance_durable_applied` sets
        // that id, then reads the memory purge. Whichever comes second sees both, so one of
        // the two makes the purge durable as far as it may go (the install of a snapshot and
        // openraft's purge up to it run side by side).
        let (kept, start) = {
            let mut index = self.shared.index.lock();
            let start = self.release_point(&index, Some(log_id));
            index.purge(&log_id);
            let kept = self.shared.applied.cap().min(Some(log_id));
            (kept, if kept == Some(log_id) { start } else { None })
        };
        if kept > self.shared.meta.lock().await.purged {
            self.save_meta(|m| m.purged = m.purged.max(kept), true)
                .await
                .map_err(|e| logs_err(ErrorVerb::Delete, e))?;
        }
        self.release_before(start)
            .map_err(|e| logs_err(ErrorVerb::Delete, e))
    }
}

/// Appends a log record and waits until it is durable.
async fn save_record_raw(wal: &Walrus, record: &[u8]) -> io::Result<()> {
    wal.append_with_ticket(LOG, record)?.await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::{EntryPayload, LogId};

    use super::*;

    fn id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn blank(index: u64) -> Entry {
        Entry {
            log_id: id(index),
            payload: EntryPayload::Blank,
        }
    }

    /// Appends after a snapshot being installed are acknowledged once the purge up to it is
    /// durable on disk (the next open starts the log after it), not when the state machine's
    /// install is recorded in memory, a moment before that purge is written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_after_a_snapshot_wait_for_its_purge_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm) = crate::open_stores(dir.path()).unwrap();
        log.blocking_append((1..=10).map(blank)).await.unwrap();
        log.purge(id(100)).await.unwrap();
        let mut appender = log.clone();
        let waiting =
            tokio::spawn(async move { appender.blocking_append((101..=105).map(blank)).await });
        let still = std::time::Duration::from_millis(300);
        tokio::time::sleep(still).await;
        assert!(!waiting.is_finished(), "acknowledged before the install");
        // The install recorded in memory: the purge may now be made durable, not yet is.
        log.set_snapshot_kept(Some(id(100)));
        log.set_durable_applied(Some(id(100)));
        tokio::time::sleep(still).await;
        assert!(
            !waiting.is_finished(),
            "acknowledged before the purge up to the snapshot was durable"
        );
        log.advance_durable_applied(Some(id(100))).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(30), waiting)
            .await
            .expect("left waiting after the purge was durable")
            .unwrap()
            .unwrap();
        assert_eq!(log.shared.meta.lock().await.purged, Some(id(100)));
    }

    /// A snapshot build that recorded an older applied id and reports it after an install
    /// reported a newer one does not move the durable applied id back: the purge up to the
    /// install's snapshot, asked afterwards, is made durable, and appends after it go on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_build_does_not_move_the_durable_applied_id_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm) = crate::open_stores(dir.path()).unwrap();
        log.blocking_append((1..=10).map(blank)).await.unwrap();
        log.set_snapshot_kept(Some(id(100)));
        log.advance_durable_applied(Some(id(100))).await.unwrap();
        log.advance_durable_applied(Some(id(50))).await.unwrap();
        log.purge(id(100)).await.unwrap();
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            log.blocking_append((101..=105).map(blank)),
        )
        .await
        .expect("appends after the snapshot left waiting")
        .unwrap();
        assert_eq!(log.shared.meta.lock().await.purged, Some(id(100)));
    }
}
