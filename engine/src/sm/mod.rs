//! The replicated state machine of one Raft group: sessions, primitives and elections.
//!
//! Pure and deterministic: no clock, no I/O, no randomness, only ordered collections, so
//! every replica that applies the same entries holds the same state and writes the same
//! snapshot bytes. Time is what the Raft leader stamps into each [`Command`].
//!
//! How the engine and the server use it:
//! - the server builds a [`Command`] with the constructors of [`command`] (e.g.
//!   [`command::election`]), the Raft leader stamps `timestamp_ms` and proposes
//!   [`command::encode`]d bytes; a new leader first proposes [`command::leader_barrier`];
//! - every replica applies each committed entry in order with
//!   [`StateMachine::apply_bytes`]`(index, term, payload)` and gets an [`Applied`]: the
//!   proposer's result (an [`Output`] or an [`SmError`] whose [`SmError::status`] is the
//!   Atomix status) and the ordered watch [`Notification`]s of that entry;
//! - reads use [`StateMachine::query_term`], held in [`PendingQueries`] until the state
//!   has applied the client's `max_received_index`;
//! - [`StateMachine::snapshot`] / [`StateMachine::restore`] move the state between replicas.
//!
//! Sessions (`session`): ids are the index of the OpenSession entry; a session expires when
//! the clock (the largest applied timestamp) passes its last keep-alive plus its timeout, and
//! the first entry of a higher Raft term refreshes every session first, so a new leader never
//! expires sessions for the time it was not leading. An ended session's candidates leave
//! every election in one change. Sequenced commands (CreatePrimitive, ClosePrimitive,
//! election commands) run exactly once per (session, sequence number).

pub mod bloom;
pub mod command;
mod election;
mod error;
mod machine;
pub mod output;
mod query;
mod registry;
mod session;
mod snapshot;
mod snapshot_encode;

pub use command::{Command, PrimitiveRef};
pub use election::{Candidate, Election, ElectionOp, ElectionTerm};
pub use error::{
    validate_name, ErrorKind, NameField, SmError, SnapshotError, MAX_CANDIDATES, MAX_ELECTIONS, MAX_NAME_BYTES, MAX_PENDING_OUTPUTS,
    MAX_SESSIONS,
};
pub use machine::StateMachine;
pub use query::PendingQueries;
pub use registry::{Primitive, PrimitiveId, Registry};
pub use session::{CachedOutput, Session, SessionId, SessionTable};
pub use snapshot::{OLDEST_READABLE_VERSION as OLDEST_READABLE_SNAPSHOT_VERSION, SNAPSHOT_VERSION};

/// The successful result of applying one command, for its proposer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// The leader barrier was applied.
    Barrier,
    /// OpenSession: the new session's id (the entry's index).
    SessionOpened { session_id: SessionId },
    /// KeepAlive was applied.
    KeptAlive,
    /// A KeepAliveBatch was applied: every session it names was kept alive but these,
    /// which no longer exist (closed or expired).
    KeptAliveBatch { unknown_sessions: Vec<SessionId> },
    /// CloseSession was applied.
    SessionClosed,
    /// CreatePrimitive: the election's id (the same for every create of that name).
    PrimitiveCreated { primitive_id: PrimitiveId },
    /// ClosePrimitive was applied.
    PrimitiveClosed,
    /// An election command: the election's state after it.
    Term(ElectionTerm),
}

/// A change of one election, for the server's watchers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// The log index of the entry that made the change.
    pub index: u64,
    pub primitive_id: PrimitiveId,
    /// The election's name.
    pub name: std::sync::Arc<str>,
    /// The election's state after the change.
    pub term: ElectionTerm,
}

/// What applying one log entry produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The entry's log index.
    pub index: u64,
    /// The result for the proposer.
    pub result: Result<Output, SmError>,
    /// True when the command was a retry answered from the session's cache.
    pub retried: bool,
    /// Every election change of this entry, in order: first those of sessions expiring at
    /// this entry's timestamp (ascending primitive id), then the command's own.
    pub notifications: Vec<Notification>,
}
