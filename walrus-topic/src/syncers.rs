//! Helper threads that sync several segment files at once: each `fdatasync` mostly waits on
//! the device, so the files of a store's lanes are synced in parallel. The threads are the
//! store's own (spawned on first need, at most one per extra lane) rather than spawned per
//! sync, which cost ~80 µs a sync on the development machine.

use std::io;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use parking_lot::Mutex;

use crate::chain::SegmentHandle;

/// A file to sync and where its result goes.
type Job = (Arc<SegmentHandle>, Sender<io::Result<()>>);

/// The sync helpers of one store.
#[derive(Debug)]
pub(crate) struct Syncers {
    jobs: Mutex<Sender<Job>>,
    queue: Arc<Mutex<Receiver<Job>>>,
    /// Helpers running, and the most there may be.
    spawned: Mutex<usize>,
    max: usize,
}

impl Syncers {
    /// Helpers for syncing up to `max + 1` files at once (none are started yet).
    pub(crate) fn new(max: usize) -> Self {
        let (jobs, queue) = channel();
        Self {
            jobs: Mutex::new(jobs),
            queue: Arc::new(Mutex::new(queue)),
            spawned: Mutex::new(0),
            max,
        }
    }

    /// Syncs every dirty file in `files` (see [`SegmentHandle::sync`]): the first on this
    /// thread, the others on helpers, all at once.
    ///
    /// # Errors
    /// The first error of any of the syncs (all of them are waited for).
    pub(crate) fn sync_all(&self, files: &[Arc<SegmentHandle>]) -> io::Result<()> {
        let dirty: Vec<&Arc<SegmentHandle>> = files.iter().filter(|h| h.is_dirty()).collect();
        let (first, rest) = match dirty.as_slice() {
            [] => return Ok(()),
            [one] => return one.sync(),
            [first, rest @ ..] => (first, rest),
        };
        let helpers = self.start(rest.len());
        let (reply, results) = channel();
        let mut here = Vec::new();
        let mut sent = 0;
        for (i, h) in rest.iter().enumerate() {
            let job = (Arc::clone(h), reply.clone());
            if i < helpers && self.jobs.lock().send(job).is_ok() {
                sent += 1;
            } else {
                here.push(h);
            }
        }
        drop(reply);
        let mut result = first.sync();
        for h in here {
            result = result.and(h.sync());
        }
        let mut received = 0;
        for r in results {
            received += 1;
            result = result.and(r);
        }
        if received < sent {
            result = result.and(Err(io::Error::other(
                "a sync helper thread died before reporting its sync",
            )));
        }
        result
    }

    /// Makes sure up to `wanted` helpers run (at most `max`); how many do.
    fn start(&self, wanted: usize) -> usize {
        let mut spawned = self.spawned.lock();
        while *spawned < wanted.min(self.max) {
            let queue = Arc::clone(&self.queue);
            let started = std::thread::Builder::new()
                .name("walrus-sync".into())
                .spawn(move || helper(&queue));
            if let Err(e) = started {
                tracing::warn!(error = %e, "could not start a sync helper; syncing in turn");
                break;
            }
            *spawned += 1;
        }
        *spawned
    }
}

/// A helper: syncs the files it is given until the store (its job sender) is gone. A sync
/// that panics (a backend's) is that sync's error, and the helper goes on: dead, it would
/// leave the jobs queued for it, and their callers, waiting for ever.
fn helper(queue: &Mutex<Receiver<Job>>) {
    loop {
        let job = queue.lock().recv();
        let Ok((file, reply)) = job else {
            return;
        };
        let synced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| file.sync()))
            .unwrap_or_else(|_| {
                Err(io::Error::other(format!(
                    "segment {}: its sync panicked",
                    file.file.path().display()
                )))
            });
        let _ = reply.send(synced);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use walrus_io::Storage;
    use walrus_io::sim::{Fault, FaultRule, OpKind, SimStorage};

    use super::*;

    fn dirty_files(sim: &SimStorage, n: u64) -> Vec<Arc<SegmentHandle>> {
        sim.create_dir_all(Path::new("/d")).unwrap();
        (0..n)
            .map(|id| {
                let file = sim
                    .create(&Path::new("/d").join(id.to_string()), 8192)
                    .unwrap();
                file.write_at(b"data", 0).unwrap();
                let h = Arc::new(SegmentHandle::new(id, file, 8192, 8192, 1, true));
                h.mark_dirty();
                h
            })
            .collect()
    }

    #[test]
    fn every_dirty_file_is_synced_by_at_most_max_helpers() {
        let sim = SimStorage::new(3);
        let files = dirty_files(&sim, 4);
        let syncers = Syncers::new(2);
        syncers.sync_all(&files).unwrap();
        assert!(files.iter().all(|h| !h.is_dirty()));
        assert_eq!(
            *syncers.spawned.lock(),
            2,
            "two helpers, the third file synced in turn"
        );
        assert_eq!(sim.stats().data_syncs, 4);
        // Clean files are not synced again.
        syncers.sync_all(&files).unwrap();
        assert_eq!(sim.stats().data_syncs, 4);
    }

    #[test]
    fn a_failed_sync_on_a_helper_reaches_the_caller() {
        let sim = SimStorage::new(4);
        let files = dirty_files(&sim, 3);
        sim.inject(FaultRule::new(Fault::Eio).op(OpKind::Sync).path("/d/2"));
        let syncers = Syncers::new(2);
        let e = syncers.sync_all(&files).unwrap_err();
        assert!(
            e.to_string().contains("/d/2"),
            "the failed file's error: {e}"
        );
        assert!(files[2].is_dirty() && !files[0].is_dirty() && !files[1].is_dirty());
    }

    /// A sync that panics on a helper is its caller's error, and the helper lives on: the
    /// next calls, concurrent or not, get their syncs done (a dead helper left its queued jobs
    /// unserved, and their callers waiting for ever).
    #[test]
    fn a_sync_that_panics_on_a_helper_fails_its_caller_and_the_helper_lives_on() {
        let sim = SimStorage::new(5);
        let files = dirty_files(&sim, 4);
        sim.inject(FaultRule::new(Fault::Panic).op(OpKind::Sync).path("/d/1"));
        let syncers = Arc::new(Syncers::new(2));
        let e = syncers.sync_all(&files[..2]).unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
        let (done, finished) = std::sync::mpsc::channel();
        let rest: Vec<Arc<SegmentHandle>> = files[2..].to_vec();
        let s = Arc::clone(&syncers);
        std::thread::spawn(move || done.send(s.sync_all(&rest)));
        let synced = finished.recv_timeout(std::time::Duration::from_secs(10));
        synced.expect("a sync waited for a dead helper").unwrap();
        assert!(!files[2].is_dirty() && !files[3].is_dirty());
    }
}
