//! Compaction on real files: snapshots cover entries, old segments are deleted, the few
//! live records pinning them are rewritten forward; recovery after it, and after a crash
//! at any point of it, finds the same log.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use conclave_engine::log::{Entry, HardState, Log, LogOptions, Recovery};
use glommio::{LocalExecutorBuilder, Placement};

fn run<F: Future<Output = ()> + 'static>(make: impl FnOnce() -> F) {
    LocalExecutorBuilder::new(Placement::Unbound).io_memory(1 << 20).make().expect("executor").run(make());
}

fn options() -> LogOptions {
    LogOptions { tail_cache_bytes: 0, ..LogOptions::with_segment_bytes(64 << 10) }
}

fn entry(group: u32, index: u64, term: u64) -> Entry {
    Entry::new(index, term, 2, Bytes::from(vec![group as u8 ^ index as u8; 200]))
}

/// Per group: (compacted, compacted term, hard state, entries).
type Canon = BTreeMap<u32, (u64, u64, Option<HardState>, Vec<Entry>)>;

async fn canon_of_log(log: &Log) -> Canon {
    let mut canon = Canon::new();
    for group in log.groups() {
        let g = log.group(group).unwrap();
        let entries = if g.last_index >= g.first_index {
            log.entries(group, g.first_index, g.last_index + 1, usize::MAX).await.unwrap()
        } else {
            Vec::new()
        };
        canon.insert(group, (g.compacted, g.compacted_term, g.hard_state, entries));
    }
    canon
}

fn canon_of(recovery: &Recovery) -> Canon {
    recovery.groups.iter().map(|(g, r)| (*g, (r.compacted, r.compacted_term, r.hard_state, r.entries.clone()))).collect()
}

fn wal_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "wal")).collect();
    files.sort();
    files
}

fn copy_wal(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for file in wal_files(from) {
        std::fs::copy(&file, to.join(file.file_name().unwrap())).unwrap();
    }
}

/// Group 1 writes a little early and then stays idle (its entries pin the oldest segment);
/// groups 2 and 3 write a lot and compact most of it.
async fn build(log: &Log) {
    log.append(1, (1..=5).map(|i| entry(1, i, 1)).collect::<Vec<_>>()).await.unwrap();
    log.save_hard_state(1, HardState { term: 1, vote: 1, commit: 5 }).unwrap();
    for round in 0..150u64 {
        for group in 2..=3u32 {
            let batch: Vec<Entry> = (round * 4 + 1..=round * 4 + 4).map(|i| entry(group, i, 1)).collect();
            log.append_entries(group, batch).unwrap();
        }
        log.save_hard_state(2, HardState { term: 1, vote: 2, commit: round * 4 }).unwrap();
        log.sync().await.unwrap();
    }
    // Group 3 overwrites its tail with a new term before compacting.
    log.append(3, (590..=595).map(|i| entry(3, i, 2)).collect::<Vec<_>>()).await.unwrap();
    log.compact_group(2, 580, 1).unwrap();
    log.compact_group(3, 500, 1).unwrap();
    log.sync().await.unwrap();
}

#[test]
fn reclaim_deletes_covered_segments_and_relocates_pinned_entries() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    run(move || async move {
        let (log, _) = Log::open(&dir, options()).await.unwrap();
        build(&log).await;
        let before = canon_of_log(&log).await;
        let files_before = wal_files(&dir).len();
        assert!(files_before >= 3, "history spans several segments");
        let report = log.reclaim().await.unwrap();
        assert!(!report.deleted_segments.is_empty(), "{report:?}");
        assert!(report.relocated_records >= 1, "group 1's entries were rewritten forward: {report:?}");
        assert!(wal_files(&dir).len() <= files_before - report.deleted_segments.len() + 1);
        assert_eq!(canon_of_log(&log).await, before, "reads after reclaim");
        // A second pass finds nothing more to do at once.
        let again = log.reclaim().await.unwrap();
        assert!(again.relocated_records <= report.relocated_records);
        log.close().await.unwrap();
        let (log, recovery) = Log::open(&dir, options()).await.unwrap();
        assert_eq!(canon_of(&recovery), before, "recovery after reclaim");
        assert_eq!(recovery.groups[&1].entries.len(), 5);
        assert_eq!(recovery.groups[&3].entries.last().unwrap().term, 2);
        log.close().await.unwrap();
    });
}

#[test]
fn crash_at_any_point_of_compaction_recovers_the_same_log() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let before_dir = root.path().join("before");
    let crash_dir = root.path().join("crash");
    run(move || async move {
        let (log, _) = Log::open(&dir, options()).await.unwrap();
        build(&log).await;
        let expected = canon_of_log(&log).await;
        copy_wal(&dir, &before_dir);
        let report = log.reclaim().await.unwrap();
        assert!(report.deleted_segments.len() >= 2, "{report:?}");
        log.close().await.unwrap();
        let before = wal_files(&before_dir);
        // Crash states: relocated records durable and 0, 1, ... of the segments deleted.
        for deleted in 0..=report.deleted_segments.len() {
            let _ = std::fs::remove_dir_all(&crash_dir);
            copy_wal(&dir, &crash_dir);
            for old in before.iter().take(report.deleted_segments.len()).skip(deleted) {
                std::fs::copy(old, crash_dir.join(old.file_name().unwrap())).unwrap();
            }
            let (log, recovery) = Log::open(&crash_dir, options()).await.unwrap();
            assert_eq!(canon_of(&recovery), expected, "crash with {deleted} segments deleted");
            log.close().await.unwrap();
        }
        // Crash before anything of the compaction's rewrite was durable: the old files only.
        let (log, recovery) = Log::open(&before_dir, options()).await.unwrap();
        assert_eq!(canon_of(&recovery), expected);
        log.close().await.unwrap();
    });
}

#[test]
fn removed_group_is_forgotten_and_its_segments_freed() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    run(move || async move {
        let (log, _) = Log::open(&dir, options()).await.unwrap();
        for round in 0..200u64 {
            let batch: Vec<Entry> = (round * 4 + 1..=round * 4 + 4).map(|i| entry(7, i, 1)).collect();
            log.append(7, batch).await.unwrap();
        }
        log.append(8, &[entry(8, 1, 1)]).await.unwrap();
        log.remove_group(7).unwrap();
        log.sync().await.unwrap();
        let report = log.reclaim().await.unwrap();
        assert!(report.deleted_segments.len() >= 2, "{report:?}");
        assert_eq!(log.groups(), vec![8]);
        log.close().await.unwrap();
        let (log, recovery) = Log::open(&dir, options()).await.unwrap();
        assert_eq!(recovery.groups.keys().copied().collect::<Vec<_>>(), vec![8]);
        assert_eq!(recovery.groups[&8].entries, vec![entry(8, 1, 1)]);
        log.close().await.unwrap();
    });
}

/// A reclaim runs while the log is in use (the shard runs it as a task of its own): a group
/// compacted between the reclaim's look at a segment and its read of that group's live
/// entries is skipped, not an error, and nothing live is lost.
#[test]
fn a_group_compacted_while_a_reclaim_reads_it_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, options()).await.unwrap();
        // Groups 1 and 2 leave a few live entries in the first segment; group 3 fills the
        // next segments and is then compacted whole, so only 1 and 2 pin the first one.
        log.append(1, (1..=3).map(|i| entry(1, i, 1)).collect::<Vec<_>>()).await.unwrap();
        log.append(2, (1..=3).map(|i| entry(2, i, 1)).collect::<Vec<_>>()).await.unwrap();
        for i in 1..=700 {
            log.append_entries(3, vec![entry(3, i, 1)]).unwrap();
        }
        log.sync().await.unwrap();
        assert!(wal_files(&path).len() >= 3, "group 3 spans segments");
        let ticket = log.compact_group(3, 700, 1).unwrap();
        log.sync().await.unwrap();

        let reclaim = glommio::spawn_local(log.reclaim_after(ticket));
        // Let the reclaim start reading group 1 from disk, then compact group 2 away.
        futures_lite::future::yield_now().await;
        log.compact_group(2, 3, 1).unwrap();
        let report = reclaim.await.expect("a compacted group is skipped, not an error");
        assert!(report.relocated_records >= 1, "group 1's entries moved: {report:?}");

        // A second reclaim frees the first segment; every live entry reads back.
        let again = log.reclaim_after(log.last_ticket()).await.unwrap();
        assert!(!again.deleted_segments.is_empty() || !report.deleted_segments.is_empty());
        assert_eq!(log.entries(1, 1, 4, usize::MAX).await.unwrap(), (1..=3).map(|i| entry(1, i, 1)).collect::<Vec<_>>());
        assert_eq!(log.group(2).unwrap().compacted, 3);
        let before = canon_of_log(&log).await;
        log.close().await.unwrap();
        let (log, recovery) = Log::open(&path, options()).await.unwrap();
        assert_eq!(canon_of(&recovery), before, "recovery finds the same log");
        log.close().await.unwrap();
    });
}
