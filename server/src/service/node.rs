//! The Node control API (api.md §3, `atomix.multiraft.v1.Node`): Bootstrap and Join validate
//! their `GroupConfig` into a [`GroupSpec`] (INVALID_ARGUMENT, and no call, when it is not
//! one) and hand it to the node's [`NodeControl`]; Leave does the same with a group id;
//! Watch streams the node's [`EventHub`]. The node's own statuses pass through unchanged.

use std::collections::BTreeSet;
use std::rc::Rc;

use bytes::Bytes;
use conclave_proto::atomix::multiraft::v1 as pb;
use futures_lite::future::or;
use pb::member_config::Role as RoleProto;
use prost::Message as _;

use crate::grpc::{OverflowPolicy, Router, Status, StreamLimits, StreamSink};

use super::events::EventHub;
use super::node_control::{GroupSpec, MemberRole, MemberSpec, NodeControl};

const NODE: &str = "/atomix.multiraft.v1.Node/";

/// Limits of a Node Watch stream's send queue. The handler waits for room rather than
/// overflowing it; how far a watcher may fall behind is the [`EventHub`]'s bound.
pub const NODE_WATCH_LIMITS: StreamLimits =
    StreamLimits { max_queued_messages: 1024, max_queued_bytes: 1 << 20, overflow: OverflowPolicy::EndStream };

/// What the Node API's handlers share on the shard that serves it.
pub struct NodeApi {
    pub control: Rc<dyn NodeControl>,
    pub events: Rc<EventHub>,
}

impl NodeApi {
    pub fn new(control: Rc<dyn NodeControl>, events: Rc<EventHub>) -> NodeApi {
        NodeApi { control, events }
    }

    /// Mounts Bootstrap, Join, Leave and Watch on `router`.
    pub fn register(self: &Rc<Self>, router: &mut Router) {
        let api = Rc::clone(self);
        router.unary_message(&format!("{NODE}Bootstrap"), move |req: pb::BootstrapRequest, _ctx| {
            let api = Rc::clone(&api);
            async move {
                let group = group_spec("Bootstrap", req.group.as_ref())?;
                api.control.bootstrap(group).await?;
                Ok(pb::BootstrapResponse {})
            }
        });
        let api = Rc::clone(self);
        router.unary_message(&format!("{NODE}Join"), move |req: pb::JoinRequest, _ctx| {
            let api = Rc::clone(&api);
            async move {
                let group = group_spec("Join", req.group.as_ref())?;
                api.control.join(group).await?;
                Ok(pb::JoinResponse {})
            }
        });
        let api = Rc::clone(self);
        router.unary_message(&format!("{NODE}Leave"), move |req: pb::LeaveRequest, _ctx| {
            let api = Rc::clone(&api);
            async move {
                if req.group_id == 0 {
                    return Err(Status::invalid_argument("Leave: group_id 0 is not a group (group ids start at 1)"));
                }
                api.control.leave(req.group_id).await?;
                Ok(pb::LeaveResponse {})
            }
        });
        let api = Rc::clone(self);
        router.server_streaming_message(&format!("{NODE}Watch"), NODE_WATCH_LIMITS, move |_req: pb::WatchRequest, _ctx, sink| {
            let api = Rc::clone(&api);
            async move { api.watch(sink).await }
        });
    }

    /// Streams the node's current state, then every event, until the client leaves or
    /// falls too far behind (the hub then ends the stream with RESOURCE_EXHAUSTED).
    async fn watch(&self, sink: StreamSink) -> Result<(), Status> {
        let mut subscription = self.events.subscribe();
        loop {
            let event = subscription.recv().await?;
            let message = Bytes::from(event.encode_to_vec());
            // A client that stops reading blocks the send; the hub may end the
            // subscription meanwhile, and the stream must end then, not when it reads again.
            or(async { sink.send(message).await.map_err(|e| Status::internal(format!("could not queue a node event: {e}"))) }, async {
                Err(subscription.ended().await)
            })
            .await?;
        }
    }
}

/// Validates a `GroupConfig` into a [`GroupSpec`]; `method` prefixes the error messages.
fn group_spec(method: &str, group: Option<&pb::GroupConfig>) -> Result<GroupSpec, Status> {
    let invalid = |message: String| Status::invalid_argument(format!("{method}: {message}"));
    let group = group.ok_or_else(|| invalid("the request has no group".into()))?;
    let group_id = group.group_id;
    if group_id == 0 {
        return Err(invalid("group_id 0 is not a group (group ids start at 1)".into()));
    }
    if group.members.is_empty() {
        return Err(invalid(format!("group {group_id} has no members")));
    }
    let mut seen = BTreeSet::new();
    let mut members = Vec::with_capacity(group.members.len());
    for (i, member) in group.members.iter().enumerate() {
        let at = format!("group {group_id}, members[{i}] (node {})", member.node_id);
        let spec = member_spec(member).map_err(|problem| invalid(format!("{at}: {problem}")))?;
        if !seen.insert(spec.node_id) {
            return Err(invalid(format!("{at}: node {} is listed more than once", spec.node_id)));
        }
        members.push(spec);
    }
    Ok(GroupSpec { group_id, members })
}

fn member_spec(member: &pb::MemberConfig) -> Result<MemberSpec, String> {
    if member.node_id == 0 {
        return Err("node_id 0 is not a node (node ids start at 1)".into());
    }
    let role = match RoleProto::try_from(member.role) {
        Ok(RoleProto::Member) => MemberRole::Member,
        Ok(RoleProto::Observer) => MemberRole::Observer,
        Ok(RoleProto::Witness) => MemberRole::Witness,
        Ok(RoleProto::Unknown) => return Err("role is UNKNOWN: give MEMBER, OBSERVER or WITNESS".into()),
        Err(_) => return Err(format!("role {} is not a MemberConfig.Role: give MEMBER, OBSERVER or WITNESS", member.role)),
    };
    if member.host.is_empty() {
        return Err("host is empty".into());
    }
    let port =
        u16::try_from(member.port).ok().filter(|&port| port != 0).ok_or_else(|| format!("port {} is outside 1..=65535", member.port))?;
    Ok(MemberSpec { node_id: u64::from(member.node_id), host: member.host.clone(), port, role })
}
