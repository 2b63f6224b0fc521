//! Replicated Walrus: a raft group whose log and state machine are Walrus instances, driven by
//! [openraft](https://docs.rs/openraft/0.9.25) (its `storage-v2` traits).
//!
//! - [`LogStore`] keeps the raft log in a topic of its own Walrus instance, with the vote, the
//!   committed and the last purged log ids; an `append` completes openraft's flush callback from
//!   a Walrus [`DurableTicket`](walrus::DurableTicket).
//! - [`StateMachine`] is a replicated Walrus: applying an entry appends to (or moves a cursor
//!   of) the named topic of the node's data instance, so every node holds the same topics with
//!   the same offsets. Snapshots carry every retained entry and cursor to a lagging node.
//! - [`Node`] ties them to openraft and to an HTTP API ([`api`]), served by the `walrus-node`
//!   binary; [`network`] carries raft's RPCs over the same HTTP server.
//!
//! The layout of a node's directory: `raft/` (the log instance: topics `log`, `meta`,
//! `applied`), `data/` (the replicated topics), `snapshot` (the last snapshot). The formats are
//! drawn in `docs/FORMAT.md` under "walrus-raft".

pub mod client;
mod codec;
pub mod log_store;
pub mod state_machine;

pub mod api;
pub mod network;
mod node;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

#[doc(inline)]
pub use client::{WriteError, Writer};
#[doc(inline)]
pub use log_store::LogStore;
pub use node::{Node, NodeConfig, open_stores};
#[doc(inline)]
pub use state_machine::StateMachine;

/// A node's id in the cluster.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The raft types of a replicated Walrus.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The raft handle of a replicated Walrus.
pub type Raft = openraft::Raft<TypeConfig>;

/// A command the state machine applies: what a client asks the cluster to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Append `data` to `topic`.
    Append {
        /// The topic.
        topic: String,
        /// The entry.
        data: Vec<u8>,
    },
    /// Move `consumer`'s cursor of `topic` to `offset`.
    Commit {
        /// The topic.
        topic: String,
        /// The consumer (`""` is the topic's default cursor).
        consumer: String,
        /// The offset of the next entry the consumer reads.
        offset: u64,
    },
    /// Several requests in one raft entry, applied in order (made by the node's group commit;
    /// a batch inside a batch is refused).
    Batch {
        /// The requests.
        requests: Vec<Request>,
    },
}

/// What applying a [`Request`] did. Every node computes the same response for the same entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The entry was appended at `offset`.
    Appended {
        /// Its offset in the topic.
        offset: u64,
    },
    /// The cursor was moved.
    Committed,
    /// The request was refused (bad topic or consumer name, offset out of range); nothing
    /// changed.
    Refused {
        /// Why.
        reason: String,
    },
    /// A blank or membership entry: nothing for a client.
    Nothing,
    /// A batch's responses, one per request, in order.
    Batch {
        /// The responses.
        responses: Vec<Response>,
    },
}
