//! The remote tier conformance suite on [`MemoryTier`], and the memory tier's injected faults.

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::{Duration, Instant};

use walrus_io::tier::conformance::{self, Target};
use walrus_io::tier::{Metadata, PutOutcome, TierOp};
use walrus_io::{MemoryTier, RemoteTier};

fn target(tier: &MemoryTier) -> Target {
    Target {
        tier: Arc::new(tier.clone()),
        dir: "conformance".into(),
    }
}

#[test]
fn memory_tier_conforms() {
    let tier = MemoryTier::new();
    conformance::run_all(&target(&tier));
    assert_eq!(tier.keys(), Vec::<String>::new(), "the suite left objects");
}

#[test]
fn each_check_runs_alone() {
    for (name, check) in conformance::CHECKS {
        let tier = MemoryTier::new();
        check(&target(&tier));
        assert!(tier.keys().is_empty(), "{name} left objects");
    }
}

#[test]
fn a_down_tier_fails_every_call_and_changes_nothing() {
    let tier = MemoryTier::new();
    tier.put_new("d/a", b"a", &Metadata::new()).unwrap();
    tier.set_down(true);
    let errors = [
        tier.put_new("d/b", b"b", &Metadata::new()).unwrap_err(),
        tier.head("d/a").unwrap_err(),
        tier.get_range("d/a", 0..1).unwrap_err(),
        tier.list("d").unwrap_err(),
        tier.delete("d/a").unwrap_err(),
    ];
    for e in errors {
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    }
    tier.set_down(false);
    assert_eq!(tier.keys(), vec!["d/a".to_string()]);
}

#[test]
fn a_lost_put_answer_stored_the_object_and_a_retry_finds_it() {
    let tier = MemoryTier::new();
    tier.lose_next_put_answers(1);
    let e = tier.put_new("d/a", b"data", &Metadata::new()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    assert_eq!(tier.object("d/a").as_deref(), Some(&b"data"[..]));
    assert_eq!(
        tier.put_new("d/a", b"data", &Metadata::new()).unwrap(),
        PutOutcome::Exists
    );
}

#[test]
fn injected_failures_hit_only_their_call_and_count() {
    let tier = MemoryTier::new();
    tier.fail_next(TierOp::Get, 2);
    tier.put_new("d/a", b"abc", &Metadata::new()).unwrap();
    for _ in 0..2 {
        let e = tier.get_range("d/a", 0..3).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionReset);
        assert!(e.to_string().contains("d/a"), "{e}");
    }
    assert_eq!(tier.get_range("d/a", 1..3).unwrap(), b"bc");
    assert_eq!(tier.calls(TierOp::Get), 3);
    assert_eq!(tier.calls(TierOp::Put), 1);
    assert_eq!(tier.bytes_read(), 2);
}

#[test]
fn a_slow_tier_does_not_hold_other_calls_behind_one() {
    let tier = MemoryTier::new();
    tier.put_new("d/a", b"abc", &Metadata::new()).unwrap();
    tier.set_delay(Duration::from_millis(200));
    let started = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let tier = tier.clone();
            std::thread::spawn(move || tier.get_range("d/a", 0..3))
        })
        .collect();
    for th in threads {
        assert_eq!(th.join().unwrap().unwrap(), b"abc");
    }
    // Four calls of 200 ms each, side by side: well under their 800 ms in a row.
    let took = started.elapsed();
    assert!(took < Duration::from_millis(700), "{took:?}");
}
