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
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::{NodeId, Raft, Request, Response};

/// Requests in one batch entry at most.
pub const MAX_BATCH: usize = 1024;
/// Payload bytes in one batch entry at most (a larger request travels alone).
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Raft writes in flight at once; requests arriving meanwhile form the next batch (1 measured
/// best: openraft replicates one RPC at a time per follower anyway; see docs/BENCHMARKS.md).
const IN_FLIGHT: usize = 1;
/// The default of `NodeConfig::write_queue_bytes`: 256 MiB.
pub(crate) const DEFAULT_WRITE_QUEUE_BYTES: u64 = 256 << 20;

/// What a client write ends in, once raft is done with it.
#[derive(Debug, Clone)]
pub enum WriteError {
    /// This node is not the leader; the leader, if one is known. Nothing was written: the
    /// node did not lead when the request's turn came, so it never proposed it, and retrying
    /// at the leader cannot write twice.
    NotLeader(Option<(NodeId, BasicNode)>),
    /// The node led when it proposed the request, and lost the leadership before the entry
    /// committed; the new leader, if one is known. The outcome is unknown: the entry may still
    /// be committed by a later leader that holds it (openraft answers so when a new leader
    /// truncated it here, but with five voters or more another node may keep it and commit it
    /// later), so a blind retry may write twice.
    LeaderChanged(Option<(NodeId, BasicNode)>),
    /// The state machine refused the request, or raft a membership change (nothing changed
    /// anywhere).
    Refused(String),
    /// No answer from raft (shutting down, storage failure): the outcome is unknown, the entry
    /// may still be committed by the next leader.
    Raft(String),
    /// The node's write queue is full (its proposals are stuck, or it is overloaded): nothing
    /// was written.
    Busy,
    /// No commit within the write deadline (`NodeConfig::write_timeout`: a quorum lost, or
    /// slow). `proposed: false`: the request was still queued and never will be proposed,
    /// nothing was written (a retry cannot write twice); `true`: it was proposed, the outcome
    /// is unknown (it may still commit).
    TimedOut {
        /// Whether the request had been proposed.
        proposed: bool,
        /// The deadline.
        after: Duration,
    },
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotLeader(Some((id, n))) => {
                write!(f, "not the leader; the leader is node {id} at {}", n.addr)
            }
            Self::NotLeader(None) => write!(f, "not the leader; no leader known"),
            Self::LeaderChanged(leader) => {
                write!(
                    f,
                    "the leadership changed after the write was proposed: the outcome is unknown \
                     (it may still commit)"
                )?;
                match leader {
                    Some((id, n)) => write!(f, "; the leader is node {id} at {}", n.addr),
                    None => write!(f, "; no leader known"),
                }
            }
            Self::Refused(r) => write!(f, "refused: {r}"),
            Self::Raft(r) => write!(f, "outcome unknown: {r}"),
            Self::Busy => write!(f, "the write queue is full; nothing was written"),
            Self::TimedOut {
                proposed: false,
                after,
            } => write!(
                f,
                "not committed within {after:?}; never proposed: nothing was written"
            ),
            Self::TimedOut {
                proposed: true,
                after,
            } => write!(
                f,
                "not committed within {after:?}; proposed: the outcome is unknown (it may still \
                 commit)"
            ),
        }
    }
}

impl std::error::Error for WriteError {}

/// What a failed `client_write` (or membership change) means. It was called only while this
/// node led (see `not_leading`, which every caller checks first), so "forward to the leader" says the leadership moved on after the
/// proposal, or while it was being made: the outcome is unknown.
impl From<RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>> for WriteError {
    fn from(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Self {
        // A membership change raft refused for an empty membership or a voter that is not a
        // learner was never proposed. One refused as "in progress" may have been: a change
        // proposes a joint configuration and then the final one, and the second can meet
        // another change (the outcome is then unknown).
        if let RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) = &e
            && !matches!(c, openraft::error::ChangeMembershipError::InProgress(_))
        {
            return Self::Refused(format!("membership change refused: {c}"));
        }
        match e.forward_to_leader() {
            Some(f) => Self::LeaderChanged(f.leader_id.zip(f.leader_node.clone())),
            None => Self::Raft(e.to_string()),
        }
    }
}

/// [`WriteError::NotLeader`] if this node does not lead (as its metrics last said), with the
/// leader it knows. Checked before a proposal: openraft answers "forward to the leader" both
/// for a request it never appended and for one whose entry was appended and then truncated by
/// a new leader, and only the first is "nothing written". A stale answer errs on the safe side
/// either way: a node that just lost the leadership proposes, and its answer says "unknown";
/// one that just gained it refuses, and nothing was written.
pub(crate) fn not_leading(raft: &Raft) -> Option<WriteError> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    // Both: `current_leader` follows the vote, which a leader removed from the membership (or
    // stepping down) keeps while it no longer leads.
    if m.current_leader == Some(m.id)
        && m.state == openraft::ServerState::Leader
        && m.running_state.is_ok()
    {
        return None;
    }
    // Never a redirect to this node itself: a leader whose core stopped (or that steps down)
    // still names itself.
    let leader = m.current_leader.filter(|&id| id != m.id).and_then(|id| {
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| (id, n.clone()))
    });
    Some(WriteError::NotLeader(leader))
}

/// Writes `request` through raft on `raft`: returns once a quorum committed it and this node
/// applied it.
pub(crate) async fn write(raft: &Raft, request: Request) -> Result<Response, WriteError> {
    if let Some(e) = not_leading(raft) {
        return Err(e);
    }
    let resp = raft.client_write(request).await?;
    answer(resp.data)
}

/// Where a queued request stands: the batching task and a client whose deadline passed race
/// for it, and exactly one wins.
const QUEUED: u8 = 0;
const PROPOSED: u8 = 1;
const ABANDONED: u8 = 2;

/// A queued request: its answer's channel, whether it was proposed or abandoned, and its share
/// of the queue's byte budget (given back when the reply goes).
#[derive(Debug)]
struct Reply {
    tx: oneshot::Sender<Result<Response, WriteError>>,
    state: Arc<AtomicU8>,
    _budget: OwnedSemaphorePermit,
}

impl Reply {
    /// Claims the request for a proposal; false if its client gave up on it first (it is then
    /// never proposed: once proposed it could commit, and the client's retry with it).
    fn propose(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, PROPOSED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && !self.tx.is_closed()
    }

    fn send(self, answer: Result<Response, WriteError>) {
        let _ = self.tx.send(answer);
    }
}

/// The group-committing front of a node's raft (see the [module docs](self)). Cloning shares
/// the queue.
#[derive(Debug, Clone)]
pub struct Writer {
    queue: mpsc::UnboundedSender<(Request, Reply)>,
    /// How long a write waits for its commit (`None`: no limit).
    timeout: Option<Duration>,
    /// The queue's byte budget, in KiB.
    budget: Arc<Semaphore>,
    /// Its size, in KiB.
    budget_kib: u32,
}

impl Writer {
    /// Starts the batching task on the current tokio runtime; it ends when every clone of the
    /// writer is dropped. Writes wait `timeout` at most for their commit (`None`, zero, or one
    /// too long to add to now: no limit). Requests queued hold `queue_bytes` at most (rounded
    /// up to KiB, at least 1): while a proposal is stuck (no quorum) nothing leaves the queue,
    /// and clients that time out and retry would fill memory. Past it a write fails at once,
    /// never proposed ([`WriteError::Busy`]).
    pub(crate) fn start(raft: Raft, timeout: Option<Duration>, queue_bytes: u64) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_loop(raft, rx));
        let timeout =
            timeout.filter(|t| !t.is_zero() && std::time::Instant::now().checked_add(*t).is_some());
        let budget_kib = u32::try_from(queue_bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        Self {
            queue,
            timeout,
            budget: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_kib,
        }
    }

    /// Writes `request` through raft: returns once a quorum committed it and this node applied
    /// it, or once the write deadline passed.
    ///
    /// # Errors
    /// See [`WriteError`].
    pub async fn write(&self, request: Request) -> Result<Response, WriteError> {
        if let Request::Batch { requests } = &request
            && requests.iter().any(|r| matches!(r, Request::Batch { .. }))
        {
            return Err(WriteError::Refused("a batch inside a batch".into()));
        }
        refused(&request).map_or(Ok(()), |reason| Err(WriteError::Refused(reason)))?;
        // A request larger than the whole budget waits for an empty queue.
        let kib = u32::try_from(size(&request).div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.budget_kib);
        let budget = Arc::clone(&self.budget)
            .try_acquire_many_owned(kib)
            .map_err(|_| WriteError::Busy)?;
        let (tx, mut rx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let reply = Reply {
            tx,
            state: Arc::clone(&state),
            _budget: budget,
        };
        self.queue
            .send((request, reply))
            .map_err(|_| WriteError::Raft("the node is shutting down".into()))?;
        let answer = match self.timeout {
            None => rx.await,
            Some(after) => match tokio::time::timeout(after, &mut rx).await {
                Ok(answer) => answer,
                Err(_) => {
                    let abandoned = state
                        .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok();
                    // Proposed, and answered right at the deadline: the answer, not "unknown".
                    if !abandoned && let Ok(answer) = rx.try_recv() {
                        return answer;
                    }
                    return Err(WriteError::TimedOut {
                        proposed: !abandoned,
                        after,
                    });
                }
            },
        };
        answer.map_err(|_| WriteError::Raft("the node shut down before answering".into()))?
    }
}

/// Why every node's state machine would refuse `request` whatever its state (a name or an
/// entry past the format's limits), found before it is proposed: the log would otherwise hold
/// it on every node. (The requests of a batch a client sent are answered one by one at apply,
/// as they are in the log.)
fn refused(request: &Request) -> Option<String> {
    let checked = match request {
        Request::Append { topic, data } => {
            walrus_block::validate_topic_name(topic).and_then(|()| {
                if data.len() > walrus_block::MAX_ENTRY_LEN {
                    Err(walrus_block::FormatError::InvalidInput(format!(
                        "an entry of {} bytes is over the limit of {}",
                        data.len(),
                        walrus_block::MAX_ENTRY_LEN
                    )))
                } else {
                    Ok(())
                }
            })
        }
        Request::Commit {
            topic, consumer, ..
        } => walrus_block::validate_topic_name(topic).and_then(|()| {
            // The empty name is the topic's default consumer.
            if consumer.is_empty() {
                Ok(())
            } else {
                walrus_block::validate_consumer_name(consumer)
            }
        }),
        Request::Batch { .. } => Ok(()),
    };
    checked.err().map(|e| e.to_string())
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
        if !first.1.propose() {
            continue;
        }
        let mut bytes = size(&first.0);
        let alone = matches!(first.0, Request::Batch { .. });
        let mut batch = vec![first];
        while !alone && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => {
                    bytes += size(&item.0);
                    if bytes > MAX_BATCH_BYTES || matches!(item.0, Request::Batch { .. }) {
                        // Claimed when its own batch is proposed.
                        carry = Some(item);
                        break;
                    }
                    if item.1.propose() {
                        batch.push(item);
                    } else {
                        bytes -= size(&item.0);
                    }
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
            reply.send(write(raft, request).await);
        }
        return;
    }
    if let Some(e) = not_leading(raft) {
        for (_, reply) in batch {
            reply.send(Err(e.clone()));
        }
        return;
    }
    let (requests, replies): (Vec<Request>, Vec<Reply>) = batch.into_iter().unzip();
    match raft.client_write(Request::Batch { requests }).await {
        Ok(resp) => match resp.data {
            Response::Batch { responses } if responses.len() == replies.len() => {
                for (r, reply) in responses.into_iter().zip(replies) {
                    reply.send(answer(r));
                }
            }
            other => {
                let e = WriteError::Raft(format!("unexpected answer to a batch: {other:?}"));
                for reply in replies {
                    reply.send(Err(e.clone()));
                }
            }
        },
        Err(e) => {
            let e = WriteError::from(e);
            for reply in replies {
                reply.send(Err(e.clone()));
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

#[cfg(test)]
mod tests {
    use openraft::error::ForwardToLeader;

    use super::*;

    /// `client_write` is called only while the node leads, so its "forward to the leader" says
    /// the leadership moved after the proposal: never "nothing written".
    #[test]
    fn forward_to_leader_after_a_proposal_is_an_unknown_outcome() {
        let node = BasicNode::new("127.0.0.1:1");
        let e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>> = RaftError::APIError(
            ClientWriteError::ForwardToLeader(ForwardToLeader::new(2, node.clone())),
        );
        let w = WriteError::from(e);
        assert!(
            matches!(&w, WriteError::LeaderChanged(Some((2, n))) if *n == node),
            "{w:?}"
        );
        assert!(w.to_string().contains("outcome is unknown"), "{w}");
        let e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>> =
            RaftError::APIError(ClientWriteError::ForwardToLeader(ForwardToLeader::empty()));
        assert!(matches!(
            WriteError::from(e),
            WriteError::LeaderChanged(None)
        ));
    }
}
