//! The log end to end on real files: appends, group commit, reads, rotation, reopen.

use std::future::Future;

use bytes::Bytes;
use conclave_engine::log::{Entry, HardState, Log, LogError, LogOptions};
use glommio::{LocalExecutorBuilder, Placement};

fn run<F: Future<Output = ()> + 'static>(make: impl FnOnce() -> F) {
    LocalExecutorBuilder::new(Placement::Unbound).io_memory(1 << 20).make().expect("executor").run(make());
}

fn payload(group: u32, index: u64, term: u64) -> Bytes {
    Bytes::from(format!("g{group}-i{index}-t{term}-").repeat((index % 7) as usize * 4 + 1))
}

fn entry(group: u32, index: u64, term: u64) -> Entry {
    Entry::new(index, term, (index % 3) as u8, payload(group, index, term))
}

#[test]
fn interleaved_groups_survive_reopen_with_truncation_and_hard_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let options = LogOptions::with_segment_bytes(64 << 10);
        {
            let (log, recovery) = Log::open(&path, options.clone()).await.unwrap();
            assert!(recovery.groups.is_empty());
            for round in 0..40u64 {
                for group in 1..=3u32 {
                    let batch: Vec<Entry> = (round * 5 + 1..=round * 5 + 5).map(|i| entry(group, i, 1)).collect();
                    log.append_entries(group, batch).unwrap();
                }
                log.save_hard_state(2, HardState { term: 1, vote: 9, commit: round }).unwrap();
                log.sync().await.unwrap();
            }
            // Group 1 is overwritten from 150 on by a new term; group 3 compacts.
            let replacement: Vec<Entry> = (150..=152).map(|i| entry(1, i, 2)).collect();
            log.append(1, replacement).await.unwrap();
            log.compact_group(3, 120, 1).unwrap();
            log.sync().await.unwrap();
            assert!(log.stats().rotations >= 2, "history spans several segments");
            assert_eq!(log.group(1).unwrap().last_index, 152);
            assert_eq!(log.term(1, 152), Some(2));
            assert_eq!(log.term(1, 149), Some(1));
        }
        let (log, recovery) = Log::open(&path, options).await.unwrap();
        let g1 = &recovery.groups[&1];
        assert_eq!(g1.last_index(), 152);
        assert_eq!(g1.entries[148], entry(1, 149, 1));
        assert_eq!(g1.entries[151], entry(1, 152, 2));
        assert_eq!(recovery.groups[&2].hard_state, Some(HardState { term: 1, vote: 9, commit: 39 }));
        assert_eq!(recovery.groups[&2].entries.len(), 200);
        let g3 = &recovery.groups[&3];
        assert_eq!((g3.compacted, g3.compacted_term, g3.entries.first().map(|e| e.index)), (120, 1, Some(121)));
        assert_eq!(recovery.torn_tail, None);
        // Reads after reopen come from disk and match.
        let read = log.entries(2, 1, 201, usize::MAX).await.unwrap();
        assert_eq!(read, (1..=200).map(|i| entry(2, i, 1)).collect::<Vec<_>>());
        assert!(matches!(log.entries(3, 100, 130, usize::MAX).await, Err(LogError::Unavailable { .. })));
        // New appends continue the same groups.
        log.append(2, &[entry(2, 201, 3)]).await.unwrap();
        assert_eq!(log.group(2).unwrap().last_term, 3);
    });
}

#[test]
fn reads_respect_byte_limit_and_come_from_disk_when_cache_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let options = LogOptions { tail_cache_bytes: 0, ..LogOptions::with_segment_bytes(64 << 10) };
        let (log, _) = Log::open(&path, options).await.unwrap();
        let batch: Vec<Entry> = (1..=50).map(|i| entry(4, i, 1)).collect();
        log.append(4, batch.as_slice()).await.unwrap();
        let all = log.entries(4, 1, 51, usize::MAX).await.unwrap();
        assert_eq!(all, batch);
        let limited = log.entries(4, 10, 51, 1).await.unwrap();
        assert_eq!(limited, vec![entry(4, 10, 1)], "at least one entry, then stop at the limit");
        assert!(log.entries(4, 40, 52, usize::MAX).await.is_err(), "past the end");
    });
}

#[test]
fn a_cold_range_read_spanning_many_records_windows_and_segments_returns_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        // 4 MiB segments, one record per entry of group 5 and a record of group 6 between
        // each: a read of group 5 crosses several 1 MiB read windows and a segment change.
        let options = LogOptions { tail_cache_bytes: 0, ..LogOptions::with_segment_bytes(4 << 20) };
        let (log, _) = Log::open(&path, options).await.unwrap();
        let big = |group: u32, index: u64| Entry::new(index, 1, 0, Bytes::from(vec![(index % 251) as u8 ^ group as u8; 3000]));
        let written: Vec<Entry> = (1..=2000).map(|i| big(5, i)).collect();
        for (i, e) in written.iter().enumerate() {
            log.append_entries(5, vec![e.clone()]).unwrap();
            log.append_entries(6, vec![big(6, i as u64 + 1)]).unwrap();
        }
        log.sync().await.unwrap();
        assert!(log.stats().rotations >= 2, "the entries span segments");
        let all = log.entries(5, 1, 2001, usize::MAX).await.unwrap();
        assert_eq!(all.len(), written.len());
        assert!(all == written, "every entry comes back as written");
        let middle = log.entries(5, 700, 1400, usize::MAX).await.unwrap();
        assert!(middle == written[699..1399], "a read starting inside the range too");
        let other = log.entries(6, 1999, 2001, usize::MAX).await.unwrap();
        assert_eq!(other, vec![big(6, 1999), big(6, 2000)]);
    });
}

#[test]
fn o_dsync_segments_write_without_fdatasync_and_recover_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let options = || LogOptions { dsync_writes: true, ..LogOptions::with_segment_bytes(1 << 20) };
        let (log, _) = Log::open(&path, options()).await.unwrap();
        let written: Vec<Entry> = (1..=600).map(|i| entry(7, i, 1)).collect();
        for chunk in written.chunks(50) {
            log.append(7, chunk).await.unwrap();
        }
        assert!(log.stats().rotations >= 1, "new segments come prepared with O_DSYNC");
        log.close().await.unwrap();
        let (log, recovery) = Log::open(&path, options()).await.unwrap();
        assert_eq!(recovery.groups[&7].entries, written);
        // The recovered tail segment is not O_DSYNC: its writes still sync.
        log.append(7, vec![entry(7, 601, 1)]).await.unwrap();
        log.close().await.unwrap();
        let (_log, recovery) = Log::open(&path, options()).await.unwrap();
        assert_eq!(recovery.groups[&7].entries.len(), 601);
    });
}

#[test]
fn concurrent_appenders_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, LogOptions::with_segment_bytes(1 << 20)).await.unwrap();
        let tasks: Vec<_> = (0..32u32)
            .map(|group| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    for index in 1..=10 {
                        log.append(group, &[entry(group, index, 1)]).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        let stats = log.stats();
        assert_eq!(stats.records, 320);
        assert!(stats.syncs < 100, "group commit batches appends: {stats:?}");
        for group in 0..32 {
            assert_eq!(log.group(group).unwrap().last_index, 10);
        }
    });
}

#[test]
fn contract_violations_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, LogOptions::with_segment_bytes(64 << 10)).await.unwrap();
        assert!(matches!(log.append_entries(1, &[entry(1, 2, 1)]), Err(LogError::Invalid(_))), "gap at start");
        assert!(matches!(log.append_entries(1, &[]), Err(LogError::Invalid(_))));
        let big = Entry::new(1, 1, 0, vec![0u8; 70 << 10]);
        assert!(matches!(log.append_entries(1, &[big]), Err(LogError::Invalid(_))), "larger than a segment");
        log.append(1, &[entry(1, 1, 1), entry(1, 2, 1)]).await.unwrap();
        assert!(log.append_entries(1, &[entry(1, 4, 1)]).is_err(), "gap after the end");
        log.compact_group(1, 2, 1).unwrap();
        assert!(log.compact_group(1, 1, 1).is_err(), "compaction backwards");
        assert!(log.append_entries(1, &[entry(1, 2, 1)]).is_err(), "append into the snapshot");
        // A snapshot beyond the end restarts the group after it.
        log.compact_group(1, 10, 4).unwrap();
        log.append(1, &[entry(1, 11, 4)]).await.unwrap();
        assert_eq!(log.term(1, 10), Some(4));
        assert!(log.wait_durable(conclave_engine::log::Ticket(1_000)).await.is_err());
    });
}

#[test]
fn entries_are_readable_before_they_are_durable_and_tickets_order_durability() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, LogOptions::with_segment_bytes(64 << 10)).await.unwrap();
        let first = log.append_entries(1, vec![entry(1, 1, 1), entry(1, 2, 1)]).unwrap();
        let second = log.save_hard_state(1, HardState { term: 1, vote: 1, commit: 0 }).unwrap();
        assert!(first < second);
        assert!(log.durable() < first, "nothing flushed yet");
        // A leader replicates from its log before its own flush: served from the cache.
        assert_eq!(log.entries(1, 1, 3, usize::MAX).await.unwrap(), vec![entry(1, 1, 1), entry(1, 2, 1)]);
        log.wait_durable(first).await.unwrap();
        assert!(log.durable() >= second, "one flush carried both records");
        assert_eq!(log.last_ticket(), second);
        log.close().await.unwrap();
    });
}

#[test]
fn a_flush_abandoned_half_way_poisons_the_log_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, LogOptions::with_segment_bytes(1 << 20)).await.unwrap();
        log.append(1, vec![entry(1, 1, 1)]).await.unwrap();
        let big: Vec<Entry> = (2..=200).map(|i| Entry::new(i, 1, 0, vec![1u8; 2000])).collect();
        log.append_entries(1, big).unwrap();
        let flusher = {
            let log = log.clone();
            glommio::spawn_local(async move { log.sync().await })
        };
        // Let the flusher start its write, then drop it while the write is in flight.
        futures_lite::future::yield_now().await;
        assert!(flusher.cancel().await.is_none(), "the flush was still running");
        assert!(matches!(log.append_entries(1, vec![entry(1, 201, 1)]), Err(LogError::Poisoned(_))));
        assert!(matches!(log.sync().await, Err(LogError::Poisoned(_))));
        drop(log);
        let (log, recovery) = Log::open(&path, LogOptions::with_segment_bytes(1 << 20)).await.unwrap();
        let recovered = &recovery.groups[&1];
        assert!(recovered.last_index() == 1 || recovered.last_index() == 200, "a prefix: whole write or none");
        assert_eq!(recovered.entries[0], entry(1, 1, 1));
        log.close().await.unwrap();
    });
}
