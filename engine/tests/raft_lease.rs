//! Lease reads and the leader stickiness they rest on, on the in-memory cluster: followers
//! refuse pre-votes and votes while they hear from a live leader; a lease starts when its
//! heartbeat round was sent, is measured on the monotonic clock the caller feeds
//! (`set_now`), not in ticks, so a leader whose loop stalled stops serving lease reads once
//! its lease ran out in real time.

mod raft_support;

use bytes::Bytes;
use conclave_engine::raft::{Config, Membership, Message, MessageType, RaftNode, RaftRole};
use raft_support::{node_with, Cluster};

/// Microseconds per tick of these tests' clock.
const TICK_MICROS: u64 = 10_000;

fn lease_config(id: u64, lease_reads: bool) -> Config {
    let mut cfg = Config::new(id, 7);
    cfg.lease_reads = lease_reads;
    cfg.lease_micros = Config::safe_lease_micros(cfg.election_ticks, TICK_MICROS);
    cfg
}

fn lease_cluster(lease_reads: bool) -> Cluster {
    let membership = Membership::voters([1, 2, 3]).unwrap();
    let mut cluster = Cluster::new(membership.clone());
    for id in [1, 2, 3] {
        cluster.nodes.insert(id, node_with(lease_config(id, lease_reads), &membership));
    }
    cluster
}

fn set_now(cluster: &mut Cluster, now: u64) {
    for raft in cluster.nodes.values_mut() {
        raft.set_now(now);
    }
}

/// Ticks every node once (clock advanced by one tick first), then settles.
fn tick_all(cluster: &mut Cluster, now: &mut u64) {
    *now += TICK_MICROS;
    set_now(cluster, *now);
    for raft in cluster.nodes.values_mut() {
        raft.tick();
    }
    cluster.settle();
}

/// A cluster with an elected leader that committed an entry of its term and holds a lease
/// from a heartbeat round acknowledged by everyone; returns (cluster, leader, clock).
fn leader_with_lease() -> (Cluster, u64, u64) {
    let mut cluster = lease_cluster(true);
    let mut now = 0;
    let leader = cluster.tick_until_leader();
    for _ in 0..2 {
        tick_all(&mut cluster, &mut now);
    }
    assert_eq!(cluster.leader(), Some(leader));
    (cluster, leader, now)
}

fn campaign_message(from: &RaftNode, to: u64, msg_type: MessageType, term: u64) -> Message {
    Message {
        group_id: 7,
        from: from.id(),
        to,
        term,
        msg_type: msg_type as i32,
        index: from.last_index(),
        log_term: from.entry_term(from.last_index()).unwrap(),
        ..Message::default()
    }
}

/// Steps a campaign message into `to`; returns its answer (None: dropped without one).
fn answer_to(cluster: &mut Cluster, challenger: u64, to: u64, msg_type: MessageType) -> Option<Message> {
    let term = cluster.nodes[&to].term() + 1;
    let msg = campaign_message(&cluster.nodes[&challenger], to, msg_type, term);
    let raft = cluster.nodes.get_mut(&to).unwrap();
    raft.step(msg).unwrap();
    let ready = raft.ready();
    let answer = if msg_type == MessageType::PreVote { MessageType::PreVoteResponse } else { MessageType::VoteResponse };
    ready.messages.into_iter().chain(ready.persisted_messages).find(|m| m.msg_type == answer as i32)
}

#[test]
fn followers_refuse_pre_votes_and_votes_while_they_hear_a_live_leader() {
    for lease_reads in [true, false] {
        let mut cluster = lease_cluster(lease_reads);
        let mut now = 0;
        let leader = cluster.tick_until_leader();
        tick_all(&mut cluster, &mut now);
        let mut followers = [1, 2, 3].into_iter().filter(|id| *id != leader);
        let (voter, challenger) = (followers.next().unwrap(), followers.next().unwrap());
        let term = cluster.nodes[&voter].term();
        // The challenger's log is as up to date as anyone's: only the lease stands in its way.
        assert_eq!(cluster.nodes[&challenger].last_index(), cluster.nodes[&leader].last_index());
        for msg_type in [MessageType::PreVote, MessageType::Vote] {
            let answer = answer_to(&mut cluster, challenger, voter, msg_type);
            assert!(
                answer.as_ref().is_none_or(|a| a.reject),
                "lease_reads {lease_reads}: {msg_type:?} granted while the leader is live: {answer:?}"
            );
            let raft = &cluster.nodes[&voter];
            assert_eq!((raft.term(), raft.leader(), raft.role()), (term, leader, RaftRole::Follower), "the campaign changed nothing");
        }
        // Cut off from the leader for an election timeout, the same voter grants them.
        let raft = cluster.nodes.get_mut(&voter).unwrap();
        for _ in 0..Config::new(voter, 7).election_ticks {
            raft.tick();
            raft.ready();
        }
        let answer = answer_to(&mut cluster, challenger, voter, MessageType::PreVote);
        assert!(answer.as_ref().is_some_and(|a| !a.reject), "lease_reads {lease_reads}: no pre-vote after the leader went silent");
    }
}

#[test]
fn a_restarted_follower_refuses_votes_for_an_election_timeout() {
    let membership = Membership::voters([1, 2, 3]).unwrap();
    let mut cluster = lease_cluster(true);
    let leader = cluster.tick_until_leader();
    let voter = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    // A lease granted before the crash may still run: the new incarnation refuses too.
    cluster.nodes.insert(voter, node_with(lease_config(voter, true), &membership));
    let answer = answer_to(&mut cluster, leader, voter, MessageType::Vote);
    assert!(answer.as_ref().is_none_or(|a| a.reject), "a vote granted right after a restart: {answer:?}");
}

#[test]
fn a_lease_read_needs_no_round_while_the_lease_runs_on_the_clock() {
    let (mut cluster, leader, now) = leader_with_lease();
    let raft = cluster.nodes.get_mut(&leader).unwrap();
    let lease = raft_lease(raft);
    raft.set_now(now + lease / 2);
    let commit = raft.commit_index();
    raft.read_index(Bytes::from_static(b"lease")).unwrap();
    let ready = raft.ready();
    assert!(ready.messages.is_empty(), "a lease read needs no heartbeat round");
    assert_eq!(ready.read_states.iter().map(|r| r.index).collect::<Vec<_>>(), [commit]);
}

#[test]
fn a_followers_read_is_answered_from_the_lease_and_by_a_round_once_it_ran_out() {
    let (mut cluster, leader, now) = leader_with_lease();
    let lease = raft_lease(&cluster.nodes[&leader]);
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    for (at, rounds) in [(now + lease / 2, 0), (now + lease, 1)] {
        set_now(&mut cluster, at);
        let raft = cluster.nodes.get_mut(&follower).unwrap();
        raft.read_index(Bytes::from_static(b"via follower")).unwrap();
        let ask = raft.ready().messages;
        assert_eq!(ask.len(), 1, "one ReadIndex request to the leader");
        let raft = cluster.nodes.get_mut(&leader).unwrap();
        raft.step(ask.into_iter().next().unwrap()).unwrap();
        let ready = raft.ready();
        let heartbeats = ready.messages.iter().filter(|m| m.msg_type == MessageType::Heartbeat as i32).count();
        assert_eq!(heartbeats.min(1), rounds, "a round only once the lease ran out (at {at})");
        let released = cluster.deliver_until_quiet(ready.messages, follower);
        assert_eq!(released.len(), 1, "the follower's read was answered");
    }
}

#[test]
fn a_stalled_leader_stops_serving_lease_reads_once_its_lease_ran_out_in_real_time() {
    let (mut cluster, leader, now) = leader_with_lease();
    let raft = cluster.nodes.get_mut(&leader).unwrap();
    let lease = raft_lease(raft);
    // The leader's loop stalls: no tick for a lease's length, so in ticks the lease looks
    // fresh, but the clock moved on.
    raft.set_now(now + lease);
    raft.read_index(Bytes::from_static(b"late")).unwrap();
    let ready = raft.ready();
    assert!(ready.read_states.is_empty(), "a lease that ran out in real time served a read");
    assert!(ready.messages.iter().any(|m| m.msg_type == MessageType::Heartbeat as i32), "the read falls back to a ReadIndex round");
    // The round's answers release it by ReadIndex, and renew the lease from the round's
    // sending time.
    let released = cluster.deliver_until_quiet(ready.messages, leader);
    assert_eq!(released.len(), 1, "ReadIndex confirmed the read");
    let raft = cluster.nodes.get_mut(&leader).unwrap();
    raft.read_index(Bytes::from_static(b"renewed")).unwrap();
    let ready = raft.ready();
    assert!(ready.messages.is_empty() && ready.read_states.len() == 1, "the confirmed round renewed the lease");
}

#[test]
fn a_lease_starts_when_its_round_was_sent_not_when_it_was_acknowledged() {
    let (mut cluster, leader, now) = leader_with_lease();
    let raft = cluster.nodes.get_mut(&leader).unwrap();
    let lease = raft_lease(raft);
    // Expire the lease, then send a round at `sent` whose answers come back late.
    let sent = now + lease;
    raft.set_now(sent);
    raft.read_index(Bytes::from_static(b"round")).unwrap();
    let round = raft.ready().messages;
    assert!(!round.is_empty());
    let answers: Vec<Message> = round
        .into_iter()
        .flat_map(|msg| {
            let follower = cluster.nodes.get_mut(&msg.to).unwrap();
            follower.step(msg).unwrap();
            follower.ready().messages
        })
        .collect();
    let raft = cluster.nodes.get_mut(&leader).unwrap();
    raft.set_now(sent + lease);
    for answer in answers {
        raft.step(answer).unwrap();
    }
    assert_eq!(raft.ready().read_states.len(), 1, "the round confirmed its own read");
    raft.read_index(Bytes::from_static(b"after")).unwrap();
    let ready = raft.ready();
    assert!(ready.read_states.is_empty(), "an answer that came at the end of the lease does not extend it");
}

#[test]
fn lease_reads_need_a_lease_length() {
    let mut cfg = Config::new(1, 7);
    cfg.lease_reads = true;
    assert!(cfg.validate().is_err(), "lease_reads without lease_micros");
    cfg.lease_micros = Config::safe_lease_micros(cfg.election_ticks, TICK_MICROS);
    assert!(cfg.validate().is_ok());
    assert!(cfg.lease_micros < u64::from(cfg.election_ticks - 1) * TICK_MICROS, "shorter than followers refuse votes");
}

/// The lease length the tests configured (the same on every node).
fn raft_lease(_raft: &RaftNode) -> u64 {
    lease_config(1, true).lease_micros
}
