//! The mesh between the node's shards: every [`MeshMessage`] that crosses between them
//! (calls and their answers, watch events, leader and hosting reports, node events,
//! accepted connections), the per-destination [`Outbound`] queues that send them, and the
//! tasks that receive them and hand each to the layer that owns it (calls in flight,
//! routing tables, connections, node events).
//!
//! Mesh messages are only sent from the tasks that drain [`Outbound`] queues, so code that
//! must not wait (a watcher called during apply) never blocks on a full mesh channel.

use std::rc::Rc;

use conclave_engine::shard::{Committed, ReadTerm, ShardError, ShardEvent, TermQuery};
use conclave_engine::sm::{Command, ElectionTerm};
use conclave_wire::ConnectionEvent;
use futures_lite::StreamExt;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::AcceptedTcpStream;

use crate::grpc::Status;
use crate::metrics::ShardSnapshot;
use crate::service::node_control::GroupSpec;

use super::Dispatch;

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

/// Per-destination queues of mesh messages, each drained by its own task.
#[derive(Clone)]
pub struct Outbound {
    queues: Rc<Vec<Option<LocalSender<MeshMessage>>>>,
}

impl Outbound {
    /// Starts one task per other shard that drains its queue into the mesh (`senders`).
    pub(super) fn start(shard: usize, shards: usize, senders: Senders<MeshMessage>) -> Outbound {
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
        Outbound { queues: Rc::new(queues) }
    }

    /// Queues `msg` for shard `to`. Never waits; fails only while shutting down.
    pub fn send(&self, to: usize, msg: MeshMessage) {
        if let Some(Some(queue)) = self.queues.get(to) {
            let _ = queue.try_send(msg);
        }
    }
}

impl Dispatch {
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
            MeshMessage::Reply { call, result } => self.call_answered(call, result),
            MeshMessage::WatchEvent { call, index, term } => self.watch_changed(call, index, term),
            MeshMessage::WatchEnded { call, error } => self.watch_ended(call, error),
            MeshMessage::CancelWatch { from, call } => self.cancel_served_watch(from, call),
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
}
