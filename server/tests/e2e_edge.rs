//! What the gRPC edge costs per call, pinned on a real `conclave serve` process (2 shards,
//! 4 partitions) driven by a tonic client on one connection, through the node's edge
//! counters on `/metrics` (`conclave_edge_*`):
//!
//! - unary calls, local or for a partition of the other shard, spawn no task (they run in
//!   the connection's call table, and the other shard queues them on its runtime directly);
//! - a call without `grpc-timeout` puts nothing on the shard's timer queue and arms no
//!   timer; 100 calls with one arm the queue's timer at most once between them;
//! - the responses of calls answered in the same round leave in fewer writes than calls;
//! - a server stream (Watch) is the one kind of call that still gets a task.
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::client::atomix::runtime::election::v1 as rt;
use support::cluster::{create, spread_names, Election};
use support::{id, Node, NodeOptions, TestDir};

/// The node's `conclave_edge_*_total` counters, by name without prefix and suffix.
fn edge_counters(metrics: SocketAddr) -> BTreeMap<String, u64> {
    let mut stream = TcpStream::connect_timeout(&metrics, Duration::from_secs(5)).expect("connect to the metrics listener");
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the scrape");
    let counters: BTreeMap<String, u64> = answer
        .lines()
        .filter_map(|line| {
            let (name, value) = line.strip_prefix("conclave_edge_")?.split_once(' ')?;
            Some((name.strip_suffix("_total")?.to_owned(), value.trim().parse().ok()?))
        })
        .collect();
    assert_eq!(counters.len(), 7, "every edge counter is exposed:\n{answer}");
    counters
}

async fn scrape(metrics: SocketAddr) -> BTreeMap<String, u64> {
    tokio::task::spawn_blocking(move || edge_counters(metrics)).await.expect("scrape")
}

/// How much each counter moved from `before` to `after`.
fn moved(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after.iter().map(|(name, value)| (name.clone(), value - before[name])).collect()
}

fn get_term(name: &str, timeout: Option<Duration>) -> tonic::Request<rt::GetTermRequest> {
    let mut request = tonic::Request::new(rt::GetTermRequest { id: id(name) });
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_cost_no_task_and_no_timer_each() {
    let mut dir = TestDir::new();
    let options = NodeOptions::default();
    let node = Node::start(&mut dir, &options).await;
    let metrics = node.ports.metrics;
    let channel = node.connect().await;
    // Two elections in every partition: half of them are owned by the shard the
    // connection did not land on.
    let names = spread_names("edge", 2, options.partitions);
    for name in &names {
        create(&channel, name).await;
    }
    let mut client = Election::new(channel.clone());
    let bound = Duration::from_secs(120);

    // 100 calls without grpc-timeout, one after another on the one connection.
    const CALLS: u64 = 100;
    let before = scrape(metrics).await;
    tokio::time::timeout(bound, async {
        for i in 0..CALLS as usize {
            client.get_term(get_term(&names[i % names.len()], None)).await.expect("GetTerm");
        }
    })
    .await
    .expect("100 calls within the bound");
    let plain = moved(&before, &scrape(metrics).await);
    println!("100 calls without grpc-timeout: {plain:?}");
    assert_eq!(plain["unary_calls_inline"], CALLS, "every unary call ran in the connection's call table");
    assert_eq!(plain["call_tasks_spawned"], 0, "no task per unary call");
    // Half the names are in partitions of the other shard, and each name got at least
    // CALLS / names calls (which half depends on the shard the connection landed on, so
    // the crossing calls are 48 to 52 of the 100; session keep-alives may add more).
    let least_crossing = CALLS / names.len() as u64 * (names.len() as u64 / 2);
    assert!(plain["mesh_calls_served"] >= least_crossing, "calls crossed shards: {plain:?}");
    assert_eq!(plain["mesh_call_tasks_spawned"], 0, "the other shard spawned no task for them");
    assert_eq!(plain["deadlines_queued"], 0, "a call without grpc-timeout queues no deadline");
    assert_eq!(plain["timer_arms"], 0, "nor arms a timer");

    // 100 calls with a grpc-timeout: each queues its deadline; the queue's one timer is
    // armed at most once for all of them (each new deadline is later than the armed one).
    let before = scrape(metrics).await;
    tokio::time::timeout(bound, async {
        for i in 0..CALLS as usize {
            client.get_term(get_term(&names[i % names.len()], Some(Duration::from_secs(60)))).await.expect("GetTerm");
        }
    })
    .await
    .expect("100 calls within the bound");
    let timed = moved(&before, &scrape(metrics).await);
    println!("100 calls with grpc-timeout: {timed:?}");
    assert_eq!(timed["unary_calls_inline"], CALLS);
    assert_eq!(timed["call_tasks_spawned"], 0);
    assert_eq!(timed["deadlines_queued"], CALLS, "one queued deadline per call");
    assert!(timed["timer_arms"] <= 1, "at most one arm of the shared timer for 100 calls: {timed:?}");

    // 64 calls at once on the same connection: answered in rounds, written together.
    const CONCURRENT: u64 = 64;
    let before = scrape(metrics).await;
    let calls: Vec<_> = (0..CONCURRENT as usize)
        .map(|i| {
            let mut client = client.clone();
            let name = names[i % names.len()].clone();
            tokio::spawn(async move { client.get_term(get_term(&name, None)).await.map(|_| ()) })
        })
        .collect();
    tokio::time::timeout(bound, async {
        for call in calls {
            call.await.expect("join").expect("GetTerm");
        }
    })
    .await
    .expect("64 calls within the bound");
    let burst = moved(&before, &scrape(metrics).await);
    println!("64 concurrent calls: {burst:?}");
    assert_eq!(burst["unary_calls_inline"], CONCURRENT);
    assert_eq!(burst["call_tasks_spawned"], 0);
    assert_eq!(burst["mesh_call_tasks_spawned"], 0);
    assert!(burst["connection_writes"] < CONCURRENT, "responses of a round share a write: {burst:?}");

    // A server stream still has a task of its own.
    let before = scrape(metrics).await;
    let mut request = tonic::Request::new(rt::WatchRequest { id: id(&names[0]) });
    request.set_timeout(Duration::from_secs(60));
    let mut watch = client.watch(request).await.expect("Watch").into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.message()).await;
    assert!(matches!(first, Ok(Ok(Some(_)))), "the watch streams the election: {first:?}");
    let streamed = moved(&before, &scrape(metrics).await);
    assert_eq!(streamed["call_tasks_spawned"], 1, "one task for the stream: {streamed:?}");
    assert_eq!(streamed["unary_calls_inline"], 0);
}
