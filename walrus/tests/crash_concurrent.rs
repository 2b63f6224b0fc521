//! Concurrent simulated crashes: many threads, one power cut, an oracle of what each thread saw.
//!
//! Appenders (singles, batches, ticket waiters), consuming and peeking readers, a thread calling
//! `flush()` and the instance's own background syncer all run at once on the simulated backend,
//! whose syncs take time (`SimStorage::set_sync_latency`), so writes, syncs and the power cut
//! overlap. The power is cut at a random moment; the directory is reopened with
//! `TolerateCorruptedTail` and checked against the merged log of what every thread saw:
//!
//! 1. Durability: under `SyncEach` every acknowledged append is there, intact; under every
//!    schedule so is every entry whose ticket resolved, and every entry whose append returned
//!    before the start of a `flush()` that succeeded.
//! 2. No offset carries different data than a reader saw; under `SyncEach` (visible means
//!    acknowledged means durable) and before a successful flush, a read entry is still there.
//! 3. Consumed entries are not re-delivered: under `SyncEach` and `Milliseconds` none with
//!    `StrictlyAtOnce`, at most `persist_every - 1` (per consuming reader) with `AtLeastOnce`;
//!    consumed before a successful flush: none, whatever the schedule.
//! 4. Offsets are never reused: the first append after reopening gets an offset past everything
//!    durable, the reopened cursor and, under `SyncEach`, everything acknowledged or read.
//! 5. Every entry readable after reopening is one some appender attempted, at its offset; a batch
//!    is there entirely or not at all; reading on from the cursor yields exactly what is there.
//!
//! Plus checks on what the threads saw before the crash (no call failed before the power cut,
//! reads only return written entries at their offsets, no entry consumed twice, cursors only
//! move forward) and `acknowledged_appends_survive_a_concurrent_flush`, a focused reproduction
//! of an acknowledged `SyncEach` append lost to a sync that was already in flight.
//!
//! `WALRUS_CRASH_CONCURRENT_SEEDS=N` runs seeds 0..N (default 24), or F..F+N with
//! `WALRUS_CRASH_CONCURRENT_FROM=F`;
//! `WALRUS_CRASH_CONCURRENT_SEED=S` replays one seed and prints its whole event log on failure.
//! The seed fixes the setup and every thread's sequence of choices (topics, operations,
//! payloads, crash delay); the interleaving is the scheduler's, so a replay may interleave
//! differently. The event log (global sequence numbers) of a failing run is the record of the
//! interleaving that failed. A seed that hangs aborts the run after two minutes, naming itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use walrus::Storage;
use walrus::sim::{CrashMode, SimStorage};
use walrus::{FsyncSchedule, ReadConsistency, RecoveryMode, Walrus};

/// Every worker loop stops after this many operations, if the crash has not stopped it first.
const MAX_OPS: u64 = 2000;
/// A seed still running after this long has a hung call: abort with the seed rather than hang CI.
const SEED_TIME_LIMIT: Duration = Duration::from_secs(120);
/// Events of the log printed for a failing seed in a multi-seed run (a replay prints all).
const LOG_TAIL: usize = 150;

/// The workspace's seeded generator: a failing seed replays on any build.
use walrus_io::SeededRng as Rng;

#[derive(Debug, Clone, Copy)]
struct Setup {
    schedule: FsyncSchedule,
    consistency: ReadConsistency,
    crash: CrashMode,
    topics: usize,
    appenders: usize,
    readers: usize,
    sync_latency: Duration,
    crash_after: Duration,
}

impl Setup {
    fn from_seed(rng: &mut Rng) -> Self {
        let sync_latency = Duration::from_micros(200 + rng.below(800));
        let schedule = match rng.below(4) {
            0 | 1 => FsyncSchedule::SyncEach,
            2 => FsyncSchedule::Milliseconds(2 + rng.below(9)),
            _ => FsyncSchedule::NoFsync,
        };
        let consistency = if rng.chance(50) {
            ReadConsistency::StrictlyAtOnce
        } else {
            ReadConsistency::AtLeastOnce {
                persist_every: 1 + rng.below(4) as u32,
            }
        };
        let crash = match rng.below(3) {
            0 => CrashMode::DropUnsynced,
            1 => CrashMode::TearLastWrite,
            _ => CrashMode::RandomSectors,
        };
        Self {
            schedule,
            consistency,
            crash,
            topics: 1 + rng.below(3) as usize,
            appenders: 2 + rng.below(3) as usize,
            readers: 1 + rng.below(2) as usize,
            sync_latency,
            crash_after: Duration::from_micros(1_000 + rng.below(29_000)),
        }
    }

    fn sync_each(&self) -> bool {
        self.schedule == FsyncSchedule::SyncEach
    }

    fn persist_every(&self) -> u64 {
        match self.consistency {
            ReadConsistency::StrictlyAtOnce => 1,
            ReadConsistency::AtLeastOnce { persist_every } => u64::from(persist_every.max(1)),
        }
    }
}

/// Opens (or reopens) the instance: the same setup before and after the crash.
fn open(sim: &SimStorage, s: &Setup) -> io::Result<Walrus> {
    Walrus::builder()
        .data_dir("/cc")
        .storage(Arc::new(sim.clone()) as Arc<dyn Storage>)
        .consistency(s.consistency)
        .fsync_schedule(s.schedule)
        .recovery_mode(RecoveryMode::TolerateCorruptedTail)
        .segment_len(64 * 1024)
        .block_len(8 * 1024)
        .durable_mark_interval(Duration::from_millis(1))
        // Background maintenance (the default): segment deletion and preparation race too.
        .quiet(true)
        .build()
}

fn topic_name(t: usize) -> String {
    format!("topic-{t}")
}

/// `tag|filler`: the tag makes every payload of a run distinct and recognisable in the log.
fn payload(rng: &mut Rng, tag: &str) -> Vec<u8> {
    let filler = match rng.below(20) {
        0 => 0,
        1..=16 => rng.below(600),
        17 | 18 => 600 + rng.below(2500),
        _ => 8200 + rng.below(4000), // larger than a block
    } as usize;
    let fill = rng.next_u64();
    let mut p = Vec::with_capacity(tag.len() + 1 + filler);
    p.extend_from_slice(tag.as_bytes());
    p.push(b'|');
    p.extend((0..filler).map(|i| (fill >> (i % 8 * 8)) as u8 ^ i as u8));
    p
}

/// A payload's tag and length, for the log; anything else as a hex prefix.
fn tag(d: &[u8]) -> String {
    let head = d.iter().position(|&b| b == b'|').map(|i| &d[..i]);
    match head.map(std::str::from_utf8) {
        Some(Ok(s)) if !s.is_empty() => format!("{s}({}B)", d.len()),
        _ => format!(
            "<{} unrecognised bytes {:02x?}>",
            d.len(),
            &d[..d.len().min(8)]
        ),
    }
}

fn tags(ps: &[Vec<u8>]) -> String {
    ps.iter()
        .map(|p| tag(p.as_slice()))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---- The event log ------------------------------------------------------------------------

type Payloads = Arc<Vec<Vec<u8>>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Single,
    Batch,
    Ticket,
    BatchTicket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Who {
    Appender(usize),
    Reader(usize),
    Flusher,
    Main,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Who::Appender(i) => write!(f, "a{i}"),
            Who::Reader(i) => write!(f, "r{i}"),
            Who::Flusher => f.write_str("flusher"),
            Who::Main => f.write_str("main"),
        }
    }
}

#[derive(Debug)]
enum Ev {
    /// Logged before the call, so entries of appends in flight at the crash are recognised.
    Attempt {
        kind: Kind,
        topic: usize,
        payloads: Payloads,
    },
    /// `append` / `append_batch` returned these offsets.
    Acked {
        topic: usize,
        offsets: Range<u64>,
        payloads: Payloads,
    },
    /// `append_with_ticket` / `append_batch_with_ticket` returned: written, not yet durable.
    TicketIssued {
        topic: usize,
        offsets: Range<u64>,
        payloads: Payloads,
    },
    /// The ticket's `wait()` returned Ok.
    TicketDurable {
        topic: usize,
        offsets: Range<u64>,
        payloads: Payloads,
    },
    Failed {
        what: &'static str,
        error: String,
    },
    FlushStarted,
    FlushOk {
        started: u64,
    },
    Consumed {
        topic: usize,
        offset: u64,
        data: Vec<u8>,
    },
    Peeked {
        topic: usize,
        offset: u64,
        data: Vec<u8>,
    },
    Crash(CrashMode),
    /// Something a thread saw that contradicts the API on its own (reported as a violation).
    Anomaly(String),
}

impl fmt::Display for Ev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ev::Attempt {
                kind,
                topic,
                payloads,
            } => write!(f, "{kind:?} to topic-{topic}: {}", tags(payloads)),
            Ev::Acked {
                topic,
                offsets,
                payloads,
            } => write!(f, "acked topic-{topic}@{offsets:?}: {}", tags(payloads)),
            Ev::TicketIssued {
                topic,
                offsets,
                payloads,
            } => write!(
                f,
                "ticket issued topic-{topic}@{offsets:?}: {}",
                tags(payloads)
            ),
            Ev::TicketDurable { topic, offsets, .. } => {
                write!(f, "ticket durable topic-{topic}@{offsets:?}")
            }
            Ev::Failed { what, error } => write!(f, "{what} failed: {error}"),
            Ev::FlushStarted => f.write_str("flush started"),
            Ev::FlushOk { started } => write!(f, "flush ok (started #{started})"),
            Ev::Consumed {
                topic,
                offset,
                data,
            } => write!(f, "consumed topic-{topic}@{offset}: {}", tag(data)),
            Ev::Peeked {
                topic,
                offset,
                data,
            } => write!(f, "peeked topic-{topic}@{offset}: {}", tag(data)),
            Ev::Crash(mode) => write!(f, "POWER CUT ({mode:?})"),
            Ev::Anomaly(msg) => write!(f, "anomaly: {msg}"),
        }
    }
}

#[derive(Debug)]
struct Logged {
    seq: u64,
    who: Who,
    ev: Ev,
}

impl fmt::Display for Logged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = self.who.to_string(); // padded below, which `Who`'s Display does not do
        write!(f, "#{:<6} {who:<7} {}", self.seq, self.ev)
    }
}

/// One thread's part of the log. The shared sequence number orders events across threads: an
/// event logged after a call returned has a smaller number than one logged before a call
/// started only if the first call really returned before the second started.
struct Log<'a> {
    seq: &'a AtomicU64,
    who: Who,
    events: Vec<Logged>,
}

impl<'a> Log<'a> {
    fn new(seq: &'a AtomicU64, who: Who) -> Self {
        Self {
            seq,
            who,
            events: Vec::new(),
        }
    }

    fn push(&mut self, ev: Ev) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        self.events.push(Logged {
            seq,
            who: self.who,
            ev,
        });
        seq
    }
}

// ---- The threads --------------------------------------------------------------------------

fn appender(
    wal: &Walrus,
    id: usize,
    mut rng: Rng,
    setup: &Setup,
    seq: &AtomicU64,
    stop: &AtomicBool,
) -> Vec<Logged> {
    let mut log = Log::new(seq, Who::Appender(id));
    for n in 0..MAX_OPS {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let topic = rng.below(setup.topics as u64) as usize;
        let kind = match rng.below(10) {
            0..=4 => Kind::Single,
            5..=7 => Kind::Batch,
            8 => Kind::Ticket,
            _ => Kind::BatchTicket,
        };
        let count = match kind {
            Kind::Batch | Kind::BatchTicket => 1 + rng.below(8),
            Kind::Single | Kind::Ticket => 1,
        };
        let payloads: Payloads = Arc::new(
            (0..count)
                .map(|i| payload(&mut rng, &format!("a{id}-{n}.{i}")))
                .collect(),
        );
        log.push(Ev::Attempt {
            kind,
            topic,
            payloads: Arc::clone(&payloads),
        });
        if let Err((what, e)) = append_op(wal, &mut log, kind, topic, &payloads) {
            // After the power cut every call fails; before it, this is a violation.
            log.push(Ev::Failed {
                what,
                error: e.to_string(),
            });
            break;
        }
        match rng.below(10) {
            0 => thread::yield_now(),
            1 => thread::sleep(Duration::from_micros(rng.below(300))),
            _ => {}
        }
    }
    log.events
}

fn append_op(
    wal: &Walrus,
    log: &mut Log<'_>,
    kind: Kind,
    topic: usize,
    payloads: &Payloads,
) -> Result<(), (&'static str, io::Error)> {
    let name = topic_name(topic);
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let p = Arc::clone(payloads);
    match kind {
        Kind::Single => {
            let off = wal.append(&name, refs[0]).map_err(|e| ("append", e))?;
            log.push(Ev::Acked {
                topic,
                offsets: off..off + 1,
                payloads: p,
            });
        }
        Kind::Batch => {
            let offsets = wal
                .append_batch(&name, &refs)
                .map_err(|e| ("append_batch", e))?;
            log.push(Ev::Acked {
                topic,
                offsets,
                payloads: p,
            });
        }
        Kind::Ticket | Kind::BatchTicket => {
            let issued = if kind == Kind::Ticket {
                wal.append_with_ticket(&name, refs[0])
            } else {
                wal.append_batch_with_ticket(&name, &refs)
            };
            let ticket = issued.map_err(|e| ("append with ticket", e))?;
            let offsets = ticket.offsets();
            log.push(Ev::TicketIssued {
                topic,
                offsets: offsets.clone(),
                payloads: Arc::clone(&p),
            });
            let durable = ticket.wait().map_err(|e| ("ticket wait", e))?;
            if durable != offsets {
                log.push(Ev::Anomaly(format!(
                    "ticket for {offsets:?} resolved as {durable:?}"
                )));
            }
            log.push(Ev::TicketDurable {
                topic,
                offsets,
                payloads: p,
            });
        }
    }
    Ok(())
}

fn reader(
    wal: &Walrus,
    id: usize,
    mut rng: Rng,
    setup: &Setup,
    seq: &AtomicU64,
    stop: &AtomicBool,
) -> Vec<Logged> {
    let mut log = Log::new(seq, Who::Reader(id));
    for _ in 0..MAX_OPS {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let topic = rng.below(setup.topics as u64) as usize;
        let consume = rng.chance(80);
        match wal.read_next_record(&topic_name(topic), consume) {
            Ok(Some(rec)) => {
                let (offset, data) = (rec.offset, rec.data);
                log.push(if consume {
                    Ev::Consumed {
                        topic,
                        offset,
                        data,
                    }
                } else {
                    Ev::Peeked {
                        topic,
                        offset,
                        data,
                    }
                });
            }
            Ok(None) => {
                if rng.chance(50) {
                    thread::yield_now();
                } else {
                    thread::sleep(Duration::from_micros(20 + rng.below(200)));
                }
            }
            Err(e) => {
                log.push(Ev::Failed {
                    what: if consume { "consuming read" } else { "peek" },
                    error: e.to_string(),
                });
                break;
            }
        }
    }
    log.events
}

fn flusher(wal: &Walrus, mut rng: Rng, seq: &AtomicU64, stop: &AtomicBool) -> Vec<Logged> {
    let mut log = Log::new(seq, Who::Flusher);
    for _ in 0..MAX_OPS {
        thread::sleep(Duration::from_micros(100 + rng.below(500)));
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let started = log.push(Ev::FlushStarted);
        match wal.flush() {
            Ok(()) => {
                log.push(Ev::FlushOk { started });
            }
            Err(e) => {
                log.push(Ev::Failed {
                    what: "flush",
                    error: e.to_string(),
                });
                break;
            }
        }
    }
    log.events
}

// ---- One seed -----------------------------------------------------------------------------

struct Failure {
    seed: u64,
    setup: Setup,
    violations: Vec<String>,
    report: String,
    log: Vec<Logged>,
}

impl Failure {
    fn render(&self, full_log: bool) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "seed {}: {} violation(s)\n  setup: {:?}",
            self.seed,
            self.violations.len(),
            self.setup
        );
        for v in self.violations.iter().take(40) {
            let _ = writeln!(out, "  - {v}");
        }
        if self.violations.len() > 40 {
            let _ = writeln!(out, "  … and {} more", self.violations.len() - 40);
        }
        if !self.report.is_empty() {
            let _ = writeln!(out, "  recovery report after reopening: {}", self.report);
        }
        let from = if full_log {
            0
        } else {
            self.log.len().saturating_sub(LOG_TAIL)
        };
        let _ = writeln!(
            out,
            "  event log: {} events{}",
            self.log.len(),
            if from > 0 {
                format!(
                    ", the last {} shown (a replay prints all)",
                    self.log.len() - from
                )
            } else {
                String::new()
            }
        );
        for e in &self.log[from..] {
            let _ = writeln!(out, "    {e}");
        }
        let _ = writeln!(
            out,
            "  replay: WALRUS_CRASH_CONCURRENT_SEED={} cargo test -p walrus --test crash_concurrent -- concurrent_simulated_crashes --nocapture",
            self.seed
        );
        out
    }
}

/// Runs `f`, aborting the process with `label` if it takes longer than [`SEED_TIME_LIMIT`].
fn with_watchdog<T>(label: String, f: impl FnOnce() -> T) -> T {
    let (done, wait) = mpsc::channel::<()>();
    let dog = thread::spawn(move || {
        if matches!(
            wait.recv_timeout(SEED_TIME_LIMIT),
            Err(mpsc::RecvTimeoutError::Timeout)
        ) {
            eprintln!("{label}: still running after {SEED_TIME_LIMIT:?}: a call hung; aborting");
            std::process::abort();
        }
    });
    let out = f();
    drop(done);
    let _ = dog.join();
    out
}

/// What the threads of the seeds got done before their power cuts: the suite checks that each
/// kind of call completed somewhere, so that an oracle which accepts a call failing "after the
/// cut" cannot pass a run in which such calls only ever hang until it.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    acked: u64,
    tickets_durable: u64,
    flushes: u64,
    consumed: u64,
}

impl Progress {
    fn of(events: &[Logged], crash_seq: u64) -> Self {
        let mut p = Self::default();
        for e in events.iter().filter(|e| e.seq < crash_seq) {
            match e.ev {
                Ev::Acked { .. } => p.acked += 1,
                Ev::TicketDurable { .. } => p.tickets_durable += 1,
                Ev::FlushOk { .. } => p.flushes += 1,
                Ev::Consumed { .. } => p.consumed += 1,
                _ => {}
            }
        }
        p
    }

    fn add(&mut self, o: Self) {
        self.acked += o.acked;
        self.tickets_durable += o.tickets_durable;
        self.flushes += o.flushes;
        self.consumed += o.consumed;
    }
}

fn run_seed(seed: u64) -> Result<Progress, Box<Failure>> {
    let mut rng = Rng::new(seed);
    let setup = Setup::from_seed(&mut rng);
    let sim = SimStorage::new(seed);
    sim.set_sync_latency(setup.sync_latency);
    with_watchdog(format!("concurrent crash seed {seed} ({setup:?})"), || {
        run(seed, &sim, &setup, &mut rng)
    })
}

fn run(
    seed: u64,
    sim: &SimStorage,
    setup: &Setup,
    rng: &mut Rng,
) -> Result<Progress, Box<Failure>> {
    let failure = |violations: Vec<String>, report: String, log: Vec<Logged>| {
        Box::new(Failure {
            seed,
            setup: *setup,
            violations,
            report,
            log,
        })
    };
    let wal = match open(sim, setup) {
        Ok(w) => Arc::new(w),
        Err(e) => {
            return Err(failure(
                vec![format!("open: {e}")],
                String::new(),
                Vec::new(),
            ));
        }
    };
    let seq = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let (seq_ref, stop_ref) = (&seq, &stop);
    let mut main_log = Log::new(&seq, Who::Main);
    let mut violations = Vec::new();
    let mut events: Vec<Logged> = Vec::new();

    let crash_seq = thread::scope(|s| {
        let mut handles = Vec::new();
        for id in 0..setup.appenders {
            let (wal, r) = (Arc::clone(&wal), rng.fork(1 + id as u64));
            handles.push((
                Who::Appender(id),
                s.spawn(move || appender(&wal, id, r, setup, seq_ref, stop_ref)),
            ));
        }
        for id in 0..setup.readers {
            let (wal, r) = (Arc::clone(&wal), rng.fork(100 + id as u64));
            handles.push((
                Who::Reader(id),
                s.spawn(move || reader(&wal, id, r, setup, seq_ref, stop_ref)),
            ));
        }
        {
            let (wal, r) = (Arc::clone(&wal), rng.fork(200));
            handles.push((
                Who::Flusher,
                s.spawn(move || flusher(&wal, r, seq_ref, stop_ref)),
            ));
        }
        thread::sleep(setup.crash_after);
        let crash_seq = main_log.push(Ev::Crash(setup.crash));
        sim.crash(setup.crash);
        stop.store(true, Ordering::SeqCst);
        for (who, h) in handles {
            match h.join() {
                Ok(mut evs) => events.append(&mut evs),
                Err(_) => violations.push(format!("thread {who} panicked")),
            }
        }
        crash_seq
    });
    events.append(&mut main_log.events);
    events.sort_by_key(|e| e.seq);
    // The process died with the power: every handle of the old instance is stale, so its drop
    // (final cursor writes and sync) fails, quietly.
    drop(wal);
    // Nothing races after the reopen: slow syncs would only slow the checks down.
    sim.set_sync_latency(Duration::ZERO);

    let wal = match open(sim, setup) {
        Ok(w) => w,
        Err(e) => {
            violations.push(format!("reopen after the crash failed: {e}"));
            return Err(failure(violations, String::new(), events));
        }
    };
    violations.extend(check(setup, &events, crash_seq, &wal));
    if violations.is_empty() {
        Ok(Progress::of(&events, crash_seq))
    } else {
        let report = format!("{:?}", wal.recovery_report());
        Err(failure(violations, report, events))
    }
}

// ---- The oracle ---------------------------------------------------------------------------

/// One attempted append (single or batch) and, once known, the offset of its first entry.
struct Attempt<'a> {
    topic: usize,
    payloads: &'a [Vec<u8>],
    start: Option<u64>,
}

/// One entry a reader got before the crash.
struct Seen<'a> {
    topic: usize,
    offset: u64,
    data: &'a [u8],
    consumed: bool,
    seq: u64,
    who: Who,
}

/// What `read_at` says about an offset after reopening.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    Present(Vec<u8>),
    /// `Ok(None)`: not there (lost, cut, or a gap).
    Absent,
    /// `NotFound` below the reopened cursor: consumed and its space released.
    Released,
    Error(String),
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Present(d) => write!(f, "{}", tag(d)),
            Found::Absent => f.write_str("nothing"),
            Found::Released => f.write_str("released (NotFound below the cursor)"),
            Found::Error(e) => write!(f, "error {e}"),
        }
    }
}

/// The reopened instance, with the cursors and ends it opened with and a cache of reads.
struct After<'w> {
    wal: &'w Walrus,
    names: Vec<String>,
    cursor: Vec<u64>,
    end: Vec<u64>,
    cache: HashMap<(usize, u64), Found>,
}

impl After<'_> {
    fn read(&mut self, topic: usize, offset: u64) -> Found {
        if let Some(f) = self.cache.get(&(topic, offset)) {
            return f.clone();
        }
        let found = match self.wal.read_at(&self.names[topic], offset) {
            Ok(Some(e)) => Found::Present(e.data),
            Ok(None) => Found::Absent,
            Err(e) if e.kind() == io::ErrorKind::NotFound && offset < self.cursor[topic] => {
                Found::Released
            }
            Err(e) => Found::Error(format!("{:?}: {e}", e.kind())),
        };
        self.cache.insert((topic, offset), found.clone());
        found
    }
}

fn check(setup: &Setup, events: &[Logged], crash_seq: u64, wal: &Walrus) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    let topics = setup.topics;
    let sync_each = setup.sync_each();
    // The newest flush that returned Ok: whatever returned before it started is durable.
    let flushed_before = events
        .iter()
        .filter_map(|e| match e.ev {
            Ev::FlushOk { started } => Some(started),
            _ => None,
        })
        .max()
        .unwrap_or(0);

    let mut attempts: Vec<Attempt<'_>> = Vec::new();
    let mut attempt_of: HashMap<*const Vec<Vec<u8>>, usize> = HashMap::new();
    // Payload -> (attempt, index in it). Payloads are distinct by construction (their tags).
    let mut by_payload: HashMap<&[u8], (usize, usize)> = HashMap::new();
    let mut by_offset: HashMap<(usize, u64), &[u8]> = HashMap::new();
    let mut attempted = vec![0u64; topics];
    // (topic, offset) -> (payload, why it must have survived).
    let mut required: BTreeMap<(usize, u64), (&[u8], String)> = BTreeMap::new();
    let mut seen: Vec<Seen<'_>> = Vec::new();
    // One past the highest offset acknowledged by `append`/`append_batch` (SyncEach floor).
    let mut acked_end = vec![0u64; topics];
    let mut failed_consumes = 0u64;

    for e in events {
        match &e.ev {
            Ev::Attempt {
                topic, payloads, ..
            } => {
                let idx = attempts.len();
                attempts.push(Attempt {
                    topic: *topic,
                    payloads: payloads.as_slice(),
                    start: None,
                });
                attempt_of.insert(Arc::as_ptr(payloads), idx);
                attempted[*topic] += payloads.len() as u64;
                for (i, p) in payloads.iter().enumerate() {
                    if by_payload.insert(p.as_slice(), (idx, i)).is_some() {
                        v.push(format!("test bug: payload {} attempted twice", tag(p)));
                    }
                }
            }
            Ev::Acked {
                topic,
                offsets,
                payloads,
            }
            | Ev::TicketIssued {
                topic,
                offsets,
                payloads,
            } => {
                let acked = matches!(e.ev, Ev::Acked { .. });
                let Some(&idx) = attempt_of.get(&Arc::as_ptr(payloads)) else {
                    v.push(format!("test bug: #{} has no attempt", e.seq));
                    continue;
                };
                if offsets.end.checked_sub(offsets.start) != Some(payloads.len() as u64) {
                    v.push(format!(
                        "#{} {}: {} entries were given offsets {offsets:?}",
                        e.seq,
                        e.who,
                        payloads.len()
                    ));
                    continue;
                }
                attempts[idx].start = Some(offsets.start);
                if acked {
                    acked_end[*topic] = acked_end[*topic].max(offsets.end);
                }
                for (i, p) in payloads.iter().enumerate() {
                    let off = offsets.start + i as u64;
                    if let Some(prev) = by_offset.insert((*topic, off), p.as_slice())
                        && prev != p.as_slice()
                    {
                        v.push(format!(
                            "topic-{topic}@{off} handed out twice before the crash: {} and {}",
                            tag(prev),
                            tag(p)
                        ));
                    }
                    let why = if acked && sync_each {
                        Some(format!("acknowledged under SyncEach (#{})", e.seq))
                    } else if e.seq < flushed_before {
                        Some(format!(
                            "returned (#{}) before a flush that succeeded started (#{flushed_before})",
                            e.seq
                        ))
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        required.entry((*topic, off)).or_insert((p.as_slice(), why));
                    }
                }
            }
            Ev::TicketDurable {
                topic,
                offsets,
                payloads,
            } => {
                for (i, p) in payloads.iter().enumerate() {
                    required
                        .entry((*topic, offsets.start + i as u64))
                        .or_insert((p.as_slice(), format!("its ticket resolved (#{})", e.seq)));
                }
            }
            Ev::Consumed {
                topic,
                offset,
                data,
            } => seen.push(Seen {
                topic: *topic,
                offset: *offset,
                data: data.as_slice(),
                consumed: true,
                seq: e.seq,
                who: e.who,
            }),
            Ev::Peeked {
                topic,
                offset,
                data,
            } => seen.push(Seen {
                topic: *topic,
                offset: *offset,
                data: data.as_slice(),
                consumed: false,
                seq: e.seq,
                who: e.who,
            }),
            Ev::Failed { what, error } => {
                if *what == "consuming read" {
                    failed_consumes += 1;
                }
                if e.seq < crash_seq {
                    v.push(format!(
                        "#{} {}: {what} failed before the power cut: {error}",
                        e.seq, e.who
                    ));
                }
            }
            Ev::Anomaly(msg) => v.push(format!("#{} {}: {msg}", e.seq, e.who)),
            Ev::FlushStarted | Ev::FlushOk { .. } | Ev::Crash(_) => {}
        }
    }

    // ---- Before the crash: what readers saw.
    let mut consumed_count: BTreeMap<(usize, u64), u32> = BTreeMap::new();
    let mut last_read: HashMap<(Who, usize), (u64, bool)> = HashMap::new();
    for s in &seen {
        match by_payload.get(s.data) {
            None => v.push(format!(
                "#{} {}: read bytes nobody wrote at topic-{}@{}: {}",
                s.seq,
                s.who,
                s.topic,
                s.offset,
                tag(s.data)
            )),
            Some(&(idx, i)) => {
                let a = &attempts[idx];
                let at = a.start.map(|start| start + i as u64);
                if a.topic != s.topic || at.is_some_and(|o| o != s.offset) {
                    v.push(format!(
                        "#{} {}: read {} at topic-{}@{}, but it was appended at topic-{}@{at:?}",
                        s.seq,
                        s.who,
                        tag(s.data),
                        s.topic,
                        s.offset,
                        a.topic
                    ));
                }
            }
        }
        // A read that succeeded is counted wherever it landed in the log: an event is logged
        // after its call returns, so a read done before the power cut may be logged after it.
        if s.consumed {
            *consumed_count.entry((s.topic, s.offset)).or_default() += 1;
        }
        // What a reader got after the power cut is moot for the ordering check below (the
        // instance is dead; failing calls may leave its state anywhere).
        if s.seq > crash_seq {
            continue;
        }
        // The shared cursor only moves forward, so each reader's reads of a topic do too.
        if let Some(&(prev, prev_consumed)) = last_read.get(&(s.who, s.topic)) {
            let forward = if prev_consumed {
                s.offset > prev
            } else {
                s.offset >= prev
            };
            if !forward {
                v.push(format!(
                    "#{} {}: read topic-{}@{} after reading @{prev}: the cursor went back",
                    s.seq, s.who, s.topic, s.offset
                ));
            }
        }
        last_read.insert((s.who, s.topic), (s.offset, s.consumed));
    }
    for (&(t, off), &n) in &consumed_count {
        if n > 1 {
            v.push(format!("topic-{t}@{off} consumed {n} times"));
        }
    }
    // Consumption hands out offsets one by one from 0; only a consuming read that failed (at
    // the crash) can leave an offset that nobody was seen consuming.
    let mut holes = 0u64;
    for t in 0..topics {
        let offs: Vec<u64> = consumed_count
            .keys()
            .filter(|k| k.0 == t)
            .map(|k| k.1)
            .collect();
        if let Some(&max) = offs.last() {
            holes += (max + 1).saturating_sub(offs.len() as u64);
        }
    }
    if holes > failed_consumes {
        v.push(format!(
            "consumed offsets skip {holes} entries, but only {failed_consumes} consuming reads failed"
        ));
    }

    // ---- After reopening.
    let names: Vec<String> = (0..topics).map(topic_name).collect();
    let cursor: Vec<u64> = names.iter().map(|n| wal.cursor(n).unwrap_or(0)).collect();
    let end: Vec<u64> = names
        .iter()
        .map(|n| wal.end_offset(n).unwrap_or(0))
        .collect();
    let mut after = After {
        wal,
        names: names.clone(),
        cursor,
        end,
        cache: HashMap::new(),
    };
    // Batches whose start is known only from where recovery kept their entries.
    let mut inferred: HashMap<usize, u64> = HashMap::new();

    // 5. Every readable entry is one some appender attempted, at its offset.
    for (t, &tried) in attempted.iter().enumerate().take(topics) {
        let (cur, end) = (after.cursor[t], after.end[t]);
        if cur > end {
            v.push(format!(
                "topic-{t}: reopened cursor {cur} is beyond the end {end}"
            ));
        }
        if end > tried {
            v.push(format!(
                "topic-{t}: reopened end {end}, but only {} entries were ever attempted",
                tried
            ));
        }
        for off in 0..end.min(tried) {
            match after.read(t, off) {
                Found::Present(d) => match by_payload.get(d.as_slice()) {
                    None => v.push(format!(
                        "topic-{t}@{off}: bytes nobody wrote after reopen: {}",
                        tag(&d)
                    )),
                    Some(&(idx, i)) => {
                        let a = &attempts[idx];
                        let want = a.start.map(|start| start + i as u64);
                        if a.topic != t || want.is_some_and(|o| o != off) {
                            v.push(format!(
                                "topic-{t}@{off} holds {}, appended at topic-{}@{want:?}",
                                tag(&d),
                                a.topic
                            ));
                        } else if want.is_none() {
                            // An append in flight at the crash: where its first entry kept
                            // places the rest of it.
                            let in_place = off.checked_sub(i as u64).is_some_and(|start| {
                                *inferred.entry(idx).or_insert(start) == start
                            });
                            if !in_place {
                                v.push(format!(
                                    "topic-{t}@{off}: entry {i} of an unacknowledged append ({}) is out of place",
                                    tag(&d)
                                ));
                            }
                        }
                    }
                },
                Found::Error(e) => v.push(format!("topic-{t}@{off}: read_at after reopen: {e}")),
                Found::Absent | Found::Released => {}
            }
        }
    }

    // 1. Durability.
    for (&(t, off), (p, why)) in &required {
        match after.read(t, off) {
            Found::Present(d) if d.as_slice() == *p => {}
            Found::Released => {}
            other => v.push(format!(
                "durability: topic-{t}@{off} ({}) {why}, but after reopen it reads as {other}",
                tag(p)
            )),
        }
    }

    // 2. No offset carries different data than a reader saw.
    for s in &seen {
        let must = if sync_each {
            Some("visible under SyncEach")
        } else if s.seq < flushed_before {
            Some("read before a flush that succeeded")
        } else {
            None
        };
        match after.read(s.topic, s.offset) {
            Found::Present(d) if d.as_slice() == s.data => {}
            Found::Released => {}
            Found::Absent if must.is_none() => {}
            other => v.push(format!(
                "#{} {}: read {} at topic-{}@{}{}; after reopen it reads as {other}",
                s.seq,
                s.who,
                tag(s.data),
                s.topic,
                s.offset,
                must.map(|m| format!(" ({m})")).unwrap_or_default()
            )),
        }
    }

    // 3. Consumed entries are not re-delivered.
    let slack_per_reader = setup.persist_every() - 1;
    for t in 0..topics {
        let cur = after.cursor[t];
        let consumed: Vec<&Seen<'_>> = seen.iter().filter(|s| s.consumed && s.topic == t).collect();
        let offsets: BTreeSet<u64> = consumed.iter().map(|s| s.offset).collect();
        let readers: BTreeSet<Who> = consumed.iter().map(|s| s.who).collect();
        // Every schedule that syncs syncs a consuming read's cursor before the read returns.
        if setup.schedule != FsyncSchedule::NoFsync {
            let redelivered = offsets.range(cur..).count() as u64;
            let allowed = slack_per_reader * readers.len() as u64;
            if redelivered > allowed {
                v.push(format!(
                    "topic-{t}: reopened cursor {cur} hands out {redelivered} consumed entries again \
                     (highest consumed {:?}), at most {allowed} allowed under {:?}",
                    offsets.last(),
                    setup.consistency
                ));
            }
        }
        // Nor does the cursor pass entries nobody consumed: past the highest consumption seen
        // it can only be moved by the reads no one saw end (one in flight per reader at the
        // cut, and those that failed).
        let most = offsets.last().map_or(0, |o| o + 1) + setup.readers as u64 + failed_consumes;
        if cur > most {
            v.push(format!(
                "topic-{t}: reopened cursor {cur} passes entries nobody consumed (highest consumed \
                 {:?}, {} readers, {failed_consumes} consuming reads failed)",
                offsets.last(),
                setup.readers
            ));
        }
        if let Some(s) = consumed
            .iter()
            .filter(|s| s.seq < flushed_before)
            .max_by_key(|s| s.offset)
            && cur <= s.offset
        {
            v.push(format!(
                "topic-{t}: @{} consumed (#{}) before a flush that succeeded started (#{flushed_before}), \
                 but the reopened cursor is {cur}",
                s.offset, s.seq
            ));
        }
    }

    // 5b. A batch is there entirely or not at all (released entries say nothing either way).
    for (idx, a) in attempts.iter().enumerate() {
        if a.payloads.len() < 2 {
            continue;
        }
        let Some(start) = a.start.or_else(|| inferred.get(&idx).copied()) else {
            continue;
        };
        let (mut present, mut absent) = (0u64, Vec::new());
        for i in 0..a.payloads.len() as u64 {
            match after.read(a.topic, start + i) {
                Found::Present(_) => present += 1,
                Found::Absent => absent.push(start + i),
                Found::Released | Found::Error(_) => {}
            }
        }
        if present > 0 && !absent.is_empty() {
            v.push(format!(
                "batch topic-{}@{start}..{} ({}) is cut: {present} entries there, {absent:?} gone",
                a.topic,
                start + a.payloads.len() as u64,
                tags(a.payloads)
            ));
        }
    }

    // 5c. Reading on from the cursor yields exactly what is there, in order, skipping only
    // what is absent. (Consumes now: every read_at check above is done.)
    for t in 0..topics {
        let (cur, end) = (after.cursor[t], after.end[t]);
        let mut next = cur;
        let mut stopped = false;
        for _ in 0..end.saturating_sub(cur) + 2 {
            match wal.read_next_record(&names[t], true) {
                Ok(None) => {
                    stopped = true;
                    break;
                }
                Ok(Some(rec)) => {
                    if !(next..end).contains(&rec.offset) {
                        v.push(format!(
                            "topic-{t}: reading on from cursor {cur} returned @{} where @{next}.. was due (end {end})",
                            rec.offset
                        ));
                        stopped = true;
                        break;
                    }
                    for skipped in next..rec.offset {
                        if let Found::Present(d) = after.read(t, skipped) {
                            v.push(format!(
                                "topic-{t}: reading on skipped @{skipped} ({}) to @{}",
                                tag(&d),
                                rec.offset
                            ));
                        }
                    }
                    match after.read(t, rec.offset) {
                        Found::Present(d) if d == rec.data => {}
                        other => v.push(format!(
                            "topic-{t}: reading on returned {} at @{}, read_at said {other}",
                            tag(&rec.data),
                            rec.offset
                        )),
                    }
                    next = rec.offset + 1;
                }
                Err(e) => {
                    v.push(format!(
                        "topic-{t}: reading on from the cursor at @{next}: {e}"
                    ));
                    stopped = true;
                    break;
                }
            }
        }
        if !stopped {
            v.push(format!(
                "topic-{t}: reading on from cursor {cur} did not stop by the end {end}"
            ));
        }
        for off in next..end.min(attempted[t]) {
            if let Found::Present(d) = after.read(t, off) {
                v.push(format!(
                    "topic-{t}: reading on stopped before @{off} ({}), end {end}",
                    tag(&d)
                ));
                break;
            }
        }
    }

    // 4. Offsets are never reused: the next append lands past everything durable, the cursor
    // and, under SyncEach, everything acknowledged or read.
    for t in 0..topics {
        let mut floor = after.cursor[t].max(after.end[t]);
        if let Some((&(_, off), _)) = required.range((t, 0)..=(t, u64::MAX)).next_back() {
            floor = floor.max(off + 1);
        }
        if sync_each {
            floor = floor.max(acked_end[t]);
            if let Some(s) = seen
                .iter()
                .filter(|s| s.topic == t)
                .max_by_key(|s| s.offset)
            {
                floor = floor.max(s.offset + 1);
            }
        }
        let p = format!("post-crash-{t}|").into_bytes();
        match wal.append(&names[t], &p) {
            Ok(off) if off < floor => v.push(format!(
                "topic-{t}: the first append after reopen got offset {off}, reusing an offset below {floor}"
            )),
            Ok(off) => match wal.read_at(&names[t], off) {
                Ok(Some(e)) if e.data == p => {}
                other => v.push(format!(
                    "topic-{t}@{off}: the append after reopen reads back as {other:?}"
                )),
            },
            Err(e) => v.push(format!("topic-{t}: append after reopen failed: {e}")),
        }
    }
    v
}

#[test]
fn concurrent_simulated_crashes() {
    if let Ok(seed) = std::env::var("WALRUS_CRASH_CONCURRENT_SEED") {
        let seed: u64 = seed
            .parse()
            .expect("WALRUS_CRASH_CONCURRENT_SEED is a number");
        if let Err(f) = run_seed(seed) {
            panic!("{}", f.render(true));
        }
        return;
    }
    let seeds: u64 = std::env::var("WALRUS_CRASH_CONCURRENT_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let from: u64 = std::env::var("WALRUS_CRASH_CONCURRENT_FROM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut first = None;
    let mut progress = Progress::default();
    for seed in from..from.saturating_add(seeds) {
        if seed > from && (seed - from).is_multiple_of(5000) {
            eprintln!(
                "concurrent simulated crashes: {} seeds done ({from}..{seed}) in {:.1?}, {} failed",
                seed - from,
                started.elapsed(),
                failed.len()
            );
        }
        match run_seed(seed) {
            Ok(p) => progress.add(p),
            Err(f) => {
                let text = f.render(false);
                eprintln!("{text}");
                first.get_or_insert(text);
                failed.push(seed);
            }
        }
    }
    eprintln!(
        "concurrent simulated crashes: {seeds} seeds in {:.1?}, {} failed; before the cuts: \
         {progress:?}",
        started.elapsed(),
        failed.len()
    );
    // Every kind of call completed before some cut (a few seeds may do little each).
    if seeds >= 12 {
        assert!(
            progress.acked > 0
                && progress.tickets_durable > 0
                && progress.flushes > 0
                && progress.consumed > 0,
            "some kind of call never completed before a power cut in {seeds} seeds: {progress:?}"
        );
    }
    assert!(
        failed.is_empty(),
        "{} of {seeds} seeds failed: {failed:?}\nthe first:\n{}",
        failed.len(),
        first.unwrap_or_default()
    );
}

/// Defect 1, focused: under `SyncEach`, an append written while another thread's sync of the
/// same file is in flight must not be acknowledged by that sync (it captured the file before the
/// write). A thread flushes in a tight loop while another appends; the power fails the moment
/// the last append is acknowledged, so nothing later can cover for a premature acknowledgement.
#[test]
fn acknowledged_appends_survive_a_concurrent_flush() {
    const ENTRIES: u64 = 200;
    const TOPIC: &str = "focus";
    for round in 0..5u64 {
        let setup = Setup {
            schedule: FsyncSchedule::SyncEach,
            consistency: ReadConsistency::StrictlyAtOnce,
            crash: CrashMode::DropUnsynced,
            topics: 1,
            appenders: 1,
            readers: 0,
            sync_latency: Duration::from_millis(2),
            crash_after: Duration::ZERO,
        };
        let sim = SimStorage::new(0xF0C5 + round);
        sim.set_sync_latency(setup.sync_latency);
        let wal = Arc::new(open(&sim, &setup).expect("open"));
        let stop = AtomicBool::new(false);
        let (sim_ref, stop_ref) = (&sim, &stop);
        let (acked, error) = thread::scope(|s| {
            let flusher = {
                let wal = Arc::clone(&wal);
                s.spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while !stop_ref.load(Ordering::SeqCst) && Instant::now() < deadline {
                        if wal.flush().is_err() {
                            break;
                        }
                    }
                })
            };
            let appender = {
                let wal = Arc::clone(&wal);
                s.spawn(move || {
                    let mut acked = Vec::new();
                    let mut error = None;
                    for n in 0..ENTRIES {
                        let p = format!("focus-{round}-{n}|").into_bytes();
                        match wal.append(TOPIC, &p) {
                            Ok(off) => acked.push((off, p)),
                            Err(e) => {
                                error = Some(format!("append {n} failed before the crash: {e}"));
                                break;
                            }
                        }
                    }
                    // Cut the power right after the last acknowledgement, while the flusher's
                    // sync is most likely in flight.
                    sim_ref.crash(setup.crash);
                    stop_ref.store(true, Ordering::SeqCst);
                    (acked, error)
                })
            };
            let out = appender.join().expect("appender panicked");
            flusher.join().expect("flusher panicked");
            out
        });
        assert!(
            error.is_none(),
            "round {round}: {}",
            error.unwrap_or_default()
        );
        assert_eq!(acked.len() as u64, ENTRIES, "round {round}");
        drop(wal);

        let wal = open(&sim, &setup).unwrap_or_else(|e| panic!("round {round}: reopen: {e}"));
        let mut lost = Vec::new();
        for (off, p) in &acked {
            match wal.read_at(TOPIC, *off) {
                Ok(Some(e)) if e.data == *p => {}
                _ => lost.push(*off),
            }
        }
        assert!(
            lost.is_empty(),
            "round {round}: {} of {ENTRIES} acknowledged SyncEach appends lost by a power cut \
             during concurrent flushes: offsets {lost:?} (end after reopen {:?})",
            lost.len(),
            wal.end_offset(TOPIC)
        );
    }
}
