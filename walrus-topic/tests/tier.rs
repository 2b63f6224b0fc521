//! Uploads to the remote tier, on the simulated disk and the in-memory tier: what is uploaded
//! (sealed, durable blocks of tiered topics, as valid tiered-block objects), that a pass is
//! idempotent, that a failure or a crash at any step of an upload loses nothing and stores
//! nothing twice under different names, that a remote that is down or slow holds up nothing
//! but the uploads, and that a conflicting object is refused, never replaced.

use std::collections::BTreeMap;
use std::io::{self, ErrorKind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use walrus_block::tier::TierIndex;
use walrus_block::{Frame, FrameDecoder};
use walrus_io::hooked::{Hooked, Op};
use walrus_io::tier::{Metadata, TierOp};
use walrus_io::{CrashMode, MemoryTier, RemoteTier, SimStorage, Storage};
use walrus_topic::{Engine, Retention, Store, StoreOptions, SyncPolicy, Tiering};

const DIR: &str = "/wal";

/// 8 KiB blocks, 64 KiB segments, "orders" tiered into `tier` under `tier-dir`.
fn options(tier: &MemoryTier) -> StoreOptions {
    StoreOptions::new()
        .with_block_len(8192)
        .with_segment_len(64 * 1024)
        .with_tier(Arc::new(tier.clone()), "tier-dir")
        .with_topic_tiering("orders", Tiering::default())
}

fn open(sim: &SimStorage, options: StoreOptions) -> io::Result<Store> {
    Store::open(DIR, Arc::new(sim.clone()) as Arc<dyn Storage>, options)
}

fn payload(i: u64) -> Vec<u8> {
    let len = 100 + (i * 37 % 400) as usize;
    (0..len).map(|k| (i as usize * 31 + k) as u8).collect()
}

/// An engine over `sim` tiering into `tier` (see [`options`]), syncing every 5 ms.
fn engine_every_5ms(sim: &SimStorage, tier: &MemoryTier) -> Engine {
    Engine::open(
        DIR,
        Arc::new(sim.clone()) as Arc<dyn Storage>,
        options(tier),
        SyncPolicy::Every(Duration::from_millis(5)),
    )
    .unwrap()
}

/// Waits, at most 20 s, until `tier` has been called `n` times with `op`.
fn wait_for_calls(tier: &MemoryTier, op: TierOp, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tier.calls(op) < n {
        assert!(
            Instant::now() < deadline,
            "no {op:?} call from the tier thread"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How long dropping `engine` (its close) takes.
fn close_time(engine: Engine) -> Duration {
    let started = Instant::now();
    drop(engine);
    started.elapsed()
}

/// Appends entries `0..n` to `orders` and syncs them.
fn fill(store: &Store, n: u64) {
    for i in 0..n {
        store.append("orders", &payload(i)).unwrap();
    }
    store.sync().unwrap();
}

/// Every entry the tier holds for `topic`, by offset, read back through the index objects (each
/// checked against its name and data object) — what a reader of the tier would get.
fn tiered_entries(tier: &MemoryTier, topic_dir: &str) -> BTreeMap<u64, Vec<u8>> {
    let mut out = BTreeMap::new();
    for listed in tier.list(topic_dir).unwrap() {
        let Some(base) = listed.key.strip_suffix(".idx") else {
            continue;
        };
        let index = TierIndex::decode(&tier.object(&listed.key).unwrap()).unwrap();
        let (blk, idx) = index.object_names("tier-dir");
        assert_eq!(
            (idx.as_str(), blk.as_str()),
            (listed.key.as_str(), &*format!("{base}.blk"))
        );
        let data = tier.object(&blk).expect("an index without its data object");
        assert_eq!(data.len() as u64, index.data_len);
        assert_eq!(walrus_block::checksum::crc32c(&data), index.data_crc);
        let mut n = 0;
        for f in FrameDecoder::new(&data, 0) {
            match f {
                Frame::Entry(e) => {
                    assert!(
                        out.insert(e.offset, e.payload.to_vec()).is_none(),
                        "offset {} twice",
                        e.offset
                    );
                    n += 1;
                }
                Frame::End { at } => assert_eq!(at, data.len()),
                other => panic!("{blk}: {other:?}"),
            }
        }
        assert_eq!(n, index.entries);
    }
    out
}

fn keys_by_kind(tier: &MemoryTier) -> (usize, usize) {
    let keys = tier.keys();
    (
        keys.iter().filter(|k| k.ends_with(".blk")).count(),
        keys.iter().filter(|k| k.ends_with(".idx")).count(),
    )
}

#[test]
fn sealed_durable_blocks_of_tiered_topics_are_uploaded_once() {
    let sim = SimStorage::new(1);
    let tier = MemoryTier::new();
    let store = open(&sim, options(&tier)).unwrap();
    for i in 0..300 {
        store.append("orders", &payload(i)).unwrap();
        store.append("other", &payload(i)).unwrap();
    }
    // Nothing durable yet: nothing uploaded.
    assert_eq!(store.tier_pass().unwrap().uploaded, 0);
    assert!(tier.keys().is_empty());
    store.sync().unwrap();
    let pass = store.tier_pass().unwrap();
    let blocks = store.retained_blocks("orders").unwrap() as u64;
    assert!(pass.uploaded >= 3, "{pass:?}");
    // Every sealed block; the block being written stays local only.
    assert_eq!(pass.uploaded, blocks - 1, "{pass:?}");
    assert_eq!(pass.resumed, 0);
    let got = tiered_entries(&tier, "tier-dir/orders");
    let end = *got.keys().last().unwrap() + 1;
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (0..end).collect::<Vec<_>>()
    );
    for (o, data) in &got {
        assert_eq!(data, &payload(*o), "offset {o}");
    }
    assert_eq!(
        keys_by_kind(&tier),
        (blocks as usize - 1, blocks as usize - 1)
    );
    assert!(
        tier.list("tier-dir/other").unwrap().is_empty(),
        "an untiered topic was uploaded"
    );
    // The objects carry what they hold as metadata.
    let first = tier.list("tier-dir/orders").unwrap()[0].key.clone();
    let meta = tier.head(&first).unwrap().unwrap().meta;
    assert_eq!(meta["walrus-topic"], "orders");
    assert!(meta["walrus-offsets"].starts_with("0-"), "{meta:?}");

    // Idempotent: a second pass stores nothing, not even a PUT.
    let puts = tier.calls(TierOp::Put);
    assert_eq!(store.tier_pass().unwrap().uploaded, 0);
    assert_eq!(tier.calls(TierOp::Put), puts);
    let stats = store.stats();
    let orders = stats.topics.iter().find(|t| t.name == "orders").unwrap();
    assert_eq!(orders.tiered_entries, end);
    assert_eq!(orders.tiered, Some(0..end));

    // After a reopen the catalogue comes back from the remote's listing: nothing re-uploaded.
    drop(store);
    let store = open(&sim, options(&tier)).unwrap();
    let pass = store.tier_pass().unwrap();
    assert_eq!(pass.uploaded, 0);
    assert_eq!(tier.calls(TierOp::Put), puts);
    let stats = store.stats();
    let orders = stats.topics.iter().find(|t| t.name == "orders").unwrap();
    assert_eq!(orders.tiered, Some(0..end));
    // More appends: the next blocks follow.
    for i in 300..400 {
        store.append("orders", &payload(i)).unwrap();
    }
    store.sync().unwrap();
    assert!(store.tier_pass().unwrap().uploaded > 0);
    let got = tiered_entries(&tier, "tier-dir/orders");
    assert!(*got.keys().last().unwrap() >= end);
    assert_eq!(
        got.len() as u64,
        got.keys().last().unwrap() + 1,
        "a hole in the tier"
    );
}

/// Fails the `n`th PUT, or loses its answer, then crashes the disk and reopens: the next
/// passes finish the upload under the same names, nothing twice, nothing missing.
#[test]
fn a_failure_or_crash_at_any_step_of_an_upload_loses_nothing_and_duplicates_nothing() {
    // The reference run: which objects a clean upload stores.
    let reference = {
        let sim = SimStorage::new(7);
        let tier = MemoryTier::new();
        let store = open(&sim, options(&tier)).unwrap();
        fill(&store, 200);
        store.tier_pass().unwrap();
        tier.keys()
    };
    let puts = reference.len() as u32;
    assert!(puts >= 6, "{reference:?}");
    for n in 0..puts {
        for lose_answer in [false, true] {
            let sim = SimStorage::new(7);
            let tier = MemoryTier::new();
            {
                let store = open(&sim, options(&tier)).unwrap();
                fill(&store, 200);
                // PUT number n + 1 fails: before storing anything, or after (answer lost).
                tier.fail_put_after(n, lose_answer);
                let e = store
                    .tier_pass()
                    .expect_err(&format!("PUT {} did not fail the pass", n + 1));
                assert!(e.to_string().contains("orders"), "{e}");
                assert!(tier.keys().len() <= reference.len());
            }
            // The machine dies (what was not synced is gone) and comes back.
            sim.crash(CrashMode::DropUnsynced);
            let store = open(&sim, options(&tier)).unwrap();
            let pass = store.tier_pass().unwrap();
            // PUTs go data, index, data, index…: a data object whose answer was lost is found
            // and checked, not stored again (its index was never written).
            if lose_answer && n % 2 == 0 {
                assert_eq!(pass.resumed, 1, "PUT {}: {pass:?}", n + 1);
            }
            assert_eq!(
                tier.keys(),
                reference,
                "PUT {} failed (answer lost: {lose_answer})",
                n + 1
            );
            let got = tiered_entries(&tier, "tier-dir/orders");
            for (o, data) in &got {
                assert_eq!(data, &payload(*o));
            }
        }
    }
}

#[test]
fn a_down_or_slow_remote_holds_up_only_the_uploads() {
    let sim = SimStorage::new(3);
    let tier = MemoryTier::new();
    let store = open(&sim, options(&tier)).unwrap();
    fill(&store, 200);
    tier.set_down(true);
    let e = store.tier_pass().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    assert!(e.to_string().contains("orders"), "{e}");
    // The store carries on: appends, syncs, reads.
    for i in 200..300 {
        store.append("orders", &payload(i)).unwrap();
    }
    store.sync().unwrap();
    assert_eq!(store.read_at("orders", 5).unwrap(), Some(payload(5)));
    tier.set_down(false);
    assert!(store.tier_pass().unwrap().uploaded > 0);
    drop(store);

    // An engine's tier thread uploads by itself; a stalled remote delays neither synced
    // appends nor the close beyond one call's delay.
    let sim = SimStorage::new(4);
    let tier = MemoryTier::new();
    let engine = Engine::open(
        DIR,
        Arc::new(sim.clone()) as Arc<dyn Storage>,
        options(&tier),
        SyncPolicy::Each,
    )
    .unwrap();
    for i in 0..200 {
        engine.append("orders", &payload(i)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while keys_by_kind(&tier).1 < 3 {
        assert!(
            Instant::now() < deadline,
            "the tier thread uploaded nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    tier.set_delay(Duration::from_millis(1500));
    let started = Instant::now();
    for i in 200..400 {
        engine.append("orders", &payload(i)).unwrap();
    }
    let appends = started.elapsed();
    assert!(
        appends < Duration::from_millis(1400),
        "synced appends waited for the remote: {appends:?}"
    );
    drop(engine);
}

#[test]
fn an_object_that_differs_from_its_block_is_refused_not_replaced() {
    let sim = SimStorage::new(5);
    let tier = MemoryTier::new();
    let store = open(&sim, options(&tier)).unwrap();
    fill(&store, 100);
    // Another writer's object under the first block's name.
    let clean = {
        let sim = SimStorage::new(5);
        let other = MemoryTier::new();
        let s = open(&sim, options(&other)).unwrap();
        fill(&s, 100);
        s.tier_pass().unwrap();
        other.keys()
    };
    let first_blk = clean.iter().find(|k| k.ends_with(".blk")).unwrap().clone();
    tier.put_new(&first_blk, b"not this block", &Metadata::new())
        .unwrap();
    let e = store.tier_pass().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains(&first_blk), "{e}");
    assert_eq!(tier.object(&first_blk).unwrap(), b"not this block");
    assert_eq!(
        keys_by_kind(&tier),
        (1, 0),
        "nothing was committed past the conflict"
    );
}

#[test]
fn tiering_needs_a_tier_and_a_valid_directory() {
    let sim = SimStorage::new(6);
    let no_tier = StoreOptions::new().with_tiering(Tiering::keeping(Retention::unlimited()));
    assert_eq!(
        open(&sim, no_tier).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let tier = Arc::new(MemoryTier::new());
    for dir in ["", "a//b", "/a", &"d".repeat(200)] {
        let bad = StoreOptions::new().with_tier(tier.clone(), dir);
        assert_eq!(
            open(&sim, bad).unwrap_err().kind(),
            ErrorKind::InvalidInput,
            "{dir:?}"
        );
    }
    // A local age under the millisecond ages are counted in: every uploaded block at once.
    let instant = StoreOptions::new()
        .with_tier(tier.clone(), "d")
        .with_tiering(Tiering::keeping(
            Retention::unlimited().with_max_age(Duration::from_micros(999)),
        ));
    assert_eq!(
        open(&sim, instant).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert!(sim.files().is_empty(), "a refused open created files");
}

/// "orders" tiered keeping at most 16 KiB of uploaded blocks locally.
fn bounded(tier: &MemoryTier) -> StoreOptions {
    StoreOptions::new()
        .with_block_len(8192)
        .with_segment_len(64 * 1024)
        .with_tier(Arc::new(tier.clone()), "tier-dir")
        .with_topic_tiering(
            "orders",
            Tiering::keeping(Retention::unlimited().with_max_bytes(16 * 1024)),
        )
}

fn segment_files(sim: &SimStorage) -> usize {
    sim.files()
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wseg"))
        .count()
}

/// `read_at` returns entries `0..n` of `orders`.
fn assert_read_at(store: &Store, n: u64) {
    for o in 0..n {
        assert_eq!(
            store.read_at("orders", o).unwrap(),
            Some(payload(o)),
            "read_at {o}"
        );
    }
}

/// Every way of reading `orders` returns exactly entries `0..n`, wherever they live.
fn check_reads(store: &Store, n: u64, consumer: &str) {
    assert_read_at(store, n);
    assert_eq!(store.read_at("orders", n).unwrap(), None);
    // A new consumer starts at the oldest entry, in the tier.
    let mut next = 0;
    for _ in 0..10 * n {
        match store.read_next_as("orders", consumer, true).unwrap() {
            Some((o, data)) => {
                assert_eq!((o, &data), (next, &payload(next)));
                next += 1;
            }
            None => break,
        }
    }
    assert_eq!(next, n, "the consumer stopped early");
    // Scans of 37 entries across the boundary between the tier and the local disk.
    let mut from = 0;
    while from < n {
        let mut got = Vec::new();
        let next = store
            .scan("orders", from, 37, |o, data| got.push((o, data.to_vec())))
            .unwrap();
        assert!(!got.is_empty(), "an empty scan at {from}");
        for (o, data) in &got {
            assert_eq!((*o, data), (from, &payload(from)));
            from += 1;
        }
        assert_eq!(next, from);
    }
    // The iterator.
    let all: Vec<(u64, Vec<u8>)> = store.iter("orders", 0).collect::<io::Result<_>>().unwrap();
    assert_eq!(all.len() as u64, n);
    assert!(all.iter().all(|(o, d)| d == &payload(*o)));
}

#[test]
fn uploaded_blocks_leave_the_local_disk_and_are_read_back_from_the_tier() {
    let sim = SimStorage::new(11);
    let tier = MemoryTier::new();
    let n = 600;
    {
        let store = open(&sim, bounded(&tier)).unwrap();
        fill(&store, n);
        let before = store.retained_blocks("orders").unwrap();
        let files_before = segment_files(&sim);
        store.tier_pass().unwrap();
        store.maintain().unwrap();
        let after = store.retained_blocks("orders").unwrap();
        // 16 KiB of 8 KiB blocks and the one being written.
        assert!(after <= 4, "{before} blocks before, {after} after");
        assert!(
            segment_files(&sim) < files_before,
            "no segment left the disk"
        );
        assert_eq!(store.first_retained_offset("orders"), Some(0));
        let gets = tier.calls(TierOp::Get);
        check_reads(&store, n, "before");
        assert!(
            tier.calls(TierOp::Get) > gets,
            "nothing was read from the tier"
        );
        // Sequential reads are served by ranged GETs of many entries, not one per entry.
        let per_entry = tier.calls(TierOp::Get) - gets;
        assert!(per_entry < n, "{per_entry} GETs for 3 × {n} reads");
    }
    // A crash, then a reopen: the catalogue comes back from the tier, and with it every entry.
    sim.crash(CrashMode::DropUnsynced);
    let store = open(&sim, bounded(&tier)).unwrap();
    assert_eq!(store.first_retained_offset("orders"), Some(0));
    check_reads(&store, n, "after");
    // The consumer of the first run resumes where it stopped.
    assert_eq!(store.cursor_as("orders", "before"), Some(n));
}

/// Blocks released from the local disk after their upload leave a gap in the local chain when
/// some of their segments survive (another topic's block keeps one) and others are deleted;
/// the durable watermark on disk (written at most every mark interval) may not cover the gap
/// yet. After a power cut recovery takes the tier mark for a watermark too: the gap is released
/// history, never a torn tail that erases the synced blocks after it.
#[test]
fn a_gap_left_by_uploaded_blocks_is_not_taken_for_a_torn_tail() {
    let sim = SimStorage::new(41);
    let tier = MemoryTier::new();
    let options = bounded(&tier)
        .with_lanes(1)
        .with_mark_interval(Duration::from_secs(3600));
    let n = 600;
    {
        let store = open(&sim, options.clone()).unwrap();
        // Shares the first segment with the first blocks of "orders", and keeps it.
        store.append("keep", b"x").unwrap();
        fill(&store, n);
        let files = segment_files(&sim);
        store.tier_pass().unwrap();
        store.maintain().unwrap();
        assert!(segment_files(&sim) < files, "no segment left the disk");
        assert!(store.retained_blocks("orders").unwrap() <= 4);
        // The power goes before the store closes (a close writes the watermarks).
        sim.crash(CrashMode::DropUnsynced);
    }
    let store = open(&sim, options.clone()).unwrap();
    let report = store.recovery_report();
    assert!(
        report
            .issues
            .iter()
            .all(|i| i.topic != "orders" || i.action != walrus_topic::Action::Cut),
        "{report:?}"
    );
    assert_read_at(&store, n);
    assert_eq!(store.read_at("keep", 0).unwrap(), Some(b"x".to_vec()));
    // Nor is it damage to report: the strictest mode opens the directory after a clean close.
    drop(store);
    let strict = options.with_recovery(walrus_topic::RecoveryMode::AbsoluteConsistency);
    let store = open(&sim, strict).unwrap();
    assert!(
        store.recovery_report().issues.is_empty(),
        "{:?}",
        store.recovery_report()
    );
    assert_read_at(&store, n);
}

/// `n` entries of "orders" tiered and released from the disk but for its last blocks; the
/// tiered blocks by first offset (with their entry counts), and the store reopened with an
/// empty read cache and its catalogue loaded (by a read of a block in the middle, which only
/// the tier holds), so that each further read of the tier's first blocks is one GET.
fn tiered_and_reopened(
    sim: &SimStorage,
    tier: &MemoryTier,
    n: u64,
) -> (Vec<(u64, u64)>, Arc<Store>) {
    {
        let store = open(sim, bounded(tier)).unwrap();
        fill(&store, n);
        store.tier_pass().unwrap();
        store.maintain().unwrap();
    }
    let blocks = tiered_blocks(tier);
    assert!(blocks.len() >= 3, "{blocks:?}");
    let store = Arc::new(open(sim, bounded(tier)).unwrap());
    let (middle, _) = blocks[blocks.len() / 2];
    let gets = tier.calls(TierOp::Get);
    assert_eq!(
        store.read_at("orders", middle).unwrap(),
        Some(payload(middle))
    );
    assert!(
        tier.calls(TierOp::Get) > gets,
        "block {middle} was not read from the tier"
    );
    (blocks, store)
}

/// A batch read: offsets with their entries.
type Batch = Vec<(u64, Vec<u8>)>;

/// Starts a consuming batch read of "orders" by "c" whose first GET takes 300 ms, and returns
/// once that GET is under way (later calls are fast again).
fn slow_first_read(
    store: &Arc<Store>,
    tier: &MemoryTier,
) -> std::thread::JoinHandle<io::Result<Batch>> {
    tier.set_delay(Duration::from_millis(300));
    let gets = tier.calls(TierOp::Get);
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || store.read_batch_as("orders", "c", usize::MAX, true))
    };
    wait_for_calls(tier, TierOp::Get, gets + 1);
    tier.set_delay(Duration::ZERO);
    reader
}

/// The blocks the tier holds, by first offset, with their entry counts.
fn tiered_blocks(tier: &MemoryTier) -> Vec<(u64, u64)> {
    let mut blocks: Vec<(u64, u64)> = tier
        .keys()
        .iter()
        .filter(|k| k.ends_with(".idx"))
        .map(|k| {
            let index = TierIndex::decode(&tier.object(k).unwrap()).unwrap();
            (index.first_offset, index.entries)
        })
        .collect();
    blocks.sort_unstable();
    blocks
}

/// Damage to the last entries of a block still on the local disk, below the tier mark, is
/// damage, whatever the tier holds: only a clean gap between blocks is released history.
#[test]
fn damage_below_the_tier_mark_is_still_reported() {
    let sim = SimStorage::new(50);
    let tier = MemoryTier::new();
    let n = 600;
    let retained = {
        let store = open(&sim, bounded(&tier)).unwrap();
        fill(&store, n);
        store.tier_pass().unwrap();
        store.maintain().unwrap();
        store.retained_blocks("orders").unwrap()
    };
    assert!(retained >= 2, "{retained} blocks on the disk");
    let blocks = tiered_blocks(&tier);
    // The first sealed block still on the disk (the live one is not tiered), and its last
    // entry, whose payload gets a byte flipped.
    let (first, entries) = blocks[blocks.len() - (retained - 1)];
    let victim = first + entries - 1;
    let needle = payload(victim);
    let hit = sim.files().into_iter().find_map(|path| {
        let bytes = sim.contents(&path).ok()?;
        let at = bytes.windows(needle.len()).position(|w| w == needle)?;
        Some((path, at))
    });
    let (path, at) = hit.expect("the entry is on the disk");
    // A byte of its frame header: the block's frames end there (trailing damage).
    let file = sim.open(&path).unwrap();
    let mut byte = [0u8];
    let pos = at as u64 - 8;
    file.read_exact_at(&mut byte, pos).unwrap();
    file.write_at(&[byte[0] ^ 0x40], pos).unwrap();
    file.sync_data().unwrap();
    drop(file);
    let strict = bounded(&tier).with_recovery(walrus_topic::RecoveryMode::AbsoluteConsistency);
    let refused = open(&sim, strict).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::InvalidData, "{refused}");
    let store = open(&sim, bounded(&tier)).unwrap();
    let issues = &store.recovery_report().issues;
    assert!(issues.iter().any(|i| i.topic == "orders"), "{issues:?}");
}

/// A floor raised while a consuming read fetches tiered entries (retention, `release_before`)
/// ends that read where the floor passed it: the next read goes on from the floor, counting
/// the skip, and hands out every entry from there on, also when a tiered block holds the floor
/// (it stepped to the next tiered block, and lost the rest of that one uncounted).
#[test]
fn a_floor_raised_under_a_tiered_read_skips_nothing_above_it() {
    let sim = SimStorage::new(47);
    let tier = MemoryTier::new();
    let n = 600;
    let (blocks, store) = tiered_and_reopened(&sim, &tier, n);
    // The floor goes inside the second block.
    let (second, entries) = blocks[1];
    let floor = second + entries / 2;
    let reader = slow_first_read(&store, &tier);
    assert!(store.release_before("orders", floor).unwrap());
    let first = reader.join().unwrap().unwrap();
    let last = first.last().map(|e| e.0);
    assert_eq!(
        last,
        Some(second - 1),
        "the first read went past the floor's block"
    );
    let next = store
        .read_batch_as("orders", "c", usize::MAX, true)
        .unwrap();
    assert_eq!(
        next.first().map(|e| e.0),
        Some(floor),
        "entries above the floor skipped"
    );
    let c = store
        .consumers("orders")
        .into_iter()
        .find(|c| c.name == "c");
    assert_eq!(c.map(|c| c.skipped), Some(floor - second));
    let mut offsets: Vec<u64> = first.iter().chain(&next).map(|e| e.0).collect();
    while let Some(&(o, _)) = store
        .read_batch_as("orders", "c", usize::MAX, true)
        .unwrap()
        .last()
    {
        offsets.push(o);
        assert!(offsets.len() <= n as usize, "the reads never ended");
    }
    assert_eq!(offsets.last(), Some(&(n - 1)));
}

/// A tiered block released and expired (its objects deleted) while a read's GET of it runs:
/// the read answers as for entries released (it goes on from the floor), not with lost data.
#[test]
fn a_tiered_read_racing_an_expiry_answers_released_not_lost() {
    let sim = SimStorage::new(48);
    let tier = MemoryTier::new();
    let (blocks, store) = tiered_and_reopened(&sim, &tier, 600);
    let (second, _) = blocks[1];
    let reader = slow_first_read(&store, &tier);
    assert!(store.release_before("orders", second).unwrap());
    let deletes = tier.calls(TierOp::Delete);
    store.tier_pass().unwrap();
    assert!(
        tier.calls(TierOp::Delete) > deletes,
        "the first block did not expire"
    );
    let read = reader.join().unwrap().unwrap();
    assert_eq!(
        read.first().map(|e| e.0),
        Some(second),
        "{:?}",
        read.first()
    );
}

#[test]
fn nothing_leaves_the_local_disk_before_its_upload_is_confirmed() {
    let sim = SimStorage::new(12);
    let tier = MemoryTier::new();
    let n = 400;
    {
        let store = open(&sim, bounded(&tier)).unwrap();
        fill(&store, n);
        // Consumed entirely while the tier is down: consumption releases nothing.
        for _ in 0..n {
            store.read_next("orders", true).unwrap().unwrap();
        }
        tier.set_down(true);
        assert!(store.tier_pass().is_err());
        store.maintain().unwrap();
        let blocks = store.retained_blocks("orders").unwrap();
        assert!(blocks > 10, "{blocks} blocks kept");
        store.persist_cursors().unwrap();
        store.sync().unwrap();
    }
    // Recovery does not release them either, though the cursor is past them.
    sim.crash(CrashMode::DropUnsynced);
    let store = open(&sim, bounded(&tier)).unwrap();
    assert_eq!(store.read_at("orders", 0).unwrap(), Some(payload(0)));
    assert!(store.retained_blocks("orders").unwrap() > 10);
    tier.set_down(false);
    store.tier_pass().unwrap();
    assert!(store.retained_blocks("orders").unwrap() <= 4);
    assert_read_at(&store, n);
    // The default consumer consumed all of it: nothing more to read.
    assert_eq!(store.read_next("orders", true).unwrap(), None);
}

#[test]
fn a_failing_remote_fails_the_tiered_read_only() {
    let sim = SimStorage::new(13);
    let tier = MemoryTier::new();
    let store = Arc::new(open(&sim, bounded(&tier)).unwrap());
    for i in 0..300 {
        store.append("orders", &payload(i)).unwrap();
        store.append("local", &payload(i)).unwrap();
    }
    store.sync().unwrap();
    store.tier_pass().unwrap();
    tier.set_down(true);
    let e = store.read_at("orders", 3).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    assert!(
        e.to_string().contains("orders") && e.to_string().contains('3'),
        "{e}"
    );
    let e = store.read_next_as("orders", "c", true).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    // The local part of the topic and the other topics read on.
    assert_eq!(store.read_at("orders", 299).unwrap(), Some(payload(299)));
    assert_eq!(store.read_at("local", 3).unwrap(), Some(payload(3)));
    tier.set_down(false);
    assert_eq!(store.read_at("orders", 3).unwrap(), Some(payload(3)));
    // A slow remote holds up the reader that waits for it, not the others.
    tier.set_delay(Duration::from_millis(1500));
    let slow = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || store.read_at("orders", 200))
    };
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    for o in 0..300 {
        assert_eq!(store.read_at("local", o).unwrap(), Some(payload(o)));
    }
    store.append("orders", b"more").unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(slow.join().unwrap().unwrap(), Some(payload(200)));
    tier.set_delay(Duration::ZERO);

    // Damage in the remote is an error on the read, never a wrong entry.
    let key = tier
        .keys()
        .into_iter()
        .find(|k| k.ends_with(".blk"))
        .unwrap();
    let mut bytes = tier.object(&key).unwrap();
    bytes[40] ^= 1;
    assert!(tier.overwrite(&key, &bytes));
    let store = open_again(&sim, &tier, store);
    let e = store.read_at("orders", 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains(&key), "{e}");
    // A data object shorter than its index says, or gone, is lost data as well: not entries
    // released (`NotFound`), which a reader would commit past.
    let index = TierIndex::decode(&tier.object(&key.replace(".blk", ".idx")).unwrap()).unwrap();
    let last = index.first_offset + index.entries - 1;
    assert!(tier.overwrite(&key, &bytes[..bytes.len() / 2]));
    let mut store = open_again(&sim, &tier, Arc::new(store));
    for lost in [false, true] {
        if lost {
            tier.delete(&key).unwrap();
            store = open_again(&sim, &tier, Arc::new(store));
        }
        let e = store.read_at("orders", last).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains(&key), "{e}");
    }
}

/// Closes `store` and opens the directory again (an empty read cache).
fn open_again(sim: &SimStorage, tier: &MemoryTier, store: Arc<Store>) -> Store {
    drop(Arc::into_inner(store).expect("the store is still shared"));
    open(sim, bounded(tier)).unwrap()
}

/// Bytes the tier holds for `orders` (data objects).
fn tiered_bytes(tier: &MemoryTier) -> u64 {
    tier.list("tier-dir/orders")
        .unwrap()
        .iter()
        .filter(|l| l.key.ends_with(".blk"))
        .map(|l| l.size)
        .sum()
}

#[test]
fn retention_of_a_tiered_topic_counts_the_tier_and_deletes_expired_objects() {
    let sim = SimStorage::new(14);
    let tier = MemoryTier::new();
    let limit = 64 * 1024;
    let options =
        bounded(&tier).with_topic_retention("orders", Retention::unlimited().with_max_bytes(limit));
    let n = 1200;
    {
        let store = open(&sim, options.clone()).unwrap();
        let mut expired = 0;
        for i in 0..n {
            store.append("orders", &payload(i)).unwrap();
            if i % 100 == 99 {
                store.sync().unwrap();
                expired += store.tier_pass().unwrap().expired;
                store.maintain().unwrap();
            }
        }
        store.sync().unwrap();
        expired += store.tier_pass().unwrap().expired;
        store.maintain().unwrap();
        expired += store.tier_pass().unwrap().expired;
        assert!(expired > 0, "nothing expired in the tier");
        // Local and tiered together within the limit (plus the newest block, kept whole), far
        // below what was appended.
        let floor = store.first_retained_offset("orders").unwrap();
        assert!(floor > 0, "nothing expired");
        assert!(
            tiered_bytes(&tier) <= limit + 8192,
            "{} bytes tiered",
            tiered_bytes(&tier)
        );
        // Below the floor: gone for every reader, locally and in the tier.
        let e = store.read_at("orders", floor - 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        for o in floor..n {
            assert_eq!(
                store.read_at("orders", o).unwrap(),
                Some(payload(o)),
                "read_at {o}"
            );
        }
        // No tiered block lies wholly below the floor.
        for l in tier.list("tier-dir/orders").unwrap() {
            if l.key.ends_with(".idx") {
                let index = TierIndex::decode(&tier.object(&l.key).unwrap()).unwrap();
                assert!(index.end_offset() > floor, "{} is expired", l.key);
            }
        }
    }
    // Reopened: the same floor, every entry above it.
    sim.crash(CrashMode::DropUnsynced);
    let store = open(&sim, options).unwrap();
    let floor = store.first_retained_offset("orders").unwrap();
    assert!(floor > 0);
    for o in floor..n {
        assert_eq!(
            store.read_at("orders", o).unwrap(),
            Some(payload(o)),
            "read_at {o}"
        );
    }
}

/// An expiry deletes tiered objects only below a floor that is durable: a power cut right
/// after it finds the floor where the expiry left it, and every entry above it readable.
#[test]
fn the_floor_is_durable_before_the_objects_below_it_are_deleted() {
    let sim = SimStorage::new(15);
    let tier = MemoryTier::new();
    let limit = 64 * 1024;
    let options =
        bounded(&tier).with_topic_retention("orders", Retention::unlimited().with_max_bytes(limit));
    let (before, after) = (600, 640);
    let floor = {
        let store = open(&sim, options.clone()).unwrap();
        for i in 0..before {
            store.append("orders", &payload(i)).unwrap();
            if i % 100 == 99 {
                store.sync().unwrap();
                store.tier_pass().unwrap();
                store.maintain().unwrap();
            }
        }
        store.sync().unwrap();
        store.tier_pass().unwrap();
        // Retention moves the floor within what only the tier holds (written, not synced); the
        // pass expires the objects below it; the power goes.
        for i in before..after {
            store.append("orders", &payload(i)).unwrap();
        }
        let segments = segment_files(&sim);
        store.maintain().unwrap();
        let floor = store.first_retained_offset("orders").unwrap();
        let pass = store.tier_pass().unwrap();
        // No segment went meanwhile (a deletion syncs the cursor file first, floor included):
        // only the expiry's own sync makes the floor durable.
        assert_eq!(segment_files(&sim), segments);
        assert!(pass.expired > 0, "nothing expired: {pass:?}");
        sim.crash(CrashMode::DropUnsynced);
        std::mem::forget(store);
        floor
    };
    let store = open(&sim, options).unwrap();
    let first = store.first_retained_offset("orders").unwrap();
    assert!(first >= floor.min(before), "floor {first}, was {floor}");
    let end = store.end_offset("orders").unwrap();
    assert!(end >= before, "synced entries lost: end {end}");
    for o in first..end {
        assert_eq!(
            store.read_at("orders", o).unwrap(),
            Some(payload(o)),
            "read_at {o} (floor {first}, was {floor})"
        );
    }
}

#[test]
fn age_retention_and_deletion_remove_a_tiered_topic_from_the_tier() {
    let sim = SimStorage::new(16);
    let tier = MemoryTier::new();
    let options = bounded(&tier).with_topic_retention(
        "orders",
        Retention::unlimited().with_max_age(Duration::from_millis(300)),
    );
    let store = open(&sim, options).unwrap();
    fill(&store, 400);
    store.tier_pass().unwrap();
    let uploaded = keys_by_kind(&tier).1;
    assert!(uploaded > 5);
    std::thread::sleep(Duration::from_millis(400));
    store.maintain().unwrap();
    let pass = store.tier_pass().unwrap();
    // Every sealed block is older than the limit: all but the newest went.
    assert!(
        pass.expired as usize >= uploaded - 1,
        "{pass:?} of {uploaded}"
    );
    assert!(keys_by_kind(&tier).1 <= 1);
    let (blk, idx) = keys_by_kind(&tier);
    assert_eq!(blk, idx, "an index without its data or the reverse");

    // A deleted topic's objects go with it; a crash in the middle of the deletes is finished
    // by the next pass.
    let tier2 = MemoryTier::new();
    let sim2 = SimStorage::new(17);
    {
        let store = open(&sim2, bounded(&tier2)).unwrap();
        fill(&store, 400);
        store.tier_pass().unwrap();
        assert!(keys_by_kind(&tier2).1 > 5);
        assert!(store.delete_topic("orders").unwrap());
        // An earlier expiry crashed after deleting one data object, before its index.
        let first_blk = tier2
            .keys()
            .into_iter()
            .find(|k| k.ends_with(".blk"))
            .unwrap();
        tier2.delete(&first_blk).unwrap();
        tier2.fail_next(TierOp::Delete, 1);
        let e = store.tier_pass().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    }
    sim2.crash(CrashMode::DropUnsynced);
    let store = open(&sim2, bounded(&tier2)).unwrap();
    store.tier_pass().unwrap();
    assert!(tier2.keys().is_empty(), "{:?}", tier2.keys());
    assert_eq!(store.read_at("orders", 3).unwrap(), None);
}
/// Appends, syncs, tier passes and readers at once: every entry a reader gets is the one
/// appended at its offset, wherever it was read from, while blocks leave the disk under the
/// readers; at the end every entry is readable.
#[test]
fn readers_see_every_entry_while_blocks_leave_the_disk_under_them() {
    let sim = SimStorage::new(15);
    let tier = MemoryTier::new();
    let store = Arc::new(open(&sim, bounded(&tier)).unwrap());
    let n = 1500u64;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        std::thread::spawn(move || {
            for i in 0..n {
                store.append("orders", &payload(i)).unwrap();
                if i % 50 == 49 {
                    store.sync().unwrap();
                }
            }
            store.sync().unwrap();
            done.store(true, std::sync::atomic::Ordering::Release);
        })
    };
    let tierer = {
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut passes = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) && passes < 100_000 {
                store.tier_pass().unwrap();
                passes += 1;
            }
            store.tier_pass().unwrap();
        })
    };
    let consumer = {
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut next = 0;
            for _ in 0..10_000_000u64 {
                match store.read_next_as("orders", "follower", true).unwrap() {
                    Some((o, data)) => {
                        assert_eq!(o, next);
                        assert_eq!(data, payload(o), "offset {o}");
                        next += 1;
                        if next == n {
                            break;
                        }
                    }
                    None if done.load(std::sync::atomic::Ordering::Acquire) && next == n => break,
                    None => std::thread::yield_now(),
                }
            }
            next
        })
    };
    let sampler = {
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut rng = walrus_io::SeededRng::new(9);
            let mut checked = 0u64;
            for _ in 0..100_000 {
                let end = store.end_offset("orders").unwrap_or(0);
                if end > 0 {
                    let o = rng.below(end);
                    assert_eq!(
                        store.read_at("orders", o).unwrap(),
                        Some(payload(o)),
                        "read_at {o}"
                    );
                    checked += 1;
                }
                if done.load(std::sync::atomic::Ordering::Acquire) {
                    break;
                }
            }
            checked
        })
    };
    writer.join().unwrap();
    tierer.join().unwrap();
    assert_eq!(consumer.join().unwrap(), n);
    assert!(sampler.join().unwrap() > 0);
    assert!(store.retained_blocks("orders").unwrap() <= 4);
    assert_read_at(&store, n);
}

/// Review findings, pinned: a reopen keeps what local retention keeps (it releases only what
/// is consumed *and* tiered); removing a consumer of a tiered topic raises no floor; another
/// store's objects under the same directory are refused, not taken for this topic's.
#[test]
fn reopens_consumer_removal_and_a_shared_directory_keep_the_contract() {
    let sim = SimStorage::new(18);
    let tier = MemoryTier::new();
    let n = 400;
    let blocks = {
        let store = open(&sim, options(&tier)).unwrap();
        fill(&store, n);
        for _ in 0..100 {
            store.read_next_as("orders", "half", true).unwrap().unwrap();
        }
        store.tier_pass().unwrap();
        store.retained_blocks("orders").unwrap()
    };
    sim.crash(CrashMode::DropUnsynced);
    let store = open(&sim, options(&tier)).unwrap();
    // Everything uploaded; without local retention only what the consumer read left the disk
    // (at run time), and the reopen released nothing more: what it has not read is local.
    assert_eq!(store.retained_blocks("orders").unwrap(), blocks);
    tier.set_down(true);
    for o in 100..n {
        assert_eq!(
            store.read_at("orders", o).unwrap(),
            Some(payload(o)),
            "read_at {o}"
        );
    }
    tier.set_down(false);
    assert!(store.remove_consumer("orders", "half").unwrap());
    assert_eq!(store.first_retained_offset("orders"), Some(0));
    assert_eq!(store.read_at("orders", 0).unwrap(), Some(payload(0)));
    drop(store);

    // A second store with the same directory in the same tier: its blocks are not these.
    let other = SimStorage::new(19);
    let store = open(&other, options(&tier)).unwrap();
    for i in 0..50 {
        store.append("orders", &payload(i + 7)).unwrap();
    }
    store.sync().unwrap();
    let e = store.tier_pass().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("another store"), "{e}");
    assert_eq!(store.read_at("orders", 3).unwrap(), Some(payload(10)));
}

/// A store on the simulated disk of seed `seed` tiers entries `0..n`; then a store on another
/// disk (seed `seed + 1`) under the same tier directory appends `other(0..=n)`, synced and all
/// consumed, so that any block the tier held for it would leave its disk.
fn beside_another_store(
    seed: u64,
    n: u64,
    other: &dyn Fn(u64) -> Vec<u8>,
) -> (MemoryTier, SimStorage, Store) {
    let tier = MemoryTier::new();
    {
        let store = open(&SimStorage::new(seed), options(&tier)).unwrap();
        fill(&store, n);
        store.tier_pass().unwrap();
    }
    let sim = SimStorage::new(seed + 1);
    let store = open(&sim, options(&tier)).unwrap();
    for i in 0..=n {
        store.append("orders", &other(i)).unwrap();
    }
    store.sync().unwrap();
    store.commit("orders", n + 1).unwrap();
    (tier, sim, store)
}

/// Another store under the same directory whose blocks have exactly the offsets of this one's
/// (entries of the same lengths, other bytes) is refused too: an index object with a local
/// block's offsets counts as that block's upload only if its data is the block's, or the block
/// would be released without ever being uploaded, and reads would return the other store's
/// entries.
#[test]
fn another_stores_blocks_with_the_same_offsets_are_not_taken_for_uploads() {
    let n = 400;
    let other = |i: u64| payload(i).iter().map(|b| !b).collect::<Vec<u8>>();
    let (tier, sim, store) = beside_another_store(40, n, &other);
    let blocks = store.retained_blocks("orders").unwrap();
    let e = store.tier_pass().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("another store"), "{e}");
    assert_eq!(store.read_at("orders", 0).unwrap(), Some(other(0)));
    assert_eq!(
        store.retained_blocks("orders"),
        Some(blocks),
        "no block left the disk"
    );
    drop(store);
    // Nor after a reopen, by a tier mark that the failed pass wrote.
    let store = open(&sim, options(&tier)).unwrap();
    assert_eq!(store.retained_blocks("orders"), Some(blocks));
    assert_eq!(store.read_at("orders", 0).unwrap(), Some(other(0)));
}

/// An index object the listing found overlapping a local block, not this store's upload of
/// it, makes no tier mark: the local blocks it overlaps stay.
#[test]
fn another_stores_overlapping_block_releases_nothing() {
    let n = 400;
    // Other entry lengths: the blocks here start at other offsets than the tiered ones.
    let other = |i: u64| vec![(i % 251) as u8; 300 + (i % 7) as usize * 100];
    let (_tier, _sim, store) = beside_another_store(43, n, &other);
    let blocks = store.retained_blocks("orders").unwrap();
    assert!(store.tier_pass().is_err());
    assert_eq!(store.retained_blocks("orders"), Some(blocks));
    for i in [0, n / 2, n] {
        assert_eq!(store.read_at("orders", i).unwrap(), Some(other(i)), "@{i}");
    }
}

/// A block sealed in memory (the entry after it went to a new block), uploaded, then made the
/// live block again by a reopen after a power cut took that new block, grows: it is tiered
/// again, whole, replacing the shorter upload, and tiering goes on.
#[test]
fn a_block_tiered_and_then_reopened_as_the_live_block_is_tiered_again_when_it_grew() {
    let sim = SimStorage::new(42);
    let tier = MemoryTier::new();
    let n = 40;
    {
        let store = open(&sim, options(&tier)).unwrap();
        fill(&store, n);
        // Too large for what is left of the live block: it goes to a new one, never synced.
        store.append("orders", &vec![7u8; 7600]).unwrap();
        assert_eq!(
            store.tier_pass().unwrap().uploaded,
            3,
            "the live block, sealed, too"
        );
        sim.crash(CrashMode::DropUnsynced);
        std::mem::forget(store);
    }
    let store = open(&sim, options(&tier)).unwrap();
    assert_eq!(store.end_offset("orders"), Some(n));
    for i in n..n + 150 {
        store.append("orders", &payload(i)).unwrap();
    }
    store.sync().unwrap();
    store.tier_pass().unwrap();
    store.tier_pass().unwrap();
    let tiered = tiered_entries(&tier, "tier-dir/orders");
    assert!(tiered.len() as u64 > n, "{} entries tiered", tiered.len());
    for (o, data) in &tiered {
        assert_eq!(data, &payload(*o), "tiered @{o}");
    }
    // Nothing tiered twice (`tiered_entries` refuses an offset twice), and no gap.
    let offsets: Vec<u64> = tiered.keys().copied().collect();
    assert_eq!(offsets, (0..tiered.len() as u64).collect::<Vec<_>>());
}

/// The shorter upload a whole one replaced is deleted even when its deletion fails: the next
/// pass retries it (the failure holds up nothing), and after a reopen the listing, which
/// finds both uploads of the block, deletes the shorter. No object is left behind.
#[test]
fn a_shorter_upload_left_by_a_failed_deletion_goes_in_a_later_pass() {
    for reopen in [false, true] {
        let sim = SimStorage::new(43);
        let tier = MemoryTier::new();
        let n = 40;
        {
            let store = open(&sim, options(&tier)).unwrap();
            fill(&store, n);
            store.append("orders", &vec![7u8; 7600]).unwrap();
            assert_eq!(store.tier_pass().unwrap().uploaded, 3);
            sim.crash(CrashMode::DropUnsynced);
            std::mem::forget(store);
        }
        let mut store = open(&sim, options(&tier)).unwrap();
        for i in n..n + 150 {
            store.append("orders", &payload(i)).unwrap();
        }
        store.sync().unwrap();
        let before = tier.keys();
        // The whole block's upload lands; deleting the shorter one fails (the pass goes on:
        // a deletion must not hold up the uploads).
        tier.fail_next(TierOp::Delete, 2);
        store.tier_pass().unwrap();
        assert!(
            tier.calls(TierOp::Delete) >= 1,
            "reopen {reopen}: no deletion tried"
        );
        let after = tier.keys();
        assert!(
            before.iter().all(|k| after.contains(k)),
            "reopen {reopen}: the shorter upload went, though its deletion failed"
        );
        if reopen {
            drop(store);
            store = open(&sim, options(&tier)).unwrap();
        }
        store.tier_pass().unwrap();
        store.tier_pass().unwrap();
        let (blk3, idx3) = keys_by_kind(&tier);
        assert_eq!(blk3, idx3, "reopen {reopen}: an object without its pair");
        // `tiered_entries` refuses an offset held twice: the shorter upload is gone.
        let tiered = tiered_entries(&tier, "tier-dir/orders");
        let offsets: Vec<u64> = tiered.keys().copied().collect();
        assert_eq!(offsets, (0..tiered.len() as u64).collect::<Vec<_>>());
        assert!(tiered.len() as u64 > n);
    }
}

/// A consumer waiting for a slow remote holds up neither the stats nor the appends of its
/// topic.
#[test]
fn a_consumer_waiting_for_the_remote_holds_up_neither_stats_nor_appends() {
    let sim = SimStorage::new(20);
    let tier = MemoryTier::new();
    {
        let store = open(&sim, bounded(&tier)).unwrap();
        fill(&store, 300);
        store.tier_pass().unwrap();
    }
    // Reopened: an empty read cache, the catalogue not loaded.
    let store = Arc::new(open(&sim, bounded(&tier)).unwrap());
    tier.set_delay(Duration::from_millis(1000));
    let reader = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || store.read_next_as("orders", "slow", true))
    };
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let stats = store.stats();
    store.append("orders", b"meanwhile").unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(700), "{took:?}");
    assert!(stats.topics.iter().any(|t| t.name == "orders"));
    assert_eq!(reader.join().unwrap().unwrap(), Some((0, payload(0))));
}

/// Two readers that find the catalogue unloaded at once: the second waits for the first's
/// load, and both are answered (the second held the catalogue's lock while it waited, and the
/// first needed it to finish: both hung).
#[test]
fn two_readers_loading_the_catalogue_at_once_both_finish() {
    let sim = SimStorage::new(23);
    let tier = MemoryTier::new();
    {
        let store = open(&sim, bounded(&tier)).unwrap();
        fill(&store, 300);
        store.tier_pass().unwrap();
    }
    let store = Arc::new(open(&sim, bounded(&tier)).unwrap());
    tier.set_delay(Duration::from_millis(300));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for (i, name) in ["first", "second"].into_iter().enumerate() {
        let store = Arc::clone(&store);
        let done = done_tx.clone();
        std::thread::spawn(move || {
            let _ = done.send((name, store.read_next_as("orders", name, true)));
        });
        if i == 0 {
            std::thread::sleep(Duration::from_millis(100)); // the first is listing
        }
    }
    for _ in 0..2 {
        let (name, read) = done_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a reader never finished");
        assert_eq!(read.unwrap(), Some((0, payload(0))), "{name}");
    }
}

/// An object named like an index but longer than any index is refused unfetched: a foreign
/// or crafted object costs a read no memory.
#[test]
fn an_index_object_longer_than_any_index_is_refused_unfetched() {
    let sim = SimStorage::new(24);
    let tier = MemoryTier::new();
    {
        let store = open(&sim, bounded(&tier)).unwrap();
        fill(&store, 300);
        store.tier_pass().unwrap();
    }
    let idx = tier
        .keys()
        .into_iter()
        .find(|k| k.ends_with(".idx"))
        .expect("an index object");
    let dir = idx.rsplit_once('/').unwrap().0;
    let huge = vec![0u8; (walrus_block::MAX_TIER_INDEX_LEN + 1) as usize];
    tier.put_new(&format!("{dir}/huge.idx"), &huge, &Metadata::new())
        .unwrap();
    drop(huge);
    let store = open(&sim, bounded(&tier)).unwrap();
    let read_before = tier.bytes_read();
    let e = store.read_next_as("orders", "c", true).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("huge.idx"), "{e}");
    let read = tier.bytes_read() - read_before;
    assert!(read < 1 << 20, "{read} bytes read");
}

/// Dropping an engine while its tier thread works through a backlog on a slow remote waits
/// for one remote call, not for the backlog; what was uploaded is whole.
#[test]
fn dropping_an_engine_mid_backlog_waits_for_one_call_not_the_backlog() {
    let sim = SimStorage::new(21);
    let tier = MemoryTier::new();
    tier.set_delay(Duration::from_millis(300));
    let engine = engine_every_5ms(&sim, &tier);
    for i in 0..600 {
        engine.append("orders", &payload(i)).unwrap();
    }
    engine.flush().unwrap();
    // The backlog is 20-odd blocks, two PUTs each: about 15 s at 300 ms a call.
    std::thread::sleep(Duration::from_millis(700));
    let took = close_time(engine);
    assert!(
        took < Duration::from_millis(2500),
        "the close waited {took:?}"
    );
    let (blk, idx) = keys_by_kind(&tier);
    assert!(
        blk >= idx && blk <= idx + 1,
        "{blk} data objects, {idx} index objects"
    );
    tier.set_delay(Duration::ZERO);
    for (o, data) in tiered_entries(&tier, "tier-dir/orders") {
        assert_eq!(data, payload(o), "offset {o}");
    }
}

/// Dropping an engine while its tier thread expires a deleted topic's many objects waits for
/// the call in flight, not for every expiry; the next open's pass finishes them.
#[test]
fn dropping_an_engine_mid_expiry_waits_for_one_call_not_every_expiry() {
    let sim = SimStorage::new(22);
    let tier = MemoryTier::new();
    {
        let store = open(&sim, options(&tier)).unwrap();
        fill(&store, 600);
        store.tier_pass().unwrap();
        assert!(keys_by_kind(&tier).1 > 10, "too few blocks tiered");
        assert!(store.delete_topic("orders").unwrap());
    }
    // Two deletes a block at 300 ms a call: several seconds of expiries.
    tier.set_delay(Duration::from_millis(300));
    let engine = engine_every_5ms(&sim, &tier);
    let started_with = tier.calls(TierOp::Delete);
    wait_for_calls(&tier, TierOp::Delete, started_with + 2);
    let took = close_time(engine);
    assert!(
        took < Duration::from_millis(2500),
        "the close waited {took:?}"
    );
    assert!(
        keys_by_kind(&tier).1 > 0,
        "every expiry ran before the close"
    );
    tier.set_delay(Duration::ZERO);
    let store = open(&sim, options(&tier)).unwrap();
    store.tier_pass().unwrap();
    assert_eq!(
        keys_by_kind(&tier),
        (0, 0),
        "objects of the deleted topic left"
    );
}

/// Tiering turned on for a topic whose first entries were consumed and released before: the
/// tier holds it from a later offset on. A consumer created after a reopen, before any tier
/// pass, starts at the floor, steps over the entries nothing holds any more, and reads the
/// tiered ones: none is skipped for the local chain's front.
#[test]
fn a_consumer_new_after_a_reopen_reads_the_tiered_entries_after_a_hole() {
    let sim = SimStorage::new(45);
    let tier = MemoryTier::new();
    let untiered = StoreOptions::new()
        .with_block_len(8192)
        .with_segment_len(64 * 1024);
    {
        // Two segments and more: the first one goes once consumed.
        let store = open(&sim, untiered).unwrap();
        fill(&store, 400);
        for _ in 0..400 {
            store.read_next("orders", true).unwrap().unwrap();
        }
    }
    {
        let store = open(&sim, options(&tier)).unwrap();
        for i in 400..600 {
            store.append("orders", &payload(i)).unwrap();
        }
        store.sync().unwrap();
        for _ in 400..600 {
            store.read_next("orders", true).unwrap().unwrap();
        }
        store.tier_pass().unwrap();
        store.tier_pass().unwrap();
    }
    let tiered = tiered_entries(&tier, "tier-dir/orders");
    let first_tiered = *tiered.keys().next().unwrap();
    assert!(first_tiered > 0, "{first_tiered}");
    let store = open(&sim, options(&tier)).unwrap();
    let local_front = (first_tiered..600)
        .find(|&o| !tiered.contains_key(&o))
        .unwrap();
    assert!(local_front > first_tiered + 10, "{local_front}");
    let (offset, data) = store.read_next_as("orders", "b", true).unwrap().unwrap();
    assert_eq!(offset, first_tiered);
    assert!(data == payload(first_tiered));
    let rest: Vec<u64> = store
        .iter("orders", offset + 1)
        .map(|e| e.unwrap().0)
        .collect();
    assert_eq!(rest, (offset + 1..600).collect::<Vec<_>>());
}

/// Loading a topic's catalogue (one GET per tiered block) on a slow remote: dropping the
/// engine meanwhile waits for the calls in flight, not for the whole load; and a remote whose
/// GETs fail costs a read a few failed calls, not one per tiered block.
#[test]
fn a_catalogue_load_stops_at_the_first_failure_and_at_the_close() {
    let sim = SimStorage::new(46);
    let tier = MemoryTier::new();
    {
        let store = open(&sim, options(&tier)).unwrap();
        fill(&store, 3000);
        store.commit("orders", 3000).unwrap();
        store.tier_pass().unwrap();
        store.tier_pass().unwrap();
    }
    let blocks = keys_by_kind(&tier).1 as u64;
    assert!(blocks >= 120, "{blocks} blocks tiered");
    tier.set_delay(Duration::from_millis(200));
    let engine = engine_every_5ms(&sim, &tier);
    wait_for_calls(&tier, TierOp::Get, 1);
    let took = close_time(engine);
    // The whole load: `blocks` GETs over 8 fetchers at 200 ms each, 3 s and more.
    assert!(
        took < Duration::from_millis(1500),
        "the close waited {took:?}"
    );
    tier.set_delay(Duration::ZERO);
    let store = open(&sim, options(&tier)).unwrap();
    let before = tier.calls(TierOp::Get);
    tier.fail_next(TierOp::Get, 10_000);
    assert!(store.read_at("orders", 0).is_err());
    let calls = tier.calls(TierOp::Get) - before;
    assert!(
        calls <= 8,
        "{calls} GETs for one failed load of {blocks} index objects"
    );
}

/// Removing a consumer whose read waits for a slow remote waits for that read, with the
/// topic's floor locked; appends that seal blocks meanwhile (each a moment retention is
/// applied, under the floor lock) are not held up by it.
#[test]
fn a_removal_waiting_for_a_slow_read_holds_up_no_append() {
    let sim = SimStorage::new(47);
    let tier = MemoryTier::new();
    // A retention of the topic's own (never reached here): applied as blocks seal.
    let options = || {
        bounded(&tier)
            .with_topic_retention("orders", Retention::unlimited().with_max_bytes(1 << 30))
    };
    {
        let store = open(&sim, options()).unwrap();
        fill(&store, 300);
        store.tier_pass().unwrap();
    }
    let store = Arc::new(open(&sim, options()).unwrap());
    tier.set_delay(Duration::from_millis(1500));
    let reader = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || store.read_next_as("orders", "slow", true))
    };
    std::thread::sleep(Duration::from_millis(100));
    let remover = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || store.remove_consumer("orders", "slow"))
    };
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    // Past one 8 KiB block.
    for i in 300..340 {
        store.append("orders", &payload(i)).unwrap();
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(700), "{took:?}");
    assert_eq!(reader.join().unwrap().unwrap(), Some((0, payload(0))));
    assert!(remover.join().unwrap().unwrap());
}

/// A store that tiered entries and left them only in the remote tier, reopened without the
/// tier: a read that reaches those entries fails and says where they are, instead of stepping
/// over them as if released. A consumer may be committed to the first local entry and go on;
/// reopened with the tier, every entry is there again.
#[test]
fn a_reopen_without_the_tier_refuses_to_step_over_tiered_entries() {
    let sim = SimStorage::new(31);
    let tier = MemoryTier::new();
    let n = 600;
    {
        let store = open(&sim, bounded(&tier)).unwrap();
        fill(&store, n);
        for o in 0..10 {
            assert_eq!(
                store
                    .read_next_as("orders", "reader", true)
                    .unwrap()
                    .unwrap()
                    .0,
                o
            );
        }
        store.tier_pass().unwrap();
        store.maintain().unwrap();
    }
    let plain = StoreOptions::new()
        .with_block_len(8192)
        .with_segment_len(64 * 1024);
    {
        let store = open(&sim, plain.clone()).unwrap();
        let local = store.first_retained_offset("orders").unwrap();
        assert!(local > 10, "nothing left the disk ({local})");
        let in_tier = |e: io::Error| {
            assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
            assert!(e.to_string().contains("remote tier"), "{e}");
        };
        in_tier(store.read_next_as("orders", "reader", true).unwrap_err());
        in_tier(store.read_at("orders", 10).unwrap_err());
        in_tier(store.scan("orders", 0, 5, |_, _| {}).unwrap_err());
        // The cursor did not move; the entries on the local disk are all there.
        assert_eq!(store.cursor_as("orders", "reader"), Some(10));
        assert_eq!(
            store.read_at("orders", local).unwrap(),
            Some(payload(local))
        );
        // Going on without the tier is the reader's explicit choice.
        store.commit_as("orders", "reader", local).unwrap();
        assert_eq!(
            store.read_next_as("orders", "reader", true).unwrap(),
            Some((local, payload(local)))
        );
    }
    // With the tier again: what the tier holds is read from it.
    {
        let store = open(&sim, bounded(&tier)).unwrap();
        assert_read_at(&store, n);
    }
    // Without it, below the floor is released (whatever the tier holds), not in the tier.
    let store = open(&sim, plain).unwrap();
    assert!(store.release_before("orders", 5).unwrap());
    let released = store.scan("orders", 2, 5, |_, _| {}).unwrap_err();
    assert_eq!(released.kind(), ErrorKind::NotFound, "{released}");
    assert!(!released.to_string().contains("tier"), "{released}");
    let tiered = store.scan("orders", 5, 5, |_, _| {}).unwrap_err();
    assert!(tiered.to_string().contains("remote tier"), "{tiered}");
}

/// The simulated disk, running `hook` once: at the first listing of the directory after the
/// watermark file was opened (where a read-only open has loaded the watermarks and not yet
/// listed the segments). Here the hook has `writer` append `entries` to "orders", sync, tier
/// and maintain: segments go to the tier and leave the disk between the two loads.
fn tiering_after_marks(
    sim: &SimStorage,
    writer: &Arc<Store>,
    entries: std::ops::Range<u64>,
) -> Arc<dyn Storage> {
    let w = Arc::clone(writer);
    let hook: Box<dyn FnOnce() + Send> = Box::new(move || {
        for i in entries {
            w.append("orders", &payload(i)).unwrap();
        }
        w.sync().unwrap();
        w.tier_pass().unwrap();
        w.maintain().unwrap();
    });
    let hook = std::sync::Mutex::new(Some(hook));
    let marks_read = std::sync::atomic::AtomicBool::new(false);
    Arc::new(Hooked::new(sim.clone(), move |op: Op<'_>| {
        match op {
            Op::OpenRead(path) if path.ends_with("durable.wcur") => {
                marks_read.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Op::List(_) if marks_read.load(std::sync::atomic::Ordering::SeqCst) => {
                let hook = hook.lock().unwrap().take();
                if let Some(hook) = hook {
                    hook();
                }
            }
            _ => {}
        }
        Ok(())
    }))
}

/// A read-only open beside a live writer that tiers: the writer raises the tier mark and
/// deletes segments of blocks released after their upload while the open has loaded the
/// watermarks and not yet listed the segments. The open reads the tier mark again once the
/// segments are open: no damage is reported where blocks left for the tier.
#[test]
fn a_read_only_open_beside_a_tiering_writer_reports_no_damage() {
    let sim = SimStorage::new(49);
    let tier = MemoryTier::new();
    let options = bounded(&tier).with_mark_interval(Duration::ZERO);
    let writer = Arc::new(open(&sim, options.clone()).unwrap());
    fill(&writer, 200);
    writer.tier_pass().unwrap();
    writer.maintain().unwrap();
    let files = segment_files(&sim);
    let view = tiering_after_marks(&sim, &writer, 200..600);
    let reader = Store::open_read_only(DIR, view, options).unwrap();
    assert!(
        segment_files(&sim) < files,
        "the writer deleted no segment meanwhile"
    );
    let damage: Vec<_> = reader
        .recovery_report()
        .issues
        .iter()
        .filter(|i| i.topic == "orders")
        .collect();
    assert!(damage.is_empty(), "{damage:?}");
    assert_eq!(reader.read_at("orders", 150).unwrap(), Some(payload(150)));
    drop(reader);
    // The same without the tier configured (the `walrus` command's open): below the tier mark
    // the writer reached, every entry is read, or the read says the tier holds it; never
    // "not written".
    let plain = StoreOptions::new()
        .with_block_len(8192)
        .with_segment_len(64 * 1024);
    let view = tiering_after_marks(&sim, &writer, 600..1000);
    let reader = Store::open_read_only(DIR, view, plain).unwrap();
    let mark = writer
        .stats()
        .topics
        .iter()
        .find(|t| t.name == "orders")
        .unwrap()
        .tier_mark;
    assert!(mark > 600, "{mark}");
    for o in 0..mark {
        match reader.read_at("orders", o) {
            Ok(found) => assert_eq!(found, Some(payload(o)), "{o}"),
            Err(e) => assert!(e.to_string().contains("remote tier"), "{o}: {e}"),
        }
    }
}

/// The background persistence of cursors passes over a consumer whose read waits for the
/// remote tier (its reader lock held for the whole GET): waiting for it held up the periodic
/// syncs behind the pass. The next pass persists it.
#[test]
fn the_background_persistence_never_waits_for_a_reader_waiting_for_the_tier() {
    let sim = SimStorage::new(49);
    let tier = MemoryTier::new();
    let (_, store) = tiered_and_reopened(&sim, &tier, 600);
    drop(store);
    let store = Arc::new(open(&sim, bounded(&tier).with_persist_every(100)).unwrap());
    store.commit_as("orders", "d", 590).unwrap();
    tier.set_delay(Duration::from_secs(3));
    let gets = tier.calls(TierOp::Get);
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || store.read_next_as("orders", "c", true))
    };
    wait_for_calls(&tier, TierOp::Get, gets + 1);
    // A local read not persisted yet lists the topic for the background persistence.
    assert_eq!(
        store.read_next_as("orders", "d", true).unwrap(),
        Some((590, payload(590)))
    );
    store.maintain().unwrap();
    assert!(
        !reader.is_finished(),
        "the maintenance waited for the reader's GET"
    );
    let d = |store: &Store| {
        store
            .consumers("orders")
            .into_iter()
            .find(|c| c.name == "d")
            .unwrap()
            .persisted
    };
    assert_eq!(d(&store), 591, "the idle consumer was persisted");
    tier.set_delay(Duration::ZERO);
    assert!(reader.join().unwrap().unwrap().is_some());
    store.maintain().unwrap();
    let c = store
        .consumers("orders")
        .into_iter()
        .find(|c| c.name == "c")
        .unwrap();
    assert_eq!(c.persisted, c.cursor, "persisted by the next pass");
}

/// Entry `k` of the batch [`batch_across_the_tier_mark`] appends (offset `1 + k`).
fn batch_part(k: u64) -> Vec<u8> {
    vec![0xC0 + k as u8; 3000]
}

/// "orders" in one lane: an entry, then a batch of six 3000-byte entries (offsets 1..7,
/// spanning blocks), synced and tiered, so that the tier mark falls inside the batch (it is the
/// end of an uploaded block); then the process is killed before any watermark is written. The
/// tier mark, and the segment holding the batch.
fn batch_across_the_tier_mark(
    sim: &SimStorage,
    tier: &MemoryTier,
    options: &StoreOptions,
) -> (u64, std::path::PathBuf) {
    let store = open(sim, options.clone()).unwrap();
    store.append("orders", &payload(0)).unwrap();
    let batch: Vec<Vec<u8>> = (0..6).map(batch_part).collect();
    let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
    assert_eq!(store.append_batch("orders", &refs).unwrap(), 1..7);
    store.sync().unwrap();
    store.tier_pass().unwrap();
    let mark = tiered_blocks(tier)
        .iter()
        .map(|&(first, n)| first + n)
        .max()
        .unwrap_or(0);
    assert!(
        (3..7).contains(&mark),
        "the tier mark inside the batch: {mark}"
    );
    // kill -9 (a close would write the watermarks).
    sim.crash(CrashMode::KeepWritten);
    std::mem::forget(store);
    let segment = sim
        .files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wseg"))
        .find(|p| position_of(sim, p, &batch_part(0)).is_some())
        .unwrap();
    (mark, segment)
}

/// Where `bytes` first stand in the file at `path`.
fn position_of(sim: &SimStorage, path: &std::path::Path, bytes: &[u8]) -> Option<u64> {
    let contents = sim.contents(path).unwrap();
    contents
        .windows(bytes.len())
        .position(|w| w == bytes)
        .map(|p| p as u64)
}

/// Every file's bytes, in the order of their names.
fn every_file(sim: &SimStorage) -> Vec<Vec<u8>> {
    sim.files()
        .iter()
        .map(|p| sim.contents(p).unwrap())
        .collect()
}

/// The batch was durable whole (the tier mark is never past the durable end, which moves by
/// whole batches). Damage to its rest, in the block not uploaded, is damage to synced data:
/// refused by the default mode. It was taken for a torn tail: the cut went back to the batch's
/// first entry, below the tier mark, and erased the synced entries from there (the tier then
/// served the batch's head without its tail).
#[test]
fn damage_to_a_batch_the_tier_mark_falls_in_is_not_a_torn_tail() {
    let sim = SimStorage::new(57);
    let tier = MemoryTier::new();
    let options = options(&tier)
        .with_lanes(1)
        .with_mark_interval(Duration::from_secs(3600));
    let (_, segment) = batch_across_the_tier_mark(&sim, &tier, &options);
    // The batch's last entry damaged, in the block not uploaded.
    let at = position_of(&sim, &segment, &batch_part(5)).unwrap();
    let file = sim.open(&segment).unwrap();
    file.write_at(b"#", at + 100).unwrap();
    file.sync_data().unwrap();
    let before = every_file(&sim);
    let e = open(&sim, options.clone()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(
        before == every_file(&sim),
        "the refused open changed nothing"
    );
    // The lenient mode keeps the synced entries before the damage.
    let store = open(
        &sim,
        options.with_recovery(walrus_topic::RecoveryMode::SkipCorrupted),
    )
    .unwrap();
    for k in 0..5 {
        assert_eq!(store.read_at("orders", 1 + k).unwrap(), Some(batch_part(k)));
    }
}

/// The same batch, with damage below the tier mark (the last entry of the last uploaded block)
/// and the header of the next block, which holds the batch's rest (synced, not uploaded): one
/// media error across the two. The loss starts below the tier mark, where the tier holds the
/// entries, but reaches the batch's rest, which it does not: damage to synced data, refused.
/// It was taken for consumed history ending at the tier mark: the open succeeded, the segment
/// went as holding nothing, and the batch's rest with it.
#[test]
fn damage_across_the_tier_mark_inside_a_batch_is_refused() {
    let sim = SimStorage::new(58);
    let tier = MemoryTier::new();
    let options = options(&tier)
        .with_lanes(1)
        .with_mark_interval(Duration::from_secs(3600));
    let (mark, segment) = batch_across_the_tier_mark(&sim, &tier, &options);
    let find = |k: u64| position_of(&sim, &segment, &batch_part(k)).unwrap();
    let file = sim.open(&segment).unwrap();
    // Entry mark - 1 (k = mark - 2), the last the tier holds; and the header of the block of
    // entry mark (k = mark - 1), the first it does not: blocks start on 4 KiB boundaries.
    file.write_at(b"#", find(mark - 2) + 100).unwrap();
    file.write_at(b"#", find(mark - 1) / 4096 * 4096 + 8)
        .unwrap();
    file.sync_data().unwrap();
    let before = every_file(&sim);
    let e = open(&sim, options).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(
        before == every_file(&sim),
        "the refused open changed nothing"
    );
}
