//! The gRPC services a node mounts on the edge: the client API
//! (`atomix.runtime.election.v1`), the driver API (`atomix.multiraft.v1` Partition and
//! Session, `atomix.multiraft.election.v1`), the connection-bound client sessions behind
//! the client API, and the mapping of engine outcomes to gRPC statuses.

mod client;
mod driver;
pub mod node_control;
mod sessions;
pub mod status;

pub use client::{ClientApi, WATCH_LIMITS};
pub use driver::DriverApi;
pub use sessions::{ClientSessions, SessionObserver, Sequenced};
