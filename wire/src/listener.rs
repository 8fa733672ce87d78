//! The inbound side of the transport: a shard's peer listener and its connection readers.
//!
//! The listener socket is built with socket2 *without* SO_REUSEPORT (glommio's own
//! `TcpListener::bind` sets it, which would let a second process silently share the port),
//! so a port already in use is an `AddrInUse` error at bind time. Each accepted connection
//! runs the handshake, then reads frames and hands every frame's messages, decoded in place
//! from the receive buffer, to the shard through a bounded channel. A full channel stops the
//! reader, which pushes back on the sender through TCP. With [`ListenerConfig::tls`] set,
//! every connection is mutual TLS (see [`crate::peer_tls`]); without it, a dialer that
//! starts a TLS handshake is told apart from garbage in the log line that refuses it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncRead, FutureExt};
use glommio::channels::local_channel::LocalSender;
use glommio::net::{TcpListener, TcpStream};
use glommio::task::JoinHandle;
use prost::Message;
use socket2::{Domain, Protocol, Socket, Type};

use crate::codec::FrameDecoder;
use crate::frame::{FrameFlags, FrameLimits};
use crate::handshake::{self, HandshakeError, LocalIdentity, RemotePeer};
use crate::peer_tls::{self, ListenerTls};
use crate::tls::first_byte_is_tls;

/// The messages of one received frame.
#[derive(Debug)]
pub struct Inbound<M> {
    /// Who sent them.
    pub from: RemotePeer,
    /// True when they travelled in the bulk (snapshot) lane.
    pub bulk: bool,
    /// The messages, in the order they were sent; `bytes` fields slice the receive buffer.
    pub messages: Vec<M>,
}

/// Settings of a peer listener.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// This shard's identity, checked against every handshake.
    pub local: LocalIdentity,
    /// Largest frame accepted; must be at least the senders' limit.
    pub limits: FrameLimits,
    /// Time a new connection has to complete its handshake.
    pub handshake_timeout: Duration,
    /// Listen backlog.
    pub backlog: i32,
    /// Mutual TLS on every connection (`None`: plaintext).
    pub tls: Option<ListenerTls>,
}

impl ListenerConfig {
    /// Defaults: 16 MiB frames, 2 s handshake timeout, backlog 128, plaintext.
    pub fn new(local: LocalIdentity) -> ListenerConfig {
        ListenerConfig { local, limits: FrameLimits::default(), handshake_timeout: Duration::from_secs(2), backlog: 128, tls: None }
    }
}

/// A bound, not yet serving, peer listener.
pub struct PeerListener {
    listener: TcpListener,
    config: ListenerConfig,
}

/// Binds `address` for listening without SO_REUSEPORT (SO_REUSEADDR is set so a restarted
/// node can rebind while old connections linger in TIME_WAIT).
pub fn bind_exclusive(address: SocketAddr, backlog: i32) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(backlog)?;
    Ok(socket)
}

impl PeerListener {
    /// Binds `address`; fails with `AddrInUse` when another socket listens there. Must be
    /// called on a glommio executor.
    pub fn bind(address: SocketAddr, config: ListenerConfig) -> std::io::Result<PeerListener> {
        let socket = bind_exclusive(address, config.backlog)?;
        // SAFETY: the descriptor is a freshly bound, listening TCP socket whose ownership
        // moves into the glommio listener; nothing else holds or closes it.
        let listener = unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) };
        Ok(PeerListener { listener, config })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr().map_err(std::io::Error::from)
    }

    /// Serves connections in background tasks, delivering received frames to `inbound`.
    /// Dropping the returned handle closes the listener and every connection it accepted.
    pub fn spawn<M: Message + Default + 'static>(self, inbound: LocalSender<Inbound<M>>) -> ListenerHandle {
        self.spawn_into(Rc::new(inbound), |frame| frame)
    }

    /// Like [`PeerListener::spawn`], but each frame is turned into the receiver's own item
    /// by `wrap` (in the connection's reader task) and queued straight on `receiver`'s
    /// channel: a shard runtime takes peer frames with no task of its own in between.
    pub fn spawn_into<M, T>(self, receiver: Rc<LocalSender<T>>, wrap: impl Fn(Inbound<M>) -> T + 'static) -> ListenerHandle
    where
        M: Message + Default + 'static,
        T: 'static,
    {
        let connections = Rc::new(RefCell::new(Connections::default()));
        let inbound = Rc::new(Deliver { receiver, wrap: Box::new(wrap) });
        let accept = glommio::spawn_local(accept_loop(self, inbound, connections.clone())).detach();
        ListenerHandle { accept: Some(accept), connections }
    }
}

/// Where a listener's readers put the frames they decode.
struct Deliver<M, T> {
    receiver: Rc<LocalSender<T>>,
    wrap: Box<dyn Fn(Inbound<M>) -> T>,
}

impl<M, T> Deliver<M, T> {
    async fn send(&self, frame: Inbound<M>) -> Result<(), ()> {
        self.receiver.send((self.wrap)(frame)).await.map_err(|_| ())
    }
}

#[derive(Default)]
struct Connections {
    next_id: u64,
    running: BTreeMap<u64, JoinHandle<()>>,
    finished: Vec<u64>,
}

impl Connections {
    fn prune(&mut self) {
        for id in self.finished.drain(..) {
            self.running.remove(&id);
        }
    }
}

/// Keeps a listener serving; dropping it stops the listener and its connections.
pub struct ListenerHandle {
    accept: Option<JoinHandle<()>>,
    connections: Rc<RefCell<Connections>>,
}

impl ListenerHandle {
    /// Connections currently open (handshaking or serving).
    pub fn open_connections(&self) -> usize {
        let mut connections = self.connections.borrow_mut();
        connections.prune();
        connections.running.len()
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.cancel();
        }
        let mut connections = self.connections.borrow_mut();
        for (_, connection) in std::mem::take(&mut connections.running) {
            connection.cancel();
        }
    }
}

async fn accept_loop<M: Message + Default + 'static, T: 'static>(
    listener: PeerListener,
    inbound: Rc<Deliver<M, T>>,
    connections: Rc<RefCell<Connections>>,
) {
    let config = Rc::new(listener.config);
    loop {
        let stream = match listener.listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                // Typically EMFILE/ENFILE: back off briefly instead of spinning.
                tracing::warn!(shard = config.local.shard_id, error = %e, "peer listener accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let id = {
            let mut registry = connections.borrow_mut();
            registry.prune();
            registry.next_id += 1;
            registry.next_id - 1
        };
        let task = serve_connection(stream, config.clone(), inbound.clone());
        let on_exit = connections.clone();
        // glommio may run a new task at once, inside `spawn_local`, to its end (a refusal
        // decided without waiting): no borrow of the registry may be held across the spawn.
        let handle = glommio::spawn_local(async move {
            task.await;
            on_exit.borrow_mut().finished.push(id);
        })
        .detach();
        connections.borrow_mut().running.insert(id, handle);
    }
}

async fn serve_connection<M: Message + Default, T>(mut stream: TcpStream, config: Rc<ListenerConfig>, inbound: Rc<Deliver<M, T>>) {
    let address = match stream.peer_addr() {
        Ok(address) => address,
        Err(e) => {
            tracing::debug!(error = %e, "accepted peer connection closed before it was served");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    match &config.tls {
        None => {
            let handshake = async {
                if first_byte_is_tls(&stream).await? {
                    return Err(HandshakeError::Malformed(
                        "the peer started a TLS handshake, but peer TLS is not configured on this node".into(),
                    ));
                }
                handshake::accept(&mut stream, &config.local, address, &|_| Ok(())).await
            };
            if let Some(from) = within_deadline(&config, address, handshake).await {
                serve_frames(&mut stream, &config, from, &inbound).await;
            }
        }
        Some(tls) => {
            let handshake = peer_tls::accept(stream, tls, &config.local, address);
            if let Some((from, mut stream)) = within_deadline(&config, address, handshake).await {
                serve_frames(&mut stream, &config, from, &inbound).await;
            }
        }
    }
}

/// Runs the handshake with the listener's deadline; logs and returns `None` on refusal.
async fn within_deadline<R>(
    config: &ListenerConfig,
    address: SocketAddr,
    handshake: impl std::future::Future<Output = Result<R, HandshakeError>>,
) -> Option<R> {
    let deadline = async {
        glommio::timer::sleep(config.handshake_timeout).await;
        Err(HandshakeError::TimedOut)
    };
    match handshake.or(deadline).await {
        Ok(established) => Some(established),
        Err(e) => {
            tracing::warn!(local_node = config.local.node_id, shard = config.local.shard_id, %address, "refusing peer connection: {e}");
            None
        }
    }
}

async fn serve_frames<S: AsyncRead + Unpin, M: Message + Default, T>(
    stream: &mut S,
    config: &ListenerConfig,
    from: RemotePeer,
    inbound: &Deliver<M, T>,
) {
    let address = from.address;
    tracing::info!(peer = from.node_id, shard = from.shard_id, snapshot = from.snapshot, %address, "peer connection accepted");
    let reason = read_frames(stream, config, from, inbound).await;
    tracing::warn!(peer = from.node_id, shard = from.shard_id, %address, %reason, "peer connection closed");
}

/// Delivers frames until the connection ends; returns why it ended.
async fn read_frames<S: AsyncRead + Unpin, M: Message + Default, T>(
    stream: &mut S,
    config: &ListenerConfig,
    from: RemotePeer,
    inbound: &Deliver<M, T>,
) -> String {
    let mut decoder = FrameDecoder::new(config.limits);
    loop {
        let frame = match decoder.read_frame(stream).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return "peer closed the connection".into(),
            Err(e) => return e.to_string(),
        };
        if frame.flags.contains(FrameFlags::HANDSHAKE) {
            return "protocol error: handshake frame after the handshake".into();
        }
        let mut messages = Vec::new();
        if let Err(e) = frame.decode_into(&mut messages) {
            return format!("corrupt message: {e}");
        }
        let bulk = frame.flags.contains(FrameFlags::BULK);
        if inbound.send(Inbound { from, bulk, messages }).await.is_err() {
            return "the shard stopped receiving".into();
        }
        // A busy socket never makes the reader wait: give the shard's other tasks their turn.
        glommio::yield_if_needed().await;
    }
}
