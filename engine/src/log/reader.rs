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

pub(super) async fn read_entries(log: &Log, group: GroupId, lo: u64, hi: u64, max_bytes: usize) -> Result<Vec<Entry>, LogError> {
    let plan = plan_read(log, group, lo, hi, max_bytes)?;
    let mut out = Vec::with_capacity(plan.len());
    let mut loaded: Option<(RecordLoc, Vec<Entry>)> = None;
    let mut window: Option<Window> = None;
    for (at, slot) in plan.iter().enumerate() {
        match slot {
            Slot::Cached(entry) => out.push(entry.clone()),
            Slot::OnDisk { index, term, loc, segment } => {
                let (index, term, loc) = (*index, *term, *loc);
                if loaded.as_ref().is_none_or(|(at, _)| *at != loc) {
                    let bytes = window_read(&mut window, segment, loc, &plan[at..]).await?;
                    loaded = Some((loc, decode_record_entries(segment, loc, group, bytes)?));
                }
                let (_, entries) = loaded.as_ref().expect("just loaded");
                let found = entries.iter().find(|e| e.index == index && e.term == term).ok_or_else(|| LogError::Corrupt {
                    file: segment.path.clone(),
                    offset: u64::from(loc.offset),
                    reason: format!("record does not hold entry {index} (term {term}) of group {group}"),
                })?;
                out.push(found.clone());
            }
        }
    }
    Ok(out)
}

/// The most one disk read of a range read takes in (records after the one needed, in the
/// same segment, come from memory then).
const READ_WINDOW: u64 = 1 << 20;

/// Bytes of one segment read by an earlier disk read of the same range read.
struct Window {
    segment: u64,
    start: u64,
    bytes: Bytes,
}

/// How many bytes from `from`'s offset the rest of the plan needs from its segment (capped
/// at [`READ_WINDOW`], at least the record itself): one read then serves them all.
fn disk_span(rest: &[Slot], from: RecordLoc) -> u64 {
    let start = u64::from(from.offset);
    let mut end = start + u64::from(from.len);
    for slot in rest {
        if let Slot::OnDisk { loc, .. } = slot {
            let loc_end = u64::from(loc.offset) + u64::from(loc.len);
            if loc.segment != from.segment || loc.offset < from.offset || loc_end - start > READ_WINDOW {
                break;
            }
            end = end.max(loc_end);
        }
    }
    end - start
}

/// The bytes of the record at `loc`, from the window when it holds them, otherwise read
/// from the segment together with what the `rest` of the plan needs next (which becomes
/// the window).
async fn window_read(window: &mut Option<Window>, segment: &SegmentFile, loc: RecordLoc, rest: &[Slot]) -> Result<Bytes, LogError> {
    let (offset, len) = (u64::from(loc.offset), u64::from(loc.len));
    let held = |w: &Window| w.segment == loc.segment && offset >= w.start && offset + len <= w.start + w.bytes.len() as u64;
    if let Some(w) = window.as_ref().filter(|w| held(w)) {
        let from = (offset - w.start) as usize;
        return Ok(w.bytes.slice(from..from + len as usize));
    }
    let read = segment
        .file
        .read_at(offset, disk_span(rest, loc) as usize)
        .await
        .map_err(|e| LogError::glommio(format!("reading {}", segment.path.display()), e))?;
    let bytes = Bytes::copy_from_slice(&read);
    if (bytes.len() as u64) < len {
        return Err(LogError::Corrupt { file: segment.path.clone(), offset, reason: "record cut short by the end of the file".into() });
    }
    let record = bytes.slice(..len as usize);
    *window = Some(Window { segment: loc.segment, start: offset, bytes });
    Ok(record)
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

fn decode_record_entries(segment: &SegmentFile, loc: RecordLoc, group: GroupId, bytes: Bytes) -> Result<Vec<Entry>, LogError> {
    let offset = u64::from(loc.offset);
    let corrupt = |reason: String| LogError::Corrupt { file: segment.path.clone(), offset, reason };
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
