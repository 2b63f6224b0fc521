//! What a node's stores say after they are reopened: the log after appends, truncation and
//! purge; the state machine re-applying entries it had applied before a restart (counted, not
//! appended twice).

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder,
    StorageHelper, Vote,
};
use walrus_raft::{Request, Response, StateMachine, TypeConfig, open_stores};

fn id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn append(term: u64, index: u64, topic: &str, data: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: id(term, index),
        payload: EntryPayload::Normal(Request::Append {
            topic: topic.into(),
            data: data.as_bytes().to_vec(),
        }),
    }
}

/// Applies `entries` and makes the applied record durable (a snapshot build does), so that the
/// log may make purges up to them durable.
async fn apply_durably(sm: &mut StateMachine, entries: Vec<Entry<TypeConfig>>) {
    sm.apply(entries).await.unwrap();
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_survives_reopen_after_truncate_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, mut sm) = open_stores(dir.path()).unwrap();
        apply_durably(&mut sm, (1..=5).map(|i| append(1, i, "t", "x")).collect()).await;
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
        log.blocking_append((1..=20).map(|i| append(1, i, "t", &format!("a{i}"))))
            .await
            .unwrap();
        log.truncate(id(1, 15)).await.unwrap();
        log.blocking_append((15..=17).map(|i| append(2, i, "t", &format!("b{i}"))))
            .await
            .unwrap();
        log.purge(id(1, 5)).await.unwrap();
        log.save_committed(Some(id(2, 16))).await.unwrap();
    }
    for _ in 0..2 {
        let (mut log, _sm) = open_stores(dir.path()).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(id(1, 5)));
        assert_eq!(state.last_log_id, Some(id(2, 17)));
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
        assert_eq!(log.read_committed().await.unwrap(), Some(id(2, 16)));
        let entries = log.try_get_log_entries(0..100).await.unwrap();
        let ids: Vec<_> = entries.iter().map(|e| e.log_id).collect();
        let want: Vec<_> = (6..=14)
            .map(|i| id(1, i))
            .chain((15..=17).map(|i| id(2, i)))
            .collect();
        assert_eq!(ids, want);
        assert_eq!(entries[9], append(2, 15, "t", "b15"));
    }
    // Purge past the end (as after installing a snapshot): the log restarts after it.
    {
        let (mut log, mut sm) = open_stores(dir.path()).unwrap();
        apply_durably(&mut sm, (6..=30).map(|i| append(2, i, "t", "y")).collect()).await;
        log.purge(id(2, 30)).await.unwrap();
        log.blocking_append([append(3, 31, "t", "c31")])
            .await
            .unwrap();
    }
    let (mut log, _sm) = open_stores(dir.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(id(2, 30)));
    assert_eq!(state.last_log_id, Some(id(3, 31)));
    assert_eq!(log.try_get_log_entries(0..100).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_machine_reapplies_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<_> = (1..=10)
        .map(|i| append(1, i, "t", &format!("e{i}")))
        .collect();
    let first: Vec<Response> = {
        let (_log, mut sm) = open_stores(dir.path()).unwrap();
        sm.apply(entries.clone()).await.unwrap()
    };
    assert_eq!(first[3], Response::Appended { offset: 3 });
    // Reopened before its applied record was written (every 1024 entries): it says nothing
    // is applied, yet the topic holds the entries. Re-applying counts them.
    let (_log, mut sm) = open_stores(dir.path()).unwrap();
    assert_eq!(sm.applied_state().await.unwrap().0, None);
    assert_eq!(sm.data().end_offset("t"), Some(10));
    let again = sm.apply(entries).await.unwrap();
    assert_eq!(again, first, "a re-applied entry answered differently");
    assert_eq!(
        sm.data().end_offset("t"),
        Some(10),
        "re-applying appended twice"
    );
    let next = sm.apply([append(1, 11, "t", "e11")]).await.unwrap();
    assert_eq!(next, vec![Response::Appended { offset: 10 }]);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(id(1, 11)));
    assert_eq!(sm.data().read_at("t", 10).unwrap().unwrap().data, b"e11");
}

/// openraft purges a follower's log up to a snapshot while the snapshot is still being
/// installed. A crash in between must leave a node that restarts: the purge is durable only up
/// to what the state machine made durable, so the entries it must re-apply are still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_past_the_durable_applied_id_keeps_the_entries_to_reapply() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, mut sm) = open_stores(dir.path()).unwrap();
        log.blocking_append((1..=20).map(|i| append(1, i, "t", &format!("e{i}"))))
            .await
            .unwrap();
        apply_durably(
            &mut sm,
            (1..=10)
                .map(|i| append(1, i, "t", &format!("e{i}")))
                .collect(),
        )
        .await;
        log.save_committed(Some(id(1, 20))).await.unwrap();
        // As openraft does for a snapshot at 15 that it has not installed yet.
        log.purge(id(1, 15)).await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(
            state.last_purged_log_id,
            Some(id(1, 15)),
            "memory purges as asked"
        );
        assert!(log.try_get_log_entries(11..=15).await.unwrap().is_empty());
        // A synced meta record, so the committed id is on disk too; then the crash.
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
    }
    let (mut log, mut sm) = open_stores(dir.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(id(1, 10)));
    assert_eq!(state.last_log_id, Some(id(1, 20)));
    // What openraft does at start: re-apply 11..=20 from the log.
    StorageHelper::new(&mut log, &mut sm)
        .get_initial_state()
        .await
        .unwrap_or_else(|e| panic!("the node cannot restart: {e}"));
    assert_eq!(sm.applied_state().await.unwrap().0, Some(id(1, 20)));
    assert_eq!(sm.data().end_offset("t"), Some(20));
    assert_eq!(sm.data().read_at("t", 19).unwrap().unwrap().data, b"e20");
    // Once the state machine is durable past it, a purge releases the kept entries too.
    apply_durably(&mut sm, Vec::new()).await;
    log.purge(id(1, 18)).await.unwrap();
    drop((log, sm));
    let (mut log, _sm) = open_stores(dir.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(id(1, 18)));
    let ids: Vec<_> = log
        .try_get_log_entries(0..100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id)
        .collect();
    assert_eq!(ids, vec![id(1, 19), id(1, 20)]);
}

/// A leader's snapshot at index 100 (entries `e1..=e100` of topic `t`), as it sends it to a
/// follower behind its purge.
async fn leaders_snapshot_at_100() -> openraft::Snapshot<TypeConfig> {
    let leader_dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open_stores(leader_dir.path()).unwrap();
    apply_durably(
        &mut sm,
        (1..=100)
            .map(|i| append(1, i, "t", &format!("e{i}")))
            .collect(),
    )
    .await;
    sm.get_current_snapshot().await.unwrap().unwrap()
}

/// A follower behind a leader's purge gets a snapshot: openraft purges its log up to the
/// snapshot before the state machine installs it, then appends after it. The purge held back
/// at first (nothing durable past the old entries) is made durable once the install is, so the
/// node restarts with its log starting after the snapshot, not with a gap after the old
/// entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_installed_a_snapshot_restarts() {
    let snapshot = leaders_snapshot_at_100().await;
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, mut sm) = open_stores(dir.path()).unwrap();
        log.blocking_append((1..=10).map(|i| append(1, i, "t", &format!("e{i}"))))
            .await
            .unwrap();
        // openraft's order: the purge, then the install.
        log.purge(id(1, 100)).await.unwrap();
        sm.install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        log.blocking_append((101..=105).map(|i| append(1, i, "t", &format!("e{i}"))))
            .await
            .unwrap();
        log.save_committed(Some(id(1, 105))).await.unwrap();
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
    }
    let (mut log, mut sm) = open_stores(dir.path()).unwrap_or_else(|e| panic!("reopen: {e}"));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(id(1, 100)));
    assert_eq!(state.last_log_id, Some(id(1, 105)));
    StorageHelper::new(&mut log, &mut sm)
        .get_initial_state()
        .await
        .unwrap_or_else(|e| panic!("the node cannot restart: {e}"));
    assert_eq!(sm.applied_state().await.unwrap().0, Some(id(1, 105)));
    assert_eq!(sm.data().read_at("t", 104).unwrap().unwrap().data, b"e105");
}

/// A snapshot install whose file cannot be written (here: a directory where its temporary
/// file goes) fails before any purge up to it is made durable: a restarted node never has its
/// log purged past the snapshot it keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_snapshot_install_makes_no_purge_durable_past_the_snapshot_kept() {
    let snapshot = leaders_snapshot_at_100().await;
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, mut sm) = open_stores(dir.path()).unwrap();
        log.blocking_append((1..=10).map(|i| append(1, i, "t", &format!("e{i}"))))
            .await
            .unwrap();
        apply_durably(
            &mut sm,
            (1..=10)
                .map(|i| append(1, i, "t", &format!("e{i}")))
                .collect(),
        )
        .await;
        std::fs::create_dir(dir.path().join("snapshot.tmp")).unwrap();
        log.purge(id(1, 100)).await.unwrap();
        assert!(
            sm.install_snapshot(&snapshot.meta, snapshot.snapshot)
                .await
                .is_err()
        );
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
    }
    std::fs::remove_dir(dir.path().join("snapshot.tmp")).unwrap();
    let (mut log, mut sm) = open_stores(dir.path()).unwrap();
    let purged = log.get_log_state().await.unwrap().last_purged_log_id;
    let kept = sm
        .get_current_snapshot()
        .await
        .unwrap()
        .map(|s| s.meta.last_log_id);
    assert!(
        purged <= kept.flatten(),
        "log purged to {purged:?}, snapshot kept at {kept:?}"
    );
}

/// Replication reads at most a few MiB of entries per request (at least one entry, however
/// large): a follower catching up on large entries gets requests it can take in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_reads_are_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _sm) = open_stores(dir.path()).unwrap();
    let big = |i: u64, len: usize| Entry::<TypeConfig> {
        log_id: id(1, i),
        payload: EntryPayload::Normal(Request::Append {
            topic: "t".into(),
            data: vec![i as u8; len],
        }),
    };
    log.blocking_append((1..=5).map(|i| big(i, 1 << 20)))
        .await
        .unwrap();
    log.blocking_append([big(6, 9 << 20)]).await.unwrap();
    let ids = |es: Vec<Entry<TypeConfig>>| es.iter().map(|e| e.log_id.index).collect::<Vec<_>>();
    // 1 MiB entries, and a little more each: three fit in 4 MiB, not four.
    assert_eq!(
        ids(log.limited_get_log_entries(1, 7).await.unwrap()),
        [1, 2, 3]
    );
    assert_eq!(
        ids(log.limited_get_log_entries(4, 7).await.unwrap()),
        [4, 5]
    );
    assert_eq!(
        ids(log.limited_get_log_entries(6, 7).await.unwrap()),
        [6],
        "one, however large"
    );
    // What openraft reads otherwise stays whole.
    assert_eq!(
        ids(log.try_get_log_entries(1..7).await.unwrap()),
        [1, 2, 3, 4, 5, 6]
    );
}

/// How long a test lets an append that should wait for a snapshot install go on waiting.
const STILL_WAITING: std::time::Duration = std::time::Duration::from_millis(300);

/// After openraft purged a follower's memory up to a snapshot it is installing, a new leader
/// may append after the snapshot before the install is done. Those appends are reported
/// durable only once the install is; if the node stops first, its log on disk holds the old
/// entries, then a gap, then the new ones: it reopens (the new ones, never acknowledged, are
/// passed over) instead of refusing to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_after_a_snapshot_wait_for_its_install_and_a_stop_before_it_leaves_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, mut sm) = open_stores(dir.path()).unwrap();
        log.blocking_append((1..=10).map(|i| append(1, i, "t", &format!("e{i}"))))
            .await
            .unwrap();
        apply_durably(
            &mut sm,
            (1..=5)
                .map(|i| append(1, i, "t", &format!("e{i}")))
                .collect(),
        )
        .await;
        // openraft: the purge up to the snapshot; the install has not finished.
        log.purge(id(1, 100)).await.unwrap();
        let mut appender = log.clone();
        let waiting = tokio::spawn(async move {
            appender
                .blocking_append((101..=105).map(|i| append(2, i, "t", &format!("n{i}"))))
                .await
        });
        tokio::time::sleep(STILL_WAITING).await;
        assert!(
            !waiting.is_finished(),
            "entries after an uninstalled snapshot were reported durable"
        );
        // The node stops before the install finishes.
        waiting.abort();
        let _ = waiting.await;
    }
    let (mut log, _sm) = open_stores(dir.path()).unwrap_or_else(|e| panic!("reopen: {e}"));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(id(1, 5)));
    assert_eq!(state.last_log_id, Some(id(1, 10)));
    let ids: Vec<_> = log
        .try_get_log_entries(6..=10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.log_id)
        .collect();
    assert_eq!(ids, (6..=10).map(|i| id(1, i)).collect::<Vec<_>>());
}

/// The appends that wait for a snapshot install are reported durable once it is, or failed
/// if it fails: never left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_waiting_for_a_snapshot_install_settle_with_it() {
    for fails in [false, true] {
        let snapshot = leaders_snapshot_at_100().await;
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut sm) = open_stores(dir.path()).unwrap();
        log.blocking_append((1..=10).map(|i| append(1, i, "t", &format!("e{i}"))))
            .await
            .unwrap();
        if fails {
            std::fs::create_dir(dir.path().join("snapshot.tmp")).unwrap();
        }
        log.purge(id(1, 100)).await.unwrap();
        let mut appender = log.clone();
        let waiting = tokio::spawn(async move {
            appender
                .blocking_append((101..=105).map(|i| append(1, i, "t", &format!("e{i}"))))
                .await
        });
        tokio::time::sleep(STILL_WAITING).await;
        assert!(
            !waiting.is_finished(),
            "fails {fails}: reported before the install"
        );
        let installed = sm.install_snapshot(&snapshot.meta, snapshot.snapshot).await;
        assert_eq!(installed.is_err(), fails);
        let settled = tokio::time::timeout(std::time::Duration::from_secs(30), waiting)
            .await
            .unwrap_or_else(|_| panic!("fails {fails}: the appends were left waiting"))
            .unwrap();
        assert_eq!(settled.is_err(), fails, "fails {fails}: {settled:?}");
    }
}

/// Entries that do not continue the log (a gap inside them, or a start past its end) are
/// refused before anything is written: the node reopens with the log it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_that_do_not_continue_the_log_are_refused_unwritten() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm) = open_stores(dir.path()).unwrap();
        log.blocking_append((1..=3).map(|i| append(1, i, "t", "x")))
            .await
            .unwrap();
        for bad in [[4, 6], [5, 6], [4, 4]] {
            let refused = log
                .blocking_append(bad.iter().map(|&i| append(1, i, "t", "y")))
                .await;
            assert!(refused.is_err(), "{bad:?} was taken");
        }
        assert_eq!(
            log.get_log_state().await.unwrap().last_log_id,
            Some(id(1, 3))
        );
    }
    let (mut log, _sm) = open_stores(dir.path()).unwrap_or_else(|e| panic!("reopen: {e}"));
    assert_eq!(
        log.get_log_state().await.unwrap().last_log_id,
        Some(id(1, 3))
    );
}

/// A purge is made durable no further than the snapshot file the node keeps, though its
/// applied record (saved every 1024 entries) is further on: restarted, the node's log is
/// never purged past the snapshot it can send a follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_purge_never_passes_the_snapshot_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, mut sm) = open_stores(dir.path()).unwrap();
        log.blocking_append((1..=1100).map(|i| append(1, i, "t", "x")))
            .await
            .unwrap();
        apply_durably(&mut sm, (1..=10).map(|i| append(1, i, "t", "x")).collect()).await;
        // Past 1024 entries: the applied record is saved, durable, at 1034.
        sm.apply(
            (11..=1100)
                .map(|i| append(1, i, "t", "x"))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
        log.purge(id(1, 1050)).await.unwrap();
    }
    let (mut log, mut sm) = open_stores(dir.path()).unwrap();
    let purged = log.get_log_state().await.unwrap().last_purged_log_id;
    let kept = sm
        .get_current_snapshot()
        .await
        .unwrap()
        .and_then(|s| s.meta.last_log_id);
    assert_eq!(kept, Some(id(1, 10)));
    assert!(
        purged <= kept,
        "log purged to {purged:?}, snapshot kept at {kept:?}"
    );
}
