//! The conformance suite, once per backend (and per interesting configuration of one).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use walrus_io::conformance::{self, Target, full_device};
use walrus_io::{
    BackendKind, BackendOptions, CrashMode, Fault, FaultRule, OpKind, SimStorage, Storage,
    UringOptions, open_backend_with,
};

/// A backend on the real disk (under target/, never a tmpfs), in a fresh directory.
fn real(kind: BackendKind, options: BackendOptions) -> (Target, tempfile::TempDir) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let storage = open_backend_with(kind, &options).unwrap();
    let target = Target {
        storage,
        root: dir.path().to_path_buf(),
        restart: Box::new(move || open_backend_with(kind, &options).unwrap()),
        full_file: full_device().map(|dev| {
            Box::new(move |s: &dyn Storage| s.open(dev))
                as Box<dyn Fn(&dyn Storage) -> std::io::Result<_>>
        }),
        unsynced: Some(Box::new(walrus_io::conformance::unsynced_pages)),
    };
    (target, dir)
}

/// io_uring doing everything on the ring.
fn all_on_ring() -> BackendOptions {
    let mut options = BackendOptions::default();
    options.uring = UringOptions::default();
    options.uring.single_ops_on_ring = true;
    options
}

/// ... with tiny rings: every batch is split, chains are short, callers queue for rings.
fn tiny_rings() -> BackendOptions {
    let mut options = all_on_ring();
    options.uring.ring_entries = 4;
    options.uring.max_rings = 2;
    options
}

/// The simulator; a "restart" is a crash in `mode`.
fn sim(seed: u64, mode: CrashMode) -> (Target, ()) {
    let sim = SimStorage::new(seed);
    let root = PathBuf::from("/conformance");
    sim.create_dir_all(&root).unwrap();
    let restarted = sim.clone();
    let faulty = sim.clone();
    let inspected = sim.clone();
    let full = root.join("full.seg");
    let target = Target {
        storage: Arc::new(sim),
        root,
        restart: Box::new(move || {
            restarted.crash(mode);
            Arc::new(restarted.clone())
        }),
        full_file: Some(Box::new(move |s: &dyn Storage| {
            let f = s.create(&full, 0)?;
            faulty.inject(
                FaultRule::new(Fault::Enospc)
                    .op(OpKind::Write)
                    .path(Path::new(&full))
                    .forever(),
            );
            Ok(f)
        })),
        unsynced: Some(Box::new(move |p: &Path| {
            inspected.unsynced_sectors(p).ok().map(|n| n as u64)
        })),
    };
    (target, ())
}

macro_rules! suite {
    ($name:ident, $target:expr) => {
        mod $name {
            use super::*;
            suite!(@checks $target;
                kind_is_concrete namespace round_trip vectored_writes batched_writes large_batches
                large_offsets concurrent_disjoint_writers unwritten_and_past_end_reads
                sync_and_len syncs_leave_nothing_unsynced allocate start_write_back holes_read_as_zero handles_share_a_file read_only_handles
                reopen_persistence error_reporting
                storage_full);
        }
    };
    (@checks $target:expr; $($check:ident)*) => {
        $(
            #[test]
            fn $check() {
                let (mut target, _dir) = $target;
                conformance::$check(&mut target);
            }
        )*

        #[test]
        fn every_check_is_instantiated() {
            let here = [$(stringify!($check)),*];
            let all: Vec<&str> = conformance::CHECKS.iter().map(|(name, _)| *name).collect();
            assert_eq!(here.to_vec(), all);
        }
    };
}

suite!(pwrite, real(BackendKind::Pwrite, BackendOptions::default()));
suite!(
    io_uring,
    real(BackendKind::IoUring, BackendOptions::default())
);
suite!(
    io_uring_all_on_ring,
    real(BackendKind::IoUring, all_on_ring())
);
suite!(
    io_uring_tiny_rings,
    real(BackendKind::IoUring, tiny_rings())
);
suite!(mmap, real(BackendKind::Mmap, BackendOptions::default()));
suite!(auto, real(BackendKind::Auto, BackendOptions::default()));
suite!(sim_drop_unsynced, sim(1, CrashMode::DropUnsynced));
suite!(sim_tear_last_write, sim(2, CrashMode::TearLastWrite));
suite!(sim_random_sectors, sim(3, CrashMode::RandomSectors));
suite!(sim_keep_written, sim(4, CrashMode::KeepWritten));

#[test]
fn run_all_runs_on_one_target() {
    let (mut target, _) = sim(9, CrashMode::DropUnsynced);
    conformance::run_all(&mut target);
}
