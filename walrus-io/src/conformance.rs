//! The backend conformance suite (cargo feature `conformance`): one set of checks that every
//! [`Storage`] must pass, written once against the trait. This crate runs it for each of its
//! backends; a crate that wraps or adds a backend can run it too.
//!
//! Each check takes a [`Target`]: the backend, an empty directory to work in, a way to
//! "restart the process" and, optionally, a file whose writes fail with ENOSPC. Checks panic
//! (with the backend's name) on the first mismatch, like assertions in a test.
//!
//! The contract pinned down here, beyond the trait docs:
//! * never-written bytes below the length (preallocated space, gaps) read as zeros;
//! * a read at or past the end returns `Ok(0)`, one that straddles it returns the bytes up to
//!   the end, and `read_exact_at` fails with `UnexpectedEof`;
//! * a write past the end extends the file;
//! * empty reads, writes and batches succeed and change nothing;
//! * errors keep their kind and name the path (and, for data operations, the offset).

use std::io::{ErrorKind, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::{fmt, io};

use crate::{BackendKind, OpError, SegmentFile, Storage, WriteOp, os_error};

/// A check of the suite.
pub type Check = fn(&mut Target);

/// Opens (or makes) a file whose every write fails with ENOSPC.
pub type FullFile = Box<dyn Fn(&dyn Storage) -> io::Result<Arc<dyn SegmentFile>>>;

/// How much of the file at a path is written but not yet durable (dirty pages, unsynced
/// sectors; any unit), or `None` when it cannot be told.
pub type Unsynced = Box<dyn Fn(&Path) -> Option<u64>>;

/// What a check runs against.
pub struct Target {
    /// The backend under test.
    pub storage: Arc<dyn Storage>,
    /// An existing, empty directory the checks may fill.
    pub root: PathBuf,
    /// Ends the "process" and starts the next one, returning the backend it would use. All
    /// handles are dropped first. Data that was synced, in files whose directory was synced,
    /// must survive it.
    pub restart: Box<dyn FnMut() -> Arc<dyn Storage>>,
    /// Opens (or makes) a file whose every write fails with ENOSPC, if the backend can.
    pub full_file: Option<FullFile>,
    /// What of a file is not yet durable, if the target can tell: a sync must leave nothing.
    /// For a real file system, [`unsynced_pages`].
    pub unsynced: Option<Unsynced>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("storage", &self.storage)
            .field("root", &self.root)
            .field("full_file", &self.full_file.is_some())
            .field("unsynced", &self.unsynced.is_some())
            .finish_non_exhaustive()
    }
}

/// Every check, in turn.
pub fn run_all(t: &mut Target) {
    for (_, check) in CHECKS {
        check(t);
    }
}

/// Every check with its name, for harnesses that make one test per check.
pub const CHECKS: &[(&str, Check)] = &[
    ("kind_is_concrete", kind_is_concrete),
    ("namespace", namespace),
    ("round_trip", round_trip),
    ("vectored_writes", vectored_writes),
    ("batched_writes", batched_writes),
    ("large_batches", large_batches),
    ("large_offsets", large_offsets),
    ("concurrent_disjoint_writers", concurrent_disjoint_writers),
    ("unwritten_and_past_end_reads", unwritten_and_past_end_reads),
    ("sync_and_len", sync_and_len),
    ("syncs_leave_nothing_unsynced", syncs_leave_nothing_unsynced),
    ("allocate", allocate),
    ("start_write_back", start_write_back),
    ("holes_read_as_zero", holes_read_as_zero),
    ("handles_share_a_file", handles_share_a_file),
    ("read_only_handles", read_only_handles),
    ("reopen_persistence", reopen_persistence),
    ("error_reporting", error_reporting),
    ("storage_full", storage_full),
];

/// A fresh subdirectory of the target's root for one check.
fn workdir(t: &Target, name: &str) -> PathBuf {
    let dir = t.root.join(name);
    t.storage.create_dir_all(&dir).expect("create_dir_all");
    dir
}

/// Deterministic, position-dependent test bytes (so misplaced data shows).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn read_vec(file: &dyn SegmentFile, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xA5; len];
    file.read_exact_at(&mut buf, offset)
        .unwrap_or_else(|e| panic!("read_exact_at {len}@{offset}: {e}"));
    buf
}

fn kind_name(t: &Target) -> BackendKind {
    t.storage.kind()
}

/// `kind()` names a concrete backend, never `Auto`.
pub fn kind_is_concrete(t: &mut Target) {
    assert_ne!(t.storage.kind(), BackendKind::Auto);
}

/// create / open / list / remove, and the errors of each.
pub fn namespace(t: &mut Target) {
    let k = kind_name(t);
    let dir = workdir(t, "namespace");
    let s = &*t.storage;
    assert_eq!(
        s.list(&dir).unwrap(),
        Vec::<PathBuf>::new(),
        "{k}: fresh dir not empty"
    );

    let b = dir.join("b.seg");
    let a = dir.join("a.seg");
    s.create(&b, 4096).unwrap();
    s.create(&a, 0).unwrap();
    s.create_dir_all(&dir.join("sub")).unwrap();
    assert_eq!(
        s.list(&dir).unwrap(),
        vec![a.clone(), b.clone()],
        "{k}: list"
    );

    let err = s.create(&a, 10).unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::AlreadyExists,
        "{k}: create existing: {err}"
    );
    assert_eq!(
        s.open(&a).unwrap().len().unwrap(),
        0,
        "{k}: failed create changed the file"
    );

    let missing_dir = dir.join("nope");
    let err = s.create(&missing_dir.join("x"), 0).unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "{k}: create in missing dir: {err}"
    );
    let err = s.list(&missing_dir).unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "{k}: list missing dir: {err}"
    );
    let err = s.open(&dir.join("sub")).unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::IsADirectory,
        "{k}: open a directory: {err}"
    );

    let handle = s.open(&b).unwrap();
    handle.write_at(b"still here", 0).unwrap();
    s.remove(&b).unwrap();
    assert_eq!(
        s.list(&dir).unwrap(),
        vec![a.clone()],
        "{k}: list after remove"
    );
    let err = s.open(&b).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{k}: open removed: {err}");
    let err = s.remove(&b).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{k}: remove twice: {err}");
    // An open handle keeps working on the removed file.
    assert_eq!(
        read_vec(&*handle, 0, 10),
        b"still here",
        "{k}: handle after remove"
    );

    // A new file under a removed name is a new, empty file.
    let again = s.create(&b, 0).unwrap();
    assert_eq!(again.len().unwrap(), 0, "{k}: recreated file not empty");
    s.sync_dir(&dir).unwrap();
}

/// Writes read back exactly, at any size and alignment, and overwrites replace.
pub fn round_trip(t: &mut Target) {
    let k = kind_name(t);
    let dir = workdir(t, "round_trip");
    let f = t.storage.create(&dir.join("f"), 4 << 20).unwrap();
    let cases: &[(u64, usize)] = &[
        (0, 1),
        (1, 4096),
        (4096, 4096),
        (777, 1000),
        (65_536, 64 << 10),
        (1 << 20, 1 << 20),
        ((3 << 20) + 13, 700),
    ];
    for (i, &(offset, len)) in cases.iter().enumerate() {
        let data = pattern(i as u64, len);
        f.write_at(&data, offset).unwrap();
        assert_eq!(
            read_vec(&*f, offset, len),
            data,
            "{k}: round trip {len}@{offset}"
        );
    }
    // Overwrite in the middle of an earlier write.
    let patch = pattern(99, 100);
    f.write_at(&patch, 4096 + 50).unwrap();
    let mut expect = pattern(2, 4096);
    expect[50..150].copy_from_slice(&patch);
    assert_eq!(read_vec(&*f, 4096, 4096), expect, "{k}: overwrite");
    assert_eq!(
        f.len().unwrap(),
        4 << 20,
        "{k}: writes inside the length changed it"
    );
}

/// `write_vectored_at` writes its buffers back to back, empty ones and more than `IOV_MAX`
/// of them included.
pub fn vectored_writes(t: &mut Target) {
    let k = kind_name(t);
    let dir = workdir(t, "vectored");
    let f = t.storage.create(&dir.join("f"), 1 << 20).unwrap();

    let parts = [
        pattern(1, 10),
        Vec::new(),
        pattern(2, 4096),
        pattern(3, 1),
        Vec::new(),
    ];
    let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    f.write_vectored_at(&slices, 100).unwrap();
    assert_eq!(read_vec(&*f, 100, 4107), parts.concat(), "{k}: vectored");

    // 1500 buffers of 8..=14 bytes: more than one pwritev / one WRITEV may take, and longer
    // than the short runs a backend may copy into one buffer.
    let many: Vec<Vec<u8>> = (0..1500)
        .map(|i| pattern(1000 + i, 8 + (i as usize % 7)))
        .collect();
    let slices: Vec<IoSlice<'_>> = many.iter().map(|p| IoSlice::new(p)).collect();
    f.write_vectored_at(&slices, 200_000).unwrap();
    let all = many.concat();
    assert_eq!(read_vec(&*f, 200_000, all.len()), all, "{k}: 1500 buffers");

    f.write_vectored_at(&[], 0).unwrap();
    f.write_vectored_at(&[IoSlice::new(&[])], 0).unwrap();
    assert_eq!(
        read_vec(&*f, 100, 10),
        parts[0],
        "{k}: empty vectored write changed data"
    );
}

/// `submit` lands every op, across files, with and without the sync; empty batches and empty
/// ops are fine.
pub fn batched_writes(t: &mut Target) {
    let k = kind_name(t);
    let dir = workdir(t, "batched");
    let s = &*t.storage;
    let f1 = s.create(&dir.join("one"), 64 << 10).unwrap();
    let f2 = s.create(&dir.join("two"), 64 << 10).unwrap();
    s.submit(&[], false).unwrap();
    s.submit(&[], true).unwrap();

    let (a, b, c) = (pattern(1, 700), pattern(2, 1300), pattern(3, 5000));
    let (sa, sb, sc) = (
        [IoSlice::new(&a)],
        [IoSlice::new(&b), IoSlice::new(&c)],
        [IoSlice::new(&c)],
    );
    let empty: [IoSlice<'_>; 0] = [];
    for (round, then_sync) in [(0u64, false), (1, true)] {
        let base = round * 20_000;
        let ops = [
            WriteOp::new(&*f1, base, &sa),
            WriteOp::new(&*f2, base + 3, &sb),
            WriteOp::new(&*f1, base + 700, &sc),
            WriteOp::new(&*f2, base, &empty),
        ];
        assert_eq!(ops[1].len(), 6300);
        assert!(ops[3].is_empty());
        s.submit(&ops, then_sync).unwrap();
        assert_eq!(
            read_vec(&*f1, base, 700),
            a,
            "{k}: batch op 0 (sync {then_sync})"
        );
        assert_eq!(
            read_vec(&*f1, base + 700, 5000),
            c,
            "{k}: batch op 2 (sync {then_sync})"
        );
        assert_eq!(
            read_vec(&*f2, base + 3, 6300),
            [b.clone(), c.clone()].concat(),
            "{k}: op 1"
        );
    }
}

/// Batches larger than any submission queue (600 ops of ~700 bytes over 3 files), synced.
pub fn large_batches(t: &mut Target) {
    let k = kind_name(t);
    let dir = workdir(t, "large_batches");
    let s = &*t.storage;
    let files: Vec<_> = (0..3)
        .map(|i| s.create(&dir.join(format!("f{i}")), 1 << 20).unwrap())
        .collect();
    let payloads: Vec<Vec<u8>> = (0..600)
        .map(|i| pattern(i, 650 + (i as usize % 100)))
        .collect();
    let slices: Vec<[IoSlice<'_>; 1]> = payloads.iter().map(|p| [IoSlice::new(p)]).collect();
    let ops: Vec<WriteOp<'_>> = slices
        .iter()
        .enumerate()
        .map(|(i, sl)| WriteOp::new(&*files[i % 3], (i / 3) as u64 * 1024, sl))
        .collect();
    s.submit(&ops, true).unwrap();
    for (i, p) in payloads.iter().enumerate() {
        let got = read_vec(&*files[i % 3], (i / 3) as u64 * 1024, p.len());
        assert_eq!(&got, p, "{k}: large batch op {i}");
    }
}

/// Offsets past 4 GiB work on a sparse file; the gap reads as zeros.
pub fn large_offsets(t: &mut Target) {
    let k = kind_name(t);
    let dir = workdir(t, "large_offsets");
    let f = t.storage.create(&dir.join("sparse"), 0).unwrap();
    let offset = (5u64 << 30) + 3;
    let data = pattern(5, 10_000);
    f.write_at(&data, offset).unwrap();
    assert_eq!(
        f.len().unwrap(),
        offset + data.len() as u64,
        "{k}: len after far write"
    );
    assert_eq!(read_vec(&*f, offset, data.len()), data, "{k}: far read");
    let slices = [IoSlice::new(&data[..5]), IoSlice::new(&data[5..9])];
    f.write_vectored_at(&slices, 1u64 << 32).unwrap();
    assert_eq!(
        read_vec(&*f, 1u64 << 32, 9),
        data[..9],
        "{k}: vectored at 4 GiB"
    );
    assert_eq!(
        read_vec(&*f, (1u64 << 32) - 4096, 4096),
        vec![0; 4096],
        "{k}: gap not zero"
    );
    f.sync_data().unwrap();
}

/// Threads writing disjoint ranges of one file (plain, vectored and batched) never disturb
/// each other, and reads of finished ranges run alongside.
pub fn concurrent_disjoint_writers(t: &mut Target) {
    const THREADS: u64 = 4;
    const WRITES: u64 = 48;
    const SIZE: usize = 3000; // not a multiple of any page or sector
    let k = kind_name(t);
    let dir = workdir(t, "concurrent");
    let s = Arc::clone(&t.storage);
    let file = s
        .create(&dir.join("shared"), THREADS * WRITES * SIZE as u64)
        .unwrap();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (s, file) = (&s, &file);
            scope.spawn(move || {
                for w in 0..WRITES {
                    let slot = w * THREADS + thread; // interleaved slots
                    let offset = slot * SIZE as u64;
                    let data = pattern(slot, SIZE);
                    match w % 3 {
                        0 => file.write_at(&data, offset).unwrap(),
                        1 => file
                            .write_vectored_at(
                                &[IoSlice::new(&data[..1000]), IoSlice::new(&data[1000..])],
                                offset,
                            )
                            .unwrap(),
                        _ => {
                            let sl = [IoSlice::new(&data)];
                            s.submit(&[WriteOp::new(&**file, offset, &sl)], w % 2 == 0)
                                .unwrap();
                        }
                    }
                    assert_eq!(read_vec(&**file, offset, SIZE), data, "{k}: read own write");
                }
            });
        }
    });
    for slot in 0..THREADS * WRITES {
        let got = read_vec(&*file, slot * SIZE as u64, SIZE);
        assert_eq!(
            got,
            pattern(slot, SIZE),
            "{k}: slot {slot} after concurrent writes"
        );
    }
}

/// Zeros below the length, short reads at the end, `UnexpectedEof` from `read_exact_at`, and
/// writes past the end extend the file.
pub fn unwritten_and_past_end_reads(t: &mut Target) {
    let k = kind_name(t);
    let dir = workdir(t, "unwritten");
    let f = t.storage.create(&dir.join("f"), 10_000).unwrap();
    assert_eq!(
        read_vec(&*f, 0, 10_000),
        vec![0; 10_000],
        "{k}: preallocated not zero"
    );

    let mut buf = vec![7u8; 100];
    assert_eq!(f.read_at(&mut buf, 10_000).unwrap(), 0, "{k}: read at end");
    assert_eq!(
        f.read_at(&mut buf, 1 << 40).unwrap(),
        0,
        "{k}: read far past end"
    );
    assert_eq!(
        f.read_at(&mut buf, 9_950).unwrap(),
        50,
        "{k}: read straddling end"
    );
    assert_eq!(&buf[..50], &[0; 50], "{k}: straddling read data");
    assert_eq!(f.read_at(&mut [], 5).unwrap(), 0, "{k}: empty read");
    let err = f.read_exact_at(&mut buf, 9_950).unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::UnexpectedEof,
        "{k}: read_exact past end: {err}"
    );

    f.write_at(b"tail", 20_000).unwrap();
    assert_eq!(
        f.len().unwrap(),
        20_004,
        "{k}: write past end did not extend"
    );
    assert_eq!(
        read_vec(&*f, 10_000, 10_000),
        vec![0; 10_000],
        "{k}: gap not zero"
    );
    assert_eq!(read_vec(&*f, 20_000, 4), b"tail", "{k}: tail");
    f.write_at(&[], 1 << 30).unwrap();
    assert_eq!(
        f.len().unwrap(),
        20_004,
        "{k}: empty write extended the file"
    );
}

/// [`SegmentFile::next_data`] never skips written bytes: whatever it reports as a hole reads
/// as zeros, and written bytes are found.
pub fn holes_read_as_zero(t: &mut Target) {
    let k = kind_name(t);
    let dir = workdir(t, "holes");
    let len = 4u64 << 20;
    let f = t.storage.create(&dir.join("f"), len).unwrap();
    let marks = [
        (0u64, &b"head"[..]),
        (1 << 20, b"middle"),
        ((3 << 20) + 100, b"tail"),
    ];
    for (at, bytes) in marks {
        f.write_at(bytes, at).unwrap();
    }
    for probe in [
        0u64,
        5,
        4096,
        (1 << 20) - 1,
        (1 << 20) + 10,
        2 << 20,
        (3 << 20) + 200,
        len - 1,
        len,
    ] {
        let range = f.next_data(probe).unwrap();
        let next = range.as_ref().map(|r| r.start);
        if let Some(r) = &range {
            assert!(r.start < r.end, "{k}: empty data range {r:?}");
        }
        let hole_end = next.unwrap_or(len).min(len);
        assert!(
            hole_end >= probe,
            "{k}: next_data({probe}) went backwards: {next:?}"
        );
        if hole_end > probe {
            let mut buf = vec![0u8; (hole_end - probe) as usize];
            f.read_exact_at(&mut buf, probe).unwrap();
            assert!(
                buf.iter().all(|&b| b == 0),
                "{k}: next_data({probe}) = {next:?} skips written bytes"
            );
        }
        for (at, _) in marks {
            if at >= probe {
                assert!(
                    next.is_some_and(|n| n <= at),
                    "{k}: next_data({probe}) = {next:?} misses data at {at}"
                );
            }
        }
    }
}

/// `start_write_back` is a hint: it changes no byte and no length, leaves the data to be synced
/// as usual, and accepts ranges past the end and empty ones.
pub fn start_write_back(t: &mut Target) {
    let k = kind_name(t);
    let dir = workdir(t, "start_write_back");
    let f = t.storage.create(&dir.join("f"), 8192).unwrap();
    f.write_at(b"written back", 4000).unwrap();
    f.start_write_back(0, 8192).unwrap();
    f.start_write_back(4096, 0).unwrap();
    f.start_write_back(8192, 1 << 20).unwrap();
    assert_eq!(
        f.len().unwrap(),
        8192,
        "{k}: start_write_back keeps the length"
    );
    let all = read_vec(&*f, 0, 8192);
    assert_eq!(
        &all[4000..4012],
        b"written back",
        "{k}: start_write_back keeps data"
    );
    f.sync_data().unwrap();
}

/// `allocate` keeps data, extends the length, reads as zeros, rejects impossible ranges; on a
/// real file system, a created file is sparse, `allocate` claims space, and a write costs about
/// what it writes.
pub fn allocate(t: &mut Target) {
    let k = kind_name(t);
    let dir = workdir(t, "allocate");
    let path = dir.join("f");
    let f = t.storage.create(&path, 4096).unwrap();
    f.write_at(b"kept", 100).unwrap();
    f.allocate(8192, 16384).unwrap();
    f.allocate(0, 0).unwrap();
    f.allocate(0, 4096).unwrap();
    assert_eq!(f.len().unwrap(), 8192 + 16384, "{k}: allocate extends");
    let all = read_vec(&*f, 0, 8192 + 16384);
    assert_eq!(&all[100..104], b"kept", "{k}: allocate keeps data");
    assert!(
        all[..100].iter().chain(&all[104..]).all(|&b| b == 0),
        "{k}: allocated space not zero"
    );
    f.allocate(0, 4096).unwrap();
    assert_eq!(
        f.len().unwrap(),
        8192 + 16384,
        "{k}: allocate inside keeps the length"
    );
    let e = f.allocate(i64::MAX as u64, 2).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{k}: {e}");

    if matches!(k, BackendKind::Sim) {
        return;
    }
    use std::os::unix::fs::MetadataExt as _;
    let allocated = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
    let big = dir.join("big");
    let g = t.storage.create(&big, 64 << 20).unwrap();
    assert_eq!(g.len().unwrap(), 64 << 20, "{k}: created length");
    assert!(allocated(&big) < 1 << 20, "{k}: a created file is sparse");
    g.allocate(1 << 20, 4 << 20).unwrap();
    let after = allocated(&big);
    assert!(
        after >= 4 << 20,
        "{k}: allocate claimed {after} bytes of 4 MiB"
    );
    // A write past what was allocated costs about what it writes (mmap: its 2 MiB granule).
    g.write_at(b"z", 40 << 20).unwrap();
    g.sync_data().unwrap();
    let written = allocated(&big);
    let most = if matches!(k, BackendKind::Mmap) {
        2 << 20
    } else {
        64 << 10
    };
    assert!(
        written > after && written <= after + most,
        "{k}: one byte written cost {} bytes",
        written - after
    );
}

/// Syncs succeed repeatedly; lengths follow preallocation and extension.
pub fn sync_and_len(t: &mut Target) {
    let k = kind_name(t);
    let dir = workdir(t, "sync");
    let s = &*t.storage;
    let f = s.create(&dir.join("f"), 1 << 16).unwrap();
    let e = s.create(&dir.join("e"), 0).unwrap();
    assert_eq!(f.len().unwrap(), 1 << 16, "{k}: preallocated len");
    assert!(e.is_empty().unwrap(), "{k}: empty file");
    f.sync_data().unwrap();
    f.write_at(b"x", 5).unwrap();
    f.sync_data().unwrap();
    f.sync_data().unwrap();
    e.sync_data().unwrap();
    let sl = [IoSlice::new(b"y")];
    s.submit(&[WriteOp::new(&*e, 0, &sl)], true).unwrap();
    assert_eq!(e.len().unwrap(), 1, "{k}: len after batch");
    s.sync_dir(&dir).unwrap();
    s.sync_dir(&t.root).unwrap();
    let err = s.sync_dir(&dir.join("missing")).unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "{k}: sync_dir missing: {err}"
    );
}

/// Every sync leaves nothing of what it covers unsynced: `sync_data`, and a `submit` with its
/// syncs over several files (a linked sync of the wrong file, or one dropped, shows here; a
/// restart that keeps the page cache would not show it).
pub fn syncs_leave_nothing_unsynced(t: &mut Target) {
    let k = kind_name(t);
    let Some(unsynced) = &t.unsynced else {
        eprintln!("{k}: the target cannot tell what is unsynced: nothing to check");
        return;
    };
    let dir = workdir(t, "unsynced");
    let s = &*t.storage;
    let paths: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("f{i}"))).collect();
    let files: Vec<_> = paths
        .iter()
        .map(|p| s.create(p, 1 << 20).unwrap())
        .collect();
    for f in &files {
        f.sync_data().unwrap();
    }
    let data = pattern(7, 64 << 10);
    files[0].write_at(&data, 4096).unwrap();
    if matches!(unsynced(&paths[0]), None | Some(0)) {
        cannot_check(&format!(
            "{k}: a write leaves nothing unsynced here (no cachestat(2), or a file system without a page cache)"
        ));
        return;
    }
    files[0].sync_data().unwrap();
    assert_eq!(unsynced(&paths[0]), Some(0), "{k}: after sync_data");
    let bufs: Vec<[IoSlice<'_>; 1]> = (0..3).map(|_| [IoSlice::new(&data)]).collect();
    let ops: Vec<WriteOp<'_>> = files
        .iter()
        .zip(&bufs)
        .enumerate()
        .map(|(i, (f, b))| WriteOp::new(&**f, (i as u64 + 1) * (128 << 10), b))
        .collect();
    s.submit(&ops, true).unwrap();
    for p in &paths {
        assert_eq!(
            unsynced(p),
            Some(0),
            "{k}: {} after a synced submit",
            p.display()
        );
    }
}

/// [`page_cache`] of `path`, for a test that needs its pages cached: `None`, with a note on
/// stderr, where this kernel has no `cachestat(2)` or the file system keeps no pages cached
/// (the test then has nothing to check).
pub fn cached_pages_to_check(path: &Path) -> Option<PageCache> {
    let Some(cache) = page_cache(path) else {
        cannot_check("no cachestat(2) on this kernel");
        return None;
    };
    if cache.cached == 0 {
        cannot_check("the file system keeps no pages in the cache");
        return None;
    }
    Some(cache)
}

/// What the page cache holds of the file at `path` (`cachestat(2)`, Linux 6.5), or `None`
/// where the kernel lacks it.
#[must_use]
pub fn page_cache(path: &Path) -> Option<PageCache> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        cache: u64,
        dirty: u64,
        writeback: u64,
        evicted: u64,
        recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451; // the same number on every architecture
    let file = std::fs::File::open(path).ok()?;
    let range = Range { off: 0, len: 0 }; // to the end of the file
    let mut stat = Stat::default();
    // SAFETY: `cachestat` reads `range` and writes `stat`, both live `repr(C)` structs of the
    // kernel's layout for the duration of the call; `file` is open.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &raw const range,
            &raw mut stat,
            0,
        )
    };
    (r == 0).then_some(PageCache {
        cached: stat.cache,
        dirty: stat.dirty + stat.writeback,
    })
}

/// A file's pages in the page cache (see [`page_cache`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCache {
    /// Pages cached.
    pub cached: u64,
    /// Of those, pages dirty or under write-back: not yet on disk.
    pub dirty: u64,
}

/// What of the file at `path` is not yet on disk: its dirty pages, by [`page_cache`].
#[must_use]
pub fn unsynced_pages(path: &Path) -> Option<u64> {
    page_cache(path).map(|c| c.dirty)
}

/// Two handles on one file (one from `create`, one from `open`) see each other's writes.
pub fn handles_share_a_file(t: &mut Target) {
    let k = kind_name(t);
    let dir = workdir(t, "handles");
    let path = dir.join("f");
    let w = t.storage.create(&path, 8192).unwrap();
    let r = t.storage.open(&path).unwrap();
    w.write_at(b"from w", 4000).unwrap();
    assert_eq!(
        read_vec(&*r, 4000, 6),
        b"from w",
        "{k}: open handle sees create handle"
    );
    r.write_at(b"from r", 9000).unwrap();
    assert_eq!(read_vec(&*w, 9000, 6), b"from r", "{k}: and back");
    assert_eq!(w.len().unwrap(), 9006, "{k}: len through the other handle");
}

/// `open_read` reads what was written and changes nothing: on a real file system its handle
/// refuses writes and opening it allocates no hole (a read-only store beside a live writer).
pub fn read_only_handles(t: &mut Target) {
    let k = kind_name(t);
    let dir = workdir(t, "read-only");
    let path = dir.join("f");
    let data = pattern(7, 5000);
    {
        let w = t.storage.create(&path, 1 << 20).unwrap();
        w.write_at(&data, 0).unwrap();
        w.sync_data().unwrap();
    }
    let r = t.storage.open_read(&path).unwrap();
    assert_eq!(
        read_vec(&*r, 0, data.len()),
        data,
        "{k}: read-only handle reads"
    );
    if k == BackendKind::Sim {
        // The simulator's files are in memory: no handle modes, no holes to allocate.
        return;
    }
    assert!(
        r.write_at(b"no", 0).is_err(),
        "{k}: a read-only handle refuses writes"
    );
    // A sparse file made by another writer: opening it read-only must not allocate it.
    let sparse = dir.join("sparse");
    let f = std::fs::File::create(&sparse).unwrap();
    f.set_len(1 << 20).unwrap();
    let blocks = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().blocks()
    };
    let before = blocks(&sparse);
    let h = t.storage.open_read(&sparse).unwrap();
    assert_eq!(
        read_vec(&*h, 1000, 10),
        vec![0; 10],
        "{k}: a hole reads as zeros"
    );
    drop(h);
    assert_eq!(
        blocks(&sparse),
        before,
        "{k}: opening read-only allocated space"
    );
    assert_eq!(read_vec(&*r, 0, data.len()), data, "{k}: unchanged");
}

/// Synced data in dir-synced files survives a restart; so does a synced removal.
pub fn reopen_persistence(t: &mut Target) {
    let k = kind_name(t);
    let dir = workdir(t, "persist");
    let keep = dir.join("keep.seg");
    let gone = dir.join("gone.seg");
    let data = pattern(42, 20_000);
    {
        let s = &*t.storage;
        let f = s.create(&keep, 1 << 16).unwrap();
        f.write_at(&data, 1000).unwrap();
        let sl = [IoSlice::new(b"batched")];
        s.submit(&[WriteOp::new(&*f, 30_000, &sl)], true).unwrap();
        f.sync_data().unwrap();
        let g = s.create(&gone, 4096).unwrap();
        g.sync_data().unwrap();
        s.sync_dir(&dir).unwrap();
        s.remove(&gone).unwrap();
        s.sync_dir(&dir).unwrap();
    }
    t.storage = (t.restart)();
    let s = &*t.storage;
    assert_eq!(
        s.list(&dir).unwrap(),
        vec![keep.clone()],
        "{k}: files after restart"
    );
    let f = s.open(&keep).unwrap();
    assert_eq!(f.len().unwrap(), 1 << 16, "{k}: len after restart");
    assert_eq!(
        read_vec(&*f, 1000, data.len()),
        data,
        "{k}: data after restart"
    );
    assert_eq!(
        read_vec(&*f, 30_000, 7),
        b"batched",
        "{k}: batch after restart"
    );
    assert_eq!(
        read_vec(&*f, 0, 1000),
        vec![0; 1000],
        "{k}: zeros after restart"
    );
    // And the file is writable again.
    f.write_at(b"next", 0).unwrap();
    f.sync_data().unwrap();
}

fn op_of(err: &io::Error) -> &OpError {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<OpError>())
        .unwrap_or_else(|| panic!("error without OpError context: {err:?}"))
}

/// Errors keep their kind and errno and name the path (and the offset, for data).
pub fn error_reporting(t: &mut Target) {
    let k = kind_name(t);
    let dir = workdir(t, "errors");
    let s = &*t.storage;
    let missing = dir.join("missing.seg");
    let shown = missing.display().to_string();

    let err = s.open(&missing).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{k}");
    assert_eq!(os_error(&err), Some(libc::ENOENT), "{k}: errno of {err}");
    assert!(
        err.to_string().contains(&shown),
        "{k}: path missing from {err}"
    );
    assert_eq!(op_of(&err).path(), missing, "{k}");

    let err = s.remove(&missing).unwrap_err();
    assert!(
        err.to_string().contains(&shown),
        "{k}: path missing from {err}"
    );

    let path = dir.join("f");
    let f = s.create(&path, 100).unwrap();
    let err = s.create(&path, 100).unwrap_err();
    assert_eq!(os_error(&err), Some(libc::EEXIST), "{k}: errno of {err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{k}: {err}"
    );

    let err = f.read_exact_at(&mut [0; 10], 95).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "{k}");
    assert_eq!(op_of(&err).offset(), Some(95), "{k}: offset of {err}");
    assert!(
        err.to_string().contains("@95"),
        "{k}: offset missing from {err}"
    );

    let err = f.write_at(b"x", u64::MAX - 1).unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidInput,
        "{k}: write past max offset: {err}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{k}: {err}"
    );
}

/// ENOSPC reaches the caller as `StorageFull`, with path and offset, through every write path.
/// Skipped if the target has no [`Target::full_file`].
pub fn storage_full(t: &mut Target) {
    let k = kind_name(t);
    let Some(make) = &t.full_file else { return };
    let f = make(&*t.storage).unwrap();
    let shown = f.path().display().to_string();
    let check = |err: io::Error, what: &str, offset: u64| {
        assert_eq!(err.kind(), ErrorKind::StorageFull, "{k}: {what}: {err}");
        assert_eq!(os_error(&err), Some(libc::ENOSPC), "{k}: {what}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(&shown), "{k}: {what}: path missing from {msg}");
        assert!(
            msg.contains(&format!("@{offset}")),
            "{k}: {what}: offset missing from {msg}"
        );
    };
    check(f.write_at(b"data", 0).unwrap_err(), "write_at", 0);
    let bufs = [IoSlice::new(b"ab"), IoSlice::new(b"cd")];
    check(
        f.write_vectored_at(&bufs, 0).unwrap_err(),
        "write_vectored_at",
        0,
    );
    check(
        t.storage
            .submit(&[WriteOp::new(&*f, 0, &bufs)], false)
            .unwrap_err(),
        "submit",
        0,
    );
}

/// Where a child of [`run_on_a_small_tmpfs`] finds its small file system.
pub const SMALL_TMPFS_ENV: &str = "WALRUS_SMALL_TMPFS";

/// Set (to anything) where every test must check what it is about: a machine that lacks what
/// a test needs (a mount namespace for [`run_on_a_small_tmpfs`], `cachestat(2)`, io_uring) then
/// fails the test instead of letting it pass without checking (`.ci/run` sets it, so that CI
/// never passes a test by skipping it).
pub const REQUIRE_ENV: &str = "WALRUS_REQUIRE_CHECKS";

/// A test that cannot check its subject here says why on stderr and returns (it passes), or
/// fails where [`REQUIRE_ENV`] is set.
///
/// # Panics
/// Where [`REQUIRE_ENV`] is set.
pub fn cannot_check(why: &str) {
    assert!(
        std::env::var_os(REQUIRE_ENV).is_none(),
        "{REQUIRE_ENV} is set, but {why}"
    );
    eprintln!("skipped: {why}");
}

/// [`cannot_check`], for [`run_on_a_small_tmpfs`].
fn skip(why: &str) -> Option<(std::process::ExitStatus, String)> {
    cannot_check(why);
    None
}

/// Runs the test `test` of the calling test binary again, in a child process with a mount
/// namespace of its own (`unshare`) holding a tmpfs of `size` (as `mount` takes it: `"5m"`).
/// The child finds the mount's path in [`SMALL_TMPFS_ENV`]; the mount goes with it. A disk
/// this small fills in moments without touching the machine's own, and a child that dies (a
/// `SIGBUS`) fails the caller's test, not its process.
///
/// Returns the child's status and output (stdout, then stderr), or `None`, after saying why on
/// stderr, where no such namespace can be made (not root, no `CAP_SYS_ADMIN`, no `unshare`;
/// with [`REQUIRE_ENV`] set, it panics then instead): a
/// child that started the test has printed "running 1 test", and one killed by a signal has no
/// exit code, so neither is taken for that.
pub fn run_on_a_small_tmpfs(test: &str, size: &str) -> Option<(std::process::ExitStatus, String)> {
    // One mount point per process and test: a test runs once in its process.
    let mnt = std::env::temp_dir().join(format!("walrus-tmpfs-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir(&mnt); // left by an earlier process of the same id
    if let Err(e) = std::fs::create_dir(&mnt) {
        return skip(&format!("cannot make a mount point {}: {e}", mnt.display()));
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return skip(&format!("the test binary's path: {e}")),
    };
    let child = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            r#"mount -t tmpfs -o size={size} walrus-small "$0" && exec "$1" --exact {test} --nocapture --test-threads 1"#
        ))
        .arg(&mnt)
        .arg(&exe)
        .env(SMALL_TMPFS_ENV, &mnt)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let output = child.map(|child| wait_bounded(child, test, SMALL_TMPFS_CHILD_LIMIT));
    let _ = std::fs::remove_dir(&mnt);
    let (status, text) = match output {
        Ok(output) => output,
        Err(e) => return skip(&format!("cannot run unshare: {e}")),
    };
    if status.code().is_some() && !text.contains("running 1 test") {
        return skip(&format!("no mount namespace with a tmpfs here: {text}"));
    }
    Some((status, text))
}

/// How long a child of [`run_on_a_small_tmpfs`] may run before it is killed and the test fails.
const SMALL_TMPFS_CHILD_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Waits for `child` (its output piped) at most `limit`, collecting its stdout and stderr.
///
/// # Panics
/// When it runs past `limit`: after killing and reaping it.
fn wait_bounded(
    mut child: std::process::Child,
    test: &str,
    limit: std::time::Duration,
) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    // Drained as it runs: a child blocked on a full pipe would never end.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the child running {test} was still running after {limit:?}: killed");
            }
            Err(e) => panic!("waiting for the child running {test}: {e}"),
        }
    };
    let text = out.join().unwrap_or_default() + &err.join().unwrap_or_default();
    (status, text)
}

/// What a child started by [`kill_nine_child`] prints before each acknowledgement (after the
/// call it acknowledges returned): the parent takes what follows it on the line. (libtest may
/// print its own text on the same line first.)
pub const ACK: &str = "walrus-ack:";

/// For a child of [`kill_nine_child`], first thing: a panic anywhere in it (its test thread or
/// a background one) aborts the process at once, so that the parent sees SIGABRT, not a child
/// that unwound (closing its files cleanly) and was then killed as if mid-work, or one whose
/// background thread died while it went on.
pub fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}

/// Runs this test binary's ignored test `test` as a child process with `env`, waits (20 s at
/// most) for its first acknowledgement (a line holding [`ACK`]), lets it run `delay` more, and
/// kills it with SIGKILL: the real crash of `kill -9`. Returns what followed [`ACK`] on each
/// line, in order, every one of them printed before the kill.
///
/// # Panics
/// Like an assertion, after the child is killed and reaped (it never outlives the call): when
/// it acknowledged nothing in time, or was not killed by the signal (it failed, or ended on its
/// own before the kill: either way the kill did not land in its work). The child calls
/// [`abort_on_panic`] first, so that a failure of its own never passes for the kill.
pub fn kill_nine_child(
    test: &str,
    env: &[(&str, &std::ffi::OsStr)],
    delay: std::time::Duration,
) -> Vec<String> {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = std::process::Command::new(&exe)
        .args([
            "--exact",
            test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the child");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = child.stdout.take().map(|stdout| {
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find(ACK) {
                    let ack = line[at + ACK.len()..].trim().to_owned();
                    if tx.send(ack).is_err() {
                        break;
                    }
                }
            }
        })
    });
    let first = rx.recv_timeout(std::time::Duration::from_secs(20));
    if first.is_ok() {
        std::thread::sleep(delay);
    }
    let killed = child.kill();
    let status = child.wait().expect("reap the child");
    if let Some(reader) = reader {
        reader.join().expect("the child's reader");
    }
    let first = first.unwrap_or_else(|_| {
        panic!("{test}: the child acknowledged nothing within 20 s (it ended: {status})")
    });
    assert!(
        killed.is_ok() && status.signal() == Some(libc::SIGKILL),
        "{test}: the child was not killed by SIGKILL but ended: {status}"
    );
    std::iter::once(first).chain(rx.try_iter()).collect()
}

/// `/dev/full`, if this system has it: every write to it fails with ENOSPC, which makes it
/// the [`Target::full_file`] of real-file-system backends. Without it the checks that need it
/// are skipped, through [`cannot_check`] (a failure under `WALRUS_REQUIRE_CHECKS`).
pub fn full_device() -> Option<&'static Path> {
    let dev = Path::new("/dev/full");
    if !dev.exists() {
        cannot_check("this system has no /dev/full");
        return None;
    }
    Some(dev)
}
