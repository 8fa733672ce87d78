//! The node's side of the Node API, on shard 0 (which serves the admin listener): each
//! operation runs on the shard that owns the group, and every shard's events reach the
//! Node API's Watch, with the current state (hosted groups and their leaders) first.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use conclave_engine::shard::ShardEvent;

use crate::grpc::Status;
use crate::service::events::{self, EventConverter, EventHub};
use crate::service::node_control::{GroupSpec, LocalFuture, NodeControl};

use super::dispatch::{ControlOp, Dispatch, NodeEvent};

/// Routes Node API operations to the owning shards.
pub struct NodeControlRouter {
    pub dispatch: Rc<Dispatch>,
}

impl NodeControl for NodeControlRouter {
    fn bootstrap(&self, group: GroupSpec) -> LocalFuture<Result<(), Status>> {
        let dispatch = Rc::clone(&self.dispatch);
        Box::pin(async move { dispatch.control(group.group_id, ControlOp::Bootstrap(group)).await })
    }

    fn join(&self, group: GroupSpec) -> LocalFuture<Result<(), Status>> {
        let dispatch = Rc::clone(&self.dispatch);
        Box::pin(async move { dispatch.control(group.group_id, ControlOp::Join(group)).await })
    }

    fn leave(&self, group_id: u32) -> LocalFuture<Result<(), Status>> {
        let dispatch = Rc::clone(&self.dispatch);
        Box::pin(async move { dispatch.control(group_id, ControlOp::Leave(group_id)).await })
    }
}

/// Shard 0's gathering of the node's events into the Node API's hub.
pub struct NodeEvents {
    converter: RefCell<EventConverter>,
    hosted: Rc<RefCell<BTreeSet<u32>>>,
    pub hub: Rc<EventHub>,
}

impl NodeEvents {
    /// A hub whose subscribers first get, for every hosted group, member_ready and (when
    /// known) leader_updated.
    pub fn new(node_id: u64, dispatch: &Rc<Dispatch>) -> Rc<NodeEvents> {
        let hosted: Rc<RefCell<BTreeSet<u32>>> = Rc::default();
        let current = {
            let hosted = Rc::clone(&hosted);
            let leaders = Rc::clone(&dispatch.leaders);
            Box::new(move || {
                let leaders = leaders.borrow();
                let mut state = Vec::new();
                for &group in hosted.borrow().iter() {
                    state.push(events::member_ready(group, node_id));
                    if let Some(&(term, leader)) = leaders.get(&group) {
                        if leader != 0 {
                            state.push(events::leader_updated(group, term, leader));
                        }
                    }
                }
                state
            })
        };
        Rc::new(NodeEvents { converter: RefCell::new(EventConverter::new(node_id)), hosted, hub: Rc::new(EventHub::new(current)) })
    }

    /// Publishes one event of any shard.
    pub fn publish(&self, event: NodeEvent) {
        match event {
            NodeEvent::Connection(event) => self.hub.publish(events::connection_event(&event)),
            NodeEvent::Group(group, event) => {
                match &event {
                    ShardEvent::MemberReady { .. } => {
                        self.hosted.borrow_mut().insert(group);
                    }
                    ShardEvent::MemberRemoved => {
                        self.hosted.borrow_mut().remove(&group);
                    }
                    _ => {}
                }
                for converted in self.converter.borrow_mut().convert(group, &event) {
                    self.hub.publish(converted);
                }
            }
        }
    }
}
