//! Record framing: what one log record looks like on disk.
//!
//! Every record starts at an 8-byte aligned offset of its segment with a 32-byte header,
//! all integers little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | body length |
//! | 4..8 | `crc32fast` over bytes 8..32 of the header and the body |
//! | 8 | record kind ([`RecordKind`]) |
//! | 9..12 | zero |
//! | 12..16 | group id |
//! | 16..24 | sequence number (the log's record counter, +1 per record, never reused) |
//! | 24..32 | batch start: sequence number of the first record of the same write |
//!
//! then the body, then zero padding to the next multiple of 8. A header of all zeros marks
//! the end of the data in a segment (segments are pre-allocated with zeros). The batch start
//! lets recovery tell a torn write (bad record followed only by records of the same write,
//! which was never acknowledged) from corruption (followed by records of a later write,
//! which was issued only after the damaged one had been synced).

use bytes::{Buf, BufMut, Bytes};

/// Bytes of a record header.
pub const HEADER_BYTES: usize = 32;
/// Alignment of records inside a segment.
pub const RECORD_ALIGN: usize = 8;
const ENTRY_FIXED_BYTES: usize = 8 + 8 + 1 + 4;

/// One Raft log entry as the log stores it. `kind` is opaque here (the Raft core maps its
/// entry kinds to bytes); witnesses store empty payloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    pub kind: u8,
    pub payload: Bytes,
}

impl Entry {
    /// An entry; `payload` is anything convertible into `Bytes` (no copy for `Bytes`).
    pub fn new(index: u64, term: u64, kind: u8, payload: impl Into<Bytes>) -> Self {
        Entry { index, term, kind, payload: payload.into() }
    }

    fn encoded_len(&self) -> usize {
        ENTRY_FIXED_BYTES + self.payload.len()
    }
}

/// The persistent Raft state of a group besides its entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// Kinds of records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// Entries appended at `entries[0].index`, replacing that index and all after it.
    Entries = 1,
    /// The latest hard state of the group.
    HardState = 2,
    /// Entries up to `index` (whose term is `term`) are covered by a snapshot and dropped.
    Compaction = 3,
    /// Live entries copied forward by compaction: they overwrite their own indices only,
    /// and entries above `last_index` seen earlier in the log are dropped.
    Relocated = 4,
    /// The group left this shard: forget everything about it seen earlier.
    GroupRemoved = 5,
}

impl RecordKind {
    fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => RecordKind::Entries,
            2 => RecordKind::HardState,
            3 => RecordKind::Compaction,
            4 => RecordKind::Relocated,
            5 => RecordKind::GroupRemoved,
            _ => return None,
        })
    }
}

/// The payload of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordBody {
    Entries(Vec<Entry>),
    HardState(HardState),
    Compaction { index: u64, term: u64 },
    Relocated { last_index: u64, entries: Vec<Entry> },
    GroupRemoved,
}

/// A record of one group, before framing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub group: u32,
    pub body: RecordBody,
}

/// A decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub body_len: u32,
    pub kind: RecordKind,
    pub group: u32,
    pub seq: u64,
    pub batch_start: u64,
}

impl RecordHeader {
    /// Bytes the record takes in its segment, padding included.
    pub fn framed_len(&self) -> usize {
        padded(HEADER_BYTES + self.body_len as usize)
    }
}

/// What [`decode_at`] found at an offset.
#[derive(Debug)]
pub enum Frame<'a> {
    /// A record whose length and checksum are good.
    Record { header: RecordHeader, body: &'a [u8] },
    /// An all-zero header: no data from here on (or a torn write that never landed).
    End,
    /// Neither: a torn or damaged record.
    Bad(&'static str),
}

/// Rounds `len` up to the record alignment.
pub fn padded(len: usize) -> usize {
    len.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

impl Record {
    fn body_len(&self) -> usize {
        match &self.body {
            RecordBody::Entries(entries) => 4 + entries.iter().map(Entry::encoded_len).sum::<usize>(),
            RecordBody::Relocated { entries, .. } => 8 + 4 + entries.iter().map(Entry::encoded_len).sum::<usize>(),
            RecordBody::HardState(_) => 24,
            RecordBody::Compaction { .. } => 16,
            RecordBody::GroupRemoved => 0,
        }
    }

    /// Bytes the framed record takes, padding included.
    pub fn framed_len(&self) -> usize {
        padded(HEADER_BYTES + self.body_len())
    }

    fn kind(&self) -> RecordKind {
        match self.body {
            RecordBody::Entries(_) => RecordKind::Entries,
            RecordBody::HardState(_) => RecordKind::HardState,
            RecordBody::Compaction { .. } => RecordKind::Compaction,
            RecordBody::Relocated { .. } => RecordKind::Relocated,
            RecordBody::GroupRemoved => RecordKind::GroupRemoved,
        }
    }

    /// Frames the record into `out`, which must be exactly [`Record::framed_len`] bytes.
    pub fn encode_into(&self, seq: u64, batch_start: u64, out: &mut [u8]) {
        let body_len = self.body_len();
        assert_eq!(out.len(), padded(HEADER_BYTES + body_len), "record buffer size");
        let body_len_u32 = u32::try_from(body_len).expect("record bodies are bounded by the segment size");
        {
            let mut header = &mut out[..HEADER_BYTES];
            header.put_u32_le(body_len_u32);
            header.put_u32_le(0);
            header.put_u8(self.kind() as u8);
            header.put_slice(&[0, 0, 0]);
            header.put_u32_le(self.group);
            header.put_u64_le(seq);
            header.put_u64_le(batch_start);
        }
        {
            let mut body = &mut out[HEADER_BYTES..HEADER_BYTES + body_len];
            match &self.body {
                RecordBody::Entries(entries) => put_entries(&mut body, entries),
                RecordBody::Relocated { last_index, entries } => {
                    body.put_u64_le(*last_index);
                    put_entries(&mut body, entries);
                }
                RecordBody::HardState(hs) => {
                    body.put_u64_le(hs.term);
                    body.put_u64_le(hs.vote);
                    body.put_u64_le(hs.commit);
                }
                RecordBody::Compaction { index, term } => {
                    body.put_u64_le(*index);
                    body.put_u64_le(*term);
                }
                RecordBody::GroupRemoved => {}
            }
            debug_assert!(body.is_empty(), "body length computed wrongly");
        }
        out[HEADER_BYTES + body_len..].fill(0);
        let crc = crc32fast::hash(&out[8..HEADER_BYTES + body_len]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

fn put_entries(body: &mut &mut [u8], entries: &[Entry]) {
    body.put_u32_le(u32::try_from(entries.len()).expect("entry count bounded by record size"));
    for entry in entries {
        body.put_u64_le(entry.index);
        body.put_u64_le(entry.term);
        body.put_u8(entry.kind);
        body.put_u32_le(u32::try_from(entry.payload.len()).expect("payload bounded by record size"));
        body.put_slice(&entry.payload);
    }
}

/// Reads the frame starting at `offset` of `segment` (a whole segment's bytes, or a prefix).
pub fn decode_at(segment: &[u8], offset: usize) -> Frame<'_> {
    let Some(rest) = segment.get(offset..) else { return Frame::End };
    if rest.len() < HEADER_BYTES {
        return if rest.iter().all(|&b| b == 0) { Frame::End } else { Frame::Bad("truncated header") };
    }
    let head = &rest[..HEADER_BYTES];
    if head.iter().all(|&b| b == 0) {
        return Frame::End;
    }
    let mut cursor = head;
    let body_len = cursor.get_u32_le();
    let crc = cursor.get_u32_le();
    let kind_byte = cursor.get_u8();
    let reserved = [cursor.get_u8(), cursor.get_u8(), cursor.get_u8()];
    let group = cursor.get_u32_le();
    let seq = cursor.get_u64_le();
    let batch_start = cursor.get_u64_le();
    let Some(kind) = RecordKind::from_u8(kind_byte) else { return Frame::Bad("unknown record kind") };
    if reserved != [0, 0, 0] {
        return Frame::Bad("reserved header bytes not zero");
    }
    let Some(end) = HEADER_BYTES.checked_add(body_len as usize).filter(|&end| end <= rest.len()) else {
        return Frame::Bad("record length runs past the segment");
    };
    if crc32fast::hash(&rest[8..end]) != crc {
        return Frame::Bad("checksum mismatch");
    }
    if batch_start > seq {
        return Frame::Bad("batch start after the record's own sequence number");
    }
    let header = RecordHeader { body_len, kind, group, seq, batch_start };
    Frame::Record { header, body: &rest[HEADER_BYTES..end] }
}

/// Decodes the body of a record whose checksum already passed. `body` is a `Bytes` so
/// payloads are sliced, not copied. Errors describe records that are well-framed but
/// semantically impossible (a bug or a forged record); callers treat them as corruption.
pub fn decode_body(kind: RecordKind, mut body: Bytes) -> Result<RecordBody, &'static str> {
    let parsed = match kind {
        RecordKind::Entries => RecordBody::Entries(take_entries(&mut body)?),
        RecordKind::Relocated => {
            let last_index = take_u64(&mut body)?;
            let entries = take_entries(&mut body)?;
            if entries.last().is_some_and(|e| e.index > last_index) {
                return Err("relocated entry above the record's last index");
            }
            RecordBody::Relocated { last_index, entries }
        }
        RecordKind::HardState => {
            RecordBody::HardState(HardState { term: take_u64(&mut body)?, vote: take_u64(&mut body)?, commit: take_u64(&mut body)? })
        }
        RecordKind::Compaction => RecordBody::Compaction { index: take_u64(&mut body)?, term: take_u64(&mut body)? },
        RecordKind::GroupRemoved => RecordBody::GroupRemoved,
    };
    if body.has_remaining() {
        return Err("trailing bytes after the record body");
    }
    Ok(parsed)
}

fn take_u64(body: &mut Bytes) -> Result<u64, &'static str> {
    body.try_get_u64_le().map_err(|_| "record body too short")
}

fn take_entries(body: &mut Bytes) -> Result<Vec<Entry>, &'static str> {
    let count = body.try_get_u32_le().map_err(|_| "record body too short")? as usize;
    if count == 0 || count > body.remaining() / ENTRY_FIXED_BYTES {
        return Err("implausible entry count");
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        if body.remaining() < ENTRY_FIXED_BYTES {
            return Err("entry header cut short");
        }
        let index = body.get_u64_le();
        let term = body.get_u64_le();
        let kind = body.get_u8();
        let len = body.get_u32_le() as usize;
        if len > body.remaining() {
            return Err("entry payload runs past the record");
        }
        if let Some(prev) = entries.last().map(|e: &Entry| e.index) {
            if prev.checked_add(1) != Some(index) {
                return Err("entries of a record are not consecutive");
            }
        }
        if index == 0 {
            return Err("entry index 0");
        }
        entries.push(Entry { index, term, kind, payload: body.split_to(len) });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(record: Record) {
        let mut buf = vec![0xAA; record.framed_len()];
        record.encode_into(42, 40, &mut buf);
        let Frame::Record { header, body } = decode_at(&buf, 0) else { panic!("not a record") };
        assert_eq!((header.seq, header.batch_start, header.group), (42, 40, record.group));
        assert_eq!(header.framed_len(), buf.len());
        let body = decode_body(header.kind, Bytes::copy_from_slice(body)).expect("body decodes");
        assert_eq!(body, record.body);
    }

    #[test]
    fn every_kind_roundtrips() {
        let entries = vec![Entry::new(5, 2, 1, &b"abc"[..]), Entry::new(6, 2, 0, Bytes::new())];
        roundtrip(Record { group: 3, body: RecordBody::Entries(entries.clone()) });
        roundtrip(Record { group: 3, body: RecordBody::Relocated { last_index: 9, entries } });
        let hs = HardState { term: 4, vote: 2, commit: 1 };
        roundtrip(Record { group: 1, body: RecordBody::HardState(hs) });
        roundtrip(Record { group: 1, body: RecordBody::Compaction { index: 77, term: 3 } });
        roundtrip(Record { group: u32::MAX, body: RecordBody::GroupRemoved });
    }

    #[test]
    fn any_single_bit_flip_is_detected() {
        let record = Record { group: 9, body: RecordBody::Entries(vec![Entry::new(1, 1, 0, &b"hello"[..])]) };
        let mut buf = vec![0; record.framed_len()];
        record.encode_into(1, 1, &mut buf);
        let payload_end = HEADER_BYTES + record.body_len();
        for bit in 0..payload_end * 8 {
            let mut damaged = buf.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(!matches!(decode_at(&damaged, 0), Frame::Record { .. }), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn zeros_end_and_garbage_is_bad() {
        assert!(matches!(decode_at(&[0u8; 64], 0), Frame::End));
        assert!(matches!(decode_at(&[0u8; 64], 64), Frame::End));
        assert!(matches!(decode_at(&[0xFFu8; 64], 0), Frame::Bad(_)));
        assert!(matches!(decode_at(&[1u8; 10], 0), Frame::Bad(_)));
    }

    #[test]
    fn nonconsecutive_entries_are_rejected() {
        let mut body = Vec::new();
        body.put_u32_le(2);
        for index in [3u64, 5] {
            body.put_u64_le(index);
            body.put_u64_le(1);
            body.put_u8(0);
            body.put_u32_le(0);
        }
        assert!(decode_body(RecordKind::Entries, Bytes::from(body)).is_err());
    }
}
