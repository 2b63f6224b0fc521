//! Criterion micro-benchmark of a maintenance walk over every topic (`Store::maintain`:
//! retention by age, placeholders no one uses) in a store of many small topics, with and
//! without a retention: what the background thread pays once per walk (`WALK_PERIOD`, a
//! second), where it used to pay it on every pass (each 5 ms under `SyncEach`). On the
//! simulated disk, so that only the walk's own cost is measured.
//!
//! `cargo bench -p walrus-bench --bench maintain`
#![allow(missing_docs)]

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use walrus_io::{SimStorage, Storage};
use walrus_topic::{Retention, Store, StoreOptions};

const TOPICS: usize = 20_000;

fn store(retention: bool) -> Store {
    let storage: Arc<dyn Storage> = Arc::new(SimStorage::new(1));
    let mut options = StoreOptions::new()
        .with_block_len(4096)
        .with_segment_len(64 << 20);
    if retention {
        options = options.with_retention(Retention::unlimited().with_max_bytes(1 << 30));
    }
    let store = Store::open("/maintain", storage, options).unwrap();
    for i in 0..TOPICS {
        store.append(&format!("topic-{i}"), b"x").unwrap();
    }
    store
}

fn maintain(c: &mut Criterion) {
    let mut g = c.benchmark_group("maintain");
    g.sample_size(20);
    for retention in [false, true] {
        let store = store(retention);
        let name = if retention {
            "walk/20k-topics/retention"
        } else {
            "walk/20k-topics"
        };
        g.bench_function(name, |b| b.iter(|| store.maintain().unwrap()));
    }
    g.finish();
}

criterion_group!(benches, maintain);
criterion_main!(benches);
