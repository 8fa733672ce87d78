//! Replica incarnations: which replica of a node a message comes from and is meant for.
//! A node that leaves a group and joins it again runs a new replica (a new incarnation,
//! recorded by the configuration that adds it); late messages of its deleted predecessor,
//! to it or from it, must not be taken for the new replica's. Every message carries
//! `from_incarnation` and `to_incarnation`; this file decides what they are and which
//! incoming messages are dropped for them.

use conclave_proto::conclave::raft::v1::{Message, MessageType};

use super::node::RaftNode;

impl RaftNode {
    /// Which replica of this node this is (see [`super::Config::incarnation`]).
    pub fn incarnation(&self) -> u64 {
        self.cfg.incarnation
    }
    /// Messages dropped so far because of incarnations: addressed to another replica of this
    /// node, or answers from a replica of a member other than the one the configuration holds
    /// (late messages of a replica that left the group before its node joined again).
    pub fn incarnation_drops(&self) -> u64 {
        self.incarnation_drops
    }

    /// The incarnation of node `to`'s replica that a message to it is meant for: the sender
    /// of the message being answered, the leader this replica follows, or else the member
    /// of the configuration in effect.
    pub(super) fn incarnation_of(&self, to: u64) -> u64 {
        match (self.answering, self.leader_incarnation) {
            (Some((node, incarnation)), _) if node == to => incarnation,
            (_, (leader, incarnation)) if leader == to && leader == self.leader => incarnation,
            _ => self.membership().incarnation(to),
        }
    }

    /// Is `msg` traffic of another replica incarnation? Addressed to an incarnation of this
    /// node other than this replica, or an answer (acknowledgement, vote, snapshot progress)
    /// from a member's replica other than the one this replica's configuration holds: such
    /// an answer speaks for a replica whose state is gone. Requests from a sender the
    /// configuration lists with another incarnation are taken: the sender may know a newer
    /// configuration (a leader whose replica joined after this one's configuration).
    pub(super) fn of_another_incarnation(&self, msg: &Message, msg_type: MessageType) -> bool {
        use MessageType::*;
        if msg.to_incarnation != self.cfg.incarnation {
            return true;
        }
        let answer = matches!(msg_type, AppendResponse | HeartbeatResponse | SnapshotResponse | VoteResponse | PreVoteResponse);
        let membership = self.membership();
        answer && membership.role(msg.from).is_some() && membership.incarnation(msg.from) != msg.from_incarnation
    }
}
