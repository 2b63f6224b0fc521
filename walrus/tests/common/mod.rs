//! Helpers shared by the integration tests of this crate.

use std::time::Duration;

/// Runs `f` on a thread of its own and returns what it returns, failing the test (naming
/// `what`) if it has not returned within a minute: a test of "never left waiting" must fail,
/// not hang the suite, when what it checks breaks.
pub(crate) fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what}: still waiting after a minute"))
}
