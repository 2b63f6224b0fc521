//! Tiering under `kill -9`: a child process appends with `SyncEach` to a topic tiered into a
//! real S3-compatible server (moto on 127.0.0.1) while its tier thread uploads and releases
//! blocks (16 KiB kept locally), and reports each acknowledged offset; the parent kills it
//! with SIGKILL at a random moment, reopens the directory with the same tier and checks that
//! every acknowledged entry reads back (from the disk or from S3), that every index object in
//! S3 has its data object and names what it holds, and that nothing was uploaded twice.
//!
//! `WALRUS_TIER_KILLS=N` sets the number of kills (default 6).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use walrus::tier::RemoteTier;
use walrus::{FsyncSchedule, Retention, Tiering, Walrus};
use walrus_block::tier::TierIndex;
use walrus_io::SeededRng;
use walrus_io::conformance::{ACK, abort_on_panic, kill_nine_child};
use walrus_s3::S3Tier;
use walrus_s3::moto::MotoServer;

const TOPIC: &str = "killed";
const BUCKET: &str = "tier-kill";

fn payload(o: u64) -> Vec<u8> {
    let len = 16 + (o.wrapping_mul(2_654_435_761) % 700) as usize;
    let mut p = o.to_le_bytes().to_vec();
    let mut rng = SeededRng::new(o ^ 0x7157_0000);
    while p.len() < len {
        p.push(rng.next_u64() as u8);
    }
    p
}

fn open(dir: &Path, tier: Arc<dyn RemoteTier>) -> Walrus {
    Walrus::builder()
        .data_dir(dir)
        .fsync_schedule(FsyncSchedule::SyncEach)
        .segment_len(256 * 1024)
        .block_len(16 * 1024)
        .tier(tier, "t")
        .topic_tiering(
            TOPIC,
            Tiering::keeping(Retention::unlimited().with_max_bytes(16 * 1024)),
        )
        .quiet(true)
        .build()
        .expect("open")
}

fn tier_at(endpoint: &str) -> Arc<dyn RemoteTier> {
    let store = walrus_s3::moto::client(endpoint, BUCKET).expect("client");
    Arc::new(S3Tier::with_timeout(store, "kill", Duration::from_secs(5)).expect("tier"))
}

/// The child: appends until killed (two minutes at most: one that ends on its own fails the
/// parent's check that the kill landed); prints `A offset` after each acknowledged append,
/// after [`ACK`].
#[test]
#[ignore = "run by tier_kill_nine_loop as a child process"]
fn tier_crash_child() {
    let (Some(dir), Ok(endpoint)) = (
        std::env::var_os("WALRUS_TIER_CHILD_DIR"),
        std::env::var("WALRUS_TIER_CHILD_S3"),
    ) else {
        return;
    };
    abort_on_panic();
    let wal = open(Path::new(&dir), tier_at(&endpoint));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        let o = wal.end_offset(TOPIC).unwrap_or(0);
        assert_eq!(wal.append(TOPIC, &payload(o)).expect("append"), o);
        println!("{ACK} A {o}");
    }
}

#[test]
fn tier_kill_nine_loop() {
    let kills: u64 = std::env::var("WALRUS_TIER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let server = MotoServer::start().expect("moto_server");
    server.create_bucket(BUCKET).unwrap();
    let endpoint = server.endpoint();
    let tier = tier_at(&endpoint);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SeededRng::new(0x71E2_0009);
    let mut acked_end = 0u64;
    let mut released = false;
    let started = Instant::now();
    for kill in 0..kills {
        let delay = Duration::from_millis(300 + rng.below(700));
        let acks = kill_nine_child(
            "tier_crash_child",
            &[
                ("WALRUS_TIER_CHILD_DIR", dir.path().as_os_str()),
                ("WALRUS_TIER_CHILD_S3", endpoint.as_ref()),
            ],
            delay,
        );
        let before = acked_end;
        for line in acks {
            let o = line
                .strip_prefix("A ")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("kill {kill}: the child acknowledged {line:?}"));
            acked_end = acked_end.max(o + 1);
        }
        assert!(
            acked_end > before,
            "kill {kill}: no append acknowledged in this run"
        );

        // Every index object has its data object and says what its name says; one object per
        // name (S3 names are unique, so "twice" would be two names for one block: overlaps).
        let listed = tier.list("t/killed").unwrap();
        let keys: BTreeSet<&str> = listed.iter().map(|l| l.key.as_str()).collect();
        let mut covered = 0u64;
        for l in listed.iter().filter(|l| l.key.ends_with(".idx")) {
            let index = TierIndex::decode(&tier.get_range(&l.key, 0..l.size).unwrap()).unwrap();
            let (blk, idx) = index.object_names("t");
            assert_eq!(idx, l.key);
            assert!(
                keys.contains(blk.as_str()),
                "kill {kill}: {idx} without {blk}"
            );
            assert_eq!(
                index.first_offset, covered,
                "kill {kill}: {idx} overlaps or leaves a hole"
            );
            covered = index.end_offset();
        }

        let wal = open(dir.path(), Arc::clone(&tier));
        let end = wal.end_offset(TOPIC).unwrap_or(0);
        assert!(
            end >= acked_end,
            "kill {kill}: acknowledged entries lost: end {end} < {acked_end}"
        );
        // The reopened instance's tier thread releases again what recovery kept (it releases
        // only what is consumed and tiered) beyond the 16 KiB of local retention.
        let local = |wal: &Walrus| {
            wal.stats()
                .topics
                .into_iter()
                .find(|t| t.name == TOPIC)
                .map_or(0, |t| t.blocks)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while covered > 0 && local(&wal) >= 8 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "kill {kill}: end {end}, tiered through {covered}, {} local blocks",
            local(&wal)
        );
        released |= covered > 0 && local(&wal) < 8;
        for o in 0..end {
            let got = wal
                .read_at(TOPIC, o)
                .unwrap_or_else(|e| panic!("kill {kill} @{o}: {e}"))
                .unwrap_or_else(|| panic!("kill {kill}: offset {o} missing below end {end}"));
            assert_eq!(
                got.data,
                payload(o),
                "kill {kill}: offset {o} is not what was written"
            );
        }
        acked_end = end;
        drop(wal);
    }
    assert!(released, "no run got as far as releasing uploaded blocks");
    eprintln!(
        "tier kill -9 loop: {kills} kills in {:.1?}, {acked_end} entries",
        started.elapsed()
    );
}
