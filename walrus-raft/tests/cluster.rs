//! A 3-node cluster in one process, on 127.0.0.1: quorum writes, redirects, consumers,
//! failover, a minority that cannot acknowledge, restart and catch-up, snapshots to a new node.
//! Every wait is bounded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use walrus_raft::{Node, NodeConfig, NodeId, WriteError};

const WAIT: Duration = Duration::from_secs(20);

fn config(id: NodeId, dir: &Path, listen: SocketAddr) -> NodeConfig {
    NodeConfig {
        heartbeat: Duration::from_millis(50),
        ..NodeConfig::new(id, dir.join(format!("n{id}")), listen)
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn start(ids: &[NodeId], dir: &Path, tweak: impl Fn(&mut NodeConfig)) -> Vec<Node> {
    let mut nodes = Vec::new();
    for &id in ids {
        let mut c = config(id, dir, any_port());
        tweak(&mut c);
        nodes.push(Node::start(c).await.unwrap());
    }
    let members: BTreeMap<NodeId, openraft::BasicNode> = nodes
        .iter()
        .map(|n| {
            (
                n.id(),
                openraft::BasicNode {
                    addr: n.addr().to_string(),
                },
            )
        })
        .collect();
    nodes[0].raft().initialize(members).await.unwrap();
    nodes
}

/// Waits until one of `nodes` is leader and every one of them agrees; returns its position.
async fn leader(nodes: &[&Node]) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let leaders: Vec<Option<NodeId>> = nodes
            .iter()
            .map(|n| n.raft().metrics().borrow().current_leader)
            .collect();
        if let Some(Some(l)) = leaders.first()
            && leaders.iter().all(|x| *x == Some(*l))
            && let Some(pos) = nodes.iter().position(|n| n.id() == *l)
        {
            return pos;
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader within {WAIT:?}: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every entry of `topic` on `node`.
fn contents(node: &Node, topic: &str) -> Vec<Vec<u8>> {
    let end = node.data().end_offset(topic).unwrap_or(0);
    (0..end)
        .map(|o| node.data().read_at(topic, o).unwrap().unwrap().data)
        .collect()
}

/// Waits until every node holds `len` entries of `topic`, then checks they are identical.
async fn converge(nodes: &[&Node], topic: &str, len: u64) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + WAIT;
    while nodes
        .iter()
        .any(|n| n.data().end_offset(topic).unwrap_or(0) < len)
    {
        let ends: Vec<_> = nodes.iter().map(|n| n.data().end_offset(topic)).collect();
        assert!(
            Instant::now() < deadline,
            "{topic}: ends {ends:?}, want {len}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = contents(nodes[0], topic);
    assert_eq!(first.len() as u64, len);
    for n in &nodes[1..] {
        assert_eq!(
            contents(n, topic),
            first,
            "node {} differs from node {}",
            n.id(),
            nodes[0].id()
        );
    }
    first
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_writes_redirects_and_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start(&[1, 2, 3], dir.path(), |_| {}).await;
    let all: Vec<&Node> = nodes.iter().collect();
    let l = leader(&all).await;

    // Writes through the leader: offsets in order, identical on every node.
    for i in 0..50u64 {
        let offset = nodes[l]
            .append("orders", format!("order-{i}").as_bytes())
            .await
            .unwrap();
        assert_eq!(offset, i);
    }
    let got = converge(&all, "orders", 50).await;
    assert_eq!(got[7], b"order-7");

    // Concurrent writers are group-committed into batch entries: every append gets its own
    // offset, contiguous, and a refused request in a batch changes nothing for the others.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64u64 {
        let w = nodes[l].writer();
        tasks.spawn(async move {
            let topic = if i == 13 {
                String::new()
            } else {
                "burst".to_string()
            };
            let r = w
                .write(walrus_raft::Request::Append {
                    topic,
                    data: format!("b{i}").into_bytes(),
                })
                .await;
            (i, r)
        });
    }
    let mut offsets = std::collections::BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, r) = joined.unwrap();
        match r {
            Ok(walrus_raft::Response::Appended { offset }) => {
                assert!(offsets.insert(offset, i).is_none())
            }
            Err(WriteError::Refused(_)) if i == 13 => {}
            other => panic!("append {i}: {other:?}"),
        }
    }
    assert_eq!(
        offsets.keys().copied().collect::<Vec<_>>(),
        (0..63).collect::<Vec<_>>()
    );
    let burst = converge(&all, "burst", 63).await;
    for (o, i) in &offsets {
        assert_eq!(burst[*o as usize], format!("b{i}").into_bytes());
    }
    let batches = nodes[l]
        .raft()
        .metrics()
        .borrow()
        .last_log_index
        .unwrap_or(0);
    assert!(
        batches < 2 + 50 + 32,
        "64 concurrent writes took {batches} log entries in all: not batched"
    );

    // A follower refuses a direct write and names the leader...
    let f = (l + 1) % 3;
    match nodes[f].append("orders", b"x").await {
        Err(WriteError::NotLeader(Some((id, _)))) => assert_eq!(id, nodes[l].id()),
        other => panic!("a follower wrote: {other:?}"),
    }
    // ...and over HTTP redirects to it (307 keeps the method and body).
    let http = client();
    let resp = http
        .post(format!("http://{}/topics/orders", nodes[f].addr()))
        .body("via-follower")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["offset"], 50);
    converge(&all, "orders", 51).await;

    // Reads from any node.
    let resp = http
        .get(format!(
            "http://{}/topics/orders/entries/50",
            nodes[f].addr()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"via-follower");
    let v: serde_json::Value = http
        .get(format!(
            "http://{}/topics/orders/entries?from=48&max=2",
            nodes[f].addr()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["next"], 50);
    assert_eq!(v["entries"][0]["offset"], 48);

    // A named consumer: poll, commit through raft, the cursor moves on every node.
    let base = format!("http://{}/topics/orders/consumers/billing", nodes[l].addr());
    let v: serde_json::Value = http
        .get(format!("{base}?max=10"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["cursor"], 0);
    assert_eq!(v["next"], 10);
    let resp = http
        .post(format!("{base}/commit"))
        .json(&serde_json::json!({ "offset": 10 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = Instant::now() + WAIT;
    while nodes
        .iter()
        .any(|n| n.data().cursor_as("orders", "billing") != Some(10))
    {
        assert!(
            Instant::now() < deadline,
            "the commit did not reach every node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Bad input changes nothing: a commit past the end, an empty topic name.
    let resp = http
        .post(format!("{base}/commit"))
        .json(&serde_json::json!({ "offset": 1000 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(matches!(
        nodes[l].append("", b"x").await,
        Err(WriteError::Refused(_))
    ));
    assert_eq!(nodes[l].data().cursor_as("orders", "billing"), Some(10));

    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// The leader stops: a new one is elected, nothing acknowledged is lost; with two of three
/// nodes down, the last one cannot acknowledge; a restarted node catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_minority_and_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start(&[1, 2, 3], dir.path(), |_| {}).await;
    let l = leader(&nodes.iter().collect::<Vec<_>>()).await;
    let mut acked = Vec::new();
    for i in 0..30u64 {
        let data = format!("e{i}");
        acked.push((nodes[l].append("t", data.as_bytes()).await.unwrap(), data));
    }

    // The leader goes away.
    let old = nodes.remove(l);
    let (old_id, old_addr) = (old.id(), old.addr());
    old.shutdown().await.unwrap();
    let start = Instant::now();
    let l = leader(&nodes.iter().collect::<Vec<_>>()).await;
    let elected = start.elapsed();
    assert!(
        elected < Duration::from_secs(10),
        "election took {elected:?}"
    );
    for i in 30..60u64 {
        let data = format!("e{i}");
        acked.push((nodes[l].append("t", data.as_bytes()).await.unwrap(), data));
    }
    for (offset, data) in &acked {
        for n in &nodes {
            let deadline = Instant::now() + WAIT;
            loop {
                match n.data().read_at("t", *offset).unwrap() {
                    Some(e) => {
                        assert_eq!(e.data, data.as_bytes(), "node {} offset {offset}", n.id());
                        break;
                    }
                    None => {
                        assert!(
                            Instant::now() < deadline,
                            "node {} lacks offset {offset}",
                            n.id()
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
    }

    // Only one of three left: a minority cannot acknowledge.
    let follower = nodes.remove(1 - l);
    let f_id = follower.id();
    let f_addr = follower.addr();
    follower.shutdown().await.unwrap();
    let alone = &nodes[0];
    let before = alone.data().end_offset("t");
    let r = tokio::time::timeout(Duration::from_secs(3), alone.append("t", b"lost")).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "a minority acknowledged a write: {r:?}"
    );
    assert_eq!(
        alone.data().end_offset("t"),
        before,
        "a minority applied a write"
    );

    // Both come back on their directories and addresses: the cluster has a quorum again, the
    // restarted nodes catch up, and everything acknowledged is there, identical everywhere.
    let mut back = vec![
        Node::start(config(old_id, dir.path(), old_addr))
            .await
            .unwrap(),
        Node::start(config(f_id, dir.path(), f_addr)).await.unwrap(),
    ];
    back.push(nodes.remove(0));
    let all: Vec<&Node> = back.iter().collect();
    let l = leader(&all).await;
    let offset = loop {
        // The write the minority could not commit may be committed now by the new leader (it
        // was in the log of a node that became part of a quorum) or dropped: either is raft.
        match back[l].append("t", b"after").await {
            Ok(o) => break o,
            Err(WriteError::NotLeader(_)) => {
                let _ = leader(&all).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let got = converge(&all, "t", offset + 1).await;
    for (o, data) in &acked {
        assert_eq!(got[*o as usize], data.as_bytes());
    }
    for n in back {
        n.shutdown().await.unwrap();
    }
}

/// Writes through whichever node leads, retrying while leadership moves (large entries on a
/// short election timeout can move it).
async fn write(nodes: &[&Node], request: walrus_raft::Request) -> walrus_raft::Response {
    for _ in 0..50 {
        let l = leader(nodes).await;
        let write = nodes[l].raft().client_write(request.clone());
        match tokio::time::timeout(WAIT, write).await {
            Ok(Ok(r)) => return r.data,
            Ok(Err(e)) if e.forward_to_leader().is_some() => continue,
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("a write to node {} hung for {WAIT:?}", nodes[l].id()),
        }
    }
    panic!("no leader kept long enough to write");
}

fn append_req(topic: &str, data: Vec<u8>) -> walrus_raft::Request {
    walrus_raft::Request::Append {
        topic: topic.into(),
        data,
    }
}

/// A node added later catches up from a snapshot (the log below it purged), with the same
/// offsets and cursors, entries larger than a snapshot chunk included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_catch_up_new_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let tweak = |c: &mut NodeConfig| {
        c.snapshot_after = 40;
        c.keep_logs = 0;
    };
    let nodes = start(&[1, 2, 3], dir.path(), tweak).await;
    let three: Vec<&Node> = nodes.iter().collect();
    for i in 0..200u64 {
        let topic = if i % 2 == 0 { "a" } else { "b" };
        write(&three, append_req(topic, format!("v{i}").into_bytes())).await;
    }
    // Entries larger than a snapshot chunk and than axum's default body limit (2 MiB).
    for i in 0..3u8 {
        write(&three, append_req("big", vec![i; 3 << 20])).await;
    }
    // A consumer that read part of "a", so its entries below the cursor may be released.
    let r = write(
        &three,
        walrus_raft::Request::Commit {
            topic: "a".into(),
            consumer: "c".into(),
            offset: 60,
        },
    )
    .await;
    assert_eq!(r, walrus_raft::Response::Committed);
    let deadline = Instant::now() + WAIT;
    loop {
        let l = leader(&three).await;
        let purged = nodes[l].raft().metrics().borrow().purged;
        if purged.is_some_and(|p| p.index > 103) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leader never purged its log: {purged:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut c = config(4, dir.path(), any_port());
    tweak(&mut c);
    let new = Node::start(c).await.unwrap();
    let added = loop {
        let l = leader(&three).await;
        let learner = openraft::BasicNode {
            addr: new.addr().to_string(),
        };
        match nodes[l].raft().add_learner(4, learner, true).await {
            Ok(r) => break r,
            Err(e) if e.forward_to_leader().is_some() => continue,
            Err(e) => panic!("{e}"),
        }
    };
    assert!(added.log_id.index > 0);
    let deadline = Instant::now() + WAIT;
    while new.raft().metrics().borrow().snapshot.is_none() {
        assert!(Instant::now() < deadline, "the learner got no snapshot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut all: Vec<&Node> = nodes.iter().collect();
    all.push(&new);
    let a = converge_from(&all, "a", 100).await;
    assert_eq!(a.last().map(Vec::as_slice), Some(&b"v198"[..]));
    converge_from(&all, "b", 100).await;
    let big = converge_from(&all, "big", 3).await;
    assert_eq!(big[2], vec![2u8; 3 << 20]);
    assert_eq!(new.data().cursor_as("a", "c"), Some(60));
    // It keeps following new writes.
    let r = write(&three, append_req("a", b"later".to_vec())).await;
    assert_eq!(r, walrus_raft::Response::Appended { offset: 100 });
    converge_from(&all, "a", 101).await;
    new.shutdown().await.unwrap();
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// Like [`converge`], but compares only what every node retains (released entries differ in
/// how they are gone: removed on one node, placeholders on a node that installed a snapshot).
async fn converge_from(nodes: &[&Node], topic: &str, len: u64) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + WAIT;
    while nodes
        .iter()
        .any(|n| n.data().end_offset(topic).unwrap_or(0) < len)
    {
        let ends: Vec<_> = nodes.iter().map(|n| n.data().end_offset(topic)).collect();
        assert!(
            Instant::now() < deadline,
            "{topic}: ends {ends:?}, want {len}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let from = nodes
        .iter()
        .map(|n| n.data().first_retained_offset(topic).unwrap_or(0))
        .max()
        .unwrap_or(0);
    let read = |n: &Node| -> Vec<Vec<u8>> {
        (from..len)
            .map(|o| n.data().read_at(topic, o).unwrap().unwrap().data)
            .collect()
    };
    let first = read(nodes[0]);
    for n in &nodes[1..] {
        assert_eq!(read(n), first, "{topic}: node {} differs", n.id());
    }
    first
}
