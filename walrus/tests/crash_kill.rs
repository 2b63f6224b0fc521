//! The real crash test: a child process appends (and consumes) and reports each acknowledged
//! offset on a pipe; the parent kills it with SIGKILL at a random moment, reopens the directory
//! and checks that every acknowledged entry is there, intact, in order, once, that no batch is
//! cut, that nothing unwritten appears, and that no acknowledged consumed entry is handed out
//! again. The child runs with `SyncEach` on the default backend, and with `NoFsync` on the mmap
//! backend: a process crash loses nothing that is in the kernel, and an append stored into a
//! mapping is in the kernel when it returns.
//!
//! `WALRUS_CRASH_KILLS=N` sets the number of kills (default 30); `cargo xtask crash --kills N`.

use std::path::Path;
use std::time::{Duration, Instant};

use walrus::{BackendKind, FsyncSchedule, ReadConsistency, Walrus};
use walrus_io::SeededRng;
use walrus_io::conformance::{ACK, abort_on_panic, kill_nine_child};

const TOPIC: &str = "killed";

/// The payload of offset `o`: `[batch start u64][batch len u32]` then bytes derived from `o`.
fn payload(o: u64, batch_start: u64, batch_len: u32) -> Vec<u8> {
    let len = 16 + (o.wrapping_mul(2_654_435_761) % 1500) as usize;
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&batch_start.to_le_bytes());
    p.extend_from_slice(&batch_len.to_le_bytes());
    let mut rng = SeededRng::new(o ^ 0xA5A5_5A5A_DEAD_BEEF);
    while p.len() < len {
        p.push(rng.next_u64() as u8);
    }
    p
}

/// How the child writes: `SyncEach` on the default backend, or `NoFsync` on the mmap backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Synced,
    MmapUnsynced,
}

impl Mode {
    const ENV: &str = "WALRUS_KILL_CHILD_MODE";

    fn name(self) -> &'static str {
        match self {
            Self::Synced => "synced",
            Self::MmapUnsynced => "mmap-unsynced",
        }
    }

    fn from_env() -> Self {
        match std::env::var(Self::ENV).as_deref() {
            Ok("mmap-unsynced") => Self::MmapUnsynced,
            _ => Self::Synced,
        }
    }
}

fn open(dir: &Path, mode: Mode) -> Walrus {
    let (schedule, backend) = match mode {
        Mode::Synced => (FsyncSchedule::SyncEach, BackendKind::Pwrite),
        Mode::MmapUnsynced => (FsyncSchedule::NoFsync, BackendKind::Mmap),
    };
    Walrus::builder()
        .data_dir(dir)
        .consistency(ReadConsistency::StrictlyAtOnce)
        .fsync_schedule(schedule)
        .backend(backend)
        .segment_len(256 * 1024)
        .block_len(16 * 1024)
        .quiet(true)
        .build()
        .expect("open")
}

/// How long a child runs at most: it is killed long before, and one that ends on its own fails
/// the parent's check that the kill landed.
const CHILD_LIFE: Duration = Duration::from_secs(120);

/// The child: appends singles and batches (until killed, for [`CHILD_LIFE`] at most), consuming
/// now and then; prints `A start len` after each acknowledged append and `C offset` after each
/// acknowledged consuming read, after [`ACK`].
#[test]
#[ignore = "run by kill_nine_loop as a child process"]
fn crash_child() {
    let Some(dir) = std::env::var_os("WALRUS_KILL_CHILD_DIR") else {
        return;
    };
    abort_on_panic();
    let wal = open(Path::new(&dir), Mode::from_env());
    let started = Instant::now();
    let mut i = 0u64;
    while started.elapsed() < CHILD_LIFE {
        let start = wal.end_offset(TOPIC).unwrap_or(0);
        if i.is_multiple_of(4) {
            let n = 2 + (i % 7) as u32;
            let batch: Vec<Vec<u8>> = (0..u64::from(n))
                .map(|k| payload(start + k, start, n))
                .collect();
            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            let r = wal.append_batch(TOPIC, &refs).expect("batch");
            assert_eq!(r.start, start);
            println!("{ACK} A {start} {n}");
        } else {
            let o = wal
                .append(TOPIC, &payload(start, start, 1))
                .expect("append");
            assert_eq!(o, start);
            println!("{ACK} A {start} 1");
        }
        if i.is_multiple_of(3)
            && let Some(r) = wal.read_next_record(TOPIC, true).expect("read")
        {
            println!("{ACK} C {}", r.offset);
        }
        i += 1;
    }
}

#[test]
fn kill_nine_loop() {
    kill_nine(Mode::Synced);
}

#[test]
fn kill_nine_loop_on_mmap_unsynced() {
    kill_nine(Mode::MmapUnsynced);
}

fn kill_nine(mode: Mode) {
    let kills: u64 = std::env::var("WALRUS_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SeededRng::new(0x1234_5678_9ABC_DEF0);
    let mut acked_end = 0u64; // every offset below was acknowledged in some run
    let mut consumed = None::<u64>; // highest offset whose consumption was acknowledged
    let started = Instant::now();
    for kill in 0..kills {
        let delay = Duration::from_millis(20 + rng.below(120));
        // Let it get going (it must acknowledge something), then kill it at a random moment.
        let acks = kill_nine_child(
            "crash_child",
            &[
                ("WALRUS_KILL_CHILD_DIR", dir.path().as_os_str()),
                (Mode::ENV, mode.name().as_ref()),
            ],
            delay,
        );
        let before = acked_end;
        for line in acks {
            let mut parts = line.split_whitespace();
            match (
                parts.next(),
                parts.next().and_then(|v| v.parse::<u64>().ok()),
            ) {
                (Some("A"), Some(start)) => {
                    let n: u64 = parts.next().and_then(|v| v.parse().ok()).unwrap();
                    acked_end = acked_end.max(start + n);
                }
                (Some("C"), Some(o)) => consumed = Some(consumed.map_or(o, |c: u64| c.max(o))),
                _ => panic!("kill {kill}: the child acknowledged {line:?}"),
            }
        }
        assert!(
            acked_end > before,
            "kill {kill}: no append acknowledged in this run"
        );

        let wal = open(dir.path(), mode);
        let end = wal.end_offset(TOPIC).unwrap_or(0);
        assert!(
            end >= acked_end,
            "kill {kill}: acknowledged entries lost: end {end} < {acked_end}"
        );
        let cursor = wal.cursor(TOPIC).unwrap_or(0);
        if let Some(c) = consumed {
            assert!(
                cursor > c,
                "kill {kill}: consumed offset {c} would be handed out again (cursor {cursor})"
            );
        }
        // Every unconsumed entry is the one written at its offset, and no batch is cut.
        let mut o = cursor.min(end);
        while o < end {
            let entry = wal
                .read_at(TOPIC, o)
                .unwrap_or_else(|e| panic!("kill {kill} @{o}: {e}"));
            let data = entry
                .unwrap_or_else(|| panic!("kill {kill}: offset {o} missing below end {end}"))
                .data;
            let batch_start = u64::from_le_bytes(data[..8].try_into().unwrap());
            let batch_len = u32::from_le_bytes(data[8..12].try_into().unwrap());
            assert_eq!(
                data,
                payload(o, batch_start, batch_len),
                "kill {kill}: offset {o} is not what was written"
            );
            assert!(
                batch_start + u64::from(batch_len) <= end,
                "kill {kill}: batch at {batch_start} cut at {end}"
            );
            o += 1;
        }
        acked_end = end; // what survived is the base of the next run
        if let Some(c) = consumed {
            consumed = Some(c.max(cursor.saturating_sub(1)));
        }
        drop(wal);
    }
    eprintln!(
        "kill -9 loop ({}): {kills} kills in {:.1?}, {acked_end} entries",
        mode.name(),
        started.elapsed()
    );
}
