//! The shard runtime's side of peer traffic: Raft batches stepped into their groups, and
//! requests crossing to a group's leader — proposals forwarded by followers for their
//! clients, and membership changes — with the leader's answers coming back.

use std::cell::Cell;
use std::rc::Rc;

use conclave_proto::conclave::peer::v1::peer_message::Body;
use conclave_proto::conclave::peer::v1::{
    ForwardedProposal, MembershipOutcome, MembershipRequest, PeerMessage, ProposalApplied, ProposalOutcome,
};

use crate::raft::{open_batch, Membership, MessageType, RaftEvent, RaftRole, Role};
use crate::sm::{self, Command};

use super::api::LogStore;
use super::counters::ShardCounters;
use super::error::ShardError;
use super::peer::{refusal, refusal_error, role_from_proto, role_to_proto};
use super::replica::{Committed, Reply};
use super::runtime::ShardRuntime;

/// Leader: a group's membership changes waiting for their entry to commit, each with the
/// entry's index.
pub(super) type MembershipWaiters = Vec<(u64, Reply<Result<u64, ShardError>>)>;

impl<L: LogStore> ShardRuntime<L> {
    /// Handles one message from the same shard of node `from`.
    pub(super) fn step_peer(&mut self, from: u64, message: PeerMessage) {
        match message.body {
            Some(Body::Raft(batch)) => {
                if batch.from != from {
                    tracing::warn!(from, claimed = batch.from, "dropping a Raft batch whose sender is not its connection's node");
                    return;
                }
                let messages = match open_batch(self.node_id(), batch) {
                    Ok(messages) => messages,
                    Err(e) => {
                        tracing::warn!(from, error = %e, "dropping an invalid Raft batch");
                        return;
                    }
                };
                // A leader answers a follower's reads from its lease only while the clock
                // says the lease runs.
                let now_micros = self.now_micros();
                for msg in messages {
                    let group = msg.group_id;
                    if msg.msg_type == MessageType::TimeoutNow as i32 {
                        self.note_handed_by(group, from);
                    } else if msg.msg_type == MessageType::ReadIndex as i32 {
                        self.note_forwarded_request(group, from);
                    }
                    let dropped = match self.replica_mut(group) {
                        Some(replica) => {
                            replica.raft_mut().set_now(now_micros);
                            let drops = replica.raft().incarnation_drops();
                            if let Err(e) = replica.raft_mut().step(msg) {
                                tracing::debug!(group, from, error = %e, "Raft message refused");
                            }
                            replica.raft().incarnation_drops() - drops
                        }
                        None => {
                            tracing::debug!(group, from, "message for a group this shard does not host");
                            0
                        }
                    };
                    if dropped > 0 {
                        tracing::debug!(group, from, "dropped a Raft message of another replica incarnation");
                        ShardCounters::add(&self.counters.incarnation_drops, dropped);
                    }
                }
            }
            Some(Body::Proposal(proposal)) => self.serve_forwarded_proposal(from, proposal),
            Some(Body::ProposalOutcome(outcome)) => self.proposal_outcome(outcome),
            Some(Body::ProposalApplied(applied)) => self.proposal_applied(applied),
            Some(Body::MembershipRequest(request)) => self.serve_membership_request(from, request),
            Some(Body::MembershipOutcome(outcome)) => {
                let group = outcome.group_id;
                if let Some(reply) = self.forwarded.take_membership(group, outcome.request_id) {
                    match outcome.refusal {
                        Some(r) => reply(Err(refusal_error(group, &r))),
                        None => reply(Ok(outcome.index)),
                    }
                }
            }
            None => tracing::warn!(from, "dropping an empty peer message"),
        }
    }

    /// Follower: sends `command` to the group's leader, or answers `NotLeader` when no
    /// other leader is known.
    pub(super) fn forward_proposal(&mut self, group: u32, leader: u64, command: &Command, reply: Reply<Result<Committed, ShardError>>) {
        if leader == 0 || leader == self.node_id() {
            reply(Err(ShardError::NotLeader { group, leader: 0 }));
            return;
        }
        let now = self.now_micros();
        let request_id = self.forwarded.add_proposal(group, leader, now, reply);
        let proposal = ForwardedProposal { group_id: group, request_id, command: sm::command::encode(command) };
        self.forwarded.send(leader, Body::Proposal(proposal));
    }

    /// Leader: proposes a follower's command, tells it where the entry went, and once the
    /// entry is applied here, its result (when it succeeded).
    fn serve_forwarded_proposal(&mut self, from: u64, proposal: ForwardedProposal) {
        let group = proposal.group_id;
        let request_id = proposal.request_id;
        let now_ms = self.now_ms();
        let outgoing = self.forwarded.outgoing();
        // The term the entry was appended in, known once it is (the follower matches it).
        let appended_term = Rc::new(Cell::new(0));
        let term = Rc::clone(&appended_term);
        let applied: Reply<Result<Committed, ShardError>> = Box::new(move |result| {
            let Ok(Committed { index, result: Ok(output) }) = result else { return };
            let output = Some(sm::output::encode(&output));
            let applied = ProposalApplied { group_id: group, request_id, index, term: term.get(), output };
            outgoing.borrow_mut().push((from, PeerMessage { body: Some(Body::ProposalApplied(applied)) }));
        });
        self.note_forwarded_request(group, from);
        let appended = match self.replica_mut(group) {
            None => Err(ShardError::UnknownGroup(group)),
            Some(replica) if !replica.is_leader() => Err(ShardError::NotLeader { group, leader: replica.raft().leader() }),
            Some(replica) => match sm::command::decode(&proposal.command) {
                Err(e) => Err(ShardError::Invalid(format!("a forwarded command does not decode: {e}"))),
                Ok(mut command) => {
                    command.timestamp_ms = now_ms;
                    replica.propose_for_peer(&command, applied)
                }
            },
        };
        let mut outcome = ProposalOutcome { group_id: group, request_id, ..Default::default() };
        match appended {
            Ok((index, term)) => {
                ShardCounters::add(&self.counters.proposals, 1);
                appended_term.set(term);
                outcome.index = index;
                outcome.term = term;
            }
            Err(e) => outcome.refusal = Some(refusal(&e)),
        }
        self.forwarded.send(from, Body::ProposalOutcome(outcome));
    }

    /// Leader: counts a request node `from` forwarded for its clients (a proposal, or reads
    /// asking for the read index), for where the group's workload is (only counted when
    /// leadership follows it).
    fn note_forwarded_request(&mut self, group: u32, from: u64) {
        if !self.cfg.follow_workload {
            return;
        }
        if let Some(slot) = self.groups.get_mut(group) {
            if slot.replica.is_leader() {
                slot.workload.note(from);
            }
        }
    }

    /// Follower: the leader applied a forwarded proposal; answer its client with the
    /// leader's result unless this node answered already.
    fn proposal_applied(&mut self, applied: ProposalApplied) {
        let Some(output) = applied.output.as_ref().and_then(sm::output::decode) else {
            return;
        };
        let answered =
            self.replica_mut(applied.group_id).is_some_and(|replica| replica.answer_from_leader(applied.index, applied.term, output));
        if answered {
            ShardCounters::add(&self.counters.forwarded_answered_by_leader, 1);
        }
    }

    /// Follower: the leader placed (or refused) a forwarded proposal.
    fn proposal_outcome(&mut self, outcome: ProposalOutcome) {
        let group = outcome.group_id;
        let Some(reply) = self.forwarded.take_proposal(group, outcome.request_id) else {
            return;
        };
        if let Some(r) = &outcome.refusal {
            reply(Err(refusal_error(group, r)));
            return;
        }
        match self.replica_mut(group) {
            Some(replica) => replica.track(outcome.index, outcome.term, reply),
            None => reply(Err(ShardError::UnknownGroup(group))),
        }
    }

    /// Sets `node`'s role in `group` (`None` removes it): proposed here when this replica
    /// leads, forwarded to the leader otherwise.
    pub(super) fn change_membership(&mut self, change: MembershipChange, via: u64, reply: Reply<Result<u64, ShardError>>) {
        let MembershipChange { group, node, role, incarnation } = change;
        let me = self.node_id();
        let attempt = self.next_membership_attempt();
        let silent = self.liveness.silent_nodes();
        let Some(replica) = self.replica_mut(group) else {
            reply(Err(ShardError::UnknownGroup(group)));
            return;
        };
        // A node asking for itself adds the replica it started; a forwarded request names one.
        let incarnation = incarnation.unwrap_or(if node == me { replica.raft().incarnation() } else { 0 });
        if !replica.is_leader() {
            let mut leader = replica.raft().leader();
            if leader == 0 || leader == me {
                // No leader known (a joining replica has heard from nobody yet): ask the
                // node named, or another member in turn; a non-leader answers with the
                // leader it knows.
                let others: Vec<u64> = replica.raft().membership().members().map(|(id, _)| id).filter(|id| *id != me).collect();
                leader = if via != 0 && via != me {
                    via
                } else if others.is_empty() {
                    0
                } else {
                    others[attempt as usize % others.len()]
                };
            }
            if leader == 0 {
                reply(Err(ShardError::NotLeader { group, leader: 0 }));
                return;
            }
            let now = self.now_micros();
            let request_id = self.forwarded.add_membership(group, leader, now, reply);
            let request = MembershipRequest {
                group_id: group,
                request_id,
                node_id: node,
                role: role_to_proto(role.unwrap_or(Role::Voter)) as i32,
                remove: role.is_none(),
                incarnation,
            };
            self.forwarded.send(leader, Body::MembershipRequest(request));
            return;
        }
        let current = replica.raft().membership().clone();
        if role.is_some() && current.role(node).is_some() && current.incarnation(node) != incarnation {
            // The node started another replica (it left and joins again, or retries a Join
            // whose change committed late): the member's replica goes first, then the caller
            // retries and the new one is added.
            let old = current.incarnation(node);
            let next = Membership::new(current.members().filter(|(id, _)| *id != node)).map(|m| current.keeping_incarnations_of(m));
            let proposed = next.map_err(|e| ShardError::Invalid(format!("group {group}: {e}")));
            let proposed =
                proposed.and_then(|next| replica.raft_mut().propose_membership_change(next).map_err(|e| ShardError::from_raft(group, e)));
            return match proposed {
                Ok(index) => {
                    let retry: Reply<Result<u64, ShardError>> = Box::new(move |result| {
                        reply(result.and_then(|_| {
                            Err(ShardError::Unavailable(format!(
                                "group {group}: node {node}'s earlier replica (incarnation {old}) was removed first; retry to add incarnation {incarnation}"
                            )))
                        }))
                    });
                    self.membership_waiters(group).push((index, retry));
                }
                Err(e) => reply(Err(e)),
            };
        }
        if current.role(node) == role {
            reply(Ok(0));
            return;
        }
        if role.is_none() && node == me && current.members().all(|(id, _)| id == me) {
            reply(Ok(0));
            return;
        }
        if role.is_none() && node == me {
            // A leader does not remove itself: it hands the group over and the caller
            // retries through the new leader.
            return match replica.best_successor(|id| silent.contains(&id)) {
                Some(to) => {
                    if let Err(e) = replica.raft_mut().transfer_leadership(to) {
                        tracing::debug!(group, to, error = %e, "hand-off before leaving refused");
                    }
                    reply(Err(ShardError::NotLeader { group, leader: 0 }))
                }
                None => reply(Err(ShardError::Invalid(format!("node {me} is the only voter of group {group}; it cannot be removed")))),
            };
        }
        let next = current.members().filter(|(id, _)| *id != node).chain(role.map(|r| (node, r)));
        let next = Membership::new(next).and_then(|next| match role {
            Some(_) if current.role(node).is_none() => next.with_incarnation(node, incarnation),
            _ => Ok(next),
        });
        let next = match next {
            Ok(next) => next,
            Err(e) => return reply(Err(ShardError::Invalid(format!("group {group}: {e}")))),
        };
        match replica.raft_mut().propose_membership_change(next) {
            Ok(index) => self.membership_waiters(group).push((index, reply)),
            Err(e) => reply(Err(ShardError::from_raft(group, e))),
        }
    }

    /// Leader: a membership change asked by another node; answered once it committed.
    fn serve_membership_request(&mut self, from: u64, request: MembershipRequest) {
        let group = request.group_id;
        let request_id = request.request_id;
        let outgoing = self.forwarded.outgoing();
        let reply: Reply<Result<u64, ShardError>> = Box::new(move |result| {
            let mut outcome = MembershipOutcome { group_id: group, request_id, ..Default::default() };
            match result {
                Ok(index) => outcome.index = index,
                Err(e) => outcome.refusal = Some(refusal(&e)),
            }
            let message = PeerMessage { body: Some(Body::MembershipOutcome(outcome)) };
            outgoing.borrow_mut().push((from, message));
        });
        let role = if request.remove {
            None
        } else {
            match role_from_proto(request.role) {
                Some(role) => Some(role),
                None => return reply(Err(ShardError::Invalid(format!("unknown member role {}", request.role)))),
            }
        };
        // Only a leader answers a forwarded request; a follower does not forward it again.
        if !self.replica_mut(group).is_some_and(|r| r.is_leader()) {
            let leader = self.replica_mut(group).map_or(0, |r| r.raft().leader());
            return reply(Err(ShardError::NotLeader { group, leader }));
        }
        let change = MembershipChange { group, node: request.node_id, role, incarnation: Some(request.incarnation) };
        self.change_membership(change, 0, reply);
    }

    /// The membership changes `group` (a hosted group) waits on.
    fn membership_waiters(&mut self, group: u32) -> &mut MembershipWaiters {
        &mut self.groups.get_mut(group).expect("a hosted group").membership_waiters
    }
}

/// A membership change asked of a group: `node`'s new role (`None`: removed), and when it
/// is added, the incarnation of its replica (`None`: this node's own replica when `node`
/// is this node, else 0).
pub(super) struct MembershipChange {
    pub group: u32,
    pub node: u64,
    pub role: Option<Role>,
    pub incarnation: Option<u64>,
}

/// Answers the membership changes a leader is waiting on as the group's Raft events say
/// how they went: committed, or lost with the leadership.
pub(super) fn settle_membership_waiters(list: &mut MembershipWaiters, event: &RaftEvent) {
    match event {
        RaftEvent::MembershipCommitted { index } => {
            let mut kept = Vec::new();
            for (waiting, reply) in list.drain(..) {
                if waiting == *index {
                    reply(Ok(waiting));
                } else if waiting < *index {
                    reply(Err(ShardError::LeadershipLost));
                } else {
                    kept.push((waiting, reply));
                }
            }
            *list = kept;
        }
        RaftEvent::RoleChanged { role, .. } if *role != RaftRole::Leader => {
            for (_, reply) in list.drain(..) {
                reply(Err(ShardError::LeadershipLost));
            }
        }
        _ => {}
    }
}
