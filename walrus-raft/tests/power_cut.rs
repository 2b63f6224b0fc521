//! Power cuts while the log is appending: every entry whose flush callback fired (openraft's
//! acknowledgement to the leader) and every saved vote survives, on the simulated disk that
//! drops whatever was not synced.

use std::sync::Arc;
use std::time::Duration;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};
use walrus::sim::{CrashMode, SimStorage};
use walrus::{FsyncSchedule, Storage, Walrus};
use walrus_raft::{LogStore, Request, TypeConfig};

fn open(sim: &SimStorage) -> std::io::Result<LogStore> {
    let wal = Walrus::builder()
        .data_dir("/raft")
        .storage(Arc::new(sim.clone()) as Arc<dyn Storage>)
        .fsync_schedule(FsyncSchedule::NoFsync)
        .segment_len(64 * 1024)
        .block_len(8 * 1024)
        .quiet(true)
        .build()?;
    LogStore::open(Arc::new(wal))
}

fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Request::Append {
            topic: "t".into(),
            data: format!("{term}/{index}").into_bytes(),
        }),
    }
}

fn seeds() -> u64 {
    std::env::var("WALRUS_RAFT_POWER_CUT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_entries_survive_power_cuts() {
    let mut votes_checked = 0;
    for seed in 0..seeds() {
        let sim = SimStorage::new(seed);
        sim.set_sync_latency(Duration::from_micros(200));
        let mut log = open(&sim).unwrap();
        // A crash after 1–8 ms of appending, from another thread, mid-batch.
        let cutter = {
            let sim = sim.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_micros(1000 + seed * 7919 % 7000));
                sim.crash(CrashMode::DropUnsynced);
            })
        };
        let mut acked = 0u64;
        let mut vote = None;
        for round in 1..=2000u64 {
            let batch = (acked + 1..=acked + 1 + round % 5).map(|i| entry(1, i));
            let last = acked + 1 + round % 5;
            if log.blocking_append(batch).await.is_err() {
                break;
            }
            acked = last;
            if round == 1 || round % 7 == 0 {
                let v = Vote::new(round, 1);
                if log.save_vote(&v).await.is_err() {
                    break;
                }
                vote = Some(v);
            }
        }
        cutter.join().unwrap();
        drop(log);
        let mut log = open(&sim).unwrap_or_else(|e| panic!("seed {seed}: reopen: {e}"));
        let state = log.get_log_state().await.unwrap();
        let last = state.last_log_id.map_or(0, |l| l.index);
        assert!(
            last >= acked,
            "seed {seed}: acknowledged up to {acked}, log ends at {last}"
        );
        let entries = log.try_get_log_entries(1..=last).await.unwrap();
        assert_eq!(entries.len() as u64, last, "seed {seed}");
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(*e, entry(1, i as u64 + 1), "seed {seed}");
        }
        let read = log.read_vote().await.unwrap();
        if let Some(vote) = vote {
            assert!(
                read.is_some_and(|r| r >= vote),
                "seed {seed}: saved {vote:?}, read back {read:?}"
            );
            votes_checked += 1;
        }
    }
    assert!(
        votes_checked > 0,
        "no seed saved a vote before its power cut"
    );
}

/// The committed id is saved without a sync, so a power cut can keep it while taking entries it
/// names: read back, it never passes the last entry the log holds (a node restarted with a
/// committed id past its log could not re-apply to it, and would never start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_id_past_the_log_reads_back_as_the_last_entry() {
    let sim = SimStorage::new(99);
    {
        let mut log = open(&sim).unwrap();
        log.blocking_append((1..=10).map(|i| entry(1, i)))
            .await
            .unwrap();
        // What a power cut can leave: the committed record of entries the log lost.
        log.save_committed(Some(LogId::new(CommittedLeaderId::new(1, 1), 15)))
            .await
            .unwrap();
        // A synced meta write, which carries the committed id with it.
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
    }
    let mut log = open(&sim).unwrap();
    let committed = log.read_committed().await.unwrap().unwrap();
    assert_eq!(committed.index, 10);
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(committed));
}

/// The state machine's data instance syncs nothing of its own, so a power cut may keep a
/// consumer's cursor record while taking the entries it passed (write-back in no order):
/// recovery would then end the topic past a gap, and re-applying would count the lost
/// entries as there. Entries are made durable before a commit moves a cursor past them:
/// after any such cut every entry a consumer has yet to read is still readable, and a
/// snapshot builds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_never_outlives_the_entries_it_passed() {
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use walrus_raft::StateMachine;
    let append = |i: u64| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
        payload: EntryPayload::Normal(Request::Append {
            topic: "t".into(),
            data: vec![i as u8; 700],
        }),
    };
    let commit = |i: u64, consumer: &str, offset: u64| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
        payload: EntryPayload::Normal(Request::Commit {
            topic: "t".into(),
            consumer: consumer.into(),
            offset,
        }),
    };
    let instance = |sim: &SimStorage, dir: &str| {
        Arc::new(
            Walrus::builder()
                .data_dir(dir)
                .storage(Arc::new(sim.clone()) as Arc<dyn Storage>)
                .fsync_schedule(FsyncSchedule::NoFsync)
                .segment_len(64 * 1024)
                .block_len(8 * 1024)
                .quiet(true)
                .build()
                .unwrap(),
        )
    };
    for seed in 0..seeds() {
        let sim = SimStorage::new(seed);
        let snapshot_dir = tempfile::tempdir().unwrap();
        let snapshot_path = snapshot_dir.path().join("snapshot");
        let entries: Vec<Entry<TypeConfig>> = (1..=60)
            .map(append)
            .chain([commit(61, "slow", 10)])
            .chain((62..=81).map(append))
            .chain([commit(82, "fast", 80)])
            .collect();
        {
            let log = LogStore::open(instance(&sim, "/raft")).unwrap();
            let mut sm =
                StateMachine::open(instance(&sim, "/data"), &log, snapshot_path.clone()).unwrap();
            sm.apply(entries[..61].to_vec()).await.unwrap();
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            sm.apply(entries[61..].to_vec()).await.unwrap();
            sim.crash(CrashMode::RandomSectors);
        }
        let log = LogStore::open(instance(&sim, "/raft")).unwrap();
        let data = instance(&sim, "/data");
        let mut sm = StateMachine::open(Arc::clone(&data), &log, snapshot_path.clone()).unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        let from = applied.map_or(0, |a| a.index as usize);
        sm.apply(entries[from..].to_vec())
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: re-apply: {e}"));
        for o in 10..80 {
            assert!(
                data.read_at("t", o).unwrap().is_some(),
                "seed {seed}: offset {o} lost, its consumer not past it"
            );
        }
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: snapshot: {e}"));
    }
}
