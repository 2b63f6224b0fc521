//! The S3 WAL buffer against a real S3-compatible server (moto on 127.0.0.1), with faults made
//! at the server (paused with SIGSTOP) or between client and server (a lost PUT answer, added
//! latency). Every wait is bounded.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::throttle::{ThrottleConfig, ThrottledStore};
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use walrus_s3::moto::MotoServer;
use walrus_s3::{Durability, LocalFirst, S3Options, S3Reader, S3Wal};

const WAIT: Duration = Duration::from_secs(60);

fn server() -> (MotoServer, Arc<dyn ObjectStore>) {
    let server = MotoServer::start().expect("moto_server (pip install 'moto[server]')");
    let store = server.store("walrus").expect("bucket");
    (server, store)
}

fn read_all(store: &Arc<dyn ObjectStore>, prefix: &str, topic: &str) -> Vec<(u64, Vec<u8>)> {
    let reader = S3Reader::open(Arc::clone(store), prefix).expect("open reader");
    reader
        .read(topic, 0)
        .map(|r| r.map(|r| (r.offset, r.data)))
        .collect::<io::Result<_>>()
        .expect("read back")
}

fn fast() -> S3Options {
    S3Options::default().flush_interval(Duration::from_millis(10))
}

#[test]
fn many_producers_round_trip_in_order_with_few_puts() {
    let (_server, store) = server();
    let wal = Arc::new(S3Wal::open(Arc::clone(&store), "rt", fast()).unwrap());
    let threads = 8;
    let per = 150;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                let topic = format!("topic-{}", t % 3);
                let tickets: Vec<_> = (0..per)
                    .map(|i| wal.append(&topic, format!("{t}:{i}").as_bytes()).unwrap())
                    .collect();
                tickets
                    .into_iter()
                    .map(|tk| tk.wait_timeout(WAIT).unwrap().start)
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let offsets: Vec<Vec<u64>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    for o in &offsets {
        assert!(
            o.windows(2).all(|w| w[0] < w[1]),
            "a producer's entries keep their order"
        );
    }
    let stats = wal.stats();
    assert_eq!(stats.entries_acknowledged, (threads * per) as u64);
    assert!(
        stats.batches < (threads * per / 4) as u64,
        "group commit: {} PUTs for {} entries",
        stats.batches,
        threads * per
    );
    let wal = Arc::into_inner(wal).unwrap();
    wal.close().unwrap();

    let reader = S3Reader::open(Arc::clone(&store), "rt").unwrap();
    assert_eq!(reader.batch_count() as u64, stats.batches);
    let mut seen = 0;
    for topic in reader.topics() {
        let records = read_all(&store, "rt", &topic);
        let mut last_of: HashMap<String, i64> = HashMap::new();
        for (i, (offset, data)) in records.iter().enumerate() {
            assert_eq!(*offset, i as u64, "dense offsets in {topic}");
            let s = String::from_utf8(data.clone()).unwrap();
            let (t, n) = s.split_once(':').unwrap();
            let n: i64 = n.parse().unwrap();
            let last = last_of.entry(t.to_owned()).or_insert(-1);
            assert_eq!(
                n,
                *last + 1,
                "producer {t}'s entries in order, none missing"
            );
            *last = n;
        }
        seen += records.len();
    }
    assert_eq!(seen, threads * per);
}

#[test]
fn entries_wait_for_the_interval_or_the_size_threshold() {
    let (_server, store) = server();
    let options = S3Options::default()
        .flush_interval(Duration::from_secs(3600))
        .flush_bytes(64 << 10);
    let wal = S3Wal::open(Arc::clone(&store), "size", options).unwrap();
    let lone = wal.append("t", b"alone").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !lone.is_durable().unwrap(),
        "a lone entry waits for company"
    );
    let tickets: Vec<_> = (0..100)
        .map(|_| wal.append("t", &[7u8; 1024]).unwrap())
        .collect();
    // 64 KiB queued: flushed long before the hour is up.
    for t in &tickets[..60] {
        t.wait_timeout(WAIT).unwrap();
    }
    assert!(lone.is_durable().unwrap());
    wal.flush().unwrap();
    assert_eq!(wal.end_offset("t"), Some(101));
    drop(wal);
    assert_eq!(read_all(&store, "size", "t").len(), 101);
}

#[test]
fn a_full_queue_waits_and_a_timed_append_hands_the_entry_back() {
    let (server, store) = server();
    let options = S3Options::default()
        .queue_capacity(2)
        .flush_interval(Duration::from_secs(3600))
        .request_timeout(Duration::from_secs(20));
    let wal = S3Wal::open(Arc::clone(&store), "full", options).unwrap();
    server.pause().unwrap();
    // Two fill the queue; the next append finds it full and wakes the flusher, which takes
    // them and hangs in its PUT; two more fill the queue again, and the one after times out.
    let mut tickets = Vec::new();
    let rejected = loop {
        assert!(tickets.len() < 10, "the queue never stayed full");
        let data = format!("x{}", tickets.len()).into_bytes();
        match wal.append_timeout("t", data, Duration::from_millis(500)) {
            Ok(t) => tickets.push(t),
            Err(r) => break r,
        }
    };
    assert_eq!(rejected.error.kind(), io::ErrorKind::TimedOut);
    assert_eq!(rejected.data, format!("x{}", tickets.len()).into_bytes());
    assert_eq!(tickets.len(), 4, "two in the hung PUT, two queued");
    // A blocking append waits until the server is back.
    let wal = Arc::new(wal);
    let blocked = {
        let wal = Arc::clone(&wal);
        std::thread::spawn(move || wal.append("t", b"waited"))
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(!blocked.is_finished(), "a full queue makes append wait");
    server.resume().unwrap();
    tickets.push(blocked.join().unwrap().unwrap());
    // The hour-long interval is not waited out: flush sends what is queued now.
    wal.flush().unwrap();
    for t in tickets {
        t.wait_timeout(WAIT).unwrap();
    }
    let wal = Arc::into_inner(wal).unwrap();
    wal.close().unwrap();
    let data: Vec<Vec<u8>> = read_all(&store, "full", "t")
        .into_iter()
        .map(|r| r.1)
        .collect();
    let handed_back = format!("x{}", data.len() - 1).into_bytes();
    assert!(
        !data.contains(&handed_back),
        "a rejected entry is not written"
    );
    assert_eq!(data.len(), 5);
    assert_eq!(data.last().unwrap(), b"waited");
}

#[test]
fn a_second_writer_fences_the_first() {
    let (_server, store) = server();
    let a = S3Wal::open(Arc::clone(&store), "fence", fast()).unwrap();
    assert_eq!(
        a.append("t", b"a0").unwrap().wait_timeout(WAIT).unwrap(),
        0..1
    );
    let b = S3Wal::open(Arc::clone(&store), "fence", fast()).unwrap();
    assert!(b.epoch() > a.epoch());
    let err = a
        .append("t", b"a1")
        .unwrap()
        .wait_timeout(WAIT)
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
    assert!(err.to_string().contains("fenced"), "{err}");
    let again = a.append("t", b"a2").unwrap_err();
    assert_eq!(again.kind(), io::ErrorKind::BrokenPipe, "{again}");
    assert!(again.to_string().contains("fenced"), "{again}");
    assert_eq!(
        b.append("t", b"b0").unwrap().wait_timeout(WAIT).unwrap(),
        1..2
    );
    assert!(a.close().is_err());
    b.close().unwrap();
    let data: Vec<(u64, Vec<u8>)> = read_all(&store, "fence", "t");
    assert_eq!(data, [(0, b"a0".to_vec()), (1, b"b0".to_vec())]);
}

#[test]
fn a_paused_server_is_ridden_out_by_retries_and_nothing_acknowledged_is_lost() {
    let (server, store) = server();
    let options = fast()
        .request_timeout(Duration::from_millis(400))
        .put_attempts(40)
        .backoff(Duration::from_millis(50), Duration::from_millis(200));
    let wal = Arc::new(S3Wal::open(Arc::clone(&store), "pause", options).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let (wal, stop) = (Arc::clone(&wal), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0..10_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let data = format!("{p}:{i}").into_bytes();
                    let t = wal.append("t", &data).unwrap();
                    let offsets = t.wait_timeout(WAIT).unwrap();
                    acked.push((offsets.start, data));
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    server.pause().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    server.resume().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<(u64, Vec<u8>)> = producers
        .into_iter()
        .flat_map(|p| p.join().unwrap())
        .collect();
    let stats = wal.stats();
    assert!(stats.put_retries > 0, "the pause forced retries: {stats:?}");
    Arc::into_inner(wal).unwrap().close().unwrap();
    let stored: HashMap<u64, Vec<u8>> = read_all(&store, "pause", "t").into_iter().collect();
    for (offset, data) in &acked {
        assert_eq!(
            stored.get(offset),
            Some(data),
            "acknowledged offset {offset}"
        );
    }
}

#[test]
fn a_spent_retry_budget_fails_the_batch_and_stops_the_writer() {
    let (server, store) = server();
    let options = fast()
        .request_timeout(Duration::from_millis(200))
        .put_attempts(2)
        .backoff(Duration::from_millis(10), Duration::from_millis(10));
    let wal = S3Wal::open(Arc::clone(&store), "budget", options).unwrap();
    wal.append("t", b"before")
        .unwrap()
        .wait_timeout(WAIT)
        .unwrap();
    server.pause().unwrap();
    let err = wal
        .append("t", b"during")
        .unwrap()
        .wait_timeout(WAIT)
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(err.to_string().contains("after 2 attempts"), "{err}");
    // Refused as a stopped writer, not as a full queue: retrying on TimedOut would spin.
    let refused = wal.append("t", b"after").unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::BrokenPipe, "{refused}");
    server.resume().unwrap();
    assert!(wal.close().is_err());
    // A new writer resumes the prefix: what was acknowledged is there.
    let wal = S3Wal::open(Arc::clone(&store), "budget", fast()).unwrap();
    let next = wal
        .append("t", b"later")
        .unwrap()
        .wait_timeout(WAIT)
        .unwrap();
    wal.close().unwrap();
    let data = read_all(&store, "budget", "t");
    assert_eq!(data[0], (0, b"before".to_vec()));
    assert_eq!(data.last().unwrap(), &(next.start, b"later".to_vec()));
}

/// Passes everything to the real store, but loses the answer of the first `lose` PUTs after
/// they were written (the client sees an error for a PUT that landed), and panics in PUT
/// number `panic_at` (1-based; 0 never).
#[derive(Debug)]
struct LostAnswers {
    inner: Arc<dyn ObjectStore>,
    lose: AtomicU32,
    panic_at: u32,
    puts: AtomicU32,
    /// Ignore If-None-Match: every PUT overwrites, as a store without conditional PUTs does.
    overwrite: bool,
    /// Refuse PUTs of no bytes (a truncation's emptying of batches).
    refuse_empty: bool,
    /// Deny PUT number `deny_from` (1-based; 0 never) and every one after (not retried).
    deny_from: u32,
}

impl std::fmt::Display for LostAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LostAnswers({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for LostAnswers {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let n = self.puts.fetch_add(1, Ordering::SeqCst) + 1;
        assert_ne!(n, self.panic_at, "injected panic in PUT {n}");
        if self.deny_from != 0 && n >= self.deny_from {
            return Err(object_store::Error::PermissionDenied {
                path: location.to_string(),
                source: "denied".into(),
            });
        }
        if self.refuse_empty && payload.content_length() == 0 {
            return Err(object_store::Error::Generic {
                store: "LostAnswers",
                source: "an empty PUT refused".into(),
            });
        }
        let opts = if self.overwrite {
            PutOptions {
                mode: object_store::PutMode::Overwrite,
                ..opts
            }
        } else {
            opts
        };
        let r = self.inner.put_opts(location, payload, opts).await?;
        let lose = self
            .lose
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lose {
            return Err(object_store::Error::Generic {
                store: "LostAnswers",
                source: "connection reset before the answer".into(),
            });
        }
        Ok(r)
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[test]
fn a_retried_put_that_landed_is_recognised_as_ours() {
    let (_server, store) = server();
    let lossy: Arc<dyn ObjectStore> = Arc::new(LostAnswers {
        inner: Arc::clone(&store),
        lose: 2.into(), // the fence's answer and the first batch's
        panic_at: 0,
        puts: 0.into(),
        overwrite: false,
        refuse_empty: false,
        deny_from: 0,
    });
    let options = fast().backoff(Duration::from_millis(10), Duration::from_millis(10));
    let wal = S3Wal::open(lossy, "lost", options).unwrap();
    assert_eq!(
        wal.append("t", b"once")
            .unwrap()
            .wait_timeout(WAIT)
            .unwrap(),
        0..1
    );
    let stats = wal.stats();
    assert_eq!(stats.put_retries, 2, "{stats:?}");
    wal.close().unwrap();
    let reader = S3Reader::open(Arc::clone(&store), "lost").unwrap();
    assert_eq!(
        reader.batch_count(),
        2,
        "the fence and one batch, each written once"
    );
    assert_eq!(read_all(&store, "lost", "t"), [(0, b"once".to_vec())]);
}

/// A large batch whose PUT answer was lost is recognised as ours from its header, without
/// fetching it whole: a GET of the whole object within the per-request deadline could never
/// finish (here 512 KiB at 2 µs a byte against 300 ms), and the writer would stop with the
/// batch in S3.
#[test]
fn a_large_retried_put_is_recognised_from_its_header() {
    let (_server, store) = server();
    let slow_reads: Arc<dyn ObjectStore> = Arc::new(ThrottledStore::new(
        Arc::clone(&store),
        ThrottleConfig {
            wait_get_per_byte: Duration::from_micros(2),
            ..ThrottleConfig::default()
        },
    ));
    let lossy: Arc<dyn ObjectStore> = Arc::new(LostAnswers {
        inner: slow_reads,
        lose: 2.into(), // the fence's answer and the large batch's
        panic_at: 0,
        puts: 0.into(),
        overwrite: false,
        refuse_empty: false,
        deny_from: 0,
    });
    let options = fast()
        .backoff(Duration::from_millis(10), Duration::from_millis(10))
        .request_timeout(Duration::from_millis(300));
    let wal = S3Wal::open(lossy, "large", options).unwrap();
    let big = vec![9u8; 512 << 10];
    assert_eq!(
        wal.append("t", &big).unwrap().wait_timeout(WAIT).unwrap(),
        0..1
    );
    assert_eq!(wal.stats().put_retries, 2);
    wal.close().unwrap();
    assert_eq!(read_all(&store, "large", "t"), [(0, big)]);
}

/// A store that does not honour If-None-Match would let a second writer overwrite acknowledged
/// batches: the open finds out (its fence, PUT again, must be refused) and refuses to write.
#[test]
fn a_store_without_conditional_puts_is_refused_at_open() {
    let (_server, store) = server();
    let careless: Arc<dyn ObjectStore> = Arc::new(LostAnswers {
        inner: Arc::clone(&store),
        lose: 0.into(),
        panic_at: 0,
        puts: 0.into(),
        overwrite: true,
        refuse_empty: false,
        deny_from: 0,
    });
    let e = S3Wal::open(careless, "careless", fast()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("If-None-Match"), "{e}");
    // The same store honouring it opens.
    S3Wal::open(store, "careless", fast())
        .unwrap()
        .close()
        .unwrap();
}

#[test]
fn added_latency_is_absorbed_by_batching() {
    let (_server, store) = server();
    let slow: Arc<dyn ObjectStore> = Arc::new(ThrottledStore::new(
        Arc::clone(&store),
        ThrottleConfig {
            wait_put_per_call: Duration::from_millis(150),
            ..ThrottleConfig::default()
        },
    ));
    let wal = Arc::new(S3Wal::open(slow, "slow", fast()).unwrap());
    let started = Instant::now();
    let producers: Vec<_> = (0..16)
        .map(|p| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                for i in 0..10 {
                    let t = wal.append("t", format!("{p}:{i}").as_bytes()).unwrap();
                    t.wait_timeout(WAIT).unwrap();
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let elapsed = started.elapsed();
    let stats = wal.stats();
    // 160 synchronous appends, each waiting for its PUT: one PUT per entry would take 24 s.
    assert!(stats.batches <= 40, "{stats:?} in {elapsed:?}");
    Arc::into_inner(wal).unwrap().close().unwrap();
    assert_eq!(read_all(&store, "slow", "t").len(), 160);
}

#[test]
fn an_atomic_batch_lands_in_one_object_at_consecutive_offsets() {
    let (_server, store) = server();
    let wal = S3Wal::open(Arc::clone(&store), "atomic", fast()).unwrap();
    let single = wal.append("t", b"x").unwrap();
    let batch = wal.append_batch("t", &[b"a", b"b", b"c"]).unwrap();
    assert_eq!(single.wait_timeout(WAIT).unwrap(), 0..1);
    assert_eq!(batch.wait_timeout(WAIT).unwrap(), 1..4);
    assert_eq!(
        wal.append_batch("t", &[]).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        wal.append("", b"x").unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    wal.close().unwrap();
    let data: Vec<Vec<u8>> = read_all(&store, "atomic", "t")
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(
        data,
        [b"x".to_vec(), b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
    );
    let reader = S3Reader::open(Arc::clone(&store), "atomic").unwrap();
    let from_two: Vec<u64> = reader.read("t", 2).map(|r| r.unwrap().offset).collect();
    assert_eq!(from_two, [2, 3]);
    assert_eq!(reader.read("t", 9).count(), 0);
}

#[test]
fn a_damaged_object_is_refused_by_name() {
    let (server, store) = server();
    let wal = S3Wal::open(Arc::clone(&store), "bad", fast()).unwrap();
    wal.append("t", b"fine")
        .unwrap()
        .wait_timeout(WAIT)
        .unwrap();
    wal.close().unwrap();
    // Flip one payload byte of batch 1 (batch 0 is the fence), rewriting it in place.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let path = Path::from(walrus_s3::format::object_name("bad", 1));
    use object_store::ObjectStoreExt;
    let mut bytes = rt
        .block_on(async { store.get(&path).await?.bytes().await })
        .unwrap()
        .to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    rt.block_on(store.put(&path, bytes.into())).unwrap();
    let reader = S3Reader::open(Arc::clone(&store), "bad").unwrap();
    let err = reader.read("t", 0).next().unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("00000000000000000001.batch") && msg.contains("\"t\""),
        "{msg}"
    );
    drop(server);
}

#[test]
fn local_first_appends_wait_for_the_durability_asked_for() {
    let (_server, store) = server();
    let dir = tempfile::tempdir().unwrap();
    let local = walrus::Walrus::builder()
        .data_dir(dir.path())
        .fsync_schedule(walrus::FsyncSchedule::NoFsync)
        .build()
        .unwrap();
    let s3 = S3Wal::open(Arc::clone(&store), "lf", fast()).unwrap();
    let both = LocalFirst::new(local, s3);
    let t = both.append("t", b"one").unwrap();
    let placed = t.wait(Durability::Both).unwrap();
    assert_eq!(placed.local, 0..1);
    assert_eq!(placed.s3, Some(0..1));
    let t = both.append("t", b"two").unwrap();
    assert_eq!(t.wait(Durability::Local).unwrap().s3, None);
    both.flush().unwrap();
    assert_eq!(both.local().read_at("t", 1).unwrap().unwrap().data, b"two");
    let (local, s3) = both.into_parts();
    s3.close().unwrap();
    drop(local);
    assert_eq!(read_all(&store, "lf", "t").len(), 2);
}

#[test]
fn a_panicking_store_fails_the_tickets_and_stops_the_writer() {
    let (_server, store) = server();
    let panicky: Arc<dyn ObjectStore> = Arc::new(LostAnswers {
        inner: Arc::clone(&store),
        lose: 0.into(),
        panic_at: 3, // the first batch after the fence and the open's check of it
        puts: 0.into(),
        overwrite: false,
        refuse_empty: false,
        deny_from: 0,
    });
    let wal = S3Wal::open(panicky, "panic", fast()).unwrap();
    let err = wal
        .append("t", b"x")
        .unwrap()
        .wait_timeout(WAIT)
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
    // Refused, or (racing with the panic) queued and then failed: never left waiting.
    let failure = match wal.append("t", b"y") {
        Err(e) => e,
        Ok(t) => t.wait_timeout(WAIT).unwrap_err(),
    };
    assert!(failure.to_string().contains("panicked"), "{failure}");
    let refused = wal.append("t", b"z").unwrap_err();
    assert!(refused.to_string().contains("panicked"), "{refused}");
    assert!(wal.close().is_err());
}

/// Appends racing a batch that fails (a PUT denied) under a flush interval that never comes:
/// each one is refused, or returns a ticket that fails — none is left waiting for a flusher
/// that has nothing to wake it (an append queued just after the failure emptied the queue),
/// and none hangs, also when the queue is full and appends wait for room.
#[test]
fn appends_racing_a_failed_batch_never_wait_for_the_interval() {
    let (_server, store) = server();
    let limit = Duration::from_secs(30);
    let mut stranded = Vec::new();
    for round in 0..10 {
        let denying: Arc<dyn ObjectStore> = Arc::new(LostAnswers {
            inner: Arc::clone(&store),
            lose: 0.into(),
            panic_at: 0,
            puts: 0.into(),
            overwrite: false,
            refuse_empty: false,
            deny_from: 3, // the first batch after the fence and the open's check of it
        });
        // Every other round with a queue of two: appends wait for room there.
        let capacity = if round % 2 == 0 { 1 << 16 } else { 2 };
        let options = S3Options::default()
            .flush_interval(Duration::MAX)
            .queue_capacity(capacity);
        let prefix = format!("denied{round}");
        let wal = Arc::new(S3Wal::open(denying, &prefix, options).unwrap());
        let (done, finished) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let (wal, done) = (Arc::clone(&wal), done.clone());
            std::thread::spawn(move || {
                let mut tickets = Vec::new();
                for _ in 0..100_000 {
                    match wal.append("t", b"entry") {
                        Ok(t) => tickets.push(t),
                        Err(_) => break,
                    }
                }
                drop(wal);
                done.send(Some(tickets)).unwrap();
            });
        }
        {
            // The first flush with entries queued sends the batch that is denied.
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    if wal.flush().is_err() {
                        break;
                    }
                    std::thread::yield_now();
                }
                drop(wal);
                done.send(None).unwrap();
            });
        }
        for _ in 0..5 {
            let Some(tickets) = finished.recv_timeout(limit).expect("a thread hung") else {
                continue;
            };
            for t in tickets {
                match t.wait_timeout(Duration::from_secs(5)) {
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => stranded.push(round),
                    Err(e) => assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}"),
                    Ok(range) => panic!("an entry at {range:?} acknowledged past a denied PUT"),
                }
            }
        }
        let close = Arc::into_inner(wal).expect("every thread let go").close();
        assert_eq!(close.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
    }
    assert!(
        stranded.is_empty(),
        "tickets left waiting in rounds {stranded:?}"
    );
}

#[test]
fn flush_sends_a_long_backlog_without_waiting_for_the_interval() {
    let (_server, store) = server();
    let options = S3Options::default()
        .flush_interval(Duration::from_secs(3600))
        .flush_bytes(4096);
    let wal = Arc::new(S3Wal::open(Arc::clone(&store), "backlog", options).unwrap());
    let tickets: Vec<_> = (0..100)
        .map(|_| wal.append("t", &[1u8; 1000]).unwrap())
        .collect();
    // 25 batches lie before the flush marker; one hour per batch would be the bug.
    let (done, finished) = std::sync::mpsc::channel();
    let flusher = {
        let wal = Arc::clone(&wal);
        std::thread::spawn(move || done.send(wal.flush()))
    };
    finished.recv_timeout(WAIT).unwrap().unwrap();
    flusher.join().unwrap().unwrap();
    for t in &tickets {
        assert!(t.is_durable().unwrap());
    }
    assert_eq!(wal.end_offset("t"), Some(100));
    Arc::into_inner(wal).unwrap().close().unwrap();
}

#[test]
fn dropping_the_writer_while_a_ticket_is_waited_on_sends_the_entry() {
    let (_server, store) = server();
    // An hour-long interval: only the drop's flush can send the entry.
    let options = S3Options::default().flush_interval(Duration::from_secs(3600));
    let wal = S3Wal::open(Arc::clone(&store), "drop", options).unwrap();
    let ticket = wal.append("t", b"queued at the drop").unwrap();
    let waiter = std::thread::spawn(move || ticket.wait_timeout(WAIT));
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !waiter.is_finished(),
        "nothing sends the entry before the drop"
    );
    drop(wal);
    assert_eq!(waiter.join().unwrap().unwrap(), 0..1);
    assert_eq!(
        read_all(&store, "drop", "t"),
        [(0, b"queued at the drop".to_vec())]
    );
}

#[test]
fn a_reader_follows_a_live_writer_with_refresh() {
    let (_server, store) = server();
    let wal = S3Wal::open(Arc::clone(&store), "live", fast()).unwrap();
    let mut reader = S3Reader::open(Arc::clone(&store), "live").unwrap();
    for round in 0..5u64 {
        let offsets = wal
            .append("t", &round.to_le_bytes())
            .unwrap()
            .wait_timeout(WAIT)
            .unwrap();
        reader.refresh().unwrap();
        assert_eq!(reader.end_offset("t"), Some(offsets.end));
        let last = reader.read("t", offsets.start).next().unwrap().unwrap();
        assert_eq!(last.data, round.to_le_bytes());
    }
    wal.close().unwrap();
}

/// The API blocks, and works from any thread: inside an async task (where Tokio's `block_on`
/// would panic), in `spawn_blocking` (where an async caller should call it), and outside; what
/// it built is dropped inside a runtime without a panic.
#[test]
fn it_works_from_inside_an_async_runtime_and_from_spawn_blocking() {
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    runtime.block_on(async {
        let wal = S3Wal::open(Arc::clone(&store), "inside", fast()).unwrap();
        wal.append("t", b"in a task")
            .unwrap()
            .wait_timeout(WAIT)
            .unwrap();
        drop(wal);
        let reader = S3Reader::open(Arc::clone(&store), "inside").unwrap();
        assert_eq!(reader.end_offset("t"), Some(1));
        let store = Arc::clone(&store);
        let read = tokio::task::spawn_blocking(move || {
            let reader = S3Reader::open(store, "inside")?;
            let entry = reader.read("t", 0).next().transpose()?;
            Ok::<_, io::Error>(entry.map(|e| e.data))
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(read.as_deref(), Some(&b"in a task"[..]));
    });
    let wal = S3Wal::open(Arc::clone(&store), "outside", fast()).unwrap();
    wal.append("t", b"x").unwrap().wait_timeout(WAIT).unwrap();
}

/// A prefix whose batches reached the last epoch a reader accepts (only crafted objects do) is
/// refused, with nothing written: fencing it would need an epoch no later open accepts.
#[test]
fn a_prefix_out_of_epochs_is_refused_and_left_as_it_is() {
    use object_store::{ObjectStoreExt, PutPayload};
    use walrus_s3::format::{BatchId, encode_batch, object_name};
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let last = BatchId {
        epoch: u64::MAX - 1,
        sequence: 0,
        writer: 7,
    };
    let bytes = encode_batch(last, &[]).unwrap();
    runtime
        .block_on(store.put(&Path::from(object_name("worn", 0)), PutPayload::from(bytes)))
        .unwrap();
    let listed = || {
        runtime
            .block_on(async {
                use futures::TryStreamExt;
                store.list(None).try_collect::<Vec<_>>().await
            })
            .unwrap()
            .len()
    };
    assert_eq!(listed(), 1);
    let e = S3Wal::open(Arc::clone(&store), "worn", fast()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("worn"), "{e}");
    assert_eq!(listed(), 1, "the refused open wrote");
    // One epoch before it opens, and fences with the last one.
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let bytes = encode_batch(
        BatchId {
            epoch: u64::MAX - 2,
            ..last
        },
        &[],
    )
    .unwrap();
    runtime
        .block_on(store.put(&Path::from(object_name("worn", 0)), PutPayload::from(bytes)))
        .unwrap();
    drop(runtime);
    S3Wal::open(Arc::clone(&store), "worn", fast())
        .unwrap()
        .close()
        .unwrap();
    S3Reader::open(Arc::clone(&store), "worn").unwrap();
}

/// `Duration::MAX` is no deadline, nowhere a panic: a flush interval of it (flushes by size
/// and on request only), a timed append and a timed wait.
#[test]
fn a_duration_of_max_is_no_deadline() {
    let (_server, store) = server();
    let options = S3Options::default().flush_interval(Duration::MAX);
    let wal = S3Wal::open(Arc::clone(&store), "forever", options).unwrap();
    let ticket = wal
        .append_timeout("t", b"x".to_vec(), Duration::MAX)
        .unwrap();
    wal.flush().unwrap();
    assert_eq!(ticket.wait_timeout(Duration::MAX).unwrap(), 0..1);
    wal.close().unwrap();
    assert_eq!(read_all(&store, "forever", "t"), vec![(0, b"x".to_vec())]);
}

/// The byte budget counts what an entry costs in memory, not only its payload: batches of
/// empty entries wait for room like any others while the server is away.
#[test]
fn empty_entries_count_against_the_byte_budget() {
    let (server, store) = server();
    let options = S3Options::default()
        .max_buffered_bytes(1024)
        .flush_interval(Duration::from_secs(3600))
        .request_timeout(Duration::from_secs(20));
    let wal = Arc::new(S3Wal::open(Arc::clone(&store), "empty", options).unwrap());
    server.pause().unwrap();
    let done = Arc::new(AtomicU32::new(0));
    let producer = {
        let (wal, done) = (Arc::clone(&wal), Arc::clone(&done));
        std::thread::spawn(move || {
            let empties = vec![&b""[..]; 2000];
            (0..10)
                .map(|_| {
                    let t = wal.append_batch("t", &empties);
                    done.fetch_add(1, Ordering::AcqRel);
                    t
                })
                .collect::<io::Result<Vec<_>>>()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let queued = done.load(Ordering::Acquire);
    assert!(
        queued <= 3,
        "{queued} batches of 2000 empty entries queued within a 1 KiB budget"
    );
    server.resume().unwrap();
    let tickets = producer.join().unwrap().unwrap();
    wal.flush().unwrap();
    for t in tickets {
        t.wait_timeout(WAIT).unwrap();
    }
    let wal = Arc::into_inner(wal).unwrap();
    wal.close().unwrap();
    assert_eq!(read_all(&store, "empty", "t").len(), 20_000);
}

/// A ticket's waker runs on the flusher: one that panics fails neither the other tickets of
/// its batch nor the writer.
#[test]
fn a_panicking_waker_harms_no_other_ticket() {
    struct Panics;
    impl std::task::Wake for Panics {
        fn wake(self: Arc<Self>) {
            panic!("a waker that panics");
        }
    }
    let (_server, store) = server();
    let options = S3Options::default().flush_interval(Duration::from_secs(3600));
    let wal = S3Wal::open(Arc::clone(&store), "wakers", options).unwrap();
    let mut first = wal.append("t", b"a").unwrap();
    let second = wal.append("t", b"b").unwrap();
    let waker = std::task::Waker::from(Arc::new(Panics));
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(std::pin::Pin::new(&mut first).poll(&mut cx).is_pending());
    wal.flush().unwrap();
    assert_eq!(second.wait_timeout(WAIT).unwrap(), 1..2);
    assert_eq!(first.wait_timeout(WAIT).unwrap(), 0..1);
    let third = wal.append("t", b"c").unwrap();
    wal.flush().unwrap();
    assert_eq!(third.wait_timeout(WAIT).unwrap(), 2..3);
    wal.close().unwrap();
    assert_eq!(read_all(&store, "wakers", "t").len(), 3);
}

/// A runtime for the tests' own calls to the store.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The batch objects of `prefix` that hold bytes (a truncation leaves the names of those it
/// dropped, empty), by name.
fn batch_names(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    batch_objects(store, prefix)
        .into_iter()
        .filter(|(_, size)| *size > 0)
        .map(|(name, _)| name)
        .collect()
}

/// The checkpoint objects of `prefix`, by name.
fn checkpoint_names(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    let listed: Vec<ObjectMeta> = runtime().block_on(async {
        use futures::TryStreamExt;
        store
            .list(Some(&Path::from(format!("{prefix}/checkpoint"))))
            .try_collect()
            .await
            .expect("list")
    });
    let mut names: Vec<String> = listed.into_iter().map(|m| m.location.to_string()).collect();
    names.sort();
    names
}

/// Every batch object of `prefix`: name and size, by name.
fn batch_objects(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<(String, u64)> {
    let listed: Vec<ObjectMeta> = runtime().block_on(async {
        use futures::TryStreamExt;
        store
            .list(Some(&Path::from(prefix)))
            .try_collect()
            .await
            .expect("list")
    });
    let mut names: Vec<(String, u64)> = listed
        .into_iter()
        .map(|m| (m.location.to_string(), m.size))
        .filter(|(n, _)| n.ends_with(".batch"))
        .collect();
    names.sort();
    names
}

/// Appends one entry to each topic and flushes: one batch object holding both.
fn round(wal: &S3Wal, topics: &[&str], i: u64) {
    let tickets: Vec<_> = topics
        .iter()
        .map(|t| wal.append(t, format!("{t}{i}").as_bytes()).unwrap())
        .collect();
    wal.flush().unwrap();
    for (t, ticket) in topics.iter().zip(tickets) {
        assert_eq!(ticket.wait_timeout(WAIT).unwrap(), i..i + 1, "{t}");
    }
}

/// A truncation deletes the oldest batches whose entries all lie below their topics' floors,
/// and nothing after the first one still needed. Readers start each topic at its first kept
/// entry; offsets, sequences and epochs continue, even from a prefix emptied of batches, and
/// a writer opening it still fences the one before.
#[test]
fn truncate_drops_what_no_reader_needs_and_everything_continues() {
    let (_server, store) = server();
    let wal = S3Wal::open(Arc::clone(&store), "trunc", fast()).unwrap();
    for i in 0..6 {
        round(&wal, &["a", "b"], i);
    }
    let mut early = S3Reader::open(Arc::clone(&store), "trunc").unwrap();
    // Batch 0 is the open's fence; batch 1 + i holds a@i and b@i. "b" needs 2 on: batches
    // 0..=2 go, batch 3 (b@2) stays, and with it every later one.
    assert_eq!(wal.truncate(&[("a", 3), ("b", 2)]).unwrap(), 3);
    // Before its refresh, the reader finds a truncated batch gone, not unreachable.
    let gone = early.read("a", 1).next().unwrap().unwrap_err();
    assert_eq!(gone.kind(), io::ErrorKind::NotFound, "{gone}");
    assert!(gone.to_string().contains("truncation"), "{gone}");
    // A reader that held every batch learns of it on refresh.
    early.refresh().unwrap();
    assert_eq!((early.start_offset("a"), early.batch_count()), (2, 4));
    let err = early.read("a", 1).next().unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    assert_eq!(
        wal.truncate(&[("a", 3), ("b", 2)]).unwrap(),
        0,
        "nothing more"
    );
    let reader = S3Reader::open(Arc::clone(&store), "trunc").unwrap();
    assert_eq!(reader.batch_count(), 4);
    assert_eq!((reader.start_offset("a"), reader.start_offset("b")), (2, 2));
    assert_eq!(
        (reader.end_offset("a"), reader.end_offset("b")),
        (Some(6), Some(6))
    );
    let err = reader.read("a", 1).next().unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
    let kept: Vec<(u64, Vec<u8>)> = reader
        .read("b", 2)
        .map(|r| r.map(|r| (r.offset, r.data)))
        .collect::<io::Result<_>>()
        .unwrap();
    let want: Vec<(u64, Vec<u8>)> = (2..6).map(|i| (i, format!("b{i}").into_bytes())).collect();
    assert_eq!(kept, want);

    // Everything: no batch holds bytes, every name stays taken, the topics' ends stay.
    assert_eq!(wal.truncate(&[("a", 6), ("b", 6)]).unwrap(), 4);
    assert!(batch_names(&store, "trunc").is_empty());
    assert_eq!(batch_objects(&store, "trunc").len(), 7);
    let reader = S3Reader::open(Arc::clone(&store), "trunc").unwrap();
    assert_eq!(reader.batch_count(), 0);
    assert_eq!(reader.topics(), ["a", "b"]);
    assert_eq!(reader.end_offset("a"), Some(6));
    assert!(reader.read("a", 6).next().is_none());

    // The writer goes on where it was.
    round(&wal, &["a", "b"], 6);
    // A new writer continues the sequences and offsets, with a higher epoch, and fences the
    // first, whose next name it takes.
    let second = S3Wal::open(Arc::clone(&store), "trunc", fast()).unwrap();
    assert!(second.epoch() > wal.epoch());
    assert_eq!(second.end_offset("a"), Some(7));
    let err = wal
        .append("a", b"late")
        .unwrap()
        .wait_timeout(WAIT)
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
    let refused = wal.truncate(&[]).unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::BrokenPipe, "{refused}");
    round(&second, &["a"], 7);
    let names = batch_names(&store, "trunc");
    assert_eq!(
        names,
        [
            "trunc/00000000000000000007.batch",
            "trunc/00000000000000000008.batch",
            "trunc/00000000000000000009.batch",
        ],
        "sequences continue after the truncated ones"
    );
    assert!(wal.close().is_err());
    second.close().unwrap();
    let data = read_all_from(&store, "trunc", "a", 6);
    assert_eq!(data, [(6, b"a6".to_vec()), (7, b"a7".to_vec())]);
}

fn read_all_from(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    topic: &str,
    from: u64,
) -> Vec<(u64, Vec<u8>)> {
    let reader = S3Reader::open(Arc::clone(store), prefix).expect("open reader");
    reader
        .read(topic, from)
        .map(|r| r.map(|r| (r.offset, r.data)))
        .collect::<io::Result<_>>()
        .expect("read back")
}

/// A truncation cut short after its checkpoint leaves batches below it: opens ignore them,
/// and the next truncation deletes them. Bad floors change nothing.
#[test]
fn a_truncation_cut_short_is_finished_by_the_next() {
    let (_server, store) = server();
    let wal = S3Wal::open(Arc::clone(&store), "cut", fast()).unwrap();
    for i in 0..4 {
        round(&wal, &["t"], i);
    }
    use object_store::ObjectStoreExt;
    let first = Path::from("cut/00000000000000000001.batch");
    let bytes =
        runtime().block_on(async { store.get(&first).await.unwrap().bytes().await.unwrap() });
    let long = "x".repeat(256);
    for bad in [
        &[("", 1)][..],
        &[("t", 1), ("t", 2)][..],
        &[("t", 1), (long.as_str(), 2)][..],
    ] {
        let e = wal.truncate(bad).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}: {e}");
    }
    assert_eq!(
        batch_names(&store, "cut").len(),
        5,
        "a refused truncation deleted"
    );
    assert_eq!(wal.truncate(&[("t", 2)]).unwrap(), 3);
    assert_eq!(
        checkpoint_names(&store, "cut"),
        ["cut/checkpoint/00000000000000000003.ckpt"]
    );
    // As if the truncation had stopped after its checkpoints, before it emptied batch 1 and
    // deleted the checkpoint of nothing it wrote first.
    let nothing = walrus_s3::format::encode_checkpoint(&Default::default()).unwrap();
    let rt = runtime();
    rt.block_on(store.put(&first, PutPayload::from_bytes(bytes)))
        .unwrap();
    rt.block_on(store.put(
        &Path::from(walrus_s3::format::checkpoint_name("cut", 0)),
        PutPayload::from(nothing),
    ))
    .unwrap();
    let reader = S3Reader::open(Arc::clone(&store), "cut").unwrap();
    assert_eq!(reader.batch_count(), 2);
    assert_eq!(reader.start_offset("t"), 2);
    let second = S3Wal::open(Arc::clone(&store), "cut", fast()).unwrap();
    assert_eq!(second.end_offset("t"), Some(4));
    assert_eq!(second.truncate(&[("t", 2)]).unwrap(), 1, "the leftover");
    assert_eq!(
        checkpoint_names(&store, "cut"),
        ["cut/checkpoint/00000000000000000003.ckpt"]
    );
    assert_eq!(
        batch_names(&store, "cut"),
        [
            "cut/00000000000000000003.batch",
            "cut/00000000000000000004.batch",
            "cut/00000000000000000005.batch",
        ]
    );
    second.close().unwrap();
    let _ = wal.close();
}

/// Fencing is a create-once PUT of the next name, so a truncation must never free a name: a
/// fenced writer whose next name was the new writer's fence, truncated since, still finds it
/// taken, and acknowledges nothing. A reader opened before the truncation moves past it on
/// refresh.
#[test]
fn a_truncation_frees_no_name_a_fenced_writer_could_take() {
    let (_server, store) = server();
    let first = S3Wal::open(Arc::clone(&store), "names", fast()).unwrap();
    round(&first, &["t"], 0);
    let mut reader = S3Reader::open(Arc::clone(&store), "names").unwrap();
    // Its fence takes the first writer's next name.
    let second = S3Wal::open(Arc::clone(&store), "names", fast()).unwrap();
    round(&second, &["t"], 1);
    round(&second, &["t"], 2);
    assert_eq!(second.truncate(&[("t", 3)]).unwrap(), 5);
    assert!(batch_names(&store, "names").is_empty());
    let err = first
        .append("t", b"stale")
        .unwrap()
        .wait_timeout(WAIT)
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
    round(&second, &["t"], 3);
    reader.refresh().unwrap();
    assert_eq!(reader.start_offset("t"), 3);
    assert_eq!(reader.end_offset("t"), Some(4));
    let data: Vec<(u64, Vec<u8>)> = reader
        .read("t", 3)
        .map(|r| r.map(|r| (r.offset, r.data)))
        .collect::<io::Result<_>>()
        .unwrap();
    assert_eq!(data, [(3, b"t3".to_vec())]);
    assert!(first.close().is_err());
    second.close().unwrap();
    assert_eq!(
        read_all_from(&store, "names", "t", 3),
        [(3, b"t3".to_vec())],
        "the fenced writer's entry is nowhere"
    );
}

/// The first truncation of a prefix, cut short after its checkpoint (no batch emptied yet),
/// is finished by the next one: it wrote a checkpoint of nothing first, from which the next
/// lists.
#[test]
fn a_first_truncation_cut_short_is_finished_from_the_start() {
    let (_server, store) = server();
    let wal = S3Wal::open(Arc::clone(&store), "first", fast()).unwrap();
    for i in 0..4 {
        round(&wal, &["t"], i);
    }
    wal.close().unwrap();
    let refusing: Arc<dyn ObjectStore> = Arc::new(LostAnswers {
        inner: Arc::clone(&store),
        lose: AtomicU32::new(0),
        panic_at: 0,
        puts: AtomicU32::new(0),
        overwrite: false,
        refuse_empty: true,
        deny_from: 0,
    });
    let cut = S3Wal::open(refusing, "first", fast()).unwrap();
    assert!(cut.truncate(&[("t", 2)]).is_err());
    assert_eq!(
        checkpoint_names(&store, "first"),
        [
            "first/checkpoint/00000000000000000000.ckpt",
            "first/checkpoint/00000000000000000003.ckpt",
        ]
    );
    assert_eq!(batch_names(&store, "first").len(), 6, "nothing emptied");
    let reader = S3Reader::open(Arc::clone(&store), "first").unwrap();
    assert_eq!(reader.start_offset("t"), 2);
    drop(cut);
    let next = S3Wal::open(Arc::clone(&store), "first", fast()).unwrap();
    assert_eq!(next.truncate(&[("t", 2)]).unwrap(), 3, "batches 0 to 2");
    assert_eq!(
        checkpoint_names(&store, "first"),
        ["first/checkpoint/00000000000000000003.ckpt"]
    );
    next.close().unwrap();
}

/// A prefix with characters object_store encodes in its paths (non-ASCII, `~`): checkpoints
/// are found like batches, so a truncation leaves the prefix readable and writable.
#[test]
fn a_prefix_object_store_encodes_keeps_its_checkpoints() {
    let (_server, store) = server();
    let prefix = "wal-é~1";
    let wal = S3Wal::open(Arc::clone(&store), prefix, fast()).unwrap();
    wal.append("t", b"x").unwrap().wait_timeout(WAIT).unwrap();
    wal.append("t", b"y").unwrap().wait_timeout(WAIT).unwrap();
    assert!(wal.truncate(&[("t", 1)]).unwrap() >= 1);
    wal.close().unwrap();
    let reader = S3Reader::open(Arc::clone(&store), prefix).unwrap();
    assert_eq!(reader.start_offset("t"), 1);
    let kept: Vec<(u64, Vec<u8>)> = reader
        .read("t", 1)
        .map(|r| r.map(|r| (r.offset, r.data)))
        .collect::<io::Result<_>>()
        .unwrap();
    assert_eq!(kept, vec![(1, b"y".to_vec())]);
    let wal = S3Wal::open(Arc::clone(&store), prefix, fast()).unwrap();
    assert_eq!(
        wal.append("t", b"z").unwrap().wait_timeout(WAIT).unwrap(),
        2..3
    );
    wal.close().unwrap();
}
