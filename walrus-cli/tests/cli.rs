//! The `walrus` command against data directories written by the engine: a clean one, a
//! damaged one (verify exits 1 and names topic, offset and file) and one a live writer holds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use walrus_io::{PwriteStorage, Storage};
use walrus_topic::{Store, StoreOptions};

fn walrus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walrus"))
        .args(args)
        .output()
        .expect("the walrus binary runs")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn entry(i: u64) -> Vec<u8> {
    format!("entry-{i:04}-{}", "x".repeat((i % 50) as usize)).into_bytes()
}

fn options() -> StoreOptions {
    StoreOptions::new()
        .with_block_len(8192)
        .with_segment_len(64 * 1024)
}

fn storage() -> Arc<dyn Storage> {
    Arc::new(PwriteStorage::new())
}

/// A directory with topics `orders` (200 entries, consumers `billing` at 150 and `audit` at
/// 20) and `events` (3 entries), closed cleanly.
fn written(root: &Path) -> PathBuf {
    let dir = root.join("wal");
    let store = Store::open(&dir, storage(), options()).unwrap();
    fill(&store);
    dir
}

fn fill(store: &Store) {
    store.append("orders", &entry(0)).unwrap();
    store.commit_as("orders", "audit", 0).unwrap();
    for i in 1..200 {
        store.append("orders", &entry(i)).unwrap();
    }
    for _ in 0..150 {
        store.read_next_as("orders", "billing", true).unwrap();
    }
    for _ in 0..20 {
        store.read_next_as("orders", "audit", true).unwrap();
    }
    for i in 0..3 {
        store.append("events", &[0xff, 0xfe, i as u8]).unwrap();
    }
    store.sync().unwrap();
}

#[test]
fn inspect_and_stats_show_topics_consumers_and_disk() {
    let root = tempfile::tempdir().unwrap();
    let dir = written(root.path());
    let o = walrus(&["inspect", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let out = text(&o);
    assert!(out.contains("topic \"orders\": retained ["), "{out}");
    assert!(out.contains(", 200), durable to 200"), "{out}");
    assert!(
        out.contains("consumer \"billing\": cursor 150, lag 50"),
        "{out}"
    );
    assert!(
        out.contains("consumer \"audit\": cursor 20, lag 180"),
        "{out}"
    );
    assert!(out.contains("topic \"events\""), "{out}");
    assert!(out.contains("recovery: 0 issues"), "{out}");
    let o = walrus(&["stats", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let out = text(&o);
    for line in [
        "topics 2",
        "consumers 2",
        "consumer_lag_total 230",
        "recovery_issues 0",
    ] {
        assert!(out.lines().any(|l| l == line), "{line} in {out}");
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("segments ") && l != "segments 0"),
        "{out}"
    );
}

#[test]
fn dump_prints_text_hex_and_json_from_an_offset() {
    let root = tempfile::tempdir().unwrap();
    let dir = written(root.path());
    let d = dir.to_str().unwrap();
    let o = walrus(&[
        "dump", d, "--topic", "orders", "--from", "190", "--count", "3",
    ]);
    assert!(o.status.success(), "{o:?}");
    let expected: String = (190..193)
        .map(|i| format!("{i}\t{}\n", String::from_utf8(entry(i)).unwrap()))
        .collect();
    assert_eq!(text(&o), expected);
    let o = walrus(&["dump", d, "--topic", "events", "--format", "hex"]);
    assert_eq!(text(&o), "0\tfffe00\n1\tfffe01\n2\tfffe02\n");
    let o = walrus(&[
        "dump", d, "--topic", "events", "--format", "json", "--count", "1",
    ]);
    let line: serde_json::Value = serde_json::from_str(text(&o).trim()).unwrap();
    assert_eq!(
        line,
        serde_json::json!({"offset": 0, "len": 3, "hex": "fffe00"})
    );
    let o = walrus(&[
        "dump", d, "--topic", "orders", "--format", "json", "--from", "5", "--count", "1",
    ]);
    let line: serde_json::Value = serde_json::from_str(text(&o).trim()).unwrap();
    assert_eq!(line["utf8"], String::from_utf8(entry(5)).unwrap());
    let o = walrus(&["dump", d, "--topic", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"nope\""));
    // A name no topic can have, and a bad command line: 3, not the unreadable directory's 2.
    let long = "n".repeat(256);
    for args in [
        &["dump", d, "--topic", ""][..],
        &["dump", d, "--topic", &long],
        &["dump", d],
        &["frobnicate", d],
    ] {
        let o = walrus(args);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {o:?}");
    }
    assert_eq!(walrus(&["--help"]).status.code(), Some(0));
    // A data directory that is a file cannot be read: 2.
    let file = Path::new(d).with_file_name("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let o = walrus(&["inspect", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}

#[test]
fn verify_exits_0_when_clean_and_1_naming_topic_offset_and_file_when_damaged() {
    let root = tempfile::tempdir().unwrap();
    let dir = written(root.path());
    let o = walrus(&["verify", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(text(&o).starts_with("ok: "), "{}", text(&o));
    // Flip one payload byte of entry 120 of `orders` (synced, unconsumed by `audit`).
    let needle = entry(120);
    let mut hit = None;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
        {
            hit = Some((path, bytes, at));
        }
    }
    let (path, mut bytes, at) = hit.expect("entry 120 is on disk");
    bytes[at + 3] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let before = std::fs::read(&path).unwrap();
    let o = walrus(&["verify", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let out = text(&o);
    let line = out.lines().find(|l| l.starts_with("damaged:")).expect(&out);
    assert!(line.contains("topic \"orders\" offset 120"), "{line}");
    assert!(
        line.contains(path.file_name().unwrap().to_str().unwrap()),
        "{line}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "verify modified nothing"
    );
    // Damage that keeps even a read-only open out (both slots of a journal's header) is
    // damage too: 1, not the unreadable directory's 2.
    let journaled = root.path().join("journaled");
    {
        let store = Store::open(&journaled, storage(), options().with_journal(true)).unwrap();
        fill(&store);
    }
    let journal = journaled.join("journal.wjnl");
    let mut j = std::fs::read(&journal).unwrap();
    j[..1024].fill(0xAA);
    std::fs::write(&journal, &j).unwrap();
    let o = walrus(&["verify", journaled.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(text(&o).starts_with("damaged:"), "{}", text(&o));
    // The verdict stands when the reader closed the pipe (`walrus verify … | head -0`).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = Command::new(env!("CARGO_BIN_EXE_walrus"))
        .args(["verify", dir.to_str().unwrap()])
        .stdout(writer)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1), "damage reported as {status:?}");
    // The other commands still read the rest; `dump` says what it could not print (on
    // stderr, naming the offset) and exits 1; a range without the damage is dumped whole.
    let d = dir.to_str().unwrap();
    let dump = |from: &str, count: &str| {
        walrus(&[
            "dump", d, "--topic", "orders", "--from", from, "--count", count,
        ])
    };
    let o = dump("119", "2");
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(text(&o).starts_with("119\t"), "{}", text(&o));
    assert!(!text(&o).contains("\n120\t"), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("offset 120"), "{err}");
    for (from, count) in [("190", "3"), ("121", "2")] {
        let o = dump(from, count);
        assert_eq!(o.status.code(), Some(0), "{from}: {o:?}");
        assert!(String::from_utf8_lossy(&o.stderr).is_empty(), "{o:?}");
        assert!(text(&o).starts_with(&format!("{from}\t")), "{}", text(&o));
    }
}

/// `dump --format text` prints one line per entry whatever the payload holds: line breaks,
/// tabs and backslashes are escaped, so no entry prints as two, or as another's.
#[test]
fn dump_text_keeps_each_entry_on_its_line() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("wal");
    {
        let store = Store::open(&dir, storage(), options()).unwrap();
        store.append("t", b"x\n7\tforged").unwrap();
        store.append("t", b"back\\slash\r").unwrap();
        store.sync().unwrap();
    }
    let o = walrus(&["dump", dir.to_str().unwrap(), "--topic", "t"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(text(&o), "0\tx\\n7\\tforged\n1\tback\\\\slash\\r\n");
}

#[test]
fn every_command_works_beside_a_live_writer_and_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("live");
    let store = Store::open(&dir, storage(), options()).unwrap();
    fill(&store);
    let files = |dir: &Path| {
        let mut v: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
            .collect();
        v.sort();
        v
    };
    let before = files(&dir);
    let d = dir.to_str().unwrap();
    for args in [
        vec!["inspect", d],
        vec!["verify", d],
        vec!["stats", d],
        vec!["dump", d, "--topic", "orders", "--count", "5"],
    ] {
        let o = walrus(&args);
        assert!(o.status.success(), "{args:?}: {o:?}");
    }
    assert_eq!(files(&dir), before, "nothing on disk changed");
    // The writer carries on.
    store.append("orders", b"after").unwrap();
    store.sync().unwrap();
    let o = walrus(&["dump", d, "--topic", "orders", "--from", "200"]);
    assert_eq!(text(&o), "200\tafter\n");
}

#[test]
fn a_missing_directory_is_reported_with_exit_code_2() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("none");
    let o = walrus(&["inspect", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not exist"),
        "{o:?}"
    );
    assert!(!missing.exists(), "nothing created");
}

/// A directory whose tiered topic's old blocks left the disk for the remote tier: `inspect`
/// says which entries are in the tier, and `verify` checks what is on disk without calling them
/// missing.
#[test]
fn inspect_and_verify_know_what_left_the_disk_for_the_tier() {
    use walrus_io::MemoryTier;
    use walrus_topic::{Retention, Tiering};
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("wal");
    let tier = MemoryTier::new();
    {
        let options = options()
            .with_tier(Arc::new(tier.clone()), "t")
            .with_topic_tiering(
                "orders",
                Tiering::keeping(Retention::unlimited().with_max_bytes(16 * 1024)),
            );
        let store = Store::open(&dir, storage(), options).unwrap();
        for i in 0..2000 {
            store.append("orders", &entry(i)).unwrap();
        }
        store.sync().unwrap();
        store.tier_pass().unwrap();
        assert!(store.retained_blocks("orders").unwrap() <= 4);
    }
    let o = walrus(&["inspect", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let out = text(&o);
    let line = out
        .lines()
        .find(|l| l.contains("tiered: entries below"))
        .unwrap_or_else(|| panic!("{out}"));
    let mark: u64 = line
        .split_whitespace()
        .nth(3)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(mark > 1000, "{line}");
    let o = walrus(&["verify", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}
