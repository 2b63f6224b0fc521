//! The two knobs users already know: read consistency and fsync schedule.

/// When a topic's read cursor is persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ReadConsistency {
    /// Every consuming read persists the cursor before it returns (synced, under every
    /// schedule but [`FsyncSchedule::NoFsync`]): a reopened instance never hands out an entry
    /// that was already consumed, also after power loss.
    #[default]
    StrictlyAtOnce,
    /// The cursor is persisted at least every `persist_every` consuming reads (and on
    /// [`flush`](crate::Walrus::flush) and drop; synced as under `StrictlyAtOnce`): after a
    /// crash at most the last `persist_every - 1` consumed entries are handed out again.
    AtLeastOnce {
        /// Consuming reads between two cursor writes (0 is treated as 1).
        persist_every: u32,
    },
}

impl ReadConsistency {
    pub(crate) fn persist_every(self) -> u32 {
        match self {
            Self::StrictlyAtOnce => 1,
            Self::AtLeastOnce { persist_every } => persist_every.max(1),
        }
    }
}

/// When appended data (and persisted cursors) reach stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsyncSchedule {
    /// An append returns only once its entry is on stable storage. Concurrent appenders share
    /// one sync (group commit): an append is acknowledged only after a sync that started after
    /// its entry was written.
    SyncEach,
    /// A background flusher syncs at least every this many milliseconds (0 is taken as 1).
    Milliseconds(u64),
    /// Never sync, except when [`flush`](crate::Walrus::flush) is called.
    NoFsync,
}

impl Default for FsyncSchedule {
    /// `Milliseconds(200)`.
    fn default() -> Self {
        Self::Milliseconds(200)
    }
}
