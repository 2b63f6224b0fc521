//! The `raft` family: replicated appends on a 3-node cluster on loopback, beside single-node
//! `SyncEach` appends in the same run.
//!
//! - **Replicated**: three [`walrus_raft::Node`]s in this process, talking raft over HTTP on
//!   127.0.0.1, each on its own directory; 1, 4 and 16 clients (tasks) append 100-byte entries
//!   to one topic through the leader. An append returns once a quorum made it durable and the
//!   leader applied it. Reported: appends/s, p50/p99 latency.
//! - **Single node**: the same clients as threads appending to one topic of one Walrus instance
//!   under `SyncEach`.

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use walrus::{FsyncSchedule, Walrus};
use walrus_raft::{Node, NodeConfig};

use crate::report::Target;
use crate::stats::{LatencySummary, new_histogram, record};

/// Client counts.
pub const CLIENTS: [usize; 3] = [1, 4, 16];
const ENTRY: [u8; 100] = [0x5a; 100];

/// One measured case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaftCase {
    /// `3-node raft` or `1-node SyncEach`.
    pub kind: String,
    /// Clients appending at once.
    pub clients: usize,
    /// Appends acknowledged.
    pub appends: u64,
    /// Seconds measured.
    pub secs: f64,
    /// Latency of one append.
    pub latency: LatencySummary,
    /// The error, when the case failed.
    pub error: Option<String>,
}

impl RaftCase {
    /// Acknowledged appends per second.
    #[must_use]
    pub fn per_sec(&self) -> f64 {
        crate::stats::per_sec(self.appends as f64, self.secs)
    }
}

const REPLICATED: &str = "3-node raft";
const SINGLE: &str = "1-node SyncEach";

/// Runs every case under `root` (directories removed after each), `duration` per case.
pub fn run(root: &Path, duration: Duration) -> Vec<RaftCase> {
    let mut cases = Vec::new();
    for (i, clients) in CLIENTS.into_iter().enumerate() {
        let dir = root.join(format!("raft-{i}"));
        let outcome = replicated(&dir, clients, duration);
        let _ = std::fs::remove_dir_all(&dir);
        cases.push(case(REPLICATED, clients, outcome));
        let dir = root.join(format!("raft-single-{i}"));
        let outcome = single(&dir, clients, duration);
        let _ = std::fs::remove_dir_all(&dir);
        cases.push(case(SINGLE, clients, outcome));
    }
    cases
}

fn case(kind: &str, clients: usize, outcome: io::Result<(Histogram<u64>, f64)>) -> RaftCase {
    match outcome {
        Ok((h, secs)) => RaftCase {
            kind: kind.into(),
            clients,
            appends: h.len(),
            secs,
            latency: LatencySummary::of(&h),
            error: None,
        },
        Err(e) => RaftCase {
            kind: kind.into(),
            clients,
            appends: 0,
            secs: 0.0,
            latency: LatencySummary::default(),
            error: Some(e.to_string()),
        },
    }
}

fn replicated(dir: &Path, clients: usize, duration: Duration) -> io::Result<(Histogram<u64>, f64)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut nodes = Vec::new();
        for id in 1..=3u64 {
            let listen = "127.0.0.1:0".parse().map_err(io::Error::other)?;
            nodes.push(Arc::new(
                Node::start(NodeConfig::new(id, dir.join(format!("n{id}")), listen)).await?,
            ));
        }
        let members: std::collections::BTreeMap<u64, openraft::BasicNode> =
            nodes.iter().map(|n| (n.id(), n.member())).collect();
        nodes[0]
            .raft()
            .initialize(members)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let leader = {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let current = nodes[0].raft().metrics().borrow().current_leader;
                if let Some(n) = current.and_then(|l| nodes.iter().find(|n| n.id() == l)) {
                    break Arc::clone(n);
                }
                if Instant::now() > deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no leader in 20 s"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        // Warm up: connections made, the first entries through.
        for _ in 0..20 {
            leader
                .append("bench", &ENTRY)
                .await
                .map_err(io::Error::other)?;
        }
        let started = Instant::now();
        let end = started + duration;
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let leader = Arc::clone(&leader);
                tokio::spawn(async move {
                    let mut h = new_histogram();
                    while Instant::now() < end {
                        let t = Instant::now();
                        leader
                            .append("bench", &ENTRY)
                            .await
                            .map_err(io::Error::other)?;
                        record(&mut h, t.elapsed());
                    }
                    Ok::<_, io::Error>(h)
                })
            })
            .collect();
        let mut all = new_histogram();
        let mut failed = None;
        for t in tasks {
            match t.await.map_err(io::Error::other).and_then(|r| r) {
                Ok(h) => all.add(&h).map_err(io::Error::other)?,
                Err(e) => failed = Some(e),
            }
        }
        let secs = started.elapsed().as_secs_f64();
        drop(leader);
        for n in nodes {
            if let Ok(n) = Arc::try_unwrap(n) {
                n.shutdown().await?;
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok((all, secs)),
        }
    })
}

fn single(dir: &Path, clients: usize, duration: Duration) -> io::Result<(Histogram<u64>, f64)> {
    let wal = Walrus::builder()
        .data_dir(dir)
        .fsync_schedule(FsyncSchedule::SyncEach)
        .quiet(true)
        .build()?;
    for _ in 0..20 {
        wal.append("bench", &ENTRY)?;
    }
    let started = Instant::now();
    let end = started + duration;
    let hists: io::Result<Vec<Histogram<u64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let wal = &wal;
                s.spawn(move || -> io::Result<Histogram<u64>> {
                    let mut h = new_histogram();
                    while Instant::now() < end {
                        let t = Instant::now();
                        wal.append("bench", &ENTRY)?;
                        record(&mut h, t.elapsed());
                    }
                    Ok(h)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("client panicked")))
            })
            .collect()
    });
    let secs = started.elapsed().as_secs_f64();
    let mut all = new_histogram();
    for h in hists? {
        all.add(&h).map_err(io::Error::other)?;
    }
    Ok((all, secs))
}

/// The family's table: each replicated case beside the single node with as many clients.
#[must_use]
pub fn table(cases: &[RaftCase]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<26} {:>12} {:>10} {:>10} {:>14}",
        "raft case", "appends/s", "p50", "p99", "vs 1 node"
    );
    for c in cases {
        let name = format!("{} x{}", c.kind, c.clients);
        if let Some(e) = &c.error {
            let _ = writeln!(out, "{name:<26} FAILED: {e}");
            continue;
        }
        let vs = if c.kind == REPLICATED {
            cases
                .iter()
                .find(|s| s.kind == SINGLE && s.clients == c.clients && s.error.is_none())
                .map_or("-".to_string(), |s| {
                    format!("{:.2}x", c.per_sec() / s.per_sec())
                })
        } else {
            "-".to_string()
        };
        let _ = writeln!(
            out,
            "{name:<26} {:>12.0} {:>8.0}µs {:>8.0}µs {:>14}",
            c.per_sec(),
            c.latency.p50_ns as f64 / 1e3,
            c.latency.p99_ns as f64 / 1e3,
            vs
        );
    }
    out
}

/// Replication scales with clients (group commit through raft): 16 clients commit more per
/// second than one.
#[must_use]
pub fn targets(cases: &[RaftCase]) -> Vec<Target> {
    let find = |clients: usize| {
        cases.iter().find(|c| {
            c.kind == REPLICATED && c.clients == clients && c.error.is_none() && c.appends > 0
        })
    };
    let scaling = find(1).zip(find(16)).map(|(one, many)| {
        let r = many.per_sec() / one.per_sec();
        (format!("{r:.2}x one client's appends/s"), r > 1.0)
    });
    vec![Target::judged(
        "raft: 16 clients commit more appends/s than 1 (3 nodes)",
        scaling,
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_family_runs_small() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("raft");
        let cases = run(&dir, Duration::from_millis(200));
        assert_eq!(cases.len(), CLIENTS.len() * 2);
        for c in &cases {
            assert!(c.error.is_none(), "{c:?}");
            assert!(c.appends > 0, "{c:?}");
        }
        assert!(table(&cases).contains("3-node raft x16"));
        // Judged (both rows measured); met or not is the suite's to say, not a unit test's.
        assert!(targets(&cases)[0].met.is_some(), "{:?}", targets(&cases));
    }
}
