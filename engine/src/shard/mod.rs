//! The shard runtime: how one glommio shard runs its Raft groups. Each group is a
//! [`Replica`] (Raft node + state machine + waiting requests); the [`ShardRuntime`] task
//! owns all of them and the shard's log, and serves [`Request`]s sent through a
//! [`ShardHandle`]. Nothing here knows about gRPC; peers and events are callbacks.

mod error;
mod replica;
mod runtime;
mod storage;

pub use error::ShardError;
pub use replica::{Committed, ReadTerm, Replica, Reply, TermQuery, Watcher};
pub use runtime::{
    Clock, EventSink, GroupWrite, LogStore, Request, RuntimeConfig, ShardHandle, ShardRuntime,
    Transport,
};
pub use storage::recover_replica;
