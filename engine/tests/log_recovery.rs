//! Recovery against torn writes and corruption, on real segment files: every cut of the
//! newest segment's last write and a dense random sample elsewhere, random bit flips, and a
//! crash in the middle of a rotation. Recovery must yield exactly a prefix of the synced
//! history, or refuse with the file and offset of the damage; never garbage, never a panic.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use conclave_engine::log::record::{decode_at, Frame, HEADER_BYTES};
use conclave_engine::log::{Entry, HardState, Log, LogError, LogOptions, Recovery};
use glommio::{LocalExecutorBuilder, Placement};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn run<F: Future<Output = ()> + 'static>(make: impl FnOnce() -> F) {
    LocalExecutorBuilder::new(Placement::Unbound).io_memory(1 << 20).make().expect("executor").run(make());
}

fn options() -> LogOptions {
    LogOptions::with_segment_bytes(64 << 10)
}

/// One operation of the history, with the ticket (sequence number) the log gave it.
#[derive(Clone)]
enum Op {
    Append(u32, Vec<Entry>),
    Hard(u32, HardState),
}

/// Per group: hard state and entries, as recovery reports them.
type Canon = BTreeMap<u32, (Option<HardState>, Vec<Entry>)>;

fn model_after(history: &[(u64, Op)], records: u64) -> Canon {
    let mut canon = Canon::new();
    for (seq, op) in history.iter().filter(|(seq, _)| *seq <= records) {
        let _ = seq;
        match op {
            Op::Append(group, entries) => {
                let slot = &mut canon.entry(*group).or_default().1;
                slot.retain(|e| e.index < entries[0].index);
                slot.extend(entries.iter().cloned());
            }
            Op::Hard(group, hs) => canon.entry(*group).or_default().0 = Some(*hs),
        }
    }
    canon
}

fn canon_of(recovery: &Recovery) -> Canon {
    recovery.groups.iter().map(|(g, r)| (*g, (r.hard_state, r.entries.clone()))).collect()
}

/// Writes a history of synced batches over interleaved groups, with truncations; returns
/// the operations in log order.
async fn write_history(dir: &Path, rng: &mut ChaCha8Rng, batches: usize) -> Vec<(u64, Op)> {
    let (log, _) = Log::open(dir, options()).await.unwrap();
    let mut history = Vec::new();
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for batch in 0..batches {
        for _ in 0..rng.random_range(1..4) {
            let group = rng.random_range(1..5u32);
            let end = *last.get(&group).unwrap_or(&0);
            // Mostly append at the end; sometimes overwrite a short suffix with a new term.
            let start = if end > 3 && rng.random_bool(0.15) { end - rng.random_range(0..3) } else { end + 1 };
            let entries: Vec<Entry> = (start..start + rng.random_range(1..4))
                .map(|i| {
                    let len = rng.random_range(0..120);
                    Entry::new(i, batch as u64 + 1, 1, Bytes::from(vec![(i % 251) as u8; len]))
                })
                .collect();
            last.insert(group, entries.last().unwrap().index);
            let ticket = log.append_entries(group, entries.as_slice()).unwrap();
            history.push((ticket.0, Op::Append(group, entries)));
        }
        if rng.random_bool(0.3) {
            let group = rng.random_range(1..5u32);
            let hs = HardState { term: batch as u64, vote: 1, commit: batch as u64 / 2 };
            history.push((log.save_hard_state(group, hs).unwrap().0, Op::Hard(group, hs)));
        }
        log.sync().await.unwrap();
    }
    log.close().await.unwrap();
    history
}

/// Records of a segment file: (offset, end of header+body, seq, batch start).
fn records_of(bytes: &[u8]) -> Vec<(usize, usize, u64, u64)> {
    let mut out = Vec::new();
    let mut offset = 0;
    while let Frame::Record { header, .. } = decode_at(bytes, offset) {
        out.push((offset, offset + HEADER_BYTES + header.body_len as usize, header.seq, header.batch_start));
        offset += header.framed_len();
    }
    out
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "wal")).collect();
    files.sort();
    files
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for file in segments(from) {
        std::fs::copy(&file, to.join(file.file_name().unwrap())).unwrap();
    }
}

async fn recover(dir: &Path) -> Result<Recovery, LogError> {
    let (log, recovery) = Log::open(dir, options()).await?;
    log.close().await?;
    Ok(recovery)
}

#[test]
fn cuts_and_bit_flips_recover_a_prefix_or_report_corruption() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    let work = root.path().join("work");
    run(move || async move {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let history = write_history(&base, &mut rng, 400).await;
        let files = segments(&base);
        assert!(files.len() >= 2, "history must span segments, got {files:?}");
        let newest = files.last().unwrap().clone();
        let name = newest.file_name().unwrap().to_owned();
        let bytes = std::fs::read(&newest).unwrap();
        let records = records_of(&bytes);
        let before_newest = records.first().unwrap().2 - 1;
        let data_end = records.last().unwrap().1;
        let last_batch = records.last().unwrap().3;
        let last_write_start = records.iter().find(|r| r.3 == last_batch).unwrap().0;
        assert!(records.iter().any(|r| r.3 < last_batch), "newest segment must hold several writes");
        let full = model_after(&history, u64::MAX);
        assert_eq!(canon_of(&recover(&base).await.unwrap()), full);

        // Cuts: every offset of the last write, a random sample before it.
        let mut cuts: Vec<usize> = (last_write_start..=data_end).collect();
        cuts.extend((0..150).map(|_| rng.random_range(0..last_write_start)));
        for (n, &cut) in cuts.iter().enumerate() {
            copy_dir(&base, &work);
            let target = work.join(&name);
            if n % 2 == 0 {
                std::fs::OpenOptions::new().write(true).open(&target).unwrap().set_len(cut as u64).unwrap();
            } else {
                let mut damaged = bytes.clone();
                damaged[cut..].fill(0);
                std::fs::write(&target, damaged).unwrap();
            }
            let recovery = recover(&work).await.unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            // Zeroing bytes that were zeros already leaves a record intact.
            let zeroed = n % 2 == 1;
            let intact =
                records.iter().take_while(|r| r.1 <= cut || (zeroed && bytes[cut.max(r.0)..r.1].iter().all(|&b| b == 0))).count() as u64;
            assert_eq!(recovery.last_seq, before_newest + intact, "cut at {cut}");
            assert_eq!(canon_of(&recovery), model_after(&history, recovery.last_seq), "cut at {cut}");
        }

        // Bit flips anywhere in the newest segment's data.
        for _ in 0..200 {
            let at = rng.random_range(0..data_end);
            let mut damaged = bytes.clone();
            damaged[at] ^= 1 << rng.random_range(0..8);
            copy_dir(&base, &work);
            std::fs::write(work.join(&name), damaged).unwrap();
            let hit = records.iter().find(|r| r.0 <= at && at < r.1);
            match (hit, recover(&work).await) {
                (None, Ok(recovery)) => assert_eq!(canon_of(&recovery), full, "flip in padding at {at}"),
                (Some(r), Ok(recovery)) => {
                    assert_eq!(r.3, last_batch, "flip at {at} in a synced write went unreported");
                    assert_eq!(recovery.last_seq, r.2 - 1);
                    assert_eq!(canon_of(&recovery), model_after(&history, recovery.last_seq));
                }
                (Some(r), Err(LogError::Corrupt { file, offset, .. })) => {
                    assert!(r.3 < last_batch, "flip at {at} in the last write is a torn tail");
                    assert_eq!((file.file_name().unwrap(), offset), (name.as_os_str(), r.0 as u64));
                }
                (hit, Err(e)) => panic!("flip at {at} (record {hit:?}): unexpected {e}"),
            }
        }
    });
}

#[test]
fn damage_in_an_older_segment_is_corruption_and_repair_truncates() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    let work = root.path().join("work");
    run(move || async move {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let history = write_history(&base, &mut rng, 300).await;
        let files = segments(&base);
        let oldest = files.first().unwrap().clone();
        let mut bytes = std::fs::read(&oldest).unwrap();
        let records = records_of(&bytes);
        let victim = records[records.len() / 2];
        bytes[victim.0 + HEADER_BYTES - 1] ^= 0x10;
        copy_dir(&base, &work);
        std::fs::write(work.join(oldest.file_name().unwrap()), &bytes).unwrap();
        match recover(&work).await {
            Err(LogError::Corrupt { file, offset, .. }) => {
                assert_eq!(file.file_name(), oldest.file_name());
                assert_eq!(offset, victim.0 as u64);
            }
            other => panic!("expected corruption, got {:?}", other.map(|r| r.last_seq)),
        }
        let repair = LogOptions { repair_corruption: true, ..options() };
        let (log, recovery) = Log::open(&work, repair).await.unwrap();
        assert_eq!(recovery.last_seq, victim.2 - 1);
        assert!(recovery.repaired.is_some());
        assert_eq!(canon_of(&recovery), model_after(&history, recovery.last_seq));
        assert_eq!(segments(&work).len(), 1, "segments after the damage are removed");
        // The repaired log takes new appends and recovers them.
        let group = *recovery.groups.keys().next().unwrap();
        let next = recovery.groups[&group].last_index() + 1;
        log.append(group, &[Entry::new(next, 999, 0, &b"after repair"[..])]).await.unwrap();
        log.close().await.unwrap();
        let again = recover(&work).await.unwrap();
        assert_eq!(again.groups[&group].entries.last().unwrap().term, 999);
    });
}

#[test]
fn crash_during_rotation_recovers_the_previous_segments() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    let work = root.path().join("work");
    run(move || async move {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let history = write_history(&base, &mut rng, 300).await;
        let files = segments(&base);
        let newest = files.last().unwrap();
        let first_of_newest = records_of(&std::fs::read(newest).unwrap())[0].2;
        // The new segment was renamed into place but none of its first write landed; a
        // prepared segment was left behind too.
        copy_dir(&base, &work);
        let target = work.join(newest.file_name().unwrap());
        let len = std::fs::metadata(&target).unwrap().len() as usize;
        std::fs::write(&target, vec![0u8; len]).unwrap();
        std::fs::write(work.join("prepared-9.tmp"), vec![0u8; 4096]).unwrap();
        let recovery = recover(&work).await.unwrap();
        assert_eq!(recovery.last_seq, first_of_newest - 1);
        assert_eq!(canon_of(&recovery), model_after(&history, recovery.last_seq));
        // The log goes on from there: new records land in a new segment and survive.
        let (log, _) = Log::open(&work, options()).await.unwrap();
        let (&group, state) = recovery.groups.iter().find(|(_, g)| !g.entries.is_empty()).unwrap();
        let next = state.last_index() + 1;
        log.append(group, vec![Entry::new(next, 77, 0, &b"after the crash"[..])]).await.unwrap();
        log.close().await.unwrap();
        let again = recover(&work).await.unwrap();
        assert_eq!(again.groups[&group].entries.last().unwrap().payload, &b"after the crash"[..]);
        assert_eq!(again.groups[&group].entries.len(), state.entries.len() + 1);
        let left: Vec<_> = std::fs::read_dir(&work).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(!left.iter().any(|n| n == "prepared-9.tmp"), "leftovers removed: {left:?}");
        assert_eq!(segments(&work).len(), files.len(), "the empty segment was removed, one new one added");
    });
}
