//! Edge cases of every election operation (api.md §4) through the public state-machine API:
//! unknown candidates, the last candidate leaving, Promote from second place, Demote of a
//! leader with and without a successor, Anoint of the leader, session expiry and close of a
//! leader with waiting candidates, and the watch notification each change produces.

mod sm_support;

use conclave_engine::sm::{command, ElectionOp::*, Output};
use sm_support::{term, Leader};

/// A leader with one session and an election holding a, b, c (a leads, term 1).
fn three_candidates() -> (Leader, u64, u64) {
    let mut leader = Leader::new();
    let session = leader.open_session(10_000);
    let election = leader.create(session, 1, "e");
    for (seq, name) in [(2, "a"), (3, "b"), (4, "c")] {
        leader.term_after(session, seq, election, Enter, name);
    }
    (leader, session, election)
}

#[test]
fn enter_makes_the_first_candidate_leader_and_queues_the_rest() {
    let (mut leader, session, election) = three_candidates();
    let applied = leader.op(session, 5, election, Enter, "b");
    assert_eq!(applied.result, Ok(Output::Term(term(1, &["a", "b", "c"]))));
    assert!(applied.notifications.is_empty(), "a present candidate changes nothing");
    let applied = leader.op(session, 6, election, Enter, "d");
    assert_eq!(applied.notifications.len(), 1);
    assert_eq!(applied.notifications[0].term, term(1, &["a", "b", "c", "d"]));
    assert_eq!(&*applied.notifications[0].name, "e");
    assert_eq!(applied.notifications[0].primitive_id, election);
    assert_eq!(applied.notifications[0].index, applied.index);
}

#[test]
fn an_unknown_candidate_changes_nothing_and_returns_the_current_state() {
    let (mut leader, session, election) = three_candidates();
    for (seq, op) in [(5, Withdraw), (6, Anoint), (7, Promote), (8, Demote), (9, Evict)] {
        let applied = leader.op(session, seq, election, op, "nobody");
        assert_eq!(applied.result, Ok(Output::Term(term(1, &["a", "b", "c"]))), "{op:?}");
        assert!(applied.notifications.is_empty(), "{op:?}");
    }
}

#[test]
fn the_last_candidate_leaving_leaves_no_leader_and_the_next_enter_is_a_new_term() {
    let mut leader = Leader::new();
    let session = leader.open_session(10_000);
    let election = leader.create(session, 1, "e");
    assert_eq!(leader.term_after(session, 2, election, Enter, "a"), term(1, &["a"]));
    let applied = leader.op(session, 3, election, Withdraw, "a");
    assert_eq!(applied.result, Ok(Output::Term(term(1, &[]))));
    assert_eq!(applied.notifications[0].term, term(1, &[]));
    assert_eq!(leader.term_after(session, 4, election, Enter, "a"), term(2, &["a"]));
    assert_eq!(leader.term_after(session, 5, election, Evict, "a"), term(2, &[]));
}

#[test]
fn withdraw_of_the_leader_hands_over_and_withdraw_needs_the_owning_session() {
    let (mut leader, session, election) = three_candidates();
    let other = leader.open_session(10_000);
    assert_eq!(leader.term_after(other, 1, election, Withdraw, "a"), term(1, &["a", "b", "c"]));
    assert_eq!(leader.term_after(session, 5, election, Withdraw, "a"), term(2, &["b", "c"]));
    assert_eq!(leader.term_after(session, 6, election, Withdraw, "c"), term(2, &["b"]));
    assert_eq!(leader.term_after(other, 2, election, Evict, "b"), term(2, &[]), "evict ignores sessions");
}

#[test]
fn promote_moves_up_one_place_and_from_second_place_takes_office() {
    let (mut leader, session, election) = three_candidates();
    assert_eq!(leader.term_after(session, 5, election, Promote, "c"), term(1, &["a", "c", "b"]));
    assert_eq!(leader.term_after(session, 6, election, Promote, "c"), term(2, &["c", "a", "b"]));
    let applied = leader.op(session, 7, election, Promote, "c");
    assert_eq!(applied.result, Ok(Output::Term(term(2, &["c", "a", "b"]))), "the leader stays");
    assert!(applied.notifications.is_empty());
}

#[test]
fn demote_of_a_leader_hands_over_only_when_there_is_a_successor() {
    let (mut leader, session, election) = three_candidates();
    assert_eq!(leader.term_after(session, 5, election, Demote, "a"), term(2, &["b", "a", "c"]));
    assert_eq!(leader.term_after(session, 6, election, Demote, "a"), term(2, &["b", "c", "a"]));
    let applied = leader.op(session, 7, election, Demote, "a");
    assert_eq!(applied.result, Ok(Output::Term(term(2, &["b", "c", "a"]))), "last stays last");
    assert!(applied.notifications.is_empty());

    let mut alone = Leader::new();
    let session = alone.open_session(10_000);
    let election = alone.create(session, 1, "solo");
    alone.term_after(session, 2, election, Enter, "x");
    let applied = alone.op(session, 3, election, Demote, "x");
    assert_eq!(applied.result, Ok(Output::Term(term(1, &["x"]))), "no successor: no change");
    assert!(applied.notifications.is_empty());
}

#[test]
fn anoint_makes_a_candidate_leader_and_anointing_the_leader_changes_nothing() {
    let (mut leader, session, election) = three_candidates();
    let applied = leader.op(session, 5, election, Anoint, "a");
    assert_eq!(applied.result, Ok(Output::Term(term(1, &["a", "b", "c"]))));
    assert!(applied.notifications.is_empty());
    assert_eq!(leader.term_after(session, 6, election, Anoint, "c"), term(2, &["c", "a", "b"]));
    assert_eq!(leader.term_after(session, 7, election, Anoint, "b"), term(3, &["b", "c", "a"]));
}

#[test]
fn expiry_of_the_leaders_session_promotes_the_next_candidate_in_one_change_per_election() {
    let mut leader = Leader::new();
    let doomed = leader.open_session(1_000);
    let survivor = leader.open_session(60_000);
    let first = leader.create(doomed, 1, "first");
    let second = leader.create(doomed, 2, "second");
    leader.term_after(doomed, 3, first, Enter, "a1");
    leader.term_after(survivor, 1, first, Enter, "b");
    leader.term_after(doomed, 4, first, Enter, "a2");
    leader.term_after(survivor, 2, first, Enter, "c");
    leader.term_after(doomed, 5, second, Enter, "a3");
    leader.term_after(survivor, 3, second, Enter, "d");
    leader.now_ms += 999;
    assert!(leader.apply(command::keep_alive(leader.now_ms, survivor, 0)).notifications.is_empty());
    leader.now_ms += 2;
    let applied = leader.apply(command::leader_barrier(leader.now_ms));
    assert_eq!(applied.result, Ok(Output::Barrier));
    let changes: Vec<_> = applied.notifications.iter().map(|n| (n.primitive_id, n.term.clone())).collect();
    assert_eq!(changes, [(first, term(2, &["b", "c"])), (second, term(2, &["d"]))]);
    assert!(leader.sm.sessions().get(doomed).is_none());
    let stale = leader.op(doomed, 6, first, Enter, "late");
    assert_eq!(
        stale.result.unwrap_err().to_string(),
        format!("session {doomed} does not exist (never opened, closed or expired); open a new session")
    );
}

#[test]
fn closing_a_session_or_its_primitive_withdraws_its_candidates() {
    let mut leader = Leader::new();
    let closer = leader.open_session(60_000);
    let other = leader.open_session(60_000);
    let first = leader.create(closer, 1, "first");
    let second = leader.create(closer, 2, "second");
    leader.term_after(closer, 3, first, Enter, "a");
    leader.term_after(other, 1, first, Enter, "b");
    leader.term_after(closer, 4, second, Enter, "c");
    leader.term_after(other, 2, second, Enter, "d");
    let closed = leader.apply(command::close_primitive(leader.now_ms, closer, 5, first));
    assert_eq!(closed.result, Ok(Output::PrimitiveClosed));
    assert_eq!(closed.notifications[0].term, term(2, &["b"]));
    assert!(!leader.sm.registry().get(first).unwrap().open_sessions().contains(&closer));
    let ended = leader.apply(command::close_session(leader.now_ms, closer));
    assert_eq!(ended.result, Ok(Output::SessionClosed));
    let changes: Vec<_> = ended.notifications.iter().map(|n| (n.primitive_id, n.term.clone())).collect();
    assert_eq!(changes, [(second, term(2, &["d"]))]);
    assert!(leader.sm.registry().get(second).unwrap().open_sessions().is_empty());
}

#[test]
fn client_api_flow_names_elections_and_ends_with_the_connection() {
    use conclave_engine::sm::{PrimitiveRef, SmError};
    let mut leader = Leader::new();
    let by_name = || PrimitiveRef::Name("jobs".into());
    let connection = leader.open_session(30_000);
    let enter = command::election(leader.now_ms, connection, 1, by_name(), Enter, "worker-1");
    assert_eq!(
        leader.apply(enter).result,
        Err(SmError::ElectionNotFound { name: "jobs".into() }),
        "an election never created is NOT_FOUND"
    );
    let id = leader.create(connection, 2, "jobs");
    let other = leader.open_session(30_000);
    assert_eq!(leader.create(other, 1, "jobs"), id, "create by name is idempotent");
    let enter = command::election(leader.now_ms, connection, 3, by_name(), Enter, "worker-1");
    assert_eq!(leader.apply(enter).result, Ok(Output::Term(term(1, &["worker-1"]))));
    let enter = command::election(leader.now_ms, other, 2, by_name(), Enter, "worker-2");
    assert_eq!(leader.apply(enter).result, Ok(Output::Term(term(1, &["worker-1", "worker-2"]))));
    let closed = leader.apply(command::close_session(leader.now_ms, connection));
    assert_eq!(closed.notifications.len(), 1);
    assert_eq!(closed.notifications[0].term, term(2, &["worker-2"]));
    let read = leader.sm.query_term(None, &by_name());
    assert_eq!(read, Ok(term(2, &["worker-2"])));
}
