//! The shard runtime's public face: what it asks of storage ([`LogStore`], [`GroupWrite`]),
//! how it reaches peers and reports what groups did ([`Transport`], [`ShardEvent`],
//! [`EventSink`]), the clocks it is given ([`Clock`], [`MonotonicClock`]), its settings
//! ([`RuntimeConfig`]), and how other tasks of the shard talk to it ([`Request`],
//! [`ShardHandle`], [`TrySendError`]). No logic of the runtime lives here.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use conclave_proto::conclave::peer::v1::PeerMessage;
use conclave_proto::conclave::raft::v1::Entry;
use glommio::channels::local_channel::LocalSender;
use glommio::{GlommioError, ResourceType};

use crate::raft::{HardState, Membership, RaftEvent, Role};
use crate::sm::Command;

use super::error::ShardError;
use super::oneshot::oneshot;
use super::replica::{Committed, ReadTerm, Replica, Reply, TermQuery, Watcher};
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

/// A monotonic clock in microseconds (any origin, never going back): the runtime's loop
/// (ticks, budgets, timeouts, barriers) runs on it, and Raft measures lease reads with it
/// (`RaftNode::set_now`).
pub type MonotonicClock = Box<dyn Fn() -> u64>;

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
    /// With N above 0, a group's snapshot also waits until the entries it applied since its
    /// last one weigh N times that snapshot (bytes of entry data against bytes of
    /// snapshot), so a large state next to small commands is not encoded and written again
    /// every `snapshot_every` entries; 0: `snapshot_every` alone decides.
    pub snapshot_log_ratio: u64,
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
    /// With rebalancing on, a group whose requests came mostly (three quarters, at least 16)
    /// through one node over a rebalancing period is led from that node instead of its
    /// preferred one, until a period's requests say otherwise (`shard::workload`).
    pub follow_workload: bool,
    /// A round of the shard loop that holds it longer than this (or a tick that runs this
    /// late) is logged at `warn` with its phases; zero logs none.
    pub stall_warn: Duration,
    /// The peer nodes this shard pings (one empty batch per `liveness_ping_ticks`, however
    /// many groups they share) and watches: one silent for `liveness_silence_ticks` has the
    /// quiet groups it leads woken here. Empty (or 0 ticks): no pings.
    pub liveness_peers: Vec<u64>,
    pub liveness_ping_ticks: u64,
    pub liveness_silence_ticks: u64,
    /// How long a leader holding commit notices (`raft::Config::hold_commit_notices`) waits
    /// before telling followers a commit index no append carried to them: the next round's
    /// append usually does first, saving a message and a follower's wake-up per round.
    /// Followers apply (and serve reads and watches) up to that much later when nothing
    /// follows. Zero (the default): held notices leave with the next round's output.
    pub commit_notice_delay: Duration,
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
            snapshot_log_ratio: 0,
            compaction_tail: 0,
            forward_timeout: Duration::from_secs(2),
            membership_timeout: Duration::from_secs(10),
            rebalance_ticks: 0,
            follow_workload: false,
            stall_warn: Duration::from_millis(100),
            liveness_peers: Vec::new(),
            liveness_ping_ticks: 0,
            liveness_silence_ticks: 0,
            commit_notice_delay: Duration::ZERO,
        }
    }
}

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
    /// The handle of the runtime that receives from `sender`'s channel.
    pub(super) fn new(sender: LocalSender<Request>) -> ShardHandle {
        ShardHandle { sender: Rc::new(sender) }
    }

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
