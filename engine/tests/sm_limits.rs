//! The state machine's limits: sessions per partition, unacknowledged outputs per session,
//! elections per partition and candidates per election. A refusal is RESOURCE_EXHAUSTED,
//! changes nothing and is not remembered, so the same request succeeds once there is room;
//! retries of commands applied before the limit was reached are still answered.

mod sm_support;

use conclave_engine::sm::{
    command, ElectionOp::*, ErrorKind, Output, SmError, MAX_CANDIDATES, MAX_ELECTIONS, MAX_PENDING_OUTPUTS, MAX_SESSIONS,
};
use sm_support::Leader;

#[test]
fn sessions_beyond_the_limit_are_refused_until_one_closes() {
    let mut leader = Leader::new();
    let first = leader.open_session(60_000);
    for _ in 1..MAX_SESSIONS {
        leader.open_session(60_000);
    }
    let refused = leader.apply(command::open_session(leader.now_ms, 60_000));
    assert_eq!(refused.result, Err(SmError::TooManySessions));
    assert_eq!(SmError::TooManySessions.kind(), ErrorKind::Exhausted);
    assert_eq!(leader.sm.sessions().len(), MAX_SESSIONS, "the refusal opened nothing");
    leader.apply(command::close_session(leader.now_ms, first));
    leader.open_session(60_000);
}

#[test]
fn a_session_full_of_unacknowledged_outputs_takes_no_new_command_until_a_keep_alive() {
    let mut leader = Leader::new();
    let session = leader.open_session(60_000);
    let id = leader.create(session, 1, "e");
    for seq in 2..=MAX_PENDING_OUTPUTS as u64 {
        leader.term_after(session, seq, id, Enter, "a");
    }
    let next = MAX_PENDING_OUTPUTS as u64 + 1;
    let refused = leader.op(session, next, id, Withdraw, "a");
    assert_eq!(refused.result, Err(SmError::TooManyPendingOutputs { session_id: session }));
    assert_eq!(leader.sm.sessions().get(session).unwrap().cached_outputs().len(), MAX_PENDING_OUTPUTS);
    // A retry of an applied command is still answered from the cache.
    assert!(matches!(leader.op(session, 2, id, Enter, "a").result, Ok(Output::Term(_))));
    // Acknowledging outputs makes room; the refused command then applies.
    leader.apply(command::keep_alive(leader.now_ms, session, next - 1));
    let term = leader.term_after(session, next, id, Withdraw, "a");
    assert!(term.candidates.is_empty(), "the withdraw applied once there was room");
}

#[test]
fn new_elections_beyond_the_limit_are_refused_but_existing_ones_open() {
    let mut leader = Leader::new();
    let session = leader.open_session(60_000);
    let mut seq = 0;
    for n in 0..MAX_ELECTIONS {
        seq += 1;
        leader.create(session, seq, &format!("e{n}"));
        if seq % 1_000 == 0 {
            leader.apply(command::keep_alive(leader.now_ms, session, seq));
        }
    }
    seq += 1;
    let refused = leader.apply(command::create_primitive(leader.now_ms, session, seq, "one-too-many"));
    assert_eq!(refused.result, Err(SmError::TooManyElections));
    assert!(leader.sm.registry().id_of("one-too-many").is_none());
    // An election that exists opens as before.
    leader.create(session, seq + 1, "e7");
}

#[test]
fn candidates_beyond_the_limit_are_refused_but_known_ones_enter_again() {
    let mut leader = Leader::new();
    let session = leader.open_session(60_000);
    let id = leader.create(session, 1, "e");
    let mut seq = 1;
    for n in 0..MAX_CANDIDATES {
        seq += 1;
        leader.op(session, seq, id, Enter, &format!("c{n}"));
        if seq % 1_000 == 0 {
            leader.apply(command::keep_alive(leader.now_ms, session, seq));
        }
    }
    seq += 1;
    let refused = leader.op(session, seq, id, Enter, "one-too-many");
    assert_eq!(refused.result, Err(SmError::TooManyCandidates { name: "e".into() }));
    assert!(refused.notifications.is_empty());
    // Entering a known candidate again, or withdrawing one, is not refused.
    assert!(matches!(leader.op(session, seq + 1, id, Enter, "c5").result, Ok(Output::Term(_))));
    let term = leader.term_after(session, seq + 2, id, Withdraw, "c5");
    assert_eq!(term.candidates.len(), MAX_CANDIDATES - 1);
    // With room again, the refused candidate enters.
    let term = leader.term_after(session, seq + 3, id, Enter, "one-too-many");
    assert_eq!(term.candidates.len(), MAX_CANDIDATES);
}
