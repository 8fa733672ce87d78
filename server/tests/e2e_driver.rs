//! End-to-end tests of the driver API (`atomix.multiraft.v1` Partition and Session,
//! `atomix.multiraft.election.v1.LeaderElection`) against a real `conclave serve` process
//! through a tonic client: explicit sessions, primitives by id, sequence numbers and
//! exactly-once retries, released outputs, `max_received_index`, Watch, state-machine errors
//! in the response headers, and session expiry. KeepAlives carry real Bloom filters of the
//! open commands, built as the Atomix driver builds them (`BloomFilter::with_estimates(open,
//! 0.05)`, the encoder `engine/tests/sm_bloom.rs` checks byte for byte against Go's
//! library); a scripted Atomix-style session keeps exactly-once across keep-alives whose
//! filters are the bytes Go's library itself wrote (`engine/tests/fixtures/bloom/`).
mod support;

use std::time::{Duration, Instant};

use conclave_engine::sm::bloom::BloomFilter;
use conclave_server::routing::partition_of;
use mr::operation_response_headers::Status as AtomixStatus;
use support::client::atomix::multiraft::election::v1 as el;
use support::client::atomix::multiraft::v1 as mr;
use support::client::atomix::runtime::election::v1 as rt;
use support::{bounded, command_headers, id, query_headers, view, Node, NodeOptions, TestDir, CALL_TIMEOUT};
use tonic::transport::Channel;
use tonic::Code;

/// What a driver sees of an election: (term number = `index`, leader, waiting candidates).
type DriverView = (u64, String, Vec<String>);

fn driver_view(term: Option<el::Term>) -> DriverView {
    let term = term.expect("an OK output carries a term");
    (term.index, term.leader, term.candidates)
}

fn dv(index: u64, leader: &str, waiting: &[&str]) -> DriverView {
    (index, leader.to_owned(), waiting.iter().map(|c| c.to_string()).collect())
}

/// The outcome of one driver election command: headers status and message, log index,
/// echoed sequence number, and the term when the status is OK.
#[derive(Debug)]
struct Answer {
    status: AtomixStatus,
    message: String,
    index: u64,
    output_sequence_num: u64,
    term: Option<DriverView>,
}

fn answer(headers: Option<mr::CommandResponseHeaders>, term: Option<Option<el::Term>>) -> Answer {
    let headers = headers.expect("a command response carries headers");
    let operation = headers.operation.expect("operation headers");
    let index = operation.session.and_then(|p| p.session).and_then(|s| s.partition).expect("partition headers").index;
    Answer {
        status: AtomixStatus::try_from(operation.status).expect("a known status"),
        message: operation.message,
        index,
        output_sequence_num: headers.output_sequence_num,
        term: term.map(driver_view),
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Enter,
    Withdraw,
    Anoint,
    Promote,
    Demote,
    Evict,
}

/// A driver bound to one session in one partition.
#[derive(Clone)]
struct Driver {
    partitions: mr::partition_client::PartitionClient<Channel>,
    sessions: mr::session_client::SessionClient<Channel>,
    elections: el::leader_election_client::LeaderElectionClient<Channel>,
    partition: u32,
    session_id: u64,
}

impl Driver {
    async fn open(channel: &Channel, partition: u32, timeout: Duration) -> Driver {
        let mut partitions = mr::partition_client::PartitionClient::new(channel.clone());
        let response = partitions
            .open_session(bounded(mr::OpenSessionRequest {
                headers: Some(mr::PartitionRequestHeaders { partition_id: partition }),
                input: Some(mr::OpenSessionInput { timeout: Some(timeout.try_into().expect("duration")) }),
            }))
            .await
            .expect("OpenSession")
            .into_inner();
        let session_id = response.output.expect("output").session_id;
        assert!(session_id > 0 && response.headers.expect("headers").index >= session_id, "session ids are log indexes");
        Driver {
            partitions,
            sessions: mr::session_client::SessionClient::new(channel.clone()),
            elections: el::leader_election_client::LeaderElectionClient::new(channel.clone()),
            partition,
            session_id,
        }
    }

    fn headers(&self, primitive_id: u64, sequence_num: u64) -> Option<mr::CommandRequestHeaders> {
        Some(command_headers(self.partition, self.session_id, primitive_id, sequence_num))
    }

    /// KeepAlive through `acknowledged` with no command open.
    async fn keep_alive(&mut self, acknowledged: u64) -> Result<u64, tonic::Status> {
        self.keep_alive_open(acknowledged, &[]).await
    }

    /// KeepAlive through `last_input` while the commands `open` are still open, with the
    /// filter the Atomix driver would send.
    async fn keep_alive_open(&mut self, last_input: u64, open: &[u64]) -> Result<u64, tonic::Status> {
        let mut filter = BloomFilter::with_estimates(open.len() as u64, 0.05);
        for &sequence_num in open {
            filter.add_sequence(sequence_num);
        }
        self.keep_alive_raw(last_input, filter.to_json().into_bytes()).await
    }

    async fn keep_alive_raw(&mut self, last_input: u64, input_filter: Vec<u8>) -> Result<u64, tonic::Status> {
        let response = self
            .partitions
            .keep_alive(bounded(mr::KeepAliveRequest {
                headers: Some(mr::PartitionRequestHeaders { partition_id: self.partition }),
                input: Some(mr::KeepAliveInput {
                    session_id: self.session_id,
                    last_input_sequence_num: last_input,
                    input_filter,
                    last_output_sequence_nums: Default::default(),
                }),
            }))
            .await?;
        Ok(response.into_inner().headers.expect("headers").index)
    }

    async fn close(&mut self) -> Result<(), tonic::Status> {
        let request = mr::CloseSessionRequest {
            headers: Some(mr::PartitionRequestHeaders { partition_id: self.partition }),
            input: Some(mr::CloseSessionInput { session_id: self.session_id }),
        };
        self.partitions.close_session(bounded(request)).await.map(|_| ())
    }

    async fn create_primitive(&mut self, sequence_num: u64, name: &str) -> (Answer, u64) {
        let spec =
            mr::PrimitiveSpec { service: "LeaderElection".into(), namespace: "test".into(), name: name.into(), profile: String::new() };
        let response = self
            .sessions
            .create_primitive(bounded(mr::CreatePrimitiveRequest {
                headers: self.headers(0, sequence_num),
                input: Some(mr::CreatePrimitiveInput { spec: Some(spec) }),
            }))
            .await
            .expect("CreatePrimitive")
            .into_inner();
        let primitive_id = response.output.map_or(0, |o| o.primitive_id);
        (answer(response.headers, None), primitive_id)
    }

    async fn close_primitive(&mut self, sequence_num: u64, primitive_id: u64) -> Answer {
        let response = self
            .sessions
            .close_primitive(bounded(mr::ClosePrimitiveRequest {
                headers: self.headers(primitive_id, sequence_num),
                input: Some(mr::ClosePrimitiveInput { primitive_id }),
            }))
            .await
            .expect("ClosePrimitive")
            .into_inner();
        answer(response.headers, None)
    }

    async fn command(&mut self, primitive_id: u64, sequence_num: u64, op: Op, candidate: &str) -> Answer {
        let headers = self.headers(primitive_id, sequence_num);
        let candidate = candidate.to_owned();
        let c = &mut self.elections;
        macro_rules! call {
            ($method:ident, $req:ident, $input:ident) => {{
                let r = c.$method(bounded(el::$req { headers, input: Some(el::$input { candidate }) })).await;
                let r = r.unwrap_or_else(|s| panic!("{op:?}: {s:?}")).into_inner();
                let status = r.headers.as_ref().and_then(|h| h.operation.as_ref()).map_or(0, |o| o.status);
                answer(r.headers, (status == AtomixStatus::Ok as i32).then(|| r.output.and_then(|o| o.term)))
            }};
        }
        match op {
            Op::Enter => call!(enter, EnterRequest, EnterInput),
            Op::Withdraw => call!(withdraw, WithdrawRequest, WithdrawInput),
            Op::Anoint => call!(anoint, AnointRequest, AnointInput),
            Op::Promote => call!(promote, PromoteRequest, PromoteInput),
            Op::Demote => call!(demote, DemoteRequest, DemoteInput),
            Op::Evict => call!(evict, EvictRequest, EvictInput),
        }
    }

    /// A command that must succeed; returns its term.
    async fn ok(&mut self, primitive_id: u64, sequence_num: u64, op: Op, candidate: &str) -> DriverView {
        let a = self.command(primitive_id, sequence_num, op, candidate).await;
        assert_eq!(a.status, AtomixStatus::Ok, "{op:?}({candidate}) #{sequence_num}: {a:?}");
        assert_eq!(a.output_sequence_num, sequence_num, "the response names its sequence number");
        a.term.expect("term")
    }

    fn get_term_request(&self, primitive_id: u64, max_received_index: u64) -> el::GetTermRequest {
        el::GetTermRequest {
            headers: Some(query_headers(self.partition, self.session_id, primitive_id, max_received_index)),
            input: Some(el::GetTermInput {}),
        }
    }

    /// GetTerm: (headers index, status, term).
    async fn get_term(&mut self, primitive_id: u64, max_received_index: u64) -> (u64, AtomixStatus, Option<DriverView>) {
        let request = self.get_term_request(primitive_id, max_received_index);
        let response = self.elections.get_term(bounded(request)).await.expect("GetTerm").into_inner();
        let operation = response.headers.and_then(|h| h.operation).expect("operation headers");
        let index = operation.session.and_then(|p| p.session).and_then(|s| s.partition).expect("partition headers").index;
        let status = AtomixStatus::try_from(operation.status).expect("known status");
        (index, status, response.output.map(|o| driver_view(o.term)))
    }
}

async fn next_watched(stream: &mut tonic::Streaming<el::WatchResponse>) -> DriverView {
    next_watched_at(stream).await.1
}

/// The next Watch message: the log index in its headers and the term.
async fn next_watched_at(stream: &mut tonic::Streaming<el::WatchResponse>) -> (u64, DriverView) {
    let message =
        tokio::time::timeout(CALL_TIMEOUT, stream.message()).await.expect("a watch message in time").expect("watch").expect("watch ended");
    let operation = message.headers.and_then(|h| h.operation).expect("operation headers");
    let index = operation.session.and_then(|p| p.session).and_then(|s| s.partition).expect("partition headers").index;
    (index, driver_view(message.output.expect("watch output").term))
}

#[tokio::test]
async fn sessions_primitives_and_commands_by_id() {
    let options = NodeOptions::default();
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &options).await;
    let channel = node.connect().await;
    let partition = partition_of("shared", options.partitions);
    let mut one = Driver::open(&channel, partition, Duration::from_secs(30)).await;
    let mut two = Driver::open(&channel, partition, Duration::from_secs(30)).await;
    assert_ne!(one.session_id, two.session_id);

    let (created, primitive) = one.create_primitive(1, "shared").await;
    assert_eq!((created.status, created.output_sequence_num), (AtomixStatus::Ok, 1));
    let (again, same) = two.create_primitive(1, "shared").await;
    assert_eq!((again.status, same), (AtomixStatus::Ok, primitive), "the same name is the same primitive");
    let (_, other) = two.create_primitive(2, "another").await;
    assert_ne!(other, primitive);

    // Driver terms: `index` is the term number, `candidates` are the waiting ones only.
    assert_eq!(one.ok(primitive, 2, Op::Enter, "a").await, dv(1, "a", &[]));
    assert_eq!(two.ok(primitive, 3, Op::Enter, "b").await, dv(1, "a", &["b"]));
    assert_eq!(two.ok(primitive, 4, Op::Enter, "c").await, dv(1, "a", &["b", "c"]));
    assert_eq!(two.ok(primitive, 5, Op::Promote, "b").await, dv(2, "b", &["a", "c"]));
    assert_eq!(one.ok(primitive, 3, Op::Demote, "c").await, dv(2, "b", &["a", "c"]));
    assert_eq!(one.ok(primitive, 4, Op::Anoint, "c").await, dv(3, "c", &["b", "a"]));
    assert_eq!(one.ok(primitive, 5, Op::Evict, "b").await, dv(3, "c", &["a"]));
    assert_eq!(two.ok(primitive, 6, Op::Withdraw, "a").await, dv(3, "c", &["a"]), "a is not two's candidate");

    // The client API sees the same election by name (the driver used its partition).
    let mut client = rt::leader_election_client::LeaderElectionClient::new(channel.clone());
    let term = client.get_term(bounded(rt::GetTermRequest { id: id("shared") })).await.expect("client GetTerm").into_inner().term;
    assert_eq!(view(term), (3, "c".to_owned(), vec!["c".to_owned(), "a".to_owned()]), "the client API lists the leader first");

    // Closing a session removes its candidates at once, in one change.
    let mut watch = one.elections.clone();
    let request =
        el::WatchRequest { headers: Some(query_headers(partition, one.session_id, primitive, 0)), input: Some(el::WatchInput {}) };
    let mut stream = watch.watch(bounded(request)).await.expect("watch").into_inner();
    assert_eq!(next_watched(&mut stream).await, dv(3, "c", &["a"]));
    two.close().await.expect("CloseSession");
    assert_eq!(next_watched(&mut stream).await, dv(4, "a", &[]));

    // ClosePrimitive releases the session's handle and its candidates.
    assert_eq!(one.close_primitive(6, primitive).await.status, AtomixStatus::Ok);
    assert_eq!(next_watched(&mut stream).await, dv(4, "", &[]));
    assert_eq!(one.get_term(primitive, 0).await.2, Some(dv(4, "", &[])));

    // A closed session is gone: KeepAlive is a gRPC NOT_FOUND, commands a NOT_FOUND status.
    let status = two.keep_alive(0).await.expect_err("closed session");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains(&two.session_id.to_string()), "{status:?}");
    let refused = two.command(primitive, 7, Op::Enter, "z").await;
    assert_eq!((refused.status, refused.term.is_none()), (AtomixStatus::NotFound, true));
    assert!(refused.message.contains("session"), "{refused:?}");
    one.keep_alive(6).await.expect("an open session keeps alive");
}

#[tokio::test]
async fn state_machine_errors_arrive_in_the_headers() {
    let options = NodeOptions::default();
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &options).await;
    let channel = node.connect().await;
    let mut driver = Driver::open(&channel, 2, Duration::from_secs(30)).await;
    let (_, primitive) = driver.create_primitive(1, "errors").await;

    let unknown = driver.command(primitive + 1000, 2, Op::Enter, "a").await;
    assert_eq!((unknown.status, unknown.term.is_none()), (AtomixStatus::NotFound, true), "{unknown:?}");
    assert!(unknown.message.contains(&(primitive + 1000).to_string()), "names the primitive: {unknown:?}");
    let empty = driver.command(primitive, 3, Op::Enter, "").await;
    assert_eq!(empty.status, AtomixStatus::Invalid, "{empty:?}");
    assert!(empty.message.contains("empty"), "{empty:?}");
    let (named, _) = driver.create_primitive(4, "").await;
    assert_eq!(named.status, AtomixStatus::Invalid, "{named:?}");
    let (_, status, term) = driver.get_term(primitive + 1000, 0).await;
    assert_eq!((status, term), (AtomixStatus::NotFound, None));

    // A Watch of an unknown primitive answers one message carrying the status, then ends.
    let request =
        el::WatchRequest { headers: Some(query_headers(2, driver.session_id, primitive + 1000, 0)), input: Some(el::WatchInput {}) };
    let mut stream = driver.elections.watch(bounded(request)).await.expect("watch").into_inner();
    let first = tokio::time::timeout(CALL_TIMEOUT, stream.message()).await.expect("in time").expect("watch").expect("a message");
    let operation = first.headers.and_then(|h| h.operation).expect("operation headers");
    assert_eq!((operation.status, first.output.is_none()), (AtomixStatus::NotFound as i32, true));
    assert!(operation.message.contains("primitive"), "{}", operation.message);
    assert!(tokio::time::timeout(CALL_TIMEOUT, stream.message()).await.expect("ends").expect("cleanly").is_none());

    // What the node cannot run at all is a gRPC status: partitions outside 1..=P.
    for partition in [0, options.partitions + 1] {
        let request = mr::OpenSessionRequest {
            headers: Some(mr::PartitionRequestHeaders { partition_id: partition }),
            input: Some(mr::OpenSessionInput { timeout: Some(Duration::from_secs(5).try_into().unwrap()) }),
        };
        let status = driver.partitions.open_session(bounded(request)).await.expect_err("no such partition");
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert!(status.message().contains(&format!("partition {partition}")), "{status:?}");
    }
    let request = mr::OpenSessionRequest { headers: Some(mr::PartitionRequestHeaders { partition_id: 1 }), input: None };
    let status = driver.partitions.open_session(bounded(request)).await.expect_err("no timeout");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn retried_commands_apply_once_until_their_output_is_released() {
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &NodeOptions::default()).await;
    let channel = node.connect().await;
    let mut driver = Driver::open(&channel, 3, Duration::from_secs(30)).await;
    let (_, primitive) = driver.create_primitive(1, "once").await;
    let (retried, same) = driver.create_primitive(1, "once").await;
    assert_eq!((retried.status, same), (AtomixStatus::Ok, primitive));

    assert_eq!(driver.ok(primitive, 2, Op::Enter, "a").await, dv(1, "a", &[]));
    assert_eq!(driver.ok(primitive, 3, Op::Enter, "b").await, dv(1, "a", &["b"]));
    assert_eq!(driver.ok(primitive, 4, Op::Demote, "a").await, dv(2, "b", &["a"]));
    // Retries answer the cached output of their first run, whatever they carry now, and
    // apply nothing: a second Demote of the new leader would hand back to a (term 3).
    assert_eq!(driver.ok(primitive, 2, Op::Enter, "a").await, dv(1, "a", &[]), "cached, not the current state");
    assert_eq!(driver.ok(primitive, 4, Op::Demote, "b").await, dv(2, "b", &["a"]));
    assert_eq!(driver.ok(primitive, 3, Op::Enter, "zed").await, dv(1, "a", &["b"]), "a retry's input is ignored");
    assert_eq!(driver.get_term(primitive, 0).await.2, Some(dv(2, "b", &["a"])), "applied exactly once");

    // KeepAlive acknowledges outputs through 3: those retries are refused from then on.
    driver.keep_alive(3).await.expect("KeepAlive");
    for sequence_num in [1, 2, 3] {
        let refused = driver.command(primitive, sequence_num, Op::Demote, "b").await;
        assert_eq!((refused.status, refused.term.is_none()), (AtomixStatus::Invalid, true), "#{sequence_num}: {refused:?}");
        assert!(refused.message.contains("released"), "{refused:?}");
    }
    assert_eq!(driver.ok(primitive, 4, Op::Demote, "b").await, dv(2, "b", &["a"]), "4 is still cached");
    assert_eq!(driver.ok(primitive, 5, Op::Withdraw, "b").await, dv(3, "a", &[]));
    assert_eq!(driver.get_term(primitive, 0).await.2, Some(dv(3, "a", &[])));
}

#[tokio::test]
async fn queries_wait_for_max_received_index_and_watch_streams_changes() {
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &NodeOptions::default()).await;
    let channel = node.connect().await;
    let mut driver = Driver::open(&channel, 4, Duration::from_secs(30)).await;
    let (_, primitive) = driver.create_primitive(1, "indexed").await;
    let entered = driver.command(primitive, 2, Op::Enter, "a").await;
    let (index, status, term) = driver.get_term(primitive, entered.index).await;
    assert_eq!((status, term), (AtomixStatus::Ok, Some(dv(1, "a", &[]))));
    assert!(index >= entered.index, "a query answers at or after what the client saw: {index} < {}", entered.index);

    let mut watch = driver.elections.clone();
    let request = el::WatchRequest { headers: Some(query_headers(4, driver.session_id, primitive, 0)), input: Some(el::WatchInput {}) };
    let mut stream = watch.watch(bounded(request)).await.expect("watch").into_inner();
    let (first_index, first) = next_watched_at(&mut stream).await;
    assert_eq!(first, dv(1, "a", &[]), "the current state first");
    assert!(first_index >= entered.index, "the first state is read at or after the change: {first_index} < {}", entered.index);

    // A query for an index the partition has not reached waits until it gets there.
    let mut waiting = driver.clone();
    let target = entered.index + 3;
    let query = tokio::spawn(async move { waiting.get_term(primitive, target).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!query.is_finished(), "the query waits for index {target}");
    let mut last = entered.index;
    for (n, candidate) in ["b", "c", "d"].iter().enumerate() {
        last = driver.command(primitive, 3 + n as u64, Op::Enter, candidate).await.index;
    }
    assert!(last >= target);
    let (index, status, term) = tokio::time::timeout(CALL_TIMEOUT, query).await.expect("answered").expect("task");
    assert!(index >= target, "{index} < {target}");
    assert_eq!((status, term.map(|t| t.0)), (AtomixStatus::Ok, Some(1)));
    for waiting in [&["b"][..], &["b", "c"], &["b", "c", "d"]] {
        assert_eq!(next_watched(&mut stream).await, dv(1, "a", waiting), "every change, in order");
    }
    let withdrawn = driver.command(primitive, 6, Op::Withdraw, "a").await;
    assert_eq!(withdrawn.term, Some(dv(2, "b", &["c", "d"])));
    let (index, changed) = next_watched_at(&mut stream).await;
    assert_eq!((index, changed), (withdrawn.index, dv(2, "b", &["c", "d"])), "a change carries the log index of its entry");

    // An index that never comes: the call's deadline ends the wait.
    let mut request = tonic::Request::new(driver.get_term_request(primitive, last + 1_000_000));
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = driver.elections.get_term(request).await.expect_err("deadline");
    match status.code() {
        Code::DeadlineExceeded => assert!(status.message().contains("grpc-timeout"), "{status:?}"),
        // tonic's own timer on the same deadline may answer first.
        Code::Cancelled => assert!(status.message().contains("Timeout expired"), "{status:?}"),
        other => panic!("unexpected {other:?}: {status:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_session_that_stops_keeping_alive_expires_and_its_candidates_leave() {
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &NodeOptions::default()).await;
    let channel = node.connect().await;
    let timeout = Duration::from_millis(1_000);
    let opened = Instant::now();
    let mut silent = Driver::open(&channel, 1, timeout).await;
    let mut alive = Driver::open(&channel, 1, timeout).await;
    // The other session keeps alive every quarter timeout, acknowledging nothing.
    let mut keeper = alive.clone();
    let keep_alive = tokio::spawn(async move {
        loop {
            tokio::time::sleep(timeout / 4).await;
            keeper.keep_alive(0).await.expect("KeepAlive of a live session");
        }
    });
    let (_, primitive) = silent.create_primitive(1, "expiring").await;
    alive.create_primitive(1, "expiring").await;
    silent.ok(primitive, 2, Op::Enter, "silent-1").await;
    silent.ok(primitive, 3, Op::Enter, "silent-2").await;
    assert_eq!(alive.ok(primitive, 2, Op::Enter, "alive").await, dv(1, "silent-1", &["silent-2", "alive"]));

    let request = el::WatchRequest { headers: Some(query_headers(1, alive.session_id, primitive, 0)), input: Some(el::WatchInput {}) };
    let mut stream = alive.elections.clone().watch(bounded(request)).await.expect("watch").into_inner();
    assert_eq!(next_watched(&mut stream).await, dv(1, "silent-1", &["silent-2", "alive"]));
    // Both silent candidates leave in one change once the timeout has passed.
    assert_eq!(next_watched(&mut stream).await, dv(2, "alive", &[]));
    let expired_after = opened.elapsed();
    assert!(expired_after >= timeout - Duration::from_millis(100), "expired early: {expired_after:?}");
    assert!(expired_after < timeout * 5, "expired late: {expired_after:?}");

    let status = silent.keep_alive(3).await.expect_err("expired");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(silent.command(primitive, 4, Op::Enter, "back").await.status, AtomixStatus::NotFound);
    // Well past its own timeout, the session that kept alive is still there.
    tokio::time::sleep(timeout * 2).await;
    assert_eq!(alive.get_term(primitive, 0).await.2, Some(dv(2, "alive", &[])));
    assert!(!keep_alive.is_finished(), "every keep-alive succeeded");
    keep_alive.abort();
    assert_eq!(alive.ok(primitive, 3, Op::Withdraw, "alive").await, dv(2, "", &[]));
}

#[tokio::test]
async fn client_api_names_route_to_the_partition_of_the_documented_hash() {
    let options = NodeOptions::default();
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &options).await;
    let channel = node.connect().await;
    let mut client = rt::leader_election_client::LeaderElectionClient::new(channel.clone());
    let mut elections = rt::leader_elections_client::LeaderElectionsClient::new(channel.clone());
    let names = ["plain", "with space", "élection-ünïcode", "emoji-🗳", "a/b/c", "0", "name-7", "name-8"];
    for (i, name) in names.iter().enumerate() {
        elections.create(bounded(rt::CreateRequest { id: id(name), tags: vec![] })).await.expect("create");
        client.enter(bounded(rt::EnterRequest { id: id(name), candidate: format!("leader-{i}") })).await.expect("enter");
    }
    for (i, name) in names.iter().enumerate() {
        // The documented routing: CRC-32 (as zlib computes it) of the UTF-8 name, modulo the
        // number of partitions, plus one; computed here independently of the server.
        let partition = crc32fast::hash(name.as_bytes()) % options.partitions + 1;
        let mut driver = Driver::open(&channel, partition, Duration::from_secs(30)).await;
        let (created, primitive) = driver.create_primitive(1, name).await;
        assert_eq!(created.status, AtomixStatus::Ok);
        let (_, _, term) = driver.get_term(primitive, 0).await;
        assert_eq!(term, Some(dv(1, &format!("leader-{i}"), &[])), "{name} lives in partition {partition}");
    }
}

/// The `input_filter` the Atomix driver's Go library (`bits-and-blooms/bloom/v3`) wrote for
/// the fixture `name` of `engine/tests/fixtures/bloom/bloom.jsonl` (see its README).
fn go_filter(name: &str) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../engine/tests/fixtures/bloom/bloom.jsonl");
    let text = std::fs::read_to_string(path).expect("the Go Bloom filter fixtures");
    let fixture = text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a fixture line is JSON"))
        .find(|fixture| fixture["name"] == name)
        .unwrap_or_else(|| panic!("no fixture {name:?} in {path}"));
    fixture["filter"].as_str().expect("the filter's JSON").as_bytes().to_vec()
}

/// An Atomix-style driver session, scripted: commands in flight across keep-alives whose
/// filters list the open ones, a query taking a sequence number of its own, a retry after a
/// keep-alive passed it (the cached result, not SequenceFromThePast), a delayed command that
/// still runs, a malformed filter that changes nothing, released retries refused, and close.
/// Every command applies exactly once.
#[tokio::test]
async fn a_scripted_driver_session_keeps_exactly_once_across_keep_alives() {
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &NodeOptions::default()).await;
    let channel = node.connect().await;
    let mut driver = Driver::open(&channel, 2, Duration::from_secs(30)).await;
    let mut other = Driver::open(&channel, 2, Duration::from_secs(30)).await;
    let (_, primitive) = driver.create_primitive(1, "scripted").await;
    other.create_primitive(1, "scripted").await;
    let request = el::WatchRequest { headers: Some(query_headers(2, other.session_id, primitive, 0)), input: Some(el::WatchInput {}) };
    let mut stream = other.elections.clone().watch(bounded(request)).await.expect("watch").into_inner();
    assert_eq!(next_watched(&mut stream).await, dv(0, "", &[]));

    // #2 completes; #3 is applied but its answer is lost, so the client keeps it open; #4 is
    // a query (the driver numbers queries and commands from one counter); #5 is in flight.
    assert_eq!(driver.ok(primitive, 2, Op::Enter, "a").await, dv(1, "a", &[]));
    let three = driver.command(primitive, 3, Op::Enter, "b").await;
    assert_eq!(three.term, Some(dv(1, "a", &["b"])));
    let mut query = driver.get_term_request(primitive, three.index);
    query.headers.as_mut().expect("headers").sequence_num = 4;
    let term = driver.elections.get_term(bounded(query)).await.expect("GetTerm").into_inner().output.and_then(|o| o.term);
    assert_eq!(driver_view(term), dv(1, "a", &["b"]), "a query numbered after #3 sees it");
    for change in [dv(1, "a", &[]), dv(1, "a", &["b"])] {
        assert_eq!(next_watched(&mut stream).await, change);
    }

    // The driver's keep-alive: everything through #5 issued, #3 and #5 still open.
    // Its filters are the very bytes the driver's Go library wrote for these open sets.
    driver.keep_alive_raw(5, go_filter("driver session open 3,5")).await.expect("KeepAlive with #3 and #5 open");
    assert_eq!(driver.ok(primitive, 3, Op::Enter, "b").await, dv(1, "a", &["b"]), "the retry of #3 gets its cached result");
    assert_eq!(driver.ok(primitive, 5, Op::Enter, "c").await, dv(1, "a", &["b", "c"]), "the delayed #5 runs");
    assert_eq!(next_watched(&mut stream).await, dv(1, "a", &["b", "c"]));
    assert_eq!(driver.ok(primitive, 5, Op::Enter, "c").await, dv(1, "a", &["b", "c"]), "and is cached");
    let released = driver.command(primitive, 2, Op::Withdraw, "a").await;
    assert_eq!((released.status, released.term.is_none()), (AtomixStatus::Invalid, true), "{released:?}");
    assert!(released.message.contains("released"), "{released:?}");

    // A filter that does not decode is refused and changes nothing: #5 is still cached.
    for bad in [&b""[..], b"{}", b"{\"m\":0,\"k\":3,\"b\":\"AAAAAAAAAAA=\"}", b"{\"m\":8,\"k\":3,\"b\":\"AAAA\"}"] {
        let status = driver.keep_alive_raw(9, bad.to_vec()).await.expect_err("a malformed filter");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("input_filter"), "{status:?}");
    }
    let retry = driver.command(primitive, 5, Op::Enter, "c").await;
    assert_eq!((retry.status, retry.term), (AtomixStatus::Ok, Some(dv(1, "a", &["b", "c"]))), "still cached");

    // The next keep-alive has #6 open and ends #3 and #5: their retries are refused.
    driver.keep_alive_raw(6, go_filter("driver session open 6")).await.expect("KeepAlive with #6 open");
    for sequence_num in [3, 5] {
        let refused = driver.command(primitive, sequence_num, Op::Withdraw, "a").await;
        assert_eq!(refused.status, AtomixStatus::Invalid, "#{sequence_num}: {refused:?}");
    }
    let six = driver.command(primitive, 6, Op::Withdraw, "a").await;
    assert_eq!(six.term, Some(dv(2, "b", &["c"])));
    let (index, change) = next_watched_at(&mut stream).await;
    assert_eq!((index, change), (six.index, dv(2, "b", &["c"])), "the watch names the change's log index");
    assert_eq!(driver.ok(primitive, 6, Op::Withdraw, "a").await, dv(2, "b", &["c"]), "#6 is open: cached");

    // Closing the session removes its candidates in one change; nothing ran twice.
    driver.close().await.expect("CloseSession");
    assert_eq!(next_watched(&mut stream).await, dv(2, "", &[]));
    assert_eq!(other.get_term(primitive, 0).await.2, Some(dv(2, "", &[])), "two leader changes: #2 and #6");
    assert_eq!(driver.keep_alive(6).await.expect_err("closed").code(), Code::NotFound);
}
