//! Local-first mode: every entry goes to a local Walrus topic and to S3; the producer chooses
//! which durability to wait for.
//!
//! The two copies are independent: nothing records which local entries reached S3, and nothing
//! sends them later. An entry waited for only under [`Durability::Local`] is in S3 if its batch
//! was written before the process stopped and did not fail; after a crash (or a failed batch)
//! it may be in the local topic only. Wait for [`Durability::S3`] or [`Durability::Both`] for
//! entries that must reach S3.

use std::io;
use std::ops::Range;

use walrus::{DurableTicket, Walrus};

use crate::ticket::S3Ticket;
use crate::writer::S3Wal;

/// Which copies an append waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The local instance's durability (its fsync schedule's sync); the S3 copy is not
    /// waited for, and a crash before its batch leaves the entry local only.
    Local,
    /// The batch object in S3.
    S3,
    /// Both.
    Both,
}

/// Where an entry ended up: its offset in the local topic and, when waited for, in S3.
///
/// The two offset sequences are independent: the local instance numbers a topic's entries in
/// the order they were appended locally, the S3 writer in the order its flusher took them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Offsets in the local topic.
    pub local: Range<u64>,
    /// Offsets in the S3 prefix (`None` when only local durability was waited for).
    pub s3: Option<Range<u64>>,
}

/// The tickets of one local-first append.
#[derive(Debug)]
#[must_use = "a ticket does nothing unless waited on"]
pub struct LocalFirstTicket {
    local: DurableTicket,
    s3: S3Ticket,
}

impl LocalFirstTicket {
    /// Blocks until the entry has the durability asked for.
    ///
    /// # Errors
    /// The failed copy's error (a local sync failure, or the S3 batch's failure).
    pub fn wait(self, durability: Durability) -> io::Result<Placed> {
        let local_offsets = self.local.offsets();
        let s3 = match durability {
            Durability::Local => {
                self.local.wait()?;
                None
            }
            Durability::S3 => Some(self.s3.wait()?),
            Durability::Both => {
                self.local.wait()?;
                Some(self.s3.wait()?)
            }
        };
        Ok(Placed {
            local: local_offsets,
            s3,
        })
    }

    /// The local ticket (the entry is already written locally).
    pub fn local(&self) -> &DurableTicket {
        &self.local
    }

    /// The S3 ticket.
    pub fn s3(&self) -> &S3Ticket {
        &self.s3
    }
}

/// A local Walrus instance and an S3 writer fed the same entries, local first.
#[derive(Debug)]
pub struct LocalFirst {
    local: Walrus,
    s3: S3Wal,
}

impl LocalFirst {
    /// Pairs a local instance with an S3 writer.
    pub fn new(local: Walrus, s3: S3Wal) -> Self {
        Self { local, s3 }
    }

    /// Appends to the local topic, then queues the entry for S3.
    ///
    /// # Errors
    /// The local append's error (nothing queued for S3 then), or the S3 writer's (the entry
    /// is in the local topic only).
    pub fn append(&self, topic: &str, data: &[u8]) -> io::Result<LocalFirstTicket> {
        let local = self.local.append_with_ticket(topic, data)?;
        let s3 = self.s3.append(topic, data)?;
        Ok(LocalFirstTicket { local, s3 })
    }

    /// The local instance (for reads and cursors).
    pub fn local(&self) -> &Walrus {
        &self.local
    }

    /// The S3 writer.
    pub fn s3(&self) -> &S3Wal {
        &self.s3
    }

    /// Makes everything appended so far durable in both places.
    ///
    /// # Errors
    /// Either side's error.
    pub fn flush(&self) -> io::Result<()> {
        self.local.flush()?;
        self.s3.flush()
    }

    /// Splits into the two halves.
    pub fn into_parts(self) -> (Walrus, S3Wal) {
        (self.local, self.s3)
    }
}
