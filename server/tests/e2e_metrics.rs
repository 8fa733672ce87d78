//! The metrics listener (`--metrics-listen`) of real `conclave serve` processes:
//!
//! - `/metrics` parsed by the Python `prometheus_client` package's parsers (OpenMetrics and
//!   classic text), with values that move under a load of `Enter` calls made with tonic;
//! - the HTTP layer's answers to bad requests (404, 405, 400, 431) and keep-alive;
//! - `/livez` and `/readyz` on a 3-node cluster as nodes are killed: the survivors stay
//!   ready after failover, a node left without quorum is live but not ready.
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::client::atomix::runtime::election::v1 as rt;
use support::cluster::{create, spread_names, Cluster, ClusterOptions, Election};
use support::python::python_with_grpc;
use support::{bounded, id, Node, NodeOptions, TestDir};

/// One parsed sample: (name, labels) → value.
type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// A scrape as the Python parsers saw it.
struct Scrape {
    content_type: String,
    families: BTreeMap<String, String>,
    samples: Samples,
}

impl Scrape {
    /// The sum of every sample named `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|((n, l), _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, v)| v)
            .sum()
    }

    fn count(&self, name: &str) -> usize {
        self.samples.keys().filter(|(n, _)| n == name).count()
    }
}

/// Scrapes `addr`'s `/metrics` with the Python parsers (both must accept it).
fn scrape(addr: SocketAddr) -> Scrape {
    let python = python_with_grpc();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/scrape_metrics.py");
    let output = Command::new(python).arg(script).arg(addr.to_string()).output().expect("run scrape_metrics.py");
    assert!(
        output.status.success(),
        "the prometheus_client parsers refused the exposition:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("the script prints JSON");
    let families =
        json["families"].as_object().expect("families").iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect();
    let mut samples = Samples::new();
    for sample in json["samples"].as_array().expect("samples") {
        let name = sample[0].as_str().expect("name").to_owned();
        let labels = sample[1].as_object().expect("labels").iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect();
        samples.insert((name, labels), sample[2].as_f64().expect("value"));
    }
    assert!(json["classic_samples"].as_u64().unwrap() > 0, "the classic text parser read samples too");
    Scrape { content_type: json["content_type"].as_str().unwrap_or_default().to_owned(), families, samples }
}

/// Sends `request` (raw bytes) on a fresh connection and reads until the server closes it.
fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to the metrics listener");
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    stream.write_all(request).expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// `GET path` with `Connection: close`: (status code, body).
fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), std::io::Error> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_under_load() {
    let mut dir = TestDir::new();
    let options = NodeOptions::default();
    let node = Node::start(&mut dir, &options).await;
    let metrics = node.ports.metrics;
    // The node reports leaders as it starts; wait (bounded) until every partition shows one.
    let deadline = Instant::now() + Duration::from_secs(20);
    let before = loop {
        let scrape = tokio::task::spawn_blocking(move || scrape(metrics)).await.unwrap();
        if scrape.sum("conclave_server_has_leader", &[]) as u32 == options.partitions || Instant::now() > deadline {
            break scrape;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(before.content_type.starts_with("application/openmetrics-text"), "{}", before.content_type);
    for (family, kind) in [
        ("conclave_server_has_leader", "gauge"),
        ("conclave_server_is_leader", "gauge"),
        ("conclave_server_leader_changes_seen", "counter"),
        ("conclave_server_proposals_committed", "counter"),
        ("conclave_server_proposals_applied", "counter"),
        ("conclave_server_proposals_pending", "gauge"),
        ("conclave_server_proposals_failed", "counter"),
        ("conclave_disk_wal_fsync_duration_seconds", "histogram"),
        ("conclave_disk_snapshot_save_duration_seconds", "histogram"),
        ("conclave_network_peer_round_trip_time_seconds", "histogram"),
        ("conclave_network_peer_sent_failures", "counter"),
        ("conclave_network_active_peers", "gauge"),
        ("conclave_grpc_server_handled", "counter"),
        ("conclave_grpc_server_handling_seconds", "histogram"),
        ("conclave_client_sessions_open", "gauge"),
        ("conclave_elections", "gauge"),
        ("conclave_election_candidates", "gauge"),
        ("conclave_watch_streams", "gauge"),
        ("conclave_election_term_changes", "counter"),
        ("conclave_shard_up", "gauge"),
        ("conclave_shard_loop_rounds", "counter"),
        ("conclave_shard_log_writes", "counter"),
        ("conclave_shard_proposals", "counter"),
        ("conclave_raft_messages_sent", "counter"),
        ("conclave_client_session_keepalive_entries", "counter"),
        ("process_cpu_seconds", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("process_open_fds", "gauge"),
    ] {
        assert_eq!(before.families.get(family).map(String::as_str), Some(kind), "family {family}");
    }
    // The process figures are the server's own (its pid's /proc entry, read here too).
    let rss = before.sum("process_resident_memory_bytes", &[]);
    assert!(rss > 1e6 && rss < 4e9, "resident memory {rss}");
    assert!(before.sum("process_open_fds", &[]) >= 5.0, "the node holds its listeners, logs and ring");
    let ticks: f64 = std::fs::read_to_string(format!("/proc/{}/stat", node.pid())).map_or(0.0, |stat| {
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().collect();
        fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()
    });
    let scraped_cpu = before.sum("process_cpu_seconds_total", &[]);
    assert!(scraped_cpu > 0.0 && scraped_cpu <= ticks / 100.0 + 0.05, "scraped {scraped_cpu} s, /proc read later {ticks} ticks");
    // A single node leads every partition.
    assert_eq!(before.count("conclave_server_has_leader"), options.partitions as usize);
    assert_eq!(before.sum("conclave_server_is_leader", &[]) as u32, options.partitions);
    assert!(before.sum("conclave_server_leader_changes_seen_total", &[]) >= f64::from(options.partitions));
    assert_eq!(before.sum("conclave_shard_up", &[]) as u32, options.shards);

    // Load: candidates enter elections spread over the partitions, and one watch stays open.
    const ENTERS: usize = 40;
    let channel = node.connect().await;
    let mut client = Election::new(channel.clone());
    for i in 0..8 {
        create(&channel, &format!("metrics-{i}")).await;
    }
    let mut watch = client.watch(bounded(rt::WatchRequest { id: id("metrics-0") })).await.expect("watch");
    for i in 0..ENTERS {
        let request = rt::EnterRequest { id: id(&format!("metrics-{}", i % 8)), candidate: format!("c{i}") };
        client.enter(bounded(request)).await.expect("enter");
    }
    let first = tokio::time::timeout(Duration::from_secs(5), watch.get_mut().message()).await;
    assert!(matches!(first, Ok(Ok(Some(_)))), "the watch streams the election: {first:?}");
    let during = tokio::task::spawn_blocking(move || scrape(metrics)).await.unwrap();

    let enter_ok = [("grpc_service", "atomix.runtime.election.v1.LeaderElection"), ("grpc_method", "Enter"), ("grpc_code", "OK")];
    let handled = |s: &Scrape| s.sum("conclave_grpc_server_handled_total", &enter_ok);
    assert!(handled(&during) - handled(&before) >= ENTERS as f64, "Enter calls counted: {} then {}", handled(&before), handled(&during));
    let latency = [("grpc_method", "Enter"), ("grpc_type", "unary")];
    assert!(during.sum("conclave_grpc_server_handling_seconds_count", &latency) >= ENTERS as f64);
    assert!(during.sum("conclave_grpc_server_handling_seconds_bucket", &[("grpc_method", "Enter"), ("le", "+Inf")]) >= ENTERS as f64);
    for name in [
        "conclave_server_proposals_committed_total",
        "conclave_server_proposals_applied_total",
        "conclave_disk_wal_fsync_duration_seconds_count",
        "conclave_shard_proposals_total",
    ] {
        assert!(during.sum(name, &[]) >= before.sum(name, &[]) + ENTERS as f64, "{name} moved by the load");
    }
    for name in ["conclave_shard_loop_rounds_total", "conclave_shard_log_writes_total"] {
        assert!(during.sum(name, &[]) > before.sum(name, &[]), "{name} moved by the load");
    }
    // Histogram buckets are cumulative and end with the count.
    let mut bounds: Vec<(f64, f64)> = during
        .samples
        .iter()
        .filter(|((n, _), _)| n == "conclave_disk_wal_fsync_duration_seconds_bucket")
        .map(|((_, labels), v)| (labels["le"].parse::<f64>().unwrap_or(f64::INFINITY), *v))
        .collect();
    bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let buckets: Vec<f64> = bounds.into_iter().map(|(_, count)| count).collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "cumulative buckets: {buckets:?}");
    assert_eq!(buckets.last().copied(), Some(during.sum("conclave_disk_wal_fsync_duration_seconds_count", &[])));
    assert_eq!(during.sum("conclave_elections", &[]), 8.0, "eight elections were entered");
    assert_eq!(during.sum("conclave_election_candidates", &[]), ENTERS as f64);
    assert!(during.sum("conclave_election_term_changes_total", &[]) >= 8.0, "each election got its first leader");
    assert!(during.sum("conclave_client_sessions_open", &[]) >= 1.0, "the client's session is open");
    assert!(during.sum("conclave_sessions", &[]) >= 1.0);
    assert_eq!(during.sum("conclave_watch_streams", &[]), 1.0, "the watch stream is counted");

    // The client leaves: its watch and sessions end and the gauges come down (bounded wait).
    drop(watch);
    drop(client);
    drop(channel);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let after = tokio::task::spawn_blocking(move || scrape(metrics)).await.unwrap();
        let (watches, sessions) = (after.sum("conclave_watch_streams", &[]), after.sum("conclave_client_sessions_open", &[]));
        if watches == 0.0 && sessions == 0.0 {
            assert_eq!(after.sum("conclave_election_candidates", &[]), 0.0, "the candidacies ended with the session");
            break;
        }
        assert!(Instant::now() < deadline, "watch streams {watches} and sessions {sessions} did not come down");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_refuses_bad_requests_and_keeps_connections_alive() {
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &NodeOptions::default()).await;
    let addr = node.ports.metrics;
    tokio::task::spawn_blocking(move || {
        let (status, body) = get(addr, "/nowhere").unwrap();
        assert_eq!(status, 404, "{body}");
        assert!(body.contains("/metrics"), "{body}");
        assert!(raw_http(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").starts_with("HTTP/1.1 405 "));
        assert!(raw_http(addr, b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").starts_with("HTTP/1.1 400 "));
        assert!(raw_http(addr, b"\x16\x03\x01 garbage\r\n\r\n").starts_with("HTTP/1.1 400 "));
        let huge = format!("GET /metrics HTTP/1.1\r\nX-Padding: {}\r\n\r\n", "a".repeat(16 << 10));
        assert!(raw_http(addr, huge.as_bytes()).starts_with("HTTP/1.1 431 "));
        // A request that never ends is cut off after the read timeout (5 s).
        let started = Instant::now();
        assert!(raw_http(addr, b"GET /metrics HTTP/1.1\r\n").starts_with("HTTP/1.1 408 "));
        assert!(started.elapsed() < Duration::from_secs(12));
        // Two requests on one connection (HTTP/1.1 keep-alive), then HEAD with close.
        let answer = raw_http(addr, b"GET /livez HTTP/1.1\r\n\r\nHEAD /metrics?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
        assert!(answer.ends_with("\r\n\r\n"), "HEAD has no body: {answer}");
    })
    .await
    .unwrap();
}

/// Polls `GET path` until it answers `want` (bounded); returns the last answer.
async fn wait_status(addr: SocketAddr, path: &'static str, want: u16, within: Duration) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        let answer = tokio::task::spawn_blocking(move || get(addr, path)).await.unwrap();
        let answer = answer.unwrap_or_else(|e| (0, e.to_string()));
        if answer.0 == want || Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_follow_a_three_node_cluster_losing_nodes() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let addr = |cluster: &Cluster, id: u32| cluster.member(id).ports.metrics;
    for id in cluster.ids() {
        assert_eq!(wait_status(addr(&cluster, id), "/livez", 200, Duration::from_secs(10)).await, (200, "ok\n".to_owned()));
        let ready = wait_status(addr(&cluster, id), "/readyz", 200, Duration::from_secs(20)).await;
        assert_eq!(ready.0, 200, "node {id} ready: {}", ready.1);
    }

    // Peers: every shard of node 2 is connected to nodes 1 and 3, and heartbeat round trips
    // are measured (bounded wait: heartbeats flow every few ticks while groups are active).
    let metrics = addr(&cluster, 2);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let scrape = tokio::task::spawn_blocking(move || scrape(metrics)).await.unwrap();
        let connected = |to: &str| scrape.sum("conclave_network_active_peers", &[("local", "2"), ("remote", to)]);
        let rtts = |to: &str| scrape.sum("conclave_network_peer_round_trip_time_seconds_count", &[("to", to)]);
        let shards = f64::from(cluster.options.shards);
        let partitions = f64::from(cluster.options.partitions);
        // Node 2 may win every first election; rebalancing then hands the partitions to
        // their preferred leaders, so it leads only some of them after a while.
        // (A partition changing hands may be without a known leader for a moment.)
        let led = scrape.sum("conclave_server_is_leader", &[]);
        let with_leader = scrape.sum("conclave_server_has_leader", &[]);
        let peered = connected("1") == shards && connected("3") == shards && rtts("1") > 0.0 && rtts("3") > 0.0;
        if peered && led < partitions && with_leader == partitions {
            assert!(scrape.sum("conclave_network_peer_sent_bytes_total", &[("to", "1")]) > 0.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "peers connected {} / {}, round trips {} / {}, node 2 leads {led} and knows a leader for {with_leader} \
             of {partitions} partitions (leaderships are not spread, or not all led)",
            connected("1"),
            connected("3"),
            rtts("1"),
            rtts("3")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Node 1 dies: the survivors elect leaders for its partitions and stay (or become
    // again) ready; they stay live throughout.
    cluster.kill9(1);
    assert!(get(addr(&cluster, 1), "/livez").is_err(), "a killed node answers nothing");
    for id in [2, 3] {
        let ready = wait_status(addr(&cluster, id), "/readyz", 200, Duration::from_secs(20)).await;
        assert_eq!(ready.0, 200, "node {id} ready after failover: {}\n{}", ready.1, cluster.logs());
        assert_eq!(wait_status(addr(&cluster, id), "/livez", 200, Duration::from_secs(5)).await.0, 200);
    }

    // Node 2 dies too: node 3 has no quorum, so no partition can have a leader or serve a
    // linearizable read; it is not ready, but it is live.
    cluster.kill9(2);
    let (status, body) = wait_status(addr(&cluster, 3), "/readyz", 503, Duration::from_secs(30)).await;
    assert_eq!(status, 503, "node 3 without quorum is not ready: {body}");
    assert!(body.contains("partition"), "the body names what is missing: {body}");
    assert_eq!(wait_status(addr(&cluster, 3), "/livez", 200, Duration::from_secs(5)).await, (200, "ok\n".to_owned()));

    // Node 2 returns: quorum again, node 3 is ready again.
    cluster.restart(2).await;
    let ready = wait_status(addr(&cluster, 3), "/readyz", 200, Duration::from_secs(30)).await;
    assert_eq!(ready.0, 200, "node 3 ready once quorum is back: {}", ready.1);
}

/// Client sessions are kept alive by one log entry per partition per interval, not one per
/// session: 12 connections, each with a session in the node's only partition, cost each
/// shard one keep-alive entry per interval (the session timeout / 4), and every session
/// outlives several timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_cost_one_entry_per_partition_per_interval() {
    const CONNECTIONS: usize = 12;
    let mut dir = TestDir::new();
    let options = NodeOptions { partitions: 1, ..NodeOptions::default() };
    let interval = Duration::from_millis(options.session_timeout_ms / 4);
    let node = Node::start(&mut dir, &options).await;
    let metrics = node.ports.metrics;
    let first = node.connect().await;
    create(&first, "keepalive").await;
    let mut clients = Vec::new();
    for i in 0..CONNECTIONS {
        let channel = if i == 0 { first.clone() } else { node.connect().await };
        let mut client = Election::new(channel);
        client.enter(bounded(rt::EnterRequest { id: id("keepalive"), candidate: format!("c{i}") })).await.expect("enter");
        clients.push(client);
    }
    let entries = |s: &Scrape| s.sum("conclave_client_session_keepalive_entries_total", &[]);
    let before = tokio::task::spawn_blocking(move || scrape(metrics)).await.unwrap();
    assert_eq!(before.sum("conclave_client_sessions_open", &[]), CONNECTIONS as f64, "one session per connection");
    let started = Instant::now();
    // Three session timeouts: without keep-alives every session would have expired.
    tokio::time::sleep(Duration::from_millis(3 * options.session_timeout_ms)).await;
    let after = tokio::task::spawn_blocking(move || scrape(metrics)).await.unwrap();
    let intervals = (started.elapsed().as_secs_f64() / interval.as_secs_f64()).ceil();
    let sent = entries(&after) - entries(&before);
    let most = f64::from(options.shards) * (intervals + 1.0);
    assert!(sent >= intervals / 2.0, "keep-alives were sent: {sent} entries in {intervals} intervals");
    assert!(
        sent <= most,
        "{sent} keep-alive entries for {CONNECTIONS} sessions in {intervals} intervals: at most {most} (one per shard and interval)"
    );
    let term = clients[0].get_term(bounded(rt::GetTermRequest { id: id("keepalive") })).await.expect("get term").into_inner();
    assert_eq!(term.term.map(|t| t.candidates.len()), Some(CONNECTIONS), "every session stayed alive");
    assert_eq!(after.sum("conclave_client_sessions_open", &[]), CONNECTIONS as f64);
}

/// Leadership follows the workload on real processes: a client talking to node 2 alone
/// finds, within a few rebalancing periods, the leaders of all four partitions on node 2
/// (those preferred elsewhere are handed over and counted), and then its commands are no
/// longer forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_follows_a_client_to_the_node_it_talks_to() {
    let rebalance = ["--rebalance-ms".to_owned(), "200".to_owned()];
    let options = ClusterOptions {
        shards: 1,
        partitions: 4,
        node_args: (1..=3).map(|n| (n, rebalance.to_vec())).collect(),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(options).await;
    let channel = cluster.connect(2).await;
    let names = spread_names("follow", 1, 4);
    for name in &names {
        create(&channel, name).await;
    }
    let mut client = Election::new(channel);
    let metrics = |n: u32| cluster.member(n).ports.metrics;
    let sum = |name: &'static str| {
        let addrs: Vec<SocketAddr> = (1..=3).map(metrics).collect();
        async move { tokio::task::spawn_blocking(move || addrs.iter().map(|a| scrape(*a).sum(name, &[])).collect::<Vec<f64>>()).await.unwrap() }
    };
    let forwarded = || {
        let addr = metrics(2);
        async move {
            tokio::task::spawn_blocking(move || scrape(addr).sum("conclave_shard_forwarded_answered_by_leader_total", &[])).await.unwrap()
        }
    };
    // Rounds of 20 commands in every partition through node 2, until a round is not
    // forwarded at all (bounded: 20 s).
    let started = Instant::now();
    let mut rounds = 0;
    loop {
        let before = forwarded().await;
        for k in 0..10 {
            for name in &names {
                let candidate = format!("c{k}");
                client.enter(bounded(rt::EnterRequest { id: id(name), candidate: candidate.clone() })).await.expect("enter");
                client.withdraw(bounded(rt::WithdrawRequest { id: id(name), candidate })).await.expect("withdraw");
            }
        }
        rounds += 1;
        let grew = forwarded().await - before;
        if grew == 0.0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "node 2 still forwards {grew} of 80 commands after {rounds} rounds");
    }
    let transfers = sum("conclave_shard_workload_transfers_total").await;
    eprintln!("no command forwarded after {rounds} rounds ({:?}); workload transfers by node: {transfers:?}", started.elapsed());
    assert!(rounds > 1, "the partitions led elsewhere forwarded at first");
    assert_eq!(transfers[1], 0.0, "node 2 handed nothing away");
    assert!(transfers[0] + transfers[2] >= 2.0, "the partitions preferred by nodes 1 and 3 were handed to node 2: {transfers:?}");
}

/// `--leader-placement pack` on real processes: wherever the first elections put them, every
/// partition's leadership ends on node 1 (the lowest id) within a few rebalancing periods,
/// and a command through another node still succeeds (forwarded to node 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_leaderships_gather_on_the_lowest_node_id() {
    let flags = ["--rebalance-ms", "200", "--leader-placement", "pack"].map(str::to_owned);
    let options =
        ClusterOptions { shards: 1, partitions: 4, node_args: (1..=3).map(|n| (n, flags.to_vec())).collect(), ..ClusterOptions::default() };
    let cluster = Cluster::start(options).await;
    let addrs: Vec<SocketAddr> = (1..=3).map(|n| cluster.member(n).ports.metrics).collect();
    let started = Instant::now();
    loop {
        let addrs = addrs.clone();
        let led: Vec<f64> =
            tokio::task::spawn_blocking(move || addrs.iter().map(|a| scrape(*a).sum("conclave_server_is_leader", &[])).collect())
                .await
                .unwrap();
        if led == [4.0, 0.0, 0.0] {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "leaderships by node after {:?}: {led:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let channel = cluster.connect(3).await;
    let names = spread_names("pack", 1, 4);
    let mut client = Election::new(channel.clone());
    for name in &names {
        create(&channel, name).await;
        let entered = client.enter(bounded(rt::EnterRequest { id: id(name), candidate: "c".into() })).await.expect("enter through node 3");
        assert_eq!(entered.into_inner().term.map(|t| t.leader).as_deref(), Some("c"));
    }
}

/// GetTerm through nodes that do not lead the partition is served there under a lease from
/// the leader (`--follower-reads`, on by default): after the first read of each partition
/// through each node, followers answer without asking the leader, and every read sees the
/// term the last Enter made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_serve_reads_under_leases_from_their_leader() {
    // Leadership stays put (no workload moves), so two of three nodes follow each partition.
    let stay = ["--follow-workload".to_owned(), "false".to_owned()];
    let options =
        ClusterOptions { shards: 1, partitions: 3, node_args: (1..=3).map(|n| (n, stay.to_vec())).collect(), ..ClusterOptions::default() };
    let cluster = Cluster::start(options).await;
    let names = spread_names("lease", 1, 3);
    let channel = cluster.connect(1).await;
    for name in &names {
        create(&channel, name).await;
        let mut client = Election::new(channel.clone());
        client.enter(bounded(rt::EnterRequest { id: id(name), candidate: "c".into() })).await.expect("enter");
    }
    const READS: usize = 30;
    let mut reads = 0.0;
    for node in 1..=3 {
        let mut client = Election::new(cluster.connect(node).await);
        for name in &names {
            for _ in 0..READS {
                let term = client.get_term(bounded(rt::GetTermRequest { id: id(name) })).await.expect("get term").into_inner().term;
                assert_eq!(term.map(|t| t.leader), Some("c".to_owned()), "read of {name} through node {node}");
                reads += 1.0;
            }
        }
    }
    let addrs: Vec<SocketAddr> = (1..=3).map(|n| cluster.member(n).ports.metrics).collect();
    let served: f64 = tokio::task::spawn_blocking(move || {
        addrs.iter().map(|a| scrape(*a).sum("conclave_shard_follower_lease_reads_total", &[])).sum::<f64>()
    })
    .await
    .unwrap();
    eprintln!("{served} of {reads} reads served under follower leases");
    // Two thirds of the reads reach a follower; all but about the first of each partition
    // on each follower go without asking the leader.
    assert!(served >= reads / 2.0, "only {served} of {reads} reads were served under follower leases");
}
