//! Client writes through raft, and what they end in.

use openraft::BasicNode;
use openraft::error::{ClientWriteError, RaftError};

use crate::{NodeId, Raft, Request, Response};

/// What a client write ends in, once raft is done with it.
#[derive(Debug)]
pub enum WriteError {
    /// This node is not the leader; the leader, if one is known.
    NotLeader(Option<(NodeId, BasicNode)>),
    /// The state machine refused the request (nothing changed anywhere).
    Refused(String),
    /// Raft could not commit it (no quorum in time, shutting down, storage failure).
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
            Self::Raft(r) => write!(f, "not committed: {r}"),
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
    match resp.data {
        Response::Refused { reason } => Err(WriteError::Refused(reason)),
        other => Ok(other),
    }
}
