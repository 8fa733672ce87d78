//! The sans-IO Raft core: one deterministic state machine per group.
