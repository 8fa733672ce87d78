//! Criterion benchmarks of the Raft core over an in-memory 3-node cluster (instant delivery,
//! instant persistence): entries/s committed with 1 group and with 1,000 groups, and the CPU
//! cost of one tick of an idle group (heartbeats included).

use std::collections::BTreeMap;
use std::hint::black_box;

use bytes::Bytes;
use conclave_engine::raft::{open_batch, Config, Membership, Outbox, RaftNode, RaftRole};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const NODES: u64 = 3;

/// Three nodes, each with a replica of every group, wired back to back.
struct MemCluster {
    /// `nodes[n]` maps group id to node `n + 1`'s replica.
    nodes: Vec<BTreeMap<u32, RaftNode>>,
    outboxes: Vec<Outbox>,
    committed: u64,
}

impl MemCluster {
    fn new(groups: u32, quiesce: bool) -> Self {
        let membership = Membership::voters(1..=NODES).expect("valid membership");
        let nodes = (1..=NODES)
            .map(|id| {
                (0..groups)
                    .map(|g| {
                        let mut cfg = Config::new(id, g);
                        cfg.quiesce = quiesce;
                        let rng = ChaCha8Rng::seed_from_u64(id << 32 | u64::from(g));
                        (g, RaftNode::new(cfg, membership.clone(), rng).expect("valid config"))
                    })
                    .collect()
            })
            .collect();
        let mut cluster = MemCluster { nodes, outboxes: (1..=NODES).map(Outbox::new).collect(), committed: 0 };
        while cluster.leaders().len() < groups as usize {
            cluster.tick_all();
        }
        cluster
    }

    fn tick_all(&mut self) {
        for node in &mut self.nodes {
            for raft in node.values_mut() {
                raft.tick();
            }
        }
        self.settle();
    }

    /// (group, leader node index) of every group that has a leader.
    fn leaders(&self) -> Vec<(u32, usize)> {
        let mut leaders = Vec::new();
        for (n, node) in self.nodes.iter().enumerate() {
            for (g, raft) in node {
                if raft.role() == RaftRole::Leader {
                    leaders.push((*g, n));
                }
            }
        }
        leaders
    }

    /// Drains every Ready (persisting instantly) and delivers every batch until quiet.
    fn settle(&mut self) {
        loop {
            for (n, node) in self.nodes.iter_mut().enumerate() {
                for raft in node.values_mut() {
                    while raft.has_ready() {
                        let ready = raft.ready();
                        let ack = ready.persist_ack();
                        self.outboxes[n].extend(ready.messages);
                        self.outboxes[n].extend(ready.persisted_messages);
                        self.committed += ready.committed_entries.len() as u64;
                        if let Some((index, term)) = ack {
                            raft.persisted(index, term);
                        }
                    }
                }
            }
            let batches: Vec<_> = self.outboxes.iter_mut().flat_map(Outbox::drain).collect();
            if batches.is_empty() {
                return;
            }
            for batch in batches {
                let to = batch.to;
                let node = &mut self.nodes[to as usize - 1];
                for msg in open_batch(to, batch).expect("well-formed batch") {
                    let raft = node.get_mut(&msg.group_id).expect("known group");
                    raft.step(msg).expect("valid message");
                }
            }
        }
    }
}

fn propose_and_commit(cluster: &mut MemCluster, leaders: &[(u32, usize)], payloads: &[Bytes]) {
    for (g, n) in leaders {
        let raft = cluster.nodes[*n].get_mut(g).expect("leader replica");
        raft.propose(payloads.iter().cloned()).expect("leader accepts proposals");
    }
    cluster.settle();
}

fn bench_commit(c: &mut Criterion, groups: u32, entries_per_group: usize) {
    let mut cluster = MemCluster::new(groups, false);
    let leaders = cluster.leaders();
    let payloads: Vec<Bytes> = (0..entries_per_group).map(|_| Bytes::from(vec![7u8; 64])).collect();
    let mut bench_group = c.benchmark_group("raft_commit");
    bench_group.sample_size(10);
    bench_group.throughput(Throughput::Elements(u64::from(groups) * entries_per_group as u64));
    bench_group.bench_function(format!("3_nodes_{groups}_groups_{entries_per_group}x64B"), |b| {
        b.iter(|| propose_and_commit(&mut cluster, &leaders, black_box(&payloads)))
    });
    bench_group.finish();
    // Every entry commits on all three replicas (plus the leaders' no-ops).
    assert!(cluster.committed >= 3 * u64::from(groups) * entries_per_group as u64);
}

fn bench_idle_tick(c: &mut Criterion) {
    const GROUPS: u32 = 1_000;
    let mut bench_group = c.benchmark_group("raft_idle");
    bench_group.sample_size(10);
    bench_group.throughput(Throughput::Elements(u64::from(GROUPS) * NODES));
    for quiesce in [false, true] {
        let mut cluster = MemCluster::new(GROUPS, quiesce);
        // Let idle groups settle (and quiesce, when enabled) before measuring.
        for _ in 0..10 {
            cluster.tick_all();
        }
        let leaders_before = cluster.leaders();
        let name = if quiesce { "tick_1000_quiesced_groups_x3_replicas" } else { "tick_1000_idle_groups_x3_replicas" };
        bench_group.bench_function(name, |b| b.iter(|| cluster.tick_all()));
        assert_eq!(cluster.leaders(), leaders_before, "idle groups must not hold elections");
    }
    bench_group.finish();
}

fn benches(c: &mut Criterion) {
    bench_commit(c, 1, 64);
    bench_commit(c, 1_000, 8);
    bench_idle_tick(c);
}

criterion_group!(raft, benches);
criterion_main!(raft);
