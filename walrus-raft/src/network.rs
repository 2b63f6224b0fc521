//! Raft's RPCs between nodes over HTTP, posted to the peer's `/raft/*` routes (served by
//! [`crate::api`]): entries in the log's binary encoding, snapshot chunks raw, the small fields
//! and every answer as JSON. A peer that cannot be connected to is `Unreachable` (openraft backs
//! off); one that answers late, or not with a raft answer, is a network error; one that answers
//! with a raft error returns it as a remote error.

use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;

use crate::codec;
use crate::{NodeId, TypeConfig};

/// Makes a client per peer; all share one HTTP connection pool.
#[derive(Debug, Clone)]
pub struct Network {
    client: reqwest::Client,
}

impl Network {
    /// A network whose requests time out after `timeout` at most (openraft's own deadline per
    /// RPC applies when shorter).
    ///
    /// # Errors
    /// The HTTP client could not be built.
    pub fn new(timeout: Duration) -> std::io::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self { client })
    }
}

/// The client for one peer.
#[derive(Debug)]
pub struct Peer {
    client: reqwest::Client,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            client: self.client.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

impl Peer {
    async fn post<Resp, E>(
        &self,
        route: &str,
        body: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("http://{}/raft/{route}", self.addr);
        let resp = self
            .client
            .post(&url)
            .timeout(option.hard_ttl())
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                // Only a peer that cannot be connected to is unreachable: openraft then sends it
                // nothing, heartbeats included, for a while (longer than an election timeout),
                // which a peer that is only slow to answer must not get.
                if e.is_connect() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let e = std::io::Error::other(format!("{url}: {status}: {text}"));
            return Err(RPCError::Network(NetworkError::new(&e)));
        }
        let body: Result<Resp, RaftError<NodeId, E>> = resp
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        body.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn encoding<E: std::error::Error>(
    e: std::io::Error,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let body = codec::encode_append_rpc(&rpc).map_err(encoding)?;
        self.post("append", body, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let body = codec::encode_snapshot_rpc(&rpc).map_err(encoding)?;
        self.post("snapshot", body, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let body = serde_json::to_vec(&rpc).map_err(|e| encoding(std::io::Error::other(e)))?;
        self.post("vote", body, &option).await
    }
}
