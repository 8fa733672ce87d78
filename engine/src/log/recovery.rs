//! Recovery: rebuilds the index from the segments and decides where the log ends.
//!
//! Segments are read in sequence order; records must carry consecutive sequence numbers,
//! across segment boundaries too. The chain of good records ends at the first record whose
//! length, checksum or sequence number is wrong (or at zeros, or at a missing segment).
//! What follows decides the verdict: if any good record of a *later write* (its batch start
//! is above the sequence number the chain expected) exists after that point, a write that
//! had been synced is damaged, which is corruption: recovery refuses, naming file and
//! offset, unless `repair_corruption` is set. Otherwise the end is a torn tail (the last
//! write, never acknowledged): the segment is truncated there and later segments removed.
//! New records always go to a fresh segment.
//!
//! Replay per group: entries appended at `i` replace `i` and everything after; relocated
//! entries overwrite their own indices and drop anything above their `last_index`; the
//! latest hard state and compaction marker win; a group-removed record forgets the group.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

use super::index::{EntryMeta, GroupIndex, Index, RecordLoc};
use super::record::{decode_at, decode_body, Entry, Frame, HardState, RecordBody, RecordHeader, RECORD_ALIGN};
use super::segment::{self, SegmentFile};
use super::{GroupId, LogError, LogOptions};

/// What recovery found for one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveredGroup {
    pub hard_state: Option<HardState>,
    /// Entries up to here are covered by a snapshot (0: none).
    pub compacted: u64,
    pub compacted_term: u64,
    /// The live entries: `compacted + 1 ..= last_index()`, consecutive.
    pub entries: Vec<Entry>,
}

impl RecoveredGroup {
    pub fn last_index(&self) -> u64 {
        self.entries.last().map_or(self.compacted, |e| e.index)
    }
}

/// Where recovery cut the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    pub file: PathBuf,
    pub offset: u64,
    pub reason: String,
}

/// The report of a recovery. Entry payloads are slices of the segment buffers read during
/// recovery: drop the report once its contents have been handed over, or the buffers stay.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    pub groups: BTreeMap<GroupId, RecoveredGroup>,
    /// Segments kept.
    pub segments: usize,
    /// Records replayed.
    pub records: u64,
    /// Sequence number of the last good record (0 for an empty log).
    pub last_seq: u64,
    /// A torn tail that was cut off (bytes of a write that never completed).
    pub torn_tail: Option<Cut>,
    /// Corruption cut off because `repair_corruption` was set: acknowledged data was lost.
    pub repaired: Option<Cut>,
}

pub(super) struct Recovered {
    pub segments: BTreeMap<u64, Rc<SegmentFile>>,
    pub index: Index,
    pub last_seq: u64,
}

#[derive(Default)]
struct ReplayGroup {
    compacted: u64,
    compacted_term: u64,
    compaction_loc: Option<RecordLoc>,
    hard_state: Option<(HardState, RecordLoc)>,
    entries: BTreeMap<u64, (Entry, RecordLoc)>,
}

/// Where the chain of good records stopped inside a loaded segment.
struct Stop {
    offset: usize,
    reason: &'static str,
}

struct Loaded {
    first_seq: u64,
    path: PathBuf,
    file: glommio::io::DmaFile,
    bytes: Bytes,
}

async fn load(first_seq: u64, path: PathBuf) -> Result<Loaded, LogError> {
    let file = segment::open_segment(&path).await?;
    let size = file.file_size().await.map_err(|e| LogError::glommio(format!("sizing {}", path.display()), e))?;
    let bytes = Bytes::from(segment::read_prefix(&file, size, &path).await?);
    Ok(Loaded { first_seq, path, file, bytes })
}

pub(super) async fn recover(dir: &Path, options: &LogOptions) -> Result<(Recovered, Recovery), LogError> {
    let listed = segment::list_segments(dir)?;
    let mut groups: BTreeMap<GroupId, ReplayGroup> = BTreeMap::new();
    let mut report = Recovery::default();
    let mut kept: Vec<Loaded> = Vec::new();
    let mut expected = listed.first().map_or(1, |(first, _)| *first);
    let mut stop: Option<Stop> = None;
    let mut next = 0;
    while next < listed.len() {
        let (first_seq, path) = &listed[next];
        if !kept.is_empty() && *first_seq != expected {
            break;
        }
        let loaded = load(*first_seq, path.clone()).await?;
        next += 1;
        let (end, reason) = replay_segment(&loaded, &mut expected, &mut groups, &mut report, options)?;
        stop = Some(Stop { offset: end, reason });
        kept.push(loaded);
    }
    // The chain ends in the last kept segment (if any) at `stop`.
    if let (Some(last), Some(stop)) = (kept.last(), stop.as_ref()) {
        let mut evidence = later_write_after(&last.bytes, stop.offset, expected);
        let mut later_bytes = false;
        for (first_seq, path) in &listed[next..] {
            later_bytes = true;
            if evidence.is_none() {
                let later = load(*first_seq, path.clone()).await?;
                evidence = later_write_after(&later.bytes, 0, expected);
            }
        }
        let cut = Cut { file: last.path.clone(), offset: stop.offset as u64, reason: stop.reason.to_string() };
        if let Some(later_offset) = evidence {
            let reason = format!("{}; a later write follows (at byte {later_offset} onwards)", stop.reason);
            if !options.repair_corruption {
                return Err(LogError::Corrupt { file: cut.file, offset: cut.offset, reason });
            }
            report.repaired = Some(Cut { reason, ..cut });
        } else if stop.reason != END_OF_DATA || later_bytes {
            report.torn_tail = Some(cut);
        }
        for (_, path) in &listed[next..] {
            std::fs::remove_file(path).map_err(|e| LogError::io(format!("removing {}", path.display()), e))?;
        }
        let last = kept.pop().expect("checked non-empty");
        if stop.offset == 0 {
            last.file.close().await.map_err(|e| LogError::glommio("closing an empty segment", e))?;
            std::fs::remove_file(&last.path).map_err(|e| LogError::io(format!("removing {}", last.path.display()), e))?;
        } else {
            let failed = |e| LogError::glommio(format!("truncating {}", last.path.display()), e);
            last.file.truncate(stop.offset as u64).await.map_err(failed)?;
            last.file.fdatasync().await.map_err(failed)?;
            kept.push(last);
        }
        segment::sync_dir(dir).await?;
    }
    report.last_seq = expected - 1;
    report.segments = kept.len();
    let index = build_index(groups, &mut report, options, dir)?;
    let segments = kept
        .into_iter()
        .map(|l| (l.first_seq, Rc::new(SegmentFile { first_seq: l.first_seq, path: l.path, file: Rc::new(l.file), dsync: false })))
        .collect();
    Ok((Recovered { segments, index, last_seq: report.last_seq }, report))
}

const END_OF_DATA: &str = "end of data";

/// Replays the good records of one segment; returns where and why the chain stopped.
fn replay_segment(
    loaded: &Loaded,
    expected: &mut u64,
    groups: &mut BTreeMap<GroupId, ReplayGroup>,
    report: &mut Recovery,
    options: &LogOptions,
) -> Result<(usize, &'static str), LogError> {
    let mut offset = 0;
    loop {
        let (header, body) = match decode_at(&loaded.bytes, offset) {
            Frame::Record { header, body } if header.seq == *expected => (header, body),
            Frame::Record { .. } => return Ok((offset, "unexpected sequence number")),
            Frame::End => return Ok((offset, END_OF_DATA)),
            Frame::Bad(why) => return Ok((offset, why)),
        };
        let start = offset + super::record::HEADER_BYTES;
        let body = loaded.bytes.slice(start..start + body.len());
        let too_large = |_| LogError::Corrupt {
            file: loaded.path.clone(),
            offset: offset as u64,
            reason: "record beyond 4 GiB into its segment".into(),
        };
        let loc = RecordLoc {
            segment: loaded.first_seq,
            offset: u32::try_from(offset).map_err(too_large)?,
            len: u32::try_from(header.framed_len()).map_err(too_large)?,
        };
        if let Err(why) = apply(groups, &header, body, loc) {
            let corrupt = LogError::Corrupt { file: loaded.path.clone(), offset: offset as u64, reason: why.into() };
            if !options.repair_corruption {
                return Err(corrupt);
            }
            return Ok((offset, why));
        }
        report.records += 1;
        *expected += 1;
        offset += header.framed_len();
    }
}

fn apply(groups: &mut BTreeMap<GroupId, ReplayGroup>, header: &RecordHeader, body: Bytes, loc: RecordLoc) -> Result<(), &'static str> {
    let body = decode_body(header.kind, body)?;
    if body == RecordBody::GroupRemoved {
        groups.remove(&header.group);
        return Ok(());
    }
    let group = groups.entry(header.group).or_default();
    match body {
        RecordBody::Entries(entries) => {
            let first = entries.first().ok_or("empty entries record")?.index;
            group.entries.split_off(&first);
            for entry in entries.into_iter().filter(|e| e.index > group.compacted) {
                group.entries.insert(entry.index, (entry, loc));
            }
        }
        RecordBody::Relocated { last_index, entries } => {
            for entry in entries.into_iter().filter(|e| e.index > group.compacted) {
                group.entries.insert(entry.index, (entry, loc));
            }
            group.entries.split_off(&last_index.saturating_add(1));
        }
        RecordBody::HardState(hard_state) => group.hard_state = Some((hard_state, loc)),
        RecordBody::Compaction { index, term } => {
            if index >= group.compacted {
                group.compacted = index;
                group.compacted_term = term;
            }
            group.compaction_loc = Some(loc);
            group.entries = group.entries.split_off(&group.compacted.saturating_add(1));
        }
        RecordBody::GroupRemoved => {} // handled above
    }
    Ok(())
}

/// The offset of the first good record at or after `from` that belongs to a write later than
/// the one that should have held sequence number `expected`.
fn later_write_after(bytes: &[u8], from: usize, expected: u64) -> Option<usize> {
    let mut offset = from.next_multiple_of(RECORD_ALIGN);
    while offset + super::record::HEADER_BYTES <= bytes.len() {
        // Zeros are by far the common case: skip them without decoding.
        if bytes[offset..offset + RECORD_ALIGN].iter().all(|&b| b == 0) {
            offset += RECORD_ALIGN;
            continue;
        }
        if let Frame::Record { header, .. } = decode_at(bytes, offset) {
            if header.batch_start > expected {
                return Some(offset);
            }
        }
        offset += RECORD_ALIGN;
    }
    None
}

fn build_index(groups: BTreeMap<GroupId, ReplayGroup>, report: &mut Recovery, options: &LogOptions, dir: &Path) -> Result<Index, LogError> {
    let mut index = Index::default();
    for (id, group) in groups {
        let mut metas = VecDeque::with_capacity(group.entries.len());
        let mut entries = Vec::with_capacity(group.entries.len());
        for (want, (at, (entry, loc))) in (group.compacted + 1..).zip(group.entries) {
            if at != want {
                let reason = format!("group {id}: entry {want} is missing (next present is {at})");
                if !options.repair_corruption {
                    return Err(LogError::Corrupt { file: dir.to_path_buf(), offset: 0, reason });
                }
                report.repaired.get_or_insert(Cut { file: dir.to_path_buf(), offset: 0, reason });
                break;
            }
            let payload_len = u32::try_from(entry.payload.len()).expect("bounded by the segment");
            metas.push_back(EntryMeta { term: entry.term, payload_len, loc });
            entries.push(entry);
        }
        index.groups.insert(id, GroupIndex::restored(group.compacted, group.compacted_term, metas, group.hard_state, group.compaction_loc));
        report.groups.insert(
            id,
            RecoveredGroup {
                hard_state: group.hard_state.map(|(hs, _)| hs),
                compacted: group.compacted,
                compacted_term: group.compacted_term,
                entries,
            },
        );
    }
    Ok(index)
}
