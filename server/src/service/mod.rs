//! The gRPC services a node mounts on the edge: the client API
//! (`atomix.runtime.election.v1`), the driver API (`atomix.multiraft.v1` Partition and
//! Session, `atomix.multiraft.election.v1`), the connection-bound client sessions behind
//! the client API, the control API (`atomix.multiraft.v1.Node`) with the node events its
//! Watch streams, and the mapping of engine outcomes to gRPC statuses.

mod client;
mod driver;
pub mod events;
pub mod node;
pub mod node_control;
mod sessions;
pub mod status;

pub use client::{ClientApi, WATCH_LIMITS};
pub use driver::DriverApi;
pub use events::{connection_event, EventConverter, EventHub, Subscription};
pub use node::NodeApi;
pub use sessions::{ClientSessions, Sequenced, SessionObserver};
