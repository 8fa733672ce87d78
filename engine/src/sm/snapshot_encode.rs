//! Writes a state machine's snapshot (`conclave.sm.v1.Snapshot`) straight from its state.
//! Building the generated protobuf structs first copies every cached output's term, one
//! `String` per candidate name, only to encode and drop them: with 256 sessions of 32-name
//! terms per group, snapshots took 9% of `engine-bench`'s CPU that way, and writing them
//! directly gave it 3% more commands per second (tuning.md, "The engine alone"). The bytes
//! are exactly those the generated encoder gives for the same state (a unit test below
//! checks it against that encoder), so restore decodes them with the generated types, and
//! equal states still give equal bytes.
//!
//! Field order and presence follow proto3 as prost writes it: fields in number order, a
//! scalar at its default omitted, every element of a repeated field written, a `oneof`
//! member and a set message field always written.

use bytes::BufMut;
use conclave_proto::conclave::sm::v1 as pb;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, message, WireType};

use super::election::ElectionTerm;
use super::machine::StateMachine;
use super::session::{CachedOutput, Session};

/// `Snapshot` fields.
const VERSION: u32 = 1;
const LAST_APPLIED_INDEX: u32 = 2;
const LAST_TERM: u32 = 3;
const CLOCK_MS: u32 = 4;
const SESSIONS: u32 = 5;
const PRIMITIVES: u32 = 6;

/// Encodes the whole state as snapshot format `version`.
pub(super) fn encode(sm: &StateMachine, version: u32, primitives: &[pb::PrimitiveState]) -> Vec<u8> {
    let header = varint_len(VERSION, u64::from(version))
        + varint_len(LAST_APPLIED_INDEX, sm.last_applied)
        + varint_len(LAST_TERM, sm.last_term)
        + varint_len(CLOCK_MS, sm.clock_ms);
    // Each session's keep-alive filter as its message, and each session's size.
    let filters: Vec<Option<pb::BloomFilter>> = sm.sessions.iter().map(open_inputs).collect();
    let lens: Vec<usize> = sm.sessions.iter().zip(&filters).map(|(s, f)| session_len(s, f.as_ref())).collect();
    let sessions: usize = lens.iter().map(|&len| delimited_len(SESSIONS, len)).sum();
    let mut buf = Vec::with_capacity(header + sessions + message::encoded_len_repeated(PRIMITIVES, primitives));
    put_varint(VERSION, u64::from(version), &mut buf);
    put_varint(LAST_APPLIED_INDEX, sm.last_applied, &mut buf);
    put_varint(LAST_TERM, sm.last_term, &mut buf);
    put_varint(CLOCK_MS, sm.clock_ms, &mut buf);
    for ((session, filter), len) in sm.sessions.iter().zip(&filters).zip(lens) {
        put_delimited(SESSIONS, len, &mut buf);
        put_session(session, filter.as_ref(), &mut buf);
    }
    message::encode_repeated(PRIMITIVES, primitives, &mut buf);
    buf
}

/// A scalar field's size: nothing at its default (0).
fn varint_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(value)
    }
}

fn put_varint(tag: u32, value: u64, buf: &mut impl BufMut) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

/// A varint field that is always written (a `oneof` member).
fn present_varint_len(tag: u32, value: u64) -> usize {
    key_len(tag) + encoded_len_varint(value)
}

fn put_present_varint(tag: u32, value: u64, buf: &mut impl BufMut) {
    encode_key(tag, WireType::Varint, buf);
    encode_varint(value, buf);
}

/// A length-delimited field's size with a body of `len` bytes.
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A length-delimited field's key and length; its body follows.
fn put_delimited(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

// `SessionState` fields.
const SESSION_ID: u32 = 1;
const TIMEOUT_MS: u32 = 2;
const LAST_ALIVE_MS: u32 = 3;
const RELEASED_SEQUENCE_NUM: u32 = 4;
const CACHED_OUTPUTS: u32 = 5;
const OPEN_INPUTS_THROUGH: u32 = 6;
const OPEN_INPUTS: u32 = 7;

/// The keep-alive filter as its message (small: one per session).
fn open_inputs(session: &Session) -> Option<pb::BloomFilter> {
    session.open_inputs.as_ref().map(|(_, filter)| pb::BloomFilter {
        m: filter.m(),
        k: filter.k(),
        bits: filter.bits(),
        words: filter.words().to_vec(),
    })
}

fn session_len(session: &Session, open_inputs: Option<&pb::BloomFilter>) -> usize {
    varint_len(SESSION_ID, session.id)
        + varint_len(TIMEOUT_MS, session.timeout_ms)
        + varint_len(LAST_ALIVE_MS, session.last_alive_ms)
        + varint_len(RELEASED_SEQUENCE_NUM, session.released_sequence_num)
        + session.outputs.iter().map(|(&seq, output)| delimited_len(CACHED_OUTPUTS, output_len(seq, output))).sum::<usize>()
        + varint_len(OPEN_INPUTS_THROUGH, session.open_inputs.as_ref().map_or(0, |(through, _)| *through))
        + open_inputs.map_or(0, |filter| message::encoded_len(OPEN_INPUTS, filter))
}

fn put_session(session: &Session, open_inputs: Option<&pb::BloomFilter>, buf: &mut impl BufMut) {
    put_varint(SESSION_ID, session.id, buf);
    put_varint(TIMEOUT_MS, session.timeout_ms, buf);
    put_varint(LAST_ALIVE_MS, session.last_alive_ms, buf);
    put_varint(RELEASED_SEQUENCE_NUM, session.released_sequence_num, buf);
    for (&seq, output) in &session.outputs {
        put_delimited(CACHED_OUTPUTS, output_len(seq, output), buf);
        put_output(seq, output, buf);
    }
    put_varint(OPEN_INPUTS_THROUGH, session.open_inputs.as_ref().map_or(0, |(through, _)| *through), buf);
    if let Some(filter) = open_inputs {
        message::encode(OPEN_INPUTS, filter, buf);
    }
}

// `CachedOutput` fields (2 to 6 are the `output` oneof).
const SEQUENCE_NUM: u32 = 1;
const PRIMITIVE_CREATED: u32 = 2;
const PRIMITIVE_CLOSED: u32 = 3;
const ELECTION_TERM: u32 = 4;
const UNKNOWN_PRIMITIVE: u32 = 5;
const ELECTION_NOT_FOUND: u32 = 6;

fn output_len(seq: u64, output: &CachedOutput) -> usize {
    varint_len(SEQUENCE_NUM, seq)
        + match output {
            CachedOutput::PrimitiveCreated { primitive_id } => present_varint_len(PRIMITIVE_CREATED, *primitive_id),
            CachedOutput::PrimitiveClosed => delimited_len(PRIMITIVE_CLOSED, 0),
            CachedOutput::Term(term) => delimited_len(ELECTION_TERM, term_len(term)),
            CachedOutput::UnknownPrimitive { primitive_id } => present_varint_len(UNKNOWN_PRIMITIVE, *primitive_id),
            CachedOutput::ElectionNotFound { name } => delimited_len(ELECTION_NOT_FOUND, name.len()),
        }
}

fn put_output(seq: u64, output: &CachedOutput, buf: &mut impl BufMut) {
    put_varint(SEQUENCE_NUM, seq, buf);
    match output {
        CachedOutput::PrimitiveCreated { primitive_id } => put_present_varint(PRIMITIVE_CREATED, *primitive_id, buf),
        CachedOutput::PrimitiveClosed => put_delimited(PRIMITIVE_CLOSED, 0, buf),
        CachedOutput::Term(term) => {
            put_delimited(ELECTION_TERM, term_len(term), buf);
            put_term(term, buf);
        }
        CachedOutput::UnknownPrimitive { primitive_id } => put_present_varint(UNKNOWN_PRIMITIVE, *primitive_id, buf),
        CachedOutput::ElectionNotFound { name } => {
            put_delimited(ELECTION_NOT_FOUND, name.len(), buf);
            buf.put_slice(name.as_bytes());
        }
    }
}

// `ElectionTerm` fields.
const TERM: u32 = 1;
const CANDIDATES: u32 = 2;

fn term_len(term: &ElectionTerm) -> usize {
    varint_len(TERM, term.term) + term.candidates.iter().map(|name| delimited_len(CANDIDATES, name.len())).sum::<usize>()
}

fn put_term(term: &ElectionTerm, buf: &mut impl BufMut) {
    put_varint(TERM, term.term, buf);
    for name in term.candidates.iter() {
        put_delimited(CANDIDATES, name.len(), buf);
        buf.put_slice(name.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::sm::{command, ElectionOp, PrimitiveRef};

    /// The snapshot as the generated encoder writes it: the structs built in full.
    fn generated(sm: &StateMachine, primitives: &[pb::PrimitiveState]) -> Vec<u8> {
        let term = |t: &ElectionTerm| pb::ElectionTerm { term: t.term, candidates: t.candidates.iter().map(|c| c.to_string()).collect() };
        let output = |output: &CachedOutput| {
            use pb::cached_output::Output as Out;
            match output {
                CachedOutput::PrimitiveCreated { primitive_id } => Out::PrimitiveCreated(*primitive_id),
                CachedOutput::PrimitiveClosed => Out::PrimitiveClosed(pb::PrimitiveClosed {}),
                CachedOutput::Term(t) => Out::ElectionTerm(term(t)),
                CachedOutput::UnknownPrimitive { primitive_id } => Out::UnknownPrimitive(*primitive_id),
                CachedOutput::ElectionNotFound { name } => Out::ElectionNotFound(name.clone()),
            }
        };
        let session = |s: &Session| pb::SessionState {
            session_id: s.id,
            timeout_ms: s.timeout_ms,
            last_alive_ms: s.last_alive_ms,
            released_sequence_num: s.released_sequence_num,
            cached_outputs: s.outputs.iter().map(|(&sequence_num, o)| pb::CachedOutput { sequence_num, output: Some(output(o)) }).collect(),
            open_inputs_through: s.open_inputs.as_ref().map_or(0, |(through, _)| *through),
            open_inputs: open_inputs(s),
        };
        pb::Snapshot {
            version: 2,
            last_applied_index: sm.last_applied,
            last_term: sm.last_term,
            clock_ms: sm.clock_ms,
            sessions: sm.sessions.iter().map(session).collect(),
            primitives: primitives.to_vec(),
        }
        .encode_to_vec()
    }

    fn check(sm: &StateMachine) {
        let primitives: Vec<pb::PrimitiveState> = sm.registry.iter().map(super::super::snapshot::encode_primitive).collect();
        assert_eq!(encode(sm, 2, &primitives), generated(sm, &primitives));
    }

    #[test]
    fn the_bytes_are_those_of_the_generated_encoder() {
        let mut sm = StateMachine::default();
        check(&sm);
        let mut index = 0;
        let mut apply = |sm: &mut StateMachine, cmd: command::Command| {
            index += 1;
            sm.apply(index, 1, &cmd)
        };
        // Sessions with every kind of cached output: created, a term with names of every
        // length class (empty, multi-byte, 200 bytes), closed, unknown, not found; one
        // session with a keep-alive filter, one with nothing cached, a zero sequence.
        let crate::sm::Output::SessionOpened { session_id: a } = apply(&mut sm, command::open_session(5, 60_000)).result.unwrap() else {
            panic!()
        };
        let crate::sm::Output::SessionOpened { session_id: b } = apply(&mut sm, command::open_session(6, 300)).result.unwrap() else {
            panic!()
        };
        let crate::sm::Output::SessionOpened { session_id: c } = apply(&mut sm, command::open_session(7, 1_000)).result.unwrap() else {
            panic!()
        };
        apply(&mut sm, command::create_primitive(8, a, 1, "e"));
        let long = "x".repeat(200);
        for (seq, name) in (2..).zip(["", "ünïcødé", long.as_str(), "b"]) {
            let cmd = command::election(9, a, seq, PrimitiveRef::Name("e".into()), ElectionOp::Enter, name);
            let _ = apply(&mut sm, cmd);
        }
        let _ = apply(&mut sm, command::election(10, b, 1, PrimitiveRef::Name("missing".into()), ElectionOp::Enter, "c"));
        let _ = apply(&mut sm, command::election(10, b, 2, PrimitiveRef::Id(999), ElectionOp::Enter, "c"));
        let crate::sm::Output::PrimitiveCreated { primitive_id: f } =
            apply(&mut sm, command::create_primitive(11, b, 3, "f")).result.unwrap()
        else {
            panic!()
        };
        let _ = apply(&mut sm, command::close_primitive(12, b, 4, f));
        let _ = apply(&mut sm, command::keep_alive(13, a, 3));
        let mut filter = crate::sm::bloom::BloomFilter::with_estimates(100, 0.01);
        filter.add_sequence(2);
        let _ = apply(&mut sm, command::driver_keep_alive(14, c, 0, &filter));
        let cached: usize = sm.sessions.iter().map(|s| s.outputs.len()).sum();
        assert!(cached >= 6, "the state caches outputs of every kind ({cached})");
        assert!(sm.sessions.iter().any(|s| s.open_inputs.is_some()), "a session holds a keep-alive filter");
        check(&sm);
    }
}
