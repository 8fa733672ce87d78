//! The shard runtime: one task per shard that owns the shard's groups (each a
//! [`GroupSlot`](super::groups::GroupSlot): replica plus bookkeeping) and its log, and
//! drives them — requests in, ticks, Raft output out, one durable write per round for every
//! group (group commit), committed entries applied, waiting requests answered.
//!
//! This file holds the runtime's state, its construction and the handling of each
//! [`Request`]; the loop is in `run_loop.rs`, the rounds' Raft output in `ready.rs`,
//! leadership hand-offs in `rebalance.rs`, session expiry barriers in `expiry.rs`, storage
//! upkeep in `upkeep.rs`, idle groups in `idle.rs`, peer traffic in `peer_requests.rs`; the
//! per-group state in `groups.rs`, the public types in `api.rs`, the clocks in `clock.rs`.
//!
//! Requests arrive through a bounded local channel ([`ShardHandle`]); whatever queues up
//! while a write is in flight joins the next round, so one `fdatasync` covers every group's
//! entries of that round. Peer messages leave through the [`Transport`] callback, batched
//! per destination node; Raft events leave through the [`EventSink`] callback.
//!
//! On a follower, a proposal is forwarded to the group's leader (`peer_requests.rs`); the
//! leader answers with the (index, term) it appended the command at, and the follower
//! answers its caller when it applies that entry itself.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;

use futures_lite::future;
use glommio::channels::local_channel::{self, LocalReceiver};

use crate::raft::{Outbox, Snapshot};

use super::api::{Clock, EventSink, LogStore, MonotonicClock, Request, RuntimeConfig, ShardEvent, ShardHandle, Transport};
use super::clock::{instant_clock, Monotonic};
use super::counters::ShardCounters;
use super::error::ShardError;
use super::groups::Groups;
use super::liveness::Liveness;
use super::peer::Forwarded;
use super::peer_requests::MembershipChange;
use super::ready::InFlightWrite;
use super::replica::{Replica, Reply};
use super::schedule::Schedule;

/// The runtime of one shard. Build it, take handles, then `run` it in its own task.
pub struct ShardRuntime<L: LogStore> {
    pub(super) cfg: RuntimeConfig,
    /// The hosted groups, each with all the runtime keeps about it.
    pub(super) groups: Groups,
    pub(super) log: L,
    pub(super) outbox: Outbox,
    pub(super) transport: Transport,
    pub(super) events: EventSink,
    pub(super) clock: Clock,
    pub(super) monotonic: Monotonic,
    pub(super) receiver: LocalReceiver<Request>,
    handle: ShardHandle,
    /// Requests forwarded to leaders on other nodes, and messages queued for peers.
    pub(super) forwarded: Forwarded,
    /// Ticks since start.
    pub(super) ticks: u64,
    /// Set once a graceful stop handed leaderships over: no rebalancing back.
    pub(super) handing_off: bool,
    /// Replicas to remove once the current round is done.
    pub(super) removals: Vec<(u32, Reply<Result<(), ShardError>>)>,
    /// Rounds submitted to the log and not yet durable, oldest first.
    pub(super) in_flight: VecDeque<InFlightWrite>,
    /// Snapshots from leaders, installed once every earlier write is durable.
    pub(super) installs: Vec<(u32, Snapshot)>,
    /// What this runtime did, counted (see [`ShardCounters`]).
    pub(super) counters: Rc<ShardCounters>,
    /// Which groups are ticked, sleep on a timer, or were touched this round.
    pub(super) schedule: Schedule,
    /// Liveness of the peer nodes (coalesced pings).
    pub(super) liveness: Liveness,
    /// (groups, awake, silent peers) as last logged, and the tick of the next look.
    pub(super) last_activity: (usize, usize, usize),
    pub(super) next_activity_check: u64,
    /// Leaders owing followers a commit notice, and when (monotonic µs) they are told.
    pub(super) held_commit_notices: BTreeSet<u32>,
    pub(super) commit_notices_due: Option<u64>,
}

impl<L: LogStore> ShardRuntime<L> {
    pub fn new(
        cfg: RuntimeConfig,
        replicas: BTreeMap<u32, Replica>,
        log: L,
        transport: Transport,
        events: EventSink,
        clock: Clock,
    ) -> Self {
        let (sender, receiver) = local_channel::new_bounded(cfg.request_queue.max(1));
        let handle = ShardHandle::new(sender);
        let mut schedule = Schedule::default();
        for &group in replicas.keys() {
            schedule.touch(group);
            schedule.wake(group);
        }
        let liveness = Liveness::new(&cfg.liveness_peers, cfg.liveness_ping_ticks, cfg.liveness_silence_ticks, 0);
        ShardRuntime {
            schedule,
            liveness,
            last_activity: (0, 0, 0),
            next_activity_check: 0,
            held_commit_notices: BTreeSet::new(),
            commit_notices_due: None,
            outbox: Outbox::new(cfg.node_id),
            cfg,
            groups: Groups::new(replicas),
            log,
            transport,
            events,
            clock,
            monotonic: Rc::from(instant_clock()),
            receiver,
            handle,
            forwarded: Forwarded::default(),
            ticks: 0,
            handing_off: false,
            removals: Vec::new(),
            in_flight: VecDeque::new(),
            installs: Vec::new(),
            counters: Rc::default(),
        }
    }

    /// The runtime's counters, readable by anything on this shard while it runs.
    pub fn counters(&self) -> Rc<ShardCounters> {
        Rc::clone(&self.counters)
    }

    pub fn handle(&self) -> ShardHandle {
        self.handle.clone()
    }

    /// A counter that spreads membership requests of leaderless replicas over members.
    pub(super) fn next_membership_attempt(&mut self) -> u64 {
        self.ticks.wrapping_add(self.forwarded.pending())
    }

    pub(super) fn node_id(&self) -> u64 {
        self.cfg.node_id
    }

    pub(super) fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// The monotonic clock's reading, in microseconds.
    pub(super) fn now_micros(&self) -> u64 {
        (self.monotonic)()
    }

    /// Replaces the monotonic clock (by default the process's, from `Instant`), e.g. with
    /// a simulated one in tests. The loop's ticks, budgets and timeouts run on it too (only
    /// its wake-ups are real timers, armed for the time it says is left).
    pub fn set_monotonic_clock(&mut self, clock: MonotonicClock) {
        self.monotonic = Rc::from(clock);
    }

    pub(super) fn replica_mut(&mut self, group: u32) -> Option<&mut Replica> {
        self.schedule.touch(group);
        self.groups.replica_mut(group)
    }

    /// Handles one request; returns true for shutdown.
    pub(super) fn handle_request(&mut self, request: Request) -> bool {
        if let Some(group) = request.group() {
            self.schedule.touch(group);
        }
        match request {
            Request::Propose { group, mut command, reply } => match self.groups.get_mut(group) {
                Some(slot) if slot.replica.is_leader() => {
                    command.timestamp_ms = (self.clock)();
                    ShardCounters::add(&self.counters.proposals, 1);
                    if self.cfg.follow_workload {
                        slot.workload.note(self.cfg.node_id);
                    }
                    slot.replica.propose(&command, reply);
                }
                Some(slot) if slot.replica.is_witness() => reply(Err(ShardError::Unavailable(format!(
                    "this node is a witness of group {group}: it runs no state machine and cannot answer commands; use another node"
                )))),
                Some(slot) => {
                    let leader = slot.replica.raft().leader();
                    self.forward_proposal(group, leader, &command, reply);
                }
                None => reply(Err(ShardError::UnknownGroup(group))),
            },
            Request::Read { group, query, reply } => match self.groups.get_mut(group) {
                Some(slot) => {
                    if self.cfg.follow_workload && slot.replica.is_leader() {
                        slot.workload.note(self.cfg.node_id);
                    }
                    // A lease read is trusted only while the clock says the lease runs.
                    slot.replica.raft_mut().set_now((self.monotonic)());
                    counting_lease_reads(&self.counters, &mut slot.replica, |replica| replica.read(query, reply));
                }
                None => reply(Err(ShardError::UnknownGroup(group))),
            },
            Request::Watch { group, key, query, first, watcher } => match self.groups.replica_mut(group) {
                Some(replica) => {
                    replica.raft_mut().set_now((self.monotonic)());
                    counting_lease_reads(&self.counters, replica, |replica| replica.watch(query, key, first, watcher));
                }
                None => first(Err(ShardError::UnknownGroup(group))),
            },
            Request::Unwatch { group, key } => {
                if let Some(replica) = self.groups.replica_mut(group) {
                    replica.unwatch(key);
                }
            }
            Request::Peer { from, message } => {
                self.peer_heard(from);
                self.step_peer(from, message)
            }
            Request::PeerFrame { from, messages } => {
                self.peer_heard(from);
                for message in messages {
                    self.step_peer(from, message);
                }
            }
            Request::AddReplica { group, replica, reply } => {
                if self.groups.contains(group) {
                    reply(Err(ShardError::Invalid(format!("group {group} already has a replica on this node"))));
                } else {
                    let membership = replica.raft().membership().clone();
                    self.groups.insert(group, *replica);
                    (self.events)(group, &ShardEvent::MemberReady { membership });
                    reply(Ok(()));
                }
            }
            Request::RemoveReplica { group, reply } => self.removals.push((group, reply)),
            Request::ChangeMembership { group, node, role, via, reply } => {
                let change = MembershipChange { group, node, role, incarnation: None };
                self.change_membership(change, via, reply)
            }
            Request::HandOffLeadership { reply } => reply(self.hand_off_leadership()),
            Request::PeerDown { node } => {
                self.forwarded.fail_node(node);
                self.peer_down(node);
            }
            Request::Stats { reply } => reply(self.stats()),
            Request::Shutdown => return true,
        }
        false
    }

    /// Answers everything in flight or queued with [`ShardError::ShuttingDown`]. Every
    /// acknowledged entry is already durable: a round acknowledges only after its write.
    pub(super) async fn shutdown(&mut self) {
        for (_, replica) in self.groups.replicas_mut() {
            replica.fail_all(ShardError::ShuttingDown);
        }
        self.forwarded.fail_all(ShardError::ShuttingDown);
        for (_, slot) in self.groups.iter_mut() {
            for (_, reply) in std::mem::take(&mut slot.membership_waiters) {
                reply(Err(ShardError::ShuttingDown));
            }
        }
        for (_, reply) in std::mem::take(&mut self.removals) {
            reply(Err(ShardError::ShuttingDown));
        }
        while let Some(Some(request)) = future::poll_once(self.receiver.recv()).await {
            match request {
                Request::Propose { reply, .. } => reply(Err(ShardError::ShuttingDown)),
                Request::Read { reply, .. } => reply(Err(ShardError::ShuttingDown)),
                Request::Watch { first, .. } => first(Err(ShardError::ShuttingDown)),
                Request::AddReplica { reply, .. } | Request::RemoveReplica { reply, .. } => reply(Err(ShardError::ShuttingDown)),
                Request::ChangeMembership { reply, .. } => reply(Err(ShardError::ShuttingDown)),
                Request::HandOffLeadership { reply } => reply(0),
                Request::Stats { reply } => reply(self.stats()),
                Request::Unwatch { .. }
                | Request::Peer { .. }
                | Request::PeerFrame { .. }
                | Request::PeerDown { .. }
                | Request::Shutdown => {}
            }
        }
    }
}

/// Starts a read on `replica` with `start`, counting it if the replica served it under a
/// follower lease.
fn counting_lease_reads(counters: &ShardCounters, replica: &mut Replica, start: impl FnOnce(&mut Replica)) {
    let before = replica.raft().follower_lease_reads();
    start(replica);
    ShardCounters::add(&counters.follower_lease_reads, replica.raft().follower_lease_reads() - before);
}
