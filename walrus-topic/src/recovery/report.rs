//! What recovery reports: every problem it found, where, and what it did about it.

use std::fmt;
use std::path::PathBuf;

use walrus_block::CorruptReason;

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files found.
    pub segments: usize,
    /// Blocks found in them.
    pub blocks: usize,
    /// Blocks whose entries were read and validated (the rest were wholly consumed).
    pub blocks_scanned: usize,
    /// Entries validated.
    pub entries_scanned: u64,
    /// Segment files deleted because they held nothing (fully consumed, or never written).
    pub segments_deleted: Vec<u64>,
    /// Every problem found, and what was done about it.
    pub issues: Vec<RecoveryIssue>,
}

/// One problem found by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryIssue {
    /// The topic (empty when it could not be told, e.g. for a damaged block header).
    pub topic: String,
    /// The offset of the first entry affected.
    pub offset: u64,
    /// The file.
    pub file: PathBuf,
    /// Byte position in that file.
    pub position: u64,
    /// What was wrong.
    pub problem: Problem,
    /// What recovery did about it.
    pub action: Action,
}

impl RecoveryIssue {
    /// A segment file left untouched because nothing in it can be read.
    pub(super) fn unreadable(file: PathBuf) -> Self {
        Self {
            topic: String::new(),
            offset: 0,
            file,
            position: 0,
            problem: Problem::UnreadableSegment,
            action: Action::Kept,
        }
    }
}

/// A kind of damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// Damage above the topic's durable watermark: the unsynced tail a crash left.
    TornTail,
    /// A batch was started and never finished (above the watermark).
    UnfinishedBatch,
    /// An entry failed validation.
    Corrupt(CorruptReason),
    /// Entries are missing (e.g. a lost block, or entries the watermark says were synced).
    Missing {
        /// How many offsets are missing.
        count: u64,
    },
    /// A block header failed validation; the blocks after it were found by scanning.
    CorruptBlockHeader,
    /// A segment header, or its copy, failed validation; the blocks were recovered with the key
    /// of the one left.
    CorruptSegmentHeader,
    /// A segment file with no readable header and no readable block, but data: kept as is.
    UnreadableSegment,
    /// The stored cursor pointed past the recovered entries (they were lost unsynced).
    CursorBeyondEnd,
    /// A record of the cursor or watermark file has no valid slot left: the consumer cursor,
    /// floor, durable watermark or tier mark it held is not known (the bytes are kept).
    CorruptCursorRecord,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TornTail => f.write_str("torn tail"),
            Self::UnfinishedBatch => f.write_str("unfinished batch"),
            Self::Corrupt(reason) => write!(f, "corrupt entry ({reason})"),
            Self::Missing { count } => write!(f, "{count} missing entries"),
            Self::CorruptBlockHeader => f.write_str("corrupt block header"),
            Self::CorruptSegmentHeader => f.write_str("corrupt segment header"),
            Self::UnreadableSegment => f.write_str("unreadable segment"),
            Self::CursorBeyondEnd => f.write_str("cursor beyond the recovered end"),
            Self::CorruptCursorRecord => f.write_str("corrupt cursor record"),
        }
    }
}

/// What recovery did about a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// The topic ends before the problem. Above the watermark the bytes after the cut are
    /// erased; at or below it they are kept on disk and the cut is recorded.
    Cut,
    /// The damaged or missing entries are a gap that readers step over; everything valid
    /// after them is kept.
    Skipped,
    /// A damaged segment header (or its copy) was rewritten from the one left.
    Repaired,
    /// The file was left untouched and is not used.
    Kept,
    /// The damaged record was cleared (zeros written over it): the open goes on without what
    /// it held.
    Cleared,
}
