//! The shard runtime: how one glommio shard runs its Raft groups. Each group is a
//! [`Replica`] (Raft node + state machine + waiting requests); the [`ShardRuntime`] task
//! owns all of them and the shard's log, and serves [`Request`]s sent through a
//! [`ShardHandle`]. Nothing here knows about gRPC; peers and events are callbacks.

mod api;
mod clock;
mod counters;
mod error;
mod expiry;
mod groups;
mod idle;
mod liveness;
pub mod loopback;
mod oneshot;
mod peer;
mod peer_requests;
mod ready;
mod rebalance;
mod replica;
mod run_loop;
mod runtime;
mod schedule;
mod stall;
mod stats;
mod storage;
mod upkeep;
mod workload;

pub use api::{
    Clock, Durable, EventSink, GroupWrite, LogStore, MonotonicClock, Request, RuntimeConfig, ShardEvent, ShardHandle, Transport,
    TrySendError,
};
pub use counters::{CounterValues, ShardCounters};
pub use error::ShardError;
pub use oneshot::{oneshot, OneshotReceiver, OneshotSender};
pub use replica::{Committed, ReadTerm, Replica, Reply, SnapshotCapture, TermQuery, WatchEvent, Watcher, MAX_HELD_READS};
pub use runtime::ShardRuntime;
pub use stats::{DurationHistogram, GroupStats, RuntimeStats, StorageStats, DURATION_BUCKETS};
pub use storage::{load_snapshot, recover_replica, LoadedSnapshot, ShardStorage, SNAPSHOT_FORMAT_VERSION};
