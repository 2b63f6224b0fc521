//! Errors of the format layer: corruption found while decoding, and bad input while encoding.

use std::fmt;
use std::io;

/// Why a header or frame was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CorruptReason {
    /// The magic bytes are not the expected ones (a foreign file, or not a header at all).
    BadMagic,
    /// The header's CRC32C does not match its bytes.
    HeaderChecksum,
    /// The payload's CRC32C does not match the payload.
    PayloadChecksum,
    /// The format version is not one this build reads.
    UnsupportedVersion,
    /// The checksum algorithm id is not one this build knows.
    UnknownChecksum,
    /// A flag bit or reserved byte that must be zero is not.
    ReservedBits,
    /// A length field is out of range (entry too long, block not aligned, empty topic, …).
    BadLength,
    /// The topic name is not valid UTF-8.
    TopicNotUtf8,
    /// rkyv's checked access rejected the bytes.
    Malformed,
    /// An entry's offset or batch position does not follow from the entry before it.
    Sequence,
}

impl fmt::Display for CorruptReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadMagic => "bad magic",
            Self::HeaderChecksum => "header checksum mismatch",
            Self::PayloadChecksum => "payload checksum mismatch",
            Self::UnsupportedVersion => "unsupported format version",
            Self::UnknownChecksum => "unknown checksum algorithm",
            Self::ReservedBits => "reserved bits set",
            Self::BadLength => "length out of range",
            Self::TopicNotUtf8 => "topic name is not UTF-8",
            Self::Malformed => "malformed archive",
            Self::Sequence => "entry out of sequence",
        })
    }
}

/// An error of the format layer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// Bytes read back are corrupt. `at` is the byte position within the slice given to the
    /// decoder.
    Corrupt {
        /// Byte position of the rejected header or frame.
        at: usize,
        /// What was wrong.
        reason: CorruptReason,
    },
    /// Bytes read back end in the middle of a header or frame.
    Torn {
        /// Byte position of the incomplete header or frame.
        at: usize,
    },
    /// A topic name is empty or too long.
    InvalidTopic(String),
    /// An entry is larger than [`MAX_ENTRY_LEN`](crate::MAX_ENTRY_LEN), a batch position is out of
    /// range, or an output buffer is too small.
    InvalidInput(String),
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Corrupt { at, reason } => write!(f, "corrupt data at byte {at}: {reason}"),
            Self::Torn { at } => write!(f, "torn write at byte {at}"),
            Self::InvalidTopic(msg) | Self::InvalidInput(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for FormatError {}

impl From<FormatError> for io::Error {
    fn from(e: FormatError) -> Self {
        let kind = match e {
            FormatError::Corrupt { .. } | FormatError::Torn { .. } => io::ErrorKind::InvalidData,
            FormatError::InvalidTopic(_) | FormatError::InvalidInput(_) => {
                io::ErrorKind::InvalidInput
            }
        };
        io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_kinds() {
        let e: io::Error = FormatError::Corrupt {
            at: 7,
            reason: CorruptReason::BadMagic,
        }
        .into();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(e.to_string(), "corrupt data at byte 7: bad magic");
        let e: io::Error = FormatError::InvalidTopic("topic name is empty".into()).into();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
