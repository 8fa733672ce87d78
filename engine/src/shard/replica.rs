//! One replica of one Raft group on a shard: the Raft node, the state machine it applies,
//! and the requests waiting on them — proposals by log index, linearizable reads by read
//! context, and watchers by election.
//!
//! Synchronous and I/O-free. The shard runtime feeds it inputs, takes [`Ready`] from
//! [`Replica::take_ready`], persists and sends what that asks, then hands the durable part
//! back through [`Replica::apply_ready`]. Every reply is delivered exactly once: with the
//! applied result, or with a [`ShardError`] when the outcome is known not to come.
//!
//! A Raft node that halts on a broken invariant stops this replica: everything waiting
//! fails with [`ShardError::Unavailable`] naming the invariant, every later request is
//! refused the same way, and the shard's other groups serve on.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::raft::{EntryKind, RaftError, RaftEvent, RaftNode, RaftRole, Ready};
use crate::sm::{
    self, Command, ElectionTerm, Notification, Output, PendingQueries, PrimitiveId, PrimitiveRef, SessionId, SmError, StateMachine,
};

use super::error::ShardError;

/// The most reads one replica holds while they wait for Raft or for their index.
pub const MAX_HELD_READS: usize = 65_536;

/// Ticks a read waits for the leader to confirm its index before it is failed as lost
/// (its request or the answer was dropped with a connection); the caller may retry.
pub const READ_CONFIRM_TICKS: u64 = 200;

/// A one-shot reply callback. Runs on the replica's shard; a cross-shard caller's callback
/// forwards the value to the caller's shard.
pub type Reply<T> = Box<dyn FnOnce(T)>;

/// A proposal's outcome: the index it was applied at and the state machine's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub index: u64,
    pub result: Result<Output, SmError>,
}

/// A read's outcome: the index the state was read at and the election state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadTerm {
    pub index: u64,
    pub result: Result<ElectionTerm, SmError>,
}

/// What a read asks of the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TermQuery {
    /// Driver queries name their session, which must exist.
    pub session_id: Option<SessionId>,
    pub primitive: PrimitiveRef,
    /// The read must observe at least this index (the driver's `max_received_index`).
    pub min_index: u64,
    /// Driver queries (`QueryRequestHeaders.sequence_num`, 0: none): the read also waits
    /// until every command of `session_id` numbered below this that is in this replica's
    /// log when the read index is confirmed is applied. The Atomix driver numbers queries
    /// and commands from one counter, so the numbers below are not all commands: only
    /// those in the log are waited for.
    pub sequence_num: u64,
}

/// What a watcher hears.
#[derive(Clone, Copy, Debug)]
pub enum WatchEvent<'a> {
    /// A change of the election, in log order.
    Changed(&'a Notification),
    /// The last call: this replica can no longer serve the watch (it was removed, stopped,
    /// or no longer applies the log), and says why. The watcher is dropped afterwards.
    Ended(&'a ShardError),
}

/// Receives every change of one election, in order, and the end of the watch if this side
/// ends it. Returns false to unsubscribe (e.g. the stream ended or overflowed).
pub type Watcher = Box<dyn FnMut(WatchEvent<'_>) -> bool>;

/// What a read does once its index is applied.
enum ReadAction {
    /// Answer the query.
    Term(Reply<Result<ReadTerm, ShardError>>),
    /// Answer the query and, if the election exists, subscribe the watcher under its key in
    /// the same step, so that no change between the first state and the subscription is
    /// missed.
    Watch(Reply<Result<ReadTerm, ShardError>>, u64, Watcher),
}

struct PendingRead {
    query: TermQuery,
    action: ReadAction,
}

/// Raft, state machine and waiting requests of one group.
pub struct Replica {
    raft: RaftNode,
    sm: StateMachine,
    /// Proposals by the index of their (last) entry, with the term they were proposed in.
    proposals: BTreeMap<u64, (u64, Reply<Result<Committed, ShardError>>)>,
    /// Reads waiting for Raft to confirm a read index, by read context, with the tick
    /// they started at.
    confirming: BTreeMap<u64, (u64, PendingRead)>,
    /// Ticks seen (to bound how long a read waits for confirmation).
    ticks: u64,
    /// Reads with a confirmed index, waiting for the state machine to apply it.
    applying: PendingQueries<PendingRead>,
    next_read_id: u64,
    /// Watchers by election, each under the key its caller chose.
    watchers: BTreeMap<PrimitiveId, Vec<(u64, Watcher)>>,
    /// The election of each watcher key, for unsubscribing.
    watcher_elections: BTreeMap<u64, PrimitiveId>,
    /// Set when this replica just became leader and has not proposed its barrier yet.
    barrier_due: bool,
    /// The index of the last snapshot taken or restored (0: none).
    last_snapshot: u64,
    /// The size of that snapshot (0: none, or not known), and the bytes of entries
    /// applied since: a snapshot may wait until these outweigh it (`snapshot_due`).
    last_snapshot_bytes: u64,
    applied_bytes_since_snapshot: u64,
    /// The node this group's leadership belongs on when it is healthy (balance across
    /// nodes); the leader hands over to it once it has caught up.
    preferred_leader: Option<u64>,
    /// The Raft node halted (see `RaftNode::halted`) and everything waiting was failed.
    halted: bool,
}

/// A snapshot captured from a replica, ready to be stored.
#[derive(Clone, Debug)]
pub struct SnapshotCapture {
    pub index: u64,
    pub term: u64,
    /// An encoded `conclave.shard.v1.GroupSnapshot`.
    pub data: Bytes,
}

impl Replica {
    /// A replica of a Raft node and the state machine that reflects its applied index.
    pub fn new(raft: RaftNode, sm: StateMachine) -> Replica {
        // The state machine reflects at most what Raft handed out for applying (a witness's
        // applies nothing, so it may lag behind).
        debug_assert!(
            sm.last_applied() <= raft.applied_index(),
            "the state machine applied {} but Raft applied only {}",
            sm.last_applied(),
            raft.applied_index()
        );
        Replica {
            last_snapshot: sm.last_applied(),
            last_snapshot_bytes: 0,
            applied_bytes_since_snapshot: 0,
            raft,
            sm,
            proposals: BTreeMap::new(),
            confirming: BTreeMap::new(),
            ticks: 0,
            applying: PendingQueries::new(),
            next_read_id: 1,
            watchers: BTreeMap::new(),
            watcher_elections: BTreeMap::new(),
            barrier_due: false,
            preferred_leader: None,
            halted: false,
        }
    }

    /// Sets the node this group's leadership should live on while it is healthy.
    pub fn set_preferred_leader(&mut self, node: Option<u64>) {
        self.preferred_leader = node;
    }

    /// The voter leadership should move to now, if any: this replica leads, the preferred
    /// node is another voter, and it holds the whole log.
    pub fn rebalance_target(&self) -> Option<u64> {
        self.transfer_target(self.preferred_leader?)
    }

    /// `to`, if leadership can move there now: this replica leads, `to` is another voter,
    /// and it holds the whole log.
    pub fn transfer_target(&self, to: u64) -> Option<u64> {
        if !self.is_leader() || to == self.raft.id() || self.raft.membership().role(to) != Some(crate::raft::Role::Voter) {
            return None;
        }
        (self.raft.match_index(to) == Some(self.raft.last_index())).then_some(to)
    }

    /// The voter (other than this node) to hand leadership to: one that is not `silent`
    /// (see `shard::liveness`) if any, and of those the one holding the most of the log.
    pub fn best_successor(&self, silent: impl Fn(u64) -> bool) -> Option<u64> {
        let me = self.raft.id();
        self.raft
            .membership()
            .members()
            .filter(|(id, role)| *id != me && *role == crate::raft::Role::Voter)
            .max_by_key(|(id, _)| (!silent(*id), self.raft.match_index(*id).unwrap_or(0)))
            .map(|(id, _)| id)
    }

    pub fn raft(&self) -> &RaftNode {
        &self.raft
    }

    pub fn raft_mut(&mut self) -> &mut RaftNode {
        &mut self.raft
    }

    pub fn state_machine(&self) -> &StateMachine {
        &self.sm
    }

    pub fn is_leader(&self) -> bool {
        self.raft.role() == RaftRole::Leader
    }

    /// Proposes a command (already stamped with the leader's time).
    pub fn propose(&mut self, command: &Command, reply: Reply<Result<Committed, ShardError>>) {
        match self.raft.propose([sm::command::encode(command)]) {
            Ok((_, last)) => {
                let term = self.raft.term();
                if let Some((_, stale)) = self.proposals.insert(last, (term, reply)) {
                    // An index is only reused after a truncation, which `apply_ready` resolves
                    // first; answer the displaced waiter rather than drop it.
                    stale(Err(ShardError::LeadershipLost));
                }
            }
            Err(e) => reply(Err(ShardError::from_raft(self.raft.group_id(), e))),
        }
    }

    /// Proposes a command for another node's client: returns the (index, term) it was
    /// appended at, and `reply` gets its result once applied here (to tell that node; it
    /// also learns the result by applying the entry itself). On an error `reply` is
    /// dropped unanswered.
    pub fn propose_for_peer(&mut self, command: &Command, reply: Reply<Result<Committed, ShardError>>) -> Result<(u64, u64), ShardError> {
        match self.raft.propose([sm::command::encode(command)]) {
            Ok((_, last)) => {
                let term = self.raft.term();
                if let Some((_, stale)) = self.proposals.insert(last, (term, reply)) {
                    stale(Err(ShardError::LeadershipLost));
                }
                Ok((last, term))
            }
            Err(e) => Err(ShardError::from_raft(self.raft.group_id(), e)),
        }
    }

    /// The leader applied the entry at (`index`, `term`), which this node tracks for its
    /// client, with `output`: answers the client now. False when nothing here waits for
    /// that entry (answered already by applying it, or another entry took the index).
    pub fn answer_from_leader(&mut self, index: u64, term: u64, output: sm::Output) -> bool {
        if self.proposals.get(&index).is_none_or(|(tracked, _)| *tracked != term) {
            return false;
        }
        let Some((_, reply)) = self.proposals.remove(&index) else {
            return false;
        };
        reply(Ok(Committed { index, result: Ok(output) }));
        true
    }

    /// Waits for the entry a leader appended at (`index`, `term`) for this node's client:
    /// `reply` gets the result of applying it, or [`ShardError::LeadershipLost`] if another
    /// entry takes that index. An index already applied can no longer be matched.
    pub fn track(&mut self, index: u64, term: u64, reply: Reply<Result<Committed, ShardError>>) {
        if index <= self.sm.last_applied() {
            reply(Err(ShardError::LeadershipLost));
            return;
        }
        if let Some((_, stale)) = self.proposals.insert(index, (term, reply)) {
            stale(Err(ShardError::LeadershipLost));
        }
    }

    /// Starts a linearizable read of an election.
    pub fn read(&mut self, query: TermQuery, reply: Reply<Result<ReadTerm, ShardError>>) {
        self.start_read(PendingRead { query, action: ReadAction::Term(reply) });
    }

    /// Starts a watch: a linearizable read of the election's current state, then every
    /// change after it. `first` gets the current state (or the error); `watcher` every
    /// later change while it returns true.
    /// `key` names the subscription for [`Replica::unwatch`]; the caller keeps keys unique.
    pub fn watch(&mut self, query: TermQuery, key: u64, first: Reply<Result<ReadTerm, ShardError>>, watcher: Watcher) {
        self.start_read(PendingRead { query, action: ReadAction::Watch(first, key, watcher) });
    }

    /// Ends the subscription `key` (its client left). Unknown keys are ignored: the watch
    /// may have ended on its own already.
    pub fn unwatch(&mut self, key: u64) {
        let Some(election) = self.watcher_elections.remove(&key) else {
            return;
        };
        if let Some(list) = self.watchers.get_mut(&election) {
            list.retain(|(k, _)| *k != key);
            if list.is_empty() {
                self.watchers.remove(&election);
            }
        }
    }

    fn start_read(&mut self, read: PendingRead) {
        // A read waits for its index (a follower may be behind what the client saw), so the
        // number held is bounded: past it, reads are refused rather than memory grown.
        if self.confirming.len() + self.applying.len() >= MAX_HELD_READS {
            let error = ShardError::Overloaded(format!(
                "partition {} already holds {MAX_HELD_READS} reads waiting for their index",
                self.raft.group_id()
            ));
            fail_read(read, error);
            return;
        }
        let id = self.next_read_id;
        self.next_read_id += 1;
        match self.raft.read_index(Bytes::copy_from_slice(&id.to_be_bytes())) {
            Ok(()) => {
                self.confirming.insert(id, (self.ticks, read));
            }
            Err(e) => {
                let error = ShardError::from_raft(self.raft.group_id(), e);
                fail_read(read, error);
            }
        }
    }

    /// True when the node has output for the runtime.
    pub fn has_ready(&self) -> bool {
        self.raft.has_ready()
    }

    /// Drains the Raft node's output. Reacts to role changes first: a replica that became
    /// leader owes a barrier; one that lost leadership fails the reads it cannot confirm.
    pub fn take_ready(&mut self) -> Ready {
        let ready = self.raft.ready();
        if let Some(why) = self.raft.halted() {
            if !self.halted {
                // The Raft node stopped on a broken invariant: nothing it holds is answered
                // any more, and every later request is refused by the node itself.
                self.halted = true;
                let group = self.raft.group_id();
                tracing::error!(group, "this node stops serving group {group}: {why}");
                self.fail_all(ShardError::Unavailable(format!(
                    "group {group} stopped on this node (a Raft invariant broke: {why}); use another node, or restart this one"
                )));
            }
            return ready;
        }
        for event in &ready.events {
            match event {
                RaftEvent::RoleChanged { role, .. } if *role == RaftRole::Leader => self.barrier_due = true,
                RaftEvent::RoleChanged { .. } => {
                    self.barrier_due = false;
                    self.fail_confirming();
                }
                // A follower's reads wait on the leader it asked; another one will not answer.
                RaftEvent::LeaderChanged { .. } if !self.is_leader() => self.fail_confirming(),
                // A replica that is no member any more, or a witness, applies nothing:
                // its watchers would never hear another change.
                RaftEvent::MembershipChanged { membership, .. }
                    if !self.watchers.is_empty() && self.raft.role_in(membership).is_none_or(|role| role == crate::raft::Role::Witness) =>
                {
                    let group = self.raft.group_id();
                    self.end_watchers(&ShardError::Unavailable(format!(
                        "this node's replica of group {group} no longer applies its log (it left the group or became a witness)"
                    )));
                }
                _ => {}
            }
        }
        ready
    }

    fn fail_confirming(&mut self) {
        let leader = self.raft.leader();
        let group = self.raft.group_id();
        for (_, (_, read)) in std::mem::take(&mut self.confirming) {
            fail_read(read, ShardError::NotLeader { group, leader });
        }
    }

    /// Advances the group by one tick: Raft's timers, and the bound on reads waiting for
    /// their index to be confirmed.
    pub fn tick(&mut self) {
        self.raft.tick();
        self.ticks += 1;
        let Some(cutoff) = self.ticks.checked_sub(READ_CONFIRM_TICKS) else { return };
        // Read ids grow with time, so the oldest reads come first.
        while let Some(entry) = self.confirming.first_entry() {
            if entry.get().0 > cutoff {
                break;
            }
            let (_, read) = entry.remove();
            fail_read(read, ShardError::LeadershipLost);
        }
    }

    /// True while the group needs every tick: its Raft replica is not quiesced, or a read
    /// waits for its index to be confirmed (bounded in ticks). A quiet group is ticked only
    /// when something wakes it.
    pub fn needs_ticks(&self) -> bool {
        !self.raft.is_quiesced() || !self.confirming.is_empty()
    }

    /// True once after this replica became leader: the runtime then proposes
    /// `sm::command::leader_barrier(now)` so the state machine learns the new term's time.
    pub fn take_barrier_due(&mut self) -> bool {
        std::mem::take(&mut self.barrier_due) && self.is_leader()
    }

    /// The earliest time (ms, the leader's clock) at which an open session may expire, so a
    /// leader knows when a barrier entry is needed to let expiry happen without traffic.
    pub fn next_session_deadline_ms(&self) -> Option<u64> {
        self.sm.sessions().iter().map(|s| s.deadline_ms()).min()
    }

    /// Applies the committed entries of a Ready whose persistence is done, answers the
    /// proposals and reads they settle, and notifies watchers.
    pub fn apply_committed(&mut self, ready: &mut Ready) {
        for entry in ready.committed_entries.drain(..) {
            let index = entry.index;
            self.applied_bytes_since_snapshot += entry.data.len() as u64;
            // Proposals at lower indexes whose entries were replaced never get an answer
            // of their own: they lost their place.
            while let Some((&waiting, _)) = self.proposals.first_key_value() {
                if waiting >= index {
                    break;
                }
                let (_, (_, reply)) = self.proposals.pop_first().expect("checked non-empty");
                reply(Err(ShardError::LeadershipLost));
            }
            let proposal = match self.proposals.first_key_value() {
                Some((&i, _)) if i == index => self.proposals.pop_first().map(|(_, p)| p),
                _ => None,
            };
            if entry.kind != EntryKind::Normal as i32 {
                self.sm.skip(index);
                if let Some((_, reply)) = proposal {
                    reply(Err(ShardError::LeadershipLost));
                }
                continue;
            }
            let applied = self.sm.apply_bytes(index, entry.term, &entry.data);
            for notification in &applied.notifications {
                self.notify(notification);
            }
            if let Some((term, reply)) = proposal {
                if term == entry.term {
                    reply(Ok(Committed { index, result: applied.result }));
                } else {
                    reply(Err(ShardError::LeadershipLost));
                }
            }
        }
        debug_assert!(self.sm.last_applied() <= self.raft.commit_index());
        for state in ready.read_states.drain(..) {
            let Some(id) = state.context.as_ref().try_into().ok().map(u64::from_be_bytes) else {
                continue;
            };
            if let Some((_, read)) = self.confirming.remove(&id) {
                let min = state.index.max(read.query.min_index).max(self.session_commands_before(&read.query));
                if let Some(read) = self.applying.submit(self.sm.last_applied(), min, read) {
                    self.answer(read);
                }
            }
        }
        for read in self.applying.release(self.sm.last_applied()) {
            self.answer(read);
        }
    }

    /// The index of the last entry not yet applied that carries a command of the query's
    /// session numbered below its `sequence_num` (0: none).
    fn session_commands_before(&self, query: &TermQuery) -> u64 {
        let (Some(session_id), true) = (query.session_id, query.sequence_num > 1) else {
            return 0;
        };
        let applied = self.sm.last_applied();
        self.raft
            .entries()
            .filter(|e| e.index > applied && e.kind == EntryKind::Normal as i32)
            .filter(|e| {
                sm::command::sequenced_by(&e.data).is_some_and(|(session, sequence)| session == session_id && sequence < query.sequence_num)
            })
            .map(|e| e.index)
            .max()
            .unwrap_or(0)
    }

    fn answer(&mut self, read: PendingRead) {
        let index = self.sm.last_applied();
        let result = self.sm.query_term(read.query.session_id, &read.query.primitive);
        match read.action {
            ReadAction::Term(reply) => reply(Ok(ReadTerm { index, result })),
            ReadAction::Watch(first, key, watcher) => {
                let primitive_id = match &read.query.primitive {
                    PrimitiveRef::Id(id) => Some(*id),
                    PrimitiveRef::Name(name) => self.sm.registry().id_of(name),
                };
                let ok = result.is_ok();
                first(Ok(ReadTerm { index, result }));
                if let (true, Some(id)) = (ok, primitive_id) {
                    self.watchers.entry(id).or_default().push((key, watcher));
                    self.watcher_elections.insert(key, id);
                }
            }
        }
    }

    fn notify(&mut self, notification: &Notification) {
        if let Some(list) = self.watchers.get_mut(&notification.primitive_id) {
            let elections = &mut self.watcher_elections;
            list.retain_mut(|(key, w)| {
                let keep = w(WatchEvent::Changed(notification));
                if !keep {
                    elections.remove(key);
                }
                keep
            });
            if list.is_empty() {
                self.watchers.remove(&notification.primitive_id);
            }
        }
    }

    /// The index of the last snapshot taken, installed or recovered (0: none).
    pub fn last_snapshot(&self) -> u64 {
        self.last_snapshot
    }

    /// True when `every` entries were applied since the last snapshot and, with a
    /// `log_ratio` above 0, their bytes weigh at least `log_ratio` times that snapshot: a
    /// snapshot then costs at most 1/`log_ratio` of writing the log it lets the group drop,
    /// however large the state is next to its commands.
    pub fn snapshot_due(&self, every: u64, log_ratio: u64) -> bool {
        self.sm.last_applied().saturating_sub(self.last_snapshot) >= every
            && self.applied_bytes_since_snapshot >= self.last_snapshot_bytes.saturating_mul(log_ratio)
    }

    /// A snapshot of `bytes` was taken or restored here: the log since it is weighed
    /// against it from now on.
    pub fn note_snapshot_size(&mut self, bytes: usize) {
        self.last_snapshot_bytes = bytes as u64;
        self.applied_bytes_since_snapshot = 0;
    }

    /// Captures the state at the applied index, with the configuration in effect there.
    /// Returns None while a membership change is in the log above the applied index (the
    /// configuration at the index is then not the latest one), and on a witness, which has
    /// no state machine. Followers that fall behind the snapshot are sent it by Raft.
    pub fn capture_snapshot(&self) -> Option<SnapshotCapture> {
        let index = self.sm.last_applied();
        let membership = self.raft.membership();
        if self.is_witness() {
            return None;
        }
        let pending_change = self.raft.entries().any(|e| e.index > index && e.kind == EntryKind::Membership as i32);
        if pending_change || index <= self.last_snapshot {
            return None;
        }
        let term = self.raft.entry_term(index)?;
        let data = super::storage::encode_envelope(membership, &self.sm);
        Some(SnapshotCapture { index, term, data })
    }

    /// A captured snapshot is durable: hand it to Raft (which sends it to followers that
    /// fall behind it) and drop the in-memory entries it covers except the last `tail`,
    /// which a follower slightly behind can still be sent as entries rather than as the
    /// whole snapshot.
    pub fn snapshot_saved(&mut self, capture: &SnapshotCapture, tail: u64) -> Result<(), ShardError> {
        self.raft.snapshot_taken(capture.index, capture.data.clone()).map_err(|e| ShardError::from_raft(self.raft.group_id(), e))?;
        self.last_snapshot = self.last_snapshot.max(capture.index);
        self.raft.compact(capture.index.saturating_sub(tail));
        Ok(())
    }

    /// True when this replica is a witness: it keeps log metadata only and runs no state
    /// machine.
    pub fn is_witness(&self) -> bool {
        self.raft.member_role() == Some(crate::raft::Role::Witness)
    }

    /// Replaces the state machine with one restored from a snapshot the leader sent (at
    /// `index`, already durable), before Raft is told it is installed. Proposals waiting
    /// at or below `index` lose their place (their outcome is unknown); watchers of an
    /// election whose state the snapshot changed are told the new state, once. `bytes` is
    /// the snapshot's size, which the next local snapshot waits for the log to outweigh.
    pub fn install_snapshot(&mut self, sm: StateMachine, index: u64, bytes: usize) {
        while let Some((&waiting, _)) = self.proposals.first_key_value() {
            if waiting > index {
                break;
            }
            let (_, (_, reply)) = self.proposals.pop_first().expect("checked non-empty");
            reply(Err(ShardError::LeadershipLost));
        }
        // The changes a watcher missed arrive as one: the election's state in the snapshot,
        // if it differs from the state the watcher last heard.
        let watched: Vec<(PrimitiveId, Option<ElectionTerm>)> =
            self.watchers.keys().map(|&id| (id, self.sm.query_term(None, &PrimitiveRef::Id(id)).ok())).collect();
        self.sm = sm;
        self.last_snapshot = self.last_snapshot.max(index);
        self.note_snapshot_size(bytes);
        for (id, before) in watched {
            let name = self.sm.registry().get(id).map(|p| p.name.clone());
            let (Some(name), Ok(term)) = (name, self.sm.query_term(None, &PrimitiveRef::Id(id))) else {
                continue;
            };
            if before.as_ref() != Some(&term) {
                self.notify(&Notification { index, primitive_id: id, name, term });
            }
        }
        for read in self.applying.release(self.sm.last_applied()) {
            self.answer(read);
        }
    }

    /// Proposals appended here (as leader) still waiting for their entry to apply.
    pub fn pending_proposals(&self) -> usize {
        self.proposals.len()
    }

    /// The number of registered watchers (for metrics and tests).
    pub fn watcher_count(&self) -> usize {
        self.watchers.values().map(Vec::len).sum()
    }

    /// Fails every waiting request and ends every watch (the shard is stopping, the replica
    /// is removed or halted).
    pub fn fail_all(&mut self, error: ShardError) {
        for (_, (_, reply)) in std::mem::take(&mut self.proposals) {
            reply(Err(error.clone()));
        }
        for (_, (_, read)) in std::mem::take(&mut self.confirming) {
            fail_read(read, error.clone());
        }
        for read in self.applying.drain() {
            fail_read(read, error.clone());
        }
        self.end_watchers(&error);
    }

    /// Ends every watch, telling each watcher why.
    fn end_watchers(&mut self, error: &ShardError) {
        for (_, list) in std::mem::take(&mut self.watchers) {
            for (_, mut watcher) in list {
                watcher(WatchEvent::Ended(error));
            }
        }
        self.watcher_elections.clear();
    }
}

fn fail_read(read: PendingRead, error: ShardError) {
    match read.action {
        ReadAction::Term(reply) | ReadAction::Watch(reply, _, _) => reply(Err(error)),
    }
}

impl ShardError {
    /// The shard-level meaning of a Raft refusal.
    pub fn from_raft(group: u32, e: RaftError) -> ShardError {
        match e {
            RaftError::NotLeader { leader } => ShardError::NotLeader { group, leader },
            // Leadership is moving: the new leader takes requests shortly.
            RaftError::Transfer(_) => ShardError::NotLeader { group, leader: 0 },
            RaftError::ProposalQueueFull => {
                ShardError::Overloaded(format!("group {group} has too many uncommitted proposals; retry shortly"))
            }
            // Permanent: the same change will be refused again.
            RaftError::InvalidMembership(why) => ShardError::Invalid(format!("group {group}: configuration refused: {why}")),
            other => ShardError::Unavailable(format!("group {group}: {other}")),
        }
    }
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
