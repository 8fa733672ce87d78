//! What the Node control API (api.md §3) asks of the node, as the node implements it: the
//! validated group configurations Bootstrap and Join carry, and the [`NodeControl`] trait
//! the gRPC handlers call. The node (`crate::node`) implements the trait; the handlers in
//! `service::node` only validate, call and map errors.

use std::future::Future;
use std::pin::Pin;

use crate::grpc::Status;

/// A member's role in a group (api.md `MemberConfig.Role`, without UNKNOWN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberRole {
    /// A voter that runs the state machine.
    Member,
    /// A non-voting learner.
    Observer,
    /// A voter that keeps log metadata only: no payloads, no state machine.
    Witness,
}

/// One member of a group: its node id, its peer address and its role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSpec {
    pub node_id: u64,
    pub host: String,
    pub port: u16,
    pub role: MemberRole,
}

/// A validated `GroupConfig`: a non-zero group id and members with distinct node ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSpec {
    pub group_id: u32,
    pub members: Vec<MemberSpec>,
}

/// A boxed future local to the shard (the node's types are not `Send`).
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// The node's side of the Node API. Every method resolves once the thing is done (or has
/// failed with a status that says why); none of them may panic on any input.
pub trait NodeControl {
    /// Starts this node's replica of a new group whose initial configuration is `group`.
    fn bootstrap(&self, group: GroupSpec) -> LocalFuture<Result<(), Status>>;
    /// Starts a replica of an existing group and has the group's leader add it with the
    /// role `group` gives this node; resolves once the change is committed.
    fn join(&self, group: GroupSpec) -> LocalFuture<Result<(), Status>>;
    /// Removes this node's replica of `group_id` from the group, then deletes it and its data.
    fn leave(&self, group_id: u32) -> LocalFuture<Result<(), Status>>;
}
