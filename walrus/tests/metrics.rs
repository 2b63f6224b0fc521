//! `Walrus::publish_metrics` (feature `metrics`) through a recorder that keeps what it is
//! given: every figure of `stats()` arrives under its name and labels.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};
use walrus::{FsyncSchedule, Walrus};

type Seen = Arc<Mutex<BTreeMap<String, f64>>>;

/// Stores the last value of every counter and gauge, by `name{label=value,…}`.
struct Keep(Seen);

struct Slot(String, Seen, AtomicU64);

impl CounterFn for Slot {
    fn increment(&self, v: u64) {
        let now = self.2.fetch_add(v, Ordering::SeqCst) + v;
        self.1.lock().unwrap().insert(self.0.clone(), now as f64);
    }
    fn absolute(&self, v: u64) {
        self.2.store(v, Ordering::SeqCst);
        self.1.lock().unwrap().insert(self.0.clone(), v as f64);
    }
}

impl GaugeFn for Slot {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, v: f64) {
        self.1.lock().unwrap().insert(self.0.clone(), v);
    }
}

fn label(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .filter(|l| l.key() != "dir")
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Recorder for Keep {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Slot(
            label(key),
            self.0.clone(),
            AtomicU64::new(0),
        )))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Slot(
            label(key),
            self.0.clone(),
            AtomicU64::new(0),
        )))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn open(dir: &std::path::Path, schedule: FsyncSchedule) -> Walrus {
    Walrus::builder()
        .data_dir(dir)
        .fsync_schedule(schedule)
        .quiet(true)
        .build()
        .unwrap()
}

/// What `publish_metrics` hands the recorder, and a lookup that fails on a missing name.
fn published(wal: &Walrus) -> impl Fn(&str) -> f64 {
    let seen: Seen = Arc::default();
    metrics::with_local_recorder(&Keep(seen.clone()), || wal.publish_metrics());
    let seen = seen.lock().unwrap().clone();
    move |k: &str| {
        seen.get(k)
            .copied()
            .unwrap_or_else(|| panic!("{k} missing: {seen:?}"))
    }
}

#[test]
fn publish_metrics_reports_the_stats() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), FsyncSchedule::NoFsync);
    for i in 0..10u8 {
        wal.append("t", &[i; 10]).unwrap();
    }
    wal.read_next_as("t", "c", true).unwrap();
    wal.flush().unwrap();
    let get = published(&wal);
    assert_eq!(get("walrus_appends_total{}"), 10.0);
    assert_eq!(get("walrus_append_bytes_total{}"), 100.0);
    assert_eq!(get("walrus_reads_total{}"), 1.0);
    assert!(get("walrus_syncs_total{}") >= 1.0);
    // `NoFsync`: no appender waits for a sync, so none leads one.
    assert_eq!(get("walrus_group_commit_led_total{}"), 0.0);
    assert_eq!(get("walrus_group_commit_gathers_out_of_time_total{}"), 0.0);
    assert_eq!(get("walrus_group_commit_gather_micros_total{}"), 0.0);
    assert_eq!(get("walrus_group_commit_parks_total{}"), 0.0);
    assert_eq!(get("walrus_topic_end{topic=t}"), 10.0);
    assert_eq!(get("walrus_topic_durable{topic=t}"), 10.0);
    assert_eq!(get("walrus_consumer_lag{topic=t,consumer=c}"), 9.0);
    assert!(get("walrus_segments_live{}") >= 1.0);
}

#[test]
fn publish_metrics_reports_the_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), FsyncSchedule::SyncEach);
    for i in 0..5u8 {
        wal.append("t", &[i; 10]).unwrap();
    }
    let g = wal.stats().group_commit;
    // One appender: each append leads its own sync, unless the background syncer covered it.
    assert!((1..=5).contains(&g.led), "{g:?}");
    let get = published(&wal);
    // Nothing appends between the two reads: the same figures, each under its own name.
    let g = wal.stats().group_commit;
    assert_eq!(get("walrus_group_commit_led_total{}"), g.led as f64);
    assert_eq!(
        get("walrus_group_commit_gathers_out_of_time_total{}"),
        g.gathers_out_of_time as f64
    );
    assert_eq!(
        get("walrus_group_commit_gather_micros_total{}"),
        g.gather_micros as f64
    );
    assert_eq!(get("walrus_group_commit_parks_total{}"), g.parks as f64);
}
