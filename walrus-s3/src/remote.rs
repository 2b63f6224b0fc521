//! The object store as the rest of the crate sees it: blocking calls with a deadline each, run
//! on a Tokio runtime the crate owns, and `object_store` errors turned into `io::Error`s that
//! name the operation and the object.

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload,
};

use crate::format::{self, BatchHeader, HEADER_PROBE_LEN, HeaderProbe};

/// How many header GETs an open keeps in flight.
const HEADER_FETCH_CONCURRENCY: usize = 16;
/// The slowest transfer a PUT's or a GET's deadline allows for beyond the per-request one:
/// 4 MiB/s.
const TRANSFER_BYTES_PER_SEC: u64 = 4 << 20;

/// A batch object as listed: its sequence, its name, its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    pub(crate) sequence: u64,
    pub(crate) path: Path,
    pub(crate) size: u64,
}

/// The latest checkpoint of a prefix, and every checkpoint object's start and path.
pub(crate) type Checkpoints = (Option<format::Checkpoint>, Vec<(u64, Path)>);

/// What a conditional PUT found.
#[derive(Debug)]
pub(crate) enum PutOutcome {
    /// Written now.
    Created,
    /// The name was taken.
    Exists,
}

/// An object's size and user metadata, as a HEAD shows them.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) size: u64,
    pub(crate) metadata: Vec<(String, String)>,
}

/// One prefix of one object store, with the runtime its futures run on.
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    store: Arc<dyn ObjectStore>,
    runtime: Arc<BlockingRuntime>,
    prefix: String,
    timeout: Duration,
}

/// The runtime a blocking API runs its futures on. Its callers block, from any thread: called
/// inside an async runtime (a task, `spawn_blocking`, `block_in_place`), where Tokio's
/// `block_on` would panic, [`block_on`](Self::block_on) runs the future on a thread of its own
/// and waits for it; and dropping it there shuts it down in the background where a plain drop
/// would panic.
#[derive(Debug)]
struct BlockingRuntime(Option<tokio::runtime::Runtime>);

impl BlockingRuntime {
    fn block_on<T: Send>(&self, fut: impl Future<Output = io::Result<T>> + Send) -> io::Result<T> {
        let Some(rt) = &self.0 else {
            return Err(io::Error::other("the S3 runtime was shut down"));
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return rt.block_on(fut);
        }
        // A thread per call, only here: an async caller stalls its own executor thread
        // meanwhile (as any blocking call does), never the I/O, which runs on this runtime.
        std::thread::scope(|s| {
            match std::thread::Builder::new()
                .name("walrus-s3-call".into())
                .spawn_scoped(s, || rt.block_on(fut))
            {
                Ok(call) => call
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("an S3 call panicked"))),
                Err(e) => Err(io::Error::new(
                    e.kind(),
                    format!("walrus-s3: no thread to run a call on from inside a runtime: {e}"),
                )),
            }
        })
    }
}

impl Drop for BlockingRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            rt.shutdown_background();
        }
    }
}

fn store_error(op: &str, what: &str, e: object_store::Error) -> io::Error {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => io::ErrorKind::NotFound,
        E::AlreadyExists { .. } | E::Precondition { .. } => io::ErrorKind::AlreadyExists,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
        E::InvalidPath { .. } => io::ErrorKind::InvalidInput,
        E::NotSupported { .. } | E::NotImplemented { .. } => io::ErrorKind::Unsupported,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("S3 {op} of {what}: {e}"))
}

impl Remote {
    /// A remote over `store` under `prefix`, with a runtime of its own. `InvalidInput` for a
    /// zero deadline (every request not answered at its first poll would time out).
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        timeout: Duration,
    ) -> io::Result<Self> {
        if timeout.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("S3 prefix {prefix:?}: the request timeout must be above zero"),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("walrus-s3-io")
            .enable_all()
            .build()?;
        Ok(Self {
            store,
            runtime: Arc::new(BlockingRuntime(Some(runtime))),
            prefix: prefix.trim_matches('/').to_owned(),
            timeout,
        })
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn path(&self, sequence: u64) -> Path {
        Path::from(format::object_name(&self.prefix, sequence))
    }

    /// Runs `fut` on the runtime with the per-request deadline.
    fn run<T: Send>(
        &self,
        op: &str,
        what: &str,
        fut: impl Future<Output = object_store::Result<T>> + Send,
    ) -> io::Result<T> {
        self.run_within(self.timeout, op, what, fut)
    }

    fn run_within<T: Send>(
        &self,
        timeout: Duration,
        op: &str,
        what: &str,
        fut: impl Future<Output = object_store::Result<T>> + Send,
    ) -> io::Result<T> {
        self.runtime.block_on(within(timeout, op, what, async {
            fut.await.map_err(|e| store_error(op, what, e))
        }))
    }

    /// Every batch object under the prefix with a sequence of at least `from`, by sequence.
    /// Objects whose names are not batch names are ignored. The listing starts after batch
    /// `from - 1` (S3 lists in name order), and the deadline applies to each answer of the
    /// paginated listing, not to the whole of a long prefix.
    pub(crate) fn list(&self, from: u64) -> io::Result<Vec<Listed>> {
        let prefix = (!self.prefix.is_empty()).then(|| Path::from(self.prefix.as_str()));
        let what = format!("prefix {:?}", self.prefix);
        let mut stream = match from.checked_sub(1) {
            Some(last_seen) => self
                .store
                .list_with_offset(prefix.as_ref(), &self.path(last_seen)),
            None => self.store.list(prefix.as_ref()),
        };
        let metas = self.drain(&what, &mut stream)?;
        let mut out: Vec<Listed> = metas
            .into_iter()
            .filter_map(|m| {
                let sequence = format::parse_object_name(m.location.as_ref())?;
                // Only direct children of the prefix: `a/b` must not pick up `a/b/c/…`.
                (sequence >= from && m.location == self.path(sequence)).then_some(Listed {
                    sequence,
                    path: m.location,
                    size: m.size,
                })
            })
            .collect();
        out.sort_by_key(|l| l.sequence);
        Ok(out)
    }

    /// The validated headers of `objects`, fetched concurrently, in the same order.
    pub(crate) fn headers(&self, objects: &[Listed]) -> io::Result<Vec<BatchHeader>> {
        let timeout = self.timeout;
        let fetches = objects.iter().map(|l| {
            let store = Arc::clone(&self.store);
            let l = l.clone();
            async move {
                let what = l.path.to_string();
                within(timeout, "GET", &what, fetch_header(&*store, &l)).await
            }
        });
        self.runtime.block_on(
            futures::stream::iter(fetches)
                .buffered(HEADER_FETCH_CONCURRENCY)
                .try_collect(),
        )
    }

    /// The deadline of a request that moves `len` bytes: it grows with them, since a batch may
    /// carry a 1 GiB entry, which no per-request deadline of seconds lets through.
    fn transfer_deadline(&self, len: u64) -> Duration {
        self.timeout
            .saturating_add(Duration::from_secs(len / TRANSFER_BYTES_PER_SEC))
    }

    /// Bytes `range` of `path`, exactly (a short answer is an error).
    pub(crate) fn get_range(&self, path: &Path, range: Range<u64>) -> io::Result<Bytes> {
        let want = range.end - range.start;
        let what = format!("{path} bytes {range:?}");
        // As a PUT's: what was stored within its deadline can be read back within this one.
        let timeout = self.transfer_deadline(want);
        let bytes = self.run_within(
            timeout,
            "GET",
            &what,
            self.store.get_range(path, range.clone()),
        )?;
        if bytes.len() as u64 != want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("S3 GET of {what}: {} bytes came back", bytes.len()),
            ));
        }
        Ok(bytes)
    }

    /// PUT `bytes` at `path` only if nothing is there (If-None-Match).
    pub(crate) fn put_create(&self, path: &Path, bytes: Bytes) -> io::Result<PutOutcome> {
        self.put_create_with(path, bytes, &[])
    }

    /// PUT `bytes` with user `metadata` at `path` only if nothing is there (If-None-Match).
    pub(crate) fn put_create_with(
        &self,
        path: &Path,
        bytes: Bytes,
        metadata: &[(String, String)],
    ) -> io::Result<PutOutcome> {
        let attributes: Attributes = metadata
            .iter()
            .map(|(k, v)| (Attribute::Metadata(k.clone().into()), v.clone()))
            .collect();
        let opts = PutOptions {
            mode: PutMode::Create,
            attributes,
            ..PutOptions::default()
        };
        let what = path.to_string();
        let timeout = self.transfer_deadline(bytes.len() as u64);
        match self.run_within(
            timeout,
            "PUT",
            &what,
            self.store
                .put_opts(path, PutPayload::from_bytes(bytes), opts),
        ) {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(PutOutcome::Exists),
            Err(e) => Err(e),
        }
    }

    /// The validated header of the batch object at `path` (named for `sequence`), from a HEAD
    /// and a ranged GET; `None` if there is no such object.
    ///
    /// # Errors
    /// `InvalidData` when the object is not a whole batch of that sequence.
    pub(crate) fn batch_header(
        &self,
        path: &Path,
        sequence: u64,
    ) -> io::Result<Option<BatchHeader>> {
        let Some(head) = self.head(path)? else {
            return Ok(None);
        };
        let listed = Listed {
            sequence,
            path: path.clone(),
            size: head.size,
        };
        Ok(self.headers(std::slice::from_ref(&listed))?.pop())
    }

    /// The size and user metadata of `path`; `None` if there is no such object.
    pub(crate) fn head(&self, path: &Path) -> io::Result<Option<Head>> {
        let opts = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let what = path.to_string();
        match self.run("HEAD", &what, self.store.get_opts(path, opts)) {
            Ok(r) => Ok(Some(Head {
                size: r.meta.size,
                metadata: r
                    .attributes
                    .iter()
                    .filter_map(|(k, v)| match k {
                        Attribute::Metadata(k) => Some((k.to_string(), v.to_string())),
                        _ => None,
                    })
                    .collect(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every object under `dir` (at any depth): its path and size, sorted by path. The deadline
    /// applies to each answer of the paginated listing.
    pub(crate) fn list_under(&self, dir: &Path) -> io::Result<Vec<(Path, u64)>> {
        let what = format!("prefix {dir}");
        let mut stream = self.store.list(Some(dir));
        let mut out: Vec<(Path, u64)> = self
            .drain(&what, &mut stream)?
            .into_iter()
            .map(|m| (m.location, m.size))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every answer of a listing, with the deadline on each page.
    fn drain(
        &self,
        what: &str,
        stream: &mut BoxStream<'static, object_store::Result<ObjectMeta>>,
    ) -> io::Result<Vec<ObjectMeta>> {
        let timeout = self.timeout;
        self.runtime.block_on(async {
            let mut metas = Vec::new();
            loop {
                let page = format!("{what} (after {} objects)", metas.len());
                match within(timeout, "LIST", &page, async { Ok(stream.next().await) }).await? {
                    Some(Ok(meta)) => metas.push(meta),
                    Some(Err(e)) => return Err(store_error("LIST", what, e)),
                    None => return Ok(metas),
                }
            }
        })
    }

    /// Every checkpoint object of the prefix: start, path and size, sorted by start.
    pub(crate) fn checkpoint_objects(&self) -> io::Result<Vec<(u64, Path, u64)>> {
        let dir = Path::from(format::checkpoint_dir(&self.prefix));
        let mut found: Vec<(u64, Path, u64)> = self
            .list_under(&dir)?
            .into_iter()
            .filter_map(|(path, size)| {
                let start = format::parse_checkpoint_name(path.as_ref())?;
                // Only direct children of the directory. Compared as paths: a listed path is
                // in object_store's encoding (a prefix's non-ASCII bytes, `~`, `%`, … escaped).
                (path == Path::from(format::checkpoint_name(&self.prefix, start)))
                    .then_some((start, path, size))
            })
            .collect();
        found.sort_by_key(|(start, _, _)| *start);
        Ok(found)
    }

    /// The latest checkpoint of the prefix (the one with the highest start), if any, and the
    /// start and path of every checkpoint object (for clean-up), sorted by start.
    ///
    /// # Errors
    /// The store's errors; `InvalidData` when the latest checkpoint is damaged (an older one
    /// cannot stand in: the batches it would need may be gone).
    pub(crate) fn checkpoints(&self) -> io::Result<Checkpoints> {
        let found = self.checkpoint_objects()?;
        let latest = match found.last() {
            None => None,
            Some((start, path, size)) => Some(self.read_checkpoint(path, *start, *size)?),
        };
        Ok((
            latest,
            found
                .into_iter()
                .map(|(start, path, _)| (start, path))
                .collect(),
        ))
    }

    /// The checkpoint at `path` (of `start`); `None` if there is no such object.
    ///
    /// # Errors
    /// The store's errors; `InvalidData` when it is damaged.
    pub(crate) fn checkpoint(
        &self,
        path: &Path,
        start: u64,
    ) -> io::Result<Option<format::Checkpoint>> {
        let Some(head) = self.head(path)? else {
            return Ok(None);
        };
        self.read_checkpoint(path, start, head.size).map(Some)
    }

    /// The checkpoint object at `path`, `size` bytes long as listed; one of a size no
    /// checkpoint has is refused before it is fetched.
    pub(crate) fn read_checkpoint(
        &self,
        path: &Path,
        start: u64,
        size: u64,
    ) -> io::Result<format::Checkpoint> {
        if !(format::MIN_CHECKPOINT_LEN..=format::MAX_CHECKPOINT_LEN).contains(&size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("checkpoint object {path}: {size} bytes, no checkpoint's length"),
            ));
        }
        let bytes = self.get_range(path, 0..size)?;
        format::decode_checkpoint(path.as_ref(), start, &bytes)
    }

    /// Replaces the object at `path` by an empty one (an unconditional PUT): its bytes go, its
    /// name stays taken.
    pub(crate) fn put_empty(&self, path: &Path) -> io::Result<()> {
        let what = path.to_string();
        self.run(
            "PUT",
            &what,
            self.store.put(path, PutPayload::from_bytes(Bytes::new())),
        )
        .map(|_| ())
    }

    /// DELETE `path`; an object that is not there is no error.
    pub(crate) fn delete(&self, path: &Path) -> io::Result<()> {
        let what = path.to_string();
        match self.run("DELETE", &what, self.store.delete(path)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// `fut`, or `TimedOut` naming the operation when it takes longer than `timeout`.
async fn within<T>(
    timeout: Duration,
    op: &str,
    what: &str,
    fut: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("S3 {op} of {what}: no answer within {timeout:?}"),
            ))
        })
}

async fn fetch_header(store: &dyn ObjectStore, l: &Listed) -> io::Result<BatchHeader> {
    let what = l.path.to_string();
    if l.size < (format::FIXED_HEADER_LEN + 4) as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "batch object {what}: {} bytes, shorter than a batch header",
                l.size
            ),
        ));
    }
    let probe = get_bounded(store, l, 0..HEADER_PROBE_LEN.min(l.size)).await?;
    let header = match format::decode_header(&what, &probe)? {
        HeaderProbe::Header(h) => h,
        HeaderProbe::NeedBytes(n) if n <= l.size => {
            let whole = get_bounded(store, l, 0..n).await?;
            match format::decode_header(&what, &whole)? {
                HeaderProbe::Header(h) => h,
                HeaderProbe::NeedBytes(m) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "batch object {what}: a GET of {n} header bytes returned {} (needs {m})",
                            whole.len()
                        ),
                    ));
                }
            }
        }
        HeaderProbe::NeedBytes(n) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "batch object {what}: header of {n} bytes in a {}-byte object",
                    l.size
                ),
            ));
        }
    };
    if header.sequence != l.sequence || header.object_len != l.size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "batch object {what}: header says batch {} of {} bytes, the listing says batch {} of {} bytes",
                header.sequence, header.object_len, l.sequence, l.size
            ),
        ));
    }
    Ok(header)
}

async fn get_bounded(store: &dyn ObjectStore, l: &Listed, range: Range<u64>) -> io::Result<Bytes> {
    let opts = GetOptions {
        range: Some(GetRange::Bounded(range)),
        ..GetOptions::default()
    };
    let what = l.path.to_string();
    match store.get_opts(&l.path, opts).await {
        Ok(r) => r.bytes().await.map_err(|e| store_error("GET", &what, e)),
        Err(e) => Err(store_error("GET", &what, e)),
    }
}
