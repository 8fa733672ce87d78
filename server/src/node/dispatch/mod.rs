//! Cross-shard dispatch: how a gRPC handler on any shard reaches the shard that owns a
//! group. Requests for a local group go straight to the local [`ShardHandle`]; others cross
//! to the owning shard over glommio's channel mesh and their answers (and a watch's later
//! changes) come back the same way. The mesh also carries accepted client connections
//! (spread over shards) and leader updates (so every shard knows every group's leader).
//!
//! Three layers, each calling only those below it: `routing.rs` (which shard owns a group,
//! the leader table, retries through leader changes) over `calls.rs` (the calls in flight
//! between shards, and those served here for other shards) over `mesh.rs` (the messages
//! between shards, their queues, and the tasks that receive them and hand each to the layer
//! that owns it). Routing's leader and hosting reports go on the mesh directly: they are
//! not calls. This file holds [`Dispatch`], the state of all three, and the node-level
//! services built on them (Node API operations, metrics snapshots, node events).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use conclave_engine::shard::{oneshot, ShardHandle};
use glommio::channels::channel_mesh::Senders;

use crate::grpc::{LocalBoxFuture, Status};
use crate::metrics::{ShardCounters, ShardSnapshot};

use super::groups::GroupControl;

mod calls;
mod mesh;
mod routing;

use calls::{CallGuard, PendingCall};

pub use calls::{WatchCallback, WatchGuard, WatchHandle};
pub use mesh::{CallOp, CallResult, ControlOp, EventHandler, MeshMessage, NodeEvent, Outbound};
pub use routing::LeaderTable;

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
        let outbound = Outbound::start(shard, shards, senders);
        Rc::new(Dispatch {
            shard,
            shards,
            local,
            outbound,
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
}
