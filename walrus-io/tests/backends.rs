//! Backend-specific behaviour the conformance suite cannot express: ring reuse and single
//! submissions (io_uring), Auto's probe and fallback, sticky sync failures on real files, the
//! mmap backend on a full disk.

use std::io::{self, ErrorKind, IoSlice};
use std::path::Path;
use std::sync::Arc;

use walrus_io::{
    BackendKind, BackendOptions, PwriteStorage, SegmentFile, Storage, UringOptions, UringStorage,
    WriteOp, conformance, open_backend, open_backend_with, os_error,
};

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

#[test]
fn uring_reuses_one_ring_for_sequential_calls() {
    let dir = scratch();
    let mut options = UringOptions::default();
    options.single_ops_on_ring = true;
    let storage = UringStorage::with_options(&options).unwrap();
    assert_eq!(storage.rings_created(), 1, "the probe's ring is kept");
    let f = storage.create(&dir.path().join("f"), 1 << 20).unwrap();
    let mut buf = [0u8; 512];
    for i in 0..500u64 {
        f.write_at(&[i as u8; 512], i * 512).unwrap();
        f.read_exact_at(&mut buf, i * 512).unwrap();
        assert_eq!(buf, [i as u8; 512]);
        if i % 100 == 0 {
            f.sync_data().unwrap();
            let sl = [IoSlice::new(b"batch")];
            storage
                .submit(&[WriteOp::new(&*f, 600_000, &sl)], true)
                .unwrap();
        }
    }
    assert_eq!(storage.rings_created(), 1, "a ring per call");
    assert!(
        storage.enter_calls() >= 1000,
        "single ops bypassed the ring"
    );
}

#[test]
fn uring_rings_are_bounded_by_concurrency() {
    let dir = scratch();
    let mut options = UringOptions::default();
    options.max_rings = 3;
    options.single_ops_on_ring = true;
    let storage = UringStorage::with_options(&options).unwrap();
    let f = storage.create(&dir.path().join("f"), 8 << 20).unwrap();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let f = &f;
            s.spawn(move || {
                for i in 0..200u64 {
                    let offset = (t * 200 + i) * 4096;
                    f.write_at(&[t as u8; 4096], offset).unwrap();
                }
            });
        }
    });
    let created = storage.rings_created();
    assert!(
        (1..=3).contains(&created),
        "{created} rings for 8 threads, cap 3"
    );
    for t in 0..8u64 {
        let mut buf = [0u8; 4096];
        f.read_exact_at(&mut buf, (t * 200 + 199) * 4096).unwrap();
        assert_eq!(buf, [t as u8; 4096]);
    }
}

#[test]
fn uring_batch_and_its_syncs_take_one_system_call() {
    let dir = scratch();
    let storage = UringStorage::new().unwrap();
    let a = storage.create(&dir.path().join("a"), 1 << 20).unwrap();
    let b = storage.create(&dir.path().join("b"), 1 << 20).unwrap();
    let payload = vec![7u8; 700];
    let sl = [IoSlice::new(&payload)];
    let ops: Vec<WriteOp<'_>> = (0..100u64)
        .map(|i| WriteOp::new(if i % 2 == 0 { &*a } else { &*b }, i * 700, &sl))
        .collect();
    let before = storage.enter_calls();
    storage.submit(&ops, true).unwrap();
    assert_eq!(
        storage.enter_calls() - before,
        1,
        "100 writes + 2 linked syncs"
    );

    // Too big for one ring: split, but still correct.
    let mut options = UringOptions::default();
    options.ring_entries = 8;
    let small = UringStorage::with_options(&options).unwrap();
    let c = small.create(&dir.path().join("c"), 1 << 20).unwrap();
    // Gaps between the ops, so they cannot be merged into one entry.
    let ops: Vec<WriteOp<'_>> = (0..100u64)
        .map(|i| WriteOp::new(&*c, i * 1000, &sl))
        .collect();
    small.submit(&ops, true).unwrap();
    assert!(
        small.enter_calls() > 100 / 8,
        "{} enters",
        small.enter_calls()
    );
    let mut buf = vec![0u8; 700];
    for i in 0..100 {
        c.read_exact_at(&mut buf, i * 1000).unwrap();
        assert!(buf.iter().all(|&x| x == 7));
    }
}

#[test]
fn uring_writes_foreign_files_through_their_own_methods() {
    let dir = scratch();
    let uring = UringStorage::new().unwrap();
    let pwrite = PwriteStorage::new();
    let ours = uring.create(&dir.path().join("ours"), 4096).unwrap();
    let theirs = pwrite.create(&dir.path().join("theirs"), 4096).unwrap();
    let sl = [IoSlice::new(b"mixed")];
    let ops = [
        WriteOp::new(&*ours, 10, &sl),
        WriteOp::new(&*theirs, 20, &sl),
    ];
    uring.submit(&ops, true).unwrap();
    let mut buf = [0u8; 5];
    ours.read_exact_at(&mut buf, 10).unwrap();
    assert_eq!(&buf, b"mixed");
    theirs.read_exact_at(&mut buf, 20).unwrap();
    assert_eq!(&buf, b"mixed");
}

#[test]
fn auto_resolves_to_a_concrete_kind() {
    let storage = open_backend(BackendKind::Auto).unwrap();
    assert!(matches!(
        storage.kind(),
        BackendKind::IoUring | BackendKind::Pwrite
    ));
    // This machine has io_uring; where it has not, Auto must still succeed (checked above).
    if UringStorage::new().is_ok() {
        assert_eq!(storage.kind(), BackendKind::IoUring);
    }
}

#[test]
fn auto_falls_back_to_pwrite_when_the_probe_fails() {
    let mut options = BackendOptions::default();
    options.uring_probe = |_| Err(io::Error::new(ErrorKind::Unsupported, "forced by the test"));
    let storage = open_backend_with(BackendKind::Auto, &options).unwrap();
    assert_eq!(storage.kind(), BackendKind::Pwrite);
    // And it works.
    let dir = scratch();
    let f = storage.create(&dir.path().join("f"), 10).unwrap();
    f.write_at(b"ok", 0).unwrap();
    f.sync_data().unwrap();
    // An explicit IoUring request is not a probe: it uses the real kernel.
    if UringStorage::new().is_ok() {
        let s = open_backend_with(BackendKind::IoUring, &options).unwrap();
        assert_eq!(s.kind(), BackendKind::IoUring);
    }
}

#[test]
fn backends_are_independent_instances_of_the_requested_kind() {
    for kind in [BackendKind::Pwrite, BackendKind::IoUring, BackendKind::Mmap] {
        let a = open_backend(kind).unwrap();
        let b = open_backend(kind).unwrap();
        assert_eq!((a.kind(), b.kind()), (kind, kind));
        assert!(!std::ptr::addr_eq(Arc::as_ptr(&a), Arc::as_ptr(&b)));
    }
    let err = open_backend(BackendKind::Sim).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

/// `fsync` on a character device fails (EINVAL): a real failed sync, on every real backend.
#[test]
fn failed_sync_is_sticky_on_real_backends() {
    let Some(dev) = conformance::full_device() else {
        return;
    };
    for kind in [BackendKind::Pwrite, BackendKind::IoUring, BackendKind::Mmap] {
        let storage = open_backend(kind).unwrap();
        let f = storage.open(dev).unwrap();
        let first = f.sync_data().unwrap_err();
        assert!(os_error(&first).is_some(), "{kind}: {first}");
        assert!(!first.to_string().contains("sticky"), "{kind}: {first}");
        for _ in 0..2 {
            let again = f.sync_data().unwrap_err();
            assert!(again.to_string().contains("sticky"), "{kind}: {again}");
            assert!(again.to_string().contains("/dev/full"), "{kind}: {again}");
            assert_eq!(os_error(&again), os_error(&first), "{kind}");
        }
        // Another handle on the same path, same backend instance: still failed.
        let other = storage.open(dev).unwrap();
        let err = other.sync_data().unwrap_err();
        assert!(
            err.to_string().contains("sticky"),
            "{kind}: second handle: {err}"
        );
        // A synced batch is refused before anything is written (a write to /dev/full would
        // have failed with ENOSPC instead).
        let sl = [IoSlice::new(b"x")];
        let err = storage
            .submit(&[WriteOp::new(&*f, 0, &sl)], true)
            .unwrap_err();
        assert!(err.to_string().contains("sticky"), "{kind}: batch: {err}");
        // An unsynced batch still reaches the device.
        let err = storage
            .submit(&[WriteOp::new(&*f, 0, &sl)], false)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::StorageFull, "{kind}: {err}");
        // A different backend instance knows nothing of it (its own first sync fails afresh).
        let fresh = open_backend(kind).unwrap().open(dev).unwrap();
        let err = fresh.sync_data().unwrap_err();
        assert!(
            !err.to_string().contains("sticky"),
            "{kind}: fresh instance: {err}"
        );
    }
}

#[test]
fn failed_create_leaves_no_file_behind() {
    let dir = scratch();
    for kind in [BackendKind::Pwrite, BackendKind::IoUring, BackendKind::Mmap] {
        let storage = open_backend(kind).unwrap();
        let path = dir.path().join(format!("huge-{kind}"));
        // Longer than any file this file system can hold: setting the length fails (EFBIG).
        let err = storage.create(&path, 1 << 60).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::StorageFull | ErrorKind::FileTooLarge),
            "{kind}: {err}"
        );
        assert!(err.to_string().contains("ftruncate"), "{kind}: {err}");
        assert!(!path.exists(), "{kind}: failed create left {path:?}");
    }
    // (A failing `allocate` is not tried on the real disk: ext4 allocates what it can before
    // failing with ENOSPC, which would fill the shared disk for a moment. The simulated
    // backend's `OpKind::Allocate` faults cover that path.)
}

#[test]
fn mmap_serves_bytes_past_its_mapping_and_keeps_them() {
    let dir = scratch();
    let storage = open_backend(BackendKind::Mmap).unwrap();
    let path = dir.path().join("grow");
    let f = storage.create(&path, 4096).unwrap();
    // Straddles the end of the mapping: first half mapped, second half pwritten.
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    f.write_at(&data, 2048).unwrap();
    f.sync_data().unwrap();
    let mut buf = vec![0u8; 8192];
    f.read_exact_at(&mut buf, 2048).unwrap();
    assert_eq!(buf, data);
    drop(f);
    // Another backend sees the same bytes: the mapping and pwrite share the page cache.
    let plain = open_backend(BackendKind::Pwrite)
        .unwrap()
        .open(&path)
        .unwrap();
    plain.read_exact_at(&mut buf, 2048).unwrap();
    assert_eq!(buf, data);
    assert_eq!(plain.len().unwrap(), 2048 + 8192);
}

/// A full disk fails a store into a mapping with `StorageFull` rather than killing the process
/// with `SIGBUS`: the mmap backend allocates a granule before its first store there. Run in a
/// child on an 8 MiB tmpfs of its own (`run_on_a_small_tmpfs`). Space claimed before the disk
/// filled (by `allocate`, or by writing zeros) still takes stores.
#[test]
fn mmap_on_a_full_disk_fails_the_write_not_the_process() {
    if let Some(dir) = std::env::var_os(conformance::SMALL_TMPFS_ENV) {
        return fill_a_mapped_file(Path::new(&dir));
    }
    let Some((status, text)) = conformance::run_on_a_small_tmpfs(
        "mmap_on_a_full_disk_fails_the_write_not_the_process",
        "8m",
    ) else {
        return;
    };
    // A SIGBUS shows as a status without a code (signal 7).
    assert!(status.success(), "{status:?}: {text}");
    assert!(
        text.contains("full after"),
        "the child did not finish: {text}"
    );
}

/// In the child: stores 3000 bytes at a time (crossing pages and granules) into a mapped file
/// 8 times as long as its file system, until the disk is full.
fn fill_a_mapped_file(dir: &Path) {
    const GRANULE: u64 = 2 << 20;
    let storage = open_backend(BackendKind::Mmap).unwrap();
    // A claim of part of a granule (the last page of the first): it must hold for stores into
    // it after the disk is full, though a store allocates its whole granule.
    let claimed = storage.create(&dir.join("claimed"), 8 << 20).unwrap();
    claimed.allocate(GRANULE - 4096, 4096).unwrap();
    // The same for space claimed by writing zeros through the descriptor (a long write).
    let zeroed = storage.create(&dir.join("zeroed"), 8 << 20).unwrap();
    zeroed
        .write_at(&[0u8; 64 << 10], GRANULE - (64 << 10))
        .unwrap();
    // Half a granule used elsewhere, so that what is left once the disk is full is less than
    // a granule (a store must not need more than its claim left).
    std::fs::write(dir.join("half"), vec![1u8; GRANULE as usize / 2]).unwrap();
    let f = storage.create(&dir.join("f"), 64 << 20).unwrap();
    let piece = |i: u64| [(i % 251) as u8; 3000];
    let mut stored = 0u64;
    let err = loop {
        assert!(stored < 64 << 20, "64 MiB stored on an 8 MiB file system");
        match f.write_at(&piece(stored / 3000), stored) {
            Ok(()) => stored += 3000,
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::StorageFull, "{err}");
    assert!(err.to_string().contains("fallocate"), "{err}");
    // It names the granule that did not fit, not one allocated before.
    assert!(
        err.to_string()
            .contains(&format!("@{}", stored.next_multiple_of(GRANULE))),
        "{err}"
    );
    // The full disk was found at a granule's first store, after every store that fit in the
    // first granule.
    assert!(stored + 3000 > GRANULE, "only {stored} bytes fit");
    assert!(stored + 3000 > stored.next_multiple_of(GRANULE), "{stored}");
    claimed
        .write_at(&[9u8; 4096], GRANULE - 4096)
        .expect("a store into claimed space on a full disk");
    claimed.sync_data().unwrap();
    zeroed
        .write_at(&[5u8; 3000], GRANULE - 4000)
        .expect("a store into space claimed by zeros on a full disk");
    zeroed.sync_data().unwrap();
    // What was stored is there, and syncs.
    f.sync_data().unwrap();
    let mut buf = [0u8; 3000];
    for at in (0..stored).step_by(3000) {
        f.read_exact_at(&mut buf, at).unwrap();
        assert_eq!(buf, piece(at / 3000), "at {at}");
    }
    println!("full after {stored} bytes: {err}");
}

#[test]
fn mmap_overlapping_access_is_serialized() {
    // Writers of whole 4 KiB blocks of one byte value over the same range, with readers: with
    // the range lock every read sees one writer's block whole.
    let dir = scratch();
    let storage = open_backend(BackendKind::Mmap).unwrap();
    let f: Arc<dyn SegmentFile> = storage.create(&dir.path().join("f"), 4096).unwrap();
    std::thread::scope(|s| {
        for t in 1..=3u8 {
            let f = &f;
            s.spawn(move || {
                for _ in 0..300 {
                    f.write_at(&[t; 4096], 0).unwrap();
                }
            });
        }
        let f = &f;
        s.spawn(move || {
            let mut buf = [0u8; 4096];
            for _ in 0..300 {
                f.read_exact_at(&mut buf, 0).unwrap();
                assert!(buf.iter().all(|&b| b == buf[0]), "torn read");
            }
        });
    });
}

/// In a linked chain, a failed write cancels the sync behind it: the write's error is reported
/// and the cancelled sync is neither run nor counted as a failed (sticky) sync.
#[test]
fn uring_failed_write_in_a_chain_cancels_its_sync() {
    let Some(dev) = conformance::full_device() else {
        return;
    };
    let storage = UringStorage::new().unwrap();
    let f = storage.open(dev).unwrap();
    let sl = [IoSlice::new(b"x")];
    let before = storage.enter_calls();
    let err = storage
        .submit(&[WriteOp::new(&*f, 0, &sl)], true)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StorageFull, "{err}");
    assert_eq!(
        storage.enter_calls() - before,
        1,
        "write + linked sync in one call"
    );
    // The sync never ran, so nothing is sticky: a real sync now fails with its own error.
    let err = f.sync_data().unwrap_err();
    assert!(!err.to_string().contains("sticky"), "{err}");
}

#[test]
fn uring_single_ops_bypass_the_ring_by_default() {
    let dir = scratch();
    let storage = UringStorage::new().unwrap();
    let f = storage.create(&dir.path().join("f"), 4096).unwrap();
    f.write_at(b"direct", 0).unwrap();
    f.read_exact_at(&mut [0; 6], 0).unwrap();
    f.sync_data().unwrap();
    assert_eq!(storage.enter_calls(), 0);
    // Contiguous ops of a batch become one entry: one round, one enter, even with a tiny ring.
    let mut options = UringOptions::default();
    options.ring_entries = 2;
    let small = UringStorage::with_options(&options).unwrap();
    let g = small.create(&dir.path().join("g"), 1 << 20).unwrap();
    let data = vec![3u8; 700];
    let sl = [IoSlice::new(&data)];
    let ops: Vec<WriteOp<'_>> = (0..256u64)
        .map(|i| WriteOp::new(&*g, i * 700, &sl))
        .collect();
    small.submit(&ops, true).unwrap();
    assert_eq!(small.enter_calls(), 1, "256 contiguous writes + sync");
    let mut buf = vec![0u8; 256 * 700];
    g.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 3));
}
