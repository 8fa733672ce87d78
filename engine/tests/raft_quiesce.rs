//! Quiescence as the shard runtime drives it (a quiet replica is not ticked at all): a
//! partitioned quiet leader serves no read it cannot confirm, lease reads included, and a
//! quiet leader wakes to a restarted member's campaign so the member learns the leader.

mod raft_support;

use std::collections::BTreeMap;

use bytes::Bytes;
use conclave_engine::raft::{Config, Membership, RaftNode, RaftRole, Recovered};
use raft_support::{node_with, Cluster};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn quiet_config(id: u64, lease_reads: bool) -> Config {
    let mut cfg = Config::new(id, 7);
    cfg.quiesce = true;
    cfg.lease_reads = lease_reads;
    cfg.lease_micros = Config::safe_lease_micros(cfg.election_ticks, 10_000);
    cfg
}

fn quiet_cluster(lease_reads: bool) -> Cluster {
    let membership = Membership::voters([1, 2, 3]).unwrap();
    let nodes: BTreeMap<u64, RaftNode> =
        [1, 2, 3].into_iter().map(|id| (id, node_with(quiet_config(id, lease_reads), &membership))).collect();
    Cluster { nodes, applied: BTreeMap::new(), events: BTreeMap::new(), reads: BTreeMap::new(), installed: BTreeMap::new() }
}

/// Ticks the replicas that are not quiet (as the runtime does) until all are quiet.
fn tick_until_quiet(cluster: &mut Cluster) {
    for _ in 0..200 {
        if cluster.nodes.values().all(RaftNode::is_quiesced) {
            return;
        }
        for raft in cluster.nodes.values_mut().filter(|r| !r.is_quiesced()) {
            raft.tick();
        }
        cluster.settle();
    }
    panic!("the group did not go quiet in 200 ticks");
}

fn elect_write_and_go_quiet(lease_reads: bool) -> (Cluster, u64) {
    let mut cluster = quiet_cluster(lease_reads);
    let leader = cluster.tick_until_leader();
    cluster.nodes.get_mut(&leader).unwrap().propose([Bytes::from_static(b"x")]).unwrap();
    cluster.settle();
    tick_until_quiet(&mut cluster);
    (cluster, leader)
}

#[test]
fn a_partitioned_quiet_leader_serves_no_read_it_cannot_confirm() {
    for lease_reads in [false, true] {
        let (mut cluster, leader) = elect_write_and_go_quiet(lease_reads);
        // With lease reads, the leader confirmed a lease while it was awake.
        let raft = cluster.nodes.get_mut(&leader).unwrap();
        // Cut off: nothing it sends arrives. Time passes without ticks while it is quiet
        // (the others may have elected a new leader meanwhile), then a read comes.
        raft.read_index(Bytes::from_static(b"r")).unwrap();
        assert!(!raft.is_quiesced(), "a read wakes the group");
        for tick in 0..100 {
            let ready = raft.ready();
            assert!(ready.read_states.is_empty(), "lease_reads {lease_reads}: read served at tick {tick} without a quorum");
            raft.tick();
        }
        assert_ne!(raft.role(), RaftRole::Leader, "lease_reads {lease_reads}: a leader that hears no quorum steps down");
    }
}

#[test]
fn a_quiet_leader_reachable_again_serves_reads_after_a_quorum_round() {
    let (mut cluster, leader) = elect_write_and_go_quiet(false);
    cluster.nodes.get_mut(&leader).unwrap().read_index(Bytes::from_static(b"r")).unwrap();
    let before = cluster.reads.get(&leader).map_or(0, Vec::len);
    cluster.settle();
    assert_eq!(cluster.reads[&leader].len(), before + 1, "the heartbeat round confirmed the read");
    tick_until_quiet(&mut cluster);
}

#[test]
fn a_quiet_leader_wakes_to_a_restarted_members_campaign_and_the_member_learns_it() {
    let (mut cluster, leader) = elect_write_and_go_quiet(false);
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let old = cluster.nodes.remove(&follower).unwrap();
    let recovered = Recovered {
        hard_state: old.hard_state(),
        compacted_index: 0,
        compacted_term: 0,
        membership: Membership::voters([1, 2, 3]).unwrap(),
        entries: old.entries().cloned().collect(),
        applied: 0,
    };
    let restarted = RaftNode::restart(quiet_config(follower, false), recovered, ChaCha8Rng::seed_from_u64(99)).unwrap();
    assert_eq!(restarted.leader(), 0);
    cluster.nodes.insert(follower, restarted);
    for _ in 0..200 {
        if cluster.nodes[&follower].leader() == leader && cluster.nodes.values().all(RaftNode::is_quiesced) {
            assert_eq!(cluster.leader(), Some(leader), "the quiet leader kept its office");
            return;
        }
        for raft in cluster.nodes.values_mut().filter(|r| !r.is_quiesced()) {
            raft.tick();
        }
        cluster.settle();
    }
    panic!("the restarted member never learned the quiet leader (leader {}, knows {})", leader, cluster.nodes[&follower].leader());
}

/// The quiet followers of a leader whose node failed are woken together (by the same
/// connection failure); the successor picked by group id campaigns first, just past the
/// other's refusal window, and wins in one round: one election, no split vote.
#[test]
fn woken_for_their_leaders_loss_the_followers_elect_the_named_successor_in_one_round() {
    let (mut cluster, leader) = elect_write_and_go_quiet(false);
    let term = cluster.nodes[&leader].term();
    cluster.nodes.remove(&leader);
    let survivors: Vec<u64> = cluster.nodes.keys().copied().collect();
    // Group 7 (quiet_config), the voters other than the lost leader in id order.
    let successor = survivors[7 % survivors.len()];
    for raft in cluster.nodes.values_mut() {
        assert!(raft.is_quiesced());
        raft.wake_for_leader_loss();
        assert!(!raft.is_quiesced(), "woken");
    }
    let election_ticks = quiet_config(1, false).election_ticks;
    let mut elected_at = None;
    for tick in 1..=3 * election_ticks {
        for raft in cluster.nodes.values_mut() {
            raft.tick();
        }
        cluster.settle();
        if let Some((id, _)) = cluster.nodes.iter().find(|(_, r)| r.role() == RaftRole::Leader) {
            assert_eq!(*id, successor, "the named successor leads");
            elected_at = Some(tick);
            break;
        }
    }
    let elected_at = elected_at.expect("a new leader within three election timeouts");
    assert_eq!(elected_at, election_ticks + 1, "elected as soon as the successor's timeout ran out");
    for raft in cluster.nodes.values() {
        assert_eq!(raft.term(), term + 1, "one election, no split vote");
    }
}

/// A leader that serves reads stays awake: a quiet leader's lease lapses, so each quiet
/// spell's first read would pay a heartbeat round (measured at about 2,500 heartbeats/s per
/// node under 64 readers). Awake, it keeps its lease fresh with its periodic heartbeats and
/// serves every read from the lease, with no message at all; once reads stop it goes
/// quiet again.
#[test]
fn a_leader_serving_reads_stays_awake_and_serves_them_from_its_lease() {
    let (mut cluster, leader) = elect_write_and_go_quiet(true);
    let mut now = 0;
    for step in 0..40 {
        now += 10_000;
        for raft in cluster.nodes.values_mut() {
            raft.set_now(now);
            if !raft.is_quiesced() {
                raft.tick();
            }
        }
        cluster.settle();
        let raft = cluster.nodes.get_mut(&leader).unwrap();
        raft.read_index(Bytes::from(format!("read {step}"))).unwrap();
        if step >= 2 {
            let ready = raft.ready();
            assert_eq!(ready.read_states.len(), 1, "step {step}: the read is served at once, from the lease");
            assert!(ready.messages.is_empty() && ready.persisted_messages.is_empty(), "step {step}: no heartbeat round: {ready:?}");
        }
        cluster.settle();
        assert!(!cluster.nodes[&leader].is_quiesced(), "step {step}: a leader serving reads stays awake");
    }
    tick_until_quiet(&mut cluster);
}
