//! The Atomix driver's KeepAlive in the state machine: a Bloom filter of the commands the
//! client still has open decides which outputs up to `last_input_sequence_num` are released.
//! A command the filter contains keeps its cached output (a retry gets it) or, if it was not
//! applied yet, still runs when it arrives; one it does not contain is released and later
//! refused. A malformed filter in a log entry changes nothing; the filter survives snapshots.

mod sm_support;

use conclave_engine::sm::bloom::BloomFilter;
use conclave_engine::sm::{command, ElectionOp::*, Output, SmError, StateMachine};
use conclave_proto::conclave::sm::v1 as pb;
use sm_support::{term, Leader};

/// The filter the driver sends when `open` are its open commands.
fn open(open: &[u64]) -> BloomFilter {
    let mut filter = BloomFilter::with_estimates(open.len() as u64, 0.05);
    for &seq in open {
        filter.add_sequence(seq);
    }
    filter
}

fn cached(leader: &Leader, session: u64) -> Vec<u64> {
    leader.sm.sessions().get(session).expect("session").cached_outputs().keys().copied().collect()
}

#[test]
fn only_outputs_the_filter_does_not_contain_are_released() {
    let mut leader = Leader::new();
    let session = leader.open_session(10_000);
    let election = leader.create(session, 1, "e");
    leader.term_after(session, 2, election, Enter, "a");
    leader.term_after(session, 3, election, Enter, "b");
    leader.term_after(session, 5, election, Enter, "c");
    // The client still waits on 3 (its answer was lost) and on 4 (not applied yet).
    let filter = open(&[3, 4]);
    assert!(![1, 2, 5].iter().any(|&s| filter.contains_sequence(s)), "no false positive in this example");
    let kept = leader.apply(command::driver_keep_alive(leader.now_ms, session, 4, &filter));
    assert_eq!(kept.result, Ok(Output::KeptAlive));
    assert_eq!(cached(&leader, session), [3, 5], "1 and 2 released; 3 is open; 5 is past last_input_sequence_num");

    let retry = leader.op(session, 3, election, Enter, "b");
    assert!(retry.retried, "a retry of an open command gets its cached output, not SequenceFromThePast");
    assert_eq!(retry.result, Ok(Output::Term(term(1, &["a", "b"]))));
    let delayed = leader.op(session, 4, election, Enter, "d");
    assert!(!delayed.retried);
    assert_eq!(delayed.result, Ok(Output::Term(term(1, &["a", "b", "c", "d"]))), "a delayed open command still runs");

    let released = leader.op(session, 2, election, Withdraw, "a");
    assert_eq!(released.result, Err(SmError::SequenceEnded { session_id: session, sequence_num: 2, keep_alive_through: 4 }));
    assert!(released.result.unwrap_err().to_string().contains("released"));
    assert_eq!(leader.sm.registry().get(election).unwrap().election().to_term(), term(1, &["a", "b", "c", "d"]), "nothing ran");

    // The next keep-alive ends 3 and 4; 5 and later stay until one passes them.
    leader.apply(command::driver_keep_alive(leader.now_ms, session, 6, &open(&[])));
    assert_eq!(cached(&leader, session), Vec::<u64>::new());
    assert!(leader.op(session, 3, election, Enter, "b").result.is_err());
    assert_eq!(leader.op(session, 7, election, Enter, "e").result, Ok(Output::Term(term(1, &["a", "b", "c", "d", "e"]))));
}

#[test]
fn a_keep_alive_overtaken_by_a_later_one_does_not_reopen_what_the_later_one_ended() {
    let mut leader = Leader::new();
    let session = leader.open_session(10_000);
    let election = leader.create(session, 1, "e");
    leader.term_after(session, 2, election, Enter, "a");
    leader.apply(command::driver_keep_alive(leader.now_ms, session, 2, &open(&[])));
    // An older keep-alive (through 1, with 2 still open) is applied after the newer one.
    leader.apply(command::driver_keep_alive(leader.now_ms, session, 1, &open(&[2])));
    let late = leader.op(session, 2, election, Withdraw, "a");
    assert_eq!(late.result, Err(SmError::SequenceEnded { session_id: session, sequence_num: 2, keep_alive_through: 2 }));
}

#[test]
fn the_client_api_keep_alive_without_a_filter_still_releases_everything_up_to_it() {
    let mut leader = Leader::new();
    let session = leader.open_session(10_000);
    let election = leader.create(session, 1, "e");
    leader.term_after(session, 2, election, Enter, "a");
    leader.apply(command::keep_alive(leader.now_ms, session, 2));
    assert_eq!(cached(&leader, session), Vec::<u64>::new());
    assert!(matches!(leader.op(session, 2, election, Enter, "a").result, Err(SmError::SequenceFromThePast { .. })));
}

#[test]
fn a_malformed_filter_in_a_log_entry_changes_nothing() {
    let mut leader = Leader::new();
    let session = leader.open_session(10_000);
    let election = leader.create(session, 1, "e");
    leader.term_after(session, 2, election, Enter, "a");
    let before = leader.sm.sessions().get(session).unwrap().clone();
    let bad_filters = [
        pb::BloomFilter { m: 0, k: 3, bits: 64, words: vec![0] },
        pb::BloomFilter { m: 64, k: 3, bits: 64, words: vec![] },
        pb::BloomFilter { m: 64, k: 3, bits: u64::MAX, words: vec![0] },
    ];
    for filter in bad_filters {
        let mut keep_alive = command::keep_alive(leader.now_ms + 5_000, session, 9);
        if let Some(pb::command::Operation::KeepAlive(k)) = &mut keep_alive.operation {
            k.open_inputs = Some(filter.clone());
        }
        let applied = leader.apply(keep_alive);
        assert!(matches!(&applied.result, Err(SmError::MalformedCommand { reason }) if reason.contains("filter")), "{filter:?}");
        let after = leader.sm.sessions().get(session).unwrap();
        assert_eq!((after.cached_outputs(), after.open_inputs()), (before.cached_outputs(), None), "{filter:?}");
        assert_eq!(after.last_alive_ms(), before.last_alive_ms(), "not even kept alive");
    }
}

#[test]
fn the_latest_filter_survives_a_snapshot() {
    let mut leader = Leader::new();
    let session = leader.open_session(10_000);
    let election = leader.create(session, 1, "e");
    leader.term_after(session, 2, election, Enter, "a");
    leader.term_after(session, 3, election, Enter, "b");
    leader.apply(command::driver_keep_alive(leader.now_ms, session, 3, &open(&[3])));
    let restored = StateMachine::restore(&leader.sm.snapshot()).expect("restores");
    assert_eq!(restored, leader.sm);
    leader.sm = restored;
    assert!(leader.op(session, 3, election, Enter, "b").retried);
    assert!(matches!(leader.op(session, 2, election, Enter, "a").result, Err(SmError::SequenceEnded { .. })));
}
