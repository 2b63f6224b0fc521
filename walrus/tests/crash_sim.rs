//! The simulated crash-consistency suite: seeded random workloads on the simulated backend,
//! crashed at a random point (between operations or in the middle of one), reopened, and
//! checked against an oracle of what was acknowledged.
//!
//! `WALRUS_CRASH_SEEDS=N` runs N seeds (default 500); `WALRUS_CRASH_SEED=S` replays one.
//! `cargo xtask crash --seeds N` runs many in release mode.

use std::collections::HashMap;
use std::sync::Arc;

use walrus::Storage;
use walrus::sim::{CrashMode, Fault, FaultRule, OpKind, SimStorage};
use walrus::{FsyncSchedule, ReadConsistency, RecoveryMode, Walrus};

/// The workspace's seeded generator: a failing seed replays on any build.
use walrus_io::SeededRng as Rng;

/// What the oracle knows about one topic.
#[derive(Debug, Default)]
struct TopicModel {
    /// Payloads by offset, acknowledged appends only.
    acked: Vec<Vec<u8>>,
    /// Batches (start, len), acknowledged or in flight at the crash.
    batches: Vec<(u64, u64)>,
    /// Entries below this offset were acknowledged durable.
    durable: u64,
    /// Entries consumed by acknowledged consuming reads.
    consumed: u64,
    /// The cursor is durable at least up to here.
    cursor_durable: u64,
    /// Consuming reads since the cursor was last made durable (AtLeastOnce).
    since_persist: u64,
    /// Entries of the append in flight when the crash hit (may or may not be there).
    inflight: Vec<Vec<u8>>,
    /// A consuming read was in flight when the crash hit.
    inflight_read: bool,
}

struct Setup {
    schedule: FsyncSchedule,
    consistency: ReadConsistency,
    mid_op: bool,
    mark_interval: std::time::Duration,
}

fn open(sim: &SimStorage, s: &Setup, recovery: RecoveryMode) -> std::io::Result<Walrus> {
    Walrus::builder()
        .data_dir("/crash")
        .storage(Arc::new(sim.clone()) as Arc<dyn Storage>)
        .consistency(s.consistency)
        .fsync_schedule(s.schedule)
        .recovery_mode(recovery)
        .segment_len(64 * 1024)
        .block_len(8 * 1024)
        // Deterministic: no wall-clock decisions (a replayed seed must do the same storage ops).
        .durable_mark_interval(s.mark_interval)
        .inline_maintenance(true)
        .quiet(true)
        .build()
}

fn payload(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(10) {
        0 => 0,
        1..=6 => 1 + rng.below(1100),
        7 | 8 => 1 + rng.below(3000),
        _ => 5000 + rng.below(12_000), // larger than a block
    } as usize;
    let fill = rng.next_u64();
    (0..len)
        .map(|i| (fill >> (i % 8 * 8)) as u8 ^ i as u8)
        .collect()
}

fn run_seed(seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let schedule = match rng.below(3) {
        0 => FsyncSchedule::SyncEach,
        1 => FsyncSchedule::NoFsync,
        _ => FsyncSchedule::Milliseconds(3_600_000), // the syncer never fires on its own here
    };
    let consistency = if rng.chance(50) {
        ReadConsistency::StrictlyAtOnce
    } else {
        ReadConsistency::AtLeastOnce {
            persist_every: 1 + rng.below(4) as u32,
        }
    };
    let crash = match rng.below(4) {
        0 => CrashMode::DropUnsynced,
        1 => CrashMode::TearLastWrite,
        2 => CrashMode::RandomSectors,
        _ => CrashMode::KeepWritten,
    };
    let mark_interval = if rng.chance(50) {
        std::time::Duration::ZERO
    } else {
        std::time::Duration::from_secs(3600)
    };
    let setup = Setup {
        schedule,
        consistency,
        mid_op: rng.chance(50),
        mark_interval,
    };
    let ctx = format!(
        "seed {seed} ({schedule:?}, {consistency:?}, {crash:?}, mid-op {})",
        setup.mid_op
    );
    let sim = SimStorage::new(seed);
    let topics: Vec<String> = (0..1 + rng.below(3))
        .map(|i| format!("topic-{i}"))
        .collect();
    let mut model: HashMap<String, TopicModel> = topics
        .iter()
        .map(|t| (t.clone(), TopicModel::default()))
        .collect();
    let ops = 10 + rng.below(150);
    let crash_at = rng.below(ops);
    let persist_every = match consistency {
        ReadConsistency::StrictlyAtOnce => 1,
        ReadConsistency::AtLeastOnce { persist_every } => u64::from(persist_every),
    };

    let wal = open(&sim, &setup, RecoveryMode::TolerateCorruptedTail)
        .map_err(|e| format!("{ctx}: open: {e}"))?;
    for op in 0..ops {
        let crashing = op == crash_at;
        if crashing && setup.mid_op {
            // The power fails during one of the next few storage operations of this op; now
            // and then at its directory sync (if it makes a file), where a file's name is not
            // durable yet.
            let rule = FaultRule::new(Fault::Crash(crash));
            sim.inject(if rng.chance(20) {
                rule.op(OpKind::SyncDir)
            } else {
                rule.nth(rng.below(4))
            });
        }
        // Whether the power was cut during this op: only then may it fail (before the cut, a
        // failure is a failure).
        let cut = |sim: &SimStorage| crashing && setup.mid_op && sim.stats().crashes > 0;
        let topic = topics[rng.below(topics.len() as u64) as usize].clone();
        let m = model.get_mut(&topic).ok_or("no topic")?;
        match rng.below(10) {
            0..=3 => {
                let p = payload(&mut rng);
                match wal.append_for_topic(&topic, &p) {
                    Ok(()) => {
                        m.acked.push(p);
                        if schedule == FsyncSchedule::SyncEach {
                            m.durable = m.acked.len() as u64;
                        }
                    }
                    Err(_) if cut(&sim) => m.inflight = vec![p],
                    Err(e) => return Err(format!("{ctx}: append failed before the crash: {e}")),
                }
            }
            4 | 5 => {
                let batch: Vec<Vec<u8>> =
                    (0..1 + rng.below(8)).map(|_| payload(&mut rng)).collect();
                let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
                let start = m.acked.len() as u64;
                m.batches.push((start, batch.len() as u64));
                match wal.batch_append_for_topic(&topic, &refs) {
                    Ok(()) => {
                        m.acked.extend(batch);
                        if schedule == FsyncSchedule::SyncEach {
                            m.durable = m.acked.len() as u64;
                        }
                    }
                    Err(_) if cut(&sim) => m.inflight = batch,
                    Err(e) => return Err(format!("{ctx}: batch failed before the crash: {e}")),
                }
            }
            6 | 7 => {
                let consume = rng.chance(70);
                match wal.read_next(&topic, consume) {
                    Ok(Some(e)) => {
                        let expect = m.acked.get(m.consumed as usize);
                        if expect != Some(&e.data) {
                            return Err(format!(
                                "{ctx}: read at {} returned the wrong entry",
                                m.consumed
                            ));
                        }
                        if consume {
                            m.consumed += 1;
                            m.since_persist += 1;
                            if m.since_persist >= persist_every {
                                m.since_persist = 0;
                                if schedule == FsyncSchedule::SyncEach
                                    || crash == CrashMode::KeepWritten
                                {
                                    m.cursor_durable = m.consumed;
                                }
                            }
                        }
                    }
                    Ok(None) => {
                        if m.consumed != m.acked.len() as u64 {
                            return Err(format!(
                                "{ctx}: read returned nothing with entries unread"
                            ));
                        }
                    }
                    Err(_) if cut(&sim) => m.inflight_read = consume,
                    Err(e) => return Err(format!("{ctx}: read failed before the crash: {e}")),
                }
            }
            8 => match wal.flush() {
                Ok(()) => {
                    for m in model.values_mut() {
                        m.durable = m.acked.len() as u64;
                        m.cursor_durable = m.consumed;
                        m.since_persist = 0;
                    }
                }
                Err(_) if cut(&sim) => {}
                Err(e) => return Err(format!("{ctx}: flush failed before the crash: {e}")),
            },
            _ => {
                let p = payload(&mut rng);
                match wal.append_with_ticket(&topic, &p) {
                    Ok(ticket) => {
                        m.acked.push(p);
                        match ticket.wait() {
                            // A ticket's sync covers every append before it, in every topic.
                            Ok(_) => model
                                .values_mut()
                                .for_each(|m| m.durable = m.acked.len() as u64),
                            Err(_) if cut(&sim) => {}
                            Err(e) => {
                                return Err(format!("{ctx}: ticket failed before the crash: {e}"));
                            }
                        }
                    }
                    Err(_) if cut(&sim) => m.inflight = vec![p],
                    Err(e) => {
                        return Err(format!("{ctx}: ticket append failed before the crash: {e}"));
                    }
                }
            }
        }
        if crashing {
            if !setup.mid_op || sim.stats().crashes == 0 {
                sim.clear_faults();
                sim.crash(crash);
            }
            break;
        }
    }
    sim.clear_faults();
    // The process died: after the crash every old handle fails, so dropping runs no clean
    // close (and stops the instance's background thread).
    drop(wal);

    let wal = open(&sim, &setup, RecoveryMode::TolerateCorruptedTail)
        .map_err(|e| format!("{ctx}: reopen: {e}"))?;
    if std::env::var_os("WALRUS_CRASH_VERBOSE").is_some() {
        eprintln!("{ctx}\n{:#?}", wal.recovery_report());
    }
    for (topic, m) in &model {
        let end = wal.end_offset(topic).unwrap_or(0);
        let acked = m.acked.len() as u64;
        if end < m.durable {
            return Err(format!(
                "{ctx}: {topic}: durable entries lost: end {end} < {}",
                m.durable
            ));
        }
        if end > acked + m.inflight.len() as u64 {
            return Err(format!(
                "{ctx}: {topic}: entries that were never appended: end {end} > {acked}"
            ));
        }
        let cursor = wal.cursor(topic).unwrap_or(0);
        for o in 0..end {
            let want = m
                .acked
                .get(o as usize)
                .or_else(|| m.inflight.get((o - acked) as usize));
            match wal.read_at(topic, o) {
                Ok(Some(got)) if Some(&got.data) == want => {}
                // Consumed entries whose space was released read as NotFound.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && o < cursor => {}
                // Unsynced entries a cursor had passed when the power failed are a gap: their
                // offsets are not reused, and nothing else is read there.
                Ok(None) if o >= m.durable && o < cursor => {}
                other => {
                    return Err(format!(
                        "{ctx}: {topic}@{o}: wrong or missing entry: {other:?}"
                    ));
                }
            }
        }
        // A batch is all there or all gone — except what was consumed before the crash (reads
        // may run ahead of durability under the lazy schedules).
        let cursor_now = wal.cursor(topic).unwrap_or(0);
        for &(start, len) in &m.batches {
            if start < end && start + len > end && end > cursor_now {
                return Err(format!(
                    "{ctx}: {topic}: batch {start}..{} is cut at {end}",
                    start + len
                ));
            }
        }
        if !m.inflight.is_empty() && end > acked && end != acked + m.inflight.len() as u64 {
            return Err(format!("{ctx}: {topic}: in-flight unit half there"));
        }
        let floor = m.cursor_durable.min(end);
        let slack = persist_every - 1;
        if cursor + slack < floor {
            return Err(format!(
                "{ctx}: {topic}: cursor {cursor} went back more than {slack} from {floor}"
            ));
        }
        if cursor > (m.consumed + u64::from(m.inflight_read)).max(m.cursor_durable) {
            return Err(format!(
                "{ctx}: {topic}: cursor {cursor} ahead of consumption {}",
                m.consumed
            ));
        }
        // Reading on from the cursor yields exactly the oracle's entries.
        let mut next = cursor;
        while let Some(rec) = wal
            .read_next_record(topic, true)
            .map_err(|e| format!("{ctx}: {topic}: {e}"))?
        {
            // Bounded: past every entry acknowledged or in flight, reading on is an error.
            if next > (m.acked.len() + m.inflight.len()) as u64 {
                return Err(format!("{ctx}: {topic}: reads on past every entry written"));
            }
            if rec.offset != next {
                return Err(format!(
                    "{ctx}: {topic}: read {} where {next} was due",
                    rec.offset
                ));
            }
            // The consuming path hands out the very bytes appended (checked apart from
            // `read_at` above: the two find their entries differently).
            let want = m
                .acked
                .get(next as usize)
                .or_else(|| m.inflight.get((next - acked) as usize));
            if Some(&rec.data) != want {
                return Err(format!(
                    "{ctx}: {topic}@{next}: the consuming read returned other bytes"
                ));
            }
            next += 1;
        }
        if next != end {
            return Err(format!(
                "{ctx}: {topic}: reads stopped at {next}, end is {end}"
            ));
        }
    }
    // Recovery made its cuts durable: after new appends and a clean close, the strictest mode
    // opens the directory without a single issue.
    let mut after = Vec::new();
    for topic in model.keys() {
        wal.append_for_topic(topic, b"after")
            .map_err(|e| format!("{ctx}: append after recovery: {e}"))?;
        after.push((topic.clone(), wal.end_offset(topic).unwrap_or(0)));
    }
    if crash == CrashMode::KeepWritten {
        // A kill, a reopen, new work flushed, then a power cut: what the reopen kept (its
        // files' names included) and the new work are there.
        wal.flush()
            .map_err(|e| format!("{ctx}: flush after recovery: {e}"))?;
        sim.crash(CrashMode::DropUnsynced);
        drop(wal);
        let wal = open(&sim, &setup, RecoveryMode::TolerateCorruptedTail)
            .map_err(|e| format!("{ctx}: reopen after the power cut: {e}"))?;
        for (topic, end) in &after {
            let got = wal
                .read_at(topic, end - 1)
                .map_err(|e| format!("{ctx}: {topic}: {e}"))?;
            if wal.end_offset(topic) < Some(*end) || got.map(|e| e.data) != Some(b"after".to_vec())
            {
                return Err(format!(
                    "{ctx}: {topic}: the entry flushed after the kill's recovery is lost to a \
                     power cut (end {:?}, was {end})",
                    wal.end_offset(topic)
                ));
            }
        }
    } else {
        drop(wal);
    }
    let wal = open(&sim, &setup, RecoveryMode::AbsoluteConsistency)
        .map_err(|e| format!("{ctx}: strict reopen: {e}"))?;
    if !wal.recovery_report().issues.is_empty() {
        return Err(format!(
            "{ctx}: issues after a clean close: {:?}",
            wal.recovery_report().issues
        ));
    }
    Ok(())
}

#[test]
fn simulated_crashes() {
    if let Ok(seed) = std::env::var("WALRUS_CRASH_SEED") {
        let seed: u64 = seed.parse().expect("WALRUS_CRASH_SEED is a number");
        if let Err(e) = run_seed(seed) {
            panic!("{e}");
        }
        return;
    }
    let seeds: u64 = std::env::var("WALRUS_CRASH_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    for seed in 0..seeds {
        if let Err(e) = run_seed(seed) {
            failures.push(format!(
                "{e}\n  replay: WALRUS_CRASH_SEED={seed} cargo test -p walrus --test crash_sim"
            ));
        }
    }
    eprintln!(
        "simulated crashes: {seeds} seeds in {:.1?}, {} failed",
        started.elapsed(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
