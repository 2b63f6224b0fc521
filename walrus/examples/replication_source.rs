//! A replication source: a shipper tails a topic with its own named consumer and ships each
//! entry to a replica (here another Walrus instance; in practice a socket or object store).
//! The shipper's cursor is persisted with each read, so after a restart it resumes where it
//! stopped and the replica gets every entry once, in order.
//!
//! `cargo run --example replication_source -p walrus`

use std::time::Duration;

use walrus::{FsyncSchedule, ReadConsistency, Walrus};

/// Ships what is there now (waiting briefly for more); returns how many entries it shipped.
fn ship(primary: &Walrus, replica: &Walrus) -> std::io::Result<u64> {
    let mut shipped = 0;
    while let Some(record) =
        primary.read_next_timeout("orders", "shipper", Duration::from_millis(50))?
    {
        let at = replica.append("orders", &record.data)?;
        assert_eq!(at, record.offset, "the replica keeps the primary's offsets");
        shipped += 1;
    }
    Ok(shipped)
}

fn main() -> std::io::Result<()> {
    let root = tempfile::tempdir()?;
    let open = |name: &str| {
        Walrus::builder()
            .data_dir(root.path().join(name))
            .consistency(ReadConsistency::StrictlyAtOnce)
            .fsync_schedule(FsyncSchedule::SyncEach)
            .build()
    };
    let replica = open("replica")?;
    {
        let primary = open("primary")?;
        primary.append("orders", b"order 0")?;
        primary.commit_as("orders", "shipper", 0)?;
        for i in 1..10 {
            primary.append("orders", format!("order {i}").as_bytes())?;
        }
        println!("shipped {}", ship(&primary, &replica)?);
        primary.append("orders", b"order 10")?;
        // The shipper stops here (a restart, a crash): order 10 is not shipped yet.
    }
    let primary = open("primary")?;
    primary.append("orders", b"order 11")?;
    println!("shipped {} after the restart", ship(&primary, &replica)?);
    let copied: Vec<Vec<u8>> = replica
        .iter("orders", 0)
        .map(|r| r.map(|r| r.data))
        .collect::<std::io::Result<_>>()?;
    assert_eq!(copied.len(), 12);
    assert_eq!(copied[10], b"order 10");
    Ok(())
}
