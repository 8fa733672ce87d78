//! Why the shard could not give a request its answer. Each variant says whether the
//! outcome is known: a caller may retry a failed read freely, and a failed command safely
//! only where the command is idempotent or carries a session sequence number.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardError {
    /// This node does not lead the group; `leader` is the node that does (0: unknown).
    /// Nothing was done.
    NotLeader { group: u32, leader: u64 },
    /// Leadership changed while the command was in flight: it may or may not have been
    /// applied. Retrying with the same session sequence number is safe.
    LeadershipLost,
    /// Too much is waiting; nothing was done.
    Overloaded(String),
    /// The group cannot serve now (no quorum, recovering, refused input); the text says why.
    Unavailable(String),
    /// This node does not host the group.
    UnknownGroup(u32),
    /// The shard is stopping; in-flight outcomes are unknown.
    ShuttingDown,
    /// The log could not make the entries durable; the shard stops serving the group.
    Storage(String),
    /// The request cannot be served as asked; the text says why. Nothing was done.
    Invalid(String),
}

impl fmt::Display for ShardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardError::NotLeader { group, leader: 0 } => {
                write!(f, "partition {group} has no leader right now; retry shortly")
            }
            ShardError::NotLeader { group, leader } => {
                write!(f, "partition {group} is led by node {leader}, not this node")
            }
            ShardError::LeadershipLost => write!(f, "leadership changed while the request was in flight; its outcome is unknown, retry it"),
            ShardError::Overloaded(why) => write!(f, "overloaded: {why}"),
            ShardError::Unavailable(why) => write!(f, "unavailable: {why}"),
            ShardError::UnknownGroup(group) => write!(f, "partition {group} is not hosted here"),
            ShardError::ShuttingDown => write!(f, "the node is shutting down; retry on another node"),
            ShardError::Storage(why) => write!(f, "storage failure: {why}"),
            ShardError::Invalid(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for ShardError {}
