//! Event sourcing: the topic is the source of truth; state is rebuilt by replaying it with an
//! iterator (no cursor moves), at startup or whenever a fresh view is needed.
//!
//! `cargo run --example event_sourcing -p walrus`

use std::collections::BTreeMap;

use walrus::{FsyncSchedule, Walrus};

/// `deposit:<account>:<amount>` or `withdraw:<account>:<amount>`.
fn apply(balances: &mut BTreeMap<String, i64>, event: &[u8]) {
    let text = String::from_utf8_lossy(event);
    let mut parts = text.split(':');
    let (Some(kind), Some(account), Some(amount)) = (parts.next(), parts.next(), parts.next())
    else {
        eprintln!("skipping a malformed event: {text}");
        return;
    };
    let Ok(amount) = amount.parse::<i64>() else {
        eprintln!("skipping an event with a bad amount: {text}");
        return;
    };
    let balance = balances.entry(account.to_owned()).or_default();
    match kind {
        "deposit" => *balance += amount,
        "withdraw" => *balance -= amount,
        other => eprintln!("skipping unknown event kind {other:?}"),
    }
}

fn rebuild(wal: &Walrus) -> std::io::Result<BTreeMap<String, i64>> {
    let mut balances = BTreeMap::new();
    for record in wal.iter("ledger", 0) {
        apply(&mut balances, &record?.data);
    }
    Ok(balances)
}

fn main() -> std::io::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let wal = Walrus::builder()
            .data_dir(dir.path())
            .fsync_schedule(FsyncSchedule::SyncEach)
            .build()?;
        for event in ["deposit:alice:100", "deposit:bob:50", "withdraw:alice:30"] {
            wal.append("ledger", event.as_bytes())?;
        }
        // A transfer is two events that must both happen: one atomic batch.
        wal.append_batch("ledger", &[b"withdraw:bob:20", b"deposit:alice:20"])?;
        println!("live view: {:?}", rebuild(&wal)?);
    }
    // After a restart (or a crash: every append above was durable when it returned), the
    // same state comes back from the log alone.
    let wal = Walrus::builder().data_dir(dir.path()).build()?;
    let balances = rebuild(&wal)?;
    println!("rebuilt after reopen: {balances:?}");
    assert_eq!(balances.get("alice"), Some(&90));
    assert_eq!(balances.get("bob"), Some(&30));
    Ok(())
}
