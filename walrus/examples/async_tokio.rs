//! Async use with tokio: durable tickets and arrival futures are plain `Future`s (woken by
//! Walrus's own threads), so they can be awaited on any runtime without blocking it.
//!
//! `cargo run --example async_tokio -p walrus`

use std::sync::Arc;
use std::time::Duration;

use walrus::{FsyncSchedule, Walrus};

async fn consumer(wal: Arc<Walrus>, wanted: u64) -> std::io::Result<Vec<u64>> {
    let mut seen = Vec::new();
    while (seen.len() as u64) < wanted {
        match wal.read_next_as("events", "async", true)? {
            Some(r) => seen.push(r.offset),
            None => {
                let next = wal.cursor_as("events", "async").unwrap_or(0);
                // Wait without blocking a runtime thread, with the runtime's timeout.
                tokio::time::timeout(Duration::from_secs(5), wal.arrival("events", next)?)
                    .await
                    .map_err(|_| std::io::Error::other("no entry within 5 s"))??;
            }
        }
    }
    Ok(seen)
}

fn main() -> std::io::Result<()> {
    let dir = tempfile::tempdir()?;
    let wal = Arc::new(
        Walrus::builder()
            .data_dir(dir.path())
            .fsync_schedule(FsyncSchedule::Milliseconds(5))
            .build()?,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    runtime.block_on(async {
        let reader = tokio::spawn(consumer(wal.clone(), 20));
        for i in 0..20u64 {
            // Append, then await durability: the ticket completes when a sync covers it.
            let ticket = wal.append_with_ticket("events", &i.to_le_bytes())?;
            let offsets = ticket.await?;
            assert_eq!(offsets, i..i + 1);
        }
        let seen = reader
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        assert_eq!(seen, (0..20).collect::<Vec<_>>());
        println!("appended 20 durable entries and consumed them asynchronously");
        Ok::<(), std::io::Error>(())
    })
}
