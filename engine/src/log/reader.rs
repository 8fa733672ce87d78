//! Range reads of a group's entries: from the tail cache when it has them, otherwise from the
//! segments (each record read once, its checksum verified again).

use std::rc::Rc;

use bytes::Bytes;

use super::index::RecordLoc;
use super::record::{decode_at, decode_body, Entry, Frame, RecordBody, HEADER_BYTES};
use super::segment::SegmentFile;
use super::{GroupId, Log, LogError};

enum Slot {
    Cached(Entry),
    OnDisk { index: u64, term: u64, loc: RecordLoc, segment: Rc<SegmentFile> },
}

pub(super) async fn read_entries(
    log: &Log,
    group: GroupId,
    lo: u64,
    hi: u64,
    max_bytes: usize,
) -> Result<Vec<Entry>, LogError> {
    let plan = plan_read(log, group, lo, hi, max_bytes)?;
    let mut out = Vec::with_capacity(plan.len());
    let mut loaded: Option<(RecordLoc, Vec<Entry>)> = None;
    for slot in plan {
        match slot {
            Slot::Cached(entry) => out.push(entry),
            Slot::OnDisk { index, term, loc, segment } => {
                if loaded.as_ref().is_none_or(|(at, _)| *at != loc) {
                    loaded = Some((loc, read_record_entries(&segment, loc, group).await?));
                }
                let (_, entries) = loaded.as_ref().expect("just loaded");
                let found = entries.iter().find(|e| e.index == index && e.term == term).ok_or_else(|| {
                    LogError::Corrupt {
                        file: segment.path.clone(),
                        offset: u64::from(loc.offset),
                        reason: format!("record does not hold entry {index} (term {term}) of group {group}"),
                    }
                })?;
                out.push(found.clone());
            }
        }
    }
    Ok(out)
}

fn plan_read(log: &Log, group: GroupId, lo: u64, hi: u64, max_bytes: usize) -> Result<Vec<Slot>, LogError> {
    let state = log.shared.state.borrow();
    let Some(g) = state.index.group(group) else { return Err(LogError::Unavailable { group, index: lo }) };
    if lo < g.first_index() {
        return Err(LogError::Unavailable { group, index: lo });
    }
    if hi > g.last_index() + 1 {
        return Err(LogError::Unavailable { group, index: g.last_index() + 1 });
    }
    let mut plan = Vec::new();
    let mut bytes = 0usize;
    for index in lo..hi {
        if !plan.is_empty() && bytes >= max_bytes {
            break;
        }
        let meta = g.meta(index).expect("range checked against the index");
        bytes = bytes.saturating_add(meta.payload_len as usize);
        if let Some(entry) = g.cached(index) {
            plan.push(Slot::Cached(entry.clone()));
            continue;
        }
        let Some(segment) = state.segments.get(&meta.loc.segment) else {
            return Err(LogError::Unavailable { group, index });
        };
        plan.push(Slot::OnDisk { index, term: meta.term, loc: meta.loc, segment: segment.clone() });
    }
    Ok(plan)
}

async fn read_record_entries(segment: &SegmentFile, loc: RecordLoc, group: GroupId) -> Result<Vec<Entry>, LogError> {
    let offset = u64::from(loc.offset);
    let corrupt = |reason: String| LogError::Corrupt { file: segment.path.clone(), offset, reason };
    let read = segment
        .file
        .read_at(offset, loc.len as usize)
        .await
        .map_err(|e| LogError::glommio(format!("reading {}", segment.path.display()), e))?;
    let bytes = Bytes::copy_from_slice(&read);
    let (header, body) = match decode_at(&bytes, 0) {
        Frame::Record { header, body } => (header, body),
        Frame::End => return Err(corrupt("record vanished (zeros)".into())),
        Frame::Bad(why) => return Err(corrupt(why.into())),
    };
    if header.group != group {
        return Err(corrupt(format!("record belongs to group {}, not {group}", header.group)));
    }
    let body = bytes.slice(HEADER_BYTES..HEADER_BYTES + body.len());
    match decode_body(header.kind, body).map_err(|why| corrupt(why.into()))? {
        RecordBody::Entries(entries) | RecordBody::Relocated { entries, .. } => Ok(entries),
        _ => Err(corrupt("record holds no entries".into())),
    }
}
