//! What lives in a data directory, and the names of its files.
//!
//! ```text
//! <dir>/LOCK                       advisory lock held by the live instance
//! <dir>/cursors.wcur               cursor slots
//! <dir>/durable.wcur               durable-watermark slots (same format)
//! <dir>/journal.wjnl               the group-commit journal (stores that keep one)
//! <dir>/00000000000000000042.wseg  segment file 42 (20 decimal digits)
//! ```
//!
//! Anything else in the directory is foreign, and opening refuses it rather than guess.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use crate::cursors::{CURSOR_FILE, MARKS_FILE};
use crate::error::data_error;

/// Name of the lock file: the one name of a data directory's own files that a subdirectory
/// name (an instance key's, say) could take.
pub const LOCK_FILE: &str = "LOCK";
/// Name of the group-commit journal (`crate::journal`).
pub(crate) const JOURNAL_FILE: &str = "journal.wjnl";
const SEGMENT_SUFFIX: &str = ".wseg";

/// Segment ids carry their allocation lane in the bits above this one: lane `k` numbers its
/// segments from `k << LANE_SHIFT`.
const LANE_SHIFT: u32 = 48;

/// The allocation lane of a segment.
pub(crate) fn lane_of(segment: u64) -> usize {
    usize::try_from(segment >> LANE_SHIFT).unwrap_or(usize::MAX)
}

/// The first segment id of a lane.
pub(crate) fn lane_base(lane: usize) -> u64 {
    (lane as u64) << LANE_SHIFT
}

/// Path of segment `id` in `dir`.
pub(crate) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}{SEGMENT_SUFFIX}"))
}

/// What a file in a data directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Lock,
    Cursors,
    Journal,
    Segment(u64),
}

/// Classifies a file of a data directory.
///
/// # Errors
/// `InvalidData` for a file Walrus did not write.
pub(crate) fn classify(path: &Path) -> io::Result<FileKind> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name == LOCK_FILE {
        return Ok(FileKind::Lock);
    }
    if name == CURSOR_FILE || name == MARKS_FILE {
        return Ok(FileKind::Cursors);
    }
    if name == JOURNAL_FILE {
        return Ok(FileKind::Journal);
    }
    if let Some(digits) = name.strip_suffix(SEGMENT_SUFFIX)
        && digits.len() == 20
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(id) = digits.parse()
    {
        return Ok(FileKind::Segment(id));
    }
    Err(data_error(
        path,
        "foreign file in the Walrus data directory (not written by Walrus); move it away",
    ))
}

/// An exclusive advisory lock on a data directory, released on drop.
#[derive(Debug)]
pub struct DirLock {
    file: Option<File>,
    /// The lock file did not exist before this lock created it.
    created: Option<PathBuf>,
}

impl DirLock {
    /// Takes the lock on `dir` (a real directory on the file system).
    ///
    /// # Errors
    /// [`io::ErrorKind::ResourceBusy`] naming the directory when another live instance, in this
    /// process or another, holds it; the open error if the lock file cannot be opened.
    pub fn acquire(dir: &Path) -> io::Result<Self> {
        let path = dir.join(LOCK_FILE);
        let existed = std::fs::symlink_metadata(&path).is_ok();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("{}: cannot open lock file: {e}", path.display()),
                )
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Self {
                file: Some(file),
                created: (!existed).then_some(path),
            }),
            Err(TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!(
                    "{} is in use by another Walrus instance (lock file {})",
                    dir.display(),
                    path.display()
                ),
            )),
            Err(TryLockError::Error(e)) => Err(io::Error::new(
                e.kind(),
                format!("{}: cannot lock: {e}", path.display()),
            )),
        }
    }

    /// No lock, for storage that is not a real file system (the simulated backend).
    #[must_use]
    pub fn none() -> Self {
        Self {
            file: None,
            created: None,
        }
    }

    /// Releases the lock of an open that failed, removing the lock file if this lock created
    /// it: a refused open leaves the directory as it found it.
    pub(crate) fn release_created(mut self) {
        if let Some(path) = self.created.take() {
            // Still held: nobody else can be using it.
            let _ = std::fs::remove_file(path);
        }
        self.file = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let dir = Path::new("/d");
        let p = segment_path(dir, 42);
        assert_eq!(p, Path::new("/d/00000000000000000042.wseg"));
        assert_eq!(classify(&p).unwrap(), FileKind::Segment(42));
        assert_eq!(classify(Path::new("/d/LOCK")).unwrap(), FileKind::Lock);
        assert_eq!(
            classify(Path::new("/d/cursors.wcur")).unwrap(),
            FileKind::Cursors
        );
        for foreign in [
            "/d/notes.txt",
            "/d/42.wseg",
            "/d/0000000000000000004x.wseg",
            "/d/.DS_Store",
        ] {
            assert_eq!(
                classify(Path::new(foreign)).unwrap_err().kind(),
                io::ErrorKind::InvalidData
            );
        }
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let held = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ResourceBusy);
        drop(held);
        DirLock::acquire(dir.path()).unwrap();
    }
}
