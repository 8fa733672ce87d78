//! Process-lifecycle tests of `conclave serve`: kill -9 under load, then every acknowledged
//! change is found after a restart on the same data directory; SIGTERM (idle or under load)
//! exits 0 and recovers; a second process on the same data directory or port is refused; a
//! TOML file configures the node, flags override it, and the node says where it listens.
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave_server::routing::partition_of;
use support::client::atomix::runtime::election::v1 as rt;
use support::{bounded, id, run_to_exit, serve_args, view, Node, NodeOptions, Ports, TestDir, CALL_TIMEOUT};
use tonic::transport::Channel;

type Election = rt::leader_election_client::LeaderElectionClient<Channel>;

/// Election names covering every partition.
fn names(prefix: &str, count: usize, partitions: u32) -> Vec<String> {
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    let mut covered: Vec<u32> = names.iter().map(|n| partition_of(n, partitions)).collect();
    covered.sort_unstable();
    covered.dedup();
    assert_eq!(covered.len() as u32, partitions, "{names:?} cover every partition");
    names
}

async fn create_all(channel: &Channel, names: &[String]) {
    let mut elections = rt::leader_elections_client::LeaderElectionsClient::new(channel.clone());
    for name in names {
        elections.create(bounded(rt::CreateRequest { id: id(name), tags: vec![] })).await.expect("create");
    }
}

async fn get_term(client: &mut Election, name: &str) -> (u64, String, Vec<String>) {
    view(
        client
            .get_term(bounded(rt::GetTermRequest { id: id(name) }))
            .await
            .unwrap_or_else(|s| panic!("GetTerm {name}: {s:?}"))
            .into_inner()
            .term,
    )
}

/// What one load task learned: for every election, whether its last acknowledged
/// operation left its candidate in, and the highest term it saw acknowledged; plus the
/// election of the operation the crash interrupted (its outcome is unknown).
#[derive(Default, Debug)]
struct Acknowledged {
    present: BTreeMap<String, bool>,
    max_term: BTreeMap<String, u64>,
    interrupted: Option<String>,
    operations: usize,
}

/// Enters and withdraws `candidate` on every election in turn until a call fails or
/// `stop` is set.
async fn load(channel: Channel, candidate: String, names: Vec<String>, stop: Arc<AtomicBool>) -> Acknowledged {
    let mut client = Election::new(channel);
    let mut acked = Acknowledged::default();
    let mut enter = true;
    while !stop.load(Ordering::Relaxed) {
        for name in &names {
            let (id, who) = (id(name), candidate.clone());
            let result = if enter {
                client.enter(bounded(rt::EnterRequest { id, candidate: who })).await.map(|r| r.into_inner().term)
            } else {
                client.withdraw(bounded(rt::WithdrawRequest { id, candidate: who })).await.map(|r| r.into_inner().term)
            };
            let Ok(term) = result else {
                acked.interrupted = Some(name.clone());
                return acked;
            };
            let (term, _, candidates) = view(term);
            assert_eq!(candidates.contains(&candidate), enter, "{name}: the answer shows the change");
            acked.present.insert(name.clone(), enter);
            let max = acked.max_term.entry(name.clone()).or_default();
            *max = (*max).max(term);
            acked.operations += 1;
        }
        enter = !enter;
    }
    acked
}

/// Client tasks running [`load`] on their own connections.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Acknowledged>>,
}

impl Load {
    async fn start(node: &Node, names: &[String], clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for client in 0..clients {
            let channel = node.connect().await;
            tasks.push(tokio::spawn(load(channel, format!("client-{client}"), names.to_vec(), Arc::clone(&stop))));
        }
        Load { stop, tasks }
    }

    /// Waits for every task, which the server's end interrupted.
    async fn interrupted(self) -> Vec<Acknowledged> {
        let mut acked = Vec::new();
        for task in self.tasks {
            let result = tokio::time::timeout(CALL_TIMEOUT * 2, task).await.expect("load task ends with the server").expect("load task");
            assert!(result.interrupted.is_some(), "the server's end interrupted every client");
            assert!(result.operations > 0, "every client was acknowledged before the end");
            acked.push(result);
        }
        self.stop.store(true, Ordering::Relaxed);
        let total: usize = acked.iter().map(|a| a.operations).sum();
        assert!(total >= 100, "the server was under load when it ended ({total} acknowledged operations)");
        acked
    }
}

/// Checks the acknowledged changes against the restarted server: every term at least the
/// highest acknowledged one; a candidate acknowledged out is still out; and, when
/// `sessions_survive` (a crash: nobody closed them), a candidate acknowledged in is still in.
async fn check_acknowledged(client: &mut Election, names: &[String], acked: &[Acknowledged], sessions_survive: bool) -> usize {
    let mut leaders = 0;
    for name in names {
        let (term, leader, candidates) = get_term(client, name).await;
        for (n, a) in acked.iter().enumerate() {
            let candidate = format!("client-{n}");
            let max = a.max_term.get(name).copied().unwrap_or(0);
            assert!(term >= max, "{name}: term {term} is below the acknowledged term {max}");
            if a.interrupted.as_deref() == Some(name.as_str()) {
                continue;
            }
            match a.present.get(name) {
                Some(false) => assert!(!candidates.contains(&candidate), "{name}: {candidate} withdrew, acknowledged"),
                Some(true) if sessions_survive => {
                    assert!(candidates.contains(&candidate), "{name}: {candidate} entered, acknowledged")
                }
                _ => {}
            }
        }
        leaders += usize::from(!leader.is_empty());
    }
    leaders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_change() {
    // Sessions long enough that the crashed connections' ones outlive the checks after the
    // restart; frequent snapshots, so the restart loads snapshots plus the entries after them.
    let options = NodeOptions { session_timeout_ms: 6_000, snapshot_every: Some(100), ..NodeOptions::default() };
    let mut dir = TestDir::new();
    let mut node = Node::start(&mut dir, &options).await;
    let names = names("crash", 16, options.partitions);
    create_all(&node.connect().await, &names).await;
    let load = Load::start(&node, &names, 4).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    node.kill9();
    let acked = load.interrupted().await;

    let snapshots = std::fs::read_dir(dir.data_dir().join("shard-0").join("snapshots")).map_or(0, |d| d.count());
    assert!(snapshots > 0, "the load took snapshots before the crash");

    let restarted = Node::start(&mut dir, &options).await;
    let mut client = Election::new(restarted.connect().await);
    let leaders = check_acknowledged(&mut client, &names, &acked, true).await;
    assert!(leaders > 0, "some candidates were in when the server died");

    // The dead server's client sessions expire after their timeout: every candidate leaves.
    let deadline = Instant::now() + Duration::from_millis(options.session_timeout_ms * 4);
    for name in &names {
        loop {
            let (_, leader, candidates) = get_term(&mut client, name).await;
            if leader.is_empty() && candidates.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "{name}: {candidates:?} outlived their sessions");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_0_and_keeps_every_acknowledged_change() {
    let options = NodeOptions { snapshot_every: Some(100), ..NodeOptions::default() };
    let mut dir = TestDir::new();
    let mut node = Node::start(&mut dir, &options).await;
    let names = names("stopping", 16, options.partitions);
    create_all(&node.connect().await, &names).await;
    let load = Load::start(&node, &names, 4).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let status = node.terminate();
    assert!(status.success(), "SIGTERM under load exits 0, got {status}:\n{}", node.output());
    let acked = load.interrupted().await;

    let restarted = Node::start(&mut dir, &options).await;
    let mut client = Election::new(restarted.connect().await);
    check_acknowledged(&mut client, &names, &acked, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_with_exit_0_and_a_restart_recovers() {
    let options = NodeOptions::default();
    let mut dir = TestDir::new();
    let mut node = Node::start(&mut dir, &options).await;
    let names = names("graceful", 8, options.partitions);
    let channel = node.connect().await;
    create_all(&channel, &names).await;
    let mut client = Election::new(channel);
    let mut acked = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        // A few leader changes each, so terms differ between elections.
        for round in 0..=i % 3 {
            let candidate = format!("c{round}");
            client.enter(bounded(rt::EnterRequest { id: id(name), candidate: candidate.clone() })).await.expect("enter");
            let term = client.withdraw(bounded(rt::WithdrawRequest { id: id(name), candidate })).await.expect("withdraw");
            acked.insert(name.clone(), view(term.into_inner().term));
        }
    }
    // Open watch streams (local and cross-shard) do not hold the stop up: they are ended.
    let watcher = Election::new(node.connect().await);
    let mut streams = Vec::new();
    for name in &names {
        let mut stream = watcher.clone().watch(bounded(rt::WatchRequest { id: id(name) })).await.expect("watch").into_inner();
        stream.message().await.expect("watch").expect("the current state");
        streams.push(stream);
    }
    let stopping = Instant::now();
    let status = node.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status}:\n{}", node.output());
    assert!(node.output().contains("stopped"), "the stop is reported:\n{}", node.output());
    assert!(stopping.elapsed() < Duration::from_secs(10), "stopped in {:?}", stopping.elapsed());
    for mut stream in streams {
        let end = tokio::time::timeout(CALL_TIMEOUT, stream.message()).await.expect("the stream ends with the server");
        assert!(!matches!(end, Ok(Some(_))), "no change after the stop: {end:?}");
    }

    let restarted = Node::start(&mut dir, &options).await;
    let mut client = Election::new(restarted.connect().await);
    for (name, before) in &acked {
        assert_eq!(&get_term(&mut client, name).await, before, "{name} recovered");
        let (term, leader, _) = view(
            client.enter(bounded(rt::EnterRequest { id: id(name), candidate: "next".into() })).await.expect("enter").into_inner().term,
        );
        assert_eq!((term, leader.as_str()), (before.0 + 1, "next"), "{name}: terms continue from the recovered one");
    }
}

/// A node restarted on the same ports right after its predecessor exited serves every
/// time: 20 restarts right after kill -9, then 20 right after SIGTERM. (The predecessor's
/// listening sockets can outlive it for a moment: a restart waits for them, saying so.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_restarts_after_kill_9_and_sigterm_all_serve() {
    const RESTARTS: usize = 20;
    // One shard and partition keep each start short; the node still listens for clients,
    // admin and peers.
    let options = NodeOptions { shards: 1, partitions: 1, ..NodeOptions::default() };
    let mut dir = TestDir::new();
    let mut node = Node::start(&mut dir, &options).await;
    let ports = node.ports;
    let args = serve_args(&options, &ports, &dir.data_dir());
    let names = names("restart", 2, options.partitions);
    create_all(&node.connect().await, &names).await;
    let started = Instant::now();
    let mut waited = 0;
    for round in 0..2 * RESTARTS {
        let how = if round < RESTARTS { "kill -9" } else { "SIGTERM" };
        if round < RESTARTS {
            node.kill9();
        } else {
            let status = node.terminate();
            assert!(status.success(), "SIGTERM exits 0, got {status}:\n{}", node.output());
        }
        node = Node::start_with_args(&mut dir, ports, args.clone()).await;
        let mut client = Election::new(node.connect().await);
        for name in &names {
            get_term(&mut client, name).await;
        }
        if node.output().contains("still in use") {
            waited += 1;
            eprintln!("restart {round} after {how} waited for its ports:\n{}", node.output());
        }
    }
    eprintln!("{} restarts in {:?}; {waited} waited for a port", 2 * RESTARTS, started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(120), "restarts are quick: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_data_dir_or_port_is_refused() {
    let options = NodeOptions::default();
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &options).await;

    let other_dir = TestDir::new();
    let (listen, admin, metrics) = (node.ports.listen.to_string(), node.ports.admin.to_string(), node.ports.metrics.to_string());
    let cases = [
        ("the same data directory", Ports::fresh(), dir.data_dir(), vec!["data directory", "in use"]),
        (
            "the same client port",
            Ports { listen: node.ports.listen, ..Ports::fresh() },
            other_dir.data_dir(),
            vec!["client API", &listen, "in use"],
        ),
        (
            "the same admin port",
            Ports { admin: node.ports.admin, ..Ports::fresh() },
            other_dir.data_dir(),
            vec!["admin API", &admin, "in use"],
        ),
        (
            "the same metrics port",
            Ports { metrics: node.ports.metrics, ..Ports::fresh() },
            other_dir.data_dir(),
            vec!["metrics listener", &metrics, "in use"],
        ),
    ];
    for (what, ports, data_dir, needles) in cases {
        let (status, output) = run_to_exit(&serve_args(&options, &ports, &data_dir), Duration::from_secs(20));
        assert!(!status.success(), "{what}: a second process is refused:\n{output}");
        for needle in needles {
            assert!(output.contains(needle), "{what}: the message says {needle:?}:\n{output}");
        }
    }

    // The first server is unaffected.
    let mut client = Election::new(node.connect().await);
    let status = client.get_term(bounded(rt::GetTermRequest { id: id("nothing") })).await.expect_err("not created");
    assert_eq!(status.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toml_file_configures_the_node_and_flags_override_it() {
    let mut dir = TestDir::new();
    let ports = Ports::fresh();
    let file = dir.path().join("conclave.toml");
    let toml = format!(
        "data-dir = {:?}\nlisten = \"{}\"\nadmin-listen = \"{}\"\nmetrics-listen = \"{}\"\npeers = \"1={}\"\nshards = 2\npartitions = 8\nio-memory-bytes = 524288\n",
        dir.data_dir().display().to_string(),
        ports.listen,
        ports.admin,
        ports.metrics,
        ports.peer
    );
    std::fs::write(&file, toml).expect("write the config file");
    let args = ["serve", "--config", &file.display().to_string(), "--partitions", "3"].map(String::from).to_vec();
    let node = Node::start_with_args(&mut dir, ports, args).await;
    let output = node.output();
    assert!(output.contains("3 partition(s)"), "the flag overrides the file:\n{output}");
    assert!(output.contains(&format!("data in {}", dir.data_dir().display())), "the file sets the data directory:\n{output}");
    assert!(output.contains("ready") && output.contains(&ports.listen.to_string()), "says where it listens once ready:\n{output}");
    assert!(dir.data_dir().join("shard-1").is_dir(), "two shards keep their data in the configured directory");

    // Three partitions: names hashing to each of them all work.
    let channel = node.connect().await;
    let mut seen = BTreeMap::new();
    for i in 0..30 {
        let name = format!("configured-{i}");
        seen.entry(partition_of(&name, 3)).or_insert(name);
    }
    assert_eq!(seen.len(), 3);
    let names: Vec<String> = seen.into_values().collect();
    create_all(&channel, &names).await;
    let mut client = Election::new(channel);
    for name in &names {
        assert_eq!(get_term(&mut client, name).await.0, 0);
    }
}

#[tokio::test]
async fn a_relative_data_dir_like_the_default_works_across_a_restart() {
    // The default `--data-dir` is the relative `data`; the server runs in the test's
    // directory, so `data` here is `dir.data_dir()`.
    let mut dir = TestDir::new();
    let relative_args = |ports: &Ports| {
        let mut args = serve_args(&NodeOptions::default(), ports, std::path::Path::new("data"));
        args.extend(["--segment-bytes".to_owned(), "1048576".to_owned()]);
        args
    };
    let ports = Ports::fresh();
    let mut node = Node::start_with_args(&mut dir, ports, relative_args(&ports)).await;
    let channel = node.connect().await;
    let names = names("relative", 8, NodeOptions::default().partitions);
    create_all(&channel, &names).await;
    let mut client = Election::new(channel);
    // Enough rounds to rotate 1 MiB segments (each durable round writes at least 4 KiB).
    for round in 0..300 {
        let name = &names[round % names.len()];
        let request = rt::EnterRequest { id: id(name), candidate: format!("c{round}") };
        client.enter(bounded(request)).await.expect("Enter");
    }
    let before: Vec<_> = futures_join(&mut client, &names).await;
    assert!(dir.data_dir().join("shard-0").is_dir(), "the data lives in ./data of the working directory");
    let status = node.terminate();
    assert!(status.success(), "clean stop: {status:?}\n{}", node.output());
    drop(node);

    let ports = Ports::fresh();
    let node = Node::start_with_args(&mut dir, ports, relative_args(&ports)).await;
    let mut client = Election::new(node.connect().await);
    let after = futures_join(&mut client, &names).await;
    assert_eq!(
        before.iter().map(|t| t.0).collect::<Vec<_>>(),
        after.iter().map(|t| t.0).collect::<Vec<_>>(),
        "every term survives the restart"
    );
}

async fn futures_join(client: &mut Election, names: &[String]) -> Vec<(u64, String, Vec<String>)> {
    let mut terms = Vec::with_capacity(names.len());
    for name in names {
        terms.push(get_term(client, name).await);
    }
    terms
}
