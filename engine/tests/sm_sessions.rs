//! Sessions, sequencing, validation and snapshots of the state machine: exactly-once retry,
//! "from the past" rejection, the new-leader no-expiry rule, backward timestamps, precise
//! validation errors with no state change, malformed payloads, and snapshot restore of
//! good and bad bytes.

mod sm_support;

use conclave_engine::sm::{
    command, ElectionOp::*, ErrorKind, NameField, Output, PrimitiveRef, SmError, SnapshotError, StateMachine, MAX_NAME_BYTES,
    SNAPSHOT_VERSION,
};
use conclave_proto::atomix::multiraft::v1::operation_response_headers::Status;
use conclave_proto::conclave::sm::v1 as pb;
use prost::Message;
use sm_support::{term, Leader};

#[test]
fn a_retried_command_returns_its_cached_output_without_applying_again() {
    let mut leader = Leader::new();
    let session = leader.open_session(10_000);
    let election = leader.create(session, 1, "e");
    assert_eq!(leader.create(session, 1, "ignored-on-retry"), election);
    assert_eq!(leader.sm.registry().len(), 1);
    let first = leader.op(session, 2, election, Enter, "a");
    assert_eq!(first.notifications.len(), 1);
    let other = leader.open_session(10_000);
    leader.term_after(other, 1, election, Enter, "b");
    let retry = leader.op(session, 2, election, Enter, "a");
    assert!(retry.retried);
    assert_eq!(retry.result, first.result, "the output of the first apply, not the current state");
    assert!(retry.notifications.is_empty());
    let withdraw = leader.op(session, 3, election, Withdraw, "a");
    assert_eq!(withdraw.result, Ok(Output::Term(term(2, &["b"]))));
    let retry = leader.op(session, 3, election, Withdraw, "a");
    assert!(retry.retried && retry.notifications.is_empty());
    assert_eq!(leader.sm.registry().get(election).unwrap().election().term(), 2, "not applied twice");
}

#[test]
fn keep_alive_releases_outputs_and_older_sequence_numbers_are_from_the_past() {
    let mut leader = Leader::new();
    let session = leader.open_session(10_000);
    let election = leader.create(session, 1, "e");
    leader.term_after(session, 2, election, Enter, "a");
    leader.term_after(session, 3, election, Enter, "b");
    assert_eq!(leader.sm.sessions().get(session).unwrap().cached_outputs().len(), 3);
    assert_eq!(leader.apply(command::keep_alive(leader.now_ms, session, 2)).result, Ok(Output::KeptAlive));
    let kept: Vec<u64> = leader.sm.sessions().get(session).unwrap().cached_outputs().keys().copied().collect();
    assert_eq!(kept, [3]);
    let past = leader.op(session, 2, election, Enter, "c");
    assert_eq!(past.result, Err(SmError::SequenceFromThePast { session_id: session, sequence_num: 2, released_through: 2 }));
    assert_eq!(past.result.unwrap_err().status(), Status::Invalid);
    assert_eq!(leader.op(session, 0, election, Enter, "c").result.unwrap_err().kind(), ErrorKind::Invalid);
    assert!(leader.op(session, 3, election, Enter, "b").retried, "unacknowledged output is kept");
    let names = leader.sm.registry().get(election).unwrap().election().to_term();
    assert_eq!(names, term(1, &["a", "b"]));
    leader.apply(command::keep_alive(leader.now_ms, session, u64::MAX));
    assert!(leader.sm.sessions().get(session).unwrap().cached_outputs().is_empty());
}

#[test]
fn a_keep_alive_batch_keeps_every_session_alive_and_names_the_unknown_ones() {
    let mut leader = Leader::new();
    let first = leader.open_session(1_000);
    let second = leader.open_session(1_000);
    let election = leader.create(first, 1, "e");
    leader.term_after(first, 2, election, Enter, "a");
    leader.term_after(second, 1, election, Enter, "b");
    leader.now_ms += 900;
    let batch = leader.apply(command::keep_alive_batch(leader.now_ms, &[(first, 1), (424_242, 0), (second, 0)]));
    assert_eq!(batch.result, Ok(Output::KeptAliveBatch { unknown_sessions: vec![424_242] }));
    let kept: Vec<u64> = leader.sm.sessions().get(first).unwrap().cached_outputs().keys().copied().collect();
    assert_eq!(kept, [2], "the first session released its output 1 only");
    assert_eq!(leader.sm.sessions().get(second).unwrap().cached_outputs().len(), 1);
    // 900 ms later both would have expired without the batch (timeout 1,000 ms).
    leader.now_ms += 900;
    leader.apply(command::leader_barrier(leader.now_ms));
    assert!(leader.sm.sessions().contains(first) && leader.sm.sessions().contains(second));
    assert_eq!(leader.sm.registry().get(election).unwrap().election().to_term(), term(1, &["a", "b"]));
}

#[test]
fn an_oversized_keep_alive_batch_is_refused_and_keeps_nobody_alive() {
    let mut leader = Leader::new();
    let session = leader.open_session(1_000);
    let too_many = vec![(session, 0); command::MAX_KEEP_ALIVE_BATCH + 1];
    leader.now_ms += 900;
    let refused = leader.apply(command::keep_alive_batch(leader.now_ms, &too_many));
    assert_eq!(refused.result.unwrap_err().kind(), ErrorKind::Invalid);
    leader.now_ms += 200;
    leader.apply(command::leader_barrier(leader.now_ms));
    assert!(!leader.sm.sessions().contains(session), "the refused batch did not keep the session alive");
}

#[test]
fn a_new_leader_does_not_expire_sessions_for_the_time_it_was_not_leading() {
    let mut leader = Leader::new();
    let session = leader.open_session(1_000);
    let mut same_term = leader.sm.clone();
    leader.now_ms += 5_000;
    leader.term += 1;
    let barrier = leader.apply(command::leader_barrier(leader.now_ms));
    assert!(leader.sm.sessions().contains(session), "refreshed by the new term");
    assert_eq!(leader.sm.sessions().get(session).unwrap().last_alive_ms(), leader.now_ms);
    assert!(barrier.notifications.is_empty());
    // The same entry in the old term expires the session.
    let old_term = same_term.apply(leader.index, leader.term - 1, &command::leader_barrier(leader.now_ms));
    assert_eq!(old_term.result, Ok(Output::Barrier));
    assert!(!same_term.sessions().contains(session));
    // Under the new leader the timeout counts again.
    leader.now_ms += 1_001;
    leader.apply(command::leader_barrier(leader.now_ms));
    assert!(!leader.sm.sessions().contains(session));
}

#[test]
fn a_pause_barrier_credits_every_session_with_the_pause_and_no_more() {
    let mut leader = Leader::new();
    let early = leader.open_session(1_000);
    leader.now_ms += 600;
    let late = leader.open_session(1_000);
    let (early_alive, late_alive) =
        (leader.sm.sessions().get(early).unwrap().last_alive_ms(), leader.sm.sessions().get(late).unwrap().last_alive_ms());
    // The leader's shard was held up for 800 ms; its first entry after the pause credits
    // that time before expiry runs, in the same term.
    leader.now_ms += 800;
    let barrier = leader.apply(command::pause_barrier(leader.now_ms, 800));
    assert_eq!(barrier.result, Ok(Output::Barrier));
    assert!(leader.sm.sessions().contains(early), "1,400 ms since its keep-alive, 800 of them paused");
    // Credited by the pause, but never past the entry's own time.
    assert_eq!(leader.sm.sessions().get(early).unwrap().last_alive_ms(), early_alive + 800);
    assert_eq!(leader.sm.sessions().get(late).unwrap().last_alive_ms(), (late_alive + 800).min(leader.now_ms));
    // The same entry without the credit expires the early session.
    let mut uncredited = Leader::new();
    let session = uncredited.open_session(1_000);
    uncredited.now_ms += 1_400;
    uncredited.apply(command::pause_barrier(uncredited.now_ms, 0));
    assert!(!uncredited.sm.sessions().contains(session));
    // After the credit the timeout counts again: 1,001 ms past its credited keep-alive, the
    // early session is gone.
    leader.now_ms = early_alive + 800 + 1_001;
    leader.apply(command::leader_barrier(leader.now_ms));
    assert!(!leader.sm.sessions().contains(early));
}

#[test]
fn timestamps_going_backwards_neither_move_the_clock_back_nor_expire_anyone() {
    let mut leader = Leader::new();
    let session = leader.open_session(1_000);
    leader.now_ms = 1_900;
    leader.apply(command::keep_alive(leader.now_ms, session, 0));
    leader.now_ms = 10;
    leader.apply(command::leader_barrier(leader.now_ms));
    assert_eq!(leader.sm.clock_ms(), 1_900);
    assert!(leader.sm.sessions().contains(session));
    leader.now_ms = 2_900;
    leader.apply(command::leader_barrier(leader.now_ms));
    assert!(leader.sm.sessions().contains(session), "deadline 2900 is not passed yet");
    leader.now_ms = 2_901;
    leader.apply(command::leader_barrier(leader.now_ms));
    assert!(!leader.sm.sessions().contains(session));
}

#[test]
fn invalid_commands_fail_precisely_and_change_nothing() {
    let mut leader = Leader::new();
    let session = leader.open_session(10_000);
    let election = leader.create(session, 1, "e");
    leader.term_after(session, 2, election, Enter, "a");
    let long = "x".repeat(MAX_NAME_BYTES + 1);
    let by_name = |name: &str| PrimitiveRef::Name(name.to_owned());
    let now = leader.now_ms;
    let cases = [
        (command::create_primitive(now, session, 3, ""), SmError::EmptyName { field: NameField::Election }),
        (command::create_primitive(now, session, 3, &long), SmError::NameTooLong { field: NameField::Election, len: MAX_NAME_BYTES + 1 }),
        (command::election(now, session, 3, by_name("e"), Enter, ""), SmError::EmptyName { field: NameField::Candidate }),
        (
            command::election(now, session, 3, by_name("e"), Enter, &long),
            SmError::NameTooLong { field: NameField::Candidate, len: MAX_NAME_BYTES + 1 },
        ),
        (command::election(now, session, 3, by_name(""), Enter, "b"), SmError::EmptyName { field: NameField::Election }),
        (command::open_session(now, 0), SmError::ZeroSessionTimeout),
        (command::election(now, 999, 3, by_name("e"), Enter, "b"), SmError::UnknownSession { session_id: 999 }),
        (command::keep_alive(now, 999, 0), SmError::UnknownSession { session_id: 999 }),
        (command::close_session(now, 999), SmError::UnknownSession { session_id: 999 }),
        (command::close_primitive(now, 999, 3, election), SmError::UnknownSession { session_id: 999 }),
        (command::election(now, session, 3, PrimitiveRef::Id(424_242), Enter, "b"), SmError::UnknownPrimitive { primitive_id: 424_242 }),
        (command::election(now, session, 4, by_name("never"), Enter, "b"), SmError::ElectionNotFound { name: "never".into() }),
        (command::close_primitive(now, session, 5, 77), SmError::UnknownPrimitive { primitive_id: 77 }),
        (
            command::Command { timestamp_ms: now, operation: None },
            SmError::MalformedCommand { reason: "the command carries no operation".into() },
        ),
    ];
    for (command, expected) in cases {
        let before = (leader.sm.sessions().clone(), leader.sm.registry().clone());
        let applied = leader.apply(command);
        let error = applied.result.clone().unwrap_err();
        assert_eq!(error, expected);
        assert!(!error.to_string().is_empty());
        assert!(applied.notifications.is_empty());
        let after = (leader.sm.sessions().clone(), leader.sm.registry().clone());
        let not_found = error.kind() == ErrorKind::NotFound;
        assert_eq!(error.status(), if not_found { Status::NotFound } else { Status::Invalid });
        if !matches!(error, SmError::UnknownPrimitive { .. } | SmError::ElectionNotFound { .. }) {
            assert_eq!(before, after, "{error}");
        } else {
            assert_eq!(before.1, after.1, "{error}: registry unchanged (only the output is cached)");
        }
    }
    let name = "y".repeat(MAX_NAME_BYTES);
    assert!(leader.create(session, 6, &name) > 0, "exactly the limit is accepted");
}

#[test]
fn malformed_payloads_consume_their_index_and_replays_are_refused() {
    let mut sm = StateMachine::new();
    let applied = sm.apply_bytes(1, 1, &[0xff, 0xff, 0xff]);
    assert!(matches!(applied.result, Err(SmError::MalformedCommand { .. })));
    assert_eq!(sm.last_applied(), 1);
    let unknown_op = pb::Command {
        timestamp_ms: 5,
        operation: Some(pb::command::Operation::Election(pb::ElectionCommand {
            session_id: 1,
            sequence_num: 1,
            primitive: Some(pb::election_command::Primitive::PrimitiveId(1)),
            op: 42,
            candidate: "a".into(),
        })),
    };
    let applied = sm.apply_bytes(2, 1, &unknown_op.encode_to_vec());
    assert_eq!(applied.result.unwrap_err().to_string(), "malformed state-machine command: unknown election operation 42");
    let replay = sm.apply(2, 1, &command::open_session(5, 1_000));
    assert_eq!(replay.result, Err(SmError::EntryAlreadyApplied { index: 2, last_applied: 2 }));
    assert_eq!(replay.result.unwrap_err().status(), Status::Internal);
    assert!(sm.sessions().is_empty());
}

#[test]
fn queries_read_the_current_state_by_id_or_name() {
    let mut leader = Leader::new();
    let session = leader.open_session(10_000);
    let election = leader.create(session, 1, "e");
    leader.term_after(session, 2, election, Enter, "a");
    let by_name = PrimitiveRef::Name("e".into());
    assert_eq!(leader.sm.query_term(None, &by_name), Ok(term(1, &["a"])));
    assert_eq!(leader.sm.query_term(Some(session), &PrimitiveRef::Id(election)), Ok(term(1, &["a"])));
    assert_eq!(leader.sm.query_term(Some(5_000), &by_name), Err(SmError::UnknownSession { session_id: 5_000 }));
    let missing = leader.sm.query_term(None, &PrimitiveRef::Name("nope".into())).unwrap_err();
    assert_eq!(missing.status(), Status::NotFound);
    assert_eq!(leader.sm.query_term(None, &PrimitiveRef::Id(9)), Err(SmError::UnknownPrimitive { primitive_id: 9 }));
}

#[test]
fn snapshots_round_trip_to_the_same_bytes_and_bad_snapshots_are_errors() {
    let mut leader = Leader::new();
    let session = leader.open_session(10_000);
    let election = leader.create(session, 1, "e");
    leader.term_after(session, 2, election, Enter, "a");
    let bytes = leader.sm.snapshot();
    let restored = StateMachine::restore(&bytes).expect("restore");
    assert_eq!(restored, leader.sm);
    assert_eq!(restored.snapshot(), bytes);

    assert!(matches!(StateMachine::restore(b"\xff\xff\xff"), Err(SnapshotError::Decode { .. })));
    let mut snapshot = pb::Snapshot::decode(bytes.clone()).unwrap();
    snapshot.version = SNAPSHOT_VERSION + 1;
    assert_eq!(
        StateMachine::restore(&snapshot.encode_to_vec()),
        Err(SnapshotError::UnsupportedVersion { found: SNAPSHOT_VERSION + 1, supported: SNAPSHOT_VERSION })
    );
    assert!(matches!(StateMachine::restore(&[]), Err(SnapshotError::UnsupportedVersion { found: 0, .. })));
    let mut orphan = pb::Snapshot::decode(bytes.clone()).unwrap();
    orphan.sessions.clear();
    let error = StateMachine::restore(&orphan.encode_to_vec()).unwrap_err();
    assert!(error.to_string().contains("bound to missing session"), "{error}");
    let mut twice = pb::Snapshot::decode(bytes).unwrap();
    let candidate = twice.primitives[0].candidates[0].clone();
    twice.primitives[0].candidates.push(candidate);
    let error = StateMachine::restore(&twice.encode_to_vec()).unwrap_err();
    assert!(error.to_string().contains("appears twice"), "{error}");
}
