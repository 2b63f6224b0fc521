//! [`MemoryTier`]: a [`RemoteTier`] in memory, with the faults a real object store has (down,
//! slow, failing a call, losing the answer to a PUT it carried out), for the simulated crash
//! tests. Share one instance (an `Arc`) across the "restarts" of a test: the remote outlives
//! the process by definition.

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{
    Listed, Metadata, ObjectInfo, PutOutcome, RemoteTier, check_range, validate_key,
    validate_metadata,
};

/// The calls of a [`RemoteTier`], for fault injection and counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TierOp {
    /// [`RemoteTier::put_new`].
    Put,
    /// [`RemoteTier::head`].
    Head,
    /// [`RemoteTier::get_range`].
    Get,
    /// [`RemoteTier::list`].
    List,
    /// [`RemoteTier::delete`].
    Delete,
}

const OPS: usize = 5;

fn slot(op: TierOp) -> usize {
    op as usize
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, (Arc<[u8]>, Metadata)>,
    down: bool,
    delay: Duration,
    /// Calls of each kind to fail before they do anything.
    fail: [u32; OPS],
    /// PUTs to carry out and then answer with an error.
    lose_answers: u32,
    /// PUTs to let through before one fails, and whether that one stores first.
    put_fault: Option<(u32, bool)>,
    calls: [u64; OPS],
    bytes_read: u64,
}

/// An in-memory object store. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct MemoryTier {
    state: Arc<Mutex<State>>,
}

impl MemoryTier {
    /// An empty store that answers every call.
    pub fn new() -> Self {
        Self::default()
    }

    /// While `down`, every call fails with `ConnectionRefused` and changes nothing.
    pub fn set_down(&self, down: bool) {
        self.state.lock().down = down;
    }

    /// Every call takes at least `delay` (outside the store's lock: other calls go on).
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().delay = delay;
    }

    /// The next `n` calls of `op` fail with `ConnectionReset` before doing anything.
    pub fn fail_next(&self, op: TierOp, n: u32) {
        self.state.lock().fail[slot(op)] = n;
    }

    /// The next `n` PUTs store their object, then answer `TimedOut` (the answer lost).
    pub fn lose_next_put_answers(&self, n: u32) {
        self.state.lock().lose_answers = n;
    }

    /// Lets the next `ok` PUTs through, then fails one: with `ConnectionReset` before it
    /// stores anything, or (`lose_answer`) with `TimedOut` after it stored its object.
    pub fn fail_put_after(&self, ok: u32, lose_answer: bool) {
        self.state.lock().put_fault = Some((ok, lose_answer));
    }

    /// Calls of `op` so far (failed ones included).
    pub fn calls(&self, op: TierOp) -> u64 {
        self.state.lock().calls[slot(op)]
    }

    /// Bytes handed out by GETs so far.
    pub fn bytes_read(&self) -> u64 {
        self.state.lock().bytes_read
    }

    /// Every key stored, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.state.lock().objects.keys().cloned().collect()
    }

    /// The whole of `key`, if stored (for tests; not counted as a call).
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        self.state.lock().objects.get(key).map(|(b, _)| b.to_vec())
    }

    /// Replaces the bytes of `key` in place, keeping its metadata: damage in the remote (bit
    /// rot, or a writer that bypassed the create-once PUT), for tests. Whether it existed.
    pub fn overwrite(&self, key: &str, bytes: &[u8]) -> bool {
        match self.state.lock().objects.get_mut(key) {
            Some(object) => {
                object.0 = Arc::from(bytes);
                true
            }
            None => false,
        }
    }

    /// Counts the call, sleeps its delay, then fails it if the store is down or a failure is
    /// due.
    fn enter(&self, op: TierOp, key: &str) -> io::Result<()> {
        let delay = {
            let mut s = self.state.lock();
            s.calls[slot(op)] += 1;
            s.delay
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut s = self.state.lock();
        if s.down {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("memory tier {op:?} of {key:?}: the tier is down"),
            ));
        }
        if s.fail[slot(op)] > 0 {
            s.fail[slot(op)] -= 1;
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("memory tier {op:?} of {key:?}: injected failure"),
            ));
        }
        Ok(())
    }
}

impl RemoteTier for MemoryTier {
    fn describe(&self) -> String {
        "memory".to_owned()
    }

    fn put_new(&self, key: &str, bytes: &[u8], meta: &Metadata) -> io::Result<PutOutcome> {
        validate_key(key)?;
        validate_metadata(key, meta)?;
        self.enter(TierOp::Put, key)?;
        let mut s = self.state.lock();
        let mut lose = false;
        match s.put_fault {
            Some((0, false)) => {
                s.put_fault = None;
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("memory tier Put of {key:?}: injected failure"),
                ));
            }
            Some((0, true)) => {
                s.put_fault = None;
                lose = true;
            }
            Some((ok, l)) => s.put_fault = Some((ok - 1, l)),
            None => {}
        }
        let outcome = if s.objects.contains_key(key) {
            PutOutcome::Exists
        } else {
            s.objects
                .insert(key.to_owned(), (Arc::from(bytes), meta.clone()));
            PutOutcome::Created
        };
        if lose || s.lose_answers > 0 {
            s.lose_answers = s.lose_answers.saturating_sub(u32::from(!lose));
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("memory tier PUT of {key:?}: the answer was lost"),
            ));
        }
        Ok(outcome)
    }

    fn head(&self, key: &str) -> io::Result<Option<ObjectInfo>> {
        validate_key(key)?;
        self.enter(TierOp::Head, key)?;
        let s = self.state.lock();
        Ok(s.objects.get(key).map(|(b, meta)| ObjectInfo {
            size: b.len() as u64,
            meta: meta.clone(),
        }))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> io::Result<Vec<u8>> {
        validate_key(key)?;
        self.enter(TierOp::Get, key)?;
        let mut s = self.state.lock();
        let Some((bytes, _)) = s.objects.get(key) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("memory tier GET of {key:?}: no such object"),
            ));
        };
        check_range(key, &range, bytes.len() as u64)?;
        // In bounds of an in-memory object, so both ends fit a usize.
        let (from, to) = (range.start as usize, range.end as usize);
        let out = bytes.get(from..to).map(<[u8]>::to_vec).unwrap_or_default();
        s.bytes_read += out.len() as u64;
        Ok(out)
    }

    fn list(&self, dir: &str) -> io::Result<Vec<Listed>> {
        validate_key(dir)?;
        self.enter(TierOp::List, dir)?;
        let s = self.state.lock();
        let under = format!("{dir}/");
        Ok(s.objects
            .range(under.clone()..)
            .take_while(|(k, _)| k.starts_with(&under))
            .map(|(k, (b, _))| Listed {
                key: k.clone(),
                size: b.len() as u64,
            })
            .collect())
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        validate_key(key)?;
        self.enter(TierOp::Delete, key)?;
        self.state.lock().objects.remove(key);
        Ok(())
    }
}
