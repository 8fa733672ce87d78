//! Log-entry payloads: constructors for every `conclave.sm.v1.Command` the server proposes,
//! encoding and decoding, and the checked [`Operation`] the state machine executes.
//!
//! Driver API flow: OpenSession → CreatePrimitive (id back) → election commands by
//! [`PrimitiveRef::Id`] with the driver's sequence numbers → KeepAlive → CloseSession.
//! Client API flow: the server opens one session per (connection, partition), keeps it
//! alive, numbers that connection's commands itself, names elections with
//! [`PrimitiveRef::Name`] and closes the session when the connection closes.

use bytes::Bytes;
use prost::Message;

use conclave_proto::conclave::sm::v1 as pb;
pub use conclave_proto::conclave::sm::v1::Command;

use super::bloom::BloomFilter;
use super::election::ElectionOp;
use super::error::{validate_name, NameField, SmError};
use super::registry::PrimitiveId;
use super::session::SessionId;

/// How an election command names its election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrimitiveRef {
    /// By primitive id, as the driver API does.
    Id(PrimitiveId),
    /// By election name, as the client API does.
    Name(String),
}

/// The no-op a new Raft leader proposes on taking office.
pub fn leader_barrier(timestamp_ms: u64) -> Command {
    pause_barrier(timestamp_ms, 0)
}

/// The barrier a leader proposes after its shard was held up for `paused_ms`: every
/// session's keep-alive time moves forward by that much (keep-alives could not reach it).
pub fn pause_barrier(timestamp_ms: u64, paused_ms: u64) -> Command {
    with_operation(timestamp_ms, pb::command::Operation::LeaderBarrier(pb::LeaderBarrier { paused_ms }))
}

/// Opens a session that expires `timeout_ms` after its last keep-alive.
pub fn open_session(timestamp_ms: u64, timeout_ms: u64) -> Command {
    with_operation(timestamp_ms, pb::command::Operation::OpenSession(pb::OpenSession { timeout_ms }))
}

/// Keeps `session_id` alive and releases all its outputs up to `last_input_sequence_num`
/// (the client API's own sessions).
pub fn keep_alive(timestamp_ms: u64, session_id: SessionId, last_input_sequence_num: u64) -> Command {
    with_operation(
        timestamp_ms,
        pb::command::Operation::KeepAlive(pb::KeepAlive { session_id, last_input_sequence_num, open_inputs: None }),
    )
}

/// Keeps every session of `sessions` alive, each `(session_id, last_input_sequence_num)`
/// releasing its outputs as [`keep_alive`] does, in one entry. At most
/// [`MAX_KEEP_ALIVE_BATCH`] sessions: split longer lists.
pub fn keep_alive_batch(timestamp_ms: u64, sessions: &[(SessionId, u64)]) -> Command {
    let keep_alives = sessions
        .iter()
        .map(|&(session_id, last_input_sequence_num)| pb::KeepAlive { session_id, last_input_sequence_num, open_inputs: None })
        .collect();
    with_operation(timestamp_ms, pb::command::Operation::KeepAliveBatch(pb::KeepAliveBatch { keep_alives }))
}

/// The most sessions one [`keep_alive_batch`] entry may carry.
pub const MAX_KEEP_ALIVE_BATCH: usize = 4096;

/// The Atomix driver's KeepAlive: keeps `session_id` alive and releases its outputs up to
/// `last_input_sequence_num` that `open_inputs` (the commands the client still has open)
/// does not contain.
pub fn driver_keep_alive(timestamp_ms: u64, session_id: SessionId, last_input_sequence_num: u64, open_inputs: &BloomFilter) -> Command {
    let open_inputs =
        pb::BloomFilter { m: open_inputs.m(), k: open_inputs.k(), bits: open_inputs.bits(), words: open_inputs.words().to_vec() };
    with_operation(
        timestamp_ms,
        pb::command::Operation::KeepAlive(pb::KeepAlive { session_id, last_input_sequence_num, open_inputs: Some(open_inputs) }),
    )
}

/// Rebuilds a filter carried in a log entry or snapshot, checking its parts.
pub(crate) fn decode_filter(filter: &pb::BloomFilter) -> Result<BloomFilter, super::bloom::BloomError> {
    BloomFilter::from_parts(filter.m, filter.k, filter.bits, filter.words.clone())
}

/// Closes `session_id`, removing its candidates from every election.
pub fn close_session(timestamp_ms: u64, session_id: SessionId) -> Command {
    with_operation(timestamp_ms, pb::command::Operation::CloseSession(pb::CloseSession { session_id }))
}

/// Creates the election `name` if needed and opens a handle on it for the session.
pub fn create_primitive(timestamp_ms: u64, session_id: SessionId, sequence_num: u64, name: &str) -> Command {
    with_operation(
        timestamp_ms,
        pb::command::Operation::CreatePrimitive(pb::CreatePrimitive { session_id, sequence_num, name: name.to_owned() }),
    )
}

/// Releases the session's handle on `primitive_id` and withdraws its candidates there.
pub fn close_primitive(timestamp_ms: u64, session_id: SessionId, sequence_num: u64, primitive_id: PrimitiveId) -> Command {
    with_operation(timestamp_ms, pb::command::Operation::ClosePrimitive(pb::ClosePrimitive { session_id, sequence_num, primitive_id }))
}

/// An election operation `op` on `candidate` in the election `primitive`.
pub fn election(
    timestamp_ms: u64,
    session_id: SessionId,
    sequence_num: u64,
    primitive: PrimitiveRef,
    op: ElectionOp,
    candidate: &str,
) -> Command {
    let primitive = match primitive {
        PrimitiveRef::Id(id) => pb::election_command::Primitive::PrimitiveId(id),
        PrimitiveRef::Name(name) => pb::election_command::Primitive::ElectionName(name),
    };
    let op = match op {
        ElectionOp::Enter => pb::ElectionOp::Enter,
        ElectionOp::Withdraw => pb::ElectionOp::Withdraw,
        ElectionOp::Anoint => pb::ElectionOp::Anoint,
        ElectionOp::Promote => pb::ElectionOp::Promote,
        ElectionOp::Demote => pb::ElectionOp::Demote,
        ElectionOp::Evict => pb::ElectionOp::Evict,
    };
    with_operation(
        timestamp_ms,
        pb::command::Operation::Election(pb::ElectionCommand {
            session_id,
            sequence_num,
            primitive: Some(primitive),
            op: op as i32,
            candidate: candidate.to_owned(),
        }),
    )
}

fn with_operation(timestamp_ms: u64, operation: pb::command::Operation) -> Command {
    Command { timestamp_ms, operation: Some(operation) }
}

/// Encodes a command as a log-entry payload.
pub fn encode(command: &Command) -> Bytes {
    Bytes::from(command.encode_to_vec())
}

/// Decodes a log-entry payload.
pub fn decode(payload: &[u8]) -> Result<Command, SmError> {
    Command::decode(payload).map_err(|e| SmError::MalformedCommand { reason: e.to_string() })
}

/// The (session, sequence number) of a sequenced command's log payload (CreatePrimitive,
/// ClosePrimitive, an election command), or None for any other payload.
pub fn sequenced_by(payload: &[u8]) -> Option<(SessionId, u64)> {
    use pb::command::Operation as Op;
    match decode(payload).ok()?.operation? {
        Op::CreatePrimitive(c) => Some((c.session_id, c.sequence_num)),
        Op::ClosePrimitive(c) => Some((c.session_id, c.sequence_num)),
        Op::Election(e) => Some((e.session_id, e.sequence_num)),
        _ => None,
    }
}

/// A checked command, borrowing its strings from the decoded [`Command`]. A batch's
/// keep-alives are `(session_id, last_input_sequence_num, open_inputs)`, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Operation<'a> {
    LeaderBarrier { paused_ms: u64 },
    OpenSession { timeout_ms: u64 },
    KeepAlive { session_id: SessionId, last_input_sequence_num: u64, open_inputs: Option<BloomFilter> },
    KeepAliveBatch { keep_alives: Vec<(SessionId, u64, Option<BloomFilter>)> },
    CloseSession { session_id: SessionId },
    CreatePrimitive { session_id: SessionId, sequence_num: u64, name: &'a str },
    ClosePrimitive { session_id: SessionId, sequence_num: u64, primitive_id: PrimitiveId },
    Election { session_id: SessionId, sequence_num: u64, primitive: PrimitiveSelector<'a>, op: ElectionOp, candidate: &'a str },
}

/// [`PrimitiveRef`] borrowed from a decoded command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PrimitiveSelector<'a> {
    Id(PrimitiveId),
    Name(&'a str),
}

/// A keep-alive's filter of open commands, checked.
fn check_filter(keep_alive: &pb::KeepAlive) -> Result<Option<BloomFilter>, SmError> {
    match &keep_alive.open_inputs {
        Some(filter) => Ok(Some(decode_filter(filter).map_err(|e| SmError::MalformedCommand { reason: e.to_string() })?)),
        None => Ok(None),
    }
}

/// Checks the shape and names of a command; no state is consulted.
pub(crate) fn check(command: &Command) -> Result<Operation<'_>, SmError> {
    use pb::command::Operation as Op;
    let operation =
        command.operation.as_ref().ok_or_else(|| SmError::MalformedCommand { reason: "the command carries no operation".into() })?;
    Ok(match operation {
        Op::LeaderBarrier(barrier) => Operation::LeaderBarrier { paused_ms: barrier.paused_ms },
        Op::OpenSession(open) => {
            if open.timeout_ms == 0 {
                return Err(SmError::ZeroSessionTimeout);
            }
            Operation::OpenSession { timeout_ms: open.timeout_ms }
        }
        Op::KeepAlive(k) => {
            let open_inputs = check_filter(k)?;
            Operation::KeepAlive { session_id: k.session_id, last_input_sequence_num: k.last_input_sequence_num, open_inputs }
        }
        Op::KeepAliveBatch(batch) => {
            if batch.keep_alives.len() > MAX_KEEP_ALIVE_BATCH {
                return Err(SmError::MalformedCommand {
                    reason: format!("a keep-alive batch carries {} sessions, more than {MAX_KEEP_ALIVE_BATCH}", batch.keep_alives.len()),
                });
            }
            let keep_alives = batch
                .keep_alives
                .iter()
                .map(|k| Ok((k.session_id, k.last_input_sequence_num, check_filter(k)?)))
                .collect::<Result<_, SmError>>()?;
            Operation::KeepAliveBatch { keep_alives }
        }
        Op::CloseSession(c) => Operation::CloseSession { session_id: c.session_id },
        Op::CreatePrimitive(c) => {
            validate_name(NameField::Election, &c.name)?;
            Operation::CreatePrimitive { session_id: c.session_id, sequence_num: c.sequence_num, name: &c.name }
        }
        Op::ClosePrimitive(c) => {
            Operation::ClosePrimitive { session_id: c.session_id, sequence_num: c.sequence_num, primitive_id: c.primitive_id }
        }
        Op::Election(e) => {
            let primitive = match &e.primitive {
                Some(pb::election_command::Primitive::PrimitiveId(id)) => PrimitiveSelector::Id(*id),
                Some(pb::election_command::Primitive::ElectionName(name)) => {
                    validate_name(NameField::Election, name)?;
                    PrimitiveSelector::Name(name)
                }
                None => {
                    return Err(SmError::MalformedCommand { reason: "the election command names no election (neither id nor name)".into() })
                }
            };
            let op = match pb::ElectionOp::try_from(e.op) {
                Ok(pb::ElectionOp::Enter) => ElectionOp::Enter,
                Ok(pb::ElectionOp::Withdraw) => ElectionOp::Withdraw,
                Ok(pb::ElectionOp::Anoint) => ElectionOp::Anoint,
                Ok(pb::ElectionOp::Promote) => ElectionOp::Promote,
                Ok(pb::ElectionOp::Demote) => ElectionOp::Demote,
                Ok(pb::ElectionOp::Evict) => ElectionOp::Evict,
                Ok(pb::ElectionOp::Unspecified) | Err(_) => {
                    return Err(SmError::MalformedCommand { reason: format!("unknown election operation {}", e.op) })
                }
            };
            validate_name(NameField::Candidate, &e.candidate)?;
            Operation::Election { session_id: e.session_id, sequence_num: e.sequence_num, primitive, op, candidate: &e.candidate }
        }
    })
}
