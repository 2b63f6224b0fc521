//! The `tiering` family: tiered storage against a real S3-compatible server (moto on
//! loopback).
//!
//! - **upload**: one instance appends `entries` 1000-byte entries to a tiered topic (1 MiB
//!   blocks, 1 MiB kept locally) and flushes; its tier thread uploads the sealed blocks as they
//!   seal. Timed from the first append until the tier holds every sealed block (uploads run
//!   during the fill). Reported: MiB/s and blocks/s.
//! - **local read** / **tiered read**: a consumer drains the topic from offset 0 in batches of
//!   256 KiB, once from an untiered instance holding everything on disk, once from the tiered
//!   instance reopened (an empty read cache), where all but the last blocks come from S3 by
//!   ranged GETs. Reported: entries/s and MiB/s, in the same run.
//!
//! Moto is Python in one process: absolute rates are the server's, not S3's.

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use walrus::tier::RemoteTier;
use walrus::{FsyncSchedule, Retention, Tiering, Walrus, WalrusBuilder};
use walrus_s3::S3Tier;
use walrus_s3::moto::MotoServer;

use crate::report::Target;

const ENTRY_LEN: usize = 1000;
const TOPIC: &str = "tiered";
/// Longest wait for the uploads of one case.
const UPLOAD_DEADLINE: Duration = Duration::from_secs(300);

/// One measured case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TieringCase {
    /// `upload`, `local read` or `tiered read`.
    pub kind: String,
    /// Entries moved.
    pub entries: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Seconds measured.
    pub secs: f64,
    /// The error, when the case failed.
    pub error: Option<String>,
}

impl TieringCase {
    /// Entries per second.
    #[must_use]
    pub fn per_sec(&self) -> f64 {
        crate::stats::per_sec(self.entries as f64, self.secs)
    }

    /// Payload MiB per second.
    #[must_use]
    pub fn mib_per_sec(&self) -> f64 {
        crate::stats::per_sec(self.bytes as f64 / f64::from(1 << 20), self.secs)
    }
}

fn entry(i: u64) -> Vec<u8> {
    let mut e = vec![(i % 251) as u8; ENTRY_LEN];
    e[..8].copy_from_slice(&i.to_le_bytes());
    e
}

fn failed(kind: &str, e: &io::Error) -> TieringCase {
    TieringCase {
        kind: kind.into(),
        entries: 0,
        bytes: 0,
        secs: 0.0,
        error: Some(e.to_string()),
    }
}

fn open(dir: &Path, tier: Option<&Arc<dyn RemoteTier>>) -> io::Result<Walrus> {
    let mut b = WalrusBuilder::new()
        .data_dir(dir)
        .fsync_schedule(FsyncSchedule::Milliseconds(200))
        .quiet(true);
    if let Some(tier) = tier {
        b = b.tier(Arc::clone(tier), "bench").topic_tiering(
            TOPIC,
            Tiering::keeping(Retention::unlimited().with_max_bytes(1 << 20)),
        );
    }
    b.build()
}

fn fill(wal: &Walrus, entries: u64) -> io::Result<()> {
    for i in 0..entries {
        wal.append(TOPIC, &entry(i))?;
    }
    wal.flush()
}

/// Drains the topic with a consumer, checking every entry; the case.
fn drain(wal: &Walrus, kind: &str, entries: u64) -> io::Result<TieringCase> {
    let started = Instant::now();
    let mut next = 0;
    while next < entries {
        let batch = wal.read_records_as(TOPIC, "bench", 256 << 10, true)?;
        if batch.is_empty() {
            return Err(io::Error::other(format!(
                "{kind}: the consumer stopped at {next} of {entries}"
            )));
        }
        for r in batch {
            if r.offset != next || r.data != entry(next) {
                return Err(io::Error::other(format!("{kind}: wrong entry at {next}")));
            }
            next += 1;
        }
    }
    Ok(TieringCase {
        kind: kind.into(),
        entries,
        bytes: entries * ENTRY_LEN as u64,
        secs: started.elapsed().as_secs_f64(),
        error: None,
    })
}

fn tiered_entries(wal: &Walrus) -> u64 {
    wal.stats()
        .topics
        .into_iter()
        .find(|t| t.name == TOPIC)
        .map_or(0, |t| t.tiered_entries)
}

/// Runs the three cases with `entries` entries under `root` (directories removed after).
pub fn run(root: &Path, entries: u64) -> Vec<TieringCase> {
    let server = match MotoServer::start() {
        Ok(s) => s,
        Err(e) => return vec![failed("upload", &e)],
    };
    let tier: Arc<dyn RemoteTier> = match server
        .store("walrus-bench-tier")
        .and_then(|store| S3Tier::new(store, "tiering"))
    {
        Ok(t) => Arc::new(t),
        Err(e) => return vec![failed("upload", &e)],
    };
    let mut cases = Vec::new();
    let local_dir = root.join("tiering-local");
    cases.push(
        open(&local_dir, None)
            .and_then(|wal| {
                fill(&wal, entries)?;
                drain(&wal, "local read", entries)
            })
            .unwrap_or_else(|e| failed("local read", &e)),
    );
    let _ = std::fs::remove_dir_all(&local_dir);

    let tiered_dir = root.join("tiering-tiered");
    let uploaded = open(&tiered_dir, Some(&tier)).and_then(|wal| {
        // Uploads run while the fill does: the clock starts with the fill, so the rate is
        // from the first entry written to the last uploaded.
        let started = Instant::now();
        fill(&wal, entries)?;
        // Every block but the one being written: within one block's entries of the end.
        let want = entries.saturating_sub(((1 << 20) / ENTRY_LEN) as u64 + 1);
        while tiered_entries(&wal) < want {
            if started.elapsed() > UPLOAD_DEADLINE {
                return Err(io::Error::other(format!(
                    "only {} of {want} entries uploaded in {UPLOAD_DEADLINE:?}",
                    tiered_entries(&wal)
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let secs = started.elapsed().as_secs_f64();
        let done = tiered_entries(&wal);
        Ok(TieringCase {
            kind: "upload".into(),
            entries: done,
            bytes: done * ENTRY_LEN as u64,
            secs,
            error: None,
        })
    });
    cases.push(uploaded.unwrap_or_else(|e| failed("upload", &e)));
    // Reopened: the read cache is empty, the local disk holds the last 1 MiB.
    cases.push(
        open(&tiered_dir, Some(&tier))
            .and_then(|wal| drain(&wal, "tiered read", entries))
            .unwrap_or_else(|e| failed("tiered read", &e)),
    );
    let _ = std::fs::remove_dir_all(&tiered_dir);
    cases
}

/// The family's table, with tiered reads as a fraction of local ones.
#[must_use]
pub fn table(cases: &[TieringCase]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:>10} {:>12} {:>9} {:>8}",
        "tiering case", "entries", "entries/s", "MiB/s", "secs"
    );
    for c in cases {
        if let Some(e) = &c.error {
            let _ = writeln!(out, "{:<14} FAILED: {e}", c.kind);
            continue;
        }
        let _ = writeln!(
            out,
            "{:<14} {:>10} {:>12.0} {:>9.1} {:>8.2}",
            c.kind,
            c.entries,
            c.per_sec(),
            c.mib_per_sec(),
            c.secs
        );
    }
    let local = cases
        .iter()
        .find(|c| c.kind == "local read" && c.error.is_none());
    let tiered = cases
        .iter()
        .find(|c| c.kind == "tiered read" && c.error.is_none());
    if let Some((l, t)) = local.zip(tiered) {
        let _ = writeln!(
            out,
            "(tiered reads at {:.2}x local reads, same run; moto on loopback)",
            t.mib_per_sec() / l.mib_per_sec().max(f64::MIN_POSITIVE)
        );
    }
    out
}

/// Reported, judged only on completeness: every tiered entry is read back.
#[must_use]
pub fn targets(cases: &[TieringCase]) -> Vec<Target> {
    let local = cases.iter().find(|c| c.kind == "local read");
    let tiered = cases.iter().find(|c| c.kind == "tiered read");
    // A read case is `Ok` only once it read every entry back, each checked (offset and bytes):
    // missed when the tiered read failed where the local one did not; unjudged when the local
    // read failed too (nothing to compare with).
    let measured = local
        .zip(tiered)
        .and_then(|(l, t)| match (&l.error, &t.error) {
            (None, None) => Some((
                format!(
                    "{} of {} entries read back from the tier's instance, {:.1} vs {:.1} MiB/s local",
                    t.entries,
                    l.entries,
                    t.mib_per_sec(),
                    l.mib_per_sec()
                ),
                true,
            )),
            (None, Some(e)) => Some((format!("the tiered read failed: {e}"), false)),
            (Some(_), _) => None,
        });
    vec![Target::judged(
        "tiering: a reopened tiered instance reads back every entry",
        measured,
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_family_runs_small() {
        let dir = tempfile::tempdir().unwrap();
        let cases = run(dir.path(), 3000);
        for c in &cases {
            assert!(c.error.is_none(), "{c:?}");
        }
        assert_eq!(cases.len(), 3);
        assert!(cases[1].entries >= 1900, "{:?}", cases[1]);
        assert_eq!(targets(&cases)[0].met, Some(true));
        assert!(table(&cases).contains("tiered reads at"));
        // A tiered read that failed misses the target.
        let mut failed = cases.clone();
        let tiered = failed.iter_mut().find(|c| c.kind == "tiered read").unwrap();
        tiered.error = Some("the consumer stopped at 7 of 3000".into());
        let t = &targets(&failed)[0];
        assert_eq!(t.met, Some(false), "{t:?}");
        assert!(t.measured.contains("stopped at 7"), "{t:?}");
    }
}
