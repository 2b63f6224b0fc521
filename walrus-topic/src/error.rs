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

/// Wraps `e` with the topic (and offset) it happened on, keeping its kind.
pub(crate) fn on_topic(e: io::Error, topic: &str, offset: Option<u64>) -> io::Error {
    let msg = match offset {
        Some(o) => format!("topic {topic:?} at offset {o}: {e}"),
        None => format!("topic {topic:?}: {e}"),
    };
    io::Error::new(e.kind(), msg)
}
