//! One node: its two Walrus instances, openraft, and the HTTP server.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt as _;
use openraft::{Config, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use walrus::Walrus;

use crate::client::{WriteError, Writer};
use crate::log_store::{self, LogStore};
use crate::network::Network;
use crate::state_machine::StateMachine;
use crate::{NodeId, Raft, Request, Response};

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Its id in the cluster.
    pub id: NodeId,
    /// Its directory (created if needed): `raft/`, `data/`, `snapshot`.
    pub dir: PathBuf,
    /// Where its HTTP server listens (port 0: any free port; [`Node::addr`] tells which).
    pub listen: SocketAddr,
    /// Raft's heartbeat; elections time out after 3–6 heartbeats.
    pub heartbeat: Duration,
    /// A snapshot is built after this many entries past the last one.
    pub snapshot_after: u64,
    /// Entries kept in the log below the last snapshot (a follower that far behind is sent
    /// entries, not the snapshot).
    pub keep_logs: u64,
    /// How long a write waits for its commit before it fails with
    /// [`WriteError::TimedOut`](crate::WriteError::TimedOut) (telling whether it was proposed):
    /// without a quorum a write would wait forever. `None` (or zero): no limit.
    pub write_timeout: Option<Duration>,
    /// Bytes of requests the node's write queue holds at most (256 MiB by default; rounded up
    /// to KiB); past it a write fails at once,
    /// never proposed ([`WriteError::Busy`](crate::WriteError::Busy)). While a proposal is
    /// stuck (no quorum) nothing leaves the queue: this bounds the memory retrying clients
    /// take.
    pub write_queue_bytes: u64,
}

impl NodeConfig {
    /// A node with the defaults: heartbeat 100 ms, a snapshot every 10 000 entries, writes
    /// waiting 10 s at most for their commit.
    pub fn new(id: NodeId, dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            id,
            dir: dir.into(),
            listen,
            heartbeat: Duration::from_millis(100),
            snapshot_after: 10_000,
            keep_logs: 1000,
            write_timeout: Some(Duration::from_secs(10)),
            write_queue_bytes: crate::client::DEFAULT_WRITE_QUEUE_BYTES,
        }
    }
}

/// A running node. Dropping it stops nothing; call [`shutdown`](Self::shutdown).
pub struct Node {
    id: NodeId,
    addr: SocketAddr,
    raft: Raft,
    writer: Writer,
    state: StateMachine,
    log: LogStore,
    server: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
    /// The node's directory.
    dir: PathBuf,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// How long [`Node::shutdown`] waits for the tasks raft leaves running (a snapshot build among
/// them) to let go of the node's instances.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

/// Whether the instance lock file `path` can be taken now (nothing holds it, or there is none).
/// A lock file that cannot be opened (permissions, no descriptors left) or locked (no locks
/// left, a file system without them) is an error: whether the directory is free is then
/// unknown.
fn lock_free(path: &Path) -> io::Result<bool> {
    match std::fs::File::options().read(true).write(true).open(path) {
        Ok(file) => match file.try_lock() {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(io::Error::new(
                e.kind(),
                format!("lock file {}: {e}", path.display()),
            )),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("lock file {}: {e}", path.display()),
        )),
    }
}

/// Opens the raft log and the state machine kept in a node's directory `dir` (see the
/// [crate docs](crate) for its layout), creating them if needed.
///
/// # Errors
/// `ResourceBusy` if another live instance holds them; `InvalidData` for damage; an I/O error.
pub fn open_stores(dir: &Path) -> io::Result<(LogStore, StateMachine)> {
    let log_wal = Arc::new(log_store::open_instance(&dir.join("raft"))?);
    let data = Arc::new(log_store::open_instance(&dir.join("data"))?);
    let log = LogStore::open(log_wal)?;
    let state = StateMachine::open(data, &log, dir.join("snapshot"))?;
    Ok((log, state))
}

impl Node {
    /// Opens the node's directory, starts raft and the HTTP server. A new node waits to be
    /// initialized or added to a cluster.
    ///
    /// # Errors
    /// `InvalidInput` for a heartbeat too long to time elections with; opening the instances
    /// (`ResourceBusy` if another process holds the directory, `InvalidData` for damage),
    /// binding the address, or starting raft.
    pub async fn start(config: NodeConfig) -> io::Result<Self> {
        // Checked before anything is created.
        let hb = u64::try_from(config.heartbeat.as_millis())
            .ok()
            .filter(|hb| hb.checked_mul(6).is_some())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "node {}: heartbeat {:?} is too long",
                        config.id, config.heartbeat
                    ),
                )
            })?
            .max(10);
        // Bound before the stores open and raft starts: a port in use then leaves nothing
        // holding the directory (raft's core would let go of it only once it ran down).
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("node {}: binding {}: {e}", config.id, config.listen),
            )
        })?;
        // The instances make the directories, each with its parent synced (a node directory
        // made here without that could vanish in a power cut, with the node's vote and log).
        let (log, state) = open_stores(&config.dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("node directory {}: {e}", config.dir.display()),
            )
        })?;

        let raft_config = Config {
            cluster_name: "walrus".into(),
            heartbeat_interval: hb,
            election_timeout_min: hb * 3,
            election_timeout_max: hb * 6,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_after),
            max_in_snapshot_log_to_keep: config.keep_logs,
            ..Config::default()
        }
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let network = Network::new(Duration::from_secs(10))?;
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            network,
            log.clone(),
            state.clone(),
        )
        .await
        .map_err(|e| io::Error::other(format!("node {}: starting raft: {e}", config.id)))?;

        let addr = listener.local_addr()?;
        let writer = Writer::start(raft.clone(), config.write_timeout, config.write_queue_bytes);
        let app = crate::api::router(crate::api::AppState {
            id: config.id,
            raft: raft.clone(),
            writer: writer.clone(),
            data: Arc::downgrade(state.data()),
            snapshots: crate::api::SnapshotStream::default(),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            // Small RPCs and answers: never held back waiting for an ACK (Nagle).
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::warn!(error = %e, "TCP_NODELAY not set");
                }
            });
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        tracing::info!(id = config.id, %addr, dir = %config.dir.display(), "walrus node started");
        Ok(Self {
            id: config.id,
            addr,
            raft,
            writer,
            state,
            log,
            server: Some(server),
            stop: Some(stop),
            dir: config.dir,
        })
    }

    /// Its id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address its HTTP server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// This node as a member of a cluster's membership: its address.
    pub fn member(&self) -> openraft::BasicNode {
        openraft::BasicNode {
            addr: self.addr.to_string(),
        }
    }

    /// The raft handle (metrics, membership).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The replicated topics as this node holds them (read only: only raft writes them).
    pub fn data(&self) -> &Arc<Walrus> {
        self.state.data()
    }

    /// The Walrus instance holding the raft log.
    pub fn log_instance(&self) -> &Arc<Walrus> {
        self.log.instance()
    }

    /// Appends `data` to `topic` through raft; the offset, once a quorum committed it.
    ///
    /// # Errors
    /// See [`WriteError`].
    pub async fn append(&self, topic: &str, data: &[u8]) -> Result<u64, WriteError> {
        let request = Request::Append {
            topic: topic.to_owned(),
            data: data.to_vec(),
        };
        match self.writer.write(request).await? {
            Response::Appended { offset } => Ok(offset),
            other => Err(WriteError::Raft(format!("unexpected response {other:?}"))),
        }
    }

    /// Completes when raft's core stops on a fatal error (its storage failed, it panicked):
    /// the node then serves no write, and its reads go stale; stop it ([`shutdown`] answers
    /// the error) and start it again. Pending for as long as the core runs.
    ///
    /// [`shutdown`]: Self::shutdown
    pub async fn failed(&self) -> io::Error {
        let id = self.id;
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(f) = &metrics.borrow_and_update().running_state {
                return io::Error::other(format!("node {id}: raft's core failed: {f}"));
            }
            if metrics.changed().await.is_err() {
                return io::Error::other(format!("node {id}: raft's core is gone"));
            }
        }
    }

    /// The node's group-committing writer (cheap to clone, `'static`: for tasks).
    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }

    /// Writes `request` through raft (group-committed with concurrent writes): its response,
    /// once a quorum committed it and this node applied it.
    ///
    /// # Errors
    /// See [`WriteError`].
    pub async fn write(&self, request: Request) -> Result<Response, WriteError> {
        self.writer.write(request).await
    }

    /// Stops raft and the server, and closes the instances (flushing them). When it returns
    /// `Ok`, the node's directory is free for a new node: the tasks that held its instances
    /// (replication streams, the state machine's worker, the write queue) end on their own
    /// once raft is down, and it waits for them (30 seconds at most: a snapshot build may be
    /// under way); HTTP connections hold the data instance only while a request reads it.
    ///
    /// # Errors
    /// Raft's core task failed; `ResourceBusy` when the instances are still held after 30
    /// seconds (clones the caller keeps, say from [`data`](Self::data), or a task still
    /// running): the directory is not free yet.
    pub async fn shutdown(mut self) -> io::Result<()> {
        let id = self.id;
        // openraft's own shutdown answers Ok whatever stopped its core: the metrics say.
        let stopped = self.raft.metrics().borrow().running_state.clone();
        let result = self
            .raft
            .shutdown()
            .await
            .map_err(|e| io::Error::other(format!("node {id}: raft shutdown: {e}")))
            .and(
                stopped
                    .map_err(|f| io::Error::other(format!("node {id}: raft's core failed: {f}"))),
            );
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
        let locks = ["raft", "data"].map(|d| self.dir.join(d).join("LOCK"));
        drop(self);
        // Free once each instance's lock can be taken: the last holder's drop (another task's,
        // maybe on another thread) releases it last, after the instance's final writes.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT;
        loop {
            match locks
                .iter()
                .map(|l| lock_free(l))
                .collect::<io::Result<Vec<_>>>()
            {
                Ok(free) if free.iter().all(|&f| f) => break,
                Ok(_) => {}
                Err(e) => {
                    return result.and(Err(io::Error::new(
                        e.kind(),
                        format!("node {id}: shut down, but whether its directory is free is unknown: {e}"),
                    )));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                // Not free: a new node on the directory would be refused.
                return result.and(Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!(
                        "node {id}: its instances are still held {SHUTDOWN_WAIT:?} after the \
                         shutdown (by the caller, or a task raft left running): the directory \
                         is not free yet"
                    ),
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_file_is_free_held_or_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("LOCK");
        assert!(lock_free(&path).unwrap(), "no lock file: free");
        let held = std::fs::File::create(&path).unwrap();
        held.lock().unwrap();
        assert!(!lock_free(&path).unwrap(), "held by another descriptor");
        drop(held);
        assert!(lock_free(&path).unwrap());
        // One that cannot be opened says nothing: an error naming it, not "free".
        let blocked = dir.path().join("dir");
        std::fs::create_dir(&blocked).unwrap();
        let e = lock_free(&blocked).unwrap_err();
        assert!(e.to_string().contains("dir"), "{e}");
    }
}
