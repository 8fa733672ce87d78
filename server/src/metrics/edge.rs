//! What the edge of one shard costs, in machine-independent units: calls served without a
//! task of their own, tasks spawned for calls (client calls and calls from other shards),
//! deadlines and retry pauses on the shard's shared timer queue and how often its one timer
//! was armed, and writes to client connections. One set per shard: the counters live in a
//! thread-local (a shard is one executor thread), so the gRPC connections, the timer queue
//! and the cross-shard dispatch all count into it without being handed a reference, and a
//! scrape reads them on each shard ([`crate::metrics::ShardSnapshot::edge`]).
use std::cell::Cell;

/// A copy of one shard's edge counters (or their sum over shards).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EdgeStats {
    /// Unary calls served in their connection's call table (no task of their own).
    pub unary_calls_inline: u64,
    /// Tasks spawned for client calls (server and bidirectional streams).
    pub call_tasks_spawned: u64,
    /// Calls from other shards served here.
    pub mesh_calls_served: u64,
    /// Tasks spawned for proposals, reads and watches from other shards (only when the
    /// runtime's queue was full; Node API operations and metrics scrapes, which wait on
    /// this shard, have a task each and are not counted).
    pub mesh_call_tasks_spawned: u64,
    /// Deadlines put on the shard's timer queue (`grpc-timeout`s and retry pauses).
    pub deadlines_queued: u64,
    /// Times the timer queue's one timer was armed (or moved earlier).
    pub timer_arms: u64,
    /// Writes to client connections (`poll_write` calls that wrote bytes): fewer than
    /// calls when the answers of one round leave together.
    pub connection_writes: u64,
}

impl EdgeStats {
    /// Adds `other` into `self` (a node's sum over its shards).
    pub fn merge(&mut self, other: &EdgeStats) {
        self.unary_calls_inline += other.unary_calls_inline;
        self.call_tasks_spawned += other.call_tasks_spawned;
        self.mesh_calls_served += other.mesh_calls_served;
        self.mesh_call_tasks_spawned += other.mesh_call_tasks_spawned;
        self.deadlines_queued += other.deadlines_queued;
        self.timer_arms += other.timer_arms;
        self.connection_writes += other.connection_writes;
    }
}

thread_local! {
    static EDGE: Cell<EdgeStats> = Cell::new(EdgeStats::default());
}

/// Counts something on this shard's edge counters.
pub fn count(change: impl FnOnce(&mut EdgeStats)) {
    EDGE.with(|edge| {
        let mut stats = edge.get();
        change(&mut stats);
        edge.set(stats);
    });
}

/// This shard's edge counters as they are now.
pub fn snapshot() -> EdgeStats {
    EDGE.with(Cell::get)
}
