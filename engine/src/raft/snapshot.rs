//! Snapshots: the state machine hands the node a snapshot of its applied state, which lets
//! the node compact its log; the leader streams that snapshot in chunks to followers whose
//! next entries were compacted away (one chunk in flight, resumed on heartbeats); a follower
//! reassembles it and hands it to its caller, who installs it durably and reports back.

use bytes::{Bytes, BytesMut};
use conclave_proto::conclave::raft::v1::{Message, MessageType, SnapshotMeta};

use super::error::RaftError;
use super::log::RaftLog;
use super::membership::Membership;
use super::node::RaftNode;
use super::progress::ReplicationState;
use super::ready::{RaftEvent, RaftRole};

/// A state-machine snapshot covering the log up to (`index`, `term`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub index: u64,
    pub term: u64,
    /// The configuration in effect at `index`.
    pub membership: Membership,
    /// The state machine's encoded state (opaque to Raft).
    pub data: Bytes,
}

impl Snapshot {
    fn meta(&self) -> SnapshotMeta {
        SnapshotMeta { index: self.index, term: self.term, membership: Some(self.membership.to_proto()) }
    }
}

/// A snapshot arriving chunk by chunk from the leader.
#[derive(Debug)]
pub(super) struct Incoming {
    index: u64,
    term: u64,
    from: u64,
    membership: Membership,
    buffer: BytesMut,
}

/// Chunk size of snapshot transfers.
pub(super) const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

impl RaftNode {
    /// The state machine captured its state at applied index `index` as `data`. The node keeps
    /// it (cheaply, `Bytes` is shared) to bring lagging followers up to date, and may then
    /// compact its log up to `index` (see [`RaftNode::compact`]).
    pub fn snapshot_taken(&mut self, index: u64, data: Bytes) -> Result<(), RaftError> {
        if index > self.log.applied() {
            return Err(RaftError::CorruptState(format!("snapshot at {index} is beyond the applied index {}", self.log.applied())));
        }
        if self.snapshot.as_ref().is_some_and(|s| s.index >= index) {
            return Ok(());
        }
        let Some(term) = self.log.term(index) else {
            return Err(RaftError::CorruptState(format!("snapshot index {index} is already compacted")));
        };
        let membership = self.membership_at(index).clone();
        self.snapshot = Some(Snapshot { index, term, membership, data });
        Ok(())
    }

    /// The latest snapshot this node holds, if any.
    pub fn latest_snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// The configuration in effect at `index` (the base one for an index before it).
    pub(super) fn membership_at(&self, index: u64) -> &Membership {
        self.configs.iter().rev().find(|(at, _, _)| *at <= index).map_or(&self.configs[0].2, |(_, _, m)| m)
    }

    /// The caller durably installed the snapshot it got from `Ready::snapshot` (and dropped
    /// every stored entry) and restored its state machine from it.
    pub fn snapshot_installed(&mut self, index: u64) {
        let Some(snapshot) = self.installing.take() else { return };
        if snapshot.index != index {
            self.installing = Some(snapshot);
            return;
        }
        let Some(incoming) = self.incoming.take() else { return };
        self.log = RaftLog::restored(snapshot.index, snapshot.term);
        self.configs = vec![(snapshot.index, snapshot.term, snapshot.membership.clone())];
        self.out_events.push(RaftEvent::MembershipChanged { index, membership: snapshot.membership.clone() });
        self.snapshot = Some(snapshot);
        let mut reply = self.new_message(incoming.from, MessageType::SnapshotResponse);
        reply.index = index;
        reply.snapshot_offset = incoming.buffer.len() as u64;
        reply.snapshot_done = true;
        self.out_messages.push(reply);
    }

    /// The caller could not install the snapshot it got from `Ready::snapshot` (its data
    /// did not decode): it is dropped, the leader is told (it starts over, from a probe),
    /// and this node takes part in the group again with the log it had.
    pub fn snapshot_install_failed(&mut self, index: u64) {
        if self.installing.as_ref().is_none_or(|s| s.index != index) {
            return;
        }
        self.installing = None;
        let Some(incoming) = self.incoming.take() else { return };
        let mut reply = self.new_message(incoming.from, MessageType::SnapshotResponse);
        reply.index = index;
        reply.reject = true;
        self.out_messages.push(reply);
    }

    /// True while a received snapshot waits for the caller to install it.
    pub(super) fn is_installing(&self) -> bool {
        self.installing.is_some()
    }

    /// Leader: sends `to` the next chunk of the latest snapshot. Returns true if sent.
    pub(super) fn send_snapshot_chunk(&mut self, to: u64) -> bool {
        let Some(snapshot) = self.snapshot.as_ref() else { return false };
        let (index, total) = (snapshot.index, snapshot.data.len());
        let Some(progress) = self.progress.get_mut(&to) else { return false };
        if progress.state != ReplicationState::Snapshot || progress.snapshot_index != index {
            progress.start_snapshot(index);
            self.out_events.push(RaftEvent::SnapshotSendStarted { to, index });
        }
        if progress.probe_sent {
            return false;
        }
        progress.probe_sent = true;
        let offset = (progress.snapshot_offset as usize).min(total);
        let end = (offset + SNAPSHOT_CHUNK_BYTES).min(total);
        let snapshot = self.snapshot.as_ref().expect("checked above");
        let mut msg = self.new_message(to, MessageType::Snapshot);
        msg.snapshot = Some(snapshot.meta());
        msg.snapshot_offset = offset as u64;
        msg.context = snapshot.data.slice(offset..end);
        msg.snapshot_done = end == total;
        self.out_messages.push(msg);
        true
    }

    pub(super) fn on_snapshot_response(&mut self, msg: Message) {
        let Some(progress) = self.progress.get_mut(&msg.from) else { return };
        progress.recent_active = true;
        if progress.state != ReplicationState::Snapshot || progress.snapshot_index != msg.index {
            return;
        }
        if msg.reject {
            progress.become_probe();
            self.out_events.push(RaftEvent::SnapshotSendAborted { to: msg.from, index: msg.index });
            return;
        }
        if msg.snapshot_done {
            progress.become_probe();
            progress.on_accept(msg.index);
            self.out_events.push(RaftEvent::SnapshotSendCompleted { to: msg.from, index: msg.index });
            self.maybe_commit();
            self.send_append(msg.from);
            return;
        }
        progress.snapshot_offset = progress.snapshot_offset.max(msg.snapshot_offset);
        progress.probe_sent = false;
        self.send_snapshot_chunk(msg.from);
    }

    /// Follower: one chunk of a snapshot from the leader.
    pub(super) fn on_snapshot_chunk(&mut self, msg: Message) -> Result<(), RaftError> {
        let Some(meta) = msg.snapshot.as_ref() else {
            return Err(RaftError::InvalidMessage("snapshot chunk without metadata".into()));
        };
        if self.is_installing() {
            return Ok(());
        }
        let mut reply = self.new_message(msg.from, MessageType::SnapshotResponse);
        reply.index = meta.index;
        if meta.index <= self.log.committed() || self.log.term(meta.index) == Some(meta.term) {
            // We already hold everything it covers (log matching): keep the log, which may
            // hold acknowledged entries beyond it, and report it as installed once durable.
            self.log.commit_to(meta.index);
            reply.snapshot_done = true;
            self.out_persisted_messages.push(reply);
            return Ok(());
        }
        if msg.snapshot_offset == 0 {
            let membership = Membership::from_proto(
                meta.membership.as_ref().ok_or_else(|| RaftError::InvalidMessage("snapshot metadata without membership".into()))?,
            )?;
            self.incoming = Some(Incoming { index: meta.index, term: meta.term, from: msg.from, membership, buffer: BytesMut::new() });
        }
        let Some(incoming) = self.incoming.as_mut().filter(|i| i.index == meta.index && i.term == meta.term) else {
            reply.reject = true;
            self.out_messages.push(reply);
            return Ok(());
        };
        let received = incoming.buffer.len() as u64;
        if msg.snapshot_offset == received {
            incoming.buffer.extend_from_slice(&msg.context);
        } else if msg.snapshot_offset > received {
            reply.reject = true;
            self.out_messages.push(reply);
            return Ok(());
        }
        incoming.from = msg.from;
        reply.snapshot_offset = incoming.buffer.len() as u64;
        if msg.snapshot_done && msg.snapshot_offset == received {
            let snapshot = Snapshot {
                index: incoming.index,
                term: incoming.term,
                membership: incoming.membership.clone(),
                data: incoming.buffer.clone().freeze(),
            };
            self.out_events.push(RaftEvent::SnapshotReceived { from: msg.from, index: snapshot.index });
            self.out_snapshot = Some(snapshot.clone());
            self.installing = Some(snapshot);
        } else {
            self.out_messages.push(reply);
        }
        Ok(())
    }

    /// Leadership lost: snapshot sends in progress are abandoned.
    pub(super) fn abort_snapshot_sends(&mut self) {
        if self.role != RaftRole::Leader {
            return;
        }
        for (to, progress) in &self.progress {
            if progress.state == ReplicationState::Snapshot {
                self.out_events.push(RaftEvent::SnapshotSendAborted { to: *to, index: progress.snapshot_index });
            }
        }
    }
}
