//! What a node's stores say after they are reopened: the log after appends, truncation and
//! purge; the state machine re-applying entries it had applied before a restart (counted, not
//! appended twice).

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};
use walrus_raft::{Request, Response, TypeConfig, open_stores};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_survives_reopen_after_truncate_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm) = open_stores(dir.path()).unwrap();
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
        let (mut log, _sm) = open_stores(dir.path()).unwrap();
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
