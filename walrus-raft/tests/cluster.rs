//! A 3-node cluster in one process, on 127.0.0.1: quorum writes, redirects, consumers,
//! failover, a minority that cannot acknowledge, restart and catch-up, snapshots to a new node.
//! Every wait is bounded. Leadership may move at any time (two cores shared by nine nodes and
//! the other tests): every write goes through whichever node leads and retries a `NotLeader`
//! (never proposed) or a `LeaderChanged` (proposed, then the leadership moved and a new leader
//! truncated the entry on the old one): with three voters such an entry is never committed
//! (every later leader needs the vote of one of the two nodes that hold the new leader's entry
//! in its place), so a retry never writes twice. (With five voters or more it may be: the
//! outcome is then unknown, as `LeaderChanged` says.)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use walrus_raft::{Node, NodeConfig, NodeId, WriteError};

const WAIT: Duration = Duration::from_secs(20);

fn config(id: NodeId, dir: &Path, listen: SocketAddr) -> NodeConfig {
    NodeConfig::new(id, dir.join(format!("n{id}")), listen)
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
    let members: BTreeMap<NodeId, openraft::BasicNode> =
        nodes.iter().map(|n| (n.id(), n.member())).collect();
    nodes[0].raft().initialize(members).await.unwrap();
    nodes
}

/// Stops `node`, failing the test if that takes longer than a minute (a shutdown waits up
/// to 30 s for a snapshot build).
async fn stop(node: Node) {
    let id = node.id();
    let limit = Duration::from_secs(60);
    tokio::time::timeout(limit, node.shutdown())
        .await
        .unwrap_or_else(|_| panic!("node {id} did not stop within {limit:?}"))
        .unwrap();
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

/// Writes through whichever of `nodes` leads (group-committed with concurrent writes),
/// retrying while leadership moves, for [`WAIT`] at most.
async fn write(
    nodes: &[&Node],
    request: walrus_raft::Request,
) -> Result<walrus_raft::Response, WriteError> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let l = leader(nodes).await;
        match tokio::time::timeout_at(deadline, nodes[l].write(request.clone())).await {
            Ok(Err(WriteError::NotLeader(_) | WriteError::LeaderChanged(_))) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(r) => return r,
            Err(_) => panic!(
                "nothing committed within {WAIT:?} (through node {})",
                nodes[l].id()
            ),
        }
    }
}

/// Appends through whichever of `nodes` leads; the offset.
async fn append(nodes: &[&Node], topic: &str, data: &[u8]) -> u64 {
    match write(nodes, append_req(topic, data.to_vec())).await {
        Ok(walrus_raft::Response::Appended { offset }) => offset,
        other => panic!("append to {topic}: {other:?}"),
    }
}

/// Sends what `request` builds until the answer is not 503 (no leader known right now).
async fn send(request: impl Fn() -> reqwest::RequestBuilder) -> reqwest::Response {
    for _ in 0..50 {
        let resp = request().send().await.unwrap();
        if resp.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE {
            return resp;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader known for 50 tries");
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

/// The highest log index any of `nodes` holds (the leader's).
fn last_log_index(nodes: &[&Node]) -> u64 {
    nodes
        .iter()
        .filter_map(|n| n.raft().metrics().borrow().last_log_index)
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_writes_redirects_and_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start(&[1, 2, 3], dir.path(), |_| {}).await;
    let all: Vec<&Node> = nodes.iter().collect();

    // Writes through the leader: offsets in order, identical on every node.
    for i in 0..50u64 {
        let offset = append(&all, "orders", format!("order-{i}").as_bytes()).await;
        assert_eq!(offset, i);
    }
    let got = converge(&all, "orders", 50).await;
    assert_eq!(got[7], b"order-7");

    // Concurrent writers are group-committed into batch entries: every append gets its own
    // offset, contiguous, and a refused request in a batch changes nothing for the others.
    let writers: BTreeMap<NodeId, walrus_raft::Writer> =
        nodes.iter().map(|n| (n.id(), n.writer())).collect();
    let first = nodes[leader(&all).await].id();
    let entries_before = last_log_index(&all);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64u64 {
        let writers = writers.clone();
        tasks.spawn(async move {
            let topic = if i == 13 { "" } else { "burst" };
            let mut to = first;
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let r = writers[&to].write(append_req(topic, format!("b{i}").into_bytes()));
                match tokio::time::timeout_at(deadline, r).await {
                    Ok(Err(WriteError::NotLeader(l) | WriteError::LeaderChanged(l))) => {
                        if let Some((id, _)) = l {
                            to = id;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Ok(r) => return (i, r),
                    Err(_) => panic!("append {i}: nothing committed within {WAIT:?}"),
                }
            }
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
    let batches = last_log_index(&all) - entries_before;
    assert!(
        batches < 32,
        "64 concurrent writes took {batches} log entries: not batched"
    );

    // A follower refuses a direct write and names the leader (asked again if leadership moved
    // meanwhile; a node that wrote was the leader by then).
    let mut named = false;
    for _ in 0..50 {
        let l = leader(&all).await;
        let f = (l + 1) % 3;
        let r = tokio::time::timeout(WAIT, nodes[f].append("elsewhere", b"x")).await;
        match r.expect("a write to a follower hung") {
            Err(WriteError::NotLeader(Some((id, _)))) if id == nodes[l].id() => {
                named = true;
                break;
            }
            Err(WriteError::NotLeader(_) | WriteError::LeaderChanged(_)) | Ok(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(named, "no follower ever named the leader");

    // A request every node would refuse (a name past the limit) is refused before it is
    // proposed: no node's log grows (unless an election meanwhile appended its blank entry).
    let term = || {
        all.iter()
            .map(|n| n.raft().metrics().borrow().current_term)
            .max()
    };
    let (before, term_before) = (last_log_index(&all), term());
    let l = leader(&all).await;
    for r in [
        append_req(&"n".repeat(256), b"x".to_vec()),
        walrus_raft::Request::Commit {
            topic: "orders".into(),
            consumer: "c".repeat(129),
            offset: 0,
        },
    ] {
        match tokio::time::timeout(WAIT, nodes[l].write(r)).await {
            Ok(Err(WriteError::Refused(_))) => {}
            other => panic!("a bad name: {other:?}"),
        }
    }
    if term() == term_before {
        assert_eq!(
            last_log_index(&all),
            before,
            "a refused request was proposed"
        );
    }
    assert_eq!(nodes[0].data().end_offset("orders"), Some(50));

    // So do the cluster routes: a follower redirects a membership change without proposing it.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let l = leader(&all).await;
    let f = (l + 1) % 3;
    let members: Vec<NodeId> = nodes.iter().map(Node::id).collect();
    let resp = no_redirects
        .post(format!("http://{}/cluster/membership", nodes[f].addr()))
        .json(&serde_json::json!({ "members": members }))
        .send()
        .await
        .unwrap();
    // 503 only while no leader is known (an election right then).
    assert!(
        [
            reqwest::StatusCode::TEMPORARY_REDIRECT,
            reqwest::StatusCode::SERVICE_UNAVAILABLE
        ]
        .contains(&resp.status()),
        "{}",
        resp.status()
    );

    // Over HTTP a follower redirects to the leader (307 keeps the method and body).
    let http = client();
    let f = (leader(&all).await + 1) % 3;
    let resp = send(|| {
        http.post(format!("http://{}/topics/orders", nodes[f].addr()))
            .body("via-follower")
    })
    .await;
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
    let base = format!("http://{}/topics/orders/consumers/billing", nodes[f].addr());
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
    let commit = |offset: u64| {
        http.post(format!("{base}/commit"))
            .json(&serde_json::json!({ "offset": offset }))
    };
    assert_eq!(send(|| commit(10)).await.status(), 200);
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
    assert_eq!(send(|| commit(1000)).await.status(), 400);
    assert!(matches!(
        write(&all, append_req("", b"x".to_vec())).await,
        Err(WriteError::Refused(_))
    ));
    for n in &nodes {
        assert_eq!(n.data().cursor_as("orders", "billing"), Some(10));
        assert_eq!(n.data().end_offset("orders"), Some(51));
    }

    for n in nodes {
        stop(n).await;
    }
}

/// The leader stops: a new one is elected, nothing acknowledged is lost; with two of three
/// nodes down, the last one cannot acknowledge; a restarted node catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_minority_and_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let deadline = Duration::from_millis(1500);
    let mut nodes = start(&[1, 2, 3], dir.path(), |c| {
        c.write_timeout = Some(deadline);
        c.write_queue_bytes = 8 << 10;
    })
    .await;
    let mut acked = Vec::new();
    for i in 0..30u64 {
        let data = format!("e{i}");
        let all: Vec<&Node> = nodes.iter().collect();
        acked.push((append(&all, "t", data.as_bytes()).await, data));
    }

    // The leader goes away.
    let l = leader(&nodes.iter().collect::<Vec<_>>()).await;
    let old = nodes.remove(l);
    let (old_id, old_addr) = (old.id(), old.addr());
    stop(old).await;
    let start = Instant::now();
    leader(&nodes.iter().collect::<Vec<_>>()).await;
    let elected = start.elapsed();
    assert!(
        elected < Duration::from_secs(10),
        "election took {elected:?}"
    );
    for i in 30..60u64 {
        let data = format!("e{i}");
        let two: Vec<&Node> = nodes.iter().collect();
        acked.push((append(&two, "t", data.as_bytes()).await, data));
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
    let follower = nodes.remove(1 - leader(&nodes.iter().collect::<Vec<_>>()).await);
    let f_id = follower.id();
    let f_addr = follower.addr();
    stop(follower).await;
    let alone = &nodes[0];
    let before = alone.data().end_offset("t");
    // Without a quorum a write ends at its deadline, not never: the first is proposed (the
    // outcome unknown: it may commit once a quorum is back), the one queued behind it is
    // not (nothing written).
    let (first, second) = tokio::time::timeout(deadline * 4, async {
        tokio::join!(alone.append("t", b"lost"), async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            alone.append("t", b"never").await
        })
    })
    .await
    .expect("the writes outlived their deadline");
    assert!(
        matches!(first, Err(WriteError::TimedOut { proposed: true, .. })),
        "a minority answered the first write: {first:?}"
    );
    assert!(
        matches!(
            second,
            Err(WriteError::TimedOut {
                proposed: false,
                ..
            })
        ),
        "a minority answered the queued write: {second:?}"
    );
    // Over HTTP: the first write still holds raft's one proposal slot, so this one is never
    // proposed: 503, "written": "no".
    let resp = client()
        .post(format!("http://{}/topics/t", alone.addr()))
        .body("http")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["written"], "no", "{body}");
    // The queue holds 8 KiB, 3 of them taken (the stuck write and the two abandoned behind
    // it hold theirs until it ends): a request that fits waits out its deadline, one past it
    // fails at once.
    let (a, b) = tokio::time::timeout(deadline * 4, async {
        tokio::join!(alone.append("t", &[1; 2 << 10]), async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            alone.append("t", &[2; 6 << 10]).await
        })
    })
    .await
    .expect("the writes outlived their deadline");
    assert!(
        matches!(
            a,
            Err(WriteError::TimedOut {
                proposed: false,
                ..
            })
        ),
        "{a:?}"
    );
    assert!(matches!(b, Err(WriteError::Busy)), "{b:?}");
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
    // The write the minority could not commit may be committed now by the new leader (it was
    // in the log of a node that became part of a quorum) or dropped: either is raft.
    let offset = append(&all, "t", b"after").await;
    let got = converge(&all, "t", offset + 1).await;
    for (o, data) in &acked {
        assert_eq!(got[*o as usize], data.as_bytes());
    }
    for n in back {
        stop(n).await;
    }
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
        append(&three, topic, format!("v{i}").as_bytes()).await;
    }
    // Entries larger than a snapshot chunk and than axum's default body limit (2 MiB).
    for i in 0..3u8 {
        append(&three, "big", &vec![i; 3 << 20]).await;
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
    assert!(matches!(r, Ok(walrus_raft::Response::Committed)), "{r:?}");
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
    let deadline = Instant::now() + WAIT;
    let added = loop {
        let l = leader(&three).await;
        let adding = nodes[l].raft().add_learner(4, new.member(), true);
        match tokio::time::timeout_at(deadline.into(), adding).await {
            Ok(Ok(r)) => break r,
            Ok(Err(e)) if e.forward_to_leader().is_some() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("add_learner did not answer within {WAIT:?}"),
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
    assert_eq!(append(&three, "a", b"later").await, 100);
    converge_from(&all, "a", 101).await;
    stop(new).await;
    for n in nodes {
        stop(n).await;
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

/// A client's own batch, sent while other writes are queued, commits as itself (never inside
/// the node's batch, which would hold a batch inside a batch); one holding a batch is refused
/// before raft sees it. Either way the log reads back: the node restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_batches_travel_alone_and_the_log_reads_back() {
    use walrus_raft::{Request, Response};
    let dir = tempfile::tempdir().unwrap();
    let nodes = start(&[1], dir.path(), |_| {}).await;
    let node = &nodes[0];
    leader(&[node]).await;
    let app = |d: &[u8]| Request::Append {
        topic: "t".into(),
        data: d.to_vec(),
    };
    let nested = Request::Batch {
        requests: vec![Request::Batch { requests: vec![] }],
    };
    match node.write(nested).await {
        Err(WriteError::Refused(r)) => assert!(r.contains("batch inside a batch"), "{r}"),
        other => panic!("{other:?}"),
    }
    let writer = node.writer();
    let mut tasks = Vec::new();
    for i in 0..20u8 {
        let w = writer.clone();
        let request = if i % 5 == 0 {
            Request::Batch {
                requests: vec![app(&[i]), app(&[i, i])],
            }
        } else {
            app(&[i])
        };
        tasks.push(tokio::spawn(async move { w.write(request).await }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let response = tokio::time::timeout(WAIT, t)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if i % 5 == 0 {
            assert!(
                matches!(&response, Response::Batch { responses } if responses.len() == 2),
                "{response:?}"
            );
        }
    }
    let end = node.data().end_offset("t");
    assert_eq!(end, Some(24));
    drop(writer);
    for n in nodes {
        stop(n).await;
    }
    let node = Node::start(config(1, dir.path(), any_port()))
        .await
        .unwrap();
    assert_eq!(node.data().end_offset("t"), Some(24));
    stop(node).await;
}

/// A read over HTTP stops at 16 MiB of payload beyond its first entry, whatever `max` asks,
/// and says where to go on from; a request of the wrong shape is a JSON `400`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_reads_are_bounded_and_bad_requests_are_json_400() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start(&[1], dir.path(), |_| {}).await;
    let node = &nodes[0];
    leader(&[node]).await;
    for i in 0..4u8 {
        append(&[node], "big", &vec![i; 6 << 20]).await;
    }
    let mut from = 0;
    let mut pages = Vec::new();
    while from < 4 {
        let url = format!(
            "http://{}/topics/big/entries?from={from}&max=10",
            node.addr()
        );
        let body: serde_json::Value = send(|| client().get(&url)).await.json().await.unwrap();
        let n = body["entries"].as_array().unwrap().len();
        let next = body["next"].as_u64().unwrap();
        assert_eq!(next, from + n as u64);
        pages.push(n);
        from = next;
    }
    // 6 + 6 MiB fit beyond the first entry's 6; a third would pass 16.
    assert_eq!(pages, [3, 1]);
    let base = format!("http://{}", node.addr());
    let long = "x".repeat(300);
    let bad = [
        client().get(format!("{base}/topics/big/entries/abc")),
        client().get(format!("{base}/topics/big/entries?from=minus")),
        client().get(format!("{base}/topics/{long}/entries")),
        client().get(format!("{base}/topics/{long}/consumers/c")),
        client()
            .post(format!("{base}/topics/big/consumers/c/commit"))
            .json(&serde_json::json!({})),
        client()
            .post(format!("{base}/cluster/membership"))
            .body("not json"),
        // Refused by raft, never proposed: a voter that is not a learner, no voters at all.
        client()
            .post(format!("{base}/cluster/membership"))
            .json(&serde_json::json!({ "members": [1, 99] })),
        client()
            .post(format!("{base}/cluster/membership"))
            .json(&serde_json::json!({ "members": [] })),
        // Addresses raft could never dial.
        client()
            .post(format!("{base}/cluster/learners"))
            .json(&serde_json::json!({ "id": 4, "addr": "foo bar" })),
        client()
            .post(format!("{base}/cluster/learners"))
            .json(&serde_json::json!({ "id": 4, "addr": "h:1/x?" })),
    ];
    let json_error = async |resp: reqwest::Response, what: &str| {
        let body: serde_json::Value = resp.json().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(body["error"].is_string(), "{what}: {body}");
    };
    for request in bad {
        let request = request.build().unwrap();
        let what = format!("{} {}", request.method(), request.url());
        let resp = client().execute(request).await.unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::BAD_REQUEST, "{what}");
        json_error(resp, &what).await;
    }
    // What is not a route, or not its method, answers in JSON too; a second init is a 409.
    let others = [
        (
            client().get(format!("{base}/nope")),
            reqwest::StatusCode::NOT_FOUND,
        ),
        (
            client().delete(format!("{base}/topics")),
            reqwest::StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            client()
                .post(format!("{base}/cluster/init"))
                .json(&serde_json::json!({ "nodes": { "1": node.addr().to_string() } })),
            reqwest::StatusCode::CONFLICT,
        ),
        // A member at another address: openraft would keep the old one.
        (
            client()
                .post(format!("{base}/cluster/learners"))
                .json(&serde_json::json!({ "id": 1, "addr": "127.0.0.1:1" })),
            reqwest::StatusCode::CONFLICT,
        ),
    ];
    for (request, status) in others {
        let request = request.build().unwrap();
        let what = format!("{} {}", request.method(), request.url());
        let resp = client().execute(request).await.unwrap();
        assert_eq!(resp.status(), status, "{what}");
        json_error(resp, &what).await;
    }
    // An init of a fresh node that leaves it out is bad input.
    let fresh = Node::start(config(2, dir.path(), any_port()))
        .await
        .unwrap();
    let resp = client()
        .post(format!("http://{}/cluster/init", fresh.addr()))
        .json(&serde_json::json!({ "nodes": { "7": "127.0.0.1:1" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::BAD_REQUEST);
    json_error(resp, "an init without this node").await;
    stop(fresh).await;
    for n in nodes {
        stop(n).await;
    }
}

/// A heartbeat too long to time elections with is refused before anything is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_too_long_is_invalid_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(1, dir.path(), any_port());
    c.heartbeat = Duration::from_millis(u64::MAX / 4);
    let err = Node::start(c).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    assert!(!dir.path().join("n1").exists(), "a directory was created");
}

/// A leader removed from the membership steps down, but its metrics still name it the leader
/// (they follow its vote): a write to it is refused before anything is proposed (NotLeader:
/// nothing written), not answered "outcome unknown".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_leader_refuses_writes_as_not_leader() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start(&[1, 2, 3], dir.path(), |_| {}).await;
    let all: Vec<&Node> = nodes.iter().collect();
    append(&all, "t", b"before").await;
    let l = leader(&all).await;
    let rest: std::collections::BTreeSet<NodeId> = nodes
        .iter()
        .map(Node::id)
        .filter(|id| *id != nodes[l].id())
        .collect();
    tokio::time::timeout(WAIT, nodes[l].raft().change_membership(rest, false))
        .await
        .expect("the membership change hung")
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while nodes[l].raft().metrics().borrow().state == openraft::ServerState::Leader {
        assert!(
            Instant::now() < deadline,
            "the removed leader never stepped down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match tokio::time::timeout(WAIT, nodes[l].append("t", b"after")).await {
        Ok(Err(WriteError::NotLeader(_))) => {}
        other => panic!("a write to the removed leader: {other:?}"),
    }
    for n in nodes {
        stop(n).await;
    }
}

/// When `shutdown` returns, the node's directory is free: a node started on it right away opens
/// it (its instances' last holders, tasks that end once raft is down, are waited for), also
/// after HTTP requests left a kept-alive connection behind, and with a request half sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarts_on_its_directory_as_soon_as_it_shut_down() {
    let dir = tempfile::tempdir().unwrap();
    let http = client();
    let mut nodes = start(&[1], dir.path(), |_| {}).await;
    for round in 0..5u64 {
        let node = nodes.pop().unwrap();
        leader(&[&node]).await;
        append(&[&node], "t", format!("r{round}").as_bytes()).await;
        let resp = http
            .get(format!("http://{}/topics/t/entries/{round}", node.addr()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        // A client that never finishes its request: its connection's task outlives the
        // server, and must not keep the directory.
        let mut stuck = tokio::net::TcpStream::connect(node.addr()).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(
            &mut stuck,
            b"POST /topics/t HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc",
        )
        .await
        .unwrap();
        stop(node).await;
        let again = Node::start(config(1, dir.path(), any_port()))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(again.data().end_offset("t"), Some(round + 1));
        nodes.push(again);
    }
    for n in nodes {
        stop(n).await;
    }
}
