//! Snapshot encoding of a [`StateMachine`] as a versioned `conclave.sm.v1.Snapshot`, and
//! restore with full validation (a snapshot comes from disk or a peer: bad bytes are an
//! error, never a panic). The bytes are a pure function of the state: every collection is
//! written in ascending key order, and restore demands that order, so one state has exactly
//! one encoding.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use conclave_proto::conclave::sm::v1 as pb;
use prost::Message;

use super::election::{Candidate, Election, ElectionTerm};
use super::error::{validate_name, NameField, SnapshotError};
use super::machine::StateMachine;
use super::registry::Primitive;
use super::session::{CachedOutput, Session};

/// The snapshot format this code writes. Version 2 added each session's latest driver
/// KeepAlive filter; version 1 (without) is still read.
pub const SNAPSHOT_VERSION: u32 = 2;
/// The oldest snapshot format [`StateMachine::restore`] still reads.
pub const OLDEST_READABLE_VERSION: u32 = 1;

impl StateMachine {
    /// Encodes the whole state. Equal states give equal bytes.
    pub fn snapshot(&self) -> Bytes {
        let primitives: Vec<pb::PrimitiveState> = self.registry.iter().map(encode_primitive).collect();
        Bytes::from(super::snapshot_encode::encode(self, SNAPSHOT_VERSION, &primitives))
    }

    /// Rebuilds a state machine from [`Self::snapshot`] bytes. It then behaves exactly as
    /// the one that wrote them.
    pub fn restore(bytes: &[u8]) -> Result<StateMachine, SnapshotError> {
        let snapshot = pb::Snapshot::decode(bytes).map_err(|e| SnapshotError::Decode { reason: e.to_string() })?;
        if !(OLDEST_READABLE_VERSION..=SNAPSHOT_VERSION).contains(&snapshot.version) {
            return Err(SnapshotError::UnsupportedVersion { found: snapshot.version, supported: SNAPSHOT_VERSION });
        }
        let mut machine = StateMachine {
            last_applied: snapshot.last_applied_index,
            last_term: snapshot.last_term,
            clock_ms: snapshot.clock_ms,
            ..StateMachine::default()
        };
        let mut previous_id = 0;
        for session in &snapshot.sessions {
            let session = decode_session(session, snapshot.last_applied_index)?;
            ascending(previous_id, session.id, "session")?;
            previous_id = session.id;
            machine.sessions.insert(session);
        }
        previous_id = 0;
        let mut names = BTreeSet::new();
        for primitive in &snapshot.primitives {
            let primitive = decode_primitive(primitive, &machine)?;
            ascending(previous_id, primitive.id, "primitive")?;
            previous_id = primitive.id;
            if !names.insert(primitive.name.clone()) {
                return inconsistent(format!("two primitives are named {:?}", primitive.name));
            }
            machine.registry.insert(primitive);
        }
        Ok(machine)
    }
}

fn inconsistent<T>(reason: String) -> Result<T, SnapshotError> {
    Err(SnapshotError::Inconsistent { reason })
}

fn ascending(previous: u64, id: u64, what: &str) -> Result<(), SnapshotError> {
    if id <= previous {
        return inconsistent(format!("{what} id {id} is zero or not above the previous id {previous}"));
    }
    Ok(())
}

pub(super) fn encode_primitive(primitive: &Primitive) -> pb::PrimitiveState {
    pb::PrimitiveState {
        primitive_id: primitive.id,
        name: primitive.name.to_string(),
        term: primitive.election.term(),
        candidates: primitive
            .election
            .candidates()
            .iter()
            .map(|c| pb::CandidateState { name: c.name.to_string(), session_id: c.session_id })
            .collect(),
        open_sessions: primitive.open_sessions.iter().copied().collect(),
    }
}

fn decode_session(state: &pb::SessionState, last_applied: u64) -> Result<Session, SnapshotError> {
    let id = state.session_id;
    if id > last_applied {
        return inconsistent(format!("session {id} is above the last applied index {last_applied}"));
    }
    if state.timeout_ms == 0 {
        return inconsistent(format!("session {id} has a zero timeout"));
    }
    let mut outputs = BTreeMap::new();
    let mut previous = state.released_sequence_num;
    for cached in &state.cached_outputs {
        if cached.sequence_num <= previous {
            return inconsistent(format!("session {id}: cached output {} is released or out of order", cached.sequence_num));
        }
        previous = cached.sequence_num;
        let output = decode_output(cached, id)?;
        outputs.insert(cached.sequence_num, output);
    }
    let open_inputs = match &state.open_inputs {
        Some(filter) => match super::command::decode_filter(filter) {
            Ok(filter) => Some((state.open_inputs_through, filter)),
            Err(error) => return inconsistent(format!("session {id}: keep-alive filter: {error}")),
        },
        None if state.open_inputs_through != 0 => {
            return inconsistent(format!("session {id}: keep-alive through {} without its filter", state.open_inputs_through))
        }
        None => None,
    };
    Ok(Session {
        id,
        timeout_ms: state.timeout_ms,
        last_alive_ms: state.last_alive_ms,
        released_sequence_num: state.released_sequence_num,
        outputs,
        open_inputs,
    })
}

fn decode_output(cached: &pb::CachedOutput, session_id: u64) -> Result<CachedOutput, SnapshotError> {
    use pb::cached_output::Output as Out;
    Ok(match &cached.output {
        Some(Out::PrimitiveCreated(primitive_id)) => CachedOutput::PrimitiveCreated { primitive_id: *primitive_id },
        Some(Out::PrimitiveClosed(_)) => CachedOutput::PrimitiveClosed,
        Some(Out::ElectionTerm(term)) => CachedOutput::Term(ElectionTerm {
            term: term.term,
            candidates: term.candidates.iter().map(|c| Arc::from(c.as_str())).collect(),
        }),
        Some(Out::UnknownPrimitive(primitive_id)) => CachedOutput::UnknownPrimitive { primitive_id: *primitive_id },
        Some(Out::ElectionNotFound(name)) => CachedOutput::ElectionNotFound { name: name.clone() },
        None => return inconsistent(format!("session {session_id}: cached output {} is empty", cached.sequence_num)),
    })
}

fn decode_primitive(state: &pb::PrimitiveState, machine: &StateMachine) -> Result<Primitive, SnapshotError> {
    let id = state.primitive_id;
    if id > machine.last_applied {
        return inconsistent(format!("primitive {id} is above the last applied index {}", machine.last_applied));
    }
    if let Err(error) = validate_name(NameField::Election, &state.name) {
        return inconsistent(format!("primitive {id}: {error}"));
    }
    let mut candidates = Vec::with_capacity(state.candidates.len());
    let mut candidate_names = BTreeSet::new();
    for candidate in &state.candidates {
        if let Err(error) = validate_name(NameField::Candidate, &candidate.name) {
            return inconsistent(format!("primitive {id}: {error}"));
        }
        if !candidate_names.insert(candidate.name.as_str()) {
            return inconsistent(format!("primitive {id}: candidate {:?} appears twice", candidate.name));
        }
        if !machine.sessions.contains(candidate.session_id) {
            return inconsistent(format!(
                "primitive {id}: candidate {:?} is bound to missing session {}",
                candidate.name, candidate.session_id
            ));
        }
        candidates.push(Candidate { name: Arc::from(candidate.name.as_str()), session_id: candidate.session_id });
    }
    if !candidates.is_empty() && state.term == 0 {
        return inconsistent(format!("primitive {id} has a leader but term 0"));
    }
    let mut open_sessions = BTreeSet::new();
    let mut previous = 0;
    for &session_id in &state.open_sessions {
        if session_id <= previous || !machine.sessions.contains(session_id) {
            return inconsistent(format!("primitive {id}: open session {session_id} is missing or out of order"));
        }
        previous = session_id;
        open_sessions.insert(session_id);
    }
    Ok(Primitive { id, name: Arc::from(state.name.as_str()), election: Election::from_parts(state.term, candidates), open_sessions })
}
