//! Replica incarnations: a node that leaves a group and joins it again runs a new replica
//! (a new incarnation, recorded in the configuration that adds it), and late messages of
//! its earlier replica, to it or from it, must not be taken for the new one's.

mod raft_support;

use bytes::Bytes;
use conclave_engine::raft::{Config, Entry, EntryKind, Membership, Message, MessageType, RaftError, RaftNode, Role};
use conclave_proto::conclave::raft::v1 as pb;
use prost::Message as _;
use raft_support::{node_with, Cluster};

fn config(id: u64, incarnation: u64) -> Config {
    let mut cfg = Config::new(id, 7);
    cfg.incarnation = incarnation;
    cfg
}

/// Steps every replica's output without delivering anything to `held`, and returns what
/// was addressed to it.
fn settle_without(cluster: &mut Cluster, held: u64) -> Vec<Message> {
    let mut kept = Vec::new();
    for _ in 0..100 {
        let mut mail = Vec::new();
        for raft in cluster.nodes.values_mut() {
            while raft.has_ready() {
                let ready = raft.ready();
                let ack = ready.persist_ack();
                mail.extend(ready.messages);
                mail.extend(ready.persisted_messages);
                if let Some((index, term)) = ack {
                    raft.persisted(index, term);
                }
            }
        }
        if mail.is_empty() {
            return kept;
        }
        for msg in mail {
            if msg.to == held {
                kept.push(msg);
            } else if let Some(raft) = cluster.nodes.get_mut(&msg.to) {
                raft.step(msg).expect("valid message");
            }
        }
    }
    panic!("the cluster did not settle");
}

/// Group {1, 2, 3}; node 3 leaves (its replica is deleted), then joins again with a new
/// replica of incarnation 1. Returns the cluster, its leader (not 3), and an acknowledgement
/// the deleted replica sent before it left (delivered late, as a slow or reordering
/// transport may), for all the entries it held.
fn rejoined_group() -> (Cluster, u64, Message) {
    let mut cluster = Cluster::new(Membership::voters([1, 2, 3]).unwrap());
    let mut leader = cluster.tick_until_leader();
    if leader == 3 {
        cluster.nodes.get_mut(&3).unwrap().transfer_leadership(1).unwrap();
        cluster.settle();
        for _ in 0..30 {
            if cluster.leader().is_some_and(|l| l != 3) {
                break;
            }
            for raft in cluster.nodes.values_mut() {
                raft.tick();
            }
            cluster.settle();
        }
        leader = cluster.leader().unwrap();
        assert_ne!(leader, 3);
    }
    cluster.nodes.get_mut(&leader).unwrap().propose([Bytes::from_static(b"a"), Bytes::from_static(b"b")]).unwrap();
    cluster.settle();
    let old = &cluster.nodes[&3];
    let term = cluster.nodes[&leader].term();
    let late_ack = Message {
        group_id: 7,
        from: 3,
        to: leader,
        term,
        msg_type: MessageType::AppendResponse as i32,
        index: old.last_index(),
        from_incarnation: 0,
        to_incarnation: 0,
        ..Message::default()
    };
    let others: Vec<u64> = [1, 2].into_iter().collect();
    cluster.nodes.get_mut(&leader).unwrap().propose_membership_change(Membership::voters(others.clone()).unwrap()).unwrap();
    cluster.settle();
    cluster.nodes.remove(&3);
    cluster.applied.remove(&3);
    // The node joins again: a new, empty replica of incarnation 1, added as such.
    let before = Membership::voters(others).unwrap();
    cluster.nodes.insert(3, node_with(config(3, 1), &before));
    let joined = Membership::voters([1, 2, 3]).unwrap().with_incarnation(3, 1).unwrap();
    cluster.nodes.get_mut(&leader).unwrap().propose_membership_change(joined).unwrap();
    (cluster, leader, late_ack)
}

/// Without incarnations the leader took the deleted replica's acknowledgement for the new
/// replica's: it believed the empty replica held every entry, ignored its refusals as
/// stale, and the new replica never caught up (and its "match" counted toward commits).
#[test]
fn a_late_acknowledgement_of_a_deleted_replica_is_not_taken_for_its_successor() {
    let (mut cluster, leader, late_ack) = rejoined_group();
    let to_new = settle_without(&mut cluster, 3);
    assert!(to_new.iter().all(|m| m.to_incarnation == 1), "the leader addresses the new replica: {to_new:?}");
    let raft = cluster.nodes.get_mut(&leader).unwrap();
    raft.step(late_ack).unwrap();
    assert_eq!(raft.incarnation_drops(), 1, "the late acknowledgement is dropped and counted");
    assert_eq!(raft.match_index(3), Some(0), "the new replica holds nothing yet");
    for msg in to_new {
        cluster.nodes.get_mut(&3).unwrap().step(msg).unwrap();
    }
    for _ in 0..10 {
        for raft in cluster.nodes.values_mut() {
            raft.tick();
        }
        cluster.settle();
    }
    let leader_raft = &cluster.nodes[&leader];
    assert_eq!(cluster.nodes[&3].applied_index(), leader_raft.commit_index(), "the new replica caught up");
    assert_eq!(cluster.applied_payloads(3), [Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
    assert_eq!(cluster.nodes[&3].membership().incarnation(3), 1);
}

/// A vote request meant for the deleted replica must not be answered by the new one: it
/// knows nothing of the votes its predecessor cast, and could vote twice in a term.
#[test]
fn a_late_vote_request_for_a_deleted_replica_is_not_answered_by_its_successor() {
    let others = Membership::voters([1, 2]).unwrap();
    let mut successor = node_with(config(3, 1), &others);
    let request = Message {
        group_id: 7,
        from: 2,
        to: 3,
        term: 5,
        msg_type: MessageType::Vote as i32,
        index: 10,
        log_term: 4,
        from_incarnation: 0,
        to_incarnation: 0,
        ..Message::default()
    };
    successor.step(request.clone()).unwrap();
    assert_eq!(successor.incarnation_drops(), 1);
    assert_eq!(successor.hard_state().vote, 0, "no vote cast");
    assert_eq!(successor.term(), 0, "the term did not move");
    assert!(!successor.has_ready(), "nothing answered, nothing to persist");
    // The same request addressed to this incarnation is answered as usual.
    successor.step(Message { to_incarnation: 1, ..request }).unwrap();
    assert_eq!(successor.hard_state().vote, 2);
}

/// An answer goes to the incarnation that asked, even when the answering replica's own
/// configuration does not know it (a joining replica starts from the group as the Join
/// described it, without incarnations).
#[test]
fn answers_are_addressed_to_the_incarnation_that_asked() {
    let mut follower = node_with(config(2, 0), &Membership::voters([1, 2]).unwrap());
    let append = Message {
        group_id: 7,
        from: 1,
        to: 2,
        term: 1,
        msg_type: MessageType::Append as i32,
        entries: vec![Entry { index: 1, term: 1, kind: EntryKind::LeaderNoop as i32, data: Bytes::new() }],
        from_incarnation: 9,
        ..Message::default()
    };
    follower.step(append).unwrap();
    let ready = follower.ready();
    let answer = ready.persisted_messages.first().expect("an acknowledgement after persisting");
    assert_eq!((answer.to, answer.to_incarnation, answer.from_incarnation), (1, 9, 0));
}

/// A member keeps its incarnation across role changes; a change that would swap a staying
/// member's replica for another is refused (the old one must be removed first).
#[test]
fn members_keep_their_incarnation_and_cannot_swap_it_in_place() {
    let with_new = Membership::voters([1, 2, 3]).unwrap().with_incarnation(3, 4).unwrap();
    let mut candidate = RaftNode::new(config(1, 0), with_new.clone(), rand_chacha_seed(1)).unwrap();
    let mut requests = Vec::new();
    for _ in 0..30 {
        candidate.tick();
        while candidate.has_ready() {
            let ready = candidate.ready();
            requests.extend(ready.messages.into_iter().filter(|m| m.to == 3));
        }
    }
    assert!(!requests.is_empty(), "the candidate asked node 3");
    assert!(requests.iter().all(|m| m.to_incarnation == 4), "requests to node 3 name its incarnation: {requests:?}");
    let demote = Membership::new([(1, Role::Voter), (2, Role::Voter), (3, Role::Observer)]).unwrap();
    assert!(with_new.check_single_change(&with_new.keeping_incarnations_of(demote.clone())).is_ok());
    assert_eq!(with_new.keeping_incarnations_of(demote.clone()).incarnation(3), 4);
    let swapped = Membership::voters([1, 2, 3]).unwrap().with_incarnation(3, 5).unwrap();
    assert!(matches!(with_new.check_single_change(&swapped), Err(RaftError::InvalidMembership(_))));
}

/// Configurations written before incarnations existed (membership entries in the log,
/// snapshot metadata) decode with incarnation 0 for every member, as those replicas run.
#[test]
fn configurations_written_before_incarnations_decode_with_incarnation_zero() {
    #[derive(Clone, PartialEq, prost::Message)]
    struct OldMember {
        #[prost(uint64, tag = "1")]
        node_id: u64,
        #[prost(int32, tag = "2")]
        role: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct OldMembership {
        #[prost(message, repeated, tag = "1")]
        members: Vec<OldMember>,
    }
    let old = OldMembership {
        members: vec![
            OldMember { node_id: 1, role: pb::MemberRole::Voter as i32 },
            OldMember { node_id: 4, role: pb::MemberRole::Observer as i32 },
        ],
    };
    let decoded = Membership::decode(&old.encode_to_vec()).unwrap();
    assert_eq!(decoded, Membership::new([(1, Role::Voter), (4, Role::Observer)]).unwrap());
    assert_eq!((decoded.incarnation(1), decoded.incarnation(4)), (0, 0));
    let with = decoded.clone().with_incarnation(4, 12).unwrap();
    assert_eq!(Membership::decode(&with.encode()).unwrap(), with, "incarnations survive encoding");
}

/// Eager-rejoin simulation seed 8589962636: node 4 left a group as a witness
/// (incarnation 1) and joined again as an observer (incarnation 2). Its new replica
/// installed a snapshot whose configuration still listed node 4 as that witness, took the
/// witness role for its own, skipped the committed entry that reached it before the entries
/// removing and re-adding it, and then served a read from the value that entry overwrote.
/// The role it takes from a configuration is its own only for its own incarnation.
#[test]
fn a_replica_does_not_take_the_role_of_an_earlier_incarnation_of_its_node() {
    let stale = Membership::new([(1, Role::Voter), (2, Role::Voter), (3, Role::Witness), (4, Role::Witness), (5, Role::Voter)])
        .unwrap()
        .with_incarnation(4, 1)
        .unwrap();
    let recovered = conclave_engine::raft::Recovered {
        hard_state: conclave_engine::raft::HardState { term: 1, vote: 0, commit: 12 },
        compacted_index: 12,
        compacted_term: 1,
        membership: stale.clone(),
        entries: Vec::new(),
        applied: 12,
    };
    let mut joined = RaftNode::restart(config(4, 2), recovered, rand_chacha_seed(4)).unwrap();
    assert_eq!(joined.member_role(), None, "the witness listed is incarnation 1, not this replica");
    let append = |prev: u64, entry: Entry, commit: u64| Message {
        group_id: 7,
        from: 5,
        to: 4,
        term: 1,
        msg_type: MessageType::Append as i32,
        index: prev,
        log_term: 1,
        entries: vec![entry],
        commit,
        from_incarnation: 0,
        to_incarnation: 2,
        ..Message::default()
    };
    let normal = Entry { index: 13, term: 1, kind: EntryKind::Normal as i32, data: Bytes::from_static(b"value 13") };
    let without_4 = Membership::new([(1, Role::Voter), (2, Role::Voter), (3, Role::Witness), (5, Role::Voter)]).unwrap();
    let with_4 = Membership::new([(1, Role::Voter), (2, Role::Voter), (3, Role::Witness), (4, Role::Observer), (5, Role::Voter)])
        .unwrap()
        .with_incarnation(4, 2)
        .unwrap();
    let config = |index: u64, m: &Membership| Entry { index, term: 1, kind: EntryKind::Membership as i32, data: m.encode() };
    let mut applied = Vec::new();
    for (prev, entry, commit) in [(12, normal, 13), (13, config(14, &without_4), 13), (14, config(15, &with_4), 15)] {
        joined.step(append(prev, entry, commit)).unwrap();
        while joined.has_ready() {
            let ready = joined.ready();
            let ack = ready.persist_ack();
            applied.extend(ready.committed_entries);
            if let Some((index, term)) = ack {
                joined.persisted(index, term);
            }
        }
        if prev == 12 {
            assert!(applied.is_empty() && joined.applied_index() == 12, "entry 13 waits until this replica knows its role");
        }
    }
    assert_eq!(joined.member_role(), Some(Role::Observer));
    let indexes: Vec<u64> = applied.iter().map(|e| e.index).collect();
    assert_eq!(indexes, [13, 14, 15], "every committed entry reaches the state machine");
    assert_eq!(applied[0].data, Bytes::from_static(b"value 13"));
}

fn rand_chacha_seed(seed: u64) -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}
