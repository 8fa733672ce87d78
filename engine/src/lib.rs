//! Conclave's engine: everything a shard needs to run its Raft groups.
//!
//! - [`sm`]: the replicated state machine each group applies (sessions, the primitive
//!   registry, leader elections), pure and deterministic;
//! - [`raft`]: the sans-IO Raft core (no files, sockets, threads or clocks);
//! - [`log`]: the segmented write-ahead log shared by all groups of a shard, and the snapshot
//!   store, on glommio direct I/O;
//! - [`shard`]: the shard runtime that drives a shard's replicas and its log.
//!
//! Nothing here knows about gRPC or HTTP/2; the `server` crate drives these pieces.

pub mod log;
pub mod raft;
pub mod shard;
pub mod sm;
