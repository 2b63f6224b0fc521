//! The state machine: a replicated Walrus.
//!
//! Applying `Append { topic, data }` appends to `topic` of the node's data instance; applying
//! `Commit` moves a consumer's cursor there. Applying is deterministic, so every node holds the
//! same topics with the same offsets, and refuses the same bad requests: it decides from
//! replicated state only (a commit below every consumer's cursor is refused, since whether
//! those entries are still held depends on each node's block boundaries).
//!
//! The data instance is never synced per entry: the raft log is the durable copy. Every
//! 1024 entries (`SAVE_EVERY`; and at each snapshot) the data instance is flushed and then the
//! *applied record* — last applied id, membership, and each topic's end at that point — is
//! written, synced, to the log instance's `applied` topic, and the log store learns that it may
//! make purges durable up to it. After a crash, openraft re-applies
//! the committed entries past that record; an `Append` whose topic already extends past the end
//! the record expects was applied before the crash (and survived: Walrus keeps a durable prefix),
//! so it is counted, not appended again.
//!
//! A snapshot is every topic's retained entries, first offset, end and cursors, in one sealed
//! byte body (see `docs/FORMAT.md`); installing it appends what the node lacks, so offsets stay
//! the same. A node whose topic is shorter than the snapshot's first retained offset fills the
//! gap with empty entries, which its replicated cursors then release.
//!
//! An install writes the snapshot file first, then the body into the data, then the applied
//! record, then tells the log. Stopped after the file, the next open finishes the install from
//! it before anything else: the data never holds a half-installed body under an applied record
//! that predates it (re-applying the log over it would count the snapshot's empty entries as
//! the log's appends), and the applied record never passes the snapshot kept. The log never
//! makes a purge durable past the snapshot file either (see [`crate::LogStore`]).

use std::collections::BTreeMap;
use std::io::{self, Cursor, Write};
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use walrus::Walrus;

use crate::codec::{self, Dec, Enc, Entry};
use crate::log_store::{LogStore, last_record, save_record, save_record_now};
use crate::{NodeId, Request, Response, TypeConfig};

/// Entries applied between two applied records.
pub(crate) const SAVE_EVERY: u64 = 1024;
const APPLIED: &str = "applied";
const SNAPSHOT_MAGIC: &[u8; 4] = b"WRS1";
const MAX_BATCH: usize = 2000;

type Membership = StoredMembership<NodeId, openraft::BasicNode>;

/// The replicated Walrus of one node: see the [module docs](self). Cloning shares it (a clone
/// is openraft's snapshot builder).
#[derive(Debug, Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    data: Arc<Walrus>,
    log: LogStore,
    snapshot_path: PathBuf,
    state: tokio::sync::Mutex<State>,
    current: parking_lot::Mutex<Option<Stored>>,
}

/// What the applied record holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    last: Option<LogId<NodeId>>,
    membership: Membership,
    /// Each topic's end after `last`.
    ends: BTreeMap<String, u64>,
    /// Each topic's consumers' cursors after `last`, as commits set them: what a commit is
    /// judged by, the same on every node (the data instance's own cursor records are not
    /// synced per entry, so after a power cut a node's may differ from another's).
    #[serde(default)]
    cursors: BTreeMap<String, BTreeMap<String, u64>>,
}

#[derive(Debug, Default)]
struct State {
    applied: Applied,
    unsaved: u64,
    snapshots: u64,
    /// Entries appended to the data instance since it was last flushed.
    unflushed: bool,
}

/// A snapshot as kept: its metadata and sealed body.
#[derive(Debug, Clone)]
struct Stored {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    body: Vec<u8>,
}

fn sm_err(verb: ErrorVerb, e: io::Error) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::new(&e)),
    }
}

fn snap_err(verb: ErrorVerb, e: io::Error) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::new(&e)),
    }
}

impl StateMachine {
    /// Opens the state machine over `data` (the replicated topics), recording what it applied
    /// in the instance of `log` (the node's raft log, which it tells how far purges may be made
    /// durable) and its snapshot at `snapshot_path`.
    ///
    /// # Errors
    /// `InvalidData` for a damaged applied record or snapshot file; an I/O error.
    pub fn open(data: Arc<Walrus>, log: &LogStore, snapshot_path: PathBuf) -> io::Result<Self> {
        let applied = last_record(log.instance(), APPLIED, |b| {
            serde_json::from_slice::<Applied>(b)
                .map_err(|e| codec::invalid(format!("raft state machine: topic {APPLIED:?}: {e}")))
        })?
        .map(|(_, a)| a)
        .unwrap_or_default();
        let current = match std::fs::read(&snapshot_path) {
            Ok(bytes) => Some(decode_stored(&bytes).map_err(|e| {
                codec::invalid(format!("snapshot file {}: {e}", snapshot_path.display()))
            })?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("snapshot file {}: {e}", snapshot_path.display()),
                ));
            }
        };
        let kept = current.as_ref().and_then(|c| c.meta.last_log_id);
        let sm = Self {
            shared: Arc::new(Shared {
                data,
                log: log.clone(),
                snapshot_path,
                state: tokio::sync::Mutex::new(State::default()),
                current: parking_lot::Mutex::new(current),
            }),
        };
        let applied = match sm.shared.current.lock().clone() {
            // An install stopped after its snapshot file was written (its first step): finished
            // from the file, before anything reads the data or re-applies the log over it.
            Some(stored) if stored.meta.last_log_id > applied.last => sm.finish_install(&stored)?,
            _ => applied,
        };
        log.set_durable_applied(applied.last);
        log.set_snapshot_kept(kept);
        sm.shared
            .state
            .try_lock()
            .map_err(io::Error::other)?
            .applied = applied;
        Ok(sm)
    }

    /// Installs the snapshot `stored` over the data and makes its applied record durable
    /// (blocking: at the open).
    fn finish_install(&self, stored: &Stored) -> io::Result<Applied> {
        let applied = Applied {
            membership: stored.meta.last_membership.clone(),
            ..self.install_body(&stored.body)?
        };
        self.shared.data.flush()?;
        let bytes = serde_json::to_vec(&applied).map_err(io::Error::other)?;
        save_record_now(self.shared.log.instance(), APPLIED, &bytes)?;
        tracing::info!(applied = ?applied.last, "finished a snapshot install stopped by a restart");
        Ok(applied)
    }

    /// The data instance: the replicated topics (read it; only the state machine writes).
    pub fn data(&self) -> &Arc<Walrus> {
        &self.shared.data
    }

    /// Flushes the data instance, then writes the applied record, synced, and tells the log
    /// (purges up to it may be made durable).
    async fn save_applied(&self, st: &mut State) -> io::Result<()> {
        self.record_applied(st).await?;
        self.shared
            .log
            .advance_durable_applied(st.applied.last)
            .await
    }

    /// [`save_applied`](Self::save_applied) without telling the log: for a snapshot, whose
    /// file must be written before the log may purge up to it durably (a node restarted with
    /// its log purged past the snapshot it keeps could not serve the entries in between).
    async fn record_applied(&self, st: &mut State) -> io::Result<()> {
        self.shared.data.flush()?;
        st.unflushed = false;
        let bytes = serde_json::to_vec(&st.applied).map_err(io::Error::other)?;
        save_record(self.shared.log.instance(), APPLIED, &bytes).await?;
        st.unsaved = 0;
        Ok(())
    }

    fn apply_request(&self, st: &mut State, request: &Request) -> io::Result<Response> {
        let data = &self.shared.data;
        match request {
            Request::Batch { requests } => {
                let mut responses = Vec::with_capacity(requests.len());
                for r in requests {
                    responses.push(match r {
                        Request::Batch { .. } => Response::Refused {
                            reason: "a batch inside a batch".into(),
                        },
                        r => self.apply_request(st, r)?,
                    });
                }
                Ok(Response::Batch { responses })
            }
            Request::Append { topic, data: entry } => {
                let expected = st.applied.ends.get(topic).copied().unwrap_or(0);
                if data.end_offset(topic).unwrap_or(0) > expected {
                    // Applied before a restart, and kept.
                    st.applied.ends.insert(topic.clone(), expected + 1);
                    return Ok(Response::Appended { offset: expected });
                }
                match data.append(topic, entry) {
                    Ok(offset) if offset == expected => {
                        st.unflushed = true;
                        st.applied.ends.insert(topic.clone(), offset + 1);
                        Ok(Response::Appended { offset })
                    }
                    Ok(offset) => Err(codec::invalid(format!(
                        "replicated topic {topic:?} diverged: entry appended at offset {offset}, \
                         the log says {expected}"
                    ))),
                    Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(Response::Refused {
                        reason: e.to_string(),
                    }),
                    Err(e) => Err(e),
                }
            }
            Request::Commit {
                topic,
                consumer,
                offset,
            } => {
                let end = st.applied.ends.get(topic).copied();
                if end.is_none_or(|end| *offset > end) {
                    return Ok(Response::Refused {
                        reason: format!(
                            "offset {offset} is past the end of topic {topic:?} ({})",
                            end.unwrap_or(0)
                        ),
                    });
                }
                // Below every consumer's cursor, entries are released or not by each node's own
                // block boundaries, so whether they are still there differs between nodes: such
                // a commit is refused on every node alike, judged by the replicated cursors.
                let floor = st
                    .applied
                    .cursors
                    .get(topic)
                    .and_then(|c| c.values().min().copied())
                    .unwrap_or(0);
                if *offset < floor {
                    return Ok(Response::Refused {
                        reason: format!(
                            "offset {offset} of topic {topic:?} is below every consumer's cursor \
                             ({floor}): its entries may be released"
                        ),
                    });
                }
                // This node may have released more than the replicated cursors say (its own
                // cursor records ran ahead of the applied record before a power cut): the
                // cursor then stands at its first entry kept, which reads the same.
                let local = data.first_retained_offset(topic).unwrap_or(0);
                // The data instance syncs nothing of its own, and pages reach the disk in any
                // order: a cursor record kept by a power cut without the entries it passed
                // would make recovery end the topic past a gap, which re-applying would then
                // count as entries there. The entries go first.
                if st.unflushed {
                    data.flush()?;
                    st.unflushed = false;
                }
                match data.commit_as(topic, consumer, (*offset).max(local)) {
                    Ok(()) => {
                        st.applied
                            .cursors
                            .entry(topic.clone())
                            .or_default()
                            .insert(consumer.clone(), *offset);
                        Ok(Response::Committed)
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::InvalidInput | io::ErrorKind::NotFound
                        ) =>
                    {
                        Ok(Response::Refused {
                            reason: e.to_string(),
                        })
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// The snapshot body of the current state.
    fn encode_body(&self, st: &State) -> io::Result<Vec<u8>> {
        let data = &self.shared.data;
        let mut e = Enc::default();
        e.0.extend_from_slice(SNAPSHOT_MAGIC);
        e.bytes(&serde_json::to_vec(&st.applied).map_err(io::Error::other)?);
        e.u64(st.applied.ends.len() as u64);
        for (topic, &end) in &st.applied.ends {
            let first = data.first_retained_offset(topic).unwrap_or(end).min(end);
            let consumers: Vec<_> = data
                .consumers(topic)
                .into_iter()
                .map(|c| (c.name, c.cursor.clamp(first, end)))
                .collect();
            e.bytes(topic.as_bytes()).u64(first).u64(end);
            e.u64(consumers.len() as u64);
            for (name, cursor) in &consumers {
                e.bytes(name.as_bytes()).u64(*cursor);
            }
            let mut next = first;
            for rec in data.iter(topic, first) {
                let rec = rec?;
                if rec.offset >= end {
                    break;
                }
                if rec.offset != next {
                    return Err(codec::invalid(format!(
                        "topic {topic:?}: offset {next} missing while building a snapshot"
                    )));
                }
                e.bytes(&rec.data);
                next += 1;
            }
            if next != end {
                return Err(codec::invalid(format!(
                    "topic {topic:?}: entries {next}..{end} missing while building a snapshot"
                )));
            }
        }
        Ok(codec::seal(e.0))
    }

    /// Checks a snapshot body whole against this node's data, writing nothing: the record of
    /// what it applied, if every check [`install_body`](Self::install_body) makes passes.
    fn check_body(&self, body: &[u8]) -> io::Result<Applied> {
        self.walk_body(body, false)
    }

    /// Applies a snapshot body that [`check_body`](Self::check_body) passed: appends what each
    /// topic lacks, moves the cursors. (Checked first, a snapshot that fails a check changes
    /// nothing; only an I/O error can stop it halfway, and the node then installs it again.)
    fn install_body(&self, body: &[u8]) -> io::Result<Applied> {
        self.walk_body(body, true)
    }

    /// Decodes a snapshot body and checks it; with `apply`, also installs it.
    fn walk_body(&self, body: &[u8], apply: bool) -> io::Result<Applied> {
        let data = &self.shared.data;
        let body = codec::unseal(body, "snapshot")?;
        let mut d = Dec::new(body, "snapshot");
        let magic = [d.u8()?, d.u8()?, d.u8()?, d.u8()?];
        if &magic != SNAPSHOT_MAGIC {
            return Err(codec::invalid(format!("snapshot: magic {magic:?}")));
        }
        let applied: Applied = serde_json::from_slice(d.bytes()?)
            .map_err(|e| codec::invalid(format!("snapshot: applied record: {e}")))?;
        let topics = d.u64()?;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..topics {
            let topic = d.string()?;
            let first = d.u64()?;
            let end = d.u64()?;
            if first > end || applied.ends.get(&topic) != Some(&end) || !seen.insert(topic.clone())
            {
                return Err(codec::invalid(format!(
                    "snapshot: topic {topic:?} range {first}..{end} disagrees with its record \
                     (or the topic is there twice)"
                )));
            }
            walrus_block::validate_topic_name(&topic)
                .map_err(|e| codec::invalid(format!("snapshot: {e}")))?;
            let n = d.u64()?;
            let mut consumers = Vec::new();
            for _ in 0..n {
                let (consumer, cursor) = (d.string()?, d.u64()?);
                if !consumer.is_empty() {
                    walrus_block::validate_consumer_name(&consumer)
                        .map_err(|e| codec::invalid(format!("snapshot: topic {topic:?}: {e}")))?;
                }
                if cursor > end {
                    return Err(codec::invalid(format!(
                        "snapshot: topic {topic:?}: consumer {consumer:?} at {cursor}, past its \
                         end {end}"
                    )));
                }
                consumers.push((consumer, cursor));
            }
            let local = data.end_offset(&topic).unwrap_or(0);
            if local > end {
                return Err(codec::invalid(format!(
                    "snapshot: local topic {topic:?} ends at {local}, past the snapshot's {end}"
                )));
            }
            if !apply {
                for _ in first..end {
                    let entry = d.bytes()?;
                    if entry.len() > walrus_block::MAX_ENTRY_LEN {
                        return Err(codec::invalid(format!(
                            "snapshot: topic {topic:?}: an entry of {} bytes",
                            entry.len()
                        )));
                    }
                }
                continue;
            }
            // Offsets the snapshot no longer holds: empty entries keep the numbering.
            let mut at = local;
            while at < first {
                let n = usize::try_from(first - at)
                    .unwrap_or(MAX_BATCH)
                    .min(MAX_BATCH);
                let blanks = vec![&[][..]; n];
                at = data.append_batch(&topic, &blanks)?.end;
            }
            let mut batch: Vec<&[u8]> = Vec::new();
            for offset in first..end {
                let entry = d.bytes()?;
                if offset >= at {
                    batch.push(entry);
                }
                if batch.len() == MAX_BATCH {
                    data.append_batch(&topic, &batch)?;
                    batch.clear();
                }
            }
            if !batch.is_empty() {
                data.append_batch(&topic, &batch)?;
            }
            if data.end_offset(&topic).unwrap_or(0) != end {
                return Err(codec::invalid(format!(
                    "snapshot: topic {topic:?} did not end at {end} after installing"
                )));
            }
            // The entries before the floor and the cursors: the data instance syncs nothing of
            // its own, and a cursor record kept by a power cut without the entries it passed
            // would make recovery end the topic past a gap, which finishing the install from
            // the snapshot file would then take for entries there (as `apply_request` guards
            // its commits).
            if first > 0 || !consumers.is_empty() {
                data.flush()?;
            }
            // Below `first` this node holds blank entries (or entries the leader released):
            // released here too, so that a read there finds nothing and a new consumer starts
            // at `first`, as on the leader.
            data.release_before(&topic, first)?;
            // The lowest cursor first: a commit releases what every consumer this node has
            // passed, and a consumer not yet made here holds nothing back, so committed in
            // another order, a higher cursor would release entries a lower one still needs.
            consumers.sort_by_key(|(_, cursor)| *cursor);
            for (consumer, cursor) in consumers {
                // This node may have released more already (its own consumers ran ahead
                // before a commit moved them back): the cursor then stands at the first entry
                // kept, as `apply_request` does. Refused instead, an install stopped here would
                // be refused again by every open that finishes it.
                let kept = data.first_retained_offset(&topic).unwrap_or(0);
                data.commit_as(&topic, &consumer, cursor.max(kept))?;
            }
        }
        d.end()?;
        if seen.len() != applied.ends.len() {
            return Err(codec::invalid(format!(
                "snapshot: {} topics in the body, {} in its applied record",
                seen.len(),
                applied.ends.len()
            )));
        }
        Ok(applied)
    }

    /// Makes `stored` the current snapshot, on disk first, unless the current one is newer.
    /// Serialised by the `current` lock: openraft builds snapshots on a task of its own, so a
    /// build and an install can finish together, and both write the same temporary file; and a
    /// build that started before an install must not replace the installed (newer) snapshot,
    /// whose log prefix may be purged already.
    fn set_current(&self, stored: Stored) -> io::Result<()> {
        let mut current = self.shared.current.lock();
        if current
            .as_ref()
            .is_some_and(|c| c.meta.last_log_id > stored.meta.last_log_id)
        {
            return Ok(());
        }
        self.persist_snapshot(&stored)?;
        self.shared.log.set_snapshot_kept(stored.meta.last_log_id);
        *current = Some(stored);
        Ok(())
    }

    fn persist_snapshot(&self, stored: &Stored) -> io::Result<()> {
        let path = &self.shared.snapshot_path;
        let tmp = path.with_extension("tmp");
        let bytes = encode_stored(stored)?;
        let named = |e: io::Error| {
            io::Error::new(e.kind(), format!("snapshot file {}: {e}", path.display()))
        };
        let mut f = std::fs::File::create(&tmp).map_err(named)?;
        f.write_all(&bytes).map_err(named)?;
        f.sync_all().map_err(named)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(named)?;
        if let Some(parent) = path.parent() {
            std::fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(named)?;
        }
        Ok(())
    }
}

fn encode_stored(s: &Stored) -> io::Result<Vec<u8>> {
    let mut e = Enc::default();
    e.bytes(&serde_json::to_vec(&s.meta).map_err(io::Error::other)?);
    e.bytes(&s.body);
    Ok(codec::seal(e.0))
}

fn decode_stored(bytes: &[u8]) -> io::Result<Stored> {
    let mut d = Dec::new(codec::unseal(bytes, "snapshot file")?, "snapshot file");
    let meta = serde_json::from_slice(d.bytes()?)
        .map_err(|e| codec::invalid(format!("snapshot file: metadata: {e}")))?;
    let body = d.bytes()?.to_vec();
    d.end()?;
    Ok(Stored { meta, body })
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let mut st = self.shared.state.lock().await;
        let body = self
            .encode_body(&st)
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        // The snapshot's state must survive a crash as well as the log it replaces.
        self.record_applied(&mut st)
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        st.snapshots += 1;
        let last = st.applied.last;
        let snapshot_id = match last {
            Some(l) => format!(
                "{}-{}-{}-{}",
                l.leader_id.term, l.leader_id.node_id, l.index, st.snapshots
            ),
            None => format!("none-{}", st.snapshots),
        };
        let stored = Stored {
            meta: SnapshotMeta {
                last_log_id: last,
                last_membership: st.applied.membership.clone(),
                snapshot_id,
            },
            body,
        };
        drop(st);
        self.set_current(stored.clone())
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        self.shared
            .log
            .advance_durable_applied(last)
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.body)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let st = self.shared.state.lock().await;
        Ok((st.applied.last, st.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut st = self.shared.state.lock().await;
        let mut out = Vec::new();
        for entry in entries {
            let response = match &entry.payload {
                EntryPayload::Blank => Response::Nothing,
                EntryPayload::Normal(request) => {
                    self.apply_request(&mut st, request)
                        .map_err(|e| StorageError::IO {
                            source: StorageIOError::apply(entry.log_id, AnyError::new(&e)),
                        })?
                }
                EntryPayload::Membership(m) => {
                    st.applied.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    Response::Nothing
                }
            };
            st.applied.last = Some(entry.log_id);
            st.unsaved += 1;
            out.push(response);
        }
        if st.unsaved >= SAVE_EVERY {
            self.save_applied(&mut st)
                .await
                .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.shared.log.install_started();
        let installed = self.install(meta, snapshot).await;
        if let Err(e) = &installed {
            // Appends after the snapshot wait for its install (see `LogStore::append`).
            self.shared
                .log
                .install_failed(&io::Error::other(e.to_string()));
        }
        installed
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.shared.current.lock().clone().map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.body)),
        }))
    }
}

impl StateMachine {
    /// [`RaftStateMachine::install_snapshot`]: the body installed over the data, the applied
    /// record written and synced, the snapshot file written, then the log told.
    async fn install(
        &self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let body = snapshot.into_inner();
        let mut st = self.shared.state.lock().await;
        let checked = self
            .check_body(&body)
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        if checked.last != meta.last_log_id {
            return Err(snap_err(
                ErrorVerb::Write,
                codec::invalid(format!(
                    "snapshot {}: body is at {:?}, metadata says {:?}",
                    meta.snapshot_id, checked.last, meta.last_log_id
                )),
            ));
        }
        // The snapshot file first: an install stopped after it (a crash, an I/O error) is
        // finished from it at the next open. Written after the data and the applied record, a
        // stop in between left the data past the applied record (re-applying the log over it
        // would count the snapshot's blank entries as the log's), or the applied record past
        // the snapshot kept (openraft then purges past the snapshot at start).
        let stored = Stored {
            meta: meta.clone(),
            body,
        };
        self.set_current(stored.clone())
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let applied = self
            .install_body(&stored.body)
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        st.applied = Applied {
            membership: meta.last_membership.clone(),
            ..applied
        };
        self.record_applied(&mut st)
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let last = st.applied.last;
        drop(st);
        self.shared
            .log
            .advance_durable_applied(last)
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;
    use openraft::storage::RaftStateMachine;

    /// A raft entry at `index` (term 1) carrying `request`.
    fn entry(index: u64, request: Request) -> openraft::Entry<TypeConfig> {
        openraft::Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(request),
        }
    }

    /// A commit of `consumer`'s cursor of topic `t` to `offset`.
    fn commit(consumer: &str, offset: u64) -> Request {
        Request::Commit {
            topic: "t".into(),
            consumer: consumer.into(),
            offset,
        }
    }

    use super::*;

    /// Appends at raft indexes `indexes`: entry `i` of `data(i)` to topic `topic(i)`.
    fn appends(
        indexes: std::ops::RangeInclusive<u64>,
        topic: impl Fn(u64) -> String,
        data: impl Fn(u64) -> Vec<u8>,
    ) -> Vec<openraft::Entry<TypeConfig>> {
        indexes
            .map(|i| {
                entry(
                    i,
                    Request::Append {
                        topic: topic(i),
                        data: data(i),
                    },
                )
            })
            .collect()
    }

    /// The snapshot `sm` builds now.
    async fn snapshot_of(sm: &mut StateMachine) -> Snapshot<TypeConfig> {
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    }

    /// A leader that applied `entries` (in a directory of its own, gone afterwards): its
    /// responses, and the snapshot it then built.
    async fn leader_snapshot(
        entries: Vec<openraft::Entry<TypeConfig>>,
    ) -> (Vec<Response>, Snapshot<TypeConfig>) {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut leader) = crate::open_stores(dir.path()).unwrap();
        let out = leader.apply(entries).await.unwrap();
        let snapshot = snapshot_of(&mut leader).await;
        (out, snapshot)
    }

    fn stored(index: u64) -> Stored {
        Stored {
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
                last_membership: StoredMembership::default(),
                snapshot_id: format!("at-{index}"),
            },
            body: vec![index as u8; 64 << 10],
        }
    }

    /// A snapshot that fails a check changes nothing: one whose body has a byte too many after
    /// its last topic (sealed again, so only the decoding can tell) is refused before any of
    /// its topics is appended.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_that_fails_a_check_installs_nothing() {
        let follower_dir = tempfile::tempdir().unwrap();
        let two_topics = appends(
            1..=6,
            |i| ["a", "b"][i as usize % 2].into(),
            |i| vec![i as u8; 10],
        );
        let (_, snapshot) = leader_snapshot(two_topics).await;
        let body = snapshot.snapshot.into_inner();
        let mut longer = codec::unseal(&body, "test").unwrap().to_vec();
        longer.push(0);
        let longer = codec::seal(longer);

        // One whose applied record names a topic its body leaves out.
        let unsealed = codec::unseal(&body, "test").unwrap();
        let mut d = Dec::new(unsealed.get(4..).unwrap(), "test");
        let mut record: Applied = serde_json::from_slice(d.bytes().unwrap()).unwrap();
        record.ends.insert("c".into(), 1);
        let mut e = Enc::default();
        e.0.extend_from_slice(SNAPSHOT_MAGIC);
        e.bytes(&serde_json::to_vec(&record).unwrap());
        e.0.extend_from_slice(d.rest());
        let short = codec::seal(e.0);

        let (_log, mut follower) = crate::open_stores(follower_dir.path()).unwrap();
        for bad in [longer, short] {
            let refused = follower
                .install_snapshot(&snapshot.meta, Box::new(Cursor::new(bad)))
                .await;
            assert!(refused.is_err());
        }
        assert!(
            follower.data().topics().is_empty(),
            "a refused snapshot appended: {:?}",
            follower.data().topics()
        );
        // The snapshot as built installs.
        follower
            .install_snapshot(&snapshot.meta, Box::new(Cursor::new(body)))
            .await
            .unwrap();
        assert_eq!(follower.data().end_offset("a"), Some(3));
        assert_eq!(follower.data().end_offset("b"), Some(3));
    }

    /// A snapshot body with bytes changed and cut, sealed again (so only the decoding can
    /// tell): checking it answers, never panics, and refuses with `InvalidData`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checking_a_damaged_snapshot_body_answers() {
        let follower_dir = tempfile::tempdir().unwrap();
        let mut entries = appends(
            1..=12,
            |i| format!("t{}", i % 3),
            |i| vec![i as u8; i as usize],
        );
        entries.push(entry(13, commit("c", 2)));
        let (_, snapshot) = leader_snapshot(entries).await;
        let body = codec::unseal(&snapshot.snapshot.into_inner(), "test")
            .unwrap()
            .to_vec();
        let (_log, follower) = crate::open_stores(follower_dir.path()).unwrap();
        let strategy = (
            proptest::collection::vec((proptest::prelude::any::<usize>(), 1..=255u8), 1..6),
            proptest::prelude::any::<usize>(),
        );
        let mut runner =
            proptest::test_runner::TestRunner::new(proptest::test_runner::Config::with_cases(
                std::env::var("PROPTEST_CASES")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1000),
            ));
        runner
            .run(&strategy, |(changes, cut)| {
                let mut b = body.clone();
                for (at, x) in &changes {
                    let n = b.len();
                    b[at % n] ^= x;
                }
                b.truncate(cut % (b.len() + 1));
                if let Err(e) = follower.check_body(&codec::seal(b)) {
                    proptest::prop_assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{}", e);
                }
                Ok(())
            })
            .unwrap();
        assert!(follower.data().topics().is_empty(), "a check wrote");
    }

    /// A commit is refused below every consumer's cursor, whatever this node still holds there
    /// (another node may have released it): every node answers alike.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_below_every_cursor_is_refused_on_every_node_alike() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = crate::open_stores(dir.path()).unwrap();
        let mut entries: Vec<_> = (1..=10)
            .map(|i| {
                entry(
                    i,
                    Request::Append {
                        topic: "t".into(),
                        data: vec![i as u8],
                    },
                )
            })
            .collect();
        entries.push(entry(11, commit("b", 6)));
        entries.push(entry(12, commit("a", 8)));
        // Below both cursors (the entries are all still in this node's one block).
        entries.push(entry(13, commit("a", 3)));
        entries.push(entry(14, commit("new", 5)));
        // At the lowest cursor, and between the two.
        entries.push(entry(15, commit("a", 6)));
        entries.push(entry(16, commit("b", 7)));
        let out = sm.apply(entries).await.unwrap();
        assert_eq!(out[10..12], [Response::Committed, Response::Committed]);
        for refused in &out[12..14] {
            assert!(
                matches!(refused, Response::Refused { reason } if reason.contains("below every")),
                "{refused:?}"
            );
        }
        assert_eq!(out[14..], [Response::Committed, Response::Committed]);
        assert_eq!(sm.data().cursor_as("t", "a"), Some(6));
        assert_eq!(sm.data().cursor_as("t", "new"), None);
    }

    /// A node replaying after a power cut may hold a consumer's cursor record written after
    /// its applied record, and have released entries by it. A commit the replicated cursors
    /// accept is still accepted there (the cursor stands at the node's first entry kept), as
    /// on every other node.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_accepted_elsewhere_is_accepted_by_a_node_that_released_more() {
        let dir = tempfile::tempdir().unwrap();
        // Entries of 700 KB: one a block (1 MiB blocks).
        let appends = appends(1..=5, |_| "t".into(), |i| vec![i as u8; 700 << 10]);
        let open = || crate::open_stores(dir.path()).unwrap();
        {
            // What the power cut left: the appends, and `a`'s cursor record at 4 (written
            // after the applied record, which says nothing); `b`'s, before it, lost.
            let (_log, mut sm) = open();
            sm.apply(appends.clone()).await.unwrap();
            sm.data().commit_as("t", "a", 4).unwrap();
            assert!(sm.data().first_retained_offset("t").unwrap() > 1);
        }
        let (_log, mut sm) = open();
        let mut replay = appends;
        replay.push(entry(6, commit("b", 1)));
        replay.push(entry(7, commit("a", 4)));
        let out = sm.apply(replay).await.unwrap();
        assert_eq!(out[5..], [Response::Committed, Response::Committed]);
        let first = sm.data().first_retained_offset("t").unwrap();
        assert_eq!(sm.data().cursor_as("t", "b"), Some(first.max(1)));
    }

    /// An install stopped after its first step, the snapshot file (a crash, an I/O error
    /// installing the body), is finished from that file at the next open: the data holds the
    /// snapshot's entries and the applied record names it, so nothing re-applies the log over
    /// a half-installed body, and no purge at the start passes the snapshot kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_install_stopped_after_its_snapshot_file_is_finished_at_the_open() {
        let follower_dir = tempfile::tempdir().unwrap();
        let appends = appends(
            1..=6,
            |i| ["a", "b"][i as usize % 2].into(),
            |i| vec![i as u8; 10],
        );
        let (_, snapshot) = leader_snapshot(appends.clone()).await;
        let last = snapshot.meta.last_log_id;
        {
            let (_log, mut follower) = crate::open_stores(follower_dir.path()).unwrap();
            follower.apply(appends[..2].to_vec()).await.unwrap();
            snapshot_of(&mut follower).await;
            // The install's first step, then the node stops.
            follower
                .set_current(Stored {
                    meta: snapshot.meta.clone(),
                    body: snapshot.snapshot.into_inner(),
                })
                .unwrap();
        }
        for _ in 0..2 {
            let (_log, mut follower) = crate::open_stores(follower_dir.path()).unwrap();
            assert_eq!(follower.applied_state().await.unwrap().0, last);
            for (i, e) in appends.iter().enumerate() {
                let EntryPayload::Normal(Request::Append { topic, data }) = &e.payload else {
                    unreachable!()
                };
                let offset = (i / 2) as u64;
                assert_eq!(
                    follower
                        .data()
                        .read_at(topic, offset)
                        .unwrap()
                        .unwrap()
                        .data,
                    *data,
                    "{topic}@{offset}"
                );
            }
            assert_eq!(follower.data().end_offset("a"), Some(3));
        }
    }

    /// Installing a snapshot commits its consumers lowest cursor first: committed by name, the
    /// first (`a` at 4) released this node's entries below the next one's cursor (`b` at 2),
    /// which the leader keeps; the install then failed at every open that finished it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_install_whose_first_commit_releases_below_the_next_cursor_goes_through() {
        let follower_dir = tempfile::tempdir().unwrap();
        // Entries of 700 KB: one a block (1 MiB blocks).
        let mut entries = appends(1..=5, |_| "t".into(), |i| vec![i as u8; 700 << 10]);
        entries.push(entry(6, commit("b", 2)));
        entries.push(entry(7, commit("a", 4)));
        let (out, snapshot) = leader_snapshot(entries).await;
        assert_eq!(out[5..], [Response::Committed, Response::Committed]);
        let (_log, mut follower) = crate::open_stores(follower_dir.path()).unwrap();
        follower
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        // Every node alike: b still reads from 2.
        assert_eq!(follower.data().cursor_as("t", "a"), Some(4));
        assert_eq!(follower.data().cursor_as("t", "b"), Some(2));
        for offset in 2..5 {
            assert_eq!(
                follower.data().read_at("t", offset).unwrap().unwrap().data,
                vec![offset as u8 + 1; 700 << 10]
            );
        }
    }

    /// The blank entries an install writes below the snapshot's first entry are released:
    /// reads there and a new consumer answer on the follower as on the leader.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_install_releases_its_blank_entries_as_the_leader_released_them() {
        let (leader_dir, follower_dir) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // Entries of 1000 bytes over blocks that grow from 4 KiB.
        let entries = || appends(1..=40, |_| "t".into(), |i| vec![i as u8; 1000]);
        // Where a leader's first kept block starts once `a` stands at 15 (the layout is the
        // same for the same entries)...
        let first = {
            let dir = tempfile::tempdir().unwrap();
            let (_log, mut sm) = crate::open_stores(dir.path()).unwrap();
            let mut with_commit = entries();
            with_commit.push(entry(41, commit("a", 15)));
            sm.apply(with_commit).await.unwrap();
            sm.data().first_retained_offset("t").unwrap()
        };
        assert!(first > 0 && first <= 15, "{first}");
        // ... and the leader with `a` there: the follower's first block holds its blank
        // entries and the snapshot's first ones (its first blocks are small), so `a` releases
        // none of it there, and without a floor the blanks were read.
        let mut with_commit = entries();
        with_commit.push(entry(41, commit("a", first)));
        let (_leader_log, mut leader) = crate::open_stores(leader_dir.path()).unwrap();
        leader.apply(with_commit).await.unwrap();
        assert_eq!(leader.data().first_retained_offset("t"), Some(first));
        let snapshot = snapshot_of(&mut leader).await;
        let (_log, mut follower) = crate::open_stores(follower_dir.path()).unwrap();
        follower
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        // Where each node's first block ends is its own; what it answers below the snapshot's
        // first entry is not.
        for node in [&leader, &follower] {
            let data = node.data();
            for offset in [0, first - 1] {
                let below = data.read_at("t", offset).map(|e| e.map(|e| e.data));
                assert_eq!(
                    below.unwrap_err().kind(),
                    io::ErrorKind::NotFound,
                    "{offset}"
                );
            }
            let fresh = data.read_next_as("t", "new", false).unwrap().unwrap();
            assert_eq!(fresh.offset, first);
            assert_eq!(fresh.data, vec![(first + 1) as u8; 1000]);
        }
    }

    /// A power cut while a snapshot body is being installed (before the install's own flush)
    /// keeps the cursors it committed only with the entries they passed: the topic never ends
    /// past a gap that finishing the install would take for entries there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_power_cut_amid_an_install_leaves_no_gap_below_the_cursors() {
        let mut entries = appends(1..=6, |_| "t".into(), |i| vec![i as u8; 100]);
        entries.push(entry(7, commit("b", 2)));
        entries.push(entry(8, commit("a", 6)));
        let (_, snapshot) = leader_snapshot(entries).await;
        let body = snapshot.snapshot.into_inner();
        let on = |sim: &walrus::sim::SimStorage, dir: &str| {
            Arc::new(
                Walrus::builder()
                    .data_dir(dir)
                    .storage(Arc::new(sim.clone()) as Arc<dyn walrus::Storage>)
                    .fsync_schedule(walrus::FsyncSchedule::NoFsync)
                    .consistency(walrus::ReadConsistency::AtLeastOnce { persist_every: 1 })
                    .quiet(true)
                    .build()
                    .unwrap(),
            )
        };
        for seed in 0..64 {
            let sim = walrus::sim::SimStorage::new(seed);
            let snapshot_dir = tempfile::tempdir().unwrap();
            {
                let log = LogStore::open(on(&sim, "/raft")).unwrap();
                let sm = StateMachine::open(on(&sim, "/data"), &log, snapshot_dir.path().join("s"))
                    .unwrap();
                sm.install_body(&body).unwrap();
                sim.crash(walrus::sim::CrashMode::RandomSectors);
            }
            // What a consumer left here still has to read is here, whatever else was lost.
            let data = on(&sim, "/data");
            let end = data.end_offset("t").unwrap_or(0);
            let lowest = ["a", "b"]
                .iter()
                .filter_map(|c| data.cursor_as("t", c))
                .min()
                .unwrap_or(end);
            for offset in lowest..end {
                let got = data.read_at("t", offset).unwrap().map(|e| e.data);
                assert_eq!(
                    got,
                    Some(vec![offset as u8 + 1; 100]),
                    "seed {seed}: t@{offset} below the end {end}"
                );
            }
        }
    }

    /// Snapshots made current at once (a build on openraft's task and an install) never mix
    /// their files, and the newest stays current, on disk as in memory, whatever order they
    /// finish in.
    #[test]
    fn concurrent_snapshots_leave_the_newest_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, sm) = crate::open_stores(dir.path()).unwrap();
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let sm = &sm;
                s.spawn(move || {
                    for i in 0..40u64 {
                        // Interleaved indexes, and each thread also goes backwards.
                        let index = if i % 3 == 0 { 100 - i } else { 2 * i + t };
                        sm.set_current(stored(index)).unwrap();
                    }
                });
            }
        });
        let on_disk = decode_stored(&std::fs::read(dir.path().join("snapshot")).unwrap()).unwrap();
        let newest = Some(LogId::new(CommittedLeaderId::new(1, 1), 100));
        assert_eq!(on_disk.meta.last_log_id, newest);
        assert_eq!(on_disk.body, stored(100).body);
        let current = sm.shared.current.lock();
        assert_eq!(current.as_ref().unwrap().meta.last_log_id, newest);
    }
}
