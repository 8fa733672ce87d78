//! Safety checkers run on every step of the simulation: one leader per term, log matching,
//! leader completeness, and state machine safety (no two replicas apply different entries
//! at one index, and nothing once applied is ever contradicted, across restarts too).

use std::collections::BTreeMap;

use conclave_engine::raft::Entry;

/// A broken safety property, described for a person.
#[derive(Debug)]
pub struct Violation(pub String);

/// A stable 64-bit FNV-1a digest of an entry's kind and payload.
pub fn entry_digest(entry: &Entry) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in entry.kind.to_le_bytes().iter().chain(entry.data.iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// What one group's replicas have done so far, as seen by the checkers.
#[derive(Default)]
pub struct GroupChecker {
    group: u32,
    /// Term to the node that led it.
    leaders: BTreeMap<u64, u64>,
    /// Every (index, term) ever appended anywhere: payload digest (None from witnesses,
    /// which hold no payloads) and the term of the entry before it.
    appended: BTreeMap<(u64, u64), (Option<u64>, u64)>,
    /// The committed log as established by applies: (term, digest) of index `i` at `i - 1`.
    committed: Vec<(u64, u64)>,
    /// Per committed entry (same positions): the highest term any leader had been elected
    /// in when it was first applied. The leader that committed it led a term no later, so
    /// every leader of a later term must hold it; a leader elected late in an earlier term
    /// (its votes delayed, e.g. held while its node stalled) need not.
    committed_by: Vec<u64>,
    /// Some replica saw a configuration other than the initial one.
    pub membership_changed: bool,
}

/// A log as a would-be candidate or voter presents it: its last (index, term), and whether
/// it holds the newest committed entry.
#[derive(Clone, Copy, Debug)]
pub struct LogView {
    pub node: u64,
    pub last_index: u64,
    pub last_term: u64,
    pub holds_committed: bool,
}

impl LogView {
    fn at_least_as_up_to_date_as(&self, other: &LogView) -> bool {
        self.last_term > other.last_term || (self.last_term == other.last_term && self.last_index >= other.last_index)
    }
}

impl GroupChecker {
    pub fn new(group: u32) -> Self {
        GroupChecker { group, ..Default::default() }
    }

    pub fn committed_len(&self) -> u64 {
        self.committed.len() as u64
    }

    /// (index, term) of the newest entry known committed.
    pub fn newest_committed(&self) -> Option<(u64, u64)> {
        self.committed.last().map(|(term, _)| (self.committed.len() as u64, *term))
    }

    /// No replica lacking the newest committed entry could ever win an election: no
    /// candidate log without it is at least as up to date as the durable logs of a quorum
    /// (`quorum` of the voting `voters`). Raft guarantees this at every instant (it is what
    /// makes leader completeness hold in the future); committing an old-term entry by
    /// counting breaks it at once.
    pub fn check_electable(&self, candidates: &[LogView], voters: &[LogView], quorum: usize) -> Result<(), Violation> {
        for candidate in candidates.iter().filter(|c| !c.holds_committed) {
            let granting = voters.iter().filter(|v| candidate.at_least_as_up_to_date_as(v)).count();
            if granting >= quorum {
                return Err(Violation(format!(
                    "group {}: committed entry {:?} could be lost: node {} (last {}@{}) lacks it \
                     yet {granting} voters would elect it: {voters:?}",
                    self.group,
                    self.newest_committed(),
                    candidate.node,
                    candidate.last_index,
                    candidate.last_term
                )));
            }
        }
        Ok(())
    }

    /// Election safety and leader completeness, when `node` becomes leader of `term`.
    pub fn on_leader(&mut self, node: u64, term: u64, compacted: u64, term_at: impl Fn(u64) -> Option<u64>) -> Result<(), Violation> {
        if let Some(other) = self.leaders.insert(term, node) {
            if other != node {
                return Err(Violation(format!("group {}: two leaders in term {term}: nodes {other} and {node}", self.group)));
            }
        }
        for (offset, (committed_term, _)) in self.committed.iter().enumerate() {
            let index = offset as u64 + 1;
            if index <= compacted || self.committed_by[offset] >= term {
                // Covered by a snapshot, which only ever holds applied (committed) entries.
                continue;
            }
            if term_at(index) != Some(*committed_term) {
                return Err(Violation(format!(
                    "group {}: leader completeness: node {node} leads term {term} without committed \
                     entry {index} (term {committed_term}); it has term {:?} there",
                    self.group,
                    term_at(index)
                )));
            }
        }
        Ok(())
    }

    /// Log matching, for entries `node` just placed after an entry of term `prev_term`.
    pub fn on_appended(&mut self, node: u64, entries: &[Entry], mut prev_term: u64, witness: bool) -> Result<(), Violation> {
        for entry in entries {
            let digest = if witness { None } else { Some(entry_digest(entry)) };
            match self.appended.get_mut(&(entry.index, entry.term)) {
                None => {
                    self.appended.insert((entry.index, entry.term), (digest, prev_term));
                }
                Some((known_digest, known_prev)) => {
                    if *known_prev != prev_term {
                        return Err(Violation(format!(
                            "group {}: log matching: node {node} holds entry ({}, {}) after term \
                             {prev_term}, another replica after term {known_prev}",
                            self.group, entry.index, entry.term
                        )));
                    }
                    match (*known_digest, digest) {
                        (Some(a), Some(b)) if a != b => {
                            return Err(Violation(format!(
                                "group {}: log matching: node {node} holds a different entry ({}, {})",
                                self.group, entry.index, entry.term
                            )))
                        }
                        (None, Some(_)) => *known_digest = digest,
                        _ => {}
                    }
                }
            }
            prev_term = entry.term;
        }
        Ok(())
    }

    /// State machine safety, when `node` applies `entry` (entries arrive in index order).
    pub fn on_applied(&mut self, node: u64, entry: &Entry) -> Result<(), Violation> {
        let digest = entry_digest(entry);
        let index = entry.index as usize;
        if index <= self.committed.len() {
            let (term, known) = self.committed[index - 1];
            if (term, known) != (entry.term, digest) {
                return Err(Violation(format!(
                    "group {}: state machine safety: node {node} applied entry {} of term {} but \
                     entry {} of term {term} was applied before (committed entry lost or replaced)",
                    self.group, entry.index, entry.term, entry.index
                )));
            }
        } else if index == self.committed.len() + 1 {
            self.committed.push((entry.term, digest));
            self.committed_by.push(self.leaders.keys().next_back().copied().unwrap_or(0));
        } else {
            return Err(Violation(format!(
                "group {}: node {node} applied entry {} before anyone applied entry {}",
                self.group,
                entry.index,
                self.committed.len() + 1
            )));
        }
        Ok(())
    }
}
