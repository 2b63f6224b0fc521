//! Tiered storage, the engine's half: which topics tier, and the upload of their sealed blocks
//! to the remote tier ([`RemoteTier`]) as tiered-block objects ([`walrus_block::tier`]).
//!
//! A block is uploaded once it is sealed and durable: its data object first, then its index
//! object — the commit point; only then does the topic's catalogue (in memory) count it as
//! tiered. Both names derive from the block's offsets and both PUTs are create-once, so an
//! upload redone after a crash, or after an answer lost on the way back, finds what the first
//! attempt stored and checks it (its length and CRC32C) instead of storing it again under
//! another name. The catalogue is rebuilt from the remote listing (the index objects) on the
//! first pass after an open; an index object that does not decode or does not match its name is
//! an error, never skipped.
//!
//! Uploads run in [`Store::tier_pass`](crate::Store::tier_pass) — the engine's own tier thread,
//! never the syncer or an appending thread — so a slow or failing remote delays only the
//! uploads.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;

use parking_lot::Mutex;
use walrus_block::checksum::crc32c;
use walrus_block::tier::{TierIndex, topic_key};
use walrus_io::tier::{Metadata, PutOutcome, RemoteTier};

use crate::chain::Block;
use crate::options::TierOptions;

/// The consumer name of the tier mark's record in the marks file (where only watermarks live,
/// under `""`: no user consumer is ever stored there).
pub(crate) const TIER_MARK: &str = "tier";

/// Entries a read fetches from the tier at least (the rest of their index stride included):
/// a sequential reader's next reads are then served from the cache.
const READ_AHEAD_ENTRIES: u64 = 256;

/// Bytes of fetched entries the read cache keeps at most, across the store's topics.
const CACHE_BYTES: usize = 8 << 20;

/// Entries between two index points of an uploaded block: a read of one entry fetches at
/// most this many.
const INDEX_STRIDE: u32 = 32;

/// What one [`Store::tier_pass`](crate::Store::tier_pass) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TierPass {
    /// Blocks whose upload completed in this pass (their index object confirmed).
    pub uploaded: u64,
    /// Bytes of data objects those uploads stored (or found stored by an earlier attempt).
    pub uploaded_bytes: u64,
    /// Of those, blocks an earlier attempt had already stored in part or in full.
    pub resumed: u64,
    /// Tiered blocks deleted from the remote: wholly below their topic's floor (retention, or
    /// the topic deleted).
    pub expired: u64,
}

/// One topic's tiered blocks, as the remote holds them.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    /// Rebuilt from the remote listing since the open.
    pub(crate) loaded: bool,
    /// Uploaded blocks by first offset.
    pub(crate) blocks: BTreeMap<u64, Arc<TierIndex>>,
    /// First offsets of the blocks the listing found that no local block was yet compared
    /// with: an index whose offsets match a local block's is this block's upload only if its
    /// data does too (another store's objects can name the same offsets).
    pub(crate) found: std::collections::BTreeSet<u64>,
    /// Shorter uploads of blocks uploaded again whole (see [`TierState::reupload`]) whose
    /// objects are still to be deleted: a deletion failed, or the listing found both.
    pub(crate) superseded: Vec<Arc<TierIndex>>,
}

impl Catalog {
    /// Whether a tiered block holds any offset of `first..end`.
    fn overlaps(&self, first: u64, end: u64) -> bool {
        self.blocks
            .range(..end)
            .next_back()
            .is_some_and(|(_, i)| i.end_offset() > first)
    }

    /// The tiered blocks from the one that starts at or before `from` on, but those the listing
    /// found that were not yet compared with their local block: until then they may be another
    /// store's objects, and no local block may leave the disk on their word.
    fn confirmed_from(&self, from: u64) -> impl Iterator<Item = &Arc<TierIndex>> {
        let start = self
            .blocks
            .range(..=from)
            .next_back()
            .map_or(from, |(k, _)| *k);
        self.blocks
            .range(start..)
            .filter(|(k, _)| !self.found.contains(k))
            .map(|(_, i)| i)
    }

    /// Whether every offset of `first..end` is held by tiered blocks this store uploaded (see
    /// [`confirmed_from`](Self::confirmed_from)).
    pub(crate) fn covers(&self, first: u64, end: u64) -> bool {
        let mut at = first;
        for i in self.confirmed_from(first) {
            if at >= end {
                break;
            }
            if i.first_offset > at {
                return false;
            }
            at = at.max(i.end_offset());
        }
        at >= end
    }

    /// The tiered block holding `offset`.
    fn holding(&self, offset: u64) -> Option<Arc<TierIndex>> {
        self.blocks
            .range(..=offset)
            .next_back()
            .filter(|(_, i)| offset < i.end_offset())
            .map(|(_, i)| Arc::clone(i))
    }

    /// One past the hole-free run of tiered offsets from `from` (`from` itself if the tier
    /// does not hold it), in blocks this store uploaded (see
    /// [`confirmed_from`](Self::confirmed_from)): what the tier mark may say, `from` being the
    /// first offset still on local disk (below it, what is missing locally is in the tier or
    /// was consumed).
    pub(crate) fn covered_end_from(&self, from: u64) -> u64 {
        let mut end = from;
        for i in self.confirmed_from(from) {
            if i.first_offset > end {
                break;
            }
            end = end.max(i.end_offset());
        }
        end
    }

    /// The first offset tiered.
    pub(crate) fn first(&self) -> Option<u64> {
        self.blocks.keys().next().copied()
    }

    /// Entries tiered, and the offsets they span (first to end, gaps included).
    pub(crate) fn summary(&self) -> (u64, Option<std::ops::Range<u64>>) {
        let entries = self.blocks.values().map(|i| i.entries).sum();
        let span = self
            .blocks
            .values()
            .next()
            .zip(self.blocks.values().next_back())
            .map(|(a, b)| a.first_offset..b.end_offset());
        (entries, span)
    }
}

/// Consecutive entries fetched from one tiered block: `entries[i]` is offset `first + i`.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) first: u64,
    pub(crate) entries: Vec<Vec<u8>>,
    bytes: usize,
}

impl Run {
    /// One past the last offset held.
    pub(crate) fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// The payload of `offset`, if the run holds it.
    pub(crate) fn get(&self, offset: u64) -> Option<&[u8]> {
        let i = usize::try_from(offset.checked_sub(self.first)?).ok()?;
        self.entries.get(i).map(Vec::as_slice)
    }
}

/// The runs read last, newest at the back, within [`CACHE_BYTES`].
#[derive(Debug, Default)]
struct Cache {
    runs: std::collections::VecDeque<(Arc<str>, Arc<Run>)>,
    bytes: usize,
}

impl Cache {
    fn find(&mut self, topic: &str, offset: u64) -> Option<Arc<Run>> {
        let i = self
            .runs
            .iter()
            .position(|(t, r)| &**t == topic && r.first <= offset && offset < r.end())?;
        let hit = self.runs.remove(i)?;
        let run = Arc::clone(&hit.1);
        self.runs.push_back(hit);
        Some(run)
    }

    fn insert(&mut self, topic: &Arc<str>, run: &Arc<Run>) {
        self.bytes += run.bytes;
        self.runs.push_back((Arc::clone(topic), Arc::clone(run)));
        while self.bytes > CACHE_BYTES && self.runs.len() > 1 {
            if let Some((_, old)) = self.runs.pop_front() {
                self.bytes -= old.bytes;
            }
        }
    }
}

/// One tiered topic's state: its catalogue, and the lock that serialises its uploads.
#[derive(Debug, Default)]
pub(crate) struct TopicTier {
    /// Held for a whole upload pass of the topic (network calls included).
    uploading: Mutex<()>,
    /// Held while the catalogue loads: readers that find it unloaded meanwhile wait for that
    /// load instead of each listing and fetching the whole catalogue again.
    loading: Mutex<()>,
    /// Held only to read or change the catalogue, never across a call to the remote: stats
    /// and reads never wait for an upload.
    pub(crate) catalog: Mutex<Catalog>,
    /// The last failed load of the catalogue: reads within [`LOAD_BACKOFF`] of it fail at once
    /// with its error instead of each waiting for the remote again.
    failed_load: Mutex<Option<(std::time::Instant, io::ErrorKind, String)>>,
}

/// Whether the instance is closing: long remote work gives up between two calls.
pub(crate) type Stop<'a> = dyn Fn() -> bool + Sync + 'a;

/// Threads fetching index objects when a catalogue loads.
const LOAD_FETCHERS: usize = 8;

/// How long a failed catalogue load is answered from memory.
const LOAD_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// The remote tier of an open store: its options and every tiered topic's state.
#[derive(Debug)]
pub(crate) struct TierState {
    pub(crate) options: TierOptions,
    topics: Mutex<HashMap<Arc<str>, Arc<TopicTier>>>,
    /// Entries fetched for reads, shared by the topics.
    cache: Mutex<Cache>,
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl TierState {
    pub(crate) fn new(options: TierOptions) -> Self {
        Self {
            options,
            topics: Mutex::new(HashMap::new()),
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Loads the catalogue of `topic` (whose entries end at `end`) from the remote if this
    /// open has not yet; the first offset it holds. A read (`backoff`) within
    /// [`LOAD_BACKOFF`] of a failed load fails at once; a tier pass always tries. The load
    /// gives up, `Interrupted`, once `stop` says so (the instance is closing).
    pub(crate) fn ensure_loaded(
        &self,
        topic: &Arc<str>,
        end: u64,
        backoff: bool,
        stop: &Stop<'_>,
    ) -> io::Result<Option<u64>> {
        let state = self.topic(topic);
        // Two statements: the catalogue's guard must be gone before `loading` is waited for
        // (a loader takes the catalogue after its listing, holding `loading`).
        let unloaded = !state.catalog.lock().loaded;
        let _loading = unloaded.then(|| state.loading.lock());
        if !state.catalog.lock().loaded {
            if let Some((at, kind, why)) = &*state.failed_load.lock()
                && backoff
                && at.elapsed() < LOAD_BACKOFF
            {
                return Err(io::Error::new(
                    *kind,
                    format!("the remote tier's catalogue is unavailable: {why}"),
                ));
            }
            // The listing without a lock held; an upload that loaded meanwhile wins.
            let (blocks, superseded) = match self.list_catalog(topic, end, stop) {
                Ok(b) => b,
                Err(e) => {
                    *state.failed_load.lock() =
                        Some((std::time::Instant::now(), e.kind(), e.to_string()));
                    return Err(e);
                }
            };
            let mut catalog = state.catalog.lock();
            if !catalog.loaded {
                catalog.found = blocks.keys().copied().collect();
                catalog.blocks = blocks;
                catalog.superseded = superseded;
                catalog.loaded = true;
            }
        }
        Ok(state.catalog.lock().first())
    }

    /// Entries of `topic` from `offset` on, as the tier holds them: at least the one at
    /// `offset` and up to `want` (more, to the end of an index stride), from the cache or one
    /// ranged GET. `None` if no tiered block holds `offset`.
    pub(crate) fn read(
        &self,
        topic: &Arc<str>,
        end: u64,
        offset: u64,
        want: u64,
    ) -> io::Result<Option<Arc<Run>>> {
        if let Some(run) = self.cache.lock().find(topic, offset) {
            return Ok(Some(run));
        }
        self.ensure_loaded(topic, end, true, &|| false)?;
        let Some(index) = self.topic(topic).catalog.lock().holding(offset) else {
            return Ok(None);
        };
        let want = want.max(READ_AHEAD_ENTRIES);
        let Some(range) = index.byte_range(offset..offset.saturating_add(want)) else {
            return Ok(None);
        };
        let stride = u64::from(index.stride.max(1));
        let first = index.first_offset + (offset - index.first_offset) / stride * stride;
        let (data_key, _) = index.object_names(&self.options.dir);
        let damaged = |what: String| {
            invalid(format!(
                "tier data object {data_key} bytes {range:?} ({}): {what}",
                self.remote().describe()
            ))
        };
        // Its index says the tier holds these entries: a data object gone or shorter than the
        // index says is lost data (`InvalidData`), not entries released (`NotFound`).
        let bytes = match self.remote().get_range(&data_key, range.clone()) {
            Ok(bytes) => bytes,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof
                ) =>
            {
                return Err(damaged(format!(
                    "missing or shorter than its index says ({} bytes): {e}",
                    index.data_len
                )));
            }
            Err(e) => return Err(e),
        };
        let mut entries = Vec::new();
        let mut size = 0;
        // A data object's frames are not keyed (see `walrus_block::tier`).
        let mut frames = walrus_block::FrameDecoder::new(&bytes, 0);
        loop {
            match frames.next_frame() {
                walrus_block::Frame::Entry(e) => {
                    let expected = first + entries.len() as u64;
                    if e.offset != expected {
                        return Err(damaged(format!(
                            "offset {} where {expected} should be",
                            e.offset
                        )));
                    }
                    size += e.payload.len();
                    entries.push(e.payload.to_vec());
                }
                walrus_block::Frame::End { at } if at == bytes.len() => break,
                other => return Err(damaged(format!("{other:?}"))),
            }
        }
        let run = Arc::new(Run {
            first,
            entries,
            bytes: size,
        });
        if run.get(offset).is_none() {
            return Err(damaged(format!("offset {offset} is not in it")));
        }
        self.cache.lock().insert(topic, &run);
        Ok(Some(run))
    }

    /// Where the first tiered block of `topic` after `offset` starts, if any: a read at an
    /// offset neither the local disk nor the tier holds goes on there (or at the local chain,
    /// if that holds an earlier one).
    pub(crate) fn next_start(
        &self,
        topic: &Arc<str>,
        end: u64,
        offset: u64,
    ) -> io::Result<Option<u64>> {
        self.ensure_loaded(topic, end, true, &|| false)?;
        let state = self.topic(topic);
        let catalog = state.catalog.lock();
        Ok(catalog
            .blocks
            .range(offset.saturating_add(1)..)
            .next()
            .map(|(&first, _)| first))
    }

    /// The state of tiered topic `topic` (an empty catalogue, not loaded, at first).
    pub(crate) fn topic(&self, topic: &Arc<str>) -> Arc<TopicTier> {
        Arc::clone(self.topics.lock().entry(Arc::clone(topic)).or_default())
    }

    fn remote(&self) -> &dyn RemoteTier {
        &*self.options.remote
    }

    /// The catalogue of `topic` as the remote's index objects say (one listing, one GET per
    /// index object).
    /// The tiered blocks of `topic` the remote lists, by first offset, and the shorter uploads
    /// of blocks it also holds whole.
    #[allow(clippy::type_complexity)]
    fn list_catalog(
        &self,
        topic: &str,
        end: u64,
        stop: &Stop<'_>,
    ) -> io::Result<(BTreeMap<u64, Arc<TierIndex>>, Vec<Arc<TierIndex>>)> {
        let dir = format!("{}/{}", self.options.dir, topic_key(topic));
        // Data objects are skipped: one without its index is an upload a crash interrupted,
        // which the next upload of its block finds and checks.
        let listed: Vec<_> = self
            .remote()
            .list(&dir)?
            .into_iter()
            .filter(|l| l.key.ends_with(".idx"))
            .collect();
        // The index objects fetched side by side: a load costs a few round trips, not one per
        // tiered block.
        // Each fetcher stops at the first failure, its own or another's, or when the instance
        // closes: a load that cannot succeed costs one failed call, not one per index object.
        let chunk = listed.len().div_ceil(LOAD_FETCHERS).max(1);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let failed = &failed;
        let fetched: Vec<io::Result<TierIndex>> = std::thread::scope(|s| {
            let workers: Vec<_> = listed
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        let mut out = Vec::with_capacity(part.len());
                        for l in part {
                            if failed.load(std::sync::atomic::Ordering::Relaxed) {
                                break;
                            }
                            if stop() {
                                out.push(Err(io::Error::new(
                                    io::ErrorKind::Interrupted,
                                    format!(
                                        "loading the tier catalogue of topic {topic:?}: the \
                                         instance is closing"
                                    ),
                                )));
                                break;
                            }
                            let index = self.fetch_index(topic, &l.key, l.size, end);
                            let bad = index.is_err();
                            out.push(index);
                            if bad {
                                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                                break;
                            }
                        }
                        out
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| {
                    w.join().unwrap_or_else(|_| {
                        vec![Err(io::Error::other(format!(
                            "loading the tier catalogue of topic {topic:?}: a fetcher panicked"
                        )))]
                    })
                })
                .collect()
        });
        let mut blocks: BTreeMap<u64, Arc<TierIndex>> = BTreeMap::new();
        let mut superseded = Vec::new();
        for index in fetched {
            let index = Arc::new(index?);
            // Two uploads of one block (see `reupload`, interrupted before it deleted the
            // shorter): the longer holds all the other does, which goes.
            match blocks.get(&index.first_offset) {
                Some(held) if held.end_offset() >= index.end_offset() => superseded.push(index),
                _ => {
                    if let Some(shorter) = blocks.insert(index.first_offset, index) {
                        superseded.push(shorter);
                    }
                }
            }
        }
        Ok((blocks, superseded))
    }

    /// One index object of `topic`, validated against its name and the topic's `end`.
    fn fetch_index(&self, topic: &str, key: &str, size: u64, end: u64) -> io::Result<TierIndex> {
        if size > walrus_block::MAX_TIER_INDEX_LEN {
            return Err(invalid(format!(
                "tier index object {key} ({}) is {size} bytes long, past the {} an index \
                 reaches: not fetched",
                self.remote().describe(),
                walrus_block::MAX_TIER_INDEX_LEN
            )));
        }
        let bytes = self.remote().get_range(key, 0..size)?;
        let index = TierIndex::decode(&bytes).map_err(|e| {
            invalid(format!(
                "tier index object {key} ({}): {e}",
                self.remote().describe()
            ))
        })?;
        let (_, expected) = index.object_names(&self.options.dir);
        if index.topic != topic || expected != key {
            return Err(invalid(format!(
                "tier index object {key} holds topic {:?} offsets {}..{}: not what its name says",
                index.topic,
                index.first_offset,
                index.end_offset()
            )));
        }
        if index.end_offset() > end {
            return Err(invalid(format!(
                "tier index object {key} holds offsets up to {}, past the end {end} of topic \
                 {topic:?} here: is the directory {:?} shared with another store?",
                index.end_offset(),
                self.options.dir
            )));
        }
        Ok(index)
    }

    /// Uploads every sealed block of `topic` in `chain` (oldest first) whose entries are all
    /// below `durable` and not yet tiered. Stops at the first failure (a later pass retries).
    pub(crate) fn upload(
        &self,
        topic: &Arc<str>,
        chain: &[Arc<Block>],
        (durable, end): (u64, u64),
        stop: &Stop<'_>,
        pass: &mut TierPass,
    ) -> io::Result<()> {
        let state = self.topic(topic);
        let _uploading = state.uploading.lock();
        self.ensure_loaded(topic, end, false, stop)?;
        self.delete_superseded(topic, &state);
        for block in chain {
            let (first, end) = (block.first_offset, block.end_offset());
            if !block.is_sealed() || end > durable || stop() {
                break;
            }
            if end == first {
                continue;
            }
            let tiered = {
                let catalog = state.catalog.lock();
                match catalog.blocks.get(&first) {
                    Some(i) if i.end_offset() == end => {
                        Some((Arc::clone(i), catalog.found.contains(&first)))
                    }
                    _ => None,
                }
            };
            if let Some((index, found)) = tiered {
                if found {
                    self.check_is_upload_of(topic, block, &index)?;
                    state.catalog.lock().found.remove(&first);
                }
                continue;
            }
            let shorter = state
                .catalog
                .lock()
                .blocks
                .get(&first)
                .filter(|i| i.end_offset() < end)
                .cloned();
            if let Some(old) = shorter
                && self.reupload(topic, block, &old, pass)?
            {
                continue;
            }
            if state.catalog.lock().overlaps(first, end) {
                // Not this block's objects: another store's, under the same directory.
                return Err(invalid(format!(
                    "the remote tier ({}) holds other blocks for offsets {first}..{end} of topic \
                     {topic:?}: is its directory {:?} shared with another store?",
                    self.remote().describe(),
                    self.options.dir
                )));
            }
            let index = self.upload_block(topic, block, pass)?;
            state.catalog.lock().blocks.insert(first, Arc::new(index));
        }
        Ok(())
    }

    /// Deletes the tiered blocks of `topic` wholly below `floor` (released for every reader by
    /// retention or deletion): the data object first, then the index object, then the
    /// catalogue entry, so that an expiry a failure or a crash interrupted leaves the index,
    /// which the next pass finds (from the catalogue, or the listing after an open) and
    /// finishes; deletes are idempotent. An index left without its data lies below the floor
    /// (persisted before), where no read goes.
    pub(crate) fn expire(
        &self,
        topic: &Arc<str>,
        (floor, end): (u64, u64),
        stop: &Stop<'_>,
        pass: &mut TierPass,
    ) -> io::Result<()> {
        let state = self.topic(topic);
        let _uploading = state.uploading.lock();
        self.ensure_loaded(topic, end, false, stop)?;
        self.delete_superseded(topic, &state);
        let doomed: Vec<Arc<TierIndex>> = state
            .catalog
            .lock()
            .blocks
            .values()
            .take_while(|i| i.end_offset() <= floor)
            .cloned()
            .collect();
        for index in doomed {
            if stop() {
                // The instance is closing: the next pass (or the next open's) finishes.
                break;
            }
            let (data_key, index_key) = index.object_names(&self.options.dir);
            self.remote().delete(&data_key)?;
            self.remote().delete(&index_key)?;
            state.catalog.lock().blocks.remove(&index.first_offset);
            pass.expired += 1;
            tracing::debug!(topic = %topic, key = %data_key, "expired a tiered block");
        }
        Ok(())
    }

    /// Uploads `block` again if `old`, a tiered block with its first offset and fewer entries,
    /// is an earlier upload of it: the block was sealed in memory when the entry after it went
    /// to a new block, uploaded, and then a power cut took that new block, so the reopen made
    /// this one the live block again and it grew. (Without this, the tiered block would overlap
    /// every later upload of it, and the topic's tiering would stop.) The longer upload
    /// replaces the shorter in the catalogue, then the shorter's objects are deleted. Whether
    /// `old` was such an upload: its data is a prefix of the block's.
    fn reupload(
        &self,
        topic: &Arc<str>,
        block: &Block,
        old: &TierIndex,
        pass: &mut TierPass,
    ) -> io::Result<bool> {
        let data = Self::block_data(block)?;
        let prefix = usize::try_from(old.data_len)
            .ok()
            .and_then(|len| data.get(..len));
        if prefix.is_none_or(|p| crc32c(p) != old.data_crc) {
            return Ok(false);
        }
        let index = self.upload_block(topic, block, pass)?;
        let state = self.topic(topic);
        {
            let mut catalog = state.catalog.lock();
            if let Some(old) = catalog.blocks.insert(block.first_offset, Arc::new(index)) {
                catalog.superseded.push(old);
            }
            catalog.found.remove(&block.first_offset);
        }
        tracing::debug!(topic = %topic, first = block.first_offset, from = old.end_offset(),
            to = block.end_offset(), "tiered a block again after it grew");
        // A reader may still hold the shorter index for a moment: its next read finds the
        // longer. A failure here leaves the shorter for the next pass.
        self.delete_superseded(topic, &state);
        Ok(true)
    }

    /// Deletes the objects of the shorter uploads a whole upload replaced, with the topic's
    /// `uploading` lock held: the data object first, as an expiry does, so that an index a
    /// crash left without its data is listed again beside the longer one, and goes then. A
    /// failure is logged and left for the next pass: it must not hold up the uploads (and so
    /// the local disk) behind it.
    fn delete_superseded(&self, topic: &str, state: &TopicTier) {
        loop {
            let Some(old) = state.catalog.lock().superseded.last().cloned() else {
                return;
            };
            let (data_key, index_key) = old.object_names(&self.options.dir);
            let deleted = self
                .remote()
                .delete(&data_key)
                .and_then(|()| self.remote().delete(&index_key));
            if let Err(e) = deleted {
                tracing::warn!(topic, key = %index_key, error = %e,
                    "could not delete a tiered block's shorter upload; the next pass retries");
                return;
            }
            state.catalog.lock().superseded.pop();
        }
    }

    /// The data of `block`'s frames, as an upload sends it: re-keyed to 0 (see
    /// `walrus_block::tier`; the same bytes for every upload of the block, so an earlier upload
    /// compares equal).
    fn block_data(block: &Block) -> io::Result<Vec<u8>> {
        let (from, to) = (block.data_start(), block.data_end());
        let file = block.file();
        let len = usize::try_from(to - from).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "block at byte {from} of {}: too long",
                    file.path().display()
                ),
            )
        })?;
        let mut data = vec![0; len];
        file.read_exact_at(&mut data, from).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "reading the block at byte {from} of {} for upload: {e}",
                    file.path().display()
                ),
            )
        })?;
        if block.frame_key() != 0 {
            walrus_block::rekey_frames(&mut data, block.frame_key(), 0).map_err(|e| {
                invalid(format!(
                    "the block at byte {from} of {} does not validate for upload: {e}",
                    file.path().display()
                ))
            })?;
        }
        Ok(data)
    }

    /// Whether `index`, found in the remote listing with `block`'s offsets, is the upload of
    /// `block`: the same length and CRC32C of its data. Another store under the same directory
    /// may have uploaded a block of the same offsets (its own entries): counting that as this
    /// block's upload would let this block be released without ever being uploaded.
    fn check_is_upload_of(&self, topic: &str, block: &Block, index: &TierIndex) -> io::Result<()> {
        let data = Self::block_data(block)?;
        if data.len() as u64 == index.data_len && crc32c(&data) == index.data_crc {
            return Ok(());
        }
        Err(invalid(format!(
            "the remote tier ({}) holds offsets {}..{} of topic {topic:?} with other bytes than \
             the local block at byte {} of {}: is its directory {:?} shared with another store?",
            self.remote().describe(),
            index.first_offset,
            index.end_offset(),
            block.data_start(),
            block.file().path().display(),
            self.options.dir
        )))
    }

    /// Stores one block's data and index objects (or checks what an earlier attempt stored).
    fn upload_block(
        &self,
        topic: &str,
        block: &Block,
        pass: &mut TierPass,
    ) -> io::Result<TierIndex> {
        let data = Self::block_data(block)?;
        let from = block.data_start();
        let file = block.file();
        let mut index = TierIndex::build(
            topic,
            block.segment,
            block.first_offset,
            &data,
            INDEX_STRIDE,
        )
        .map_err(|e| {
            invalid(format!(
                "topic {topic:?}: the block at byte {from} of {} does not validate for upload: {e}",
                file.path().display()
            ))
        })?;
        index.sealed_ms = block.sealed_at().unwrap_or(0);
        let (data_key, index_key) = index.object_names(&self.options.dir);
        let meta = Metadata::from([
            ("walrus-topic".to_owned(), topic_key(topic)),
            (
                "walrus-offsets".to_owned(),
                format!("{}-{}", index.first_offset, index.end_offset()),
            ),
            ("walrus-segment".to_owned(), block.segment.to_string()),
        ]);
        let mut resumed = false;
        if self.remote().put_new(&data_key, &data, &meta)? == PutOutcome::Exists {
            self.check_data(&data_key, &index)?;
            resumed = true;
        }
        let encoded = index.encode().map_err(io::Error::from)?;
        if self.remote().put_new(&index_key, &encoded, &meta)? == PutOutcome::Exists {
            let size = self.remote().head(&index_key)?.map(|i| i.size);
            let same = size == Some(encoded.len() as u64)
                && self
                    .remote()
                    .get_range(&index_key, 0..encoded.len() as u64)?
                    == encoded;
            if !same {
                return Err(invalid(format!(
                    "tier index object {index_key} exists and differs from the block it names"
                )));
            }
            resumed = true;
        }
        pass.uploaded += 1;
        pass.uploaded_bytes += index.data_len;
        pass.resumed += u64::from(resumed);
        tracing::debug!(topic, key = %data_key, bytes = index.data_len, resumed, "tiered a block");
        Ok(index)
    }

    /// Checks that the data object an earlier attempt stored under `key` is the block's.
    fn check_data(&self, key: &str, index: &TierIndex) -> io::Result<()> {
        let size = self.remote().head(key)?.map(|i| i.size);
        let same = size == Some(index.data_len)
            && crc32c(&self.remote().get_range(key, 0..index.data_len)?) == index.data_crc;
        if same {
            Ok(())
        } else {
            Err(invalid(format!(
                "tier data object {key} exists and differs from the block it names \
                 ({size:?} bytes, want {})",
                index.data_len
            )))
        }
    }
}
