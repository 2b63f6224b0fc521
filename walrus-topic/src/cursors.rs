//! The cursor file: one pair of 512-byte slots per record — a topic's default consumer, each
//! named consumer, each topic's floor — A/B-alternated so that a torn write can never yield a
//! wrong cursor (format in `docs/FORMAT.md`, "Cursor record").
//!
//! Persisting a cursor is one positional write of one slot: O(1) in the number of records.

use crate::durability::FileSync;
use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use walrus_block::{CURSOR_SLOT_LEN, CursorKind, CursorRecord, FormatError};
use walrus_io::{SegmentFile, Storage};

use crate::error::{Poisoned, data_error};

/// `record` encoded into a whole slot (zeros after it).
fn encode_slot(record: &CursorRecord) -> io::Result<[u8; CURSOR_SLOT_LEN as usize]> {
    let bytes = record.encode().map_err(io::Error::from)?;
    let mut slot = [0u8; CURSOR_SLOT_LEN as usize];
    slot.get_mut(..bytes.len())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "cursor record longer than its slot",
            )
        })?
        .copy_from_slice(&bytes);
    Ok(slot)
}

/// File name of the cursor file inside a data directory.
pub(crate) const CURSOR_FILE: &str = "cursors.wcur";
/// File name of the durable-watermark file: same record format, `offset` = the topic's durable
/// watermark.
pub(crate) const MARKS_FILE: &str = "durable.wcur";

/// The longest cursor or watermark file an open reads: a million records (a slot pair each).
const MAX_CURSOR_FILE_LEN: u64 = (1 << 20) * 2 * CURSOR_SLOT_LEN;

/// Which record of the file: a consumer of a topic (the default one has the empty name), or
/// the topic's floor.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RecordKey {
    pub(crate) topic: String,
    pub(crate) kind: CursorKind,
    pub(crate) consumer: String,
}

impl RecordKey {
    /// The record of `consumer` of `topic` (`""`: the default consumer).
    pub(crate) fn consumer(topic: &str, consumer: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            kind: CursorKind::Consumer,
            consumer: consumer.to_owned(),
        }
    }

    /// The floor record of `topic`.
    pub(crate) fn floor(topic: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            kind: CursorKind::Floor,
            consumer: String::new(),
        }
    }
}

/// A cursor as loaded from the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LoadedCursor {
    pub(crate) pair: u64,
    pub(crate) generation: u64,
    pub(crate) offset: u64,
    /// The consumer was removed (for a floor: the topic deleted).
    pub(crate) removed: bool,
}

/// A slot pair of a cursor file in which no slot holds a valid record, but some slot holds
/// bytes: the record it held (if any) is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DamagedPair {
    /// Byte position of the pair in its file.
    pub(crate) position: u64,
    /// Both slots hold bytes. A crash tears at most the one slot being written, and leaves
    /// the other as it was, so this is damage to a record once written whole; one damaged
    /// slot beside a never-written one may be the first write of a record, torn by a crash
    /// before any sync.
    pub(crate) both: bool,
    /// The damaged slot's position, when the pair's other slot holds a valid record, which
    /// is used: only the record's newest generation may be lost (a crash tears no slot: a
    /// slot is one sector, written whole or not at all). `None`: the record is lost.
    pub(crate) slot: Option<u64>,
}

/// What [`CursorFile::load`] found: every record, and the pairs whose record was lost.
pub(crate) type Loaded = (HashMap<RecordKey, LoadedCursor>, Vec<DamagedPair>);

/// A cursor file as found by recovery, before anything is written: created only once the
/// open is sure to succeed.
#[derive(Debug)]
pub(crate) struct CursorFile {
    file: Option<Arc<dyn SegmentFile>>,
    pairs: HashMap<RecordKey, u64>,
    /// The generation last written to each pair, by pair.
    last: Vec<u64>,
    next_pair: u64,
    /// Pairs no record owns: all zero as loaded, or holding a record [`reclaim`](Self::reclaim)
    /// dropped; given to new records once the open's sync made them zero on disk.
    free: Vec<u64>,
    /// The records `reclaim` dropped, `(pair, generation)`: zeroed when the file is opened
    /// for writing.
    reclaimed: Vec<(u64, u64)>,
}

impl CursorFile {
    /// Loads every record of the cursor file `name` in `dir`, if it exists. Writes nothing.
    pub(crate) fn load(
        storage: &dyn Storage,
        dir: &Path,
        name: &str,
        read_only: bool,
    ) -> io::Result<(Self, Loaded)> {
        let path = dir.join(name);
        let opened = if read_only {
            storage.open_read(&path)
        } else {
            storage.open(&path)
        };
        let file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let empty = Self {
                    file: None,
                    pairs: HashMap::new(),
                    last: Vec::new(),
                    next_pair: 0,
                    free: Vec::new(),
                    reclaimed: Vec::new(),
                };
                return Ok((empty, (HashMap::new(), Vec::new())));
            }
            Err(e) => return Err(e),
        };
        let len = file.len()?;
        // Read whole: bounded first, so that a damaged length fails the open with an error
        // rather than the process with an allocation it cannot make.
        if len > MAX_CURSOR_FILE_LEN {
            return Err(data_error(
                &path,
                &format!("{len} bytes long, past the {MAX_CURSOR_FILE_LEN} a cursor file reaches"),
            ));
        }
        let mut bytes = vec![
            0u8;
            usize::try_from(len)
                .map_err(|_| data_error(&path, "cursor file too large"))?
        ];
        file.read_exact_at(&mut bytes, 0)?;
        let (loaded, damaged) = CursorStore::load(&path, &bytes)?;
        // Past damaged pairs too: a new record must not overwrite what recovery reported (a
        // lost watermark's pair is kept, as the sign that a watermark is unknown).
        let next_pair = loaded
            .values()
            .map(|c| c.pair + 1)
            .chain(
                damaged
                    .iter()
                    .map(|d| d.position / (2 * CURSOR_SLOT_LEN) + 1),
            )
            .max()
            .unwrap_or(0);
        let pairs = loaded.iter().map(|(t, c)| (t.clone(), c.pair)).collect();
        // Pairs below the last one used that hold nothing: a record reclaimed by an earlier
        // open and not given out again.
        let used: std::collections::HashSet<u64> = loaded
            .values()
            .map(|c| c.pair)
            .chain(damaged.iter().map(|d| d.position / (2 * CURSOR_SLOT_LEN)))
            .collect();
        let free = (0..next_pair).filter(|p| !used.contains(p)).collect();
        let mut last = vec![0; usize::try_from(next_pair).unwrap_or(0)];
        for c in loaded.values() {
            if let Some(g) = usize::try_from(c.pair).ok().and_then(|p| last.get_mut(p)) {
                *g = c.generation;
            }
        }
        Ok((
            Self {
                file: Some(file),
                pairs,
                last,
                next_pair,
                free,
                reclaimed: Vec::new(),
            },
            (loaded, damaged),
        ))
    }

    /// Drops from `loaded` (and from this file's records) the consumer records nothing needs:
    /// those of removed consumers, and those of a deleted topic's consumers (stale: a
    /// re-created topic would mark them removed). Their pairs are zeroed by
    /// [`create_if_missing`](Self::create_if_missing) and, once the open's sync made the
    /// zeros durable, handed to new records: without this the file grew by a pair for every
    /// consumer name ever used, and a store that had used a million no longer opened.
    ///
    /// A pair is only reused after its zeros are durable: a crash must never find one slot
    /// of the old record beside one of the new (a pair naming two records is refused).
    /// Floors stay (a deleted topic's floor keeps its offsets from being reused), and so do
    /// the records of a topic's live consumers.
    pub(crate) fn reclaim(&mut self, loaded: &mut HashMap<RecordKey, LoadedCursor>) {
        let deleted: std::collections::HashSet<String> = loaded
            .iter()
            .filter(|(k, c)| k.kind == CursorKind::Floor && c.removed)
            .map(|(k, _)| k.topic.clone())
            .collect();
        loaded.retain(|k, c| {
            let unneeded =
                k.kind == CursorKind::Consumer && (c.removed || deleted.contains(&k.topic));
            if unneeded {
                self.pairs.remove(k);
                if let Some(g) = usize::try_from(c.pair)
                    .ok()
                    .and_then(|p| self.last.get_mut(p))
                {
                    *g = 0;
                }
                self.free.push(c.pair);
                self.reclaimed.push((c.pair, c.generation));
            }
            !unneeded
        });
    }

    /// The store on this file, creating the file (and making its name durable) if it did not
    /// exist.
    pub(crate) fn create_if_missing(
        self,
        storage: &dyn Storage,
        dir: &Path,
        name: &str,
    ) -> io::Result<CursorStore> {
        let file = match self.file {
            Some(f) => f,
            None => {
                let f = storage.create(&dir.join(name), 0)?;
                storage.sync_dir(dir)?;
                f
            }
        };
        let store = CursorStore::on(
            Some(file),
            Pairs::loaded(self.pairs, self.next_pair, self.last),
        );
        // The slot of the record's older generation first, synced, then the record's own: a
        // crash in between leaves the record (removed, or stale) as it was, never the
        // generation before it, which may say the consumer is live.
        for &(pair, generation) in &self.reclaimed {
            store.clear_slot(CursorRecord::slot_position(pair, generation + 1))?;
        }
        if !self.reclaimed.is_empty() {
            store.sync()?;
        }
        for &(pair, generation) in &self.reclaimed {
            store.clear_slot(CursorRecord::slot_position(pair, generation))?;
        }
        // Given out once `sync_loaded` made the zeros durable; the lowest first (popped from
        // the end): new records fill the file's front.
        let mut free = self.free;
        free.sort_unstable_by(|a, b| b.cmp(a));
        store.pairs.lock().zeroed = free;
        Ok(store)
    }

    /// The store on this file for a read-only open: every write is refused.
    pub(crate) fn without_writes(self) -> CursorStore {
        CursorStore::on(None, Pairs::loaded(self.pairs, self.next_pair, self.last))
    }
}

/// The slot pairs of a cursor file.
#[derive(Debug)]
struct Pairs {
    /// The pair of each record.
    by_record: HashMap<RecordKey, u64>,
    /// The first pair past every pair ever used.
    next: u64,
    /// The generation last written to each pair, by pair.
    last: Vec<u64>,
    /// Zeroed pairs no record owns, durably so: given to new records first (lowest first:
    /// popped from the end).
    free: Vec<u64>,
    /// Pairs being zeroed at the open: free once `sync_loaded` made the zeros durable.
    zeroed: Vec<u64>,
}

impl Pairs {
    /// The pairs as an open loaded them: none free yet.
    fn loaded(by_record: HashMap<RecordKey, u64>, next: u64, last: Vec<u64>) -> Self {
        Self {
            by_record,
            next,
            last,
            free: Vec::new(),
            zeroed: Vec::new(),
        }
    }
}

/// The open cursor file of one store.
#[derive(Debug)]
pub(crate) struct CursorStore {
    /// `None` in a read-only store.
    file: Option<Arc<dyn SegmentFile>>,
    /// Slot pairs handed out so far, and those free.
    pairs: Mutex<Pairs>,
    /// Which cursor writes a completed sync covers.
    sync: FileSync,
}

impl CursorStore {
    /// The store on `file` (`None`: read-only) with `pairs`.
    fn on(file: Option<Arc<dyn SegmentFile>>, pairs: Pairs) -> Self {
        Self {
            file,
            pairs: Mutex::new(pairs),
            sync: FileSync::default(),
        }
    }

    fn load(path: &Path, bytes: &[u8]) -> io::Result<Loaded> {
        let mut out: HashMap<RecordKey, LoadedCursor> = HashMap::new();
        let mut damaged = Vec::new();
        let pair_len = 2 * CURSOR_SLOT_LEN as usize;
        for (pair, chunk) in bytes.chunks(pair_len).enumerate() {
            let pair = pair as u64;
            let (a, b) = chunk.split_at(chunk.len().min(CURSOR_SLOT_LEN as usize));
            // `Err(())`: a slot with bytes that are no record.
            let decode = |slot: &[u8]| match CursorRecord::decode(slot) {
                Ok(r) => Ok(Ok(r)),
                // A torn or damaged slot is what the A/B scheme exists for: the other slot holds
                // the previous generation. Only both slots damaged loses the cursor.
                Err(FormatError::Torn { .. } | FormatError::Corrupt { .. }) => Ok(Err(())),
                Err(e) => Err(data_error(path, &e.to_string())),
            };
            let key = |r: &CursorRecord| RecordKey {
                topic: r.topic.clone(),
                kind: r.kind,
                consumer: r.consumer.clone(),
            };
            let (a, b) = (decode(a)?, decode(b)?);
            let position = pair * 2 * CURSOR_SLOT_LEN;
            match (&a, &b) {
                (Err(()), Err(())) | (Err(()), Ok(None)) | (Ok(None), Err(())) => {
                    damaged.push(DamagedPair {
                        position,
                        both: a.is_err() && b.is_err(),
                        slot: None,
                    });
                }
                (Err(()), Ok(Some(_))) | (Ok(Some(_)), Err(())) => {
                    damaged.push(DamagedPair {
                        position,
                        both: false,
                        slot: Some(position + if a.is_err() { 0 } else { CURSOR_SLOT_LEN }),
                    });
                }
                _ => {}
            }
            let best = match (a.unwrap_or(None), b.unwrap_or(None)) {
                (Some(x), Some(y)) if key(&x) != key(&y) => {
                    return Err(data_error(
                        path,
                        &format!(
                            "cursor slot pair {pair} names two records, {:?} and {:?}",
                            key(&x),
                            key(&y)
                        ),
                    ));
                }
                (Some(x), Some(y)) => Some(if x.generation >= y.generation { x } else { y }),
                (x, y) => x.or(y),
            };
            if let Some(r) = best {
                let cursor = LoadedCursor {
                    pair,
                    generation: r.generation,
                    offset: r.offset,
                    removed: r.removed,
                };
                let k = key(&r);
                if out.contains_key(&k) {
                    return Err(data_error(
                        path,
                        &format!("record {k:?} owns two cursor slot pairs"),
                    ));
                }
                out.insert(k, cursor);
            }
        }
        Ok((out, damaged))
    }

    /// The slot pair of `key`, assigning the next free one on first use, with the last
    /// generation written to it (a record written again, say a consumer re-created after its
    /// removal, must continue from there to win over the older slot).
    pub(crate) fn pair_for(&self, key: &RecordKey) -> (u64, u64) {
        let mut guard = self.pairs.lock();
        let pairs = &mut *guard;
        if let Some(&p) = pairs.by_record.get(key) {
            let generation = usize::try_from(p)
                .ok()
                .and_then(|i| pairs.last.get(i))
                .copied()
                .unwrap_or(0);
            return (p, generation);
        }
        // A reclaimed pair's slots are durably zero and its generation was reset to 0.
        let p = pairs.free.pop().unwrap_or_else(|| {
            let p = pairs.next;
            pairs.next += 1;
            pairs.last.push(0);
            p
        });
        pairs.by_record.insert(key.clone(), p);
        (p, 0)
    }

    /// Writes `record` (its generation selects the slot of `pair`), not synced.
    pub(crate) fn write(&self, record: &CursorRecord, pair: u64) -> io::Result<()> {
        self.write_slot(record, pair)?;
        self.sync.mark();
        Ok(())
    }

    /// Writes `record` and syncs the file. Should the sync fail, `undo` is written over it:
    /// the same record (generation included) holding what the caller keeps instead, its value
    /// before this write.
    ///
    /// The caller reports the write failed and keeps its value, but the record is in the page
    /// cache, where the next process would load it (a read that failed would have consumed
    /// its entries). Zeros in its slot would leave the pair's other slot to win, but that
    /// slot may hold a write no sync covered, which the failed sync lost: the disk's older
    /// record there would win, older than the one this write's slot held, the last synced
    /// (a floor taken back, consumed entries handed out again). The undo record wins over
    /// both, holding the value the caller goes on from.
    pub(crate) fn write_synced(
        &self,
        record: &CursorRecord,
        pair: u64,
        undo: &CursorRecord,
    ) -> io::Result<()> {
        debug_assert_eq!(record.generation, undo.generation);
        let file = self.write_slot(record, pair)?;
        self.sync.mark();
        if let Err(e) = self.sync() {
            let position = CursorRecord::slot_position(pair, record.generation);
            if let Err(failed) = encode_slot(undo).and_then(|slot| file.write_at(&slot, position)) {
                tracing::warn!(file = %file.path().display(), position, error = %failed,
                    "could not undo a cursor record whose sync failed");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Writes `record` into its slot of `pair` and notes its generation as the pair's last.
    fn write_slot(&self, record: &CursorRecord, pair: u64) -> io::Result<&Arc<dyn SegmentFile>> {
        let slot = encode_slot(record)?;
        let Some(file) = &self.file else {
            return Err(crate::error::read_only_error());
        };
        file.write_at(&slot, CursorRecord::slot_position(pair, record.generation))?;
        let mut guard = self.pairs.lock();
        if let Some(g) = usize::try_from(pair)
            .ok()
            .and_then(|p| guard.last.get_mut(p))
        {
            *g = (*g).max(record.generation);
        }
        Ok(file)
    }

    /// Writes zeros over the slot pair at `position`, a pair [`CursorFile::load`] found
    /// damaged: an open that goes on without its record leaves no damage for the next one to
    /// find. (Made durable with the file's next sync; a later open may give the pair to a new
    /// record.)
    pub(crate) fn clear_pair(&self, position: u64) -> io::Result<()> {
        self.clear(position, 2 * CURSOR_SLOT_LEN as usize)
    }

    /// Writes zeros over the slot at `position` (made durable with the file's next sync).
    pub(crate) fn clear_slot(&self, position: u64) -> io::Result<()> {
        self.clear(position, CURSOR_SLOT_LEN as usize)
    }

    fn clear(&self, position: u64, len: usize) -> io::Result<()> {
        let Some(file) = &self.file else {
            return Err(crate::error::read_only_error());
        };
        let zeros = [0u8; 2 * CURSOR_SLOT_LEN as usize];
        file.write_at(zeros.get(..len).unwrap_or(&zeros), position)?;
        self.sync.mark();
        Ok(())
    }

    /// Makes the file durable as it was loaded: a run killed before it synced may have left
    /// records in the page cache only.
    pub(crate) fn sync_loaded(&self) -> io::Result<()> {
        self.sync.mark();
        self.sync()?;
        let mut pairs = self.pairs.lock();
        let zeroed = std::mem::take(&mut pairs.zeroed);
        pairs.free.extend(zeroed);
        Ok(())
    }

    /// Makes every cursor written so far durable.
    pub(crate) fn sync(&self) -> io::Result<()> {
        match &self.file {
            Some(file) => self.sync.sync(|| file.sync_data()),
            // Read-only: nothing was written.
            None => Ok(()),
        }
    }

    /// Why every later sync of the file fails, once one failed.
    pub(crate) fn sync_failure(&self) -> Option<Arc<Poisoned>> {
        self.sync.failure()
    }
}
