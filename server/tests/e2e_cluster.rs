//! Three `conclave serve` processes on 127.0.0.1 forming one cluster (issue 7, item 5),
//! driven through tonic clients:
//! - elections work through any node (commands forwarded to the partition's leader, reads
//!   and watches served where the client is connected) and every node agrees;
//! - kill -9 of the node leading the most partitions while clients on the other nodes keep
//!   operating: every partition has a leader again within a few seconds, no acknowledged
//!   operation is lost, and the restarted node catches up;
//! - a node restarted after the others snapshotted and compacted catches up from a snapshot;
//! - a client that disconnects loses its leadership at once, and the clients of a node that
//!   dies lose theirs after the session timeout, as watchers on the other nodes see;
//! - the Node API: Bootstrap, Leave then Join a member, add an observer and a witness, with
//!   the events Watch reports for each step; a Join that failed can be tried again; watches
//!   served by a node that leaves the partition end UNAVAILABLE;
//! - a graceful stop hands the node's leaderships over before it exits.
//!
//! Every process is killed when its test ends, passing or failing (the [`Cluster`] guard),
//! and a failing test prints the logs of all nodes.
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave_server::routing::partition_of;
use support::client::atomix::multiraft::v1 as mr;
use support::cluster::{
    apply_with, busiest_leader, candidate_set, create, get_term, leaderships, next_view, run, spread_names, wall, watch, Cluster,
    ClusterOptions, Election, Ev, NodeApi, NodeEvents, Op, Role, View,
};
use support::{bounded, expect};
use tonic::transport::Channel;
use tonic::Code;

/// Rounds of commands per partition while a node is down in the catch-up test (each round
/// one to three commands).
const CATCHUP_ROUNDS: usize = 100;

/// Bound of waits for Node-API events that should come promptly.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// ---------------------------------------------------------------------------------------
// 1. Elections through any node
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elections_work_through_any_node_and_every_node_agrees() {
    elections_through_any_node(ClusterOptions::default()).await;
}

/// With `--replication 2` on three nodes each partition has two voters and one observer:
/// the observer's node still takes commands (forwarded), reads and watches like the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_voters_per_partition_the_observer_nodes_serve_too() {
    elections_through_any_node(ClusterOptions { replication: 2, ..ClusterOptions::default() }).await;
}

/// With commit notices held (`--commit-notice-delay-us`, 10 ms here, a third of a heartbeat
/// interval), followers learn a commit index from the next append or after the delay: reads
/// through them still show every acknowledged change (they wait for the leader's commit
/// index), and their watchers still see every change, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_commit_notices_held_reads_and_watches_through_followers_see_every_change() {
    let held = vec!["--commit-notice-delay-us".to_owned(), "10000".to_owned()];
    let node_args = (1..=3).map(|id| (id, held.clone())).collect();
    elections_through_any_node(ClusterOptions { node_args, ..ClusterOptions::default() }).await;
}

async fn elections_through_any_node(options: ClusterOptions) {
    let cluster = Cluster::start(options.clone()).await;
    let names = spread_names("anynode", 1, options.partitions);
    // Created through different nodes (Create is forwarded like any command).
    for (i, name) in names.iter().enumerate() {
        create(&cluster.connect(1 + i as u32 % 3).await, name).await;
    }
    // One client connection per node (so a session per node), and watchers on nodes 2 and 3.
    let mut clients = Vec::new();
    for node in 1..=3 {
        clients.push(Election::new(cluster.connect(node).await));
    }
    let watchers = [cluster.connect(2).await, cluster.connect(3).await];

    // (client's node index 0..3, operation, candidate, expected state after it)
    let steps: Vec<(usize, Op, &str, View)> = vec![
        (0, Op::Enter, "a", expect(1, "a", &["a"])),
        (1, Op::Enter, "b", expect(1, "a", &["a", "b"])),
        (2, Op::Enter, "c", expect(1, "a", &["a", "b", "c"])),
        (1, Op::Enter, "a", expect(1, "a", &["a", "b", "c"])),
        (0, Op::Promote, "c", expect(1, "a", &["a", "c", "b"])),
        (2, Op::Anoint, "b", expect(2, "b", &["b", "a", "c"])),
        (1, Op::Demote, "b", expect(3, "a", &["a", "b", "c"])),
        (1, Op::Evict, "a", expect(4, "b", &["b", "c"])),
        (0, Op::Enter, "a", expect(4, "b", &["b", "c", "a"])),
        (2, Op::Withdraw, "a", expect(4, "b", &["b", "c", "a"])), // another session's candidate
        (1, Op::Withdraw, "b", expect(5, "c", &["c", "a"])),
        (2, Op::Withdraw, "c", expect(6, "a", &["a"])),
        (0, Op::Withdraw, "a", expect(6, "", &[])),
    ];
    let mut watch_delays = Vec::new();
    for name in &names {
        let mut streams = Vec::new();
        for (i, channel) in watchers.iter().enumerate() {
            let mut stream = watch(channel, name).await;
            let (_, first) = next_view(&mut stream, &format!("{name} on node {}", i + 2), EVENT_TIMEOUT).await;
            assert_eq!(first, expect(0, "", &[]), "{name}: a new election, as node {} sees it", i + 2);
            streams.push(stream);
        }
        let mut previous = expect(0, "", &[]);
        for (client, op, candidate, expected) in &steps {
            let what = format!("{name}: {op:?}({candidate}) through node {}", client + 1);
            let sent = Instant::now();
            let answer = run(&mut clients[*client], *op, name, candidate).await;
            assert_eq!(&answer, expected, "{what}: the answer");
            // Reads through every node are linearizable: they show the acknowledged change.
            for (node, reader) in clients.iter_mut().enumerate() {
                let read = get_term(reader, name).await.unwrap_or_else(|s| panic!("{what}: GetTerm through node {}: {s:?}", node + 1));
                assert_eq!(&read, expected, "{what}: GetTerm through node {}", node + 1);
            }
            // Watchers on nodes 2 and 3 see every change, in order, and nothing else.
            if *expected != previous {
                for (i, stream) in streams.iter_mut().enumerate() {
                    let (at, seen) = next_view(stream, &format!("{what}, watched on node {}", i + 2), EVENT_TIMEOUT).await;
                    assert_eq!(&seen, expected, "{what}: watched on node {}", i + 2);
                    watch_delays.push(at.duration_since(sent));
                }
            }
            previous = expected.clone();
        }
        for (i, stream) in streams.iter_mut().enumerate() {
            if let Ok(extra) = tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
                panic!("{name}: node {} watch sent more than the changes: {extra:?}", i + 2);
            }
        }
    }
    watch_delays.sort();
    println!(
        "watch notifications on nodes 2 and 3, from sending the command: median {} ms, max {} ms ({} changes)",
        ms(watch_delays[watch_delays.len() / 2]),
        ms(*watch_delays.last().unwrap()),
        watch_delays.len()
    );

    // A fresh watch on any node starts with the current state; errors are the same anywhere.
    let fresh = cluster.connect(3).await;
    for name in &names {
        let (_, first) = next_view(&mut watch(&fresh, name).await, name, EVENT_TIMEOUT).await;
        assert_eq!(first, expect(6, "", &[]), "{name}");
    }
    for (node, client) in clients.iter_mut().enumerate() {
        let status = get_term(client, "never-created").await.expect_err("never created");
        assert_eq!(status.code(), Code::NotFound, "through node {}: {status:?}", node + 1);
        let status = apply_with(client, Op::Enter, "never-created", "x", Duration::from_secs(5)).await.expect_err("never created");
        assert_eq!(status.code(), Code::NotFound, "through node {}: {status:?}", node + 1);
    }
}

// ---------------------------------------------------------------------------------------
// Client load with unique candidates, every acknowledged operation recorded
// ---------------------------------------------------------------------------------------

/// Per-attempt bound of a load operation (a failed attempt is retried).
const LOAD_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one operation may keep failing before the load task gives up.
const LOAD_OP_DEADLINE: Duration = Duration::from_secs(20);

/// What one load task did. Each operation is retried until acknowledged, so the final
/// state is known: `present` is what the task's acknowledged operations left in.
struct LoadTask {
    task: usize,
    node: u32,
    /// Kept open until the checks are done: closing it would end the task's sessions.
    channel: Channel,
    /// Candidates this task has in, by election (in the order they entered).
    present: BTreeMap<String, Vec<String>>,
    /// Candidates whose Enter failed at least once before it was acknowledged: a failed
    /// attempt may still apply later, so they are never withdrawn (the state stays known).
    tainted: BTreeSet<String>,
    max_term: BTreeMap<String, u64>,
    /// (first attempt sent, acknowledged, partition) of every acknowledged operation.
    acks: Vec<(Instant, Instant, u32)>,
    /// Every failed attempt: when, what, the status.
    errors: Vec<(Instant, String, tonic::Status)>,
    max_attempts: usize,
    failed: Option<String>,
}

async fn load_task(mut st: LoadTask, names: Vec<String>, partitions: u32, stop: Arc<AtomicBool>) -> LoadTask {
    let mut client = Election::new(st.channel.clone());
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    let mut seq = 0;
    'outer: while !stop.load(Ordering::Relaxed) {
        for name in &names {
            if stop.load(Ordering::Relaxed) {
                break 'outer;
            }
            let k = count.entry(name.clone()).or_default();
            *k += 1;
            let present = st.present.entry(name.clone()).or_default();
            let withdrawable = present.iter().find(|c| !st.tainted.contains(*c)).cloned();
            let (op, candidate) = match withdrawable {
                Some(c) if (*k).is_multiple_of(3) => (Op::Withdraw, c),
                _ => {
                    seq += 1;
                    (Op::Enter, format!("t{}n{}-{seq}", st.task, st.node))
                }
            };
            let sent = Instant::now();
            let mut attempts = 0;
            let view = loop {
                attempts += 1;
                match apply_with(&mut client, op, name, &candidate, LOAD_CALL_TIMEOUT).await {
                    Ok(view) => break view,
                    Err(status) => {
                        st.errors.push((Instant::now(), format!("{op:?}({candidate}) on {name}"), status));
                        if op == Op::Enter {
                            st.tainted.insert(candidate.clone());
                        }
                        if sent.elapsed() > LOAD_OP_DEADLINE {
                            st.failed = Some(format!(
                                "{op:?}({candidate}) on {name} still failing after {attempts} attempts: {:?}",
                                st.errors.last()
                            ));
                            return st;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            };
            let present = st.present.get_mut(name).expect("entry made above");
            match op {
                Op::Enter => {
                    if !view.2.contains(&candidate) {
                        st.failed = Some(format!("Enter({candidate}) on {name} acknowledged without it: {view:?}"));
                        return st;
                    }
                    present.push(candidate);
                }
                _ => {
                    if view.2.contains(&candidate) {
                        st.failed = Some(format!("Withdraw({candidate}) on {name} acknowledged with it still in: {view:?}"));
                        return st;
                    }
                    present.retain(|c| *c != candidate);
                }
            }
            let max = st.max_term.entry(name.clone()).or_default();
            *max = (*max).max(view.0);
            st.acks.push((sent, Instant::now(), partition_of(name, partitions)));
            st.max_attempts = st.max_attempts.max(attempts);
        }
    }
    st
}

struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<LoadTask>>,
}

impl Load {
    /// `per_node` client tasks on each of `nodes`, each on its own connection.
    async fn start(cluster: &Cluster, nodes: &[u32], per_node: usize, names: &[String]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for &node in nodes {
            for _ in 0..per_node {
                let st = LoadTask {
                    task: tasks.len(),
                    node,
                    channel: cluster.connect(node).await,
                    present: BTreeMap::new(),
                    tainted: BTreeSet::new(),
                    max_term: BTreeMap::new(),
                    acks: Vec::new(),
                    errors: Vec::new(),
                    max_attempts: 0,
                    failed: None,
                };
                tasks.push(tokio::spawn(load_task(st, names.to_vec(), cluster.options.partitions, Arc::clone(&stop))));
            }
        }
        Load { stop, tasks }
    }

    async fn stop(self) -> Vec<LoadTask> {
        self.stop.store(true, Ordering::Relaxed);
        let mut done = Vec::new();
        for task in self.tasks {
            let st = tokio::time::timeout(LOAD_OP_DEADLINE + Duration::from_secs(10), task)
                .await
                .expect("a load task stops when told")
                .expect("load task");
            if let Some(failure) = &st.failed {
                panic!("load task {} on node {}: {failure}", st.task, st.node);
            }
            done.push(st);
        }
        done
    }
}

/// Checks the state of every election read through `client` against what the load tasks
/// were acknowledged: exactly their candidates (none lost, none resurrected), a leader iff
/// there are candidates (the first one), a term at least the highest acknowledged.
async fn check_acknowledged(client: &mut Election, through: u32, names: &[String], tasks: &[LoadTask]) -> BTreeMap<String, View> {
    let mut states = BTreeMap::new();
    for name in names {
        let state = get_term(client, name).await.unwrap_or_else(|s| panic!("GetTerm {name} through node {through}: {s:?}"));
        let wanted: BTreeSet<String> = tasks.iter().flat_map(|t| t.present.get(name).into_iter().flatten().cloned()).collect();
        assert_eq!(candidate_set(&state), wanted, "{name} through node {through}: exactly the acknowledged candidates");
        assert_eq!(state.2.len(), wanted.len(), "{name} through node {through}: no duplicate candidate: {state:?}");
        let max = tasks.iter().filter_map(|t| t.max_term.get(name)).copied().max().unwrap_or(0);
        assert!(state.0 >= max, "{name} through node {through}: term {} below the acknowledged {max}", state.0);
        assert_eq!(
            state.1,
            state.2.first().cloned().unwrap_or_default(),
            "{name} through node {through}: the leader is the first candidate"
        );
        states.insert(name.clone(), state);
    }
    states
}

/// For each group of `led`, waits on the survivors' watches for a leader other than
/// `old_leader` in a term above the one it had; returns, per group, the earliest arrival
/// and the new (term, leader).
async fn wait_new_leaders(
    watches: &mut BTreeMap<u32, NodeEvents>,
    old: &BTreeMap<u32, (u64, u64)>,
    led: &[u32],
    old_leader: u32,
    timeout: Duration,
) -> BTreeMap<u32, (Instant, u64, u64)> {
    let mut found = BTreeMap::new();
    for &group in led {
        let old_term = old[&group].0;
        for (node, events) in watches.iter_mut() {
            let (_, at, event) = events
                .wait_for(&format!("new leader of group {group} (node {old_leader} led it in term {old_term})"), 0, timeout, |e| {
                    matches!(e, Ev::LeaderUpdated(u) if u.group_id == group && u.term > old_term && u.leader != 0 && u.leader != u64::from(old_leader))
                })
                .await;
            let Ev::LeaderUpdated(u) = event else { unreachable!() };
            println!("  group {group}: node {node} sees node {} lead term {}", u.leader, u.term);
            let entry = found.entry(group).or_insert((at, u.term, u.leader));
            if at < entry.0 {
                *entry = (at, u.term, u.leader);
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------------------
// 2. kill -9 the busiest leader under load
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_busiest_leader_under_load_fails_over_and_loses_nothing() {
    let options = ClusterOptions { session_timeout_ms: 3_000, ..ClusterOptions::default() };
    let mut cluster = Cluster::start(options.clone()).await;
    let k = options.partitions;
    let mut watches = BTreeMap::new();
    for node in cluster.ids() {
        watches.insert(node, cluster.events(node).await);
    }
    let leaders = watches.get_mut(&1).unwrap().wait_leaders(1..=k, EVENT_TIMEOUT).await;
    let (victim, led) = busiest_leader(&leaders, 1..=k);
    println!("leaders: {leaders:?}; by node {:?}; killing node {victim}, which leads {led:?}", leaderships(&leaders, 1..=k));
    let survivors: Vec<u32> = cluster.ids().into_iter().filter(|n| *n != victim).collect();

    let names = spread_names("failover", 2, k);
    let setup = cluster.connect(survivors[0]).await;
    for name in &names {
        create(&setup, name).await;
    }
    let load = Load::start(&cluster, &survivors, 2, &names).await;
    tokio::time::sleep(Duration::from_millis(800)).await;

    let killed_at = Instant::now();
    cluster.kill9(victim);
    watches.remove(&victim);
    let new_leaders = wait_new_leaders(&mut watches, &leaders, &led, victim, EVENT_TIMEOUT).await;
    let failover = new_leaders.values().map(|(at, _, _)| at.duration_since(killed_at)).max().unwrap_or_default();
    let per_group: Vec<String> = new_leaders
        .iter()
        .map(|(g, (at, term, leader))| format!("group {g}: node {leader} in term {term} after {} ms", ms(at.duration_since(killed_at))))
        .collect();
    println!("kill -9 of node {victim}: every partition it led has a new leader after {} ms ({})", ms(failover), per_group.join("; "));
    // Every partition has a leader again, on a survivor, by both survivors' account.
    for (node, events) in watches.iter_mut() {
        let now = events.leaders();
        for g in 1..=k {
            let leader = now.get(&g).map(|l| l.1).unwrap_or(0);
            assert!(leader != 0 && leader != u64::from(victim), "node {node}: group {g} led by {leader} after the failover: {now:?}");
        }
    }
    assert!(failover < Duration::from_secs(5), "failover took {failover:?}");

    // Keep operating a while on the new leaders, then stop the clients.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let tasks = load.stop().await;
    let total: usize = tasks.iter().map(|t| t.acks.len()).sum();
    let errors: usize = tasks.iter().map(|t| t.errors.len()).sum();
    assert!(total >= 100, "the clients kept the cluster busy ({total} acknowledged operations)");
    for t in &tasks {
        let after = t.acks.iter().filter(|(sent, _, _)| *sent > killed_at).count();
        assert!(after > 0, "task {} on node {} was acknowledged after the kill", t.task, t.node);
    }
    // Client-visible recovery: per partition the victim led, the first operation sent
    // after the kill and acknowledged.
    let mut client_recovery = Duration::ZERO;
    for &p in &led {
        let first = tasks
            .iter()
            .flat_map(|t| t.acks.iter())
            .filter(|(sent, _, part)| *part == p && *sent > killed_at)
            .map(|(_, acked, _)| acked.duration_since(killed_at))
            .min()
            .unwrap_or_else(|| panic!("no operation on partition {p} was acknowledged after the kill"));
        client_recovery = client_recovery.max(first);
    }
    let codes: BTreeSet<String> = tasks.iter().flat_map(|t| t.errors.iter().map(|(_, _, s)| format!("{:?}", s.code()))).collect();
    println!(
        "{total} operations acknowledged, {errors} failed attempts retried ({codes:?}), at most {} attempts for one operation; \
         first acknowledged operation on every partition node {victim} led: {} ms after the kill",
        tasks.iter().map(|t| t.max_attempts).max().unwrap_or(0),
        ms(client_recovery)
    );

    // No acknowledged operation is lost, and both survivors agree.
    let mut finals = Vec::new();
    for &node in &survivors {
        let mut client = Election::new(cluster.connect(node).await);
        finals.push(check_acknowledged(&mut client, node, &names, &tasks).await);
    }
    assert_eq!(finals[0], finals[1], "both survivors show the same state");

    // The killed node restarts on its data and catches up: reads through it show everything.
    let restarting = Instant::now();
    cluster.restart(victim).await;
    println!("node {victim} restarted and ready in {} ms", ms(restarting.elapsed()));
    let mut client = Election::new(cluster.connect(victim).await);
    let restarted = check_acknowledged(&mut client, victim, &names, &tasks).await;
    assert_eq!(restarted, finals[0], "the restarted node shows the survivors' state");
    let watcher = cluster.connect(victim).await;
    for name in &names {
        let (_, first) = next_view(&mut watch(&watcher, name).await, name, EVENT_TIMEOUT).await;
        assert_eq!(first, finals[0][name], "{name}: a watch through the restarted node starts at the latest state");
    }
    drop(tasks); // the load's sessions stay open until here
}

// ---------------------------------------------------------------------------------------
// 3. Catch up from a snapshot
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_the_compacted_logs_catches_up_from_a_snapshot() {
    let options = ClusterOptions { shards: 1, snapshot_every: Some(20), compaction_tail: Some(5), ..ClusterOptions::default() };
    let mut cluster = Cluster::start(options.clone()).await;
    let k = options.partitions;
    let behind = 3;
    let names = spread_names("catchup", 1, k);
    let mut w = BTreeMap::new();
    for node in [1, 2] {
        w.insert(node, cluster.events(node).await);
    }
    let mut clients = [Election::new(cluster.connect(1).await), Election::new(cluster.connect(2).await)];
    for name in &names {
        create(&cluster.connect(3).await, name).await;
        run(&mut clients[0], Op::Enter, name, "first").await;
    }

    let stopping = Instant::now();
    let status = cluster.terminate(behind);
    assert!(status.success(), "node {behind} stops with exit 0 on SIGTERM: {status}");
    println!("node {behind}: SIGTERM at {}, exited by {}", wall(stopping), wall(Instant::now()));
    let marks: BTreeMap<u32, usize> = w.iter_mut().map(|(n, e)| (*n, e.mark())).collect();

    // Commands in every partition while node 3 is down: several snapshots (every 20
    // entries), the logs keeping only 5 entries below the latest. The gap must also exceed
    // what the leaders sent node 3 before their flow-control window (64 messages) closed:
    // the peer transport keeps messages queued for a peer that is down and delivers them
    // when it is back, so a smaller gap is caught up from those old appends, no snapshot
    // needed. Every third candidate stays and every tenth round anoints one, so the final
    // state depends on every entry.
    let mut workers = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let node = 1 + (i as u32 % 2);
        let mut client = Election::new(cluster.connect(node).await);
        let name = name.clone();
        workers.push(tokio::spawn(async move {
            for round in 0..CATCHUP_ROUNDS {
                let candidate = format!("c{round}");
                run(&mut client, Op::Enter, &name, &candidate).await;
                if round % 3 != 0 {
                    run(&mut client, Op::Withdraw, &name, &candidate).await;
                }
                if round % 10 == 9 {
                    run(&mut client, Op::Anoint, &name, &format!("c{}", round - round % 3)).await;
                }
            }
            let last = run(&mut client, Op::Enter, &name, "last").await;
            (name, client, last) // the client's session holds its candidates
        }));
    }
    let mut holders = Vec::new();
    let mut acknowledged = BTreeMap::new();
    for worker in workers {
        let (name, client, last) = worker.await.expect("worker");
        holders.push(client);
        acknowledged.insert(name, last);
    }
    println!("commands done by {}", wall(Instant::now()));
    // Both survivors snapshotted every group after node 3 left: the latest snapshot each has.
    let mut latest_snapshot: BTreeMap<u32, u64> = BTreeMap::new();
    for (node, events) in w.iter_mut() {
        for g in 1..=k {
            events
                .wait_for(
                    &format!("snapshot_created of group {g}"),
                    marks[node],
                    EVENT_TIMEOUT,
                    |e| matches!(e, Ev::SnapshotCreated(s) if s.group_id == g),
                )
                .await;
            let newest = events.seen()[marks[node]..]
                .iter()
                .filter_map(|(_, e)| match e {
                    Ev::SnapshotCreated(s) if s.group_id == g => Some(s.index),
                    _ => None,
                })
                .max()
                .expect("waited for one");
            let entry = latest_snapshot.entry(g).or_insert(newest);
            *entry = (*entry).min(newest);
        }
    }
    println!("latest snapshot index of each group on both survivors before node {behind} restarts: {latest_snapshot:?}");
    let mut expected = BTreeMap::new();
    for name in &names {
        let state = get_term(&mut clients[0], name).await.expect("GetTerm");
        assert_eq!(state, acknowledged[name], "{name}: as acknowledged");
        let (anointed, kept) = (CATCHUP_ROUNDS / 10, CATCHUP_ROUNDS.div_ceil(3));
        assert_eq!(
            (state.0, state.2.len()),
            (1 + anointed as u64, kept + 2),
            "{name}: {anointed} anointments, {kept} kept candidates, first and last"
        );
        expected.insert(name.clone(), state);
    }

    // Restart node 3, watching its Node API from the first moment it answers.
    let restart_marks: BTreeMap<u32, usize> = w.iter_mut().map(|(n, e)| (*n, e.mark())).collect();
    let restarting = Instant::now();
    println!("node {behind} restarts at {}", wall(restarting));
    cluster.spawn(behind);
    let mut w3 = cluster.events_early(behind).await;
    cluster.wait_ready(behind).await;
    println!("node {behind} restarted and ready in {} ms", ms(restarting.elapsed()));
    // Reads through the restarted node show the latest state.
    let mut client = Election::new(cluster.connect(behind).await);
    for name in &names {
        assert_eq!(get_term(&mut client, name).await.expect("GetTerm through the restarted node"), expected[name], "{name}");
    }
    for g in 1..=k {
        let floor = latest_snapshot[&g];
        let found = w3
            .try_wait_for(0, EVENT_TIMEOUT, |e| match e {
                Ev::SnapshotReceived(s) => s.group_id == g,
                Ev::SnapshotRecovered(s) => s.group_id == g && s.index >= floor,
                _ => false,
            })
            .await;
        let Some((_, at, event)) = found else {
            let mut report = format!("node {behind} (restarted):\n{}", w3.describe());
            for (node, events) in w.iter_mut() {
                report += &format!("node {node} (since node {behind} stopped):\n{}", events.describe_from(marks[node]));
            }
            panic!("group {g}: node {behind} reported no snapshot from the leader (snapshot_received, or snapshot_recovered at index >= {floor}) within {EVENT_TIMEOUT:?}\n{report}");
        };
        println!("  group {g}: node {behind} reports {event:?} {} ms after the restart", ms(at.duration_since(restarting)));
    }
    // The leader's side of the same transfers.
    for g in 1..=k {
        let mut sent = false;
        for (node, events) in w.iter_mut() {
            let to = |e: &Ev| matches!(e, Ev::SendSnapshotCompleted(s) if s.group_id == g && s.to == u64::from(behind));
            if events.try_wait_for(restart_marks[node], Duration::from_millis(500), to).await.is_some() {
                sent = true;
            }
        }
        assert!(sent, "group {g}: neither survivor reported send_snapshot_completed to node {behind}");
    }

    drop(holders);
}

// ---------------------------------------------------------------------------------------
// 4. Disconnects and dead nodes end leaderships, as watchers elsewhere see
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderships_end_with_their_connection_or_after_their_dead_node_session_timeout() {
    let options = ClusterOptions { session_timeout_ms: 1_500, ..ClusterOptions::default() };
    let mut cluster = Cluster::start(options.clone()).await;
    let k = options.partitions;
    let mut w2 = cluster.events(2).await;
    let leaders = w2.wait_leaders(1..=k, EVENT_TIMEOUT).await;
    println!("partition leaders: {:?}", leaderships(&leaders, 1..=k));

    // A client of node 1 leads one election per partition; clients of nodes 2 and 3 wait.
    let names = spread_names("handover", 1, k);
    let setup = cluster.connect(2).await;
    for name in &names {
        create(&setup, name).await;
    }
    let leaving = cluster.connect(1).await;
    let mut second = Election::new(cluster.connect(2).await);
    let mut third = Election::new(cluster.connect(3).await);
    for name in &names {
        run(&mut Election::new(leaving.clone()), Op::Enter, name, "alice").await;
        run(&mut second, Op::Enter, name, "bob").await;
        run(&mut third, Op::Enter, name, "carol").await;
    }
    let watchers = [cluster.connect(2).await, cluster.connect(3).await];
    let mut streams = Vec::new();
    for name in &names {
        for (i, channel) in watchers.iter().enumerate() {
            let mut stream = watch(channel, name).await;
            let (_, first) = next_view(&mut stream, name, EVENT_TIMEOUT).await;
            assert_eq!(first, expect(1, "alice", &["alice", "bob", "carol"]), "{name} on node {}", i + 2);
            streams.push((name.clone(), i + 2, stream));
        }
    }
    drop(leaving);
    let dropped = Instant::now();
    let mut delays = Vec::new();
    for (name, node, stream) in &mut streams {
        let (at, seen) = next_view(stream, &format!("{name} on node {node} after alice's disconnect"), Duration::from_secs(5)).await;
        assert_eq!(seen, expect(2, "bob", &["bob", "carol"]), "{name} on node {node}");
        delays.push(at.duration_since(dropped));
    }
    let worst = delays.iter().max().copied().unwrap_or_default();
    println!(
        "disconnect of node 1's client: watchers on nodes 2 and 3 saw the next leader after {:?} ms (max {} ms)",
        delays.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        ms(worst)
    );
    assert!(worst < Duration::from_secs(1), "a disconnect is seen well under a second later on loopback: {worst:?}");

    // A client of node 1 leads again; node 1 dies. Its sessions expire after the session
    // timeout, as the watchers on nodes 2 and 3 see.
    let names = spread_names("expiry", 1, k);
    for name in &names {
        create(&setup, name).await;
    }
    let dying = cluster.connect(1).await;
    for name in &names {
        run(&mut Election::new(dying.clone()), Op::Enter, name, "dave").await;
        run(&mut second, Op::Enter, name, "erin").await;
    }
    let mut streams = Vec::new();
    for name in &names {
        for (i, channel) in watchers.iter().enumerate() {
            let mut stream = watch(channel, name).await;
            let (_, first) = next_view(&mut stream, name, EVENT_TIMEOUT).await;
            assert_eq!(first, expect(1, "dave", &["dave", "erin"]), "{name} on node {}", i + 2);
            streams.push((name.clone(), i + 2, stream));
        }
    }
    let killed = Instant::now();
    cluster.kill9(1);
    let timeout = Duration::from_millis(options.session_timeout_ms);
    let mut delays = Vec::new();
    for (name, node, stream) in &mut streams {
        let (at, seen) = next_view(stream, &format!("{name} on node {node} after node 1 died"), timeout + Duration::from_secs(5)).await;
        assert_eq!(seen, expect(2, "erin", &["erin"]), "{name} on node {node}");
        let partition = partition_of(name, k);
        delays.push((partition, leaders[&partition].1, *node, at.duration_since(killed)));
    }
    println!("kill -9 of node 1 (session timeout {} ms): next leader seen after", options.session_timeout_ms);
    for (partition, leader, node, delay) in &delays {
        println!("  partition {partition} (led by node {leader}), watched on node {node}: {} ms", ms(*delay));
    }
    for (partition, _, node, delay) in &delays {
        assert!(*delay >= timeout / 2, "partition {partition} on node {node}: the session ended after {delay:?}, before its timeout");
        assert!(
            *delay < timeout + Duration::from_secs(3),
            "partition {partition} on node {node}: the session outlived its timeout: {delay:?}"
        );
    }
    assert_eq!(get_term(&mut second, &names[0]).await.expect("GetTerm"), expect(2, "erin", &["erin"]));
    drop(dying);
}

// ---------------------------------------------------------------------------------------
// 5. The Node API: Bootstrap, Leave, Join, observer and witness
// ---------------------------------------------------------------------------------------

/// Waits until the watches of `nodes` agree on a leader of `group` that is one of
/// `eligible`; returns (term, leader).
async fn agreed_leader(w: &mut BTreeMap<u32, NodeEvents>, nodes: &[u32], group: u32, eligible: &[u32]) -> (u64, u64) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let views: Vec<Option<(u64, u64)>> = nodes.iter().map(|n| w.get_mut(n).unwrap().leaders().get(&group).copied()).collect();
        if let Some(Some(first)) = views.first() {
            if views.iter().all(|v| *v == Some(*first)) && eligible.iter().any(|e| u64::from(*e) == first.1) {
                return *first;
            }
        }
        if Instant::now() > deadline {
            let mut report = String::new();
            for n in nodes {
                report += &format!("node {n}:\n{}", w.get_mut(n).unwrap().describe());
            }
            panic!("nodes {nodes:?} do not agree on a leader of group {group} among {eligible:?}: {views:?}\n{report}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_member_ready(e: &Ev, group: u32, node: u32) -> bool {
    matches!(e, Ev::MemberReady(m) if m.group_id == group && m.node_id == u64::from(node))
}

fn is_leader_of(e: &Ev, group: u32, eligible: &[u32]) -> bool {
    matches!(e, Ev::LeaderUpdated(l) if l.group_id == group && eligible.iter().any(|n| u64::from(*n) == l.leader))
}

/// Event checks whose failure does not stop the test, so one run reports every missing
/// event; the test fails at its end if any is missing.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    /// Waits for an event on `events` as [`NodeEvents::wait_for`]; a missing one is recorded.
    /// Only the first wait of a run waits long: the events should have arrived by then.
    async fn expect_event(&mut self, events: &mut NodeEvents, what: &str, from: usize, matches: impl FnMut(&Ev) -> bool) -> bool {
        let timeout = if self.0.is_empty() { Duration::from_secs(3) } else { Duration::from_millis(500) };
        if events.try_wait_for(from, timeout, matches).await.is_some() {
            return true;
        }
        let since = events.describe_from(from);
        self.0.push(format!("node {}: no {what}; its events since the step:\n{since}", events.node_id));
        false
    }

    fn check(self) {
        assert!(self.0.is_empty(), "{} missing event(s):\n{}", self.0.len(), self.0.join("\n"));
    }
}

/// A membership change of `group` that concerns `node` (added, removed or given a role).
fn is_membership_changed(e: &Ev, group: u32, node: u32) -> bool {
    matches!(e, Ev::MembershipChanged(m) if m.group_id == group && m.node_id == u64::from(node))
}

/// Joins `node` to `group` (whose members are `existing`) with `role`, then checks the
/// events: on the new member member_ready, leader_updated (a leader among `existing`) and
/// membership_changed; on the existing members membership_changed.
async fn join_and_check(
    cluster: &Cluster,
    w: &mut BTreeMap<u32, NodeEvents>,
    problems: &mut Problems,
    group: u32,
    existing: &[u32],
    node: u32,
    role: Role,
) {
    let marks: BTreeMap<u32, usize> = w.iter_mut().map(|(n, e)| (*n, e.mark())).collect();
    let mut members: Vec<(u32, Role)> = existing.iter().map(|n| (*n, Role::Member)).collect();
    members.push((node, role));
    let started = Instant::now();
    NodeApi::new(cluster.connect_admin(node).await)
        .join(bounded(mr::JoinRequest { group: Some(cluster.group_config(group, &members)) }))
        .await
        .unwrap_or_else(|s| panic!("Join group {group} on node {node} as {role:?}: {s:?}"));
    println!("Join of node {node} to group {group} as {role:?} resolved in {} ms", ms(started.elapsed()));
    let events = w.get_mut(&node).unwrap();
    let (ready, _, _) =
        events.wait_for(&format!("member_ready of group {group}"), marks[&node], EVENT_TIMEOUT, |e| is_member_ready(e, group, node)).await;
    let (leader, _, _) = events
        .wait_for(&format!("leader_updated of group {group}"), marks[&node], EVENT_TIMEOUT, |e| is_leader_of(e, group, existing))
        .await;
    assert!(ready < leader, "node {node}: member_ready of group {group} comes before its leader:\n{}", events.describe());
    let what = format!("membership_changed of group {group} naming node {node} (it joined as {role:?})");
    problems.expect_event(events, &what, marks[&node], |e| is_membership_changed(e, group, node)).await;
    for n in existing {
        problems.expect_event(w.get_mut(n).unwrap(), &what, marks[n], |e| is_membership_changed(e, group, node)).await;
    }
    let all: Vec<u32> = existing.iter().copied().chain([node]).collect();
    let (term, leader) = agreed_leader(w, &all, group, existing).await;
    println!("  group {group}: nodes {all:?} agree node {leader} leads term {term}");
}

async fn bootstrap(cluster: &Cluster, w: &mut BTreeMap<u32, NodeEvents>, group: u32, members: &[u32]) -> (u64, u64) {
    let marks: BTreeMap<u32, usize> = w.iter_mut().map(|(n, e)| (*n, e.mark())).collect();
    let config = cluster.group_config(group, &members.iter().map(|n| (*n, Role::Member)).collect::<Vec<_>>());
    for &node in members {
        NodeApi::new(cluster.connect_admin(node).await)
            .bootstrap(bounded(mr::BootstrapRequest { group: Some(config.clone()) }))
            .await
            .unwrap_or_else(|s| panic!("Bootstrap group {group} on node {node}: {s:?}"));
    }
    for &node in members {
        let events = w.get_mut(&node).unwrap();
        let (ready, _, _) = events
            .wait_for(&format!("member_ready of group {group}"), marks[&node], EVENT_TIMEOUT, |e| is_member_ready(e, group, node))
            .await;
        let (leader, _, _) = events
            .wait_for(&format!("leader_updated of group {group}"), marks[&node], EVENT_TIMEOUT, |e| is_leader_of(e, group, members))
            .await;
        assert!(ready < leader, "node {node}: member_ready of group {group} comes before its leader:\n{}", events.describe());
    }
    let agreed = agreed_leader(w, members, group, members).await;
    println!("Bootstrap of group {group} on nodes {members:?}: node {} leads term {}", agreed.1, agreed.0);
    agreed
}

/// A Join whose membership change fails (no member hosts the group yet, so no leader can
/// add the node) removes the replica it started and its record: once the group exists, the
/// very same Join succeeds. (It used to be refused with ALREADY_EXISTS for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_whose_change_failed_can_be_retried() {
    let options = ClusterOptions::default();
    let cluster = Cluster::start(options.clone()).await;
    let group = options.partitions + 1;
    let members = [(1, Role::Member), (2, Role::Member), (3, Role::Member)];
    let join = mr::JoinRequest { group: Some(cluster.group_config(group, &members)) };
    // Longer than the Join's own 20 s bound on its membership change.
    let patient = |request: mr::JoinRequest| {
        let mut request = tonic::Request::new(request);
        request.set_timeout(Duration::from_secs(40));
        request
    };
    let mut node3 = NodeApi::new(cluster.connect_admin(3).await);
    let started = Instant::now();
    let failed = node3.join(patient(join.clone())).await.expect_err("no leader can add node 3 to a group nobody hosts");
    println!("the first Join failed after {} ms: {failed:?}", ms(started.elapsed()));
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    assert!(failed.message().contains("can be retried"), "{failed:?}");

    let existing = cluster.group_config(group, &members[..2]);
    for node in [1, 2] {
        NodeApi::new(cluster.connect_admin(node).await)
            .bootstrap(bounded(mr::BootstrapRequest { group: Some(existing.clone()) }))
            .await
            .unwrap_or_else(|s| panic!("Bootstrap group {group} on node {node}: {s:?}"));
    }
    node3.join(patient(join)).await.unwrap_or_else(|s| panic!("the same Join, once the group exists: {s:?}"));
    let left = node3.leave(bounded(mr::LeaveRequest { group_id: group })).await;
    assert!(left.is_ok(), "node 3 is a member that can leave again: {left:?}");
}

/// A Watch served by a node that leaves the election's partition ends UNAVAILABLE with a
/// message, whether the partition lives on the stream's shard or another one, instead of
/// going silent for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_end_unavailable_when_their_node_leaves_the_partition() {
    let options = ClusterOptions::default();
    let cluster = Cluster::start(options.clone()).await;
    let names = spread_names("leaving", 1, options.partitions);
    let channel = cluster.connect(3).await;
    for name in &names {
        create(&channel, name).await;
    }
    // Two connections: node 3 spreads them over its two shards, so each partition is
    // watched from its own shard and from the other one.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let channel = cluster.connect(3).await;
        for name in &names {
            let mut stream = watch(&channel, name).await;
            next_view(&mut stream, name, EVENT_TIMEOUT).await;
            streams.push((name.clone(), stream));
        }
    }
    let left = partition_of(&names[0], options.partitions);
    NodeApi::new(cluster.connect_admin(3).await)
        .leave(bounded(mr::LeaveRequest { group_id: left }))
        .await
        .unwrap_or_else(|s| panic!("Leave partition {left} on node 3: {s:?}"));
    for (name, stream) in streams.iter_mut().filter(|(name, _)| partition_of(name, options.partitions) == left) {
        let end = tokio::time::timeout(EVENT_TIMEOUT, stream.message()).await.unwrap_or_else(|_| panic!("{name}: the watch went silent"));
        let status = end.expect_err("the watch ends with an error");
        assert_eq!(status.code(), Code::Unavailable, "{name}: {status:?}");
        assert!(status.message().contains("watch again"), "{name}: {status:?}");
    }
}

/// A Watch opened while its partition has no leader waits for one, as GetTerm does,
/// instead of failing at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_opened_without_a_leader_waits_for_one() {
    let options = ClusterOptions::default();
    let mut cluster = Cluster::start(options.clone()).await;
    let name = "leaderless";
    create(&cluster.connect(3).await, name).await;
    let channel = cluster.connect(3).await;
    // Two of three voters down: no partition has a leader until one comes back.
    cluster.kill9(1);
    cluster.kill9(2);
    let opened = Instant::now();
    let watching = tokio::spawn(async move {
        let mut stream = watch(&channel, name).await;
        next_view(&mut stream, name, EVENT_TIMEOUT).await
    });
    cluster.spawn(1);
    let (at, _) = watching.await.expect("the watch waits for a leader, then gives the current state");
    println!("the watch opened without a leader got its first state after {} ms", ms(at - opened));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_api_bootstrap_leave_join_observer_and_witness_with_their_events() {
    let options = ClusterOptions::default();
    let cluster = Cluster::start(options.clone()).await;
    let k = options.partitions;
    let mut w = BTreeMap::new();
    for node in cluster.ids() {
        w.insert(node, cluster.events(node).await);
    }
    // The initial state of every node: each static partition, member_ready then its leader.
    for (node, events) in w.iter_mut() {
        for g in 1..=k {
            let (ready, _, _) =
                events.wait_for(&format!("initial member_ready of group {g}"), 0, EVENT_TIMEOUT, |e| is_member_ready(e, g, *node)).await;
            let (leader, _, _) =
                events.wait_for(&format!("initial leader of group {g}"), 0, EVENT_TIMEOUT, |e| is_leader_of(e, g, &[1, 2, 3])).await;
            assert!(ready < leader, "node {node}: group {g}'s member_ready comes first");
        }
    }

    // Group K+1 on all three nodes.
    let g1 = k + 1;
    bootstrap(&cluster, &mut w, g1, &[1, 2, 3]).await;

    // Node 3 leaves it: nodes 1 and 2 see the membership change and keep (or elect) a leader.
    let marks: BTreeMap<u32, usize> = w.iter_mut().map(|(n, e)| (*n, e.mark())).collect();
    let leaving = Instant::now();
    NodeApi::new(cluster.connect_admin(3).await)
        .leave(bounded(mr::LeaveRequest { group_id: g1 }))
        .await
        .unwrap_or_else(|s| panic!("Leave group {g1} on node 3: {s:?}"));
    println!("Leave of node 3 from group {g1} resolved in {} ms", ms(leaving.elapsed()));
    let mut problems = Problems::default();
    for n in [1, 2] {
        let what = format!("membership_changed of group {g1} naming node 3 (it left)");
        problems.expect_event(w.get_mut(&n).unwrap(), &what, marks[&n], |e| is_membership_changed(e, g1, 3)).await;
    }
    let (term, leader) = agreed_leader(&mut w, &[1, 2], g1, &[1, 2]).await;
    println!("  group {g1} after the leave: node {leader} leads term {term}");

    // Node 3 joins it again as a member.
    join_and_check(&cluster, &mut w, &mut problems, g1, &[1, 2], 3, Role::Member).await;

    // Group K+2 on nodes 1 and 2, then node 3 as an observer; K+3 with a witness.
    let g2 = k + 2;
    bootstrap(&cluster, &mut w, g2, &[1, 2]).await;
    join_and_check(&cluster, &mut w, &mut problems, g2, &[1, 2], 3, Role::Observer).await;
    let g3 = k + 3;
    bootstrap(&cluster, &mut w, g3, &[1, 2]).await;
    join_and_check(&cluster, &mut w, &mut problems, g3, &[1, 2], 3, Role::Witness).await;

    // A group whose witnesses would be as many as its voters is refused, whether at its
    // Bootstrap or by a Leave that takes a voter away: entries only witnesses hold could
    // block every election.
    let lopsided = cluster.group_config(k + 4, &[(1, Role::Member), (3, Role::Witness)]);
    let refused = NodeApi::new(cluster.connect_admin(1).await)
        .bootstrap(bounded(mr::BootstrapRequest { group: Some(lopsided) }))
        .await
        .expect_err("a Bootstrap with one voter and one witness is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("outnumber the witnesses"), "{refused:?}");
    let refused = NodeApi::new(cluster.connect_admin(2).await)
        .leave(bounded(mr::LeaveRequest { group_id: g3 }))
        .await
        .expect_err("voter 2 leaving group K+3 would leave one voter beside one witness");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "refused at once, not retried: {refused:?}");
    assert!(refused.message().contains("outnumber the witnesses"), "{refused:?}");
    agreed_leader(&mut w, &[1, 2, 3], g3, &[1, 2]).await;

    // Neither the observer nor the witness ever led its group.
    for (node, events) in w.iter_mut() {
        let led = |e: &Ev| matches!(e, Ev::LeaderUpdated(l) if (l.group_id == g2 || l.group_id == g3) && l.leader == 3);
        assert!(!events.any_since(0, led), "node {node}: node 3 led a group it only observes or witnesses:\n{}", events.describe());
    }

    // A new Watch on the new member starts with its state: every group, ready and led.
    let mut fresh = cluster.events(3).await;
    for g in (1..=k).chain([g1, g2, g3]) {
        let (term, leader) = w.get_mut(&1).unwrap().leaders()[&g];
        let (ready, _, _) =
            fresh.wait_for(&format!("initial member_ready of group {g}"), 0, EVENT_TIMEOUT, |e| is_member_ready(e, g, 3)).await;
        let (at, _, _) = fresh
            .wait_for(
                &format!("initial leader of group {g} (node {leader}, term {term})"),
                0,
                EVENT_TIMEOUT,
                |e| matches!(e, Ev::LeaderUpdated(l) if l.group_id == g && l.leader == leader && l.term >= term),
            )
            .await;
        assert!(ready < at, "group {g}: member_ready first");
    }

    // Node 3 leaves client partition 1: it can no longer answer for it, so its health says
    // NOT_SERVING and a call for that partition through it is UNAVAILABLE, while node 1
    // still serves. Joining again restores both.
    let name = spread_names("left", 1, k).into_iter().find(|n| partition_of(n, k) == 1).expect("a name in partition 1");
    create(&cluster.connect(1).await, &name).await;
    NodeApi::new(cluster.connect_admin(3).await)
        .leave(bounded(mr::LeaveRequest { group_id: 1 }))
        .await
        .unwrap_or_else(|s| panic!("Leave partition 1 on node 3: {s:?}"));
    wait_serving(&cluster, 3, false).await;
    let status = get_term(&mut Election::new(cluster.connect(3).await), &name).await.expect_err("partition 1 was left");
    assert_eq!(status.code(), Code::Unavailable, "GetTerm through a node that left the partition: {status:?}");
    assert!(cluster.node(1).is_serving().await, "node 1 still hosts every partition");
    get_term(&mut Election::new(cluster.connect(1).await), &name).await.expect("GetTerm through node 1");
    join_and_check(&cluster, &mut w, &mut problems, 1, &[1, 2], 3, Role::Member).await;
    wait_serving(&cluster, 3, true).await;
    get_term(&mut Election::new(cluster.connect(3).await), &name).await.expect("GetTerm through node 3 after it joined again");
    problems.check();
}

/// Waits (bounded) until node `id`'s health answers SERVING (`serving`) or not.
async fn wait_serving(cluster: &Cluster, id: u32, serving: bool) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while cluster.node(id).is_serving().await != serving {
        assert!(Instant::now() < deadline, "node {id}'s health did not become {}", if serving { "SERVING" } else { "NOT_SERVING" });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// 6. Graceful stop hands leaderships over first
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_leaderships_over_before_the_node_exits() {
    // Elections take 1–2 s here, so a new leader within a few hundred milliseconds can only
    // come from a handover, not from the others timing out.
    let options = ClusterOptions { election_ticks: Some(100), session_timeout_ms: 5_000, ..ClusterOptions::default() };
    let mut cluster = Cluster::start(options.clone()).await;
    let k = options.partitions;
    let election_timeout = Duration::from_millis(options.tick_ms * 100);
    let mut watches = BTreeMap::new();
    for node in cluster.ids() {
        watches.insert(node, cluster.events(node).await);
    }
    let leaders = watches.get_mut(&1).unwrap().wait_leaders(1..=k, EVENT_TIMEOUT).await;
    let (victim, led) = busiest_leader(&leaders, 1..=k);
    println!("leaders by node {:?}; stopping node {victim}, which leads {led:?}", leaderships(&leaders, 1..=k));
    let survivors: Vec<u32> = cluster.ids().into_iter().filter(|n| *n != victim).collect();

    let names = spread_names("graceful", 2, k);
    let setup = cluster.connect(survivors[0]).await;
    for name in &names {
        create(&setup, name).await;
    }
    let load = Load::start(&cluster, &survivors, 2, &names).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stopping = Instant::now();
    let status = cluster.terminate(victim);
    let exited = stopping.elapsed();
    assert!(status.success(), "SIGTERM: exit 0, got {status}");
    watches.remove(&victim);
    let new_leaders = wait_new_leaders(&mut watches, &leaders, &led, victim, EVENT_TIMEOUT).await;
    let handover = new_leaders.values().map(|(at, _, _)| at.duration_since(stopping)).max().unwrap_or_default();
    println!(
        "SIGTERM of node {victim}: it exited after {} ms; new leaders of its {} partition(s) after {} ms",
        ms(exited),
        led.len(),
        ms(handover)
    );
    assert!(
        handover < election_timeout * 8 / 10,
        "the leaderships were handed over (new leaders after {handover:?}, below the election timeout of {election_timeout:?})"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let tasks = load.stop().await;
    let total: usize = tasks.iter().map(|t| t.acks.len()).sum();
    let max_attempts = tasks.iter().map(|t| t.max_attempts).max().unwrap_or(0);
    let errors: Vec<String> = tasks
        .iter()
        .flat_map(|t| {
            t.errors.iter().map(|(at, what, s)| format!("+{} ms {what}: {:?} {}", ms(at.duration_since(stopping)), s.code(), s.message()))
        })
        .collect();
    println!("{total} operations acknowledged; {} failed attempt(s), retried: {errors:#?}", errors.len());
    assert!(max_attempts <= 3, "no error beyond a couple of retries (an operation needed {max_attempts} attempts): {errors:#?}");
    for t in &tasks {
        assert!(
            t.acks.iter().any(|(sent, _, _)| *sent > stopping + exited),
            "task {} on node {} kept working after the stop",
            t.task,
            t.node
        );
    }
    let mut finals = Vec::new();
    for &node in &survivors {
        let mut client = Election::new(cluster.connect(node).await);
        finals.push(check_acknowledged(&mut client, node, &names, &tasks).await);
    }
    assert_eq!(finals[0], finals[1], "both survivors show the same state");
    drop(tasks);
}
