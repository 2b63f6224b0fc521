//! Payloads, generated before any timing starts: a pool of random entries that the workloads
//! cycle through, so the measured loop never pays for a random number generator or an
//! allocation.

use std::fmt;
use std::str::FromStr;

use rand::rngs::SmallRng;
use rand::{Rng, RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// How long the entries are: `500-1024` (uniform) or `700` (fixed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Sizes {
    /// Shortest entry in bytes.
    pub min: usize,
    /// Longest entry in bytes (inclusive).
    pub max: usize,
}

impl Sizes {
    /// The standard workload: 500–1024 random bytes.
    pub const STANDARD: Self = Self {
        min: 500,
        max: 1024,
    };

    /// Every entry `n` bytes long.
    #[must_use]
    pub const fn fixed(n: usize) -> Self {
        Self { min: n, max: n }
    }
}

impl FromStr for Sizes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("entry sizes {s:?}: expected N or MIN-MAX");
        let num = |p: &str| p.trim().parse::<usize>().map_err(|_| bad());
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(s)?, num(s)?),
        };
        if min == 0 || min > max {
            return Err(bad());
        }
        Ok(Self { min, max })
    }
}

impl fmt::Display for Sizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

impl From<Sizes> for String {
    fn from(v: Sizes) -> Self {
        v.to_string()
    }
}

impl TryFrom<String> for Sizes {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// Pregenerated random payloads, shared read-only by every thread of a run.
#[derive(Debug, Clone)]
pub struct PayloadPool {
    payloads: Vec<Vec<u8>>,
}

impl PayloadPool {
    /// Distinct payloads in a pool: a few MiB, more than the CPU caches hold, so the copy into
    /// the log is not flattered by hot lines.
    pub const DEFAULT_COUNT: usize = 4096;

    /// `count` payloads with lengths drawn from `sizes`, deterministic for a `seed`.
    #[must_use]
    pub fn new(sizes: Sizes, count: usize, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let payloads = (0..count.max(1))
            .map(|_| {
                let mut p = vec![0u8; rng.random_range(sizes.min..=sizes.max)];
                rng.fill_bytes(&mut p);
                p
            })
            .collect();
        Self { payloads }
    }

    /// Number of distinct payloads.
    #[must_use]
    pub fn len(&self) -> usize {
        self.payloads.len()
    }

    /// Always false: a pool holds at least one payload.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }

    /// Payload `i`, wrapping around the pool.
    #[must_use]
    pub fn get(&self, i: usize) -> &[u8] {
        &self.payloads[i % self.payloads.len()]
    }

    /// Every payload as a slice, followed by the first `extra` again, so that any window of
    /// `extra` consecutive slices starting inside the pool is contiguous: a batch is then a
    /// sub-slice, with no allocation per call.
    #[must_use]
    pub fn windows(&self, extra: usize) -> Vec<&[u8]> {
        (0..self.payloads.len() + extra)
            .map(|i| self.get(i))
            .collect()
    }

    /// Mean payload length in bytes.
    #[must_use]
    pub fn mean_len(&self) -> f64 {
        let total: usize = self.payloads.iter().map(Vec::len).sum();
        total as f64 / self.payloads.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_respects_sizes_and_is_deterministic() {
        let a = PayloadPool::new(Sizes::STANDARD, 256, 7);
        let b = PayloadPool::new(Sizes::STANDARD, 256, 7);
        assert_eq!(a.len(), 256);
        for i in 0..256 {
            assert!((500..=1024).contains(&a.get(i).len()));
            assert_eq!(a.get(i), b.get(i));
        }
        assert!(a.mean_len() > 600.0 && a.mean_len() < 900.0);
        let w = a.windows(4);
        assert_eq!(w.len(), 260);
        assert_eq!(w[257], a.get(1));
        let fixed = PayloadPool::new(Sizes::fixed(700), 8, 1);
        assert!((0..8).all(|i| fixed.get(i).len() == 700));
        assert_eq!("500-1024".parse(), Ok(Sizes::STANDARD));
        assert_eq!("700".parse(), Ok(Sizes::fixed(700)));
    }
}
