//! Three `walrus-node` processes on 127.0.0.1, driven over HTTP: `kill -9` of the leader under
//! load elects a new leader within seconds and loses no acknowledged append; a killed follower
//! restarts and catches up; every node ends with the same topic, in the same order. Every wait
//! is bounded.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use parking_lot::Mutex;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const TOPIC: &str = "load";

struct Proc {
    id: u64,
    addr: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_walrus-node"))
            .args(["--id", &self.id.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--addr", &self.addr, "--heartbeat-ms", "50"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// `kill -9`.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap(); // SIGKILL
            c.wait().unwrap();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .no_proxy()
        .build()
        .unwrap()
}

async fn get(c: &reqwest::Client, addr: &str, path: &str) -> Option<Value> {
    let r = c.get(format!("http://{addr}{path}")).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// The leader every live node agrees on.
async fn agreed_leader(c: &reqwest::Client, procs: &[&Proc]) -> Option<u64> {
    let mut leader = None;
    for p in procs {
        let m = get(c, &p.addr, "/cluster/metrics").await?;
        let l = m["current_leader"].as_u64()?;
        if leader.is_some_and(|x| x != l) {
            return None;
        }
        leader = Some(l);
    }
    leader
}

async fn wait_leader(c: &reqwest::Client, procs: &[&Proc], not: Option<u64>) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(l) = agreed_leader(c, procs).await.filter(|l| Some(*l) != not)
            && procs.iter().any(|p| p.id == l)
        {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no leader agreed within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every entry of the topic on one node, read over HTTP.
async fn entries(c: &reqwest::Client, addr: &str) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        let v = get(
            c,
            addr,
            &format!("/topics/{TOPIC}/entries?from={}&max=5000", out.len()),
        )
        .await?;
        let list = v["entries"].as_array()?;
        if list.is_empty() {
            return Some(out);
        }
        for e in list {
            assert_eq!(e["offset"].as_u64(), Some(out.len() as u64));
            let data = base64::engine::general_purpose::STANDARD
                .decode(e["data"].as_str()?)
                .ok()?;
            out.push(data);
        }
    }
}

/// Waits until every node holds the same entries, at least `min` of them; returns them.
async fn converge(c: &reqwest::Client, procs: &[&Proc], min: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut all = Vec::new();
        for p in procs {
            all.push(entries(c, &p.addr).await);
        }
        if let Some(Some(first)) = all.first()
            && first.len() >= min
            && all.iter().all(|a| a.as_ref() == Some(first))
        {
            return first.clone();
        }
        let lens: Vec<_> = all.iter().map(|a| a.as_ref().map(Vec::len)).collect();
        assert!(
            Instant::now() < deadline,
            "nodes did not converge: {lens:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type Acked = Arc<Mutex<BTreeMap<u64, Vec<u8>>>>;

/// A client that appends unique entries until `stop`, trying each node in turn (redirects
/// followed); records what was acknowledged.
async fn load(
    tag: &'static str,
    client: usize,
    addrs: Vec<String>,
    acked: Acked,
    stop: Arc<AtomicBool>,
) -> usize {
    let c = http();
    let mut n = 0;
    let mut node = client;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let data = format!("{tag}{client}-{n}").into_bytes();
        let addr = &addrs[node % addrs.len()];
        let r = c
            .post(format!("http://{addr}/topics/{TOPIC}"))
            .body(data.clone())
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => {
                let v: Value = r.json().await.unwrap();
                let offset = v["offset"].as_u64().unwrap();
                let prev = acked.lock().insert(offset, data);
                assert!(prev.is_none(), "offset {offset} acknowledged twice");
                n += 1;
            }
            _ => {
                // Unknown outcome (the entry may or may not be committed): try another node.
                node += 1;
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    n
}

fn check(all: &[Vec<u8>], acked: &Acked) {
    let acked = acked.lock();
    for (offset, data) in acked.iter() {
        assert_eq!(
            all.get(*offset as usize).map(Vec::as_slice),
            Some(data.as_slice()),
            "acknowledged offset {offset} lost or changed"
        );
    }
    let mut seen = std::collections::HashSet::new();
    for e in all {
        assert!(
            seen.insert(e.clone()),
            "entry {:?} twice",
            String::from_utf8_lossy(e)
        );
    }
}

async fn run_load(addrs: &[String], acked: &Acked, for_: Duration) -> usize {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(load(
                "b",
                i,
                addrs.to_vec(),
                Arc::clone(acked),
                Arc::clone(&stop),
            ))
        })
        .collect();
    tokio::time::sleep(for_).await;
    stop.store(true, Ordering::Relaxed);
    let mut n = 0;
    for t in tasks {
        n += t.await.unwrap();
    }
    n
}

fn procs(dir: &Path) -> Vec<Proc> {
    (1..=3)
        .map(|id| Proc {
            id,
            addr: free_addr(),
            dir: dir.join(format!("n{id}")),
            child: None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_leader_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = procs(dir.path());
    for p in &mut procs {
        p.spawn();
    }
    let c = http();
    let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    let deadline = Instant::now() + WAIT;
    while get(&c, &addrs[0], "/cluster/metrics").await.is_none() {
        assert!(Instant::now() < deadline, "node 1 never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let nodes: BTreeMap<String, String> = procs
        .iter()
        .map(|p| (p.id.to_string(), p.addr.clone()))
        .collect();
    let r = c
        .post(format!("http://{}/cluster/init", addrs[0]))
        .json(&serde_json::json!({ "nodes": nodes }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let refs: Vec<&Proc> = procs.iter().collect();
    let leader = wait_leader(&c, &refs, None).await;

    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(load(
                "a",
                i,
                addrs.clone(),
                Arc::clone(&acked),
                Arc::clone(&stop),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_kill = acked.lock().len();
    assert!(before_kill > 0, "nothing acknowledged before the kill");

    // kill -9 the leader, under load.
    let l = procs.iter().position(|p| p.id == leader).unwrap();
    procs[l].kill();
    let killed_at = Instant::now();
    let rest: Vec<&Proc> = procs.iter().filter(|p| p.id != leader).collect();
    let new_leader = wait_leader(&c, &rest, Some(leader)).await;
    let failover = killed_at.elapsed();
    assert!(
        failover < Duration::from_secs(10),
        "a new leader after {failover:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let after_kill = acked.lock().len() - before_kill;
    assert!(
        after_kill > 0,
        "nothing acknowledged after the failover to {new_leader}"
    );

    // The killed leader restarts and catches up; everything acknowledged is everywhere.
    procs[l].spawn();
    let refs: Vec<&Proc> = procs.iter().collect();
    let min = acked.lock().keys().last().map_or(0, |o| *o as usize + 1);
    let all = converge(&c, &refs, min).await;
    check(&all, &acked);

    // kill -9 a follower; the others go on; it restarts and catches up.
    let leader = wait_leader(&c, &refs, None).await;
    let f = procs.iter().position(|p| p.id != leader).unwrap();
    procs[f].kill();
    run_load(&addrs, &acked, Duration::from_millis(1000)).await;
    procs[f].spawn();
    let refs: Vec<&Proc> = procs.iter().collect();
    let min = acked.lock().keys().last().map_or(0, |o| *o as usize + 1);
    let all = converge(&c, &refs, min).await;
    check(&all, &acked);
    eprintln!(
        "acknowledged {} entries ({before_kill} before the kill, {after_kill} after), failover {failover:?}, {} on every node",
        acked.lock().len(),
        all.len()
    );
}
