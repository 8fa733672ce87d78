//! Whole-cluster invariants checked after every simulated time unit, over both the live
//! nodes and the simulated disks: acknowledged entries are durable, and no replica lacking
//! a committed entry could be elected.

use conclave_engine::raft::Role;

use super::super::checker::{LogView, Violation};
use super::super::disk::Replica;
use super::Sim;

impl Sim {
    /// Persisted-ack semantics: whatever a leader counts as matching on a replica is durable
    /// there, unless a newer term has since rewritten that replica's log.
    pub(super) fn check_acknowledged_durable(&self) -> Result<(), Violation> {
        for g in 0..self.opts.groups as usize {
            let Some(n) = self.leader_of(g) else { continue };
            let leader = self.nodes[n].replicas[g].raft.as_ref().expect("leader is up");
            for peer in &self.nodes {
                let replica = &peer.replicas[g];
                let Some(matched) = leader.match_index(peer.id) else { continue };
                if matched == 0 || replica.durable_hard_state.term != leader.term() {
                    continue;
                }
                let Ok(durable_term) = replica.durable_term(matched) else { continue };
                let Some(leader_term) = leader.entry_term(matched) else { continue };
                if durable_term != Some(leader_term) {
                    return Err(Violation(format!(
                        "group {g}: leader {} counts entry {matched} as held by node {}, whose disk \
                         has term {durable_term:?} there (acknowledged before persisted)",
                        n + 1,
                        peer.id
                    )));
                }
            }
        }
        Ok(())
    }

    /// See `GroupChecker::check_electable`; skipped for groups whose configuration changed
    /// (quorums would have to be taken per configuration).
    pub(super) fn check_electable(&self) -> Result<(), Violation> {
        for g in 0..self.opts.groups as usize {
            let checker = &self.checkers[g];
            let Some((index, term)) = checker.newest_committed() else { continue };
            if checker.membership_changed {
                continue;
            }
            let mut candidates = Vec::new();
            let mut voters = Vec::new();
            for node in &self.nodes {
                let role = self.initial[g].role(node.id);
                if !role.is_some_and(Role::votes) {
                    continue;
                }
                let replica = &node.replicas[g];
                let durable = durable_view(node.id, replica, index, term);
                voters.push(durable);
                if role != Some(Role::Voter) {
                    continue;
                }
                candidates.push(durable);
                if let Some(raft) = replica.raft.as_ref() {
                    let last_index = raft.last_index();
                    candidates.push(LogView {
                        node: node.id,
                        last_index,
                        last_term: raft.entry_term(last_index).unwrap_or(0),
                        holds_committed: index <= raft.compacted_index() || raft.entry_term(index) == Some(term),
                    });
                }
            }
            let quorum = self.initial[g].voting_count() / 2 + 1;
            checker.check_electable(&candidates, &voters, quorum)?;
        }
        Ok(())
    }
}

/// How replica `node`'s durable log presents itself after a restart.
fn durable_view(node: u64, replica: &Replica, index: u64, term: u64) -> LogView {
    let base = replica.durable_base();
    let last_index = base + replica.durable_entries.len() as u64;
    let last_term = replica.durable_term(last_index).ok().flatten().unwrap_or(0);
    let holds_committed = match replica.durable_term(index) {
        Err(()) => true,
        Ok(found) => found == Some(term),
    };
    LogView { node, last_index, last_term, holds_committed }
}
