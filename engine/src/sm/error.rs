//! Errors of the state machine: what went wrong when applying a command or restoring a
//! snapshot, each with a message a person can act on, and the mapping to the Atomix
//! `OperationResponseHeaders.Status` the server reports.
//!
//! | [`ErrorKind`] | `OperationResponseHeaders.Status` | gRPC code the server returns |
//! |---|---|---|
//! | `Invalid` | `INVALID` | `INVALID_ARGUMENT` |
//! | `NotFound` | `NOT_FOUND` | `NOT_FOUND` |
//! | `Internal` | `INTERNAL` | `INTERNAL` |
//! | `Exhausted` | `UNAVAILABLE` | `RESOURCE_EXHAUSTED` |

use std::fmt;

use conclave_proto::atomix::multiraft::v1::operation_response_headers::Status;

/// The longest election, primitive or candidate name accepted, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 1024;

/// Sessions one partition's state machine holds at most; OpenSession beyond is refused.
pub const MAX_SESSIONS: usize = 65_536;
/// Outputs a session holds for retries until a KeepAlive acknowledges them; a new sequenced
/// command beyond is refused (the client-API edge acknowledges with every keep-alive).
pub const MAX_PENDING_OUTPUTS: usize = 65_536;
/// Elections one partition holds at most; CreatePrimitive of a new one beyond is refused.
pub const MAX_ELECTIONS: usize = 65_536;
/// Candidates one election holds at most; Enter of a new one beyond is refused.
pub const MAX_CANDIDATES: usize = 16_384;

/// Which name of a command failed validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameField {
    /// The name of an election (a primitive), in CreatePrimitive or an election command.
    Election,
    /// The candidate name of an election command.
    Candidate,
}

impl fmt::Display for NameField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameField::Election => "election name",
            NameField::Candidate => "candidate name",
        })
    }
}

/// The class of an [`SmError`], which decides the status reported to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong (empty or oversized name, bad timeout, stale sequence
    /// number, undecodable payload): `INVALID` / gRPC `INVALID_ARGUMENT`.
    Invalid,
    /// The request names a session or primitive that does not exist (never created, closed
    /// or expired): `NOT_FOUND` / gRPC `NOT_FOUND`.
    NotFound,
    /// The engine fed the state machine an entry it had already applied; a bug of the
    /// caller, never of the client: `INTERNAL` / gRPC `INTERNAL`.
    Internal,
    /// A limit of the state machine is reached (sessions, unacknowledged outputs, elections,
    /// candidates); nothing changed, and the same request may succeed once there is room:
    /// `UNAVAILABLE` / gRPC `RESOURCE_EXHAUSTED`.
    Exhausted,
}

impl ErrorKind {
    /// The Atomix multi-raft response status for this kind.
    pub fn status(self) -> Status {
        match self {
            ErrorKind::Invalid => Status::Invalid,
            ErrorKind::NotFound => Status::NotFound,
            ErrorKind::Internal => Status::Internal,
            ErrorKind::Exhausted => Status::Unavailable,
        }
    }
}

/// Why a command was not applied. Every error leaves the sessions, the registry and the
/// elections exactly as they were (a sequenced command's error is still remembered so that
/// a retry gets the same answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmError {
    /// The payload is not a valid `conclave.sm.v1.Command`.
    MalformedCommand { reason: String },
    /// A name is empty.
    EmptyName { field: NameField },
    /// A name is longer than [`MAX_NAME_BYTES`].
    NameTooLong { field: NameField, len: usize },
    /// OpenSession with a zero timeout, which would expire the session at once.
    ZeroSessionTimeout,
    /// The session does not exist: never opened, closed, or expired.
    UnknownSession { session_id: u64 },
    /// The sequence number is at or below what the client already acknowledged with
    /// KeepAlive, so its output was released and the command cannot be answered again.
    SequenceFromThePast { session_id: u64, sequence_num: u64, released_through: u64 },
    /// The sequence number is at or below the latest driver KeepAlive's
    /// `last_input_sequence_num` and its filter of open commands does not contain it: the
    /// client had ended the command (its output, if any, was released).
    SequenceEnded { session_id: u64, sequence_num: u64, keep_alive_through: u64 },
    /// No primitive has this id.
    UnknownPrimitive { primitive_id: u64 },
    /// No election of this name was ever created.
    ElectionNotFound { name: String },
    /// The entry's index is not above the last applied index: the caller replayed an entry.
    EntryAlreadyApplied { index: u64, last_applied: u64 },
    /// The partition holds [`MAX_SESSIONS`] sessions.
    TooManySessions,
    /// The session holds [`MAX_PENDING_OUTPUTS`] outputs no KeepAlive acknowledged.
    TooManyPendingOutputs { session_id: u64 },
    /// The partition holds [`MAX_ELECTIONS`] elections.
    TooManyElections,
    /// The election holds [`MAX_CANDIDATES`] candidates.
    TooManyCandidates { name: String },
}

impl SmError {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SmError::MalformedCommand { .. }
            | SmError::EmptyName { .. }
            | SmError::NameTooLong { .. }
            | SmError::ZeroSessionTimeout
            | SmError::SequenceFromThePast { .. }
            | SmError::SequenceEnded { .. } => ErrorKind::Invalid,
            SmError::UnknownSession { .. } | SmError::UnknownPrimitive { .. } | SmError::ElectionNotFound { .. } => ErrorKind::NotFound,
            SmError::EntryAlreadyApplied { .. } => ErrorKind::Internal,
            SmError::TooManySessions
            | SmError::TooManyPendingOutputs { .. }
            | SmError::TooManyElections
            | SmError::TooManyCandidates { .. } => ErrorKind::Exhausted,
        }
    }

    /// The Atomix multi-raft response status for this error.
    pub fn status(&self) -> Status {
        self.kind().status()
    }
}

impl fmt::Display for SmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SmError::MalformedCommand { reason } => {
                write!(f, "malformed state-machine command: {reason}")
            }
            SmError::EmptyName { field } => write!(f, "the {field} must not be empty"),
            SmError::NameTooLong { field, len } => write!(
                f,
                "the {field} is {len} bytes long; the limit is {MAX_NAME_BYTES} bytes"
            ),
            SmError::ZeroSessionTimeout => {
                f.write_str("the session timeout must be greater than zero")
            }
            SmError::UnknownSession { session_id } => write!(
                f,
                "session {session_id} does not exist (never opened, closed or expired); open a new session"
            ),
            SmError::SequenceFromThePast { session_id, sequence_num, released_through } => {
                write!(
                    f,
                    "sequence number {sequence_num} of session {session_id} is from the past: \
                     outputs up to {released_through} were acknowledged and released; use a \
                     sequence number above {released_through}"
                )
            }
            SmError::SequenceEnded { session_id, sequence_num, keep_alive_through } => write!(
                f,
                "sequence number {sequence_num} of session {session_id} was released: the KeepAlive through \
                 {keep_alive_through} did not list it among the open commands; send a new command with a new sequence number"
            ),
            SmError::UnknownPrimitive { primitive_id } => write!(
                f,
                "primitive {primitive_id} does not exist; create it with CreatePrimitive first"
            ),
            SmError::ElectionNotFound { name } => write!(
                f,
                "election {name:?} was never created; create it first"
            ),
            SmError::EntryAlreadyApplied { index, last_applied } => write!(
                f,
                "log entry {index} is not above the last applied index {last_applied}"
            ),
            SmError::TooManySessions => write!(
                f,
                "this partition already holds {MAX_SESSIONS} sessions; close sessions you no longer use, or retry once some have expired"
            ),
            SmError::TooManyPendingOutputs { session_id } => write!(
                f,
                "session {session_id} holds {MAX_PENDING_OUTPUTS} outputs no KeepAlive acknowledged; acknowledge them with a KeepAlive, then retry"
            ),
            SmError::TooManyElections => write!(
                f,
                "this partition already holds {MAX_ELECTIONS} elections; use fewer election names"
            ),
            SmError::TooManyCandidates { name } => write!(
                f,
                "election {name:?} already has {MAX_CANDIDATES} candidates; withdraw some before entering new ones"
            ),
        }
    }
}

impl std::error::Error for SmError {}

/// Why a snapshot could not be restored. The state machine is never partly restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotError {
    /// The bytes are not a `conclave.sm.v1.Snapshot`.
    Decode { reason: String },
    /// The snapshot was written by a version this code does not read.
    UnsupportedVersion { found: u32, supported: u32 },
    /// The snapshot decodes but breaks an invariant of the state (duplicate ids, a
    /// candidate bound to a missing session, ...).
    Inconsistent { reason: String },
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Decode { reason } => {
                write!(f, "state-machine snapshot does not decode: {reason}")
            }
            SnapshotError::UnsupportedVersion { found, supported } => {
                write!(f, "state-machine snapshot version {found} is not supported (this build reads version {supported})")
            }
            SnapshotError::Inconsistent { reason } => {
                write!(f, "state-machine snapshot is inconsistent: {reason}")
            }
        }
    }
}

impl std::error::Error for SnapshotError {}

/// Checks a name: not empty and at most [`MAX_NAME_BYTES`] bytes.
pub fn validate_name(field: NameField, name: &str) -> Result<(), SmError> {
    if name.is_empty() {
        return Err(SmError::EmptyName { field });
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(SmError::NameTooLong { field, len: name.len() });
    }
    Ok(())
}
