//! Follower read leases on the in-memory cluster (`Config::follower_leases`): a follower
//! holding a lease serves reads itself without a message; while its lease may run the
//! leader commits nothing it does not hold; a leader elected by a transfer waits an
//! election timeout for every member, since the old leader's leases may still run.

mod raft_support;

use bytes::Bytes;
use conclave_engine::raft::{Config, Membership, MessageType, RaftNode};
use raft_support::{node_with, Cluster};

const TICK_MICROS: u64 = 10_000;

fn config(id: u64) -> Config {
    config_with(id, 0)
}

fn config_with(id: u64, follower_lease_micros: u64) -> Config {
    let mut cfg = Config::new(id, 7);
    cfg.follower_lease_micros = follower_lease_micros;
    cfg.lease_reads = true;
    cfg.follower_leases = true;
    cfg.lease_micros = Config::safe_lease_micros(cfg.election_ticks, TICK_MICROS);
    cfg
}

fn lease() -> u64 {
    config(1).lease_micros
}

/// Ticks every node once with the clock one tick on, then settles.
fn tick_all(cluster: &mut Cluster, now: &mut u64) {
    *now += TICK_MICROS;
    for raft in cluster.nodes.values_mut() {
        raft.set_now(*now);
        raft.tick();
    }
    cluster.settle();
}

/// A 3-node cluster whose leader holds a lease, and a follower that read once through the
/// leader and was granted a follower lease; returns (cluster, leader, follower, clock).
fn follower_with_lease() -> (Cluster, u64, u64, u64) {
    follower_with_lease_of(0)
}

fn follower_with_lease_of(follower_lease_micros: u64) -> (Cluster, u64, u64, u64) {
    let membership = Membership::voters([1, 2, 3]).unwrap();
    let mut cluster = Cluster::new(membership.clone());
    for id in [1, 2, 3] {
        cluster.nodes.insert(id, node_with(config_with(id, follower_lease_micros), &membership));
    }
    let mut now = 0;
    let leader = cluster.tick_until_leader();
    for _ in 0..2 {
        tick_all(&mut cluster, &mut now);
    }
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let raft = cluster.nodes.get_mut(&follower).unwrap();
    raft.read_index(Bytes::from_static(b"first")).unwrap();
    let ask = raft.ready().messages;
    assert_eq!(ask.len(), 1);
    assert_eq!((ask[0].msg_type, ask[0].lease_micros), (MessageType::ReadIndex as i32, 1), "the batch asks for a lease");
    let released = cluster.deliver_until_quiet(ask, follower);
    assert_eq!(released.len(), 1, "the first read goes through the leader");
    (cluster, leader, follower, now)
}

fn read_without_asking(raft: &mut RaftNode) -> Option<u64> {
    raft.read_index(Bytes::from_static(b"local")).unwrap();
    let ready = raft.ready();
    let asked = ready.messages.iter().any(|m| m.msg_type == MessageType::ReadIndex as i32 && !m.context.is_empty());
    match (asked, ready.read_states.as_slice()) {
        (false, [read]) => Some(read.index),
        _ => None,
    }
}

#[test]
fn a_follower_holding_a_lease_serves_reads_without_asking_the_leader() {
    let (mut cluster, _, follower, now) = follower_with_lease();
    let raft = cluster.nodes.get_mut(&follower).unwrap();
    raft.set_now(now + TICK_MICROS);
    let last = raft.last_index();
    assert_eq!(read_without_asking(raft), Some(last), "served at the follower's last index, with no message");
    assert_eq!(raft.follower_lease_reads(), 1);
    // Past the lease (counted from when the follower asked, less 1/8), reads ask again.
    raft.set_now(now + lease());
    assert_eq!(read_without_asking(raft), None, "an expired lease serves nothing");
}

/// Serves one read at `raft` under its lease at `at`; returns the lease asks that left.
fn read_at(raft: &mut RaftNode, at: u64) -> Vec<conclave_engine::raft::Message> {
    raft.set_now(at);
    raft.read_index(Bytes::from_static(b"local")).unwrap();
    let ready = raft.ready();
    assert_eq!(ready.read_states.len(), 1, "served under the lease at {at}");
    ready.messages.into_iter().filter(|m| m.msg_type == MessageType::ReadIndex as i32).collect()
}

#[test]
fn a_follower_renews_its_lease_once_until_the_grant_comes_back() {
    let (mut cluster, _, follower, now) = follower_with_lease();
    let step = 1_000;
    let raft = cluster.nodes.get_mut(&follower).unwrap();
    // Reads every millisecond until one finds less than a quarter of the lease left.
    let mut at = now;
    let renewal = loop {
        at += step;
        let asks = read_at(raft, at);
        if !asks.is_empty() {
            break asks;
        }
        assert!(at < now + lease(), "no renewal before the lease ran out");
    };
    assert_eq!(renewal.len(), 1);
    assert_eq!((renewal[0].lease_micros, renewal[0].context.len()), (1, 8), "an empty batch asking for a lease");
    // Its grant has not come back: the reads of the next rounds, for an eighth of a lease,
    // do not ask again (each round asked once before).
    let asked = at;
    while at + step < asked + lease() / 8 {
        at += step;
        assert!(read_at(raft, at).is_empty(), "asked again {} µs after the renewal", at - asked);
    }
    // Then one read asks again (the first ask may be lost), and the grant renews the lease.
    at = asked + lease() / 8;
    let again = read_at(raft, at);
    assert_eq!(again.len(), 1, "the renewal is asked again after an eighth of a lease");
    cluster.deliver_until_quiet(again, follower);
    let raft = cluster.nodes.get_mut(&follower).unwrap();
    for _ in 0..10 {
        at += step;
        assert!(read_at(raft, at).is_empty(), "the renewed lease has more than a quarter left");
    }
}

#[test]
fn a_shorter_follower_lease_is_granted_no_longer_than_configured() {
    let short = lease() / 4;
    let (mut cluster, leader, follower, mut now) = follower_with_lease_of(short);
    let raft = cluster.nodes.get_mut(&follower).unwrap();
    raft.set_now(now + short / 2);
    assert!(read_without_asking(raft).is_some(), "inside the short lease");
    raft.set_now(now + short);
    assert_eq!(read_without_asking(raft), None, "past the short lease, though the leader's runs on");
    // The leader stops waiting for a cut-off holder once the short lease ran out.
    let cut_off = cluster.nodes.remove(&follower).unwrap();
    let (index, _) = cluster.nodes.get_mut(&leader).unwrap().propose([Bytes::from_static(b"write")]).unwrap();
    cluster.settle();
    let mut waited = 0;
    while cluster.nodes[&leader].commit_index() < index {
        tick_all(&mut cluster, &mut now);
        waited += TICK_MICROS;
    }
    assert!(waited <= short + TICK_MICROS, "the leader waited {waited} µs for a lease of {short}");
    cluster.nodes.insert(follower, cut_off);
}

#[test]
fn the_leader_commits_only_what_a_lease_holder_holds_until_its_lease_ends() {
    let (mut cluster, leader, follower, mut now) = follower_with_lease();
    // The lease holder hears nothing more.
    let cut_off = cluster.nodes.remove(&follower).unwrap();
    let raft = cluster.nodes.get_mut(&leader).unwrap();
    let committed = raft.commit_index();
    let (index, _) = raft.propose([Bytes::from_static(b"write")]).unwrap();
    cluster.settle();
    assert_eq!(cluster.nodes[&leader].commit_index(), committed, "a quorum holds the entry, the lease holder does not");
    // The leader stops counting the holder once the lease it granted ran out.
    let mut ticks = 0;
    while cluster.nodes[&leader].commit_index() < index {
        tick_all(&mut cluster, &mut now);
        ticks += 1;
        assert!(ticks <= 10, "the leader never committed without the expired holder");
    }
    assert!(now >= lease() / 2, "committed only once the lease could have run out (at {now})");
    cluster.nodes.insert(follower, cut_off);
}

#[test]
fn a_leader_elected_by_transfer_waits_an_election_timeout_for_every_member() {
    let (mut cluster, leader, follower, mut now) = follower_with_lease();
    let target = [1, 2, 3].into_iter().find(|id| *id != leader && *id != follower).unwrap();
    let cut_off = cluster.nodes.remove(&follower).unwrap();
    cluster.nodes.get_mut(&leader).unwrap().transfer_leadership(target).unwrap();
    cluster.settle();
    assert_eq!(cluster.leader(), Some(target), "the transfer completed");
    let raft = cluster.nodes.get_mut(&target).unwrap();
    let (index, _) = raft.propose([Bytes::from_static(b"after transfer")]).unwrap();
    cluster.settle();
    let mut ticks = 0;
    while cluster.nodes[&target].commit_index() < index {
        assert!(ticks < config(1).election_ticks, "the new leader did not wait for the old leader's follower lease");
        tick_all(&mut cluster, &mut now);
        ticks += 1;
    }
    assert!(ticks + 1 >= config(1).election_ticks, "committed after {ticks} ticks, inside the window");
    cluster.nodes.insert(follower, cut_off);
}

#[test]
fn a_leader_elected_by_transfer_does_not_wait_for_the_leader_that_handed_over() {
    let (mut cluster, leader, follower, _) = follower_with_lease();
    let target = [1, 2, 3].into_iter().find(|id| *id != leader && *id != follower).unwrap();
    cluster.nodes.get_mut(&leader).unwrap().transfer_leadership(target).unwrap();
    cluster.settle();
    assert_eq!(cluster.leader(), Some(target), "the transfer completed");
    // The old leader stops, as a node does after handing its leaderships over.
    let stopped = cluster.nodes.remove(&leader).unwrap();
    let raft = cluster.nodes.get_mut(&target).unwrap();
    let (index, _) = raft.propose([Bytes::from_static(b"after handover")]).unwrap();
    cluster.settle();
    assert!(cluster.nodes[&target].commit_index() >= index, "committed with the lease holder, not waiting for the stopped node");
    cluster.nodes.insert(leader, stopped);
}

#[test]
fn follower_leases_need_lease_reads() {
    let mut cfg = config(1);
    cfg.lease_reads = false;
    assert!(cfg.validate().is_err());
}
