//! The knobs of a run — fsync schedule, thread range, read consistency, storage backend — and
//! how they are spelled on the command line and in the environment (`FSYNC=sync-each`,
//! `THREADS=1-4`, `BACKEND=io_uring`, …).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// When appended data reaches stable storage. Spelled `sync-each`, `no-fsync` or `<N>ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Fsync {
    /// Every append returns once it is on stable storage (group commit for concurrent ones).
    SyncEach,
    /// Never sync.
    NoFsync,
    /// A background sync at least every this many milliseconds.
    Millis(u64),
}

impl FromStr for Fsync {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase().replace('_', "-");
        match t.as_str() {
            "sync-each" | "synceach" | "each" => Ok(Self::SyncEach),
            "no-fsync" | "nofsync" | "none" | "never" => Ok(Self::NoFsync),
            _ => t
                .strip_suffix("ms")
                .unwrap_or(&t)
                .trim()
                .parse()
                .map(Self::Millis)
                .map_err(|_| {
                    format!("fsync schedule {s:?}: expected sync-each, no-fsync or <N>ms")
                }),
        }
    }
}

impl fmt::Display for Fsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SyncEach => f.write_str("sync-each"),
            Self::NoFsync => f.write_str("no-fsync"),
            Self::Millis(ms) => write!(f, "{ms}ms"),
        }
    }
}

impl From<Fsync> for String {
    fn from(v: Fsync) -> Self {
        v.to_string()
    }
}

impl TryFrom<String> for Fsync {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl Fsync {
    /// This schedule for the engine under test.
    #[must_use]
    pub fn to_walrus(self) -> walrus::FsyncSchedule {
        match self {
            Self::SyncEach => walrus::FsyncSchedule::SyncEach,
            Self::NoFsync => walrus::FsyncSchedule::NoFsync,
            Self::Millis(ms) => walrus::FsyncSchedule::Milliseconds(ms),
        }
    }

    /// This schedule for the published `walrus-rust` crate.
    #[must_use]
    pub fn to_walrus_rust(self) -> walrus_rust::FsyncSchedule {
        match self {
            Self::SyncEach => walrus_rust::FsyncSchedule::SyncEach,
            Self::NoFsync => walrus_rust::FsyncSchedule::NoFsync,
            Self::Millis(ms) => walrus_rust::FsyncSchedule::Milliseconds(ms),
        }
    }
}

/// A thread count or an inclusive range of them: `4` or `1-4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct ThreadRange {
    /// Fewest threads (at least 1).
    pub min: usize,
    /// Most threads (at least `min`).
    pub max: usize,
}

impl ThreadRange {
    /// Exactly `n` threads.
    #[must_use]
    pub fn single(n: usize) -> Self {
        Self { min: n, max: n }
    }

    /// Every thread count of the range, in order.
    pub fn counts(self) -> impl Iterator<Item = usize> {
        self.min..=self.max
    }
}

impl FromStr for ThreadRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("thread count {s:?}: expected N or A-B with 1 <= A <= B");
        let num = |p: &str| p.trim().parse::<usize>().map_err(|_| bad());
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let n = num(s)?;
                (n, n)
            }
        };
        if min == 0 || min > max {
            return Err(bad());
        }
        Ok(Self { min, max })
    }
}

impl fmt::Display for ThreadRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

impl From<ThreadRange> for String {
    fn from(v: ThreadRange) -> Self {
        v.to_string()
    }
}

impl TryFrom<String> for ThreadRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// The storage backend of the engine under test: `pwrite`, `io_uring`, `mmap` or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Backend {
    /// `pwrite`/`pread`/`fdatasync` (the default).
    #[default]
    Pwrite,
    /// io_uring submissions.
    IoUring,
    /// Shared memory mappings.
    Mmap,
    /// io_uring where the kernel has it, else `pwrite`.
    Auto,
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "pwrite" | "fd" => Ok(Self::Pwrite),
            "io_uring" | "iouring" | "uring" => Ok(Self::IoUring),
            "mmap" => Ok(Self::Mmap),
            "auto" => Ok(Self::Auto),
            _ => Err(format!(
                "backend {s:?}: expected pwrite, io_uring, mmap or auto"
            )),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pwrite => "pwrite",
            Self::IoUring => "io_uring",
            Self::Mmap => "mmap",
            Self::Auto => "auto",
        })
    }
}

impl From<Backend> for String {
    fn from(v: Backend) -> Self {
        v.to_string()
    }
}

impl TryFrom<String> for Backend {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl Backend {
    /// This backend for the engine under test.
    #[must_use]
    pub fn to_walrus(self) -> walrus::BackendKind {
        match self {
            Self::Pwrite => walrus::BackendKind::Pwrite,
            Self::IoUring => walrus::BackendKind::IoUring,
            Self::Mmap => walrus::BackendKind::Mmap,
            Self::Auto => walrus::BackendKind::Auto,
        }
    }
}

/// When read cursors are persisted: `strict` or `at-least-once/<N>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Consistency {
    /// Every consuming read persists the cursor before it returns.
    #[default]
    StrictlyAtOnce,
    /// The cursor is persisted every this many consuming reads.
    AtLeastOnce(u32),
}

impl FromStr for Consistency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        if matches!(t.as_str(), "strict" | "strictly-at-once") {
            return Ok(Self::StrictlyAtOnce);
        }
        t.strip_prefix("at-least-once/")
            .and_then(|n| n.parse().ok())
            .map(Self::AtLeastOnce)
            .ok_or_else(|| format!("consistency {s:?}: expected strict or at-least-once/<N>"))
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StrictlyAtOnce => f.write_str("strict"),
            Self::AtLeastOnce(n) => write!(f, "at-least-once/{n}"),
        }
    }
}

impl From<Consistency> for String {
    fn from(v: Consistency) -> Self {
        v.to_string()
    }
}

impl TryFrom<String> for Consistency {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl Consistency {
    /// This mode for the engine under test.
    #[must_use]
    pub fn to_walrus(self) -> walrus::ReadConsistency {
        match self {
            Self::StrictlyAtOnce => walrus::ReadConsistency::StrictlyAtOnce,
            Self::AtLeastOnce(n) => walrus::ReadConsistency::AtLeastOnce { persist_every: n },
        }
    }

    /// This mode for the published `walrus-rust` crate.
    #[must_use]
    pub fn to_walrus_rust(self) -> walrus_rust::ReadConsistency {
        match self {
            Self::StrictlyAtOnce => walrus_rust::ReadConsistency::StrictlyAtOnce,
            Self::AtLeastOnce(n) => walrus_rust::ReadConsistency::AtLeastOnce { persist_every: n },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_spellings() {
        assert_eq!("sync-each".parse(), Ok(Fsync::SyncEach));
        assert_eq!("SYNC_EACH".parse(), Ok(Fsync::SyncEach));
        assert_eq!("no-fsync".parse(), Ok(Fsync::NoFsync));
        assert_eq!("200ms".parse(), Ok(Fsync::Millis(200)));
        assert_eq!("50".parse(), Ok(Fsync::Millis(50)));
        assert!("sometimes".parse::<Fsync>().is_err());
        for f in [Fsync::SyncEach, Fsync::NoFsync, Fsync::Millis(7)] {
            assert_eq!(f.to_string().parse(), Ok(f));
        }
    }

    #[test]
    fn thread_ranges() {
        assert_eq!("4".parse(), Ok(ThreadRange::single(4)));
        assert_eq!("1-4".parse(), Ok(ThreadRange { min: 1, max: 4 }));
        assert_eq!(
            " 2 - 3 "
                .parse::<ThreadRange>()
                .map(|r| r.counts().collect::<Vec<_>>()),
            Ok(vec![2, 3])
        );
        for bad in ["0", "4-1", "x", "1-", ""] {
            assert!(bad.parse::<ThreadRange>().is_err(), "{bad}");
        }
        assert_eq!(ThreadRange { min: 1, max: 8 }.to_string(), "1-8");
    }

    #[test]
    fn backends_and_consistency() {
        assert_eq!("io_uring".parse(), Ok(Backend::IoUring));
        assert_eq!("io-uring".parse(), Ok(Backend::IoUring));
        assert_eq!("MMAP".parse(), Ok(Backend::Mmap));
        assert!("spdk".parse::<Backend>().is_err());
        assert_eq!("strict".parse(), Ok(Consistency::StrictlyAtOnce));
        assert_eq!(
            "at-least-once/1000".parse(),
            Ok(Consistency::AtLeastOnce(1000))
        );
        let json = serde_json::to_string(&Consistency::AtLeastOnce(5)).unwrap();
        assert_eq!(json, "\"at-least-once/5\"");
        assert_eq!(
            serde_json::from_str::<Consistency>(&json).unwrap(),
            Consistency::AtLeastOnce(5)
        );
    }
}
