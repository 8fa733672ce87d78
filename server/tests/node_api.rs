//! The Node control API (api.md §3) through a real `GrpcServer` on 127.0.0.1 and a tonic
//! client: `NodeApi` validates Bootstrap/Join/Leave before calling a fake `NodeControl`
//! that records its calls, passes the fake's statuses through, and streams an `EventHub`
//! to Watch callers (current state first, then published events; slow watchers are ended,
//! gone watchers are removed).
mod grpc_support;

use std::cell::Cell;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::rc::Rc;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use conclave_server::grpc::{GrpcServer, Router, Status};
use conclave_server::net::bind_exclusive;
use conclave_server::service::events::{leader_updated, member_ready};
use conclave_server::service::node_control::{GroupSpec, LocalFuture, MemberRole, MemberSpec, NodeControl};
use conclave_server::service::{EventHub, NodeApi};
use glommio::timer::Timer;
use glommio::{LocalExecutorBuilder, Placement};
use grpc_support::client::atomix::multiraft::v1::{
    event, member_config::Role, node_client::NodeClient, BootstrapRequest, Event, GroupConfig, JoinRequest, LeaveRequest, MemberConfig,
    WatchRequest,
};
use grpc_support::{test_config, TEST_IO_MEMORY};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Streaming};

/// The node id the test node's events name.
const NODE_ID: u64 = 1;
/// The fake node refuses every request about this group.
const REFUSED_GROUP: u32 = 13;
const STEP: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Bootstrap(GroupSpec),
    Join(GroupSpec),
    Leave(u32),
}

/// A `NodeControl` that records its calls and refuses [`REFUSED_GROUP`].
struct FakeNode {
    calls: Arc<Mutex<Vec<Call>>>,
}

impl FakeNode {
    fn answer(&self, call: Call, group_id: u32) -> LocalFuture<Result<(), Status>> {
        self.calls.lock().expect("calls").push(call);
        let outcome = match group_id {
            REFUSED_GROUP => Err(Status::failed_precondition(format!("group {group_id}: the fake node refuses it"))),
            _ => Ok(()),
        };
        Box::pin(async move { outcome })
    }
}

impl NodeControl for FakeNode {
    fn bootstrap(&self, group: GroupSpec) -> LocalFuture<Result<(), Status>> {
        let id = group.group_id;
        self.answer(Call::Bootstrap(group), id)
    }
    fn join(&self, group: GroupSpec) -> LocalFuture<Result<(), Status>> {
        let id = group.group_id;
        self.answer(Call::Join(group), id)
    }
    fn leave(&self, group_id: u32) -> LocalFuture<Result<(), Status>> {
        self.answer(Call::Leave(group_id), group_id)
    }
}

enum Command {
    /// Publishes `leader_updated(1, term, NODE_ID)` for each term, in order.
    Publish(RangeInclusive<u64>),
    Subscribers(mpsc::Sender<usize>),
    Shutdown,
}

/// A `GrpcServer` serving only the Node API, in a glommio executor thread.
struct NodeServer {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl NodeServer {
    fn start() -> NodeServer {
        let listener = bind_exclusive("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (commands, receiver) = mpsc::channel();
        let node_calls = Arc::clone(&calls);
        let handle = LocalExecutorBuilder::new(Placement::Unbound)
            .name("node-api-test")
            .io_memory(TEST_IO_MEMORY)
            .spawn(move || async move {
                // The node's state is "the last term published"; the current state a new
                // watcher gets says so.
                let last_term = Rc::new(Cell::new(0));
                let state = Rc::clone(&last_term);
                let hub = Rc::new(EventHub::new(Box::new(move || vec![member_ready(1, NODE_ID), leader_updated(1, state.get(), NODE_ID)])));
                let api = Rc::new(NodeApi::new(Rc::new(FakeNode { calls: node_calls }), Rc::clone(&hub)));
                let mut router = Router::new();
                api.register(&mut router);
                let server = GrpcServer::new(router, test_config());
                let control = server.clone();
                glommio::spawn_local(async move {
                    loop {
                        match receiver.try_recv() {
                            Ok(Command::Publish(terms)) => {
                                for term in terms {
                                    last_term.set(term);
                                    hub.publish(leader_updated(1, term, NODE_ID));
                                }
                            }
                            Ok(Command::Subscribers(reply)) => {
                                let _ = reply.send(hub.subscriber_count());
                            }
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
            })
            .expect("spawn the server executor");
        let thread = std::thread::spawn(move || handle.join().expect("server executor"));
        NodeServer { addr, calls, commands, thread: Some(thread) }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(format!("http://{}", self.addr)).expect("url")
    }

    async fn client(&self) -> NodeClient<Channel> {
        NodeClient::new(self.endpoint().connect().await.expect("connect"))
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    fn publish(&self, terms: RangeInclusive<u64>) {
        self.commands.send(Command::Publish(terms)).expect("server alive");
    }

    async fn subscribers(&self) -> usize {
        let (reply, answer) = mpsc::channel();
        self.commands.send(Command::Subscribers(reply)).expect("server alive");
        let started = Instant::now();
        loop {
            if let Ok(count) = answer.try_recv() {
                return count;
            }
            assert!(started.elapsed() < STEP, "the server did not answer in time");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits (bounded) until the hub has `expected` subscribers.
    async fn wait_for_subscribers(&self, expected: usize) {
        let started = Instant::now();
        loop {
            let count = self.subscribers().await;
            if count == expected {
                return;
            }
            assert!(started.elapsed() < STEP, "{count} subscribers, expected {expected}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn member(node_id: u32, role: Role, port: i32) -> MemberConfig {
    MemberConfig { node_id, host: format!("node-{node_id}.local"), port, role: role as i32 }
}

fn valid_group(group_id: u32) -> GroupConfig {
    GroupConfig { group_id, members: vec![member(1, Role::Member, 5680), member(2, Role::Observer, 1), member(3, Role::Witness, 65535)] }
}

fn spec_of(group_id: u32) -> GroupSpec {
    let member = |node_id: u64, role, port| MemberSpec { node_id, host: format!("node-{node_id}.local"), port, role };
    GroupSpec {
        group_id,
        members: vec![member(1, MemberRole::Member, 5680), member(2, MemberRole::Observer, 1), member(3, MemberRole::Witness, 65535)],
    }
}

/// Invalid group configurations, each with a phrase its error message must contain.
fn invalid_groups() -> Vec<(Option<GroupConfig>, &'static str)> {
    let with = |change: &dyn Fn(&mut GroupConfig)| {
        let mut group = valid_group(4);
        change(&mut group);
        Some(group)
    };
    vec![
        (None, "no group"),
        (with(&|g| g.group_id = 0), "group_id 0"),
        (with(&|g| g.members.clear()), "no members"),
        (with(&|g| g.members[1].node_id = 0), "node_id 0"),
        (with(&|g| g.members[2].node_id = 1), "more than once"),
        (with(&|g| g.members[0].role = Role::Unknown as i32), "UNKNOWN"),
        (with(&|g| g.members[0].role = 7), "role 7"),
        (with(&|g| g.members[1].host.clear()), "host is empty"),
        (with(&|g| g.members[1].port = 0), "port 0"),
        (with(&|g| g.members[1].port = -1), "port -1"),
        (with(&|g| g.members[2].port = 65536), "port 65536"),
        (with(&|g| g.members[2].port = 70000), "port 70000"),
    ]
}

#[tokio::test]
async fn invalid_requests_are_refused_without_reaching_the_node() {
    let server = NodeServer::start();
    let mut client = server.client().await;
    for (group, phrase) in invalid_groups() {
        let refused = client.bootstrap(BootstrapRequest { group: group.clone() }).await.expect_err("invalid Bootstrap");
        assert_eq!(refused.code(), Code::InvalidArgument, "{group:?}: {}", refused.message());
        assert!(refused.message().contains(phrase), "{:?} lacks {phrase:?}", refused.message());
        assert!(refused.message().starts_with("Bootstrap: "), "{}", refused.message());
        let refused = client.join(JoinRequest { group: group.clone() }).await.expect_err("invalid Join");
        assert_eq!(refused.code(), Code::InvalidArgument, "{group:?}: {}", refused.message());
        assert!(refused.message().contains(phrase), "{:?} lacks {phrase:?}", refused.message());
    }
    let refused = client.leave(LeaveRequest { group_id: 0 }).await.expect_err("Leave of group 0");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("group_id 0"), "{}", refused.message());
    assert_eq!(server.calls(), vec![], "no invalid request may reach the node");
}

#[tokio::test]
async fn valid_requests_reach_the_node_and_its_statuses_pass_through() {
    let server = NodeServer::start();
    let mut client = server.client().await;
    client.bootstrap(BootstrapRequest { group: Some(valid_group(4)) }).await.expect("Bootstrap");
    client.join(JoinRequest { group: Some(valid_group(5)) }).await.expect("Join");
    client.leave(LeaveRequest { group_id: 6 }).await.expect("Leave");
    assert_eq!(server.calls(), vec![Call::Bootstrap(spec_of(4)), Call::Join(spec_of(5)), Call::Leave(6)]);

    let refusals = [
        client.bootstrap(BootstrapRequest { group: Some(valid_group(REFUSED_GROUP)) }).await.map(|_| ()),
        client.join(JoinRequest { group: Some(valid_group(REFUSED_GROUP)) }).await.map(|_| ()),
        client.leave(LeaveRequest { group_id: REFUSED_GROUP }).await.map(|_| ()),
    ];
    for refused in refusals {
        let status = refused.expect_err("the fake refuses the group");
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "group 13: the fake node refuses it");
    }
    assert_eq!(
        server.calls()[3..],
        [Call::Bootstrap(spec_of(REFUSED_GROUP)), Call::Join(spec_of(REFUSED_GROUP)), Call::Leave(REFUSED_GROUP)]
    );
}

/// The next event of a Watch stream, within [`STEP`].
async fn next(stream: &mut Streaming<Event>) -> Result<event::Event, tonic::Status> {
    let message = tokio::time::timeout(STEP, stream.message()).await.expect("an event in time")?;
    let event = message.expect("the stream is still open");
    assert!(event.timestamp.is_some_and(|t| t.seconds > 0), "stamped: {event:?}");
    Ok(event.event.expect("an event"))
}

async fn next_term(stream: &mut Streaming<Event>) -> u64 {
    match next(stream).await.expect("no error") {
        event::Event::LeaderUpdated(update) => {
            assert_eq!((update.group_id, update.leader), (1, NODE_ID));
            update.term
        }
        other => panic!("expected a leader update, got {other:?}"),
    }
}

/// Opens a Watch and reads its current state: the member is ready, the leader's term.
async fn watch(client: &mut NodeClient<Channel>) -> (Streaming<Event>, u64) {
    let mut stream = client.watch(WatchRequest {}).await.expect("Watch").into_inner();
    match next(&mut stream).await.expect("no error") {
        event::Event::MemberReady(ready) => assert_eq!((ready.group_id, ready.node_id), (1, NODE_ID)),
        other => panic!("expected member_ready first, got {other:?}"),
    }
    let term = next_term(&mut stream).await;
    (stream, term)
}

async fn terms(stream: &mut Streaming<Event>, count: usize) -> Vec<u64> {
    let mut terms = Vec::with_capacity(count);
    for _ in 0..count {
        terms.push(next_term(stream).await);
    }
    terms
}

#[tokio::test]
async fn watchers_get_the_current_state_then_every_event_in_order() {
    let server = NodeServer::start();
    let mut client = server.client().await;
    let (mut first, term) = watch(&mut client).await;
    assert_eq!(term, 0);
    server.publish(1..=3);
    assert_eq!(terms(&mut first, 3).await, [1, 2, 3]);
    // Subscribed after term 3: its current state says 3, then it misses nothing.
    let (mut second, term) = watch(&mut client).await;
    assert_eq!(term, 3);
    assert_eq!(server.subscribers().await, 2);
    server.publish(4..=200);
    let expected: Vec<u64> = (4..=200).collect();
    assert_eq!(terms(&mut first, expected.len()).await, expected);
    assert_eq!(terms(&mut second, expected.len()).await, expected);

    // A watcher whose client leaves is removed from the hub.
    drop(second);
    server.wait_for_subscribers(1).await;
    server.publish(201..=201);
    assert_eq!(next_term(&mut first).await, 201);
}

#[tokio::test]
async fn a_watcher_that_falls_behind_is_ended_while_the_other_keeps_up() {
    let server = NodeServer::start();
    let mut fast_client = server.client().await;
    // Small HTTP/2 windows, so the slow watcher's backlog reaches the hub quickly.
    let slow_channel =
        server.endpoint().initial_stream_window_size(65_535).initial_connection_window_size(65_535).connect().await.expect("connect");
    let mut slow_client = NodeClient::new(slow_channel);
    let (mut fast, _) = watch(&mut fast_client).await;
    let (mut slow, _) = watch(&mut slow_client).await;

    // 20,000 events, each batch read by the fast watcher before the next is published; the
    // slow one reads nothing. Its backlog (HTTP/2 windows, the send queue, then the hub's
    // 4096) is far smaller, so it must be ended.
    const BATCH: u64 = 1000;
    const TOTAL: u64 = 20_000;
    for start in (1..=TOTAL).step_by(BATCH as usize) {
        server.publish(start..=start + BATCH - 1);
        let expected: Vec<u64> = (start..start + BATCH).collect();
        assert_eq!(terms(&mut fast, BATCH as usize).await, expected);
    }
    server.wait_for_subscribers(1).await;

    // The slow watcher reads what reached it, in order, then RESOURCE_EXHAUSTED.
    let mut expected_term = 1;
    let status = loop {
        assert!(expected_term <= TOTAL, "the slow watcher received every event");
        match next(&mut slow).await {
            Ok(event::Event::LeaderUpdated(update)) => {
                assert_eq!(update.term, expected_term, "in order, no gap");
                expected_term += 1;
            }
            Ok(other) => panic!("unexpected event {other:?}"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    assert!(status.message().contains("fell behind"), "{}", status.message());

    server.publish(TOTAL + 1..=TOTAL + 10);
    assert_eq!(terms(&mut fast, 10).await, (TOTAL + 1..=TOTAL + 10).collect::<Vec<_>>());
}
