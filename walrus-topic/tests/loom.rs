//! loom models of group commit together with per-file sync tracking: under every interleaving
//! of appenders, a flusher, a background syncer and a ticket waiter, no append is acknowledged
//! before a sync that started after its write completed has finished.
//!
//! Run with `cargo xtask loom` (it sets `RUSTFLAGS="--cfg loom"` and a separate target dir).
//!
//! The file is modelled by two counters: `written` (writes completed, each write numbered by
//! it) and `durable` (the highest write a *completed* sync covers). A sync captures `written`
//! when it starts and publishes it when it ends, as `fdatasync` does: writes completed while
//! it runs may or may not be covered, so the model counts them as not covered.
#![cfg(loom)]

use std::io;

use loom::thread;
use walrus_alloc::sync::Arc;
use walrus_alloc::sync::atomic::{AtomicU64, Ordering};
use walrus_topic::GroupCommit;
use walrus_topic::durability::FileSync;

#[derive(Default)]
struct File {
    written: AtomicU64,
    durable: AtomicU64,
    sync: FileSync,
}

impl File {
    /// A write completes (and is marked, as the engine does after every write); its number.
    fn write(&self) -> u64 {
        let n = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        self.sync.mark();
        n
    }

    /// `fdatasync`: covers what was written when it started, counts only once it returns.
    fn sync_data(&self) -> io::Result<()> {
        let covers = self.written.load(Ordering::SeqCst);
        thread::yield_now(); // in flight: other threads write and sync meanwhile
        self.durable.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }

    /// The engine's sync of this file, through the per-file tracker.
    fn sync(&self) -> io::Result<()> {
        self.sync.sync(|| self.sync_data())
    }
}

struct Instance {
    file: File,
    commits: GroupCommit,
}

fn instance() -> Arc<Instance> {
    Arc::new(Instance {
        file: File::default(),
        commits: GroupCommit::default(),
    })
}

/// A `SyncEach` append: write, take a ticket, wait (leading the sync if nobody else is).
fn append(inst: &Instance) {
    let n = inst.file.write();
    let ticket = inst.commits.ticket();
    inst.commits
        .wait(ticket, || inst.file.sync())
        .expect("the model's syncs never fail");
    let durable = inst.file.durable.load(Ordering::SeqCst);
    assert!(
        durable >= n,
        "write {n} acknowledged, but the completed syncs cover only {durable}"
    );
}

/// A sync outside group commit (`flush`, the background syncer, drop).
fn external_sync(inst: &Instance) {
    let number = inst.commits.begin_external();
    let result = inst.file.sync();
    inst.commits.finish_external(number, &result);
}

#[test]
fn appenders_and_a_flusher() {
    loom::model(|| {
        let inst = instance();
        let a = {
            let inst = inst.clone();
            thread::spawn(move || append(&inst))
        };
        let flusher = {
            let inst = inst.clone();
            thread::spawn(move || external_sync(&inst))
        };
        append(&inst);
        a.join().unwrap();
        flusher.join().unwrap();
    });
}

#[test]
fn an_append_racing_two_external_syncs() {
    loom::model(|| {
        let inst = instance();
        let syncers: Vec<_> = (0..2)
            .map(|_| {
                let inst = inst.clone();
                thread::spawn(move || external_sync(&inst))
            })
            .collect();
        append(&inst);
        for s in syncers {
            s.join().unwrap();
        }
    });
}

/// A ticket taken before the background syncer's sync starts: that sync covers it, so the
/// waiter is told it is durable (never `BrokenPipe`: the caller would retry a durable append),
/// whether it waits before, during or after the sync, and whatever the close does.
#[test]
fn a_ticket_waiter_and_the_background_syncer() {
    loom::model(|| {
        let inst = instance();
        let n = inst.file.write();
        let ticket = inst.commits.ticket();
        let waiter = {
            let inst = inst.clone();
            thread::spawn(move || {
                inst.commits.wait_passive(ticket, || {}).unwrap();
                assert!(inst.file.durable.load(Ordering::SeqCst) >= n);
            })
        };
        let syncer = {
            let inst = inst.clone();
            thread::spawn(move || external_sync(&inst))
        };
        syncer.join().unwrap();
        inst.commits.close();
        waiter.join().unwrap();
    });
}

/// A ticket taken while the background syncer's sync may be running: covered by it, or told
/// at the close that no sync covered it; never left hanging, never told durable when not.
#[test]
fn a_ticket_taken_while_the_background_syncer_runs() {
    loom::model(|| {
        let inst = instance();
        let waiter = {
            let inst = inst.clone();
            thread::spawn(move || {
                let n = inst.file.write();
                let ticket = inst.commits.ticket();
                match inst.commits.wait_passive(ticket, || {}) {
                    Ok(()) => assert!(inst.file.durable.load(Ordering::SeqCst) >= n),
                    Err(e) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe),
                }
            })
        };
        let syncer = {
            let inst = inst.clone();
            thread::spawn(move || external_sync(&inst))
        };
        syncer.join().unwrap();
        // The instance closes (drop): a waiter no sync covered is told so, never left hanging.
        inst.commits.close();
        waiter.join().unwrap();
    });
}

#[test]
fn file_sync_alone_never_reports_an_uncovered_write() {
    loom::model(|| {
        let file = Arc::new(File::default());
        let other = {
            let file = file.clone();
            thread::spawn(move || {
                let n = file.write();
                file.sync().unwrap();
                assert!(file.durable.load(Ordering::SeqCst) >= n);
            })
        };
        let n = file.write();
        file.sync().unwrap();
        assert!(file.durable.load(Ordering::SeqCst) >= n);
        other.join().unwrap();
    });
}

/// A topic's end, published with `Release` as the writer does, then announced.
struct Topic {
    end: AtomicU64,
    arrivals: walrus_topic::arrival::Arrivals,
}

fn topic() -> Arc<Topic> {
    Arc::new(Topic {
        end: AtomicU64::new(0),
        arrivals: walrus_topic::arrival::Arrivals::default(),
    })
}

/// A waker that unparks the polling thread (a minimal `block_on`).
struct Unpark(loom::thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }
}

fn publish(t: &Topic, end: u64) {
    t.end.store(end, Ordering::Release);
    t.arrivals.notify();
}

#[test]
fn a_blocked_reader_is_never_left_asleep_after_an_append() {
    // loom reports a deadlock if the waiter can sleep through the only notification.
    loom::model(|| {
        let t = topic();
        let writer = {
            let t = t.clone();
            thread::spawn(move || publish(&t, 1))
        };
        assert!(t.arrivals.wait(None, || t.end.load(Ordering::Acquire) > 0));
        writer.join().unwrap();
        assert_eq!(t.arrivals.waiting(), 0);
    });
}

#[test]
fn an_arrival_future_is_never_left_pending_after_an_append() {
    loom::model(|| {
        let t = topic();
        let writer = {
            let t = t.clone();
            thread::spawn(move || {
                publish(&t, 1);
                publish(&t, 2);
            })
        };
        let mut registration = t.arrivals.register();
        let ready = || t.end.load(Ordering::Acquire) > 1;
        let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(thread::current())));
        let mut cx = std::task::Context::from_waker(&waker);
        // Bounded: each pending poll parks until a wake (loom flags a lost one as a deadlock).
        for _ in 0..8 {
            if t.arrivals
                .poll(&mut registration, &mut cx, ready)
                .is_ready()
            {
                break;
            }
            thread::park();
        }
        assert!(ready(), "woken but never ready");
        writer.join().unwrap();
        assert_eq!(t.arrivals.waiting(), 0);
    });
}

#[test]
fn a_future_dropped_while_pending_unregisters() {
    loom::model(|| {
        let t = topic();
        let writer = {
            let t = t.clone();
            thread::spawn(move || publish(&t, 1))
        };
        let mut registration = t.arrivals.register();
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let _ = t.arrivals.poll(&mut registration, &mut cx, || {
            t.end.load(Ordering::Acquire) > 0
        });
        t.arrivals.unregister(&mut registration);
        writer.join().unwrap();
        assert_eq!(t.arrivals.waiting(), 0);
    });
}
