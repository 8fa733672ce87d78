//! [`StateMachine`]: applies log entries to the sessions, the registry and the elections,
//! and answers queries.

use std::collections::BTreeSet;

use super::command::{self, Command, Operation, PrimitiveRef, PrimitiveSelector};
use super::election::{ElectionOp, ElectionTerm};
use super::error::{validate_name, NameField, SmError, MAX_CANDIDATES, MAX_ELECTIONS, MAX_PENDING_OUTPUTS, MAX_SESSIONS};
use super::registry::{Primitive, PrimitiveId, Registry};
use super::session::{CachedOutput, Sequencing, SessionId, SessionTable};
use super::{Applied, Notification, Output};

/// The state machine of one Raft group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMachine {
    pub(crate) last_applied: u64,
    pub(crate) last_term: u64,
    /// The largest timestamp of any applied entry.
    pub(crate) clock_ms: u64,
    pub(crate) sessions: SessionTable,
    pub(crate) registry: Registry,
}

impl StateMachine {
    /// An empty state machine (nothing applied).
    pub fn new() -> StateMachine {
        StateMachine::default()
    }

    /// The index of the last applied entry (0 before any).
    pub fn last_applied(&self) -> u64 {
        self.last_applied
    }

    /// Records that the log entry at `index` was applied although it carries no command
    /// (a membership change), so reads waiting for that index are released. Lower
    /// indexes are ignored.
    pub fn skip(&mut self, index: u64) {
        self.last_applied = self.last_applied.max(index);
    }

    /// The highest Raft term of any applied entry.
    pub fn last_term(&self) -> u64 {
        self.last_term
    }

    /// The state machine's clock: the largest timestamp of any applied entry.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Applies the entry at `index` of Raft term `term` whose payload is `payload`. A
    /// payload that does not decode still consumes the index (its result is
    /// [`SmError::MalformedCommand`]), so every replica stays in step.
    pub fn apply_bytes(&mut self, index: u64, term: u64, payload: &[u8]) -> Applied {
        match command::decode(payload) {
            Ok(decoded) => self.apply(index, term, &decoded),
            Err(error) => self.apply_checked(index, term, 0, Err(error)),
        }
    }

    /// Applies the entry at `index` of Raft term `term` carrying `command`.
    ///
    /// Order of effects: the clock advances to `max(clock, timestamp)`; if `term` is above
    /// every term applied so far, every session is refreshed to the clock; a pause barrier
    /// moves every session's keep-alive time forward by its pause; sessions whose
    /// deadline the clock has passed expire (their candidates leave in one change per
    /// election); then the command runs. An index at or below [`Self::last_applied`]
    /// changes nothing and yields [`SmError::EntryAlreadyApplied`].
    pub fn apply(&mut self, index: u64, term: u64, command: &Command) -> Applied {
        self.apply_checked(index, term, command.timestamp_ms, command::check(command))
    }

    fn apply_checked(&mut self, index: u64, term: u64, timestamp_ms: u64, operation: Result<Operation<'_>, SmError>) -> Applied {
        if index <= self.last_applied {
            return Applied {
                index,
                result: Err(SmError::EntryAlreadyApplied { index, last_applied: self.last_applied }),
                retried: false,
                notifications: Vec::new(),
            };
        }
        self.last_applied = index;
        self.clock_ms = self.clock_ms.max(timestamp_ms);
        let now_ms = self.clock_ms;
        if term > self.last_term {
            self.last_term = term;
            self.sessions.refresh_all(now_ms);
        }
        if let Ok(Operation::LeaderBarrier { paused_ms }) = &operation {
            if *paused_ms > 0 {
                self.sessions.credit_pause(*paused_ms, now_ms);
            }
        }
        let mut notifications = Vec::new();
        let expired = self.sessions.take_expired(now_ms);
        if !expired.is_empty() {
            self.end_sessions(&expired, index, &mut notifications);
        }
        let (result, retried) = match operation {
            Ok(operation) => self.execute(index, now_ms, operation, &mut notifications),
            Err(error) => (Err(error), false),
        };
        Applied { index, result, retried, notifications }
    }

    fn execute(
        &mut self,
        index: u64,
        now_ms: u64,
        operation: Operation<'_>,
        notifications: &mut Vec<Notification>,
    ) -> (Result<Output, SmError>, bool) {
        match operation {
            Operation::LeaderBarrier { .. } => (Ok(Output::Barrier), false),
            Operation::OpenSession { .. } if self.sessions.len() >= MAX_SESSIONS => (Err(SmError::TooManySessions), false),
            Operation::OpenSession { timeout_ms } => {
                self.sessions.open(index, timeout_ms, now_ms);
                (Ok(Output::SessionOpened { session_id: index }), false)
            }
            Operation::KeepAlive { session_id, last_input_sequence_num, open_inputs } => {
                let result = self.sessions.keep_alive(session_id, last_input_sequence_num, open_inputs.as_ref(), now_ms);
                (result.map(|()| Output::KeptAlive), false)
            }
            Operation::KeepAliveBatch { keep_alives } => {
                let unknown_sessions = keep_alives
                    .iter()
                    .filter_map(|(session_id, acknowledged, open_inputs)| {
                        self.sessions.keep_alive(*session_id, *acknowledged, open_inputs.as_ref(), now_ms).err().map(|_| *session_id)
                    })
                    .collect();
                (Ok(Output::KeptAliveBatch { unknown_sessions }), false)
            }
            Operation::CloseSession { session_id } => match self.sessions.remove(session_id) {
                Some(_) => {
                    self.end_sessions(&BTreeSet::from([session_id]), index, notifications);
                    (Ok(Output::SessionClosed), false)
                }
                None => (Err(SmError::UnknownSession { session_id }), false),
            },
            Operation::CreatePrimitive { session_id, sequence_num, name } => self.sequenced(
                session_id,
                sequence_num,
                |sm| match sm.registry.id_of(name) {
                    None if sm.registry.len() >= MAX_ELECTIONS => Err(SmError::TooManyElections),
                    _ => Ok(()),
                },
                |sm| {
                    let primitive_id = sm.registry.create(name, index, session_id);
                    CachedOutput::PrimitiveCreated { primitive_id }
                },
            ),
            Operation::ClosePrimitive { session_id, sequence_num, primitive_id } => self.sequenced(
                session_id,
                sequence_num,
                |_| Ok(()),
                |sm| {
                    let Some(primitive) = sm.registry.get_mut(primitive_id) else {
                        return CachedOutput::UnknownPrimitive { primitive_id };
                    };
                    primitive.open_sessions.remove(&session_id);
                    if primitive.election.remove_sessions(|s| s == session_id) {
                        notifications.push(notification(index, primitive));
                    }
                    CachedOutput::PrimitiveClosed
                },
            ),
            Operation::Election { session_id, sequence_num, primitive, op, candidate } => self.sequenced(
                session_id,
                sequence_num,
                |sm| sm.admit_candidate(primitive, op, candidate),
                |sm| sm.run_election(index, session_id, primitive, op, candidate, notifications),
            ),
        }
    }

    fn run_election(
        &mut self,
        index: u64,
        session_id: SessionId,
        selector: PrimitiveSelector<'_>,
        op: ElectionOp,
        candidate: &str,
        notifications: &mut Vec<Notification>,
    ) -> CachedOutput {
        let primitive_id = match self.resolve(selector) {
            Ok(id) => id,
            Err(missing) => return missing,
        };
        let Some(primitive) = self.registry.get_mut(primitive_id) else {
            return CachedOutput::UnknownPrimitive { primitive_id };
        };
        let changed = primitive.election.apply(op, candidate, session_id);
        let term = primitive.election.to_term();
        if changed {
            notifications.push(Notification { index, primitive_id, name: primitive.name.clone(), term: term.clone() });
        }
        CachedOutput::Term(term)
    }

    /// The id a selector names, or the "missing" output.
    fn resolve(&self, selector: PrimitiveSelector<'_>) -> Result<PrimitiveId, CachedOutput> {
        match selector {
            PrimitiveSelector::Id(primitive_id) => Ok(primitive_id),
            PrimitiveSelector::Name(name) => {
                self.registry.id_of(name).ok_or_else(|| CachedOutput::ElectionNotFound { name: name.to_owned() })
            }
        }
    }

    /// Refuses an Enter of a new candidate into an election that is full.
    fn admit_candidate(&self, selector: PrimitiveSelector<'_>, op: ElectionOp, candidate: &str) -> Result<(), SmError> {
        if op != ElectionOp::Enter {
            return Ok(());
        }
        let Some(primitive) = self.resolve(selector).ok().and_then(|id| self.registry.get(id)) else {
            return Ok(());
        };
        if primitive.election.len() >= MAX_CANDIDATES && !primitive.election.has_candidate(candidate) {
            return Err(SmError::TooManyCandidates { name: primitive.name.to_string() });
        }
        Ok(())
    }

    /// Runs a sequenced command exactly once: a retry gets the cached output back. A fresh
    /// command must first be admitted (room for its output in the session, and `admit`'s
    /// limit): a refusal changes nothing and is not remembered, so the same command may
    /// succeed once there is room.
    fn sequenced(
        &mut self,
        session_id: SessionId,
        sequence_num: u64,
        admit: impl FnOnce(&StateMachine) -> Result<(), SmError>,
        run: impl FnOnce(&mut StateMachine) -> CachedOutput,
    ) -> (Result<Output, SmError>, bool) {
        match self.sessions.sequence(session_id, sequence_num) {
            Err(error) => (Err(error), false),
            Ok(Sequencing::Retry(output)) => (output.to_result(), true),
            Ok(Sequencing::Fresh) => {
                let full = self.sessions.get(session_id).is_some_and(|s| s.cached_outputs().len() >= MAX_PENDING_OUTPUTS);
                if full {
                    return (Err(SmError::TooManyPendingOutputs { session_id }), false);
                }
                if let Err(error) = admit(self) {
                    return (Err(error), false);
                }
                let output = run(self);
                let result = output.to_result();
                self.sessions.remember(session_id, sequence_num, output);
                (result, false)
            }
        }
    }

    /// Removes every trace of the ended (already removed) sessions from the registry:
    /// handles, and candidates in one change per election.
    fn end_sessions(&mut self, ended: &BTreeSet<SessionId>, index: u64, notifications: &mut Vec<Notification>) {
        for primitive in self.registry.iter_mut() {
            primitive.open_sessions.retain(|s| !ended.contains(s));
            if primitive.election.remove_sessions(|s| ended.contains(&s)) {
                notifications.push(notification(index, primitive));
            }
        }
    }

    /// The current state of an election (GetTerm, and the first message of Watch). With
    /// `session_id`, the session must exist (driver API queries carry one). Linearizable
    /// when called once [`Self::last_applied`] covers the read index; see
    /// [`super::PendingQueries`].
    pub fn query_term(&self, session_id: Option<SessionId>, primitive: &PrimitiveRef) -> Result<ElectionTerm, SmError> {
        if let Some(session_id) = session_id {
            if !self.sessions.contains(session_id) {
                return Err(SmError::UnknownSession { session_id });
            }
        }
        let primitive = match primitive {
            PrimitiveRef::Id(id) => self.registry.get(*id).ok_or(SmError::UnknownPrimitive { primitive_id: *id })?,
            PrimitiveRef::Name(name) => {
                validate_name(NameField::Election, name)?;
                self.registry
                    .id_of(name)
                    .and_then(|id| self.registry.get(id))
                    .ok_or_else(|| SmError::ElectionNotFound { name: name.clone() })?
            }
        };
        Ok(primitive.election.to_term())
    }
}

fn notification(index: u64, primitive: &Primitive) -> Notification {
    Notification { index, primitive_id: primitive.id, name: primitive.name.clone(), term: primitive.election.to_term() }
}
