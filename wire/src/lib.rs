//! Conclave's node-to-node wire: batched, zero-copy protobuf frames over TCP.
//!
//! Owns the frame codec (header, checksum, many length-delimited messages per frame) and the
//! peer transport (one connection per local shard and remote node, handshake, coalescing
//! writer, reconnect with backoff). It knows nothing about Raft or gRPC.
