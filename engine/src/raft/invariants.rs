//! Invariants of one replica that the simulation checks from outside, checked here too, in
//! every build, before any output leaves the node (TigerBeetle style: cheap, always on).
//!
//! Checked at the start of every [`RaftNode::ready`], so whatever input broke one (a peer's
//! message, a caller's call, a bug) is caught before its effects are sent, persisted or
//! applied:
//! - the watermarks are ordered: compacted ≤ applied ≤ commit ≤ last index, and what is
//!   durable (persisted) is no further than the last index;
//! - the commit index never decreases, the term never decreases, and the log holds no
//!   entry of a term beyond the current one;
//! - a leader's own match (its durable index) and its last index never fall within its
//!   term (a leader only appends), and no peer is recorded as matching beyond its log;
//!   the leader keeps no progress for itself.
//!
//! A violation halts the replica instead of letting it corrupt the group: `ready()` returns
//! nothing from then on (no message, write or apply leaves it), `has_ready()` is false, and
//! every later input that could produce output is refused with [`RaftError::Halted`]. No
//! panic: the rest of the process (other groups) serves on. The caller learns it from
//! [`RaftNode::halted`]; the node stays halted until rebuilt from its durable state.

use super::error::RaftError;
use super::node::RaftNode;
use super::ready::{RaftRole, Ready};

/// What the checks remember between two drains, and the first violation seen.
#[derive(Debug, Default)]
pub(super) struct Invariants {
    term: u64,
    commit: u64,
    /// While leader: (term, last index, own durable index) at the last check.
    leading: Option<(u64, u64, u64)>,
    halted: Option<String>,
}

impl RaftNode {
    /// Why this replica stopped (an invariant broke), or None while it runs.
    pub fn halted(&self) -> Option<&str> {
        self.invariants.halted.as_deref()
    }

    /// Refuses an input once the replica halted.
    pub(super) fn refuse_if_halted(&self) -> Result<(), RaftError> {
        match &self.invariants.halted {
            Some(why) => Err(RaftError::Halted(why.clone())),
            None => Ok(()),
        }
    }

    /// Runs the checks; on the first violation halts the replica. Returns the empty output
    /// a halted replica gives, or None when `ready()` may go on.
    pub(super) fn halted_ready(&mut self) -> Option<Ready> {
        if self.invariants.halted.is_none() {
            if let Err(why) = self.check_invariants() {
                tracing::error!(group = self.cfg.group_id, node = self.cfg.id, "raft invariant violated, the replica stops: {why}");
                self.invariants.halted = Some(why);
            }
        }
        self.invariants.halted.is_some().then(Ready::default)
    }

    fn check_invariants(&mut self) -> Result<(), String> {
        let (compacted, applied, commit, last) =
            (self.log.compacted_index(), self.log.applied(), self.log.committed(), self.log.last_index());
        let persisted = self.log.persisted();
        let seen = &mut self.invariants;
        if !(compacted <= applied && applied <= commit && commit <= last && persisted <= last) {
            return Err(format!(
                "watermarks out of order: compacted {compacted}, applied {applied}, commit {commit}, persisted {persisted}, last {last}"
            ));
        }
        if commit < seen.commit {
            return Err(format!("the commit index fell from {} to {commit}", seen.commit));
        }
        if self.term < seen.term {
            return Err(format!("the term fell from {} to {}", seen.term, self.term));
        }
        if self.log.last_term() > self.term {
            return Err(format!("the log holds term {} beyond the current term {}", self.log.last_term(), self.term));
        }
        seen.commit = commit;
        seen.term = self.term;
        if self.role != RaftRole::Leader {
            seen.leading = None;
            return Ok(());
        }
        if self.progress.contains_key(&self.cfg.id) {
            return Err("the leader tracks progress for itself".into());
        }
        if let Some((peer, progress)) = self.progress.iter().find(|(_, p)| p.match_index > last) {
            return Err(format!("peer {peer} is recorded as matching index {} beyond the leader's last {last}", progress.match_index));
        }
        if let Some((term, last_before, persisted_before)) = seen.leading.filter(|(term, _, _)| *term == self.term) {
            if last < last_before || persisted < persisted_before {
                return Err(format!(
                    "the leader's log fell in term {term}: last index {last_before} -> {last}, own match {persisted_before} -> {persisted}"
                ));
            }
        }
        seen.leading = Some((self.term, last, persisted));
        Ok(())
    }

    /// Tests only: breaks the term invariant as a bug would, to see the replica halt.
    #[cfg(test)]
    pub(crate) fn break_term_for_test(&mut self) {
        self.term = self.term.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::super::config::Config;
    use super::super::log::RaftLog;
    use super::super::membership::Membership;
    use super::*;
    use conclave_proto::conclave::raft::v1::{Message, MessageType};

    /// A single voter that elected itself and committed an entry.
    fn leader() -> RaftNode {
        let mut cfg = Config::new(1, 1);
        cfg.election_ticks = 3;
        cfg.heartbeat_ticks = 1;
        let mut node = RaftNode::new(cfg, Membership::voters([1]).unwrap(), ChaCha8Rng::seed_from_u64(1)).unwrap();
        for _ in 0..20 {
            node.tick();
            settle(&mut node);
            if node.role() == RaftRole::Leader {
                break;
            }
        }
        assert_eq!(node.role(), RaftRole::Leader);
        node.propose([Bytes::from_static(b"x")]).unwrap();
        settle(&mut node);
        assert!(node.commit_index() >= 2);
        node
    }

    fn settle(node: &mut RaftNode) {
        for _ in 0..10 {
            let ready = node.ready();
            if let Some((index, term)) = ready.persist_ack() {
                node.persisted(index, term);
            }
        }
    }

    fn assert_halted(mut node: RaftNode, why: &str) {
        node.tick();
        let ready = node.ready();
        assert!(ready.is_empty(), "a halted replica gives no output: {ready:?}");
        let reason = node.halted().expect("the replica halted").to_owned();
        assert!(reason.contains(why), "{reason}");
        assert!(!node.has_ready());
        assert!(matches!(node.propose([Bytes::from_static(b"y")]), Err(RaftError::Halted(_))));
        assert!(matches!(node.read_index(Bytes::from_static(b"r")), Err(RaftError::Halted(_))));
        let vote = Message { group_id: 1, from: 2, to: 1, term: 100, msg_type: MessageType::Vote as i32, ..Message::default() };
        assert!(matches!(node.step(vote), Err(RaftError::Halted(_))));
        node.tick();
        assert!(node.ready().is_empty(), "still halted");
    }

    #[test]
    fn a_healthy_replica_runs() {
        let mut node = leader();
        node.propose([Bytes::from_static(b"y")]).unwrap();
        settle(&mut node);
        assert!(node.halted().is_none());
    }

    #[test]
    fn a_falling_term_halts_the_replica() {
        let mut node = leader();
        node.break_term_for_test();
        assert_halted(node, "the term fell");
    }

    #[test]
    fn a_falling_commit_index_halts_the_replica() {
        let mut node = leader();
        let commit = node.commit_index();
        // Replace the log by one that ends before the commit index seen: commit falls.
        node.log = RaftLog::restored(commit - 1, node.term);
        assert_halted(node, "the commit index fell");
    }

    #[test]
    fn a_peer_matching_beyond_the_log_halts_the_leader() {
        let mut node = leader();
        let beyond = node.last_index() + 3;
        let mut progress = super::super::progress::Progress::new(beyond + 1);
        progress.match_index = beyond;
        node.progress.insert(2, progress);
        assert_halted(node, "beyond the leader's last");
    }

    #[test]
    fn a_leader_whose_log_shrinks_halts() {
        let mut node = leader();
        let (commit, term) = (node.commit_index(), node.term);
        node.propose([Bytes::from_static(b"y")]).unwrap();
        let _ = node.ready();
        // A bug dropping the leader's uncommitted entries within its term.
        node.log = RaftLog::restored(commit, term);
        assert_halted(node, "the leader's log fell");
    }

    #[test]
    fn a_leader_tracking_itself_halts() {
        let mut node = leader();
        let next = node.last_index() + 1;
        node.progress.insert(1, super::super::progress::Progress::new(next));
        assert_halted(node, "progress for itself");
    }
}
