//! What `inspect` and `stats` print: per topic and per directory, from the read-only store and
//! the directory's files.

use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use walrus_topic::{RecoveryIssue, Store};

/// Segment files and their bytes: allocated on disk and apparent (file lengths).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Disk {
    pub(crate) segments: u64,
    pub(crate) allocated: u64,
    pub(crate) apparent: u64,
    /// Every file of the directory (segments, cursors, watermarks, lock).
    pub(crate) files: u64,
}

/// What the files of `dir` take.
pub(crate) fn disk(dir: &Path) -> io::Result<Disk> {
    let mut d = Disk::default();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        // A live writer may delete a consumed segment meanwhile.
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        d.files += 1;
        d.allocated += meta.blocks() * 512;
        d.apparent += meta.len();
        if entry.path().extension().is_some_and(|e| e == "wseg") {
            d.segments += 1;
        }
    }
    Ok(d)
}

/// One line for a recovery issue: topic, offset, file, position, what and what was done.
pub(crate) fn issue_line(issue: &RecoveryIssue) -> String {
    let topic = if issue.topic.is_empty() {
        "(unknown topic)".to_owned()
    } else {
        format!("topic {:?}", issue.topic)
    };
    format!(
        "{topic} offset {}: {} in {} at byte {} ({:?})",
        issue.offset,
        issue.problem,
        issue.file.display(),
        issue.position,
        issue.action
    )
}

/// `inspect`: every topic with its consumers, then the directory.
pub(crate) fn inspect(store: &Store, out: &mut impl Write) -> io::Result<()> {
    let d = disk(store.dir())?;
    writeln!(out, "directory {}", store.dir().display())?;
    writeln!(
        out,
        "  {} segment files, {} bytes on disk ({} apparent) in {} files",
        d.segments, d.allocated, d.apparent, d.files
    )?;
    let topics = store.topics();
    writeln!(out, "  {} topics", topics.len())?;
    let tier_marks: std::collections::HashMap<String, u64> = store
        .stats()
        .topics
        .into_iter()
        .map(|t| (t.name, t.tier_mark))
        .collect();
    for topic in &topics {
        let end = store.end_offset(topic).unwrap_or(0);
        let first = store.first_retained_offset(topic).unwrap_or(end);
        writeln!(
            out,
            "topic {topic:?}: retained [{first}, {end}), durable to {}, {} blocks",
            store.durable_offset(topic).unwrap_or(0),
            store.retained_blocks(topic).unwrap_or(0)
        )?;
        if let Some(mark) = tier_marks.get(topic).filter(|m| **m > 0) {
            writeln!(
                out,
                "  tiered: entries below {mark} not on this disk are in the remote tier"
            )?;
        }
        for c in store.consumers(topic) {
            let name = if c.name.is_empty() {
                "(default)".to_owned()
            } else {
                format!("{:?}", c.name)
            };
            writeln!(
                out,
                "  consumer {name}: cursor {}, lag {}, skipped {}",
                c.cursor, c.lag, c.skipped
            )?;
        }
    }
    let issues = &store.recovery_report().issues;
    writeln!(out, "recovery: {} issues", issues.len())?;
    for issue in issues {
        writeln!(out, "  {}", issue_line(issue))?;
    }
    Ok(())
}

/// `stats`: totals over the directory.
pub(crate) fn stats(store: &Store, out: &mut impl Write) -> io::Result<()> {
    let d = disk(store.dir())?;
    let topics = store.topics();
    let (mut retained, mut consumers, mut lag, mut blocks) = (0u64, 0u64, 0u64, 0u64);
    // Saturating: offsets come from the directory's records, up to 2^62 each.
    for topic in &topics {
        let end = store.end_offset(topic).unwrap_or(0);
        retained = retained
            .saturating_add(end - store.first_retained_offset(topic).unwrap_or(end).min(end));
        blocks = blocks.saturating_add(store.retained_blocks(topic).unwrap_or(0) as u64);
        for c in store.consumers(topic) {
            consumers += 1;
            lag = lag.saturating_add(c.lag);
        }
    }
    let report = store.recovery_report();
    for (name, value) in [
        ("topics", topics.len() as u64),
        ("consumers", consumers),
        ("entries_retained", retained),
        ("consumer_lag_total", lag),
        ("blocks_retained", blocks),
        ("segments", d.segments),
        ("bytes_on_disk", d.allocated),
        ("bytes_apparent", d.apparent),
        ("recovery_issues", report.issues.len() as u64),
    ] {
        writeln!(out, "{name} {value}")?;
    }
    Ok(())
}

/// Lower-case hexadecimal.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
