//! One client connection: the TLS handshake on TLS listeners (see [`super::tls`]), the
//! HTTP/2 handshake (both within `handshake_timeout`), accepting request streams and
//! serving them (unary calls in the connection's own [`CallTable`], polled by this task;
//! server and bidirectional streams in a task each), keepalive pings and idle timeouts on
//! glommio timers, and graceful shutdown (GOAWAY, then a bounded wait for in-flight calls).
use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::net::TcpStream;
use glommio::timer::Timer;
use h2::server::{Connection, SendResponse};
use h2::{Ping, PingPong, RecvStream};
use http::Request;

use super::call::{is_streaming, serve_call, CallEnv};
use super::calls::CallTable;
use super::io::GlommioIo;
use super::router::ConnectionInfo;
use super::server::{ServerConfig, ServerShared};
use crate::metrics::edge;

/// Source of process-wide unique connection ids (shared by every shard).
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Serves `stream` until the client leaves, keepalive fails, the idle timeout passes, or
/// the server shuts down. The observer hears about the connection on both ends.
pub(crate) async fn serve_connection(server: Rc<ServerShared>, stream: TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY on a client connection");
    }
    let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
    let info = Rc::new(ConnectionInfo::new(id, stream.peer_addr().ok()));
    let _open = server.track_connection();
    if let Some(observer) = &server.observer {
        observer.connection_opened(&info);
    }
    // Unary calls still in the table when the connection ends are dropped after it is
    // marked closed, as their own tasks would have ended when they saw it close.
    let mut calls = CallTable::new();
    let mut timer = Timer::new(server.config.handshake_timeout);
    let tls = server.tls.borrow().clone();
    let io = match tls {
        None => Some(GlommioIo::new(stream)),
        Some(tls) => match bounded(&server, &mut timer, super::tls::accept(&tls, stream, info.peer_addr(), id)).await {
            Bounded::Done(accepted) => accepted.map(GlommioIo::tls),
            Bounded::TimedOut => {
                tracing::warn!(
                    listener = tls.listener,
                    peer = ?info.peer_addr(),
                    connection = id,
                    "refusing a connection: its TLS handshake did not complete within {:?}",
                    server.config.handshake_timeout
                );
                None
            }
            Bounded::ShuttingDown => None,
        },
    };
    if let Some(io) = io {
        let handshake = h2_builder(&server.config).handshake::<_, Bytes>(io);
        match bounded(&server, &mut timer, handshake).await {
            Bounded::Done(Ok(connection)) => drive(&server, connection, &info, &mut calls).await,
            Bounded::Done(Err(error)) => tracing::debug!(connection = id, %error, "HTTP/2 handshake failed"),
            Bounded::TimedOut | Bounded::ShuttingDown => tracing::debug!(connection = id, "HTTP/2 handshake did not complete"),
        }
    }
    info.mark_closed();
    drop(calls);
    if let Some(observer) = &server.observer {
        observer.connection_closed(&info);
    }
}

type H2Connection = Connection<GlommioIo, Bytes>;

fn h2_builder(config: &ServerConfig) -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(config.initial_stream_window)
        .initial_connection_window_size(config.initial_connection_window)
        .max_frame_size(config.max_frame_size)
        .max_header_list_size(config.max_header_list_size)
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_send_buffer_size(config.max_send_buffer_size);
    builder
}

/// How a handshake step bounded by the handshake timer ended.
enum Bounded<T> {
    Done(T),
    TimedOut,
    ShuttingDown,
}

/// Runs `step` until it completes, `timer` fires or the server shuts down.
async fn bounded<T>(server: &ServerShared, timer: &mut Timer, step: impl Future<Output = T>) -> Bounded<T> {
    let mut step = std::pin::pin!(step);
    let mut shutdown = server.shutdown.fired();
    poll_fn(|cx| {
        if let Poll::Ready(result) = step.as_mut().poll(cx) {
            return Poll::Ready(Bounded::Done(result));
        }
        if Pin::new(&mut *timer).poll(cx).is_ready() {
            return Poll::Ready(Bounded::TimedOut);
        }
        if shutdown.poll_fired(cx).is_ready() {
            return Poll::Ready(Bounded::ShuttingDown);
        }
        Poll::Pending
    })
    .await
}

enum Event {
    Call(Box<(Request<RecvStream>, SendResponse<Bytes>)>),
    Closed,
    Failed(h2::Error),
    ShutdownRequested,
    GraceExpired,
    KeepaliveDue,
    Pong,
    IdleCheck,
}

/// Keepalive: a ping every `interval`; no pong within `timeout` closes the connection.
struct Keepalive {
    ping_pong: PingPong,
    interval: Duration,
    timeout: Duration,
    timer: Timer,
    awaiting_pong: bool,
}

async fn drive(server: &ServerShared, mut connection: H2Connection, info: &Rc<ConnectionInfo>, calls: &mut CallTable) {
    let config = &server.config;
    let env = Rc::new(CallEnv {
        router: Rc::clone(&server.router),
        config: Rc::clone(&server.config),
        connection: Rc::clone(info),
        shutdown: server.shutdown.clone(),
        call_observer: server.call_observer.borrow().clone(),
    });
    let mut keepalive = match (config.keepalive_interval, connection.ping_pong()) {
        (Some(interval), Some(ping_pong)) => {
            Some(Keepalive { ping_pong, interval, timeout: config.keepalive_timeout, timer: Timer::new(interval), awaiting_pong: false })
        }
        _ => None,
    };
    let active_calls = Rc::new(Cell::new(0usize));
    let last_activity = Rc::new(Cell::new(Instant::now()));
    let mut idle_timer = config.idle_timeout.map(Timer::new);
    let mut shutdown = server.shutdown.fired();
    let mut grace_timer: Option<Timer> = None;
    let mut turn_wakers: Option<TurnWakers> = None;
    loop {
        let event = poll_fn(|cx| {
            let turn = match turn_wakers.take() {
                Some(turn) if turn.io.0.task.will_wake(cx.waker()) => turn,
                _ => TurnWakers::new(cx.waker()),
            };
            turn.set_running(true);
            let mut io_cx = Context::from_waker(&turn.io.1);
            let mut drive_io = |connection: &mut H2Connection| {
                turn.io.0.woken.store(false, Ordering::Relaxed);
                poll_accept(connection, &mut io_cx)
            };
            let mut calls_cx = Context::from_waker(&turn.calls.1);
            let mut run_calls = |calls: &mut CallTable| {
                turn.calls.0.woken.store(false, Ordering::Relaxed);
                calls.poll_calls(&mut calls_cx)
            };
            let event = (|| {
                // The calls first: the responses they queue in h2 go out together when the
                // connection is polled below.
                run_calls(calls);
                if grace_timer.is_none() && shutdown.poll_fired(cx).is_ready() {
                    return Poll::Ready(Event::ShutdownRequested);
                }
                if let Some(timer) = grace_timer.as_mut() {
                    if Pin::new(timer).poll(cx).is_ready() {
                        return Poll::Ready(Event::GraceExpired);
                    }
                }
                if let Poll::Ready(event) = drive_io(&mut connection) {
                    return Poll::Ready(event);
                }
                // Calls the connection just woke (a request's body arrived, say) run now, and
                // the answers of those that ended go out in this turn's flush.
                if run_calls(calls) > 0 {
                    if let Poll::Ready(event) = drive_io(&mut connection) {
                        return Poll::Ready(event);
                    }
                }
                if let Some(keepalive) = keepalive.as_mut() {
                    if keepalive.awaiting_pong && keepalive.ping_pong.poll_pong(cx).is_ready() {
                        return Poll::Ready(Event::Pong);
                    }
                    if Pin::new(&mut keepalive.timer).poll(cx).is_ready() {
                        return Poll::Ready(Event::KeepaliveDue);
                    }
                }
                if let Some(timer) = idle_timer.as_mut() {
                    if Pin::new(timer).poll(cx).is_ready() {
                        return Poll::Ready(Event::IdleCheck);
                    }
                }
                Poll::Pending
            })();
            turn.set_running(false);
            // A wake since the connection or the calls were last polled (not one this turn
            // handled) schedules the task again.
            if turn.io.0.woken.swap(false, Ordering::Relaxed) | turn.calls.0.woken.swap(false, Ordering::Relaxed) {
                cx.waker().wake_by_ref();
            }
            turn_wakers = Some(turn);
            event
        })
        .await;
        match event {
            Event::Call(call) => {
                let (request, respond) = *call;
                start_call(request, respond, &env, calls, &active_calls, &last_activity);
            }
            Event::Closed => return,
            Event::Failed(error) => {
                tracing::debug!(connection = info.id(), %error, "connection ended with an error");
                return;
            }
            Event::ShutdownRequested => {
                connection.graceful_shutdown();
                grace_timer = Some(Timer::new(config.shutdown_grace));
            }
            Event::GraceExpired => {
                tracing::debug!(
                    connection = info.id(),
                    calls = active_calls.get(),
                    unary = calls.len(),
                    "shutdown grace expired; closing the connection with calls in flight"
                );
                connection.abrupt_shutdown(h2::Reason::NO_ERROR);
                return;
            }
            Event::Pong => {
                let keepalive = keepalive.as_mut().unwrap_or_else(|| unreachable!("pong without keepalive"));
                keepalive.awaiting_pong = false;
                keepalive.timer.reset(keepalive.interval);
            }
            Event::KeepaliveDue => {
                let keepalive = keepalive.as_mut().unwrap_or_else(|| unreachable!("tick without keepalive"));
                if keepalive.awaiting_pong {
                    tracing::debug!(connection = info.id(), "keepalive ping unanswered; closing");
                    return;
                }
                match keepalive.ping_pong.send_ping(Ping::opaque()) {
                    Ok(()) => {
                        keepalive.awaiting_pong = true;
                        keepalive.timer.reset(keepalive.timeout);
                    }
                    Err(error) => {
                        tracing::debug!(connection = info.id(), %error, "could not send a keepalive ping");
                        keepalive.timer.reset(keepalive.interval);
                    }
                }
            }
            Event::IdleCheck => {
                let idle_timeout = config.idle_timeout.unwrap_or_else(|| unreachable!("idle check without timeout"));
                let idle_for = last_activity.get().elapsed();
                let timer = idle_timer.as_mut().unwrap_or_else(|| unreachable!("idle check without timer"));
                if active_calls.get() > 0 {
                    timer.reset(idle_timeout);
                } else if idle_for < idle_timeout {
                    timer.reset(idle_timeout - idle_for);
                } else if grace_timer.is_none() {
                    tracing::debug!(connection = info.id(), "idle timeout; sending GOAWAY");
                    connection.graceful_shutdown();
                    grace_timer = Some(Timer::new(config.shutdown_grace));
                    idle_timer = None;
                } else {
                    idle_timer = None;
                }
            }
        }
    }
}

/// The wakers h2 and the call table hold for the connection's task. A call of this
/// connection that sends its answer runs inside the connection's task, and h2 wakes the
/// connection for it; a request body the connection reads wakes its call. Both are polled
/// again in the same turn anyway, so a wake while the task runs is only noted, and passed
/// on to the task when it came after the last poll of its side in the turn. Wakes from
/// elsewhere (the socket, the shard runtime's replies, streams served by their own tasks)
/// pass at once.
struct TurnWakers {
    io: (Arc<TurnWaker>, Waker),
    calls: (Arc<TurnWaker>, Waker),
}

impl TurnWakers {
    fn new(task: &Waker) -> TurnWakers {
        let side = || {
            let turn = Arc::new(TurnWaker { task: task.clone(), running: AtomicBool::new(false), woken: AtomicBool::new(false) });
            let waker = Waker::from(Arc::clone(&turn));
            (turn, waker)
        };
        TurnWakers { io: side(), calls: side() }
    }

    fn set_running(&self, running: bool) {
        self.io.0.running.store(running, Ordering::Relaxed);
        self.calls.0.running.store(running, Ordering::Relaxed);
    }
}

struct TurnWaker {
    task: Waker,
    running: AtomicBool,
    woken: AtomicBool,
}

impl Wake for TurnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.running.load(Ordering::Relaxed) {
            self.woken.store(true, Ordering::Relaxed);
        } else {
            self.task.wake_by_ref();
        }
    }
}

/// Drives the connection's I/O (reads frames, writes what the calls queued) and takes the
/// next request stream, if one came.
fn poll_accept(connection: &mut H2Connection, cx: &mut Context<'_>) -> Poll<Event> {
    match connection.poll_accept(cx) {
        Poll::Ready(Some(Ok((request, respond)))) => Poll::Ready(Event::Call(Box::new((request, respond)))),
        Poll::Ready(Some(Err(error))) => Poll::Ready(Event::Failed(error)),
        Poll::Ready(None) => Poll::Ready(Event::Closed),
        Poll::Pending => Poll::Pending,
    }
}

/// Serves a new request stream: a unary call (or one answered with an error at once) in
/// the connection's call table, a stream in a task of its own.
fn start_call(
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    env: &Rc<CallEnv>,
    calls: &mut CallTable,
    active_calls: &Rc<Cell<usize>>,
    last_activity: &Rc<Cell<Instant>>,
) {
    let streaming = is_streaming(&request, &env.router);
    let env = Rc::clone(env);
    let guard = ActiveCall { active_calls: Rc::clone(active_calls), last_activity: Rc::clone(last_activity) };
    active_calls.set(active_calls.get() + 1);
    let call = async move {
        let _guard = guard;
        serve_call(request, respond, env).await;
    };
    if streaming {
        edge::count(|e| e.call_tasks_spawned += 1);
        glommio::spawn_local(call).detach();
    } else {
        calls.push(call);
    }
}

/// Counts a call in flight for the idle timeout; updates the activity time when it ends.
struct ActiveCall {
    active_calls: Rc<Cell<usize>>,
    last_activity: Rc<Cell<Instant>>,
}

impl Drop for ActiveCall {
    fn drop(&mut self) {
        debug_assert!(self.active_calls.get() > 0);
        self.active_calls.set(self.active_calls.get() - 1);
        self.last_activity.set(Instant::now());
    }
}
