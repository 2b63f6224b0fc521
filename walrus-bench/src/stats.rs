//! What a run measured: per-call latency (an HDR histogram of every call's own duration),
//! throughput, and the space its files take on disk.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A latency histogram in nanoseconds, from 1 ns to 10 minutes at 3 significant digits.
///
/// # Panics
/// Never: the bounds are constants that hdrhistogram accepts.
#[must_use]
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds")
}

/// Records one call's duration.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1));
}

/// Percentiles of per-call latency, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Calls recorded.
    pub calls: u64,
    /// Mean.
    pub mean_ns: f64,
    /// Median.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Slowest call.
    pub max_ns: u64,
}

impl LatencySummary {
    /// The summary of `h`.
    #[must_use]
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            calls: h.len(),
            mean_ns: h.mean(),
            p50_ns: h.value_at_quantile(0.50),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
        }
    }
}

/// Space taken by a directory tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DiskUsage {
    /// Bytes actually allocated (`st_blocks` × 512), preallocated space included.
    pub allocated_bytes: u64,
    /// Apparent size (`st_size`), holes included.
    pub apparent_bytes: u64,
    /// Regular files counted.
    pub files: u64,
}

impl DiskUsage {
    /// Allocated bytes per payload byte.
    #[must_use]
    pub fn allocated_per_payload(&self, payload: u64) -> f64 {
        ratio(self.allocated_bytes, payload)
    }

    /// Apparent bytes per payload byte.
    #[must_use]
    pub fn apparent_per_payload(&self, payload: u64) -> f64 {
        ratio(self.apparent_bytes, payload)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        f64::NAN
    } else {
        a as f64 / b as f64
    }
}

/// Sums the regular files under `dir` (not following symlinks).
///
/// # Errors
/// An I/O error reading the tree, except files that vanish while it is walked (engines delete
/// segments in the background).
pub fn disk_usage(dir: &Path) -> io::Result<DiskUsage> {
    let mut total = DiskUsage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = match entry.path().symlink_metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total.allocated_bytes += meta.blocks() * 512;
                total.apparent_bytes += meta.len();
                total.files += 1;
            }
        }
    }
    Ok(total)
}

/// `count` per second over `secs` (0 seconds count as the smallest positive duration).
#[must_use]
pub fn per_sec(count: f64, secs: f64) -> f64 {
    count / secs.max(f64::MIN_POSITIVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_values() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.calls, 1000);
        let near = |got: u64, want: u64| got.abs_diff(want) * 100 <= want;
        assert!(near(s.p50_ns, 500_000), "{s:?}");
        assert!(near(s.p99_ns, 990_000), "{s:?}");
        assert!(near(s.p999_ns, 999_000), "{s:?}");
        assert!(near(s.max_ns, 1_000_000), "{s:?}");
        assert_eq!(
            LatencySummary::of(&new_histogram()),
            LatencySummary::default()
        );
    }

    #[test]
    fn disk_usage_counts_allocated_and_apparent() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), vec![1u8; 10_000]).unwrap();
        let sparse = std::fs::File::create(dir.path().join("sparse")).unwrap();
        sparse.set_len(1 << 20).unwrap();
        let u = disk_usage(dir.path()).unwrap();
        assert_eq!(u.files, 2);
        assert_eq!(u.apparent_bytes, 10_000 + (1 << 20));
        assert!(
            u.allocated_bytes >= 10_000 && u.allocated_bytes < 1 << 20,
            "{u:?}"
        );
        assert!((u.apparent_per_payload(10_000) - 105.8576).abs() < 1e-3);
        assert!(u.allocated_per_payload(0).is_nan());
    }
}
