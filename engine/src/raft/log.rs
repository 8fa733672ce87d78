//! The in-memory Raft log of one replica: every entry since the last compaction point, plus
//! the commit, apply and persistence watermarks. Durability is the caller's job; this log only
//! records how far the caller has confirmed it.

use conclave_proto::conclave::raft::v1::Entry;

use super::error::RaftError;

/// Payload bytes of an entry as counted by flow control.
pub(crate) fn entry_bytes(entry: &Entry) -> usize {
    entry.data.len()
}

/// The uncompacted suffix of the log and its watermarks.
#[derive(Debug)]
pub struct RaftLog {
    /// Index of the last compacted entry (covered by a snapshot or the initial empty state).
    compacted_index: u64,
    /// Term of the entry at `compacted_index`.
    compacted_term: u64,
    /// Entries `compacted_index + 1 ..= last_index`, contiguous.
    entries: Vec<Entry>,
    /// Highest index known committed.
    committed: u64,
    /// Highest index handed to the caller for applying.
    applied: u64,
    /// Highest index the caller confirmed durable (with the log's current contents).
    persisted: u64,
    /// First index not yet handed to the caller for persisting.
    unstable_from: u64,
}

impl RaftLog {
    /// A log whose entries `..= compacted_index` are compacted, followed by `entries`, all of
    /// which are already durable (they were recovered from disk).
    pub fn recovered(compacted_index: u64, compacted_term: u64, entries: Vec<Entry>, committed: u64) -> Result<Self, RaftError> {
        for (offset, entry) in entries.iter().enumerate() {
            let expected = compacted_index + 1 + offset as u64;
            if entry.index != expected {
                return Err(RaftError::CorruptState(format!("recovered entry has index {} where {expected} was expected", entry.index)));
            }
            let previous_term = if offset == 0 { compacted_term } else { entries[offset - 1].term };
            if entry.term < previous_term {
                return Err(RaftError::CorruptState(format!(
                    "recovered entry {} has term {} below its predecessor's {previous_term}",
                    entry.index, entry.term
                )));
            }
        }
        let last = compacted_index + entries.len() as u64;
        Ok(RaftLog {
            compacted_index,
            compacted_term,
            entries,
            committed: committed.clamp(compacted_index, last),
            applied: compacted_index,
            persisted: last,
            unstable_from: last + 1,
        })
    }

    /// A log that starts right after an installed snapshot covering `..= index`.
    pub fn restored(index: u64, term: u64) -> Self {
        RaftLog {
            compacted_index: index,
            compacted_term: term,
            entries: Vec::new(),
            committed: index,
            applied: index,
            persisted: index,
            unstable_from: index + 1,
        }
    }

    pub fn last_index(&self) -> u64 {
        self.compacted_index + self.entries.len() as u64
    }

    pub fn last_term(&self) -> u64 {
        self.entries.last().map_or(self.compacted_term, |e| e.term)
    }

    pub fn committed(&self) -> u64 {
        self.committed
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn persisted(&self) -> u64 {
        self.persisted
    }

    pub fn compacted_index(&self) -> u64 {
        self.compacted_index
    }

    /// Term of the entry at `index`, or `None` if it is compacted away or beyond the end.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.compacted_index {
            return Some(self.compacted_term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub fn entry(&self, index: u64) -> Option<&Entry> {
        if index <= self.compacted_index {
            return None;
        }
        self.entries.get((index - self.compacted_index - 1) as usize)
    }

    /// True if a log ending at (`last_index`, `last_term`) is at least as up to date as ours.
    pub fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Entries `from ..` limited by count and payload bytes (at least one if any exists).
    pub fn entries_from(&self, from: u64, max_count: usize, max_bytes: usize) -> Vec<Entry> {
        debug_assert!(from > self.compacted_index);
        let start = (from - self.compacted_index - 1) as usize;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for entry in self.entries.iter().skip(start).take(max_count) {
            bytes += entry_bytes(entry);
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        out
    }

    /// Appends entries the leader created; they must continue the log.
    pub fn append_new(&mut self, entries: impl IntoIterator<Item = Entry>) {
        for entry in entries {
            debug_assert_eq!(entry.index, self.last_index() + 1);
            debug_assert!(entry.term >= self.last_term());
            self.entries.push(entry);
        }
    }

    /// Follower side of AppendEntries: if our entry at `prev_index` has `prev_term`, merge
    /// `entries` (truncating a conflicting suffix) and return the index of the last entry
    /// now known to match the leader. `Ok(None)` means the previous entry does not match.
    pub fn try_append(&mut self, prev_index: u64, prev_term: u64, entries: Vec<Entry>) -> Result<Option<u64>, RaftError> {
        for (offset, entry) in entries.iter().enumerate() {
            if entry.index != prev_index + 1 + offset as u64 {
                return Err(RaftError::InvalidMessage(format!("append entries are not contiguous after index {prev_index}")));
            }
        }
        if self.term(prev_index) != Some(prev_term) {
            return Ok(None);
        }
        let last_new = prev_index + entries.len() as u64;
        for entry in entries {
            if entry.index <= self.compacted_index {
                continue;
            }
            match self.term(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    if entry.index <= self.committed {
                        return Err(RaftError::InvalidMessage(format!(
                            "append would overwrite committed entry {} (commit {})",
                            entry.index, self.committed
                        )));
                    }
                    self.truncate_from(entry.index);
                    self.entries.push(entry);
                }
                None => self.entries.push(entry),
            }
        }
        Ok(Some(last_new))
    }

    fn truncate_from(&mut self, index: u64) {
        debug_assert!(index > self.committed);
        self.entries.truncate((index - self.compacted_index - 1) as usize);
        self.persisted = self.persisted.min(index - 1);
        self.unstable_from = self.unstable_from.min(index);
    }

    /// Fast back-off helper: the largest index `<= index` whose term is `<= term`, with its term.
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut at = index.min(self.last_index());
        loop {
            match self.term(at) {
                Some(t) if t > term => at -= 1,
                Some(t) => return (at, t),
                None => return (self.compacted_index, self.compacted_term),
            }
        }
    }

    /// Raises the commit index (never lowers it, never past the last entry).
    pub fn commit_to(&mut self, index: u64) -> bool {
        let index = index.min(self.last_index());
        if index > self.committed {
            self.committed = index;
            true
        } else {
            false
        }
    }

    /// The caller confirmed entries up to (`index`, `term`) durable. Stale confirmations (the
    /// entry was since replaced) are ignored. Returns true if the watermark moved.
    pub fn persisted_to(&mut self, index: u64, term: u64) -> bool {
        if index > self.persisted && index < self.unstable_from && self.term(index) == Some(term) {
            self.persisted = index;
            true
        } else {
            false
        }
    }

    /// True if some entries were not yet handed to the caller for persisting.
    pub fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// Entries the caller has not been asked to persist yet; marks them handed out.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        let last = self.last_index();
        if self.unstable_from > last {
            return Vec::new();
        }
        let start = (self.unstable_from - self.compacted_index - 1) as usize;
        self.unstable_from = last + 1;
        self.entries[start..].to_vec()
    }

    /// Committed entries that are durable here and not yet handed out for applying.
    pub fn take_committed(&mut self, max_index: u64) -> Vec<Entry> {
        let upto = self.committed.min(self.persisted).min(max_index);
        if upto <= self.applied {
            return Vec::new();
        }
        let start = (self.applied - self.compacted_index) as usize;
        let end = (upto - self.compacted_index) as usize;
        self.applied = upto;
        self.entries[start..end].to_vec()
    }

    /// Discards entries `..= index` (which must be applied), remembering the term at `index`.
    pub fn compact_to(&mut self, index: u64) {
        if index <= self.compacted_index {
            return;
        }
        debug_assert!(index <= self.applied);
        let Some(term) = self.term(index) else { return };
        self.entries.drain(..(index - self.compacted_index) as usize);
        self.compacted_index = index;
        self.compacted_term = term;
    }

    /// Iterates the uncompacted entries.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }
}
