//! End-to-end tests of the gRPC edge through a real `tonic` client: health Check/Watch,
//! unary and server-streaming calls on public method paths, every status code, deadlines,
//! unknown methods, size limits, slow stream consumers, connection-close hooks and
//! graceful shutdown.
mod grpc_support;

use std::time::{Duration, Instant};

use conclave_server::grpc::{Code as ServerCode, ServingStatus};
use grpc_support::client::atomix::runtime::election::v1::leader_election_client::LeaderElectionClient;
use grpc_support::client::atomix::runtime::election::v1::leader_elections_client::LeaderElectionsClient;
use grpc_support::client::atomix::runtime::election::v1::{CloseRequest, EnterRequest, GetTermRequest, WatchRequest};
use grpc_support::client::atomix::runtime::v1::PrimitiveId;
use grpc_support::client::grpc::health::v1::health_check_response::ServingStatus as ClientServingStatus;
use grpc_support::client::grpc::health::v1::health_client::HealthClient;
use grpc_support::client::grpc::health::v1::HealthCheckRequest;
use grpc_support::{failure_for, Event, TestServer};
use tonic::transport::Channel;
use tonic::Code;

async fn channel(server: &TestServer) -> Channel {
    Channel::from_shared(server.url()).expect("url").connect().await.expect("connect")
}

fn id(name: &str) -> Option<PrimitiveId> {
    Some(PrimitiveId { name: name.to_owned() })
}

fn get_term(name: &str) -> GetTermRequest {
    GetTermRequest { id: id(name) }
}

fn watch(name: &str) -> WatchRequest {
    WatchRequest { id: id(name) }
}

#[tokio::test]
async fn health_check_and_watch_follow_the_status_the_node_sets() {
    let server = TestServer::start();
    let mut health = HealthClient::new(channel(&server).await);
    let check = |service: &str| HealthCheckRequest { service: service.to_owned() };

    let response = health.check(check("")).await.expect("check").into_inner();
    assert_eq!(response.status, ClientServingStatus::NotServing as i32);
    let missing = health.check(check("no.such.Service")).await.expect_err("unknown service");
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.message().contains("no.such.Service"), "{}", missing.message());

    let mut updates = health.watch(check("")).await.expect("watch").into_inner();
    let first = updates.message().await.expect("stream").expect("first status");
    assert_eq!(first.status, ClientServingStatus::NotServing as i32);
    server.set_health("", ServingStatus::Serving);
    let next = tokio::time::timeout(Duration::from_secs(5), updates.message())
        .await
        .expect("watch update in time")
        .expect("stream")
        .expect("second status");
    assert_eq!(next.status, ClientServingStatus::Serving as i32);
    let response = health.check(check("")).await.expect("check").into_inner();
    assert_eq!(response.status, ClientServingStatus::Serving as i32);

    let mut unknown = health.watch(check("later.Service")).await.expect("watch").into_inner();
    let first = unknown.message().await.expect("stream").expect("first status");
    assert_eq!(first.status, ClientServingStatus::ServiceUnknown as i32);
    server.set_health("later.Service", ServingStatus::Serving);
    let next = unknown.message().await.expect("stream").expect("registered status");
    assert_eq!(next.status, ClientServingStatus::Serving as i32);
}

#[tokio::test]
async fn unary_calls_answer_on_public_paths_and_name_their_connection() {
    let server = TestServer::start();
    let mut client = LeaderElectionClient::new(channel(&server).await);
    let mut leaders = Vec::new();
    for _ in 0..3 {
        let term = client.get_term(get_term("echo")).await.expect("get term").into_inner().term.expect("term");
        assert_eq!(term.term, 7);
        assert_eq!(term.candidates, vec!["a".to_owned(), "b".to_owned()]);
        leaders.push(term.leader);
    }
    assert!(leaders.iter().all(|leader| leader == &leaders[0]), "one connection: {leaders:?}");
    let opened: Vec<_> = server.events().into_iter().filter(|e| matches!(e, Event::Opened(_))).collect();
    assert_eq!(opened.len(), 1);
    let Event::Opened(connection_id) = opened[0] else { unreachable!() };
    assert_eq!(leaders[0], format!("connection-{connection_id}"));
}

#[tokio::test]
async fn every_status_code_reaches_the_client_with_its_message() {
    let server = TestServer::start();
    let mut client = LeaderElectionClient::new(channel(&server).await);
    for code in 1..=16u32 {
        let expected = failure_for(code);
        let status = client.get_term(get_term(&format!("fail:{code}"))).await.expect_err("failure");
        assert_eq!(status.code() as u32, code);
        assert_eq!(status.message(), expected.message());
        let streamed = match client.watch(watch(&format!("fail:{code}"))).await {
            Err(status) => status,
            Ok(response) => response.into_inner().message().await.expect_err("stream failure"),
        };
        assert_eq!(streamed.code() as u32, code, "watch {code}");
        assert_eq!(streamed.message(), expected.message());
    }
    assert_eq!(failure_for(5).code(), ServerCode::NotFound);
}

#[tokio::test]
async fn deadlines_are_enforced_by_the_server() {
    let server = TestServer::start();
    let mut client = LeaderElectionClient::new(channel(&server).await);
    let mut request = tonic::Request::new(get_term("sleep:3000"));
    request.set_timeout(Duration::from_millis(100));
    let started = Instant::now();
    let status = client.get_term(request).await.expect_err("deadline");
    // tonic also runs the grpc-timeout as a client-side timer ("Timeout expired"), racing
    // the server's DEADLINE_EXCEEDED; grpc_protocol.rs pins the server's answer alone.
    match status.code() {
        Code::DeadlineExceeded => assert!(status.message().contains("grpc-timeout"), "{}", status.message()),
        Code::Cancelled => assert!(status.message().contains("Timeout expired"), "{}", status.message()),
        other => panic!("unexpected {other:?}: {}", status.message()),
    }
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());

    let mut request = tonic::Request::new(get_term("sleep:10"));
    request.set_timeout(Duration::from_secs(5));
    client.get_term(request).await.expect("a call within its deadline succeeds");

    let mut request = tonic::Request::new(watch("hold"));
    request.set_timeout(Duration::from_millis(200));
    let mut stream = client.watch(request).await.expect("watch").into_inner();
    stream.message().await.expect("first message").expect("held term");
    let status = stream.message().await.expect_err("stream deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(status.message().contains("grpc-timeout"), "ended by the server: {}", status.message());
}

#[tokio::test]
async fn unknown_methods_and_services_are_unimplemented_by_name() {
    let server = TestServer::start();
    let channel = channel(&server).await;
    let mut client = LeaderElectionClient::new(channel.clone());
    let status = client.enter(EnterRequest { id: id("x"), candidate: "c".into() }).await.expect_err("not mounted");
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(status.message(), "unknown method Enter for service atomix.runtime.election.v1.LeaderElection");
    let mut management = LeaderElectionsClient::new(channel);
    let status = management.close(CloseRequest { id: id("x") }).await.expect_err("no service");
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(status.message(), "unknown service atomix.runtime.election.v1.LeaderElections");
}

#[tokio::test]
async fn oversized_messages_are_resource_exhausted_both_ways() {
    let server = TestServer::start();
    let mut client = LeaderElectionClient::new(channel(&server).await);
    let status = client.get_term(get_term(&"n".repeat(100 << 10))).await.expect_err("too big");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("exceeds this server's limit of 65536 bytes"), "{}", status.message());
    let status = client.get_term(get_term(&format!("big:{}", 80 << 10))).await.expect_err("reply too big");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("send limit"), "{}", status.message());
    // The connection is still usable afterwards.
    client.get_term(get_term("echo")).await.expect("echo after errors");
}

#[tokio::test]
async fn thousands_of_small_stream_messages_arrive_in_order() {
    let server = TestServer::start();
    let mut client = LeaderElectionClient::new(channel(&server).await);
    const COUNT: u64 = 20_000;
    let started = Instant::now();
    let mut stream = client.watch(watch(&format!("count:{COUNT}"))).await.expect("watch").into_inner();
    let mut next = 0;
    while let Some(response) = stream.message().await.expect("no stream error") {
        assert_eq!(response.term.expect("term").term, next);
        next += 1;
    }
    assert_eq!(next, COUNT);
    eprintln!("{COUNT} stream messages in {:?}", started.elapsed());
    // The same connection still serves calls (tonic did not close it).
    client.get_term(get_term("echo")).await.expect("echo after the stream");
    let opened = server.events().iter().filter(|e| matches!(e, Event::Opened(_))).count();
    assert_eq!(opened, 1);
}

#[tokio::test]
async fn a_slow_watcher_is_cut_off_without_stalling_other_calls() {
    let server = TestServer::start();
    let mut slow = LeaderElectionClient::new(channel(&server).await);
    let mut other = LeaderElectionClient::new(channel(&server).await);
    // 8 KiB every millisecond; the client stops reading after the first message.
    let mut stream = slow.watch(watch("flood:8192")).await.expect("watch").into_inner();
    stream.message().await.expect("stream").expect("first flood message");
    let paused = Instant::now();
    while paused.elapsed() < Duration::from_millis(1500) {
        let started = Instant::now();
        other.get_term(get_term("echo")).await.expect("other calls keep working");
        assert!(started.elapsed() < Duration::from_millis(500), "call took {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut delivered = 1;
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => delivered += 1,
            Ok(None) => panic!("the flood stream cannot end successfully"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("fell behind"), "{}", status.message());
    assert!(delivered < 1500, "the queue is bounded: {delivered} messages delivered");
}

#[tokio::test]
async fn closing_a_connection_fires_the_hooks_at_once() {
    let server = TestServer::start();
    let channel = channel(&server).await;
    let mut client = LeaderElectionClient::new(channel.clone());
    let mut stream = client.watch(watch("hold")).await.expect("watch").into_inner();
    stream.message().await.expect("stream").expect("held term");
    let Some(Event::Opened(connection)) = server.wait_for_event(Duration::from_secs(1), |e| matches!(e, Event::Opened(_))).await else {
        panic!("no connection opened");
    };
    let dropped = Instant::now();
    drop(stream);
    drop(client);
    drop(channel);
    server.wait_for_event(Duration::from_secs(3), |e| *e == Event::Closed(connection)).await.expect("close hook fired");
    server
        .wait_for_event(Duration::from_secs(1), |e| *e == Event::HandlerSawClose(connection))
        .await
        .expect("handler's connection().closed() fired");
    assert!(dropped.elapsed() < Duration::from_secs(1), "noticed in {:?}", dropped.elapsed());
}

#[tokio::test]
async fn graceful_shutdown_finishes_unary_calls_and_ends_streams() {
    let server = TestServer::start();
    let mut client = LeaderElectionClient::new(channel(&server).await);
    let mut held = client.watch(watch("hold")).await.expect("watch").into_inner();
    held.message().await.expect("stream").expect("held term");
    let mut slow_client = client.clone();
    let slow = tokio::spawn(async move { slow_client.get_term(get_term("sleep:400")).await });
    server.wait_for_event(Duration::from_secs(3), |e| *e == Event::Sleeping(400)).await.expect("the slow call is in flight");
    server.begin_shutdown();
    let status = held.message().await.expect_err("stream ends on shutdown");
    assert_eq!(status.code(), Code::Unavailable);
    let response = slow.await.expect("join").expect("in-flight call completes during shutdown");
    assert_eq!(response.into_inner().term.expect("term").term, 7);
    server.wait_for_event(Duration::from_secs(3), |e| *e == Event::Drained).await.expect("server drained");
    let addr = server.addr;
    let drained_in = server.shutdown();
    assert!(drained_in < Duration::from_secs(3), "{drained_in:?}");
    assert!(std::net::TcpStream::connect(addr).is_err(), "listener closed after shutdown");
}

#[tokio::test]
async fn shutdown_grace_bounds_calls_that_do_not_finish() {
    let config = conclave_server::grpc::ServerConfig { shutdown_grace: Duration::from_millis(300), ..grpc_support::test_config() };
    let server = TestServer::start_with(config);
    let mut client = LeaderElectionClient::new(channel(&server).await);
    let stuck = tokio::spawn(async move { client.get_term(get_term("sleep:10000")).await });
    server.wait_for_event(Duration::from_secs(3), |e| *e == Event::Sleeping(10_000)).await.expect("the stuck call is in flight");
    let started = Instant::now();
    let drained_in = server.shutdown();
    assert!(drained_in < Duration::from_secs(2), "drained in {drained_in:?}");
    let status = stuck.await.expect("join").expect_err("cut off by the grace bound");
    assert!(matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}
