//! The sans-IO Raft core: one deterministic state machine per group, with no files,
//! sockets, threads or clocks. Time arrives as ticks, randomness from an injected RNG, and
//! durability is the caller's job: it persists what [`Ready`] asks, then reports back.
//!
//! Drive a [`RaftNode`] like this:
//! 1. inputs: [`RaftNode::tick`], [`RaftNode::step`] (peer messages), [`RaftNode::propose`],
//!    [`RaftNode::read_index`], [`RaftNode::persisted`], [`RaftNode::propose_membership_change`],
//!    [`RaftNode::transfer_leadership`], [`RaftNode::snapshot_taken`], [`RaftNode::compact`],
//!    [`RaftNode::snapshot_installed`], [`RaftNode::wake`];
//! 2. outputs: [`RaftNode::ready`] returns a [`Ready`]; see its documentation for the order
//!    of duties (send, persist, send-after-persist, apply, serve reads, report events).
//!
//! Messages are the protobuf types of `conclave.raft.v1`, so the wire layer ships them as
//! they are; [`Outbox`] gathers every group's messages for one peer into one `MessageBatch`.
//! Features: pre-vote, check-quorum, pipelined replication with bounded in-flight messages
//! and bytes, fast back-off, the §5.4.2 commit rule, ReadIndex reads, single-step membership
//! changes with voters, observers and witnesses, leadership transfer, snapshots (taken by
//! the state machine, streamed in chunks to lagging followers, installed), and options that
//! are off by default: lease reads, follower reads under leases from the leader
//! (`follower_lease.rs`), and quiescence of idle groups.
//!
//! A new group's replicas start with [`RaftNode::new`] and the initial configuration; a
//! replica joining an existing group starts with an empty [`Membership`] and learns the
//! configuration from the leader's log or snapshot once the leader added it.

mod batch;
mod config;
mod error;
mod follower_lease;
mod incarnation;
mod invariants;
mod log;
mod membership;
mod node;
mod progress;
mod read;
mod ready;
mod replicate;
mod snapshot;
mod step;
mod timing;

pub use batch::{open_batch, Outbox};
pub use conclave_proto::conclave::raft::v1::{Entry, EntryKind, Message, MessageBatch, MessageType};
pub use config::{Config, DeliberateBugs};
pub use error::RaftError;
pub use membership::{Membership, Role};
pub use node::{RaftNode, Recovered};
pub use ready::{HardState, RaftEvent, RaftRole, ReadState, Ready};
pub use snapshot::Snapshot;

/// The `u8` the durable log stores for an entry kind.
pub fn entry_kind_to_u8(kind: EntryKind) -> u8 {
    kind as i32 as u8
}

/// The entry kind of a stored `u8`, or `None` for an unknown value.
pub fn entry_kind_from_u8(value: u8) -> Option<EntryKind> {
    EntryKind::try_from(i32::from(value)).ok()
}
