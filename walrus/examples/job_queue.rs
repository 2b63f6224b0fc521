//! A job queue with two named consumers: every job is seen by both the `mailer` and the
//! `indexer`, each at its own pace with its own persistent cursor; they wait for new jobs
//! instead of polling, and a job's block is released once both have consumed it.
//!
//! `cargo run --example job_queue -p walrus`

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use walrus::{ReadConsistency, Walrus};

const JOBS: u64 = 200;

fn worker(wal: &Walrus, name: &str, pause: Duration) -> std::io::Result<u64> {
    let mut done = 0;
    // Bounded: stops after every job, or after a second with nothing new.
    while done < JOBS {
        match wal.read_next_timeout("jobs", name, Duration::from_secs(1))? {
            Some(job) => {
                thread::sleep(pause);
                done += 1;
                if job.offset % 50 == 0 {
                    println!("{name}: job {} ({} bytes)", job.offset, job.data.len());
                }
            }
            None => break,
        }
    }
    Ok(done)
}

fn main() -> std::io::Result<()> {
    let dir = tempfile::tempdir()?;
    let wal = Arc::new(
        Walrus::builder()
            .data_dir(dir.path())
            .consistency(ReadConsistency::StrictlyAtOnce)
            .build()?,
    );
    // Both consumers exist before the first job, so neither misses one.
    wal.append("jobs", b"job 0")?;
    wal.commit_as("jobs", "mailer", 0)?;
    wal.commit_as("jobs", "indexer", 0)?;
    let workers: Vec<_> = [("mailer", 0), ("indexer", 200)]
        .into_iter()
        .map(|(name, micros)| {
            let wal = wal.clone();
            thread::spawn(move || worker(&wal, name, Duration::from_micros(micros)))
        })
        .collect();
    for i in 1..JOBS {
        wal.append("jobs", format!("job {i}").as_bytes())?;
    }
    for c in wal.consumers("jobs") {
        println!("while working: {} at {}, lag {}", c.name, c.cursor, c.lag);
    }
    for w in workers {
        let done = w
            .join()
            .map_err(|_| std::io::Error::other("worker panicked"))??;
        assert_eq!(done, JOBS);
    }
    for c in wal.consumers("jobs") {
        println!("done: {} at {}, lag {}", c.name, c.cursor, c.lag);
        assert_eq!(c.lag, 0);
    }
    Ok(())
}
