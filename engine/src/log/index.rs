//! The in-memory index of the log: per group, where each live entry's record is, its term,
//! the latest hard state and compaction point, plus a cache of the recent tail.
//!
//! Entries of a group are kept as a dense run `compacted + 1 ..= last_index`. The tail cache
//! holds payloads of recent entries (always those not yet durable, since the disk cannot
//! serve them) within a byte budget, evicting oldest-written first.

use std::collections::{BTreeMap, VecDeque};

use super::record::{Entry, HardState};
use super::{GroupId, LogError};

/// Where a record is: segment (first sequence number), byte offset, framed length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordLoc {
    pub segment: u64,
    pub offset: u32,
    pub len: u32,
}

/// What the index knows of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryMeta {
    pub term: u64,
    pub payload_len: u32,
    pub loc: RecordLoc,
}

/// Bytes a cached entry is charged beyond its payload.
const CACHE_OVERHEAD: usize = 48;

/// Everything the index holds for one group.
#[derive(Clone, Debug, Default)]
pub struct GroupIndex {
    /// Entries up to here are covered by a snapshot (0: none).
    pub compacted: u64,
    /// Term of the entry at `compacted` (0 when nothing is compacted).
    pub compacted_term: u64,
    /// `entries[k]` describes index `compacted + 1 + k`.
    pub entries: VecDeque<EntryMeta>,
    pub hard_state: Option<(HardState, RecordLoc)>,
    /// The latest compaction marker's record.
    pub compaction_loc: Option<RecordLoc>,
    /// A suffix of the entries with payloads, and the sequence number of the record that
    /// wrote each.
    cache: VecDeque<(Entry, u64)>,
}

impl GroupIndex {
    /// A group as recovery rebuilt it (nothing cached yet).
    pub fn restored(
        compacted: u64,
        compacted_term: u64,
        entries: VecDeque<EntryMeta>,
        hard_state: Option<(HardState, RecordLoc)>,
        compaction_loc: Option<RecordLoc>,
    ) -> Self {
        GroupIndex { compacted, compacted_term, entries, hard_state, compaction_loc, cache: VecDeque::new() }
    }

    pub fn first_index(&self) -> u64 {
        self.compacted + 1
    }

    pub fn last_index(&self) -> u64 {
        self.compacted + self.entries.len() as u64
    }

    /// The term of `index`, if it is the compaction point or a live entry.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.compacted {
            return Some(self.compacted_term);
        }
        self.meta(index).map(|m| m.term)
    }

    pub fn meta(&self, index: u64) -> Option<&EntryMeta> {
        let offset = index.checked_sub(self.first_index())?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// The cached entry at `index`, if the cache has it.
    pub fn cached(&self, index: u64) -> Option<&Entry> {
        let first = self.cache.front()?.0.index;
        let slot = usize::try_from(index.checked_sub(first)?).ok()?;
        self.cache.get(slot).map(|(entry, _)| entry)
    }

    /// Checks that `entries` may be appended: consecutive, starting inside
    /// `compacted + 1 ..= last + 1`.
    pub fn check_append(&self, group: GroupId, entries: &[Entry]) -> Result<(), LogError> {
        let Some(first) = entries.first() else {
            return Err(LogError::Invalid(format!("empty append for group {group}")));
        };
        if first.index <= self.compacted || first.index > self.last_index() + 1 {
            return Err(LogError::Invalid(format!(
                "group {group}: append at {} outside {}..={}",
                first.index,
                self.compacted + 1,
                self.last_index() + 1
            )));
        }
        if entries.windows(2).any(|w| w[0].index.checked_add(1) != Some(w[1].index)) {
            return Err(LogError::Invalid(format!("group {group}: appended entries not consecutive")));
        }
        Ok(())
    }

    /// Drops entries at `index` and above. Returns payload bytes released from the cache.
    fn truncate_from(&mut self, index: u64) -> usize {
        let keep = index.saturating_sub(self.first_index()) as usize;
        self.entries.truncate(keep);
        let mut released = 0;
        while self.cache.back().is_some_and(|(e, _)| e.index >= index) {
            let (entry, _) = self.cache.pop_back().expect("checked non-empty");
            released += entry.payload.len() + CACHE_OVERHEAD;
        }
        released
    }

    /// Drops entries up to `index` (a snapshot covers them). Returns cache bytes released.
    fn compact_to(&mut self, index: u64, term: u64) -> usize {
        let mut released = 0;
        if index >= self.last_index() {
            self.entries.clear();
            released += self.truncate_from(0);
        } else {
            let drop = index.saturating_sub(self.compacted) as usize;
            self.entries.drain(..drop);
            while self.cache.front().is_some_and(|(e, _)| e.index <= index) {
                let (entry, _) = self.cache.pop_front().expect("checked non-empty");
                released += entry.payload.len() + CACHE_OVERHEAD;
            }
        }
        if index >= self.compacted {
            self.compacted = index;
            self.compacted_term = term;
        }
        released
    }
}

/// The index of all groups of a log, with the shared cache budget.
#[derive(Debug, Default)]
pub struct Index {
    pub groups: BTreeMap<GroupId, GroupIndex>,
    /// Cache insertions in write order: (sequence number, group, last index cached).
    fifo: VecDeque<(u64, GroupId, u64)>,
    cached_bytes: usize,
}

impl Index {
    pub fn group(&self, group: GroupId) -> Option<&GroupIndex> {
        self.groups.get(&group)
    }

    /// Payload bytes currently cached.
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }

    /// Records an append (already validated with [`GroupIndex::check_append`]); `cache`
    /// says whether to keep the payloads in the tail cache.
    pub fn append(&mut self, group: GroupId, entries: &[Entry], loc: RecordLoc, seq: u64, cache: bool) {
        let state = self.groups.entry(group).or_default();
        let first = entries.first().expect("append validated non-empty").index;
        self.cached_bytes -= state.truncate_from(first);
        debug_assert_eq!(state.last_index() + 1, first, "append validated contiguous");
        for entry in entries {
            let payload_len = u32::try_from(entry.payload.len()).expect("payload bounded by segment size");
            state.entries.push_back(EntryMeta { term: entry.term, payload_len, loc });
        }
        if cache {
            let contiguous = state.cache.back().is_none_or(|(e, _)| e.index + 1 == first);
            if !contiguous {
                self.cached_bytes -= state.truncate_from(0);
            }
            for entry in entries {
                self.cached_bytes += entry.payload.len() + CACHE_OVERHEAD;
                state.cache.push_back((entry.clone(), seq));
            }
            let last = entries.last().expect("non-empty").index;
            self.fifo.push_back((seq, group, last));
        }
    }

    /// Points the entries of a relocated record at their new place (only those whose term
    /// still matches: the entry may have been replaced since it was read).
    pub fn relocate(&mut self, group: GroupId, entries: &[Entry], loc: RecordLoc) {
        let Some(state) = self.groups.get_mut(&group) else { return };
        for entry in entries {
            let first = state.first_index();
            let Some(slot) = entry.index.checked_sub(first) else { continue };
            if let Some(meta) = state.entries.get_mut(slot as usize) {
                if meta.term == entry.term {
                    meta.loc = loc;
                }
            }
        }
    }

    pub fn set_hard_state(&mut self, group: GroupId, hard_state: HardState, loc: RecordLoc) {
        self.groups.entry(group).or_default().hard_state = Some((hard_state, loc));
    }

    pub fn compact(&mut self, group: GroupId, index: u64, term: u64, loc: RecordLoc) {
        let state = self.groups.entry(group).or_default();
        self.cached_bytes -= state.compact_to(index, term);
        state.compaction_loc = Some(loc);
    }

    pub fn remove(&mut self, group: GroupId) {
        if let Some(mut state) = self.groups.remove(&group) {
            self.cached_bytes -= state.truncate_from(0);
        }
    }

    /// Evicts cached entries written at or before `durable_seq`, oldest first, until the
    /// cache fits `budget`.
    pub fn evict(&mut self, durable_seq: u64, budget: usize) {
        while self.cached_bytes > budget {
            let Some(&(seq, group, upto)) = self.fifo.front() else { break };
            if seq > durable_seq {
                break;
            }
            self.fifo.pop_front();
            let Some(state) = self.groups.get_mut(&group) else { continue };
            while state.cache.front().is_some_and(|(e, s)| e.index <= upto && *s <= durable_seq) {
                let (entry, _) = state.cache.pop_front().expect("checked non-empty");
                self.cached_bytes -= entry.payload.len() + CACHE_OVERHEAD;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOC: RecordLoc = RecordLoc { segment: 1, offset: 0, len: 64 };

    fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        range.map(|i| Entry::new(i, term, 0, vec![0u8; 10])).collect()
    }

    #[test]
    fn append_truncates_and_compaction_drops() {
        let mut index = Index::default();
        index.append(1, &entries(1..=10, 1), LOC, 1, true);
        let group = index.group(1).unwrap();
        assert!(group.check_append(1, &entries(12..=12, 1)).is_err());
        assert!(group.check_append(1, &entries(5..=6, 2)).is_ok());
        index.append(1, &entries(5..=6, 2), LOC, 2, true);
        let group = index.group(1).unwrap();
        assert_eq!((group.last_index(), group.term(4), group.term(6)), (6, Some(1), Some(2)));
        assert_eq!(group.cached(6).map(|e| e.term), Some(2));
        assert_eq!(group.cached(7), None);
        index.compact(1, 4, 1, LOC);
        let group = index.group(1).unwrap();
        assert_eq!((group.first_index(), group.term(4), group.term(3)), (5, Some(1), None));
        assert_eq!(group.cached(4), None);
        assert_eq!(index.cached_bytes(), 2 * (10 + CACHE_OVERHEAD));
    }

    #[test]
    fn eviction_spares_entries_not_yet_durable() {
        let mut index = Index::default();
        index.append(1, &entries(1..=4, 1), LOC, 1, true);
        index.append(2, &entries(1..=4, 1), LOC, 2, true);
        index.evict(1, 0);
        assert_eq!(index.group(1).unwrap().cached(1), None);
        assert!(index.group(2).unwrap().cached(1).is_some());
        index.evict(2, 0);
        assert_eq!(index.cached_bytes(), 0);
    }
}
