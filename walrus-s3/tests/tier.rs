//! [`S3Tier`] against a real S3-compatible server (moto on 127.0.0.1): the remote tier
//! conformance suite the in-memory tier passes, then what only a real server shows (a hung
//! server fails calls within their deadline; the metadata is S3 user metadata), and deadlines
//! that grow with the bytes moved (on object_store's in-memory store, throttled).

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::{ObjectStore, ObjectStoreExt};
use walrus::tier::{Metadata, PutOutcome, RemoteTier};
use walrus_io::tier::conformance::{self, Target};
use walrus_s3::S3Tier;
use walrus_s3::moto::MotoServer;

#[test]
fn s3_tier_conforms_under_a_prefix_and_at_the_bucket_root() {
    let server = MotoServer::start().expect("moto_server (pip install 'moto[server]')");
    let store = server.store("tier").unwrap();
    for prefix in ["walrus/tier", ""] {
        let tier = S3Tier::new(Arc::clone(&store), prefix).unwrap();
        conformance::run_all(&Target {
            tier: Arc::new(tier.clone()),
            dir: "conformance".into(),
        });
        assert_eq!(tier.list("conformance").unwrap(), vec![], "{prefix:?}");
    }
}

#[test]
fn keys_live_under_the_prefix_with_user_metadata() {
    let server = MotoServer::start().expect("moto_server");
    let store = server.store("tier").unwrap();
    let tier = S3Tier::new(Arc::clone(&store), "/p/q/").unwrap();
    let meta = Metadata::from([("walrus-topic".to_string(), "orders".to_string())]);
    assert_eq!(
        tier.put_new("t/a.blk", b"data", &meta).unwrap(),
        PutOutcome::Created
    );
    // The object is at PREFIX/KEY for any other S3 client, its metadata as x-amz-meta-*.
    let path = object_store::path::Path::from("p/q/t/a.blk");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got = rt
        .block_on(async { store.get(&path).await?.bytes().await })
        .unwrap();
    assert_eq!(got.as_ref(), b"data");
    assert_eq!(tier.head("t/a.blk").unwrap().unwrap().meta, meta);
    assert_eq!(tier.list("t").unwrap()[0].key, "t/a.blk");
    let bad = S3Tier::new(store.clone(), "a//b").unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidInput);
    // A zero deadline would time every request out.
    let zero = S3Tier::with_timeout(store.clone(), "z", Duration::ZERO).unwrap_err();
    assert_eq!(zero.kind(), ErrorKind::InvalidInput, "{zero}");
    let zero = walrus_s3::S3Reader::with_timeout(store, "z", Duration::ZERO).unwrap_err();
    assert_eq!(zero.kind(), ErrorKind::InvalidInput, "{zero}");
}

#[test]
fn a_hung_server_fails_each_call_within_its_deadline() {
    let server = MotoServer::start().expect("moto_server");
    let store = server.store("tier").unwrap();
    let tier = S3Tier::with_timeout(store, "hung", Duration::from_millis(500)).unwrap();
    tier.put_new("t/a", b"abc", &Metadata::new()).unwrap();
    server.pause().unwrap();
    let started = Instant::now();
    let results = [
        tier.get_range("t/a", 0..3).map(|_| ()),
        tier.head("t/a").map(|_| ()),
        tier.put_new("t/b", b"x", &Metadata::new()).map(|_| ()),
        tier.list("t").map(|_| ()),
    ];
    let took = started.elapsed();
    server.resume().unwrap();
    for r in results {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("hung/t"), "{e}");
    }
    // Four calls of 500 ms deadlines (no retries inside the tier).
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(tier.get_range("t/a", 1..3).unwrap(), b"bc");
}

/// A Walrus instance tiering a topic into S3, keeping 64 KiB of it locally: its thread uploads
/// the sealed blocks, the objects are valid tiered blocks holding exactly what was appended,
/// the local copies leave the disk, and after a reopen the catalogue comes back from S3 with
/// nothing uploaded twice and every entry readable (at an offset, by a consumer, in batches,
/// by the iterator), most of them from S3.
#[test]
fn an_instance_tiers_sealed_blocks_into_s3_and_reads_them_back_after_a_reopen() {
    use walrus::{FsyncSchedule, Retention, Tiering, WalrusBuilder};
    use walrus_block::tier::TierIndex;
    use walrus_block::{Frame, FrameDecoder};

    let server = MotoServer::start().expect("moto_server");
    let store = server.store("tier").unwrap();
    let tier: Arc<dyn RemoteTier> = Arc::new(S3Tier::new(store, "walrus").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        WalrusBuilder::new()
            .data_dir(dir.path())
            .segment_len(256 * 1024)
            .block_len(16 * 1024)
            .fsync_schedule(FsyncSchedule::Milliseconds(5))
            .tier(Arc::clone(&tier), "tier")
            .topic_tiering(
                "orders",
                Tiering::keeping(Retention::unlimited().with_max_bytes(64 * 1024)),
            )
            .quiet(true)
            .build()
            .unwrap()
    };
    let entry = |i: u64| format!("order-{i:06}-{}", "x".repeat((i % 300) as usize)).into_bytes();
    let wal = open();
    for i in 0..2000 {
        wal.append_for_topic("orders", &entry(i)).unwrap();
    }
    let tiered = |wal: &walrus::Walrus| {
        wal.stats()
            .topics
            .into_iter()
            .find(|t| t.name == "orders")
            .map_or(0, |t| t.tiered_entries)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while tiered(&wal) < 1500 {
        assert!(
            Instant::now() < deadline,
            "only {} entries tiered",
            tiered(&wal)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(wal);
    let listed = tier.list("tier/orders").unwrap();
    let mut next = 0;
    for l in listed.iter().filter(|l| l.key.ends_with(".idx")) {
        let index = TierIndex::decode(&tier.get_range(&l.key, 0..l.size).unwrap()).unwrap();
        assert_eq!(index.first_offset, next, "{}", l.key);
        let (blk, _) = index.object_names("tier");
        let data = tier.get_range(&blk, 0..index.data_len).unwrap();
        for f in FrameDecoder::new(&data, 0) {
            if let Frame::Entry(e) = f {
                assert_eq!(e.payload, entry(e.offset), "offset {}", e.offset);
                next = e.offset + 1;
            }
        }
        assert_eq!(next, index.end_offset());
    }
    assert!(next >= 1500);
    assert_eq!(
        listed.len() % 2,
        0,
        "a data object without its index: {listed:?}"
    );

    // Reopened, the instance knows what is tiered and uploads it no second time.
    let wal = open();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tiered(&wal) < next {
        assert!(Instant::now() < deadline, "the catalogue did not come back");
        std::thread::sleep(Duration::from_millis(50));
    }
    let orders = wal
        .stats()
        .topics
        .into_iter()
        .find(|t| t.name == "orders")
        .unwrap();
    assert!(orders.blocks <= 8, "{} blocks still local", orders.blocks);
    assert_eq!(wal.first_retained_offset("orders"), Some(0));
    for o in 0..2000 {
        let got = wal.read_at("orders", o).unwrap().map(|e| e.data);
        assert_eq!(got, Some(entry(o)), "read_at {o}");
    }
    let mut read = 0;
    for _ in 0..100_000 {
        let batch = wal.read_records("orders", 64 * 1024, true).unwrap();
        if batch.is_empty() {
            break;
        }
        for r in batch {
            assert_eq!((r.offset, r.data), (read, entry(read)));
            read += 1;
        }
    }
    assert_eq!(read, 2000);
    let all: Vec<u64> = wal
        .iter("orders", 0)
        .map(|r| r.map(|r| r.offset))
        .collect::<std::io::Result<_>>()
        .unwrap();
    assert_eq!(all, (0..2000).collect::<Vec<_>>());
    drop(wal);
    let again = tier.list("tier/orders").unwrap();
    assert!(again.len() >= listed.len());
    assert_eq!(
        &again[..listed.len()],
        &listed[..],
        "objects changed or were stored twice"
    );
}

/// S3 down (moto frozen) under a tiered instance: a read of tiered offsets fails within the
/// tier's deadline, local offsets, appends and other topics go on; thawed, the same read
/// succeeds and the uploads resume.
#[test]
fn a_frozen_s3_fails_tiered_reads_in_time_and_nothing_else() {
    use walrus::{FsyncSchedule, Retention, Tiering, WalrusBuilder};

    let server = MotoServer::start().expect("moto_server");
    let store = server.store("tier").unwrap();
    let tier: Arc<dyn RemoteTier> =
        Arc::new(S3Tier::with_timeout(store, "frozen", Duration::from_millis(800)).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let wal = WalrusBuilder::new()
        .data_dir(dir.path())
        .block_len(16 * 1024)
        .fsync_schedule(FsyncSchedule::Milliseconds(5))
        .tier(Arc::clone(&tier), "tier")
        .topic_tiering(
            "orders",
            Tiering::keeping(Retention::unlimited().with_max_bytes(16 * 1024)),
        )
        .quiet(true)
        .build()
        .unwrap();
    let entry = |i: u64| format!("order-{i:06}-{}", "y".repeat((i % 200) as usize)).into_bytes();
    for i in 0..3000 {
        wal.append_for_topic("orders", &entry(i)).unwrap();
        wal.append_for_topic("local", &entry(i)).unwrap();
    }
    wal.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while wal
        .stats()
        .topics
        .iter()
        .find(|t| t.name == "orders")
        .map_or(0, |t| t.blocks)
        > 4
    {
        assert!(
            Instant::now() < deadline,
            "the uploaded blocks never left the disk"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Cold offsets (not in the read cache): offset 10 was never read.
    server.pause().unwrap();
    let started = Instant::now();
    let e = wal.read_at("orders", 10).unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    assert!(e.to_string().contains("orders"), "{e}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let started = Instant::now();
    assert_eq!(
        wal.read_at("orders", 2999).unwrap().map(|e| e.data),
        Some(entry(2999))
    );
    assert_eq!(
        wal.read_at("local", 10).unwrap().map(|e| e.data),
        Some(entry(10))
    );
    for i in 3000..3100 {
        wal.append_for_topic("orders", &entry(i)).unwrap();
    }
    wal.flush().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    server.resume().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Right after the thaw a read may still meet the catalogue's one-second back-off.
        match wal.read_at("orders", 10) {
            Ok(got) => {
                assert_eq!(got.map(|e| e.data), Some(entry(10)));
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(wal);
}

/// A GET's deadline grows with what it fetches, as a PUT's does: an object stored within the
/// PUT's deadline is read back within the GET's on the same link (8 MiB, a 1 s deadline per
/// request, a link that delivers it in 1.5 s).
#[test]
fn what_a_put_stored_in_time_a_get_reads_back_in_time() {
    use object_store::memory::InMemory;
    use object_store::throttle::{ThrottleConfig, ThrottledStore};
    let len: u64 = 8 << 20;
    let config = ThrottleConfig {
        wait_get_per_byte: Duration::from_nanos(1_500_000_000 / len),
        ..ThrottleConfig::default()
    };
    let store: Arc<dyn ObjectStore> = Arc::new(ThrottledStore::new(InMemory::new(), config));
    let tier = S3Tier::with_timeout(store, "slow", Duration::from_secs(1)).unwrap();
    let data = vec![7u8; len as usize];
    tier.put_new("t/big", &data, &Metadata::new()).unwrap();
    let started = Instant::now();
    let got = tier.get_range("t/big", 0..len).unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the link was slow"
    );
    assert_eq!(got.len() as u64, len);
}
