//! The Conclave node: configuration, shards pinned to cores, the peer transport, the gRPC
//! edge (HTTP/2 via `h2` on glommio, no tokio runtime) and the Node control API; and the
//! command-line client of the same `conclave` binary (`cli`, on tonic).

pub mod cli;
pub mod config;
pub mod grpc;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod node;
pub mod routing;
pub mod service;
pub mod timer_queue;
