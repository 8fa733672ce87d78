//! Test driver for the state machine: plays the Raft leader (log index, term, timestamps)
//! in front of a real `StateMachine`, with short helpers for each command.

use conclave_engine::sm::{command, Applied, ElectionOp, ElectionTerm, Output, PrimitiveRef, StateMachine};

pub struct Leader {
    pub sm: StateMachine,
    pub index: u64,
    pub term: u64,
    pub now_ms: u64,
}

impl Leader {
    pub fn new() -> Leader {
        Leader { sm: StateMachine::new(), index: 0, term: 1, now_ms: 1_000 }
    }

    pub fn apply(&mut self, command: command::Command) -> Applied {
        self.index += 1;
        let bytes = command::encode(&command);
        let applied = self.sm.apply_bytes(self.index, self.term, &bytes);
        assert_eq!(applied.index, self.index);
        applied
    }

    pub fn open_session(&mut self, timeout_ms: u64) -> u64 {
        match self.apply(command::open_session(self.now_ms, timeout_ms)).result {
            Ok(Output::SessionOpened { session_id }) => session_id,
            other => panic!("open session: {other:?}"),
        }
    }

    pub fn create(&mut self, session_id: u64, sequence_num: u64, name: &str) -> u64 {
        match self.apply(command::create_primitive(self.now_ms, session_id, sequence_num, name)).result {
            Ok(Output::PrimitiveCreated { primitive_id }) => primitive_id,
            other => panic!("create primitive: {other:?}"),
        }
    }

    pub fn op(&mut self, session_id: u64, sequence_num: u64, primitive_id: u64, op: ElectionOp, candidate: &str) -> Applied {
        self.apply(command::election(self.now_ms, session_id, sequence_num, PrimitiveRef::Id(primitive_id), op, candidate))
    }

    /// Runs an election command that must succeed and returns the state it reports.
    pub fn term_after(&mut self, session_id: u64, sequence_num: u64, primitive_id: u64, op: ElectionOp, candidate: &str) -> ElectionTerm {
        match self.op(session_id, sequence_num, primitive_id, op, candidate).result {
            Ok(Output::Term(term)) => term,
            other => panic!("{op:?} {candidate}: {other:?}"),
        }
    }
}

/// The term an election should report (not every test file compares terms whole).
#[allow(dead_code)]
pub fn term(number: u64, candidates: &[&str]) -> ElectionTerm {
    ElectionTerm { term: number, candidates: candidates.iter().map(|c| (*c).into()).collect() }
}
