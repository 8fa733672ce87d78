//! A command's successful result on the wire (`conclave.sm.v1.CommandOutput`): how a
//! leader tells the node that forwarded a command what it returned, so that node answers
//! its client without applying the entry first.

use std::sync::Arc;

use conclave_proto::conclave::sm::v1 as pb;

use super::{ElectionTerm, Output};

/// The wire form of `output`.
pub fn encode(output: &Output) -> pb::CommandOutput {
    use pb::command_output::Output as Out;
    let output = match output {
        Output::Barrier => Out::Barrier(true),
        Output::SessionOpened { session_id } => Out::SessionOpened(*session_id),
        Output::KeptAlive => Out::KeptAlive(true),
        Output::KeptAliveBatch { unknown_sessions } => {
            Out::KeptAliveBatch(pb::KeptAliveBatch { unknown_sessions: unknown_sessions.clone() })
        }
        Output::SessionClosed => Out::SessionClosed(true),
        Output::PrimitiveCreated { primitive_id } => Out::PrimitiveCreated(*primitive_id),
        Output::PrimitiveClosed => Out::PrimitiveClosed(true),
        Output::Term(term) => {
            Out::ElectionTerm(pb::ElectionTerm { term: term.term, candidates: term.candidates.iter().map(|c| c.to_string()).collect() })
        }
    };
    pb::CommandOutput { output: Some(output) }
}

/// The output `output` stands for; `None` when it carries none (a peer of a later
/// version, or a damaged message): the caller then learns the result another way.
pub fn decode(output: &pb::CommandOutput) -> Option<Output> {
    use pb::command_output::Output as Out;
    Some(match output.output.as_ref()? {
        Out::Barrier(_) => Output::Barrier,
        Out::SessionOpened(session_id) => Output::SessionOpened { session_id: *session_id },
        Out::KeptAlive(_) => Output::KeptAlive,
        Out::KeptAliveBatch(batch) => Output::KeptAliveBatch { unknown_sessions: batch.unknown_sessions.clone() },
        Out::SessionClosed(_) => Output::SessionClosed,
        Out::PrimitiveCreated(primitive_id) => Output::PrimitiveCreated { primitive_id: *primitive_id },
        Out::PrimitiveClosed(_) => Output::PrimitiveClosed,
        Out::ElectionTerm(term) => {
            Output::Term(ElectionTerm { term: term.term, candidates: term.candidates.iter().map(|c| Arc::from(c.as_str())).collect() })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_output_survives_the_wire() {
        let outputs = [
            Output::Barrier,
            Output::SessionOpened { session_id: 7 },
            Output::KeptAlive,
            Output::KeptAliveBatch { unknown_sessions: vec![3, 9] },
            Output::SessionClosed,
            Output::PrimitiveCreated { primitive_id: 11 },
            Output::PrimitiveClosed,
            Output::Term(ElectionTerm { term: 4, candidates: vec![Arc::from("a"), Arc::from("b")].into() }),
        ];
        for output in outputs {
            assert_eq!(decode(&encode(&output)), Some(output.clone()), "{output:?}");
        }
        assert_eq!(decode(&pb::CommandOutput { output: None }), None);
    }
}
