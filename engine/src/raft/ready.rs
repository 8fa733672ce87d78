//! What a [`super::RaftNode`] asks its caller to do after a batch of inputs: the `Ready`
//! output, the durable hard state, read results and the events the server reports.

use bytes::Bytes;
use conclave_proto::conclave::raft::v1::{Entry, HardState as HardStateProto, Message};

use super::membership::Membership;
use super::snapshot::Snapshot;

/// The durable vote state of a replica (persist it before sending `persisted_messages`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    /// The candidate voted for in `term` (0 for none).
    pub vote: u64,
    /// A commit index known at the time; persisting it is an optimisation, not a duty.
    pub commit: u64,
}

impl HardState {
    pub fn to_proto(self) -> HardStateProto {
        HardStateProto { term: self.term, vote: self.vote, commit: self.commit }
    }

    pub fn from_proto(proto: &HardStateProto) -> Self {
        HardState { term: proto.term, vote: proto.vote, commit: proto.commit }
    }
}

/// The role a replica currently plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaftRole {
    Follower,
    /// Polling peers in a pre-vote round (term not yet raised).
    PreCandidate,
    Candidate,
    Leader,
}

/// A linearizable read that may proceed once the state machine has applied `index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub index: u64,
    /// The context the caller passed to `read_index`.
    pub context: Bytes,
}

/// Something the server reports as a Node API event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RaftEvent {
    /// This replica's role changed.
    RoleChanged {
        role: RaftRole,
        term: u64,
    },
    /// The known leader changed (`leader` 0: none known).
    LeaderChanged {
        term: u64,
        leader: u64,
    },
    /// The configuration in effect changed (on append of a membership entry, or rollback).
    MembershipChanged {
        index: u64,
        membership: Membership,
    },
    /// The configuration entry at `index` committed.
    MembershipCommitted {
        index: u64,
    },
    /// A leadership transfer to `to` did not finish within an election timeout.
    TransferAborted {
        to: u64,
    },
    /// The leader started, finished or gave up streaming snapshot `index` to `to`.
    SnapshotSendStarted {
        to: u64,
        index: u64,
    },
    SnapshotSendCompleted {
        to: u64,
        index: u64,
    },
    SnapshotSendAborted {
        to: u64,
        index: u64,
    },
    /// A complete snapshot arrived from `from` (see `Ready::snapshot`).
    SnapshotReceived {
        from: u64,
        index: u64,
    },
}

/// The outputs accumulated since the last drain. Handle them in this order:
/// 1. send `messages` (they do not depend on durability);
/// 2. persist `hard_state` (if any) and `entries` (if any: first drop every stored entry at
///    or above `entries[0].index`, then append them), in the order of the Ready values;
/// 3. once durable: send `persisted_messages` and call `persisted(index, term)` with
///    [`Ready::persist_ack`];
/// 4. apply `committed_entries` in order (they are already durable here), serve
///    `read_states` once applied reaches their index, report `events`;
/// 5. if `snapshot` is set: after the writes above, store it durably, drop every stored
///    entry, restore the state machine from it, then call `snapshot_installed(index)`.
#[derive(Debug, Default)]
pub struct Ready {
    pub messages: Vec<Message>,
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
    pub persisted_messages: Vec<Message>,
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    pub events: Vec<RaftEvent>,
    pub snapshot: Option<Snapshot>,
}

impl Ready {
    /// The (index, term) to acknowledge once `entries` are durable.
    pub fn persist_ack(&self) -> Option<(u64, u64)> {
        self.entries.last().map(|e| (e.index, e.term))
    }

    /// True if there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.hard_state.is_none()
            && self.entries.is_empty()
            && self.persisted_messages.is_empty()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
            && self.events.is_empty()
            && self.snapshot.is_none()
    }
}
