//! Errors the Raft core returns to its caller. None of them leaves the node in a bad state.

use std::fmt;

/// Why an input to a [`super::RaftNode`] was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RaftError {
    /// The configuration is inconsistent; the text says which setting.
    InvalidConfig(String),
    /// The operation needs the leader; `leader` is the known leader (0 if unknown).
    NotLeader { leader: u64 },
    /// Too many proposals are waiting to commit.
    ProposalQueueFull,
    /// A message from a peer was malformed or addressed elsewhere; the text says why.
    InvalidMessage(String),
    /// Recovered durable state contradicts itself; the text says how.
    CorruptState(String),
    /// A membership change was refused for now (one is still pending, or the leader has
    /// not committed an entry of its term yet); the text says why. Retrying may succeed.
    MembershipChange(String),
    /// A configuration is malformed, or may not follow the one in effect (more than one
    /// voting member changed, no voter, as many witnesses as voters, ...); the text says
    /// why. Retrying the same change does not help.
    InvalidMembership(String),
    /// A leadership transfer was refused; the text says why.
    Transfer(String),
    /// The replica stopped when one of its invariants broke (see `RaftNode::halted`); it
    /// takes no input until rebuilt from its durable state.
    Halted(String),
}

impl fmt::Display for RaftError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RaftError::InvalidConfig(why) => write!(f, "invalid raft configuration: {why}"),
            RaftError::NotLeader { leader: 0 } => write!(f, "not the leader; leader unknown"),
            RaftError::NotLeader { leader } => write!(f, "not the leader; leader is node {leader}"),
            RaftError::ProposalQueueFull => {
                write!(f, "too many uncommitted proposals; retry after some commit")
            }
            RaftError::InvalidMessage(why) => write!(f, "invalid raft message: {why}"),
            RaftError::CorruptState(why) => write!(f, "recovered raft state is corrupt: {why}"),
            RaftError::MembershipChange(why) => write!(f, "membership change refused: {why}"),
            RaftError::InvalidMembership(why) => write!(f, "configuration refused: {why}"),
            RaftError::Transfer(why) => write!(f, "leadership transfer refused: {why}"),
            RaftError::Halted(why) => write!(f, "this replica stopped (a Raft invariant broke: {why}); restart the node to rebuild it"),
        }
    }
}

impl std::error::Error for RaftError {}
