//! Fuzzing the client listener of a real `conclave serve` process over TCP on 127.0.0.1:
//! random bytes, mangled prefaces, hand-built HTTP/2 frames (lying lengths, unknown types,
//! bad stream ids, invalid SETTINGS, WINDOW_UPDATE overflow, CONTINUATION, RST_STREAM and
//! PING floods, forbidden header bytes, huge headers and paths), and gRPC calls with lying
//! length prefixes, compressed flags, random protobuf bodies to every method the listener
//! serves (listed through its reflection service), odd paths and `grpc-timeout` values.
//!
//! Properties, checked case by case and at the end:
//! - each call is answered with a gRPC status, refused at the HTTP/2 level, or cut with
//!   its connection, within a bound; a raw connection is closed by the server, or held
//!   open by it no longer than its handshake / keepalive timeouts;
//! - the server never panics: the process stays alive and its log has no panic;
//! - a well-behaved client keeps being served: a tonic connection opened before the fuzz
//!   keeps its session (its candidate stays leader) and answers GetTerm and health checks
//!   after every case, and so do fresh connections;
//! - nothing grows without bound: once the fuzzed connections are gone, the server's open
//!   sockets and its client-session and watch-stream gauges return to their baselines, and
//!   its resident memory stays within a bound of what it was after a warm-up round.
//!
//! Bounded by default (a fixed number of cases from a seed printed at the start); the
//! environment variables `CONCLAVE_FUZZ_CASES`, `CONCLAVE_FUZZ_SECS` (keep running rounds
//! until that many seconds passed: a soak) and `CONCLAVE_FUZZ_SEED` (replay) change that.
mod fuzz_support;
mod support;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use conclave_server::grpc::Code;
use fuzz_support::cases::{batch, sweep, Conn, MethodInfo};
use fuzz_support::probe::{is_alive, metric, open_sockets, rss_kib};
use fuzz_support::run::{run_conn, Held, Seen, HOLD_BOUND};
use proptest::strategy::Strategy as _;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use support::client::atomix::runtime::election::v1 as rt;
use support::client::grpc::health::v1::health_client::HealthClient;
use support::client::grpc::health::v1::HealthCheckRequest;
use support::client::grpc::reflection::v1 as refl;
use support::{bounded, id, Node, NodeOptions, TestDir};

/// Cases (each a batch of up to [`MAX_CONNECTIONS`] connections run at once) per round;
/// a run is a warm-up round of a quarter of that, then one round (or rounds until
/// `CONCLAVE_FUZZ_SECS` passed).
const DEFAULT_CASES: u32 = 120;
const MAX_CONNECTIONS: usize = 6;
/// Resident memory the server may gain over the whole run, beyond what it held after the
/// warm-up round (state the fuzzed calls legitimately create — elections, sessions — is
/// small; a per-connection or per-call leak over hundreds of connections is not).
const RSS_SLACK_KIB: u64 = 24 << 10;

struct Knobs {
    seed: u64,
    cases: u32,
    soak: Option<Duration>,
}

impl Knobs {
    fn from_env() -> Knobs {
        let var = |name: &str| std::env::var(name).ok().map(|v| v.parse::<u64>().unwrap_or_else(|e| panic!("{name}={v:?}: {e}")));
        let seed = var("CONCLAVE_FUZZ_SEED").unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_nanos() as u64
        });
        let cases = var("CONCLAVE_FUZZ_CASES").map_or(DEFAULT_CASES, |cases| cases as u32);
        Knobs { seed, cases, soak: var("CONCLAVE_FUZZ_SECS").map(Duration::from_secs) }
    }

    /// The command that runs the same cases again (round after round for a soak).
    fn replay(&self) -> String {
        let soak = self.soak.map(|soak| format!(" CONCLAVE_FUZZ_SECS={}", soak.as_secs())).unwrap_or_default();
        format!(
            "CONCLAVE_FUZZ_SEED={} CONCLAVE_FUZZ_CASES={}{soak} cargo test -p conclave-server --test fuzz_edge -- --nocapture",
            self.seed, self.cases
        )
    }
}

/// A 32-byte ChaCha seed from a 64-bit one (splitmix64).
fn rng_for(seed: u64) -> TestRng {
    let mut state = seed;
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// Every method of every service the client listener serves: the services from its own
/// reflection service, their methods from the descriptor set compiled into the binary.
async fn served_methods(node: &Node) -> Vec<MethodInfo> {
    let mut client = refl::server_reflection_client::ServerReflectionClient::new(node.connect().await);
    let ask = refl::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(refl::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut answers = client.server_reflection_info(futures_lite::stream::once(ask)).await.expect("reflection stream").into_inner();
    let answer = answers.message().await.expect("reflection answer").expect("one answer");
    let Some(refl::server_reflection_response::MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("expected the service list, got {answer:?}");
    };
    let pool = prost_reflect::DescriptorPool::decode(conclave_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let mut methods = Vec::new();
    for service in &list.service {
        let descriptor = pool.get_service_by_name(&service.name).unwrap_or_else(|| panic!("{} is not in the descriptor set", service.name));
        for method in descriptor.methods() {
            let path = format!("/{}/{}", service.name, method.name());
            methods.push(MethodInfo { path, streaming: method.is_server_streaming(), input: method.input() });
        }
    }
    methods
}

/// A well-behaved client: one tonic connection holding a session whose candidate leads an
/// election, checked after every case.
struct Witness {
    channel: tonic::transport::Channel,
}

const WITNESS_ELECTION: &str = "fuzz-witness";

impl Witness {
    async fn start(node: &Node) -> Witness {
        let channel = node.connect().await;
        support::cluster::create(&channel, WITNESS_ELECTION).await;
        let request = rt::EnterRequest { id: id(WITNESS_ELECTION), candidate: "witness".into() };
        let term = support::cluster::Election::new(channel.clone()).enter(bounded(request)).await.expect("Enter").into_inner().term;
        assert_eq!(term.expect("a term").leader, "witness");
        Witness { channel }
    }

    /// The witness's connection still answers and its session still leads; a fresh
    /// connection is served too.
    async fn check(&self, node: &Node) -> Result<(), String> {
        let mut election = support::cluster::Election::new(self.channel.clone());
        let term = election.get_term(bounded(rt::GetTermRequest { id: id(WITNESS_ELECTION) })).await;
        let term = term.map_err(|status| format!("the witness's GetTerm failed: {status:?}"))?.into_inner().term.unwrap_or_default();
        if term.leader != "witness" {
            return Err(format!("the witness lost its leadership (its session ended?): {term:?}"));
        }
        let mut health = HealthClient::new(node.connect().await);
        let status = health.check(bounded(HealthCheckRequest { service: String::new() })).await;
        status.map_err(|status| format!("a fresh connection's health check failed: {status:?}"))?;
        Ok(())
    }
}

/// Runs one case's connections at once; stalled ones go to `held`.
async fn run_batch(node: &Node, conns: &[Conn], held: &mut Vec<Held>, seen: &mut BTreeMap<(String, Seen), u64>) -> Result<(), String> {
    let addr = node.ports.listen;
    let mut tasks = tokio::task::JoinSet::new();
    for (index, conn) in conns.iter().enumerate() {
        let conn = conn.clone();
        tasks.spawn(async move { (index, run_conn(addr, &conn).await) });
    }
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (index, result) = joined.map_err(|e| format!("a connection task failed: {e}"))?;
        match result {
            Ok((what, stalled)) => {
                let kind = match &conns[index] {
                    Conn::Grpc(call) if call.streaming.is_some() => call.path.clone(),
                    Conn::Grpc(_) => "(unserved path)".to_owned(),
                    Conn::Raw(_) => "(raw)".to_owned(),
                };
                *seen.entry((kind, what)).or_default() += 1;
                held.extend(stalled);
            }
            Err(problem) => failures.push(format!("connection {index}: {problem}")),
        }
    }
    if !is_alive(node.pid()) {
        failures.push("the server process died".to_owned());
    }
    if failures.is_empty() {
        return Ok(());
    }
    Err(failures.join("; "))
}

fn panics_in(node: &Node) -> Option<String> {
    let output = node.output();
    output.contains("panicked").then(|| output.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"))
}

/// Waits (bounded) until `probe` is at most `baseline`; its last value.
fn settles<T: PartialOrd + Copy>(within: Duration, baseline: T, mut probe: impl FnMut() -> T) -> T {
    let deadline = Instant::now() + within;
    loop {
        let value = probe();
        if value <= baseline || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_client_listener_survives_fuzzed_connections() {
    let knobs = Knobs::from_env();
    println!("fuzz_edge: seed {}, {} cases per round after a warm-up round; replay: {}", knobs.seed, knobs.cases, knobs.replay());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let mut dir = TestDir::new();
    let node = runtime.block_on(Node::start(&mut dir, &NodeOptions { shards: 2, partitions: 2, ..NodeOptions::default() }));
    let pid = node.pid();
    let methods = runtime.block_on(served_methods(&node));
    assert!(methods.len() >= 20, "the client listener serves the election, driver, health and reflection APIs: {methods:?}");
    let witness = runtime.block_on(Witness::start(&node));
    let sockets_before = open_sockets(pid);
    let sessions_before = metric(node.ports.metrics, "conclave_client_sessions_open");
    let watches_before = metric(node.ports.metrics, "conclave_watch_streams");

    let started = Instant::now();
    let held: RefCell<Vec<Held>> = RefCell::new(Vec::new());
    // Outcomes by method path (or "(raw)", "(unserved path)").
    let seen: RefCell<BTreeMap<(String, Seen), u64>> = RefCell::new(BTreeMap::new());
    let cases_run = Cell::new(0u64);
    let mut rss_after_warmup = None;
    let mut hold_times = Vec::new();
    let mut round = 0u64;
    loop {
        // Round 0 is a shorter warm-up, after which the server's memory is measured.
        let cases = if round == 0 { (knobs.cases / 4).max(4) } else { knobs.cases };
        let config = Config { cases, failure_persistence: None, max_shrink_iters: 256, ..Config::default() };
        let mut runner = TestRunner::new_with_rng(config, rng_for(knobs.seed.wrapping_add(round)));
        // Round 0 calls every method at once per case; later rounds mix everything.
        let strategy = if round == 0 { sweep(methods.clone()).boxed() } else { batch(methods.clone(), MAX_CONNECTIONS).boxed() };
        let first_failure: RefCell<Option<String>> = RefCell::new(None);
        let result = runner.run(&strategy, |conns| {
            if !is_alive(pid) {
                return Ok(()); // judged after the run: a dead server cannot shrink a case
            }
            cases_run.set(cases_run.get() + 1);
            let outcome = runtime.block_on(async {
                let mut stalled = Vec::new();
                let mut outcomes = BTreeMap::new();
                let ran = run_batch(&node, &conns, &mut stalled, &mut outcomes).await;
                held.borrow_mut().extend(stalled);
                for (what, count) in outcomes {
                    *seen.borrow_mut().entry(what).or_default() += count;
                }
                ran?;
                witness.check(&node).await
            });
            if let Err(problem) = &outcome {
                first_failure.borrow_mut().get_or_insert_with(|| format!("{problem}\n  case: {conns:?}"));
            }
            outcome.map_err(TestCaseError::fail)
        });
        if let Some(panic) = panics_in(&node) {
            panic!("the server panicked (replay: {}):\n{panic}", knobs.replay());
        }
        assert!(
            is_alive(pid),
            "the server died (replay: {}); first failing case: {:?}\n{}",
            knobs.replay(),
            first_failure.borrow(),
            node.output()
        );
        if let Err(error) = result {
            panic!("fuzz case failed (replay: {}):\n{error}\nfirst failure before shrinking: {:?}", knobs.replay(), first_failure.borrow());
        }
        // Stalled connections of this round must be closed by the server's own timeouts.
        for stalled in held.borrow_mut().drain(..) {
            hold_times.push(runtime.block_on(stalled.closed_in_time()).unwrap_or_else(|problem| panic!("{problem}")));
        }
        if round == 0 {
            // Every listed method is routed: well-formed calls never get UNIMPLEMENTED.
            let unrouted: Vec<_> = seen.borrow().keys().filter(|(_, what)| *what == Seen::Status(Code::Unimplemented)).cloned().collect();
            assert!(unrouted.is_empty(), "listed methods answered UNIMPLEMENTED: {unrouted:?}");
        }
        rss_after_warmup.get_or_insert_with(|| rss_kib(pid));
        println!(
            "fuzz_edge: round {round} done at {:.1?}: {} cases so far, RSS {} KiB, {} sockets",
            started.elapsed(),
            cases_run.get(),
            rss_kib(pid),
            open_sockets(pid)
        );
        round += 1;
        if round >= 2 && knobs.soak.is_none_or(|soak| started.elapsed() >= soak) {
            break;
        }
    }

    // Back to baseline once the fuzzed connections are gone.
    let sockets = settles(HOLD_BOUND, sockets_before, || open_sockets(pid));
    assert!(sockets <= sockets_before, "the server holds {sockets} sockets, {sockets_before} before the fuzz");
    let sessions = settles(Duration::from_secs(10), sessions_before, || metric(node.ports.metrics, "conclave_client_sessions_open"));
    assert!(sessions <= sessions_before, "{sessions} client sessions open, {sessions_before} before the fuzz");
    let watches = settles(Duration::from_secs(10), watches_before, || metric(node.ports.metrics, "conclave_watch_streams"));
    assert!(watches <= watches_before, "{watches} watch streams open, {watches_before} before the fuzz");
    let rss = rss_kib(pid);
    let warm = rss_after_warmup.expect("one round ran");
    runtime.block_on(witness.check(&node)).unwrap_or_else(|problem| panic!("after the fuzz: {problem}"));
    let mut by_kind: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ((kind, what), count) in seen.borrow().iter() {
        by_kind.entry(kind.clone()).or_default().push(format!("{what:?}×{count}"));
    }
    for (kind, outcomes) in &by_kind {
        println!("fuzz_edge:   {kind}: {}", outcomes.join(", "));
    }
    println!(
        "fuzz_edge: {round} rounds, {} cases ({} connections) in {:.1?}; {} stalled connections closed by the server after at most {:.1?}; \
         RSS {warm} KiB after the first round, {rss} KiB at the end; sockets {sockets_before} before, {sockets} after",
        cases_run.get(),
        seen.borrow().values().sum::<u64>(),
        started.elapsed(),
        hold_times.len(),
        hold_times.iter().max().copied().unwrap_or_default(),
    );
    assert!(rss <= warm + RSS_SLACK_KIB, "the server grew from {warm} KiB to {rss} KiB (replay: {})", knobs.replay());
    assert!(panics_in(&node).is_none());
}
