//! Quickstart: append, read, batch, and reopen.
//!
//! `cargo run --example quickstart -p walrus`

use walrus::{FsyncSchedule, ReadConsistency, Walrus};

fn main() -> std::io::Result<()> {
    let dir = std::env::temp_dir().join(format!("walrus-quickstart-{}", std::process::id()));
    {
        let wal = Walrus::builder()
            .data_dir(&dir)
            .key("quickstart")
            .consistency(ReadConsistency::StrictlyAtOnce)
            .fsync_schedule(FsyncSchedule::SyncEach)
            .build()?;
        wal.append_for_topic("events", b"hello")?;
        wal.batch_append_for_topic("events", &[b"atomic", b"batch"])?;
        let first = wal.read_next("events", true)?;
        println!(
            "consumed: {:?}",
            first.map(|e| String::from_utf8_lossy(&e.data).into_owned())
        );
        let offset = wal.append("events", b"with an offset")?;
        println!("appended at offset {offset}");
    }
    // Reopen: the cursor survived; the rest is still there.
    let wal = Walrus::builder().data_dir(&dir).key("quickstart").build()?;
    for e in wal.batch_read_for_topic("events", 1 << 20, true)? {
        println!("after reopen: {}", String::from_utf8_lossy(&e.data));
    }
    drop(wal);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
