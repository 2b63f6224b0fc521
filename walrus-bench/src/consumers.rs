//! The `consumers` family: many named consumers on one topic, and how fast a waiting read
//! wakes up after an append.
//!
//! - **Fan-out reads**: one topic prefilled with entries of the standard size mix; 1, 2, 4 and
//!   8 consumers, a thread each, drain all of it with consuming batch reads (256 KiB,
//!   `StrictlyAtOnce`: one cursor write per batch). Reported: entries/s summed over the
//!   consumers, and per consumer.
//! - **Wake-up**: a consumer blocks in `read_next_timeout`; an appender appends an entry
//!   stamped with the time of the append every 200 µs. Reported: p50/p99 of the time from the
//!   append's start to the consumer holding the entry, under the default schedule (entries
//!   visible when written) and under `SyncEach` (visible when durable: the wake-up comes from
//!   the sync).

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use walrus::{FsyncSchedule, ReadConsistency, Walrus};

use crate::payload::{PayloadPool, Sizes};
use crate::report::Target;
use crate::stats::{LatencySummary, new_histogram, record};

/// Consumer counts of the fan-out case.
pub const CONSUMERS: [usize; 4] = [1, 2, 4, 8];
/// Bytes each consuming batch read may return.
const BATCH_BYTES: usize = 256 << 10;
/// Time between the wake-up case's appends.
const APPEND_EVERY: Duration = Duration::from_micros(200);

/// One measured case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumersCase {
    /// `fan-out` or `wake-up`.
    pub kind: String,
    /// Consumers reading (fan-out), or the schedule (wake-up).
    pub label: String,
    /// Entries read, over every consumer.
    pub entries: u64,
    /// Seconds measured.
    pub secs: f64,
    /// Append-to-read latency (wake-up cases).
    pub wake: LatencySummary,
    /// The error, when the case failed.
    pub error: Option<String>,
}

impl ConsumersCase {
    /// Entries read per second, over every consumer.
    #[must_use]
    pub fn entries_per_sec(&self) -> f64 {
        crate::stats::per_sec(self.entries as f64, self.secs)
    }

    fn failed(kind: &str, label: String, e: &io::Error) -> Self {
        Self {
            kind: kind.into(),
            label,
            entries: 0,
            secs: 0.0,
            wake: LatencySummary::default(),
            error: Some(e.to_string()),
        }
    }
}

/// Runs every case in directories under `root` (removed after each), `entries` entries per
/// fan-out topic and `duration` per wake-up case.
pub fn run(root: &Path, entries: u64, duration: Duration) -> Vec<ConsumersCase> {
    let pool = PayloadPool::new(Sizes::STANDARD, 4096, 0xC0);
    let mut cases = Vec::new();
    for (i, n) in CONSUMERS.into_iter().enumerate() {
        let dir = root.join(format!("consumers-fan-out-{i}"));
        let label = format!("{n} consumers");
        cases.push(
            fan_out(&dir, n, entries, &pool)
                .unwrap_or_else(|e| ConsumersCase::failed("fan-out", label, &e)),
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    for (i, schedule) in [FsyncSchedule::Milliseconds(200), FsyncSchedule::SyncEach]
        .into_iter()
        .enumerate()
    {
        let dir = root.join(format!("consumers-wake-{i}"));
        let label = format!("{schedule:?}");
        cases.push(
            wake_up(&dir, schedule, duration)
                .unwrap_or_else(|e| ConsumersCase::failed("wake-up", label, &e)),
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    cases
}

fn open(dir: &Path, schedule: FsyncSchedule) -> io::Result<Walrus> {
    Walrus::builder()
        .data_dir(dir)
        .consistency(ReadConsistency::StrictlyAtOnce)
        .fsync_schedule(schedule)
        .quiet(true)
        .build()
}

fn fan_out(
    dir: &Path,
    consumers: usize,
    entries: u64,
    pool: &PayloadPool,
) -> io::Result<ConsumersCase> {
    let wal = open(dir, FsyncSchedule::NoFsync)?;
    let names: Vec<String> = (0..consumers).map(|c| format!("c{c}")).collect();
    wal.append("t", pool.get(0))?;
    for name in &names {
        // Every consumer exists before anything is released.
        wal.commit_as("t", name, 0)?;
    }
    for i in 1..entries {
        wal.append("t", pool.get(i as usize))?;
    }
    let started = Instant::now();
    let read: io::Result<Vec<u64>> = thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|name| {
                let wal = &wal;
                s.spawn(move || -> io::Result<u64> {
                    let mut n = 0;
                    while n < entries {
                        let got = wal.read_records_as("t", name, BATCH_BYTES, true)?;
                        if got.is_empty() {
                            return Err(io::Error::other(format!(
                                "{name}: drained after {n} of {entries} entries"
                            )));
                        }
                        n += got.len() as u64;
                    }
                    Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("consumer panicked")))
            })
            .collect()
    });
    let secs = started.elapsed().as_secs_f64();
    Ok(ConsumersCase {
        kind: "fan-out".into(),
        label: format!("{consumers} consumers"),
        entries: read?.iter().sum(),
        secs,
        wake: LatencySummary::default(),
        error: None,
    })
}

fn wake_up(dir: &Path, schedule: FsyncSchedule, duration: Duration) -> io::Result<ConsumersCase> {
    let wal = Arc::new(open(dir, schedule)?);
    let base = Instant::now();
    let stop = AtomicBool::new(false);
    let (hist, read) = thread::scope(|s| -> io::Result<_> {
        let consumer = s.spawn(|| -> io::Result<_> {
            let mut h = new_histogram();
            let mut read = 0u64;
            while !stop.load(Ordering::Acquire) {
                if let Some(r) = wal.read_next_timeout("t", "waiter", Duration::from_millis(50))? {
                    let sent = r
                        .data
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_le_bytes)
                        .ok_or_else(|| io::Error::other("entry without a time stamp"))?;
                    let now = u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    record(&mut h, Duration::from_nanos(now.saturating_sub(sent)));
                    read += 1;
                }
            }
            Ok((h, read))
        });
        let appended = (|| -> io::Result<()> {
            // The consumer is waiting before the first append.
            wal.read_next_as("t", "waiter", true)?;
            let end = Instant::now() + duration;
            while Instant::now() < end {
                thread::sleep(APPEND_EVERY);
                let sent = u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let mut entry = sent.to_le_bytes().to_vec();
                entry.resize(100, 0);
                wal.append("t", &entry)?;
            }
            Ok(())
        })();
        stop.store(true, Ordering::Release);
        let consumed = consumer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("consumer panicked")));
        appended?;
        consumed
    })?;
    Ok(ConsumersCase {
        kind: "wake-up".into(),
        label: format!("{schedule:?}"),
        entries: read,
        secs: duration.as_secs_f64(),
        wake: LatencySummary::of(&hist),
        error: None,
    })
}

/// The family's table.
#[must_use]
pub fn table(cases: &[ConsumersCase]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<30} {:>12} {:>14} {:>10} {:>10}",
        "consumers case", "entries/s", "per consumer", "wake p50", "wake p99"
    );
    for c in cases {
        let name = format!("{} {}", c.kind, c.label);
        if let Some(e) = &c.error {
            let _ = writeln!(out, "{name:<30} FAILED: {e}");
            continue;
        }
        if c.kind == "fan-out" {
            let n: f64 = c
                .label
                .split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(1.0);
            let _ = writeln!(
                out,
                "{name:<30} {:>12.0} {:>14.0} {:>10} {:>10}",
                c.entries_per_sec(),
                c.entries_per_sec() / n,
                "-",
                "-"
            );
        } else {
            let _ = writeln!(
                out,
                "{name:<30} {:>12.0} {:>14} {:>8.1}µs {:>8.1}µs",
                c.entries_per_sec(),
                "-",
                c.wake.p50_ns as f64 / 1e3,
                c.wake.p99_ns as f64 / 1e3
            );
        }
    }
    out
}

/// Fan-out: eight consumers together read at least as fast as one (they share the page
/// cache; two cores bound the gain). Wake-up: a waiting read holds the entry within 1 ms of
/// the append at the median, when entries are visible once written.
#[must_use]
pub fn targets(cases: &[ConsumersCase]) -> Vec<Target> {
    let ok = |c: &&ConsumersCase| c.error.is_none() && c.entries > 0;
    let find = |kind: &str, label: &str| {
        cases
            .iter()
            .filter(ok)
            .find(|c| c.kind == kind && c.label == label)
    };
    let fan = find("fan-out", "1 consumers")
        .zip(find("fan-out", "8 consumers"))
        .map(|(one, eight)| {
            let ratio = eight.entries_per_sec() / one.entries_per_sec();
            (
                format!("{ratio:.2}x one consumer's entries/s"),
                ratio >= 1.0,
            )
        });
    let wake = find("wake-up", "Milliseconds(200)").map(|c| {
        (
            format!(
                "p50 {:.1} µs, p99 {:.1} µs",
                c.wake.p50_ns as f64 / 1e3,
                c.wake.p99_ns as f64 / 1e3
            ),
            c.wake.p50_ns <= 1_000_000,
        )
    });
    vec![
        Target::judged("consumers: 8 on one topic read ≥ 1 consumer's rate", fan),
        Target::judged("consumers: a waiting read wakes within 1 ms (p50)", wake),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_family_runs_small_and_meets_its_own_accounting() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("consumers");
        let cases = run(&dir, 2_000, Duration::from_millis(100));
        assert_eq!(cases.len(), CONSUMERS.len() + 2);
        for c in &cases {
            assert!(c.error.is_none(), "{c:?}");
        }
        for (c, n) in cases.iter().zip(CONSUMERS) {
            assert_eq!(
                c.entries,
                2_000 * n as u64,
                "every consumer read everything"
            );
        }
        assert!(
            cases
                .iter()
                .filter(|c| c.kind == "wake-up")
                .all(|c| c.wake.calls > 0)
        );
        // Judged (the rows measured); met or not is the suite's to say, not a unit test's.
        for t in targets(&cases) {
            assert!(t.met.is_some(), "{t:?}");
        }
    }
}
