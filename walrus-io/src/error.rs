//! Error context and sticky sync failures.
//!
//! Every error a backend returns is an [`io::Error`] whose [`kind`](io::Error::kind) is the one
//! the operating system (or the simulated fault) produced — ENOSPC stays
//! [`ErrorKind::StorageFull`], EIO stays what std makes of it — and whose payload is an
//! [`OpError`] naming the operation, the file and the offset. [`os_error`] digs the errno back
//! out for callers that need it.
//!
//! A failed data sync is *sticky*: Linux may drop the dirty pages after a failed writeback and
//! mark them clean, so a later successful `fdatasync` proves nothing. [`SyncPoison`] remembers
//! the failure per file handle and per path (for the lifetime of the backend instance, until the
//! path is removed), so every later sync of that file keeps failing.

use std::collections::HashMap;
use std::error::Error;
use std::fmt;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use parking_lot::Mutex;

/// The payload of every error a backend returns: which operation failed, on which file, at
/// which offset, and the underlying cause (available through [`Error::source`]).
#[derive(Debug)]
pub struct OpError {
    op: &'static str,
    path: PathBuf,
    offset: Option<u64>,
    source: io::Error,
}

impl OpError {
    /// The operation that failed, e.g. `"pwrite"`, `"io_uring write"`, `"fdatasync"`.
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The file (or directory) the operation was on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file offset the failing part of the operation started at, if it has one.
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }

    /// The underlying error, as the system (or the simulator) reported it.
    pub fn cause(&self) -> &io::Error {
        &self.source
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op, self.path.display())?;
        if let Some(offset) = self.offset {
            write!(f, "@{offset}")?;
        }
        write!(f, ": {}", self.source)
    }
}

impl Error for OpError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}

/// Wraps `source` with the operation, path and offset, keeping its kind.
pub(crate) fn op_error(
    op: &'static str,
    path: &Path,
    offset: Option<u64>,
    source: io::Error,
) -> io::Error {
    io::Error::new(
        source.kind(),
        OpError {
            op,
            path: path.to_path_buf(),
            offset,
            source,
        },
    )
}

/// [`op_error`] for an errno.
pub(crate) fn errno_error(
    op: &'static str,
    path: &Path,
    offset: Option<u64>,
    errno: i32,
) -> io::Error {
    op_error(op, path, offset, io::Error::from_raw_os_error(errno))
}

/// The error for a write that made no progress: the device accepted zero bytes.
pub(crate) fn write_zero(
    op: &'static str,
    path: &Path,
    offset: u64,
    remaining: usize,
) -> io::Error {
    op_error(
        op,
        path,
        Some(offset),
        io::Error::new(
            ErrorKind::WriteZero,
            format!("short write: {remaining} bytes could not be written"),
        ),
    )
}

/// The error for reading fewer bytes than asked because the file ends first.
pub(crate) fn unexpected_eof(path: &Path, offset: u64, wanted: usize, got: usize) -> io::Error {
    op_error(
        "read",
        path,
        Some(offset),
        io::Error::new(
            ErrorKind::UnexpectedEof,
            format!("file ends after {got} of {wanted} bytes"),
        ),
    )
}

/// The OS error number behind `err`, looking through an [`OpError`] payload.
///
/// ```
/// let err = std::io::Error::from_raw_os_error(libc::ENOSPC);
/// assert_eq!(walrus_io::os_error(&err), Some(libc::ENOSPC));
/// ```
pub fn os_error(err: &io::Error) -> Option<i32> {
    if let Some(code) = err.raw_os_error() {
        return Some(code);
    }
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<OpError>())
        .and_then(|op| os_error(&op.source))
}

/// A recorded data-sync failure, replayable as a fresh [`io::Error`] as often as needed
/// (`io::Error` is not `Clone`).
#[derive(Debug, Clone)]
pub(crate) struct SyncFailure {
    kind: ErrorKind,
    errno: Option<i32>,
    message: String,
}

impl SyncFailure {
    pub(crate) fn new(err: &io::Error) -> Self {
        Self {
            kind: err.kind(),
            errno: os_error(err),
            message: err.to_string(),
        }
    }

    /// The error every sync after the failure returns.
    pub(crate) fn to_error(&self, path: &Path) -> io::Error {
        let cause = match self.errno {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(self.kind, self.message.clone()),
        };
        op_error(
            "fdatasync (sticky: an earlier sync failed and its dirty pages may be lost)",
            path,
            None,
            cause,
        )
    }
}

/// Per-handle sticky sync state: the first failure, kept forever.
#[derive(Debug, Default)]
pub(crate) struct HandlePoison(OnceLock<SyncFailure>);

impl HandlePoison {
    pub(crate) fn get(&self) -> Option<&SyncFailure> {
        self.0.get()
    }

    pub(crate) fn set(&self, failure: SyncFailure) {
        // The first failure wins; later ones add nothing a caller could act on.
        let _ = self.0.set(failure);
    }
}

/// Per-path sticky sync failures of one backend instance, so a second handle on the same file
/// cannot "sync" it successfully after the first handle's sync failed.
#[derive(Debug, Default)]
pub(crate) struct SyncPoison {
    by_path: Mutex<HashMap<PathBuf, SyncFailure>>,
}

impl SyncPoison {
    /// The error a sync of `path` through `handle` must return, if either is poisoned.
    pub(crate) fn check(&self, handle: &HandlePoison, path: &Path) -> io::Result<()> {
        if let Some(failure) = handle.get() {
            return Err(failure.to_error(path));
        }
        if let Some(failure) = self.by_path.lock().get(path) {
            let failure = failure.clone();
            handle.set(failure.clone());
            return Err(failure.to_error(path));
        }
        Ok(())
    }

    /// Records a failed sync of `path` through `handle`.
    pub(crate) fn record(&self, handle: &HandlePoison, path: &Path, err: &io::Error) {
        let failure = SyncFailure::new(err);
        handle.set(failure.clone());
        self.by_path
            .lock()
            .entry(path.to_path_buf())
            .or_insert(failure);
    }

    /// Forgets `path`: it was removed, and a new file of that name is a different file.
    pub(crate) fn forget(&self, path: &Path) {
        self.by_path.lock().remove(path);
    }

    /// Forgets everything (the simulated process restarted).
    pub(crate) fn clear(&self) {
        self.by_path.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_error_keeps_kind_errno_path_and_offset() {
        let err = errno_error("pwrite", Path::new("/d/f"), Some(4096), libc::ENOSPC);
        assert_eq!(err.kind(), ErrorKind::StorageFull);
        assert_eq!(os_error(&err), Some(libc::ENOSPC));
        let msg = err.to_string();
        assert!(msg.starts_with("pwrite /d/f@4096: "), "{msg}");
        let op = err.get_ref().unwrap().downcast_ref::<OpError>().unwrap();
        assert_eq!(op.op(), "pwrite");
        assert_eq!(op.path(), Path::new("/d/f"));
        assert_eq!(op.offset(), Some(4096));
        assert_eq!(op.cause().raw_os_error(), Some(libc::ENOSPC));
    }

    #[test]
    fn sync_poison_is_sticky_per_handle_and_path_until_forgotten() {
        let poison = SyncPoison::default();
        let (a, b) = (HandlePoison::default(), HandlePoison::default());
        let path = Path::new("/d/f");
        assert!(poison.check(&a, path).is_ok());
        poison.record(&a, path, &io::Error::from_raw_os_error(libc::EIO));
        for _ in 0..3 {
            let err = poison.check(&a, path).unwrap_err();
            assert_eq!(os_error(&err), Some(libc::EIO));
            assert!(err.to_string().contains("/d/f"));
        }
        // A second handle on the same path inherits the failure.
        assert!(poison.check(&b, path).is_err());
        poison.forget(path);
        // The old handles stay poisoned; a fresh one on the (new) path does not.
        assert!(poison.check(&a, path).is_err());
        assert!(poison.check(&HandlePoison::default(), path).is_ok());
    }
}
