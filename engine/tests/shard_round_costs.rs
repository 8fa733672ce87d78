//! The work one command costs, pinned: three shard runtimes on real io_uring storage over
//! the in-memory network of `shard::loopback`, counting log writes and Raft messages per
//! node. A change that puts per-command work back (an append per proposal, an answered
//! commit notice, a second log write) fails here rather than in a benchmark.
//!
//! Ticks are slow (100 ms, heartbeats every 10 ticks) so that no heartbeat falls inside the
//! few milliseconds a command takes; heartbeats are not counted in any case.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conclave_engine::shard::loopback::{LoopbackCluster, LoopbackOptions, WireCounts};
use conclave_engine::shard::{CounterValues, Request, ShardHandle, TermQuery};
use conclave_engine::sm::{command, Command, PrimitiveRef};
use futures_lite::future;
use glommio::channels::local_channel;
use glommio::LocalExecutorBuilder;

const GROUP: u32 = 1;
const DEADLINE: Duration = Duration::from_secs(20);

fn run<F: Future<Output = ()> + 'static>(test: F) {
    let ex = LocalExecutorBuilder::default().io_memory(4 << 20).make().unwrap();
    ex.run(test);
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn options() -> LoopbackOptions {
    LoopbackOptions { tick: Duration::from_millis(100), election_ticks: 10, heartbeat_ticks: 9, ..LoopbackOptions::default() }
}

/// Polls `cond` every millisecond until it holds; panics after the deadline.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "{what}: not within {DEADLINE:?}");
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// A command that needs no session: a leader barrier stamped with `now`.
fn barrier() -> Command {
    command::leader_barrier(now_ms())
}

/// Starts the cluster and waits until group 1 has a leader every node knows, and the
/// leader's first barrier is committed everywhere (its commit notices sent).
async fn settled_cluster(dir: &std::path::Path) -> (LoopbackCluster, u64) {
    settled_cluster_with(dir, &options()).await
}

async fn settled_cluster_with(dir: &std::path::Path, options: &LoopbackOptions) -> (LoopbackCluster, u64) {
    let cluster = LoopbackCluster::start(options, dir).await.unwrap();
    let mut leader = 0;
    eventually("a leader every node knows", || {
        leader = cluster.leader(GROUP).unwrap_or(0);
        leader != 0 && cluster.all_know(GROUP, leader)
    })
    .await;
    cluster.handle(leader).propose(GROUP, barrier()).await.unwrap();
    (cluster, leader)
}

fn values(cluster: &LoopbackCluster) -> Vec<(u64, CounterValues)> {
    cluster.node_ids().into_iter().map(|n| (n, cluster.counters(n).snapshot())).collect()
}

/// Waits until the leader has told both followers the commit index of what it proposed
/// since `before`, and each follower has run a round after receiving it.
async fn commit_notices_delivered(cluster: &LoopbackCluster, leader: u64, before: &[(u64, CounterValues)], notices: u64) {
    eventually("the commit notices", || cluster.counters(leader).snapshot().since(&of(before, leader)).commit_notices >= notices).await;
    let rounds: Vec<(u64, u64)> = cluster.node_ids().into_iter().map(|n| (n, cluster.counters(n).rounds.get())).collect();
    eventually("a round on every node after the notices", || rounds.iter().all(|(n, r)| cluster.counters(*n).rounds.get() > *r)).await;
    // Let a follower's answer, were there one, reach the leader's counters.
    glommio::timer::sleep(Duration::from_millis(20)).await;
}

/// A settled cluster and what it had counted before the measured commands.
struct Baseline {
    cluster: LoopbackCluster,
    leader: u64,
    followers: Vec<u64>,
    before: Vec<(u64, CounterValues)>,
    wire_before: WireCounts,
}

async fn baseline(dir: &std::path::Path) -> Baseline {
    baseline_with(dir, &options()).await
}

async fn baseline_with(dir: &std::path::Path, options: &LoopbackOptions) -> Baseline {
    let (cluster, leader) = settled_cluster_with(dir, options).await;
    let followers: Vec<u64> = cluster.node_ids().into_iter().filter(|n| *n != leader).collect();
    glommio::timer::sleep(Duration::from_millis(20)).await;
    let before = values(&cluster);
    let wire_before = cluster.wire();
    Baseline { cluster, leader, followers, before, wire_before }
}

fn of(values: &[(u64, CounterValues)], node: u64) -> CounterValues {
    values.iter().find(|(n, _)| *n == node).map(|(_, v)| *v).unwrap()
}

#[test]
fn a_lone_command_costs_each_node_one_log_write_and_the_leader_one_append_per_follower() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let Baseline { cluster, leader, followers, before, wire_before } = baseline(dir.path()).await;

        let committed = cluster.handle(leader).propose(GROUP, barrier()).await.unwrap();
        assert!(committed.index > 0);
        commit_notices_delivered(&cluster, leader, &before, 2).await;

        let wire = cluster.wire();
        let leader_work = cluster.counters(leader).snapshot().since(&of(&before, leader));
        assert_eq!(leader_work.log_writes, 1, "leader log writes for one command: {leader_work:?}");
        assert_eq!(leader_work.appends_with_entries, 2, "one append per follower: {leader_work:?}");
        assert_eq!(leader_work.commit_notices, 2, "one commit notice per follower: {leader_work:?}");
        assert_eq!(leader_work.empty_appends, 0, "no probe or commit-only round trip: {leader_work:?}");
        assert_eq!(leader_work.append_responses, 0, "{leader_work:?}");
        for follower in &followers {
            let work = cluster.counters(*follower).snapshot().since(&of(&before, *follower));
            assert_eq!(work.log_writes, 1, "node {follower} log writes: {work:?}");
            assert_eq!(work.append_responses, 1, "node {follower} answers the append, not the commit notice: {work:?}");
            assert_eq!(work.appends_with_entries + work.commit_notices + work.empty_appends, 0, "{work:?}");
            let answers = wire.count(*follower, leader, "append_response") - wire_before.count(*follower, leader, "append_response");
            assert_eq!(answers, 1, "answers from node {follower} on the wire");
        }
        cluster.stop().await.unwrap();
    });
}

/// Queues `n` proposals to `handle` without yielding in between, so the runtime finds them
/// all in one round; returns once each is answered.
async fn propose_in_one_round(handle: &ShardHandle, n: usize) {
    let (tx, rx) = local_channel::new_bounded(n);
    let tx = std::rc::Rc::new(tx);
    for _ in 0..n {
        let tx = std::rc::Rc::clone(&tx);
        let reply = Box::new(move |r| {
            let _ = tx.try_send(r);
        });
        let send = handle.send(Request::Propose { group: GROUP, command: barrier(), reply });
        // The queue has room: the send completes at its first poll, without yielding.
        future::poll_once(send).await.expect("queued without waiting").unwrap();
    }
    for _ in 0..n {
        rx.recv().await.expect("answered").unwrap();
    }
}

#[test]
fn sixty_four_proposals_of_one_round_cost_one_append_per_follower() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let Baseline { cluster, leader, followers, before, wire_before } = baseline(dir.path()).await;

        propose_in_one_round(&cluster.handle(leader), 64).await;
        commit_notices_delivered(&cluster, leader, &before, 2).await;

        let leader_work = cluster.counters(leader).snapshot().since(&of(&before, leader));
        assert_eq!(leader_work.proposals, 64);
        assert_eq!(leader_work.log_writes, 1, "the round's 64 entries in one write: {leader_work:?}");
        assert_eq!(leader_work.appends_with_entries, 2, "one append per follower for the round: {leader_work:?}");
        assert_eq!(leader_work.commit_notices, 2, "{leader_work:?}");
        let wire = cluster.wire();
        for follower in &followers {
            let entries = wire.entries[&(leader, *follower)] - wire_before.entries.get(&(leader, *follower)).copied().unwrap_or(0);
            assert_eq!(entries, 64, "entries sent to node {follower}");
            let work = cluster.counters(*follower).snapshot().since(&of(&before, *follower));
            assert_eq!(work.log_writes, 1, "node {follower}: {work:?}");
            assert_eq!(work.append_responses, 1, "node {follower}: {work:?}");
        }
        cluster.stop().await.unwrap();
    });
}

/// Waits until the leader told both followers a commit index since `before`, by commit
/// notices or heartbeats (either carries it; a heartbeat may fall inside a held notice's
/// delay and make the notice unneeded), and each node ran a round after.
async fn commit_told(cluster: &LoopbackCluster, leader: u64, before: &[(u64, CounterValues)]) {
    let told = || {
        let work = cluster.counters(leader).snapshot().since(&of(before, leader));
        work.commit_notices + work.heartbeats >= 2
    };
    eventually("the commit told to both followers", told).await;
    let rounds: Vec<(u64, u64)> = cluster.node_ids().into_iter().map(|n| (n, cluster.counters(n).rounds.get())).collect();
    eventually("a round on every node after that", || rounds.iter().all(|(n, r)| cluster.counters(*n).rounds.get() > *r)).await;
    glommio::timer::sleep(Duration::from_millis(20)).await;
}

/// Commands proposed one after another, each once the one before is answered: the leader
/// holds back each commit notice, and the next command's append carries it instead. Only the
/// last command's notice goes out (after `commit_notice_delay`, long here so that no slow
/// machine lets it expire between two commands), unless a heartbeat carried it first:
/// followers get one message per command, not two. With notices sent at once
/// (`commit_notice_delay` zero) the leader sends one notice per follower per command: 20.
#[test]
fn the_next_commands_append_carries_the_commit_notice_of_the_one_before() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let opts = LoopbackOptions { commit_notice_delay: Duration::from_millis(300), ..options() };
        let Baseline { cluster, leader, followers, before, .. } = baseline_with(dir.path(), &opts).await;
        // The settling barrier's commit is told after the delay: measure from there.
        commit_told(&cluster, leader, &before).await;
        let before = values(&cluster);

        let started = Instant::now();
        for _ in 0..10 {
            cluster.handle(leader).propose(GROUP, barrier()).await.unwrap();
        }
        let proposing = started.elapsed();
        commit_told(&cluster, leader, &before).await;

        let leader_work = cluster.counters(leader).snapshot().since(&of(&before, leader));
        assert_eq!(leader_work.appends_with_entries, 20, "one append per follower per command: {leader_work:?}");
        if proposing < Duration::from_millis(300) {
            assert!(leader_work.commit_notices <= 2, "at most the last command's notices: {leader_work:?}");
        } else {
            // Only a machine stalled for the whole delay gets here; notices may then leave
            // between commands, never more than one per follower per command.
            assert!(leader_work.commit_notices <= 20, "{leader_work:?}");
        }
        assert!(leader_work.commit_notices_held >= 1, "{leader_work:?}");
        assert_eq!(leader_work.empty_appends, 0, "{leader_work:?}");
        for follower in &followers {
            let work = cluster.counters(*follower).snapshot().since(&of(&before, *follower));
            assert_eq!(work.log_writes, 10, "node {follower}: {work:?}");
            assert_eq!(work.append_responses, 10, "node {follower} answers each append once: {work:?}");
        }
        cluster.stop().await.unwrap();
    });
}

#[test]
fn the_shard_loop_arms_one_timer_for_its_whole_life() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (cluster, leader) = settled_cluster(dir.path()).await;
        for _ in 0..20 {
            cluster.handle(leader).propose(GROUP, barrier()).await.unwrap();
        }
        for node in cluster.node_ids() {
            let counters = cluster.counters(node).snapshot();
            assert!(counters.rounds > 20, "node {node} ran rounds: {counters:?}");
            assert_eq!(counters.timers_armed, 1, "node {node}: {counters:?}");
        }
        cluster.stop().await.unwrap();
    });
}

#[test]
fn a_command_forwarded_by_a_follower_is_answered_with_the_leaders_result() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let Baseline { cluster, leader, followers, before, .. } = baseline(dir.path()).await;
        let follower = followers[0];

        // The follower answers with whichever comes first: the leader's result or its own
        // apply of the entry (the leader's commit notice and its result travel in separate
        // batches when the leader's round is split, as on a loaded machine). Forward until
        // one is answered by the leader; each must be placed once, with the right result.
        const TRIES: u64 = 50;
        let mut forwarded = 0;
        let mut last_index = 0;
        loop {
            let committed = cluster.handle(follower).propose(GROUP, barrier()).await.unwrap();
            assert_eq!(committed.result, Ok(conclave_engine::sm::Output::Barrier));
            assert!(committed.index > last_index, "a new entry each time");
            last_index = committed.index;
            forwarded += 1;
            let work = cluster.counters(follower).snapshot().since(&of(&before, follower));
            assert!(work.forwarded_answered_by_leader <= forwarded, "{work:?}");
            if work.forwarded_answered_by_leader >= 1 {
                break;
            }
            assert!(forwarded < TRIES, "no forwarded command of {TRIES} was answered with the leader's result: {work:?}");
        }
        // The leader placed each once, the last at the index the follower answered with.
        let by_leader = cluster.handle(leader).propose(GROUP, barrier()).await.unwrap();
        assert_eq!(by_leader.index, last_index + 1);
        let leader_work = cluster.counters(leader).snapshot().since(&of(&before, leader));
        assert_eq!(leader_work.proposals, forwarded + 1, "{leader_work:?}");
        cluster.stop().await.unwrap();
    });
}

/// A follower holding a lease from its leader answers reads without a Raft message: the
/// first read asks the leader for the read index and the lease; the next twenty cost no
/// message at all (before follower leases, each asked the leader once).
#[test]
fn a_follower_holding_a_lease_answers_reads_without_a_message() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let options = LoopbackOptions { follower_reads: true, ..options() };
        let Baseline { cluster, followers, .. } = baseline_with(dir.path(), &options).await;
        let follower = cluster.handle(followers[0]);
        let query = || TermQuery { session_id: None, primitive: PrimitiveRef::Name("e".into()), min_index: 0, sequence_num: 0 };
        follower.read(GROUP, query()).await.unwrap();
        let before = values(&cluster);
        for _ in 0..20 {
            follower.read(GROUP, query()).await.unwrap();
        }
        for (node, now) in values(&cluster) {
            let work = now.since(&of(&before, node));
            let served = if node == followers[0] { 20 } else { 0 };
            assert_eq!(work.follower_lease_reads, served, "node {node}: {work:?}");
            assert_eq!(work.other_messages, 0, "node {node} sent a read index request or answer: {work:?}");
        }
        cluster.stop().await.unwrap();
    });
}

/// Awake groups led by one node heartbeat at the same tick of its shard loop, whenever
/// each was elected: a node sends each peer at most two batches per heartbeat interval
/// (its leaders' heartbeats, and its answers to the peer's), however many groups they share.
/// With each leader on the phase of its own election, that was up to one batch per tick.
#[test]
fn awake_groups_heartbeat_to_each_peer_in_one_batch_per_interval() {
    run(async {
        const GROUPS: u32 = 12;
        const HEARTBEAT_TICKS: u64 = 4;
        let dir = tempfile::tempdir().unwrap();
        let options = LoopbackOptions {
            groups: GROUPS,
            tick: Duration::from_millis(10),
            election_ticks: 20,
            heartbeat_ticks: HEARTBEAT_TICKS as u32,
            ..LoopbackOptions::default()
        };
        let cluster = LoopbackCluster::start(&options, dir.path()).await.unwrap();
        eventually("a leader every node knows, in every group", || {
            (1..=GROUPS).all(|g| cluster.leader(g).is_some_and(|leader| cluster.all_know(g, leader)))
        })
        .await;
        glommio::timer::sleep(Duration::from_millis(50)).await;
        let before = values(&cluster);
        // At least 20 heartbeat intervals on every node (a starved machine ticks late).
        eventually("20 heartbeat intervals on every node", || {
            cluster.node_ids().iter().all(|n| cluster.counters(*n).snapshot().since(&of(&before, *n)).ticks >= 20 * HEARTBEAT_TICKS)
        })
        .await;
        let peers = cluster.node_ids().len() as u64 - 1;
        let mut heartbeats = 0;
        for node in cluster.node_ids() {
            let work = cluster.counters(node).snapshot().since(&of(&before, node));
            let led = (1..=GROUPS).filter(|g| cluster.leader(*g) == Some(node)).count() as u64;
            let intervals = work.ticks / HEARTBEAT_TICKS;
            heartbeats += work.heartbeats;
            // Slack for an election, should a loaded machine starve a leader meanwhile; with
            // each leader on its own phase it was 5 to 7 batches per peer per interval.
            assert!(
                work.batches_sent <= peers * 2 * (intervals + 5),
                "node {node} (leading {led} of {GROUPS}) sent {} batches in {intervals} heartbeat intervals: {work:?}",
                work.batches_sent
            );
        }
        // The groups did heartbeat (none quiesces here): about one per group per peer per
        // interval, counted at the leaders.
        assert!(heartbeats >= u64::from(GROUPS) * peers * 20 / 2, "{heartbeats} heartbeats sent in all");
        cluster.stop().await.unwrap();
    });
}
