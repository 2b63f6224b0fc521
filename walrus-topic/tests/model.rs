//! Model test: random sequences of appends, consuming reads and peeks by several consumers,
//! commits, consumer removals, topic deletions, reopens and power cuts after a sync, against a
//! sequential model of what each topic holds and where each consumer stands.
//!
//! Topics `a` and `b` keep everything until every consumer consumed it: each read must return
//! exactly the model's next entry, and the store may only have released entries below every
//! consumer's cursor. Topic `r` has a size retention: the store may drop its oldest entries
//! unread (never more than the limit asks), and a consumer behind them continues at the oldest
//! entry kept. `PROPTEST_CASES` sets the number of cases (`cargo xtask proptest`).
#![cfg(not(loom))]

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use proptest::prelude::*;
use walrus_io::{CrashMode, SimStorage, Storage};
use walrus_topic::{Retention, Store, StoreOptions};

const TOPICS: [&str; 3] = ["a", "b", "r"];
const CONSUMERS: [&str; 3] = ["", "x", "y"];
const BLOCK: u64 = 8192;
/// Retention of topic `r`.
const R_MAX_BYTES: u64 = 24 * 1024;

fn options() -> StoreOptions {
    StoreOptions::new()
        .with_block_len(BLOCK)
        .with_segment_len(64 * 1024)
        .with_topic_retention("r", Retention::default().with_max_bytes(R_MAX_BYTES))
}

fn open(sim: &SimStorage) -> Store {
    Store::open("/m", Arc::new(sim.clone()) as Arc<dyn Storage>, options())
        .unwrap_or_else(|e| panic!("reopen failed: {e}"))
}

#[derive(Debug, Clone)]
enum Op {
    Append(usize, usize),
    Read(usize, usize, bool),
    Batch(usize, usize),
    /// Commit to the oldest retained offset plus this many (may be past the end).
    Commit(usize, usize, u64),
    Remove(usize, usize),
    Delete(usize),
    Reopen,
    SyncAndCrash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0..3usize, 0..1500usize).prop_map(|(t, n)| Op::Append(t, n)),
        8 => (0..3usize, 0..3usize, any::<bool>()).prop_map(|(t, c, k)| Op::Read(t, c, k)),
        2 => (0..3usize, 0..3usize).prop_map(|(t, c)| Op::Batch(t, c)),
        2 => (0..3usize, 0..3usize, 0..40u64).prop_map(|(t, c, o)| Op::Commit(t, c, o)),
        1 => (0..3usize, 0..3usize).prop_map(|(t, c)| Op::Remove(t, c)),
        1 => (0..3usize).prop_map(Op::Delete),
        1 => Just(Op::Reopen),
        1 => Just(Op::SyncAndCrash),
    ]
}

fn payload(offset: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (offset as usize * 7 + i) as u8).collect()
}

#[derive(Debug, Default)]
struct TopicModel {
    /// Payloads by offset (from 0; entries of a deleted incarnation stay, unreadable).
    entries: Vec<Vec<u8>>,
    /// Listed: appended to since it was created or deleted.
    listed: bool,
    /// Entries below this were deleted with an earlier incarnation.
    deleted_below: u64,
    consumers: BTreeMap<String, u64>,
    /// The oldest offset the store retained at the last check (never decreases).
    first_retained: u64,
    /// The store may have released entries below this: the highest bound every consumer
    /// had passed at some point (released entries stay released when consumers go).
    releasable: u64,
}

impl TopicModel {
    fn end(&self) -> u64 {
        self.entries.len() as u64
    }
}

struct Harness {
    sim: SimStorage,
    store: Option<Store>,
    topics: Vec<TopicModel>,
}

impl Harness {
    fn store(&self) -> &Store {
        self.store.as_ref().expect("open")
    }

    /// The store's oldest retained offset, checked against the model's bounds.
    fn first_retained(&mut self, t: usize) -> u64 {
        let name = TOPICS[t];
        let m = &self.topics[t];
        let Some(first) = self.store().first_retained_offset(name) else {
            assert!(
                !m.listed,
                "{name}: listed in the model but unknown to the store"
            );
            return m.end();
        };
        let m = &mut self.topics[t];
        assert!(
            first >= m.first_retained,
            "{name}: first retained went back"
        );
        assert!(
            first >= m.deleted_below && first <= m.end(),
            "{name}: first {first}"
        );
        if name != "r" {
            let lowest = m.consumers.values().min().copied().unwrap_or(m.releasable);
            assert!(
                first <= lowest,
                "{name}: entries from {lowest} released while a consumer still needs them"
            );
        } else {
            // Never more retained than the limit asks for, beyond the newest blocks.
            let kept: u64 = m.entries[first as usize..]
                .iter()
                .map(|e| e.len() as u64 + 24)
                .sum();
            assert!(
                kept <= R_MAX_BYTES + 3 * BLOCK,
                "r: {kept} bytes retained over a limit of {R_MAX_BYTES}"
            );
            // Nor fewer: past what every consumer consumed, retention releases a block only
            // while what stays after it is over the limit, so what stays is at least the
            // limit less a block (and a frame that did not fit the one before it).
            let lowest = m.consumers.values().min().copied().unwrap_or(m.releasable);
            let total: u64 = m.entries[lowest.min(m.end()) as usize..]
                .iter()
                .map(|e| e.len() as u64 + 24)
                .sum();
            if first > lowest {
                assert!(
                    kept + BLOCK + 1500 + 24 >= R_MAX_BYTES.min(total),
                    "r: released down to {kept} bytes from {lowest} to {first}, the limit is \
                     {R_MAX_BYTES}"
                );
            }
        }
        m.first_retained = first;
        first
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Append(t, len) => {
                let m = &mut self.topics[t];
                let offset = m.end();
                let data = payload(offset, len);
                let got = self.store().append(TOPICS[t], &data).unwrap();
                let m = &mut self.topics[t];
                assert_eq!(got, offset, "{}: append offset", TOPICS[t]);
                if !m.listed {
                    m.listed = true;
                    m.consumers.clear();
                }
                m.entries.push(data);
            }
            Op::Read(t, c, consume) => self.read(t, c, consume, false),
            Op::Batch(t, c) => self.read(t, c, true, true),
            Op::Commit(t, c, ahead) => {
                let first = self.first_retained(t);
                let (name, consumer) = (TOPICS[t], CONSUMERS[c]);
                let target = first + ahead;
                let result = self.store().commit_as(name, consumer, target);
                let m = &mut self.topics[t];
                if !m.listed {
                    assert_eq!(result.unwrap_err().kind(), io::ErrorKind::NotFound);
                } else if target > m.end() {
                    assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidInput);
                } else {
                    result.unwrap();
                    m.consumers.insert(consumer.to_owned(), target);
                }
            }
            Op::Remove(t, c) => {
                let existed = self
                    .store()
                    .remove_consumer(TOPICS[t], CONSUMERS[c])
                    .unwrap();
                let m = &mut self.topics[t];
                let expected = m.listed && m.consumers.remove(CONSUMERS[c]).is_some();
                assert_eq!(
                    existed, expected,
                    "{}/{:?}: removed",
                    TOPICS[t], CONSUMERS[c]
                );
            }
            Op::Delete(t) => {
                let existed = self.store().delete_topic(TOPICS[t]).unwrap();
                let m = &mut self.topics[t];
                assert_eq!(existed, m.listed, "{}: deleted", TOPICS[t]);
                if m.listed {
                    m.listed = false;
                    m.consumers.clear();
                    m.deleted_below = m.end();
                }
            }
            Op::Reopen => {
                self.store = None;
                self.store = Some(open(&self.sim));
            }
            Op::SyncAndCrash => {
                self.store().sync().unwrap();
                self.store = None;
                self.sim.crash(CrashMode::DropUnsynced);
                self.store = Some(open(&self.sim));
            }
        }
        for m in &mut self.topics {
            let bound = m.consumers.values().min().copied().unwrap_or(0);
            m.releasable = m.releasable.max(bound).max(m.deleted_below);
        }
        self.check();
    }

    fn read(&mut self, t: usize, c: usize, consume: bool, batch: bool) {
        let first = self.first_retained(t);
        let (name, consumer) = (TOPICS[t], CONSUMERS[c]);
        let got: Vec<(u64, Vec<u8>)> = if batch {
            self.store()
                .read_batch_as(name, consumer, 4096, consume)
                .unwrap()
        } else {
            self.store()
                .read_next_as(name, consumer, consume)
                .unwrap()
                .into_iter()
                .collect()
        };
        let m = &mut self.topics[t];
        if !m.listed {
            assert!(
                got.is_empty(),
                "{name}: read from a topic that is not there"
            );
            return;
        }
        let from = m
            .consumers
            .get(consumer)
            .copied()
            .unwrap_or(first)
            .max(first);
        let mut expected = Vec::new();
        let mut bytes = 0;
        for o in from..m.end() {
            let e = &m.entries[o as usize];
            if !expected.is_empty() && (!batch || bytes + e.len() > 4096) {
                break;
            }
            bytes += e.len();
            expected.push((o, e.clone()));
        }
        assert_eq!(
            got.iter().map(|e| e.0).collect::<Vec<_>>(),
            expected.iter().map(|e| e.0).collect::<Vec<_>>(),
            "{name}/{consumer:?}: offsets read"
        );
        assert!(got == expected, "{name}/{consumer:?}: payloads read");
        if consume {
            // A consuming read creates the consumer, even with nothing to read.
            let next = got.last().map_or(from, |last| last.0 + 1);
            m.consumers.insert(consumer.to_owned(), next);
        }
    }

    fn check(&mut self) {
        let mut listed: Vec<&str> = TOPICS
            .iter()
            .zip(&self.topics)
            .filter(|(_, m)| m.listed)
            .map(|(n, _)| *n)
            .collect();
        listed.sort_unstable();
        assert_eq!(self.store().topics(), listed);
        for (t, name) in TOPICS.iter().enumerate() {
            let first = self.first_retained(t);
            let m = &self.topics[t];
            if !m.listed {
                continue;
            }
            assert_eq!(self.store().end_offset(name), Some(m.end()));
            let names: Vec<String> = self
                .store()
                .consumers(name)
                .into_iter()
                .map(|c| c.name)
                .collect();
            let expected: Vec<String> = m.consumers.keys().cloned().collect();
            assert_eq!(names, expected, "{name}: consumers");
            for (consumer, &cursor) in &m.consumers {
                assert_eq!(
                    self.store().cursor_as(name, consumer),
                    Some(cursor.max(first)),
                    "{name}/{consumer:?}: cursor"
                );
            }
            // Spot checks of what is retained.
            for o in [first, (first + m.end()) / 2, m.end().saturating_sub(1)] {
                if o < m.end() && o >= first {
                    assert_eq!(
                        self.store().read_at(name, o).unwrap().as_ref(),
                        Some(&m.entries[o as usize]),
                        "{name}: read_at {o}"
                    );
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn consumers_retention_and_deletion_follow_the_model(
        ops in prop::collection::vec(op(), 1..120),
        seed in any::<u64>(),
    ) {
        let sim = SimStorage::new(seed);
        let mut h = Harness {
            store: Some(open(&sim)),
            sim,
            topics: (0..TOPICS.len()).map(|_| TopicModel::default()).collect(),
        };
        for op in &ops {
            h.apply(op);
        }
    }
}
