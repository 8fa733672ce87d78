//! How engine outcomes become gRPC statuses, with messages a person can act on.
//!
//! | engine outcome | gRPC code |
//! |---|---|
//! | state machine `Invalid` (empty/oversized name, bad timeout, stale sequence number) | INVALID_ARGUMENT |
//! | state machine `NotFound` (election never created, unknown session or primitive) | NOT_FOUND |
//! | no leader, leadership lost mid-request, shutting down, group not hosted | UNAVAILABLE |
//! | too many requests waiting | RESOURCE_EXHAUSTED |
//! | a request the shard cannot serve as asked | INVALID_ARGUMENT |
//! | storage failure, internal error | INTERNAL |
//! | client deadline passed (enforced by the gRPC layer) | DEADLINE_EXCEEDED |

use conclave_engine::shard::ShardError;
use conclave_engine::sm::{ErrorKind, SmError};

use crate::grpc::Status;

/// The status for a request the engine could not run.
pub fn from_shard(error: &ShardError) -> Status {
    match error {
        ShardError::Overloaded(_) => Status::resource_exhausted(error.to_string()),
        ShardError::Storage(_) => Status::internal(error.to_string()),
        ShardError::Invalid(_) => Status::invalid_argument(error.to_string()),
        ShardError::NotLeader { .. }
        | ShardError::LeadershipLost
        | ShardError::Unavailable(_)
        | ShardError::UnknownGroup(_)
        | ShardError::ShuttingDown => Status::unavailable(error.to_string()),
    }
}

/// The status for a command or query the state machine refused.
pub fn from_sm(error: &SmError) -> Status {
    match error.kind() {
        ErrorKind::Invalid => Status::invalid_argument(error.to_string()),
        ErrorKind::NotFound => Status::not_found(error.to_string()),
        ErrorKind::Internal => Status::internal(error.to_string()),
        ErrorKind::Exhausted => Status::resource_exhausted(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::Code;
    use conclave_engine::sm::NameField;

    #[test]
    fn every_outcome_maps_to_its_documented_code() {
        assert_eq!(from_sm(&SmError::EmptyName { field: NameField::Candidate }).code(), Code::InvalidArgument);
        assert_eq!(from_sm(&SmError::ElectionNotFound { name: "e".into() }).code(), Code::NotFound);
        assert_eq!(from_sm(&SmError::TooManySessions).code(), Code::ResourceExhausted);
        assert_eq!(from_sm(&SmError::TooManyCandidates { name: "e".into() }).code(), Code::ResourceExhausted);
        assert_eq!(from_shard(&ShardError::NotLeader { group: 1, leader: 0 }).code(), Code::Unavailable);
        assert_eq!(from_shard(&ShardError::Overloaded("x".into())).code(), Code::ResourceExhausted);
        assert_eq!(from_shard(&ShardError::Storage("disk".into())).code(), Code::Internal);
        assert!(from_shard(&ShardError::LeadershipLost).message().contains("retry"));
    }
}
