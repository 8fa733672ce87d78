//! Shared helpers of the `RaftNode` tests (`raft_node.rs`, `raft_hostile.rs`): replicas of
//! group 7 with deterministic RNGs, and a tiny lossless in-memory cluster with instant
//! persistence that records what each node applied, reported and read.
#![allow(dead_code)]

use std::collections::BTreeMap;

use bytes::Bytes;
use conclave_engine::raft::{Config, Entry, EntryKind, Membership, Message, RaftEvent, RaftNode, RaftRole, ReadState};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub fn node(id: u64, membership: &Membership) -> RaftNode {
    node_with(Config::new(id, 7), membership)
}

pub fn node_with(cfg: Config, membership: &Membership) -> RaftNode {
    let id = cfg.id;
    RaftNode::new(cfg, membership.clone(), ChaCha8Rng::seed_from_u64(id)).expect("valid")
}

/// Nodes by id, lossless instant network, instant persistence; records what each applied.
pub struct Cluster {
    pub nodes: BTreeMap<u64, RaftNode>,
    pub applied: BTreeMap<u64, Vec<Entry>>,
    pub events: BTreeMap<u64, Vec<RaftEvent>>,
    pub reads: BTreeMap<u64, Vec<u64>>,
    /// Snapshot data each node installed.
    pub installed: BTreeMap<u64, Vec<Bytes>>,
}

impl Cluster {
    pub fn new(membership: Membership) -> Self {
        let nodes: BTreeMap<u64, RaftNode> = membership.members().map(|(id, _)| (id, node(id, &membership))).collect();
        Cluster { nodes, applied: BTreeMap::new(), events: BTreeMap::new(), reads: BTreeMap::new(), installed: BTreeMap::new() }
    }

    pub fn settle(&mut self) {
        loop {
            let mut mail: Vec<Message> = Vec::new();
            for (id, raft) in &mut self.nodes {
                while raft.has_ready() {
                    let ready = raft.ready();
                    let ack = ready.persist_ack();
                    mail.extend(ready.messages);
                    mail.extend(ready.persisted_messages);
                    self.applied.entry(*id).or_default().extend(ready.committed_entries);
                    self.events.entry(*id).or_default().extend(ready.events);
                    self.reads.entry(*id).or_default().extend(ready.read_states.iter().map(|r| r.index));
                    if let Some((index, term)) = ack {
                        raft.persisted(index, term);
                    }
                    if let Some(snapshot) = ready.snapshot {
                        self.installed.entry(*id).or_default().push(snapshot.data.clone());
                        raft.snapshot_installed(snapshot.index);
                    }
                }
            }
            if mail.is_empty() {
                return;
            }
            for msg in mail {
                if let Some(raft) = self.nodes.get_mut(&msg.to) {
                    raft.step(msg).expect("valid message");
                }
            }
        }
    }

    /// Delivers `mail` and every message it causes (without persisting anything new) until
    /// none is left; returns the read states node `watch` released meanwhile.
    pub fn deliver_until_quiet(&mut self, mut mail: Vec<Message>, watch: u64) -> Vec<ReadState> {
        let mut released = Vec::new();
        while !mail.is_empty() {
            let mut next = Vec::new();
            for msg in mail {
                let raft = self.nodes.get_mut(&msg.to).unwrap();
                raft.step(msg).unwrap();
                let ready = raft.ready();
                if raft.id() == watch {
                    released.extend(ready.read_states);
                }
                next.extend(ready.messages);
                next.extend(ready.persisted_messages);
            }
            mail = next;
        }
        released
    }

    pub fn tick_until_leader(&mut self) -> u64 {
        for _ in 0..200 {
            for raft in self.nodes.values_mut() {
                raft.tick();
            }
            self.settle();
            if let Some(leader) = self.leader() {
                return leader;
            }
        }
        panic!("no leader after 200 ticks");
    }

    pub fn leader(&self) -> Option<u64> {
        self.nodes.values().find(|r| r.role() == RaftRole::Leader).map(|r| r.id())
    }

    pub fn applied_payloads(&self, id: u64) -> Vec<Bytes> {
        self.applied[&id].iter().filter(|e| e.kind == EntryKind::Normal as i32).map(|e| e.data.clone()).collect()
    }
}
