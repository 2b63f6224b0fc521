//! `walrus`: the operator's view of a Walrus data directory — `inspect`, `verify`, `dump` and
//! `stats`. Every command opens the directory read-only ([`Store::open_read_only`]): no lock is
//! taken and nothing on disk changes, so it can run beside a live writer.
//!
//! Exit codes: 0 success (for `verify`: no damage), 1 damage found by `verify`, 2 the directory
//! could not be read (the error is printed), 3 a bad command line (a `--topic` name included).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use walrus_io::{PwriteStorage, Storage};
use walrus_topic::{Action, Problem, RecoveryIssue, RecoveryMode, Store, StoreOptions};

mod report;

/// Inspect, verify and dump Walrus data directories (read-only; safe beside a live writer).
#[derive(Debug, Parser)]
#[command(name = "walrus", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Topics (end, durable end, oldest retained offset, blocks), their consumers and lag,
    /// segments and bytes on disk, and what recovery found.
    Inspect {
        /// The data directory.
        dir: PathBuf,
    },
    /// Validates every entry. Exit 0 when clean, 1 when damaged: one line per problem naming
    /// topic, offset and file. An unsynced tail (torn by a crash, or being written by a live
    /// writer) is noted, not counted as damage.
    Verify {
        /// The data directory.
        dir: PathBuf,
    },
    /// Prints a topic's entries, one per line.
    Dump {
        /// The data directory.
        dir: PathBuf,
        /// The topic.
        #[arg(long)]
        topic: String,
        /// The first offset (default: the oldest retained).
        #[arg(long)]
        from: Option<u64>,
        /// At most this many entries (default: all).
        #[arg(long)]
        count: Option<u64>,
        /// How each payload is printed.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Totals: topics, consumers, entries retained, segments and bytes on disk.
    Stats {
        /// The data directory.
        dir: PathBuf,
    },
}

/// How `dump` prints a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// `offset<TAB>payload`, the payload as UTF-8 (invalid bytes replaced; `\`, newlines,
    /// carriage returns and tabs escaped as `\\`, `\n`, `\r`, `\t`).
    Text,
    /// `offset<TAB>payload`, the payload in hexadecimal.
    Hex,
    /// One JSON object per line: `offset`, `len`, and `utf8` or (if not UTF-8) `hex`.
    Json,
}

/// The exit code of a bad command line (clap's own, 2, is the unreadable directory's here).
const USAGE: u8 = 3;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version are asked for, not errors.
            return if e.use_stderr() {
                ExitCode::from(USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let result = match cli.command {
        Command::Inspect { dir } => open(&dir, RecoveryMode::SkipCorrupted)
            .and_then(|s| report::inspect(&s, &mut out))
            .map(|()| ExitCode::SUCCESS),
        Command::Verify { dir } => verify(&dir, &mut out),
        Command::Dump {
            dir,
            topic,
            from,
            count,
            format,
        } => {
            // A name no topic can have is a bad command line, found before the directory is read.
            if let Err(e) = walrus_block::validate_topic_name(&topic) {
                eprintln!("walrus: --topic {topic:?}: {e}");
                return ExitCode::from(USAGE);
            }
            open(&dir, RecoveryMode::SkipCorrupted)
                .and_then(|s| dump(&s, &topic, from, count, format, &mut out))
        }
        Command::Stats { dir } => open(&dir, RecoveryMode::SkipCorrupted)
            .and_then(|s| report::stats(&s, &mut out))
            .map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        // A closed pipe (`walrus dump … | head`) is the reader's choice, not a failure.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("walrus: {e}");
            ExitCode::from(2)
        }
    }
}

/// Opens `dir` read-only with `mode` (`SkipCorrupted`: every valid entry is served and every
/// problem reported, whatever the damage).
fn open(dir: &Path, mode: RecoveryMode) -> io::Result<Store> {
    let storage: Arc<dyn Storage> = Arc::new(PwriteStorage::new());
    Store::open_read_only(dir, storage, StoreOptions::new().with_recovery(mode))
}

/// Whether an issue is damage, or what an interrupted (or ongoing) unsynced write leaves: a
/// torn tail or unfinished batch above the durable watermark (recovery cuts those), or a
/// cursor that had passed entries a power cut took.
fn is_damage(issue: &RecoveryIssue) -> bool {
    let unsynced_tail = matches!(issue.problem, Problem::TornTail | Problem::UnfinishedBatch)
        && issue.action == Action::Cut;
    !(unsynced_tail || issue.problem == Problem::CursorBeyondEnd)
}

/// One verification pass: the lines it would print, how many are damage, entries read intact.
///
/// # Errors
/// A read that fails for another reason than damage (`InvalidData`): the device or the
/// permissions (the directory could not be read, which is not damage). Entries a live writer
/// released while the pass read (`NotFound`) end the topic's pass.
fn verify_pass(store: &Store) -> io::Result<(Vec<String>, u64, u64)> {
    let mut lines = Vec::new();
    let mut damage = 0u64;
    for issue in &store.recovery_report().issues {
        let line = report::issue_line(issue);
        if is_damage(issue) {
            damage += 1;
            lines.push(format!("damaged: {line}"));
        } else {
            lines.push(format!("note: {line} (unsynced tail, not damage)"));
        }
    }
    // Then read every entry recovery kept: each is checked again (CRC32C) as it is read.
    let mut entries = 0u64;
    for topic in store.topics() {
        let Some(mut from) = store.first_retained_offset(&topic) else {
            continue;
        };
        // Each damaged entry is a line; the pass goes on after it (each round starts past the
        // last damaged offset, so it ends).
        'topic: loop {
            let mut iter = store.iter(&topic, from);
            loop {
                match iter.next() {
                    None => break 'topic,
                    Some(Ok(_)) => entries += 1,
                    Some(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                        damage += 1;
                        lines.push(format!("damaged: {e} (in {})", store.dir().display()));
                        from = iter.position() + 1;
                        continue 'topic;
                    }
                    Some(Err(e)) if e.kind() == io::ErrorKind::NotFound => break 'topic,
                    Some(Err(e)) => return Err(e),
                }
            }
        }
    }
    Ok((lines, damage, entries))
}

fn verify(dir: &Path, out: &mut impl Write) -> io::Result<ExitCode> {
    // Damage that keeps even a read-only open out (a damaged journal header) is damage.
    let unopened = |e: io::Error, out: &mut dyn Write| match writeln!(out, "damaged: {e}") {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(ExitCode::from(1)),
    };
    let store = match open(dir, RecoveryMode::SkipCorrupted) {
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return unopened(e, out),
        other => other?,
    };
    let (mut lines, mut damage, mut entries) = verify_pass(&store)?;
    if damage > 0 {
        // A live writer may have been in the middle of a write the pass read (a block header
        // half written): what is damage is still there a moment later.
        let again = match open(dir, RecoveryMode::SkipCorrupted) {
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return unopened(e, out),
            other => other?,
        };
        (lines, damage, entries) = verify_pass(&again)?;
    }
    let code = if damage == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    let printed = (|| {
        for line in &lines {
            writeln!(out, "{line}")?;
        }
        if damage == 0 {
            writeln!(out, "ok: {entries} entries verified in {}", dir.display())
        } else {
            writeln!(
                out,
                "{damage} problems in {} ({entries} entries read intact)",
                dir.display()
            )
        }
    })();
    match printed {
        // The reader closed the pipe: the verdict still stands.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(code),
        Err(e) => Err(e),
        Ok(()) => Ok(code),
    }
}

fn dump(
    store: &Store,
    topic: &str,
    from: Option<u64>,
    count: Option<u64>,
    format: Format,
    out: &mut impl Write,
) -> io::Result<ExitCode> {
    let Some(first) = store.first_retained_offset(topic) else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "topic {topic:?} does not exist in {}",
                store.dir().display()
            ),
        ));
    };
    let limit = usize::try_from(count.unwrap_or(u64::MAX)).unwrap_or(usize::MAX);
    let start = from.unwrap_or(first);
    // The offsets this dump covers, from what it printed: from `start` to its last entry (to
    // the topic's end when it stopped there). Damage elsewhere is not missing from it.
    let (mut printed, mut first_printed, mut last_printed) = (0usize, None, None);
    for entry in store.iter(topic, start).take(limit) {
        let (offset, data) = entry?;
        printed += 1;
        first_printed.get_or_insert(offset);
        last_printed = Some(offset);
        match format {
            Format::Text => writeln!(out, "{offset}\t{}", one_line(&data))?,
            Format::Hex => writeln!(out, "{offset}\t{}", report::hex(&data))?,
            Format::Json => {
                let mut line = serde_json::json!({ "offset": offset, "len": data.len() });
                match std::str::from_utf8(&data) {
                    Ok(text) => line["utf8"] = text.into(),
                    Err(_) => line["hex"] = report::hex(&data).into(),
                }
                writeln!(out, "{line}")?;
            }
        }
    }
    // What recovery skipped of the range dumped is not in the dump: said, and the exit code
    // says so.
    let skipped: Vec<String> = store
        .recovery_report()
        .issues
        .iter()
        .filter(|i| i.topic == topic && is_damage(i))
        .filter(|i| {
            let end = match last_printed {
                Some(last) if printed == limit => last + 1,
                _ => u64::MAX,
            };
            let lost = match i.problem {
                Problem::Missing { count } => count.max(1),
                _ => 1,
            };
            // Damage before `start` whose skip reaches past it (the first entry printed is not
            // `start`, or a known count says so) is missing from the dump as well.
            let reaches = i.offset.saturating_add(lost) > start
                || first_printed.is_some_and(|f| f > start && i.offset < f);
            i.offset < end && (i.offset >= start || reaches)
        })
        .map(report::issue_line)
        .collect();
    for line in &skipped {
        eprintln!("walrus: damaged, not dumped: {line}");
    }
    Ok(if skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `data` as UTF-8 (invalid bytes replaced) on one line: `\`, newlines, carriage returns and
/// tabs escaped (`\\`, `\n`, `\r`, `\t`), so that no entry prints as two, or as another's.
fn one_line(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out
}
