//! The reference model of the state machine: a direct transcription of api.md §4 (each
//! election rule with its own explicit term increment) and of the session rules (expiry by
//! the largest timestamp, refresh on a new Raft term, exactly-once outputs released by
//! KeepAlive), kept as plain vectors and maps so that it is obviously correct.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use conclave_engine::sm::{ElectionOp, ElectionTerm, Notification, Output, SmError};
use conclave_proto::conclave::sm::v1 as pb;

#[derive(Clone, Debug)]
pub struct ModelSession {
    pub timeout_ms: u64,
    pub last_alive_ms: u64,
    pub released: u64,
    pub outputs: BTreeMap<u64, Result<Output, SmError>>,
}

#[derive(Clone, Debug)]
pub struct ModelElection {
    pub name: String,
    pub term: u64,
    /// (candidate, session), leader first.
    pub candidates: Vec<(String, u64)>,
    pub open: BTreeSet<u64>,
}

impl ModelElection {
    pub fn visible(&self) -> ElectionTerm {
        ElectionTerm { term: self.term, candidates: self.candidates.iter().map(|c| Arc::from(c.0.as_str())).collect() }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.candidates.iter().position(|c| c.0 == name)
    }

    /// api.md §4, rule by rule. Returns whether anything changed.
    fn run(&mut self, op: ElectionOp, name: &str, session: u64) -> bool {
        let at = self.position(name);
        match (op, at) {
            (ElectionOp::Enter, None) => {
                if self.candidates.is_empty() {
                    self.term += 1;
                }
                self.candidates.push((name.to_owned(), session));
                true
            }
            (ElectionOp::Withdraw, Some(p)) if self.candidates[p].1 == session => self.remove_at(p),
            (ElectionOp::Evict, Some(p)) => self.remove_at(p),
            (ElectionOp::Anoint, Some(p)) if p > 0 => {
                let c = self.candidates.remove(p);
                self.candidates.insert(0, c);
                self.term += 1;
                true
            }
            (ElectionOp::Promote, Some(p)) if p > 0 => {
                self.candidates.swap(p - 1, p);
                if p == 1 {
                    self.term += 1;
                }
                true
            }
            (ElectionOp::Demote, Some(p)) if p + 1 < self.candidates.len() => {
                self.candidates.swap(p, p + 1);
                if p == 0 {
                    self.term += 1;
                }
                true
            }
            _ => false,
        }
    }

    fn remove_at(&mut self, p: usize) -> bool {
        self.candidates.remove(p);
        if p == 0 && !self.candidates.is_empty() {
            self.term += 1;
        }
        true
    }

    fn remove_sessions(&mut self, ended: &BTreeSet<u64>) -> bool {
        let leader_leaves = self.candidates.first().is_some_and(|c| ended.contains(&c.1));
        let before = self.candidates.len();
        self.candidates.retain(|c| !ended.contains(&c.1));
        if leader_leaves && !self.candidates.is_empty() {
            self.term += 1;
        }
        self.candidates.len() != before
    }
}

#[derive(Clone, Debug, Default)]
pub struct Model {
    pub last_term: u64,
    pub clock_ms: u64,
    pub sessions: BTreeMap<u64, ModelSession>,
    pub elections: BTreeMap<u64, ModelElection>,
}

pub struct Expected {
    pub result: Result<Output, SmError>,
    pub retried: bool,
    pub notifications: Vec<Notification>,
}

impl Model {
    pub fn id_of(&self, name: &str) -> Option<u64> {
        self.elections.iter().find(|(_, e)| e.name == name).map(|(&id, _)| id)
    }

    fn notify(&self, index: u64, id: u64, out: &mut Vec<Notification>) {
        let e = &self.elections[&id];
        out.push(Notification { index, primitive_id: id, name: Arc::from(e.name.as_str()), term: e.visible() });
    }

    fn end_sessions(&mut self, ended: &BTreeSet<u64>, index: u64, out: &mut Vec<Notification>) {
        let ids: Vec<u64> = self.elections.keys().copied().collect();
        for id in ids {
            let e = self.elections.get_mut(&id).unwrap();
            e.open.retain(|s| !ended.contains(s));
            if e.remove_sessions(ended) {
                self.notify(index, id, out);
            }
        }
    }

    /// `command` is None for a payload that does not decode.
    pub fn step(&mut self, index: u64, term: u64, command: Option<&pb::Command>) -> Expected {
        self.clock_ms = self.clock_ms.max(command.map_or(0, |c| c.timestamp_ms));
        if term > self.last_term {
            self.last_term = term;
            for s in self.sessions.values_mut() {
                s.last_alive_ms = self.clock_ms;
            }
        }
        let clock = self.clock_ms;
        let expired: BTreeSet<u64> =
            self.sessions.iter().filter(|(_, s)| clock > s.last_alive_ms.saturating_add(s.timeout_ms)).map(|(&id, _)| id).collect();
        let mut notes = Vec::new();
        for id in &expired {
            self.sessions.remove(id);
        }
        self.end_sessions(&expired, index, &mut notes);
        let (result, retried) = match command.and_then(|c| c.operation.as_ref()) {
            None => (Err(SmError::MalformedCommand { reason: String::new() }), false),
            Some(op) => self.run(index, op, &mut notes),
        };
        Expected { result, retried, notifications: notes }
    }

    /// Refreshes a client-API session and releases its outputs; false if it is unknown.
    fn keep_alive(&mut self, k: &pb::KeepAlive, clock: u64) -> bool {
        let Some(s) = self.sessions.get_mut(&k.session_id) else {
            return false;
        };
        s.last_alive_ms = clock;
        if k.last_input_sequence_num > s.released {
            s.released = k.last_input_sequence_num;
            s.outputs.retain(|&seq, _| seq > k.last_input_sequence_num);
        }
        true
    }

    fn run(&mut self, index: u64, op: &pb::command::Operation, notes: &mut Vec<Notification>) -> (Result<Output, SmError>, bool) {
        use pb::command::Operation as Op;
        let clock = self.clock_ms;
        match op {
            Op::LeaderBarrier(_) => (Ok(Output::Barrier), false),
            Op::OpenSession(o) => {
                let s = ModelSession { timeout_ms: o.timeout_ms, last_alive_ms: clock, released: 0, outputs: BTreeMap::new() };
                self.sessions.insert(index, s);
                (Ok(Output::SessionOpened { session_id: index }), false)
            }
            Op::KeepAlive(k) => match self.keep_alive(k, clock) {
                false => (Err(SmError::UnknownSession { session_id: k.session_id }), false),
                true => (Ok(Output::KeptAlive), false),
            },
            Op::KeepAliveBatch(batch) => {
                let unknown_sessions = batch.keep_alives.iter().filter(|k| !self.keep_alive(k, clock)).map(|k| k.session_id).collect();
                (Ok(Output::KeptAliveBatch { unknown_sessions }), false)
            }
            Op::CloseSession(c) => {
                if self.sessions.remove(&c.session_id).is_none() {
                    return (Err(SmError::UnknownSession { session_id: c.session_id }), false);
                }
                self.end_sessions(&BTreeSet::from([c.session_id]), index, notes);
                (Ok(Output::SessionClosed), false)
            }
            Op::CreatePrimitive(c) => self.sequenced(c.session_id, c.sequence_num, |m| {
                let id = m.id_of(&c.name).unwrap_or(index);
                let e = m.elections.entry(id).or_insert_with(|| ModelElection {
                    name: c.name.clone(),
                    term: 0,
                    candidates: Vec::new(),
                    open: BTreeSet::new(),
                });
                e.open.insert(c.session_id);
                Ok(Output::PrimitiveCreated { primitive_id: id })
            }),
            Op::ClosePrimitive(c) => self.sequenced(c.session_id, c.sequence_num, |m| {
                let Some(e) = m.elections.get_mut(&c.primitive_id) else {
                    return Err(SmError::UnknownPrimitive { primitive_id: c.primitive_id });
                };
                e.open.remove(&c.session_id);
                if e.remove_sessions(&BTreeSet::from([c.session_id])) {
                    m.notify(index, c.primitive_id, notes);
                }
                Ok(Output::PrimitiveClosed)
            }),
            Op::Election(e) => self.sequenced(e.session_id, e.sequence_num, |m| {
                let id = match e.primitive.as_ref().unwrap() {
                    pb::election_command::Primitive::PrimitiveId(id) if m.elections.contains_key(id) => *id,
                    pb::election_command::Primitive::PrimitiveId(id) => return Err(SmError::UnknownPrimitive { primitive_id: *id }),
                    pb::election_command::Primitive::ElectionName(name) => match m.id_of(name) {
                        Some(id) => id,
                        None => return Err(SmError::ElectionNotFound { name: name.clone() }),
                    },
                };
                let op = op_of(e.op);
                let election = m.elections.get_mut(&id).unwrap();
                if election.run(op, &e.candidate, e.session_id) {
                    m.notify(index, id, notes);
                }
                Ok(Output::Term(m.elections[&id].visible()))
            }),
        }
    }

    fn sequenced(
        &mut self,
        session_id: u64,
        seq: u64,
        run: impl FnOnce(&mut Model) -> Result<Output, SmError>,
    ) -> (Result<Output, SmError>, bool) {
        let Some(s) = self.sessions.get(&session_id) else {
            return (Err(SmError::UnknownSession { session_id }), false);
        };
        if let Some(out) = s.outputs.get(&seq) {
            return (out.clone(), true);
        }
        if seq <= s.released {
            let error = SmError::SequenceFromThePast { session_id, sequence_num: seq, released_through: s.released };
            return (Err(error), false);
        }
        let out = run(self);
        self.sessions.get_mut(&session_id).unwrap().outputs.insert(seq, out.clone());
        (out, false)
    }
}

pub fn op_of(raw: i32) -> ElectionOp {
    match pb::ElectionOp::try_from(raw).unwrap() {
        pb::ElectionOp::Enter => ElectionOp::Enter,
        pb::ElectionOp::Withdraw => ElectionOp::Withdraw,
        pb::ElectionOp::Anoint => ElectionOp::Anoint,
        pb::ElectionOp::Promote => ElectionOp::Promote,
        pb::ElectionOp::Demote => ElectionOp::Demote,
        pb::ElectionOp::Evict => ElectionOp::Evict,
        pb::ElectionOp::Unspecified => unreachable!("the test never sends it"),
    }
}
