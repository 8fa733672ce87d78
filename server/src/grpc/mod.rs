//! The gRPC edge: a gRPC server on HTTP/2 (`h2`) over glommio TCP streams, with no tokio
//! runtime. It owns framing, status trailers, deadlines, routing of
//! `/package.Service/Method` paths to handlers, server and bidirectional streaming with
//! bounded queues and coalesced DATA frames, keepalive and idle timeouts, connection
//! observers, graceful shutdown, TLS and mutual TLS (futures-rustls on the glommio stream,
//! ALPN `h2`), and the standard health and server reflection services.
//!
//! Everything is shard-local (`Rc`, `!Send` futures): each shard builds a [`Router`],
//! wraps it in a [`GrpcServer`] and either serves a listener or connections handed to it.
//!
//! ```no_run
//! use conclave_server::grpc::{GrpcServer, HealthService, Router, ServerConfig, Status};
//! # async fn shard(listener: glommio::net::TcpListener) {
//! let mut router = Router::new();
//! let health = HealthService::new();
//! health.register(&mut router);
//! router.unary("/example.Echo/Say", |request, _ctx| async move { Ok::<_, Status>(request) });
//! let server = GrpcServer::new(router, ServerConfig::default());
//! server.serve(listener).await; // returns after server.shutdown() and draining
//! # }
//! ```
mod call;
mod calls;
mod connection;
pub mod framing;
mod health;
mod io;
mod reflection;
mod requests;
mod router;
mod server;
mod signal;
mod status;
mod stream;
mod tls;

pub use health::{HealthService, CHECK_PATH as HEALTH_CHECK_PATH, WATCH_PATH as HEALTH_WATCH_PATH};
pub use io::GlommioIo;
pub use reflection::{ReflectionService, REFLECTION_V1ALPHA_PATH, REFLECTION_V1_PATH};
pub use requests::RequestStream;
pub use router::{BidiStreamingHandler, CallContext, ConnectionInfo, LocalBoxFuture, Route, Router, StreamingHandler, UnaryHandler};
pub use server::{CallObserver, ConnectionObserver, GrpcServer, ServerConfig};
pub use signal::{Fired, Signal};
pub use status::{Code, Status};
pub use stream::{OverflowPolicy, SendError, StreamLimits, StreamSink};
pub use tls::ListenerTls;

/// The health statuses of `grpc.health.v1`.
pub use conclave_proto::grpc::health::v1::health_check_response::ServingStatus;
