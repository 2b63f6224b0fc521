//! The corruption property test: a seeded random workload on the simulated backend, a clean
//! close, then random damage to the segment files (bit flips in payloads, frame headers, block
//! headers and segment headers; zeroed ranges; truncation), and a reopen in every recovery mode,
//! each checked against its contract (SPEC.md, "Recovery contract"; issue 10, defects 3 and 4).
//!
//! After a clean close every entry is durable and the persisted durable watermark is exact, so
//! every damaged entry lies at or below the watermark: it is corruption, never a torn tail. The
//! test maps every entry to its bytes on disk before the damage, and calls an entry *damaged*
//! when any byte of its frame or of its block's header changed. Then, per mode:
//!
//! - `AbsoluteConsistency` refuses (`InvalidData`) when an entry is damaged;
//! - `TolerateCorruptedTail` refuses too, also for a damaged segment header with blocks behind
//!   it, naming topic, offset and a mode that would open the directory;
//! - `SkipCorrupted` opens and returns every undamaged entry, and never a damaged one;
//! - `PointInTime` opens and keeps each topic up to the unit holding its first damage; a new
//!   append never reuses an offset;
//! - reopening afterwards in `SkipCorrupted`, then `PointInTime`, shows that no open erased
//!   anything at or below the watermark.
//!
//! Every refused open must leave the disk exactly as it was.
//!
//! `WALRUS_CORRUPTION_CASES=N` runs N seeds (default 48); `WALRUS_CORRUPTION_SEED=S` replays one.
//! The deterministic tests at the end reproduce defects 3 and 4 of issue 10 exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use walrus::Storage;
use walrus::sim::SimStorage;
use walrus::{Entry, FsyncSchedule, RecoveryMode, Walrus};
use walrus_block::{
    BLOCK_ALIGN, BLOCK_HEADER_LEN, BlockHeader, FRAME_HEADER_LEN, Frame, FrameDecoder,
    SEGMENT_DATA_OFFSET, SEGMENT_HEADER_COPY_AT, SEGMENT_HEADER_LEN, SegmentHeader,
};

const DIR: &str = "/corrupt";
/// No digits in the names, so that an offset found in an error message is not part of a name.
const TOPICS: [&str; 3] = ["alpha", "bravo", "charlie"];
/// Smallest block length: bounds the walk over a segment's blocks.
const MIN_BLOCK_LEN: usize = BLOCK_ALIGN as usize;

/// The workspace's seeded generator: a failing seed replays on any build.
use walrus_io::SeededRng as Rng;

#[derive(Debug, Clone, Copy)]
struct Setup {
    schedule: FsyncSchedule,
    lanes: usize,
}

/// The geometry of the deterministic tests: one lane, so one segment file fills at a time.
const SYNC_EACH: Setup = Setup {
    schedule: FsyncSchedule::SyncEach,
    lanes: 1,
};

fn open(sim: &SimStorage, setup: Setup, mode: RecoveryMode) -> io::Result<Walrus> {
    Walrus::builder()
        .data_dir(DIR)
        .storage(Arc::new(sim.clone()) as Arc<dyn Storage>)
        .fsync_schedule(setup.schedule)
        .segment_len(64 * 1024)
        .block_len(8 * 1024)
        .allocation_lanes(setup.lanes)
        // Deterministic, and the persisted watermark follows every sync exactly.
        .durable_mark_interval(Duration::ZERO)
        .inline_maintenance(true)
        .quiet(true)
        .recovery_mode(mode)
        .build()
}

/// Every file's contents, by path.
type Files = BTreeMap<PathBuf, Vec<u8>>;

fn is_segment(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "wseg")
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn snapshot(sim: &SimStorage, segments_only: bool) -> Result<Files, String> {
    sim.files()
        .into_iter()
        .filter(|p| !segments_only || is_segment(p))
        .map(|p| {
            let bytes = sim
                .contents(&p)
                .map_err(|e| format!("reading {}: {e}", p.display()))?;
            Ok((p, bytes))
        })
        .collect()
}

/// Opens in `mode`; an open that fails must have changed nothing on disk (SPEC: "A failed
/// open changes nothing on disk"). The outer error is a broken contract, the inner result the
/// open's.
fn try_open(
    sim: &SimStorage,
    setup: Setup,
    mode: RecoveryMode,
) -> Result<io::Result<Walrus>, String> {
    let before = snapshot(sim, false)?;
    match open(sim, setup, mode) {
        Ok(wal) => {
            // What recovery wrote (repairs, erases, cleared records) is durable when the open
            // returns: a power cut right after must not bring back what it undid.
            for file in sim.files() {
                let unsynced = sim.unsynced_sectors(&file).map_err(|e| e.to_string())?;
                if unsynced > 0 {
                    return Err(format!(
                        "{mode:?}: the open left {unsynced} unsynced sector(s) in {}",
                        file.display()
                    ));
                }
            }
            Ok(Ok(wal))
        }
        Err(e) => {
            if snapshot(sim, false)? != before {
                return Err(format!(
                    "{mode:?}: the refused open ({e}) changed the files on disk"
                ));
            }
            Ok(Err(e))
        }
    }
}

// ---- The workload and its oracle -----------------------------------------------------------

/// What the oracle knows about one topic.
#[derive(Debug, Default)]
struct TopicModel {
    /// Payloads by offset: every entry appended before the damage.
    entries: Vec<Vec<u8>>,
    /// Every append unit (a single entry or a batch), in order.
    units: Vec<Range<u64>>,
    /// Entries appended after the damage (offset, payload); offsets may leave a gap.
    added: Vec<(u64, Vec<u8>)>,
}

impl TopicModel {
    fn end(&self) -> u64 {
        self.entries.len() as u64
    }

    /// The start of the unit holding `offset`: `PointInTime` keeps whole units only.
    fn unit_start(&self, offset: u64) -> u64 {
        self.units
            .iter()
            .find(|u| u.contains(&offset))
            .map_or(offset, |u| u.start)
    }
}

type Model = BTreeMap<String, TopicModel>;

fn payload(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(20) {
        0 | 1 => 0,
        2..=14 => 1 + rng.below(1500),
        15..=18 => 1 + rng.below(3000),
        _ => 8 * 1024 + rng.below(10_000 - 8 * 1024), // larger than a block
    } as usize;
    let fill = rng.next_u64();
    (0..len)
        .map(|i| (fill >> (i % 8 * 8)) as u8 ^ i as u8)
        .collect()
}

/// Random single appends and batches, no reads (every entry stays retained), then a clean
/// close: `flush` (every entry durable, watermark exact) and drop.
fn workload(
    rng: &mut Rng,
    sim: &SimStorage,
    setup: Setup,
    topics: &[&str],
) -> Result<Model, String> {
    let wal = open(sim, setup, RecoveryMode::TolerateCorruptedTail)
        .map_err(|e| format!("first open: {e}"))?;
    let mut model = Model::new();
    let ops = 20 + rng.below(181);
    for _ in 0..ops {
        let topic = topics[rng.index(topics.len())];
        let m = model.entry(topic.to_owned()).or_default();
        let start = m.end();
        if rng.chance(60) {
            let p = payload(rng);
            let off = wal
                .append(topic, &p)
                .map_err(|e| format!("append to {topic}: {e}"))?;
            if off != start {
                return Err(format!("append to {topic} got offset {off}, not {start}"));
            }
            m.entries.push(p);
        } else {
            let batch: Vec<Vec<u8>> = (0..1 + rng.below(8)).map(|_| payload(rng)).collect();
            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            let range = wal
                .append_batch(topic, &refs)
                .map_err(|e| format!("batch to {topic}: {e}"))?;
            let want = start..start + batch.len() as u64;
            if range != want {
                return Err(format!("batch to {topic} got {range:?}, not {want:?}"));
            }
            m.entries.extend(batch);
        }
        let end = m.end();
        m.units.push(start..end);
    }
    wal.flush().map_err(|e| format!("flush: {e}"))?;
    drop(wal);
    Ok(model)
}

// ---- Where every entry lives on disk -------------------------------------------------------

/// One entry's bytes on disk.
#[derive(Debug, Clone)]
struct Loc {
    file: PathBuf,
    /// The whole frame (header and payload), in file bytes.
    frame: Range<usize>,
    /// The header of the block holding it, in file bytes.
    header: Range<usize>,
    payload: Vec<u8>,
}

#[derive(Debug, Default)]
struct Layout {
    entries: BTreeMap<(String, u64), Loc>,
    /// Every block header: file and byte range.
    blocks: Vec<(PathBuf, Range<usize>)>,
    /// Segment files with at least one block.
    with_blocks: BTreeSet<PathBuf>,
}

/// Walks every segment file the way FORMAT.md describes: header, blocks back to back from
/// `SEGMENT_DATA_OFFSET`, frames in each block's data area.
fn map_layout(files: &Files) -> Result<Layout, String> {
    let mut layout = Layout::default();
    for (path, bytes) in files {
        let name = file_name(path);
        let key = match SegmentHeader::decode(bytes) {
            Ok(Some(h)) => h.key,
            // Created, header never written: no blocks.
            Ok(None) => continue,
            Err(e) => return Err(format!("{name}: segment header after a clean close: {e:?}")),
        };
        let mut pos = SEGMENT_DATA_OFFSET as usize;
        // Each block is at least MIN_BLOCK_LEN long: this bounds the walk.
        for _ in 0..=bytes.len() / MIN_BLOCK_LEN {
            let Some(rest) = bytes.get(pos..) else { break };
            let Ok(Some(header)) = BlockHeader::decode(rest, key) else {
                break;
            };
            let block_len = usize::try_from(header.block_len)
                .map_err(|_| format!("{name}: block at byte {pos}: length overflows"))?;
            let header_range = pos..pos + BLOCK_HEADER_LEN;
            layout.blocks.push((path.clone(), header_range.clone()));
            layout.with_blocks.insert(path.clone());
            if !header.abandoned {
                let base = pos + BLOCK_HEADER_LEN;
                let data = bytes
                    .get(base..pos.saturating_add(block_len).min(bytes.len()))
                    .unwrap_or_default();
                let mut frames = FrameDecoder::new(data, header.frame_key(key));
                // Each frame is at least a header long: this bounds the decoding.
                for _ in 0..=data.len() / FRAME_HEADER_LEN {
                    match frames.next_frame() {
                        Frame::Entry(e) => {
                            let loc = Loc {
                                file: path.clone(),
                                frame: base + e.pos..base + e.end(),
                                header: header_range.clone(),
                                payload: e.payload.to_vec(),
                            };
                            if layout
                                .entries
                                .insert((header.topic.clone(), e.offset), loc)
                                .is_some()
                            {
                                return Err(format!(
                                    "{name}: {}@{} is on disk twice",
                                    header.topic, e.offset
                                ));
                            }
                        }
                        Frame::End { .. } => break,
                        other => {
                            return Err(format!(
                                "{name}: block at byte {pos} after a clean close: {other:?}"
                            ));
                        }
                    }
                }
            }
            pos = pos.saturating_add(block_len);
        }
    }
    Ok(layout)
}

/// Sanity of the harness: the map holds every oracle entry, with its bytes, exactly once.
fn check_coverage(model: &Model, layout: &Layout) -> Result<(), String> {
    let mut expected = 0;
    for (topic, m) in model {
        for (off, want) in (0u64..).zip(&m.entries) {
            expected += 1;
            match layout.entries.get(&(topic.clone(), off)) {
                Some(loc) if loc.payload == *want => {}
                Some(_) => return Err(format!("map: {topic}@{off} holds other bytes")),
                None => return Err(format!("map: {topic}@{off} is in no segment file")),
            }
        }
    }
    if layout.entries.len() != expected {
        return Err(format!(
            "map: {} frames on disk for {expected} entries appended",
            layout.entries.len()
        ));
    }
    Ok(())
}

// ---- Damage ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Edit {
    /// Flip this bit of the byte.
    Flip(u8),
    /// Write this many zeros.
    Zero(usize),
}

#[derive(Debug, Clone)]
struct Damage {
    what: String,
    file: PathBuf,
    at: usize,
    edit: Edit,
}

fn flip_in(rng: &mut Rng, what: &str, file: &Path, range: &Range<usize>) -> Damage {
    let i = rng.index(range.len());
    let bit = rng.below(8) as u8;
    Damage {
        what: format!("bit {bit} of {what} byte {i} ({})", file_name(file)),
        file: file.to_path_buf(),
        at: range.start + i,
        edit: Edit::Flip(bit),
    }
}

/// A spot in a segment file: mostly near an entry (damage that matters), else anywhere.
fn pick_spot(rng: &mut Rng, layout: &Layout, files: &Files) -> (PathBuf, usize) {
    let entries: Vec<&Loc> = layout.entries.values().collect();
    if !entries.is_empty() && rng.chance(60) {
        let loc = entries[rng.index(entries.len())];
        let len = files.get(&loc.file).map_or(1, Vec::len).max(1);
        let at = (loc.frame.start + rng.index(3000)).saturating_sub(1500);
        (loc.file.clone(), at.min(len - 1))
    } else {
        let paths: Vec<&PathBuf> = files.keys().collect();
        let path = paths[rng.index(paths.len())];
        let len = files.get(path).map_or(1, Vec::len).max(1);
        (path.clone(), rng.index(len))
    }
}

fn choose_damage(rng: &mut Rng, layout: &Layout, files: &Files) -> Result<Damage, String> {
    let entries: Vec<(&(String, u64), &Loc)> = layout.entries.iter().collect();
    if entries.is_empty() || files.is_empty() {
        return Err("nothing on disk to damage".into());
    }
    let kind = rng.below(6);
    Ok(match kind {
        0 | 1 => {
            let with_payload: Vec<&(&(String, u64), &Loc)> = entries
                .iter()
                .filter(|(_, loc)| loc.frame.len() > FRAME_HEADER_LEN)
                .collect();
            if kind == 0 && !with_payload.is_empty() {
                let ((topic, off), loc) = *with_payload[rng.index(with_payload.len())];
                let payload = loc.frame.start + FRAME_HEADER_LEN..loc.frame.end;
                flip_in(
                    rng,
                    &format!("{topic}@{off}'s payload"),
                    &loc.file,
                    &payload,
                )
            } else {
                let ((topic, off), loc) = entries[rng.index(entries.len())];
                let header = loc.frame.start..loc.frame.start + FRAME_HEADER_LEN;
                flip_in(
                    rng,
                    &format!("{topic}@{off}'s frame header"),
                    &loc.file,
                    &header,
                )
            }
        }
        2 => {
            let (file, header) = &layout.blocks[rng.index(layout.blocks.len())];
            let what = format!("the block header at byte {}", header.start);
            flip_in(rng, &what, file, header)
        }
        3 => {
            let paths: Vec<&PathBuf> = files.keys().collect();
            let file = paths[rng.index(paths.len())];
            flip_in(rng, "the segment header", file, &(0..SEGMENT_HEADER_LEN))
        }
        4 => {
            let (file, at) = pick_spot(rng, layout, files);
            let file_len = files.get(&file).map_or(0, Vec::len);
            let len = (1 + rng.index(3000)).min(file_len.saturating_sub(at));
            Damage {
                what: format!("zeroed bytes {at}..{} of {}", at + len, file_name(&file)),
                file,
                at,
                edit: Edit::Zero(len),
            }
        }
        _ => {
            // A truncation: the engine reads what lies past the end of a file as zeros.
            let (file, at) = pick_spot(rng, layout, files);
            let file_len = files.get(&file).map_or(0, Vec::len);
            Damage {
                what: format!("truncated {} at byte {at}", file_name(&file)),
                file,
                at,
                edit: Edit::Zero(file_len.saturating_sub(at)),
            }
        }
    })
}

/// Applies the damage through the storage, synced: it is on "disk" like any other write.
fn apply(sim: &SimStorage, d: &Damage) -> Result<(), String> {
    let err = |e: io::Error| format!("applying {}: {e}", d.what);
    let file = Storage::open(sim, &d.file).map_err(err)?;
    match d.edit {
        Edit::Flip(bit) => {
            let now = sim.contents(&d.file).map_err(err)?;
            let byte = now
                .get(d.at)
                .copied()
                .ok_or_else(|| format!("applying {}: byte {} is past the end", d.what, d.at))?;
            file.write_at(&[byte ^ (1 << bit)], d.at as u64)
                .map_err(err)?;
        }
        Edit::Zero(len) => file.write_at(&vec![0u8; len], d.at as u64).map_err(err)?,
    }
    file.sync_data().map_err(err)
}

/// Which entries the damage reached, judged byte by byte.
#[derive(Debug, Default)]
struct Assessment {
    /// Per topic, the entries whose frame or block header changed, or whose segment lost both
    /// copies of its header and one of its first two blocks' headers (and so its key).
    damaged: BTreeMap<String, BTreeSet<u64>>,
    /// The header, or its copy, of a segment file with blocks in it changed (its blocks are
    /// intact or counted above: while one copy is left, the engine has the key).
    header_hit: bool,
    /// Any byte of any segment file changed.
    changed: bool,
}

impl Assessment {
    fn any_damage(&self) -> bool {
        !self.damaged.is_empty()
    }

    fn is_damaged(&self, topic: &str, off: u64) -> bool {
        self.damaged.get(topic).is_some_and(|s| s.contains(&off))
    }

    fn first_damage(&self, topic: &str) -> Option<u64> {
        self.damaged.get(topic).and_then(|s| s.first().copied())
    }
}

fn assess(before: &Files, after: &Files, layout: &Layout) -> Assessment {
    let differs = |file: &PathBuf, r: &Range<usize>| {
        before.get(file).and_then(|b| b.get(r.clone()))
            != after.get(file).and_then(|a| a.get(r.clone()))
    };
    let copy = SEGMENT_HEADER_COPY_AT..SEGMENT_HEADER_COPY_AT + SEGMENT_HEADER_LEN;
    let mut a = Assessment {
        changed: before != after,
        header_hit: layout
            .with_blocks
            .iter()
            .any(|f| differs(f, &(0..SEGMENT_HEADER_LEN)) || differs(f, &copy)),
        ..Assessment::default()
    };
    // A segment whose header and copy are both damaged has its key solved from the first
    // block header's CRC, confirmed by the second's or by the first block's first frame (keyed
    // with it, format v4): with the first damaged, or neither confirmation intact, it has lost
    // its key, and none of its blocks can be validated.
    let key_lost = |file: &PathBuf| {
        let mut headers = layout.blocks.iter().filter(|(f, _)| f == file);
        let (first, second) = (headers.next(), headers.next());
        let intact = |r: Option<&Range<usize>>| r.is_some_and(|r| !differs(file, r));
        // Its header: what the engine checks the key with.
        let first_frame = first.and_then(|(_, h)| {
            layout
                .entries
                .values()
                .find(|l| &l.file == file && l.frame.start == h.end)
                .map(|l| l.frame.start..l.frame.start + FRAME_HEADER_LEN)
        });
        differs(file, &(0..SEGMENT_HEADER_LEN))
            && differs(file, &copy)
            && (!intact(first.map(|(_, h)| h))
                || !(intact(second.map(|(_, h)| h)) || intact(first_frame.as_ref())))
    };
    for ((topic, off), loc) in &layout.entries {
        if differs(&loc.file, &loc.frame) || differs(&loc.file, &loc.header) || key_lost(&loc.file)
        {
            a.damaged.entry(topic.clone()).or_default().insert(*off);
        }
    }
    a
}

/// `3..=7, 12` for {3, 4, 5, 6, 7, 12}.
fn runs(set: &BTreeSet<u64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(u64, u64)> = None;
    for &o in set {
        run = match run {
            Some((s, e)) if e + 1 == o => Some((s, o)),
            Some((s, e)) => {
                out.push(if s == e {
                    s.to_string()
                } else {
                    format!("{s}..={e}")
                });
                Some((o, o))
            }
            None => Some((o, o)),
        };
    }
    if let Some((s, e)) = run {
        out.push(if s == e {
            s.to_string()
        } else {
            format!("{s}..={e}")
        });
    }
    out.join(", ")
}

fn describe(a: &Assessment) -> String {
    if !a.changed {
        return "no byte changed".into();
    }
    let mut parts: Vec<String> = a
        .damaged
        .iter()
        .map(|(t, set)| format!("{t}@[{}]", runs(set)))
        .collect();
    if a.header_hit {
        parts.push("a segment header with blocks behind it".into());
    }
    if parts.is_empty() {
        parts.push("bytes changed, no entry".into());
    }
    parts.join("; ")
}

// ---- The contracts --------------------------------------------------------------------------

/// True when `n` appears in `text` as a whole decimal number.
fn mentions_number(text: &str, n: u64) -> bool {
    let want = n.to_string();
    text.split(|c: char| !c.is_ascii_digit())
        .any(|run| run == want)
}

fn show(got: &io::Result<Option<Entry>>, want: Option<&[u8]>) -> String {
    match got {
        Ok(Some(e)) if Some(e.data.as_slice()) == want => "the original entry".into(),
        Ok(Some(e)) if want.is_some() => {
            format!("{} bytes that are not the original", e.data.len())
        }
        Ok(Some(e)) => format!("an entry of {} bytes", e.data.len()),
        Ok(None) => "nothing".into(),
        Err(e) => format!("an error ({:?}: {e})", e.kind()),
    }
}

/// What the reads of an open instance must return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Every entry, exactly.
    All,
    /// Every undamaged entry exactly (`SkipCorrupted`).
    Undamaged,
    /// Every entry before the unit holding the topic's first damage exactly (`PointInTime`).
    BeforeCut,
}

/// Reads every offset of the oracle. An entry not expected back may read as nothing or fail,
/// but never as other bytes (and, past a `PointInTime` cut, not at all); the entries added
/// after the damage must all be there.
fn check_reads(wal: &Walrus, model: &Model, a: &Assessment, expect: Expect) -> Result<(), String> {
    for (topic, m) in model {
        let cut = a.first_damage(topic).map_or(m.end(), |d| m.unit_start(d));
        let originals = (0u64..).zip(&m.entries).map(|(off, p)| {
            let exact = match expect {
                Expect::All => true,
                Expect::Undamaged => !a.is_damaged(topic, off),
                Expect::BeforeCut => off < cut,
            };
            let cut_off = matches!(expect, Expect::BeforeCut) && off >= cut;
            (off, p, exact, cut_off)
        });
        let added = m.added.iter().map(|(off, p)| (*off, p, true, false));
        for (off, want, exact, cut_off) in originals.chain(added) {
            let got = wal.read_at(topic, off);
            let ok = match &got {
                Ok(Some(_)) if cut_off => false,
                Ok(Some(e)) => e.data == *want,
                _ => !exact,
            };
            if !ok {
                let expected = if exact {
                    "the original entry"
                } else if cut_off {
                    "nothing or an error (past the cut)"
                } else {
                    "nothing, an error or the original entry (never other bytes)"
                };
                return Err(format!(
                    "{topic}@{off}: read_at returned {}, expected {expected}",
                    show(&got, Some(want.as_slice()))
                ));
            }
        }
    }
    Ok(())
}

/// A peek (cursor 0, nothing consumed) returns the first entry that is still there.
fn check_peek(wal: &Walrus, model: &Model, a: &Assessment) -> Result<(), String> {
    for (topic, m) in model {
        let first = (0u64..)
            .zip(&m.entries)
            .find(|(off, _)| !a.is_damaged(topic, *off))
            .or_else(|| m.added.first().map(|(off, p)| (*off, p)));
        let got = wal.read_next(topic, false);
        match (first, &got) {
            (Some((_, want)), Ok(Some(e))) if e.data == *want => {}
            (None, Ok(None)) => {}
            (Some((off, want)), _) => {
                return Err(format!(
                    "{topic}: read_next (peek) returned {}, expected entry {off}",
                    show(&got, Some(want.as_slice()))
                ));
            }
            (None, _) => {
                return Err(format!(
                    "{topic}: read_next (peek) returned {} with every entry damaged",
                    show(&got, None)
                ));
            }
        }
    }
    Ok(())
}

/// A refusal names a damaged topic, its first damaged offset (or the start of the unit holding
/// it), and the modes that would open the directory.
fn check_refusal(msg: &str, model: &Model, a: &Assessment) -> Result<(), String> {
    if !(msg.contains("PointInTime") || msg.contains("SkipCorrupted")) {
        return Err(format!(
            "the refusal does not name a mode that would open it: {msg}"
        ));
    }
    if !a.any_damage() {
        return Ok(()); // only a segment header: no entry to name
    }
    let named = a.damaged.iter().any(|(topic, set)| {
        set.first().is_some_and(|&d| {
            let b = model.get(topic).map_or(d, |m| m.unit_start(d));
            msg.contains(topic.as_str()) && (mentions_number(msg, d) || mentions_number(msg, b))
        })
    });
    if !named {
        return Err(format!(
            "the refusal does not name a damaged topic and its first damaged offset: {msg}"
        ));
    }
    Ok(())
}

/// Adds the mode and what recovery reported to a failed check.
fn in_mode(mode: RecoveryMode, wal: &Walrus, result: Result<(), String>) -> Result<(), String> {
    result.map_err(|e| {
        let mut issues = format!("{:?}", wal.recovery_report().issues);
        if issues.len() > 2000 {
            let mut cut = 2000;
            while !issues.is_char_boundary(cut) {
                cut -= 1;
            }
            issues.truncate(cut);
            issues.push('…');
        }
        format!("{mode:?}: {e}\n  recovery issues: {issues}")
    })
}

fn must_open(sim: &SimStorage, setup: Setup, mode: RecoveryMode) -> Result<Walrus, String> {
    try_open(sim, setup, mode)?.map_err(|e| format!("{mode:?}: open failed: {:?}: {e}", e.kind()))
}

fn check_modes(
    sim: &SimStorage,
    setup: Setup,
    model: &mut Model,
    a: &Assessment,
) -> Result<(), String> {
    // AbsoluteConsistency: a damaged entry refuses; an untouched directory opens. Damage that
    // reached no entry may go either way.
    let mode = RecoveryMode::AbsoluteConsistency;
    match try_open(sim, setup, mode)? {
        Ok(wal) => {
            if a.any_damage() {
                return Err(format!("{mode:?} opened although entries are damaged"));
            }
            in_mode(mode, &wal, check_reads(&wal, &*model, a, Expect::All))?;
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidData && a.changed => {}
        Err(e) => return Err(format!("{mode:?}: open failed: {:?}: {e}", e.kind())),
    }

    // TolerateCorruptedTail: damage at or below the watermark (all of it here) is corruption.
    let mode = RecoveryMode::TolerateCorruptedTail;
    let must_refuse = a.any_damage() || a.header_hit;
    match try_open(sim, setup, mode)? {
        Ok(wal) => {
            if must_refuse {
                return Err(format!(
                    "{mode:?} opened although the damage lies below the durable watermark"
                ));
            }
            in_mode(mode, &wal, check_reads(&wal, &*model, a, Expect::All))?;
        }
        // Damage that reached no entry and no header (slack, space past the last block) is
        // no reason to refuse: it is zeroed and the directory opens.
        Err(e) if e.kind() == io::ErrorKind::InvalidData && must_refuse => {
            check_refusal(&e.to_string(), &*model, a).map_err(|m| format!("{mode:?}: {m}"))?;
        }
        Err(e) => return Err(format!("{mode:?}: open failed: {:?}: {e}", e.kind())),
    }

    // SkipCorrupted: every valid entry, never a damaged one.
    let mode = RecoveryMode::SkipCorrupted;
    let wal = must_open(sim, setup, mode)?;
    let checked = check_reads(&wal, &*model, a, Expect::Undamaged)
        .and_then(|()| check_peek(&wal, &*model, a));
    in_mode(mode, &wal, checked)?;
    drop(wal);

    // PointInTime: each topic up to the unit holding its first damage; offsets never reused.
    let mode = RecoveryMode::PointInTime;
    let wal = must_open(sim, setup, mode)?;
    in_mode(mode, &wal, check_reads(&wal, &*model, a, Expect::BeforeCut))?;
    for (topic, m) in model.iter_mut() {
        if !a.damaged.contains_key(topic) {
            continue;
        }
        let data = format!("appended to {topic} after the damage").into_bytes();
        let off = wal
            .append(topic, &data)
            .map_err(|e| format!("{mode:?}: append to {topic} after the cut: {e}"))?;
        if off < m.end() {
            return Err(format!(
                "{mode:?}: {topic}: an append after the cut got offset {off}, but offsets up to {} \
                 were handed out before: offsets are never reused",
                m.end() - 1
            ));
        }
        m.added.push((off, data));
    }
    wal.flush().map_err(|e| format!("{mode:?}: flush: {e}"))?;
    in_mode(mode, &wal, check_reads(&wal, &*model, a, Expect::BeforeCut))?;
    drop(wal);

    // SkipCorrupted again: no open before erased anything at or below the watermark (the cut
    // was recorded, not zeroed), and the new entries are there.
    let mode = RecoveryMode::SkipCorrupted;
    let wal = must_open(sim, setup, mode)?;
    let checked = check_reads(&wal, &*model, a, Expect::Undamaged)
        .and_then(|()| check_peek(&wal, &*model, a));
    in_mode(mode, &wal, checked)?;
    drop(wal);

    // PointInTime again: the same prefix, and the new entries after the recorded cut.
    let mode = RecoveryMode::PointInTime;
    let wal = must_open(sim, setup, mode)?;
    in_mode(mode, &wal, check_reads(&wal, &*model, a, Expect::BeforeCut))?;
    drop(wal);
    Ok(())
}

fn run_seed(seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let schedule = match rng.below(3) {
        0 => FsyncSchedule::SyncEach,
        1 => FsyncSchedule::NoFsync,
        _ => FsyncSchedule::Milliseconds(3_600_000), // the syncer never fires on its own here
    };
    let setup = Setup {
        schedule,
        lanes: 1 + rng.index(2),
    };
    let topics = &TOPICS[..1 + rng.index(TOPICS.len())];
    let ctx = format!("seed {seed} ({schedule:?}, {} lanes)", setup.lanes);
    let sim = SimStorage::new(seed);

    let mut model = workload(&mut rng, &sim, setup, topics).map_err(|e| format!("{ctx}: {e}"))?;
    let before = snapshot(&sim, true).map_err(|e| format!("{ctx}: {e}"))?;
    let layout = map_layout(&before).map_err(|e| format!("{ctx}: {e}"))?;
    check_coverage(&model, &layout).map_err(|e| format!("{ctx}: {e}"))?;

    let count = if rng.chance(25) { 2 } else { 1 };
    let mut damages = Vec::new();
    for _ in 0..count {
        let d = choose_damage(&mut rng, &layout, &before).map_err(|e| format!("{ctx}: {e}"))?;
        apply(&sim, &d).map_err(|e| format!("{ctx}: {e}"))?;
        damages.push(d);
    }
    let after = snapshot(&sim, true).map_err(|e| format!("{ctx}: {e}"))?;
    if after.keys().ne(before.keys()) {
        return Err(format!(
            "{ctx}: damaging the files changed the set of files"
        ));
    }
    let a = assess(&before, &after, &layout);
    let entries: usize = model.values().map(|m| m.entries.len()).sum();
    let ctx = format!(
        "{ctx}, {entries} entries in {} topics; damage: {}; damaged: {}",
        model.len(),
        damages
            .iter()
            .map(|d| d.what.as_str())
            .collect::<Vec<_>>()
            .join(" + "),
        describe(&a)
    );
    if std::env::var_os("WALRUS_CORRUPTION_VERBOSE").is_some() {
        eprintln!("{ctx}");
    }
    check_modes(&sim, setup, &mut model, &a).map_err(|e| format!("{ctx}:\n  {e}"))
}

#[test]
fn corruption_property() {
    const REPLAY: &str = "cargo test -p walrus --test corruption corruption_property";
    if let Ok(seed) = std::env::var("WALRUS_CORRUPTION_SEED") {
        let seed: u64 = seed.parse().expect("WALRUS_CORRUPTION_SEED is a number");
        if let Err(e) = run_seed(seed) {
            panic!("{e}\n  replay: WALRUS_CORRUPTION_SEED={seed} {REPLAY}");
        }
        return;
    }
    let cases: u64 = std::env::var("WALRUS_CORRUPTION_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    for seed in 0..cases {
        if let Err(e) = run_seed(seed) {
            failures.push(format!(
                "{e}\n  replay: WALRUS_CORRUPTION_SEED={seed} {REPLAY}"
            ));
        }
    }
    eprintln!(
        "corruption: {cases} seeds in {:.1?}, {} failed",
        started.elapsed(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {cases} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---- Issue 10, defects 3 and 4, exactly ----------------------------------------------------

const EVENTS: &str = "events";

/// Appends `n` entries of 100 bytes to one topic under `SyncEach`, then closes cleanly.
fn write_entries(sim: &SimStorage, n: u64) -> Vec<Vec<u8>> {
    let wal = open(sim, SYNC_EACH, RecoveryMode::TolerateCorruptedTail).expect("first open");
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("entry {i:03} ").repeat(10).into_bytes())
        .collect();
    for (i, p) in (0u64..).zip(&payloads) {
        assert_eq!(wal.append(EVENTS, p).expect("append"), i);
    }
    drop(wal);
    payloads
}

fn locate(sim: &SimStorage, topic: &str, offset: u64) -> Loc {
    let files = snapshot(sim, true).expect("snapshot");
    let layout = map_layout(&files).expect("map the segments");
    layout
        .entries
        .get(&(topic.to_owned(), offset))
        .cloned()
        .unwrap_or_else(|| panic!("{topic}@{offset} is not on disk"))
}

/// Defect 3's setup: 200 entries, clean close, one bit flipped in entry 100's payload.
fn flipped_entry_100(seed: u64) -> (SimStorage, Vec<Vec<u8>>) {
    let sim = SimStorage::new(seed);
    let payloads = write_entries(&sim, 200);
    let loc = locate(&sim, EVENTS, 100);
    let damage = Damage {
        what: "bit 3 of payload byte 50 of events@100".into(),
        file: loc.file,
        at: loc.frame.start + FRAME_HEADER_LEN + 50,
        edit: Edit::Flip(3),
    };
    apply(&sim, &damage).expect("flip the bit");
    (sim, payloads)
}

#[test]
fn defect3_default_mode_refuses_a_flipped_bit_below_the_watermark() {
    let (sim, _) = flipped_entry_100(31);
    let outcome = try_open(&sim, SYNC_EACH, RecoveryMode::TolerateCorruptedTail)
        .unwrap_or_else(|e| panic!("{e}"));
    let Err(err) = outcome else {
        panic!("TolerateCorruptedTail opened with a corrupt entry at 100, below the watermark");
    };
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(EVENTS),
        "the refusal does not name the topic: {msg}"
    );
    assert!(
        mentions_number(&msg, 100),
        "the refusal does not name offset 100: {msg}"
    );
    assert!(
        msg.contains("PointInTime") || msg.contains("SkipCorrupted"),
        "the refusal does not name a mode that would open it: {msg}"
    );
}

#[test]
fn defect3_point_in_time_keeps_exactly_the_entries_before_the_damage() {
    let (sim, payloads) = flipped_entry_100(32);
    let wal = open(&sim, SYNC_EACH, RecoveryMode::PointInTime).expect("PointInTime opens");
    let records = wal
        .read_records(EVENTS, usize::MAX, false)
        .expect("read_records");
    let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..100).collect::<Vec<u64>>());
    for r in &records {
        assert_eq!(r.data, payloads[r.offset as usize], "entry {}", r.offset);
    }
    for off in 100..200 {
        assert_eq!(
            wal.read_at(EVENTS, off).expect("read_at"),
            None,
            "entry {off} is after the cut"
        );
    }
    let off = wal.append(EVENTS, b"after the cut").expect("append");
    assert!(
        off >= 200,
        "offset {off} reused: offsets up to 199 were handed out"
    );
    assert_eq!(
        wal.read_at(EVENTS, off).expect("read_at").map(|e| e.data),
        Some(b"after the cut".to_vec())
    );
}

#[test]
fn defect3_skip_corrupted_skips_exactly_the_damaged_entry() {
    let (sim, payloads) = flipped_entry_100(33);
    let wal = open(&sim, SYNC_EACH, RecoveryMode::SkipCorrupted).expect("SkipCorrupted opens");
    let records = wal
        .read_records(EVENTS, usize::MAX, false)
        .expect("read_records");
    let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets,
        (0..200).filter(|&o| o != 100).collect::<Vec<u64>>()
    );
    for r in &records {
        assert_eq!(r.data, payloads[r.offset as usize], "entry {}", r.offset);
    }
    for (off, want) in (0u64..).zip(&payloads) {
        let got = wal.read_at(EVENTS, off).expect("read_at").map(|e| e.data);
        if off == 100 {
            assert_eq!(got, None, "the corrupt entry 100 was handed out");
        } else {
            assert_eq!(got.as_ref(), Some(want), "entry {off}");
        }
    }
}

#[test]
fn defect4_zeroed_segment_header_is_corruption_not_an_empty_segment() {
    let sim = SimStorage::new(40);
    let payloads = write_entries(&sim, 50);
    let files = snapshot(&sim, true).expect("snapshot");
    let layout = map_layout(&files).expect("map the segments");
    let segments: Vec<PathBuf> = layout.with_blocks.iter().cloned().collect();
    assert_eq!(
        segments.len(),
        1,
        "50 small entries fill one segment: {segments:?}"
    );
    let segment = segments[0].clone();
    let damage = Damage {
        what: "zeroed segment header".into(),
        file: segment.clone(),
        at: 0,
        edit: Edit::Zero(SEGMENT_HEADER_LEN),
    };
    apply(&sim, &damage).expect("zero the header");

    let outcome = try_open(&sim, SYNC_EACH, RecoveryMode::TolerateCorruptedTail)
        .unwrap_or_else(|e| panic!("{e}"));
    match outcome {
        Ok(_) => panic!("TolerateCorruptedTail opened a segment whose header is zeroed"),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}"),
    }
    assert!(
        sim.files().contains(&segment),
        "the refused open deleted {}",
        segment.display()
    );

    for mode in [RecoveryMode::SkipCorrupted, RecoveryMode::PointInTime] {
        let wal = open(&sim, SYNC_EACH, mode).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        for (off, want) in (0u64..).zip(&payloads) {
            let got = wal.read_at(EVENTS, off).expect("read_at").map(|e| e.data);
            assert_eq!(got.as_ref(), Some(want), "{mode:?}: entry {off}");
        }
        let records = wal
            .read_records(EVENTS, usize::MAX, false)
            .expect("read_records");
        assert_eq!(records.len(), payloads.len(), "{mode:?}");
        drop(wal);
        assert!(
            sim.files().contains(&segment),
            "{mode:?} deleted {}",
            segment.display()
        );
    }
}
