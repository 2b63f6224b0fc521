//! Client writes through raft, and what they end in.
//!
//! openraft makes one log entry of each `client_write`, and replicates one RPC at a time per
//! follower: one entry per client would cost each client a replication round. The [`Writer`]
//! group-commits instead: requests queue, and whatever queued while the raft writes in flight
//! were busy becomes one `Batch` entry (up to [`MAX_BATCH`] requests or [`MAX_BATCH_BYTES`]).
//! Each request still gets its own response; a batch applies its requests in order, so a
//! refused one changes nothing and the others apply. A client's own `Batch` travels alone (the
//! state machine refuses a batch inside a batch), and one that holds a batch is refused here.

use std::sync::Arc;

use openraft::BasicNode;
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{NodeId, Raft, Request, Response};

/// Requests in one batch entry at most.
pub const MAX_BATCH: usize = 1024;
/// Payload bytes in one batch entry at most (a larger request travels alone).
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Raft writes in flight at once; requests arriving meanwhile form the next batch (1 measured
/// best: openraft replicates one RPC at a time per follower anyway; see docs/BENCHMARKS.md).
const IN_FLIGHT: usize = 1;

/// What a client write ends in, once raft is done with it.
#[derive(Debug, Clone)]
pub enum WriteError {
    /// This node is not the leader; the leader, if one is known. Nothing was written: openraft
    /// answers so only for a request it never proposed or whose entry a new leader truncated
    /// (such an entry is never committed), so retrying at the leader cannot write twice.
    NotLeader(Option<(NodeId, BasicNode)>),
    /// The state machine refused the request (nothing changed anywhere).
    Refused(String),
    /// No answer from raft (shutting down, storage failure): the outcome is unknown, the entry
    /// may still be committed by the next leader.
    Raft(String),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotLeader(Some((id, n))) => {
                write!(f, "not the leader; the leader is node {id} at {}", n.addr)
            }
            Self::NotLeader(None) => write!(f, "not the leader; no leader known"),
            Self::Refused(r) => write!(f, "refused: {r}"),
            Self::Raft(r) => write!(f, "outcome unknown: {r}"),
        }
    }
}

impl std::error::Error for WriteError {}

impl From<RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>> for WriteError {
    fn from(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Self {
        match e.forward_to_leader() {
            Some(f) => Self::NotLeader(f.leader_id.zip(f.leader_node.clone())),
            None => Self::Raft(e.to_string()),
        }
    }
}

/// Writes `request` through raft on `raft`: returns once a quorum committed it and this node
/// applied it.
pub(crate) async fn write(raft: &Raft, request: Request) -> Result<Response, WriteError> {
    let resp = raft.client_write(request).await?;
    answer(resp.data)
}

type Reply = oneshot::Sender<Result<Response, WriteError>>;

/// The group-committing front of a node's raft (see the [module docs](self)). Cloning shares
/// the queue.
#[derive(Debug, Clone)]
pub struct Writer {
    queue: mpsc::UnboundedSender<(Request, Reply)>,
}

impl Writer {
    /// Starts the batching task on the current tokio runtime; it ends when every clone of the
    /// writer is dropped.
    pub(crate) fn start(raft: Raft) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_loop(raft, rx));
        Self { queue }
    }

    /// Writes `request` through raft: returns once a quorum committed it and this node applied
    /// it.
    ///
    /// # Errors
    /// See [`WriteError`].
    pub async fn write(&self, request: Request) -> Result<Response, WriteError> {
        if let Request::Batch { requests } = &request
            && requests.iter().any(|r| matches!(r, Request::Batch { .. }))
        {
            return Err(WriteError::Refused("a batch inside a batch".into()));
        }
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((request, tx))
            .map_err(|_| WriteError::Raft("the node is shutting down".into()))?;
        rx.await
            .map_err(|_| WriteError::Raft("the node shut down before answering".into()))?
    }
}

fn size(r: &Request) -> usize {
    match r {
        Request::Append { topic, data } => topic.len() + data.len(),
        Request::Commit {
            topic, consumer, ..
        } => topic.len() + consumer.len() + 8,
        Request::Batch { requests } => requests.iter().map(size).sum(),
    }
}

async fn batch_loop(raft: Raft, mut rx: mpsc::UnboundedReceiver<(Request, Reply)>) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carry: Option<(Request, Reply)> = None;
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let first = match carry.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        // A request whose client stopped waiting (a timeout it may retry after) is not
        // proposed: once proposed it could commit, and the retry with it.
        if first.1.is_closed() {
            continue;
        }
        let mut bytes = size(&first.0);
        let alone = matches!(first.0, Request::Batch { .. });
        let mut batch = vec![first];
        while !alone && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) if item.1.is_closed() => {}
                Ok(item) => {
                    bytes += size(&item.0);
                    if bytes > MAX_BATCH_BYTES || matches!(item.0, Request::Batch { .. }) {
                        carry = Some(item);
                        break;
                    }
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            commit(&raft, batch).await;
            drop(permit);
        });
    }
}

/// Commits `batch` as one entry (a lone request as itself) and answers each request.
async fn commit(raft: &Raft, mut batch: Vec<(Request, Reply)>) {
    if batch.len() == 1 {
        if let Some((request, reply)) = batch.pop() {
            let _ = reply.send(write(raft, request).await);
        }
        return;
    }
    let (requests, replies): (Vec<Request>, Vec<Reply>) = batch.into_iter().unzip();
    match raft.client_write(Request::Batch { requests }).await {
        Ok(resp) => match resp.data {
            Response::Batch { responses } if responses.len() == replies.len() => {
                for (r, reply) in responses.into_iter().zip(replies) {
                    let _ = reply.send(answer(r));
                }
            }
            other => {
                let e = WriteError::Raft(format!("unexpected answer to a batch: {other:?}"));
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        },
        Err(e) => {
            let e = WriteError::from(e);
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

fn answer(r: Response) -> Result<Response, WriteError> {
    match r {
        Response::Refused { reason } => Err(WriteError::Refused(reason)),
        other => Ok(other),
    }
}
