//! `RaftNode`: the deterministic Raft state machine of one replica of one group. This file
//! holds its state, construction and recovery, the caller-facing inputs and the `Ready`
//! drain; message handling lives in `step.rs`, leader replication in `replicate.rs`,
//! ticks, clocks and quiescence in `timing.rs`.

use std::collections::BTreeMap;

use bytes::Bytes;
use conclave_proto::conclave::raft::v1::{Entry, EntryKind, Message, MessageType};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::config::Config;
use super::error::RaftError;
use super::follower_lease::FollowerLeases;
use super::invariants::Invariants;
use super::log::RaftLog;
use super::membership::{Membership, Role};
use super::progress::Progress;
use super::read::ReadQueue;
use super::ready::{HardState, RaftEvent, RaftRole, Ready};
use super::snapshot::{Incoming, Snapshot};

/// What a restarted replica recovered from its durable storage.
#[derive(Clone, Debug)]
pub struct Recovered {
    pub hard_state: HardState,
    /// Index and term of the last entry covered by the snapshot (0, 0 without one).
    pub compacted_index: u64,
    pub compacted_term: u64,
    /// The configuration in effect at `compacted_index` (the bootstrap one without snapshot).
    pub membership: Membership,
    /// Durable entries `compacted_index + 1 ..`, contiguous.
    pub entries: Vec<Entry>,
    /// Highest index the state machine already reflects (at least `compacted_index`).
    pub applied: u64,
}

/// One replica of one Raft group. Feed it inputs, then drain [`RaftNode::ready`].
pub struct RaftNode {
    pub(super) cfg: Config,
    pub(super) rng: ChaCha8Rng,
    pub(super) term: u64,
    pub(super) vote: u64,
    pub(super) leader: u64,
    pub(super) role: RaftRole,
    pub(super) log: RaftLog,
    /// Configurations of the uncompacted log: the base one at the compaction point first,
    /// then one per membership entry, as (index, term, membership).
    pub(super) configs: Vec<(u64, u64, Membership)>,
    pub(super) progress: BTreeMap<u64, Progress>,
    /// Votes received in the current (pre-)election: node id to granted.
    pub(super) votes: BTreeMap<u64, bool>,
    pub(super) election_elapsed: u32,
    pub(super) heartbeat_elapsed: u32,
    /// The caller's loop tick as last fed by `set_shard_tick` (`None`: never fed; each
    /// leader then keeps its own heartbeat phase).
    pub(super) shard_tick: Option<u64>,
    /// Leader, with `shard_tick` fed: the heartbeat interval (`shard_tick / heartbeat_ticks`)
    /// of the last heartbeat.
    pub(super) heartbeat_period: u64,
    pub(super) randomized_election_ticks: u32,
    /// Target of a leadership transfer in progress (0: none) and ticks since it started.
    pub(super) transferee: u64,
    pub(super) transfer_elapsed: u32,
    /// Leader: the commit index moved since the last drain; followers learn it when the
    /// output is drained (see `send_due_commit`).
    pub(super) commit_due: bool,
    /// Leader holding commit notices (`Config::hold_commit_notices`): a follower has not
    /// been told the commit index yet; `flush_commit_notices` tells it.
    pub(super) commit_notices_owed: bool,
    /// Leader: entries were proposed since the last drain; `ready()` sends them to every
    /// follower at once, so one round's proposals cost one append per follower.
    pub(super) append_due: bool,
    pub(super) reads: ReadQueue,
    /// Follower read leases, held (follower) and granted (leader): see `follower_lease.rs`.
    pub(super) leases: FollowerLeases,
    /// Ticks counted while leader (a lease is also bounded in ticks, see `lease_valid`).
    pub(super) leader_ticks: u64,
    /// The caller's monotonic clock as last fed by `set_now` (lease reads measure with it).
    pub(super) now: u64,
    /// Lease reads are off for the rest of this term (a TimeoutNow was sent).
    pub(super) lease_revoked: bool,
    /// Lease reads: after a restart, refuse votes for one election timeout, as if a leader
    /// had just been heard (a lease granted before the crash may still run).
    pub(super) startup_quiet: bool,
    /// The group is idle and this replica skips heartbeats (leader) or its election timer.
    pub(super) quiesced: bool,
    /// The latest snapshot the state machine provided or the leader sent.
    pub(super) snapshot: Option<Snapshot>,
    /// Follower: a snapshot being received, and one handed to the caller to install.
    pub(super) incoming: Option<Incoming>,
    pub(super) installing: Option<Snapshot>,
    pub(super) out_snapshot: Option<Snapshot>,
    // Outputs accumulated until the next `ready()`.
    pub(super) out_messages: Vec<Message>,
    pub(super) out_persisted_messages: Vec<Message>,
    pub(super) out_events: Vec<RaftEvent>,
    pub(super) last_hard_state: HardState,
    pub(super) last_reported_leader: (u64, u64),
    /// Always-on invariant checks; a violation halts the replica (see `invariants.rs`).
    pub(super) invariants: Invariants,
    /// While a message is stepped: its sender and the sender's incarnation, which every
    /// message to that sender carries as `to_incarnation` (answers reach the replica asked).
    pub(super) answering: Option<(u64, u64)>,
    /// The leader this replica follows and its incarnation, from its messages (a follower
    /// whose configuration lags may not list the leader's current replica yet).
    pub(super) leader_incarnation: (u64, u64),
    /// Messages dropped because they were addressed to another incarnation of this node, or
    /// were answers from an incarnation of a member that its configuration does not hold.
    pub(super) incarnation_drops: u64,
}

impl RaftNode {
    /// A fresh replica of a group whose initial configuration is `membership`.
    pub fn new(cfg: Config, membership: Membership, rng: ChaCha8Rng) -> Result<Self, RaftError> {
        let recovered = Recovered {
            hard_state: HardState::default(),
            compacted_index: 0,
            compacted_term: 0,
            membership,
            entries: Vec::new(),
            applied: 0,
        };
        Self::restart(cfg, recovered, rng)
    }

    /// Rebuilds a replica from what its durable storage holds. If it recovered a snapshot,
    /// hand its data back with [`RaftNode::snapshot_taken`] so it can serve lagging peers.
    ///
    /// Seed `rng` differently at every start (of [`RaftNode::new`] too), e.g. from the clock:
    /// besides election timeouts it numbers the read batches a follower forwards to the
    /// leader, and an incarnation that repeated an earlier one's numbers could take a late
    /// answer meant for that one as its own, and serve a stale read.
    pub fn restart(cfg: Config, recovered: Recovered, rng: ChaCha8Rng) -> Result<Self, RaftError> {
        cfg.validate()?;
        let Recovered { hard_state, compacted_index, compacted_term, membership, entries, applied } = recovered;
        let mut log = RaftLog::recovered(compacted_index, compacted_term, entries, hard_state.commit)?;
        if applied < compacted_index || applied > log.committed() {
            return Err(RaftError::CorruptState(format!("applied index {applied} outside [{compacted_index}, {}]", log.committed())));
        }
        log.take_committed(applied);
        if log.last_term() > hard_state.term {
            return Err(RaftError::CorruptState(format!(
                "log holds term {} beyond the hard state's term {}",
                log.last_term(),
                hard_state.term
            )));
        }
        let mut configs = vec![(compacted_index, compacted_term, membership)];
        for entry in log.iter() {
            if EntryKind::try_from(entry.kind).is_err() {
                return Err(RaftError::CorruptState(format!("recovered entry {} has unknown kind {}", entry.index, entry.kind)));
            }
            if entry.kind == EntryKind::Membership as i32 {
                configs.push((entry.index, entry.term, Membership::decode(&entry.data)?));
            }
        }
        // Follower read batches of this incarnation are numbered from a random start (see
        // `ReadQueue`), drawn from a separate stream so the election timeouts stay as seeded.
        let first_batch = {
            let mut batch_rng = rng.clone();
            batch_rng.set_stream(rng.get_stream().wrapping_add(1));
            batch_rng.random::<u64>() >> 1
        };
        let mut node = RaftNode {
            cfg,
            rng,
            term: hard_state.term,
            vote: hard_state.vote,
            leader: 0,
            role: RaftRole::Follower,
            log,
            configs,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            shard_tick: None,
            heartbeat_period: 0,
            randomized_election_ticks: 0,
            transferee: 0,
            transfer_elapsed: 0,
            commit_due: false,
            commit_notices_owed: false,
            append_due: false,
            reads: ReadQueue::new(first_batch),
            leases: FollowerLeases::default(),
            leader_ticks: 0,
            now: 0,
            lease_revoked: false,
            startup_quiet: false,
            quiesced: false,
            snapshot: None,
            incoming: None,
            installing: None,
            out_snapshot: None,
            out_messages: Vec::new(),
            out_persisted_messages: Vec::new(),
            out_events: Vec::new(),
            last_hard_state: hard_state,
            last_reported_leader: (hard_state.term, 0),
            invariants: Invariants::default(),
            answering: None,
            leader_incarnation: (0, 0),
            incarnation_drops: 0,
        };
        node.startup_quiet = node.cfg.lease_reads;
        // A lease this replica granted before it stopped may still run.
        node.note_foreign_leases(0);
        node.reset_election_timer();
        Ok(node)
    }

    // ----- observers -----

    pub fn id(&self) -> u64 {
        self.cfg.id
    }
    pub fn group_id(&self) -> u32 {
        self.cfg.group_id
    }
    pub fn role(&self) -> RaftRole {
        self.role
    }
    pub fn term(&self) -> u64 {
        self.term
    }
    /// The known leader (0: none).
    pub fn leader(&self) -> u64 {
        self.leader
    }
    pub fn commit_index(&self) -> u64 {
        self.log.committed()
    }
    pub fn applied_index(&self) -> u64 {
        self.log.applied()
    }
    pub fn last_index(&self) -> u64 {
        self.log.last_index()
    }
    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed() }
    }
    /// The configuration in effect (the latest in the log, committed or not).
    pub fn membership(&self) -> &Membership {
        &self.configs.last().expect("configs always holds the base configuration").2
    }
    /// On a leader: the highest index `peer` acknowledged as durably matching (None when
    /// not leader or `peer` is not a member).
    pub fn match_index(&self, peer: u64) -> Option<u64> {
        if self.role != RaftRole::Leader {
            return None;
        }
        if peer == self.cfg.id {
            return Some(self.log.persisted());
        }
        self.progress.get(&peer).map(|p| p.match_index)
    }
    /// Index of the last entry dropped from memory (covered by the latest snapshot).
    pub fn compacted_index(&self) -> u64 {
        self.log.compacted_index()
    }
    /// Term of the entry at `index`, if held (or at the compaction point).
    pub fn entry_term(&self, index: u64) -> Option<u64> {
        self.log.term(index)
    }
    /// The uncompacted entries held in memory.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.log.iter()
    }
    /// This replica's role in the configuration in effect (None: not a member).
    pub fn member_role(&self) -> Option<Role> {
        self.role_in(self.membership())
    }

    /// This replica's role in `membership`: the role of this node's id there, if the member
    /// is this replica (its incarnation), else None. A joining replica can install a
    /// snapshot whose configuration lists an earlier replica of its node, say as a witness;
    /// taking that role for its own, it skipped the committed entries that reached it before
    /// the entry adding it, then served reads from the state they should have changed (sim
    /// seed 8589962636, eager rejoins).
    pub fn role_in(&self, membership: &Membership) -> Option<Role> {
        let id = self.cfg.id;
        membership.role(id).filter(|_| membership.incarnation(id) == self.cfg.incarnation)
    }

    // ----- inputs -----

    /// Appends `payloads` as normal entries. Returns the index range `(first, last)`; an
    /// empty batch returns `(last + 1, last)`.
    pub fn propose(&mut self, payloads: impl IntoIterator<Item = Bytes>) -> Result<(u64, u64), RaftError> {
        self.check_can_propose()?;
        self.wake();
        let first = self.log.last_index() + 1;
        let term = self.term;
        let mut next = first;
        let entries: Vec<Entry> = payloads
            .into_iter()
            .map(|data| {
                let entry = Entry { index: next, term, kind: EntryKind::Normal as i32, data };
                next += 1;
                entry
            })
            .collect();
        let uncommitted = (self.log.last_index() - self.log.committed()) as usize + entries.len();
        if uncommitted > self.cfg.max_uncommitted_entries {
            return Err(RaftError::ProposalQueueFull);
        }
        self.log.append_new(entries);
        // Sent from `ready()`: every proposal of this round leaves in one append per follower.
        self.append_due = true;
        Ok((first, next - 1))
    }

    pub(super) fn check_can_propose(&self) -> Result<(), RaftError> {
        self.refuse_if_halted()?;
        if self.role != RaftRole::Leader {
            return Err(RaftError::NotLeader { leader: self.leader });
        }
        if self.transferee != 0 {
            return Err(RaftError::Transfer(format!("leadership is moving to node {}; propose there", self.transferee)));
        }
        if self.is_leaving() {
            return Err(RaftError::Transfer("this leader is no voter of the committed configuration; it hands over to a voter".into()));
        }
        Ok(())
    }

    /// Leader: the committed configuration (the latest one) no longer has it as a voter.
    /// It leads on only until a voter holds its whole log (see `maybe_hand_over`).
    pub(super) fn is_leaving(&self) -> bool {
        self.role == RaftRole::Leader && self.member_role() != Some(Role::Voter) && self.latest_config_index() <= self.log.committed()
    }

    /// The index of the entry of the latest configuration (of the base one: its index).
    pub(super) fn latest_config_index(&self) -> u64 {
        self.configs.last().map_or(0, |c| c.0)
    }

    /// Entries up to (`index`, `term`) are durable. Stale acknowledgements are ignored.
    pub fn persisted(&mut self, index: u64, term: u64) {
        if self.log.persisted_to(index, term) && self.role == RaftRole::Leader {
            self.maybe_commit();
        }
    }

    /// Proposes the complete configuration `next`, which must differ from the one in effect
    /// by at most one voting member. Returns the index of the membership entry. Members that
    /// stay keep their incarnation; a member `next` adds gets the incarnation `next` gives it
    /// (the one the joining node's replica was started with).
    pub fn propose_membership_change(&mut self, next: Membership) -> Result<u64, RaftError> {
        self.check_can_propose()?;
        self.wake();
        let pending = self.latest_config_index();
        if pending > self.log.committed() {
            return Err(RaftError::MembershipChange(format!("the change at index {pending} has not committed yet")));
        }
        if self.log.term(self.log.committed()) != Some(self.term) {
            return Err(RaftError::MembershipChange("the leader has not committed an entry of its term yet".into()));
        }
        let next = self.membership().keeping_incarnations_of(next);
        self.membership().check_single_change(&next)?;
        let index = self.log.last_index() + 1;
        let entry = Entry { index, term: self.term, kind: EntryKind::Membership as i32, data: next.encode() };
        self.log.append_new([entry]);
        self.push_config(index, self.term, next);
        self.broadcast_append();
        Ok(index)
    }

    /// Starts moving leadership to voter `to`: catch it up, then tell it to campaign now.
    pub fn transfer_leadership(&mut self, to: u64) -> Result<(), RaftError> {
        if self.role != RaftRole::Leader {
            return Err(RaftError::NotLeader { leader: self.leader });
        }
        if to == self.cfg.id {
            return Err(RaftError::Transfer("this node is already the leader".into()));
        }
        if self.membership().role(to) != Some(Role::Voter) {
            return Err(RaftError::Transfer(format!("node {to} is not a voter of this group")));
        }
        self.wake();
        self.transferee = to;
        self.transfer_elapsed = 0;
        let caught_up = self.progress.get(&to).is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.send_timeout_now(to);
        } else {
            self.send_append(to);
        }
        Ok(())
    }

    /// Drops in-memory entries up to `index` (clamped to the latest snapshot from
    /// [`RaftNode::snapshot_taken`]), keeping the configuration in effect there.
    pub fn compact(&mut self, index: u64) {
        let index = index.min(self.snapshot.as_ref().map_or(0, |s| s.index));
        if index <= self.log.compacted_index() {
            return;
        }
        self.log.compact_to(index);
        let keep_from = self.configs.iter().rposition(|c| c.0 <= index).unwrap_or(0);
        self.configs.drain(..keep_from);
        let term = self.log.term(index).unwrap_or(0);
        let base = &mut self.configs[0];
        base.0 = index;
        base.1 = term;
    }

    /// True if `ready()` would return something.
    pub fn has_ready(&self) -> bool {
        if self.halted().is_some() {
            return false;
        }
        !self.out_messages.is_empty()
            || !self.out_persisted_messages.is_empty()
            || !self.out_events.is_empty()
            || self.hard_state() != self.last_hard_state
            || self.log.has_unstable()
            || (self.applies() && self.log.committed().min(self.log.persisted()) > self.log.applied())
            || self.reads.has_ready()
            || self.reads.output_due()
            || self.commit_due
            || self.append_due
            || self.out_snapshot.is_some()
    }

    /// Drains everything accumulated since the last call.
    pub fn ready(&mut self) -> Ready {
        if let Some(halted) = self.halted_ready() {
            return halted;
        }
        self.send_read_batch();
        self.send_due_read_round();
        self.send_due_appends();
        self.send_due_commit();
        self.note_commit_sent();
        let hard_state = self.hard_state();
        let hard_state = if hard_state != self.last_hard_state {
            self.last_hard_state = hard_state;
            Some(hard_state)
        } else {
            None
        };
        let witness = self.member_role() == Some(Role::Witness);
        let committed = if self.applies() { self.log.take_committed(u64::MAX) } else { Vec::new() };
        for entry in &committed {
            if entry.kind == EntryKind::Membership as i32 {
                self.out_events.push(RaftEvent::MembershipCommitted { index: entry.index });
            }
        }
        Ready {
            messages: std::mem::take(&mut self.out_messages),
            hard_state,
            entries: self.log.take_unstable(),
            persisted_messages: std::mem::take(&mut self.out_persisted_messages),
            committed_entries: if witness { Vec::new() } else { committed },
            read_states: self.reads.take_ready(),
            events: std::mem::take(&mut self.out_events),
            snapshot: self.out_snapshot.take(),
        }
    }

    // ----- shared helpers -----

    /// Committed entries are handed to the caller (or, on a witness, skipped) only while
    /// this replica is a member of the configuration in effect. One that no longer is (its
    /// removal is in its log) may have been a witness holding entries without payloads; one
    /// that is not yet (the entry adding it has not reached it, and the configuration may
    /// list an earlier replica of its node) does not know its role. Either waits: the
    /// entries are applied once it is a member again, or never.
    fn applies(&self) -> bool {
        self.member_role().is_some()
    }

    pub(super) fn new_message(&self, to: u64, msg_type: MessageType) -> Message {
        Message {
            group_id: self.cfg.group_id,
            from: self.cfg.id,
            to,
            term: self.term,
            msg_type: msg_type as i32,
            from_incarnation: self.cfg.incarnation,
            to_incarnation: self.incarnation_of(to),
            ..Message::default()
        }
    }

    pub(super) fn set_leader(&mut self, leader: u64) {
        self.leader = leader;
        if self.last_reported_leader != (self.term, leader) {
            self.last_reported_leader = (self.term, leader);
            self.out_events.push(RaftEvent::LeaderChanged { term: self.term, leader });
        }
    }

    pub(super) fn set_role(&mut self, role: RaftRole) {
        if self.role != role {
            self.role = role;
            self.out_events.push(RaftEvent::RoleChanged { role, term: self.term });
        }
    }

    pub(super) fn become_follower(&mut self, term: u64, leader: u64) {
        if term > self.term {
            self.term = term;
            self.vote = 0;
        }
        self.abort_snapshot_sends();
        self.set_role(RaftRole::Follower);
        self.set_leader(leader);
        self.quiesced = false;
        self.reset_election_timer();
        self.progress.clear();
        self.votes.clear();
        self.transferee = 0;
        self.reads.clear();
        self.leases.drop_held();
    }

    /// Records the configuration of a membership entry just placed in the log.
    pub(super) fn push_config(&mut self, index: u64, term: u64, membership: Membership) {
        self.configs.push((index, term, membership.clone()));
        self.out_events.push(RaftEvent::MembershipChanged { index, membership });
        self.on_config_changed();
    }

    /// Drops configurations whose entries were truncated away, then records those of `new`.
    pub(super) fn sync_configs(&mut self, new: &[Entry]) -> Result<(), RaftError> {
        let before = self.configs.len();
        let log = &self.log;
        let mut keep = 1;
        while keep < self.configs.len() {
            let (index, term, _) = &self.configs[keep];
            if log.term(*index) != Some(*term) {
                break;
            }
            keep += 1;
        }
        self.configs.truncate(keep);
        let last_known = self.latest_config_index();
        let rolled_back = self.configs.len() < before;
        for entry in new {
            if entry.kind == EntryKind::Membership as i32 && entry.index > last_known && self.log.term(entry.index) == Some(entry.term) {
                let membership = Membership::decode(&entry.data)?;
                self.push_config(entry.index, entry.term, membership);
            }
        }
        if rolled_back {
            let (index, _, membership) = self.configs.last().expect("base configuration").clone();
            self.out_events.push(RaftEvent::MembershipChanged { index, membership });
            self.on_config_changed();
        }
        Ok(())
    }

    /// Brings leader state in line with the configuration in effect.
    fn on_config_changed(&mut self) {
        if self.role != RaftRole::Leader {
            return;
        }
        let membership = self.membership();
        let members: Vec<(u64, u64)> = membership.members().map(|(id, _)| (id, membership.incarnation(id))).collect();
        let next = self.log.last_index() + 1;
        // A member whose replica changed (another incarnation) starts from scratch.
        self.progress.retain(|id, p| members.contains(&(*id, p.incarnation)));
        for (id, incarnation) in members {
            if id != self.cfg.id {
                self.progress.entry(id).or_insert_with(|| Progress::for_incarnation(next, incarnation));
            }
        }
    }
}
