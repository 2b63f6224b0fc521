//! Adaptive yield-waiting for a group sync: a writer whose sync is running polls for its end,
//! yielding the CPU between polls, before it parks.
//!
//! Why: with blocking appenders the synced rate is threads ÷ (sync + the time to get every
//! covered thread through its next append). A parked waiter costs a futex wake-up and a
//! scheduler round trip after the sync; 16 of them on 2 cores took ~50–70 µs per group sync
//! here, a third of the cycle. A waiter that yields sees the sync end within a few of its
//! turns and appends again at once (docs/BENCHMARKS.md, "Yield-waiting").
//!
//! The risk is the opposite case: when other work wants the CPU, a yield hands it a whole time
//! slice (milliseconds), where a parked waiter would have been woken — with a wake-up
//! preemption — in microseconds. So the first poll to see each event measures how late it saw
//! it (the polls after it queue behind our own threads, so only the first tells whether other
//! work had the CPU); a first poll later than [`LATE`] counts against yield-waiting, and after a
//! few such strikes the group commit parks its waiters at once, trying polls again (until the
//! next late event) only once in [`SAMPLE_EVERY`] waits. RocksDB's adaptive write-thread yield works the same way.

use std::time::{Duration, Instant};

use walrus_alloc::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// A poll that sees its event this much after it happened lost to parking: other work had the
/// CPU. (Without other work, 16 pollers on 2 cores saw it within 50 µs 96–97 % of the time and
/// within 100 µs 99 %.)
pub(crate) const LATE: Duration = Duration::from_micros(100);
/// While yield-waiting is off, one wait in this many starts a trial (all waiters poll again
/// until the next late event)...
pub(crate) const SAMPLE_EVERY: u32 = 256;
/// ... and at most one in this time: a trial while other work has the CPU hands it a time
/// slice per poller (64 of them every 4 syncs cost 64-thread appends a third of their rate
/// under two busy processes).
const TRIAL_EVERY: Duration = Duration::from_millis(100);
/// The score of a group commit whose polls have been on time.
const FULL: u32 = 64;
/// Yield-waiting is on while the score is above this.
const ON_ABOVE: u32 = FULL / 2;
/// What an event seen late costs the score: two strikes from full turn yield-waiting off.
const STRIKE: u32 = FULL / 4;

/// `YieldWait::trial` before any trial.
const NEVER: u64 = u64::MAX;

/// How a yield-wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// What was waited for happened, and the poll saw it in time.
    Ready,
    /// The budget ran out first (a long sync, not a busy CPU).
    OutOfTime,
    /// The poll saw its event, or the end of its budget, later than [`LATE`].
    Late,
    /// Yield-waiting is off (disabled, or turned off by late polls, and not sampled).
    Skipped,
}

/// The yield-waiting state of one group commit. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct YieldWait {
    enabled: bool,
    /// 0 ..= FULL: an event seen in time raises it by one, an event seen late lowers it by
    /// [`STRIKE`].
    score: AtomicU32,
    /// Waits skipped while off, for sampling.
    skipped: AtomicU32,
    /// When the last awaited event happened ([`happened`](Self::happened)), in nanoseconds
    /// since `epoch`.
    event: AtomicU64,
    /// The last event judged. The first poll to see an event judges it, in time or late: the
    /// pollers after it queue for the CPUs behind our own threads (16 of them on 2 cores see
    /// a sync end up to 200 µs after the first), so their lateness says nothing about other
    /// work, which would make the first one late too.
    judged: AtomicU64,
    /// When the last trial started ([`NEVER`] before the first).
    trial: AtomicU64,
    epoch: Instant,
}

// Under loom the group commit never yield-waits (see `GroupCommit::yield_wait`).
#[cfg_attr(loom, allow(dead_code))]
impl YieldWait {
    /// Yield-waiting on (`enabled`) or never.
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            score: AtomicU32::new(FULL),
            skipped: AtomicU32::new(0),
            event: AtomicU64::new(0),
            judged: AtomicU64::new(u64::MAX),
            trial: AtomicU64::new(NEVER),
            epoch: Instant::now(),
        }
    }

    /// Records that what pollers wait for happened now (a sync ended): they measure how late
    /// they saw it from here.
    pub(crate) fn happened(&self) {
        self.event
            .store(self.nanos(Instant::now()), Ordering::Release);
    }

    fn nanos(&self, at: Instant) -> u64 {
        nanos_of(at.saturating_duration_since(self.epoch))
    }

    /// Whether this wait should poll.
    fn should(&self) -> bool {
        if !self.enabled {
            return false;
        }
        if self.score.load(Ordering::Relaxed) > ON_ABOVE {
            return true;
        }
        if self.skipped.fetch_add(1, Ordering::Relaxed) % SAMPLE_EVERY != SAMPLE_EVERY - 1 {
            return false;
        }
        let now = self.nanos(Instant::now());
        let last = self.trial.load(Ordering::Relaxed);
        if (last != NEVER && now.saturating_sub(last) < nanos_of(TRIAL_EVERY))
            || self
                .trial
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        // A trial: every waiter polls again until the next late event. (One waiter polling
        // alone would queue behind all the others running their appends, and be late for
        // that alone.)
        let _ = self
            .score
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                (s <= ON_ABOVE).then_some(ON_ABOVE + 1)
            });
        true
    }

    fn record(&self, outcome: Outcome) {
        let step = |s: u32| match outcome {
            Outcome::Ready => Some((s + 1).min(FULL)),
            Outcome::Late => Some(s.saturating_sub(STRIKE)),
            Outcome::OutOfTime | Outcome::Skipped => None,
        };
        let _ = self
            .score
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, step);
    }

    /// Polls `done` (whether the awaited event has happened; the waker calls
    /// [`happened`](Self::happened) before it makes `done` true), yielding the CPU between
    /// polls, until it holds or `budget` has passed; returns at once when yield-waiting is off.
    /// Relaxed atomics suffice for the score: it steers only how a writer waits, never whether
    /// it is durable.
    pub(crate) fn wait(&self, budget: Duration, done: impl Fn() -> bool) -> Outcome {
        if !self.should() {
            return Outcome::Skipped;
        }
        let started = Instant::now();
        let (outcome, event) = loop {
            let now = Instant::now();
            if done() {
                // Loaded after `done` held: the stamp was stored before it became true.
                let event = self.event.load(Ordering::Acquire);
                let seen = self.nanos(now).saturating_sub(event);
                break (Self::unless_late(Outcome::Ready, seen), event);
            }
            let waited = now.duration_since(started);
            if waited >= budget {
                let over = nanos_of(waited - budget);
                break (
                    Self::unless_late(Outcome::OutOfTime, over),
                    self.event.load(Ordering::Acquire),
                );
            }
            std::thread::yield_now();
        };
        // One verdict per event, however many pollers (all of one group sync's) saw it: the
        // first one's.
        let first = match outcome {
            Outcome::Ready | Outcome::Late => self.judged.swap(event, Ordering::Relaxed) != event,
            Outcome::OutOfTime | Outcome::Skipped => false,
        };
        if first {
            self.record(outcome);
        }
        outcome
    }

    fn unless_late(outcome: Outcome, late_by: u64) -> Outcome {
        if late_by > nanos_of(LATE) {
            Outcome::Late
        } else {
            outcome
        }
    }
}

/// `d` in nanoseconds (saturating after 584 years).
fn nanos_of(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use super::*;

    fn score(yw: &YieldWait) -> u32 {
        yw.score.load(Ordering::Relaxed)
    }

    /// A new event, seen only after it is late.
    fn late_event(yw: &YieldWait) {
        yw.happened();
        std::thread::sleep(LATE * 2);
    }

    /// Late events until yield-waiting is off.
    fn turn_off(yw: &YieldWait) {
        while score(yw) > ON_ABOVE {
            late_event(yw);
            assert_eq!(yw.wait(Duration::from_secs(1), || true), Outcome::Late);
        }
    }

    /// While off: the waits up to the next sample park at once.
    fn skip_to_sample(yw: &YieldWait) {
        for _ in 0..SAMPLE_EVERY - 1 {
            assert_eq!(in_time(yw), Outcome::Skipped);
        }
    }

    /// A wait whose event happens on its first poll.
    fn in_time(yw: &YieldWait) -> Outcome {
        yw.wait(Duration::from_secs(1), || {
            yw.happened();
            true
        })
    }

    #[test]
    fn returns_as_soon_as_the_event_happened() {
        let yw = YieldWait::new(true);
        let polls = AtomicUsize::new(0);
        let outcome = yw.wait(Duration::from_secs(10), || {
            let now = polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= 3;
            if now {
                yw.happened();
            }
            now
        });
        assert_eq!(outcome, Outcome::Ready);
        assert_eq!(polls.load(std::sync::atomic::Ordering::Relaxed), 4);
    }

    #[test]
    fn gives_up_when_the_budget_is_spent() {
        let yw = YieldWait::new(true);
        let started = Instant::now();
        let budget = Duration::from_micros(300);
        let outcome = yw.wait(budget, || false);
        assert!(started.elapsed() >= budget);
        // A long sync says nothing about the CPU: the score is unchanged, unless a yield on
        // this (shared) machine overshot the budget by more than LATE.
        match outcome {
            Outcome::OutOfTime => assert_eq!(score(&yw), FULL),
            Outcome::Late => assert_eq!(score(&yw), FULL - STRIKE),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn disabled_never_polls() {
        let yw = YieldWait::new(false);
        let polled = AtomicBool::new(false);
        let outcome = yw.wait(Duration::from_secs(1), || {
            polled.store(true, std::sync::atomic::Ordering::Relaxed);
            true
        });
        assert_eq!(outcome, Outcome::Skipped);
        assert!(!polled.load(std::sync::atomic::Ordering::Relaxed));
    }

    #[test]
    fn an_event_seen_late_by_many_pollers_is_one_strike() {
        let yw = YieldWait::new(true);
        late_event(&yw);
        for _ in 0..5 {
            assert_eq!(yw.wait(Duration::from_secs(1), || true), Outcome::Late);
        }
        assert_eq!(score(&yw), FULL - STRIKE);
        late_event(&yw);
        assert_eq!(yw.wait(Duration::from_secs(1), || true), Outcome::Late);
        assert_eq!(score(&yw), FULL - 2 * STRIKE);
    }

    #[test]
    fn an_event_its_first_poller_saw_in_time_is_no_strike_however_late_the_others() {
        let yw = YieldWait::new(true);
        late_event(&yw);
        assert_eq!(yw.wait(Duration::from_secs(1), || true), Outcome::Late);
        assert_eq!(score(&yw), FULL - STRIKE);
        // The next event: the first poller sees it at once, the others only after LATE (they
        // queued behind our own threads).
        assert_eq!(in_time(&yw), Outcome::Ready);
        std::thread::sleep(LATE * 2);
        for _ in 0..15 {
            assert_eq!(yw.wait(Duration::from_secs(1), || true), Outcome::Late);
        }
        assert_eq!(score(&yw), FULL - STRIKE + 1, "credited once, never struck");
    }

    #[test]
    fn late_events_turn_it_off_and_sampling_turns_it_back_on() {
        let yw = YieldWait::new(true);
        turn_off(&yw);
        assert_eq!(score(&yw), ON_ABOVE, "two strikes from full");
        // Off now: the next SAMPLE_EVERY - 1 waits park at once, the one after polls again.
        skip_to_sample(&yw);
        assert_eq!(in_time(&yw), Outcome::Ready);
        assert!(score(&yw) > ON_ABOVE, "back on");
        assert_eq!(in_time(&yw), Outcome::Ready);
        // A late event turns it off again at once.
        late_event(&yw);
        assert_eq!(yw.wait(Duration::from_secs(1), || true), Outcome::Late);
        assert_eq!(in_time(&yw), Outcome::Skipped);
    }

    #[test]
    fn a_sample_seen_late_ends_its_trial_at_once() {
        let yw = YieldWait::new(true);
        turn_off(&yw);
        skip_to_sample(&yw);
        // The sample opens a trial, and sees its event late: off again.
        late_event(&yw);
        assert_eq!(yw.wait(Duration::from_secs(1), || true), Outcome::Late);
        assert!(score(&yw) <= ON_ABOVE);
        assert_eq!(in_time(&yw), Outcome::Skipped);
    }

    #[test]
    fn trials_are_at_least_trial_every_apart() {
        let yw = YieldWait::new(true);
        turn_off(&yw);
        skip_to_sample(&yw);
        let first = Instant::now();
        assert_eq!(in_time(&yw), Outcome::Ready, "the first trial");
        turn_off(&yw);
        // The sample after the next SAMPLE_EVERY waits comes too soon for a trial (unless
        // this machine took TRIAL_EVERY to get here).
        skip_to_sample(&yw);
        let outcome = in_time(&yw);
        if first.elapsed() < TRIAL_EVERY {
            assert_eq!(outcome, Outcome::Skipped);
        }
        std::thread::sleep(TRIAL_EVERY);
        skip_to_sample(&yw);
        assert_eq!(
            in_time(&yw),
            Outcome::Ready,
            "a trial once TRIAL_EVERY passed"
        );
    }

    #[test]
    fn polls_in_time_keep_it_on_through_a_rare_late_event() {
        let yw = YieldWait::new(true);
        for round in 0..10 {
            for _ in 0..30 {
                assert_eq!(in_time(&yw), Outcome::Ready, "round {round}");
            }
            late_event(&yw);
            assert_eq!(yw.wait(Duration::from_secs(1), || true), Outcome::Late);
        }
        assert!(score(&yw) > ON_ABOVE);
    }
}
