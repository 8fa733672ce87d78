//! The shard runtime: one task per shard that owns the shard's group replicas and its log,
//! and drives them — requests in, ticks, Raft output out, one durable write per round for
//! every group (group commit), committed entries applied, waiting requests answered.
//!
//! Requests arrive through a bounded local channel ([`ShardHandle`]); whatever queues up
//! while a write is in flight joins the next round, so one `fdatasync` covers every group's
//! entries of that round. Peer messages leave through the [`Transport`] callback, batched
//! per destination node; Raft events leave through the [`EventSink`] callback.

use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conclave_proto::conclave::raft::v1::{Entry, MessageBatch};
use futures_lite::future;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

use crate::raft::{open_batch, HardState, Outbox, RaftEvent};
use crate::sm::{self, Command};

use super::error::ShardError;
use super::replica::{Committed, ReadTerm, Replica, Reply, TermQuery, Watcher};

/// What one group asks the log to make durable in one round.
#[derive(Debug)]
pub struct GroupWrite {
    pub group: u32,
    pub hard_state: Option<HardState>,
    /// New entries; the log drops any stored entry at or above the first one's index first.
    pub entries: Vec<Entry>,
}

/// Durable storage as the runtime sees it: one `persist` per round, resolved when every
/// write of the round is durable; snapshots saved durably before the log drops what they
/// cover.
pub trait LogStore {
    fn persist(&mut self, writes: Vec<GroupWrite>) -> impl Future<Output = Result<(), String>>;
    /// Stores a group's snapshot at (`index`, `term`) durably, replacing older ones.
    fn save_snapshot(&mut self, group: u32, index: u64, term: u64, data: Bytes) -> impl Future<Output = Result<(), String>>;
    /// Drops the group's entries up to `index` (covered by a durable snapshot) and gives
    /// back disk space where it can.
    fn compact(&mut self, group: u32, index: u64, term: u64) -> impl Future<Output = Result<(), String>>;
    /// Makes everything durable and releases the files (called once, at shutdown).
    fn close(self) -> impl Future<Output = Result<(), String>>;
}

/// Sends one batch of Raft messages to a peer node (never blocks; a full queue drops, and
/// Raft retransmits).
pub type Transport = Box<dyn FnMut(MessageBatch)>;

/// Something a group did that the node reports (Node API events, health, routing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardEvent {
    /// A Raft event (role, leader or membership change, ...).
    Raft(RaftEvent),
    /// The group's replica started on this shard (bootstrapped, joined or recovered) and
    /// takes part in the group from now on.
    MemberReady,
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

/// Settings of a shard runtime.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub node_id: u64,
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
}

/// A request to the shard runtime.
pub enum Request {
    Propose { group: u32, command: Command, reply: Reply<Result<Committed, ShardError>> },
    Read { group: u32, query: TermQuery, reply: Reply<Result<ReadTerm, ShardError>> },
    /// Subscribes `watcher` under `key` (unique among the shard's watches) after a
    /// linearizable first read answered through `first`.
    Watch { group: u32, key: u64, query: TermQuery, first: Reply<Result<ReadTerm, ShardError>>, watcher: Watcher },
    /// Ends the watch `key` (its client left).
    Unwatch { group: u32, key: u64 },
    /// Raft messages from a peer node.
    Peer(MessageBatch),
    /// Stop after answering everything in flight with [`ShardError::ShuttingDown`].
    Shutdown,
}

/// A cheap, cloneable way to reach a shard runtime from tasks of the same shard.
#[derive(Clone)]
pub struct ShardHandle {
    sender: Rc<LocalSender<Request>>,
}

impl ShardHandle {
    /// Queues a request, waiting while the queue is full.
    pub async fn send(&self, request: Request) -> Result<(), ShardError> {
        self.sender.send(request).await.map_err(|_| ShardError::ShuttingDown)
    }

    /// Proposes a command to `group` and waits until it is applied.
    pub async fn propose(&self, group: u32, command: Command) -> Result<Committed, ShardError> {
        let (tx, rx) = local_channel::new_bounded(1);
        let reply: Reply<Result<Committed, ShardError>> = Box::new(move |r| {
            let _ = tx.try_send(r);
        });
        self.send(Request::Propose { group, command, reply }).await?;
        rx.recv().await.unwrap_or(Err(ShardError::ShuttingDown))
    }

    /// Reads an election linearizably.
    pub async fn read(&self, group: u32, query: TermQuery) -> Result<ReadTerm, ShardError> {
        let (tx, rx) = local_channel::new_bounded(1);
        let reply: Reply<Result<ReadTerm, ShardError>> = Box::new(move |r| {
            let _ = tx.try_send(r);
        });
        self.send(Request::Read { group, query, reply }).await?;
        rx.recv().await.unwrap_or(Err(ShardError::ShuttingDown))
    }
}

/// The runtime of one shard. Build it, take handles, then `run` it in its own task.
pub struct ShardRuntime<L: LogStore> {
    cfg: RuntimeConfig,
    replicas: BTreeMap<u32, Replica>,
    log: L,
    outbox: Outbox,
    transport: Transport,
    events: EventSink,
    clock: Clock,
    receiver: LocalReceiver<Request>,
    handle: ShardHandle,
    last_expiry_barrier: BTreeMap<u32, Instant>,
    /// The (term, vote) of each group's hard state as last handed to the log.
    durable_votes: BTreeMap<u32, (u64, u64)>,
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
        let durable_votes = replicas
            .iter()
            .map(|(g, r)| {
                let hs = r.raft().hard_state();
                (*g, (hs.term, hs.vote))
            })
            .collect();
        ShardRuntime {
            durable_votes,
            outbox: Outbox::new(cfg.node_id),
            cfg,
            replicas,
            log,
            transport,
            events,
            clock,
            receiver,
            handle,
            last_expiry_barrier: BTreeMap::new(),
        }
    }

    pub fn handle(&self) -> ShardHandle {
        self.handle.clone()
    }

    /// Runs until a [`Request::Shutdown`] or a storage failure. Returns the failure, if any.
    pub async fn run(mut self) -> Result<(), ShardError> {
        let mut next_tick = Instant::now() + self.cfg.tick;
        // Drive any output recovery left (e.g. entries to re-apply) before serving.
        self.process_ready().await?;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let first = future::or(async { Some(self.receiver.recv().await) }, async {
                glommio::timer::sleep(wait).await;
                None
            })
            .await;
            let mut stop = false;
            if let Some(request) = first {
                match request {
                    Some(request) => stop |= self.handle_request(request),
                    None => stop = true,
                }
                // Take everything else already queued: it joins this round.
                while let Some(Some(request)) = future::poll_once(self.receiver.recv()).await {
                    stop |= self.handle_request(request);
                }
            }
            if stop {
                self.shutdown().await;
                return self.log.close().await.map_err(ShardError::Storage);
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + self.cfg.tick;
                self.tick();
            }
            self.process_ready().await?;
            self.snapshot_due_groups().await?;
        }
    }

    /// Snapshots every group that applied `snapshot_every` entries since its last snapshot,
    /// then compacts its log: the snapshot is durable before anything it covers is dropped.
    async fn snapshot_due_groups(&mut self) -> Result<(), ShardError> {
        if self.cfg.snapshot_every == 0 {
            return Ok(());
        }
        let due: Vec<u32> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.snapshot_due(self.cfg.snapshot_every))
            .map(|(g, _)| *g)
            .collect();
        for group in due {
            let Some(capture) = self.replicas.get(&group).and_then(Replica::capture_snapshot) else {
                continue;
            };
            let storage_error = |e: String| ShardError::Storage(format!("group {group}: {e}"));
            self.log
                .save_snapshot(group, capture.index, capture.term, capture.data.clone())
                .await
                .map_err(storage_error)?;
            if let Some(replica) = self.replicas.get_mut(&group) {
                replica.snapshot_saved(&capture, self.cfg.compaction_tail)?;
            }
            self.log.compact(group, capture.index, capture.term).await.map_err(storage_error)?;
            (self.events)(group, &ShardEvent::SnapshotCreated { index: capture.index });
            (self.events)(group, &ShardEvent::LogCompacted { index: capture.index });
        }
        Ok(())
    }

    /// Handles one request; returns true for shutdown.
    fn handle_request(&mut self, request: Request) -> bool {
        match request {
            Request::Propose { group, mut command, reply } => match self.replicas.get_mut(&group) {
                Some(replica) => {
                    command.timestamp_ms = (self.clock)();
                    replica.propose(&command, reply);
                }
                None => reply(Err(ShardError::UnknownGroup(group))),
            },
            Request::Read { group, query, reply } => match self.replicas.get_mut(&group) {
                Some(replica) => replica.read(query, reply),
                None => reply(Err(ShardError::UnknownGroup(group))),
            },
            Request::Watch { group, key, query, first, watcher } => match self.replicas.get_mut(&group) {
                Some(replica) => replica.watch(query, key, first, watcher),
                None => first(Err(ShardError::UnknownGroup(group))),
            },
            Request::Unwatch { group, key } => {
                if let Some(replica) = self.replicas.get_mut(&group) {
                    replica.unwatch(key);
                }
            }
            Request::Peer(batch) => self.step_peer(batch),
            Request::Shutdown => return true,
        }
        false
    }

    fn step_peer(&mut self, batch: MessageBatch) {
        let from = batch.from;
        let messages = match open_batch(self.cfg.node_id, batch) {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(from, error = %e, "dropping an invalid Raft batch");
                return;
            }
        };
        for msg in messages {
            let group = msg.group_id;
            match self.replicas.get_mut(&group) {
                Some(replica) => {
                    if let Err(e) = replica.raft_mut().step(msg) {
                        tracing::debug!(group, from, error = %e, "Raft message refused");
                    }
                }
                None => tracing::debug!(group, from, "message for a group this shard does not host"),
            }
        }
    }

    fn tick(&mut self) {
        let now_ms = (self.clock)();
        for (&group, replica) in self.replicas.iter_mut() {
            replica.raft_mut().tick();
            if !replica.is_leader() {
                continue;
            }
            // Session expiry is decided by applied timestamps: with no traffic, the leader
            // proposes a barrier once a session's deadline has passed so expiry happens.
            let due = replica.next_session_deadline_ms().is_some_and(|d| d <= now_ms);
            let last = self.last_expiry_barrier.get(&group);
            if due && last.is_none_or(|t| t.elapsed() >= self.cfg.expiry_check) {
                self.last_expiry_barrier.insert(group, Instant::now());
                replica.propose(&sm::command::leader_barrier(now_ms), Box::new(|_| {}));
            }
        }
    }

    /// Drains Raft output until no replica has any: send, apply what is durable, persist
    /// the rest in one write, acknowledge, repeat.
    async fn process_ready(&mut self) -> Result<(), ShardError> {
        loop {
            let mut writes = Vec::new();
            let mut acks = Vec::new();
            let now_ms = (self.clock)();
            for (&group, replica) in self.replicas.iter_mut() {
                if !replica.has_ready() {
                    continue;
                }
                let mut ready = replica.take_ready();
                self.outbox.extend(ready.messages.drain(..));
                replica.apply_committed(&mut ready);
                for event in ready.events.drain(..) {
                    (self.events)(group, &ShardEvent::Raft(event));
                }
                if replica.take_barrier_due() {
                    replica.propose(&sm::command::leader_barrier(now_ms), Box::new(|_| {}));
                }
                let ack = ready.persist_ack();
                // A hard state whose term and vote are already durable changed only its
                // commit index, which Raft need not persist: it rides along with the next
                // entries instead of costing a sync of its own.
                let vote = ready.hard_state.map(|hs| (hs.term, hs.vote));
                let vote_changed = vote.is_some() && vote != self.durable_votes.get(&group).copied();
                if vote_changed || !ready.entries.is_empty() {
                    if let Some(vote) = vote {
                        self.durable_votes.insert(group, vote);
                    }
                    writes.push(GroupWrite {
                        group,
                        hard_state: ready.hard_state,
                        entries: std::mem::take(&mut ready.entries),
                    });
                    acks.push((group, ack, std::mem::take(&mut ready.persisted_messages)));
                } else {
                    self.outbox.extend(ready.persisted_messages.drain(..));
                }
            }
            self.flush_outbox();
            if writes.is_empty() {
                if self.replicas.values().any(Replica::has_ready) {
                    continue;
                }
                return Ok(());
            }
            if let Err(e) = self.log.persist(writes).await {
                let error = ShardError::Storage(e);
                tracing::error!(error = %error, "the log failed; this shard stops serving");
                for replica in self.replicas.values_mut() {
                    replica.fail_all(error.clone());
                }
                return Err(error);
            }
            for (group, ack, persisted_messages) in acks {
                let replica = self.replicas.get_mut(&group).expect("groups do not vanish mid-round");
                if let Some((index, term)) = ack {
                    replica.raft_mut().persisted(index, term);
                }
                self.outbox.extend(persisted_messages);
            }
            self.flush_outbox();
        }
    }

    fn flush_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        for batch in self.outbox.drain() {
            (self.transport)(batch);
        }
    }

    /// Answers everything in flight or queued with [`ShardError::ShuttingDown`]. Every
    /// acknowledged entry is already durable: a round acknowledges only after its write.
    async fn shutdown(&mut self) {
        for replica in self.replicas.values_mut() {
            replica.fail_all(ShardError::ShuttingDown);
        }
        while let Some(Some(request)) = future::poll_once(self.receiver.recv()).await {
            match request {
                Request::Propose { reply, .. } => reply(Err(ShardError::ShuttingDown)),
                Request::Read { reply, .. } => reply(Err(ShardError::ShuttingDown)),
                Request::Watch { first, .. } => first(Err(ShardError::ShuttingDown)),
                Request::Unwatch { .. } | Request::Peer(_) | Request::Shutdown => {}
            }
        }
    }
}
