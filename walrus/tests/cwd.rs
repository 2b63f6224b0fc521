//! A relative data directory names the directory it meant when the instance opened, also after
//! the process changes its working directory (daemons `chdir("/")`). In a test binary of its
//! own: the working directory is the process's.

use walrus::{FsyncSchedule, Walrus};

#[test]
fn a_relative_data_dir_stays_put_when_the_working_directory_changes() {
    let before = std::env::current_dir().unwrap();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    std::env::set_current_dir(a.path()).unwrap();
    let wal = Walrus::builder()
        .data_dir("wal")
        .segment_len(64 << 10)
        .block_len(8 << 10)
        .fsync_schedule(FsyncSchedule::NoFsync)
        .quiet(true)
        .build()
        .unwrap();
    for i in 0..10u32 {
        wal.append("t", &i.to_le_bytes()).unwrap();
    }
    std::env::set_current_dir(b.path()).unwrap();
    // Past several segments: new ones are created, consumed ones deleted, by name.
    let entry = vec![7u8; 1024];
    for _ in 0..300 {
        wal.append("t", &entry).unwrap();
    }
    for _ in 0..310 {
        wal.read_next("t", true).unwrap().unwrap();
    }
    drop(wal);
    std::env::set_current_dir(&before).unwrap();
    assert!(
        !b.path().join("wal").exists(),
        "files went to the new working directory"
    );
    let wal = Walrus::builder()
        .data_dir(a.path().join("wal"))
        .quiet(true)
        .build()
        .unwrap();
    assert_eq!(wal.end_offset("t"), Some(310));
}
