//! Model-based property test of the state machine: random sequences of every operation
//! (sessions opening, keeping alive, closing and expiring through timestamps, new Raft
//! terms, timestamps going backwards, primitives created and closed, all six election
//! operations by id and by name, retries of earlier commands, malformed payloads) run
//! against the real `StateMachine` and against `Model`, a direct transcription of api.md §4
//! and the session rules. After every step: the results, retry flags and notifications are
//! the model's; the state equals the model's; no election's term falls; the leader is the
//! first candidate in both `Term` shapes; no candidate appears twice; every election whose
//! state changed has a notification ending in its new state and no other election has one.
//! At a random step the machine is snapshotted and restored, and the restored twin must then
//! behave exactly like the original until the end.
//!
//! Names come from small fixed sets, so name validation is left to `sm_sessions.rs`.

mod reference;

use std::collections::{BTreeMap, BTreeSet};

use conclave_engine::sm::{command, Applied, ElectionOp, ElectionTerm, Output, PrimitiveRef, SmError, StateMachine};
use conclave_proto::conclave::sm::v1 as pb;
use proptest::prelude::*;
use reference::Model;

const ELECTIONS: [&str; 3] = ["e0", "e1", "e2"];
const CANDIDATES: [&str; 4] = ["a", "b", "c", "d"];
const UNKNOWN_SESSION: u64 = 999_999_999;
const UNKNOWN_PRIMITIVE: u64 = 888_888_888;
const GARBAGE: &[u8] = &[0xff, 0xff, 0xff];

// ---------------------------------------------------------------- random actions

#[derive(Clone, Debug)]
enum Action {
    Open {
        timeout_ms: u64,
    },
    KeepAlive {
        session: usize,
        ack_lag: u64,
    },
    /// One entry keeping several sessions alive (one may repeat, or be unknown).
    KeepAliveBatch {
        sessions: Vec<(usize, u64)>,
    },
    Close {
        session: usize,
    },
    Create {
        session: usize,
        election: usize,
    },
    ClosePrimitive {
        session: usize,
        election: usize,
    },
    Elect {
        session: usize,
        election: usize,
        by_name: bool,
        op: ElectionOp,
        candidate: usize,
    },
    Retry {
        session: usize,
        back: usize,
    },
    Wait {
        ms: u64,
    },
    StaleTimestamp {
        back_ms: u64,
    },
    NewLeader,
    Garbage,
}

fn action() -> impl Strategy<Value = Action> {
    let op = prop::sample::select(ElectionOp::ALL.to_vec());
    prop_oneof![
        2 => prop::sample::select(vec![300u64, 1_000, 5_000]).prop_map(|timeout_ms| Action::Open { timeout_ms }),
        3 => (any::<usize>(), 0u64..3).prop_map(|(session, ack_lag)| Action::KeepAlive { session, ack_lag }),
        2 => prop::collection::vec((any::<usize>(), 0u64..3), 0..4).prop_map(|sessions| Action::KeepAliveBatch { sessions }),
        1 => any::<usize>().prop_map(|session| Action::Close { session }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(session, election)| Action::Create { session, election }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(session, election)| Action::ClosePrimitive { session, election }),
        12 => (any::<usize>(), any::<usize>(), any::<bool>(), op, any::<usize>()).prop_map(
            |(session, election, by_name, op, candidate)| Action::Elect { session, election, by_name, op, candidate }
        ),
        2 => (any::<usize>(), 0usize..4).prop_map(|(session, back)| Action::Retry { session, back }),
        3 => (0u64..700).prop_map(|ms| Action::Wait { ms }),
        1 => (0u64..2_000).prop_map(|back_ms| Action::StaleTimestamp { back_ms }),
        1 => Just(Action::NewLeader),
        1 => Just(Action::Garbage),
    ]
}

/// The clients and the Raft leader in front of the state machine.
#[derive(Default)]
struct Driver {
    index: u64,
    term: u64,
    now_ms: u64,
    sessions_seen: Vec<u64>,
    next_seq: BTreeMap<u64, u64>,
    sent: BTreeMap<u64, Vec<pb::Command>>,
}

impl Driver {
    fn session(&self, pick: usize) -> u64 {
        let n = self.sessions_seen.len();
        match pick % (4 * n + 1) {
            k if k == 4 * n => UNKNOWN_SESSION,
            k => self.sessions_seen[k / 4],
        }
    }

    fn seq(&mut self, session: u64) -> u64 {
        let next = self.next_seq.entry(session).or_insert(1);
        *next += 1;
        *next - 1
    }

    fn sequenced(&mut self, session: u64, command: pb::Command) -> Option<pb::Command> {
        self.sent.entry(session).or_default().push(command.clone());
        Some(command)
    }

    /// The command an action sends, or None for garbage bytes.
    fn command(&mut self, action: &Action, model: &Model) -> Option<pb::Command> {
        let now = self.now_ms;
        let election_id = |pick: usize| model.id_of(ELECTIONS[pick % ELECTIONS.len()]).unwrap_or(UNKNOWN_PRIMITIVE);
        match *action {
            Action::Open { timeout_ms } => Some(command::open_session(now, timeout_ms)),
            Action::KeepAlive { session, ack_lag } => {
                let s = self.session(session);
                let acked = self.next_seq.get(&s).copied().unwrap_or(1).saturating_sub(1 + ack_lag);
                Some(command::keep_alive(now, s, acked))
            }
            Action::KeepAliveBatch { ref sessions } => {
                let batch: Vec<(u64, u64)> = sessions
                    .iter()
                    .map(|&(session, ack_lag)| {
                        let s = self.session(session);
                        (s, self.next_seq.get(&s).copied().unwrap_or(1).saturating_sub(1 + ack_lag))
                    })
                    .collect();
                Some(command::keep_alive_batch(now, &batch))
            }
            Action::Close { session } => Some(command::close_session(now, self.session(session))),
            Action::Create { session, election } => {
                let s = self.session(session);
                let seq = self.seq(s);
                self.sequenced(s, command::create_primitive(now, s, seq, ELECTIONS[election % ELECTIONS.len()]))
            }
            Action::ClosePrimitive { session, election } => {
                let s = self.session(session);
                let seq = self.seq(s);
                self.sequenced(s, command::close_primitive(now, s, seq, election_id(election)))
            }
            Action::Elect { session, election, by_name, op, candidate } => {
                let s = self.session(session);
                let seq = self.seq(s);
                let primitive = if by_name {
                    PrimitiveRef::Name(ELECTIONS[election % ELECTIONS.len()].to_owned())
                } else {
                    PrimitiveRef::Id(election_id(election))
                };
                let name = CANDIDATES[candidate % CANDIDATES.len()];
                self.sequenced(s, command::election(now, s, seq, primitive, op, name))
            }
            Action::Retry { session, back } => {
                let s = self.session(session);
                match self.sent.get(&s).filter(|sent| !sent.is_empty()) {
                    Some(sent) => {
                        let mut again = sent[sent.len() - 1 - back % sent.len()].clone();
                        again.timestamp_ms = now;
                        Some(again)
                    }
                    None => Some(command::leader_barrier(now)),
                }
            }
            Action::Wait { ms } => {
                self.now_ms += ms;
                Some(command::leader_barrier(self.now_ms))
            }
            Action::StaleTimestamp { back_ms } => Some(command::leader_barrier(now.saturating_sub(back_ms))),
            Action::NewLeader => {
                self.term += 1;
                Some(command::leader_barrier(now))
            }
            Action::Garbage => None,
        }
    }
}

// ---------------------------------------------------------------- checks

fn same_result(actual: &Result<Output, SmError>, expected: &Result<Output, SmError>) -> bool {
    match (actual, expected) {
        (Err(SmError::MalformedCommand { .. }), Err(SmError::MalformedCommand { .. })) => true,
        _ => actual == expected,
    }
}

fn check_state(sm: &StateMachine, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(sm.clock_ms(), model.clock_ms);
    prop_assert_eq!(sm.last_term(), model.last_term);
    let sessions: Vec<_> = sm
        .sessions()
        .iter()
        .map(|s| {
            let outputs: BTreeMap<u64, _> = s.cached_outputs().iter().map(|(&q, o)| (q, o.to_result())).collect();
            (s.id(), s.timeout_ms(), s.last_alive_ms(), s.released_sequence_num(), outputs)
        })
        .collect();
    let expected: Vec<_> =
        model.sessions.iter().map(|(&id, s)| (id, s.timeout_ms, s.last_alive_ms, s.released, s.outputs.clone())).collect();
    prop_assert_eq!(sessions, expected);
    let elections: Vec<_> = sm
        .registry()
        .iter()
        .map(|p| {
            let e = p.election();
            let candidates: Vec<_> = e.candidates().iter().map(|c| (c.name.to_string(), c.session_id)).collect();
            (p.id(), p.name().to_owned(), e.term(), candidates, p.open_sessions().clone())
        })
        .collect();
    let expected: Vec<_> =
        model.elections.iter().map(|(&id, e)| (id, e.name.clone(), e.term, e.candidates.clone(), e.open.clone())).collect();
    prop_assert_eq!(elections, expected);
    Ok(())
}

fn check_invariants(sm: &StateMachine, before: &BTreeMap<u64, ElectionTerm>, applied: &Applied) -> Result<(), TestCaseError> {
    for primitive in sm.registry().iter() {
        let now = primitive.election().to_term();
        let runtime = now.to_runtime_term();
        let multiraft = now.to_multiraft_term();
        prop_assert_eq!(runtime.leader.as_str(), now.candidates.first().map_or("", |c| &**c));
        prop_assert_eq!(&multiraft.leader, &runtime.leader);
        prop_assert_eq!(&multiraft.candidates[..], runtime.candidates.get(1..).unwrap_or(&[]));
        prop_assert_eq!(multiraft.index, runtime.term);
        let distinct: BTreeSet<&str> = now.candidates.iter().map(|c| &**c).collect();
        prop_assert_eq!(distinct.len(), now.candidates.len(), "a candidate appears twice");
        let old = before.get(&primitive.id()).cloned().unwrap_or_default();
        prop_assert!(now.term >= old.term, "term fell from {} to {}", old.term, now.term);
        let last_note = applied.notifications.iter().rev().find(|n| n.primitive_id == primitive.id());
        match last_note {
            Some(note) => {
                prop_assert_eq!(&note.term, &now, "the last notification is the new state")
            }
            None => prop_assert_eq!(&old, &now, "a change without a notification"),
        }
    }
    Ok(())
}

fn terms(sm: &StateMachine) -> BTreeMap<u64, ElectionTerm> {
    sm.registry().iter().map(|p| (p.id(), p.election().to_term())).collect()
}

fn run_case(actions: &[Action], restore_at: usize) -> Result<(), TestCaseError> {
    let mut sm = StateMachine::new();
    let mut twin: Option<StateMachine> = None;
    let mut model = Model::default();
    let mut driver = Driver { term: 1, now_ms: 10_000, ..Driver::default() };
    for (step, action) in actions.iter().enumerate() {
        if step == restore_at % actions.len() {
            let bytes = sm.snapshot();
            let restored = StateMachine::restore(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&restored, &sm);
            prop_assert_eq!(restored.snapshot(), bytes);
            twin = Some(restored);
        }
        let command = driver.command(action, &model);
        driver.index += 1;
        let payload = command.as_ref().map_or_else(|| GARBAGE.to_vec(), |c| command::encode(c).to_vec());
        let before = terms(&sm);
        let applied = sm.apply_bytes(driver.index, driver.term, &payload);
        let expected = model.step(driver.index, driver.term, command.as_ref());
        if let Ok(Output::SessionOpened { session_id }) = applied.result {
            driver.sessions_seen.push(session_id);
        }
        prop_assert!(same_result(&applied.result, &expected.result), "{:?} vs model {:?}", applied.result, expected.result);
        prop_assert_eq!(applied.retried, expected.retried);
        prop_assert_eq!(&applied.notifications, &expected.notifications);
        check_state(&sm, &model)?;
        check_invariants(&sm, &before, &applied)?;
        if let Some(twin) = twin.as_mut() {
            let twin_applied = twin.apply_bytes(driver.index, driver.term, &payload);
            prop_assert_eq!(&twin_applied, &applied);
        }
    }
    if let Some(twin) = twin {
        prop_assert_eq!(&twin, &sm);
        prop_assert_eq!(twin.snapshot(), sm.snapshot());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_state_machine_behaves_like_the_model(
        actions in prop::collection::vec(action(), 1..60),
        restore_at in any::<usize>(),
    ) {
        run_case(&actions, restore_at)?;
    }
}
