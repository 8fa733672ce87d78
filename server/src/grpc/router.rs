//! Routing from `/package.Service/Method` paths to handlers (unary, server-streaming and
//! bidirectional-streaming), and the per-call context a handler receives. Handlers are shard-local closures (`!Send`), so each shard builds its
//! own [`Router`].
use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future::FutureExt as _;
use http::HeaderMap;

use super::framing::RecvBudget;
use super::requests::RequestStream;
use super::signal::{Fired, Signal};
use super::status::Status;
use super::stream::{StreamLimits, StreamSink};

/// A boxed, shard-local future.
pub type LocalBoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + 'static>>;

/// A unary handler: request message bytes in, response message bytes out.
pub type UnaryHandler = Rc<dyn Fn(Bytes, CallContext) -> LocalBoxFuture<Result<Bytes, Status>>>;

/// A server-streaming handler: pushes responses into the sink; the stream ends with the
/// returned status once the handler returns and every queued message is written.
pub type StreamingHandler = Rc<dyn Fn(Bytes, CallContext, StreamSink) -> LocalBoxFuture<Result<(), Status>>>;

/// A bidirectional-streaming handler: reads the client's messages from the
/// [`RequestStream`] as it needs them and pushes responses into the sink; the call ends
/// with the returned status once the handler returns and every queued message is written.
/// Also serves client-streaming methods (a handler that pushes one response).
pub type BidiStreamingHandler = Rc<dyn Fn(RequestStream, CallContext, StreamSink) -> LocalBoxFuture<Result<(), Status>>>;

/// A registered method.
#[derive(Clone)]
pub enum Route {
    /// One request, one response.
    Unary(UnaryHandler),
    /// One request, a stream of responses bounded by the given limits.
    ServerStreaming(StreamingHandler, StreamLimits),
    /// A stream of requests and a stream of responses bounded by the given limits.
    BidiStreaming(BidiStreamingHandler, StreamLimits),
}

/// A connection as handlers and connection observers see it.
#[derive(Debug)]
pub struct ConnectionInfo {
    id: u64,
    peer: Option<SocketAddr>,
    closed: Signal,
    /// Unfinished request bytes of the connection's calls, made by its first call.
    recv_budget: OnceCell<Rc<RecvBudget>>,
}

impl ConnectionInfo {
    pub(crate) fn new(id: u64, peer: Option<SocketAddr>) -> ConnectionInfo {
        ConnectionInfo { id, peer, closed: Signal::new(), recv_budget: OnceCell::new() }
    }

    /// The budget of unfinished request bytes shared by the connection's calls (of
    /// `limit` bytes: the server's `max_recv_buffered_per_connection`).
    pub(crate) fn recv_budget(&self, limit: usize) -> Rc<RecvBudget> {
        Rc::clone(self.recv_budget.get_or_init(|| Rc::new(RecvBudget::new(limit))))
    }

    /// Process-wide unique id of the connection (never reused while the process runs).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client's address, when the socket reported one.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.closed.is_fired()
    }

    /// Completes when the connection closes (client gone, keepalive failed, or shutdown).
    pub fn closed(&self) -> Fired {
        self.closed.fired()
    }

    pub(crate) fn mark_closed(&self) {
        self.closed.fire();
    }
}

/// What a handler knows about its call.
#[derive(Clone, Debug)]
pub struct CallContext {
    method: Rc<str>,
    deadline: Option<Instant>,
    metadata: Rc<HeaderMap>,
    connection: Rc<ConnectionInfo>,
}

impl CallContext {
    pub(crate) fn new(method: Rc<str>, deadline: Option<Instant>, metadata: Rc<HeaderMap>, connection: Rc<ConnectionInfo>) -> CallContext {
        CallContext { method, deadline, metadata, connection }
    }

    /// The full method path, e.g. `/atomix.runtime.election.v1.LeaderElection/Enter`.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The instant the client's `grpc-timeout` expires, if it sent one. The layer ends
    /// the call with `DEADLINE_EXCEEDED` at that instant; handlers may use it to bound
    /// work they hand to other shards.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline (`None` without a deadline, zero once passed).
    pub fn time_remaining(&self) -> Option<Duration> {
        self.deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }

    /// The request headers (custom metadata included).
    pub fn metadata(&self) -> &HeaderMap {
        &self.metadata
    }

    /// The connection the call arrived on; bind client sessions to `connection().id()`
    /// and release them on `connection().closed()` or a [`ConnectionObserver`] callback.
    ///
    /// [`ConnectionObserver`]: super::ConnectionObserver
    pub fn connection(&self) -> &Rc<ConnectionInfo> {
        &self.connection
    }

    /// Decodes a protobuf request, mapping failure to `INVALID_ARGUMENT`.
    pub fn decode<M: prost::Message + Default>(&self, request: &Bytes) -> Result<M, Status> {
        M::decode(request.clone())
            .map_err(|error| Status::invalid_argument(format!("could not decode the request of {}: {error}", self.method)))
    }
}

/// The table of methods a server answers, keyed by full path.
#[derive(Clone, Default)]
pub struct Router {
    routes: BTreeMap<String, Route>,
    services: BTreeSet<String>,
}

/// Splits `/package.Service/Method` into (`package.Service`, `Method`).
pub(crate) fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some((service, method))
}

impl Router {
    /// An empty router (every call answers `UNIMPLEMENTED`).
    pub fn new() -> Router {
        Router::default()
    }

    /// Registers `route` at `path` (`/package.Service/Method`).
    ///
    /// Panics when the path is malformed or already registered: both are programming
    /// errors in the server assembly, caught at startup.
    pub fn add(&mut self, path: &str, route: Route) -> &mut Router {
        let (service, _) = split_path(path).unwrap_or_else(|| panic!("route path {path:?} is not /package.Service/Method"));
        self.services.insert(service.to_owned());
        let previous = self.routes.insert(path.to_owned(), route);
        assert!(previous.is_none(), "route {path} registered twice");
        self
    }

    /// Registers a unary handler over raw message bytes.
    pub fn unary<F, Fut>(&mut self, path: &str, handler: F) -> &mut Router
    where
        F: Fn(Bytes, CallContext) -> Fut + 'static,
        Fut: Future<Output = Result<Bytes, Status>> + 'static,
    {
        let handler: UnaryHandler = Rc::new(move |request, ctx| handler(request, ctx).boxed_local());
        self.add(path, Route::Unary(handler))
    }

    /// Registers a unary handler over decoded protobuf messages: a request that does not
    /// decode is answered `INVALID_ARGUMENT` without calling the handler.
    pub fn unary_message<Req, Resp, F, Fut>(&mut self, path: &str, handler: F) -> &mut Router
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(Req, CallContext) -> Fut + 'static,
        Fut: Future<Output = Result<Resp, Status>> + 'static,
    {
        let handler = Rc::new(handler);
        self.unary(path, move |request, ctx| {
            let handler = Rc::clone(&handler);
            async move {
                let request: Req = ctx.decode(&request)?;
                let response = handler(request, ctx).await?;
                Ok(Bytes::from(response.encode_to_vec()))
            }
        })
    }

    /// Registers a server-streaming handler over raw message bytes with queue `limits`.
    pub fn server_streaming<F, Fut>(&mut self, path: &str, limits: StreamLimits, handler: F) -> &mut Router
    where
        F: Fn(Bytes, CallContext, StreamSink) -> Fut + 'static,
        Fut: Future<Output = Result<(), Status>> + 'static,
    {
        let handler: StreamingHandler = Rc::new(move |request, ctx, sink| handler(request, ctx, sink).boxed_local());
        self.add(path, Route::ServerStreaming(handler, limits))
    }

    /// Registers a server-streaming handler whose request is a decoded protobuf message.
    pub fn server_streaming_message<Req, F, Fut>(&mut self, path: &str, limits: StreamLimits, handler: F) -> &mut Router
    where
        Req: prost::Message + Default + 'static,
        F: Fn(Req, CallContext, StreamSink) -> Fut + 'static,
        Fut: Future<Output = Result<(), Status>> + 'static,
    {
        let handler = Rc::new(handler);
        self.server_streaming(path, limits, move |request, ctx, sink| {
            let handler = Rc::clone(&handler);
            async move {
                let request: Req = ctx.decode(&request)?;
                handler(request, ctx, sink).await
            }
        })
    }

    /// Registers a bidirectional-streaming handler with response queue `limits`.
    pub fn bidi_streaming<F, Fut>(&mut self, path: &str, limits: StreamLimits, handler: F) -> &mut Router
    where
        F: Fn(RequestStream, CallContext, StreamSink) -> Fut + 'static,
        Fut: Future<Output = Result<(), Status>> + 'static,
    {
        let handler: BidiStreamingHandler = Rc::new(move |requests, ctx, sink| handler(requests, ctx, sink).boxed_local());
        self.add(path, Route::BidiStreaming(handler, limits))
    }

    /// The route for `path`, or the `UNIMPLEMENTED` status naming what is missing.
    pub fn resolve(&self, path: &str) -> Result<&Route, Status> {
        if let Some(route) = self.routes.get(path) {
            return Ok(route);
        }
        match split_path(path) {
            Some((service, method)) if self.services.contains(service) => {
                Err(Status::unimplemented(format!("unknown method {method} for service {service}")))
            }
            Some((service, _)) => Err(Status::unimplemented(format!("unknown service {service}"))),
            None => Err(Status::unimplemented(format!("malformed method path {path:?}: expected /package.Service/Method"))),
        }
    }

    /// Every registered path, sorted.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }

    /// Every service with at least one registered method (`package.Service`), sorted.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services.iter().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::Code;

    #[test]
    fn unknown_service_and_method_are_named() {
        let mut router = Router::new();
        router.unary("/a.B/C", |request, _| async move { Ok(request) });
        assert!(router.resolve("/a.B/C").is_ok());
        let err = router.resolve("/a.B/D").err().expect("unknown method");
        assert_eq!((err.code(), err.message()), (Code::Unimplemented, "unknown method D for service a.B"));
        let err = router.resolve("/x.Y/C").err().expect("unknown service");
        assert_eq!(err.message(), "unknown service x.Y");
        let err = router.resolve("nonsense").err().expect("malformed");
        assert_eq!(err.code(), Code::Unimplemented);
    }
}
