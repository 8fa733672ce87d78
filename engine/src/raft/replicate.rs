//! The leader side of `RaftNode`: becoming leader, pipelined appends under flow control,
//! fast back-off on rejections, heartbeats, check-quorum, the commit rule (only entries of
//! the current term commit by counting, Raft §5.4.2) and leadership-transfer hand-off.

use bytes::Bytes;
use conclave_proto::conclave::raft::v1::{Entry, EntryKind, Message, MessageType};

use super::log::entry_bytes;
use super::membership::Role;
use super::node::RaftNode;
use super::progress::{Progress, ReplicationState};
use super::ready::RaftRole;

impl RaftNode {
    pub(super) fn become_leader(&mut self) {
        debug_assert_eq!(self.role, RaftRole::Candidate);
        self.set_role(RaftRole::Leader);
        let id = self.cfg.id;
        self.set_leader(id);
        self.votes.clear();
        self.heartbeat_elapsed = 0;
        // The first heartbeat comes with the next interval of the caller's loop, together
        // with its other leaders' (see `set_shard_tick`).
        self.heartbeat_period = self.current_heartbeat_period();
        self.election_elapsed = 0;
        self.transferee = 0;
        self.lease_revoked = false;
        self.open_lease_window();
        let next = self.log.last_index() + 1;
        let membership = self.membership();
        let peers: Vec<(u64, u64)> =
            membership.members().map(|(peer, _)| (peer, membership.incarnation(peer))).filter(|(peer, _)| *peer != id).collect();
        self.progress = peers.into_iter().map(|(peer, incarnation)| (peer, Progress::for_incarnation(next, incarnation))).collect();
        let noop = Entry { index: next, term: self.term, kind: EntryKind::LeaderNoop as i32, data: Bytes::new() };
        self.log.append_new([noop]);
        self.maybe_commit();
        self.broadcast_append();
    }

    /// Check-quorum: did a quorum of voting members answer since the last check? Resets
    /// the activity marks for the next round.
    pub(super) fn quorum_recently_active(&mut self) -> bool {
        let id = self.cfg.id;
        let active =
            self.membership().voting().filter(|member| *member == id || self.progress.get(member).is_some_and(|p| p.recent_active)).count();
        for progress in self.progress.values_mut() {
            progress.recent_active = false;
        }
        self.membership().is_quorum(active)
    }

    pub(super) fn broadcast_heartbeat(&mut self) {
        let committed = self.log.committed();
        let read_seq = if self.cfg.lease_reads {
            let time_horizon = if self.cfg.deliberate_bugs.lease_in_ticks { u64::MAX } else { self.cfg.lease_micros };
            self.reads.new_round(self.leader_ticks, self.now, u64::from(self.cfg.election_ticks), time_horizon)
        } else {
            self.reads.last_seq()
        };
        let mut messages = Vec::with_capacity(self.progress.len());
        for (peer, progress) in &self.progress {
            let mut msg = self.new_message(*peer, MessageType::Heartbeat);
            msg.commit = committed.min(progress.match_index);
            msg.read_seq = read_seq;
            messages.push(msg);
        }
        self.out_messages.extend(messages);
    }

    pub(super) fn broadcast_append(&mut self) {
        let peers: Vec<u64> = self.progress.keys().copied().collect();
        for peer in peers {
            self.send_append(peer);
        }
    }

    /// Sends `to` the next append if flow control allows. Returns true if one was sent.
    pub(super) fn send_append(&mut self, to: u64) -> bool {
        let witness_since = self.witness_since(to);
        let Some(progress) = self.progress.get(&to) else { return false };
        if progress.state == ReplicationState::Snapshot {
            return self.send_snapshot_chunk(to);
        }
        if progress.is_paused(self.cfg.max_inflight_messages, self.cfg.max_inflight_bytes) {
            return false;
        }
        let prev_index = progress.next_index - 1;
        let snapshot_in_progress = progress.state == ReplicationState::Snapshot;
        let Some(prev_term) = self.log.term(prev_index).filter(|_| !snapshot_in_progress) else {
            // The entries this peer needs were compacted away: send the snapshot instead.
            return self.send_snapshot_chunk(to);
        };
        let mut entries = if progress.next_index <= self.log.last_index() {
            self.log.entries_from(progress.next_index, self.cfg.max_entries_per_message, self.cfg.max_bytes_per_message)
        } else {
            Vec::new()
        };
        if let Some(since) = witness_since {
            for entry in &mut entries {
                if entry.index > since && entry.kind != EntryKind::Membership as i32 {
                    entry.data = Bytes::new();
                }
            }
        }
        let last = entries.last().map_or(prev_index, |e| e.index);
        let bytes: usize = entries.iter().map(entry_bytes).sum();
        let mut msg = self.new_message(to, MessageType::Append);
        msg.index = prev_index;
        msg.log_term = prev_term;
        msg.entries = entries;
        msg.commit = self.log.committed();
        self.out_messages.push(msg);
        self.progress.get_mut(&to).expect("checked above").sent(last, bytes);
        true
    }

    /// If `peer` is a witness: the index of the configuration that made it one (or of the
    /// base configuration, if it has been one since). Entries after it are sent without
    /// payloads. Entries before it are sent whole: a replica that joins as a witness, or
    /// rejoins as one under a node id that was a voter or observer before, holds older
    /// configurations that name it a voter or observer, and applies the entries they cover.
    fn witness_since(&self, peer: u64) -> Option<u64> {
        let mut since = None;
        for (index, _, membership) in self.configs.iter().rev() {
            if membership.role(peer) != Some(Role::Witness) {
                break;
            }
            since = Some(*index);
        }
        since
    }

    /// Sends the entries proposed since the last drain: to each follower, as many appends
    /// as its window allows (one, for a round's worth of proposals).
    pub(super) fn send_due_appends(&mut self) {
        if !std::mem::take(&mut self.append_due) || self.role != RaftRole::Leader {
            return;
        }
        let peers: Vec<u64> = self.progress.keys().copied().collect();
        for peer in peers {
            let Some(progress) = self.progress.get(&peer) else { continue };
            if progress.state == ReplicationState::Replicate {
                self.send_pipelined(peer);
            } else {
                self.send_append(peer);
            }
        }
    }

    /// Sends appends to `to` while there is something to send and the window allows.
    fn send_pipelined(&mut self, to: u64) {
        let last = self.log.last_index();
        loop {
            let Some(progress) = self.progress.get(&to) else { return };
            let more = progress.next_index <= last && progress.state == ReplicationState::Replicate;
            if !more || !self.send_append(to) {
                return;
            }
        }
    }

    pub(super) fn send_timeout_now(&mut self, to: u64) {
        // The target's election bypasses followers' leases: ours ends now.
        self.lease_revoked = true;
        let msg = self.new_message(to, MessageType::TimeoutNow);
        self.out_messages.push(msg);
    }

    pub(super) fn on_append_response(&mut self, msg: Message) {
        let last = self.log.last_index();
        let hint =
            if msg.reject && msg.log_term > 0 { self.log.find_conflict_by_term(msg.reject_hint, msg.log_term).0 } else { msg.reject_hint };
        let Some(progress) = self.progress.get_mut(&msg.from) else { return };
        progress.recent_active = true;
        if msg.reject {
            if progress.on_reject(msg.index, hint) {
                self.send_append(msg.from);
            }
            return;
        }
        if msg.index > last {
            return;
        }
        let was_probe = progress.state == ReplicationState::Probe;
        let advanced = progress.on_accept(msg.index);
        let caught_up = progress.match_index == last;
        if advanced {
            self.maybe_commit();
            if self.role != RaftRole::Leader || self.maybe_hand_over() {
                return;
            }
        }
        if self.transferee == msg.from && caught_up {
            self.send_timeout_now(msg.from);
        }
        if advanced || was_probe {
            self.send_pipelined(msg.from);
        }
    }

    pub(super) fn on_heartbeat_response(&mut self, msg: Message) {
        let last = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&msg.from) else { return };
        progress.recent_active = true;
        // A round we never started cannot be confirmed.
        progress.read_ack_seq = progress.read_ack_seq.max(msg.read_seq.min(self.reads.last_seq()));
        // A peer behind the leader gets an append: it may have lost one (a gap makes it
        // refuse, which re-probes). Not while its appends are being answered, though: its
        // match moved since the last heartbeat, so they are merely in flight.
        let stalled = progress.match_index == progress.match_at_heartbeat;
        progress.match_at_heartbeat = progress.match_index;
        let lagging = progress.match_index < last && (stalled || progress.state != ReplicationState::Replicate);
        if lagging {
            progress.unpause_on_heartbeat(self.cfg.max_inflight_messages, self.cfg.max_inflight_bytes);
        }
        self.advance_reads();
        if self.maybe_hand_over() {
            return;
        }
        if lagging {
            self.send_append(msg.from);
        }
    }

    /// Advances the commit index to the highest index a quorum holds durably, provided that
    /// entry is of the current term.
    pub(super) fn maybe_commit(&mut self) {
        let id = self.cfg.id;
        let persisted = self.log.persisted();
        let progress = &self.progress;
        let quorum_index =
            self.membership().quorum_index(
                |member| {
                    if member == id {
                        persisted
                    } else {
                        progress.get(&member).map_or(0, |p| p.match_index)
                    }
                },
            );
        // Members whose follower read lease may run must hold an entry before it commits.
        let quorum_index = quorum_index.min(self.lease_holders_match());
        if quorum_index <= self.log.committed() {
            return;
        }
        let current_term = self.log.term(quorum_index) == Some(self.term);
        if !current_term && !self.cfg.deliberate_bugs.commit_old_term_by_count {
            return;
        }
        self.log.commit_to(quorum_index);
        self.start_waiting_reads();
        if self.maybe_hand_over() {
            return;
        }
        self.commit_due = true;
    }

    /// A leader that the committed configuration no longer has as a voter (it demoted or
    /// removed itself) hands over once a voter holds its whole log: it tells that voter to
    /// campaign and steps down. Stepping down earlier could leave entries that only
    /// witnesses hold (they vote but never lead) beyond every voter's log: the witnesses
    /// would refuse every voter's campaign, and the group would have no leader for good
    /// (sim seed 26582). Meanwhile it takes no proposals (see `check_can_propose`), so the
    /// log it waits on stops growing. Returns true if it stepped down.
    pub(super) fn maybe_hand_over(&mut self) -> bool {
        if !self.is_leaving() {
            return false;
        }
        let last = self.log.last_index();
        let progress = &self.progress;
        let caught_up = self
            .membership()
            .members()
            .find(|(peer, role)| *role == Role::Voter && progress.get(peer).is_some_and(|p| p.match_index == last));
        let Some((voter, _)) = caught_up else { return false };
        self.send_timeout_now(voter);
        let term = self.term;
        self.become_follower(term, 0);
        true
    }

    /// Tells every follower the commit index that moved since the last drain, once: an
    /// append already queued for a follower in this drain carries it (the last one queued
    /// covers everything sent to that follower, and a follower commits no further than what
    /// it matched), the others get an append of their own, or, holding commit notices
    /// (`Config::hold_commit_notices`), are owed one until `flush_commit_notices`.
    pub(super) fn send_due_commit(&mut self) {
        if !std::mem::take(&mut self.commit_due) || self.role != RaftRole::Leader {
            return;
        }
        let committed = self.log.committed();
        let term = self.term;
        let peers: Vec<u64> = self.progress.keys().copied().collect();
        for peer in peers {
            let queued =
                self.out_messages.iter_mut().rev().find(|m| m.to == peer && m.msg_type == MessageType::Append as i32 && m.term == term);
            match queued {
                Some(append) => append.commit = committed,
                None if self.cfg.hold_commit_notices => self.commit_notices_owed = true,
                None => self.send_commit_notice(peer),
            }
        }
    }

    /// Records the commit index each follower is told by the appends and heartbeats of this
    /// drain; owed notices that these carried are no longer owed. Only a leader holding
    /// commit notices needs it: the others skip the walk over the drain's messages.
    pub(super) fn note_commit_sent(&mut self) {
        if !self.cfg.hold_commit_notices {
            return;
        }
        if self.role != RaftRole::Leader {
            self.commit_notices_owed = false;
            return;
        }
        let term = self.term;
        for msg in &self.out_messages {
            let told = msg.msg_type == MessageType::Append as i32 || msg.msg_type == MessageType::Heartbeat as i32;
            if told && msg.term == term {
                if let Some(progress) = self.progress.get_mut(&msg.to) {
                    progress.commit_sent = progress.commit_sent.max(msg.commit);
                }
            }
        }
        if self.commit_notices_owed {
            let committed = self.log.committed();
            self.commit_notices_owed = self.progress.values().any(|p| p.commit_sent < committed);
        }
    }

    /// True if a leader holding commit notices owes a follower one: the caller should call
    /// [`RaftNode::flush_commit_notices`] soon (the shard runtime does within its
    /// `commit_notice_delay`).
    pub fn commit_notices_owed(&self) -> bool {
        self.commit_notices_owed && self.role == RaftRole::Leader
    }

    /// Sends the commit notices held back (see `Config::hold_commit_notices`) to every
    /// follower not yet told the commit index; they leave with the next `ready()`.
    pub fn flush_commit_notices(&mut self) {
        if !std::mem::take(&mut self.commit_notices_owed) || self.role != RaftRole::Leader {
            return;
        }
        let committed = self.log.committed();
        let behind: Vec<u64> = self.progress.iter().filter(|(_, p)| p.commit_sent < committed).map(|(peer, _)| *peer).collect();
        for peer in behind {
            self.send_commit_notice(peer);
        }
    }

    /// Tells `peer` the commit index. A follower in sync (replicating, nothing left to
    /// send) gets an append marked `commit_only`, which it answers only to refuse: the
    /// leader learns nothing from a success. Any other follower gets an ordinary append
    /// (a probe, or the entries it still lacks).
    fn send_commit_notice(&mut self, peer: u64) {
        let in_sync =
            self.progress.get(&peer).is_some_and(|p| p.state == ReplicationState::Replicate && p.next_index > self.log.last_index());
        if !in_sync {
            self.send_append(peer);
            return;
        }
        let Some(progress) = self.progress.get(&peer) else { return };
        let prev_index = progress.next_index - 1;
        let Some(prev_term) = self.log.term(prev_index) else {
            self.send_append(peer);
            return;
        };
        let mut msg = self.new_message(peer, MessageType::Append);
        msg.index = prev_index;
        msg.log_term = prev_term;
        msg.commit = self.log.committed();
        msg.commit_only = true;
        self.out_messages.push(msg);
    }
}
