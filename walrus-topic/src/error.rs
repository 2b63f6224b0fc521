//! Error constructors: every error names what it is about (topic, offset, file).

use std::io;
use std::path::Path;

/// `InvalidData` about a file.
pub(crate) fn data_error(path: &Path, msg: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {msg}", path.display()),
    )
}

/// `InvalidInput` with a message.
pub(crate) fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Wraps `e` with the topic (and offset) it happened on, keeping its kind and, as the
/// source, the error itself.
pub(crate) fn on_topic(e: io::Error, topic: &str, offset: Option<u64>) -> io::Error {
    let context = match offset {
        Some(o) => format!("topic {topic:?} at offset {o}"),
        None => format!("topic {topic:?}"),
    };
    io::Error::new(e.kind(), Context { context, source: e })
}

/// An error with what it happened on.
#[derive(Debug)]
struct Context {
    context: String,
    source: io::Error,
}

impl std::fmt::Display for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.context, self.source)
    }
}

impl std::error::Error for Context {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The cause carried by every error of a *poisoned* instance: a sync failed, so the kernel may
/// have dropped unsynced pages and nothing written since can be trusted. Reopen the directory
/// to recover (recovery reads back what is really on disk).
///
/// Errors of a poisoned instance keep the [`io::ErrorKind`] of the failed sync; recognise them
/// with [`is_poisoned`], and reach the original error through [`Poisoned::cause`] or
/// [`std::error::Error::source`].
#[derive(Debug)]
pub struct Poisoned {
    kind: io::ErrorKind,
    raw_os_error: Option<i32>,
    message: String,
}

impl Poisoned {
    pub(crate) fn from_error(e: &io::Error) -> Self {
        Self {
            kind: e.kind(),
            raw_os_error: raw_os_error_in(e),
            message: e.to_string(),
        }
    }

    /// The kind of the sync error that poisoned the instance.
    #[must_use]
    pub fn kind(&self) -> io::ErrorKind {
        self.kind
    }

    /// The OS error code of the failed sync, when it came from the OS (e.g. `EIO`).
    #[must_use]
    pub fn raw_os_error(&self) -> Option<i32> {
        self.raw_os_error
    }

    /// The failed sync's error, as it was reported the first time.
    #[must_use]
    pub fn cause(&self) -> io::Error {
        match self.raw_os_error {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(self.kind, self.message.clone()),
        }
    }
}

/// The OS error code anywhere in `e`'s chain of sources (backends wrap it with the operation
/// and the file).
fn raw_os_error_in(e: &io::Error) -> Option<i32> {
    if let Some(code) = e.raw_os_error() {
        return Some(code);
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> =
        e.get_ref().map(|r| r as &(dyn std::error::Error + 'static));
    for _ in 0..8 {
        let err = cur?;
        if let Some(io) = err.downcast_ref::<io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            return Some(code);
        }
        cur = err.source();
    }
    None
}

impl std::fmt::Display for Poisoned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "writes refused after a failed sync ({}); reopen the directory to recover (with a \
             new storage instance: one remembers the files whose sync failed)",
            self.message
        )
    }
}

impl std::error::Error for Poisoned {}

/// The error a poisoned instance answers with.
pub(crate) fn poisoned_error(p: &std::sync::Arc<Poisoned>) -> io::Error {
    io::Error::new(p.kind, PoisonedError(p.clone()))
}

/// [`Poisoned`] behind an `Arc`, so one cause serves every later error.
#[derive(Debug)]
struct PoisonedError(std::sync::Arc<Poisoned>);

impl std::fmt::Display for PoisonedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for PoisonedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Whether `e` says "this instance is poisoned: reopen it" (see [`Poisoned`]), also when
/// it was wrapped with a topic or offset on its way out.
#[must_use]
pub fn is_poisoned(e: &io::Error) -> bool {
    poisoned_cause(e).is_some()
}

/// The [`Poisoned`] cause inside `e`, if any.
#[must_use]
pub fn poisoned_cause(e: &io::Error) -> Option<&Poisoned> {
    let mut inner: Option<&(dyn std::error::Error + 'static)> =
        e.get_ref().map(|r| r as &(dyn std::error::Error + 'static));
    for _ in 0..8 {
        let cur = inner?;
        if let Some(p) = cur.downcast_ref::<PoisonedError>() {
            return Some(&p.0);
        }
        if let Some(p) = cur.downcast_ref::<Poisoned>() {
            return Some(p);
        }
        inner = match cur.downcast_ref::<io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|r| r as &(dyn std::error::Error + 'static)),
            None => cur.source(),
        };
    }
    None
}

/// The error of a write to a store opened read-only.
pub(crate) fn read_only_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "the store was opened read-only (Store::open_read_only): nothing is written",
    )
}
