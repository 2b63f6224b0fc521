//! Durable tickets: wait, poll, await (with pollster's one-thread executor: no runtime needed), and the
//! durable-offset watermark.

use std::io;
use std::sync::Arc;

use walrus::Storage;
use walrus::sim::{CrashMode, Fault, FaultRule, OpKind, SimStorage};
use walrus::{FsyncSchedule, Walrus};

// Runs a future to completion on this thread, parking between polls (no runtime).
mod common;

/// `pollster::block_on`, failing the test rather than hanging it when a ticket never settles.
fn block_on<F>(ticket: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    common::within("a ticket", move || pollster::block_on(ticket))
}

fn sim_wal(sim: &SimStorage, schedule: FsyncSchedule) -> Walrus {
    Walrus::builder()
        .data_dir("/t")
        .storage(Arc::new(sim.clone()) as Arc<dyn Storage>)
        .fsync_schedule(schedule)
        .build()
        .unwrap()
}

#[test]
fn wait_makes_durable_under_every_schedule() {
    for schedule in [
        FsyncSchedule::NoFsync,
        FsyncSchedule::Milliseconds(10_000),
        FsyncSchedule::SyncEach,
    ] {
        let sim = SimStorage::new(31);
        {
            let wal = sim_wal(&sim, schedule);
            let t = wal.append_with_ticket("t", b"a").unwrap();
            assert_eq!(t.offset(), 0);
            assert_eq!(wal.durable_offset("t"), Some(0));
            assert_eq!(t.wait().unwrap(), 0..1);
            assert_eq!(wal.durable_offset("t"), Some(1));
            let b = wal.append_batch_with_ticket("t", &[b"b", b"c"]).unwrap();
            assert_eq!(b.offsets(), 1..3);
            assert_eq!(block_on(b).unwrap(), 1..3, "{schedule:?}");
            sim.crash(CrashMode::DropUnsynced);
            std::mem::forget(wal);
        }
        let wal = sim_wal(&sim, schedule);
        assert_eq!(wal.end_offset("t"), Some(3), "{schedule:?}");
    }
}

#[test]
fn many_tickets_share_syncs() {
    let sim = SimStorage::new(32);
    let wal = sim_wal(&sim, FsyncSchedule::NoFsync);
    let before = sim.stats().data_syncs;
    let tickets: Vec<_> = (0..100u32)
        .map(|i| wal.append_with_ticket("t", &i.to_le_bytes()).unwrap())
        .collect();
    assert!(!tickets[99].is_durable().unwrap());
    for t in tickets {
        block_on(t).unwrap();
    }
    let syncs = sim.stats().data_syncs - before;
    assert!(syncs <= 10, "{syncs} syncs for 100 awaited tickets");
    assert_eq!(wal.durable_offset("t"), Some(100));
}

#[test]
fn a_failed_sync_fails_the_ticket() {
    let sim = SimStorage::new(33);
    let wal = sim_wal(&sim, FsyncSchedule::NoFsync);
    let t = wal.append_with_ticket("t", b"x").unwrap();
    sim.inject(FaultRule::new(Fault::Eio).op(OpKind::Sync));
    let err: io::Error = block_on(t).unwrap_err();
    // Recognisable, with the original error kept: EIO, not a bare `Other`.
    assert!(walrus::is_poisoned(&err), "{err:?}");
    let cause = walrus_topic::poisoned_cause(&err).unwrap();
    assert_eq!(cause.raw_os_error(), Some(libc_eio()), "{err}");
    assert_eq!(err.kind(), io::Error::from_raw_os_error(libc_eio()).kind());
    let refused = wal.append_with_ticket("t", b"y").unwrap_err();
    assert!(
        walrus::is_poisoned(&refused),
        "writes refused after a failed sync: {refused:?}"
    );
    assert_eq!(refused.kind(), err.kind(), "the original kind, not Other");
}

/// EIO's number on Linux.
fn libc_eio() -> i32 {
    5
}
