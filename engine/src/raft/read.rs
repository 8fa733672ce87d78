//! Linearizable reads by ReadIndex: the leader notes its commit index, confirms with a
//! heartbeat round that a quorum still follows it, then releases the read; followers forward
//! reads to the leader. Rounds are numbered so one heartbeat acknowledgement confirms every
//! earlier read at once, and the reads that arrive between two drains of the output share
//! one round (sent as the output is drained); a follower asks the leader once per drain for
//! all the reads that arrived since the last. With lease reads on, a leader holding a valid
//! lease (see `lease_valid`) answers its own reads and followers' batches at once, without
//! a round.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use conclave_proto::conclave::raft::v1::{Message, MessageType};

use super::error::RaftError;
use super::membership::Role;
use super::node::RaftNode;
use super::ready::{RaftRole, ReadState};

#[derive(Debug)]
struct PendingRead {
    seq: u64,
    index: u64,
    context: Bytes,
    /// Node that asked (the leader itself for local reads).
    requester: u64,
    /// The requester asked for a follower read lease with it.
    wants_lease: bool,
}

/// The leader's reads in flight, and reads ready for the caller.
#[derive(Debug, Default)]
pub(super) struct ReadQueue {
    last_seq: u64,
    /// Reads that arrived before the leader committed an entry of its term.
    waiting_commit: Vec<(Bytes, u64, bool)>,
    pending: VecDeque<PendingRead>,
    ready: Vec<ReadState>,
    /// Lease reads: recent heartbeat rounds, as (round, leader tick, monotonic clock)
    /// when each was sent.
    round_ticks: VecDeque<(u64, u64, u64)>,
    /// Reads arrived since the last `ready()`: one heartbeat round, sent as the output is
    /// drained, confirms them all (not one round per read).
    round_due: bool,
    /// Follower: reads arrived since the last `ready()`, asked of the leader as one batch when
    /// the output is drained; and the batches asked, by number, until the leader answers.
    /// Numbers continue from a random start drawn at each (re)start, so that an answer to a
    /// batch of an earlier incarnation of this replica, still in flight, is not taken for
    /// the answer to a batch of this one: its index may predate writes that completed
    /// since, and serving a read at it would be stale.
    unsent: Vec<Bytes>,
    /// Each batch's reads and the clock reading when it was sent (a lease granted on it
    /// counts from then).
    batches: BTreeMap<u64, (Vec<Bytes>, u64)>,
    last_batch: u64,
    /// Leader: a read came in since the last heartbeat. The group then stays awake another
    /// heartbeat period (see `RaftNode::is_idle`): a quiet leader's lease lapses, and each
    /// quiet spell's first read would pay a heartbeat round.
    read_since_heartbeat: bool,
}

/// Batches asked of the leader and not answered (answers lost with a message, or never
/// sent by a leader that lost its office) are forgotten beyond this many: their callers time
/// out on their own.
const MAX_READ_BATCHES: usize = 1024;

impl ReadQueue {
    /// An empty queue whose follower read batches are numbered from `first_batch` on.
    pub(super) fn new(first_batch: u64) -> Self {
        ReadQueue { last_batch: first_batch, ..ReadQueue::default() }
    }

    pub(super) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    pub(super) fn push_ready(&mut self, read: ReadState) {
        self.ready.push(read);
    }

    pub(super) fn take_ready(&mut self) -> Vec<ReadState> {
        std::mem::take(&mut self.ready)
    }

    /// Forgets reads in flight (leadership lost); ready ones stay deliverable.
    pub(super) fn clear(&mut self) {
        self.waiting_commit.clear();
        self.pending.clear();
        self.round_ticks.clear();
        self.round_due = false;
        self.unsent.clear();
        self.batches.clear();
        self.read_since_heartbeat = false;
    }

    /// Leader: notes a read, which keeps the group awake until the next heartbeat.
    pub(super) fn note_read(&mut self) {
        self.read_since_heartbeat = true;
    }

    /// Leader, at a heartbeat: true if a read came in since the last one; starts over.
    pub(super) fn take_read_since_heartbeat(&mut self) -> bool {
        std::mem::take(&mut self.read_since_heartbeat)
    }

    /// Forgets the heartbeat rounds that lease reads count on (a new round is needed).
    pub(super) fn forget_lease_rounds(&mut self) {
        self.round_ticks.clear();
    }

    /// True if reads wait for a heartbeat round or a batch request not sent yet.
    pub(super) fn output_due(&self) -> bool {
        self.round_due || !self.unsent.is_empty()
    }

    /// Starts a new heartbeat round at leader tick `tick` and clock reading `now` (lease
    /// reads), forgetting rounds older than `tick_horizon` ticks or `time_horizon`.
    pub(super) fn new_round(&mut self, tick: u64, now: u64, tick_horizon: u64, time_horizon: u64) -> u64 {
        self.last_seq += 1;
        self.round_ticks.push_back((self.last_seq, tick, now));
        while self.round_ticks.front().is_some_and(|(_, t, at)| t + tick_horizon < tick || at.saturating_add(time_horizon) < now) {
            self.round_ticks.pop_front();
        }
        self.last_seq
    }

    /// The leader tick and clock reading at which the latest remembered round not after
    /// `seq` was sent (an earlier round is a conservative stand-in).
    fn round_sent(&self, seq: u64) -> Option<(u64, u64)> {
        self.round_ticks.iter().rev().find(|(s, _, _)| *s <= seq).map(|(_, t, at)| (*t, *at))
    }

    /// True if no read waits for confirmation.
    pub(super) fn is_idle(&self) -> bool {
        self.waiting_commit.is_empty() && self.pending.is_empty()
    }

    /// The newest round number, carried by heartbeats.
    pub(super) fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

impl RaftNode {
    /// Asks for a linearizable read. A [`ReadState`] with this `context` comes out of `ready()`
    /// once confirmed; serve the read when the state machine has applied its `index`. (Not
    /// when [`RaftNode::applied_index`] has: a replica may learn only later that it is a
    /// witness, e.g. one rejoining under a node id that was a voter, and a witness's applied
    /// index moves on without a state machine.)
    pub fn read_index(&mut self, context: Bytes) -> Result<(), RaftError> {
        self.refuse_if_halted()?;
        self.wake();
        if self.member_role() == Some(Role::Witness) {
            return Err(RaftError::InvalidConfig("a witness has no state machine to read".into()));
        }
        if self.role == RaftRole::Leader {
            self.reads.note_read();
        }
        match self.role {
            RaftRole::Leader if self.lease_valid() => {
                let index = self.log.committed();
                self.reads.ready.push(ReadState { index, context });
                Ok(())
            }
            RaftRole::Leader => {
                let id = self.cfg.id;
                self.leader_read(context, id, false);
                Ok(())
            }
            _ if self.leader != 0 => {
                if let Err(context) = self.try_follower_lease_read(context) {
                    self.reads.unsent.push(context);
                }
                Ok(())
            }
            _ => Err(RaftError::NotLeader { leader: 0 }),
        }
    }

    pub(super) fn leader_read(&mut self, context: Bytes, requester: u64, wants_lease: bool) {
        debug_assert_eq!(self.role, RaftRole::Leader);
        if self.log.term(self.log.committed()) != Some(self.term) {
            self.reads.waiting_commit.push((context, requester, wants_lease));
            return;
        }
        self.reads.last_seq += 1;
        let read = PendingRead { seq: self.reads.last_seq, index: self.log.committed(), context, requester, wants_lease };
        self.reads.pending.push_back(read);
        self.advance_reads();
        if !self.reads.pending.is_empty() {
            self.reads.round_due = true;
        }
    }

    /// Leader: a follower's batch of reads. Under a valid lease it is answered at once
    /// with the commit index (the lease vouches, at this moment, that no other leader can
    /// have committed more); otherwise it waits for a heartbeat round, as local reads do.
    /// With follower leases on, the answer may grant the follower a lease (see
    /// `follower_lease.rs`).
    pub(super) fn on_read_index_request(&mut self, msg: Message) {
        self.reads.note_read();
        let wants_lease = msg.lease_micros > 0;
        if !self.lease_valid() {
            self.leader_read(msg.context, msg.from, wants_lease);
            return;
        }
        self.answer_read_batch(msg.from, self.log.committed(), msg.context, wants_lease);
    }

    fn answer_read_batch(&mut self, to: u64, index: u64, context: Bytes, wants_lease: bool) {
        let lease_micros = if wants_lease { self.grant_lease(to) } else { 0 };
        let mut reply = self.new_message(to, MessageType::ReadIndexResponse);
        reply.index = index;
        reply.context = context;
        reply.lease_micros = lease_micros;
        self.out_messages.push(reply);
    }

    /// Asks the leader for the index of every read arrived since the last drain, in one
    /// request (its context is the batch number). A node that became leader meanwhile
    /// serves them itself; with no leader they are dropped (their callers fail on the leader
    /// change).
    /// With follower leases on, every batch asks for a lease, and a follower whose lease
    /// runs low sends an empty batch to renew it (once until a grant comes back, or an
    /// eighth of a lease passed).
    pub(super) fn send_read_batch(&mut self) {
        let renew = self.take_lease_renewal();
        if self.reads.unsent.is_empty() && !renew {
            return;
        }
        let contexts = std::mem::take(&mut self.reads.unsent);
        if self.role == RaftRole::Leader {
            let id = self.cfg.id;
            for context in contexts {
                self.leader_read(context, id, false);
            }
            return;
        }
        if self.leader == 0 {
            return;
        }
        self.reads.last_batch += 1;
        let batch = self.reads.last_batch;
        self.reads.batches.insert(batch, (contexts, self.now));
        while self.reads.batches.len() > MAX_READ_BATCHES {
            self.reads.batches.pop_first();
        }
        let mut msg = self.new_message(self.leader, MessageType::ReadIndex);
        msg.context = Bytes::copy_from_slice(&batch.to_be_bytes());
        msg.lease_micros = u64::from(self.wants_follower_lease());
        if msg.lease_micros > 0 {
            self.lease_asked();
        }
        self.out_messages.push(msg);
    }

    /// Sends the heartbeat round that the reads arrived since the last drain wait for.
    pub(super) fn send_due_read_round(&mut self) {
        if std::mem::take(&mut self.reads.round_due) && self.role == RaftRole::Leader && !self.reads.pending.is_empty() {
            self.broadcast_heartbeat();
        }
    }

    /// Lease reads: true while a quorum acknowledged a heartbeat round sent recently enough
    /// that no other leader can have been elected since (followers refuse votes for an
    /// election timeout after hearing from the leader). The lease starts when the round was
    /// sent and is checked against the clock now: a leader whose loop stalled (its ticks
    /// late) must not trust a lease that ran out in real time. It is also bounded in leader
    /// ticks, which never run ahead of real time, so a caller's clock that stopped cannot
    /// stretch it beyond what ticks allow.
    pub(super) fn lease_valid(&self) -> bool {
        self.lease_end().is_some()
    }

    /// The clock reading at which the leader's lease ends, if it holds a valid one now
    /// (see `lease_valid`).
    pub(super) fn lease_end(&self) -> Option<u64> {
        if !self.cfg.lease_reads || self.lease_revoked || self.role != RaftRole::Leader {
            return None;
        }
        if self.log.term(self.log.committed()) != Some(self.term) {
            return None;
        }
        let id = self.cfg.id;
        let last_seq = self.reads.last_seq;
        let confirmed =
            self.membership().quorum_index(
                |member| {
                    if member == id {
                        last_seq
                    } else {
                        self.progress.get(&member).map_or(0, |p| p.read_ack_seq)
                    }
                },
            );
        let (sent_tick, sent_at) = self.reads.round_sent(confirmed)?;
        let end = sent_at.saturating_add(self.cfg.lease_micros);
        let in_time = self.now < end || self.cfg.deliberate_bugs.lease_in_ticks;
        let in_ticks = self.leader_ticks - sent_tick + 2 < u64::from(self.cfg.election_ticks);
        (in_time && in_ticks).then_some(end)
    }

    /// Called when the commit index moved: release reads that waited for the term's entry.
    pub(super) fn start_waiting_reads(&mut self) {
        if self.reads.waiting_commit.is_empty() || self.log.term(self.log.committed()) != Some(self.term) {
            return;
        }
        for (context, requester, wants_lease) in std::mem::take(&mut self.reads.waiting_commit) {
            self.leader_read(context, requester, wants_lease);
        }
    }

    /// Releases every read whose round a quorum has confirmed.
    pub(super) fn advance_reads(&mut self) {
        while let Some(front) = self.reads.pending.front() {
            let seq = front.seq;
            let id = self.cfg.id;
            let confirmed = self
                .membership()
                .voting()
                .filter(|member| *member == id || self.progress.get(member).is_some_and(|p| p.read_ack_seq >= seq))
                .count();
            if !self.membership().is_quorum(confirmed) && !self.cfg.deliberate_bugs.read_index_without_quorum {
                break;
            }
            let read = self.reads.pending.pop_front().expect("front exists");
            if read.requester == id {
                self.reads.ready.push(ReadState { index: read.index, context: read.context });
            } else {
                self.answer_read_batch(read.requester, read.index, read.context, read.wants_lease);
            }
        }
    }

    /// A follower's answer from the leader: every read of the batch may proceed at `index`.
    pub(super) fn on_read_index_response(&mut self, msg: Message) {
        let Ok(batch) = <[u8; 8]>::try_from(msg.context.as_ref()).map(u64::from_be_bytes) else {
            return;
        };
        let Some((contexts, sent_at)) = self.reads.batches.remove(&batch) else { return };
        self.lease_granted(sent_at, msg.lease_micros);
        let index = msg.index;
        self.reads.ready.extend(contexts.into_iter().map(|context| ReadState { index, context }));
    }
}
