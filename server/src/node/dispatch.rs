//! Cross-shard dispatch: how a gRPC handler on any shard reaches the shard that owns a
//! group. Requests for a local group go straight to the local [`ShardHandle`]; others cross
//! to the owning shard over glommio's channel mesh and their answers (and a watch's later
//! changes) come back the same way. The mesh also carries accepted client connections
//! (spread over shards) and leader updates (so every shard knows every group's leader).
//!
//! Mesh messages are only sent from the tasks that drain [`Outbound`] queues, so code that
//! must not wait (a watcher called during apply) never blocks on a full mesh channel.
//!
//! Requests a leader change interrupts are retried here, within a bounded budget, when
//! retrying is safe: anything refused with "not the leader" (nothing was done), and a
//! command whose outcome is unknown when the state machine deduplicates it (every command
//! but OpenSession carries a session and sequence number or is idempotent).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use conclave_engine::shard::{
    oneshot, Committed, OneshotSender, ReadTerm, Request, ShardError, ShardEvent, ShardHandle, TermQuery, TrySendError, WatchEvent,
};
use conclave_engine::sm::{Command, ElectionTerm};
use conclave_proto::conclave::sm::v1::command::Operation;
use conclave_wire::ConnectionEvent;
use futures_lite::StreamExt;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::AcceptedTcpStream;
use glommio::{GlommioError, ResourceType};

use crate::grpc::{LocalBoxFuture, Status, StreamSink};
use crate::metrics::{edge, ShardCounters, ShardSnapshot};
use crate::routing::shard_of;
use crate::service::node_control::GroupSpec;

use super::groups::GroupControl;

/// How long a request keeps being retried through leader changes.
const RETRY_BUDGET: Duration = Duration::from_secs(5);
/// The longest pause between two retries.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Everything that crosses between shards.
pub enum MeshMessage {
    /// A client connection accepted on another shard, to be served here.
    Connection(AcceptedTcpStream),
    /// A request for a group this shard owns.
    Call { from: usize, call: u64, group: u32, op: CallOp },
    /// The answer to a call (for a watch: its first state).
    Reply { call: u64, result: CallResult },
    /// A later change seen by a watch call, with the log index of the entry that made it.
    WatchEvent { call: u64, index: u64, term: ElectionTerm },
    /// The watching side is gone: stop sending events of this call.
    CancelWatch { from: usize, call: u64 },
    /// The owning shard ended a watch call (its replica was removed, stopped or no longer
    /// applies the log); it freed its side already.
    WatchEnded { call: u64, error: ShardError },
    /// A group's leader as its owning shard last saw it.
    Leader { group: u32, term: u64, leader: u64 },
    /// Whether this node hosts a replica of a client partition (it may have left it).
    Hosting { group: u32, hosted: bool },
    /// Something that happened on another shard, for the Node API's Watch (shard 0).
    Event(NodeEvent),
}

/// What shard 0 does with each event of the node.
pub type EventHandler = Rc<dyn Fn(NodeEvent)>;

/// An event of the node, as shard 0 gathers them for the Node API.
#[derive(Clone, Debug)]
pub enum NodeEvent {
    Group(u32, ShardEvent),
    Connection(ConnectionEvent),
}

pub enum CallOp {
    Propose(Command),
    Read(TermQuery),
    Watch(TermQuery),
    Control(ControlOp),
    /// The shard's metrics (the group is ignored).
    Metrics,
}

/// A Node API operation, run by the shard that owns the group.
pub enum ControlOp {
    Bootstrap(GroupSpec),
    Join(GroupSpec),
    Leave(u32),
}

pub enum CallResult {
    Committed(Result<Committed, ShardError>),
    Read(Result<ReadTerm, ShardError>),
    Control(Result<(), Status>),
    Metrics(Box<ShardSnapshot>),
}

/// Receives a watch's states with the log index each was read or changed at (the first
/// state at its read index, then every change at its entry's index); returns false to stop
/// watching.
pub type WatchCallback = Box<dyn FnMut(u64, ElectionTerm) -> bool>;

/// Names a running watch, to end it when its client has gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchHandle {
    /// Served by this shard's runtime under `key`.
    Local { group: u32, key: u64 },
    /// Served by shard `owner` for call `call` of this shard.
    Remote { owner: usize, call: u64 },
}

enum PendingCall {
    Once(OneshotSender<CallResult>),
    Watch { owner: usize, first: Option<LocalSender<CallResult>>, on_change: WatchCallback, ended: LocalSender<ShardError> },
}

/// Per-destination queues of mesh messages, each drained by its own task.
#[derive(Clone)]
pub struct Outbound {
    queues: Rc<Vec<Option<LocalSender<MeshMessage>>>>,
}

impl Outbound {
    /// Queues `msg` for shard `to`. Never waits; fails only while shutting down.
    pub fn send(&self, to: usize, msg: MeshMessage) {
        if let Some(Some(queue)) = self.queues.get(to) {
            let _ = queue.try_send(msg);
        }
    }
}

/// The leaders known for every group of the node (from every shard's reports).
pub type LeaderTable = Rc<RefCell<BTreeMap<u32, (u64, u64)>>>;

/// This shard's view of the node's shards.
pub struct Dispatch {
    pub shard: usize,
    pub shards: usize,
    local: ShardHandle,
    outbound: Outbound,
    calls: RefCell<BTreeMap<u64, PendingCall>>,
    next_call: Cell<u64>,
    /// Watches this shard's runtime serves for other shards: (shard, call) → (group, key).
    served_watches: RefCell<BTreeMap<(usize, u64), (u32, u64)>>,
    next_watch_key: Cell<u64>,
    pub leaders: LeaderTable,
    /// Client partitions this node left through the Node API: it cannot serve them.
    left: RefCell<BTreeSet<u32>>,
    /// The client partitions (1..=this), and how many of them [`Dispatch::serves`] now,
    /// kept as the table changes so health is answered without a walk over partitions.
    partitions: Cell<u32>,
    served: Cell<u32>,
    /// Runs after the leader table or the set of left partitions changed (health).
    on_table_change: RefCell<Option<Rc<dyn Fn()>>>,
    /// This shard's Node API operations (set once the shard has started).
    control: RefCell<Option<Rc<GroupControl>>>,
    /// Shard 0: where other shards' events go.
    on_event: RefCell<Option<EventHandler>>,
    /// This shard's counters (metrics), and what snapshots all of its metrics.
    pub counters: Rc<ShardCounters>,
    metrics_source: RefCell<Option<MetricsSource>>,
}

/// Takes a snapshot of this shard's metrics.
pub type MetricsSource = Rc<dyn Fn() -> LocalBoxFuture<ShardSnapshot>>;

impl Dispatch {
    /// Joins the mesh: starts one drain task per destination and returns the dispatch
    /// plus the receivers, which [`Dispatch::serve_mesh`] consumes.
    pub fn new(shard: usize, shards: usize, local: ShardHandle, senders: Senders<MeshMessage>) -> Rc<Dispatch> {
        let senders = Rc::new(senders);
        let mut queues = Vec::with_capacity(shards);
        for to in 0..shards {
            if to == shard {
                queues.push(None);
                continue;
            }
            let (tx, rx) = local_channel::new_unbounded::<MeshMessage>();
            let senders = Rc::clone(&senders);
            glommio::spawn_local(async move {
                while let Some(msg) = rx.recv().await {
                    if senders.send_to(to, msg).await.is_err() {
                        break;
                    }
                }
            })
            .detach();
            queues.push(Some(tx));
        }
        Rc::new(Dispatch {
            shard,
            shards,
            local,
            outbound: Outbound { queues: Rc::new(queues) },
            calls: RefCell::new(BTreeMap::new()),
            next_call: Cell::new(1),
            served_watches: RefCell::new(BTreeMap::new()),
            next_watch_key: Cell::new(1),
            leaders: Rc::new(RefCell::new(BTreeMap::new())),
            left: RefCell::new(BTreeSet::new()),
            partitions: Cell::new(0),
            served: Cell::new(0),
            on_table_change: RefCell::new(None),
            control: RefCell::new(None),
            on_event: RefCell::new(None),
            counters: Rc::default(),
            metrics_source: RefCell::new(None),
        })
    }

    /// Sets what runs this shard's Node API operations.
    pub fn set_control(&self, control: Rc<GroupControl>) {
        *self.control.borrow_mut() = Some(control);
    }

    /// Sets what takes this shard's metrics snapshots.
    pub fn set_metrics_source(&self, source: MetricsSource) {
        *self.metrics_source.borrow_mut() = Some(source);
    }

    /// The metrics of shard `shard` (`None` while it is starting or shutting down).
    pub async fn shard_metrics(&self, shard: usize) -> Option<ShardSnapshot> {
        if shard == self.shard {
            return self.local_metrics().await;
        }
        let (tx, rx) = oneshot();
        let call = self.start_call(PendingCall::Once(tx));
        let _guard = CallGuard { dispatch: self, call };
        self.outbound.send(shard, MeshMessage::Call { from: self.shard, call, group: 0, op: CallOp::Metrics });
        match rx.await {
            Some(CallResult::Metrics(snapshot)) => Some(*snapshot),
            _ => None,
        }
    }

    async fn local_metrics(&self) -> Option<ShardSnapshot> {
        let source = self.metrics_source.borrow().clone()?;
        Some(source().await)
    }

    /// Shard 0: sets what receives every shard's events.
    pub fn set_event_handler(&self, handler: EventHandler) {
        *self.on_event.borrow_mut() = Some(handler);
    }

    /// Reports an event of this shard to shard 0's Node API.
    pub fn report(&self, event: NodeEvent) {
        if self.shard == 0 {
            let handler = self.on_event.borrow().clone();
            if let Some(handler) = handler {
                handler(event);
            }
        } else {
            self.outbound.send(0, MeshMessage::Event(event));
        }
    }

    /// Runs a Node API operation on the shard that owns `group`.
    pub async fn control(&self, group: u32, op: ControlOp) -> Result<(), Status> {
        let owner = self.owner(group);
        if owner == self.shard {
            return self.run_control(op).await;
        }
        let (tx, rx) = oneshot();
        let call = self.start_call(PendingCall::Once(tx));
        let _guard = CallGuard { dispatch: self, call };
        self.outbound.send(owner, MeshMessage::Call { from: self.shard, call, group, op: CallOp::Control(op) });
        match rx.await {
            Some(CallResult::Control(result)) => result,
            _ => Err(Status::unavailable("the node is shutting down")),
        }
    }

    pub fn outbound(&self) -> &Outbound {
        &self.outbound
    }

    /// The shard-local runtime handle.
    pub fn local(&self) -> &ShardHandle {
        &self.local
    }

    fn owner(&self, group: u32) -> usize {
        shard_of(group, self.shards as u32) as usize
    }

    fn start_call(&self, pending: PendingCall) -> u64 {
        let call = self.next_call.get();
        self.next_call.set(call + 1);
        self.calls.borrow_mut().insert(call, pending);
        call
    }

    /// Proposes a command to `group` wherever its shard and leader are, and waits until it
    /// is applied, retrying through leader changes where that is safe.
    pub async fn propose(&self, group: u32, command: Command) -> Result<Committed, ShardError> {
        let resendable = !matches!(command.operation, Some(Operation::OpenSession(_)));
        let mut retry = Retry::new();
        loop {
            let result = self.propose_once(group, command.clone()).await;
            match &result {
                Err(ShardError::NotLeader { .. }) if retry.again().await => {}
                Err(ShardError::LeadershipLost) if resendable && retry.again().await => {}
                Err(_) => {
                    self.counters.proposal_failed();
                    return result;
                }
                Ok(_) => return result,
            }
        }
    }

    async fn propose_once(&self, group: u32, command: Command) -> Result<Committed, ShardError> {
        let owner = self.owner(group);
        if owner == self.shard {
            return self.local.propose(group, command).await;
        }
        let (tx, rx) = oneshot();
        let call = self.start_call(PendingCall::Once(tx));
        let _guard = CallGuard { dispatch: self, call };
        self.outbound.send(owner, MeshMessage::Call { from: self.shard, call, group, op: CallOp::Propose(command) });
        match rx.await {
            Some(CallResult::Committed(result)) => result,
            _ => Err(ShardError::ShuttingDown),
        }
    }

    /// Reads an election of `group` linearizably, retrying while no leader is known.
    pub async fn read(&self, group: u32, query: TermQuery) -> Result<ReadTerm, ShardError> {
        let mut retry = Retry::new();
        loop {
            let result = self.read_once(group, query.clone()).await;
            match &result {
                Err(ShardError::NotLeader { .. } | ShardError::LeadershipLost) if retry.again().await => {}
                _ => return result,
            }
        }
    }

    async fn read_once(&self, group: u32, query: TermQuery) -> Result<ReadTerm, ShardError> {
        let owner = self.owner(group);
        if owner == self.shard {
            return self.local.read(group, query).await;
        }
        let (tx, rx) = oneshot();
        let call = self.start_call(PendingCall::Once(tx));
        let _guard = CallGuard { dispatch: self, call };
        self.outbound.send(owner, MeshMessage::Call { from: self.shard, call, group, op: CallOp::Read(query) });
        match rx.await {
            Some(CallResult::Read(result)) => result,
            _ => Err(ShardError::ShuttingDown),
        }
    }

    /// Watches an election: `on_change` gets its current state first, then every later
    /// change, in order, until it returns false. The returned result tells whether the
    /// watch started (an unknown election, say, is an `Ok` whose `result` is an error).
    /// While the partition has no leader the watch waits for one, as reads do.
    ///
    /// The returned [`WatchGuard`] ends the watch once dropped (its client has gone), so a
    /// quiet election does not keep dead watchers, and tells when the serving side ended it.
    pub async fn watch(
        self: &Rc<Self>,
        group: u32,
        query: TermQuery,
        on_change: WatchCallback,
    ) -> Result<(ReadTerm, WatchGuard), ShardError> {
        let on_change = Rc::new(RefCell::new(on_change));
        let mut retry = Retry::new();
        loop {
            let result = self.watch_once(group, query.clone(), Rc::clone(&on_change)).await;
            match &result {
                Err(ShardError::NotLeader { .. } | ShardError::LeadershipLost) if retry.again().await => {}
                _ => return result,
            }
        }
    }

    async fn watch_once(
        self: &Rc<Self>,
        group: u32,
        query: TermQuery,
        on_change: Rc<RefCell<WatchCallback>>,
    ) -> Result<(ReadTerm, WatchGuard), ShardError> {
        let owner = self.owner(group);
        let (tx, rx) = local_channel::new_bounded(1);
        let (ended_tx, ended) = local_channel::new_bounded(1);
        let handle;
        if owner == self.shard {
            let key = self.new_watch_key();
            handle = WatchHandle::Local { group, key };
            let on_first = Rc::clone(&on_change);
            // Called in the same step that subscribes the watcher: no change can come first.
            let first: Box<dyn FnOnce(Result<ReadTerm, ShardError>)> = Box::new(move |r| {
                if let Ok(ReadTerm { index, result: Ok(term) }) = &r {
                    (on_first.borrow_mut())(*index, term.clone());
                }
                let _ = tx.try_send(CallResult::Read(r));
            });
            let watcher = Box::new(move |event: WatchEvent<'_>| match event {
                WatchEvent::Changed(n) => (on_change.borrow_mut())(n.index, n.term.clone()),
                WatchEvent::Ended(error) => {
                    let _ = ended_tx.try_send(error.clone());
                    false
                }
            });
            self.local.send(Request::Watch { group, key, query, first, watcher }).await?;
        } else {
            let on_change: WatchCallback = Box::new(move |index, term| (on_change.borrow_mut())(index, term));
            let call = self.start_call(PendingCall::Watch { owner, first: Some(tx), on_change, ended: ended_tx });
            handle = WatchHandle::Remote { owner, call };
            self.outbound.send(owner, MeshMessage::Call { from: self.shard, call, group, op: CallOp::Watch(query) });
        }
        match rx.recv().await {
            Some(CallResult::Read(result)) => result.map(|read| (read, WatchGuard::new(Rc::clone(self), handle, ended))),
            _ => Err(ShardError::ShuttingDown),
        }
    }

    /// Ends a watch whose client has gone.
    pub fn unwatch(&self, handle: WatchHandle) {
        match handle {
            WatchHandle::Local { group, key } => self.unwatch_local(group, key),
            WatchHandle::Remote { owner, call } => {
                if self.calls.borrow_mut().remove(&call).is_some() {
                    self.outbound.send(owner, MeshMessage::CancelWatch { from: self.shard, call });
                }
            }
        }
    }

    fn unwatch_local(&self, group: u32, key: u64) {
        let local = self.local.clone();
        glommio::spawn_local(async move {
            let _ = local.send(Request::Unwatch { group, key }).await;
        })
        .detach();
    }

    /// A key unique among this shard's watches.
    fn new_watch_key(&self) -> u64 {
        let key = self.next_watch_key.get();
        self.next_watch_key.set(key + 1);
        key
    }

    /// Drains the mesh receivers until they close, handling every message.
    /// `on_table_change` runs after every change of the leader table or of the partitions
    /// this node left that another shard reports, and after [`Dispatch::broadcast_hosting`].
    pub fn serve_mesh(
        self: &Rc<Self>,
        mut receivers: Receivers<MeshMessage>,
        on_connection: Rc<dyn Fn(AcceptedTcpStream)>,
        on_table_change: Rc<dyn Fn()>,
    ) {
        *self.on_table_change.borrow_mut() = Some(on_table_change);
        for (_, mut stream) in receivers.streams() {
            let dispatch = Rc::clone(self);
            let on_connection = Rc::clone(&on_connection);
            glommio::spawn_local(async move {
                while let Some(msg) = stream.next().await {
                    dispatch.handle(msg, &*on_connection);
                    // (Leader reports of thousands of groups may arrive at once.)
                    glommio::yield_if_needed().await;
                }
            })
            .detach();
        }
    }

    fn handle(self: &Rc<Self>, msg: MeshMessage, on_connection: &dyn Fn(AcceptedTcpStream)) {
        match msg {
            MeshMessage::Connection(stream) => on_connection(stream),
            MeshMessage::Call { from, call, group, op } => self.serve_call(from, call, group, op),
            MeshMessage::Reply { call, result } => {
                let mut calls = self.calls.borrow_mut();
                match calls.remove(&call) {
                    Some(PendingCall::Once(tx)) => tx.send(result),
                    Some(PendingCall::Watch { owner, first, mut on_change, ended }) => {
                        let started = match &result {
                            CallResult::Read(Ok(ReadTerm { index, result: Ok(term) })) => {
                                on_change(*index, term.clone());
                                true
                            }
                            _ => false,
                        };
                        let failed = !started;
                        if let Some(tx) = first {
                            let _ = tx.try_send(result);
                        }
                        if !failed {
                            calls.insert(call, PendingCall::Watch { owner, first: None, on_change, ended });
                        }
                    }
                    None => {}
                }
            }
            MeshMessage::WatchEvent { call, index, term } => {
                let (keep, owner) = match self.calls.borrow_mut().get_mut(&call) {
                    Some(PendingCall::Watch { owner, on_change, .. }) => (on_change(index, term), Some(*owner)),
                    _ => (false, None),
                };
                if !keep {
                    self.calls.borrow_mut().remove(&call);
                    if let Some(owner) = owner {
                        self.outbound.send(owner, MeshMessage::CancelWatch { from: self.shard, call });
                    }
                }
            }
            MeshMessage::WatchEnded { call, error } => {
                if let Some(PendingCall::Watch { ended, .. }) = self.calls.borrow_mut().remove(&call) {
                    let _ = ended.try_send(error);
                }
            }
            MeshMessage::CancelWatch { from, call } => {
                if let Some((group, key)) = self.served_watches.borrow_mut().remove(&(from, call)) {
                    self.unwatch_local(group, key);
                }
            }
            MeshMessage::Leader { group, term, leader } => {
                self.record_leader(group, term, leader);
                self.table_changed();
            }
            MeshMessage::Hosting { group, hosted } => {
                self.record_hosting(group, hosted);
                self.table_changed();
            }
            MeshMessage::Event(event) => self.report(event),
        }
    }

    /// Whether this node left client partition `group` through the Node API.
    pub fn has_left(&self, group: u32) -> bool {
        self.left.borrow().contains(&group)
    }

    /// Whether this node serves client partition `group`: it hosts a replica and knows
    /// a leader for it.
    pub fn serves(&self, group: u32) -> bool {
        !self.left.borrow().contains(&group) && self.leaders.borrow().get(&group).is_some_and(|(_, leader)| *leader != 0)
    }

    /// Sets the number of client partitions (1..=`partitions`) that
    /// [`Dispatch::serves_all`] counts.
    pub fn set_partitions(&self, partitions: u32) {
        self.partitions.set(partitions);
        self.served.set((1..=partitions).filter(|g| self.serves(*g)).count() as u32);
    }

    /// Whether this node serves every client partition (see [`Dispatch::serves`]).
    pub fn serves_all(&self) -> bool {
        self.served.get() == self.partitions.get()
    }

    /// Runs `change` on the table of `group`, keeping the count of served partitions.
    fn count_served(&self, group: u32, change: impl FnOnce()) {
        let counted = group >= 1 && group <= self.partitions.get();
        let before = counted && self.serves(group);
        change();
        let after = counted && self.serves(group);
        match (before, after) {
            (false, true) => self.served.set(self.served.get() + 1),
            (true, false) => self.served.set(self.served.get() - 1),
            _ => {}
        }
    }

    /// Records whether this node hosts client partition `group` (this shard owns it) and
    /// tells every other shard.
    pub fn broadcast_hosting(&self, group: u32, hosted: bool) {
        self.record_hosting(group, hosted);
        for to in (0..self.shards).filter(|s| *s != self.shard) {
            self.outbound.send(to, MeshMessage::Hosting { group, hosted });
        }
        self.table_changed();
    }

    fn table_changed(&self) {
        let on_change = self.on_table_change.borrow().clone();
        if let Some(on_change) = on_change {
            on_change();
        }
    }

    fn record_hosting(&self, group: u32, hosted: bool) {
        self.count_served(group, || {
            let mut left = self.left.borrow_mut();
            if hosted {
                left.remove(&group);
            } else {
                left.insert(group);
            }
        });
    }

    /// Runs a Node API operation of a group this shard owns; a client partition joined or
    /// left is reported to every shard.
    async fn run_control(&self, op: ControlOp) -> Result<(), Status> {
        let control = self.control.borrow().clone();
        let Some(control) = control else {
            return Err(Status::unavailable("the node is still starting; retry shortly"));
        };
        match op {
            ControlOp::Bootstrap(spec) => control.bootstrap(spec).await,
            ControlOp::Join(spec) => {
                let group = spec.group_id;
                control.join(spec).await?;
                if control.is_partition(group) {
                    self.broadcast_hosting(group, true);
                }
                Ok(())
            }
            ControlOp::Leave(group) => {
                control.leave(group).await?;
                if control.is_partition(group) {
                    self.broadcast_hosting(group, false);
                }
                Ok(())
            }
        }
    }

    /// Records a leader report (ignoring reports older than what is known).
    pub fn record_leader(&self, group: u32, term: u64, leader: u64) {
        self.count_served(group, || {
            let mut leaders = self.leaders.borrow_mut();
            let entry = leaders.entry(group).or_insert((0, 0));
            if term >= entry.0 {
                *entry = (term, leader);
            }
        });
    }

    /// Reports a leader change of a group this shard owns to every other shard.
    pub fn broadcast_leader(&self, group: u32, term: u64, leader: u64) {
        self.record_leader(group, term, leader);
        for to in (0..self.shards).filter(|s| *s != self.shard) {
            self.outbound.send(to, MeshMessage::Leader { group, term, leader });
        }
    }

    /// Serves a call from shard `from`. Proposals, reads and watches go to the runtime's
    /// queue with a reply that queues the answer on the mesh: no task per call (one is
    /// spawned only when the queue is full, and for Node API operations and metrics).
    fn serve_call(self: &Rc<Self>, from: usize, call: u64, group: u32, op: CallOp) {
        edge::count(|e| e.mesh_calls_served += 1);
        let outbound = self.outbound.clone();
        let request = match op {
            CallOp::Propose(command) => Request::Propose {
                group,
                command,
                reply: Box::new(move |r| outbound.send(from, MeshMessage::Reply { call, result: CallResult::Committed(r) })),
            },
            CallOp::Read(query) => Request::Read {
                group,
                query,
                reply: Box::new(move |r| outbound.send(from, MeshMessage::Reply { call, result: CallResult::Read(r) })),
            },
            CallOp::Watch(query) => self.served_watch(from, call, group, query),
            CallOp::Control(op) => {
                self.spawn_served(from, call, async move |dispatch| CallResult::Control(dispatch.run_control(op).await));
                return;
            }
            CallOp::Metrics => {
                self.spawn_served(from, call, async move |dispatch| match dispatch.local_metrics().await {
                    Some(snapshot) => CallResult::Metrics(Box::new(snapshot)),
                    None => CallResult::Control(Err(Status::unavailable("the shard is still starting"))),
                });
                return;
            }
        };
        match self.local.try_send(request) {
            Ok(()) => {}
            Err(TrySendError::Closed(request)) => request.refuse(ShardError::ShuttingDown),
            Err(TrySendError::Full(request)) => {
                edge::count(|e| e.mesh_call_tasks_spawned += 1);
                let sender = self.local.sender();
                glommio::spawn_local(async move {
                    if let Err(GlommioError::Closed(ResourceType::Channel(request))) = sender.send(request).await {
                        request.refuse(ShardError::ShuttingDown);
                    }
                })
                .detach();
            }
        }
    }

    /// The runtime request of a watch served for shard `from`: its first state and every
    /// later change go back on the mesh.
    fn served_watch(self: &Rc<Self>, from: usize, call: u64, group: u32, query: TermQuery) -> Request {
        let key = self.new_watch_key();
        self.served_watches.borrow_mut().insert((from, call), (group, key));
        // The first state is queued in the same step that subscribes the watcher, so it
        // leaves before any change.
        let serving = Rc::clone(self);
        let first: Box<dyn FnOnce(Result<ReadTerm, ShardError>)> = Box::new(move |r| {
            if !matches!(r, Ok(ReadTerm { result: Ok(_), .. })) {
                serving.served_watches.borrow_mut().remove(&(from, call));
            }
            serving.outbound.send(from, MeshMessage::Reply { call, result: CallResult::Read(r) });
        });
        let ending = Rc::clone(self);
        let watcher = Box::new(move |event: WatchEvent<'_>| match event {
            WatchEvent::Changed(n) => {
                ending.outbound.send(from, MeshMessage::WatchEvent { call, index: n.index, term: n.term.clone() });
                true
            }
            WatchEvent::Ended(error) => {
                // Freed here, and the watching shard ends its stream.
                ending.served_watches.borrow_mut().remove(&(from, call));
                ending.outbound.send(from, MeshMessage::WatchEnded { call, error: error.clone() });
                false
            }
        });
        Request::Watch { group, key, query, first, watcher }
    }

    /// Serves a call from shard `from` that must wait on this shard (a Node API operation,
    /// a metrics snapshot) in a task of its own (rare: not counted as a call's task).
    fn spawn_served(self: &Rc<Self>, from: usize, call: u64, serve: impl AsyncFnOnce(Rc<Dispatch>) -> CallResult + 'static) {
        let dispatch = Rc::clone(self);
        glommio::spawn_local(async move {
            let result = serve(Rc::clone(&dispatch)).await;
            dispatch.outbound.send(from, MeshMessage::Reply { call, result });
        })
        .detach();
    }
}

/// A running watch: ends it when dropped (hold it for as long as the watch's client is
/// there; a handler future dropped by the gRPC layer drops it too), and hears when the
/// serving side ends it.
pub struct WatchGuard {
    dispatch: Rc<Dispatch>,
    handle: WatchHandle,
    ended: LocalReceiver<ShardError>,
}

impl WatchGuard {
    pub fn new(dispatch: Rc<Dispatch>, handle: WatchHandle, ended: LocalReceiver<ShardError>) -> WatchGuard {
        dispatch.counters.watch_started();
        WatchGuard { dispatch, handle, ended }
    }

    /// Serves the watch until its client leaves (`Ok`) or this node can no longer serve it
    /// (the replica was removed by Leave, stopped, or no longer applies the log): then the
    /// stream ends UNAVAILABLE, saying why, so the client watches again elsewhere.
    pub async fn until_closed(&self, sink: &StreamSink) -> Result<(), Status> {
        let ended = futures_lite::future::or(
            async {
                sink.closed().await;
                None
            },
            async { Some(self.ended.recv().await) },
        )
        .await;
        match ended {
            None => Ok(()),
            Some(Some(error)) => Err(Status::unavailable(format!("the watch ended: {error}; watch again"))),
            Some(None) => Err(Status::unavailable("the watch ended on this node; watch again")),
        }
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.dispatch.counters.watch_ended();
        self.dispatch.unwatch(self.handle);
    }
}

/// Forgets a one-shot call when its caller stops waiting (deadline, cancellation).
struct CallGuard<'a> {
    dispatch: &'a Dispatch,
    call: u64,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.dispatch.calls.borrow_mut().remove(&self.call);
    }
}

/// Paces retries: short pauses growing to [`MAX_RETRY_PAUSE`], within [`RETRY_BUDGET`].
struct Retry {
    deadline: Instant,
    pause: Duration,
}

impl Retry {
    fn new() -> Retry {
        Retry { deadline: Instant::now() + RETRY_BUDGET, pause: Duration::from_millis(1) }
    }

    /// Waits before the next attempt; false when the budget is spent.
    async fn again(&mut self) -> bool {
        if Instant::now() + self.pause > self.deadline {
            return false;
        }
        crate::timer_queue::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(MAX_RETRY_PAUSE);
        true
    }
}
