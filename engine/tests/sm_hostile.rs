//! The state machine against input no honest client or peer sends: commands whose fields
//! take extreme values (0, 1, u64::MAX, ids and sequence numbers that were never issued,
//! timestamps far in the future or the past, empty and oversized names), payloads that are
//! random bytes, and snapshots (as a leader's InstallSnapshot or a damaged disk delivers
//! them) whose sessions, primitives and outputs contradict each other. Each must be applied
//! or refused with an error, never panic; a snapshot that restores must itself behave: the
//! machine applies further commands and snapshots again to something that restores.

use conclave_engine::sm::{
    command, ElectionOp, Output, PrimitiveRef, SmError, StateMachine, OLDEST_READABLE_SNAPSHOT_VERSION, SNAPSHOT_VERSION,
};
use conclave_proto::conclave::sm::v1 as pb;
use proptest::prelude::*;
use prost::Message as _;

/// Values where arithmetic and lookups go wrong: the edges and a few small ones.
fn edgy() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0u64..6,
        1 => Just(u64::MAX),
        1 => Just(u64::MAX - 1),
        1 => Just(u64::MAX / 2),
        1 => Just(i64::MAX as u64),
        1 => Just(i64::MAX as u64 + 1),
        1 => any::<u64>(),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["e", "f", "a", "b"]).prop_map(str::to_owned),
        1 => Just(String::new()),
        1 => Just("x".repeat(5_000)),
        1 => "\\PC{0,12}",
    ]
}

fn op() -> impl Strategy<Value = ElectionOp> {
    prop::sample::select(ElectionOp::ALL.to_vec())
}

/// One log entry's payload.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    let cmd = prop_oneof![
        (edgy(), edgy()).prop_map(|(t, paused)| command::pause_barrier(t, paused)),
        (edgy(), edgy()).prop_map(|(t, timeout)| command::open_session(t, timeout)),
        (edgy(), edgy(), edgy()).prop_map(|(t, s, seq)| command::keep_alive(t, s, seq)),
        (edgy(), edgy()).prop_map(|(t, s)| command::close_session(t, s)),
        (edgy(), edgy(), edgy(), name()).prop_map(|(t, s, seq, n)| command::create_primitive(t, s, seq, &n)),
        (edgy(), edgy(), edgy(), edgy()).prop_map(|(t, s, seq, p)| command::close_primitive(t, s, seq, p)),
        (edgy(), edgy(), edgy(), edgy(), op(), name()).prop_map(|(t, s, seq, p, op, c)| command::election(
            t,
            s,
            seq,
            PrimitiveRef::Id(p),
            op,
            &c
        )),
        (edgy(), edgy(), edgy(), name(), op(), name()).prop_map(|(t, s, seq, n, op, c)| command::election(
            t,
            s,
            seq,
            PrimitiveRef::Name(n),
            op,
            &c
        )),
        edgy().prop_map(|t| pb::Command { timestamp_ms: t, operation: None }),
    ];
    prop_oneof![
        8 => cmd.prop_map(|c| command::encode(&c).to_vec()),
        // An election command with an op number no build knows, and random bytes.
        1 => (edgy(), edgy(), any::<i32>()).prop_map(|(s, seq, op)| {
            let election = pb::ElectionCommand { session_id: s, sequence_num: seq, primitive: None, op, candidate: "a".into() };
            pb::Command { timestamp_ms: 1, operation: Some(pb::command::Operation::Election(election)) }.encode_to_vec()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// An honest prefix (sessions open, an election with candidates), then hostile entries.
fn honest_prefix(sm: &mut StateMachine) -> u64 {
    let mut index = 0;
    let mut apply = |sm: &mut StateMachine, c: pb::Command| {
        index += 1;
        sm.apply(index, 1, &c);
    };
    apply(sm, command::open_session(1_000, 10_000)); // session 1
    apply(sm, command::open_session(1_000, 10_000)); // session 2
    apply(sm, command::create_primitive(1_001, 1, 1, "e"));
    apply(sm, command::election(1_002, 1, 2, PrimitiveRef::Name("e".into()), ElectionOp::Enter, "a"));
    apply(sm, command::create_primitive(1_003, 2, 1, "e"));
    apply(sm, command::election(1_004, 2, 2, PrimitiveRef::Name("e".into()), ElectionOp::Enter, "b"));
    index
}

/// Applies `payloads` after `index`, with a term that sometimes moves on, snapshotting and
/// restoring at the end: the restored twin must snapshot to the same bytes.
///
/// Every entry consumes its index (replicas stay in step). An entry the machine refuses (an
/// error that is not a remembered output) or answers as a retry from the session's cache
/// changes nothing but the bookkeeping every entry does (index, clock, a new term's session
/// refresh, expiries): the machine ends exactly where a barrier with that entry's timestamp
/// would have left it, with the same notifications.
fn apply_all(sm: &mut StateMachine, mut index: u64, payloads: &[Vec<u8>]) {
    let mut term = sm.last_term().max(1);
    for (i, payload) in payloads.iter().enumerate() {
        index += 1;
        if i % 7 == 6 {
            term = term.saturating_add(1);
        }
        let before = sm.clone();
        let applied = sm.apply_bytes(index, term, payload);
        assert_eq!(sm.last_applied(), index.max(before.last_applied()), "entry {index} consumed its index");
        if changes_only_bookkeeping(&applied.result, applied.retried) {
            let timestamp_ms = command::decode(payload).map_or(0, |c| c.timestamp_ms);
            let mut expected = before;
            let barrier = expected.apply(index, term, &command::pause_barrier(timestamp_ms, 0));
            assert_eq!(*sm, expected, "entry {index} ({:?}, retried: {}) changed the state", applied.result, applied.retried);
            assert_eq!(applied.notifications, barrier.notifications, "entry {index}: only expiries notify");
        }
        let _ = sm.query_term(Some(1), &PrimitiveRef::Name("e".into()));
        let _ = sm.query_term(None, &PrimitiveRef::Id(u64::MAX));
    }
    let bytes = sm.snapshot();
    let twin = StateMachine::restore(&bytes).expect("a snapshot the machine took restores");
    assert_eq!(twin.snapshot(), bytes, "the restored twin snapshots to the same bytes");
}

/// Whether an entry with this result may change only what every entry changes: refusals
/// (errors the session does not remember as the command's output) and retries.
fn changes_only_bookkeeping(result: &Result<Output, SmError>, retried: bool) -> bool {
    match result {
        _ if retried => true,
        Ok(_) => false,
        // Remembered outputs of a command that ran: a retry must get them again.
        Err(SmError::UnknownPrimitive { .. } | SmError::ElectionNotFound { .. }) => false,
        Err(_) => true,
    }
}

fn output() -> impl Strategy<Value = Option<pb::cached_output::Output>> {
    use pb::cached_output::Output;
    prop_oneof![
        1 => Just(None),
        1 => edgy().prop_map(|p| Some(Output::PrimitiveCreated(p))),
        1 => Just(Some(Output::PrimitiveClosed(pb::PrimitiveClosed {}))),
        1 => (edgy(), prop::collection::vec(name(), 0..3))
            .prop_map(|(term, candidates)| Some(Output::ElectionTerm(pb::ElectionTerm { term, candidates }))),
        1 => edgy().prop_map(|p| Some(Output::UnknownPrimitive(p))),
        1 => name().prop_map(|n| Some(Output::ElectionNotFound(n))),
    ]
}

/// A snapshot whose parts need not agree: duplicate or unsorted ids, candidates of sessions
/// that do not exist, handles of unknown sessions, outputs out of order.
fn snapshot() -> impl Strategy<Value = pb::Snapshot> {
    let session = (edgy(), edgy(), edgy(), edgy(), prop::collection::vec((edgy(), output()), 0..3)).prop_map(
        |(session_id, timeout_ms, last_alive_ms, released_sequence_num, outputs)| pb::SessionState {
            session_id,
            timeout_ms,
            last_alive_ms,
            released_sequence_num,
            cached_outputs: outputs.into_iter().map(|(sequence_num, output)| pb::CachedOutput { sequence_num, output }).collect(),
            ..Default::default()
        },
    );
    let primitive = (edgy(), name(), edgy(), prop::collection::vec((name(), edgy()), 0..4), prop::collection::vec(edgy(), 0..3)).prop_map(
        |(primitive_id, name, term, candidates, open_sessions)| pb::PrimitiveState {
            primitive_id,
            name,
            term,
            candidates: candidates.into_iter().map(|(name, session_id)| pb::CandidateState { name, session_id }).collect(),
            open_sessions,
        },
    );
    (
        prop_oneof![4 => Just(1u32), 1 => any::<u32>()],
        edgy(),
        edgy(),
        edgy(),
        prop::collection::vec(session, 0..4),
        prop::collection::vec(primitive, 0..4),
    )
        .prop_map(|(version, last_applied_index, last_term, clock_ms, sessions, primitives)| pb::Snapshot {
            version,
            last_applied_index,
            last_term,
            clock_ms,
            sessions,
            primitives,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn hostile_entries_are_applied_or_refused_without_panicking(payloads in prop::collection::vec(payload(), 1..40)) {
        let mut sm = StateMachine::new();
        let index = honest_prefix(&mut sm);
        apply_all(&mut sm, index, &payloads);
    }

    #[test]
    fn hostile_snapshots_are_refused_or_restore_to_a_machine_that_works(
        snapshot in snapshot(),
        payloads in prop::collection::vec(payload(), 0..20),
    ) {
        let bytes = snapshot.encode_to_vec();
        if let Ok(mut sm) = StateMachine::restore(&bytes) {
            let index = sm.last_applied();
            // A restored machine sits at its snapshot's index; entries after u64::MAX cannot exist.
            if index < u64::MAX - 64 {
                apply_all(&mut sm, index, &payloads);
            }
        }
    }

    #[test]
    fn random_snapshot_bytes_are_refused_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_restore_of(&bytes);
    }

    #[test]
    fn damaged_snapshots_are_refused_or_restore_exactly(
        taken in prop::collection::vec(payload(), 0..20),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut sm = StateMachine::new();
        let index = honest_prefix(&mut sm);
        apply_all(&mut sm, index, &taken);
        let mut bytes = sm.snapshot().to_vec();
        for (at, value) in damage {
            let at = at.index(bytes.len());
            bytes[at] ^= value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        check_restore_of(&bytes);
    }
}

/// Restores `bytes`: bytes that are no `Snapshot` message or of a version not read must be
/// refused with a message; bytes that restore give a machine whose own snapshot restores to
/// the same machine (restore accepted only what it can reproduce).
fn check_restore_of(bytes: &[u8]) {
    let decoded = pb::Snapshot::decode(bytes);
    match StateMachine::restore(bytes) {
        Err(error) => assert!(!error.to_string().is_empty(), "a refusal says why"),
        Ok(sm) => {
            let decoded = decoded.expect("restore accepted bytes that are no Snapshot message");
            // Damage can turn the version into an older one that is still read (1).
            assert!(
                (OLDEST_READABLE_SNAPSHOT_VERSION..=SNAPSHOT_VERSION).contains(&decoded.version),
                "restore accepted an unknown snapshot version {}",
                decoded.version
            );
            assert_eq!(sm.last_applied(), decoded.last_applied_index, "the restored machine sits at the snapshot's index");
            assert_eq!(sm.last_term(), decoded.last_term);
            assert_eq!(sm.clock_ms(), decoded.clock_ms);
            let again = StateMachine::restore(&sm.snapshot()).expect("the restored machine's snapshot restores");
            assert_eq!(again, sm, "a restored machine snapshots to itself");
        }
    }
}
