//! The replicated state machine of one Raft group: sessions, primitives and elections.
