//! The outbound side of the transport: one connection from a local shard to a remote node.
//!
//! A [`Peer`] owns a glommio task that dials, handshakes, and then writes whatever the
//! senders queued, coalescing everything queued into one frame and one write. When the
//! connection fails it reports the failure, waits an exponentially growing, jittered delay,
//! and dials again; queued messages wait (bounded) for the next connection, while those
//! already taken into a failed write are dropped and counted (Raft retransmits).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt};
use glommio::net::TcpStream;
use glommio::task::JoinHandle;
use prost::Message;

use crate::backoff::{Backoff, BackoffConfig};
use crate::event::{ConnectionEvent, ConnectionEventKind, EventSink};
use crate::frame::FrameLimits;
use crate::handshake::{self, HandshakeError, LocalIdentity};
use crate::peer_tls;
use crate::queue::{Lane, LaneLimits, SendError, SendQueue};
use crate::tls::ReloadableClientConfig;

/// Everything a [`Peer`] needs to know.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// This shard's identity.
    pub local: LocalIdentity,
    /// The node to reach.
    pub remote_node_id: u64,
    /// Where it listens for this shard (`host:port`).
    pub address: String,
    /// Dedicate this connection to snapshots (flagged in the handshake and in events).
    pub snapshot_connection: bool,
    /// Frame size limit; must not exceed the receiver's.
    pub limits: FrameLimits,
    /// Bounds of the ordinary lane.
    pub ordinary_queue: LaneLimits,
    /// Bounds of the bulk (snapshot) lane.
    pub bulk_queue: LaneLimits,
    /// Body bytes of bulk messages per frame; bounds how long ordinary traffic can wait
    /// behind a snapshot.
    pub bulk_frame_bytes: usize,
    /// Reconnection delays.
    pub backoff: BackoffConfig,
    /// Limit on establishing the TCP connection.
    pub connect_timeout: Duration,
    /// Limit on the handshake exchange.
    pub handshake_timeout: Duration,
    /// Drop what is queued when the connection fails, and refuse messages
    /// (`SendError::Disconnected`) until it is back, instead of delivering a backlog late.
    /// For traffic that is retransmitted anyway (Raft), a backlog only delays what is
    /// current once the peer returns. Off by default.
    pub discard_while_down: bool,
    /// Mutual TLS (see [`crate::peer_tls`]): the configuration presenting this node's
    /// certificate and verifying that the acceptor's names the host dialed. `None`: plaintext.
    pub tls: Option<ReloadableClientConfig>,
}

impl PeerConfig {
    /// Defaults: 16 MiB frames, 64 Ki messages / 64 MiB ordinary lane, 64 MiB bulk lane with
    /// 256 KiB bulk frames, 50 ms .. 5 s backoff seeded from the node and shard ids, 2 s
    /// connect and handshake timeouts.
    pub fn new(local: LocalIdentity, remote_node_id: u64, address: impl Into<String>) -> PeerConfig {
        let seed = (local.node_id << 32) ^ (u64::from(local.shard_id) << 16) ^ remote_node_id;
        PeerConfig {
            local,
            remote_node_id,
            address: address.into(),
            snapshot_connection: false,
            limits: FrameLimits::default(),
            ordinary_queue: LaneLimits { max_messages: 64 * 1024, max_bytes: 64 << 20 },
            bulk_queue: LaneLimits { max_messages: 1024, max_bytes: 64 << 20 },
            bulk_frame_bytes: 256 << 10,
            backoff: BackoffConfig { seed, ..BackoffConfig::default() },
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(2),
            discard_while_down: false,
            tls: None,
        }
    }
}

/// Counters of one peer, cumulative since it was spawned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Connections established.
    pub connections: u64,
    /// Connection attempts or connections that failed.
    pub failures: u64,
    /// Writes performed (each holds one ordinary frame and/or one bulk frame).
    pub writes: u64,
    /// Messages written to a socket.
    pub messages_sent: u64,
    /// Bytes written to a socket.
    pub bytes_sent: u64,
    /// Messages taken from the queue into a write that failed.
    pub messages_dropped: u64,
}

struct Shared<M> {
    queue: RefCell<SendQueue<M>>,
    stats: Cell<PeerStats>,
    /// Between attempts: the waker of the backoff wait, which `redial_now` cuts short.
    backoff_wait: RefCell<Option<Waker>>,
    redial: Cell<bool>,
}

impl<M> Shared<M> {
    fn bump(&self, update: impl FnOnce(&mut PeerStats)) {
        let mut stats = self.stats.get();
        update(&mut stats);
        self.stats.set(stats);
    }
}

/// A cheap, clonable handle that queues messages for one peer.
pub struct PeerSender<M> {
    shared: Rc<Shared<M>>,
}

impl<M> Clone for PeerSender<M> {
    fn clone(&self) -> Self {
        PeerSender { shared: self.shared.clone() }
    }
}

impl<M: Message> PeerSender<M> {
    /// Queues `message` in `lane`, waiting while the lane is full.
    pub async fn send_in(&self, lane: Lane, message: M) -> Result<(), SendError<M>> {
        let mut slot = Some(message);
        poll_fn(|cx| self.shared.queue.borrow_mut().offer(lane, &mut slot, Some(cx))).await
    }

    /// Queues `message` in `lane`, failing with `SendError::Full` instead of waiting.
    pub fn try_send_in(&self, lane: Lane, message: M) -> Result<(), SendError<M>> {
        let mut slot = Some(message);
        match self.shared.queue.borrow_mut().offer(lane, &mut slot, None) {
            Poll::Ready(result) => result,
            Poll::Pending => unreachable!("offer without a context never waits"),
        }
    }

    /// Queues an ordinary message, waiting while the ordinary lane is full.
    pub async fn send(&self, message: M) -> Result<(), SendError<M>> {
        self.send_in(Lane::Ordinary, message).await
    }

    /// Queues an ordinary message or fails at once when the lane is full.
    pub fn try_send(&self, message: M) -> Result<(), SendError<M>> {
        self.try_send_in(Lane::Ordinary, message)
    }

    /// Queues a bulk (snapshot chunk) message, waiting while the bulk lane is full.
    pub async fn send_bulk(&self, message: M) -> Result<(), SendError<M>> {
        self.send_in(Lane::Bulk, message).await
    }

    /// Messages queued and not yet taken by the writer.
    pub fn queued(&self) -> usize {
        self.shared.queue.borrow().len()
    }

    /// The peer's counters.
    pub fn stats(&self) -> PeerStats {
        self.shared.stats.get()
    }

    /// Dials again at once if the connection is down and waiting out its backoff (e.g. the
    /// peer was just heard from on its own connection, so it is back); the backoff starts
    /// over. Does nothing while connected or dialing.
    pub fn redial_now(&self) {
        if let Some(waker) = self.shared.backoff_wait.borrow_mut().take() {
            self.shared.redial.set(true);
            waker.wake();
        }
    }
}

/// One outbound connection (kept up by a background task) from this shard to a remote node.
/// Dropping it closes the connection and drops what is queued.
pub struct Peer<M> {
    sender: PeerSender<M>,
    task: Option<JoinHandle<()>>,
}

impl<M: Message + 'static> Peer<M> {
    /// Starts dialing. Must be called on a glommio executor; events are delivered through `events`.
    pub fn spawn(config: PeerConfig, events: EventSink) -> Peer<M> {
        let queue = SendQueue::new(config.limits, config.ordinary_queue, config.bulk_queue);
        let shared = Rc::new(Shared {
            queue: RefCell::new(queue),
            stats: Cell::new(PeerStats::default()),
            backoff_wait: RefCell::new(None),
            redial: Cell::new(false),
        });
        let task = glommio::spawn_local(run(shared.clone(), config, events)).detach();
        Peer { sender: PeerSender { shared }, task: Some(task) }
    }

    /// A handle for queuing messages.
    pub fn sender(&self) -> PeerSender<M> {
        self.sender.clone()
    }
}

impl<M> std::ops::Deref for Peer<M> {
    type Target = PeerSender<M>;

    fn deref(&self) -> &PeerSender<M> {
        &self.sender
    }
}

impl<M> Drop for Peer<M> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.cancel();
        }
        if let Ok(mut queue) = self.sender.shared.queue.try_borrow_mut() {
            queue.close();
        }
    }
}

fn emit(events: &EventSink, config: &PeerConfig, kind: ConnectionEventKind) {
    events(ConnectionEvent {
        kind,
        address: config.address.clone(),
        snapshot: config.snapshot_connection,
        remote_node_id: config.remote_node_id,
        local_shard_id: config.local.shard_id,
    });
}

async fn run<M: Message>(shared: Rc<Shared<M>>, config: PeerConfig, events: EventSink) {
    let mut backoff = Backoff::new(config.backoff);
    let mut buffer = BytesMut::with_capacity(crate::codec::READ_CHUNK);
    let set_discarding = |on: bool| {
        if config.discard_while_down {
            shared.queue.borrow_mut().set_discarding(on);
        }
    };
    loop {
        match connect(&config).await {
            Ok(stream) => {
                set_discarding(false);
                backoff.reset();
                shared.bump(|s| s.connections += 1);
                tracing::info!(peer = config.remote_node_id, address = %config.address, "peer connection established");
                emit(&events, &config, ConnectionEventKind::Established);
                let reason = match stream {
                    Connection::Plain(stream) => serve(&shared, &config, stream, &mut buffer).await,
                    Connection::Tls(stream) => serve(&shared, &config, *stream, &mut buffer).await,
                };
                set_discarding(true);
                shared.bump(|s| s.failures += 1);
                tracing::warn!(peer = config.remote_node_id, address = %config.address, %reason, "peer connection lost");
                emit(&events, &config, ConnectionEventKind::Failed { reason });
            }
            Err(reason) => {
                set_discarding(true);
                shared.bump(|s| s.failures += 1);
                tracing::debug!(peer = config.remote_node_id, address = %config.address, %reason, "peer connection attempt failed");
                emit(&events, &config, ConnectionEventKind::Failed { reason });
            }
        }
        let delay = glommio::timer::sleep(backoff.next_delay());
        let redial = poll_fn(|cx| {
            if shared.redial.get() {
                return Poll::Ready(());
            }
            *shared.backoff_wait.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        });
        delay.or(redial).await;
        shared.backoff_wait.borrow_mut().take();
        if shared.redial.take() {
            tracing::debug!(peer = config.remote_node_id, address = %config.address, "redialing at once: the peer is back");
            backoff.reset();
        }
    }
}

/// An established outbound connection.
enum Connection {
    Plain(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

async fn connect(config: &PeerConfig) -> Result<Connection, String> {
    let mut stream = TcpStream::connect_timeout(config.address.as_str(), config.connect_timeout)
        .await
        .map_err(|e| format!("connect to {} failed: {e}", config.address))?;
    stream.set_nodelay(true).map_err(|e| format!("set TCP_NODELAY failed: {e}"))?;
    let local = &config.local;
    let handshake = async {
        match &config.tls {
            None => {
                handshake::dial(&mut stream, local, config.remote_node_id, config.snapshot_connection).await?;
                Ok(Connection::Plain(stream))
            }
            Some(tls) => {
                let stream = peer_tls::dial(stream, tls, &config.address, local, config.remote_node_id, config.snapshot_connection).await?;
                Ok(Connection::Tls(Box::new(stream)))
            }
        }
    };
    let deadline = async {
        glommio::timer::sleep(config.handshake_timeout).await;
        Err(HandshakeError::TimedOut)
    };
    match handshake.or(deadline).await {
        Ok(connection) => Ok(connection),
        Err(e @ (HandshakeError::RefusedByPeer(_) | HandshakeError::Tls(_))) => {
            tracing::warn!(peer = config.remote_node_id, address = %config.address, "{e}");
            Err(e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Runs an established connection until it fails; returns why.
async fn serve<M: Message, S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared<M>,
    config: &PeerConfig,
    stream: S,
    buffer: &mut BytesMut,
) -> String {
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    // The acceptor never sends after the handshake, so any read completion means trouble;
    // reading is how an idle connection learns that the other side went away.
    let watch_close = async move {
        let mut byte = [0u8; 1];
        match reader.read(&mut byte).await {
            Ok(0) => "peer closed the connection".to_string(),
            Ok(_) => "peer sent unexpected data after the handshake".to_string(),
            Err(e) => format!("connection failed: {e}"),
        }
    };
    let write_loop = async move {
        loop {
            poll_fn(|cx| shared.queue.borrow_mut().poll_work(cx)).await;
            buffer.clear();
            let (ordinary, bulk) = shared.queue.borrow_mut().fill_write(buffer, config.bulk_frame_bytes);
            let taken = u64::from(ordinary) + u64::from(bulk);
            if taken == 0 {
                return "peer shut down".to_string();
            }
            // Flushing matters over TLS, which may hold a record back; a plain socket's is a no-op.
            if let Err(e) = async {
                writer.write_all(buffer).await?;
                writer.flush().await
            }
            .await
            {
                shared.bump(|s| s.messages_dropped += taken);
                return format!("write failed: {e}");
            }
            let written = buffer.len() as u64;
            shared.bump(|s| {
                s.writes += 1;
                s.messages_sent += taken;
                s.bytes_sent += written;
            });
            if buffer.capacity() > 4 * config.bulk_frame_bytes.max(crate::codec::READ_CHUNK) {
                // Do not keep a huge buffer around after one large frame.
                *buffer = BytesMut::with_capacity(crate::codec::READ_CHUNK);
            }
            glommio::yield_if_needed().await;
        }
    };
    write_loop.or(watch_close).await
}
