//! The HTTP API of a node (axum).
//!
//! Clients:
//! - `POST /topics/{topic}` with the entry as the body → `{"offset": N}` once a quorum committed
//!   it. A follower answers `307 Temporary Redirect` to the leader (`curl -L` follows).
//! - `GET /topics` → every topic with its end offset.
//! - `GET /topics/{topic}/entries/{offset}` → the entry's bytes (`404` if not there).
//! - `GET /topics/{topic}/entries?from=N&max=K` → `{"entries": [{"offset", "data"}], "next"}`,
//!   `data` in base64; up to `K` entries (100 by default, 10 000 at most) and 16 MiB of
//!   payload beyond the first: read on from `next`.
//! - `GET /topics/{topic}/consumers/{consumer}?max=K` → the consumer's cursor and up to `K`
//!   entries from it (nothing moves); `POST /topics/{topic}/consumers/{consumer}/commit` with
//!   `{"offset": N}` moves it, through raft (`_` names the default consumer; `400` past the
//!   topic's end, or below every consumer's cursor). Read, process, commit: at-least-once, as in
//!   Kafka.
//! - `POST /cluster/init` `{"nodes": {"1": "127.0.0.1:21001", …}}`, `POST /cluster/learners`
//!   `{"id", "addr"}`, `POST /cluster/membership` `{"members": [1, 2, 3]}`, `GET
//!   /cluster/metrics` (openraft's metrics as JSON).
//!
//! Peers: `POST /raft/append`, `/raft/vote`, `/raft/snapshot` (see [`crate::network`]).
//!
//! Nothing is authenticated: the peers' routes accept raft RPCs from whoever sends them, and
//! the cluster routes change membership. Serve a node on a private network (README,
//! "Replication").
//!
//! Errors are JSON `{"error": "..."}` (unknown routes and methods too): `400` for bad input
//! (nothing changed; an address not `host:port`, a membership change raft refuses, an `init`
//! that leaves this node out), `404` for what is not there, `409` for an `init` of a node
//! already initialized or a learner already a member at another address, `413` for an
//! entry over [`MAX_CLIENT_BODY`], `503` when no leader is known, the write queue is full or a
//! write ran out its deadline before it was proposed (all `"written": "no"`), `504` when it
//! ran out its deadline after, the node lost the leadership after proposing it, or raft gave no
//! answer (it stopped, its storage failed), or a membership change took more than 30 s
//! (`"written": "unknown"`: it may still commit; a lost
//! leadership names the new leader, if known, in `leader_id` and `leader_addr`, without a
//! redirect).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Weak};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use base64::Engine as _;
use openraft::BasicNode;
use openraft::raft::VoteRequest;
use serde::{Deserialize, Serialize};
use serde_json::json;
use walrus::Walrus;

use crate::client::{WriteError, Writer, not_leading};
use crate::codec;
use crate::{NodeId, Raft, Request, Response};

/// The largest entry a client may append over HTTP (`413` beyond).
pub const MAX_CLIENT_BODY: usize = 16 << 20;
/// The largest raft RPC a node accepts from a peer.
const MAX_PEER_BODY: usize = 1 << 30;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// This node's id.
    pub id: NodeId,
    /// Its raft handle.
    pub raft: Raft,
    /// Its group-committing writer.
    pub writer: Writer,
    /// Its replicated topics, held weakly: a connection task that outlives the node's
    /// shutdown (a client that never finishes its request) keeps the directory's instance
    /// open no longer than the node does.
    pub data: Weak<Walrus>,
    /// How far the snapshot being received has come.
    pub snapshots: SnapshotStream,
}

/// Where the snapshot a node receives stands: its id and the bytes received so far. openraft
/// writes each chunk at its offset into a buffer in memory, so a chunk far past what was
/// received would make the node allocate what it cannot, and abort: a chunk may start a
/// snapshot (offset 0) or go on from at most the bytes received (a resend may repeat them).
#[derive(Debug, Clone, Default)]
pub struct SnapshotStream(Arc<parking_lot::Mutex<Option<(String, u64)>>>);

impl SnapshotStream {
    /// Admits a chunk of `len` bytes at `offset` of snapshot `id`, or says why not.
    fn admit(&self, id: &str, offset: u64, len: usize) -> Result<(), String> {
        let mut at = self.0.lock();
        let received = match &*at {
            _ if offset == 0 => 0,
            Some((current, received)) if current == id => *received,
            _ => {
                return Err(format!(
                    "snapshot RPC: a chunk at {offset} of snapshot {id:?}, which was not begun"
                ));
            }
        };
        if offset > received {
            return Err(format!(
                "snapshot RPC: a chunk at {offset} of snapshot {id:?}, past the {received} \
                 bytes received"
            ));
        }
        let end = offset.saturating_add(len as u64).max(received);
        *at = Some((id.to_owned(), end));
        Ok(())
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The router of a node.
pub fn router(state: AppState) -> axum::Router {
    // Peers are trusted; a batch of large entries must fit.
    let peers = axum::Router::new()
        .route("/raft/append", post(raft_append))
        .route("/raft/vote", post(raft_vote))
        .route("/raft/snapshot", post(raft_snapshot))
        .layer(DefaultBodyLimit::max(MAX_PEER_BODY));
    axum::Router::new()
        .route("/topics", get(list_topics))
        .route("/topics/{topic}", post(append))
        .route("/topics/{topic}/entries", get(read_entries))
        .route("/topics/{topic}/entries/{offset}", get(read_entry))
        .route("/topics/{topic}/consumers/{consumer}", get(poll))
        .route("/topics/{topic}/consumers/{consumer}/commit", post(commit))
        .route("/cluster/init", post(init))
        .route("/cluster/learners", post(add_learner))
        .route("/cluster/membership", post(change_membership))
        .route("/cluster/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_CLIENT_BODY))
        .merge(peers)
        .fallback(async |uri: axum::http::Uri| {
            error(StatusCode::NOT_FOUND, format!("no route {}", uri.path()))
        })
        .method_not_allowed_fallback(async |method: axum::http::Method, uri: axum::http::Uri| {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {}", uri.path()),
            )
        })
        .with_state(Arc::new(state))
}

type Shared = State<Arc<AppState>>;

/// The node's data instance, or the `503` of a node that stopped.
macro_rules! data {
    ($s:expr) => {
        match $s.data.upgrade() {
            Some(data) => data,
            None => return error(StatusCode::SERVICE_UNAVAILABLE, "the node stopped"),
        }
    };
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> HttpResponse {
    (status, Json(json!({ "error": msg.to_string() }))).into_response()
}

/// A request the extractors could not read (a path, query or body of the wrong shape), as
/// the API's JSON error: `413` for a body over the limit, else `400`.
fn rejected(e: impl IntoResponse + std::fmt::Display) -> HttpResponse {
    let msg = e.to_string();
    let status = match e.into_response().status() {
        StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    error(status, msg)
}

/// The value of an extractor, or its rejection answered by [`rejected`].
macro_rules! take {
    ($extracted:expr) => {
        match $extracted {
            Ok(v) => v,
            Err(e) => return rejected(e),
        }
    };
}

fn io_error(e: &io::Error) -> HttpResponse {
    let status = match e.kind() {
        io::ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        io::ErrorKind::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e)
}

/// The answer to a failed write: a redirect to the leader, or an error.
fn write_error(e: WriteError, path: &str) -> HttpResponse {
    match &e {
        WriteError::NotLeader(Some((id, node))) => {
            let location = format!("http://{}{path}", node.addr);
            let mut resp = (
                StatusCode::TEMPORARY_REDIRECT,
                Json(json!({ "error": e.to_string(), "leader_id": id, "leader_addr": node.addr })),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            resp
        }
        WriteError::NotLeader(None) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string(), "written": "no" })),
        )
            .into_response(),
        // No answer from raft (it stopped, its storage failed) once proposed: unknown.
        WriteError::Raft(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            Json(json!({ "error": e.to_string(), "written": "unknown" })),
        )
            .into_response(),
        // Proposed, then the leadership moved: the outcome is unknown, so no redirect (a
        // client following it would write again); the leader is named for one that checks.
        WriteError::LeaderChanged(leader) => {
            let (id, addr) = leader
                .as_ref()
                .map_or((None, None), |(id, n)| (Some(*id), Some(n.addr.clone())));
            (
                StatusCode::GATEWAY_TIMEOUT,
                Json(json!({
                    "error": e.to_string(),
                    "written": "unknown",
                    "leader_id": id,
                    "leader_addr": addr,
                })),
            )
                .into_response()
        }
        WriteError::Busy => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string(), "written": "no" })),
        )
            .into_response(),
        // Never proposed: nothing written, a retry is safe (503). Proposed: the outcome is
        // unknown (504).
        WriteError::TimedOut { proposed, .. } => {
            let (status, written) = if *proposed {
                (StatusCode::GATEWAY_TIMEOUT, "unknown")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "no")
            };
            (
                status,
                Json(json!({ "error": e.to_string(), "written": written })),
            )
                .into_response()
        }
        WriteError::Refused(_) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn append(
    State(s): Shared,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    let (Path(topic), body) = (take!(path), take!(body));
    let path = format!("/topics/{}", encode_segment(&topic));
    let request = Request::Append {
        topic,
        data: body.to_vec(),
    };
    match s.writer.write(request).await {
        Ok(Response::Appended { offset }) => Json(json!({ "offset": offset })).into_response(),
        Ok(other) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected {other:?}"),
        ),
        Err(e) => write_error(e, &path),
    }
}

/// Percent-encodes a path segment (a topic name may hold any byte).
fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn list_topics(State(s): Shared) -> HttpResponse {
    let data = data!(s);
    let topics: BTreeMap<String, u64> = data
        .topics()
        .into_iter()
        .map(|t| {
            let end = data.end_offset(&t).unwrap_or(0);
            (t, end)
        })
        .collect();
    Json(json!({ "node": s.id, "topics": topics })).into_response()
}

async fn read_entry(
    State(s): Shared,
    path: Result<Path<(String, u64)>, PathRejection>,
) -> HttpResponse {
    let Path((topic, offset)) = take!(path);
    match data!(s).read_at(&topic, offset) {
        Ok(Some(e)) => (StatusCode::OK, e.data).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("topic {topic:?} has no entry at offset {offset} yet"),
        ),
        Err(e) => io_error(&e),
    }
}

#[derive(Debug, Deserialize)]
struct Range {
    from: Option<u64>,
    max: Option<usize>,
}

/// One entry as JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct EntryJson {
    /// Its offset.
    pub offset: u64,
    /// Its bytes, base64.
    pub data: String,
}

/// Up to `max` entries of `topic` from `from` (and [`MAX_READ_BYTES`] of them beyond the
/// first), and the offset after the last.
fn entries(data: &Walrus, topic: &str, from: u64, max: usize) -> io::Result<(Vec<EntryJson>, u64)> {
    let mut out = Vec::new();
    let mut next = from;
    let mut bytes = 0usize;
    for rec in data.iter(topic, from).take(max) {
        let rec = rec?;
        if !out.is_empty() {
            bytes = bytes.saturating_add(rec.data.len());
            if bytes > MAX_READ_BYTES {
                break;
            }
        }
        next = rec.offset + 1;
        out.push(EntryJson {
            offset: rec.offset,
            data: base64::engine::general_purpose::STANDARD.encode(&rec.data),
        });
    }
    Ok((out, next))
}

/// Entries in one read response at most...
const MAX_READ: usize = 10_000;
/// ...and payload bytes beyond the first entry (the rest is read from `next`).
const MAX_READ_BYTES: usize = 16 << 20;

async fn read_entries(
    State(s): Shared,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Range>, QueryRejection>,
) -> HttpResponse {
    let (Path(topic), Query(q)) = (take!(path), take!(query));
    let from = q.from.unwrap_or(0);
    let max = q.max.unwrap_or(100).min(MAX_READ);
    let data = data!(s);
    match entries(&data, &topic, from, max) {
        Ok((list, next)) => Json(json!({ "entries": list, "next": next })).into_response(),
        Err(e) => io_error(&e),
    }
}

/// `_` in a path names the default consumer (an empty path segment cannot).
fn consumer_name(c: String) -> String {
    if c == "_" { String::new() } else { c }
}

async fn poll(
    State(s): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Range>, QueryRejection>,
) -> HttpResponse {
    let (Path((topic, consumer)), Query(q)) = (take!(path), take!(query));
    let consumer = consumer_name(consumer);
    let data = data!(s);
    let cursor = data
        .cursor_as(&topic, &consumer)
        .or_else(|| data.first_retained_offset(&topic))
        .unwrap_or(0);
    let max = q.max.unwrap_or(100).min(MAX_READ);
    match entries(&data, &topic, cursor, max) {
        Ok((list, next)) => {
            Json(json!({ "cursor": cursor, "entries": list, "next": next })).into_response()
        }
        Err(e) => io_error(&e),
    }
}

#[derive(Debug, Deserialize)]
struct CommitBody {
    offset: u64,
}

async fn commit(
    State(s): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<CommitBody>, JsonRejection>,
) -> HttpResponse {
    let (Path((topic, consumer)), Json(body)) = (take!(path), take!(body));
    let path = format!(
        "/topics/{}/consumers/{}/commit",
        encode_segment(&topic),
        encode_segment(&consumer)
    );
    let request = Request::Commit {
        topic,
        consumer: consumer_name(consumer),
        offset: body.offset,
    };
    match s.writer.write(request).await {
        Ok(_) => Json(json!({ "offset": body.offset })).into_response(),
        Err(e) => write_error(e, &path),
    }
}

#[derive(Debug, Deserialize)]
struct InitBody {
    nodes: BTreeMap<NodeId, String>,
}

async fn init(State(s): Shared, body: Result<Json<InitBody>, JsonRejection>) -> HttpResponse {
    let Json(body) = take!(body);
    if let Some(e) = body.nodes.values().find_map(|a| check_addr(a).err()) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let nodes: BTreeMap<NodeId, BasicNode> = body
        .nodes
        .into_iter()
        .map(|(id, addr)| (id, BasicNode { addr }))
        .collect();
    match s.raft.initialize(nodes).await {
        Ok(()) => Json(json!({ "initialized": true })).into_response(),
        Err(openraft::error::RaftError::APIError(e)) => match e {
            // Already initialized (or holding a log): nothing changed.
            openraft::error::InitializeError::NotAllowed(_) => error(StatusCode::CONFLICT, e),
            // This node is not among the nodes given.
            openraft::error::InitializeError::NotInMembers(_) => error(StatusCode::BAD_REQUEST, e),
        },
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

#[derive(Debug, Deserialize)]
struct LearnerBody {
    id: NodeId,
    addr: String,
}

async fn add_learner(
    State(s): Shared,
    body: Result<Json<LearnerBody>, JsonRejection>,
) -> HttpResponse {
    let Json(body) = take!(body);
    if let Err(e) = check_addr(&body.addr) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    // A follower redirects without proposing (a change proposed and then lost is "unknown").
    if let Some(e) = not_leading(&s.raft) {
        return write_error(e, "/cluster/learners");
    }
    // openraft keeps a known node's address whatever a new request says: refused, not
    // answered as if it took the new one.
    let known = s
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&body.id)
        .map(|n| n.addr.clone());
    if let Some(addr) = known.filter(|a| *a != body.addr) {
        return error(
            StatusCode::CONFLICT,
            format!("node {} is a member already, at {addr}", body.id),
        );
    }
    let raft = s.raft.clone();
    let adding = async move {
        raft.add_learner(body.id, BasicNode { addr: body.addr }, true)
            .await
    };
    match finish_within(adding).await {
        Some(Ok(r)) => Json(json!({ "log_id": r.log_id })).into_response(),
        Some(Err(e)) => write_error(e.into(), "/cluster/learners"),
        None => cluster_timeout("/cluster/learners"),
    }
}

/// Runs a membership change to its end on a task of its own, answering within
/// [`CLUSTER_DEADLINE`] (`None` past it). Never cut short: a change proposes a joint
/// configuration and then the final one, and dropped between the two it would leave the
/// cluster in the joint one.
async fn finish_within<T: Send + 'static>(
    change: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    let task = tokio::spawn(change);
    match tokio::time::timeout(CLUSTER_DEADLINE, task).await {
        Ok(Ok(done)) => Some(done),
        // The task panicked or was cancelled: no answer.
        Ok(Err(_)) | Err(_) => None,
    }
}

/// How long a membership change may take over HTTP: adding a learner waits for it to catch up
/// with the log, and a change for a quorum of the joint configuration.
const CLUSTER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// The answer to a membership change that ran out [`CLUSTER_DEADLINE`]: proposed, so it may
/// still take effect.
fn cluster_timeout(route: &str) -> HttpResponse {
    (
        StatusCode::GATEWAY_TIMEOUT,
        Json(json!({
            "error": format!("{route}: not done within {CLUSTER_DEADLINE:?} (a learner that cannot \
                              be reached or catch up, or no quorum)"),
            "written": "unknown",
        })),
    )
        .into_response()
}

/// A peer's address as raft dials it (`http://{addr}/raft/…`): `host:port`, the host a name,
/// an IPv4 address or a bracketed IPv6 one (`[::1]:21001`).
fn check_addr(addr: &str) -> Result<(), String> {
    let bad = || format!("address {addr:?} is not host:port");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            // A last label of digits makes a URL parser read the host as IPv4: it must be one.
            let numeric = host
                .rsplit('.')
                .next()
                .is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()));
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                && (!numeric || host.parse::<std::net::Ipv4Addr>().is_ok())
        }
    };
    let port_ok =
        !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) && port.parse::<u16>().is_ok();
    if !host_ok || !port_ok {
        return Err(bad());
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct MembershipBody {
    members: BTreeSet<NodeId>,
}

async fn change_membership(
    State(s): Shared,
    body: Result<Json<MembershipBody>, JsonRejection>,
) -> HttpResponse {
    let Json(body) = take!(body);
    if let Some(e) = not_leading(&s.raft) {
        return write_error(e, "/cluster/membership");
    }
    let raft = s.raft.clone();
    let changing = async move { raft.change_membership(body.members, false).await };
    match finish_within(changing).await {
        Some(Ok(r)) => Json(json!({ "log_id": r.log_id })).into_response(),
        Some(Err(e)) => write_error(e.into(), "/cluster/membership"),
        None => cluster_timeout("/cluster/membership"),
    }
}

async fn metrics(State(s): Shared) -> HttpResponse {
    let m = s.raft.metrics().borrow().clone();
    Json(m).into_response()
}

async fn raft_append(State(s): Shared, body: Bytes) -> HttpResponse {
    match codec::decode_append_rpc(&body) {
        Ok(req) => Json(s.raft.append_entries(req).await).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn raft_vote(State(s): Shared, body: Bytes) -> HttpResponse {
    match serde_json::from_slice::<VoteRequest<NodeId>>(&body) {
        Ok(req) => Json(s.raft.vote(req).await).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, format!("vote RPC: {e}")),
    }
}

async fn raft_snapshot(State(s): Shared, body: Bytes) -> HttpResponse {
    match codec::decode_snapshot_rpc(&body) {
        Ok(req) => {
            if let Err(e) = s
                .snapshots
                .admit(&req.meta.snapshot_id, req.offset, req.data.len())
            {
                return error(StatusCode::BAD_REQUEST, e);
            }
            Json(s.raft.install_snapshot(req).await).into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

#[cfg(test)]
mod tests {
    use super::SnapshotStream;

    /// Chunks begin a snapshot at 0 and go on from at most what was received; a resend
    /// repeats; a chunk past the end, or of a snapshot never begun, is refused.
    #[test]
    fn snapshot_chunks_go_on_from_what_was_received() {
        let s = SnapshotStream::default();
        assert!(s.admit("a", 5, 10).is_err(), "never begun");
        s.admit("a", 0, 10).unwrap();
        s.admit("a", 10, 10).unwrap();
        s.admit("a", 10, 10).unwrap(); // resent
        assert!(
            s.admit("a", 1 << 39, 1).is_err(),
            "far past the 20 received"
        );
        assert!(s.admit("b", 20, 1).is_err(), "another snapshot, not begun");
        s.admit("a", 20, 5).unwrap();
        s.admit("b", 0, 1).unwrap(); // a new one begins
        assert!(s.admit("a", 25, 1).is_err(), "the old one is over");
    }

    /// Only what `http://{addr}/` can dial passes: a bracketless IPv6 address, a signed or
    /// empty port, stray brackets or URL characters do not.
    #[test]
    fn addresses_are_host_and_port() {
        use super::check_addr;
        for good in [
            "127.0.0.1:21001",
            "node-1.example:80",
            "[::1]:21001",
            "h_2:65535",
        ] {
            assert!(check_addr(good).is_ok(), "{good}");
        }
        for bad in [
            "::1:21001",
            "[::1:21001",
            "a]b:1",
            "h:+80",
            "h:",
            ":80",
            "h:65536",
            "foo bar:1",
            "h:1/x?",
            "h",
            "[nope]:1",
            "10.0.0.256:1",
            "node.1:80",
            "1.2.3.4.5:80",
        ] {
            assert!(check_addr(bad).is_err(), "{bad}");
        }
    }
}
