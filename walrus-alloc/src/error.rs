//! Error construction: every error is an `io::Error` whose message names the segment.

use std::error::Error;
use std::fmt;
use std::io;

/// An `io::Error` of `kind` with the message `segment {segment}: {msg}`.
pub(crate) fn segment_error(
    kind: io::ErrorKind,
    segment: u64,
    msg: impl fmt::Display,
) -> io::Error {
    io::Error::new(kind, format!("segment {segment}: {msg}"))
}

/// A preparer failure, wrapped so the message names the segment while the kind and the
/// original error (as `source`) are kept.
#[derive(Debug)]
struct PrepareError {
    segment: u64,
    segment_len: u64,
    source: io::Error,
}

impl fmt::Display for PrepareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "segment {}: preparing a file of {} bytes failed: {}",
            self.segment, self.segment_len, self.source
        )
    }
}

impl Error for PrepareError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}

/// Wraps an error returned by a [`SegmentPreparer`](crate::SegmentPreparer).
pub(crate) fn prepare_error(segment: u64, segment_len: u64, source: io::Error) -> io::Error {
    io::Error::new(
        source.kind(),
        PrepareError {
            segment,
            segment_len,
            source,
        },
    )
}
