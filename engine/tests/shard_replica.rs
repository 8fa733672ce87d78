//! One group replica driven by hand, synchronously: watchers end when unsubscribed (not only
//! at the election's next change), reads wait for their index while the number held is
//! bounded, and saved snapshots compact the in-memory log.

use std::cell::RefCell;
use std::rc::Rc;

use conclave_engine::raft::{Config, Membership, RaftNode, RaftRole};
use conclave_engine::shard::{Committed, ReadTerm, Replica, ShardError, TermQuery, WatchEvent, MAX_HELD_READS};
use conclave_engine::sm::{command, Command, ElectionOp, Output, PrimitiveRef, StateMachine};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Drains the replica's output as a runtime would, with instant durability.
fn settle(replica: &mut Replica) {
    for _ in 0..100 {
        if !replica.has_ready() {
            return;
        }
        let mut ready = replica.take_ready();
        replica.apply_committed(&mut ready);
        if let Some((index, term)) = ready.persist_ack() {
            replica.raft_mut().persisted(index, term);
        }
    }
    panic!("the replica never settled");
}

fn leader() -> Replica {
    let mut cfg = Config::new(1, 1);
    cfg.election_ticks = 3;
    cfg.heartbeat_ticks = 1;
    let raft = RaftNode::new(cfg, Membership::voters([1]).unwrap(), ChaCha8Rng::seed_from_u64(3)).unwrap();
    let mut replica = Replica::new(raft, StateMachine::new());
    for _ in 0..20 {
        replica.raft_mut().tick();
        settle(&mut replica);
        if replica.raft().role() == RaftRole::Leader {
            return replica;
        }
    }
    panic!("a single voter elects itself");
}

fn propose(replica: &mut Replica, cmd: Command) -> Output {
    let out: Rc<RefCell<Option<Result<Committed, ShardError>>>> = Rc::default();
    let sink = out.clone();
    replica.propose(&cmd, Box::new(move |r| *sink.borrow_mut() = Some(r)));
    settle(replica);
    let result = out.borrow_mut().take().expect("answered once settled");
    result.unwrap().result.unwrap()
}

fn read(replica: &mut Replica, min_index: u64) -> Result<ReadTerm, ShardError> {
    let out: Rc<RefCell<Option<Result<ReadTerm, ShardError>>>> = Rc::default();
    let sink = out.clone();
    let query = TermQuery { session_id: None, primitive: PrimitiveRef::Name("e".into()), min_index, sequence_num: 0 };
    replica.read(query, Box::new(move |r| *sink.borrow_mut() = Some(r)));
    settle(replica);
    let result = out.borrow_mut().take().expect("answered once settled");
    result
}

#[test]
fn unwatch_removes_a_watcher_of_a_quiet_election() {
    let mut replica = leader();
    let Output::SessionOpened { session_id } = propose(&mut replica, command::open_session(1, 60_000)) else { panic!() };
    propose(&mut replica, command::create_primitive(1, session_id, 1, "e"));

    let seen = Rc::new(RefCell::new(Vec::new()));
    for key in [7, 8] {
        let seen = seen.clone();
        let query = TermQuery { session_id: None, primitive: PrimitiveRef::Name("e".into()), min_index: 0, sequence_num: 0 };
        replica.watch(
            query,
            key,
            Box::new(|r| assert!(r.is_ok())),
            Box::new(move |event| {
                if let WatchEvent::Changed(n) = event {
                    seen.borrow_mut().push((key, n.term.term));
                }
                true
            }),
        );
    }
    settle(&mut replica);
    assert_eq!(replica.watcher_count(), 2);
    replica.unwatch(7);
    replica.unwatch(7);
    replica.unwatch(99);
    assert_eq!(replica.watcher_count(), 1, "the quiet election keeps only the live watcher");

    let enter = command::election(1, session_id, 2, PrimitiveRef::Name("e".into()), ElectionOp::Enter, "a");
    propose(&mut replica, enter);
    assert_eq!(*seen.borrow(), vec![(8, 1)], "only the remaining watcher is told");
    replica.unwatch(8);
    assert_eq!(replica.watcher_count(), 0);
}

#[test]
fn reads_wait_for_their_index_and_held_reads_are_bounded() {
    let mut replica = leader();
    let Output::SessionOpened { session_id } = propose(&mut replica, command::open_session(1, 60_000)) else { panic!() };
    propose(&mut replica, command::create_primitive(1, session_id, 1, "e"));
    let last = replica.raft().last_index();
    let ok = read(&mut replica, last).expect("an index the log has is served");
    assert!(ok.index >= last);

    // A read for an index not reached yet waits for it (a follower may lag the client).
    let answered: Rc<RefCell<Vec<Result<ReadTerm, ShardError>>>> = Rc::default();
    let query = |min_index| TermQuery { session_id: None, primitive: PrimitiveRef::Name("e".into()), min_index, sequence_num: 0 };
    let sink = answered.clone();
    replica.read(query(last + 2), Box::new(move |r| sink.borrow_mut().push(r)));
    settle(&mut replica);
    assert!(answered.borrow().is_empty(), "held until index {}", last + 2);
    propose(&mut replica, command::leader_barrier(2));
    assert!(answered.borrow().is_empty());
    propose(&mut replica, command::leader_barrier(3));
    assert_eq!(answered.borrow().len(), 1, "answered once its index is applied");

    // Reads for an index that never comes are bounded, not accumulated.
    for _ in 0..MAX_HELD_READS {
        replica.read(query(u64::MAX), Box::new(|r| assert!(r.is_ok(), "held reads are not failed")));
    }
    settle(&mut replica);
    let sink = answered.clone();
    replica.read(query(u64::MAX), Box::new(move |r| sink.borrow_mut().push(r)));
    let refused = answered.borrow_mut().pop();
    match refused {
        Some(Err(ShardError::Overloaded(why))) => assert!(why.contains("waiting"), "{why}"),
        other => panic!("expected Overloaded, got {other:?}"),
    }
}

#[test]
fn a_saved_snapshot_compacts_the_in_memory_log() {
    let mut replica = leader();
    let Output::SessionOpened { session_id } = propose(&mut replica, command::open_session(1, 60_000)) else { panic!() };
    for seq in 1..=20 {
        propose(&mut replica, command::create_primitive(1, session_id, seq, &format!("e{seq}")));
    }
    let applied = replica.state_machine().last_applied();
    assert!(replica.snapshot_due(20, 0));
    assert!(replica.snapshot_due(20, 1), "with no snapshot yet, the log outweighs none");
    let capture = replica.capture_snapshot().expect("a single-voter group can snapshot");
    replica.note_snapshot_size(capture.data.len());
    assert_eq!(capture.index, applied);
    assert!(replica.raft().entries().count() > 20);
    replica.snapshot_saved(&capture, 5).unwrap();
    assert_eq!(replica.raft().compacted_index(), applied - 5, "Raft dropped what the snapshot covers but the tail");
    assert_eq!(replica.raft().entries().count(), 5, "the configured tail stays for followers just behind");
    assert!(!replica.snapshot_due(1, 0), "nothing applied since the snapshot");
    assert!(replica.capture_snapshot().is_none(), "no second snapshot at the same index");
    // The group keeps serving after compaction.
    let cmd = command::election(1, session_id, 21, PrimitiveRef::Name("e1".into()), ElectionOp::Enter, "a");
    assert!(matches!(propose(&mut replica, cmd), Output::Term(_)));
    assert!(replica.snapshot_due(1, 0), "an entry applied since the snapshot");
    assert!(!replica.snapshot_due(1, 1), "one small entry does not outweigh a snapshot of 20 elections");
}

/// Starts a driver query of election `e` in `session` with `sequence_num`, without settling.
fn start_session_read(replica: &mut Replica, session_id: u64, sequence_num: u64) -> Rc<RefCell<Option<Result<ReadTerm, ShardError>>>> {
    let out: Rc<RefCell<Option<Result<ReadTerm, ShardError>>>> = Rc::default();
    let sink = out.clone();
    let query = TermQuery { session_id: Some(session_id), primitive: PrimitiveRef::Name("e".into()), min_index: 0, sequence_num };
    replica.read(query, Box::new(move |r| *sink.borrow_mut() = Some(r)));
    out
}

#[test]
fn a_query_waits_for_the_commands_of_its_session_numbered_below_it() {
    let mut replica = leader();
    let Output::SessionOpened { session_id } = propose(&mut replica, command::open_session(1, 60_000)) else { panic!() };
    propose(&mut replica, command::create_primitive(1, session_id, 1, "e"));
    let candidates =
        |replica: &Replica| replica.state_machine().query_term(None, &PrimitiveRef::Name("e".into())).unwrap().candidates.len();
    // (the command's sequence number, the query's, whether the query sees the command): a
    // query numbered 0 or not above the command does not wait for it.
    for (command_seq, query_seq, waits) in [(2, 3, true), (4, 4, false), (5, 0, false), (6, 9, true)] {
        let before = candidates(&replica);
        // The command is in the log but not durable, so not applied, when the query's read
        // index is confirmed in the same step.
        let enter =
            command::election(1, session_id, command_seq, PrimitiveRef::Name("e".into()), ElectionOp::Enter, &format!("c{command_seq}"));
        replica.propose(&enter, Box::new(|r| assert!(r.is_ok())));
        let read = start_session_read(&mut replica, session_id, query_seq);
        settle(&mut replica);
        let read = read.borrow_mut().take().expect("answered").expect("read");
        let seen = read.result.expect("the election exists").candidates.len();
        assert_eq!(seen, if waits { before + 1 } else { before }, "query #{query_seq} after command #{command_seq}");
        assert_eq!(candidates(&replica), before + 1, "the command applied");
    }
}

/// A replica whose state machine is ahead of what its Raft node applied is a wiring error of
/// the caller (recovery hands both the same snapshot): debug builds refuse to build it.
#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "the state machine applied 1 but Raft applied only 0")]
fn a_state_machine_ahead_of_raft_is_refused() {
    let raft = RaftNode::new(Config::new(1, 1), Membership::voters([1]).unwrap(), ChaCha8Rng::seed_from_u64(3)).unwrap();
    let mut sm = StateMachine::new();
    sm.apply(1, 1, &command::open_session(1_000, 10_000));
    let _ = Replica::new(raft, sm);
}

/// What each watcher of `elections` heard, by election: the candidates of every change, and
/// the end of the watch as `["ended: <error>"]`.
type Heard = Rc<RefCell<Vec<(String, Vec<String>)>>>;

fn watch_all(replica: &mut Replica, elections: &[&str]) -> Heard {
    let heard: Heard = Rc::default();
    for (key, name) in elections.iter().enumerate() {
        let (heard, name) = (heard.clone(), name.to_string());
        let query = TermQuery { session_id: None, primitive: PrimitiveRef::Name(name.clone()), min_index: 0, sequence_num: 0 };
        replica.watch(
            query,
            key as u64,
            Box::new(|r| assert!(r.unwrap().result.is_ok())),
            Box::new(move |event| {
                let what = match event {
                    WatchEvent::Changed(n) => n.term.candidates.iter().map(|c| c.to_string()).collect(),
                    WatchEvent::Ended(e) => vec![format!("ended: {e}")],
                };
                heard.borrow_mut().push((name.clone(), what));
                true
            }),
        );
    }
    settle(replica);
    heard
}

/// A replica with session 1's elections "e" and "f" (no candidates).
fn with_two_elections() -> (Replica, u64) {
    let mut replica = leader();
    let Output::SessionOpened { session_id } = propose(&mut replica, command::open_session(1, 60_000)) else { panic!() };
    propose(&mut replica, command::create_primitive(1, session_id, 1, "e"));
    propose(&mut replica, command::create_primitive(1, session_id, 2, "f"));
    (replica, session_id)
}

#[test]
fn an_installed_snapshot_tells_only_the_watchers_of_elections_it_changed_once() {
    let (mut replica, session_id) = with_two_elections();
    let heard = watch_all(&mut replica, &["e", "f"]);
    // A snapshot from the leader, two entries ahead: "a" and then "b" entered "e"; "f" as is.
    let mut ahead = replica.state_machine().clone();
    let (index, term) = (ahead.last_applied(), ahead.last_term());
    for (i, who) in ["a", "b"].iter().enumerate() {
        let enter = command::election(2, session_id, 3 + i as u64, PrimitiveRef::Name("e".into()), ElectionOp::Enter, who);
        assert!(ahead.apply(index + 1 + i as u64, term, &enter).result.is_ok());
    }
    replica.install_snapshot(ahead, index + 2, 0);
    assert_eq!(
        *heard.borrow(),
        vec![("e".to_string(), vec!["a".to_string(), "b".to_string()])],
        "one state for the skipped changes of e, nothing for the unchanged f"
    );
}

#[test]
fn failing_a_replica_ends_every_watch_with_the_reason() {
    let (mut replica, _) = with_two_elections();
    let heard = watch_all(&mut replica, &["e", "f"]);
    replica.fail_all(ShardError::UnknownGroup(1));
    let heard = heard.borrow();
    assert_eq!(heard.len(), 2, "each watcher is told once: {heard:?}");
    assert!(heard.iter().all(|(_, what)| what.len() == 1 && what[0].starts_with("ended: ") && what[0].contains('1')), "{heard:?}");
    assert_eq!(replica.watcher_count(), 0);
}
