//! The writer's knobs and their defaults.

use std::io;
use std::time::Duration;

/// The largest `flush_bytes` accepted.
pub(crate) const MAX_FLUSH_BYTES: u64 = 2 << 30;
/// The most entries the queue may hold: its slots are allocated when the writer opens (a
/// slot is some 100 bytes: 1.6 GiB at this bound).
pub(crate) const MAX_QUEUE_CAPACITY: usize = 1 << 24;

/// How an [`S3Wal`](crate::S3Wal) batches, bounds its memory and retries.
///
/// ```
/// use std::time::Duration;
/// let options = walrus_s3::S3Options::default()
///     .flush_interval(Duration::from_millis(20))
///     .flush_bytes(1 << 20);
/// assert_eq!(options.get_flush_interval(), Duration::from_millis(20));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Options {
    pub(crate) flush_interval: Duration,
    pub(crate) flush_bytes: u64,
    pub(crate) queue_capacity: usize,
    pub(crate) max_buffered_bytes: u64,
    pub(crate) put_attempts: u32,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) request_timeout: Duration,
}

impl Default for S3Options {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_millis(50),
            flush_bytes: 8 << 20,
            queue_capacity: 65_536,
            max_buffered_bytes: 256 << 20,
            put_attempts: 8,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl S3Options {
    /// How long entries wait for company before the flusher PUTs them (default 50 ms). Zero
    /// sends a batch as soon as the previous PUT is done and anything is queued.
    #[must_use]
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// Queued bytes that trigger a flush before the interval ends, and the most one batch
    /// object carries beyond its first entry (default 8 MiB).
    #[must_use]
    pub fn flush_bytes(mut self, bytes: u64) -> Self {
        self.flush_bytes = bytes;
        self
    }

    /// Entries the queue holds before appends wait (default 65 536, at most 16 777 216: its
    /// slots are allocated when the writer opens).
    #[must_use]
    pub fn queue_capacity(mut self, entries: usize) -> Self {
        self.queue_capacity = entries;
        self
    }

    /// Bytes queued (not yet taken into a batch) before appends wait (default 256 MiB): each
    /// entry counts its payload, its frame header and its allocation, so that many empty
    /// entries are bounded too. One entry larger than this is still taken, alone.
    #[must_use]
    pub fn max_buffered_bytes(mut self, bytes: u64) -> Self {
        self.max_buffered_bytes = bytes;
        self
    }

    /// PUT attempts per batch before its tickets fail and the writer stops (default 8).
    #[must_use]
    pub fn put_attempts(mut self, attempts: u32) -> Self {
        self.put_attempts = attempts;
        self
    }

    /// The wait before the first retry, doubled per attempt up to `max` (default 50 ms, 5 s).
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// The deadline of each request to the store (default 30 s); a PUT gets one more second per
    /// 4 MiB it carries.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The flush interval.
    #[must_use]
    pub fn get_flush_interval(&self) -> Duration {
        self.flush_interval
    }

    /// The wait before retry `attempt` (1 for the first retry).
    pub(crate) fn backoff_for(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.backoff_initial
            .saturating_mul(factor)
            .min(self.backoff_max)
    }

    pub(crate) fn validate(&self) -> io::Result<()> {
        let bad = |what: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, what.to_owned()));
        if self.queue_capacity == 0 || self.queue_capacity > MAX_QUEUE_CAPACITY {
            return bad("queue_capacity must be 1 to 16 777 216 entries");
        }
        if self.flush_bytes == 0 || self.max_buffered_bytes == 0 {
            return bad("flush_bytes and max_buffered_bytes must be at least 1");
        }
        // A batch object holds up to flush_bytes plus one append (at most 1 GiB): this keeps
        // it under S3's 5 GiB limit for a single PUT.
        if self.flush_bytes > MAX_FLUSH_BYTES {
            return bad("flush_bytes must be at most 2 GiB");
        }
        if self.put_attempts == 0 {
            return bad("put_attempts must be at least 1");
        }
        if self.request_timeout.is_zero() {
            return bad("request_timeout must be above zero");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let o = S3Options::default().backoff(Duration::from_millis(10), Duration::from_millis(50));
        let waits: Vec<_> = (1..=5).map(|a| o.backoff_for(a).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 50, 50]);
        assert_eq!(o.backoff_for(1000), Duration::from_millis(50));
    }

    #[test]
    fn zero_limits_are_refused() {
        for o in [
            S3Options::default().queue_capacity(0),
            S3Options::default().queue_capacity(MAX_QUEUE_CAPACITY + 1),
            S3Options::default().queue_capacity(usize::MAX),
            S3Options::default().flush_bytes(0),
            S3Options::default().flush_bytes(MAX_FLUSH_BYTES + 1),
            S3Options::default().put_attempts(0),
            S3Options::default().request_timeout(Duration::ZERO),
        ] {
            assert_eq!(
                o.validate().unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
        }
        assert!(S3Options::default().validate().is_ok());
    }
}
