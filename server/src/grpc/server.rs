//! The shard-local gRPC server: configuration, the accept loop, connection tracking,
//! connection observers, and graceful shutdown.
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future::FutureExt as _;
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::Timer;

use super::connection;
use super::router::{ConnectionInfo, Router};
use super::signal::Signal;
use super::status::Code;
use super::tls::ListenerTls;

/// Knobs of the gRPC edge; see tuning.md, section "gRPC edge", for guidance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Largest request message accepted; larger ones get `RESOURCE_EXHAUSTED`.
    pub max_recv_message_len: usize,
    /// Largest response message sent; larger ones end the call with `RESOURCE_EXHAUSTED`.
    pub max_send_message_len: usize,
    /// Most bytes of unfinished request messages the calls of one connection may hold;
    /// the call whose bytes would pass it ends with `RESOURCE_EXHAUSTED`. At least one
    /// message of `max_recv_message_len` (plus its 5-byte prefix).
    pub max_recv_buffered_per_connection: usize,
    /// Size a server stream aims for when coalescing queued messages into one DATA write.
    pub target_chunk_len: usize,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: calls in flight per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 initial flow-control window of each stream (request bodies).
    pub initial_stream_window: u32,
    /// HTTP/2 flow-control window of the whole connection (request bodies).
    pub initial_connection_window: u32,
    /// HTTP/2 SETTINGS_MAX_FRAME_SIZE the server accepts (16 KiB to 16 MiB - 1).
    pub max_frame_size: u32,
    /// HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE the server accepts.
    pub max_header_list_size: u32,
    /// Most response bytes h2 buffers per stream ahead of the client's window.
    pub max_send_buffer_size: usize,
    /// A connection that has not completed the HTTP/2 preface by then is closed.
    pub handshake_timeout: Duration,
    /// How often the server pings each connection; `None` disables keepalive.
    pub keepalive_interval: Option<Duration>,
    /// A ping unanswered for this long closes the connection (a dead client is noticed
    /// within `keepalive_interval + keepalive_timeout`).
    pub keepalive_timeout: Duration,
    /// A connection with no call in flight for this long gets GOAWAY. `None` (the
    /// default) keeps idle connections: client sessions are bound to connections, so an
    /// idle timeout would end the candidacies of idle clients.
    pub idle_timeout: Option<Duration>,
    /// On shutdown, how long in-flight calls may take before connections are dropped.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            max_recv_message_len: 4 << 20,
            max_send_message_len: 4 << 20,
            max_recv_buffered_per_connection: 16 << 20,
            target_chunk_len: 16 << 10,
            max_concurrent_streams: 1024,
            initial_stream_window: 1 << 20,
            initial_connection_window: 4 << 20,
            max_frame_size: 16 << 10,
            max_header_list_size: 16 << 10,
            max_send_buffer_size: 400 << 10,
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Some(Duration::from_secs(10)),
            keepalive_timeout: Duration::from_secs(10),
            idle_timeout: None,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl ServerConfig {
    /// Checks the knobs against the limits of HTTP/2 and the gRPC framing, so a bad
    /// configuration is reported at startup instead of failing inside h2.
    pub fn validate(&self) -> Result<(), String> {
        const MAX_WINDOW: u32 = (1 << 31) - 1;
        const FRAME_SIZES: std::ops::RangeInclusive<u32> = (1 << 14)..=(1 << 24) - 1;
        let max_message = u32::MAX as usize;
        if self.max_recv_message_len > max_message || self.max_send_message_len > max_message {
            return Err(format!("gRPC messages are at most {max_message} bytes"));
        }
        if self.max_recv_buffered_per_connection < self.max_recv_message_len + super::framing::PREFIX_LEN {
            return Err("max_recv_buffered_per_connection must hold one message of max_recv_message_len".into());
        }
        if self.target_chunk_len == 0 {
            return Err("target_chunk_len must be positive".into());
        }
        if !FRAME_SIZES.contains(&self.max_frame_size) {
            return Err(format!("max_frame_size {} is outside HTTP/2's {FRAME_SIZES:?}", self.max_frame_size));
        }
        if self.initial_stream_window > MAX_WINDOW || self.initial_connection_window > MAX_WINDOW {
            return Err(format!("HTTP/2 flow-control windows are at most {MAX_WINDOW} bytes"));
        }
        if self.max_concurrent_streams == 0 {
            return Err("max_concurrent_streams must be positive".into());
        }
        if self.keepalive_interval == Some(Duration::ZERO) || self.idle_timeout == Some(Duration::ZERO) {
            return Err("keepalive_interval and idle_timeout must be positive when set".into());
        }
        Ok(())
    }
}

/// Hears about every connection the server serves, so the node can bind client sessions
/// to connections and end them the moment a client goes away.
pub trait ConnectionObserver {
    /// A client connected (called before any of its calls).
    fn connection_opened(&self, connection: &Rc<ConnectionInfo>) {
        let _ = connection;
    }

    /// The connection ended (client closed it, keepalive failed, idle timeout, shutdown).
    /// Called exactly once per opened connection, after `connection.is_closed()` is set.
    fn connection_closed(&self, connection: &Rc<ConnectionInfo>) {
        let _ = connection;
    }
}

/// Hears how every routed call ended (for metrics): its full method path, whether it was
/// a server stream, its status code (`CANCELLED` when the client went away first) and how
/// long it took from its headers to its end.
pub trait CallObserver {
    fn call_finished(&self, method: &str, streaming: bool, code: Code, elapsed: Duration);
}

pub(crate) struct ServerShared {
    pub router: Rc<Router>,
    pub config: Rc<ServerConfig>,
    pub observer: Option<Rc<dyn ConnectionObserver>>,
    pub call_observer: RefCell<Option<Rc<dyn CallObserver>>>,
    /// TLS of the connections served from now on (`None`: plaintext).
    pub tls: RefCell<Option<ListenerTls>>,
    pub shutdown: Signal,
    open_connections: Cell<usize>,
    drained: Signal,
}

impl ServerShared {
    pub(crate) fn track_connection(self: &Rc<Self>) -> OpenConnection {
        self.open_connections.set(self.open_connections.get() + 1);
        OpenConnection { server: Rc::clone(self) }
    }

    fn check_drained(&self) {
        if self.shutdown.is_fired() && self.open_connections.get() == 0 {
            self.drained.fire();
        }
    }
}

/// Keeps a connection counted as open until dropped.
pub(crate) struct OpenConnection {
    server: Rc<ServerShared>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let open = self.server.open_connections.get();
        debug_assert!(open > 0);
        self.server.open_connections.set(open - 1);
        self.server.check_drained();
    }
}

/// A gRPC server on one shard. Cheap to clone (clones share state); `!Send`.
#[derive(Clone)]
pub struct GrpcServer {
    shared: Rc<ServerShared>,
}

impl GrpcServer {
    /// A server answering calls with `router`.
    pub fn new(router: Router, config: ServerConfig) -> GrpcServer {
        GrpcServer::with_observer(router, config, None)
    }

    /// A server that also reports connection open/close to `observer`.
    ///
    /// Panics when `config` fails [`ServerConfig::validate`] (check user-supplied knobs
    /// with it first).
    pub fn with_observer(router: Router, config: ServerConfig, observer: Option<Rc<dyn ConnectionObserver>>) -> GrpcServer {
        if let Err(problem) = config.validate() {
            panic!("invalid gRPC server configuration: {problem}");
        }
        GrpcServer {
            shared: Rc::new(ServerShared {
                router: Rc::new(router),
                config: Rc::new(config),
                observer,
                call_observer: RefCell::new(None),
                tls: RefCell::new(None),
                shutdown: Signal::new(),
                open_connections: Cell::new(0),
                drained: Signal::new(),
            }),
        }
    }

    /// Reports every routed call of connections opened from now on to `observer`.
    pub fn set_call_observer(&self, observer: Rc<dyn CallObserver>) {
        *self.shared.call_observer.borrow_mut() = Some(observer);
    }

    /// Serves connections accepted from now on over TLS (a handshake with the current
    /// configuration of `tls`, within `handshake_timeout`, before HTTP/2).
    pub fn set_tls(&self, tls: ListenerTls) {
        *self.shared.tls.borrow_mut() = Some(tls);
    }

    /// Accepts connections on `listener` (which this call owns and closes) until
    /// [`GrpcServer::shutdown`], then waits for open connections to finish (each is given
    /// `shutdown_grace`). Must run inside a glommio executor; only one executor may accept
    /// on a given listening socket (see [`crate::net`]).
    pub async fn serve(&self, listener: TcpListener) {
        loop {
            let accepted = async { Some(listener.accept().await) }
                .or(async {
                    self.shared.shutdown.fired().await;
                    None
                })
                .await;
            match accepted {
                None => break,
                Some(Ok(stream)) => self.serve_connection(stream),
                Some(Err(error)) => {
                    // Usually EMFILE/ENFILE or a connection reset before accept: back off a
                    // little so a full fd table does not spin the shard.
                    tracing::warn!(%error, "accepting a client connection failed");
                    Timer::new(Duration::from_millis(10)).await;
                }
            }
        }
        drop(listener);
        self.drained().await;
    }

    /// Serves one already-accepted connection on this shard (e.g. a stream another shard
    /// accepted and handed over with `AcceptedTcpStream::bind_to_executor`).
    pub fn serve_connection(&self, stream: TcpStream) {
        if self.shared.shutdown.is_fired() {
            return;
        }
        let shared = Rc::clone(&self.shared);
        glommio::spawn_local(connection::serve_connection(shared, stream)).detach();
    }

    /// Begins graceful shutdown: stop accepting, end server streams with `UNAVAILABLE`,
    /// send GOAWAY, let in-flight unary calls finish within `shutdown_grace`.
    pub fn shutdown(&self) {
        self.shared.shutdown.fire();
        self.shared.check_drained();
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.is_fired()
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.get()
    }

    /// Completes once shutdown has begun and every connection has closed.
    pub async fn drained(&self) {
        self.shared.drained.fired().await;
        debug_assert_eq!(self.open_connections(), 0);
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &ServerConfig {
        &self.shared.config
    }
}
