//! A log and a snapshot store opened by a path relative to the working directory (as
//! `conclave serve` does with its default `./data`) work through appends that rotate
//! segments and sync the directory, snapshots, and a reopen.

use conclave_engine::log::{Entry, Log, LogOptions, SnapshotStore};
use glommio::LocalExecutorBuilder;

#[test]
fn relative_paths_work_through_rotation_snapshots_and_reopen() {
    // A temporary directory inside the working directory, named relatively.
    let cwd = std::env::current_dir().unwrap();
    let tmp = tempfile::Builder::new().prefix(".log-relative-").tempdir_in(&cwd).unwrap();
    let relative = tmp.path().strip_prefix(&cwd).unwrap().to_path_buf();
    assert!(relative.is_relative());
    let ex = LocalExecutorBuilder::default().io_memory(1 << 20).make().unwrap();
    ex.run(async move {
        let log_dir = relative.join("log");
        let (log, _) = Log::open(&log_dir, LogOptions::with_segment_bytes(64 << 10)).await.unwrap();
        // 64 KiB segments: 200 entries of 1 KiB rotate through several, syncing the directory.
        for i in 1..=200u64 {
            let ticket = log.append_entries(1, vec![Entry::new(i, 1, 0, vec![7u8; 1024])]).unwrap();
            log.wait_durable(ticket).await.unwrap();
        }
        log.close().await.unwrap();
        let snapshots = SnapshotStore::open(relative.join("snapshots")).await.unwrap();
        snapshots.save(1, 200, 1, b"state").await.unwrap();
        let meta = snapshots.latest(1).await.unwrap().expect("the snapshot is there");
        assert_eq!(&snapshots.load(&meta).await.unwrap()[..], b"state");
        let (log, recovery) = Log::open(&log_dir, LogOptions::with_segment_bytes(64 << 10)).await.unwrap();
        assert_eq!(recovery.groups[&1].last_index(), 200);
        log.close().await.unwrap();
    });
    drop(tmp);
}
