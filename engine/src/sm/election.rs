//! One leader election (api.md §4): a term number, and the candidates in priority order,
//! each bound to the session that entered it. The leader is always the first candidate:
//! every operation keeps "there is a leader exactly when there is a candidate". The term
//! number rises by exactly one each time a different candidate comes first, i.e. exactly
//! when a new leader takes office, so it is a fencing token that never falls.
//!
//! Also owns [`ElectionTerm`], the visible state handed to clients, and its conversions to
//! both protobuf `Term` shapes.

use std::sync::Arc;

use conclave_proto::atomix::multiraft::election::v1::Term as MultiraftTerm;
use conclave_proto::atomix::runtime::election::v1::Term as RuntimeTerm;

use super::session::SessionId;

/// An election operation on one candidate (api.md §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ElectionOp {
    /// If there is no leader the candidate becomes leader; otherwise a new candidate joins
    /// the end; a present candidate changes nothing.
    Enter,
    /// Removes the candidate if it is bound to the calling session; a leader is succeeded
    /// by the next candidate.
    Withdraw,
    /// An existing candidate becomes leader now; the old leader becomes next in line.
    Anoint,
    /// The candidate moves up one place; from second place it becomes leader.
    Promote,
    /// The candidate moves down one place; a leader with a successor hands over.
    Demote,
    /// Removes the candidate whatever its session, as Withdraw does.
    Evict,
}

impl ElectionOp {
    /// Every operation, in api.md's order.
    pub const ALL: [ElectionOp; 6] =
        [ElectionOp::Enter, ElectionOp::Withdraw, ElectionOp::Anoint, ElectionOp::Promote, ElectionOp::Demote, ElectionOp::Evict];
}

/// A candidate of an election and the session it is bound to. Names are shared
/// (`Arc<str>`), so handing out the state copies no strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub name: Arc<str>,
    pub session_id: SessionId,
}

/// The visible state of an election: its term number and every candidate, leader first.
/// Cloning it is cheap (the candidate list is shared), so one value serves the proposer's
/// output, the session's cached output and the watch notification.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElectionTerm {
    /// The term number: 0 before the first leader, +1 at each new leader.
    pub term: u64,
    /// Every candidate in priority order; the first one is the leader.
    pub candidates: Arc<[Arc<str>]>,
}

impl ElectionTerm {
    /// The leader, if any (the first candidate).
    pub fn leader(&self) -> Option<&str> {
        self.candidates.first().map(|name| &**name)
    }

    /// The candidates waiting behind the leader.
    pub fn waiting(&self) -> &[Arc<str>] {
        self.candidates.get(1..).unwrap_or(&[])
    }

    /// The client API's `Term`: `candidates` include the leader first; no leader is `""`.
    pub fn to_runtime_term(&self) -> RuntimeTerm {
        RuntimeTerm {
            term: self.term,
            leader: self.leader().unwrap_or_default().to_owned(),
            candidates: self.candidates.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// The driver API's `Term`: `candidates` are the waiting ones only (leader excluded)
    /// and `index` is the term number; no leader is `""`.
    pub fn to_multiraft_term(&self) -> MultiraftTerm {
        MultiraftTerm {
            leader: self.leader().unwrap_or_default().to_owned(),
            candidates: self.waiting().iter().map(|c| c.to_string()).collect(),
            index: self.term,
        }
    }
}

/// The state of one election.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Election {
    term: u64,
    candidates: Vec<Candidate>,
}

impl Election {
    /// Rebuilds an election from its parts (snapshot restore). The caller has checked that
    /// candidate names are unique.
    pub(crate) fn from_parts(term: u64, candidates: Vec<Candidate>) -> Election {
        Election { term, candidates }
    }

    /// The current term number.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The candidates in priority order, leader first.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// The leader, if any.
    pub fn leader(&self) -> Option<&Candidate> {
        self.candidates.first()
    }

    /// The visible state.
    pub fn to_term(&self) -> ElectionTerm {
        ElectionTerm { term: self.term, candidates: self.candidates.iter().map(|c| c.name.clone()).collect() }
    }

    /// How many candidates the election holds.
    pub(crate) fn len(&self) -> usize {
        self.candidates.len()
    }

    /// Whether `name` is a candidate.
    pub(crate) fn has_candidate(&self, name: &str) -> bool {
        self.position(name).is_some()
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.candidates.iter().position(|c| &*c.name == name)
    }

    /// Applies `op` on `candidate` for the calling `session_id`. Returns whether the state
    /// changed. An unknown candidate changes nothing.
    pub(crate) fn apply(&mut self, op: ElectionOp, candidate: &str, session_id: SessionId) -> bool {
        let before = self.leader_name();
        let changed = match (op, self.position(candidate)) {
            (ElectionOp::Enter, None) => {
                self.candidates.push(Candidate { name: Arc::from(candidate), session_id });
                true
            }
            (ElectionOp::Enter, Some(_)) => false,
            (ElectionOp::Withdraw, Some(at)) if self.candidates[at].session_id == session_id => {
                self.candidates.remove(at);
                true
            }
            (ElectionOp::Withdraw, _) => false,
            (ElectionOp::Evict, Some(at)) => {
                self.candidates.remove(at);
                true
            }
            (ElectionOp::Anoint, Some(at)) if at > 0 => {
                let anointed = self.candidates.remove(at);
                self.candidates.insert(0, anointed);
                true
            }
            (ElectionOp::Promote, Some(at)) if at > 0 => {
                self.candidates.swap(at - 1, at);
                true
            }
            (ElectionOp::Demote, Some(at)) if at + 1 < self.candidates.len() => {
                self.candidates.swap(at, at + 1);
                true
            }
            (ElectionOp::Evict | ElectionOp::Anoint | ElectionOp::Promote | ElectionOp::Demote, _) => false,
        };
        self.advance_term_if_new_leader(before);
        changed
    }

    /// Removes every candidate bound to a session for which `ended` is true, in one state
    /// change. Returns whether any candidate was removed.
    pub(crate) fn remove_sessions(&mut self, ended: impl Fn(SessionId) -> bool) -> bool {
        let before_len = self.candidates.len();
        let before = self.leader_name();
        self.candidates.retain(|c| !ended(c.session_id));
        self.advance_term_if_new_leader(before);
        self.candidates.len() != before_len
    }

    fn leader_name(&self) -> Option<Arc<str>> {
        self.candidates.first().map(|c| c.name.clone())
    }

    fn advance_term_if_new_leader(&mut self, leader_before: Option<Arc<str>>) {
        let now = self.candidates.first().map(|c| &*c.name);
        if now.is_some() && now != leader_before.as_deref() {
            self.term += 1;
        }
        debug_assert!(
            {
                let mut names: Vec<&str> = self.candidates.iter().map(|c| &*c.name).collect();
                names.sort_unstable();
                names.windows(2).all(|w| w[0] != w[1])
            },
            "a candidate appears twice"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(e: &Election) -> Vec<&str> {
        e.candidates().iter().map(|c| &*c.name).collect()
    }

    #[test]
    fn runtime_term_lists_the_leader_first_and_multiraft_term_excludes_it() {
        let term = ElectionTerm { term: 3, candidates: ["a", "b", "c"].map(Arc::from).into() };
        let runtime = term.to_runtime_term();
        assert_eq!((runtime.term, runtime.leader.as_str()), (3, "a"));
        assert_eq!(runtime.candidates, ["a", "b", "c"]);
        let multiraft = term.to_multiraft_term();
        assert_eq!((multiraft.index, multiraft.leader.as_str()), (3, "a"));
        assert_eq!(multiraft.candidates, ["b", "c"]);
        let empty = ElectionTerm { term: 4, candidates: Arc::from([]) }.to_multiraft_term();
        assert_eq!((empty.index, empty.leader.as_str(), empty.candidates.len()), (4, "", 0));
    }

    #[test]
    fn enter_then_withdraw_leader_hands_over_and_term_counts_leaders() {
        let mut e = Election::default();
        assert!(e.apply(ElectionOp::Enter, "a", 1));
        assert!(e.apply(ElectionOp::Enter, "b", 2));
        assert!(!e.apply(ElectionOp::Enter, "b", 1), "present candidate: no change");
        assert_eq!((e.term(), names(&e)), (1, vec!["a", "b"]));
        assert!(!e.apply(ElectionOp::Withdraw, "a", 2), "withdraw by another session");
        assert!(e.apply(ElectionOp::Withdraw, "a", 1));
        assert_eq!((e.term(), names(&e)), (2, vec!["b"]));
    }
}
