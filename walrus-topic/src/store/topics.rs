//! The store's map of topics by name, read on every append and read, written only when a
//! topic is created.
//!
//! A single reader-writer lock would make every operation write its one state word: two
//! threads appending to two topics then pass that cache line back and forth twice per append
//! (a `perf annotate` of 2-thread appends put most of the lookup's samples on the lock's
//! compare-and-swap). A sharded lock gives each thread a read state of its own; a creation
//! takes every shard.
//!
//! crossbeam assigns each thread its shard once, on the thread's first read, from a registry
//! of its own shared by the process (a mutex taken then and when the thread exits). It holds
//! thread indices only: instances share no state through it.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};

use crate::topic::Topic;

/// Topics by name.
pub(crate) type Map = HashMap<Arc<str>, Arc<Topic>>;

/// [`Map`] behind a lock whose readers do not share a cache line.
#[derive(Debug)]
pub(crate) struct Topics(ShardedLock<Map>);

impl Topics {
    pub(crate) fn new(map: Map) -> Self {
        Self(ShardedLock::new(map))
    }

    /// The map, for lookups. A panic under the write lock cannot leave the map half-changed
    /// (an insert is one call), so a poisoned lock is read as it is.
    pub(crate) fn read(&self) -> ShardedLockReadGuard<'_, Map> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The map, to add a topic.
    pub(crate) fn write(&self) -> ShardedLockWriteGuard<'_, Map> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops every placeholder no one but the map holds: those whose own drop found another
    /// holder for a moment (a stats or retention pass, a second waiter on the name) and so
    /// kept them. A read pass first, the write lock only when there is one.
    pub(crate) fn sweep_placeholders(&self) {
        let unused = |t: &Arc<Topic>| unheld(t, 1);
        if !self.read().values().any(unused) {
            return;
        }
        self.write().retain(|_, t| !unused(t));
    }

    /// Drops `t` from the map if it is a placeholder (a topic no append ever wrote) that no
    /// one but the map and the caller (`t`) holds: a wait or a failed append on a name that
    /// never came leaves nothing behind.
    pub(crate) fn forget_unused(&self, t: &Arc<Topic>) {
        if !t.is_placeholder() {
            return;
        }
        let mut map = self.write();
        // Under the write lock no one takes it from the map: the map's and the caller's are
        // the only references, or someone else is using it.
        if unheld(t, 2) && map.get(&t.name).is_some_and(|m| Arc::ptr_eq(m, t)) {
            map.remove(&t.name);
        }
    }
}

/// Whether placeholder `t` is held by `refs` references to it and nothing else: no waiter,
/// no append under way, and no arrival future (which holds its progress, not the topic).
fn unheld(t: &Arc<Topic>, refs: usize) -> bool {
    Arc::strong_count(t) == refs && Arc::strong_count(&t.progress) == 1 && t.is_placeholder()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::TopicState;

    /// Readers on many threads (each locking its own shard) all come to see a topic added
    /// under the write lock while they read.
    #[test]
    fn readers_on_many_threads_see_a_topic_added_under_the_write_lock() {
        let topics = Topics::new(Map::new());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        std::thread::scope(|s| {
            let readers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        while !topics.read().contains_key("t") {
                            assert!(std::time::Instant::now() < deadline, "never saw the topic");
                            std::thread::yield_now();
                        }
                    })
                })
                .collect();
            let name: Arc<str> = Arc::from("t");
            topics.write().insert(
                name.clone(),
                Arc::new(Topic::new(name, TopicState::empty(), 0)),
            );
            for r in readers {
                assert!(r.join().is_ok());
            }
        });
        assert_eq!(topics.read().len(), 1);
    }
}
