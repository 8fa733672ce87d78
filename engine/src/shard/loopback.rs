//! Shard runtimes of several nodes in one glommio executor, each on its own real storage
//! (the io_uring log and snapshot store under one directory per node), connected by an
//! in-memory network that delivers peer messages in order. No gRPC, no TCP: what is left
//! is the engine's own cost, so the engine-alone benchmark (`engine-bench`) and the tests
//! that pin the work per command (`tests/shard_round_costs.rs`) both run on it.
//!
//! The network counts every Raft message it carries by (from, to, kind) and the entries
//! in appends, beside each runtime's own [`ShardCounters`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conclave_proto::conclave::peer::v1::{peer_message::Body, PeerMessage};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::task::JoinHandle;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::log::{Log, LogOptions, SnapshotStore};
use crate::raft::{Config, Membership, MessageType, RaftEvent, RaftRole};

use super::api::{Request, RuntimeConfig, ShardEvent, ShardHandle};
use super::counters::ShardCounters;
use super::error::ShardError;
use super::runtime::ShardRuntime;
use super::storage::{load_snapshot, recover_replica, ShardStorage};

/// Settings of a loopback cluster.
#[derive(Clone, Debug)]
pub struct LoopbackOptions {
    /// Node ids; every group has all of them as voters.
    pub nodes: Vec<u64>,
    /// Groups 1..=groups.
    pub groups: u32,
    pub tick: Duration,
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    /// Log segment size (bytes).
    pub segment_bytes: u64,
    /// How long leaders hold back commit notices (zero, the default as in the server: they
    /// do not; see `RuntimeConfig::commit_notice_delay`).
    pub commit_notice_delay: Duration,
    /// Snapshot each group every this many applied entries (and, with a log ratio, once
    /// those outweigh the last snapshot), keeping `compaction_tail` entries in memory below
    /// it (`RuntimeConfig::snapshot_every` and `snapshot_log_ratio`; 0, the default here,
    /// never snapshots).
    pub snapshot_every: u64,
    pub snapshot_log_ratio: u64,
    pub compaction_tail: u64,
    /// Lease reads, and followers serving reads under leases from their leader
    /// (`raft::Config::follower_leases`); off by default here.
    pub follower_reads: bool,
}

impl Default for LoopbackOptions {
    fn default() -> Self {
        LoopbackOptions {
            nodes: vec![1, 2, 3],
            groups: 1,
            tick: Duration::from_millis(10),
            election_ticks: 10,
            heartbeat_ticks: 2,
            segment_bytes: 8 << 20,
            commit_notice_delay: Duration::ZERO,
            snapshot_every: 0,
            snapshot_log_ratio: 0,
            compaction_tail: 0,
            follower_reads: false,
        }
    }
}

/// Raft messages the network carried, by (from, to, kind name), and entries in appends.
#[derive(Debug, Default, Clone)]
pub struct WireCounts {
    pub messages: BTreeMap<(u64, u64, &'static str), u64>,
    pub entries: BTreeMap<(u64, u64), u64>,
}

impl WireCounts {
    /// Messages of `kind` from `from` to `to`.
    pub fn count(&self, from: u64, to: u64, kind: &'static str) -> u64 {
        self.messages.get(&(from, to, kind)).copied().unwrap_or(0)
    }
}

/// The name under which [`WireCounts`] counts a Raft message.
pub fn message_kind(msg: &crate::raft::Message) -> &'static str {
    match MessageType::try_from(msg.msg_type) {
        Ok(MessageType::Append) if !msg.entries.is_empty() => "append",
        Ok(MessageType::Append) if msg.commit_only => "commit_notice",
        Ok(MessageType::Append) => "empty_append",
        Ok(MessageType::AppendResponse) => "append_response",
        Ok(MessageType::Heartbeat) => "heartbeat",
        Ok(MessageType::HeartbeatResponse) => "heartbeat_response",
        _ => "other",
    }
}

type Wire = (u64, u64, PeerMessage);

#[derive(Default)]
struct Net {
    handles: RefCell<BTreeMap<u64, ShardHandle>>,
    counts: RefCell<WireCounts>,
}

impl Net {
    fn record(&self, from: u64, to: u64, message: &PeerMessage) {
        let Some(Body::Raft(batch)) = &message.body else { return };
        let mut counts = self.counts.borrow_mut();
        for msg in &batch.messages {
            *counts.messages.entry((from, to, message_kind(msg))).or_default() += 1;
            *counts.entries.entry((from, to)).or_default() += msg.entries.len() as u64;
        }
    }
}

async fn deliver(net: Rc<Net>, queue: LocalReceiver<Wire>) {
    while let Some((from, to, message)) = queue.recv().await {
        let handle = net.handles.borrow().get(&to).cloned();
        if let Some(handle) = handle {
            let _ = handle.send(Request::Peer { from, message }).await;
        }
    }
}

struct LoopbackNode {
    handle: ShardHandle,
    counters: Rc<ShardCounters>,
    task: JoinHandle<Result<(), ShardError>>,
}

/// Running shard runtimes of every node, one group set, on real storage.
pub struct LoopbackCluster {
    net: Rc<Net>,
    nodes: BTreeMap<u64, LoopbackNode>,
    /// The leader each node last heard of, per group.
    leaders: Rc<RefCell<ByNodeAndGroup<(u64, u64)>>>,
    /// Each node's role per group, with its term.
    roles: Rc<RefCell<ByNodeAndGroup<(RaftRole, u64)>>>,
}

/// What each node knows of each group, keyed by (node, group).
type ByNodeAndGroup<T> = BTreeMap<(u64, u32), T>;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl LoopbackCluster {
    /// Starts one runtime per node with fresh (or recovered) storage under `dir`.
    pub async fn start(opts: &LoopbackOptions, dir: &Path) -> Result<LoopbackCluster, String> {
        let (sender, receiver) = local_channel::new_unbounded();
        let net = Rc::new(Net::default());
        glommio::spawn_local(deliver(Rc::clone(&net), receiver)).detach();
        let queue: Rc<LocalSender<Wire>> = Rc::new(sender);
        let mut cluster = LoopbackCluster { net, nodes: BTreeMap::new(), leaders: Rc::default(), roles: Rc::default() };
        let membership = Membership::voters(opts.nodes.iter().copied()).map_err(|e| e.to_string())?;
        for &id in &opts.nodes {
            let node = cluster.start_node(opts, id, &membership, &dir.join(format!("node{id}")), Rc::clone(&queue)).await?;
            cluster.net.handles.borrow_mut().insert(id, node.handle.clone());
            cluster.nodes.insert(id, node);
        }
        Ok(cluster)
    }

    async fn start_node(
        &self,
        opts: &LoopbackOptions,
        id: u64,
        membership: &Membership,
        dir: &Path,
        queue: Rc<LocalSender<Wire>>,
    ) -> Result<LoopbackNode, String> {
        let (log, recovery) =
            Log::open(dir.join("log"), LogOptions::with_segment_bytes(opts.segment_bytes)).await.map_err(|e| e.to_string())?;
        let snapshots = SnapshotStore::open(dir.join("snapshots")).await.map_err(|e| e.to_string())?;
        let mut replicas = BTreeMap::new();
        for group in 1..=opts.groups {
            let mut cfg = Config::new(id, group);
            cfg.election_ticks = opts.election_ticks;
            cfg.heartbeat_ticks = opts.heartbeat_ticks;
            cfg.hold_commit_notices = !opts.commit_notice_delay.is_zero();
            if opts.follower_reads {
                // The runtime's clock here counts milliseconds: so does the lease.
                let tick_ms = u64::try_from(opts.tick.as_millis()).unwrap_or(u64::MAX);
                cfg.lease_reads = true;
                cfg.follower_leases = true;
                cfg.lease_micros = Config::safe_lease_micros(opts.election_ticks, tick_ms);
            }
            let snapshot = load_snapshot(&snapshots, group).await?;
            let rng = ChaCha8Rng::seed_from_u64(now_ms() ^ (id << 32) ^ u64::from(group));
            let replica =
                recover_replica(cfg, membership.clone(), snapshot, recovery.groups.get(&group), rng).map_err(|e| e.to_string())?;
            replicas.insert(group, replica);
        }
        let net = Rc::clone(&self.net);
        let transport = Box::new(move |to: u64, message: PeerMessage| {
            net.record(id, to, &message);
            let _ = queue.try_send((id, to, message));
        });
        let (leaders, roles) = (Rc::clone(&self.leaders), Rc::clone(&self.roles));
        let sink = Box::new(move |group: u32, event: &ShardEvent| match event {
            ShardEvent::Raft(RaftEvent::LeaderChanged { term, leader }) => {
                leaders.borrow_mut().insert((id, group), (*leader, *term));
            }
            ShardEvent::Raft(RaftEvent::RoleChanged { role, term }) => {
                roles.borrow_mut().insert((id, group), (*role, *term));
            }
            _ => {}
        });
        let cfg = RuntimeConfig {
            commit_notice_delay: opts.commit_notice_delay,
            snapshot_every: opts.snapshot_every,
            snapshot_log_ratio: opts.snapshot_log_ratio,
            compaction_tail: opts.compaction_tail,
            ..RuntimeConfig::new(id, opts.tick)
        };
        let runtime = ShardRuntime::new(cfg, replicas, ShardStorage::new(log, snapshots), transport, sink, Box::new(now_ms));
        let handle = runtime.handle();
        let counters = runtime.counters();
        let task = glommio::spawn_local(runtime.run()).detach();
        Ok(LoopbackNode { handle, counters, task })
    }

    pub fn handle(&self, node: u64) -> ShardHandle {
        self.nodes[&node].handle.clone()
    }

    pub fn counters(&self, node: u64) -> Rc<ShardCounters> {
        Rc::clone(&self.nodes[&node].counters)
    }

    /// What the network carried so far.
    pub fn wire(&self) -> WireCounts {
        self.net.counts.borrow().clone()
    }

    /// The node leading `group` at the highest term any node reports, if one does.
    pub fn leader(&self, group: u32) -> Option<u64> {
        let roles = self.roles.borrow();
        roles
            .iter()
            .filter(|((_, g), (role, _))| *g == group && *role == RaftRole::Leader)
            .max_by_key(|(_, (_, term))| *term)
            .map(|((node, _), _)| *node)
    }

    /// True when every node knows `leader` as the leader of `group`.
    pub fn all_know(&self, group: u32, leader: u64) -> bool {
        let leaders = self.leaders.borrow();
        self.nodes.keys().all(|node| leaders.get(&(*node, group)).is_some_and(|(l, _)| *l == leader))
    }

    /// Node ids.
    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Stops every runtime (their storage stays).
    pub async fn stop(self) -> Result<(), ShardError> {
        for node in self.nodes.into_values() {
            node.handle.send(Request::Shutdown).await?;
            if let Some(result) = node.task.await {
                result?;
            }
        }
        Ok(())
    }
}
