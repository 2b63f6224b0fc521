//! The remote tier conformance suite (cargo feature `conformance`): the checks every
//! [`RemoteTier`] must pass, written once against the trait. This crate runs it on
//! [`MemoryTier`](super::MemoryTier); `walrus-s3` runs it on S3 (a real S3-compatible server).
//!
//! Each check works under its own key prefix below [`Target::dir`], so one bucket can hold
//! several runs. Checks panic (naming the tier) on the first mismatch.

use std::io::ErrorKind;
use std::sync::{Arc, Barrier};

use super::{Metadata, ObjectInfo, PutOutcome, RemoteTier};
use crate::SeededRng;

/// A check of the suite.
pub type Check = fn(&Target);

/// What a check runs against.
#[derive(Debug, Clone)]
pub struct Target {
    /// The tier under test.
    pub tier: Arc<dyn RemoteTier>,
    /// A key prefix no other run uses (the checks create objects below it and delete them).
    pub dir: String,
}

impl Target {
    fn key(&self, check: &str, name: &str) -> String {
        format!("{}/{check}/{name}", self.dir)
    }

    fn name(&self) -> String {
        self.tier.describe()
    }
}

/// Every check, by name.
pub const CHECKS: &[(&str, Check)] = &[
    ("round_trip", round_trip),
    ("ranges", ranges),
    ("empty_objects", empty_objects),
    ("large_objects", large_objects),
    ("listing", listing),
    ("deletion", deletion),
    ("bad_input_changes_nothing", bad_input_changes_nothing),
    ("racing_puts_store_one_object", racing_puts_store_one_object),
];

/// Every check, in turn.
pub fn run_all(t: &Target) {
    for (_, check) in CHECKS {
        check(t);
    }
}

fn meta(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = SeededRng::new(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// What is stored reads back, whole and in part, with its size and metadata; a second
/// `put_new` of the name finds it and changes nothing.
pub fn round_trip(t: &Target) {
    let n = t.name();
    let tier = &*t.tier;
    let key = t.key("round_trip", "a.obj");
    let data = bytes(1, 10_000);
    let m = meta(&[("walrus-topic", "orders"), ("walrus-offsets", "0-99")]);
    assert_eq!(
        tier.put_new(&key, &data, &m).unwrap(),
        PutOutcome::Created,
        "{n}"
    );
    assert_eq!(
        tier.head(&key).unwrap(),
        Some(ObjectInfo {
            size: 10_000,
            meta: m.clone()
        }),
        "{n}: head"
    );
    assert_eq!(tier.get_range(&key, 0..10_000).unwrap(), data, "{n}: whole");
    assert_eq!(
        tier.get_range(&key, 4093..4099).unwrap(),
        &data[4093..4099],
        "{n}: part"
    );
    assert_eq!(
        tier.get_range(&key, 9_999..10_000).unwrap(),
        &data[9_999..],
        "{n}: last byte"
    );
    assert_eq!(
        tier.get_range(&key, 10_000..10_000).unwrap(),
        b"",
        "{n}: empty range at the end"
    );
    let other = bytes(2, 500);
    assert_eq!(
        tier.put_new(&key, &other, &Metadata::new()).unwrap(),
        PutOutcome::Exists,
        "{n}: second put"
    );
    assert_eq!(
        tier.get_range(&key, 0..10_000).unwrap(),
        data,
        "{n}: a second put replaced the object"
    );
    assert_eq!(tier.head(&key).unwrap().map(|i| i.meta), Some(m), "{n}");
    tier.delete(&key).unwrap();
}

/// Reversed ranges, ranges past the end and missing objects fail with their kinds, naming the
/// key.
pub fn ranges(t: &Target) {
    let n = t.name();
    let tier = &*t.tier;
    let key = t.key("ranges", "r.obj");
    tier.put_new(&key, &bytes(3, 100), &Metadata::new())
        .unwrap();
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = 50..40;
    let e = tier.get_range(&key, reversed).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{n}: reversed: {e}");
    for past in [90..101, 100..101, 200..300] {
        let e = tier.get_range(&key, past.clone()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnexpectedEof, "{n}: {past:?}: {e}");
        assert!(e.to_string().contains(&key), "{n}: {e} does not name {key}");
    }
    let missing = t.key("ranges", "missing.obj");
    for range in [0..1, 0..0] {
        let e = tier.get_range(&missing, range.clone()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{n}: missing {range:?}: {e}");
        assert!(e.to_string().contains(&missing), "{n}: {e}");
    }
    assert_eq!(tier.head(&missing).unwrap(), None, "{n}: head of missing");
    tier.delete(&key).unwrap();
}

/// An empty object is an object.
pub fn empty_objects(t: &Target) {
    let n = t.name();
    let tier = &*t.tier;
    let key = t.key("empty", "e.obj");
    assert_eq!(
        tier.put_new(&key, b"", &Metadata::new()).unwrap(),
        PutOutcome::Created,
        "{n}"
    );
    assert_eq!(
        tier.head(&key).unwrap().map(|i| i.size),
        Some(0),
        "{n}: head"
    );
    assert_eq!(tier.get_range(&key, 0..0).unwrap(), b"", "{n}");
    assert_eq!(
        tier.put_new(&key, b"x", &Metadata::new()).unwrap(),
        PutOutcome::Exists,
        "{n}"
    );
    tier.delete(&key).unwrap();
}

/// Objects of several MiB, read in ranges from several threads at once.
pub fn large_objects(t: &Target) {
    let n = t.name();
    let key = t.key("large", "big.obj");
    let data = Arc::new(bytes(4, 6 << 20));
    t.tier.put_new(&key, &data, &Metadata::new()).unwrap();
    assert_eq!(
        t.tier.head(&key).unwrap().map(|i| i.size),
        Some(6 << 20),
        "{n}"
    );
    let threads: Vec<_> = (0..4u64)
        .map(|i| {
            let (tier, key, data) = (Arc::clone(&t.tier), key.clone(), Arc::clone(&data));
            std::thread::spawn(move || {
                let from = i * (1 << 20) + 12_345;
                let to = from + (1 << 20) + 7;
                let got = tier.get_range(&key, from..to).unwrap();
                assert!(
                    got == data[from as usize..to as usize],
                    "range {from}..{to}"
                );
            })
        })
        .collect();
    for th in threads {
        th.join()
            .unwrap_or_else(|_| panic!("{n}: a concurrent ranged GET failed"));
    }
    t.tier.delete(&key).unwrap();
}

/// A listing holds every object under the prefix, at any depth, sorted, and nothing else: not
/// the objects of a sibling prefix that starts with the same characters.
pub fn listing(t: &Target) {
    let n = t.name();
    let tier = &*t.tier;
    let dir = t.key("listing", "d");
    assert_eq!(tier.list(&dir).unwrap(), vec![], "{n}: a fresh prefix");
    let keys = [
        format!("{dir}/b.obj"),
        format!("{dir}/a.obj"),
        format!("{dir}/sub/c.obj"),
    ];
    for (i, k) in keys.iter().enumerate() {
        tier.put_new(k, &bytes(10 + i as u64, 10 * (i + 1)), &Metadata::new())
            .unwrap();
    }
    let sibling = format!("{dir}x/a.obj");
    tier.put_new(&sibling, b"other", &Metadata::new()).unwrap();
    let listed: Vec<(String, u64)> = tier
        .list(&dir)
        .unwrap()
        .into_iter()
        .map(|l| (l.key, l.size))
        .collect();
    assert_eq!(
        listed,
        vec![
            (keys[1].clone(), 20),
            (keys[0].clone(), 10),
            (keys[2].clone(), 30)
        ],
        "{n}: listing of {dir}"
    );
    for k in keys.iter().chain([&sibling]) {
        tier.delete(k).unwrap();
    }
    assert_eq!(tier.list(&dir).unwrap(), vec![], "{n}: after deletes");
}

/// A deleted object is gone from every call; deleting it again succeeds; its name can be
/// created anew.
pub fn deletion(t: &Target) {
    let n = t.name();
    let tier = &*t.tier;
    let dir = t.key("deletion", "d");
    let key = format!("{dir}/gone.obj");
    // A neighbour that stays, so that the listing after the delete is not empty by accident.
    let kept = format!("{dir}/kept.obj");
    tier.put_new(&kept, b"kept", &Metadata::new()).unwrap();
    tier.put_new(&key, b"first", &Metadata::new()).unwrap();
    tier.delete(&key).unwrap();
    assert_eq!(tier.head(&key).unwrap(), None, "{n}: head after delete");
    let e = tier.get_range(&key, 0..1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{n}: GET after delete: {e}");
    let listed: Vec<String> = tier
        .list(&dir)
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    assert_eq!(listed, vec![kept.clone()], "{n}: listing after delete");
    tier.delete(&key).unwrap();
    assert_eq!(
        tier.put_new(&key, b"second", &Metadata::new()).unwrap(),
        PutOutcome::Created,
        "{n}: put after delete"
    );
    assert_eq!(tier.get_range(&key, 0..6).unwrap(), b"second", "{n}");
    tier.delete(&key).unwrap();
    tier.delete(&kept).unwrap();
}

/// Bad keys and metadata are `InvalidInput` from every call, and nothing is stored.
pub fn bad_input_changes_nothing(t: &Target) {
    let n = t.name();
    let tier = &*t.tier;
    let dir = t.key("bad_input", "d");
    for bad in [
        String::new(),
        format!("{dir}/"),
        format!("/{dir}"),
        format!("{dir}//x"),
        format!("{dir}/../x"),
        format!("{dir}/sp ace"),
        format!("{dir}/ü"),
    ] {
        let check = |what: &str, e: std::io::Error| {
            assert_eq!(
                e.kind(),
                ErrorKind::InvalidInput,
                "{n}: {what} {bad:?}: {e}"
            );
        };
        check(
            "put",
            tier.put_new(&bad, b"x", &Metadata::new()).unwrap_err(),
        );
        check("head", tier.head(&bad).unwrap_err());
        check("get", tier.get_range(&bad, 0..1).unwrap_err());
        check("list", tier.list(&bad).unwrap_err());
        check("delete", tier.delete(&bad).unwrap_err());
    }
    let key = format!("{dir}/m.obj");
    for m in [
        meta(&[("Upper", "x")]),
        meta(&[("a_b", "x")]),
        meta(&[("a", "new\nline")]),
        meta(&[("a", &"x".repeat(super::MAX_METADATA_BYTES))]),
    ] {
        let e = tier.put_new(&key, b"x", &m).unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::InvalidInput,
            "{n}: metadata {m:?}: {e}"
        );
    }
    assert_eq!(tier.list(&dir).unwrap(), vec![], "{n}: bad input stored");
}

/// Several threads `put_new` the same name at once: one creates it, the others find it, and
/// the object is the creator's.
pub fn racing_puts_store_one_object(t: &Target) {
    let n = t.name();
    let key = t.key("racing", "one.obj");
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4u64)
        .map(|i| {
            let (tier, key, barrier) = (Arc::clone(&t.tier), key.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let data = bytes(100 + i, 4096);
                barrier.wait();
                let outcome = tier.put_new(&key, &data, &Metadata::new()).unwrap();
                (outcome, data)
            })
        })
        .collect();
    let results: Vec<(PutOutcome, Vec<u8>)> = threads
        .into_iter()
        .map(|th| {
            th.join()
                .unwrap_or_else(|_| panic!("{n}: a racing put failed"))
        })
        .collect();
    let created: Vec<&Vec<u8>> = results
        .iter()
        .filter(|(o, _)| *o == PutOutcome::Created)
        .map(|(_, d)| d)
        .collect();
    assert_eq!(
        created.len(),
        1,
        "{n}: racing puts created {}",
        created.len()
    );
    assert_eq!(
        &t.tier.get_range(&key, 0..4096).unwrap(),
        created[0],
        "{n}: the object is not its creator's"
    );
    t.tier.delete(&key).unwrap();
}
