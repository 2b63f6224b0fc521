//! The `s3` family: the S3 WAL buffer against a real S3-compatible server (moto on loopback).
//!
//! Each producer appends one entry and waits for its ticket, then the next (a transaction
//! waiting for its commit), for the run's duration. Buffered cases go through `walrus-s3`
//! (one batch object per flush interval); the naive case PUTs every entry as its own object
//! from the producer's thread, concurrently, as a design without a buffer would. Moto is
//! Python in one process, so absolute rates are the server's, not S3's; the ratio of PUTs to
//! entries is the design's.

use std::fmt::Write as _;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use walrus_s3::moto::MotoServer;
use walrus_s3::object_store::path::Path as ObjectPath;
use walrus_s3::object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use walrus_s3::{S3Options, S3Wal};

use crate::payload::{PayloadPool, Sizes};
use crate::report::Target;
use crate::stats::{LatencySummary, new_histogram, record};

/// Producer counts of the family.
pub const PRODUCERS: [usize; 4] = [1, 4, 16, 64];
/// Flush intervals of the buffered cases, in milliseconds (0: a PUT as soon as the previous one
/// is done and anything is queued, so groups form while a PUT is in flight).
pub const INTERVALS_MS: [u64; 3] = [0, 10, 50];
/// The default price of S3 Standard PUTs, in dollars per 1,000 requests.
pub const DEFAULT_PUT_PRICE: f64 = 0.005;

/// One measured case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct S3Case {
    /// `buffered` or `naive`.
    pub design: String,
    /// Producer threads.
    pub producers: usize,
    /// Flush interval of a buffered case.
    pub flush_interval_ms: Option<u64>,
    /// Entries acknowledged.
    pub entries: u64,
    /// Seconds measured.
    pub secs: f64,
    /// PUT requests sent.
    pub puts: u64,
    /// Bytes PUT.
    pub bytes: u64,
    /// Latency from append to acknowledgement.
    pub ack: LatencySummary,
    /// The error, when the case failed.
    pub error: Option<String>,
}

impl S3Case {
    /// Acknowledged entries per second.
    #[must_use]
    pub fn entries_per_sec(&self) -> f64 {
        crate::stats::per_sec(self.entries as f64, self.secs)
    }

    /// PUT requests per second.
    #[must_use]
    pub fn puts_per_sec(&self) -> f64 {
        crate::stats::per_sec(self.puts as f64, self.secs)
    }

    /// Mean bytes per PUT.
    #[must_use]
    pub fn bytes_per_put(&self) -> f64 {
        self.bytes as f64 / (self.puts.max(1)) as f64
    }

    /// Dollars of PUT requests per million entries at `price` dollars per 1,000 PUTs.
    #[must_use]
    pub fn cost_per_million(&self, price: f64) -> f64 {
        self.puts as f64 / self.entries.max(1) as f64 * 1e6 / 1000.0 * price
    }

    fn label(&self) -> String {
        match self.flush_interval_ms {
            Some(ms) => format!("{} {}p {ms}ms", self.design, self.producers),
            None => format!("{} {}p", self.design, self.producers),
        }
    }
}

/// Runs every case for `duration` each against one moto server.
///
/// # Errors
/// The server failing to start (a failing case is recorded in its `error` instead).
pub fn run(duration: Duration) -> io::Result<Vec<S3Case>> {
    let server = MotoServer::start()?;
    let store = server.store("walrus-bench")?;
    let pool = Arc::new(PayloadPool::new(Sizes::STANDARD, 4096, 0x53));
    let mut cases = Vec::new();
    for (n, producers) in PRODUCERS.into_iter().enumerate() {
        for ms in INTERVALS_MS {
            let prefix = format!("buffered-{n}-{ms}");
            cases.push(buffered(&store, &prefix, producers, ms, duration, &pool));
        }
        cases.push(naive(
            &store,
            &format!("naive-{n}"),
            producers,
            duration,
            &pool,
        ));
    }
    Ok(cases)
}

fn failed(design: &str, producers: usize, ms: Option<u64>, e: &io::Error) -> S3Case {
    S3Case {
        design: design.into(),
        producers,
        flush_interval_ms: ms,
        entries: 0,
        secs: 0.0,
        puts: 0,
        bytes: 0,
        ack: LatencySummary::default(),
        error: Some(e.to_string()),
    }
}

/// Runs `producers` threads of `append` for `duration`; each returns its latency histogram.
fn produce<F>(
    producers: usize,
    duration: Duration,
    append: F,
) -> io::Result<(u64, f64, LatencySummary)>
where
    F: Fn(usize, u64) -> io::Result<()> + Send + Sync,
{
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let results: Vec<io::Result<hdrhistogram::Histogram<u64>>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..producers)
            .map(|p| {
                let (append, stop) = (&append, &stop);
                s.spawn(move || {
                    let mut h = new_histogram();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        append(p, i)?;
                        record(&mut h, t.elapsed());
                        i += 1;
                    }
                    Ok(h)
                })
            })
            .collect();
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(io::Error::other("producer panicked")))
            })
            .collect()
    });
    let secs = started.elapsed().as_secs_f64();
    let mut all = new_histogram();
    for h in results {
        all.add(h?).map_err(|e| io::Error::other(e.to_string()))?;
    }
    Ok((all.len(), secs, LatencySummary::of(&all)))
}

fn buffered(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    producers: usize,
    ms: u64,
    duration: Duration,
    pool: &PayloadPool,
) -> S3Case {
    let options = S3Options::default().flush_interval(Duration::from_millis(ms));
    let wal = match S3Wal::open(Arc::clone(store), prefix, options) {
        Ok(w) => w,
        Err(e) => return failed("buffered", producers, Some(ms), &e),
    };
    let before = wal.stats();
    let measured = produce(producers, duration, |p, i| {
        let data = pool.get(p * 7919 + i as usize);
        wal.append("bench", data)?.wait().map(|_| ())
    });
    let after = wal.stats();
    let closed = wal.close();
    match measured.and_then(|m| closed.map(|()| m)) {
        Ok((entries, secs, ack)) => S3Case {
            design: "buffered".into(),
            producers,
            flush_interval_ms: Some(ms),
            entries,
            secs,
            puts: after.put_requests - before.put_requests,
            bytes: after.bytes_written - before.bytes_written,
            ack,
            error: None,
        },
        Err(e) => failed("buffered", producers, Some(ms), &e),
    }
}

fn naive(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    producers: usize,
    duration: Duration,
    pool: &PayloadPool,
) -> S3Case {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return failed("naive", producers, None, &e),
    };
    let bytes = std::sync::atomic::AtomicU64::new(0);
    let measured = produce(producers, duration, |p, i| {
        let data = pool.get(p * 7919 + i as usize);
        bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        let path = ObjectPath::from(format!("{prefix}/{p:04}-{i:012}"));
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        runtime
            .block_on(store.put_opts(&path, PutPayload::from(data.to_vec()), opts))
            .map(|_| ())
            .map_err(|e| io::Error::other(format!("PUT {path}: {e}")))
    });
    match measured {
        Ok((entries, secs, ack)) => S3Case {
            design: "naive".into(),
            producers,
            flush_interval_ms: None,
            entries,
            secs,
            puts: entries,
            bytes: bytes.load(Ordering::Relaxed),
            ack,
            error: None,
        },
        Err(e) => failed("naive", producers, None, &e),
    }
}

/// The family's table, with the PUT cost per million entries at `price` per 1,000 PUTs.
#[must_use]
pub fn table(cases: &[S3Case], price: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:>11} {:>9} {:>11} {:>10} {:>10} {:>14}",
        "s3 case", "entries/s", "PUTs/s", "bytes/PUT", "ack p50", "ack p99", "$/M entries"
    );
    for c in cases {
        if let Some(e) = &c.error {
            let _ = writeln!(out, "{:<22} FAILED: {e}", c.label());
            continue;
        }
        let _ = writeln!(
            out,
            "{:<22} {:>11.0} {:>9.1} {:>11.0} {:>8.1}ms {:>8.1}ms {:>14.4}",
            c.label(),
            c.entries_per_sec(),
            c.puts_per_sec(),
            c.bytes_per_put(),
            c.ack.p50_ns as f64 / 1e6,
            c.ack.p99_ns as f64 / 1e6,
            c.cost_per_million(price)
        );
    }
    let _ = writeln!(out, "(PUT price: ${price} per 1,000 requests)");
    out
}

/// Buffered vs naive at each producer count of 4 or more (one producer waiting for its own
/// batch is latency-bound by the interval: reported, not judged): the buffer must beat one PUT
/// per entry on acknowledged entries/s (at its best interval) and send fewer PUTs than entries.
#[must_use]
pub fn targets(cases: &[S3Case]) -> Vec<Target> {
    let ok = |c: &&S3Case| c.error.is_none() && c.entries > 0;
    PRODUCERS
        .into_iter()
        .filter(|p| *p >= 4)
        .map(|p| {
            let best = cases
                .iter()
                .filter(ok)
                .filter(|c| c.design == "buffered" && c.producers == p)
                .max_by(|a, b| a.entries_per_sec().total_cmp(&b.entries_per_sec()));
            let naive = cases
                .iter()
                .filter(ok)
                .find(|c| c.design == "naive" && c.producers == p);
            let measured = best.zip(naive).map(|(b, n)| {
                let ratio = b.entries_per_sec() / n.entries_per_sec();
                let puts_per_entry = b.puts as f64 / b.entries as f64;
                (
                    format!(
                        "{:.2}x naive entries/s, {:.3} PUTs per entry",
                        ratio, puts_per_entry
                    ),
                    ratio >= 1.0 && puts_per_entry < 1.0,
                )
            });
            Target::judged(
                &format!("s3 {p} producers: buffered beats one PUT per entry"),
                measured,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(design: &str, producers: usize, entries: u64, puts: u64) -> S3Case {
        S3Case {
            design: design.into(),
            producers,
            flush_interval_ms: (design == "buffered").then_some(10),
            entries,
            secs: 1.0,
            puts,
            bytes: entries * 700,
            ack: LatencySummary::default(),
            error: None,
        }
    }

    #[test]
    fn cost_and_targets_follow_the_counts() {
        let n = case("naive", 16, 1000, 1000);
        assert!((n.cost_per_million(0.005) - 5.0).abs() < 1e-9);
        let b = case("buffered", 16, 4000, 100);
        assert!((b.cost_per_million(0.005) - 0.125).abs() < 1e-9);
        let t = targets(&[n.clone(), b]);
        let t16 = t.iter().find(|t| t.goal.contains(" 16 ")).unwrap();
        assert_eq!(t16.met, Some(true), "{t16:?}");
        let slow = case("buffered", 16, 500, 100);
        let t = targets(&[n, slow]);
        let t16 = t.iter().find(|t| t.goal.contains(" 16 ")).unwrap();
        assert_eq!(t16.met, Some(false));
        assert_eq!(t.iter().find(|t| t.goal.contains(" 4 ")).unwrap().met, None);
    }
}
