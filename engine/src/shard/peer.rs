//! What a shard says to the same shard of another node (`conclave.peer.v1`): turning
//! refusals into [`ShardError`]s and back, member roles, and the per-shard bookkeeping of
//! requests forwarded to a group's leader and waiting for its answer.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use conclave_proto::conclave::peer::v1::{peer_message::Body, PeerMessage, Refusal, RefusalKind};
use conclave_proto::conclave::raft::v1::MemberRole;

use crate::raft::Role;

use super::clock::micros;
use super::error::ShardError;
use super::replica::{Committed, Reply};

/// The refusal that tells a peer why its request was not done.
pub fn refusal(error: &ShardError) -> Refusal {
    let (kind, leader) = match error {
        ShardError::NotLeader { leader, .. } => (RefusalKind::NotLeader, *leader),
        ShardError::LeadershipLost => (RefusalKind::LeadershipLost, 0),
        ShardError::Overloaded(_) => (RefusalKind::Overloaded, 0),
        ShardError::Unavailable(_) | ShardError::Storage(_) => (RefusalKind::Unavailable, 0),
        ShardError::UnknownGroup(_) => (RefusalKind::UnknownGroup, 0),
        ShardError::ShuttingDown => (RefusalKind::ShuttingDown, 0),
        ShardError::Invalid(_) => (RefusalKind::Invalid, 0),
    };
    Refusal { kind: kind as i32, leader, message: error.to_string() }
}

/// The error a peer's refusal stands for, as seen by this node's caller.
pub fn refusal_error(group: u32, refusal: &Refusal) -> ShardError {
    let why = || format!("the leader refused: {}", refusal.message);
    match RefusalKind::try_from(refusal.kind) {
        Ok(RefusalKind::NotLeader) => ShardError::NotLeader { group, leader: refusal.leader },
        Ok(RefusalKind::LeadershipLost) => ShardError::LeadershipLost,
        Ok(RefusalKind::Overloaded) => ShardError::Overloaded(why()),
        // The leader shutting down or not hosting the group means no leader is known here.
        Ok(RefusalKind::ShuttingDown | RefusalKind::UnknownGroup) => ShardError::NotLeader { group, leader: 0 },
        Ok(RefusalKind::Invalid) => ShardError::Invalid(refusal.message.clone()),
        Ok(RefusalKind::Unavailable | RefusalKind::Unspecified) | Err(_) => ShardError::Unavailable(why()),
    }
}

pub fn role_to_proto(role: Role) -> MemberRole {
    match role {
        Role::Voter => MemberRole::Voter,
        Role::Observer => MemberRole::Observer,
        Role::Witness => MemberRole::Witness,
    }
}

pub fn role_from_proto(role: i32) -> Option<Role> {
    match MemberRole::try_from(role) {
        Ok(MemberRole::Voter) => Some(Role::Voter),
        Ok(MemberRole::Observer) => Some(Role::Observer),
        Ok(MemberRole::Witness) => Some(Role::Witness),
        Err(_) => None,
    }
}

/// A request forwarded to a group's leader, waiting for its answer.
struct Waiting<R> {
    group: u32,
    /// The node asked.
    node: u64,
    /// When it was forwarded (monotonic clock, µs).
    since: u64,
    reply: R,
}

/// The requests this shard forwarded to leaders on other nodes, by request id, and the
/// messages queued for peers until the round's Raft messages have left.
pub struct Forwarded {
    next_request: u64,
    proposals: BTreeMap<u64, Waiting<Reply<Result<Committed, ShardError>>>>,
    memberships: BTreeMap<u64, Waiting<Reply<Result<u64, ShardError>>>>,
    /// Messages for peers, sent after the Raft messages of the same round (so a proposal's
    /// outcome follows its entry's append on the wire). Shared with reply callbacks that
    /// answer peers later.
    outgoing: Outgoing,
}

/// Messages queued for peers: (node id, message).
pub type Outgoing = Rc<RefCell<Vec<(u64, PeerMessage)>>>;

impl Default for Forwarded {
    fn default() -> Self {
        Forwarded { next_request: 1, proposals: BTreeMap::new(), memberships: BTreeMap::new(), outgoing: Outgoing::default() }
    }
}

impl Forwarded {
    /// Queues `body` for node `to`.
    pub fn send(&self, to: u64, body: Body) {
        self.outgoing.borrow_mut().push((to, PeerMessage { body: Some(body) }));
    }

    /// The queue itself, for callbacks that answer a peer later.
    pub fn outgoing(&self) -> Outgoing {
        Rc::clone(&self.outgoing)
    }

    pub fn take_outgoing(&self) -> Vec<(u64, PeerMessage)> {
        std::mem::take(&mut *self.outgoing.borrow_mut())
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    /// Requests ever forwarded (a counter, for spreading attempts).
    pub fn pending(&self) -> u64 {
        self.next_request
    }

    /// Registers a forwarded proposal; returns its request id.
    pub fn add_proposal(&mut self, group: u32, node: u64, now: u64, reply: Reply<Result<Committed, ShardError>>) -> u64 {
        let id = self.next_id();
        self.proposals.insert(id, Waiting { group, node, since: now, reply });
        id
    }

    /// Takes a forwarded proposal's waiter back when its outcome arrives.
    pub fn take_proposal(&mut self, group: u32, request_id: u64) -> Option<Reply<Result<Committed, ShardError>>> {
        match self.proposals.get(&request_id) {
            Some(w) if w.group == group => self.proposals.remove(&request_id).map(|w| w.reply),
            _ => None,
        }
    }

    /// Registers a forwarded membership change; returns its request id.
    pub fn add_membership(&mut self, group: u32, node: u64, now: u64, reply: Reply<Result<u64, ShardError>>) -> u64 {
        let id = self.next_id();
        self.memberships.insert(id, Waiting { group, node, since: now, reply });
        id
    }

    pub fn take_membership(&mut self, group: u32, request_id: u64) -> Option<Reply<Result<u64, ShardError>>> {
        match self.memberships.get(&request_id) {
            Some(w) if w.group == group => self.memberships.remove(&request_id).map(|w| w.reply),
            _ => None,
        }
    }

    /// Fails every request whose answer has not come within its bound by `now` (monotonic
    /// clock, µs): the request or its answer was lost (a connection broke), so the outcome
    /// is unknown.
    pub fn expire(&mut self, now: u64, proposal_timeout: Duration, membership_timeout: Duration) {
        for reply in take_older(&mut self.proposals, now, proposal_timeout) {
            reply(Err(ShardError::LeadershipLost));
        }
        for reply in take_older(&mut self.memberships, now, membership_timeout) {
            reply(Err(ShardError::Unavailable("the group's leader did not confirm the membership change in time".into())));
        }
    }

    /// When (monotonic clock, µs) [`Forwarded::expire`] with these bounds next fails a
    /// request, if any waits.
    pub fn next_expiry(&self, proposal_timeout: Duration, membership_timeout: Duration) -> Option<u64> {
        // Request ids grow with time: the first waiter of each kind is its oldest.
        let proposal = self.proposals.values().next().map(|w| w.since.saturating_add(micros(proposal_timeout)));
        let membership = self.memberships.values().next().map(|w| w.since.saturating_add(micros(membership_timeout)));
        proposal.into_iter().chain(membership).min()
    }

    /// Fails everything waiting on node `node`, whose connection failed.
    pub fn fail_node(&mut self, node: u64) {
        for reply in take_where(&mut self.proposals, |w| w.node == node) {
            reply(Err(ShardError::LeadershipLost));
        }
        for reply in take_where(&mut self.memberships, |w| w.node == node) {
            reply(Err(ShardError::LeadershipLost));
        }
    }

    /// Fails everything waiting (the shard stops).
    pub fn fail_all(&mut self, error: ShardError) {
        for (_, w) in std::mem::take(&mut self.proposals) {
            (w.reply)(Err(error.clone()));
        }
        for (_, w) in std::mem::take(&mut self.memberships) {
            (w.reply)(Err(error.clone()));
        }
    }
}

/// Removes the waiters `pick` chooses and returns their replies.
fn take_where<R>(waiting: &mut BTreeMap<u64, Waiting<R>>, pick: impl Fn(&Waiting<R>) -> bool) -> Vec<R> {
    let ids: Vec<u64> = waiting.iter().filter(|(_, w)| pick(w)).map(|(id, _)| *id).collect();
    ids.into_iter().filter_map(|id| waiting.remove(&id)).map(|w| w.reply).collect()
}

/// Removes the waiters registered `timeout` or more before `now` and returns their replies.
/// Request ids grow with time, so they are the first ones.
fn take_older<R>(waiting: &mut BTreeMap<u64, Waiting<R>>, now: u64, timeout: Duration) -> Vec<R> {
    let mut replies = Vec::new();
    while let Some(entry) = waiting.first_entry() {
        if now.saturating_sub(entry.get().since) < micros(timeout) {
            break;
        }
        replies.push(entry.remove().reply);
    }
    replies
}
