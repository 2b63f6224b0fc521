//! The remote tier: an object store that sealed data is uploaded to and read back from, as the
//! engine needs it — in the spirit of [`Storage`](crate::Storage) for segment files. This
//! module defines the contract ([`RemoteTier`]); [`MemoryTier`] implements it in memory (with
//! injected faults, for the simulated crash tests); `walrus-s3` implements it on S3. One
//! conformance suite (`conformance`, cargo feature `conformance`) holds every implementation
//! to the same behaviour.
//!
//! The contract, beyond the method docs:
//! * an object, once created, never changes: [`put_new`](RemoteTier::put_new) creates a name
//!   only if it is free, so an upload redone under the same name after a crash cannot replace
//!   what a first attempt stored, and two racing uploads store one object;
//! * keys are `/`-separated names of [`validate_key`]'s alphabet; a bad key or metadata is
//!   `InvalidInput` and changes nothing;
//! * every error is an `io::Error` naming the operation and the key; a tier that does not
//!   answer fails the call (`TimedOut` or a connection error), it never blocks beyond its own
//!   deadline;
//! * calls are blocking and may come from any thread at once.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::Range;

mod memory;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use memory::{MemoryTier, TierOp};

/// User metadata stored with an object (S3's `x-amz-meta-*`): what it holds, for operators and
/// for checks; keys `[a-z0-9-]`, values printable ASCII, [`MAX_METADATA_BYTES`] in all.
pub type Metadata = BTreeMap<String, String>;

/// Bytes of metadata (keys and values) one object may carry (S3's limit for user metadata).
pub const MAX_METADATA_BYTES: usize = 2048;

/// Length of a key at most (S3's limit).
pub const MAX_KEY_LEN: usize = 1024;

/// What a [`RemoteTier::put_new`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was stored now.
    Created,
    /// An object of that name exists already (stored by an earlier attempt, or a concurrent
    /// one); it was left as it is.
    Exists,
}

/// An object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its full key.
    pub key: String,
    /// Its length in bytes.
    pub size: u64,
}

/// An object as [`RemoteTier::head`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its length in bytes.
    pub size: u64,
    /// The metadata it was stored with.
    pub meta: Metadata,
}

/// An object store the engine can tier data to. See the [module docs](self) for the contract.
pub trait RemoteTier: Send + Sync + fmt::Debug {
    /// Where the objects go, for messages (e.g. `memory`, `s3://bucket/prefix`).
    fn describe(&self) -> String;

    /// Stores `bytes` with `meta` under `key` if no object has that name; an existing object
    /// is left as it is ([`PutOutcome::Exists`]). On an error the object may or may not have
    /// been stored (an answer lost on the way back): a retry under the same key finds out.
    fn put_new(&self, key: &str, bytes: &[u8], meta: &Metadata) -> io::Result<PutOutcome>;

    /// The size and metadata of `key`; `None` if there is no such object.
    fn head(&self, key: &str) -> io::Result<Option<ObjectInfo>>;

    /// Exactly bytes `range` of `key`. `NotFound` if there is no such object,
    /// `UnexpectedEof` if the range ends past its end, `InvalidInput` if it is reversed.
    fn get_range(&self, key: &str, range: Range<u64>) -> io::Result<Vec<u8>>;

    /// Every object whose key starts with `dir` + `/` (at any depth), sorted by key.
    fn list(&self, dir: &str) -> io::Result<Vec<Listed>>;

    /// Removes `key`; removing an object that is not there succeeds (a delete redone after a
    /// crash).
    fn delete(&self, key: &str) -> io::Result<()>;
}

/// Checks that `key` is one a tier accepts: 1..=[`MAX_KEY_LEN`] bytes of `[A-Za-z0-9._=-]`
/// in `/`-separated parts, none empty, none `.` or `..`. `InvalidInput` otherwise.
pub fn validate_key(key: &str) -> io::Result<()> {
    let bad = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("object key {key:?}: {why}"),
        ))
    };
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return bad(&format!("must be 1 to {MAX_KEY_LEN} bytes"));
    }
    for part in key.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return bad("an empty, `.` or `..` part");
        }
        if let Some(c) = part
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '=' | '-')))
        {
            return bad(&format!("character {c:?} is outside [A-Za-z0-9._=-/]"));
        }
    }
    Ok(())
}

/// Checks `meta` (see [`Metadata`]). `InvalidInput` naming `key` otherwise.
pub fn validate_metadata(key: &str, meta: &Metadata) -> io::Result<()> {
    let bad = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("metadata of object {key:?}: {why}"),
        ))
    };
    let mut total = 0;
    for (k, v) in meta {
        if k.is_empty()
            || !k
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad(format!("key {k:?} is outside [a-z0-9-]+"));
        }
        if !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return bad(format!("value of {k:?} is not printable ASCII"));
        }
        total += k.len() + v.len();
    }
    if total > MAX_METADATA_BYTES {
        return bad(format!("{total} bytes, over {MAX_METADATA_BYTES}"));
    }
    Ok(())
}

/// Checks `range` against an object of `size` bytes for [`RemoteTier::get_range`].
pub fn check_range(key: &str, range: &Range<u64>, size: u64) -> io::Result<()> {
    if range.start > range.end {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("GET of {key:?}: reversed range {range:?}"),
        ));
    }
    if range.end > size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("GET of {key:?} bytes {range:?}: the object has {size} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for good in ["a", "t/0001.blk", "a-b_c=d.e/F9"] {
            validate_key(good).unwrap();
        }
        let long = "a".repeat(MAX_KEY_LEN + 1);
        for bad in [
            "", "/a", "a/", "a//b", "a/../b", "./a", "a b", "ü", "a\\b", &long,
        ] {
            let e = validate_key(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn metadata() {
        let mut m = Metadata::new();
        m.insert("walrus-topic".into(), "orders 1..9".into());
        validate_metadata("k", &m).unwrap();
        for (k, v) in [("Upper", "x"), ("", "x"), ("a_b", "x"), ("a", "tab\t")] {
            let m = Metadata::from([(k.to_string(), v.to_string())]);
            assert!(validate_metadata("k", &m).is_err(), "{k:?}={v:?}");
        }
        let m = Metadata::from([("a".to_string(), "x".repeat(MAX_METADATA_BYTES))]);
        assert!(validate_metadata("k", &m).is_err());
    }

    #[test]
    fn ranges() {
        check_range("k", &(0..0), 0).unwrap();
        check_range("k", &(3..10), 10).unwrap();
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 5..3;
        assert_eq!(
            check_range("k", &reversed, 10).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            check_range("k", &(5..11), 10).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
