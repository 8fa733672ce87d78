//! Raft output drained each round, with group commit: the touched groups' messages sent,
//! committed entries applied, events reported, and every group's new entries and votes
//! submitted to the log in one write per chunk of groups; what must wait for that write
//! (Raft's acknowledgement, messages that need it durable) is released when it is durable.
//! The log failing fails everything waiting.

use std::time::Duration;

use conclave_proto::conclave::peer::v1::peer_message::Body;
use conclave_proto::conclave::peer::v1::PeerMessage;
use conclave_proto::conclave::raft::v1::Message;
use futures_lite::future;

use crate::raft::{RaftEvent, RaftRole};
use crate::sm;

use super::api::{Durable, GroupWrite, LogStore, ShardEvent};
use super::clock::micros;
use super::counters::ShardCounters;
use super::error::ShardError;
use super::peer_requests::settle_membership_waiters;
use super::runtime::ShardRuntime;

/// Touched groups are drained of Raft output in chunks of this many (one log write each)
/// until none is left or the round spent [`ROUND_READY_BUDGET`] on them; the others are
/// carried to the next round (which then starts at once), taken in turn.
const READY_CHUNK_GROUPS: usize = 256;
const ROUND_READY_BUDGET: Duration = Duration::from_millis(20);

/// What waits for one group's part of a write: the group, the (index, term) Raft is told
/// is durable, and the messages that may leave only then (group 0: messages alone).
pub(super) type WriteAck = (u32, Option<(u64, u64)>, Vec<Message>);

/// A round's writes on their way to disk, and what waits for them.
pub(super) struct InFlightWrite {
    pub(super) durable: Durable,
    pub(super) acks: Vec<WriteAck>,
}

impl<L: LogStore> ShardRuntime<L> {
    /// Drains Raft output until no replica has any, or the round's [`ROUND_READY_BUDGET`] is
    /// spent (the groups left stay touched, for the next round), [`READY_CHUNK_GROUPS`]
    /// touched groups at a time: send, apply what is durable, submit the rest to the log in
    /// one write (acknowledged when it is durable, see `write_done`), install snapshots from
    /// leaders once every earlier write is durable, repeat.
    pub(super) async fn process_ready(&mut self) -> Result<(), ShardError> {
        let deadline = self.now_micros().saturating_add(micros(ROUND_READY_BUDGET));
        loop {
            let mut writes = Vec::new();
            let mut acks = Vec::new();
            let mut waiting_messages = Vec::new();
            let now_ms = (self.clock)();
            // Heartbeat rounds sent from `ready()` are stamped with it (lease reads).
            let now_micros = (self.monotonic)();
            // Only the groups touched since the last pass (see `schedule.rs`).
            let touched = self.schedule.take_dirty(READY_CHUNK_GROUPS);
            for &group in &touched {
                let Some(slot) = self.groups.get_mut(group) else { continue };
                let replica = &mut slot.replica;
                if !replica.has_ready() {
                    continue;
                }
                replica.raft_mut().set_now(now_micros);
                let mut ready = replica.take_ready();
                if replica.raft().commit_notices_owed() && self.held_commit_notices.insert(group) {
                    ShardCounters::add(&self.counters.commit_notices_held, 1);
                    let delay = micros(self.cfg.commit_notice_delay);
                    self.commit_notices_due.get_or_insert(now_micros.saturating_add(delay));
                }
                self.outbox.extend(ready.messages.drain(..));
                replica.apply_committed(&mut ready);
                for event in ready.events.drain(..) {
                    if let RaftEvent::RoleChanged { role: RaftRole::Leader, .. } = event {
                        // A new leader waits a whole rebalancing period before handing the
                        // group on (so a hand-off is not undone at once).
                        slot.last_rebalance = self.ticks;
                        slot.workload.restart(self.ticks);
                    }
                    settle_membership_waiters(&mut slot.membership_waiters, &event);
                    (self.events)(group, &ShardEvent::Raft(event));
                }
                if let Some(snapshot) = ready.snapshot.take() {
                    self.installs.push((group, snapshot));
                }
                if replica.take_barrier_due() {
                    replica.propose(&sm::command::leader_barrier(now_ms), Box::new(|_| {}));
                }
                let ack = ready.persist_ack();
                // A hard state whose term and vote are already durable changed only its
                // commit index, which Raft need not persist: it rides along with the next
                // entries instead of costing a sync of its own.
                let vote = ready.hard_state.map(|hs| (hs.term, hs.vote));
                let vote_changed = vote.is_some() && vote != Some(slot.durable_vote);
                if vote_changed || !ready.entries.is_empty() {
                    if let Some(vote) = vote {
                        slot.durable_vote = vote;
                    }
                    writes.push(GroupWrite { group, hard_state: ready.hard_state, entries: std::mem::take(&mut ready.entries) });
                    acks.push((group, ack, std::mem::take(&mut ready.persisted_messages)));
                } else {
                    // They may answer for entries or a vote still on their way to disk.
                    waiting_messages.append(&mut ready.persisted_messages);
                }
            }
            self.flush_outbox();
            if !writes.is_empty() {
                ShardCounters::add(&self.counters.log_writes, 1);
                ShardCounters::add(&self.counters.group_writes, writes.len() as u64);
                let durable = match self.log.submit(writes) {
                    Ok(durable) => durable,
                    Err(e) => return Err(self.log_failed(e)),
                };
                self.in_flight.push_back(InFlightWrite { durable, acks });
            }
            if !waiting_messages.is_empty() {
                match self.in_flight.back_mut() {
                    Some(last) => last.acks.push((0, None, waiting_messages)),
                    None => {
                        self.outbox.extend(waiting_messages);
                        self.flush_outbox();
                    }
                }
            }
            if !self.installs.is_empty() {
                // A snapshot replaces the group's log: every earlier write goes first.
                self.drain_in_flight().await?;
                for (group, snapshot) in std::mem::take(&mut self.installs) {
                    self.install_snapshot(group, snapshot).await?;
                }
            }
            for group in touched {
                self.reschedule(group);
            }
            if !self.schedule.has_dirty() || self.now_micros() >= deadline {
                return Ok(());
            }
        }
    }

    /// Once their delay is up, has the leaders holding commit notices send them (those the
    /// appends since carried are not sent again); they leave with this round's output.
    pub(super) fn flush_due_commit_notices(&mut self, now_micros: u64) {
        if self.commit_notices_due.is_none_or(|due| now_micros < due) {
            return;
        }
        self.commit_notices_due = None;
        for group in std::mem::take(&mut self.held_commit_notices) {
            if let Some(replica) = self.groups.replica_mut(group) {
                replica.raft_mut().flush_commit_notices();
                self.schedule.touch(group);
            }
        }
    }

    /// A round's writes are durable (or the log failed): tell Raft, send what waited.
    pub(super) fn write_done(&mut self, acks: Vec<WriteAck>, result: Result<(), String>) -> Result<(), ShardError> {
        if let Err(e) = result {
            return Err(self.log_failed(e));
        }
        for (group, ack, persisted_messages) in acks {
            if let (Some((index, term)), Some(replica)) = (ack, self.groups.replica_mut(group)) {
                self.schedule.touch(group);
                replica.raft_mut().persisted(index, term);
            }
            self.outbox.extend(persisted_messages);
        }
        self.flush_outbox();
        Ok(())
    }

    /// Settles the writes at the front that are durable already, without waiting.
    pub(super) async fn settle_durable_writes(&mut self) -> Result<(), ShardError> {
        while let Some(front) = self.in_flight.front_mut() {
            let Some(result) = future::poll_once(&mut front.durable).await else {
                return Ok(());
            };
            let write = self.in_flight.pop_front().expect("just polled");
            self.write_done(write.acks, result)?;
        }
        Ok(())
    }

    /// Waits until every submitted write is durable, settling each.
    pub(super) async fn drain_in_flight(&mut self) -> Result<(), ShardError> {
        while let Some(write) = self.in_flight.pop_front() {
            let result = write.durable.await;
            self.write_done(write.acks, result)?;
        }
        Ok(())
    }

    /// The log failed: everything waiting fails with it, and the shard stops serving.
    fn log_failed(&mut self, e: String) -> ShardError {
        let error = ShardError::Storage(e);
        tracing::error!(error = %error, "the log failed; this shard stops serving");
        for (_, replica) in self.groups.replicas_mut() {
            replica.fail_all(error.clone());
        }
        error
    }

    /// Sends the round's Raft batches, then whatever else is queued for peers.
    pub(super) fn flush_outbox(&mut self) {
        for batch in self.outbox.drain() {
            let to = batch.to;
            ShardCounters::add(&self.counters.batches_sent, 1);
            for message in &batch.messages {
                self.counters.count_message(message);
            }
            (self.transport)(to, PeerMessage { body: Some(Body::Raft(batch)) });
        }
        for (to, message) in self.forwarded.take_outgoing() {
            (self.transport)(to, message);
        }
    }
}
