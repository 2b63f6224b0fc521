//! The key-less constructors read the environment once, at construction. One test in its own
//! process, because the environment is process-wide.

use walrus::{FsyncSchedule, ReadConsistency, Walrus};

#[test]
fn constructors_use_the_environment_and_the_builder_wins() {
    let root = tempfile::tempdir().unwrap();
    // SAFETY: this test binary has a single test, so no other thread reads the environment.
    unsafe {
        std::env::set_var("WALRUS_DATA_DIR", root.path());
        std::env::set_var("WALRUS_QUIET", "1");
        std::env::remove_var("WALRUS_INSTANCE_KEY");
    }
    {
        let wal = Walrus::new().unwrap();
        assert_eq!(wal.dir(), root.path());
        assert_eq!(wal.consistency(), ReadConsistency::StrictlyAtOnce);
        assert_eq!(wal.fsync_schedule(), FsyncSchedule::Milliseconds(200));
        wal.append_for_topic("t", b"x").unwrap();
    }
    let mode = ReadConsistency::AtLeastOnce {
        persist_every: 1000,
    };
    drop(Walrus::with_consistency(mode).unwrap());
    drop(Walrus::with_consistency_and_schedule(mode, FsyncSchedule::SyncEach).unwrap());
    let keyed = Walrus::new_for_key("transactions").unwrap();
    assert_eq!(keyed.dir(), root.path().join("transactions"));
    drop(keyed);
    drop(Walrus::with_consistency_for_key("transactions", mode).unwrap());
    let w =
        Walrus::with_consistency_and_schedule_for_key("transactions", mode, FsyncSchedule::NoFsync)
            .unwrap();
    assert_eq!(w.consistency(), mode);
    drop(w);

    // SAFETY: as above.
    unsafe { std::env::set_var("WALRUS_INSTANCE_KEY", "ns") };
    let w = Walrus::new().unwrap();
    assert_eq!(w.dir(), root.path().join("ns"));
    drop(w);
    let other = tempfile::tempdir().unwrap();
    let w = Walrus::builder()
        .data_dir(other.path())
        .key("mine")
        .build()
        .unwrap();
    assert_eq!(
        w.dir(),
        other.path().join("mine"),
        "explicit values win over the environment"
    );
    drop(w);
    // A data root named without a key is the instance's directory, whatever the environment's
    // key (walrus-raft keeps a node's log there: moving it would lose the node's votes).
    let w = Walrus::builder().data_dir(other.path()).build().unwrap();
    assert_eq!(w.dir(), other.path(), "the environment's key moved it");
    drop(w);
    // A root given without a key opens, beside the environment's keyed instance under it.
    let root = tempfile::tempdir().unwrap();
    let keyed = Walrus::builder()
        .data_dir(root.path())
        .key("ns")
        .build()
        .unwrap();
    keyed.append_for_topic("t", b"keyed").unwrap();
    drop(keyed);
    let w = Walrus::builder().data_dir(root.path()).build().unwrap();
    assert_eq!(w.dir(), root.path());
    assert_eq!(
        w.read_next("t", true).unwrap(),
        None,
        "the keyed instance's entries"
    );
    let w = Walrus::new().unwrap();
    assert_eq!(
        w.read_next("t", true).unwrap(),
        None,
        "namespace ns is separate from the root"
    );
    drop(w);
    // A key that is not UTF-8 is refused, not ignored (which would open the root).
    {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: as above.
        unsafe {
            std::env::set_var("WALRUS_INSTANCE_KEY", std::ffi::OsStr::from_bytes(&[0xff]));
        }
    }
    let err = Walrus::new().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("WALRUS_INSTANCE_KEY"), "{err}");
}
