//! The S3 WAL buffer end to end: starts a local S3-compatible server (moto), appends from
//! eight producer threads, waits for their tickets, then replays the topic from S3.
//!
//! `cargo run -p walrus-s3 --example s3_buffer` (needs `moto_server`: `pip install 'moto[server]'`).

use std::sync::Arc;
use std::time::Duration;

use walrus_s3::moto::MotoServer;
use walrus_s3::{S3Options, S3Reader, S3Wal};

fn main() -> std::io::Result<()> {
    let server = MotoServer::start()?;
    let store = server.store("example")?;
    let options = S3Options::default().flush_interval(Duration::from_millis(20));
    let wal = Arc::new(S3Wal::open(Arc::clone(&store), "orders", options)?);

    let producers: Vec<_> = (0..8)
        .map(|p| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || -> std::io::Result<()> {
                for i in 0..50 {
                    let ticket = wal.append("orders", format!("order {p}-{i}").as_bytes())?;
                    ticket.wait()?; // in S3 now: safe to tell the customer
                }
                Ok(())
            })
        })
        .collect();
    for p in producers {
        p.join()
            .map_err(|_| std::io::Error::other("producer panicked"))??;
    }
    let stats = wal.stats();
    println!(
        "{} entries acknowledged with {} PUTs ({} bytes)",
        stats.entries_acknowledged, stats.put_requests, stats.bytes_written
    );
    drop(wal);

    let reader = S3Reader::open(store, "orders")?;
    let mut count = 0;
    for record in reader.read("orders", 0) {
        let record = record?;
        if record.offset < 3 {
            println!(
                "{}: {}",
                record.offset,
                String::from_utf8_lossy(&record.data)
            );
        }
        count += 1;
    }
    println!(
        "replayed {count} entries from {} batch objects",
        reader.batch_count()
    );
    Ok(())
}
