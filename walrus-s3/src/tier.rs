//! [`S3Tier`]: the engine's remote tier ([`RemoteTier`]) on S3. Keys live under a prefix of a
//! bucket; object metadata travels as S3 user metadata (`x-amz-meta-*`); `put_new` is a
//! conditional PUT (If-None-Match), so a redone upload never replaces the first; every request
//! has a deadline, so a hung server fails the call instead of blocking it.

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::ObjectStore;
use object_store::path::Path;
use walrus::tier::{
    Listed, Metadata, ObjectInfo, PutOutcome, RemoteTier, check_range, validate_key,
    validate_metadata,
};

use crate::reader::DEFAULT_REQUEST_TIMEOUT;
use crate::remote::{self, Remote};

/// A [`RemoteTier`] on a prefix of an S3 bucket (any `object_store` works; the tests use a
/// real S3-compatible server).
#[derive(Debug, Clone)]
pub struct S3Tier {
    remote: Remote,
}

impl S3Tier {
    /// The tier under `prefix` of `store`, with a 30 s deadline per request.
    ///
    /// # Errors
    /// The client's runtime could not start.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> io::Result<Self> {
        Self::with_timeout(store, prefix, DEFAULT_REQUEST_TIMEOUT)
    }

    /// Like [`new`](Self::new), with a deadline of `timeout` for each request.
    ///
    /// # Errors
    /// See [`new`](Self::new).
    pub fn with_timeout(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        timeout: Duration,
    ) -> io::Result<Self> {
        let trimmed = prefix.trim_matches('/');
        if !trimmed.is_empty() {
            validate_key(trimmed)?;
        }
        Ok(Self {
            remote: Remote::new(store, trimmed, timeout)?,
        })
    }

    fn path(&self, key: &str) -> io::Result<Path> {
        validate_key(key)?;
        Ok(match self.remote.prefix() {
            "" => Path::from(key),
            prefix => Path::from(format!("{prefix}/{key}")),
        })
    }

    /// `path` without the prefix: the key the caller knows.
    fn key_of(&self, path: &Path) -> String {
        let full = path.as_ref();
        match self.remote.prefix() {
            "" => full.to_owned(),
            prefix => full
                .strip_prefix(prefix)
                .and_then(|k| k.strip_prefix('/'))
                .unwrap_or(full)
                .to_owned(),
        }
    }
}

impl RemoteTier for S3Tier {
    fn describe(&self) -> String {
        format!("S3 prefix {:?}", self.remote.prefix())
    }

    fn put_new(&self, key: &str, bytes: &[u8], meta: &Metadata) -> io::Result<PutOutcome> {
        let path = self.path(key)?;
        validate_metadata(key, meta)?;
        let meta: Vec<(String, String)> =
            meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        Ok(
            match self
                .remote
                .put_create_with(&path, Bytes::copy_from_slice(bytes), &meta)?
            {
                remote::PutOutcome::Created => PutOutcome::Created,
                remote::PutOutcome::Exists => PutOutcome::Exists,
            },
        )
    }

    fn head(&self, key: &str) -> io::Result<Option<ObjectInfo>> {
        let path = self.path(key)?;
        Ok(self.remote.head(&path)?.map(|h| ObjectInfo {
            size: h.size,
            meta: h.metadata.into_iter().collect(),
        }))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> io::Result<Vec<u8>> {
        let path = self.path(key)?;
        if range.start >= range.end {
            // S3 has no empty ranges: the object's size decides.
            let Some(h) = self.remote.head(&path)? else {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("S3 GET of {path}: no such object"),
                ));
            };
            check_range(path.as_ref(), &range, h.size)?;
            return Ok(Vec::new());
        }
        match self.remote.get_range(&path, range.clone()) {
            Ok(bytes) => Ok(bytes.to_vec()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(e),
            // A range that starts past the end is refused (416), one that ends past it comes
            // back short: either way the size tells.
            Err(e) => match self.remote.head(&path) {
                Ok(Some(h)) if range.end > h.size => {
                    check_range(path.as_ref(), &range, h.size).map(|()| Vec::new())
                }
                Ok(None) => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("S3 GET of {path}: no such object"),
                )),
                _ => Err(e),
            },
        }
    }

    fn list(&self, dir: &str) -> io::Result<Vec<Listed>> {
        let path = self.path(dir)?;
        Ok(self
            .remote
            .list_under(&path)?
            .into_iter()
            .map(|(p, size)| Listed {
                key: self.key_of(&p),
                size,
            })
            .collect())
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        let path = self.path(key)?;
        self.remote.delete(&path)
    }
}
