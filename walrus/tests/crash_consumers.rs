//! Concurrent simulated crashes with named consumers, retention and topic deletion: appenders,
//! several consumers per topic, a thread that deletes and re-creates a topic, and a retained
//! topic with a slow consumer all run at once under `SyncEach` on the simulated backend (syncs
//! take time), until a power cut at a random moment. After reopening:
//!
//! 1. Every acknowledged append a consumer had not yet consumed is there, intact (topics
//!    without retention): a block is released only once every consumer consumed it.
//! 2. Each consumer's cursor is past everything it consumed (`StrictlyAtOnce`: nothing is
//!    delivered twice) and reading on yields only entries it had not read, in order.
//! 3. A deletion that returned is durable: none of the deleted entries is readable, no
//!    consumer of the deleted incarnation comes back, and appends after it are there with
//!    offsets continuing past the deleted ones. Offsets are never reused.
//! 4. The retained topic keeps every acknowledged entry from its oldest retained offset on;
//!    the slow consumer's reads before the crash were in order, skipping only forwards.
//!
//! Across the seeds, every kind of call (append, consuming read of each kind of topic,
//! deletion) must have completed before some power cut.
//!
//! `WALRUS_CRASH_CONSUMERS_SEEDS=N` runs N seeds (default 12); `WALRUS_CRASH_CONSUMERS_SEED=S`
//! replays one (the interleaving is the scheduler's; the choices are the seed's).

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use walrus::sim::{CrashMode, SimStorage};
use walrus::{FsyncSchedule, ReadConsistency, Retention, Storage, Walrus};
use walrus_io::SeededRng as Rng;

/// Every worker loop stops after this many operations if the crash has not stopped it first.
const MAX_OPS: u64 = 3000;
const SHARED: [&str; 2] = ["orders", "events"];
const CONSUMERS: [&str; 2] = ["billing", "audit"];
const DELETED: &str = "scratch";
const RETAINED: &str = "metrics";

fn open(sim: &SimStorage) -> io::Result<Walrus> {
    Walrus::builder()
        .data_dir("/cc")
        .storage(Arc::new(sim.clone()) as Arc<dyn Storage>)
        .consistency(ReadConsistency::StrictlyAtOnce)
        .fsync_schedule(FsyncSchedule::SyncEach)
        .segment_len(64 * 1024)
        .block_len(8 * 1024)
        .topic_retention(RETAINED, Retention::default().with_max_bytes(24 * 1024))
        .quiet(true)
        .build()
}

fn payload(topic: &str, offset: u64, rng: &mut Rng) -> Vec<u8> {
    let mut p = format!("{topic}@{offset}|").into_bytes();
    p.resize(p.len() + rng.below(900) as usize, b'.');
    p
}

/// What one thread saw, each event stamped with a global sequence number at completion.
#[derive(Debug, Default)]
struct Seen {
    /// (seq, topic, offset, payload) of acknowledged appends.
    appended: Vec<(u64, String, u64, Vec<u8>)>,
    /// (seq, topic, consumer, offset) of consumed entries.
    consumed: Vec<(u64, String, String, u64)>,
    /// (seq, end offset) of deletions of `DELETED` that returned.
    deleted: Vec<(u64, u64)>,
    /// (seq at the start, end offset) of every deletion attempted.
    deleting: Vec<(u64, u64)>,
    violations: Vec<String>,
}

struct Run<'a> {
    wal: &'a Walrus,
    seq: &'a AtomicU64,
    stop: &'a AtomicBool,
}

impl Run<'_> {
    fn stamp(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst)
    }

    fn appender(&self, topic: &str, mut rng: Rng) -> Seen {
        let mut seen = Seen::default();
        for _ in 0..MAX_OPS {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let next = self.wal.end_offset(topic).unwrap_or(0);
            let data = payload(topic, next, &mut rng);
            match self.wal.append(topic, &data) {
                Ok(o) => seen.appended.push((self.stamp(), topic.into(), o, data)),
                Err(_) => break,
            }
        }
        seen
    }

    /// A consumer; `dense`: it must see every offset (no retention, no deletion), and `pause`
    /// makes it lag behind the others.
    fn consumer(&self, topic: &str, name: &str, dense: bool, pause: Duration) -> Seen {
        let mut seen = Seen::default();
        let mut last: Option<u64> = None;
        for _ in 0..MAX_OPS {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            thread::sleep(pause);
            match self
                .wal
                .read_next_timeout(topic, name, Duration::from_millis(2))
            {
                Ok(Some(r)) => {
                    let stamp = self.stamp();
                    if !r.data.starts_with(format!("{topic}@").as_bytes()) {
                        seen.violations
                            .push(format!("{topic}/{name}: foreign entry at {}", r.offset));
                    }
                    let expected = last.map_or(0, |l| l + 1);
                    if r.offset < expected || (dense && r.offset != expected) {
                        seen.violations
                            .push(format!("{topic}/{name}: read {} after {last:?}", r.offset));
                    }
                    last = Some(r.offset);
                    seen.consumed
                        .push((stamp, topic.into(), name.into(), r.offset));
                }
                Ok(None) => {}
                Err(_) => break,
            }
        }
        seen
    }

    /// Appends to `DELETED`, deletes it, appends again, …
    fn deleter(&self, mut rng: Rng) -> Seen {
        let mut seen = Seen::default();
        'ops: for _ in 0..MAX_OPS / 10 {
            for _ in 0..1 + rng.below(20) {
                if self.stop.load(Ordering::SeqCst) {
                    break 'ops;
                }
                let next = self.wal.end_offset(DELETED).unwrap_or(0);
                let data = payload(DELETED, next, &mut rng);
                match self.wal.append(DELETED, &data) {
                    Ok(o) => seen.appended.push((self.stamp(), DELETED.into(), o, data)),
                    Err(_) => break 'ops,
                }
                if rng.chance(30) && self.wal.read_next_as(DELETED, "tail", true).is_err() {
                    break 'ops;
                }
            }
            let end = self.wal.end_offset(DELETED).unwrap_or(0);
            seen.deleting.push((self.stamp(), end));
            match self.wal.delete_topic(DELETED) {
                Ok(true) => seen.deleted.push((self.stamp(), end)),
                Ok(false) => seen.violations.push("deletion found no topic".into()),
                Err(_) => break,
            }
        }
        seen
    }
}

/// What the threads of the seeds got done before their power cuts: the suite checks that each
/// kind of call completed somewhere, so that checks which accept a call failing "after the
/// cut" cannot pass a run in which such calls only ever hang until it.
#[derive(Debug, Default)]
struct Progress {
    appended: u64,
    consumed: u64,
    /// By the slow consumer of the retained topic.
    consumed_retained: u64,
    deleted: u64,
}

impl Progress {
    fn add(&mut self, seen: &[Seen], crash_seq: u64) {
        for s in seen {
            self.appended += s.appended.iter().filter(|a| a.0 < crash_seq).count() as u64;
            for c in s.consumed.iter().filter(|c| c.0 < crash_seq) {
                match c.1.as_str() {
                    RETAINED => self.consumed_retained += 1,
                    _ => self.consumed += 1,
                }
            }
            self.deleted += s.deleted.iter().filter(|d| d.0 < crash_seq).count() as u64;
        }
    }
}

fn run(seed: u64, progress: &mut Progress) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let sim = SimStorage::new(seed);
    sim.set_sync_latency(Duration::from_micros(100 + rng.below(400)));
    let crash_after = Duration::from_millis(30 + rng.below(170));
    let cut_delay = Duration::from_micros(rng.below(3000));
    let wal = match open(&sim) {
        Ok(w) => w,
        Err(e) => return vec![format!("open: {e}")],
    };
    // The consumers exist from the start: each must see every entry.
    for topic in SHARED {
        for c in CONSUMERS {
            if let Err(e) = wal.commit_as(topic, c, 0).or_else(|_| {
                wal.append(topic, &payload(topic, 0, &mut rng))?;
                wal.commit_as(topic, c, 0)
            }) {
                return vec![format!("setup: {e}")];
            }
        }
    }
    let seq = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let all: Mutex<Vec<Seen>> = Mutex::new(Vec::new());
    let run = Run {
        wal: &wal,
        seq: &seq,
        stop: &stop,
    };
    let crash_seq = thread::scope(|s| {
        let r = &run;
        let all = &all;
        for (i, topic) in SHARED.iter().chain([&RETAINED]).enumerate() {
            let rng = rng.fork(1 + i as u64);
            s.spawn(move || {
                let seen = r.appender(topic, rng);
                all.lock().unwrap().push(seen)
            });
        }
        for topic in SHARED {
            for (i, c) in CONSUMERS.iter().enumerate() {
                // The second consumer lags: blocks the first consumed must wait for it.
                let pause = Duration::from_micros(if i == 0 { 0 } else { 1500 });
                s.spawn(move || {
                    let seen = r.consumer(topic, c, true, pause);
                    all.lock().unwrap().push(seen)
                });
            }
        }
        s.spawn(move || {
            let seen = r.consumer(RETAINED, "slow", false, Duration::from_millis(3));
            all.lock().unwrap().push(seen)
        });
        let drng = rng.fork(50);
        s.spawn(move || {
            let seen = r.deleter(drng);
            all.lock().unwrap().push(seen)
        });
        thread::sleep(crash_after);
        let crash_seq = seq.fetch_add(1, Ordering::SeqCst);
        // The workers go on until the cut: what they do after the stamp may or may not
        // survive, and the checks must allow for it. On a loaded machine this thread can be
        // descheduled right here; a pause of its own makes that window part of every seed.
        thread::sleep(cut_delay);
        sim.crash(CrashMode::DropUnsynced);
        stop.store(true, Ordering::SeqCst);
        crash_seq
    });
    drop(wal);
    sim.set_sync_latency(Duration::ZERO);
    let seen = all.into_inner().unwrap();
    progress.add(&seen, crash_seq);
    let mut violations: Vec<String> = seen.iter().flat_map(|s| s.violations.clone()).collect();
    let wal = match open(&sim) {
        Ok(w) => w,
        Err(e) => {
            violations.push(format!("reopen after the crash failed: {e}"));
            return violations;
        }
    };
    let before = |stamp: u64| stamp < crash_seq;
    let appended: BTreeMap<(String, u64), Vec<u8>> = seen
        .iter()
        .flat_map(|s| &s.appended)
        .filter(|a| before(a.0))
        .map(|(_, t, o, d)| ((t.clone(), *o), d.clone()))
        .collect();
    let mut consumed: BTreeMap<(String, String), u64> = BTreeMap::new();
    // Every consumption seen, before or after the stamp: what a cursor may have reached.
    let mut consumed_any: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (stamp, t, c, o) in seen.iter().flat_map(|s| &s.consumed) {
        let e = consumed_any.entry((t.clone(), c.clone())).or_default();
        *e = (*e).max(o + 1);
        if before(*stamp) {
            let e = consumed.entry((t.clone(), c.clone())).or_default();
            *e = (*e).max(o + 1);
        }
    }

    // 1 and 2: shared topics.
    for topic in SHARED {
        let cursors: Vec<u64> = CONSUMERS
            .iter()
            .map(|c| wal.cursor_as(topic, c).unwrap_or(0))
            .collect();
        for (c, cursor) in CONSUMERS.iter().zip(&cursors) {
            let had = consumed
                .get(&(topic.into(), (*c).into()))
                .copied()
                .unwrap_or(0);
            if *cursor < had {
                violations.push(format!(
                    "{topic}/{c}: cursor {cursor} after consuming up to {had}"
                ));
            }
            // Nor past what it consumed: one read of its own at most may have been in flight
            // at the cut (each consumer is one thread, reading in turn).
            let most = consumed_any
                .get(&(topic.into(), (*c).into()))
                .copied()
                .unwrap_or(0)
                + 1;
            if *cursor > most {
                violations.push(format!(
                    "{topic}/{c}: cursor {cursor} passes entries it never consumed (up to {most})"
                ));
            }
        }
        let lowest = cursors.iter().copied().min().unwrap_or(0);
        for ((t, o), data) in
            appended.range((topic.to_string(), lowest)..(topic.to_string(), u64::MAX))
        {
            debug_assert_eq!(t, topic);
            match wal.read_at(topic, *o) {
                Ok(Some(e)) if e.data == *data => {}
                other => violations.push(format!(
                    "{topic}@{o}: acknowledged and unconsumed, but reads {:?}",
                    other.map(|e| e.map(|e| e.data.len()))
                )),
            }
        }
        for (c, cursor) in CONSUMERS.iter().zip(&cursors) {
            let mut expect = *cursor;
            for _ in 0..100_000 {
                match wal.read_next_as(topic, c, true) {
                    Ok(Some(r)) => {
                        if r.offset < expect {
                            violations.push(format!("{topic}/{c}: {} re-delivered", r.offset));
                        }
                        expect = r.offset + 1;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        violations.push(format!("{topic}/{c}: read after reopen: {e}"));
                        break;
                    }
                }
            }
        }
    }

    // 3: the deleted topic.
    let deleted: Vec<(u64, u64)> = seen.iter().flat_map(|s| s.deleted.clone()).collect();
    let last_acked = deleted.iter().filter(|d| before(d.0)).map(|d| d.0).max();
    // A deletion not acknowledged before the crash may or may not have happened: if it did, it
    // took everything below its end, the appends after the last acknowledged deletion
    // included. That holds for one stamped after `crash_seq` too: the power cut comes a moment
    // after that stamp, and a deletion (its floor synced) can complete in between. The one
    // that took effect is the latest whose end the reopened topic's floor reached (a hidden
    // topic: deleted last, nothing appended since).
    let listed = wal.topics().iter().any(|t| t == DELETED);
    let floor = wal.first_retained_offset(DELETED);
    let took_effect = seen
        .iter()
        .flat_map(|s| &s.deleting)
        .filter(|d| last_acked.is_none_or(|a| d.0 > a))
        .filter(|d| !deleted.iter().any(|a| a.1 == d.1 && before(a.0)))
        .map(|d| d.1)
        .filter(|&end| !listed || floor.is_some_and(|f| f >= end))
        .max();
    if let Some(end) = took_effect {
        for o in 0..end {
            if let Ok(Some(_)) = wal.read_at(DELETED, o) {
                violations.push(format!(
                    "{DELETED}@{o}: deleted (in flight) at {end}, readable"
                ));
                break;
            }
        }
    } else if let Some(&(stamp, end)) = deleted.iter().filter(|d| before(d.0)).max_by_key(|d| d.0) {
        let later: Vec<u64> = seen
            .iter()
            .flat_map(|s| &s.appended)
            .filter(|a| a.1 == DELETED && a.0 > stamp && before(a.0))
            .map(|a| a.2)
            .collect();
        for o in 0..end {
            if let Ok(Some(_)) = wal.read_at(DELETED, o) {
                violations.push(format!(
                    "{DELETED}@{o}: deleted at {end}, still readable (listed {:?}, retained from \
                     {:?}, end {:?}, appended after it {later:?})",
                    wal.topics(),
                    wal.first_retained_offset(DELETED),
                    wal.end_offset(DELETED)
                ));
                break;
            }
        }
        if later.is_empty() && wal.topics().iter().any(|t| t == DELETED) {
            // Appends after the deletion may have been in flight: only they can list it.
            if wal.first_retained_offset(DELETED).is_some_and(|f| f < end) {
                violations.push(format!("{DELETED}: listed with entries below its deletion"));
            }
        }
        for o in &later {
            let data = appended.get(&(DELETED.to_string(), *o));
            match (wal.read_at(DELETED, *o), data) {
                (Ok(Some(e)), Some(d)) if e.data == *d => {}
                (got, _) => violations.push(format!(
                    "{DELETED}@{o}: appended after the deletion, reads {:?}",
                    got.map(|e| e.map(|e| e.data.len()))
                )),
            }
        }
        if let Some(c) = wal.cursor_as(DELETED, "tail")
            && c < end
        {
            violations.push(format!(
                "{DELETED}/tail: a consumer of the deleted topic came back at {c}"
            ));
        }
    }
    let highest = appended
        .keys()
        .filter(|(t, _)| t == DELETED)
        .map(|(_, o)| o + 1)
        .chain(deleted.iter().filter(|d| before(d.0)).map(|d| d.1))
        .max()
        .unwrap_or(0);
    match wal.append(DELETED, b"after") {
        Ok(o) if o >= highest => {}
        other => violations.push(format!(
            "{DELETED}: append after reopen got {other:?}, below {highest}"
        )),
    }

    // 4: the retained topic.
    let first = wal.first_retained_offset(RETAINED).unwrap_or(0);
    for ((_, o), data) in
        appended.range((RETAINED.to_string(), first)..(RETAINED.to_string(), u64::MAX))
    {
        match wal.read_at(RETAINED, *o) {
            Ok(Some(e)) if e.data == *data => {}
            other => violations.push(format!(
                "{RETAINED}@{o}: acknowledged, retained from {first}, reads {:?}",
                other.map(|e| e.map(|e| e.data.len()))
            )),
        }
    }
    violations
}

#[test]
fn consumers_retention_and_deletion_survive_concurrent_crashes() {
    let seeds: Vec<u64> = match std::env::var("WALRUS_CRASH_CONSUMERS_SEED") {
        Ok(s) => vec![s.parse().expect("a seed number")],
        Err(_) => {
            let n = std::env::var("WALRUS_CRASH_CONSUMERS_SEEDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(12);
            (0..n).collect()
        }
    };
    let mut failed = Vec::new();
    let mut progress = Progress::default();
    let count = seeds.len();
    for seed in seeds {
        let v = run(seed, &mut progress);
        if !v.is_empty() {
            failed.push(format!("seed {seed}:\n  {}", v.join("\n  ")));
        }
    }
    eprintln!("consumers under crashes: {count} seeds; before the cuts: {progress:?}");
    // Every kind of call completed before some cut (a few seeds may do little each).
    if count >= 6 {
        assert!(
            progress.appended > 0
                && progress.consumed > 0
                && progress.consumed_retained > 0
                && progress.deleted > 0,
            "some kind of call never completed before a power cut in {count} seeds: {progress:?}"
        );
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
