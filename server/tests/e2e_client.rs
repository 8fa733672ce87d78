//! End-to-end tests of the client API (`atomix.runtime.election.v1`) against a real
//! `conclave serve` process (two shards, four partitions) through a tonic client: every RPC
//! of `LeaderElections` and `LeaderElection`, the election semantics of api.md §4, Watch
//! ordering across partitions and shards, connection-bound sessions, health, and every
//! error code a client can provoke on one node.
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use conclave_server::routing::partition_of;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::client::atomix::multiraft::v1 as mr;
use support::client::atomix::runtime::election::v1 as rt;
use support::client::grpc::health::v1::health_check_response::ServingStatus;
use support::client::grpc::health::v1::health_client::HealthClient;
use support::client::grpc::health::v1::HealthCheckRequest;
use support::{bounded, expect, id, view, Node, NodeOptions, TestDir, CALL_TIMEOUT};
use tonic::transport::Channel;
use tonic::{Code, Status};

type Election = rt::leader_election_client::LeaderElectionClient<Channel>;
type Elections = rt::leader_elections_client::LeaderElectionsClient<Channel>;
type View = (u64, String, Vec<String>);

#[derive(Clone, Copy, Debug)]
enum Op {
    Enter,
    Withdraw,
    Anoint,
    Promote,
    Demote,
    Evict,
}

const OPS: [Op; 6] = [Op::Enter, Op::Withdraw, Op::Anoint, Op::Promote, Op::Demote, Op::Evict];

async fn apply(client: &mut Election, op: Op, election: &str, candidate: &str) -> Result<View, Status> {
    let (id, candidate) = (id(election), candidate.to_owned());
    let term = match op {
        Op::Enter => client.enter(bounded(rt::EnterRequest { id, candidate })).await?.into_inner().term,
        Op::Withdraw => client.withdraw(bounded(rt::WithdrawRequest { id, candidate })).await?.into_inner().term,
        Op::Anoint => client.anoint(bounded(rt::AnointRequest { id, candidate })).await?.into_inner().term,
        Op::Promote => client.promote(bounded(rt::PromoteRequest { id, candidate })).await?.into_inner().term,
        Op::Demote => client.demote(bounded(rt::DemoteRequest { id, candidate })).await?.into_inner().term,
        Op::Evict => client.evict(bounded(rt::EvictRequest { id, candidate })).await?.into_inner().term,
    };
    Ok(view(term))
}

async fn run(client: &mut Election, op: Op, election: &str, candidate: &str) -> View {
    apply(client, op, election, candidate).await.unwrap_or_else(|s| panic!("{op:?}({candidate}) on {election}: {s:?}"))
}

async fn get_term(client: &mut Election, election: &str) -> Result<View, Status> {
    Ok(view(client.get_term(bounded(rt::GetTermRequest { id: id(election) })).await?.into_inner().term))
}

async fn create(channel: &Channel, election: &str) {
    Elections::new(channel.clone())
        .create(bounded(rt::CreateRequest { id: id(election), tags: vec![] }))
        .await
        .unwrap_or_else(|s| panic!("Create {election}: {s:?}"));
}

/// Election names, `per_partition` in every partition (so in every shard).
fn spread_names(prefix: &str, per_partition: usize, partitions: u32) -> Vec<String> {
    let mut counts = vec![0; partitions as usize];
    let mut names = Vec::new();
    for i in 0..10_000 {
        let name = format!("{prefix}-{i}");
        let slot = &mut counts[(partition_of(&name, partitions) - 1) as usize];
        if *slot < per_partition {
            *slot += 1;
            names.push(name);
        }
        if names.len() == per_partition * partitions as usize {
            return names;
        }
    }
    panic!("no {per_partition} names per partition among 10000");
}

/// The next message of a watch stream, bounded by [`CALL_TIMEOUT`].
async fn next_view(stream: &mut tonic::Streaming<rt::WatchResponse>, what: &str) -> View {
    let message = tokio::time::timeout(CALL_TIMEOUT, stream.message())
        .await
        .unwrap_or_else(|_| panic!("{what}: no watch message within {CALL_TIMEOUT:?}"))
        .unwrap_or_else(|s| panic!("{what}: watch failed: {s:?}"))
        .unwrap_or_else(|| panic!("{what}: watch ended"));
    view(message.term)
}

/// Asserts that nothing more arrives on a watch for a while (no duplicate, no extra change).
async fn assert_quiet(stream: &mut tonic::Streaming<rt::WatchResponse>, what: &str) {
    if let Ok(extra) = tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
        panic!("{what}: unexpected watch message {extra:?}");
    }
}

fn assert_error(status: &Status, code: Code, needle: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(needle), "the message names the problem ({needle}): {status:?}");
}

#[tokio::test]
async fn health_is_serving_and_unknown_methods_are_unimplemented() {
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &NodeOptions::default()).await;
    let channel = node.connect().await;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "atomix.runtime.election.v1.LeaderElection", "atomix.multiraft.election.v1.LeaderElection"] {
        let status = health.check(bounded(HealthCheckRequest { service: service.into() })).await.expect("check");
        assert_eq!(status.into_inner().status, ServingStatus::Serving as i32, "service {service:?}");
    }

    // The admin listener reports health too, and never serves the client API.
    let admin = node.connect_admin().await;
    let status = HealthClient::new(admin.clone()).check(bounded(HealthCheckRequest { service: String::new() })).await.expect("admin check");
    assert_eq!(status.into_inner().status, ServingStatus::Serving as i32);
    let status = Election::new(admin).get_term(bounded(rt::GetTermRequest { id: id("e") })).await.expect_err("not on the admin port");
    assert_error(&status, Code::Unimplemented, "atomix.runtime.election.v1.LeaderElection");

    // A method the service does not have, through tonic's generic client.
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static("/atomix.runtime.election.v1.LeaderElection/Frobnicate");
    let codec = tonic_prost::ProstCodec::<rt::GetTermRequest, rt::GetTermResponse>::default();
    let status = grpc.unary(bounded(rt::GetTermRequest { id: id("e") }), path, codec).await.expect_err("unknown method");
    assert_error(&status, Code::Unimplemented, "Frobnicate");

    // A whole service the client port does not serve: the control API.
    let mut node_api = mr::node_client::NodeClient::new(channel);
    let status = node_api.bootstrap(bounded(mr::BootstrapRequest { group: None })).await.expect_err("not on the client port");
    assert_error(&status, Code::Unimplemented, "atomix.multiraft.v1.Node");
}

#[tokio::test]
#[allow(deprecated)] // LeaderElection.Create/Close are deprecated in the API, and tested here.
async fn create_and_close_through_both_services() {
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &NodeOptions::default()).await;
    let channel = node.connect().await;
    let mut elections = Elections::new(channel.clone());
    let mut election = Election::new(channel.clone());

    let created = elections.create(bounded(rt::CreateRequest { id: id("managed"), tags: vec!["t".into()] })).await.expect("create");
    let config = created.into_inner().config.expect("Create answers a config");
    assert!(!config.cache.expect("cache config").enabled);
    assert_eq!(get_term(&mut election, "managed").await.expect("created"), expect(0, "", &[]));
    // Creating again is idempotent and keeps the state.
    run(&mut election, Op::Enter, "managed", "a").await;
    elections.create(bounded(rt::CreateRequest { id: id("managed"), tags: vec![] })).await.expect("create again");
    assert_eq!(get_term(&mut election, "managed").await.unwrap(), expect(1, "a", &["a"]));

    // The deprecated Create/Close on LeaderElection itself.
    election.create(bounded(rt::CreateRequest { id: id("legacy"), tags: vec![] })).await.expect("deprecated create");
    assert_eq!(get_term(&mut election, "legacy").await.unwrap(), expect(0, "", &[]));
    run(&mut election, Op::Enter, "legacy", "x").await;
    election.close(bounded(rt::CloseRequest { id: id("legacy") })).await.expect("deprecated close");
    // Closing releases this connection's candidacies; the election and its term remain.
    assert_eq!(get_term(&mut election, "legacy").await.unwrap(), expect(1, "", &[]));

    // Another connection that holds nothing may Close: the election and its leader stay.
    let other = node.connect().await;
    Elections::new(other).close(bounded(rt::CloseRequest { id: id("managed") })).await.expect("close without a handle");
    assert_eq!(get_term(&mut election, "managed").await.unwrap(), expect(1, "a", &["a"]));
    elections.close(bounded(rt::CloseRequest { id: id("managed") })).await.expect("close");
    assert_eq!(get_term(&mut election, "managed").await.unwrap(), expect(1, "", &[]));

    for status in [
        elections.close(bounded(rt::CloseRequest { id: id("never-created") })).await.expect_err("close unknown"),
        election.close(bounded(rt::CloseRequest { id: id("never-created") })).await.expect_err("close unknown"),
    ] {
        assert_error(&status, Code::NotFound, "never-created");
    }
}

#[tokio::test]
async fn operations_follow_the_election_semantics() {
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &NodeOptions::default()).await;
    let mut mine = Election::new(node.connect().await);
    let mut theirs = Election::new(node.connect().await);
    let e = "semantics";
    create(&node.connect().await, e).await;

    assert_eq!(run(&mut mine, Op::Enter, e, "a").await, expect(1, "a", &["a"]), "first candidate leads a new term");
    assert_eq!(run(&mut mine, Op::Enter, e, "b").await, expect(1, "a", &["a", "b"]));
    assert_eq!(run(&mut theirs, Op::Enter, e, "c").await, expect(1, "a", &["a", "b", "c"]));
    assert_eq!(run(&mut theirs, Op::Enter, e, "a").await, expect(1, "a", &["a", "b", "c"]), "a present candidate: no change");
    for op in [Op::Withdraw, Op::Anoint, Op::Promote, Op::Demote, Op::Evict] {
        assert_eq!(run(&mut mine, op, e, "nobody").await, expect(1, "a", &["a", "b", "c"]), "{op:?} of an unknown candidate");
    }
    assert_eq!(run(&mut theirs, Op::Withdraw, e, "a").await, expect(1, "a", &["a", "b", "c"]), "Withdraw of another session's candidate");

    assert_eq!(run(&mut theirs, Op::Promote, e, "c").await, expect(1, "a", &["a", "c", "b"]), "Promote moves up one place");
    assert_eq!(run(&mut theirs, Op::Promote, e, "c").await, expect(2, "c", &["c", "a", "b"]), "Promote from second place leads");
    assert_eq!(run(&mut mine, Op::Promote, e, "c").await, expect(2, "c", &["c", "a", "b"]), "Promote of the leader");
    assert_eq!(run(&mut mine, Op::Demote, e, "a").await, expect(2, "c", &["c", "b", "a"]), "Demote moves down one place");
    assert_eq!(run(&mut mine, Op::Demote, e, "a").await, expect(2, "c", &["c", "b", "a"]), "Demote of the last");
    assert_eq!(run(&mut mine, Op::Demote, e, "c").await, expect(3, "b", &["b", "c", "a"]), "a leader with a successor hands over");
    assert_eq!(run(&mut mine, Op::Anoint, e, "a").await, expect(4, "a", &["a", "b", "c"]), "Anoint: the old leader is next in line");
    assert_eq!(run(&mut mine, Op::Anoint, e, "a").await, expect(4, "a", &["a", "b", "c"]), "Anoint of the leader");
    assert_eq!(run(&mut mine, Op::Withdraw, e, "a").await, expect(5, "b", &["b", "c"]), "the leader withdraws");
    assert_eq!(run(&mut theirs, Op::Evict, e, "b").await, expect(6, "c", &["c"]), "Evict of another session's leader");
    assert_eq!(run(&mut theirs, Op::Demote, e, "c").await, expect(6, "c", &["c"]), "a leader without successor stays");
    assert_eq!(run(&mut theirs, Op::Withdraw, e, "c").await, expect(6, "", &[]), "the last candidate leaves: no leader");
    assert_eq!(run(&mut mine, Op::Enter, e, "a").await, expect(7, "a", &["a"]), "a returning candidate leads a new term");
    assert_eq!(get_term(&mut theirs, e).await.unwrap(), expect(7, "a", &["a"]), "GetTerm from another connection agrees");
}

/// A deterministic script of operations on one election, from candidates `c0..c4`.
fn script(seed: u64, len: usize) -> Vec<(Op, String)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len)
        .map(|_| {
            // Enter twice as often as anything else, so elections stay populated.
            let op = if rng.random_bool(0.35) { Op::Enter } else { OPS[rng.random_range(0..OPS.len())] };
            (op, format!("c{}", rng.random_range(0..5)))
        })
        .collect()
}

#[tokio::test]
async fn watch_sees_the_current_state_then_every_change_in_order() {
    const PER_PARTITION: usize = 3;
    const OPS_PER_ELECTION: usize = 40;
    let options = NodeOptions::default();
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &options).await;
    let names = spread_names("watched", PER_PARTITION, options.partitions);
    let setup = node.connect().await;
    let mut setup_client = Election::new(setup.clone());
    for name in &names {
        create(&setup, name).await;
        run(&mut setup_client, Op::Enter, name, "c0").await;
    }

    // One watcher connection with a stream per election, opened before the changes.
    let watcher = Election::new(node.connect().await);
    let mut streams = BTreeMap::new();
    for name in &names {
        let stream = watcher.clone().watch(rt::WatchRequest { id: id(name) }).await.expect("watch").into_inner();
        streams.insert(name.clone(), stream);
    }
    for (name, stream) in &mut streams {
        assert_eq!(next_view(stream, name).await, expect(1, "c0", &["c0"]), "{name}: the current state comes first");
    }

    // Three writer connections, one task per election, all running at once.
    let writers = [node.connect().await, node.connect().await, node.connect().await];
    let mut tasks = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut client = Election::new(writers[i % writers.len()].clone());
        let (name, ops) = (name.clone(), script(i as u64, OPS_PER_ELECTION));
        tasks.push(tokio::spawn(async move {
            let mut states = vec![expect(1, "c0", &["c0"])];
            for (op, candidate) in ops {
                let state = run(&mut client, op, &name, &candidate).await;
                if states.last() != Some(&state) {
                    states.push(state);
                }
            }
            (name, states)
        }));
    }
    let mut changes = 0;
    for task in tasks {
        let (name, states) = task.await.expect("writer task");
        let stream = streams.get_mut(&name).expect("stream");
        for (n, state) in states.iter().enumerate().skip(1) {
            assert_eq!(&next_view(stream, &name).await, state, "{name}: change {n} of {}", states.len() - 1);
            changes += 1;
        }
    }
    for (name, stream) in &mut streams {
        assert_quiet(stream, name).await;
    }
    assert!(changes >= names.len() * 10, "the scripts changed the elections often ({changes} changes)");
}

#[tokio::test]
async fn a_client_that_disconnects_loses_its_candidacies_at_once() {
    // A session timeout far above the bound below: only the disconnect can explain a change.
    let options = NodeOptions { session_timeout_ms: 20_000, ..NodeOptions::default() };
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &options).await;
    let names = spread_names("bound", 1, options.partitions);
    let leaving = node.connect().await;
    let mut staying = Election::new(node.connect().await);
    let watcher = Election::new(node.connect().await);
    let mut streams = Vec::new();
    for name in &names {
        create(&leaving, name).await;
        run(&mut Election::new(leaving.clone()), Op::Enter, name, "alice").await;
        run(&mut Election::new(leaving.clone()), Op::Enter, name, "alice-2").await;
        run(&mut staying, Op::Enter, name, "bob").await;
        let mut stream = watcher.clone().watch(rt::WatchRequest { id: id(name) }).await.expect("watch").into_inner();
        assert_eq!(next_view(&mut stream, name).await, expect(1, "alice", &["alice", "alice-2", "bob"]));
        streams.push(stream);
    }

    drop(leaving);
    let dropped = std::time::Instant::now();
    for (name, stream) in names.iter().zip(&mut streams) {
        // Both of the leaving session's candidates go in one change; bob leads a new term.
        let after = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap_or_else(|_| panic!("{name}: the disconnect was not seen within 5 s"))
            .expect("watch")
            .expect("message");
        assert_eq!(view(after.term), expect(2, "bob", &["bob"]), "{name}");
        assert_eq!(get_term(&mut staying, name).await.unwrap(), expect(2, "bob", &["bob"]));
        assert_quiet(stream, name).await;
    }
    assert!(dropped.elapsed() < Duration::from_secs(10), "long before the sessions could expire: {:?}", dropped.elapsed());
}

#[tokio::test]
async fn an_idle_connection_keeps_its_candidacies_past_the_session_timeout() {
    let options = NodeOptions { session_timeout_ms: 1_000, ..NodeOptions::default() };
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &options).await;
    let names = spread_names("idle", 1, options.partitions);
    let channel = node.connect().await;
    let mut client = Election::new(channel.clone());
    for name in &names {
        create(&channel, name).await;
        run(&mut client, Op::Enter, name, "idle").await;
    }
    // The server keeps the connection's sessions alive while it stays open.
    tokio::time::sleep(Duration::from_millis(options.session_timeout_ms * 3)).await;
    let mut other = Election::new(node.connect().await);
    for name in &names {
        assert_eq!(get_term(&mut other, name).await.unwrap(), expect(1, "idle", &["idle"]), "{name}");
    }
    assert_eq!(run(&mut client, Op::Withdraw, &names[0], "idle").await, expect(1, "", &[]), "the session still works");
}

#[tokio::test]
async fn every_error_code_a_client_can_cause() {
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &NodeOptions::default()).await;
    let channel = node.connect().await;
    let mut client = Election::new(channel.clone());
    let mut elections = Elections::new(channel.clone());
    create(&channel, "exists").await;

    // NOT_FOUND: an election that was never created, for every kind of call.
    assert_error(&get_term(&mut client, "missing").await.unwrap_err(), Code::NotFound, "missing");
    for op in OPS {
        assert_error(&apply(&mut client, op, "missing", "c").await.unwrap_err(), Code::NotFound, "missing");
    }
    let status = match client.watch(bounded(rt::WatchRequest { id: id("missing") })).await {
        Err(status) => status,
        Ok(response) => response.into_inner().message().await.expect_err("watch of a missing election"),
    };
    assert_error(&status, Code::NotFound, "missing");

    // INVALID_ARGUMENT: empty and over-long names; 1024 bytes is still fine.
    let long = "n".repeat(1025);
    let longest = "n".repeat(1024);
    let status = elections.create(bounded(rt::CreateRequest { id: id(""), tags: vec![] })).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "empty");
    let status = elections.create(bounded(rt::CreateRequest { id: None, tags: vec![] })).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "empty");
    let status = elections.create(bounded(rt::CreateRequest { id: id(&long), tags: vec![] })).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "1025");
    assert_error(&get_term(&mut client, &long).await.unwrap_err(), Code::InvalidArgument, "1024");
    assert_error(&apply(&mut client, Op::Enter, "exists", "").await.unwrap_err(), Code::InvalidArgument, "empty");
    assert_error(&apply(&mut client, Op::Evict, "exists", &long).await.unwrap_err(), Code::InvalidArgument, "1025");
    create(&channel, &longest).await;
    assert_eq!(run(&mut client, Op::Enter, &longest, &longest).await.0, 1);
    assert_eq!(get_term(&mut client, "exists").await.unwrap(), expect(0, "", &[]), "refused calls changed nothing");

    // DEADLINE_EXCEEDED: a Watch outlives its grpc-timeout; the server ends it.
    let mut request = tonic::Request::new(rt::WatchRequest { id: id("exists") });
    request.set_timeout(Duration::from_millis(300));
    let mut stream = client.watch(request).await.expect("watch").into_inner();
    assert_eq!(next_view(&mut stream, "exists").await, expect(0, "", &[]));
    let status = tokio::time::timeout(CALL_TIMEOUT, stream.message()).await.expect("ended in time").expect_err("deadline");
    assert_error(&status, Code::DeadlineExceeded, "grpc-timeout");
    // A unary call whose deadline has passed on arrival. tonic runs the same deadline as a
    // client-side timer, which may answer first ("Timeout expired"); either way the call
    // fails fast with a deadline error.
    let mut request = tonic::Request::new(rt::EnterRequest { id: id("exists"), candidate: "late".into() });
    request.set_timeout(Duration::from_nanos(1));
    let status = client.enter(request).await.expect_err("deadline passed");
    match status.code() {
        Code::DeadlineExceeded => assert!(status.message().contains("grpc-timeout"), "{status:?}"),
        Code::Cancelled => assert!(status.message().contains("Timeout expired"), "{status:?}"),
        other => panic!("unexpected {other:?}: {status:?}"),
    }
    // The connection and the server still serve (the late Enter may or may not have been
    // applied: a deadline error leaves the outcome unknown, as gRPC defines it).
    let (_, leader, _) = get_term(&mut client, "exists").await.expect("still serving");
    assert!(leader.is_empty() || leader == "late", "{leader}");
}

#[tokio::test]
async fn a_call_abandoned_while_its_session_opens_does_not_block_the_connection() {
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &NodeOptions::default()).await;
    create(&node.connect().await, "first-call").await;
    // A fresh connection whose first command in the partition, the one that opens its
    // session there, is abandoned at once (deadline passed on arrival).
    let channel = node.connect().await;
    let mut client = Election::new(channel);
    for attempt in 0..3 {
        let mut request = tonic::Request::new(rt::EnterRequest { id: id("first-call"), candidate: format!("late-{attempt}") });
        request.set_timeout(Duration::from_nanos(1));
        let _ = client.enter(request).await;
    }
    // The connection's next command in that partition is served, not left waiting for a
    // session that nobody is opening any more.
    let mut request = tonic::Request::new(rt::EnterRequest { id: id("first-call"), candidate: "on-time".into() });
    request.set_timeout(Duration::from_secs(3));
    let (_, _, candidates) = view(client.enter(request).await.expect("served after abandoned calls").into_inner().term);
    assert!(candidates.contains(&"on-time".to_owned()), "{candidates:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_each_hold_their_own_candidacy() {
    const CONNECTIONS: usize = 40;
    let options = NodeOptions { session_timeout_ms: 20_000, ..NodeOptions::default() };
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &options).await;
    create(&node.connect().await, "crowd").await;
    let mut watch = Election::new(node.connect().await).watch(rt::WatchRequest { id: id("crowd") }).await.expect("watch").into_inner();
    assert_eq!(next_view(&mut watch, "crowd").await, expect(0, "", &[]));

    // Connections are spread over the shards; each enters its own candidate at once.
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        connections.push(node.connect().await);
    }
    let entries = connections.iter().enumerate().map(|(i, channel)| {
        let mut client = Election::new(channel.clone());
        async move { run(&mut client, Op::Enter, "crowd", &format!("c{i}")).await }
    });
    let mut joined = Vec::new();
    for entry in entries {
        joined.push(tokio::spawn(entry));
    }
    for task in joined {
        task.await.expect("enter");
    }
    let mut state = expect(0, "", &[]);
    while state.2.len() < CONNECTIONS {
        state = next_view(&mut watch, "crowd").await;
    }
    assert_eq!(state.0, 1, "one leader so far");
    let order = state.2.clone();

    // Disconnect them in candidate order: every disconnect hands over to the next one.
    let mut by_candidate: BTreeMap<String, Channel> = connections.into_iter().enumerate().map(|(i, c)| (format!("c{i}"), c)).collect();
    for (n, candidate) in order.iter().enumerate() {
        drop(by_candidate.remove(candidate).expect("a connection per candidate"));
        let rest: Vec<&str> = order[n + 1..].iter().map(String::as_str).collect();
        let leader = rest.first().copied().unwrap_or("");
        let term = if rest.is_empty() { n as u64 + 1 } else { n as u64 + 2 };
        assert_eq!(next_view(&mut watch, "crowd").await, expect(term, leader, &rest), "after {candidate} left");
    }
}
