//! Durable tickets: how a producer learns that its entry is in S3 (or why it never will be).

use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// A failure kept for every ticket of a batch (`io::Error` is not `Clone`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) kind: io::ErrorKind,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn of(e: &io::Error) -> Self {
        Self {
            kind: e.kind(),
            message: e.to_string(),
        }
    }

    pub(crate) fn to_error(&self) -> io::Error {
        io::Error::new(self.kind, self.message.clone())
    }
}

#[derive(Debug)]
enum State {
    Pending { wakers: Vec<Waker> },
    Done(Result<Range<u64>, Failure>),
}

/// The completion slot one ticket waits on; the flusher completes it once.
#[derive(Debug)]
pub(crate) struct Slot {
    state: Mutex<State>,
    done: Condvar,
}

impl Slot {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::Pending { wakers: Vec::new() }),
            done: Condvar::new(),
        })
    }

    /// Completes the slot; a second completion is ignored (the first outcome stands).
    pub(crate) fn complete(&self, outcome: Result<Range<u64>, Failure>) {
        let wakers = {
            let mut state = self.state.lock();
            match &mut *state {
                State::Done(_) => return,
                State::Pending { wakers } => {
                    let wakers = std::mem::take(wakers);
                    *state = State::Done(outcome);
                    wakers
                }
            }
        };
        self.done.notify_all();
        for w in wakers {
            // A waker is the caller's code, run here on the flusher: one that panics must not
            // take the batch's other tickets, or the writer, with it.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.wake())).is_err() {
                tracing::warn!("a waker of a walrus-s3 ticket panicked");
            }
        }
    }

    fn outcome(&self) -> Option<io::Result<Range<u64>>> {
        match &*self.state.lock() {
            State::Done(r) => Some(r.clone().map_err(|f| f.to_error())),
            State::Pending { .. } => None,
        }
    }
}

/// Tells when entries handed to [`S3Wal`](crate::S3Wal) are in S3: the PUT of the batch
/// object holding them succeeded.
///
/// The same shape as the engine's [`walrus::DurableTicket`]: [`wait`](Self::wait) blocks,
/// [`is_durable`](Self::is_durable) polls, and the ticket is a [`Future`] completed by the
/// flusher thread (no particular async runtime needed). The entries' offsets are assigned when
/// the flusher takes them into a batch, so they are known once the ticket completes.
#[derive(Debug, Clone)]
#[must_use = "a ticket does nothing unless waited on, polled or awaited"]
pub struct S3Ticket {
    slot: Arc<Slot>,
}

impl S3Ticket {
    pub(crate) fn new(slot: Arc<Slot>) -> Self {
        Self { slot }
    }

    /// Whether the entries are in S3 yet (never blocks).
    ///
    /// # Errors
    /// The error of the batch that failed: the entries are not acknowledged (they may or may
    /// not be in S3; a reader of the prefix tells).
    pub fn is_durable(&self) -> io::Result<bool> {
        self.slot.outcome().map_or(Ok(false), |r| r.map(|_| true))
    }

    /// The entries' offsets in their topic, once they are in S3.
    #[must_use]
    pub fn offsets(&self) -> Option<Range<u64>> {
        self.slot.outcome().and_then(Result::ok)
    }

    /// Blocks until the entries are in S3; returns their offsets.
    ///
    /// # Errors
    /// The batch's error once its retry budget is spent, `AlreadyExists` when another writer
    /// fenced this one, `BrokenPipe` when the writer was closed before the entries were sent.
    pub fn wait(self) -> io::Result<Range<u64>> {
        self.wait_done()
    }

    fn wait_done(&self) -> io::Result<Range<u64>> {
        let mut state = self.slot.state.lock();
        loop {
            if let State::Done(r) = &*state {
                return r.clone().map_err(|f| f.to_error());
            }
            self.slot.done.wait(&mut state);
        }
    }

    /// Like [`wait`](Self::wait), giving up after `timeout`.
    ///
    /// # Errors
    /// `TimedOut` when the entries are not in S3 by then (the ticket stays valid: wait again),
    /// or the errors of [`wait`](Self::wait).
    pub fn wait_timeout(&self, timeout: Duration) -> io::Result<Range<u64>> {
        // A timeout past any instant (`Duration::MAX`) is no timeout.
        let Some(deadline) = Instant::now().checked_add(timeout) else {
            return self.wait_done();
        };
        let mut state = self.slot.state.lock();
        loop {
            if let State::Done(r) = &*state {
                return r.clone().map_err(|f| f.to_error());
            }
            if self.slot.done.wait_until(&mut state, deadline).timed_out() {
                if let State::Done(r) = &*state {
                    return r.clone().map_err(|f| f.to_error());
                }
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("entries not in S3 after {timeout:?}"),
                ));
            }
        }
    }
}

impl Future for S3Ticket {
    type Output = io::Result<Range<u64>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.slot.state.lock();
        match &mut *state {
            State::Done(r) => Poll::Ready(r.clone().map_err(|f| f.to_error())),
            State::Pending { wakers } => {
                if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completed_slot_answers_every_way() {
        let slot = Slot::new();
        let t = S3Ticket::new(Arc::clone(&slot));
        assert!(!t.is_durable().unwrap());
        assert_eq!(
            t.wait_timeout(Duration::from_millis(1)).unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
        let waiter = {
            let t = t.clone();
            std::thread::spawn(move || t.wait())
        };
        slot.complete(Ok(4..6));
        slot.complete(Ok(0..1)); // ignored
        assert_eq!(waiter.join().unwrap().unwrap(), 4..6);
        assert!(t.is_durable().unwrap());
        assert_eq!(t.offsets(), Some(4..6));
    }

    #[test]
    fn a_failed_slot_hands_every_waiter_the_error() {
        let slot = Slot::new();
        let t = S3Ticket::new(Arc::clone(&slot));
        slot.complete(Err(Failure {
            kind: io::ErrorKind::TimedOut,
            message: "batch 3: gave up".into(),
        }));
        assert_eq!(t.is_durable().unwrap_err().kind(), io::ErrorKind::TimedOut);
        let e = t.wait().unwrap_err();
        assert!(e.to_string().contains("batch 3"), "{e}");
    }
}
