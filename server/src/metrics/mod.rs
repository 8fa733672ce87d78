//! The node's metrics and probes, served over plain HTTP (`--metrics-listen`).
//!
//! Each shard counts on its own ([`ShardCounters`]: plain cells, no atomics, so shards never
//! contend) and answers a scrape with a [`ShardSnapshot`] of everything it knows: its
//! counters, its gRPC calls ([`GrpcCallStats`]), its peers, its storage timings and its
//! runtime's view of every group it hosts. Shard 0 gathers the snapshots over the shard
//! mesh, adds them up into a [`NodeMetrics`] and encodes them with `prometheus-client`
//! ([`exposition`]), with the process's own CPU, memory and file descriptors
//! ([`process`]); [`http`] is the small HTTP/1.1 server in front of it.

pub mod edge;
pub mod exposition;
mod grpc;
pub mod http;
pub mod process;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use conclave_engine::shard::{DurationHistogram, RuntimeStats};

pub use edge::EdgeStats;
pub use grpc::{GrpcCallStats, GrpcMethodStats, ShardCallObserver};

/// What one shard counts as it runs (increments only; read at scrape time).
#[derive(Debug, Default)]
pub struct ShardCounters {
    /// Changes to a new, known leader of the groups this shard owns.
    leader_changes: Cell<u64>,
    last_leaders: RefCell<BTreeMap<u32, u64>>,
    /// Proposals that ended in an error (after the retries through leader changes).
    proposals_failed: Cell<u64>,
    /// Watch streams open on this shard.
    watch_streams: Cell<u64>,
    /// Keep-alive entries proposed for this shard's client sessions.
    keep_alive_entries: Cell<u64>,
    /// Whether this shard's connection to each peer node is up.
    peers_connected: RefCell<BTreeMap<u64, bool>>,
    pub grpc: GrpcCallStats,
}

impl ShardCounters {
    /// A group of this shard reported `leader` (0: none known); counts a change to a new
    /// known leader, as etcd's `leader_changes_seen_total` does.
    pub fn leader_seen(&self, group: u32, leader: u64) {
        let previous = self.last_leaders.borrow_mut().insert(group, leader);
        if leader != 0 && previous != Some(leader) {
            self.leader_changes.set(self.leader_changes.get() + 1);
        }
    }

    pub fn proposal_failed(&self) {
        self.proposals_failed.set(self.proposals_failed.get() + 1);
    }

    pub fn keep_alive_entry(&self) {
        self.keep_alive_entries.set(self.keep_alive_entries.get() + 1);
    }

    pub fn keep_alive_entries(&self) -> u64 {
        self.keep_alive_entries.get()
    }

    pub fn watch_started(&self) {
        self.watch_streams.set(self.watch_streams.get() + 1);
    }

    pub fn watch_ended(&self) {
        self.watch_streams.set(self.watch_streams.get().saturating_sub(1));
    }

    /// This shard's connection to node `node` came up or failed.
    pub fn peer_connection(&self, node: u64, up: bool) {
        self.peers_connected.borrow_mut().insert(node, up);
    }

    pub fn leader_changes(&self) -> u64 {
        self.leader_changes.get()
    }

    pub fn proposals_failed(&self) -> u64 {
        self.proposals_failed.get()
    }

    pub fn watch_streams(&self) -> u64 {
        self.watch_streams.get()
    }

    pub fn is_connected(&self, node: u64) -> bool {
        self.peers_connected.borrow().get(&node).copied().unwrap_or(false)
    }
}

/// One peer node as one shard sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerSnapshot {
    pub node: u64,
    /// Connections of this node's shards to the peer that are up (0 or 1 per shard).
    pub connected: u64,
    /// Heartbeat round trips to the peer.
    pub rtt: DurationHistogram,
    /// Messages taken for a write to the peer that failed.
    pub sent_failures: u64,
    /// Connection attempts or connections to the peer that failed.
    pub connection_failures: u64,
    pub bytes_sent: u64,
}

impl PeerSnapshot {
    fn merge(&mut self, other: &PeerSnapshot) {
        self.connected += other.connected;
        self.rtt.merge(&other.rtt);
        self.sent_failures += other.sent_failures;
        self.connection_failures += other.connection_failures;
        self.bytes_sent += other.bytes_sent;
    }
}

/// Everything one shard reports to a scrape. Plain data: it crosses to shard 0.
#[derive(Clone, Debug, Default)]
pub struct ShardSnapshot {
    pub shard: usize,
    /// The runtime's view of its groups; `None` when the runtime did not answer in time.
    pub runtime: Option<RuntimeStats>,
    pub flush: DurationHistogram,
    pub snapshot_save: DurationHistogram,
    pub storage_failures: u64,
    pub leader_changes: u64,
    pub proposals_failed: u64,
    pub watch_streams: u64,
    /// Client-API sessions of the connections this shard serves.
    pub client_sessions: u64,
    /// Keep-alive entries proposed for them.
    pub keep_alive_entries: u64,
    pub grpc: Vec<GrpcMethodStats>,
    pub peers: Vec<PeerSnapshot>,
    /// What this shard's gRPC edge and cross-shard dispatch cost ([`edge`]).
    pub edge: EdgeStats,
}

/// The node's metrics: every shard's snapshot added up.
#[derive(Clone, Debug, Default)]
pub struct NodeMetrics {
    pub node_id: u64,
    /// Every shard, and whether it (and its runtime) answered the scrape.
    pub shards_up: Vec<(usize, bool)>,
    pub runtime: RuntimeStats,
    pub flush: DurationHistogram,
    pub snapshot_save: DurationHistogram,
    pub storage_failures: u64,
    pub leader_changes: u64,
    pub proposals_failed: u64,
    pub watch_streams: u64,
    pub client_sessions: u64,
    pub keep_alive_entries: u64,
    pub grpc: BTreeMap<(String, String, bool), GrpcMethodStats>,
    pub peers: BTreeMap<u64, PeerSnapshot>,
    pub edge: EdgeStats,
}

impl NodeMetrics {
    /// Adds up the snapshots of the shards that answered; `answers` has one entry per
    /// shard, `None` for a shard that did not answer.
    pub fn merge(node_id: u64, answers: Vec<(usize, Option<ShardSnapshot>)>) -> NodeMetrics {
        let mut node = NodeMetrics { node_id, ..NodeMetrics::default() };
        for (shard, answer) in answers {
            let Some(snapshot) = answer else {
                node.shards_up.push((shard, false));
                continue;
            };
            node.shards_up.push((shard, snapshot.runtime.is_some()));
            if let Some(runtime) = snapshot.runtime {
                node.runtime.groups.extend(runtime.groups);
                node.runtime.forwarded_pending += runtime.forwarded_pending;
                node.runtime.work = node.runtime.work.plus(&runtime.work);
            }
            node.flush.merge(&snapshot.flush);
            node.snapshot_save.merge(&snapshot.snapshot_save);
            node.storage_failures += snapshot.storage_failures;
            node.leader_changes += snapshot.leader_changes;
            node.proposals_failed += snapshot.proposals_failed;
            node.watch_streams += snapshot.watch_streams;
            node.client_sessions += snapshot.client_sessions;
            node.keep_alive_entries += snapshot.keep_alive_entries;
            node.edge.merge(&snapshot.edge);
            for method in snapshot.grpc {
                let key = (method.service.clone(), method.method.clone(), method.streaming);
                match node.grpc.get_mut(&key) {
                    Some(known) => known.merge(&method),
                    None => {
                        node.grpc.insert(key, method);
                    }
                }
            }
            for peer in snapshot.peers {
                node.peers.entry(peer.node).or_insert_with(|| PeerSnapshot { node: peer.node, ..PeerSnapshot::default() }).merge(&peer);
            }
        }
        node.runtime.groups.sort_by_key(|g| g.group);
        node
    }
}
