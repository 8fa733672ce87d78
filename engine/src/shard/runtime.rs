//! The shard runtime: one task per shard that owns the shard's group replicas and its log,
//! and drives them — requests in, ticks, Raft output out, one durable write per round for
//! every group (group commit), committed entries applied, waiting requests answered.
//!
//! Requests arrive through a bounded local channel ([`ShardHandle`]); whatever queues up
//! while a write is in flight joins the next round, so one `fdatasync` covers every group's
//! entries of that round. Peer messages leave through the [`Transport`] callback, batched
//! per destination node; Raft events leave through the [`EventSink`] callback.
//!
//! On a follower, a proposal is forwarded to the group's leader (`peer_requests.rs`); the
//! leader answers with the (index, term) it appended the command at, and the follower
//! answers its caller when it applies that entry itself.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conclave_proto::conclave::peer::v1::PeerMessage;
use conclave_proto::conclave::raft::v1::{Entry, Message};
use futures_lite::future;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::{GlommioError, ResourceType};

use conclave_proto::conclave::peer::v1::peer_message::Body;

use crate::raft::{HardState, Membership, Outbox, RaftEvent, RaftRole, Role, Snapshot};
use crate::sm::{self, Command};

use super::counters::ShardCounters;
use super::error::ShardError;
use super::groups::Groups;
use super::liveness::Liveness;
use super::oneshot::oneshot;
use super::peer::Forwarded;
use super::peer_requests::{settle_membership_waiters, MembershipChange};
use super::replica::{Committed, ReadTerm, Replica, Reply, TermQuery, Watcher};
use super::schedule::Schedule;
use super::stall::{Phase, RoundTimer};
use super::stats::RuntimeStats;

/// What one group asks the log to make durable in one round.
#[derive(Debug)]
pub struct GroupWrite {
    pub group: u32,
    pub hard_state: Option<HardState>,
    /// New entries; the log drops any stored entry at or above the first one's index first.
    pub entries: Vec<Entry>,
}

/// Resolves once a round's writes (or a snapshot) are durable, or storage failed.
pub type Durable = Pin<Box<dyn Future<Output = Result<(), String>>>>;

/// Durable storage as the runtime sees it: one `submit` per round, whose future resolves
/// when every write of the round is durable (rounds become durable in submission order, and
/// the runtime goes on working while they are on their way); snapshots saved durably before
/// the log drops what they cover (also while the runtime goes on working).
pub trait LogStore {
    /// Enqueues the round's writes, after every earlier round's.
    fn submit(&mut self, writes: Vec<GroupWrite>) -> Result<Durable, String>;
    /// Stores a group's snapshot at (`index`, `term`) durably, replacing older ones; the
    /// future (which borrows nothing, so the runtime runs it as a task of its own) resolves
    /// once the snapshot is durable. Saves of different groups may run at once.
    fn save_snapshot(&mut self, group: u32, index: u64, term: u64, data: Bytes) -> Durable;
    /// Drops the group's entries up to `index` (covered by a durable snapshot) and gives
    /// back disk space where it can, possibly in the background. Returns true when disk
    /// space was given back since the previous call.
    fn compact(&mut self, group: u32, index: u64, term: u64) -> impl Future<Output = Result<bool, String>>;
    /// Deletes everything stored for the group (its replica left this node), durably.
    fn remove_group(&mut self, group: u32) -> impl Future<Output = Result<(), String>>;
    /// Makes everything durable and releases the files (called once, at shutdown).
    fn close(self) -> impl Future<Output = Result<(), String>>;
}

/// Sends one message to the same shard of peer node `to` (never blocks; a full queue
/// drops: Raft retransmits, and a forwarded request times out).
pub type Transport = Box<dyn FnMut(u64, PeerMessage)>;

/// Something a group did that the node reports (Node API events, health, routing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardEvent {
    /// A Raft event (role, leader or membership change, ...).
    Raft(RaftEvent),
    /// The group's replica started on this shard (bootstrapped, joined or recovered) and
    /// takes part in the group from now on, with the configuration it knows of.
    MemberReady { membership: Membership },
    /// The group's replica left this shard (it was removed from the group, or its node
    /// is leaving it); its data is deleted.
    MemberRemoved,
    /// A snapshot of the group at `index` is durable.
    SnapshotCreated { index: u64 },
    /// The state machine was restored from the snapshot at `index` (on restart, or when a
    /// snapshot received from the leader was installed).
    SnapshotRecovered { index: u64 },
    /// Snapshots of the group older than the one at `index` were deleted.
    SnapshotCompacted { index: u64 },
    /// The group's log entries up to `index` were dropped.
    LogCompacted { index: u64 },
    /// The shard's log store gave back disk space (deleted segments) after the group's
    /// compaction at `index`.
    LogStoreCompacted { index: u64 },
}

/// Receives every event of every group, with the group id.
pub type EventSink = Box<dyn FnMut(u32, &ShardEvent)>;

/// Wall-clock milliseconds since the Unix epoch; the leader stamps commands with it.
pub type Clock = Box<dyn Fn() -> u64>;

/// A monotonic clock in microseconds (any origin, never going back): Raft measures lease
/// reads with it (`RaftNode::set_now`).
pub type MonotonicClock = Box<dyn Fn() -> u64>;

/// The process's monotonic clock, in microseconds since the runtime was built.
fn instant_clock() -> MonotonicClock {
    let origin = Instant::now();
    Box::new(move || u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX))
}

/// Settings of a shard runtime.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub node_id: u64,
    /// This shard's index on its node (named in log lines).
    pub shard: u32,
    /// Interval between Raft ticks.
    pub tick: Duration,
    /// Capacity of the request queue (backpressure beyond it).
    pub request_queue: usize,
    /// Minimum interval between barrier entries that let sessions expire without traffic.
    pub expiry_check: Duration,
    /// Take a snapshot of a group (and compact its log) every this many applied entries;
    /// 0 never does.
    pub snapshot_every: u64,
    /// Entries kept in memory below a snapshot, for followers slightly behind it. The log
    /// on disk is compacted at the snapshot itself: a restart starts from the snapshot.
    pub compaction_tail: u64,
    /// How long a proposal forwarded to the leader waits for the leader's answer (its
    /// index) before its outcome is reported unknown.
    pub forward_timeout: Duration,
    /// How long a membership change forwarded to the leader waits for its commit.
    pub membership_timeout: Duration,
    /// A leader hands its group to the group's preferred leader (once caught up) at most
    /// once per this many ticks; 0 never does.
    pub rebalance_ticks: u64,
    /// A round of the shard loop that holds it longer than this (or a tick that runs this
    /// late) is logged at `warn` with its phases; zero logs none.
    pub stall_warn: Duration,
    /// The peer nodes this shard pings (one empty batch per `liveness_ping_ticks`, however
    /// many groups they share) and watches: one silent for `liveness_silence_ticks` has the
    /// quiet groups it leads woken here. Empty (or 0 ticks): no pings.
    pub liveness_peers: Vec<u64>,
    pub liveness_ping_ticks: u64,
    pub liveness_silence_ticks: u64,
}

impl RuntimeConfig {
    /// The defaults for node `node_id` ticking every `tick`.
    pub fn new(node_id: u64, tick: Duration) -> RuntimeConfig {
        RuntimeConfig {
            node_id,
            shard: 0,
            tick,
            request_queue: 8192,
            expiry_check: Duration::from_millis(100),
            snapshot_every: 0,
            compaction_tail: 0,
            forward_timeout: Duration::from_secs(2),
            membership_timeout: Duration::from_secs(10),
            rebalance_ticks: 0,
            stall_warn: Duration::from_millis(100),
            liveness_peers: Vec::new(),
            liveness_ping_ticks: 0,
            liveness_silence_ticks: 0,
        }
    }
}

/// Rebalancing periods before a leader hands a group back to the node that handed it
/// over (which was perhaps stopping).
const HANDED_BACK_AFTER_PERIODS: u64 = 10;

/// While stopping, ticks between two attempts to hand a group on.
const HAND_OFF_RETRY_TICKS: u64 = 10;

/// The most time one round spends taking queued requests (peer frames may carry thousands
/// of messages each); what is left waits for the next round, after the loop let the
/// shard's other tasks run, so a flood (every group electing at once) cannot hold it.
const ROUND_REQUEST_BUDGET: Duration = Duration::from_millis(10);

/// Touched groups are drained of Raft output in chunks of this many (one log write each)
/// until none is left or the round spent [`ROUND_READY_BUDGET`] on them; the others are
/// carried to the next round (which then starts at once), taken in turn.
const READY_CHUNK_GROUPS: usize = 256;
const ROUND_READY_BUDGET: Duration = Duration::from_millis(20);

/// A request to the shard runtime.
pub enum Request {
    Propose {
        group: u32,
        command: Command,
        reply: Reply<Result<Committed, ShardError>>,
    },
    Read {
        group: u32,
        query: TermQuery,
        reply: Reply<Result<ReadTerm, ShardError>>,
    },
    /// Subscribes `watcher` under `key` (unique among the shard's watches) after a
    /// linearizable first read answered through `first`.
    Watch {
        group: u32,
        key: u64,
        query: TermQuery,
        first: Reply<Result<ReadTerm, ShardError>>,
        watcher: Watcher,
    },
    /// Ends the watch `key` (its client left).
    Unwatch {
        group: u32,
        key: u64,
    },
    /// A message from the same shard of peer node `from`.
    Peer {
        from: u64,
        message: PeerMessage,
    },
    /// Every message of one frame from the same shard of peer node `from`, in order (the
    /// transport queues frames here directly).
    PeerFrame {
        from: u64,
        messages: Vec<PeerMessage>,
    },
    /// Starts hosting a replica (bootstrapped, joining, or recovered later than start-up).
    AddReplica {
        group: u32,
        replica: Box<Replica>,
        reply: Reply<Result<(), ShardError>>,
    },
    /// Stops hosting a replica and deletes its data (after it left the group).
    RemoveReplica {
        group: u32,
        reply: Reply<Result<(), ShardError>>,
    },
    /// Sets `node`'s role in the group (`None`: removes it), through the group's leader
    /// wherever it is. Answers with the index of the committed change (0: nothing to do).
    /// Removing this node while it leads hands leadership over first and answers
    /// `NotLeader`: retry. Removing the group's only member answers 0 (nothing to do).
    /// While this replica knows no leader (it is joining), the request goes to `via`, or
    /// to another member of the configuration it knows when `via` is 0.
    ChangeMembership {
        group: u32,
        node: u64,
        role: Option<Role>,
        via: u64,
        reply: Reply<Result<u64, ShardError>>,
    },
    /// Hands every group this shard leads to another voter (graceful stop); answers with
    /// the number of transfers started.
    HandOffLeadership {
        reply: Reply<usize>,
    },
    /// The connection to node `node` failed: requests forwarded to it will not be
    /// answered, so they fail now (outcome unknown) rather than at their timeout.
    PeerDown {
        node: u64,
    },
    /// Answers with the shard's groups as they are now (for the node's metrics).
    Stats {
        reply: Reply<RuntimeStats>,
    },
    /// Stop after answering everything in flight with [`ShardError::ShuttingDown`].
    Shutdown,
}

/// A cheap, cloneable way to reach a shard runtime from tasks of the same shard.
#[derive(Clone)]
pub struct ShardHandle {
    sender: Rc<LocalSender<Request>>,
}

impl ShardHandle {
    /// The request queue itself, for a transport that queues peer frames directly.
    pub fn sender(&self) -> Rc<LocalSender<Request>> {
        Rc::clone(&self.sender)
    }

    /// Queues a request, waiting while the queue is full.
    pub async fn send(&self, request: Request) -> Result<(), ShardError> {
        self.sender.send(request).await.map_err(|_| ShardError::ShuttingDown)
    }

    /// Queues a request without waiting: gives it back when the queue is full or the
    /// runtime has stopped.
    pub fn try_send(&self, request: Request) -> Result<(), TrySendError> {
        match self.sender.try_send(request) {
            Ok(()) => Ok(()),
            Err(GlommioError::WouldBlock(ResourceType::Channel(request))) => Err(TrySendError::Full(request)),
            Err(GlommioError::Closed(ResourceType::Channel(request))) => Err(TrySendError::Closed(request)),
            Err(error) => unreachable!("a local channel's try_send fails only full or closed: {error}"),
        }
    }

    /// Queues a request, without waiting while the queue has room.
    async fn queue(&self, request: Request) -> Result<(), ShardError> {
        match self.try_send(request) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(request)) => self.send(request).await,
            Err(TrySendError::Closed(_)) => Err(ShardError::ShuttingDown),
        }
    }

    /// Proposes a command to `group` and waits until it is applied.
    pub async fn propose(&self, group: u32, command: Command) -> Result<Committed, ShardError> {
        let (tx, rx) = oneshot();
        let reply: Reply<Result<Committed, ShardError>> = Box::new(move |r| tx.send(r));
        self.queue(Request::Propose { group, command, reply }).await?;
        rx.await.unwrap_or(Err(ShardError::ShuttingDown))
    }

    /// Reads an election linearizably.
    pub async fn read(&self, group: u32, query: TermQuery) -> Result<ReadTerm, ShardError> {
        let (tx, rx) = oneshot();
        let reply: Reply<Result<ReadTerm, ShardError>> = Box::new(move |r| tx.send(r));
        self.queue(Request::Read { group, query, reply }).await?;
        rx.await.unwrap_or(Err(ShardError::ShuttingDown))
    }
}

/// Why [`ShardHandle::try_send`] gave a request back.
pub enum TrySendError {
    /// The runtime's queue is full: send it with [`ShardHandle::send`], which waits.
    Full(Request),
    /// The runtime has stopped.
    Closed(Request),
}

impl Request {
    /// Answers the request's reply, if it has one of a result, with `error` (a request
    /// that could not be queued).
    pub fn refuse(self, error: ShardError) {
        match self {
            Request::Propose { reply, .. } => reply(Err(error)),
            Request::Read { reply, .. } => reply(Err(error)),
            Request::Watch { first, .. } => first(Err(error)),
            Request::AddReplica { reply, .. } | Request::RemoveReplica { reply, .. } => reply(Err(error)),
            Request::ChangeMembership { reply, .. } => reply(Err(error)),
            Request::HandOffLeadership { .. }
            | Request::Stats { .. }
            | Request::Unwatch { .. }
            | Request::Peer { .. }
            | Request::PeerFrame { .. }
            | Request::PeerDown { .. }
            | Request::Shutdown => {}
        }
    }
}

/// The runtime of one shard. Build it, take handles, then `run` it in its own task.
pub struct ShardRuntime<L: LogStore> {
    pub(super) cfg: RuntimeConfig,
    /// The hosted groups, each with all the runtime keeps about it.
    pub(super) groups: Groups,
    pub(super) log: L,
    outbox: Outbox,
    pub(super) transport: Transport,
    pub(super) events: EventSink,
    clock: Clock,
    monotonic: MonotonicClock,
    receiver: LocalReceiver<Request>,
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
    in_flight: VecDeque<InFlightWrite>,
    /// Snapshots from leaders, installed once every earlier write is durable.
    installs: Vec<(u32, Snapshot)>,
    /// What this runtime did, counted (see [`ShardCounters`]).
    pub(super) counters: Rc<ShardCounters>,
    /// Which groups are ticked, sleep on a timer, or were touched this round.
    pub(super) schedule: Schedule,
    /// Liveness of the peer nodes (coalesced pings).
    pub(super) liveness: Liveness,
    /// (groups, awake, silent peers) as last logged, and the tick of the next look.
    pub(super) last_activity: (usize, usize, usize),
    pub(super) next_activity_check: u64,
}

/// A round's writes on their way to disk, and what waits for them: per group, the
/// (index, term) Raft is told is durable and the messages that may leave only then.
struct InFlightWrite {
    durable: Durable,
    acks: Vec<(u32, Option<(u64, u64)>, Vec<Message>)>,
}

/// What woke the shard loop.
enum Wake {
    Request(Option<Request>),
    Durable(Result<(), String>),
    Tick,
    /// The previous round left touched groups for this one: no wait.
    CarriedOver,
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
        let handle = ShardHandle { sender: Rc::new(sender) };
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
            outbox: Outbox::new(cfg.node_id),
            cfg,
            groups: Groups::new(replicas),
            log,
            transport,
            events,
            clock,
            monotonic: instant_clock(),
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

    /// Notes that node `from` handed group `group`'s leadership to this node.
    pub(super) fn note_handed_by(&mut self, group: u32, from: u64) {
        let ticks = self.ticks;
        if let Some(slot) = self.groups.get_mut(group) {
            slot.handed_by = Some((from, ticks));
        }
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
    /// a simulated one in tests.
    pub fn set_monotonic_clock(&mut self, clock: MonotonicClock) {
        self.monotonic = clock;
    }

    pub(super) fn replica_mut(&mut self, group: u32) -> Option<&mut Replica> {
        self.schedule.touch(group);
        self.groups.replica_mut(group)
    }

    /// Runs until a [`Request::Shutdown`] or a storage failure. Returns the failure, if any.
    ///
    /// The loop never waits for the disk: a round's writes are submitted to the log and the
    /// loop goes on serving requests, peers and ticks while they are on their way; what
    /// waits for them (Raft's acknowledgement, messages that need them durable) is released
    /// when they are.
    pub async fn run(mut self) -> Result<(), ShardError> {
        let tick = self.cfg.tick;
        // The instant tick `self.ticks + 1` is due.
        let mut next_tick = Instant::now() + tick;
        // Drive any output recovery left (e.g. entries to re-apply) before serving.
        for (group, replica) in self.groups.replicas() {
            (self.events)(group, &ShardEvent::MemberReady { membership: replica.raft().membership().clone() });
        }
        self.process_ready().await?;
        // One timer for the loop's whole life, moved to each next wake-up (not one per wake).
        let mut tick_timer = glommio::timer::Timer::new(tick);
        ShardCounters::add(&self.counters.timers_armed, 1);
        let mut timer_at = next_tick;
        loop {
            // With no group awake the loop sleeps through the ticks at which nothing is due
            // (see `ticks_until_due`); a request wakes it at once.
            let wake_at = next_tick + tick * u32::try_from(self.ticks_until_due() - 1).unwrap_or(u32::MAX);
            if timer_at != wake_at {
                tick_timer.reset(wake_at.saturating_duration_since(Instant::now()));
                timer_at = wake_at;
            }
            let woke = if self.schedule.has_dirty() {
                Wake::CarriedOver
            } else {
                let receiver = &self.receiver;
                let request = async { Wake::Request(receiver.recv().await) };
                let timer = async {
                    (&mut tick_timer).await;
                    Wake::Tick
                };
                match self.in_flight.front_mut() {
                    Some(write) => {
                        let durable = async { Wake::Durable((&mut write.durable).await) };
                        future::or(durable, future::or(request, timer)).await
                    }
                    None => future::or(request, timer).await,
                }
            };
            let now = Instant::now();
            // The ticks slept through count as elapsed, up to the planned wake-up (none when
            // it was the next tick): a loop held up beyond it counts one tick for the hold-up,
            // as when groups are awake (their Raft timers must not jump).
            let slept = now.min(wake_at).saturating_duration_since(next_tick);
            let skipped = u32::try_from(slept.as_nanos() / tick.as_nanos().max(1)).unwrap_or(u32::MAX);
            self.ticks += u64::from(skipped);
            next_tick += tick * skipped;
            let mut round = RoundTimer::start(self.cfg.stall_warn);
            ShardCounters::add(&self.counters.rounds, 1);
            let late = now.saturating_duration_since(wake_at);
            if !self.cfg.stall_warn.is_zero() && late >= self.cfg.stall_warn {
                self.credit_pause(late);
            }
            let mut stop = false;
            match woke {
                Wake::Request(Some(request)) => stop |= self.handle_request(request),
                Wake::Request(None) => stop = true,
                Wake::Durable(result) => {
                    let write = self.in_flight.pop_front().expect("the front write woke the loop");
                    self.write_done(write.acks, result)?;
                    self.settle_durable_writes().await?;
                }
                Wake::CarriedOver => self.settle_durable_writes().await?,
                Wake::Tick => {}
            }
            // Take what else is queued (within the round's budget): it joins this round.
            let budget_end = Instant::now() + ROUND_REQUEST_BUDGET;
            // Requests may still be queued when the budget ran out: what peers sent may be
            // among them, so no peer counts as silent at this round's tick.
            let mut backlog = false;
            loop {
                if Instant::now() >= budget_end {
                    backlog = true;
                    break;
                }
                let Some(Some(request)) = future::poll_once(self.receiver.recv()).await else { break };
                stop |= self.handle_request(request);
            }
            if stop {
                self.shutdown().await;
                self.drain_in_flight().await?;
                self.abandon_snapshot_saves().await;
                return self.log.close().await.map_err(ShardError::Storage);
            }
            round.lap(Phase::Requests);
            let now = Instant::now();
            if now >= next_tick {
                round.tick_ran(now - next_tick);
                next_tick = now + tick;
                self.tick(backlog);
                round.lap(Phase::Tick);
            }
            self.process_ready().await?;
            round.lap(Phase::Ready);
            self.snapshot_due_groups().await?;
            round.lap(Phase::Snapshots);
            self.remove_pending().await?;
            round.lap(Phase::Removals);
            if let Some(report) = round.finish() {
                report.log(self.cfg.node_id);
            }
            // The next round may be due at once (a tick already late, requests queued): let
            // the shard's other tasks (peer connections, events, gRPC) run first, or a
            // loaded shard starves them, hears no peer and elects no leader (10,000 awake
            // groups on a busy machine did just that).
            future::yield_now().await;
        }
    }

    /// Handles one request; returns true for shutdown.
    fn handle_request(&mut self, request: Request) -> bool {
        if let Some(group) = request.group() {
            self.schedule.touch(group);
        }
        match request {
            Request::Propose { group, mut command, reply } => match self.groups.replica_mut(group) {
                Some(replica) if replica.is_leader() => {
                    command.timestamp_ms = (self.clock)();
                    ShardCounters::add(&self.counters.proposals, 1);
                    replica.propose(&command, reply);
                }
                Some(replica) if replica.is_witness() => reply(Err(ShardError::Unavailable(format!(
                    "this node is a witness of group {group}: it runs no state machine and cannot answer commands; use another node"
                )))),
                Some(replica) => {
                    let leader = replica.raft().leader();
                    self.forward_proposal(group, leader, &command, reply);
                }
                None => reply(Err(ShardError::UnknownGroup(group))),
            },
            Request::Read { group, query, reply } => match self.groups.replica_mut(group) {
                Some(replica) => {
                    // A lease read is trusted only while the clock says the lease runs.
                    replica.raft_mut().set_now((self.monotonic)());
                    replica.read(query, reply)
                }
                None => reply(Err(ShardError::UnknownGroup(group))),
            },
            Request::Watch { group, key, query, first, watcher } => match self.groups.replica_mut(group) {
                Some(replica) => {
                    replica.raft_mut().set_now((self.monotonic)());
                    replica.watch(query, key, first, watcher)
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

    /// The loop was held up for `paused` (its tick that late): no keep-alive reached the
    /// state machines meanwhile, so each group led here that has sessions proposes, ahead
    /// of everything that queued up, a barrier crediting every session with that time.
    /// (Groups without sessions have nothing to credit: proposing in every group would wake
    /// every quiet one, and with many groups cause the next stall.)
    fn credit_pause(&mut self, paused: Duration) {
        let now_ms = (self.clock)();
        let paused_ms = u64::try_from(paused.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(node = self.cfg.node_id, paused_ms, "crediting sessions with a pause of the shard loop");
        for (group, replica) in self.groups.replicas_mut().filter(|(_, r)| r.is_leader() && !r.state_machine().sessions().is_empty()) {
            self.schedule.touch(group);
            replica.propose(&sm::command::pause_barrier(now_ms, paused_ms), Box::new(|_| {}));
        }
    }

    /// One tick; `backlog`: requests were left queued this round (see `tick_liveness`).
    fn tick(&mut self, backlog: bool) {
        let now_ms = (self.clock)();
        let now_micros = (self.monotonic)();
        self.ticks += 1;
        ShardCounters::add(&self.counters.ticks, 1);
        self.forwarded.expire(self.cfg.forward_timeout, self.cfg.membership_timeout);
        self.tick_liveness(backlog);
        // Only the groups with something due: quiet ones cost nothing (see `schedule.rs`).
        for group in self.schedule.due(self.ticks) {
            let Some(replica) = self.groups.replica_mut(group) else { continue };
            ShardCounters::add(&self.counters.replica_ticks, 1);
            replica.raft_mut().set_now(now_micros);
            replica.tick();
            if replica.is_leader() {
                self.tick_leader(group, now_ms);
            }
            self.schedule.touch(group);
        }
        self.log_activity();
    }

    /// A leader's checks at each of its ticks: a stopping node hands it on, rebalancing
    /// hands it to its preferred node, and a barrier lets sessions past their deadline expire.
    fn tick_leader(&mut self, group: u32, now_ms: u64) {
        let ticks = self.ticks;
        let Some(slot) = self.groups.get_mut(group) else { return };
        let replica = &mut slot.replica;
        let last = slot.last_rebalance;
        if self.handing_off {
            // Stopping: a leadership that came back here is handed on again.
            if ticks >= last + HAND_OFF_RETRY_TICKS {
                slot.last_rebalance = ticks;
                if let Some(to) = replica.best_successor() {
                    if let Err(e) = replica.raft_mut().transfer_leadership(to) {
                        tracing::debug!(group, to, error = %e, "hand-off refused");
                    }
                }
            }
        } else if self.cfg.rebalance_ticks > 0 && ticks >= last + self.cfg.rebalance_ticks {
            let handed_by = slot.handed_by;
            let gave_it_away = |to: u64| {
                handed_by.is_some_and(|(from, at)| from == to && ticks < at + HANDED_BACK_AFTER_PERIODS * self.cfg.rebalance_ticks)
            };
            match replica.rebalance_target() {
                Some(to) if !gave_it_away(to) => {
                    slot.last_rebalance = ticks;
                    if let Err(e) = replica.raft_mut().transfer_leadership(to) {
                        tracing::debug!(group, to, error = %e, "rebalancing transfer refused");
                    }
                }
                // Checked again a period later, not every tick.
                Some(_) => {
                    slot.last_rebalance = ticks;
                }
                None => {}
            }
        }
        // Session expiry is decided by applied timestamps: with no traffic, the leader
        // proposes a barrier once a session's deadline has passed so expiry happens.
        let due = replica.next_session_deadline_ms().is_some_and(|d| d <= now_ms);
        let last = slot.last_expiry_barrier;
        if due && last.is_none_or(|t| t.elapsed() >= self.cfg.expiry_check) {
            slot.last_expiry_barrier = Some(Instant::now());
            replica.propose(&sm::command::leader_barrier(now_ms), Box::new(|_| {}));
        }
    }

    /// Drains Raft output until no replica has any, or the round's [`ROUND_READY_BUDGET`] is
    /// spent (the groups left stay touched, for the next round), [`READY_CHUNK_GROUPS`]
    /// touched groups at a time: send, apply what is durable, submit the rest to the log in
    /// one write (acknowledged when it is durable, see `write_done`), install snapshots from
    /// leaders once every earlier write is durable, repeat.
    pub(super) async fn process_ready(&mut self) -> Result<(), ShardError> {
        let deadline = Instant::now() + ROUND_READY_BUDGET;
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
                self.outbox.extend(ready.messages.drain(..));
                replica.apply_committed(&mut ready);
                for event in ready.events.drain(..) {
                    if let RaftEvent::RoleChanged { role: RaftRole::Leader, .. } = event {
                        // A new leader waits a whole rebalancing period before handing the
                        // group on (so a hand-off is not undone at once).
                        slot.last_rebalance = self.ticks;
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
            if !self.schedule.has_dirty() || Instant::now() >= deadline {
                return Ok(());
            }
        }
    }

    /// A round's writes are durable (or the log failed): tell Raft, send what waited.
    fn write_done(&mut self, acks: Vec<(u32, Option<(u64, u64)>, Vec<Message>)>, result: Result<(), String>) -> Result<(), ShardError> {
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
    async fn settle_durable_writes(&mut self) -> Result<(), ShardError> {
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

    /// Answers everything in flight or queued with [`ShardError::ShuttingDown`]. Every
    /// acknowledged entry is already durable: a round acknowledges only after its write.
    async fn shutdown(&mut self) {
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
