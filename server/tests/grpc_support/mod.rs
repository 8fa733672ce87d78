//! Test harness shared by the `grpc_*` tests: a real `GrpcServer` on 127.0.0.1 running in
//! a glommio executor thread, with test handlers mounted on the public
//! `atomix.runtime.election.v1.LeaderElection` paths (`GetTerm`, `Watch`) and the health
//! service. The request's election name selects the behaviour:
//!
//! GetTerm: `echo` → term 7 naming the connection; `fail:<code>` → that status with a
//! non-ASCII message; `sleep:<ms>` → answers after sleeping; `big:<n>` → a leader name of n
//! bytes (a sleep is recorded as it begins). Watch: `count:<n>` → n terms sent with backpressure, then OK; `flood:<size>` → one
//! message of `size` bytes every millisecond, never waiting (overflow ends the stream);
//! `fail:<code>` → that status before any message; `hold` → the current term, then waits
//! for the connection to close and records it. `/test.Echo/Chat` is a bidirectional stream
//! answering each request message with the same bytes as it is read.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conclave_proto::atomix::runtime::election::v1::{GetTermRequest, GetTermResponse, Term, WatchRequest, WatchResponse};
use conclave_server::grpc::{
    CallContext, Code, ConnectionInfo, ConnectionObserver, GrpcServer, HealthService, OverflowPolicy, Router, ServerConfig, ServingStatus,
    Status, StreamLimits, StreamSink,
};
use conclave_server::net::bind_exclusive;
use glommio::timer::Timer;
use glommio::{LocalExecutorBuilder, Placement};
use prost::Message as _;

pub mod client {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/_test_client.rs"));
}

pub const GET_TERM: &str = "/atomix.runtime.election.v1.LeaderElection/GetTerm";
pub const WATCH: &str = "/atomix.runtime.election.v1.LeaderElection/Watch";
pub const CHAT: &str = "/test.Echo/Chat";

/// Locked I/O memory per test executor (`ulimit -l` is 8 MiB on these machines).
pub const TEST_IO_MEMORY: usize = 512 << 10;

/// Something the server side observed, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Opened(u64),
    Closed(u64),
    HandlerSawClose(u64),
    /// A `sleep:<ms>` GetTerm began its sleep.
    Sleeping(u64),
    Drained,
}

enum Command {
    SetHealth(String, ServingStatus),
    Shutdown,
}

/// A running test server; shuts down and joins its thread on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub events: Arc<Mutex<Vec<Event>>>,
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

struct RecordingObserver {
    events: Arc<Mutex<Vec<Event>>>,
}

impl ConnectionObserver for RecordingObserver {
    fn connection_opened(&self, connection: &Rc<ConnectionInfo>) {
        self.events.lock().expect("events").push(Event::Opened(connection.id()));
    }

    fn connection_closed(&self, connection: &Rc<ConnectionInfo>) {
        assert!(connection.is_closed());
        self.events.lock().expect("events").push(Event::Closed(connection.id()));
    }
}

/// Limits of the test Watch route: small, so a slow reader overflows quickly.
pub const WATCH_LIMITS: StreamLimits =
    StreamLimits { max_queued_messages: 64, max_queued_bytes: 256 << 10, overflow: OverflowPolicy::EndStream };

/// A config with small limits and fast timers, suited to tests.
pub fn test_config() -> ServerConfig {
    ServerConfig {
        max_recv_message_len: 64 << 10,
        max_send_message_len: 64 << 10,
        shutdown_grace: Duration::from_secs(2),
        ..ServerConfig::default()
    }
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::start_with(test_config())
    }

    pub fn start_with(config: ServerConfig) -> TestServer {
        let listener = bind_exclusive("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let events = Arc::new(Mutex::new(Vec::new()));
        let (commands, receiver) = mpsc::channel();
        let server_events = Arc::clone(&events);
        let handle = LocalExecutorBuilder::new(Placement::Unbound)
            .name("grpc-test")
            .io_memory(TEST_IO_MEMORY)
            .spawn(move || async move {
                let health = HealthService::new();
                let mut router = test_router(Arc::clone(&server_events));
                health.register(&mut router);
                let observer = Rc::new(RecordingObserver { events: Arc::clone(&server_events) });
                let server = GrpcServer::with_observer(router, config, Some(observer));
                let control = server.clone();
                glommio::spawn_local(async move {
                    loop {
                        match receiver.try_recv() {
                            Ok(Command::SetHealth(service, status)) => health.set_status(&service, status),
                            Ok(Command::Shutdown) | Err(mpsc::TryRecvError::Disconnected) => {
                                control.shutdown();
                                return;
                            }
                            Err(mpsc::TryRecvError::Empty) => {
                                Timer::new(Duration::from_millis(2)).await;
                            }
                        }
                    }
                })
                .detach();
                server.serve(listener.into_glommio()).await;
                server_events.lock().expect("events").push(Event::Drained);
            })
            .expect("spawn the server executor");
        let thread = std::thread::spawn(move || handle.join().expect("server executor"));
        TestServer { addr, events, commands, thread: Some(thread) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_health(&self, service: &str, status: ServingStatus) {
        self.commands.send(Command::SetHealth(service.to_owned(), status)).expect("server alive");
    }

    /// Starts graceful shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }

    /// Shuts down and waits for the executor thread; returns how long draining took.
    pub fn shutdown(mut self) -> Duration {
        let started = Instant::now();
        self.begin_shutdown();
        if let Some(thread) = self.thread.take() {
            thread.join().expect("server thread");
        }
        started.elapsed()
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("events").clone()
    }

    /// Waits up to `limit` for an event matching `predicate` (asynchronously, so the
    /// client's runtime keeps running meanwhile).
    pub async fn wait_for_event(&self, limit: Duration, predicate: impl Fn(&Event) -> bool) -> Option<Event> {
        let started = Instant::now();
        loop {
            if let Some(event) = self.events().into_iter().find(|event| predicate(event)) {
                return Some(event);
            }
            if started.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.commands.send(Command::Shutdown);
            let _ = thread.join();
        }
    }
}

fn name_of(id: &Option<conclave_proto::atomix::runtime::v1::PrimitiveId>) -> String {
    id.as_ref().map(|id| id.name.clone()).unwrap_or_default()
}

fn parse_arg<T: std::str::FromStr>(name: &str, prefix: &str) -> Option<T> {
    name.strip_prefix(prefix)?.parse().ok()
}

/// The status a `fail:<code>` request asks for, with a message needing percent-encoding.
pub fn failure_for(code: u32) -> Status {
    let code = Code::from_wire(code).unwrap_or(Code::Unknown);
    Status::new(code, format!("test failure {} — 100% «intended»", code.name()))
}

fn term(number: u64, leader: String) -> Term {
    Term { term: number, leader, candidates: vec!["a".into(), "b".into()] }
}

fn test_router(events: Arc<Mutex<Vec<Event>>>) -> Router {
    let mut router = Router::new();
    let sleep_events = Arc::clone(&events);
    router.unary_message(GET_TERM, move |request: GetTermRequest, ctx: CallContext| {
        let events = Arc::clone(&sleep_events);
        async move {
            let name = name_of(&request.id);
            if let Some(code) = parse_arg::<u32>(&name, "fail:") {
                return Err(failure_for(code));
            }
            if let Some(ms) = parse_arg::<u64>(&name, "sleep:") {
                events.lock().expect("events").push(Event::Sleeping(ms));
                Timer::new(Duration::from_millis(ms)).await;
            }
            if let Some(len) = parse_arg::<usize>(&name, "big:") {
                return Ok(GetTermResponse { term: Some(term(1, "x".repeat(len))) });
            }
            Ok(GetTermResponse { term: Some(term(7, format!("connection-{}", ctx.connection().id()))) })
        }
    });
    router.server_streaming_message(WATCH, WATCH_LIMITS, move |request: WatchRequest, ctx, sink| {
        let events = Arc::clone(&events);
        watch(name_of(&request.id), ctx, sink, events)
    });
    router.bidi_streaming(CHAT, WATCH_LIMITS, |mut requests, _ctx, sink| async move {
        while let Some(message) = requests.message().await? {
            sink.send(message).await.map_err(|error| Status::internal(error.to_string()))?;
        }
        Ok(())
    });
    router
}

async fn watch(name: String, ctx: CallContext, sink: StreamSink, events: Arc<Mutex<Vec<Event>>>) -> Result<(), Status> {
    if let Some(code) = parse_arg::<u32>(&name, "fail:") {
        return Err(failure_for(code));
    }
    if let Some(count) = parse_arg::<u64>(&name, "count:") {
        for number in 0..count {
            let response = WatchResponse { term: Some(term(number, String::new())) };
            sink.send_message(&response).await.map_err(|error| Status::internal(error.to_string()))?;
        }
        return Ok(());
    }
    if let Some(size) = parse_arg::<usize>(&name, "flood:") {
        let payload = Bytes::from(WatchResponse { term: Some(term(0, "f".repeat(size))) }.encode_to_vec());
        loop {
            if sink.try_send(payload.clone()).is_err() {
                // Overflowed or closed: the layer ends the stream with the right status.
                return std::future::pending().await;
            }
            Timer::new(Duration::from_millis(1)).await;
        }
    }
    if name == "hold" {
        sink.send_message(&WatchResponse { term: Some(term(1, "held".into())) })
            .await
            .map_err(|error| Status::internal(error.to_string()))?;
        // A separate task: the layer drops this handler as soon as the connection closes.
        let connection = Rc::clone(ctx.connection());
        glommio::spawn_local(async move {
            connection.closed().await;
            events.lock().expect("events").push(Event::HandlerSawClose(connection.id()));
        })
        .detach();
        return std::future::pending().await;
    }
    Err(Status::invalid_argument(format!("unknown test watch {name:?}")))
}
