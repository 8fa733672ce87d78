//! Sessions: their timeouts, liveness and the exactly-once output cache.
//!
//! A session is alive while the state machine's clock (the largest timestamp of any applied
//! entry) has not passed `last_alive_ms + timeout_ms`. Only OpenSession and KeepAlive
//! refresh `last_alive_ms`; a new Raft term refreshes every session (see
//! [`SessionTable::refresh_all`]), and a pause barrier credits every session with the time
//! its leader was held up ([`SessionTable::credit_pause`]). Each session remembers the output of every sequenced
//! command until a KeepAlive acknowledges it, so a retry is answered without applying twice.
//!
//! Two kinds of KeepAlive release outputs:
//! - the client API's own sessions send none but `last_input_sequence_num`: every output up to
//!   it is released, and a command at or below it is refused from then on;
//! - the Atomix driver sends a Bloom filter of the commands it still has open: an output up to
//!   `last_input_sequence_num` is released only when the filter does not contain its
//!   sequence number, as the Atomix server does. A contained one stays cached (a retry gets
//!   it), and an uncached command the filter contains still runs (it was delayed). The
//!   session keeps the latest such filter, so a command that filter says the client ended is
//!   refused instead of run: the Atomix server would run it anew, breaking exactly-once for
//!   a released retry. Each election command has a single output, kept while its command is
//!   open, so the driver's `last_output_sequence_nums` has nothing further to acknowledge.

use std::collections::{BTreeMap, BTreeSet};

use super::bloom::BloomFilter;
use super::election::ElectionTerm;
use super::error::SmError;

/// A session id: the log index of the entry that opened the session.
pub type SessionId = u64;

/// The remembered result of a sequenced command (CreatePrimitive, ClosePrimitive, an
/// election command). Only results that depend on state are remembered; input that fails
/// validation is rejected before it reaches the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CachedOutput {
    PrimitiveCreated { primitive_id: u64 },
    PrimitiveClosed,
    Term(ElectionTerm),
    UnknownPrimitive { primitive_id: u64 },
    ElectionNotFound { name: String },
}

impl CachedOutput {
    /// The result the proposer sees.
    pub fn to_result(&self) -> Result<super::Output, SmError> {
        use super::Output;
        match self {
            CachedOutput::PrimitiveCreated { primitive_id } => Ok(Output::PrimitiveCreated { primitive_id: *primitive_id }),
            CachedOutput::PrimitiveClosed => Ok(Output::PrimitiveClosed),
            CachedOutput::Term(term) => Ok(Output::Term(term.clone())),
            CachedOutput::UnknownPrimitive { primitive_id } => Err(SmError::UnknownPrimitive { primitive_id: *primitive_id }),
            CachedOutput::ElectionNotFound { name } => Err(SmError::ElectionNotFound { name: name.clone() }),
        }
    }
}

/// One session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub(crate) id: SessionId,
    pub(crate) timeout_ms: u64,
    pub(crate) last_alive_ms: u64,
    /// Every sequence number at or below this was acknowledged and its output released.
    pub(crate) released_sequence_num: u64,
    pub(crate) outputs: BTreeMap<u64, CachedOutput>,
    /// The latest driver KeepAlive: its `last_input_sequence_num` and the filter of the
    /// commands the client still had open.
    pub(crate) open_inputs: Option<(u64, BloomFilter)>,
}

impl Session {
    pub fn id(&self) -> SessionId {
        self.id
    }
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }
    /// The timestamp of the last KeepAlive (or OpenSession, or new-term refresh).
    pub fn last_alive_ms(&self) -> u64 {
        self.last_alive_ms
    }
    /// The highest sequence number acknowledged by KeepAlive.
    pub fn released_sequence_num(&self) -> u64 {
        self.released_sequence_num
    }
    /// The cached outputs not yet acknowledged, by sequence number.
    pub fn cached_outputs(&self) -> &BTreeMap<u64, CachedOutput> {
        &self.outputs
    }
    /// The latest driver KeepAlive's `last_input_sequence_num` and filter of open commands.
    pub fn open_inputs(&self) -> Option<&(u64, BloomFilter)> {
        self.open_inputs.as_ref()
    }
    /// The clock value past which this session is expired.
    pub fn deadline_ms(&self) -> u64 {
        self.last_alive_ms.saturating_add(self.timeout_ms)
    }
}

/// What a sequenced command finds in its session's cache.
pub(crate) enum Sequencing<'a> {
    /// A new command: apply it, then [`SessionTable::remember`] its output.
    Fresh,
    /// A retry: answer with this output, apply nothing.
    Retry(&'a CachedOutput),
}

/// Every session of the state machine, with an index of their deadlines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionTable {
    by_id: BTreeMap<SessionId, Session>,
    /// (deadline_ms, id) of every session: a derived index, kept in step with `by_id`.
    deadlines: BTreeSet<(u64, SessionId)>,
}

impl SessionTable {
    pub fn get(&self, id: SessionId) -> Option<&Session> {
        self.by_id.get(&id)
    }

    pub fn contains(&self, id: SessionId) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Every session in ascending id order.
    pub fn iter(&self) -> impl Iterator<Item = &Session> {
        self.by_id.values()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Adds a session (open, or snapshot restore). The id must be new.
    pub(crate) fn insert(&mut self, session: Session) {
        self.deadlines.insert((session.deadline_ms(), session.id));
        let previous = self.by_id.insert(session.id, session);
        debug_assert!(previous.is_none(), "session id reused");
    }

    pub(crate) fn open(&mut self, id: SessionId, timeout_ms: u64, now_ms: u64) {
        debug_assert!(timeout_ms > 0);
        self.insert(Session {
            id,
            timeout_ms,
            last_alive_ms: now_ms,
            released_sequence_num: 0,
            outputs: BTreeMap::new(),
            open_inputs: None,
        });
    }

    /// Refreshes a session and releases outputs up to `acknowledged`: all of them without
    /// `open_inputs`, else those the filter does not contain.
    pub(crate) fn keep_alive(
        &mut self,
        id: SessionId,
        acknowledged: u64,
        open_inputs: Option<&BloomFilter>,
        now_ms: u64,
    ) -> Result<(), SmError> {
        let session = self.by_id.get_mut(&id).ok_or(SmError::UnknownSession { session_id: id })?;
        self.deadlines.remove(&(session.deadline_ms(), id));
        session.last_alive_ms = session.last_alive_ms.max(now_ms);
        match open_inputs {
            None if acknowledged > session.released_sequence_num => {
                session.released_sequence_num = acknowledged;
                session.outputs.retain(|&sequence_num, _| sequence_num > acknowledged);
            }
            None => {}
            Some(filter) => {
                session.outputs.retain(|&sequence_num, _| sequence_num > acknowledged || filter.contains_sequence(sequence_num));
                // Keep-alives may be applied out of order: the one that saw furthest stays.
                if session.open_inputs.as_ref().is_none_or(|(through, _)| acknowledged >= *through) {
                    session.open_inputs = Some((acknowledged, filter.clone()));
                }
            }
        }
        self.deadlines.insert((session.deadline_ms(), id));
        Ok(())
    }

    pub(crate) fn remove(&mut self, id: SessionId) -> Option<Session> {
        let session = self.by_id.remove(&id)?;
        self.deadlines.remove(&(session.deadline_ms(), id));
        Some(session)
    }

    /// A new Raft term began: no session may expire for the time before it, since the new
    /// leader could not receive keep-alives while it was not leading.
    pub(crate) fn refresh_all(&mut self, now_ms: u64) {
        self.deadlines.clear();
        for session in self.by_id.values_mut() {
            session.last_alive_ms = session.last_alive_ms.max(now_ms);
            self.deadlines.insert((session.deadline_ms(), session.id));
        }
    }

    /// The leader could take no keep-alives for `paused_ms`: every session's keep-alive time
    /// moves forward by that much, but not past `now_ms`.
    pub(crate) fn credit_pause(&mut self, paused_ms: u64, now_ms: u64) {
        self.deadlines.clear();
        for session in self.by_id.values_mut() {
            let credited = session.last_alive_ms.saturating_add(paused_ms).min(now_ms);
            session.last_alive_ms = session.last_alive_ms.max(credited);
            self.deadlines.insert((session.deadline_ms(), session.id));
        }
    }

    /// Removes every session whose deadline is before `now_ms` and returns their ids.
    pub(crate) fn take_expired(&mut self, now_ms: u64) -> BTreeSet<SessionId> {
        let mut expired = BTreeSet::new();
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline >= now_ms {
                break;
            }
            self.deadlines.pop_first();
            let removed = self.by_id.remove(&id);
            debug_assert!(removed.is_some(), "deadline index names a missing session");
            expired.insert(id);
        }
        expired
    }

    /// Looks a sequenced command up in its session's cache.
    pub(crate) fn sequence(&self, id: SessionId, sequence_num: u64) -> Result<Sequencing<'_>, SmError> {
        let session = self.by_id.get(&id).ok_or(SmError::UnknownSession { session_id: id })?;
        if let Some(output) = session.outputs.get(&sequence_num) {
            return Ok(Sequencing::Retry(output));
        }
        if sequence_num <= session.released_sequence_num {
            return Err(SmError::SequenceFromThePast { session_id: id, sequence_num, released_through: session.released_sequence_num });
        }
        if let Some((through, filter)) = &session.open_inputs {
            if sequence_num <= *through && !filter.contains_sequence(sequence_num) {
                return Err(SmError::SequenceEnded { session_id: id, sequence_num, keep_alive_through: *through });
            }
        }
        Ok(Sequencing::Fresh)
    }

    /// Remembers the output of a fresh sequenced command.
    pub(crate) fn remember(&mut self, id: SessionId, sequence_num: u64, output: CachedOutput) {
        let session = self.by_id.get_mut(&id);
        debug_assert!(session.is_some(), "remember for a missing session");
        if let Some(session) = session {
            session.outputs.insert(sequence_num, output);
        }
    }
}
